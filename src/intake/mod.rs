//! The trigger path after HTTP: stored webhook deliveries processed into runs and replies (push,
//! pull request, comment), the per-repository sync loop and the schedule loop.
//!
//! `server` builds an `Intake` (the watched repositories, the store, the queue, the outbox) at
//! start and hands it to the loops here; nothing here knows HTTP. Every run and reply a delivery
//! makes carries an idempotency key derived from the delivery (`<forge>/<delivery id>/run/<file path>`,
//! `<forge>/<delivery id>/reply`), stored in the same transaction as the run or the outbox job:
//! processing a delivery again (after a crash, or a retry after a transient error) makes only
//! what the earlier attempts did not.

mod comment;
mod context;
mod deliveries;
mod inbox;
mod pull_request;
mod push;
mod run_at;
mod schedule;
mod sync;

pub use context::{DurationSnapshot, Durations, Intake, WatchedRepo};
pub use deliveries::process_loop;
pub use inbox::Inbox;
pub use schedule::schedule_loop;
pub use sync::sync_loop;
