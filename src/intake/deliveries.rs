//! The delivery processor: stored deliveries processed in arrival order, retried with backoff
//! after a transient failure.

use tokio_util::sync::CancellationToken;

use chrono::Utc;

use super::Intake;
use super::comment::{CommentEvent, on_comment};
use super::pull_request::{PrEvent, on_pull_request};
use super::push::on_push;
use super::run_at::Delivery;
use crate::forge::webhook;
use crate::forge::{Forge, ForgeEvent};
use crate::store::DeliveryRecord;

/// Failed attempts before a delivery is given up (with the backoff below, about an hour).
const DELIVERY_ATTEMPTS: u32 = 12;

/// Processes stored deliveries in arrival order until `stop`. A failed attempt (the repository
/// could not be fetched, the forge did not answer) keeps the delivery queued and tries again with
/// backoff, also when the attempt queued some of its runs: every run and reply carries the
/// delivery's idempotency key, so the next attempt makes only what is missing. After
/// `DELIVERY_ATTEMPTS` it is marked failed, and a redelivery by the forge gets a fresh start.
///
/// A delivery's end need not be flushed: a crash before it is durable only processes the
/// delivery again, which queues nothing twice.
/// Stored delivery records loaded for processing at a time (bytes of JSON, bodies included).
const PENDING_BATCH_BYTES: usize = 1 << 20;
/// Stored delivery records loaded for processing at a time (count).
const PENDING_BATCH: usize = 1024;

pub async fn process_loop(intake: Intake, stop: CancellationToken) {
    loop {
        // A delivery whose event the receiver handed over needs no body from the store.
        let handed = |forge: &str, id: &str| intake.deliveries.holds(forge, id);
        let pending =
            match intake
                .store
                .pending_deliveries(PENDING_BATCH, PENDING_BATCH_BYTES, &handed)
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("deliveries: {e}");
                    Vec::new()
                }
            };
        let now = Utc::now();
        let mut worked = false;
        let mut next_retry: Option<chrono::DateTime<Utc>> = None;
        for (seq, record) in &pending {
            if stop.is_cancelled() {
                return;
            }
            if let Some(at) = record.retry_at
                && at > now
            {
                next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                continue;
            }
            worked = true;
            if record.attempts == 0 {
                let waited = (Utc::now() - record.received_at)
                    .to_std()
                    .unwrap_or_default();
                intake.deliveries.lag.observe(waited);
            }
            let span = tracing::info_span!("delivery", forge = %record.forge, id = %record.id);
            let result = match tracing::Instrument::instrument(
                dispatch(&intake, record),
                span.clone(),
            )
            .await
            {
                Ok(outcome) => intake.store.finish_delivery(*seq, record, outcome, false),
                Err(error) => {
                    let attempts = record.attempts + 1;
                    span.in_scope(|| {
                        tracing::warn!(
                            "{} delivery {} (attempt {attempts}): {error}",
                            record.forge,
                            record.id
                        )
                    });
                    if attempts >= DELIVERY_ATTEMPTS {
                        intake
                            .store
                            .finish_delivery(*seq, record, format!("failed: {error}"), true)
                    } else {
                        // Re-read: processing may have pinned a PR head on it.
                        let mut again = intake
                            .store
                            .get_delivery(&record.forge, &record.id)
                            .ok()
                            .flatten()
                            .unwrap_or_else(|| record.clone());
                        again.attempts = attempts;
                        again.last_error = Some(error);
                        let wait = 2i64.pow(attempts.min(10)).min(600);
                        again.retry_at = Some(Utc::now() + chrono::Duration::seconds(wait));
                        intake.store.retry_delivery(&again)
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!("delivery {}: {e}", record.id);
            }
        }
        if worked {
            continue;
        }
        let wait = next_retry
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(5))
            .min(std::time::Duration::from_secs(5));
        tokio::select! {
            _ = stop.cancelled() => return,
            () = intake.deliveries.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Processes one delivery; returns its outcome in words.
async fn dispatch(intake: &Intake, record: &DeliveryRecord) -> Result<String, String> {
    // Taken first, whatever happens next: an event left behind would hold a place in the inbox
    // for good (a retry reads the body from the store).
    let handed = intake.deliveries.take(&record.forge, &record.id);
    let forge = Forge::from_name(&record.forge).ok_or("unknown forge")?;
    let repo = intake
        .repos
        .get(&record.source)
        .cloned()
        .ok_or_else(|| format!("source `{}` is no longer configured", record.source))?;
    let event = match handed {
        Some(event) => event,
        None => {
            let headers = vec![(
                webhook::event_header(forge).to_string(),
                record.event.clone(),
            )];
            webhook::parse(forge, &headers, record.body.as_bytes()).map_err(|e| e.to_string())?
        }
    };
    let delivery = Delivery {
        forge,
        id: record.id.clone(),
    };
    match event {
        ForgeEvent::Push {
            branch,
            before,
            after,
            pusher,
            ..
        } => on_push(intake, &repo, &delivery, &branch, before, &after, &pusher).await,
        ForgeEvent::PullRequest {
            number,
            action,
            head_sha,
            head_branch,
            base_branch,
            from_fork,
            author,
            ..
        } => {
            let pr = PrEvent {
                number,
                action,
                head_sha,
                head_branch,
                base_branch,
                from_fork,
                author,
                received_at: record.received_at,
            };
            on_pull_request(intake, &repo, &delivery, pr).await
        }
        ForgeEvent::Comment {
            pr_number,
            body,
            author,
            author_id,
            head_sha,
            created_at,
            ..
        } => {
            let comment = CommentEvent {
                pr: pr_number,
                body,
                author,
                author_id,
                head_sha: head_sha.or_else(|| record.head.clone()),
                created_at,
            };
            on_comment(intake, &repo, &delivery, comment, record).await
        }
        ForgeEvent::Ping { .. } => Ok("pong".into()),
        ForgeEvent::Ignored { reason } => Ok(format!("ignored: {reason}")),
    }
}
