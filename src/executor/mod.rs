//! Executors: run a [`Plan`] and stream what happens back as [`Event`]s.
//!
//! One trait, [`Executor`], so orchestration does not care where steps run: `local` runs each step
//! as a child process on this machine; an Argo Workflows executor comes later. An executor receives
//! the plan and the run's resolved values ([`RunInput`]) and nothing else: it never sees forges,
//! triggers, events or the store. Log lines leave an executor already masked.

pub mod argo;
pub mod local;
pub mod mask;
pub mod publish;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::plan::Plan;
use crate::spec::expr::Ref;
use crate::spec::model::Category;

/// Everything a run needs besides its plan. Values are plain text; secrets live here in memory only
/// (its `Debug` shows their names, not their values).
#[derive(Clone)]
pub struct RunInput {
    pub run_id: String,
    pub run_number: u64,
    pub pipeline: String,
    /// Parameter values, already checked against their declarations and rendered as text.
    pub params: BTreeMap<String, String>,
    pub vars: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// The credentials the steps reference, `NAME.KEY` (as referenced) → value, from the
    /// marketplace connections the pipeline declares; secret ones are masked like secrets.
    pub connections: BTreeMap<String, ConnectionValue>,
    pub git: Option<GitInfo>,
    /// `manual`, `push`, `pullRequest`, `comment` or `schedule`.
    pub trigger: String,
    pub pr_number: Option<u64>,
    /// What `gantry/git-checkout@v1` puts into the workspace.
    pub checkout: Checkout,
    /// The run's own directory; the executor creates `workspace/` and `outputs/` inside.
    pub run_dir: PathBuf,
    pub limits: Limits,
    /// Steps not to run again, by name: they succeeded in the run this one retries, and their
    /// outputs are handed on as that run left them.
    pub reuse: BTreeMap<String, Reused>,
}

/// A step of an earlier run that a retry takes as it was.
#[derive(Clone, PartialEq)]
pub struct Reused {
    /// The number of the run it succeeded in.
    pub run_number: u64,
    /// (name, value, secret).
    pub outputs: Vec<(String, String, bool)>,
}

impl fmt::Debug for Reused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reused")
            .field("run_number", &self.run_number)
            .field("outputs", &OutputValues(&self.outputs))
            .finish()
    }
}

impl fmt::Debug for RunInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunInput")
            .field("run_id", &self.run_id)
            .field("run_number", &self.run_number)
            .field("pipeline", &self.pipeline)
            .field("params", &self.params)
            .field("vars", &self.vars)
            .field("secrets", &Names(&self.secrets))
            .field("connections", &self.connections)
            .field("git", &self.git)
            .field("trigger", &self.trigger)
            .field("pr_number", &self.pr_number)
            .field("checkout", &self.checkout)
            .field("run_dir", &self.run_dir)
            .field("limits", &self.limits)
            .field("reuse", &self.reuse)
            .finish()
    }
}

impl RunInput {
    /// Every value a run's logs, messages and outputs must not show: its secrets and the secret
    /// credentials of its connections.
    pub fn hidden_values(&self) -> impl Iterator<Item = &str> {
        let reused = self
            .reuse
            .values()
            .flat_map(|r| r.outputs.iter())
            .filter(|(_, _, secret)| *secret)
            .map(|(_, value, _)| value.as_str());
        self.secrets
            .values()
            .map(String::as_str)
            .chain(
                self.connections
                    .values()
                    .filter(|c| c.secret)
                    .map(|c| c.value.as_str()),
            )
            .chain(reused)
    }
}

/// A connection's credential as a run gets it. Its `Debug` hides a secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionValue {
    pub value: String,
    pub secret: bool,
}

impl fmt::Debug for ConnectionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionValue")
            .field("value", redact(&self.value, self.secret))
            .field("secret", &self.secret)
            .finish()
    }
}

/// The commit a run is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GitInfo {
    pub sha: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub repo: String,
}

/// The source of `gantry/git-checkout@v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkout {
    /// No repository: the built-in fails with a message saying so.
    None,
    /// A folder of a local work tree (`gantry run FILE`): its files as git sees them, uncommitted
    /// changes included, ignored files left out. Only an executor on this machine can copy it.
    WorkTree { root: PathBuf },
    /// A commit of a repository, by reference: what any executor can fetch, wherever it runs.
    Commit(CommitRef),
}

/// A commit of a watched repository, described by reference rather than by a folder of this
/// machine. The local executor finds the server's mirror of `repo` through the lookup it is given
/// (`LocalExecutor::with_mirrors`); a remote executor fetches `url` at `sha`, with `credentials`
/// kept out of any manifest (the run's own Secret on Argo). `Debug` hides the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRef {
    /// The repository's name in Gantry (its source).
    pub repo: String,
    /// Where it is fetched from.
    pub url: String,
    pub sha: String,
    /// For fetching `url` over https.
    pub credentials: Option<crate::source::mirror::Credentials>,
}

/// Knobs of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Steps running at once.
    pub parallelism: usize,
    /// Between SIGTERM and SIGKILL when a step is cancelled or times out.
    pub kill_grace: Duration,
    /// Largest accepted output file.
    pub max_output_bytes: usize,
    /// Longest log line kept whole; longer lines are cut into pieces of this size.
    pub max_line_bytes: usize,
    /// Log bytes kept per step (all its attempts); past it the step runs on, its output dropped.
    /// A line counts what keeping it costs ([`log_line_cost`]), not only its text.
    pub max_step_log: u64,
    /// Log bytes kept per run, counted the same way.
    pub max_run_log: u64,
    /// Bytes the run's own files (workspace, outputs) may take on this machine (`run_disk`);
    /// past it the run is stopped.
    pub run_disk: Option<u64>,
    /// Bytes that must stay free on the file system of the run's files (the store's reserve when
    /// they share it); a run that takes them is stopped.
    pub keep_free: u64,
}

impl Limits {
    /// The line a step's log gets where the caps cut it, whichever executor ran the step.
    pub fn cut_line(&self) -> String {
        format!(
            "log cut here: the step's output goes past the log limit ({} per step, {} per run); the step keeps running, its further output is dropped",
            human_bytes(self.max_step_log),
            human_bytes(self.max_run_log)
        )
    }
}

/// What a log line counts against the log limits: its bytes, its newline, and what the store
/// keeps beside its text (its time, stream, attempt and length: 21 bytes). Counting the text
/// alone let a flood of empty lines take 20 times the limit on disk (20 million of them, 20 MB of
/// output, made a 568 MB store under a 16 MiB limit).
pub fn log_line_cost(line: &str) -> u64 {
    line.len() as u64 + 24
}

/// A byte count as people write it: `16 MiB`, `4 KiB`, `100 bytes`; sizes of a GiB or more that
/// are no whole number of MiB to one decimal (`11.8 GiB`).
pub(crate) fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30))
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            parallelism: 16,
            kill_grace: Duration::from_secs(10),
            max_output_bytes: 1024 * 1024,
            max_line_bytes: 64 * 1024,
            max_step_log: 16 << 20,
            max_run_log: 64 << 20,
            run_disk: Some(10 << 30),
            keep_free: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines Gantry itself writes into a step's log (retries, built-in progress, errors).
    System,
}

/// How a step attempt, or a step, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Succeeded,
    /// Exited non-zero.
    Failed,
    /// Hit its own timeout.
    TimedOut,
    /// Could not run: spawn failure, bad output file, an unresolvable value.
    Error,
    /// Not run: `when` was false, or something it needs did not succeed.
    Skipped,
    /// Stopped by a cancel or the run's timeout.
    Cancelled,
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
    /// Hit the pipeline's `timeout`.
    TimedOut,
}

/// A published resource with every reference resolved. Credential values marked secret are
/// plaintext here; the store encrypts them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    pub name: String,
    pub version: String,
    pub category: Category,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub credentials: Vec<PublishedCredentials>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedCredentials {
    pub environments: Vec<String>,
    pub parameters: Vec<PublishedCredential>,
}

#[cfg(test)]
impl Publication {
    /// For tests: a database `name`, version 1.0.0, published for `environments` with a
    /// `DB_HOST` of `db.internal` and a secret `DB_PASSWORD`.
    pub(crate) fn example(name: &str, environments: &[&str], password: &str) -> Publication {
        Publication {
            name: name.into(),
            version: "1.0.0".into(),
            category: Category::Database,
            description: None,
            tags: Vec::new(),
            properties: BTreeMap::new(),
            credentials: vec![PublishedCredentials {
                environments: environments.iter().map(|e| e.to_string()).collect(),
                parameters: vec![
                    PublishedCredential {
                        key: "DB_HOST".into(),
                        value: "db.internal".into(),
                        is_secret: false,
                    },
                    PublishedCredential {
                        key: "DB_PASSWORD".into(),
                        value: password.into(),
                        is_secret: true,
                    },
                ],
            }],
        }
    }
}

/// Its `Debug` hides the value of a secret credential.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedCredential {
    pub key: String,
    pub value: String,
    pub is_secret: bool,
}

impl fmt::Debug for PublishedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishedCredential")
            .field("key", &self.key)
            .field("value", redact(&self.value, self.is_secret))
            .field("is_secret", &self.is_secret)
            .finish()
    }
}

/// What an attempt is, in the words of the executor that runs it: the identity to find it by
/// (to follow it, stop it, or tell after a restart whether it is still there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttemptHandle {
    /// A process on this machine, also the id of its process group.
    Process { pid: u32 },
    /// Work done inside Gantry's own process (a built-in, or an attempt that could not start).
    Builtin,
    /// Processes in a run's sandbox on this machine: `sandbox` is the host's pid of the sandbox
    /// (bubblewrap), whose namespaces the step's processes are in (`nsenter --target`); each step
    /// has a PID namespace of its own inside it.
    Sandboxed { sandbox: u32 },
    /// A node of an Argo Workflow, and the pod that runs it once there is one.
    Argo {
        workflow: String,
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
    },
}

impl AttemptHandle {
    /// A process, or `Builtin` for pid 0 (how attempts were recorded before handles existed).
    pub fn process(pid: u32) -> AttemptHandle {
        if pid == 0 {
            AttemptHandle::Builtin
        } else {
            AttemptHandle::Process { pid }
        }
    }

    /// The process id, for a process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            AttemptHandle::Process { pid } => Some(*pid),
            _ => None,
        }
    }
}

/// Why an executor could not run a run at all, as opposed to a step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// What runs the steps cannot be reached (an Argo Server that is down or answers 5xx): the
    /// steps did not fail, they were never run to an end.
    #[error("executor `{executor}` is unavailable: {server} {reason}")]
    Unavailable {
        /// The executor's name.
        executor: String,
        /// The server it could not reach (an address, never a token).
        server: String,
        reason: String,
    },
}

/// A run whose Gantry process went away (a crash, kill -9), as its executor knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRun {
    pub run_id: String,
    /// Its identity in the executor, when it has one (`Event::Attached`).
    pub external_id: Option<String>,
}

/// What an executor did about a lost run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing of it runs any more; `stopped` leftover processes (or pods) were stopped. The run
    /// is interrupted.
    Ended { stopped: usize },
    /// It outlived Gantry where it runs (an Argo Workflow, found by its name or by its run's
    /// label): the caller picks it up again with `Executor::reattach`.
    Reattach { external_id: String },
}

/// What the store already holds of a run that an executor picks up again, per plan step, so that
/// nothing is told twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    pub steps: Vec<ResumedStep>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumedStep {
    /// Attempts recorded as started, and as finished.
    pub started: u32,
    pub finished: u32,
    /// How the step ended, when it is over (`None` while it is not, or when it was cut off).
    pub done: Option<StepStatus>,
    /// Log lines recorded of the last started attempt.
    pub lines: usize,
}

/// What an executor reports, in order, for one run. `step` is an index into `Plan::steps`. Its
/// `Debug` hides the values of secret outputs.
#[derive(Clone, PartialEq)]
pub enum Event {
    /// The run has an identity outside Gantry (an Argo Workflow's name), sent once, before any
    /// step starts; the local executor has none and never sends it.
    Attached { external_id: String },
    /// An attempt started.
    StepStarted {
        step: usize,
        attempt: u32,
        handle: AttemptHandle,
        at: DateTime<Utc>,
    },
    /// Masked log lines of one stream, read together (never none): one event per read of a
    /// step's pipe, not per line, so that a step printing a million lines a second costs the
    /// channel and the recorder a few thousand events.
    Log {
        step: usize,
        attempt: u32,
        stream: Stream,
        lines: Vec<String>,
        at: DateTime<Utc>,
    },
    /// An attempt ended. `retry_in` is set when another attempt will follow.
    AttemptFinished {
        step: usize,
        attempt: u32,
        status: StepStatus,
        exit_code: Option<i32>,
        message: Option<String>,
        retry_in: Option<Duration>,
        at: DateTime<Utc>,
    },
    /// The step's outputs, read after its successful last attempt: (name, value, secret).
    Outputs {
        step: usize,
        values: Vec<(String, String, bool)>,
    },
    /// The step is over: its final status (after retries) and why, when it did not succeed.
    StepFinished {
        step: usize,
        status: StepStatus,
        message: Option<String>,
        at: DateTime<Utc>,
    },
    /// `gantry/marketplace-publish@v1` resolved its resource.
    Published {
        step: usize,
        publication: Publication,
    },
    /// The Markdown a step wrote to `$GANTRY_SUMMARY`, masked and capped, read when the step
    /// ended.
    Summary { step: usize, text: String },
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Attached { external_id } => f
                .debug_struct("Attached")
                .field("external_id", external_id)
                .finish(),
            Event::StepStarted {
                step,
                attempt,
                handle,
                at,
            } => f
                .debug_struct("StepStarted")
                .field("step", step)
                .field("attempt", attempt)
                .field("handle", handle)
                .field("at", at)
                .finish(),
            Event::Log {
                step,
                attempt,
                stream,
                lines,
                at,
            } => f
                .debug_struct("Log")
                .field("step", step)
                .field("attempt", attempt)
                .field("stream", stream)
                .field("lines", lines)
                .field("at", at)
                .finish(),
            Event::AttemptFinished {
                step,
                attempt,
                status,
                exit_code,
                message,
                retry_in,
                at,
            } => f
                .debug_struct("AttemptFinished")
                .field("step", step)
                .field("attempt", attempt)
                .field("status", status)
                .field("exit_code", exit_code)
                .field("message", message)
                .field("retry_in", retry_in)
                .field("at", at)
                .finish(),
            Event::Summary { step, text } => f
                .debug_struct("Summary")
                .field("step", step)
                .field("bytes", &text.len())
                .finish(),
            Event::Outputs { step, values } => f
                .debug_struct("Outputs")
                .field("step", step)
                .field("values", &OutputValues(values))
                .finish(),
            Event::StepFinished {
                step,
                status,
                message,
                at,
            } => f
                .debug_struct("StepFinished")
                .field("step", step)
                .field("status", status)
                .field("message", message)
                .field("at", at)
                .finish(),
            Event::Published { step, publication } => f
                .debug_struct("Published")
                .field("step", step)
                .field("publication", publication)
                .finish(),
        }
    }
}

/// Prints [`mask::MASK`]: what `Debug` shows instead of a secret value.
struct Masked;

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(mask::MASK)
    }
}

/// `value` for `Debug`, masked when it is secret.
pub(crate) fn redact<T: fmt::Debug>(value: &T, secret: bool) -> &dyn fmt::Debug {
    if secret { &Masked } else { value }
}

/// A map of secret values for `Debug`: the names, each with [`mask::MASK`].
struct Names<'a, V>(&'a BTreeMap<String, V>);

impl<V> fmt::Debug for Names<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, Masked)))
            .finish()
    }
}

/// Outputs as (name, value, secret) for `Debug`, with secret values masked.
pub(crate) struct OutputValues<'a>(pub &'a [(String, String, bool)]);

impl fmt::Debug for OutputValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|(n, v, secret)| (n, redact(v, *secret), secret)),
            )
            .finish()
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs plans. When `execute` answers `Ok`, the implementation has sent a `StepFinished` for
/// every step of the plan (skipped and cancelled ones included). `Err` means the run could not be
/// carried to its end by this executor (`ExecutorError::Unavailable`); the steps it did not
/// finish are then ended by the caller, with the error's words.
pub trait Executor: Send + Sync {
    /// What kind of executor this is (`local`, `argo`), recorded on the runs it runs.
    fn kind(&self) -> &'static str;

    fn execute<'a>(
        &'a self,
        plan: &'a Plan,
        input: &'a RunInput,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunOutcome, ExecutorError>>;

    /// After Gantry starts, before it runs anything: cleans up after `lost` runs (one `Recovery`
    /// each, in order) and whatever else it left in `work_dir`, the folder of run directories.
    fn recover(&self, work_dir: &Path, lost: &[LostRun]) -> Vec<Recovery>;

    /// Follows a run that `recover` answered `Reattach` for, from where the store left it, to its
    /// end, as `execute` would have. Only executors whose runs outlive Gantry do this.
    fn reattach<'a>(
        &'a self,
        plan: &'a Plan,
        input: &'a RunInput,
        resumed: &'a Resumed,
        external_id: &'a str,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunOutcome, ExecutorError>> {
        let _ = (plan, input, resumed, external_id, events, cancel);
        Box::pin(async move {
            Err(ExecutorError::Unavailable {
                executor: self.kind().to_string(),
                server: "this machine".into(),
                reason: "cannot pick up a run after a restart".into(),
            })
        })
    }
}

/// The values references resolve to during a run: the input plus the outputs written so far. Its
/// `Debug` shows the names of secrets and outputs, not their values (outputs may be secret).
#[derive(Clone, Default)]
pub struct Values {
    pub params: BTreeMap<String, String>,
    pub vars: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// `NAME.KEY` → a connection's credential (see `RunInput::connections`).
    pub connections: BTreeMap<String, ConnectionValue>,
    /// step name → output name → value. Outputs of skipped steps resolve to "".
    pub outputs: BTreeMap<String, BTreeMap<String, String>>,
    pub run_id: String,
    pub run_number: u64,
    pub git: Option<GitInfo>,
    pub trigger: String,
    pub pr_number: Option<u64>,
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outputs: BTreeMap<&String, Names<'_, String>> = self
            .outputs
            .iter()
            .map(|(step, o)| (step, Names(o)))
            .collect();
        f.debug_struct("Values")
            .field("params", &self.params)
            .field("vars", &self.vars)
            .field("secrets", &Names(&self.secrets))
            .field("connections", &self.connections)
            .field("outputs", &outputs)
            .field("run_id", &self.run_id)
            .field("run_number", &self.run_number)
            .field("git", &self.git)
            .field("trigger", &self.trigger)
            .field("pr_number", &self.pr_number)
            .finish()
    }
}

impl Values {
    pub fn from_input(input: &RunInput) -> Values {
        Values {
            params: input.params.clone(),
            vars: input.vars.clone(),
            secrets: input.secrets.clone(),
            connections: input.connections.clone(),
            outputs: BTreeMap::new(),
            run_id: input.run_id.clone(),
            run_number: input.run_number,
            git: input.git.clone(),
            trigger: input.trigger.clone(),
            pr_number: input.pr_number,
        }
    }

    /// The value of a reference, or `None` when it has none (validation makes that rare: an
    /// output of a step that has not run, an input outside a template).
    pub fn resolve(&self, r: &Ref) -> Option<String> {
        match r {
            Ref::Param(n) => self.params.get(n).cloned(),
            Ref::Var(n) => self.vars.get(n).cloned(),
            Ref::Secret(n) => self.secrets.get(n).cloned(),
            Ref::Connection { name, key } => self
                .connections
                .get(&format!("{name}.{key}"))
                .map(|c| c.value.clone()),
            Ref::StepOutput { step, output } => self
                .outputs
                .get(step)
                .map(|o| o.get(output).cloned().unwrap_or_default()),
            Ref::Input(_) => None,
            Ref::RunId => Some(self.run_id.clone()),
            Ref::RunNumber => Some(self.run_number.to_string()),
            Ref::GitSha => Some(self.git.as_ref().map(|g| g.sha.clone()).unwrap_or_default()),
            Ref::GitRef => Some(
                self.git
                    .as_ref()
                    .map(|g| g.reference.clone())
                    .unwrap_or_default(),
            ),
            Ref::GitRepo => Some(
                self.git
                    .as_ref()
                    .map(|g| g.repo.clone())
                    .unwrap_or_default(),
            ),
            Ref::TriggerKind => Some(self.trigger.clone()),
            Ref::PrNumber => Some(self.pr_number.map(|n| n.to_string()).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_write_them() {
        for (n, shown) in [
            (100, "100 bytes"),
            (4 << 10, "4 KiB"),
            (16 << 20, "16 MiB"),
            (10 << 30, "10 GiB"),
            (12_637_691_904, "11.8 GiB"),
        ] {
            assert_eq!(human_bytes(n), shown, "{n}");
        }
    }

    #[test]
    fn debug_shows_names_but_no_secret_value() {
        let secrets = BTreeMap::from([("DB_PASSWORD".to_string(), "hunter2".to_string())]);
        let input = RunInput {
            run_id: "r1".into(),
            run_number: 1,
            pipeline: "p".into(),
            params: BTreeMap::new(),
            vars: BTreeMap::new(),
            secrets,
            connections: BTreeMap::from([(
                "db.password".to_string(),
                ConnectionValue {
                    value: "conn-pw-55".into(),
                    secret: true,
                },
            )]),
            git: None,
            trigger: "manual".into(),
            pr_number: None,
            checkout: Checkout::None,
            run_dir: PathBuf::from("/tmp/r1"),
            reuse: Default::default(),
            limits: Limits::default(),
        };
        let mut values = Values::from_input(&input);
        let outputs = BTreeMap::from([("token".to_string(), "t0ps3cret".to_string())]);
        values.outputs.insert("login".into(), outputs);
        let event = Event::Outputs {
            step: 0,
            values: vec![
                ("token".into(), "t0ps3cret".into(), true),
                ("user".into(), "alice".into(), false),
            ],
        };
        let credential = PublishedCredential {
            key: "password".into(),
            value: "hunter2".into(),
            is_secret: true,
        };
        let shown = format!("{input:?} {values:?} {event:?} {credential:?}");
        assert!(
            !shown.contains("hunter2")
                && !shown.contains("t0ps3cret")
                && !shown.contains("conn-pw-55"),
            "{shown}"
        );
        for name in ["DB_PASSWORD", "login", "token", "alice", "password"] {
            assert!(shown.contains(name), "{name}: {shown}");
        }
    }
}
