//! `gantry serve --config FILE` and `gantry up`, the one-command demo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::demo_postgres::{self, DemoPostgres};
use super::exit;
use crate::config::{ApiToken, Config, Provider, RepoConfig, Server, Storage};
use crate::server::{self, Options};
use crate::store::SecretRelease;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service config (see README: gantry.toml)
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Serve without [[auth.tokens]]: anyone who can reach the address may use the API, so only
    /// a loopback address is allowed
    #[arg(long)]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub knobs: Knobs,
}

#[derive(Debug, clap::Args)]
pub struct Knobs {
    /// Runs executing at once, over all pipelines (more wait in the queue)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_running: u16,
    /// After SIGTERM, how long running runs may take to finish before they are stopped and
    /// marked interrupted
    #[arg(long, default_value = "30s", value_parser = crate::spec::values::parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// The repository layout to serve as the demo repository (default: examples/repo-layout)
    #[arg(long, value_name = "DIR")]
    pub example: Option<PathBuf>,
    #[command(flatten)]
    pub knobs: Knobs,
}

fn options(knobs: &Knobs) -> Options {
    Options {
        max_running: usize::from(knobs.max_running),
        shutdown_grace: knobs.shutdown_grace,
        announce: true,
        insecure_no_auth: false,
    }
}

fn serve_config(config: Config, options: Options) -> u8 {
    server::bound_allocator_arenas();
    let runtime = match crate::cli::multi_thread_runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(server::serve(config, options, CancellationToken::new())) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("gantry: {e}");
            exit::FAILURE
        }
    }
}

pub fn serve(args: &ServeArgs) -> u8 {
    let config = match crate::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::USAGE;
        }
    };
    let options = Options {
        insecure_no_auth: args.insecure_no_auth,
        ..options(&args.knobs)
    };
    serve_config(config, options)
}

/// Runs git for `gantry up` with a fixed identity, so it works on a machine with no git config.
fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_AUTHOR_NAME", "Gantry demo")
        .env("GIT_AUTHOR_EMAIL", "demo@gantry.invalid")
        .env("GIT_COMMITTER_NAME", "Gantry demo")
        .env("GIT_COMMITTER_EMAIL", "demo@gantry.invalid")
        .output()
        .map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if kind.is_dir() {
            copy_tree(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target)
                .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// The example layout: `--example`, else `examples/repo-layout` here or in the source tree this
/// binary was built from.
fn example_dir(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let candidates = [
        PathBuf::from("examples/repo-layout"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout"),
    ];
    candidates
        .into_iter()
        .find(|d| d.join(".gantry").is_dir())
        .ok_or_else(|| {
            "cannot find examples/repo-layout; run from Gantry's source tree or pass --example DIR"
                .to_string()
        })
}

/// Makes the demo repository once; later starts keep it (and whatever was committed to it).
fn demo_repo(data_dir: &Path, example: Option<&Path>) -> Result<PathBuf, String> {
    let (repo, _) = server::demo_paths(data_dir);
    if repo.join(".git").is_dir() {
        return Ok(repo);
    }
    let source = example_dir(example)?;
    copy_tree(&source, &repo)?;
    git(&repo, &["init", "--quiet"])?;
    git(&repo, &["add", "--all"])?;
    git(
        &repo,
        &[
            "commit",
            "--quiet",
            "-m",
            "Gantry demo: examples/repo-layout",
        ],
    )?;
    Ok(repo)
}

/// The admin token: `GANTRY_ADMIN_TOKEN`, else the one kept in the data dir, else a new one.
fn admin_token(data_dir: &Path) -> Result<String, String> {
    if let Ok(t) = std::env::var("GANTRY_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        let token = t.trim();
        crate::config::check_token(token).map_err(|p| format!("GANTRY_ADMIN_TOKEN {p}"))?;
        return Ok(token.to_string());
    }
    let (_, path) = server::demo_paths(data_dir);
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(token.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(token)
}

pub fn up(data_dir: &Path, args: &UpArgs) -> u8 {
    let prepared = (|| -> Result<(PathBuf, PathBuf, String), String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let data_dir = std::fs::canonicalize(data_dir)
            .map_err(|e| format!("cannot resolve {}: {e}", data_dir.display()))?;
        let repo = demo_repo(&data_dir, args.example.as_deref())?;
        let token = admin_token(&data_dir)?;
        Ok((data_dir, repo, token))
    })();
    let (data_dir, repo, token) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gantry: {e}");
            return exit::USAGE;
        }
    };
    let url = format!("http://{}", args.listen);
    let config = Config {
        server: Server {
            listen: args.listen,
            public_url: url.clone(),
            max_backlog: crate::config::DEFAULT_MAX_BACKLOG,
            metrics_public: false,
        },
        storage: Storage {
            data_dir: data_dir.clone(),
            work_dir: None,
            cache: None,
            retention: crate::config::DEFAULT_RETENTION,
            keep_runs: crate::config::DEFAULT_KEEP_RUNS,
            min_free: Default::default(),
        },
        tokens: vec![ApiToken::admin("admin", &token)],
        users: Vec::new(),
        repos: vec![RepoConfig {
            name: "demo".into(),
            url: format!("file://{}", repo.display()),
            provider: Provider::Git,
            repo: None,
            branch: "main".into(),
            paths: crate::spec::model::DEFAULT_PIPELINE_GLOBS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            poll_interval: Duration::from_secs(5),
            token: None,
            webhook_secret: None,
            api_url: None,
            github_app: None,
            protected: vec!["main".into()],
            executor: None,
        }],
        executors: Default::default(),
    };
    let demo = demo_services(&data_dir);
    let mut config = config;
    // Steps have a network of their own: the demo's PostgreSQL on the host's loopback is one of
    // the host ports they may reach.
    if let Ok(pg) = &demo
        && let Some(crate::config::ExecutorConfig::Local(local)) = config
            .executors
            .named
            .get_mut(crate::config::DEFAULT_EXECUTOR)
    {
        local.host_ports.push(pg.port);
    }
    let gantry = self_command();
    println!("Gantry is up at {url}");
    println!("  API token:   {token}");
    println!("  web UI:      {url}/ (log in with the API token)");
    println!(
        "  demo repo:   {} (commit to it; Gantry polls every 5s)",
        repo.display()
    );
    let client = format!("{gantry} --server {url} --token {token}");
    match &demo {
        Ok(pg) => {
            println!(
                "  PostgreSQL:  127.0.0.1:{} for the demo, stopped with Gantry (log: {}); \
                 the demo's variables and secrets are set",
                pg.port,
                pg.log_path().display()
            );
            println!("  run a demo:  {client} run demo/provision-postgres");
            println!("  then:        {client} run demo/drift-check");
            println!("  find it:     {client} marketplace show orders-db");
            println!(
                "  connect:     {client} connection create orders --resource orders-db --env dev \
                 && {client} connection env orders"
            );
        }
        Err(e) => {
            println!("  PostgreSQL:  none: {e}");
            println!("  list runs:   {client} runs");
        }
    }
    println!(
        "  need a cloud: {} (their variables and secrets are yours to set: `{client} vars set ...`)",
        CLOUD_PIPELINES.join(", ")
    );
    let code = serve_config(config, options(&args.knobs));
    drop(demo);
    code
}

/// Demo pipelines that need a service this machine cannot have.
const CLOUD_PIPELINES: [&str; 2] = [
    "demo/provision-bucket (an S3 API)",
    "demo/provision-cache (Terraform and an AWS account)",
];

/// Starts the demo's PostgreSQL server and gives the PostgreSQL pipelines its variables and
/// secrets (scoped to them; secrets sealed in the store like any other).
fn demo_services(data_dir: &Path) -> Result<DemoPostgres, String> {
    let pg = DemoPostgres::start(data_dir).map_err(|e| e.to_string())?;
    let store = crate::store::Store::open(data_dir).map_err(|e| e.to_string())?;
    let port = pg.port.to_string();
    let provision = Some("demo/provision-postgres");
    let drift = Some("demo/drift-check");
    let set = |scope: Option<&str>, name: &str, value: &str| {
        store
            .set_var(scope, name, value)
            .map_err(|e| format!("setting the demo's variable {name}: {e}"))
    };
    let seal = |scope: Option<&str>, name: &str, value: &str| {
        store
            .set_secret_with(scope, name, value, SecretRelease::Protected)
            .map_err(|e| format!("setting the demo's secret {name}: {e}"))
    };
    for scope in [provision, drift] {
        set(scope, "pg_host", "127.0.0.1")?;
        set(scope, "pg_port", &port)?;
    }
    set(provision, "pg_admin_user", demo_postgres::ADMIN_USER)?;
    seal(provision, "pg_admin_password", &pg.admin_password)?;
    set(drift, "pg_monitor_user", demo_postgres::MONITOR_USER)?;
    seal(drift, "pg_monitor_password", &pg.monitor_password)?;
    // Where drift reports go: a chat webhook of the user's, kept once set. Until then a name
    // that cannot resolve: a report fails visibly in the `notify` step, whose failure the
    // pipeline tolerates (`continueOn`); it is the drift itself that fails the run.
    let has_webhook = store
        .list_secrets()
        .map_err(|e| e.to_string())?
        .iter()
        .any(|e| e.name == "drift_webhook_url" && e.pipeline.as_deref() == drift);
    if !has_webhook {
        seal(
            drift,
            "drift_webhook_url",
            "https://chat.invalid/hooks/gantry-demo",
        )?;
    }
    Ok(pg)
}

/// How to call this binary from the current directory: `gantry` when that is what the shell
/// finds, else its path (relative when it is below here, as `./target/release/gantry` is).
fn self_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "gantry".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|dir| {
            std::fs::canonicalize(dir.join("gantry")).ok().as_deref() == Some(exe.as_path())
        })
    });
    if on_path {
        return "gantry".into();
    }
    let here = std::env::current_dir().ok();
    match here.as_deref().and_then(|h| exe.strip_prefix(h).ok()) {
        Some(rel) => format!("./{}", rel.display()),
        None => exe.display().to_string(),
    }
}
