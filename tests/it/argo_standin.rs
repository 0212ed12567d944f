//! The Argo stand-in under `tests/it/support/argo.rs`, checked against what the Argo Server
//! documents (`../shared/argo/`): it takes the Workflows Gantry's compiler writes, runs them, and
//! answers create, get, list, events, logs, terminate, delete and Secrets as the real APIs do.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use gantry::executor::argo::compile::{self, Options, RunFacts};
use serde_json::{Value, json};

use crate::support::argo::{ArgoStandIn, TOKEN, wait_finished};

const NS: &str = "gantry";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Compiles a pipeline (its `steps:` lines) for the stand-in's namespace.
fn compiled(steps: &str, secrets: &[&str]) -> compile::Compiled {
    let secret_list = if secrets.is_empty() {
        String::new()
    } else {
        format!("secrets: [{}]\n", secrets.join(", "))
    };
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: stand-in\n{secret_list}steps:\n{steps}"
    );
    let checked = gantry::spec::check(&text);
    let pipeline = checked
        .pipeline
        .unwrap_or_else(|| panic!("{:?}\n{text}", checked.diagnostics));
    let plan = gantry::plan::plan(&pipeline);
    let run = RunFacts {
        id: "01TESTRUN0000000000000000A".into(),
        number: 1,
        source: "local".into(),
        pipeline: "stand-in".into(),
        params: BTreeMap::new(),
        unset_params: Vec::new(),
        vars: BTreeMap::new(),
        git: None,
        checkout_url: None,
        checkout_credentials: false,
        trigger: "manual".into(),
        pr: None,
    };
    let options = Options {
        namespace: NS.into(),
        ..Options::default()
    };
    compile::compile(&plan, &run, &options).expect("compiles")
}

fn post(s: &ArgoStandIn, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", s.url()))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn get(s: &ArgoStandIn, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}{path}", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Submits a compiled run (its Secret first, with `values`); returns the Workflow's name.
fn submit(s: &ArgoStandIn, c: &compile::Compiled, values: &BTreeMap<String, String>) -> String {
    if !c.secret_keys.is_empty() {
        let secret = compile::secret_manifest(c, NS, "01TESTRUN0000000000000000A", Some(values));
        let (status, body) = post(s, &format!("/api/v1/namespaces/{NS}/secrets"), &secret);
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post(
        s,
        &format!("/api/v1/workflows/{NS}"),
        &json!({"namespace": NS, "workflow": c.workflow}),
    );
    assert_eq!(status, 200, "{body}");
    body["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string()
}

/// The task nodes of a finished Workflow by display name: (phase, message, outputs).
fn tasks(wf: &Value) -> BTreeMap<String, Value> {
    wf["status"]["nodes"]
        .as_object()
        .expect("nodes")
        .values()
        .filter(|n| n["type"] != "DAG" && !n["displayName"].as_str().unwrap_or("").contains('('))
        .map(|n| {
            (
                n["displayName"].as_str().unwrap_or("").to_string(),
                n.clone(),
            )
        })
        .collect()
}

#[test]
fn a_compiled_pipeline_runs_with_outputs_conditions_retries_and_its_secret() {
    let s = ArgoStandIn::start();
    let c = compiled(
        &[
        "  - name: make\n    script: 'printf db-7 > \"$GANTRY_OUTPUTS/id\"'\n    outputs: [id]\n",
        "  - name: check-secret\n    script: '[ \"$T\" = \"$COPY\" ] && echo \"secret ok, auth=$AUTH\"'\n    env: {T: '{{secrets.token}}', COPY: '{{secrets.copy}}', AUTH: 'Bearer {{secrets.token}}'}\n",
        "  - name: skip-me\n    when: '{{steps.make.outputs.id}} == other'\n    script: 'exit 1'\n",
        "  - name: flaky\n    script: 'n=$(cat \"$GANTRY_WORKSPACE/n\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$GANTRY_WORKSPACE/n\"; [ $n -ge 2 ]'\n    retry: {limit: 2, backoff: 1s}\n",
        "  - name: tolerated\n    script: 'exit 3'\n    continueOn: {failed: true}\n",
        "  - name: use\n    script: 'echo \"got $ID\"'\n    env: {ID: '{{steps.make.outputs.id}}'}\n",
        ]
        .concat(),
        &["token", "copy"],
    );
    let values = BTreeMap::from([
        ("token".to_string(), "s3cr3t".to_string()),
        ("copy".to_string(), "s3cr3t".to_string()),
    ]);
    let name = submit(&s, &c, &values);
    assert!(name.starts_with("gantry-stand-in-"), "{name}");
    let wf = wait_finished(&s, NS, &name, Duration::from_secs(60));
    assert_eq!(wf["status"]["phase"], "Succeeded", "{wf:#}");
    let t = tasks(&wf);
    assert_eq!(t["make"]["phase"], "Succeeded");
    assert_eq!(t["make"]["outputs"]["parameters"][0]["value"], "db-7");
    assert_eq!(t["check-secret"]["phase"], "Succeeded", "{wf:#}");
    assert_eq!(t["skip-me"]["phase"], "Skipped");
    assert_eq!(t["flaky"]["type"], "Retry");
    assert_eq!(t["flaky"]["phase"], "Succeeded");
    assert_eq!(t["flaky"]["children"].as_array().map(Vec::len), Some(2));
    assert_eq!(t["tolerated"]["phase"], "Failed");
    assert_eq!(t["tolerated"]["outputs"]["exitCode"], "3");
    assert_eq!(t["use"]["phase"], "Succeeded");
    // No secret value in the Workflow object.
    assert!(!wf.to_string().contains("s3cr3t"));

    // Logs, as server-sent events of `{"result": {"podName", "content"}}`.
    let text = client()
        .get(format!("{}/api/v1/workflows/{NS}/{name}/log", s.url()))
        .query(&[("logOptions.container", "main")])
        .bearer_auth(TOKEN)
        .header("Accept", "text/event-stream")
        .send()
        .expect("logs")
        .text()
        .expect("text");
    let entries: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).expect("json")["result"].clone())
        .collect();
    let contents: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert!(contents.contains(&"got db-7"), "{contents:?}");
    assert!(
        contents.contains(&"secret ok, auth=Bearer s3cr3t"),
        "the hidden variable expands: {contents:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["podName"].as_str().is_some_and(|p| p.starts_with(&name)))
    );

    // Listed by Gantry's label.
    let (status, list) = get(
        &s,
        &format!(
            "/api/v1/workflows/{NS}?listOptions.labelSelector=gantry.dev/run-id%3D01TESTRUN0000000000000000A"
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let (_, none) = get(
        &s,
        &format!("/api/v1/workflows/{NS}?listOptions.labelSelector=gantry.dev/run-id%3Dother"),
    );
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0));
}

#[test]
fn failures_stop_dependents_and_deadlines_fail_the_step() {
    let s = ArgoStandIn::start();
    let c = compiled(
        "  - name: slow\n    script: 'sleep 30'\n    timeout: 1s\n  - name: after\n    script: 'echo never'\n",
        &[],
    );
    let name = submit(&s, &c, &BTreeMap::new());
    let wf = wait_finished(&s, NS, &name, Duration::from_secs(30));
    assert_eq!(wf["status"]["phase"], "Failed");
    let t = tasks(&wf);
    assert_eq!(t["slow"]["phase"], "Failed");
    assert_eq!(
        t["slow"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    assert!(
        !t.contains_key("after"),
        "a dependent of a failed task has no node: {t:?}"
    );
    assert_eq!(
        wf["metadata"]["labels"]["workflows.argoproj.io/completed"],
        "true"
    );
}

#[test]
fn the_api_answers_conflicts_bad_objects_unknown_names_and_missing_tokens_as_argo_does() {
    let s = ArgoStandIn::start();
    let c = compiled("  - {name: a, script: 'sleep 5'}\n", &[]);
    let name = submit(&s, &c, &BTreeMap::new());
    let mut again = c.workflow.clone();
    again["metadata"]["name"] = json!(name);
    let (status, body) = post(
        &s,
        &format!("/api/v1/workflows/{NS}"),
        &json!({"workflow": again}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("already exists")
    );
    assert_eq!(body["code"], 6);

    let mut bad = c.workflow.clone();
    bad["spec"]["entrypoint"] = json!("nowhere");
    let (status, body) = post(
        &s,
        &format!("/api/v1/workflows/{NS}"),
        &json!({"workflow": bad}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 3);

    let (status, body) = get(&s, &format!("/api/v1/workflows/{NS}/no-such-workflow"));
    assert_eq!(status, 404);
    assert_eq!(body["code"], 5);

    let r = client()
        .get(format!("{}/api/v1/workflows/{NS}/{name}", s.url()))
        .send()
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);

    s.fail_next(1);
    let (status, body) = get(&s, &format!("/api/v1/workflows/{NS}/{name}"));
    assert_eq!(status, 503, "{body}");
    let (status, _) = get(&s, &format!("/api/v1/workflows/{NS}/{name}"));
    assert_eq!(status, 200);
}

#[test]
fn events_follow_a_workflow_terminate_stops_it_and_delete_takes_its_secret() {
    let s = ArgoStandIn::start();
    let c = compiled(
        "  - {name: long, script: 'echo started; sleep 30'}\n  - {name: b, script: 'true', env: {T: '{{secrets.token}}'}}\n",
        &["token"],
    );
    let values = BTreeMap::from([("token".to_string(), "t".to_string())]);
    let name = submit(&s, &c, &values);
    let wf = s.workflow(NS, &name).expect("stored");

    // The run's Secret, owned by the Workflow.
    let patch = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "name": name, "uid": wf["metadata"]["uid"],
    }]}});
    let r = client()
        .patch(format!(
            "{}/api/v1/namespaces/{NS}/secrets/{}",
            s.url(),
            c.secret_name
        ))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .expect("patch");
    assert_eq!(r.status().as_u16(), 200);

    let response = client()
        .get(format!("{}/api/v1/workflow-events/{NS}", s.url()))
        .query(&[("listOptions.fieldSelector", format!("metadata.name={name}"))])
        .bearer_auth(TOKEN)
        .header("Accept", "text/event-stream")
        .send()
        .expect("events");
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let mut lines = BufReader::new(response).lines();
    let mut next_event = || loop {
        let line = lines.next().expect("an event").expect("a line");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str::<Value>(data).expect("json")["result"].clone();
        }
    };
    let mut e = next_event();
    assert_eq!(e["type"], "ADDED");
    // Wait until the long step runs (maybe already in the first event), then terminate.
    loop {
        if e["object"]["status"]["nodes"].as_object().is_some_and(|n| {
            n.values()
                .any(|n| n["displayName"] == "long" && n["phase"] == "Running")
        }) {
            break;
        }
        e = next_event();
    }
    let r = client()
        .put(format!(
            "{}/api/v1/workflows/{NS}/{name}/terminate",
            s.url()
        ))
        .bearer_auth(TOKEN)
        .json(&json!({"name": name, "namespace": NS}))
        .send()
        .expect("terminate");
    assert_eq!(r.status().as_u16(), 200);
    let last = loop {
        let e = next_event();
        if !e["object"]["status"]["finishedAt"].is_null() {
            break e;
        }
    };
    assert_eq!(last["object"]["status"]["phase"], "Failed");
    assert_eq!(
        last["object"]["status"]["message"],
        "Stopped with strategy 'Terminate'"
    );

    assert!(s.secret(NS, &c.secret_name).is_some());
    let r = client()
        .delete(format!("{}/api/v1/workflows/{NS}/{name}", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(next_event()["type"], "DELETED");
    assert!(
        s.secret(NS, &c.secret_name).is_none(),
        "the owned Secret goes with it"
    );
    assert!(s.workflow(NS, &name).is_none());
}

/// A stream that ends without a final event, for clients that must read the Workflow again and
/// follow anew; logs served slowly still arrive whole.
#[test]
fn faults_cut_event_streams_and_slow_logs_down() {
    let s = ArgoStandIn::start();
    let c = compiled("  - {name: a, script: 'echo one; echo two'}\n", &[]);
    let name = submit(&s, &c, &BTreeMap::new());
    wait_finished(&s, NS, &name, Duration::from_secs(30));
    s.cut_event_streams_after(Some(1));
    let text = client()
        .get(format!("{}/api/v1/workflow-events/{NS}", s.url()))
        .query(&[("listOptions.fieldSelector", format!("metadata.name={name}"))])
        .bearer_auth(TOKEN)
        .send()
        .expect("events")
        .text()
        .expect("the stream ends");
    let events: Vec<&str> = text.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(events.len(), 1, "{text}");

    s.slow_logs(Duration::from_millis(20));
    let text = client()
        .get(format!("{}/api/v1/workflows/{NS}/{name}/log", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .expect("logs")
        .text()
        .expect("text");
    let contents: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).expect("json")["result"]["content"].to_string())
        .collect();
    assert_eq!(contents, ["\"one\"", "\"two\""]);
}

/// `gantry bench argo` runs against an Argo Server (here the stand-in) and prints its figures
/// with the bare watcher's as the baseline.
#[test]
fn the_argo_benchmark_runs_and_prints_a_ratio() {
    let s = ArgoStandIn::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["bench", "argo", "--server", &s.url(), "--namespace", NS])
        .args(["--steps", "3", "--runs", "2"])
        .env("ARGO_TOKEN", TOKEN)
        .output()
        .expect("gantry runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "submit → first step running",
        "node finishedAt → gantry step record",
        "node finishedAt → bare watcher (baseline)",
        "ratio (p50, gantry / bare watcher):",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(text.contains("(6 samples)"), "every step measured: {text}");
    // The figures, for `cargo test -- --nocapture`.
    eprintln!("{text}");
}
