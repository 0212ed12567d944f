//! The pipeline catalog: keeps the store's pipelines in step with their definitions.
//!
//! A reconciler in the kube-rs sense. For a watched repository the desired state is the set of
//! pipeline files at the head of its branch; the observed state is what the store holds. `sync`
//! fetches the mirror and `reconcile` closes the gap:
//!
//! - a file whose text changed (or is new) and is valid becomes a new version, pinned to the
//!   commit it was read at;
//! - an invalid file records its errors (with line and column) on the pipeline and leaves the
//!   last valid version in place, so the pipeline stays runnable;
//! - a pipeline whose file is gone is retired: no new runs, its versions and runs stay;
//! - a file that did not change writes nothing, so reconciling twice is the same as once.
//!
//! Pipelines defined in Gantry (source `local`) have no repository: `apply_local` records each
//! new text as a version, and `rollback_local` makes an earlier version current again (as a new
//! version with the old text, so the history only grows).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use chrono::Utc;

use crate::source::SourceError;
use crate::source::mirror::{Credentials, Mirror};
use crate::spec::diagnostic::Severity;
use crate::store::{PipelineError, PipelineRecord, SourceState, Store, StoreError};

/// The source name of pipelines defined in Gantry.
pub const LOCAL_SOURCE: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the branch `{branch}` of {source_name} does not exist any more")]
    NoBranch { source_name: String, branch: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
}

/// A watched repository, as the catalog needs it.
#[derive(Clone, Debug)]
pub struct RepoSource {
    pub name: String,
    pub url: String,
    pub branch: String,
    pub paths: Vec<String>,
    pub credentials: Option<Credentials>,
    pub mirror_dir: PathBuf,
}

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub head: String,
    /// Pipelines that got a new version.
    pub new_versions: Vec<String>,
    /// Pipelines whose file is now invalid (their last valid version stays current).
    pub invalid: Vec<String>,
    pub retired: Vec<String>,
    /// Nothing had to change.
    pub unchanged: bool,
    /// How long the fetch (or the first clone) took, when `sync` made one.
    pub fetched_in: Option<std::time::Duration>,
}

/// Fetches the repository's mirror (cloning it the first time) and reconciles its pipelines at
/// the branch head. Blocking: call it on `spawn_blocking`. A failure is recorded on the source's
/// state (for the API) and returned.
pub fn sync(
    store: &Store,
    repo: &RepoSource,
    interrupt: &AtomicBool,
) -> Result<Report, CatalogError> {
    let result = fetch_and_reconcile(store, repo, interrupt);
    if let Err(e) = &result {
        let mut state = store.source_state(&repo.name)?;
        state.error = Some(e.to_string());
        state.synced_at = Some(Utc::now());
        store.put_source_state(&repo.name, &state)?;
    }
    result
}

fn fetch_and_reconcile(
    store: &Store,
    repo: &RepoSource,
    interrupt: &AtomicBool,
) -> Result<Report, CatalogError> {
    let existed = repo.mirror_dir.join("HEAD").exists();
    let started = std::time::Instant::now();
    let mirror = Mirror::open_or_clone(
        &repo.mirror_dir,
        &repo.url,
        &repo.branch,
        repo.credentials.clone(),
    )?;
    if existed {
        mirror.fetch(interrupt)?;
    }
    let fetched_in = started.elapsed();
    // Packs that pile up slow every later read; a failed repack leaves them as they were.
    if let Err(e) = mirror.maintain() {
        tracing::warn!("{}: {e}", repo.name);
    }
    let head = mirror
        .head(&repo.branch)?
        .ok_or_else(|| CatalogError::NoBranch {
            source_name: repo.name.clone(),
            branch: repo.branch.clone(),
        })?;
    let mut report = reconcile(store, repo, &mirror, &head)?;
    report.fetched_in = Some(fetched_in);
    Ok(report)
}

/// Makes the store's pipelines of `repo` match the files at `head`. Idempotent.
pub fn reconcile(
    store: &Store,
    repo: &RepoSource,
    mirror: &Mirror,
    head: &str,
) -> Result<Report, CatalogError> {
    let state = store.source_state(&repo.name)?;
    let mut report = Report {
        head: head.to_string(),
        ..Report::default()
    };
    if state.head.as_deref() == Some(head) && state.error.is_none() {
        report.unchanged = true;
        return Ok(report);
    }
    let mut files = BTreeMap::new();
    for path in mirror.list_files(head, &repo.paths)? {
        let bytes = mirror.read_file(head, &path)?.unwrap_or_default();
        files.insert(path, bytes);
    }
    apply_files(store, &repo.name, head, &files, &mut report)?;
    store.put_source_state(
        &repo.name,
        &SourceState {
            head: Some(head.to_string()),
            synced_at: Some(Utc::now()),
            error: None,
        },
    )?;
    report.unchanged =
        report.new_versions.is_empty() && report.invalid.is_empty() && report.retired.is_empty();
    Ok(report)
}

/// The errors of a check, as stored.
pub fn errors_of(path: &str, checked: &crate::spec::Checked) -> Vec<PipelineError> {
    checked
        .diagnostics
        .0
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| PipelineError {
            path: path.to_string(),
            line: d.pos.line,
            column: d.pos.col,
            message: d.message.clone(),
        })
        .collect()
}

/// The pipeline name of a file: `metadata.name` when it can be read, else the file's stem.
pub fn name_of(path: &str, checked: &crate::spec::Checked) -> String {
    checked.name.clone().unwrap_or_else(|| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split('.').next().unwrap_or(file).to_string()
    })
}

/// Records one definition of `source/name` read at `commit`: a new version when the text is
/// valid and differs from the current one, errors when it is invalid. Returns what changed.
fn record_definition(
    store: &Store,
    source: &str,
    name: &str,
    path: &str,
    text: &str,
    commit: Option<&str>,
    checked: &crate::spec::Checked,
) -> Result<Change, StoreError> {
    let existing = store.get_pipeline(source, name)?;
    let current_text = match existing.as_ref().and_then(|p| p.version) {
        Some(v) => store.get_version(source, name, v)?.map(|v| v.text),
        None => None,
    };
    let mut record = existing.clone().unwrap_or_else(|| PipelineRecord {
        source: source.to_string(),
        name: name.to_string(),
        path: path.to_string(),
        version: None,
        commit: None,
        valid: false,
        errors: Vec::new(),
        retired: false,
        updated_at: Utc::now(),
        executor: None,
    });
    let mut change = Change::None;
    record.path = path.to_string();
    record.retired = false;
    if checked.pipeline.is_some() {
        record.valid = true;
        record.errors.clear();
        if current_text.as_deref() != Some(text) {
            let version = store.record_version(source, name, text, path, commit)?;
            record.version = Some(version);
            record.commit = commit.map(str::to_string);
            change = Change::NewVersion;
        }
    } else {
        record.valid = false;
        record.errors = errors_of(path, checked);
        record.commit = commit.map(str::to_string);
        change = Change::Invalid;
    }
    let same = existing.as_ref().is_some_and(|old| {
        let mut old = old.clone();
        old.updated_at = record.updated_at;
        old == record
    });
    if same {
        return Ok(Change::None);
    }
    record.updated_at = Utc::now();
    store.put_pipeline(&record)?;
    Ok(change)
}

enum Change {
    None,
    NewVersion,
    Invalid,
}

fn apply_files(
    store: &Store,
    source: &str,
    head: &str,
    files: &BTreeMap<String, Vec<u8>>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        let checked = crate::spec::check_file(&text, Some(path));
        // A Choreo-shaped file is stored in Gantry's form: it then reads the same anywhere.
        let text = crate::spec::self_contained(&text, Some(path), &checked).into_owned();
        let name = name_of(path, &checked);
        if let Some(first) = seen.get(&name) {
            // Two files, one name: the first (in path order) keeps it, the other is reported on it.
            let mut record = store
                .get_pipeline(source, &name)?
                .ok_or_else(|| StoreError::NoSuchRun(name.clone()))?;
            let error = PipelineError {
                path: path.clone(),
                line: checked.name_pos.line,
                column: checked.name_pos.col,
                message: format!(
                    "the pipeline name `{name}` is already used by {first}; names must be unique \
                     in a repository"
                ),
            };
            if !record.errors.contains(&error) {
                record.errors.push(error);
                store.put_pipeline(&record)?;
            }
            continue;
        }
        seen.insert(name.clone(), path.clone());
        match record_definition(store, source, &name, path, &text, Some(head), &checked)? {
            Change::None => {}
            Change::NewVersion => report.new_versions.push(name),
            Change::Invalid => report.invalid.push(name),
        }
    }
    for mut record in store.list_pipelines(Some(source))? {
        if record.retired || seen.contains_key(&record.name) {
            continue;
        }
        record.retired = true;
        record.updated_at = Utc::now();
        record.commit = Some(head.to_string());
        store.put_pipeline(&record)?;
        report.retired.push(record.name);
    }
    Ok(())
}

/// Every error of a check, rendered as `origin:line:col: error: ...` with the line quoted.
pub fn render_errors(origin: &str, text: &str, checked: &crate::spec::Checked) -> String {
    let lines = crate::spec::diagnostic::Lines::of(text);
    checked
        .diagnostics
        .errors()
        .map(|d| lines.render(origin, d, crate::spec::diagnostic::Style::default()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The outcome of applying a local pipeline.
#[derive(Debug, Clone)]
pub struct Applied {
    pub record: PipelineRecord,
    /// False when the text equals the current version (nothing was written).
    pub changed: bool,
}

/// Creates or updates a pipeline defined in Gantry. An invalid text is refused as a whole (the
/// rendered diagnostics are the error) and changes nothing; `expected_name`, when given (the API
/// path), must match `metadata.name`.
pub fn apply_local(
    store: &Store,
    text: &str,
    origin: &str,
    expected_name: Option<&str>,
) -> Result<Applied, CatalogError> {
    let checked = crate::spec::check(text);
    if checked.pipeline.is_none() {
        return Err(CatalogError::Invalid(render_errors(origin, text, &checked)));
    }
    let name = name_of(origin, &checked);
    if let Some(expected) = expected_name
        && expected != name
    {
        return Err(CatalogError::Invalid(format!(
            "{origin}:{}:{}: metadata.name is `{name}` but the pipeline was addressed as \
             `{LOCAL_SOURCE}/{expected}`",
            checked.name_pos.line, checked.name_pos.col
        )));
    }
    let change = record_definition(store, LOCAL_SOURCE, &name, "", text, None, &checked)?;
    let record = store
        .get_pipeline(LOCAL_SOURCE, &name)?
        .ok_or_else(|| CatalogError::NotFound(format!("{LOCAL_SOURCE}/{name}")))?;
    Ok(Applied {
        record,
        changed: matches!(change, Change::NewVersion),
    })
}

/// Sends the runs of a local pipeline to `executor` (`None`: the default). The caller checks
/// that the executor exists.
pub fn set_local_executor(
    store: &Store,
    name: &str,
    executor: Option<String>,
) -> Result<PipelineRecord, CatalogError> {
    let mut record = store
        .get_pipeline(LOCAL_SOURCE, name)?
        .ok_or_else(|| CatalogError::NotFound(format!("{LOCAL_SOURCE}/{name}")))?;
    if record.executor != executor {
        record.executor = executor;
        record.updated_at = Utc::now();
        store.put_pipeline(&record)?;
        store.flush()?;
    }
    Ok(record)
}

/// Makes version `to` of a local pipeline current again, as a new version with its text.
pub fn rollback_local(store: &Store, name: &str, to: u32) -> Result<Applied, CatalogError> {
    let Some(record) = store.get_pipeline(LOCAL_SOURCE, name)? else {
        return Err(CatalogError::NotFound(format!(
            "no pipeline `{LOCAL_SOURCE}/{name}` (gantry pipeline apply -f FILE creates one)"
        )));
    };
    let Some(old) = store.get_version(LOCAL_SOURCE, name, to)? else {
        let known: Vec<String> = store
            .versions(LOCAL_SOURCE, name)?
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        return Err(CatalogError::NotFound(format!(
            "`{LOCAL_SOURCE}/{name}` has no version {to} (versions: {})",
            known.join(", ")
        )));
    };
    if record.version == Some(to) {
        return Ok(Applied {
            record,
            changed: false,
        });
    }
    let checked = crate::spec::check(&old.text);
    if checked.pipeline.is_none() {
        return Err(CatalogError::Invalid(format!(
            "version {to} of `{LOCAL_SOURCE}/{name}` no longer passes validation:\n{}",
            render_errors("version", &old.text, &checked)
        )));
    }
    // record_version deduplicates only against the newest version, so an older text is recorded
    // again as the next version.
    let version = store.record_version(LOCAL_SOURCE, name, &old.text, "", None)?;
    let mut record = record;
    record.version = Some(version);
    record.valid = true;
    record.errors.clear();
    record.retired = false;
    record.updated_at = Utc::now();
    store.put_pipeline(&record)?;
    Ok(Applied {
        record,
        changed: true,
    })
}

/// Retires a local pipeline (its versions and runs stay).
pub fn delete_local(store: &Store, name: &str) -> Result<PipelineRecord, CatalogError> {
    let Some(mut record) = store.get_pipeline(LOCAL_SOURCE, name)? else {
        return Err(CatalogError::NotFound(format!(
            "no pipeline `{LOCAL_SOURCE}/{name}`"
        )));
    };
    record.retired = true;
    record.updated_at = Utc::now();
    store.put_pipeline(&record)?;
    Ok(record)
}

#[cfg(test)]
mod tests;
