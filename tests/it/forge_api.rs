//! The write-back client (`gantry::forge::api::ForgeClient`) against the fake forges in
//! `support::forges`: the exact requests each call sends, state changes (comments edited in
//! place), permissions, PR heads, every fault mapped to the right `ApiError`, and no token where
//! it does not belong.

use std::time::Duration;

use gantry::forge::api::{ApiError, Auth, ClientConfig, ForgeClient, bitbucket_status_key};
use gantry::forge::{Forge, StatusState};

use crate::support::forges::{FakeForge, Fault, INSTALLATION_ID, INSTALLATION_TOKEN, Recorded};

const TOKEN: &str = "tok-SECRET-0123456789abcdef";
const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
const MARKER: &str = "<!-- gantry:pipeline=build -->";

fn repo(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "octo/hello",
        Forge::Gitlab => "group/sub/project",
        Forge::Bitbucket => "ws/slug",
    }
}

async fn client_with(fake: &FakeForge, forge: Forge, timeout: Duration) -> ForgeClient {
    ForgeClient::new(ClientConfig {
        forge,
        api_url: fake.url(),
        repo: repo(forge).to_string(),
        auth: Auth::Token(TOKEN.to_string()),
        timeout,
    })
    .await
    .expect("client")
}

async fn setup(forge: Forge) -> (FakeForge, ForgeClient) {
    let fake = FakeForge::start(forge);
    let client = client_with(&fake, forge, Duration::from_secs(5)).await;
    (fake, client)
}

/// The requests other than GitLab's connection check.
fn calls(fake: &FakeForge) -> Vec<Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path != "/api/v4/user")
        .collect()
}

fn only_call(fake: &FakeForge) -> Recorded {
    let calls = calls(fake);
    assert_eq!(
        calls.len(),
        1,
        "{:?}",
        calls.iter().map(Recorded::line).collect::<Vec<_>>()
    );
    calls.into_iter().next().unwrap()
}

/// The token only ever appears in the auth header.
fn assert_token_only_in_auth(fake: &FakeForge, forge: Forge) {
    for r in fake.requests() {
        let auth_header = match forge {
            Forge::Gitlab => "private-token",
            _ => "authorization",
        };
        for (name, value) in &r.headers {
            if name != auth_header {
                assert!(
                    !value.contains(TOKEN),
                    "token in header {name} of {}",
                    r.line()
                );
            }
        }
        assert!(!r.path.contains(TOKEN) && !r.query.contains(TOKEN) && !r.body.contains(TOKEN));
        let value = r.header(auth_header).expect("auth header");
        match forge {
            Forge::Gitlab => assert_eq!(value, TOKEN),
            _ => assert_eq!(value, format!("Bearer {TOKEN}")),
        }
    }
}

fn assert_no_token(error: &ApiError) {
    assert!(!error.to_string().contains(TOKEN), "{error}");
    assert!(!format!("{error:?}").contains(TOKEN), "{error:?}");
}

const STATES: [StatusState; 6] = [
    StatusState::Pending,
    StatusState::Running,
    StatusState::Success,
    StatusState::Failure,
    StatusState::Error,
    StatusState::Canceled,
];

#[tokio::test]
async fn github_statuses() {
    let (fake, client) = setup(Forge::Github).await;
    let expected = [
        ("pending", "queued"),
        ("pending", "running"),
        ("success", "succeeded"),
        ("failure", "failed"),
        ("error", "error"),
        ("error", "cancelled"),
    ];
    for (state, (word, description)) in STATES.into_iter().zip(expected) {
        fake.clear_requests();
        client
            .set_status(
                SHA,
                "gantry/build",
                state,
                "",
                "https://ci.example.com/run/42",
            )
            .await
            .unwrap_or_else(|e| panic!("{state:?}: {e}"));
        let r = only_call(&fake);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/repos/octo/hello/statuses/{SHA}"));
        assert_eq!(
            r.json(),
            serde_json::json!({
                "state": word,
                "description": description,
                "context": "gantry/build",
                "target_url": "https://ci.example.com/run/42",
            })
        );
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert_token_only_in_auth(&fake, Forge::Github);
    }
    fake.clear_requests();
    client
        .set_status(SHA, "gantry/build", StatusState::Canceled, "by alice", "")
        .await
        .unwrap();
    let r = only_call(&fake);
    assert_eq!(r.json()["description"], "cancelled: by alice");
    assert!(r.json().get("target_url").is_none());
}

#[tokio::test]
async fn gitlab_statuses_and_repeated_state() {
    let (fake, client) = setup(Forge::Gitlab).await;
    let expected = [
        "pending", "running", "success", "failed", "failed", "canceled",
    ];
    for (i, (state, word)) in STATES.into_iter().zip(expected).enumerate() {
        fake.clear_requests();
        // A sha per state: Failure and Error both map to `failed`, which the fake (like GitLab)
        // refuses twice in a row on one sha and name.
        let sha = format!("{:0>40}", i);
        client
            .set_status(
                &sha,
                "gantry/build",
                state,
                "",
                "https://ci.example.com/run/42",
            )
            .await
            .unwrap_or_else(|e| panic!("{state:?}: {e}"));
        let r = only_call(&fake);
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path,
            format!("/api/v4/projects/group%2Fsub%2Fproject/statuses/{sha}")
        );
        let form = r.form();
        assert_eq!(form.get("state").map(String::as_str), Some(word));
        assert_eq!(form.get("name").map(String::as_str), Some("gantry/build"));
        assert_eq!(
            form.get("target_url").map(String::as_str),
            Some("https://ci.example.com/run/42")
        );
        assert!(form.contains_key("description"));
        assert_token_only_in_auth(&fake, Forge::Gitlab);
    }
    // The same state twice: GitLab answers 400 "Cannot transition status", which is success.
    fake.clear_requests();
    for _ in 0..2 {
        client
            .set_status(SHA, "gantry/build", StatusState::Running, "running", "")
            .await
            .expect("repeated running is fine");
    }
    assert_eq!(calls(&fake).len(), 2);
}

#[tokio::test]
async fn bitbucket_statuses() {
    let (fake, client) = setup(Forge::Bitbucket).await;
    let expected = [
        "INPROGRESS",
        "INPROGRESS",
        "SUCCESSFUL",
        "FAILED",
        "FAILED",
        "STOPPED",
    ];
    for (state, word) in STATES.into_iter().zip(expected) {
        fake.clear_requests();
        client
            .set_status(
                SHA,
                "gantry-build",
                state,
                "",
                "https://ci.example.com/run/42",
            )
            .await
            .unwrap_or_else(|e| panic!("{state:?}: {e}"));
        let r = only_call(&fake);
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path,
            format!("/2.0/repositories/ws/slug/commit/{SHA}/statuses/build")
        );
        let body = r.json();
        assert_eq!(body["key"], "gantry-build");
        assert_eq!(body["state"], word);
        assert_eq!(body["name"], "gantry-build");
        assert_eq!(body["url"], "https://ci.example.com/run/42");
        assert!(body["description"].is_string());
        assert_token_only_in_auth(&fake, Forge::Bitbucket);
    }
    // A long context gets a stable key of at most 40 characters.
    fake.clear_requests();
    let context = "gantry/a-pipeline-with-a-rather-long-name/deploy";
    client
        .set_status(
            SHA,
            context,
            StatusState::Success,
            "ok",
            "https://ci.example.com",
        )
        .await
        .unwrap();
    let body = only_call(&fake).json();
    let key = body["key"].as_str().unwrap();
    assert!(key.len() <= 40);
    assert_eq!(key, bitbucket_status_key(context));
    assert_eq!(body["name"], context);
}

/// Create, edit (the documented method), find by marker, for each forge.
#[tokio::test]
async fn comments_edit_in_place_and_are_found_again() {
    for forge in Forge::ALL {
        let (fake, client) = setup(forge).await;
        let other = fake.add_comment(3, "LGTM");
        let body = format!("{MARKER}\nRun queued");
        let id = client.create_comment(3, &body).await.unwrap();
        assert_ne!(id, other.to_string());
        let create = calls(&fake).pop().unwrap();
        let (method, path) = match forge {
            Forge::Github => ("POST", "/repos/octo/hello/issues/3/comments".to_string()),
            Forge::Gitlab => (
                "POST",
                "/api/v4/projects/group%2Fsub%2Fproject/merge_requests/3/notes".to_string(),
            ),
            Forge::Bitbucket => (
                "POST",
                "/2.0/repositories/ws/slug/pullrequests/3/comments".to_string(),
            ),
        };
        assert_eq!(
            (create.method.as_str(), create.path.as_str()),
            (method, path.as_str())
        );
        match forge {
            Forge::Github => assert_eq!(create.json(), serde_json::json!({ "body": body })),
            Forge::Gitlab => assert_eq!(create.form().get("body"), Some(&body)),
            Forge::Bitbucket => {
                assert_eq!(
                    create.json(),
                    serde_json::json!({ "content": { "raw": body } })
                )
            }
        }

        let edited = format!("{MARKER}\nRun succeeded");
        fake.clear_requests();
        client.edit_comment(3, &id, &edited).await.unwrap();
        let edit = only_call(&fake);
        let (method, path) = match forge {
            Forge::Github => ("PATCH", format!("/repos/octo/hello/issues/comments/{id}")),
            Forge::Gitlab => (
                "PUT",
                format!("/api/v4/projects/group%2Fsub%2Fproject/merge_requests/3/notes/{id}"),
            ),
            Forge::Bitbucket => (
                "PUT",
                format!("/2.0/repositories/ws/slug/pullrequests/3/comments/{id}"),
            ),
        };
        assert_eq!(
            (edit.method.as_str(), edit.path.as_str()),
            (method, path.as_str()),
            "{forge}"
        );
        assert_eq!(
            fake.comments(3),
            vec![
                (other.to_string(), "LGTM".to_string()),
                (id.clone(), edited.clone())
            ],
            "{forge}"
        );

        assert_eq!(
            client.find_comment(3, MARKER).await.unwrap(),
            Some(id.clone()),
            "{forge}"
        );
        assert_eq!(
            client.find_comment(3, "<!-- nothing -->").await.unwrap(),
            None
        );
        assert_eq!(client.find_comment(4, MARKER).await.unwrap(), None);
        // Editing a comment that does not exist is a 404, not retryable.
        let err = client.edit_comment(3, "999999", "x").await.unwrap_err();
        assert_eq!(
            (err.status, err.retryable),
            (Some(404), false),
            "{forge}: {err}"
        );
        assert_no_token(&err);
        assert_token_only_in_auth(&fake, forge);
    }
}

/// Many comments: the marker is found on a later page, and the first match wins.
#[tokio::test]
async fn find_comment_pages() {
    for forge in Forge::ALL {
        let (fake, client) = setup(forge).await;
        for i in 0..130 {
            fake.add_comment(5, &format!("comment {i}"));
        }
        let first = fake.add_comment(5, &format!("{MARKER} first"));
        fake.add_comment(5, &format!("{MARKER} second"));
        assert_eq!(
            client.find_comment(5, MARKER).await.unwrap(),
            Some(first.to_string()),
            "{forge}"
        );
        assert!(calls(&fake).len() >= 2, "{forge}: paged");
        assert_token_only_in_auth(&fake, forge);
    }
}

/// A user, their access in the forge's words, and whether that is write access.
type UserCase = (&'static str, &'static str, bool);

#[tokio::test]
async fn can_write() {
    let cases: [(Forge, &[UserCase]); 3] = [
        (
            Forge::Github,
            &[
                ("alice", "admin", true),
                ("bob", "maintain", true),
                ("carol", "write", true),
                ("dave", "triage", false),
                ("erin", "read", false),
            ],
        ),
        (
            Forge::Gitlab,
            &[
                ("alice", "owner", true),
                ("bob", "maintainer", true),
                ("carol", "developer", true),
                ("dave", "reporter", false),
                ("erin", "guest", false),
            ],
        ),
        (
            Forge::Bitbucket,
            &[
                ("alice", "admin", true),
                ("carol", "write", true),
                ("erin", "read", false),
            ],
        ),
    ];
    for (forge, users) in cases {
        let (fake, client) = setup(forge).await;
        for (user, level, _) in users {
            fake.set_permission(user, level);
        }
        for (user, level, expected) in users {
            assert_eq!(
                client.can_write(user).await.unwrap(),
                *expected,
                "{forge} {user} {level}"
            );
        }
        // Someone the forge does not know as a member: false (GitHub: 404 is an error).
        match forge {
            Forge::Github => {
                let err = client.can_write("mallory").await.unwrap_err();
                assert_eq!(err.status, Some(404));
            }
            _ => assert!(!client.can_write("mallory").await.unwrap(), "{forge}"),
        }
        let paths: Vec<String> = calls(&fake).iter().map(Recorded::line).collect();
        match forge {
            Forge::Github => {
                assert!(
                    paths.contains(&"GET /repos/octo/hello/collaborators/alice/permission".into())
                )
            }
            Forge::Gitlab => {
                assert!(paths.contains(&"GET /api/v4/users".into()), "{paths:?}");
                assert!(
                    paths.iter().any(|p| p
                        .starts_with("GET /api/v4/projects/group%2Fsub%2Fproject/members/all/")),
                    "{paths:?}"
                );
            }
            Forge::Bitbucket => {
                assert!(
                    paths.contains(&"GET /2.0/workspaces/ws/permissions/repositories/slug".into())
                );
                let q = calls(&fake)[0].query_pairs()["q"].clone();
                // By account id (or uuid), never by nickname: nicknames are not unique.
                assert!(q.contains("user.account_id=\"alice\""), "{q}");
                assert!(!q.contains("nickname"), "{q}");
            }
        }
        assert_token_only_in_auth(&fake, forge);
    }
}

#[tokio::test]
async fn pr_head() {
    for forge in Forge::ALL {
        let (fake, client) = setup(forge).await;
        fake.set_pr_head(12, SHA);
        assert_eq!(client.pr_head(12).await.unwrap(), SHA, "{forge}");
        let r = calls(&fake).pop().unwrap();
        let path = match forge {
            Forge::Github => "/repos/octo/hello/pulls/12",
            Forge::Gitlab => "/api/v4/projects/group%2Fsub%2Fproject/merge_requests/12",
            Forge::Bitbucket => "/2.0/repositories/ws/slug/pullrequests/12",
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", path));
        let err = client.pr_head(13).await.unwrap_err();
        assert_eq!(
            (err.status, err.retryable),
            (Some(404), false),
            "{forge}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(forge.as_str()) && text.contains("pr_head") && text.contains("404"),
            "{text}"
        );
        assert_no_token(&err);
    }
}

#[tokio::test]
async fn faults_map_to_retryable_errors() {
    for forge in Forge::ALL {
        let fake = FakeForge::start(forge);
        let client = client_with(&fake, forge, Duration::from_millis(800)).await;
        let status = || {
            client.set_status(
                SHA,
                "gantry/build",
                StatusState::Success,
                "ok",
                "https://ci",
            )
        };

        fake.fail_next(1, Fault::ServerError);
        let err = status().await.unwrap_err();
        assert_eq!(
            (err.status, err.retryable, err.retry_after),
            (Some(500), true, None),
            "{forge}: {err}"
        );
        assert!(err.to_string().contains("set_status") && err.to_string().contains(forge.as_str()));
        assert_no_token(&err);

        fake.fail_next(
            1,
            Fault::TooManyRequests {
                retry_after_secs: 30,
            },
        );
        let err = status().await.unwrap_err();
        assert_eq!(
            (err.status, err.retryable, err.retry_after),
            (Some(429), true, Some(Duration::from_secs(30))),
            "{forge}: {err}"
        );

        fake.fail_next(1, Fault::RateLimited { reset_in_secs: 120 });
        let err = status().await.unwrap_err();
        assert_eq!(
            (err.status, err.retryable),
            (Some(403), true),
            "{forge}: {err}"
        );
        let wait = err.retry_after.expect("retry_after from X-RateLimit-Reset");
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );

        fake.fail_next(1, Fault::Drop);
        let err = status().await.unwrap_err();
        assert_eq!((err.status, err.retryable), (None, true), "{forge}: {err}");
        assert_no_token(&err);

        fake.fail_next(1, Fault::Delay(Duration::from_secs(3)));
        let started = std::time::Instant::now();
        let err = status().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the timeout bounds the call"
        );
        assert_eq!((err.status, err.retryable), (None, true), "{forge}: {err}");
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_no_token(&err);

        // Exactly one attempt per call: the client does not retry on its own.
        let attempts = calls(&fake).iter().filter(|r| r.method == "POST").count();
        assert_eq!(attempts, 5, "{forge}");

        // A plain 4xx is not retryable; after the faults, calls work again.
        status().await.expect("works after the faults");
        assert_token_only_in_auth(&fake, forge);
    }
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let fake = FakeForge::start(Forge::Bitbucket);
    for (forge, repo, url) in [
        (Forge::Github, "no-slash", fake.url()),
        (Forge::Bitbucket, "ws/slug/extra", fake.url()),
        (
            Forge::Gitlab,
            "group/project",
            "ftp://example.com".to_string(),
        ),
    ] {
        let err = ForgeClient::new(ClientConfig {
            forge,
            api_url: url,
            repo: repo.to_string(),
            auth: Auth::Token(TOKEN.to_string()),
            timeout: Duration::from_secs(1),
        })
        .await
        .unwrap_err();
        assert!(!err.retryable, "{err}");
        assert_no_token(&err);
    }
    let err = ForgeClient::new(ClientConfig {
        forge: Forge::Github,
        api_url: fake.url(),
        repo: "o/r".into(),
        auth: Auth::GithubApp {
            app_id: 1,
            private_key_pem: "not a key".into(),
        },
        timeout: Duration::from_secs(1),
    })
    .await
    .unwrap_err();
    assert!(
        !err.retryable && !err.to_string().contains("not a key"),
        "{err}"
    );
    assert!(calls(&fake).is_empty(), "construction makes no call");
}

#[tokio::test]
async fn github_app_exchanges_an_installation_token() {
    let pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github-app-test-key.pem"),
    )
    .unwrap();
    let fake = FakeForge::start(Forge::Github);
    let client = ForgeClient::new(ClientConfig {
        forge: Forge::Github,
        api_url: fake.url(),
        repo: "octo/hello".into(),
        auth: Auth::GithubApp {
            app_id: 4242,
            private_key_pem: pem.clone(),
        },
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert!(
        fake.requests().is_empty(),
        "lazy: nothing before the first call"
    );

    // The lookup failing (5xx) is retryable and not cached.
    fake.fail_matching(Some("GET"), Some("/installation"), 1, Fault::ServerError);
    let err = client
        .set_status(SHA, "gantry/build", StatusState::Pending, "", "")
        .await
        .unwrap_err();
    assert_eq!((err.status, err.retryable), (Some(500), true), "{err}");
    fake.clear_requests();

    client
        .set_status(SHA, "gantry/build", StatusState::Pending, "", "")
        .await
        .unwrap();
    client.create_comment(1, "hello").await.unwrap();
    let requests = fake.requests();
    let lines: Vec<String> = requests.iter().map(Recorded::line).collect();
    assert_eq!(
        lines,
        vec![
            "GET /repos/octo/hello/installation".to_string(),
            format!("POST /app/installations/{INSTALLATION_ID}/access_tokens"),
            format!("POST /repos/octo/hello/statuses/{SHA}"),
            "POST /repos/octo/hello/issues/1/comments".to_string(),
        ],
        "the token is fetched once and cached"
    );
    for r in &requests[..2] {
        let auth = r.header("authorization").unwrap();
        let jwt = auth.strip_prefix("Bearer ").unwrap();
        assert_eq!(jwt.split('.').count(), 3, "a JWT: {auth}");
    }
    for r in &requests[2..] {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {INSTALLATION_TOKEN}").as_str())
        );
    }
    for r in &requests {
        assert!(!r.body.contains("PRIVATE KEY"));
    }
    // An App's comments are its bot user's: found again as `<slug>[bot]` (`GET /app`, with the
    // JWT), and a marked comment by anyone else is not.
    fake.add_comment_by(1, "mallory", &format!("{MARKER} not ours"));
    let ours = client
        .create_comment(1, &format!("{MARKER} ours"))
        .await
        .unwrap();
    fake.clear_requests();
    assert_eq!(client.find_comment(1, MARKER).await.unwrap(), Some(ours));
    let app = fake
        .requests()
        .into_iter()
        .find(|r| r.line() == "GET /app")
        .expect("GET /app");
    assert!(
        app.header("authorization")
            .is_some_and(|a| a.split('.').count() == 3)
    );

    // A failing token exchange: retryable with its status, no key in the message.
    let fake = FakeForge::start(Forge::Github);
    let client = ForgeClient::new(ClientConfig {
        forge: Forge::Github,
        api_url: fake.url(),
        repo: "octo/hello".into(),
        auth: Auth::GithubApp {
            app_id: 4242,
            private_key_pem: pem,
        },
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    fake.fail_matching(Some("POST"), Some("/access_tokens"), 1, Fault::ServerError);
    let err = client.pr_head(1).await.unwrap_err();
    assert_eq!((err.status, err.retryable), (Some(500), true), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

/// Gantry's comment is found only among the comments of the token's own account, which is
/// asked once (`GET /user`, `GET /2.0/user`) and cached.
#[tokio::test]
async fn find_comment_skips_marked_comments_by_others() {
    for forge in Forge::ALL {
        let (fake, client) = setup(forge).await;
        fake.add_comment_by(6, "mallory", &format!("{MARKER} copied"));
        assert_eq!(
            client.find_comment(6, MARKER).await.unwrap(),
            None,
            "{forge}"
        );
        let own = fake.add_comment(6, &format!("{MARKER} ours"));
        assert_eq!(
            client.find_comment(6, MARKER).await.unwrap(),
            Some(own.to_string()),
            "{forge}"
        );
        let who = match forge {
            Forge::Github => "GET /user",
            Forge::Gitlab => "GET /api/v4/user",
            Forge::Bitbucket => "GET /2.0/user",
        };
        // All requests: `calls` leaves out GitLab's `GET /user`.
        let lines: Vec<String> = fake.requests().iter().map(Recorded::line).collect();
        let asked = lines.iter().filter(|l| *l == who).count();
        assert_eq!(asked, 1, "{forge}: asked once: {lines:?}");
        assert_token_only_in_auth(&fake, forge);
    }
}
