//! Tests of what steps see and leave behind: masking, outputs, the environment, commands and
//! scripts, working directories, and the built-in steps.

use tokio_util::sync::CancellationToken;

use super::tests::{HEAD, input, run, run_with};
use crate::executor::{Checkout, Event, GitInfo, RunOutcome, StepStatus, Stream};

#[tokio::test]
async fn a_secret_printed_in_pieces_is_masked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.secrets.insert("token".into(), "abcdef".into());
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - name: leak\n    script: \"printf 'x abc'; sleep 0.1; printf 'def y\\\\n'; printf abcdef >&2\"\n"
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    assert_eq!(ran.lines("leak", Stream::Stdout), vec!["x *** y"]);
    assert_eq!(ran.lines("leak", Stream::Stderr), vec!["***"]);
    assert!(!ran.all_text().contains("abcdef"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_output_is_masked_once_written_and_in_later_steps() {
    let (_dir, ran) = run(&format!(
        r#"{HEAD}steps:
  - name: mint
    script: |
      echo before
      printf 'tok-93f1\n' > $GANTRY_OUTPUTS/token
      echo "minted tok-93f1"
    outputs: [{{name: token, secret: true}}]
  - name: use
    env: {{TOKEN: "{{{{steps.mint.outputs.token}}}}"}}
    script: echo "using $TOKEN"
"#
    ))
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    assert_eq!(
        ran.lines("mint", Stream::Stdout),
        vec!["before", "minted ***"]
    );
    assert_eq!(ran.lines("use", Stream::Stdout), vec!["using ***"]);
    let outputs = ran.events.iter().find_map(|e| match e {
        Event::Outputs { values, .. } => Some(values.clone()),
        _ => None,
    });
    assert_eq!(
        outputs,
        Some(vec![("token".into(), "tok-93f1".into(), true)])
    );
}

#[tokio::test]
async fn outputs_over_the_size_limit_or_missing_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.limits.max_output_bytes = 10;
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - - {{name: big, script: 'printf 12345678901 > $GANTRY_OUTPUTS/o', outputs: [o]}}\n    - {{name: fits, script: 'printf \"1234567890\\n\" > $GANTRY_OUTPUTS/o', outputs: [o]}}\n    - {{name: lazy, script: 'true', outputs: [o]}}\n    - {{name: binary, script: 'printf \"\\377\" > $GANTRY_OUTPUTS/o', outputs: [o]}}\n"
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.status("big"), StepStatus::Error);
    assert!(
        ran.message("big")
            .contains("larger than the limit of 10 bytes"),
        "{}",
        ran.message("big")
    );
    assert_eq!(ran.status("fits"), StepStatus::Succeeded);
    assert_eq!(
        ran.finished("lazy"),
        (
            StepStatus::Error,
            Some("output `o` was not written to $GANTRY_OUTPUTS/o".into())
        )
    );
    assert_eq!(ran.status("binary"), StepStatus::Error);
    assert!(ran.message("binary").contains("UTF-8"));
    assert_eq!(ran.outcome, RunOutcome::Failed);
}

#[tokio::test]
async fn the_step_environment_is_a_whitelist_plus_gantry_variables() {
    // The test process's own environment (cargo sets CARGO_MANIFEST_DIR for tests) must not
    // reach the step. GANTRY_MASTER_KEY is checked the same way by an integration test, which can
    // set it on a child process without touching this process's environment.
    let host_only = std::env::var_os("CARGO_MANIFEST_DIR").is_some();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.git = Some(GitInfo {
        sha: "abc123".into(),
        reference: "refs/heads/main".into(),
        repo: "acme/infra".into(),
    });
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - {{name: show, script: env, env: {{MINE: 'x{{{{run.number}}}}'}}}}\n"
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
    let env = ran.lines("show", Stream::Stdout);
    let names: Vec<&str> = env.iter().filter_map(|l| l.split('=').next()).collect();
    assert!(
        !host_only || !names.contains(&"CARGO_MANIFEST_DIR"),
        "{env:?}"
    );
    let workspace = dir.path().join("workspace");
    // `show` declares no outputs, so it gets the shared folder nothing reads.
    let outputs = dir.path().join("outputs/.unread");
    for want in [
        format!("GANTRY_WORKSPACE={}", workspace.display()),
        format!("WORKSPACE={}", workspace.display()),
        format!("GANTRY_OUTPUTS={}", outputs.display()),
        "GANTRY_RUN_ID=run-1".into(),
        "GANTRY_RUN_NUMBER=7".into(),
        "GANTRY_PIPELINE=p".into(),
        "GANTRY_STEP=show".into(),
        "GANTRY_GIT_SHA=abc123".into(),
        "GANTRY_GIT_REF=refs/heads/main".into(),
        "MINE=x7".into(),
    ] {
        assert!(env.contains(&want), "missing {want} in {env:?}");
    }
    let allowed = [
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL",
        "TERM", "MINE", "PWD", "SHLVL", "_", "OLDPWD",
    ];
    for name in names {
        assert!(
            // `WORKSPACE`: Choreo's name for the workspace.
            name.starts_with("GANTRY_") || name == "WORKSPACE" || allowed.contains(&name),
            "unexpected variable {name}"
        );
    }
}

#[tokio::test]
async fn commands_shebang_scripts_and_working_directories() {
    let (dir, ran) = run(&format!(
        r#"{HEAD}steps:
  - {{name: mk, script: 'mkdir -p sub/dir'}}
  - {{name: exec, command: [echo, hello, "{{{{run.id}}}}"], workingDir: sub}}
  - name: shebang
    workingDir: ./sub/dir
    script: |
      #!/bin/sh
      echo "in $(basename "$PWD") as $0"
  - {{name: missing, command: [no-such-program-gantry]}}
"#
    ))
    .await;
    assert_eq!(ran.lines("exec", Stream::Stdout), vec!["hello run-1"]);
    let script = dir.path().join("scripts/shebang-1");
    assert_eq!(
        ran.lines("shebang", Stream::Stdout),
        vec![format!("in dir as {}", script.display())]
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&script)
            .expect("script file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(ran.status("missing"), StepStatus::Error);
    assert!(
        ran.message("missing").contains("not found"),
        "{}",
        ran.message("missing")
    );
}

#[tokio::test]
async fn working_directories_must_stay_inside_the_workspace() {
    let (_dir, ran) = run(&format!(
        "{HEAD}steps:\n  - - {{name: up, script: 'true', workingDir: ../x}}\n    - {{name: abs, script: 'true', workingDir: /tmp}}\n"
    ))
    .await;
    assert_eq!(ran.status("up"), StepStatus::Error);
    assert!(
        ran.message("up").contains("inside the workspace"),
        "{}",
        ran.message("up")
    );
    assert_eq!(ran.status("abs"), StepStatus::Error);
    assert!(
        ran.message("abs").contains("relative"),
        "{}",
        ran.message("abs")
    );
}

#[tokio::test]
async fn publish_resolves_the_resource_and_keeps_secret_flags() {
    let (_dir, ran) = run(&format!(
        r#"{HEAD}steps:
  - name: make
    script: |
      printf 'pw-31337' > $GANTRY_OUTPUTS/password
      printf 'db.internal' > $GANTRY_OUTPUTS/host
    outputs: [{{name: password, secret: true}}, host]
  - name: pub
    template: gantry/marketplace-publish@v1
    arguments:
      resource:
        name: orders-db
        version: "1.{{{{run.number}}}}"
        category: database
        tags: [pg]
        properties: {{host: "{{{{steps.make.outputs.host}}}}"}}
        connectionCredentials:
          - environments: [prod]
            parameters:
              - {{key: PASSWORD, value: "{{{{steps.make.outputs.password}}}}", isSecret: true}}
  - name: after
    script: echo "$N $V"
    env: {{N: "{{{{steps.pub.outputs.name}}}}", V: "{{{{steps.pub.outputs.version}}}}"}}
"#
    ))
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    let publication = ran.events.iter().find_map(|e| match e {
        Event::Published { publication, .. } => Some(publication.clone()),
        _ => None,
    });
    let Some(p) = publication else {
        panic!("no Published event")
    };
    assert_eq!((p.name.as_str(), p.version.as_str()), ("orders-db", "1.7"));
    assert_eq!(
        p.properties.get("host").map(String::as_str),
        Some("db.internal")
    );
    assert_eq!(p.credentials[0].parameters[0].value, "pw-31337");
    assert!(p.credentials[0].parameters[0].is_secret);
    assert_eq!(
        ran.lines("pub", Stream::System),
        vec!["published orders-db 1.7"]
    );
    assert_eq!(ran.lines("after", Stream::Stdout), vec!["orders-db 1.7"]);
}

#[tokio::test]
async fn checkout_without_a_repository_is_an_error_and_with_one_copies_it() {
    let (_dir, ran) = run(&format!(
        "{HEAD}steps:\n  - {{name: co, template: gantry/git-checkout@v1}}\n"
    ))
    .await;
    assert_eq!(ran.status("co"), StepStatus::Error);
    assert!(ran.message("co").starts_with("no repository to check out"));

    let repo = tempfile::tempdir().expect("temp dir");
    let git = std::process::Command::new("git")
        .arg("init")
        .arg("-q")
        .arg(repo.path())
        .status();
    if !git.is_ok_and(|s| s.success()) {
        eprintln!("git is not available; skipping the work tree part");
        return;
    }
    std::fs::write(repo.path().join("main.tf"), "resource {}\n").expect("write");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.checkout = Checkout::WorkTree {
        root: repo.path().to_path_buf(),
    };
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - {{name: co, template: gantry/git-checkout@v1, arguments: {{path: src}}}}\n  - {{name: ls, script: 'cat {{{{steps.co.outputs.path}}}}/main.tf'}}\n"
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    assert_eq!(ran.lines("ls", Stream::Stdout), vec!["resource {}"]);
    let system = ran.lines("co", Stream::System);
    assert!(system[0].contains("1 files, 12 bytes"), "{system:?}");
}

/// `$GANTRY_SUMMARY`: what a step writes there comes back masked, once, from its last attempt;
/// a step that writes none has none; a summary that is a symlink is refused with a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_summary_is_read_masked_and_a_symlink_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.secrets.insert("token".into(), "s3cr3t-tok".into());
    let ran = run_with(
        &format!(
            r#"{HEAD}steps:
  - name: plan
    script: printf '## Plan\n\nuses s3cr3t-tok\n' > "$GANTRY_SUMMARY"
  - name: quiet
    script: "true"
  - name: sneaky
    script: ln -s /etc/passwd "$GANTRY_SUMMARY"
  - name: big
    outputs: [v]
    script: |
      head -c 70000 /dev/zero | tr '\0' x > "$GANTRY_SUMMARY"
      echo 1 > $GANTRY_OUTPUTS/v
"#
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    let summaries: Vec<(usize, String)> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Summary { step, text } => Some((*step, text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    assert_eq!(summaries[0], (0, "## Plan\n\nuses ***\n".to_string()));
    assert_eq!(summaries[1].0, 3);
    assert!(
        summaries[1].1.ends_with("\n\n… (cut at 64 KiB)\n") && summaries[1].1.len() < 66_000,
        "{}",
        summaries[1].1.len()
    );
    let said = ran.lines("sneaky", Stream::System).join("\n");
    assert!(said.contains("summary left out"), "{said}");
    assert!(!ran.all_text().contains("root:"));
}
