//! Triggers: from an event (push, pull request, PR comment, schedule tick, manual request) to the
//! pipelines it starts, matched against `on` (branches, paths, types) at the event's commit.
//! Emits run requests; never starts processes and never writes to a forge.
//!
//! `schedule.rs` decides which schedule ticks are due; `events.rs` which pipelines a push or a
//! pull request starts at its commit, and what a `/gantry` comment asks for.

pub mod events;
pub mod schedule;
