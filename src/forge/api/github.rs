//! GitHub over octocrab: a personal token or a GitHub App installation, octocrab's retries off,
//! and every call through octocrab's raw request methods so that the documented HTTP method is
//! sent (octocrab's `update_comment` sends POST where GitHub documents PATCH) and the answer's
//! rate-limit headers can be read.

use http::{HeaderMap, Method};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{
    ApiError, Auth, ClientConfig, Forge, MAX_PAGES, PER_PAGE, StatusState, description_or_default,
    id_text, marked_on_page, parse_json, split_repo, truncate_chars,
};

const FORGE: Forge = Forge::Github;

pub(super) struct Client {
    owner: String,
    repo: String,
    auth: GithubAuth,
}

enum GithubAuth {
    Token(Octocrab),
    /// The App client (JWT) and, once looked up, the installation client (installation token,
    /// cached and refreshed by octocrab).
    App {
        app: Octocrab,
        installation: Box<OnceCell<Octocrab>>,
    },
}

impl Client {
    pub(super) fn new(config: &ClientConfig) -> Result<Client, ApiError> {
        let parts = split_repo(FORGE, &config.repo, true)?;
        let base = super::parse_base(FORGE, &config.api_url)?;
        let builder = Octocrab::builder()
            .base_uri(base.as_str().trim_end_matches('/'))
            .map_err(|e| ApiError::config(FORGE, "new", format!("api_url: {e}")))?
            .add_retry_config(RetryConfig::None)
            .set_connect_timeout(Some(config.timeout))
            .set_read_timeout(Some(config.timeout))
            .set_write_timeout(Some(config.timeout))
            .add_header(
                http::header::ACCEPT,
                "application/vnd.github+json".to_string(),
            );
        let auth = match &config.auth {
            Auth::Token(token) => GithubAuth::Token(
                builder
                    .personal_token(token.clone())
                    .build()
                    .map_err(|e| octo_config_error(&e))?,
            ),
            Auth::GithubApp {
                app_id,
                private_key_pem,
            } => {
                let app = builder
                    .app_from_rsa_pem(AppId(*app_id), private_key_pem.as_bytes())
                    .map_err(|_| {
                        ApiError::config(FORGE, "new", "the App private key is not an RSA PEM key")
                    })?
                    .build()
                    .map_err(|e| octo_config_error(&e))?;
                GithubAuth::App {
                    app,
                    installation: Box::default(),
                }
            }
        };
        Ok(Client {
            owner: parts[0].clone(),
            repo: parts[1].clone(),
            auth,
        })
    }

    /// The client to make calls with; for an App, finds the repository's installation first
    /// (`GET /repos/{o}/{r}/installation` with the App's JWT).
    async fn crab(&self, call: &str) -> Result<&Octocrab, ApiError> {
        match &self.auth {
            GithubAuth::Token(crab) => Ok(crab),
            GithubAuth::App { app, installation } => {
                installation
                    .get_or_try_init(|| async {
                        let path = format!("/repos/{}/{}/installation", self.owner, self.repo);
                        let (status, value) = request(app, call, Method::GET, &path, None).await?;
                        let id = value.get("id").and_then(Value::as_u64).ok_or_else(|| {
                            ApiError::invalid_answer(FORGE, call, status, "installation without id")
                        })?;
                        app.installation(InstallationId(id))
                            .map_err(|e| octo_error(call, e))
                    })
                    .await
            }
        }
    }

    async fn send(
        &self,
        call: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiError> {
        let crab = self.crab(call).await?;
        request(crab, call, method, path, body).await
    }

    fn repo_path(&self) -> String {
        format!("/repos/{}/{}", self.owner, self.repo)
    }

    pub(super) async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: &str,
    ) -> Result<(), ApiError> {
        let (state_word, description) = match state {
            StatusState::Pending | StatusState::Running => {
                ("pending", description_or_default(state, description))
            }
            StatusState::Success => ("success", description_or_default(state, description)),
            StatusState::Failure => ("failure", description_or_default(state, description)),
            StatusState::Error => ("error", description_or_default(state, description)),
            // GitHub has no cancelled state: an error that says so.
            StatusState::Canceled => {
                let d = description.trim();
                let text = if d.is_empty() || d.to_ascii_lowercase().starts_with("cancel") {
                    if d.is_empty() {
                        "cancelled".to_string()
                    } else {
                        d.to_string()
                    }
                } else {
                    format!("cancelled: {d}")
                };
                ("error", text)
            }
        };
        let mut body = json!({
            "state": state_word,
            // GitHub refuses descriptions longer than 140 characters.
            "description": truncate_chars(&description, 140),
            "context": context,
        });
        if !target_url.is_empty() {
            body["target_url"] = json!(target_url);
        }
        let path = format!("{}/statuses/{sha}", self.repo_path());
        self.send("set_status", Method::POST, &path, Some(&body))
            .await
            .map(|_| ())
    }

    pub(super) async fn create_comment(&self, pr: u64, body: &str) -> Result<String, ApiError> {
        let call = "create_comment";
        let path = format!("{}/issues/{pr}/comments", self.repo_path());
        let (status, value) = self
            .send(call, Method::POST, &path, Some(&json!({ "body": body })))
            .await?;
        value
            .get("id")
            .and_then(id_text)
            .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "comment without id"))
    }

    pub(super) async fn edit_comment(&self, id: u64, body: &str) -> Result<(), ApiError> {
        let path = format!("{}/issues/comments/{id}", self.repo_path());
        self.send(
            "edit_comment",
            Method::PATCH,
            &path,
            Some(&json!({ "body": body })),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn own_account(&self) -> Result<Vec<String>, ApiError> {
        let call = "own_account";
        match &self.auth {
            GithubAuth::Token(crab) => {
                let (status, value) = request(crab, call, Method::GET, "/user", None).await?;
                let login = value
                    .get("login")
                    .and_then(Value::as_str)
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "no login"))?;
                Ok(vec![login.to_string()])
            }
            // An App's comments are written by its bot user, `<slug>[bot]`.
            GithubAuth::App { app, .. } => {
                let (status, value) = request(app, call, Method::GET, "/app", None).await?;
                let slug = value
                    .get("slug")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "no slug"))?;
                Ok(vec![format!("{slug}[bot]")])
            }
        }
    }

    pub(super) async fn find_comment(
        &self,
        pr: u64,
        marker: &str,
        own: &[String],
    ) -> Result<Option<String>, ApiError> {
        let call = "find_comment";
        for page in 1..=MAX_PAGES {
            let path = format!(
                "{}/issues/{pr}/comments?per_page={PER_PAGE}&page={page}",
                self.repo_path()
            );
            let (status, value) = self.send(call, Method::GET, &path, None).await?;
            let (found, more) =
                marked_on_page(FORGE, call, status, &value, marker, ("/user/login", own))?;
            if found.is_some() {
                return Ok(found);
            }
            if !more {
                break;
            }
        }
        Ok(None)
    }

    pub(super) async fn can_write(&self, user: &str) -> Result<bool, ApiError> {
        let call = "can_write";
        let path = format!("{}/collaborators/{user}/permission", self.repo_path());
        let (_, value) = self.send(call, Method::GET, &path, None).await?;
        let role = value
            .get("role_name")
            .and_then(Value::as_str)
            .or_else(|| value.get("permission").and_then(Value::as_str))
            .unwrap_or_default();
        let permission = value
            .get("permission")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(matches!(role, "admin" | "maintain" | "write")
            || matches!(permission, "admin" | "write"))
    }

    pub(super) async fn pr_head(&self, pr: u64) -> Result<String, ApiError> {
        let call = "pr_head";
        let path = format!("{}/pulls/{pr}", self.repo_path());
        let (status, value) = self.send(call, Method::GET, &path, None).await?;
        value
            .pointer("/head/sha")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "no head.sha"))
    }
}

/// One request through octocrab (auth header, base URI, one attempt); a non-2xx answer is an
/// `ApiError` classified with its headers.
async fn request(
    crab: &Octocrab,
    call: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ApiError> {
    let path = path.to_string();
    let response = match method {
        Method::GET => crab._get(path).await,
        Method::POST => crab._post(path, body).await,
        Method::PATCH => crab._patch(path, body).await,
        Method::PUT => crab._put(path, body).await,
        other => {
            return Err(ApiError::config(FORGE, call, format!("method {other}")));
        }
    }
    .map_err(|e| octo_error(call, e))?;
    let status = response.status().as_u16();
    let headers: HeaderMap = response.headers().clone();
    let text = crab
        .body_to_string(response)
        .await
        .map_err(|e| octo_error(call, e))?;
    if !(200..300).contains(&status) {
        return Err(ApiError::http(FORGE, call, status, &headers, &text));
    }
    if text.trim().is_empty() {
        return Ok((status, Value::Null));
    }
    Ok((status, parse_json(FORGE, call, status, &text)?))
}

fn octo_config_error(error: &octocrab::Error) -> ApiError {
    ApiError::config(FORGE, "new", short(error))
}

/// An octocrab error without an answer we could read ourselves: GitHub's answer to the
/// installation token exchange (classified by its status and headers), a transport failure
/// (retryable), or anything else (not retryable).
fn octo_error(call: &str, error: octocrab::Error) -> ApiError {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            let headers = source.headers.clone().unwrap_or_default();
            let body = json!({ "message": source.message }).to_string();
            let mut e = ApiError::http(FORGE, call, source.status_code.as_u16(), &headers, &body);
            e.message = format!("{} (installation token)", e.message);
            e
        }
        octocrab::Error::Service { .. } | octocrab::Error::Hyper { .. } => {
            ApiError::transport(FORGE, call, short(&error))
        }
        other => ApiError::config(FORGE, call, short(&other)),
    }
}

/// An octocrab error's message and sources, without the backtrace some variants print.
fn short(error: &octocrab::Error) -> String {
    let mut message = match error {
        octocrab::Error::Service { source, .. } => source.to_string(),
        octocrab::Error::Hyper { source, .. } => source.to_string(),
        octocrab::Error::JWT { source, .. } => format!("JWT: {source}"),
        octocrab::Error::GitHub { source, .. } => source.message.clone(),
        other => other.to_string(),
    };
    if let Some(first) = message.lines().next() {
        message = first.to_string();
    }
    let mut source = match error {
        octocrab::Error::Service { source, .. } => source.source(),
        octocrab::Error::Hyper { source, .. } => std::error::Error::source(source),
        _ => None,
    };
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
