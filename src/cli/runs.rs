//! `gantry runs` and `gantry logs`: what ran, and what it printed.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{exit, open_store};
use crate::store::{RunRecord, RunStatus, StepRecord, Store};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only runs of this pipeline (its name, or source/name)
    #[arg(long)]
    pub pipeline: Option<String>,
    /// At most this many runs
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The run id, or the start of it
    pub run: String,
    /// Only this step's log
    #[arg(long)]
    pub step: Option<String>,
    /// Keep printing new lines until the run ends
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The run id, or the start of it
    pub run: String,
}

/// `gantry --server URL retry RUN`: queues the retry and follows its log to the end.
pub fn retry_remote(client: &super::remote::Client, args: &RetryArgs) -> u8 {
    super::remote::block_on(async {
        let old = client.run_record(&args.run).await?;
        let path = format!("/api/v1/runs/{}/retry", old.id);
        let run: crate::store::RunRecord =
            client.call(reqwest::Method::POST, &path, &[], None).await?;
        eprintln!(
            "gantry: run {} #{} retries #{} from its failed step",
            run.id, run.number, old.number
        );
        if run.status.is_active() {
            client.logs(&run.id, None, true).await?;
        }
        let ended = client.run_record(&run.id).await?;
        eprintln!("gantry: {}", ending(&ended));
        Ok(super::remote::exit_for(Some(ended.status)))
    })
}

/// One run as `gantry runs --json` prints it.
#[derive(Serialize)]
pub struct RunJson<'a> {
    pub id: &'a str,
    pub number: u64,
    pub pipeline: &'a str,
    pub source: &'a str,
    pub version: u32,
    pub status: &'static str,
    pub trigger: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_detail: Option<&'a str>,
    pub parameters: &'a std::collections::BTreeMap<String, serde_json::Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    pub steps: Vec<StepJson<'a>>,
}

#[derive(Serialize)]
pub struct StepJson<'a> {
    pub name: &'a str,
    pub status: &'static str,
    pub attempts: usize,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
}

pub fn run_json<'a>(run: &'a RunRecord, steps: &'a [StepRecord]) -> RunJson<'a> {
    RunJson {
        id: &run.id,
        number: run.number,
        pipeline: &run.pipeline,
        source: &run.source,
        version: run.version,
        status: run.status.as_str(),
        trigger: &run.trigger.kind,
        trigger_detail: run.trigger.detail.as_deref(),
        parameters: &run.parameters,
        created_at: run.created_at.to_rfc3339(),
        started_at: run.started_at.map(|t| t.to_rfc3339()),
        finished_at: run.finished_at.map(|t| t.to_rfc3339()),
        message: run.message.as_deref(),
        steps: steps
            .iter()
            .map(|s| StepJson {
                name: &s.name,
                status: s.state.as_str(),
                attempts: s.attempts.len(),
                exit_code: s.exit_code(),
                duration_ms: s.duration_ms(),
                message: s.message.as_deref(),
            })
            .collect(),
    }
}

pub fn list(data_dir: &Path, args: &ListArgs) -> u8 {
    let Some(store) = open_store(data_dir) else {
        return exit::USAGE;
    };
    let runs = match store.list_runs(args.pipeline.as_deref(), args.limit) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gantry: {e}");
            return exit::USAGE;
        }
    };
    let mut with_steps = Vec::with_capacity(runs.len());
    for run in &runs {
        match store.steps(&run.id) {
            Ok(steps) => with_steps.push(steps),
            Err(e) => {
                eprintln!("gantry: {e}");
                return exit::USAGE;
            }
        }
    }
    if args.json {
        let list: Vec<RunJson> = runs
            .iter()
            .zip(&with_steps)
            .map(|(r, s)| run_json(r, s))
            .collect();
        match serde_json::to_string_pretty(&list) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("gantry: cannot encode runs: {e}");
                return exit::USAGE;
            }
        }
        return exit::OK;
    }
    if runs.is_empty() {
        match &args.pipeline {
            Some(p) => eprintln!("no runs of `{p}` in {}", data_dir.display()),
            None => eprintln!("no runs yet in {}", data_dir.display()),
        }
        return exit::OK;
    }
    print_table(&runs);
    exit::OK
}

/// How a run ended, in one line: `run ID #N of PIPELINE failed: MESSAGE` (the message says why
/// a run failed or never started).
pub fn ending(run: &RunRecord) -> String {
    let message = run
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!(
        "run {} #{} of {} {}{message}",
        run.id,
        run.number,
        run.pipeline,
        run.status.as_str()
    )
}

/// The first line of a run's message, cut to fit a table column.
fn message_cell(run: &RunRecord) -> String {
    const WIDTH: usize = 72;
    let first = run
        .message
        .as_deref()
        .and_then(|m| m.lines().next())
        .unwrap_or("");
    if first.chars().count() > WIDTH {
        let cut: String = first.chars().take(WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// Prints runs as a table, newest first; the last column says why a run failed.
pub fn print_table(runs: &[RunRecord]) {
    println!(
        "{:<26}  {:>4}  {:<24}  {:<11}  {:<8}  {:<20}  {:>9}  MESSAGE",
        "ID", "#", "PIPELINE", "STATUS", "TRIGGER", "STARTED", "DURATION"
    );
    for run in runs {
        let duration = match (run.started_at, run.finished_at) {
            (Some(s), Some(f)) => format!("{:.1}s", (f - s).num_milliseconds() as f64 / 1000.0),
            (Some(_), None) => "…".to_string(),
            _ => "-".to_string(),
        };
        let started = run
            .started_at
            .unwrap_or(run.created_at)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let line = format!(
            "{:<26}  {:>4}  {:<24}  {:<11}  {:<8}  {:<20}  {:>9}  {}",
            run.id,
            run.number,
            run.pipeline,
            run.status.as_str(),
            run.trigger.kind,
            started,
            duration,
            message_cell(run)
        );
        println!("{}", line.trim_end());
    }
}

pub fn logs(data_dir: &Path, args: &LogArgs) -> u8 {
    let Some(store) = open_store(data_dir) else {
        return exit::USAGE;
    };
    match print_logs(&store, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gantry: {e}");
            exit::USAGE
        }
    }
}

fn print_logs(store: &Store, args: &LogArgs) -> Result<u8, crate::store::StoreError> {
    let run = store.find_run(&args.run)?;
    let step = match &args.step {
        Some(name) => match run.steps.iter().position(|s| s == name) {
            Some(i) => Some(i),
            None => {
                eprintln!(
                    "gantry: run {} has no step `{name}`; its steps: {}",
                    run.id,
                    run.steps.join(", ")
                );
                return Ok(exit::USAGE);
            }
        },
        None => None,
    };
    let width = run.steps.iter().map(String::len).max().unwrap_or(4).min(24);
    let print = |lines: Vec<(usize, crate::store::LogLine)>| {
        for (s, line) in lines {
            if step.is_some() {
                println!("{}", line.text);
            } else {
                let name = run.steps.get(s).map(String::as_str).unwrap_or("?");
                println!("{name:<width$} | {}", line.text);
            }
        }
    };
    // Following is for runs executed by a server in this process's data dir; a run of another
    // `gantry run` keeps the data dir locked until it ends, so this reads it once it has.
    let mut cursor = None;
    loop {
        let (lines, next) = store.logs(&run.id, step, cursor.as_ref())?;
        print(lines);
        cursor = Some(next);
        if !args.follow
            || !store
                .get_run(&run.id)?
                .is_some_and(|r| r.status.is_active())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One last read: lines written just before the run ended.
    if args.follow {
        let (lines, _) = store.logs(&run.id, step, cursor.as_ref())?;
        print(lines);
    }
    let ended = store.get_run(&run.id)?.unwrap_or(run);
    Ok(after_log(&ended, args.follow))
}

/// After a run's log: why it failed, or never started (then it has no log at all), and the exit
/// code (with `--follow`, the run's own; else 0, the log was printed).
fn after_log(ended: &RunRecord, follow: bool) -> u8 {
    if !ended.status.is_active() && ended.status != RunStatus::Succeeded {
        eprintln!("gantry: {}", ending(ended));
    }
    if follow {
        super::remote::exit_for(Some(ended.status))
    } else {
        exit::OK
    }
}

pub fn list_remote(client: &super::remote::Client, args: &ListArgs) -> u8 {
    super::remote::block_on(async {
        let runs = client.runs(args.pipeline.as_deref(), args.limit).await?;
        if args.json {
            let mut list = Vec::new();
            for run in &runs {
                let detail = client.run(&run.id).await?;
                let steps: Vec<StepRecord> =
                    serde_json::from_value(detail["steps"].clone()).unwrap_or_default();
                list.push(serde_json::to_value(run_json(run, &steps)).unwrap_or_default());
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
        } else if runs.is_empty() {
            eprintln!("no runs yet");
        } else {
            print_table(&runs);
        }
        Ok(exit::OK)
    })
}

pub fn logs_remote(client: &super::remote::Client, args: &LogArgs) -> u8 {
    super::remote::block_on(async {
        client
            .logs(&args.run, args.step.as_deref(), args.follow)
            .await?;
        let ended = client.run_record(&args.run).await?;
        Ok(after_log(&ended, args.follow))
    })
}
