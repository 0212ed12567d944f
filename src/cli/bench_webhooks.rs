//! `gantry bench webhooks`: the webhook path, measured on loopback against an in-process server.
//!
//! - intake: signed deliveries accepted (verified, de-duplicated, stored durably) per second from
//!   a load generator in this process, against the same generator hitting a bare endpoint that
//!   answers 202 without doing anything (the baseline); afterwards every accepted delivery must be
//!   in the store.
//! - latency: push webhook → first step process started, with the repository already mirrored
//!   and served by `git daemon`: p50/p99 over sequential real pushes.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::load_client;
use super::reconcile::percentile;
use crate::forge::Forge;
use crate::forge::webhook::sign;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct WebhookOptions {
    /// Seconds of load for the intake measurement
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Concurrent connections of the load generator
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Sequential pushes for the latency measurement (0: none)
    #[arg(long, default_value_t = 200)]
    pub pushes: usize,
    /// Body sizes in bytes of the intake runs, one run each: comma-separated. 8,500 is a GitHub
    /// push, 30,000 a pull request; bodies are real-shaped (GitHub's own sample objects)
    #[arg(long, value_delimiter = ',', default_value = "200,8500,30000")]
    pub body_size: Vec<usize>,
    /// The server's `[storage] cache` in MiB (default: the store's, 4); 1024 is sled's own
    /// default, for a before/after figure
    #[arg(long)]
    pub cache_mib: Option<u64>,
}

const SECRET: &str = "bench-webhook-secret";
const TOKEN: &str = "bench-token-0123456789abcdef";
const REPO: &str = "acme/bench";

/// Git for the benchmark's repositories (isolated from the machine's configuration), its
/// output trimmed.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    super::reconcile::git_output(dir, args).map(|out| out.trim().to_string())
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `git daemon` in a process group of its own, killed with it on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group this daemon leads.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}

fn start_daemon(root: &Path, port: u16) -> Result<Daemon, String> {
    let mut cmd = Command::new("git");
    cmd.args([
        "daemon",
        "--reuseaddr",
        "--export-all",
        "--enable=receive-pack",
        "--listen=127.0.0.1",
    ])
    .arg(format!("--port={port}"))
    .arg(format!("--base-path={}", root.display()))
    .arg(root)
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start git daemon: {e}"))?;
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("git daemon did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(daemon)
}

const PIPELINE: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: on-push\non:\n  push: {}\nsteps:\n  - name: first\n    script: 'true'\n";

/// A served repository with one push-triggered pipeline, and a work clone to push from.
fn setup_repo(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let served = root.join("served");
    let bare = served.join("bench.git");
    std::fs::create_dir_all(&bare).map_err(|e| e.to_string())?;
    git(&bare, &["init", "--bare", "--quiet"])?;
    let work = root.join("work");
    std::fs::create_dir_all(work.join(".gantry/pipelines")).map_err(|e| e.to_string())?;
    git(&work, &["init", "--quiet"])?;
    std::fs::write(work.join(".gantry/pipelines/on-push.yaml"), PIPELINE)
        .map_err(|e| e.to_string())?;
    std::fs::write(work.join("counter"), "0").map_err(|e| e.to_string())?;
    git(&work, &["add", "--all"])?;
    git(&work, &["commit", "--quiet", "-m", "start"])?;
    let bare_str = bare.display().to_string();
    git(
        &work,
        &["push", "--quiet", &bare_str, "HEAD:refs/heads/main"],
    )?;
    Ok((served, work))
}

/// The benchmark server's `gantry.toml`.
fn config_toml(data_dir: &Path, listen: SocketAddr, url: &str, cache_mib: Option<u64>) -> String {
    let cache = cache_mib
        .map(|m| format!("cache = \"{m}MiB\"\n"))
        .unwrap_or_default();
    format!(
        "[server]\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\n\
         [storage]\ndata_dir = \"{}\"\n{cache}\
         [[auth.tokens]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\n\
         [[repos]]\nname = \"bench\"\nurl = \"{url}\"\nprovider = \"github\"\nrepo = \"{REPO}\"\n\
         branch = \"main\"\npoll_interval = \"0s\"\nwebhook_secret = \"{SECRET}\"\n",
        data_dir.display()
    )
}

/// The server under test: `gantry serve` as a process of its own, so its memory is its own.
struct ServerProcess {
    child: std::process::Child,
}

impl ServerProcess {
    fn start(dir: &Path, toml: &str) -> Result<ServerProcess, String> {
        let config = dir.join("gantry.toml");
        std::fs::write(&config, toml).map_err(|e| format!("cannot write the config: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("serve.log")).map_err(|e| e.to_string())?;
        let child = std::process::Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--max-running", "4", "--shutdown-grace", "5s"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start gantry serve: {e}"))?;
        Ok(ServerProcess { child })
    }

    /// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
    fn memory(&self, field: &str) -> u64 {
        memory(&format!("/proc/{}/status", self.child.id()), field)
    }

    /// Resets the peak RSS (VmHWM) to the current RSS (Linux: `5` into `clear_refs`).
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// SIGTERM, then waits for the graceful stop.
    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A signed GitHub delivery.
fn delivery(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    id: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let mut r = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", id)
        .body(body.to_vec());
    for (k, v) in sign(Forge::Github, body, SECRET) {
        r = r.header(k, v);
    }
    r
}

/// GitHub's `pull_request` `synchronize` sample delivery (see tests/fixtures/webhooks/README.md
/// for its origin): real-shaped objects (a pull request, a repository, a user) that make a bench
/// body as large as a real one, with as many quotes, URLs and nested keys.
const PR_SAMPLE: &str =
    include_str!("../../tests/fixtures/webhooks/samples/github-pull_request-synchronize.json");

/// Where the delivery id goes in a body template.
const ID_MARK: &str = "@@DELIVERY@@";

/// A PR comment without a command, `size` bytes long (give or take the id's length): stored like
/// any delivery, and processed without a fetch, so the intake figure is not the processor's.
/// Beyond its own few fields it carries objects of GitHub's pull request sample, then padding.
/// Returned as the text before and after the delivery id, so that every delivery gets its own
/// body (Gantry takes the same body under a new id for a replay) without building it again.
fn comment_template(size: usize) -> (String, String) {
    let mut body = json!({
        "action": "created",
        "issue": {"number": 1, "pull_request": {"url": "x"}},
        "comment": {"id": ID_MARK, "body": "looks good", "user": {"login": "alice"}},
        "repository": {"full_name": REPO},
        "sender": {"login": "alice"}
    });
    let sample: serde_json::Value = serde_json::from_str(PR_SAMPLE).unwrap_or_default();
    let mut parts: Vec<&serde_json::Value> = ["sender", "repository", "pull_request"]
        .iter()
        .filter_map(|k| sample.get(*k))
        .collect();
    parts.sort_by_key(|v| v.to_string().len());
    let len = |v: &serde_json::Value| v.to_string().len();
    let mut i = 0;
    loop {
        let fitting = parts
            .iter()
            .rev()
            .find(|p| len(&body) + len(p) + 16 <= size)
            .copied();
        let Some(part) = fitting else { break };
        body[format!("context_{i}")] = part.clone();
        i += 1;
    }
    let room = size.saturating_sub(len(&body) + 14);
    if room > 0 {
        body["padding"] = json!("x".repeat(room));
    }
    let text = body.to_string();
    match text.split_once(ID_MARK) {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (text, String::new()),
    }
}

/// Sends deliveries of about `size` bytes from `connections` tasks for `seconds`; every tenth is
/// a redelivery of an earlier id. Returns (answers per second, ids accepted as new, failures).
async fn load(
    addr: SocketAddr,
    connections: usize,
    seconds: f64,
    signed: bool,
    size: usize,
) -> Result<(f64, Vec<String>, u64), String> {
    let template = Arc::new(comment_template(size));
    let sent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut opened = Vec::new();
    for _ in 0..connections {
        opened.push(
            load_client::Connection::open(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?,
        );
    }
    let host = addr.to_string();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut connection) in opened.into_iter().enumerate() {
        let (sent, failures) = (sent.clone(), failures.clone());
        let (template, host) = (template.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                // Ids differ between runs of different sizes: no run redelivers another's.
                let id = if n.is_multiple_of(10) {
                    format!("s{size}-c{c}-{}", n - 1)
                } else {
                    format!("s{size}-c{c}-{n}")
                };
                // The baseline gets the same headers, unchecked.
                let body = format!("{}{id}{}", template.0, template.1).into_bytes();
                let signature = sign(Forge::Github, &body, SECRET);
                let mut headers = vec![
                    ("content-type", "application/json"),
                    ("x-github-event", "issue_comment"),
                    ("x-github-delivery", id.as_str()),
                ];
                headers.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let request = load_client::post(&host, "/hooks/github", &headers, &body);
                match connection.send(&request).await {
                    Ok(a) if (200..300).contains(&a.status) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let new = b"\"duplicate\":false";
                        if signed && a.body.windows(new.len()).any(|w| w == new) {
                            accepted.push(id);
                        }
                    }
                    other => {
                        if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                            let what = match &other {
                                Ok(a) => format!(
                                    "answered {}: {}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                ),
                                Err(e) => format!("{e}"),
                            };
                            eprintln!("gantry: bench webhooks: the first failed request: {what}");
                        }
                        // A connection the server closed is opened again.
                        if other.is_err() {
                            match load_client::Connection::open(addr).await {
                                Ok(c) => connection = c,
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        accepted.extend(t.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        sent.load(Ordering::Relaxed) as f64 / elapsed,
        accepted,
        failures.load(Ordering::Relaxed),
    ))
}

/// A bare endpoint: 202 for anything, nothing checked or stored.
async fn baseline_server() -> Result<(SocketAddr, CancellationToken), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let app = axum::Router::new().route(
        "/hooks/github",
        axum::routing::post(|| async { (axum::http::StatusCode::ACCEPTED, "{}") }),
    );
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok((addr, stop))
}

async fn wait_healthy(base: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bench(opts: &WebhookOptions, out: &mut dyn Write) -> Result<bool, String> {
    let dir = tempfile_dir()?;
    let (served, work) = setup_repo(&dir)?;
    let daemon_port = free_port()?;
    let _daemon = start_daemon(&served, daemon_port)?;
    let url = format!("git://127.0.0.1:{daemon_port}/bench.git");
    let data_dir = dir.join("data");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let server = ServerProcess::start(&dir, &config_toml(&data_dir, listen, &url, opts.cache_mib))?;
    let base = format!("http://{listen}");
    wait_healthy(&base).await?;
    let hook = format!("{base}/hooks/github");
    let http = reqwest::Client::new();

    // ---- latency: push → first step started ----------------------------------------------
    let mut latencies = Vec::new();
    let bare = served.join("bench.git").display().to_string();
    let mut before = git(&work, &["rev-parse", "HEAD"])?;
    // The mirror is cloned by the first sync; wait for it so every push finds it in place.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data_dir.join("mirrors/bench.git/HEAD").exists() {
        if Instant::now() > deadline {
            return Err("the repository was never mirrored".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baseline = dir.join("baseline.git");
    git(&dir, &["clone", "--quiet", "--bare", &url, "baseline.git"])?;
    let mut fetches = Vec::new();
    for i in 0..opts.pushes {
        std::fs::write(work.join("counter"), (i + 1).to_string()).map_err(|e| e.to_string())?;
        git(&work, &["commit", "--quiet", "-am", &format!("push {i}")])?;
        git(&work, &["push", "--quiet", &bare, "HEAD:refs/heads/main"])?;
        let after = git(&work, &["rev-parse", "HEAD"])?;
        let body = json!({
            "ref": "refs/heads/main", "before": before, "after": after,
            "created": false, "deleted": false, "forced": false,
            "repository": {"full_name": REPO}, "pusher": {"name": "bench"},
            "sender": {"login": "bench"}, "head_commit": {"id": after}
        })
        .to_string();
        let t0 = chrono::Utc::now();
        let response = delivery(&http, &hook, "push", &format!("push-{i}"), body.as_bytes())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("push delivery answered {}", response.status()));
        }
        let started = wait_first_step(&http, &base, &after).await?;
        latencies.push((started - t0).to_std().unwrap_or_default());
        // The baseline: what `git fetch` alone takes to bring the same push from the daemon.
        let t = Instant::now();
        git(
            &baseline,
            &["fetch", "--quiet", &url, "+refs/heads/*:refs/heads/*"],
        )?;
        fetches.push(t.elapsed());
        before = after;
    }
    latencies.sort();
    fetches.sort();

    // ---- intake: signed deliveries per second, one run per body size -----------------------
    struct Intake {
        size: usize,
        rate: f64,
        base_rate: f64,
        new: usize,
        failures: u64,
        peak_kib: u64,
        settled_kib: u64,
        settle: Duration,
    }
    let rss_before = server.memory("VmRSS:");
    let mut intakes = Vec::new();
    let mut accepted_all: Vec<String> = Vec::new();
    for &size in &opts.body_size {
        server.reset_peak();
        let (rate, accepted, failures) =
            load(listen, opts.connections, opts.seconds, true, size).await?;
        let peak_kib = server.memory("VmHWM:");
        // The backlog drains in the background; RSS is read once it has settled (four
        // readings in a row within 2%), or after 60 s.
        let settle_start = Instant::now();
        let mut settled = server.memory("VmRSS:");
        let mut steady = 0;
        while steady < 4 && settle_start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = server.memory("VmRSS:");
            if now.abs_diff(settled) * 50 <= settled.max(1) {
                steady += 1;
            } else {
                steady = 0;
            }
            settled = now;
        }
        let settle = settle_start.elapsed();
        let (base_addr, base_stop) = baseline_server().await?;
        let (base_rate, _, _) =
            load(base_addr, opts.connections, opts.seconds, false, size).await?;
        base_stop.cancel();
        let new = accepted.iter().collect::<BTreeSet<_>>().len();
        accepted_all.extend(accepted);
        intakes.push(Intake {
            size,
            rate,
            base_rate,
            new,
            failures,
            peak_kib,
            settled_kib: settled,
            settle,
        });
    }
    server.stop();

    // Every accepted delivery is in the store, and none was accepted as new twice.
    let store = Store::open(&data_dir).map_err(|e| e.to_string())?;
    let unique: BTreeSet<&String> = accepted_all.iter().collect();
    let dup_ok = unique.len() == accepted_all.len();
    let mut missing = 0usize;
    let mut processed = 0usize;
    for id in &unique {
        match store
            .get_delivery("github", id)
            .map_err(|e| e.to_string())?
        {
            None => missing += 1,
            Some(d) if d.processed_at.is_some() => processed += 1,
            Some(_) => {}
        }
    }

    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    w(
        out,
        "webhook benchmark (loopback; `gantry serve` as its own process, the load generator in this one)".into(),
    );
    if !latencies.is_empty() {
        let p50 = percentile(&latencies, 50);
        let p99 = percentile(&latencies, 99);
        let fetch_p50 = percentile(&fetches, 50);
        let fetch_p99 = percentile(&fetches, 99);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        w(
            out,
            format!(
                "  push → first step started: {} pushes, p50 {:.1} ms, p99 {:.1} ms",
                opts.pushes,
                ms(p50),
                ms(p99),
            ),
        );
        // Signed: Gantry's whole path can take less than the git CLI's fetch alone.
        let beyond_p50 = ms(p50) - ms(fetch_p50);
        let beyond_p99 = ms(p99) - ms(fetch_p99);
        w(
            out,
            format!(
                "  baseline: `git fetch` of the same pushes from the daemon, p50 {:.1} ms, p99 {:.1} ms; gantry's time beyond one fetch p50 {beyond_p50:+.1} ms, p99 {beyond_p99:+.1} ms (goal ≤ 10 and ≤ 25 ms: {}); ratio {:.2}",
                ms(fetch_p50),
                ms(fetch_p99),
                if beyond_p50 <= 10.0 && beyond_p99 <= 25.0 {
                    "PASS"
                } else {
                    "MISS"
                },
                ms(p50) / ms(fetch_p50).max(1e-9)
            ),
        );
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    w(
        out,
        format!(
            "  intake over {} connections, {:.0} s per body size, 1 in 10 a redelivery; the baseline is the same load against a bare 202 endpoint; RSS of `gantry serve` {:.1} MiB before",
            opts.connections,
            opts.seconds,
            mib(rss_before)
        ),
    );
    w(
        out,
        "  body bytes | accepted/s | baseline/s | ratio | new   | failed | peak RSS | settled RSS"
            .into(),
    );
    for i in &intakes {
        w(
            out,
            format!(
                "  {:>10} | {:>10.0} | {:>10.0} | {:>5.2} | {:>5} | {:>6} | {:>6.1} MiB | {:>6.1} MiB ({:.1} s later)",
                i.size,
                i.rate,
                i.base_rate,
                i.rate / i.base_rate.max(1.0),
                i.new,
                i.failures,
                mib(i.peak_kib),
                mib(i.settled_kib),
                i.settle.as_secs_f64()
            ),
        );
    }
    w(
        out,
        format!(
            "  goal with push-sized bodies (≥ 8,500 bytes): ≥ 10,000 accepted/s and peak RSS < 64 MiB: {}",
            match intakes.iter().find(|i| i.size >= 8_500) {
                Some(i) if i.rate >= 10_000.0 && i.peak_kib < 64 * 1024 => "PASS",
                Some(_) => "MISS",
                None => "not measured",
            }
        ),
    );
    w(
        out,
        format!(
            "  durability: {} of {} accepted deliveries found in the store after shutdown ({processed} processed by then); duplicates accepted as new: {}",
            unique.len() - missing,
            unique.len(),
            if dup_ok { "none" } else { "SOME" }
        ),
    );
    let failures: u64 = intakes.iter().map(|i| i.failures).sum();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(missing == 0 && dup_ok && failures == 0)
}

/// A figure in KiB (`VmRSS:`, `VmHWM:`) of a `/proc/<pid>/status` file, 0 when unreadable.
fn memory(status: &str, field: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The start time of the first step of the run at `sha`.
async fn wait_first_step(
    http: &reqwest::Client,
    base: &str,
    sha: &str,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs: serde_json::Value = http
            .get(format!("{base}/api/v1/runs?limit=5"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let run = runs["runs"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["git"]["sha"] == sha).cloned());
        if let Some(run) = run {
            let detail: serde_json::Value = http
                .get(format!(
                    "{base}/api/v1/runs/{}",
                    run["id"].as_str().unwrap_or("")
                ))
                .bearer_auth(TOKEN)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if let Some(at) = detail["steps"][0]["attempts"][0]["started_at"].as_str() {
                return chrono::DateTime::parse_from_rfc3339(at)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| e.to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no step started for {sha}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let mut bytes = [0u8; 6];
    getrandom::getrandom(&mut bytes).map_err(|e| e.to_string())?;
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("gantry-webhook-bench-{name}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

pub fn run(opts: &WebhookOptions, out: &mut dyn Write) -> u8 {
    let runtime = match crate::cli::multi_thread_runtime(None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(bench(opts, out)) {
        Ok(true) => exit::OK,
        Ok(false) => exit::FAILURE,
        Err(e) => {
            eprintln!("gantry: bench webhooks: {e}");
            exit::FAILURE
        }
    }
}
