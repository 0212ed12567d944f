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
use crate::store::{OutputRecord, RunRecord, RunStatus, StepRecord, Trigger};

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
