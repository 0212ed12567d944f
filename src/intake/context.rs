//! What the trigger path shares: the watched repositories, the store, the queue and the outbox,
//! built by `server` at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::catalog::RepoSource;
use crate::forge::Forge;
use crate::report::outbox::Outbox;
use crate::run::queue::Queue;
use crate::store::Store;

/// A watched repository as the service keeps it.
pub struct WatchedRepo {
    /// The forge's id (`owner/repo`), or the source name for plain git.
    pub forge_id: String,
    /// The forge it is on; `None` for plain git.
    pub forge: Option<Forge>,
    pub poll_interval: Duration,
    pub webhook_secret: Option<String>,
    pub source: RepoSource,
    /// Wakes the repository's sync loop (the API's sync endpoint, push webhooks).
    pub wake: Notify,
    /// Held while the mirror is fetched or the catalog reconciled, so the sync loop and webhook
    /// processing never interleave (an older head reconciled last would revert pipelines).
    pub sync_lock: tokio::sync::Mutex<()>,
    /// Whether the sync loop has finished its first sync (reconciled, or failed with its error
    /// recorded): until then `/readyz` says the server is not ready.
    pub synced: std::sync::atomic::AtomicBool,
    /// What its syncs took and how they ended, for `/metrics`.
    pub stats: SyncStats,
}

/// Counts of a repository's syncs (fetch and reconcile), kept in memory for `/metrics`.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Microseconds all syncs took together, and the last one.
    pub micros_total: std::sync::atomic::AtomicU64,
    pub micros_last: std::sync::atomic::AtomicU64,
    /// What the fetches (or first clones) of the syncs that got that far took.
    pub fetches: Durations,
}

/// How many finite buckets `Durations` has: from 1 ms, doubling, to about 33 s.
pub const DURATION_BUCKETS: usize = 16;

/// The upper bound of finite bucket `i` of `Durations`, in seconds.
pub fn duration_bound(i: usize) -> f64 {
    0.001 * f64::from(1u32 << i.min(31))
}

/// Durations counted into fixed buckets (`duration_bound`, then one past the last), kept in
/// memory and read by `/metrics` as a histogram. Lock-free: `observe` is a few atomic adds.
#[derive(Debug, Default)]
pub struct Durations {
    /// Per bucket (not cumulative); the last one holds what is over every bound.
    counts: [std::sync::atomic::AtomicU64; DURATION_BUCKETS + 1],
    micros: std::sync::atomic::AtomicU64,
}

/// What a `Durations` held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// Per bucket, not cumulative: (upper bound in seconds, count); the last bound is
    /// `f64::MAX`, the +Inf bucket.
    pub buckets: Vec<(f64, u64)>,
}

impl Durations {
    pub fn observe(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let seconds = took.as_secs_f64();
        let bucket = (0..DURATION_BUCKETS)
            .find(|&i| seconds <= duration_bound(i))
            .unwrap_or(DURATION_BUCKETS);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> DurationSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = if i < DURATION_BUCKETS {
                    duration_bound(i)
                } else {
                    f64::MAX
                };
                (bound, n.load(Relaxed))
            })
            .collect();
        DurationSnapshot {
            sum_seconds: self.micros.load(Relaxed) as f64 / 1e6,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

impl SyncStats {
    /// Counts one sync that took `took`.
    pub fn record(&self, ok: bool, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if ok { &self.ok } else { &self.failed }.fetch_add(1, Relaxed);
        self.micros_total.fetch_add(micros, Relaxed);
        self.micros_last.store(micros, Relaxed);
    }
}

/// The trigger path's context; cheap to clone.
#[derive(Clone)]
pub struct Intake {
    pub store: Store,
    pub queue: Queue,
    pub repos: Arc<BTreeMap<String, Arc<WatchedRepo>>>,
    pub public_url: String,
    pub outbox: Arc<Outbox>,
    /// Wakes the delivery processor, with the events the webhook receiver read (see `inbox`).
    pub deliveries: Arc<super::Inbox>,
}
