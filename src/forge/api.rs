//! The write-back client: commit statuses, the edit-in-place PR comment, commenter permissions and
//! PR heads, over octocrab (GitHub), the gitlab crate's endpoint definitions (GitLab) and reqwest
//! (Bitbucket), one submodule per forge.
//!
//! Every call makes exactly one attempt (octocrab's own retries are off) and is bounded by
//! `ClientConfig::timeout`: the caller's durable outbox owns retries and backoff, guided by
//! `ApiError::retryable` and `ApiError::retry_after`. Construction does no network IO: the GitHub
//! App installation is looked up on the first call (and cached; a failed lookup is retried by the
//! next call), and GitLab's `GET /api/v4/user` check is not made at all. Errors name the forge,
//! the call and the HTTP status, and never contain the token or the App's private key.

mod bitbucket;
mod github;
mod gitlab;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::{Forge, StatusState};

/// How Gantry authenticates to a forge.
#[derive(Clone)]
pub enum Auth {
    /// GitHub: a personal (or fine-grained) access token, sent as `Authorization: Bearer`.
    /// GitLab: a personal, project or group access token, sent as `PRIVATE-TOKEN`.
    /// Bitbucket: a repository, project or workspace access token, sent as `Authorization: Bearer`.
    Token(String),
    /// GitHub only: a GitHub App, by its id and its RSA private key (PEM, PKCS#1 or PKCS#8). The
    /// installation for the repository is looked up with the App's JWT; octocrab caches the
    /// installation token and refreshes it before it expires.
    GithubApp {
        app_id: u64,
        private_key_pem: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token(***)"),
            Auth::GithubApp { app_id, .. } => f
                .debug_struct("GithubApp")
                .field("app_id", app_id)
                .field("private_key_pem", &"***")
                .finish(),
        }
    }
}

/// Where and how to reach one repository on one forge.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub forge: Forge,
    /// The API base URL, without a trailing slash needed:
    /// - GitHub: `https://api.github.com`, or `https://ghe.example.com/api/v3` for GitHub
    ///   Enterprise;
    /// - GitLab: the instance, `https://gitlab.com` (the client appends `/api/v4`; a URL that
    ///   already ends in `/api/v4` is taken as is);
    /// - Bitbucket: `https://api.bitbucket.org/2.0`.
    ///
    /// `http://` is accepted (tests, a local forge).
    pub api_url: String,
    /// `owner/repo` (GitHub), `group/subgroup/project` (GitLab), `workspace/slug` (Bitbucket).
    pub repo: String,
    pub auth: Auth,
    /// The bound on each call, connecting, any token exchange and reading the answer included.
    pub timeout: Duration,
}

/// A failed forge call. `Display` names the forge, the call and the HTTP status (when there was
/// an answer) and never contains a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status of the forge's answer; `None` when there was none (timeout, connection
    /// error) or the call was refused before it was sent.
    pub status: Option<u16>,
    /// How long the forge asked us to wait (`Retry-After` seconds, or the time until
    /// `X-RateLimit-Reset`/`RateLimit-Reset` epoch seconds), when it said so.
    pub retry_after: Option<Duration>,
    /// Trying again later may succeed: timeouts, connection errors, 5xx, 429, and 403 with
    /// rate-limit headers. Other 4xx and configuration errors are not retryable.
    pub retryable: bool,
    pub message: String,
}

impl ApiError {
    /// The configuration cannot work (bad URL, bad repository name, bad key); not retryable.
    fn config(forge: Forge, call: &str, message: impl fmt::Display) -> ApiError {
        ApiError {
            status: None,
            retry_after: None,
            retryable: false,
            message: format!("{forge} {call}: {message}"),
        }
    }

    /// No answer: the connection failed or broke; retryable.
    fn transport(forge: Forge, call: &str, message: impl fmt::Display) -> ApiError {
        ApiError {
            status: None,
            retry_after: None,
            retryable: true,
            message: format!("{forge} {call}: no answer: {message}"),
        }
    }

    fn timeout(forge: Forge, call: &str, timeout: Duration) -> ApiError {
        ApiError {
            status: None,
            retry_after: None,
            retryable: true,
            message: format!("{forge} {call}: timed out after {timeout:?}"),
        }
    }

    /// A 2xx answer we could not understand (missing field, not JSON); not retryable.
    fn invalid_answer(forge: Forge, call: &str, status: u16, what: impl fmt::Display) -> ApiError {
        ApiError {
            status: Some(status),
            retry_after: None,
            retryable: false,
            message: format!("{forge} {call}: HTTP {status}: unexpected answer: {what}"),
        }
    }

    /// A non-2xx answer, classified by its status and rate-limit headers.
    fn http(forge: Forge, call: &str, status: u16, headers: &HeaderMap, body: &str) -> ApiError {
        let retry_after = retry_after(headers);
        let rate_limited = status == 429
            || (status == 403
                && (header(headers, "x-ratelimit-remaining") == Some("0")
                    || header(headers, "ratelimit-remaining") == Some("0")
                    || header(headers, "retry-after").is_some()));
        let retryable = rate_limited || status >= 500 || status == 408;
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map(|r| format!(" {r}"))
            .unwrap_or_default();
        let detail = error_detail(body);
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        ApiError {
            status: Some(status),
            retry_after: if retryable { retry_after } else { None },
            retryable,
            message: format!("{forge} {call}: HTTP {status}{reason}{detail}"),
        }
    }

    /// Replaces every occurrence of a secret in the message.
    fn redacted(mut self, secrets: &[String]) -> ApiError {
        for secret in secrets {
            if !secret.is_empty() && self.message.contains(secret.as_str()) {
                self.message = self.message.replace(secret.as_str(), "***");
            }
        }
        self
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Retry-After` (delay seconds), else `X-RateLimit-Reset`/`RateLimit-Reset` (epoch seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(secs) = header(headers, "retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset = header(headers, "x-ratelimit-reset")
        .or_else(|| header(headers, "ratelimit-reset"))
        .and_then(|v| v.parse::<u64>().ok())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

/// The forge's own words from an error body: `message` (GitHub, GitLab), `error.message`
/// (Bitbucket), or the start of the text; at most 300 characters.
fn error_detail(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let message = v
                .get("message")
                .or_else(|| v.get("error").and_then(|e| e.get("message")))
                .or_else(|| v.get("error"))?;
            Some(match message {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    truncate_chars(&text, 300).to_string()
}

/// The longest prefix of `s` with at most `max` characters.
fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// The words a status description falls back to when the caller gives none.
fn default_description(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "queued",
        StatusState::Running => "running",
        StatusState::Success => "succeeded",
        StatusState::Failure => "failed",
        StatusState::Error => "error",
        StatusState::Canceled => "cancelled",
    }
}

fn description_or_default(state: StatusState, description: &str) -> String {
    if description.trim().is_empty() {
        default_description(state).to_string()
    } else {
        description.to_string()
    }
}

/// Splits `owner/repo` (or `group/sub/project`) and refuses names that would change a URL path.
fn split_repo(forge: Forge, repo: &str, exactly_two: bool) -> Result<Vec<String>, ApiError> {
    let parts: Vec<&str> = repo.split('/').collect();
    let fine = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.len() < 2 || (exactly_two && parts.len() != 2) || !parts.iter().all(fine) {
        return Err(ApiError::config(
            forge,
            "new",
            format!("repository {repo:?} is not of the form owner/name"),
        ));
    }
    Ok(parts.into_iter().map(str::to_string).collect())
}

/// `api_url` parsed, with `http`/`https` and a host, and without a trailing slash.
fn parse_base(forge: Forge, api_url: &str) -> Result<reqwest::Url, ApiError> {
    let url = reqwest::Url::parse(api_url.trim_end_matches('/'))
        .map_err(|e| ApiError::config(forge, "new", format!("api_url {api_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::config(
            forge,
            "new",
            format!("api_url {api_url:?} is not an http(s) URL"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ApiError::config(
            forge,
            "new",
            format!("api_url {api_url:?} must have no query, fragment or credentials"),
        ));
    }
    Ok(url)
}

/// The shared HTTP client for GitLab and Bitbucket: the call timeout, and no redirects (a
/// redirect could carry the token to another host, and a redirected POST is not what we sent).
fn http_client(forge: Forge, timeout: Duration) -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ApiError::config(forge, "new", format!("HTTP client: {e}")))
}

/// A reqwest failure without an answer: building the request is a bug or bad input (not
/// retryable); anything else (connect, timeout, broken connection) is retryable.
fn reqwest_error(forge: Forge, call: &str, error: reqwest::Error) -> ApiError {
    // The URL holds no credential, but keep the message to the error kind and its source.
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if error.is_builder() {
        ApiError::config(forge, call, message)
    } else {
        ApiError::transport(forge, call, message)
    }
}

/// Sends one request and returns the answer's status, headers and body; a non-2xx answer is an
/// `ApiError`.
async fn send_reqwest(
    forge: Forge,
    call: &str,
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, String), ApiError> {
    let response = request
        .send()
        .await
        .map_err(|e| reqwest_error(forge, call, e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .text()
        .await
        .map_err(|e| reqwest_error(forge, call, e))?;
    if !(200..300).contains(&status) {
        return Err(ApiError::http(forge, call, status, &headers, &body));
    }
    Ok((status, headers, body))
}

fn parse_json(
    forge: Forge,
    call: &str,
    status: u16,
    body: &str,
) -> Result<serde_json::Value, ApiError> {
    serde_json::from_str(body).map_err(|e| ApiError::invalid_answer(forge, call, status, e))
}

/// An id field that may be a number or a string, as text.
/// One page of comments (a JSON list with `body` and `id`): the id of the first whose body holds
/// `marker`, and whether a next page may follow (the page was full).
/// Whether the value at any of `pointers` in `item` is one of `own` (ids as text).
fn written_by(item: &serde_json::Value, pointers: &[&str], own: &[String]) -> bool {
    pointers.iter().any(|p| {
        item.pointer(p)
            .and_then(id_text)
            .is_some_and(|id| own.contains(&id))
    })
}

/// The marked comment on a page written by `own` (its author at `author`), and whether another
/// page may follow.
fn marked_on_page(
    forge: Forge,
    call: &str,
    status: u16,
    page: &serde_json::Value,
    marker: &str,
    (author, own): (&str, &[String]),
) -> Result<(Option<String>, bool), ApiError> {
    let Some(items) = page.as_array() else {
        return Err(ApiError::invalid_answer(forge, call, status, "not a list"));
    };
    let found = items.iter().find_map(|item| {
        let body = item
            .get("body")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if body.contains(marker) && written_by(item, &[author], own) {
            item.get("id").and_then(id_text)
        } else {
            None
        }
    });
    Ok((found, items.len() >= PER_PAGE as usize))
}

fn id_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The write-back client for one repository. Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct ForgeClient {
    inner: Arc<Inner>,
}

struct Inner {
    forge: Forge,
    timeout: Duration,
    /// What must never appear in an error: the token, the App's private key.
    secrets: Vec<String>,
    backend: Backend,
    /// The account the token acts as (`own_account`), asked once.
    me: tokio::sync::OnceCell<Vec<String>>,
}

enum Backend {
    Github(Box<github::Client>),
    Gitlab(self::gitlab::Client),
    Bitbucket(bitbucket::Client),
}

impl fmt::Debug for ForgeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForgeClient")
            .field("forge", &self.inner.forge)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl ForgeClient {
    /// The forge this client speaks to.
    pub fn forge(&self) -> Forge {
        self.inner.forge
    }

    /// Checks the configuration and builds the client. Makes no network call (see the module
    /// doc); errors here are configuration errors and are not retryable.
    pub async fn new(config: ClientConfig) -> Result<ForgeClient, ApiError> {
        let forge = config.forge;
        let secrets = match &config.auth {
            Auth::Token(token) => vec![token.clone()],
            Auth::GithubApp {
                private_key_pem, ..
            } => vec![private_key_pem.clone()],
        };
        if config.timeout.is_zero() {
            return Err(ApiError::config(
                forge,
                "new",
                "the timeout must not be zero",
            ));
        }
        let backend = match forge {
            Forge::Github => Backend::Github(Box::new(github::Client::new(&config)?)),
            Forge::Gitlab => Backend::Gitlab(self::gitlab::Client::new(&config)?),
            Forge::Bitbucket => Backend::Bitbucket(bitbucket::Client::new(&config)?),
        };
        Ok(ForgeClient {
            inner: Arc::new(Inner {
                forge,
                timeout: config.timeout,
                secrets,
                backend,
                me: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// Who the token is, as the ids a comment's author carries, asked of the forge once and
    /// cached: GitHub `GET /user` (`login`; for an App, `GET /app` and `<slug>[bot]`), GitLab
    /// `GET /user` (`id`), Bitbucket `GET /2.0/user` (`account_id` and `uuid`).
    pub async fn own_account(&self) -> Result<&[String], ApiError> {
        let call = "own_account";
        let me = self
            .inner
            .me
            .get_or_try_init(|| async {
                match &self.inner.backend {
                    Backend::Github(c) => self.run(call, c.own_account()).await,
                    Backend::Gitlab(c) => self.run(call, c.own_account()).await,
                    Backend::Bitbucket(c) => self.run(call, c.own_account()).await,
                }
            })
            .await?;
        Ok(me.as_slice())
    }

    /// Bounds `call` by the timeout and scrubs secrets from its error.
    async fn run<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let result = match tokio::time::timeout(self.inner.timeout, future).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::timeout(
                self.inner.forge,
                call,
                self.inner.timeout,
            )),
        };
        result.map_err(|e| e.redacted(&self.inner.secrets))
    }

    /// Sets the commit status named `context` on `sha`. Posting the same context again replaces
    /// it. An empty `description` becomes the state in words ("queued", "running", ...).
    ///
    /// States: GitHub `pending` (Pending and Running), `success`, `failure`, `error` (Error, and
    /// Canceled with a description saying "cancelled"); GitLab `pending`, `running`, `success`,
    /// `failed` (Failure, Error), `canceled`, where GitLab's 400 for a state posted twice counts
    /// as success; Bitbucket `INPROGRESS`, `SUCCESSFUL`, `FAILED`, `STOPPED`, keyed by a key
    /// derived from `context` (see `bitbucket_status_key`).
    pub async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: &str,
    ) -> Result<(), ApiError> {
        let call = "set_status";
        if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::config(
                self.inner.forge,
                call,
                format!("{sha:?} is not a commit sha"),
            ));
        }
        match &self.inner.backend {
            Backend::Github(c) => {
                self.run(
                    call,
                    c.set_status(sha, context, state, description, target_url),
                )
                .await
            }
            Backend::Gitlab(c) => {
                self.run(
                    call,
                    c.set_status(sha, context, state, description, target_url),
                )
                .await
            }
            Backend::Bitbucket(c) => {
                self.run(
                    call,
                    c.set_status(sha, context, state, description, target_url),
                )
                .await
            }
        }
    }

    /// Comments on PR (MR) `pr`; returns the new comment's id.
    pub async fn create_comment(&self, pr: u64, body: &str) -> Result<String, ApiError> {
        let call = "create_comment";
        match &self.inner.backend {
            Backend::Github(c) => self.run(call, c.create_comment(pr, body)).await,
            Backend::Gitlab(c) => self.run(call, c.create_comment(pr, body)).await,
            Backend::Bitbucket(c) => self.run(call, c.create_comment(pr, body)).await,
        }
    }

    /// Replaces the body of comment `comment_id` on PR `pr` (GitHub `PATCH`, GitLab and
    /// Bitbucket `PUT`; GitHub does not need `pr`).
    pub async fn edit_comment(
        &self,
        pr: u64,
        comment_id: &str,
        body: &str,
    ) -> Result<(), ApiError> {
        let call = "edit_comment";
        let Some(id) = comment_id.parse::<u64>().ok() else {
            return Err(ApiError::config(
                self.inner.forge,
                call,
                format!("{comment_id:?} is not a comment id"),
            ));
        };
        match &self.inner.backend {
            Backend::Github(c) => self.run(call, c.edit_comment(id, body)).await,
            Backend::Gitlab(c) => self.run(call, c.edit_comment(pr, id, body)).await,
            Backend::Bitbucket(c) => self.run(call, c.edit_comment(pr, id, body)).await,
        }
    }

    /// The id of the first PR comment written by the token's own account (`own_account`) whose
    /// body contains `marker` (a hidden HTML comment), to find Gantry's comment again if the store
    /// lost its id; a marked comment by anyone else is not Gantry's. Reads the comments oldest
    /// first, page by page (at most 50 pages); the whole walk is bounded by the timeout.
    pub async fn find_comment(&self, pr: u64, marker: &str) -> Result<Option<String>, ApiError> {
        let call = "find_comment";
        if marker.is_empty() {
            return Err(ApiError::config(self.inner.forge, call, "empty marker"));
        }
        let own = self.own_account().await?;
        match &self.inner.backend {
            Backend::Github(c) => self.run(call, c.find_comment(pr, marker, own)).await,
            Backend::Gitlab(c) => self.run(call, c.find_comment(pr, marker, own)).await,
            Backend::Bitbucket(c) => self.run(call, c.find_comment(pr, marker, own)).await,
        }
    }

    /// Whether `user` has write access to the repository.
    ///
    /// - GitHub: `GET /repos/{o}/{r}/collaborators/{user}/permission`; `role_name` (or
    ///   `permission`) is `admin`, `maintain` or `write`.
    /// - GitLab: `GET /users?username=` for the id (no such user: false), then
    ///   `GET /projects/:id/members/all/:user_id` (inherited members included); `access_level`
    ///   >= 30 (developer). 404 there means not a member: false.
    /// - Bitbucket: `GET /workspaces/{ws}/permissions/repositories/{slug}?q=...` (the effective
    ///   permission, explicit or through a group or the workspace; the token needs workspace
    ///   admin, which `user/permissions/repositories` would not avoid since that one only answers
    ///   for the token's own user). `user` is matched as account id or uuid, never as a
    ///   nickname (not unique, chosen by its owner); `permission` is `admin` or `write`. No
    ///   entry: false.
    pub async fn can_write(&self, user: &str) -> Result<bool, ApiError> {
        let call = "can_write";
        if user.is_empty() || user.contains(['/', '?', '#', '\n', '\r']) {
            return Ok(false);
        }
        match &self.inner.backend {
            Backend::Github(c) => self.run(call, c.can_write(user)).await,
            Backend::Gitlab(c) => self.run(call, c.can_write(user)).await,
            Backend::Bitbucket(c) => self.run(call, c.can_write(user)).await,
        }
    }

    /// The head commit of PR (MR) `pr`: GitHub `head.sha`, GitLab `sha`, Bitbucket
    /// `source.commit.hash` (which Bitbucket may abbreviate: resolve it in the mirror).
    pub async fn pr_head(&self, pr: u64) -> Result<String, ApiError> {
        let call = "pr_head";
        match &self.inner.backend {
            Backend::Github(c) => self.run(call, c.pr_head(pr)).await,
            Backend::Gitlab(c) => self.run(call, c.pr_head(pr)).await,
            Backend::Bitbucket(c) => self.run(call, c.pr_head(pr)).await,
        }
    }
}

/// The Bitbucket build-status key for a status context: the context itself when it has at most
/// 40 characters from `[A-Za-z0-9._-]`; otherwise its first 23 such characters (others become
/// `-`), a `-`, and 16 hex digits of its SHA-256, 40 characters at most. Stable across calls and
/// processes, so posting the same context again replaces the status.
pub fn bitbucket_status_key(context: &str) -> String {
    bitbucket::status_key(context)
}

/// Pages to read at most when looking for a comment.
const MAX_PAGES: u32 = 50;
/// Items per page asked for.
const PER_PAGE: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_make_403_retryable() {
        let mut headers = HeaderMap::new();
        let err = ApiError::http(Forge::Github, "x", 403, &headers, "{\"message\":\"nope\"}");
        assert!(!err.retryable);
        assert_eq!(err.message, "github x: HTTP 403 Forbidden: nope");
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        headers.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        let err = ApiError::http(Forge::Github, "x", 403, &headers, "");
        assert!(err.retryable);
        let wait = err.retry_after.unwrap();
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(55));
    }

    #[test]
    fn retry_after_seconds_win() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        let err = ApiError::http(Forge::Gitlab, "x", 429, &headers, "");
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert!(err.retryable);
        let err = ApiError::http(Forge::Gitlab, "x", 404, &headers, "");
        assert_eq!((err.retryable, err.retry_after), (false, None));
    }

    #[test]
    fn redaction() {
        let err = ApiError::transport(Forge::Bitbucket, "x", "token s3cret leaked")
            .redacted(&["s3cret".to_string()]);
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn repo_names() {
        assert!(split_repo(Forge::Github, "o/r", true).is_ok());
        assert!(split_repo(Forge::Github, "o/r/x", true).is_err());
        assert!(split_repo(Forge::Gitlab, "g/s/p", false).is_ok());
        assert!(split_repo(Forge::Github, "o/..", true).is_err());
        assert!(split_repo(Forge::Gitlab, "g", false).is_err());
    }
}
