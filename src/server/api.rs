//! The REST API, `/api/v1/...`: JSON in and out, errors as `{"error": "..."}`.
//!
//! `ROUTES` is the one list of endpoints: the router is built from it and so is the OpenAPI
//! document (`openapi.rs`), so neither can name an endpoint the other lacks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;

use super::extract::{Body, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, market};
use crate::catalog::{self, CatalogError, LOCAL_SOURCE};
use crate::run::queue::{QueueError, Submit};
use crate::run::{self, StartError};
use crate::spec::values;
use crate::store::{PipelineRecord, RunRecord, RunStatus, SecretRelease, StoreError, Trigger};
use crate::views;

/// An API error: a status and a sentence.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = views::api::Error {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::NoSuchRun(_) => StatusCode::NOT_FOUND,
            StoreError::AmbiguousRun(_) => StatusCode::BAD_REQUEST,
            StoreError::LowSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::SecretTooShort { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        let status = match &e {
            CatalogError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
            CatalogError::Store(_) | CatalogError::Source(_) | CatalogError::NoBranch { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> ApiError {
        match e {
            StartError::Parameter(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            StartError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            StartError::Store(s) => s.into(),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        match e {
            QueueError::Ended(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            QueueError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            QueueError::Store(s) => s.into(),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Whether `path` is a health check: answered on the HTTP runtime itself, never from the store.
pub fn is_health(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// `GET /readyz`: 200 when the server takes new work, else 503 with the reasons.
async fn readyz(State(state): State<AppState>) -> Response {
    let reasons = super::not_ready(&state);
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(views::api::Readiness {
            ready: reasons.is_empty(),
            reasons,
        }),
    )
        .into_response()
}

/// `GET /metrics`.
async fn metrics(State(state): State<AppState>) -> Response {
    let (queued, running) = state.queue.active();
    let sources: Vec<super::metrics::SourceFigures> = state
        .repos
        .iter()
        .map(|(name, repo)| {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = &repo.stats;
            super::metrics::SourceFigures {
                source: name.clone(),
                ok: stats.ok.load(Relaxed),
                failed: stats.failed.load(Relaxed),
                seconds_total: stats.micros_total.load(Relaxed) as f64 / 1e6,
                seconds_last: stats.micros_last.load(Relaxed) as f64 / 1e6,
                fetches: stats.fetches.snapshot(),
            }
        })
        .collect();
    state.metrics.observe(
        &sources,
        crate::run::log_bytes_stored(),
        crate::executor::local::log_bytes_dropped(),
        &state.outbox.failure_counts(),
        state.deliveries.lag.snapshot(),
    );
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    let text =
        match tokio::task::spawn_blocking(move || metrics.render(&store, queued, running)).await {
            Ok(text) => text,
            Err(e) => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the metrics stopped: {e}"),
                )
                .into_response();
            }
        };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// What a route needs of its caller: nothing (health, the document), a valid webhook signature,
/// or a token whose role (`config::Role`) reaches the level (on the pipeline the route is about,
/// when it is about one), or the grant to read connections' credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Public,
    Signed,
    Read,
    Run,
    Edit,
    Admin,
    Credentials,
}

impl Permission {
    /// Whether a bearer token (or a page session) is needed.
    pub fn needs_token(self) -> bool {
        !matches!(self, Permission::Public | Permission::Signed)
    }

    /// The role it takes, for those that take one.
    pub fn role(self) -> Option<crate::config::Role> {
        use crate::config::Role;
        match self {
            Permission::Read => Some(Role::Viewer),
            Permission::Run => Some(Role::Runner),
            Permission::Edit => Some(Role::Editor),
            Permission::Admin => Some(Role::Admin),
            Permission::Public | Permission::Signed | Permission::Credentials => None,
        }
    }

    /// As the OpenAPI document says it (`x-gantry-permission`).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Signed => "webhook signature",
            Permission::Read => "viewer",
            Permission::Run => "runner",
            Permission::Edit => "editor",
            Permission::Admin => "admin",
            Permission::Credentials => "credentials grant",
        }
    }
}

/// One endpoint, as documented.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// What the caller must be allowed (and whether a bearer token is needed at all).
    pub permission: Permission,
    /// Query parameters: name, description.
    pub query: &'static [(&'static str, &'static str)],
    /// The request body's schema (a name under `components.schemas`), if any.
    pub body: Option<&'static str>,
    /// Status, description, response schema name (`text` for plain text, `sse` for a stream).
    pub responses: &'static [(u16, &'static str, Option<&'static str>)],
}

const ERR_404: (u16, &str, Option<&str>) = (404, "no such pipeline or run", Some("Error"));
const ERR_401: (u16, &str, Option<&str>) = (401, "missing or wrong bearer token", Some("Error"));

/// Every endpoint of the API.
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/healthz",
        summary: "Liveness: 200 while the server runs",
        permission: Permission::Public,
        query: &[],
        body: None,
        responses: &[(200, "ok", Some("text"))],
    },
    Route {
        method: "get",
        path: "/readyz",
        summary: "Readiness: 200 while the server takes new work; 503 with the reasons while its store failed or is stuck, or its data dir is below the free-space reserve ([storage] min_free), or a watched repository has not finished its first sync, or it is stopping",
        permission: Permission::Public,
        query: &[],
        body: None,
        responses: &[
            (200, "ready", Some("Readiness")),
            (503, "not ready, with the reasons", Some("Readiness")),
        ],
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics (the text exposition format): runs, durations, queue, webhook deliveries, outbox, store and process; needs the token unless [server] metrics_public = true",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[(200, "the metrics", Some("metrics")), ERR_401],
    },
    Route {
        method: "get",
        path: "/api/v1/openapi.json",
        summary: "This document",
        permission: Permission::Public,
        query: &[],
        body: None,
        responses: &[(200, "the OpenAPI 3.1 document", None)],
    },
    Route {
        method: "get",
        path: "/api/v1/pipelines",
        summary: "Every pipeline, with its current version, validity, errors and last run",
        permission: Permission::Read,
        query: &[("source", "only pipelines of this source")],
        body: None,
        responses: &[(200, "the pipelines", Some("PipelineList")), ERR_401],
    },
    Route {
        method: "get",
        path: "/api/v1/pipelines/{source}/{name}",
        summary: "One pipeline: its parameters, triggers, current spec text and versions",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[
            (200, "the pipeline", Some("PipelineDetail")),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "put",
        path: "/api/v1/pipelines/{source}/{name}",
        summary: "Create or update a pipeline defined in Gantry (source `local`); each change is a new version",
        permission: Permission::Edit,
        query: &[],
        body: Some("PipelineSpec"),
        responses: &[
            (201, "created", Some("AppliedPipeline")),
            (200, "updated, or unchanged", Some("AppliedPipeline")),
            (400, "the source is not `local`", Some("Error")),
            (
                422,
                "the spec is invalid; the error lists every problem as path:line:col",
                Some("Error"),
            ),
            ERR_401,
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/pipelines/{source}/{name}",
        summary: "Retire a pipeline defined in Gantry; its versions and runs stay",
        permission: Permission::Edit,
        query: &[],
        body: None,
        responses: &[
            (200, "retired", Some("Pipeline")),
            (400, "the source is not `local`", Some("Error")),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "post",
        path: "/api/v1/pipelines/{source}/{name}/rollback",
        summary: "Make an earlier version of a local pipeline current again (as a new version)",
        permission: Permission::Edit,
        query: &[],
        body: Some("Rollback"),
        responses: &[
            (200, "rolled back", Some("Pipeline")),
            (400, "the source is not `local`", Some("Error")),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "post",
        path: "/api/v1/pipelines/{source}/{name}/runs",
        summary: "Start a run with typed parameters",
        permission: Permission::Run,
        query: &[],
        body: Some("RunRequest"),
        responses: &[
            (
                201,
                "the run, queued (or skipped by its concurrency policy)",
                Some("Run"),
            ),
            (
                400,
                "a parameter is unknown, missing or does not fit its type; the error names it",
                Some("Error"),
            ),
            (
                409,
                "the pipeline is retired, has no valid version, or does not allow manual runs",
                Some("Error"),
            ),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/runs",
        summary: "Runs, newest first",
        permission: Permission::Read,
        query: &[
            ("pipeline", "`source/name` (or a bare name)"),
            (
                "status",
                "queued, running, succeeded, failed, cancelled, interrupted or skipped",
            ),
            ("limit", "at most this many (default 50, at most 1000)"),
        ],
        body: None,
        responses: &[
            (200, "the runs", Some("RunList")),
            (400, "a bad status or limit", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/runs/{id}",
        summary: "One run (id or unique prefix) with its steps and non-secret outputs",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[(200, "the run", Some("RunDetail")), ERR_401, ERR_404],
    },
    Route {
        method: "post",
        path: "/api/v1/runs/{id}/cancel",
        summary: "Cancel a queued or running run",
        permission: Permission::Run,
        query: &[],
        body: None,
        responses: &[
            (202, "cancelled, or asked to stop", Some("Run")),
            (409, "the run has already ended", Some("Error")),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "post",
        path: "/api/v1/runs/{id}/rerun",
        summary: "Run again with the same parameters, pipeline version and commit",
        permission: Permission::Run,
        query: &[],
        body: None,
        responses: &[
            (201, "the new run", Some("Run")),
            (409, "the pipeline is retired", Some("Error")),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "post",
        path: "/api/v1/runs/{id}/retry",
        summary: "Retry a run that failed, was cancelled or interrupted, from its failed step: a new run of the same version, parameters and commit in which the steps that succeeded before are not run again and keep their outputs; checkouts run again (docs/spec.md, \"Retrying a run\"); local executor only",
        permission: Permission::Run,
        query: &[],
        body: None,
        responses: &[
            (201, "the new run, queued", Some("Run")),
            (
                409,
                "the run is still active or succeeded, or its pipeline or version is gone",
                Some("Error"),
            ),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/runs/{id}/logs",
        summary: "Log lines as text; with follow=true a server-sent event stream until the step or run ends",
        permission: Permission::Read,
        query: &[
            ("step", "only this step's lines"),
            ("follow", "true: stream `log` events, then one `end` event"),
        ],
        body: None,
        responses: &[
            (
                200,
                "the lines (text/plain) or a stream (text/event-stream)",
                Some("logs"),
            ),
            (
                400,
                "a step the run does not have, or `follow` neither true nor false",
                Some("Error"),
            ),
            ERR_401,
            ERR_404,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/variables",
        summary: "Variables with their values, global and per pipeline",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[(200, "the variables", Some("VariableList")), ERR_401],
    },
    Route {
        method: "put",
        path: "/api/v1/variables/{var}",
        summary: "Set a global variable",
        permission: Permission::Edit,
        query: &[],
        body: Some("Value"),
        responses: &[
            (204, "set", None),
            (400, "a bad name", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/variables/{var}",
        summary: "Remove a global variable",
        permission: Permission::Edit,
        query: &[],
        body: None,
        responses: &[
            (204, "removed", None),
            (404, "no such variable", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "put",
        path: "/api/v1/pipelines/{source}/{name}/variables/{var}",
        summary: "Set a variable of one pipeline (wins over the global one)",
        permission: Permission::Edit,
        query: &[],
        body: Some("Value"),
        responses: &[
            (204, "set", None),
            (400, "a bad name", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/pipelines/{source}/{name}/variables/{var}",
        summary: "Remove a variable of one pipeline",
        permission: Permission::Edit,
        query: &[],
        body: None,
        responses: &[
            (204, "removed", None),
            (404, "no such variable", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/secrets",
        summary: "Secret names and scopes; values are never returned",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[
            (200, "the secrets, without values", Some("SecretList")),
            ERR_401,
        ],
    },
    Route {
        method: "put",
        path: "/api/v1/secrets/{var}",
        summary: "Set a global secret (write-only, encrypted at rest; protected unless `unprotected` is true)",
        permission: Permission::Edit,
        query: &[],
        body: Some("SecretValue"),
        responses: &[
            (204, "set", None),
            (400, "a bad name", Some("Error")),
            ERR_401,
            (
                422,
                "a value shorter than 4 characters (leading and trailing white space aside)",
                Some("Error"),
            ),
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/secrets/{var}",
        summary: "Remove a global secret",
        permission: Permission::Edit,
        query: &[],
        body: None,
        responses: &[
            (204, "removed", None),
            (404, "no such secret", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "put",
        path: "/api/v1/pipelines/{source}/{name}/secrets/{var}",
        summary: "Set a secret of one pipeline (write-only, encrypted at rest; protected unless `unprotected` is true)",
        permission: Permission::Edit,
        query: &[],
        body: Some("SecretValue"),
        responses: &[
            (204, "set", None),
            (400, "a bad name", Some("Error")),
            ERR_401,
            (
                422,
                "a value shorter than 4 characters (leading and trailing white space aside)",
                Some("Error"),
            ),
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/pipelines/{source}/{name}/secrets/{var}",
        summary: "Remove a secret of one pipeline",
        permission: Permission::Edit,
        query: &[],
        body: None,
        responses: &[
            (204, "removed", None),
            (404, "no such secret", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/sources",
        summary: "Watched repositories: the head last reconciled, when, and the last sync error",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[(200, "the sources", Some("SourceList")), ERR_401],
    },
    Route {
        method: "post",
        path: "/api/v1/sources/{source}/sync",
        summary: "Fetch and reconcile a watched repository now",
        permission: Permission::Admin,
        query: &[],
        body: None,
        responses: &[
            (202, "a sync is on its way", Some("Accepted")),
            ERR_401,
            (404, "no such source", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/marketplace/resources",
        summary: "Published resources, by name; unpublished ones only with all=true",
        permission: Permission::Read,
        query: &[
            (
                "type",
                "a category (`database`) or a kind (`postgresql`, a publisher's `type` property)",
            ),
            ("tag", "only resources with this tag"),
            (
                "search",
                "text in the name, description, kind or tags, in any case",
            ),
            ("all", "true: unpublished resources too"),
        ],
        body: None,
        responses: &[
            (200, "the resources", Some("ResourceList")),
            (400, "`all` is neither true nor false", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/marketplace/resources/{resource}",
        summary: "One resource with every version, its environments and credential keys; secret values never",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[
            (200, "the resource", Some("ResourceDetail")),
            ERR_401,
            (404, "no such resource", Some("Error")),
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/marketplace/resources/{resource}",
        summary: "Unpublish a resource, or one environment of it (env=E); its versions are kept, connections stop resolving to what was unpublished until it is published again",
        permission: Permission::Edit,
        query: &[("env", "unpublish only this environment")],
        body: None,
        responses: &[
            (200, "unpublished", Some("Resource")),
            ERR_401,
            (404, "no such resource", Some("Error")),
            (422, "the resource has no such environment", Some("Error")),
        ],
    },
    Route {
        method: "post",
        path: "/api/v1/marketplace/resources/{resource}/deprecate",
        summary: "Mark a resource deprecated, with the reason (it stays listed and connectable); a null reason takes the mark back",
        permission: Permission::Edit,
        query: &[],
        body: Some("Deprecate"),
        responses: &[
            (200, "marked", Some("Resource")),
            (400, "the body is not the expected JSON", Some("Error")),
            ERR_401,
            (404, "no such resource", Some("Error")),
            (422, "an empty reason", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/connections",
        summary: "Connections, by name",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[(200, "the connections", Some("ConnectionList")), ERR_401],
    },
    Route {
        method: "post",
        path: "/api/v1/connections",
        summary: "Create a connection to a resource's environment, within a version constraint, with credential keys mapped to environment variables (default `<CONNECTION>_<KEY>` upper-cased)",
        permission: Permission::Edit,
        query: &[],
        body: Some("NewConnection"),
        responses: &[
            (
                201,
                "created, with what it resolves to (secret values left out)",
                Some("ResolvedConnection"),
            ),
            (400, "the body is not the expected JSON", Some("Error")),
            ERR_401,
            (404, "no such resource", Some("Error")),
            (
                409,
                "a connection of that name exists, or the resource or environment was unpublished",
                Some("Error"),
            ),
            (
                422,
                "a bad name, environment, version constraint, key or variable name",
                Some("Error"),
            ),
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/connections/{connection}",
        summary: "One connection with what it resolves to now (secret values left out); when it no longer resolves, the connection with `error` saying why",
        permission: Permission::Read,
        query: &[],
        body: None,
        responses: &[
            (200, "the connection", Some("ConnectionState")),
            ERR_401,
            (404, "no such connection", Some("Error")),
        ],
    },
    Route {
        method: "delete",
        path: "/api/v1/connections/{connection}",
        summary: "Remove a connection",
        permission: Permission::Edit,
        query: &[],
        body: None,
        responses: &[
            (204, "removed", None),
            ERR_401,
            (404, "no such connection", Some("Error")),
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/connections/{connection}/credentials",
        summary: "The connection's credentials with their values, secret ones included, as the environment variables it hands over",
        permission: Permission::Credentials,
        query: &[],
        body: None,
        responses: &[
            (
                200,
                "the connection, resolved, with values",
                Some("ResolvedConnection"),
            ),
            ERR_401,
            (
                404,
                "no such connection, or its resource is gone",
                Some("Error"),
            ),
            (
                409,
                "the resource or the environment was unpublished",
                Some("Error"),
            ),
            (
                422,
                "no version matches the connection's constraint",
                Some("Error"),
            ),
        ],
    },
    Route {
        method: "get",
        path: "/api/v1/audit",
        summary: "The audit log, newest first: every state change and credential read (who, via api, web, webhook, comment or schedule, from where, what, the answer's status); page on with `before` = the answer's `next`",
        permission: Permission::Admin,
        query: &[
            ("who", "only entries of this token, user or forge login"),
            (
                "text",
                "only entries whose action or target contains this text",
            ),
            (
                "before",
                "only entries older than this entry id (the `next` of the previous page)",
            ),
            ("limit", "at most this many entries (1 to 1000, default 50)"),
        ],
        body: None,
        responses: &[
            (200, "the entries", Some("AuditList")),
            (400, "a bad limit", Some("Error")),
            ERR_401,
        ],
    },
    Route {
        method: "post",
        path: "/hooks/{forge}",
        summary: "Webhook receiver for github, gitlab or bitbucket: checked against the repository's webhook_secret, stored, then processed",
        permission: Permission::Signed,
        query: &[],
        body: None,
        responses: &[
            (
                202,
                "stored for processing (or a duplicate delivery, or an event Gantry does not act on, with the reason)",
                Some("Accepted"),
            ),
            (
                400,
                "no delivery id, or a payload that is not the forge's",
                Some("Error"),
            ),
            (
                401,
                "missing or wrong signature or token, or a body that names no configured repository; nothing was stored",
                Some("Error"),
            ),
            (
                429,
                "too many deliveries from this address failed their check in the last minute (with Retry-After)",
                Some("Error"),
            ),
            (
                404,
                "no [[repos]] entry for the repository in the payload, or an unknown forge",
                Some("Error"),
            ),
            (413, "the body is larger than 5 MiB", Some("Error")),
        ],
    },
];

/// The handler of a documented route; `None` if the table names one this file does not serve.
pub fn handler(method: &str, path: &str) -> Option<MethodRouter<AppState>> {
    Some(match (method, path) {
        ("get", "/healthz") => get(|| async { "ok\n" }),
        ("get", "/readyz") => get(readyz),
        ("get", "/api/v1/openapi.json") => get(|| async { Json(super::openapi::served()) }),
        ("get", "/metrics") => get(metrics),
        ("get", "/api/v1/pipelines") => get(list_pipelines),
        ("get", "/api/v1/pipelines/{source}/{name}") => get(get_pipeline),
        ("put", "/api/v1/pipelines/{source}/{name}") => put(put_pipeline),
        ("delete", "/api/v1/pipelines/{source}/{name}") => delete(delete_pipeline),
        ("post", "/api/v1/pipelines/{source}/{name}/rollback") => post(rollback),
        ("post", "/api/v1/pipelines/{source}/{name}/runs") => post(start_run),
        ("get", "/api/v1/runs") => get(list_runs),
        ("get", "/api/v1/runs/{id}") => get(get_run),
        ("post", "/api/v1/runs/{id}/cancel") => post(cancel_run),
        ("post", "/api/v1/runs/{id}/rerun") => post(rerun),
        ("post", "/api/v1/runs/{id}/retry") => post(retry),
        ("get", "/api/v1/runs/{id}/logs") => get(logs),
        ("get", "/api/v1/variables") => get(list_vars),
        ("put", "/api/v1/variables/{var}") => put(put_global::<false>),
        ("delete", "/api/v1/variables/{var}") => delete(delete_global::<false>),
        ("put", "/api/v1/pipelines/{source}/{name}/variables/{var}") => put(put_scoped::<false>),
        ("delete", "/api/v1/pipelines/{source}/{name}/variables/{var}") => {
            delete(delete_scoped::<false>)
        }
        ("get", "/api/v1/secrets") => get(list_secrets),
        ("put", "/api/v1/secrets/{var}") => put(put_global::<true>),
        ("delete", "/api/v1/secrets/{var}") => delete(delete_global::<true>),
        ("put", "/api/v1/pipelines/{source}/{name}/secrets/{var}") => put(put_scoped::<true>),
        ("delete", "/api/v1/pipelines/{source}/{name}/secrets/{var}") => {
            delete(delete_scoped::<true>)
        }
        ("get", "/api/v1/sources") => get(list_sources),
        ("post", "/api/v1/sources/{source}/sync") => post(sync_source),
        ("get", "/api/v1/marketplace/resources") => get(market::list_resources),
        ("get", "/api/v1/marketplace/resources/{resource}") => get(market::get_resource),
        ("delete", "/api/v1/marketplace/resources/{resource}") => delete(market::unpublish),
        ("post", "/api/v1/marketplace/resources/{resource}/deprecate") => post(market::deprecate),
        ("get", "/api/v1/connections") => get(market::list_connections),
        ("post", "/api/v1/connections") => post(market::create_connection),
        ("get", "/api/v1/connections/{connection}") => get(market::get_connection),
        ("delete", "/api/v1/connections/{connection}") => delete(market::delete_connection),
        ("get", "/api/v1/connections/{connection}/credentials") => get(market::credentials),
        ("get", "/api/v1/audit") => get(super::audit::list),
        ("post", "/hooks/{forge}") => post(super::hooks::receive),
        _ => return None,
    })
}

// ---- pipelines -------------------------------------------------------------------------------

/// The newest run of each pipeline, from one pass over the newest runs.
fn last_runs(
    state: &AppState,
    wanted: usize,
) -> Result<BTreeMap<(String, String), RunRecord>, StoreError> {
    let mut out = BTreeMap::new();
    for run in state.store.list_runs(None, 5_000)? {
        if out.len() >= wanted {
            break;
        }
        out.entry((run.source.clone(), run.pipeline.clone()))
            .or_insert(run);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct SourceQuery {
    source: Option<String>,
}

async fn list_pipelines(
    State(state): State<AppState>,
    Query(q): Query<SourceQuery>,
) -> ApiResult<Json<views::api::PipelineList>> {
    let pipelines = state.store.list_pipelines(q.source.as_deref())?;
    let last = last_runs(&state, pipelines.len())?;
    let pipelines = pipelines
        .iter()
        .map(|p| views::api::Pipeline::of(p, last.get(&(p.source.clone(), p.name.clone()))))
        .collect();
    Ok(Json(views::api::PipelineList { pipelines }))
}

fn find_pipeline(state: &AppState, source: &str, name: &str) -> ApiResult<PipelineRecord> {
    state.store.get_pipeline(source, name)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no pipeline `{source}/{name}` (GET /api/v1/pipelines lists them)"),
        )
    })
}

async fn get_pipeline(
    State(state): State<AppState>,
    Path((source, name)): Path<(String, String)>,
) -> ApiResult<Json<views::api::PipelineDetail>> {
    let record = find_pipeline(&state, &source, &name)?;
    let last = state
        .store
        .list_runs(Some(&format!("{source}/{name}")), 1)?
        .into_iter()
        .next();
    let versions = state.store.versions(&source, &name)?;
    Ok(Json(views::api::PipelineDetail::of(
        &record,
        last.as_ref(),
        &versions,
    )))
}

fn require_local(source: &str) -> ApiResult<()> {
    if source == LOCAL_SOURCE {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "pipelines of `{source}` come from its repository; change them there (only \
                 `{LOCAL_SOURCE}` pipelines are defined through the API)"
            ),
        ))
    }
}

/// A local pipeline's definition; the body may also be the YAML itself, sent as
/// `application/yaml`.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "PipelineSpec")]
pub(super) struct SpecBody {
    /// The pipeline's YAML.
    #[schemars(length(min = 1))]
    spec: String,
    /// The executor its runs go to (a name of `[executor.NAME]`); `""` for the default; left
    /// as it was when absent.
    #[serde(default)]
    executor: Option<String>,
}

/// Accepts `{"spec": "...", "executor": "..."}` or the YAML text itself; returns the text and the
/// executor the body asks for.
fn spec_text(headers: &HeaderMap, body: &Bytes) -> ApiResult<(String, Option<String>)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let parsed: SpecBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"spec\": \"<pipeline YAML>\"}}: {e}"),
            )
        })?;
        Ok((parsed.spec, parsed.executor))
    } else {
        String::from_utf8(body.to_vec())
            .map(|text| (text, None))
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the pipeline text is not UTF-8"))
    }
}

async fn put_pipeline(
    State(state): State<AppState>,
    Path((source, name)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    require_local(&source)?;
    let (text, executor) = spec_text(&headers, &body)?;
    // Checked before anything is written: a bad name changes nothing.
    if let Some(e) = executor.as_deref()
        && !e.is_empty()
        && !state.executors.iter().any(|known| known == e)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no executor `{e}`; the executors are {}",
                state.executors.join(", ")
            ),
        ));
    }
    let existed = state.store.get_pipeline(&source, &name)?.is_some();
    let origin = format!("{LOCAL_SOURCE}/{name}");
    let store = state.store.clone();
    let applied = blocking(move || {
        let mut applied = catalog::apply_local(&store, &text, &origin, Some(&name))?;
        if let Some(e) = executor {
            let chosen = (!e.is_empty()).then_some(e);
            applied.record = catalog::set_local_executor(&store, &name, chosen)?;
        }
        Ok::<_, catalog::CatalogError>(applied)
    })
    .await??;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = views::api::AppliedPipeline {
        pipeline: views::api::Pipeline::of(&applied.record, None),
        changed: applied.changed,
    };
    Ok((status, Json(body)).into_response())
}

async fn delete_pipeline(
    State(state): State<AppState>,
    Path((source, name)): Path<(String, String)>,
) -> ApiResult<Json<views::api::Pipeline>> {
    require_local(&source)?;
    let record = catalog::delete_local(&state.store, &name)?;
    Ok(Json(views::api::Pipeline::of(&record, None)))
}

/// The version a local pipeline goes back to.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Rollback")]
pub(super) struct RollbackBody {
    /// A number, so that `2.0` (an integer in JSON Schema's eyes) is version 2.
    #[schemars(with = "u32", range(min = 1, max = 4_294_967_295u32))]
    to: serde_json::Number,
}

async fn rollback(
    State(state): State<AppState>,
    Path((source, name)): Path<(String, String)>,
    Body(body): Body,
) -> ApiResult<Json<views::api::Pipeline>> {
    require_local(&source)?;
    let RollbackBody { to } = parse_json(&body, "{\"to\": <version number>}")?;
    let to = to
        .as_u64()
        .or_else(|| {
            to.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= f64::from(u32::MAX))
                .map(|f| f as u64)
        })
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`to` is a version number (1, 2, ...), not {to}"),
            )
        })?;
    let applied = catalog::rollback_local(&state.store, &name, to)?;
    Ok(Json(views::api::Pipeline::of(&applied.record, None)))
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &Bytes,
    shape: &str,
) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON shaped {shape}: {e}"),
        )
    })
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("a worker stopped: {e}"),
        )
    })
}

// ---- runs ------------------------------------------------------------------------------------

/// A run's parameter values.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[schemars(rename = "RunRequest")]
pub(super) struct RunBody {
    /// By name; each is checked against the pipeline's declaration (422 says what is wrong).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamInput>")]
    parameters: BTreeMap<String, Value>,
}

/// A parameter's value as a request may give it: text, a number or a boolean.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only: the values are read as JSON and checked by `param_text`
enum ParamInput {
    Text(String),
    Number(f64),
    Flag(bool),
}

/// Parameter values as the text the checks take: strings as they are, numbers and booleans as
/// written in JSON.
fn param_text(name: &str, v: &Value) -> ApiResult<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("parameter `{name}` must be a string, number or boolean"),
        )),
    }
}

/// The pipeline and version a new run of `source/name` uses, or why there is none.
fn runnable(
    state: &AppState,
    source: &str,
    name: &str,
) -> ApiResult<(crate::spec::model::Pipeline, u32)> {
    let record = find_pipeline(state, source, name)?;
    if record.retired {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{source}/{name}` is retired: its file is gone from the branch"),
        ));
    }
    let Some(version) = record.version else {
        let first = record
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{source}/{name}` has no valid version yet{first}"),
        ));
    };
    let text = state
        .store
        .get_version(source, name, version)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("version {version} of `{source}/{name}` is missing from the store"),
            )
        })?;
    let pipeline = crate::spec::check(&text.text).pipeline.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("version {version} of `{source}/{name}` no longer passes validation"),
        )
    })?;
    Ok((pipeline, version))
}

/// The commit a manual run of version `version` of `source/name` runs at: the branch head the
/// source was last reconciled at, or the version's own commit while a reconcile is recording it
/// (its pipelines are written before the source's new head, so for a moment the head is older
/// than the version).
fn git_for(
    state: &AppState,
    source: &str,
    name: &str,
    version: u32,
) -> ApiResult<Option<crate::executor::GitInfo>> {
    let Some(repo) = state.repos.get(source) else {
        return Ok(None);
    };
    let synced = state.store.source_state(source)?;
    let mut head = synced.head;
    if let Some(v) = state.store.get_version(source, name, version)?
        && let Some(commit) = v.commit
        && synced.synced_at.is_none_or(|at| v.created_at > at)
    {
        head = Some(commit);
    }
    Ok(head.map(|sha| crate::executor::GitInfo {
        sha,
        reference: format!("refs/heads/{}", repo.source.branch),
        repo: repo.forge_id.clone(),
    }))
}

pub(super) fn who(headers: &HeaderMap) -> Option<String> {
    headers
        .get(super::TOKEN_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|n| format!("api ({n})"))
}

async fn start_run(
    State(state): State<AppState>,
    Path((source, name)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let RunBody { parameters } = if body.is_empty() {
        RunBody::default()
    } else {
        parse_json(&body, "{\"parameters\": {\"name\": value}}")?
    };
    let mut params = BTreeMap::new();
    for (k, v) in &parameters {
        params.insert(k.clone(), param_text(k, v)?);
    }
    let run = submit_manual(&state, source, name, params, who(&headers)).await?;
    Ok((StatusCode::CREATED, Json(views::api::Run::from(run))).into_response())
}

/// Queues a manual run of `source/name` with parameter values as text, started by `by` (the API
/// token's or the page user's words); the queue checks the values.
pub(super) async fn submit_manual(
    state: &AppState,
    source: String,
    name: String,
    params: BTreeMap<String, String>,
    by: Option<String>,
) -> ApiResult<RunRecord> {
    let (pipeline, version) = runnable(state, &source, &name)?;
    if !pipeline.on.manual {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{source}/{name}` does not allow manual runs (on.manual: false)"),
        ));
    }
    let submit = Submit {
        git: git_for(state, &source, &name, version)?,
        source,
        pipeline,
        version,
        params,
        trigger: Trigger {
            kind: "manual".into(),
            detail: by,
        },
        pr: None,
        idempotency_key: None,
        retry_of: None,
    };
    let queue = state.queue.clone();
    Ok(blocking(move || queue.submit(submit)).await??)
}

/// The pipeline and version a new run of `source/name` uses, for the run form.
pub(super) fn runnable_pipeline(
    state: &AppState,
    source: &str,
    name: &str,
) -> ApiResult<crate::spec::model::Pipeline> {
    runnable(state, source, name).map(|(p, _)| p)
}

#[derive(Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<views::api::RunList>> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and 1000, not {limit}"),
        ));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(serde_json::from_value::<RunStatus>(json!(s)).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown status `{s}`: expected queued, running, succeeded, failed, \
                         cancelled, interrupted or skipped"
                ),
            )
        })?),
    };
    let runs = match status {
        None => state.store.list_runs(q.pipeline.as_deref(), limit)?,
        Some(st) => state
            .store
            .list_runs(q.pipeline.as_deref(), 100_000)?
            .into_iter()
            .filter(|r| r.status == st)
            .take(limit)
            .collect(),
    };
    Ok(Json(views::api::RunList::of(runs)))
}

async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<views::api::RunDetail>> {
    let run = state.store.find_run(&id)?;
    let steps = state.store.steps(&run.id)?;
    let outputs = state.store.outputs(&run.id)?;
    let published = crate::marketplace::run_publications(&state.store, &run.id)?;
    Ok(Json(views::api::RunDetail::of(
        run, steps, outputs, published,
    )))
}

async fn cancel_run(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let run = cancel_of(&state, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(views::api::Run::from(run))).into_response())
}

async fn rerun(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = rerun_of(&state, &id, who(&headers)).await?;
    Ok((StatusCode::CREATED, Json(views::api::Run::from(run))).into_response())
}

/// Queues a new run like run `id` (same version, parameters, commit and pull request), started
/// by `by`.
pub(super) async fn rerun_of(
    state: &AppState,
    id: &str,
    by: Option<String>,
) -> ApiResult<RunRecord> {
    again(state, id, by, false).await
}

/// Queues a retry of run `id` from its failed step: the same version, parameters and commit; the
/// steps that succeeded there are not run again and their outputs are reused; checkouts run
/// again. Only a run that ended without succeeding can be retried.
pub(super) async fn retry_of(
    state: &AppState,
    id: &str,
    by: Option<String>,
) -> ApiResult<RunRecord> {
    again(state, id, by, true).await
}

async fn again(
    state: &AppState,
    id: &str,
    by: Option<String>,
    retry: bool,
) -> ApiResult<RunRecord> {
    let old = state.store.find_run(id)?;
    if retry && (old.status.is_active() || old.status == RunStatus::Succeeded) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run {} is {}: only a run that ended without succeeding is retried from its failed \
                 step (POST /api/v1/runs/{}/rerun runs it again whole)",
                old.id,
                old.status.as_str(),
                old.id
            ),
        ));
    }
    let record = find_pipeline(state, &old.source, &old.pipeline)?;
    if record.retired {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{}/{}` is retired", old.source, old.pipeline),
        ));
    }
    let text = state
        .store
        .get_version(&old.source, &old.pipeline, old.version)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("version {} of the pipeline is not stored", old.version),
            )
        })?;
    let pipeline = crate::spec::check(&text.text).pipeline.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "that version no longer passes validation",
        )
    })?;
    let submit = Submit {
        source: old.source.clone(),
        pipeline,
        version: old.version,
        params: run::param_texts(&old),
        trigger: Trigger {
            // A rerun of a push or pull request run reports to the forge like the first one.
            kind: if crate::report::reported(&old) {
                old.trigger.kind.clone()
            } else {
                "manual".into()
            },
            detail: Some({
                let what = if retry {
                    format!("retry of #{} from its failed step", old.number)
                } else {
                    format!("rerun of #{}", old.number)
                };
                match by {
                    Some(w) => format!("{what} by {w}"),
                    None => what,
                }
            }),
        },
        git: old.git.clone(),
        pr: old.pr,
        idempotency_key: None,
        retry_of: retry.then(|| old.id.clone()),
    };
    let queue = state.queue.clone();
    Ok(blocking(move || queue.submit(submit)).await??)
}

async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = retry_of(&state, &id, who(&headers)).await?;
    Ok((StatusCode::CREATED, Json(views::api::Run::from(run))).into_response())
}

/// Cancels run `id` (an id or a unique prefix).
pub(super) async fn cancel_of(state: &AppState, id: &str) -> ApiResult<RunRecord> {
    let run = state.store.find_run(id)?;
    let queue = state.queue.clone();
    Ok(blocking(move || queue.cancel(&run.id)).await??)
}

#[derive(Deserialize)]
struct LogsQuery {
    step: Option<String>,
    #[serde(default)]
    follow: bool,
}

fn step_index(run: &RunRecord, step: Option<&str>) -> ApiResult<Option<usize>> {
    match step {
        None => Ok(None),
        Some(name) => run
            .steps
            .iter()
            .position(|s| s == name)
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "run {} has no step `{name}` (steps: {})",
                        run.id,
                        run.steps.join(", ")
                    ),
                )
            }),
    }
}

fn log_line(run: &RunRecord, one_step: bool, step: usize, text: &str) -> String {
    if one_step {
        text.to_string()
    } else {
        let name = run.steps.get(step).map(String::as_str).unwrap_or("?");
        format!("[{name}] {text}")
    }
}

async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let run = state.store.find_run(&id)?;
    let step = step_index(&run, q.step.as_deref())?;
    if !q.follow {
        // Streamed a page at a time: a log of tens of MiB is never held in memory whole.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut cursor = None;
            loop {
                let page = store.logs_page(&run.id, step, cursor.as_ref(), LOG_PAGE_BYTES);
                let Ok((lines, next)) = page else { return };
                if lines.is_empty() {
                    return;
                }
                cursor = Some(next);
                let mut out = String::new();
                for (s, line) in &lines {
                    out.push_str(&log_line(&run, step.is_some(), *s, &line.text));
                    out.push('\n');
                }
                if tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                    return;
                }
            }
        });
        let body = axum::body::Body::from_stream(tokio_stream_from(rx));
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let mut changes = state.queue.changes();
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut cursor = None;
        loop {
            // Read the state first, then the lines: lines written before the end are never lost.
            let current = match store.get_run(&run.id) {
                Ok(Some(r)) => r,
                _ => break,
            };
            let finished = match step {
                Some(i) => {
                    !current.status.is_active()
                        || store
                            .steps(&run.id)
                            .ok()
                            .and_then(|s| s.get(i).map(|s| s.state.is_done()))
                            .unwrap_or(true)
                }
                None => !current.status.is_active(),
            };
            let Ok((lines, next)) = store.logs_page(&run.id, step, cursor.as_ref(), LOG_PAGE_BYTES)
            else {
                break;
            };
            cursor = Some(next);
            // More may wait than one page held: read on before waiting for news.
            let more = !lines.is_empty();
            for (s, line) in lines {
                let data = log_line(&current, step.is_some(), s, &line.text);
                if tx
                    .send(Ok(SseEvent::default().event("log").data(data)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if more {
                continue;
            }
            if finished {
                let end = json!({ "status": current.status, "message": current.message });
                let _ = tx
                    .send(Ok(SseEvent::default().event("end").data(end.to_string())))
                    .await;
                return;
            }
            // Wake on the next recorded batch, or poll once a second to be safe; end when the
            // server stops, so it is not kept waiting for a run that may take hours.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()) => {}
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Log bytes (as stored) read from the store at a time for one answer.
const LOG_PAGE_BYTES: usize = 1 << 20;

/// A stream over a channel receiver.
pub(super) fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

// ---- variables and secrets ---------------------------------------------------------------------

/// A variable's value.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Value")]
pub(super) struct VariableBody {
    value: String,
    /// Refused with a 400 that says why: variables go to every run.
    #[serde(default)]
    #[schemars(skip)]
    unprotected: Option<bool>,
}

/// A secret's value, and which runs it is released to.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "SecretValue")]
pub(super) struct SecretBody {
    /// At least 4 characters once leading and trailing white space is left off (masking a
    /// shorter value would hide ordinary text).
    #[schemars(pattern(r"\S[\s\S]{2,}\S"))]
    value: String,
    /// Release the secret to runs at any ref (feature branches, pull request heads, forks); by
    /// default only runs at the repository's protected refs get it.
    #[serde(default)]
    unprotected: Option<bool>,
}

fn check_name(name: &str) -> ApiResult<()> {
    if values::is_identifier(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid name `{name}`: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$"),
        ))
    }
}

async fn list_vars(State(state): State<AppState>) -> ApiResult<Json<views::api::VariableList>> {
    Ok(Json(views::api::VariableList {
        variables: state.store.list_vars()?,
    }))
}

async fn list_secrets(State(state): State<AppState>) -> ApiResult<Json<views::api::SecretList>> {
    Ok(Json(views::api::SecretList {
        secrets: state.store.list_secrets()?,
    }))
}

#[derive(Clone, Copy)]
enum Kind {
    Var,
    Secret,
}

fn set_config(
    state: &AppState,
    kind: Kind,
    scope: Option<String>,
    name: &str,
    body: &Bytes,
) -> ApiResult<StatusCode> {
    check_name(name)?;
    let (value, unprotected) = match kind {
        Kind::Var => {
            let VariableBody { value, unprotected } = parse_json(body, "{\"value\": \"...\"}")?;
            (value, unprotected)
        }
        Kind::Secret => {
            let SecretBody { value, unprotected } =
                parse_json(body, "{\"value\": \"...\", \"unprotected\": false}")?;
            (value, unprotected)
        }
    };
    match kind {
        Kind::Var if unprotected.is_some() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`unprotected` applies to secrets only; variables go to every run",
            ));
        }
        Kind::Var => state.store.set_var(scope.as_deref(), name, &value)?,
        Kind::Secret => {
            let release = if unprotected.unwrap_or(false) {
                SecretRelease::Unprotected
            } else {
                SecretRelease::Protected
            };
            state
                .store
                .set_secret_with(scope.as_deref(), name, &value, release)?
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn remove_config(
    state: &AppState,
    kind: Kind,
    scope: Option<String>,
    name: &str,
) -> ApiResult<StatusCode> {
    let existed = match kind {
        Kind::Var => state.store.remove_var(scope.as_deref(), name)?,
        Kind::Secret => state.store.remove_secret(scope.as_deref(), name)?,
    };
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        let what = match kind {
            Kind::Var => "variable",
            Kind::Secret => "secret",
        };
        let scope = scope.map(|s| format!(" of `{s}`")).unwrap_or_default();
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {what} `{name}`{scope}"),
        ))
    }
}

/// `Kind` as a const parameter, so one handler serves variables and secrets.
const fn kind(secret: bool) -> Kind {
    if secret { Kind::Secret } else { Kind::Var }
}

async fn put_global<const SECRET: bool>(
    State(state): State<AppState>,
    Path(var): Path<String>,
    Body(body): Body,
) -> ApiResult<StatusCode> {
    set_config(&state, kind(SECRET), None, &var, &body)
}

async fn delete_global<const SECRET: bool>(
    State(state): State<AppState>,
    Path(var): Path<String>,
) -> ApiResult<StatusCode> {
    remove_config(&state, kind(SECRET), None, &var)
}

async fn put_scoped<const SECRET: bool>(
    State(state): State<AppState>,
    Path((source, name, var)): Path<(String, String, String)>,
    Body(body): Body,
) -> ApiResult<StatusCode> {
    let scope = run::config_scope(&source, &name);
    set_config(&state, kind(SECRET), Some(scope), &var, &body)
}

async fn delete_scoped<const SECRET: bool>(
    State(state): State<AppState>,
    Path((source, name, var)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let scope = run::config_scope(&source, &name);
    remove_config(&state, kind(SECRET), Some(scope), &var)
}

// ---- sources ---------------------------------------------------------------------------------

async fn list_sources(State(state): State<AppState>) -> ApiResult<Json<views::api::SourceList>> {
    let mut sources = Vec::new();
    for (name, repo) in state.repos.iter() {
        let s = state.store.source_state(name)?;
        sources.push(views::api::SourceStatus {
            name: name.clone(),
            url: crate::source::mirror::redact_url(&repo.source.url),
            branch: repo.source.branch.clone(),
            head: s.head,
            synced_at: s.synced_at,
            error: s.error,
        });
    }
    Ok(Json(views::api::SourceList { sources }))
}

async fn sync_source(
    State(state): State<AppState>,
    Path(source): Path<String>,
) -> ApiResult<Response> {
    let Some(repo) = state.repos.get(&source) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no watched repository `{source}`"),
        ));
    };
    repo.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(views::api::Accepted {
            accepted: true,
            duplicate: None,
            delivery: None,
            source: Some(source),
            reason: None,
        }),
    )
        .into_response())
}
