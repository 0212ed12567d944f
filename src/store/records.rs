//! The records the store keeps, as they are serialised (JSON) under their keys.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::executor::{AttemptHandle, GitInfo, Stream};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The process running it went away (crash, kill -9, power loss), or the service stopped
    /// before it finished.
    Interrupted,
    /// Never started: its concurrency group was busy and the pipeline's policy is `skip`.
    Skipped,
}

impl RunStatus {
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Trigger {
    /// `manual`, `push`, `pullRequest`, `comment` or `schedule`.
    pub kind: String,
    /// Who or what, in words: `gantry run (uid 1000)`, `push by alice`, `cron 0 3 * * *`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The process that owns an active run. A run whose owner is gone is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process start time (clock ticks since boot, from /proc), to tell a reused pid apart.
    pub start_time: u64,
}

/// One run of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Sortable: newer runs have greater ids.
    pub id: String,
    /// 1, 2, 3, ... per pipeline.
    pub number: u64,
    /// Where the pipeline came from: `file` (gantry run FILE), `local`, or a repository name.
    pub source: String,
    pub pipeline: String,
    /// The pipeline version the run used.
    pub version: u32,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub trigger: Trigger,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<GitInfo>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the run ended the way it did, when that is not obvious from its steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Step names in plan order; their records are under the `steps` tree.
    pub steps: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// The resolved concurrency group: runs with the same group never overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<String>,
    /// The pull request the run belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    /// Why reporting the run to its forge failed, after the outbox gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback_error: Option<String>,
    /// The key it was created under, once (a webhook delivery's run): see `NewRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The executor that ran it (`local`, `argo`), once it started; runs recorded before this
    /// existed read as `None`, and ran locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The run's identity in its executor, when it has one outside Gantry (an Argo Workflow's
    /// name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The run this one retries from its failed step: the steps that succeeded there were not
    /// run again, their outputs reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

impl RunRecord {
    /// The run's parameter values as the text the steps see.
    pub fn param_texts(&self) -> BTreeMap<String, String> {
        self.parameters
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

/// The state of one step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    #[serde(rename = "timed-out")]
    TimedOut,
    Error,
    Skipped,
    Cancelled,
    Interrupted,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::TimedOut => "timed-out",
            StepState::Error => "error",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
            StepState::Interrupted => "interrupted",
        }
    }

    pub fn is_done(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Running)
    }
}

impl From<crate::executor::StepStatus> for StepState {
    fn from(s: crate::executor::StepStatus) -> StepState {
        use crate::executor::StepStatus as S;
        match s {
            S::Succeeded => StepState::Succeeded,
            S::Failed => StepState::Failed,
            S::TimedOut => StepState::TimedOut,
            S::Error => StepState::Error,
            S::Skipped => StepState::Skipped,
            S::Cancelled => StepState::Cancelled,
        }
    }
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(from = "AttemptWire", into = "AttemptWire")]
pub struct Attempt {
    pub number: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Option<StepState>,
    pub exit_code: Option<i32>,
    /// What ran the attempt, in its executor's words (a process, an Argo node).
    pub handle: AttemptHandle,
    pub message: Option<String>,
}

/// An attempt as stored and answered: `handle`, and `pid` beside it for a process (what records
/// held before handles existed, and what API clients of that time read). A record with only a
/// `pid` reads as a process, or as a built-in for pid 0.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct AttemptWire {
    number: u32,
    started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<StepState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    /// The process id for a process, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// What ran the attempt: a process, a built-in, or an Argo node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handle: Option<AttemptHandle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl From<AttemptWire> for Attempt {
    fn from(w: AttemptWire) -> Attempt {
        let handle = w
            .handle
            .unwrap_or_else(|| AttemptHandle::process(w.pid.unwrap_or(0)));
        Attempt {
            number: w.number,
            started_at: w.started_at,
            finished_at: w.finished_at,
            status: w.status,
            exit_code: w.exit_code,
            handle,
            message: w.message,
        }
    }
}

impl From<Attempt> for AttemptWire {
    fn from(a: Attempt) -> AttemptWire {
        AttemptWire {
            number: a.number,
            started_at: a.started_at,
            finished_at: a.finished_at,
            status: a.status,
            exit_code: a.exit_code,
            pid: Some(a.handle.pid().unwrap_or(0)),
            handle: Some(a.handle),
            message: a.message,
        }
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Step")]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The Markdown the step wrote to `$GANTRY_SUMMARY` (masked, capped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl StepRecord {
    pub fn pending(name: &str) -> StepRecord {
        StepRecord {
            name: name.to_string(),
            state: StepState::Pending,
            attempts: Vec::new(),
            message: None,
            started_at: None,
            finished_at: None,
            summary: None,
        }
    }

    /// Exit code of the last attempt.
    pub fn exit_code(&self) -> Option<i32> {
        self.attempts.last().and_then(|a| a.exit_code)
    }

    pub fn duration_ms(&self) -> Option<i64> {
        match (self.started_at, self.finished_at) {
            (Some(s), Some(f)) => Some((f - s).num_milliseconds()),
            _ => None,
        }
    }
}

/// One stored log line (already masked by the executor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    pub stream: Stream,
    pub text: String,
}

impl LogLine {
    /// The line as written to the store, borrowing its text.
    pub fn borrowed(&self) -> NewLogLine<'_> {
        NewLogLine {
            at: self.at,
            attempt: self.attempt,
            stream: self.stream,
            text: &self.text,
        }
    }
}

/// A log line to store, its text borrowed from whoever holds it (the recorder writes lines
/// straight from the executor's events, without a copy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewLogLine<'a> {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    pub stream: Stream,
    pub text: &'a str,
}

/// A step output as the store returns it: secret values are never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Output")]
pub struct OutputRecord {
    pub step: String,
    pub name: String,
    pub secret: bool,
    /// `None` for secret outputs.
    pub value: Option<String>,
}

/// A version of a pipeline definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineVersion {
    pub version: u32,
    /// The file text as it was.
    pub text: String,
    /// Where it was read from (a path in a repository or on disk).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A variable or secret name with its scope; values of secrets are never listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigEntry {
    /// `None` for global entries, else the pipeline name.
    pub pipeline: Option<String>,
    pub name: String,
    /// The value of a variable; always `None` for a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A secret released to runs at unprotected refs (`--unprotected`); always false for a
    /// variable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unprotected: bool,
}

/// Which runs a secret is released to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretRelease {
    /// Only runs at a protected ref of their repository (and runs Gantry trusts: local pipelines,
    /// `gantry run FILE`, manual and scheduled runs). What a secret is unless set otherwise.
    Protected,
    /// Every run that declares it, also at a feature branch, a pull request's head or a fork.
    Unprotected,
}

/// A pipeline Gantry knows of: from a watched repository (`source` is the repository's name) or
/// defined in Gantry (`source` is `local`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub source: String,
    pub name: String,
    /// The file it is read from, relative to the repository root (`local` pipelines: "").
    pub path: String,
    /// The version runs use: the newest valid one. `None` while no valid text was ever seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The commit the definition was last read at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether the definition as last read is valid; when not, `errors` says why and `version`
    /// still points at the last valid one.
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PipelineError>,
    /// The file is gone from the branch: no new runs; its runs and versions stay.
    #[serde(default)]
    pub retired: bool,
    pub updated_at: DateTime<Utc>,
    /// The executor its runs go to, for a pipeline defined in Gantry (`local`); the default when
    /// `None`. A repository's pipelines go where `[[repos]] executor` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
}

/// One validation error of a pipeline file, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineError {
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.line, self.column, self.message
        )
    }
}

/// What Gantry last saw of a watched repository.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SourceState {
    /// The branch head the pipelines were last reconciled at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<DateTime<Utc>>,
    /// Why the last sync failed, if it did (URLs redacted); cleared by the next good sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
