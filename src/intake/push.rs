//! A push: the pipelines at the pushed commit whose `on.push` matches run at it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::run_at::{
    Delivery, RunAt, RunAtError, changed_paths, pipelines_at, reconcile_later, refused_text,
    report_invalid, resolve, run_at, sync,
};
use super::{Intake, WatchedRepo};
use crate::store::Trigger;
use crate::trigger::events;

pub(super) async fn on_push(
    intake: &Intake,
    repo: &Arc<WatchedRepo>,
    delivery: &Delivery,
    branch: &str,
    before: Option<String>,
    after: &str,
    pusher: &str,
) -> Result<String, String> {
    let mirror = sync(repo, Some(after)).await?;
    let after = resolve(&mirror, after, None).await?;
    let changed = changed_paths(&mirror, before, &after).await;
    let pipelines = pipelines_at(repo, &mirror, &after).await?;
    report_invalid(intake, repo, &after, &pipelines);
    let mut started = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut transient = None;
    for (at, p) in events::push_runs(&pipelines, branch, &repo.source.branch, &changed) {
        let run = run_at(
            intake,
            repo,
            delivery,
            RunAt {
                at,
                pipeline: p,
                commit: &after,
                reference: format!("refs/heads/{branch}"),
                trigger: Trigger {
                    kind: "push".into(),
                    detail: Some(format!("push to {branch} by {pusher}")),
                },
                pr: None,
                params: BTreeMap::new(),
            },
        );
        match run {
            Ok(run) => started.push(format!("{} ({})", at.name, run.id)),
            // One pipeline that cannot start (a required parameter without a default) does not
            // keep the others from running.
            Err(RunAtError::Parameter(e)) => refused.push(format!("{}: {e}", at.name)),
            // The others are still queued; the delivery is tried again for this one.
            Err(RunAtError::Other(e)) => transient = Some(format!("{}: {e}", at.name)),
        }
    }
    if let Some(e) = transient {
        return Err(e);
    }
    let refused = refused_text(&refused);
    let outcome = if started.is_empty() {
        format!("push to {branch}: no pipeline matched")
    } else {
        format!("push to {branch}: started {}", started.join(", "))
    } + &refused;
    if branch == repo.source.branch {
        reconcile_later(intake, repo, &mirror);
    }
    Ok(outcome)
}
