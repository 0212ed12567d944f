//! Diagnostics: what is wrong with a pipeline file, where, and how to fix it.
//!
//! A diagnostic knows its position in the file; it is rendered against the file's text so the user
//! sees the offending line with a marker under the span, in the manner of rustc and ripgrep.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;

use super::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub pos: Pos,
    pub message: String,
    /// A suggestion: "did you mean `steps`?", "pass it through an env variable".
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            pos,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            pos,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A sorted list of diagnostics for one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(Diagnostic::error(pos, message));
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Orders by position, drops exact repeats (one bad reference used twice is reported once per spot).
    pub fn finish(&mut self) {
        self.0.sort_by(|a, b| {
            (a.pos.line, a.pos.col, a.severity, &a.message)
                .cmp(&(b.pos.line, b.pos.col, b.severity, &b.message))
        });
        self.0
            .dedup_by(|a, b| a.pos == b.pos && a.message == b.message);
    }
}

/// How to draw a diagnostic.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Renders one diagnostic:
///
/// ```text
/// pipelines/db.yaml:12:3: error: unknown field `stpes`
///    |
/// 12 |   stpes:
///    |   ^^^^^ did you mean `steps`?
/// ```
pub fn render(path: &str, source: &str, diagnostic: &Diagnostic, style: Style) -> String {
    let quoted = source
        .lines()
        .nth(diagnostic.pos.line.saturating_sub(1) as usize)
        .map(Quoted::new);
    render_quoting(path, quoted.as_ref(), diagnostic, style)
}

/// A file's lines, found once for rendering many diagnostics of it: [`render`] looks for its line
/// from the start of the file, which for every error of a file with thousands of them was most
/// of the time of a check (9,000 errors in a 650 KB file: a second).
pub struct Lines<'a>(Vec<Quoted<'a>>);

impl<'a> Lines<'a> {
    pub fn of(source: &'a str) -> Lines<'a> {
        Lines(source.lines().map(Quoted::new).collect())
    }

    /// [`render`], with the line looked up here.
    pub fn render(&self, path: &str, diagnostic: &Diagnostic, style: Style) -> String {
        let quoted = self.0.get(diagnostic.pos.line.saturating_sub(1) as usize);
        render_quoting(path, quoted, diagnostic, style)
    }
}

/// Characters between two of a long line's marks (see [`Quoted`]).
const STRIDE: usize = 256;

/// A line as a diagnostic quotes it: its text (without a trailing `\r`), its length in
/// characters, and for a long line that is not ASCII, the byte where every `STRIDE`th character
/// starts, so that finding a column costs a few hundred steps, not the line's length, for each
/// of the errors of one long line.
struct Quoted<'a> {
    text: &'a str,
    ascii: bool,
    chars: usize,
    marks: Vec<usize>,
}

impl<'a> Quoted<'a> {
    fn new(line: &'a str) -> Quoted<'a> {
        let text = line.trim_end_matches('\r');
        let ascii = text.is_ascii();
        let (chars, marks) = if ascii {
            (text.len(), Vec::new())
        } else if text.len() > QUOTE_MAX {
            let marks = text
                .char_indices()
                .step_by(STRIDE)
                .map(|(b, _)| b)
                .collect();
            (text.chars().count(), marks)
        } else {
            (text.chars().count(), Vec::new())
        };
        Quoted {
            text,
            ascii,
            chars,
            marks,
        }
    }

    /// The byte where character `n` starts (the end of the line for `n` past it).
    fn byte(&self, n: usize) -> usize {
        if n >= self.chars {
            return self.text.len();
        }
        if self.ascii {
            return n;
        }
        let k = (n / STRIDE).min(self.marks.len().saturating_sub(1));
        let (base, skip) = match self.marks.get(k) {
            Some(&b) => (b, n - k * STRIDE),
            None => (0, n),
        };
        self.text[base..]
            .char_indices()
            .nth(skip)
            .map_or(self.text.len(), |(b, _)| base + b)
    }
}

/// [`render`] with the diagnostic's line given (`None`: past the end of the file).
fn render_quoting(
    path: &str,
    quoted: Option<&Quoted<'_>>,
    diagnostic: &Diagnostic,
    style: Style,
) -> String {
    let Pos { line, col, len } = diagnostic.pos;
    let (level_code, marker_code) = match diagnostic.severity {
        Severity::Error => ("1;31", "1;31"),
        Severity::Warning => ("1;33", "1;33"),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}: {}",
        style.paint("1", &format!("{path}:{line}:{col}")),
        style.paint(level_code, diagnostic.severity.as_str()),
        style.paint("1", &diagnostic.message)
    );
    let Some(quoted) = quoted else {
        if let Some(help) = &diagnostic.help {
            let _ = writeln!(out, "  = help: {help}");
        }
        return out;
    };
    let (text, start, width) = excerpt(quoted, col.saturating_sub(1) as usize, len as usize);
    let number = line.to_string();
    let gutter = " ".repeat(number.len());
    let bar = style.paint("1;34", "|");
    let _ = writeln!(out, "{gutter} {bar}");
    let _ = writeln!(
        out,
        "{} {bar} {}",
        style.paint("1;34", &number),
        expand_tabs(&text)
    );
    // The marker is placed in characters, with tabs expanded the same way as the quoted line.
    let prefix: String = text.chars().take(start).collect();
    let indent = expand_tabs(&prefix).chars().count();
    let marker = "^".repeat(width);
    let help = diagnostic
        .help
        .as_deref()
        .map(|h| format!(" {h}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{gutter} {bar} {}{}{}",
        " ".repeat(indent),
        style.paint(marker_code, &marker),
        style.paint(marker_code, &help)
    );
    out
}

/// The most characters of a line a diagnostic quotes. A longer line is quoted from
/// `QUOTE_CONTEXT` characters before the marker, with `…` where it is cut, so that the errors of
/// one long line (a script with 80,000 references) each cost what they show, not the whole line.
const QUOTE_MAX: usize = 240;

/// Characters quoted before the marker of a long line.
const QUOTE_CONTEXT: usize = 60;

/// What of `line` to quote for a marker at character `col` (0-based) of `len` characters: the
/// text, the character of it where the marker starts, and the marker's width (at least 1, at
/// most what the text has from there).
fn excerpt<'a>(line: &Quoted<'a>, col: usize, len: usize) -> (Cow<'a, str>, usize, usize) {
    let total = line.chars;
    let start = col.min(total);
    if total <= QUOTE_MAX {
        let width = len.clamp(1, (total - start).max(1));
        return (Cow::Borrowed(line.text), start, width);
    }
    let from = start.saturating_sub(QUOTE_CONTEXT);
    let to = (from + QUOTE_MAX).min(total);
    let lead = usize::from(from > 0);
    let shown = format!(
        "{}{}{}",
        if from > 0 { "…" } else { "" },
        &line.text[line.byte(from)..line.byte(to)],
        if to < total { "…" } else { "" }
    );
    let available = (to - from).saturating_sub(start - from);
    (
        Cow::Owned(shown),
        start - from + lead,
        len.clamp(1, available.max(1)),
    )
}

fn expand_tabs(text: &str) -> String {
    text.replace('\t', "    ")
}

/// The JSON shape of `gantry validate --format json` for one diagnostic.
#[derive(Debug, Clone, Serialize)]
pub struct JsonDiagnostic {
    pub line: u32,
    pub column: u32,
    pub message: String,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl From<&Diagnostic> for JsonDiagnostic {
    fn from(d: &Diagnostic) -> JsonDiagnostic {
        JsonDiagnostic {
            line: d.pos.line,
            column: d.pos.col,
            message: d.message.clone(),
            severity: d.severity,
            help: d.help.clone(),
        }
    }
}

/// Finds the closest candidate to a misspelt word, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let chars = word.chars().count();
    candidates
        .into_iter()
        // No fewer edits than the lengths differ by: most candidates need no distance at all.
        .filter(|c| c.chars().count().abs_diff(chars) <= (c.len().max(word.len()) / 3).max(1))
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance with adjacent transpositions counted as one edit (`stpes` → `steps` is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(prev2[j - 2] + 1);
            }
            cur[j] = best;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_line_and_a_marker_under_the_span() {
        let source = "kind: Pipeline\nstpes:\n  - name: a\n";
        let d = Diagnostic::error(Pos::new(2, 1, 5), "unknown field `stpes`")
            .with_help("did you mean `steps`?");
        let text = render("p.yaml", source, &d, Style::default());
        assert_eq!(
            text,
            "p.yaml:2:1: error: unknown field `stpes`\n  |\n2 | stpes:\n  | ^^^^^ did you mean `steps`?\n"
        );
    }

    #[test]
    fn markers_are_clamped_to_the_line() {
        let source = "a: b\n";
        let d = Diagnostic::error(Pos::new(1, 4, 40), "bad");
        let text = render("p.yaml", source, &d, Style::default());
        assert!(text.ends_with("  |    ^\n"), "{text}");
    }

    #[test]
    fn a_long_line_is_quoted_around_its_marker() {
        // 1,000 characters, the marker on `{{x}}` at character 500.
        let line = format!("{}{{{{x}}}}{}", "a".repeat(500), "b".repeat(495));
        let d = Diagnostic::error(Pos::new(1, 501, 5), "unknown `x`");
        let text = render("p.yaml", &line, &d, Style::default());
        let quoted = format!("…{}{{{{x}}}}{}…", "a".repeat(60), "b".repeat(175));
        let marker = format!("  | {}^^^^^", " ".repeat(61));
        assert_eq!(
            text,
            format!("p.yaml:1:501: error: unknown `x`\n  |\n1 | {quoted}\n{marker}\n")
        );
        // Near the start: nothing cut before. Not ASCII: counted in characters all the same.
        let line = format!("é{{{{x}}}}{}", "é".repeat(400));
        let d = Diagnostic::error(Pos::new(1, 2, 5), "unknown `x`");
        let text = render("p.yaml", &line, &d, Style::default());
        let quoted = format!("é{{{{x}}}}{}…", "é".repeat(234));
        assert_eq!(
            text,
            format!("p.yaml:1:2: error: unknown `x`\n  |\n1 | {quoted}\n  |  ^^^^^\n")
        );
        // A marker past the end of a long line stays at its end.
        let line = "c".repeat(300);
        let d = Diagnostic::error(Pos::new(1, 400, 3), "past the end");
        let text = render("p.yaml", &line, &d, Style::default());
        assert!(
            text.ends_with(&format!(
                "1 | …{}\n  | {}^\n",
                "c".repeat(60),
                " ".repeat(61)
            )),
            "{text}"
        );
    }

    #[test]
    fn suggestions_catch_typos_but_not_strangers() {
        assert_eq!(did_you_mean("stpes", ["steps", "templates"]), Some("steps"));
        assert_eq!(
            did_you_mean("dependson", ["dependsOn", "env"]),
            Some("dependsOn")
        );
        assert_eq!(did_you_mean("zzz", ["steps", "templates"]), None);
    }
}
