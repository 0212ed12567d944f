//! The Argo executor: a run becomes a Workflow on an Argo Workflows installation.
//!
//! `execute` compiles the plan (`compile.rs`), creates the run's Secret with the values the
//! Workflow reads by `secretKeyRef`, submits the Workflow, makes it the Secret's owner, and then
//! follows it: the Workflow's event stream (opened again, after reading the Workflow, whenever it
//! ends early) is turned into the same `Event`s the local executor sends. A task's node is its
//! step; a `Retry` node's children are the attempts; a pod's lines are followed into the log
//! while it runs, masked and within the caps (its attempt ends once the log is complete); outputs come from the node's
//! `outputs.parameters`, and a publish step publishes, in Gantry, once its task succeeded. A step
//! whose task got no node was kept from running by a step it needs (`rules::blocks`). Cancel
//! terminates the Workflow; the Secret is deleted at the end. A server that cannot be reached
//! (after retries) ends the run with `ExecutorError::Unavailable`, naming it.
//!
//! Argo and the rules differ where noted in `tests/it/conformance.rs`; the mapping here makes
//! Argo's words Gantry's: a deadline is `timed-out` with `timed out after …`, an exit code
//! `exited with code N`, a terminated pod `cancelled`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientError, Connection};
use super::compile::{self, Compiled, RunFacts};
use crate::executor::mask::Secrets;
use crate::executor::rules;
use crate::executor::{
    AttemptHandle, BoxFuture, Checkout, Event, Executor, ExecutorError, Limits, LostRun, Recovery,
    Resumed, RunInput, RunOutcome, StepStatus, Stream, Values,
};
use crate::plan::{Action, Plan};
use crate::spec::values::format_duration;

/// How Workflows are built for this installation.
pub type ArgoOptions = compile::Options;

/// Runs plans as Argo Workflows.
#[derive(Debug, Clone)]
pub struct ArgoExecutor {
    /// Its name in `[executor]`, for messages.
    name: String,
    client: Client,
    options: ArgoOptions,
    /// Waits before the event stream is opened again.
    reconnect: Duration,
    /// How long an event stream may stay silent before the Workflow is read again.
    idle: Duration,
}

impl ArgoExecutor {
    pub fn new(
        name: &str,
        connection: Connection,
        mut options: ArgoOptions,
    ) -> Result<ArgoExecutor, ExecutorError> {
        options.namespace = connection.namespace.clone();
        let client = Client::new(connection).map_err(|e| unavailable(name, e))?;
        Ok(ArgoExecutor {
            name: name.to_string(),
            client,
            options,
            reconnect: Duration::from_secs(1),
            idle: Duration::from_secs(60),
        })
    }

    /// Waits between tries of an unavailable server, and before a stream is opened again.
    pub fn with_backoff(mut self, backoff: Vec<Duration>, reconnect: Duration) -> ArgoExecutor {
        self.client = self.client.with_backoff(backoff);
        self.reconnect = reconnect;
        self
    }

    /// How long an event stream may stay silent before the Workflow is read again.
    pub fn with_idle(mut self, idle: Duration) -> ArgoExecutor {
        self.idle = idle;
        self
    }
}

fn unavailable(executor: &str, e: ClientError) -> ExecutorError {
    match e {
        ClientError::Unavailable { server, reason } => ExecutorError::Unavailable {
            executor: executor.to_string(),
            server,
            reason,
        },
        ClientError::Refused {
            server,
            status,
            message,
        } => ExecutorError::Unavailable {
            executor: executor.to_string(),
            server,
            reason: format!("refused a call ({status}): {message}"),
        },
    }
}

impl Executor for ArgoExecutor {
    fn kind(&self) -> &'static str {
        "argo"
    }

    /// A lost run whose Workflow is still there (by its recorded name, or by its run's label) is
    /// picked up again (`reattach`); one without a Workflow is over, and its Secret goes.
    fn recover(&self, _work_dir: &Path, lost: &[LostRun]) -> Vec<Recovery> {
        let client = self.client.clone();
        let ids: Vec<(String, Option<String>)> = lost
            .iter()
            .map(|l| (l.run_id.clone(), l.external_id.clone()))
            .collect();
        // Recovery is called from inside the service's runtime: the calls get a thread and a
        // runtime of their own.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return vec![Recovery::Ended { stopped: 0 }; ids.len()];
                    };
                    runtime.block_on(async {
                        let mut out = Vec::new();
                        for (run_id, workflow) in &ids {
                            // Its Workflow: by the name recorded, else by the run's label (a
                            // Gantry that went away between submitting and recording it).
                            let name = match workflow {
                                Some(name) => Some(name.clone()),
                                None => client
                                    .list(&format!(
                                        "gantry.dev/run-id={}",
                                        compile::run_label(run_id)
                                    ))
                                    .await
                                    .ok()
                                    .and_then(|items| {
                                        items.first().and_then(|w| {
                                            w["metadata"]["name"].as_str().map(str::to_string)
                                        })
                                    }),
                            };
                            let found = match &name {
                                Some(n) => client.get(n).await.ok().flatten().is_some(),
                                None => false,
                            };
                            match name {
                                Some(external_id) if found => {
                                    out.push(Recovery::Reattach { external_id })
                                }
                                _ => {
                                    let _ =
                                        client.delete_secret(&compile::secret_name(run_id)).await;
                                    out.push(Recovery::Ended { stopped: 0 });
                                }
                            }
                        }
                        out
                    })
                })
                .join()
                .unwrap_or_default()
        })
    }

    fn execute<'a>(
        &'a self,
        plan: &'a Plan,
        input: &'a RunInput,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunOutcome, ExecutorError>> {
        if !input.reuse.is_empty() {
            // A Workflow cannot take a task's outputs from an earlier Workflow yet.
            return Box::pin(async move {
                Err(ExecutorError::Unavailable {
                    executor: self.kind().to_string(),
                    server: "Argo Workflows".into(),
                    reason: "cannot retry from a failed step (steps of an earlier run are reused \
                             on the local executor only); run it again whole"
                        .into(),
                })
            });
        }
        Box::pin(self.run(plan, input, events, cancel))
    }

    fn reattach<'a>(
        &'a self,
        plan: &'a Plan,
        input: &'a RunInput,
        resumed: &'a Resumed,
        external_id: &'a str,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunOutcome, ExecutorError>> {
        Box::pin(self.run_again(plan, input, resumed, external_id, events, cancel))
    }
}

/// The run as the compiler needs it.
fn facts(input: &RunInput) -> RunFacts {
    RunFacts {
        id: input.run_id.clone(),
        number: input.run_number,
        source: input
            .git
            .as_ref()
            .map(|g| g.repo.clone())
            .unwrap_or_default(),
        pipeline: input.pipeline.clone(),
        params: input.params.clone(),
        unset_params: Vec::new(),
        vars: input.vars.clone(),
        git: input.git.clone(),
        checkout_url: match &input.checkout {
            Checkout::Commit(c) => Some(c.url.clone()),
            _ => None,
        },
        checkout_credentials: matches!(&input.checkout, Checkout::Commit(c) if c.credentials.is_some()),
        trigger: input.trigger.clone(),
        pr: input.pr_number,
    }
}

impl ArgoExecutor {
    /// The book of a run (its secrets masked from the start) and its Workflow; `None` when the
    /// plan does not compile for Argo, every step then ended with the compiler's words.
    async fn start<'a>(
        &self,
        plan: &'a Plan,
        input: &RunInput,
        events: Sender<Event>,
    ) -> (Book<'a>, Option<Compiled>) {
        let secrets = Secrets::new();
        for value in input.hidden_values() {
            secrets.add(value);
        }
        let mut book = Book::new(plan, input, secrets, events);
        match compile::compile(plan, &facts(input), &self.options) {
            Ok(c) => (book, Some(c)),
            Err(e) => {
                book.refuse(&e.to_string()).await;
                (book, None)
            }
        }
    }

    /// Picks a run up again: the Workflow it compiled to (the same plan compiles the same), the
    /// pads of its secret outputs read back from its Secret, and what the store holds.
    async fn run_again(
        &self,
        plan: &Plan,
        input: &RunInput,
        resumed: &Resumed,
        name: &str,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        let (mut book, compiled) = self.start(plan, input, events).await;
        book.resume(resumed);
        let Some(compiled) = compiled else {
            return Ok(RunOutcome::Failed);
        };
        if !compiled.pads.is_empty() {
            let secret = self
                .client
                .get_secret(&compiled.secret_name)
                .await
                .map_err(|e| unavailable(&self.name, e))?;
            for (step, output, key) in &compiled.pads {
                let pad = secret
                    .as_ref()
                    .and_then(|s| s["data"][key.as_str()].as_str())
                    .and_then(super::client::base64_decode)
                    .and_then(|hex| decode_hex(&String::from_utf8_lossy(&hex)));
                if let Some(pad) = pad {
                    book.pads.insert((*step, output.clone()), pad);
                }
            }
        }
        let result = self
            .follow_workflow(name.to_string(), &compiled, &mut book, cancel)
            .await;
        if !compiled.secret_keys.is_empty() {
            let _ = self.client.delete_secret(&compiled.secret_name).await;
        }
        result
    }

    async fn run(
        &self,
        plan: &Plan,
        input: &RunInput,
        events: Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        let (mut book, compiled) = self.start(plan, input, events).await;
        let Some(compiled) = compiled else {
            return Ok(RunOutcome::Failed);
        };
        // One fresh pad per secret output, in the run's Secret beside its secrets, and the
        // checkout's credentials.
        let mut values = input.secrets.clone();
        for (key, credential) in &input.connections {
            values.insert(
                format!("{}{key}", compile::CONNECTION_PREFIX),
                credential.value.clone(),
            );
        }
        if let Checkout::Commit(commit) = &input.checkout
            && let Some(credentials) = &commit.credentials
        {
            values.insert(
                compile::CHECKOUT_USERNAME.to_string(),
                credentials.username().to_string(),
            );
            values.insert(
                compile::CHECKOUT_PASSWORD.to_string(),
                credentials.password().to_string(),
            );
            book.secrets.add(credentials.password());
        }
        for (step, output, key) in &compiled.pads {
            let mut pad = vec![0u8; compile::PAD_BYTES];
            if let Err(e) = getrandom::getrandom(&mut pad) {
                book.refuse(&format!("no randomness to seal secret outputs: {e}"))
                    .await;
                return Ok(RunOutcome::Failed);
            }
            values.insert(
                key.clone(),
                pad.iter().map(|b| format!("{b:02x}")).collect(),
            );
            book.pads.insert((*step, output.clone()), pad);
        }
        let result = self
            .submit_and_follow(&compiled, input, &values, &mut book, cancel)
            .await;
        // The Secret goes whatever happened; Kubernetes deletes it with the Workflow anyway.
        if !compiled.secret_keys.is_empty() {
            let _ = self.client.delete_secret(&compiled.secret_name).await;
        }
        result
    }

    async fn submit_and_follow(
        &self,
        compiled: &Compiled,
        input: &RunInput,
        secret_values: &BTreeMap<String, String>,
        book: &mut Book<'_>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        let lost = |e| unavailable(&self.name, e);
        if !compiled.secret_keys.is_empty() {
            let manifest = compile::secret_manifest(
                compiled,
                &self.options.namespace,
                &input.run_id,
                Some(secret_values),
            );
            match self.client.create_secret(&manifest).await {
                Ok(()) => {}
                // Not allowed, or not valid: the run cannot start there, and says why.
                Err(ClientError::Refused {
                    server, message, ..
                }) => {
                    let name = &compiled.secret_name;
                    book.refuse(&format!(
                        "{server} refused the run's Secret {name}: {message}"
                    ))
                    .await;
                    return Ok(RunOutcome::Failed);
                }
                Err(e) => return Err(lost(e)),
            }
        }
        let created = match self.client.submit(&compiled.workflow).await {
            Ok(w) => w,
            Err(ClientError::Refused {
                server, message, ..
            }) => {
                book.refuse(&format!("{server} refused the Workflow: {message}"))
                    .await;
                return Ok(RunOutcome::Failed);
            }
            Err(e) => return Err(lost(e)),
        };
        let name = created["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = created["metadata"]["uid"].as_str().unwrap_or_default();
        book.send(Event::Attached {
            external_id: name.clone(),
        })
        .await;
        if !compiled.secret_keys.is_empty() {
            self.client
                .own_secret(&compiled.secret_name, &name, uid)
                .await
                .map_err(lost)?;
        }
        self.follow_workflow(name, compiled, book, cancel).await
    }

    /// Follows the Workflow `name` to its end.
    async fn follow_workflow(
        &self,
        name: String,
        compiled: &Compiled,
        book: &mut Book<'_>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        let lost = |e| unavailable(&self.name, e);
        let mut follow = Follow {
            client: &self.client,
            workflow: name.clone(),
            tasks: &compiled.tasks,
            terminated: false,
        };
        loop {
            // A cancel that came while the stream was down.
            if cancel.is_cancelled() && !follow.terminated {
                follow.terminated = true;
                self.client.terminate(&name).await.map_err(lost)?;
            }
            let mut stream = match self.client.events(&name).await {
                Ok(s) => Some(s),
                Err(ClientError::Unavailable { .. }) => None,
                Err(e) => return Err(lost(e)),
            };
            while let Some(s) = stream.as_mut() {
                let event = tokio::select! {
                    e = s.next() => e,
                    // A stream that stays silent may be a connection that died unseen: read the
                    // Workflow and follow anew, so a run never hangs on it.
                    () = tokio::time::sleep(self.idle) => None,
                    () = cancel.cancelled(), if !follow.terminated => {
                        follow.terminated = true;
                        self.client.terminate(&name).await.map_err(lost)?;
                        continue;
                    }
                };
                let Some(event) = event else { break };
                if event["type"] == "DELETED" {
                    return Err(ExecutorError::Unavailable {
                        executor: self.name.clone(),
                        server: self.client.connection().server.clone(),
                        reason: format!("deleted the Workflow {name} before it finished"),
                    });
                }
                if let Some(outcome) = follow.observe(&event["object"], book).await {
                    return Ok(outcome);
                }
            }
            // The stream ended early: read the Workflow, then follow again.
            tokio::time::sleep(self.reconnect).await;
            match self.client.get(&name).await.map_err(lost)? {
                Some(wf) => {
                    if let Some(outcome) = follow.observe(&wf, book).await {
                        return Ok(outcome);
                    }
                }
                None => {
                    return Err(ExecutorError::Unavailable {
                        executor: self.name.clone(),
                        server: self.client.connection().server.clone(),
                        reason: format!("has no Workflow {name} any more"),
                    });
                }
            }
        }
    }
}

/// What has been told about each step so far, and the values later steps resolve with.
struct Book<'a> {
    plan: &'a Plan,
    events: Sender<Event>,
    secrets: Secrets,
    values: Values,
    steps: Vec<StepBook>,
    /// Where pod lines go, shared with the tasks that follow pods' logs.
    sink: LogSink,
    /// The task following the log of each running attempt, by step and attempt.
    followers: BTreeMap<(usize, u32), tokio::task::JoinHandle<bool>>,
    /// Lines of an attempt's log already in the store (a run picked up again), by step and attempt.
    skip: BTreeMap<(usize, u32), usize>,
    /// The pad of each secret output, by step and output.
    pads: BTreeMap<(usize, String), Vec<u8>>,
}

/// Pod lines into the run's log: masked, within the per-step and per-run caps.
#[derive(Clone)]
struct LogSink {
    events: Sender<Event>,
    secrets: Secrets,
    limits: Limits,
    budget: std::sync::Arc<std::sync::Mutex<Budget>>,
}

/// Log bytes kept so far.
struct Budget {
    step: Vec<u64>,
    cut: Vec<bool>,
    run: u64,
}

impl LogSink {
    async fn line(&self, i: usize, attempt: u32, line: &str) {
        let cost = crate::executor::log_line_cost(line);
        // None: drop it; Some(true): keep it; Some(false): drop it and say where the log was cut.
        let verdict = {
            let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            let over = b.step.get(i).copied().unwrap_or(0) + cost > self.limits.max_step_log
                || b.run + cost > self.limits.max_run_log;
            if !over {
                if let Some(s) = b.step.get_mut(i) {
                    *s += cost;
                }
                b.run += cost;
                Some(true)
            } else if b.cut.get(i).copied().unwrap_or(true) {
                None
            } else {
                if let Some(c) = b.cut.get_mut(i) {
                    *c = true;
                }
                Some(false)
            }
        };
        let (stream, text) = match verdict {
            None => return,
            Some(true) => (Stream::Stdout, self.secrets.mask(line)),
            Some(false) => (Stream::System, self.limits.cut_line()),
        };
        let _ = self
            .events
            .send(Event::Log {
                step: i,
                attempt,
                stream,
                lines: vec![text],
                at: Utc::now(),
            })
            .await;
    }
}

#[derive(Default, Clone)]
struct StepBook {
    started: u32,
    finished: u32,
    /// Its final status, once told.
    done: Option<StepStatus>,
    /// Why its dependents do not run, when it did not pass (or was kept from running itself).
    blocks: Option<String>,
    /// Told before a restart: its outputs are read into the values, not told again.
    resumed: bool,
}

impl<'a> Book<'a> {
    fn new(plan: &'a Plan, input: &RunInput, secrets: Secrets, events: Sender<Event>) -> Book<'a> {
        let n = plan.steps.len();
        Book {
            plan,
            sink: LogSink {
                events: events.clone(),
                secrets: secrets.clone(),
                limits: input.limits,
                budget: std::sync::Arc::new(std::sync::Mutex::new(Budget {
                    step: vec![0; n],
                    cut: vec![false; n],
                    run: 0,
                })),
            },
            events,
            secrets,
            values: Values::from_input(input),
            steps: vec![StepBook::default(); n],
            followers: BTreeMap::new(),
            skip: BTreeMap::new(),
            pads: BTreeMap::new(),
        }
    }

    async fn send(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Every step ends as an error with `why`: the run never got onto the cluster.
    async fn refuse(&mut self, why: &str) {
        let message = self.secrets.mask(why);
        for i in 0..self.plan.steps.len() {
            self.finish(i, StepStatus::Error, Some(message.clone()))
                .await;
        }
    }

    async fn finish(&mut self, i: usize, status: StepStatus, message: Option<String>) {
        if self.steps[i].done.is_some() {
            return;
        }
        let step = &self.plan.steps[i];
        self.steps[i].done = Some(status);
        if self.steps[i].blocks.is_none() {
            self.steps[i].blocks = rules::blocks(step, status);
        }
        if status != StepStatus::Succeeded {
            self.values.outputs.entry(step.name.clone()).or_default();
        }
        self.send(Event::StepFinished {
            step: i,
            status,
            message: message.map(|m| self.secrets.mask(&m)),
            at: Utc::now(),
        })
        .await;
    }

    /// Starts from what the store holds of a run picked up again.
    fn resume(&mut self, resumed: &Resumed) {
        for (i, r) in resumed.steps.iter().enumerate() {
            let Some(step) = self.steps.get_mut(i) else {
                continue;
            };
            step.started = r.started;
            step.finished = r.finished;
            step.done = r.done;
            step.resumed = true;
            if let Some(status) = r.done {
                step.blocks = rules::blocks(&self.plan.steps[i], status);
            }
            if r.started > r.finished {
                self.skip.insert((i, r.started), r.lines);
            }
        }
    }

    /// An attempt's log is complete: the task that followed it has ended (given half a minute
    /// after the pod), else what the pod printed is read whole.
    async fn attempt_log(
        &mut self,
        client: &Client,
        workflow: &str,
        pod: &str,
        i: usize,
        attempt: u32,
    ) {
        let followed = match self.followers.remove(&(i, attempt)) {
            Some(task) => matches!(
                tokio::time::timeout(Duration::from_secs(30), task).await,
                Ok(Ok(true))
            ),
            None => false,
        };
        if !followed {
            for line in client.pod_logs(workflow, pod).await.unwrap_or_default() {
                self.sink.line(i, attempt, &line).await;
            }
        }
    }
}

/// Following one Workflow.
struct Follow<'c> {
    client: &'c Client,
    workflow: String,
    tasks: &'c [String],
    /// Set once Gantry terminated it (a cancel).
    terminated: bool,
}

fn is_final(phase: &str) -> bool {
    matches!(
        phase,
        "Succeeded" | "Failed" | "Error" | "Skipped" | "Omitted"
    )
}

impl Follow<'_> {
    /// The Workflow's task nodes by task name (the DAG's children), read once per look.
    fn task_nodes<'w>(&self, wf: &'w Value) -> BTreeMap<&'w str, &'w Value> {
        wf["status"]["nodes"]
            .as_object()
            .into_iter()
            .flat_map(|nodes| nodes.values())
            .filter(|n| n["boundaryID"] == self.workflow.as_str())
            .filter_map(|n| Some((n["displayName"].as_str()?, n)))
            .collect()
    }

    /// The task node of step `i`, and its attempt nodes in order.
    fn nodes<'w>(
        &self,
        wf: &'w Value,
        tasks: &BTreeMap<&'w str, &'w Value>,
        i: usize,
    ) -> Option<(&'w Value, Vec<&'w Value>)> {
        let nodes = wf["status"]["nodes"].as_object()?;
        let node = *tasks.get(self.tasks.get(i)?.as_str())?;
        let attempts = match node["type"].as_str() {
            Some("Retry") => node["children"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().and_then(|id| nodes.get(id)))
                .collect(),
            Some("Pod") => vec![node],
            _ => Vec::new(),
        };
        Some((node, attempts))
    }

    /// Follows a pod's log into the run's log from its line `skip` on, as the pod prints it.
    fn follow_log(&self, book: &mut Book<'_>, i: usize, attempt: u32, pod: &Value, skip: usize) {
        let (client, sink) = (self.client.clone(), book.sink.clone());
        let (workflow, pod_name) = (self.workflow.clone(), self.pod_name(pod));
        let follower = tokio::spawn(async move {
            let Ok(mut lines) = client.follow_pod_log(&workflow, &pod_name).await else {
                return false;
            };
            let mut seen = 0usize;
            while let Some(entry) = lines.next().await {
                if let Some(line) = entry["content"].as_str() {
                    seen += 1;
                    if seen > skip {
                        sink.line(i, attempt, line).await;
                    }
                }
            }
            true
        });
        book.followers.insert((i, attempt), follower);
    }

    /// A succeeded task's declared outputs, secret ones opened with their pads (and masked from
    /// then on).
    fn outputs(&self, node: &Value, i: usize, book: &Book<'_>) -> Vec<(String, String, bool)> {
        node["outputs"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let n = p["name"].as_str()?.to_string();
                let v = p["value"].as_str().unwrap_or_default();
                let declared = book.plan.steps[i].outputs.iter().find(|o| o.name == n)?;
                if !declared.secret {
                    return Some((n, book.secrets.mask(v), false));
                }
                let pad = book.pads.get(&(i, n.clone()))?;
                let value = unseal(v, pad)?;
                book.secrets.add(&value);
                Some((n, value, true))
            })
            .collect()
    }

    /// The name of a pod node's pod, as Argo names pods (`<workflow>-<template>-<hash>`, the
    /// hash being the node id's).
    fn pod_name(&self, pod: &Value) -> String {
        let id = pod["id"].as_str().unwrap_or_default();
        let hash = id
            .strip_prefix(&format!("{}-", self.workflow))
            .unwrap_or(id);
        let template = pod["templateName"].as_str().unwrap_or_default();
        format!("{}-{template}-{hash}", self.workflow)
    }

    /// A pod node's end in Gantry's words.
    fn attempt_end(
        &self,
        pod: &Value,
        i: usize,
        book: &Book,
    ) -> (StepStatus, Option<i32>, Option<String>) {
        let message = pod["message"].as_str().unwrap_or("");
        let exit_code = pod["outputs"]["exitCode"]
            .as_str()
            .and_then(|c| c.parse::<i32>().ok());
        match pod["phase"].as_str().unwrap_or("") {
            "Succeeded" => (StepStatus::Succeeded, exit_code.or(Some(0)), None),
            "Failed" if message.contains("longer than the specified deadline") => {
                let timeout = book.plan.steps[i].timeout.unwrap_or_default();
                (
                    StepStatus::TimedOut,
                    None,
                    Some(format!("timed out after {}", format_duration(timeout))),
                )
            }
            "Failed" if self.terminated => {
                (StepStatus::Cancelled, None, Some("run cancelled".into()))
            }
            "Failed" if message == "Max duration limit exceeded" => {
                (StepStatus::Cancelled, None, Some("run timed out".into()))
            }
            "Failed" => match exit_code {
                Some(code) => (
                    StepStatus::Failed,
                    Some(code),
                    Some(format!("exited with code {code}")),
                ),
                None => (StepStatus::Error, None, Some(message.to_string())),
            },
            _ => (StepStatus::Error, exit_code, Some(message.to_string())),
        }
    }

    /// Tells what changed since the last look; returns the run's outcome once it ended.
    async fn observe(&mut self, wf: &Value, book: &mut Book<'_>) -> Option<RunOutcome> {
        let tasks = self.task_nodes(wf);
        for i in 0..book.plan.steps.len() {
            if book.steps[i].done.is_some() {
                // Over before a restart: its outputs are only needed by the steps after it.
                let name = &book.plan.steps[i].name;
                if book.steps[i].resumed
                    && !book.values.outputs.contains_key(name)
                    && let Some((node, _)) = self.nodes(wf, &tasks, i)
                    && node["phase"] == "Succeeded"
                {
                    let values = self.outputs(node, i, book);
                    book.values.outputs.insert(
                        name.clone(),
                        values.into_iter().map(|(n, v, _)| (n, v)).collect(),
                    );
                }
                continue;
            }
            let Some((node, attempts)) = self.nodes(wf, &tasks, i) else {
                continue;
            };
            if node["type"] == "Skipped" {
                book.finish(i, StepStatus::Skipped, Some("when was false".into()))
                    .await;
                continue;
            }
            let task_final = is_final(node["phase"].as_str().unwrap_or(""));
            let mut last = None;
            for (k, pod) in attempts.iter().enumerate() {
                let attempt = u32::try_from(k + 1).unwrap_or(u32::MAX);
                let phase = pod["phase"].as_str().unwrap_or("");
                if attempt > book.steps[i].started && phase != "Pending" && !phase.is_empty() {
                    book.send(Event::StepStarted {
                        step: i,
                        attempt,
                        handle: AttemptHandle::Argo {
                            workflow: self.workflow.clone(),
                            node: pod["id"].as_str().unwrap_or_default().to_string(),
                            pod: Some(self.pod_name(pod)),
                        },
                        at: Utc::now(),
                    })
                    .await;
                    book.steps[i].started = attempt;
                    self.follow_log(book, i, attempt, pod, 0);
                } else if attempt == book.steps[i].started
                    && attempt > book.steps[i].finished
                    && !book.followers.contains_key(&(i, attempt))
                    && let Some(skip) = book.skip.remove(&(i, attempt))
                {
                    // Running when Gantry restarted: the lines the store has are not told again.
                    self.follow_log(book, i, attempt, pod, skip);
                }
                // An attempt is over when its pod is, and, under a Retry node, when the next
                // attempt exists or the task itself is over (so a retry is never missed).
                let over = is_final(phase) && (k + 1 < attempts.len() || task_final);
                if attempt > book.steps[i].finished && over {
                    book.attempt_log(self.client, &self.workflow, &self.pod_name(pod), i, attempt)
                        .await;
                    let (status, exit_code, message) = self.attempt_end(pod, i, book);
                    if status == StepStatus::Succeeded
                        && let Action::Publish(resource) = &book.plan.steps[i].action
                    {
                        match crate::executor::publish::resolve(resource, &book.values) {
                            Ok(publication) => {
                                book.send(Event::Published {
                                    step: i,
                                    publication,
                                })
                                .await
                            }
                            Err(e) => {
                                book.finish(i, StepStatus::Error, Some(e)).await;
                                break;
                            }
                        }
                    }
                    let more = k + 1 < attempts.len();
                    let retry_in = more.then(|| {
                        rules::retry_after(book.plan.steps[i].retry.as_ref(), attempt, status)
                            .unwrap_or_default()
                    });
                    book.send(Event::AttemptFinished {
                        step: i,
                        attempt,
                        status,
                        exit_code,
                        message: message.clone().map(|m| book.secrets.mask(&m)),
                        retry_in,
                        at: Utc::now(),
                    })
                    .await;
                    book.steps[i].finished = attempt;
                    last = Some((status, message));
                }
            }
            if task_final
                && book.steps[i].done.is_none()
                && let Some((status, message)) = last
            {
                if status == StepStatus::Succeeded {
                    let values = self.outputs(node, i, book);
                    book.values.outputs.insert(
                        book.plan.steps[i].name.clone(),
                        values
                            .iter()
                            .map(|(n, v, _)| (n.clone(), v.clone()))
                            .collect(),
                    );
                    if !values.is_empty() {
                        book.send(Event::Outputs { step: i, values }).await;
                    }
                }
                book.finish(i, status, message).await;
            }
        }
        if wf["status"]["finishedAt"].is_null()
            || !is_final(wf["status"]["phase"].as_str().unwrap_or(""))
        {
            return None;
        }
        Some(self.conclude(wf, book).await)
    }

    /// The Workflow is over: steps it never ran end as the rules say, and the outcome follows.
    async fn conclude(&self, wf: &Value, book: &mut Book<'_>) -> RunOutcome {
        let timed_out = wf["status"]["message"] == "Max duration limit exceeded";
        for i in book.plan.topological_order() {
            if book.steps[i].done.is_some() {
                continue;
            }
            // An attempt that started and was cut off ends with the run.
            let (status, why) = if self.terminated {
                (StepStatus::Cancelled, "run cancelled".to_string())
            } else if timed_out {
                (StepStatus::Cancelled, "run timed out".to_string())
            } else {
                // What kept it: a needed step that did not pass, or (where Argo tolerates less
                // than the rules, as a deadline under `continueOn: {error: true}`) one that did
                // not succeed.
                let plan = book.plan;
                let reason = plan.steps[i].needs.iter().find_map(|&d| {
                    let s = book.steps.get(d)?;
                    s.blocks.clone().or_else(|| {
                        s.done
                            .filter(|st| !matches!(st, StepStatus::Succeeded | StepStatus::Skipped))
                            .map(|st| rules::ended(&plan.steps[d].name, st))
                    })
                });
                match reason {
                    Some(r) => {
                        book.steps[i].blocks = Some(r.clone());
                        (StepStatus::Skipped, format!("not run: {r}"))
                    }
                    // Argo's own reason, such as an output it could not resolve.
                    None => (
                        StepStatus::Error,
                        match wf["status"]["message"].as_str() {
                            Some(m) if !m.is_empty() => format!("not run on Argo: {m}"),
                            _ => "the Workflow ended without running this step".to_string(),
                        },
                    ),
                }
            };
            let started = book.steps[i].started;
            if started > book.steps[i].finished {
                // The Workflow is over, so is the pod's log: let its follower finish.
                if let Some(task) = book.followers.remove(&(i, started)) {
                    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
                }
                book.send(Event::AttemptFinished {
                    step: i,
                    attempt: started,
                    status,
                    exit_code: None,
                    message: Some(why.clone()),
                    retry_in: None,
                    at: Utc::now(),
                })
                .await;
            }
            book.finish(i, status, Some(why)).await;
        }
        if self.terminated {
            return RunOutcome::Cancelled;
        }
        if timed_out {
            return RunOutcome::TimedOut;
        }
        let all_passed = book
            .plan
            .steps
            .iter()
            .zip(&book.steps)
            .all(|(step, s)| s.done.is_some_and(|st| rules::passes(step.continue_on, st)));
        // Argo's own verdict counts too: it fails a Workflow the rules would let pass.
        if all_passed && wf["status"]["phase"] == "Succeeded" {
            RunOutcome::Succeeded
        } else {
            RunOutcome::Failed
        }
    }
}

/// Opens a sealed output: its hex XORed with the pad, one trailing newline dropped (as Gantry
/// reads every output); `None` for text that is not the hex of at most a pad's bytes.
fn unseal(hex: &str, pad: &[u8]) -> Option<String> {
    let sealed = decode_hex(hex)?;
    if sealed.len() > pad.len() {
        return None;
    }
    let bytes: Vec<u8> = sealed.iter().zip(pad).map(|(b, p)| b ^ p).collect();
    let mut value = String::from_utf8_lossy(&bytes).into_owned();
    if value.ends_with('\n') {
        value.pop();
    }
    Some(value)
}

/// Bytes from their hex text.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len() / 2)
        .map(|k| u8::from_str_radix(hex.get(2 * k..2 * k + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::unseal;

    #[test]
    fn a_sealed_value_opens_with_its_pad_only() {
        let pad = [0x5a, 0x01, 0xff, 0x10, 0x00];
        let sealed: String = b"pw1\n"
            .iter()
            .zip(pad)
            .map(|(b, p)| format!("{:02x}", b ^ p))
            .collect();
        assert_eq!(unseal(&sealed, &pad).as_deref(), Some("pw1"));
        assert_ne!(unseal(&sealed, &[0; 5]).as_deref(), Some("pw1"));
        assert_eq!(unseal("abc", &pad), None);
        assert_eq!(unseal("zz", &pad), None);
        assert_eq!(unseal(&"00".repeat(6), &pad), None);
    }
}
