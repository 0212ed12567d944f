//! A comment on a pull request: `/gantry` commands, checked against the commenter's permission
//! and pinned to the head the commenter saw. A fork's pull request (or one Gantry has no record
//! of) runs the pipelines of the watched branch: its own files never say which pipelines exist
//! or which take comment commands; its head only provides the code the steps check out.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::run_at::blocking;
use super::run_at::{
    Delivery, RunAt, RunAtError, pipelines_at, pr_record, reply, resolve, run_at, save_pr, sync,
    watched_head,
};
use super::{Intake, WatchedRepo};
use crate::forge::code_span;
use crate::store::{DeliveryRecord, Trigger};
use crate::trigger::events::{self, Command, CommentDecision, RunCommand};

pub(super) struct CommentEvent {
    pub pr: u64,
    pub body: String,
    pub author: String,
    /// Who the forge's permission check asks about (see `ForgeEvent::Comment`).
    pub author_id: String,
    pub head_sha: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// When `head` became the pull request's head, as far as Gantry can tell: its commit time, and
/// when the pull request delivery that brought it arrived (`None` when Gantry heard of no such
/// delivery).
async fn head_moved_at(
    intake: &Intake,
    source: &str,
    pr: u64,
    mirror: &crate::source::mirror::Mirror,
    head: &str,
) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), String> {
    let (m, h) = (mirror.clone(), head.to_string());
    let committed = blocking(move || m.commit_time(&h).map_err(|e| e.to_string())).await?;
    let committed = DateTime::<Utc>::from_timestamp(committed, 0);
    let seen = intake
        .store
        .get_pr(source, pr)
        .map_err(|e| e.to_string())?
        .filter(|r| r.head_sha == head)
        .and_then(|r| r.head_seen_at);
    Ok((committed, seen))
}

pub(super) async fn on_comment(
    intake: &Intake,
    repo: &Arc<WatchedRepo>,
    delivery: &Delivery,
    comment: CommentEvent,
    record: &DeliveryRecord,
) -> Result<String, String> {
    let forge = delivery.forge;
    let CommentEvent {
        pr,
        body,
        author,
        author_id,
        head_sha,
        created_at,
    } = comment;
    let body = body.as_str();
    // The mention of the commenter is the one thing a reply says unescaped: `@` and their name,
    // itself made inert.
    let mention = crate::forge::escape_markdown(&author);
    let author = author.as_str();
    let source = repo.source.name.clone();
    let say = |text: String| reply(intake, delivery, &source, pr, text);
    if crate::report::comment::is_gantry_comment(body) {
        return Ok("Gantry's own comment".into());
    }
    let command = match events::parse_command(body) {
        None => return Ok("comment without a /gantry command".into()),
        Some(Err(message)) => {
            say(format!("@{mention} {message}"))?;
            return Ok(format!("malformed command: {message}"));
        }
        Some(Ok(c)) => c,
    };
    let client = intake
        .outbox
        .client(&source)
        .await
        .map_err(|e| e.to_string())?;
    let head = match head_sha {
        Some(h) => h,
        None => {
            // Asked once and pinned on the delivery, so a retry cannot pick up a head pushed
            // after the command was given.
            let h = client.pr_head(pr).await.map_err(|e| e.to_string())?;
            let mut pinned = record.clone();
            pinned.head = Some(h.clone());
            intake
                .store
                .retry_delivery(&pinned)
                .map_err(|e| e.to_string())?;
            h
        }
    };
    let mirror = sync(repo, Some(&head)).await?;
    let head = resolve(&mirror, &head, forge.pr_refspec(pr)).await?;
    let known = intake
        .store
        .get_pr(&source, pr)
        .map_err(|e| e.to_string())?;
    // Only a pull request known to come from this repository defines its own pipelines.
    let own = known.as_ref().is_some_and(|r| !r.from_fork);
    let defined_at = if own {
        head.clone()
    } else {
        watched_head(repo, &mirror).await?
    };
    let pipelines = pipelines_at(repo, &mirror, &defined_at).await?;
    let (name, params, named_commit) = match command {
        Command::Help => {
            let commentable: Vec<(String, Vec<String>)> = pipelines
                .iter()
                .filter_map(|at| at.pipeline.as_ref().map(|p| (at, p)))
                .filter(|(_, p)| p.on.comment)
                .map(|(at, p)| {
                    (
                        at.name.clone(),
                        p.parameters.iter().map(|x| x.name.clone()).collect(),
                    )
                })
                .collect();
            say(events::help_text(&commentable))?;
            return Ok("help".into());
        }
        Command::Run {
            pipeline,
            params,
            at,
        } => (pipeline, params, at),
    };
    let can_write = client
        .can_write(&author_id)
        .await
        .map_err(|e| e.to_string())?;
    let (moved_after_comment, head_time_unknown) = match &named_commit {
        None => {
            let (committed, seen) = head_moved_at(intake, &source, pr, &mirror, &head).await?;
            // Forges give comment times in whole seconds.
            let moved = created_at.is_some_and(|said| {
                committed
                    .max(seen)
                    .is_some_and(|m| m.timestamp() > said.timestamp())
            });
            // A fork's commit time proves nothing (its author sets it): without a delivery that
            // says when the head arrived, the commenter must name the commit.
            (moved, !own && seen.is_none())
        }
        Some(_) => (false, false),
    };
    let decision = events::decide_run(
        &RunCommand {
            mention: &mention,
            pr,
            repo: &repo.forge_id,
            name: &name,
            head: &head,
            defined_at: &defined_at,
            watched_branch: !own,
            can_write,
            named_commit: named_commit.as_deref(),
            moved_after_comment,
            head_time_unknown,
        },
        &pipelines,
    );
    let (at, p) = match decision {
        CommentDecision::Reply { text, outcome } => {
            say(text)?;
            return Ok(outcome);
        }
        CommentDecision::Run { at, pipeline } => (at, pipeline),
    };
    let given: BTreeMap<String, String> = params.into_iter().collect();
    // A fork's branch names are the fork's (its `main` is not ours): its runs carry the PR's
    // own ref.
    let known_branch = known.filter(|r| !r.from_fork).and_then(|r| r.head_branch);
    let reference = match known_branch {
        Some(branch) => format!("refs/heads/{branch}"),
        None => forge.pr_head_ref(pr).unwrap_or_default(),
    };
    let submitted = run_at(
        intake,
        repo,
        delivery,
        RunAt {
            at,
            pipeline: p,
            commit: &head,
            reference,
            trigger: Trigger {
                kind: "comment".into(),
                detail: Some(format!("/gantry run by {author} on #{pr}")),
            },
            pr: Some(pr),
            params: given,
        },
    );
    let run = match submitted {
        Ok(r) => r,
        Err(RunAtError::Parameter(message)) => {
            say(format!("@{mention} not started: {}", code_span(&message)))?;
            return Ok(format!("parameter error: {message}"));
        }
        Err(RunAtError::Other(e)) => return Err(e),
    };
    let mut record = pr_record(&intake.store, &source, pr, &head, None)?;
    record.runs.insert(name.clone(), run.id.clone());
    save_pr(intake, &record)?;
    Ok(format!("comment command: started {name} ({})", run.id))
}
