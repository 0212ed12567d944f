//! The command line: argument parsing (clap) and one module per subcommand.
//!
//! Commands print to stdout/stderr and return an exit code; they never call `process::exit`
//! themselves, so `main` stays the only place that ends the process.

pub mod bench;
pub mod config;
pub mod convert;
pub mod demo_postgres;
pub mod logging;
pub mod market;
pub mod pipeline;
pub mod progress;
pub mod remote;
pub mod render;
pub mod run;
pub mod runs;
pub mod serve;
pub mod validate;
pub mod webhook;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::store::Store;

/// Exit codes shared by every command.
pub mod exit {
    /// Everything worked and everything checked was valid.
    pub const OK: u8 = 0;
    /// The command ran, and found a problem (an invalid file, a failed run).
    pub const FAILURE: u8 = 1;
    /// The command could not run: bad usage, unreadable file.
    pub const USAGE: u8 = 2;
}

/// A multi-threaded runtime for a command that runs async code to its end (`workers` threads, or
/// one per core); when none can be started, says so and gives the exit code to return.
pub(crate) fn multi_thread_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, u8> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("gantry: cannot start the async runtime: {e}");
        exit::USAGE
    })
}

const EXAMPLES: &str = "\
Examples:
  gantry validate examples/repo-layout
  gantry run .gantry/pipelines/provision-postgres.yaml -p db_name=orders --var pg_host=localhost
  printf %s \"$PGPASSWORD\" | gantry secrets set pg_admin_password --pipeline provision-postgres
  gantry runs --pipeline provision-postgres
  gantry logs 01KBZ4 --step create-database
  gantry bench spec --seconds 3";

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Git-native infrastructure automation pipelines",
    long_about = "Gantry turns the automation scripts in your Git repositories into pipelines: \
typed parameters, variables and secrets, live step logs, and results reported back to the forge.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Where Gantry keeps its state (runs, logs, variables, encrypted secrets)
    #[arg(
        long,
        global = true,
        env = "GANTRY_DATA_DIR",
        default_value = "gantry-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Talk to a running Gantry server instead of the data dir (runs, logs, run, pipeline, vars,
    /// secrets, marketplace, connection)
    #[arg(long, global = true, env = "GANTRY_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The server's API token (a token from [[auth.tokens]])
    #[arg(
        long,
        global = true,
        env = "GANTRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// How the service's log lines are written on stderr: human or json (levels from
    /// GANTRY_LOG or RUST_LOG, e.g. `GANTRY_LOG=debug`)
    #[arg(
        long,
        global = true,
        env = "GANTRY_LOG_FORMAT",
        value_enum,
        default_value = "human",
        value_name = "FORMAT"
    )]
    pub log_format: logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and report every problem with its line and column.
    #[command(after_help = "\
PATH is a pipeline file, or a directory: then its .gantry/pipelines/*.yaml and *.yml files are checked.
Exit status: 0 when every file is valid (warnings allowed), 1 when any file has an error, 2 when a path
cannot be read.

Examples:
  gantry validate examples/repo-layout
  gantry validate pipeline.yaml other.yml --format json")]
    Validate(validate::Args),
    /// Print a Choreo-shaped pipeline file in Gantry's own form.
    #[command(after_help = "\
FILE is read as `gantry validate` reads it. The converted pipeline plans exactly as the original; the
comments at the top of the file are kept. With --write, FILE is replaced by its converted form.
Exit status: 0 when converted (or already in Gantry's form), 1 when FILE has errors, 2 when it cannot
be read or written.")]
    Convert(convert::Args),
    /// Run a pipeline file on this machine, with live progress and step logs.
    #[command(after_help = "\
The repository holding the file's .gantry/ folder is what gantry/git-checkout@v1 copies into the
workspace: its files as git sees them, uncommitted changes included, ignored files left out.
Exit status: 0 when the run succeeded, 1 when it failed, 2 when it could not start, 130 when it was
cancelled with Ctrl-C.")]
    Run(run::Args),
    /// List runs, newest first.
    Runs(runs::ListArgs),
    /// Print the log of a run.
    Logs(runs::LogArgs),
    /// Retry a failed run from its failed step, on a server: the steps that succeeded are not
    /// run again and keep their outputs; checkouts run again.
    #[command(after_help = "\
Needs --server (or GANTRY_SERVER). Follows the new run's log like `gantry run`.
Exit status: 0 when the new run succeeded, 1 when it failed, 2 when it could not start.")]
    Retry(runs::RetryArgs),
    /// Manage plain variables (global or per pipeline).
    Vars(config::VarsArgs),
    /// Manage secrets: encrypted at rest, write-only.
    Secrets(config::SecretsArgs),
    /// Pipelines defined in Gantry: apply a file, roll back, list.
    Pipeline(pipeline::Args),
    /// Resources published by pipelines: list, show, unpublish, deprecate.
    Marketplace(market::MarketArgs),
    /// Connections from applications to published resources, and their credentials.
    Connection(market::ConnectionArgs),
    /// Run the service: watch repositories, fire schedules, run the queue, serve the API.
    #[command(after_help = "\
Stops on SIGTERM or Ctrl-C: no new work, running runs get --shutdown-grace to finish, the rest
are marked interrupted; queued runs wait for the next start.")]
    Serve(serve::ServeArgs),
    /// The one-command demo: examples/repo-layout as a git repository in the data dir, served.
    Up(serve::UpArgs),
    /// Print the Argo Workflow a pipeline compiles to (and the Secret it reads, values redacted).
    #[command(after_help = "\
Exit status: 0 when the file compiled, 1 when it is invalid or cannot run on Argo, 2 on bad usage.

Examples:
  gantry render --argo .gantry/pipelines/provision-postgres.yaml -p db_name=orders
  gantry render --argo pipeline.yaml --namespace gantry > run.yaml
The output holds the Workflow and, when the pipeline uses secrets, a Secret (values redacted)
as a second YAML document (JSON: an array): fill in and apply the Secret first.")]
    Render(render::Args),
    /// Measure Gantry's own speed and print the figures.
    Bench(bench::Args),
    /// Try webhooks without a forge: replay a sample delivery, signed, to a server.
    Webhook(webhook::Args),
    /// Print the argon2 hash of a password read from stdin, for `[[auth.users]] password_hash`.
    #[command(after_help = "\
Example:
  printf %s 'the password' | gantry hash-password")]
    HashPassword,
}

impl Command {
    /// Commands whose work is printing, that a closed pipe may simply end. The others (the
    /// service, runs, benchmarks) write to pipes of their own children and must see EPIPE as an
    /// error, not die of it.
    fn prints_for_pipes(&self) -> bool {
        match self {
            Command::Validate(_)
            | Command::Convert(_)
            | Command::Runs(_)
            | Command::Logs(_)
            | Command::Vars(_)
            | Command::Secrets(_)
            | Command::Pipeline(_)
            | Command::Marketplace(_)
            | Command::Connection(_)
            | Command::Render(_)
            | Command::HashPassword => true,
            Command::Run(_)
            | Command::Retry(_)
            | Command::Serve(_)
            | Command::Up(_)
            | Command::Bench(_)
            | Command::Webhook(_) => false,
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    logging::init(cli.log_format);
    if cli.command.prints_for_pipes() {
        // Rust ignores SIGPIPE, so a closed stdout (`gantry runs | head -1`) would make the
        // next print panic. Commands that only print end quietly instead, as Unix tools do.
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let data_dir = cli.data_dir;
    let client = match &cli.server {
        Some(url) => match remote::Client::new(url, cli.token.clone()) {
            Ok(c) => Some(c),
            Err(f) => {
                eprintln!("gantry: {}", f.message);
                return f.code;
            }
        },
        None => None,
    };
    if let Some(client) = &client {
        match &cli.command {
            Command::Run(args) => return run::run_remote(client, args),
            Command::Runs(args) => return runs::list_remote(client, args),
            Command::Logs(args) => return runs::logs_remote(client, args),
            Command::Retry(args) => return runs::retry_remote(client, args),
            _ => {}
        }
    }
    match cli.command {
        Command::Pipeline(args) => pipeline::run(&data_dir, client.as_ref(), &args),
        Command::Serve(args) => serve::serve(&args),
        Command::Up(args) => serve::up(&data_dir, &args),
        Command::Validate(args) => validate::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Run(args) => run::run(&data_dir, &args),
        Command::Runs(args) => runs::list(&data_dir, &args),
        Command::Logs(args) => runs::logs(&data_dir, &args),
        Command::Retry(_) => {
            eprintln!(
                "gantry: retry runs on a server: give --server URL (a run of a file is retried by \
                 running the file again)"
            );
            exit::USAGE
        }
        Command::Vars(args) => config::vars(&data_dir, client.as_ref(), &args),
        Command::Secrets(args) => config::secrets(&data_dir, client.as_ref(), &args),
        Command::Marketplace(args) => market::marketplace(&data_dir, client.as_ref(), &args),
        Command::Connection(args) => market::connection(&data_dir, client.as_ref(), &args),
        Command::Bench(args) => bench::run(&args),
        Command::Render(args) => render::run(&args),
        Command::Webhook(args) => webhook::run(&args),
        Command::HashPassword => hash_password(),
    }
}

/// `gantry hash-password`: the first line of stdin (without its line break) as an argon2id hash.
fn hash_password() -> u8 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("gantry: cannot read the password from stdin: {e}");
        return exit::USAGE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.chars().count() < 8 {
        eprintln!("gantry: give a password of at least 8 characters on stdin");
        return exit::USAGE;
    }
    match crate::config::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            exit::OK
        }
        Err(e) => {
            eprintln!("gantry: {e}");
            exit::FAILURE
        }
    }
}

/// Opens the store and recovers runs left behind by a process that went away; reports failures
/// on stderr.
pub fn open_store(data_dir: &Path) -> Option<Store> {
    let store = match Store::open(data_dir) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("gantry: {e}");
            return None;
        }
    };
    // Runs of this data dir outside a server are `gantry run`'s, which runs steps locally.
    let executors = crate::run::executors::Executors::single(
        crate::config::DEFAULT_EXECUTOR,
        std::sync::Arc::new(crate::executor::local::LocalExecutor::new()),
        crate::executor::Limits::default(),
    );
    match crate::run::recover::recover(&store, &executors) {
        Ok(recovered) => {
            for r in recovered.interrupted {
                eprintln!(
                    "gantry: run {} #{} of {} was {}",
                    r.id,
                    r.number,
                    r.pipeline,
                    r.message.as_deref().unwrap_or("interrupted")
                );
            }
        }
        Err(e) => eprintln!("gantry: could not check for interrupted runs: {e}"),
    }
    Some(store)
}

/// Splits `KEY=VALUE`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}
