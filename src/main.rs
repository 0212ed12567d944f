//! The `gantry` binary: parses the command line and hands over to `gantry::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = gantry::cli::Cli::parse();
    ExitCode::from(gantry::cli::run(cli))
}
