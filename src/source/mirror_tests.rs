//! Tests for `mirror.rs` that need no git server: URL redaction, hidden credentials, and the
//! error for a remote nothing listens on. The tests against real git servers (`git daemon`,
//! `git http-backend`) use the public API and live in `tests/it/mirror.rs`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn redact_url_hides_userinfo_and_query() {
    assert_eq!(
        redact_url("https://user:s3cret@example.com/org/repo.git"),
        "https://***@example.com/org/repo.git"
    );
    assert_eq!(
        redact_url("https://ghp_token@example.com"),
        "https://***@example.com"
    );
    assert_eq!(
        redact_url("https://a:b@c@example.com:8443/r?private_token=x#f"),
        "https://***@example.com:8443/r?***"
    );
    assert_eq!(
        redact_url("https://example.com/org/repo.git"),
        "https://example.com/org/repo.git"
    );
    assert_eq!(
        redact_url("git@github.com:org/repo.git"),
        "git@github.com:org/repo.git"
    );
    assert_eq!(redact_url("/srv/git/repo.git"), "/srv/git/repo.git");
}

#[test]
fn credentials_debug_hides_the_password() {
    let shown = format!(
        "{:?}",
        Credentials::for_provider("github", "ghs_secret".into())
    );
    assert!(!shown.contains("ghs_secret"), "{shown}");
    assert!(shown.contains("***") && shown.contains("x-access-token"));
    assert_eq!(
        Credentials::for_provider("GitLab", "t".into()).username(),
        "oauth2"
    );
    assert_eq!(
        Credentials::for_provider("bitbucket", "t".into()).username(),
        "x-token-auth"
    );
    assert_eq!(
        Credentials::for_provider("gitea", "t".into()).username(),
        "git"
    );
}

#[test]
fn unreachable_remote_fails_fast_with_a_redacted_url() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port();
    let url = format!("git://user:hunter2@127.0.0.1:{port}/repo.git");
    let started = Instant::now();
    let err = Mirror::open_or_clone(&tmp.path().join("m"), &url, "main", None)
        .expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(10));
    let shown = err.to_string();
    assert!(matches!(err, SourceError::Clone { .. }), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains(&format!("git://***@127.0.0.1:{port}/repo.git")),
        "{shown}"
    );
    assert!(shown.contains("check the url and the token"), "{shown}");
}
