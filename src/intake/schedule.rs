//! The schedule loop: due ticks of `on.schedule` (`trigger::schedule`) submitted to the queue.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::run::queue::{Queue, Submit};
use crate::store::{Store, Trigger};
use crate::trigger::schedule::Scheduler;

/// Fires due schedule ticks into the queue.
pub async fn schedule_loop(store: Store, queue: Queue, stop: CancellationToken) {
    let mut scheduler = Scheduler::new();
    loop {
        let now = chrono::Utc::now();
        match scheduler.due(&store, now) {
            Ok(fires) => {
                for fire in fires {
                    submit_fire(&store, &queue, fire);
                }
            }
            Err(e) => tracing::warn!("schedules: {e}"),
        }
        // Sleep to the next tick, but look again at least every second: pipelines change.
        let until_next = scheduler
            .next_wake(chrono::Utc::now())
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(until_next + Duration::from_millis(5)) => {}
        }
    }
}

fn submit_fire(store: &Store, queue: &Queue, fire: crate::trigger::schedule::Fire) {
    let label = format!("{}/{}", fire.source, fire.name);
    let pipeline = match store.get_version(&fire.source, &fire.name, fire.version) {
        Ok(Some(v)) => crate::spec::check(&v.text).pipeline,
        _ => None,
    };
    let Some(pipeline) = pipeline else {
        tracing::warn!("schedule of {label}: its version is gone");
        return;
    };
    let git = store
        .source_state(&fire.source)
        .ok()
        .and_then(|s| s.head)
        .map(|sha| crate::executor::GitInfo {
            sha,
            reference: String::new(),
            repo: fire.source.clone(),
        });
    let tick = fire.tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let detail = if fire.catch_up {
        format!("cron {}, catch-up for the tick at {tick}", fire.cron)
    } else {
        format!("cron {}, tick at {tick}", fire.cron)
    };
    let submit = Submit {
        source: fire.source.clone(),
        pipeline,
        version: fire.version,
        params: fire
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        trigger: Trigger {
            kind: "schedule".into(),
            detail: Some(detail),
        },
        git,
        pr: None,
        // A tick fires at most once already: its mark is flushed before this.
        idempotency_key: None,
        retry_of: None,
    };
    if let Err(e) = queue.submit(submit) {
        tracing::warn!("schedule of {label} at {}: {e}", fire.tick);
    }
}
