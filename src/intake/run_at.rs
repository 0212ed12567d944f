//! What the per-event files share: the delivery being processed (which names its runs and
//! replies), mirror access off the async threads, the pipelines at a commit, queueing a run once,
//! the PR record, and replies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{Intake, WatchedRepo};
use crate::executor::GitInfo;
use crate::forge::Forge;
use crate::run::queue::Submit;
use crate::source::mirror::Mirror;
use crate::store::{PrRecord, RunRecord, Store, Trigger};
use crate::trigger::events::{self, AtCommit};

/// The delivery being processed. Everything it makes is named after it, so processing it again
/// makes only what is missing.
pub(super) struct Delivery {
    pub forge: Forge,
    pub id: String,
}

impl Delivery {
    /// The idempotency key of the run this delivery queues for the pipeline file at `path` (two
    /// files at one commit may give the same pipeline name; each is its own run).
    pub fn run_key(&self, path: &str) -> String {
        format!("{}/{}/run/{path}", self.forge.as_str(), self.id)
    }

    /// The idempotency key of the one reply this delivery may post.
    pub fn reply_key(&self) -> String {
        format!("{}/{}/reply", self.forge.as_str(), self.id)
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a worker stopped: {e}"))?
}

/// Fetches the mirror (cloning it the first time) so the event's commits are there, unless
/// `wanted` is already in it.
pub(super) async fn sync(repo: &Arc<WatchedRepo>, wanted: Option<&str>) -> Result<Mirror, String> {
    let r = repo.clone();
    let wanted = wanted.map(str::to_string);
    let _guard = repo.sync_lock.lock().await;
    let (mirror, fetched) = blocking(move || {
        let existed = r.source.mirror_dir.join("HEAD").exists();
        let mirror = Mirror::open_or_clone(
            &r.source.mirror_dir,
            &r.source.url,
            &r.source.branch,
            r.source.credentials.clone(),
        )
        .map_err(|e| e.to_string())?;
        let have = wanted.is_some_and(|w| mirror.resolve(&w).is_ok());
        let fetch = existed && !have;
        if fetch {
            let interrupt = AtomicBool::new(false);
            mirror.fetch(&interrupt).map_err(|e| e.to_string())?;
        }
        Ok((mirror, fetch))
    })
    .await?;
    if fetched {
        maintain_later(repo, &mirror);
    }
    Ok(mirror)
}

/// Merges the mirror's packs when they piled up (`Mirror::maintain`), in the background under the
/// repository's sync lock: the event that fetched does not wait for it.
fn maintain_later(repo: &Arc<WatchedRepo>, mirror: &Mirror) {
    let (r, m) = (repo.clone(), mirror.clone());
    tokio::task::spawn_blocking(move || {
        let _guard = r.sync_lock.blocking_lock();
        if let Err(e) = m.maintain() {
            tracing::warn!("{}: {e}", r.source.name);
        }
    });
}

/// Reconciles the watched branch with the mirror just fetched (new versions, errors,
/// retirements), in the background: the event's runs do not wait for it.
pub(super) fn reconcile_later(intake: &Intake, repo: &Arc<WatchedRepo>, mirror: &Mirror) {
    let (store, r, m) = (intake.store.clone(), repo.clone(), mirror.clone());
    tokio::task::spawn_blocking(move || {
        let _guard = r.sync_lock.blocking_lock();
        let head = match m.head(&r.source.branch) {
            Ok(Some(head)) => head,
            _ => return,
        };
        if let Err(e) = crate::catalog::reconcile(&store, &r.source, &m, &head) {
            tracing::warn!("reconcile of {}: {e}", r.source.name);
        }
    });
}

/// The full sha of `commit` in the mirror, fetching `pr_ref` (a pull request's head refspec)
/// when no branch holds it (a fork's commit).
pub(super) async fn resolve(
    mirror: &Mirror,
    commit: &str,
    pr_ref: Option<String>,
) -> Result<String, String> {
    if let Ok(full) = mirror.resolve(commit) {
        return Ok(full);
    }
    let Some(spec) = pr_ref else {
        return Err(format!("commit {commit} is not in the mirror"));
    };
    let mirror = mirror.clone();
    let commit = commit.to_string();
    blocking(move || {
        let interrupt = AtomicBool::new(false);
        mirror
            .fetch_refspecs(&[spec.as_str()], &interrupt)
            .map_err(|e| e.to_string())?;
        mirror
            .resolve(&commit)
            .map_err(|e| format!("commit {commit}: {e}"))
    })
    .await
}

/// The head of the watched branch, where a fork's pull request reads its pipelines.
pub(super) async fn watched_head(
    repo: &Arc<WatchedRepo>,
    mirror: &Mirror,
) -> Result<String, String> {
    let (m, branch) = (mirror.clone(), repo.source.branch.clone());
    blocking(move || {
        m.head(&branch)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the watched branch `{branch}` is not in the mirror"))
    })
    .await
}

pub(super) async fn pipelines_at(
    repo: &Arc<WatchedRepo>,
    mirror: &Mirror,
    commit: &str,
) -> Result<Vec<AtCommit>, String> {
    let (m, c, globs) = (
        mirror.clone(),
        commit.to_string(),
        repo.source.paths.clone(),
    );
    blocking(move || {
        events::pipelines_at(&m, &c, &globs, events::ReadCap::default()).map_err(|e| e.to_string())
    })
    .await
}

pub(super) async fn changed_paths(mirror: &Mirror, old: Option<String>, new: &str) -> Vec<String> {
    let (m, n) = (mirror.clone(), new.to_string());
    blocking(move || {
        m.changed_paths(old.as_deref(), &n)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_default()
}

/// The version a run of `at` uses: the pipeline's current one when the text is the same, else
/// the text recorded as a new version pinned to `commit` (a branch or PR head that changed it).
fn version_for(store: &Store, source: &str, at: &AtCommit, commit: &str) -> Result<u32, String> {
    let current = store
        .get_pipeline(source, &at.name)
        .map_err(|e| e.to_string())?
        .and_then(|p| p.version);
    if let Some(v) = current
        && let Ok(Some(version)) = store.get_version(source, &at.name, v)
        && version.text == at.text
        && version.path == at.path
    {
        return Ok(v);
    }
    store
        .record_version(source, &at.name, &at.text, &at.path, Some(commit))
        .map_err(|e| e.to_string())
}

pub(super) fn first_error(at: &AtCommit) -> String {
    at.errors
        .first()
        .map(ToString::to_string)
        .unwrap_or_else(|| format!("{}: invalid", at.path))
}

/// A failing commit status for every invalid pipeline file at `sha`.
pub(super) fn report_invalid(
    intake: &Intake,
    repo: &WatchedRepo,
    sha: &str,
    pipelines: &[AtCommit],
) {
    if !intake.outbox.reports(&repo.source.name) {
        return;
    }
    for at in pipelines.iter().filter(|p| p.pipeline.is_none()) {
        let url = format!(
            "{}/pipelines/{}/{}",
            intake.public_url.trim_end_matches('/'),
            repo.source.name,
            at.name
        );
        if let Err(e) = crate::report::invalid_pipeline(
            &intake.store,
            &repo.source.name,
            sha,
            &at.name,
            &first_error(at),
            &url,
        ) {
            tracing::warn!("{e}");
        }
    }
    intake.outbox.notify();
}

/// `; not started: a: why, b: why` for pipelines that matched but could not start.
pub(super) fn refused_text(refused: &[String]) -> String {
    if refused.is_empty() {
        String::new()
    } else {
        format!("; not started: {}", refused.join("; "))
    }
}

/// Why `run_at` did not queue a run.
pub(super) enum RunAtError {
    /// A parameter value does not fit (comment commands reply with it).
    Parameter(String),
    Other(String),
}

impl From<String> for RunAtError {
    fn from(e: String) -> RunAtError {
        RunAtError::Other(e)
    }
}

impl From<RunAtError> for String {
    fn from(e: RunAtError) -> String {
        match e {
            RunAtError::Parameter(m) | RunAtError::Other(m) => m,
        }
    }
}

/// A run to queue for a delivery.
pub(super) struct RunAt<'a> {
    pub at: &'a AtCommit,
    pub pipeline: &'a crate::spec::model::Pipeline,
    /// The commit the steps check out.
    pub commit: &'a str,
    pub reference: String,
    pub trigger: Trigger,
    pub pr: Option<u64>,
    pub params: BTreeMap<String, String>,
}

/// Queues the run of `r.at` for `delivery`, once: a run this delivery queued before (an earlier
/// attempt, or a process that crashed before it finished the delivery) is returned instead.
pub(super) fn run_at(
    intake: &Intake,
    repo: &WatchedRepo,
    delivery: &Delivery,
    r: RunAt<'_>,
) -> Result<RunRecord, RunAtError> {
    let key = delivery.run_key(&r.at.path);
    if let Some(id) = intake.store.done_for(&key).map_err(|e| e.to_string())?
        && let Some(run) = intake.store.get_run(&id).map_err(|e| e.to_string())?
    {
        return Ok(run);
    }
    let version = version_for(&intake.store, &repo.source.name, r.at, r.commit)?;
    let submitted = intake.queue.submit(Submit {
        source: repo.source.name.clone(),
        pipeline: r.pipeline.clone(),
        version,
        params: r.params,
        trigger: r.trigger,
        git: Some(GitInfo {
            sha: r.commit.to_string(),
            reference: r.reference,
            repo: repo.forge_id.clone(),
        }),
        pr: r.pr,
        idempotency_key: Some(key),
        retry_of: None,
    });
    match submitted {
        Ok(run) => Ok(run),
        Err(crate::run::StartError::Parameter(m)) => Err(RunAtError::Parameter(m)),
        Err(e) => Err(RunAtError::Other(e.to_string())),
    }
}

/// The PR's record, reset when its head moved (the comment shows the runs of the head only).
pub(super) fn pr_record(
    store: &Store,
    source: &str,
    number: u64,
    head: &str,
    head_branch: Option<&str>,
) -> Result<PrRecord, String> {
    let mut record = store
        .get_pr(source, number)
        .map_err(|e| e.to_string())?
        // A pull request first heard of through a comment is of unknown origin: it counts as a
        // fork until a pull-request event says otherwise, so it never defines its own pipelines.
        .unwrap_or_else(|| PrRecord {
            source: source.to_string(),
            number,
            from_fork: true,
            ..PrRecord::default()
        });
    if record.head_sha != head {
        record.head_sha = head.to_string();
        record.runs.clear();
        record.invalid.clear();
        record.head_seen_at = None;
    }
    if let Some(b) = head_branch {
        record.head_branch = Some(b.to_string());
    }
    Ok(record)
}

/// Stores the PR record and queues an update of its comment (both are the same however often
/// they are written, so a delivery processed again writes them again).
pub(super) fn save_pr(intake: &Intake, record: &PrRecord) -> Result<(), String> {
    intake.store.put_pr(record).map_err(|e| e.to_string())?;
    if intake.outbox.reports(&record.source) {
        crate::report::queue_comment(&intake.store, &record.source, record.number)
            .map_err(|e| e.to_string())?;
        intake.outbox.notify();
    }
    Ok(())
}

/// Queues the delivery's one reply on a pull request, unless an earlier attempt queued it.
pub(super) fn reply(
    intake: &Intake,
    delivery: &Delivery,
    source: &str,
    pr: u64,
    body: String,
) -> Result<(), String> {
    if !intake.outbox.reports(source) {
        return Ok(());
    }
    crate::report::reply(&intake.store, source, pr, body, &delivery.reply_key())
        .map_err(|e| e.to_string())?;
    intake.outbox.notify();
    Ok(())
}
