//! Logging in to the pages: an API token exchanged for a session (`store::sessions`) held in an
//! HttpOnly, SameSite=Lax cookie; logout ends it in the store. The session's id is the only
//! thing in the cookie.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Chrome, page};
use crate::server::api::{ApiError, Permission};
use crate::server::{AppState, Caller, grant_named};
use crate::store::sessions::SessionLimits;

/// The cookie that holds the session id.
pub const SESSION_COOKIE: &str = "gantry_session";

/// Who is looking at a page.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    /// Whether a session cookie carries the login (then there is a logout).
    pub session: bool,
}

impl Viewer {
    /// The token's name; `None` when served without tokens.
    pub fn who(&self) -> Option<String> {
        self.caller.name.clone()
    }

    /// How runs started from the pages name who started them.
    pub fn words(&self) -> String {
        match &self.caller.name {
            Some(who) => format!("web ({who})"),
            None => "web".to_string(),
        }
    }

    /// Why the viewer may not do `permission` on `source/name`, if not.
    pub fn refusal(&self, permission: Permission, source: &str, name: &str) -> Option<String> {
        self.caller.refusal(permission, Some((source, name)))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Who holds a live session in the request's cookie, and how they logged in.
pub fn session_of(state: &AppState, headers: &HeaderMap) -> Option<(String, String)> {
    let id = cookie(headers, SESSION_COOKIE)?;
    match state.store.session(id, SessionLimits::default()) {
        Ok(Some(record)) => Some((record.who, record.method)),
        _ => None,
    }
}

/// A path to go back to after logging in: only a path of this server.
fn local_path(next: &str) -> &str {
    let ok = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    if ok { next } else { "/" }
}

/// Lets a page request through with its `Viewer`, or sends the browser to log in.
pub async fn require(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let viewer = if state.open() {
        Viewer {
            caller: Caller::anonymous(),
            session: false,
        }
    } else {
        let store_state = state.clone();
        let headers = request.headers().clone();
        let who = tokio::task::spawn_blocking(move || session_of(&store_state, &headers))
            .await
            .ok()
            .flatten();
        match who.and_then(|(n, m)| grant_named(&state, &n, &m)) {
            Some(token) => Viewer {
                caller: Caller::of(token, "session"),
                session: true,
            },
            None => {
                if request.method() == Method::GET {
                    let here = request
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    let to = format!("/login?next={}", urlencode(here));
                    return Redirect::to(&to).into_response();
                }
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "log in first (GET /login), or call the API with a bearer token",
                )
                .into_response();
            }
        }
    };
    request.extensions_mut().insert(viewer);
    next.run(request).await
}

fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every page request is checked for DNS rebinding when served without tokens, and every post
/// must come from Gantry's own pages.
pub async fn same_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if state.open()
        && let Err(refusal) = crate::server::guard::check_authority(headers, &state.public_url)
    {
        return refusal.into_response();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "a form of another site may not post to Gantry",
            )
            .into_response();
        }
        if let Err(refusal) = crate::server::guard::check_authority(headers, &state.public_url) {
            return refusal.into_response();
        }
    }
    next.run(request).await
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    error: Option<String>,
    /// Whether users with passwords are configured (the form then asks for either).
    users: bool,
}

fn anonymous() -> Chrome {
    Chrome::of(&Viewer {
        caller: Caller::anonymous(),
        session: false,
    })
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_form(
    State(state): State<AppState>,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Response {
    let next = query
        .ok()
        .and_then(|Query(q)| q.next)
        .unwrap_or_else(|| "/".to_string());
    if state.open() {
        return Redirect::to(local_path(&next)).into_response();
    }
    page(
        StatusCode::OK,
        &LoginPage {
            chrome: anonymous(),
            next: local_path(&next).to_string(),
            error: None,
            users: !state.users.is_empty(),
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// Records a login, or a refused one, in the audit log.
async fn login_audit(state: &AppState, who: &str, done: bool, from: Option<String>) {
    let entry = crate::store::audit::AuditEntry {
        id: String::new(),
        at: chrono::Utc::now(),
        who: who.to_string(),
        via: "web".into(),
        action: if done { "login" } else { "login refused" }.into(),
        target: "/login".into(),
        from,
        status: None,
    };
    let store = state.store.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.audit(entry)).await {
        tracing::warn!("cannot record a login in the audit log: {e}");
    }
}

/// A hash no password matches, verified when a login names an unknown user, so that an unknown
/// name takes as long to refuse as a wrong password.
fn decoy_hash() -> &'static crate::config::UserAccount {
    static DECOY: std::sync::OnceLock<crate::config::UserAccount> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut random = [0u8; 24];
        let _ = getrandom::getrandom(&mut random);
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        crate::config::UserAccount {
            grant: crate::config::ApiToken::admin("", ""),
            password_hash: crate::config::hash_password(&password).unwrap_or_default(),
        }
    })
}

/// Who the form's credentials name, and how (`token` or `password`); `None` when they name
/// nobody. A password is checked off the async threads (argon2 is slow on purpose).
async fn check_login(state: &AppState, form: &LoginForm) -> Option<(String, &'static str)> {
    if !form.user.trim().is_empty() {
        let name = form.user.trim().to_string();
        let user = state.users.iter().find(|u| u.grant.name == name).cloned();
        let password = form.password.clone();
        let ok = tokio::task::spawn_blocking(move || match &user {
            Some(u) => u.verify(&password),
            None => {
                decoy_hash().verify(&password);
                false
            }
        })
        .await
        .unwrap_or(false);
        return ok.then_some((name, "password"));
    }
    let given = form.token.trim();
    let found = state.tokens.iter().fold(None, |found, t| {
        if crate::server::same_secret(given.as_bytes(), t.token.as_bytes()) {
            Some(t.name.clone())
        } else {
            found
        }
    });
    found.map(|name| (name, "token"))
}

pub async fn login(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(&form.next).to_string();
    if state.open() {
        return Redirect::to(&next).into_response();
    }
    let addr = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    // Guessing is slow: an address with too many failed logins in the last minute waits.
    if let Some(ip) = addr
        && let Some(wait) = state.login_failures.blocked(ip, std::time::Instant::now())
    {
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            &LoginPage {
                chrome: anonymous(),
                next,
                error: Some(format!(
                    "Too many failed logins from this address; try again in {wait} s."
                )),
                users: !state.users.is_empty(),
            },
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let found = check_login(&state, &form).await;
    if found.is_none()
        && let Some(ip) = addr
    {
        state.login_failures.note(ip, std::time::Instant::now());
    }
    let from = addr.map(|ip| ip.to_string());
    let tried = if form.user.trim().is_empty() {
        "unknown token".to_string()
    } else {
        format!("user {}", form.user.trim())
    };
    match &found {
        Some((who, _)) => login_audit(&state, who, true, from).await,
        None => login_audit(&state, &tried, false, from).await,
    }
    let Some((who, method)) = found else {
        let error = if form.user.trim().is_empty() {
            "That is not one of the configured API tokens."
        } else {
            "Wrong user name or password."
        };
        return page(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                chrome: anonymous(),
                next,
                error: Some(error.into()),
                users: !state.users.is_empty(),
            },
        );
    };
    let store = state.store.clone();
    let created = tokio::task::spawn_blocking(move || {
        store.create_session(&who, method, SessionLimits::default())
    })
    .await;
    let id = match created {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
    };
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let limits = SessionLimits::default();
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        limits.absolute.num_seconds()
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    if let Some(id) = cookie(request.headers(), SESSION_COOKIE) {
        let (store, id) = (state.store.clone(), id.to_string());
        let _ = tokio::task::spawn_blocking(move || store.end_session(&id)).await;
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("gantry_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_path_is_gone_back_to_after_login() {
        assert_eq!(local_path("/runs/x?y=1"), "/runs/x?y=1");
        assert_eq!(local_path("//evil.example/"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert_eq!(local_path("/\\evil.example"), "/");
        assert_eq!(urlencode("/runs/a b?x=1&y"), "/runs/a%20b%3Fx%3D1%26y");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; gantry_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
