//! One PID and mount namespace per step, started by the spawner inside the run's sandbox.
//!
//! A step's first process is not the spawner's child but the grandchild of a small init that
//! the spawner clones into a new PID namespace (and a new mount namespace) ahead of the step
//! (a [`Spare`]), which waits until the spawner hands it the step:
//!
//! ```text
//! spawner ── clone(NEWPID|NEWNS|FILES) ──▶ init (pid 1 of the step's namespace)
//!                                           │  mounts a /proc of its own namespace, waits
//!    ... the step's request: written into   │
//!        init's launch, `go` ──────────────▶│  makes every outputs folder but the step's
//!                                           │  own read-only, unshares its descriptors
//!                                           └─ clone ──▶ the step's program (pid 2),
//!                                                        capabilities dropped, under the
//!                                                        spawner's seccomp filter
//! ```
//!
//! So a step sees only its own processes (its `/proc` holds nothing else: not the spawner, not
//! another step's processes or their environments), cannot signal the spawner (it has no pid for
//! it), can write only its own outputs folder, and cannot leave anything behind: when the
//! step's program exits, init kills whatever else the step left in the namespace (`setsid`,
//! double forks, `nohup` alike) and reaps it all, then writes the program's wait status on a
//! pipe of Gantry's (it came with the step's request; the errno instead when the program could
//! not be executed) and exits with 0. Gantry takes the step as ended when that arrives, so the namespace's teardown (a few hundred microseconds of
//! unmounting) overlaps the next step's start; when init itself is killed (the grace period's
//! `SIGKILL`) the pipe closes empty, and the spawner reports once init is reaped, after the
//! kernel has emptied the namespace.
//!
//! Signals: the spawner signals the step's process group (init's, which the program inherits).
//! The PID namespace's init ignores every signal it has no handler for, so a `SIGTERM` reaches
//! the program while init waits on; `SIGKILL` (the end of the grace period) ends init and with it
//! the whole namespace.
//!
//! Init and the program share the spawner's memory (`CLONE_VM`, as `posix_spawn` does for its
//! child): starting a step copies no page table, and ending it unmaps nothing, which was most of
//! what a sandboxed step cost beyond an unsandboxed one. So they run only on stacks of their
//! own, only system calls that leave `errno` alone (`rawsys`: they share the TLS of the spawner
//! thread that cloned them), on memory prepared before the clone (a [`Launch`], which the
//! spawner keeps until init is reaped), and never return from their entry points. The spawner
//! holds `CAP_SYS_ADMIN` and `CAP_SETPCAP` inside the sandbox's user namespace for this; init
//! empties its bounding and ambient sets while it waits, and the step's program drops every
//! other capability before it executes.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::rawsys;

/// What the step's program needs, as C data made before the clone.
pub(super) struct Prepared {
    program: CString,
    /// Kept for the pointers in `argv`.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    /// The step's own outputs folder, the one writable folder under the folder that holds every
    /// step's; with the flags to remount that folder read-only with.
    outputs: Option<(CString, CString, libc::c_ulong)>,
}

/// What only a step's request brings: written by the spawner into a spare's [`Launch`] while the
/// spare waits, read by init and the program once the spare is told to go.
struct Handed {
    prepared: Prepared,
    stdout: RawFd,
    stderr: RawFd,
    err_w: RawFd,
    status_w: RawFd,
    /// The errno of what failed when the program could not be executed, written by the program
    /// before it exits (init reads it once the program is reaped); 0 otherwise.
    failed: AtomicI32,
}

/// Everything init and the step's program read or run on while they share the spawner's
/// memory: the spawner keeps it, at the same address, until init is reaped.
pub(super) struct Launch {
    /// Empty while the spare waits; written once by the spawner before it sets `go`, and only
    /// read after `go` (init and the program read it; nobody writes it again).
    handed: UnsafeCell<Option<Handed>>,
    /// Whether a mount of the spawner's namespace propagates (then the step's namespace is made
    /// private before it mounts anything).
    shared: bool,
    /// The capabilities in the spawner's bounding set, which init drops from its own.
    bounding: &'static [libc::c_int],
    /// 0 while the spare waits for a step; 1 once `handed` holds one.
    go: AtomicU32,
    /// Set by init once it holds descriptors of its own (or gave up): the spawner may close its
    /// copies of the step's then.
    released: AtomicU32,
    /// Init's stack and, above it, the program's (used until it executes, while init waits).
    /// Only written through the stack pointers below, never read as Rust data, so left
    /// uninitialised: only the pages a stack touches cost anything.
    _stacks: Vec<std::mem::MaybeUninit<u8>>,
    init_top: usize,
    program_top: usize,
}

/// The spawner's hold on a [`Launch`]: it stays at its address, unmoved and alive, until this
/// is dropped, which the spawner does once init is reaped (init and the program hold pointers
/// into it meanwhile).
pub(super) struct Kept(std::ptr::NonNull<Launch>);

// SAFETY: the raw pointers in `Prepared` point into the C strings it owns; the spawner hands a
// `Kept` to its reaper thread only to drop it.
unsafe impl Send for Kept {}

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `start`, dropped once.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// A pidfd for child `pid` (Linux 5.3 and later), close-on-exec as every pidfd is. Taken while
/// the child cannot have been reaped (the spawner holds the reaper's lock around a spare's
/// start), so it is that child's.
pub(super) fn pidfd(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor just returned, owned by nothing else.
    (fd >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// The top of the first `len` bytes at `base`, aligned as both architectures' calling
/// conventions want it.
fn top(base: *mut std::mem::MaybeUninit<u8>, len: usize) -> usize {
    (base as usize + len) & !15
}

/// Init's entry point on its own stack (`clone` with `CLONE_VM`).
extern "C" fn init_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Launch` the spawner keeps until init is reaped; init runs as
    // `init` requires.
    unsafe { init(&*(arg as *const Launch)) }
}

/// The program's entry point on its own stack (`clone` with `CLONE_VM | CLONE_VFORK`).
extern "C" fn program_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is init's `Handed`, written before init was told to go and never again;
    // init waits (vfork) until the program executes or exits.
    let handed = unsafe { &*(arg as *const Handed) };
    // SAFETY: runs as `exec_program` requires: only system calls, then exec or exit.
    unsafe { exec_program(handed) }
}

/// The spawner's bounding set and whether any of its mounts is shared, read once: they do not
/// change while it serves, and each costs system calls a step should not pay for.
fn spawner_facts() -> (&'static [libc::c_int], bool) {
    static FACTS: std::sync::OnceLock<(Vec<libc::c_int>, bool)> = std::sync::OnceLock::new();
    let (bounding, shared) = FACTS.get_or_init(|| {
        let bounding = (0..64)
            // SAFETY: PR_CAPBSET_READ only reads the calling thread's bounding set.
            .filter(|&cap| unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } == 1)
            .collect();
        let shared = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|text| text.contains(" shared:"))
            .unwrap_or(true);
        (bounding, shared)
    });
    (bounding.as_slice(), *shared)
}

/// The flags a read-only remount of the mount at `path` must carry: its own (a remount may not
/// drop flags the sandbox's user namespace inherited locked, such as `nodev` or the atime
/// policy) and `MS_RDONLY`.
fn read_only_flags(path: &CString) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs writes into a zeroed struct of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let kept = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID;
    for (st_flag, ms_flag) in kept {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// `read_only_flags` of the folder that holds the steps' outputs, remembered: every step of a
/// run asks about the same folder, whose flags do not change while the sandbox lives.
fn remembered_flags(root: &CString) -> io::Result<libc::c_ulong> {
    static LAST: std::sync::Mutex<Option<(CString, libc::c_ulong)>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .map_err(|_| io::Error::other("spawner state poisoned"))?;
    if let Some((path, flags)) = last.as_ref()
        && path == root
    {
        return Ok(*flags);
    }
    let flags = read_only_flags(root)?;
    *last = Some((root.clone(), flags));
    Ok(flags)
}

/// The parts of a step's launch, as the spawner received them.
pub(super) struct Spec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// The step's outputs folder and the folder that holds every step's.
    pub outputs: Option<(&'a Path, &'a Path)>,
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl Prepared {
    pub(super) fn new(spec: &Spec<'_>) -> io::Result<Prepared> {
        let program = c_string(spec.program.as_os_str().as_bytes())?;
        let mut args = vec![program.clone()];
        for a in spec.args {
            args.push(c_string(a.as_bytes())?);
        }
        let mut env = Vec::with_capacity(spec.env.len());
        for (k, v) in spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            env.push(c_string(format!("{k}={v}").as_bytes())?);
        }
        let pointers = |list: &[CString]| {
            let mut p: Vec<*const libc::c_char> = list.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let outputs = match spec.outputs {
            Some((own, root)) => {
                let root = c_string(root.as_os_str().as_bytes())?;
                let flags = remembered_flags(&root)?;
                Some((c_string(own.as_os_str().as_bytes())?, root, flags))
            }
            None => None,
        };
        Ok(Prepared {
            argv: pointers(&args),
            envp: pointers(&env),
            program,
            _args: args,
            _env: env,
            cwd: c_string(spec.cwd.as_os_str().as_bytes())?,
            outputs,
        })
    }
}

/// A step's namespace made ahead of its step: init, cloned into a new PID and mount namespace
/// with its `/proc` mounted, waiting on a futex in the [`Launch`] for the step to run. The
/// spawner makes one as soon as it has handed the last one a step, so that cloning a namespace
/// (which copies every mount of the sandbox's) and mounting its `/proc`, most of what a sandboxed
/// step costs before its program starts, happen while the previous step runs, not between a
/// request and its program.
///
/// Until it is told to go, init shares the spawner's descriptor table (`CLONE_FILES`), since the
/// step's pipes arrive only with its request; then it takes a copy of its own (`unshare`) and
/// the spawner closes its copies of the step's.
pub(super) struct Spare {
    /// Init's pid, in the spawner's namespace: it leads the step's process group.
    pub pid: libc::pid_t,
    /// Init itself, whatever becomes of its pid once it is reaped (`None` on a kernel without
    /// pidfds).
    pidfd: Option<OwnedFd>,
    /// Always `Some` but in `drop` and once `Armed::go` has handed it on.
    launch: Option<Kept>,
}

impl Drop for Spare {
    /// A spare dropped unused: its launch is freed only when init is gone; a live one is killed
    /// and its launch left allocated, since init may still be reading it until the kill lands.
    fn drop(&mut self) {
        let Some(launch) = self.launch.take() else {
            return;
        };
        if !self.gone() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            std::mem::forget(launch);
        }
    }
}

/// A spare with its step written into it, not yet told to go: the spawner records the step
/// (and its exec pipe) with the reaper first.
pub(super) struct Armed {
    spare: Spare,
    /// The spawner's copies of the step's stdout, stderr and status pipe (Gantry's) and of
    /// init's end of the exec pipe, closed once init holds its own.
    held: [OwnedFd; 4],
}

impl Spare {
    /// Clones a waiting init. An error only when no init was made.
    pub(super) fn new() -> io::Result<Spare> {
        let (bounding, shared) = spawner_facts();
        let mut stacks = Vec::with_capacity(INIT_STACK + PROGRAM_STACK);
        let base = stacks.as_mut_ptr();
        let launch = Box::new(Launch {
            handed: UnsafeCell::new(None),
            shared,
            bounding,
            go: AtomicU32::new(0),
            released: AtomicU32::new(0),
            _stacks: stacks,
            init_top: top(base, INIT_STACK),
            program_top: top(base, INIT_STACK + PROGRAM_STACK),
        });
        let init_top = launch.init_top;
        let raw = Box::into_raw(launch);
        // SAFETY: from `Box::into_raw`, so not null.
        let launch = Kept(unsafe { std::ptr::NonNull::new_unchecked(raw) });
        // Init shares the memory and, until it goes, the descriptor table; the exit signal
        // makes it a child the reaper's waitpid sees.
        // SAFETY: init runs `init_entry` on its own stack, on the `Launch` kept in the `Spare`
        // and then by the reaper until it is reaped, and keeps to the rules in the module's
        // documentation.
        let pid = unsafe {
            libc::clone(
                init_entry,
                init_top as *mut libc::c_void,
                libc::CLONE_VM
                    | libc::CLONE_FILES
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWNS
                    | libc::SIGCHLD,
                raw.cast(),
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // Also set here, so that a signal sent as soon as the pid is known reaches the group.
        // SAFETY: setpgid has no memory-safety preconditions.
        unsafe { libc::setpgid(pid, pid) };
        Ok(Spare {
            pid,
            pidfd: pidfd(pid),
            launch: Some(launch),
        })
    }

    /// Whether init has exited (or was reaped already): then nothing runs on its launch any
    /// more, and it can take no step. Leaves the child to the reaper.
    pub(super) fn gone(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one valid pollfd, without waiting; a pidfd is readable once
            // its process has exited.
            return unsafe { libc::poll(&mut p, 1, 0) } != 0;
        }
        // Without a pidfd, by pid (`WNOWAIT`: the reaper reaps it).
        // SAFETY: waitid writes into a zeroed siginfo_t of the right type.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set by a waitid that found a child, zero otherwise.
        r != 0 || unsafe { info.si_pid() } != 0
    }

    /// Writes the step into the spare, with `status` where init writes how the step ended just
    /// before it exits (a pipe of Gantry's). Nothing runs yet: [`Armed::go`] starts it. Returns
    /// the spawner's end of the exec pipe, which carries the errno of what failed first when
    /// the program could not be started (see [`start_error`]).
    pub(super) fn arm(
        self,
        prepared: Prepared,
        stdout: OwnedFd,
        stderr: OwnedFd,
        status: OwnedFd,
    ) -> Result<(Armed, OwnedFd), (Spare, io::Error)> {
        let (err_r, err_w) = match super::process::pipe() {
            Ok(p) => p,
            Err(e) => return Err((self, e)),
        };
        let Some(launch) = &self.launch else {
            return Err((self, io::Error::from_raw_os_error(libc::EINVAL)));
        };
        let handed = Handed {
            prepared,
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            err_w: err_w.as_raw_fd(),
            status_w: status.as_raw_fd(),
            failed: AtomicI32::new(0),
        };
        // SAFETY: init reads `handed` only once `go` is set, which happens after this write
        // (`go`'s release store in `Armed::go`); nobody else touches it.
        unsafe { *launch.0.as_ref().handed.get() = Some(handed) };
        Ok((
            Armed {
                spare: self,
                held: [stdout, stderr, err_w, status],
            },
            err_r,
        ))
    }
}

impl Armed {
    /// Tells init to go, and returns once it holds its own descriptors (or is gone), having
    /// closed the spawner's copies: the program starts on its own from there. Returns the
    /// launch, which must stay alive until init is reaped.
    pub(super) fn go(self) -> Option<Kept> {
        let Armed { mut spare, held } = self;
        let kept = spare.launch.take()?;
        // SAFETY: the launch lives in `kept` until it is returned.
        let launch = unsafe { kept.0.as_ref() };
        launch.go.store(1, Ordering::Release);
        // SAFETY: futex(2) on a word of the launch, which outlives the call.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                launch.go.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            )
        };
        let tick = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        while launch.released.load(Ordering::Acquire) == 0 {
            // SAFETY: as above, with a timeout: an init that died before it could say so is
            // noticed below.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    launch.released.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0,
                    &tick,
                )
            };
            if launch.released.load(Ordering::Acquire) == 0 && spare.gone() {
                break;
            }
        }
        drop(held);
        Some(kept)
    }
}

/// Why a step's program could not start, from `exec` (the spawner's end of the step's exec
/// pipe, from [`Spare::arm`]), or `None` when it executed. Read once init is gone, when every
/// writer has closed the pipe, so it never blocks.
pub(super) fn start_error(exec: &OwnedFd) -> Option<io::Error> {
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        // SAFETY: reading into the unfilled part of a local buffer.
        let n = unsafe {
            libc::read(
                exec.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                errno.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Some(io::Error::last_os_error()),
        }
    }
    (got == errno.len()).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

/// Writes `errno` to `fd` and exits.
///
/// # Safety
/// As `init`.
unsafe fn fail(fd: RawFd, errno: i32) -> ! {
    // SAFETY: system calls only.
    unsafe {
        let _ = rawsys::write(fd, &errno.to_ne_bytes());
        rawsys::exit(127)
    }
}

/// Tells the spawner that it may close its copies of the step's descriptors.
///
/// # Safety
/// As `init`.
unsafe fn release(l: &Launch) {
    l.released.store(1, Ordering::Release);
    // SAFETY: a word of the launch, which outlives init.
    let _ = unsafe { rawsys::futex_wake(&l.released) };
}

/// Pid 1 of the step's namespace.
///
/// # Safety
/// Runs in the spawner's memory on its own stack (`Spare::new`): only `rawsys` system calls, on
/// memory made before the clone or handed over before `go`; never returns.
unsafe fn init(l: &Launch) -> ! {
    // SAFETY: `l` outlives init (the spawner drops it once init is reaped); init reads `handed`
    // only after `go`, when the spawner has written it for good.
    unsafe {
        // As a spare: the namespace made ready before the step is known. A spare that cannot
        // is gone when the spawner looks, and takes no step.
        if mount_namespace(l.shared, l.bounding).is_err() {
            rawsys::exit(127);
        }
        while l.go.load(Ordering::Acquire) == 0 {
            let _ = rawsys::futex_wait(&l.go, 0);
        }
        let Some(h) = (*l.handed.get()).as_ref() else {
            release(l);
            rawsys::exit(127)
        };
        // The step's folders, then a descriptor table of init's own (the step's pipes in it),
        // after which the spawner closes its copies.
        let own = match mount_outputs(&h.prepared) {
            Ok(_) => rawsys::unshare(libc::CLONE_FILES),
            Err(errno) => Err(errno),
        };
        if let Err(errno) = own {
            let _ = rawsys::write(h.err_w, &errno.to_ne_bytes());
            release(l);
            rawsys::exit(127);
        }
        release(l);
        // The program shares the memory too until it executes (init waits meanwhile), on a
        // stack of its own.
        let program = libc::clone(
            program_entry,
            l.program_top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            h as *const Handed as *mut libc::c_void,
        );
        if program < 0 {
            // The C library's wrapper put the errno in the TLS init shares with a spawner
            // thread: not worth reading.
            fail(h.err_w, libc::EAGAIN);
        }
        let _ = rawsys::close(h.err_w);
        let _ = rawsys::close(h.stdout);
        let _ = rawsys::close(h.stderr);
        loop {
            let mut status = 0;
            match rawsys::wait4(-1, &mut status, 0) {
                Ok(pid) if pid as libc::pid_t == program => {
                    // Whatever the step left in its namespace (`setsid`, double forks, `nohup`)
                    // ends here, before the spawner hears that the step ended: `kill(-1)` from
                    // pid 1 of a namespace reaches every other process in it, and every one of
                    // them descends from init (orphans are reparented to it), so "no child
                    // left" means "nobody left". `__WALL` also waits for children made with an
                    // exit signal other than SIGCHLD. The namespace's teardown (its mounts, its
                    // /proc) then happens while the next step starts, not before.
                    loop {
                        let _ = rawsys::kill(-1, libc::SIGKILL);
                        match rawsys::wait4(-1, std::ptr::null_mut(), libc::__WALL) {
                            Ok(_) | Err(libc::EINTR) => {}
                            Err(_) => break,
                        }
                    }
                    let failed = h.failed.load(Ordering::Acquire);
                    let end = match failed {
                        0 => super::spawner::StepEnd::Exited(status),
                        errno => super::spawner::StepEnd::NotStarted(errno),
                    };
                    let _ = rawsys::write(h.status_w, &end.to_bytes());
                    rawsys::exit(0);
                }
                Ok(_) | Err(libc::EINTR) => {}
                Err(_) => rawsys::exit(127),
            }
        }
    }
}

/// What a spare does before its step is known: a private mount namespace with a `/proc` of the
/// step's own PID namespace, and the bounding and ambient capability sets emptied (`bounding`
/// lists what is in the former), which the program inherits. Init keeps its effective
/// capabilities for the step's mounts: those two sets only bound what an exec may gain.
///
/// # Safety
/// As `init`.
unsafe fn mount_namespace(shared: bool, bounding: &[libc::c_int]) -> rawsys::SysResult {
    // SAFETY: system calls on static C strings.
    unsafe {
        // The bounding set needs CAP_SETPCAP in the effective set, which stays.
        for &cap in bounding {
            let _ = rawsys::prctl(libc::PR_CAPBSET_DROP, cap as usize, 0);
        }
        let _ = rawsys::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as usize,
            0,
        );
        rawsys::setpgid(0, 0)?;
        // Mounts made here stay in this namespace.
        if shared {
            rawsys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE)?;
        }
        rawsys::mount(
            Some(c"proc"),
            c"/proc",
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )
    }
}

/// Every outputs folder but the step's own read-only.
///
/// # Safety
/// As `init`.
unsafe fn mount_outputs(p: &Prepared) -> rawsys::SysResult {
    // SAFETY: system calls on C strings handed over before `go`.
    unsafe {
        if let Some((own, root, flags)) = &p.outputs {
            // The step's own folder keeps a writable mount of its own; the rest goes read-only.
            rawsys::mount(Some(own), own, None, libc::MS_BIND)?;
            rawsys::mount(None, root, None, *flags)?;
        }
        Ok(0)
    }
}

/// Init's stack: a few frames of system calls.
const INIT_STACK: usize = 64 * 1024;

/// The program's stack until it executes: system calls only, so little is needed.
const PROGRAM_STACK: usize = 64 * 1024;

/// The step's program: its descriptors, its folder, no capabilities, then exec.
///
/// # Safety
/// As `init`.
unsafe fn exec_program(l: &Handed) -> ! {
    // SAFETY: system calls on memory made before the clone.
    unsafe {
        if let Err(errno) = prepare_program(l) {
            l.failed.store(errno.max(1), Ordering::Release);
            fail(l.err_w, errno);
        }
        let p = &l.prepared;
        let errno = rawsys::execve(&p.program, p.argv.as_ptr(), p.envp.as_ptr());
        l.failed.store(errno.max(1), Ordering::Release);
        fail(l.err_w, errno)
    }
}

/// Everything of the program's start up to its exec.
///
/// # Safety
/// As `init`.
unsafe fn prepare_program(l: &Handed) -> rawsys::SysResult {
    let p = &l.prepared;
    // SAFETY: system calls on memory made before the clone.
    unsafe {
        // Close-on-exec: only its copy on 0 reaches the program.
        let null = rawsys::open(c"/dev/null", libc::O_RDONLY | libc::O_CLOEXEC)? as RawFd;
        rawsys::dup2(null, 0)?;
        rawsys::dup2(l.stdout, 1)?;
        rawsys::dup2(l.stderr, 2)?;
        rawsys::chdir(&p.cwd)?;
        // Nothing of the spawner's capabilities reaches the step: the bounding and ambient
        // sets went when init made the namespace (`mount_namespace`), the rest goes here.
        rawsys::drop_capabilities()?;
        // The spawner ignores SIGPIPE, as every Rust program does; the step gets the default,
        // and no blocked signal.
        rawsys::default_signals(libc::SIGPIPE)?;
        Ok(0)
    }
}
