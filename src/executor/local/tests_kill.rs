//! Tests of ending things: step timeouts, the run's timeout, cancellation, and the process group
//! kill that takes grandchildren and left-behind background processes with the step.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::tests::{HEAD, input, run, run_with};
use crate::executor::{Event, RunOutcome, StepStatus, Stream};

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn pid_in(dir: &Path, file: &str) -> i32 {
    let text = std::fs::read_to_string(dir.join("workspace").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file} holds {text:?}: {e}"))
}

/// Waits up to two seconds for a process to be gone.
async fn gone(pid: i32) -> bool {
    for _ in 0..40 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Cancels `token` after `ms` milliseconds.
fn cancel_after(token: &CancellationToken, ms: u64) {
    let token = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        token.cancel();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_kills_the_whole_group_including_grandchildren() {
    let started = Instant::now();
    let (dir, ran) = run(&format!(
        "{HEAD}steps:\n  - name: hang\n    script: 'sleep 300 & echo $! > gc.pid; sleep 300'\n    timeout: 1s\n  - {{name: next, script: 'true'}}\n"
    ))
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        ran.finished("hang"),
        (StepStatus::TimedOut, Some("timed out after 1s".into()))
    );
    assert_eq!(
        ran.finished("next").1.as_deref(),
        Some("not run: `hang` timed out")
    );
    assert_eq!(ran.outcome, RunOutcome::Failed);
    let grandchild = pid_in(dir.path(), "gc.pid");
    assert!(gone(grandchild).await, "grandchild {grandchild} survived");
}

#[tokio::test]
async fn sigterm_is_ignored_so_sigkill_follows_after_the_grace_period() {
    let started = Instant::now();
    let (dir, ran) = run(&format!(
        "{HEAD}steps:\n  - name: stubborn\n    script: \"trap '' TERM; sleep 300 & echo $! > gc.pid; while :; do sleep 0.05; done\"\n    timeout: 1s\n"
    ))
    .await;
    let elapsed = started.elapsed();
    // 1 s of timeout, then 1 s of grace (the test limits), then SIGKILL.
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert_eq!(ran.status("stubborn"), StepStatus::TimedOut);
    let grandchild = pid_in(dir.path(), "gc.pid");
    assert!(gone(grandchild).await, "grandchild {grandchild} survived");
}

#[tokio::test]
async fn group_members_get_the_grace_period_even_when_the_leader_dies_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut input = input(dir.path());
    input.limits.kill_grace = Duration::from_secs(5);
    let started = Instant::now();
    let ran = run_with(
        &format!(
            r#"{HEAD}steps:
  - name: graceful
    timeout: 1s
    script: |
      sh -c 'trap "echo cleaning; sleep 0.3; echo cleaned; exit 0" TERM; while :; do sleep 0.05; done' &
      sleep 300
"#
        ),
        &input,
        CancellationToken::new(),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(ran.status("graceful"), StepStatus::TimedOut);
    assert_eq!(
        ran.lines("graceful", Stream::Stdout),
        vec!["cleaning", "cleaned"]
    );
}

#[tokio::test]
async fn background_children_die_when_the_step_ends_normally() {
    let started = Instant::now();
    let (dir, ran) = run(&format!(
        "{HEAD}steps:\n  - {{name: leaves, script: 'sleep 300 & echo $! > gc.pid; echo done'}}\n"
    ))
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
    assert_eq!(ran.lines("leaves", Stream::Stdout), vec!["done"]);
    let grandchild = pid_in(dir.path(), "gc.pid");
    assert!(
        gone(grandchild).await,
        "background child {grandchild} survived"
    );
}

#[tokio::test]
async fn a_process_that_left_the_group_does_not_hold_the_step_forever() {
    if std::process::Command::new("setsid")
        .arg("true")
        .status()
        .is_err()
    {
        eprintln!("setsid is not available; skipping");
        return;
    }
    let started = Instant::now();
    let (dir, ran) = run(&format!(
        "{HEAD}steps:\n  - {{name: escape, script: \"setsid sh -c 'echo $$ > esc.pid; exec sleep 300' & sleep 0.2; echo done\"}}\n"
    ))
    .await;
    let escaped = pid_in(dir.path(), "esc.pid");
    // SAFETY: kill(2) on a pid this test started.
    unsafe {
        libc::kill(escaped, libc::SIGKILL);
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.status("escape"), StepStatus::Succeeded);
    assert_eq!(ran.lines("escape", Stream::Stdout), vec!["done"]);
    let system = ran.lines("escape", Stream::System);
    assert!(
        system
            .iter()
            .any(|l| l.contains("outside its process group")),
        "{system:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_steps_and_cancels_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cancel = CancellationToken::new();
    cancel_after(&cancel, 300);
    let started = Instant::now();
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - {{name: long, script: 'sleep 300 & echo $! > gc.pid; wait'}}\n  - {{name: later, script: 'true'}}\n"
        ),
        &input(dir.path()),
        cancel,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.outcome, RunOutcome::Cancelled);
    let cancelled = (StepStatus::Cancelled, Some("run cancelled".to_string()));
    assert_eq!(ran.finished("long"), cancelled);
    assert_eq!(ran.finished("later"), cancelled);
    assert_eq!(ran.attempts("long"), vec![(1, StepStatus::Cancelled, None)]);
    assert!(gone(pid_in(dir.path(), "gc.pid")).await);
}

#[tokio::test]
async fn cancel_during_a_retry_backoff_is_honoured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cancel = CancellationToken::new();
    cancel_after(&cancel, 300);
    let started = Instant::now();
    let ran = run_with(
        &format!("{HEAD}steps:\n  - {{name: flaky, script: 'exit 1', retry: {{limit: 3, backoff: 1h}}}}\n"),
        &input(dir.path()),
        cancel,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.outcome, RunOutcome::Cancelled);
    assert_eq!(
        ran.attempts("flaky"),
        vec![(1, StepStatus::Failed, Some(Duration::from_secs(3600)))]
    );
    assert_eq!(
        ran.lines("flaky", Stream::System)
            .last()
            .map(String::as_str),
        Some("retrying in 1h (attempt 2 of 4)")
    );
    assert_eq!(ran.status("flaky"), StepStatus::Cancelled);
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_runs_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ran = run_with(
        &format!(
            "{HEAD}steps:\n  - {{name: a, script: 'touch ran'}}\n  - {{name: b, script: 'true'}}\n"
        ),
        &input(dir.path()),
        cancel,
    )
    .await;
    assert_eq!(ran.outcome, RunOutcome::Cancelled);
    assert!(
        !ran.events
            .iter()
            .any(|e| matches!(e, Event::StepStarted { .. }))
    );
    assert!(!dir.path().join("workspace/ran").exists());
    assert_eq!(ran.status("a"), StepStatus::Cancelled);
    assert_eq!(ran.status("b"), StepStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_timeout_cancels_everything() {
    let started = Instant::now();
    let (_dir, ran) = run(&format!(
        "{HEAD}timeout: 1s\nsteps:\n  - - {{name: slow, script: 'sleep 300'}}\n    - {{name: quick, script: 'true'}}\n  - {{name: never, script: 'true'}}\n"
    ))
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.outcome, RunOutcome::TimedOut);
    let timed_out = (StepStatus::Cancelled, Some("run timed out".to_string()));
    assert_eq!(ran.finished("slow"), timed_out);
    assert_eq!(ran.status("quick"), StepStatus::Succeeded);
    assert_eq!(ran.finished("never"), timed_out);
}

#[tokio::test]
async fn a_step_that_cannot_start_is_an_error_that_continue_on_tolerates() {
    let (_dir, ran) = run(&format!(
        "{HEAD}steps:\n  - {{name: nope, command: [/nonexistent/tool], continueOn: {{error: true}}}}\n  - {{name: next, script: 'true'}}\n"
    ))
    .await;
    assert_eq!(ran.status("nope"), StepStatus::Error);
    assert_eq!(ran.status("next"), StepStatus::Succeeded);
    assert_eq!(ran.outcome, RunOutcome::Succeeded);
    let started = ran.events.iter().find_map(|e| match e {
        Event::StepStarted {
            step: 0, handle, ..
        } => Some(handle.clone()),
        _ => None,
    });
    assert_eq!(started, Some(crate::executor::AttemptHandle::Builtin));
}
