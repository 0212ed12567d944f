//! A pull request opened or updated: the pipelines whose `on.pullRequest` matches run at its
//! head. A fork's pull request runs nothing on its own; its pipelines are those of the watched
//! branch (see `comment.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::run_at::{
    Delivery, RunAt, RunAtError, changed_paths, pipelines_at, pr_record, refused_text,
    report_invalid, resolve, run_at, save_pr, sync, watched_head,
};
use super::{Intake, WatchedRepo};
use crate::forge::PrAction;
use crate::store::Trigger;
use crate::trigger::events;

pub(super) struct PrEvent {
    pub number: u64,
    pub action: PrAction,
    pub head_sha: String,
    pub head_branch: String,
    pub base_branch: String,
    pub from_fork: bool,
    pub author: String,
    /// When the delivery arrived: no later than the push that moved the head.
    pub received_at: DateTime<Utc>,
}

pub(super) async fn on_pull_request(
    intake: &Intake,
    repo: &Arc<WatchedRepo>,
    delivery: &Delivery,
    pr: PrEvent,
) -> Result<String, String> {
    let forge = delivery.forge;
    let mirror = sync(repo, Some(&pr.head_sha)).await?;
    let head = resolve(&mirror, &pr.head_sha, forge.pr_refspec(pr.number)).await?;
    let mut record = pr_record(
        &intake.store,
        &repo.source.name,
        pr.number,
        &head,
        Some(&pr.head_branch),
    )?;
    if record.head_seen_at.is_none() {
        record.head_seen_at = Some(pr.received_at);
    }
    record.from_fork = pr.from_fork;
    if pr.from_fork {
        // A fork's files say nothing about which pipelines exist: those are the watched
        // branch's, whose errors the comment lists.
        let base = watched_head(repo, &mirror).await?;
        let pipelines = pipelines_at(repo, &mirror, &base).await?;
        record.invalid = pipelines
            .iter()
            .filter(|p| p.pipeline.is_none())
            .map(|p| (p.path.clone(), p.errors.clone()))
            .collect();
        save_pr(intake, &record)?;
        return Ok(format!(
            "pull request #{} comes from a fork: not run automatically",
            pr.number
        ));
    }
    let pipelines = pipelines_at(repo, &mirror, &head).await?;
    record.invalid = pipelines
        .iter()
        .filter(|p| p.pipeline.is_none())
        .map(|p| (p.path.clone(), p.errors.clone()))
        .collect();
    report_invalid(intake, repo, &head, &pipelines);
    let base = mirror.head(&pr.base_branch).ok().flatten();
    let changed = changed_paths(&mirror, base, &head).await;
    let mut started = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut transient = None;
    for (at, p) in events::pr_runs(&pipelines, pr.action, &pr.base_branch, &changed) {
        let run = run_at(
            intake,
            repo,
            delivery,
            RunAt {
                at,
                pipeline: p,
                commit: &head,
                reference: format!("refs/heads/{}", pr.head_branch),
                trigger: Trigger {
                    kind: "pullRequest".into(),
                    detail: Some(format!(
                        "pull request #{} {} by {}",
                        pr.number,
                        pr.action.as_str(),
                        pr.author
                    )),
                },
                pr: Some(pr.number),
                params: BTreeMap::new(),
            },
        );
        match run {
            Ok(run) => {
                record.runs.insert(at.name.clone(), run.id.clone());
                started.push(format!("{} ({})", at.name, run.id));
            }
            Err(RunAtError::Parameter(e)) => refused.push(format!("{}: {e}", at.name)),
            Err(RunAtError::Other(e)) => transient = Some(format!("{}: {e}", at.name)),
        }
    }
    save_pr(intake, &record)?;
    if let Some(e) = transient {
        return Err(e);
    }
    let refused = refused_text(&refused);
    Ok(if started.is_empty() {
        format!("pull request #{}: no pipeline matched", pr.number)
    } else {
        format!(
            "pull request #{}: started {}",
            pr.number,
            started.join(", ")
        )
    } + &refused)
}
