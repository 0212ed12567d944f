//! `gantry validate PATH...`: check pipeline files and print every diagnostic.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::exit;
use crate::spec::diagnostic::{self, JsonDiagnostic, Style};
use crate::spec::{self, Diagnostic};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline files, or directories holding .gantry/pipelines/
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// When to colour the output
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// The result for one file.
struct FileReport {
    path: String,
    source: String,
    pipeline: Option<String>,
    diagnostics: Vec<Diagnostic>,
}

#[derive(Serialize)]
struct JsonReport {
    files: Vec<JsonFile>,
}

#[derive(Serialize)]
struct JsonFile {
    path: String,
    valid: bool,
    /// The pipeline's name; `null` when the file has errors that leave it without one.
    pipeline: Option<String>,
    errors: Vec<JsonDiagnostic>,
}

/// The pipeline files a path stands for: the file itself, or a directory's `.gantry/pipelines/*.y{a,}ml`.
pub fn pipeline_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    // `gantry validate .` shows `.gantry/pipelines/…`, as the files are named from here.
    let base = if path == Path::new(".") {
        Path::new("")
    } else {
        path
    };
    let dir = base.join(".gantry").join("pipelines");
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        format!(
            "{} is a directory without a readable .gantry/pipelines folder ({e}); name a pipeline file or a repository root",
            path.display()
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let p = entry.path();
        let is_yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if is_yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

pub fn run(args: &Args) -> u8 {
    let mut io_failed = false;
    let mut reports: Vec<FileReport> = Vec::new();
    for path in &args.paths {
        let files = match pipeline_files(path) {
            Ok(files) => files,
            Err(e) => {
                eprintln!("gantry: {e}");
                io_failed = true;
                continue;
            }
        };
        // Pipeline names are unique within a source: a repository (one directory argument).
        let mut names: HashMap<String, String> = HashMap::new();
        for file in files {
            let shown = file.display().to_string();
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("gantry: cannot read {shown}: {e}");
                    io_failed = true;
                    continue;
                }
            };
            let Ok(source) = String::from_utf8(bytes) else {
                reports.push(FileReport {
                    path: shown,
                    source: String::new(),
                    pipeline: None,
                    diagnostics: vec![Diagnostic::error(
                        spec::Pos::new(1, 1, 1),
                        "file is not valid UTF-8",
                    )],
                });
                continue;
            };
            let checked = spec::check_file(&source, Some(&shown));
            let mut diagnostics = checked.diagnostics;
            let pipeline = checked.pipeline.as_ref().map(|p| p.name().to_string());
            // Any file with a valid name takes part, also one with other errors.
            if let Some(name) = checked.name {
                if let Some(first) = names.get(&name) {
                    diagnostics.push(Diagnostic::error(
                        checked.name_pos,
                        format!("pipeline name `{name}` is already used by {first}"),
                    ));
                    diagnostics.finish();
                } else {
                    names.insert(name, shown.clone());
                }
            }
            reports.push(FileReport {
                path: shown,
                source,
                pipeline,
                diagnostics: diagnostics.0,
            });
        }
    }
    let any_errors = reports
        .iter()
        .any(|r| r.diagnostics.iter().any(Diagnostic::is_error));
    match args.format {
        Format::Json => print_json(&reports),
        Format::Text => print_text(&reports, args.color),
    }
    if io_failed {
        exit::USAGE
    } else if any_errors {
        exit::FAILURE
    } else {
        exit::OK
    }
}

fn print_json(reports: &[FileReport]) {
    let report = JsonReport {
        files: reports
            .iter()
            .map(|r| JsonFile {
                path: r.path.clone(),
                valid: !r.diagnostics.iter().any(Diagnostic::is_error),
                pipeline: r.pipeline.clone(),
                errors: r.diagnostics.iter().map(JsonDiagnostic::from).collect(),
            })
            .collect(),
    };
    match serde_json::to_string_pretty(&report) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("gantry: cannot encode the report: {e}"),
    }
}

fn print_text(reports: &[FileReport], color: Color) {
    let style = Style {
        color: match color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        },
    };
    let (mut errors, mut warnings, mut valid) = (0usize, 0usize, 0usize);
    for r in reports {
        let has_errors = r.diagnostics.iter().any(Diagnostic::is_error);
        let lines = diagnostic::Lines::of(&r.source);
        for d in &r.diagnostics {
            print!("{}", lines.render(&r.path, d, style));
            println!();
            if d.is_error() {
                errors += 1;
            } else {
                warnings += 1;
            }
        }
        if !has_errors {
            valid += 1;
            let name = r.pipeline.as_deref().unwrap_or("?");
            println!("ok: {} (pipeline `{name}`)", r.path);
        }
    }
    let files = reports.len();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    eprintln!(
        "checked {}: {valid} valid, {} with errors; {}, {}",
        plural(files, "file"),
        files - valid,
        plural(errors, "error"),
        plural(warnings, "warning")
    );
}
