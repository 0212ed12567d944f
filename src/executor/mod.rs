//! Executors: run a `plan::Plan` and stream step updates back. One trait, two implementations: local
//! child processes on this machine, and Argo Workflows on a Kubernetes cluster. Executors see the plan
//! and resolved values only: never forges, events, triggers or the store.
//!
//! Lands with the executor issue; this module holds only its contract for now.
