//! Bitbucket Cloud over reqwest (there is no maintained client crate): build statuses, PR
//! comments, the workspace's effective repository permissions and PR heads, with
//! `Authorization: Bearer <access token>`.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    ApiError, Auth, ClientConfig, Forge, MAX_PAGES, StatusState, description_or_default, id_text,
    parse_json, send_reqwest, split_repo, truncate_chars,
};

const FORGE: Forge = Forge::Bitbucket;

/// Bitbucket's limit on a build status key.
const MAX_KEY: usize = 40;
/// Items per page asked for when listing comments.
const PAGELEN: u32 = 50;

pub(super) struct Client {
    http: reqwest::Client,
    /// `https://api.bitbucket.org/2.0`, no trailing slash.
    base: reqwest::Url,
    workspace: String,
    slug: String,
    token: String,
}

/// See `super::bitbucket_status_key`.
pub(super) fn status_key(context: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !context.is_empty() && context.len() <= MAX_KEY && context.chars().all(allowed) {
        return context.to_string();
    }
    let prefix: String = context
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(MAX_KEY - 17)
        .collect();
    let digest = Sha256::digest(context.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    if prefix.is_empty() {
        hex
    } else {
        format!("{prefix}-{hex}")
    }
}

impl Client {
    pub(super) fn new(config: &ClientConfig) -> Result<Client, ApiError> {
        let parts = split_repo(FORGE, &config.repo, true)?;
        let Auth::Token(token) = &config.auth else {
            return Err(ApiError::config(
                FORGE,
                "new",
                "Bitbucket needs an access token (GitHub App auth is for GitHub)",
            ));
        };
        let base = super::parse_base(FORGE, &config.api_url)?;
        Ok(Client {
            http: super::http_client(FORGE, config.timeout)?,
            base,
            workspace: parts[0].clone(),
            slug: parts[1].clone(),
            token: token.clone(),
        })
    }

    /// `base` + the path segments, each percent-encoded as needed.
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn repo_url(&self, rest: &[&str]) -> reqwest::Url {
        let mut segments = vec!["repositories", self.workspace.as_str(), self.slug.as_str()];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    async fn send(
        &self,
        call: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiError> {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let (status, _, text) = send_reqwest(FORGE, call, request).await?;
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        Ok((status, parse_json(FORGE, call, status, &text)?))
    }

    pub(super) async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: &str,
    ) -> Result<(), ApiError> {
        let state_word = match state {
            StatusState::Pending | StatusState::Running => "INPROGRESS",
            StatusState::Success => "SUCCESSFUL",
            StatusState::Failure | StatusState::Error => "FAILED",
            StatusState::Canceled => "STOPPED",
        };
        let description = description_or_default(state, description);
        let body = json!({
            "key": status_key(context),
            "state": state_word,
            "name": context,
            "url": target_url,
            "description": truncate_chars(&description, 255),
        });
        let url = self.repo_url(&["commit", sha, "statuses", "build"]);
        self.send("set_status", reqwest::Method::POST, url, Some(&body))
            .await
            .map(|_| ())
    }

    pub(super) async fn create_comment(&self, pr: u64, body: &str) -> Result<String, ApiError> {
        let call = "create_comment";
        let pr = pr.to_string();
        let url = self.repo_url(&["pullrequests", &pr, "comments"]);
        let (status, value) = self
            .send(
                call,
                reqwest::Method::POST,
                url,
                Some(&json!({ "content": { "raw": body } })),
            )
            .await?;
        value
            .get("id")
            .and_then(id_text)
            .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "comment without id"))
    }

    pub(super) async fn edit_comment(&self, pr: u64, id: u64, body: &str) -> Result<(), ApiError> {
        let (pr, id) = (pr.to_string(), id.to_string());
        let url = self.repo_url(&["pullrequests", &pr, "comments", &id]);
        self.send(
            "edit_comment",
            reqwest::Method::PUT,
            url,
            Some(&json!({ "content": { "raw": body } })),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn own_account(&self) -> Result<Vec<String>, ApiError> {
        let call = "own_account";
        let url = self.url(&["user"]);
        let (status, value) = self.send(call, reqwest::Method::GET, url, None).await?;
        let ids: Vec<String> = ["account_id", "uuid"]
            .iter()
            .filter_map(|k| value.get(*k).and_then(id_text))
            .collect();
        if ids.is_empty() {
            return Err(ApiError::invalid_answer(
                FORGE,
                call,
                status,
                "no account_id or uuid",
            ));
        }
        Ok(ids)
    }

    pub(super) async fn find_comment(
        &self,
        pr: u64,
        marker: &str,
        own: &[String],
    ) -> Result<Option<String>, ApiError> {
        let call = "find_comment";
        let pr = pr.to_string();
        let mut url = self.repo_url(&["pullrequests", &pr, "comments"]);
        url.query_pairs_mut()
            .append_pair("pagelen", &PAGELEN.to_string())
            .append_pair("sort", "created_on");
        for _ in 0..MAX_PAGES {
            let (status, page) = self.send(call, reqwest::Method::GET, url, None).await?;
            let Some(items) = page.get("values").and_then(Value::as_array) else {
                return Err(ApiError::invalid_answer(FORGE, call, status, "no values"));
            };
            for item in items {
                if item.get("deleted").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                let raw = item
                    .pointer("/content/raw")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if raw.contains(marker)
                    && super::written_by(item, &["/user/account_id", "/user/uuid"], own)
                    && let Some(id) = item.get("id").and_then(id_text)
                {
                    return Ok(Some(id));
                }
            }
            // Follow `next`, but only to the API we were configured with: the token goes along.
            match page
                .get("next")
                .and_then(Value::as_str)
                .and_then(|next| reqwest::Url::parse(next).ok())
            {
                Some(next) if next.origin() == self.base.origin() => url = next,
                _ => break,
            }
        }
        Ok(None)
    }

    pub(super) async fn can_write(&self, user: &str) -> Result<bool, ApiError> {
        let call = "can_write";
        let quoted = format!("\"{}\"", user.replace('\\', "\\\\").replace('"', "\\\""));
        // Never by nickname: anyone can take a nickname another user has.
        let query = format!("user.account_id={quoted} OR user.uuid={quoted}");
        let mut url = self.url(&[
            "workspaces",
            self.workspace.as_str(),
            "permissions",
            "repositories",
            self.slug.as_str(),
        ]);
        url.query_pairs_mut().append_pair("q", &query);
        let (_, page) = self.send(call, reqwest::Method::GET, url, None).await?;
        let values = page
            .get("values")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(values.iter().any(|entry| {
            matches!(
                entry.get("permission").and_then(Value::as_str),
                Some("admin" | "write")
            )
        }))
    }

    pub(super) async fn pr_head(&self, pr: u64) -> Result<String, ApiError> {
        let call = "pr_head";
        let pr = pr.to_string();
        let url = self.repo_url(&["pullrequests", &pr]);
        let (status, value) = self.send(call, reqwest::Method::GET, url, None).await?;
        value
            .pointer("/source/commit/hash")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "no source.commit.hash"))
    }
}

#[cfg(test)]
mod tests {
    use super::status_key;

    #[test]
    fn keys() {
        assert_eq!(status_key("gantry-build"), "gantry-build");
        let long = status_key("gantry/a-very-long-pipeline-name-that-goes-on-and-on");
        assert!(long.len() <= 40, "{long}");
        assert!(long.starts_with("gantry-a-very-long-pipe-"), "{long}");
        assert_eq!(
            long,
            status_key("gantry/a-very-long-pipeline-name-that-goes-on-and-on")
        );
        assert_ne!(status_key("gantry/x"), status_key("gantry-x"));
        assert!(status_key("gantry/x").len() <= 40);
    }
}
