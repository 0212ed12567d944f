//! Webhook receivers (`POST /hooks/{forge}`): verify, store, answer.
//!
//! The signature (or GitLab's token) is checked on the raw body before the body is parsed,
//! against the `webhook_secret` of the repositories the body claims to be about (a cheap peek at
//! its repository field), each distinct secret once, off the async threads when that is much
//! hashing. An unknown repository, a repository without a secret and a wrong signature get the
//! same 401: an unauthenticated caller learns nothing about the configuration (the server's log
//! says which it was). A body that names no configured repository costs no hashing at all, and a
//! source address whose deliveries keep failing is answered 429 for a while (`Failures`), so
//! unauthenticated requests stay cheap. A genuine delivery is stored under its delivery id and its body's sha256
//! (a redelivery or a replay of the same body under a new id finds it there and changes nothing)
//! and made durable (group commit) before the 2xx. Processing happens after, from the store, in
//! `intake`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};

use super::extract::{Body, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::AppState;
use super::api::ApiError;
use crate::forge::webhook::{self, Headers};
use crate::forge::{Forge, ForgeEvent};
use crate::intake::WatchedRepo;
use crate::store::{DeliveryRecord, StoreError};
use crate::views::api::Accepted;

/// Bytes of HMAC work above which verification moves to a blocking thread.
const INLINE_HASHING: usize = 256 * 1024;

struct HeaderView<'a>(&'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What became of a delivery answered 202, for the metrics (the status says the rest).
#[derive(Clone, Copy)]
struct Taken(&'static str);

/// An event Gantry does not act on, and why.
fn ignored(reason: String) -> Accepted {
    Accepted {
        accepted: false,
        duplicate: None,
        delivery: None,
        source: None,
        reason: Some(reason),
    }
}

fn taken(result: &'static str, status: StatusCode, body: Accepted) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(Taken(result));
    response
}

/// A delivery's result as a metric label: what a 202 said, else why it was refused.
fn result_of(response: &Response) -> &'static str {
    if let Some(Taken(result)) = response.extensions().get::<Taken>() {
        return result;
    }
    match response.status() {
        StatusCode::BAD_REQUEST => "malformed",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::NOT_FOUND => "unknown_forge",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_success() => "accepted",
        _ => "error",
    }
}

/// 503 with `Retry-After`: forges deliver again later.
fn come_back_later(message: String, seconds: &'static str) -> Response {
    let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static(seconds),
    );
    response
}

/// A delivery the store could not keep: never acknowledged. A forge redelivers on a 5xx.
fn unstored(e: StoreError) -> Response {
    come_back_later(format!("the delivery was not stored: {e}"), "10")
}

/// The one answer to a delivery that is not genuine for a configured repository.
/// It names only what the caller sent (the repository the body claims), never what is
/// configured.
/// Deliveries that failed their check, by source address, over a sliding window: past
/// [`Failures::LIMIT`] in [`Failures::WINDOW`] an address is answered 429 before anything is read.
#[derive(Default)]
pub struct Failures {
    by_addr: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    pub const WINDOW: Duration = Duration::from_secs(60);
    pub const LIMIT: u32 = 30;
    /// Addresses remembered at most; past it, windows that ended are forgotten first, then all.
    const MAX_ADDRS: usize = 10_000;

    /// Seconds until `addr` may try again, when it is over the limit.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<u64> {
        let map = self.by_addr.lock().ok()?;
        let (since, count) = map.get(&addr)?;
        let left = Self::WINDOW
            .checked_sub(now.duration_since(*since))
            .filter(|left| !left.is_zero())?;
        (*count >= Self::LIMIT).then(|| left.as_secs().max(1))
    }

    /// Counts one failed delivery from `addr`.
    pub fn note(&self, addr: IpAddr, now: Instant) {
        let Ok(mut map) = self.by_addr.lock() else {
            return;
        };
        if map.len() >= Self::MAX_ADDRS && !map.contains_key(&addr) {
            map.retain(|_, (since, _)| now.duration_since(*since) < Self::WINDOW);
            if map.len() >= Self::MAX_ADDRS {
                map.clear();
            }
        }
        let entry = map.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= Self::WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

fn not_genuine(forge: Forge, claimed: Option<&str>) -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!(
            "the delivery{} is not signed with the webhook_secret of a configured {forge} \
             repository; check the {} header and the secret in the webhook form",
            claimed.map(|n| format!(" about `{n}`")).unwrap_or_default(),
            webhook::signature_header(forge)
        ),
    )
    .into_response()
}

/// The repositories among `candidates` whose secret signed `body`: each distinct secret is
/// checked once (an organisation webhook shares one secret among many repositories).
fn verified_by(
    forge: Forge,
    headers: &[(String, String)],
    body: &[u8],
    candidates: &[Arc<WatchedRepo>],
) -> Vec<Arc<WatchedRepo>> {
    let mut by_secret: BTreeMap<&str, bool> = BTreeMap::new();
    candidates
        .iter()
        .filter(|r| match r.webhook_secret.as_deref() {
            Some(secret) => *by_secret
                .entry(secret)
                .or_insert_with(|| webhook::verify(forge, headers, body, secret).is_ok()),
            None => false,
        })
        .cloned()
        .collect()
}

/// `POST /hooks/{forge}`: `take`, counted in the metrics by forge and result.
pub async fn receive(
    state: State<AppState>,
    Path(forge): Path<String>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    let metrics = state.metrics.clone();
    let label = Forge::from_name(&forge).map_or("unknown", |f| f.as_str());
    let response = take(state, forge, peer, headers, body).await;
    metrics.delivery(label, result_of(&response));
    response
}

async fn take(
    State(state): State<AppState>,
    forge: String,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The connection's address; absent when the router is driven without a listener (tests).
    let peer = peer.map(|axum::Extension(ConnectInfo(addr))| addr.ip());
    if let Some(wait) = peer.and_then(|ip| state.hook_failures.blocked(ip, Instant::now())) {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many deliveries from this address failed their signature check; try again in {wait}s"
            ),
        )
        .into_response();
        if let Ok(value) = wait.to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
        return response;
    }
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
        return come_back_later(
            format!(
                "{} webhook deliveries are waiting to be processed (max_backlog); try again later",
                state.max_backlog
            ),
            "30",
        );
    }
    let view = HeaderView(&headers);
    // Only the repositories the body claims, and only when it carries a signature at all: a
    // body that names no configured repository (or none at all) costs no hashing.
    let read = webhook::read_body(forge, &body);
    let claimed = read.as_ref().ok().and_then(webhook::ReadBody::repo);
    let candidates: Vec<Arc<WatchedRepo>> = state
        .repos
        .values()
        .filter(|r| r.forge == Some(forge))
        .filter(|r| claimed.as_deref().is_some_and(|n| r.forge_id == n))
        .cloned()
        .collect();
    let signed = view
        .header(webhook::signature_header(forge))
        .is_some_and(|v| !v.trim().is_empty());
    let secrets = candidates
        .iter()
        .filter_map(|r| r.webhook_secret.as_deref())
        .collect::<std::collections::BTreeSet<&str>>()
        .len();
    let no_candidates = candidates.is_empty();
    let verified = if !signed || secrets == 0 {
        Vec::new()
    } else {
        let signature = webhook::signature_header(forge);
        let auth: Vec<(String, String)> = view
            .header(signature)
            .map(|v| vec![(signature.to_string(), v.to_string())])
            .unwrap_or_default();
        if secrets * body.len() > INLINE_HASHING {
            let (body, candidates) = (body.clone(), candidates.clone());
            match tokio::task::spawn_blocking(move || verified_by(forge, &auth, &body, &candidates))
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("verifying the delivery stopped: {e}"),
                    )
                    .into_response();
                }
            }
        } else {
            verified_by(forge, &auth, &body, &candidates)
        }
    };
    let Some(first) = verified.first().cloned() else {
        tracing::info!(
            "refused a {forge} delivery{}: {}",
            claimed
                .as_deref()
                .map(|n| format!(" about `{n}`"))
                .unwrap_or_default(),
            if claimed.is_none() {
                "its body names no repository".to_string()
            } else if no_candidates {
                "no [[repos]] entry has that repo".to_string()
            } else if !signed {
                format!("no {} header", webhook::signature_header(forge))
            } else if secrets == 0 {
                "the repository has no webhook_secret".to_string()
            } else {
                "the signature does not match".to_string()
            }
        );
        // Only a check that cost hashing counts against the address: a body about no watched
        // repository costs nothing, and events about no repository at all (a GitHub App's
        // installation events, an organisation's ping) come from the forge's own addresses.
        if let Some(ip) = peer.filter(|_| signed && secrets > 0) {
            state.hook_failures.note(ip, Instant::now());
        }
        if claimed.is_none() {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "the {forge} delivery names no repository; Gantry takes deliveries about the \
                     repositories it watches"
                ),
            )
            .into_response();
        }
        return not_genuine(forge, claimed.as_deref());
    };
    // A failed store (the process is about to end): the forge is asked to come back later, when
    // a restarted Gantry takes the delivery. (A data dir below its reserve is `accept_delivery`'s
    // refusal, below.) Said only to a genuine sender: the message names the data dir.
    if let Some(failure) = state.store.failure() {
        return come_back_later(format!("{failure}; Gantry is restarting"), "10");
    }
    let event = match read.and_then(|read| read.event(&view)) {
        Ok(e) => e,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let repo = match event.repo() {
        None => first,
        Some(named) => match verified.iter().find(|r| r.forge_id == named) {
            Some(r) => r.clone(),
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
            return taken(
                "ignored",
                StatusCode::ACCEPTED,
                ignored("ping: the hook reaches Gantry".into()),
            );
        }
        ForgeEvent::Ignored { reason } => {
            return taken("ignored", StatusCode::ACCEPTED, ignored(reason.clone()));
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
        // Stored from the bytes received (`accept_delivery`), without a copy.
        body: String::new(),
        body_at: None,
        received_at: Utc::now(),
        outcome: None,
        processed_at: None,
        attempts: 0,
        retry_at: None,
        last_error: None,
        head: None,
    };
    // The processor gets the event read here, rather than reading and parsing the body again;
    // offered before the store call, since the processor may reach the delivery before this
    // handler is past `durable`.
    let offered = state.deliveries.offer(&record.forge, &id, event);
    let new = match state
        .store
        .accept_delivery(&record, &body, &webhook::body_hash(&body))
    {
        Ok(new) => new,
        Err(e) => {
            if offered {
                state.deliveries.withdraw(&record.forge, &id);
            }
            return match e {
                StoreError::LowSpace(low) => come_back_later(low.to_string(), "60"),
                e => unstored(e),
            };
        }
    };
    if !new && offered {
        state.deliveries.withdraw(&record.forge, &id);
    }
    if new {
        if let Err(e) = state.store.durable().await {
            return unstored(e);
        }
        state.deliveries.notify();
    }
    taken(
        if new { "accepted" } else { "duplicate" },
        StatusCode::ACCEPTED,
        Accepted {
            accepted: true,
            duplicate: Some(!new),
            delivery: Some(id),
            source: Some(repo.source.name.clone()),
            reason: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_the_failure_limit_waits_until_its_window_ends() {
        let failures = Failures::default();
        let (a, b): (IpAddr, IpAddr) = ([192, 0, 2, 7].into(), [192, 0, 2, 8].into());
        let t0 = Instant::now();
        for _ in 0..Failures::LIMIT - 1 {
            failures.note(a, t0);
        }
        assert_eq!(failures.blocked(a, t0), None, "under the limit");
        failures.note(a, t0);
        assert_eq!(failures.blocked(a, t0 + Duration::from_secs(20)), Some(40));
        assert_eq!(failures.blocked(b, t0), None, "another address is not held");
        let later = t0 + Failures::WINDOW;
        assert_eq!(failures.blocked(a, later), None, "the window ended");
        failures.note(a, later);
        assert_eq!(
            failures.blocked(a, later),
            None,
            "a new window starts at one"
        );
    }

    fn repo(name: &str, secret: Option<&str>) -> Arc<WatchedRepo> {
        Arc::new(WatchedRepo {
            forge_id: format!("acme/{name}"),
            forge: Some(Forge::Github),
            poll_interval: std::time::Duration::ZERO,
            webhook_secret: secret.map(str::to_string),
            synced: Default::default(),
            stats: Default::default(),
            source: crate::catalog::RepoSource {
                name: name.to_string(),
                url: String::new(),
                branch: "main".into(),
                paths: Vec::new(),
                credentials: None,
                mirror_dir: std::path::PathBuf::new(),
            },
            wake: tokio::sync::Notify::new(),
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    #[test]
    fn every_repository_sharing_the_signing_secret_is_verified() {
        let body = br#"{"zen": "x"}"#;
        let candidates = vec![
            repo("a", Some("shared")),
            repo("b", Some("other")),
            repo("c", Some("shared")),
            repo("d", None),
        ];
        let auth = webhook::sign(Forge::Github, body, "shared");
        let names: Vec<String> = verified_by(Forge::Github, &auth, body, &candidates)
            .iter()
            .map(|r| r.source.name.clone())
            .collect();
        assert_eq!(names, ["a", "c"]);
        let wrong = webhook::sign(Forge::Github, body, "nobody's");
        assert!(verified_by(Forge::Github, &wrong, body, &candidates).is_empty());
    }
}
