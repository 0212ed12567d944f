//! The built-in steps: `gantry/git-checkout@v1` and `gantry/marketplace-publish@v1`. They run in
//! Gantry's process (no child, so `StepStarted` carries pid 0) and write their outputs directly.

use std::path::Path;
use std::time::Duration;

use super::Shared;
use super::attempt::AttemptEnd;
use super::prepare::Job;
use crate::executor::{Checkout, Event, Publication, StepStatus};
use crate::source::checkout::{CopyStats, SourceError, checkout_commit, copy_worktree};
use crate::spec::values::format_duration;

const NO_REPOSITORY: &str = "no repository to check out: this run has no repository \
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
    shared.started(job.index, attempt, 0).await;
    let source = shared.checkout.clone();
    // Written as Gantry's user; when steps run as another, the copy becomes theirs.
    let owner = shared.step_user();
    let own = move |copied: Result<CopyStats, SourceError>, dest: &std::fs::File| {
        if let (Ok(_), Some(user)) = (&copied, owner) {
            let _ = super::dirs::own_tree(dest, user);
        }
        copied
    };
    // The destination is opened from the workspace one folder at a time without following a
    // symlink, and the copy goes through that open folder (`/proc/self/fd/N`): an earlier or a
    // parallel step that planted a symlink on the way cannot redirect Gantry's writes.
    let workspace = shared.workspace.clone();
    let rel_path = dest
        .strip_prefix(&workspace)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let open_dest = move || {
        super::dirs::open_beneath(&workspace, &rel_path, owner).map_err(|source| SourceError::Io {
            action: "open the checkout destination",
            path: workspace.join(&rel_path),
            source,
        })
    };
    let (what, mut copy) = match source {
        Checkout::None => {
            return AttemptEnd::new(StepStatus::Error, Some(NO_REPOSITORY.into()));
        }
        Checkout::WorkTree { root } => {
            let what = format!("the work tree {}", root.display());
            (
                what,
                tokio::task::spawn_blocking(move || {
                    let (dir, dest) = super::dirs::through(open_dest()?);
                    own(copy_worktree(&root, &dest), &dir)
                }),
            )
        }
        Checkout::Commit { git_dir, sha } => {
            let what = format!("commit {sha}");
            (
                what,
                tokio::task::spawn_blocking(move || {
                    let (dir, dest) = super::dirs::through(open_dest()?);
                    own(checkout_commit(&git_dir, &sha, &dest), &dir)
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
                Checkout::Commit { sha, .. } => Some(sha.clone()),
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
    shared.started(job.index, attempt, 0).await;
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
