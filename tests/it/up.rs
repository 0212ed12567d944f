//! `gantry up`: the one-command demo serves examples/repo-layout as a git repository, prints a
//! working token, keeps it across starts, and stops cleanly on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::git::free_port;
use crate::support::poll;

struct Up {
    child: Child,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &std::path::Path, port: u16) -> Up {
    start_with_output(data_dir, port, Stdio::null())
}

/// `gantry up` as the README says, from the source tree, its stdout going to `stdout`.
fn start_with_output(data_dir: &std::path::Path, port: u16, stdout: Stdio) -> Up {
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--data-dir"])
        .arg(data_dir)
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("GANTRY_ADMIN_TOKEN")
        .env_remove("GANTRY_SERVER")
        .env_remove("GANTRY_TOKEN")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("gantry up starts");
    Up { child }
}

/// Runs a command line that `gantry up` printed, word by word, from the source tree.
fn run_printed(line: &str) -> std::process::Output {
    let words: Vec<&str> = line.split_whitespace().collect();
    Command::new(words[0])
        .args(&words[1..])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GANTRY_SERVER")
        .env_remove("GANTRY_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// The first day: `gantry up` on a fresh data dir starts a PostgreSQL server of its own, sets the
/// demo's variables and secrets, and prints a command that runs the provisioning pipeline to
/// success; the drift check after it finds no drift; the database is published.
#[test]
fn the_demo_provisions_postgres_and_finds_no_drift_out_of_the_box() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let port = free_port();
    let out_path = dir.path().join("up.out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut up = start_with_output(&data_dir, port, Stdio::from(out));
    let printed = |label: &str| {
        poll(
            || {
                let text = std::fs::read_to_string(&out_path).ok()?;
                text.lines()
                    .find_map(|l| l.trim_start().strip_prefix(label))
                    .map(|rest| rest.trim().to_string())
            },
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| {
            panic!(
                "`{label}` in: {}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            )
        })
    };
    let demo = printed("run a demo:");
    let drift = printed("then:");
    let text = std::fs::read_to_string(&out_path).expect("output");
    assert!(
        text.contains("demo/provision-bucket") && text.contains("demo/provision-cache"),
        "the pipelines that need a cloud are named: {text}"
    );
    let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("token");
    poll(|| pipelines(port, &token), Duration::from_secs(30)).expect("the demo pipelines");

    let ran = run_printed(&demo);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(ran.status.code(), Some(0), "{demo}\n{said}");
    assert!(said.contains("succeeded"), "{said}");
    let ran = run_printed(&drift);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(ran.status.code(), Some(0), "{drift}\n{said}");
    assert!(said.contains("no drift in dev"), "{said}");

    // The database is in the marketplace, and a connection's credentials log in.
    let client = demo.split(" run ").next().expect("the client part");
    let listed = run_printed(&format!(
        "{client} marketplace list --type postgresql --tag dev --json"
    ));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    assert_eq!(listed[0]["name"], "orders-db", "{listed}");
    assert!(text.contains("connection create orders"), "{text}");
    let created = run_printed(&format!(
        "{client} connection create orders --resource orders-db --env dev"
    ));
    assert_eq!(
        created.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let env = run_printed(&format!("{client} connection env orders --format json"));
    let env: serde_json::Value = serde_json::from_slice(&env.stdout).expect("env JSON");
    let var = |k: &str| env[k].as_str().unwrap_or_default().to_string();
    let login = Command::new("psql")
        .args(["-h", &var("ORDERS_DB_HOST"), "-p", &var("ORDERS_DB_PORT")])
        .args(["-U", &var("ORDERS_DB_USER"), "-d", &var("ORDERS_DB_NAME")])
        .args(["-tAc", "SELECT current_user"])
        .env("PGPASSWORD", var("ORDERS_DB_PASSWORD"))
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&login.stdout).trim(),
        "orders_app",
        "{env} {}",
        String::from_utf8_lossy(&login.stderr)
    );

    // SIGTERM stops Gantry and its PostgreSQL server.
    // SAFETY: kill(2) with the pid of our own child.
    unsafe {
        libc::kill(up.child.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(up.child.wait().expect("wait").success());
    let store = gantry::store::Store::open(&data_dir).expect("the store");
    let run = store
        .list_runs(Some("demo/provision-postgres"), 1)
        .expect("runs")
        .pop()
        .expect("the demo run");
    let published = store.publications(&run.id, false).expect("publications");
    let (_, resource) = published
        .iter()
        .find(|(step, _)| step == "publish")
        .expect("the database is published");
    assert_eq!(resource.name, "orders-db");
    let password = resource.credentials[0]
        .parameters
        .iter()
        .find(|p| p.key == "DB_PASSWORD")
        .expect("a password");
    assert_eq!(password.value, "***", "secret values stay hidden");
}

fn pipelines(port: u16, token: &str) -> Option<Vec<String>> {
    let response = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/pipelines"))
        .bearer_auth(token)
        .send()
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().ok()?;
    let names: Vec<String> = body["pipelines"]
        .as_array()?
        .iter()
        .filter(|p| p["valid"] == true)
        .map(|p| {
            format!(
                "{}/{}",
                p["source"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    (names.len() == 4).then_some(names)
}

#[test]
fn up_serves_the_example_repository_with_a_kept_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let port = free_port();
    let mut up = start(&data_dir, port);
    let token_file = data_dir.join("admin.token");
    let token = poll(
        || {
            std::fs::read_to_string(&token_file)
                .ok()
                .filter(|t| !t.is_empty())
        },
        Duration::from_secs(20),
    )
    .expect("a token is kept in the data dir");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let names = poll(|| pipelines(port, &token), Duration::from_secs(30))
        .expect("the demo pipelines are served");
    assert!(
        names.contains(&"demo/provision-postgres".to_string()),
        "{names:?}"
    );
    assert!(data_dir.join("demo-repo/.git").is_dir());
    // The web UI: the printed token logs in, and the dashboard lists the demo pipelines.
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let base = format!("http://127.0.0.1:{port}");
    let login = http
        .post(format!("{base}/login"))
        .header("origin", &base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2F"))
        .send()
        .expect("login");
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let dashboard = http
        .get(format!("{base}/"))
        .header("cookie", cookie)
        .send()
        .and_then(|r| r.text())
        .expect("the dashboard");
    assert!(
        dashboard.contains(r#"href="/pipelines/demo/provision-postgres""#),
        "{dashboard}"
    );

    // SIGTERM: a clean stop.
    // SAFETY: kill(2) with the pid of our own child.
    unsafe {
        libc::kill(up.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = up.child.wait().expect("wait");
    assert!(status.success(), "{status}");

    // A second start keeps the token and the repository.
    let port = free_port();
    let _again = start(&data_dir, port);
    assert!(poll(|| pipelines(port, &token), Duration::from_secs(30)).is_some());
    assert_eq!(std::fs::read_to_string(&token_file).expect("token"), token);
}

/// One rule for API tokens: `gantry up` refuses a `GANTRY_ADMIN_TOKEN` that `gantry serve` would.
#[test]
fn up_refuses_a_short_admin_token_as_serve_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["up", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("GANTRY_ADMIN_TOKEN", "0123456789")
        .output()
        .expect("gantry up runs");
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("GANTRY_ADMIN_TOKEN is too short (10 characters); use at least 16"),
        "{said}"
    );
}
