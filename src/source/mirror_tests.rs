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

#[test]
fn maintain_merges_piled_up_packs_and_keeps_every_object() {
    use crate::source::test_support::git;
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    let bare = tmp.path().join("mirror.git");
    std::fs::create_dir(&work).expect("work dir");
    git(&work, &["init", "-q"]);
    git(tmp.path(), &["init", "-q", "--bare", "mirror.git"]);
    let packs = || {
        std::fs::read_dir(bare.join("objects/pack"))
            .expect("pack folder")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .count()
    };
    // One pack per push, as each fetch of a mirror adds one.
    let mut commits = Vec::new();
    for i in 0..12 {
        std::fs::write(work.join("file"), format!("version {i}\n")).expect("write");
        git(&work, &["add", "file"]);
        git(&work, &["commit", "-q", "-m", &format!("c{i}")]);
        git(
            &work,
            &["push", "-q", bare.to_str().expect("utf-8"), "HEAD:main"],
        );
        git(&bare, &["repack", "-d", "-q"]);
        commits.push(git(&work, &["rev-parse", "HEAD"]));
    }
    assert_eq!(packs(), 12);
    let mirror =
        Mirror::open_or_clone(&bare, "git://unused.invalid/x.git", "main", None).expect("opens");
    assert!(mirror.maintain().expect("repacks"));
    assert!(packs() <= 2, "{} packs left", packs());
    assert!(
        !mirror.maintain().expect("nothing to do"),
        "a second pass repacks nothing"
    );
    assert_eq!(mirror.head("main").expect("head"), commits.last().cloned());
    for (i, commit) in commits.iter().enumerate() {
        let text = mirror
            .read_file(commit, "file")
            .expect("read")
            .expect("file");
        assert_eq!(text, format!("version {i}\n").into_bytes());
    }
}
