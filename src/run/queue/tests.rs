//! The queue's policies with real step processes: groups, the global limit, restarts.

use std::time::Instant;

use super::*;
use crate::executor::local::LocalExecutor;

fn pipeline(name: &str, policy: &str, seconds: &str) -> (Pipeline, String) {
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nconcurrency:\n  group: db-{{{{params.env}}}}\n  policy: {policy}\nparameters:\n  - name: env\n    type: string\nsteps:\n  - name: work\n    script: sleep {seconds}\n"
    );
    let checked = crate::spec::check(&text);
    let p = checked
        .pipeline
        .unwrap_or_else(|| panic!("valid pipeline: {:?}", checked.diagnostics));
    (p, text)
}

fn queue(store: &Store, max_running: usize) -> Queue {
    Queue::start(
        store.clone(),
        Executors::single(
            "local",
            Arc::new(LocalExecutor::new()),
            crate::executor::Limits {
                kill_grace: Duration::from_millis(500),
                ..crate::executor::Limits::default()
            },
        ),
        QueueConfig {
            max_running,
            checkout: Arc::new(|_: &RunRecord| Checkout::None),
            executor_for: None,
            on_transition: None,
            protected: BTreeMap::new(),
            hints: crate::run::Hints::Server("http://127.0.0.1:8080".into()),
        },
    )
    .expect("queue")
}

fn submit(store: &Store, q: &Queue, p: &Pipeline, text: &str, env: &str) -> RunRecord {
    let version = store
        .record_version("local", p.name(), text, "", None)
        .expect("version");
    q.submit(Submit {
        source: "local".into(),
        pipeline: p.clone(),
        version,
        params: [("env".to_string(), env.to_string())].into(),
        trigger: Trigger {
            kind: "manual".into(),
            detail: None,
        },
        git: None,
        pr: None,
        idempotency_key: None,
        retry_of: None,
    })
    .expect("submit")
}

async fn wait_end(store: &Store, id: &str) -> RunRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = store.find_run(id).expect("run");
        if !run.status.is_active() {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_policy_runs_one_group_at_a_time_and_others_in_parallel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let q = queue(&store, 4);
    let (p, text) = pipeline("migrate", "queue", "0.3");
    let a = submit(&store, &q, &p, &text, "prod");
    let b = submit(&store, &q, &p, &text, "prod");
    let c = submit(&store, &q, &p, &text, "dev");
    assert_eq!(a.concurrency.as_deref(), Some("db-prod"));
    let (a, b, c) = (
        wait_end(&store, &a.id).await,
        wait_end(&store, &b.id).await,
        wait_end(&store, &c.id).await,
    );
    for r in [&a, &b, &c] {
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    }
    // b waited for a; c (another group) overlapped a.
    assert!(b.started_at >= a.finished_at, "{a:?} {b:?}");
    assert!(c.started_at < a.finished_at, "{a:?} {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_and_cancel_running_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let q = queue(&store, 4);
    let (skip, skip_text) = pipeline("nightly", "skip", "0.5");
    let first = submit(&store, &q, &skip, &skip_text, "prod");
    let second = submit(&store, &q, &skip, &skip_text, "prod");
    assert_eq!(second.status, RunStatus::Skipped);
    assert!(second.message.as_deref().unwrap_or("").contains(&first.id));
    assert_eq!(
        wait_end(&store, &first.id).await.status,
        RunStatus::Succeeded
    );

    let (cancel, cancel_text) = pipeline("deploy", "cancel-running", "30");
    let old = submit(&store, &q, &cancel, &cancel_text, "prod");
    // Let it start before the next one supersedes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.find_run(&old.id).expect("run").status != RunStatus::Running {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (fast, fast_text) = pipeline("deploy", "cancel-running", "0");
    let new = submit(&store, &q, &fast, &fast_text, "prod");
    assert_eq!(wait_end(&store, &old.id).await.status, RunStatus::Cancelled);
    assert_eq!(wait_end(&store, &new.id).await.status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_holds_and_queued_runs_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: slow\nsteps:\n  - name: work\n    script: sleep 0.3\n";
    let p = crate::spec::check(text).pipeline.expect("valid");
    let version = store
        .record_version("local", "slow", text, "", None)
        .expect("version");
    let q = queue(&store, 1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = q
            .submit(Submit {
                source: "local".into(),
                pipeline: p.clone(),
                version,
                params: BTreeMap::new(),
                trigger: Trigger {
                    kind: "manual".into(),
                    detail: None,
                },
                git: None,
                pr: None,
                idempotency_key: None,
                retry_of: None,
            })
            .expect("submit");
        ids.push(run.id);
    }
    // The limit is one: never two running at once.
    let (queued, running) = q.active();
    assert_eq!((queued, running), (2, 1));
    q.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        store.find_run(&ids[0]).expect("run").status,
        RunStatus::Succeeded
    );
    assert_eq!(
        store.find_run(&ids[1]).expect("run").status,
        RunStatus::Queued
    );
    drop(q);
    // A new queue over the same store picks the waiting runs up.
    let q = queue(&store, 1);
    let second = wait_end(&store, &ids[1]).await;
    let third = wait_end(&store, &ids[2]).await;
    assert_eq!(
        (second.status, third.status),
        (RunStatus::Succeeded, RunStatus::Succeeded)
    );
    assert!(third.started_at >= second.finished_at);
    drop(q);
}

fn submit_from(
    store: &Store,
    q: &Queue,
    source: &str,
    p: &Pipeline,
    text: &str,
    env: &str,
) -> RunRecord {
    let version = store
        .record_version(source, p.name(), text, ".gantry/pipelines/x.yaml", None)
        .expect("version");
    q.submit(Submit {
        source: source.into(),
        pipeline: p.clone(),
        version,
        params: [("env".to_string(), env.to_string())].into(),
        trigger: Trigger {
            kind: "push".into(),
            detail: None,
        },
        git: None,
        pr: None,
        idempotency_key: None,
        retry_of: None,
    })
    .expect("submit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_groups_are_namespaced_by_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let q = queue(&store, 4);
    let (slow, slow_text) = pipeline("deploy", "cancel-running", "30");
    let victim = submit_from(&store, &q, "infra", &slow, &slow_text, "prod");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.find_run(&victim.id).expect("run").status != RunStatus::Running {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another repository names the same group (`db-prod`) with each policy: it neither cancels
    // nor waits for nor is skipped by infra's run.
    let (fast, fast_text) = pipeline("deploy", "cancel-running", "0");
    let other = submit_from(&store, &q, "other", &fast, &fast_text, "prod");
    assert_eq!(other.concurrency.as_deref(), Some("db-prod"));
    let (skip, skip_text) = pipeline("nightly", "skip", "0");
    let skipper = submit_from(&store, &q, "fourth", &skip, &skip_text, "prod");
    assert_eq!(skipper.status, RunStatus::Queued, "{skipper:?}");
    let (queued, queued_text) = pipeline("migrate", "queue", "0");
    let waiter = submit_from(&store, &q, "third", &queued, &queued_text, "prod");
    for id in [&other.id, &skipper.id, &waiter.id] {
        assert_eq!(wait_end(&store, id).await.status, RunStatus::Succeeded);
    }
    assert_eq!(
        store.find_run(&victim.id).expect("run").status,
        RunStatus::Running,
        "another source's run must not cancel it"
    );
    // Within its own source the group still works.
    let own = submit_from(&store, &q, "infra", &fast, &fast_text, "prod");
    assert_eq!(
        wait_end(&store, &victim.id).await.status,
        RunStatus::Cancelled
    );
    assert_eq!(wait_end(&store, &own.id).await.status, RunStatus::Succeeded);
}
