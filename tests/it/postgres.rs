//! The example PostgreSQL pipeline, run for real: a PostgreSQL server started by the test, the
//! example repository as a git work tree, `gantry run` provisioning a database and a login role,
//! and the published credentials read back and used to log in.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run::{Scratch, grep_tree, text};

/// Finds a PostgreSQL server program on PATH or where Debian installs it.
fn pg_program(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("{name} not found; scripts/test installs PostgreSQL (package postgresql)")
    })
}

/// A throwaway PostgreSQL server on a free loopback port, stopped on drop.
struct Postgres {
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    _dir: tempfile::TempDir,
}

impl Postgres {
    const ADMIN: &'static str = "gantry_admin";

    fn command(&self, program: &Path) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn start(admin_password: &str) -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        // The server refuses to run as root; as root, run it as `nobody` in a folder it owns.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "nobody".to_string());
        let base = dir.path().join("pg");
        std::fs::create_dir_all(&base).expect("mkdir");
        let pwfile = base.join("pw");
        std::fs::write(&pwfile, admin_password).expect("write pwfile");
        if root {
            let status = Command::new("chown")
                .args(["-R", "nobody"])
                .arg(&base)
                .status()
                .expect("chown");
            assert!(status.success());
            // The temp dir itself must be traversable by `nobody`.
            let status = Command::new("chmod")
                .args(["755"])
                .arg(dir.path())
                .status()
                .expect("chmod");
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let pg = Postgres {
            data: base.join("data"),
            port,
            run_as,
            _dir: dir,
        };
        let out = pg
            .command(&pg_program("initdb"))
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                Self::ADMIN,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={}",
            base.display()
        );
        let out = pg
            .command(&pg_program("pg_ctl"))
            .arg("-D")
            .arg(&pg.data)
            .args(["-o", &options, "-l"])
            .arg(base.join("log"))
            .args(["-w", "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command(&pg_program("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Copies a directory tree (files and modes).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn the_example_postgres_pipeline_provisions_and_publishes_for_real() {
    let admin_password = "adm1n-pw-for-the-test-server";
    let pg = Postgres::start(admin_password);
    let s = Scratch::new();

    // The example repository, as a git work tree of its own.
    let repo = s.path("repo");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout"),
        &repo,
    );
    for args in [
        vec!["init", "-q"],
        vec!["add", "."],
        vec!["commit", "-qm", "infra"],
    ] {
        let out = Command::new("git")
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
            ])
            .args(&args)
            .current_dir(&repo)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    }

    let port = pg.port.to_string();
    for (k, v) in [
        ("pg_host", "127.0.0.1"),
        ("pg_port", port.as_str()),
        ("pg_admin_user", Postgres::ADMIN),
    ] {
        assert_eq!(
            s.gantry(&["vars", "set", k, v, "--pipeline", "provision-postgres"])
                .status
                .code(),
            Some(0)
        );
    }
    s.secret(
        "pg_admin_password",
        admin_password,
        Some("provision-postgres"),
    );

    let file = repo.join(".gantry/pipelines/provision-postgres.yaml");
    // Steps have a network of their own; the server on this machine's loopback is let in.
    let port = pg.port.to_string();
    let run_args = [
        "-p",
        "db_name=orders_it",
        "-p",
        "owner_role=orders_it_app",
        "--host-port",
        port.as_str(),
    ];
    let out = s.run_file(&file, &run_args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains(admin_password), "{stdout}");

    let runs = s.runs();
    let run_id = runs[0]["id"].as_str().expect("id").to_string();
    assert_eq!(runs[0]["status"], "succeeded");

    // Read the publication back as a consumer creating a connection would.
    let store = gantry::store::Store::open(&s.data()).expect("open store");
    let publications = store.publications(&run_id, true).expect("publications");
    let (_, publication) = publications
        .iter()
        .find(|(step, _)| step == "publish")
        .expect("published");
    assert_eq!(publication.name, "orders_it-db");
    let creds: std::collections::BTreeMap<&str, &str> = publication.credentials[0]
        .parameters
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(creds["DB_NAME"], "orders_it");
    assert_eq!(creds["DB_USER"], "orders_it_app");
    let password = creds["DB_PASSWORD"].to_string();
    assert!(
        password.len() >= 16,
        "a generated password, got {password:?}"
    );
    let hidden = store.publications(&run_id, false).expect("publications");
    assert_eq!(
        hidden[0].1.credentials[0]
            .parameters
            .iter()
            .find(|p| p.key == "DB_PASSWORD")
            .map(|p| p.value.as_str()),
        Some("***")
    );
    drop(store);

    // Log in with the published credentials.
    let out = Command::new("psql")
        .args([
            "-h",
            creds["DB_HOST"],
            "-p",
            creds["DB_PORT"],
            "-U",
            creds["DB_USER"],
            "-d",
            creds["DB_NAME"],
        ])
        .args(["-tAc", "SELECT current_user || '@' || current_database()"])
        .env("PGPASSWORD", &password)
        .output()
        .expect("psql runs");
    assert_eq!(
        text(&out.stdout).trim(),
        "orders_it_app@orders_it",
        "{}",
        text(&out.stderr)
    );

    // Neither password is anywhere under the data dir in plaintext, nor in the stored logs.
    let logs = text(&s.gantry(&["logs", &run_id]).stdout);
    assert!(
        !logs.contains(&password) && !logs.contains(admin_password),
        "{logs}"
    );
    let mut hits = Vec::new();
    grep_tree(
        &s.data(),
        &[password.as_bytes(), admin_password.as_bytes()],
        &mut hits,
    );
    assert!(hits.is_empty(), "plaintext found in {hits:?}");

    // The marketplace has it: found by type and tag, shown without a secret value.
    let found = s.gantry(&[
        "marketplace",
        "list",
        "--type",
        "database",
        "--tag",
        "postgres",
        "--json",
    ]);
    let found: serde_json::Value = serde_json::from_slice(&found.stdout).expect("list JSON");
    assert_eq!(found[0]["name"], "orders_it-db", "{found}");
    assert_eq!(found[0]["latest"], 1);
    assert_eq!(found[0]["environments"], serde_json::json!(["dev"]));
    let shown = text(
        &s.gantry(&["marketplace", "show", "orders_it-db", "--json"])
            .stdout,
    );
    assert!(
        shown.contains("DB_PASSWORD") && !shown.contains(&password),
        "{shown}"
    );

    // A connection for dev hands the credentials over as libpq's variables.
    let mut create = vec![
        "connection",
        "create",
        "orders",
        "--resource",
        "orders_it-db",
        "--env",
        "dev",
    ];
    for map in [
        "DB_HOST=PGHOST",
        "DB_PORT=PGPORT",
        "DB_USER=PGUSER",
        "DB_NAME=PGDATABASE",
        "DB_PASSWORD=PGPASSWORD",
    ] {
        create.extend(["--map", map]);
    }
    let out = s.gantry(&create);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let connected_psql = |sql: &str| {
        let env = s.gantry(&["connection", "env", "orders"]);
        assert_eq!(env.status.code(), Some(0), "{}", text(&env.stderr));
        Command::new("sh")
            .args(["-c", &format!("eval \"$ENV_LINES\" && psql -qtAc '{sql}'")])
            .env("ENV_LINES", text(&env.stdout))
            .env_remove("PGPASSWORD")
            .output()
            .expect("sh runs")
    };
    let out = connected_psql("CREATE TABLE orders (id int); SELECT current_user");
    assert_eq!(
        text(&out.stdout).trim(),
        "orders_it_app",
        "{}",
        text(&out.stderr)
    );

    // A second pipeline consumes the connection: its step logs in with the credentials, named
    // by their well-known names, and the password never shows in its log.
    let consumer = s.pipeline(
        "migrate.yaml",
        r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata:
  name: orders-migrate
connections: [orders]
steps:
  - name: migrate
    command: [sh, -c, 'psql -qtAc "CREATE TABLE customers (id int); SELECT current_user" && echo "pw=$PGPASSWORD"']
    env:
      PGHOST: "{{connections.orders.host}}"
      PGPORT: "{{connections.orders.port}}"
      PGUSER: "{{connections.orders.username}}"
      PGDATABASE: "{{connections.orders.database}}"
      PGPASSWORD: "{{connections.orders.password}}"
"#,
    );
    let out = s.run_file(&consumer, &["--host-port", port.as_str()]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("orders_it_app") && said.contains("pw=***"),
        "{said}"
    );
    assert!(!said.contains(&password), "{said}");

    // Running again is safe: the role's password is rotated (a new version of the resource),
    // the database kept, and the connection follows.
    let out = s.run_file(&file, &run_args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("published orders_it-db version 2 to the marketplace"),
        "{}",
        text(&out.stdout)
    );
    let out = connected_psql("SELECT count(*) FROM orders");
    assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));
    let shown: serde_json::Value =
        serde_json::from_slice(&s.gantry(&["connection", "show", "orders", "--json"]).stdout)
            .expect("show JSON");
    assert_eq!(shown["resolved"]["version"], 2, "{shown}");
    assert_eq!(shown["resolved_version"], 2, "{shown}");
    let rotated = text(
        &s.gantry(&["connection", "env", "orders", "--format", "json"])
            .stdout,
    );
    let rotated: serde_json::Value = serde_json::from_str(&rotated).expect("env JSON");
    let rotated = rotated["PGPASSWORD"]
        .as_str()
        .expect("a password")
        .to_string();
    assert_ne!(rotated, password);
    let mut hits = Vec::new();
    grep_tree(&s.data(), &[rotated.as_bytes()], &mut hits);
    assert!(hits.is_empty(), "plaintext found in {hits:?}");
}

/// README's "On one machine" example, each line as written, from the root of this repository
/// against a PostgreSQL server of the test's: the checkout step copies `examples/repo-layout`
/// (the folder holding the file's `.gantry/`), so its scripts are found, and the run succeeds.
#[test]
fn the_readme_s_local_example_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let after = readme
        .split("With a PostgreSQL server of yours")
        .nth(1)
        .expect("README has the local example");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the example's sh block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.last().is_some_and(|l| l.starts_with("gantry run ")),
        "{block}"
    );

    let admin_password = "readme-admin-pw-0451";
    let pg = Postgres::start(admin_password);
    let s = Scratch::new();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gantry"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let mut said = String::new();
    for line in lines {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(root)
            .env("PATH", &path)
            .env("GANTRY_DATA_DIR", s.data())
            .env("PGPORT", pg.port.to_string())
            .env("PGUSER", Postgres::ADMIN)
            .env("ADMIN_PASSWORD", admin_password)
            .env("NO_COLOR", "1")
            .env_remove("GANTRY_SERVER")
            .env_remove("GANTRY_TOKEN")
            .env_remove("GANTRY_MASTER_KEY")
            .output()
            .expect("sh runs");
        said.push_str(&text(&out.stdout));
        said.push_str(&text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "`{line}`:\n{said}");
    }
    assert!(
        said.contains("database orders is ready for role orders_app"),
        "{said}"
    );
    assert!(
        said.contains("examples/repo-layout into"),
        "the checkout says what it copied: {said}"
    );
    assert!(!said.contains(admin_password), "{said}");
}
