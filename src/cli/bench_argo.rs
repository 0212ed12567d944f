//! `gantry bench argo`: the Argo executor's own share of a run on an Argo installation. Each run is
//! a sequence of `true` steps submitted through the real executor; beside it a bare watcher of the
//! same Workflow's event stream (the baseline: what any client of the Argo Server sees, with no
//! work of Gantry's) notes when each node is seen succeeded. Printed, as p50/p99 over every step:
//! submit → first step running, a node's `finishedAt` → Gantry's step record, and the same for the
//! bare watcher, with their ratio. Timestamps are the server's, so their precision is its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::executor::argo::client::{Client, Connection};
use crate::executor::argo::{ArgoExecutor, ArgoOptions};
use crate::executor::{Checkout, Event, Executor, Limits, RunInput, RunOutcome};

#[derive(Debug, clap::Args)]
pub struct BenchArgo {
    /// The Argo Server
    #[arg(long)]
    pub server: String,
    /// The Kubernetes API server, for the run's Secret (default: --server)
    #[arg(long)]
    pub kube: Option<String>,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A bearer token for both
    #[arg(long, env = "ARGO_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Steps per run
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Runs
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// Milliseconds at the `p` quantile (0..=1) of `samples`.
fn quantile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[at.min(samples.len() - 1)]
}

fn millis_since(from: &str, to: DateTime<Utc>) -> Option<f64> {
    let from = DateTime::parse_from_rfc3339(from).ok()?.with_timezone(&Utc);
    Some((to - from).num_microseconds()? as f64 / 1000.0)
}

pub fn run(o: &BenchArgo, out: &mut dyn std::io::Write) -> u8 {
    let runtime = match crate::cli::multi_thread_runtime(Some(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(measure(o)) {
        Ok((mut first, mut gantry, mut bare)) => {
            let line = |name: &str, s: &mut Vec<f64>| {
                format!(
                    "{name:<44} p50 {:>8.1} ms  p99 {:>8.1} ms  ({} samples)",
                    quantile(s, 0.5),
                    quantile(s, 0.99),
                    s.len()
                )
            };
            let ratio = quantile(&mut gantry, 0.5) / quantile(&mut bare, 0.5).max(0.001);
            let text = format!(
                "gantry bench argo: {} run(s) of {} step(s) on {}\n{}\n{}\n{}\nratio (p50, gantry / bare watcher): {ratio:.2}\n",
                o.runs,
                o.steps,
                o.server,
                line("submit → first step running", &mut first),
                line("node finishedAt → gantry step record", &mut gantry),
                line("node finishedAt → bare watcher (baseline)", &mut bare),
            );
            let _ = out.write_all(text.as_bytes());
            exit::OK
        }
        Err(e) => {
            eprintln!("gantry: bench argo: {e}");
            exit::FAILURE
        }
    }
}

type Samples = (Vec<f64>, Vec<f64>, Vec<f64>);

async fn measure(o: &BenchArgo) -> Result<Samples, String> {
    let connection = Connection {
        server: o.server.clone(),
        kube: o.kube.clone().unwrap_or_else(|| o.server.clone()),
        namespace: o.namespace.clone(),
        token: o.token.clone().into(),
        kube_token: None,
        ca_pem: None,
    };
    let executor = ArgoExecutor::new("bench", connection.clone(), ArgoOptions::default())
        .map_err(|e| e.to_string())?;
    let client = Client::new(connection).map_err(|e| e.to_string())?;
    let steps: String = (0..o.steps.max(1))
        .map(|i| format!("  - {{name: s{i}, script: 'true'}}\n"))
        .collect();
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: bench\nsteps:\n{steps}"
    );
    let pipeline = crate::spec::check(&text)
        .pipeline
        .ok_or("the benchmark's pipeline is invalid")?;
    let plan = crate::plan::plan(&pipeline);
    let (mut first, mut gantry, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..o.runs.max(1) {
        let input = RunInput {
            run_id: format!("01BENCH{r:019}"),
            run_number: r as u64 + 1,
            pipeline: "bench".into(),
            params: BTreeMap::new(),
            vars: BTreeMap::new(),
            secrets: BTreeMap::new(),
            connections: Default::default(),
            git: None,
            trigger: "manual".into(),
            pr_number: None,
            checkout: Checkout::None,
            run_dir: std::env::temp_dir().join("gantry-bench-argo"),
            reuse: Default::default(),
            limits: Limits::default(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        // Step index → when Gantry recorded it finished; the bare watcher's: task name → seen.
        let finished: Arc<Mutex<BTreeMap<usize, DateTime<Utc>>>> = Arc::default();
        let seen: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>> = Arc::default();
        let started = Instant::now();
        let collector = {
            let (finished, seen, client) = (finished.clone(), seen.clone(), client.clone());
            tokio::spawn(async move {
                let mut first_running = None;
                let mut workflow = None;
                while let Some(event) = rx.recv().await {
                    match event {
                        Event::Attached { external_id } => {
                            let (seen, client, name) =
                                (seen.clone(), client.clone(), external_id.clone());
                            tokio::spawn(async move { bare_watch(&client, &name, &seen).await });
                            workflow = Some(external_id);
                        }
                        Event::StepStarted { .. } if first_running.is_none() => {
                            first_running = Some(started.elapsed());
                        }
                        Event::StepFinished { step, .. } => {
                            if let Ok(mut f) = finished.lock() {
                                f.insert(step, Utc::now());
                            }
                        }
                        _ => {}
                    }
                }
                (first_running, workflow)
            })
        };
        let outcome = executor
            .execute(&plan, &input, tx, CancellationToken::new())
            .await
            .map_err(|e| e.to_string())?;
        if outcome != RunOutcome::Succeeded {
            return Err(format!("run {r} ended {outcome:?}"));
        }
        let (first_running, workflow) = collector.await.map_err(|e| e.to_string())?;
        if let Some(d) = first_running {
            first.push(d.as_secs_f64() * 1000.0);
        }
        let name = workflow.ok_or("the executor named no Workflow")?;
        // The bare watcher may still be reading the last events.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let wf = client
            .get(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the Workflow is gone")?;
        let nodes = wf["status"]["nodes"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let finished = finished.lock().map(|f| f.clone()).unwrap_or_default();
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        for (i, step) in plan.steps.iter().enumerate() {
            let Some(node) = nodes
                .values()
                .find(|n| n["displayName"] == step.name.as_str())
            else {
                continue;
            };
            let Some(done) = node["finishedAt"].as_str() else {
                continue;
            };
            if let Some(ms) = finished.get(&i).and_then(|at| millis_since(done, *at)) {
                gantry.push(ms);
            }
            if let Some(ms) = seen.get(&step.name).and_then(|at| millis_since(done, *at)) {
                bare.push(ms);
            }
        }
    }
    Ok((first, gantry, bare))
}

/// The baseline: reads the Workflow's events and notes when each task's node is first seen
/// succeeded, doing nothing else.
async fn bare_watch(client: &Client, name: &str, seen: &Mutex<BTreeMap<String, DateTime<Utc>>>) {
    let Ok(mut events) = client.events(name).await else {
        return;
    };
    while let Some(event) = events.next().await {
        let now = Utc::now();
        let object: &Value = &event["object"];
        if let Some(nodes) = object["status"]["nodes"].as_object()
            && let Ok(mut seen) = seen.lock()
        {
            for node in nodes.values() {
                if node["phase"] == "Succeeded"
                    && let Some(task) = node["displayName"].as_str()
                {
                    seen.entry(task.to_string()).or_insert(now);
                }
            }
        }
        if !object["status"]["finishedAt"].is_null() {
            return;
        }
    }
}
