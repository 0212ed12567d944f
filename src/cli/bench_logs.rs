//! `gantry bench logs`: a step's output from its pipe to the store, and the tail read back.
//!
//! Generated log text (lines of 40 to 160 bytes, some holding one of 10 secrets) is written to a
//! file once. Measured in the same run:
//! - baseline: `cat FILE > /dev/null`, the bytes read through a pipe and dropped;
//! - masking alone: the bytes through `LineSplitter` with the 10 secrets, in 64 KiB reads, as
//!   the local executor reads a step's pipe;
//! - ingest: a run whose one step `cat`s the file through the whole `gantry run` path (the local
//!   executor unsandboxed, masking, batching, the store), with the 10 secrets declared;
//! - tail: the last 100 lines of that step's log read back from the store (best of 5).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::exit;
use crate::executor::mask::{LineSplitter, Secrets};

#[derive(Debug, clap::Args)]
pub struct LogOptions {
    /// Megabytes of log text the step writes
    #[arg(long, default_value_t = 256)]
    mb: u64,
}

const SECRETS: usize = 10;

fn secret(i: usize) -> String {
    format!("s3cr3t-value-{i:02}-Zq8xW")
}

/// Writes about `bytes` of log lines to `path`; every 50th line holds a secret. Returns the
/// bytes and lines written.
fn write_log(path: &Path, bytes: u64) -> std::io::Result<(u64, u64)> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0u64;
    let mut n = 0u64;
    while written < bytes {
        let pad = 40 + (n * 37 % 120) as usize;
        let line = if n.is_multiple_of(50) {
            format!(
                "{n:>9} connecting with password {} to db-{n}\n",
                secret(n as usize % SECRETS)
            )
        } else {
            format!("{n:>9} {}\n", "x".repeat(pad))
        };
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        n += 1;
    }
    out.flush()?;
    Ok((written, n))
}

fn cat_to_null(path: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let status = std::process::Command::new("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cat: {e}"))?;
    if !status.success() {
        return Err(format!("cat failed: {status}"));
    }
    Ok(started.elapsed())
}

fn mask_only(path: &Path) -> Result<(Duration, usize), String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secrets = Secrets::new();
    for i in 0..SECRETS {
        secrets.add(&secret(i));
    }
    let started = Instant::now();
    let mut splitter = LineSplitter::new(secrets, 64 * 1024);
    let mut lines = 0;
    let mut masked = 0;
    for chunk in data.chunks(64 * 1024) {
        for line in splitter.push(chunk) {
            masked += usize::from(line.contains("***"));
            lines += 1;
        }
    }
    lines += splitter.finish().len();
    std::hint::black_box(lines);
    Ok((started.elapsed(), masked))
}

/// The whole `gantry run` path over a step that `cat`s the file; returns the time and the run.
fn ingest(
    store: &crate::store::Store,
    path: &Path,
    bytes: u64,
) -> Result<(Duration, String), String> {
    let names: Vec<String> = (0..SECRETS).map(|i| format!("S{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        store
            .set_secret(None, name, &secret(i))
            .map_err(|e| e.to_string())?;
    }
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {{name: logs}}\nsecrets: [{}]\nsteps:\n  - {{name: talk, command: [cat, \"{}\"]}}\n",
        names.join(", "),
        path.display()
    );
    let limits = crate::executor::Limits {
        max_step_log: bytes.saturating_mul(2),
        max_run_log: bytes.saturating_mul(2),
        ..crate::executor::Limits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let unsandboxed = crate::executor::local::sandbox::Sandbox::None;
    let (took, record) = super::run_pipeline(&runtime, store, &text, &unsandboxed, limits)?;
    Ok((took, record.id))
}

pub fn run(options: &LogOptions, out: &mut dyn Write) -> u8 {
    let dir = std::env::temp_dir().join(format!("gantry-bench-logs-{}", std::process::id()));
    let result = (|| -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("step.log");
        let (bytes, lines) =
            write_log(&file, options.mb.max(1) << 20).map_err(|e| e.to_string())?;
        let mb = bytes as f64 / f64::from(1 << 20);
        let rate = |d: Duration| mb / d.as_secs_f64().max(1e-9);
        let cat = (0..3)
            .map(|_| cat_to_null(&file))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min()
            .unwrap_or_default();
        let (masking, masked) = mask_only(&file)?;
        let store = crate::store::Store::open(&dir.join("data")).map_err(|e| e.to_string())?;
        let (ingested, run_id) = ingest(&store, &file, bytes)?;
        let stored_secret = store
            .log_tail(&run_id, 0, 1_000)
            .map_err(|e| e.to_string())?
            .iter()
            .any(|l| (0..SECRETS).any(|i| l.text.contains(&secret(i))));
        if stored_secret {
            return Err("a secret reached the stored log unmasked".into());
        }
        // Every line reached the store, in order.
        let (mut stored, mut cursor, mut in_order) = (0u64, None, true);
        loop {
            let (page, next) = store
                .logs_page(&run_id, Some(0), cursor.as_ref(), 16 << 20)
                .map_err(|e| e.to_string())?;
            if page.is_empty() {
                break;
            }
            for (_, line) in &page {
                let number = line.text.split_whitespace().next();
                in_order &= number.and_then(|n| n.parse::<u64>().ok()) == Some(stored);
                stored += 1;
            }
            cursor = Some(next);
        }
        if stored != lines || !in_order {
            return Err(format!(
                "the store holds {stored} of the {lines} lines written (in order: {in_order})"
            ));
        }
        let mut tail = Duration::MAX;
        let mut shown = 0;
        for _ in 0..5 {
            let started = Instant::now();
            shown = store
                .log_tail(&run_id, 0, 100)
                .map_err(|e| e.to_string())?
                .len();
            tail = tail.min(started.elapsed());
        }
        let w = |r: std::io::Result<()>| r.map_err(|e| e.to_string());
        w(writeln!(
            out,
            "log text: {mb:.0} MiB, {lines} lines, {SECRETS} secrets ({masked} lines masked; every line stored, in order)"
        ))?;
        w(writeln!(
            out,
            "baseline  cat FILE > /dev/null        {:>8.1} ms  {:>8.0} MiB/s",
            cat.as_secs_f64() * 1e3,
            rate(cat)
        ))?;
        w(writeln!(
            out,
            "masking   LineSplitter, 64 KiB reads  {:>8.1} ms  {:>8.0} MiB/s  ({:.2}x cat's time)",
            masking.as_secs_f64() * 1e3,
            rate(masking),
            masking.as_secs_f64() / cat.as_secs_f64().max(1e-9)
        ))?;
        w(writeln!(
            out,
            "ingest    cat in a step, to the store {:>8.1} ms  {:>8.0} MiB/s  ({:.2}x cat's time)",
            ingested.as_secs_f64() * 1e3,
            rate(ingested),
            ingested.as_secs_f64() / cat.as_secs_f64().max(1e-9)
        ))?;
        w(writeln!(
            out,
            "tail      last {shown} lines of the {mb:.0} MiB step log  {:.2} ms (best of 5)",
            tail.as_secs_f64() * 1e3
        ))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("gantry: logs benchmark failed: {e}");
            exit::FAILURE
        }
    }
}
