//! One PID and mount namespace per step, started by the spawner inside the run's sandbox.
//!
//! A step's first process is not the spawner's child but the grandchild of a small init that
//! the spawner clones into a new PID namespace (and a new mount namespace):
//!
//! ```text
//! spawner ── clone(NEWPID|NEWNS) ──▶ init (pid 1 of the step's namespace)
//!                                     │  mounts a /proc of its own namespace, makes every
//!                                     │  outputs folder but the step's own read-only
//!                                     └─ clone ──▶ the step's program (pid 2), capabilities
//!                                                  dropped, seccomp filter on (`seccomp.rs`)
//! ```
//!
//! So a step sees only its own processes (its `/proc` holds nothing else: not the spawner, not
//! another step's processes or their environments), cannot signal the spawner (it has no pid for
//! it), can write only its own outputs folder, and cannot leave anything behind: when the
//! step's program exits, init kills whatever else the step left in the namespace (`setsid`,
//! double forks, `nohup` alike) and reaps it all, then writes the program's wait status to the
//! spawner and exits. The spawner reports the step's end when that status arrives, so the
//! namespace's teardown (a few hundred microseconds of unmounting) overlaps the next step's
//! start; when init itself is killed (the grace period's `SIGKILL`) no status comes, and the
//! spawner reports once init is reaped, after the kernel has emptied the namespace.
//!
//! Signals: the spawner signals the step's process group (init's, which the program inherits).
//! The PID namespace's init ignores every signal it has no handler for, so a `SIGTERM` reaches
//! the program while init waits on; `SIGKILL` (the end of the grace period) ends init and with it
//! the whole namespace.
//!
//! The clone happens in a multi-threaded process, so the children run only async-signal-safe
//! system calls on memory prepared before the clone (`Prepared`), and never return from
//! [`start`]. The spawner holds `CAP_SYS_ADMIN` and `CAP_SETPCAP` inside the sandbox's user
//! namespace for this; the step's program drops its bounding set, ambient and every other
//! capability before it executes.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
    /// The system calls the step may not make.
    filter: &'static super::seccomp::Filter,
    /// The capabilities in the spawner's bounding set, which the program drops.
    bounding: &'static [libc::c_int],
    /// Whether a mount of the spawner's namespace propagates (then the step's namespace is made
    /// private before it mounts anything).
    shared: bool,
    /// The stack the program starts on, in init's memory, until it executes (see `init`); the
    /// program writes it through a raw pointer, hence the cell.
    stack: std::cell::UnsafeCell<Vec<u8>>,
}

/// What the program's entry point needs, on init's stack.
struct ProgramArgs<'a> {
    prepared: &'a Prepared,
    stdout: RawFd,
    stderr: RawFd,
    err_w: RawFd,
}

/// The program's entry point on its own stack (`clone` with `CLONE_VM | CLONE_VFORK`).
extern "C" fn program_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at init's `ProgramArgs`, alive while init waits for the exec.
    let args = unsafe { &*(arg as *const ProgramArgs<'_>) };
    // SAFETY: runs as `exec_program` requires: only system calls, then exec or exit.
    unsafe { exec_program(args.prepared, args.stdout, args.stderr, args.err_w) }
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
                let flags = read_only_flags(&root)?;
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
            filter: super::seccomp::Filter::shared(),
            bounding: spawner_facts().0,
            shared: spawner_facts().1,
            stack: std::cell::UnsafeCell::new(vec![0; PROGRAM_STACK]),
        })
    }
}

/// A started step: the pid of its namespace's init (in the spawner's namespace), the pipe on
/// which init writes the program's wait status just before it exits, and the pipe that tells
/// whether the program started: it closes at the program's exec, or carries the errno of what
/// failed first (see [`start_error`]).
pub(super) struct Started {
    pub init: libc::pid_t,
    pub status: OwnedFd,
    pub exec: OwnedFd,
}

/// `clone` with only an exit signal and `flags`: a fork that runs no `atfork` handlers, so it
/// never waits on a lock another thread held. Returns 0 in the child.
///
/// # Safety
/// The child may only call async-signal-safe functions and must not return into code that
/// expects the parent's threads.
unsafe fn raw_fork(flags: libc::c_int) -> libc::pid_t {
    // SAFETY: with no CLONE_VM the child gets a copy of the address space and continues on its
    // own copy of this stack, as after fork(2); the caller keeps to the rules above.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(flags | libc::SIGCHLD),
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        ) as libc::pid_t
    }
}

/// Starts the step described by `prepared` with `stdout` and `stderr`, in a PID and mount
/// namespace of its own. Returns as soon as init exists, without waiting for the program's exec
/// (so the spawner can start the next step meanwhile); an error only when no init was made.
pub(super) fn start(prepared: &Prepared, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Started> {
    let (err_r, err_w) = super::process::pipe()?;
    let (status_r, status_w) = super::process::pipe()?;
    // SAFETY: the child runs `init`, which keeps to the rules of `raw_fork` and never returns.
    let pid = unsafe { raw_fork(libc::CLONE_NEWPID | libc::CLONE_NEWNS) };
    if pid == 0 {
        // SAFETY: in the child; see above.
        unsafe {
            init(
                prepared,
                stdout.as_raw_fd(),
                stderr.as_raw_fd(),
                err_w.as_raw_fd(),
                status_w.as_raw_fd(),
            )
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // Also set here, so that a signal sent as soon as the pid is known reaches the group.
    // SAFETY: setpgid has no memory-safety preconditions.
    unsafe { libc::setpgid(pid, pid) };
    drop((stdout, stderr, err_w, status_w));
    Ok(Started {
        init: pid,
        status: status_r,
        exec: err_r,
    })
}

/// Once `exec` (a [`Started`]'s) is readable: `None` when the program is executing, or why it
/// could not start (init then exits on its own, with no wait status). Never blocks once the
/// program has exited or init is gone: every writer has closed the pipe by then.
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

/// Reads the program's wait status that init wrote, once the pipe is readable: `None` when init
/// closed it without writing one (it was killed, e.g. by the grace period's `SIGKILL`, or the
/// program never started).
pub(super) fn program_status(status: &OwnedFd) -> Option<i32> {
    let mut bytes = [0u8; 4];
    // SAFETY: reading into a local buffer; init writes its 4 bytes in one write, well under
    // PIPE_BUF, so a read sees all of them or none.
    let n = unsafe { libc::read(status.as_raw_fd(), bytes.as_mut_ptr().cast(), bytes.len()) };
    (n == 4).then(|| i32::from_ne_bytes(bytes))
}

/// Writes the calling thread's errno to `fd` and exits.
///
/// # Safety
/// Async-signal-safe only.
unsafe fn fail(fd: RawFd) -> ! {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    let bytes = errno.to_ne_bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Pid 1 of the step's namespace.
///
/// # Safety
/// Runs in the child of `raw_fork`: only async-signal-safe calls, on memory made before the
/// clone.
unsafe fn init(p: &Prepared, stdout: RawFd, stderr: RawFd, err_w: RawFd, status_w: RawFd) -> ! {
    // SAFETY: every call below is a plain system call on C strings made before the clone.
    unsafe {
        libc::setpgid(0, 0);
        // Mounts made here stay in this namespace.
        if p.shared
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
        {
            fail(err_w);
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            fail(err_w);
        }
        if let Some((own, root, flags)) = &p.outputs {
            // The step's own folder keeps a writable mount of its own; the rest goes read-only.
            if libc::mount(
                own.as_ptr(),
                own.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    *flags,
                    std::ptr::null(),
                ) != 0
            {
                fail(err_w);
            }
        }
        // The program shares init's memory until it executes, as posix_spawn does (init waits
        // meanwhile): no copy of the address space for it. It runs on a stack of its own.
        let args = ProgramArgs {
            prepared: p,
            stdout,
            stderr,
            err_w,
        };
        let stack = &mut *p.stack.get();
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        let program = libc::clone(
            program_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ProgramArgs<'_> as *mut libc::c_void,
        );
        if program < 0 {
            fail(err_w);
        }
        libc::close(err_w);
        libc::close(stdout);
        libc::close(stderr);
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == program {
                // Whatever the step left in its namespace (`setsid`, double forks, `nohup`) ends
                // here, before the spawner hears that the step ended: `kill(-1)` from pid 1 of a
                // namespace reaches every other process in it, and every one of them descends
                // from init (orphans are reparented to it), so "no child left" means "nobody
                // left". `__WALL` also waits for children made with an exit signal other than
                // SIGCHLD. The namespace's teardown (its mounts, its /proc) then happens while
                // the next step starts, not before.
                loop {
                    libc::kill(-1, libc::SIGKILL);
                    if libc::waitpid(-1, std::ptr::null_mut(), libc::__WALL) < 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                    {
                        break;
                    }
                }
                let bytes = status.to_ne_bytes();
                libc::write(status_w, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
            if pid < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(127);
            }
        }
    }
}

/// The program's stack until it executes: system calls only, so little is needed.
const PROGRAM_STACK: usize = 64 * 1024;

/// The capability header version that takes two 32-bit data words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The step's program: its descriptors, its folder, no capabilities, then exec.
///
/// # Safety
/// As `init`.
unsafe fn exec_program(p: &Prepared, stdout: RawFd, stderr: RawFd, err_w: RawFd) -> ! {
    // SAFETY: plain system calls on memory made before the clone.
    unsafe {
        // Close-on-exec: only its copy on 0 reaches the program.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(stdout, 1) < 0
            || libc::dup2(stderr, 2) < 0
            || libc::chdir(p.cwd.as_ptr()) != 0
        {
            fail(err_w);
        }
        // Nothing of the spawner's capabilities reaches the step: the bounding set first (it
        // needs CAP_SETPCAP), then ambient, then the rest.
        for &cap in p.bounding {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let header = [CAPABILITY_VERSION_3, 0];
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0 {
            fail(err_w);
        }
        // The spawner ignores SIGPIPE, as every Rust program does; the step gets the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if !p.filter.install() {
            fail(err_w);
        }
        libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        fail(err_w)
    }
}
