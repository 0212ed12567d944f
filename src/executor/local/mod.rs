//! The local executor: each step a child process in its own process group on this machine.
//!
//! # Layout
//!
//! Under `RunInput::run_dir` the executor creates `workspace/` (shared by every step, the working
//! directory and `$GANTRY_WORKSPACE`), `outputs/<step>/` (one per step, empty at the start of each
//! attempt, `$GANTRY_OUTPUTS`; made ahead of time, see `dirs.rs`) and, only when a script starts
//! with `#!`, `scripts/<step>-<attempt>`.
//!
//! # Scheduling
//!
//! One scheduler loop (this file) owns all run state: the resolved [`Values`], each step's state,
//! and the queue of steps ready to start. A step becomes *decidable* once every step it needs has
//! finished; at that moment the scheduler decides it without a process: skipped because a needed
//! step did not let it run (failed, timed out, could not run or was cancelled, without
//! `continueOn`; the reason is inherited transitively), skipped because `when` is false, an error
//! because a value does not resolve, or else rendered into an owned [`Job`] and queued. Queued jobs
//! start in file order while fewer than `Limits::parallelism` are running. Rendering happens here,
//! once per step, so running steps never lock shared values. A running step is a future polled
//! inside the scheduler's own task (`set.rs`: no task or thread hop per step). When one ends, the
//! scheduler stores the step's outputs, sends `StepFinished` and decides the dependents.
//!
//! Cancellation and the run's timeout are observed by the scheduler only (before it starts steps,
//! and ahead of step completions in its `select!`): it records why ([`Stopped`]), cancels the
//! run-internal stop token the running steps watch, and marks every step not yet started as
//! cancelled. Running steps then kill their processes and report `Cancelled`.
//!
//! # Killing
//!
//! Every step process leads its own process group (`process_group(0)`, which keeps the fast
//! `posix_spawn` path). A timeout or a stop sends SIGTERM to the whole group, waits until the leader
//! has exited and the output pipes are closed (every group member gone) or `Limits::kill_grace` has
//! passed, then sends SIGKILL to the group. When an attempt ends normally, the group is sent SIGKILL
//! once right after the leader exits, so background children a step leaves behind do not outlive it;
//! the same happens when a step's future is dropped (the run's future dropped) or panics. See
//! `process.rs`.

mod attempt;
mod builtin;
pub mod cgroup;
mod dirs;
mod netns;
mod seccomp;
pub use dirs::disk_space;
pub use netns::MISSING as NO_SLIRP;
mod prepare;
mod process;
mod rawsys;
mod recover;
pub mod sandbox;
mod set;
pub mod spawner;
mod step_ns;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_io;
#[cfg(test)]
mod tests_kill;
pub mod uids;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::Utc;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::mask::Secrets;
use super::rules::{self, WhenDecision};
use super::{
    AttemptHandle, BoxFuture, Checkout, CommitRef, Event, Executor, ExecutorError, Limits, LostRun,
    Recovery, RunInput, RunOutcome, StepStatus, Stream, Values,
};
use crate::plan::{Plan, PlanStep};
use prepare::Job;
use sandbox::{Jail, Sandbox, StepUser};

/// Host variables a step inherits; nothing else of the host environment reaches a step.
const HOST_ENV: [&str; 11] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL",
    "TERM",
];

/// Bytes of step output this process dropped because a step's or run's log budget was spent
/// (`max_step_log`, `max_run_log`), for `/metrics`.
static LOG_BYTES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Bytes of step output dropped so far (see `LOG_BYTES_DROPPED`).
pub fn log_bytes_dropped() -> u64 {
    LOG_BYTES_DROPPED.load(Ordering::Relaxed)
}

/// Runs each step as a local child process (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct LocalExecutor {
    sandbox: Sandbox,
    mirrors: Option<Mirrors>,
}

/// Where this machine keeps the mirror (a bare git directory) of the repository a checkout names:
/// the server's lookup, given to the executor when the server builds it.
#[derive(Clone)]
pub struct Mirrors(Arc<MirrorLookup>);

/// The lookup behind [`Mirrors`].
pub type MirrorLookup = dyn Fn(&CommitRef) -> Option<PathBuf> + Send + Sync;

impl Mirrors {
    pub fn new(lookup: impl Fn(&CommitRef) -> Option<PathBuf> + Send + Sync + 'static) -> Mirrors {
        Mirrors(Arc::new(lookup))
    }

    /// The mirror of `commit`'s repository, when this machine has one.
    pub fn find(&self, commit: &CommitRef) -> Option<PathBuf> {
        (self.0)(commit)
    }
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mirrors(..)")
    }
}

impl LocalExecutor {
    /// Steps run unsandboxed, as Gantry's own user.
    pub fn new() -> LocalExecutor {
        LocalExecutor {
            sandbox: Sandbox::None,
            mirrors: None,
        }
    }

    /// Steps run in `sandbox`.
    pub fn with_sandbox(sandbox: Sandbox) -> LocalExecutor {
        LocalExecutor {
            sandbox,
            mirrors: None,
        }
    }

    /// Checkouts of a commit find their repository's mirror with `mirrors`; without it (or when
    /// it knows no mirror) such a checkout fails, naming the repository.
    pub fn with_mirrors(mut self, mirrors: Mirrors) -> LocalExecutor {
        self.mirrors = Some(mirrors);
        self
    }
}

impl Executor for LocalExecutor {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn recover(&self, work_dir: &std::path::Path, lost: &[LostRun]) -> Vec<Recovery> {
        recover::recover(work_dir, lost)
    }

    /// Never `Err`: this machine is always there; what goes wrong here is a step's error.
    fn execute<'a>(
        &'a self,
        plan: &'a Plan,
        input: &'a RunInput,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunOutcome, ExecutorError>> {
        Box::pin(async move {
            let checkout = resolve_checkout(&input.checkout, self.mirrors.as_ref());
            Ok(run(plan, input, checkout, events, cancel, &self.sandbox).await)
        })
    }
}

/// Why a run stopped before its steps were done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Cancelled,
    TimedOut,
    /// Its files grew past the run's disk limit, or ate the space its file system must keep.
    Disk,
}

impl Stopped {
    fn message(self) -> &'static str {
        match self {
            Stopped::Cancelled => "run cancelled",
            Stopped::TimedOut => "run timed out",
            Stopped::Disk => {
                "run stopped: its files went past the run's disk limit (`run_disk`) or into the free space their file system must keep"
            }
        }
    }
}

/// What every running step of a run shares (read-only, apart from the growing set of secrets).
struct Shared {
    events: Sender<Event>,
    secrets: Secrets,
    limits: Limits,
    workspace: PathBuf,
    outputs: PathBuf,
    /// `outputs/<step>/` of every step, made ahead of time.
    dirs: Arc<dirs::OutputDirs>,
    scripts: PathBuf,
    /// The host whitelist and the run-wide `GANTRY_*` variables.
    base_env: Vec<(OsString, OsString)>,
    checkout: LocalSource,
    git_sha: Option<String>,
    /// Cancelled when the run is cancelled or times out; `why` is set first.
    stop: CancellationToken,
    why: OnceLock<Stopped>,
    sandbox: Sandbox,
    /// The run's sandbox, started by the first process step.
    jail: tokio::sync::OnceCell<Result<Arc<Jail>, String>>,
    run_dir: PathBuf,
    run_id: String,
    network: bool,
    /// Who the run's steps are (a uid leased for this run, held until the run ends).
    user: sandbox::RunUser,
    /// Log bytes kept so far, for the whole run and per step; and whether a step's cut was noted.
    run_log: AtomicU64,
    step_log: Vec<AtomicU64>,
    step_cut: Vec<AtomicBool>,
}

impl Shared {
    /// Sends an event, waiting while the recorder is behind (the channel is bounded, so a step
    /// that floods its log is slowed down instead of growing memory); a receiver that has gone
    /// away is not the executor's problem.
    async fn send(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Reports that an attempt started, as `handle`: `Builtin` when there is no process (a
    /// built-in, or an attempt that could not start one).
    async fn started(&self, step: usize, attempt: u32, handle: AttemptHandle) {
        self.send(Event::StepStarted {
            step,
            attempt,
            handle,
            at: Utc::now(),
        })
        .await;
    }

    /// Writes a line of Gantry's own into a step's log, masked like any other line.
    async fn system(&self, step: usize, attempt: u32, line: &str) {
        self.send(self.system_event(step, attempt, line)).await;
    }

    /// The event of `system`.
    fn system_event(&self, step: usize, attempt: u32, line: &str) -> Event {
        Event::Log {
            step,
            attempt,
            stream: Stream::System,
            lines: vec![self.secrets.mask(line)],
            at: Utc::now(),
        }
    }

    /// Takes `n` bytes of the step's and the run's log budget; false when either is spent (the
    /// line is then dropped).
    fn log_budget(&self, step: usize, n: u64) -> bool {
        let Some(step_log) = self.step_log.get(step) else {
            return false;
        };
        let take = |counter: &AtomicU64, cap: u64| {
            counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    (used + n <= cap).then_some(used + n)
                })
                .is_ok()
        };
        if !take(step_log, self.limits.max_step_log) {
            LOG_BYTES_DROPPED.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        if !take(&self.run_log, self.limits.max_run_log) {
            step_log.fetch_sub(n, Ordering::Relaxed);
            LOG_BYTES_DROPPED.fetch_add(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// True the first time a step's log is cut.
    fn log_cut(&self, step: usize) -> bool {
        self.step_cut
            .get(step)
            .is_some_and(|cut| !cut.swap(true, Ordering::Relaxed))
    }

    /// The run's sandbox, started on first use; `None` without one.
    async fn jail(&self) -> Result<Option<Arc<Jail>>, String> {
        let config = match &self.sandbox {
            Sandbox::Bubblewrap(config) => config,
            Sandbox::Missing(why) => return Err(why.clone()),
            Sandbox::None => return Ok(None),
        };
        self.jail
            .get_or_init(|| {
                Jail::start(
                    config,
                    self.user.user,
                    &self.run_dir,
                    self.network,
                    &self.run_id,
                )
            })
            .await
            .clone()
            .map(Some)
    }

    /// Where a path of the run directory is for a step: the same path without a sandbox; under
    /// `/gantry` inside one.
    fn inside(&self, host: &std::path::Path) -> PathBuf {
        match (&self.sandbox, host.strip_prefix(&self.run_dir)) {
            (Sandbox::Bubblewrap(_), Ok(rest)) => std::path::Path::new(sandbox::INSIDE).join(rest),
            _ => host.to_path_buf(),
        }
    }

    /// The user that owns what steps may write, when steps run as another user than Gantry.
    fn step_user(&self) -> Option<StepUser> {
        self.user.user
    }

    fn stop_message(&self) -> &'static str {
        self.why
            .get()
            .copied()
            .unwrap_or(Stopped::Cancelled)
            .message()
    }
}

/// Where one step stands.
#[derive(Debug)]
enum State {
    /// Some needed step has not finished.
    Waiting,
    /// Rendered and waiting for a free slot.
    Queued(Box<Job>),
    Running,
    Done {
        status: StepStatus,
        /// Why dependents may not run, when they may not.
        blocks: Option<String>,
    },
}

struct Scheduler<'a> {
    plan: &'a Plan,
    shared: Arc<Shared>,
    values: Values,
    state: Vec<State>,
    /// Needed steps not finished yet, per step.
    waiting: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    /// Steps whose needs have all finished and that are not decided yet.
    decidable: BTreeSet<usize>,
    /// Indices of `Queued` steps, in file order.
    queue: BTreeSet<usize>,
    /// `StepFinished` events decided but not sent yet (deciding is synchronous; `flush` sends).
    pending: std::collections::VecDeque<Event>,
    /// Steps a retry takes from the run it retries (`RunInput::reuse`).
    reuse: BTreeMap<String, crate::executor::Reused>,
}

/// What `gantry/git-checkout@v1` copies from on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalSource {
    /// Nothing: the built-in fails with this message.
    Missing(String),
    WorkTree(PathBuf),
    /// A commit of a bare repository (a mirror).
    Commit {
        git_dir: PathBuf,
        sha: String,
    },
}

/// A checkout as this machine can do it: a commit through the mirror the lookup names.
fn resolve_checkout(checkout: &Checkout, mirrors: Option<&Mirrors>) -> LocalSource {
    match checkout {
        Checkout::None => LocalSource::Missing(builtin::NO_REPOSITORY.into()),
        Checkout::WorkTree { root } => LocalSource::WorkTree(root.clone()),
        Checkout::Commit(commit) => match mirrors.and_then(|m| m.find(commit)) {
            Some(git_dir) => LocalSource::Commit {
                git_dir,
                sha: commit.sha.clone(),
            },
            None => LocalSource::Missing(format!(
                "gantry/git-checkout@v1: this machine has no mirror of repository `{}` to check out \
                 {} from",
                commit.repo, commit.sha
            )),
        },
    }
}

async fn run(
    plan: &Plan,
    input: &RunInput,
    checkout: LocalSource,
    events: Sender<Event>,
    cancel: CancellationToken,
    sandbox: &Sandbox,
) -> RunOutcome {
    let started = tokio::time::Instant::now();
    let deadline = started.checked_add(plan.timeout);
    let secrets = Secrets::new();
    for value in input.hidden_values() {
        secrets.add(value);
    }
    // Absolute, so that `$GANTRY_WORKSPACE` and `$GANTRY_OUTPUTS` hold from any working directory.
    let run_dir = std::path::absolute(&input.run_dir).unwrap_or_else(|_| input.run_dir.clone());
    let workspace = run_dir.join("workspace");
    let outputs = run_dir.join("outputs");
    // A sandbox started ahead of time, with its run directory laid out, saves a bubblewrap start
    // (the largest fixed cost of a sandboxed run); the next one starts warming at once. The run
    // keeps the spare's uid; otherwise it leases one of its own.
    let mut spare = None;
    if let Sandbox::Bubblewrap(config) = sandbox
        && config.prewarm
        && let Some(work_dir) = run_dir.parent()
    {
        if plan.network
            && !run_dir.exists()
            && let Some(taken) = config.spares.take(work_dir)
            && std::fs::rename(&taken.dir, &run_dir).is_ok()
        {
            spare = Some(taken);
        }
        config.spares.warm(config, work_dir);
    }
    let from_spare = spare.is_some();
    let (user, jail) = match spare {
        Some(mut taken) => (
            Ok(std::mem::take(&mut taken.user)),
            Some(taken.jail.clone()),
        ),
        None => match sandbox {
            Sandbox::Bubblewrap(config) => (config.run_user(), None),
            Sandbox::None | Sandbox::Missing(_) => (Ok(sandbox::RunUser::default()), None),
        },
    };
    let (user, no_user) = match user {
        Ok(user) => (user, None),
        Err(message) => (sandbox::RunUser::default(), Some(message)),
    };
    let shared = Arc::new(Shared {
        events,
        secrets,
        limits: input.limits,
        base_env: base_env(input, &workspace, sandbox),
        workspace,
        outputs,
        dirs: Arc::new(dirs::OutputDirs::new(plan.steps.len())),
        scripts: run_dir.join("scripts"),
        checkout,
        git_sha: input.git.as_ref().map(|g| g.sha.clone()),
        stop: CancellationToken::new(),
        why: OnceLock::new(),
        sandbox: sandbox.clone(),
        jail: tokio::sync::OnceCell::new(),
        run_dir: run_dir.clone(),
        run_id: input.run_id.clone(),
        network: plan.network,
        user,
        run_log: AtomicU64::new(0),
        step_log: (0..plan.steps.len()).map(|_| AtomicU64::new(0)).collect(),
        step_cut: (0..plan.steps.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
    });
    let mut s = Scheduler::new(plan, input, shared.clone());
    if let Some(jail) = jail {
        let _ = shared.jail.set(Ok(jail));
    }
    let laid_out = match no_user {
        Some(message) => Err(message),
        None if from_spare => Ok(()),
        None => create_dirs(&shared),
    };
    if let Err(message) = laid_out {
        for i in 0..plan.steps.len() {
            s.finish(i, StepStatus::Error, Some(message.clone()), None);
        }
        s.flush().await;
        return RunOutcome::Failed;
    }

    let order = plan.topological_order();
    let order = order
        .into_iter()
        .filter(|&i| !plan.steps[i].outputs.is_empty())
        .map(|i| (i, plan.steps[i].name.clone()))
        .collect();
    let maker = shared.dirs.start(
        shared.outputs.clone(),
        order,
        shared.stop.clone(),
        shared.step_user(),
    );
    let finish_dirs = FinishDirs(shared.dirs.clone());

    let parallelism = input.limits.parallelism.max(1);
    let mut running = set::StepSet::new();
    let run_timer = tokio::time::sleep_until(deadline.unwrap_or(started));
    tokio::pin!(run_timer);
    let mut stopped: Option<Stopped> = None;
    // The run's files are measured once a second by a task of their own (a walk off the async
    // threads), which says only when they are too many: the loop below never waits for a walk.
    let mut over_disk = DiskWatch::start(&run_dir, input.limits);

    s.decidable
        .extend((0..plan.steps.len()).filter(|&i| s.waiting[i] == 0));
    s.settle();
    s.flush().await;
    loop {
        // Checked before starting anything: a run cancelled before it began starts no step.
        if stopped.is_none() {
            let why = if cancel.is_cancelled() {
                Some(Stopped::Cancelled)
            } else if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                Some(Stopped::TimedOut)
            } else {
                None
            };
            if let Some(why) = why {
                stopped = Some(why);
                s.stop(why);
            }
        }
        // Sent without waiting where the channel has room; the rest by the `select!` below.
        s.send_ready();
        // A step starts only once every event decided before it is sent (a step it needs has
        // finished in the recorder's eyes before it starts).
        if stopped.is_none() && s.pending.is_empty() {
            while running.len() < parallelism {
                let Some(i) = s.queue.pop_first() else { break };
                let State::Queued(job) = std::mem::replace(&mut s.state[i], State::Running) else {
                    continue;
                };
                running.push(i, attempt::run_step(shared.clone(), *job));
            }
        }
        if running.is_empty() && s.pending.is_empty() {
            break;
        }
        tokio::select! {
            // A stop first: steps that keep finishing or logging must not delay it.
            biased;
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(Stopped::Cancelled);
                s.stop(Stopped::Cancelled);
            }
            () = &mut run_timer, if stopped.is_none() && deadline.is_some() => {
                stopped = Some(Stopped::TimedOut);
                s.stop(Stopped::TimedOut);
            }
            Some(why) = over_disk.found.recv(), if stopped.is_none() => {
                tracing::info!("run {} stopped: {why}", input.run_id);
                for &i in running.indices().iter() {
                    let line = format!("[gantry: run stopped: {why}]");
                    s.pending.push_back(shared.system_event(i, 0, &line));
                }
                stopped = Some(Stopped::Disk);
                s.stop(Stopped::Disk);
            }
            // The scheduler's events wait for room in the channel here, beside the running
            // steps, never in place of polling them: a step waiting to send holds its place in
            // the channel's queue, and room freed by the recorder goes to it first, so a
            // scheduler that stopped polling the steps to wait for room would wait forever once
            // more steps than the channel holds were waiting (a wide parallel group did).
            permit = shared.events.reserve(), if !s.pending.is_empty() => {
                match permit {
                    Ok(permit) => {
                        if let Some(event) = s.pending.pop_front() {
                            permit.send(event);
                        }
                    }
                    // Nobody records the run any more: what was decided goes nowhere.
                    Err(_) => s.pending.clear(),
                }
            }
            Some((i, result)) = running.next() => {
                s.finish(i, result.status, result.message, Some(result.outputs));
                s.settle();
            }
        }
    }
    // Only an invalid plan (a cycle) leaves steps undecided; every step still gets its StepFinished.
    for i in 0..plan.steps.len() {
        if !matches!(s.state[i], State::Done { .. }) {
            let message = match stopped {
                Some(why) => why.message().to_string(),
                None => "not run: its needs form a cycle".to_string(),
            };
            let status = if stopped.is_some() {
                StepStatus::Cancelled
            } else {
                StepStatus::Error
            };
            s.finish(i, status, Some(message), None);
        }
    }
    s.flush().await;
    drop(finish_dirs);
    let _ = maker.await;
    match stopped {
        Some(Stopped::Cancelled) => RunOutcome::Cancelled,
        Some(Stopped::TimedOut) => RunOutcome::TimedOut,
        Some(Stopped::Disk) => RunOutcome::Failed,
        None if s.all_passed() => RunOutcome::Succeeded,
        None => RunOutcome::Failed,
    }
}

/// The task that measures a run's files (`dirs::over_disk`) once a second and reports, once, why
/// they must stop growing; it ends with the run (dropped).
struct DiskWatch {
    found: tokio::sync::mpsc::Receiver<String>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DiskWatch {
    fn start(run_dir: &std::path::Path, limits: Limits) -> DiskWatch {
        let (tx, found) = tokio::sync::mpsc::channel(1);
        let watched = limits.run_disk.is_some() || limits.keep_free > 0;
        let run_dir = run_dir.to_path_buf();
        let task = watched.then(|| {
            tokio::spawn(async move {
                let every = std::time::Duration::from_secs(1);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let (dir, limits) = (run_dir.clone(), limits);
                    let over = tokio::task::spawn_blocking(move || dirs::over_disk(&dir, &limits))
                        .await
                        .ok()
                        .flatten();
                    if let Some(why) = over {
                        let _ = tx.send(why).await;
                        return;
                    }
                }
            })
        });
        DiskWatch { found, task }
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Stops the output folder maker when the run ends, also when its future is dropped.
struct FinishDirs(Arc<dirs::OutputDirs>);

impl Drop for FinishDirs {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The variables every step of the run gets before its own: the host whitelist, then `GANTRY_*`.
fn base_env(
    input: &RunInput,
    workspace: &std::path::Path,
    sandbox: &Sandbox,
) -> Vec<(OsString, OsString)> {
    let sandboxed = matches!(sandbox, Sandbox::Bubblewrap(_));
    let mut env: Vec<(OsString, OsString)> = HOST_ENV
        .iter()
        // In a sandbox the host's home and temporary folders do not exist: both are its `/tmp`.
        .filter(|&&k| !(sandboxed && matches!(k, "HOME" | "TMPDIR")))
        .filter_map(|&k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect();
    if sandboxed {
        env.push(("HOME".into(), "/tmp".into()));
        env.push(("TMPDIR".into(), "/tmp".into()));
    }
    // In a sandbox the run directory is at `/gantry` (see `sandbox.rs`).
    let workspace = if sandboxed {
        std::path::Path::new(sandbox::INSIDE).join("workspace")
    } else {
        workspace.to_path_buf()
    };
    let mut set = |k: &str, v: OsString| env.push((OsString::from(k), v));
    set("GANTRY_WORKSPACE", workspace.as_os_str().to_owned());
    // Choreo's name for it (Choreo-shaped pipelines use it everywhere).
    set("WORKSPACE", workspace.as_os_str().to_owned());
    set("GANTRY_RUN_ID", input.run_id.clone().into());
    set("GANTRY_RUN_NUMBER", input.run_number.to_string().into());
    set("GANTRY_PIPELINE", input.pipeline.clone().into());
    if let Some(git) = &input.git {
        set("GANTRY_GIT_SHA", git.sha.clone().into());
        set("GANTRY_GIT_REF", git.reference.clone().into());
    }
    env
}

/// The `$GANTRY_OUTPUTS` of steps that declare no outputs. Nothing is read from it, so those
/// steps share it and cost no folder of their own (a `mkdir` is a quarter of a `sh -c true`).
pub(super) const UNREAD_OUTPUTS: &str = ".unread";

/// The file a step's `$GANTRY_SUMMARY` names, in its `$GANTRY_OUTPUTS` (which steps without
/// outputs share, hence the step's name in it; a leading `.` keeps it apart from outputs).
pub(super) fn summary_file(step: &str) -> String {
    format!(".summary.{step}.md")
}

/// The most of a step's summary that is kept; the rest is cut with a note.
pub(super) const MAX_SUMMARY: usize = 64 * 1024;

/// Makes the run directory. When steps run as another user, what they may write (`workspace/`,
/// their own `outputs/<step>/`) is theirs, and the rest (the run directory, `outputs/` itself,
/// `scripts/`) stays Gantry's, traversable but not writable: a step can never swap an entry
/// Gantry reads or writes for a symlink. Without a user of their own, the sandbox mounts the same
/// parts read-only.
fn create_dirs(shared: &Shared) -> Result<(), String> {
    lay_out(&shared.run_dir, shared.step_user())
}

/// Makes the run directory layout at `run_dir` (see `create_dirs`).
fn lay_out(run_dir: &std::path::Path, user: Option<StepUser>) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mode = if user.is_some() { 0o711 } else { 0o700 };
    let outputs = run_dir.join("outputs");
    let scripts = run_dir.join("scripts");
    let workspace = run_dir.join("workspace");
    let fail = |dir: &std::path::Path, e: std::io::Error| {
        format!("cannot create the run directory {}: {e}", dir.display())
    };
    if let Some(parent) = run_dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(parent)
            .map_err(|e| fail(parent, e))?;
    }
    for dir in [run_dir, &outputs, &scripts] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| fail(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(dir, e))?;
    }
    for dir in [&workspace, &outputs.join(UNREAD_OUTPUTS)] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists if dir.is_dir() => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| fail(dir, e))?;
        dirs::own(dir, user).map_err(|e| fail(dir, e))?;
    }
    Ok(())
}

impl<'a> Scheduler<'a> {
    fn new(plan: &'a Plan, input: &RunInput, shared: Arc<Shared>) -> Scheduler<'a> {
        let n = plan.steps.len();
        let mut dependents = vec![Vec::new(); n];
        let mut waiting = vec![0; n];
        for (i, step) in plan.steps.iter().enumerate() {
            for &d in &step.needs {
                if d < n {
                    dependents[d].push(i);
                    waiting[i] += 1;
                }
            }
        }
        Scheduler {
            plan,
            shared,
            values: Values::from_input(input),
            state: (0..n).map(|_| State::Waiting).collect(),
            waiting,
            dependents,
            decidable: BTreeSet::new(),
            queue: BTreeSet::new(),
            pending: std::collections::VecDeque::new(),
            reuse: input.reuse.clone(),
        }
    }

    /// Sends the events decided so far, in order. Only where no step runs: see `send_ready`.
    async fn flush(&mut self) {
        for event in std::mem::take(&mut self.pending) {
            self.shared.send(event).await;
        }
    }

    /// Sends the events decided so far, in order, as far as the channel has room now.
    fn send_ready(&mut self) {
        while let Some(event) = self.pending.pop_front() {
            match self.shared.events.try_send(event) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    return;
                }
                // Nobody records the run any more.
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// Decides every decidable step, including those that deciding makes decidable.
    fn settle(&mut self) {
        while let Some(i) = self.decidable.pop_first() {
            if matches!(self.state[i], State::Waiting) {
                self.decide(i);
            }
        }
    }

    /// All the steps `i` needs have finished: skip it, fail it, or queue it.
    fn decide(&mut self, i: usize) {
        let plan = self.plan;
        let step: &PlanStep = &plan.steps[i];
        let blocked = step.needs.iter().find_map(|&d| match self.state.get(d) {
            Some(State::Done { blocks, .. }) => blocks.clone(),
            _ => None,
        });
        if let Some(reason) = blocked {
            let message = format!("not run: {reason}");
            self.finish_blocked(i, StepStatus::Skipped, message, reason);
            return;
        }
        // A retry takes a step that succeeded in the run it retries as it was: not run again, its
        // outputs handed on.
        if let Some(reused) = self.reuse.remove(&step.name) {
            if !reused.outputs.is_empty() {
                self.pending.push_back(Event::Outputs {
                    step: i,
                    values: reused.outputs.clone(),
                });
            }
            let message = format!(
                "not run again: it succeeded in run #{}, whose outputs it keeps",
                reused.run_number
            );
            self.finish(
                i,
                StepStatus::Succeeded,
                Some(message),
                Some(reused.outputs),
            );
            return;
        }
        match rules::when(step, &self.values) {
            WhenDecision::Run => {}
            WhenDecision::Skip => {
                self.finish(i, StepStatus::Skipped, Some("when was false".into()), None);
                return;
            }
            WhenDecision::Error(message) => {
                self.finish(i, StepStatus::Error, Some(message), None);
                return;
            }
        }
        match prepare::prepare(i, step, &self.values, &self.shared) {
            Ok(job) => {
                self.state[i] = State::Queued(Box::new(job));
                self.queue.insert(i);
            }
            Err(message) => self.finish(i, StepStatus::Error, Some(message), None),
        }
    }

    /// Records how step `i` ended, sends `StepFinished` and makes its dependents decidable.
    fn finish(
        &mut self,
        i: usize,
        status: StepStatus,
        message: Option<String>,
        outputs: Option<Vec<(String, String, bool)>>,
    ) {
        let plan = self.plan;
        let step = &plan.steps[i];
        let blocks = rules::blocks(step, status);
        match status {
            StepStatus::Succeeded => {
                let map: BTreeMap<String, String> = outputs
                    .into_iter()
                    .flatten()
                    .map(|(k, v, _)| (k, v))
                    .collect();
                self.values.outputs.insert(step.name.clone(), map);
            }
            // Its outputs read as `rules::SKIPPED_OUTPUT` (`Values::resolve` of an output the
            // step's map lacks).
            StepStatus::Skipped => {
                self.values
                    .outputs
                    .insert(step.name.clone(), BTreeMap::new());
            }
            _ => {}
        }
        self.record(i, status, message, blocks);
    }

    /// Finishes a step that a needed step kept from running; its dependents inherit the reason.
    fn finish_blocked(&mut self, i: usize, status: StepStatus, message: String, reason: String) {
        let name = self.plan.steps[i].name.clone();
        self.values.outputs.insert(name, BTreeMap::new());
        self.record(i, status, Some(message), Some(reason));
    }

    fn record(
        &mut self,
        i: usize,
        status: StepStatus,
        message: Option<String>,
        blocks: Option<String>,
    ) {
        self.pending.push_back(Event::StepFinished {
            step: i,
            status,
            message: message.map(|m| self.shared.secrets.mask(&m)),
            at: Utc::now(),
        });
        if let State::Queued(_) = self.state[i] {
            self.queue.remove(&i);
        }
        self.state[i] = State::Done { status, blocks };
        for k in 0..self.dependents[i].len() {
            let j = self.dependents[i][k];
            self.waiting[j] = self.waiting[j].saturating_sub(1);
            if self.waiting[j] == 0 {
                self.decidable.insert(j);
            }
        }
    }

    /// The run was cancelled or timed out: tell running steps, cancel the ones not started.
    fn stop(&mut self, why: Stopped) {
        let _ = self.shared.why.set(why);
        self.shared.stop.cancel();
        for i in 0..self.state.len() {
            if matches!(self.state[i], State::Waiting | State::Queued(_)) {
                self.record(i, StepStatus::Cancelled, Some(why.message().into()), None);
            }
        }
        // Dependents of the steps just cancelled were cancelled with them.
        self.decidable.clear();
    }

    /// Whether every step ended in a way that does not fail the run.
    fn all_passed(&self) -> bool {
        self.state
            .iter()
            .zip(&self.plan.steps)
            .all(|(state, step)| match state {
                State::Done { status, .. } => rules::passes(step.continue_on, *status),
                _ => false,
            })
    }
}
