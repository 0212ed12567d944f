//! The store: the only module that touches the embedded database (sled).
//!
//! # Layout (schema version 1)
//!
//! Every value is JSON unless noted; `\0` separates key parts; numbers in keys are big-endian so
//! that sled's byte order is their numeric order.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` | u32, big-endian |
//! | `pipeline_versions` | `source/name \0 version:u32` | `PipelineVersion` |
//! | `run_numbers` | `source/name` | last run number, u64 big-endian |
//! | `runs` | run id (26-char sortable id) | `RunRecord` |
//! | `steps` | `run id \0 step index:u16` | `StepRecord` |
//! | `logs` | `run id \0 step index:u16 \0 chunk:u32` | a chunk: `[LogLine]` |
//! | `outputs` | `run id \0 step \0 name` | `{secret, value}`; a secret value is sealed |
//! | `publications` | `run id \0 step` | the resolved resource; secret credential values sealed |
//! | `vars` | `pipeline or "" \0 name` | the value (UTF-8 bytes) |
//! | `secrets` | `pipeline or "" \0 name` | sealed value (`crypto.rs`), the key is its associated data |
//!
//! # Durability
//!
//! sled makes writes durable at `flush` (and in the background every 500 ms). A state change that
//! must survive a crash is flushed before it is acted on: a run is flushed as queued before any of
//! its steps starts, and again when it ends; variables and secrets are flushed before the command
//! that set them returns. Step transitions and log chunks are not flushed one by one: a run cut
//! short by a crash is never resumed but marked interrupted on the next start (the `run` module
//! finds its leftover processes by the `GANTRY_RUN_ID` in their environment), so they need only
//! be as fresh as the background flush keeps them. Flushing each one would cost an fsync per step,
//! more than starting the step's process does.
//!
//! # Migrations
//!
//! `open` reads `meta/schema_version`: a new database gets the current version; an older one is
//! migrated step by step in `migrate`; a newer one is refused (an older Gantry must not rewrite a
//! layout it does not know).

mod config;
pub mod crypto;
pub mod records;
mod runs;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use records::*;
pub use runs::NewRun;

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data dir {path} is in use by another gantry process; wait for it to finish, or use another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("database error in {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the data dir was written by a newer Gantry (schema version {found}, this build knows {SCHEMA_VERSION}); upgrade gantry"
    )]
    TooNew { found: u32 },
    #[error("master key: {0}")]
    Key(String),
    #[error("{0}")]
    Crypto(String),
    #[error("no run matches `{0}`")]
    NoSuchRun(String),
    #[error("run {run} has no step number {step}")]
    NoSuchStep { run: String, step: usize },
    #[error("`{0}` matches more than one run; give more characters of the id")]
    AmbiguousRun(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// An open store. Cheap to clone; all clones share the database.
#[derive(Clone)]
pub struct Store {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    pipeline_versions: sled::Tree,
    run_numbers: sled::Tree,
    runs: sled::Tree,
    steps: sled::Tree,
    logs: sled::Tree,
    outputs: sled::Tree,
    publications: sled::Tree,
    vars: sled::Tree,
    secrets: sled::Tree,
    key: OnceLock<crypto::MasterKey>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. A new data dir is made readable by its owner only,
    /// and gets a `.gitignore` of `*`: it often sits inside the repository a pipeline runs from
    /// (`./gantry-data`), and must then never be copied into a run's workspace or committed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError::io(format!("cannot create the data dir {}", dir.display()), e)
            })?;
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(
                &ignore,
                "# Gantry's data dir: never commit it or copy it into a workspace.\n*\n",
            )
            .map_err(|e| StoreError::io(format!("cannot write {}", ignore.display()), e))?;
        }
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| match &source {
                // sled 0.34 reports a held lock as ErrorKind::Other with this text (config.rs,
                // `try_lock`), so the text is all there is to go by.
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    StoreError::Locked {
                        path: dir.to_path_buf(),
                    }
                }
                _ => StoreError::Db {
                    path: path.clone(),
                    source,
                },
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Db {
                path: path.clone(),
                source,
            })
        };
        let inner = Inner {
            meta: tree("meta")?,
            pipeline_versions: tree("pipeline_versions")?,
            run_numbers: tree("run_numbers")?,
            runs: tree("runs")?,
            steps: tree("steps")?,
            logs: tree("logs")?,
            outputs: tree("outputs")?,
            publications: tree("publications")?,
            vars: tree("vars")?,
            secrets: tree("secrets")?,
            db,
            dir: dir.to_path_buf(),
            key: OnceLock::new(),
        };
        let store = Store {
            inner: std::sync::Arc::new(inner),
        };
        store.check_schema()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn db_err(&self, source: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.inner.dir.join("db"),
            source,
        }
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let found = self
            .inner
            .meta
            .get(b"schema_version")
            .map_err(|e| self.db_err(e))?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        match found {
            None => {
                self.inner
                    .meta
                    .insert(b"schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| self.db_err(e))?;
                self.flush()
            }
            Some(v) if v == SCHEMA_VERSION => Ok(()),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::TooNew { found: v }),
            Some(v) => self.migrate(v),
        }
    }

    /// Brings an older layout up to `SCHEMA_VERSION`, one version at a time. Each step rewrites
    /// what changed and records its version, so an interrupted migration resumes where it stopped.
    fn migrate(&self, mut from: u32) -> Result<(), StoreError> {
        while from < SCHEMA_VERSION {
            // No earlier layout has shipped; the first migration goes here, as `from => { ... }`.
            from += 1;
            self.inner
                .meta
                .insert(b"schema_version", &from.to_be_bytes())
                .map_err(|e| self.db_err(e))?;
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| self.db_err(e))
    }

    /// `flush` for async callers: runs the fsync off the async worker threads.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.db_err(e))
    }

    /// The master key; `create` only on paths that seal (see `MasterKey::load`).
    fn master_key(&self, create: bool) -> Result<&crypto::MasterKey, StoreError> {
        if let Some(key) = self.inner.key.get() {
            return Ok(key);
        }
        let key = crypto::MasterKey::load(&self.inner.dir, create)?;
        Ok(self.inner.key.get_or_init(|| key))
    }

    fn put_json<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
            key: show_key(key),
            source,
        })?;
        tree.insert(key, bytes).map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(|e| self.db_err(e))? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: show_key(key),
        source,
    })
}

/// A key for messages: parts joined by `/`, numbers as they are stored.
fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

/// The parts of a key, as text.
fn key_parts(key: &[u8]) -> Vec<String> {
    key.split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// Joins key parts with `\0`.
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests;
