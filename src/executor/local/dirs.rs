//! Output folders made ahead of time: `outputs/<step>/` for every step that declares outputs,
//! created on one blocking thread while steps run. Steps that declare none share `outputs/.unread`
//! (made with the run directory), since nothing is read from it.
//!
//! On a journaling file system a `mkdir` costs about as much as a quarter of starting `sh -c true`;
//! made in line it would sit on the critical path of every step. One thread per run creates them
//! all, in the order the steps can start, and a step's first attempt waits only until its own
//! folder exists (normally long since). Later attempts empty the folder themselves.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use super::sandbox::StepUser;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Whether each step's output folder has been made, and how that went.
pub(super) struct OutputDirs {
    made: Vec<OnceLock<Result<(), String>>>,
    notify: Notify,
    /// Set when the run is over: folders not made by then are not needed.
    done: AtomicBool,
}

impl OutputDirs {
    pub fn new(steps: usize) -> OutputDirs {
        OutputDirs {
            made: (0..steps).map(|_| OnceLock::new()).collect(),
            notify: Notify::new(),
            done: AtomicBool::new(false),
        }
    }

    /// Starts making the folders `root/<name>` on a blocking thread, in the order given as (step,
    /// name). Once the run stops, the folders not made yet are reported as not made. The run
    /// awaits the returned handle (after `finish`) so that nothing writes into its directory once
    /// `execute` has returned.
    pub fn start(
        self: &Arc<Self>,
        root: PathBuf,
        order: Vec<(usize, String)>,
        stop: CancellationToken,
        owner: Option<StepUser>,
    ) -> JoinHandle<()> {
        let dirs = self.clone();
        tokio::task::spawn_blocking(move || {
            for (i, name) in order {
                let made = if stop.is_cancelled() || dirs.done.load(Ordering::Relaxed) {
                    Err("the run stopped".to_string())
                } else {
                    let dir = root.join(&name);
                    fresh_dir(&dir, owner)
                        .map_err(|e| format!("cannot prepare {}: {e}", dir.display()))
                };
                if let Some(slot) = dirs.made.get(i) {
                    let _ = slot.set(made);
                }
                dirs.notify.notify_waiters();
            }
        })
    }

    /// The run is over: stop making folders.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Waits until step `i`'s folder has been made.
    pub async fn ready(&self, i: usize) -> Result<(), String> {
        let Some(slot) = self.made.get(i) else {
            return Err(format!("no output folder for step {i}"));
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a folder made in between still wakes us.
            notified.as_mut().enable();
            if let Some(made) = slot.get() {
                return made.clone();
            }
            notified.await;
        }
    }
}

/// An empty directory at `dir`, emptied if it exists.
pub(super) fn fresh_dir(dir: &Path, owner: Option<StepUser>) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Never follows a symlink: one planted in its place is removed, not its target.
            std::fs::remove_dir_all(dir)?;
            std::fs::create_dir(dir)?;
        }
        other => other?,
    }
    own(dir, owner)
}

/// Gives `dir` (not a symlink) to the step user, when steps run as one.
pub(super) fn own(dir: &Path, owner: Option<StepUser>) -> io::Result<()> {
    match owner {
        Some(user) => std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid)),
        None => Ok(()),
    }
}

/// Gives everything under the open folder `root` (a checkout) to the step user, never following a symlink: every
/// folder is opened from `root` one component at a time with `O_NOFOLLOW`, so a step that swaps a
/// folder for a symlink while this runs only makes that folder fail to open.
pub(super) fn own_tree(
    root: &std::fs::File,
    owner: StepUser,
    include_root: bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let open_dir = |rel: &Path| -> io::Result<std::fs::File> {
        let mut dir = root.try_clone()?;
        for part in rel.components() {
            dir = open_nofollow(Some(&dir), part.as_os_str().as_bytes())?;
        }
        Ok(dir)
    };
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let Ok(dir) = open_dir(&rel) else { continue };
        if include_root || !rel.as_os_str().is_empty() {
            // SAFETY: fchown on a descriptor this function owns.
            unsafe {
                libc::fchown(dir.as_raw_fd(), owner.uid, owner.gid);
            }
        }
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        for entry in listing.flatten() {
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(rel.join(&name));
            } else if let Ok(c_name) = std::ffi::CString::new(name.as_bytes()) {
                // SAFETY: fchownat with a valid directory descriptor and a NUL-terminated name.
                unsafe {
                    libc::fchownat(
                        dir.as_raw_fd(),
                        c_name.as_ptr(),
                        owner.uid,
                        owner.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Opens the folder `name` (in `parent`, or a path when `parent` is `None`) without following a
/// symlink at its last component.
fn open_nofollow(parent: Option<&std::fs::File>, name: &[u8]) -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c_name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let at = parent.map_or(libc::AT_FDCWD, |p| p.as_raw_fd());
    // SAFETY: openat with a valid descriptor (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            at,
            c_name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Opens `root/rel` folder by folder without following symlinks, creating (and giving to
/// `owner`) the folders that are missing.
pub(super) fn open_beneath(
    root: &Path,
    rel: &Path,
    owner: Option<StepUser>,
) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let mut dir = open_nofollow(None, root.as_os_str().as_bytes())?;
    for part in rel.components() {
        let name = part.as_os_str().as_bytes();
        dir = match open_nofollow(Some(&dir), name) {
            Ok(next) => next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let c_name =
                    std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
                // SAFETY: mkdirat/fchownat with a valid directory descriptor and a NUL-terminated
                // name.
                unsafe {
                    if libc::mkdirat(dir.as_raw_fd(), c_name.as_ptr(), 0o755) != 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::AlreadyExists {
                            return Err(e);
                        }
                    }
                    if let Some(user) = owner {
                        libc::fchownat(
                            dir.as_raw_fd(),
                            c_name.as_ptr(),
                            user.uid,
                            user.gid,
                            libc::AT_SYMLINK_NOFOLLOW,
                        );
                    }
                }
                open_nofollow(Some(&dir), name)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(dir)
}

/// A new, empty folder of Gantry's own (mode 0700) at `dir`, replacing whatever was there.
pub(super) fn fresh_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir)?,
        Ok(_) => std::fs::remove_file(dir)?,
        Err(_) => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Moves every entry of the folder `from` into the folder `to`, both open descriptors: an entry
/// replaces a file or symlink of the same name, and is merged into a folder of the same name.
/// Every step is `renameat`/`unlinkat`/`openat` on a single name relative to an open folder, so
/// nothing is ever resolved through a path a step could have changed.
pub(super) fn merge_into(from: &std::fs::File, to: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let mut pending = vec![(from.try_clone()?, to.try_clone()?)];
    while let Some((src, dst)) = pending.pop() {
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", src.as_raw_fd()))?;
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name();
            let c_name =
                std::ffi::CString::new(name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
            let is_dir = entry.file_type()?.is_dir();
            // SAFETY: renameat with valid descriptors and a NUL-terminated name.
            let moved = unsafe {
                libc::renameat(
                    src.as_raw_fd(),
                    c_name.as_ptr(),
                    dst.as_raw_fd(),
                    c_name.as_ptr(),
                )
            };
            if moved == 0 {
                continue;
            }
            let e = io::Error::last_os_error();
            let there_is_dir = open_nofollow(Some(&dst), name.as_bytes());
            match (is_dir, there_is_dir) {
                // A folder onto a folder: merge them.
                (true, Ok(existing)) => {
                    let inner = open_nofollow(Some(&src), name.as_bytes())?;
                    pending.push((inner, existing));
                }
                // Anything onto a file or symlink: replace it (the name, not what it points at).
                (_, Err(_))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EISDIR)
                            | Some(libc::ENOTDIR)
                            | Some(libc::EEXIST)
                            | Some(libc::ENOTEMPTY)
                    ) =>
                {
                    // SAFETY: unlinkat/renameat on valid descriptors and a NUL-terminated name.
                    unsafe {
                        if libc::unlinkat(dst.as_raw_fd(), c_name.as_ptr(), 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        if libc::renameat(
                            src.as_raw_fd(),
                            c_name.as_ptr(),
                            dst.as_raw_fd(),
                            c_name.as_ptr(),
                        ) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                (false, Ok(_)) => {
                    return Err(io::Error::other(format!(
                        "`{}` is a folder in the workspace and a file in the checkout",
                        name.to_string_lossy()
                    )));
                }
                (_, Err(_)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Why a run's files must stop growing, if they must: past `limits.run_disk` bytes under
/// `run_dir` (counted as the file system allocates them, symlinks not followed, the walk ending
/// as soon as the cap is passed), or the file system holding them below `limits.keep_free`.
pub(super) fn over_disk(run_dir: &Path, limits: &crate::executor::Limits) -> Option<String> {
    use crate::executor::human_bytes;
    use std::os::unix::fs::MetadataExt;
    if limits.keep_free > 0
        && let Ok((free, _)) = disk_space(run_dir)
        && free < limits.keep_free
    {
        return Some(format!(
            "the file system of its files has {} free, less than the {} that must stay free there",
            human_bytes(free),
            human_bytes(limits.keep_free)
        ));
    }
    let cap = limits.run_disk?;
    let mut total: u64 = 0;
    let mut folders = vec![run_dir.to_path_buf()];
    while let Some(dir) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if total > cap {
                return Some(format!(
                    "its files take more than {} (`run_disk`)",
                    human_bytes(cap)
                ));
            }
            if meta.is_dir() {
                folders.push(entry.path());
            }
        }
    }
    None
}

/// The space of the file system that holds `path`: (bytes an unprivileged writer may still use,
/// its size), from `statvfs`. Also the store's free-space reserve reads it (`store/space.rs`).
#[allow(clippy::unnecessary_cast)] // the field types are 32 bits wide on some targets
pub fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated string and `out` points to a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), out.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `out`.
    let s = unsafe { out.assume_init() };
    let block = s.f_frsize as u64;
    Ok((
        (s.f_bavail as u64).saturating_mul(block),
        (s.f_blocks as u64).saturating_mul(block),
    ))
}
