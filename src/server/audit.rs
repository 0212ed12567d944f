//! The audit log's HTTP side: a layer that records every state-changing request and every
//! credential read that passed authentication (who, how, from where, what, and the answer's
//! status), and `GET /api/v1/audit`, which lists the log.

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;

use super::extract::Query;
use super::{AppState, Caller};
use crate::server::api::ApiError;
use crate::store::audit::{AuditEntry, AuditQuery};

/// Whether a request is one the log keeps: a change, or a read of credentials.
fn audited(method: &Method, path: &str) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    ) || path.ends_with("/credentials")
}

/// The layer: lets the request through, then records it when it is audited.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if !audited(&method, &path) {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let caller = request.extensions().get::<Caller>().cloned();
    let page_viewer = request
        .extensions()
        .get::<super::ui::Viewer>()
        .map(|v| v.caller.clone());
    let from = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let response = next.run(request).await;
    // Pages carry their caller in the viewer; the API in the request's `Caller`.
    let Some(caller) = caller.or(page_viewer) else {
        return response;
    };
    let via = if path.starts_with("/api/") && caller.via != "session" {
        "api"
    } else {
        "web"
    };
    let entry = AuditEntry {
        id: String::new(),
        at: chrono::Utc::now(),
        who: caller.name.clone().unwrap_or_else(|| "anonymous".into()),
        via: via.into(),
        action: format!("{method} {route}"),
        target: path,
        from,
        status: Some(response.status().as_u16()),
    };
    let store = state.store.clone();
    let written = tokio::task::spawn_blocking(move || store.audit(entry)).await;
    if let Ok(Err(e)) = written {
        tracing::warn!("cannot record a request in the audit log: {e}");
    }
    response
}

#[derive(Deserialize)]
pub struct AuditParams {
    who: Option<String>,
    text: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/audit`.
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<AuditParams>,
) -> Result<Json<crate::views::api::AuditList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and 1000, not {limit}"),
        ));
    }
    let query = AuditQuery {
        who: q.who,
        text: q.text,
        before: q.before,
        limit,
    };
    let store = state.store.clone();
    let (entries, more) = super::api::blocking(move || store.audit_entries(&query)).await??;
    let next = more.then(|| entries.last().map(|e| e.id.clone())).flatten();
    Ok(Json(crate::views::api::AuditList { entries, next }))
}
