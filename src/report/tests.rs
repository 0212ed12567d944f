//! The PR comment's text, as a snapshot, and the statuses runs map to.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};

use super::*;
use crate::executor::GitInfo;
use crate::forge::Forge;
use crate::store::{LogLine, NewRun, PipelineError, PrRecord, StepState, Trigger};

const PIPELINE: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: provision-db\nsecrets: [db_password]\nsteps:\n  - name: create\n    script: echo hi\n";

/// A queued run of `pipeline` (a `provision-db` file, stored with its secret `db_password`)
/// on a pull request's head.
fn pr_run(store: &Store, pipeline: &str, (sha, reference): (&str, &str), pr: u64) -> RunRecord {
    let checked = crate::spec::check(pipeline).pipeline.expect("valid");
    let version = store
        .record_version("infra", "provision-db", pipeline, "p.yaml", Some("abc"))
        .expect("version");
    store
        .set_secret(Some("infra/provision-db"), "db_password", "hunter2-secret")
        .expect("secret");
    store
        .create_run(NewRun {
            source: "infra".into(),
            pipeline: "provision-db".into(),
            version,
            parameters: BTreeMap::new(),
            trigger: Trigger {
                kind: "pullRequest".into(),
                detail: None,
            },
            git: Some(GitInfo {
                sha: sha.into(),
                reference: reference.into(),
                repo: "acme/infra".into(),
            }),
            steps: checked.all_steps().map(|s| s.name.clone()).collect(),
            owner: None,
            status: RunStatus::Queued,
            concurrency: None,
            message: None,
            pr: Some(pr),
            idempotency_key: None,
            retry_of: None,
        })
        .expect("run")
}

/// A queued run of `pipeline` on PR 7's head, and the time it is said to start.
fn feature_run(store: &Store, pipeline: &str) -> (RunRecord, chrono::DateTime<Utc>) {
    let run = pr_run(
        store,
        pipeline,
        (
            "0123456789abcdef0123456789abcdef01234567",
            "refs/heads/feature",
        ),
        7,
    );
    let start = Utc
        .with_ymd_and_hms(2026, 11, 28, 10, 0, 0)
        .single()
        .expect("time");
    (run, start)
}

fn finished_run(store: &Store) -> RunRecord {
    let (run, start) = feature_run(store, PIPELINE);
    let end = start + chrono::Duration::milliseconds(2500);
    store
        .update_step(&run.id, 0, |s| {
            s.state = StepState::Succeeded;
            s.started_at = Some(start);
            s.finished_at = Some(start + chrono::Duration::milliseconds(2000));
        })
        .expect("step");
    store
        .put_output(
            &run.id,
            "create",
            "host",
            "db.internal hunter2-secret",
            false,
        )
        .expect("output");
    store
        .put_output(&run.id, "create", "password", "hunter2-secret", true)
        .expect("secret output");
    store
        .update_run(&run.id, |r| {
            r.status = RunStatus::Succeeded;
            r.started_at = Some(start);
            r.finished_at = Some(end);
        })
        .expect("end")
}

#[test]
fn the_pr_comment_lists_runs_steps_outputs_and_errors_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = finished_run(&store);
    let pr = PrRecord {
        source: "infra".into(),
        number: 7,
        head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        head_branch: Some("feature".into()),
        comment_id: None,
        runs: [("provision-db".to_string(), run.id.clone())].into(),
        invalid: [(
            ".gantry/pipelines/cache.yaml".to_string(),
            vec![PipelineError {
                path: ".gantry/pipelines/cache.yaml".into(),
                line: 4,
                column: 3,
                message: "unknown field `stpes`".into(),
            }],
        )]
        .into(),
        from_fork: false,
        head_seen_at: None,
    };
    let text =
        comment::render(&store, &pr, "https://gantry.example.com", Forge::Github).expect("render");
    let expected = format!(
        "<!-- gantry:pr-comment -->
### Gantry on `0123456`

| Pipeline | Status | Duration | Run |
|---|---|---|---|
| `provision-db` | ✅ succeeded | 2.5s | [#1](https://gantry.example.com/runs/{id}) |

<details><summary><code>provision-db</code> #1: succeeded</summary>

- ✅ `create` succeeded 2.0s

Outputs:
- `create.host` = `db.internal ***`

</details>

**Pipelines that fail validation on this head**

```text
.gantry/pipelines/cache.yaml:4:3: unknown field `stpes`
```
",
        id = run.id
    );
    assert_eq!(text, expected);
    assert!(!text.contains("hunter2"));
}

#[test]
fn a_run_refused_for_disk_space_says_so_in_its_commit_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut run = finished_run(&store);
    let low = crate::store::LowSpace {
        dir: "/var/lib/gantry".into(),
        free: 812 << 20,
        reserve: 1 << 30,
    };
    run.status = RunStatus::Failed;
    run.message = Some(format!("not started: {low}"));
    assert_eq!(
        run_status(&run),
        (
            StatusState::Failure,
            "run #1 failed in 2.5s: not started: 812.0 MiB free for the data dir \
             /var/lib/gantry, below its [storage] min_free of 1.0 GiB: Gantry takes …"
                .into()
        )
    );
}

#[test]
fn run_states_map_to_commit_statuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut run = finished_run(&store);
    assert_eq!(
        run_status(&run),
        (StatusState::Success, "run #1 succeeded in 2.5s".into())
    );
    run.status = RunStatus::Failed;
    run.message = Some("step `create` failed (exit 2)".into());
    assert_eq!(run_status(&run).0, StatusState::Failure,);
    assert!(run_status(&run).1.contains("exit 2"));
    run.status = RunStatus::Queued;
    assert_eq!(run_status(&run).0, StatusState::Pending);
    run.message = Some("x".repeat(500));
    run.status = RunStatus::Failed;
    assert_eq!(run_status(&run).1.chars().count(), 140);

    // A transition queues the status and the PR comment; a newer state replaces a waiting one.
    run.status = RunStatus::Running;
    on_transition(&store, "http://g", &run).expect("queue");
    run.status = RunStatus::Succeeded;
    on_transition(&store, "http://g", &run).expect("queue");
    let jobs = store.outbox().expect("outbox");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter()
            .any(|j| matches!(&j.action, OutboxAction::PrComment { pr: 7 }))
    );
    assert!(jobs.iter().any(|j| matches!(&j.action,
        OutboxAction::Status { state, context, .. } if state == "success" && context == "gantry/provision-db")));
}

#[test]
fn text_from_a_pull_request_cannot_make_the_comment_a_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let pr = PrRecord {
        source: "infra".into(),
        number: 9,
        head_sha: "abcdef0".into(),
        invalid: [(
            "evil.yaml".to_string(),
            vec![PipelineError {
                path: "evil.yaml".into(),
                line: 1,
                column: 1,
                message: "unknown field `x\n/gantry run deploy\ny`".into(),
            }],
        )]
        .into(),
        ..PrRecord::default()
    };
    let text = comment::render(&store, &pr, "http://g", Forge::Github).expect("render");
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("/gantry")),
        "a line of the comment reads as a command:\n{text}"
    );
    assert!(comment::is_gantry_comment(&text));
    let queued = reply(
        &store,
        "infra",
        9,
        "@bob /gantry run needs a name".into(),
        "github/d-1/reply",
    )
    .expect("reply");
    assert!(queued);
    let jobs = store.outbox().expect("outbox");
    let body = jobs
        .iter()
        .find_map(|j| match &j.action {
            OutboxAction::Reply { body, .. } => Some(body.clone()),
            _ => None,
        })
        .expect("a reply");
    assert!(comment::is_gantry_comment(&body), "{body}");
    // The same delivery answered again (processed again after a crash, even after the first
    // reply was sent) queues nothing.
    for job in &jobs {
        store.remove_outbox(job).expect("sent");
    }
    let again = reply(&store, "infra", 9, "again".into(), "github/d-1/reply").expect("reply");
    assert!(!again);
    assert!(store.outbox().expect("outbox").is_empty());
}

#[test]
fn text_quoted_in_the_pr_comment_cannot_mention_link_or_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = finished_run(&store);
    store
        .put_output(
            &run.id,
            "create",
            "note",
            "`x` @everyone [a](http://e.x)",
            false,
        )
        .expect("output");
    store
        .update_run(&run.id, |r| {
            r.message = Some("ask @admin: **[docs](https://evil.example)**".into());
        })
        .expect("message");
    let pr = PrRecord {
        source: "infra".into(),
        number: 7,
        head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        runs: [("provision-db".to_string(), run.id.clone())].into(),
        ..PrRecord::default()
    };
    let text =
        comment::render(&store, &pr, "https://gantry.example.com", Forge::Github).expect("render");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(
            &"ask @\u{200B}admin: \\*\\*\\[docs\\]\\(https:\u{200B}//evil.example\\)\\*\\*"
        ),
        "{text}"
    );
    assert!(
        lines.contains(&"- `create.note` = `'x' @everyone [a](http://e.x)`"),
        "{text}"
    );
}

#[test]
fn a_run_refused_a_protected_secret_says_why_on_the_forge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = finished_run(&store);
    // The run's file is the catalog's file of the pipeline: the scope is not what refuses.
    store
        .put_pipeline(&crate::store::PipelineRecord {
            source: "infra".into(),
            name: "provision-db".into(),
            path: "p.yaml".into(),
            version: Some(run.version),
            commit: Some("abc".into()),
            valid: true,
            errors: Vec::new(),
            retired: false,
            updated_at: Utc::now(),
            executor: None,
        })
        .expect("catalog");
    let pipeline = crate::spec::check(PIPELINE).pipeline.expect("valid");
    let protected: BTreeMap<String, crate::run::trust::ProtectedRefs> = [(
        "infra".to_string(),
        crate::run::trust::ProtectedRefs::new("infra", "main", &["main".into()]).expect("refs"),
    )]
    .into();
    let release = crate::run::trust::release_for(&run, &protected);
    let prepared = crate::run::start(
        &store,
        run.clone(),
        &pipeline,
        crate::run::Start {
            checkout: crate::executor::Checkout::None,
            limits: crate::executor::Limits::default(),
            keep_run_dir: false,
            var_overrides: BTreeMap::new(),
            release,
            hints: crate::run::Hints::Server("http://127.0.0.1:8080".into()),
        },
    )
    .expect("start");
    let message = prepared.refusal().expect("refused").to_string();
    // The run's own text, in the run, the API and the PR comment.
    assert_eq!(
        message,
        "not started: secret `db_password` is protected: runs at `refs/heads/feature` get only \
         secrets set with --unprotected; protected refs of `infra`: main"
    );
    let mut refused = run.clone();
    refused.status = RunStatus::Failed;
    refused.message = Some(message);
    // The commit status, cut to the forge's 140 characters.
    assert_eq!(
        run_status(&refused),
        (
            StatusState::Failure,
            "run #1 failed in 2.5s: not started: secret `db_password` is protected: runs at \
             `refs/heads/feature` get only secrets set with --unprotected…"
                .into()
        )
    );
    store
        .update_run(&run.id, |r| {
            r.status = RunStatus::Failed;
            r.message = refused.message.clone();
        })
        .expect("refuse");
    let pr = PrRecord {
        source: "infra".into(),
        number: 7,
        head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        head_branch: Some("feature".into()),
        comment_id: None,
        runs: [("provision-db".to_string(), run.id.clone())].into(),
        invalid: BTreeMap::new(),
        from_fork: false,
        head_seen_at: None,
    };
    let text =
        comment::render(&store, &pr, "https://gantry.example.com", Forge::Github).expect("render");
    assert!(
        text.contains(
            // The run's message is quoted inert: markdown escaped, so it cannot mention or link.
            "<details><summary><code>provision-db</code> #1: failed</summary>\n\nnot started: \
             secret \\`db\\_password\\` is protected: runs at \\`refs/heads/feature\\` get only \
             secrets set with \\-\\-unprotected; protected refs of \\`infra\\`: main\n\n"
        ),
        "{text}"
    );
}

const PIPELINE_3: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: provision-db\nsecrets: [db_password]\nsteps:\n  - name: plan\n    script: echo plan\n  - name: publish\n    script: echo publish\n  - name: check\n    script: echo check\n";

/// A run whose steps wrote a summary, published a resource, and failed with a long log: the
/// comment shows the summary (mentions defused, its open code block closed), the resource with
/// its version, properties and credential keys, and the failed step's last 20 lines, all masked.
#[test]
fn the_pr_comment_shows_summaries_publications_and_the_end_of_a_failed_log() {
    use crate::executor::{Publication, Stream};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    let run = pr_run(&store, PIPELINE_3, (sha, "refs/pull/8/head"), 8);
    let start = Utc
        .with_ymd_and_hms(2026, 12, 7, 9, 0, 0)
        .single()
        .expect("time");
    let ms = chrono::Duration::milliseconds;
    let states = [
        (StepState::Succeeded, 0, 1200),
        (StepState::Succeeded, 1200, 1300),
        (StepState::Failed, 1300, 4000),
    ];
    for (i, (state, from, to)) in states.into_iter().enumerate() {
        store
            .update_step(&run.id, i, |s| {
                s.state = state;
                s.started_at = Some(start + ms(from));
                s.finished_at = Some(start + ms(to));
            })
            .expect("step");
    }
    store
        .update_step(&run.id, 0, |s| {
            s.summary = Some(
                "## Plan\n\n@alice will see `hunter2-secret`\n\n```diff\n+ database orders\n"
                    .into(),
            )
        })
        .expect("summary");
    store
        .update_step(&run.id, 2, |s| {
            s.message = Some("exited with code 3".into())
        })
        .expect("message");
    let lines: Vec<LogLine> = (1..=25)
        .map(|n| LogLine {
            at: start,
            attempt: 1,
            stream: Stream::Stdout,
            text: if n == 25 {
                "password hunter2-secret refused".into()
            } else {
                format!("line {n}")
            },
        })
        .collect();
    store.put_log_chunk(&run.id, 2, 0, &lines).expect("log");
    let publication = Publication {
        properties: BTreeMap::from([("host".to_string(), "db.internal".to_string())]),
        ..Publication::example("orders-db", &["dev"], "hunter2-secret")
    };
    store
        .put_publication(&run.id, "publish", &publication)
        .expect("publication");
    let run = store
        .update_run(&run.id, |r| {
            r.status = RunStatus::Failed;
            r.started_at = Some(start);
            r.finished_at = Some(start + ms(4000));
            r.message = Some("step `check` failed (exit 3)".into());
        })
        .expect("end");
    crate::marketplace::publish_run(&store, &run, start + ms(4000)).expect("marketplace");
    let pr = PrRecord {
        source: "infra".into(),
        number: 8,
        head_sha: sha.into(),
        runs: [("provision-db".to_string(), run.id.clone())].into(),
        ..PrRecord::default()
    };
    let tail: String = (6..=24).map(|n| format!("line {n}\n")).collect();
    // GitHub and GitLab fold each section into `<details>`; Bitbucket Cloud, which shows HTML
    // tags as text, gets bold titles.
    let html = format!(
        "<!-- gantry:pr-comment -->
### Gantry on `89abcde`

| Pipeline | Status | Duration | Run |
|---|---|---|---|
| `provision-db` | ❌ failed | 4.0s | [#1](https://gantry.example.com/runs/{id}) |

<details><summary><code>provision-db</code> #1: failed</summary>

step \\`check\\` failed \\(exit 3\\)

- ✅ `plan` succeeded 1.2s
- ✅ `publish` succeeded 0.1s
- ❌ `check` failed 2.7s: exited with code 3

Published to the marketplace:
- `orders-db` version 1 (database), for `dev`
  - `host` = `db.internal`
  - credentials: `DB_HOST`, `DB_PASSWORD` (secret)

<details><summary>Summary of <code>plan</code></summary>

## Plan

@\u{200b}alice will see `***`

```diff
+ database orders

```

</details>

<details><summary>Last lines of <code>check</code></summary>

```text
{tail}password *** refused
```

</details>

</details>
",
        id = run.id
    );
    let plain = format!(
        "<!-- gantry:pr-comment -->
### Gantry on `89abcde`

| Pipeline | Status | Duration | Run |
|---|---|---|---|
| `provision-db` | ❌ failed | 4.0s | [#1](https://gantry.example.com/runs/{id}) |

**`provision-db` #1: failed**

step \\`check\\` failed \\(exit 3\\)

- ✅ `plan` succeeded 1.2s
- ✅ `publish` succeeded 0.1s
- ❌ `check` failed 2.7s: exited with code 3

Published to the marketplace:
- `orders-db` version 1 (database), for `dev`
  - `host` = `db.internal`
  - credentials: `DB_HOST`, `DB_PASSWORD` (secret)

**Summary of `plan`**

## Plan

@\u{200b}alice will see `***`

```diff
+ database orders

```

**Last lines of `check`**

```text
{tail}password *** refused
```
",
        id = run.id
    );
    for forge in Forge::ALL {
        let text =
            comment::render(&store, &pr, "https://gantry.example.com", forge).expect("render");
        let expected = if forge == Forge::Bitbucket {
            &plain
        } else {
            &html
        };
        assert_eq!(&text, expected, "{forge}");
        assert!(!text.contains("hunter2"));
    }
}

/// A finished run of a pipeline of `steps` steps, each with a summary of `summary` characters.
fn run_with_summaries(store: &Store, steps: usize, summary: usize) -> RunRecord {
    let mut text = String::from(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: provision-db\nsteps:\n",
    );
    for i in 0..steps {
        text.push_str(&format!("  - name: s{i}\n    script: echo hi\n"));
    }
    let (run, start) = feature_run(store, &text);
    for i in 0..steps {
        store
            .update_step(&run.id, i, |s| {
                s.state = StepState::Succeeded;
                s.started_at = Some(start);
                s.finished_at = Some(start + chrono::Duration::milliseconds(100));
                s.summary = Some(format!("{i} {}", "x".repeat(summary)));
            })
            .expect("step");
    }
    store
        .update_run(&run.id, |r| {
            r.status = RunStatus::Succeeded;
            r.started_at = Some(start);
            r.finished_at = Some(start + chrono::Duration::milliseconds(2500));
        })
        .expect("end")
}

#[test]
fn a_comment_past_the_forges_limit_shrinks_to_each_runs_steps_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // 32 summaries of 8,000 characters: four times what GitHub takes in a comment.
    let run = run_with_summaries(&store, 32, 8_000);
    let invalid: Vec<PipelineError> = (1..=25)
        .map(|line| PipelineError {
            path: ".gantry/pipelines/cache.yaml".into(),
            line,
            column: 3,
            message: "unknown field `stpes`".into(),
        })
        .collect();
    let pr = PrRecord {
        source: "infra".into(),
        number: 7,
        head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        runs: [("provision-db".to_string(), run.id.clone())].into(),
        invalid: [(".gantry/pipelines/cache.yaml".to_string(), invalid)].into(),
        ..PrRecord::default()
    };
    let text =
        comment::render(&store, &pr, "https://gantry.example.com", Forge::Github).expect("render");
    let mut expected = format!(
        "<!-- gantry:pr-comment -->
### Gantry on `0123456`

| Pipeline | Status | Duration | Run |
|---|---|---|---|
| `provision-db` | ✅ succeeded | 2.5s | [#1](https://gantry.example.com/runs/{id}) |

<details><summary><code>provision-db</code> #1: succeeded</summary>

",
        id = run.id
    );
    for i in 0..30 {
        expected.push_str(&format!("- ✅ `s{i}` succeeded 0.1s\n"));
    }
    expected.push_str(&format!(
        "- … and 2 more steps: [the run's page](https://gantry.example.com/runs/{id}) lists them

</details>

**Pipelines that fail validation on this head**

```text
",
        id = run.id
    ));
    for line in 1..=20 {
        expected.push_str(&format!(
            ".gantry/pipelines/cache.yaml:{line}:3: unknown field `stpes`\n"
        ));
    }
    expected.push_str(
        "… and 5 more errors
```

_Cut to fit GitHub's limit of 65536 characters: each run's page shows all of it._
",
    );
    assert_eq!(text, expected);
    // GitLab takes it all.
    let text =
        comment::render(&store, &pr, "https://gantry.example.com", Forge::Gitlab).expect("render");
    assert!(text.chars().count() > 256_000, "{}", text.len());
    assert!(!text.contains("Cut to fit"));
}

#[test]
fn a_table_of_runs_past_the_limit_keeps_the_rows_that_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = run_with_summaries(&store, 1, 10);
    // More pipelines than rows of the table fit in a comment (each row is about 210 characters).
    let name = "a-pipeline-with-a-long-name-".repeat(4);
    let runs = (0..1_000)
        .map(|i| (format!("{name}{i:04}"), run.id.clone()))
        .collect();
    let pr = PrRecord {
        source: "infra".into(),
        number: 7,
        head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        runs,
        ..PrRecord::default()
    };
    for forge in [Forge::Github, Forge::Bitbucket] {
        let text =
            comment::render(&store, &pr, "https://gantry.example.com", forge).expect("render");
        assert!(text.chars().count() <= 65_536, "{}", text.chars().count());
        assert!(text.chars().count() > 60_000, "{}", text.chars().count());
        assert!(text.starts_with(comment::MARKER), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let rows: Vec<&&str> = lines.iter().filter(|l| l.starts_with("| `")).collect();
        assert!(rows.len() > 250 && rows.len() < 1_000, "{}", rows.len());
        assert!(
            rows.iter().all(|r| r.ends_with(") |")),
            "every row is whole"
        );
        assert_eq!(
            lines.last(),
            Some(
                &format!(
                    "_Cut to fit {}'s limit of 65536 characters: each run's page shows all of it._",
                    forge.title()
                )
                .as_str()
            )
        );
    }
}

#[test]
fn a_comment_cut_inside_its_validation_errors_closes_their_code_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = run_with_summaries(&store, 1, 10);
    let name = "a-pipeline-with-a-long-name-".repeat(4);
    let invalid: Vec<PipelineError> = (1..=20)
        .map(|line| PipelineError {
            path: "p.yaml".into(),
            line,
            column: 1,
            message: "x".repeat(150),
        })
        .collect();
    // Around the number of rows where the table alone fits and the errors after it do not: some
    // of these are cut inside the errors' code block (322 rows, for one).
    for n in 295..330 {
        let pr = PrRecord {
            source: "infra".into(),
            number: 7,
            head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            runs: (0..n)
                .map(|i| (format!("{name}{i:04}"), run.id.clone()))
                .collect(),
            invalid: [("p.yaml".to_string(), invalid.clone())].into(),
            ..PrRecord::default()
        };
        let text = comment::render(&store, &pr, "http://g", Forge::Github).expect("render");
        assert!(
            text.chars().count() <= 65_536,
            "{n}: {}",
            text.chars().count()
        );
        let fences = text.lines().filter(|l| l.starts_with("```")).count();
        assert_eq!(fences % 2, 0, "{n}: a code block left open");
    }
}
