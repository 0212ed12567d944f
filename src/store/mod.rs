//! The store: the only module that touches the embedded database (sled). Pipelines and versions,
//! runs, step attempts, outputs, log chunks, variables, encrypted secrets, webhook deliveries and the
//! write-back outbox, with a schema version and a flush at every state change that must survive a crash.
//!
//! Lands with the executor issue; this module holds only its contract for now.
