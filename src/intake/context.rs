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
