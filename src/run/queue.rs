//! The service's run queue, shared by every trigger (API, schedule, webhook).
//!
//! A submitted run is recorded as queued (flushed) before `submit` returns; the queue in memory is
//! only an index of those records, rebuilt from the store on start, so queued runs survive a
//! restart. The dispatcher starts queued runs oldest first while the global limit allows, never
//! two runs of one concurrency group at once. A pipeline's `concurrency.policy` decides what a new
//! run does when its group is busy:
//!
//! - `queue`: it waits for the runs before it;
//! - `cancel-running`: the group's queued runs are cancelled and its running run is asked to stop;
//!   the new run starts once that one has ended;
//! - `skip`: it is recorded as skipped and never starts.
//!
//! A group is resolved once, when the run is submitted, from its parameters, variables, git ref
//! and trigger. Groups are namespaced by the run's source: pipelines of one repository (or of
//! `local`) can share a group on purpose, but a repository can never wait on, skip or cancel
//! another source's runs by naming the same group.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::executors::Executors;
use super::trust::{ProtectedRefs, release_for};
use super::{Enqueue, Start, StartError, check_params};
use crate::executor::{Checkout, GitInfo, Values};
use crate::spec::model::{ConcurrencyPolicy, Pipeline};
use crate::store::{RunRecord, RunStatus, Store, StoreError, Trigger};

/// Chooses the files a run sees: the commit of its repository's mirror, or none.
pub type CheckoutFor = dyn Fn(&RunRecord) -> Checkout + Send + Sync;

/// Names the executor a run goes to (its repository's, its local pipeline's), or `None` for the
/// default.
pub type ExecutorFor = dyn Fn(&RunRecord) -> Option<String> + Send + Sync;

/// Told about every run state the queue stores (queued or skipped, running, ended), after it is
/// stored; reporting hangs off this. Called on the thread that made the change: keep it quick.
pub type OnTransition = dyn Fn(&RunRecord) + Send + Sync;

/// Knobs of the queue.
pub struct QueueConfig {
    /// Runs executing at once, over all pipelines.
    pub max_running: usize,
    pub checkout: Arc<CheckoutFor>,
    /// `None`: every run goes to the default executor.
    pub executor_for: Option<Arc<ExecutorFor>>,
    pub on_transition: Option<Arc<OnTransition>>,
    /// The protected refs of each watched repository, by source name (`trust::release_for`).
    pub protected: BTreeMap<String, ProtectedRefs>,
    /// How a run's refusal names the command that sets what is missing.
    pub hints: super::Hints,
}

/// A run to submit.
#[derive(Debug, Clone)]
pub struct Submit {
    pub source: String,
    pub pipeline: Pipeline,
    pub version: u32,
    /// Parameter values as text, checked against the declarations.
    pub params: BTreeMap<String, String>,
    pub trigger: Trigger,
    pub git: Option<GitInfo>,
    /// The pull request the run belongs to.
    pub pr: Option<u64>,
    /// Submitted at most once under this key: a second submit returns the first run and queues
    /// nothing (a webhook delivery processed again after a crash).
    pub idempotency_key: Option<String>,
    /// The run this one retries from its failed step: its succeeded steps are reused.
    pub retry_of: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("run {0} has already ended")]
    Ended(String),
    #[error("gantry is shutting down and takes no new runs")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    executors: Executors,
    config: QueueConfig,
    state: Mutex<State>,
    accepting: AtomicBool,
    /// Bumped after every batch of recorded events and every run state change, for followers.
    changes: watch::Sender<u64>,
}

/// The queue's key of a run's concurrency group: its source and the group as resolved (`\0`
/// cannot occur in a source name).
fn group_key(source: &str, group: &str) -> String {
    format!("{source}\0{group}")
}

#[derive(Default)]
struct State {
    /// Queued run ids, oldest first, with their group key (`group_key`).
    queued: VecDeque<(String, Option<String>)>,
    running: HashMap<String, Active>,
}

struct Active {
    cancel: CancellationToken,
    group: Option<String>,
    /// Cancelled because the service is stopping: the run ends as interrupted.
    interrupted: Arc<AtomicBool>,
    done: watch::Receiver<bool>,
}

impl State {
    /// A queued or running run of `group`. A run whose end is already stored but whose task has
    /// not yet left `running` does not count.
    fn group_busy(&self, group: &str, store: &Store) -> Option<&str> {
        self.running
            .iter()
            .find(|(id, a)| a.group.as_deref() == Some(group) && still_active(store, id))
            .map(|(id, _)| id.as_str())
            .or_else(|| {
                self.queued
                    .iter()
                    .find(|(_, g)| g.as_deref() == Some(group))
                    .map(|(id, _)| id.as_str())
            })
    }
}

fn still_active(store: &Store, id: &str) -> bool {
    store
        .get_run(id)
        .ok()
        .flatten()
        .is_none_or(|r| r.status.is_active())
}

impl Queue {
    /// Builds the queue over the store's queued runs and starts those it can. Call after crash
    /// recovery, inside a tokio runtime.
    pub fn start(
        store: Store,
        executors: Executors,
        config: QueueConfig,
    ) -> Result<Queue, StoreError> {
        let mut state = State::default();
        for run in store.queued_runs()? {
            let key = run
                .concurrency
                .as_deref()
                .map(|g| group_key(&run.source, g));
            state.queued.push_back((run.id, key));
        }
        let (changes, _) = watch::channel(0);
        let queue = Queue {
            inner: Arc::new(Inner {
                store,
                executors,
                config,
                state: Mutex::new(state),
                accepting: AtomicBool::new(true),
                changes,
            }),
        };
        queue.dispatch();
        Ok(queue)
    }

    /// A receiver that changes whenever a run records events or changes state.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Re-reads a run and tells the transition observer about it.
    fn report(&self, id: &str) {
        let Some(observe) = &self.inner.config.on_transition else {
            return;
        };
        if let Ok(Some(run)) = self.inner.store.get_run(id) {
            observe(&run);
        }
    }

    /// Records a run and queues it under its pipeline's concurrency policy. A parameter error
    /// records nothing.
    pub fn submit(&self, s: Submit) -> Result<RunRecord, StartError> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(StartError::Unavailable(
                QueueError::ShuttingDown.to_string(),
            ));
        }
        let params = check_params(&s.pipeline, &s.params).map_err(StartError::Parameter)?;
        let store = &self.inner.store;
        let group = match &s.pipeline.concurrency {
            Some(c) => {
                // The same variables the run will see (`trust::scope_of`).
                let scope = super::trust::scope_of(store, &s.source, s.pipeline.name(), s.version)?;
                let values = Values {
                    params: params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect(),
                    vars: store.resolve_vars_for(scope.own(), &s.pipeline.variables)?,
                    git: s.git.clone(),
                    trigger: s.trigger.kind.clone(),
                    ..Values::default()
                };
                let rendered = c
                    .group
                    .render(|r| values.resolve(r).or(Some(String::new())))
                    .unwrap_or_default();
                Some((rendered, c.policy))
            }
            None => None,
        };
        let key = group.as_ref().map(|(g, _)| group_key(&s.source, g));
        let mut state = self.lock();
        if let Some(k) = &s.idempotency_key
            && let Some(id) = store.done_for(k)?
            && let Some(run) = store.get_run(&id)?
        {
            return Ok(run);
        }
        let mut status = RunStatus::Queued;
        let mut message = None;
        let mut to_cancel = Vec::new();
        if let (Some((g, policy)), Some(key)) = (&group, &key)
            && let Some(busy) = state.group_busy(key, store)
        {
            match policy {
                ConcurrencyPolicy::Queue => {}
                ConcurrencyPolicy::Skip => {
                    status = RunStatus::Skipped;
                    message = Some(format!(
                        "skipped: run {busy} of concurrency group `{g}` is still active"
                    ));
                }
                ConcurrencyPolicy::CancelRunning => {
                    to_cancel = state
                        .queued
                        .iter()
                        .filter(|(_, qg)| qg.as_deref() == Some(key.as_str()))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for a in state.running.values() {
                        if a.group.as_deref() == Some(key.as_str()) {
                            a.cancel.cancel();
                        }
                    }
                }
            }
        }
        let run = super::enqueue(
            store,
            &s.pipeline,
            Enqueue {
                source: s.source,
                version: s.version,
                params,
                trigger: s.trigger,
                git: s.git,
                concurrency: group.map(|(g, _)| g),
                status,
                message,
                owner: None,
                pr: s.pr,
                idempotency_key: s.idempotency_key,
                retry_of: s.retry_of,
            },
        )?;
        let cancelled = to_cancel.clone();
        for id in to_cancel {
            state.queued.retain(|(q, _)| *q != id);
            store.end_run(
                &id,
                RunStatus::Cancelled,
                Some(format!("cancelled: superseded by run {}", run.id)),
            )?;
        }
        if run.status == RunStatus::Queued {
            state.queued.push_back((run.id.clone(), key));
        }
        drop(state);
        // The new run was flushed by `enqueue`; the runs it cancelled still need it.
        if !cancelled.is_empty() {
            store.flush()?;
        }
        self.bump();
        self.report(&run.id);
        audit_started(store, &run);
        for id in cancelled {
            self.report(&id);
        }
        self.dispatch();
        Ok(run)
    }

    /// Cancels a run: a queued one ends at once, a running one is asked to stop (its steps get
    /// SIGTERM, then SIGKILL after the grace period).
    pub fn cancel(&self, id: &str) -> Result<RunRecord, QueueError> {
        let store = &self.inner.store;
        let mut state = self.lock();
        if let Some(active) = state.running.get(id) {
            let run = store.find_run(id)?;
            if !run.status.is_active() {
                // Its end is stored; its task is on the way out of `running`.
                return Err(QueueError::Ended(run.id));
            }
            active.cancel.cancel();
            return Ok(run);
        }
        if let Some(i) = state.queued.iter().position(|(q, _)| q == id) {
            state.queued.remove(i);
            let run = store.end_run(id, RunStatus::Cancelled, Some("cancelled".into()))?;
            store.flush()?;
            drop(state);
            self.bump();
            self.report(id);
            self.dispatch();
            return Ok(run);
        }
        let run = store.find_run(id)?;
        Err(QueueError::Ended(run.id))
    }

    /// Runs queued and running now.
    pub fn active(&self) -> (usize, usize) {
        let state = self.lock();
        (state.queued.len(), state.running.len())
    }

    /// Starts queued runs while the limit and their groups allow.
    fn dispatch(&self) {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return;
        }
        let mut state = self.lock();
        let mut i = 0;
        while i < state.queued.len() && state.running.len() < self.inner.config.max_running.max(1) {
            let (id, group) = state.queued[i].clone();
            let blocked = group.as_deref().is_some_and(|g| {
                state
                    .running
                    .values()
                    .any(|a| a.group.as_deref() == Some(g))
                    || state
                        .queued
                        .iter()
                        .take(i)
                        .any(|(_, qg)| qg.as_deref() == Some(g))
            });
            if blocked {
                i += 1;
                continue;
            }
            state.queued.remove(i);
            self.spawn_run(&mut state, id, group, None);
        }
    }

    /// Follows again a run that its executor picked up after a restart (`recover::Recovered`'s
    /// `reattach`): it counts as running, can be cancelled, and ends as any run does.
    pub fn reattach(&self, run: RunRecord, external_id: String) {
        let group = run
            .concurrency
            .as_deref()
            .map(|g| group_key(&run.source, g));
        let mut state = self.lock();
        self.spawn_run(&mut state, run.id, group, Some(external_id));
    }

    /// Marks `id` running and runs it (from the start, or following `external_id` again) on a
    /// task of its own.
    fn spawn_run(
        &self,
        state: &mut State,
        id: String,
        group: Option<String>,
        external_id: Option<String>,
    ) {
        let cancel = CancellationToken::new();
        let interrupted = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = watch::channel(false);
        state.running.insert(
            id.clone(),
            Active {
                cancel: cancel.clone(),
                group,
                interrupted: interrupted.clone(),
                done,
            },
        );
        let queue = self.clone();
        tokio::spawn(async move {
            if let Err(e) = queue.run_one(&id, external_id, cancel, &interrupted).await {
                tracing::error!("run {id}: {e}");
                let _ = queue.inner.store.end_run(
                    &id,
                    RunStatus::Failed,
                    Some(format!("gantry could not run it: {e}")),
                );
                let _ = queue.inner.store.flush_async().await;
            }
            queue.lock().running.remove(&id);
            let _ = done_tx.send(true);
            queue.bump();
            queue.report(&id);
            queue.dispatch();
        });
    }

    async fn run_one(
        &self,
        id: &str,
        external_id: Option<String>,
        cancel: CancellationToken,
        interrupted: &AtomicBool,
    ) -> Result<(), String> {
        let store = self.inner.store.clone();
        let run = store.find_run(id).map_err(|e| e.to_string())?;
        let expected = match external_id {
            None => RunStatus::Queued,
            Some(_) => RunStatus::Running,
        };
        if run.status != expected {
            return Ok(());
        }
        let version = store
            .get_version(&run.source, &run.pipeline, run.version)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("version {} of the pipeline is not stored", run.version))?;
        let checked = crate::spec::check(&version.text);
        let Some(pipeline) = checked.pipeline else {
            return Err(format!(
                "version {} of {}/{} no longer passes validation",
                run.version, run.source, run.pipeline
            ));
        };
        // A run picked up again goes back to the executor that started it.
        let wanted = match &external_id {
            Some(_) => run.executor.clone(),
            None => self
                .inner
                .config
                .executor_for
                .as_ref()
                .and_then(|f| f(&run)),
        };
        let Some((name, registered)) = self.inner.executors.get(wanted.as_deref()) else {
            let name = wanted.unwrap_or_else(|| self.inner.executors.default_name().into());
            let known: Vec<&str> = self.inner.executors.names().collect();
            return Err(format!(
                "no executor `{name}` is configured (the executors are {})",
                known.join(", ")
            ));
        };
        let (name, executor, limits) = (
            name.to_string(),
            registered.executor.clone(),
            registered.limits,
        );
        let how = Start {
            checkout: (self.inner.config.checkout)(&run),
            limits,
            keep_run_dir: false,
            var_overrides: BTreeMap::new(),
            release: release_for(&run, &self.inner.config.protected),
            hints: self.inner.config.hints.clone(),
        };
        let prepared = super::start(&store, run, &pipeline, how).map_err(|e| e.to_string())?;
        store
            .update_run(id, |r| {
                r.status = RunStatus::Running;
                r.started_at.get_or_insert_with(chrono::Utc::now);
                r.executor = Some(name.clone());
            })
            .map_err(|e| e.to_string())?;
        self.bump();
        self.report(id);
        let changes = self.inner.changes.clone();
        let observe = move |_: &crate::plan::Plan, _: &crate::executor::Event| {
            changes.send_modify(|n| *n = n.wrapping_add(1))
        };
        let ended = match external_id {
            None => super::execute(&store, executor, prepared, cancel, observe).await,
            Some(external_id) => {
                super::reattach(&store, executor, prepared, external_id, cancel, observe).await
            }
        }
        .map_err(|e| e.to_string())?;
        if interrupted.load(Ordering::SeqCst) {
            store
                .update_run(&ended.id, |r| {
                    r.status = RunStatus::Interrupted;
                    r.message = Some("interrupted: gantry stopped before the run finished".into());
                })
                .map_err(|e| e.to_string())?;
            store.flush_async().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Stops taking work: nothing new is queued or started. Running runs get `grace` to finish;
    /// the rest are then cancelled and marked interrupted. Queued runs stay queued for the next
    /// start.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        let waiting: Vec<watch::Receiver<bool>> = self
            .lock()
            .running
            .values()
            .map(|a| a.done.clone())
            .collect();
        let all_done = async {
            for mut done in waiting {
                let _ = done.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_ok() {
            return;
        }
        let left: Vec<watch::Receiver<bool>> = {
            let state = self.lock();
            for a in state.running.values() {
                a.interrupted.store(true, Ordering::SeqCst);
                a.cancel.cancel();
            }
            state.running.values().map(|a| a.done.clone()).collect()
        };
        // Cancelled steps get SIGTERM, then SIGKILL after the kill grace; wait a little longer.
        let bound = self.inner.executors.longest_kill_grace() + Duration::from_secs(5);
        let _ = tokio::time::timeout(bound, async {
            for mut done in left {
                let _ = done.wait_for(|d| *d).await;
            }
        })
        .await;
    }
}

/// Records in the audit log a run that no person started through the API or the pages (they are
/// recorded with their request): a push or pull request webhook, a comment command, a schedule.
fn audit_started(store: &Store, run: &RunRecord) {
    let via = match run.trigger.kind.as_str() {
        "push" | "pullRequest" => "webhook",
        "comment" => "comment",
        "schedule" => "schedule",
        _ => return,
    };
    let entry = crate::store::audit::AuditEntry {
        id: String::new(),
        at: run.created_at,
        who: run
            .trigger
            .detail
            .clone()
            .unwrap_or_else(|| run.trigger.kind.clone()),
        via: via.to_string(),
        action: "run started".to_string(),
        target: format!("{}/{} #{}", run.source, run.pipeline, run.number),
        from: None,
        status: None,
    };
    if let Err(e) = store.audit(entry) {
        tracing::warn!("cannot record run {} in the audit log: {e}", run.id);
    }
}

#[cfg(test)]
mod tests;
