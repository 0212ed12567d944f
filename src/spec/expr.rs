//! Expressions: the `{{...}}` references inside pipeline strings, parsed once into [`Text`].
//!
//! A `Text` is a string cut into literal parts and references. Later stages never look for braces
//! again: they substitute references (`Text::render`) or splice template inputs (`Text::splice`).

use std::fmt;

use serde::{Serialize, Serializer};

use super::yaml::Pos;

/// What a `{{...}}` expression refers to. Aliases are folded into the canonical form here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// `{{params.NAME}}`, also `{{workflow.parameters.NAME}}`.
    Param(String),
    /// `{{vars.NAME}}`, also `{{VARIABLES.NAME}}`.
    Var(String),
    /// `{{secrets.NAME}}`, also `{{SECRETS.NAME}}`.
    Secret(String),
    /// `{{connections.NAME.KEY}}`: a credential of a marketplace connection the pipeline
    /// declares; KEY is the publisher's key or its well-known name (`host`, `password`, ...).
    Connection {
        name: String,
        key: String,
    },
    /// `{{steps.STEP.outputs.NAME}}`, also `{{steps.STEP.outputs.parameters.NAME}}` and `tasks.` for `steps.`.
    StepOutput {
        step: String,
        output: String,
    },
    /// `{{inputs.NAME}}`, also `{{inputs.parameters.NAME}}`; only inside templates.
    Input(String),
    RunId,
    RunNumber,
    GitSha,
    GitRef,
    GitRepo,
    TriggerKind,
    PrNumber,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Param(n) => write!(f, "params.{n}"),
            Ref::Var(n) => write!(f, "vars.{n}"),
            Ref::Secret(n) => write!(f, "secrets.{n}"),
            Ref::Connection { name, key } => write!(f, "connections.{name}.{key}"),
            Ref::StepOutput { step, output } => write!(f, "steps.{step}.outputs.{output}"),
            Ref::Input(n) => write!(f, "inputs.{n}"),
            Ref::RunId => f.write_str("run.id"),
            Ref::RunNumber => f.write_str("run.number"),
            Ref::GitSha => f.write_str("git.sha"),
            Ref::GitRef => f.write_str("git.ref"),
            Ref::GitRepo => f.write_str("git.repo"),
            Ref::TriggerKind => f.write_str("trigger.kind"),
            Ref::PrNumber => f.write_str("pr.number"),
        }
    }
}

/// One piece of a [`Text`].
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Lit(String),
    Ref { reference: Ref, pos: Pos },
}

/// A string that may contain `{{...}}` references.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Text {
    pub parts: Vec<Part>,
}

impl Text {
    /// A text with no references.
    pub fn literal(s: impl Into<String>) -> Text {
        let s = s.into();
        if s.is_empty() {
            Text { parts: Vec::new() }
        } else {
            Text {
                parts: vec![Part::Lit(s)],
            }
        }
    }

    /// Every reference with its position.
    pub fn refs(&self) -> impl Iterator<Item = (&Ref, Pos)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref { reference, pos } => Some((reference, *pos)),
            Part::Lit(_) => None,
        })
    }

    pub fn has_refs(&self) -> bool {
        self.refs().next().is_some()
    }

    /// The string when there are no references.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Ref { .. } => return None,
            }
        }
        Some(out)
    }

    /// Substitutes every reference. `resolve` answers `None` for a reference it cannot resolve, and
    /// the first such reference is returned as the error.
    pub fn render<F>(&self, mut resolve: F) -> Result<String, Ref>
    where
        F: FnMut(&Ref) -> Option<String>,
    {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Ref { reference, .. } => match resolve(reference) {
                    Some(value) => out.push_str(&value),
                    None => return Err(reference.clone()),
                },
            }
        }
        Ok(out)
    }

    /// Replaces `{{inputs.*}}` references by the texts `arg` gives (template expansion). Inputs that
    /// `arg` does not know are kept as they are.
    pub fn splice<F>(&self, mut arg: F) -> Text
    where
        F: FnMut(&str) -> Option<Text>,
    {
        let mut parts: Vec<Part> = Vec::new();
        for part in &self.parts {
            match part {
                Part::Ref {
                    reference: Ref::Input(name),
                    ..
                } => match arg(name) {
                    Some(text) => parts.extend(text.parts),
                    None => parts.push(part.clone()),
                },
                other => parts.push(other.clone()),
            }
        }
        // Adjacent literals are merged so that `as_literal` and equality behave.
        let mut merged: Vec<Part> = Vec::with_capacity(parts.len());
        for part in parts {
            match (merged.last_mut(), part) {
                (Some(Part::Lit(prev)), Part::Lit(next)) => prev.push_str(&next),
                (_, part) => merged.push(part),
            }
        }
        Text { parts: merged }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Lit(s) => f.write_str(s)?,
                Part::Ref { reference, .. } => write!(f, "{{{{{reference}}}}}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A problem inside one expression, at a character offset of the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Character offset of the start of the expression in the string.
    pub offset: usize,
    /// Length of the expression in characters.
    pub len: usize,
    pub message: String,
    pub help: Option<String>,
}

/// Parses the `{{...}}` expressions of a string. `locate(offset, raw)` turns the character offset of
/// an expression (and its raw text, braces included) into a file position.
///
/// Returns the text and one error per malformed expression. A malformed expression stays in the
/// text as a literal, so that the references around it can still be checked; a text with errors
/// must not be used otherwise.
pub fn parse_text<L>(s: &str, mut locate: L) -> (Text, Vec<ExprError>)
where
    L: FnMut(usize, &str) -> Pos,
{
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    let mut offset = 0usize;
    while let Some(start) = rest.find("{{") {
        lit.push_str(&rest[..start]);
        let expr_offset = offset + rest[..start].chars().count();
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            errors.push(ExprError {
                offset: expr_offset,
                len: 2,
                message: "unclosed `{{`: an expression must end with `}}`".to_string(),
                help: None,
            });
            lit.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let raw = &rest[start..start + 2 + end + 2];
        let raw_len = raw.chars().count();
        match parse_ref(inner) {
            Ok(reference) => {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                let pos = locate(expr_offset, raw);
                parts.push(Part::Ref {
                    reference,
                    pos: pos.with_len(raw_len as u32),
                });
            }
            Err((message, help)) => {
                errors.push(ExprError {
                    offset: expr_offset,
                    len: raw_len,
                    message,
                    help,
                });
                lit.push_str(raw);
            }
        }
        offset = expr_offset + raw_len;
        rest = &after[end + 2..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    (Text { parts }, errors)
}

const ROOTS: [&str; 14] = [
    "params",
    "vars",
    "secrets",
    "connections",
    "steps",
    "inputs",
    "run",
    "git",
    "trigger",
    "pr",
    "workflow",
    "VARIABLES",
    "SECRETS",
    "tasks",
];

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses the inside of `{{...}}`.
fn parse_ref(inner: &str) -> Result<Ref, (String, Option<String>)> {
    let expr = inner.trim();
    if expr.is_empty() {
        return Err(("empty expression `{{}}`".to_string(), None));
    }
    let segments: Vec<&str> = expr.split('.').collect();
    if let Some(bad) = segments.iter().find(|s| !is_name(s)) {
        return Err((
            format!("malformed expression `{{{{{expr}}}}}`: `{bad}` is not a name"),
            Some("expressions are dotted names such as `params.db_name` or `steps.build.outputs.image`".into()),
        ));
    }
    let name = |n: &str| n.to_string();
    let reference = match segments.as_slice() {
        ["params", n] | ["workflow", "parameters", n] => Ref::Param(name(n)),
        ["vars", n] | ["VARIABLES", n] => Ref::Var(name(n)),
        ["secrets", n] | ["SECRETS", n] => Ref::Secret(name(n)),
        ["connections", n, k] => Ref::Connection {
            name: name(n),
            key: name(k),
        },
        ["steps" | "tasks", step, "outputs", n]
        | ["steps" | "tasks", step, "outputs", "parameters", n] => Ref::StepOutput {
            step: name(step),
            output: name(n),
        },
        ["inputs", n] | ["inputs", "parameters", n] => Ref::Input(name(n)),
        ["run", "id"] => Ref::RunId,
        ["run", "number"] => Ref::RunNumber,
        ["git", "sha"] => Ref::GitSha,
        ["git", "ref"] => Ref::GitRef,
        ["git", "repo"] => Ref::GitRepo,
        ["trigger", "kind"] => Ref::TriggerKind,
        ["pr", "number"] => Ref::PrNumber,
        [root, ..] => {
            let known = ROOTS.contains(root);
            let help = if known {
                Some(expected_form(root).to_string())
            } else {
                super::diagnostic::did_you_mean(root, ROOTS)
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| Some("known roots: params, vars, secrets, connections, steps, inputs, run, git, trigger, pr".into()))
            };
            return Err((format!("unknown expression `{{{{{expr}}}}}`"), help));
        }
        [] => return Err(("empty expression `{{}}`".to_string(), None)),
    };
    Ok(reference)
}

fn expected_form(root: &str) -> &'static str {
    match root {
        "params" => "write `{{params.NAME}}`",
        "vars" | "VARIABLES" => "write `{{vars.NAME}}`",
        "secrets" | "SECRETS" => "write `{{secrets.NAME}}`",
        "connections" => "write `{{connections.NAME.KEY}}`",
        "steps" | "tasks" => "write `{{steps.STEP.outputs.NAME}}`",
        "inputs" => "write `{{inputs.NAME}}`",
        "run" => "known: `{{run.id}}`, `{{run.number}}`",
        "git" => "known: `{{git.sha}}`, `{{git.ref}}`, `{{git.repo}}`",
        "trigger" => "known: `{{trigger.kind}}`",
        "pr" => "known: `{{pr.number}}`",
        "workflow" => "write `{{workflow.parameters.NAME}}` or `{{params.NAME}}`",
        _ => "see the expressions section of the pipeline spec",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Text, Vec<ExprError>> {
        match parse_text(s, |offset, _| Pos::new(1, 1 + offset as u32, 1)) {
            (text, errors) if errors.is_empty() => Ok(text),
            (_, errors) => Err(errors),
        }
    }

    #[test]
    fn every_form_and_alias_parses() {
        let cases = [
            ("{{params.a}}", Ref::Param("a".into())),
            ("{{ workflow.parameters.a }}", Ref::Param("a".into())),
            ("{{vars.v}}", Ref::Var("v".into())),
            ("{{VARIABLES.v}}", Ref::Var("v".into())),
            ("{{secrets.s}}", Ref::Secret("s".into())),
            ("{{SECRETS.s}}", Ref::Secret("s".into())),
            (
                "{{connections.orders-db.host}}",
                Ref::Connection {
                    name: "orders-db".into(),
                    key: "host".into(),
                },
            ),
            (
                "{{steps.b.outputs.x}}",
                Ref::StepOutput {
                    step: "b".into(),
                    output: "x".into(),
                },
            ),
            (
                "{{steps.b.outputs.parameters.x}}",
                Ref::StepOutput {
                    step: "b".into(),
                    output: "x".into(),
                },
            ),
            ("{{inputs.i}}", Ref::Input("i".into())),
            ("{{inputs.parameters.i}}", Ref::Input("i".into())),
            ("{{run.id}}", Ref::RunId),
            ("{{run.number}}", Ref::RunNumber),
            ("{{git.sha}}", Ref::GitSha),
            ("{{git.ref}}", Ref::GitRef),
            ("{{git.repo}}", Ref::GitRepo),
            ("{{trigger.kind}}", Ref::TriggerKind),
            ("{{pr.number}}", Ref::PrNumber),
        ];
        for (text, want) in cases {
            let parsed = parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let refs: Vec<_> = parsed.refs().map(|(r, _)| r.clone()).collect();
            assert_eq!(refs, vec![want], "{text}");
        }
    }

    #[test]
    fn literals_and_refs_interleave_and_render() {
        let text = parse("db-{{params.env}}-{{run.number}}").unwrap();
        assert_eq!(text.parts.len(), 4);
        let out = text
            .render(|r| match r {
                Ref::Param(_) => Some("dev".into()),
                Ref::RunNumber => Some("7".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(out, "db-dev-7");
        assert_eq!(text.to_string(), "db-{{params.env}}-{{run.number}}");
    }

    #[test]
    fn errors_carry_offsets_and_hints() {
        let errs = parse("x {{parms.a}} y {{params.b").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].offset, 2);
        assert_eq!(errs[0].help.as_deref(), Some("did you mean `params`?"));
        assert!(errs[1].message.contains("unclosed"));
        assert_eq!(errs[1].offset, 16);
        assert!(parse("{{params}}").is_err());
        assert!(parse("{{}}").is_err());
        assert!(parse("{{params.a b}}").is_err());
    }

    #[test]
    fn references_around_a_malformed_expression_are_kept() {
        let (text, errors) =
            parse_text("{{secrets.a}} {{parms.b}} {{}} {{vars.c}}", |offset, _| {
                Pos::new(1, 1 + offset as u32, 1)
            });
        assert_eq!(errors.len(), 2, "{errors:?}");
        let refs: Vec<Ref> = text.refs().map(|(r, _)| r.clone()).collect();
        assert_eq!(refs, vec![Ref::Secret("a".into()), Ref::Var("c".into())]);
    }

    #[test]
    fn splicing_inputs_keeps_other_refs() {
        let body = parse("psql -c {{inputs.sql}} on {{git.sha}}").unwrap();
        let arg = parse("SELECT {{params.n}}").unwrap();
        let out = body.splice(|name| (name == "sql").then(|| arg.clone()));
        assert_eq!(
            out.to_string(),
            "psql -c SELECT {{params.n}} on {{git.sha}}"
        );
    }
}
