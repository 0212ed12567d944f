//! `/metrics` as a real Prometheus sees it: Debian's `prometheus` scrapes a `gantry serve` with
//! its token, and a run counter queried over Prometheus' HTTP API moves after a run; `promtool
//! check metrics` passes on what the server answers; without the token `/metrics` is a 401.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::git::free_port;
use crate::support::poll;
use crate::support::server::{GantryServer, ServerConfig, TOKEN};

const HELLO: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: hello\nsteps:\n  - name: greet\n    command: [sh, -c, 'echo hi']\n";

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of a Prometheus instant query's first sample, once there is one.
fn query(port: u16, promql: &str) -> Option<f64> {
    let body: Value = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .ok()?
        .json()
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_the_run_counter_after_a_run() {
    let s = GantryServer::start(ServerConfig::new());
    let (status, _) = s.get_without_token("/metrics");
    assert_eq!(status, 401, "the metrics need the token by default");

    let dir = tempfile::tempdir().expect("tempdir");
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gantry\n    metrics_path: /metrics\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            s.port()
        ),
    )
    .expect("config");
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (./scripts/test installs Debian's `prometheus`)"),
    );
    // Prometheus scrapes Gantry: `up` is 1.
    let up = poll(
        || query(prom_port, "up{job=\"gantry\"}").filter(|v| *v == 1.0),
        Duration::from_secs(60),
    );
    assert_eq!(
        up,
        Some(1.0),
        "Prometheus never scraped Gantry\n{}",
        s.logs()
    );

    let (status, body) = s.put_text("/api/v1/pipelines/local/hello", HELLO);
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = s.post_json(
        "/api/v1/pipelines/local/hello/runs",
        &json!({"parameters": {}}),
    );
    assert_eq!(status, 201, "{body}");
    let counted = poll(
        || {
            query(
                prom_port,
                "gantry_runs_total{source=\"local\",pipeline=\"hello\",status=\"succeeded\"}",
            )
            .filter(|v| *v >= 1.0)
        },
        Duration::from_secs(60),
    );
    assert_eq!(
        counted,
        Some(1.0),
        "the run counter never moved\n{}",
        s.logs()
    );
    let steps = query(
        prom_port,
        "gantry_step_duration_seconds_count{pipeline=\"hello\"}",
    );
    assert_eq!(steps, Some(1.0));
    // The step's output was stored, and counted.
    let logged = poll(
        || query(prom_port, "gantry_log_bytes_total{outcome=\"stored\"}").filter(|v| *v > 0.0),
        Duration::from_secs(60),
    );
    assert!(
        logged.is_some(),
        "no stored log bytes counted\n{}",
        s.logs()
    );

    // What Gantry answers is valid for promtool too.
    let (status, text) = s.get("/metrics");
    assert_eq!(status, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No label holds a run id.
    let run_id = serde_json::from_str::<Value>(&body).expect("run")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(!text.contains(&run_id), "{text}");
}

/// `--log-format json`: every line the server logs is a JSON object with its level and message;
/// the default is the human `gantry: ...` line.
#[test]
fn the_server_logs_json_lines_when_asked() {
    let s = GantryServer::start(ServerConfig::new().args(&["--log-format", "json"]));
    let (status, body) = s.put_text("/api/v1/pipelines/local/hello", HELLO);
    assert!(status == 200 || status == 201, "{body}");
    let logs = s.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "no JSON line in:\n{logs}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(!logs.contains("gantry: "), "human lines in:\n{logs}");
}
