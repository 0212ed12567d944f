//! Crash recovery: no run stays `running` after the process running it is gone.
//!
//! Each active run records its owner (pid and process start time, so a reused pid is not taken for
//! the owner). On start, every active run whose owner is gone is handed to its executor
//! (`Executor::recover`: the local executor kills the processes it left behind), then marked
//! interrupted, its unfinished steps too, and its run directory removed.

use chrono::Utc;

use super::executors::Executors;
use crate::executor::{LostRun, Recovery};
use crate::store::{Owner, RunRecord, RunStatus, StepState, Store, StoreError};

/// The start time of a process, in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process as a run owner.
pub fn current_owner() -> Option<Owner> {
    let pid = std::process::id();
    start_time(pid).map(|start_time| Owner { pid, start_time })
}

/// Whether the recorded owner is still the same living process.
fn owner_alive(owner: &Owner) -> bool {
    start_time(owner.pid) == Some(owner.start_time)
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Runs marked interrupted.
    pub interrupted: Vec<RunRecord>,
    /// Runs that go on where they run (an Argo Workflow), with their identity there: this process
    /// is now their owner, and the queue follows them again (`Queue::reattach`).
    pub reattach: Vec<(RunRecord, String)>,
}

/// Marks runs whose owner is gone as interrupted, after the executor that ran each cleaned up
/// what it left behind (`Executor::recover`; every executor is asked, also with no lost run, for
/// what it left in the work dir), or hands them back for following when they go on elsewhere.
pub fn recover(store: &Store, executors: &Executors) -> Result<Recovered, StoreError> {
    let mut lost_runs = Vec::new();
    for run in store.active_runs()? {
        if run.owner.as_ref().is_some_and(owner_alive) {
            continue;
        }
        // A queued run that no process has taken yet waits in the service's durable queue.
        if run.status == RunStatus::Queued && run.owner.is_none() {
            continue;
        }
        lost_runs.push(run);
    }
    // Runs recorded before executors had names, or whose executor is no longer configured, go
    // to the default one (the local executor, unless configured otherwise).
    let owner_of = |run: &RunRecord| {
        executors
            .get(run.executor.as_deref())
            .or_else(|| executors.get(None))
            .map(|(name, _)| name.to_string())
    };
    let mut stopped: Vec<usize> = vec![0; lost_runs.len()];
    let mut going_on: Vec<Option<String>> = vec![None; lost_runs.len()];
    for (name, registered) in executors.iter() {
        let mine: Vec<usize> = (0..lost_runs.len())
            .filter(|&i| owner_of(&lost_runs[i]).as_deref() == Some(name))
            .collect();
        let lost: Vec<LostRun> = mine
            .iter()
            .map(|&i| LostRun {
                run_id: lost_runs[i].id.clone(),
                external_id: lost_runs[i].external_id.clone(),
            })
            .collect();
        // Only one process uses a data dir, and so its work dir, at a time: what an executor
        // left there (spare sandboxes) is nobody's now.
        let recovered = registered.executor.recover(store.work_dir(), &lost);
        for (k, &i) in mine.iter().enumerate() {
            match recovered.get(k) {
                Some(Recovery::Ended { stopped: n }) => stopped[i] = *n,
                Some(Recovery::Reattach { external_id }) => going_on[i] = Some(external_id.clone()),
                None => {}
            }
        }
    }
    let mut interrupted = Vec::new();
    let mut reattach = Vec::new();
    for ((run, killed), external) in lost_runs.into_iter().zip(stopped).zip(going_on) {
        if let Some(external_id) = external {
            let run = store.update_run(&run.id, |r| {
                r.owner = current_owner();
                r.external_id = Some(external_id.clone());
            })?;
            reattach.push((run, external_id));
            continue;
        }
        let now = Utc::now();
        for (i, step) in store.steps(&run.id)?.iter().enumerate() {
            if !step.state.is_done() {
                store.update_step(&run.id, i, |s| {
                    // Pending steps too: the step may have started after the last background flush,
                    // and either way the run was cut off before it finished.
                    s.state = StepState::Interrupted;
                    s.finished_at = Some(now);
                    s.message = Some("the gantry process running this step went away".into());
                })?;
            }
        }
        let message = match (run.owner, killed) {
            (Some(o), 0) => format!("interrupted: gantry process {} went away", o.pid),
            (Some(o), n) => format!(
                "interrupted: gantry process {} went away; killed {n} leftover step processes",
                o.pid
            ),
            (None, _) => "interrupted: no process owned this run".to_string(),
        };
        // Output files of the run may hold secret values; they go as at the end of any run.
        let run_dir = store.run_dir(&run.id);
        if let Err(e) = std::fs::remove_dir_all(&run_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", run_dir.display());
        }
        let run = store.end_run(&run.id, RunStatus::Interrupted, Some(message))?;
        interrupted.push(run);
    }
    if !interrupted.is_empty() || !reattach.is_empty() {
        store.flush()?;
    }
    Ok(Recovered {
        interrupted,
        reattach,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_its_own_living_owner() {
        let owner = current_owner().expect("/proc is mounted");
        assert!(owner_alive(&owner));
        assert!(!owner_alive(&Owner {
            pid: owner.pid,
            start_time: owner.start_time + 1
        }));
    }
}
