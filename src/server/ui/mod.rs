//! The web UI: server-rendered pages (askama templates under `templates/`, compiled into the
//! binary), one stylesheet and one small script (`assets/`, embedded, served under a content
//! hash). Every page reads a typed view (`crate::views`); the pages work without JavaScript,
//! which only adds live updates of a running run and the run form's checks in the browser.
//!
//! Who may see a page: a browser logs in with an API token (`session.rs`) and holds a session
//! cookie; served without tokens (`--insecure-no-auth`, loopback only) the pages need no login,
//! and every request is checked for its `Host` and `Origin` instead (DNS rebinding). A form post
//! must come from Gantry's own pages: its `Origin` (and `Sec-Fetch-Site`, when the browser sends
//! it) must say so.

mod admin;
pub mod ansi;
mod session;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::LazyLock;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::api::{self, ApiError, Permission};
use super::extract::Path;
use crate::executor::Stream;
use crate::store::{LogCursor, LogLine, StoreError};
use crate::views;

pub use session::{SESSION_COOKIE, Viewer, session_of};

/// The embedded stylesheet and script, with their names (a hash of the content, so that a
/// browser may keep them for good).
struct Assets {
    css: String,
    js: String,
}

const CSS: &str = include_str!("../../../assets/gantry.css");
const JS: &str = include_str!("../../../assets/gantry.js");

fn content_name(stem: &str, ext: &str, body: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{stem}.{hash}.{ext}")
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    css: content_name("gantry", "css", CSS),
    js: content_name("gantry", "js", JS),
});

/// What every page shows around its content.
pub struct Chrome {
    pub css: &'static str,
    pub js: &'static str,
    /// Who is logged in (none when served without tokens).
    pub who: Option<String>,
    pub can_logout: bool,
    /// Whether the viewer may start, cancel and rerun runs.
    pub can_run: bool,
    /// Whether the viewer may change variables, secrets and connections everywhere.
    pub can_edit: bool,
    /// Whether the viewer is an admin (the audit log, syncing sources).
    pub is_admin: bool,
}

impl Chrome {
    fn of(viewer: &Viewer) -> Chrome {
        Chrome {
            css: &ASSETS.css,
            js: &ASSETS.js,
            who: viewer.who(),
            can_logout: viewer.session,
            can_run: false,
            can_edit: viewer.caller.refusal(Permission::Edit, None).is_none(),
            is_admin: viewer.caller.refusal(Permission::Admin, None).is_none(),
        }
    }

    /// The chrome of a page about pipeline `source/name`, where runs may be started or cancelled
    /// (and a local pipeline rolled back) if the viewer's role allows.
    fn on(viewer: &Viewer, source: &str, name: &str) -> Chrome {
        Chrome {
            can_run: viewer.refusal(Permission::Run, source, name).is_none(),
            can_edit: viewer.refusal(Permission::Edit, source, name).is_none(),
            ..Chrome::of(viewer)
        }
    }
}

/// A 403 page when the viewer may not do `permission` on `source/name`.
fn refused(viewer: &Viewer, permission: Permission, source: &str, name: &str) -> Option<Response> {
    let why = viewer.refusal(permission, source, name)?;
    Some(error_page(
        viewer,
        ApiError::new(StatusCode::FORBIDDEN, why),
    ))
}

/// A rendered page, or an HTML error page when the template fails.
fn page<T: Template>(status: StatusCode, template: &T) -> Response {
    match template.render() {
        Ok(html) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("the page could not be rendered: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    title: String,
    message: String,
}

/// An error as a page: the API's status and sentence.
fn error_page(viewer: &Viewer, e: ApiError) -> Response {
    let title = match e.status {
        StatusCode::NOT_FOUND => "Not found".to_string(),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "Bad request".into(),
        StatusCode::CONFLICT => "Not possible now".into(),
        s => s.canonical_reason().unwrap_or("Error").to_string(),
    };
    page(
        e.status,
        &ErrorPage {
            chrome: Chrome::of(viewer),
            title,
            message: e.message,
        },
    )
}

fn store_error(viewer: &Viewer, e: StoreError) -> Response {
    error_page(viewer, ApiError::from(e))
}

/// The routes of the pages; `router` puts them beside the API's.
pub fn routes(state: &AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(dashboard))
        .route("/pipelines/{source}/{name}", get(pipeline))
        .route(
            "/pipelines/{source}/{name}/run",
            get(run_form).post(start_run),
        )
        .route("/pipelines/{source}/{name}/rollback", post(rollback))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/steps/{step}/log", get(step_log))
        .route("/runs/{id}/events", get(events))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/rerun", post(rerun))
        .route("/runs/{id}/retry", post(retry))
        .route("/logout", post(session::logout))
        .route("/audit", get(audit))
        .route("/marketplace", get(admin::marketplace))
        .route("/marketplace/{resource}", get(admin::resource))
        .route("/marketplace/{resource}/connect", post(admin::connect))
        .route("/settings", get(admin::settings))
        .route("/settings/{kind}", post(admin::set))
        .route("/settings/{kind}/delete", post(admin::remove))
        .route("/sources", get(admin::sources))
        .route("/sources/{source}/sync", post(admin::sync))
        // The audit record inside the login check, so that it sees who is logged in.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            super::audit::record,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::require,
        ));
    // Outermost: the origin check, for the login form and the pages alike.
    Router::new()
        .route("/login", get(session::login_form).post(session::login))
        .route("/assets/{file}", get(asset))
        .merge(pages)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::same_origin,
        ))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = if file == ASSETS.css {
        (CSS, "text/css; charset=utf-8")
    } else if file == ASSETS.js {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

// ---- dashboard ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    view: views::Dashboard,
    filter: views::DashboardFilter,
    statuses: &'static [&'static str],
}

#[derive(Deserialize, Default)]
struct DashboardQuery {
    #[serde(default)]
    source: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    text: String,
}

const STATUSES: &[&str] = &[
    "succeeded",
    "failed",
    "running",
    "queued",
    "cancelled",
    "interrupted",
    "skipped",
    "never",
    "invalid",
];

async fn dashboard(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<DashboardQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let filter = views::DashboardFilter {
        source: q.source,
        status: q.status,
        label: q.label,
        text: q.text,
    };
    let store = state.store.clone();
    let wanted = filter.clone();
    match api::blocking(move || views::dashboard(&store, &wanted)).await {
        Ok(Ok(view)) => page(
            StatusCode::OK,
            &DashboardPage {
                chrome: Chrome::of(&viewer),
                view,
                filter,
                statuses: STATUSES,
            },
        ),
        Ok(Err(e)) => store_error(&viewer, e),
        Err(e) => error_page(&viewer, e),
    }
}

// ---- pipeline ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "pipeline.html")]
struct PipelinePage {
    chrome: Chrome,
    view: views::PipelinePage,
    current_version: Option<u32>,
    /// The forge's page of a commit, without the sha.
    commit_base: Option<String>,
}

#[derive(Deserialize, Default)]
struct PageQuery {
    page: Option<usize>,
}

/// The web page of a commit of `source`, without the sha, for a repository on a forge reached
/// over https.
fn commit_base(state: &AppState, source: &str) -> Option<String> {
    use crate::forge::Forge;
    let repo = state.repos.get(source)?;
    let forge = repo.forge?;
    let url = repo
        .source
        .url
        .trim_end_matches('/')
        .trim_end_matches(".git");
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('@') {
        return None;
    }
    Some(match forge {
        Forge::Github => format!("{url}/commit/"),
        Forge::Gitlab => format!("{url}/-/commit/"),
        Forge::Bitbucket => format!("{url}/commits/"),
    })
}

async fn pipeline(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((source, name)): Path<(String, String)>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let page_no = query
        .ok()
        .and_then(|Query(q)| q.page)
        .unwrap_or(0)
        .min(10_000);
    let store = state.store.clone();
    let (s, n) = (source.clone(), name.clone());
    let lookup = state.clone();
    let read = move || {
        let invalid = invalid_text(&lookup, &s, &n);
        views::pipeline(&store, &s, &n, page_no, invalid.as_deref())
    };
    let view = match api::blocking(read).await {
        Ok(Ok(Some(view))) => view,
        Ok(Ok(None)) => {
            return error_page(
                &viewer,
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no pipeline `{source}/{name}`"),
                ),
            );
        }
        Ok(Err(e)) => return store_error(&viewer, e),
        Err(e) => return error_page(&viewer, e),
    };
    let current_version = view.versions.iter().find(|v| v.current).map(|v| v.version);
    page(
        StatusCode::OK,
        &PipelinePage {
            chrome: Chrome::on(&viewer, &source, &name),
            commit_base: commit_base(&state, &source),
            view,
            current_version,
        },
    )
}

#[derive(Deserialize)]
struct RollbackForm {
    to: u32,
}

async fn rollback(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((source, name)): Path<(String, String)>,
    Form(form): Form<RollbackForm>,
) -> Response {
    if let Some(no) = refused(&viewer, Permission::Edit, &source, &name) {
        return no;
    }
    if source != crate::catalog::LOCAL_SOURCE {
        return error_page(
            &viewer,
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("pipelines of `{source}` come from its repository; roll back there"),
            ),
        );
    }
    let store = state.store.clone();
    let n = name.clone();
    match api::blocking(move || crate::catalog::rollback_local(&store, &n, form.to)).await {
        Ok(Ok(_)) => Redirect::to(&format!("/pipelines/local/{name}")).into_response(),
        Ok(Err(e)) => error_page(&viewer, ApiError::from(e)),
        Err(e) => error_page(&viewer, e),
    }
}

/// The file of repository pipeline `source/name` as the sync last read it, when it does not
/// validate (its text is no version, so only the mirror has it).
fn invalid_text(state: &AppState, source: &str, name: &str) -> Option<String> {
    let record = state.store.get_pipeline(source, name).ok()??;
    if record.valid {
        return None;
    }
    let repo = state.repos.get(source)?;
    let commit = record.commit.as_deref()?;
    let mirror = crate::source::mirror::Mirror::open_or_clone(
        &repo.source.mirror_dir,
        &repo.source.url,
        &repo.source.branch,
        None,
    )
    .ok()?;
    let bytes = mirror.read_file(commit, &record.path).ok()??;
    String::from_utf8(bytes).ok()
}

// ---- run form ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "run_form.html")]
struct RunFormPage {
    chrome: Chrome,
    source: String,
    name: String,
    fields: Vec<views::form::Field>,
    /// Variables and secrets the pipeline declares that are not set anywhere it would read them.
    missing: Vec<String>,
    error: Option<String>,
}

impl views::form::Field {
    fn is_select(&self) -> bool {
        self.control == views::form::Control::Select
    }
    fn is_checkbox(&self) -> bool {
        self.control == views::form::Control::Checkbox
    }
    fn is_number(&self) -> bool {
        self.control == views::form::Control::Number
    }
}

/// The declared variables and secrets with no value for `source/name`, as `variable X` and
/// `secret Y`.
fn missing_values(
    state: &AppState,
    source: &str,
    name: &str,
    pipeline: &crate::spec::model::Pipeline,
) -> Result<Vec<String>, StoreError> {
    let scope = crate::run::config_scope(source, name);
    let vars = state.store.list_vars()?;
    let secrets = state.store.list_secrets()?;
    let set = |list: &[crate::store::ConfigEntry], wanted: &str| {
        list.iter().any(|e| {
            e.name == wanted
                && e.pipeline
                    .as_deref()
                    .is_none_or(|s| s == scope || s == name)
        })
    };
    let mut out = Vec::new();
    for v in &pipeline.variables {
        if !set(&vars, v) {
            out.push(format!("variable {v}"));
        }
    }
    for s in &pipeline.secrets {
        if !set(&secrets, s) {
            out.push(format!("secret {s}"));
        }
    }
    Ok(out)
}

fn form_page(
    state: &AppState,
    viewer: &Viewer,
    source: String,
    name: String,
    sent: &BTreeMap<String, String>,
    errors: &BTreeMap<String, String>,
    error: Option<String>,
) -> Response {
    let pipeline = match api::runnable_pipeline(state, &source, &name) {
        Ok(p) => p,
        Err(e) => return error_page(viewer, e),
    };
    if !pipeline.on.manual {
        return error_page(
            viewer,
            ApiError::new(
                StatusCode::CONFLICT,
                format!("`{source}/{name}` does not allow manual runs (on.manual: false)"),
            ),
        );
    }
    let missing = match missing_values(state, &source, &name, &pipeline) {
        Ok(m) => m,
        Err(e) => return store_error(viewer, e),
    };
    let status = if errors.is_empty() && error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    page(
        status,
        &RunFormPage {
            chrome: Chrome::of(viewer),
            fields: views::form::fields(&pipeline, sent, errors),
            source,
            name,
            missing,
            error,
        },
    )
}

async fn run_form(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((source, name)): Path<(String, String)>,
) -> Response {
    if let Some(no) = refused(&viewer, Permission::Run, &source, &name) {
        return no;
    }
    form_page(
        &state,
        &viewer,
        source,
        name,
        &BTreeMap::new(),
        &BTreeMap::new(),
        None,
    )
}

async fn start_run(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((source, name)): Path<(String, String)>,
    Form(sent): Form<BTreeMap<String, String>>,
) -> Response {
    if let Some(no) = refused(&viewer, Permission::Run, &source, &name) {
        return no;
    }
    let pipeline = match api::runnable_pipeline(&state, &source, &name) {
        Ok(p) => p,
        Err(e) => return error_page(&viewer, e),
    };
    let values = match views::form::check(&pipeline, &sent) {
        Ok(values) => values,
        Err(errors) => {
            return form_page(&state, &viewer, source, name, &sent, &errors, None);
        }
    };
    match api::submit_manual(
        &state,
        source.clone(),
        name.clone(),
        values,
        Some(viewer.words()),
    )
    .await
    {
        Ok(run) => Redirect::to(&format!("/runs/{}", run.id)).into_response(),
        Err(e) => {
            let message = e.message;
            form_page(
                &state,
                &viewer,
                source,
                name,
                &sent,
                &BTreeMap::new(),
                Some(message),
            )
        }
    }
}

// ---- run ---------------------------------------------------------------------------------

fn stream_class(line: &LogLine) -> &'static str {
    match line.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::System => "system",
    }
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    chrome: Chrome,
    view: views::RunPage,
}

impl RunPage {
    fn stream(&self, line: &views::ShownLine) -> &'static str {
        stream_class(&line.line)
    }
    fn line_html(&self, line: &views::ShownLine) -> String {
        ansi::to_html(&line.line.text)
    }
}

async fn run(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let store = state.store.clone();
    match api::blocking(move || views::run(&store, &id)).await {
        Ok(Ok(view)) => page(
            StatusCode::OK,
            &RunPage {
                chrome: Chrome::on(&viewer, &view.run.source, &view.run.pipeline),
                view,
            },
        ),
        Ok(Err(e)) => store_error(&viewer, e),
        Err(e) => error_page(&viewer, e),
    }
}

#[derive(Template)]
#[template(path = "step_log.html")]
struct StepLogPage {
    chrome: Chrome,
    view: views::StepLog,
    newer_skip: usize,
}

impl StepLogPage {
    fn stream(&self, line: &views::ShownLine) -> &'static str {
        stream_class(&line.line)
    }
    fn line_html(&self, line: &views::ShownLine) -> String {
        ansi::to_html(&line.line.text)
    }
}

/// A step-log page's place: `skip` lines from the end, or the page of a line's link (`at`, its
/// chunk).
#[derive(Deserialize, Default)]
struct SkipQuery {
    skip: Option<usize>,
    at: Option<u32>,
}

async fn step_log(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((id, step)): Path<(String, String)>,
    query: Result<Query<SkipQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let skip = q.skip.unwrap_or(0);
    let place = match q.at {
        Some(chunk) => views::LogPage::At(chunk),
        None => views::LogPage::FromEnd(skip),
    };
    let store = state.store.clone();
    let wanted = step.clone();
    match api::blocking(move || views::step_log(&store, &id, &wanted, place)).await {
        Ok(Ok(Some(view))) => page(
            StatusCode::OK,
            &StepLogPage {
                chrome: Chrome::of(&viewer),
                newer_skip: skip.saturating_sub(views::LOG_PAGE_LINES),
                view,
            },
        ),
        Ok(Ok(None)) => error_page(
            &viewer,
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("the run has no step `{step}`"),
            ),
        ),
        Ok(Err(e)) => store_error(&viewer, e),
        Err(e) => error_page(&viewer, e),
    }
}

/// A 403 page when the viewer may not start or cancel runs of run `id`'s pipeline.
fn run_refused(state: &AppState, viewer: &Viewer, id: &str) -> Option<Response> {
    match state.store.find_run(id) {
        Ok(run) => refused(viewer, Permission::Run, &run.source, &run.pipeline),
        Err(e) => Some(store_error(viewer, e)),
    }
}

/// What a button on a run's page does.
#[derive(Clone, Copy)]
enum RunAction {
    Cancel,
    Rerun,
    Retry,
}

/// Does `action` to run `id` if the viewer may, then shows the run it leads to.
async fn act(state: AppState, viewer: Viewer, id: String, action: RunAction) -> Response {
    if let Some(no) = run_refused(&state, &viewer, &id) {
        return no;
    }
    let by = Some(viewer.words());
    let done = match action {
        RunAction::Cancel => api::cancel_of(&state, &id).await,
        RunAction::Rerun => api::rerun_of(&state, &id, by).await,
        RunAction::Retry => api::retry_of(&state, &id, by).await,
    };
    match done {
        Ok(run) => Redirect::to(&format!("/runs/{}", run.id)).into_response(),
        Err(e) => error_page(&viewer, e),
    }
}

async fn cancel(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    act(state, viewer, id, RunAction::Cancel).await
}

async fn rerun(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    act(state, viewer, id, RunAction::Rerun).await
}

async fn retry(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    act(state, viewer, id, RunAction::Retry).await
}

#[derive(Deserialize, Default)]
struct EventsQuery {
    after: Option<String>,
}

/// Log bytes (as stored) read at a time for the live stream.
const EVENT_PAGE_BYTES: usize = 256 * 1024;

/// `GET /runs/{id}/events`: the run's progress as server-sent events, from the cursor `after`
/// (what the page showed) or the `Last-Event-ID` a reconnecting browser sends: `log` (a line:
/// step, stream, HTML), `step` (a step's state and duration), `run` (the run's status) and `end`.
async fn events(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let run = match state.store.find_run(&id) {
        Ok(run) => run,
        Err(e) => return store_error(&viewer, e),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.ok().and_then(|Query(q)| q.after));
    let mut cursor = resume.as_deref().and_then(LogCursor::parse);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let mut changes = state.queue.changes();
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut states: Vec<(String, Option<String>)> = Vec::new();
        let mut status = String::new();
        loop {
            let Ok(Some(current)) = store.get_run(&run.id) else {
                return;
            };
            let page = views::run_progress(&store, &current);
            let Ok(progress) = page else { return };
            if progress.status != status {
                status = progress.status.clone();
                let data = json!({ "status": status }).to_string();
                if tx
                    .send(Ok(SseEvent::default().event("run").data(data)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            for (index, step) in progress.steps.iter().enumerate() {
                if states.get(index) != Some(step) {
                    let data =
                        json!({ "index": index, "state": step.0, "duration": step.1 }).to_string();
                    if tx
                        .send(Ok(SseEvent::default().event("step").data(data)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            states = progress.steps;
            let Ok((lines, next)) =
                store.logs_page_placed(&run.id, None, cursor.as_ref(), EVENT_PAGE_BYTES)
            else {
                return;
            };
            let id = next.encode();
            cursor = Some(next);
            let more = !lines.is_empty();
            for (step, place, line) in lines {
                let shown = views::ShownLine { line, place };
                let data = json!({
                    "step": step,
                    "stream": stream_class(&shown.line),
                    "html": ansi::to_html(&shown.line.text),
                    "anchor": shown.anchor(),
                    "chunk": place.chunk,
                })
                .to_string();
                let event = SseEvent::default().event("log").id(id.clone()).data(data);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if more {
                continue;
            }
            if !progress.active {
                let _ = tx
                    .send(Ok(SseEvent::default()
                        .event("end")
                        .data(json!({"status": status}).to_string())))
                    .await;
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()) => {}
            }
        }
    });
    let mut response = Sse::new(api::tokio_stream_from(rx))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

// ---- audit -------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    entries: Vec<crate::store::audit::AuditEntry>,
    who: String,
    text: String,
    next: Option<String>,
}

impl AuditPage {
    fn when(&self, e: &crate::store::audit::AuditEntry) -> String {
        views::when(&e.at)
    }
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    who: String,
    #[serde(default)]
    text: String,
    before: Option<String>,
}

/// Entries an audit page shows.
const AUDIT_PAGE: usize = 100;

async fn audit(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    if let Some(why) = viewer.caller.refusal(Permission::Admin, None) {
        return error_page(&viewer, ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let wanted = crate::store::audit::AuditQuery {
        who: (!q.who.is_empty()).then(|| q.who.clone()),
        text: (!q.text.is_empty()).then(|| q.text.clone()),
        before: q.before.filter(|b| !b.is_empty()),
        limit: AUDIT_PAGE,
    };
    let store = state.store.clone();
    match api::blocking(move || store.audit_entries(&wanted)).await {
        Ok(Ok((entries, more))) => {
            let next = more.then(|| entries.last().map(|e| e.id.clone())).flatten();
            page(
                StatusCode::OK,
                &AuditPage {
                    chrome: Chrome::of(&viewer),
                    entries,
                    who: q.who,
                    text: q.text,
                    next,
                },
            )
        }
        Ok(Err(e)) => store_error(&viewer, e),
        Err(e) => error_page(&viewer, e),
    }
}
