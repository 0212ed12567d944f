//! `gantry run`, `runs`, `logs`, `vars`, `secrets` on real pipelines with real processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A scratch area: a data dir and a folder for pipeline files.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pipeline(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, yaml).expect("write pipeline");
        path
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("GANTRY_MASTER_KEY")
            .env("NO_COLOR", "1");
        cmd
    }

    pub fn gantry(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("gantry runs")
    }

    pub fn run_file(&self, file: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["run", file.to_str().expect("utf-8 path"), "--plain"];
        args.extend_from_slice(extra);
        self.gantry(&args)
    }

    pub fn runs(&self) -> Vec<Value> {
        let out = self.gantry(&["runs", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("runs --json is a JSON list")
    }

    pub fn secret(&self, name: &str, value: &str, pipeline: Option<&str>) {
        let mut args = vec!["secrets", "set", name];
        if let Some(p) = pipeline {
            args.extend(["--pipeline", p]);
        }
        let mut child = self
            .cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value.as_bytes())
            .expect("write secret");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `gantry run` printed `line` as a log line of `step` (names are padded to align).
fn logged(stdout: &str, step: &str, line: &str) -> bool {
    stdout.lines().any(|l| {
        l.strip_prefix(step)
            .map(|rest| rest.trim_start())
            .and_then(|rest| rest.strip_prefix("| "))
            .is_some_and(|rest| rest == line)
    })
}

fn head(name: &str) -> String {
    format!("apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\n")
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::metadata(path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    if !exists {
        return false;
    }
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn wait_dead(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

#[test]
fn dag_order_and_outputs_flow_between_steps() {
    // The test watches the step from outside (files it writes, its pids): no sandbox.
    let s = Scratch::new();
    let order = s.path("order.txt");
    let o = order.display();
    let file = s.pipeline(
        "dag.yaml",
        &format!(
            "{}steps:
  - name: join
    dependsOn: [left, right]
    script: |
      echo join >> {o}
      test \"$L-$R\" = \"L-from-a-R-from-a\"
      echo \"got $L and $R\"
    env: {{L: \"{{{{steps.left.outputs.v}}}}\", R: \"{{{{steps.right.outputs.v}}}}\"}}
  - name: a
    script: |
      echo a >> {o}
      printf 'from-a' > \"$GANTRY_OUTPUTS/v\"
    outputs: [v]
  - name: left
    dependsOn: [a]
    script: |
      echo left >> {o}
      printf 'L-%s\\n' \"$A\" > \"$GANTRY_OUTPUTS/v\"
    env: {{A: \"{{{{steps.a.outputs.v}}}}\"}}
    outputs: [v]
  - name: right
    dependsOn: [a]
    script: |
      echo right >> {o}
      printf 'R-%s' \"$A\" > \"$GANTRY_OUTPUTS/v\"
    env: {{A: \"{{{{steps.a.outputs.v}}}}\"}}
    outputs: [v]
",
            head("dag")
        ),
    );
    let out = s.run_file(&file, &["--no-sandbox"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lines: Vec<String> = std::fs::read_to_string(&order)
        .expect("order")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.first().map(String::as_str), Some("a"));
    assert_eq!(lines.last().map(String::as_str), Some("join"));
    assert_eq!(lines.len(), 4);
    assert!(
        logged(&text(&out.stdout), "join", "got L-from-a and R-from-a"),
        "{}",
        text(&out.stdout)
    );
    let runs = s.runs();
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["number"], 1);
    assert_eq!(step(&runs[0], "join")["status"], "succeeded");
}

#[test]
fn parallel_group_members_really_overlap() {
    // The test watches the step from outside (files it writes): no sandbox.
    let s = Scratch::new();
    let d = s.dir.path().display();
    // Each member waits for the other's marker: run one after the other, the first would time out.
    let file = s.pipeline(
        "par.yaml",
        &format!(
            "{}steps:
  - - name: one
      script: |
        touch {d}/one
        for i in $(seq 100); do [ -e {d}/two ] && exit 0; sleep 0.05; done; exit 1
    - name: two
      script: |
        touch {d}/two
        for i in $(seq 100); do [ -e {d}/one ] && exit 0; sleep 0.05; done; exit 1
  - name: after
    script: test -e {d}/one && test -e {d}/two
",
            head("par")
        ),
    );
    let out = s.run_file(&file, &["--no-sandbox"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn retries_follow_the_limit() {
    // The test watches the step from outside (files it writes, its pids): no sandbox.
    let s = Scratch::new();
    let counter = s.path("count");
    let c = counter.display();
    let file = s.pipeline(
        "retry.yaml",
        &format!(
            "{}steps:
  - name: flaky
    script: |
      n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}
      echo attempt $n
      [ $n -ge 3 ]
    retry: {{limit: 3, backoff: 0s}}
  - name: hopeless
    script: 'echo try >> {c}.h; exit 7'
    retry: {{limit: 2, backoff: 0s, factor: 2}}
",
            head("retry")
        ),
    );
    let out = s.run_file(&file, &["--no-sandbox"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&counter).expect("count").trim(),
        "3"
    );
    assert_eq!(
        std::fs::read_to_string(s.path("count.h"))
            .expect("count")
            .lines()
            .count(),
        3
    );
    let runs = s.runs();
    assert_eq!(step(&runs[0], "flaky")["attempts"], 3);
    assert_eq!(step(&runs[0], "flaky")["status"], "succeeded");
    assert_eq!(step(&runs[0], "hopeless")["attempts"], 3);
    assert_eq!(step(&runs[0], "hopeless")["exit_code"], 7);
    assert_eq!(runs[0]["status"], "failed");
}

#[test]
fn a_step_timeout_kills_grandchildren() {
    // The test watches the step from outside (files it writes, its pids): no sandbox.
    let s = Scratch::new();
    let pid_file = s.path("grandchild.pid");
    let file = s.pipeline(
        "timeout.yaml",
        &format!(
            "{}steps:
  - name: slow
    timeout: 1s
    script: |
      sh -c 'sleep 300' &
      echo $! > {}
      sleep 300
",
            head("timeout"),
            pid_file.display()
        ),
    );
    let started = Instant::now();
    let out = s.gantry(&[
        "run",
        file.to_str().expect("utf-8"),
        "--plain",
        "--kill-grace",
        "1",
        "--no-sandbox",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    let grandchild = read_pid(&pid_file);
    assert!(
        wait_dead(grandchild, Duration::from_secs(5)),
        "grandchild {grandchild} survived the timeout"
    );
    let runs = s.runs();
    assert_eq!(step(&runs[0], "slow")["status"], "timed-out");
}

#[test]
fn continue_on_failed_lets_the_run_succeed() {
    let s = Scratch::new();
    let file = s.pipeline(
        "cont.yaml",
        &format!(
            "{}steps:
  - name: optional
    script: exit 3
    continueOn: {{failed: true}}
  - name: next
    script: echo still here
",
            head("cont")
        ),
    );
    let out = s.run_file(&file, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let runs = s.runs();
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(step(&runs[0], "optional")["status"], "failed");
    assert_eq!(step(&runs[0], "next")["status"], "succeeded");
}

#[test]
fn a_failure_stops_what_depends_on_it() {
    let s = Scratch::new();
    let file = s.pipeline(
        "fail.yaml",
        &format!(
            "{}steps:
  - {{name: broken, script: 'exit 1'}}
  - {{name: child, script: 'echo never', dependsOn: [broken]}}
  - {{name: independent, script: 'echo fine'}}
",
            head("fail")
        ),
    );
    let out = s.run_file(&file, &[]);
    assert_eq!(out.status.code(), Some(1));
    let runs = s.runs();
    assert_eq!(step(&runs[0], "child")["status"], "skipped");
    assert_eq!(step(&runs[0], "independent")["status"], "succeeded");
    assert!(!text(&out.stdout).contains("never"));
}

#[test]
fn cancel_with_ctrl_c_stops_the_steps_and_exits_130() {
    // The test watches the step from outside (files it writes, its pids): no sandbox.
    let s = Scratch::new();
    let pid_file = s.path("step.pid");
    let file = s.pipeline(
        "cancel.yaml",
        &format!(
            "{}steps:
  - name: long
    script: |
      echo $$ > {}
      sleep 300
  - name: never
    script: echo never
",
            head("cancel"),
            pid_file.display()
        ),
    );
    let child: Child = s
        .cmd(&[
            "run",
            "--no-sandbox",
            file.to_str().expect("utf-8"),
            "--plain",
            "--kill-grace",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for(&pid_file, Duration::from_secs(20)),
        "the step never started"
    );
    let step_pid = read_pid(&pid_file);
    // SAFETY: sends SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(wait_dead(step_pid, Duration::from_secs(5)));
    let runs = s.runs();
    assert_eq!(runs[0]["status"], "cancelled");
    assert_eq!(step(&runs[0], "long")["status"], "cancelled");
    assert_eq!(step(&runs[0], "never")["status"], "cancelled");
}

#[test]
fn secrets_are_masked_even_split_across_reads_and_never_stored_in_plaintext() {
    let s = Scratch::new();
    let secret = "tr1cky-S3CRET-value";
    let generated = "gen-0a1b2c3d4e5f-pw";
    s.secret("api_token", secret, Some("mask"));
    let file = s.pipeline(
        "mask.yaml",
        &format!(
            "{}secrets: [api_token]
steps:
  - name: leak
    script: |
      printf 'token=%s\\n' \"$TOKEN\"
      # The same value written in two pieces with a pause between the writes.
      printf 'split=tr1cky-S3'; sleep 0.3; printf 'CRET-value done\\n'
      pw=\"gen-$(printf '%s' 0a1b2c3d4e5f)-pw\"
      printf '%s' \"$pw\" > \"$GANTRY_OUTPUTS/password\"
      echo \"after writing: $pw\"
    env: {{TOKEN: \"{{{{secrets.api_token}}}}\"}}
    outputs: [{{name: password, secret: true}}, host]
  - name: reader
    script: |
      echo \"password is $PW\"
      echo \"host is db.example\"
    env: {{PW: \"{{{{steps.leak.outputs.password}}}}\"}}
",
            head("mask")
        ),
    );
    // The `host` output is declared but never written: that is an error, so write it too.
    let yaml = std::fs::read_to_string(&file).expect("read").replace(
        "      echo \"after writing",
        "      printf 'db.example' > \"$GANTRY_OUTPUTS/host\"\n      echo \"after writing",
    );
    std::fs::write(&file, yaml).expect("write");
    let out = s.run_file(&file, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(logged(&stdout, "leak", "token=***"), "{stdout}");
    assert!(logged(&stdout, "leak", "split=*** done"), "{stdout}");
    assert!(logged(&stdout, "leak", "after writing: ***"), "{stdout}");
    assert!(logged(&stdout, "reader", "password is ***"), "{stdout}");
    assert!(
        !stdout.contains(secret) && !stdout.contains(generated),
        "{stdout}"
    );
    let run_id = s.runs()[0]["id"].as_str().expect("id").to_string();
    let logs = s.gantry(&["logs", &run_id]);
    let logs_text = text(&logs.stdout);
    assert!(
        logs_text.contains("token=***") && logs_text.contains("password is ***"),
        "{logs_text}"
    );
    assert!(!logs_text.contains(secret) && !logs_text.contains(generated));
    let listed = text(&s.gantry(&["secrets", "list"]).stdout);
    assert!(
        listed.contains("mask/api_token") && !listed.contains(secret),
        "{listed}"
    );
    // Nothing under the data dir holds either value in plaintext.
    let mut hits = Vec::new();
    grep_tree(
        &s.data(),
        &[secret.as_bytes(), generated.as_bytes()],
        &mut hits,
    );
    assert!(hits.is_empty(), "plaintext secret found in {hits:?}");
}

/// A step that prints a secret encoded (base64, hex, URL-encoded) is masked as well, and a secret
/// shorter than four characters is refused when it is set.
#[test]
fn encoded_secrets_are_masked_and_short_ones_refused() {
    let s = Scratch::new();
    let secret = "enc0ded-S3cret/value";
    s.secret("api_token", secret, Some("encoded"));
    let file = s.pipeline(
        "encoded.yaml",
        &format!(
            "{}secrets: [api_token]
steps:
  - name: leak
    script: |
      printf 'b64=%s\\n' \"$(printf %s \"$TOKEN\" | base64)\"
      printf 'b64nl=%s\\n' \"$(echo \"$TOKEN\" | base64)\"
      printf 'hex=%s\\n' \"$(printf %s \"$TOKEN\" | od -An -tx1 | tr -d ' \\n')\"
      printf 'url=%s\\n' \"$(printf %s \"$TOKEN\" | sed 's|/|%2F|g')\"
    env: {{TOKEN: \"{{{{secrets.api_token}}}}\"}}
",
            head("encoded")
        ),
    );
    let out = s.run_file(&file, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for line in ["b64=***", "b64nl=***", "hex=***", "url=***"] {
        assert!(logged(&stdout, "leak", line), "{line}: {stdout}");
    }
    let short = s
        .cmd(&["secrets", "set", "pin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"123")?;
            child.wait_with_output()
        })
        .expect("gantry runs");
    assert_ne!(short.status.code(), Some(0));
    assert!(
        text(&short.stderr).contains("at least 4"),
        "{}",
        text(&short.stderr)
    );
}

/// Files under `dir` holding any of `needles`.
pub fn grep_tree(dir: &Path, needles: &[&[u8]], hits: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            grep_tree(&path, needles, hits);
        } else if let Ok(bytes) = std::fs::read(&path)
            && needles
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == *n))
        {
            hits.push(path);
        }
    }
}

#[test]
fn steps_never_see_the_master_key_or_other_host_variables() {
    let s = Scratch::new();
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let file = s.pipeline(
        "env.yaml",
        &format!("{}steps:\n  - {{name: show, script: env}}\n", head("env")),
    );
    let out = s
        .cmd(&["run", file.to_str().expect("utf-8"), "--plain"])
        .env("GANTRY_MASTER_KEY", key)
        .env("GANTRY_TEST_UNRELATED", "unrelated-host-value")
        .stdin(Stdio::null())
        .output()
        .expect("gantry runs");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(logged_prefix(&stdout, "show", "GANTRY_RUN_ID="), "{stdout}");
    assert!(logged_prefix(&stdout, "show", "PATH="), "{stdout}");
    assert!(
        !stdout.contains("GANTRY_MASTER_KEY") && !stdout.contains(key),
        "{stdout}"
    );
    assert!(!stdout.contains("unrelated-host-value"), "{stdout}");
}

/// Whether a log line of `step` starts with `start`.
fn logged_prefix(stdout: &str, step: &str, start: &str) -> bool {
    stdout.lines().any(|l| {
        l.strip_prefix(step)
            .map(|rest| rest.trim_start())
            .and_then(|rest| rest.strip_prefix("| "))
            .is_some_and(|rest| rest.starts_with(start))
    })
}

#[test]
fn bad_parameter_values_are_rejected_before_anything_runs() {
    // The test watches the step from outside (files it writes): no sandbox.
    let s = Scratch::new();
    let marker = s.path("ran");
    let file = s.pipeline(
        "params.yaml",
        &format!(
            "{}parameters:
  - {{name: replicas, type: integer, minimum: 1, maximum: 5, default: 1}}
  - {{name: env, type: enum, enum: [dev, prod], default: dev}}
  - {{name: db, pattern: '^[a-z]+$', default: orders}}
steps:
  - name: s
    script: touch {}
",
            head("params"),
            marker.display()
        ),
    );
    for (arg, needle) in [
        ("replicas=9", "parameter `replicas` must be at most 5"),
        ("replicas=two", "parameter `replicas` must be an integer"),
        ("env=staging", "parameter `env` must be one of"),
        ("db=Orders!", "parameter `db` must match"),
        ("nope=1", "unknown parameter `nope`"),
    ] {
        let out = s.run_file(&file, &["-p", arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(
            text(&out.stderr).contains(needle),
            "{arg}: {}",
            text(&out.stderr)
        );
    }
    assert!(!marker.exists());
    assert!(s.runs().is_empty(), "a rejected run must not be recorded");
    let out = s.run_file(
        &file,
        &["-p", "replicas=5", "-p", "env=prod", "--no-sandbox"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(s.runs()[0]["parameters"]["replicas"], 5);
}

#[test]
fn missing_variables_and_secrets_fail_the_run_before_any_step() {
    // The test watches the step from outside (files it writes, its pids): no sandbox.
    let s = Scratch::new();
    let marker = s.path("ran");
    let file = s.pipeline(
        "needs.yaml",
        &format!(
            "{}variables: [region, zone]
secrets: [token]
steps:
  - name: s
    script: touch {}
    env: {{R: \"{{{{vars.region}}}}\", Z: \"{{{{vars.zone}}}}\", T: \"{{{{secrets.token}}}}\"}}
",
            head("needs"),
            marker.display()
        ),
    );
    let out = s.gantry(&["vars", "set", "zone", "a"]);
    assert_eq!(out.status.code(), Some(0));
    let out = s.run_file(&file, &["--no-sandbox"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!marker.exists());
    let run = &s.runs()[0];
    assert_eq!(run["status"], "failed");
    let message = run["message"].as_str().expect("message");
    assert!(
        message.contains("`region`") && message.contains("`token`") && !message.contains("`zone`"),
        "{message}"
    );
    // Given for this run, and stored, it runs; pipeline scope overrides global scope.
    s.secret("token", "t0k3n", None);
    let out = s.run_file(&file, &["--var", "region=eu", "--no-sandbox"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(marker.exists());
}

#[test]
fn secrets_set_unprotected_is_listed_and_setting_again_protects() {
    let s = Scratch::new();
    let set = |args: &[&str]| {
        let mut child = s
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"plan-value")
            .expect("write secret");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let said = set(&["secrets", "set", "plan_key", "--unprotected"]);
    assert!(
        said.contains(
            "secret `plan_key` set in the global scope (unprotected: runs at any ref get it)"
        ),
        "{said}"
    );
    s.secret("apply_key", "apply-value", Some("infra/deploy"));
    let listed = text(&s.gantry(&["secrets", "list"]).stdout);
    assert_eq!(
        listed, "plan_key (unprotected)\ninfra/deploy/apply_key\n",
        "{listed}"
    );
    let json = s.gantry(&["secrets", "list", "--json"]);
    let v: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(
        v,
        serde_json::json!([
            {"pipeline": null, "name": "plan_key", "unprotected": true},
            {"pipeline": "infra/deploy", "name": "apply_key"}
        ])
    );
    let said = set(&["secrets", "set", "plan_key"]);
    assert!(
        said.contains("(protected: only runs at protected refs get it)"),
        "{said}"
    );
    let listed = text(&s.gantry(&["secrets", "list"]).stdout);
    assert!(listed.starts_with("plan_key\n"), "{listed}");
}

#[test]
fn vars_and_secrets_commands() {
    let s = Scratch::new();
    assert_eq!(
        s.gantry(&["vars", "set", "region", "eu"]).status.code(),
        Some(0)
    );
    assert_eq!(
        s.gantry(&["vars", "set", "region", "us", "--pipeline", "deploy"])
            .status
            .code(),
        Some(0)
    );
    let listed = text(&s.gantry(&["vars", "list"]).stdout);
    assert!(
        listed.contains("region=eu") && listed.contains("deploy/region=us"),
        "{listed}"
    );
    assert_eq!(
        s.gantry(&["vars", "rm", "region", "--pipeline", "deploy"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        s.gantry(&["vars", "rm", "region", "--pipeline", "deploy"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        s.gantry(&["vars", "set", "bad-name", "x"]).status.code(),
        Some(2)
    );
    // Empty stdin is refused; nothing is stored.
    let out = s.gantry(&["secrets", "set", "token"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&s.gantry(&["secrets", "list"]).stdout).is_empty());
    s.secret("token", "value-1", None);
    let listed = s.gantry(&["secrets", "list", "--json"]);
    let v: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(v, serde_json::json!([{"pipeline": null, "name": "token"}]));
    assert_eq!(s.gantry(&["secrets", "rm", "token"]).status.code(), Some(0));
    // There is no command that prints a secret value.
    let help = text(&s.gantry(&["secrets", "--help"]).stdout);
    assert!(!help.contains("get") && !help.contains("show"), "{help}");
}

#[test]
fn logs_of_one_step_and_run_numbers() {
    let s = Scratch::new();
    let file = s.pipeline(
        "logs.yaml",
        &format!("{}steps:\n  - {{name: a, script: 'echo from-a'}}\n  - {{name: b, script: 'echo from-b >&2'}}\n", head("logs")),
    );
    for _ in 0..3 {
        assert_eq!(s.run_file(&file, &[]).status.code(), Some(0));
    }
    let runs = s.runs();
    let numbers: Vec<i64> = runs
        .iter()
        .map(|r| r["number"].as_i64().expect("number"))
        .collect();
    assert_eq!(numbers, vec![3, 2, 1], "newest first");
    let id = runs[0]["id"].as_str().expect("id");
    let out = s.gantry(&["logs", &id[..12], "--step", "b"]);
    assert_eq!(text(&out.stdout), "from-b\n");
    let out = s.gantry(&["logs", id, "--follow"]);
    assert!(
        logged(&text(&out.stdout), "a", "from-a"),
        "{}",
        text(&out.stdout)
    );
    let out = s.gantry(&["logs", id, "--step", "zz"]);
    assert_eq!(out.status.code(), Some(2));
    for key in [
        "id",
        "number",
        "pipeline",
        "status",
        "trigger",
        "started_at",
        "finished_at",
        "steps",
    ] {
        assert!(runs[0].get(key).is_some(), "runs --json lacks {key}");
    }
    for key in ["name", "status", "attempts", "exit_code", "duration_ms"] {
        assert!(runs[0]["steps"][0].get(key).is_some(), "step lacks {key}");
    }
}

#[test]
fn a_killed_gantry_run_is_marked_interrupted_and_its_steps_are_killed() {
    // The test watches the step from outside (files it writes, its pids): no sandbox.
    let s = Scratch::new();
    let pid_file = s.path("orphan.pid");
    let file = s.pipeline(
        "crash.yaml",
        &format!(
            "{}steps:\n  - name: long\n    script: |\n      sh -c 'sleep 300' &\n      echo $! > {}\n      sleep 300\n",
            head("crash"),
            pid_file.display()
        ),
    );
    let mut child = s
        .cmd(&[
            "run",
            file.to_str().expect("utf-8"),
            "--plain",
            "--no-sandbox",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for(&pid_file, Duration::from_secs(20)),
        "the step never started"
    );
    let orphan = read_pid(&pid_file);
    child.kill().expect("kill -9 gantry");
    let _ = child.wait();
    assert!(
        alive(orphan),
        "the step outlives a kill -9 of gantry until recovery"
    );
    let out = s.gantry(&["runs", "--json"]);
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(runs[0]["status"], "interrupted");
    assert_eq!(step(&runs[0], "long")["status"], "interrupted");
    assert!(
        wait_dead(orphan, Duration::from_secs(5)),
        "recovery must kill leftover step processes"
    );
    let run_dir = s
        .path("data-work")
        .join(runs[0]["id"].as_str().expect("id"));
    assert!(
        !run_dir.exists(),
        "recovery must remove the run directory (output files may hold secrets)"
    );
}

#[test]
fn a_data_dir_inside_the_repository_is_never_copied_into_the_workspace() {
    let s = Scratch::new();
    let repo = s.path("repo");
    std::fs::create_dir_all(repo.join(".gantry/pipelines")).expect("mkdir");
    let out = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "init", "-q"])
        .current_dir(&repo)
        .output()
        .expect("git");
    assert!(out.status.success());
    let file = repo.join(".gantry/pipelines/p.yaml");
    std::fs::write(
        &file,
        format!("{}secrets: [token]\nsteps:\n  - {{name: checkout, template: gantry/git-checkout@v1}}\n  - name: look\n    script: test -f .gantry/pipelines/p.yaml && test ! -e gantry-data\n", head("p")),
    )
    .expect("write");
    let data = repo.join("gantry-data");
    let gantry = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.arg("--data-dir")
            .arg(&data)
            .args(args)
            .env_remove("GANTRY_MASTER_KEY");
        cmd
    };
    let mut set = gantry(&["secrets", "set", "token"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    set.stdin
        .take()
        .expect("stdin")
        .write_all(b"tok3n")
        .expect("write");
    assert!(set.wait().expect("wait").success());
    assert!(data.join("master.key").exists());
    let out = gantry(&["run", file.to_str().expect("utf-8"), "--plain"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data)
        .expect("data dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the data dir is for its owner only");
}

#[test]
fn undeclared_vars_are_refused_like_parameters() {
    let s = Scratch::new();
    let file = s.pipeline(
        "v.yaml",
        &format!(
            "{}variables: [region]\nsteps:\n  - {{name: s, script: 'true'}}\n",
            head("v")
        ),
    );
    let out = s.run_file(&file, &["--var", "regoin=eu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("did you mean `region`?"),
        "{}",
        text(&out.stderr)
    );
    assert!(s.runs().is_empty());
}

#[test]
fn checkout_copies_the_work_tree_as_git_sees_it() {
    let s = Scratch::new();
    let repo = s.path("repo");
    std::fs::create_dir_all(repo.join(".gantry/pipelines")).expect("mkdir");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
            ])
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join(".gitignore"), "secret.env\n").expect("write");
    std::fs::write(repo.join("committed.txt"), "old\n").expect("write");
    git(&["add", "."]);
    git(&["commit", "-qm", "first"]);
    std::fs::write(repo.join("committed.txt"), "changed\n").expect("write");
    std::fs::write(repo.join("new.txt"), "untracked\n").expect("write");
    std::fs::write(repo.join("secret.env"), "ignored\n").expect("write");
    let file = repo.join(".gantry/pipelines/check.yaml");
    std::fs::write(
        &file,
        format!(
            "{}steps:\n  - {{name: checkout, template: gantry/git-checkout@v1}}\n  - name: look\n    script: |\n      test \"$(cat committed.txt)\" = changed\n      test -f new.txt\n      test ! -e secret.env\n      test -f .gantry/pipelines/check.yaml\n      test ! -e .git\n",
            head("check")
        ),
    )
    .expect("write");
    let out = s.run_file(&file, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Outside a git work tree, the checkout step says so.
    let loose = s.path("loose");
    std::fs::create_dir_all(loose.join(".gantry/pipelines")).expect("mkdir");
    let file = loose.join(".gantry/pipelines/check.yaml");
    std::fs::write(
        &file,
        format!(
            "{}steps:\n  - {{name: checkout, template: gantry/git-checkout@v1}}\n",
            head("loose")
        ),
    )
    .expect("write");
    let out = s.run_file(&file, &[]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("not inside a git work tree"), "{all}");
}
