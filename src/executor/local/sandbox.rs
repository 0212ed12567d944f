//! The local executor's sandbox: one bubblewrap sandbox per run, entered lazily by the run's first
//! process step, with the spawner (`spawner.rs`) inside that starts every step.
//!
//! Inside, a step sees the system directories read-only (`/usr` and the `/bin`, `/lib*` links;
//! from `/etc` only what programs need to run: name resolution, users, certificates,
//! alternatives), a fresh `/proc` of its own PID namespace, a minimal `/dev`, a private `/tmp`,
//! and the run's directory: read-only but for `workspace/` and `outputs/`. Nothing else of the
//! host: not the data dir, the config file, the mirrors, other runs, or any process outside the
//! run. Network is shared unless the pipeline turns it off. When Gantry runs as root, bubblewrap
//! (and so every step) runs as the configured unprivileged user; it then builds its namespaces
//! inside a user namespace of that user.
//!
//! The spawner is Gantry's own binary, executed through a file descriptor (`/proc/self/fd/N`),
//! so the binary's location need not be reachable by the step user. Every descriptor handed to
//! bubblewrap is close-on-exec in Gantry and made inheritable only in the child, so no other
//! run's process can inherit it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::spawner::{self, Reply, Request};

/// How a run's steps are isolated from Gantry and from each other.
#[derive(Debug, Clone, Default)]
pub enum Sandbox {
    /// Steps run as Gantry's own user, with Gantry's view of the machine (`sandbox = "none"`).
    #[default]
    None,
    /// Boxed: the settings are large, and `None` is the common case in tests.
    Bubblewrap(Box<Bubblewrap>),
    /// A sandbox was asked for and cannot be had here (no `bwrap`): every process step refuses
    /// to start with this message, which says how to get one.
    Missing(String),
}

/// The bubblewrap sandbox's settings.
#[derive(Debug, Clone)]
pub struct Bubblewrap {
    /// The `bwrap` program.
    pub bwrap: PathBuf,
    /// Gantry's own binary, which serves as the spawner inside the sandbox.
    pub spawner: PathBuf,
    /// The user steps run as when runs get no uid of their own (`uids`); `None` keeps Gantry's
    /// own (only when Gantry is not root).
    pub user: Option<StepUser>,
    /// Where each run leases a uid of its own (`[executor.local] run_uids`; a default range
    /// when Gantry is root and no `user` is set). See `uids.rs`.
    pub uids: Option<Arc<super::uids::UidPool>>,
    /// Steps are uid 0 inside the sandbox's user namespace (`user = "root"`), which is the run's
    /// uid (or Gantry's own user) outside: root of nothing but the sandbox.
    pub root_inside: bool,
    pub limits: ProcessLimits,
    /// Whether to keep a sandbox started ahead of time for the next run (a long-lived server;
    /// not a one-shot `gantry run`).
    pub prewarm: bool,
    /// That sandbox (shared by every clone of the config).
    pub spares: Arc<Spares>,
    /// How a run with the network on reaches the outside.
    pub net: Net,
    /// The control groups runs are limited by, when this machine has them, and the limits.
    pub cgroup: Option<super::cgroup::Layout>,
    pub run_limits: super::cgroup::RunLimits,
}

/// The network of runs with the network on (see `netns.rs`).
#[derive(Debug, Clone, Default)]
pub struct Net {
    /// `slirp4netns`, when installed; without it such runs refuse to start their steps.
    pub slirp: Option<PathBuf>,
    /// Ports of the host's loopback that steps may reach at the same port of theirs.
    pub host_ports: Vec<u16>,
}

/// A sandbox started ahead of time, with its run directory (`<work dir>/.spare-<random>`) laid
/// out, waiting for a run to rename the folder to its own and take it.
pub(super) struct Spare {
    pub dir: PathBuf,
    pub jail: Arc<Jail>,
    /// The uid the spare's sandbox runs as, which the run that takes it keeps.
    pub user: RunUser,
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Taken spares were renamed away first; this removes one nobody took.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// At most one spare sandbox per work dir, warmed in the background.
#[derive(Default)]
pub struct Spares {
    slot: Mutex<Option<Spare>>,
    warming: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Spares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spares")
            .field("ready", &self.ready())
            .finish()
    }
}

/// The prefix of spare run directories in the work dir.
pub const SPARE_PREFIX: &str = ".spare-";

impl Spares {
    /// Whether a spare sandbox is ready for the next run.
    pub fn ready(&self) -> bool {
        self.slot.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// The spare sandbox, if one is ready in `work_dir`.
    pub(super) fn take(&self, work_dir: &Path) -> Option<Spare> {
        let mut slot = self.slot.lock().ok()?;
        match slot.take() {
            Some(spare) if spare.dir.parent() == Some(work_dir) => Some(spare),
            // A spare of another work dir is of no use: drop it.
            _ => None,
        }
    }

    /// Starts warming a spare in `work_dir` unless one is ready or warming.
    pub(super) fn warm(self: &Arc<Self>, config: &Bubblewrap, work_dir: &Path) {
        let ready = self.slot.lock().map(|s| s.is_some()).unwrap_or(true);
        if ready || self.warming.swap(true, Ordering::SeqCst) {
            return;
        }
        let (spares, config, work_dir) = (self.clone(), config.clone(), work_dir.to_path_buf());
        tokio::spawn(async move {
            let mut tag = [0u8; 8];
            let _ = getrandom::getrandom(&mut tag);
            let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            let dir = work_dir.join(format!("{SPARE_PREFIX}{name}"));
            let Ok(user) = config.run_user() else {
                spares.warming.store(false, Ordering::SeqCst);
                return;
            };
            let laid = {
                let (dir, user) = (dir.clone(), user.user);
                tokio::task::spawn_blocking(move || super::lay_out(&dir, user)).await
            };
            if let Ok(Ok(())) = laid
                && let Ok(jail) = Jail::start(&config, user.user, &dir, true, "spare").await
            {
                if let Ok(mut slot) = spares.slot.lock() {
                    *slot = Some(Spare { dir, jail, user });
                }
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            spares.warming.store(false, Ordering::SeqCst);
        });
    }
}

/// An unprivileged user for steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUser {
    pub uid: u32,
    pub gid: u32,
}

/// Resource limits of every step process (rlimits, inherited by whatever a step starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Open files per process.
    pub open_files: u64,
    /// Processes of the step user (a Linux rlimit counts every process of that uid).
    pub processes: u64,
    /// Largest file a step may write.
    pub file_size: u64,
    /// Address space per process, when set.
    pub memory: Option<u64>,
    /// The size of the sandbox's private `/tmp` (memory-backed); `/var/tmp` and `/run` get a
    /// sixteenth of it each.
    pub tmp_size: u64,
}

impl Default for ProcessLimits {
    fn default() -> ProcessLimits {
        ProcessLimits {
            open_files: 4096,
            processes: 4096,
            file_size: 8 << 30,
            memory: None,
            tmp_size: 1 << 30,
        }
    }
}

impl ProcessLimits {
    /// Applies the limits to the calling process (the spawner, before it serves).
    pub fn apply(&self) -> io::Result<()> {
        let set = |resource, value: u64| -> io::Result<()> {
            let limit = libc::rlimit {
                rlim_cur: value as libc::rlim_t,
                rlim_max: value as libc::rlim_t,
            };
            // SAFETY: setrlimit reads a valid struct.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        set(libc::RLIMIT_NOFILE, self.open_files)?;
        set(libc::RLIMIT_NPROC, self.processes)?;
        set(libc::RLIMIT_FSIZE, self.file_size)?;
        set(libc::RLIMIT_CORE, 0)?;
        if let Some(memory) = self.memory {
            set(libc::RLIMIT_AS, memory)?;
        }
        Ok(())
    }

    /// The limits as spawner arguments.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--nofile={}", self.open_files),
            format!("--nproc={}", self.processes),
            format!("--fsize={}", self.file_size),
        ];
        if let Some(memory) = self.memory {
            args.push(format!("--memory={memory}"));
        }
        args
    }
}

/// Who steps run as, before it is resolved against this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChoice {
    /// A uid of each run's own when Gantry is root (`run_uids`), else Gantry's own user (inside a
    /// user namespace).
    Default,
    /// Uid 0 inside the sandbox's user namespace only (`user = "root"`).
    Root,
    Ids(StepUser),
    /// A name from `/etc/passwd`.
    Name(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap (`bwrap`) is not installed, and steps run in its sandbox: install it (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`), or set `sandbox = \"none\"` under [executor.local] to run steps unsandboxed as Gantry's own user"
    )]
    NoBwrap,
    #[error(
        "the step user `{0}` is not in /etc/passwd: create it (`useradd --system {0}`) or set `user` under [executor.local]"
    )]
    UnknownUser(String),
    #[error("cannot find Gantry's own binary, which starts steps inside the sandbox: {0}")]
    NoExe(#[source] io::Error),
    #[error("[executor.local] run_uids: {0}")]
    RunUids(#[from] super::uids::UidRangeError),
}

impl Sandbox {
    /// The bubblewrap sandbox on this machine: `bwrap` from `PATH`, Gantry's own binary as the
    /// spawner, and the step user resolved.
    pub fn bubblewrap(user: UserChoice, limits: ProcessLimits) -> Result<Sandbox, SandboxError> {
        let bwrap = find_bwrap().ok_or(SandboxError::NoBwrap)?;
        let spawner = std::env::current_exe().map_err(SandboxError::NoExe)?;
        // Root outside is never given to steps: `root` (or a user whose uid is 0) means uid 0
        // inside the sandbox's user namespace, and the run's own uid (or Gantry's own user)
        // outside. As root, runs lease a uid of their own from the default range (`run_uids`
        // replaces it); a user set by name or ids is taken as it is.
        let pool =
            || running_as_root().then(|| super::uids::UidPool::new(super::uids::DEFAULT_RANGE));
        let (user, uids, root_inside) = match user {
            UserChoice::Default => (None, pool(), false),
            UserChoice::Root => (None, pool(), true),
            UserChoice::Ids(user) => (Some(user), None, false),
            UserChoice::Name(name) => match lookup_user(&name)? {
                StepUser { uid: 0, .. } => (None, pool(), true),
                user => (Some(user), None, false),
            },
        };
        Ok(Sandbox::Bubblewrap(Box::new(Bubblewrap {
            bwrap,
            spawner,
            user,
            uids,
            root_inside,
            limits,
            prewarm: false,
            spares: Arc::new(Spares::default()),
            net: Net {
                slirp: find_program("slirp4netns"),
                host_ports: Vec::new(),
            },
            cgroup: super::cgroup::Layout::detect(),
            run_limits: super::cgroup::RunLimits::for_machine(),
        })))
    }
}

impl Bubblewrap {
    /// Runs lease their uids from `first..=last` (`[executor.local] run_uids`), which must hold
    /// no user of this machine. Only a root Gantry can give steps another uid, and a `user` set
    /// by name or ids is kept as it is: the range is then not used, which is returned as a
    /// warning to print.
    pub fn set_run_uids(&mut self, first: u32, last: u32) -> Result<Option<String>, SandboxError> {
        let range = super::uids::UidRange::new(first, last)?;
        if !running_as_root() {
            return Ok(Some(format!(
                "run_uids ({range}) is not used: Gantry does not run as root, so steps run as its own user inside their user namespace"
            )));
        }
        if self.uids.is_none() {
            return Ok(Some(format!(
                "run_uids ({range}) is not used: `user` is set, and every run's steps run as that user"
            )));
        }
        self.uids = Some(super::uids::UidPool::new(range));
        Ok(None)
    }

    /// Checks the range runs lease uids from against this machine's users.
    pub fn check_run_uids(&self) -> Result<(), SandboxError> {
        if let Some(pool) = &self.uids {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            pool.range().check_against(&passwd)?;
            pool.range().check_against_groups(&group)?;
        }
        Ok(())
    }

    /// The user of a run starting now: a uid of its own when runs lease one.
    pub fn run_user(&self) -> Result<RunUser, String> {
        match &self.uids {
            Some(pool) => {
                let lease = pool.lease()?;
                Ok(RunUser {
                    user: Some(lease.user()),
                    _lease: Some(lease),
                })
            }
            None => Ok(RunUser {
                user: self.user,
                _lease: None,
            }),
        }
    }
}

/// Who one run's steps are: a leased uid (held as long as this is), the configured user, or
/// Gantry's own (`user: None`).
#[derive(Debug, Default)]
pub struct RunUser {
    pub user: Option<StepUser>,
    _lease: Option<super::uids::Lease>,
}

/// A descriptor to read `bytes` from, for bubblewrap's `--file` (a memory file: no size limit,
/// as a pipe written ahead of bubblewrap's start has).
fn data_fd(bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::io::Seek;
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"gantry-data".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// A user's uid and primary gid from `/etc/passwd`.
fn lookup_user(name: &str) -> Result<StepUser, SandboxError> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let user = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            (user == name).then_some(StepUser { uid, gid })
        })
        .next()
        .ok_or_else(|| SandboxError::UnknownUser(name.to_string()))
}

/// Finds `bwrap` on `PATH`.
pub fn find_bwrap() -> Option<PathBuf> {
    find_program("bwrap")
}

/// Finds the program `name` on `PATH`.
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Who waits for what the spawner says: the start of the sandbox, and steps whose init could not
/// report their end.
#[derive(Default)]
struct Waiters {
    ready: Option<oneshot::Sender<()>>,
    /// Where the spawner's word on a step's end goes, when its init could not write it.
    steps: HashMap<u64, oneshot::Sender<spawner::StepEnd>>,
    /// Set when the spawner's socket closed: nothing more will be answered.
    gone: bool,
}

/// A run's running sandbox, seen from Gantry.
pub(super) struct Jail {
    sock: UnixStream,
    /// Bubblewrap's pid on the host: whose namespaces the run's steps are in.
    pub pid: u32,
    bwrap: Mutex<Child>,
    next: AtomicU64,
    waiters: Arc<Mutex<Waiters>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The run's connection to the outside, with the network on; it ends with the jail.
    _net: Option<super::netns::RunNet>,
    /// The run's control groups; removed after bubblewrap is reaped (fields drop after `drop`).
    group: Option<super::cgroup::RunGroup>,
    /// The memory-limit kills already accounted to a step (see `new_memory_kill`).
    memory_kills_seen: AtomicU64,
}

/// What to start inside a sandbox, with paths as the sandbox sees them.
pub(super) struct StepCommand {
    /// A path, or a bare name to look up in `path`.
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub path: Option<String>,
    /// The step's outputs folder, inside the sandbox.
    pub outputs: Option<PathBuf>,
}

/// A step process inside a sandbox.
pub(super) struct Remote {
    pub id: u64,
    /// Bubblewrap's pid on the host.
    pub sandbox: u32,
    /// Where the step's init writes how the step ended ([`spawner::StepEnd`]), straight to
    /// Gantry: the quick way to hear of it (no hop through the spawner's reaper and Gantry's
    /// reader thread). `None` once it closed without it: init was killed before it could
    /// write, or could not start the program, and the spawner says so (`said`).
    status: Option<tokio::net::unix::pipe::Receiver>,
    said: oneshot::Receiver<spawner::StepEnd>,
    waiters: Arc<Mutex<Waiters>>,
}

/// How a step process ended.
pub(super) enum Waited {
    Exited(ExitStatus),
    /// Its program could not be started.
    NotStarted(io::Error),
}

impl From<spawner::StepEnd> for Waited {
    fn from(end: spawner::StepEnd) -> Waited {
        match end {
            spawner::StepEnd::Exited(status) => Waited::Exited(ExitStatus::from_raw(status)),
            spawner::StepEnd::NotStarted(errno) => {
                Waited::NotStarted(io::Error::from_raw_os_error(errno))
            }
        }
    }
}

impl Remote {
    /// Waits for the step to end. Cancel-safe: the record is read whole or not at all (init
    /// writes it in one write, under `PIPE_BUF`).
    pub async fn wait(&mut self) -> io::Result<Waited> {
        while let Some(pipe) = &self.status {
            if pipe.readable().await.is_err() {
                self.status = None;
                break;
            }
            let mut bytes = [0u8; spawner::StepEnd::LEN];
            match pipe.try_read(&mut bytes) {
                Ok(spawner::StepEnd::LEN) => {
                    // The spawner says nothing of a step whose init wrote this: its waiter goes
                    // now.
                    if let Ok(mut w) = self.waiters.lock() {
                        w.steps.remove(&self.id);
                    }
                    return spawner::StepEnd::from_bytes(bytes)
                        .map(Waited::from)
                        .ok_or_else(|| io::Error::other("the step's init wrote nonsense"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(_) | Err(_) => self.status = None,
            }
        }
        match (&mut self.said).await {
            Ok(end) => Ok(Waited::from(end)),
            Err(_) => Err(io::Error::other("the run's sandbox ended")),
        }
    }
}

/// Where a run's directory is inside its sandbox.
pub const INSIDE: &str = "/gantry";

/// Paths the sandbox shows from the host, read-only, when they exist.
/// Folders of the host's `/etc` that steps see (bound read-only).
const ETC_DIRS: [&str; 5] = [
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ssl",
    "/etc/pki",
    "/etc/postgresql-common",
];

/// Files of the host's `/etc` that steps see: copied into the sandbox's read-only root when it
/// starts rather than bound, since every mount of the sandbox is copied into each step's mount
/// namespace and unmounted after it (about 4.6 µs a mount and step here; these were 12 of the
/// 36).
const ETC_FILES: [&str; 12] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
];

/// A file of `ETC_FILES` larger than this is bound instead of copied.
const MAX_ETC_COPY: u64 = 4 << 20;

/// What a sandbox is started for (see [`Jail::start`]).
struct Wanted {
    user: Option<StepUser>,
    run_dir: PathBuf,
    network: bool,
    run_id: String,
}

/// A bubblewrap started for a sandbox, before its spawner said it is ready.
struct Launched {
    child: Unclaimed,
    /// Gantry's end of the spawner's socket.
    ours: UnixStream,
    group: Option<super::cgroup::RunGroup>,
    net: Option<super::netns::RunNet>,
}

/// Bubblewrap's process until the start that made it goes on with it: killed and reaped when
/// dropped unclaimed (the start's future was dropped while its blocking thread launched it).
struct Unclaimed(Option<Child>);

impl Unclaimed {
    fn claim(mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Jail {
    /// Starts the sandbox for the run whose directory is `run_dir` and waits until its spawner
    /// answers. `network: false` gives it a network namespace of its own (loopback only).
    pub async fn start(
        config: &Bubblewrap,
        user: Option<StepUser>,
        run_dir: &Path,
        network: bool,
        run_id: &str,
    ) -> Result<Arc<Jail>, String> {
        // bubblewrap 0.8 sometimes fails to bring up the new network namespace's loopback when
        // many start at once ("loopback: Failed RTM_NEWADDR"); a second start succeeds.
        let mut tries = 0;
        loop {
            tries += 1;
            let wanted = Wanted {
                user,
                run_dir: run_dir.to_path_buf(),
                network,
                run_id: run_id.to_string(),
            };
            match Jail::start_once(config, wanted).await {
                Err(e) if e.contains("loopback: Failed") && tries < 3 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                started => return started,
            }
        }
    }

    /// Everything of a start that blocks (reading `/etc`, making the control group, bubblewrap's
    /// fork and exec, joining the group, which on cgroup v1 waits for an RCU grace period, and
    /// the network's setup): on a blocking thread, so that the runtime's thread goes on with the
    /// runs it serves (a spare warming beside a run held that run's steps for 3 to 25 ms).
    fn launch(config: &Bubblewrap, wanted: &Wanted) -> Result<Launched, String> {
        let Wanted {
            user,
            ref run_dir,
            network,
            ref run_id,
        } = *wanted;
        if let Some(user) = user {
            reachable(run_dir, user)?;
        }
        let slirp = match (network, &config.net.slirp) {
            (false, _) => None,
            (true, Some(slirp)) => Some(slirp.clone()),
            (true, None) => return Err(super::netns::MISSING.to_string()),
        };
        // With the network on, bubblewrap says its pid (whose namespace slirp4netns connects).
        let info = match slirp {
            Some(_) => Some(
                super::process::pipe()
                    .map_err(|e| format!("cannot make a pipe for the sandbox: {e}"))?,
            ),
            None => None,
        };
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot create the sandbox's socket: {e}"))?;
        // This process's own binary, also when the file at its path was replaced by an upgrade.
        let exe = File::open("/proc/self/exe")
            .or_else(|_| File::open(&config.spawner))
            .map_err(|e| {
                format!(
                    "cannot open Gantry's binary {} for the sandbox: {e}",
                    config.spawner.display()
                )
            })?;
        let mut inherit_fds = vec![theirs.as_raw_fd(), exe.as_raw_fd()];
        let mut cmd = Command::new(&config.bwrap);
        cmd.args(bwrap_args(run_dir, config.limits.tmp_size));
        if config.root_inside {
            cmd.args(["--uid", "0", "--gid", "0"]);
        }
        // Files of the step's `/etc` that differ from the host's: a leased uid is in no user
        // database of the host, so the step's copies get a line for it; with the network on,
        // steps use slirp4netns's resolver.
        let mut replaced: Vec<(&str, String)> = Vec::new();
        if let (Some(user), Some(_)) = (user, &config.uids)
            && !config.root_inside
        {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            replaced.push(("/etc/passwd", super::uids::passwd_with(&passwd, user)));
            replaced.push(("/etc/group", super::uids::group_with(&group, user)));
        }
        if let Some((_, info_w)) = &info {
            cmd.args(["--info-fd".to_string(), info_w.as_raw_fd().to_string()]);
            inherit_fds.push(info_w.as_raw_fd());
            replaced.push(("/etc/resolv.conf", super::netns::RESOLV_CONF.to_string()));
        }
        // The files of `/etc`: the replaced ones, and copies of the host's (through a symlink,
        // as a bind would have followed it; one that is missing or is no plain file is left out,
        // and a large one is bound).
        let mut data = Vec::new();
        for path in ETC_FILES {
            let bytes = match replaced.iter().find(|(p, _)| *p == path) {
                Some((_, text)) => text.clone().into_bytes(),
                None => match std::fs::metadata(path) {
                    Ok(m) if m.is_file() && m.len() <= MAX_ETC_COPY => match std::fs::read(path) {
                        Ok(bytes) => bytes,
                        Err(_) => continue,
                    },
                    Ok(m) if m.is_file() => {
                        cmd.args(["--ro-bind", path, path]);
                        continue;
                    }
                    _ => continue,
                },
            };
            let fd =
                data_fd(&bytes).map_err(|e| format!("cannot write the sandbox's {path}: {e}"))?;
            cmd.args(["--perms", "0644", "--file"]);
            cmd.arg(fd.as_raw_fd().to_string()).arg(path);
            inherit_fds.push(fd.as_raw_fd());
            data.push(fd);
        }
        // Last of the mounts: the sandbox's root (the folders bubblewrap made the mount points
        // in, `/etc` among them) becomes read-only. Left writable, it was the steps' uid's, and
        // one step could plant `/etc/ld.so.preload` (or any file a program reads from `/etc`)
        // for the next step's programs to load, with that step's secrets in their environment.
        cmd.args(["--remount-ro", "/"]);
        cmd.arg("--")
            .arg(format!("/proc/self/fd/{}", exe.as_raw_fd()))
            .arg("__spawner")
            .arg(format!("--fd={}", theirs.as_raw_fd()))
            .arg(format!("--exe-fd={}", exe.as_raw_fd()))
            .args(config.limits.args());
        if network {
            cmd.args(
                config
                    .net
                    .host_ports
                    .iter()
                    .map(|p| format!("--host-port={p}")),
            );
        }
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GANTRY_RUN_ID", run_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(user) = user {
            // (From root, std also drops the supplementary groups.)
            cmd.uid(user.uid).gid(user.gid);
        }
        inherit(&mut cmd, inherit_fds);
        let group = run_group(config);
        if let Some(group) = &group {
            let fds = group.procs_fds();
            // SAFETY: join_in_child only writes to descriptors opened above; it runs in the
            // child between fork and exec.
            unsafe {
                cmd.pre_exec(move || super::cgroup::join_in_child(&fds));
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the sandbox ({}): {e}", config.bwrap.display()))?;
        drop(theirs);
        drop(exe);
        drop(data);
        let net = match (info, slirp) {
            (Some((info_r, info_w)), Some(slirp)) => {
                drop(info_w);
                let connected = super::netns::child_pid(info_r)
                    .and_then(|pid| super::netns::connect(&slirp, pid));
                match connected {
                    Ok(net) => Some(net),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let mut said = String::new();
                        if let Some(mut pipe) = child.stderr.take() {
                            let _ = pipe.read_to_string(&mut said);
                        }
                        let said = said.trim();
                        return Err(match said.is_empty() {
                            true => format!("the run's network could not be set up: {e}"),
                            false => format!("the run's network could not be set up: {e}: {said}"),
                        });
                    }
                }
            }
            _ => None,
        };
        Ok(Launched {
            child: Unclaimed(Some(child)),
            ours,
            group,
            net,
        })
    }

    async fn start_once(config: &Bubblewrap, wanted: Wanted) -> Result<Arc<Jail>, String> {
        let network = wanted.network;
        let launched = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Jail::launch(&config, &wanted))
                .await
                .unwrap_or_else(|e| Err(format!("the sandbox's start stopped: {e}")))?
        };
        let Launched {
            child,
            ours,
            group,
            net,
        } = launched;
        let Some(mut child) = child.claim() else {
            return Err("the sandbox's start stopped".into());
        };
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let stderr = stderr.clone();
            let _ = std::thread::Builder::new()
                .name("sandbox-stderr".into())
                .spawn(move || collect_stderr(pipe, &stderr));
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let waiters = Arc::new(Mutex::new(Waiters {
            ready: Some(ready_tx),
            ..Waiters::default()
        }));
        let reader = ours
            .try_clone()
            .map_err(|e| format!("cannot use the sandbox's socket: {e}"))?;
        {
            let waiters = waiters.clone();
            let host_ports = match network {
                true => config.net.host_ports.clone(),
                false => Vec::new(),
            };
            std::thread::Builder::new()
                .name("sandbox-replies".into())
                .spawn(move || read_replies(&reader, &waiters, &host_ports))
                .map_err(|e| format!("cannot start the sandbox's reader: {e}"))?;
        }
        let _ = ours.set_write_timeout(Some(Duration::from_secs(5)));
        let jail = Arc::new(Jail {
            sock: ours,
            pid: child.id(),
            bwrap: Mutex::new(child),
            next: AtomicU64::new(1),
            waiters,
            stderr,
            _net: net,
            group,
            memory_kills_seen: AtomicU64::new(0),
        });
        match tokio::time::timeout(Duration::from_secs(20), ready_rx).await {
            Ok(Ok(())) => Ok(jail),
            Ok(Err(_)) => Err(jail.failure("the sandbox did not start")),
            Err(_) => Err(jail.failure("the sandbox did not answer within 20s")),
        }
    }

    /// `what`, with what bubblewrap printed, and the way to go without a sandbox.
    fn failure(&self, what: &str) -> String {
        // Give the stderr reader a moment to collect bubblewrap's last words.
        std::thread::sleep(Duration::from_millis(50));
        let said = self
            .stderr
            .lock()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        format!(
            "{what}{said} (steps run under bubblewrap; check that user namespaces are enabled, or set `sandbox = \"none\"` under [executor.local] to run them unsandboxed)"
        )
    }

    /// Starts a process inside the sandbox with the given pipes as its stdout and stderr. It is
    /// not waited for: the step's end, or why its program could not start, comes on its status
    /// pipe ([`Remote::wait`]). (Waiting for the spawner to say the program executed put two
    /// thread hops, the spawner's reaper and Gantry's reader, on every step's way.)
    pub fn spawn(&self, command: StepCommand, pipes: [OwnedFd; 2]) -> io::Result<Remote> {
        let StepCommand {
            program,
            args,
            env,
            cwd,
            path,
            outputs,
        } = command;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (said_tx, said_rx) = oneshot::channel();
        {
            let mut w = self
                .waiters
                .lock()
                .map_err(|_| io::Error::other("sandbox state poisoned"))?;
            if w.gone {
                return Err(io::Error::other("the run's sandbox ended"));
            }
            w.steps.insert(id, said_tx);
        }
        let request = Request::Spawn {
            id,
            program,
            args,
            env,
            cwd,
            path,
            outputs,
        };
        let body = serde_json::to_vec(&request).map_err(io::Error::other)?;
        let (status_r, status_w) = super::process::pipe()?;
        let status = tokio::net::unix::pipe::Receiver::from_owned_fd(status_r)?;
        let fds: [RawFd; 3] = [
            pipes[0].as_raw_fd(),
            pipes[1].as_raw_fd(),
            status_w.as_raw_fd(),
        ];
        if let Err(e) = spawner::write_frame(&self.sock, &body, &fds) {
            // A frame cut half-way leaves the stream out of step: this sandbox is done.
            if let Ok(mut w) = self.waiters.lock() {
                w.steps.remove(&id);
            }
            self.abort();
            return Err(e);
        }
        Ok(Remote {
            id,
            sandbox: self.pid,
            status: Some(status),
            said: said_rx,
            waiters: self.waiters.clone(),
        })
    }

    /// Ends the sandbox from outside: bubblewrap gets SIGKILL, and its PID namespace (every step
    /// process, and the spawner) goes with it. Every waiting step then learns the sandbox ended.
    pub fn abort(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Ok(mut child) = self.bwrap.lock() {
            let _ = child.kill();
        }
    }

    /// The run's memory limit, when the kernel killed one of its processes for going past it
    /// since the last call: asked about a step that died of `SIGKILL`, so a step that ends
    /// normally costs no reading of the control group. (The group is the run's own, created
    /// with no kill counted.)
    pub fn new_memory_kill(&self) -> Option<u64> {
        let group = self.group.as_ref()?;
        let kills = group.memory_kills();
        let seen = self.memory_kills_seen.fetch_max(kills, Ordering::SeqCst);
        if kills > seen {
            group.memory_limit()
        } else {
            None
        }
    }

    /// Sends `signal` to the process group of step process `id`.
    pub fn signal(&self, id: u64, signal: i32) {
        if let Ok(body) = serde_json::to_vec(&Request::Signal { id, signal }) {
            let _ = spawner::write_frame(&self.sock, &body, &[]);
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        // Closing the socket makes the spawner kill its groups and exit; bubblewrap's PID
        // namespace ends with it. Kill bubblewrap too, and reap it.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Ok(mut child) = self.bwrap.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The control groups of a new sandbox with the configured limits; `None` (said once) where they
/// cannot be made, so runs go on with their rlimits only.
fn run_group(config: &Bubblewrap) -> Option<super::cgroup::RunGroup> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let layout = config.cgroup.as_ref()?;
    let limits = &config.run_limits;
    if limits == &super::cgroup::RunLimits::default() {
        return None;
    }
    let mut tag = [0u8; 8];
    let _ = getrandom::getrandom(&mut tag);
    let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    match super::cgroup::RunGroup::create(layout, &format!("run-{name}"), limits) {
        Ok(group) => Some(group),
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "runs go without their memory, process and CPU limits: cannot make their control group ({}): {e}",
                    layout.describe()
                );
            }
            None
        }
    }
}

/// Makes `fds` (close-on-exec in Gantry, so that no other child inherits them) inheritable by
/// `cmd`'s process alone, in its child between fork and exec.
pub(super) fn inherit(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe, on descriptors this
    // process owns; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// bubblewrap mounts the run directory as the step user, who must be able to reach it: every
/// folder above it must be traversable by that user.
fn reachable(run_dir: &Path, user: StepUser) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for dir in run_dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let can = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can {
            return Err(format!(
                "the step user ({}:{}) cannot reach the run directory {}: {} is not traversable for it (mode {:o}); set `work_dir` under [storage] to a folder it can reach (e.g. /var/lib/gantry-work), or allow it with `chmod o+x {}`",
                user.uid,
                user.gid,
                run_dir.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            ));
        }
    }
    Ok(())
}

fn collect_stderr(mut pipe: impl Read, into: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut b) = into.lock() {
            let room = 4096usize.saturating_sub(b.len());
            b.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

/// The reader thread: dispatches the spawner's replies until its socket closes or says
/// something that makes no sense.
fn read_replies(sock: &UnixStream, waiters: &Mutex<Waiters>, host_ports: &[u16]) {
    while let Ok(Some((body, fds))) = spawner::read_frame(sock, spawner::MAX_REPLY) {
        let Ok(reply) = serde_json::from_slice::<Reply>(&body) else {
            break;
        };
        // A step connected to an allowed host port: carry it there (never another port).
        if let Reply::Connection { port } = reply {
            if let (true, Some(fd)) = (host_ports.contains(&port), fds.into_iter().next()) {
                super::netns::proxy(port, fd);
            }
            continue;
        }
        let Ok(mut w) = waiters.lock() else { break };
        match reply {
            Reply::Ready => {
                if let Some(tx) = w.ready.take() {
                    let _ = tx.send(());
                }
            }
            Reply::Failed { id, errno } => {
                if let Some(tx) = w.steps.remove(&id) {
                    let _ = tx.send(spawner::StepEnd::NotStarted(errno));
                }
            }
            Reply::Exited { id, status } => {
                if let Some(tx) = w.steps.remove(&id) {
                    let _ = tx.send(spawner::StepEnd::Exited(status));
                }
            }
            Reply::Connection { .. } => {}
        }
    }
    if let Ok(mut w) = waiters.lock() {
        w.gone = true;
        w.ready = None;
        // Dropping the senders tells every waiting step that the sandbox is gone.
        w.steps.clear();
    }
}

/// bubblewrap's arguments for a run directory.
fn bwrap_args(run_dir: &Path, tmp_size: u64) -> Vec<String> {
    let mut a: Vec<String> = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        // Inside the sandbox's user namespace, the spawner keeps what it needs to give each
        // step a PID and mount namespace of its own (`step_ns`); steps drop every capability.
        "--unshare-user",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_SYS_ADMIN",
        "--cap-add",
        "CAP_SETPCAP",
        "--hostname",
        "gantry-step",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A network namespace of its own in every case: only loopback with the network off, and
    // slirp4netns to the outside with it on.
    a.push("--unshare-net".into());
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match std::fs::read_link(top) {
            Ok(target) => {
                a.push("--symlink".into());
                a.push(target.to_string_lossy().into_owned());
                a.push(top.into());
            }
            Err(_) if Path::new(top).is_dir() => {
                a.extend(["--ro-bind".into(), top.into(), top.into()]);
            }
            Err(_) => {}
        }
    }
    for path in ETC_DIRS {
        a.extend(["--ro-bind-try".into(), path.into(), path.into()]);
    }
    a.extend(
        ["--proc", "/proc", "--dev", "/dev"]
            .iter()
            .map(|s| s.to_string()),
    );
    // Memory-backed: sized, so a step cannot fill the machine's memory through them.
    for (dir, size) in [
        ("/tmp", tmp_size),
        ("/var/tmp", tmp_size / 16),
        ("/run", tmp_size / 16),
    ] {
        a.extend([
            "--size".into(),
            size.max(1 << 20).to_string(),
            "--tmpfs".into(),
            dir.into(),
        ]);
    }
    // The run directory is at a fixed place inside: the host's layout stays hidden, and a
    // sandbox started ahead of time serves whichever run takes it (its folder is renamed on the
    // host; the mounts follow the folder, not its name).
    let host = |p: &str| run_dir.join(p).to_string_lossy().into_owned();
    let inside = |p: &str| format!("{INSIDE}/{p}");
    a.extend([
        "--ro-bind".into(),
        run_dir.to_string_lossy().into_owned(),
        INSIDE.into(),
    ]);
    a.extend(["--bind".into(), host("workspace"), inside("workspace")]);
    a.extend(["--bind".into(), host("outputs"), inside("outputs")]);
    a.extend(["--chdir".into(), inside("workspace")]);
    a
}
