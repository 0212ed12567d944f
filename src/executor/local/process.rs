//! One attempt of a process step: start it in a new process group, stream its output as masked
//! lines, end it (and everything it started) on exit, timeout or stop.
//!
//! The attempt is a single `select!` loop over the two pipes, the leader's exit, the step timer, the
//! run's stop token and one phase timer; no thread and no polling. Phases:
//!
//! - *running*: when the leader exits, the group gets SIGKILL at once (background children left
//!   behind die with the step; a sandboxed step's init has killed them already, see `step_ns`),
//!   then the pipes are drained. A pipe still open [`DRAIN`] after that
//!   belongs to a process that left the group (`setsid`); it is abandoned.
//! - *terminating* (step timeout, or the run stopped): the group got SIGTERM; the loop waits until
//!   the leader has exited and both pipes are closed (normally: every member that shares them has
//!   exited after cleaning up), or until `Limits::kill_grace` has passed, and then sends SIGKILL to
//!   the group.
//!
//! The group is also sent SIGKILL when the attempt ends in any other way (the guard's `Drop`, which
//! also covers a step future that is dropped or panics). The group is signalled after its leader
//! has been reaped; the group id cannot be reused while any member lives, and reusing it in the
//! microseconds after the last one died would need a full wrap of the pid space. A process that
//! moves itself to another group or session (`setsid`, `set -m`) escapes all of this.
//!
//! A secret output is masked from the moment its file exists: before each batch of lines, the
//! declared secret output files are checked (re-read only when their length or mtime changed) and
//! their content is added to the run's secrets. A line printed before the file is written cannot
//! be masked this way.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::Shared;
use super::attempt::{AttemptEnd, open_output, strip_newline};
use super::dirs::fresh_dir;
use super::prepare::{Job, Program, Spawn};
use super::sandbox::{Jail, Remote, StepCommand, StepUser, Waited};
use crate::executor::mask::LineSplitter;
use crate::executor::{AttemptHandle, Event, StepStatus, Stream};
use crate::spec::values::format_duration;

/// Bytes read from a pipe at a time (a pipe holds 64 KiB by default): a step that writes a lot
/// is read in few wakeups, each one log event.
const CHUNK: usize = 64 * 1024;
/// How long the pipes may stay open after the whole group has been killed.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Terminating,
    Killed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    TimedOut,
    Stopped,
}

/// Runs one attempt of a process step and reports how it ended.
pub(super) async fn run(shared: &Shared, job: &Job, spawn: &Spawn, attempt: u32) -> AttemptEnd {
    let step = job.index;
    if job.outputs.is_empty() {
        let outdir = shared.outputs.join(super::UNREAD_OUTPUTS);
        return run_in(shared, job, spawn, attempt, outdir).await;
    }
    let outdir = shared.outputs.join(&job.name);
    let made = if attempt == 1 {
        shared.dirs.ready(step).await
    } else {
        let (dir, owner) = (outdir.clone(), shared.step_user());
        match tokio::task::spawn_blocking(move || fresh_dir(&dir, owner)).await {
            Ok(made) => made.map_err(|e| format!("cannot prepare {}: {e}", outdir.display())),
            Err(e) => Err(format!("cannot prepare {}: {e}", outdir.display())),
        }
    };
    if let Err(message) = made {
        return not_started(shared, step, attempt, message).await;
    }
    run_in(shared, job, spawn, attempt, outdir).await
}

/// Runs one attempt with `outdir` as its `$GANTRY_OUTPUTS`, which exists.
async fn run_in(
    shared: &Shared,
    job: &Job,
    spawn: &Spawn,
    attempt: u32,
    outdir: PathBuf,
) -> AttemptEnd {
    let step = job.index;
    let launch = match launch(shared, job, spawn, attempt, &outdir).await {
        Ok(launch) => launch,
        Err(message) => return not_started(shared, step, attempt, message).await,
    };
    let jail = match shared.jail().await {
        Ok(jail) => jail,
        Err(message) => return not_started(shared, step, attempt, message).await,
    };
    let memory = jail.clone();
    let started = match jail {
        None => start_direct(launch).await,
        Some(jail) => start_jailed(jail, launch),
    };
    let (mut child, mut group, out, err) = match started {
        Ok(started) => started,
        Err(e) => return not_started(shared, step, attempt, spawn_error(spawn, &e)).await,
    };
    shared.started(step, attempt, child.handle()).await;

    let mut logs = Logs::new(shared, job, attempt, &outdir);
    let mut out = Some(out);
    let mut err = Some(err);
    let mut bufs = vec![0u8; 2 * CHUNK];
    let (obuf, ebuf) = bufs.split_at_mut(CHUNK);
    let mut exit: Option<io::Result<Waited>> = None;
    let mut phase = Phase::Running;
    let mut ended: Option<Ended> = None;
    let mut abandoned = false;
    let step_deadline = job.timeout.and_then(|t| Instant::now().checked_add(t));
    let step_timer = tokio::time::sleep_until(step_deadline.unwrap_or_else(|| later(DRAIN)));
    let phase_timer = tokio::time::sleep_until(later(DRAIN));
    let stopped = shared.stop.cancelled();
    tokio::pin!(step_timer, phase_timer, stopped);

    loop {
        if exit.is_some() && out.is_none() && err.is_none() {
            break;
        }
        tokio::select! {
            r = read_some(&mut out, obuf), if out.is_some() => {
                on_read(r, &mut out, obuf, &mut logs, Stream::Stdout).await;
            }
            r = read_some(&mut err, ebuf), if err.is_some() => {
                on_read(r, &mut err, ebuf, &mut logs, Stream::Stderr).await;
            }
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                if phase == Phase::Running {
                    group.leader_exited();
                    phase = Phase::Killed;
                    phase_timer.as_mut().reset(later(DRAIN));
                }
            }
            () = &mut step_timer, if step_deadline.is_some() && phase == Phase::Running && exit.is_none() => {
                ended = Some(Ended::TimedOut);
                group.signal(libc::SIGTERM);
                phase = Phase::Terminating;
                phase_timer.as_mut().reset(later(shared.limits.kill_grace));
            }
            () = &mut stopped, if phase == Phase::Running && exit.is_none() => {
                ended = Some(Ended::Stopped);
                group.signal(libc::SIGTERM);
                phase = Phase::Terminating;
                phase_timer.as_mut().reset(later(shared.limits.kill_grace));
            }
            () = &mut phase_timer, if phase != Phase::Running => {
                if phase == Phase::Terminating {
                    group.kill();
                    phase = Phase::Killed;
                } else if exit.is_some() {
                    abandoned = true;
                    break;
                } else {
                    // Killed, and still no exit after DRAIN: in a sandbox a step may have stopped
                    // the spawner (same user, same PID namespace). The sandbox goes as a whole.
                    group.abort();
                }
                phase_timer.as_mut().reset(later(DRAIN));
            }
        }
    }
    // Partial last lines of pipes that were abandoned still reach the log.
    if out.is_some() {
        logs.finish(Stream::Stdout).await;
    }
    if err.is_some() {
        logs.finish(Stream::Stderr).await;
    }
    if abandoned {
        shared
            .system(
                step,
                attempt,
                "stopped reading the step's output: a process outside its process group keeps it open",
            )
            .await;
    }
    drop(group);

    let exit_code = match &exit {
        Some(Ok(Waited::Exited(status))) => status.code(),
        _ => None,
    };
    let (status, message) = match (ended, exit) {
        (Some(Ended::Stopped), _) => (
            StepStatus::Cancelled,
            Some(shared.stop_message().to_string()),
        ),
        (Some(Ended::TimedOut), _) => (
            StepStatus::TimedOut,
            Some(format!(
                "timed out after {}",
                format_duration(job.timeout.unwrap_or_default())
            )),
        ),
        (None, Some(Ok(Waited::Exited(status)))) if status.success() => {
            (StepStatus::Succeeded, None)
        }
        // A sandboxed step's program that could not be executed: said as Gantry's own start
        // of one would be.
        (None, Some(Ok(Waited::NotStarted(e)))) => {
            (StepStatus::Error, Some(spawn_error(spawn, &e)))
        }
        (None, Some(Ok(Waited::Exited(status)))) => {
            let mut message = describe(status);
            if let Some(jail) = &memory
                && status.signal() == Some(libc::SIGKILL)
                && let Some(limit) = jail.new_memory_kill()
            {
                message.push_str(&format!(
                    ": the run went past its memory limit ({}, `run_memory`)",
                    crate::executor::human_bytes(limit)
                ));
            }
            (StepStatus::Failed, Some(message))
        }
        (None, Some(Err(e))) => (
            StepStatus::Error,
            Some(format!("lost track of the step's process: {e}")),
        ),
        (None, None) => (
            StepStatus::Error,
            Some("the step's process vanished".into()),
        ),
    };
    AttemptEnd {
        status,
        exit_code,
        message,
        outputs: Vec::new(),
    }
}

/// An attempt that ended before a process existed.
async fn not_started(shared: &Shared, step: usize, attempt: u32, message: String) -> AttemptEnd {
    shared.started(step, attempt, AttemptHandle::Builtin).await;
    AttemptEnd::new(StepStatus::Error, Some(message))
}

/// A deadline `d` from now, or one far away when that overflows.
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// A step's output pipe.
type Pipe = Box<dyn AsyncRead + Send + Unpin>;

/// A started step process: a child of Gantry, or a process the run's sandbox started.
enum Proc {
    Direct(Child),
    Jailed(Remote),
}

impl Proc {
    fn handle(&self) -> AttemptHandle {
        match self {
            Proc::Direct(child) => AttemptHandle::process(child.id().unwrap_or(0)),
            Proc::Jailed(remote) => AttemptHandle::Sandboxed {
                sandbox: remote.sandbox,
            },
        }
    }

    async fn wait(&mut self) -> io::Result<Waited> {
        match self {
            Proc::Direct(child) => child.wait().await.map(Waited::Exited),
            Proc::Jailed(remote) => remote.wait().await,
        }
    }
}

/// Everything needed to start a step process, wherever it runs.
struct Launch {
    /// A path, or a bare name to look up in `path`.
    program: String,
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    path: Option<OsString>,
    /// `$GANTRY_OUTPUTS`, as the step sees it.
    outputs: PathBuf,
}

/// Starts `launch` as Gantry's own child.
async fn start_direct(launch: Launch) -> io::Result<(Proc, Group, Pipe, Pipe)> {
    let program = resolve(&launch.program, launch.path.as_deref(), &launch.cwd);
    let mut cmd = Command::new(program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = spawn_retrying(&mut cmd).await?;
    drop(cmd);
    let out: Pipe = match child.stdout.take() {
        Some(pipe) => Box::new(pipe),
        None => return Err(io::Error::other("the step's stdout is missing")),
    };
    let err: Pipe = match child.stderr.take() {
        Some(pipe) => Box::new(pipe),
        None => return Err(io::Error::other("the step's stderr is missing")),
    };
    let group = Group::direct(child.id().unwrap_or(0));
    Ok((Proc::Direct(child), group, out, err))
}

/// Starts `launch` inside the run's sandbox, with two fresh pipes as its stdout and stderr.
fn start_jailed(jail: Arc<Jail>, launch: Launch) -> io::Result<(Proc, Group, Pipe, Pipe)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let text = |s: &OsString| s.to_string_lossy().into_owned();
    let env = launch.env.iter().map(|(k, v)| (text(k), text(v))).collect();
    let path = launch.path.as_ref().map(text);
    let command = StepCommand {
        program: launch.program,
        args: launch.args,
        env,
        cwd: launch.cwd,
        path,
        outputs: Some(launch.outputs),
    };
    let remote = jail.spawn(command, [out_w, err_w])?;
    let out: Pipe = Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?);
    let err: Pipe = Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)?);
    let group = Group {
        target: Target::Jailed(jail, remote.id),
        killed: false,
    };
    Ok((Proc::Jailed(remote), group, out, err))
}

/// A pipe, both ends close-on-exec: (read, write).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

enum Target {
    /// The group id on this machine.
    Direct(i32),
    /// A process of the run's sandbox, signalled through its spawner.
    Jailed(Arc<Jail>, u64),
}

/// The process group of a step's process. Dropping it sends SIGKILL to the group, unless that was
/// done already after the leader exited or the grace period ended.
struct Group {
    target: Target,
    killed: bool,
}

impl Group {
    fn direct(pid: u32) -> Group {
        Group {
            target: Target::Direct(i32::try_from(pid).unwrap_or(0)),
            killed: false,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        match &self.target {
            // Never 0 or 1: kill(0) and kill(-1) would hit Gantry's own group or every process.
            Target::Direct(pgid) if *pgid > 1 => {
                // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a
                // group.
                unsafe {
                    libc::kill(-*pgid, signal);
                }
            }
            Target::Direct(_) => {}
            Target::Jailed(jail, id) => jail.signal(*id, signal),
        }
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.killed = true;
    }

    /// After the leader's exit: background processes it left go. A sandboxed step's exit is
    /// reported only once its namespace holds nobody else (`step_ns`), so only a direct group
    /// is signalled.
    fn leader_exited(&mut self) {
        match self.target {
            Target::Direct(_) => self.kill(),
            Target::Jailed(..) => self.killed = true,
        }
    }

    /// Ends the run's whole sandbox from outside (a sandboxed group only): for a spawner that no
    /// longer answers.
    fn abort(&self) {
        if let Target::Jailed(jail, _) = &self.target {
            jail.abort();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.killed {
            self.signal(libc::SIGKILL);
        }
    }
}

/// Reads from a pipe; a closed pipe (None) never completes.
async fn read_some<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn on_read<R>(
    r: io::Result<usize>,
    pipe: &mut Option<R>,
    buf: &[u8],
    logs: &mut Logs<'_>,
    stream: Stream,
) {
    match r {
        Ok(n) if n > 0 => logs.push(stream, &buf[..n.min(buf.len())]).await,
        // End of file, or an unreadable pipe: either way nothing more comes from it.
        _ => {
            *pipe = None;
            logs.finish(stream).await;
        }
    }
}

/// Turns a step's output into masked `Log` events.
struct Logs<'a> {
    shared: &'a Shared,
    step: usize,
    attempt: u32,
    stdout: LineSplitter,
    stderr: LineSplitter,
    watch: Option<SecretWatch>,
}

impl<'a> Logs<'a> {
    fn new(shared: &'a Shared, job: &Job, attempt: u32, outdir: &Path) -> Logs<'a> {
        let max_line = shared.limits.max_line_bytes;
        let files: Vec<(PathBuf, Option<Stamp>)> = job
            .outputs
            .iter()
            .filter(|o| o.secret)
            .map(|o| (outdir.join(&o.name), None))
            .collect();
        Logs {
            shared,
            step: job.index,
            attempt,
            stdout: LineSplitter::new(shared.secrets.clone(), max_line),
            stderr: LineSplitter::new(shared.secrets.clone(), max_line),
            watch: (!files.is_empty()).then_some(SecretWatch { files }),
        }
    }

    fn splitter(&mut self, stream: Stream) -> &mut LineSplitter {
        match stream {
            Stream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    async fn push(&mut self, stream: Stream, bytes: &[u8]) {
        self.refresh();
        let lines = self.splitter(stream).push(bytes);
        self.emit(stream, lines).await;
    }

    async fn finish(&mut self, stream: Stream) {
        self.refresh();
        let lines = self.splitter(stream).finish();
        self.emit(stream, lines).await;
    }

    fn refresh(&mut self) {
        if let Some(watch) = &mut self.watch {
            watch.refresh(self.shared);
        }
    }

    async fn emit(&self, stream: Stream, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let at = Utc::now();
        let mut kept = Vec::with_capacity(lines.len());
        for line in lines {
            if !self
                .shared
                .log_budget(self.step, crate::executor::log_line_cost(&line))
            {
                if self.shared.log_cut(self.step) {
                    // The lines within the budget first, then the line that says the log is cut.
                    self.send(stream, std::mem::take(&mut kept), at).await;
                    let line = self.shared.limits.cut_line();
                    self.shared.system(self.step, self.attempt, &line).await;
                }
                continue;
            }
            kept.push(line);
        }
        self.send(stream, kept, at).await;
    }

    async fn send(&self, stream: Stream, lines: Vec<String>, at: chrono::DateTime<Utc>) {
        if lines.is_empty() {
            return;
        }
        self.shared
            .send(Event::Log {
                step: self.step,
                attempt: self.attempt,
                stream,
                lines,
                at,
            })
            .await;
    }
}

/// A file's length and modification time, to notice rewrites.
type Stamp = (u64, Option<SystemTime>);

/// The secret output files of a running step.
struct SecretWatch {
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl SecretWatch {
    /// Adds the current content of every changed secret output file to the run's secrets. Plain
    /// `stat` calls: only steps that declare secret outputs pay for them.
    fn refresh(&mut self, shared: &Shared) {
        for (path, seen) in &mut self.files {
            // Opened like any output (no symlink followed, never blocking, regular files only),
            // and read within the output limit.
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let Ok((file, size)) = open_output(dir, &name.to_string_lossy()) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            let stamp = (size, meta.modified().ok());
            if *seen == Some(stamp) {
                continue;
            }
            *seen = Some(stamp);
            let max = shared.limits.max_output_bytes;
            if usize::try_from(size).map_or(true, |n| n > max.saturating_add(2)) {
                continue;
            }
            let mut bytes = Vec::new();
            let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
            if io::Read::read_to_end(&mut io::Read::take(file, limit), &mut bytes).is_ok() {
                strip_newline(&mut bytes);
                shared.secrets.add_bytes(&bytes);
            }
        }
    }
}

/// What one attempt starts, with its environment built from nothing.
async fn launch(
    shared: &Shared,
    job: &Job,
    spawn: &Spawn,
    attempt: u32,
    outdir: &Path,
) -> Result<Launch, String> {
    let (program, args) = match &spawn.program {
        Program::Shell(script) => (
            "/bin/sh".to_string(),
            vec![
                "-e".to_string(),
                "-c".to_string(),
                script.clone(),
                format!("gantry-{}", job.name),
            ],
        ),
        Program::Shebang(script) => {
            let dir = shared.scripts.clone();
            let name = job.name.clone();
            let script = script.clone();
            let owner = shared.step_user();
            let path = tokio::task::spawn_blocking(move || {
                write_script(&dir, &name, attempt, &script, owner)
            })
            .await
            .map_err(|e| format!("cannot write the script: {e}"))??;
            (
                shared.inside(&path).to_string_lossy().into_owned(),
                Vec::new(),
            )
        }
        Program::Exec(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err("the command is empty".into());
            };
            (program.clone(), args.to_vec())
        }
    };
    let path = spawn
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| {
            shared
                .base_env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
        });
    let mut env = shared.base_env.clone();
    let outputs = shared.inside(outdir);
    env.push(("GANTRY_OUTPUTS".into(), outputs.clone().into_os_string()));
    env.push((
        "GANTRY_SUMMARY".into(),
        outputs
            .join(super::summary_file(&job.name))
            .into_os_string(),
    ));
    env.push(("GANTRY_STEP".into(), job.name.clone().into()));
    env.extend(spawn.env.iter().map(|(k, v)| (k.into(), v.into())));
    Ok(Launch {
        program,
        args,
        env,
        cwd: shared.inside(&spawn.cwd),
        path,
        outputs,
    })
}

/// The program to execute for `program`, looked up in the step's own `PATH`. Resolving it here
/// rather than in the child keeps `posix_spawn` usable (the standard library falls back to
/// fork+exec when the child's `PATH` differs and a lookup is needed). A relative path with a `/` is
/// relative to the working directory.
pub(super) fn resolve(program: &str, path: Option<&OsStr>, cwd: &Path) -> PathBuf {
    if program.contains('/') {
        return cwd.join(program);
    }
    let Some(path) = path else {
        return PathBuf::from(program);
    };
    for dir in std::env::split_paths(path) {
        let candidate = cwd.join(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// Writes a `#!` script to `scripts/<step>-<attempt>`, executable by its owner only: the step
/// user, who runs it. The folder is not writable by steps (see the run directory's layout).
fn write_script(
    dir: &Path,
    step: &str,
    attempt: u32,
    script: &str,
    owner: Option<StepUser>,
) -> Result<PathBuf, String> {
    let path = dir.join(format!("{step}-{attempt}"));
    let write = || -> io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o700))?;
        if let Some(user) = owner {
            std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))?;
        }
        file.write_all(script.as_bytes())
    };
    write().map_err(|e| format!("cannot write the script {}: {e}", path.display()))?;
    Ok(path)
}

/// Spawns, retrying briefly on ETXTBSY: a script just written may still be open for writing in a
/// child that another thread is forking at the same moment.
async fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    let mut tries = 0u32;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 6 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(2 << tries)).await;
            }
            result => return result,
        }
    }
}

fn spawn_error(spawn: &Spawn, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound && !spawn.cwd.is_dir() {
        return format!(
            "cannot start the step: its working directory {} does not exist",
            spawn.cwd.display()
        );
    }
    let what = match &spawn.program {
        Program::Shell(_) => "/bin/sh".to_string(),
        Program::Shebang(script) => {
            let first = script.lines().next().unwrap_or_default();
            if e.kind() == io::ErrorKind::NotFound {
                return format!("cannot start the script: its interpreter `{first}` was not found");
            }
            format!("the script ({first})")
        }
        Program::Exec(argv) => argv.first().cloned().unwrap_or_default(),
    };
    if e.raw_os_error() == Some(libc::E2BIG) {
        return too_big(&what, spawn);
    }
    match e.kind() {
        io::ErrorKind::NotFound => format!("cannot start `{what}`: program not found"),
        _ => format!("cannot start `{what}`: {e}"),
    }
}

/// Linux's limit on one argument or variable (`NAME=value`), `MAX_ARG_STRLEN`.
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Why the kernel refused to start the step with E2BIG: the step's variable over the limit of
/// one, when there is one (a step's output handed on through `env`, typically), else the total.
fn too_big(what: &str, spawn: &Spawn) -> String {
    let over = spawn
        .env
        .iter()
        .filter(|(k, v)| k.len() + v.len() + 1 >= MAX_ARG_STRLEN)
        .max_by_key(|(_, v)| v.len());
    match over {
        Some((name, value)) => format!(
            "cannot start `{what}`: its variable `{name}` holds {} bytes, and Linux takes at most \
             128 KiB in one variable; hand large values on in a file in the workspace instead",
            value.len()
        ),
        None => format!(
            "cannot start `{what}`: its variables and arguments together are more than Linux \
             takes at the start of a program (about a quarter of the stack limit, 2 MiB by default)"
        ),
    }
}

/// Why a process failed, for people.
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGPIPE => " (SIGPIPE)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        None => format!("ended with {status}"),
    }
}
