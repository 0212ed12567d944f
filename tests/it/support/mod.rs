//! Scaffolding shared by the integration tests: real git servers and repositories on loopback
//! (`git`), a running `gantry serve` with an HTTP client (`server`), and polling helpers.

// Each test module uses the part of this API it needs; the rest is not dead, only unused there.
#![allow(dead_code)]

pub mod argo;
pub mod forges;
pub mod git;
pub mod server;
pub mod webdriver;

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

/// Decodes `%XX` and `+` in a URL query part.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}
