//! Retention: pruning old runs (with their steps, logs and outputs) and the bodies of old webhook
//! deliveries, so the data dir does not grow without bound.
//!
//! A run is pruned when all of these hold: it ended (a queued or running run never is), it ended
//! (or, never started, was created) longer than `max_age` before `now`, it is not one of the
//! newest `keep_runs` runs of its pipeline (`source/name`, counting every run), and it published
//! nothing (what a run published is what the marketplace serves). Its records go children first
//! and the run record last, so a prune cut short by a crash leaves a run that the next prune
//! finishes. A processed delivery received longer than `max_age` ago keeps its record (its id, so a
//! late redelivery is still a duplicate, and its outcome) but loses its body; a delivery still
//! waiting to be processed is never touched. The caller chooses `now`, so tests inject the time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::records::RunRecord;
use super::{DeliveryRecord, Store, StoreError, decode, key};

/// How long runs and delivery bodies are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Older than this (and past the floor) is pruned.
    pub max_age: std::time::Duration,
    /// The newest runs of each pipeline that are kept whatever their age.
    pub keep_runs: usize,
}

/// What one prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: usize,
    pub delivery_bodies: usize,
    /// Audit entries older than the retention age, and ended web sessions.
    pub audit_entries: usize,
    pub sessions: usize,
}

impl Store {
    /// Prunes what `policy` no longer keeps, as of `now`; flushes when it removed anything.
    pub fn prune(&self, now: DateTime<Utc>, policy: &Retention) -> Result<Pruned, StoreError> {
        let max_age = chrono::Duration::from_std(policy.max_age).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(max_age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut pruned = Pruned::default();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut doomed: Vec<String> = Vec::new();
        // Newest first: ids sort by creation time.
        for entry in self.inner.runs.iter().rev() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let run: RunRecord = decode(&k, &v)?;
            let count = seen
                .entry((run.source.clone(), run.pipeline.clone()))
                .or_insert(0);
            *count += 1;
            if *count <= policy.keep_runs || run.status.is_active() {
                continue;
            }
            let ended = run.finished_at.unwrap_or(run.created_at);
            if ended >= cutoff || self.published(&run.id)? {
                continue;
            }
            doomed.push(run.id);
        }
        for id in &doomed {
            self.remove_run(id)?;
            pruned.runs += 1;
        }
        // Bodies of old processed deliveries go; the segments of the body log that no record
        // points into any more go with them.
        let mut referenced = std::collections::BTreeSet::new();
        for entry in self.inner.deliveries.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let mut record: DeliveryRecord = decode(&k, &v)?;
            let processed = record.outcome.is_some() && record.processed_at.is_some();
            if !processed || record.received_at >= cutoff {
                if let Some(at) = record.body_at {
                    referenced.insert(at.segment);
                }
                continue;
            }
            if record.body_at.is_none() && record.body.is_empty() {
                continue;
            }
            record.body_at = None;
            record.body.clear();
            self.put_json(&self.inner.deliveries, &k, &record)?;
            pruned.delivery_bodies += 1;
        }
        self.remove_unreferenced_bodies(&referenced)?;
        pruned.audit_entries = self.prune_audit(cutoff)?;
        pruned.sessions = self.prune_sessions(super::sessions::SessionLimits::default())?;
        if pruned != Pruned::default() {
            self.flush()?;
        }
        Ok(pruned)
    }

    fn published(&self, run_id: &str) -> Result<bool, StoreError> {
        match self
            .inner
            .publications
            .scan_prefix(key(&[run_id.as_bytes(), b""]))
            .next()
        {
            Some(entry) => entry.map(|_| true).map_err(|e| self.db_err(e)),
            None => Ok(false),
        }
    }

    /// Removes a run: its log chunks, steps and outputs, then the run record.
    fn remove_run(&self, run_id: &str) -> Result<(), StoreError> {
        let prefix = key(&[run_id.as_bytes(), b""]);
        for tree in [&self.inner.logs, &self.inner.steps, &self.inner.outputs] {
            let mut batch = sled::Batch::default();
            for entry in tree.scan_prefix(&prefix) {
                let (k, _) = entry.map_err(|e| self.db_err(e))?;
                batch.remove(k);
            }
            tree.apply_batch(batch).map_err(|e| self.db_err(e))?;
        }
        self.inner
            .runs
            .remove(run_id.as_bytes())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }
}
