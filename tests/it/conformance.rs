//! The executor conformance suite: the same pipelines, run to the end on every executor the test
//! registers, must leave the same step records (state, attempts, exit code, message) and the same
//! run status, with secrets masked in every log. Only the local executor is registered today; an
//! executor added later joins `executors()` and must pass unchanged.

use std::sync::Arc;
use std::time::Duration;

use gantry::executor::local::LocalExecutor;
use gantry::executor::{Event, Executor, Limits};
use gantry::store::{RunStatus, SecretRelease, StepRecord, Store};
use tokio_util::sync::CancellationToken;

use crate::support::argo::ArgoStandIn;

const SECRET: &str = "c0nf0rm-s3cret-v4lue";

/// Every executor under test, by name, with what keeps it running (the Argo stand-in).
fn executors() -> Vec<(&'static str, Arc<dyn Executor>, Option<ArgoStandIn>)> {
    let stand_in = ArgoStandIn::start();
    let argo = stand_in.executor("argo");
    vec![
        ("local", Arc::new(LocalExecutor::new()), None),
        ("argo", Arc::new(argo), Some(stand_in)),
    ]
}

/// A step as the suite compares it: what every executor must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: String,
    state: &'static str,
    attempts: usize,
    exit_code: Option<i32>,
    message: Option<String>,
}

fn seen(step: &StepRecord) -> Seen {
    Seen {
        name: step.name.clone(),
        state: step.state.as_str(),
        attempts: step.attempts.len(),
        exit_code: step.exit_code(),
        message: step.message.clone(),
    }
}

fn step(
    name: &str,
    state: &'static str,
    attempts: usize,
    exit_code: Option<i32>,
    message: Option<&str>,
) -> Seen {
    Seen {
        name: name.into(),
        state,
        attempts,
        exit_code,
        message: message.map(str::to_string),
    }
}

/// How a case's run is driven.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drive {
    ToTheEnd,
    /// Cancelled once the named step has started.
    CancelWhenStarted(&'static str),
}

struct Case {
    name: &'static str,
    steps: &'static str,
    drive: Drive,
    status: RunStatus,
    want: Vec<Seen>,
    /// Lines that must be in the run's log (masked as the store keeps them).
    logged: &'static [&'static str],
    /// Where Argo, and so the Argo executor, knowingly differs: its run status and steps.
    argo: Option<(RunStatus, Vec<Seen>)>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "sequence",
            steps: "  - {name: a, script: 'echo one'}\n  - {name: b, script: 'echo two'}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Succeeded,
            want: vec![
                step("a", "succeeded", 1, Some(0), None),
                step("b", "succeeded", 1, Some(0), None),
            ],
            logged: &["one", "two"],
            argo: None,
        },
        Case {
            name: "parallel-group",
            steps: "  - - {name: left, script: 'echo left'}\n    - {name: right, script: 'exit 4'}\n  - {name: after, script: 'true'}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Failed,
            want: vec![
                step("left", "succeeded", 1, Some(0), None),
                step("right", "failed", 1, Some(4), Some("exited with code 4")),
                step("after", "skipped", 0, None, Some("not run: `right` failed")),
            ],
            logged: &["left"],
            argo: None,
        },
        Case {
            name: "dag-with-outputs",
            steps: "  - name: make\n    script: 'printf db-7 > \"$GANTRY_OUTPUTS/id\"'\n    outputs: [id]\n  - name: other\n    script: 'true'\n  - name: use\n    dependsOn: [make, other]\n    script: 'echo \"got $ID\"'\n    env: {ID: '{{steps.make.outputs.id}}'}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Succeeded,
            want: vec![
                step("make", "succeeded", 1, Some(0), None),
                step("other", "succeeded", 1, Some(0), None),
                step("use", "succeeded", 1, Some(0), None),
            ],
            logged: &["got db-7"],
            argo: None,
        },
        Case {
            name: "when-and-skipped-outputs",
            steps: "  - name: probe\n    script: 'printf no > \"$GANTRY_OUTPUTS/go\"'\n    outputs: [go]\n  - name: maybe\n    when: '{{steps.probe.outputs.go}} == yes'\n    script: 'printf x > \"$GANTRY_OUTPUTS/v\"'\n    outputs: [v]\n  - name: report\n    script: 'echo \"v=[$V]\"'\n    env: {V: '{{steps.maybe.outputs.v}}'}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Succeeded,
            want: vec![
                step("probe", "succeeded", 1, Some(0), None),
                step("maybe", "skipped", 0, None, Some("when was false")),
                step("report", "succeeded", 1, Some(0), None),
            ],
            logged: &["v=[]"],
            // Argo cannot resolve an output of a task it skipped, so the step reading it does
            // not run, and the Workflow fails saying so (Gantry reads such an output as "").
            argo: Some((
                RunStatus::Failed,
                vec![
                    step("probe", "succeeded", 1, Some(0), None),
                    step("maybe", "skipped", 0, None, Some("when was false")),
                    step(
                        "report",
                        "error",
                        0,
                        None,
                        Some(
                            "not run on Argo: Unable to resolve: \"{{tasks.maybe.outputs.parameters.v}}\"",
                        ),
                    ),
                ],
            )),
        },
        Case {
            name: "retry",
            steps: "  - name: flaky\n    script: 'n=$(cat \"$GANTRY_WORKSPACE/n\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$GANTRY_WORKSPACE/n\"; [ $n -ge 3 ] || exit 1'\n    retry: {limit: 3, backoff: 0s}\n  - name: never\n    script: 'exit 2'\n    retry: {limit: 1, backoff: 0s}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Failed,
            want: vec![
                step("flaky", "succeeded", 3, Some(0), None),
                step("never", "failed", 2, Some(2), Some("exited with code 2")),
            ],
            logged: &[],
            argo: None,
        },
        Case {
            name: "timeout-and-continue-on",
            steps: "  - name: slow\n    script: 'sleep 30'\n    timeout: 1s\n    continueOn: {error: true}\n  - name: bad\n    script: 'exit 3'\n    continueOn: {failed: true}\n  - name: last\n    script: 'echo reached'\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Succeeded,
            want: vec![
                step("slow", "timed-out", 1, None, Some("timed out after 1s")),
                step("bad", "failed", 1, Some(3), Some("exited with code 3")),
                step("last", "succeeded", 1, Some(0), None),
            ],
            logged: &["reached"],
            // Argo marks a pod past its deadline `Failed`, which `continueOn: {error: true}` does
            // not tolerate there: the steps after it do not run.
            argo: Some((
                RunStatus::Failed,
                vec![
                    step("slow", "timed-out", 1, None, Some("timed out after 1s")),
                    step("bad", "skipped", 0, None, Some("not run: `slow` timed out")),
                    step(
                        "last",
                        "skipped",
                        0,
                        None,
                        Some("not run: `slow` timed out"),
                    ),
                ],
            )),
        },
        Case {
            name: "cancel",
            steps: "  - {name: wait, script: 'sleep 30'}\n  - {name: later, script: 'true'}\n",
            drive: Drive::CancelWhenStarted("wait"),
            status: RunStatus::Cancelled,
            want: vec![
                step("wait", "cancelled", 1, None, Some("run cancelled")),
                step("later", "cancelled", 0, None, Some("run cancelled")),
            ],
            logged: &[],
            argo: None,
        },
        Case {
            name: "secret-output-passed-on",
            steps: "  - name: mint\n    script: 'head -c 12 /dev/urandom | od -An -tx1 | tr -d \" \\\\n\" > \"$GANTRY_OUTPUTS/pw\"; echo minted'\n    outputs: [{name: pw, secret: true}]\n  - name: use\n    script: 'echo \"got $PW\"; [ ${#PW} -eq 24 ] && echo \"length ok\"'\n    env: {PW: '{{steps.mint.outputs.pw}}'}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Succeeded,
            want: vec![
                step("mint", "succeeded", 1, Some(0), None),
                step("use", "succeeded", 1, Some(0), None),
            ],
            logged: &["minted", "got ***", "length ok"],
            argo: None,
        },
        Case {
            name: "masked-secrets",
            steps: "  - name: leak\n    script: 'echo \"token=$T\"; printf \"pre-%s-post\\\\n\" \"$T\"; echo \"$T\" >&2'\n    env: {T: '{{secrets.token}}'}\n",
            drive: Drive::ToTheEnd,
            status: RunStatus::Succeeded,
            want: vec![step("leak", "succeeded", 1, Some(0), None)],
            logged: &["token=***", "pre-***-post", "***"],
            argo: None,
        },
    ]
}

fn pipeline_text(case: &Case) -> String {
    format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: {}\nsecrets: [token]\nsteps:\n{}",
        case.name, case.steps
    )
}

/// Runs `case` on `executor` to its end; returns the run's status, its steps and its log text.
async fn run_case(
    store: &Store,
    executor: Arc<dyn Executor>,
    case: &Case,
) -> (RunStatus, Vec<Seen>, String) {
    let text = pipeline_text(case);
    let limits = Limits {
        kill_grace: Duration::from_millis(500),
        ..Limits::default()
    };
    let prepared = gantry::run::prepare(
        store,
        crate::support::file_run(&text, &format!("{}.yaml", case.name), limits),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let drive = case.drive;
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        gantry::run::execute(store, executor, prepared, cancel, move |plan, event| {
            if let (Drive::CancelWhenStarted(name), Event::StepStarted { step, .. }) =
                (drive, event)
                && plan.steps[*step].name == name
            {
                trigger.cancel();
            }
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{}: the run did not end within 60 s", case.name))
    .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let steps = store.steps(&run.id).expect("steps");
    let (lines, _) = store.logs(&run.id, None, None).expect("logs");
    let log: String = lines.iter().map(|(_, l)| format!("{}\n", l.text)).collect();
    (run.status, steps.iter().map(seen).collect(), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_executor_leaves_the_same_step_records() {
    for (name, executor, _stand_in) in executors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data")).expect("store");
        store
            .set_secret_with(None, "token", SECRET, SecretRelease::Protected)
            .expect("secret");
        for case in cases() {
            let (status, steps, log) = run_case(&store, executor.clone(), &case).await;
            let what = format!("executor `{name}`, case `{}`", case.name);
            let (want_status, want, logged) = match (&case.argo, name) {
                (Some((s, w)), "argo") => (*s, w, &[][..]),
                _ => (case.status, &case.want, case.logged),
            };
            assert_eq!(status, want_status, "{what}: {steps:#?}\n{log}");
            assert_eq!(&steps, want, "{what}\n{log}");
            for line in logged {
                assert!(
                    log.lines().any(|l| l == *line),
                    "{what}: `{line}` in\n{log}"
                );
            }
            assert!(!log.contains(SECRET), "{what}: a secret in\n{log}");
        }
    }
}
