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
