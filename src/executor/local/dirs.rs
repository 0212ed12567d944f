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
    ) -> JoinHandle<()> {
        let dirs = self.clone();
        tokio::task::spawn_blocking(move || {
            for (i, name) in order {
                let made = if stop.is_cancelled() || dirs.done.load(Ordering::Relaxed) {
                    Err("the run stopped".to_string())
                } else {
                    let dir = root.join(&name);
                    fresh_dir(&dir).map_err(|e| format!("cannot prepare {}: {e}", dir.display()))
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
pub(super) fn fresh_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(dir)?;
            std::fs::create_dir(dir)
        }
        other => other,
    }
}
