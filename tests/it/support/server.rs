//! A running `gantry serve` for the service tests: `ServerConfig` renders a `gantry.toml` (API
//! tokens, watched repositories, raw extras), `GantryServer` runs the built binary on a free
//! loopback port with its output captured to files, waits for `GET /healthz`, talks to the API
//! with a bearer token, and stops (SIGTERM), kills (SIGKILL) and restarts it on the same data.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::git::free_port;
use super::poll;

/// The API token of the default `admin` entry.
pub const TOKEN: &str = "gantry-it-admin-token-0123456789";

/// How long the server gets to answer `GET /healthz` with 200 after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The timeout of one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One `[[repos]]` entry. Field values are written as literal TOML strings (`${` included, so no
/// variable is substituted); use `extra` for anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub name: String,
    pub url: String,
    /// `git` unless changed with [`RepoSpec::forge`].
    pub provider: String,
    /// The forge's repository id; required by every provider but `git`.
    pub repo: Option<String>,
    pub branch: String,
    pub paths: Vec<String>,
    pub poll_interval: String,
    /// Raw TOML lines added to the entry, e.g. `token = "${GITHUB_TOKEN}"`.
    pub extra: String,
}

impl RepoSpec {
    /// A plain-git repository on branch `main`, with the pipelines under `.gantry/pipelines/`
    /// (`*.yaml` and `*.yml`), polled every second.
    pub fn new(name: &str, url: &str) -> RepoSpec {
        RepoSpec {
            name: name.to_owned(),
            url: url.to_owned(),
            provider: "git".to_owned(),
            repo: None,
            branch: "main".to_owned(),
            paths: vec![
                ".gantry/pipelines/*.yaml".to_owned(),
                ".gantry/pipelines/*.yml".to_owned(),
            ],
            poll_interval: "1s".to_owned(),
            extra: String::new(),
        }
    }

    pub fn branch(mut self, branch: &str) -> RepoSpec {
        branch.clone_into(&mut self.branch);
        self
    }

    pub fn paths(mut self, globs: &[&str]) -> RepoSpec {
        self.paths = globs.iter().map(|g| (*g).to_owned()).collect();
        self
    }

    /// A duration such as `1s`; `0s` turns polling off.
    pub fn poll_interval(mut self, interval: &str) -> RepoSpec {
        interval.clone_into(&mut self.poll_interval);
        self
    }

    /// A forge provider (`github`, `gitlab`, `bitbucket`) and the repository's id there.
    pub fn forge(mut self, provider: &str, repo: &str) -> RepoSpec {
        provider.clone_into(&mut self.provider);
        self.repo = Some(repo.to_owned());
        self
    }

    /// Raw TOML lines added to the entry.
    pub fn extra(mut self, toml: &str) -> RepoSpec {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
}

/// What goes into the server's `gantry.toml` and environment. `[server]` (listen address and
/// public URL) and `[storage]` are filled in by [`GantryServer`]. Field values are written as
/// literal TOML strings; the raw parts are written as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `[[auth.tokens]]` as (name, token); the client sends the first. Default: `admin` with
    /// [`TOKEN`].
    pub tokens: Vec<(String, String)>,
    pub repos: Vec<RepoSpec>,
    /// Raw TOML lines added to `[server]`.
    pub server_toml: String,
    /// Raw TOML lines added to `[storage]`.
    pub storage_toml: String,
    /// Raw TOML added at the end of the file; it must start with a table header.
    pub extra_toml: String,
    /// Environment variables of the server process (on top of the test's, without
    /// `GANTRY_MASTER_KEY`).
    pub env: Vec<(String, String)>,
    /// Extra arguments after `serve --config FILE`, e.g. `--shutdown-grace 1s`.
    pub args: Vec<String>,
    /// The data dir, when not `data` in the server's temporary directory.
    pub data_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tokens: vec![("admin".to_owned(), TOKEN.to_owned())],
            repos: Vec::new(),
            server_toml: String::new(),
            storage_toml: String::new(),
            extra_toml: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            data_dir: None,
        }
    }
}

impl ServerConfig {
    /// The default: one admin token, no repositories.
    pub fn new() -> ServerConfig {
        ServerConfig::default()
    }

    pub fn repo(mut self, repo: RepoSpec) -> ServerConfig {
        self.repos.push(repo);
        self
    }

    /// Raw TOML lines added to `[server]`.
    pub fn server_toml(mut self, toml: &str) -> ServerConfig {
        self.server_toml.push_str(toml);
        self.server_toml.push('\n');
        self
    }

    /// Raw TOML lines added to `[storage]`, e.g. `retention = "2s"`.
    pub fn storage_toml(mut self, toml: &str) -> ServerConfig {
        self.storage_toml.push_str(toml);
        self.storage_toml.push('\n');
        self
    }

    /// Raw TOML added at the end of the file, starting with a table header.
    pub fn extra_toml(mut self, toml: &str) -> ServerConfig {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> ServerConfig {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// No `[[auth.tokens]]`: the server then needs `--insecure-no-auth` (it listens on
    /// loopback), which this adds.
    pub fn without_tokens(mut self) -> ServerConfig {
        self.tokens.clear();
        self.args.push("--insecure-no-auth".to_owned());
        self
    }

    /// Keeps the data in `dir` (say, a small file system mounted for the test).
    pub fn data_dir(mut self, dir: &Path) -> ServerConfig {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Extra arguments of `gantry serve`, e.g. `.args(&["--max-running", "1"])`.
    pub fn args(mut self, args: &[&str]) -> ServerConfig {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The `gantry.toml` text for a server on `127.0.0.1:port` keeping its data in `data_dir`.
    pub fn render(&self, port: u16, data_dir: &Path) -> String {
        let mut out = String::from("[server]\n");
        key(&mut out, "listen", &quoted(&format!("127.0.0.1:{port}")));
        key(
            &mut out,
            "public_url",
            &quoted(&format!("http://127.0.0.1:{port}")),
        );
        out.push_str(&self.server_toml);
        out.push_str("\n[storage]\n");
        let data_dir = data_dir.to_str().expect("utf-8 data dir");
        key(&mut out, "data_dir", &quoted(data_dir));
        out.push_str(&self.storage_toml);
        for (name, token) in &self.tokens {
            out.push_str("\n[[auth.tokens]]\n");
            key(&mut out, "name", &quoted(name));
            key(&mut out, "token", &quoted(token));
        }
        for repo in &self.repos {
            out.push_str("\n[[repos]]\n");
            key(&mut out, "name", &quoted(&repo.name));
            key(&mut out, "url", &quoted(&repo.url));
            key(&mut out, "provider", &quoted(&repo.provider));
            if let Some(id) = &repo.repo {
                key(&mut out, "repo", &quoted(id));
            }
            key(&mut out, "branch", &quoted(&repo.branch));
            let globs: Vec<String> = repo.paths.iter().map(|g| quoted(g)).collect();
            key(&mut out, "paths", &format!("[{}]", globs.join(", ")));
            key(&mut out, "poll_interval", &quoted(&repo.poll_interval));
            out.push_str(&repo.extra);
        }
        if !self.extra_toml.is_empty() {
            out.push('\n');
            out.push_str(&self.extra_toml);
        }
        out
    }
}

/// Appends the line `name = value` (`value` already in TOML syntax).
fn key(out: &mut String, name: &str, value: &str) {
    out.push_str(&format!("{name} = {value}\n"));
}

/// A TOML basic string holding exactly `value`: quotes, backslashes and control characters are
/// escaped, and `${` is written `$${` so the config loader substitutes nothing.
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.replace("${", "$${").chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses a response body as JSON, panicking with the body if it is not.
pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A `gantry serve --config FILE` process on a free loopback port, with its config, data and
/// captured output in a temporary directory. Killed on drop; a test that panics while the server
/// is alive prints its output.
pub struct GantryServer {
    dir: tempfile::TempDir,
    cfg: ServerConfig,
    port: u16,
    child: Option<Child>,
    client: reqwest::blocking::Client,
    starts: usize,
}

impl GantryServer {
    /// Writes the config, starts the server and waits until `GET /healthz` answers 200.
    pub fn start(cfg: ServerConfig) -> GantryServer {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client");
        let mut server = GantryServer {
            dir: tempfile::tempdir().expect("tempdir for the server"),
            cfg,
            port: free_port(),
            child: None,
            client,
            starts: 0,
        };
        server.write_config();
        server.spawn();
        server
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The token the requests carry (the first configured one).
    pub fn token(&self) -> &str {
        match self.cfg.tokens.first() {
            Some((_, token)) => token,
            None => panic!("the server has no [[auth.tokens]]"),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The temporary directory holding the config, the data and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gantry.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.cfg.data_dir {
            Some(dir) => dir.clone(),
            None => self.dir.path().join("data"),
        }
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server printed so far, over all its starts.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    /// Sends a request with `token` as bearer token (none for `None`) and an optional body with
    /// its content type; returns the status and the body text. A POST, PUT or DELETE without a
    /// body says `Content-Type: application/json`, as the CLI does (the server refuses
    /// state-changing calls without it). Transport failures panic with the server's logs.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, String) {
        let writes = matches!(method, "POST" | "PUT" | "DELETE");
        let body = body.or_else(|| writes.then(|| ("application/json", Vec::new())));
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        let bytes = body.map(|(content_type, bytes)| {
            headers.push(("content-type".to_owned(), content_type.to_owned()));
            bytes
        });
        self.request_with(method, path, &headers, bytes)
    }

    /// Sends a request with exactly `headers` (besides what the HTTP client adds: Host, ...) and
    /// an optional body; returns the status and the body text.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let url = format!("{}{path}", self.url());
        let mut request = self.client.request(method.clone(), &url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(bytes) = body {
            request = request.body(bytes);
        }
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\n{}", self.logs()));
        let status = response.status().as_u16();
        let text = response
            .text()
            .unwrap_or_else(|e| panic!("{method} {url}: unreadable body: {e}\n{}", self.logs()));
        (status, text)
    }

    fn bearer(&self) -> Option<&str> {
        self.cfg.tokens.first().map(|(_, token)| token.as_str())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, self.bearer(), None)
    }

    /// A GET without an `Authorization` header.
    pub fn get_without_token(&self, path: &str) -> (u16, String) {
        self.request("GET", path, None, None)
    }

    /// A GET that must answer 2xx with JSON; panics with the response and the logs otherwise.
    /// Asserts that `value` (an answer of this server) is what the served OpenAPI document's
    /// schema `schema` says such an answer is.
    pub fn conforms(&self, schema: &str, value: &Value) {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "the answer is not a {schema}: {errors:#?}\n{value:#}"
        );
    }

    /// The compiled validator for the served document's schema `schema`. Every server of this
    /// test process is the same binary serving the same document, so each schema is fetched and
    /// compiled once per process: a check stays cheap inside polling loops.
    fn validator(&self, schema: &str) -> std::sync::Arc<jsonschema::Validator> {
        type Compiled = HashMap<String, std::sync::Arc<jsonschema::Validator>>;
        static COMPILED: std::sync::OnceLock<Mutex<Compiled>> = std::sync::OnceLock::new();
        let compiled = COMPILED.get_or_init(Default::default);
        if let Some(found) = compiled.lock().expect("validators").get(schema) {
            return found.clone();
        }
        let doc = self.get_json("/api/v1/openapi.json");
        let root = serde_json::json!({
            "$ref": format!("#/components/schemas/{schema}"),
            "components": doc["components"],
        });
        let validator = std::sync::Arc::new(
            jsonschema::validator_for(&root)
                .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}")),
        );
        compiled
            .lock()
            .expect("validators")
            .insert(schema.to_owned(), validator.clone());
        validator
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        if !(200..300).contains(&status) {
            panic!("GET {path} answered {status}: {body}\n{}", self.logs());
        }
        json(&body)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, String) {
        self.request("POST", path, self.bearer(), Some(json_body(body)))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> (u16, String) {
        self.request("PUT", path, self.bearer(), Some(json_body(body)))
    }

    /// A PUT of YAML text itself (`application/yaml`, which a pipeline's PUT accepts).
    pub fn put_text(&self, path: &str, text: &str) -> (u16, String) {
        let body = ("application/yaml", text.as_bytes().to_vec());
        self.request("PUT", path, self.bearer(), Some(body))
    }

    pub fn delete(&self, path: &str) -> (u16, String) {
        self.request("DELETE", path, self.bearer(), None)
    }

    /// Polls `condition` until it holds; panics with `what` and the logs after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
        if poll(|| condition().then_some(()), timeout).is_none() {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.logs()
            );
        }
    }

    /// Sends SIGTERM and waits for the server to exit (panicking with the logs if it does not
    /// within 20 s); returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) has no memory effects; the pid is our child that was not yet waited
        // for, so it cannot belong to another process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to gantry serve ({pid}) failed");
        match poll(|| child.try_wait().ok().flatten(), STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gantry serve did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                    self.logs()
                );
            }
        }
    }

    /// The exit status once the process has ended by itself (it is then no longer running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Kills the server with SIGKILL, as a crash would, and returns its exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("SIGKILL to gantry serve");
        child.wait().expect("wait for gantry serve")
    }

    /// Starts the server again with the same config, data directory and port (stopping it with
    /// SIGTERM first if it still runs) and waits until it is healthy.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Like [`GantryServer::restart`], with a new config (same data directory and port).
    pub fn restart_with(&mut self, cfg: ServerConfig) {
        if self.child.is_some() {
            self.stop();
        }
        self.cfg = cfg;
        self.write_config();
        self.spawn();
    }

    fn write_config(&self) {
        let text = self.cfg.render(self.port, &self.data_dir());
        fs::write(self.config_path(), text).expect("write gantry.toml");
    }

    fn log_file(&self, name: &str) -> File {
        let path = self.dir.path().join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        if self.starts > 0 {
            writeln!(file, "--- restart {} ---", self.starts).expect("write log separator");
        }
        file
    }

    /// Starts the process and waits until `GET /healthz` answers 200.
    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .args(&self.cfg.args)
            .current_dir(self.dir.path())
            .env_remove("GANTRY_MASTER_KEY")
            .env("NO_COLOR", "1")
            .envs(self.cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(self.log_file("stdout.log"))
            .stderr(self.log_file("stderr.log"));
        self.child = Some(cmd.spawn().expect("the gantry binary starts"));
        self.starts += 1;

        let health = format!("{}/healthz", self.url());
        let token = self.bearer().map(str::to_owned);
        let mut last = String::from("no answer yet");
        let healthy = poll(
            || {
                if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                    panic!(
                        "gantry serve exited before it was healthy: {status}\n{}",
                        logs_in(self.dir.path())
                    );
                }
                let mut probe = self.client.get(&health).timeout(Duration::from_secs(2));
                if let Some(token) = &token {
                    probe = probe.bearer_auth(token);
                }
                match probe.send() {
                    Ok(r) if r.status().as_u16() == 200 => Some(()),
                    Ok(r) => {
                        last = format!("status {}", r.status());
                        None
                    }
                    Err(e) => {
                        last = e.to_string();
                        None
                    }
                }
            },
            START_TIMEOUT,
        );
        if healthy.is_none() {
            panic!(
                "gantry serve did not answer GET /healthz with 200 within {START_TIMEOUT:?} \
                 (last: {last})\n{}",
                self.logs()
            );
        }
    }
}

impl Drop for GantryServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The captured output of the server kept in `dir`.
fn logs_in(dir: &Path) -> String {
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!(
        "--- gantry serve stdout ---\n{}--- gantry serve stderr ---\n{}--- end ---",
        read("stdout.log"),
        read("stderr.log")
    )
}

fn json_body(value: &Value) -> (&'static str, Vec<u8>) {
    let bytes = serde_json::to_vec(value).expect("a JSON value serialises");
    ("application/json", bytes)
}

#[test]
fn the_rendered_config_is_what_the_config_loader_accepts() {
    let cfg = ServerConfig::new()
        .repo(RepoSpec::new("infra", "git://127.0.0.1:9/infra.git").poll_interval("0s"))
        .repo(
            RepoSpec::new("apps", "https://example.com/a$${b}/\"q\".git")
                .branch("release/1")
                .paths(&["ci/*.yaml"])
                .forge("github", "acme/apps")
                .extra("webhook_secret = \"whsec-0123456789\""),
        )
        .server_toml("# nothing else yet");
    let origin = Path::new("/tmp/it/gantry.toml");
    let text = cfg.render(4242, Path::new("/tmp/it/data"));
    let loaded = gantry::config::parse(&text, origin, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    assert_eq!(loaded.server.listen.to_string(), "127.0.0.1:4242");
    assert_eq!(loaded.server.public_url, "http://127.0.0.1:4242");
    assert_eq!(loaded.storage.data_dir, Path::new("/tmp/it/data"));
    assert_eq!(loaded.tokens.len(), 1);
    assert_eq!(
        (
            loaded.tokens[0].name.as_str(),
            loaded.tokens[0].token.as_str()
        ),
        ("admin", TOKEN)
    );
    let [infra, apps] = &loaded.repos[..] else {
        panic!("two repos expected: {:?}", loaded.repos);
    };
    assert_eq!(infra.name, "infra");
    assert_eq!(infra.url, "git://127.0.0.1:9/infra.git");
    assert_eq!(infra.provider.as_str(), "git");
    assert_eq!(infra.branch, "main");
    assert_eq!(
        infra.paths,
        [".gantry/pipelines/*.yaml", ".gantry/pipelines/*.yml"]
    );
    assert_eq!(infra.poll_interval, Duration::ZERO);
    assert_eq!(apps.url, "https://example.com/a$${b}/\"q\".git");
    assert_eq!(apps.branch, "release/1");
    assert_eq!(apps.paths, ["ci/*.yaml"]);
    assert_eq!(apps.repo.as_deref(), Some("acme/apps"));
    assert_eq!(apps.poll_interval, Duration::from_secs(1));
    assert_eq!(apps.webhook_secret.as_deref(), Some("whsec-0123456789"));
}
