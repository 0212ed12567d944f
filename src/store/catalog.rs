//! The pipeline catalog: which pipelines exist, their versions, what each watched repository was
//! last synced at, and when each schedule last fired.

use chrono::{DateTime, TimeZone, Utc};

use super::records::{PipelineRecord, PipelineVersion, SourceState};
use super::{Store, StoreError, decode, key};

fn pipeline_key(source: &str, name: &str) -> Vec<u8> {
    key(&[source.as_bytes(), name.as_bytes()])
}

impl Store {
    /// Stores a pipeline record and flushes: the reconciler acts on what it wrote.
    pub fn put_pipeline(&self, record: &PipelineRecord) -> Result<(), StoreError> {
        self.put_json(
            &self.inner.pipelines,
            &pipeline_key(&record.source, &record.name),
            record,
        )?;
        self.flush()
    }

    pub fn get_pipeline(
        &self,
        source: &str,
        name: &str,
    ) -> Result<Option<PipelineRecord>, StoreError> {
        self.get_json(&self.inner.pipelines, &pipeline_key(source, name))
    }

    /// Every pipeline, or those of one source, ordered by source and name.
    pub fn list_pipelines(&self, source: Option<&str>) -> Result<Vec<PipelineRecord>, StoreError> {
        let prefix = source
            .map(|s| key(&[s.as_bytes(), b""]))
            .unwrap_or_default();
        let mut out = Vec::new();
        for entry in self.inner.pipelines.scan_prefix(prefix) {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every version of a pipeline, oldest first.
    pub fn versions(&self, source: &str, name: &str) -> Result<Vec<PipelineVersion>, StoreError> {
        let prefix = key(&[format!("{source}/{name}").as_bytes(), b""]);
        let mut out = Vec::new();
        for entry in self.inner.pipeline_versions.scan_prefix(prefix) {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    pub fn get_version(
        &self,
        source: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<PipelineVersion>, StoreError> {
        let k = key(&[
            format!("{source}/{name}").as_bytes(),
            &version.to_be_bytes(),
        ]);
        self.get_json(&self.inner.pipeline_versions, &k)
    }

    pub fn source_state(&self, source: &str) -> Result<SourceState, StoreError> {
        Ok(self
            .get_json(&self.inner.sources, source.as_bytes())?
            .unwrap_or_default())
    }

    /// Stores what a sync saw, flushed.
    pub fn put_source_state(&self, source: &str, state: &SourceState) -> Result<(), StoreError> {
        self.put_json(&self.inner.sources, source.as_bytes(), state)?;
        self.flush()
    }

    /// When schedule `index` of a pipeline last fired.
    pub fn schedule_mark(
        &self,
        source: &str,
        name: &str,
        index: u16,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let k = key(&[source.as_bytes(), name.as_bytes(), &index.to_be_bytes()]);
        let stored = self
            .inner
            .schedule_marks
            .get(k)
            .map_err(|e| self.db_err(e))?;
        Ok(stored
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes)
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()))
    }

    /// Records that schedule `index` fired for the tick at `at`, flushed before the run is
    /// created, so a tick fires at most once even across a crash. Returns false (and writes
    /// nothing) when that tick, or a later one, was already recorded.
    pub fn mark_schedule(
        &self,
        source: &str,
        name: &str,
        index: u16,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let k = key(&[source.as_bytes(), name.as_bytes(), &index.to_be_bytes()]);
        let new = at.timestamp_millis().to_be_bytes();
        let mut claimed = false;
        self.inner
            .schedule_marks
            .fetch_and_update(&k, |old| {
                let old_ms = old
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map(i64::from_be_bytes);
                if old_ms.is_some_and(|o| o >= at.timestamp_millis()) {
                    claimed = false;
                    old.map(<[u8]>::to_vec)
                } else {
                    claimed = true;
                    Some(new.to_vec())
                }
            })
            .map_err(|e| self.db_err(e))?;
        if claimed {
            self.flush()?;
        }
        Ok(claimed)
    }

    /// Runs waiting to start, oldest first (the durable queue).
    pub fn queued_runs(&self) -> Result<Vec<super::RunRecord>, StoreError> {
        Ok(self
            .active_runs()?
            .into_iter()
            .filter(|r| r.status == super::RunStatus::Queued)
            .collect())
    }
}
