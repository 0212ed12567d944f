//! The command line: argument parsing (clap) and one module per subcommand.
//!
//! Commands print to stdout/stderr and return an exit code; they never call `process::exit`
//! themselves, so `main` stays the only place that ends the process.

pub mod bench;
pub mod validate;

use clap::{Parser, Subcommand};

/// Exit codes shared by every command.
pub mod exit {
    /// Everything worked and everything checked was valid.
    pub const OK: u8 = 0;
    /// The command ran, and found a problem (an invalid file, a failed run).
    pub const FAILURE: u8 = 1;
    /// The command could not run: bad usage, unreadable file.
    pub const USAGE: u8 = 2;
}

const EXAMPLES: &str = "\
Examples:
  gantry validate examples/repo-layout
  gantry validate .gantry/pipelines/provision-postgres.yaml --format json
  gantry bench spec --seconds 3";

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Git-native infrastructure automation pipelines",
    long_about = "Gantry turns the automation scripts in your Git repositories into pipelines: \
typed parameters, variables and secrets, live step logs, and results reported back to the forge.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and report every problem with its line and column.
    #[command(after_help = "\
PATH is a pipeline file, or a directory: then its .gantry/pipelines/*.yaml and *.yml files are checked.
Exit status: 0 when every file is valid (warnings allowed), 1 when any file has an error, 2 when a path
cannot be read.

Examples:
  gantry validate examples/repo-layout
  gantry validate pipeline.yaml other.yml --format json")]
    Validate(validate::Args),
    /// Measure Gantry's own speed and print the figures.
    Bench(bench::Args),
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
