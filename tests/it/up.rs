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
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["--data-dir"])
        .arg(data_dir)
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("GANTRY_ADMIN_TOKEN")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gantry up starts");
    Up { child }
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
