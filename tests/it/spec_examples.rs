//! Every example of the pipeline contract validates (tests/fixtures/spec-examples/README.md), and so
//! does every pipeline of examples/repo-layout.

use std::path::Path;

fn check_folder(dir: &Path) -> usize {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        count += 1;
        let source = std::fs::read_to_string(&path).expect("readable fixture");
        let checked = gantry::spec::check(&source);
        let shown = path.display().to_string();
        let errors: String = checked
            .diagnostics
            .errors()
            .map(|d| gantry::spec::diagnostic::render(&shown, &source, d, Default::default()))
            .collect();
        if checked.pipeline.is_none() || !errors.is_empty() {
            failures.push(errors);
        }
    }
    assert!(
        failures.is_empty(),
        "these files must validate:\n{}",
        failures.join("\n")
    );
    count
}

#[test]
fn every_contract_example_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec-examples");
    assert!(check_folder(&dir) >= 8);
}

#[test]
fn every_example_repository_pipeline_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout/.gantry/pipelines");
    assert!(check_folder(&dir) >= 3);
}

#[test]
fn the_contract_examples_carry_no_warnings_where_they_follow_the_advice() {
    // The parameters example passes values through env, so it must not warn about injection.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec-examples/parameters.yaml");
    let source = std::fs::read_to_string(path).expect("readable fixture");
    let checked = gantry::spec::check(&source);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
}

/// The README's example pipeline validates, and the error it shows for a typo is what Gantry prints.
#[test]
fn the_readme_example_and_its_error_are_true() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let block = |fence: &str| -> String {
        let start = readme
            .find(fence)
            .unwrap_or_else(|| panic!("README has a {fence} block"))
            + fence.len();
        let end = readme[start..].find("```").expect("closed block") + start;
        readme[start..end].to_string()
    };
    let pipeline = block("```yaml\n");
    let checked = gantry::spec::check(&pipeline);
    assert!(
        checked.pipeline.is_some() && checked.diagnostics.is_empty(),
        "{:?}",
        checked.diagnostics
    );

    let typo = pipeline.replacen("    env:", "    evn:", 1);
    let path = ".gantry/pipelines/create-bucket.yaml";
    let checked = gantry::spec::check(&typo);
    let first = checked.diagnostics.iter().next().expect("an error");
    let rendered = gantry::spec::diagnostic::render(path, &typo, first, Default::default());
    let shown = block("```text\n");
    let shown = shown.trim_start_matches("$ gantry validate .\n");
    assert_eq!(rendered, shown);
}
