//! The web UI in real headless Chromium (Debian `chromium` + `chromium-driver`, driven over W3C
//! WebDriver by `support/webdriver.rs`) against a real `gantry serve`: logging in, the dashboard,
//! the run form's checks in the browser, a run's log arriving live, cancel, what a viewer sees,
//! secrets kept out of every page, and the first paint of a 100,000-line log (reported, not
//! asserted). Screenshots of the main pages go to `target/screenshots/`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::server::{GantryServer, ServerConfig, json as parse};
use crate::support::webdriver::Browser;

const SECRET: &str = "browser-secret-value-4711";
const VIEWER: &str = "viewer-token-0123456789abcdef";

const GREET: &str = r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata: {name: greet, description: Greets someone}
parameters:
  - {name: who, type: string, pattern: '^[a-z]+$', default: world, description: Whom to greet}
  - {name: times, type: integer, minimum: 1, maximum: 5, default: 2}
secrets: [api_key]
steps:
  - name: greet
    env: {KEY: "{{secrets.api_key}}"}
    script: |
      for i in $(seq 1 {{params.times}}); do printf '\033[32mhello\033[0m {{params.who}} %s\n' "$i"; done
      echo "key=$KEY"
"#;

fn put(server: &GantryServer, name: &str, text: &str) {
    let (status, body) = server.put_text(&format!("/api/v1/pipelines/local/{name}"), text);
    assert!(status == 201 || status == 200, "{status}: {body}");
}

fn start(server: &GantryServer, name: &str) -> String {
    let (status, body) =
        server.post_json(&format!("/api/v1/pipelines/local/{name}/runs"), &json!({}));
    assert_eq!(status, 201, "{body}");
    parse(&body)["id"].as_str().unwrap_or_default().to_string()
}

fn shot(browser: &Browser, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.png")), browser.screenshot());
}

fn login(browser: &Browser, server: &GantryServer, token: &str) {
    browser.open(&format!("{}/", server.url()));
    let field = browser.find("#token", Duration::from_secs(10));
    browser.type_into(&field, token);
    let button = browser.find("section.login button", Duration::from_secs(5));
    browser.click(&button);
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_browser_logs_in_starts_a_run_from_the_form_and_never_sees_a_secret() {
    let server = GantryServer::start(ServerConfig::new());
    put(&server, "greet", GREET);
    put(
        &server,
        "broken",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: broken}\nsteps:\n  - {name: fail, script: \"echo no; exit 3\"}\n",
    );
    let (status, _) = server.put_json("/api/v1/secrets/api_key", &json!({"value": SECRET}));
    assert_eq!(status, 204);
    let failed = start(&server, "broken");
    server.wait_until("the failing run ends", WAIT, || {
        server.get_json(&format!("/api/v1/runs/{failed}"))["status"] == "failed"
    });

    let browser = Browser::start();
    // Not logged in: the login form, then the dashboard.
    login(&browser, &server, server.token());
    browser.wait_for("the dashboard", WAIT, |b| {
        b.source().contains("pipelines</p>")
    });
    let html = browser.source();
    assert!(html.contains("/pipelines/local/greet"), "{html}");
    // The failed run stands out.
    browser.find("section.attention", WAIT);
    let said = browser.text_of("section.attention").unwrap_or_default();
    assert!(
        said.contains("failed run") && said.contains("local/broken"),
        "{said}"
    );
    shot(&browser, "dashboard");

    // The run form: a bad value is caught in the browser, next to its field; nothing queued.
    browser.open(&format!("{}/pipelines/local/greet/run", server.url()));
    let who = browser.find("#p-who", WAIT);
    browser.clear(&who);
    browser.type_into(&who, "Bob");
    browser.click(&browser.find("#start", WAIT));
    browser.wait_for("the field's error", WAIT, |b| {
        b.text_of("#e-who").is_some_and(|t| !t.is_empty())
    });
    assert!(browser.url().ends_with("/pipelines/local/greet/run"));
    shot(&browser, "run-form-error");
    let runs = server.get_json("/api/v1/runs?pipeline=local/greet");
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");

    // A good value starts the run and leads to its page, which follows it to its end.
    let who = browser.find("#p-who", WAIT);
    browser.clear(&who);
    browser.type_into(&who, "ann");
    browser.click(&browser.find("#start", WAIT));
    browser.wait_for("the run's page", WAIT, |b| b.url().contains("/runs/"));
    browser.wait_for("the run succeeds", WAIT, |b| {
        b.text_of("#run-status").as_deref() == Some("succeeded")
    });
    browser.wait_for("its log", WAIT, |b| {
        b.source().contains("hello</span> ann 2")
    });
    let html = browser.source();
    assert!(html.contains("key=***"), "{html}");
    shot(&browser, "run");

    // No page, and no answer the pages fetch, holds the secret.
    let run_page = browser.url();
    for url in [
        format!("{}/", server.url()),
        format!("{}/pipelines/local/greet", server.url()),
        format!("{}/pipelines/local/greet/run", server.url()),
        run_page,
        format!("{}/runs/{failed}", server.url()),
    ] {
        browser.open(&url);
        let html = browser.source();
        assert!(!html.contains(SECRET), "{url} shows the secret");
        let fetched = browser.script(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            json!([]),
        );
        for resource in fetched.as_array().into_iter().flatten() {
            let Some(path) = resource.as_str() else {
                continue;
            };
            let body = reqwest::blocking::get(path)
                .ok()
                .and_then(|r| r.text().ok());
            assert!(!body.unwrap_or_default().contains(SECRET), "{path}");
        }
    }
    browser.open(&format!("{}/pipelines/local/greet", server.url()));
    shot(&browser, "pipeline");
}

#[test]
fn log_lines_arrive_live_cancel_stops_the_run_and_a_viewer_gets_no_button() {
    let server = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[[auth.tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n"
    )));
    put(
        &server,
        "slow",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: slow}\nsteps:\n  - name: tick\n    script: |\n      for i in $(seq 1 120); do echo \"tick $i\"; sleep 0.25; done\n",
    );
    let id = start(&server, "slow");
    let browser = Browser::start();
    login(&browser, &server, server.token());
    browser.wait_for("logged in", WAIT, |b| b.source().contains("pipelines</p>"));
    browser.open(&format!("{}/runs/{id}", server.url()));
    let lines = |b: &Browser| {
        b.script(
            "return document.querySelectorAll('pre[data-step-log=\"0\"] .line').length",
            json!([]),
        )
        .as_u64()
        .unwrap_or(0)
    };
    let at_load = lines(&browser);
    // Lines keep arriving without a reload: the page object stays the same.
    browser.script("window.__same_page = true; return 0", json!([]));
    browser.wait_for("three more lines", WAIT, |b| lines(b) >= at_load + 3);
    let same = browser.script("return window.__same_page === true", json!([]));
    assert_eq!(same, json!(true), "the lines came over the event stream");
    shot(&browser, "run-live");
    browser.click(&browser.find("#cancel", WAIT));
    browser.wait_for("the run is cancelled", WAIT, |b| {
        b.text_of("#run-status").as_deref() == Some("cancelled")
    });
    let run = server.get_json(&format!("/api/v1/runs/{id}"));
    assert_eq!(run["status"], "cancelled", "{run}");

    // A viewer sees the run but no button that would start or cancel one.
    browser.click(&browser.find("form.who button", WAIT));
    browser.wait_for("logged out", WAIT, |b| b.url().contains("/login"));
    login(&browser, &server, VIEWER);
    browser.wait_for("logged in", WAIT, |b| b.source().contains("pipelines</p>"));
    browser.open(&format!("{}/runs/{id}", server.url()));
    browser.find("#run-status", WAIT);
    assert!(browser.all("#rerun").is_empty() && browser.all("#cancel").is_empty());
    browser.open(&format!("{}/pipelines/local/slow", server.url()));
    browser.find("h1", WAIT);
    assert!(browser.all("a.button").is_empty(), "{}", browser.source());
    let (status, _) = server.request(
        "POST",
        "/api/v1/pipelines/local/slow/runs",
        Some(VIEWER),
        None,
    );
    assert_eq!(status, 403);
}

#[test]
fn a_100000_line_log_page_paints_its_tail_at_once() {
    let server = GantryServer::start(ServerConfig::new());
    put(
        &server,
        "chatty",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: chatty}\nsteps:\n  - {name: talk, script: \"seq 1 100000\"}\n",
    );
    let id = start(&server, "chatty");
    server.wait_until("the run ends", Duration::from_secs(60), || {
        server.get_json(&format!("/api/v1/runs/{id}"))["status"] == "succeeded"
    });
    let browser = Browser::start();
    login(&browser, &server, server.token());
    browser.wait_for("logged in", WAIT, |b| b.source().contains("pipelines</p>"));
    let started = Instant::now();
    browser.open(&format!("{}/runs/{id}", server.url()));
    let loaded = started.elapsed();
    let timing = browser.script(
        "const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint'); \
         const n = performance.getEntriesByType('navigation')[0]; \
         return {fcp: p ? p.startTime : null, dcl: n ? n.domContentLoadedEventEnd : null, load: n ? n.loadEventEnd : null}",
        json!([]),
    );
    let ms = |key: &str| {
        timing[key]
            .as_f64()
            .map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "not reported".into())
    };
    browser.find("pre.log .line:last-child", WAIT);
    assert_eq!(
        browser.text_of("pre.log .line:last-child").as_deref(),
        Some("100000")
    );
    let shown = browser.all("pre.log .line").len();
    assert_eq!(shown, 200, "the tail only");
    println!(
        "100,000-line step: run page opened in {:.0} ms (WebDriver round trip included); first contentful paint {}, DOM content loaded {}, load {}; {shown} lines in the DOM",
        loaded.as_secs_f64() * 1e3,
        ms("fcp"),
        ms("dcl"),
        ms("load"),
    );
}
