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
