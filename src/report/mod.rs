//! Reporting: turns run transitions into what the forge shows, a commit status per pipeline and
//! one pull-request comment edited in place, written through the durable outbox.
//!
//! - `jobs`: what to write for a run transition (`on_transition`) or an invalid pipeline; each
//!   write is an `OutboxJob` stored (flushed) before anything is sent. Jobs with the same key
//!   supersede each other, so a status that is still waiting is replaced by a newer state.
//! - `comment.rs`: the PR comment, re-rendered from the store every time it is written, so
//!   writing it twice is writing it once. Secret values never reach it.
//! - `outbox.rs`: the worker that sends jobs, retrying with backoff and jitter on 5xx, timeouts
//!   and rate limits (honouring `Retry-After` / `X-RateLimit-Reset`), and giving up after a bounded
//!   time with the failure recorded on the run.

pub mod comment;
pub mod outbox;

use chrono::Utc;

use crate::forge::StatusState;
use crate::store::{OutboxAction, OutboxJob, RunRecord, RunStatus, Store, StoreError};

/// The commit status context of a pipeline.
pub fn context(pipeline: &str) -> String {
    format!("gantry/{pipeline}")
}

/// The link to a run's page, under `public_url`.
pub fn run_url(public_url: &str, run_id: &str) -> String {
    format!("{}/runs/{run_id}", public_url.trim_end_matches('/'))
}

/// Gantry's words for a status state, as stored in the outbox.
pub fn state_name(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "pending",
        StatusState::Running => "running",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error => "error",
        StatusState::Canceled => "canceled",
    }
}

pub fn parse_state(name: &str) -> Option<StatusState> {
    [
        StatusState::Pending,
        StatusState::Running,
        StatusState::Success,
        StatusState::Failure,
        StatusState::Error,
        StatusState::Canceled,
    ]
    .into_iter()
    .find(|s| state_name(*s) == name)
}

/// The status of a run, and its one-line description (at most 140 characters, GitHub's limit).
pub fn run_status(run: &RunRecord) -> (StatusState, String) {
    let duration = match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) => format!(" in {:.1}s", (f - s).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    };
    let (state, text) = match run.status {
        RunStatus::Queued => (StatusState::Pending, format!("run #{} queued", run.number)),
        RunStatus::Running => (StatusState::Running, format!("run #{} running", run.number)),
        RunStatus::Succeeded => (
            StatusState::Success,
            format!("run #{} succeeded{duration}", run.number),
        ),
        RunStatus::Failed => (
            StatusState::Failure,
            format!(
                "run #{} failed{duration}: {}",
                run.number,
                run.message.as_deref().unwrap_or("see the run")
            ),
        ),
        RunStatus::Cancelled => (
            StatusState::Canceled,
            format!("run #{} cancelled", run.number),
        ),
        RunStatus::Interrupted => (
            StatusState::Error,
            format!("run #{} interrupted", run.number),
        ),
        RunStatus::Skipped => (
            StatusState::Canceled,
            format!(
                "run #{} skipped: its concurrency group was busy",
                run.number
            ),
        ),
    };
    (state, truncate(&text, 140))
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Which runs are reported to a forge: those started by a forge event on a watched repository.
pub fn reported(run: &RunRecord) -> bool {
    matches!(
        run.trigger.kind.as_str(),
        "push" | "pullRequest" | "comment"
    ) && run.git.is_some()
}

/// The key that makes a newer status supersede an older one.
fn status_key(source: &str, sha: &str, context: &str) -> String {
    format!("status\u{0}{source}\u{0}{sha}\u{0}{context}")
}

fn comment_key(source: &str, pr: u64) -> String {
    format!("comment\u{0}{source}\u{0}{pr}")
}

fn job(source: &str, key: String, run_id: Option<String>, action: OutboxAction) -> OutboxJob {
    let now = Utc::now();
    OutboxJob {
        key,
        source: source.to_string(),
        run_id,
        action,
        attempts: 0,
        first_at: now,
        next_at: now,
        last_error: None,
        revision: 0,
    }
}

/// Queues what a run's new state means for its forge: its commit status and, for a pull
/// request's run, the PR comment.
pub fn on_transition(store: &Store, public_url: &str, run: &RunRecord) -> Result<(), StoreError> {
    if !reported(run) {
        return Ok(());
    }
    let Some(git) = &run.git else {
        return Ok(());
    };
    let (state, description) = run_status(run);
    let description = comment::secrets_of(store, run).mask(&description);
    let ctx = context(&run.pipeline);
    store.put_outbox(job(
        &run.source,
        status_key(&run.source, &git.sha, &ctx),
        Some(run.id.clone()),
        OutboxAction::Status {
            sha: git.sha.clone(),
            context: ctx,
            state: state_name(state).to_string(),
            description,
            target_url: run_url(public_url, &run.id),
        },
    ))?;
    if let Some(pr) = run.pr {
        queue_comment(store, &run.source, pr)?;
    }
    Ok(())
}

/// Queues an update of the PR comment (rendered when sent).
pub fn queue_comment(store: &Store, source: &str, pr: u64) -> Result<(), StoreError> {
    store.put_outbox(job(
        source,
        comment_key(source, pr),
        None,
        OutboxAction::PrComment { pr },
    ))?;
    Ok(())
}

/// Queues a failing status for a pipeline that does not pass validation at `sha`, naming its
/// first error.
pub fn invalid_pipeline(
    store: &Store,
    source: &str,
    sha: &str,
    pipeline: &str,
    first_error: &str,
    target_url: &str,
) -> Result<(), StoreError> {
    let ctx = context(pipeline);
    store.put_outbox(job(
        source,
        status_key(source, sha, &ctx),
        None,
        OutboxAction::Status {
            sha: sha.to_string(),
            context: ctx,
            state: state_name(StatusState::Failure).to_string(),
            description: truncate(&format!("invalid pipeline: {first_error}"), 140),
            target_url: target_url.to_string(),
        },
    ))?;
    Ok(())
}

/// Queues a one-off reply on a pull request, once per `idempotency_key` (the delivery it
/// answers): returns whether it was queued now.
pub fn reply(
    store: &Store,
    source: &str,
    pr: u64,
    body: String,
    idempotency_key: &str,
) -> Result<bool, StoreError> {
    let key = format!("reply\u{0}{source}\u{0}{pr}\u{0}{idempotency_key}");
    let body = format!("{}\n{body}", comment::REPLY_MARKER);
    store.put_outbox_once(
        job(source, key, None, OutboxAction::Reply { pr, body }),
        idempotency_key,
    )
}

#[cfg(test)]
mod tests;
