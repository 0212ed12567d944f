//! The HTTP server (axum): REST API, webhook receivers (verify, persist, answer; slow work happens
//! after the answer) and the web UI. The composition root of the service.
//!
//! Lands with the service issue; this module holds only its contract for now.
