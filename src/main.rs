//! The `gantry` binary: parses the command line and hands over to `gantry::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The spawner inside a run's sandbox (see `executor::local::spawner`): no argument parsing,
    // nothing to set up, it starts as fast as it can.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("__spawner") {
        let rest: Vec<String> = args.collect();
        return ExitCode::from(gantry::executor::local::spawner::serve(&rest));
    }
    let cli = gantry::cli::Cli::parse();
    ExitCode::from(gantry::cli::run(cli))
}
