//! `gantry webhook replay`: sends a sample delivery to a Gantry server, signed as the forge would
//! sign it, so webhooks can be tried without a forge.

use std::path::PathBuf;

use serde_json::Value;

use super::exit;
use super::remote::{Failure, block_on};
use crate::forge::Forge;
use crate::forge::webhook::{self, Headers};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: WebhookCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Send a sample delivery to a server, signed with the repository's webhook secret.
    #[command(after_help = "\
FILE is a sample delivery, {\"event\": ..., \"headers\": {...}, \"body\": {...}} as in
webhooks/<forge>/samples/, or a bare body with --forge and --event. The body is signed with --secret
(the repository's webhook_secret) and posted to URL/hooks/<forge> with the forge's event, delivery
id and signature headers. Exit status: 0 when the server answered 2xx, 1 otherwise, 2 when the
delivery could not be sent.

Examples:
  gantry webhook replay webhooks/github/samples/push.json --to http://127.0.0.1:8080 --secret s3cret
  gantry webhook replay webhooks/gitlab/samples/comment-run.json --to http://127.0.0.1:8080 \\
      --secret s3cret --repo acme/platform-infra --sha $(git rev-parse HEAD)
  gantry webhook replay body.json --forge bitbucket --event repo:push --to http://127.0.0.1:8080 --secret s3cret")]
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A sample delivery, or a bare webhook body (then give --forge and --event)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The server's base URL (the hook path /hooks/<forge> is added) or the full hook URL
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The repository's webhook_secret in gantry.toml
    #[arg(
        long,
        env = "GANTRY_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: String,
    /// The delivery id to send (default: a new random one; the server still skips a body it
    /// accepted before as a replay, so change --sha or the body to send it again)
    #[arg(long, value_name = "ID")]
    pub delivery_id: Option<String>,
    /// Point the delivery at this repository (GitHub owner/name, GitLab group/project,
    /// Bitbucket workspace/slug)
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,
    /// Replace the head commit the delivery names (a push's after, a pull request's head)
    #[arg(long, value_name = "SHA")]
    pub sha: Option<String>,
    /// The forge (default: from the sample's headers)
    #[arg(long, value_name = "FORGE", value_parser = parse_forge)]
    pub forge: Option<Forge>,
    /// The event name, as the forge's event header carries it (default: the sample's)
    #[arg(long, value_name = "NAME")]
    pub event: Option<String>,
}

fn parse_forge(s: &str) -> Result<Forge, String> {
    Forge::from_name(s).ok_or_else(|| format!("expected github, gitlab or bitbucket, not `{s}`"))
}

/// Runs `gantry webhook ...`.
pub fn run(args: &Args) -> u8 {
    match &args.command {
        WebhookCommand::Replay(a) => block_on(replay(a)),
    }
}

fn usage(message: String) -> Failure {
    Failure {
        message,
        code: exit::USAGE,
    }
}

/// A delivery ready to send.
struct Delivery {
    forge: Forge,
    event: String,
    /// Headers from the sample other than the ones replay sets itself.
    headers: Vec<(String, String)>,
    body: Value,
}

/// Headers a sample may carry that replay computes itself.
fn is_computed(name: &str) -> bool {
    let computed = Forge::ALL.iter().flat_map(|&f| {
        [webhook::signature_header(f), webhook::event_header(f)]
            .into_iter()
            .chain(webhook::delivery_headers(f).iter().copied())
    });
    ["Content-Type", "Content-Length", "Host", "X-Hub-Signature"]
        .into_iter()
        .chain(computed)
        .any(|h| h.eq_ignore_ascii_case(name))
}

fn load(args: &ReplayArgs) -> Result<Delivery, Failure> {
    let path = args.file.display();
    let text = std::fs::read(&args.file).map_err(|e| usage(format!("cannot read {path}: {e}")))?;
    let json: Value =
        serde_json::from_slice(&text).map_err(|e| usage(format!("{path} is not JSON: {e}")))?;
    let is_sample = json.get("body").is_some_and(Value::is_object)
        && (json.get("event").is_some() || json.get("headers").is_some());
    if !is_sample {
        let (Some(forge), Some(event)) = (args.forge, args.event.clone()) else {
            return Err(usage(format!(
                "{path} is a bare body (no \"body\" with \"event\" or \"headers\"): give --forge and --event"
            )));
        };
        return Ok(Delivery {
            forge,
            event,
            headers: Vec::new(),
            body: json,
        });
    }
    let mut headers = Vec::new();
    if let Some(map) = json.get("headers") {
        let map = map
            .as_object()
            .ok_or_else(|| usage(format!("{path}: \"headers\" is not an object")))?;
        for (name, value) in map {
            let value = value.as_str().ok_or_else(|| {
                usage(format!(
                    "{path}: the value of header `{name}` is not a string"
                ))
            })?;
            headers.push((name.clone(), value.to_string()));
        }
    }
    let forge = match args.forge {
        Some(f) => f,
        None => Forge::ALL
            .into_iter()
            .find(|&f| headers.header(webhook::event_header(f)).is_some())
            .ok_or_else(|| {
                usage(format!(
                    "{path}: cannot tell the forge from the headers; give --forge"
                ))
            })?,
    };
    let from_headers = webhook::event_name(forge, &headers);
    let event = args
        .event
        .clone()
        .or_else(|| {
            json.get("event")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or(from_headers)
        .ok_or_else(|| usage(format!("{path}: no \"event\"; give --event")))?;
    headers.retain(|(k, _)| !is_computed(k));
    Ok(Delivery {
        forge,
        event,
        headers,
        body: json.get("body").cloned().unwrap_or(Value::Null),
    })
}

/// The hook URL: `to` itself when it already ends in `/hooks/<forge>`.
fn hook_url(to: &str, forge: Forge) -> Result<String, Failure> {
    let base = to.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(usage(format!(
            "--to must be an http:// or https:// URL, not `{to}`"
        )));
    }
    let path = format!("/hooks/{forge}");
    if base.ends_with(&path) {
        Ok(base.to_string())
    } else {
        Ok(format!("{base}{path}"))
    }
}

/// A random version-4 UUID, as the forges send (time-based if the OS has no randomness).
fn new_delivery_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b = nanos.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

async fn replay(args: &ReplayArgs) -> Result<u8, Failure> {
    let mut d = load(args)?;
    let url = hook_url(&args.to, d.forge)?;
    if let Some(repo) = &args.repo {
        webhook::retarget_repo(d.forge, &mut d.body, repo)
            .map_err(|e| usage(format!("cannot point the delivery at {repo}: {e}")))?;
    }
    if let Some(sha) = &args.sha {
        let changed = webhook::retarget_head(d.forge, &d.event, &mut d.body, sha)
            .map_err(|e| usage(format!("cannot replace the head commit: {e}")))?;
        if !changed {
            eprintln!(
                "gantry: note: a {} `{}` delivery names no head commit; --sha changed nothing",
                d.forge, d.event
            );
        }
    }
    let body = serde_json::to_vec(&d.body)
        .map_err(|e| usage(format!("cannot serialise the body: {e}")))?;
    let id = args.delivery_id.clone().unwrap_or_else(new_delivery_id);

    let mut headers = d.headers;
    headers.push(("Content-Type".into(), "application/json".into()));
    headers.push((webhook::event_header(d.forge).into(), d.event.clone()));
    for name in webhook::delivery_headers(d.forge) {
        headers.push(((*name).into(), id.clone()));
    }
    headers.extend(webhook::sign(d.forge, &body, &args.secret));

    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in &headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| usage(format!("bad header name `{name}`: {e}")))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|e| usage(format!("bad value for header `{name}`: {e}")))?;
        map.append(name, value);
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| usage(format!("cannot set up HTTP: {e}")))?;
    eprintln!(
        "POST {url} ({} `{}`, delivery {id}, {} bytes)",
        d.forge,
        d.event,
        body.len()
    );
    let response = http
        .post(&url)
        .headers(map)
        .body(body)
        .send()
        .await
        .map_err(|e| usage(format!("cannot reach {url}: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{status}");
    if !text.is_empty() {
        println!("{text}");
    }
    Ok(if status.is_success() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_urls() {
        let url = |to| hook_url(to, Forge::Gitlab).map_err(|f| f.message);
        assert_eq!(
            url("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080/hooks/gitlab")
        );
        assert_eq!(
            url("https://g.example.com/hooks/gitlab/").as_deref(),
            Ok("https://g.example.com/hooks/gitlab")
        );
        assert!(url("g.example.com").is_err());
    }

    #[test]
    fn delivery_ids_look_like_uuids() {
        let (a, b) = (new_delivery_id(), new_delivery_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
    }

    #[test]
    fn the_forge_samples_load_and_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("webhooks");
        let mut seen = 0;
        for forge in Forge::ALL {
            let dir = root.join(forge.as_str()).join("samples");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                panic!("no samples in {}", dir.display());
            };
            for entry in entries.flatten() {
                let args = ReplayArgs {
                    file: entry.path(),
                    to: "http://127.0.0.1:1".into(),
                    secret: "s".into(),
                    delivery_id: None,
                    repo: None,
                    sha: None,
                    forge: None,
                    event: None,
                };
                let d = load(&args).unwrap_or_else(|f| panic!("{}", f.message));
                assert_eq!(d.forge, forge, "{}", entry.path().display());
                let event = webhook::parse_value(d.forge, Some(&d.event), &d.body)
                    .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
                assert_eq!(
                    event.repo(),
                    Some("acme/platform-infra"),
                    "{}: {event:?}",
                    entry.path().display()
                );
                seen += 1;
            }
        }
        assert!(seen >= 9, "expected three samples per forge, saw {seen}");
    }
}
