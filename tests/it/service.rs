//! `gantry serve` as a whole: the real binary over HTTP, fed by real `git push`es to a
//! `git daemon`, with the catalog, the schedules, the queue, the API and the CLI as a client.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::git::{Remote, free_port};
use crate::support::server::{GantryServer, RepoSpec, ServerConfig, TOKEN, json as parse};

/// How long anything asynchronous (a sync, a run) gets before a test gives up.
const WAIT: Duration = Duration::from_secs(40);

/// A pipeline named `name` with top-level YAML `extra` (whole lines) and one step `main` running
/// `script` (one or more lines).
fn pipeline(name: &str, extra: &str, script: &str) -> String {
    let body: String = script.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\n{extra}steps:\n  \
         - name: main\n    script: |\n{body}"
    )
}

fn repo_server(remote: &Remote) -> GantryServer {
    GantryServer::start(ServerConfig::new().repo(RepoSpec::new("infra", &remote.url())))
}

fn pipelines(s: &GantryServer) -> Vec<Value> {
    let list = s.get_json("/api/v1/pipelines");
    s.conforms("PipelineList", &list);
    list["pipelines"]
        .as_array()
        .expect("a pipelines array")
        .clone()
}

fn find(s: &GantryServer, source: &str, name: &str) -> Option<Value> {
    pipelines(s)
        .into_iter()
        .find(|p| p["source"] == source && p["name"] == name)
}

/// Waits until `source/name` is listed and `ready` holds for it; returns it.
fn wait_pipeline(
    s: &GantryServer,
    source: &str,
    name: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let mut found = None;
    s.wait_until(&format!("{source}/{name}: {what}"), WAIT, || {
        found = find(s, source, name).filter(|p| ready(p));
        found.is_some()
    });
    found.expect("found")
}

/// Wakes the sync loop of `source` (202).
fn sync(s: &GantryServer, source: &str) {
    let (status, body) = s.request(
        "POST",
        &format!("/api/v1/sources/{source}/sync"),
        Some(s.token()),
        None,
    );
    assert_eq!(status, 202, "{body}");
}

fn put_local(s: &GantryServer, name: &str, text: &str) -> Value {
    let (status, body) = s.put_text(&format!("/api/v1/pipelines/local/{name}"), text);
    assert!(
        status == 200 || status == 201,
        "PUT {name}: {status} {body}"
    );
    let applied = parse(&body);
    s.conforms("AppliedPipeline", &applied);
    applied
}

fn post_run(s: &GantryServer, pipeline: &str, params: Value) -> (u16, String) {
    s.post_json(
        &format!("/api/v1/pipelines/{pipeline}/runs"),
        &json!({ "parameters": params }),
    )
}

/// Starts a run (201) and returns it.
fn start(s: &GantryServer, pipeline: &str, params: Value) -> Value {
    let (status, body) = post_run(s, pipeline, params);
    assert_eq!(status, 201, "POST runs of {pipeline}: {body}");
    let run = parse(&body);
    s.conforms("Run", &run);
    run
}

fn get_run(s: &GantryServer, id: &str) -> Value {
    let run = s.get_json(&format!("/api/v1/runs/{id}"));
    s.conforms("RunDetail", &run);
    run
}

/// Waits until the run `id` has the status `want`; returns it.
fn wait_status(s: &GantryServer, id: &str, want: &str) -> Value {
    let mut run = Value::Null;
    s.wait_until(&format!("run {id} {want}"), WAIT, || {
        run = get_run(s, id);
        run["status"] == want
    });
    run
}

/// Waits until the run `id` is neither queued nor running; returns it.
fn wait_ended(s: &GantryServer, id: &str) -> Value {
    let mut run = Value::Null;
    s.wait_until(&format!("run {id} to end"), WAIT, || {
        run = get_run(s, id);
        !(run["status"] == "queued" || run["status"] == "running")
    });
    run
}

fn runs(s: &GantryServer, query: &str) -> Vec<Value> {
    s.get_json(&format!("/api/v1/runs{query}"))["runs"]
        .as_array()
        .expect("a runs array")
        .clone()
}

fn id(run: &Value) -> String {
    run["id"].as_str().expect("a run id").to_owned()
}

fn error_of(body: &str) -> String {
    parse(body)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_owned()
}

#[test]
fn the_first_sync_lists_every_file_and_a_push_makes_a_new_version() {
    let remote = Remote::new();
    remote.write("alpha.yaml", &pipeline("alpha", "", "echo alpha-one"));
    remote.write("beta.yml", &pipeline("beta", "", "echo beta"));
    let first = remote.repo.commit_and_push("two pipelines");
    let s = repo_server(&remote);

    for name in ["alpha", "beta"] {
        let p = wait_pipeline(&s, "infra", name, "synced", |p| p["version"] == 1);
        assert_eq!(p["valid"], true, "{p}");
        assert_eq!(p["retired"], false, "{p}");
        assert_eq!(p["commit"], first.as_str(), "{p}");
        assert_eq!(p["errors"], json!([]), "{p}");
    }
    // Synced once: ready.
    s.wait_until("/readyz says ready", WAIT, || {
        s.get_without_token("/readyz").0 == 200
    });
    assert_eq!(pipelines(&s).len(), 2);

    remote.write("alpha.yaml", &pipeline("alpha", "", "echo alpha-two"));
    let second = remote.repo.commit_and_push("change alpha");
    sync(&s, "infra");
    let alpha = wait_pipeline(&s, "infra", "alpha", "version 2", |p| p["version"] == 2);
    assert_eq!(alpha["commit"], second.as_str(), "{alpha}");
    assert_eq!(alpha["valid"], true, "{alpha}");
    let beta = find(&s, "infra", "beta").expect("beta");
    assert_eq!(
        beta["version"], 1,
        "an unchanged file keeps its version: {beta}"
    );

    let detail = s.get_json("/api/v1/pipelines/infra/alpha");
    s.conforms("PipelineDetail", &detail);
    assert!(
        detail["spec"]
            .as_str()
            .is_some_and(|t| t.contains("alpha-two")),
        "{detail}"
    );
    assert_eq!(detail["versions"].as_array().map(Vec::len), Some(2));

    let run = start(&s, "infra/alpha", json!({}));
    assert_eq!(run["version"], 2, "{run}");
    assert_eq!(run["git"]["sha"], second.as_str(), "{run}");
    let done = wait_ended(&s, &id(&run));
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, log) = s.get(&format!("/api/v1/runs/{}/logs", id(&run)));
    assert!(log.contains("alpha-two"), "{log}");
}

#[test]
fn an_invalid_push_keeps_the_last_good_version_and_shows_located_errors() {
    let remote = Remote::new();
    let good = pipeline("alpha", "", "echo good");
    remote.write("alpha.yaml", &good);
    let first = remote.repo.commit_and_push("good");
    let s = repo_server(&remote);
    wait_pipeline(&s, "infra", "alpha", "version 1", |p| p["version"] == 1);

    remote.write("alpha.yaml", &good.replace("steps:", "stpes:"));
    let broken = remote.repo.commit_and_push("misspelt");
    sync(&s, "infra");
    let p = wait_pipeline(&s, "infra", "alpha", "invalid", |p| p["valid"] == false);
    assert_eq!(p["version"], 1, "the last good version stays: {p}");
    // `commit` is the commit the definition was last read at; version 1 stays pinned to `first`.
    assert_eq!(p["commit"], broken.as_str(), "{p}");
    let versions = s.get_json("/api/v1/pipelines/infra/alpha")["versions"].clone();
    assert_eq!(
        versions,
        json!([{"version": 1, "commit": first, "path": ".gantry/pipelines/alpha.yaml", "created_at": versions[0]["created_at"]}])
    );
    assert_eq!(p["retired"], false, "{p}");
    let errors = p["errors"].as_array().expect("errors");
    assert!(!errors.is_empty(), "{p}");
    let e = &errors[0];
    let path = e["path"].as_str().expect("path");
    let line = e["line"].as_u64().expect("line");
    let column = e["column"].as_u64().expect("column");
    let message = e["message"].as_str().expect("message");
    assert_eq!(path, ".gantry/pipelines/alpha.yaml", "{e}");
    assert!(line >= 1 && column >= 1, "{e}");
    let text = e["text"].as_str().expect("text");
    assert!(
        text.starts_with(&format!("{path}:{line}:{column}: ")) && text.contains(message),
        "{e}"
    );
    assert!(
        errors.iter().any(
            |e| e["message"].as_str().is_some_and(|m| m.contains("stpes"))
                && e["line"] == 5
                && e["column"] == 1
        ),
        "the misspelt key is reported at 5:1: {p}"
    );
    // The pipeline's page shows the file as read, the error under its line, and the dashboard
    // lists the definition among what needs attention.
    let mut page_user = crate::ui::Browser::new(&s);
    page_user.login(s.token());
    let page = page_user.get("/pipelines/infra/alpha");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r##"<span class="ln bad" id="E5"><a href="#E5">5</a>stpes:</span>"##),
        "{}",
        page.body
    );
    assert!(page.body.contains("^ column 1: "), "{}", page.body);
    let dashboard = page_user.get("/");
    assert!(
        dashboard.body.contains("invalid definition"),
        "{}",
        dashboard.body
    );

    let run = start(&s, "infra/alpha", json!({}));
    assert_eq!(run["version"], 1, "{run}");
    let done = wait_ended(&s, &id(&run));
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[test]
fn a_deleted_file_retires_its_pipeline_and_keeps_its_runs() {
    let remote = Remote::new();
    remote.write("alpha.yaml", &pipeline("alpha", "", "echo alpha"));
    remote.write("beta.yaml", &pipeline("beta", "", "echo beta"));
    remote.repo.commit_and_push("two");
    let s = repo_server(&remote);
    wait_pipeline(&s, "infra", "alpha", "version 1", |p| p["version"] == 1);
    let run = start(&s, "infra/alpha", json!({}));
    wait_ended(&s, &id(&run));

    remote.remove("alpha.yaml");
    remote.repo.commit_and_push("remove alpha");
    sync(&s, "infra");
    let alpha = wait_pipeline(&s, "infra", "alpha", "retired", |p| p["retired"] == true);
    assert_eq!(alpha["version"], 1, "{alpha}");
    let beta = find(&s, "infra", "beta").expect("beta");
    assert_eq!(beta["retired"], false, "{beta}");

    let listed = runs(&s, "?pipeline=infra/alpha");
    assert!(listed.iter().any(|r| r["id"] == run["id"]), "{listed:?}");
    assert_eq!(get_run(&s, &id(&run))["status"], "succeeded");
    let (status, body) = post_run(&s, "infra/alpha", json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(error_of(&body).contains("retired"), "{body}");
    let (status, body) = s.request(
        "POST",
        &format!("/api/v1/runs/{}/rerun", id(&run)),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 409, "rerun of a retired pipeline: {body}");
}

#[test]
fn an_unreachable_repository_does_not_block_the_others() {
    let remote = Remote::new();
    remote.write("alpha.yaml", &pipeline("alpha", "", "echo alpha"));
    let head = remote.repo.commit_and_push("one");
    let nobody = format!("git://127.0.0.1:{}/x.git", free_port());
    let s = GantryServer::start(
        ServerConfig::new()
            .repo(RepoSpec::new("broken", &nobody))
            .repo(RepoSpec::new("infra", &remote.url())),
    );
    wait_pipeline(&s, "infra", "alpha", "synced", |p| p["version"] == 1);
    let mut sources = Value::Null;
    // The pipelines of `infra` are stored before its source state: wait for both sources.
    s.wait_until(
        "a sync error on `broken` and a head on `infra`",
        WAIT,
        || {
            sources = s.get_json("/api/v1/sources");
            s.conforms("SourceList", &sources);
            let list = sources["sources"].as_array().expect("sources");
            list.iter()
                .any(|x| x["name"] == "broken" && x["error"].is_string())
                && list
                    .iter()
                    .any(|x| x["name"] == "infra" && !x["head"].is_null())
        },
    );
    let list = sources["sources"].as_array().expect("sources");
    let good = list.iter().find(|x| x["name"] == "infra").expect("infra");
    assert!(good["error"].is_null(), "{sources}");
    assert_eq!(good["head"], head.as_str(), "{sources}");
    let bad = list.iter().find(|x| x["name"] == "broken").expect("broken");
    assert!(bad["head"].is_null(), "{sources}");
}

#[test]
fn a_restart_keeps_pipelines_versions_and_runs() {
    let remote = Remote::new();
    remote.write("alpha.yaml", &pipeline("alpha", "", "echo alpha"));
    remote.repo.commit_and_push("one");
    let mut s = repo_server(&remote);
    wait_pipeline(&s, "infra", "alpha", "synced", |p| p["version"] == 1);
    put_local(&s, "hello", &pipeline("hello", "", "echo one"));
    put_local(&s, "hello", &pipeline("hello", "", "echo two"));
    let a = start(&s, "infra/alpha", json!({}));
    let b = start(&s, "local/hello", json!({}));
    wait_ended(&s, &id(&a));
    wait_ended(&s, &id(&b));

    let key = |p: &Value| {
        json!([
            p["source"],
            p["name"],
            p["version"],
            p["commit"],
            p["valid"],
            p["retired"]
        ])
    };
    let run_key = |r: &Value| {
        json!([
            r["id"],
            r["number"],
            r["status"],
            r["version"],
            r["parameters"],
            r["git"]
        ])
    };
    let before: Vec<Value> = pipelines(&s).iter().map(key).collect();
    let runs_before: Vec<Value> = runs(&s, "").iter().map(run_key).collect();
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(runs_before.len(), 2, "{runs_before:?}");

    let exit = s.stop();
    assert!(exit.success(), "SIGTERM ends gantry serve cleanly: {exit}");
    s.restart();
    let after: Vec<Value> = pipelines(&s).iter().map(key).collect();
    let runs_after: Vec<Value> = runs(&s, "").iter().map(run_key).collect();
    assert_eq!(after, before);
    assert_eq!(runs_after, runs_before);
    let hello = s.get_json("/api/v1/pipelines/local/hello");
    assert_eq!(hello["version"], 2, "{hello}");
    assert_eq!(hello["versions"].as_array().map(Vec::len), Some(2));
    let again = start(&s, "local/hello", json!({}));
    assert_eq!(again["number"], 2, "run numbers continue: {again}");
}

/// The schedule-triggered runs of `local/NAME`, oldest first, with their `created_at`.
fn scheduled(s: &GantryServer, name: &str) -> Vec<Value> {
    let mut list: Vec<Value> = runs(s, &format!("?pipeline=local/{name}&limit=1000"))
        .into_iter()
        .filter(|r| r["trigger"]["kind"] == "schedule")
        .collect();
    list.reverse();
    list
}

/// The whole second of each run's `created_at` (RFC 3339 up to the seconds).
fn seconds(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|r| {
            let at = r["created_at"].as_str().expect("created_at");
            at.get(..19).expect("an RFC 3339 time").to_owned()
        })
        .collect()
}

fn assert_one_run_per_tick(list: &[Value]) {
    let secs = seconds(list);
    let distinct: BTreeSet<&String> = secs.iter().collect();
    assert_eq!(distinct.len(), secs.len(), "a tick fired twice: {secs:?}");
    let ticks: Vec<&str> = list
        .iter()
        .map(|r| r["trigger"]["detail"].as_str().unwrap_or(""))
        .collect();
    let distinct: BTreeSet<&&str> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
}

#[test]
fn a_per_second_schedule_fires_once_per_tick_also_across_a_restart() {
    let mut s = GantryServer::start(ServerConfig::new());
    let text = pipeline(
        "ticker",
        "on:\n  schedule:\n    - cron: \"* * * * * *\"\n",
        "true",
    );
    put_local(&s, "ticker", &text);
    s.wait_until("a first scheduled run", WAIT, || {
        !scheduled(&s, "ticker").is_empty()
    });
    // Counting what a few seconds bring is the point here, so this sleep is the measurement.
    std::thread::sleep(Duration::from_millis(3500));
    let list = scheduled(&s, "ticker");
    assert!(
        (2..=6).contains(&list.len()),
        "about one run per second in ~3.5 s: {:?}",
        seconds(&list)
    );
    assert_one_run_per_tick(&list);
    for r in &list {
        let detail = r["trigger"]["detail"].as_str().unwrap_or("");
        assert!(
            detail.starts_with("cron * * * * * *, tick at "),
            "a run of this schedule names its tick: {r}"
        );
    }

    let before = scheduled(&s, "ticker").len();
    s.stop();
    s.restart();
    s.wait_until("two more scheduled runs after the restart", WAIT, || {
        scheduled(&s, "ticker").len() >= before + 3
    });
    let list = scheduled(&s, "ticker");
    assert_one_run_per_tick(&list);
    // Stop ticking so the server does not keep working while it is torn down.
    let (status, body) = s.delete("/api/v1/pipelines/local/ticker");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_skip_policy_records_the_second_run_as_skipped() {
    let s = GantryServer::start(ServerConfig::new());
    let extra = "concurrency: {group: g, policy: skip}\n";
    put_local(&s, "busy", &pipeline("busy", extra, "sleep 2"));
    let first = start(&s, "local/busy", json!({}));
    wait_status(&s, &id(&first), "running");
    let second = start(&s, "local/busy", json!({}));
    assert_eq!(second["status"], "skipped", "{second}");
    let done = wait_ended(&s, &id(&first));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(get_run(&s, &id(&second))["status"], "skipped");
}

#[test]
fn a_cancel_running_policy_stops_the_running_run_for_the_new_one() {
    let s = GantryServer::start(ServerConfig::new());
    let extra = "concurrency: {group: g, policy: cancel-running}\nparameters:\n  - name: secs\n    \
                 type: integer\n    default: 30\n";
    let text = format!(
        "{}    env:\n      SECS: \"{{{{params.secs}}}}\"\n",
        pipeline("latest", extra, "sleep \"$SECS\"")
    );
    put_local(&s, "latest", &text);
    let first = start(&s, "local/latest", json!({}));
    wait_status(&s, &id(&first), "running");
    let second = start(&s, "local/latest", json!({"secs": 1}));
    let old = wait_ended(&s, &id(&first));
    assert_eq!(old["status"], "cancelled", "{old}");
    let new = wait_ended(&s, &id(&second));
    assert_eq!(new["status"], "succeeded", "{new}");
}

#[test]
fn the_api_wants_a_bearer_token_except_for_health_and_the_document() {
    let s = GantryServer::start(ServerConfig::new());
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("{}/api/v1/pipelines", s.url());
    for token in [None, Some("not-the-token")] {
        let mut request = client.get(&url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().expect("GET pipelines");
        assert_eq!(response.status().as_u16(), 401, "token {token:?}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge:?}");
        let body = response.text().expect("body");
        assert!(!error_of(&body).is_empty());
    }
    let (status, body) = s.get_without_token("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get_without_token("/api/v1/openapi.json");
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get("/api/v1/pipelines");
    assert_eq!(status, 200);
}

#[test]
fn every_endpoint_answers_its_happy_path_and_its_error_codes() {
    let s = GantryServer::start(ServerConfig::new());

    // The document names every route of the table.
    let (status, doc) = s.get_without_token("/api/v1/openapi.json");
    assert_eq!(status, 200);
    let doc = parse(&doc);
    for route in gantry::server::api::ROUTES {
        assert!(
            doc["paths"][route.path][route.method].is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
    }
    assert!(doc["paths"]["/api/v1/runs/{id}/logs"]["get"].is_object());

    // Local pipelines: create, unchanged, invalid, not local.
    let params = "parameters:\n  - name: count\n    type: integer\n    default: 1\n";
    let script = "echo \"count=$COUNT\"\nprintf 'out-%s' \"$COUNT\" > \"$GANTRY_OUTPUTS/result\"";
    let text = format!(
        "{}    env:\n      COUNT: \"{{{{params.count}}}}\"\n    outputs: [result]\n",
        pipeline("counter", params, script)
    );
    let (status, body) = s.put_text("/api/v1/pipelines/local/counter", &text);
    assert_eq!(status, 201, "{body}");
    assert_eq!(parse(&body)["version"], 1, "{body}");
    let (status, body) = s.put_text("/api/v1/pipelines/local/counter", &text);
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["changed"], false, "{body}");
    let broken = pipeline("bad", "", "true").replace("steps:", "stpes:");
    let (status, body) = s.put_text("/api/v1/pipelines/local/bad", &broken);
    assert_eq!(status, 422, "{body}");
    assert!(error_of(&body).contains("local/bad:5:1:"), "{body}");
    let (status, body) = s.put_json(
        "/api/v1/pipelines/infra/x",
        &json!({ "spec": pipeline("x", "", "true") }),
    );
    assert_eq!(status, 400, "PUT on a repo source: {body}");
    let (status, body) = s.delete("/api/v1/pipelines/infra/x");
    assert_eq!(status, 400, "DELETE on a repo source: {body}");

    // Starting runs: bad parameters, unknown pipeline.
    let (status, body) = post_run(&s, "local/counter", json!({"count": "many"}));
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("count"), "{body}");
    let (status, body) = post_run(&s, "local/counter", json!({"bogus": 1}));
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("bogus"), "{body}");
    let (status, body) = post_run(&s, "local/nothing", json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.get("/api/v1/pipelines/local/nothing");
    assert_eq!(status, 404, "{body}");

    // Listing runs: bad filters.
    let (status, body) = s.get("/api/v1/runs?status=bogus");
    assert_eq!(status, 400, "{body}");
    s.conforms("Error", &parse(&body));
    assert!(error_of(&body).contains("bogus"), "{body}");
    let (status, body) = s.get("/api/v1/runs?limit=0");
    assert_eq!(status, 400, "{body}");
    let (status, body) = s.get("/api/v1/runs/doesnotexist");
    assert_eq!(status, 404, "{body}");

    // A run, its detail, a rerun, cancelling an ended run.
    let run = start(&s, "local/counter", json!({"count": 3}));
    let done = wait_ended(&s, &id(&run));
    assert_eq!(done["status"], "succeeded", "{done}");
    let steps = done["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{done}");
    assert!(done["outputs"].to_string().contains("out-3"), "{done}");
    let succeeded = runs(&s, "?status=succeeded&pipeline=local/counter");
    assert!(succeeded.iter().any(|r| r["id"] == run["id"]));
    let (status, body) = s.request(
        "POST",
        &format!("/api/v1/runs/{}/rerun", id(&run)),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 201, "{body}");
    let again = parse(&body);
    assert_ne!(again["id"], run["id"]);
    for field in ["parameters", "version", "git", "pipeline", "source"] {
        assert_eq!(again[field], done[field], "{field}: {again} vs {done}");
    }
    assert_eq!(wait_ended(&s, &id(&again))["status"], "succeeded");
    // Long ended by now (see `cancelling_a_just_ended_run_answers_409` for the moment after).
    let (status, body) = s.request(
        "POST",
        &format!("/api/v1/runs/{}/cancel", id(&run)),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 409, "cancel an ended run: {body}");

    // Cancelling a running run.
    put_local(&s, "slow", &pipeline("slow", "", "echo started\nsleep 30"));
    let slow = start(&s, "local/slow", json!({}));
    wait_status(&s, &id(&slow), "running");
    let (status, body) = s.request(
        "POST",
        &format!("/api/v1/runs/{}/cancel", id(&slow)),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(wait_ended(&s, &id(&slow))["status"], "cancelled");

    // Variables, global and per pipeline.
    let value = |v: &str| json!({ "value": v });
    let (status, body) = s.put_json("/api/v1/variables/greeting", &value("hi"));
    assert_eq!(status, 204, "{body}");
    let (status, body) = s.put_json("/api/v1/variables/1bad", &value("x"));
    assert_eq!(status, 400, "{body}");
    let scoped = "/api/v1/pipelines/local/counter/variables/greeting";
    let (status, body) = s.put_json(scoped, &value("hello"));
    assert_eq!(status, 204, "{body}");
    s.conforms("VariableList", &s.get_json("/api/v1/variables"));
    let vars = s.get_json("/api/v1/variables").to_string();
    assert!(vars.contains("hello") && vars.contains("hi"), "{vars}");
    assert_eq!(s.delete(scoped).0, 204);
    assert_eq!(s.delete(scoped).0, 404);
    assert_eq!(s.delete("/api/v1/variables/greeting").0, 204);
    let (status, body) = s.delete("/api/v1/variables/greeting");
    assert_eq!(status, 404, "{body}");

    // Secrets: write-only, masked in logs.
    let secret = "s3cr3t-value-8f2a";
    let (status, body) = s.put_json("/api/v1/secrets/api_token", &value(secret));
    assert_eq!(status, 204, "{body}");
    let scoped_secret = "/api/v1/pipelines/local/leaky/secrets/other";
    assert_eq!(s.put_json(scoped_secret, &value("other-secret-77")).0, 204);
    s.conforms("SecretList", &s.get_json("/api/v1/secrets"));
    let listed = s.get_json("/api/v1/secrets").to_string();
    assert!(listed.contains("api_token"), "{listed}");
    assert!(
        !listed.contains(secret) && !listed.contains("other-secret-77"),
        "{listed}"
    );
    let leaky = format!(
        "{}    env:\n      TOKEN: \"{{{{secrets.api_token}}}}\"\n",
        pipeline("leaky", "secrets: [api_token]\n", "echo \"token=$TOKEN\"")
    );
    put_local(&s, "leaky", &leaky);
    let run = start(&s, "local/leaky", json!({}));
    assert_eq!(wait_ended(&s, &id(&run))["status"], "succeeded");
    let (status, log) = s.get(&format!("/api/v1/runs/{}/logs", id(&run)));
    assert_eq!(status, 200);
    assert!(log.contains("token=***"), "{log}");
    assert!(!log.contains(secret), "{log}");
    assert_eq!(s.delete(scoped_secret).0, 204);
    assert_eq!(s.delete(scoped_secret).0, 404);
    assert_eq!(s.delete("/api/v1/secrets/api_token").0, 204);
    assert_eq!(s.delete("/api/v1/secrets/api_token").0, 404);

    // Rollback: a new version with the old text.
    let v1 = pipeline("history", "", "echo first");
    let v2 = pipeline("history", "", "echo second");
    put_local(&s, "history", &v1);
    assert_eq!(put_local(&s, "history", &v2)["version"], 2);
    let (status, body) = s.post_json(
        "/api/v1/pipelines/local/history/rollback",
        &json!({"to": 1}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["version"], 3, "{body}");
    s.conforms("Pipeline", &parse(&body));
    let detail = s.get_json("/api/v1/pipelines/local/history");
    s.conforms("PipelineDetail", &detail);
    assert_eq!(detail["spec"], v1.as_str(), "{detail}");
    let (status, body) = s.post_json(
        "/api/v1/pipelines/local/history/rollback",
        &json!({"to": 9}),
    );
    assert_eq!(status, 404, "rollback to a missing version: {body}");

    // Deleting a local pipeline retires it.
    let (status, body) = s.delete("/api/v1/pipelines/local/history");
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["retired"], true, "{body}");
    let (status, body) = post_run(&s, "local/history", json!({}));
    assert_eq!(status, 409, "{body}");
    let (status, body) = s.delete("/api/v1/pipelines/local/nothing");
    assert_eq!(status, 404, "{body}");

    // Sources: none configured here.
    let (status, body) = s.request("POST", "/api/v1/sources/nope/sync", Some(TOKEN), None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(s.get_json("/api/v1/sources")["sources"], json!([]));
}

/// Runs `gantry serve` on `config` until it exits (it must refuse within the timeout); returns
/// its exit code and what it printed on stderr.
fn serve_refusal(config: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, config).expect("write the config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("GANTRY_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gantry starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("gantry serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_refuses_to_start_without_a_token_unless_told_and_then_only_on_loopback() {
    let data = tempfile::tempdir().expect("tempdir");
    let tokenless = ServerConfig {
        tokens: Vec::new(),
        ..ServerConfig::new()
    };
    let port = free_port();
    let config = tokenless.render(port, data.path());
    let (code, stderr) = serve_refusal(&config, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "refusing to start without an API token: anyone who can reach the API could run \
             pipelines and read their logs; add an [[auth.tokens]] entry, or pass \
             --insecure-no-auth to serve without one on a loopback address"
        ),
        "{stderr}"
    );
    let everywhere = config.replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"0.0.0.0:{port}\""),
    );
    let (code, stderr) = serve_refusal(&everywhere, &["--insecure-no-auth"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");

    // Told, on loopback: it serves, and the API needs no token.
    let s = GantryServer::start(ServerConfig::new().without_tokens());
    let (status, body) = s.get_without_token("/api/v1/runs");
    assert_eq!(status, 200, "{body}");
    assert!(
        s.logs()
            .contains("gantry: warning: serving without an API token (--insecure-no-auth)"),
        "{}",
        s.logs()
    );
    // Without a token nothing else stops a page that rebinds its name to this address: reads
    // naming another Host, or coming from another Origin, are refused too.
    let (status, body) = s.request_with(
        "GET",
        "/api/v1/runs",
        &[("host".to_owned(), "rebound.example:8080".to_owned())],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    let (status, body) = s.request_with(
        "GET",
        "/api/v1/runs",
        &[("origin".to_owned(), "http://evil.example".to_owned())],
        None,
    );
    assert_eq!(status, 403, "{body}");
}

#[test]
fn state_changing_calls_need_json_and_this_servers_host_or_origin() {
    let s = GantryServer::start(ServerConfig::new());
    let bearer = ("authorization".to_owned(), format!("Bearer {TOKEN}"));
    let json_type = ("content-type".to_owned(), "application/json".to_owned());
    let value = br#"{"value": "x"}"#.to_vec();

    // A body without a content type, or with a type a form can send: 415, with the JSON error
    // shape. A call without a body may leave the type out.
    let (status, body) = s.request_with(
        "POST",
        "/api/v1/sources/nope/sync",
        std::slice::from_ref(&bearer),
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.request_with(
        "PUT",
        "/api/v1/variables/greeting",
        std::slice::from_ref(&bearer),
        Some(value.clone()),
    );
    assert_eq!(status, 415, "{body}");
    assert!(
        parse(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("needs `Content-Type: application/json`")),
        "{body}"
    );
    for form in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let (status, body) = s.request(
            "PUT",
            "/api/v1/variables/greeting",
            Some(TOKEN),
            Some((form, value.clone())),
        );
        assert_eq!(status, 415, "{form}: {body}");
    }
    assert_eq!(
        s.get_json("/api/v1/variables")["variables"],
        json!([]),
        "nothing was set"
    );

    // Another name for this server (DNS rebinding) or another site's page: 403.
    let foreign_host = ("host".to_owned(), format!("evil.example:{}", s.port()));
    let (status, body) = s.request_with(
        "PUT",
        "/api/v1/variables/greeting",
        &[bearer.clone(), json_type.clone(), foreign_host],
        Some(value.clone()),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    let foreign_origin = ("origin".to_owned(), "https://evil.example".to_owned());
    let (status, body) = s.request_with(
        "DELETE",
        "/api/v1/variables/greeting",
        &[bearer.clone(), json_type.clone(), foreign_origin],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(parse(&body)["error"].is_string(), "{body}");

    // JSON from this server's own page (its public_url, here loopback) is fine.
    let own_origin = ("origin".to_owned(), s.url());
    let (status, body) = s.request_with(
        "PUT",
        "/api/v1/variables/greeting",
        &[bearer.clone(), json_type.clone(), own_origin],
        Some(value.clone()),
    );
    assert_eq!(status, 204, "{body}");

    // Webhooks are not subject to it: they are checked by signature.
    let (status, body) = s.request_with(
        "POST",
        "/hooks/github",
        &[("content-type".to_owned(), "text/plain".to_owned())],
        Some(b"{}".to_vec()),
    );
    assert!(status != 415 && status != 403, "{status} {body}");
}

#[test]
fn the_server_prunes_ended_runs_past_the_retention_age_but_not_active_ones() {
    let s =
        GantryServer::start(ServerConfig::new().storage_toml("retention = \"2s\"\nkeep_runs = 1"));
    put_local(&s, "quick", &pipeline("quick", "", "echo quick"));
    put_local(&s, "slow", &pipeline("slow", "", "sleep 30"));
    let first = start(&s, "local/quick", json!({}));
    assert_eq!(wait_ended(&s, &id(&first))["status"], "succeeded");
    let second = start(&s, "local/quick", json!({}));
    assert_eq!(wait_ended(&s, &id(&second))["status"], "succeeded");
    // Two runs of `slow`: the older one is past the floor but running.
    let slow = start(&s, "local/slow", json!({}));
    start(&s, "local/slow", json!({}));
    // The older run of `quick` goes once it is past the age; the newest stays (the floor).
    s.wait_until("the older run to be pruned", WAIT, || {
        s.get(&format!("/api/v1/runs/{}", id(&first))).0 == 404
    });
    assert_eq!(s.get(&format!("/api/v1/runs/{}", id(&second))).0, 200);
    let (status, body) = s.get(&format!("/api/v1/runs/{}/logs", id(&first)));
    assert_eq!(status, 404, "{body}");
    // A running run is never pruned, whatever its age.
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = s.get(&format!("/api/v1/runs/{}", id(&slow)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["status"], "running", "{body}");
    assert!(
        s.logs().contains("gantry: retention: pruned 1 runs"),
        "{}",
        s.logs()
    );
}

/// A run stays in the queue's in-memory `running` map for a moment after its end is stored;
/// cancelling it in that window must still answer 409, as the API already shows it ended.
#[test]
fn cancelling_a_just_ended_run_answers_409() {
    let s = GantryServer::start(ServerConfig::new());
    put_local(&s, "quick", &pipeline("quick", "", "true"));
    let mut wrong = Vec::new();
    for _ in 0..40 {
        let run = start(&s, "local/quick", json!({}));
        let ended = wait_ended(&s, &id(&run));
        assert_eq!(ended["status"], "succeeded", "{ended}");
        let (status, body) = s.request(
            "POST",
            &format!("/api/v1/runs/{}/cancel", id(&run)),
            Some(TOKEN),
            None,
        );
        if status != 409 {
            wrong.push(format!("{status} {body}"));
        }
        let after = get_run(&s, &id(&run));
        assert_eq!(
            after["status"], "succeeded",
            "an ended run stays ended: {after}"
        );
    }
    assert!(
        wrong.is_empty(),
        "cancel of a run already shown as succeeded did not answer 409 in {} of 40 tries: {wrong:#?}",
        wrong.len()
    );
}

#[test]
fn a_followed_log_streams_lines_in_order_then_the_end() {
    let s = GantryServer::start(ServerConfig::new());
    let script = "for i in 1 2 3 4 5; do echo \"line $i\"; sleep 0.2; done";
    put_local(&s, "talker", &pipeline("talker", "", script));
    let run = start(&s, "local/talker", json!({}));
    let run_id = id(&run);

    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client");
    let response = client
        .get(format!("{}/api/v1/runs/{run_id}/logs?follow=true", s.url()))
        .bearer_auth(TOKEN)
        .send()
        .expect("GET logs?follow=true");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );

    // Read the stream as it arrives: (event, data) pairs until `end`.
    let mut events: Vec<(String, String)> = Vec::new();
    let mut event = String::new();
    let mut data = String::new();
    for line in BufReader::new(response).lines() {
        let line = line.expect("a line of the stream");
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            data = d.strip_prefix(' ').unwrap_or(d).to_owned();
        } else if line.is_empty() && !event.is_empty() {
            let done = event == "end";
            events.push((std::mem::take(&mut event), std::mem::take(&mut data)));
            if done {
                break;
            }
        }
    }
    let logs: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "log")
        .map(|(_, d)| d.as_str())
        .collect();
    let want: Vec<String> = (1..=5).map(|i| format!("[main] line {i}")).collect();
    assert_eq!(logs, want, "{events:?}");
    let (last, end) = events.last().expect("events");
    assert_eq!(last, "end", "{events:?}");
    assert_eq!(parse(end)["status"], "succeeded", "{end}");

    let (status, text) = s.get(&format!("/api/v1/runs/{run_id}/logs"));
    assert_eq!(status, 200);
    assert_eq!(text, want.join("\n") + "\n");
    let (status, text) = s.get(&format!("/api/v1/runs/{run_id}/logs?step=main"));
    assert_eq!(status, 200);
    let plain: String = (1..=5).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text, plain);
    let (status, body) = s.get(&format!("/api/v1/runs/{run_id}/logs?step=nope"));
    assert_eq!(status, 404, "{body}");
}

/// The CLI against a server, on a run that cannot start and one that fails: it says why, and
/// the hint it prints (setting what is missing through the server) works as printed.
#[test]
fn the_cli_says_why_a_server_run_failed_and_its_hint_works() {
    let s = GantryServer::start(ServerConfig::new());
    let extra = "variables: [region]\nsecrets: [api_key]\n";
    let text = format!(
        "{}    env:\n      REGION: \"{{{{vars.region}}}}\"\n      KEY: \"{{{{secrets.api_key}}}}\"\n",
        pipeline("needs", extra, "echo \"region $REGION key $KEY\"")
    );
    put_local(&s, "needs", &text);
    put_local(&s, "boom", &pipeline("boom", "", "echo going down\nexit 3"));
    let gantry = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["--server", &s.url(), "--token", TOKEN])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("GANTRY_SERVER")
            .env_remove("GANTRY_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the gantry binary runs");
        {
            use std::io::Write;
            let mut input = child.stdin.take().expect("stdin");
            input
                .write_all(stdin.unwrap_or("").as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("gantry ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };

    // Not started: exit 1, the reason, and a hint that names the server.
    let (code, stdout, stderr) = gantry(&["run", "local/needs"], None);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let hint = format!(
        "gantry --server {} vars set region VALUE --pipeline local/needs",
        s.url()
    );
    assert!(
        stderr.contains("not started: variable `region` not set") && stderr.contains(&hint),
        "{stderr}"
    );
    let run_id = id(&runs(&s, "?pipeline=local/needs")[0]);
    let (code, stdout, _) = gantry(&["runs"], None);
    assert_eq!(code, Some(0));
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&run_id))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("failed") && row.contains("not started"),
        "{row}"
    );
    let (code, stdout, stderr) = gantry(&["logs", &run_id[..10]], None);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("not started: variable `region`"),
        "{stderr}"
    );

    // The hint, as printed (the token comes from the environment in real use).
    let (code, _, stderr) = gantry(
        &["vars", "set", "region", "eu-1", "--pipeline", "local/needs"],
        None,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = gantry(
        &["secrets", "set", "api_key", "--pipeline", "local/needs"],
        Some("k3y-value-17\n"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, _) = gantry(&["vars", "list"], None);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("local/needs/region=eu-1"), "{stdout}");
    let (code, stdout, _) = gantry(&["secrets", "list", "--json"], None);
    assert_eq!(code, Some(0));
    let listed: Value = parse(&stdout);
    assert_eq!(listed[0]["name"], "api_key", "{stdout}");
    assert_eq!(listed[0]["pipeline"], "local/needs", "{stdout}");
    assert!(!stdout.contains("k3y-value-17"), "{stdout}");

    let (code, stdout, stderr) = gantry(&["run", "local/needs"], None);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("region eu-1 key ***"), "{stdout}");

    // A failing step: exit 1 and the run's own message.
    let (code, stdout, stderr) = gantry(&["run", "local/boom"], None);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let failed = &runs(&s, "?pipeline=local/boom")[0];
    let message = failed["message"].as_str().expect("a failed run says why");
    assert!(stderr.contains(message), "{message:?} in {stderr}");

    // Removing: once, then there is nothing left to remove (exit 1).
    let rm = ["vars", "rm", "region", "--pipeline", "local/needs"];
    assert_eq!(gantry(&rm, None).0, Some(0));
    let (code, _, stderr) = gantry(&rm, None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no variable `region`"), "{stderr}");
    let (code, _, stderr) = gantry(&["vars", "rm", "region", "--pipeline", "needs"], None);
    assert_eq!(code, Some(2), "a server scope is SOURCE/NAME: {stderr}");
}

/// README's lines after `gantry up`: `examples/hello.yaml` applied as a local pipeline and run,
/// with the server and token taken from the environment as README exports them.
#[test]
fn readme_s_server_example_applies_and_runs_examples_hello() {
    let s = GantryServer::start(ServerConfig::new());
    let gantry = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .env("GANTRY_SERVER", s.url())
            .env("GANTRY_TOKEN", TOKEN)
            .env("NO_COLOR", "1")
            .output()
            .expect("the gantry binary runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let (code, said) = gantry(&["pipeline", "apply", "-f", "examples/hello.yaml"]);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = gantry(&["run", "local/hello", "-p", "who=world"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("hello, world"), "{said}");
    let (code, said) = gantry(&["run", "local/hello", "-p", "who=$(id)"]);
    assert_eq!(
        code,
        Some(2),
        "a value outside the pattern is refused: {said}"
    );
}

/// A repository bound to an Argo executor: its runs become Workflows on the Argo stand-in, the
/// checkout fetches the run's commit from the repository's URL, and the run, its steps, its log
/// and its outputs come back as from a local run; the run records its executor and Workflow.
#[test]
fn a_repository_bound_to_argo_runs_its_pipelines_as_workflows() {
    let stand_in = crate::support::argo::ArgoStandIn::start();
    let remote = Remote::new();
    remote
        .repo
        .write("data/greeting.txt", "hello from the repository\n");
    let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: on-argo\nsecrets: [token]\nsteps:\n  - name: checkout\n    template: gantry/git-checkout@v1\n  - name: read\n    script: 'cat \"$GANTRY_WORKSPACE/data/greeting.txt\"; echo \"token $T\"; printf 42 > \"$GANTRY_OUTPUTS/answer\"'\n    env: {T: '{{secrets.token}}'}\n    outputs: [answer]\n";
    remote.write("on-argo.yaml", text);
    let sha = remote.repo.commit_and_push("a pipeline for Argo");
    let s = GantryServer::start(
        ServerConfig::new()
            .repo(RepoSpec::new("infra", &remote.url()).extra("executor = \"cluster\"\n"))
            .extra_toml(&format!(
                "[executor.cluster]\nkind = \"argo\"\nserver = \"{}\"\nnamespace = \"gantry\"\ntoken = \"{}\"\n",
                stand_in.url(),
                crate::support::argo::TOKEN
            )),
    );
    let (status, body) = s.put_json(
        "/api/v1/pipelines/infra/on-argo/secrets/token",
        &json!({"value": "argo-s3cret-value"}),
    );
    assert_eq!(status, 204, "{body}");
    wait_pipeline(&s, "infra", "on-argo", "synced", |p| p["version"] == 1);
    let run = wait_ended(&s, &id(&start(&s, "infra/on-argo", json!({}))));
    let log = s.get(&format!("/api/v1/runs/{}/logs", id(&run))).1;
    assert_eq!(
        run["status"],
        "succeeded",
        "{run}\nrun log:\n{log}\n{}",
        s.logs()
    );
    assert_eq!(run["executor"], "cluster");
    let workflow = run["external_id"].as_str().expect("the Workflow's name");
    assert!(workflow.starts_with("gantry-on-argo-"), "{workflow}");
    assert_eq!(run["git"]["sha"], sha.as_str());
    assert_eq!(run["outputs"][0]["value"], "42", "{run}");
    let (_, log) = s.get(&format!("/api/v1/runs/{}/logs", id(&run)));
    assert!(log.contains("hello from the repository"), "{log}");
    assert!(
        log.contains("token ***") && !log.contains("argo-s3cret-value"),
        "{log}"
    );
    let steps = run["steps"].as_array().expect("steps");
    assert_eq!(steps[1]["attempts"][0]["handle"]["kind"], "argo", "{run}");
    // The Workflow holds no secret, and its Secret went with the run.
    let wf = stand_in.workflow("gantry", workflow).expect("the Workflow");
    assert!(!wf.to_string().contains("argo-s3cret-value"));
    assert!(
        stand_in
            .secret(
                "gantry",
                &gantry::executor::argo::compile::secret_name(&id(&run))
            )
            .is_none()
    );
}

/// A Gantry killed while its run goes on as a Workflow: the next start finds the Workflow,
/// follows it again from where the store left it, and the run ends as if nothing happened, with
/// each attempt and log line once, and its secret output opened with the pad kept in its Secret.
#[test]
fn a_run_on_argo_is_followed_again_after_a_crash() {
    let stand_in = crate::support::argo::ArgoStandIn::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let mut s = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[executor.cluster]\nkind = \"argo\"\nserver = \"{}\"\nnamespace = \"gantry\"\ntoken = \"{}\"\n",
        stand_in.url(),
        crate::support::argo::TOKEN
    )));
    let text = format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: long\nsteps:\n  - name: mint\n    script: 'printf s3aled-value > \"$GANTRY_OUTPUTS/pw\"'\n    outputs: [{{name: pw, secret: true}}]\n  - name: wait\n    script: 'echo before; i=0; while [ ! -e {} ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 7; sleep 0.05; done; echo after'\n  - name: use\n    script: 'echo \"got $PW\"'\n    env: {{PW: '{{{{steps.mint.outputs.pw}}}}'}}\n",
        go.display()
    );
    let (status, body) = s.put_json(
        "/api/v1/pipelines/local/long",
        &json!({"spec": text, "executor": "cluster"}),
    );
    assert_eq!(status, 201, "{body}");
    let run = start(&s, "local/long", json!({}));
    let run_id = id(&run);
    s.wait_until("the wait step to print its first line", WAIT, || {
        let (_, log) = s.get(&format!("/api/v1/runs/{run_id}/logs"));
        log.contains("before")
    });
    s.kill9();
    std::fs::write(&go, "go").expect("let the step end");
    s.restart();
    let done = wait_ended(&s, &run_id);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", s.logs());
    assert_eq!(done["executor"], "cluster");
    for step in done["steps"].as_array().expect("steps") {
        assert_eq!(step["attempts"].as_array().map(Vec::len), Some(1), "{step}");
    }
    let (_, log) = s.get(&format!("/api/v1/runs/{run_id}/logs"));
    assert_eq!(log.matches("before").count(), 1, "{log}");
    assert_eq!(log.matches("after").count(), 1, "{log}");
    assert!(
        log.contains("got ***") && !log.contains("s3aled-value"),
        "{log}"
    );
    assert!(s.logs().contains("following it again"), "{}", s.logs());
}

/// Executors by name: a local pipeline names its own (here one with a small log cap, so where
/// it ran shows in its log), the rest go to the default; the run records which ran it; a name
/// that is not configured is refused before anything changes.
#[test]
fn a_local_pipeline_runs_on_the_executor_it_names() {
    let s = GantryServer::start(
        ServerConfig::new().extra_toml("[executor.small]\nkind = \"local\"\nmax_step_log = 256\n"),
    );
    let text = pipeline(
        "chatty",
        "",
        "i=0; while [ $i -lt 100 ]; do echo \"line $i of a chatty step\"; i=$((i+1)); done",
    );
    let put = |executor: &str| {
        s.put_json(
            "/api/v1/pipelines/local/chatty",
            &json!({ "spec": text, "executor": executor }),
        )
    };
    let (status, body) = put("small");
    assert_eq!(status, 201, "{body}");
    assert_eq!(parse(&body)["executor"], "small");
    let run = wait_ended(&s, &id(&start(&s, "local/chatty", json!({}))));
    assert_eq!(run["executor"], "small", "{run}");
    let (_, log) = s.get(&format!("/api/v1/runs/{}/logs", id(&run)));
    assert!(
        log.contains("log cut here") && !log.contains("line 99 "),
        "{log}"
    );

    let (status, body) = put("elsewhere");
    assert_eq!(status, 422, "{body}");
    assert!(
        error_of(&body).contains("no executor `elsewhere`"),
        "{body}"
    );
    assert_eq!(
        find(&s, "local", "chatty").expect("kept")["executor"],
        "small"
    );

    // "" sends it back to the default.
    let (status, body) = put("");
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["executor"], Value::Null);
    let run = wait_ended(&s, &id(&start(&s, "local/chatty", json!({}))));
    assert_eq!(run["executor"], "local", "{run}");
    let (_, log) = s.get(&format!("/api/v1/runs/{}/logs", id(&run)));
    assert!(log.contains("line 99 of a chatty step"), "{log}");
}

#[test]
fn the_cli_starts_and_lists_runs_on_a_server() {
    let s = GantryServer::start(ServerConfig::new());
    let params = "parameters:\n  - name: who\n    default: nobody\n";
    let text = format!(
        "{}    env:\n      WHO: \"{{{{params.who}}}}\"\n",
        pipeline("greet", params, "echo \"hello $WHO\"")
    );
    put_local(&s, "greet", &text);
    let gantry = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["--server", &s.url(), "--token", TOKEN])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("GANTRY_SERVER")
            .env_remove("GANTRY_TOKEN")
            .output()
            .expect("the gantry binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = gantry(&["run", "local/greet", "-p", "who=world"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("hello world"), "{stdout}{stderr}");
    let listed = runs(&s, "?pipeline=local/greet");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["parameters"]["who"], "world");
    let run_id = id(&listed[0]);

    let (code, stdout, stderr) = gantry(&["runs"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("greet") && stdout.contains(&run_id[..8.min(run_id.len())]),
        "{stdout}{stderr}"
    );
}

/// A client that never finishes its request's headers, or keeps a connection idle, loses the
/// connection within the header deadline (10 s) instead of holding it for good, and nobody
/// else waits meanwhile; 300 such clients at once do not stop the server answering. A body that
/// never arrives whole gets a 400 once the body deadline (30 s) has passed.
#[test]
fn connections_that_send_no_whole_request_are_closed() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let s = GantryServer::start(ServerConfig::new());
    let addr = ("127.0.0.1", s.port());
    let mut half = TcpStream::connect(addr).expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: gantry\r\n")
        .expect("half a request");
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gantry\r\n\r\n")
        .expect("a whole request");
    let mut slow = TcpStream::connect(addr).expect("connect");
    let put = format!(
        "PUT /api/v1/pipelines/local/slow HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        s.port()
    );
    slow.write_all(put.as_bytes())
        .expect("a request without its whole body");
    let mut held: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.write_all(b"POST /api/v1/runs HTTP/1.1\r\n")
                .expect("a request line");
            c
        })
        .collect();
    let (status, body) = s.get_without_token("/healthz");
    assert_eq!(status, 200, "{body}");
    // The idle connection got its answer, then nothing more; both end with the deadline.
    let mut answer = [0u8; 17];
    idle.read_exact(&mut answer).expect("the answer");
    assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n");
    for c in [&mut half, &mut idle] {
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut rest = Vec::new();
        let read = c.read_to_end(&mut rest);
        assert!(
            read.is_ok(),
            "closed by the server, not by our timeout: {read:?}"
        );
    }
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut answer = String::new();
    let read = slow.read_to_string(&mut answer);
    assert!(read.is_ok(), "answered by the server: {read:?}");
    assert!(
        answer.starts_with("HTTP/1.1 400 ") && answer.contains("did not arrive within 30 s"),
        "{answer}"
    );
    // In the API's error shape, as every other refusal.
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let error: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(
        error["error"],
        "the request body could not be read: the request body did not arrive within 30 s",
        "{error}"
    );
    held.clear();
}
