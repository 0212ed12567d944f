//! Run orchestration: from a run request to a finished run in the store.
//!
//! `prepare` checks parameter values against their declarations, resolves variables and secrets,
//! records the pipeline version and creates the run (queued, flushed). `execute` hands the plan to
//! an executor and turns its events into store records (steps, log chunks, outputs, publications)
//! while passing them on to an observer (the CLI's progress display). `recover` marks runs whose
//! process is gone as interrupted and kills what they left running.

pub mod executors;
pub mod queue;
pub mod recover;
pub mod trust;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    Checkout, ConnectionValue, Event, Executor, GitInfo, Limits, RunInput, RunOutcome,
};
use crate::plan::{self, Plan};
use crate::spec::model::{ParamValue, Pipeline};
use crate::spec::values;
use crate::store::{
    LogLine, NewLogLine, NewRun, RunRecord, RunStatus, StepRecord, StepState, Store, StoreError,
    Trigger,
};

/// Everything needed to start a run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// `file` for `gantry run FILE`, `local`, or a repository's name.
    pub source: String,
    pub pipeline: Pipeline,
    /// The definition's text and where it came from, recorded as a pipeline version.
    pub text: String,
    pub path: String,
    /// Parameter values as given (text), checked against the declarations by `prepare`.
    pub params: BTreeMap<String, String>,
    /// Variables given for this run only; they win over stored ones.
    pub var_overrides: BTreeMap<String, String>,
    pub trigger: Trigger,
    pub git: Option<GitInfo>,
    /// The pipeline version, when the caller knows it; else `text` is recorded as a version.
    pub version: Option<u32>,
    pub checkout: Checkout,
    pub limits: Limits,
    /// Keep the run's directory (workspace, output files) after the run, for debugging. By default
    /// it is removed: output files may hold secret values, and nothing may rest in plaintext.
    pub keep_run_dir: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A parameter value does not fit its declaration; nothing was recorded.
    #[error("{0}")]
    Parameter(String),
    /// The service takes no new runs (it is shutting down).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A run created in the store and ready to execute.
#[derive(Debug)]
pub struct Prepared {
    pub run: RunRecord,
    pub plan: Plan,
    input: RunInput,
    /// Set when the run must fail before any step starts (a missing variable or secret).
    refusal: Option<String>,
    keep_run_dir: bool,
}

impl Prepared {
    /// Why the run will fail before any step starts, if it will (it ends with this message).
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }
}

/// "variables `a`, `b` not set (gantry vars set a ...)" when declared names have no value.
fn missing(
    what: &str,
    declared: &[String],
    have: &BTreeMap<String, String>,
    how: impl Fn(&str) -> String,
) -> Option<String> {
    let names: Vec<&str> = declared
        .iter()
        .filter(|d| !have.contains_key(*d))
        .map(String::as_str)
        .collect();
    let first = names.first()?;
    let listed = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let plural = if names.len() > 1 { "s" } else { "" };
    Some(format!("{what}{plural} {listed} not set ({})", how(first)))
}

/// Checks typed parameter values: every given one must be declared and fit; every required one
/// must be given or have a default. Returns the values as text, defaults filled in.
pub fn check_params(
    p: &Pipeline,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ParamValue>, String> {
    let mut out = BTreeMap::new();
    for (name, raw) in given {
        let Some(param) = p.parameter(name) else {
            let known: Vec<&str> = p.parameters.iter().map(|x| x.name.as_str()).collect();
            let hint = crate::spec::diagnostic::did_you_mean(name, known.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    if known.is_empty() {
                        " (the pipeline declares no parameters)".to_string()
                    } else {
                        format!(" (declared: {})", known.join(", "))
                    }
                });
            return Err(format!("unknown parameter `{name}`{hint}"));
        };
        out.insert(name.clone(), values::check_param_text(param, raw)?);
    }
    for param in &p.parameters {
        if out.contains_key(&param.name) {
            continue;
        }
        match &param.default {
            Some(d) => {
                out.insert(param.name.clone(), d.clone());
            }
            None if param.required => {
                return Err(format!(
                    "parameter `{}` is required; give it with -p {}=VALUE",
                    param.name, param.name
                ));
            }
            None => {
                out.insert(param.name.clone(), ParamValue::String(String::new()));
            }
        }
    }
    Ok(out)
}

fn param_json(v: &ParamValue) -> serde_json::Value {
    match v {
        ParamValue::String(s) => serde_json::Value::String(s.clone()),
        ParamValue::Integer(i) => serde_json::Value::from(*i),
        ParamValue::Number(n) => serde_json::Value::from(*n),
        ParamValue::Boolean(b) => serde_json::Value::Bool(*b),
    }
}

/// Creates the run of a `gantry run FILE` (or any caller that starts at once): parameters
/// checked, version recorded, run created and owned by this process, variables and secrets
/// resolved.
pub fn prepare(store: &Store, req: RunRequest) -> Result<Prepared, StartError> {
    let params = check_params(&req.pipeline, &req.params).map_err(StartError::Parameter)?;
    check_var_overrides(&req.pipeline, &req.var_overrides)?;
    let name = req.pipeline.name().to_string();
    let version = match req.version {
        Some(v) => v,
        None => store.record_version(
            &req.source,
            &name,
            &req.text,
            &req.path,
            req.git.as_ref().map(|g| g.sha.as_str()),
        )?,
    };
    let run = enqueue(
        store,
        &req.pipeline,
        Enqueue {
            source: req.source.clone(),
            version,
            params,
            trigger: req.trigger,
            git: req.git,
            concurrency: None,
            status: RunStatus::Queued,
            message: None,
            owner: recover::current_owner(),
            pr: None,
            idempotency_key: None,
            retry_of: None,
        },
    )?;
    start(
        store,
        run,
        &req.pipeline,
        Start {
            checkout: req.checkout,
            limits: req.limits,
            keep_run_dir: req.keep_run_dir,
            var_overrides: req.var_overrides,
            release: trust::Release::All,
            hints: Hints::DataDir,
        },
    )
}

fn check_var_overrides(
    pipeline: &Pipeline,
    overrides: &BTreeMap<String, String>,
) -> Result<(), StartError> {
    for name_given in overrides.keys() {
        if !pipeline.variables.contains(name_given) {
            let declared = &pipeline.variables;
            let hint = crate::spec::diagnostic::did_you_mean(
                name_given,
                declared.iter().map(String::as_str),
            )
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| {
                format!(
                    " (declared: {})",
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                )
            });
            return Err(StartError::Parameter(format!(
                "--var `{name_given}` is not a variable of the pipeline{hint}"
            )));
        }
    }
    Ok(())
}

/// A run to record, with checked parameters.
#[derive(Debug, Clone)]
pub struct Enqueue {
    pub source: String,
    pub version: u32,
    pub params: BTreeMap<String, ParamValue>,
    pub trigger: Trigger,
    pub git: Option<GitInfo>,
    pub concurrency: Option<String>,
    /// `Queued`, or `Skipped` for a run that yields to its busy concurrency group.
    pub status: RunStatus,
    pub message: Option<String>,
    /// The process that will execute it; `None` for a run waiting in the service's queue.
    pub owner: Option<crate::store::Owner>,
    /// The pull request the run belongs to.
    pub pr: Option<u64>,
    /// Created at most once under this key (see `store::NewRun`).
    pub idempotency_key: Option<String>,
    /// The run this one retries from its failed step.
    pub retry_of: Option<String>,
}

/// Records a run (flushed) with a pending record per step of its plan.
pub fn enqueue(store: &Store, pipeline: &Pipeline, e: Enqueue) -> Result<RunRecord, StoreError> {
    let plan = plan::plan(pipeline);
    store.create_run(NewRun {
        source: e.source,
        pipeline: pipeline.name().to_string(),
        version: e.version,
        parameters: e
            .params
            .iter()
            .map(|(k, v)| (k.clone(), param_json(v)))
            .collect(),
        trigger: e.trigger,
        git: e.git,
        steps: plan.steps.iter().map(|s| s.name.clone()).collect(),
        owner: e.owner,
        status: e.status,
        concurrency: e.concurrency,
        message: e.message,
        pr: e.pr,
        idempotency_key: e.idempotency_key,
        retry_of: e.retry_of,
    })
}

/// How to execute a recorded run.
#[derive(Debug, Clone)]
pub struct Start {
    pub checkout: Checkout,
    pub limits: Limits,
    pub keep_run_dir: bool,
    /// Variables given for this run only; they win over stored ones.
    pub var_overrides: BTreeMap<String, String>,
    /// Which secrets the run's ref is trusted with (`trust::release_for`).
    pub release: trust::Release,
    /// Where the user sets what is missing, for the refusal's hint.
    pub hints: Hints,
}

/// Where a missing variable or secret is set, so that a refusal's hint works where it is read:
/// `gantry vars set` writes the data dir, which a server holds locked, so a run of a server
/// names the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hints {
    /// `gantry run FILE` in this data dir (and `--var` for a variable).
    DataDir,
    /// The server at this URL.
    Server(String),
}

impl Hints {
    fn set_var(&self, name: &str, scope: &str) -> String {
        match self {
            Hints::DataDir => format!("gantry vars set {name} VALUE{scope}, or --var {name}=VALUE"),
            Hints::Server(url) => format!("gantry --server {url} vars set {name} VALUE{scope}"),
        }
    }

    fn create_connection(&self, name: &str) -> String {
        let server = match self {
            Hints::DataDir => String::new(),
            Hints::Server(url) => format!("--server {url} "),
        };
        format!("gantry {server}connection create {name} --resource RESOURCE --env ENV")
    }

    fn set_secret(&self, name: &str, scope: &str) -> String {
        let server = match self {
            Hints::DataDir => String::new(),
            Hints::Server(url) => format!("--server {url} "),
        };
        format!("gantry {server}secrets set {name}{scope}, value on stdin")
    }
}

/// The scope of a pipeline's own variables and secrets: `source/name`, or the bare name for a
/// pipeline run straight from a file.
pub fn config_scope(source: &str, name: &str) -> String {
    if source == FILE_SOURCE {
        name.to_string()
    } else {
        format!("{source}/{name}")
    }
}

/// The source of runs started from a file by `gantry run FILE`.
pub const FILE_SOURCE: &str = "file";

/// A run's parameter values as the text the steps see.
pub fn param_texts(run: &RunRecord) -> BTreeMap<String, String> {
    run.param_texts()
}

/// Takes a recorded run to the start line: this process becomes its owner, and its variables
/// and secrets are resolved (a missing one, or a protected one its ref may not have, makes the
/// run fail before any step starts). The pipeline's own scope counts only when the run's file is
/// the pipeline's file (`trust::scope_for`).
pub fn start(
    store: &Store,
    run: RunRecord,
    pipeline: &Pipeline,
    how: Start,
) -> Result<Prepared, StartError> {
    let name = pipeline.name().to_string();
    let scope = trust::scope_for(store, &run, &name)?;
    // Where a missing value would be set: the pipeline's scope, or the global one when the run
    // may not use the pipeline's.
    let hint_scope = scope
        .own()
        .map(|s| format!(" --pipeline {s}"))
        .unwrap_or_default();
    let plan = plan::plan(pipeline);
    let mut vars = store.resolve_vars_for(scope.own(), &pipeline.variables)?;
    vars.extend(how.var_overrides);
    let resolved =
        store.resolve_secrets_for(scope.own(), &pipeline.secrets, how.release.allowed())?;
    let secrets = resolved.values;
    // A withheld secret is reported as protected, not as missing.
    let mut have = secrets.clone();
    for name in &resolved.withheld {
        have.insert(name.clone(), String::new());
    }
    let mut problems: Vec<String> = [
        how.release.refusal(&resolved.withheld),
        missing("variable", &pipeline.variables, &vars, |v| {
            how.hints.set_var(v, &hint_scope)
        }),
        missing("secret", &pipeline.secrets, &have, |v| {
            how.hints.set_secret(v, &hint_scope)
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (connections, refused) =
        resolve_connections(store, &plan, pipeline, &how.release, &how.hints);
    problems.extend(refused);
    if !problems.is_empty()
        && let Some(note) = scope.note()
    {
        problems.push(note);
    }
    if let Err(problem) = prepare_work_dir(store.work_dir()) {
        problems.push(problem);
    }
    // No new run below the data dir's reserve: its logs and records would eat what the store
    // keeps for the work already under way.
    if let Err(low) = store.space_left() {
        problems.insert(0, low.to_string());
    }
    let refusal = (!problems.is_empty()).then(|| format!("not started: {}", problems.join("; ")));
    let run = if run.owner.is_none() {
        store.update_run(&run.id, |r| r.owner = recover::current_owner())?
    } else {
        run
    };
    let run_dir: PathBuf = store.run_dir(&run.id);
    let reuse = match &run.retry_of {
        Some(old) => reused_steps(store, old, &plan)?,
        None => BTreeMap::new(),
    };
    let input = RunInput {
        run_id: run.id.clone(),
        run_number: run.number,
        pipeline: name,
        params: param_texts(&run),
        vars,
        secrets,
        connections,
        git: run.git.clone(),
        trigger: run.trigger.kind.clone(),
        pr_number: run.pr,
        checkout: how.checkout,
        run_dir,
        reuse,
        // A run's files must leave the store's reserve alone: a run that eats into it is stopped.
        limits: crate::executor::Limits {
            keep_free: how.limits.keep_free.max(store.space().reserve),
            ..how.limits
        },
    };
    Ok(Prepared {
        run,
        plan,
        input,
        refusal,
        keep_run_dir: how.keep_run_dir,
    })
}

/// The steps a retry of run `old` takes as they were: those that succeeded there, but for
/// checkouts, which run again (the workspace is new), with the outputs they left.
fn reused_steps(
    store: &Store,
    old: &str,
    plan: &Plan,
) -> Result<BTreeMap<String, crate::executor::Reused>, StoreError> {
    let Some(before) = store.get_run(old)? else {
        return Ok(BTreeMap::new());
    };
    let steps = store.steps(old)?;
    let mut outputs: BTreeMap<String, Vec<(String, String, bool)>> = BTreeMap::new();
    for (step, name, value, secret) in store.output_values(old)? {
        outputs.entry(step).or_default().push((name, value, secret));
    }
    let mut reuse = BTreeMap::new();
    for step in &plan.steps {
        if matches!(step.action, plan::Action::GitCheckout { .. }) {
            continue;
        }
        let succeeded = steps
            .iter()
            .any(|s| s.name == step.name && s.state == StepState::Succeeded);
        if succeeded {
            reuse.insert(
                step.name.clone(),
                crate::executor::Reused {
                    run_number: before.number,
                    outputs: outputs.remove(&step.name).unwrap_or_default(),
                },
            );
        }
    }
    Ok(reuse)
}

/// The connection credentials a run's steps reference (`NAME.KEY` → value), resolved in the
/// marketplace now, and why some cannot be had: a declared connection that does not resolve, a
/// key it does not have, a secret credential for a run whose ref gets only unprotected secrets.
fn resolve_connections(
    store: &Store,
    plan: &Plan,
    pipeline: &Pipeline,
    release: &trust::Release,
    hints: &Hints,
) -> (BTreeMap<String, ConnectionValue>, Vec<String>) {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for step in &plan.steps {
        let mut texts: Vec<&crate::spec::expr::Text> = step.env.iter().map(|(_, t)| t).collect();
        if let plan::Action::Publish(r) = &step.action {
            texts.extend(r.properties.values());
            texts.extend(
                r.connection_credentials
                    .iter()
                    .flat_map(|c| c.parameters.iter().map(|p| &p.value)),
            );
        }
        for (r, _) in texts.iter().flat_map(|t| t.refs()) {
            if let crate::spec::expr::Ref::Connection { name, key } = r {
                let keys = wanted.entry(name.as_str()).or_default();
                if !keys.contains(&key.as_str()) {
                    keys.push(key.as_str());
                }
            }
        }
    }
    let mut values = BTreeMap::new();
    let mut problems = Vec::new();
    for name in &pipeline.connections {
        let resolved = match crate::marketplace::resolve(store, name, true, chrono::Utc::now()) {
            Ok(r) => r,
            Err(crate::marketplace::MarketError::NoSuchConnection(_)) => {
                problems.push(format!(
                    "connection `{name}` does not exist: {}",
                    hints.create_connection(name)
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!("connection `{name}`: {e}"));
                continue;
            }
        };
        let credentials = &resolved.resolved.credentials;
        for key in wanted.get(name.as_str()).into_iter().flatten() {
            let found = credentials.iter().find(|c| c.key == *key).or_else(|| {
                credentials
                    .iter()
                    .find(|c| crate::marketplace::binding::well_known(&c.key) == Some(key))
            });
            let Some(c) = found else {
                let have: Vec<&str> = credentials.iter().map(|c| c.key.as_str()).collect();
                problems.push(format!(
                    "connection `{name}` (resource {}, version {}) has no credential `{key}`; its keys: {}",
                    resolved.connection.resource,
                    resolved.resolved.version,
                    have.join(", ")
                ));
                continue;
            };
            if c.secret
                && let trust::Release::UnprotectedOnly { reference, rule } = release
            {
                problems.push(format!(
                    "credential `{key}` of connection `{name}` is secret: runs at `{reference}` do not get it; {rule}"
                ));
                continue;
            }
            values.insert(
                format!("{name}.{key}"),
                ConnectionValue {
                    value: c.value.clone().unwrap_or_default(),
                    secret: c.secret,
                },
            );
        }
    }
    (values, problems)
}

/// How `drive` hands a run to its executor.
enum Handover {
    /// From the start.
    Execute,
    /// Picked up again after a restart, where the store left it.
    Reattach { external_id: String },
}

/// Executes a prepared run to its end, recording everything; `observe` sees every event after it
/// is stored. Returns the finished run.
pub async fn execute(
    store: &Store,
    executor: Arc<dyn Executor>,
    prepared: Prepared,
    cancel: CancellationToken,
    observe: impl FnMut(&Plan, &Event) + Send,
) -> Result<RunRecord, StoreError> {
    let span = tracing::info_span!(
        "run",
        id = %prepared.run.id,
        pipeline = %format!("{}/{}", prepared.run.source, prepared.run.pipeline)
    );
    tracing::Instrument::instrument(
        drive(
            store,
            executor,
            prepared,
            Handover::Execute,
            cancel,
            observe,
        ),
        span,
    )
    .await
}

/// Follows a run that its executor picked up again after a restart (`Recovery::Reattach`) to its
/// end, recording only what the store does not hold yet.
pub async fn reattach(
    store: &Store,
    executor: Arc<dyn Executor>,
    prepared: Prepared,
    external_id: String,
    cancel: CancellationToken,
    observe: impl FnMut(&Plan, &Event) + Send,
) -> Result<RunRecord, StoreError> {
    let handover = Handover::Reattach { external_id };
    drive(store, executor, prepared, handover, cancel, observe).await
}

/// What the store holds of each step of a run: attempts started and finished, whether it is over,
/// and how many log lines its last attempt has.
fn resumed(store: &Store, run_id: &str) -> Result<crate::executor::Resumed, StoreError> {
    let mut steps = Vec::new();
    for (i, step) in store.steps(run_id)?.iter().enumerate() {
        let started = step.attempts.iter().map(|a| a.number).max().unwrap_or(0);
        let finished = step
            .attempts
            .iter()
            .filter(|a| a.status.is_some())
            .map(|a| a.number)
            .max()
            .unwrap_or(0);
        let (lines, _) = store.logs(run_id, Some(i), None)?;
        let lines = lines.iter().filter(|(_, l)| l.attempt == started).count();
        use crate::executor::StepStatus as S;
        let done = match step.state {
            StepState::Succeeded => Some(S::Succeeded),
            StepState::Failed => Some(S::Failed),
            StepState::TimedOut => Some(S::TimedOut),
            StepState::Error => Some(S::Error),
            StepState::Skipped => Some(S::Skipped),
            StepState::Cancelled => Some(S::Cancelled),
            StepState::Pending | StepState::Running | StepState::Interrupted => None,
        };
        steps.push(crate::executor::ResumedStep {
            started,
            finished,
            done,
            lines,
        });
    }
    Ok(crate::executor::Resumed { steps })
}

async fn drive(
    store: &Store,
    executor: Arc<dyn Executor>,
    prepared: Prepared,
    handover: Handover,
    cancel: CancellationToken,
    mut observe: impl FnMut(&Plan, &Event) + Send,
) -> Result<RunRecord, StoreError> {
    let Prepared {
        run,
        plan,
        input,
        refusal,
        keep_run_dir,
    } = prepared;
    if let Some(message) = refusal {
        for (i, _) in plan.steps.iter().enumerate() {
            store.update_step(&run.id, i, |s| {
                s.state = StepState::Skipped;
                s.message = Some("the run did not start".into());
            })?;
        }
        let run = store.end_run(&run.id, RunStatus::Failed, Some(message))?;
        store.flush_async().await?;
        return Ok(run);
    }
    // Output files may hold secret values: the run's directory goes when the run does, whichever
    // way it ends (recovery removes it after a crash).
    let _run_dir = RunDirGuard {
        dir: input.run_dir.clone(),
        keep: keep_run_dir,
    };
    store.update_run(&run.id, |r| {
        r.status = RunStatus::Running;
        r.started_at.get_or_insert_with(Utc::now);
        // The queue records the executor's name as it starts the run; a run started otherwise
        // (`gantry run FILE`) is known by the executor's kind.
        r.executor
            .get_or_insert_with(|| executor.kind().to_string());
    })?;

    // Bounded: a step that floods its log waits for the store instead of growing memory.
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_BACKLOG);
    // The executor runs in a task of its own, so that starting the next step never waits for the
    // store writes of the previous one.
    let stop = cancel.clone();
    let exec = {
        let plan = plan.clone();
        let input = input.clone();
        let resumed = match &handover {
            Handover::Execute => None,
            Handover::Reattach { .. } => Some(resumed(store, &run.id)?),
        };
        tokio::spawn(async move {
            match (handover, resumed) {
                (Handover::Reattach { external_id }, Some(resumed)) => {
                    executor
                        .reattach(&plan, &input, &resumed, &external_id, tx, cancel)
                        .await
                }
                _ => executor.execute(&plan, &input, tx, cancel).await,
            }
        })
    };
    let mut book = StepBook::load(store, &run.id)?;
    let mut batch: Vec<Event> = Vec::new();
    while let Some(first) = rx.recv().await {
        // Take whatever else is waiting, so log lines are stored as chunks.
        batch.push(first);
        while batch.len() < EVENT_BACKLOG
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        if let Err(e) = record_batch(store, &run.id, &plan, &mut book, &batch) {
            // A run that cannot be recorded must not go on unseen: stop it, wait for its steps
            // to end, and report the store's error.
            stop.cancel();
            while rx.recv().await.is_some() {}
            let _ = exec.await;
            return Err(e);
        }
        for e in batch.drain(..) {
            observe(&plan, &e);
        }
    }
    // An executor that could not carry the run to its end says why; its steps did not fail.
    let mut unavailable = None;
    let outcome = match exec.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            unavailable = Some(e.to_string());
            RunOutcome::Failed
        }
        Err(e) => {
            warn(&format!(
                "the executor of run {} stopped abnormally: {e}",
                run.id
            ));
            RunOutcome::Failed
        }
    };
    let unfinished = match &unavailable {
        Some(why) => format!("not run to its end: {why}"),
        None => "the executor stopped before this step finished".to_string(),
    };
    // An executor must finish every step; if one did not, the step must not stay "running".
    for i in 0..book.steps.len() {
        if !book.steps[i].state.is_done() {
            book.change(i, |s| {
                s.state = StepState::Error;
                s.finished_at = Some(Utc::now());
                s.message = Some(unfinished.clone());
            });
        }
    }
    book.write(store, &run.id)?;
    let (status, message) = match outcome {
        RunOutcome::Succeeded => (RunStatus::Succeeded, None),
        RunOutcome::Failed => (RunStatus::Failed, failure_summary(&book.steps)),
        RunOutcome::Cancelled => (RunStatus::Cancelled, Some("cancelled".to_string())),
        RunOutcome::TimedOut => (
            RunStatus::Failed,
            Some(format!(
                "timed out after {}",
                values::format_duration(plan.timeout)
            )),
        ),
    };
    // An unavailable executor is the reason, whatever its steps say.
    let message = unavailable.or(message);
    let run = store.end_run(&run.id, status, message)?;
    store.flush_async().await?;
    Ok(run)
}

/// Makes sure the work dir exists and is Gantry's own, writable by nobody else (checked for
/// every run, or another local user could swap a run directory under Gantry's feet), and that it
/// is never copied by a `gantry run` whose repository holds it.
fn prepare_work_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|e| format!("cannot create the work dir {}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot read the work dir {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the work dir {} must be a folder of Gantry's own user that nobody else can write to (owner {}, mode {:o}); set `work_dir` under [storage] to such a folder",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        let _ = std::fs::write(&ignore, "# Gantry's run directories.\n*\n");
    }
    Ok(())
}

/// Events between an executor and the recorder: at most this many wait in memory. A log event is
/// one read of a step's pipe (64 KiB at most, or one line of up to `Limits::max_line_bytes`), so
/// this is a few MiB at most.
const EVENT_BACKLOG: usize = 64;

/// Bytes of step log lines (each with its line break) stored by this process, for `/metrics`.
static LOG_BYTES_STORED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of step log lines stored by this process so far.
pub fn log_bytes_stored() -> u64 {
    LOG_BYTES_STORED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Removes a run's directory when dropped, unless asked to keep it.
struct RunDirGuard {
    dir: PathBuf,
    keep: bool,
}

impl Drop for RunDirGuard {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn(&format!(
                "cannot remove the run directory {}: {e}",
                self.dir.display()
            ));
        }
    }
}

/// Reports a problem that does not change the run's outcome.
fn warn(message: &str) {
    tracing::warn!("{message}");
}

/// "step `x` failed (exit 2)" for the first step that did not succeed.
fn failure_summary(steps: &[StepRecord]) -> Option<String> {
    steps
        .iter()
        .find(|s| {
            matches!(
                s.state,
                StepState::Failed | StepState::TimedOut | StepState::Error
            )
        })
        .map(|s| {
            let detail = match (s.state, s.exit_code(), &s.message) {
                (StepState::Failed, Some(code), _) => format!("exit {code}"),
                (_, _, Some(m)) => m.clone(),
                (state, _, None) => state.as_str().to_string(),
            };
            format!("step `{}` {} ({detail})", s.name, s.state.as_str())
        })
}

/// The step records of a run being executed, kept in memory so each event changes them without a
/// read from the store; a batch writes every step it touched once.
struct StepBook {
    steps: Vec<StepRecord>,
    dirty: Vec<bool>,
    /// The next log chunk number of each step.
    chunks: Vec<u32>,
    /// Steps whose log was cut because the data dir's file system fell below its reserve.
    cut: Vec<bool>,
}

impl StepBook {
    fn load(store: &Store, run_id: &str) -> Result<StepBook, StoreError> {
        let steps = store.steps(run_id)?;
        let dirty = vec![false; steps.len()];
        let chunks = vec![0; steps.len()];
        let cut = vec![false; steps.len()];
        Ok(StepBook {
            steps,
            dirty,
            chunks,
            cut,
        })
    }

    fn change(&mut self, step: usize, f: impl FnOnce(&mut StepRecord)) {
        if let (Some(record), Some(dirty)) = (self.steps.get_mut(step), self.dirty.get_mut(step)) {
            f(record);
            *dirty = true;
        }
    }

    fn write(&mut self, store: &Store, run_id: &str) -> Result<(), StoreError> {
        for (i, dirty) in self.dirty.iter_mut().enumerate() {
            if std::mem::take(dirty) {
                store.put_step(run_id, i, &self.steps[i])?;
            }
        }
        Ok(())
    }
}

/// Writes one batch of executor events to the store.
fn record_batch(
    store: &Store,
    run_id: &str,
    plan: &Plan,
    book: &mut StepBook,
    batch: &[Event],
) -> Result<(), StoreError> {
    let mut logs: BTreeMap<usize, Vec<NewLogLine<'_>>> = BTreeMap::new();
    // Gantry's own lines, written after the step's lines of this batch even when its log is cut.
    let mut notes: BTreeMap<usize, Vec<LogLine>> = BTreeMap::new();
    for event in batch {
        match event {
            Event::Log {
                step,
                attempt,
                stream,
                lines,
                at,
            } => logs
                .entry(*step)
                .or_default()
                .extend(lines.iter().map(|line| NewLogLine {
                    at: *at,
                    attempt: *attempt,
                    stream: *stream,
                    text: line,
                })),
            // Outputs count against the data dir's reserve as logs do: below it they are not kept
            // in the store (the run's later steps still get them from the executor), and the
            // step's log says so.
            Event::Outputs { step, values } if !values.is_empty() => match store.space_left() {
                Ok(()) => record_event(store, run_id, plan, book, event)?,
                Err(low) => {
                    let names: Vec<&str> = values.iter().map(|(n, _, _)| n.as_str()).collect();
                    let attempt = book
                        .steps
                        .get(*step)
                        .and_then(|s| s.attempts.last())
                        .map_or(1, |a| a.number);
                    notes.entry(*step).or_default().push(LogLine {
                        at: chrono::Utc::now(),
                        attempt,
                        stream: crate::executor::Stream::System,
                        text: format!(
                            "[gantry: outputs {} not kept in the store: {low}]",
                            names.join(", ")
                        ),
                    });
                }
            },
            other => record_event(store, run_id, plan, book, other)?,
        }
    }
    // Below the data dir's reserve a step's log is cut with a line saying so: the run goes on and
    // its records still fit, but its output no longer eats the space the store needs.
    let low = if logs.is_empty() {
        None
    } else {
        store.space_left().err()
    };
    for (step, lines) in logs {
        let (Some(next), Some(cut)) = (book.chunks.get_mut(step), book.cut.get_mut(step)) else {
            continue;
        };
        if *cut {
            continue;
        }
        let stored = match (&low, lines.last()) {
            (Some(low), Some(last)) => {
                *cut = true;
                let text = format!("[gantry: the rest of this step's log is cut: {low}]");
                let note = NewLogLine {
                    stream: crate::executor::Stream::System,
                    text: &text,
                    ..*last
                };
                store.append_log(run_id, step, next, &[note])?
            }
            _ => store.append_log(run_id, step, next, &lines)?,
        };
        LOG_BYTES_STORED.fetch_add(stored, std::sync::atomic::Ordering::Relaxed);
    }
    for (step, lines) in notes {
        if let Some(next) = book.chunks.get_mut(step) {
            let lines: Vec<NewLogLine<'_>> = lines.iter().map(LogLine::borrowed).collect();
            store.append_log(run_id, step, next, &lines)?;
        }
    }
    book.write(store, run_id)
}

fn record_event(
    store: &Store,
    run_id: &str,
    plan: &Plan,
    book: &mut StepBook,
    event: &Event,
) -> Result<(), StoreError> {
    use crate::store::Attempt;
    match event {
        Event::Attached { external_id } => {
            // Durable at once: after a crash the run is found again by it, never started twice.
            store.update_run(run_id, |r| r.external_id = Some(external_id.clone()))?;
            store.flush()?;
        }
        Event::StepStarted {
            step,
            attempt,
            handle,
            at,
        } => book.change(*step, |s| {
            s.state = StepState::Running;
            s.started_at.get_or_insert(*at);
            // An attempt told again (a run picked up after a restart) is the same attempt.
            if let Some(known) = s.attempts.iter_mut().find(|a| a.number == *attempt) {
                known.handle = handle.clone();
                return;
            }
            s.attempts.push(Attempt {
                number: *attempt,
                started_at: *at,
                finished_at: None,
                status: None,
                exit_code: None,
                handle: handle.clone(),
                message: None,
            });
        }),
        Event::AttemptFinished {
            step,
            attempt,
            status,
            exit_code,
            message,
            at,
            ..
        } => book.change(*step, |s| {
            if let Some(a) = s.attempts.iter_mut().rev().find(|a| a.number == *attempt) {
                a.finished_at = Some(*at);
                a.status = Some((*status).into());
                a.exit_code = *exit_code;
                a.message = message.clone();
            }
        }),
        Event::StepFinished {
            step,
            status,
            message,
            at,
        } => book.change(*step, |s| {
            s.state = (*status).into();
            s.message = message.clone();
            s.finished_at = Some(*at);
        }),
        Event::Outputs { step, values } => {
            let name = plan
                .steps
                .get(*step)
                .map(|s| s.name.as_str())
                .unwrap_or("?");
            for (output, value, secret) in values {
                store.put_output(run_id, name, output, value, *secret)?;
            }
        }
        Event::Published { step, publication } => {
            let name = plan
                .steps
                .get(*step)
                .map(|s| s.name.as_str())
                .unwrap_or("?");
            store.put_publication(run_id, name, publication)?;
            // Into the marketplace at once, so that whoever sees the run end sees its version.
            // A publish the marketplace refuses (another pipeline's name) is recorded with the
            // run's publication, which the API and the PR comment show.
            if let Some(run) = store.get_run(run_id)? {
                let origin = crate::marketplace::Origin::of(&run);
                match crate::marketplace::publish(store, &origin, name, publication, Utc::now()) {
                    Ok(_) => {}
                    Err(crate::marketplace::MarketError::Store(e)) => return Err(e),
                    Err(e) => tracing::warn!("step {name} not published to the marketplace: {e}"),
                }
            }
        }
        Event::Summary { step, text } => book.change(*step, |s| s.summary = Some(text.clone())),
        Event::Log { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod connection_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::executor::Publication;
    use crate::marketplace::{NewConnection, Origin};

    const PIPELINE: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: app\nconnections: [db]\nsteps:\n  - name: use\n    command: [sh, -c, 'true']\n    env:\n      H: '{{connections.db.host}}'\n      P: '{{connections.db.DB_PASSWORD}}'\n";

    fn store_with_connection() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let publication = Publication::example("orders-db", &["dev"], "pw-for-the-test");
        let origin = Origin {
            source: "infra".into(),
            pipeline: "provision".into(),
            run_id: "R1".into(),
            run_number: 1,
            commit: None,
            git_ref: None,
        };
        crate::marketplace::publish(&store, &origin, "publish", &publication, Utc::now())
            .expect("publish");
        crate::marketplace::create_connection(
            &store,
            NewConnection {
                name: "db".into(),
                resource: "orders-db".into(),
                environment: "dev".into(),
                ..NewConnection::default()
            },
            Utc::now(),
        )
        .expect("connection");
        (dir, store)
    }

    fn resolve(
        store: &Store,
        text: &str,
        release: &trust::Release,
    ) -> (BTreeMap<String, ConnectionValue>, Vec<String>) {
        let pipeline = crate::spec::check(text).pipeline.expect("valid");
        let plan = plan::plan(&pipeline);
        resolve_connections(store, &plan, &pipeline, release, &Hints::DataDir)
    }

    #[test]
    fn a_run_gets_the_credentials_it_references_by_key_or_well_known_name() {
        let (_dir, store) = store_with_connection();
        let (values, problems) = resolve(&store, PIPELINE, &trust::Release::All);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(values["db.host"].value, "db.internal");
        assert!(!values["db.host"].secret);
        assert_eq!(values["db.DB_PASSWORD"].value, "pw-for-the-test");
        assert!(values["db.DB_PASSWORD"].secret);
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn secret_credentials_follow_the_protected_ref_rule_and_missing_ones_are_named() {
        let (_dir, store) = store_with_connection();
        let release = trust::Release::UnprotectedOnly {
            reference: "refs/heads/feature".into(),
            rule: "protected refs are main".into(),
        };
        let (values, problems) = resolve(&store, PIPELINE, &release);
        assert_eq!(
            problems,
            [
                "credential `DB_PASSWORD` of connection `db` is secret: runs at `refs/heads/feature` do not get it; protected refs are main"
            ]
        );
        assert!(values.contains_key("db.host") && !values.contains_key("db.DB_PASSWORD"));
        let missing = PIPELINE
            .replace("connections: [db]", "connections: [db, ghost]")
            .replace("db.host", "db.region");
        let (_, problems) = resolve(&store, &missing, &trust::Release::All);
        assert_eq!(
            problems,
            [
                "connection `db` (resource orders-db, version 1) has no credential `region`; its keys: DB_HOST, DB_PASSWORD",
                "connection `ghost` does not exist: gantry connection create ghost --resource RESOURCE --env ENV",
            ]
        );
    }
}
