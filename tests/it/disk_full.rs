//! A full disk under webhook load: `gantry serve` keeps its data on a small tmpfs, signed
//! deliveries (each with its own body) arrive until the file system reaches the reserve, and the
//! space is then given back. Mounting needs root (CI runs as root); elsewhere the test says why it
//! skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry::forge::Forge;
use gantry::forge::webhook::sign;
use serde_json::json;

use crate::support::server::{GantryServer, RepoSpec, ServerConfig, json as parse};

const SECRET: &str = "whsec-disk-full-0123456789";
const FORGE_ID: &str = "acme/infra";

/// A tmpfs of `mib` MiB mounted on `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An issue comment without a command, padded to `size` bytes: stored like any delivery and
/// processed without a fetch.
fn comment(id: &str, size: usize) -> Vec<u8> {
    json!({
        "action": "created",
        "issue": {"number": 1, "pull_request": {"url": "x"}},
        "comment": {"id": id, "body": "x".repeat(size), "user": {"login": "alice"}},
        "repository": {"full_name": FORGE_ID},
        "sender": {"login": "alice"}
    })
    .to_string()
    .into_bytes()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

fn deliver(http: &reqwest::blocking::Client, url: &str, id: &str, size: usize) -> Answer {
    let body = comment(id, size);
    let mut request = http
        .post(format!("{url}/hooks/github"))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "issue_comment")
        .header("X-GitHub-Delivery", id);
    for (k, v) in sign(Forge::Github, &body, SECRET) {
        request = request.header(k, v);
    }
    match request.body(body).send() {
        Ok(r) => Answer {
            status: r.status().as_u16(),
            retry_after: r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: r.text().unwrap_or_default(),
        },
        Err(e) => Answer {
            status: 0,
            retry_after: None,
            body: e.to_string(),
        },
    }
}

/// `gantry serve` with its data dir on a tmpfs of `mib` MiB that also holds `ballast_mib` MiB of
/// ballast (the space a test gives back), and `[storage] min_free = <min_free>`; `None` (the test
/// skips, saying why) where no tmpfs can be mounted.
struct SmallDisk {
    // Field order is drop order: the server stops before its file system goes.
    server: GantryServer,
    http: reqwest::blocking::Client,
    ballast: PathBuf,
    data_dir: PathBuf,
    _tmpfs: Tmpfs,
    _root: tempfile::TempDir,
}

impl SmallDisk {
    fn start(mib: u64, ballast_mib: usize, min_free: &str) -> Option<SmallDisk> {
        let root = tempfile::tempdir().expect("tempdir");
        let mount_dir = root.path().join("small");
        let tmpfs = match Tmpfs::mount(&mount_dir, mib) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: cannot mount a tmpfs for the data dir (needs root): {e}");
                return None;
            }
        };
        let ballast = mount_dir.join("ballast");
        std::fs::write(&ballast, vec![7u8; ballast_mib << 20]).expect("write the ballast");
        let data_dir = mount_dir.join("data");
        let cfg = ServerConfig::new()
            .repo(
                RepoSpec::new("infra", "file:///nonexistent/infra.git")
                    .forge("github", FORGE_ID)
                    .extra(&format!("webhook_secret = \"{SECRET}\"\n")),
            )
            .storage_toml(&format!("min_free = {min_free}"))
            .data_dir(&data_dir);
        let server = GantryServer::start(cfg);
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Some(SmallDisk {
            server,
            http,
            ballast,
            data_dir,
            _tmpfs: tmpfs,
            _root: root,
        })
    }
}

#[test]
fn a_full_disk_refuses_new_work_keeps_answering_and_takes_work_again_when_space_returns() {
    let Some(small) = SmallDisk::start(40, 12, "\"6MiB\"") else {
        return;
    };
    let SmallDisk {
        ballast,
        data_dir,
        mut server,
        http,
        ..
    } = small;
    let url = server.url();

    // /healthz, every 50 ms, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let health_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, slowest, failures, url) = (
            stop.clone(),
            slowest.clone(),
            health_failures.clone(),
            url.clone(),
        );
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(1))
                .build()
                .expect("client");
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match http.get(format!("{url}/healthz")).send() {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => failures.lock().expect("lock").push(r.status().to_string()),
                    Err(e) => failures.lock().expect("lock").push(e.to_string()),
                }
                slowest.fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Four senders of ~24 KiB deliveries until the disk is at its reserve.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let filling = Instant::now();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (acked, refused, url, http) =
                (acked.clone(), refused.clone(), url.clone(), http.clone());
            std::thread::spawn(move || {
                let mut refusals_here = 0;
                for i in 0.. {
                    if refusals_here >= 10 || filling.elapsed() > Duration::from_secs(90) {
                        return;
                    }
                    let id = format!("fill-{t}-{i}");
                    let answer = deliver(&http, &url, &id, 24 << 10);
                    if answer.status == 202 {
                        acked.lock().expect("lock").push(id);
                    } else {
                        refusals_here += 1;
                        refused.lock().expect("lock").push(answer);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    let fill_time = filling.elapsed();
    let acked_count = acked.lock().expect("lock").len();
    let refused_answers = std::mem::take(&mut *refused.lock().expect("lock"));
    assert!(
        acked_count > 100,
        "only {acked_count} accepted before the disk filled"
    );
    assert!(!refused_answers.is_empty(), "nothing was refused");
    for answer in &refused_answers {
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(
            answer.retry_after.is_some(),
            "no Retry-After: {}",
            answer.body
        );
        assert!(
            answer.body.contains("min_free")
                && answer.body.contains(&data_dir.display().to_string()),
            "{}",
            answer.body
        );
    }
    assert!(server.pid().is_some(), "the server is still running");

    // Below the reserve: API writes 507, reads work, /readyz says why it is not ready.
    let (status, body) = server.put_json("/api/v1/variables/region", &json!({"value": "eu"}));
    assert_eq!(status, 507, "{body}");
    assert!(body.contains(&data_dir.display().to_string()), "{body}");
    assert!(body.contains("free"), "{body}");
    let (status, body) = server.get("/api/v1/runs");
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get_without_token("/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(parse(&body)["ready"], false, "{body}");
    server.conforms("Readiness", &parse(&body));
    assert!(body.contains("min_free"), "{body}");
    assert!(
        !body.contains(&data_dir.display().to_string()),
        "an unauthenticated probe learns no path: {body}"
    );

    // Space comes back: deliveries are taken again, without a restart.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let freed = Instant::now();
    let mut again = None;
    for i in 0..200 {
        let id = format!("after-{i}");
        if deliver(&http, &url, &id, 1 << 10).status == 202 {
            acked.lock().expect("lock").push(id);
            again = Some(freed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let recovery = again.unwrap_or_else(|| {
        panic!(
            "no delivery was accepted within 10 s of the space coming back\n{}",
            server.logs()
        )
    });
    let (status, body) = server.get_without_token("/readyz");
    assert_eq!(status, 200, "{body}");

    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("health watcher");
    let health_failures = health_failures.lock().expect("lock").clone();
    assert!(
        health_failures.is_empty(),
        "/healthz failed: {health_failures:?}"
    );
    let slowest = slowest.load(Ordering::SeqCst);
    assert!(slowest < 1000, "/healthz took {slowest} ms");

    // Every acknowledged delivery is there after a restart.
    server.stop();
    let store = gantry::store::Store::open(&data_dir).expect("open the store");
    let acked = acked.lock().expect("lock").clone();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| store.get_delivery("github", id).ok().flatten().is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    eprintln!(
        "disk full: {} deliveries acknowledged and all found after the restart, {} refused \
         (503 with Retry-After) after {:.1} s of filling; accepted again {:.0} ms after the space \
         came back; slowest /healthz {slowest} ms",
        acked.len(),
        refused_answers.len(),
        fill_time.as_secs_f64(),
        recovery.as_secs_f64() * 1000.0
    );
}

/// Without a reserve (`min_free = 0`) sled meets the full disk itself. Whatever it does then (an
/// I/O error, or a call that never returns), the process must end with a non-zero status rather
/// than hang, and a restart with the space back must hold every acknowledged delivery.
#[test]
fn without_a_reserve_a_full_disk_ends_the_process_and_a_restart_recovers_everything() {
    let Some(small) = SmallDisk::start(24, 8, "0") else {
        return;
    };
    let SmallDisk {
        ballast,
        data_dir,
        mut server,
        http,
        ..
    } = small;
    let url = server.url();
    let mut acked = Vec::new();
    let started = Instant::now();
    let mut ended = None;
    for i in 0.. {
        if let Some(status) = server.exited() {
            ended = Some(status);
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let id = format!("fill-{i}");
        let answer = deliver(&http, &url, &id, 24 << 10);
        if answer.status == 202 {
            acked.push(id);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = ended.unwrap_or_else(|| {
        panic!(
            "the server neither failed nor hung up within 120 s of a full disk\n{}",
            server.logs()
        )
    });
    assert_eq!(status.code(), Some(74), "{status}\n{}", server.logs());
    let logs = server.logs();
    assert!(logs.contains("gantry: fatal:"), "{logs}");
    assert!(logs.contains(&data_dir.display().to_string()), "{logs}");
    let stopped_after = started.elapsed();
    let fatal = logs
        .lines()
        .find(|l| l.contains("gantry: fatal:"))
        .unwrap_or_default()
        .to_string();

    std::fs::remove_file(&ballast).expect("remove the ballast");
    server.restart();
    let answer = deliver(&http, &url, "after-restart", 1 << 10);
    assert_eq!(answer.status, 202, "{}", answer.body);
    server.stop();
    let store = gantry::store::Store::open(&data_dir).expect("open the store");
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| store.get_delivery("github", id).ok().flatten().is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    eprintln!(
        "no reserve: {} deliveries acknowledged, the process ended (exit 74) {:.1} s after the \
         load began; all of them found after a restart; it said: {fatal}",
        acked.len(),
        stopped_after.as_secs_f64()
    );
}

#[tokio::test]
async fn below_the_reserve_a_run_is_recorded_as_not_started_and_runs_no_step() {
    use gantry::store::{MinFree, RunStatus, StepState, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = Store::open(&data).expect("store");
    store.set_min_free(MinFree::Bytes(u64::MAX));
    let marker = dir.path().join("ran");
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: full\nsteps:\n  - name: \
         first\n    script: 'touch {}'\n",
        marker.display()
    );
    let run = run_unsandboxed(store.clone(), text).await;
    assert_eq!(run.status, RunStatus::Failed);
    let message = run.message.clone().unwrap_or_default();
    assert!(message.starts_with("not started: "), "{message}");
    assert!(message.contains(&data.display().to_string()), "{message}");
    assert!(message.contains("[storage] min_free"), "{message}");
    assert!(!marker.exists(), "a step ran");
    let steps = store.steps(&run.id).expect("steps");
    assert!(steps.iter().all(|s| s.state != StepState::Succeeded));
}

/// A run already going when the data dir falls below its reserve goes on, but its log is cut
/// with a line saying so and its outputs are not kept in the store; a later step still reads
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_a_running_step_loses_its_log_and_outputs_not_the_store() {
    use gantry::store::{MinFree, RunStatus, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data")).expect("store");
    let (started, go, seen) = (
        dir.path().join("started"),
        dir.path().join("go"),
        dir.path().join("seen"),
    );
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: cut\nsteps:\n  - name: \
         first\n    script: |\n      echo before\n      touch {started}\n      while [ ! -e {go} \
         ]; do sleep 0.05; done\n      echo after\n      printf v1 > \"$GANTRY_OUTPUTS/x\"\n    \
         outputs: [x]\n  - name: second\n    script: printf %s \"$X\" > {seen}\n    env: {{X: \
         \"{{{{steps.first.outputs.x}}}}\"}}\n",
        started = started.display(),
        go = go.display(),
        seen = seen.display(),
    );
    let run = tokio::spawn(run_unsandboxed(store.clone(), text));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Let "before" reach the store, then take the space away.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    store.set_min_free(MinFree::Bytes(u64::MAX));
    std::fs::write(&go, "").expect("go");
    let run = run.await.expect("joined");
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.message);
    assert_eq!(std::fs::read_to_string(&seen).expect("seen"), "v1");
    let (lines, _) = store.logs(&run.id, Some(0), None).expect("logs");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.text.as_str()).collect();
    assert!(texts.contains(&"before"), "{texts:?}");
    assert!(!texts.contains(&"after"), "{texts:?}");
    let cut = texts
        .iter()
        .find(|t| t.starts_with("[gantry: the rest of this step's log is cut: "))
        .unwrap_or_else(|| panic!("a cut line in {texts:?}"));
    assert!(cut.contains("[storage] min_free"), "{cut}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("[gantry: outputs x not kept in the store: ")),
        "{texts:?}"
    );
    assert!(
        store.outputs(&run.id).expect("outputs").is_empty(),
        "no output stored"
    );
}

/// Prepares and executes a pipeline's text on an unsandboxed local executor, to its record.
async fn run_unsandboxed(store: gantry::store::Store, text: String) -> gantry::store::RunRecord {
    run_unsandboxed_with(store, text, gantry::executor::Limits::default()).await
}

/// [`run_unsandboxed`] with `limits`.
async fn run_unsandboxed_with(
    store: gantry::store::Store,
    text: String,
    limits: gantry::executor::Limits,
) -> gantry::store::RunRecord {
    let prepared =
        gantry::run::prepare(&store, crate::support::file_run(&text, "test.yaml", limits))
            .expect("prepared");
    gantry::run::execute(
        &store,
        std::sync::Arc::new(gantry::executor::local::LocalExecutor::new()),
        prepared,
        tokio_util::sync::CancellationToken::new(),
        |_, _| {},
    )
    .await
    .expect("recorded")
}

/// A step that writes without end is stopped at the run's disk limit (`run_disk`): the run
/// fails saying why, and its files stop growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fills_its_disk_limit_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = gantry::store::Store::open(&dir.path().join("data")).expect("store");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: filler\nsteps:\n  - name: fill\n    script: |\n      i=0\n      while [ $i -lt 400 ]; do head -c 1048576 /dev/zero > \"f$i\"; i=$((i+1)); sleep 0.01; done\n      echo finished\n";
    let limits = gantry::executor::Limits {
        run_disk: Some(16 << 20),
        ..Default::default()
    };
    let run = run_unsandboxed_with(store.clone(), text.to_string(), limits).await;
    assert_eq!(run.status, gantry::store::RunStatus::Failed, "{run:?}");
    let steps = store.steps(&run.id).expect("steps");
    let message = steps[0].message.clone().unwrap_or_default();
    assert!(message.contains("disk limit (`run_disk`)"), "{message}");
    let (lines, _) = store.logs(&run.id, Some(0), None).expect("logs");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.text.as_str()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("its files take more than 16 MiB (`run_disk`)")),
        "{texts:?}"
    );
    assert!(!texts.contains(&"finished"), "{texts:?}");
}
