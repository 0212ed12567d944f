//! `/metrics`: what the server did and holds, in the Prometheus text format.
//!
//! Counters and histograms are recorded where the server sees things happen (a run's end in the
//! transition observer, a webhook delivery's answer in `hooks.rs`); gauges are read when scraped
//! (the queue, the outbox, the delivery backlog, the store's size, the process). Labels only take
//! bounded values: sources and pipelines are configured or applied, statuses and results are
//! fixed words; never a run id or a commit.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::intake::DurationSnapshot;
use crate::store::{RunRecord, StepRecord, Store};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    source: String,
    pipeline: String,
    trigger: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    source: String,
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    source: String,
    pipeline: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    forge: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    source: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    forge: String,
    code: String,
}

/// What one watched repository's syncs did, read from its in-memory counts at a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFigures {
    pub source: String,
    pub ok: u64,
    pub failed: u64,
    pub seconds_total: f64,
    pub seconds_last: f64,
    /// What its fetches took.
    pub fetches: DurationSnapshot,
}

/// The histograms whose counts are kept outside the registry (in `intake`, which cannot see
/// it), as read at the last scrape; a collector in the registry encodes them.
#[derive(Debug, Default)]
struct Kept {
    fetches: Vec<(SourceLabels, DurationSnapshot)>,
    lag: Option<DurationSnapshot>,
}

#[derive(Debug, Default)]
struct KeptHistograms(std::sync::Arc<Mutex<Kept>>);

impl Collector for KeptHistograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(kept) = self.0.lock() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "gantry_source_fetch_duration",
            "How long each fetch (or first clone) of a watched repository's mirror took.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, h) in &kept.fetches {
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        if let Some(h) = &kept.lag {
            encoder
                .encode_descriptor(
                    "gantry_webhook_processing_lag",
                    "How long stored webhook deliveries waited, from their receipt until processing took them up.",
                    Some(&Unit::Seconds),
                    MetricType::Histogram,
                )?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// Raises a counter to `total` (counts kept elsewhere, read at a scrape).
fn raise(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The server's metrics. Cheap to record from any thread.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_duration: Family<PipelineLabels, Histogram>,
    queue_wait: Family<PipelineLabels, Histogram>,
    step_duration: Family<StepLabels, Histogram>,
    deliveries: Family<DeliveryLabels, Counter>,
    runs_active: Family<StateLabels, Gauge>,
    outbox_jobs: Gauge,
    outbox_oldest: Gauge<f64, AtomicU64>,
    delivery_backlog: Gauge,
    store_bytes: Gauge,
    resident: Gauge,
    open_fds: Gauge,
    cpu: Counter<f64, AtomicU64>,
    /// The CPU seconds last read from /proc, to add only what was used since.
    cpu_seen: Mutex<f64>,
    source_syncs: Family<SyncLabels, Counter>,
    source_sync_seconds: Family<SourceLabels, Counter<f64, AtomicU64>>,
    source_last_sync: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    log_bytes: Family<LogLabels, Counter>,
    outbox_failures: Family<OutboxLabels, Counter>,
    kept: std::sync::Arc<Mutex<Kept>>,
}

/// Buckets from 50 ms to about 14 hours, doubling.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "gantry_runs",
            "Runs that ended, by source, pipeline, trigger and status",
            runs.clone(),
        );
        let run_duration = Family::<PipelineLabels, Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        registry.register_with_unit(
            "gantry_run_duration",
            "How long ended runs ran, from their start to their end",
            Unit::Seconds,
            run_duration.clone(),
        );
        let queue_wait = Family::<PipelineLabels, Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        registry.register_with_unit(
            "gantry_run_queue_wait",
            "How long runs waited in the queue before they started",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let step_duration = Family::<StepLabels, Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        registry.register_with_unit(
            "gantry_step_duration",
            "How long the steps of ended runs ran, by their final status",
            Unit::Seconds,
            step_duration.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "gantry_webhook_deliveries",
            "Webhook deliveries answered, by forge and result (accepted, duplicate, ignored, or why refused)",
            deliveries.clone(),
        );
        let runs_active = Family::<StateLabels, Gauge>::default();
        registry.register(
            "gantry_runs_active",
            "Runs queued and running now",
            runs_active.clone(),
        );
        let outbox_jobs = Gauge::default();
        registry.register(
            "gantry_outbox_jobs",
            "Forge write-backs (statuses, comments) waiting to be sent",
            outbox_jobs.clone(),
        );
        let outbox_oldest = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "gantry_outbox_oldest_job_age",
            "Age of the oldest waiting forge write-back (0 when none waits)",
            Unit::Seconds,
            outbox_oldest.clone(),
        );
        let delivery_backlog = Gauge::default();
        registry.register(
            "gantry_webhook_backlog",
            "Webhook deliveries stored and not yet processed",
            delivery_backlog.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register_with_unit(
            "gantry_store_size",
            "Bytes the data dir's database and body log take on disk",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let resident = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the server process",
            Unit::Bytes,
            resident.clone(),
        );
        let open_fds = Gauge::default();
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            open_fds.clone(),
        );
        let start_time = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "process_start_time",
            "When the process started, since the Unix epoch",
            Unit::Seconds,
            start_time.clone(),
        );
        let cpu = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "process_cpu",
            "CPU time the process used, user and system",
            Unit::Seconds,
            cpu.clone(),
        );
        start_time.set(process_start_time().unwrap_or(0.0));
        let source_syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "gantry_source_syncs",
            "Syncs (fetch and reconcile) of each watched repository, by result (ok, failed)",
            source_syncs.clone(),
        );
        let source_sync_seconds = Family::<SourceLabels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "gantry_source_sync_duration",
            "Time all syncs of each watched repository took together",
            Unit::Seconds,
            source_sync_seconds.clone(),
        );
        let source_last_sync = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "gantry_source_last_sync_duration",
            "How long the last sync of each watched repository took",
            Unit::Seconds,
            source_last_sync.clone(),
        );
        let log_bytes = Family::<LogLabels, Counter>::default();
        registry.register_with_unit(
            "gantry_log",
            "Bytes of step output, by outcome: stored, or dropped past a log budget",
            Unit::Bytes,
            log_bytes.clone(),
        );
        let outbox_failures = Family::<OutboxLabels, Counter>::default();
        registry.register(
            "gantry_outbox_failures",
            "Writes to a forge (statuses, comments, replies) that failed, by forge and HTTP status (none: no answer)",
            outbox_failures.clone(),
        );
        let kept = KeptHistograms::default();
        let kept_now = kept.0.clone();
        registry.register_collector(Box::new(kept));
        Metrics {
            kept: kept_now,
            registry,
            runs,
            run_duration,
            queue_wait,
            step_duration,
            deliveries,
            runs_active,
            outbox_jobs,
            outbox_oldest,
            delivery_backlog,
            store_bytes,
            resident,
            open_fds,
            cpu,
            cpu_seen: Mutex::new(0.0),
            source_syncs,
            source_sync_seconds,
            source_last_sync,
            log_bytes,
            outbox_failures,
        }
    }

    /// Takes the counts kept outside the registry (the sources' syncs, the log bytes) before a
    /// scrape renders.
    pub fn observe(
        &self,
        sources: &[SourceFigures],
        log_stored: u64,
        log_dropped: u64,
        outbox_failures: &[(String, String, u64)],
        delivery_lag: DurationSnapshot,
    ) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.fetches = sources
                .iter()
                .map(|f| {
                    let labels = SourceLabels {
                        source: f.source.clone(),
                    };
                    (labels, f.fetches.clone())
                })
                .collect();
            kept.lag = Some(delivery_lag);
        }
        for (forge, code, n) in outbox_failures {
            let labels = OutboxLabels {
                forge: forge.clone(),
                code: code.clone(),
            };
            raise(&self.outbox_failures.get_or_create(&labels), *n);
        }
        for f in sources {
            for (result, n) in [("ok", f.ok), ("failed", f.failed)] {
                let labels = SyncLabels {
                    source: f.source.clone(),
                    result: result.to_string(),
                };
                raise(&self.source_syncs.get_or_create(&labels), n);
            }
            let labels = SourceLabels {
                source: f.source.clone(),
            };
            let seconds = self.source_sync_seconds.get_or_create(&labels);
            let now = seconds.get();
            if f.seconds_total > now {
                seconds.inc_by(f.seconds_total - now);
            }
            self.source_last_sync
                .get_or_create(&labels)
                .set(f.seconds_last);
        }
        for (outcome, n) in [("stored", log_stored), ("dropped", log_dropped)] {
            let labels = LogLabels {
                outcome: outcome.to_string(),
            };
            raise(&self.log_bytes.get_or_create(&labels), n);
        }
    }

    /// Records an ended run (and its steps); a run still queued or running records nothing.
    pub fn run_ended(&self, run: &RunRecord, steps: &[StepRecord]) {
        if run.status.is_active() {
            return;
        }
        let pipeline = PipelineLabels {
            source: run.source.clone(),
            pipeline: run.pipeline.clone(),
        };
        self.runs
            .get_or_create(&RunLabels {
                source: run.source.clone(),
                pipeline: run.pipeline.clone(),
                trigger: run.trigger.kind.clone(),
                status: run.status.as_str().to_string(),
            })
            .inc();
        if let (Some(start), Some(end)) = (run.started_at, run.finished_at) {
            self.run_duration
                .get_or_create(&pipeline)
                .observe(seconds(end - start));
        }
        if let Some(start) = run.started_at {
            self.queue_wait
                .get_or_create(&pipeline)
                .observe(seconds(start - run.created_at));
        }
        for step in steps {
            if let Some(ms) = step.duration_ms() {
                self.step_duration
                    .get_or_create(&StepLabels {
                        source: run.source.clone(),
                        pipeline: run.pipeline.clone(),
                        status: step.state.as_str().to_string(),
                    })
                    .observe(ms.max(0) as f64 / 1000.0);
            }
        }
    }

    /// Records a webhook delivery's answer.
    pub fn delivery(&self, forge: &str, result: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                forge: forge.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// The text of a scrape: the gauges read now, then every metric.
    pub fn render(&self, store: &Store, queued: usize, running: usize) -> String {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (state, n) in [("queued", queued), ("running", running)] {
            self.runs_active
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Ok(jobs) = store.outbox() {
            self.outbox_jobs
                .set(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
            let now = chrono::Utc::now();
            let oldest = jobs
                .iter()
                .map(|j| seconds(now - j.first_at))
                .fold(0.0, f64::max);
            self.outbox_oldest.set(oldest);
        }
        self.delivery_backlog.set(to_i64(store.delivery_backlog()));
        let stored = ["db", "bodies"]
            .iter()
            .map(|d| dir_size(&store.dir().join(d)))
            .sum();
        self.store_bytes.set(to_i64(stored));
        if let Some(bytes) = resident_bytes() {
            self.resident.set(to_i64(bytes));
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(i64::try_from(fds.count()).unwrap_or(0));
        }
        if let Some(total) = cpu_seconds()
            && let Ok(mut seen) = self.cpu_seen.lock()
            && total > *seen
        {
            self.cpu.inc_by(total - *seen);
            *seen = total;
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        prometheus_text(&out)
    }
}

/// The Prometheus text format (version 0.0.4, which Prometheus, `promtool check metrics` and
/// every scraper read) of the OpenMetrics text the encoder writes: a counter's `# HELP` and
/// `# TYPE` name its `_total` series, and OpenMetrics' `# UNIT` and `# EOF` lines go.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    (d.num_milliseconds().max(0) as f64) / 1000.0
}

/// Bytes of the regular files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// The fields of /proc/self/stat after the command's closing parenthesis.
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system setting.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User and system CPU seconds of this process (fields 14 and 15 of stat).
fn cpu_seconds() -> Option<f64> {
    let f = stat_fields()?;
    let user: f64 = f.get(11)?.parse().ok()?;
    let system: f64 = f.get(12)?.parse().ok()?;
    Some((user + system) / ticks_per_second())
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system setting.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

/// The process's start time since the epoch: boot time plus field 22 of stat.
fn process_start_time() -> Option<f64> {
    let f = stat_fields()?;
    let started: f64 = f.get(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().parse::<f64>()))?
        .ok()?;
    Some(boot + started / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series_and_openmetrics_lines_go() {
        let openmetrics = "# HELP gantry_runs Runs that ended.\n# TYPE gantry_runs counter\ngantry_runs_total{status=\"failed\"} 2\n# HELP gantry_store_size Bytes.\n# TYPE gantry_store_size gauge\n# UNIT gantry_store_size bytes\ngantry_store_size 10\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP gantry_runs_total Runs that ended.\n# TYPE gantry_runs_total counter\ngantry_runs_total{status=\"failed\"} 2\n# HELP gantry_store_size Bytes.\n# TYPE gantry_store_size gauge\ngantry_store_size 10\n"
        );
    }

    #[test]
    fn a_scrape_counts_runs_and_reads_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let metrics = Metrics::new();
        metrics.delivery("github", "duplicate");
        let fetches = crate::intake::Durations::default();
        fetches.observe(std::time::Duration::from_millis(3));
        fetches.observe(std::time::Duration::from_millis(40));
        let lag = crate::intake::Durations::default();
        lag.observe(std::time::Duration::from_micros(500));
        lag.observe(std::time::Duration::from_secs(120));
        metrics.observe(
            &[SourceFigures {
                source: "infra".into(),
                ok: 3,
                failed: 1,
                seconds_total: 1.5,
                seconds_last: 0.25,
                fetches: fetches.snapshot(),
            }],
            4096,
            10,
            &[("github".into(), "502".into(), 2)],
            lag.snapshot(),
        );
        let text = metrics.render(&store, 2, 1);
        for expected in [
            "# TYPE gantry_source_fetch_duration_seconds histogram",
            "gantry_source_fetch_duration_seconds_bucket{le=\"0.002\",source=\"infra\"} 0",
            "gantry_source_fetch_duration_seconds_bucket{le=\"0.004\",source=\"infra\"} 1",
            "gantry_source_fetch_duration_seconds_bucket{le=\"0.064\",source=\"infra\"} 2",
            "gantry_source_fetch_duration_seconds_count{source=\"infra\"} 2",
            "gantry_source_fetch_duration_seconds_sum{source=\"infra\"} 0.043",
            "# TYPE gantry_webhook_processing_lag_seconds histogram",
            "gantry_webhook_processing_lag_seconds_bucket{le=\"0.001\"} 1",
            "gantry_webhook_processing_lag_seconds_bucket{le=\"32.768\"} 1",
            "gantry_webhook_processing_lag_seconds_bucket{le=\"+Inf\"} 2",
            "gantry_webhook_processing_lag_seconds_count 2",
            "gantry_source_syncs_total{source=\"infra\",result=\"ok\"} 3",
            "gantry_source_syncs_total{source=\"infra\",result=\"failed\"} 1",
            "gantry_source_sync_duration_seconds_total{source=\"infra\"} 1.5",
            "gantry_source_last_sync_duration_seconds{source=\"infra\"} 0.25",
            "gantry_log_bytes_total{outcome=\"stored\"} 4096",
            "gantry_log_bytes_total{outcome=\"dropped\"} 10",
            "gantry_outbox_failures_total{forge=\"github\",code=\"502\"} 2",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(
            text.contains(
                "gantry_webhook_deliveries_total{forge=\"github\",result=\"duplicate\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gantry_runs_active{state=\"queued\"} 2"),
            "{text}"
        );
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("resident memory");
        assert!(rss > 1 << 20, "{rss}");
    }
}
