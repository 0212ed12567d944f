//! The REST API's answers as types: what `server/api.rs` serializes, and what the OpenAPI
//! document's schemas are generated from (`server/openapi.rs`, with schemars), so the two cannot
//! drift apart. Each answer chooses its fields from the store's records explicitly: a field
//! added to a record reaches the API only when it is added here (the exhaustive destructuring
//! in each `From` makes the compiler ask).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::executor::GitInfo;
use crate::marketplace::RunPublication;
use crate::spec::model::{Parameter, Triggers};
use crate::store::{
    OutputRecord, PipelineRecord, PipelineVersion, RunRecord, RunStatus, StepRecord, Trigger,
};

/// What every answer about a run says of it; the step names or records come beside it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RunFacts {
    /// The run's id: 26 characters, sortable (a newer run has a greater id).
    pub id: String,
    /// 1, 2, 3, … per pipeline.
    pub number: u64,
    /// Where the pipeline came from: `local`, `file`, or a repository's name.
    pub source: String,
    pub pipeline: String,
    /// The version of the pipeline the run ran.
    pub version: u32,
    /// The run's parameters, as typed values.
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
    /// Why the run ended as it did, when its steps do not say it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The resolved concurrency group: runs of one group never overlap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<String>,
    /// The pull request the run belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    /// Why reporting the run to its forge failed, after Gantry gave up retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writeback_error: Option<String>,
    /// The kind of executor that ran it (`local`, `argo`); absent for runs that never started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The run's identity in its executor, when it has one (an Argo Workflow's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The run this one retries from its failed step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

impl RunFacts {
    /// The facts of `run`, and its step names in plan order.
    fn of(run: RunRecord) -> (RunFacts, Vec<String>) {
        // Every field named: a new one is a decision to make here.
        let RunRecord {
            id,
            number,
            source,
            pipeline,
            version,
            parameters,
            trigger,
            status,
            git,
            created_at,
            started_at,
            finished_at,
            message,
            steps,
            owner: _,
            concurrency,
            pr,
            writeback_error,
            idempotency_key: _,
            executor,
            external_id,
            retry_of,
        } = run;
        let facts = RunFacts {
            id,
            number,
            source,
            pipeline,
            version,
            parameters,
            trigger,
            status,
            git,
            created_at,
            started_at,
            finished_at,
            message,
            concurrency,
            pr,
            writeback_error,
            executor,
            external_id,
            retry_of,
        };
        (facts, steps)
    }
}

/// A run, with its step names in plan order.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Run {
    #[serde(flatten)]
    pub run: RunFacts,
    /// The step names in plan order.
    pub steps: Vec<String>,
}

impl From<RunRecord> for Run {
    fn from(record: RunRecord) -> Run {
        let (run, steps) = RunFacts::of(record);
        Run { run, steps }
    }
}

/// A page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
}

impl RunList {
    pub fn of(runs: Vec<RunRecord>) -> RunList {
        RunList {
            runs: runs.into_iter().map(Run::from).collect(),
        }
    }
}

/// A run with its steps, outputs (secret ones without their value) and what it published.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunFacts,
    /// Each step's record, in plan order.
    pub steps: Vec<StepRecord>,
    pub outputs: Vec<OutputRecord>,
    pub published: Vec<RunPublication>,
}

impl RunDetail {
    pub fn of(
        run: RunRecord,
        steps: Vec<StepRecord>,
        outputs: Vec<OutputRecord>,
        published: Vec<RunPublication>,
    ) -> RunDetail {
        RunDetail {
            run: RunFacts::of(run).0,
            steps,
            outputs,
            published,
        }
    }
}

/// A validation error of a pipeline's definition, with its place in the file.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SpecError {
    /// The file, as the source names it.
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
    /// `path:line:col: message`, as `gantry validate` prints it.
    pub text: String,
}

/// A pipeline's newest run, in short.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RunSummary {
    pub id: String,
    pub number: u64,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> RunSummary {
        RunSummary {
            id: r.id.clone(),
            number: r.number,
            status: r.status,
            created_at: r.created_at,
            finished_at: r.finished_at,
        }
    }
}

/// A pipeline: where it is read from, the version its runs use, whether its definition as last
/// read is valid (and if not, why), and its newest run.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Pipeline {
    /// `local` for a pipeline defined in Gantry, else the repository's name.
    pub source: String,
    pub name: String,
    /// The file it is read from, relative to the repository's root ("" for a local one).
    pub path: String,
    /// The version runs use: the newest valid one; null while no valid text was ever seen.
    pub version: Option<u32>,
    /// The commit the definition was last read at.
    pub commit: Option<String>,
    /// Whether the definition as last read is valid; when not, `errors` says why and
    /// `version` is still the last valid one.
    pub valid: bool,
    pub errors: Vec<SpecError>,
    /// The file is gone from its branch: no new runs; its runs and versions stay.
    pub retired: bool,
    /// A local pipeline's executor; null: the default (a repository's pipelines go to its
    /// `executor`).
    pub executor: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub last_run: Option<RunSummary>,
}

impl Pipeline {
    pub fn of(record: &PipelineRecord, last_run: Option<&RunRecord>) -> Pipeline {
        let PipelineRecord {
            source,
            name,
            path,
            version,
            commit,
            valid,
            errors,
            retired,
            updated_at,
            executor,
        } = record.clone();
        Pipeline {
            source,
            name,
            path,
            version,
            commit,
            valid,
            errors: errors
                .into_iter()
                .map(|e| SpecError {
                    text: e.to_string(),
                    path: e.path,
                    line: e.line,
                    column: e.column,
                    message: e.message,
                })
                .collect(),
            retired,
            executor,
            updated_at,
            last_run: last_run.map(RunSummary::from),
        }
    }
}

/// The pipelines, by source and name.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PipelineList {
    pub pipelines: Vec<Pipeline>,
}

/// A local pipeline as a PUT left it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AppliedPipeline {
    #[serde(flatten)]
    pub pipeline: Pipeline,
    /// Whether the PUT made a new version (false: the text was the current one).
    pub changed: bool,
}

/// One version of a pipeline's definition.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct VersionSummary {
    pub version: u32,
    /// The commit it was read at (none for a local pipeline).
    pub commit: Option<String>,
    /// The file it was read from.
    pub path: String,
    pub created_at: DateTime<Utc>,
}

/// A pipeline with its current definition (text and what it declares) and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PipelineDetail {
    #[serde(flatten)]
    pub pipeline: Pipeline,
    /// The current version's text.
    pub spec: Option<String>,
    /// The parameters a run takes; null without a valid version.
    pub parameters: Option<Vec<Parameter>>,
    /// What starts its runs; null without a valid version.
    pub triggers: Option<Triggers>,
    /// The variables its runs read; null without a valid version.
    pub variables: Option<Vec<String>>,
    /// The secrets its runs read (names); null without a valid version.
    pub secrets: Option<Vec<String>>,
    /// Every version, oldest first.
    pub versions: Vec<VersionSummary>,
}

impl PipelineDetail {
    /// `record` with its newest run and its versions; the current one's text is checked again
    /// for what it declares.
    pub fn of(
        record: &PipelineRecord,
        last_run: Option<&RunRecord>,
        versions: &[PipelineVersion],
    ) -> PipelineDetail {
        let current = record
            .version
            .and_then(|v| versions.iter().find(|x| x.version == v));
        let declared = current.and_then(|v| crate::spec::check(&v.text).pipeline);
        PipelineDetail {
            pipeline: Pipeline::of(record, last_run),
            spec: current.map(|v| v.text.clone()),
            parameters: declared.as_ref().map(|p| p.parameters.clone()),
            triggers: declared.as_ref().map(|p| p.on.clone()),
            variables: declared.as_ref().map(|p| p.variables.clone()),
            secrets: declared.as_ref().map(|p| p.secrets.clone()),
            versions: versions
                .iter()
                .map(|v| VersionSummary {
                    version: v.version,
                    commit: v.commit.clone(),
                    path: v.path.clone(),
                    created_at: v.created_at,
                })
                .collect(),
        }
    }
}

/// Marketplace resources, by name.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ResourceList {
    pub resources: Vec<crate::marketplace::ResourceSummary>,
}

/// Every connection.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ConnectionList {
    pub connections: Vec<crate::store::ConnectionRecord>,
}

/// What went wrong, and how to fix it: every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Error {
    /// What went wrong, and how to fix it.
    pub error: String,
}

/// Variables, global and per pipeline, with their values.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct VariableList {
    pub variables: Vec<crate::store::ConfigEntry>,
}

/// Secrets, global and per pipeline: names only, never a value.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SecretList {
    pub secrets: Vec<crate::store::ConfigEntry>,
}

/// A watched repository and what Gantry last saw of it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SourceStatus {
    pub name: String,
    /// Its URL, with any credentials in it left out.
    pub url: String,
    pub branch: String,
    /// The branch head the pipelines were last read at.
    pub head: Option<String>,
    pub synced_at: Option<DateTime<Utc>>,
    /// Why the last sync failed, if it did; cleared by the next good one.
    pub error: Option<String>,
}

/// The watched repositories.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SourceList {
    pub sources: Vec<SourceStatus>,
}

/// Whether the server takes new work.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Why the server takes no new work; empty when ready.
    pub reasons: Vec<String>,
}

/// Work taken for later: a webhook delivery stored (or a duplicate, or an event Gantry does
/// not act on, with the reason), or a sync asked for.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Accepted {
    /// False for an event Gantry does not act on (`reason` says why).
    pub accepted: bool,
    /// A delivery seen before: stored once, acted on once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// The delivery's id, as the forge sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// The watched repository it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AuditList {
    pub entries: Vec<crate::store::audit::AuditEntry>,
    /// Pass as `before` for the next page; null at the end.
    pub next: Option<String>,
}
