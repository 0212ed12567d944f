//! The outbox worker: sends stored write-back jobs to their forges until each is delivered or
//! given up.
//!
//! A job leaves the store only when its write succeeded (or failed for good), so a crash or a
//! restart resends what was not confirmed; statuses and comment edits are idempotent on every
//! forge, so a resend is harmless. Retries wait `base * 2^attempt` with ±25% jitter (capped at five
//! minutes), or what the forge asked for (`Retry-After`, `X-RateLimit-Reset`) when that is longer.
//! After `give_up` since the first attempt, or on an error that retrying cannot fix (a 4xx other
//! than rate limiting), the job is dropped and the reason recorded on its run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::forge::api::{ApiError, ClientConfig, ForgeClient};
use crate::store::{OutboxAction, OutboxJob, Store};

/// The outbox worker's settings and its forge clients.
pub struct Outbox {
    store: Store,
    public_url: String,
    configs: BTreeMap<String, ClientConfig>,
    clients: Mutex<BTreeMap<String, ForgeClient>>,
    /// Wakes the worker when a job is stored.
    wake: Notify,
    pub give_up: Duration,
    pub base_delay: Duration,
    /// Writes that failed, by forge and HTTP status (`none` when no answer came), for
    /// `/metrics`.
    failures: std::sync::Mutex<BTreeMap<(String, String), u64>>,
}

/// Stored jobs read at a time.
const PAGE_BYTES: usize = 1 << 20;

impl Outbox {
    /// `configs`: the forge client of each watched repository that reports (by source name).
    pub fn new(
        store: Store,
        public_url: String,
        configs: BTreeMap<String, ClientConfig>,
    ) -> Outbox {
        Outbox {
            store,
            public_url,
            configs,
            clients: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            give_up: Duration::from_secs(3600),
            base_delay: Duration::from_secs(1),
            failures: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Writes that failed so far: (forge, HTTP status or `none`, count).
    pub fn failure_counts(&self) -> Vec<(String, String, u64)> {
        self.failures
            .lock()
            .map(|f| {
                f.iter()
                    .map(|((forge, code), n)| (forge.clone(), code.clone(), *n))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn count_failure(&self, source: &str, error: &ApiError) {
        let forge = self
            .configs
            .get(source)
            .map_or("unknown", |c| c.forge.as_str())
            .to_string();
        let code = error
            .status
            .map_or_else(|| "none".to_string(), |s| s.to_string());
        if let Ok(mut f) = self.failures.lock() {
            *f.entry((forge, code)).or_insert(0) += 1;
        }
    }

    /// Tells the worker a job is waiting.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Whether a source reports to a forge at all.
    pub fn reports(&self, source: &str) -> bool {
        self.configs.contains_key(source)
    }

    /// The client of a source, built on first use (building one may call the forge).
    pub async fn client(&self, source: &str) -> Result<ForgeClient, ApiError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(source) {
            return Ok(c.clone());
        }
        let Some(config) = self.configs.get(source) else {
            return Err(ApiError {
                status: None,
                retry_after: None,
                retryable: false,
                message: format!("`{source}` has no forge to report to (provider git)"),
            });
        };
        let client = ForgeClient::new(config.clone()).await?;
        clients.insert(source.to_string(), client.clone());
        Ok(client)
    }

    /// Sends due jobs until `stop` is cancelled.
    ///
    /// Jobs are read a page at a time (`PAGE_BYTES`).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let mut next: Option<chrono::DateTime<Utc>> = None;
            // Page by page, each bounded by bytes: a large backlog is streamed from the store.
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let (jobs, more) = match self.store.outbox_page(cursor.as_deref(), PAGE_BYTES) {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!("outbox: {e}");
                        break;
                    }
                };
                for job in jobs {
                    if stop.is_cancelled() {
                        return;
                    }
                    if job.next_at > Utc::now() {
                        next = Some(next.map_or(job.next_at, |n| n.min(job.next_at)));
                        continue;
                    }
                    self.send(job).await;
                }
                match more {
                    Some(k) => cursor = Some(k),
                    None => break,
                }
            }
            let wait = next
                .and_then(|n| (n - Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send(&self, job: OutboxJob) {
        let result = match self.client(&job.source).await {
            Ok(client) => self.write(&client, &job).await,
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(()) => self.store.remove_outbox(&job),
            Err(e) => {
                self.count_failure(&job.source, &e);
                self.failed(job, e)
            }
        };
        if let Err(e) = outcome {
            tracing::warn!("outbox: {e}");
        }
    }

    async fn write(&self, client: &ForgeClient, job: &OutboxJob) -> Result<(), ApiError> {
        match &job.action {
            OutboxAction::Status {
                sha,
                context,
                state,
                description,
                target_url,
            } => {
                let mut state =
                    super::parse_state(state).unwrap_or(crate::forge::StatusState::Error);
                let mut description = description.clone();
                // The run's state now, not when the job was stored: jobs of one run may be
                // stored out of order by different threads, and an older state must never be
                // the last one sent.
                if let Some(run_id) = &job.run_id
                    && let Ok(Some(run)) = self.store.get_run(run_id)
                {
                    let (now, text) = super::run_status(&run);
                    state = now;
                    description = super::comment::secrets_of(&self.store, &run).mask(&text);
                }
                client
                    .set_status(sha, context, state, &description, target_url)
                    .await
            }
            OutboxAction::Reply { pr, body } => client.create_comment(*pr, body).await.map(|_| ()),
            OutboxAction::PrComment { pr } => self.write_comment(client, &job.source, *pr).await,
        }
    }

    /// Creates Gantry's comment on a pull request or edits it in place.
    async fn write_comment(
        &self,
        client: &ForgeClient,
        source: &str,
        pr: u64,
    ) -> Result<(), ApiError> {
        let store_err = |e: crate::store::StoreError| ApiError {
            status: None,
            retry_after: None,
            retryable: true,
            message: e.to_string(),
        };
        let Some(mut record) = self.store.get_pr(source, pr).map_err(store_err)? else {
            return Ok(());
        };
        let body = super::comment::render(&self.store, &record, &self.public_url, client.forge())
            .map_err(store_err)?;
        let known = match &record.comment_id {
            Some(id) => Some(id.clone()),
            // The store lost the id (or never had it): look for the marker first, so a retry
            // after a lost answer never makes a second comment.
            None => client.find_comment(pr, super::comment::MARKER).await?,
        };
        let id = match known {
            Some(id) => match client.edit_comment(pr, &id, &body).await {
                Ok(()) => id,
                // Deleted on the forge, or not ours to edit (someone else's comment carrying the
                // marker): make a new one.
                Err(e) if matches!(e.status, Some(403 | 404)) => {
                    client.create_comment(pr, &body).await?
                }
                Err(e) => return Err(e),
            },
            None => client.create_comment(pr, &body).await?,
        };
        if record.comment_id.as_deref() != Some(id.as_str()) {
            // Re-read: the record may have changed while the comment was written.
            if let Some(latest) = self.store.get_pr(source, pr).map_err(store_err)? {
                record = latest;
            }
            record.comment_id = Some(id);
            self.store.put_pr(&record).map_err(store_err)?;
        }
        Ok(())
    }

    fn delay(&self, attempts: u32, asked: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempts.min(16)))
            .min(Duration::from_secs(300));
        let mut noise = [0u8; 2];
        let _ = getrandom::getrandom(&mut noise);
        // ±25%, from 16 random bits.
        let factor = 0.75 + f64::from(u16::from_le_bytes(noise)) / f64::from(u16::MAX) * 0.5;
        let jittered = exp.mul_f64(factor);
        asked.map_or(jittered, |a| a.max(jittered))
    }

    fn failed(&self, mut job: OutboxJob, error: ApiError) -> Result<(), crate::store::StoreError> {
        let now = Utc::now();
        let elapsed = (now - job.first_at).to_std().unwrap_or_default();
        if error.retryable && elapsed < self.give_up {
            job.attempts += 1;
            let wait = self.delay(job.attempts, error.retry_after);
            job.next_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
            job.last_error = Some(error.to_string());
            return self.store.retry_outbox(&job);
        }
        let why = if error.retryable {
            format!(
                "gave up after {} attempts over {}s: {error}",
                job.attempts + 1,
                elapsed.as_secs()
            )
        } else {
            format!("not retried: {error}")
        };
        tracing::warn!("write-back to {}: {why}", job.source);
        if let Some(run_id) = &job.run_id {
            let what = match &job.action {
                OutboxAction::Status { context, state, .. } => {
                    format!("commit status {context}={state}")
                }
                OutboxAction::PrComment { pr } => format!("comment on PR #{pr}"),
                OutboxAction::Reply { pr, .. } => format!("reply on PR #{pr}"),
            };
            let _ = self.store.update_run(run_id, |r| {
                r.writeback_error = Some(format!("{what}: {why}"));
            });
        }
        self.store.remove_outbox(&job)
    }
}
