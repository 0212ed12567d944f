//! What the local executor does after a restart (`Executor::recover`): the processes of a run
//! whose Gantry process went away are found by the `GANTRY_RUN_ID` that every step process (and
//! whatever it starts) has in its environment, read from /proc, and killed; this needs no
//! per-step bookkeeping and also finds grandchildren that left their process group. Spare sandbox
//! folders left in the work dir are removed, and the processes of their sandboxes killed: a spare
//! is no run, and bubblewrap 0.8 leaves its inner process waiting for good (ppid 1, no child) when
//! its outer one dies while the sandbox starts, which a Gantry killed then causes. They are found
//! by the spare's folder in their command line (bubblewrap's bind of it).

use std::path::Path;

use super::sandbox::SPARE_PREFIX;
use crate::executor::{LostRun, Recovery};

/// Cleans up after `lost` runs and the work dir's spare sandboxes.
pub(super) fn recover(work_dir: &Path, lost: &[LostRun]) -> Vec<Recovery> {
    kill_processes(&processes_of_spares(work_dir));
    if let Ok(entries) = std::fs::read_dir(work_dir) {
        for entry in entries.flatten() {
            let spare = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SPARE_PREFIX));
            if spare {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    lost.iter()
        .map(|run| Recovery::Ended {
            stopped: kill_run_processes(&run.run_id),
        })
        .collect()
}

/// Processes (other than this one) one of whose `/proc/<pid>/<file>` entries, split at NULs,
/// satisfies `matches`.
fn processes_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .map(|bytes| bytes.split(|b| *b == 0).any(&matches))
                .unwrap_or(false)
        })
        .collect()
}

/// Processes whose environment holds `GANTRY_RUN_ID=<run_id>`.
fn processes_of_run(run_id: &str) -> Vec<u32> {
    let needle = format!("GANTRY_RUN_ID={run_id}");
    processes_where("environ", |var| var == needle.as_bytes())
}

/// Processes with an argument naming a spare sandbox folder in `work_dir`.
fn processes_of_spares(work_dir: &Path) -> Vec<u32> {
    let prefix = work_dir.join(SPARE_PREFIX);
    let prefix = prefix.as_os_str().as_encoded_bytes();
    processes_where("cmdline", |arg| arg.starts_with(prefix))
}

/// Kills every process of a run and their process groups. Returns how many processes were found.
fn kill_run_processes(run_id: &str) -> usize {
    let pids = processes_of_run(run_id);
    kill_processes(&pids);
    pids.len()
}

/// Kills `pids` and the process groups they lead. They are orphans of a Gantry that is gone, so
/// there is no one to wait for a grace period.
fn kill_processes(pids: &[u32]) {
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    for &pid in pids {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let lost = [LostRun {
            run_id: "TESTRUNID123".into(),
            external_id: None,
        }];
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(format!("{SPARE_PREFIX}x"))).expect("spare");
        assert_eq!(recover(dir.path(), &lost), [Recovery::Ended { stopped: 1 }]);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }

    #[test]
    fn a_spare_sandbox_left_in_the_work_dir_is_killed_and_others_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        // Stand-ins for a stuck `bwrap` binding a spare folder of this work dir, and one of
        // another Gantry's work dir.
        let start = |work: &Path| {
            let spare = work.join(format!("{SPARE_PREFIX}0123"));
            std::fs::create_dir(&spare).expect("spare");
            std::process::Command::new("sh")
                .args(["-c", "sleep 30; :", "--bind"])
                .arg(&spare)
                .process_group(0)
                .spawn()
                .expect("spawn sh")
        };
        use std::os::unix::process::CommandExt;
        let mut ours = start(dir.path());
        let mut theirs = start(other.path());
        // What `processes_of_spares` finds once the stand-in `pid` has executed (before, its
        // command line is this test's) and its shell's child has too (between its fork and its
        // exec, the child's command line is the shell's), with room for a loaded machine.
        let once_executed = |work: &Path, pid: u32| {
            let mut found = Vec::new();
            for _ in 0..500 {
                found = processes_of_spares(work);
                if found == [pid] {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            found
        };
        assert_eq!(
            once_executed(dir.path(), ours.id()),
            vec![ours.id()],
            "only the stand-in of this work dir"
        );
        assert_eq!(recover(dir.path(), &[]), []);
        assert!(!ours.wait().expect("wait").success());
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        assert_eq!(once_executed(other.path(), theirs.id()), vec![theirs.id()]);
        let _ = theirs.kill();
        let _ = theirs.wait();
    }
}
