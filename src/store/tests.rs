//! Tests of the store on a real sled database in a temporary directory.

use std::collections::BTreeMap;

use chrono::Utc;

use super::*;
use crate::executor::{Publication, PublishedCredential, PublishedCredentials, Stream};
use crate::spec::model::Category;

fn new_run(pipeline: &str) -> NewRun {
    NewRun {
        source: "file".into(),
        pipeline: pipeline.into(),
        version: 1,
        parameters: BTreeMap::new(),
        trigger: Trigger {
            kind: "manual".into(),
            detail: None,
        },
        git: None,
        steps: vec!["a".into(), "b".into()],
        owner: None,
        status: RunStatus::Queued,
        concurrency: None,
        message: None,
        pr: None,
        idempotency_key: None,
    }
}

fn all_bytes_under(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(all_bytes_under(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn runs_get_numbers_per_pipeline_and_sortable_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let a1 = store.create_run(new_run("a")).expect("run");
    let b1 = store.create_run(new_run("b")).expect("run");
    let a2 = store.create_run(new_run("a")).expect("run");
    assert_eq!((a1.number, b1.number, a2.number), (1, 1, 2));
    assert!(
        a1.id < b1.id && b1.id < a2.id,
        "{} {} {}",
        a1.id,
        b1.id,
        a2.id
    );
    assert_eq!(a1.id.len(), 26);
    let listed: Vec<u64> = store
        .list_runs(Some("a"), 10)
        .expect("list")
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(listed, vec![2, 1]);
    assert_eq!(store.list_runs(None, 2).expect("list").len(), 2);
    assert_eq!(
        store.find_run(&a2.id.to_lowercase()).expect("any case").id,
        a2.id
    );
    // Runs made in the same millisecond share all but the last characters; one made later
    // differs in its time part, so a short prefix finds it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let later = store.create_run(new_run("a")).expect("run");
    assert_eq!(
        store.find_run(&later.id[..10]).expect("prefix").id,
        later.id
    );
    assert!(matches!(
        store.find_run("0"),
        Err(StoreError::AmbiguousRun(_))
    ));
    assert!(matches!(
        store.find_run("ZZZZ"),
        Err(StoreError::NoSuchRun(_))
    ));
    let steps = store.steps(&a1.id).expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].state, StepState::Pending);
}

#[test]
fn ids_made_in_the_same_millisecond_still_sort() {
    let now = Utc::now();
    let ids: Vec<String> = (0..1000).map(|_| runs::new_run_id(now)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let store = Store::open(dir.path()).expect("open");
        let run = store.create_run(new_run("a")).expect("run");
        store
            .update_run(&run.id, |r| r.status = RunStatus::Succeeded)
            .expect("update");
        store.set_var(None, "region", "eu").expect("var");
        store.flush().expect("flush");
        run.id
    };
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store.get_run(&id).expect("get").map(|r| r.status),
        Some(RunStatus::Succeeded)
    );
    assert_eq!(
        store
            .resolve_vars("a", &["region".into()])
            .expect("vars")
            .get("region")
            .map(String::as_str),
        Some("eu")
    );
}

#[test]
fn a_second_open_of_the_same_dir_says_it_is_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path()).expect("open");
    // sled locks the database file per process; a second handle in the same process shares the
    // lock, so the message is checked through the error type on a foreign lock elsewhere. Here we
    // only make sure a second open in-process does not corrupt anything.
    let err = Store::open(dir.path()).err();
    if let Some(e) = err {
        assert!(e.to_string().contains("in use"), "{e}");
    }
}

#[test]
fn logs_are_chunked_and_followable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = store.create_run(new_run("a")).expect("run");
    let line = |t: &str| LogLine {
        at: Utc::now(),
        attempt: 1,
        stream: Stream::Stdout,
        text: t.into(),
    };
    store
        .put_log_chunk(&run.id, 0, 0, &[line("one"), line("two")])
        .expect("append");
    store
        .put_log_chunk(&run.id, 1, 0, &[line("b-one")])
        .expect("append");
    let (lines, cursor) = store.logs(&run.id, None, None).expect("logs");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.text.as_str()).collect();
    assert_eq!(texts, vec!["one", "two", "b-one"]);
    store
        .put_log_chunk(&run.id, 0, 1, &[line("three")])
        .expect("append");
    let (more, cursor2) = store.logs(&run.id, None, Some(&cursor)).expect("logs");
    assert_eq!(
        more.iter()
            .map(|(s, l)| (*s, l.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "three")]
    );
    let (none, _) = store.logs(&run.id, None, Some(&cursor2)).expect("logs");
    assert!(none.is_empty());
    let (only_b, _) = store.logs(&run.id, Some(1), None).expect("logs");
    assert_eq!(only_b.len(), 1);
}

#[test]
fn secrets_are_sealed_scoped_and_never_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // SAFETY of the test: the variable is removed so the key file path is used.
    let store = Store::open(dir.path()).expect("open");
    store
        .set_secret(None, "token", "global-plaintext-value")
        .expect("set");
    store
        .set_secret(Some("deploy"), "token", "pipeline-plaintext-value")
        .expect("set");
    let names: Vec<(Option<String>, String, Option<String>)> = store
        .list_secrets()
        .expect("list")
        .into_iter()
        .map(|e| (e.pipeline, e.name, e.value))
        .collect();
    assert_eq!(
        names,
        vec![
            (None, "token".into(), None),
            (Some("deploy".into()), "token".into(), None)
        ]
    );
    let want = vec!["token".to_string()];
    assert_eq!(
        store.resolve_secrets("deploy", &want).expect("resolve")["token"],
        "pipeline-plaintext-value"
    );
    assert_eq!(
        store.resolve_secrets("other", &want).expect("resolve")["token"],
        "global-plaintext-value"
    );
    assert!(
        store
            .resolve_secrets("other", &["missing".into()])
            .expect("resolve")
            .is_empty()
    );
    store
        .put_output("RUN", "step", "password", "output-plaintext-value", true)
        .expect("output");
    store
        .put_output("RUN", "step", "host", "db.internal", false)
        .expect("output");
    let outputs = store.outputs("RUN").expect("outputs");
    assert_eq!(
        outputs
            .iter()
            .find(|o| o.name == "password")
            .and_then(|o| o.value.clone()),
        None
    );
    assert_eq!(
        outputs
            .iter()
            .find(|o| o.name == "host")
            .and_then(|o| o.value.clone()),
        Some("db.internal".into())
    );
    store.flush().expect("flush");
    drop(store);
    let bytes = all_bytes_under(dir.path());
    for plain in [
        "global-plaintext-value",
        "pipeline-plaintext-value",
        "output-plaintext-value",
    ] {
        assert!(
            !contains(&bytes, plain.as_bytes()),
            "{plain} found in the data dir"
        );
    }
    assert!(contains(&bytes, b"db.internal"));
    if std::env::var_os(crypto::KEY_ENV).is_none() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(crypto::KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn publications_seal_secret_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let publication = Publication {
        name: "orders-db".into(),
        version: "1.0.0".into(),
        category: Category::Database,
        description: None,
        tags: vec!["postgres".into()],
        properties: BTreeMap::from([("host".into(), "db.internal".into())]),
        credentials: vec![PublishedCredentials {
            environments: vec!["dev".into()],
            parameters: vec![
                PublishedCredential {
                    key: "DB_HOST".into(),
                    value: "db.internal".into(),
                    is_secret: false,
                },
                PublishedCredential {
                    key: "DB_PASSWORD".into(),
                    value: "credential-plaintext".into(),
                    is_secret: true,
                },
            ],
        }],
    };
    store
        .put_publication("RUN", "publish", &publication)
        .expect("put");
    let hidden = store.publications("RUN", false).expect("read");
    assert_eq!(hidden[0].1.credentials[0].parameters[1].value, "***");
    let revealed = store.publications("RUN", true).expect("read");
    assert_eq!(revealed[0].0, "publish");
    assert_eq!(revealed[0].1, publication);
    store.flush().expect("flush");
    drop(store);
    assert!(!contains(
        &all_bytes_under(dir.path()),
        b"credential-plaintext"
    ));
}

#[test]
fn a_lost_key_file_is_an_error_not_a_new_key() {
    if std::env::var_os(crypto::KEY_ENV).is_some() {
        return; // the key then comes from the environment, and there is no file to lose
    }
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store.set_secret(None, "token", "value").expect("set");
    }
    std::fs::remove_file(dir.path().join(crypto::KEY_FILE)).expect("remove key");
    let store = Store::open(dir.path()).expect("reopen");
    let err = store
        .resolve_secrets("p", &["token".into()])
        .expect_err("no key, no value");
    let message = err.to_string();
    assert!(
        message.contains("secret `token`") && message.contains("master.key is missing"),
        "{message}"
    );
    assert!(
        !dir.path().join(crypto::KEY_FILE).exists(),
        "a read must not create a new key"
    );
}

#[test]
fn a_new_data_dir_is_private_and_ignored_by_git() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("gantry-data");
    let _store = Store::open(&dir).expect("open");
    assert_eq!(
        std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(".gitignore"))
            .expect("ignore")
            .lines()
            .last(),
        Some("*")
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store
            .inner
            .meta
            .insert(b"schema_version", &99u32.to_be_bytes())
            .expect("write");
        store.flush().expect("flush");
    }
    match Store::open(dir.path()) {
        Err(StoreError::TooNew { found: 99 }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[test]
fn versions_are_recorded_only_when_the_text_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(
        store
            .record_version("file", "p", "a: 1", "p.yaml", None)
            .expect("v"),
        1
    );
    assert_eq!(
        store
            .record_version("file", "p", "a: 1", "p.yaml", None)
            .expect("v"),
        1
    );
    assert_eq!(
        store
            .record_version("file", "p", "a: 2", "p.yaml", None)
            .expect("v"),
        2
    );
    assert_eq!(
        store
            .latest_version("file", "p")
            .expect("latest")
            .map(|v| v.text),
        Some("a: 2".into())
    );
    assert_eq!(
        store
            .latest_version("file", "p")
            .expect("latest")
            .map(|v| v.version),
        Some(2)
    );
}

#[test]
fn a_run_with_an_idempotency_key_is_created_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let key = "github/d-1/run/build";
    assert_eq!(store.done_for(key).expect("read"), None);
    let first = store
        .create_run(NewRun {
            idempotency_key: Some(key.into()),
            ..new_run("build")
        })
        .expect("first");
    assert_eq!(store.done_for(key).expect("read"), Some(first.id.clone()));
    let again = store
        .create_run(NewRun {
            idempotency_key: Some(key.into()),
            ..new_run("build")
        })
        .expect("again");
    assert_eq!(again.id, first.id, "the first run, not a second");
    assert_eq!(store.list_runs(None, 10).expect("list").len(), 1);
    // Another key is another run.
    let other = store
        .create_run(NewRun {
            idempotency_key: Some("github/d-2/run/build".into()),
            ..new_run("build")
        })
        .expect("other");
    assert_ne!(other.id, first.id);
}

fn delivery(id: &str, body: &str) -> DeliveryRecord {
    DeliveryRecord {
        forge: "github".into(),
        id: id.into(),
        source: "infra".into(),
        event: "push".into(),
        body: body.into(),
        received_at: Utc::now(),
        outcome: None,
        processed_at: None,
        attempts: 0,
        retry_at: None,
        last_error: None,
        head: None,
    }
}

#[test]
fn a_body_accepted_once_is_a_duplicate_under_any_delivery_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let hash = |b: &str| -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(b.as_bytes()).into()
    };
    assert!(
        store
            .accept_delivery(&delivery("a", "{1}"), &hash("{1}"))
            .expect("a")
    );
    assert!(
        !store
            .accept_delivery(&delivery("a", "{1}"), &hash("{1}"))
            .expect("redelivery")
    );
    assert!(
        !store
            .accept_delivery(&delivery("b", "{1}"), &hash("{1}"))
            .expect("replay")
    );
    assert!(
        store
            .accept_delivery(&delivery("c", "{2}"), &hash("{2}"))
            .expect("c")
    );
    assert_eq!(store.pending_deliveries(10).expect("pending").len(), 2);
}
