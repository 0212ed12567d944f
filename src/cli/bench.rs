//! `gantry bench ...`: benchmarks that print figures and a ratio against a baseline measured in the
//! same process, so a reader can compare runs made on different machines.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::exit;
use crate::spec;

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
}

pub fn run(args: &Args) -> u8 {
    match args.which {
        Which::Spec { seconds } => bench_spec(Duration::from_secs_f64(seconds.clamp(0.1, 600.0))),
    }
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
    let (full_rate, full_n) = rate(budget, || {
        let _ = black_box(spec::check(black_box(&text)));
    });
    println!("pipeline: {lines} lines, {} bytes; one thread", text.len());
    println!(
        "baseline  yaml parse only     {:>10.0} files/s  {:>8.1} µs/file  ({yaml_n} runs)",
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
