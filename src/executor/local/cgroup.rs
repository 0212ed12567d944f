//! Per-run limits the kernel enforces: memory, processes and CPU, through a control group per
//! sandbox.
//!
//! Both cgroup versions are supported, as the machine has them: v2 (one hierarchy, `cgroup.
//! controllers` at `/sys/fs/cgroup`) and v1 (a hierarchy per controller, `memory`, `pids` and
//! `cpu` under `/sys/fs/cgroup`). Gantry makes `gantry/<sandbox>` in each hierarchy it can write
//! (it must be root, or have been delegated the folder), sets the limits there, and bubblewrap
//! joins it before it executes (`cgroup.procs` written with `0`, "this process", between fork
//! and exec), so everything of the run is in it from the first instruction. The folder is removed
//! when the sandbox ends. Where no hierarchy can be written, runs go without (said once, at
//! start), and the per-process rlimits remain.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The limits of one run; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunLimits {
    /// Bytes of memory (the page cache of its files included, as the kernel counts it).
    pub memory: Option<u64>,
    /// Processes and threads alive at once.
    pub processes: Option<u64>,
    /// CPUs' worth of time, e.g. 1.5.
    pub cpus: Option<f64>,
}

impl RunLimits {
    /// The defaults: half of this machine's memory, 4,096 processes, CPU unlimited.
    pub fn for_machine() -> RunLimits {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map(|kib| kib * 1024 / 2)
            });
        RunLimits {
            memory,
            processes: Some(4096),
            cpus: None,
        }
    }
}

impl std::fmt::Display for RunLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memory = self
            .memory
            .map_or("unlimited".to_string(), crate::executor::human_bytes);
        let processes = self
            .processes
            .map_or("unlimited".to_string(), |n| n.to_string());
        let cpus = self.cpus.map_or("unlimited".to_string(), |n| n.to_string());
        write!(
            f,
            "memory {memory}, processes {processes}, CPUs {cpus} per run"
        )
    }
}

const ROOT: &str = "/sys/fs/cgroup";

/// The hierarchies this machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2(PathBuf),
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
}

impl Layout {
    pub fn detect() -> Option<Layout> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").is_file() {
            return Some(Layout::V2(root.to_path_buf()));
        }
        let controller = |name: &str| {
            let dir = root.join(name);
            dir.join("cgroup.procs").is_file().then_some(dir)
        };
        let layout = Layout::V1 {
            memory: controller("memory"),
            pids: controller("pids"),
            cpu: controller("cpu"),
        };
        match &layout {
            Layout::V1 {
                memory: None,
                pids: None,
                cpu: None,
            } => None,
            _ => Some(layout),
        }
    }

    /// "cgroup v2" or "cgroup v1 (memory, pids, cpu)", for the log.
    pub fn describe(&self) -> String {
        match self {
            Layout::V2(_) => "cgroup v2".to_string(),
            Layout::V1 { memory, pids, cpu } => {
                let names: Vec<&str> = [("memory", memory), ("pids", pids), ("cpu", cpu)]
                    .into_iter()
                    .filter(|(_, d)| d.is_some())
                    .map(|(n, _)| n)
                    .collect();
                format!("cgroup v1 ({})", names.join(", "))
            }
        }
    }
}

/// A sandbox's control groups, removed when dropped (once empty).
pub struct RunGroup {
    dirs: Vec<PathBuf>,
    memory: Option<u64>,
    /// `cgroup.procs` of each, opened by Gantry, written by bubblewrap's process before exec.
    procs: Vec<File>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl RunGroup {
    /// Makes the groups of the sandbox `name` with `limits`.
    pub fn create(layout: &Layout, name: &str, limits: &RunLimits) -> io::Result<RunGroup> {
        let mut group = RunGroup {
            dirs: Vec::new(),
            memory: limits.memory,
            procs: Vec::new(),
        };
        match layout {
            Layout::V2(root) => {
                let parent = root.join("gantry");
                if !parent.is_dir() {
                    std::fs::create_dir(&parent)?;
                }
                // Controllers must be enabled on the way down to be set in the run's group.
                for dir in [root.as_path(), parent.as_path()] {
                    let _ = write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
                }
                let dir = group.make(&parent.join(name))?;
                if let Some(bytes) = limits.memory {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                if let Some(n) = limits.processes {
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
                if let Some(cpus) = limits.cpus {
                    let period = 100_000u64;
                    let quota = ((cpus * period as f64) as u64).max(1000);
                    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                }
            }
            Layout::V1 { memory, pids, cpu } => {
                if let (Some(root), Some(bytes)) = (memory, limits.memory) {
                    let dir = group.make(&root.join("gantry").join(name))?;
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
                }
                if let (Some(root), Some(n)) = (pids, limits.processes) {
                    let dir = group.make(&root.join("gantry").join(name))?;
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
                if let (Some(root), Some(cpus)) = (cpu, limits.cpus) {
                    let dir = group.make(&root.join("gantry").join(name))?;
                    let period = 100_000u64;
                    let quota = ((cpus * period as f64) as u64).max(1000);
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        for dir in &group.dirs {
            let procs = OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            group.procs.push(procs);
        }
        Ok(group)
    }

    fn make(&mut self, dir: &Path) -> io::Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        self.dirs.push(dir.to_path_buf());
        Ok(dir.to_path_buf())
    }

    /// The descriptors the sandbox's first process writes `0` to, to join every group.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The memory limit, when the machine has a memory controller.
    pub fn memory_limit(&self) -> Option<u64> {
        let counted = self
            .dirs
            .iter()
            .any(|d| d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists());
        self.memory.filter(|_| counted)
    }

    /// How many times the memory limit was hit, where the kernel says (v1 `memory.failcnt`, v2
    /// `memory.events` `oom_kill`).
    pub fn memory_kills(&self) -> u64 {
        for dir in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("memory.events")) {
                return text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
                    .unwrap_or(0);
            }
            if let Ok(text) = std::fs::read_to_string(dir.join("memory.oom_control")) {
                return text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
                    .unwrap_or(0);
            }
        }
        0
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        self.procs.clear();
        // The sandbox was reaped, but the processes inside it may still be exiting (bubblewrap's
        // inner process and the spawner die after the outer one): a group is empty, and can be
        // removed, up to a millisecond or so later. The run does not wait for that (it waited
        // 5 ms at the end of every sandboxed run); a thread of its own does.
        let left: Vec<PathBuf> = std::mem::take(&mut self.dirs)
            .into_iter()
            .filter(|dir| std::fs::remove_dir(dir).is_err() && dir.exists())
            .collect();
        if !left.is_empty() {
            remove_later(left);
        }
    }
}

/// How long a group's removal is tried before it is left for good (and said).
const REMOVAL_TRIES_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Removals in flight: their count, and a signal when it drops (see [`settle`]).
static REMOVING: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// Removes `dirs` once the kernel has emptied them, on a thread of its own.
fn remove_later(dirs: Vec<PathBuf>) {
    let (count, _) = &REMOVING;
    if let Ok(mut n) = count.lock() {
        *n += 1;
    }
    let finished = || {
        let (count, done) = &REMOVING;
        if let Ok(mut n) = count.lock() {
            *n = n.saturating_sub(1);
        }
        done.notify_all();
    };
    let dirs = std::sync::Arc::new(dirs);
    let theirs = dirs.clone();
    let spawned = std::thread::Builder::new()
        .name("cgroup-remove".into())
        .spawn(move || {
            remove_retrying(&theirs);
            finished();
        });
    // Without a thread (the machine is out of them), here and now.
    if spawned.is_err() {
        remove_retrying(&dirs);
        finished();
    }
}

/// Tries to remove each of `dirs` until it is gone, waiting a little longer after each failure.
fn remove_retrying(dirs: &[PathBuf]) {
    let deadline = std::time::Instant::now() + REMOVAL_TRIES_FOR;
    for dir in dirs {
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(_) if !dir.exists() => break,
                Err(e) if std::time::Instant::now() >= deadline => {
                    tracing::warn!(
                        "left the control group {} behind: {e} (it still holds processes of an ended run)",
                        dir.display()
                    );
                    break;
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
            }
        }
    }
}

/// Waits, at most `timeout`, until the groups of every ended sandbox are removed: what a process
/// that is about to exit calls, so that it leaves none behind. Whether they all were.
pub fn settle(timeout: std::time::Duration) -> bool {
    let (count, done) = &REMOVING;
    let Ok(n) = count.lock() else { return false };
    match done.wait_timeout_while(n, timeout, |n| *n > 0) {
        Ok((n, _)) => *n == 0,
        Err(_) => false,
    }
}

/// Joins the groups whose `cgroup.procs` are `fds`: writes `0` ("the calling process") to each.
///
/// # Safety
/// Async-signal-safe; meant for the child between fork and exec.
pub unsafe fn join_in_child(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) of a one-byte static buffer.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A group whose last process is still alive when the group is dropped is removed once that
    /// process has gone (on the removal thread), and `settle` waits for it. (Dropping tried for
    /// 100 ms and left it behind.)
    #[test]
    fn a_group_still_in_use_when_dropped_is_removed_once_empty() {
        let limits = RunLimits {
            processes: Some(64),
            ..RunLimits::default()
        };
        let name = format!("gantry-unit-{}", std::process::id());
        let Some(group) = Layout::detect().and_then(|l| RunGroup::create(&l, &name, &limits).ok())
        else {
            eprintln!("skipped: no control group can be made here (not root, or no cgroups)");
            return;
        };
        let dirs = group.dirs.clone();
        let fds = group.procs_fds();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("0.3");
        // SAFETY: join_in_child only writes to the group's descriptors, between fork and exec.
        unsafe {
            cmd.pre_exec(move || join_in_child(&fds));
        }
        let mut child = cmd.spawn().expect("sleep starts");
        drop(group);
        assert!(
            dirs.iter().all(|d| d.exists()),
            "a group in use was removed"
        );
        child.wait().expect("sleep ends");
        assert!(
            settle(std::time::Duration::from_secs(10)),
            "removal still running"
        );
        for dir in &dirs {
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }
    }
}
