//! Gantry's integration tests: one binary, one module per area (see ARCHITECTURE.md, "Testing").

mod cli;
mod postgres;
mod run;
mod spec_examples;
mod spec_fuzz;
mod spec_rules;
mod tidy;
