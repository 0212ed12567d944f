//! Choreo-shaped pipelines (tests/fixtures/choreo): they validate as they are, `gantry convert`
//! gives Gantry's form with the same plan, the ones without external dependencies run to success,
//! and the errors of a Choreo file name Choreo's fields.

use std::path::{Path, PathBuf};

use gantry::spec;

use crate::run::Scratch;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choreo");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    files
}

fn read(path: &Path) -> (String, String) {
    let source = std::fs::read_to_string(path).expect("readable fixture");
    (source, path.display().to_string())
}

fn rendered(shown: &str, source: &str, checked: &spec::Checked) -> String {
    checked
        .diagnostics
        .iter()
        .map(|d| spec::diagnostic::render(shown, source, d, Default::default()))
        .collect()
}

/// A plan's Debug text without the positions of references, which differ between two files.
fn plan_text(pipeline: &spec::Pipeline) -> String {
    let text = format!("{:#?}", gantry::plan::plan(pipeline));
    let mut out = String::new();
    let mut skip = 0usize;
    for line in text.lines() {
        if skip > 0 {
            skip += line.matches('{').count();
            skip -= line.matches('}').count().min(skip);
            continue;
        }
        if line.trim_start().starts_with("pos: Pos {") {
            skip = 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn every_choreo_fixture_validates_without_errors() {
    for path in fixtures() {
        let (source, shown) = read(&path);
        let checked = spec::check_file(&source, Some(&shown));
        assert!(
            checked.pipeline.is_some(),
            "{shown} must validate:\n{}",
            rendered(&shown, &source, &checked)
        );
    }
}

#[test]
fn converting_gives_gantry_form_with_the_same_plan() {
    for path in fixtures() {
        let (source, shown) = read(&path);
        let original = spec::check_file(&source, Some(&shown))
            .pipeline
            .expect("valid fixture");
        let converted = spec::convert(&source, Some(&shown));
        assert!(converted.choreo, "{shown} is Choreo-shaped");
        let text = converted.text.expect("converted text");
        assert!(
            text.contains("apiVersion: gantry.dev/v1\nkind: Pipeline\n"),
            "{text}"
        );
        // Gantry's form needs no file name and is not read as Choreo again.
        let again = spec::check(&text);
        let Some(pipeline) = again.pipeline.clone() else {
            panic!(
                "{shown} converted:\n{text}\n{}",
                rendered(&shown, &text, &again)
            );
        };
        assert_eq!(
            plan_text(&original),
            plan_text(&pipeline),
            "{shown}:\n{text}"
        );
        assert_eq!(original.metadata, pipeline.metadata);
        assert!(
            spec::convert(&text, None).text.is_none(),
            "{shown}: already Gantry's form"
        );
        // The comments at the top of the file are kept.
        let first = source.lines().next().unwrap_or_default();
        assert!(first.starts_with('#') && text.starts_with(first), "{shown}");
    }
}

#[test]
fn choreo_fixtures_without_external_dependencies_run_to_success() {
    let scratch = Scratch::new();
    for path in fixtures() {
        if path.ends_with("provision-database.yaml") {
            continue; // needs terraform and cloud credentials
        }
        let out = scratch.run_file(&path, &[]);
        assert!(
            out.status.success(),
            "{} failed:\n{}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_cli_converts_and_writes_a_file_that_runs_the_same() {
    let scratch = Scratch::new();
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choreo/templates-with-io.yaml"),
    )
    .expect("fixture");
    let file = scratch.pipeline("templates-with-io.yaml", &source);
    let printed = scratch.gantry(&["convert", file.to_str().expect("utf-8")]);
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).expect("utf-8");
    assert_eq!(std::fs::read_to_string(&file).expect("unchanged"), source);
    let written = scratch.gantry(&["convert", file.to_str().expect("utf-8"), "--write"]);
    assert!(written.status.success(), "{written:?}");
    assert_eq!(std::fs::read_to_string(&file).expect("written"), printed);
    let again = scratch.gantry(&["convert", file.to_str().expect("utf-8")]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is in Gantry's form already"),
        "{again:?}"
    );
    let run = scratch.run_file(&file, &[]);
    assert!(run.status.success(), "{run:?}");
}

#[test]
fn the_cli_refuses_to_convert_a_file_with_errors() {
    let scratch = Scratch::new();
    let file = scratch.pipeline(
        "broken.yaml",
        "steps:\n  - name: a\n    inlineScrpt: echo hi\n",
    );
    let out = scratch.gantry(&["convert", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field `inlineScrpt` in a step of a Choreo pipeline"),
        "{stderr}"
    );
}

/// Every error of a Choreo file is located and names the Choreo field.
#[test]
fn errors_in_a_choreo_file_name_choreo_fields() {
    let source = "\
steps:
  - name: a
    inlineScrpt: echo hi
  - name: b
    inlineScript: echo b
    retryStrategy:
      limit: 500
      retryPolicy: Sometimes
      backoff:
        duration: soon
  - name: c
    template: choreo/git-clone@v1
  - name: d
    inlineScript: echo d
    env:
      - name: TOKEN
        valueFrom:
          secretKeyRef: {name: t, key: k}
    outputs:
      parameters:
        - name: out
          valueFrom:
            path: /etc/passwd
";
    let checked = spec::check_file(source, Some("errors.yaml"));
    assert!(checked.pipeline.is_none());
    let shown: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| {
            format!(
                "{}:{}: {}{}",
                d.pos.line,
                d.pos.col,
                d.message,
                d.help
                    .as_deref()
                    .map(|h| format!(" (help: {h})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let expected = [
        "2:11: step `a` has nothing to run (help: give it `inlineScript`, `command` or `template`)",
        "3:5: unknown field `inlineScrpt` in a step of a Choreo pipeline (help: did you mean `inlineScript`?)",
        "7:14: `retryStrategy.limit` must be a whole number from 0 to 100, found 500",
        "8:20: invalid `retryStrategy.retryPolicy`: expected one of Always, OnFailure, OnError, OnTransientError (help: OnError and OnTransientError are read as Always)",
        "10:19: invalid duration `soon`: expected an amount with a unit, such as `90s`, `10m`, `1h` or `1h30m`",
        "12:15: Gantry has no Choreo built-in `choreo/git-clone@v1` (help: Gantry offers gantry/git-checkout@v1, gantry/marketplace-publish@v1 (for choreo/marketplace-publish@v1); write anything else as an `inlineScript` step)",
        "18:11: `env[].valueFrom` (a Kubernetes secret or config map) is not read by Gantry (help: store the value with `gantry secrets set NAME` and write `value: \"{{SECRETS.NAME}}\"`)",
        "23:19: `valueFrom.path` `/etc/passwd` is outside what a step can write (help: a step sees only the workspace and a private /tmp: write the value inside the workspace or under /tmp/)",
    ];
    assert_eq!(shown, expected, "{shown:#?}");
}

#[test]
fn a_choreo_file_without_a_name_needs_its_file_name() {
    let source = "steps:\n  - name: a\n    inlineScript: echo hi\n";
    let checked = spec::check(source);
    assert!(checked.pipeline.is_none());
    let d = checked.diagnostics.errors().next().expect("an error");
    assert_eq!((d.pos.line, d.pos.col), (1, 1));
    assert!(
        d.message.contains("Gantry names it after its file"),
        "{}",
        d.message
    );
    let named = spec::check_file(source, Some("ci/Nightly_Build.yaml"));
    assert_eq!(named.pipeline.expect("valid").name(), "nightly-build");
    let with_metadata =
        spec::check("metadata: {name: own}\nsteps:\n  - name: a\n    inlineScript: echo hi\n");
    assert_eq!(with_metadata.pipeline.expect("valid").name(), "own");
}

#[test]
fn files_with_api_version_or_kind_are_read_as_gantry_files() {
    // A native file missing `apiVersion` still gets the native error, not the Choreo reading.
    let source = "kind: Pipeline\nmetadata: {name: p}\nsteps:\n  - name: a\n    script: echo hi\n";
    let checked = spec::check_file(source, Some("p.yaml"));
    let messages: Vec<&str> = checked
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        messages,
        ["the pipeline is missing the required field `apiVersion`"]
    );
}

#[test]
fn the_provisioning_pipeline_publishes_with_gantry_s_built_in() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choreo/provision-database.yaml");
    let (source, shown) = read(&path);
    let checked = spec::check_file(&source, Some(&shown));
    let pipeline = checked.pipeline.expect("valid");
    assert_eq!(pipeline.secrets, ["arm_client_secret", "db_admin_password"]);
    assert_eq!(pipeline.variables, ["arm_client_id"]);
    let publish = pipeline
        .all_steps()
        .find(|s| s.name == "publish-marketplace")
        .expect("publish step");
    let spec::model::StepRun::Publish(resource) = &publish.run else {
        panic!("{:?}", publish.run);
    };
    assert_eq!(resource.category, spec::model::Category::Database);
    assert_eq!(resource.version.to_string(), "1.0.0");
    assert!(resource.connection_credentials[0].parameters[1].is_secret);
    let run = pipeline.all_steps().next().expect("first step");
    assert_eq!(run.timeout, Some(std::time::Duration::from_secs(300)));
    let warnings: Vec<&str> = checked
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w
                .starts_with("`volumeClaimTemplates` has no effect on Gantry's local executor")),
        "{warnings:?}"
    );
}

/// A `valueFrom.path` that was not written fails the step (without `default`), also under a
/// `#!/bin/bash` script without `set -e`, and a failing script keeps its own exit status.
#[test]
fn a_missing_output_file_fails_the_step_and_a_failing_script_keeps_its_status() {
    let scratch = Scratch::new();
    let missing = scratch.pipeline(
        "missing-output.yaml",
        "steps:\n  - name: a\n    inlineScript: |\n      #!/bin/bash\n      echo no file\n    outputs:\n      parameters:\n        - name: x\n          valueFrom: {path: /tmp/never}\n        - name: y\n          valueFrom: {path: /tmp/y, default: d}\n",
    );
    let out = scratch.run_file(&missing, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let failing = scratch.pipeline(
        "failing-script.yaml",
        "steps:\n  - name: a\n    inlineScript: |\n      #!/bin/bash\n      echo value > /tmp/x\n      false\n    outputs:\n      parameters:\n        - name: x\n          valueFrom: {path: /tmp/x}\n",
    );
    let out = scratch.run_file(&failing, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("exited with code 1"), "{stdout}");
}

/// Containers without `dependencies` start together, after the item before them; the item after
/// waits for all of them.
#[test]
fn a_container_set_without_dependencies_runs_its_containers_side_by_side() {
    let source = "\
templates:
  - name: pair
    containerSet:
      containers:
        - {name: one, image: alpine, command: [sh, -c, 'echo 1']}
        - {name: two, image: alpine, command: [sh, -c, 'echo 2']}
steps:
  - name: first
    inlineScript: echo first
  - name: both
    template: pair
  - name: last
    inlineScript: echo last
";
    let pipeline = spec::check_file(source, Some("pair.yaml"))
        .pipeline
        .expect("valid");
    let deps: Vec<(String, Vec<String>)> = pipeline
        .all_steps()
        .map(|s| (s.name.clone(), s.depends_on.clone()))
        .collect();
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        deps,
        vec![
            ("first".to_string(), owned(&[])),
            ("both-one".to_string(), owned(&["first"])),
            ("both-two".to_string(), owned(&["first"])),
            ("last".to_string(), owned(&["both-one", "both-two"])),
        ]
    );
}

/// `gantry convert` keeps the comments at the top, the comment lines above a key, and everything
/// inside scripts; it prints Gantry's concise form.
#[test]
fn convert_prints_gantry_s_form_with_the_comments_it_can_keep() {
    let source = "\
# Header line one
# Header line two

metadata:
  # the name
  name: commented
steps:
  # first step
  - name: a
    # runs a script
    inlineScript: |
      echo a
      # inside the script
    env:
      - name: GREETING
        value: hello
    # five minutes
    timeout: 300
    retryStrategy:
      limit: 2
      backoff: {duration: 5s, factor: 2}
  - - name: b   # trailing comments are not kept
      inlineScript: echo b
";
    let converted = spec::convert(source, Some("commented.yaml"));
    let expected = "\
# Header line one
# Header line two
apiVersion: gantry.dev/v1
kind: Pipeline
metadata:
  # the name
  name: commented
steps:
  # first step
  - name: a
    # runs a script
    script: |
      echo a
      # inside the script
    env:
      GREETING: hello
    retry:
      limit: 2
      backoff: \"5s\"
      factor: 2
    # five minutes
    timeout: \"300s\"
  - - name: b
      script: echo b
";
    assert_eq!(converted.text.as_deref(), Some(expected));
}

/// `gantry pipeline apply -f FILE` takes a Choreo file as it is, named after the file.
#[test]
fn a_choreo_file_can_be_applied_as_a_local_pipeline() {
    let scratch = Scratch::new();
    let file = scratch.pipeline(
        "Nightly_Checks.yaml",
        "steps:\n  - name: a\n    inlineScript: echo hi\n",
    );
    let out = scratch.gantry(&["pipeline", "apply", "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("local/nightly-checks"), "{stdout}");
    let list = scratch.gantry(&["pipeline", "list"]);
    assert!(list.status.success(), "{list:?}");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("nightly-checks"),
        "{list:?}"
    );
}

/// What `gantry convert` prints is a contract a user reads: pinned for three fixtures.
#[test]
fn convert_output_matches_the_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choreo");
    for name in ["templates-with-io", "provision-database", "container-set"] {
        let file = dir.join(format!("{name}.yaml"));
        let (source, shown) = read(&file);
        let converted = spec::convert(&source, Some(&shown)).text.expect("converts");
        let snapshot =
            std::fs::read_to_string(dir.join(format!("converted/{name}.yaml"))).expect("snapshot");
        assert_eq!(converted, snapshot, "{name}");
        // The snapshot is a Gantry file that validates as it is.
        assert!(spec::check(&snapshot).pipeline.is_some(), "{name}");
    }
}

#[test]
fn step_fields_on_a_template_are_refused_with_where_they_go() {
    let source = "\
templates:
  - name: t
    inlineScript: echo t
    retryStrategy: {limit: 2}
steps:
  - name: a
    template: t
";
    let checked = spec::check_file(source, Some("t.yaml"));
    let errors: Vec<String> = checked
        .diagnostics
        .errors()
        .map(|d| {
            format!(
                "{}:{}: {} ({})",
                d.pos.line,
                d.pos.col,
                d.message,
                d.help.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            "4:5: `retryStrategy` on a template is not read by Gantry (put `retryStrategy` on each step that calls template `t`)"
        ]
    );
}

#[test]
fn an_empty_parallel_group_is_an_error() {
    let source = "steps:\n  - name: a\n    inlineScript: echo a\n  - []\n";
    let checked = spec::check_file(source, Some("g.yaml"));
    let errors: Vec<(u32, &str)> = checked
        .diagnostics
        .errors()
        .map(|d| (d.pos.line, d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [(4, "a parallel group must hold at least one step")]
    );
}

/// `gantry validate` reads Choreo files as they are and names them after their files.
#[test]
fn gantry_validate_accepts_the_choreo_fixtures() {
    let scratch = Scratch::new();
    let files: Vec<String> = fixtures()
        .iter()
        .map(|p| p.to_str().expect("utf-8").to_string())
        .collect();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = scratch.gantry(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sequence-and-parallel.yaml (pipeline `sequence-and-parallel`)"),
        "{stdout}"
    );
    assert!(!stdout.contains(": error:"), "{stdout}");
}

#[test]
fn a_step_with_a_template_and_a_body_is_an_error() {
    let source = "\
templates:
  - name: t
    inlineScript: echo t
steps:
  - name: a
    template: t
    inlineScript: echo a
";
    let checked = spec::check_file(source, Some("both.yaml"));
    let errors: Vec<(u32, &str)> = checked
        .diagnostics
        .errors()
        .map(|d| (d.pos.line, d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [(
            7,
            "step `a` has a template and `inlineScript`; a step runs exactly one of them"
        )]
    );
}

#[test]
fn nothing_a_template_gives_is_silently_dropped() {
    let source = "\
templates:
  - name: t
    inlineScript: echo t
    containerSet:
      containers:
        - {name: c, command: ['true']}
  - name: u
    args: [x]
    inlineScript: echo u
steps:
  - name: a
    template: t
";
    let checked = spec::check_file(source, Some("t.yaml"));
    let errors: Vec<(u32, &str)> = checked
        .diagnostics
        .errors()
        .map(|d| (d.pos.line, d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                3,
                "template `t` has a `containerSet` and `inlineScript`; a template runs exactly one of them"
            ),
            (8, "`args` needs `command`"),
        ]
    );
}

#[test]
fn a_step_s_container_set_is_its_only_body_and_names_real_container_templates() {
    let source = "\
containerTemplates:
  - name: lint
    image: alpine:3.20
    command: ['true']
steps:
  - name: a
    inlineScript: echo a
    containerSet:
      containers:
        - {name: c, command: ['true']}
  - name: b
    containerSet:
      containers:
        - {name: c, containerTemplate: lnt}
";
    let checked = spec::check_file(source, Some("sets.yaml"));
    let errors: Vec<(u32, &str)> = checked
        .diagnostics
        .errors()
        .map(|d| (d.pos.line, d.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                7,
                "step `a` has a `containerSet` and `inlineScript`; a Choreo step has exactly one of `template`, `templateRef`, `containerSet` and `inlineScript`"
            ),
            // The container that names no template has nothing to run either.
            (14, "template `b-c` has nothing to run"),
            (
                14,
                "`containerTemplate` `lnt` is not an entry of `containerTemplates`"
            ),
        ]
    );
    let help = checked
        .diagnostics
        .errors()
        .find(|d| d.message.starts_with("`containerTemplate`"))
        .and_then(|d| d.help.clone())
        .unwrap_or_default();
    assert!(help.contains("did you mean `lint`?"), "{help}");
}
