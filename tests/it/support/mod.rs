//! Scaffolding shared by the integration tests: real git servers and repositories on loopback
//! (`git`), a running `gantry serve` with an HTTP client (`server`), and polling helpers.

// Each test module uses the part of this API it needs; the rest is not dead, only unused there.
#![allow(dead_code)]

pub mod forges;
pub mod git;
pub mod server;

use std::thread;
use std::time::{Duration, Instant};

/// How often the polling helpers look again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `condition` until it holds or `timeout` has passed (it is checked once more at the end);
/// returns whether it held. Use with `assert!` and a message saying what was awaited.
pub fn wait_for(mut condition: impl FnMut() -> bool, timeout: Duration) -> bool {
    poll(|| condition().then_some(()), timeout).is_some()
}

/// Polls `probe` until it returns `Some` or `timeout` has passed (it is tried once more at the
/// end); returns the value, e.g. the first state of a run that is finished.
pub fn poll<T>(mut probe: impl FnMut() -> Option<T>, timeout: Duration) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_EVERY);
    }
}

/// A run request for a pipeline given as text, as `gantry run FILE` makes one (source `file`,
/// manual, no repository), with `limits`. Panics on an invalid pipeline.
pub fn file_run(
    text: &str,
    path: &str,
    limits: gantry::executor::Limits,
) -> gantry::run::RunRequest {
    let checked = gantry::spec::check(text);
    let pipeline = checked
        .pipeline
        .unwrap_or_else(|| panic!("{path}: {:?}", checked.diagnostics));
    gantry::run::RunRequest {
        source: "file".into(),
        pipeline,
        text: text.into(),
        path: path.into(),
        params: Default::default(),
        var_overrides: Default::default(),
        trigger: gantry::store::Trigger {
            kind: "manual".into(),
            detail: None,
        },
        git: None,
        version: None,
        checkout: gantry::executor::Checkout::None,
        limits,
        keep_run_dir: false,
    }
}
