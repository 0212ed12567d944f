//! The HTTP side of the Argo executor: the Argo Server's REST API (Workflows: create, get, list by
//! label, watch events, logs, terminate, delete) and the Kubernetes API's Secrets (create, own,
//! delete), as `../shared/argo/NOTES.md` documents them. Calls that cannot reach the server, or
//! that it answers 5xx, are tried again with backoff before they fail as `Unavailable`, naming the
//! server; 4xx answers are `Refused` with the server's own message. The token is never printed.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

/// Where and as whom the executor talks to the cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// The Argo Server, e.g. `https://argo.example:2746`.
    pub server: String,
    /// The Kubernetes API server (for the run's Secret); often another address.
    pub kube: String,
    pub namespace: String,
    /// A bearer token for the Argo Server (a service account's).
    pub token: Token,
    /// The Kubernetes API's token, when it is another one.
    pub kube_token: Option<Token>,
    /// A PEM certificate (authority) to trust besides the system's, e.g. the cluster's CA.
    pub ca_pem: Option<Vec<u8>>,
}

/// A bearer token: a value, or a file read again at every call (a projected service-account
/// token, which the kubelet rotates).
#[derive(Clone, PartialEq, Eq)]
pub enum Token {
    Value(String),
    File(std::path::PathBuf),
}

impl Token {
    fn read(&self) -> String {
        match self {
            Token::Value(v) => v.clone(),
            Token::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

impl From<&str> for Token {
    fn from(value: &str) -> Token {
        Token::Value(value.to_string())
    }
}

impl From<String> for Token {
    fn from(value: String) -> Token {
        Token::Value(value)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("kube", &self.kube)
            .field("namespace", &self.namespace)
            .field("token", &"***")
            .field("kube_token", &self.kube_token.as_ref().map(|_| "***"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not reached, or answered 5xx, after the retries.
    #[error("{server} {reason}")]
    Unavailable { server: String, reason: String },
    /// A 4xx answer: the request itself is wrong (or not allowed).
    #[error("{server} answered {status}: {message}")]
    Refused {
        server: String,
        status: u16,
        message: String,
    },
}

/// Which of the two APIs a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Argo,
    Kube,
}

/// A client of one installation.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    conn: Connection,
    /// Waits between tries of a call that found the server unavailable.
    backoff: Vec<Duration>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("conn", &self.conn).finish()
    }
}

/// The message of an error answer: grpc-gateway's `{"message"}`, a Kubernetes `Status`'s
/// `message`, or the body as it is.
fn message_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

impl Client {
    pub fn new(conn: Connection) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &conn.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem).map_err(|e| ClientError::Unavailable {
                server: conn.server.clone(),
                reason: format!("cannot read the CA certificate: {e}"),
            })?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().map_err(|e| ClientError::Unavailable {
            server: conn.server.clone(),
            reason: format!("cannot set up HTTP: {e}"),
        })?;
        Ok(Client {
            http,
            conn,
            backoff: vec![
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
        })
    }

    /// Waits between tries of an unavailable server (tests shorten them).
    pub fn with_backoff(mut self, backoff: Vec<Duration>) -> Client {
        self.backoff = backoff;
        self
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The token for calls to `api`: the Kubernetes API's own when it has one.
    fn token_for(&self, api: Api) -> String {
        match (api, &self.conn.kube_token) {
            (Api::Kube, Some(kube)) => kube.read(),
            _ => self.conn.token.read(),
        }
    }

    fn argo(&self, path: &str) -> String {
        format!("{}{path}", self.conn.server.trim_end_matches('/'))
    }

    fn kube(&self, path: &str) -> String {
        format!("{}{path}", self.conn.kube.trim_end_matches('/'))
    }

    /// Sends a request (built anew for each try), retrying while the server is unavailable.
    /// Returns the status and body of the first answer that is not a 5xx.
    async fn call(
        &self,
        api: Api,
        server: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, String), ClientError> {
        let mut last = String::new();
        for wait in std::iter::once(Duration::ZERO).chain(self.backoff.iter().copied()) {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match build().bearer_auth(self.token_for(api)).send().await {
                Ok(r) if r.status().is_server_error() => {
                    let status = r.status();
                    last = format!(
                        "answered {status}: {}",
                        message_of(&r.text().await.unwrap_or_default())
                    );
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.map_err(|e| ClientError::Unavailable {
                        server: server.to_string(),
                        reason: format!("broke off its answer: {e}"),
                    })?;
                    return Ok((status, body));
                }
                Err(e) => last = format!("cannot be reached: {e}"),
            }
        }
        Err(ClientError::Unavailable {
            server: server.to_string(),
            reason: last,
        })
    }

    /// A 2xx answer's JSON, or the error it is.
    fn ok(server: &str, (status, body): (u16, String)) -> Result<Value, ClientError> {
        if (200..300).contains(&status) {
            serde_json::from_str(&body).map_err(|e| ClientError::Unavailable {
                server: server.to_string(),
                reason: format!("answered what is not JSON: {e}"),
            })
        } else {
            Err(ClientError::Refused {
                server: server.to_string(),
                status,
                message: message_of(&body),
            })
        }
    }

    /// Creates the run's Secret; one left by an earlier try of the same run is replaced.
    pub async fn create_secret(&self, manifest: &Value) -> Result<(), ClientError> {
        let (api, server) = (Api::Kube, &self.conn.kube);
        let url = self.kube(&format!(
            "/api/v1/namespaces/{}/secrets",
            self.conn.namespace
        ));
        let answer = self
            .call(api, server, || self.http.post(&url).json(manifest))
            .await?;
        if answer.0 == 409
            && let Some(name) = manifest["metadata"]["name"].as_str()
        {
            self.delete_secret(name).await?;
            let again = self
                .call(api, server, || self.http.post(&url).json(manifest))
                .await?;
            return Self::ok(server, again).map(drop);
        }
        Self::ok(server, answer).map(drop)
    }

    /// Makes the Workflow the owner of the Secret, so Kubernetes deletes it with the Workflow
    /// even when Gantry does not get to.
    pub async fn own_secret(
        &self,
        secret: &str,
        workflow: &str,
        uid: &str,
    ) -> Result<(), ClientError> {
        let (api, server) = (Api::Kube, &self.conn.kube);
        let url = self.kube(&format!(
            "/api/v1/namespaces/{}/secrets/{secret}",
            self.conn.namespace
        ));
        let patch = json!({"metadata": {"ownerReferences": [{
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "name": workflow, "uid": uid, "blockOwnerDeletion": false,
        }]}});
        let answer = self
            .call(api, server, || {
                self.http
                    .patch(&url)
                    .header("Content-Type", "application/merge-patch+json")
                    .body(patch.to_string())
            })
            .await?;
        Self::ok(server, answer).map(drop)
    }

    /// The run's Secret as stored (`data` in base64), or `None`.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Value>, ClientError> {
        let (api, server) = (Api::Kube, &self.conn.kube);
        let url = self.kube(&format!(
            "/api/v1/namespaces/{}/secrets/{name}",
            self.conn.namespace
        ));
        let answer = self.call(api, server, || self.http.get(&url)).await?;
        if answer.0 == 404 {
            return Ok(None);
        }
        Self::ok(server, answer).map(Some)
    }

    /// Deletes the run's Secret; one already gone is fine.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        let (api, server) = (Api::Kube, &self.conn.kube);
        let url = self.kube(&format!(
            "/api/v1/namespaces/{}/secrets/{name}",
            self.conn.namespace
        ));
        let answer = self.call(api, server, || self.http.delete(&url)).await?;
        if answer.0 == 404 {
            return Ok(());
        }
        Self::ok(server, answer).map(drop)
    }

    /// Submits a Workflow; returns it as created (its `metadata.name` and `uid` set).
    pub async fn submit(&self, workflow: &Value) -> Result<Value, ClientError> {
        let (api, server) = (Api::Argo, &self.conn.server);
        let url = self.argo(&format!("/api/v1/workflows/{}", self.conn.namespace));
        let body = json!({"namespace": self.conn.namespace, "workflow": workflow});
        let answer = self
            .call(api, server, || self.http.post(&url).json(&body))
            .await?;
        Self::ok(server, answer)
    }

    /// A Workflow, or `None` when there is none of that name.
    pub async fn get(&self, name: &str) -> Result<Option<Value>, ClientError> {
        let (api, server) = (Api::Argo, &self.conn.server);
        let url = self.argo(&format!("/api/v1/workflows/{}/{name}", self.conn.namespace));
        let answer = self.call(api, server, || self.http.get(&url)).await?;
        if answer.0 == 404 {
            return Ok(None);
        }
        Self::ok(server, answer).map(Some)
    }

    /// Workflows whose labels match `selector` (`key=value,...`).
    pub async fn list(&self, selector: &str) -> Result<Vec<Value>, ClientError> {
        let (api, server) = (Api::Argo, &self.conn.server);
        let url = self.argo(&format!("/api/v1/workflows/{}", self.conn.namespace));
        let answer = self
            .call(api, server, || {
                self.http
                    .get(&url)
                    .query(&[("listOptions.labelSelector", selector)])
            })
            .await?;
        let list = Self::ok(server, answer)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    pub async fn terminate(&self, name: &str) -> Result<(), ClientError> {
        let (api, server) = (Api::Argo, &self.conn.server);
        let url = self.argo(&format!(
            "/api/v1/workflows/{}/{name}/terminate",
            self.conn.namespace
        ));
        let body = json!({"name": name, "namespace": self.conn.namespace});
        let answer = self
            .call(api, server, || self.http.put(&url).json(&body))
            .await?;
        Self::ok(server, answer).map(drop)
    }

    /// Opens the event stream of one Workflow: `ADDED` with its state now, then every change.
    pub async fn events(&self, name: &str) -> Result<Events, ClientError> {
        let url = self.argo(&format!("/api/v1/workflow-events/{}", self.conn.namespace));
        let selector = format!("metadata.name={name}");
        self.stream(&url, &[("listOptions.fieldSelector", selector.as_str())])
            .await
    }

    /// Follows the log of one pod's main container: `{"podName", "content"}` per line, until the
    /// pod ends.
    pub async fn follow_pod_log(&self, workflow: &str, pod: &str) -> Result<Events, ClientError> {
        let url = self.argo(&format!(
            "/api/v1/workflows/{}/{workflow}/log",
            self.conn.namespace
        ));
        self.stream(
            &url,
            &[
                ("podName", pod),
                ("logOptions.container", "main"),
                ("logOptions.follow", "true"),
            ],
        )
        .await
    }

    /// Opens a server-sent-events answer.
    async fn stream(&self, url: &str, query: &[(&str, &str)]) -> Result<Events, ClientError> {
        let server = self.conn.server.clone();
        let response = self
            .http
            .get(url)
            .query(query)
            .header("Accept", "text/event-stream")
            .bearer_auth(self.conn.token.read())
            .send()
            .await
            .map_err(|e| ClientError::Unavailable {
                server: server.clone(),
                reason: format!("cannot be reached: {e}"),
            })?;
        let status = response.status().as_u16();
        if status >= 500 {
            return Err(ClientError::Unavailable {
                server,
                reason: format!("answered {status}"),
            });
        }
        if status >= 300 {
            let message = message_of(&response.text().await.unwrap_or_default());
            return Err(ClientError::Refused {
                server,
                status,
                message,
            });
        }
        Ok(Events {
            response,
            pending: Vec::new(),
        })
    }

    /// The lines a pod's main container printed.
    pub async fn pod_logs(&self, workflow: &str, pod: &str) -> Result<Vec<String>, ClientError> {
        let (api, server) = (Api::Argo, &self.conn.server);
        let url = self.argo(&format!(
            "/api/v1/workflows/{}/{workflow}/log",
            self.conn.namespace
        ));
        let answer = self
            .call(api, server, || {
                self.http
                    .get(&url)
                    .query(&[("podName", pod), ("logOptions.container", "main")])
            })
            .await?;
        if !(200..300).contains(&answer.0) {
            return Err(ClientError::Refused {
                server: server.clone(),
                status: answer.0,
                message: message_of(&answer.1),
            });
        }
        Ok(answer
            .1
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .filter_map(|v| v["result"]["content"].as_str().map(str::to_string))
            .collect())
    }
}

/// A stream of server-sent events (a Workflow's events, a pod's log lines).
pub struct Events {
    response: reqwest::Response,
    pending: Vec<u8>,
}

impl Events {
    /// The next event's `result` (`{"type", "object"}`, `{"podName", "content"}`), or `None`
    /// when the stream ended (with or without a final event: the caller reads anew).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    let parsed: Option<Value> = serde_json::from_str(data.trim()).ok();
                    if let Some(event) = parsed.map(|v| v["result"].clone())
                        && event.is_object()
                    {
                        return Some(event);
                    }
                }
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.pending.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

/// Decodes standard base64 (a Secret's `data`); `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
