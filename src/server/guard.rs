//! The guard in front of state-changing API calls: no cross-site requests, no DNS rebinding.
//!
//! A `POST`, `PUT` or `DELETE` under `/api/v1` with a body must say `Content-Type:
//! application/json` (415 otherwise): a browser sends that type across sites only after a CORS
//! preflight, which Gantry never grants, so a page elsewhere cannot forge one with a form or a
//! simple `fetch`. (`PUT` of a pipeline may also send the YAML itself as `application/yaml`, which
//! is no simple type either.) A call without a body (cancel, rerun, a `DELETE`) may leave the type
//! out: a browser's cross-site `POST` always carries an `Origin`, which the next check refuses, and
//! a cross-site `DELETE` needs the preflight anyway.
//! Its `Host`, and its `Origin` when there is one, must name `public_url`'s host or a loopback
//! address (403 otherwise): a page whose own name resolves to Gantry's address (DNS rebinding)
//! sends its own name as `Host`. Webhooks (`/hooks/*`) are not browsers' business and are checked
//! by their signatures instead.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::api::ApiError;

/// Why a state-changing request is refused, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 415: not JSON.
    ContentType(String),
    /// 403: a Host or Origin that is neither `public_url` nor loopback.
    Foreign(String),
}

impl Refusal {
    pub fn into_response(self) -> Response {
        match self {
            Refusal::ContentType(m) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m).into_response()
            }
            Refusal::Foreign(m) => ApiError::new(StatusCode::FORBIDDEN, m).into_response(),
        }
    }
}

/// The middleware: lets reads and webhooks through, checks writes under `/api/v1`. Served
/// without a token (`--insecure-no-auth`), where nothing else stands between a page that rebinds
/// its name to Gantry's address and the API, reads are checked for Host and Origin too.
pub async fn same_site(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let checked = if state.open() && !path.starts_with("/hooks/") {
        check_authority(request.headers(), &state.public_url)
    } else {
        Ok(())
    };
    match checked.and_then(|()| check(request.method(), path, request.headers(), &state.public_url))
    {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// State-changing API calls while the data dir's file system is below its reserve: 507, naming
/// the data dir and its free space; 503 once the store has failed (the process is about to end).
/// Cancelling a run still works: it takes no new space and ends work that would.
pub async fn space_for_writes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if changes_state(request.method()) && path.starts_with("/api/v1/") && !path.ends_with("/cancel")
    {
        if let Some(failure) = state.store.failure() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{failure}; Gantry is restarting"),
            )
            .into_response();
        }
        if let Err(low) = state.store.space_left() {
            return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, low.to_string())
                .into_response();
        }
    }
    next.run(request).await
}

fn changes_state(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::DELETE)
}

/// Whether `path` is a pipeline's own resource (`/api/v1/pipelines/{source}/{name}`), whose `PUT`
/// may carry the YAML itself.
fn is_pipeline_path(path: &str) -> bool {
    path.strip_prefix("/api/v1/pipelines/")
        .is_some_and(|rest| rest.split('/').filter(|s| !s.is_empty()).count() == 2)
}

/// The media type of a `Content-Type` value, lowercased, without parameters.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Checks one request; `public_url` is the configured `http(s)://host[:port]`.
pub fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    public_url: &str,
) -> Result<(), Refusal> {
    if !changes_state(method) || !(path == "/api/v1" || path.starts_with("/api/v1/")) {
        return Ok(());
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type);
    let yaml_ok = *method == Method::PUT && is_pipeline_path(path);
    let ok = match given.as_deref() {
        Some("application/json") => true,
        Some("application/yaml" | "application/x-yaml") => yaml_ok,
        None => !has_body(headers),
        _ => false,
    };
    if !ok {
        let shown = given.unwrap_or_else(|| "none".to_string());
        return Err(Refusal::ContentType(format!(
            "{method} {path} needs `Content-Type: application/json` (given: {shown}); \
             state-changing API calls take JSON only, so no other site's page can send one"
        )));
    }
    check_authority(headers, public_url)
}

/// Whether a request says it carries a body: a `Content-Length` above 0, or a transfer coding.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() != "0")
            && headers.contains_key(header::CONTENT_LENGTH)
}

/// The `Host`, and the `Origin` when there is one, must name `public_url` or a loopback address.
pub fn check_authority(headers: &HeaderMap, public_url: &str) -> Result<(), Refusal> {
    let (scheme, public) = split_url(public_url).unwrap_or(("http", public_url));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !same_authority(host, public, scheme) && !is_loopback_authority(host) {
        return Err(Refusal::Foreign(format!(
            "the Host `{host}` is neither this server's public_url ({public_url}) nor a loopback \
             address; requests naming another host are refused (DNS rebinding)"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let allowed = match split_url(origin) {
            Some((s, authority)) => {
                (s == scheme && same_authority(authority, public, scheme))
                    || is_loopback_authority(authority)
            }
            None => false,
        };
        if !allowed {
            return Err(Refusal::Foreign(format!(
                "the Origin `{origin}` is neither this server's public_url ({public_url}) nor a \
                 loopback address; requests from other sites are refused"
            )));
        }
    }
    Ok(())
}

/// `("https", "host:port")` of `https://host:port/path`.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    (!authority.is_empty()).then_some((scheme, authority))
}

/// The host and the port of an authority (`[::1]:80` → `([::1], Some("80"))`).
fn host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let port = authority[end + 1..].strip_prefix(':');
                (&authority[..=end], port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    }
}

/// Whether two authorities name the same host and port, a missing port being the scheme's.
fn same_authority(a: &str, b: &str, scheme: &str) -> bool {
    let default = if scheme == "https" { "443" } else { "80" };
    let (ha, pa) = host_port(a);
    let (hb, pb) = host_port(b);
    ha.eq_ignore_ascii_case(hb) && pa.unwrap_or(default) == pb.unwrap_or(default)
}

/// `localhost`, `127.0.0.0/8` or `[::1]`, with any port.
fn is_loopback_authority(authority: &str) -> bool {
    let (host, _) = host_port(authority);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_str(value).expect("header"));
        }
        h
    }

    const PUBLIC: &str = "https://gantry.example.com";

    fn json_from(host: &str) -> HeaderMap {
        headers(&[
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::HOST, host),
        ])
    }

    #[test]
    fn reads_and_webhooks_pass_and_writes_need_json() {
        let none = HeaderMap::new();
        assert_eq!(check(&Method::GET, "/api/v1/runs", &none, PUBLIC), Ok(()));
        assert_eq!(check(&Method::POST, "/hooks/github", &none, PUBLIC), Ok(()));
        for (method, path) in [
            (Method::POST, "/api/v1/runs/X/cancel"),
            (Method::PUT, "/api/v1/secrets/a"),
            (Method::DELETE, "/api/v1/variables/a"),
        ] {
            let plain = headers(&[
                (header::CONTENT_TYPE, "text/plain"),
                (header::HOST, "gantry.example.com"),
            ]);
            assert!(matches!(
                check(&method, path, &plain, PUBLIC),
                Err(Refusal::ContentType(_))
            ));
            // Without a body the type may be left out; with one, not.
            assert_eq!(
                check(
                    &method,
                    path,
                    &headers(&[(header::HOST, "127.0.0.1:8080")]),
                    PUBLIC
                ),
                Ok(())
            );
            assert_eq!(
                check(
                    &method,
                    path,
                    &headers(&[
                        (header::HOST, "127.0.0.1:8080"),
                        (header::CONTENT_LENGTH, "0")
                    ]),
                    PUBLIC
                ),
                Ok(())
            );
            for body in [
                (header::CONTENT_LENGTH, "12"),
                (header::TRANSFER_ENCODING, "chunked"),
            ] {
                assert!(matches!(
                    check(
                        &method,
                        path,
                        &headers(&[(header::HOST, "127.0.0.1:8080"), body]),
                        PUBLIC
                    ),
                    Err(Refusal::ContentType(_))
                ));
            }
            // A bodiless call from another site is refused by its Origin.
            assert!(matches!(
                check(
                    &method,
                    path,
                    &headers(&[
                        (header::HOST, "127.0.0.1:8080"),
                        (header::ORIGIN, "https://evil.example")
                    ]),
                    PUBLIC
                ),
                Err(Refusal::Foreign(_))
            ));
            assert_eq!(
                check(&method, path, &json_from("gantry.example.com"), PUBLIC),
                Ok(())
            );
        }
        let yaml = headers(&[
            (header::CONTENT_TYPE, "application/yaml"),
            (header::HOST, "localhost:8080"),
        ]);
        assert_eq!(
            check(&Method::PUT, "/api/v1/pipelines/local/x", &yaml, PUBLIC),
            Ok(())
        );
        assert!(check(&Method::PUT, "/api/v1/secrets/x", &yaml, PUBLIC).is_err());
        assert!(
            check(
                &Method::POST,
                "/api/v1/pipelines/local/x/runs",
                &yaml,
                PUBLIC
            )
            .is_err()
        );
    }

    #[test]
    fn host_and_origin_must_be_the_public_url_or_loopback() {
        let path = "/api/v1/secrets/a";
        for host in [
            "gantry.example.com",
            "GANTRY.example.com:443",
            "127.0.0.1:8080",
            "127.0.0.2",
            "localhost:1",
            "[::1]:8080",
        ] {
            assert_eq!(
                check(&Method::PUT, path, &json_from(host), PUBLIC),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "evil.example",
            "gantry.example.com:8443",
            "",
            "10.0.0.1:8080",
        ] {
            assert!(
                matches!(
                    check(&Method::PUT, path, &json_from(host), PUBLIC),
                    Err(Refusal::Foreign(_))
                ),
                "{host}"
            );
        }
        let with_origin = |origin: &str| {
            let mut h = json_from("gantry.example.com");
            h.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("header"),
            );
            check(&Method::PUT, path, &h, PUBLIC)
        };
        assert_eq!(with_origin("https://gantry.example.com"), Ok(()));
        assert_eq!(with_origin("http://127.0.0.1:8080"), Ok(()));
        for origin in [
            "https://evil.example",
            "http://gantry.example.com",
            "null",
            "https://gantry.example.com.evil.example",
        ] {
            assert!(
                matches!(with_origin(origin), Err(Refusal::Foreign(_))),
                "{origin}"
            );
        }
        // A public_url with a port.
        assert_eq!(
            check(
                &Method::PUT,
                path,
                &json_from("ci.internal:8080"),
                "http://ci.internal:8080"
            ),
            Ok(())
        );
        assert!(
            check(
                &Method::PUT,
                path,
                &json_from("ci.internal"),
                "http://ci.internal:8080"
            )
            .is_err()
        );
    }
}
