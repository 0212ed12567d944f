//! The service config file `gantry.toml`: parsing, `${NAME}` substitution and validation into a
//! typed `Config`.
//!
//! The text is parsed into a spanned TOML tree (`toml::de::DeTable`) and walked key by key, so every
//! problem carries the dotted key (`repos[1].poll_interval`) and the line and column it sits at, and
//! all problems of a file are reported together. Environment variables are substituted in string
//! values after parsing, never in the raw text, so a variable's value cannot inject TOML.
//!
//! Tokens and webhook secrets never appear in `Debug` output or in error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::spec::diagnostic::did_you_mean;
use crate::spec::values::parse_duration;

#[cfg(test)]
mod tests;

/// The default address of the HTTP server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default data directory, relative to the config file's directory.
pub const DEFAULT_DATA_DIR: &str = "./gantry-data";
/// The default branch a repository is watched on.
pub const DEFAULT_BRANCH: &str = "main";
/// The default poll interval of a repository.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// API tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The one rule for an API token, wherever it comes from (`[[auth.tokens]]`, or
/// `GANTRY_ADMIN_TOKEN` for `gantry up`): not empty, at least `MIN_TOKEN_LEN` characters. The
/// error completes "token … ".
pub fn check_token(token: &str) -> Result<(), String> {
    let len = token.chars().count();
    if len == 0 {
        return Err("is empty".into());
    }
    if len < MIN_TOKEN_LEN {
        return Err(format!(
            "is too short ({len} characters); use at least {MIN_TOKEN_LEN} random characters, a \
             short token can be guessed"
        ));
    }
    Ok(())
}
/// How long ended runs and webhook delivery bodies are kept by default (30 days).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The newest runs per pipeline kept whatever their age, by default.
pub const DEFAULT_KEEP_RUNS: usize = 20;
/// Source names that are taken by built-in sources.
pub const RESERVED_REPO_NAMES: [&str; 2] = ["local", "file"];

/// A checked `gantry.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    /// `[[auth.tokens]]`: bearer tokens for the API.
    pub tokens: Vec<ApiToken>,
    /// `[[auth.users]]`: people who log in to the pages with a password.
    pub users: Vec<UserAccount>,
    pub repos: Vec<RepoConfig>,
    /// `[executor]`: the executors runs go to.
    pub executors: ExecutorsConfig,
}

/// The executor a run goes to when nothing names one, and the name of the built-in one.
pub const DEFAULT_EXECUTOR: &str = "local";

/// `[executor]`: the executors, by name, and which one runs what nothing else assigns. A repository
/// names its executor (`[[repos]] executor`), a pipeline defined in Gantry its own (`gantry
/// pipeline apply --executor`), everything else goes to `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorsConfig {
    /// `[executor] default`; `local` unless written.
    pub default: String,
    /// `[executor.NAME]` tables. `local`, a local executor with default settings, is always
    /// there unless configured otherwise.
    pub named: BTreeMap<String, ExecutorConfig>,
}

impl Default for ExecutorsConfig {
    fn default() -> ExecutorsConfig {
        ExecutorsConfig {
            default: DEFAULT_EXECUTOR.to_string(),
            named: BTreeMap::from([(
                DEFAULT_EXECUTOR.to_string(),
                ExecutorConfig::Local(LocalExecutorConfig::default()),
            )]),
        }
    }
}

/// One `[executor.NAME]` table, by its `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorConfig {
    /// `kind = "local"` (the default kind): steps run on this machine.
    Local(LocalExecutorConfig),
    /// `kind = "argo"`: runs become Workflows of an Argo Workflows installation.
    Argo(ArgoExecutorConfig),
}

/// `[executor.NAME]` with `kind = "argo"`.
#[derive(Clone, PartialEq, Eq)]
pub struct ArgoExecutorConfig {
    /// `server`: the Argo Server, `https://argo.example:2746`.
    pub server: String,
    /// `kube_api`: the Kubernetes API server, for the run's Secret (default: `server`).
    pub kube_api: String,
    pub namespace: String,
    /// `token` (a service account's bearer token, usually `"${ARGO_TOKEN}"`) or `token_file` (a
    /// file read at every call, such as the pod's projected token, which rotates).
    pub token: ArgoToken,
    /// `kube_token` / `kube_token_file`: the Kubernetes API's, when it is not `token`.
    pub kube_token: Option<ArgoToken>,
    /// `ca_file`: a PEM certificate authority to trust (the cluster's).
    pub ca_file: Option<PathBuf>,
    /// `image`: for steps that name none.
    pub image: Option<String>,
    pub checkout_image: Option<String>,
    pub service_account: Option<String>,
    /// `workspace_size`: the workspace volume claim, e.g. `"1Gi"`.
    pub workspace_size: Option<String>,
}

/// A bearer token of an Argo executor: its value, or a file that holds it.
#[derive(Clone, PartialEq, Eq)]
pub enum ArgoToken {
    Value(String),
    File(PathBuf),
}

impl fmt::Debug for ArgoToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgoToken::Value(_) => f.write_str("Value(***)"),
            ArgoToken::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

impl fmt::Debug for ArgoExecutorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArgoExecutorConfig")
            .field("server", &self.server)
            .field("kube_api", &self.kube_api)
            .field("namespace", &self.namespace)
            .field("token", &self.token)
            .field("kube_token", &self.kube_token)
            .field("ca_file", &self.ca_file)
            .field("image", &self.image)
            .field("checkout_image", &self.checkout_image)
            .field("service_account", &self.service_account)
            .field("workspace_size", &self.workspace_size)
            .finish()
    }
}

/// `[executor.local]`: how the local executor isolates and limits steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalExecutorConfig {
    /// `sandbox = "bubblewrap" | "none"`; bubblewrap unless written otherwise.
    pub sandbox: SandboxMode,
    /// `user`: who steps run as when Gantry is root; `None` is the default (a uid of each run's
    /// own, from `run_uids`).
    pub user: Option<StepUserSpec>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    pub file_size: Option<u64>,
    pub memory: Option<u64>,
    /// The size of the sandbox's memory-backed `/tmp`.
    pub tmp_size: Option<u64>,
    /// Log bytes kept per step and per run.
    pub max_step_log: Option<u64>,
    pub max_run_log: Option<u64>,
    /// Ports of the host's loopback that steps may reach (at the same port of their own
    /// loopback) when their network is on.
    pub host_ports: Vec<u16>,
    /// Per-run limits through control groups.
    pub run_memory: Option<u64>,
    pub run_processes: Option<u64>,
    /// Thousandths of a CPU (`run_cpus = 1.5` is 1500).
    pub run_millicpus: Option<u64>,
    /// Bytes a run's own files may take.
    pub run_disk: Option<u64>,
    /// `run_uids = "FIRST-LAST"` (both included): the uids runs lease one of when Gantry is root.
    /// Which uids may be in it is checked against the machine when the server starts.
    pub run_uids: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    #[default]
    Bubblewrap,
    /// Written explicitly: steps run as Gantry's user, with its view of the machine.
    None,
}

/// `[executor.local] user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepUserSpec {
    /// `"root"`: steps are uid 0 inside the sandbox's user namespace only.
    Root,
    /// `"UID:GID"`.
    Ids { uid: u32, gid: u32 },
    /// A user name, looked up in `/etc/passwd` when the server starts.
    Name(String),
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub listen: SocketAddr,
    /// An http or https URL without a trailing slash; used in links written to forges.
    pub public_url: String,
    /// Webhook deliveries accepted but not processed yet beyond which new ones get a 503 with
    /// `Retry-After` (`max_backlog`).
    pub max_backlog: u64,
    /// Whether `/metrics` answers without a token (`metrics_public`, default false).
    pub metrics_public: bool,
}

/// `[server] max_backlog` when unset.
pub const DEFAULT_MAX_BACKLOG: u64 = 100_000;

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Absolute if the config file's path was; relative paths are resolved against the config
    /// file's directory.
    pub data_dir: PathBuf,
    /// Where run directories live; `None`: a sibling of the data dir.
    pub work_dir: Option<PathBuf>,
    /// sled's page cache in bytes (`cache`); `None`: the store's default (4 MiB).
    pub cache: Option<u64>,
    /// `retention`: ended runs and delivery bodies older than this are pruned; zero keeps them
    /// for ever.
    pub retention: Duration,
    /// `keep_runs`: the newest runs of each pipeline kept whatever their age.
    pub keep_runs: usize,
    /// `min_free`: the free space kept on the data dir's file system; below it no new work is
    /// taken.
    pub min_free: crate::spec::values::MinFree,
}

/// One `[[auth.tokens]]` entry. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub token: String,
    /// `role`: what the token may do everywhere (default `admin`, as before roles existed).
    pub role: Role,
    /// `scopes`: a higher role on one source (`infra`) or one pipeline (`infra/deploy`).
    pub scopes: BTreeMap<String, Role>,
    /// `credentials`: whether it may read connections' credentials (default: only an admin).
    pub credentials: bool,
}

impl ApiToken {
    /// An admin token that may read credentials: what a token was before roles.
    pub fn admin(name: &str, token: &str) -> ApiToken {
        ApiToken {
            name: name.to_string(),
            token: token.to_string(),
            role: Role::Admin,
            scopes: BTreeMap::new(),
            credentials: true,
        }
    }

    /// The role on pipeline `source/name` (the global one raised by a scope of the source or
    /// of the pipeline), or the global one for `None`.
    pub fn role_on(&self, pipeline: Option<(&str, &str)>) -> Role {
        let Some((source, name)) = pipeline else {
            return self.role;
        };
        let mut role = self.role;
        for key in [source.to_string(), format!("{source}/{name}")] {
            if let Some(&r) = self.scopes.get(&key) {
                role = role.max(r);
            }
        }
        role
    }
}

/// One `[[auth.users]]` entry. `Debug` hides the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct UserAccount {
    /// The user's name and what they may do (`token` is empty: users log in with a password).
    pub grant: ApiToken,
    /// The argon2 hash of the password, in PHC form (`$argon2id$v=19$...`).
    pub password_hash: String,
}

impl fmt::Debug for UserAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAccount")
            .field("name", &self.grant.name)
            .field("role", &self.grant.role)
            .field("password_hash", &"***")
            .finish()
    }
}

impl UserAccount {
    /// Whether `password` is the user's (argon2, constant-time in the crate). Slow on purpose:
    /// call it off the async threads.
    pub fn verify(&self, password: &str) -> bool {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(&self.password_hash)
            .map(|hash| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

/// The argon2id hash of `password` in PHC form, with a fresh salt (`gantry hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt)
        .map_err(|e| format!("cannot encode the salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// What a caller may do, each role including the ones before it: a `viewer` reads, a `runner`
/// also starts and cancels runs, an `editor` also changes pipelines defined in Gantry, variables,
/// secrets, connections and marketplace entries, an `admin` also manages sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Runner,
    Editor,
    Admin,
}

impl Role {
    pub const ALL: [(&'static str, Role); 4] = [
        ("viewer", Role::Viewer),
        ("runner", Role::Runner),
        ("editor", Role::Editor),
        ("admin", Role::Admin),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Runner => "runner",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.iter().find(|(n, _)| *n == text).map(|(_, r)| *r)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("token", &"***")
            .finish()
    }
}

/// The forge a repository lives on; `Git` is a plain remote without write-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Github,
    Gitlab,
    Bitbucket,
    Git,
}

impl Provider {
    const NAMES: [&'static str; 4] = ["github", "gitlab", "bitbucket", "git"];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Bitbucket => "bitbucket",
            Provider::Git => "git",
        }
    }

    fn parse(s: &str) -> Option<Provider> {
        match s {
            "github" => Some(Provider::Github),
            "gitlab" => Some(Provider::Gitlab),
            "bitbucket" => Some(Provider::Bitbucket),
            "git" => Some(Provider::Git),
            _ => None,
        }
    }

    /// The public service's API, used when `api_url` is not set.
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            Provider::Github => Some("https://api.github.com"),
            Provider::Gitlab => Some("https://gitlab.com"),
            Provider::Bitbucket => Some("https://api.bitbucket.org/2.0"),
            Provider::Git => None,
        }
    }

    /// The shape of the forge's repository id, for messages.
    fn repo_shape(self) -> &'static str {
        match self {
            Provider::Github => "`owner/repo`",
            Provider::Bitbucket => "`workspace/slug`",
            Provider::Gitlab => "`group/project` or `group/subgroup/.../project`",
            Provider::Git => "nothing",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[repos]]` entry: a watched repository. `Debug` hides the secrets and any credentials in
/// the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// The source name; pipelines are addressed as `<name>/<pipeline>`.
    pub name: String,
    pub url: String,
    pub provider: Provider,
    /// The forge's id of the repository; `None` only for `Provider::Git`.
    pub repo: Option<String>,
    pub branch: String,
    /// Globs of the pipeline files, relative to the repository root.
    pub paths: Vec<String>,
    /// Zero turns polling off (webhooks only).
    pub poll_interval: Duration,
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
    /// The forge's API base URL (GitHub Enterprise, self-hosted GitLab, tests); the public
    /// service's by default.
    pub api_url: Option<String>,
    /// Authenticate to GitHub as an App instead of with `token`.
    pub github_app: Option<GithubApp>,
    /// Globs of the refs whose runs get protected secrets: a bare name is a branch (`main`,
    /// `release/*`), a full ref names any ref (`refs/tags/v*`). Default: the watched branch.
    pub protected: Vec<String>,
    /// The executor its runs go to; `[executor] default` when `None`.
    pub executor: Option<String>,
}

/// A GitHub App's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct GithubApp {
    pub app_id: u64,
    pub private_key_pem: String,
}

impl fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("private_key_pem", &"***")
            .finish()
    }
}

impl fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("RepoConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("provider", &self.provider)
            .field("repo", &self.repo)
            .field("branch", &self.branch)
            .field("paths", &self.paths)
            .field("poll_interval", &self.poll_interval)
            .field("token", &hidden(&self.token))
            .field("webhook_secret", &hidden(&self.webhook_secret))
            .field("api_url", &self.api_url)
            .field("github_app", &self.github_app)
            .field("protected", &self.protected)
            .field("executor", &self.executor)
            .finish()
    }
}

/// Replaces the user info of a `scheme://user:pass@host/...` URL with `***`.
fn redact_url(url: &str) -> String {
    let Some(i) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[i + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..i + 3], &rest[at..]),
        None => url.to_string(),
    }
}

impl Config {
    /// Without an API token anyone who can reach the server could run pipelines, so it may then
    /// only listen on a loopback address.
    pub fn check_listen_safety(&self) -> Result<(), String> {
        let listen = self.server.listen;
        if self.tokens.is_empty() && self.users.is_empty() && !listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {listen} without an API token: anyone who can reach that \
                 address could run pipelines and read their logs; add an [[auth.tokens]] entry or \
                 listen on 127.0.0.1"
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `gantry serve` needs an API token: without one anyone who can reach the API could run
    /// pipelines. `insecure_no_auth` (`--insecure-no-auth`) allows none, and then only on a
    /// loopback address.
    pub fn check_auth(&self, insecure_no_auth: bool) -> Result<(), String> {
        if self.tokens.is_empty() && self.users.is_empty() && !insecure_no_auth {
            return Err(
                "refusing to start without an API token: anyone who can reach the API could run \
                 pipelines and read their logs; add an [[auth.tokens]] entry, or pass \
                 --insecure-no-auth to serve without one on a loopback address"
                    .to_string(),
            );
        }
        self.check_listen_safety()
    }
}

/// One problem in a config file. `line` and `col` are 1-based (col counts characters); both are 0
/// for problems with the file as a whole (it cannot be read). `path` is the dotted key, empty when
/// there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Everything wrong with a config file, in file order. `Display` prints one problem per line as
/// `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as given.
    pub file: PathBuf,
    pub errors: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if p.line > 0 {
                write!(f, ":{}:{}", p.line, p.col)?;
            }
            if !p.path.is_empty() {
                write!(f, ": {}", p.path)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and checks the config file at `path`, substituting variables from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        errors: vec![ConfigProblem {
            path: String::new(),
            line: 0,
            col: 0,
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// Checks config text. `origin` is the file it came from (for messages and to resolve a relative
/// `data_dir`); `env` looks up `${NAME}` references. Pure: no IO.
pub fn parse(
    text: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut c = Checker {
        text,
        env,
        problems: Vec::new(),
    };
    let config = match DeTable::parse(text) {
        Ok(root) => Some(c.config(&root, origin)),
        Err(e) => {
            let start = e.span().map_or(0, |s| s.start);
            c.error("", &(start..start), e.message().to_string());
            None
        }
    };
    match config {
        Some(config) if c.problems.is_empty() => Ok(config),
        _ => {
            let mut errors = c.problems;
            errors.sort_by_key(|p| (p.line, p.col));
            Err(ConfigError {
                file: origin.to_path_buf(),
                errors,
            })
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// Walks the spanned tree, collecting problems.
struct Checker<'a> {
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<ConfigProblem>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Checker<'_> {
    fn error(&mut self, path: &str, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.problems.push(ConfigProblem {
            path: path.to_string(),
            line,
            col,
            message: message.into(),
        });
    }

    fn config(&mut self, root: &Spanned<DeTable<'_>>, origin: &Path) -> Config {
        let table = root.get_ref();
        self.unknown_keys(
            table,
            "",
            &["server", "storage", "auth", "repos", "executor"],
        );

        let server_table = self.table(table, "", "server");
        let server = self.server(server_table);

        let mut cache = None;
        let mut retention = DEFAULT_RETENTION;
        let mut keep_runs = DEFAULT_KEEP_RUNS;
        let mut min_free = crate::spec::values::MinFree::Default;
        let (data_dir, work_dir) = match self.table(table, "", "storage") {
            Some(t) => {
                self.unknown_keys(
                    t,
                    "storage",
                    &[
                        "data_dir",
                        "work_dir",
                        "cache",
                        "retention",
                        "keep_runs",
                        "min_free",
                    ],
                );
                if let Some(v) = t.get("min_free") {
                    let text = match v.get_ref() {
                        DeValue::Integer(i) => Some(i.as_str().replace('_', "")),
                        DeValue::String(s) => Some(s.to_string()),
                        _ => None,
                    };
                    match text
                        .as_deref()
                        .and_then(crate::spec::values::MinFree::parse)
                    {
                        Some(m) => min_free = m,
                        None => self.error(
                            "storage.min_free",
                            &v.span(),
                            "expected a size such as \"1GiB\" or \"512MiB\", a number of \
                             bytes (0 turns the reserve off), or a percentage such as \"5%\"",
                        ),
                    }
                }
                cache = self.size(t, "storage", "cache");
                if let Some((r, span)) = self.string(t, "storage", "retention") {
                    match parse_retention(&r) {
                        Ok(d) => retention = d,
                        Err(m) => self.error("storage.retention", &span, m),
                    }
                }
                if let Some(v) = t.get("keep_runs") {
                    match v.get_ref() {
                        DeValue::Integer(i) => match i.as_str().parse::<usize>() {
                            Ok(n) => keep_runs = n,
                            Err(_) => self.error(
                                "storage.keep_runs",
                                &v.span(),
                                "must be a whole number of runs, 0 or more",
                            ),
                        },
                        other => self.error(
                            "storage.keep_runs",
                            &v.span(),
                            format!("expected an integer, found {}", other.type_str()),
                        ),
                    }
                }
                let dir = |checker: &mut Self, key: &str| match checker.string(t, "storage", key) {
                    Some((d, span)) if d.is_empty() => {
                        checker.error(&join("storage", key), &span, "must not be empty");
                        None
                    }
                    d => d.map(|(d, _)| d),
                };
                (dir(self, "data_dir"), dir(self, "work_dir"))
            }
            None => (None, None),
        };
        let data_dir = resolve(
            origin,
            Path::new(data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
        );
        let work_dir = work_dir.map(|w| resolve(origin, Path::new(&w)));
        let executors = match self.table(table, "", "executor") {
            Some(t) => self.executors(t),
            None => ExecutorsConfig::default(),
        };

        let mut tokens = Vec::new();
        let mut names = Vec::new();
        let mut users = Vec::new();
        if let Some(auth) = self.table(table, "", "auth") {
            self.unknown_keys(auth, "auth", &["tokens", "users"]);
            for (i, item) in self.tables(auth, "auth", "tokens") {
                tokens.extend(self.token(&format!("auth.tokens[{i}]"), item, &mut names));
            }
            for (i, item) in self.tables(auth, "auth", "users") {
                users.extend(self.user(&format!("auth.users[{i}]"), item, &mut names));
            }
        }

        let mut repos = Vec::new();
        let mut names = Vec::new();
        for (i, item) in self.tables(table, "", "repos") {
            repos.extend(self.repo(&format!("repos[{i}]"), item, &mut names, &executors));
        }
        Config {
            server,
            storage: Storage {
                data_dir,
                work_dir,
                cache,
                retention,
                keep_runs,
                min_free,
            },
            tokens,
            users,
            repos,
            executors,
        }
    }

    /// `[executor]`: `default`, and a table per executor.
    fn executors(&mut self, t: &DeTable<'_>) -> ExecutorsConfig {
        let mut named = BTreeMap::new();
        for (name, value) in t.iter() {
            let name = name.get_ref().to_string();
            if name == "default" {
                continue;
            }
            let path = join("executor", &name);
            if let Err(m) = check_executor_name(&name) {
                self.error(&path, &value.span(), m);
                continue;
            }
            let Some(table) = value.get_ref().as_table() else {
                self.error(
                    &path,
                    &value.span(),
                    format!(
                        "expected a table `[executor.{name}]`, found {}",
                        value.get_ref().type_str()
                    ),
                );
                continue;
            };
            let kind = match self.string(table, &path, "kind") {
                Some((kind, span)) => match kind.as_str() {
                    "local" => Some("local"),
                    "argo" => Some("argo"),
                    other => {
                        self.error(
                            &join(&path, "kind"),
                            &span,
                            format!("unknown executor kind `{other}`: expected `local` or `argo`"),
                        );
                        None
                    }
                },
                None => Some("local"),
            };
            match kind {
                Some("local") => {
                    let local = self.local_executor(table, &path);
                    named.insert(name, ExecutorConfig::Local(local));
                }
                Some(_) => {
                    if let Some(argo) = self.argo_executor(table, value.span(), &path) {
                        named.insert(name, ExecutorConfig::Argo(argo));
                    }
                }
                None => {}
            }
        }
        named
            .entry(DEFAULT_EXECUTOR.to_string())
            .or_insert_with(|| ExecutorConfig::Local(LocalExecutorConfig::default()));
        let default = match self.string(t, "executor", "default") {
            Some((d, span)) => {
                if !named.contains_key(&d) {
                    let message = unknown_executor(&d, &named);
                    self.error("executor.default", &span, message);
                }
                d
            }
            None => DEFAULT_EXECUTOR.to_string(),
        };
        ExecutorsConfig { default, named }
    }

    fn argo_executor(
        &mut self,
        t: &DeTable<'_>,
        header: Range<usize>,
        path: &str,
    ) -> Option<ArgoExecutorConfig> {
        self.unknown_keys(
            t,
            path,
            &[
                "kind",
                "server",
                "kube_api",
                "namespace",
                "token",
                "token_file",
                "kube_token",
                "kube_token_file",
                "ca_file",
                "image",
                "checkout_image",
                "service_account",
                "workspace_size",
            ],
        );
        let url = |c: &mut Self, key: &str, required: bool| {
            let found = if required {
                c.required_string(t, header.clone(), path, key)
            } else {
                c.string(t, path, key)
            };
            let (u, span) = found?;
            let shape = (u.starts_with("https://") || u.starts_with("http://"))
                && !u.chars().any(char::is_whitespace);
            if !shape {
                c.error(
                    &join(path, key),
                    &span,
                    "must be an http:// or https:// URL",
                );
                return None;
            }
            Some(u.trim_end_matches('/').to_string())
        };
        let server = url(self, "server", true);
        let kube_api = url(self, "kube_api", false);
        let namespace = self.required_string(t, header.clone(), path, "namespace");
        let token_of = |c: &mut Self, key: &str, file_key: &str, required: bool| {
            let value = c.string(t, path, key);
            let file = c.string(t, path, file_key);
            match (value, file) {
                (Some((v, span)), None) if v.is_empty() => {
                    c.error(
                        &join(path, key),
                        &span,
                        "is empty; set a value or remove the key",
                    );
                    Err(())
                }
                (Some((v, _)), None) => Ok(Some(ArgoToken::Value(v))),
                (None, Some((f, _))) => Ok(Some(ArgoToken::File(PathBuf::from(f)))),
                (Some(_), Some((_, span))) => {
                    c.error(
                        &join(path, file_key),
                        &span,
                        format!("give `{key}` or `{file_key}`, not both"),
                    );
                    Err(())
                }
                (None, None) if required => {
                    c.error(
                        &join(path, key),
                        &header,
                        format!("missing key `{key}` (or `{file_key}`)"),
                    );
                    Err(())
                }
                (None, None) => Ok(None),
            }
        };
        let token = token_of(self, "token", "token_file", true);
        let kube_token = token_of(self, "kube_token", "kube_token_file", false);
        let ca_file = self
            .string(t, path, "ca_file")
            .map(|(f, _)| PathBuf::from(f));
        let mut optional = |key: &str| self.string(t, path, key).map(|(v, _)| v);
        let image = optional("image");
        let checkout_image = optional("checkout_image");
        let service_account = optional("service_account");
        let workspace_size = optional("workspace_size");
        let server = server?;
        Some(ArgoExecutorConfig {
            kube_api: kube_api.unwrap_or_else(|| server.clone()),
            server,
            namespace: namespace?.0,
            token: token.ok().flatten()?,
            kube_token: kube_token.ok()?,
            ca_file,
            image,
            checkout_image,
            service_account,
            workspace_size,
        })
    }

    fn local_executor(&mut self, t: &DeTable<'_>, path: &str) -> LocalExecutorConfig {
        let p = path;
        self.unknown_keys(
            t,
            p,
            &[
                "kind",
                "sandbox",
                "user",
                "open_files",
                "processes",
                "file_size",
                "memory",
                "tmp_size",
                "max_step_log",
                "max_run_log",
                "host_ports",
                "run_memory",
                "run_processes",
                "run_cpus",
                "run_disk",
                "run_uids",
            ],
        );
        let mut c = LocalExecutorConfig::default();
        if let Some((mode, span)) = self.string(t, p, "sandbox") {
            match mode.as_str() {
                "bubblewrap" => c.sandbox = SandboxMode::Bubblewrap,
                "none" => c.sandbox = SandboxMode::None,
                other => self.error(
                    &join(p, "sandbox"),
                    &span,
                    format!("unknown sandbox `{other}`: expected `bubblewrap` or `none`"),
                ),
            }
        }
        if let Some((range, span)) = self.string(t, p, "run_uids") {
            let parsed = range.split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
            });
            match parsed {
                Some((first, last)) if first <= last => c.run_uids = Some((first, last)),
                _ => self.error(
                    &join(p, "run_uids"),
                    &span,
                    format!(
                        "expected `FIRST-LAST`, two uids with the first not above the last (such as \"1879048192-1879113727\"), found `{range}`"
                    ),
                ),
            }
        }
        if let Some((user, span)) = self.string(t, p, "user") {
            c.user = match parse_step_user(&user) {
                Ok(u) => Some(u),
                Err(m) => {
                    self.error(&join(p, "user"), &span, m);
                    None
                }
            };
        }
        c.open_files = self.count(t, p, "open_files");
        c.processes = self.count(t, p, "processes");
        c.file_size = self.size(t, p, "file_size");
        c.memory = self.size(t, p, "memory");
        c.tmp_size = self.size(t, p, "tmp_size");
        c.max_step_log = self.size(t, p, "max_step_log");
        c.max_run_log = self.size(t, p, "max_run_log");
        c.host_ports = self.ports(t, p, "host_ports");
        c.run_memory = self.size(t, p, "run_memory");
        c.run_processes = self.count(t, p, "run_processes");
        c.run_disk = self.size(t, p, "run_disk");
        if let Some(v) = t.get("run_cpus") {
            let cpus = match v.get_ref() {
                DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
                DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                _ => None,
            };
            match cpus.filter(|n| n.is_finite() && *n >= 0.01) {
                Some(n) => c.run_millicpus = Some((n * 1000.0).round() as u64),
                None => self.error(
                    &join(p, "run_cpus"),
                    &v.span(),
                    "expected a number of CPUs such as 1 or 1.5".to_string(),
                ),
            }
        }
        c
    }

    /// An array of TCP ports (1–65535) at `key`.
    fn ports(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Vec<u16> {
        let Some((items, _)) = self.array(table, prefix, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let port = match item.get_ref() {
                DeValue::Integer(n) => u16::from_str_radix(&n.as_str().replace('_', ""), n.radix())
                    .ok()
                    .filter(|&p| p > 0),
                _ => None,
            };
            match port {
                Some(p) if !out.contains(&p) => out.push(p),
                Some(_) => {}
                None => self.error(
                    &format!("{}[{i}]", join(prefix, key)),
                    &item.span(),
                    "expected a port number from 1 to 65535".to_string(),
                ),
            }
        }
        out
    }

    /// A positive integer at `key`.
    fn count(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<u64> {
        let v = table.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .filter(|&n| n > 0),
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                &join(prefix, key),
                &v.span(),
                format!(
                    "expected a positive integer, found {}",
                    v.get_ref().type_str()
                ),
            );
        }
        parsed
    }

    /// A size at `key`: an integer of bytes, or a string such as `"16MiB"`.
    fn size(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<u64> {
        let v = table.get(key)?;
        if let DeValue::Integer(_) = v.get_ref() {
            return self.count(table, prefix, key);
        }
        let (text, span) = self.string(table, prefix, key)?;
        match crate::spec::values::parse_size(&text) {
            Some(n) if n > 0 => Some(n),
            _ => {
                self.error(
                    &join(prefix, key),
                    &span,
                    format!("invalid size `{text}`: write bytes, or a number with KiB, MiB or GiB, such as `16MiB`"),
                );
                None
            }
        }
    }

    fn server(&mut self, table: Option<&DeTable<'_>>) -> Server {
        let default_listen: SocketAddr = DEFAULT_LISTEN.parse().expect("valid default address");
        let Some(t) = table else {
            return Server {
                listen: default_listen,
                public_url: format!("http://{default_listen}"),
                max_backlog: DEFAULT_MAX_BACKLOG,
                metrics_public: false,
            };
        };
        self.unknown_keys(
            t,
            "server",
            &["listen", "public_url", "max_backlog", "metrics_public"],
        );
        let metrics_public = match t.get("metrics_public") {
            None => false,
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => *b,
                other => {
                    self.error(
                        "server.metrics_public",
                        &v.span(),
                        format!("expected true or false, found {}", other.type_str()),
                    );
                    false
                }
            },
        };
        let max_backlog = self
            .count(t, "server", "max_backlog")
            .unwrap_or(DEFAULT_MAX_BACKLOG);
        let listen = match self.string(t, "server", "listen") {
            Some((s, span)) => match s.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.error(
                        "server.listen",
                        &span,
                        format!(
                            "invalid listen address `{s}`: expected an IP address and a port, \
                             such as `127.0.0.1:8080` or `[::1]:8080`"
                        ),
                    );
                    default_listen
                }
            },
            None => default_listen,
        };
        let public_url = match self.string(t, "server", "public_url") {
            Some((s, span)) => {
                let trimmed = s.trim_end_matches('/');
                let host = trimmed
                    .strip_prefix("https://")
                    .or_else(|| trimmed.strip_prefix("http://"));
                match host {
                    Some(h) if !h.is_empty() && !h.starts_with('/') && !h.contains(' ') => {
                        trimmed.to_string()
                    }
                    _ => {
                        self.error(
                            "server.public_url",
                            &span,
                            format!(
                                "invalid public URL `{}`: expected an http:// or https:// URL, \
                                 such as `https://gantry.example.com`",
                                redact_url(&s)
                            ),
                        );
                        String::new()
                    }
                }
            }
            None => format!("http://{listen}"),
        };
        Server {
            listen,
            public_url,
            max_backlog,
            metrics_public,
        }
    }

    /// The `name` of a token or user entry: not empty, not one of `seen` (token and user
    /// names alike, which it joins).
    fn entry_name(
        &mut self,
        table: &DeTable<'_>,
        t: &Value<'_>,
        path: &str,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        let (name, name_span) = self.required_string(table, t.span(), path, "name")?;
        if name.is_empty() {
            self.error(&join(path, "name"), &name_span, "must not be empty");
            return None;
        }
        if seen.contains(&name) {
            self.error(
                &join(path, "name"),
                &name_span,
                format!("duplicate name `{name}`; token and user names must be unique"),
            );
            return None;
        }
        seen.push(name.clone());
        Some(name)
    }

    /// `seen` collects the names of the entries checked so far, to report duplicates.
    fn token(&mut self, path: &str, t: &Value<'_>, seen: &mut Vec<String>) -> Option<ApiToken> {
        let table = t.get_ref().as_table()?;
        self.unknown_keys(
            table,
            path,
            &["name", "token", "role", "scopes", "credentials"],
        );
        let name = self.entry_name(table, t, path, seen);
        let token = self.required_string(table, t.span(), path, "token");
        let name = name?;
        let (token, token_span) = token?;
        if let Err(problem) = check_token(&token) {
            self.error(
                &join(path, "token"),
                &token_span,
                format!("token of [[auth.tokens]] `{name}` {problem}"),
            );
            return None;
        }
        let (role, scopes, credentials) = self.grant(table, path)?;
        Some(ApiToken {
            name,
            token,
            role,
            scopes,
            credentials,
        })
    }

    /// `role`, `scopes` and `credentials` of a token or user entry.
    fn grant(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
    ) -> Option<(Role, BTreeMap<String, Role>, bool)> {
        let role = match self.string(table, path, "role") {
            None => Role::Admin,
            Some((text, span)) => match Role::parse(&text) {
                Some(role) => role,
                None => {
                    self.error(
                        &join(path, "role"),
                        &span,
                        format!("unknown role `{text}`: expected viewer, runner, editor or admin"),
                    );
                    return None;
                }
            },
        };
        let mut scopes = BTreeMap::new();
        if let Some(v) = table.get("scopes") {
            let scopes_path = join(path, "scopes");
            match v.get_ref().as_table() {
                Some(entries) => {
                    for (key, value) in entries.iter() {
                        let key = key.get_ref().to_string();
                        let entry_path = join(&scopes_path, &key);
                        let Some(text) = self.as_string(&entry_path, value) else {
                            continue;
                        };
                        let parts: Vec<&str> = key.split('/').collect();
                        if key.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                            self.error(
                                &entry_path,
                                &value.span(),
                                format!("`{key}` is neither a source (`infra`) nor a pipeline (`infra/deploy`)"),
                            );
                            continue;
                        }
                        match Role::parse(&text) {
                            Some(r) => {
                                scopes.insert(key, r);
                            }
                            None => self.error(
                                &entry_path,
                                &value.span(),
                                format!("unknown role `{text}`: expected viewer, runner, editor or admin"),
                            ),
                        }
                    }
                }
                None => self.error(
                    &scopes_path,
                    &v.span(),
                    format!(
                        "expected a table such as {{ infra = \"editor\" }}, found {}",
                        v.get_ref().type_str()
                    ),
                ),
            }
        }
        let credentials = match table.get("credentials") {
            None => role == Role::Admin,
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => *b,
                other => {
                    self.error(
                        &join(path, "credentials"),
                        &v.span(),
                        format!("expected true or false, found {}", other.type_str()),
                    );
                    false
                }
            },
        };
        Some((role, scopes, credentials))
    }

    /// One `[[auth.users]]` entry: a person who logs in to the pages with a password, whose
    /// argon2 hash (`gantry hash-password`) the config holds. `seen` holds token and user names.
    fn user(&mut self, path: &str, t: &Value<'_>, seen: &mut Vec<String>) -> Option<UserAccount> {
        let table = t.get_ref().as_table()?;
        self.unknown_keys(
            table,
            path,
            &["name", "password_hash", "role", "scopes", "credentials"],
        );
        let name = self.entry_name(table, t, path, seen);
        let hash = self.required_string(table, t.span(), path, "password_hash");
        let name = name?;
        let (hash, hash_span) = hash?;
        if let Err(e) = argon2::PasswordHash::new(&hash) {
            self.error(
                &join(path, "password_hash"),
                &hash_span,
                format!(
                    "is not a password hash ({e}); make one with `gantry hash-password` (the \
                     password on stdin)"
                ),
            );
            return None;
        }
        let (role, scopes, credentials) = self.grant(table, path)?;
        Some(UserAccount {
            grant: ApiToken {
                name,
                token: String::new(),
                role,
                scopes,
                credentials,
            },
            password_hash: hash,
        })
    }

    /// `seen` collects the names of the entries checked so far, to report duplicates.
    fn repo(
        &mut self,
        path: &str,
        item: &Value<'_>,
        seen: &mut Vec<String>,
        executors: &ExecutorsConfig,
    ) -> Option<RepoConfig> {
        let table = item.get_ref().as_table()?;
        let header = item.span();
        self.unknown_keys(
            table,
            path,
            &[
                "name",
                "url",
                "provider",
                "repo",
                "branch",
                "paths",
                "poll_interval",
                "token",
                "webhook_secret",
                "api_url",
                "github_app_id",
                "github_private_key",
                "protected",
                "executor",
            ],
        );
        let mut ok = true;

        let executor = match self.string(table, path, "executor") {
            Some((e, span)) => {
                if !executors.named.contains_key(&e) {
                    let message = unknown_executor(&e, &executors.named);
                    self.error(&join(path, "executor"), &span, message);
                    ok = false;
                }
                Some(e)
            }
            None => None,
        };

        let name = match self.required_string(table, header.clone(), path, "name") {
            Some((name, span)) => {
                if let Err(m) = check_repo_name(&name) {
                    self.error(&join(path, "name"), &span, m);
                    ok = false;
                } else if seen.contains(&name) {
                    self.error(
                        &join(path, "name"),
                        &span,
                        format!("duplicate repository name `{name}`; source names must be unique"),
                    );
                    ok = false;
                } else {
                    seen.push(name.clone());
                }
                Some(name)
            }
            None => None,
        };

        let url = match self.required_string(table, header.clone(), path, "url") {
            Some((url, span)) => {
                if let Err(m) = check_url(&url) {
                    self.error(&join(path, "url"), &span, m);
                    ok = false;
                }
                Some(url)
            }
            None => None,
        };

        let provider = match self.required_string(table, header.clone(), path, "provider") {
            Some((p, span)) => match Provider::parse(&p) {
                Some(p) => Some(p),
                None => {
                    let mut m = format!(
                        "unknown provider `{p}`; expected github, gitlab, bitbucket or git"
                    );
                    if let Some(s) = did_you_mean(&p, Provider::NAMES) {
                        m.push_str(&format!(" (did you mean `{s}`?)"));
                    }
                    self.error(&join(path, "provider"), &span, m);
                    None
                }
            },
            None => None,
        };

        let repo = self.string(table, path, "repo");
        if let Some(provider) = provider {
            match &repo {
                Some((r, span)) if provider != Provider::Git && !repo_shape_ok(provider, r) => {
                    self.error(
                        &join(path, "repo"),
                        span,
                        format!(
                            "`{r}` is not a {provider} repository id; expected {}",
                            provider.repo_shape()
                        ),
                    );
                    ok = false;
                }
                None if provider != Provider::Git => {
                    self.error(
                        &join(path, "repo"),
                        &header,
                        format!(
                            "missing key `repo`: provider {provider} needs the forge's repository \
                             id ({}) for webhooks and write-back",
                            provider.repo_shape()
                        ),
                    );
                    ok = false;
                }
                _ => {}
            }
        }

        let branch = match self.string(table, path, "branch") {
            Some((b, span)) => {
                if b.is_empty() || b.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    self.error(
                        &join(path, "branch"),
                        &span,
                        "must be a branch name, not empty and without spaces",
                    );
                    ok = false;
                }
                b
            }
            None => DEFAULT_BRANCH.to_string(),
        };

        let paths = match self.array(table, path, "paths") {
            Some((items, span)) => {
                if items.is_empty() {
                    self.error(
                        &join(path, "paths"),
                        &span,
                        "must list at least one glob of pipeline files",
                    );
                    ok = false;
                }
                let mut paths = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{}[{i}]", join(path, "paths"));
                    match self.as_string(&item_path, item) {
                        Some(g) => {
                            if let Err(e) = globset::Glob::new(&g) {
                                self.error(&item_path, &item.span(), format!("invalid glob: {e}"));
                                ok = false;
                            }
                            paths.push(g);
                        }
                        None => ok = false,
                    }
                }
                paths
            }
            None => crate::spec::model::DEFAULT_PIPELINE_GLOBS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };

        let protected = match self.array(table, path, "protected") {
            Some((items, _)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{}[{i}]", join(path, "protected"));
                    match self.as_string(&item_path, item) {
                        Some(g) => {
                            if let Err(m) = check_ref_glob(&g) {
                                self.error(&item_path, &item.span(), m);
                                ok = false;
                            }
                            out.push(g);
                        }
                        None => ok = false,
                    }
                }
                out
            }
            None => vec![branch.clone()],
        };

        let poll_interval = match self.string(table, path, "poll_interval") {
            Some((s, span)) => match parse_duration(&s) {
                Ok(d) => d,
                Err(m) => {
                    self.error(&join(path, "poll_interval"), &span, m);
                    ok = false;
                    DEFAULT_POLL_INTERVAL
                }
            },
            None => DEFAULT_POLL_INTERVAL,
        };

        let label = name.as_deref().unwrap_or("?");
        let mut secret = |c: &mut Self, key: &str| match c.string(table, path, key) {
            Some((s, span)) if s.is_empty() => {
                c.error(
                    &join(path, key),
                    &span,
                    format!("{key} of [[repos]] `{label}` is empty; set a value or remove the key"),
                );
                ok = false;
                None
            }
            s => s.map(|(s, _)| s),
        };
        let token = secret(self, "token");
        let webhook_secret = secret(self, "webhook_secret");
        let private_key = secret(self, "github_private_key");

        let api_url = match self.string(table, path, "api_url") {
            Some((u, span)) => {
                let shape = (u.starts_with("https://") || u.starts_with("http://"))
                    && !u.chars().any(char::is_whitespace);
                if !shape {
                    self.error(
                        &join(path, "api_url"),
                        &span,
                        "must be an http:// or https:// URL of the forge's API",
                    );
                    ok = false;
                }
                Some(u.trim_end_matches('/').to_string())
            }
            None => provider.and_then(|p| p.default_api_url().map(str::to_string)),
        };

        let app_id = match self.string(table, path, "github_app_id") {
            Some((id, span)) => match id.parse::<u64>() {
                Ok(n) if provider == Some(Provider::Github) => Some(n),
                Ok(_) => {
                    self.error(
                        &join(path, "github_app_id"),
                        &span,
                        "github_app_id applies to provider github only",
                    );
                    ok = false;
                    None
                }
                Err(_) => {
                    self.error(
                        &join(path, "github_app_id"),
                        &span,
                        format!("`{id}` is not a GitHub App id (a number, as a string)"),
                    );
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let github_app = match (app_id, private_key) {
            (Some(app_id), Some(private_key_pem)) => Some(GithubApp {
                app_id,
                private_key_pem,
            }),
            (None, None) => None,
            _ => {
                self.error(
                    path,
                    &header,
                    "a GitHub App needs both github_app_id and github_private_key (the PEM text, \
                     e.g. \"${GITHUB_APP_KEY}\")",
                );
                ok = false;
                None
            }
        };

        Some(RepoConfig {
            name: name?,
            url: url?,
            provider: provider?,
            repo: repo.map(|(r, _)| r),
            branch,
            paths,
            poll_interval,
            token,
            webhook_secret,
            api_url,
            github_app,
            protected,
            executor,
        })
        .filter(|_| ok)
    }

    /// Reports every key of `table` that is not in `allowed`, with a suggestion.
    fn unknown_keys(&mut self, table: &DeTable<'_>, prefix: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let mut m = format!("unknown key `{name}`; expected {}", allowed.join(", "));
            if let Some(s) = did_you_mean(name, allowed.iter().copied()) {
                m.push_str(&format!(" (did you mean `{s}`?)"));
            }
            self.error(&join(prefix, name), &key.span(), m);
        }
    }

    /// The table at `key`, if present and a table (a wrong type is reported).
    fn table<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        prefix: &str,
        key: &str,
    ) -> Option<&'t DeTable<'i>> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    &join(prefix, key),
                    &v.span(),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// The array at `key`, if present and an array, with its span.
    fn array<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        prefix: &str,
        key: &str,
    ) -> Option<(&'t [Value<'i>], Range<usize>)> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some((a, v.span())),
            other => {
                self.error(
                    &join(prefix, key),
                    &v.span(),
                    format!("expected an array, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// The tables of an array of tables at `key`, numbered; other items are reported.
    fn tables<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        prefix: &str,
        key: &str,
    ) -> Vec<(usize, &'t Value<'i>)> {
        let Some((items, _)) = self.array(table, prefix, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item.get_ref().is_table() {
                out.push((i, item));
            } else {
                self.error(
                    &format!("{}[{i}]", join(prefix, key)),
                    &item.span(),
                    format!("expected a table, found {}", item.get_ref().type_str()),
                );
            }
        }
        out
    }

    /// The string at `key` with variables substituted, if present and valid.
    fn string(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
    ) -> Option<(String, Range<usize>)> {
        let v = table.get(key)?;
        let s = self.as_string(&join(prefix, key), v)?;
        Some((s, v.span()))
    }

    /// Like `string`, but a missing key is reported at `header` (the table's span).
    fn required_string(
        &mut self,
        table: &DeTable<'_>,
        header: Range<usize>,
        prefix: &str,
        key: &str,
    ) -> Option<(String, Range<usize>)> {
        if table.get(key).is_none() {
            self.error(&join(prefix, key), &header, format!("missing key `{key}`"));
            return None;
        }
        self.string(table, prefix, key)
    }

    /// A string value with variables substituted. Never quotes the value in a message.
    fn as_string(&mut self, path: &str, v: &Value<'_>) -> Option<String> {
        let DeValue::String(raw) = v.get_ref() else {
            self.error(
                path,
                &v.span(),
                format!("expected a string, found {}", v.get_ref().type_str()),
            );
            return None;
        };
        match substitute(raw, self.env) {
            Ok(s) => Some(s),
            Err(m) => {
                self.error(path, &v.span(), m);
                None
            }
        }
    }
}

/// `[executor.local] user`: `root`, `UID:GID`, or a user name.
fn parse_step_user(text: &str) -> Result<StepUserSpec, String> {
    if text == "root" {
        return Ok(StepUserSpec::Root);
    }
    if let Some((uid, gid)) = text.split_once(':') {
        return match (uid.parse::<u32>(), gid.parse::<u32>()) {
            (Ok(uid), Ok(gid)) if uid != 0 => Ok(StepUserSpec::Ids { uid, gid }),
            (Ok(0), _) => Err("uid 0 is root: write `user = \"root\"` to run steps as root".into()),
            _ => Err(format!(
                "invalid user `{text}`: expected a name, `UID:GID` or `root`"
            )),
        };
    }
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(StepUserSpec::Name(text.to_string()))
    } else {
        Err(format!(
            "invalid user `{text}`: expected a name, `UID:GID` or `root`"
        ))
    }
}

/// Replaces `${NAME}` with the variable's value; `$${` stands for a literal `${`. Values are not
/// scanned again.
fn substitute(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let at = &rest[i..];
        if let Some(tail) = at.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = at.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err("unclosed `${`; write `$${` for a literal `${`".to_string());
            };
            let name = &tail[..end];
            if !is_var_name(name) {
                return Err(format!(
                    "invalid environment variable name `{name}` in `${{...}}`; write `$${{` for a \
                     literal `${{`"
                ));
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => return Err(format!("undefined environment variable `{name}`")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &at[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`.
fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A retention age: a whole number of days (`30d`), or a duration (`12h`, `90m`); `0s` or `0d`
/// keeps everything.
fn parse_retention(s: &str) -> Result<Duration, String> {
    if let Some(days) = s.strip_suffix('d') {
        return days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(24 * 3600))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                format!("invalid retention `{s}`: expected days such as `30d`, or a duration such as `12h`")
            });
    }
    parse_duration(s).map_err(|_| {
        format!("invalid retention `{s}`: expected days such as `30d`, or a duration such as `12h`")
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// `path` resolved against the directory of `origin`, without `.` components.
fn resolve(origin: &Path, path: &Path) -> PathBuf {
    let base = origin.parent().unwrap_or(Path::new(""));
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let cleaned: PathBuf = joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if cleaned.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        cleaned
    }
}

/// `^[a-z][a-z0-9-]{0,62}$`, not reserved.
/// An executor's name: what `[[repos]] executor`, `[executor] default` and runs use.
pub fn check_executor_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let shape = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63;
    if shape {
        Ok(())
    } else {
        Err(format!(
            "invalid executor name `{name}`: use 1 to 63 lowercase letters, digits and `-`, \
             starting with a letter"
        ))
    }
}

/// "no executor `x`", with a suggestion or the names there are.
fn unknown_executor(name: &str, named: &BTreeMap<String, ExecutorConfig>) -> String {
    let known: Vec<&str> = named.keys().map(String::as_str).collect();
    match did_you_mean(name, known.iter().copied()) {
        Some(s) => format!("no executor `{name}`; did you mean `{s}`?"),
        None => format!(
            "no executor `{name}`; the executors are {} (tables `[executor.NAME]`)",
            known.join(", ")
        ),
    }
}

fn check_repo_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let shape = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63;
    if !shape {
        return Err(format!(
            "invalid repository name `{name}`: use 1 to 63 lowercase letters, digits and `-`, \
             starting with a letter"
        ));
    }
    if RESERVED_REPO_NAMES.contains(&name) {
        return Err(format!(
            "repository name `{name}` is reserved for a built-in source; choose another name"
        ));
    }
    Ok(())
}

/// A `protected` entry: a branch glob (`main`, `release/*`) or a glob of full refs
/// (`refs/tags/v*`), not empty, without spaces, and a glob globset accepts.
fn check_ref_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() || glob.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "must be a branch or ref glob such as `main`, `release/*` or `refs/tags/v*`, not \
             empty and without spaces"
                .into(),
        );
    }
    globset::Glob::new(glob)
        .map(|_| ())
        .map_err(|e| format!("invalid glob: {e}"))
}

/// https, http, git, ssh and file URLs, or scp-like `user@host:path`. Never quotes the URL, which
/// may hold credentials.
fn check_url(url: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected an https://, http://, git://, ssh:// or file:// URL, or \
                            git@host:path";
    if let Some(i) = url.find("://") {
        let scheme = &url[..i];
        let rest = &url[i + 3..];
        if !["https", "http", "git", "ssh", "file"].contains(&scheme) {
            return Err(format!("unsupported URL scheme `{scheme}`; {EXPECTED}"));
        }
        if rest.is_empty() || rest.chars().any(char::is_whitespace) {
            return Err(format!("incomplete {scheme} URL; {EXPECTED}"));
        }
        return Ok(());
    }
    // scp-like: user@host:path
    let scp = url.split_once('@').and_then(|(user, rest)| {
        let (host, path) = rest.split_once(':')?;
        let ok = !user.is_empty()
            && !host.is_empty()
            && !path.is_empty()
            && !host.contains('/')
            && !url.chars().any(char::is_whitespace);
        ok.then_some(())
    });
    match scp {
        Some(()) => Ok(()),
        None => Err(format!("not a repository URL; {EXPECTED}")),
    }
}

/// github and bitbucket: `owner/name`; gitlab: `group[/subgroup...]/project`.
fn repo_shape_ok(provider: Provider, repo: &str) -> bool {
    let segments: Vec<&str> = repo.split('/').collect();
    let segment_ok = |s: &&str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !segments.iter().all(segment_ok) {
        return false;
    }
    match provider {
        Provider::Github | Provider::Bitbucket => segments.len() == 2,
        Provider::Gitlab => segments.len() >= 2,
        Provider::Git => true,
    }
}
