//! Tests of webhook checking and parsing, on the real sample deliveries in
//! tests/fixtures/webhooks/ (origins in its README.md); negative cases edit a copy of a sample.

use serde_json::{Value, json};

use super::*;
use crate::forge::PrAction;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/webhooks/samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn event_headers(forge: Forge, event: &str) -> Vec<(String, String)> {
    headers(&[(event_header(forge), event)])
}

fn parse_json(forge: Forge, event: &str, body: &Value) -> Result<ForgeEvent, PayloadError> {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    parse(forge, &event_headers(forge, event), &bytes)
}

fn parse_fixture(forge: Forge, event: &str, name: &str) -> ForgeEvent {
    parse(forge, &event_headers(forge, event), &fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_ignored(event: Result<ForgeEvent, PayloadError>, words: &str) {
    match event {
        Ok(ForgeEvent::Ignored { reason }) => {
            assert!(reason.contains(words), "reason `{reason}` lacks `{words}`")
        }
        other => panic!("expected Ignored ({words}), got {other:?}"),
    }
}

// ---- headers, signatures, ids -------------------------------------------------------------

#[test]
fn headers_are_found_in_any_case() {
    let list = headers(&[("x-github-event", "push"), ("X-GitHub-Event", "second")]);
    assert_eq!(list.header("X-GITHUB-EVENT"), Some("push"));
    assert_eq!(list.as_slice().header("x-github-event"), Some("push"));
    assert_eq!(list.header("X-GitHub-Delivery"), None);

    let mut map = http::HeaderMap::new();
    map.insert(
        "x-gitlab-event",
        http::HeaderValue::from_static("Push Hook"),
    );
    assert_eq!(map.header("X-Gitlab-Event"), Some("Push Hook"));
    assert_eq!(
        event_name(Forge::Gitlab, &map).as_deref(),
        Some("Push Hook")
    );
}

#[test]
fn the_github_docs_test_vector_verifies() {
    let vector = fixture_json("github-docs-webhook-signature-test-vector.json");
    let secret = vector["secret"].as_str().expect("secret");
    let payload = vector["payload"].as_str().expect("payload").as_bytes();
    let header = vector["X-Hub-Signature-256"].as_str().expect("header");
    let h = headers(&[("X-Hub-Signature-256", header)]);
    assert_eq!(verify(Forge::Github, &h, payload, secret), Ok(()));
    // sign produces exactly the documented header.
    assert_eq!(
        sign(Forge::Github, payload, secret),
        headers(&[("X-Hub-Signature-256", header)])
    );
    // Bitbucket: the same computation under the legacy header name.
    let bb = headers(&[("X-Hub-Signature", header)]);
    assert_eq!(verify(Forge::Bitbucket, &bb, payload, secret), Ok(()));
    assert_eq!(sign(Forge::Bitbucket, payload, secret), bb);
    // Upper-case hex is accepted too.
    let upper = format!("sha256={}", header["sha256=".len()..].to_uppercase());
    let h = headers(&[("x-hub-signature-256", &upper)]);
    assert_eq!(verify(Forge::Github, &h, payload, secret), Ok(()));
}

#[test]
fn wrong_signatures_are_told_apart() {
    let body = b"Hello, World!";
    let good = sign(Forge::Github, body, "right");
    // Wrong secret, tampered body.
    assert!(matches!(
        verify(Forge::Github, &good, body, "wrong"),
        Err(SignatureError::Mismatch { .. })
    ));
    assert!(matches!(
        verify(Forge::Github, &good, b"Hello, World?", "right"),
        Err(SignatureError::Mismatch { .. })
    ));
    // Missing: none at all, or only GitHub's legacy SHA-1 header.
    let legacy = headers(&[("X-Hub-Signature", "sha1=0123")]);
    let err = verify(Forge::Github, &legacy, body, "right").unwrap_err();
    assert_eq!(
        err,
        SignatureError::Missing {
            forge: Forge::Github,
            header: "X-Hub-Signature-256"
        }
    );
    assert!(err.to_string().contains("webhook_secret"), "{err}");
    let err = verify(Forge::Bitbucket, &Vec::new(), body, "right").unwrap_err();
    assert!(err.to_string().contains("`X-Hub-Signature`"), "{err}");
    // Malformed: no prefix, not hex, wrong length.
    for bad in ["757107ea", "sha1=757107ea", "sha256=zz", "sha256=abcd"] {
        let h = headers(&[("X-Hub-Signature-256", bad)]);
        assert!(
            matches!(
                verify(Forge::Github, &h, body, "right"),
                Err(SignatureError::Malformed { .. })
            ),
            "{bad}"
        );
    }
    // A Bitbucket signature does not pass as GitHub's, nor the reverse.
    let bb = sign(Forge::Bitbucket, body, "right");
    assert!(verify(Forge::Github, &bb, body, "right").is_err());
    // No secret configured: nothing verifies.
    assert!(matches!(
        verify(Forge::Github, &good, body, ""),
        Err(SignatureError::NoSecret { .. })
    ));
}

#[test]
fn gitlab_compares_the_token() {
    let body = fixture("gitlab-push-hook.json");
    let h = sign(Forge::Gitlab, &body, "s3cret");
    assert_eq!(h, headers(&[("X-Gitlab-Token", "s3cret")]));
    assert_eq!(verify(Forge::Gitlab, &h, &body, "s3cret"), Ok(()));
    for wrong in ["s3cre", "s3cret!", "S3CRET", "x"] {
        assert!(matches!(
            verify(Forge::Gitlab, &h, &body, wrong),
            Err(SignatureError::Mismatch { .. })
        ));
    }
    let err = verify(Forge::Gitlab, &Vec::new(), &body, "s3cret").unwrap_err();
    assert!(err.to_string().contains("X-Gitlab-Token"), "{err}");
    assert!(
        !err.to_string().contains("s3cret"),
        "the secret leaked: {err}"
    );
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}

#[test]
fn delivery_ids_and_event_names() {
    let gh = headers(&[
        ("X-GitHub-Delivery", "72d3162e"),
        ("X-GitHub-Event", "push"),
    ]);
    assert_eq!(delivery_id(Forge::Github, &gh).as_deref(), Some("72d3162e"));
    assert_eq!(event_name(Forge::Github, &gh).as_deref(), Some("push"));
    let gl = headers(&[("X-Gitlab-Event-UUID", "uuid"), ("Idempotency-Key", "key")]);
    assert_eq!(delivery_id(Forge::Gitlab, &gl).as_deref(), Some("key"));
    let gl_old = headers(&[("X-Gitlab-Event-UUID", "uuid"), ("Idempotency-Key", " ")]);
    assert_eq!(delivery_id(Forge::Gitlab, &gl_old).as_deref(), Some("uuid"));
    let bb = headers(&[("X-Request-UUID", "r-1"), ("X-Hook-UUID", "hook")]);
    assert_eq!(delivery_id(Forge::Bitbucket, &bb).as_deref(), Some("r-1"));
    assert_eq!(delivery_id(Forge::Github, &bb), None);
    assert_eq!(event_name(Forge::Bitbucket, &bb), None);
}

#[test]
fn repo_of_reads_the_body() {
    let cases = [
        (Forge::Github, "github-push.json", "Codertocat/Hello-World"),
        (
            Forge::Github,
            "github-issue_comment-created-on-pr.json",
            "chhsia0/knative-route-demo",
        ),
        (Forge::Gitlab, "gitlab-push-hook.json", "mike/diaspora"),
        (
            Forge::Gitlab,
            "gitlab-note-hook-merge-request.json",
            "gitlab-org/gitlab-test",
        ),
        (
            Forge::Bitbucket,
            "bitbucket-repo-push.json",
            "brydzewski/foo",
        ),
    ];
    for (forge, name, repo) in cases {
        assert_eq!(
            repo_of(forge, &fixture(name)).as_deref(),
            Some(repo),
            "{name}"
        );
    }
    assert_eq!(repo_of(Forge::Github, b"not json"), None);
    assert_eq!(repo_of(Forge::Gitlab, &fixture("github-push.json")), None);
}

#[test]
fn bad_bodies_are_payload_errors() {
    let h = event_headers(Forge::Github, "push");
    let err = parse(Forge::Github, &h, b"{not json").unwrap_err();
    assert!(matches!(err, PayloadError::NotJson { .. }), "{err}");
    let err = parse(Forge::Github, &h, b"[1]").unwrap_err();
    assert!(matches!(err, PayloadError::NotJson { .. }), "{err}");
    let err = parse(Forge::Github, &Vec::new(), b"{}").unwrap_err();
    assert!(err.to_string().contains("X-GitHub-Event"), "{err}");

    let mut body = fixture_json("github-push.json");
    body["after"] = json!(42);
    let err = parse_json(Forge::Github, "push", &body).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the github `push` payload has no string `after`"
    );

    let mut body = fixture_json("bitbucket-repo-push.json");
    body["push"]["changes"][0]["new"]["target"] = json!(null);
    let err = parse_json(Forge::Bitbucket, "repo:push", &body).unwrap_err();
    assert!(
        err.to_string()
            .contains("`push.changes[0].new.target.hash`"),
        "{err}"
    );

    let mut body = fixture_json("gitlab-merge-request-hook.json");
    body["object_attributes"]
        .as_object_mut()
        .expect("object")
        .remove("iid");
    let err = parse_json(Forge::Gitlab, "Merge Request Hook", &body).unwrap_err();
    assert!(err.to_string().contains("`object_attributes.iid`"), "{err}");
}

// ---- GitHub -------------------------------------------------------------------------------

#[test]
fn github_push_creating_a_branch() {
    let event = parse_fixture(Forge::Github, "push", "github-push.json");
    assert_eq!(
        event,
        ForgeEvent::Push {
            repo: "Codertocat/Hello-World".into(),
            branch: "master".into(),
            before: None,
            after: "6113728f27ae82c7b1a177c8d03f9e96e0adf246".into(),
            pusher: "Codertocat".into(),
        }
    );
}

#[test]
fn github_push_with_a_before() {
    let mut body = fixture_json("github-push.json");
    body["before"] = json!("1111111111111111111111111111111111111111");
    body["created"] = json!(false);
    let Ok(ForgeEvent::Push { before, .. }) = parse_json(Forge::Github, "push", &body) else {
        panic!("not a push");
    };
    assert_eq!(
        before.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
}

#[test]
fn github_tag_pushes_and_deletions_are_ignored() {
    let mut tag = fixture_json("github-push.json");
    tag["ref"] = json!("refs/tags/v1.0.0");
    assert_ignored(parse_json(Forge::Github, "push", &tag), "tag `v1.0.0`");

    let mut delete = fixture_json("github-push.json");
    delete["deleted"] = json!(true);
    delete["created"] = json!(false);
    delete["before"] = json!("6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    delete["after"] = json!("0000000000000000000000000000000000000000");
    delete["head_commit"] = json!(null);
    assert_ignored(
        parse_json(Forge::Github, "push", &delete),
        "deleting branch `master`",
    );

    // After all zeros is a deletion even without `deleted`.
    delete["deleted"] = json!(false);
    assert_ignored(parse_json(Forge::Github, "push", &delete), "deleting");
}

#[test]
fn github_pull_requests() {
    let opened = parse_fixture(
        Forge::Github,
        "pull_request",
        "github-pull_request-opened.json",
    );
    assert_eq!(
        opened,
        ForgeEvent::PullRequest {
            repo: "Codertocat/Hello-World".into(),
            number: 2,
            action: PrAction::Opened,
            head_sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
            head_branch: "changes".into(),
            base_branch: "master".into(),
            from_fork: false,
            author: "Codertocat".into(),
        }
    );
    let sync = parse_fixture(
        Forge::Github,
        "pull_request",
        "github-pull_request-synchronize.json",
    );
    assert!(matches!(
        sync,
        ForgeEvent::PullRequest {
            action: PrAction::Synchronize,
            ..
        }
    ));
    for (action, expected) in [
        ("reopened", PrAction::Reopened),
        ("closed", PrAction::Closed),
    ] {
        let mut body = fixture_json("github-pull_request-opened.json");
        body["action"] = json!(action);
        let Ok(ForgeEvent::PullRequest { action, .. }) =
            parse_json(Forge::Github, "pull_request", &body)
        else {
            panic!("{action}: not a pull request");
        };
        assert_eq!(action, expected);
    }
    let mut labeled = fixture_json("github-pull_request-opened.json");
    labeled["action"] = json!("labeled");
    assert_ignored(
        parse_json(Forge::Github, "pull_request", &labeled),
        "`labeled`",
    );
}

#[test]
fn github_pull_requests_from_forks() {
    let mut body = fixture_json("github-pull_request-opened.json");
    body["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
    let Ok(ForgeEvent::PullRequest { from_fork, .. }) =
        parse_json(Forge::Github, "pull_request", &body)
    else {
        panic!("not a pull request");
    };
    assert!(from_fork);
    // A deleted fork: the head repository is null.
    body["pull_request"]["head"]["repo"] = json!(null);
    let Ok(ForgeEvent::PullRequest { from_fork, .. }) =
        parse_json(Forge::Github, "pull_request", &body)
    else {
        panic!("not a pull request");
    };
    assert!(from_fork);
}

#[test]
fn github_comments_on_pull_requests_only() {
    let event = parse_fixture(
        Forge::Github,
        "issue_comment",
        "github-issue_comment-created-on-pr.json",
    );
    assert_eq!(
        event,
        ForgeEvent::Comment {
            repo: "chhsia0/knative-route-demo".into(),
            pr_number: 3,
            comment_id: "546616131".into(),
            body: "/build".into(),
            author: "chhsia0".into(),
            author_id: "chhsia0".into(),
            head_sha: None,
            created_at: crate::forge::parse_time("2019-10-26T16:09:23Z"),
        }
    );
    let mut on_issue = fixture_json("github-issue_comment-created-on-pr.json");
    on_issue["issue"]
        .as_object_mut()
        .expect("object")
        .remove("pull_request");
    assert_ignored(
        parse_json(Forge::Github, "issue_comment", &on_issue),
        "not a pull request",
    );
    let mut edited = fixture_json("github-issue_comment-created-on-pr.json");
    edited["action"] = json!("edited");
    assert_ignored(
        parse_json(Forge::Github, "issue_comment", &edited),
        "`edited`",
    );
}

#[test]
fn github_ping_and_other_events() {
    let body = json!({"zen": "Design for failure.", "hook_id": 1,
        "repository": {"full_name": "acme/platform-infra"}});
    assert_eq!(
        parse_json(Forge::Github, "ping", &body),
        Ok(ForgeEvent::Ping {
            repo: Some("acme/platform-infra".into())
        })
    );
    assert_eq!(
        parse_json(Forge::Github, "ping", &json!({"zen": "org hook"})),
        Ok(ForgeEvent::Ping { repo: None })
    );
    assert_ignored(parse_json(Forge::Github, "issues", &json!({})), "`issues`");
}

// ---- GitLab -------------------------------------------------------------------------------

#[test]
fn gitlab_push() {
    let event = parse_fixture(Forge::Gitlab, "Push Hook", "gitlab-push-hook.json");
    assert_eq!(
        event,
        ForgeEvent::Push {
            repo: "mike/diaspora".into(),
            branch: "master".into(),
            before: Some("95790bf891e76fee5e1747ab589903a6a1f80f22".into()),
            after: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
            pusher: "jsmith".into(),
        }
    );
    // Without the header (or from a system hook) the body's object_kind decides.
    let body = fixture("gitlab-push-hook.json");
    assert_eq!(parse(Forge::Gitlab, &Vec::new(), &body), Ok(event.clone()));
    let system = event_headers(Forge::Gitlab, "System Hook");
    assert_eq!(parse(Forge::Gitlab, &system, &body), Ok(event));
}

#[test]
fn gitlab_tag_pushes_new_and_deleted_branches() {
    let mut tag = fixture_json("gitlab-push-hook.json");
    tag["object_kind"] = json!("tag_push");
    tag["ref"] = json!("refs/tags/v1.0.0");
    assert_ignored(parse_json(Forge::Gitlab, "Tag Push Hook", &tag), "tag");
    assert_ignored(parse_json(Forge::Gitlab, "Push Hook", &tag), "tag `v1.0.0`");

    let mut delete = fixture_json("gitlab-push-hook.json");
    delete["after"] = json!("0000000000000000000000000000000000000000");
    delete["checkout_sha"] = json!(null);
    assert_ignored(
        parse_json(Forge::Gitlab, "Push Hook", &delete),
        "deleting branch",
    );

    let mut create = fixture_json("gitlab-push-hook.json");
    create["before"] = json!("0000000000000000000000000000000000000000");
    let Ok(ForgeEvent::Push { before, .. }) = parse_json(Forge::Gitlab, "Push Hook", &create)
    else {
        panic!("not a push");
    };
    assert_eq!(before, None);
}

#[test]
fn gitlab_merge_requests() {
    let event = parse_fixture(
        Forge::Gitlab,
        "Merge Request Hook",
        "gitlab-merge-request-hook.json",
    );
    assert_eq!(
        event,
        ForgeEvent::PullRequest {
            repo: "gitlabhq/gitlab-test".into(),
            number: 1,
            action: PrAction::Opened,
            head_sha: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
            head_branch: "ms-viewport".into(),
            base_branch: "master".into(),
            from_fork: false,
            author: "user1".into(),
        }
    );
    let action_of = |action: &str, oldrev: Option<&str>| {
        let mut body = fixture_json("gitlab-merge-request-hook.json");
        body["object_attributes"]["action"] = json!(action);
        if let Some(rev) = oldrev {
            body["object_attributes"]["oldrev"] = json!(rev);
        }
        parse_json(Forge::Gitlab, "Merge Request Hook", &body)
    };
    for (action, expected) in [
        ("reopen", PrAction::Reopened),
        ("close", PrAction::Closed),
        ("merge", PrAction::Closed),
    ] {
        let Ok(ForgeEvent::PullRequest { action, .. }) = action_of(action, None) else {
            panic!("{action}: not a merge request");
        };
        assert_eq!(action, expected);
    }
    let Ok(ForgeEvent::PullRequest { action, .. }) =
        action_of("update", Some("95790bf891e76fee5e1747ab589903a6a1f80f22"))
    else {
        panic!("update with oldrev: not a merge request");
    };
    assert_eq!(action, PrAction::Synchronize);
    assert_ignored(action_of("update", None), "metadata update");
    assert_ignored(action_of("approved", None), "`approved`");

    let mut fork = fixture_json("gitlab-merge-request-hook.json");
    fork["object_attributes"]["source_project_id"] = json!(99);
    let Ok(ForgeEvent::PullRequest { from_fork, .. }) =
        parse_json(Forge::Gitlab, "Merge Request Hook", &fork)
    else {
        panic!("not a merge request");
    };
    assert!(from_fork);
}

#[test]
fn gitlab_notes_on_merge_requests_only() {
    let event = parse_fixture(
        Forge::Gitlab,
        "Note Hook",
        "gitlab-note-hook-merge-request.json",
    );
    assert_eq!(
        event,
        ForgeEvent::Comment {
            repo: "gitlab-org/gitlab-test".into(),
            pr_number: 1,
            comment_id: "1244".into(),
            body: "This MR needs work.".into(),
            author: "root".into(),
            author_id: "root".into(),
            head_sha: Some("562e173be03b8ff2efb05345d12df18815438a4b".into()),
            created_at: crate::forge::parse_time("2015-05-17T18:21:36Z"),
        }
    );
    let mut on_issue = fixture_json("gitlab-note-hook-merge-request.json");
    on_issue["object_attributes"]["noteable_type"] = json!("Issue");
    assert_ignored(parse_json(Forge::Gitlab, "Note Hook", &on_issue), "Issue");
    let mut edited = fixture_json("gitlab-note-hook-merge-request.json");
    edited["object_attributes"]["action"] = json!("update");
    assert_ignored(parse_json(Forge::Gitlab, "Note Hook", &edited), "`update`");
    assert_ignored(
        parse_json(
            Forge::Gitlab,
            "Pipeline Hook",
            &json!({"object_kind": "pipeline"}),
        ),
        "`Pipeline Hook`",
    );
}

// ---- Bitbucket ----------------------------------------------------------------------------

#[test]
fn bitbucket_push() {
    let event = parse_fixture(Forge::Bitbucket, "repo:push", "bitbucket-repo-push.json");
    assert_eq!(
        event,
        ForgeEvent::Push {
            repo: "brydzewski/foo".into(),
            branch: "master".into(),
            before: Some("40e7580cf11311d84a6e5e97e2cbba6df1675750".into()),
            after: "141977fedf5cf35aa290ac87d4b5177ac4cd9de1".into(),
            pusher: "brydzewski".into(),
        }
    );
}

#[test]
fn bitbucket_tag_pushes_deletions_and_several_changes() {
    let base = fixture_json("bitbucket-repo-push.json");
    let change = base["push"]["changes"][0].clone();

    let mut tag = base.clone();
    tag["push"]["changes"][0]["new"]["type"] = json!("tag");
    tag["push"]["changes"][0]["new"]["name"] = json!("v1.0.0");
    tag["push"]["changes"][0]["old"] = json!(null);
    assert_ignored(
        parse_json(Forge::Bitbucket, "repo:push", &tag),
        "tag `v1.0.0`",
    );

    let mut delete = base.clone();
    delete["push"]["changes"][0]["new"] = json!(null);
    delete["push"]["changes"][0]["closed"] = json!(true);
    assert_ignored(
        parse_json(Forge::Bitbucket, "repo:push", &delete),
        "deletion of `master`",
    );

    // A new branch: `old` is null.
    let mut create = base.clone();
    create["push"]["changes"][0]["old"] = json!(null);
    let Ok(ForgeEvent::Push { before, .. }) = parse_json(Forge::Bitbucket, "repo:push", &create)
    else {
        panic!("not a push");
    };
    assert_eq!(before, None);

    // Several changes: the first that moves a branch wins.
    let mut other = change.clone();
    other["new"]["name"] = json!("develop");
    let mut several = base.clone();
    several["push"]["changes"] = json!([tag["push"]["changes"][0], other, change]);
    let Ok(ForgeEvent::Push { branch, .. }) = parse_json(Forge::Bitbucket, "repo:push", &several)
    else {
        panic!("not a push");
    };
    assert_eq!(branch, "develop");
}

#[test]
fn bitbucket_pull_requests() {
    let event = parse_fixture(
        Forge::Bitbucket,
        "pullrequest:created",
        "bitbucket-pullrequest-created.json",
    );
    assert_eq!(
        event,
        ForgeEvent::PullRequest {
            repo: "brydzewski/foo".into(),
            number: 1,
            action: PrAction::Opened,
            head_sha: "507a576e59b3".into(),
            head_branch: "develop".into(),
            base_branch: "master".into(),
            from_fork: false,
            author: "brydzewski".into(),
        }
    );
    for (key, expected) in [
        ("pullrequest:updated", PrAction::Synchronize),
        ("pullrequest:fulfilled", PrAction::Closed),
        ("pullrequest:rejected", PrAction::Closed),
    ] {
        let ForgeEvent::PullRequest { action, .. } =
            parse_fixture(Forge::Bitbucket, key, "bitbucket-pullrequest-created.json")
        else {
            panic!("{key}: not a pull request");
        };
        assert_eq!(action, expected, "{key}");
    }
    let mut fork = fixture_json("bitbucket-pullrequest-created.json");
    fork["pullrequest"]["source"]["repository"]["full_name"] = json!("mallory/foo");
    let Ok(ForgeEvent::PullRequest { from_fork, .. }) =
        parse_json(Forge::Bitbucket, "pullrequest:created", &fork)
    else {
        panic!("not a pull request");
    };
    assert!(from_fork);
    assert_ignored(
        parse_json(Forge::Bitbucket, "pullrequest:approved", &json!({})),
        "`pullrequest:approved`",
    );
}

#[test]
fn bitbucket_comments() {
    let event = parse_fixture(
        Forge::Bitbucket,
        "pullrequest:comment_created",
        "bitbucket-pullrequest-comment_created.json",
    );
    assert_eq!(
        event,
        ForgeEvent::Comment {
            repo: "rutvijmehta-harness/spring-cloud-alibaba".into(),
            pr_number: 1,
            comment_id: "311512047".into(),
            body: "test comment".into(),
            author: "Rutvij Mehta".into(),
            author_id: "624de6f6fd5e450070486936".into(),
            head_sha: Some("b9437f32dddd".into()),
            created_at: crate::forge::parse_time("2022-06-23T22:10:09.939925+00:00"),
        }
    );
}

// ---- replay helpers -----------------------------------------------------------------------

#[test]
fn retargeting_keeps_a_same_repository_pull_request_in_place() {
    let mut body = fixture_json("github-pull_request-opened.json");
    retarget_repo(Forge::Github, &mut body, "acme/platform-infra").expect("has a repository");
    let changed =
        retarget_head(Forge::Github, "pull_request", &mut body, "abc123").expect("parses");
    assert!(changed);
    let Ok(ForgeEvent::PullRequest {
        repo,
        head_sha,
        from_fork,
        ..
    }) = parse_json(Forge::Github, "pull_request", &body)
    else {
        panic!("not a pull request");
    };
    assert_eq!(
        (repo.as_str(), head_sha.as_str(), from_fork),
        ("acme/platform-infra", "abc123", false)
    );

    let mut note = fixture_json("gitlab-note-hook-merge-request.json");
    retarget_repo(Forge::Gitlab, &mut note, "acme/platform-infra").expect("has a project");
    assert!(retarget_head(Forge::Gitlab, "Note Hook", &mut note, "abc123").expect("parses"));
    let bytes = serde_json::to_vec(&note).expect("serialisable");
    assert_eq!(
        repo_of(Forge::Gitlab, &bytes).as_deref(),
        Some("acme/platform-infra")
    );

    // A GitHub comment names no head: nothing to change.
    let mut comment = fixture_json("github-issue_comment-created-on-pr.json");
    assert!(!retarget_head(Forge::Github, "issue_comment", &mut comment, "abc").expect("parses"));
    assert!(retarget_repo(Forge::Github, &mut json!({}), "a/b").is_err());
}
