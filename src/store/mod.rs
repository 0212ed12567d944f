//! The store: the only module that touches the embedded database (sled).
//!
//! # Layout (schema version 3)
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
//! | `steps` | `run id \0 step index:u32` | `StepRecord` |
//! | `logs` | `run id \0 step index:u32 \0 chunk:u32` | a chunk of log lines, binary (`log_chunk.rs`); JSON `[LogLine]` when written by schema version 2 |
//! | `outputs` | `run id \0 step \0 name` | `{secret, value}`; a secret value is sealed |
//! | `publications` | `run id \0 step` | the resolved resource; secret credential values sealed |
//! | `vars` | `pipeline or "" \0 name` | the value (UTF-8 bytes) |
//! | `secrets` | `pipeline or "" \0 name` | a release flag byte (0 protected, 1 unprotected), then the sealed value (`crypto.rs`); the associated data is the key (protected) or `key \0 unprotected` |
//! | `pipelines` | `source \0 name` | `PipelineRecord` |
//! | `sources` | repository name | `SourceState` |
//! | `schedule_marks` | `source \0 name \0 schedule index:u16` | last fire time, ms since the epoch, i64 big-endian |
//! | `deliveries` | `forge \0 delivery id` | `DeliveryRecord` without its body, which is in the body log (`bodies.rs`, `<data dir>/bodies/`) at its `body_at`; records written before the body log existed hold the body inline |
//! | `delivery_queue` | sequence number, u64 big-endian | the `deliveries` key of an unprocessed delivery |
//! | `outbox` | supersede key (`status \0 source \0 sha \0 context`, `comment \0 source \0 pr`, ...) | `OutboxJob` |
//! | `prs` | `source \0 pr number:u64` | `PrRecord` |
//! | `idempotency` | idempotency key (`<forge>/<delivery id>/run/<pipeline file path>`, `.../reply`) | what it made, once: a run id, or `reply` (UTF-8) |
//! | `delivery_hashes` | sha256 of a delivery's raw body, 32 bytes | the `deliveries` key of the first delivery with that body |
//! | `resources` | resource name | `ResourceRecord` (the marketplace's listing) |
//! | `resource_versions` | `name \0 number:u64` | `ResourceVersion`; secret credential values sealed, the associated data `resource \0 name \0 number \0 environment \0 key` |
//! | `resource_index` | `type \0 category or kind \0 name`, `tag \0 tag \0 name` | empty |
//! | `resource_provenance` | `run id \0 step` | `PublishedAs`: the version a publish step made or matched |
//! | `connections` | connection name | `ConnectionRecord` |
//!
//! Variables and secrets scoped to a pipeline use `source/name` as the scope (`gantry run FILE`
//! uses the bare pipeline name, as its source is the file).
//!
//! Tables added after schema version 1 shipped are new trees only (no existing key changes), so
//! they need no migration: sled creates an empty tree on first open.
//!
//! # Durability
//!
//! sled makes writes durable at `flush` (and in the background every 500 ms). A state change that
//! must survive a crash is flushed before it is acted on: a run is flushed as queued before any of
//! its steps starts, and again when it ends; variables and secrets are flushed before the command
//! that set them returns; pipeline records and source states before the reconciler moves on; a
//! schedule's last tick before the run it fires is queued (so a tick fires at most once). Step transitions and log chunks are not flushed one by one: a run cut
//! short by a crash is never resumed but marked interrupted on the next start (the `run` module
//! finds its leftover processes by the `GANTRY_RUN_ID` in their environment), so they need only
//! be as fresh as the background flush keeps them. Flushing each one would cost an fsync per step,
//! more than starting the step's process does.
//!
//! # Retention
//!
//! `prune` (in `retention.rs`) removes ended runs older than the configured age (with their
//! steps, log chunks and outputs) beyond a floor of the newest runs per pipeline, and empties the
//! body of old processed deliveries (their record stays, so their id is still a duplicate).
//! Queued and running runs, runs that published something, and unprocessed deliveries are never
//! pruned.
//!
//! # Migrations
//!
//! `open` reads `meta/schema_version`: a new database gets the current version; an older one is
//! migrated step by step in `migrate`; a newer one is refused (an older Gantry must not rewrite a
//! layout it does not know).
//!
//! - 1 → 2: each `secrets` value gets the release flag byte in front, 0 (protected): secrets set
//!   before releases existed stay where they were trusted. The sealed bytes and their associated
//!   data do not change, so the migration needs no master key.
//! - 2 → 3: log chunks are written binary (`log_chunk.rs`). Chunks already written stay JSON and
//!   are read as such, so nothing is rewritten; the version only keeps an older Gantry, which
//!   could not read the new chunks, from opening the data dir.

pub mod audit;
mod bodies;
mod catalog;
mod config;
pub mod crypto;
mod forge;
mod health;
mod log_chunk;
mod marketplace;
pub mod records;
mod retention;
mod runs;
pub mod sessions;
pub mod space;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bodies::Location as BodyLocation;
pub use config::ResolvedSecrets;
pub use forge::{DeliveryRecord, OutboxAction, OutboxJob, PrRecord};
pub use marketplace::{
    ConnectionRecord, CredentialValue, Deprecation, Provenance, PublishedAs, ResourceOwner,
    ResourceRecord, ResourceVersion,
};
pub use records::*;
pub use retention::{Pruned, Retention};
pub use runs::{LinePlace, LogCursor, LogWindow, NewRun, new_run_id};
pub use space::{LowSpace, MinFree};

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 3;

/// The `tracing` target of the errors that end the process (a failed store): written
/// `gantry: fatal: ...` for a person.
pub const FATAL: &str = "gantry::fatal";

/// The fewest characters a secret may have (shorter ones would mask ordinary text in logs).
pub const MIN_SECRET_CHARS: usize = 4;

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
    #[error("stored log chunk {key} is unreadable: {source}")]
    CorruptChunk {
        key: String,
        #[source]
        source: log_chunk::ChunkError,
    },
    #[error(
        "the data dir was written by a newer Gantry (schema version {found}, this build knows {SCHEMA_VERSION}); upgrade gantry"
    )]
    TooNew { found: u32 },
    #[error("master key: {0}")]
    Key(String),
    #[error("{0}")]
    Crypto(String),
    #[error(transparent)]
    LowSpace(#[from] LowSpace),
    #[error(
        "secret `{name}` is {len} character(s) long; a secret has at least {MIN_SECRET_CHARS}, so that masking it in logs hides it without hiding ordinary text"
    )]
    SecretTooShort { name: String, len: usize },
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
    pipelines: sled::Tree,
    sources: sled::Tree,
    schedule_marks: sled::Tree,
    deliveries: sled::Tree,
    delivery_queue: sled::Tree,
    outbox: sled::Tree,
    prs: sled::Tree,
    idempotency: sled::Tree,
    delivery_hashes: sled::Tree,
    resources: sled::Tree,
    resource_versions: sled::Tree,
    resource_index: sled::Tree,
    resource_provenance: sled::Tree,
    connections: sled::Tree,
    /// Web sessions (`sessions.rs`).
    sessions: sled::Tree,
    /// The audit log (`audit.rs`).
    audit: sled::Tree,
    /// Delivery bodies (`bodies.rs`).
    bodies: bodies::BodyLog,
    group: forge::GroupCommit,
    key: OnceLock<crypto::MasterKey>,
    /// Where run directories live (`[storage] work_dir`); a sibling of the data dir unless set.
    work_dir: OnceLock<PathBuf>,
    /// Deliveries queued and not yet processed (counted at open, then kept up to date).
    backlog: std::sync::atomic::AtomicU64,
    /// The data dir's free space and its reserve.
    space: space::Space,
    /// The first fatal error, and store calls in progress.
    health: health::Health,
}

/// sled 0.34 reports a held lock as ErrorKind::Other with this text (config.rs, `try_lock`), so
/// the text is all there is to go by.
fn is_lock_error(error: &std::io::Error) -> bool {
    error.to_string().starts_with("could not acquire lock")
}

/// Opens the sled database, waiting a moment if its lock is held. A dropped `Db` releases the
/// lock only when sled's background threads have let go of the file, which can be a few
/// milliseconds after the drop; a command started right after another one ended, or a test that
/// reopens a store, would otherwise see "in use" for a store nobody holds any more. A lock that
/// is still held after the grace period belongs to another live process.
fn open_db(path: &Path, cache: u64) -> sled::Result<sled::Db> {
    const GRACE: std::time::Duration = std::time::Duration::from_secs(2);
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).cache_capacity(cache).open() {
            Err(sled::Error::Io(io)) if is_lock_error(&io) && started.elapsed() < GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// sled's page cache when the config does not say: small, since everything in it is on disk (and
/// in the OS's page cache while it is recent). What sled holds is records of a few hundred bytes
/// (webhook bodies and log lines are the bulk, and bodies live in the body log); 4 MiB holds
/// about ten thousand of them, and keeps a 10 s burst of webhooks under 64 MiB of RSS
/// (`gantry bench webhooks --seconds 10`: 53-57 MiB at 8.5 KB and at 30 KB, 60-65 MiB with 8
/// MiB, at the same rate).
pub const DEFAULT_CACHE: u64 = 4 << 20;

/// The default work dir for a data dir.
///
/// Run directories must be reachable by other users when Gantry runs as root (steps then run as
/// an unprivileged user). When a folder above the sibling is closed to them (`/root` is 0700),
/// the work dir is a folder of root's own under `/tmp` instead, named after the data dir, made
/// with `mkdir` and checked (root's, not a symlink, mode 0711) so nobody else can have planted it.
fn default_work_dir(data_dir: &Path) -> PathBuf {
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gantry".into());
    let base = name.strip_suffix("-data").unwrap_or(&name);
    let sibling_name = format!("{base}-work");
    let parent = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    let sibling = parent.join(sibling_name);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || open_to_others(&parent) {
        return sibling;
    }
    match private_tmp_dir("work", &dir) {
        Ok(fallback) => fallback,
        // Creating the run directory then fails with the sibling's path in the message.
        Err(_) => sibling,
    }
}

/// `/tmp/gantry-<what>-<tag>`, a folder of this process's user named after `data_dir` (the tag is
/// a hash of its path), made and checked with `private_dir`: where root keeps what another user
/// must reach when the data dir sits under a folder closed to others (as `/root` is).
pub fn private_tmp_dir(what: &str, data_dir: &Path) -> std::io::Result<PathBuf> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = PathBuf::from(format!("/tmp/gantry-{what}-{tag}"));
    private_dir(&dir)?;
    Ok(dir)
}

/// Whether every folder from `dir` up is traversable by users other than its owner and group.
pub fn open_to_others(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|d| {
        std::fs::metadata(d)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(true)
    })
}

/// Makes (or finds) `dir` as a folder of this process's user, mode 0711, refusing a symlink or a
/// folder of anyone else.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a private folder of this user",
            dir.display()
        )));
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `dir`. A new data dir is made readable by its owner only,
    /// and gets a `.gitignore` of `*`: it often sits inside the repository a pipeline runs from
    /// (`./gantry-data`), and must then never be copied into a run's workspace or committed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, DEFAULT_CACHE)
    }

    /// Like `open`, with sled's page cache capped at `cache` bytes (`[storage] cache`). The cache
    /// is most of the store's memory: sled's own default is 1 GiB, which a burst of webhook
    /// deliveries fills, although everything in it is on disk already.
    pub fn open_with(dir: &Path, cache: u64) -> Result<Store, StoreError> {
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
        let db = open_db(&path, cache).map_err(|source| match &source {
            sled::Error::Io(io) if is_lock_error(io) => StoreError::Locked {
                path: dir.to_path_buf(),
            },
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
            pipelines: tree("pipelines")?,
            sources: tree("sources")?,
            schedule_marks: tree("schedule_marks")?,
            deliveries: tree("deliveries")?,
            delivery_queue: tree("delivery_queue")?,
            outbox: tree("outbox")?,
            prs: tree("prs")?,
            idempotency: tree("idempotency")?,
            delivery_hashes: tree("delivery_hashes")?,
            resources: tree("resources")?,
            resource_versions: tree("resource_versions")?,
            resource_index: tree("resource_index")?,
            resource_provenance: tree("resource_provenance")?,
            connections: tree("connections")?,
            sessions: tree("sessions")?,
            audit: tree("audit")?,
            bodies: bodies::BodyLog::new(dir.join("bodies")),
            group: forge::GroupCommit::new(),
            db,
            dir: dir.to_path_buf(),
            key: OnceLock::new(),
            work_dir: OnceLock::new(),
            backlog: std::sync::atomic::AtomicU64::new(0),
            space: space::Space::new(dir),
            health: health::Health::default(),
        };
        let store = Store {
            inner: std::sync::Arc::new(inner),
        };
        store.check_schema()?;
        let backlog = store.inner.delivery_queue.len() as u64;
        store
            .inner
            .backlog
            .store(backlog, std::sync::atomic::Ordering::Relaxed);
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where run directories live: outside the data dir, so that a step's sandbox, which shows
    /// its run directory, never sits inside Gantry's own state. Set once, before the first run;
    /// by default a sibling of the data dir (`gantry-data` → `gantry-work`, else `<name>-work`).
    pub fn work_dir(&self) -> &Path {
        self.inner
            .work_dir
            .get_or_init(|| default_work_dir(&self.inner.dir))
    }

    /// Sets the work dir; has no effect once it has been read.
    pub fn set_work_dir(&self, dir: PathBuf) {
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let _ = self.inner.work_dir.set(dir);
    }

    /// The directory of run `id`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.work_dir().join(id)
    }

    /// A sled error as the store's; a fatal one (`health::is_fatal`) is also the store's
    /// failure, handed once to the failure handler.
    fn db_err(&self, source: sled::Error) -> StoreError {
        let path = self.inner.dir.join("db");
        if health::is_fatal(&source) {
            self.inner
                .health
                .fail(format!("the store at {} failed: {source}", path.display()));
        }
        StoreError::Db { path, source }
    }

    /// What to do on the store's first fatal error (`gantry serve` exits, so that its supervisor
    /// restarts it into sled's recovery); called at once if one happened already.
    pub fn on_failure(&self, handler: impl Fn(&str) + Send + Sync + 'static) {
        self.inner.health.on_failure(Box::new(handler));
    }

    /// Marks the store failed from outside (a call that never returned, seen by a watchdog).
    pub fn fail(&self, message: String) {
        self.inner.health.fail(message);
    }

    /// The store's first fatal error, if there was one.
    pub fn failure(&self) -> Option<&str> {
        self.inner.health.failure()
    }

    /// The oldest store call that has been running for longer than `longer`, and its age.
    pub fn stuck(
        &self,
        longer: std::time::Duration,
    ) -> Option<(&'static str, std::time::Duration)> {
        self.inner.health.stuck(longer)
    }

    /// Sets the free space kept on the data dir's file system (`[storage] min_free`).
    pub fn set_min_free(&self, min_free: MinFree) {
        self.inner.space.set_min_free(min_free);
    }

    /// Whether new work may be taken: the data dir's file system is above its reserve. Cheap
    /// (a fresh reading at most once a second).
    pub fn space_left(&self) -> Result<(), LowSpace> {
        self.inner.space.check()
    }

    /// The data dir's free space, its size and the reserve, as of now.
    pub fn space(&self) -> space::Reading {
        self.inner.space.reading()
    }

    /// Counts `bytes` about to be written against the free space.
    pub(crate) fn note_write(&self, bytes: usize) {
        self.inner.space.note_write(bytes);
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
            if from == 1 {
                self.migrate_secrets_v2()?;
            }
            from += 1;
            self.inner
                .meta
                .insert(b"schema_version", &from.to_be_bytes())
                .map_err(|e| self.db_err(e))?;
            self.flush()?;
        }
        Ok(())
    }

    /// 1 → 2: the release flag in front of every secret (protected). The values and the new
    /// schema version are written in one transaction, so a crash leaves either all of it or
    /// none (a half-done run would otherwise prefix some values twice when resumed).
    fn migrate_secrets_v2(&self) -> Result<(), StoreError> {
        use sled::Transactional;
        let mut old = Vec::new();
        for entry in self.inner.secrets.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            old.push((k, v));
        }
        let written: Result<(), sled::transaction::TransactionError<()>> =
            (&self.inner.secrets, &self.inner.meta).transaction(|(secrets, meta)| {
                for (k, v) in &old {
                    secrets.insert(k.as_ref(), config::v1_secret_to_v2(v))?;
                }
                meta.insert(b"schema_version".as_ref(), &2u32.to_be_bytes())?;
                Ok(())
            });
        match written {
            Ok(()) => Ok(()),
            Err(sled::transaction::TransactionError::Storage(e)) => Err(self.db_err(e)),
            Err(sled::transaction::TransactionError::Abort(())) => Ok(()),
        }
    }

    /// Makes the delivery bodies appended so far durable; a failure is the store's failure.
    fn sync_bodies(&self) -> Result<(), StoreError> {
        self.inner
            .bodies
            .sync()
            .map_err(|e| self.body_err("syncing", e))
    }

    /// An I/O error of the body log: like one of sled's, the store's failure.
    fn body_err(&self, what: &str, source: std::io::Error) -> StoreError {
        let context = format!(
            "{what} webhook bodies in {}",
            self.inner.bodies.dir().display()
        );
        self.inner
            .health
            .fail(format!("the store failed {context}: {source}"));
        StoreError::Io { context, source }
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _op = self.inner.health.op("flush");
        self.sync_bodies()?;
        self.inner
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| self.db_err(e))
    }

    /// `flush` for async callers: runs the fsync off the async worker threads.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        let _op = self.inner.health.op("flush");
        let store = self.clone();
        // The body log and sled sync side by side: an answer waits for one fsync, not two.
        let bodies = async {
            tokio::task::spawn_blocking(move || store.sync_bodies())
                .await
                .map_err(|e| StoreError::io("syncing delivery bodies", std::io::Error::other(e)))?
        };
        let records = async {
            self.inner
                .db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| self.db_err(e))
        };
        let (bodies, records) = tokio::join!(bodies, records);
        bodies.and(records)
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
        self.note_write(key.len() + bytes.len());
        let _op = self.inner.health.op("write");
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
