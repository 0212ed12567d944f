//! Webhooks end to end: the real `gantry serve` receives deliveries built from the forges' sample
//! payloads (retargeted to a real repository served by `git daemon`, signed with the configured
//! secret), runs pipelines from the pushed commits, and writes statuses and PR comments back to a
//! fake forge API that records every request.

use std::path::PathBuf;
use std::time::Duration;

use gantry::forge::Forge;
use gantry::forge::webhook::{self, retarget_head, retarget_repo, sign};
use serde_json::{Value, json};

use crate::support::forges::{FakeForge, Fault, Recorded};
use crate::support::git::Remote;
use crate::support::server::{GantryServer, RepoSpec, ServerConfig, json as parse};

/// How long anything asynchronous (a delivery, a run, a write-back) gets before a test gives up.
const WAIT: Duration = Duration::from_secs(60);
/// The repository id on the (fake) forge.
const FORGE_ID: &str = "acme/infra";
const SECRET: &str = "whsec-test-0123456789abcdef";
const API_TOKEN: &str = "forge-api-token-0123456789";
const ZERO: &str = "0000000000000000000000000000000000000000";

/// A pipeline named `name` with top-level YAML `extra` (whole lines), one step `main` running
/// `script`, and step-level YAML `step_extra` (lines indented by four spaces).
fn pipeline(name: &str, extra: &str, script: &str, step_extra: &str) -> String {
    let body: String = script.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\n{extra}steps:\n  \
         - name: main\n    script: |\n{body}{step_extra}"
    )
}

/// One forge, a repository on it, and `gantry serve` watching that repository.
struct World {
    forge: Forge,
    /// Keeps the git daemon and the repository alive; tests may push more.
    remote: Remote,
    fake: FakeForge,
    server: GantryServer,
    http: reqwest::blocking::Client,
}

impl World {
    /// Starts the fake forge and the server; `remote` already holds the pushed `main`.
    fn start(forge: Forge, remote: Remote, poll: &str) -> World {
        World::start_on(forge, remote, poll, None)
    }

    /// `start`, with the repository's runs going to an Argo executor on `argo` when given.
    fn start_on(
        forge: Forge,
        remote: Remote,
        poll: &str,
        argo: Option<&crate::support::argo::ArgoStandIn>,
    ) -> World {
        let fake = FakeForge::start(forge);
        let mut spec = RepoSpec::new("infra", &remote.url())
            .forge(forge.as_str(), FORGE_ID)
            .poll_interval(poll)
            .extra(&format!(
                "api_url = \"{}\"\ntoken = \"{API_TOKEN}\"\nwebhook_secret = \"{SECRET}\"\n",
                fake.url()
            ));
        let mut config = ServerConfig::new();
        if let Some(stand_in) = argo {
            spec = spec.extra("executor = \"cluster\"\n");
            config = config.extra_toml(&format!(
                "[executor.cluster]\nkind = \"argo\"\nserver = \"{}\"\nnamespace = \"gantry\"\ntoken = \"{}\"\n",
                stand_in.url(),
                crate::support::argo::TOKEN
            ));
        }
        let server = GantryServer::start(config.repo(spec));
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        World {
            forge,
            remote,
            fake,
            server,
            http,
        }
    }

    /// POSTs `body` to `/hooks/<forge>` with the event and delivery-id headers and `auth` (the
    /// signature headers; none for an unsigned delivery); returns the status and the JSON answer.
    fn post(
        &self,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
        auth: &[(String, String)],
    ) -> (u16, Value) {
        let url = format!("{}/hooks/{}", self.server.url(), self.forge.as_str());
        let mut request = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .header(webhook::event_header(self.forge), event)
            .header(webhook::delivery_headers(self.forge)[0], delivery);
        for (name, value) in auth {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request
            .body(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {url}: {e}\n{}", self.server.logs()));
        let status = response.status().as_u16();
        let text = response.text().expect("a readable answer");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Delivers a genuine (signed) delivery; returns the status and the JSON answer.
    fn deliver(&self, hook: &Hook, delivery: &str) -> (u16, Value) {
        let body = serde_json::to_vec(&hook.body).expect("JSON");
        let auth = sign(self.forge, &body, SECRET);
        self.post(&hook.event, delivery, body, &auth)
    }

    /// Delivers and expects it accepted as a new delivery (202).
    fn accept(&self, hook: &Hook, delivery: &str) {
        let (status, answer) = self.deliver(hook, delivery);
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["accepted"], true, "{answer}");
        assert_eq!(answer["duplicate"], false, "{answer}");
        assert_eq!(answer["delivery"], delivery, "{answer}");
        self.server.conforms("Accepted", &answer);
    }

    fn runs(&self) -> Vec<Value> {
        let list = self.server.get_json("/api/v1/runs?limit=1000");
        self.server.conforms("RunList", &list);
        list["runs"].as_array().expect("a runs array").clone()
    }

    /// Waits until a run of `pipeline` with trigger `kind` has ended; returns it.
    fn wait_run(&self, pipeline: &str, kind: &str) -> Value {
        let mut found = Value::Null;
        self.server
            .wait_until(&format!("a {kind} run of {pipeline} to end"), WAIT, || {
                let run = self.runs().into_iter().find(|r| {
                    r["trigger"]["kind"] == kind
                        && r["pipeline"]
                            .as_str()
                            .is_some_and(|p| p == pipeline || p.ends_with(&format!("/{pipeline}")))
                });
                match run {
                    Some(r) if r["status"] != "queued" && r["status"] != "running" => {
                        found = r;
                        true
                    }
                    _ => false,
                }
            });
        found
    }

    fn log(&self, run: &Value) -> String {
        let (status, log) = self.server.get(&format!("/api/v1/runs/{}/logs", id(run)));
        assert_eq!(status, 200, "{log}");
        log
    }

    /// The commit status calls recorded so far, in order.
    fn status_calls(&self) -> Vec<Recorded> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.contains("/statuses/"))
            .collect()
    }

    /// The states of the status calls on `sha`, in order, in the forge's words.
    fn states(&self, sha: &str) -> Vec<String> {
        self.status_calls()
            .iter()
            .filter(|r| r.path.contains(sha))
            .map(|r| status_field(self.forge, r, "state"))
            .collect()
    }

    /// Waits until a status call on `sha` with the forge's `state` was recorded.
    fn wait_state(&self, sha: &str, state: &str) {
        self.server
            .wait_until(&format!("status {state} on {sha}"), WAIT, || {
                self.states(sha).iter().any(|s| s == state)
            });
    }
}

/// A field of a recorded status call: `state`, `context` or `target_url`, whatever the forge
/// calls it.
fn status_field(forge: Forge, r: &Recorded, field: &str) -> String {
    let name = match (forge, field) {
        (Forge::Gitlab, "context") => "name",
        (Forge::Bitbucket, "context") => "name",
        (Forge::Bitbucket, "target_url") => "url",
        (_, f) => f,
    };
    let value = match forge {
        Forge::Gitlab => r.form().get(name).cloned(),
        _ => r
            .json()
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    value.unwrap_or_default()
}

fn id(run: &Value) -> String {
    run["id"].as_str().expect("a run id").to_owned()
}

/// A sample delivery: its event name and body.
struct Hook {
    event: String,
    body: Value,
}

impl Hook {
    /// `webhooks/<forge>/samples/<file>`, pointed at `FORGE_ID`.
    fn sample(forge: Forge, file: &str) -> Hook {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("webhooks")
            .join(forge.as_str())
            .join("samples")
            .join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let sample = parse(&text);
        let event = sample["event"].as_str().expect("an event").to_owned();
        let mut body = sample["body"].clone();
        retarget_repo(forge, &mut body, FORGE_ID).expect("retarget the repository");
        Hook { event, body }
    }

    /// Points the delivery's head commit at `sha`.
    fn head(mut self, forge: Forge, sha: &str) -> Hook {
        let changed = retarget_head(forge, &self.event, &mut self.body, sha).expect("retarget");
        assert!(changed, "the {} sample names a head commit", self.event);
        self
    }

    /// Sets the value at a JSON pointer (which must exist).
    fn set(mut self, pointer: &str, value: Value) -> Hook {
        *self
            .body
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} is in the {} sample", self.event)) = value;
        self
    }
}

/// A repository whose `main` holds `files` (name, text) under `.gantry/pipelines/`; returns it
/// and the sha of `main`.
fn remote_with(files: &[(&str, &str)]) -> (Remote, String) {
    let remote = Remote::new();
    for (name, text) in files {
        remote.write(name, text);
    }
    let sha = remote.repo.commit_and_push("pipelines");
    (remote, sha)
}

fn github_push(sha: &str) -> Hook {
    Hook::sample(Forge::Github, "push.json")
        .head(Forge::Github, sha)
        .set("/before", json!(ZERO))
}

fn build_pipeline() -> String {
    // The sleep keeps the run running long enough for its first status to go out on its own.
    pipeline("build", "on: {push: {}}\n", "echo built\nsleep 1", "")
}

// 1. A push on GitHub starts a run at the pushed commit and reports it.
#[test]
fn a_github_push_runs_the_pipeline_and_reports_pending_then_success() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");
    w.accept(&github_push(&sha), "push-1");

    let run = w.wait_run("build", "push");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["git"]["sha"], sha.as_str(), "{run}");
    assert!(w.log(&run).contains("built"));
    w.wait_state(&sha, "success");

    let calls = w.fake.requests();
    let path = format!("/repos/{FORGE_ID}/statuses/{sha}");
    for r in &calls {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", path.as_str()),
            "only status calls on the pushed commit: {:?}",
            calls.iter().map(Recorded::line).collect::<Vec<_>>()
        );
    }
    let states = w.states(&sha);
    assert!(states.len() >= 2, "{states:?}");
    let (last, before) = states.split_last().expect("states");
    assert_eq!(last, "success", "{states:?}");
    assert!(before.iter().all(|s| s == "pending"), "{states:?}");
    let url = format!("{}/runs/{}", w.server.url(), id(&run));
    for r in &calls {
        assert_eq!(status_field(w.forge, r, "context"), "gantry/build");
        assert_eq!(status_field(w.forge, r, "target_url"), url);
        assert!(
            r.header("authorization")
                .is_some_and(|a| a.contains(API_TOKEN)),
            "{:?}",
            r.headers
        );
    }
}

// 2. A redelivery (same delivery id) is acknowledged as a duplicate and starts nothing.
#[test]
fn a_redelivery_is_a_duplicate_and_starts_no_second_run() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");
    let hook = github_push(&sha);
    w.accept(&hook, "push-dup");
    let (status, answer) = w.deliver(&hook, "push-dup");
    assert!((200..300).contains(&status), "{status} {answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");
    w.wait_run("build", "push");
    // The duplicate arrived before the first run ended: had it been processed, its run would
    // be listed by now (deliveries are processed in order).
    w.wait_state(&sha, "success");
    let runs = w.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
}

// 3. A wrong or missing signature is refused and nothing is stored.
#[test]
fn a_bad_or_missing_signature_is_refused_and_nothing_is_stored() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");
    let hook = github_push(&sha);
    let body = serde_json::to_vec(&hook.body).expect("JSON");

    let wrong = sign(Forge::Github, &body, "another-secret");
    let (status, answer) = w.post(&hook.event, "sig-1", body.clone(), &wrong);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer.to_string().contains("X-Hub-Signature-256"),
        "{answer}"
    );
    let (status, answer) = w.post(&hook.event, "sig-1", body.clone(), &[]);
    assert_eq!(status, 401, "{answer}");
    let malformed = vec![("X-Hub-Signature-256".to_owned(), "sha256=nothex".to_owned())];
    let (status, answer) = w.post(&hook.event, "sig-1", body.clone(), &malformed);
    assert_eq!(status, 401, "{answer}");
    // A body changed after signing.
    let mut tampered = body.clone();
    tampered.push(b' ');
    let (status, answer) = w.post(
        &hook.event,
        "sig-1",
        tampered,
        &sign(Forge::Github, &body, SECRET),
    );
    assert_eq!(status, 401, "{answer}");

    assert!(w.runs().is_empty());
    // The refused deliveries were not stored: the genuine one with the same id is new.
    w.accept(&hook, "sig-1");
    let run = w.wait_run("build", "push");
    assert_eq!(run["git"]["sha"], sha.as_str(), "{run}");
}

/// A source address whose deliveries keep failing their check is answered 429 with Retry-After
/// for the rest of the minute, before anything is hashed; a body that names no repository is
/// refused without hashing and without counting.
#[test]
fn failed_signatures_are_rate_limited_per_source_address() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");
    let hook = github_push(&sha);
    let body = serde_json::to_vec(&hook.body).expect("JSON");
    // A body about no repository is refused without hashing, and without counting against the
    // address (a forge's own events about no repository come from the same addresses).
    for i in 0..40 {
        let (status, answer) = w.post("push", &format!("anon-{i}"), b"{}".to_vec(), &[]);
        assert_eq!(status, 401, "a body naming no repository: {answer}");
        assert!(
            answer.to_string().contains("names no repository"),
            "{answer}"
        );
    }
    let wrong = sign(Forge::Github, &body, "another-secret");
    let mut statuses = Vec::new();
    for i in 1..40 {
        let (status, _) = w.post(&hook.event, &format!("bad-{i}"), body.clone(), &wrong);
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused, 30, "30 failures before the limit: {statuses:?}");
    assert!(statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even a genuine delivery waits: the address is held, not the signature.
    let (status, answer) = w.deliver(&hook, "good-1");
    assert_eq!(status, 429, "{answer}");
    assert!(answer.to_string().contains("try again"), "{answer}");
}

// 4. Unknown repositories, ignored events and oversized bodies.
#[test]
fn unknown_repos_ignored_events_and_huge_bodies_get_their_own_answers() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");

    // Signed with the secret, but about a repository that is not configured: the secret of
    // `acme/infra` does not vouch for another repository.
    let mut other = github_push(&sha);
    retarget_repo(Forge::Github, &mut other.body, "acme/other").expect("retarget");
    let (status, answer) = w.deliver(&other, "other-1");
    assert_eq!(status, 401, "{answer}");
    assert!(answer.to_string().contains("acme/other"), "{answer}");
    // Not signed by anyone, about an unknown repository: the same 401 as a wrong signature
    // (an unauthenticated caller learns nothing about which repositories are configured).
    let body = serde_json::to_vec(&other.body).expect("JSON");
    let (status, unknown) = w.post("push", "other-2", body, &[]);
    assert_eq!(status, 401, "{unknown}");
    assert_eq!(unknown, answer, "unknown and wrongly signed answer alike");
    // A configured repository with a wrong signature: the same answer but for the name the
    // caller sent.
    let known = serde_json::to_vec(&github_push(&sha).body).expect("JSON");
    let (status, wrong) = w.post(
        "push",
        "other-3",
        known,
        &sign(Forge::Github, b"another body", SECRET),
    );
    assert_eq!(status, 401, "{wrong}");
    assert_eq!(
        wrong.to_string(),
        answer.to_string().replace("acme/other", FORGE_ID)
    );

    // Genuine but nothing to do: 202 with a reason, nothing stored.
    let tag = github_push(&sha).set("/ref", json!("refs/tags/v1.0.0"));
    let (status, answer) = w.deliver(&tag, "tag-1");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], false, "{answer}");
    assert!(
        answer["reason"].as_str().is_some_and(|r| r.contains("tag")),
        "{answer}"
    );
    let issues = Hook {
        event: "issues".to_owned(),
        body: github_push(&sha).body,
    };
    let (status, answer) = w.deliver(&issues, "issues-1");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], false, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("issues")),
        "{answer}"
    );

    // A large genuine body is verified off the async threads, with the same result.
    let mut large = github_push(&sha).set("/ref", json!("refs/tags/v1.0.1"));
    large.body["padding"] = json!("x".repeat(1024 * 1024));
    let (status, answer) = w.deliver(&large, "large-1");
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["reason"].as_str().is_some_and(|r| r.contains("tag")),
        "{answer}"
    );
    let body = serde_json::to_vec(&large.body).expect("JSON");
    let (status, answer) = w.post(
        "push",
        "large-2",
        body,
        &sign(Forge::Github, b"not this body", SECRET),
    );
    assert_eq!(status, 401, "{answer}");

    // More than 5 MiB: refused before anything reads it.
    let mut huge = github_push(&sha);
    huge.body["padding"] = json!("x".repeat(5 * 1024 * 1024 + 1));
    let (status, answer) = w.deliver(&huge, "huge-1");
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        answer["error"], "the request body is larger than 5 MiB",
        "{answer}"
    );
    w.server.conforms("Error", &answer);

    // A Bitbucket-style unknown forge name.
    let (status, _) = w.server.request("POST", "/hooks/gitea", None, None);
    assert_eq!(status, 404);
    assert!(w.runs().is_empty(), "{:?}", w.runs());
}

fn secret_pipeline(name: &str, on: &str, text: &str) -> String {
    pipeline(
        name,
        &format!("on: {on}\nsecrets: [api_token]\n"),
        &format!("echo \"{text} token=$TOKEN\"\nsleep 1"),
        "    env:\n      TOKEN: \"{{secrets.api_token}}\"\n",
    )
}

// 5. A same-repository pull request runs the pipeline as defined at its head and keeps one
// comment up to date.
#[test]
fn a_github_pull_request_runs_its_head_definition_and_edits_one_comment() {
    let secret = "pr-s3cr3t-value-5d1e";
    let (remote, _) = remote_with(&[(
        "ci.yaml",
        &secret_pipeline("ci", "{pullRequest: {}}", "text-from-main"),
    )]);
    remote.write(
        "ci.yaml",
        &secret_pipeline("ci", "{pullRequest: {}}", "text-from-branch"),
    );
    let head = remote.push_branch("feature", "change the text");
    let w = World::start(Forge::Github, remote, "0s");
    let (status, body) = w.server.put_json(
        "/api/v1/secrets/api_token",
        // A pull request's head is not a protected ref: only released secrets reach it.
        &json!({ "value": secret, "unprotected": true }),
    );
    assert_eq!(status, 204, "{body}");

    let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
        .head(Forge::Github, &head)
        .set("/pull_request/head/ref", json!("feature"))
        .set("/number", json!(2));
    w.accept(&pr, "pr-2-opened");

    let run = w.wait_run("ci", "pullRequest");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["git"]["sha"], head.as_str(), "{run}");
    let log = w.log(&run);
    assert!(log.contains("text-from-branch"), "{log}");
    assert!(!log.contains("text-from-main"), "{log}");
    assert!(!log.contains(secret), "{log}");

    w.wait_state(&head, "success");
    w.server
        .wait_until("the PR comment to show the run succeeded", WAIT, || {
            w.fake
                .comments(2)
                .iter()
                .any(|(_, body)| body.contains("succeeded"))
        });
    let comments = w.fake.comments(2);
    assert_eq!(comments.len(), 1, "one comment: {comments:?}");
    let (comment_id, text) = &comments[0];
    assert!(text.contains("`ci`"), "{text}");
    assert!(
        text.contains(&format!("{}/runs/{}", w.server.url(), id(&run))),
        "{text}"
    );

    let calls = w.fake.requests();
    let lines: Vec<String> = calls.iter().map(Recorded::line).collect();
    let create = format!("/repos/{FORGE_ID}/issues/2/comments");
    let edit = format!("/repos/{FORGE_ID}/issues/comments/{comment_id}");
    let posts = calls
        .iter()
        .filter(|r| r.method == "POST" && r.path == create)
        .count();
    assert_eq!(posts, 1, "exactly one comment created: {lines:?}");
    let patches: Vec<&Recorded> = calls.iter().filter(|r| r.method == "PATCH").collect();
    assert!(!patches.is_empty(), "later writes edit it: {lines:?}");
    assert!(patches.iter().all(|r| r.path == edit), "{lines:?}");
    for r in &calls {
        let allowed = (r.method == "POST"
            && (r.path == create || r.path == format!("/repos/{FORGE_ID}/statuses/{head}")))
            || (r.method == "PATCH" && r.path == edit)
            || (r.method == "GET" && r.path == create)
            // Who the token is, asked once before looking for Gantry's comment.
            || (r.method == "GET" && r.path == "/user");
        assert!(allowed, "unexpected call {}: {lines:?}", r.line());
        assert!(!r.body.contains(secret), "{} leaks the secret", r.line());
    }
}

/// The forge sees the same from a run on Argo as from a local one: statuses pending then success
/// on the head, and one PR comment, created once and edited, showing the run, its steps and its
/// output, without the secret.
#[test]
fn a_pull_request_on_argo_reports_like_one_run_locally() {
    let secret = "argo-pr-s3cr3t-77aa";
    let mut comments = Vec::new();
    for on_argo in [false, true] {
        let stand_in = crate::support::argo::ArgoStandIn::start();
        let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: ci\non: {pullRequest: {}}\nsecrets: [api_token]\nsteps:\n  - name: test\n    script: 'echo \"testing with $T\"; printf ok > \"$GANTRY_OUTPUTS/verdict\"'\n    env: {T: '{{secrets.api_token}}'}\n    outputs: [verdict]\n";
        let (remote, _) = remote_with(&[("ci.yaml", text)]);
        let head = remote.push_branch("feature", "a change");
        let w = World::start_on(Forge::Github, remote, "0s", on_argo.then_some(&stand_in));
        let (status, body) = w.server.put_json(
            "/api/v1/secrets/api_token",
            &json!({ "value": secret, "unprotected": true }),
        );
        assert_eq!(status, 204, "{body}");
        let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
            .head(Forge::Github, &head)
            .set("/pull_request/head/ref", json!("feature"))
            .set("/number", json!(4));
        w.accept(&pr, "pr-4-opened");
        let run = w.wait_run("ci", "pullRequest");
        assert_eq!(run["status"], "succeeded", "argo: {on_argo}: {run}");
        assert_eq!(run["executor"], if on_argo { "cluster" } else { "local" });
        w.wait_state(&head, "success");
        let states = w.states(&head);
        assert!(
            states.iter().all(|s| s == "pending" || s == "success"),
            "{states:?}"
        );
        w.server
            .wait_until("the PR comment to show the run succeeded", WAIT, || {
                w.fake
                    .comments(4)
                    .iter()
                    .any(|(_, body)| body.contains("succeeded"))
            });
        let all = w.fake.comments(4);
        assert_eq!(all.len(), 1, "{all:?}");
        let text = all[0].1.clone();
        assert!(!text.contains(secret), "{text}");
        assert!(!w.log(&run).contains(secret));
        // What differs between two runs: their ids, commits, servers and durations.
        let normal: String = text
            .replace(&id(&run), "RUN")
            .replace(&head[..7], "SHA")
            .replace(&w.server.url(), "URL")
            .split_whitespace()
            .filter(|w| !w.ends_with('s') || !w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join(" ");
        comments.push(normal);
    }
    assert_eq!(
        comments[0], comments[1],
        "the same comment on both executors"
    );
}

/// A pipeline `deploy` that runs on pushes to main and feature branches and prints its secret
/// `apply_key` after `label`.
fn apply_pipeline(label: &str) -> String {
    pipeline(
        "deploy",
        "on: {push: {branches: [main, \"feature/*\"]}}\nsecrets: [apply_key]\n",
        &format!("echo \"{label} apply=$KEY\""),
        "    env:\n      KEY: \"{{secrets.apply_key}}\"\n",
    )
}

/// A push of `sha` to `branch`.
fn push_to(sha: &str, branch: &str) -> Hook {
    github_push(sha).set("/ref", json!(format!("refs/heads/{branch}")))
}

/// Waits until `count` runs at commit `sha` have ended; returns them.
fn wait_runs_at(w: &World, sha: &str, count: usize) -> Vec<Value> {
    let mut found = Vec::new();
    w.server
        .wait_until(&format!("{count} runs at {sha} to end"), WAIT, || {
            found = w
                .runs()
                .into_iter()
                .filter(|r| r["git"]["sha"] == sha)
                .collect();
            found.len() == count
                && found
                    .iter()
                    .all(|r| r["status"] != "queued" && r["status"] != "running")
        });
    found
}

// 5b. Secrets by ref: a feature-branch push gets no protected secret and its run says why; a
// push to the watched branch gets it; released with `unprotected`, it reaches the branch too,
// masked.
#[test]
fn a_feature_branch_push_gets_only_unprotected_secrets() {
    let value = "apply-s3cr3t-4b1d";
    let (remote, _) = remote_with(&[("deploy.yaml", &apply_pipeline("deploy"))]);
    let w = World::start(Forge::Github, remote, "0s");
    let (status, body) = w
        .server
        .put_json("/api/v1/secrets/apply_key", &json!({ "value": value }));
    assert_eq!(status, 204, "{body}");

    let feature = w.remote.push_branch("feature/x", "a feature");
    w.accept(&push_to(&feature, "feature/x"), "feature-1");
    let run = wait_runs_at(&w, &feature, 1).remove(0);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["git"]["ref"], "refs/heads/feature/x", "{run}");
    assert_eq!(
        run["message"],
        "not started: secret `apply_key` is protected: runs at `refs/heads/feature/x` get only \
         secrets set with --unprotected; protected refs of `infra`: main",
        "{run}"
    );
    let detail = w.server.get_json(&format!("/api/v1/runs/{}", id(&run)));
    assert_eq!(detail["steps"][0]["state"], "skipped", "{detail}");
    assert!(!w.log(&run).contains("apply="), "no step ran");

    let main = w.remote.push_branch("main", "to main");
    w.accept(&push_to(&main, "main"), "main-1");
    let run = wait_runs_at(&w, &main, 1).remove(0);
    assert_eq!(run["status"], "succeeded", "{run}");
    let log = w.log(&run);
    assert!(log.contains("deploy apply=***"), "{log}");
    assert!(!log.contains(value), "{log}");

    let (status, body) = w.server.put_json(
        "/api/v1/secrets/apply_key",
        &json!({ "value": value, "unprotected": true }),
    );
    assert_eq!(status, 204, "{body}");
    let listed = w.server.get_json("/api/v1/secrets");
    assert_eq!(
        listed["secrets"],
        json!([{"pipeline": null, "name": "apply_key", "unprotected": true}]),
        "{listed}"
    );
    let later = w.remote.push_branch("feature/x", "more of the feature");
    w.accept(&push_to(&later, "feature/x"), "feature-2");
    let run = wait_runs_at(&w, &later, 1).remove(0);
    assert_eq!(run["status"], "succeeded", "{run}");
    let log = w.log(&run);
    assert!(log.contains("deploy apply=***"), "{log}");
    assert!(!log.contains(value), "{log}");
    for r in w.fake.requests() {
        assert!(!r.body.contains(value), "{} leaks the secret", r.line());
    }
}

// 5c. A file on a branch cannot claim another pipeline's scope by naming itself after it: only
// the pipeline's own file (the catalog's path on the watched branch) gets its scoped secrets.
#[test]
fn a_renamed_file_on_a_branch_does_not_get_another_pipelines_secrets() {
    let value = "scoped-s3cr3t-77c2";
    let (remote, _) = remote_with(&[("deploy.yaml", &apply_pipeline("genuine"))]);
    let w = World::start(Forge::Github, remote, "0s");
    w.server
        .wait_until("the catalog to know infra/deploy", WAIT, || {
            w.server.get("/api/v1/pipelines/infra/deploy").0 == 200
        });
    // Released to every ref, so only the scope rule can keep it from the impostor.
    let (status, body) = w.server.put_json(
        "/api/v1/pipelines/infra/deploy/secrets/apply_key",
        &json!({ "value": value, "unprotected": true }),
    );
    assert_eq!(status, 204, "{body}");

    w.remote.write("evil.yaml", &apply_pipeline("evil"));
    let sha = w.remote.push_branch("feature/evil", "claim deploy's scope");
    w.accept(&push_to(&sha, "feature/evil"), "evil-1");
    // Both files at the commit name `deploy` and match the push.
    let runs = wait_runs_at(&w, &sha, 2);
    let (failed, ok): (Vec<&Value>, Vec<&Value>) =
        runs.iter().partition(|r| r["status"] == "failed");
    assert_eq!((failed.len(), ok.len()), (1, 1), "{runs:?}");
    let evil = failed[0];
    let message = evil["message"].as_str().unwrap_or_default();
    // The hint names the server: `gantry secrets set` alone would write a data dir the server
    // holds locked.
    let hint = format!(
        "not started: secret `apply_key` not set (gantry --server {} secrets set apply_key, value \
         on stdin)",
        w.server.url()
    );
    assert!(message.starts_with(&hint), "{message}");
    assert!(
        message.contains(
            "the variables and secrets of `infra/deploy` go only to its file \
             `.gantry/pipelines/deploy.yaml`, and this run's file is \
             `.gantry/pipelines/evil.yaml`, so it sees only global ones"
        ),
        "{message}"
    );
    assert!(
        !w.log(evil).contains("apply="),
        "no step of the impostor ran"
    );
    let genuine = ok[0];
    assert_eq!(genuine["status"], "succeeded", "{genuine}");
    let log = w.log(genuine);
    assert!(log.contains("genuine apply=***"), "{log}");
    assert!(!log.contains(value), "{log}");
}

// 6. A pipeline that fails validation at the PR head gets a failing status naming the error.
#[test]
fn a_pipeline_invalid_at_the_pr_head_gets_a_failing_status() {
    let good = pipeline("lint", "on: {pullRequest: {}}\n", "echo lint", "");
    let (remote, _) = remote_with(&[("lint.yaml", &good)]);
    remote.write("lint.yaml", &good.replace("steps:", "stpes:"));
    let head = remote.push_branch("broken", "misspell steps");
    let w = World::start(Forge::Github, remote, "0s");
    let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
        .head(Forge::Github, &head)
        .set("/pull_request/head/ref", json!("broken"));
    w.accept(&pr, "pr-invalid");

    w.wait_state(&head, "failure");
    let calls = w.status_calls();
    let failing = calls
        .iter()
        .find(|r| status_field(w.forge, r, "state") == "failure")
        .expect("a failing status");
    assert_eq!(status_field(w.forge, failing, "context"), "gantry/lint");
    let description = status_field(w.forge, failing, "description");
    assert!(
        description.starts_with("invalid pipeline: ") && description.contains("stpes"),
        "{description}"
    );
    assert!(description.chars().count() <= 140, "{description}");
    assert!(
        status_field(w.forge, failing, "target_url")
            == format!("{}/pipelines/infra/lint", w.server.url()),
        "{:?}",
        failing.json()
    );
    w.server
        .wait_until("the PR comment listing the error", WAIT, || {
            w.fake
                .comments(2)
                .iter()
                .any(|(_, body)| body.contains("stpes"))
        });
    assert!(w.runs().is_empty(), "{:?}", w.runs());
}

fn deploy_pipeline(text: &str) -> String {
    pipeline(
        "deploy",
        "on: {pullRequest: {}, comment: true}\nparameters:\n  - name: environment\n    type: \
         enum\n    enum: [dev, prod]\n    default: dev\n",
        &format!("echo \"{text} env=$ENVIRONMENT\""),
        "    env:\n      ENVIRONMENT: \"{{params.environment}}\"\n",
    )
}

fn github_comment(pr: u64, author: &str, text: &str) -> Hook {
    // Written now: after the head it is about was pushed.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Hook::sample(Forge::Github, "comment-run.json")
        .set("/comment/created_at", json!(now))
        .set("/issue/number", json!(pr))
        .set("/comment/body", json!(text))
        .set("/comment/user/login", json!(author))
        .set("/sender/login", json!(author))
}

/// Waits for a comment on `pr` containing `needle`; returns its body.
fn wait_comment(w: &World, pr: u64, needle: &str) -> String {
    let mut found = String::new();
    w.server.wait_until(
        &format!("a comment on #{pr} with {needle:?}"),
        WAIT,
        || match w
            .fake
            .comments(pr)
            .into_iter()
            .find(|(_, b)| b.contains(needle))
        {
            Some((_, body)) => {
                found = body;
                true
            }
            None => false,
        },
    );
    found
}

// 7. A fork's pull request never runs on its own; a `/gantry run` comment by a user with write
// access does, at the fork's head, with the pipeline as the watched branch defines it.
#[test]
fn a_fork_pr_runs_only_on_a_comment_by_a_writer() {
    // The steps read a file of the checked-out code: the fork's.
    let remote = Remote::new();
    remote.write(
        "deploy.yaml",
        &deploy_pipeline("from-main code=$(cat code.txt)").replace(
            "steps:\n",
            "steps:\n  - {name: checkout, template: gantry/git-checkout@v1}\n",
        ),
    );
    remote.repo.write("code.txt", "main-code\n");
    remote.repo.commit_and_push("pipelines");
    // The fork's commit lives only under the forge's PR ref, not on any branch.
    remote.write("deploy.yaml", &deploy_pipeline("from-fork"));
    remote.repo.write("code.txt", "fork-code\n");
    remote.repo.git(&["add", "-A"]);
    remote.repo.git(&["commit", "-q", "-m", "fork change"]);
    let fork_head = remote.repo.head();
    remote.push_ref("refs/pull/7/head");
    let w = World::start(Forge::Github, remote, "0s");
    w.fake.set_pr_head(7, &fork_head);
    w.fake.set_permission("maintainer", "write");
    w.fake.set_permission("visitor", "read");

    let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
        .head(Forge::Github, &fork_head)
        .set("/number", json!(7))
        .set("/pull_request/head/ref", json!("fork-branch"))
        .set("/pull_request/head/repo/full_name", json!("stranger/infra"));
    w.accept(&pr, "fork-pr");
    wait_comment(&w, 7, "comes from a fork");
    assert!(
        w.runs().is_empty(),
        "a fork PR runs nothing: {:?}",
        w.runs()
    );

    // No write access: a reply saying why, no run.
    w.accept(
        &github_comment(7, "visitor", "/gantry run deploy environment=prod"),
        "comment-visitor",
    );
    let refusal = wait_comment(&w, 7, "@visitor");
    assert!(refusal.contains("write access"), "{refusal}");
    // A parameter error: a reply naming the parameter, no run.
    w.accept(
        &github_comment(7, "maintainer", "/gantry run deploy environment=staging"),
        "comment-bad-param",
    );
    let error = wait_comment(&w, 7, "not started");
    assert!(
        error.contains("@maintainer") && error.contains("environment"),
        "{error}"
    );
    assert!(w.runs().is_empty(), "{:?}", w.runs());

    w.accept(
        &github_comment(7, "maintainer", "/gantry run deploy environment=prod"),
        "comment-run",
    );
    let run = w.wait_run("deploy", "comment");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["git"]["sha"], fork_head.as_str(), "{run}");
    assert_eq!(run["parameters"]["environment"], "prod", "{run}");
    let log = w.log(&run);
    // The pipeline as the watched branch defines it, on the fork's code.
    assert!(log.contains("from-main code=fork-code env=prod"), "{log}");
    assert!(!log.contains("from-fork"), "{log}");
    assert_eq!(w.runs().len(), 1, "{:?}", w.runs());
    w.wait_state(&fork_head, "success");
    let permission_checks = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/permission"))
        .count();
    assert!(permission_checks >= 2, "each command checks its author");
}

/// Asserts `states` go forward through `order` (repeats allowed) and end with its last.
fn assert_forward(states: &[String], order: &[&str]) {
    let ranks: Vec<usize> = states
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("unexpected state {s} in {states:?}"))
        })
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{states:?}");
    assert_eq!(
        states.last().map(String::as_str),
        order.last().copied(),
        "{states:?}"
    );
}

// 8. GitLab: a push and a merge request.
#[test]
fn gitlab_push_and_merge_request_report_statuses_and_one_note() {
    let build = build_pipeline();
    let mr_pipeline = pipeline(
        "mr",
        "on: {pullRequest: {}}\n",
        "echo mr-branch\nsleep 1",
        "",
    );
    let (remote, main_sha) = remote_with(&[("build.yaml", &build)]);
    remote.write("mr.yaml", &mr_pipeline);
    // The branch also changes `build`, so its push pipeline is not what the MR runs.
    let head = remote.push_branch("feature", "add mr");
    let w = World::start(Forge::Gitlab, remote, "0s");

    let push = Hook::sample(Forge::Gitlab, "push.json")
        .head(Forge::Gitlab, &main_sha)
        .set("/before", json!(ZERO));
    w.accept(&push, "gl-push-1");
    let run = w.wait_run("build", "push");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["git"]["sha"], main_sha.as_str(), "{run}");
    w.wait_state(&main_sha, "success");
    let states = w.states(&main_sha);
    assert!(states.iter().any(|s| s == "running"), "{states:?}");
    assert_forward(&states, &["pending", "running", "success"]);
    let status_path = format!("/api/v4/projects/acme%2Finfra/statuses/{main_sha}");
    for r in w.status_calls() {
        assert!(
            r.path == status_path || r.path.contains("/statuses/"),
            "{}",
            r.line()
        );
        if r.path.contains(&main_sha) {
            assert_eq!(r.path, status_path);
            assert_eq!(
                r.form().get("name").map(String::as_str),
                Some("gantry/build")
            );
        }
    }

    let mr = Hook::sample(Forge::Gitlab, "merge-request-opened.json")
        .head(Forge::Gitlab, &head)
        .set("/object_attributes/source_branch", json!("feature"))
        .set("/object_attributes/target_branch", json!("main"));
    w.accept(&mr, "gl-mr-1");
    let run = w.wait_run("mr", "pullRequest");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["git"]["sha"], head.as_str(), "{run}");
    w.wait_state(&head, "success");
    w.server
        .wait_until("the MR note to show success", WAIT, || {
            w.fake
                .comments(1)
                .iter()
                .any(|(_, b)| b.contains("`mr`") && b.contains("succeeded"))
        });
    let notes = w.fake.comments(1);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note_id = &notes[0].0;
    let calls = w.fake.requests();
    let lines: Vec<String> = calls.iter().map(Recorded::line).collect();
    let notes_path = "/api/v4/projects/acme%2Finfra/merge_requests/1/notes";
    let created = calls
        .iter()
        .filter(|r| r.method == "POST" && r.path == notes_path)
        .count();
    assert_eq!(created, 1, "{lines:?}");
    let edits: Vec<&Recorded> = calls.iter().filter(|r| r.method == "PUT").collect();
    assert!(!edits.is_empty(), "{lines:?}");
    assert!(
        edits
            .iter()
            .all(|r| r.path == format!("{notes_path}/{note_id}")),
        "{lines:?}"
    );
    // The MR's head states: the `mr` pipeline went forward to success.
    let mr_states: Vec<String> = w
        .status_calls()
        .iter()
        .filter(|r| {
            r.path.contains(&head) && r.form().get("name").map(String::as_str) == Some("gantry/mr")
        })
        .map(|r| status_field(w.forge, r, "state"))
        .collect();
    assert_forward(&mr_states, &["pending", "running", "success"]);
}

// 9. Bitbucket: a push, and a pull request whose payload carries a 12-character hash.
#[test]
fn bitbucket_push_and_short_hash_pull_request() {
    let bb = Forge::Bitbucket;
    let pr_pipeline = pipeline("pr", "on: {pullRequest: {}}\n", "echo pr-branch", "");
    let (remote, main_sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    remote.write("pr.yaml", &pr_pipeline);
    let head = remote.push_branch("feature", "add pr");
    let w = World::start(bb, remote, "0s");

    let push = Hook::sample(bb, "push.json")
        .head(bb, &main_sha)
        .set("/push/changes/0/old", Value::Null);
    w.accept(&push, "bb-push-1");
    let run = w.wait_run("build", "push");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["git"]["sha"], main_sha.as_str(), "{run}");
    w.wait_state(&main_sha, "SUCCESSFUL");
    let states = w.states(&main_sha);
    assert_forward(&states, &["INPROGRESS", "SUCCESSFUL"]);
    assert!(states.len() >= 2, "{states:?}");
    let path = format!("/2.0/repositories/{FORGE_ID}/commit/{main_sha}/statuses/build");
    for r in w.status_calls() {
        assert_eq!(r.path, path);
        assert_eq!(
            status_field(bb, &r, "target_url"),
            format!("{}/runs/{}", w.server.url(), id(&run))
        );
    }

    let short = &head[..12];
    let pr = Hook::sample(bb, "pull-request-opened.json")
        .head(bb, short)
        .set("/pullrequest/source/branch/name", json!("feature"));
    assert!(pr.body.to_string().contains(short));
    assert!(!pr.body.to_string().contains(&head));
    w.accept(&pr, "bb-pr-1");
    let run = w.wait_run("pr", "pullRequest");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["git"]["sha"],
        head.as_str(),
        "resolved to the full sha: {run}"
    );
    assert!(w.log(&run).contains("pr-branch"));
    // Statuses go to the full sha.
    w.wait_state(&head, "SUCCESSFUL");
}

// 10a. Failing status calls are retried until they arrive; a newer state replaces a waiting one.
#[test]
fn status_writes_survive_server_errors_and_rate_limits() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");
    w.fake
        .fail_matching(Some("POST"), Some("/statuses/"), 1, Fault::ServerError);
    w.fake.fail_matching(
        Some("POST"),
        Some("/statuses/"),
        1,
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    w.accept(&github_push(&sha), "retry-push");
    let run = w.wait_run("build", "push");
    assert_eq!(run["status"], "succeeded", "{run}");
    // The first `success` call may be one the fake refuses: wait for the two refused calls and
    // the one that arrives (a slow machine must not see the refused one as the last).
    w.server
        .wait_until("two failed calls and a success", WAIT, || {
            let states = w.states(&sha);
            states.len() >= 3 && states.last().is_some_and(|s| s == "success")
        });
    let states = w.states(&sha);
    let first_success = states.iter().position(|s| s == "success").expect("success");
    // Nothing stale after the success: watch a little longer than one retry interval.
    std::thread::sleep(Duration::from_secs(3));
    let states = w.states(&sha);
    assert!(
        states[first_success..].iter().all(|s| s == "success"),
        "a pending after success: {states:?}"
    );
    assert_eq!(states.last().map(String::as_str), Some("success"));
    let run = w.server.get_json(&format!("/api/v1/runs/{}", id(&run)));
    assert!(
        run.get("writeback_error").is_none_or(Value::is_null),
        "{run}"
    );
    // The refused writes are counted by forge and status code.
    let (_, metrics) = w.server.get("/metrics");
    for line in [
        "gantry_outbox_failures_total{forge=\"github\",code=\"500\"} 1",
        "gantry_outbox_failures_total{forge=\"github\",code=\"429\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

// 10b. A write-back still waiting when Gantry stops is delivered after it starts again.
#[test]
fn a_queued_status_is_delivered_after_a_restart() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let mut w = World::start(Forge::Github, remote, "0s");
    w.fake
        .fail_matching(Some("POST"), Some("/statuses/"), 10_000, Fault::ServerError);
    w.accept(&github_push(&sha), "restart-push");
    let run = w.wait_run("build", "push");
    assert_eq!(run["status"], "succeeded", "{run}");
    w.server.wait_until("two refused status calls", WAIT, || {
        w.status_calls().len() >= 2
    });
    assert!(!w.states(&sha).is_empty());

    let exit = w.server.stop();
    assert!(exit.success(), "{exit}");
    w.fake.clear_faults();
    let before = w.fake.requests().len();
    w.server.restart();
    w.server
        .wait_until("the success status after the restart", WAIT, || {
            w.fake.requests()[before..].iter().any(|r| {
                r.path.contains("/statuses/")
                    && status_field(Forge::Github, r, "state") == "success"
            })
        });
    let after: Vec<String> = w.fake.requests()[before..]
        .iter()
        .map(|r| status_field(Forge::Github, r, "state"))
        .collect();
    assert_eq!(
        after.last().map(String::as_str),
        Some("success"),
        "{after:?}"
    );
    assert!(
        !after.iter().any(|s| s == "pending"),
        "the newer state replaced the queued one: {after:?}"
    );
}

// 11. A delivery whose processing fails for a passing reason (the git server is briefly
// unreachable) is not lost: it stays queued and is tried again with backoff; the forge's
// redelivery (same id) is a duplicate of a delivery still in hand.
#[test]
fn a_delivery_that_failed_on_a_git_outage_runs_once_the_server_is_back() {
    let (remote, _) = remote_with(&[("build.yaml", &build_pipeline())]);
    let bare = remote.repo.bare_dir().to_owned();
    let hidden = bare.with_extension("away");
    let w = World::start(Forge::Github, remote, "0s");
    // The first sync mirrors the repository; the push below brings a commit the mirror does not
    // have, so processing it needs a fetch.
    w.server.wait_until("the first sync", WAIT, || {
        w.server.get_json("/api/v1/sources")["sources"][0]["head"].is_string()
    });
    w.remote.repo.write("README.md", "one more commit\n");
    let sha = w.remote.repo.commit_and_push("after the first sync");
    // The git server loses the repository for a moment.
    std::fs::rename(&bare, &hidden).expect("hide the repository");
    w.accept(&github_push(&sha), "outage-push");
    // Deliveries are processed in order: once the reply to a later comment is out, the push
    // was processed (and failed: the repository was away).
    w.accept(
        &github_comment(3, "someone", "/gantry bogus"),
        "outage-marker",
    );
    wait_comment(&w, 3, "unknown command");
    assert!(w.runs().is_empty(), "{:?}", w.runs());
    std::fs::rename(&hidden, &bare).expect("bring the repository back");
    // The forge redelivers (GitHub's "Redeliver" keeps the delivery id).
    let (status, answer) = w.deliver(&github_push(&sha), "outage-push");
    assert!((200..300).contains(&status), "{answer}");
    let run = w.wait_run("build", "push");
    assert_eq!(run["git"]["sha"], sha.as_str(), "{run}");
}

// 12. A fork cannot shadow a pipeline of the watched branch, enable `on.comment` on one, or
// add one: which pipelines exist and which take commands is read from the watched branch.
#[test]
fn a_fork_pr_cannot_shadow_a_base_pipeline_or_enable_comment_commands() {
    let plan = |text: &str, on: &str| pipeline("plan", on, &format!("echo {text}"), "");
    let (remote, _) = remote_with(&[("plan.yaml", &plan("base-plan", "on: {push: {}}\n"))]);
    // The fork turns comments on for `plan` and adds a pipeline of its own.
    remote.write(
        "plan.yaml",
        &plan("fork-plan", "on: {push: {}, comment: true}\n"),
    );
    remote.write(
        "evil.yaml",
        &pipeline("evil", "on: {comment: true}\n", "echo evil", ""),
    );
    remote.repo.git(&["add", "-A"]);
    remote.repo.git(&["commit", "-q", "-m", "fork change"]);
    let fork_head = remote.repo.head();
    remote.push_ref("refs/pull/8/head");
    let w = World::start(Forge::Github, remote, "0s");
    w.fake.set_pr_head(8, &fork_head);
    w.fake.set_permission("maintainer", "write");
    let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
        .head(Forge::Github, &fork_head)
        .set("/number", json!(8))
        .set("/pull_request/head/ref", json!("main"))
        .set("/pull_request/head/repo/full_name", json!("stranger/infra"));
    w.accept(&pr, "fork-pr-8");
    wait_comment(&w, 8, "comes from a fork");

    w.accept(
        &github_comment(8, "maintainer", "/gantry run plan"),
        "fork-plan",
    );
    let refusal = wait_comment(&w, 8, "does not take comment commands");
    assert!(refusal.contains("watched branch"), "{refusal}");
    w.accept(
        &github_comment(8, "maintainer", "/gantry run evil"),
        "fork-evil",
    );
    let missing = wait_comment(&w, 8, "there is no pipeline");
    assert!(
        missing.contains("`plan`") && !missing.contains("`evil`,"),
        "{missing}"
    );
    w.accept(
        &github_comment(8, "maintainer", "/gantry help"),
        "fork-help",
    );
    let help = wait_comment(&w, 8, "Gantry commands");
    assert!(
        !help.contains("`evil`") && !help.contains("`plan`"),
        "{help}"
    );
    assert!(w.runs().is_empty(), "{:?}", w.runs());
}

// 13. A comment command runs the head its author saw: written before the head moved, or
// naming another commit, it runs nothing and says why; naming the head, it runs.
#[test]
fn a_comment_command_after_a_newer_push_runs_nothing() {
    let deploy = pipeline("deploy", "on: {comment: true}\n", "echo deployed", "");
    let (remote, _) = remote_with(&[("deploy.yaml", &deploy)]);
    remote.repo.write("README.md", "first\n");
    let first = remote.push_branch("feature", "first");
    let w = World::start(Forge::Github, remote, "0s");
    w.fake.set_permission("maintainer", "write");
    let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
        .head(Forge::Github, &first)
        .set("/number", json!(9))
        .set("/pull_request/head/ref", json!("feature"));
    w.accept(&pr, "pr-9");
    // The comment is written; then (before Gantry reads it) a newer commit is pushed.
    let written = chrono::Utc::now() - chrono::Duration::seconds(30);
    w.remote.repo.write("README.md", "second\n");
    let second = w.remote.push_branch("feature", "second");
    w.fake.set_pr_head(9, &second);
    let late = github_comment(9, "maintainer", "/gantry run deploy").set(
        "/comment/created_at",
        json!(written.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    w.accept(&late, "late-comment");
    let moved = wait_comment(&w, 9, "moved");
    assert!(
        moved.contains("@maintainer") && moved.contains(&second[..7]),
        "{moved}"
    );
    // Naming the commit it was about: also nothing.
    w.accept(
        &github_comment(
            9,
            "maintainer",
            &format!("/gantry run deploy @{}", &first[..8]),
        ),
        "named-old",
    );
    let stale = wait_comment(&w, 9, "is not the head");
    assert!(stale.contains(&first[..8]), "{stale}");
    assert!(w.runs().is_empty(), "{:?}", w.runs());
    // Naming the head: runs there.
    w.accept(
        &github_comment(
            9,
            "maintainer",
            &format!("/gantry run deploy @{}", &second[..8]),
        ),
        "named-head",
    );
    let run = w.wait_run("deploy", "comment");
    assert_eq!(run["git"]["sha"], second.as_str(), "{run}");
    assert_eq!(w.runs().len(), 1, "{:?}", w.runs());
}

// 14. A replay: a genuine body delivered again under a new delivery id is a duplicate.
#[test]
fn a_replayed_body_with_a_new_delivery_id_runs_nothing() {
    let (remote, sha) = remote_with(&[("build.yaml", &build_pipeline())]);
    let w = World::start(Forge::Github, remote, "0s");
    let hook = github_push(&sha);
    w.accept(&hook, "replay-1");
    let (status, answer) = w.deliver(&hook, "replay-2");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");
    w.wait_run("build", "push");
    w.wait_state(&sha, "success");
    // The same push with one byte changed is another delivery.
    let other = github_push(&sha).set("/pusher/name", json!("someone-else"));
    w.accept(&other, "replay-3");
    w.server
        .wait_until("the second push's run", WAIT, || w.runs().len() == 2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.runs().len(), 2, "{:?}", w.runs());
}

// 15. Exactly once across a crash: gantry is killed (SIGKILL) while it queues a delivery's
// runs; after the restart the delivery is processed again and queues only what was missing.
#[test]
fn a_kill_9_between_queueing_and_finishing_a_delivery_queues_nothing_twice() {
    // Queueing takes ~2.5 ms a run here: 80 runs leave the poll a window of ~200 ms.
    const PIPELINES: usize = 80;
    let files: Vec<(String, String)> = (0..PIPELINES)
        .map(|i| {
            let name = format!("p{i:02}");
            let text = pipeline(&name, "on: {push: {}}\n", "echo ok", "");
            (format!("{name}.yaml"), text)
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let (remote, sha) = remote_with(&refs);
    let mut w = World::start(Forge::Github, remote, "0s");
    w.accept(&github_push(&sha), "crash-push");
    // Kill as soon as the first run exists: the delivery is then being processed. The poll is
    // a bare list read (no schema check) so that it sees the first run early.
    let started = std::time::Instant::now();
    let mut first_seen = 0;
    while started.elapsed() < WAIT {
        let list = w.server.get_json("/api/v1/runs?limit=1000");
        first_seen = list["runs"].as_array().map_or(0, Vec::len);
        if first_seen > 0 {
            break;
        }
    }
    let exit = w.server.kill9();
    assert!(!exit.success(), "{exit}");
    assert!(first_seen > 0, "no run appeared\n{}", w.server.logs());
    // Killed before the delivery had queued all its runs (it finishes only after the last).
    assert!(first_seen < PIPELINES, "{first_seen} runs before the kill");
    w.server.restart();
    w.server.wait_until("a run of every pipeline", WAIT, || {
        w.runs().len() >= PIPELINES
    });
    // The delivery is done: a later delivery (processed after it) has answered.
    w.accept(
        &github_comment(3, "someone", "/gantry bogus"),
        "crash-marker",
    );
    wait_comment(&w, 3, "unknown command");
    let runs = w.runs();
    let mut per_pipeline: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &runs {
        *per_pipeline
            .entry(r["pipeline"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_pipeline.len(), PIPELINES, "{per_pipeline:?}");
    assert!(
        per_pipeline.values().all(|n| *n == 1),
        "a pipeline queued twice: {per_pipeline:?}"
    );
}

/// A Bitbucket comment on pull request #1 at `head` by the user with `nickname` and
/// `account_id`, written now.
fn bitbucket_comment(head: &str, nickname: &str, account_id: &str, text: &str) -> Hook {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Hook::sample(Forge::Bitbucket, "comment-run.json")
        .head(Forge::Bitbucket, head)
        .set("/comment/content/raw", json!(text))
        .set("/comment/created_on", json!(now))
        .set("/comment/user/nickname", json!(nickname))
        .set("/comment/user/display_name", json!(nickname))
        .set("/comment/user/account_id", json!(account_id))
        .set("/comment/user/uuid", json!(format!("{{{account_id}}}")))
}

// 16. Bitbucket commenters are who their account id says: a nickname another user with write
// access has grants nothing.
#[test]
fn a_bitbucket_nickname_clash_grants_nothing() {
    let bb = Forge::Bitbucket;
    let deploy = pipeline("deploy", "on: {comment: true}\n", "echo deployed", "");
    let (remote, _) = remote_with(&[("deploy.yaml", &deploy)]);
    let head = remote.push_branch("feature", "a change");
    let w = World::start(bb, remote, "0s");
    w.fake.set_permission("557058:maint", "write");
    w.fake.set_nickname("557058:maint", "maintainer");
    let pr = Hook::sample(bb, "pull-request-opened.json")
        .head(bb, &head)
        .set("/pullrequest/id", json!(1))
        .set("/pullrequest/source/branch/name", json!("feature"));
    w.accept(&pr, "bb-pr-clash");

    // Someone else who took the nickname `maintainer`.
    w.accept(
        &bitbucket_comment(&head, "maintainer", "557058:impostor", "/gantry run deploy"),
        "bb-impostor",
    );
    let refusal = wait_comment(&w, 1, "write access");
    assert!(refusal.contains("@maintainer"), "{refusal}");
    assert!(w.runs().is_empty(), "{:?}", w.runs());
    let asked: Vec<String> = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/permissions/repositories/"))
        .map(|r| r.query_pairs().get("q").cloned().unwrap_or_default())
        .collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|l| !l.contains("nickname")),
        "{asked:?}"
    );
    // The maintainer's own account.
    w.accept(
        &bitbucket_comment(&head, "maintainer", "557058:maint", "/gantry run deploy"),
        "bb-maintainer",
    );
    let run = w.wait_run("deploy", "comment");
    assert_eq!(run["git"]["sha"], head.as_str(), "{run}");
}

// 17. Gantry's PR comment is found again only among its own account's comments: a comment by
// someone else that carries Gantry's marker is left alone, and Gantry writes its own.
#[test]
fn a_marked_comment_by_another_account_is_not_edited() {
    let ci = pipeline("ci", "on: {pullRequest: {}}\n", "echo ci", "");
    let (remote, _) = remote_with(&[("ci.yaml", &ci)]);
    let head = remote.push_branch("feature", "a change");
    let w = World::start(Forge::Github, remote, "0s");
    let planted = format!(
        "{}\nGantry says: all green, merge away",
        gantry::report::comment::MARKER
    );
    let foreign = w.fake.add_comment_by(4, "mallory", &planted);
    let pr = Hook::sample(Forge::Github, "pull-request-opened.json")
        .head(Forge::Github, &head)
        .set("/number", json!(4))
        .set("/pull_request/head/ref", json!("feature"));
    w.accept(&pr, "pr-4");
    w.wait_run("ci", "pullRequest");
    w.server
        .wait_until("Gantry's own comment to show the run", WAIT, || {
            w.fake
                .comments(4)
                .iter()
                .any(|(id, b)| *id != foreign && b.contains("`ci`") && b.contains("succeeded"))
        });
    let comments = w.fake.comments(4);
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert_eq!(comments[0], (foreign.clone(), planted), "left as it was");
    let lines: Vec<String> = w.fake.requests().iter().map(Recorded::line).collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.ends_with(&format!("/issues/comments/{foreign}"))),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "GET /user"), "{lines:?}");
}

/// The reply on `pr` containing `needle`, without its hidden marker line.
fn reply_text(w: &World, pr: u64, needle: &str) -> String {
    let body = wait_comment(w, pr, needle);
    body.lines().skip(1).collect::<Vec<_>>().join("\n")
}

// 18. Text quoted back from a comment is shown as code: it cannot mention anyone, link or
// format (snapshots of the replies).
#[test]
fn replies_quote_user_text_as_code() {
    let deploy = pipeline("deploy", "on: {comment: true}\n", "echo deployed", "");
    let (remote, _) = remote_with(&[("deploy.yaml", &deploy)]);
    let w = World::start(Forge::Github, remote, "0s");
    w.fake.set_permission("maintainer", "write");
    w.fake.set_pr_head(5, &w.remote.repo.head());
    w.accept(
        &github_comment(
            5,
            "maintainer",
            "/gantry run deploy [x](https://evil.example)",
        ),
        "quote-link",
    );
    assert_eq!(
        reply_text(&w, 5, "not a parameter"),
        "@maintainer `[x](https://evil.example)` is not a parameter; write parameters as key=value"
    );
    w.accept(
        &github_comment(5, "maintainer", "/gantry run deploy @everyone"),
        "quote-mention",
    );
    assert_eq!(
        reply_text(&w, 5, "does not name a commit"),
        "@maintainer `@everyone` does not name a commit; write `@` and 4 to 40 hex digits of the \
         head you mean, once"
    );
    // Gantry has no record of #5, so the head is named (see the next test for why).
    let head = w.remote.repo.head();
    w.accept(
        &github_comment(
            5,
            "maintainer",
            &format!("/gantry run **bold**`x` @{}", &head[..7]),
        ),
        "quote-name",
    );
    assert_eq!(
        reply_text(&w, 5, "there is no pipeline"),
        format!(
            "@maintainer there is no pipeline `**bold**'x'` at `{}`; pipelines here: `deploy`",
            &w.remote.repo.head()[..7]
        )
    );
    assert!(w.runs().is_empty(), "{:?}", w.runs());
}

/// A command on a pull request Gantry heard nothing of (a fork's, say) runs nothing unless it
/// names the commit: only the commit's own time, which its author sets, says when it became the
/// head, so Gantry cannot tell that the commenter saw it.
#[test]
fn an_unproven_head_takes_a_named_commit() {
    let deploy = pipeline("deploy", "on: {comment: true}\n", "echo deployed", "");
    let (remote, _) = remote_with(&[("deploy.yaml", &deploy)]);
    let w = World::start(Forge::Github, remote, "0s");
    w.fake.set_permission("maintainer", "write");
    let head = w.remote.repo.head();
    w.fake.set_pr_head(9, &head);
    w.accept(
        &github_comment(9, "maintainer", "/gantry run deploy"),
        "unproven",
    );
    assert_eq!(
        reply_text(&w, 9, "cannot tell when"),
        format!(
            "@maintainer not started: Gantry cannot tell when `{short}` became the head of #9 (a \
             fork's commit times are its author's to set), so it cannot tell that you saw it; name \
             the commit you looked at: `/gantry run deploy @{short}`.",
            short = &head[..7]
        )
    );
    assert!(w.runs().is_empty(), "{:?}", w.runs());
    w.accept(
        &github_comment(
            9,
            "maintainer",
            &format!("/gantry run deploy @{}", &head[..7]),
        ),
        "named",
    );
    let run = w.wait_run("deploy", "comment");
    assert_eq!(run["git"]["sha"], head.as_str(), "{run}");
}
