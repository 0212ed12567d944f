//! The CLI as a client of a running server (`--server URL --token T`): runs, logs, starting a
//! run, local pipelines, variables and secrets, over the REST API.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::exit;
use crate::store::{ConfigEntry, RunRecord, RunStatus};

/// A connection to a server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A failed request, in words.
pub struct Failure {
    pub message: String,
    /// The exit code the command ends with.
    pub code: u8,
}

impl Failure {
    fn usage(message: String) -> Failure {
        Failure {
            message,
            code: exit::USAGE,
        }
    }
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client, Failure> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "--server must be an http:// or https:// URL, not `{server}`"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Failure::usage(format!("cannot set up HTTP: {e}")))?;
        Ok(Client { base, token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request and returns the body of a 2xx answer; anything else becomes the server's
    /// `{"error"}` text.
    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let response = r.send().await.map_err(|e| {
            Failure::usage(format!("cannot reach the server at {}: {e}", self.base))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(Self::failure(response).await)
    }

    /// A non-2xx answer in words: the server's `{"error"}` text, with a hint for a 401.
    async fn failure(response: reqwest::Response) -> Failure {
        let status = response.status();
        let message = error_text(response.text().await.unwrap_or_default());
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (give a token with --token or GANTRY_TOKEN)"
        } else {
            ""
        };
        Failure {
            message: format!("the server answered {status}: {message}{hint}"),
            code: if status.is_client_error() {
                exit::USAGE
            } else {
                exit::FAILURE
            },
        }
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = self.send(r).await?;
        response
            .json()
            .await
            .map_err(|e| Failure::usage(format!("the server's answer is not JSON: {e}")))
    }

    pub async fn runs(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, Failure> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(p) = pipeline {
            query.push(("pipeline", p.to_string()));
        }
        let body = self
            .json(
                self.request(reqwest::Method::GET, "/api/v1/runs")
                    .query(&query),
            )
            .await?;
        serde_json::from_value(body["runs"].clone())
            .map_err(|e| Failure::usage(format!("unexpected runs list: {e}")))
    }

    pub async fn run(&self, id: &str) -> Result<Value, Failure> {
        self.json(self.request(reqwest::Method::GET, &format!("/api/v1/runs/{id}")))
            .await
    }

    /// A run as a record (what `run` answers, without its steps).
    pub async fn run_record(&self, id: &str) -> Result<RunRecord, Failure> {
        let mut run = self.run(id).await?;
        // The answer lists the step records where the record itself names the steps.
        let names: Vec<Value> = run["steps"]
            .as_array()
            .map(|steps| steps.iter().map(|s| s["name"].clone()).collect())
            .unwrap_or_default();
        run["steps"] = Value::Array(names);
        serde_json::from_value(run).map_err(|e| Failure::usage(format!("unexpected run: {e}")))
    }

    /// Prints a run's log; with `follow`, streams it until the step or run ends and returns the
    /// run's final status.
    pub async fn logs(
        &self,
        id: &str,
        step: Option<&str>,
        follow: bool,
    ) -> Result<Option<RunStatus>, Failure> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = step {
            query.push(("step", s.to_string()));
        }
        if follow {
            query.push(("follow", "true".into()));
        }
        let r = self
            .request(reqwest::Method::GET, &format!("/api/v1/runs/{id}/logs"))
            .query(&query);
        let mut response = self.send(r).await?;
        if !follow {
            let text = response
                .text()
                .await
                .map_err(|e| Failure::usage(format!("reading the log: {e}")))?;
            print!("{text}");
            return Ok(None);
        }
        // Server-sent events: `event:` and `data:` lines, a blank line ends an event.
        let mut pending = String::new();
        let (mut event, mut data) = (String::new(), Vec::<String>::new());
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::usage(format!("the log stream broke: {e}")))?
        {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(at) = pending.find('\n') {
                let line: String = pending.drain(..=at).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    let text = data.join("\n");
                    match event.as_str() {
                        "log" => println!("{text}"),
                        "end" => {
                            let status = serde_json::from_str::<Value>(&text)
                                .ok()
                                .and_then(|v| serde_json::from_value(v["status"].clone()).ok());
                            return Ok(status);
                        }
                        _ => {}
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
        }
        Ok(None)
    }

    pub async fn start(
        &self,
        pipeline: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<RunRecord, Failure> {
        let Some((source, name)) = pipeline.split_once('/') else {
            return Err(Failure::usage(format!(
                "with --server, name the pipeline as SOURCE/NAME (e.g. local/{pipeline}), not a file"
            )));
        };
        let body = json!({ "parameters": params });
        let run = self
            .json(
                self.request(
                    reqwest::Method::POST,
                    &format!("/api/v1/pipelines/{source}/{name}/runs"),
                )
                .json(&body),
            )
            .await?;
        serde_json::from_value(run).map_err(|e| Failure::usage(format!("unexpected run: {e}")))
    }

    /// Applies a local pipeline; `executor` (a name, or "" for the default) when given.
    pub async fn apply(
        &self,
        name: &str,
        text: &str,
        executor: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut body = json!({ "spec": text });
        if let Some(e) = executor {
            body["executor"] = json!(e);
        }
        self.json(
            self.request(
                reqwest::Method::PUT,
                &format!("/api/v1/pipelines/local/{name}"),
            )
            .json(&body),
        )
        .await
    }

    pub async fn rollback(&self, name: &str, to: u32) -> Result<Value, Failure> {
        self.json(
            self.request(
                reqwest::Method::POST,
                &format!("/api/v1/pipelines/local/{name}/rollback"),
            )
            .json(&json!({ "to": to })),
        )
        .await
    }

    /// Sets a variable or secret, global or of one pipeline (`scope` is `SOURCE/NAME`).
    pub async fn set_config(
        &self,
        kind: ConfigKind,
        scope: Option<&str>,
        name: &str,
        value: &str,
        unprotected: bool,
    ) -> Result<(), Failure> {
        let path = config_path(kind, scope, name)?;
        let body = match kind {
            ConfigKind::Variable => json!({ "value": value }),
            ConfigKind::Secret => json!({ "value": value, "unprotected": unprotected }),
        };
        self.send(self.request(reqwest::Method::PUT, &path).json(&body))
            .await
            .map(drop)
    }

    /// Removes a variable or secret; `Ok(false)` when there was none (the server's words are
    /// returned with it).
    pub async fn remove_config(
        &self,
        kind: ConfigKind,
        scope: Option<&str>,
        name: &str,
    ) -> Result<Result<(), String>, Failure> {
        let path = config_path(kind, scope, name)?;
        // A bodyless state-changing call still names its content type (the server asks for it).
        let r = self
            .request(reqwest::Method::DELETE, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let response = r.send().await.map_err(|e| {
            Failure::usage(format!("cannot reach the server at {}: {e}", self.base))
        })?;
        if response.status().is_success() {
            return Ok(Ok(()));
        }
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Err(error_text(response.text().await.unwrap_or_default())));
        }
        Err(Self::failure(response).await)
    }

    /// Every variable (with values) or secret (names only), global and per pipeline.
    pub async fn list_config(&self, kind: ConfigKind) -> Result<Vec<ConfigEntry>, Failure> {
        let (path, key) = match kind {
            ConfigKind::Variable => ("/api/v1/variables", "variables"),
            ConfigKind::Secret => ("/api/v1/secrets", "secrets"),
        };
        let body = self.json(self.request(reqwest::Method::GET, path)).await?;
        serde_json::from_value(body[key].clone())
            .map_err(|e| Failure::usage(format!("unexpected {key} list: {e}")))
    }

    /// A JSON answer read as `T`: `method` on `path` with `query`, and `body` when given.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, Failure> {
        let mut r = self.request(method, path).query(query);
        r = match body {
            Some(b) => r.json(b),
            // State-changing calls carry a JSON content type also without a body.
            None => r.header(reqwest::header::CONTENT_TYPE, "application/json"),
        };
        let body = self.json(r).await?;
        serde_json::from_value(body)
            .map_err(|e| Failure::usage(format!("unexpected answer from {path}: {e}")))
    }

    /// `DELETE path` with an answer of no interest.
    pub async fn delete(&self, path: &str) -> Result<(), Failure> {
        let r = self
            .request(reqwest::Method::DELETE, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        self.send(r).await.map(drop)
    }

    pub async fn pipelines(&self) -> Result<Value, Failure> {
        self.json(self.request(reqwest::Method::GET, "/api/v1/pipelines"))
            .await
    }
}

/// The message of an error answer: its `{"error"}` text, else the body as it is.
fn error_text(body: String) -> String {
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body)
}

/// A variable or a secret, for the calls that treat both alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Variable,
    Secret,
}

/// The API path of a variable or secret: `/api/v1/variables/NAME`, or under its pipeline when
/// `scope` is given (as `SOURCE/NAME`, the way a server addresses pipelines).
fn config_path(kind: ConfigKind, scope: Option<&str>, name: &str) -> Result<String, Failure> {
    let plural = match kind {
        ConfigKind::Variable => "variables",
        ConfigKind::Secret => "secrets",
    };
    match scope {
        None => Ok(format!("/api/v1/{plural}/{name}")),
        Some(scope) => match scope.split_once('/') {
            Some((source, pipeline)) => Ok(format!(
                "/api/v1/pipelines/{source}/{pipeline}/{plural}/{name}"
            )),
            None => Err(Failure::usage(format!(
                "with --server, --pipeline names a pipeline as SOURCE/NAME (e.g. local/{scope}), \
                 not `{scope}`"
            ))),
        },
    }
}

/// Runs `f` to its end on a small runtime of its own.
pub fn wait<T>(f: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(f)
}

/// Runs `f` (`wait`) and turns a failure into its message on stderr and its exit code.
pub fn block_on<F>(f: F) -> u8
where
    F: std::future::Future<Output = Result<u8, Failure>>,
{
    report(wait(f))
}

/// An exit code, or a failure's: its message on stderr.
pub fn report(result: Result<u8, Failure>) -> u8 {
    result.unwrap_or_else(|failure| {
        eprintln!("gantry: {}", failure.message);
        failure.code
    })
}

/// The exit code of a run that ended with `status`.
pub fn exit_for(status: Option<RunStatus>) -> u8 {
    match status {
        Some(RunStatus::Succeeded) => exit::OK,
        Some(RunStatus::Cancelled) => 130,
        _ => exit::FAILURE,
    }
}
