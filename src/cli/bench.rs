//! `gantry bench ...`: benchmarks that print figures and a ratio against a baseline measured in the
//! same process, so a reader can compare runs made on different machines.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::exit;
use crate::spec;

#[path = "bench_argo.rs"]
pub mod argo;
#[path = "bench_load.rs"]
mod load_client;
#[path = "bench_logs.rs"]
pub mod logs;
#[path = "bench_reconcile.rs"]
pub mod reconcile;
#[path = "bench_webhooks.rs"]
pub mod webhooks;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Parse + validate a ~100-line pipeline, against parsing its YAML alone.
    Spec {
        /// How long to run each measurement
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Per-step overhead of the local executor: a 200-step sequence and a 50-wide parallel group
    /// of `true`, against a shell running `sh -c true` the same way.
    Executor {
        /// Steps in the sequence
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Steps in the parallel group
        #[arg(long, default_value_t = 50)]
        width: usize,
        /// Repetitions of each measurement (the best is reported)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The repository reconciler against `git daemon` on loopback: cold sync of N repositories
    /// with P pipelines each, picking up one push, and a steady-state poll pass (CPU, RSS),
    /// against `git clone --bare` and `git fetch` of the same repositories.
    Reconcile(reconcile::Options),
    /// The webhook path on loopback: push webhook → first step started (p50/p99 over sequential
    /// pushes to a `git daemon` repository), and signed deliveries accepted per second against a
    /// bare 202 endpoint, with every accepted delivery checked in the store afterwards.
    Webhooks(webhooks::WebhookOptions),
    /// The Argo executor on an Argo installation: submit → first step running, and a node's end
    /// → Gantry's step record (p50/p99), against a bare watcher of the same event stream.
    Argo(argo::BenchArgo),
    /// A step's output from its pipe to the store with 10 secrets masked, and the last 100 lines
    /// of that log read back, against `cat` of the same bytes to /dev/null.
    Logs(logs::LogOptions),
}

pub fn run(args: &Args) -> u8 {
    match args.which {
        Which::Spec { seconds } => bench_spec(Duration::from_secs_f64(seconds.clamp(0.1, 600.0))),
        Which::Executor {
            steps,
            width,
            rounds,
        } => bench_executor(steps.max(1), width.max(1), rounds.max(1)),
        Which::Reconcile(ref options) => reconcile::run(options, &mut std::io::stdout().lock()),
        Which::Webhooks(ref options) => webhooks::run(options, &mut std::io::stdout().lock()),
        Which::Argo(ref options) => argo::run(options, &mut std::io::stdout().lock()),
        Which::Logs(ref options) => logs::run(options, &mut std::io::stdout().lock()),
    }
}

/// Times a shell command; the baseline of the executor benchmark.
fn time_shell(script: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .status()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    if !status.success() {
        return Err(format!("baseline script failed: {status}"));
    }
    Ok(start.elapsed())
}

/// Runs a pipeline text through the real path of `gantry run` (store included) and times it.
fn time_pipeline(
    runtime: &tokio::runtime::Runtime,
    store: &crate::store::Store,
    text: &str,
    sandbox: &crate::executor::local::sandbox::Sandbox,
) -> Result<Duration, String> {
    let limits = crate::executor::Limits {
        parallelism: 256,
        ..crate::executor::Limits::default()
    };
    run_pipeline(runtime, store, text, sandbox, limits).map(|(took, _)| took)
}

/// Runs a pipeline text through the real path of `gantry run` (store included); the time it
/// took and the run, which must have succeeded.
fn run_pipeline(
    runtime: &tokio::runtime::Runtime,
    store: &crate::store::Store,
    text: &str,
    sandbox: &crate::executor::local::sandbox::Sandbox,
    limits: crate::executor::Limits,
) -> Result<(Duration, crate::store::RunRecord), String> {
    use crate::executor::{Checkout, local::LocalExecutor};
    use crate::run::{self, RunRequest};
    let pipeline = spec::check(text)
        .pipeline
        .ok_or("the benchmark pipeline does not validate")?;
    let request = RunRequest {
        source: "bench".into(),
        pipeline,
        text: text.to_string(),
        path: "bench".into(),
        params: Default::default(),
        var_overrides: Default::default(),
        trigger: crate::store::Trigger {
            kind: "manual".into(),
            detail: Some("gantry bench".into()),
        },
        git: None,
        version: None,
        checkout: Checkout::None,
        limits,
        keep_run_dir: false,
    };
    let start = Instant::now();
    let prepared = run::prepare(store, request).map_err(|e| e.to_string())?;
    let executor = std::sync::Arc::new(LocalExecutor::with_sandbox(sandbox.clone()));
    let run = runtime
        .block_on(run::execute(
            store,
            executor,
            prepared,
            Default::default(),
            |_, _| {},
        ))
        .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    if run.status != crate::store::RunStatus::Succeeded {
        return Err(format!(
            "benchmark run {} ended {}: {}",
            run.id,
            run.status.as_str(),
            run.message.unwrap_or_default()
        ));
    }
    Ok((elapsed, run))
}

/// Runs a pipeline through the local executor alone (no store), events drained and dropped.
fn time_executor_only(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    text: &str,
) -> Result<Duration, String> {
    use crate::executor::{Checkout, Executor, Limits, RunInput, RunOutcome, local::LocalExecutor};
    let pipeline = spec::check(text)
        .pipeline
        .ok_or("the benchmark pipeline does not validate")?;
    let plan = crate::plan::plan(&pipeline);
    let input = RunInput {
        run_id: "BENCH".into(),
        run_number: 1,
        pipeline: "bench".into(),
        params: Default::default(),
        vars: Default::default(),
        secrets: Default::default(),
        connections: Default::default(),
        git: None,
        trigger: "manual".into(),
        pr_number: None,
        checkout: Checkout::None,
        run_dir: dir.join("executor-only"),
        reuse: Default::default(),
        limits: Limits {
            parallelism: 256,
            ..Limits::default()
        },
    };
    let start = Instant::now();
    let outcome = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let outcome = LocalExecutor::new()
            .execute(&plan, &input, tx, Default::default())
            .await;
        let _ = drain.await;
        outcome
    });
    let elapsed = start.elapsed();
    let _ = std::fs::remove_dir_all(&input.run_dir);
    match outcome {
        Ok(RunOutcome::Succeeded) => {}
        Ok(other) => return Err(format!("executor-only run ended {other:?}")),
        Err(e) => return Err(format!("executor-only run: {e}")),
    }
    Ok(elapsed)
}

fn bench_executor(steps: usize, width: usize, rounds: usize) -> u8 {
    let head = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: bench}\nsteps:\n";
    let mut sequence = head.to_string();
    for i in 0..steps {
        sequence.push_str(&format!("  - {{name: s{i}, script: \"true\"}}\n"));
    }
    let mut parallel = format!("{head}  -\n");
    for i in 0..width {
        parallel.push_str(&format!("    - {{name: p{i}, script: \"true\"}}\n"));
    }
    // A tenth of the sequence too: the difference between the two is what a step costs beyond
    // what a run costs once (its sandbox's start and end, the store's run records).
    let short = (steps / 10).max(1);
    let mut short_sequence = head.to_string();
    for i in 0..short {
        short_sequence.push_str(&format!("  - {{name: s{i}, script: \"true\"}}\n"));
    }
    let seq_shell =
        |n: usize| format!("i=0; while [ $i -lt {n} ]; do sh -c true; i=$((i+1)); done");
    let short_shell = seq_shell(short);
    let seq_shell = seq_shell(steps);
    let par_shell =
        format!("i=0; while [ $i -lt {width} ]; do sh -c true & i=$((i+1)); done; wait");

    // The store and its work dir (a sibling folder) both go at the end.
    let top = std::env::temp_dir().join(format!("gantry-bench-{}", std::process::id()));
    let dir = top.join("data");
    use crate::executor::local::sandbox::{ProcessLimits, Sandbox, UserChoice};
    // As `gantry serve` has it: a sandbox kept warm for the next run.
    let sandbox = match Sandbox::bubblewrap(UserChoice::Default, ProcessLimits::default()) {
        Ok(Sandbox::Bubblewrap(mut b)) => {
            b.prewarm = true;
            Sandbox::Bubblewrap(b)
        }
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("gantry: the sandboxed figures need bubblewrap: {e}");
            return exit::FAILURE;
        }
    };
    let unsandboxed = Sandbox::None;
    let result = (|| -> Result<[(Duration, Duration, Duration, Duration); 3], String> {
        let store = crate::store::Store::open(&dir).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut best = [(Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX); 3];
        for _ in 0..rounds {
            for (i, (shell, text)) in [
                (&seq_shell, &sequence),
                (&par_shell, &parallel),
                (&short_shell, &short_sequence),
            ]
            .into_iter()
            .enumerate()
            {
                best[i].0 = best[i].0.min(time_shell(shell)?);
                best[i].1 = best[i].1.min(time_executor_only(&runtime, &dir, text)?);
                best[i].2 = best[i]
                    .2
                    .min(time_pipeline(&runtime, &store, text, &unsandboxed)?);
                // A server's run finds the spare ready unless runs come faster than a sandbox
                // starts (the first run here starts its own); waiting on the runtime warms it.
                if let Sandbox::Bubblewrap(b) = &sandbox {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    runtime.block_on(async {
                        while !b.spares.ready() && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    });
                }
                best[i].3 = best[i]
                    .3
                    .min(time_pipeline(&runtime, &store, text, &sandbox)?);
            }
        }
        Ok(best)
    })();
    let _ = std::fs::remove_dir_all(&top);
    let best = match result {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gantry: executor benchmark failed: {e}");
            return exit::FAILURE;
        }
    };
    println!(
        "best of {rounds} rounds. baseline: /bin/sh running `sh -c true` in a loop (parallel: in the background, then wait)"
    );
    println!(
        "executor: the local executor alone, unsandboxed; gantry: the whole `gantry run` path with the store, unsandboxed; sandboxed: the same in bubblewrap (one sandbox per run, started ahead as `gantry serve` does, and the next run's started while it runs, as there)"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (label, n, (shell, executor, gantry, jailed)) in
        [("sequence", steps, best[0]), ("parallel", width, best[1])]
    {
        println!(
            "{label:<9} {n:>4} steps  baseline {:>7.1} ms ({:.2} ms/step)  executor {:>7.1} ms ({:.2} ms/step)  gantry {:>7.1} ms ({:.2} ms/step)  sandboxed {:>7.1} ms ({:.2} ms/step)  ratio {:.2} unsandboxed, {:.2} sandboxed",
            ms(shell),
            ms(shell) / n as f64,
            ms(executor),
            ms(executor) / n as f64,
            ms(gantry),
            ms(gantry) / n as f64,
            ms(jailed),
            ms(jailed) / n as f64,
            gantry.as_secs_f64() / shell.as_secs_f64(),
            jailed.as_secs_f64() / shell.as_secs_f64()
        );
    }
    if steps > short {
        // Per step beyond the run's fixed cost: the slope between the two sequences.
        let (long, brief) = (best[0], best[2]);
        let n = (steps - short) as f64;
        let slope = |a: Duration, b: Duration| (ms(a) - ms(b)).max(0.0) / n;
        let (shell, gantry, jailed) = (
            slope(long.0, brief.0),
            slope(long.2, brief.2),
            slope(long.3, brief.3),
        );
        let fixed = |total: Duration, per_step: f64| ms(total) - per_step * steps as f64;
        println!(
            "per step  {short:>4} vs {steps} steps  baseline {shell:.2} ms/step  gantry {gantry:.2} ms/step  sandboxed {jailed:.2} ms/step  ratio {:.2} unsandboxed, {:.2} sandboxed;  once per run: gantry {:.1} ms, sandboxed {:.1} ms",
            gantry / shell,
            jailed / shell,
            fixed(long.2, gantry),
            fixed(long.3, jailed),
        );
    }
    exit::OK
}

/// Calls `f` repeatedly for about `budget`, and returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    // Warm-up: caches, allocator.
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn bench_spec(budget: Duration) -> u8 {
    let text = sample_pipeline();
    let lines = text.lines().count();
    let checked = spec::check(&text);
    if checked.pipeline.is_none() {
        eprintln!("gantry: the benchmark pipeline does not validate:");
        for d in checked.diagnostics.iter() {
            eprint!(
                "{}",
                spec::diagnostic::render("bench.yaml", &text, d, Default::default())
            );
        }
        return exit::FAILURE;
    }
    let limits = spec::Limits::default();
    let (yaml_rate, yaml_n) = rate(budget, || {
        let _ = black_box(spec::yaml::parse(black_box(&text), &limits));
    });
    // What any tree built from this parser pays, and the road through serde that every file took
    // before the quick one.
    let (events_rate, events_n) = rate(budget, || {
        let mut parser = granit_parser::Parser::new_from_str(black_box(&text));
        while let Some(Ok(event)) = parser.next_event() {
            black_box(&event);
        }
    });
    let (serde_rate, serde_n) = rate(budget, || {
        let _ = black_box(spec::yaml::parse_with_serde(black_box(&text), &limits));
    });
    let (full_rate, full_n) = rate(budget, || {
        let _ = black_box(spec::check(black_box(&text)));
    });
    println!("pipeline: {lines} lines, {} bytes; one thread", text.len());
    println!(
        "floor     yaml events only    {:>10.0} files/s  {:>8.1} µs/file  ({events_n} runs)",
        events_rate,
        1e6 / events_rate
    );
    println!(
        "before    yaml tree via serde {:>10.0} files/s  {:>8.1} µs/file  ({serde_n} runs)",
        serde_rate,
        1e6 / serde_rate
    );
    println!(
        "baseline  yaml tree           {:>10.0} files/s  {:>8.1} µs/file  ({yaml_n} runs)",
        yaml_rate,
        1e6 / yaml_rate
    );
    println!(
        "gantry    parse + validate    {:>10.0} specs/s  {:>8.1} µs/spec  ({full_n} runs)",
        full_rate,
        1e6 / full_rate
    );
    println!(
        "ratio     full / yaml-only time: {:.2}x",
        yaml_rate / full_rate
    );
    println!("throughput: {full_rate:.0} specs/second/core");
    exit::OK
}

/// A realistic pipeline of about a hundred lines: parameters of every type, templates, a parallel
/// group, outputs, secrets, a schedule and a publish step.
pub fn sample_pipeline() -> String {
    r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata:
  name: provision-postgres
  displayName: Provision PostgreSQL
  description: Creates a database and a login role, then publishes it
  labels: {team: platform, tier: data}
on:
  manual: true
  push:
    branches: [main, "release/*"]
    paths: ["infra/postgres/**"]
  pullRequest:
    branches: [main]
    types: [opened, synchronize]
  comment: true
  schedule:
    - cron: "0 3 * * 1-5"
      timezone: Europe/Berlin
      parameters: {environment: dev}
concurrency:
  group: "db-{{params.environment}}"
  policy: queue
timeout: 30m
parameters:
  - name: db_name
    displayName: Database name
    default: orders
    pattern: "^[a-z_][a-z0-9_]*$"
  - name: environment
    type: enum
    enum: [dev, staging, prod]
    default: dev
  - name: replicas
    type: integer
    minimum: 1
    maximum: 5
    default: 1
  - name: dry_run
    type: boolean
    default: false
variables: [pg_host, pg_port]
secrets: [pg_admin_password]
templates:
  - name: psql
    inputs:
      - name: sql
      - name: database
        default: postgres
    script: |
      psql -d "$DATABASE" -c "$SQL"
    env:
      SQL: "{{inputs.sql}}"
      DATABASE: "{{inputs.database}}"
      PGHOST: "{{vars.pg_host}}"
steps:
  - name: checkout
    template: gantry/git-checkout@v1
  - - name: lint
      script: "sh infra/postgres/lint.sh"
    - name: plan
      script: |
        #!/bin/sh
        set -eu
        echo "planning $DB_NAME with $REPLICAS replicas"
      env:
        DB_NAME: "{{params.db_name}}"
        REPLICAS: "{{params.replicas}}"
  - name: provision
    image: postgres:16
    script: |
      #!/bin/sh
      set -eu
      createdb "$DB_NAME"
      printf '%s' "$PGHOST" > "$GANTRY_OUTPUTS/host"
      printf '%s' "$NEW_PASSWORD" > "$GANTRY_OUTPUTS/password"
    env:
      DB_NAME: "{{params.db_name}}"
      PGHOST: "{{vars.pg_host}}"
      PGPORT: "{{vars.pg_port}}"
      PGPASSWORD: "{{secrets.pg_admin_password}}"
      NEW_PASSWORD: "{{secrets.pg_admin_password}}"
    outputs:
      - name: host
      - name: password
        secret: true
    when: "{{params.dry_run}} == false && '{{params.environment}}' != 'none'"
    retry: {limit: 2, backoff: 10s, factor: 2, maxBackoff: 2m, policy: OnFailure}
    timeout: 10m
  - name: grant
    template: psql
    arguments:
      sql: "GRANT CONNECT ON DATABASE orders TO app"
      database: "{{params.db_name}}"
    continueOn: {failed: true}
  - name: publish
    template: gantry/marketplace-publish@v1
    arguments:
      resource:
        name: "{{params.db_name}}-db"
        version: 1.0.0
        category: database
        description: PostgreSQL database for {{params.db_name}}
        tags: [postgres, "{{params.environment}}"]
        properties:
          host: "{{steps.provision.outputs.host}}"
        connectionCredentials:
          - environments: ["{{params.environment}}"]
            parameters:
              - {key: DB_HOST, value: "{{steps.provision.outputs.host}}"}
              - {key: DB_NAME, value: "{{params.db_name}}"}
              - {key: DB_PASSWORD, value: "{{steps.provision.outputs.password}}", isSecret: true}
"#
    .to_string()
}
