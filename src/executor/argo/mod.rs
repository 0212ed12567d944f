//! The Argo Workflows side of execution: a compiler from a [`Plan`](crate::plan::Plan) to an
//! `argoproj.io/v1alpha1` Workflow (`compile.rs`), which `gantry render --argo` prints.
//!
//! The compiled Workflow is one `dag` template with a task per step (sequences and parallel
//! groups are already `needs` in the plan) and a template per step: a `script` template for
//! scripts (the interpreter always in `command`, so the emissary executor never asks a registry
//! for an image's entrypoint), a `container` template for commands. Steps share one workspace, a
//! volume claim of the Workflow mounted at `/workspace`; each step's `$GANTRY_OUTPUTS` is an
//! `emptyDir` at `/gantry/outputs`, read back by Argo through `outputs.parameters[].valueFrom.path`
//! (Argo strips one trailing newline, as Gantry does).
//!
//! Secrets never enter the Workflow: every secret the run uses is a key of one Kubernetes Secret
//! per run, read by `env[].valueFrom.secretKeyRef`; a value that mixes a secret with text is
//! assembled by Kubernetes' own `$(VAR)` expansion from a hidden variable. Secret *outputs* would
//! land in `status.nodes[].outputs` in plaintext, so each is sealed in its pod with a one-time pad
//! from the run's Secret and opened by Gantry, and by the steps that read it (ARCHITECTURE.md,
//! "Secret outputs on Argo").

pub mod client;
pub mod compile;
mod executor;

pub use executor::{ArgoExecutor, ArgoOptions};
