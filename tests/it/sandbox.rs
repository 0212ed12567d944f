//! The local executor's sandbox, probed the way a hostile step would: real bubblewrap, real
//! processes, the built `gantry` binary.

use std::path::Path;
use std::time::Instant;

use super::run::{Scratch, text};

const MASTER_KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

fn head(name: &str) -> String {
    format!("apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\n")
}

/// The value printed for `key` by a probe line `key=value`.
fn probe<'a>(stdout: &'a str, key: &str) -> &'a str {
    let marker = format!("{key}=");
    stdout
        .lines()
        .find_map(|l| {
            l.split_once("| ")
                .and_then(|(_, rest)| rest.strip_prefix(&marker))
        })
        .unwrap_or_else(|| panic!("no `{key}=` line in:\n{stdout}"))
}

#[test]
fn a_probe_step_finds_nothing_of_gantry() {
    let s = Scratch::new();
    // Something to find: the data dir (with its master key file), a config file with a token,
    // and a place outside the workspace to write to.
    std::fs::create_dir_all(s.data()).expect("data dir");
    let config = s.path("gantry.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\nname='a'\ntoken='tok-probe-secret'\n",
    )
    .expect("config");
    let outside = s.path("outside");
    let data = s.data();
    let yaml = format!(
        "{}steps:\n  - name: probe\n    script: |\n{}",
        head("probe"),
        [
            "echo \"uid=$(id -u)\"".to_string(),
            "echo \"name=$(id -un)\"".to_string(),
            format!("if ls {} >/dev/null 2>&1; then echo data=seen; else echo data=hidden; fi", data.display()),
            format!("if cat {} >/dev/null 2>&1; then echo config=seen; else echo config=hidden; fi", config.display()),
            // The host's paths do not exist inside; the host never sees the file.
            format!("touch {} 2>/dev/null || true; echo write=tried", outside.display()),
            // Every environment and command line this step can reach.
            // The patterns are put together at run time, so the script's own command line does
            // not match them.
            "k=GANTRY_MASTER; k=\"${k}_KEY\"; d=--data; d=\"$d-dir\"; found=none; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do if grep -qa -e \"$k\" -e \"$d\" \"$f\" 2>/dev/null; then found=\"$f\"; fi; done; echo \"environ=$found\"".to_string(),
            // Processes it could signal: its own PID namespace only.
            "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo \"processes=$n\"".to_string(),
            "if kill -0 1 2>/dev/null; then echo signal=init; else echo signal=refused; fi".to_string(),
            "echo \"home=$HOME\"".to_string(),
            // The sandbox's root is read-only: no step plants a file that the next step's
            // programs read from `/etc` (a preload library, a profile); `/tmp` stays writable.
            "touch /etc/ld.so.preload 2>/dev/null && echo preload=planted || echo preload=refused".to_string(),
            "touch /planted 2>/dev/null && echo root=written || echo root=refused".to_string(),
            "touch /tmp/mine 2>/dev/null && echo tmp=written || echo tmp=refused".to_string(),
            "echo \"nofile=$(ulimit -n)\"; echo \"core=$(ulimit -c)\"".to_string(),
        ]
        .iter()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
    );
    let file = s.pipeline("probe.yaml", &yaml);
    let out = s
        .cmd(&["run", file.to_str().expect("utf-8"), "--plain"])
        .env("GANTRY_MASTER_KEY", MASTER_KEY)
        .output()
        .expect("gantry runs");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let root = unsafe { libc_geteuid() } == 0;
    if root {
        // A uid of the run's own, which the step's user database knows.
        let uid: u32 = probe(&stdout, "uid").parse().expect("a uid");
        assert!(
            gantry::executor::local::uids::DEFAULT_RANGE.holds(uid),
            "steps run as a uid of the run's own: {uid}"
        );
        assert_eq!(probe(&stdout, "name"), "gantry-run");
    }
    assert_eq!(probe(&stdout, "data"), "hidden");
    assert_eq!(probe(&stdout, "config"), "hidden");
    assert_eq!(probe(&stdout, "write"), "tried");
    assert!(
        !outside.exists(),
        "nothing was written outside the workspace"
    );
    // The only processes a step can see are its own: its namespace's init, the step's shell and
    // the loop's subshells, none of them Gantry with its environment.
    let environ = probe(&stdout, "environ");
    assert_eq!(
        environ, "none",
        "a step reached a process holding Gantry's environment or command line"
    );
    let processes: u32 = probe(&stdout, "processes").parse().expect("a count");
    assert!(processes < 10, "a step sees {processes} processes");
    assert_eq!(probe(&stdout, "home"), "/tmp");
    assert_eq!(probe(&stdout, "preload"), "refused");
    assert_eq!(probe(&stdout, "root"), "refused");
    assert_eq!(probe(&stdout, "tmp"), "written");
    assert_eq!(probe(&stdout, "nofile"), "4096", "steps get their rlimits");
    assert_eq!(probe(&stdout, "core"), "0");
    assert!(!stdout.contains(MASTER_KEY) && !stdout.contains("tok-probe-secret"));
}

/// `geteuid` without a libc dependency in the tests.
unsafe fn libc_geteuid() -> u32 {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() }
}

/// A sandboxed program that cannot be executed is said as such (its init reports the errno on
/// the status pipe; the spawner no longer answers each start), and the run goes on.
#[test]
fn a_sandboxed_program_that_cannot_start_says_why() {
    let s = Scratch::new();
    let yaml = format!(
        "{}steps:\n  - - {{name: missing, command: [no-such-program-here]}}\n    - name: interpreter\n      script: |\n        #!/no/such/interpreter\n        echo hi\n    - {{name: fine, script: 'echo fine-ran'}}\n  - {{name: after, script: 'echo after-ran'}}\n",
        head("unstartable")
    );
    let out = s.run_file(&s.pipeline("unstartable.yaml", &yaml), &[]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{said}");
    for expected in [
        "cannot start `no-such-program-here`: program not found",
        "cannot start the script: its interpreter `#!/no/such/interpreter` was not found",
        "fine-ran",
    ] {
        assert!(said.contains(expected), "no {expected:?} in:\n{said}");
    }
    assert!(!said.contains("after-ran"), "{said}");
}

#[test]
fn hostile_outputs_fail_their_step_with_a_message() {
    let s = Scratch::new();
    let yaml = format!(
        "{}steps:\n{}",
        head("hostile"),
        [
            ("fifo", "mkfifo \"$GANTRY_OUTPUTS/v\""),
            ("symlink", "ln -s /dev/zero \"$GANTRY_OUTPUTS/v\""),
            ("directory", "mkdir \"$GANTRY_OUTPUTS/v\""),
            ("oversize", "head -c 3000000 /dev/zero > \"$GANTRY_OUTPUTS/v\""),
            ("dir-swap", "rmdir \"$GANTRY_OUTPUTS\" 2>/dev/null || true; ln -s / \"$GANTRY_OUTPUTS\" 2>/dev/null || true; echo x > /tmp/v"),
        ]
        .iter()
        .map(|(name, script)| {
            format!(
                "  - name: {name}\n    script: '{}'\n    outputs: [v]\n    continueOn: {{error: true}}\n",
                script.replace('\'', "''")
            )
        })
        .collect::<String>()
    );
    let file = s.pipeline("hostile.yaml", &yaml);
    let started = Instant::now();
    let out = s.run_file(&file, &[]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        started.elapsed().as_secs() < 60,
        "hostile outputs must not hang the run"
    );
    let runs = s.runs();
    let steps = runs[0]["steps"].as_array().expect("steps").clone();
    let message = |name: &str| -> String {
        let step = steps
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {stdout}{stderr}"));
        assert_eq!(step["status"], "error", "{name}: {step}");
        step["message"].as_str().unwrap_or_default().to_string()
    };
    assert!(
        message("fifo").contains("output `v` is a FIFO"),
        "{}",
        message("fifo")
    );
    assert!(
        message("symlink").contains("symbolic link"),
        "{}",
        message("symlink")
    );
    assert!(
        message("directory").contains("a directory"),
        "{}",
        message("directory")
    );
    assert!(
        message("oversize").contains("larger than the limit"),
        "{}",
        message("oversize")
    );
    // The step cannot replace its outputs folder (its parent is not writable for it), and
    // writing elsewhere declares nothing.
    assert!(
        message("dir-swap").contains("was not written"),
        "{}",
        message("dir-swap")
    );
}

/// Size of everything under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => pending.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Runs a pipeline of `steps` with `gantry run`, which must succeed; its output and how much the
/// data dir grew.
fn run_flood(s: &Scratch, name: &str, steps: &str) -> (String, u64) {
    let file = s.pipeline(
        &format!("{name}.yaml"),
        &format!("{}steps:\n{steps}", head(name)),
    );
    std::fs::create_dir_all(s.data()).expect("data dir");
    let before = du(&s.data());
    let out = s.run_file(&file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    (text(&out.stdout), du(&s.data()).saturating_sub(before))
}

#[test]
fn a_log_flood_is_cut_and_the_step_runs_on() {
    let s = Scratch::new();
    // 400 MB of output in 4,000-byte lines, then a marker the step writes after the flood.
    let (stdout, grown) = run_flood(
        &s,
        "flood",
        "  - name: flood\n    script: |\n      head -c 400000000 /dev/zero | tr '\\0' x | fold -w 4000\n      echo done > \"$GANTRY_OUTPUTS/after\"\n    outputs: [after]\n",
    );
    assert!(
        grown < 100 << 20,
        "a 400 MB flood grew the data dir by {grown} bytes"
    );
    assert!(
        stdout.contains("log cut here: the step's output goes past the log limit (16 MiB per step"),
        "one line says where the log was cut"
    );
    assert_eq!(stdout.matches("log cut here").count(), 1);
    let runs = s.runs();
    assert_eq!(runs[0]["status"], "succeeded", "{}", runs[0]);
}

/// A flood of empty lines is cut by what its lines cost to keep, not by their text alone (8
/// million empty lines, 8 MB of output, were once stored whole under the 16 MiB limit and grew
/// the data dir by 277 MB).
#[test]
fn a_flood_of_empty_lines_is_cut_by_what_keeping_them_costs() {
    let s = Scratch::new();
    let (stdout, grown) = run_flood(
        &s,
        "empty",
        "  - name: flood\n    script: yes '' | head -n 8000000\n",
    );
    assert!(
        grown < 64 << 20,
        "8 million empty lines grew the data dir by {grown} bytes"
    );
    assert_eq!(stdout.matches("log cut here").count(), 1);
}

#[test]
fn a_pipeline_can_turn_the_network_off() {
    let s = Scratch::new();
    let yaml = format!(
        "{}sandbox: {{network: false}}\nsteps:\n  - name: net\n    script: 'echo \"links=$(ls /sys/class/net 2>/dev/null | tr \"\\n\" \" \")\"; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d \" \" | sort | tr \"\\n\" \",\" | sed \"s/^/ifaces=/\"; echo'\n",
        head("offline")
    );
    let file = s.pipeline("offline.yaml", &yaml);
    let out = s.run_file(&file, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        probe(&stdout, "ifaces"),
        "lo,",
        "only loopback without network"
    );
}

#[test]
fn no_sandbox_is_an_explicit_choice() {
    let s = Scratch::new();
    let outside = s.path("outside");
    let yaml = format!(
        "{}steps:\n  - name: host\n    script: 'touch {}'\n",
        head("host"),
        outside.display()
    );
    let file = s.pipeline("host.yaml", &yaml);
    let sandboxed = s.run_file(&file, &[]);
    assert_eq!(
        sandboxed.status.code(),
        Some(1),
        "the host's path does not exist in the sandbox"
    );
    assert!(!outside.exists());
    let open = s.run_file(&file, &["--no-sandbox"]);
    assert_eq!(open.status.code(), Some(0), "{}", text(&open.stderr));
    assert!(
        outside.exists(),
        "--no-sandbox runs the step with the host's view"
    );
}

/// A git work tree in the scratch area holding `yaml` as its pipeline.
fn repo_with(s: &Scratch, yaml: &str) -> std::path::PathBuf {
    let repo = s.path("repo");
    std::fs::create_dir_all(repo.join(".gantry/pipelines")).expect("repo dirs");
    let status = std::process::Command::new("git")
        .args(["init", "-q"])
        .arg(&repo)
        .status()
        .expect("git init");
    assert!(status.success());
    std::fs::write(repo.join("README.md"), "hello\n").expect("readme");
    let file = repo.join(".gantry/pipelines/p.yaml");
    std::fs::write(&file, yaml).expect("pipeline");
    file
}

#[test]
fn a_checkout_is_the_step_users_and_never_follows_a_planted_symlink() {
    let s = Scratch::new();
    let victim = s.path("victim");
    std::fs::create_dir_all(&victim).expect("victim");
    let yaml = format!(
        "{}steps:\n  - name: checkout\n    template: gantry/git-checkout@v1\n  - name: edit\n    script: 'echo more >> README.md && echo edited=yes'\n  - name: plant\n    script: 'ln -s {} planted'\n  - name: redirected\n    template: gantry/git-checkout@v1\n    arguments: {{path: planted/inner}}\n    continueOn: {{error: true}}\n",
        head("checkout"),
        victim.display()
    );
    let file = repo_with(&s, &yaml);
    let out = s.run_file(&file, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        probe(&stdout, "edited"),
        "yes",
        "the step user can change checked-out files"
    );
    let runs = s.runs();
    let redirected = runs[0]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|x| x["name"] == "redirected"))
        .expect("the redirected step")
        .clone();
    assert_eq!(redirected["status"], "error", "{redirected}");
    assert_eq!(
        std::fs::read_dir(&victim).expect("victim").count(),
        0,
        "nothing was written through the planted symlink"
    );
}

mod served {
    //! The same boundary under `gantry serve`: the server's config, data dir, environment and
    //! process stay out of reach, and hostile outputs never stall the API.

    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use crate::support::server::{GantryServer, ServerConfig, json as parse};

    const WAIT: Duration = Duration::from_secs(40);

    fn run_local(s: &GantryServer, name: &str, yaml: &str) -> String {
        let (status, body) = s.put_text(&format!("/api/v1/pipelines/local/{name}"), yaml);
        assert!(
            status == 200 || status == 201,
            "PUT {name}: {status} {body}"
        );
        let (status, body) = s.post_json(
            &format!("/api/v1/pipelines/local/{name}/runs"),
            &json!({"parameters": {}}),
        );
        assert_eq!(status, 201, "{body}");
        parse(&body)["id"].as_str().expect("run id").to_string()
    }

    fn wait_ended(s: &GantryServer, id: &str) -> Value {
        let mut run = Value::Null;
        s.wait_until(&format!("run {id} ends"), WAIT, || {
            run = s.get_json(&format!("/api/v1/runs/{id}"));
            !matches!(run["status"].as_str(), Some("queued" | "running"))
        });
        run
    }

    #[test]
    fn a_served_step_cannot_reach_the_server_and_hostile_outputs_do_not_stall_it() {
        let key = "7a".repeat(32);
        let s = GantryServer::start(ServerConfig::new().env("GANTRY_MASTER_KEY", &key));
        let config = s.config_path();
        let data = s.data_dir();
        let yaml = format!(
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {{name: probe}}\nsteps:\n  - name: probe\n    script: |\n      cat {} 2>/dev/null && echo config=seen || echo config=hidden\n      ls {} 2>/dev/null && echo data=seen || echo data=hidden\n      k=GANTRY_MASTER; k=\"${{k}}_KEY\"; t=gantry-it; t=\"$t-admin\"; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do grep -qa -e \"$k\" -e \"$t\" \"$f\" 2>/dev/null && echo \"leak=$f\"; done; echo probed=yes\n  - name: fifo\n    script: 'mkfifo \"$GANTRY_OUTPUTS/v\"; sleep 1'\n    outputs: [v]\n    continueOn: {{error: true}}\n  - name: zero\n    script: 'ln -s /dev/zero \"$GANTRY_OUTPUTS/v\"; sleep 1'\n    outputs: [v]\n    secret: true\n    continueOn: {{error: true}}\n",
            config.display(),
            data.display()
        );
        // `secret: true` belongs to outputs in the spec; keep the YAML valid.
        let yaml = yaml.replace(
            "    outputs: [v]\n    secret: true\n",
            "    outputs: [{name: v, secret: true}]\n",
        );
        let id = run_local(&s, "probe", &yaml);
        // While the hostile steps run, the API answers at once.
        let mut slowest = Duration::ZERO;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            let t = Instant::now();
            let (status, _) = s.get("/healthz");
            assert_eq!(status, 200);
            let (status, _) = s.get(&format!("/api/v1/runs/{id}"));
            assert_eq!(status, 200);
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(slowest < Duration::from_secs(1), "the API took {slowest:?}");
        let run = wait_ended(&s, &id);
        let (_, log) = s.get(&format!("/api/v1/runs/{id}/logs"));
        assert!(log.contains("probed=yes"), "{log}");
        assert!(log.contains("config=hidden"), "{log}");
        assert!(log.contains("data=hidden"), "{log}");
        assert!(!log.contains("leak="), "{log}");
        let steps = run["steps"].as_array().expect("steps");
        for name in ["fifo", "zero"] {
            let step = steps.iter().find(|x| x["name"] == name).expect("step");
            assert_eq!(step["state"], "error", "{step}");
        }
        let (status, _) = s.get("/healthz");
        assert_eq!(status, 200, "the server still answers after the run");
    }

    /// A listener on the host that greets whoever connects with `greeting`.
    fn greeter(addr: &str, greeting: &'static str) -> u16 {
        let listener = std::net::TcpListener::bind(addr).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                use std::io::Write;
                let _ = stream.write_all(greeting.as_bytes());
            }
        });
        port
    }

    /// This machine's address on its default route, if it has one.
    fn host_address() -> Option<String> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("192.0.2.200:9").ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
    }

    /// With the network on, a step has a network of its own: the host's loopback (Gantry's API,
    /// a service on 127.0.0.1), the host's own address and link-local addresses are closed to
    /// it; a host port the operator names is open, at the same port of the step's loopback.
    #[test]
    fn a_served_step_with_the_network_on_reaches_only_the_host_ports_it_is_given() {
        if gantry::executor::local::sandbox::Sandbox::bubblewrap(
            gantry::executor::local::sandbox::UserChoice::Default,
            Default::default(),
        )
        .map(|s| match s {
            gantry::executor::local::sandbox::Sandbox::Bubblewrap(b) => b.net.slirp.is_none(),
            _ => true,
        })
        .unwrap_or(true)
        {
            panic!("this test needs bwrap and slirp4netns (the test command installs both)");
        }
        let allowed = greeter("127.0.0.1:0", "hello-allowed");
        let denied = greeter("0.0.0.0:0", "hello-denied");
        let s = GantryServer::start(
            ServerConfig::new()
                .extra_toml(&format!("[executor.local]\nhost_ports = [{allowed}]\n")),
        );
        let host = host_address().unwrap_or_else(|| "127.0.0.1".into());
        let probes = [
            ("allowed", "127.0.0.1".to_string(), allowed),
            ("denied", "127.0.0.1".to_string(), denied),
            ("api", "127.0.0.1".to_string(), s.port()),
            ("gateway", "10.0.2.2".to_string(), denied),
            ("host", host, denied),
            ("metadata", "169.254.169.254".to_string(), 80),
        ];
        let mut script = String::from(
            "      try() { timeout 3 bash -c \"exec 3<>/dev/tcp/$1/$2; head -c 20 <&3\" 2>/dev/null || echo closed; }\n",
        );
        for (name, addr, port) in &probes {
            script.push_str(&format!("      echo \"{name}=$(try {addr} {port})\"\n"));
        }
        let yaml = format!(
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {{name: net}}\nsteps:\n  - name: probe\n    script: |\n{script}"
        );
        let id = run_local(&s, "net", &yaml);
        let run = wait_ended(&s, &id);
        let (_, log) = s.get(&format!("/api/v1/runs/{id}/logs"));
        assert_eq!(run["status"], "succeeded", "{run} {log}");
        assert!(log.contains("allowed=hello-allowed"), "{log}");
        for (name, _, _) in &probes[1..] {
            assert!(log.contains(&format!("{name}=closed")), "{name}: {log}");
        }
    }

    /// A step that eats memory is killed at the run's limit (a control group), says so, and the
    /// server answers throughout.
    #[test]
    fn a_memory_bomb_is_killed_at_the_run_s_limit_and_the_server_answers() {
        use gantry::executor::local::cgroup::{Layout, RunGroup, RunLimits};
        let limits = RunLimits {
            memory: Some(64 << 20),
            ..RunLimits::default()
        };
        let usable = Layout::detect()
            .is_some_and(|l| RunGroup::create(&l, "gantry-test-probe", &limits).is_ok());
        if !usable {
            eprintln!("skipped: no control group can be made here (not root, or no cgroups)");
            return;
        }
        let s = GantryServer::start(
            ServerConfig::new().extra_toml("[executor.local]\nrun_memory = \"64MiB\"\n"),
        );
        assert!(
            s.logs().contains("runs are limited through cgroup"),
            "{}",
            s.logs()
        );
        let yaml = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: bomb}\nsteps:\n  - name: bomb\n    script: |\n      x=$(head -c 400000000 /dev/zero | tr '\\0' a)\n      echo \"survived ${#x}\"\n";
        let id = run_local(&s, "bomb", yaml);
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let run = loop {
            let t = Instant::now();
            let (status, _) = s.get("/healthz");
            assert_eq!(status, 200);
            slowest = slowest.max(t.elapsed());
            let run = s.get_json(&format!("/api/v1/runs/{id}"));
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                break run;
            }
            assert!(started.elapsed() < WAIT, "the bomb still runs: {run}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            slowest < Duration::from_secs(1),
            "/healthz took {slowest:?}"
        );
        assert_eq!(run["status"], "failed", "{run}");
        let step = &run["steps"][0];
        let message = step["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("SIGKILL") && message.contains("memory limit (64 MiB"),
            "{step}"
        );
    }

    /// `user = "root"` makes steps uid 0 inside the sandbox's user namespace only: outside they
    /// are an unprivileged user, and they hold no capability.
    #[test]
    fn root_steps_are_root_only_inside_their_user_namespace() {
        let s = GantryServer::start(
            ServerConfig::new().extra_toml("[executor.local]\nuser = \"root\"\n"),
        );
        let yaml = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: who}\nsteps:\n  - name: who\n    script: |\n      echo \"uid=$(id -u)\"\n      read inside outside count < /proc/self/uid_map; echo \"map=$inside:$outside\"\n      echo \"caps=$(awk '/^CapEff/ {print $2}' /proc/self/status)\"\n      echo \"bounding=$(awk '/^CapBnd/ {print $2}' /proc/self/status) ambient=$(awk '/^CapAmb/ {print $2}' /proc/self/status)\"\n      if mount -t tmpfs none /tmp 2>/dev/null; then echo mount=made; else echo mount=refused; fi\n      if mount -o remount,bind,rw \"$GANTRY_WORKSPACE\" 2>/dev/null; then echo remount=made; else echo remount=refused; fi\n";
        let id = run_local(&s, "who", yaml);
        let run = wait_ended(&s, &id);
        let (_, log) = s.get(&format!("/api/v1/runs/{id}/logs"));
        assert_eq!(run["status"], "succeeded", "{run} {log}");
        assert!(log.contains("uid=0"), "{log}");
        if gantry::executor::local::sandbox::running_as_root() {
            let outside = super::number_after(&log, "map=0:");
            assert!(
                gantry::executor::local::uids::DEFAULT_RANGE.holds(outside),
                "root inside is the run's own uid outside: {log}"
            );
        }
        assert!(
            !log.contains("map=0:0"),
            "root inside is not root outside: {log}"
        );
        assert!(log.contains("caps=0000000000000000"), "{log}");
        assert!(
            log.contains("bounding=0000000000000000 ambient=0000000000000000"),
            "{log}"
        );
        // Root inside, yet no mount: the step holds no capability (the filter it inherits
        // leaves mount(2) to that check, see seccomp.rs).
        assert!(log.contains("mount=refused"), "{log}");
        assert!(log.contains("remount=refused"), "{log}");
    }

    /// Runs that run at the same time have uids of their own from `run_uids`, which their
    /// steps' user database knows, and files a step leaves are that uid's.
    #[test]
    fn runs_running_together_have_uids_of_their_own() {
        if !gantry::executor::local::sandbox::running_as_root() {
            eprintln!("skipped: only a root Gantry gives steps uids of their own");
            return;
        }
        let s = GantryServer::start(
            ServerConfig::new()
                .extra_toml("[executor.local]\nrun_uids = \"1879100000-1879100007\"\n"),
        );
        // Each step lasts long enough for the two runs to overlap (checked below).
        let yaml = |name: &str| {
            format!(
                "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\nsandbox: {{network: false}}\nsteps:\n  - name: who\n    script: |\n      echo \"uid=$(id -u) name=$(id -un) group=$(id -g)\"\n      touch \"$GANTRY_WORKSPACE/left\"\n      stat -c 'owner=%u' \"$GANTRY_WORKSPACE/left\"\n      sleep 1\n"
            )
        };
        let a = run_local(&s, "uid-a", &yaml("uid-a"));
        let b = run_local(&s, "uid-b", &yaml("uid-b"));
        let mut uids = Vec::new();
        let mut spans = Vec::new();
        for id in [&a, &b] {
            let run = wait_ended(&s, id);
            let at = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(run[k].as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("{k} of {run}: {e}"))
            };
            spans.push((at("started_at"), at("finished_at")));
            let (_, log) = s.get(&format!("/api/v1/runs/{id}/logs"));
            assert_eq!(run["status"], "succeeded", "{run} {log}");
            let uid = super::number_after(&log, "uid=");
            assert!(
                (1879100000..=1879100007).contains(&uid),
                "the uid comes from run_uids: {log}"
            );
            assert!(log.contains("name=gantry-run"), "{log}");
            assert!(log.contains(&format!("group={uid}")), "{log}");
            assert!(log.contains(&format!("owner={uid}")), "{log}");
            uids.push(uid);
        }
        assert!(
            spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1,
            "the two runs ran at the same time: {spans:?}"
        );
        assert_ne!(uids[0], uids[1], "two runs never share a uid");
    }

    /// A `run_uids` range that holds a user of this machine stops the server at start, naming
    /// the user: steps never share a uid with a host daemon.
    #[test]
    fn a_run_uid_range_holding_a_machine_user_is_refused_at_start() {
        if !gantry::executor::local::sandbox::running_as_root() {
            eprintln!("skipped: run_uids is used only by a root Gantry");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gantry.toml");
        // uid 1 is `daemon` on Debian; any user of uid 1 to 100 serves.
        std::fs::write(
            &config,
            "[server]\nlisten = \"127.0.0.1:0\"\n[[auth.tokens]]\nname = \"a\"\ntoken = \"tok-0123456789abcdef\"\n[executor.local]\nrun_uids = \"1-100\"\n",
        )
        .expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("GANTRY_MASTER_KEY", "7a".repeat(32))
            .output()
            .expect("gantry serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("run_uids") && stderr.contains("of /etc/passwd"),
            "{stderr}"
        );
    }

    #[test]
    fn without_bubblewrap_the_server_runs_and_every_step_says_how_to_get_it() {
        // A PATH without bwrap (git lives in /usr/local/bin here and in /usr/bin on Debian).
        let s = GantryServer::start(ServerConfig::new().env("PATH", "/usr/local/bin"));
        assert!(
            s.logs().contains("every step will refuse to start"),
            "{}",
            s.logs()
        );
        let id = run_local(
            &s,
            "plain",
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: plain}\nsteps:\n  - {name: a, script: 'echo hi'}\n",
        );
        let run = wait_ended(&s, &id);
        assert_eq!(run["status"], "failed", "{run}");
        let step = &run["steps"][0];
        assert!(
            step["message"]
                .as_str()
                .is_some_and(|m| m.contains("apt-get install bubblewrap")),
            "{step}"
        );
    }
}

/// Host pids of processes one of whose `/proc/<pid>/<file>` entries (split at NULs) matches.
fn pids_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .map(|bytes| bytes.split(|&b| b == 0).any(&matches))
                .unwrap_or(false)
        })
        .collect()
}

/// Host pids of processes whose environment holds `needle`.
fn pids_with_env(needle: &str) -> Vec<u32> {
    pids_where("environ", |kv| kv == needle.as_bytes())
}

/// Host pids of processes with an argument that starts with `prefix`.
fn pids_with_arg(prefix: &str) -> Vec<u32> {
    pids_where("cmdline", |arg| arg.starts_with(prefix.as_bytes()))
}

/// Waits up to 10 s for `pids()` to find nothing, and asserts that it does.
fn assert_all_gone(pids: impl Fn() -> Vec<u32>, what: &str) {
    let gone = Instant::now();
    while !pids().is_empty() && gone.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(pids(), Vec::<u32>::new(), "{what}");
}

// bubblewrap 0.8's inner process waits for its outer one to set up the user namespace; when the
// outer one dies meanwhile (Gantry killed while the sandbox starts), the inner one waits for good
// (ppid 1, no child). Killed at many moments of a sandbox's start, Gantry leaves no `bwrap`
// behind once it starts again.
#[test]
fn a_kill_9_of_gantry_while_a_sandbox_starts_leaves_no_bubblewrap_behind() {
    let s = Scratch::new();
    let file = s.pipeline(
        "quick.yaml",
        &format!(
            "{}steps:
  - name: a
    command: [\"true\"]\n",
            head("quick")
        ),
    );
    // Every sandbox of this test binds a run directory under the scratch folder.
    let needle = s.path("data-work").display().to_string();
    let mut caught = 0;
    for delay_us in (0..3000).step_by(250) {
        let mut child = s
            .cmd(&["run", file.to_str().expect("utf-8"), "--plain"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        // Killed as soon as its sandbox exists, and a little later.
        let started = Instant::now();
        while pids_with_arg(&needle).is_empty() && started.elapsed().as_secs() < 10 {
            // A run that ended before the scan saw its sandbox: on to the next one.
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(delay_us));
        caught += usize::from(!pids_with_arg(&needle).is_empty());
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(caught > 0, "no kill came while a sandbox was there");
    // The next start recovers what the last one left.
    let out = s.gantry(&["runs", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_all_gone(
        || pids_with_arg(&needle),
        "bubblewrap outlived the gantry that started it",
    );
}

#[test]
fn a_kill_9_of_gantry_takes_the_sandboxed_steps_with_it() {
    let s = Scratch::new();
    let name = format!("crash-{}", std::process::id());
    let file = s.pipeline(
        "crash.yaml",
        &format!(
            "{}steps:\n  - name: long\n    script: |\n      sh -c 'sleep 300' &\n      setsid sleep 300 &\n      sleep 300\n",
            head(&name)
        ),
    );
    let mut child = s
        .cmd(&["run", file.to_str().expect("utf-8"), "--plain"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let marker = format!("GANTRY_PIPELINE={name}");
    let started = Instant::now();
    while pids_with_env(&marker).len() < 4 && started.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        pids_with_env(&marker).len() >= 4,
        "the step's processes never started"
    );
    child.kill().expect("kill -9 gantry");
    let _ = child.wait();
    // bubblewrap dies with its parent and takes its PID namespace with it, `setsid` escapes
    // included, before any recovery runs.
    assert_all_gone(|| pids_with_env(&marker), "step processes outlived gantry");
    let out = s.gantry(&["runs", "--json"]);
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(runs[0]["status"], "interrupted");
    let run_dir = s
        .path("data-work")
        .join(runs[0]["id"].as_str().expect("id"));
    assert!(!run_dir.exists(), "recovery removes the run directory");
}

#[test]
fn a_step_that_stops_the_spawner_does_not_hold_the_run() {
    let s = Scratch::new();
    // The spawner is pid 2 of the sandbox (bubblewrap is 1): a step of the same user can stop it,
    // and then no signal reaches the step's group through it.
    let file = s.pipeline(
        "stopper.yaml",
        &format!(
            "{}steps:\n  - name: stop\n    script: 'kill -STOP 2; sleep 300'\n    timeout: 2s\n",
            head("stopper")
        ),
    );
    let started = Instant::now();
    let out = s.run_file(&file, &["--kill-grace", "1"]);
    assert!(
        started.elapsed().as_secs() < 30,
        "the run took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let runs = s.runs();
    let step = &runs[0]["steps"][0];
    // Stopped after it was reported started, the step times out; stopped before (the step can
    // be that quick), its start times out. Either way the sandbox was ended from outside.
    assert!(
        step["status"] == "timed-out"
            || step["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not answer within 10s")),
        "{step}"
    );
}

/// Steps of one run cannot reach each other: what step `one` leaves running (`setsid`, in the
/// background) is gone before step `two` starts and never read `two`'s environment; `two` sees
/// only its own processes (of the spawner only its namespace's init, which it cannot read), cannot write `one`'s outputs folder, and what it
/// creates is its own (umask 077).
#[test]
fn a_step_leaves_nothing_running_for_the_next_and_sees_only_itself() {
    let s = Scratch::new();
    // The patterns are put together at run time, so no command line holds them.
    let lines_one = [
        "setsid sh -c 'k=PROBE; k=\"${k}_SECRET=\"; while :; do echo tick >> ticks; for f in /proc/[0-9]*/environ; do tr \"\\0\" \"\\n\" < \"$f\" 2>/dev/null | grep \"^$k\" >> leak; done; sleep 0.05; done' </dev/null >/dev/null 2>&1 &",
        "sleep 0.3",
        "echo \"ticking=$(wc -l < ticks)\"",
        "printf one > \"$GANTRY_OUTPUTS/x\"",
    ];
    let lines_two = [
        "a=$(wc -l < ticks); sleep 0.5; b=$(wc -l < ticks)",
        "if [ \"$a\" = \"$b\" ]; then echo leftover=gone; else echo \"leftover=running $a $b\"; fi",
        "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo \"visible=$n\"",
        "k=__spawn; k=\"${k}er\"; seen=''; for f in /proc/[0-9]*/cmdline; do grep -qa -e \"$k\" \"$f\" 2>/dev/null && seen=\"$seen$f \"; done; echo \"spawner=$seen\"",
        "if cat /proc/1/environ >/dev/null 2>&1; then echo init=readable; else echo init=refused; fi",
        "touch mine; mkdir mine.d; echo \"modes=$(stat -c %a mine mine.d | tr '\\n' ' ')\"",
        "if [ -s leak ]; then echo leak=yes; else echo leak=no; fi",
        // The seccomp filter: no user namespace of its own, where it would hold capabilities.
        "if unshare -U true 2>/dev/null; then echo userns=made; else echo userns=refused; fi",
        "grep -q '^Seccomp:[[:space:]]*2' /proc/self/status && echo seccomp=filtered",
        "if mount -t tmpfs none /tmp 2>/dev/null; then echo mount=made; else echo mount=refused; fi",
        "if umount -l /proc 2>/dev/null; then echo umount=made; else echo umount=refused; fi",
        "w=refused; for d in \"$GANTRY_OUTPUTS\"/../*/; do [ \"$d\" -ef \"$GANTRY_OUTPUTS\" ] && continue; if (printf evil > \"$d/x\") 2>/dev/null; then w=\"wrote $d\"; fi; done; echo \"others=$w\"",
    ];
    let block = |lines: &[&str]| {
        lines
            .iter()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "{}steps:\n  - name: one\n    outputs: [x]\n    script: |\n{}  - name: two\n    env: {{PROBE_SECRET: probe-s3cr3t}}\n    script: |\n{}  - name: three\n    env: {{X: \"{{{{steps.one.outputs.x}}}}\"}}\n    script: echo \"x=$X\"\n",
        head("apart"),
        block(&lines_one),
        block(&lines_two),
    );
    let file = s.pipeline("apart.yaml", &yaml);
    let out = s
        .cmd(&["run", file.to_str().expect("utf-8"), "--plain"])
        .output()
        .expect("gantry runs");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_ne!(probe(&stdout, "ticking"), "0", "the leftover ran: {stdout}");
    assert_eq!(probe(&stdout, "leftover"), "gone", "{stdout}");
    assert_eq!(probe(&stdout, "leak"), "no", "{stdout}");
    // The spawner's only copy a step can see is its namespace's init (pid 1), which it can
    // neither read nor trace.
    assert_eq!(
        probe(&stdout, "spawner").trim(),
        "/proc/1/cmdline",
        "{stdout}"
    );
    assert_eq!(probe(&stdout, "init"), "refused", "{stdout}");
    let visible: u32 = probe(&stdout, "visible").parse().expect("a count");
    assert!(visible <= 4, "step two sees {visible} processes: {stdout}");
    assert_eq!(probe(&stdout, "modes").trim(), "600 700", "{stdout}");
    assert_eq!(probe(&stdout, "others"), "refused", "{stdout}");
    assert_eq!(probe(&stdout, "userns"), "refused", "{stdout}");
    assert_eq!(probe(&stdout, "seccomp"), "filtered", "{stdout}");
    assert_eq!(probe(&stdout, "mount"), "refused", "{stdout}");
    assert_eq!(probe(&stdout, "umount"), "refused", "{stdout}");
    assert_eq!(probe(&stdout, "x"), "one", "{stdout}");
}

/// The number that follows the first `marker` in a step's log.
fn number_after(log: &str, marker: &str) -> u32 {
    log.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{marker}` in {log}"))
}
