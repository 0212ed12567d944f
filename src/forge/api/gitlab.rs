//! GitLab: the gitlab crate's endpoint definitions (paths, the URL-encoded project id, the
//! form-encoded bodies) sent by our own reqwest client. Sending them ourselves (rather than
//! through `AsyncGitlab`) gives one attempt per call under our timeout, the answer's
//! `Retry-After`/`RateLimit-Reset` headers (the crate's errors drop them), and a constructor
//! without the crate's `GET /api/v4/user` check. Auth is the `PRIVATE-TOKEN` header, as the
//! crate sends it.

use ::gitlab::api::Endpoint;
use ::gitlab::api::common::SortOrder;
use ::gitlab::api::projects::members::AllProjectMember;
use ::gitlab::api::projects::merge_requests::MergeRequest;
use ::gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes, NoteOrderBy,
};
use ::gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};
use ::gitlab::api::users::{CurrentUser, Users};
use serde_json::Value;

use super::{
    ApiError, Auth, ClientConfig, Forge, MAX_PAGES, PER_PAGE, StatusState, description_or_default,
    id_text, marked_on_page, parse_json, send_reqwest, split_repo, truncate_chars,
};

const FORGE: Forge = Forge::Gitlab;

/// GitLab's developer access level, the least that may push.
const DEVELOPER: u64 = 30;

pub(super) struct Client {
    http: reqwest::Client,
    /// `…/api/v4/`, with the trailing slash `Url::join` needs.
    base: reqwest::Url,
    project: String,
    token: String,
}

impl Client {
    pub(super) fn new(config: &ClientConfig) -> Result<Client, ApiError> {
        split_repo(FORGE, &config.repo, false)?;
        let Auth::Token(token) = &config.auth else {
            return Err(ApiError::config(
                FORGE,
                "new",
                "GitLab needs a token (GitHub App auth is for GitHub)",
            ));
        };
        let mut base = super::parse_base(FORGE, &config.api_url)?;
        if !base.path().trim_end_matches('/').ends_with("/api/v4") {
            let path = format!("{}/api/v4", base.path().trim_end_matches('/'));
            base.set_path(&path);
        }
        let path = format!("{}/", base.path().trim_end_matches('/'));
        base.set_path(&path);
        Ok(Client {
            http: super::http_client(FORGE, config.timeout)?,
            base,
            project: config.repo.clone(),
            token: token.clone(),
        })
    }

    /// Sends `endpoint` once (with `page`/`per_page` when `page` is given) and returns the
    /// status and the parsed JSON body.
    async fn send(
        &self,
        call: &str,
        endpoint: &impl Endpoint,
        page: Option<u32>,
    ) -> Result<(u16, Value), ApiError> {
        let mut url = self
            .base
            .join(&endpoint.endpoint())
            .map_err(|e| ApiError::config(FORGE, call, format!("URL: {e}")))?;
        endpoint.parameters().add_to_url(&mut url);
        if let Some(page) = page {
            url.query_pairs_mut()
                .append_pair("per_page", &PER_PAGE.to_string())
                .append_pair("page", &page.to_string());
        }
        let mut request = self
            .http
            .request(endpoint.method(), url)
            .header("PRIVATE-TOKEN", &self.token);
        if let Some((mime, data)) = endpoint
            .body()
            .map_err(|e| ApiError::config(FORGE, call, format!("body: {e}")))?
        {
            request = request.header(http::header::CONTENT_TYPE, mime).body(data);
        }
        let (status, _, body) = send_reqwest(FORGE, call, request).await?;
        if body.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        Ok((status, parse_json(FORGE, call, status, &body)?))
    }

    pub(super) async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: &str,
    ) -> Result<(), ApiError> {
        let call = "set_status";
        let gl_state = match state {
            StatusState::Pending => CommitStatusState::Pending,
            StatusState::Running => CommitStatusState::Running,
            StatusState::Success => CommitStatusState::Success,
            StatusState::Failure | StatusState::Error => CommitStatusState::Failed,
            StatusState::Canceled => CommitStatusState::Canceled,
        };
        let description = description_or_default(state, description);
        let mut builder = CreateCommitStatus::builder();
        builder
            .project(self.project.as_str())
            .commit(sha)
            .state(gl_state)
            .name(context)
            // GitLab refuses more than 255 characters.
            .description(truncate_chars(&description, 255));
        if !target_url.is_empty() {
            builder.target_url(target_url);
        }
        let endpoint = builder
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        match self.send(call, &endpoint, None).await {
            Ok(_) => Ok(()),
            // The status is already in this state (GitLab answers 400 "Cannot transition status
            // via :run from :running" to a repeated state): what we wanted holds.
            Err(e) if e.status == Some(400) && e.message.contains("Cannot transition status") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn create_comment(&self, pr: u64, body: &str) -> Result<String, ApiError> {
        let call = "create_comment";
        let endpoint = CreateMergeRequestNote::builder()
            .project(self.project.as_str())
            .merge_request(pr)
            .body(body)
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        let (status, value) = self.send(call, &endpoint, None).await?;
        value
            .get("id")
            .and_then(id_text)
            .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "note without id"))
    }

    pub(super) async fn edit_comment(&self, pr: u64, id: u64, body: &str) -> Result<(), ApiError> {
        let call = "edit_comment";
        let endpoint = EditMergeRequestNote::builder()
            .project(self.project.as_str())
            .merge_request(pr)
            .note(id)
            .body(body)
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        self.send(call, &endpoint, None).await.map(|_| ())
    }

    pub(super) async fn own_account(&self) -> Result<Vec<String>, ApiError> {
        let call = "own_account";
        let endpoint = CurrentUser::builder()
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        let (status, value) = self.send(call, &endpoint, None).await?;
        let id = value
            .get("id")
            .and_then(super::id_text)
            .ok_or_else(|| ApiError::invalid_answer(FORGE, call, status, "no id"))?;
        Ok(vec![id])
    }

    pub(super) async fn find_comment(
        &self,
        pr: u64,
        marker: &str,
        own: &[String],
    ) -> Result<Option<String>, ApiError> {
        let call = "find_comment";
        let endpoint = MergeRequestNotes::builder()
            .project(self.project.as_str())
            .merge_request(pr)
            .order_by(NoteOrderBy::CreatedAt)
            .sort(SortOrder::Ascending)
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        for page in 1..=MAX_PAGES {
            let (status, value) = self.send(call, &endpoint, Some(page)).await?;
            let (found, more) =
                marked_on_page(FORGE, call, status, &value, marker, ("/author/id", own))?;
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
        let endpoint = Users::builder()
            .username(user)
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        let (_, users) = self.send(call, &endpoint, None).await?;
        let Some(user_id) = users
            .as_array()
            .and_then(|list| {
                list.iter().find(|u| {
                    u.get("username")
                        .and_then(Value::as_str)
                        .is_some_and(|name| name.eq_ignore_ascii_case(user))
                })
            })
            .and_then(|u| u.get("id"))
            .and_then(Value::as_u64)
        else {
            return Ok(false);
        };
        let endpoint = AllProjectMember::builder()
            .project(self.project.as_str())
            .user(user_id)
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        match self.send(call, &endpoint, None).await {
            Ok((_, member)) => Ok(member
                .get("access_level")
                .and_then(Value::as_u64)
                .is_some_and(|level| level >= DEVELOPER)),
            // Not a member, directly or through a group.
            Err(e) if e.status == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn pr_head(&self, pr: u64) -> Result<String, ApiError> {
        let call = "pr_head";
        let endpoint = MergeRequest::builder()
            .project(self.project.as_str())
            .merge_request(pr)
            .build()
            .map_err(|e| ApiError::config(FORGE, call, e))?;
        let (status, value) = self.send(call, &endpoint, None).await?;
        value
            .get("sha")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid_answer(FORGE, call, status, "merge request without sha")
            })
    }
}
