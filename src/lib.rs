//! Gantry: infrastructure automation pipelines kept in Git.
//!
//! The modules are listed in the order data flows through them: pipeline files are read and
//! validated (`spec`) and planned (`plan`); events arrive from sources, webhooks and schedules
//! (`source`, `trigger`), become runs (`run`), are executed (`executor`), recorded (`store`) and
//! reported back (`report`, `forge`, `marketplace`); `intake` carries a stored webhook delivery
//! through them; `views` reads what pages show. `server` and `cli` are the entry points.
//! ARCHITECTURE.md has the codemap and the rules for what may import what.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod executor;
pub mod forge;
pub mod intake;
pub mod marketplace;
pub mod plan;
pub mod report;
pub mod run;
pub mod server;
pub mod source;
pub mod spec;
pub mod store;
pub mod trigger;
pub mod views;
