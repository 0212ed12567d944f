//! Run orchestration: the run state machine (queued → running → succeeded / failed / cancelled /
//! interrupted), concurrency groups, the global limit, and the durable queue shared by every trigger.
//! Drives an executor through its trait and records every transition in the store.
//!
//! Lands with the executor issue; this module holds only its contract for now.
