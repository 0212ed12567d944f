//! Triggers: from an event (push, pull request, PR comment, schedule tick, manual request) to the
//! pipelines it starts, matched against `on` (branches, paths, types) at the event's commit.
//! Emits run requests; never starts processes and never writes to a forge.
//!
//! Lands with the service and webhook issues; this module holds only its contract for now.
