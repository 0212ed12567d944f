//! The spawner: the small process that starts a run's steps inside its sandbox, and the wire
//! format it speaks with the executor.
//!
//! One bubblewrap sandbox per run costs one `bwrap` start (about 5 ms) instead of one per step;
//! inside it, `gantry __spawner` (this file's [`serve`]) starts each step as a plain
//! `posix_spawn`, so a step costs about what it costs without a sandbox. The spawner runs as the
//! step user, inside the run's namespaces, and holds nothing but its end of the socket: a step
//! that took it over could only lie about its own steps, which the executor treats as untrusted
//! anyway (every frame is bounded and parsed; nonsense ends the sandbox).
//!
//! # Wire format
//!
//! A Unix stream socket (fd 3 in the spawner). Each frame is a 5-byte header (`b'J'`, then the
//! body's length as a big-endian `u32`) followed by a JSON body. A frame that carries file
//! descriptors (the step's stdout and stderr pipes, and its status pipe) sends them as
//! `SCM_RIGHTS` with its header, in the same `sendmsg`, so they can never be taken for another
//! frame's.
//!
//! Executor to spawner: [`Request`]. Spawner to executor: [`Reply`]. The spawner answers `Ready`
//! once; a `Spawn` is not answered. A step's end comes on its status pipe: the step's init
//! writes a [`StepEnd`] there when the step has ended (the program's raw wait status), or when
//! its program could not be executed (the errno). A step whose init could not write it (the pipe
//! closes empty) is reported on the socket instead, once init is reaped: `Failed` when the
//! program never started, `Exited` when init was killed. When the socket closes the spawner
//! kills every group it started and exits; bubblewrap's PID namespace then takes whatever is
//! left.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The header's first byte.
const MAGIC: u8 = b'J';
/// Requests carry scripts and environments, which may be large; replies are tiny.
pub(super) const MAX_REQUEST: usize = 16 * 1024 * 1024;
pub(super) const MAX_REPLY: usize = 64 * 1024;

/// What the executor asks of the spawner.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(super) enum Request {
    /// Start a process in a new process group; the frame carries its stdout, its stderr and
    /// the pipe its end is written to.
    Spawn {
        id: u64,
        /// A path, or a bare name looked up in `path`.
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        /// The `PATH` to look `program` up in when it has no `/`.
        path: Option<String>,
        /// The step's own outputs folder: the one folder it may write under the folder that
        /// holds every step's.
        #[serde(default)]
        outputs: Option<PathBuf>,
    },
    /// Send `signal` to the process group of step process `id`.
    Signal { id: u64, signal: i32 },
}

/// What the spawner tells the executor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(super) enum Reply {
    Ready,
    /// The step `id`'s program could not be started, and its init could not say so.
    Failed {
        id: u64,
        errno: i32,
    },
    /// The step `id` ended without its init writing the status pipe (init was killed);
    /// `status` is init's raw wait status.
    Exited {
        id: u64,
        status: i32,
    },
    /// A step connected to the allowed host port `port` on the run's loopback; the frame
    /// carries the connection, for Gantry to carry to the host's port.
    Connection {
        port: u16,
    },
}

/// What a step's init writes on its status pipe, in one write of [`StepEnd::LEN`] bytes: a kind
/// and a value, each a native-endian `i32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepEnd {
    /// The program's raw wait status.
    Exited(i32),
    /// The program could not be executed: the errno of what failed.
    NotStarted(i32),
}

impl StepEnd {
    pub(super) const LEN: usize = 8;

    /// The record's bytes; computed on the stack, as init (which shares the spawner's memory)
    /// must.
    pub(super) fn to_bytes(self) -> [u8; StepEnd::LEN] {
        let (kind, value) = match self {
            StepEnd::Exited(status) => (0i32, status),
            StepEnd::NotStarted(errno) => (1, errno),
        };
        let mut bytes = [0u8; StepEnd::LEN];
        bytes[..4].copy_from_slice(&kind.to_ne_bytes());
        bytes[4..].copy_from_slice(&value.to_ne_bytes());
        bytes
    }

    pub(super) fn from_bytes(bytes: [u8; StepEnd::LEN]) -> Option<StepEnd> {
        let word = |at: usize| {
            i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        match word(0) {
            0 => Some(StepEnd::Exited(word(4))),
            1 => Some(StepEnd::NotStarted(word(4))),
            _ => None,
        }
    }
}

/// Writes one frame, with `fds` attached to its header.
pub(super) fn write_frame(sock: &UnixStream, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    // One write for header and body: the reader wakes once per frame, not twice.
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(MAGIC);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    send_with_fds(sock, &frame, fds)
}

/// Sends `bytes` (all of them) with `fds` as `SCM_RIGHTS` on the first `sendmsg`.
fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() {
        let mut w = sock;
        return w.write_all(bytes);
    }
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(u32::try_from(fd_bytes).unwrap_or(u32::MAX)) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header with `fds` (CMSG_SPACE above), so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside the buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(u32::try_from(fd_bytes).unwrap_or(u32::MAX)) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
    }
    // SAFETY: msg is fully initialised and points at live buffers.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let sent = usize::try_from(sent).unwrap_or(0);
    if sent < bytes.len() {
        let mut w = sock;
        w.write_all(&bytes[sent..])?;
    }
    Ok(())
}

/// Reads one frame of at most `max` bytes, and the file descriptors that came with its header.
/// `Ok(None)` at a clean end of the stream.
pub(super) fn read_frame(
    sock: &UnixStream,
    max: usize,
) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut header = [0u8; 5];
    let mut fds = Vec::new();
    let mut got = 0;
    wait_readable(sock)?;
    while got < header.len() {
        let n = recv_with_fds(sock, &mut header[got..], &mut fds)?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    if header[0] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame header",
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max}"),
        ));
    }
    let mut body = vec![0u8; len];
    let mut r = sock;
    r.read_exact(&mut body)?;
    Ok(Some((body, fds)))
}

/// Waits until `sock` has something to read (or has closed). Both ends of the socket read and
/// write it, and a reader blocked in `recvmsg` is woken each time its peer reads (the kernel
/// tells the socket's waiters that there is room to write): `poll` for input alone sleeps
/// through those, which was a wake-up of the spawner per reply and of Gantry's reader per
/// request, each a context switch on the way of the next step.
fn wait_readable(sock: &UnixStream) -> io::Result<()> {
    let mut fd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll(2) on one valid pollfd.
        if unsafe { libc::poll(&mut fd, 1, -1) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `recvmsg`: data into `buf`, received descriptors (close-on-exec) appended to `fds`.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut control = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; its pointers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break usize::try_from(n).unwrap_or(0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n)
}

/// The spawner's main loop (`gantry __spawner --fd=N --exe-fd=M [limits]`): serves requests on
/// the socket `N` until it closes, then kills every process group it started. Returns the exit
/// code.
pub fn serve(args: &[String]) -> u8 {
    let mut socket: Option<RawFd> = None;
    let mut limits = super::sandbox::ProcessLimits::default();
    let mut host_ports: Vec<u16> = Vec::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return 2;
        };
        let number = value.parse::<u64>().ok();
        match (key, number) {
            ("--fd", Some(n)) => socket = RawFd::try_from(n).ok(),
            ("--exe-fd", Some(n)) => {
                if let Ok(fd) = RawFd::try_from(n) {
                    // SAFETY: the binary's descriptor was inherited for the exec and is ours.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            ("--nofile", Some(n)) => limits.open_files = n,
            ("--nproc", Some(n)) => limits.processes = n,
            ("--fsize", Some(n)) => limits.file_size = n,
            ("--memory", Some(n)) => limits.memory = Some(n),
            ("--host-port", Some(n)) => match u16::try_from(n) {
                Ok(port) => host_ports.push(port),
                Err(_) => return 2,
            },
            _ => return 2,
        }
    }
    let Some(fd) = socket.filter(|&fd| fd > 2) else {
        return 2;
    };
    // SAFETY: the socket was inherited from Gantry for this process alone. Steps must not inherit
    // it, so it becomes close-on-exec first.
    let sock = unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        UnixStream::from_raw_fd(fd)
    };
    if limits.apply().is_err() {
        return 2;
    }
    // Steps cannot see the spawner (their PID namespaces are below its), and it is not
    // dumpable besides: no ptrace, no /proc/<pid>/mem or environ, even for its own user. What
    // steps create is theirs alone: files 0600, folders 0700.
    // SAFETY: prctl(2) and umask(2) have no memory-safety preconditions.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return 2;
        }
        libc::umask(0o077);
    }
    // The steps' seccomp filter, on the spawner itself before it starts a thread or a step:
    // every step inherits it instead of compiling its own (see `seccomp.rs`).
    if super::seccomp::Filter::shared().install().is_err() {
        return 2;
    }
    let writer = match sock.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(_) => return 2,
    };
    let groups: Arc<Mutex<HashMap<u64, i32>>> = Arc::new(Mutex::new(HashMap::new()));
    let Ok(children) = Reaper::new().map(Arc::new) else {
        return 2;
    };
    {
        let (children, writer) = (children.clone(), writer.clone());
        if std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap(&children, &writer))
            .is_err()
        {
            return 2;
        }
    }
    // Listening before `Ready`, so a step never finds an allowed port closed.
    for port in host_ports {
        let Ok(listener) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        else {
            return 2;
        };
        let writer = writer.clone();
        if std::thread::Builder::new()
            .name("host-port".into())
            .spawn(move || hand_over(&listener, port, &writer))
            .is_err()
        {
            return 2;
        }
    }
    // The first step's namespace, made before the first step is asked for.
    let mut spare = new_spare(&children).ok();
    children.wake();
    if reply(&writer, &Reply::Ready).is_err() {
        return 2;
    }
    loop {
        let (body, fds) = match read_frame(&sock, MAX_REQUEST) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        let Ok(request) = serde_json::from_slice::<Request>(&body) else {
            break;
        };
        match request {
            Request::Spawn {
                id,
                program,
                args,
                env,
                cwd,
                path,
                outputs,
            } => {
                // Nothing is answered when the step starts: its end (or why it did not start)
                // comes on its status pipe, or from the reaper. A `Signal` for this step is
                // read after the group is recorded here.
                let answer = spawn_one(
                    id,
                    (program, args, env, cwd, path, outputs),
                    fds,
                    &children,
                    &mut spare,
                );
                match answer {
                    Ok(pgid) => {
                        if let Ok(mut g) = groups.lock() {
                            g.insert(id, pgid);
                        }
                    }
                    Err(e) => {
                        let errno = e.raw_os_error().unwrap_or(libc::EIO);
                        let _ = reply(&writer, &Reply::Failed { id, errno });
                    }
                }
            }
            Request::Signal { id, signal } => {
                let pgid = groups.lock().ok().and_then(|g| g.get(&id).copied());
                if let Some(pgid) = pgid.filter(|&p| p > 1) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe {
                        libc::kill(-pgid, signal);
                    }
                }
            }
        }
    }
    // Killed, its launch left to the process's end.
    drop(spare);
    if let Ok(g) = groups.lock() {
        for &pgid in g.values().filter(|&&p| p > 1) {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
    0
}

/// Hands each connection to an allowed host port to Gantry, which carries it to the host.
fn hand_over(listener: &std::net::TcpListener, port: u16, writer: &Mutex<UnixStream>) {
    let Ok(body) = serde_json::to_vec(&Reply::Connection { port }) else {
        return;
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(sock) = writer.lock() else { return };
        if write_frame(&sock, &body, &[stream.as_raw_fd()]).is_err() {
            return;
        }
    }
}

fn reply(writer: &Mutex<UnixStream>, reply: &Reply) -> io::Result<()> {
    let body = serde_json::to_vec(reply).map_err(io::Error::other)?;
    let sock = writer
        .lock()
        .map_err(|_| io::Error::other("spawner writer poisoned"))?;
    write_frame(&sock, &body, &[])
}

/// Who is waiting for which child: one reaper thread serves every step, so a step costs no
/// thread of its own. A step's end goes to Gantry from init itself, which writes it on a pipe of
/// Gantry's (by then nothing of the step is left running, see `step_ns`), as it does when the
/// program could not be executed, and exits with 0; the reaper speaks only for an init that ended
/// otherwise, once it is reaped: `Failed` with the errno on its exec pipe when the program never
/// started (init could not make its mounts or clone it), `Exited` when init was killed before it
/// could write (the grace period's `SIGKILL`).
#[derive(Default)]
struct Children {
    /// Every init not reaped yet.
    inits: HashMap<i32, Init>,
}

struct Init {
    /// The step's id in the executor's requests.
    id: u64,
    /// Carries why the program could not start, when init could not say it; read once init is
    /// reaped (every writer has closed it by then).
    exec: Option<OwnedFd>,
    /// Readable once init has exited (`None` on a kernel without pidfds: then the reaper looks
    /// every few milliseconds).
    pidfd: Option<OwnedFd>,
    /// Whether the step's end was reported, or will never be (a spare).
    done: bool,
    /// What init runs on, in this process's memory: dropped with this, once init is reaped
    /// (`None` while the spawner holds it: a spare, or a step being handed over).
    launch: Option<super::step_ns::Kept>,
}

struct Reaper {
    children: Mutex<Children>,
    /// A byte here wakes the reaper: a new init to watch.
    wake_r: OwnedFd,
    wake_w: OwnedFd,
}

impl Reaper {
    fn new() -> io::Result<Reaper> {
        let (wake_r, wake_w) = super::process::pipe()?;
        for fd in [&wake_r, &wake_w] {
            // SAFETY: fcntl on a descriptor this function owns.
            unsafe {
                let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Ok(Reaper {
            children: Mutex::default(),
            wake_r,
            wake_w,
        })
    }

    fn wake(&self) {
        // SAFETY: writing one byte from a local; a full pipe already means a wake is pending.
        unsafe { libc::write(self.wake_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// What one watched descriptor belongs to.
#[derive(Clone, Copy)]
enum Watch {
    Wake,
    Exit,
}

/// Reports the end of `init`'s step, which init did not report itself (it ended otherwise than
/// with 0): why its program did not start, or init's own wait status.
fn ended(init: &mut Init, status: i32, replies: &mut Vec<Reply>) {
    if init.done {
        return;
    }
    init.done = true;
    let failed = init
        .exec
        .take()
        .and_then(|exec| super::step_ns::start_error(&exec));
    replies.push(match failed {
        Some(e) => Reply::Failed {
            id: init.id,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        },
        None => Reply::Exited {
            id: init.id,
            status,
        },
    });
}

/// Watches every init and reports each step's end.
fn reap(reaper: &Reaper, writer: &Mutex<UnixStream>) {
    loop {
        let (mut fds, watches, blind) = {
            let Ok(c) = reaper.children.lock() else {
                return;
            };
            let mut fds = vec![(reaper.wake_r.as_raw_fd(), Watch::Wake)];
            let mut blind = false;
            for init in c.inits.values() {
                match &init.pidfd {
                    Some(fd) => fds.push((fd.as_raw_fd(), Watch::Exit)),
                    None => blind = true,
                }
            }
            let watches: Vec<Watch> = fds.iter().map(|(_, w)| *w).collect();
            let fds: Vec<libc::pollfd> = fds
                .iter()
                .map(|(fd, _)| libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            (fds, watches, blind)
        };
        // The descriptors stay open while this runs: only this thread closes them.
        // SAFETY: poll(2) on a valid array of pollfd of the given length.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                if blind { 5 } else { -1 },
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
        let mut replies = Vec::new();
        {
            let Ok(mut c) = reaper.children.lock() else {
                return;
            };
            for (fd, watch) in fds.iter().zip(&watches) {
                if fd.revents == 0 {
                    continue;
                }
                match *watch {
                    Watch::Wake => {
                        let mut sink = [0u8; 64];
                        // SAFETY: reading into a local buffer from a non-blocking pipe.
                        while unsafe { libc::read(fd.fd, sink.as_mut_ptr().cast(), sink.len()) } > 0
                        {
                        }
                    }
                    Watch::Exit => {}
                }
            }
            // Every init that has exited is reaped; one that did not report its step's end to
            // Gantry (killed before it wrote the status) has it reported now, its namespace
            // empty.
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes the status into a valid int.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                // An init that exited with 0 told Gantry itself.
                if let Some(mut init) = c.inits.remove(&pid)
                    && !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
                {
                    ended(&mut init, status, &mut replies);
                }
            }
        }
        for r in &replies {
            let _ = reply(writer, r);
        }
    }
}

/// A `Spawn` request's process: program, arguments, environment, working directory, `PATH`,
/// outputs folder.
type Launch = (
    String,
    Vec<String>,
    Vec<(String, String)>,
    PathBuf,
    Option<String>,
    Option<PathBuf>,
);

/// A spare step namespace (`step_ns::Spare`), recorded with the reaper so that one that dies
/// unused is reaped (nothing is reported for it). The caller wakes the reaper (once for this and
/// whatever else it recorded: a wake-up of the reaper is a context switch on a step's way).
fn new_spare(children: &Reaper) -> io::Result<super::step_ns::Spare> {
    let mut c = children
        .children
        .lock()
        .map_err(|_| io::Error::other("spawner state poisoned"))?;
    let spare = super::step_ns::Spare::new()?;
    c.inits.insert(
        spare.pid,
        Init {
            id: 0,
            exec: None,
            pidfd: super::step_ns::pidfd(spare.pid),
            done: true,
            launch: None,
        },
    );
    Ok(spare)
}

/// Starts step `id` in a PID and mount namespace of its own (`step_ns`), in the spare made
/// ahead when there is one, then makes the next spare; its end is reported by its init, or by
/// the reaper. Returns the pid of the step's init, which leads the step's process group.
fn spawn_one(
    id: u64,
    request: Launch,
    fds: Vec<OwnedFd>,
    children: &Reaper,
    spare: &mut Option<super::step_ns::Spare>,
) -> io::Result<i32> {
    let (program, args, env, cwd, path, outputs) = request;
    let mut fds = fds.into_iter();
    let (Some(stdout), Some(stderr), Some(status)) = (fds.next(), fds.next(), fds.next()) else {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    };
    let path = path.map(OsString::from);
    let program = super::process::resolve(&program, path.as_deref(), &cwd);
    let root = outputs.as_deref().and_then(|o| o.parent());
    let prepared = super::step_ns::Prepared::new(&super::step_ns::Spec {
        program: &program,
        args: &args,
        env: &env,
        cwd: &cwd,
        outputs: outputs.as_deref().zip(root),
    })?;
    // A spare that died waiting (nothing should end one, but then it takes no step) is left
    // to the reaper; its launch is freed here, as nothing runs on it any more.
    let ready = match spare.take() {
        Some(s) if !s.gone() => s,
        _ => new_spare(children)?,
    };
    let pid = ready.pid;
    let (armed, exec) = match ready.arm(prepared, stdout, stderr, status) {
        Ok(armed) => armed,
        Err((ready, e)) => {
            *spare = Some(ready);
            return Err(e);
        }
    };
    {
        let mut c = children
            .children
            .lock()
            .map_err(|_| io::Error::other("spawner state poisoned"))?;
        // Recorded as a step before it can start, so the reaper reports it whenever it ends. A
        // spare reaped meanwhile (it died after the look above) starts nothing: say so.
        let Some(init) = c.inits.get_mut(&pid) else {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        };
        init.id = id;
        init.exec = Some(exec);
        init.done = false;
    }
    let launch = armed.go();
    // The launch must reach the reaper, which frees it once init is reaped, even from a lock a
    // panicking thread left: freed here, it could still be in use.
    let mut c = children
        .children
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match c.inits.get_mut(&pid) {
        Some(init) => init.launch = launch,
        // Reaped already (a step that ended at once): nothing runs on its launch any more.
        None => drop(launch),
    }
    drop(c);
    // The next step's namespace, made while this one runs; then one wake-up has the reaper
    // watch both inits' ends.
    *spare = new_spare(children).ok();
    children.wake();
    Ok(pid)
}
