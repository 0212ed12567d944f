//! Typed read models: what a page (and, as they move over, an API answer) shows, built from the
//! store in one place. Each view is plain data with text already chosen for people (times,
//! durations, short commits); the HTML templates in `server/ui` only lay it out.
//!
//! Nothing here writes, and nothing here holds a secret value: secret outputs and variables are
//! names only, and publications carry credential keys, never values.

pub mod api;
pub mod form;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::store::{
    LogLine, OutputRecord, PipelineRecord, RunRecord, RunStatus, StepRecord, Store, StoreError,
};

/// Runs read to find each pipeline's newest (the dashboard) and the write-backs given up.
const RECENT_RUNS: usize = 5_000;

/// A time as pages show it (UTC, to the second).
pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn between(from: Option<&DateTime<Utc>>, to: Option<&DateTime<Utc>>) -> Option<String> {
    let (from, to) = (from?, to?);
    let taken = (*to - *from).to_std().unwrap_or_default();
    Some(crate::spec::values::format_duration(taken))
}

/// One run in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub number: u64,
    pub source: String,
    pub pipeline: String,
    pub status: &'static str,
    pub active: bool,
    pub when: String,
    /// From start to end, or to now while it runs; none before it starts.
    pub duration: Option<String>,
    pub trigger: String,
    /// The first 10 characters of the commit, when the run has one.
    pub commit: Option<String>,
    pub reference: Option<String>,
    pub pr: Option<u64>,
}

impl RunRow {
    pub fn of(run: &RunRecord) -> RunRow {
        let now = Utc::now();
        let end = run.finished_at.or(run.status.is_active().then_some(now));
        RunRow {
            id: run.id.clone(),
            number: run.number,
            source: run.source.clone(),
            pipeline: run.pipeline.clone(),
            status: run.status.as_str(),
            active: run.status.is_active(),
            when: when(&run.created_at),
            duration: between(run.started_at.as_ref(), end.as_ref()),
            trigger: match &run.trigger.detail {
                Some(d) => format!("{}: {d}", run.trigger.kind),
                None => run.trigger.kind.clone(),
            },
            commit: run.git.as_ref().map(|g| g.sha.chars().take(10).collect()),
            reference: run.git.as_ref().map(|g| g.reference.clone()),
            pr: run.pr,
        }
    }
}

/// One pipeline in a list, with its newest run.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRow {
    pub source: String,
    pub name: String,
    pub path: String,
    pub description: Option<String>,
    pub labels: Vec<(String, String)>,
    pub valid: bool,
    pub retired: bool,
    pub errors: usize,
    pub last_run: Option<RunRow>,
}

impl PipelineRow {
    /// The row of `p`, with its newest run.
    fn of(store: &Store, p: &PipelineRecord, newest: Option<&RunRecord>) -> PipelineRow {
        let (labels, description) = labels_and_description(store, p);
        PipelineRow {
            source: p.source.clone(),
            name: p.name.clone(),
            path: p.path.clone(),
            description,
            labels,
            valid: p.valid,
            retired: p.retired,
            errors: p.errors.len(),
            last_run: newest.map(RunRow::of),
        }
    }
}

/// The dashboard's filters, as the query string gives them (empty means any).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DashboardFilter {
    pub source: String,
    /// A run status, `never` (no run yet) or `invalid` (the definition does not validate).
    pub status: String,
    /// `key=value` or a bare key.
    pub label: String,
    /// Part of the pipeline's name, path or description, any case.
    pub text: String,
}

/// Something that needs a person's attention.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub what: &'static str,
    pub source: String,
    pub pipeline: String,
    pub detail: String,
    /// The run it is about, if any.
    pub run: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceGroup {
    pub source: String,
    pub pipelines: Vec<PipelineRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    pub groups: Vec<SourceGroup>,
    pub attention: Vec<Attention>,
    /// Every source, for the filter's choices.
    pub sources: Vec<String>,
    pub total: usize,
    pub shown: usize,
}

type Metadata = (Vec<(String, String)>, Option<String>);

/// What `labels_and_description` found, by (source, name, version).
type MetadataMemo = std::collections::HashMap<(String, String, u32), Metadata>;

/// Labels and description of a pipeline's current version. A version's text never changes, so
/// what a check of it found is kept by (source, name, version): a dashboard of thousands of
/// pipelines checks each version once per process, not once per view.
fn labels_and_description(store: &Store, p: &PipelineRecord) -> Metadata {
    use std::sync::{Mutex, OnceLock};
    /// Versions kept before the memo starts over.
    const KEPT: usize = 20_000;
    static MEMO: OnceLock<Mutex<MetadataMemo>> = OnceLock::new();
    let Some(version) = p.version else {
        return (Vec::new(), None);
    };
    let key = (p.source.clone(), p.name.clone(), version);
    let memo = MEMO.get_or_init(|| Mutex::new(MetadataMemo::new()));
    if let Some(found) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return found;
    }
    let Ok(Some(v)) = store.get_version(&p.source, &p.name, version) else {
        return (Vec::new(), None);
    };
    let found: Metadata = match crate::spec::check(&v.text).pipeline {
        Some(pipeline) => (
            pipeline.metadata.labels.into_iter().collect(),
            pipeline.metadata.description,
        ),
        None => (Vec::new(), None),
    };
    if let Ok(mut m) = memo.lock() {
        if m.len() >= KEPT {
            m.clear();
        }
        m.insert(key, found.clone());
    }
    found
}

fn matches(filter: &DashboardFilter, row: &PipelineRow) -> bool {
    if !filter.source.is_empty() && row.source != filter.source {
        return false;
    }
    let status_ok = match filter.status.as_str() {
        "" => true,
        "invalid" => !row.valid,
        "never" => row.last_run.is_none(),
        s => row.last_run.as_ref().is_some_and(|r| r.status == s),
    };
    if !status_ok {
        return false;
    }
    if !filter.label.is_empty() {
        let found = match filter.label.split_once('=') {
            Some((k, v)) => row
                .labels
                .iter()
                .any(|(lk, lv)| lk == k.trim() && lv == v.trim()),
            None => row.labels.iter().any(|(lk, _)| lk == filter.label.trim()),
        };
        if !found {
            return false;
        }
    }
    if !filter.text.is_empty() {
        let needle = filter.text.to_lowercase();
        let hay = format!(
            "{} {} {}",
            row.name,
            row.path,
            row.description.as_deref().unwrap_or("")
        )
        .to_lowercase();
        if !hay.contains(&needle) {
            return false;
        }
    }
    true
}

/// The dashboard: pipelines by source with their newest run, and what needs attention.
pub fn dashboard(store: &Store, filter: &DashboardFilter) -> Result<Dashboard, StoreError> {
    let pipelines = store.list_pipelines(None)?;
    let recent = store.list_runs(None, RECENT_RUNS)?;
    let mut last: BTreeMap<(&str, &str), &RunRecord> = BTreeMap::new();
    for run in &recent {
        last.entry((run.source.as_str(), run.pipeline.as_str()))
            .or_insert(run);
    }
    let mut attention = Vec::new();
    let mut groups: Vec<SourceGroup> = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    let mut shown = 0;
    for p in &pipelines {
        if !sources.contains(&p.source) {
            sources.push(p.source.clone());
        }
        let newest = last.get(&(p.source.as_str(), p.name.as_str()));
        let row = PipelineRow::of(store, p, newest.copied());
        if !p.valid && !p.retired {
            attention.push(Attention {
                what: "invalid definition",
                source: p.source.clone(),
                pipeline: p.name.clone(),
                detail: p
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "does not validate".into()),
                run: None,
            });
        }
        if let Some(run) = newest
            && matches!(run.status, RunStatus::Failed | RunStatus::Interrupted)
            && !p.retired
        {
            attention.push(Attention {
                what: "failed run",
                source: p.source.clone(),
                pipeline: p.name.clone(),
                detail: format!(
                    "#{} {}{}",
                    run.number,
                    run.status.as_str(),
                    run.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
                run: Some(run.id.clone()),
            });
        }
        if !matches(filter, &row) {
            continue;
        }
        shown += 1;
        match groups.iter_mut().find(|g| g.source == row.source) {
            Some(g) => g.pipelines.push(row),
            None => groups.push(SourceGroup {
                source: row.source.clone(),
                pipelines: vec![row],
            }),
        }
    }
    for run in recent
        .iter()
        .filter(|r| r.writeback_error.is_some())
        .take(20)
    {
        attention.push(Attention {
            what: "report to the forge given up",
            source: run.source.clone(),
            pipeline: run.pipeline.clone(),
            detail: format!(
                "#{}: {}",
                run.number,
                run.writeback_error.as_deref().unwrap_or_default()
            ),
            run: Some(run.id.clone()),
        });
    }
    Ok(Dashboard {
        groups,
        attention,
        sources,
        total: pipelines.len(),
        shown,
    })
}

/// One line of a pipeline's definition, with the errors located on it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecLine {
    pub number: usize,
    pub text: String,
    /// `column: message` of each error on this line.
    pub errors: Vec<String>,
}

fn numbered(text: &str) -> Vec<SpecLine> {
    text.lines()
        .enumerate()
        .map(|(i, t)| SpecLine {
            number: i + 1,
            text: t.to_string(),
            errors: Vec::new(),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    pub version: u32,
    pub commit: Option<String>,
    pub when: String,
    pub current: bool,
}

/// A pipeline's page.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelinePage {
    pub row: PipelineRow,
    pub display_name: Option<String>,
    pub executor: Option<String>,
    pub commit: Option<String>,
    /// The triggers, in words.
    pub triggers: Vec<String>,
    pub manual: bool,
    /// The text of the version runs use.
    pub lines: Vec<SpecLine>,
    /// Why the definition as last read does not validate, each as `file:line:col: message`
    /// (that text is not a version, so runs keep using the shown one).
    pub errors: Vec<String>,
    /// That text, when the caller could read it (a repository's file at the commit it was read
    /// at), each error on its line.
    pub invalid_lines: Vec<SpecLine>,
    pub versions: Vec<VersionRow>,
    pub runs: Vec<RunRow>,
    pub page: usize,
    pub more_runs: bool,
    pub local: bool,
}

/// Runs shown per page of a pipeline.
pub const RUNS_PER_PAGE: usize = 25;

fn trigger_words(on: &crate::spec::model::Triggers) -> Vec<String> {
    let mut out = Vec::new();
    if on.manual {
        out.push("manual (CLI, API, this page)".to_string());
    }
    if let Some(push) = &on.push {
        let mut t = "push".to_string();
        if !push.branches.is_empty() {
            t.push_str(&format!(" to {}", push.branches.join(", ")));
        }
        if !push.paths.is_empty() {
            t.push_str(&format!(" touching {}", push.paths.join(", ")));
        }
        out.push(t);
    }
    if let Some(pr) = &on.pull_request {
        let mut t = "pull request".to_string();
        if !pr.branches.is_empty() {
            t.push_str(&format!(" into {}", pr.branches.join(", ")));
        }
        if !pr.paths.is_empty() {
            t.push_str(&format!(" touching {}", pr.paths.join(", ")));
        }
        out.push(t);
    }
    if on.comment {
        out.push("pull request comment `/gantry run`".to_string());
    }
    for s in &on.schedule {
        out.push(format!("schedule {}", s.cron));
    }
    out
}

/// The page of `source/name`, runs page `page` (from 0); `None` when there is no such pipeline.
/// `invalid_text` is the file as last read, when it does not validate and the caller has it.
pub fn pipeline(
    store: &Store,
    source: &str,
    name: &str,
    page: usize,
    invalid_text: Option<&str>,
) -> Result<Option<PipelinePage>, StoreError> {
    let Some(p) = store.get_pipeline(source, name)? else {
        return Ok(None);
    };
    let key = format!("{source}/{name}");
    let wanted = (page + 1) * RUNS_PER_PAGE + 1;
    let runs = store.list_runs(Some(&key), wanted)?;
    let more_runs = runs.len() == wanted;
    // Newest first: the first is the pipeline's newest run whatever the page.
    let row = PipelineRow::of(store, &p, runs.first());
    let runs: Vec<RunRow> = runs
        .iter()
        .skip(page * RUNS_PER_PAGE)
        .take(RUNS_PER_PAGE)
        .map(RunRow::of)
        .collect();
    let versions = store.versions(source, name)?;
    let current = p
        .version
        .and_then(|v| versions.iter().find(|x| x.version == v));
    let parsed = current.and_then(|v| crate::spec::check(&v.text).pipeline);
    let text = current.map(|v| v.text.clone()).unwrap_or_default();
    let lines = numbered(&text);
    let errors = p.errors.iter().map(|e| e.to_string()).collect();
    // The file that does not validate, as the sync last read it, with each error on its line.
    let invalid_lines = match invalid_text {
        Some(text) if !p.valid => {
            let mut lines = numbered(text);
            for e in &p.errors {
                if let Some(line) = (e.line as usize)
                    .checked_sub(1)
                    .and_then(|l| lines.get_mut(l))
                {
                    line.errors
                        .push(format!("column {}: {}", e.column, e.message));
                }
            }
            lines
        }
        _ => Vec::new(),
    };
    Ok(Some(PipelinePage {
        row,
        display_name: parsed
            .as_ref()
            .and_then(|x| x.metadata.display_name.clone()),
        executor: p.executor.clone(),
        commit: p.commit.clone(),
        triggers: parsed
            .as_ref()
            .map(|x| trigger_words(&x.on))
            .unwrap_or_default(),
        manual: parsed.as_ref().is_some_and(|x| x.on.manual) && !p.retired,
        lines,
        errors,
        invalid_lines,
        versions: versions
            .iter()
            .rev()
            .map(|v| VersionRow {
                version: v.version,
                commit: v.commit.clone(),
                when: when(&v.created_at),
                current: Some(v.version) == p.version,
            })
            .collect(),
        runs,
        page,
        more_runs,
        local: p.source == crate::catalog::LOCAL_SOURCE,
    }))
}

/// One step of a run's page.
#[derive(Debug, Clone, PartialEq)]
pub struct StepView {
    pub index: usize,
    pub name: String,
    pub state: &'static str,
    pub duration: Option<String>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub attempts: usize,
    pub summary: Option<String>,
    /// The newest lines of its log, oldest first, up to the chunk of the page's cursor.
    pub tail: Vec<ShownLine>,
    /// Whether older lines exist than `tail` shows.
    pub more: bool,
}

/// A run's page.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub run: RunRow,
    pub version: u32,
    pub message: Option<String>,
    pub writeback_error: Option<String>,
    pub parameters: Vec<(String, String)>,
    pub steps: Vec<StepView>,
    /// Secret outputs have no value here.
    pub outputs: Vec<OutputRecord>,
    pub published: Vec<crate::marketplace::RunPublication>,
    /// Where the shown log tails end: a live reader goes on from here (`LogCursor::encode`).
    pub cursor: String,
    pub executor: Option<String>,
    /// The run this one retries from its failed step.
    pub retry_of: Option<String>,
}

/// Log lines a run's page shows per step before "earlier lines".
pub const TAIL_LINES: usize = 200;

/// The page of run `id` (an id or a unique prefix).
pub fn run(store: &Store, id: &str) -> Result<RunPage, StoreError> {
    let run = store.find_run(id)?;
    let records = store.steps(&run.id)?;
    let cursor = store.log_end(&run.id)?;
    let mut steps = Vec::new();
    for (index, name) in run.steps.iter().enumerate() {
        let record = records
            .get(index)
            .cloned()
            .unwrap_or_else(|| StepRecord::pending(name));
        let window = store.log_tail_before(&run.id, index, cursor.chunk(index), 0, TAIL_LINES)?;
        let (tail, more) = match cursor.chunk(index) {
            Some(_) => (ShownLine::of(window.lines, window.places), window.more),
            None => (Vec::new(), false),
        };
        let end = record
            .finished_at
            .or((record.state == crate::store::StepState::Running).then(Utc::now));
        steps.push(StepView {
            index,
            name: name.clone(),
            state: record.state.as_str(),
            duration: between(record.started_at.as_ref(), end.as_ref()),
            message: record.message.clone(),
            exit_code: record.attempts.last().and_then(|a| a.exit_code),
            attempts: record.attempts.len(),
            summary: record.summary.clone(),
            tail,
            more,
        });
    }
    Ok(RunPage {
        run: RunRow::of(&run),
        version: run.version,
        message: run.message.clone(),
        writeback_error: run.writeback_error.clone(),
        parameters: run.param_texts().into_iter().collect(),
        steps,
        outputs: store.outputs(&run.id)?,
        published: crate::marketplace::run_publications(store, &run.id)?,
        cursor: cursor.encode(),
        executor: run.executor.clone(),
        retry_of: run.retry_of.clone(),
    })
}

/// A log line as a page shows it, with its place in the step's log (what its link names).
#[derive(Debug, Clone, PartialEq)]
pub struct ShownLine {
    pub line: LogLine,
    pub place: crate::store::LinePlace,
}

impl ShownLine {
    fn of(lines: Vec<LogLine>, places: Vec<crate::store::LinePlace>) -> Vec<ShownLine> {
        lines
            .into_iter()
            .zip(places)
            .map(|(line, place)| ShownLine { line, place })
            .collect()
    }

    /// The id of the line's element, and the fragment that links to it: `L<chunk>-<index>`.
    pub fn anchor(&self) -> String {
        format!("L{}-{}", self.place.chunk, self.place.index)
    }
}

/// A page of one step's log: read back from its end, or the page holding a linked line.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    pub run: RunRow,
    pub step: String,
    pub index: usize,
    pub lines: Vec<ShownLine>,
    /// Lines from the end skipped (the newer lines), and whether older ones exist.
    pub skip: usize,
    pub more: bool,
    /// The chunk the page ends with, when it was asked for by a line's link (`?at=`).
    pub at: Option<u32>,
}

impl StepLog {
    /// The chunk before the first line shown: where the page of earlier lines ends.
    pub fn earlier(&self) -> Option<u32> {
        self.lines
            .first()
            .and_then(|l| l.place.chunk.checked_sub(1))
    }
}

/// Lines a step-log page shows.
pub const LOG_PAGE_LINES: usize = 1_000;

/// Where a step-log page is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPage {
    /// `LOG_PAGE_LINES` lines that end this many lines before the end.
    FromEnd(usize),
    /// Whole chunks that end with this one (and hold `LOG_PAGE_LINES` lines when the log has
    /// them): the page a line's link opens.
    At(u32),
}

/// A page of step `step`'s log of run `id`.
pub fn step_log(
    store: &Store,
    id: &str,
    step: &str,
    page: LogPage,
) -> Result<Option<StepLog>, StoreError> {
    let run = store.find_run(id)?;
    let Some(index) = run.steps.iter().position(|s| s == step) else {
        return Ok(None);
    };
    let (window, skip, at) = match page {
        LogPage::FromEnd(skip) => (
            store.log_tail_before(&run.id, index, None, skip, LOG_PAGE_LINES)?,
            skip,
            None,
        ),
        LogPage::At(chunk) => (
            store.log_chunks_to(&run.id, index, chunk, LOG_PAGE_LINES)?,
            0,
            Some(chunk),
        ),
    };
    Ok(Some(StepLog {
        run: RunRow::of(&run),
        step: step.to_string(),
        index,
        lines: ShownLine::of(window.lines, window.places),
        skip,
        more: window.more,
        at,
    }))
}

/// What a live run page updates: the run's status and each step's state and duration.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProgress {
    pub status: String,
    pub active: bool,
    /// State and duration of each step, in plan order.
    pub steps: Vec<(String, Option<String>)>,
}

/// The progress of `run` now.
pub fn run_progress(store: &Store, run: &RunRecord) -> Result<RunProgress, StoreError> {
    let records = store.steps(&run.id)?;
    let now = Utc::now();
    let steps = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let record = records
                .get(i)
                .cloned()
                .unwrap_or_else(|| StepRecord::pending(name));
            let end = record
                .finished_at
                .or((record.state == crate::store::StepState::Running).then_some(now));
            // A running step's duration changes every poll; only finished ones are sent.
            let shown = record
                .finished_at
                .and_then(|_| between(record.started_at.as_ref(), end.as_ref()));
            (record.state.as_str().to_string(), shown)
        })
        .collect();
    Ok(RunProgress {
        status: run.status.as_str().to_string(),
        active: run.status.is_active(),
        steps,
    })
}
