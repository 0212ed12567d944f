//! The long-running service (`gantry serve`): one process that owns the store, keeps the
//! pipelines in step with their repositories, fires schedules, runs the queue and answers the
//! REST API.
//!
//! Tasks, all on one tokio runtime (the loops of the trigger path live in `intake`, which gets
//! its context from here):
//! - one sync loop per watched repository (fetch + reconcile on `spawn_blocking`, every
//!   `poll_interval` or when woken), so a slow or unreachable repository delays only itself;
//! - the scheduler loop (`trigger::schedule`), which submits due ticks to the queue;
//! - the delivery processor, which turns stored webhook deliveries into runs and replies;
//! - the run queue (`run::queue`);
//! - the retention loop, which prunes old runs and webhook bodies (`store::prune`);
//! - the HTTP server (`api.rs`, with bearer-token auth in `auth`).
//!
//! SIGTERM or SIGINT stops the listener and the loops, gives running runs the grace period to
//! finish, and marks the rest interrupted; queued runs wait in the store for the next start.

pub mod api;
mod audit;
mod extract;
pub mod guard;
pub mod hooks;
mod listen;
mod market;
pub mod metrics;
pub mod openapi;
pub mod ui;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::RepoSource;
use crate::config::{ApiToken, Config, Provider};
use crate::executor::local::{LocalExecutor, Mirrors};
use crate::executor::{Checkout, CommitRef, Limits};
use crate::forge::Forge;
use crate::intake::{self, Intake, WatchedRepo};
use crate::report::outbox::Outbox;
use crate::run::executors::Executors;
use crate::run::queue::{Queue, QueueConfig};
use crate::source::mirror::Credentials;
use crate::store::{RunRecord, Store};

/// Set by the auth layer to the name of the token a request used (a client cannot set it: the
/// layer removes any such header first).
pub const TOKEN_NAME_HEADER: &str = "x-gantry-token-name";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub queue: Queue,
    pub repos: Arc<BTreeMap<String, Arc<WatchedRepo>>>,
    pub tokens: Arc<Vec<ApiToken>>,
    /// `[[auth.users]]`: people who log in to the pages with a password.
    pub users: Arc<Vec<crate::config::UserAccount>>,
    pub public_url: String,
    pub outbox: Arc<Outbox>,
    /// Wakes the delivery processor and hands it the events read here.
    pub deliveries: Arc<crate::intake::Inbox>,
    /// Cancelled when the server stops: long answers (log streams) end so the HTTP server can.
    pub shutdown: CancellationToken,
    /// Unprocessed deliveries beyond which webhooks are answered 503 (`[server] max_backlog`).
    pub max_backlog: u64,
    /// The configured executors' names: what a local pipeline may name.
    pub executors: Arc<Vec<String>>,
    /// The runtime that handlers run on (the one of the store, the queue and the loops); the
    /// HTTP connections live on a runtime of their own (see `offload`).
    pub work: tokio::runtime::Handle,
    /// Requests being handled on `work`; when none is left, new ones get a 503 at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Webhook deliveries that failed their check, by source address.
    pub hook_failures: Arc<hooks::Failures>,
    /// Logins to the pages that failed, by source address (the same limit as webhooks').
    pub login_failures: Arc<hooks::Failures>,
    /// What `/metrics` answers.
    pub metrics: Arc<metrics::Metrics>,
    /// Whether `/metrics` answers without a token (`[server] metrics_public`).
    pub metrics_public: bool,
}

impl AppState {
    /// Served without tokens or users (`--insecure-no-auth`, loopback only): every request is
    /// let in, and checked for its Host and Origin instead.
    pub fn open(&self) -> bool {
        self.tokens.is_empty() && self.users.is_empty()
    }
}

/// Requests handled at once on the work runtime before new ones are refused with a 503.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long a store call may run before the store counts as stuck: `/readyz` says not ready.
pub const STUCK_NOT_READY: Duration = Duration::from_secs(5);

/// How long a store call may run before the watchdog ends the process (a supervisor restarts it).
pub const STUCK_FATAL: Duration = Duration::from_secs(30);

/// The exit status of `gantry serve` after a store failure (EX_IOERR).
pub const EXIT_STORE_FAILED: i32 = 74;

/// The forge of a provider, if it has one.
pub fn forge_of(provider: Provider) -> Option<Forge> {
    match provider {
        Provider::Github => Some(Forge::Github),
        Provider::Gitlab => Some(Forge::Gitlab),
        Provider::Bitbucket => Some(Forge::Bitbucket),
        Provider::Git => None,
    }
}

/// Knobs of a server that are not in the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs executing at once.
    pub max_running: usize,
    /// How long running runs may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Called with the bound address once the server listens (`gantry up` prints it).
    pub announce: bool,
    /// Serve without `[[auth.tokens]]` (`--insecure-no-auth`), on loopback only.
    pub insecure_no_auth: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_running: 4,
            shutdown_grace: Duration::from_secs(30),
            announce: true,
            insecure_no_auth: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Unsafe(String),
    #[error(transparent)]
    Executor(crate::executor::ExecutorError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server stopped: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Trust(#[from] crate::run::trust::TrustError),
    #[error("the route table names `{method} {path}`, which has no handler")]
    Route { method: String, path: String },
    #[error(transparent)]
    Sandbox(#[from] crate::executor::local::sandbox::SandboxError),
}

/// The executors of `[executor]`, by name. A local executor checks a commit out of this server's
/// mirror of its repository.
pub fn executors(
    config: &crate::config::ExecutorsConfig,
    repos: &Arc<BTreeMap<String, Arc<WatchedRepo>>>,
) -> Result<Executors, ServeError> {
    use crate::config::ExecutorConfig;
    let mut set = Executors::with_default(&config.default);
    for (name, executor) in &config.named {
        match executor {
            ExecutorConfig::Local(local) => {
                let (executor, limits) = local_executor(local)?;
                let mirror_repos = repos.clone();
                let executor = executor.with_mirrors(Mirrors::new(move |commit: &CommitRef| {
                    mirror_repos
                        .get(&commit.repo)
                        .map(|r| r.source.mirror_dir.clone())
                }));
                set.register(name, Arc::new(executor), limits);
            }
            ExecutorConfig::Argo(argo) => {
                use crate::executor::argo::client::{Connection, Token};
                use crate::executor::argo::{ArgoExecutor, ArgoOptions};
                let defaults = ArgoOptions::default();
                let options = ArgoOptions {
                    namespace: argo.namespace.clone(),
                    image: argo.image.clone().unwrap_or(defaults.image.clone()),
                    checkout_image: argo
                        .checkout_image
                        .clone()
                        .unwrap_or(defaults.checkout_image.clone()),
                    service_account: argo.service_account.clone(),
                    workspace_size: argo
                        .workspace_size
                        .clone()
                        .unwrap_or(defaults.workspace_size.clone()),
                    ..defaults
                };
                let token = |t: &crate::config::ArgoToken| match t {
                    crate::config::ArgoToken::Value(v) => Token::Value(v.clone()),
                    crate::config::ArgoToken::File(f) => Token::File(f.clone()),
                };
                let ca_pem = match &argo.ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        ServeError::Unsafe(format!(
                            "executor `{name}`: cannot read ca_file {}: {e}",
                            path.display()
                        ))
                    })?),
                    None => None,
                };
                let connection = Connection {
                    server: argo.server.clone(),
                    kube: argo.kube_api.clone(),
                    namespace: argo.namespace.clone(),
                    token: token(&argo.token),
                    kube_token: argo.kube_token.as_ref().map(token),
                    ca_pem,
                };
                let executor =
                    ArgoExecutor::new(name, connection, options).map_err(ServeError::Executor)?;
                set.register(name, Arc::new(executor), Limits::default());
            }
        }
    }
    Ok(set)
}

/// A local executor and the run limits that its `[executor.NAME]` table asks for. Without a sandbox
/// (written explicitly) a warning names the risk.
pub fn local_executor(
    config: &crate::config::LocalExecutorConfig,
) -> Result<(LocalExecutor, Limits), ServeError> {
    use crate::config::{SandboxMode, StepUserSpec};
    use crate::executor::local::sandbox::{
        ProcessLimits, Sandbox, SandboxError, StepUser, UserChoice,
    };
    let mut limits = Limits::default();
    if let Some(n) = config.max_step_log {
        limits.max_step_log = n;
    }
    if let Some(n) = config.max_run_log {
        limits.max_run_log = n;
    }
    if let Some(n) = config.run_disk {
        limits.run_disk = Some(n);
    }
    let sandbox = match config.sandbox {
        SandboxMode::None => {
            tracing::warn!(
                "sandbox = \"none\": steps run as Gantry's own user and can read its data dir, config, master key and tokens; use it only where every pipeline author is trusted with them"
            );
            Sandbox::None
        }
        SandboxMode::Bubblewrap => {
            let defaults = ProcessLimits::default();
            let process_limits = ProcessLimits {
                open_files: config.open_files.unwrap_or(defaults.open_files),
                processes: config.processes.unwrap_or(defaults.processes),
                file_size: config.file_size.unwrap_or(defaults.file_size),
                memory: config.memory.or(defaults.memory),
                tmp_size: config.tmp_size.unwrap_or(defaults.tmp_size),
            };
            let user = match &config.user {
                None => UserChoice::Default,
                Some(StepUserSpec::Root) => UserChoice::Root,
                Some(StepUserSpec::Ids { uid, gid }) => UserChoice::Ids(StepUser {
                    uid: *uid,
                    gid: *gid,
                }),
                Some(StepUserSpec::Name(name)) => UserChoice::Name(name.clone()),
            };
            match Sandbox::bubblewrap(user, process_limits) {
                Ok(Sandbox::Bubblewrap(mut b)) => {
                    b.prewarm = true;
                    if let Some((first, last)) = config.run_uids
                        && let Some(warning) = b.set_run_uids(first, last)?
                    {
                        tracing::warn!("{warning}");
                    }
                    b.check_run_uids()?;
                    if let Some(pool) = &b.uids {
                        tracing::info!(
                            "each run's steps get a uid of their own from {}",
                            pool.range()
                        );
                    }
                    b.net.host_ports = config.host_ports.clone();
                    if let Some(bytes) = config.run_memory {
                        b.run_limits.memory = Some(bytes);
                    }
                    if let Some(n) = config.run_processes {
                        b.run_limits.processes = Some(n);
                    }
                    if let Some(millis) = config.run_millicpus {
                        b.run_limits.cpus = Some(millis as f64 / 1000.0);
                    }
                    match &b.cgroup {
                        Some(layout) => tracing::info!(
                            "runs are limited through {}: {}",
                            layout.describe(),
                            b.run_limits
                        ),
                        None => tracing::warn!(
                            "no control groups here: runs are limited by per-process rlimits only"
                        ),
                    }
                    if b.net.slirp.is_none() {
                        tracing::warn!(
                            "steps of pipelines with the network on will refuse to start: {}",
                            crate::executor::local::NO_SLIRP
                        );
                    }
                    Sandbox::Bubblewrap(b)
                }
                Ok(sandbox) => sandbox,
                // The service still starts (its API, webhooks and reports work), but no step
                // runs unsandboxed by accident: each refuses to start, saying how to fix it.
                Err(e @ SandboxError::NoBwrap) => {
                    tracing::warn!("every step will refuse to start: {e}");
                    Sandbox::Missing(e.to_string())
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok((LocalExecutor::with_sandbox(sandbox), limits))
}

/// Caps glibc's malloc at two arenas, before the runtimes start their threads. By default each
/// thread that allocates may get an arena of its own (up to eight per core), and memory freed in
/// one is kept there for that thread: under a burst of webhooks, buffers allocated on the HTTP
/// threads and freed on the work threads (and the store's) spread the heap over many arenas that
/// each hold on to their share. Measured with `gantry bench webhooks`: a lower peak RSS for the
/// same throughput.
pub fn bound_allocator_arenas() {
    // SAFETY: mallopt takes plain integers and only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Keeps processes of the same user from reading this one's memory and environment
/// (`/proc/<pid>/environ` holds the master key and tokens when they came from the environment).
pub fn harden_process() {
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// The repository sources of a config: mirrors under `<data_dir>/mirrors/<name>.git`.
pub fn repo_sources(config: &Config, data_dir: &std::path::Path) -> Vec<Arc<WatchedRepo>> {
    config
        .repos
        .iter()
        .map(|r| {
            let credentials = r
                .token
                .clone()
                .map(|t| Credentials::for_provider(r.provider.as_str(), t));
            Arc::new(WatchedRepo {
                forge_id: r.repo.clone().unwrap_or_else(|| r.name.clone()),
                forge: forge_of(r.provider),
                poll_interval: r.poll_interval,
                webhook_secret: r.webhook_secret.clone(),
                source: RepoSource {
                    name: r.name.clone(),
                    url: r.url.clone(),
                    branch: r.branch.clone(),
                    paths: r.paths.clone(),
                    credentials,
                    mirror_dir: data_dir.join("mirrors").join(format!("{}.git", r.name)),
                },
                wake: Notify::new(),
                sync_lock: tokio::sync::Mutex::new(()),
                synced: Default::default(),
                stats: Default::default(),
            })
        })
        .collect()
}

/// The protected refs of every watched repository.
pub fn protected_refs(
    config: &Config,
) -> Result<BTreeMap<String, crate::run::trust::ProtectedRefs>, crate::run::trust::TrustError> {
    config
        .repos
        .iter()
        .map(|r| {
            crate::run::trust::ProtectedRefs::new(&r.name, &r.branch, &r.protected)
                .map(|p| (r.name.clone(), p))
        })
        .collect()
}

/// The forge client of every repository that reports to a forge.
pub fn forge_clients(config: &Config) -> BTreeMap<String, crate::forge::api::ClientConfig> {
    use crate::forge::api::{Auth, ClientConfig};
    config
        .repos
        .iter()
        .filter_map(|r| {
            let forge = forge_of(r.provider)?;
            let auth = match (&r.github_app, &r.token) {
                (Some(app), _) => Auth::GithubApp {
                    app_id: app.app_id,
                    private_key_pem: app.private_key_pem.clone(),
                },
                (None, Some(token)) => Auth::Token(token.clone()),
                (None, None) => return None,
            };
            Some((
                r.name.clone(),
                ClientConfig {
                    forge,
                    api_url: r.api_url.clone()?,
                    repo: r.repo.clone()?,
                    auth,
                    timeout: Duration::from_secs(10),
                },
            ))
        })
        .collect()
}

/// Builds the router from the route table, with auth in front of every route that needs it.
/// Every route but the health checks runs on the work runtime (`offload`).
pub fn router(state: AppState) -> Result<Router, ServeError> {
    let mut health = Router::new();
    let mut open = Router::new();
    let mut guarded = Router::new();
    for route in api::ROUTES {
        let handler = api::handler(route.method, route.path).ok_or_else(|| ServeError::Route {
            method: route.method.to_uppercase(),
            path: route.path.to_string(),
        })?;
        if api::is_health(route.path) {
            health = health.route(route.path, handler);
        } else if route.permission.needs_token()
            && !(route.path == "/metrics" && state.metrics_public)
        {
            let handler = handler.layer(middleware::from_fn_with_state(
                (state.clone(), route.permission),
                permit,
            ));
            guarded = guarded.route(route.path, handler);
        } else {
            open = open.route(route.path, handler);
        }
    }
    // Innermost first: the space check runs only for authenticated, same-site calls; the audit
    // record sees the caller the auth layer found and the answer.
    let guarded = guarded
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::space_for_writes,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::same_site,
        ));
    let work = open
        .merge(guarded)
        .merge(ui::routes(&state))
        .fallback(|| async {
            api::ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint (GET /api/v1/openapi.json lists them)",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), offload));
    Ok(health
        .merge(work)
        .layer(axum::extract::DefaultBodyLimit::max(extract::MAX_BODY))
        .with_state(state))
}

/// Hands a request to the work runtime and waits for its answer there, so that the runtime that
/// holds the connections never runs a store call: when the store is stuck (sled spinning on a
/// full disk, a flush that never returns), `/healthz` and `/readyz` still answer, and at most
/// `MAX_IN_FLIGHT` requests wait before the rest are refused at once.
async fn offload(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        let mut response = api::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_IN_FLIGHT} requests are being handled; try again in a moment"),
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
        return response;
    };
    let handled = state.work.spawn(async move {
        let response = next.run(request).await;
        drop(permit);
        response
    });
    match handled.await {
        Ok(response) => response,
        Err(e) => api::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's handler stopped: {e}"),
        )
        .into_response(),
    }
}

/// Why the server is not ready for new work, if it is not: what `/readyz` says. Reads only what
/// is in memory (and `statvfs`), never the store. `/readyz` answers without a token (probes have
/// none), so the reasons name no path and no figure; the log and the authenticated answers do.
pub fn not_ready(state: &AppState) -> Vec<String> {
    let mut reasons = Vec::new();
    if state.store.failure().is_some() {
        reasons.push("the store failed; the process is stopping for a restart".to_string());
    }
    if let Some((what, age)) = state.store.stuck(STUCK_NOT_READY) {
        reasons.push(format!(
            "a store call ({what}) has not returned for {:.0} s",
            age.as_secs_f64()
        ));
    }
    if state.store.space_left().is_err() {
        reasons.push(
            "the data dir's file system is below its free-space reserve ([storage] min_free)"
                .to_string(),
        );
    }
    if state.shutdown.is_cancelled() {
        reasons.push("the server is stopping".into());
    }
    for (name, repo) in state.repos.iter() {
        if !repo.synced.load(std::sync::atomic::Ordering::SeqCst) {
            reasons.push(format!("source `{name}` has not finished its first sync"));
        }
    }
    reasons
}

/// The runtime of the HTTP connections (see `offload`): two threads, shut down without waiting
/// when dropped (a runtime may not be dropped from async code otherwise).
struct HttpRuntime(Option<tokio::runtime::Runtime>);

impl HttpRuntime {
    /// The runtime, and a handle to spawn on it.
    fn start() -> std::io::Result<(HttpRuntime, tokio::runtime::Handle)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gantry-http")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok((HttpRuntime(Some(runtime)), handle))
    }
}

impl Drop for HttpRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Makes a store failure end the process within a second, and a store call that has not
/// returned for `STUCK_FATAL` a failure, so that a supervisor restarts Gantry into sled's
/// recovery instead of keeping a half-broken server up (crash-only; see ARCHITECTURE.md). The
/// watchdog thread also keeps the free-space reading fresh while no request asks for it.
fn crash_only(store: &Store) {
    store.on_failure(|message| {
        tracing::error!(
            target: crate::store::FATAL,
            "{message}; stopping (exit {EXIT_STORE_FAILED}) so that a supervisor \
             restarts Gantry into the store's recovery"
        );
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            std::process::exit(EXIT_STORE_FAILED);
        });
    });
    let watched = store.clone();
    let spawned = std::thread::Builder::new()
        .name("gantry-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let _ = watched.space_left();
                if let Some((what, age)) = watched.stuck(STUCK_FATAL) {
                    watched.fail(format!(
                        "a store call ({what}) in {} has not returned for {:.0} s",
                        watched.dir().display(),
                        age.as_secs_f64()
                    ));
                }
                if watched.failure().is_some() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the store watchdog: {e}");
    }
}

/// Compares in time that does not depend on where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

/// Who is calling: what the auth layer puts on every request it lets through, for the
/// permission check of its route and for the handlers (who started a run, who changed what).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `None` when served without tokens.
    pub name: Option<String>,
    /// Its roles and grants (served without tokens: an admin with the credentials grant).
    pub token: Arc<ApiToken>,
    /// How it authenticated: `token`, `session` (a logged-in page) or `none`.
    pub via: &'static str,
}

impl Caller {
    fn anonymous() -> Caller {
        Caller {
            name: None,
            token: Arc::new(ApiToken::admin("anonymous", "")),
            via: "none",
        }
    }

    fn of(token: &ApiToken, via: &'static str) -> Caller {
        Caller {
            name: Some(token.name.clone()),
            token: Arc::new(token.clone()),
            via,
        }
    }

    /// Why `permission` is refused on `pipeline` (the route's, when it is about one), if it is.
    pub fn refusal(
        &self,
        permission: api::Permission,
        pipeline: Option<(&str, &str)>,
    ) -> Option<String> {
        let who = self.name.as_deref().unwrap_or("anonymous");
        if permission == api::Permission::Credentials {
            return (!self.token.credentials).then(|| {
                format!(
                    "token `{who}` may not read connections' credentials (`credentials = true` \
                     in its [[auth.tokens]] entry grants it)"
                )
            });
        }
        let needed = permission.role()?;
        let role = self.token.role_on(pipeline);
        (role < needed).then(|| {
            let here = pipeline
                .map(|(s, n)| format!(" on `{s}/{n}`"))
                .unwrap_or_default();
            format!(
                "token `{who}` is a {}{here}; this needs {} (`role` or `scopes` of its \
                 [[auth.tokens]] entry)",
                role.as_str(),
                needed.as_str()
            )
        })
    }
}

/// What the holder of a page session may do: the grant of the token or user it was opened
/// with (`method` `token` or `password`), as the config says now; none once it is gone from it.
fn grant_named<'a>(state: &'a AppState, name: &str, method: &str) -> Option<&'a ApiToken> {
    match method {
        "password" => state
            .users
            .iter()
            .map(|u| &u.grant)
            .find(|g| g.name == name),
        _ => state.tokens.iter().find(|t| t.name == name),
    }
}

async fn auth(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    request.headers_mut().remove(TOKEN_NAME_HEADER);
    if state.open() {
        // No tokens configured: allowed only on loopback (checked at start).
        request.extensions_mut().insert(Caller::anonymous());
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = match given {
        Some(given) => {
            let found = state.tokens.iter().fold(None, |found, t| {
                if same_secret(given.as_bytes(), t.token.as_bytes()) {
                    Some(t)
                } else {
                    found
                }
            });
            match found {
                Some(token) => Caller::of(token, "token"),
                None => {
                    return unauthorized(
                        "the bearer token is not one of the configured [[auth.tokens]]",
                    );
                }
            }
        }
        None => {
            // A browser logged in to the pages reads the API with its session (a log download).
            // Without the cookie there is nothing to look up.
            let has_cookie = request
                .headers()
                .get_all(axum::http::header::COOKIE)
                .iter()
                .any(|v| v.to_str().is_ok_and(|c| c.contains(ui::SESSION_COOKIE)));
            if !has_cookie {
                return unauthorized("missing `Authorization: Bearer <token>` header");
            }
            let (session_state, headers) = (state.clone(), request.headers().clone());
            let who = tokio::task::spawn_blocking(move || ui::session_of(&session_state, &headers))
                .await
                .ok()
                .flatten();
            match who.and_then(|(n, m)| grant_named(&state, &n, &m)) {
                Some(token) => Caller::of(token, "session"),
                None => return unauthorized("missing `Authorization: Bearer <token>` header"),
            }
        }
    };
    if let Some(name) = &caller.name
        && let Ok(v) = HeaderValue::from_str(name)
    {
        request.headers_mut().insert(TOKEN_NAME_HEADER, v);
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The permission check of one route, after `auth`: 403 with the reason when the caller's role
/// on the pipeline the path names falls short: `{source}/{name}`, or the pipeline of run `{id}`
/// (read from the store only for a token with scopes; without, it changes nothing).
async fn permit(
    State((state, permission)): State<(AppState, api::Permission)>,
    params: axum::extract::RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return next.run(request).await;
    };
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    let pipeline = match (param("source"), param("name"), param("id")) {
        (Some(source), Some(name), _) => Some((source, name)),
        (_, _, Some(id)) if !caller.token.scopes.is_empty() => {
            let store = state.store.clone();
            tokio::task::spawn_blocking(move || store.find_run(&id).ok())
                .await
                .ok()
                .flatten()
                .map(|run| (run.source, run.pipeline))
        }
        _ => None,
    };
    let scope = pipeline.as_ref().map(|(s, n)| (s.as_str(), n.as_str()));
    match caller.refusal(permission, scope) {
        Some(why) => api::ApiError::new(StatusCode::FORBIDDEN, why).into_response(),
        None => next.run(request).await,
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = api::ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"gantry\""),
    );
    response
}

/// Runs the service until SIGTERM/SIGINT (or `stop` is cancelled).
pub async fn serve(
    config: Config,
    options: Options,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    config
        .check_auth(options.insecure_no_auth)
        .map_err(ServeError::Unsafe)?;
    if config.tokens.is_empty() && config.users.is_empty() {
        tracing::warn!(
            "serving without an API token (--insecure-no-auth): every local \
             user and process that can reach {} can run pipelines and read their logs",
            config.server.listen
        );
    }
    harden_process();
    let data_dir = config.storage.data_dir.clone();
    let repos: BTreeMap<String, Arc<WatchedRepo>> = repo_sources(&config, &data_dir)
        .into_iter()
        .map(|r| (r.source.name.clone(), r))
        .collect();
    let repos = Arc::new(repos);
    let executors = executors(&config.executors, &repos)?;
    let store = {
        let dir = data_dir.clone();
        let cache = config.storage.cache.unwrap_or(crate::store::DEFAULT_CACHE);
        tokio::task::spawn_blocking(move || Store::open_with(&dir, cache))
            .await
            .map_err(|e| ServeError::Http(std::io::Error::other(e)))??
    };
    if let Some(dir) = &config.storage.work_dir {
        store.set_work_dir(dir.clone());
    }
    store.set_min_free(config.storage.min_free);
    crash_only(&store);
    let recovered = crate::run::recover::recover(&store, &executors)?;
    let interrupted = recovered.interrupted;
    for run in &interrupted {
        tracing::info!(
            "run {} of {}/{} was interrupted by the last shutdown",
            run.id,
            run.source,
            run.pipeline
        );
    }
    let checkout_repos = repos.clone();
    let checkout = move |run: &RunRecord| -> Checkout {
        match (checkout_repos.get(&run.source), &run.git) {
            (Some(repo), Some(git)) => Checkout::Commit(CommitRef {
                repo: repo.source.name.clone(),
                url: repo.source.url.clone(),
                sha: git.sha.clone(),
                credentials: repo.source.credentials.clone(),
            }),
            _ => Checkout::None,
        }
    };
    // A run goes to its repository's executor, or its local pipeline's, else the default.
    let executor_for = {
        let by_repo: BTreeMap<String, String> = config
            .repos
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.executor.clone()?)))
            .collect();
        let store = store.clone();
        move |run: &RunRecord| -> Option<String> {
            if run.source == crate::catalog::LOCAL_SOURCE {
                return store
                    .get_pipeline(&run.source, &run.pipeline)
                    .ok()
                    .flatten()
                    .and_then(|p| p.executor);
            }
            by_repo.get(&run.source).cloned()
        }
    };
    let outbox = Arc::new(Outbox::new(
        store.clone(),
        config.server.public_url.clone(),
        forge_clients(&config),
    ));
    let metrics = Arc::new(metrics::Metrics::new());
    let on_transition = {
        let (store, outbox, public_url, metrics) = (
            store.clone(),
            outbox.clone(),
            config.server.public_url.clone(),
            metrics.clone(),
        );
        move |run: &RunRecord| {
            if !run.status.is_active() {
                metrics.run_ended(run, &store.steps(&run.id).unwrap_or_default());
            }
            if !outbox.reports(&run.source) {
                return;
            }
            match crate::report::on_transition(&store, &public_url, run) {
                Ok(()) => outbox.notify(),
                Err(e) => tracing::warn!("reporting run {}: {e}", run.id),
            }
        }
    };
    // Publications of runs that ended while the marketplace was not told (a crash between).
    match crate::marketplace::catch_up(&store, chrono::Utc::now()) {
        Ok(failed) => {
            for f in failed {
                tracing::warn!("not published to the marketplace: {f}");
            }
        }
        Err(e) => tracing::warn!("catching up on the marketplace: {e}"),
    }
    // Runs cut short by the last shutdown or crash: their forge learns they ended.
    for run in &interrupted {
        if outbox.reports(&run.source)
            && let Err(e) = crate::report::on_transition(&store, &config.server.public_url, run)
        {
            tracing::warn!("reporting run {}: {e}", run.id);
        }
    }
    let executor_names: Vec<String> = executors.names().map(str::to_string).collect();
    let queue = Queue::start(
        store.clone(),
        executors,
        QueueConfig {
            max_running: options.max_running,
            checkout: Arc::new(checkout),
            executor_for: Some(Arc::new(executor_for)),
            on_transition: Some(Arc::new(on_transition)),
            protected: protected_refs(&config)?,
            hints: crate::run::Hints::Server(config.server.public_url.clone()),
        },
    )?;
    // Runs that went on without us (Argo Workflows): followed again from where the store left.
    for (run, external_id) in recovered.reattach {
        tracing::info!(
            "run {} of {}/{} goes on as {external_id}; following it again",
            run.id,
            run.source,
            run.pipeline
        );
        queue.reattach(run, external_id);
    }
    let state = AppState {
        store: store.clone(),
        queue: queue.clone(),
        repos: repos.clone(),
        tokens: Arc::new(config.tokens.clone()),
        users: Arc::new(config.users.clone()),
        public_url: config.server.public_url.clone(),
        outbox: outbox.clone(),
        deliveries: Arc::default(),
        shutdown: stop.clone(),
        max_backlog: config.server.max_backlog,
        executors: Arc::new(executor_names),
        work: tokio::runtime::Handle::current(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        hook_failures: Arc::default(),
        login_failures: Arc::default(),
        metrics,
        metrics_public: config.server.metrics_public,
    };
    let app = router(state.clone())?;
    let (http, http_handle) = HttpRuntime::start().map_err(ServeError::Http)?;
    let std_listener =
        std::net::TcpListener::bind(config.server.listen).map_err(|source| ServeError::Listen {
            addr: config.server.listen,
            source,
        })?;
    std_listener
        .set_nonblocking(true)
        .map_err(ServeError::Http)?;
    let listener = {
        let _on_http = http_handle.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(ServeError::Http)?
    };
    let bound = listener.local_addr().map_err(ServeError::Http)?;
    if options.announce {
        tracing::info!(
            "serving on http://{bound} (data dir {})",
            data_dir.display()
        );
    }

    let loops = CancellationToken::new();
    let interrupt = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for repo in repos.values() {
        tasks.spawn(intake::sync_loop(
            store.clone(),
            repo.clone(),
            loops.clone(),
            interrupt.clone(),
        ));
    }
    tasks.spawn(intake::schedule_loop(
        store.clone(),
        queue.clone(),
        loops.clone(),
    ));
    tasks.spawn(intake::process_loop(
        Intake {
            store: store.clone(),
            queue: queue.clone(),
            repos: repos.clone(),
            public_url: config.server.public_url.clone(),
            outbox: outbox.clone(),
            deliveries: state.deliveries.clone(),
        },
        loops.clone(),
    ));
    tasks.spawn(outbox.clone().run(loops.clone()));
    tasks.spawn(retention_loop(
        store.clone(),
        crate::store::Retention {
            max_age: config.storage.retention,
            keep_runs: config.storage.keep_runs,
        },
        loops.clone(),
    ));

    let signal = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    let http_stop = stop.clone();
    let served = http_handle
        .spawn(listen::serve(listener, app, http_stop))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    tracing::info!(
        "stopping: no new work; running runs get {} to finish",
        crate::spec::values::format_duration(options.shutdown_grace)
    );
    loops.cancel();
    interrupt.store(true, Ordering::SeqCst);
    queue.shutdown(options.shutdown_grace).await;
    while tasks.join_next().await.is_some() {}
    store.flush_async().await?;
    drop(http);
    served.map_err(ServeError::Http)
}

/// How often the retention loop prunes: a quarter of the retention age, between a second and an
/// hour (pruning is a pass over the runs and deliveries, cheap next to the age it enforces).
fn prune_interval(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Prunes ended runs and processed delivery bodies past the retention age (`store::prune`) soon
/// after start and then every `prune_interval`; a zero age keeps everything.
async fn retention_loop(store: Store, policy: crate::store::Retention, stop: CancellationToken) {
    if policy.max_age.is_zero() {
        return;
    }
    let every = prune_interval(policy.max_age);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let store = store.clone();
        let pruned =
            tokio::task::spawn_blocking(move || store.prune(chrono::Utc::now(), &policy)).await;
        match pruned {
            Ok(Ok(p)) if p.runs > 0 || p.delivery_bodies > 0 => tracing::info!(
                "retention: pruned {} runs and {} webhook delivery bodies older than {}",
                p.runs,
                p.delivery_bodies,
                crate::spec::values::format_duration(policy.max_age)
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("retention: {e}"),
            Err(e) => tracing::warn!("retention stopped abnormally: {e}"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server still stops when its token is cancelled.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Where `gantry up` keeps its demo repository and token.
pub fn demo_paths(data_dir: &std::path::Path) -> (PathBuf, PathBuf) {
    (data_dir.join("demo-repo"), data_dir.join("admin.token"))
}
