//! Gantry's integration tests: one binary, one module per area (see ARCHITECTURE.md, "Testing").

mod argo;
mod argo_standin;
mod browser;
mod choreo;
mod cli;
mod conformance;
mod contract;
mod disk_full;
mod executor_seam;
mod forge_api;
mod marketplace;
mod metrics;
mod mirror;
mod postgres;
mod run;
mod sandbox;
mod service;
mod spec_examples;
mod spec_fuzz;
mod spec_rules;
mod support;
mod tidy;
mod ui;
mod up;
mod webhooks;
