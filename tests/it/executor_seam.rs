//! The executor seam as a second executor sees it: an executor that cannot reach its server says
//! so apart from a failed step, its run and attempt identities are recorded, and records written
//! before those existed still read.

use std::sync::Arc;

use gantry::executor::{
    AttemptHandle, BoxFuture, Event, Executor, ExecutorError, Limits, LostRun, Recovery, RunInput,
    RunOutcome,
};
use gantry::plan::Plan;
use gantry::store::{RunRecord, RunStatus, StepRecord, StepState, Store};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

/// An executor whose server goes away after the run was submitted and its first step started.
struct LostServer;

impl Executor for LostServer {
    fn kind(&self) -> &'static str {
        "argo"
    }

    fn recover(&self, _work_dir: &std::path::Path, lost: &[LostRun]) -> Vec<Recovery> {
        lost.iter()
            .map(|_| Recovery::Ended { stopped: 0 })
            .collect()
    }

    fn execute<'a>(
        &'a self,
        _plan: &'a Plan,
        _input: &'a RunInput,
        events: Sender<Event>,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunOutcome, ExecutorError>> {
        Box::pin(async move {
            let workflow = "gantry-run-01abc-x7k2p".to_string();
            let _ = events
                .send(Event::Attached {
                    external_id: workflow.clone(),
                })
                .await;
            let _ = events
                .send(Event::StepStarted {
                    step: 0,
                    attempt: 1,
                    handle: AttemptHandle::Argo {
                        node: format!("{workflow}-3141592653"),
                        workflow,
                        pod: None,
                    },
                    at: chrono::Utc::now(),
                })
                .await;
            Err(ExecutorError::Unavailable {
                executor: "argo".into(),
                server: "https://argo.internal:2746".into(),
                reason: "answered 503 Service Unavailable three times".into(),
            })
        })
    }
}

/// Runs a pipeline given as text to its end on `executor`, recorded in `store`.
async fn run_file(store: &Store, executor: Arc<dyn Executor>, text: &str, path: &str) -> RunRecord {
    let prepared = gantry::run::prepare(
        store,
        crate::support::file_run(text, path, Limits::default()),
    )
    .expect("prepared");
    gantry::run::execute(
        store,
        executor,
        prepared,
        CancellationToken::new(),
        |_, _| {},
    )
    .await
    .expect("recorded")
}

#[tokio::test]
async fn an_unavailable_executor_fails_the_run_naming_its_server_not_a_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: two\nsteps:\n  - name: first\n    script: 'true'\n  - name: second\n    script: 'true'\n";
    let run = run_file(&store, Arc::new(LostServer), text, "two.yaml").await;

    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.message.as_deref(),
        Some(
            "executor `argo` is unavailable: https://argo.internal:2746 answered 503 Service \
             Unavailable three times"
        )
    );
    assert_eq!(run.executor.as_deref(), Some("argo"));
    assert_eq!(run.external_id.as_deref(), Some("gantry-run-01abc-x7k2p"));
    let steps = store.steps(&run.id).expect("steps");
    for step in &steps {
        assert_eq!(step.state, StepState::Error, "{step:?}");
        assert!(
            step.message
                .as_deref()
                .is_some_and(|m| m.starts_with("not run to its end: executor `argo`")),
            "{step:?}"
        );
    }
    assert_eq!(
        steps[0].attempts[0].handle,
        AttemptHandle::Argo {
            workflow: "gantry-run-01abc-x7k2p".into(),
            node: "gantry-run-01abc-x7k2p-3141592653".into(),
            pod: None,
        }
    );
}

/// A run and a step as stored before executors had names and attempts had handles.
#[test]
fn records_from_before_handles_still_read() {
    let run: RunRecord = serde_json::from_str(
        r#"{"id":"01JD00000000000000000000AA","number":3,"source":"local","pipeline":"p",
            "version":1,"parameters":{},"trigger":{"kind":"manual"},"status":"succeeded",
            "created_at":"2026-01-02T03:04:05Z","steps":["a","b"]}"#,
    )
    .expect("an old run reads");
    assert_eq!((run.executor, run.external_id), (None, None));

    let step: StepRecord = serde_json::from_str(
        r#"{"name":"a","state":"succeeded","attempts":[
            {"number":1,"started_at":"2026-01-02T03:04:05Z","status":"failed","exit_code":1,"pid":4242},
            {"number":2,"started_at":"2026-01-02T03:04:06Z","status":"succeeded","pid":0}]}"#,
    )
    .expect("an old step reads");
    assert_eq!(
        step.attempts[0].handle,
        AttemptHandle::Process { pid: 4242 }
    );
    assert_eq!(step.attempts[1].handle, AttemptHandle::Builtin);

    // Written now: the handle, and the pid beside it for readers of the old shape.
    let written = serde_json::to_value(&step).expect("json");
    assert_eq!(
        written["attempts"][0]["handle"],
        serde_json::json!({"kind": "process", "pid": 4242})
    );
    assert_eq!(written["attempts"][0]["pid"], 4242);
    assert_eq!(written["attempts"][1]["pid"], 0);
    let again: StepRecord = serde_json::from_value(written).expect("reads back");
    assert_eq!(again, step);
}

/// The Argo executor against a server that keeps answering 503: after its retries the run fails
/// as unavailable, naming the server, and no step is said to have failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argo_executor_names_a_server_that_stays_down() {
    let stand_in = crate::support::argo::ArgoStandIn::start();
    stand_in.fail_next(1000);
    let argo = stand_in.executor("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: one\nsteps:\n  - {name: a, script: 'true'}\n";
    let run = run_file(&store, Arc::new(argo), text, "one.yaml").await;
    assert_eq!(run.status, RunStatus::Failed);
    let message = run.message.unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "executor `cluster` is unavailable: {} answered 503 Service Unavailable",
            stand_in.url()
        )),
        "{message}"
    );
    assert_eq!(run.executor.as_deref(), Some("argo"));
    // The first call and its three retries.
    assert_eq!(stand_in.calls().len(), 4, "{:?}", stand_in.calls());
}

/// Event streams that end after one event, every time: the Argo executor reads the Workflow
/// again, follows anew, and still sees the run through, attempts and output included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argo_executor_follows_through_streams_that_keep_ending() {
    let stand_in = crate::support::argo::ArgoStandIn::start();
    stand_in.cut_event_streams_after(Some(1));
    let argo = stand_in.executor("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: cut\nsteps:\n  - name: a\n    script: 'sleep 0.3; printf done > \"$GANTRY_OUTPUTS/r\"'\n    outputs: [r]\n  - {name: b, script: 'echo after'}\n";
    let run = run_file(&store, Arc::new(argo), text, "cut.yaml").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.message);
    let outputs = store.outputs(&run.id).expect("outputs");
    assert_eq!(outputs[0].value.as_deref(), Some("done"), "{outputs:?}");
    let opened = stand_in
        .calls()
        .iter()
        .filter(|c| c.starts_with("GET /api/v1/workflow-events/"))
        .count();
    assert!(
        opened > 1,
        "the stream was opened again: {:?}",
        stand_in.calls()
    );
}

/// A secret output on Argo: sealed in its pod, so the Workflow holds only ciphertext; opened for
/// the step that reads it, and by Gantry, which stores it sealed like any secret output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_output_crosses_argo_sealed() {
    let value = "pl41ntext-secret-output-9f3c";
    let stand_in = crate::support::argo::ArgoStandIn::start();
    let argo = stand_in.executor("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    store
        .set_secret_with(
            None,
            "token",
            value,
            gantry::store::SecretRelease::Protected,
        )
        .expect("secret");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: sealed\nsecrets: [token]\nsteps:\n  - name: mint\n    script: 'printf \"%s\\n\" \"$T\" > \"$GANTRY_OUTPUTS/pw\"'\n    env: {T: '{{secrets.token}}'}\n    outputs: [{name: pw, secret: true}]\n  - name: use\n    script: '[ \"$PW\" = \"$T\" ] && echo \"the same value\"'\n    env: {PW: '{{steps.mint.outputs.pw}}', T: '{{secrets.token}}'}\n";
    let run = run_file(&store, Arc::new(argo), text, "sealed.yaml").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.message);
    let (lines, _) = store.logs(&run.id, None, None).expect("logs");
    assert!(lines.iter().any(|(_, l)| l.text == "the same value"));
    let workflow = run.external_id.expect("a Workflow");
    let wf = stand_in.workflow("gantry", &workflow).expect("stored");
    let sealed = wf["status"]["nodes"]
        .as_object()
        .expect("nodes")
        .values()
        .find_map(|n| {
            n["outputs"]["parameters"][0]["value"]
                .as_str()
                .map(str::to_string)
        })
        .expect("the sealed output");
    assert_eq!(sealed.len(), 2 * (value.len() + 1), "{sealed}");
    assert!(
        !wf.to_string().contains(value),
        "no plaintext in the Workflow"
    );
    let outputs = store.outputs(&run.id).expect("outputs");
    assert!(
        outputs[0].secret && outputs[0].value.is_none(),
        "{outputs:?}"
    );
}

/// A pod's lines reach the run's log while the pod runs: this step waits for a file that the test
/// writes only once it has seen the step's first line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_logs_arrive_while_the_pod_runs() {
    let stand_in = crate::support::argo::ArgoStandIn::start();
    let argo = stand_in.executor("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: live\nsteps:\n  - name: wait\n    script: 'echo early; i=0; while [ ! -e {} ]; do i=$((i+1)); [ $i -lt 400 ] || exit 7; sleep 0.05; done; echo late'\n",
        go.display()
    );
    let prepared = gantry::run::prepare(
        &store,
        crate::support::file_run(&text, "live.yaml", Limits::default()),
    )
    .expect("prepared");
    let run = gantry::run::execute(
        &store,
        Arc::new(argo),
        prepared,
        CancellationToken::new(),
        move |_, event| {
            if let gantry::executor::Event::Log { lines, .. } = event
                && lines.iter().any(|l| l == "early")
            {
                let _ = std::fs::write(&go, "go");
            }
        },
    )
    .await
    .expect("recorded");
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.message);
    let (lines, _) = store.logs(&run.id, None, None).expect("logs");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.text.as_str()).collect();
    assert_eq!(texts, ["early", "late"]);
}

/// A private repository on Argo: the checkout fetches the run's commit with the repository's
/// credentials, which travel in the run's Secret and reach git through a credential helper, so
/// neither the Workflow nor any URL holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argo_checkout_fetches_a_private_repository_with_its_credentials() {
    use crate::support::git::{HttpGit, Repo};
    let token = "pr1vate-repo-t0ken-8812";
    let served = tempfile::tempdir().expect("tempdir");
    let repo = Repo::create(served.path(), "infra.git");
    repo.write("data/hello.txt", "hello from a private repository\n");
    let sha = repo.commit_and_push("private content");
    let http = HttpGit::start(served.path(), Some(("git", token)));
    let stand_in = crate::support::argo::ArgoStandIn::start();
    let argo = stand_in.executor("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: private\nsteps:\n  - name: checkout\n    template: gantry/git-checkout@v1\n  - name: read\n    script: 'cat \"$GANTRY_WORKSPACE/data/hello.txt\"'\n";
    let mut request = crate::support::file_run(text, "private.yaml", Limits::default());
    request.git = Some(gantry::executor::GitInfo {
        sha: sha.clone(),
        reference: "refs/heads/main".into(),
        repo: "acme/infra".into(),
    });
    request.checkout = gantry::executor::Checkout::Commit(gantry::executor::CommitRef {
        repo: "infra".into(),
        url: http.url("infra.git"),
        sha,
        credentials: Some(gantry::source::mirror::Credentials::new("git", token)),
    });
    let prepared = gantry::run::prepare(&store, request).expect("prepared");
    let run = gantry::run::execute(
        &store,
        Arc::new(argo),
        prepared,
        CancellationToken::new(),
        |_, _| {},
    )
    .await
    .expect("recorded");
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.message);
    let (lines, _) = store.logs(&run.id, None, None).expect("logs");
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.text == "hello from a private repository"),
        "{lines:?}"
    );
    assert!(http.auth_headers_seen().iter().any(|sent| *sent));
    let wf = stand_in
        .workflow("gantry", run.external_id.as_deref().expect("a Workflow"))
        .expect("stored");
    assert!(!wf.to_string().contains(token), "no token in the Workflow");
}

/// Two APIs, two tokens: the Argo Server's for Workflows, the Kubernetes API's (here from a file)
/// for the run's Secret, each sent only where it belongs, even when both APIs share an address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argo_executor_sends_each_api_its_own_token() {
    use gantry::executor::argo::client::{Connection, Token};
    use gantry::executor::argo::{ArgoExecutor, ArgoOptions};
    let stand_in = crate::support::argo::ArgoStandIn::start();
    stand_in.separate_kube_token();
    let dir = tempfile::tempdir().expect("tempdir");
    let kube_token = dir.path().join("kube-token");
    std::fs::write(&kube_token, crate::support::argo::KUBE_TOKEN).expect("token file");
    let argo = ArgoExecutor::new(
        "cluster",
        Connection {
            server: stand_in.url(),
            kube: stand_in.url(),
            namespace: "gantry".into(),
            token: crate::support::argo::TOKEN.into(),
            kube_token: Some(Token::File(kube_token)),
            ca_pem: None,
        },
        ArgoOptions::default(),
    )
    .expect("executor");
    let store = Store::open(&dir.path().join("data")).expect("store");
    store
        .set_secret_with(
            None,
            "token",
            "t0k3n",
            gantry::store::SecretRelease::Protected,
        )
        .expect("secret");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: tokens\nsecrets: [token]\nsteps:\n  - {name: a, script: '[ -n \"$T\" ]', env: {T: '{{secrets.token}}'}}\n";
    let run = run_file(&store, Arc::new(argo), text, "tokens.yaml").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.message);
}

/// A Kubernetes API that refuses the run's Secret (RBAC): the run fails before any step, its
/// message quoting the API and naming the Secret, and nothing is submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_fails_the_run_with_the_api_s_words() {
    let stand_in = crate::support::argo::ArgoStandIn::start();
    stand_in.forbid_secrets();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    store
        .set_secret_with(
            None,
            "token",
            "t0k3n",
            gantry::store::SecretRelease::Protected,
        )
        .expect("secret");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: rbac\nsecrets: [token]\nsteps:\n  - {name: a, script: 'true', env: {T: '{{secrets.token}}'}}\n";
    let run = run_file(
        &store,
        Arc::new(stand_in.executor("cluster")),
        text,
        "rbac.yaml",
    )
    .await;
    assert_eq!(run.status, RunStatus::Failed);
    let message = run.message.unwrap_or_default();
    assert!(
        message.contains("refused the run's Secret gantry-run-")
            && message.contains("secrets is forbidden"),
        "{message}"
    );
    assert!(
        stand_in.workflow_names("gantry").is_empty(),
        "nothing submitted"
    );
}
