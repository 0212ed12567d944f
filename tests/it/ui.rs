//! The web UI through a real `gantry serve`, over plain HTTP: login and sessions, the pages'
//! content, the run form's checks, the origin checks on posts, the live event stream and a big
//! log. (`browser.rs` drives the same pages in headless Chromium.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::server::{GantryServer, ServerConfig, json as parse};

/// An HTTP client that shows redirects instead of following them.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub body: String,
}

fn send(request: reqwest::blocking::RequestBuilder) -> Page {
    let response = request.send().expect("the request is answered");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, location, set_cookie) = (
        response.status().as_u16(),
        header("location"),
        header("set-cookie"),
    );
    Page {
        status,
        location,
        set_cookie,
        body: response.text().expect("a body"),
    }
}

/// `application/x-www-form-urlencoded` text of `pairs`.
fn form_body(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::new();
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    parts.join("&")
}

/// A browser-like session: the cookie it got at login goes with every request.
pub struct Browser<'a> {
    server: &'a GantryServer,
    http: reqwest::blocking::Client,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    pub fn new(server: &'a GantryServer) -> Browser<'a> {
        Browser {
            server,
            http: client(),
            cookie: None,
        }
    }

    pub fn login(&mut self, token: &str) -> Page {
        let page = self.post("/login", &[("token", token), ("next", "/")]);
        if let Some(c) = &page.set_cookie {
            self.cookie = c.split(';').next().map(str::to_string);
        }
        page
    }

    pub fn get(&self, path: &str) -> Page {
        let mut r = self.http.get(format!("{}{path}", self.server.url()));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        send(r)
    }

    /// A form post from Gantry's own page (its Origin).
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_from(path, form, &self.server.url())
    }

    pub fn post_from(&self, path: &str, form: &[(&str, &str)], origin: &str) -> Page {
        let mut r = self
            .http
            .post(format!("{}{path}", self.server.url()))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(form));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        send(r)
    }
}

const FORM_PIPELINE: &str = r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata: {name: greet, description: Greets someone, labels: {team: data}}
parameters:
  - {name: who, type: string, pattern: '^[a-z]+$', default: world, description: Whom to greet}
  - {name: times, type: integer, minimum: 1, maximum: 5, default: 2}
  - {name: loud, type: boolean, default: false}
  - {name: region, type: enum, enum: [eu, us], default: eu}
secrets: [db_password]
steps:
  - name: greet
    env: {DB_PASSWORD: "{{secrets.db_password}}"}
    script: |
      for i in $(seq 1 {{params.times}}); do printf '\033[32mhello\033[0m {{params.who}} %s\n' "$i"; done
      echo '<script>alert(1)</script>'
      echo "password=$DB_PASSWORD"
"#;

const FAILING: &str = r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata: {name: broken}
steps:
  - {name: fail, script: "echo about to fail; exit 3"}
"#;

const SECRET: &str = "hunter2-very-secret-value";

fn put_pipeline(server: &GantryServer, name: &str, text: &str) {
    let (status, body) = server.put_text(&format!("/api/v1/pipelines/local/{name}"), text);
    assert!(status == 201 || status == 200, "{status}: {body}");
}

fn runs_of(server: &GantryServer, name: &str) -> Vec<Value> {
    let body = server.get_json(&format!("/api/v1/runs?pipeline=local/{name}"));
    body["runs"].as_array().cloned().unwrap_or_default()
}

fn wait_done(server: &GantryServer, id: &str) -> Value {
    let mut last = Value::Null;
    server.wait_until("the run ends", Duration::from_secs(60), || {
        last = server.get_json(&format!("/api/v1/runs/{id}"));
        !matches!(last["status"].as_str(), Some("queued" | "running"))
    });
    last
}

#[test]
fn pages_need_a_login_and_show_pipelines_runs_and_logs_without_secrets() {
    let server = GantryServer::start(ServerConfig::new());
    put_pipeline(&server, "greet", FORM_PIPELINE);
    put_pipeline(&server, "broken", FAILING);
    let mut browser = Browser::new(&server);

    // Not logged in: every page sends the browser to the login form, which says where it was.
    let page = browser.get("/pipelines/local/greet");
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/login?next=/pipelines/local/greet")
    );
    let page = browser.get("/login?next=/pipelines/local/greet");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"name="token""#), "{}", page.body);
    // A wrong token: no session.
    let page = browser.login("not-the-token");
    assert_eq!(page.status, 401);
    assert!(page.set_cookie.is_none());
    assert!(page.body.contains("not one of the configured API tokens"));
    let page = browser.login(server.token());
    assert_eq!(page.status, 303, "{}", page.body);
    let cookie = page.set_cookie.expect("a session cookie");
    assert!(cookie.starts_with("gantry_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(server.token()),
        "the cookie holds a session id, not the token"
    );

    // The dashboard: both pipelines under their source, the label filter, no run yet.
    let page = browser.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"href="/pipelines/local/greet""#));
    assert!(page.body.contains("Greets someone"));
    assert!(page.body.contains("no run yet"));
    let filtered = browser.get("/?label=team%3Ddata");
    assert!(filtered.body.contains("/pipelines/local/greet"));
    assert!(!filtered.body.contains("/pipelines/local/broken"));
    assert!(
        filtered.body.contains("1 of 2 pipelines"),
        "{}",
        filtered.body
    );

    // The run form names what the run needs and nobody set yet.
    let form = browser.get("/pipelines/local/greet/run");
    assert!(form.body.contains(r#"id="missing""#), "{}", form.body);
    assert!(
        form.body.contains("<code>secret db_password</code>"),
        "{}",
        form.body
    );
    let (status, body) = server.put_json(
        "/api/v1/secrets/db_password",
        &json!({"value": SECRET, "unprotected": true}),
    );
    assert_eq!(status, 204, "{body}");

    // One control per parameter type, defaults filled in; nothing missing now.
    let form = browser.get("/pipelines/local/greet/run");
    assert_eq!(form.status, 200);
    for expected in [
        r#"name="who" type="text" value="world""#,
        r#"name="times" type="number" value="2" step="1" min="1" max="5""#,
        r#"name="loud" type="checkbox""#,
        r#"<option value="eu" selected>eu</option>"#,
        "Whom to greet",
    ] {
        assert!(form.body.contains(expected), "{expected} in {}", form.body);
    }
    assert!(!form.body.contains(r#"id="missing""#), "{}", form.body);

    // A bad value: the error stands beside its field, and nothing is queued.
    let bad = browser.post(
        "/pipelines/local/greet/run",
        &[("who", "Bob"), ("times", "9"), ("region", "eu")],
    );
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains(r#"<div class="field has-error">"#));
    assert!(
        bad.body.contains("parameter `who` must match"),
        "{}",
        bad.body
    );
    assert!(
        bad.body.contains("parameter `times` must be at most 5"),
        "{}",
        bad.body
    );
    assert!(
        bad.body.contains(r#"value="Bob""#),
        "the sent value is kept"
    );
    assert!(runs_of(&server, "greet").is_empty());

    // A post from another site's page is refused, whatever its cookie.
    let foreign = browser.post_from(
        "/pipelines/local/greet/run",
        &[("who", "ann"), ("times", "1")],
        "http://evil.example",
    );
    assert_eq!(foreign.status, 403);
    assert!(runs_of(&server, "greet").is_empty());

    // A good one starts the run and leads to its page.
    let good = browser.post(
        "/pipelines/local/greet/run",
        &[
            ("who", "ann"),
            ("times", "3"),
            ("loud", "on"),
            ("region", "us"),
        ],
    );
    assert_eq!(good.status, 303, "{}", good.body);
    let to = good.location.expect("to the run's page");
    let id = to.strip_prefix("/runs/").expect("a run page").to_string();
    let run = wait_done(&server, &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["parameters"]["loud"], true, "{run}");
    assert_eq!(run["trigger"]["detail"], "web (admin)", "{run}");

    let page = browser.get(&to);
    assert_eq!(page.status, 200);
    let body = &page.body;
    assert!(body.contains(r#"<span class="badge succeeded""#), "{body}");
    assert!(
        body.contains(r#"<span class="c2">hello</span> ann 3"#),
        "{body}"
    );
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(
        !body.contains("<script>alert(1)"),
        "log lines are text: {body}"
    );
    assert!(body.contains("password=***"), "{body}");
    assert!(
        body.contains(r#"id="rerun""#),
        "a finished run can be run again"
    );

    // The raw log downloads through the API with the page's session.
    let raw = browser.get(&format!("/api/v1/runs/{id}/logs?step=greet"));
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert!(raw.body.contains("hello\u{1b}[0m ann 1"), "{}", raw.body);
    assert!(!raw.body.contains(SECRET));

    // A failed run stands out on the dashboard.
    let (status, body) = server.post_json("/api/v1/pipelines/local/broken/runs", &json!({}));
    assert_eq!(status, 201, "{body}");
    let failed = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    wait_done(&server, &failed);
    let page = browser.get("/");
    assert!(
        page.body.contains(r#"<section class="attention">"#),
        "{}",
        page.body
    );
    assert!(page.body.contains("failed run"), "{}", page.body);
    assert!(page.body.contains(&format!(r#"href="/runs/{failed}""#)));
    let broken = browser.get(&format!("/runs/{failed}"));
    assert!(broken.body.contains("exit 3"), "{}", broken.body);

    // The pipeline page: triggers, the definition with line anchors, runs.
    let page = browser.get("/pipelines/local/greet");
    assert!(page.body.contains(r#"id="L5""#), "{}", page.body);
    assert!(page.body.contains(&format!(r#"href="/runs/{id}""#)));

    // No page holds the secret's value.
    for path in [
        "/".to_string(),
        "/pipelines/local/greet".into(),
        "/pipelines/local/greet/run".into(),
        to.clone(),
        format!("/runs/{id}/steps/greet/log"),
    ] {
        let page = browser.get(&path);
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains(SECRET), "{path} shows the secret");
    }

    // Logout ends the session in the store: the old cookie opens nothing.
    let out = browser.post("/logout", &[]);
    assert_eq!(out.status, 303);
    let page = browser.get("/");
    assert_eq!(page.status, 303, "{}", page.body);
    let raw = browser.get(&format!("/api/v1/runs/{id}/logs?step=greet"));
    assert_eq!(raw.status, 401);
}

#[test]
fn served_without_tokens_the_pages_need_no_login_but_refuse_a_foreign_host() {
    let server = GantryServer::start(ServerConfig::new().without_tokens());
    let http = client();
    let page = send(http.get(format!("{}/", server.url())));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("0 of 0 pipelines"), "{}", page.body);
    // A page whose name was rebound to this address sends its own name as Host.
    let page = send(
        http.get(format!("{}/", server.url()))
            .header("host", "evil.example"),
    );
    assert_eq!(page.status, 403, "{}", page.body);
    // Assets are served under their content hash, for good.
    let css = page_asset(&server, &http);
    assert!(css.contains("font"), "{css}");
}

fn page_asset(server: &GantryServer, http: &reqwest::blocking::Client) -> String {
    let page = send(http.get(format!("{}/", server.url())));
    let start = page
        .body
        .find("/assets/gantry.")
        .expect("a stylesheet link");
    let end = start + page.body[start..].find('"').expect("the link ends");
    let response = http
        .get(format!("{}{}", server.url(), &page.body[start..end]))
        .send()
        .expect("the asset");
    assert_eq!(response.status().as_u16(), 200);
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(cache.contains("immutable"), "{cache}");
    response.text().expect("css")
}

/// Reads server-sent events until `end` or `limit`; returns (event, data) pairs.
fn read_events(response: reqwest::blocking::Response, limit: Duration) -> Vec<(String, String)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut event = String::new();
    for line in BufReader::new(response).lines() {
        let Ok(line) = line else { break };
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((event.clone(), d.to_string()));
            if event == "end" {
                break;
            }
        }
        if started.elapsed() > limit {
            break;
        }
    }
    out
}

#[test]
fn a_running_run_page_streams_its_lines_and_states_then_ends() {
    let server = GantryServer::start(ServerConfig::new());
    put_pipeline(
        &server,
        "slow",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: slow}\nsteps:\n  - name: one\n    script: |\n      for i in 1 2 3 4 5; do echo \"tick $i\"; sleep 0.2; done\n  - {name: two, script: \"echo '<i>two</i>'\"}\n",
    );
    let mut browser = Browser::new(&server);
    browser.login(server.token());
    let (status, body) = server.post_json("/api/v1/pipelines/local/slow/runs", &json!({}));
    assert_eq!(status, 201, "{body}");
    let id = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    let page = browser.get(&format!("/runs/{id}"));
    assert!(page.body.contains(r#"data-live="true""#), "{}", page.body);
    assert!(page.body.contains(r#"id="cancel""#));
    let cookie = browser.cookie.clone().unwrap_or_default();
    let response = client()
        .get(format!("{}/runs/{id}/events", server.url()))
        .header("cookie", cookie)
        .timeout(Duration::from_secs(60))
        .send()
        .expect("the event stream");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let events = read_events(response, Duration::from_secs(60));
    let logs: Vec<Value> = events
        .iter()
        .filter(|(e, _)| e == "log")
        .map(|(_, d)| parse(d))
        .collect();
    let texts: Vec<&str> = logs.iter().filter_map(|l| l["html"].as_str()).collect();
    assert_eq!(
        texts,
        [
            "tick 1",
            "tick 2",
            "tick 3",
            "tick 4",
            "tick 5",
            "&lt;i&gt;two&lt;/i&gt;"
        ],
        "{events:?}"
    );
    assert_eq!(logs[5]["step"], 1);
    // Each line comes with the anchor its link names (`L<chunk>-<index>`), distinct per step.
    let anchors: std::collections::BTreeSet<(u64, String)> = logs
        .iter()
        .map(|l| {
            let anchor = l["anchor"].as_str().unwrap_or_default().to_string();
            assert!(
                anchor
                    == format!(
                        "L{}-{}",
                        l["chunk"],
                        anchor.rsplit('-').next().unwrap_or("")
                    ),
                "{l}"
            );
            (l["step"].as_u64().unwrap_or(u64::MAX), anchor)
        })
        .collect();
    assert_eq!(anchors.len(), logs.len(), "{logs:?}");
    let states: Vec<String> = events
        .iter()
        .filter(|(e, _)| e == "step")
        .map(|(_, d)| {
            format!(
                "{}:{}",
                parse(d)["index"],
                parse(d)["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(states.contains(&"0:succeeded".to_string()), "{states:?}");
    assert!(states.contains(&"1:succeeded".to_string()), "{states:?}");
    assert_eq!(
        events.last().map(|(e, _)| e.as_str()),
        Some("end"),
        "{events:?}"
    );

    // Resuming from the cursor a page showed repeats nothing it had.
    let page = browser.get(&format!("/runs/{id}"));
    let start = page.body.find("data-cursor=\"").expect("a cursor") + "data-cursor=\"".len();
    let cursor = &page.body[start..start + page.body[start..].find('"').unwrap_or(0)];
    let response = client()
        .get(format!("{}/runs/{id}/events?after={cursor}", server.url()))
        .header("cookie", browser.cookie.clone().unwrap_or_default())
        .send()
        .expect("the event stream");
    let events = read_events(response, Duration::from_secs(30));
    assert!(events.iter().all(|(e, _)| e != "log"), "{events:?}");
    assert_eq!(events.last().map(|(e, _)| e.as_str()), Some("end"));
}

#[test]
fn a_cancel_from_the_page_stops_the_run() {
    let server = GantryServer::start(ServerConfig::new());
    put_pipeline(
        &server,
        "long",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: long}\nsteps:\n  - {name: wait, script: \"echo started; sleep 60\"}\n",
    );
    let mut browser = Browser::new(&server);
    browser.login(server.token());
    let (_, body) = server.post_json("/api/v1/pipelines/local/long/runs", &json!({}));
    let id = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    server.wait_until("the step runs", Duration::from_secs(30), || {
        server.get_json(&format!("/api/v1/runs/{id}"))["status"] == "running"
    });
    let page = browser.post(&format!("/runs/{id}/cancel"), &[]);
    assert_eq!(page.status, 303, "{}", page.body);
    let run = wait_done(&server, &id);
    assert_eq!(run["status"], "cancelled", "{run}");
}

#[test]
fn a_huge_log_page_shows_its_tail_and_pages_back_by_line() {
    let server = GantryServer::start(ServerConfig::new());
    put_pipeline(
        &server,
        "chatty",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: chatty}\nsteps:\n  - {name: talk, script: \"seq 1 100000\"}\n",
    );
    let mut browser = Browser::new(&server);
    browser.login(server.token());
    let (_, body) = server.post_json("/api/v1/pipelines/local/chatty/runs", &json!({}));
    let id = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    let run = wait_done(&server, &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    let started = Instant::now();
    let page = browser.get(&format!("/runs/{id}"));
    let took = started.elapsed();
    let lines = page
        .body
        .matches(r#"<span class="line stdout" id=""#)
        .count();
    assert_eq!(lines, 200, "the tail only");
    assert!(page.body.contains(">100000</span>"));
    assert!(page.body.contains(">99801</span>"));
    assert!(!page.body.contains(">99800</span>"));
    assert!(
        page.body.contains("/steps/talk/log?skip=200"),
        "earlier lines link"
    );
    println!(
        "run page of a 100,000-line step: {} KiB in {:.1} ms",
        page.body.len() / 1024,
        took.as_secs_f64() * 1e3
    );
    let earlier = browser.get(&format!("/runs/{id}/steps/talk/log?skip=200"));
    assert_eq!(earlier.status, 200);
    let numbers = shown_numbers(&earlier.body);
    assert_eq!(numbers.len(), 1000);
    assert_eq!(numbers.keys().next(), Some(&98801));
    assert_eq!(numbers.keys().last(), Some(&99800));
    assert!(earlier.body.contains("?skip=1200"));

    // A line's link opens a page that holds that line under the same anchor, and keeps
    // naming it after the log grew no further (chunks never change).
    let (anchor, href) = line_link(&page.body, 99_900).expect("a link on line 99900");
    assert!(
        href.starts_with(&format!("/runs/{id}/steps/talk/log?at=")),
        "{href}"
    );
    assert!(href.ends_with(&format!("#{anchor}")), "{href}");
    let linked = browser.get(href.split('#').next().unwrap_or_default());
    assert_eq!(linked.status, 200, "{}", linked.body);
    assert_eq!(
        line_link(&linked.body, 99_900).map(|(a, _)| a),
        Some(anchor.clone()),
        "the linked page holds the line under its anchor"
    );
    assert!(linked.body.contains(&format!(r#"id="{anchor}""#)));
    let shown = shown_numbers(&linked.body);
    assert!(shown.len() >= 1000, "a page's worth: {}", shown.len());
    assert!(linked.body.contains("earlier lines"), "older lines exist");
    let odd = browser.get(&format!("/runs/{id}/steps/talk/log?at=banana"));
    assert_eq!(
        odd.status, 200,
        "a malformed place is the end of the log, not an error"
    );
    assert!(odd.body.contains(">100000</span>"));
}

/// The number each log line of a page shows, from its text.
fn shown_numbers(body: &str) -> BTreeMap<u32, ()> {
    body.split(r#"title="link to this line">#</a>"#)
        .skip(1)
        .filter_map(|s| s.split('<').next()?.parse().ok())
        .map(|n| (n, ()))
        .collect()
}

/// The anchor and the link of the log line whose text is `number`.
fn line_link(body: &str, number: u32) -> Option<(String, String)> {
    let marker = format!(r#"title="link to this line">#</a>{number}</span>"#);
    let at = body.find(&marker)?;
    let before = &body[..at];
    let href_start = before.rfind(r#"href=""#)? + r#"href=""#.len();
    let href = before[href_start..].split('"').next()?.to_string();
    let anchor = href.rsplit('#').next()?.to_string();
    Some((anchor, href))
}

const VIEWER: &str = "viewer-token-0123456789abcdef";
const SCOPED: &str = "scoped-token-0123456789abcdef";
const RUNNER: &str = "runner-token-0123456789abcdef";

#[test]
fn roles_limit_what_a_token_may_do_in_the_api_and_on_the_pages() {
    let server = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[[auth.tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n\n\
         [[auth.tokens]]\nname = \"deployer\"\ntoken = \"{SCOPED}\"\nrole = \"viewer\"\nscopes = {{ \"local/hello\" = \"runner\" }}\n\n\
         [[auth.tokens]]\nname = \"ci\"\ntoken = \"{RUNNER}\"\nrole = \"runner\"\n"
    )));
    let hello = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: hello}\nsteps:\n  - {name: s, script: \"echo hi\"}\n";
    put_pipeline(&server, "hello", hello);
    put_pipeline(
        &server,
        "other",
        &hello.replace("name: hello", "name: other"),
    );
    let call =
        |method: &str, path: &str, token: &str| server.request(method, path, Some(token), None);

    // A viewer reads everything and changes nothing; the refusal says why.
    assert_eq!(call("GET", "/api/v1/pipelines", VIEWER).0, 200);
    let (status, body) = call("POST", "/api/v1/pipelines/local/hello/runs", VIEWER);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("token `watcher` is a viewer on `local/hello`; this needs runner"),
        "{body}"
    );
    assert_eq!(
        server
            .request(
                "PUT",
                "/api/v1/secrets/x",
                Some(VIEWER),
                Some(("application/json", br#"{"value": "abcdef"}"#.to_vec()))
            )
            .0,
        403
    );
    // Reading credentials is its own grant, which only admins have unless given.
    let (status, body) = call("GET", "/api/v1/connections/db/credentials", RUNNER);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("credentials = true"), "{body}");
    assert_eq!(
        call("GET", "/api/v1/connections/db/credentials", server.token()).0,
        404
    );

    // A scope raises the role on one pipeline only.
    assert_eq!(
        call("POST", "/api/v1/pipelines/local/hello/runs", SCOPED).0,
        201
    );
    assert_eq!(
        call("POST", "/api/v1/pipelines/local/other/runs", SCOPED).0,
        403
    );
    // A runner runs and cancels but does not edit.
    let (status, body) = call("POST", "/api/v1/pipelines/local/other/runs", RUNNER);
    assert_eq!(status, 201, "{body}");
    let run = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    let (status, body) = server.put_text(
        "/api/v1/pipelines/local/x",
        &hello.replace("name: hello", "name: x"),
    );
    assert_eq!(status, 201, "the admin edits: {body}");
    let (status, body) = server.request(
        "PUT",
        "/api/v1/pipelines/local/y",
        Some(RUNNER),
        Some((
            "application/yaml",
            hello.replace("name: hello", "name: y").into_bytes(),
        )),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs editor"), "{body}");
    assert_eq!(call("POST", "/api/v1/sources/x/sync", RUNNER).0, 403);

    // The document says what each route needs.
    let doc = server.get_json("/api/v1/openapi.json");
    let op = &doc["paths"]["/api/v1/pipelines/{source}/{name}/runs"]["post"];
    assert_eq!(op["x-gantry-permission"], "runner");
    assert!(op["responses"]["403"].is_object());

    // On the pages, a viewer sees no button that would start or cancel a run, and a post
    // anyway is refused.
    wait_done(&server, &run);
    let mut watcher = Browser::new(&server);
    assert_eq!(watcher.login(VIEWER).status, 303);
    let page = watcher.get(&format!("/runs/{run}"));
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(r#"id="rerun""#), "{}", page.body);
    let page = watcher.get("/pipelines/local/hello");
    assert!(
        !page.body.contains("/pipelines/local/hello/run\""),
        "{}",
        page.body
    );
    assert_eq!(watcher.get("/pipelines/local/hello/run").status, 403);
    let before = runs_of(&server, "hello").len();
    let page = watcher.post(&format!("/runs/{run}/rerun"), &[]);
    assert_eq!(page.status, 403, "{}", page.body);
    let page = watcher.post("/pipelines/local/hello/run", &[]);
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(runs_of(&server, "hello").len(), before);
    // The scoped token gets the buttons where its scope is.
    let mut deployer = Browser::new(&server);
    deployer.login(SCOPED);
    let page = deployer.get("/pipelines/local/hello");
    assert!(
        page.body.contains("/pipelines/local/hello/run\""),
        "{}",
        page.body
    );
    let page = deployer.get("/pipelines/local/other");
    assert!(
        !page.body.contains("/pipelines/local/other/run\""),
        "{}",
        page.body
    );
}

#[test]
fn the_audit_log_records_changes_logins_refusals_credential_reads_and_schedules() {
    let server = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[[auth.tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n"
    )));
    let hello = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: hello}\nsteps:\n  - {name: s, script: \"echo hi\"}\n";
    put_pipeline(&server, "hello", hello);
    let (status, _) = server.put_json("/api/v1/secrets/api_key", &json!({"value": SECRET}));
    assert_eq!(status, 204);
    let mut admin = Browser::new(&server);
    admin.login(server.token());
    let started = admin.post("/pipelines/local/hello/run", &[]);
    assert_eq!(started.status, 303, "{}", started.body);
    let mut watcher = Browser::new(&server);
    assert_eq!(watcher.login("wrong-token-0123456789").status, 401);
    watcher.login(VIEWER);
    let (status, _) = server.request(
        "POST",
        "/api/v1/pipelines/local/hello/runs",
        Some(VIEWER),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(
        server
            .request(
                "GET",
                "/api/v1/connections/db/credentials",
                Some(server.token()),
                None
            )
            .0,
        404
    );
    // A scheduled run is recorded as the schedule's.
    put_pipeline(
        &server,
        "ticker",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: ticker}\non:\n  schedule:\n    - cron: \"* * * * * *\"\nsteps:\n  - {name: s, script: \"true\"}\n",
    );
    let mut entries = Vec::new();
    server.wait_until(
        "a scheduled run in the log",
        Duration::from_secs(15),
        || {
            entries = server.get_json("/api/v1/audit?limit=1000")["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            entries.iter().any(|e| e["via"] == "schedule")
        },
    );
    // The oldest match: entries come newest first.
    let find = |who: &str, via: &str, action: &str| {
        entries
            .iter()
            .rev()
            .find(|e| e["who"] == who && e["via"] == via && e["action"] == action)
            .unwrap_or_else(|| panic!("no {who} {via} {action} in {entries:#?}"))
    };
    let put = find("admin", "api", "PUT /api/v1/pipelines/{source}/{name}");
    assert_eq!(put["target"], "/api/v1/pipelines/local/hello");
    assert_eq!(put["status"], 201);
    assert_eq!(put["from"], "127.0.0.1");
    find("admin", "api", "PUT /api/v1/secrets/{var}");
    let web = find("admin", "web", "POST /pipelines/{source}/{name}/run");
    assert_eq!(web["status"], 303);
    find("admin", "web", "login");
    find("unknown token", "web", "login refused");
    find("watcher", "web", "login");
    let refused = find(
        "watcher",
        "api",
        "POST /api/v1/pipelines/{source}/{name}/runs",
    );
    assert_eq!(refused["status"], 403);
    let read = find(
        "admin",
        "api",
        "GET /api/v1/connections/{connection}/credentials",
    );
    assert_eq!(read["status"], 404);
    let tick = entries
        .iter()
        .find(|e| e["via"] == "schedule")
        .expect("a scheduled run");
    assert_eq!(tick["action"], "run started");
    let who = tick["who"].as_str().unwrap_or_default();
    assert!(who.starts_with("cron * * * * * *, tick at "), "{who}");
    let target = tick["target"].as_str().unwrap_or_default();
    assert!(target.starts_with("local/ticker #"), "{target}");
    // Reads are not recorded, and no value is.
    assert!(
        !entries
            .iter()
            .any(|e| e["action"] == "GET /api/v1/pipelines")
    );
    assert!(
        !serde_json::to_string(&entries)
            .unwrap_or_default()
            .contains(SECRET)
    );

    // Filtered and paged.
    let only = server.get_json("/api/v1/audit?who=watcher");
    server.conforms("AuditList", &only);
    let list = only["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        !list.is_empty() && list.iter().all(|e| e["who"] == "watcher"),
        "{only}"
    );
    let first = server.get_json("/api/v1/audit?limit=2");
    let next = first["next"]
        .as_str()
        .expect("more than two entries")
        .to_string();
    let second = server.get_json(&format!("/api/v1/audit?limit=2&before={next}"));
    assert_ne!(first["entries"][0]["id"], second["entries"][0]["id"]);
    // Only admins read it, on the API and on the page.
    assert_eq!(
        server.request("GET", "/api/v1/audit", Some(VIEWER), None).0,
        403
    );
    assert_eq!(watcher.get("/audit").status, 403);
    let page = admin.get("/audit?who=watcher");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("login refused") || page.body.contains("watcher"));
    assert!(
        page.body
            .contains("POST /api/v1/pipelines/{source}/{name}/runs"),
        "{}",
        page.body
    );
}

#[test]
fn the_marketplace_settings_and_sources_pages_keep_secrets_out_and_follow_roles() {
    let server = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[[auth.tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n"
    )));
    put_pipeline(&server, "make-cache", crate::marketplace::PUBLISHER);
    let (_, body) = server.post_json(
        "/api/v1/pipelines/local/make-cache/runs",
        &json!({"parameters": {"round": "77"}}),
    );
    let id = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(wait_done(&server, &id)["status"], "succeeded");
    let mut admin = Browser::new(&server);
    admin.login(server.token());

    // The marketplace: found by type, its page shows keys, plain values, never the secret one.
    let page = admin.get("/marketplace?type=cache");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"href="/marketplace/team-cache""#),
        "{}",
        page.body
    );
    assert!(page.body.contains("cache (redis)"), "{}", page.body);
    let none = admin.get("/marketplace?type=database");
    assert!(!none.body.contains("team-cache"));
    let page = admin.get("/marketplace/team-cache");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<code>cache.internal</code>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<code>REDIS_PASSWORD</code>"));
    assert!(!page.body.contains("pw-77-5678"), "{}", page.body);
    // Connect to it from the page.
    let made = admin.post(
        "/marketplace/team-cache/connect",
        &[
            ("name", "app"),
            ("environment", "dev"),
            ("version", ""),
            ("consumer", "shop"),
        ],
    );
    assert_eq!(made.status, 303, "{}", made.body);
    let conn = server.get_json("/api/v1/connections/app");
    assert_eq!(conn["resource"], "team-cache", "{conn}");
    let again = admin.post(
        "/marketplace/team-cache/connect",
        &[("name", "app"), ("environment", "dev")],
    );
    assert_eq!(again.status, 422);
    assert!(again.body.contains("exists already"), "{}", again.body);
    let page = admin.get("/marketplace");
    assert!(page.body.contains("<td>app</td>"), "{}", page.body);

    // Variables and secrets: set through forms; a secret's value never comes back.
    let set = admin.post(
        "/settings/secrets",
        &[
            ("name", "db_password"),
            ("value", "s3cret-from-the-form"),
            ("pipeline", "local/make-cache"),
        ],
    );
    assert_eq!(set.status, 303, "{}", set.body);
    let set = admin.post(
        "/settings/variables",
        &[("name", "region"), ("value", "eu-west-1")],
    );
    assert_eq!(set.status, 303, "{}", set.body);
    let page = admin.get("/settings");
    assert!(
        page.body.contains("<code>db_password</code>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("local/make-cache"));
    assert!(page.body.contains("<code>eu-west-1</code>"));
    assert!(!page.body.contains("s3cret-from-the-form"), "{}", page.body);
    let secrets = server.get_json("/api/v1/secrets");
    assert!(secrets.to_string().contains("db_password"), "{secrets}");
    let bad = admin.post("/settings/variables", &[("name", "1bad"), ("value", "x")]);
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("invalid name"), "{}", bad.body);
    let removed = admin.post(
        "/settings/secrets/delete",
        &[("name", "db_password"), ("pipeline", "local/make-cache")],
    );
    assert_eq!(removed.status, 303);
    assert!(!admin.get("/settings").body.contains("db_password"));

    // A viewer sees the pages without their forms, and a post anyway is refused.
    let mut watcher = Browser::new(&server);
    watcher.login(VIEWER);
    let page = watcher.get("/settings");
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains(r#"action="/settings/secrets""#),
        "{}",
        page.body
    );
    assert_eq!(
        watcher
            .post("/settings/secrets", &[("name", "x"), ("value", "abcdef")])
            .status,
        403
    );
    assert!(
        !watcher
            .get("/marketplace/team-cache")
            .body
            .contains("Create connection")
    );
    assert_eq!(
        watcher
            .post(
                "/marketplace/team-cache/connect",
                &[("name", "b"), ("environment", "dev")]
            )
            .status,
        403
    );
    // Sources: none watched here; the page says where local pipelines are.
    let page = watcher.get("/sources");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("No repository is watched"),
        "{}",
        page.body
    );
}

const FLAKY: &str = r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata: {name: flaky}
variables: [should_fail]
steps:
  - name: one
    script: |
      echo "one ran"
      printf from-one > "$GANTRY_OUTPUTS/note"
      printf tok-1234567 > "$GANTRY_OUTPUTS/token"
    outputs:
      - name: note
      - name: token
        secret: true
  - name: two
    env: {N: "{{steps.one.outputs.note}}", T: "{{steps.one.outputs.token}}", F: "{{vars.should_fail}}"}
    script: |
      echo "two sees $N $T"
      test "$F" = no
  - {name: three, script: "echo three ran"}
"#;

#[test]
fn a_failed_run_is_retried_from_its_failed_step_reusing_what_succeeded() {
    let server = GantryServer::start(ServerConfig::new());
    put_pipeline(&server, "flaky", FLAKY);
    let set = |v: &str| {
        let (status, body) = server.put_json("/api/v1/variables/should_fail", &json!({"value": v}));
        assert_eq!(status, 204, "{body}");
    };
    set("yes");
    let (_, body) = server.post_json("/api/v1/pipelines/local/flaky/runs", &json!({}));
    let first = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    let run = wait_done(&server, &first);
    assert_eq!(run["status"], "failed", "{run}");
    // A run still failing or succeeded cannot be retried; the page offers it for a failed one.
    let mut browser = Browser::new(&server);
    browser.login(server.token());
    assert!(
        browser
            .get(&format!("/runs/{first}"))
            .body
            .contains(r#"id="retry""#)
    );

    set("no");
    let page = browser.post(&format!("/runs/{first}/retry"), &[]);
    assert_eq!(page.status, 303, "{}", page.body);
    let second = page
        .location
        .and_then(|l| l.strip_prefix("/runs/").map(str::to_string))
        .expect("the new run's page");
    let run = wait_done(&server, &second);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["retry_of"], first.as_str(), "{run}");
    assert!(
        run["trigger"]["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("retry of #1 from its failed step"),
        "{run}"
    );
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps[0]["state"], "succeeded");
    assert_eq!(
        steps[0]["attempts"].as_array().map(Vec::len),
        Some(0),
        "not run again"
    );
    assert!(
        steps[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not run again: it succeeded in run #1"),
        "{run}"
    );
    let (_, log) = server.get(&format!("/api/v1/runs/{second}/logs"));
    assert!(!log.contains("one ran"), "{log}");
    assert!(
        log.contains("two sees from-one ***"),
        "the outputs came over, the secret masked: {log}"
    );
    assert!(log.contains("three ran"), "{log}");
    // The outputs are the new run's too.
    let outputs = run["outputs"].to_string();
    assert!(
        outputs.contains("from-one") && !outputs.contains("tok-1234567"),
        "{outputs}"
    );
    // A succeeded run is not retried.
    let (status, body) = server.post_json(&format!("/api/v1/runs/{second}/retry"), &json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("rerun"), "{body}");

    // The CLI retries through the server too.
    set("yes");
    let (_, body) = server.post_json("/api/v1/pipelines/local/flaky/runs", &json!({}));
    let third = parse(&body)["id"].as_str().unwrap_or_default().to_string();
    wait_done(&server, &third);
    set("no");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "--server",
            &server.url(),
            "--token",
            server.token(),
            "retry",
            &third,
        ])
        .output()
        .expect("gantry retry");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("retries #3 from its failed step"), "{said}");
    let said_out = String::from_utf8_lossy(&out.stdout);
    assert!(
        said_out.contains("three ran") && !said_out.contains("one ran"),
        "{said_out}"
    );
}

#[test]
fn a_user_logs_in_with_a_password_from_the_config_and_gets_the_user_s_role() {
    let hash = {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .arg("hash-password")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gantry hash-password");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"open sesame 42\n").expect("the password");
        }
        let out = child.wait_with_output().expect("its hash");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let server = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[[auth.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\nrole = \"viewer\"\n"
    )));
    put_pipeline(
        &server,
        "hello",
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: hello}\nsteps:\n  - {name: s, script: \"echo hi\"}\n",
    );
    let browser = Browser::new(&server);
    let form = browser.get("/login");
    assert!(form.body.contains(r#"name="password""#), "{}", form.body);
    for (user, password) in [("ann", "open sesame"), ("bob", "open sesame 42")] {
        let page = browser.post("/login", &[("user", user), ("password", password)]);
        assert_eq!(page.status, 401, "{user}");
        assert!(page.body.contains("Wrong user name or password"));
        assert!(page.set_cookie.is_none());
    }
    let page = browser.post(
        "/login",
        &[
            ("user", "ann"),
            ("password", "open sesame 42"),
            ("next", "/"),
        ],
    );
    assert_eq!(page.status, 303, "{}", page.body);
    let cookie = page
        .set_cookie
        .and_then(|c| c.split(';').next().map(str::to_string))
        .expect("a session");
    let ann = Browser {
        cookie: Some(cookie),
        ..Browser::new(&server)
    };
    let page = ann.get("/pipelines/local/hello");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(">ann<"), "{}", page.body);
    assert!(
        !page.body.contains("/pipelines/local/hello/run\""),
        "a viewer: {}",
        page.body
    );
    assert_eq!(ann.post("/pipelines/local/hello/run", &[]).status, 403);
    // The refused attempts and the login are in the audit log.
    let audit = server.get_json("/api/v1/audit?text=login");
    let text = audit.to_string();
    assert!(
        text.contains("user bob") && text.contains("\"who\":\"ann\""),
        "{audit}"
    );
}

#[test]
fn a_local_pipeline_rolls_back_from_its_page() {
    let server = GantryServer::start(ServerConfig::new().extra_toml(&format!(
        "[[auth.tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n"
    )));
    let v1 = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: hello}\nsteps:\n  - {name: s, script: \"echo one\"}\n";
    put_pipeline(&server, "hello", v1);
    put_pipeline(&server, "hello", &v1.replace("echo one", "echo two"));
    let mut admin = Browser::new(&server);
    admin.login(server.token());
    let page = admin.get("/pipelines/local/hello");
    assert!(page.body.contains("roll back to this"), "{}", page.body);
    let mut watcher = Browser::new(&server);
    watcher.login(VIEWER);
    assert!(
        !watcher
            .get("/pipelines/local/hello")
            .body
            .contains("roll back to this")
    );
    assert_eq!(
        watcher
            .post("/pipelines/local/hello/rollback", &[("to", "1")])
            .status,
        403
    );
    let done = admin.post("/pipelines/local/hello/rollback", &[("to", "1")]);
    assert_eq!(done.status, 303, "{}", done.body);
    let pipeline = server.get_json("/api/v1/pipelines/local/hello");
    assert!(
        pipeline["spec"]
            .as_str()
            .unwrap_or_default()
            .contains("echo one"),
        "{pipeline}"
    );
    let bad = admin.post("/pipelines/local/hello/rollback", &[("to", "9")]);
    assert_eq!(bad.status, 404, "{}", bad.body);
}

#[test]
fn an_address_that_keeps_failing_to_log_in_is_made_to_wait() {
    let server = GantryServer::start(ServerConfig::new());
    let mut browser = Browser::new(&server);
    for _ in 0..30 {
        assert_eq!(browser.login("wrong-token-0123456789abcdef").status, 401);
    }
    let page = browser.login("wrong-token-0123456789abcdef");
    assert_eq!(page.status, 429, "{}", page.body);
    assert!(
        page.body.contains("Too many failed logins"),
        "{}",
        page.body
    );
    // The right token waits too until the minute is over: guessing gains nothing.
    assert_eq!(browser.login(server.token()).status, 429);
}
