//! Fake forge APIs (GitHub, GitLab, Bitbucket Cloud) on loopback for the write-back client: the
//! endpoints `gantry::forge::api::ForgeClient` uses, with the documented methods, status codes and
//! bodies (the real ones from `tests/fixtures/webhooks/api-responses/`, with the fields a call
//! sets filled in), state (comments, permissions, PR heads, GitLab's last status per sha and
//! name), a record of every request, and injectable faults.
//!
//! A plain HTTP/1.1 server on tokio (one runtime on a background thread), written by hand so a
//! fault can drop the connection or stall the answer. Each answer says `Connection: close`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry::forge::Forge;
use serde_json::{Value, json};

use super::percent_decode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The login of the account the fake forges' tokens act as (`GET /user`).
pub const OWN_LOGIN: &str = "gantry-bot";
/// The login of the fake GitHub App's bot user (`<slug>[bot]`, the slug from `GET /app`).
pub const APP_LOGIN: &str = "gantry-app[bot]";
/// Its Bitbucket account id.
pub const OWN_ACCOUNT_ID: &str = "557058:gantry-bot";

/// A Bitbucket user object as the API returns it (`GET /2.0/user`, a comment's `user`).
fn bitbucket_user(nickname: &str, account_id: &str) -> Value {
    json!({
        "type": "user",
        "display_name": nickname,
        "nickname": nickname,
        "account_id": account_id,
        "uuid": format!("{{{account_id}}}"),
        "links": { "self": { "href": format!("https://api.bitbucket.org/2.0/users/{account_id}") } },
    })
}

/// The installation id the fake GitHub answers for every repository.
pub const INSTALLATION_ID: u64 = 7;
/// The installation token the fake GitHub hands out for `INSTALLATION_ID`.
pub const INSTALLATION_TOKEN: &str = "ghs_fakeInstallationToken0123456789";

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// As sent, still percent-encoded (GitLab's `projects/group%2Fproject/...`).
    pub path: String,
    /// The raw query, without `?`; empty when there was none.
    pub query: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The body as a form (`application/x-www-form-urlencoded`, GitLab).
    pub fn form(&self) -> BTreeMap<String, String> {
        parse_pairs(&self.body)
    }

    pub fn query_pairs(&self) -> BTreeMap<String, String> {
        parse_pairs(&self.query)
    }

    /// `METHOD /path` for messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the fake does instead of answering.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `500 Internal Server Error`.
    ServerError,
    /// `429 Too Many Requests` with `Retry-After: secs`.
    TooManyRequests { retry_after_secs: u64 },
    /// `403 Forbidden` with `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset: now + secs`.
    RateLimited { reset_in_secs: u64 },
    /// Answers normally, but only after this long.
    Delay(Duration),
    /// Closes the connection without answering.
    Drop,
}

struct FaultRule {
    method: Option<String>,
    path_contains: Option<String>,
    remaining: usize,
    fault: Fault,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    faults: Vec<FaultRule>,
    /// Comments per PR: (id, body), oldest first.
    comments: BTreeMap<u64, Vec<(u64, String)>>,
    next_comment_id: u64,
    permissions: HashMap<String, String>,
    /// Comments written by someone other than the token's account: comment id to login.
    comment_authors: HashMap<u64, String>,
    /// Bitbucket: the nickname of a user (keyed as in `permissions`, by account id).
    nicknames: HashMap<String, String>,
    pr_heads: HashMap<u64, String>,
    /// GitLab: the last state per (sha, name).
    gitlab_statuses: HashMap<(String, String), String>,
}

/// A fake forge API server. Dropping it stops the server.
pub struct FakeForge {
    forge: Forge,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeForge {
    pub fn start(forge: Forge) -> FakeForge {
        let state = Arc::new(Mutex::new(State {
            next_comment_id: 1001,
            ..State::default()
        }));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_state = state.clone();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake forge runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let state = server_state.clone();
                            tokio::spawn(async move { serve(forge, stream, state).await });
                        }
                    }
                }
            });
        });
        let addr = addr_rx.recv().expect("fake forge address");
        FakeForge {
            forge,
            addr,
            state,
            stop: Some(stop_tx),
        }
    }

    /// The `api_url` for `ClientConfig`: the server for GitHub and GitLab, `…/2.0` for Bitbucket.
    pub fn url(&self) -> String {
        match self.forge {
            Forge::Bitbucket => format!("http://{}/2.0", self.addr),
            _ => format!("http://{}", self.addr),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The next `n` requests, whatever they are, get `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.fail_matching(None, None, n, fault);
    }

    /// The next `n` requests with this method (if given) whose path contains `path_contains`
    /// (if given) get `fault`.
    pub fn fail_matching(
        &self,
        method: Option<&str>,
        path_contains: Option<&str>,
        n: usize,
        fault: Fault,
    ) {
        self.lock().faults.push(FaultRule {
            method: method.map(str::to_string),
            path_contains: path_contains.map(str::to_string),
            remaining: n,
            fault,
        });
    }

    /// Drops every fault not yet used up: the fake answers normally from now on.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// `user`'s access, in the forge's own words: GitHub `admin`/`maintain`/`write`/`triage`/
    /// `read`, GitLab `owner`/`maintainer`/`developer`/`reporter`/`guest`, Bitbucket `admin`/
    /// `write`/`read`. Users never set are unknown to the forge.
    pub fn set_permission(&self, user: &str, level: &str) {
        self.lock()
            .permissions
            .insert(user.to_string(), level.to_string());
    }

    /// Adds a comment on `pr` written by `author` (not by the token's own account); returns its
    /// id.
    pub fn add_comment_by(&self, pr: u64, author: &str, body: &str) -> String {
        let mut state = self.lock();
        let id = state.next_comment_id;
        state.next_comment_id += 1;
        state
            .comments
            .entry(pr)
            .or_default()
            .push((id, body.to_string()));
        state.comment_authors.insert(id, author.to_string());
        id.to_string()
    }

    /// Bitbucket: gives the user whose account id is `account_id` the nickname `nickname`
    /// (nicknames are not unique: several users may share one).
    pub fn set_nickname(&self, account_id: &str, nickname: &str) {
        self.lock()
            .nicknames
            .insert(account_id.to_string(), nickname.to_string());
    }

    pub fn set_pr_head(&self, pr: u64, sha: &str) {
        self.lock().pr_heads.insert(pr, sha.to_string());
    }

    /// Puts a comment on `pr` as if someone else wrote it; returns its id.
    pub fn add_comment(&self, pr: u64, body: &str) -> u64 {
        let mut state = self.lock();
        let id = state.next_comment_id;
        state.next_comment_id += 1;
        state
            .comments
            .entry(pr)
            .or_default()
            .push((id, body.to_string()));
        id
    }

    /// The comments on `pr`, oldest first: (id, body).
    pub fn comments(&self, pr: u64) -> Vec<(String, String)> {
        self.lock()
            .comments
            .get(&pr)
            .map(|list| {
                list.iter()
                    .map(|(id, body)| (id.to_string(), body.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fixture body from `tests/fixtures/webhooks/api-responses/` (or the shared folder it is
/// copied from).
fn fixture(name: &str) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("tests/fixtures/webhooks/api-responses")
            .join(name),
        root.join("tests/fixtures/webhooks").join(name),
        root.join("../shared/webhooks/api-responses").join(name),
    ];
    for path in &candidates {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        }
    }
    panic!("fixture {name} not found in {candidates:?}");
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn not_found() -> Answer {
    answer(404, json!({ "message": "Not Found" }))
}

async fn serve(forge: Forge, mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let fault = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests.push(request.clone());
        let rule = state.faults.iter_mut().find(|rule| {
            rule.remaining > 0
                && rule.method.as_deref().is_none_or(|m| m == request.method)
                && rule
                    .path_contains
                    .as_deref()
                    .is_none_or(|p| request.path.contains(p))
        });
        rule.map(|rule| {
            rule.remaining -= 1;
            rule.fault.clone()
        })
    };
    let answer = match fault {
        Some(Fault::Drop) => return,
        Some(Fault::ServerError) => answer(500, json!({ "message": "Internal Server Error" })),
        Some(Fault::TooManyRequests { retry_after_secs }) => Answer {
            headers: vec![("Retry-After".into(), retry_after_secs.to_string())],
            ..answer(429, json!({ "message": "Too Many Requests" }))
        },
        Some(Fault::RateLimited { reset_in_secs }) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            Answer {
                headers: vec![
                    ("X-RateLimit-Remaining".into(), "0".into()),
                    (
                        "X-RateLimit-Reset".into(),
                        (now.as_secs() + reset_in_secs).to_string(),
                    ),
                ],
                ..answer(403, json!({ "message": "API rate limit exceeded" }))
            }
        }
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            route(forge, &request, &state)
        }
        None => route(forge, &request, &state),
    };
    let reason = match answer.status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Other",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(answer.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Recorded {
        method,
        path,
        query,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn parse_pairs(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn route(forge: Forge, request: &Recorded, state: &Mutex<State>) -> Answer {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let segments: Vec<String> = request
        .path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match forge {
        Forge::Github => github(request, &segs, &mut state),
        Forge::Gitlab => gitlab(request, &segs, &mut state),
        Forge::Bitbucket => bitbucket(request, &segs, &mut state),
    }
}

fn page_of<T: Clone>(items: &[T], page: usize, per_page: usize) -> Vec<T> {
    items
        .iter()
        .skip(page.saturating_sub(1) * per_page)
        .take(per_page)
        .cloned()
        .collect()
}

fn github(request: &Recorded, segs: &[&str], state: &mut State) -> Answer {
    let Some(auth) = request.header("authorization") else {
        return answer(401, json!({ "message": "Requires authentication" }));
    };
    let method = request.method.as_str();
    let is_jwt = auth
        .strip_prefix("Bearer ")
        .is_some_and(|t| t.starts_with("eyJ") && t.split('.').count() == 3);
    match (method, segs) {
        ("GET", ["repos", owner, repo, "installation"]) => {
            if !is_jwt {
                return answer(
                    401,
                    json!({ "message": "A JSON web token could not be decoded" }),
                );
            }
            answer(
                200,
                json!({
                    "id": INSTALLATION_ID,
                    "account": { "login": owner, "id": 1, "type": "Organization" },
                    "access_tokens_url": format!("/app/installations/{INSTALLATION_ID}/access_tokens"),
                    "repositories_url": "/installation/repositories",
                    "app_id": 1,
                    "target_type": "Organization",
                    "permissions": { "statuses": "write", "issues": "write", "pull_requests": "read" },
                    "events": ["push", "pull_request", "issue_comment"],
                    "repository_selection": "selected",
                    "repo": repo,
                }),
            )
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if !is_jwt {
                return answer(
                    401,
                    json!({ "message": "A JSON web token could not be decoded" }),
                );
            }
            if *id != INSTALLATION_ID.to_string() {
                return not_found();
            }
            answer(
                201,
                json!({
                    "token": INSTALLATION_TOKEN,
                    "expires_at": "2099-01-01T00:00:00Z",
                    "permissions": { "statuses": "write", "issues": "write", "pull_requests": "read" },
                    "repository_selection": "selected",
                }),
            )
        }
        ("POST", ["repos", _, _, "statuses", sha]) => {
            let body = request.json();
            let Some(state_word) = body.get("state").and_then(Value::as_str) else {
                return answer(422, json!({ "message": "Validation Failed" }));
            };
            if !["error", "failure", "pending", "success"].contains(&state_word) {
                return answer(422, json!({ "message": "Validation Failed" }));
            }
            let mut status = fixture("github-api-create-status-response.json");
            status["state"] = json!(state_word);
            status["context"] = body.get("context").cloned().unwrap_or(json!("default"));
            status["description"] = body.get("description").cloned().unwrap_or(Value::Null);
            status["target_url"] = body.get("target_url").cloned().unwrap_or(Value::Null);
            status["url"] = json!(format!("/repos/o/r/statuses/{sha}"));
            answer(201, status)
        }
        ("POST", ["repos", _, _, "issues", number, "comments"]) => {
            let Ok(pr) = number.parse::<u64>() else {
                return not_found();
            };
            let Some(text) = request
                .json()
                .get("body")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return answer(422, json!({ "message": "Validation Failed" }));
            };
            let id = state.next_comment_id;
            state.next_comment_id += 1;
            state
                .comments
                .entry(pr)
                .or_default()
                .push((id, text.clone()));
            // An App's installation token writes as the App's bot user.
            if request.header("authorization") == Some(&format!("Bearer {INSTALLATION_TOKEN}")) {
                state.comment_authors.insert(id, APP_LOGIN.to_string());
            }
            let mut comment = fixture("github-api-issue-comment-response.json");
            comment["id"] = json!(id);
            comment["body"] = json!(text);
            answer(201, comment)
        }
        ("PATCH", ["repos", _, _, "issues", "comments", id]) => {
            let Some(text) = request
                .json()
                .get("body")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return answer(422, json!({ "message": "Validation Failed" }));
            };
            let Ok(id) = id.parse::<u64>() else {
                return not_found();
            };
            for list in state.comments.values_mut() {
                if let Some(entry) = list.iter_mut().find(|(i, _)| *i == id) {
                    entry.1 = text.clone();
                    let mut comment = fixture("github-api-issue-comment-response.json");
                    comment["id"] = json!(id);
                    comment["body"] = json!(text);
                    return answer(200, comment);
                }
            }
            not_found()
        }
        ("GET", ["user"]) => {
            let mut user = fixture("github-api-issue-comment-response.json")["user"].clone();
            user["login"] = json!(OWN_LOGIN);
            answer(200, user)
        }
        ("GET", ["app"]) => answer(
            200,
            json!({ "id": 1, "slug": "gantry-app", "name": "Gantry", "owner": { "login": "acme" } }),
        ),
        ("GET", ["repos", _, _, "issues", number, "comments"]) => {
            let pr: u64 = number.parse().unwrap_or(0);
            let query = request.query_pairs();
            let per_page = query
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30);
            let page = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let all = state.comments.get(&pr).cloned().unwrap_or_default();
            let list: Vec<Value> = page_of(&all, page, per_page)
                .into_iter()
                .map(|(id, body)| {
                    let mut comment = fixture("github-api-issue-comment-response.json");
                    comment["id"] = json!(id);
                    comment["body"] = json!(body);
                    let author = state
                        .comment_authors
                        .get(&id)
                        .map_or(OWN_LOGIN, String::as_str);
                    comment["user"]["login"] = json!(author);
                    comment
                })
                .collect();
            answer(200, Value::Array(list))
        }
        ("GET", ["repos", _, _, "collaborators", user, "permission"]) => {
            let role = state.permissions.get(*user).cloned();
            let Some(role) = role else {
                return not_found();
            };
            let permission = match role.as_str() {
                "admin" => "admin",
                "maintain" | "write" => "write",
                "triage" | "read" => "read",
                _ => "none",
            };
            answer(
                200,
                json!({ "permission": permission, "role_name": role, "user": { "login": user } }),
            )
        }
        ("GET", ["repos", _, _, "pulls", number]) => {
            let pr: u64 = number.parse().unwrap_or(0);
            match state.pr_heads.get(&pr) {
                Some(sha) => answer(
                    200,
                    json!({ "number": pr, "state": "open", "head": { "sha": sha, "ref": "feature" }, "base": { "ref": "main" } }),
                ),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn gitlab_level(name: &str) -> u64 {
    match name {
        "owner" => 50,
        "maintainer" => 40,
        "developer" => 30,
        "reporter" => 20,
        "guest" => 10,
        _ => 0,
    }
}

fn gitlab(request: &Recorded, segs: &[&str], state: &mut State) -> Answer {
    if request.header("private-token").is_none() && request.header("authorization").is_none() {
        return answer(401, json!({ "message": "401 Unauthorized" }));
    }
    let Some(segs) = segs.strip_prefix(&["api", "v4"]) else {
        return not_found();
    };
    let method = request.method.as_str();
    match (method, segs) {
        ("GET", ["user"]) => answer(
            200,
            json!({ "id": 1, "username": "gantry-bot", "name": "Gantry", "state": "active" }),
        ),
        ("POST", ["projects", _, "statuses", sha]) => {
            let form = request.form();
            let Some(new_state) = form.get("state").cloned() else {
                return answer(400, json!({ "error": "state is missing" }));
            };
            let name = form
                .get("name")
                .cloned()
                .unwrap_or_else(|| "default".into());
            let key = (sha.to_string(), name.clone());
            if let Some(old) = state.gitlab_statuses.get(&key)
                && *old == new_state
            {
                let event = match new_state.as_str() {
                    "pending" => "enqueue",
                    "running" => "run",
                    "success" => "succeed",
                    "failed" => "drop",
                    "canceled" => "cancel",
                    other => other,
                };
                return answer(
                    400,
                    json!({ "message": format!("Cannot transition status via :{event} from :{old}") }),
                );
            }
            state.gitlab_statuses.insert(key, new_state.clone());
            let mut status = fixture("gitlab-api-commit-status-response.json");
            status["status"] = json!(new_state);
            status["name"] = json!(name);
            status["sha"] = json!(sha);
            status["description"] = json!(form.get("description"));
            status["target_url"] = json!(form.get("target_url"));
            answer(201, status)
        }
        ("POST", ["projects", _, "merge_requests", iid, "notes"]) => {
            let pr: u64 = iid.parse().unwrap_or(0);
            let Some(text) = request
                .form()
                .get("body")
                .cloned()
                .filter(|b| !b.is_empty())
            else {
                return answer(
                    400,
                    json!({ "message": "400 Bad request - Note {:note=>[\"can't be blank\"]}" }),
                );
            };
            let id = state.next_comment_id;
            state.next_comment_id += 1;
            state
                .comments
                .entry(pr)
                .or_default()
                .push((id, text.clone()));
            let mut note = fixture("gitlab-api-merge-request-note-response.json");
            note["id"] = json!(id);
            note["body"] = json!(text);
            note["noteable_iid"] = json!(pr);
            answer(201, note)
        }
        ("PUT", ["projects", _, "merge_requests", iid, "notes", id]) => {
            let pr: u64 = iid.parse().unwrap_or(0);
            let id: u64 = id.parse().unwrap_or(0);
            let Some(text) = request.form().get("body").cloned() else {
                return answer(400, json!({ "error": "body is missing" }));
            };
            let Some(entry) = state
                .comments
                .get_mut(&pr)
                .and_then(|list| list.iter_mut().find(|(i, _)| *i == id))
            else {
                return answer(404, json!({ "message": "404 Not found" }));
            };
            entry.1 = text.clone();
            let mut note = fixture("gitlab-api-merge-request-note-response.json");
            note["id"] = json!(id);
            note["body"] = json!(text);
            note["noteable_iid"] = json!(pr);
            answer(200, note)
        }
        ("GET", ["projects", _, "merge_requests", iid, "notes"]) => {
            let pr: u64 = iid.parse().unwrap_or(0);
            let query = request.query_pairs();
            let per_page = query
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20);
            let page = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let mut all = state.comments.get(&pr).cloned().unwrap_or_default();
            // GitLab's default order is newest first.
            if query.get("sort").map(String::as_str) != Some("asc") {
                all.reverse();
            }
            let list: Vec<Value> = page_of(&all, page, per_page)
                .into_iter()
                .map(|(id, body)| {
                    let mut note = fixture("gitlab-api-merge-request-note-response.json");
                    note["id"] = json!(id);
                    note["body"] = json!(body);
                    note["noteable_iid"] = json!(pr);
                    // The token's user is id 1 (`GET /user`); anyone else id 2.
                    match state.comment_authors.get(&id) {
                        Some(author) => {
                            note["author"]["id"] = json!(2);
                            note["author"]["username"] = json!(author);
                        }
                        None => {
                            note["author"]["id"] = json!(1);
                            note["author"]["username"] = json!(OWN_LOGIN);
                        }
                    }
                    note
                })
                .collect();
            answer(200, Value::Array(list))
        }
        ("GET", ["users"]) => {
            let username = request
                .query_pairs()
                .get("username")
                .cloned()
                .unwrap_or_default();
            let list: Vec<Value> = gitlab_user_id(state, &username)
                .map(|id| json!({ "id": id, "username": username, "name": username, "state": "active" }))
                .into_iter()
                .collect();
            answer(200, Value::Array(list))
        }
        ("GET", ["projects", _, "members", "all", user_id]) => {
            let user_id: u64 = user_id.parse().unwrap_or(0);
            let found = state
                .permissions
                .iter()
                .map(|(name, level)| (name.clone(), level.clone()))
                .find(|(name, _)| gitlab_user_id(state, name) == Some(user_id));
            match found {
                Some((name, level)) if gitlab_level(&level) > 0 => answer(
                    200,
                    json!({ "id": user_id, "username": name, "state": "active", "access_level": gitlab_level(&level) }),
                ),
                _ => answer(404, json!({ "message": "404 Not found" })),
            }
        }
        ("GET", ["projects", _, "merge_requests", iid]) => {
            let pr: u64 = iid.parse().unwrap_or(0);
            match state.pr_heads.get(&pr) {
                Some(sha) => answer(
                    200,
                    json!({ "id": 9000 + pr, "iid": pr, "state": "opened", "sha": sha, "source_branch": "feature", "target_branch": "main" }),
                ),
                None => answer(404, json!({ "message": "404 Not found" })),
            }
        }
        _ => answer(404, json!({ "error": "404 Not Found" })),
    }
}

/// Users the fake GitLab knows: those with a permission set, numbered by name.
fn gitlab_user_id(state: &State, username: &str) -> Option<u64> {
    let mut names: Vec<&String> = state.permissions.keys().collect();
    names.sort();
    names
        .iter()
        .position(|n| n.as_str() == username)
        .map(|i| 100 + i as u64)
}

fn bitbucket(request: &Recorded, segs: &[&str], state: &mut State) -> Answer {
    if !request
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer "))
    {
        return answer(
            401,
            json!({ "type": "error", "error": { "message": "Unauthorized" } }),
        );
    }
    let Some(segs) = segs.strip_prefix(&["2.0"]) else {
        return not_found();
    };
    let method = request.method.as_str();
    let bb_not_found = || {
        answer(
            404,
            json!({ "type": "error", "error": { "message": "Resource not found" } }),
        )
    };
    let comment_json = |id: u64, raw: &str, pr: u64| {
        let mut comment = fixture("bitbucket-api-pullrequest-comment-response.json");
        comment["id"] = json!(id);
        comment["content"]["raw"] = json!(raw);
        comment["pullrequest"]["id"] = json!(pr);
        comment
    };
    match (method, segs) {
        ("POST", ["repositories", _, _, "commit", sha, "statuses", "build"]) => {
            let body = request.json();
            let key = body.get("key").and_then(Value::as_str).unwrap_or_default();
            let state_word = body
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if key.is_empty()
                || key.len() > 40
                || !["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"].contains(&state_word)
                || body.get("url").is_none()
            {
                return answer(
                    400,
                    json!({ "type": "error", "error": { "message": "Bad request" } }),
                );
            }
            let mut status = fixture("bitbucket-api-commit-status-build-response.json");
            for field in ["key", "state", "name", "url", "description"] {
                status[field] = body.get(field).cloned().unwrap_or(Value::Null);
            }
            status["commit"]["hash"] = json!(sha);
            answer(201, status)
        }
        ("POST", ["repositories", _, _, "pullrequests", id, "comments"]) => {
            let pr: u64 = id.parse().unwrap_or(0);
            let Some(raw) = request
                .json()
                .pointer("/content/raw")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return answer(
                    400,
                    json!({ "type": "error", "error": { "message": "Bad request" } }),
                );
            };
            let id = state.next_comment_id;
            state.next_comment_id += 1;
            state
                .comments
                .entry(pr)
                .or_default()
                .push((id, raw.clone()));
            answer(201, comment_json(id, &raw, pr))
        }
        ("PUT", ["repositories", _, _, "pullrequests", pr, "comments", id]) => {
            let pr: u64 = pr.parse().unwrap_or(0);
            let id: u64 = id.parse().unwrap_or(0);
            let Some(raw) = request
                .json()
                .pointer("/content/raw")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return answer(
                    400,
                    json!({ "type": "error", "error": { "message": "Bad request" } }),
                );
            };
            let Some(entry) = state
                .comments
                .get_mut(&pr)
                .and_then(|list| list.iter_mut().find(|(i, _)| *i == id))
            else {
                return bb_not_found();
            };
            entry.1 = raw.clone();
            answer(200, comment_json(id, &raw, pr))
        }
        ("GET", ["user"]) => answer(200, bitbucket_user(OWN_LOGIN, OWN_ACCOUNT_ID)),
        ("GET", ["repositories", ws, slug, "pullrequests", id, "comments"]) => {
            let pr: u64 = id.parse().unwrap_or(0);
            let query = request.query_pairs();
            let pagelen = query
                .get("pagelen")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            let page = query
                .get("page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1usize);
            let all = state.comments.get(&pr).cloned().unwrap_or_default();
            let values: Vec<Value> = page_of(&all, page, pagelen)
                .into_iter()
                .map(|(id, raw)| {
                    let mut comment = comment_json(id, &raw, pr);
                    comment["user"] = match state.comment_authors.get(&id) {
                        Some(author) => bitbucket_user(author, author),
                        None => bitbucket_user(OWN_LOGIN, OWN_ACCOUNT_ID),
                    };
                    comment
                })
                .collect();
            let mut body =
                json!({ "pagelen": pagelen, "size": all.len(), "page": page, "values": values });
            if page * pagelen < all.len() {
                let host = request.header("host").unwrap_or("127.0.0.1");
                body["next"] = json!(format!(
                    "http://{host}/2.0/repositories/{ws}/{slug}/pullrequests/{pr}/comments?pagelen={pagelen}&page={}",
                    page + 1
                ));
            }
            answer(200, body)
        }
        ("GET", ["workspaces", ws, "permissions", "repositories", slug]) => {
            let q = request.query_pairs().get("q").cloned().unwrap_or_default();
            // `user.<field>="<value>" OR ...`, as Bitbucket filters: the users (keyed by account
            // id in `permissions`) any clause matches. A user's uuid here is `{<account id>}`.
            let mut matched: Vec<String> = Vec::new();
            for clause in q.split(" OR ") {
                let Some((field, value)) = clause.trim().split_once('=') else {
                    continue;
                };
                let value = value
                    .trim()
                    .trim_matches('"')
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\");
                for account in state.permissions.keys() {
                    let nickname = state.nicknames.get(account).unwrap_or(account);
                    let hit = match field.trim() {
                        "user.account_id" => *account == value,
                        "user.uuid" => format!("{{{account}}}") == value,
                        "user.nickname" => *nickname == value,
                        _ => false,
                    };
                    if hit && !matched.contains(account) {
                        matched.push(account.clone());
                    }
                }
            }
            let values: Vec<Value> = matched
                .iter()
                .map(|account| {
                    let nickname = state.nicknames.get(account).unwrap_or(account);
                    json!({
                        "type": "repository_permission",
                        "permission": state.permissions[account],
                        "user": { "type": "user", "nickname": nickname, "display_name": nickname,
                                  "uuid": format!("{{{account}}}"), "account_id": account },
                        "repository": { "type": "repository", "full_name": format!("{ws}/{slug}"), "name": slug },
                    })
                })
                .collect();
            answer(
                200,
                json!({ "pagelen": 10, "size": values.len(), "page": 1, "values": values }),
            )
        }
        ("GET", ["repositories", _, _, "pullrequests", id]) => {
            let pr: u64 = id.parse().unwrap_or(0);
            match state.pr_heads.get(&pr) {
                Some(hash) => answer(
                    200,
                    json!({ "type": "pullrequest", "id": pr, "state": "OPEN",
                            "source": { "commit": { "hash": hash, "type": "commit" }, "branch": { "name": "feature" } },
                            "destination": { "branch": { "name": "main" } } }),
                ),
                None => bb_not_found(),
            }
        }
        _ => bb_not_found(),
    }
}
