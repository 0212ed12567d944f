//! `when` conditions: parsed into an AST at validation time, evaluated by the executor at run time.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" or ")" | operand ( cmpop operand )?
//! cmpop   := "==" | "!=" | "<" | "<=" | ">" | ">="
//! operand := a quoted string ('...' or "...") or a bare word; both may hold `{{...}}` references
//! ```
//!
//! Comparison is numeric when both sides read as numbers, and textual otherwise. A lone operand must
//! be `true` or `false` (after substitution).

use serde::Serialize;

use super::expr::{ExprError, Ref, Text, parse_text};
use super::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum When {
    Or(Box<When>, Box<When>),
    And(Box<When>, Box<When>),
    Not(Box<When>),
    Cmp { op: CmpOp, lhs: Text, rhs: Text },
    Truthy(Text),
}

/// Why a condition could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("`{{{{{0}}}}}` has no value")]
    Unresolved(Ref),
    #[error("`{0}` is not a boolean; compare it with `==` or `!=`")]
    NotBoolean(String),
}

impl When {
    /// Every reference in the condition.
    pub fn texts(&self) -> Vec<&Text> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Text>) {
        match self {
            When::Or(a, b) | When::And(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            When::Not(a) => a.collect(out),
            When::Cmp { lhs, rhs, .. } => {
                out.push(lhs);
                out.push(rhs);
            }
            When::Truthy(t) => out.push(t),
        }
    }

    /// Evaluates the condition; `resolve` gives the value of each reference.
    pub fn eval<F>(&self, resolve: &mut F) -> Result<bool, EvalError>
    where
        F: FnMut(&Ref) -> Option<String>,
    {
        match self {
            When::Or(a, b) => Ok(a.eval(resolve)? || b.eval(resolve)?),
            When::And(a, b) => Ok(a.eval(resolve)? && b.eval(resolve)?),
            When::Not(a) => Ok(!a.eval(resolve)?),
            When::Cmp { op, lhs, rhs } => {
                let l = lhs.render(&mut *resolve).map_err(EvalError::Unresolved)?;
                let r = rhs.render(&mut *resolve).map_err(EvalError::Unresolved)?;
                Ok(compare(*op, l.trim(), r.trim()))
            }
            When::Truthy(t) => {
                let v = t.render(&mut *resolve).map_err(EvalError::Unresolved)?;
                as_bool(v.trim()).ok_or(EvalError::NotBoolean(v))
            }
        }
    }
}

fn as_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn compare(op: CmpOp, l: &str, r: &str) -> bool {
    use std::cmp::Ordering;
    let ordering = match (l.parse::<f64>(), r.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => match (as_bool(l), as_bool(r)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => Some(l.cmp(r)),
        },
    };
    match (op, ordering) {
        (CmpOp::Eq, o) => o == Some(Ordering::Equal),
        (CmpOp::Ne, o) => o != Some(Ordering::Equal),
        (CmpOp::Lt, o) => o == Some(Ordering::Less),
        (CmpOp::Le, o) => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        (CmpOp::Gt, o) => o == Some(Ordering::Greater),
        (CmpOp::Ge, o) => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// A problem in a condition, at a character offset of the condition string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhenError {
    pub offset: usize,
    pub len: usize,
    pub message: String,
    pub help: Option<String>,
}

impl From<ExprError> for WhenError {
    fn from(e: ExprError) -> WhenError {
        WhenError {
            offset: e.offset,
            len: e.len,
            message: e.message,
            help: e.help,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    /// An operand: its text (quotes removed) and the quote it was written in, if any.
    Operand {
        text: String,
        quote: Option<char>,
    },
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Character offset of the token and of its content (after an opening quote).
    offset: usize,
    content_offset: usize,
    len: usize,
}

fn tokenize(s: &str) -> Result<Vec<Token>, WhenError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let simple = match two.as_str() {
            "&&" => Some((Tok::And, 2)),
            "||" => Some((Tok::Or, 2)),
            "==" => Some((Tok::Cmp(CmpOp::Eq), 2)),
            "!=" => Some((Tok::Cmp(CmpOp::Ne), 2)),
            "<=" => Some((Tok::Cmp(CmpOp::Le), 2)),
            ">=" => Some((Tok::Cmp(CmpOp::Ge), 2)),
            _ => match c {
                '(' => Some((Tok::LParen, 1)),
                ')' => Some((Tok::RParen, 1)),
                '!' => Some((Tok::Not, 1)),
                '<' => Some((Tok::Cmp(CmpOp::Lt), 1)),
                '>' => Some((Tok::Cmp(CmpOp::Gt), 1)),
                _ => None,
            },
        };
        if let Some((tok, len)) = simple {
            out.push(Token {
                tok,
                offset: i,
                content_offset: i,
                len,
            });
            i += len;
            continue;
        }
        if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            let mut text = String::new();
            loop {
                match chars.get(i) {
                    None => {
                        return Err(WhenError {
                            offset: start,
                            len: chars.len() - start,
                            message: format!("unterminated string starting with {c}"),
                            help: None,
                        });
                    }
                    Some(&q) if q == c => break,
                    Some(&other) => text.push(other),
                }
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Operand {
                    text,
                    quote: Some(c),
                },
                offset: start,
                content_offset: start + 1,
                len: i - start,
            });
            continue;
        }
        // A bare operand runs to the next space or operator; `{{...}}` is taken whole.
        let start = i;
        let mut text = String::new();
        while i < chars.len() {
            if chars[i] == '{' && chars.get(i + 1) == Some(&'{') {
                let mut j = i + 2;
                while j < chars.len() && !(chars[j] == '}' && chars.get(j + 1) == Some(&'}')) {
                    j += 1;
                }
                let end = (j + 2).min(chars.len());
                text.extend(&chars[i..end]);
                i = end;
                continue;
            }
            let ch = chars[i];
            if ch.is_whitespace() || "()!<>=&|'\"".contains(ch) {
                break;
            }
            text.push(ch);
            i += 1;
        }
        if text.is_empty() {
            return Err(WhenError {
                offset: i,
                len: 1,
                message: format!("unexpected `{}` in condition", chars[i]),
                help: Some("operators are == != < <= > >= && || ! and parentheses".into()),
            });
        }
        out.push(Token {
            tok: Tok::Operand { text, quote: None },
            offset: start,
            content_offset: start,
            len: i - start,
        });
    }
    Ok(out)
}

/// The deepest a condition may nest `(` and `!`: the parser, and everything that walks a
/// condition, recurse once per level (200,000 `(` overflowed the stack and ended the process).
pub const MAX_DEPTH: usize = 32;

/// The most operands a condition may have: `a && b && ...` nests one level per operator too.
pub const MAX_OPERANDS: usize = 256;

struct Parser<'a, L: FnMut(usize, &str) -> Pos> {
    tokens: Vec<Token>,
    at: usize,
    end: usize,
    /// `(` and `!` open around the token at `at`.
    depth: usize,
    /// Operands read so far.
    operands: usize,
    locate: &'a mut L,
    /// Malformed `{{...}}` found in operands; parsing goes on so that all of them are reported.
    expr_errors: Vec<WhenError>,
}

impl<L: FnMut(usize, &str) -> Pos> Parser<'_, L> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at).map(|t| &t.tok)
    }

    fn error_here(&self, message: &str) -> WhenError {
        match self.tokens.get(self.at) {
            Some(t) => WhenError {
                offset: t.offset,
                len: t.len,
                message: message.to_string(),
                help: None,
            },
            None => WhenError {
                offset: self.end,
                len: 1,
                message: format!("{message}, found the end of the condition"),
                help: None,
            },
        }
    }

    fn or(&mut self) -> Result<When, WhenError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            let right = self.and()?;
            left = When::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<When, WhenError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.at += 1;
            let right = self.unary()?;
            left = When::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// One more level of `(` or `!` (the token at `at`), within [`MAX_DEPTH`].
    fn deeper(&mut self) -> Result<(), WhenError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error_here(&format!(
                "the condition nests `(` and `!` deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        self.at += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<When, WhenError> {
        if self.peek() == Some(&Tok::Not) {
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(When::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<When, WhenError> {
        if self.peek() == Some(&Tok::LParen) {
            self.deeper()?;
            let inner = self.or()?;
            if self.peek() != Some(&Tok::RParen) {
                return Err(self.error_here("expected `)`"));
            }
            self.depth -= 1;
            self.at += 1;
            return Ok(inner);
        }
        let (lhs, not_boolean) = self.operand()?;
        if let Some(Tok::Cmp(op)) = self.peek().cloned() {
            self.at += 1;
            let (rhs, _) = self.operand()?;
            return Ok(When::Cmp { op, lhs, rhs });
        }
        if let Some((word, offset, len)) = not_boolean {
            return Err(WhenError {
                offset,
                len,
                message: format!("`{word}` is not a condition"),
                help: Some("compare it with `==` or `!=`, or write `true` / `false`".into()),
            });
        }
        Ok(When::Truthy(lhs))
    }

    /// Parses an operand. Also returns it as written when it holds no reference and is not `true`
    /// or `false`, quoted or not: standing alone, such an operand could never evaluate.
    /// Malformed `{{...}}` in it are recorded in `expr_errors`, and the operand keeps its other parts.
    #[allow(clippy::type_complexity)]
    fn operand(&mut self) -> Result<(Text, Option<(String, usize, usize)>), WhenError> {
        let Some(token) = self.tokens.get(self.at).cloned() else {
            return Err(self.error_here("expected a value"));
        };
        let Tok::Operand { text, quote } = token.tok else {
            return Err(self.error_here("expected a value"));
        };
        if self.operands >= MAX_OPERANDS {
            return Err(self.error_here(&format!(
                "the condition has more than {MAX_OPERANDS} operands"
            )));
        }
        self.operands += 1;
        self.at += 1;
        let base = token.content_offset;
        let locate = &mut *self.locate;
        let (parsed, errors) = parse_text(&text, |off, raw| locate(base + off, raw));
        let had_errors = !errors.is_empty();
        self.expr_errors.extend(errors.into_iter().map(|e| {
            let mut e = WhenError::from(e);
            e.offset += base;
            e
        }));
        let not_boolean = if had_errors || parsed.has_refs() || as_bool(text.trim()).is_some() {
            None
        } else {
            let written = match quote {
                Some(q) => format!("{q}{text}{q}"),
                None => text.clone(),
            };
            Some((written, token.offset, token.len))
        };
        Ok((parsed, not_boolean))
    }
}

/// Parses a condition. `locate(offset, raw)` turns the character offset of a `{{...}}` in the
/// condition into a file position. The errors are every malformed `{{...}}` of the condition, then
/// the first syntax error, if any.
pub fn parse_when<L>(s: &str, mut locate: L) -> Result<When, Vec<WhenError>>
where
    L: FnMut(usize, &str) -> Pos,
{
    let tokens = tokenize(s).map_err(|e| vec![e])?;
    if tokens.is_empty() {
        return Err(vec![WhenError {
            offset: 0,
            len: 1,
            message: "empty condition".into(),
            help: None,
        }]);
    }
    let end = s.chars().count();
    let mut parser = Parser {
        tokens,
        at: 0,
        end,
        depth: 0,
        operands: 0,
        locate: &mut locate,
        expr_errors: Vec::new(),
    };
    let result = parser.or().and_then(|ast| {
        if parser.at < parser.tokens.len() {
            Err(parser
                .error_here("unexpected token; expected `&&`, `||` or the end of the condition"))
        } else {
            Ok(ast)
        }
    });
    let mut errors = std::mem::take(&mut parser.expr_errors);
    match result {
        Ok(ast) if errors.is_empty() => Ok(ast),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(e);
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The condition, or its first error.
    fn parse(s: &str) -> Result<When, WhenError> {
        parse_all(s).map_err(|mut errors| errors.remove(0))
    }

    fn parse_all(s: &str) -> Result<When, Vec<WhenError>> {
        parse_when(s, |off, _| Pos::new(1, 1 + off as u32, 1))
    }

    fn eval(s: &str, params: &[(&str, &str)]) -> Result<bool, EvalError> {
        let ast = parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"));
        ast.eval(&mut |r: &Ref| match r {
            Ref::Param(n) => params
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_string()),
            _ => None,
        })
    }

    #[test]
    fn the_spec_example_evaluates() {
        assert_eq!(
            eval("{{params.dry_run}} == false", &[("dry_run", "false")]),
            Ok(true)
        );
        assert_eq!(
            eval("{{params.dry_run}} == false", &[("dry_run", "true")]),
            Ok(false)
        );
        assert_eq!(
            eval("{{params.dry_run}} == false", &[("dry_run", "FALSE")]),
            Ok(true)
        );
    }

    #[test]
    fn precedence_and_parentheses() {
        let p = [("a", "1"), ("b", "x"), ("c", "true")];
        assert_eq!(
            eval("{{params.a}} == 2 || {{params.b}} == x && {{params.c}}", &p),
            Ok(true)
        );
        assert_eq!(
            eval(
                "({{params.a}} == 2 || {{params.b}} == x) && !{{params.c}}",
                &p
            ),
            Ok(false)
        );
        assert_eq!(eval("!({{params.a}} != 1)", &p), Ok(true));
        assert_eq!(eval("'{{params.b}}' == 'x'", &p), Ok(true));
        assert_eq!(eval("\"{{params.b}}-y\" == x-y", &p), Ok(true));
    }

    #[test]
    fn numbers_compare_as_numbers() {
        let p = [("n", "10")];
        assert_eq!(eval("{{params.n}} > 9", &p), Ok(true));
        assert_eq!(eval("{{params.n}} == 10.0", &p), Ok(true));
        assert_eq!(eval("{{params.n}} <= 9", &p), Ok(false));
    }

    #[test]
    fn lone_operands_must_be_booleans() {
        assert_eq!(
            eval("{{params.n}}", &[("n", "yes")]),
            Err(EvalError::NotBoolean("yes".into()))
        );
        assert!(parse("prod").is_err());
        assert!(parse("true").is_ok());
        // Quotes do not make a plain word a condition.
        let e = parse("'prod'").unwrap_err();
        assert_eq!(e.message, "`'prod'` is not a condition");
        assert_eq!((e.offset, e.len), (0, 6));
        assert!(parse("\"\"").is_err());
        assert!(parse("'TRUE'").is_ok());
        assert_eq!(eval("'false' || \"true\"", &[]), Ok(true));
        assert!(parse("'{{params.a}}'").is_ok());
    }

    #[test]
    fn every_malformed_expression_is_reported() {
        let errors =
            parse_all("{{parms.a}} == 1 && {{params.b c}} == 2 || 'x-{{}}' == y").unwrap_err();
        let offsets: Vec<usize> = errors.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![0, 20, 46], "{errors:?}");
        // A syntax error comes after the expression errors before it.
        let errors = parse_all("{{parms.a}} == 1 &&").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[1].message.contains("expected a value"), "{errors:?}");
    }

    #[test]
    fn deep_or_long_conditions_are_refused_before_they_nest_too_deep() {
        // Within the limits: parsed and evaluated.
        let deep = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(eval(&deep, &[]), Ok(true));
        let nots = format!("{}true", "!".repeat(MAX_DEPTH));
        assert_eq!(eval(&nots, &[]), Ok(true));
        let long = vec!["true"; MAX_OPERANDS].join(" && ");
        assert_eq!(eval(&long, &[]), Ok(true));
        // One past them: an error at the token that goes past, not a stack overflow (200,000
        // parentheses ended the process).
        for (text, at) in [
            (
                format!("{}true{}", "(".repeat(200_000), ")".repeat(200_000)),
                MAX_DEPTH,
            ),
            (format!("{}true", "!".repeat(400_000)), MAX_DEPTH),
            (
                vec!["true"; 40_000].join(" && "),
                MAX_OPERANDS * "true && ".len(),
            ),
        ] {
            let errors = parse_all(&text).expect_err("refused");
            let last = errors.last().expect("an error");
            assert!(
                last.message.contains("deeper than 32 levels")
                    || last.message.contains("more than 256 operands"),
                "{last:?}"
            );
            assert_eq!(last.offset, at, "{last:?}");
        }
    }

    #[test]
    fn syntax_errors_point_at_the_token() {
        let e = parse("{{params.a}} == ").unwrap_err();
        assert!(e.message.contains("expected a value"), "{e:?}");
        let e = parse("(a == b").unwrap_err();
        assert!(e.message.contains("expected `)`"), "{e:?}");
        let e = parse("a == b c").unwrap_err();
        assert_eq!(e.offset, 7);
        let e = parse("a == 'b").unwrap_err();
        assert!(e.message.contains("unterminated"));
        let e = parse("{{parms.a}} == 1").unwrap_err();
        assert!(e.message.contains("unknown expression"));
        assert!(parse("").is_err());
    }

    #[test]
    fn unresolved_refs_are_reported() {
        assert_eq!(
            eval("{{params.zz}} == 1", &[]),
            Err(EvalError::Unresolved(Ref::Param("zz".into())))
        );
    }
}
