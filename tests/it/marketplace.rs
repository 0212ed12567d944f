//! The marketplace through a running `gantry serve`: a local pipeline publishes, the API finds
//! the resource, a connection hands its credentials over and follows republishing, a second
//! pipeline consumes the connection, and unpublishing and deprecating behave as documented. No
//! secret value appears in an API answer other than a connection's `/credentials`, in a log, or
//! under the data dir.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::server::{GantryServer, ServerConfig};

const WAIT: Duration = Duration::from_secs(60);

/// A pipeline that publishes `team-cache` (cache, type redis) with a host and a secret password
/// `pw-<round>-5678` for the environment given (`dev` by default).
pub const PUBLISHER: &str = r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata:
  name: make-cache
parameters:
  - name: env
    type: enum
    enum: [dev, prod]
    default: dev
  - name: round
    type: string
steps:
  - name: create
    command: [sh, -c, 'printf cache.internal > $GANTRY_OUTPUTS/host; printf "pw-%s-%s" "$ROUND" 5678 > $GANTRY_OUTPUTS/password']
    env:
      ROUND: "{{params.round}}"
    outputs:
      - name: host
      - name: password
        secret: true
  - name: publish
    template: gantry/marketplace-publish@v1
    arguments:
      resource:
        name: team-cache
        version: 2.1.0
        category: cache
        description: Redis for team A
        tags: [redis, "{{params.env}}"]
        properties:
          type: redis
          region: eu-1
        connectionCredentials:
          - environments: ["{{params.env}}"]
            parameters:
              - {key: REDIS_HOST, value: "{{steps.create.outputs.host}}"}
              - {key: REDIS_PASSWORD, value: "{{steps.create.outputs.password}}", isSecret: true}
"#;

const CONSUMER: &str = r#"apiVersion: gantry.dev/v1
kind: Pipeline
metadata:
  name: use-cache
connections: [app]
steps:
  - name: use
    command: [sh, -c, 'echo "to $H with $P"; case "$P" in pw-second-*) echo matches;; esac']
    env:
      H: "{{connections.app.host}}"
      P: "{{connections.app.password}}"
"#;

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn put_local(s: &GantryServer, name: &str, text: &str) {
    let (status, body) = s.put_text(&format!("/api/v1/pipelines/local/{name}"), text);
    assert!(
        status == 200 || status == 201,
        "PUT {name}: {status} {body}"
    );
}

/// Starts a run of a local pipeline and waits for its end; returns it.
fn run(s: &GantryServer, name: &str, params: Value) -> Value {
    let (status, body) = s.post_json(
        &format!("/api/v1/pipelines/local/{name}/runs"),
        &json!({ "parameters": params }),
    );
    assert_eq!(status, 201, "{body}");
    let id = parse(&body)["id"].as_str().expect("id").to_string();
    let mut run = Value::Null;
    s.wait_until(&format!("run {id} ends"), WAIT, || {
        run = s.get_json(&format!("/api/v1/runs/{id}"));
        !matches!(run["status"].as_str(), Some("queued" | "running"))
    });
    s.conforms("RunDetail", &run);
    run
}

fn logs(s: &GantryServer, id: &str) -> String {
    let (status, body) = s.get(&format!("/api/v1/runs/{id}/logs"));
    assert_eq!(status, 200, "{body}");
    body
}

fn grep_dir(dir: &std::path::Path, needle: &[u8], hits: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            grep_dir(&path, needle, hits);
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
}

#[test]
fn a_published_resource_is_found_connected_to_followed_and_unpublished_over_the_api() {
    let s = GantryServer::start(ServerConfig::new());
    put_local(&s, "make-cache", PUBLISHER);
    let first = run(&s, "make-cache", json!({"env": "dev", "round": "first"}));
    assert_eq!(first["status"], "succeeded", "{first}");
    // The run's answer lists what it published, keys but no value.
    let published = &first["published"][0];
    assert_eq!(published["resource"], "team-cache", "{first}");
    assert_eq!(published["version"], 1);
    assert_eq!(published["new_version"], true);
    assert_eq!(published["environments"], json!(["dev"]));
    assert_eq!(
        published["credentials"],
        json!([{"key": "REDIS_HOST", "secret": false}, {"key": "REDIS_PASSWORD", "secret": true}])
    );
    assert!(!first.to_string().contains("pw-first-5678"));

    // Found by kind, category, tag and text; not by another type.
    let names = |query: &str| -> Vec<String> {
        let list = s.get_json(&format!("/api/v1/marketplace/resources{query}"));
        s.conforms("ResourceList", &list);
        list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names("?type=redis&tag=dev"), ["team-cache"]);
    assert_eq!(names("?type=cache"), ["team-cache"]);
    assert_eq!(names("?search=TEAM%20A"), ["team-cache"]);
    assert!(names("?type=database").is_empty());
    let (status, shown) = s.get("/api/v1/marketplace/resources/team-cache");
    assert_eq!(status, 200, "{shown}");
    assert!(!shown.contains("pw-first-5678"), "{shown}");
    let shown = parse(&shown);
    s.conforms("ResourceDetail", &shown);
    assert_eq!(shown["versions"][0]["semver"], "2.1.0");
    assert_eq!(
        shown["versions"][0]["environments"]["dev"][1],
        json!({"key": "REDIS_PASSWORD", "secret": true})
    );
    let (status, _) = s.get("/api/v1/marketplace/resources/nothing-here");
    assert_eq!(status, 404);

    // A connection: created once, refused twice, checked on the way in.
    let new = json!({"name": "app", "resource": "team-cache", "environment": "dev",
        "map": {"REDIS_PASSWORD": "CACHE_PASSWORD"}});
    let (status, body) = s.post_json("/api/v1/connections", &new);
    assert_eq!(status, 201, "{body}");
    assert!(!body.contains("pw-first-5678"), "{body}");
    assert_eq!(parse(&body)["resolved"]["version"], 1, "{body}");
    s.conforms("ResolvedConnection", &parse(&body));
    s.conforms("ConnectionList", &s.get_json("/api/v1/connections"));
    let (status, body) = s.post_json("/api/v1/connections", &new);
    assert_eq!(status, 409, "{body}");
    for (bad, want) in [
        (
            json!({"name": "b", "resource": "team-cache", "environment": "dev", "version": "banana"}),
            422,
        ),
        (
            json!({"name": "b", "resource": "team-cache", "environment": "prod"}),
            422,
        ),
        (
            json!({"name": "b", "resource": "nothing-here", "environment": "dev"}),
            404,
        ),
        (
            json!({"name": "b/c", "resource": "team-cache", "environment": "dev"}),
            422,
        ),
        (json!({"name": "b", "resource": "team-cache"}), 400),
    ] {
        let (status, body) = s.post_json("/api/v1/connections", &bad);
        assert_eq!(status, want, "{bad}: {body}");
        assert!(parse(&body)["error"].is_string(), "{body}");
    }
    let creds = s.get_json("/api/v1/connections/app/credentials");
    s.conforms("ResolvedConnection", &creds);
    let value = |creds: &Value, var: &str| -> String {
        creds["resolved"]["credentials"]
            .as_array()
            .expect("credentials")
            .iter()
            .find(|c| c["var"] == var)
            .and_then(|c| c["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(value(&creds, "CACHE_PASSWORD"), "pw-first-5678", "{creds}");
    assert_eq!(value(&creds, "APP_REDIS_HOST"), "cache.internal", "{creds}");

    // Republished with another password: version 2, and the connection follows.
    let second = run(&s, "make-cache", json!({"env": "dev", "round": "second"}));
    assert_eq!(second["published"][0]["version"], 2, "{second}");
    let creds = s.get_json("/api/v1/connections/app/credentials");
    assert_eq!(value(&creds, "CACHE_PASSWORD"), "pw-second-5678", "{creds}");
    assert_eq!(creds["resolved_version"], 2, "{creds}");

    // A pipeline consuming the connection gets the credentials, its log masks the secret one.
    put_local(&s, "use-cache", CONSUMER);
    let used = run(&s, "use-cache", json!({}));
    let id = used["id"].as_str().expect("id");
    let said = logs(&s, id);
    assert_eq!(used["status"], "succeeded", "{used}\n{said}");
    assert!(
        said.contains("to cache.internal with ***") && said.contains("matches"),
        "{said}"
    );
    assert!(!said.contains("pw-second-5678"), "{said}");

    // Unpublishing the environment stops the connection (and the consumer) until republished.
    let (status, body) = s.delete("/api/v1/marketplace/resources/team-cache?env=dev");
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get("/api/v1/connections/app/credentials");
    assert_eq!(status, 409, "{body}");
    let shown = s.get_json("/api/v1/connections/app");
    s.conforms("ConnectionState", &shown);
    assert_eq!(
        shown["error"], "environment `dev` of resource `team-cache` was unpublished",
        "{shown}"
    );
    let refused = run(&s, "use-cache", json!({}));
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("was unpublished"),
        "{refused}"
    );
    let (status, body) = s.delete("/api/v1/marketplace/resources/team-cache?env=staging");
    assert_eq!(status, 422, "{body}");

    // Deprecated: still listed, with the reason; an empty reason is refused.
    let (status, body) = s.post_json(
        "/api/v1/marketplace/resources/team-cache/deprecate",
        &json!({"reason": "moving to team-cache-v2"}),
    );
    assert_eq!(status, 200, "{body}");
    s.conforms("Resource", &parse(&body));
    let listed = s.get_json("/api/v1/marketplace/resources");
    assert_eq!(
        listed["resources"][0]["deprecated"]["reason"], "moving to team-cache-v2",
        "{listed}"
    );
    let (status, _) = s.post_json(
        "/api/v1/marketplace/resources/team-cache/deprecate",
        &json!({"reason": " "}),
    );
    assert_eq!(status, 422);

    // Connections go away; the OpenAPI document names every marketplace route.
    let (status, _) = s.delete("/api/v1/connections/app");
    assert_eq!(status, 204);
    let (status, _) = s.delete("/api/v1/connections/app");
    assert_eq!(status, 404);
    let doc = s.get_json("/api/v1/openapi.json");
    for path in [
        "/api/v1/marketplace/resources",
        "/api/v1/marketplace/resources/{resource}",
        "/api/v1/connections",
        "/api/v1/connections/{connection}/credentials",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }

    // No password anywhere under the data dir.
    let mut hits = Vec::new();
    for pw in ["pw-first-5678", "pw-second-5678"] {
        grep_dir(&s.data_dir(), pw.as_bytes(), &mut hits);
    }
    assert!(hits.is_empty(), "plaintext in {hits:?}");
}
