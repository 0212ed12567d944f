//! What the forge side needs kept: webhook deliveries (de-duplicated, processed from the store),
//! the write-back outbox, and one record per pull request (its comment and its runs). Plus group
//! commit, so many concurrent deliveries share one fsync.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::TransactionError;

use super::records::PipelineError;
use super::{Store, StoreError, decode, key};

/// A webhook delivery as received: kept before the forge gets its 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// `github`, `gitlab` or `bitbucket`.
    pub forge: String,
    /// The forge's delivery id.
    pub id: String,
    /// The watched repository it was matched to.
    pub source: String,
    /// The forge's event name (`push`, `Merge Request Hook`, `repo:push`, ...).
    pub event: String,
    /// The raw body (JSON text); empty once retention removed it. Stored apart from the rest of
    /// the record, in the body log, so that recording an outcome rewrites a few hundred bytes, not
    /// the body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Where the store keeps the body (set by the store; `None` before it is stored and once
    /// retention removed the body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_at: Option<super::BodyLocation>,
    pub received_at: DateTime<Utc>,
    /// What processing did with it; `None` until it is processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<DateTime<Utc>>,
    /// Failed processing attempts so far (a fetch that failed, a forge that did not answer).
    #[serde(default)]
    pub attempts: u32,
    /// Not before this time: the next attempt after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The pull request head a comment command runs at, pinned on the first attempt (a GitHub
    /// comment names none): a retry never runs a head pushed after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

/// A write to a forge waiting to be made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxJob {
    /// Jobs with the same key supersede each other: one commit status per sha and context, one
    /// comment update per pull request.
    pub key: String,
    pub source: String,
    /// The run whose report this is; a job that gives up records why on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub action: OutboxAction,
    pub attempts: u32,
    pub first_at: DateTime<Utc>,
    pub next_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Bumped by every store of this key, so a worker removes only the job it sent.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxAction {
    /// A commit status; `state` is `pending`, `running`, `success`, `failure`, `error` or
    /// `canceled` (Gantry's words; the forge client maps them).
    Status {
        sha: String,
        context: String,
        state: String,
        description: String,
        target_url: String,
    },
    /// Create or edit Gantry's one comment on a pull request, rendered when sent.
    PrComment { pr: u64 },
    /// A one-off reply on a pull request (to a comment command).
    Reply { pr: u64, body: String },
}

/// Gantry's view of one pull request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PrRecord {
    pub source: String,
    pub number: u64,
    /// The head the runs below belong to.
    pub head_sha: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_branch: Option<String>,
    /// Gantry's comment, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<String>,
    /// The latest run of each pipeline on the head.
    #[serde(default)]
    pub runs: BTreeMap<String, String>,
    /// Pipeline files that fail validation at the head, with their errors.
    #[serde(default)]
    pub invalid: BTreeMap<String, Vec<PipelineError>>,
    #[serde(default)]
    pub from_fork: bool,
    /// When Gantry first heard of `head_sha` (the pull request delivery that moved the head
    /// arrived): a comment command written before it was written about an older head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_seen_at: Option<DateTime<Utc>>,
}

fn delivery_key(forge: &str, id: &str) -> Vec<u8> {
    key(&[forge.as_bytes(), id.as_bytes()])
}

/// A copy of `record` without its body (which is not copied).
fn without_body(record: &DeliveryRecord) -> DeliveryRecord {
    DeliveryRecord {
        forge: record.forge.clone(),
        id: record.id.clone(),
        source: record.source.clone(),
        event: record.event.clone(),
        body: String::new(),
        body_at: record.body_at,
        received_at: record.received_at,
        outcome: record.outcome.clone(),
        processed_at: record.processed_at,
        attempts: record.attempts,
        retry_at: record.retry_at,
        last_error: record.last_error.clone(),
        head: record.head.clone(),
    }
}

/// A delivery record as stored: everything but the body, which is at `body_at`.
fn record_bytes(
    record: &DeliveryRecord,
    body_at: Option<super::BodyLocation>,
) -> Result<Vec<u8>, StoreError> {
    let mut meta = without_body(record);
    meta.body_at = body_at;
    serde_json::to_vec(&meta).map_err(|source| StoreError::Corrupt {
        key: format!("{}/{}", record.forge, record.id),
        source,
    })
}

fn pr_key(source: &str, number: u64) -> Vec<u8> {
    key(&[source.as_bytes(), &number.to_be_bytes()])
}

impl Store {
    /// Makes every write made before this call durable, sharing one flush among concurrent
    /// callers (group commit): at most one flush runs at a time, and a caller whose writes a
    /// finished flush already covered returns without another.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let group = &self.inner.group;
        let target = group.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = group.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= target {
                return Ok(());
            }
            let _turn = group.flushing.lock().await;
            if *flushed.borrow_and_update() >= target {
                return Ok(());
            }
            let covers = group.written.load(Ordering::SeqCst);
            self.flush_async().await?;
            group.flushed.send_modify(|f| *f = (*f).max(covers));
        }
    }

    /// Records a delivery unless one with its id, or one with the same body (`body_hash`, the
    /// sha256 of the raw body: a replay under a new id), was recorded before; returns whether it
    /// is new. A new delivery is also queued for processing. Not flushed: call `durable` before
    /// answering.
    ///
    /// The body comes apart from the record (whose own `body` is not looked at), so the webhook
    /// receiver stores the bytes it received without copying them into a `String` first.
    pub fn accept_delivery(
        &self,
        record: &DeliveryRecord,
        body: &[u8],
        body_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        self.space_left()?;
        let _op = self.inner.health.op("accept a delivery");
        let k = delivery_key(&record.forge, &record.id);
        // The first delivery to claim a body owns it; any other id with that body is a replay.
        let claimed = self
            .inner
            .delivery_hashes
            .compare_and_swap(&body_hash[..], None as Option<&[u8]>, Some(k.clone()))
            .map_err(|e| self.db_err(e))?;
        let given_up = |k: &[u8], old: &sled::IVec| -> Result<bool, StoreError> {
            Ok(decode::<DeliveryRecord>(k, old)?
                .outcome
                .as_deref()
                .is_some_and(|o| o.starts_with("failed")))
        };
        // A body seen before under this id: a redelivery, with nothing to write unless its
        // processing gave up (a new chance). A body never seen: no record is looked up first;
        // the insert below finds one, if the id came before with another body.
        let mut stored = match claimed {
            Err(existing) if existing.current.as_deref() != Some(&k[..]) => return Ok(false),
            Err(_) => {
                let stored = self.inner.deliveries.get(&k).map_err(|e| self.db_err(e))?;
                if let Some(old) = &stored
                    && !given_up(&k, old)?
                {
                    return Ok(false);
                }
                stored
            }
            Ok(()) => None,
        };
        // The body first, then the record that points at it. (A redelivery racing this one may
        // leave its body unreferenced in the log; retention removes the segment in the end.)
        let body_at = self
            .inner
            .bodies
            .append(body)
            .map_err(|e| self.body_err("appending", e))?;
        let bytes = record_bytes(record, Some(body_at))?;
        self.note_write(bytes.len() + body.len() + 2 * k.len() + 64);
        // A first delivery, or a redelivery of one whose processing gave up (a new chance).
        let inserted = loop {
            match self
                .inner
                .deliveries
                .compare_and_swap(&k, stored.as_ref(), Some(bytes.clone()))
                .map_err(|e| self.db_err(e))?
            {
                Ok(()) => break true,
                Err(e) => match e.current {
                    Some(current)
                        if given_up(&k, &current)? && stored.as_ref() != Some(&current) =>
                    {
                        stored = Some(current);
                    }
                    _ => break false,
                },
            }
        };
        if inserted {
            let seq = self.inner.db.generate_id().map_err(|e| self.db_err(e))?;
            // Counted before it is queued: the processor may take it (and count it off) before
            // this thread runs on, and the count must never wrap below zero meanwhile (it would
            // read as a full backlog and refuse every delivery).
            self.inner.backlog.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = self.inner.delivery_queue.insert(seq.to_be_bytes(), k) {
                self.inner.backlog.fetch_sub(1, Ordering::SeqCst);
                return Err(self.db_err(e));
            }
        }
        Ok(inserted)
    }

    pub fn get_delivery(
        &self,
        forge: &str,
        id: &str,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        let k = delivery_key(forge, id);
        match self.get_json::<DeliveryRecord>(&self.inner.deliveries, &k)? {
            Some(mut record) => {
                self.join_body(&mut record)?;
                Ok(Some(record))
            }
            None => Ok(None),
        }
    }

    /// Puts a record's body back into it (a record written before the body log existed holds
    /// its own). `false` when the record points at a body that is not there whole: one lost in a
    /// crash before the delivery was acknowledged (see `bodies.rs`).
    fn join_body(&self, record: &mut DeliveryRecord) -> Result<bool, StoreError> {
        let Some(at) = record.body_at else {
            return Ok(true); // inline, or removed by retention
        };
        if !record.body.is_empty() {
            return Ok(true);
        }
        match self
            .inner
            .bodies
            .read(at)
            .map_err(|e| StoreError::io("reading a webhook body", e))?
        {
            Some(body) => {
                record.body = String::from_utf8(body)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Writes a delivery record without its body; a body still inline (a record written before
    /// the body log existed) moves to the body log first.
    fn put_delivery(&self, record: &DeliveryRecord) -> Result<(), StoreError> {
        let k = delivery_key(&record.forge, &record.id);
        let mut body_at = record.body_at;
        if body_at.is_none() && !record.body.is_empty() {
            let at = self
                .inner
                .bodies
                .append(record.body.as_bytes())
                .map_err(|e| self.body_err("appending", e))?;
            body_at = Some(at);
        }
        let bytes = record_bytes(record, body_at)?;
        self.note_write(bytes.len() + k.len());
        self.inner
            .deliveries
            .insert(k, bytes)
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Deletes the body segments that none of `referenced` is in (after retention).
    pub(super) fn remove_unreferenced_bodies(
        &self,
        referenced: &std::collections::BTreeSet<u64>,
    ) -> Result<usize, StoreError> {
        self.inner
            .bodies
            .remove_unreferenced(referenced)
            .map_err(|e| StoreError::io("removing webhook body segments", e))
    }

    /// Deliveries waiting to be processed, oldest first, with their queue position: at most
    /// `limit` of them, and no more once their stored size reaches `max_bytes` (at least one), so
    /// a backlog of large bodies is streamed from the store rather than loaded whole. Bodies are
    /// read except for the deliveries `handed(forge, id)` says the caller has the event of (those
    /// come without their body).
    pub fn pending_deliveries(
        &self,
        limit: usize,
        max_bytes: usize,
        handed: &dyn Fn(&str, &str) -> bool,
    ) -> Result<Vec<(u64, DeliveryRecord)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let now = Utc::now();
        for entry in self.inner.delivery_queue.iter().take(limit) {
            if bytes >= max_bytes && !out.is_empty() {
                break;
            }
            let (seq, k) = entry.map_err(|e| self.db_err(e))?;
            let seq = <[u8; 8]>::try_from(seq.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let Some(raw) = self.inner.deliveries.get(&k).map_err(|e| self.db_err(e))? else {
                continue;
            };
            let mut record = serde_json::from_slice::<DeliveryRecord>(&raw).map_err(|source| {
                StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    source,
                }
            })?;
            // One waiting to be retried costs nothing here (its body is not needed now), so it
            // cannot hold back the due ones behind it.
            if record.retry_at.is_some_and(|at| at > now) {
                record.body = String::new();
            } else if handed(&record.forge, &record.id) {
                // Stored by this process (the lost-in-a-crash check below is for records from
                // before a restart): nothing to check, nothing to read.
                bytes += raw.len();
            } else {
                if !self.join_body(&mut record)? {
                    // Never acknowledged (its body was not durable when the process died), so
                    // the forge delivers it again; `failed` lets that redelivery in.
                    self.finish_delivery(
                        seq,
                        &record,
                        "failed: its body was lost in a crash before it was acknowledged; the \
                         forge's redelivery is taken as new"
                            .into(),
                        false,
                    )?;
                    continue;
                }
                bytes += raw.len() + record.body.len();
            }
            out.push((seq, record));
        }
        Ok(out)
    }

    /// Deliveries accepted and not processed yet.
    pub fn delivery_backlog(&self) -> u64 {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// Marks a delivery processed: it leaves the queue with its outcome recorded. Flushed when
    /// `flush` is set, which callers do when processing queued runs or writes: a crash before an
    /// unflushed finish only processes the delivery again, so a delivery that changed nothing
    /// durable need not cost an fsync.
    pub fn finish_delivery(
        &self,
        seq: u64,
        record: &DeliveryRecord,
        outcome: String,
        flush: bool,
    ) -> Result<(), StoreError> {
        let mut done = without_body(record);
        done.outcome = Some(outcome);
        done.processed_at = Some(Utc::now());
        // A body still inline (a record from before the body log) moves to the log with it.
        if done.body_at.is_none() {
            done.body = record.body.clone();
        }
        self.put_delivery(&done)?;
        let removed = self
            .inner
            .delivery_queue
            .remove(seq.to_be_bytes())
            .map_err(|e| self.db_err(e))?;
        if removed.is_some() {
            self.inner.backlog.fetch_sub(1, Ordering::SeqCst);
        }
        if flush { self.flush() } else { Ok(()) }
    }

    /// Keeps a delivery queued after a failed attempt, to be tried again at `retry_at`. Flushed.
    pub fn retry_delivery(&self, record: &DeliveryRecord) -> Result<(), StoreError> {
        self.put_delivery(record)?;
        self.flush()
    }

    // ---- outbox ----------------------------------------------------------------------------

    /// Stores a job, replacing a waiting job with the same key (a newer state supersedes an
    /// older one), flushed. Returns the stored job (with its revision).
    pub fn put_outbox(&self, mut job: OutboxJob) -> Result<OutboxJob, StoreError> {
        job.revision = self.inner.db.generate_id().map_err(|e| self.db_err(e))?;
        self.put_json(&self.inner.outbox, job.key.as_bytes(), &job)?;
        self.flush()?;
        Ok(job)
    }

    /// Stores a job unless `idempotency_key` was used before, recording the key in the same
    /// transaction (a delivery processed again after a crash does not reply twice); flushed.
    /// Returns whether the job was stored.
    pub fn put_outbox_once(
        &self,
        mut job: OutboxJob,
        idempotency_key: &str,
    ) -> Result<bool, StoreError> {
        job.revision = self.inner.db.generate_id().map_err(|e| self.db_err(e))?;
        let bytes = serde_json::to_vec(&job).map_err(|source| StoreError::Corrupt {
            key: job.key.clone(),
            source,
        })?;
        let stored: Result<bool, TransactionError<()>> =
            (&self.inner.outbox, &self.inner.idempotency).transaction(|(outbox, keys)| {
                if keys.get(idempotency_key.as_bytes())?.is_some() {
                    return Ok(false);
                }
                keys.insert(idempotency_key.as_bytes(), &b"reply"[..])?;
                outbox.insert(job.key.as_bytes(), bytes.clone())?;
                Ok(true)
            });
        let stored = match stored {
            Ok(s) => s,
            Err(TransactionError::Abort(())) => false,
            Err(TransactionError::Storage(e)) => return Err(self.db_err(e)),
        };
        if stored {
            self.flush()?;
        }
        Ok(stored)
    }

    /// Every waiting job, in key order.
    pub fn outbox(&self) -> Result<Vec<OutboxJob>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.outbox_page(cursor.as_deref(), usize::MAX)?;
            out.extend(page);
            match next {
                Some(k) => cursor = Some(k),
                None => return Ok(out),
            }
        }
    }

    /// Waiting jobs in key order after `after` (from the start when `None`), stopping once
    /// their stored size reaches `max_bytes` (at least one job). Returns the jobs and, when more
    /// follow, the cursor for the next page.
    pub fn outbox_page(
        &self,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<(Vec<OutboxJob>, Option<Vec<u8>>), StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last: Option<Vec<u8>> = None;
        for entry in self
            .inner
            .outbox
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            if bytes >= max_bytes && !out.is_empty() {
                return Ok((out, last));
            }
            bytes += v.len();
            out.push(decode(&k, &v)?);
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }

    /// Stores a job's retry state, unless a newer job replaced it meanwhile. Flushed.
    pub fn retry_outbox(&self, job: &OutboxJob) -> Result<(), StoreError> {
        self.replace_outbox(job, Some(job))
    }

    /// Removes a job that was sent (or given up), unless a newer job replaced it meanwhile.
    pub fn remove_outbox(&self, job: &OutboxJob) -> Result<(), StoreError> {
        self.replace_outbox(job, None)
    }

    fn replace_outbox(&self, sent: &OutboxJob, with: Option<&OutboxJob>) -> Result<(), StoreError> {
        let k = sent.key.as_bytes();
        let Some(current) = self.inner.outbox.get(k).map_err(|e| self.db_err(e))? else {
            return Ok(());
        };
        let stored: OutboxJob = decode(k, &current)?;
        if stored.revision != sent.revision {
            return Ok(());
        }
        let new = match with {
            Some(job) => Some(
                serde_json::to_vec(job).map_err(|source| StoreError::Corrupt {
                    key: job.key.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        // A concurrent replacement makes the swap fail, which is what we want: keep the newer.
        let _ = self
            .inner
            .outbox
            .compare_and_swap(k, Some(current), new)
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    // ---- pull requests ---------------------------------------------------------------------

    pub fn get_pr(&self, source: &str, number: u64) -> Result<Option<PrRecord>, StoreError> {
        self.get_json(&self.inner.prs, &pr_key(source, number))
    }

    /// Stores a pull request's record, flushed.
    pub fn put_pr(&self, record: &PrRecord) -> Result<(), StoreError> {
        self.put_json(
            &self.inner.prs,
            &pr_key(&record.source, record.number),
            record,
        )?;
        self.flush()
    }
}

/// Shared state of group commit.
#[derive(Debug)]
pub(super) struct GroupCommit {
    pub written: std::sync::atomic::AtomicU64,
    pub flushed: tokio::sync::watch::Sender<u64>,
    pub flushing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub fn new() -> GroupCommit {
        GroupCommit {
            written: std::sync::atomic::AtomicU64::new(0),
            flushed: tokio::sync::watch::channel(0).0,
            flushing: tokio::sync::Mutex::new(()),
        }
    }
}
