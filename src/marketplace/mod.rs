//! The internal marketplace: resources published by pipelines (connection details and per-environment
//! credentials, secrets encrypted), found by application developers who create connections to them.
//!
//! Lands with a later issue; `gantry/marketplace-publish@v1` is validated by `spec` already.
