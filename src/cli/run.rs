//! `gantry run FILE`: validate, check parameters, run on this machine, stream progress and logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{exit, key_value, open_store, progress::Progress};
use crate::executor::local::LocalExecutor;
use crate::executor::local::sandbox::{ProcessLimits, Sandbox, UserChoice};
use crate::executor::{Checkout, Limits};
use crate::run::{self, RunRequest, StartError};
use crate::spec::{self, diagnostic};
use crate::store::{RunStatus, Trigger};

/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file
    pub file: PathBuf,
    /// A parameter value (repeatable)
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// A variable for this run only, overriding a stored one (repeatable)
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
    pub vars: Vec<(String, String)>,
    /// Steps running at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallelism: u16,
    /// Seconds between SIGTERM and SIGKILL when a step is stopped
    #[arg(long, default_value_t = 10)]
    pub kill_grace: u64,
    /// Print plain lines even on a terminal
    #[arg(long)]
    pub plain: bool,
    /// Keep the run's directory (workspace and output files) after the run, for debugging; it
    /// may then hold secret output values in plaintext
    #[arg(long)]
    pub keep_workspace: bool,
    /// Run the steps without the bubblewrap sandbox, as your own user with your view of the
    /// machine (the sandbox is used wherever `bwrap` is installed)
    #[arg(long)]
    pub no_sandbox: bool,
    /// A port of this machine's loopback that steps may reach at the same port of theirs (a
    /// database on this machine, say); steps have a network of their own, away from the
    /// machine's loopback. Repeat for more
    #[arg(long = "host-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub host_ports: Vec<u16>,
}

/// The sandbox of a `gantry run`: bubblewrap where it is installed, unless `--no-sandbox`.
fn sandbox(args: &Args) -> Sandbox {
    if args.no_sandbox {
        return Sandbox::None;
    }
    match Sandbox::bubblewrap(UserChoice::Default, ProcessLimits::default()) {
        Ok(Sandbox::Bubblewrap(mut b)) => {
            b.net.host_ports = args.host_ports.clone();
            // A run uid that a user of this machine has is never used: steps refuse instead.
            match b.check_run_uids() {
                Ok(()) => Sandbox::Bubblewrap(b),
                Err(e) => Sandbox::Missing(e.to_string()),
            }
        }
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("gantry: warning: steps run unsandboxed: {e}");
            Sandbox::None
        }
    }
}

/// The folder that holds `.gantry/` above the file, else the file's folder.
fn source_root(file: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let start = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    start
        .ancestors()
        .find(|dir| dir.join(".gantry").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

pub fn run(data_dir: &Path, args: &Args) -> u8 {
    let shown = args.file.display().to_string();
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gantry: cannot read {shown}: {e}");
            return exit::USAGE;
        }
    };
    let checked = spec::check_file(&text, Some(&shown));
    let lines = diagnostic::Lines::of(&text);
    for d in checked.diagnostics.iter() {
        eprint!("{}", lines.render(&shown, d, diagnostic::Style::default()));
    }
    // A Choreo-shaped file is recorded in Gantry's form: it reads the same without its path.
    let stored = spec::self_contained(&text, Some(&shown), &checked).into_owned();
    let Some(pipeline) = checked.pipeline else {
        eprintln!("gantry: {shown} is not a valid pipeline; nothing was run");
        return exit::FAILURE;
    };
    let Some(store) = open_store(data_dir) else {
        return exit::USAGE;
    };
    let request = RunRequest {
        source: "file".into(),
        pipeline,
        text: stored,
        path: shown.clone(),
        params: args.params.iter().cloned().collect::<BTreeMap<_, _>>(),
        var_overrides: args.vars.iter().cloned().collect(),
        trigger: Trigger {
            kind: "manual".into(),
            detail: Some(format!("gantry run {shown}")),
        },
        git: None,
        version: None,
        checkout: Checkout::WorkTree {
            root: source_root(&args.file),
        },
        limits: Limits {
            parallelism: usize::from(args.parallelism),
            kill_grace: Duration::from_secs(args.kill_grace),
            ..Limits::default()
        },
        keep_run_dir: args.keep_workspace,
    };
    let prepared = match run::prepare(&store, request) {
        Ok(p) => p,
        Err(StartError::Parameter(message)) => {
            eprintln!("gantry: {message}; nothing was run");
            return exit::USAGE;
        }
        Err(StartError::Store(e)) => {
            eprintln!("gantry: {e}");
            return exit::USAGE;
        }
        Err(StartError::Unavailable(message)) => {
            eprintln!("gantry: {message}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry: cannot start the async runtime: {e}");
            return exit::USAGE;
        }
    };
    let header = format!(
        "run {} · #{} of {}",
        prepared.run.id, prepared.run.number, prepared.run.pipeline
    );
    let mut progress = Progress::new(&prepared.plan, args.plain);
    progress.header(&header);
    let cancel = CancellationToken::new();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = runtime.block_on(async {
        let signals = {
            let cancel = cancel.clone();
            let interrupted = interrupted.clone();
            tokio::spawn(async move {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                let mut interrupts = 0;
                loop {
                    let term_signal = async {
                        match term.as_mut() {
                            Some(t) => {
                                t.recv().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term_signal => {},
                    }
                    interrupts += 1;
                    interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                    if interrupts == 1 {
                        eprintln!("gantry: cancelling the run (steps get SIGTERM, then SIGKILL); interrupt again to quit at once");
                        cancel.cancel();
                    } else {
                        // The run stays `running` in the store; the next gantry command marks it
                        // interrupted and kills what is left of its steps.
                        eprintln!("gantry: quitting without waiting for the steps");
                        std::process::exit(i32::from(EXIT_INTERRUPTED));
                    }
                }
            })
        };
        let executor = Arc::new(LocalExecutor::with_sandbox(sandbox(args)));
        let result = run::execute(&store, executor, prepared, cancel.clone(), |plan, event| {
            progress.event(plan, event)
        })
        .await;
        signals.abort();
        result
    });
    let run = match result {
        Ok(run) => run,
        Err(e) => {
            progress.finish();
            eprintln!("gantry: {e}");
            return exit::FAILURE;
        }
    };
    let steps = store.steps(&run.id).unwrap_or_default();
    progress.summary(&run, &steps);
    publish(&store, &run);
    match run.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::Cancelled if interrupted.load(std::sync::atomic::Ordering::SeqCst) => {
            EXIT_INTERRUPTED
        }
        _ => exit::FAILURE,
    }
}

/// Takes what the run published into the data dir's marketplace, and says so.
fn publish(store: &crate::store::Store, run: &crate::store::RunRecord) {
    match crate::marketplace::publish_run(store, run, chrono::Utc::now()) {
        Ok(done) => {
            for (step, result) in done {
                match result {
                    Ok(p) if p.new => println!(
                        "published {} version {} to the marketplace (step {step})",
                        p.resource, p.version
                    ),
                    Ok(p) => println!(
                        "{} unchanged in the marketplace: still version {} (step {step})",
                        p.resource, p.version
                    ),
                    Err(e) => {
                        eprintln!("gantry: step {step} not published to the marketplace: {e}")
                    }
                }
            }
        }
        Err(e) => eprintln!("gantry: publishing to the marketplace: {e}"),
    }
}

/// `gantry --server URL run SOURCE/NAME -p ...`: starts the run on the server and follows its log.
pub fn run_remote(client: &super::remote::Client, args: &Args) -> u8 {
    if !args.vars.is_empty() {
        eprintln!("gantry: --var applies to runs from a file; a server run uses stored variables");
        return exit::USAGE;
    }
    let pipeline = args.file.display().to_string();
    let params = args.params.iter().cloned().collect();
    super::remote::block_on(async {
        let run = client.start(&pipeline, &params).await?;
        eprintln!(
            "gantry: run {} #{} of {pipeline} is {}",
            run.id,
            run.number,
            run.status.as_str()
        );
        if run.status.is_active() {
            client.logs(&run.id, None, true).await?;
        }
        // The run as it ended, with the message that says why it failed or did not start.
        let ended = client.run_record(&run.id).await?;
        eprintln!("gantry: {}", super::runs::ending(&ended));
        Ok(super::remote::exit_for(Some(ended.status)))
    })
}
