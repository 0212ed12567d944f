//! Checking and normalising webhook deliveries: the signature or token (constant-time, on the raw
//! body, before any parsing), the delivery id and event name from the headers, the repository a
//! body names, and the payload normalised into a `ForgeEvent`. One submodule per forge holds the
//! payload rules; `sign` is the other side of `verify`, for `gantry webhook replay` and tests.
//!
//! Who is the `author`/`pusher` of an event: the account that caused the delivery (GitHub
//! `sender.login`, GitLab `user.username` or `user_username`, Bitbucket `actor`), so a
//! `synchronize` names who pushed, not who opened the pull request. A comment's author is the
//! comment's writer.

mod bitbucket;
mod github;
mod gitlab;
mod project;
#[cfg(test)]
mod tests;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::forge::{Forge, ForgeEvent};

type HmacSha256 = Hmac<Sha256>;

/// Read access to request headers, by name in any case; implemented for `http::HeaderMap` (the
/// server) and for lists of name/value pairs (the CLI, tests).
pub trait Headers {
    /// The value of header `name` (any case), if present and valid text; the first one when the
    /// header repeats.
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Headers for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Headers for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Why a delivery is not accepted as coming from the forge (answered with 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The repository has no secret to check against.
    #[error(
        "no webhook_secret is set for this repository: set one in gantry.toml and the same value \
         in the {forge} webhook form"
    )]
    NoSecret { forge: Forge },
    #[error(
        "the delivery has no `{header}` header: give the {forge} webhook a secret, the same \
         value as webhook_secret in gantry.toml"
    )]
    Missing { forge: Forge, header: &'static str },
    #[error("the `{header}` header is malformed ({problem}); expected `sha256=` and 64 hex digits")]
    Malformed {
        forge: Forge,
        header: &'static str,
        problem: &'static str,
    },
    #[error(
        "the `{header}` header does not match webhook_secret: set the same secret in the {forge} \
         webhook form and in webhook_secret"
    )]
    Mismatch { forge: Forge, header: &'static str },
}

/// A genuine delivery whose body cannot be read as the event it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the {forge} webhook body is not a JSON object: {message}")]
    NotJson { forge: Forge, message: String },
    #[error("the {forge} delivery has no `{header}` header, which names the event")]
    NoEvent { forge: Forge, header: &'static str },
    #[error("the {forge} `{event}` payload has no {expected} `{field}`")]
    Missing {
        forge: Forge,
        event: String,
        /// The dotted path of the field in the body.
        field: String,
        /// What the field should have been: "string", "number", ...
        expected: &'static str,
    },
}

/// The header that carries the signature (GitHub, Bitbucket) or the token (GitLab).
pub fn signature_header(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "X-Hub-Signature-256",
        Forge::Gitlab => "X-Gitlab-Token",
        Forge::Bitbucket => "X-Hub-Signature",
    }
}

/// The header that names the event.
pub fn event_header(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "X-GitHub-Event",
        Forge::Gitlab => "X-Gitlab-Event",
        Forge::Bitbucket => "X-Event-Key",
    }
}

/// The headers that carry the delivery id, in the order they are read.
pub fn delivery_headers(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::Github => &["X-GitHub-Delivery"],
        Forge::Gitlab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
        Forge::Bitbucket => &["X-Request-UUID"],
    }
}

/// Checks that a delivery comes from the forge: GitHub's `X-Hub-Signature-256` and Bitbucket's
/// `X-Hub-Signature` (`sha256=` and the hex HMAC-SHA256 of the raw body keyed with `secret`),
/// GitLab's `X-Gitlab-Token` (the secret itself). Every comparison takes constant time.
pub fn verify<H: Headers + ?Sized>(
    forge: Forge,
    headers: &H,
    body: &[u8],
    secret: &str,
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecret { forge });
    }
    let header = signature_header(forge);
    let value = headers
        .header(header)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::Missing { forge, header })?;
    let mismatch = SignatureError::Mismatch { forge, header };
    match forge {
        Forge::Gitlab => {
            if constant_time_eq(value.as_bytes(), secret.as_bytes()) {
                Ok(())
            } else {
                Err(mismatch)
            }
        }
        Forge::Github | Forge::Bitbucket => {
            let malformed = |problem| SignatureError::Malformed {
                forge,
                header,
                problem,
            };
            let hex = value
                .strip_prefix("sha256=")
                .ok_or_else(|| malformed("it does not start with `sha256=`"))?;
            let digest = decode_hex(hex).ok_or_else(|| malformed("not hex digits"))?;
            if digest.len() != 32 {
                return Err(malformed("not 64 hex digits"));
            }
            let mut mac =
                HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| mismatch.clone())?;
            mac.update(body);
            mac.verify_slice(&digest).map_err(|_| mismatch)
        }
    }
}

/// The authentication header a forge would send with `body` under `secret` (the inverse of
/// `verify`).
pub fn sign(forge: Forge, body: &[u8], secret: &str) -> Vec<(String, String)> {
    let value = match forge {
        Forge::Gitlab => secret.to_string(),
        Forge::Github | Forge::Bitbucket => format!("sha256={}", hmac_hex(secret, body)),
    };
    vec![(signature_header(forge).to_string(), value)]
}

/// The delivery's id, which stays the same when the forge retries it: GitHub
/// `X-GitHub-Delivery`; GitLab `Idempotency-Key`, else `X-Gitlab-Event-UUID`; Bitbucket
/// `X-Request-UUID`.
pub fn delivery_id<H: Headers + ?Sized>(forge: Forge, headers: &H) -> Option<String> {
    delivery_headers(forge)
        .iter()
        .find_map(|h| non_empty_header(headers, h))
}

/// The event name from the headers: `X-GitHub-Event`, `X-Gitlab-Event`, `X-Event-Key`.
pub fn event_name<H: Headers + ?Sized>(forge: Forge, headers: &H) -> Option<String> {
    non_empty_header(headers, event_header(forge))
}

/// A delivery body read once, before it is verified: only the fields the rules look at (see
/// `project.rs`), enough to find the repository whose secret checks it and, once it is checked,
/// the event, without reading the text a second time.
pub struct ReadBody {
    forge: Forge,
    json: Value,
}

/// Reads a delivery body (a `PayloadError` when it is not JSON).
pub fn read_body(forge: Forge, body: &[u8]) -> Result<ReadBody, PayloadError> {
    let json = project::project(forge, body).map_err(|e| PayloadError::NotJson {
        forge,
        message: e.to_string(),
    })?;
    Ok(ReadBody { forge, json })
}

impl ReadBody {
    /// The repository id the body names (GitHub and Bitbucket `repository.full_name`, GitLab
    /// `project.path_with_namespace`); only for finding the `[[repos]]` entry whose secret
    /// checks the delivery. `None` when it names none.
    pub fn repo(&self) -> Option<String> {
        self.json
            .pointer(repo_pointer(self.forge))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The event, for a delivery already verified: `parse` of the same body.
    pub fn event<H: Headers + ?Sized>(&self, headers: &H) -> Result<ForgeEvent, PayloadError> {
        parse_value(
            self.forge,
            event_name(self.forge, headers).as_deref(),
            &self.json,
        )
    }
}

/// The repository id the body names (see [`ReadBody::repo`]); `None` when the body is not JSON
/// or names none.
pub fn repo_of(forge: Forge, body: &[u8]) -> Option<String> {
    read_body(forge, body).ok()?.repo()
}

/// The sha256 of a delivery's raw body: a body accepted once is a replay under any delivery id.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Normalises a delivery (already verified) into a `ForgeEvent`. Events, actions and refs that
/// start nothing are `Ignored` with a reason that names them; a body that is not JSON or lacks a
/// field the event needs is a `PayloadError` naming the field.
pub fn parse<H: Headers + ?Sized>(
    forge: Forge,
    headers: &H,
    body: &[u8],
) -> Result<ForgeEvent, PayloadError> {
    // Only the fields the rules read are kept (`project.rs`): most of a body is never looked at.
    read_body(forge, body)?.event(headers)
}

/// `parse` for a body already read as JSON, with the event name of the headers.
pub fn parse_value(
    forge: Forge,
    event: Option<&str>,
    json: &Value,
) -> Result<ForgeEvent, PayloadError> {
    if !json.is_object() {
        return Err(PayloadError::NotJson {
            forge,
            message: "the top level is not an object".to_string(),
        });
    }
    match forge {
        Forge::Github => github::parse(event, json),
        Forge::Gitlab => gitlab::parse(event, json),
        Forge::Bitbucket => bitbucket::parse(event, json),
    }
}

/// Points a body at another repository: the id `repo_of` reads becomes `repo`, and so does every
/// other string equal to the old id (the head and base of a same-repository pull request), so
/// the delivery keeps its meaning. For `gantry webhook replay --repo`.
pub fn retarget_repo(forge: Forge, body: &mut Value, repo: &str) -> Result<(), PayloadError> {
    let pointer = repo_pointer(forge);
    let old = body
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| PayloadError::Missing {
            forge,
            event: "any".to_string(),
            field: pointer.trim_start_matches('/').replace('/', "."),
            expected: "string",
        })?;
    replace_strings(body, &old, repo);
    Ok(())
}

/// Replaces the head commit of the event `event` in a body (a push's `after`, a pull request's
/// head, the head a comment names) with `sha`, everywhere that commit appears. Returns false
/// when the event names no head commit (a GitHub comment, an ignored event). For `gantry webhook
/// replay --sha`.
pub fn retarget_head(
    forge: Forge,
    event: &str,
    body: &mut Value,
    sha: &str,
) -> Result<bool, PayloadError> {
    let head = match parse_value(forge, Some(event), body)? {
        ForgeEvent::Push { after, .. } => after,
        ForgeEvent::PullRequest { head_sha, .. } => head_sha,
        ForgeEvent::Comment {
            head_sha: Some(head),
            ..
        } => head,
        _ => return Ok(false),
    };
    replace_strings(body, &head, sha);
    Ok(true)
}

/// Where `repo_of` looks, as a JSON pointer.
fn repo_pointer(forge: Forge) -> &'static str {
    match forge {
        Forge::Github | Forge::Bitbucket => "/repository/full_name",
        Forge::Gitlab => "/project/path_with_namespace",
    }
}

fn replace_strings(value: &mut Value, old: &str, new: &str) {
    match value {
        Value::String(s) if s == old => *s = new.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_strings(v, old, new)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_strings(v, old, new)),
        _ => {}
    }
}

fn non_empty_header<H: Headers + ?Sized>(headers: &H, name: &str) -> Option<String> {
    headers
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Compares two secrets in time that depends on neither content nor length: both are hashed
/// first, then the digests compared without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    // An HMAC takes a key of any length; the error case cannot happen.
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            encode_hex(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// A commit id of zeros: the "no commit" of a created or deleted branch.
fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

fn ignored(reason: String) -> Result<ForgeEvent, PayloadError> {
    Ok(ForgeEvent::Ignored { reason })
}

/// Typed access to a payload's fields by dotted path; a missing field is a `PayloadError` that
/// names its full path from the top of the body.
struct Fields<'a> {
    forge: Forge,
    event: &'a str,
    json: &'a Value,
    /// The path of `json` from the top of the body, with a trailing dot (or empty).
    prefix: String,
}

impl<'a> Fields<'a> {
    fn new(forge: Forge, event: &'a str, json: &'a Value) -> Fields<'a> {
        Fields {
            forge,
            event,
            json,
            prefix: String::new(),
        }
    }

    /// The fields of a value inside this one, found at `path`.
    fn child(&self, json: &'a Value, path: &str) -> Fields<'a> {
        Fields {
            forge: self.forge,
            event: self.event,
            json,
            prefix: format!("{}{path}.", self.prefix),
        }
    }

    /// The value at `path`; `None` when missing or null.
    fn get(&self, path: &str) -> Option<&'a Value> {
        debug_assert!(
            project::keep(self.forge).covers(&format!("{}{path}", self.prefix)),
            "`{}{path}` is read by the {} rules but not kept by `project::fields`",
            self.prefix,
            self.forge
        );
        let mut value = self.json;
        for key in path.split('.') {
            value = value.get(key)?;
        }
        (!value.is_null()).then_some(value)
    }

    fn missing(&self, path: &str, expected: &'static str) -> PayloadError {
        PayloadError::Missing {
            forge: self.forge,
            event: self.event.to_string(),
            field: format!("{}{path}", self.prefix),
            expected,
        }
    }

    fn opt_str(&self, path: &str) -> Option<&'a str> {
        self.get(path).and_then(Value::as_str)
    }

    fn str(&self, path: &str) -> Result<&'a str, PayloadError> {
        self.opt_str(path)
            .ok_or_else(|| self.missing(path, "string"))
    }

    fn string(&self, path: &str) -> Result<String, PayloadError> {
        self.str(path).map(str::to_string)
    }

    fn number(&self, path: &str) -> Result<u64, PayloadError> {
        self.get(path)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(path, "number"))
    }

    /// An id that is a number or a string, as text.
    fn id(&self, path: &str) -> Result<String, PayloadError> {
        match self.get(path) {
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(self.missing(path, "id")),
        }
    }

    fn bool(&self, path: &str) -> bool {
        self.get(path).and_then(Value::as_bool).unwrap_or(false)
    }
}
