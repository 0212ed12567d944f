//! Tidy checks that keep ARCHITECTURE.md true: every source file opens with a `//!` line saying what
//! it owns, and each module imports only what `ALLOWED` (the import table of ARCHITECTURE.md) gives
//! it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each top-level module may import from the crate (besides itself). Keep in sync with the
/// codemap in ARCHITECTURE.md.
const ALLOWED: &[(&str, &[&str])] = &[
    ("spec", &[]),
    ("config", &["spec"]),
    ("plan", &["spec"]),
    ("forge", &[]),
    ("source", &["spec"]),
    ("catalog", &["spec", "source", "store"]),
    ("store", &["spec", "plan", "executor"]),
    ("executor", &["spec", "plan", "source"]),
    ("marketplace", &["spec", "store", "executor"]),
    (
        "trigger",
        &["spec", "plan", "source", "catalog", "store", "forge"],
    ),
    (
        "run",
        &[
            "spec",
            "plan",
            "store",
            "executor",
            "trigger",
            "marketplace",
        ],
    ),
    (
        "report",
        &[
            "spec",
            "plan",
            "store",
            "executor",
            "run",
            "forge",
            "marketplace",
        ],
    ),
    (
        "views",
        &["spec", "catalog", "store", "executor", "marketplace"],
    ),
    (
        "intake",
        &[
            "spec", "plan", "source", "catalog", "store", "executor", "trigger", "run", "report",
            "forge",
        ],
    ),
    (
        "server",
        &[
            "spec",
            "config",
            "plan",
            "source",
            "catalog",
            "store",
            "executor",
            "marketplace",
            "trigger",
            "run",
            "report",
            "forge",
            "intake",
            "views",
        ],
    ),
    (
        "cli",
        &[
            "spec",
            "config",
            "plan",
            "source",
            "catalog",
            "store",
            "executor",
            "marketplace",
            "trigger",
            "run",
            "report",
            "forge",
            "intake",
            "server",
            "views",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_files() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 10,
        "expected the source tree under {}",
        src.display()
    );
    files
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let missing: Vec<String> = src_files()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` doc line: {missing:#?}"
    );
}

/// The top-level modules a file names through `crate::<module>`.
fn crate_imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn modules_import_only_what_sits_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for path in src_files() {
        let rel = path.strip_prefix(&src).expect("under src");
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(ok) = allowed.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` is not in the tidy allowlist",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("readable source");
        for import in crate_imports(&text) {
            if import != module && !ok.contains(&import.as_str()) {
                violations.push(format!(
                    "{}: `{module}` must not import `{import}`",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_paths_and_use_lines() {
    let text = "use crate::spec::model::Pipeline;\nfn f() { crate::plan::plan(x); } // crate::store is a comment\n";
    assert_eq!(crate_imports(text), vec!["spec", "plan"]);
}

/// Source files outside `allowed_dir` that name any of `crates` in code (comments aside).
fn crate_users_outside(crates: &[&str], allowed_dir: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for path in src_files() {
        let rel = path.strip_prefix(&src).expect("under src");
        if rel.starts_with(allowed_dir) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            if let Some(name) = crates.iter().find(|c| code.contains(&format!("{c}::"))) {
                found.push(format!("{}: names `{name}`", rel.display()));
            }
        }
    }
    found
}

#[test]
fn only_the_store_names_the_database() {
    let found = crate_users_outside(&["sled"], "store");
    assert!(
        found.is_empty(),
        "sled outside src/store:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_forge_module_names_forge_clients() {
    let found = crate_users_outside(&["octocrab", "gitlab"], "forge");
    assert!(
        found.is_empty(),
        "forge clients outside src/forge:\n{}",
        found.join("\n")
    );
}
