//! A stand-in for the Argo Server REST API (v4.1, `../shared/argo/server-swagger.json`) and for the
//! part of the Kubernetes API an Argo executor uses (Secrets), on loopback, that *executes* what it
//! is given, so that tests see real phases, nodes, logs and outputs.
//!
//! What it speaks: `POST /api/v1/workflows/{ns}` (200 with the created Workflow; 409 for a taken
//! `metadata.name`; 400 for an object it cannot run), `GET /api/v1/workflows/{ns}/{name}` (404),
//! `GET /api/v1/workflows/{ns}` with `listOptions.labelSelector`, `GET
//! /api/v1/workflow-events/{ns}` (server-sent events, `data: {"result": {"type", "object"}}`,
//! filtered by `listOptions.fieldSelector=metadata.name=…` or a label selector), `GET
//! /api/v1/workflows/{ns}/{name}/log` (`data: {"result": {"podName", "content"}}`, with
//! `logOptions.follow`), `PUT …/{name}/terminate`, `DELETE …/{name}` (which also deletes the
//! Secrets the Workflow owns, as Kubernetes' garbage collector would), and `POST|GET|PATCH|DELETE
//! /api/v1/namespaces/{ns}/secrets[/{name}]` (`stringData` stored as base64 `data`, merge patch).
//! Errors are grpc-gateway's `{"code", "message"}` on the Argo side and a `Status` on the
//! Kubernetes side. Every call needs `Authorization: Bearer` [`TOKEN`].
//!
//! How it runs a Workflow: the entrypoint must be a `dag` template whose tasks call `script` or
//! `container` templates (what Gantry's compiler writes). Each pod is a local process: the script
//! written to a file and run by the template's `command`, the environment built as Kubernetes
//! builds it (`value`, `valueFrom.secretKeyRef` from the stored Secrets, `$(VAR)` expansion of
//! earlier variables, `$$(` kept literal), `{{workflow.parameters.…}}` and
//! `{{tasks.T.outputs.parameters.P}}` substituted. The workspace volume (`/workspace`) is one
//! folder per Workflow and each pod's `/gantry/outputs` a folder of its own: paths under those two
//! mount points in environment values, `workingDir` and `valueFrom.path` are mapped to the
//! folders (a script must reach them through its environment, as Gantry's scripts do). Tasks
//! follow `dependencies`, `when` (Argo's expression subset: quoted strings, numbers, `== != < <=
//! > >=`, `&& || !`, parentheses), `continueOn`, `retryStrategy` (`limit`, `retryPolicy`,
//! `backoff`), the template's and the Workflow's `activeDeadlineSeconds`; outputs are read from
//! `valueFrom.path` with one trailing newline stripped.
//!
//! Faults: the next N calls answered 503, event streams that end after N events without a final
//! one, and a delay before every log line.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::percent_decode;

/// The bearer token the stand-in accepts.
pub const TOKEN: &str = "argo-stand-in-token-0001";
/// The Kubernetes API's own token, once `separate_kube_token` asked for one.
pub const KUBE_TOKEN: &str = "kube-stand-in-token-0002";

const WORKSPACE: &str = "/workspace";
const OUTPUTS: &str = "/gantry/outputs";

#[derive(Default)]
struct Faults {
    /// The next this-many calls are answered 503.
    unavailable: usize,
    /// Event streams end (without a final event) after this many events.
    cut_streams_after: Option<usize>,
    /// Waited before each log line is served.
    log_delay: Duration,
    /// The Kubernetes API takes `KUBE_TOKEN` only, the Argo Server `TOKEN` only.
    separate_tokens: bool,
    /// Creating a Secret is forbidden (RBAC without it).
    forbid_secrets: bool,
}

struct Wf {
    object: Value,
    logs: Vec<Value>,
    cancel: CancellationToken,
    /// Set when it was terminated, with the message the status gets.
    terminated: bool,
    /// Pods whose process has ended (their log is complete).
    ended_pods: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    workflows: BTreeMap<(String, String), Wf>,
    secrets: BTreeMap<(String, String), Value>,
    /// Every change: (resource version, namespace, name, type, the object then).
    events: Vec<(u64, String, String, &'static str, Value)>,
    version: u64,
    faults: Faults,
    /// Every call as `METHOD path`, for assertions.
    calls: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, for streams that follow.
    changed: watch::Sender<u64>,
    dir: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes a Workflow's object and records the change as an event.
    fn update(&self, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
        {
            let mut state = self.lock();
            state.version += 1;
            let version = state.version;
            let Some(wf) = state.workflows.get_mut(&(ns.into(), name.into())) else {
                return;
            };
            f(&mut wf.object);
            wf.object["metadata"]["resourceVersion"] = json!(version.to_string());
            let phase = wf.object["status"]["phase"]
                .as_str()
                .unwrap_or("")
                .to_string();
            wf.object["metadata"]["labels"]["workflows.argoproj.io/phase"] = json!(phase);
            let object = wf.object.clone();
            state
                .events
                .push((version, ns.into(), name.into(), "MODIFIED", object));
        }
        self.bump();
    }
}

/// The stand-in; dropping it stops the server and kills what it runs.
pub struct ArgoStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for ArgoStandIn {
    fn drop(&mut self) {
        for wf in self.shared.lock().workflows.values() {
            wf.cancel.cancel();
        }
        self.stop.cancel();
    }
}

impl ArgoStandIn {
    pub fn start() -> ArgoStandIn {
        let dir = tempfile::tempdir().expect("tempdir");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
            dir: dir.path().to_path_buf(),
        });
        let stop = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("stand-in runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    let _ = addr_tx.send(listener.local_addr().expect("address"));
                    let app = axum::Router::new().fallback(
                        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                            let shared = shared.clone();
                            async move { handle(shared, method, uri, headers, body).await }
                        },
                    );
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await;
                });
            });
        }
        let addr = addr_rx.recv().expect("stand-in address");
        ArgoStandIn {
            addr,
            shared,
            stop,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A file holding [`TOKEN`].
    pub fn token_file(&self) -> PathBuf {
        let path = self.shared.dir.join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).expect("write the token file");
        path
    }

    /// An Argo executor named `name` for this stand-in (Argo Server and Kubernetes API alike),
    /// namespace `gantry`, retrying quickly.
    pub fn executor(&self, name: &str) -> gantry::executor::argo::ArgoExecutor {
        gantry::executor::argo::ArgoExecutor::new(
            name,
            gantry::executor::argo::client::Connection {
                server: self.url(),
                kube: self.url(),
                namespace: "gantry".into(),
                // The Argo Server's token as a value, the Kubernetes API's from a file (read at
                // every call, as a projected service-account token is).
                token: TOKEN.into(),
                kube_token: Some(gantry::executor::argo::client::Token::File(
                    self.token_file(),
                )),
                ca_pem: None,
            },
            gantry::executor::argo::ArgoOptions::default(),
        )
        .expect("an Argo executor")
        .with_backoff(
            vec![Duration::from_millis(20); 3],
            Duration::from_millis(20),
        )
    }

    /// The next `n` calls are answered 503 Service Unavailable.
    pub fn fail_next(&self, n: usize) {
        self.shared.lock().faults.unavailable = n;
    }

    /// Event streams end, without a final event, after `n` events (`None`: they do not).
    pub fn cut_event_streams_after(&self, n: Option<usize>) {
        self.shared.lock().faults.cut_streams_after = n;
    }

    /// From now on creating a Secret is forbidden, as by RBAC that does not allow it.
    pub fn forbid_secrets(&self) {
        self.shared.lock().faults.forbid_secrets = true;
    }

    /// From now on the Kubernetes API takes [`KUBE_TOKEN`] and the Argo Server [`TOKEN`], each
    /// only its own.
    pub fn separate_kube_token(&self) {
        self.shared.lock().faults.separate_tokens = true;
    }

    /// Every log line is served after `delay`.
    pub fn slow_logs(&self, delay: Duration) {
        self.shared.lock().faults.log_delay = delay;
    }

    /// Every call so far, as `METHOD path`.
    pub fn calls(&self) -> Vec<String> {
        self.shared.lock().calls.clone()
    }

    /// A Workflow as stored now.
    pub fn workflow(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .workflows
            .get(&(ns.into(), name.into()))
            .map(|w| w.object.clone())
    }

    /// A Secret as stored now.
    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .secrets
            .get(&(ns.into(), name.into()))
            .cloned()
    }

    /// The names of the Workflows in `ns`.
    pub fn workflow_names(&self, ns: &str) -> Vec<String> {
        self.shared
            .lock()
            .workflows
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, name)| name.clone())
            .collect()
    }
}

// ---- HTTP ---------------------------------------------------------------------------------------

fn argo_error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message.into(), "details": []})),
    )
        .into_response()
}

fn kube_status(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message.into(), "reason": reason,
            "code": status.as_u16(),
        })),
    )
        .into_response()
}

fn query_pairs(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// An RFC 3339 time, to the millisecond (Argo writes whole seconds; finer times let `gantry
/// bench argo` measure on the stand-in).
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn random_suffix(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).expect("randomness");
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(s: &str) -> Option<Vec<u8>> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// `a=b,c=d` against an object's labels.
fn labels_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        object["metadata"]["labels"][k.trim()].as_str() == Some(v.trim())
    })
}

fn sse(rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let kube = path.starts_with("/api/v1/namespaces/");
    {
        let mut state = shared.lock();
        state.calls.push(format!("{method} {path}"));
        if state.faults.unavailable > 0 {
            state.faults.unavailable -= 1;
            return if kube {
                kube_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the stand-in is unavailable",
                )
            } else {
                argo_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    14,
                    "the stand-in is unavailable",
                )
            };
        }
    }
    let expected = if kube && shared.lock().faults.separate_tokens {
        KUBE_TOKEN
    } else {
        TOKEN
    };
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {expected}"));
    if !authorized {
        return if kube {
            kube_status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
        } else {
            argo_error(StatusCode::UNAUTHORIZED, 16, "token not valid")
        };
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let query = query_pairs(&uri);
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["api", "v1", "workflows", ns]) => create_workflow(&shared, ns, &body),
        ("GET", ["api", "v1", "workflows", ns]) => list_workflows(&shared, ns, &query),
        ("GET", ["api", "v1", "workflows", ns, name]) => {
            match shared.lock().workflows.get(&((*ns).into(), (*name).into())) {
                Some(wf) => axum::Json(wf.object.clone()).into_response(),
                None => not_found(name),
            }
        }
        ("GET", ["api", "v1", "workflows", ns, name, "log"]) => {
            logs(shared.clone(), ns.to_string(), name.to_string(), &query)
        }
        ("PUT", ["api", "v1", "workflows", ns, name, "terminate"]) => terminate(&shared, ns, name),
        ("DELETE", ["api", "v1", "workflows", ns, name]) => delete_workflow(&shared, ns, name),
        ("GET", ["api", "v1", "workflow-events", ns]) => {
            events(shared.clone(), ns.to_string(), &query)
        }
        ("POST", ["api", "v1", "namespaces", _, "secrets"])
            if shared.lock().faults.forbid_secrets =>
        {
            kube_status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "secrets is forbidden: User \"system:serviceaccount:gantry:gantry\" cannot create resource \"secrets\" in API group \"\" in the namespace \"gantry\"",
            )
        }
        ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => create_secret(&shared, ns, &body),
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            match shared.lock().secrets.get(&((*ns).into(), (*name).into())) {
                Some(s) => axum::Json(s.clone()).into_response(),
                None => kube_status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("secrets \"{name}\" not found"),
                ),
            }
        }
        ("PATCH", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            patch_secret(&shared, ns, name, &body)
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            match shared
                .lock()
                .secrets
                .remove(&((*ns).into(), (*name).into()))
            {
                Some(_) => {
                    axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                        .into_response()
                }
                None => kube_status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("secrets \"{name}\" not found"),
                ),
            }
        }
        _ => {
            if kube {
                kube_status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            } else {
                argo_error(
                    StatusCode::NOT_FOUND,
                    5,
                    format!("Not Found: {method} {path}"),
                )
            }
        }
    }
}

fn not_found(name: &str) -> Response {
    argo_error(
        StatusCode::NOT_FOUND,
        5,
        format!("workflows.argoproj.io \"{name}\" not found"),
    )
}

/// Why the stand-in cannot run `wf`, as Argo's lint would say it.
fn lint(wf: &Value) -> Result<(), String> {
    if wf["kind"] != "Workflow" || wf["apiVersion"] != "argoproj.io/v1alpha1" {
        return Err("the object is not an argoproj.io/v1alpha1 Workflow".into());
    }
    let templates = wf["spec"]["templates"]
        .as_array()
        .ok_or("spec.templates is required")?;
    let names: BTreeSet<&str> = templates
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let entry = wf["spec"]["entrypoint"]
        .as_str()
        .ok_or("spec.entrypoint is required")?;
    let main = templates
        .iter()
        .find(|t| t["name"] == entry)
        .ok_or_else(|| format!("spec.entrypoint template '{entry}' not found"))?;
    let tasks = main["dag"]["tasks"]
        .as_array()
        .ok_or("the stand-in runs an entrypoint `dag` template only")?;
    let task_names: BTreeSet<&str> = tasks.iter().filter_map(|t| t["name"].as_str()).collect();
    for task in tasks {
        let tname = task["name"].as_str().ok_or("a task has no name")?;
        let template = task["template"].as_str().unwrap_or("");
        if !names.contains(template) {
            return Err(format!(
                "templates.{entry}.tasks.{tname} template reference '{template}' not found"
            ));
        }
        for dep in task["dependencies"].as_array().into_iter().flatten() {
            let d = dep.as_str().unwrap_or("");
            if !task_names.contains(d) {
                return Err(format!(
                    "templates.{entry}.tasks.{tname} dependency '{d}' not defined"
                ));
            }
        }
    }
    for t in templates {
        if t["name"] != entry && t["script"].is_null() && t["container"].is_null() {
            return Err(format!(
                "templates.{}: the stand-in runs script and container templates only",
                t["name"].as_str().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

fn create_workflow(shared: &Arc<Shared>, ns: &str, body: &[u8]) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return argo_error(StatusCode::BAD_REQUEST, 3, format!("bad request body: {e}")),
    };
    let mut wf = request["workflow"].clone();
    if let Err(e) = lint(&wf) {
        return argo_error(StatusCode::BAD_REQUEST, 3, e);
    }
    let name = match (
        wf["metadata"]["name"].as_str(),
        wf["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) => format!("{g}{}", random_suffix(5)),
        _ => {
            return argo_error(
                StatusCode::BAD_REQUEST,
                3,
                "metadata.name or metadata.generateName is required",
            );
        }
    };
    let cancel = CancellationToken::new();
    {
        let mut state = shared.lock();
        if state.workflows.contains_key(&(ns.into(), name.clone())) {
            return argo_error(
                StatusCode::CONFLICT,
                6,
                format!("workflows.argoproj.io \"{name}\" already exists"),
            );
        }
        state.version += 1;
        let version = state.version;
        wf["metadata"]["name"] = json!(name);
        wf["metadata"]["namespace"] = json!(ns);
        wf["metadata"]["uid"] = json!(format!("{}-{}", random_suffix(8), random_suffix(12)));
        wf["metadata"]["creationTimestamp"] = json!(now());
        wf["metadata"]["resourceVersion"] = json!(version.to_string());
        if wf["metadata"]["labels"].is_null() {
            wf["metadata"]["labels"] = json!({});
        }
        wf["metadata"]["labels"]["workflows.argoproj.io/phase"] = json!("Pending");
        wf["status"] = json!({"phase": "Pending", "nodes": {}});
        state
            .events
            .push((version, ns.into(), name.clone(), "ADDED", wf.clone()));
        state.workflows.insert(
            (ns.into(), name.clone()),
            Wf {
                object: wf.clone(),
                logs: Vec::new(),
                cancel: cancel.clone(),
                terminated: false,
                ended_pods: BTreeSet::new(),
            },
        );
    }
    shared.bump();
    let runner = shared.clone();
    let ns_owned = ns.to_string();
    tokio::spawn(async move { run_workflow(runner, ns_owned, name, cancel).await });
    axum::Json(wf).into_response()
}

fn list_workflows(shared: &Arc<Shared>, ns: &str, query: &BTreeMap<String, String>) -> Response {
    let state = shared.lock();
    let selector = query
        .get("listOptions.labelSelector")
        .cloned()
        .unwrap_or_default();
    let items: Vec<Value> = state
        .workflows
        .iter()
        .filter(|((n, _), wf)| n == ns && labels_match(&wf.object, &selector))
        .map(|(_, wf)| wf.object.clone())
        .collect();
    axum::Json(json!({
        "metadata": {"resourceVersion": state.version.to_string()},
        "items": items,
    }))
    .into_response()
}

fn terminate(shared: &Arc<Shared>, ns: &str, name: &str) -> Response {
    let object = {
        let mut state = shared.lock();
        let Some(wf) = state.workflows.get_mut(&(ns.into(), name.into())) else {
            return not_found(name);
        };
        wf.terminated = true;
        wf.cancel.cancel();
        wf.object.clone()
    };
    axum::Json(object).into_response()
}

fn delete_workflow(shared: &Arc<Shared>, ns: &str, name: &str) -> Response {
    {
        let mut state = shared.lock();
        let Some(wf) = state.workflows.remove(&(ns.into(), name.into())) else {
            return not_found(name);
        };
        wf.cancel.cancel();
        let uid = wf.object["metadata"]["uid"].clone();
        // Kubernetes' garbage collector: what the Workflow owns goes with it.
        state.secrets.retain(|_, s| {
            !s["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        });
        state.version += 1;
        let version = state.version;
        state
            .events
            .push((version, ns.into(), name.into(), "DELETED", wf.object));
    }
    shared.bump();
    axum::Json(json!({})).into_response()
}

fn events(shared: Arc<Shared>, ns: String, query: &BTreeMap<String, String>) -> Response {
    let name = query
        .get("listOptions.fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let selector = query
        .get("listOptions.labelSelector")
        .cloned()
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut changed = shared.changed.subscribe();
    tokio::spawn(async move {
        let wanted = |n: &str, s: &str, object: &Value| {
            n == ns && name.as_deref().is_none_or(|w| w == s) && labels_match(object, &selector)
        };
        // As a watch without a resource version: the objects there are now, as ADDED.
        let (mut seen, initial, cut) = {
            let state = shared.lock();
            let initial: Vec<Value> = state
                .workflows
                .iter()
                .filter(|((n, s), wf)| wanted(n, s, &wf.object))
                .map(|(_, wf)| json!({"type": "ADDED", "object": wf.object}))
                .collect();
            (state.version, initial, state.faults.cut_streams_after)
        };
        let mut sent = 0usize;
        let line = |event: Value| {
            Ok(Bytes::from(format!(
                "data: {}\n\n",
                json!({"result": event})
            )))
        };
        for event in initial {
            if tx.send(line(event)).await.is_err() {
                return;
            }
            sent += 1;
            if cut.is_some_and(|c| sent >= c) {
                return;
            }
        }
        loop {
            let batch: Vec<Value> = {
                let state = shared.lock();
                let batch = state
                    .events
                    .iter()
                    .filter(|(v, n, s, _, object)| *v > seen && wanted(n, s, object))
                    .map(|(_, _, _, kind, object)| json!({"type": kind, "object": object}))
                    .collect();
                seen = state.version;
                batch
            };
            for event in batch {
                if tx.send(line(event)).await.is_err() {
                    return;
                }
                sent += 1;
                if cut.is_some_and(|c| sent >= c) {
                    return;
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    sse(rx)
}

fn logs(
    shared: Arc<Shared>,
    ns: String,
    name: String,
    query: &BTreeMap<String, String>,
) -> Response {
    if !shared
        .lock()
        .workflows
        .contains_key(&(ns.clone(), name.clone()))
    {
        return not_found(&name);
    }
    let follow = query.get("logOptions.follow").is_some_and(|f| f == "true");
    let pod = query.get("podName").cloned().filter(|p| !p.is_empty());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut changed = shared.changed.subscribe();
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let (lines, done, delay) = {
                let state = shared.lock();
                let Some(wf) = state.workflows.get(&(ns.clone(), name.clone())) else {
                    return;
                };
                let lines: Vec<Value> = wf.logs[next..].to_vec();
                next = wf.logs.len();
                // A pod's log is over when the pod is; the Workflow's when the Workflow is.
                let done = !wf.object["status"]["finishedAt"].is_null()
                    || pod.as_deref().is_some_and(|p| wf.ended_pods.contains(p));
                (lines, done, state.faults.log_delay)
            };
            for line in lines {
                if pod.as_deref().is_some_and(|p| line["podName"] != p) {
                    continue;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let text = format!("data: {}\n\n", json!({"result": line}));
                if tx.send(Ok(Bytes::from(text))).await.is_err() {
                    return;
                }
            }
            if !follow || done {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    sse(rx)
}

fn create_secret(shared: &Arc<Shared>, ns: &str, body: &[u8]) -> Response {
    let mut secret: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return kube_status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("bad body: {e}"),
            );
        }
    };
    let Some(name) = secret["metadata"]["name"].as_str().map(str::to_string) else {
        return kube_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "Secret \"\" is invalid: metadata.name: Required value: name or generateName is required",
        );
    };
    let mut state = shared.lock();
    if state.secrets.contains_key(&(ns.into(), name.clone())) {
        return kube_status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("secrets \"{name}\" already exists"),
        );
    }
    let mut data = secret["data"].as_object().cloned().unwrap_or_default();
    if let Some(string_data) = secret["stringData"].as_object() {
        for (k, v) in string_data {
            data.insert(
                k.clone(),
                json!(base64(v.as_str().unwrap_or("").as_bytes())),
            );
        }
    }
    if let Some(obj) = secret.as_object_mut() {
        obj.remove("stringData");
    }
    secret["data"] = Value::Object(data);
    secret["metadata"]["namespace"] = json!(ns);
    secret["metadata"]["uid"] = json!(random_suffix(12));
    secret["metadata"]["creationTimestamp"] = json!(now());
    state.secrets.insert((ns.into(), name), secret.clone());
    (StatusCode::CREATED, axum::Json(secret)).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in patch {
        if v.is_null() {
            if let Some(obj) = target.as_object_mut() {
                obj.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

fn patch_secret(shared: &Arc<Shared>, ns: &str, name: &str, body: &[u8]) -> Response {
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return kube_status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("bad patch: {e}"),
            );
        }
    };
    let mut state = shared.lock();
    let Some(secret) = state.secrets.get_mut(&(ns.into(), name.into())) else {
        return kube_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("secrets \"{name}\" not found"),
        );
    };
    merge_patch(secret, &patch);
    axum::Json(secret.clone()).into_response()
}

// ---- running a Workflow -------------------------------------------------------------------------

/// How a task ended, for its dependents and the Workflow's phase.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ended {
    /// Succeeded, skipped, or failed in a way `continueOn` tolerates.
    Passed,
    /// Its dependents do not run and the Workflow fails.
    Blocked,
}

/// Node ids as Argo makes them: the Workflow's name and a number from the node's name.
fn node_id(wf: &str, node_name: &str) -> String {
    let mut h: u32 = 2_166_136_261;
    for b in node_name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    format!("{wf}-{h}")
}

async fn run_workflow(shared: Arc<Shared>, ns: String, name: String, cancel: CancellationToken) {
    let Some(wf) = shared
        .lock()
        .workflows
        .get(&(ns.clone(), name.clone()))
        .map(|w| w.object.clone())
    else {
        return;
    };
    let spec = wf["spec"].clone();
    let entry = spec["entrypoint"].as_str().unwrap_or("main").to_string();
    let templates: BTreeMap<String, Value> = spec["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["name"].as_str()?.to_string(), t.clone())))
        .collect();
    let params: BTreeMap<String, String> = spec["arguments"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["value"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| p["value"].to_string()),
            ))
        })
        .collect();
    let tasks: Vec<Value> = templates
        .get(&entry)
        .and_then(|t| t["dag"]["tasks"].as_array().cloned())
        .unwrap_or_default();
    let workspace = shared.dir.join(&name).join("workspace");
    let _ = std::fs::create_dir_all(&workspace);
    let started = now();
    shared.update(&ns, &name, |o| {
        o["status"]["phase"] = json!("Running");
        o["status"]["startedAt"] = json!(started);
        o["status"]["nodes"][name.as_str()] = json!({
            "id": name, "name": name, "displayName": name, "type": "DAG",
            "templateName": entry, "phase": "Running", "startedAt": started, "children": [],
        });
    });
    let deadline = spec["activeDeadlineSeconds"]
        .as_u64()
        .or_else(|| {
            spec["activeDeadlineSeconds"]
                .as_str()
                .and_then(|s| s.parse().ok())
        })
        .map(Duration::from_secs);
    let run = Runner {
        shared: shared.clone(),
        ns: ns.clone(),
        wf: name.clone(),
        templates,
        params,
        workspace,
        cancel: cancel.clone(),
    };
    let dag = run.dag(&tasks);
    let outcome = match deadline {
        Some(d) => tokio::time::timeout(d, dag).await.ok(),
        None => Some(dag.await),
    };
    let terminated = shared
        .lock()
        .workflows
        .get(&(ns.clone(), name.clone()))
        .is_some_and(|w| w.terminated);
    // Pods still running (after a deadline or a terminate) are stopped with it.
    cancel.cancel();
    let (phase, message) = match (outcome, terminated) {
        (_, true) => (
            "Failed",
            Some("Stopped with strategy 'Terminate'".to_string()),
        ),
        (None, false) => ("Failed", Some("Max duration limit exceeded".to_string())),
        (Some(Ok(())), false) => ("Succeeded", None),
        (Some(Err(why)), false) => ("Failed", Some(why)),
    };
    let finished = now();
    shared.update(&ns, &name, |o| {
        o["status"]["phase"] = json!(phase);
        o["status"]["finishedAt"] = json!(finished);
        if let Some(m) = &message {
            o["status"]["message"] = json!(m);
        }
        let node = &mut o["status"]["nodes"][name.as_str()];
        node["phase"] = json!(phase);
        node["finishedAt"] = json!(finished);
        // Nodes cut off by the end are failed with it.
        if let Some(nodes) = o["status"]["nodes"].as_object_mut() {
            for node in nodes.values_mut() {
                if matches!(node["phase"].as_str(), Some("Running" | "Pending")) {
                    node["phase"] = json!("Failed");
                    node["finishedAt"] = json!(finished);
                    node["message"] = json!(message.clone().unwrap_or_else(|| "terminated".into()));
                }
            }
        }
        o["metadata"]["labels"]["workflows.argoproj.io/completed"] = json!("true");
    });
}

struct Runner {
    shared: Arc<Shared>,
    ns: String,
    wf: String,
    templates: BTreeMap<String, Value>,
    params: BTreeMap<String, String>,
    workspace: PathBuf,
    cancel: CancellationToken,
}

impl Runner {
    /// Runs the DAG's tasks in dependency order, independent ones side by side. `Err` says which
    /// task failed the Workflow.
    async fn dag(&self, tasks: &[Value]) -> Result<(), String> {
        let mut ended: BTreeMap<String, Ended> = BTreeMap::new();
        let mut outputs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut running = tokio::task::JoinSet::new();
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut failure: Option<String> = None;
        loop {
            for task in tasks {
                let tname = task["name"].as_str().unwrap_or("").to_string();
                if started.contains(&tname) {
                    continue;
                }
                let deps: Vec<String> = task["dependencies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect();
                if !deps.iter().all(|d| ended.contains_key(d)) {
                    continue;
                }
                started.insert(tname.clone());
                // A dependency that did not pass: this task gets no node, and never runs.
                if deps.iter().any(|d| ended.get(d) == Some(&Ended::Blocked)) {
                    ended.insert(tname, Ended::Blocked);
                    continue;
                }
                if let Some(when) = task["when"].as_str() {
                    let expr = match substitute(when, &self.params, &outputs) {
                        Ok(e) => e,
                        Err(e) => {
                            failure.get_or_insert(e);
                            ended.insert(tname, Ended::Blocked);
                            continue;
                        }
                    };
                    match eval_when(&expr) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.skipped(&tname, task, &format!("when '{expr}' evaluated false"));
                            outputs.insert(tname.clone(), BTreeMap::new());
                            ended.insert(tname, Ended::Passed);
                            continue;
                        }
                        Err(e) => {
                            failure
                                .get_or_insert(format!("invalid 'when' expression '{expr}': {e}"));
                            ended.insert(tname, Ended::Blocked);
                            continue;
                        }
                    }
                }
                let Some(template) = self
                    .templates
                    .get(task["template"].as_str().unwrap_or(""))
                    .cloned()
                else {
                    ended.insert(tname, Ended::Blocked);
                    continue;
                };
                let template = match substitute_value(&template, &self.params, &outputs) {
                    Ok(t) => t,
                    Err(e) => {
                        failure.get_or_insert(e);
                        ended.insert(tname, Ended::Blocked);
                        continue;
                    }
                };
                let pod = PodRun {
                    shared: self.shared.clone(),
                    ns: self.ns.clone(),
                    wf: self.wf.clone(),
                    task: tname.clone(),
                    template,
                    workspace: self.workspace.clone(),
                    cancel: self.cancel.clone(),
                };
                let continue_on = task["continueOn"].clone();
                running.spawn(async move {
                    let (phase, outs) = pod.run().await;
                    (pod.task, phase, outs, continue_on)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok((tname, phase, outs, continue_on)) = joined else {
                continue;
            };
            let passed = match phase.as_str() {
                "Succeeded" | "Skipped" => true,
                "Failed" => continue_on["failed"] == true,
                "Error" => continue_on["error"] == true,
                _ => false,
            };
            if !passed {
                failure.get_or_insert(format!("child '{tname}' failed"));
            }
            outputs.insert(tname.clone(), outs);
            ended.insert(
                tname,
                if passed {
                    Ended::Passed
                } else {
                    Ended::Blocked
                },
            );
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn skipped(&self, tname: &str, task: &Value, message: &str) {
        let node_name = format!("{}.{tname}", self.wf);
        let id = node_id(&self.wf, &node_name);
        let at = now();
        let wf = self.wf.clone();
        self.shared.update(&self.ns, &self.wf, |o| {
            o["status"]["nodes"][id.as_str()] = json!({
                "id": id, "name": node_name, "displayName": tname, "type": "Skipped",
                "templateName": task["template"], "phase": "Skipped", "boundaryID": wf,
                "startedAt": at, "finishedAt": at, "message": message,
            });
            push_child(o, &wf, &id);
        });
    }
}

fn push_child(o: &mut Value, parent: &str, child: &str) {
    let children = &mut o["status"]["nodes"][parent]["children"];
    if !children.is_array() {
        *children = json!([]);
    }
    if let Some(list) = children.as_array_mut() {
        list.push(json!(child));
    }
}

/// Replaces `{{workflow.parameters.X}}` and `{{tasks.T.outputs.parameters.P}}`; anything it
/// cannot resolve is an error, as in Argo.
fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = after[..end].trim();
        let value = if let Some(p) = inner.strip_prefix("workflow.parameters.") {
            params.get(p).cloned()
        } else if let Some(t) = inner.strip_prefix("tasks.") {
            let parts: Vec<&str> = t.split('.').collect();
            match parts.as_slice() {
                [task, "outputs", "parameters", name] => {
                    outputs.get(*task).and_then(|o| o.get(*name)).cloned()
                }
                _ => None,
            }
        } else {
            None
        };
        match value {
            Some(v) => out.push_str(&v),
            None => return Err(format!("Unable to resolve: \"{{{{{inner}}}}}\"")),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute_value(
    v: &Value,
    params: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(s, params, outputs)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| substitute_value(i, params, outputs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), substitute_value(v, params, outputs)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

// ---- `when` ------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Word(String),
    Op(&'static str),
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|x| *x == c)
                .ok_or("unterminated string")?;
            out.push(Tok::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if let Some(op) = ["==", "!=", "<=", ">=", "&&", "||"]
            .into_iter()
            .find(|op| chars[i..].iter().take(2).collect::<String>() == *op)
        {
            out.push(Tok::Op(op));
            i += 2;
        } else if let Some(op) = ["<", ">", "!", "(", ")"]
            .into_iter()
            .find(|op| op.starts_with(c))
        {
            out.push(Tok::Op(op));
            i += 1;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"=!<>&|()'\"".contains(chars[i])
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match word.parse::<f64>() {
                Ok(n) => out.push(Tok::Num(n)),
                Err(_) => out.push(Tok::Word(word)),
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Num(f64),
    Bool(bool),
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn or(&mut self) -> Result<Val, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Op("||")) {
            self.at += 1;
            let right = self.and()?;
            left = Val::Bool(truth(&left)? || truth(&right)?);
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Val, String> {
        let mut left = self.cmp()?;
        while self.peek() == Some(&Tok::Op("&&")) {
            self.at += 1;
            let right = self.cmp()?;
            left = Val::Bool(truth(&left)? && truth(&right)?);
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Val, String> {
        let left = self.unary()?;
        let Some(Tok::Op(op)) = self.peek().cloned() else {
            return Ok(left);
        };
        if !["==", "!=", "<", "<=", ">", ">="].contains(&op) {
            return Ok(left);
        }
        self.at += 1;
        let right = self.unary()?;
        let ordering = match (&left, &right) {
            (Val::Num(a), Val::Num(b)) => a.partial_cmp(b),
            (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
            (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            _ if matches!(op, "==" | "!=") => None,
            _ => return Err(format!("cannot compare {left:?} and {right:?}")),
        };
        use std::cmp::Ordering::*;
        Ok(Val::Bool(match op {
            "==" => ordering == Some(Equal),
            "!=" => ordering != Some(Equal),
            "<" => ordering == Some(Less),
            "<=" => matches!(ordering, Some(Less | Equal)),
            ">" => ordering == Some(Greater),
            _ => matches!(ordering, Some(Greater | Equal)),
        }))
    }

    fn unary(&mut self) -> Result<Val, String> {
        match self.toks.get(self.at).cloned() {
            Some(Tok::Op("!")) => {
                self.at += 1;
                let v = self.unary()?;
                Ok(Val::Bool(!truth(&v)?))
            }
            Some(Tok::Op("(")) => {
                self.at += 1;
                let v = self.or()?;
                if self.peek() != Some(&Tok::Op(")")) {
                    return Err("missing )".into());
                }
                self.at += 1;
                Ok(v)
            }
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(Val::Str(s))
            }
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(Val::Num(n))
            }
            Some(Tok::Word(w)) if w == "true" || w == "false" => {
                self.at += 1;
                Ok(Val::Bool(w == "true"))
            }
            // govaluate reads an unquoted word as a variable: none is defined here.
            Some(Tok::Word(w)) => Err(format!("No parameter '{w}' found.")),
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

fn truth(v: &Val) -> Result<bool, String> {
    match v {
        Val::Bool(b) => Ok(*b),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

/// Argo's `when`: a govaluate expression.
fn eval_when(expr: &str) -> Result<bool, String> {
    let mut p = Parser {
        toks: tokens(expr)?,
        at: 0,
    };
    let v = p.or()?;
    if p.at != p.toks.len() {
        return Err(format!("unexpected {:?}", p.toks[p.at]));
    }
    truth(&v)
}

// ---- pods ---------------------------------------------------------------------------------------

struct PodRun {
    shared: Arc<Shared>,
    ns: String,
    wf: String,
    task: String,
    template: Value,
    workspace: PathBuf,
    cancel: CancellationToken,
}

/// A pod's end: phase, exit code, message, outputs.
struct PodEnd {
    phase: &'static str,
    exit_code: Option<i32>,
    message: Option<String>,
    outputs: Vec<(String, String, String)>,
}

fn seconds(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// `5s`, `1m`, `2` (seconds).
fn duration(v: &Value) -> Duration {
    let s = v
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().unwrap_or(0);
    match unit {
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "ms" => Duration::from_millis(n),
        _ => Duration::from_secs(n),
    }
}

impl PodRun {
    /// Runs the task's attempts; returns its final phase and its outputs.
    async fn run(&self) -> (String, BTreeMap<String, String>) {
        let node_name = format!("{}.{}", self.wf, self.task);
        let task_id = node_id(&self.wf, &node_name);
        let retry = self.template["retryStrategy"].clone();
        let started = now();
        let template_name = self.template["name"].clone();
        {
            let (id, node_name, wf, task) = (
                task_id.clone(),
                node_name.clone(),
                self.wf.clone(),
                self.task.clone(),
            );
            let kind = if retry.is_null() { "Pod" } else { "Retry" };
            self.shared.update(&self.ns, &self.wf, |o| {
                o["status"]["nodes"][id.as_str()] = json!({
                    "id": id, "name": node_name, "displayName": task, "type": kind,
                    "templateName": template_name, "phase": "Running", "boundaryID": wf,
                    "startedAt": started, "children": [],
                });
                push_child(o, &wf, &id);
            });
        }
        let limit = seconds(&retry["limit"]).unwrap_or(0);
        let policy = retry["retryPolicy"]
            .as_str()
            .unwrap_or("OnFailure")
            .to_string();
        let mut attempt = 0u64;
        let end = loop {
            let (id, name) = if retry.is_null() {
                (task_id.clone(), node_name.clone())
            } else {
                let name = format!("{node_name}({attempt})");
                (node_id(&self.wf, &name), name)
            };
            if !retry.is_null() {
                let (parent, id2, name2, wf, at) = (
                    task_id.clone(),
                    id.clone(),
                    name.clone(),
                    self.wf.clone(),
                    now(),
                );
                let template_name = self.template["name"].clone();
                let display = format!("{}({attempt})", self.task);
                self.shared.update(&self.ns, &self.wf, |o| {
                    o["status"]["nodes"][id2.as_str()] = json!({
                        "id": id2, "name": name2, "displayName": display, "type": "Pod",
                        "templateName": template_name, "phase": "Running", "boundaryID": wf,
                        "startedAt": at,
                    });
                    push_child(o, &parent, &id2);
                });
            }
            let pod_name = format!(
                "{}-{}-{}",
                self.wf,
                self.template["name"].as_str().unwrap_or("pod"),
                &id[self.wf.len() + 1..]
            );
            let end = self.pod(&pod_name, &id).await;
            let finished = now();
            {
                let (id2, end_phase, message, exit, outs) = (
                    id.clone(),
                    end.phase,
                    end.message.clone(),
                    end.exit_code,
                    end.outputs.clone(),
                );
                self.shared.update(&self.ns, &self.wf, |o| {
                    let node = &mut o["status"]["nodes"][id2.as_str()];
                    node["phase"] = json!(end_phase);
                    node["finishedAt"] = json!(finished);
                    if let Some(m) = &message {
                        node["message"] = json!(m);
                    }
                    let params: Vec<Value> = outs
                        .iter()
                        .map(|(n, v, p)| json!({"name": n, "value": v, "valueFrom": {"path": p}}))
                        .collect();
                    let mut outputs = json!({});
                    if !params.is_empty() {
                        outputs["parameters"] = json!(params);
                    }
                    if let Some(code) = exit {
                        outputs["exitCode"] = json!(code.to_string());
                    }
                    if outputs.as_object().is_some_and(|m| !m.is_empty()) {
                        node["outputs"] = outputs;
                    }
                });
            }
            let retried = match policy.as_str() {
                "Always" => matches!(end.phase, "Failed" | "Error"),
                "OnError" => end.phase == "Error",
                _ => end.phase == "Failed",
            };
            if retry.is_null() || !retried || attempt >= limit || self.cancel.is_cancelled() {
                break end;
            }
            let base = duration(&retry["backoff"]["duration"]);
            let factor = seconds(&retry["backoff"]["factor"]).unwrap_or(1).max(1);
            let mut wait = base.saturating_mul(
                u32::try_from(factor.saturating_pow(u32::try_from(attempt).unwrap_or(u32::MAX)))
                    .unwrap_or(u32::MAX),
            );
            if !retry["backoff"]["cap"].is_null() {
                wait = wait.min(duration(&retry["backoff"]["cap"]));
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.cancel.cancelled() => break end,
            }
            attempt += 1;
        };
        if !retry.is_null() {
            let (id, phase, message, outs, at) = (
                task_id.clone(),
                end.phase,
                end.message.clone(),
                end.outputs.clone(),
                now(),
            );
            let exhausted = end.phase != "Succeeded";
            self.shared.update(&self.ns, &self.wf, |o| {
                let node = &mut o["status"]["nodes"][id.as_str()];
                node["phase"] = json!(phase);
                node["finishedAt"] = json!(at);
                if exhausted {
                    node["message"] = json!(message.unwrap_or_else(|| "No more retries left".into()));
                }
                if !outs.is_empty() {
                    node["outputs"] = json!({"parameters": outs.iter().map(|(n, v, p)| json!({"name": n, "value": v, "valueFrom": {"path": p}})).collect::<Vec<_>>()});
                }
            });
        }
        let outputs = end.outputs.into_iter().map(|(n, v, _)| (n, v)).collect();
        (end.phase.to_string(), outputs)
    }

    /// Marks a pod's log complete.
    fn pod_ended(&self, pod_name: &str) {
        if let Some(wf) = self
            .shared
            .lock()
            .workflows
            .get_mut(&(self.ns.clone(), self.wf.clone()))
        {
            wf.ended_pods.insert(pod_name.to_string());
        }
        self.shared.bump();
    }

    /// One pod: the template's process, within its deadline, its lines logged, its outputs read.
    async fn pod(&self, pod_name: &str, node: &str) -> PodEnd {
        let outputs_dir = self.shared.dir.join(&self.wf).join("pods").join(node);
        let _ = std::fs::create_dir_all(&outputs_dir);
        let map_path = |p: &str| -> String {
            if let Some(rest) = p.strip_prefix(WORKSPACE) {
                format!("{}{rest}", self.workspace.display())
            } else if let Some(rest) = p.strip_prefix(OUTPUTS) {
                format!("{}{rest}", outputs_dir.display())
            } else {
                p.to_string()
            }
        };
        let body = if self.template["script"].is_object() {
            &self.template["script"]
        } else {
            &self.template["container"]
        };
        // The environment, as Kubernetes builds it.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in body["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let sname = r.get("name").and_then(Value::as_str).unwrap_or("");
                let key = r.get("key").and_then(Value::as_str).unwrap_or("");
                let found = self
                    .shared
                    .lock()
                    .secrets
                    .get(&(self.ns.clone(), sname.to_string()))
                    .and_then(|s| s["data"][key].as_str().map(str::to_string));
                match found.and_then(|b| unbase64(&b)) {
                    Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    None => {
                        return PodEnd {
                            phase: "Error",
                            exit_code: None,
                            message: Some(format!(
                                "CreateContainerConfigError: couldn't find key {key} in Secret {}/{sname}",
                                self.ns
                            )),
                            outputs: Vec::new(),
                        };
                    }
                }
            } else {
                String::new()
            };
            env.push((name, map_path(&value)));
        }
        let mut argv: Vec<String> = body["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(|s| expand(s, &env)))
            .collect();
        argv.extend(
            body["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(|s| expand(s, &env))),
        );
        if let Some(source) = body["source"].as_str() {
            let file = outputs_dir.with_extension("script");
            if std::fs::write(&file, source).is_err() {
                return PodEnd {
                    phase: "Error",
                    exit_code: None,
                    message: Some("cannot write the script".into()),
                    outputs: Vec::new(),
                };
            }
            argv.push(file.display().to_string());
        }
        let working_dir = map_path(body["workingDir"].as_str().unwrap_or(WORKSPACE));
        let _ = std::fs::create_dir_all(&working_dir);
        let Some((program, args)) = argv.split_first() else {
            return PodEnd {
                phase: "Error",
                exit_code: None,
                message: Some("no command".into()),
                outputs: Vec::new(),
            };
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&working_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                return PodEnd {
                    phase: "Error",
                    exit_code: None,
                    message: Some(format!("failed to start {program}: {e}")),
                    outputs: Vec::new(),
                };
            }
        };
        let pid = child.id();
        let lines = {
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let log = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
                let shared = self.shared.clone();
                let key = (self.ns.clone(), self.wf.clone());
                let pod = pod_name.to_string();
                async move {
                    let Some(pipe) = pipe else { return };
                    let mut reader = BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        if let Some(wf) = shared.lock().workflows.get_mut(&key) {
                            wf.logs.push(json!({"podName": pod, "content": line}));
                        }
                        shared.bump();
                    }
                }
            };
            let out =
                log(stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>));
            let err =
                log(stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>));
            async move {
                tokio::join!(out, err);
            }
        };
        let deadline = seconds(&self.template["activeDeadlineSeconds"]).map(Duration::from_secs);
        let kill = |pid: Option<u32>| {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the process group of our own child.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        };
        let waited = async {
            let (status, ()) = tokio::join!(child.wait(), lines);
            status
        };
        let status = tokio::select! {
            status = waited => status.ok(),
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {
                kill(pid);
                self.pod_ended(pod_name);
                return PodEnd {
                    phase: "Failed",
                    exit_code: None,
                    message: Some("Pod was active on the node longer than the specified deadline".into()),
                    outputs: Vec::new(),
                };
            }
            () = self.cancel.cancelled() => {
                kill(pid);
                self.pod_ended(pod_name);
                return PodEnd {
                    phase: "Failed",
                    exit_code: None,
                    message: Some("terminated".into()),
                    outputs: Vec::new(),
                };
            }
        };
        self.pod_ended(pod_name);
        let code = status.and_then(|s| s.code()).unwrap_or(-1);
        if code != 0 {
            return PodEnd {
                phase: "Failed",
                exit_code: Some(code),
                message: Some(format!("Error (exit code {code})")),
                outputs: Vec::new(),
            };
        }
        let mut outputs = Vec::new();
        for p in self.template["outputs"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = p["name"].as_str().unwrap_or("").to_string();
            let path = p["valueFrom"]["path"].as_str().unwrap_or("").to_string();
            match std::fs::read_to_string(map_path(&path)) {
                Ok(mut v) => {
                    if v.ends_with('\n') {
                        v.pop();
                    }
                    outputs.push((name, v, path));
                }
                Err(_) => match p["valueFrom"]["default"].as_str() {
                    Some(d) => outputs.push((name, d.to_string(), path)),
                    None => {
                        return PodEnd {
                            phase: "Error",
                            exit_code: Some(0),
                            message: Some(format!(
                                "Error (exit code 1): open {path}: no such file or directory"
                            )),
                            outputs: Vec::new(),
                        };
                    }
                },
            }
        }
        PodEnd {
            phase: "Succeeded",
            exit_code: Some(0),
            message: None,
            outputs,
        }
    }
}

/// Kubernetes' `$(VAR)` expansion of a value: variables defined earlier are replaced, `$$(` is a
/// literal `$(`, anything else stays as written.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("$(")
            && let Some(end) = tail.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| k == &tail[..end])
        {
            out.push_str(v);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Paths of the stand-in, for tests that look at what a pod left behind.
pub fn workspace_of(stand_in: &ArgoStandIn, workflow: &str) -> PathBuf {
    stand_in.shared.dir.join(workflow).join("workspace")
}

/// Waits until `workflow` in `ns` has ended; returns it.
pub fn wait_finished(stand_in: &ArgoStandIn, ns: &str, workflow: &str, limit: Duration) -> Value {
    let found = super::poll(
        || {
            stand_in
                .workflow(ns, workflow)
                .filter(|w| !w["status"]["finishedAt"].is_null())
        },
        limit,
    );
    found.unwrap_or_else(|| {
        panic!(
            "{workflow} did not finish within {limit:?}: {:?}",
            stand_in.workflow(ns, workflow)
        )
    })
}
