//! Tests of the local executor with real `sh` processes in temporary run directories: the shared
//! harness (which checks the event grammar of every run), then ordering, parallelism, conditions,
//! retries and `continueOn`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::LocalExecutor;
use crate::executor::{
    Checkout, Event, Executor, Limits, RunInput, RunOutcome, StepStatus, Stream,
};
use crate::plan::{Plan, plan};
use crate::spec;

pub(super) const HEAD: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: p}\n";

pub(super) fn plan_of(yaml: &str) -> Plan {
    let checked = spec::check(yaml);
    let Some(p) = checked.pipeline else {
        panic!("fixture does not validate: {:#?}", checked.diagnostics);
    };
    plan(&p)
}

pub(super) fn input(dir: &Path) -> RunInput {
    RunInput {
        run_id: "run-1".into(),
        run_number: 7,
        pipeline: "p".into(),
        params: BTreeMap::new(),
        vars: BTreeMap::new(),
        secrets: BTreeMap::new(),
        connections: Default::default(),
        git: None,
        trigger: "manual".into(),
        pr_number: None,
        checkout: Checkout::None,
        run_dir: dir.to_path_buf(),
        reuse: Default::default(),
        limits: Limits {
            kill_grace: Duration::from_secs(1),
            ..Limits::default()
        },
    }
}

/// The result of one run: its outcome and every event, checked against the event grammar.
pub(super) struct Ran {
    pub plan: Plan,
    pub outcome: RunOutcome,
    pub events: Vec<Event>,
}

impl Ran {
    pub fn index(&self, name: &str) -> usize {
        self.plan
            .steps
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    }

    /// The final status and message of a step.
    pub fn finished(&self, name: &str) -> (StepStatus, Option<String>) {
        let i = self.index(name);
        self.events
            .iter()
            .find_map(|e| match e {
                Event::StepFinished {
                    step,
                    status,
                    message,
                    ..
                } if *step == i => Some((*status, message.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no StepFinished for {name}"))
    }

    pub fn status(&self, name: &str) -> StepStatus {
        self.finished(name).0
    }

    pub fn message(&self, name: &str) -> String {
        self.finished(name).1.unwrap_or_default()
    }

    /// Log lines of a step (all attempts) on a stream.
    pub fn lines(&self, name: &str, on: Stream) -> Vec<String> {
        let i = self.index(name);
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log {
                    step,
                    stream,
                    lines,
                    ..
                } if *step == i && *stream == on => Some(lines.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// (attempt, status, retry_in) of each attempt of a step.
    pub fn attempts(&self, name: &str) -> Vec<(u32, StepStatus, Option<Duration>)> {
        let i = self.index(name);
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::AttemptFinished {
                    step,
                    attempt,
                    status,
                    retry_in,
                    ..
                } if *step == i => Some((*attempt, *status, *retry_in)),
                _ => None,
            })
            .collect()
    }

    /// Every event of the whole run mentioning a secret, as text.
    pub fn all_text(&self) -> String {
        format!("{:?}", self.events)
    }
}

pub(super) async fn run_with(yaml: &str, input: &RunInput, cancel: CancellationToken) -> Ran {
    let plan = plan_of(yaml);
    let (tx, mut rx) = mpsc::channel(64);
    // The events are collected while the run goes on: the channel is bounded.
    let collect = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    });
    // A hanging executor fails the test instead of hanging it; dropping the run kills its groups.
    let executor = LocalExecutor::new();
    let run = executor.execute(&plan, input, tx, cancel);
    let Ok(outcome) = tokio::time::timeout(Duration::from_secs(60), run).await else {
        panic!("the run did not end within 60 s");
    };
    let outcome = outcome.expect("the local executor is always available");
    let events = collect.await.expect("the collector ends with the run");
    check_grammar(&plan, &events);
    Ran {
        plan,
        outcome,
        events,
    }
}

pub(super) async fn run(yaml: &str) -> (tempfile::TempDir, Ran) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_with(yaml, &input(dir.path()), CancellationToken::new()).await;
    (dir, ran)
}

/// The step an event is about; `usize::MAX` for the run's own (`Attached`).
fn step_of(e: &Event) -> usize {
    match e {
        Event::Attached { .. } => usize::MAX,
        Event::StepStarted { step, .. }
        | Event::Log { step, .. }
        | Event::AttemptFinished { step, .. }
        | Event::Outputs { step, .. }
        | Event::StepFinished { step, .. }
        | Event::Summary { step, .. }
        | Event::Published { step, .. } => *step,
    }
}

/// Per step: (StepStarted Log* [Published] AttemptFinished)* [Summary] [Outputs] StepFinished, attempts
/// numbered from 1, a retry announced by every attempt but the last, StepFinished exactly once.
fn check_grammar(plan: &Plan, events: &[Event]) {
    for i in 0..plan.steps.len() {
        let mine: Vec<&Event> = events.iter().filter(|e| step_of(e) == i).collect();
        let name = &plan.steps[i].name;
        let Some((last, rest)) = mine.split_last() else {
            panic!("no events for step {name}");
        };
        assert!(
            matches!(last, Event::StepFinished { .. }),
            "{name}: last event {last:?}"
        );
        // 0: between attempts, 1: in an attempt, 2: after the last attempt.
        let mut state = 0;
        let mut attempt = 0;
        for e in rest {
            match e {
                Event::StepStarted { attempt: a, .. } => {
                    assert!(state == 0 && *a == attempt + 1, "{name}: {e:?}");
                    attempt = *a;
                    state = 1;
                }
                Event::Log { attempt: a, .. } | Event::AttemptFinished { attempt: a, .. } => {
                    assert!(state == 1 && *a == attempt, "{name}: {e:?}");
                    if let Event::AttemptFinished { retry_in, .. } = e {
                        state = if retry_in.is_some() { 0 } else { 2 };
                    }
                }
                Event::Published { .. } => assert_eq!(state, 1, "{name}: {e:?}"),
                Event::Attached { .. } => panic!("the local executor has no external id: {e:?}"),
                Event::Outputs { .. } | Event::Summary { .. } => {
                    assert_eq!(state, 2, "{name}: {e:?}")
                }
                Event::StepFinished { .. } => panic!("{name}: two StepFinished"),
            }
        }
    }
}

#[tokio::test]
async fn a_sequence_runs_in_file_order() {
    let (dir, ran) = run(&format!(
        "{HEAD}steps:\n  - {{name: a, script: 'echo a >> order'}}\n  - {{name: b, script: 'echo b >> order'}}\n  - {{name: c, script: 'echo c >> $GANTRY_WORKSPACE/order; echo done'}}\n"
    ))
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
    let order = std::fs::read_to_string(dir.path().join("workspace/order")).expect("order file");
    assert_eq!(order, "a\nb\nc\n");
    assert_eq!(ran.lines("c", Stream::Stdout), vec!["done"]);
    // Each step finishes before the next one starts.
    let kinds: Vec<(usize, &str)> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, .. } => Some((*step, "start")),
            Event::StepFinished { step, .. } => Some((*step, "end")),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, "start"),
            (0, "end"),
            (1, "start"),
            (1, "end"),
            (2, "start"),
            (2, "end")
        ]
    );
    let pid = ran.events.iter().find_map(|e| match e {
        Event::StepStarted { handle, .. } => handle.pid(),
        _ => None,
    });
    assert!(pid.is_some_and(|p| p > 1));
}

/// Waits for `other`'s marker after writing its own; fails after about 5 s.
fn rendezvous(me: &str, other: &str) -> String {
    format!(
        "touch {me}.ready; i=0; while [ ! -e {other}.ready ]; do i=$((i+1)); [ $i -lt 100 ] || exit 9; sleep 0.05; done"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_group_really_overlaps() {
    let (_dir, ran) = run(&format!(
        "{HEAD}steps:\n  - - {{name: a, script: '{}'}}\n    - {{name: b, script: '{}'}}\n  - {{name: c, script: 'true'}}\n",
        rendezvous("a", "b"),
        rendezvous("b", "a")
    ))
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    assert_eq!(ran.status("c"), StepStatus::Succeeded);
}

#[tokio::test]
async fn parallelism_limits_steps_running_at_once_and_ties_go_in_file_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.limits.parallelism = 1;
    let busy = "if [ -e busy ]; then exit 8; fi; touch busy; sleep 0.2; rm busy";
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - - {{name: a, script: '{busy}'}}\n    - {{name: b, script: '{busy}'}}\n    - {{name: c, script: '{busy}'}}\n"
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    let started: Vec<usize> = ran
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![0, 1, 2]);
}

/// More steps running at once than the event channel holds (64 here, as in `run::execute`): each
/// step waits to send its start while the recorder is busy, and the scheduler must keep polling
/// them while its own events wait for room. It once waited in their place and the run hung.
#[tokio::test]
async fn a_parallel_group_wider_than_the_event_channel_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.limits.parallelism = 150;
    let mut yaml = format!("{HEAD}steps:\n  -\n");
    for i in 0..150 {
        yaml.push_str(&format!("    - {{name: p{i}, script: 'echo {i}'}}\n"));
    }
    let ran = run_with(&yaml, &input, CancellationToken::new()).await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    for i in 0..150 {
        assert_eq!(ran.status(&format!("p{i}")), StepStatus::Succeeded);
    }
}

/// An output too large for one variable of the next step is named in that step's error, with
/// what to do instead, rather than the kernel's "Argument list too long".
#[tokio::test]
async fn a_variable_over_the_kernels_limit_is_named() {
    let (_dir, ran) = run(&format!(
        r#"{HEAD}steps:
  - {{name: a, script: "head -c 300000 /dev/zero | tr '\\0' x > $GANTRY_OUTPUTS/v", outputs: [v]}}
  - {{name: b, script: "true", env: {{BIG: "{{{{steps.a.outputs.v}}}}"}}}}
"#
    ))
    .await;
    let (status, message) = ran.finished("b");
    assert_eq!(status, StepStatus::Error);
    let message = message.unwrap_or_default();
    assert!(
        message.contains("its variable `BIG` holds 300000 bytes")
            && message.contains("a file in the workspace"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_passes_outputs_along_its_edges() {
    let (_dir, ran) = run(&format!(
        r#"{HEAD}steps:
  - name: join
    dependsOn: [left, right]
    env: {{L: "{{{{steps.left.outputs.v}}}}", R: "{{{{steps.right.outputs.v}}}}"}}
    script: echo "$L+$R"
  - name: root
    script: printf 'seed\n' > $GANTRY_OUTPUTS/v
    outputs: [v]
  - name: left
    dependsOn: [root]
    env: {{S: "{{{{steps.root.outputs.v}}}}"}}
    script: printf '%s-left\r\n' "$S" > $GANTRY_OUTPUTS/v
    outputs: [v]
  - name: right
    dependsOn: [root]
    command: [sh, -c, 'printf "%s-right" "$0" > $GANTRY_OUTPUTS/v', "{{{{steps.root.outputs.v}}}}"]
    outputs: [v]
"#
    ))
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded, "{:?}", ran.events);
    assert_eq!(
        ran.lines("join", Stream::Stdout),
        vec!["seed-left+seed-right"]
    );
    let outputs = ran.events.iter().find_map(|e| match e {
        Event::Outputs { step, values } if *step == ran.index("root") => Some(values.clone()),
        _ => None,
    });
    assert_eq!(outputs, Some(vec![("v".into(), "seed".into(), false)]));
    // `join` is first in the file but starts last.
    let last_start = ran.events.iter().rev().find_map(|e| match e {
        Event::StepStarted { step, .. } => Some(*step),
        _ => None,
    });
    assert_eq!(last_start, Some(ran.index("join")));
}

#[tokio::test]
async fn a_false_when_skips_the_step_and_its_outputs_read_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.params.insert("go".into(), "no".into());
    input.params.insert("flag".into(), "maybe".into());
    let ran = run_with(
        &format!(
            r#"{HEAD}parameters: [{{name: go}}, {{name: flag}}]
steps:
  - name: a
    when: "{{{{params.go}}}} == yes"
    script: exit 1
    outputs: [o]
  - name: b
    env: {{X: "[{{{{steps.a.outputs.o}}}}]"}}
    script: echo "x=$X"
  - name: c
    when: "{{{{params.flag}}}}"
    script: echo never
    continueOn: {{error: true}}
"#
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        ran.finished("a"),
        (StepStatus::Skipped, Some("when was false".into()))
    );
    assert_eq!(ran.lines("b", Stream::Stdout), vec!["x=[]"]);
    assert_eq!(ran.status("c"), StepStatus::Error);
    assert!(
        ran.message("c").contains("not a boolean"),
        "{}",
        ran.message("c")
    );
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
}

const COUNTER: &str =
    "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo try $n";

#[tokio::test]
async fn retries_until_the_step_succeeds() {
    let (_dir, ran) = run(&format!(
        "{HEAD}steps:\n  - name: flaky\n    script: '{COUNTER}; [ $n -ge 3 ]'\n    retry: {{limit: 5, backoff: 0s}}\n"
    ))
    .await;
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
    let zero = Some(Duration::ZERO);
    assert_eq!(
        ran.attempts("flaky"),
        vec![
            (1, StepStatus::Failed, zero),
            (2, StepStatus::Failed, zero),
            (3, StepStatus::Succeeded, None)
        ]
    );
    let system = ran.lines("flaky", Stream::System);
    assert!(
        system.contains(&"retrying in 0s (attempt 2 of 6)".to_string()),
        "{system:?}"
    );
    assert_eq!(
        ran.lines("flaky", Stream::Stdout),
        vec!["try 1", "try 2", "try 3"]
    );
}

#[tokio::test]
async fn retries_stop_at_the_limit_and_follow_the_policy() {
    let (_dir, ran) = run(&format!(
        "{HEAD}steps:\n  - name: bad\n    script: '{COUNTER}; exit 4'\n    retry: {{limit: 2, backoff: 0s}}\n    continueOn: {{failed: true}}\n  - name: slow\n    script: sleep 5\n    timeout: 1s\n    retry: {{limit: 2, backoff: 0s}}\n    continueOn: {{error: true}}\n"
    ))
    .await;
    let attempts: Vec<StepStatus> = ran.attempts("bad").iter().map(|a| a.1).collect();
    assert_eq!(attempts, vec![StepStatus::Failed; 3]);
    assert_eq!(
        ran.finished("bad"),
        (StepStatus::Failed, Some("exited with code 4".into()))
    );
    // OnFailure does not retry a timeout.
    assert_eq!(ran.attempts("slow"), vec![(1, StepStatus::TimedOut, None)]);
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
}

#[tokio::test]
async fn continue_on_lets_dependents_run_and_failures_skip_them_transitively() {
    let (_dir, ran) = run(&format!(
        r#"{HEAD}steps:
  - {{name: tolerated, script: 'exit 3', continueOn: {{failed: true}}}}
  - {{name: after-tolerated, dependsOn: [tolerated], script: 'true'}}
  - {{name: broken, script: 'exit 1'}}
  - {{name: child, dependsOn: [broken], script: 'true'}}
  - {{name: grandchild, dependsOn: [child], script: 'true'}}
  - {{name: independent, script: 'sleep 0.2'}}
"#
    ))
    .await;
    assert_eq!(ran.status("tolerated"), StepStatus::Failed);
    assert_eq!(ran.status("after-tolerated"), StepStatus::Succeeded);
    assert_eq!(ran.status("broken"), StepStatus::Failed);
    let not_run = (
        StepStatus::Skipped,
        Some("not run: `broken` failed".to_string()),
    );
    assert_eq!(ran.finished("child"), not_run);
    assert_eq!(ran.finished("grandchild"), not_run);
    assert_eq!(ran.status("independent"), StepStatus::Succeeded);
    assert_eq!(ran.outcome, RunOutcome::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_set_yields_steps_as_they_finish_and_contains_panics() {
    use super::attempt::StepResult;
    use super::set::StepSet;
    let done = |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        StepResult {
            status: StepStatus::Succeeded,
            message: Some(format!("{ms}")),
            outputs: Vec::new(),
        }
    };
    let mut set = StepSet::new();
    set.push(0, done(150));
    set.push(1, done(10));
    set.push(2, async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        panic!("a step panicked on purpose");
    });
    assert_eq!(set.len(), 3);
    let mut order = Vec::new();
    while let Some((step, result)) = set.next().await {
        order.push((step, result.status));
        if step == 1 {
            // A slot freed by a finished step is reused.
            set.push(3, done(20));
        }
    }
    assert!(set.is_empty());
    assert_eq!(
        order,
        vec![
            (1, StepStatus::Succeeded),
            (3, StepStatus::Succeeded),
            (2, StepStatus::Error),
            (0, StepStatus::Succeeded)
        ]
    );
}

/// A commit is checked out by reference: the server's lookup names the mirror, and a repository
/// this machine has no mirror of is an error that names it. The reference's credentials never
/// show in `Debug`.
#[test]
fn a_commit_is_found_through_the_mirror_lookup() {
    let commit = super::CommitRef {
        repo: "infra".into(),
        url: "https://git.example/acme/infra.git".into(),
        sha: "0123abcd".into(),
        credentials: Some(crate::source::mirror::Credentials::new(
            "x-access-token",
            "ghs_tok3n_value",
        )),
    };
    let checkout = Checkout::Commit(commit.clone());
    assert!(!format!("{checkout:?}").contains("ghs_tok3n_value"));
    let mirrors = super::Mirrors::new(|c: &super::CommitRef| {
        (c.repo == "infra").then(|| std::path::PathBuf::from("/data/mirrors/infra.git"))
    });
    assert_eq!(
        super::resolve_checkout(&checkout, Some(&mirrors)),
        super::LocalSource::Commit {
            git_dir: "/data/mirrors/infra.git".into(),
            sha: "0123abcd".into(),
        }
    );
    let other = Checkout::Commit(super::CommitRef {
        repo: "apps".into(),
        ..commit
    });
    for mirrors in [Some(&mirrors), None] {
        let super::LocalSource::Missing(why) = super::resolve_checkout(&other, mirrors) else {
            panic!("no mirror of `apps`");
        };
        assert!(why.contains("no mirror of repository `apps`"), "{why}");
    }
}
