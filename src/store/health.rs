//! Whether the store still works: the first I/O error sled reports, and store calls that do not
//! return.
//!
//! Gantry is crash-only on a store failure. sled keeps no promise about a database after an I/O
//! error in the middle of a write (its log may hold a half-written batch it will only sort out on
//! the next open), so the first such error is recorded here and handed to the process's handler
//! (`gantry serve` logs it once with the path and exits non-zero, and a supervisor restarts it into
//! sled's recovery). Calls that never return (sled spinning in its log reservation, a flush
//! waiting on a dead disk) are seen by `stuck`, which the server's watchdog reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Handler = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
pub struct Health {
    failure: OnceLock<String>,
    handler: OnceLock<Handler>,
    next_op: AtomicU64,
    ops: Mutex<BTreeMap<u64, (Instant, &'static str)>>,
}

/// A store call in progress; dropped when it returns.
pub struct Op<'a> {
    health: &'a Health,
    id: u64,
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        if let Ok(mut ops) = self.health.ops.lock() {
            ops.remove(&self.id);
        }
    }
}

/// Whether a sled error means the database can no longer be trusted to keep what it is given.
pub fn is_fatal(error: &sled::Error) -> bool {
    matches!(
        error,
        sled::Error::Io(_) | sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
    )
}

impl Health {
    /// Records the first failure and calls the handler with it, once.
    pub fn fail(&self, message: String) {
        if self.failure.set(message).is_ok()
            && let (Some(handler), Some(message)) = (self.handler.get(), self.failure.get())
        {
            handler(message);
        }
    }

    /// The first failure, if there was one.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Sets what happens on the first failure; called at once if it already happened.
    pub fn on_failure(&self, handler: Handler) {
        if self.handler.set(handler).is_ok()
            && let (Some(handler), Some(message)) = (self.handler.get(), self.failure.get())
        {
            handler(message);
        }
    }

    /// Marks a store call as in progress until the returned guard drops.
    pub fn op(&self, what: &'static str) -> Op<'_> {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut ops) = self.ops.lock() {
            ops.insert(id, (Instant::now(), what));
        }
        Op { health: self, id }
    }

    /// The oldest store call in progress and how long it has run, if one has run `longer` than
    /// that.
    pub fn stuck(&self, longer: Duration) -> Option<(&'static str, Duration)> {
        let ops = self.ops.lock().ok()?;
        let (started, what) = ops.values().min_by_key(|(t, _)| *t)?;
        let age = started.elapsed();
        (age > longer).then_some((*what, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_first_failure_reaches_the_handler_once() {
        let health = Health::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        health.on_failure(Box::new(move |m| {
            assert!(m.contains("No space left"), "{m}");
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(health.failure(), None);
        health.fail("db: No space left on device".into());
        health.fail("db: a second error".into());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(health.failure(), Some("db: No space left on device"));
    }

    #[test]
    fn a_handler_set_after_the_failure_still_hears_of_it() {
        let health = Health::default();
        health.fail("early".into());
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        health.on_failure(Box::new(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_call_that_does_not_return_is_stuck() {
        let health = Health::default();
        assert!(health.stuck(Duration::ZERO).is_none());
        let op = health.op("flush");
        std::thread::sleep(Duration::from_millis(20));
        let (what, age) = health.stuck(Duration::from_millis(10)).unwrap();
        assert_eq!(what, "flush");
        assert!(age >= Duration::from_millis(20));
        assert!(health.stuck(Duration::from_secs(60)).is_none());
        drop(op);
        assert!(health.stuck(Duration::ZERO).is_none());
    }

    #[test]
    fn io_errors_are_fatal_and_a_missing_tree_is_not() {
        let io = sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(is_fatal(&io));
        assert!(!is_fatal(&sled::Error::CollectionNotFound(
            sled::IVec::from(&b"x"[..])
        )));
    }
}
