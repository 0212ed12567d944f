//! One failing fixture per validation rule: see tests/fixtures/invalid/README.md.
//!
//! Every file under `tests/fixtures/invalid/` carries its expected diagnostics as comments at the
//! top (`# expect: error 12:5 unknown field`), and the test checks that `gantry::spec::check`
//! reports exactly those, at exactly those positions, and no other error. Every file under
//! `tests/fixtures/valid/` must check without errors. A failure prints the file, its expectations
//! and every diagnostic actually reported, rendered as the CLI renders them.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use gantry::spec::diagnostic::render;
use gantry::spec::{self, Diagnostic, Severity};

/// One `# expect:` line, with the `# expect-help:` line that may follow it.
#[derive(Debug)]
struct Expectation {
    /// Line of the comment itself, for messages about the expectation.
    at: usize,
    severity: Severity,
    line: u32,
    col: u32,
    message: String,
    help: Option<String>,
}

impl Expectation {
    fn matches(&self, d: &Diagnostic) -> bool {
        d.severity == self.severity
            && d.pos.line == self.line
            && d.pos.col == self.col
            && d.message.contains(&self.message)
            && match &self.help {
                Some(help) => d.help.as_deref().is_some_and(|h| h.contains(help.as_str())),
                None => true,
            }
    }

    fn describe(&self) -> String {
        let mut out = format!(
            "{} {}:{} `{}`",
            self.severity.as_str(),
            self.line,
            self.col,
            self.message
        );
        if let Some(help) = &self.help {
            let _ = write!(out, " (help: `{help}`)");
        }
        out
    }
}

const EXPECT: &str = "# expect:";
const EXPECT_HELP: &str = "# expect-help:";

/// Reads the expectation comments of a fixture. Any comment that looks like an expectation but
/// does not parse is an error, so that a typo cannot silently drop a check.
fn expectations(source: &str) -> Result<Vec<Expectation>, String> {
    let mut out: Vec<Expectation> = Vec::new();
    let mut previous_was_expect = false;
    for (index, raw) in source.lines().enumerate() {
        let at = index + 1;
        let text = raw.trim_end_matches('\r');
        if let Some(rest) = text.strip_prefix(EXPECT_HELP) {
            let help = rest.trim();
            match out.last_mut() {
                Some(last) if previous_was_expect && !help.is_empty() => {
                    last.help = Some(help.to_string())
                }
                _ => {
                    return Err(format!(
                        "line {at}: `{EXPECT_HELP}` must directly follow a `{EXPECT}` line and name a text"
                    ));
                }
            }
            previous_was_expect = false;
            continue;
        }
        if let Some(rest) = text.strip_prefix(EXPECT) {
            out.push(parse_expect(rest).map_err(|e| format!("line {at}: {e}: `{text}`"))?);
            if let Some(last) = out.last_mut() {
                last.at = at;
            }
            previous_was_expect = true;
            continue;
        }
        previous_was_expect = false;
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if squeezed.starts_with("#expect") {
            return Err(format!(
                "line {at}: malformed expectation, write `{EXPECT} SEVERITY LINE:COL TEXT`: `{text}`"
            ));
        }
    }
    Ok(out)
}

/// Parses `error 12:5 unknown field` (the part after `# expect:`).
fn parse_expect(rest: &str) -> Result<Expectation, String> {
    let mut words = rest.trim().splitn(3, ' ');
    let severity = match words.next() {
        Some("error") => Severity::Error,
        Some("warning") => Severity::Warning,
        _ => return Err("the severity must be `error` or `warning`".into()),
    };
    let place = words.next().unwrap_or_default();
    let (line, col) = place
        .split_once(':')
        .and_then(|(l, c)| Some((l.parse::<u32>().ok()?, c.parse::<u32>().ok()?)))
        .ok_or("the position must be LINE:COL")?;
    let message = words.next().unwrap_or_default().trim().to_string();
    if message.is_empty() {
        return Err("the expectation needs a text that the message contains".into());
    }
    Ok(Expectation {
        at: 0,
        severity,
        line,
        col,
        message,
        help: None,
    })
}

fn fixture_dir(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(folder)
}

/// The fixture files of a folder, sorted, as (name relative to the crate, text).
fn fixtures(folder: &str) -> Vec<(String, String)> {
    let dir = fixture_dir(folder);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (format!("tests/fixtures/{folder}/{name}"), text)
        })
        .collect()
}

/// Checks one fixture; returns the problems found, empty when it behaves as its comments say.
/// `valid` fixtures may list warnings but no errors, and every warning they raise must be listed.
fn check_fixture(path: &str, source: &str, valid: bool) -> Vec<String> {
    let expected = match expectations(source) {
        Ok(e) => e,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if valid {
        for e in expected.iter().filter(|e| e.severity == Severity::Error) {
            problems.push(format!(
                "line {}: a valid fixture cannot expect an error",
                e.at
            ));
        }
    } else if expected.is_empty() {
        problems.push(format!(
            "no `{EXPECT}` comment: an invalid fixture must say what it expects"
        ));
    }
    let checked = spec::check(source);
    let actual: Vec<&Diagnostic> = checked.diagnostics.iter().collect();
    let mut used = vec![false; actual.len()];
    for e in &expected {
        let found = actual
            .iter()
            .enumerate()
            .find(|(i, d)| !used[*i] && e.matches(d));
        match found {
            Some((i, _)) => used[i] = true,
            None => problems.push(format!("missing (line {}): {}", e.at, e.describe())),
        }
    }
    // Unlisted warnings are tolerated in a fixture about an error, not in one about a warning.
    let strict_warnings = valid || expected.iter().any(|e| e.severity == Severity::Warning);
    for (d, used) in actual.iter().zip(&used) {
        if !used && (d.is_error() || strict_warnings) {
            problems.push(format!(
                "unexpected {} {}:{} `{}`",
                d.severity.as_str(),
                d.pos.line,
                d.pos.col,
                d.message
            ));
        }
    }
    let has_errors = checked.diagnostics.has_errors();
    if has_errors == checked.pipeline.is_some() {
        problems.push(format!(
            "`Checked::pipeline` is {} although the file has {}errors",
            if checked.pipeline.is_some() {
                "set"
            } else {
                "missing"
            },
            if has_errors { "" } else { "no " }
        ));
    }
    if problems.is_empty() {
        return problems;
    }
    let mut report = format!("{path}:\n");
    for p in &problems {
        let _ = writeln!(report, "  - {p}");
    }
    let _ = writeln!(report, "  expected:");
    for e in &expected {
        let _ = writeln!(report, "    {}", e.describe());
    }
    let _ = writeln!(report, "  actual ({}):", actual.len());
    for d in &actual {
        for line in render(path, source, d, Default::default()).lines() {
            let _ = writeln!(report, "    {line}");
        }
    }
    vec![report]
}

fn check_folder(folder: &str, valid: bool) {
    let files = fixtures(folder);
    assert!(
        !files.is_empty(),
        "no fixtures in {}",
        fixture_dir(folder).display()
    );
    let failures: Vec<String> = files
        .iter()
        .flat_map(|(path, source)| check_fixture(path, source, valid))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures in tests/fixtures/{folder} do not behave as their comments say:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_invalid_fixture_reports_exactly_its_diagnostics() {
    check_folder("invalid", false);
}

#[test]
fn every_valid_fixture_checks_without_errors() {
    check_folder("valid", true);
}

#[test]
fn expectation_comments_parse_strictly() {
    let e = expectations(
        "# expect: error 12:5 unknown field `stpes`\n# expect-help: did you mean\nkind: x\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].at, e[0].line, e[0].col), (1, 12, 5));
    assert_eq!(e[0].severity, Severity::Error);
    assert_eq!(e[0].message, "unknown field `stpes`");
    assert_eq!(e[0].help.as_deref(), Some("did you mean"));
    for bad in [
        "# expect: fatal 1:1 x\n",
        "# expect: error 1 x\n",
        "# expect: error 1:1\n",
        "# expect-help: orphan\n",
        "#expect: error 1:1 x\n",
        "# expects: error 1:1 x\n",
        "# expect: error 1:1 x\nkind: y\n# expect-help: too late\n",
    ] {
        assert!(expectations(bad).is_err(), "accepted {bad:?}");
    }
}

/// Pins the rendering of a diagnostic: the located line, the marker under the span and the help.
#[test]
fn a_misspelt_top_level_field_renders_with_marker_and_suggestion() {
    let path = "tests/fixtures/invalid/unknown-field-top-level.yaml";
    let source = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let checked = spec::check(&source);
    let rendered: String = checked
        .diagnostics
        .iter()
        .map(|d| render(path, &source, d, Default::default()))
        .collect();
    let expected = [
        "tests/fixtures/invalid/unknown-field-top-level.yaml:7:1: error: unknown field `stpes` in the pipeline",
        "  |",
        "7 | stpes:",
        "  | ^^^^^ did you mean `steps`?",
        "",
    ]
    .join("\n");
    assert_eq!(rendered, expected);
}
