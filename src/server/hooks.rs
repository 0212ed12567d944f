//! Webhook receivers (`POST /hooks/{forge}`) and the delivery processor.
//!
//! Receiving is verify, store, answer: the signature (or GitLab's token) is checked on the raw
//! body against the `webhook_secret` of the forge's configured repositories, before the body is
//! parsed; a genuine delivery is stored under its delivery id (a redelivery finds it there and
//! changes nothing) and made durable (group commit) before the 2xx. Processing happens after,
//! from the store, in arrival order: a crash after the answer loses nothing, and a delivery is
//! marked processed only once its runs are queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::api::ApiError;
use super::{AppState, WatchedRepo};
use crate::config::Provider;
use crate::executor::GitInfo;
use crate::forge::webhook::{self, Headers};
use crate::forge::{Forge, ForgeEvent, PrAction};
use crate::run::queue::Submit;
use crate::source::mirror::Mirror;
use crate::store::{DeliveryRecord, PrRecord, RunRecord, Store, Trigger};
use crate::trigger::events::{self, AtCommit, Command};

/// The forge of a provider, if it has one.
pub fn forge_of(provider: Provider) -> Option<Forge> {
    match provider {
        Provider::Github => Some(Forge::Github),
        Provider::Gitlab => Some(Forge::Gitlab),
        Provider::Bitbucket => Some(Forge::Bitbucket),
        Provider::Git => None,
    }
}

struct HeaderView<'a>(&'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// `POST /hooks/{forge}`.
pub async fn receive(
    State(state): State<AppState>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(forge) = Forge::from_name(&forge) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no webhook receiver for `{forge}`; use github, gitlab or bitbucket"),
        )
        .into_response();
    };
    // Back-pressure: past the configured backlog the forge is asked to come back later, instead
    // of the store (and the processing behind it) growing without bound.
    if state.store.delivery_backlog() >= state.max_backlog {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} webhook deliveries are waiting to be processed (max_backlog); try again later",
                state.max_backlog
            ),
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("30"),
        );
        return response;
    }
    let view = HeaderView(&headers);
    // Which repository's secret signed this body? Checked before anything reads the body.
    let candidates: Vec<&Arc<WatchedRepo>> = state
        .repos
        .values()
        .filter(|r| forge_of(r.provider) == Some(forge))
        .collect();
    // Every repository whose secret signed the body (an organisation webhook shares one secret
    // among many repositories); the payload then says which of them it is about.
    let verified: Vec<&Arc<WatchedRepo>> = candidates
        .iter()
        .copied()
        .filter(|r| {
            r.webhook_secret
                .as_deref()
                .is_some_and(|secret| webhook::verify(forge, &view, &body, secret).is_ok())
        })
        .collect();
    let Some(first) = verified.first().copied() else {
        // Not genuine for any repository: say whether the repository is unknown (404) or the
        // signature is wrong (401). Nothing is stored either way.
        let named = webhook::repo_of(forge, &body);
        let known = named
            .as_deref()
            .and_then(|n| candidates.iter().find(|r| r.forge_id == n));
        return match (named, known) {
            (Some(n), None) => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no [[repos]] entry with provider {forge} and repo = \"{n}\""),
            )
            .into_response(),
            (_, Some(r)) => {
                let why = match &r.webhook_secret {
                    Some(secret) => webhook::verify(forge, &view, &body, secret)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                    None => format!(
                        "[[repos]] `{}` has no webhook_secret; set one and the same value in the \
                         {forge} webhook form",
                        r.source.name
                    ),
                };
                ApiError::new(StatusCode::UNAUTHORIZED, why).into_response()
            }
            (None, None) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "the delivery is not signed with the webhook_secret of any {forge} repository"
                ),
            )
            .into_response(),
        };
    };
    let event = match webhook::parse(forge, &view, &body) {
        Ok(e) => e,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let repo = match event.repo() {
        None => first,
        Some(named) => match verified.iter().find(|r| r.forge_id == named) {
            Some(r) => *r,
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "the delivery is signed with the secret of `{}` but is about `{named}`",
                        first.forge_id
                    ),
                )
                .into_response();
            }
        },
    };
    match &event {
        ForgeEvent::Ping { .. } => {
            return answer(
                StatusCode::ACCEPTED,
                json!({"accepted": false, "reason": "ping: the hook reaches Gantry"}),
            );
        }
        ForgeEvent::Ignored { reason } => {
            return answer(
                StatusCode::ACCEPTED,
                json!({"accepted": false, "reason": reason}),
            );
        }
        _ => {}
    }
    let Some(id) = webhook::delivery_id(forge, &view) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the delivery has no delivery id header ({})",
                webhook::delivery_headers(forge).join(" or ")
            ),
        )
        .into_response();
    };
    let record = DeliveryRecord {
        forge: forge.as_str().to_string(),
        id: id.clone(),
        source: repo.source.name.clone(),
        event: webhook::event_name(forge, &view).unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at: Utc::now(),
        outcome: None,
        processed_at: None,
        attempts: 0,
        retry_at: None,
        last_error: None,
        head: None,
    };
    let new = match state.store.accept_delivery(&record) {
        Ok(new) => new,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if new {
        if let Err(e) = state.store.durable().await {
            return ApiError::from(e).into_response();
        }
        state.deliveries.notify_one();
    }
    answer(
        StatusCode::ACCEPTED,
        json!({"accepted": true, "duplicate": !new, "delivery": id, "source": repo.source.name}),
    )
}

/// Failed attempts before a delivery is given up (with the backoff below, about an hour).
const DELIVERY_ATTEMPTS: u32 = 12;

/// Processes stored deliveries in arrival order until `stop`. A failed attempt (the repository
/// could not be fetched, the forge did not answer) keeps the delivery queued and tries again with
/// backoff; after `DELIVERY_ATTEMPTS` it is marked failed, and a redelivery by the forge gets a
/// fresh start.
/// Stored delivery records loaded for processing at a time (bytes of JSON, bodies included).
const PENDING_BATCH_BYTES: usize = 4 << 20;

pub async fn process_loop(state: AppState, stop: CancellationToken) {
    loop {
        let pending = match state.store.pending_deliveries(4096, PENDING_BATCH_BYTES) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("gantry: warning: deliveries: {e}");
                Vec::new()
            }
        };
        let now = Utc::now();
        let mut worked = false;
        let mut next_retry: Option<chrono::DateTime<Utc>> = None;
        for (seq, record) in &pending {
            if stop.is_cancelled() {
                return;
            }
            if let Some(at) = record.retry_at
                && at > now
            {
                next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                continue;
            }
            worked = true;
            let acts_before = state.store.acts();
            let result = match process(&state, record).await {
                Ok(Processed { outcome, acted }) => {
                    state.store.finish_delivery(*seq, record, outcome, acted)
                }
                Err(error) => {
                    let attempts = record.attempts + 1;
                    eprintln!(
                        "gantry: warning: {} delivery {} (attempt {attempts}): {error}",
                        record.forge, record.id
                    );
                    // Once a run or a write was queued, a retry could queue it twice: stop here.
                    let acted = state.store.acts() != acts_before;
                    if attempts >= DELIVERY_ATTEMPTS || acted {
                        state
                            .store
                            .finish_delivery(*seq, record, format!("failed: {error}"), true)
                    } else {
                        // Re-read: processing may have pinned a PR head on it.
                        let mut again = state
                            .store
                            .get_delivery(&record.forge, &record.id)
                            .ok()
                            .flatten()
                            .unwrap_or_else(|| record.clone());
                        again.attempts = attempts;
                        again.last_error = Some(error);
                        let wait = 2i64.pow(attempts.min(10)).min(600);
                        again.retry_at = Some(Utc::now() + chrono::Duration::seconds(wait));
                        state.store.retry_delivery(&again)
                    }
                }
            };
            if let Err(e) = result {
                eprintln!("gantry: warning: delivery {}: {e}", record.id);
            }
        }
        if worked {
            continue;
        }
        let wait = next_retry
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(5))
            .min(std::time::Duration::from_secs(5));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.deliveries.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a worker stopped: {e}"))?
}

/// What processing one delivery did.
struct Processed {
    /// In words, kept on the delivery.
    outcome: String,
    /// Whether it queued runs or writes (then its end is flushed, so a restart does not process
    /// it again).
    acted: bool,
}

/// Processes one delivery.
async fn process(state: &AppState, record: &DeliveryRecord) -> Result<Processed, String> {
    let before = state.store.acts();
    let outcome = dispatch(state, record).await?;
    Ok(Processed {
        acted: state.store.acts() != before,
        outcome,
    })
}

async fn dispatch(state: &AppState, record: &DeliveryRecord) -> Result<String, String> {
    let forge = Forge::from_name(&record.forge).ok_or("unknown forge")?;
    let repo = state
        .repos
        .get(&record.source)
        .cloned()
        .ok_or_else(|| format!("source `{}` is no longer configured", record.source))?;
    let headers = vec![(
        webhook::event_header(forge).to_string(),
        record.event.clone(),
    )];
    let event =
        webhook::parse(forge, &headers, record.body.as_bytes()).map_err(|e| e.to_string())?;
    match event {
        ForgeEvent::Push {
            branch,
            before,
            after,
            pusher,
            ..
        } => on_push(state, &repo, &branch, before, &after, &pusher).await,
        ForgeEvent::PullRequest {
            number,
            action,
            head_sha,
            head_branch,
            base_branch,
            from_fork,
            author,
            ..
        } => {
            let pr = PrEvent {
                number,
                action,
                head_sha,
                head_branch,
                base_branch,
                from_fork,
                author,
            };
            on_pull_request(state, forge, &repo, pr).await
        }
        ForgeEvent::Comment {
            pr_number,
            body,
            author,
            head_sha,
            ..
        } => {
            let comment = CommentEvent {
                pr: pr_number,
                body,
                author,
                head_sha: head_sha.or_else(|| record.head.clone()),
            };
            on_comment(state, forge, &repo, comment, record).await
        }
        ForgeEvent::Ping { .. } => Ok("pong".into()),
        ForgeEvent::Ignored { reason } => Ok(format!("ignored: {reason}")),
    }
}

/// Fetches the mirror (cloning it the first time) so the event's commits are there, unless
/// `wanted` is already in it.
async fn sync(repo: &Arc<WatchedRepo>, wanted: Option<&str>) -> Result<Mirror, String> {
    let r = repo.clone();
    let wanted = wanted.map(str::to_string);
    let _guard = repo.sync_lock.lock().await;
    blocking(move || {
        let existed = r.source.mirror_dir.join("HEAD").exists();
        let mirror = Mirror::open_or_clone(
            &r.source.mirror_dir,
            &r.source.url,
            &r.source.branch,
            r.source.credentials.clone(),
        )
        .map_err(|e| e.to_string())?;
        let have = wanted.is_some_and(|w| mirror.resolve(&w).is_ok());
        if existed && !have {
            let interrupt = AtomicBool::new(false);
            mirror.fetch(&interrupt).map_err(|e| e.to_string())?;
        }
        Ok(mirror)
    })
    .await
}

/// Reconciles the watched branch with the mirror just fetched (new versions, errors,
/// retirements), in the background: the event's runs do not wait for it.
fn reconcile_later(state: &AppState, repo: &Arc<WatchedRepo>, mirror: &Mirror) {
    let (store, r, m) = (state.store.clone(), repo.clone(), mirror.clone());
    tokio::task::spawn_blocking(move || {
        let _guard = r.sync_lock.blocking_lock();
        let head = match m.head(&r.source.branch) {
            Ok(Some(head)) => head,
            _ => return,
        };
        if let Err(e) = crate::catalog::reconcile(&store, &r.source, &m, &head) {
            eprintln!("gantry: warning: reconcile of {}: {e}", r.source.name);
        }
    });
}

/// The full sha of `commit` in the mirror, fetching `pr_ref` (a pull request's head ref) when
/// no branch holds it (a fork's commit).
async fn resolve(mirror: &Mirror, commit: &str, pr_ref: Option<String>) -> Result<String, String> {
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

/// The refspec that fetches a pull request's head into the mirror, where the forge has one.
fn pr_refspec(forge: Forge, number: u64) -> Option<String> {
    match forge {
        Forge::Github => Some(format!("+refs/pull/{number}/head:refs/gantry/pr/{number}")),
        Forge::Gitlab => Some(format!(
            "+refs/merge-requests/{number}/head:refs/gantry/pr/{number}"
        )),
        Forge::Bitbucket => None,
    }
}

async fn pipelines_at(
    repo: &Arc<WatchedRepo>,
    mirror: &Mirror,
    commit: &str,
) -> Result<Vec<AtCommit>, String> {
    let (m, c, globs) = (
        mirror.clone(),
        commit.to_string(),
        repo.source.paths.clone(),
    );
    blocking(move || events::pipelines_at(&m, &c, &globs).map_err(|e| e.to_string())).await
}

async fn changed_paths(mirror: &Mirror, old: Option<String>, new: &str) -> Vec<String> {
    let (m, n) = (mirror.clone(), new.to_string());
    blocking(move || {
        m.changed_paths(old.as_deref(), &n)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_default()
}

/// The version a run of `at` uses: the pipeline's current one when the text and the file are the
/// same, else the text recorded as a new version pinned to `commit` (a branch or PR head that
/// changed it, or a file of another path naming the same pipeline: the version's path is what
/// decides whether the run gets the pipeline's own scope, see `run::trust`).
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

fn first_error(at: &AtCommit) -> String {
    at.errors
        .first()
        .map(ToString::to_string)
        .unwrap_or_else(|| format!("{}: invalid", at.path))
}

/// A failing commit status for every invalid pipeline file at `sha`.
fn report_invalid(state: &AppState, repo: &WatchedRepo, sha: &str, pipelines: &[AtCommit]) {
    if !state.outbox.reports(&repo.source.name) {
        return;
    }
    for at in pipelines.iter().filter(|p| p.pipeline.is_none()) {
        let url = format!(
            "{}/api/v1/pipelines/{}/{}",
            state.public_url.trim_end_matches('/'),
            repo.source.name,
            at.name
        );
        if let Err(e) = crate::report::invalid_pipeline(
            &state.store,
            &repo.source.name,
            sha,
            &at.name,
            &first_error(at),
            &url,
        ) {
            eprintln!("gantry: warning: {e}");
        }
    }
    state.outbox.notify();
}

/// `; not started: a: why, b: why` for pipelines that matched but could not start.
fn refused_text(refused: &[String]) -> String {
    if refused.is_empty() {
        String::new()
    } else {
        format!("; not started: {}", refused.join("; "))
    }
}

/// Why `run_at` did not queue a run.
enum RunAtError {
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

/// Queues a run of the pipeline `at` as read at `commit` of `repo`.
#[allow(clippy::too_many_arguments)]
fn run_at(
    state: &AppState,
    repo: &WatchedRepo,
    at: &AtCommit,
    pipeline: &crate::spec::model::Pipeline,
    commit: &str,
    reference: &str,
    trigger: Trigger,
    pr: Option<u64>,
    params: BTreeMap<String, String>,
) -> Result<RunRecord, RunAtError> {
    let version = version_for(&state.store, &repo.source.name, at, commit)?;
    let submitted = state.queue.submit(Submit {
        source: repo.source.name.clone(),
        pipeline: pipeline.clone(),
        version,
        // Runs started by events take the parameters' defaults (a required one refuses).
        params,
        trigger,
        git: Some(GitInfo {
            sha: commit.to_string(),
            reference: reference.to_string(),
            repo: repo.forge_id.clone(),
        }),
        pr,
    });
    match submitted {
        Ok(run) => Ok(run),
        Err(crate::run::StartError::Parameter(m)) => Err(RunAtError::Parameter(m)),
        Err(e) => Err(RunAtError::Other(e.to_string())),
    }
}

async fn on_push(
    state: &AppState,
    repo: &Arc<WatchedRepo>,
    branch: &str,
    before: Option<String>,
    after: &str,
    pusher: &str,
) -> Result<String, String> {
    let mirror = sync(repo, Some(after)).await?;
    let after = resolve(&mirror, after, None).await?;
    let changed = changed_paths(&mirror, before, &after).await;
    let pipelines = pipelines_at(repo, &mirror, &after).await?;
    report_invalid(state, repo, &after, &pipelines);
    let mut started = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for at in &pipelines {
        let Some(p) = &at.pipeline else {
            continue;
        };
        if !events::push_matches(p, branch, &repo.source.branch, &changed) {
            continue;
        }
        let run = run_at(
            state,
            repo,
            at,
            p,
            &after,
            &format!("refs/heads/{branch}"),
            Trigger {
                kind: "push".into(),
                detail: Some(format!("push to {branch} by {pusher}")),
            },
            None,
            BTreeMap::new(),
        );
        match run {
            Ok(run) => started.push(format!("{} ({})", at.name, run.id)),
            // One pipeline that cannot start (a required parameter without a default) does not
            // keep the others from running, and a retry must not queue them twice.
            Err(e) => refused.push(format!("{}: {}", at.name, String::from(e))),
        }
    }
    let refused = refused_text(&refused);
    let outcome = if started.is_empty() {
        format!("push to {branch}: no pipeline matched")
    } else {
        format!("push to {branch}: started {}", started.join(", "))
    } + &refused;
    if branch == repo.source.branch {
        reconcile_later(state, repo, &mirror);
    }
    Ok(outcome)
}

struct PrEvent {
    number: u64,
    action: PrAction,
    head_sha: String,
    head_branch: String,
    base_branch: String,
    from_fork: bool,
    author: String,
}

/// The PR's record, reset when its head moved (the comment shows the runs of the head only).
fn pr_record(
    store: &Store,
    source: &str,
    number: u64,
    head: &str,
    head_branch: Option<&str>,
) -> Result<PrRecord, String> {
    let mut record = store
        .get_pr(source, number)
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| PrRecord {
            source: source.to_string(),
            number,
            ..PrRecord::default()
        });
    if record.head_sha != head {
        record.head_sha = head.to_string();
        record.runs.clear();
        record.invalid.clear();
    }
    if let Some(b) = head_branch {
        record.head_branch = Some(b.to_string());
    }
    Ok(record)
}

fn save_pr(state: &AppState, record: &PrRecord) -> Result<(), String> {
    state.store.put_pr(record).map_err(|e| e.to_string())?;
    if state.outbox.reports(&record.source) {
        crate::report::queue_comment(&state.store, &record.source, record.number)
            .map_err(|e| e.to_string())?;
        state.outbox.notify();
    }
    Ok(())
}

async fn on_pull_request(
    state: &AppState,
    forge: Forge,
    repo: &Arc<WatchedRepo>,
    pr: PrEvent,
) -> Result<String, String> {
    let mirror = sync(repo, Some(&pr.head_sha)).await?;
    let head = resolve(&mirror, &pr.head_sha, pr_refspec(forge, pr.number)).await?;
    let pipelines = pipelines_at(repo, &mirror, &head).await?;
    let mut record = pr_record(
        &state.store,
        &repo.source.name,
        pr.number,
        &head,
        Some(&pr.head_branch),
    )?;
    record.from_fork = pr.from_fork;
    record.invalid = pipelines
        .iter()
        .filter(|p| p.pipeline.is_none())
        .map(|p| (p.path.clone(), p.errors.clone()))
        .collect();
    if pr.from_fork {
        save_pr(state, &record)?;
        return Ok(format!(
            "pull request #{} comes from a fork: not run automatically",
            pr.number
        ));
    }
    report_invalid(state, repo, &head, &pipelines);
    let base = mirror.head(&pr.base_branch).ok().flatten();
    let changed = changed_paths(&mirror, base, &head).await;
    let mut started = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for at in &pipelines {
        let Some(p) = &at.pipeline else {
            continue;
        };
        if !events::pr_matches(p, pr.action, &pr.base_branch, &changed) {
            continue;
        }
        let run = run_at(
            state,
            repo,
            at,
            p,
            &head,
            &format!("refs/heads/{}", pr.head_branch),
            Trigger {
                kind: "pullRequest".into(),
                detail: Some(format!(
                    "pull request #{} {} by {}",
                    pr.number,
                    pr.action.as_str(),
                    pr.author
                )),
            },
            Some(pr.number),
            BTreeMap::new(),
        );
        match run {
            Ok(run) => {
                record.runs.insert(at.name.clone(), run.id.clone());
                started.push(format!("{} ({})", at.name, run.id));
            }
            Err(e) => refused.push(format!("{}: {}", at.name, String::from(e))),
        }
    }
    let refused = refused_text(&refused);
    save_pr(state, &record)?;
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

fn reply(state: &AppState, source: &str, pr: u64, body: String) -> Result<(), String> {
    if !state.outbox.reports(source) {
        return Ok(());
    }
    crate::report::reply(&state.store, source, pr, body).map_err(|e| e.to_string())?;
    state.outbox.notify();
    Ok(())
}

struct CommentEvent {
    pr: u64,
    body: String,
    author: String,
    head_sha: Option<String>,
}

async fn on_comment(
    state: &AppState,
    forge: Forge,
    repo: &Arc<WatchedRepo>,
    comment: CommentEvent,
    record: &DeliveryRecord,
) -> Result<String, String> {
    let CommentEvent {
        pr,
        body,
        author,
        head_sha,
    } = comment;
    let (body, author) = (body.as_str(), author.as_str());
    let source = repo.source.name.clone();
    if crate::report::comment::is_gantry_comment(body) {
        return Ok("Gantry's own comment".into());
    }
    let command = match events::parse_command(body) {
        None => return Ok("comment without a /gantry command".into()),
        Some(Err(message)) => {
            reply(state, &source, pr, format!("@{author} {message}"))?;
            return Ok(format!("malformed command: {message}"));
        }
        Some(Ok(c)) => c,
    };
    let client = state
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
            state
                .store
                .retry_delivery(&pinned)
                .map_err(|e| e.to_string())?;
            h
        }
    };
    let mirror = sync(repo, Some(&head)).await?;
    let head = resolve(&mirror, &head, pr_refspec(forge, pr)).await?;
    let pipelines = pipelines_at(repo, &mirror, &head).await?;
    let (name, params) = match command {
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
            reply(state, &source, pr, events::help_text(&commentable))?;
            return Ok("help".into());
        }
        Command::Run { pipeline, params } => (pipeline, params),
    };
    let allowed = client.can_write(author).await.map_err(|e| e.to_string())?;
    if !allowed {
        reply(
            state,
            &source,
            pr,
            format!(
                "@{author} only users with write access to {} can run pipelines; ask a \
                 maintainer to comment `/gantry run {name}`.",
                repo.forge_id
            ),
        )?;
        return Ok(format!("refused: {author} has no write access"));
    }
    let Some(at) = pipelines.iter().find(|at| at.name == name) else {
        let known: Vec<&str> = pipelines.iter().map(|a| a.name.as_str()).collect();
        reply(
            state,
            &source,
            pr,
            format!(
                "@{author} there is no pipeline `{name}` at {}; pipelines here: {}",
                &head[..head.len().min(7)],
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )?;
        return Ok(format!("no pipeline `{name}`"));
    };
    let Some(p) = &at.pipeline else {
        reply(
            state,
            &source,
            pr,
            format!(
                "@{author} `{name}` fails validation at this head: {}",
                first_error(at)
            ),
        )?;
        return Ok(format!("`{name}` is invalid"));
    };
    if !p.on.comment {
        reply(
            state,
            &source,
            pr,
            format!(
                "@{author} `{name}` does not take comment commands (add `on: {{comment: true}}` \
                 to its file)"
            ),
        )?;
        return Ok(format!("`{name}` does not take comment commands"));
    }
    let given: BTreeMap<String, String> = params.into_iter().collect();
    // A fork's branch names are the fork's (its `main` is not ours): its runs carry the PR's
    // own ref.
    let known_branch = state
        .store
        .get_pr(&source, pr)
        .ok()
        .flatten()
        .filter(|r| !r.from_fork)
        .and_then(|r| r.head_branch);
    let reference = match (known_branch, forge) {
        (Some(branch), _) => format!("refs/heads/{branch}"),
        (None, Forge::Github) => format!("refs/pull/{pr}/head"),
        (None, Forge::Gitlab) => format!("refs/merge-requests/{pr}/head"),
        (None, Forge::Bitbucket) => String::new(),
    };
    let submitted = run_at(
        state,
        repo,
        at,
        p,
        &head,
        &reference,
        Trigger {
            kind: "comment".into(),
            detail: Some(format!("/gantry run by {author} on #{pr}")),
        },
        Some(pr),
        given,
    );
    let run = match submitted {
        Ok(r) => r,
        Err(RunAtError::Parameter(message)) => {
            reply(
                state,
                &source,
                pr,
                format!("@{author} not started: {message}"),
            )?;
            return Ok(format!("parameter error: {message}"));
        }
        Err(RunAtError::Other(e)) => return Err(e),
    };
    let mut record = pr_record(&state.store, &source, pr, &head, None)?;
    record.runs.insert(name.clone(), run.id.clone());
    save_pr(state, &record)?;
    Ok(format!("comment command: started {name} ({})", run.id))
}
