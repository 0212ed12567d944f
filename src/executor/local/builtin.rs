//! The built-in steps: `gantry/git-checkout@v1` and `gantry/marketplace-publish@v1`. They run in
//! Gantry's process (no child, so `StepStarted` carries pid 0) and write their outputs directly.

use std::path::Path;
use std::time::Duration;

use super::LocalSource;
use super::Shared;
use super::attempt::AttemptEnd;
use super::prepare::Job;
use crate::executor::AttemptHandle;
use crate::executor::{Event, Publication, StepStatus};
use crate::source::checkout::{CopyStats, SourceError, checkout_commit, copy_worktree};
use crate::spec::values::format_duration;

pub(super) const NO_REPOSITORY: &str = "no repository to check out: this run has no repository \
    (run `gantry run` inside a git work tree, or trigger the pipeline from a watched repository)";

/// Copies the run's repository into `dest` (`rel` inside the workspace) on a blocking thread.
///
/// A copy cannot be interrupted: on a timeout or a stop the attempt still waits for it to finish,
/// so that nothing writes into the workspace once the step is over.
pub(super) async fn checkout(
    shared: &Shared,
    job: &Job,
    dest: &Path,
    rel: &str,
    attempt: u32,
) -> AttemptEnd {
    shared
        .started(job.index, attempt, AttemptHandle::Builtin)
        .await;
    let source = shared.checkout.clone();
    // The copy is written into a staging folder of Gantry's own inside the run directory, which
    // no step can write to (nor, when steps run as another user, enter); it becomes the step
    // user's there, and is then moved into the workspace entry by entry with `renameat` on
    // folders opened without following symlinks. A step that planted a symlink on the way, or
    // swaps folders while the copy runs, can never redirect one of Gantry's writes.
    let owner = shared.step_user();
    let stage = shared
        .run_dir
        .join(format!(".checkout-{}-{attempt}", job.index));
    let workspace = shared.workspace.clone();
    let rel_path = dest
        .strip_prefix(&workspace)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let land = move |copy: &dyn Fn(&Path) -> Result<CopyStats, SourceError>| {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io {
                action,
                path,
                source,
            }
        };
        super::dirs::fresh_private_dir(&stage).map_err(io("create the staging folder", &stage))?;
        let result = (|| {
            let stats = copy(&stage)?;
            let staged = super::dirs::open_beneath(&stage, Path::new(""), None)
                .map_err(io("open the staging folder", &stage))?;
            if let Some(user) = owner {
                super::dirs::own_tree(&staged, user, false)
                    .map_err(io("give the checkout to the step user", &stage))?;
            }
            let dest = super::dirs::open_beneath(&workspace, &rel_path, owner).map_err(io(
                "open the checkout destination",
                &workspace.join(&rel_path),
            ))?;
            super::dirs::merge_into(&staged, &dest)
                .map_err(io("move the checkout into", &workspace.join(&rel_path)))?;
            Ok(stats)
        })();
        let _ = std::fs::remove_dir_all(&stage);
        result
    };
    let (what, mut copy) = match source {
        LocalSource::Missing(why) => {
            return AttemptEnd::new(StepStatus::Error, Some(why));
        }
        LocalSource::WorkTree(root) => {
            let what = format!("the work tree {}", root.display());
            (
                what,
                tokio::task::spawn_blocking(move || land(&|to| copy_worktree(&root, to))),
            )
        }
        LocalSource::Commit { git_dir, sha } => {
            let what = format!("commit {sha}");
            (
                what,
                tokio::task::spawn_blocking(move || {
                    land(&|to| checkout_commit(&git_dir, &sha, to))
                }),
            )
        }
    };
    let timer = tokio::time::sleep(job.timeout.unwrap_or(Duration::MAX));
    let ended = tokio::select! {
        joined = &mut copy => return copied(shared, job, rel, attempt, &what, joined).await,
        () = timer, if job.timeout.is_some() => AttemptEnd::new(
            StepStatus::TimedOut,
            Some(format!("timed out after {}", format_duration(job.timeout.unwrap_or_default()))),
        ),
        () = shared.stop.cancelled() => {
            AttemptEnd::new(StepStatus::Cancelled, Some(shared.stop_message().into()))
        }
    };
    // The copy cannot be interrupted. Wait for it, so that nothing writes into the run directory
    // after the step (or the run) is over.
    shared
        .system(
            job.index,
            attempt,
            "waiting for the checkout to finish: a copy cannot be interrupted",
        )
        .await;
    let _ = copy.await;
    ended
}

/// The end of an attempt whose copy finished.
async fn copied(
    shared: &Shared,
    job: &Job,
    rel: &str,
    attempt: u32,
    what: &str,
    joined: Result<Result<CopyStats, SourceError>, tokio::task::JoinError>,
) -> AttemptEnd {
    match joined {
        Ok(Ok(stats)) => {
            let line = format!(
                "checked out {what} into {rel}: {} files, {} bytes",
                stats.files, stats.bytes
            );
            shared.system(job.index, attempt, &line).await;
            let sha = shared.git_sha.clone().or_else(|| match &shared.checkout {
                LocalSource::Commit { sha, .. } => Some(sha.clone()),
                _ => None,
            });
            let mut end = AttemptEnd::new(StepStatus::Succeeded, None);
            end.outputs = vec![
                ("sha".into(), sha.unwrap_or_default(), false),
                ("path".into(), rel.to_string(), false),
            ];
            end
        }
        Ok(Err(e)) => AttemptEnd::new(StepStatus::Error, Some(format!("checkout failed: {e}"))),
        Err(e) => AttemptEnd::new(
            StepStatus::Error,
            Some(format!("checkout failed: the copy ended abnormally: {e}")),
        ),
    }
}

/// Hands the resolved resource to the run (`Published`) and outputs its name and version.
pub(super) async fn publish(
    shared: &Shared,
    job: &Job,
    publication: &Publication,
    attempt: u32,
) -> AttemptEnd {
    shared
        .started(job.index, attempt, AttemptHandle::Builtin)
        .await;
    shared
        .send(Event::Published {
            step: job.index,
            publication: publication.clone(),
        })
        .await;
    // `system` masks the line, in case a name or version came from a secret output.
    let line = format!("published {} {}", publication.name, publication.version);
    shared.system(job.index, attempt, &line).await;
    let mut end = AttemptEnd::new(StepStatus::Succeeded, None);
    end.outputs = vec![
        ("name".into(), publication.name.clone(), false),
        ("version".into(), publication.version.clone(), false),
    ];
    end
}
