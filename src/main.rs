//! The `gantry` binary: parses the command line and hands over to `gantry::cli`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the webhook intake allocates and frees a body-sized buffer
/// or two per delivery on every worker thread, where glibc's arenas spent ~9% of the server's
/// CPU (`gantry bench webhooks`, see ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The spawner inside a run's sandbox (see `executor::local::spawner`): no argument parsing,
    // nothing to set up, it starts as fast as it can.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("__spawner") {
        let rest: Vec<String> = args.collect();
        return ExitCode::from(gantry::executor::local::spawner::serve(&rest));
    }
    let cli = gantry::cli::Cli::parse();
    let code = gantry::cli::run(cli);
    // The control groups of the last sandboxes are removed on a thread of their own (the kernel
    // empties them a little after the sandbox is reaped): none is left behind by an exit.
    gantry::executor::local::cgroup::settle(std::time::Duration::from_secs(10));
    ExitCode::from(code)
}
