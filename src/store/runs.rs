//! Runs and everything hanging off a run: steps, log chunks, outputs, publications; and pipeline
//! versions, which runs point to.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::records::*;
use super::{Store, StoreError, crypto, decode, key, key_parts, log_chunk, show_key};
use crate::executor::{GitInfo, Publication};

/// What a caller knows about a run before it exists.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub source: String,
    pub pipeline: String,
    pub version: u32,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub trigger: Trigger,
    pub git: Option<GitInfo>,
    pub steps: Vec<String>,
    pub owner: Option<Owner>,
    /// `Queued` for a run to execute; an end state (`Skipped`) records a run that never starts.
    pub status: RunStatus,
    pub concurrency: Option<String>,
    /// Why the run has the status it is created with (a skipped run says which run it yielded to).
    pub message: Option<String>,
    pub pr: Option<u64>,
    /// Who asked for it, once (`<forge>/<delivery id>/run/<pipeline file path>` for a webhook's
    /// run): a run with a key is created at most once, the key stored in the same transaction.
    pub idempotency_key: Option<String>,
    /// The run this one retries from its failed step (its succeeded steps are reused).
    pub retry_of: Option<String>,
}

/// Why the transaction creating a run stopped.
enum CreateAbort {
    Json(serde_json::Error),
    /// A run with the same idempotency key exists: its id.
    Exists(String),
}

/// The smallest id of time `t`: every id made at `t` or later sorts at or after it (a bound for
/// ranges; unlike `new_run_id` it does not touch the counter of ids made).
pub(super) fn id_bound(t: DateTime<Utc>) -> String {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    encode_id(ms, 0)
}

/// A sortable run id: 48 bits of milliseconds since the epoch and 80 random bits, in Crockford
/// base32 (26 characters). Ids made by one process in the same millisecond still sort in order.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));
    let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let mut random = [0u8; 10];
    crypto::random_bytes(&mut random);
    let mut rand = random
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    if let Ok(mut last) = LAST.lock() {
        if last.0 >= ms {
            // Same (or an earlier, after a clock step back) millisecond: count up from the last id.
            rand = (last.1 + 1) & ((1u128 << 80) - 1);
            *last = (last.0, rand);
            return encode_id(last.0, rand);
        }
        *last = (ms, rand);
    }
    encode_id(ms, rand)
}

fn encode_id(ms: u64, rand: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value: u128 = (u128::from(ms) << 80) | rand;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[derive(Serialize, Deserialize)]
struct StoredOutput {
    secret: bool,
    /// Plain value, or hex of the sealed value when secret.
    value: String,
}

impl Store {
    // ---- pipeline versions -------------------------------------------------------------------

    /// Records `text` (read from `path`) as the newest version of `source/name` unless the newest
    /// already has the same text, path and commit;
    /// returns the version number in either case.
    pub fn record_version(
        &self,
        source: &str,
        name: &str,
        text: &str,
        path: &str,
        commit: Option<&str>,
    ) -> Result<u32, StoreError> {
        let id = format!("{source}/{name}");
        // Versions are claimed with a compare-and-swap on a new key: two writers that read the
        // same latest version (the sync loop and a delivery, say) never give one number to two
        // texts; the loser looks again.
        loop {
            let latest = self.latest_version(source, name)?;
            if let Some(latest) = &latest
                && latest.text == text
                && latest.path == path
                && latest.commit.as_deref() == commit
            {
                return Ok(latest.version);
            }
            let version = latest.map_or(1, |v| v.version + 1);
            let record = PipelineVersion {
                version,
                text: text.to_string(),
                path: path.to_string(),
                commit: commit.map(str::to_string),
                created_at: Utc::now(),
            };
            let k = key(&[id.as_bytes(), &version.to_be_bytes()]);
            let bytes = serde_json::to_vec(&record).map_err(|source| StoreError::Corrupt {
                key: show_key(&k),
                source,
            })?;
            let claimed = self
                .inner
                .pipeline_versions
                .compare_and_swap(&k, None as Option<&[u8]>, Some(bytes))
                .map_err(|e| self.db_err(e))?
                .is_ok();
            if claimed {
                return Ok(version);
            }
        }
    }

    pub fn latest_version(
        &self,
        source: &str,
        name: &str,
    ) -> Result<Option<PipelineVersion>, StoreError> {
        let prefix = key(&[format!("{source}/{name}").as_bytes(), b""]);
        match self
            .inner
            .pipeline_versions
            .scan_prefix(&prefix)
            .next_back()
        {
            Some(entry) => {
                let (k, v) = entry.map_err(|e| self.db_err(e))?;
                decode(&k, &v).map(Some)
            }
            None => Ok(None),
        }
    }

    // ---- runs ------------------------------------------------------------------------------

    /// Creates a queued run with the next number of its pipeline, and its pending steps, and
    /// flushes: a run exists durably before anything acts on it.
    pub fn create_run(&self, new: NewRun) -> Result<RunRecord, StoreError> {
        let now = Utc::now();
        let id = new_run_id(now);
        let counter_key = format!("{}/{}", new.source, new.pipeline);
        let mut record = RunRecord {
            id: id.clone(),
            number: 0,
            source: new.source,
            pipeline: new.pipeline,
            version: new.version,
            parameters: new.parameters,
            trigger: new.trigger,
            status: new.status,
            git: new.git,
            created_at: now,
            started_at: None,
            finished_at: (!new.status.is_active()).then_some(now),
            message: new.message,
            steps: new.steps,
            owner: new.owner,
            concurrency: new.concurrency,
            pr: new.pr,
            writeback_error: None,
            idempotency_key: new.idempotency_key.clone(),
            executor: None,
            external_id: None,
            retry_of: new.retry_of.clone(),
        };
        let result: Result<u64, TransactionError<CreateAbort>> = (
            &self.inner.runs,
            &self.inner.run_numbers,
            &self.inner.idempotency,
        )
            .transaction(|(runs, numbers, keys)| {
                if let Some(k) = &new.idempotency_key {
                    if let Some(done) = keys.get(k.as_bytes())? {
                        let existing = String::from_utf8_lossy(&done).into_owned();
                        return Err(ConflictableTransactionError::Abort(CreateAbort::Exists(
                            existing,
                        )));
                    }
                    keys.insert(k.as_bytes(), id.as_bytes())?;
                }
                let last = numbers
                    .get(counter_key.as_bytes())?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                let number = last + 1;
                numbers.insert(counter_key.as_bytes(), &number.to_be_bytes())?;
                let mut with_number = record.clone();
                with_number.number = number;
                let bytes = serde_json::to_vec(&with_number)
                    .map_err(|e| ConflictableTransactionError::Abort(CreateAbort::Json(e)))?;
                runs.insert(id.as_bytes(), bytes)?;
                Ok(number)
            });
        record.number = match result {
            Ok(n) => n,
            Err(TransactionError::Abort(CreateAbort::Json(source))) => {
                return Err(StoreError::Corrupt { key: id, source });
            }
            Err(TransactionError::Abort(CreateAbort::Exists(existing))) => {
                // Created before (a delivery processed again after a crash): that run it is.
                return self
                    .get_run(&existing)?
                    .ok_or(StoreError::NoSuchRun(existing));
            }
            Err(TransactionError::Storage(e)) => return Err(self.db_err(e)),
        };
        for (index, name) in record.steps.iter().enumerate() {
            self.put_step(&record.id, index, &StepRecord::pending(name))?;
        }
        self.flush()?;
        Ok(record)
    }

    /// What was recorded under an idempotency key (a run id, or `reply`), if anything.
    pub fn done_for(&self, idempotency_key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .inner
            .idempotency
            .get(idempotency_key.as_bytes())
            .map_err(|e| self.db_err(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Applies `change` to a run and stores it (not flushed: see the module doc).
    /// Ends a run: its final status, the time, why, and no owner any more. Not flushed: callers
    /// flush (async or not) before they report the end.
    pub fn end_run(
        &self,
        id: &str,
        status: RunStatus,
        message: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        self.update_run(id, |r| {
            r.status = status;
            r.finished_at = Some(Utc::now());
            r.message = message;
            r.owner = None;
        })
    }

    pub fn update_run(
        &self,
        id: &str,
        change: impl FnOnce(&mut RunRecord),
    ) -> Result<RunRecord, StoreError> {
        let mut run = self
            .get_run(id)?
            .ok_or_else(|| StoreError::NoSuchRun(id.to_string()))?;
        change(&mut run);
        self.put_json(&self.inner.runs, id.as_bytes(), &run)?;
        Ok(run)
    }

    pub fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.get_json(&self.inner.runs, id.as_bytes())
    }

    /// Finds a run by its id or a unique prefix of it (ids are long; people type the start).
    pub fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord, StoreError> {
        let wanted = id_or_prefix.trim().to_ascii_uppercase();
        if wanted.is_empty() {
            return Err(StoreError::NoSuchRun(id_or_prefix.to_string()));
        }
        let mut found = None;
        for entry in self.inner.runs.scan_prefix(wanted.as_bytes()) {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            if found.is_some() {
                return Err(StoreError::AmbiguousRun(id_or_prefix.to_string()));
            }
            found = Some(decode::<RunRecord>(&k, &v)?);
        }
        found.ok_or_else(|| StoreError::NoSuchRun(id_or_prefix.to_string()))
    }

    /// Runs, newest first, optionally of one pipeline (by name), at most `limit`.
    pub fn list_runs(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.runs.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let run: RunRecord = decode(&k, &v)?;
            if pipeline.is_none_or(|p| {
                p == run.pipeline || p == format!("{}/{}", run.source, run.pipeline)
            }) {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// Runs that are queued or running.
    pub fn active_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.runs.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let run: RunRecord = decode(&k, &v)?;
            if run.status.is_active() {
                out.push(run);
            }
        }
        Ok(out)
    }

    // ---- steps -----------------------------------------------------------------------------

    pub fn put_step(
        &self,
        run_id: &str,
        index: usize,
        step: &StepRecord,
    ) -> Result<(), StoreError> {
        self.put_json(&self.inner.steps, &step_key(run_id, index), step)
    }

    pub fn update_step(
        &self,
        run_id: &str,
        index: usize,
        change: impl FnOnce(&mut StepRecord),
    ) -> Result<StepRecord, StoreError> {
        let k = step_key(run_id, index);
        let mut step: StepRecord =
            self.get_json(&self.inner.steps, &k)?
                .ok_or_else(|| StoreError::NoSuchStep {
                    run: run_id.to_string(),
                    step: index,
                })?;
        change(&mut step);
        self.put_json(&self.inner.steps, &k, &step)?;
        Ok(step)
    }

    /// The steps of a run in plan order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.steps.scan_prefix(key(&[run_id.as_bytes(), b""])) {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    // ---- logs ------------------------------------------------------------------------------

    /// Stores `lines` as chunk number `chunk` of a step's log, whole: tests lay chunks out by
    /// number. The recorder appends with `append_log`, which cuts chunks to size.
    #[cfg(test)]
    pub(crate) fn put_log_chunk(
        &self,
        run_id: &str,
        step: usize,
        chunk: u32,
        lines: &[LogLine],
    ) -> Result<(), StoreError> {
        let lines: Vec<NewLogLine<'_>> = lines.iter().map(LogLine::borrowed).collect();
        self.put_chunk(run_id, step, chunk, &lines)
    }

    /// Appends `lines` to a step's log as chunks of about `log_chunk::CHUNK_BYTES`, numbered from
    /// `next`, which is left at the number of the next chunk to write. Chunk numbers are given by
    /// the one writer of a run's log (the run's recorder), counting from 0, so no read is needed.
    /// Returns the text bytes stored (a newline counted per line).
    pub fn append_log(
        &self,
        run_id: &str,
        step: usize,
        next: &mut u32,
        lines: &[NewLogLine<'_>],
    ) -> Result<u64, StoreError> {
        let mut stored = 0u64;
        let mut rest = lines;
        while !rest.is_empty() {
            // At least one line per chunk, then lines while they fit.
            let mut size = log_chunk::encoded_len(&rest[0]);
            let mut n = 1;
            while let Some(line) = rest.get(n) {
                let more = log_chunk::encoded_len(line);
                if size + more > log_chunk::CHUNK_BYTES {
                    break;
                }
                size += more;
                n += 1;
            }
            let (chunk, after) = rest.split_at(n);
            self.put_chunk(run_id, step, *next, chunk)?;
            *next += 1;
            stored += chunk.iter().map(|l| l.text.len() as u64 + 1).sum::<u64>();
            rest = after;
        }
        Ok(stored)
    }

    fn put_chunk(
        &self,
        run_id: &str,
        step: usize,
        chunk: u32,
        lines: &[NewLogLine<'_>],
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let key = log_key(run_id, step, chunk);
        let bytes = log_chunk::encode(lines);
        self.note_write(key.len() + bytes.len());
        let _op = self.inner.health.op("write");
        self.inner
            .logs
            .insert(key, bytes)
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Log lines of a run (or of one step), in order, from chunk cursor `after` on; returns the
    /// lines with their step index and the cursor to pass next time (for following a live log).
    pub fn logs(
        &self,
        run_id: &str,
        step: Option<usize>,
        after: Option<&LogCursor>,
    ) -> Result<(Vec<(usize, LogLine)>, LogCursor), StoreError> {
        self.logs_page(run_id, step, after, usize::MAX)
    }

    /// Like `logs`, but stops once the chunks read reach `max_bytes` (at least one chunk): a big
    /// log is served page by page from the cursor, never loaded whole. An empty page means
    /// nothing new.
    pub fn logs_page(
        &self,
        run_id: &str,
        step: Option<usize>,
        after: Option<&LogCursor>,
        max_bytes: usize,
    ) -> Result<(Vec<(usize, LogLine)>, LogCursor), StoreError> {
        let (lines, cursor) = self.logs_page_placed(run_id, step, after, max_bytes)?;
        Ok((lines.into_iter().map(|(s, _, l)| (s, l)).collect(), cursor))
    }

    /// `logs_page`, with each line's place in its step's log.
    pub fn logs_page_placed(
        &self,
        run_id: &str,
        step: Option<usize>,
        after: Option<&LogCursor>,
        max_bytes: usize,
    ) -> Result<(Vec<PlacedLine>, LogCursor), StoreError> {
        let mut read = 0usize;
        let prefix = match step {
            Some(s) => key(&[run_id.as_bytes(), &step_index(s), b""]),
            None => key(&[run_id.as_bytes(), b""]),
        };
        let mut cursor = after.cloned().unwrap_or_default();
        let mut out = Vec::new();
        // Chunks already seen are skipped by seeking past them, one seek per step, so following a
        // huge log costs what the new chunks cost, not a walk over all the old ones.
        let mut from = prefix.clone();
        'steps: loop {
            let mut entries = self.inner.logs.range(from.clone()..);
            loop {
                let Some(entry) = entries.next() else {
                    break 'steps;
                };
                let (k, v) = entry.map_err(|e| self.db_err(e))?;
                if !k.starts_with(&prefix) {
                    break 'steps;
                }
                let Some((s, n)) = step_and_chunk(run_id, &k) else {
                    continue;
                };
                if let Some(&last) = cursor.seen.get(&s)
                    && n <= last
                {
                    match last.checked_add(1) {
                        Some(next) if log_key(run_id, s, next) > k.to_vec() => {
                            from = log_key(run_id, s, next);
                            continue 'steps;
                        }
                        _ => continue,
                    }
                }
                if read >= max_bytes && !out.is_empty() {
                    break 'steps;
                }
                read += v.len();
                let lines = decode_chunk(&k, &v)?;
                out.extend(
                    lines
                        .into_iter()
                        .enumerate()
                        .map(|(i, l)| (s, LinePlace::new(n, i), l)),
                );
                cursor.seen.insert(s, n);
            }
        }
        Ok((out, cursor))
    }

    /// The last `n` lines of one step's log (all its attempts), oldest first. Chunks are read
    /// from the end, so the cost follows `n`, not the log's size.
    pub fn log_tail(
        &self,
        run_id: &str,
        step: usize,
        n: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        Ok(self.log_tail_before(run_id, step, None, 0, n)?.lines)
    }

    /// `n` lines of one step's log that end `skip` lines before its end, oldest first; the end is
    /// chunk `upto` (inclusive) when given, so that a page showing the tail and a reader following
    /// from a cursor (`log_end`) neither miss nor repeat a line. Chunks are read from the end: the
    /// cost follows `skip + n`, not the log's size.
    pub fn log_tail_before(
        &self,
        run_id: &str,
        step: usize,
        upto: Option<u32>,
        skip: usize,
        n: usize,
    ) -> Result<LogWindow, StoreError> {
        let prefix = key(&[run_id.as_bytes(), &step_index(step), b""]);
        let end = match upto {
            Some(chunk) => log_key(run_id, step, chunk),
            None => {
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xff; 5]);
                end
            }
        };
        let mut window = self.log_chunks_back(&prefix, end, skip.saturating_add(n))?;
        // Drop the `skip` newest, then keep the `n` before them.
        let kept = window.lines.len().saturating_sub(skip);
        window.lines.truncate(kept);
        window.places.truncate(kept);
        let first = kept.saturating_sub(n);
        window.more |= first > 0;
        window.lines.drain(..first);
        window.places.drain(..first);
        Ok(window)
    }

    /// Whole chunks of one step's log, the last of them chunk `upto`, and at least `n` lines
    /// when the log has them: the page a link to a line of chunk `upto` opens. The cost follows
    /// the lines read, not the log's size.
    pub fn log_chunks_to(
        &self,
        run_id: &str,
        step: usize,
        upto: u32,
        n: usize,
    ) -> Result<LogWindow, StoreError> {
        let prefix = key(&[run_id.as_bytes(), &step_index(step), b""]);
        self.log_chunks_back(&prefix, log_key(run_id, step, upto), n)
    }

    /// Whole chunks under `prefix` read back from `end` (inclusive) until they hold `wanted`
    /// lines, oldest first, with each line's place; `more` when older chunks exist.
    fn log_chunks_back(
        &self,
        prefix: &[u8],
        end: Vec<u8>,
        wanted: usize,
    ) -> Result<LogWindow, StoreError> {
        let mut chunks: Vec<(u32, Vec<LogLine>)> = Vec::new();
        let mut count = 0;
        let mut more = false;
        for entry in self.inner.logs.range(prefix.to_vec()..=end).rev() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            if count >= wanted {
                more = true;
                break;
            }
            let lines = decode_chunk(&k, &v)?;
            count += lines.len();
            chunks.push((chunk_number(&k).unwrap_or(0), lines));
        }
        let mut window = LogWindow {
            lines: Vec::with_capacity(count),
            places: Vec::with_capacity(count),
            more,
        };
        for (chunk, lines) in chunks.into_iter().rev() {
            for (i, line) in lines.into_iter().enumerate() {
                window.places.push(LinePlace::new(chunk, i));
                window.lines.push(line);
            }
        }
        Ok(window)
    }

    /// Where the log of a run stands now: a cursor that `logs_page` reads on from, missing
    /// nothing written after this call.
    pub fn log_end(&self, run_id: &str) -> Result<LogCursor, StoreError> {
        let prefix = key(&[run_id.as_bytes(), b""]);
        let mut cursor = LogCursor::default();
        let mut from = prefix.clone();
        // One seek per step: its last chunk is found from the first key past the step's range.
        loop {
            let Some(entry) = self.inner.logs.range(from.clone()..).next() else {
                break;
            };
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((step, _)) = step_and_chunk(run_id, &k) else {
                break;
            };
            let step_prefix = key(&[run_id.as_bytes(), &step_index(step), b""]);
            if let Some(last) = self.inner.logs.scan_prefix(&step_prefix).next_back() {
                let (k, _) = last.map_err(|e| self.db_err(e))?;
                if let Some((_, chunk)) = step_and_chunk(run_id, &k) {
                    cursor.seen.insert(step, chunk);
                }
            }
            match step.checked_add(1) {
                Some(next) => from = key(&[run_id.as_bytes(), &step_index(next), b""]),
                None => break,
            }
        }
        Ok(cursor)
    }

    // ---- outputs ---------------------------------------------------------------------------

    /// Stores a step output; a secret one is sealed.
    pub fn put_output(
        &self,
        run_id: &str,
        step: &str,
        name: &str,
        value: &str,
        secret: bool,
    ) -> Result<(), StoreError> {
        let k = key(&[run_id.as_bytes(), step.as_bytes(), name.as_bytes()]);
        let value = if secret {
            crypto::encode_hex(&self.master_key(true)?.seal(&k, value.as_bytes())?)
        } else {
            value.to_string()
        };
        self.put_json(&self.inner.outputs, &k, &StoredOutput { secret, value })
    }

    /// The stored outputs of a run, in key order: (key, step, name, stored form).
    fn stored_outputs(
        &self,
        run_id: &str,
    ) -> Result<Vec<(sled::IVec, String, String, StoredOutput)>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .outputs
            .scan_prefix(key(&[run_id.as_bytes(), b""]))
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let stored: StoredOutput = decode(&k, &v)?;
            let mut parts = key_parts(&k).into_iter().skip(1);
            let step = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            out.push((k, step, name, stored));
        }
        Ok(out)
    }

    /// The outputs of a run with their values, secret ones opened: (step, name, value, secret).
    /// Only for handing them to a later run (a retry reuses them), never for showing.
    pub fn output_values(
        &self,
        run_id: &str,
    ) -> Result<Vec<(String, String, String, bool)>, StoreError> {
        let mut out = Vec::new();
        for (k, step, name, stored) in self.stored_outputs(run_id)? {
            let value = if stored.secret {
                let sealed = crypto::decode_hex(&stored.value).ok_or_else(|| {
                    StoreError::Crypto(format!("output {step}.{name} of run {run_id} is not hex"))
                })?;
                let open = self.master_key(false)?.open(&k, &sealed)?;
                String::from_utf8_lossy(&open).into_owned()
            } else {
                stored.value
            };
            out.push((step, name, value, stored.secret));
        }
        Ok(out)
    }

    /// The outputs of a run; secret values are left out.
    pub fn outputs(&self, run_id: &str) -> Result<Vec<OutputRecord>, StoreError> {
        Ok(self
            .stored_outputs(run_id)?
            .into_iter()
            .map(|(_, step, name, stored)| OutputRecord {
                step,
                name,
                secret: stored.secret,
                value: (!stored.secret).then_some(stored.value),
            })
            .collect())
    }

    // ---- publications ----------------------------------------------------------------------

    /// Stores what a publish step resolved; secret credential values are sealed.
    pub fn put_publication(
        &self,
        run_id: &str,
        step: &str,
        publication: &Publication,
    ) -> Result<(), StoreError> {
        let k = key(&[run_id.as_bytes(), step.as_bytes()]);
        let mut sealed = publication.clone();
        for (i, set) in sealed.credentials.iter_mut().enumerate() {
            for param in set.parameters.iter_mut().filter(|p| p.is_secret) {
                let aad = key(&[&k, i.to_string().as_bytes(), param.key.as_bytes()]);
                param.value =
                    crypto::encode_hex(&self.master_key(true)?.seal(&aad, param.value.as_bytes())?);
            }
        }
        self.put_json(&self.inner.publications, &k, &sealed)
    }

    /// What a run published, by step. With `reveal`, secret credential values are decrypted (for a
    /// consumer creating a connection); without, they read `***`.
    pub fn publications(
        &self,
        run_id: &str,
        reveal: bool,
    ) -> Result<Vec<(String, Publication)>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .publications
            .scan_prefix(key(&[run_id.as_bytes(), b""]))
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let mut publication: Publication = decode(&k, &v)?;
            for (i, set) in publication.credentials.iter_mut().enumerate() {
                for param in set.parameters.iter_mut().filter(|p| p.is_secret) {
                    param.value = if reveal {
                        let aad = key(&[&k, i.to_string().as_bytes(), param.key.as_bytes()]);
                        let sealed = crypto::decode_hex(&param.value).ok_or_else(|| {
                            StoreError::Crypto(format!(
                                "the sealed credential {} of {} is damaged (not hex)",
                                param.key,
                                show_key(&k)
                            ))
                        })?;
                        String::from_utf8_lossy(&self.master_key(false)?.open(&aad, &sealed)?)
                            .into_owned()
                    } else {
                        crate::executor::mask::MASK.to_string()
                    };
                }
            }
            let step = key_parts(&k).into_iter().nth(1).unwrap_or_default();
            out.push((step, publication));
        }
        Ok(out)
    }
}

/// Where a reader of a live log has got to: the last chunk seen per step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    seen: BTreeMap<usize, u32>,
}

impl LogCursor {
    /// The last chunk seen of `step`.
    pub fn chunk(&self, step: usize) -> Option<u32> {
        self.seen.get(&step).copied()
    }

    /// As text for a URL or an SSE event id: `step:chunk` pairs joined by `.` (`0:5.1:3`).
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self.seen.iter().map(|(s, c)| format!("{s}:{c}")).collect();
        parts.join(".")
    }

    /// Reads what `encode` wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<LogCursor> {
        let mut seen = BTreeMap::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (step, chunk) = part.split_once(':')?;
            seen.insert(step.parse().ok()?, chunk.parse().ok()?);
        }
        Some(LogCursor { seen })
    }
}

/// Lines of a step's log read from its end (`Store::log_tail_before`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogWindow {
    pub lines: Vec<LogLine>,
    /// Where each of `lines` is in its step's log.
    pub places: Vec<LinePlace>,
    /// Whether older lines exist before the first one.
    pub more: bool,
}

/// A log line with its step's index and its place in that step's log.
pub type PlacedLine = (usize, LinePlace, LogLine);

/// Where a line is in its step's log: its chunk, and its index in the chunk. Chunks are
/// written once and never change, so a place names the same line for as long as the log is
/// kept (a link to a line stays right while the step goes on writing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinePlace {
    pub chunk: u32,
    pub index: u32,
}

impl LinePlace {
    fn new(chunk: u32, index: usize) -> LinePlace {
        LinePlace {
            chunk,
            index: u32::try_from(index).unwrap_or(u32::MAX),
        }
    }
}

/// A step index as it stands in keys: 4 bytes, big-endian (plans are far smaller than 2^32).
fn step_index(index: usize) -> [u8; 4] {
    u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes()
}

fn step_key(run_id: &str, index: usize) -> Vec<u8> {
    key(&[run_id.as_bytes(), &step_index(index)])
}

fn log_key(run_id: &str, step: usize, chunk: u32) -> Vec<u8> {
    key(&[run_id.as_bytes(), &step_index(step), &chunk.to_be_bytes()])
}

fn chunk_number(k: &[u8]) -> Option<u32> {
    k.get(k.len().checked_sub(4)?..)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
}

fn step_and_chunk(run_id: &str, k: &[u8]) -> Option<(usize, u32)> {
    let rest = k.get(run_id.len() + 1..)?;
    let step = u32::from_be_bytes(<[u8; 4]>::try_from(rest.get(..4)?).ok()?);
    Some((usize::try_from(step).ok()?, chunk_number(k)?))
}

/// A stored log chunk's lines, either form (`log_chunk.rs`).
fn decode_chunk(key: &[u8], bytes: &[u8]) -> Result<Vec<LogLine>, StoreError> {
    log_chunk::decode(bytes).map_err(|source| StoreError::CorruptChunk {
        key: show_key(key),
        source,
    })
}
