//! The marketplace's endpoints: resources (`/api/v1/marketplace/resources`) and connections
//! (`/api/v1/connections`). Their routes are documented in `api::ROUTES` with the others.
//! Secret credential values leave the server only from `/credentials`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;

use super::extract::{Body, Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::AppState;
use super::api::{ApiError, blocking, parse_json};
use crate::marketplace::{self, Filter, MarketError, NewConnection};
use crate::views;

type ApiResult<T> = Result<T, ApiError>;

impl From<MarketError> for ApiError {
    fn from(e: MarketError) -> ApiError {
        let e = match e {
            MarketError::Store(s) => return s.into(),
            e => e,
        };
        let status = match &e {
            MarketError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            MarketError::NoSuchResource(_) | MarketError::NoSuchConnection(_) => {
                StatusCode::NOT_FOUND
            }
            MarketError::ConnectionExists(_)
            | MarketError::Unpublished(_)
            | MarketError::Withdrawn { .. }
            | MarketError::NotOwner { .. }
            | MarketError::Refused(_) => StatusCode::CONFLICT,
            MarketError::BadName { .. }
            | MarketError::NoSuchEnvironment { .. }
            | MarketError::BadVersionReq(_)
            | MarketError::NoMatch { .. }
            | MarketError::UnknownKey { .. }
            | MarketError::BadVarName(_)
            | MarketError::SameVar { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    tag: Option<String>,
    search: Option<String>,
    /// Read by hand, so that a bad value gets the API's JSON error.
    all: Option<String>,
}

pub(super) async fn list_resources(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<views::api::ResourceList>> {
    let filter = Filter {
        kind: q.kind.filter(|s| !s.is_empty()),
        tag: q.tag.filter(|s| !s.is_empty()),
        search: q.search.filter(|s| !s.is_empty()),
        all: match q.all.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`all` is true or false, not `{other}`"),
                ));
            }
        },
    };
    let resources = marketplace::summaries(&state.store, &filter)?;
    Ok(Json(views::api::ResourceList { resources }))
}

pub(super) async fn get_resource(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<marketplace::ResourceView>> {
    Ok(Json(marketplace::show(&state.store, &name)?))
}

#[derive(Deserialize)]
pub(super) struct UnpublishQuery {
    env: Option<String>,
}

pub(super) async fn unpublish(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<UnpublishQuery>,
) -> ApiResult<Json<marketplace::ResourceSummary>> {
    let store = state.store.clone();
    let env = q.env.filter(|e| !e.is_empty());
    let record =
        blocking(move || marketplace::unpublish(&store, &name, env.as_deref(), Utc::now()))
            .await??;
    Ok(Json(marketplace::summary(&state.store, record)?))
}

/// Why a resource is deprecated; null takes the mark back.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Deprecate")]
pub(super) struct DeprecateBody {
    #[schemars(length(min = 1), pattern(r"\S"))]
    reason: Option<String>,
}

pub(super) async fn deprecate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<marketplace::ResourceSummary>> {
    let DeprecateBody { reason } =
        parse_json(&body, "{\"reason\": \"...\"} (null: no longer deprecated)")?;
    let reason = reason.map(|r| r.trim().to_string());
    if reason.as_deref() == Some("") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give the reason the resource is deprecated (null takes the mark back)",
        ));
    }
    let store = state.store.clone();
    let record =
        blocking(move || marketplace::deprecate(&store, &name, reason.as_deref(), Utc::now()))
            .await??;
    Ok(Json(marketplace::summary(&state.store, record)?))
}

// ---- connections ----------------------------------------------------------------------------

/// A connection to make.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewConnection")]
pub(super) struct ConnectionBody {
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"))]
    name: String,
    resource: String,
    environment: String,
    /// A version number (`3`) or a semver requirement (`^1.2`); absent or empty: the newest.
    version: Option<String>,
    /// Who uses it: an application's name.
    consumer: Option<String>,
    /// Credential key to environment variable name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, EnvVarName>")]
    map: BTreeMap<String, String>,
}

/// An environment variable's name.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // a schema only: `map`'s values are read as strings and checked on creation
struct EnvVarName(#[schemars(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))] String);

pub(super) async fn create_connection(
    State(state): State<AppState>,
    Body(body): Body,
) -> ApiResult<Response> {
    let b: ConnectionBody = parse_json(
        &body,
        "{\"name\": \"...\", \"resource\": \"...\", \"environment\": \"...\", \"version\": \"^1\", \"consumer\": \"...\", \"map\": {\"KEY\": \"VAR\"}}",
    )?;
    let store = state.store.clone();
    let resolved = blocking(move || {
        marketplace::create_connection(
            &store,
            NewConnection {
                name: b.name,
                consumer: b.consumer,
                resource: b.resource,
                environment: b.environment,
                version: b.version,
                mapping: b.map,
            },
            Utc::now(),
        )
    })
    .await??;
    Ok((StatusCode::CREATED, Json(resolved)).into_response())
}

pub(super) async fn list_connections(
    State(state): State<AppState>,
) -> ApiResult<Json<views::api::ConnectionList>> {
    Ok(Json(views::api::ConnectionList {
        connections: state.store.list_connections()?,
    }))
}

/// The connection with what it resolves to now, or why it does not resolve.
pub(super) async fn get_connection(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<marketplace::ConnectionState>> {
    let store = state.store.clone();
    let found = blocking(move || marketplace::state(&store, &name, Utc::now())).await??;
    Ok(Json(found))
}

pub(super) async fn credentials(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<marketplace::Resolved>> {
    let store = state.store.clone();
    let resolved =
        blocking(move || marketplace::resolve(&store, &name, true, Utc::now())).await??;
    Ok(Json(resolved))
}

pub(super) async fn delete_connection(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let store = state.store.clone();
    blocking(move || marketplace::remove_connection(&store, &name)).await??;
    Ok(StatusCode::NO_CONTENT)
}
