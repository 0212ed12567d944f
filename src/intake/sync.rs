//! The per-repository sync loop: fetch and reconcile on a blocking thread, on the repository's
//! own timer with backoff after failures, so a slow repository delays only itself.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::WatchedRepo;
use crate::catalog;
use crate::store::Store;

/// Keeps one repository in sync: at start, every `poll_interval` (unless zero), and when woken.
pub async fn sync_loop(
    store: Store,
    repo: Arc<WatchedRepo>,
    stop: CancellationToken,
    interrupt: Arc<AtomicBool>,
) {
    let mut failures: u32 = 0;
    loop {
        let (st, r, i) = (store.clone(), repo.clone(), interrupt.clone());
        let guard = repo.sync_lock.lock().await;
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || catalog::sync(&st, &r.source, &i)).await;
        drop(guard);
        repo.stats
            .record(matches!(result, Ok(Ok(_))), started.elapsed());
        if let Ok(Ok(report)) = &result
            && let Some(took) = report.fetched_in
        {
            repo.stats.fetches.observe(took);
        }
        let span = tracing::info_span!("sync", source = %repo.source.name);
        span.in_scope(|| match result {
            Ok(Ok(report)) => {
                failures = 0;
                if !report.unchanged {
                    tracing::info!(
                        "{} at {}: {} new version(s), {} invalid, {} retired",
                        repo.source.name,
                        &report.head[..report.head.len().min(12)],
                        report.new_versions.len(),
                        report.invalid.len(),
                        report.retired.len()
                    );
                }
            }
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                tracing::warn!("sync of {}: {e}", repo.source.name);
            }
            Err(e) => tracing::warn!("sync of {} stopped: {e}", repo.source.name),
        });
        repo.synced.store(true, std::sync::atomic::Ordering::SeqCst);
        // After failures, wait longer (up to 5 minutes) so an unreachable remote is not hammered.
        let wait = if repo.poll_interval.is_zero() {
            None
        } else {
            let backoff = repo.poll_interval * 2u32.saturating_pow(failures.min(8));
            Some(
                backoff
                    .min(Duration::from_secs(300))
                    .max(repo.poll_interval),
            )
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = repo.wake.notified() => {}
            _ = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
}
