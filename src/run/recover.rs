//! Crash recovery: no run stays `running` after the process running it is gone.
//!
//! Each active run records its owner (pid and process start time, so a reused pid is not taken for
//! the owner). On start, every active run whose owner is gone is marked interrupted, its unfinished
//! steps too, and the processes it left behind are killed. Those are found by the `GANTRY_RUN_ID`
//! that every step process (and whatever it starts) has in its environment, read from /proc; this
//! needs no per-step bookkeeping and also finds grandchildren that left their process group.

use chrono::Utc;

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

/// Processes whose environment holds `GANTRY_RUN_ID=<run_id>`.
pub fn processes_of_run(run_id: &str) -> Vec<u32> {
    let needle = format!("GANTRY_RUN_ID={run_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills every process of a run and their process groups. Returns how many processes were found.
/// They are orphans of a Gantry that is gone, so there is no one to wait for a grace period.
pub fn kill_run_processes(run_id: &str) -> usize {
    let pids = processes_of_run(run_id);
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    for &pid in &pids {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        if pid <= 1 {
            continue;
        }
        // SAFETY: kill(2) takes plain integers; a stale pid at worst fails with ESRCH. Step
        // processes lead their own group; never signal ours (or group 0/1).
        unsafe {
            if pid != own_group {
                libc::kill(-pid, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
    }
    pids.len()
}

/// Marks runs whose owner is gone as interrupted and kills what they left behind. Returns the
/// runs it interrupted.
pub fn recover(store: &Store) -> Result<Vec<RunRecord>, StoreError> {
    // Spare sandboxes of a process that went away left their (empty) run directories; only one
    // process uses a data dir, and so its work dir, at a time.
    if let Ok(entries) = std::fs::read_dir(store.work_dir()) {
        for entry in entries.flatten() {
            let spare = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(crate::executor::local::sandbox::SPARE_PREFIX));
            if spare {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let mut interrupted = Vec::new();
    for run in store.active_runs()? {
        if run.owner.as_ref().is_some_and(owner_alive) {
            continue;
        }
        // A queued run that no process has taken yet waits in the service's durable queue.
        if run.status == RunStatus::Queued && run.owner.is_none() {
            continue;
        }
        let killed = kill_run_processes(&run.id);
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
            eprintln!("gantry: warning: cannot remove {}: {e}", run_dir.display());
        }
        let run = store.end_run(&run.id, RunStatus::Interrupted, Some(message))?;
        interrupted.push(run);
    }
    if !interrupted.is_empty() {
        store.flush()?;
    }
    Ok(interrupted)
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

    #[test]
    fn processes_are_found_by_their_run_id() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("GANTRY_RUN_ID", "TESTRUNID123")
            .spawn()
            .expect("spawn sleep");
        // The child may need a moment to exec before its environ is readable.
        let mut found = Vec::new();
        for _ in 0..50 {
            found = processes_of_run("TESTRUNID123");
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(found, vec![child.id()]);
        assert_eq!(kill_run_processes("TESTRUNID123"), 1);
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }
}
