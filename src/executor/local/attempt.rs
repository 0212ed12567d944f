//! One step from its first attempt to its last: retries with backoff, then its outputs.
//!
//! The future that runs a step sends that step's `StepStarted`, `Log`, `AttemptFinished` and
//! `Outputs` events; the scheduler sends `StepFinished` once the future has completed.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::prepare::{Job, Work};
use super::{Shared, builtin, process};
use crate::executor::rules;
use crate::executor::{Event, OutputValues, StepStatus};
use crate::spec::values::format_duration;

/// How a step ended, for the scheduler. Its `Debug` hides the values of secret outputs.
pub(super) struct StepResult {
    pub status: StepStatus,
    pub message: Option<String>,
    /// (name, value, secret), read after the successful last attempt.
    pub outputs: Vec<(String, String, bool)>,
}

impl StepResult {
    pub fn error(message: String) -> StepResult {
        StepResult {
            status: StepStatus::Error,
            message: Some(message),
            outputs: Vec::new(),
        }
    }

    fn cancelled(message: &str) -> StepResult {
        StepResult {
            status: StepStatus::Cancelled,
            message: Some(message.to_string()),
            outputs: Vec::new(),
        }
    }
}

/// How one attempt ended. Its `Debug` hides the values of secret outputs.
pub(super) struct AttemptEnd {
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub outputs: Vec<(String, String, bool)>,
}

impl AttemptEnd {
    pub fn new(status: StepStatus, message: Option<String>) -> AttemptEnd {
        AttemptEnd {
            status,
            exit_code: None,
            message,
            outputs: Vec::new(),
        }
    }
}

impl fmt::Debug for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepResult")
            .field("status", &self.status)
            .field("message", &self.message)
            .field("outputs", &OutputValues(&self.outputs))
            .finish()
    }
}

impl fmt::Debug for AttemptEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptEnd")
            .field("status", &self.status)
            .field("exit_code", &self.exit_code)
            .field("message", &self.message)
            .field("outputs", &OutputValues(&self.outputs))
            .finish()
    }
}

/// Runs every attempt of a step: the future the scheduler polls for one step.
pub(super) async fn run_step(shared: Arc<Shared>, job: Job) -> StepResult {
    let attempts = job.retry.as_ref().map_or(0, |r| r.limit).saturating_add(1);
    let mut attempt = 1u32;
    loop {
        if shared.stop.is_cancelled() {
            return StepResult::cancelled(shared.stop_message());
        }
        let mut end = match &job.work {
            Work::Process(spawn) => {
                let mut end = process::run(&shared, &job, spawn, attempt).await;
                if end.status == StepStatus::Succeeded {
                    match read_outputs(&shared, &job).await {
                        Ok(outputs) => end.outputs = outputs,
                        Err(message) => {
                            end.status = StepStatus::Error;
                            end.message = Some(message);
                        }
                    }
                }
                end
            }
            Work::Checkout { dest, rel } => {
                builtin::checkout(&shared, &job, dest, rel, attempt).await
            }
            Work::Publish(publication) => {
                builtin::publish(&shared, &job, publication, attempt).await
            }
        };
        end.message = end.message.map(|m| shared.secrets.mask(&m));
        let retry_in = rules::retry_after(job.retry.as_ref(), attempt, end.status);
        if end.status != StepStatus::Succeeded
            && let Some(message) = &end.message
        {
            shared.system(job.index, attempt, message).await;
        }
        // The summary of the step's last attempt, read before that attempt is over so that what
        // goes wrong reading it is in the attempt's log.
        let summary = match (&job.work, retry_in) {
            (Work::Process(_), None) => read_summary(&shared, &job).await,
            _ => None,
        };
        if let Some(delay) = retry_in {
            let line = format!(
                "retrying in {} (attempt {} of {attempts})",
                format_duration(delay),
                attempt + 1
            );
            shared.system(job.index, attempt, &line).await;
        }
        shared
            .send(Event::AttemptFinished {
                step: job.index,
                attempt,
                status: end.status,
                exit_code: end.exit_code,
                message: end.message.clone(),
                retry_in,
                at: Utc::now(),
            })
            .await;
        let Some(delay) = retry_in else {
            if let Some(text) = summary {
                shared
                    .send(Event::Summary {
                        step: job.index,
                        text,
                    })
                    .await;
            }
            if end.status == StepStatus::Succeeded && !end.outputs.is_empty() {
                shared
                    .send(Event::Outputs {
                        step: job.index,
                        values: end.outputs.clone(),
                    })
                    .await;
            }
            return StepResult {
                status: end.status,
                message: end.message,
                outputs: end.outputs,
            };
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stop.cancelled() => return StepResult::cancelled(shared.stop_message()),
        }
        attempt += 1;
    }
}

/// Reads the declared outputs of a process step (on a blocking thread: a step controls these
/// files). Secret ones are masked from now on, and a secret value inside a plain output is
/// masked before anything stores it.
async fn read_outputs(shared: &Shared, job: &Job) -> Result<Vec<(String, String, bool)>, String> {
    if job.outputs.is_empty() {
        return Ok(Vec::new());
    }
    let dir = shared.outputs.join(&job.name);
    let max = shared.limits.max_output_bytes;
    let wanted: Vec<(String, bool)> = job
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.secret))
        .collect();
    let read = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(name, secret)| read_output(&dir, &name, max).map(|v| (name, v, secret)))
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| format!("cannot read the outputs: {e}"))??;
    for (_, value, secret) in &read {
        if *secret {
            shared.secrets.add(value);
        }
    }
    Ok(read
        .into_iter()
        .map(|(name, value, secret)| {
            let value = if secret {
                value
            } else {
                shared.secrets.mask(&value)
            };
            (name, value, secret)
        })
        .collect())
}

/// What the step wrote to `$GANTRY_SUMMARY`, masked and cut at `MAX_SUMMARY` bytes; `None`
/// when it wrote nothing (or something that is not a regular file, which the log then says).
async fn read_summary(shared: &Shared, job: &Job) -> Option<String> {
    let dir = if job.outputs.is_empty() {
        shared.outputs.join(super::UNREAD_OUTPUTS)
    } else {
        shared.outputs.join(&job.name)
    };
    let name = super::summary_file(&job.name);
    // Most steps write no summary: one `lstat` of the run's own folder says so here, without
    // the hand-over to a blocking thread and back (a tenth of a millisecond per step, most of
    // what a step cost beyond its process).
    if let Err(e) = std::fs::symlink_metadata(dir.join(&name))
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return None;
    }
    let read = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
        let (file, _) = open_output(&dir, &name)?;
        let mut bytes = Vec::new();
        let cap = u64::try_from(super::MAX_SUMMARY).unwrap_or(u64::MAX) + 1;
        file.take(cap)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read $GANTRY_SUMMARY: {e}"))?;
        Ok(Some(bytes))
    })
    .await;
    let bytes = match read {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return None,
        Ok(Err(message)) => {
            let message = message.replace(
                &format!("output `{}`", super::summary_file(&job.name)),
                "$GANTRY_SUMMARY",
            );
            shared
                .system(job.index, 1, &format!("summary left out: {message}"))
                .await;
            return None;
        }
        Err(_) => return None,
    };
    let cut = bytes.len() > super::MAX_SUMMARY;
    let mut text =
        String::from_utf8_lossy(&bytes[..bytes.len().min(super::MAX_SUMMARY)]).into_owned();
    if cut {
        // A cut through a character leaves a replacement character; drop it.
        text = text.trim_end_matches('\u{FFFD}').to_string();
        text.push_str(&format!(
            "\n\n… (cut at {} KiB)\n",
            super::MAX_SUMMARY / 1024
        ));
    }
    let text = shared.secrets.mask(&text);
    (!text.trim().is_empty()).then_some(text)
}

/// Opens output `name` in `dir` the way a hostile step cannot exploit: the folder and the file are
/// not followed if they are symlinks, the open never blocks (a FIFO), and only a regular file is
/// accepted. Returns the file and its size.
pub(super) fn open_output(dir: &Path, name: &str) -> Result<(std::fs::File, u64), String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let folder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| {
            format!(
                "cannot read output `{name}`: its folder {}: {e}",
                dir.display()
            )
        })?;
    let c_name =
        std::ffi::CString::new(name).map_err(|_| format!("output `{name}` has an invalid name"))?;
    // SAFETY: openat with a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            folder.as_raw_fd(),
            c_name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => {
                format!("output `{name}` was not written to $GANTRY_OUTPUTS/{name}")
            }
            Some(libc::ELOOP) => format!(
                "output `{name}` is a symbolic link; write the value into $GANTRY_OUTPUTS/{name} as a regular file"
            ),
            _ => format!("cannot read output `{name}`: {e}"),
        });
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read output `{name}`: {e}"))?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(format!(
            "output `{name}` is {what}; write the value into $GANTRY_OUTPUTS/{name} as a regular file"
        ));
    }
    Ok((file, meta.len()))
}

/// The value of output `name`: the file `dir/name` without one trailing newline, at most `max`
/// bytes of UTF-8.
pub(super) fn read_output(dir: &Path, name: &str, max: usize) -> Result<String, String> {
    let (file, size) = open_output(dir, name)?;
    // The limit applies to the value: a trailing newline (up to two bytes) does not count.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
    if size > limit {
        return Err(format!(
            "output `{name}` is larger than the limit of {max} bytes"
        ));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(limit.saturating_add(1)).read_to_end(&mut bytes) {
        return Err(format!("cannot read output `{name}`: {e}"));
    }
    strip_newline(&mut bytes);
    if bytes.len() > max {
        return Err(format!(
            "output `{name}` is larger than the limit of {max} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("output `{name}` is not valid UTF-8"))
}

/// Removes one trailing `\n` or `\r\n`.
pub(super) fn strip_newline(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_stripped() {
        for (raw, want) in [
            (&b"v\n"[..], &b"v"[..]),
            (b"v\r\n", b"v"),
            (b"v\n\n", b"v\n"),
            (b"v", b"v"),
            (b"", b""),
        ] {
            let mut bytes = raw.to_vec();
            strip_newline(&mut bytes);
            assert_eq!(bytes, want);
        }
    }
}
