//! Run orchestration: from a run request to a finished run in the store.
//!
//! `prepare` checks parameter values against their declarations, resolves variables and secrets,
//! records the pipeline version and creates the run (queued, flushed). `execute` hands the plan to
//! an executor and turns its events into store records (steps, log chunks, outputs, publications)
//! while passing them on to an observer (the CLI's progress display). `recover` marks runs whose
//! process is gone as interrupted and kills what they left running.

pub mod recover;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::{Checkout, Event, Executor, GitInfo, Limits, RunInput, RunOutcome};
use crate::plan::{self, Plan};
use crate::spec::model::{ParamValue, Pipeline};
use crate::spec::values;
use crate::store::{
    LogLine, NewRun, RunRecord, RunStatus, StepRecord, StepState, Store, StoreError, Trigger,
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

/// Creates the run: parameters checked, version recorded, variables and secrets resolved.
pub fn prepare(store: &Store, req: RunRequest) -> Result<Prepared, StartError> {
    let params = check_params(&req.pipeline, &req.params).map_err(StartError::Parameter)?;
    let name = req.pipeline.name().to_string();
    let version = store.record_version(
        &req.source,
        &name,
        &req.text,
        &req.path,
        req.git.as_ref().map(|g| g.sha.as_str()),
    )?;
    let plan = plan::plan(&req.pipeline);

    let mut vars = store.resolve_vars(&name, &req.pipeline.variables)?;
    for (k, v) in &req.var_overrides {
        vars.insert(k.clone(), v.clone());
    }
    let secrets = store.resolve_secrets(&name, &req.pipeline.secrets)?;
    let missing_vars: Vec<&str> = req
        .pipeline
        .variables
        .iter()
        .filter(|v| !vars.contains_key(*v))
        .map(String::as_str)
        .collect();
    let missing_secrets: Vec<&str> = req
        .pipeline
        .secrets
        .iter()
        .filter(|s| !secrets.contains_key(*s))
        .map(String::as_str)
        .collect();
    let mut problems = Vec::new();
    if !missing_vars.is_empty() {
        problems.push(format!(
            "variable{} {} not set (gantry vars set NAME VALUE [--pipeline {name}], or --var NAME=VALUE)",
            if missing_vars.len() > 1 { "s" } else { "" },
            missing_vars.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    if !missing_secrets.is_empty() {
        problems.push(format!(
            "secret{} {} not set (gantry secrets set NAME [--pipeline {name}], value on stdin)",
            if missing_secrets.len() > 1 { "s" } else { "" },
            missing_secrets
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let refusal = (!problems.is_empty()).then(|| format!("not started: {}", problems.join("; ")));

    let run = store.create_run(NewRun {
        source: req.source.clone(),
        pipeline: name.clone(),
        version,
        parameters: params
            .iter()
            .map(|(k, v)| (k.clone(), param_json(v)))
            .collect(),
        trigger: req.trigger,
        git: req.git.clone(),
        steps: plan.steps.iter().map(|s| s.name.clone()).collect(),
        owner: recover::current_owner(),
    })?;
    let run_dir: PathBuf = store.dir().join("runs").join(&run.id);
    let input = RunInput {
        run_id: run.id.clone(),
        run_number: run.number,
        pipeline: name,
        params: params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        vars,
        secrets,
        git: req.git,
        trigger: run.trigger.kind.clone(),
        pr_number: None,
        checkout: req.checkout,
        run_dir,
        limits: req.limits,
    };
    Ok(Prepared {
        run,
        plan,
        input,
        refusal,
        keep_run_dir: req.keep_run_dir,
    })
}

/// Executes a prepared run to its end, recording everything; `observe` sees every event after it
/// is stored. Returns the finished run.
pub async fn execute(
    store: &Store,
    executor: Arc<dyn Executor>,
    prepared: Prepared,
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
        let now = Utc::now();
        for (i, _) in plan.steps.iter().enumerate() {
            store.update_step(&run.id, i, |s| {
                s.state = StepState::Skipped;
                s.message = Some("the run did not start".into());
            })?;
        }
        let run = store.update_run(&run.id, |r| {
            r.status = RunStatus::Failed;
            r.finished_at = Some(now);
            r.message = Some(message);
            r.owner = None;
        })?;
        store.flush_async().await?;
        return Ok(run);
    }
    if let Err(e) = std::fs::create_dir_all(&input.run_dir) {
        let message = format!(
            "cannot create the run directory {}: {e}",
            input.run_dir.display()
        );
        let run = store.update_run(&run.id, |r| {
            r.status = RunStatus::Failed;
            r.finished_at = Some(Utc::now());
            r.message = Some(message);
            r.owner = None;
        })?;
        store.flush_async().await?;
        return Ok(run);
    }
    store.update_run(&run.id, |r| {
        r.status = RunStatus::Running;
        r.started_at = Some(Utc::now());
    })?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    // The executor runs in a task of its own, so that starting the next step never waits for the
    // store writes of the previous one.
    let stop = cancel.clone();
    let exec = {
        let plan = plan.clone();
        let input = input.clone();
        tokio::spawn(async move { executor.execute(&plan, &input, tx, cancel).await })
    };
    let mut book = StepBook::load(store, &run.id)?;
    let mut batch: Vec<Event> = Vec::new();
    while let Some(first) = rx.recv().await {
        // Take whatever else is waiting, so log lines are stored as chunks.
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
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
    let outcome = match exec.await {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            warn(&format!(
                "the executor of run {} stopped abnormally: {e}",
                run.id
            ));
            None
        }
    };
    let outcome = outcome.unwrap_or(RunOutcome::Failed);
    if !keep_run_dir
        && let Err(e) = std::fs::remove_dir_all(&input.run_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn(&format!(
            "cannot remove the run directory {}: {e}",
            input.run_dir.display()
        ));
    }
    let (status, message) = match outcome {
        RunOutcome::Succeeded => (RunStatus::Succeeded, None),
        RunOutcome::Failed => (RunStatus::Failed, failure_summary(store, &run.id)?),
        RunOutcome::Cancelled => (RunStatus::Cancelled, Some("cancelled".to_string())),
        RunOutcome::TimedOut => (
            RunStatus::Failed,
            Some(format!(
                "timed out after {}",
                values::format_duration(plan.timeout)
            )),
        ),
    };
    let run = store.update_run(&run.id, |r| {
        r.status = status;
        r.finished_at = Some(Utc::now());
        r.message = message;
        r.owner = None;
    })?;
    store.flush_async().await?;
    Ok(run)
}

/// Reports a problem that does not change the run's outcome.
fn warn(message: &str) {
    eprintln!("gantry: warning: {message}");
}

/// "step `x` failed (exit 2)" for the first step that did not succeed.
fn failure_summary(store: &Store, run_id: &str) -> Result<Option<String>, StoreError> {
    let steps = store.steps(run_id)?;
    Ok(steps
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
        }))
}

/// The step records of a run being executed, kept in memory so each event changes them without a
/// read from the store; a batch writes every step it touched once.
struct StepBook {
    steps: Vec<StepRecord>,
    dirty: Vec<bool>,
}

impl StepBook {
    fn load(store: &Store, run_id: &str) -> Result<StepBook, StoreError> {
        let steps = store.steps(run_id)?;
        let dirty = vec![false; steps.len()];
        Ok(StepBook { steps, dirty })
    }

    fn change(&mut self, step: usize, f: impl FnOnce(&mut StepRecord)) {
        if let Some(record) = self.steps.get_mut(step) {
            f(record);
            self.dirty[step] = true;
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
    let mut logs: BTreeMap<usize, Vec<LogLine>> = BTreeMap::new();
    for event in batch {
        match event {
            Event::Log {
                step,
                attempt,
                stream,
                line,
                at,
            } => logs.entry(*step).or_default().push(LogLine {
                at: *at,
                attempt: *attempt,
                stream: *stream,
                text: line.clone(),
            }),
            other => record_event(store, run_id, plan, book, other)?,
        }
    }
    for (step, lines) in logs {
        store.append_logs(run_id, step, &lines)?;
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
        Event::StepStarted {
            step,
            attempt,
            pid,
            at,
        } => book.change(*step, |s| {
            s.state = StepState::Running;
            s.started_at.get_or_insert(*at);
            s.attempts.push(Attempt {
                number: *attempt,
                started_at: *at,
                finished_at: None,
                status: None,
                exit_code: None,
                pid: *pid,
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
        }
        Event::Log { .. } => {}
    }
    Ok(())
}
