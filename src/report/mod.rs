//! Reporting: turns run transitions into what the outside world sees: a commit status per pipeline,
//! one pull-request comment edited in place, and the marketplace entry of a publish step. Idempotent:
//! everything is re-rendered from stored state and written through the durable outbox.
//!
//! Lands with the webhook issue; this module holds only its contract for now.
