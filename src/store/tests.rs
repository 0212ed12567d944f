//! Tests of the store on a real sled database in a temporary directory.

use std::collections::BTreeMap;

use chrono::Utc;

use super::*;

/// `accept_delivery` of a record that holds its body.
trait AcceptRecord {
    fn accept_record(&self, d: &DeliveryRecord, hash: &[u8; 32]) -> Result<bool, StoreError>;
}

impl AcceptRecord for Store {
    fn accept_record(&self, d: &DeliveryRecord, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.accept_delivery(d, d.body.as_bytes(), hash)
    }
}
use crate::executor::{Publication, Stream};
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
        retry_of: None,
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
fn appended_lines_are_cut_into_bounded_chunks_and_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let run = store.create_run(new_run("a")).expect("run");
    let texts: Vec<String> = (0..3000)
        .map(|i| format!("{i:>6} {}", "y".repeat(90)))
        .collect();
    // One line longer than a chunk gets a chunk of its own.
    let long = "z".repeat(100 * 1024);
    let at = Utc::now();
    let mut lines: Vec<NewLogLine<'_>> = texts
        .iter()
        .map(|t| NewLogLine {
            at,
            attempt: 1,
            stream: Stream::Stdout,
            text: t,
        })
        .collect();
    lines.insert(
        1500,
        NewLogLine {
            text: &long,
            ..lines[0]
        },
    );
    let mut next = 0;
    let stored = store
        .append_log(&run.id, 0, &mut next, &lines)
        .expect("append");
    let expected: u64 = lines.iter().map(|l| l.text.len() as u64 + 1).sum();
    assert_eq!(stored, expected);
    // ~120 bytes a line: 60 lines a chunk, and the long line alone.
    assert!((50..=53).contains(&next), "{next} chunks");
    for (k, v) in store.inner.logs.iter().map(|e| e.expect("entry")) {
        let one_line = log_chunk::decode(&v).expect("chunk").len() == 1;
        assert!(v.len() <= log_chunk::CHUNK_BYTES + 1 || one_line, "{k:?}");
    }
    let (read, _) = store.logs(&run.id, Some(0), None).expect("logs");
    let read: Vec<&str> = read.iter().map(|(_, l)| l.text.as_str()).collect();
    let written: Vec<&str> = lines.iter().map(|l| l.text).collect();
    assert_eq!(read, written);
    // The next batch goes on from the chunk number it was left at.
    let before = next;
    store
        .append_log(&run.id, 0, &mut next, &lines[..1])
        .expect("append");
    assert_eq!(next, before + 1);
    assert_eq!(
        store.log_tail(&run.id, 0, 1).expect("tail")[0].text,
        texts[0]
    );
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
        tags: vec!["postgres".into()],
        properties: BTreeMap::from([("host".into(), "db.internal".into())]),
        ..Publication::example("orders-db", &["dev"], "credential-plaintext")
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

/// The body hash a receiver would claim for `record`.
fn body_hash(record: &crate::store::DeliveryRecord) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(record.body.as_bytes()).into()
}

/// A delivery whose body of `body_len` bytes starts with its id (bodies differ, so none is a
/// replay of another).
fn delivery(id: &str, body_len: usize) -> crate::store::DeliveryRecord {
    let body = format!("{id}{}", "x".repeat(body_len.saturating_sub(id.len())));
    delivery_with(id, &body)
}

#[test]
fn the_delivery_backlog_is_counted_and_pending_ones_come_in_batches_bounded_by_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for i in 0..10 {
        assert!(
            store
                .accept_record(
                    &delivery(&format!("d{i}"), 1000),
                    &body_hash(&delivery(&format!("d{i}"), 1000))
                )
                .expect("accept")
        );
    }
    assert!(
        !store
            .accept_record(&delivery("d3", 1000), &body_hash(&delivery("d3", 1000)))
            .expect("redelivery")
    );
    assert_eq!(store.delivery_backlog(), 10);
    // About 1,100 bytes each: a 3,000-byte budget stops after the third.
    let batch = store
        .pending_deliveries(100, 3000, &|_, _| false)
        .expect("pending");
    assert_eq!(batch.len(), 3);
    // One always comes, however small the budget.
    assert_eq!(
        store
            .pending_deliveries(100, 1, &|_, _| false)
            .expect("pending")
            .len(),
        1
    );
    let (seq, first) = &batch[0];
    store
        .finish_delivery(*seq, first, "done".into(), true)
        .expect("finish");
    assert_eq!(store.delivery_backlog(), 9);
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.delivery_backlog(), 9, "counted again at open");
}

#[test]
fn the_work_dir_is_a_sibling_of_the_data_dir_unless_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("gantry-data")).expect("open");
    assert_eq!(store.work_dir(), dir.path().join("gantry-work"));
    assert_eq!(store.run_dir("r1"), dir.path().join("gantry-work/r1"));
    let other = Store::open(&dir.path().join("state")).expect("open");
    other.set_work_dir(dir.path().join("elsewhere"));
    assert_eq!(other.work_dir(), dir.path().join("elsewhere"));
}

#[test]
fn a_log_is_followed_by_seeking_and_its_tail_read_from_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let line = |text: String| LogLine {
        at: Utc::now(),
        attempt: 1,
        stream: Stream::Stdout,
        text,
    };
    for step in 0..2 {
        for chunk in 0..5u32 {
            let lines: Vec<LogLine> = (0..10)
                .map(|i| line(format!("s{step} c{chunk} l{i}")))
                .collect();
            store
                .put_log_chunk("r1", step, chunk, &lines)
                .expect("chunk");
        }
    }
    let (all, cursor) = store.logs("r1", None, None).expect("logs");
    assert_eq!(all.len(), 100);
    // Paged by bytes: a tiny budget gives one chunk a page, and the pages add up to the whole.
    let mut paged = 0;
    let mut pages = 0;
    let mut at = None;
    loop {
        let (page, next) = store.logs_page("r1", None, at.as_ref(), 1).expect("page");
        if page.is_empty() {
            break;
        }
        assert_eq!(page.len(), 10, "one chunk per page");
        paged += page.len();
        pages += 1;
        at = Some(next);
    }
    assert_eq!((paged, pages), (100, 10));
    let (none, cursor) = store.logs("r1", None, Some(&cursor)).expect("nothing new");
    assert!(none.is_empty());
    store
        .put_log_chunk("r1", 1, 5, &[line("s1 c5 new".into())])
        .expect("chunk");
    store
        .put_log_chunk("r1", 0, 5, &[line("s0 c5 new".into())])
        .expect("chunk");
    let (new, _) = store.logs("r1", None, Some(&cursor)).expect("new lines");
    let texts: Vec<&str> = new.iter().map(|(_, l)| l.text.as_str()).collect();
    assert_eq!(texts, ["s0 c5 new", "s1 c5 new"]);
    let (one_step, _) = store.logs("r1", Some(1), Some(&cursor)).expect("step 1");
    assert_eq!(one_step.len(), 1);

    let tail = store.log_tail("r1", 0, 12).expect("tail");
    let texts: Vec<&str> = tail.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts.len(), 12);
    assert_eq!(texts[0], "s0 c3 l9");
    assert_eq!(texts[1], "s0 c4 l0");
    assert_eq!(texts[11], "s0 c5 new");
    assert_eq!(store.log_tail("r1", 7, 5).expect("no such step").len(), 0);
}

#[test]
fn unprotected_runs_get_only_unprotected_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store
        .set_secret(None, "apply_key", "apply-value")
        .expect("set");
    store
        .set_secret_with(None, "plan_key", "plan-value", SecretRelease::Unprotected)
        .expect("set");
    // The pipeline's own entry is protected; the global one of the same name is released.
    store
        .set_secret(Some("infra/deploy"), "cloud", "pipeline-apply")
        .expect("set");
    store
        .set_secret_with(None, "cloud", "global-plan", SecretRelease::Unprotected)
        .expect("set");
    let names: Vec<String> = ["apply_key", "plan_key", "cloud", "unset"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let trusted = store
        .resolve_secrets_for(Some("infra/deploy"), &names, SecretRelease::Protected)
        .expect("resolve");
    assert_eq!(trusted.withheld, Vec::<String>::new());
    assert_eq!(trusted.values["apply_key"], "apply-value");
    assert_eq!(trusted.values["plan_key"], "plan-value");
    assert_eq!(trusted.values["cloud"], "pipeline-apply");
    assert!(!trusted.values.contains_key("unset"));

    let branch = store
        .resolve_secrets_for(Some("infra/deploy"), &names, SecretRelease::Unprotected)
        .expect("resolve");
    assert_eq!(branch.withheld, vec!["apply_key".to_string()]);
    assert_eq!(branch.values.get("apply_key"), None);
    assert_eq!(branch.values["plan_key"], "plan-value");
    assert_eq!(branch.values["cloud"], "global-plan");
    assert!(!branch.values.contains_key("unset"));

    // Without a scope only global entries count.
    let unscoped = store
        .resolve_secrets_for(None, &names, SecretRelease::Protected)
        .expect("resolve");
    assert_eq!(unscoped.values["cloud"], "global-plan");

    let listed: Vec<(Option<String>, String, bool)> = store
        .list_secrets()
        .expect("list")
        .into_iter()
        .map(|e| (e.pipeline, e.name, e.unprotected))
        .collect();
    assert_eq!(
        listed,
        vec![
            (None, "apply_key".into(), false),
            (None, "cloud".into(), true),
            (None, "plan_key".into(), true),
            (Some("infra/deploy".into()), "cloud".into(), false),
        ]
    );
    // Setting a secret again without the release makes it protected again.
    store.set_secret(None, "plan_key", "plan-2").expect("set");
    let again = store
        .resolve_secrets_for(None, &names, SecretRelease::Unprotected)
        .expect("resolve");
    assert!(again.withheld.contains(&"plan_key".to_string()));
}

#[test]
fn a_flipped_release_flag_does_not_release_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store
        .set_secret(None, "apply_key", "apply-value")
        .expect("set");
    let k = super::key(&[b"", b"apply_key"]);
    let mut stored = store
        .inner
        .secrets
        .get(&k)
        .expect("get")
        .expect("stored")
        .to_vec();
    assert_eq!(stored[0], 0, "protected flag first");
    stored[0] = 1;
    store.inner.secrets.insert(&k, stored).expect("write");
    let err = store
        .resolve_secrets_for(None, &["apply_key".into()], SecretRelease::Unprotected)
        .expect_err("a tampered flag must not open");
    assert!(err.to_string().contains("secret `apply_key`"), "{err}");
}

#[test]
fn secrets_of_a_version_1_store_read_as_protected() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        // What version 1 wrote: the sealed value alone, with its key as associated data.
        let k = super::key(&[b"infra/deploy", b"apply_key"]);
        let sealed = store
            .master_key(true)
            .expect("key")
            .seal(&k, b"old-value")
            .expect("seal");
        store.inner.secrets.insert(&k, sealed).expect("write");
        store
            .inner
            .meta
            .insert(b"schema_version", &1u32.to_be_bytes())
            .expect("write");
        store.flush().expect("flush");
    }
    let store = Store::open(dir.path()).expect("migrated");
    let version = store
        .inner
        .meta
        .get(b"schema_version")
        .expect("get")
        .expect("version");
    assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_be_bytes());
    let names = vec!["apply_key".to_string()];
    let trusted = store
        .resolve_secrets_for(Some("infra/deploy"), &names, SecretRelease::Protected)
        .expect("resolve");
    assert_eq!(trusted.values["apply_key"], "old-value");
    let branch = store
        .resolve_secrets_for(Some("infra/deploy"), &names, SecretRelease::Unprotected)
        .expect("resolve");
    assert_eq!(branch.withheld, names);
    drop(store);
    // Opening again does not migrate twice.
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store
            .resolve_secrets("infra/deploy", &names)
            .expect("resolve")["apply_key"],
        "old-value"
    );
}

fn ended_run(store: &Store, source: &str, pipeline: &str) -> RunRecord {
    let mut new = new_run(pipeline);
    new.source = source.into();
    let run = store.create_run(new).expect("run");
    store
        .put_log_chunk(
            &run.id,
            0,
            0,
            &[LogLine {
                at: Utc::now(),
                attempt: 1,
                stream: Stream::Stdout,
                text: format!("log of {}", run.id),
            }],
        )
        .expect("log");
    store
        .put_output(&run.id, "a", "out", "v", false)
        .expect("output");
    store
        .end_run(&run.id, RunStatus::Succeeded, None)
        .expect("end")
}

#[test]
fn prune_keeps_active_recent_published_and_the_newest_runs_per_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // The oldest run of `a` is still queued, and one is running.
    let queued = store.create_run(new_run("a")).expect("run");
    let running = store.create_run(new_run("a")).expect("run");
    store
        .update_run(&running.id, |r| r.status = RunStatus::Running)
        .expect("running");
    let published = ended_run(&store, "file", "a");
    store
        .put_publication(
            &published.id,
            "a",
            &Publication {
                name: "db".into(),
                version: "1.0.0".into(),
                category: Category::Database,
                description: None,
                tags: Vec::new(),
                properties: BTreeMap::new(),
                credentials: Vec::new(),
            },
        )
        .expect("publication");
    let a: Vec<RunRecord> = (0..25).map(|_| ended_run(&store, "file", "a")).collect();
    let b: Vec<RunRecord> = (0..3).map(|_| ended_run(&store, "file", "b")).collect();
    // Same pipeline name, another source: its own floor.
    let other: Vec<RunRecord> = (0..2).map(|_| ended_run(&store, "infra", "a")).collect();
    let policy = Retention {
        max_age: std::time::Duration::from_secs(30 * 24 * 3600),
        keep_runs: 20,
    };

    // Nothing is old yet.
    let now = Utc::now();
    assert_eq!(store.prune(now, &policy).expect("prune"), Pruned::default());

    let later = now + chrono::Duration::days(31);
    let pruned = store.prune(later, &policy).expect("prune");
    assert_eq!(pruned.runs, 5, "{pruned:?}");
    // The newest 20 of file/a are kept; the 5 before them went; the active and the published
    // run stay whatever their age.
    for r in &a[..5] {
        assert_eq!(store.get_run(&r.id).expect("get"), None, "{}", r.id);
        assert!(store.steps(&r.id).expect("steps").is_empty());
        assert!(store.logs(&r.id, None, None).expect("logs").0.is_empty());
        assert!(store.outputs(&r.id).expect("outputs").is_empty());
    }
    for r in a[5..].iter().chain(&b).chain(&other) {
        assert!(store.get_run(&r.id).expect("get").is_some(), "{}", r.id);
        assert_eq!(store.logs(&r.id, None, None).expect("logs").0.len(), 1);
    }
    for id in [&queued.id, &running.id, &published.id] {
        assert!(store.get_run(id).expect("get").is_some(), "{id}");
    }
    assert_eq!(store.steps(&queued.id).expect("steps").len(), 2);
    // Pruning again removes nothing more.
    assert_eq!(store.prune(later, &policy).expect("prune").runs, 0);
    // A smaller floor lets more go.
    let tight = Retention {
        keep_runs: 1,
        ..policy
    };
    assert_eq!(store.prune(later, &tight).expect("prune").runs, 19 + 2 + 1);
}

#[test]
fn prune_empties_old_processed_delivery_bodies_and_keeps_their_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let delivery = |id: &str| {
        delivery_with(
            id,
            &format!("{{\"ref\":\"refs/heads/main\",\"id\":\"{id}\"}}"),
        )
    };
    assert!(
        store
            .accept_record(&delivery("done"), &body_hash(&delivery("done")))
            .expect("accept")
    );
    assert!(
        store
            .accept_record(&delivery("waiting"), &body_hash(&delivery("waiting")))
            .expect("accept")
    );
    let (seq, record) = store
        .pending_deliveries(10, usize::MAX, &|_, _| false)
        .expect("pending")
        .into_iter()
        .find(|(_, r)| r.id == "done")
        .expect("queued");
    store
        .finish_delivery(seq, &record, "ran 1".into(), true)
        .expect("finish");
    let policy = Retention {
        max_age: std::time::Duration::from_secs(24 * 3600),
        keep_runs: 0,
    };
    assert_eq!(
        store
            .prune(Utc::now(), &policy)
            .expect("prune")
            .delivery_bodies,
        0
    );
    let later = Utc::now() + chrono::Duration::days(2);
    assert_eq!(
        store.prune(later, &policy).expect("prune").delivery_bodies,
        1
    );
    let done = store
        .get_delivery("github", "done")
        .expect("get")
        .expect("kept");
    assert_eq!(done.body, "");
    assert_eq!(done.outcome.as_deref(), Some("ran 1"));
    let waiting = store
        .get_delivery("github", "waiting")
        .expect("get")
        .expect("kept");
    assert!(
        !waiting.body.is_empty(),
        "an unprocessed delivery keeps its body"
    );
    // Its id is still known: a redelivery is a duplicate.
    assert!(
        !store
            .accept_record(&delivery("done"), &body_hash(&delivery("done")))
            .expect("accept")
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

fn delivery_with(id: &str, body: &str) -> DeliveryRecord {
    DeliveryRecord {
        forge: "github".into(),
        id: id.into(),
        source: "infra".into(),
        event: "push".into(),
        body: body.into(),
        body_at: None,
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
            .accept_record(&delivery_with("a", "{1}"), &hash("{1}"))
            .expect("a")
    );
    assert!(
        !store
            .accept_record(&delivery_with("a", "{1}"), &hash("{1}"))
            .expect("redelivery")
    );
    assert!(
        !store
            .accept_record(&delivery_with("b", "{1}"), &hash("{1}"))
            .expect("replay")
    );
    assert!(
        store
            .accept_record(&delivery_with("c", "{2}"), &hash("{2}"))
            .expect("c")
    );
    assert_eq!(
        store
            .pending_deliveries(10, usize::MAX, &|_, _| false)
            .expect("pending")
            .len(),
        2
    );
}

#[test]
fn concurrent_versions_of_one_pipeline_get_distinct_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|j| {
                        let text = format!("text {i}-{j}");
                        let v = store
                            .record_version("infra", "deploy", &text, "p.yaml", None)
                            .expect("record");
                        (v, text)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = std::collections::BTreeMap::new();
    for w in writers {
        for (v, text) in w.join().expect("writer") {
            assert!(seen.insert(v, text).is_none(), "version {v} given twice");
        }
    }
    assert_eq!(seen.len(), 200);
    for (v, text) in &seen {
        let stored = store
            .get_version("infra", "deploy", *v)
            .expect("get")
            .expect("stored");
        assert_eq!(
            &stored.text, text,
            "version {v} holds the text it was given for"
        );
    }
}

#[test]
fn below_the_reserve_a_delivery_is_refused_and_nothing_of_it_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store.set_min_free(MinFree::Bytes(u64::MAX));
    let d = delivery("full", 100);
    match store.accept_record(&d, &body_hash(&d)) {
        Err(StoreError::LowSpace(low)) => {
            assert_eq!(low.dir, dir.path());
            assert!(low.to_string().contains("min_free"), "{low}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(store.get_delivery("github", "full").expect("read"), None);
    assert_eq!(store.delivery_backlog(), 0);
    // Space back: the same delivery is taken, with no reopening.
    store.set_min_free(MinFree::Bytes(0));
    assert!(store.accept_record(&d, &body_hash(&d)).expect("accept"));
}

#[test]
fn a_sled_io_error_is_the_store_failure_and_reaches_the_handler_once() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    store.on_failure(move |m| record.lock().expect("lock").push(m.to_string()));
    // What sled hands back when a write meets a full disk.
    let enospc = || sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(matches!(store.db_err(enospc()), StoreError::Db { .. }));
    assert!(matches!(store.db_err(enospc()), StoreError::Db { .. }));
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains(&dir.path().join("db").display().to_string()));
    assert!(seen[0].contains("No space left on device"), "{}", seen[0]);
    assert_eq!(store.failure(), Some(seen[0].as_str()));
    // A missing tree is an answer, not a failure of the store.
    let other = tempfile::tempdir().expect("tempdir");
    let fine = Store::open(other.path()).expect("open");
    let _ = fine.db_err(sled::Error::Unsupported("x".into()));
    assert_eq!(fine.failure(), None);
}

#[test]
fn a_delivery_body_lives_apart_from_its_record_and_older_inline_bodies_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let d = delivery("apart", 2000);
    assert!(store.accept_record(&d, &body_hash(&d)).expect("accept"));
    let k = super::key(&[b"github", b"apart"]);
    let raw = store
        .inner
        .deliveries
        .get(&k)
        .expect("read")
        .expect("record");
    assert!(
        raw.len() < 1000,
        "the record holds no body: {} bytes",
        raw.len()
    );
    let stored = store
        .get_delivery("github", "apart")
        .expect("get")
        .expect("there");
    assert!(stored.body_at.is_some());
    assert_eq!(
        DeliveryRecord {
            body_at: None,
            ..stored
        },
        d
    );
    // Recording the outcome rewrites the record only; the body stays where it was.
    let (seq, pending) = store
        .pending_deliveries(10, 1 << 20, &|_, _| false)
        .expect("pending")[0]
        .clone();
    assert_eq!(pending.body, d.body);
    store
        .finish_delivery(seq, &pending, "ignored".into(), false)
        .expect("finish");
    let done = store
        .get_delivery("github", "apart")
        .expect("get")
        .expect("there");
    assert_eq!(
        (done.body.as_str(), done.outcome.as_deref()),
        (d.body.as_str(), Some("ignored"))
    );

    // A record written before bodies were kept apart holds its body inline.
    let old = delivery("inline", 500);
    let old_key = super::key(&[b"github", b"inline"]);
    store
        .put_json(&store.inner.deliveries, &old_key, &old)
        .expect("legacy record");
    assert_eq!(
        store.get_delivery("github", "inline").expect("get"),
        Some(old.clone())
    );
    store.retry_delivery(&old).expect("rewrite");
    let raw = store
        .inner
        .deliveries
        .get(&old_key)
        .expect("read")
        .expect("record");
    assert!(raw.len() < 400, "moved out on the first rewrite");
    assert_eq!(
        store
            .get_delivery("github", "inline")
            .expect("get")
            .map(|r| r.body),
        Some(old.body)
    );
}

#[test]
fn a_body_lost_in_a_crash_fails_its_delivery_and_the_redelivery_is_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let d = delivery("torn", 3000);
    assert!(store.accept_record(&d, &body_hash(&d)).expect("accept"));
    store.flush().expect("flush");
    drop(store);
    // The record reached the disk, its body did not (sled flushed on its own, then a crash).
    for entry in std::fs::read_dir(dir.path().join("bodies")).expect("bodies") {
        let path = entry.expect("entry").path();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert!(
        store
            .pending_deliveries(10, 1 << 20, &|_, _| false)
            .expect("pending")
            .is_empty()
    );
    let lost = store
        .get_delivery("github", "torn")
        .expect("get")
        .expect("record");
    assert!(
        lost.outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("failed: its body was lost")),
        "{:?}",
        lost.outcome
    );
    assert_eq!(store.delivery_backlog(), 0);
    // The forge got no 2xx, so it delivers again: taken as new, with its body.
    assert!(store.accept_record(&d, &body_hash(&d)).expect("redelivery"));
    let pending = store
        .pending_deliveries(10, 1 << 20, &|_, _| false)
        .expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.body, d.body);
}

#[test]
fn body_segments_go_once_no_kept_delivery_points_into_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = || {
        std::fs::read_dir(dir.path().join("bodies"))
            .expect("bodies")
            .count()
    };
    let store = Store::open(dir.path()).expect("open");
    let old = delivery("old", 500);
    assert!(store.accept_record(&old, &body_hash(&old)).expect("accept"));
    let (seq, record) = store
        .pending_deliveries(10, usize::MAX, &|_, _| false)
        .expect("pending")[0]
        .clone();
    store
        .finish_delivery(seq, &record, "ran 1".into(), true)
        .expect("finish");
    drop(store);
    // A new process writes a segment of its own; the old one is kept while a body in it is.
    let store = Store::open(dir.path()).expect("reopen");
    let new = delivery("new", 500);
    assert!(store.accept_record(&new, &body_hash(&new)).expect("accept"));
    assert_eq!(segments(), 2);
    let policy = Retention {
        max_age: std::time::Duration::from_secs(3600),
        keep_runs: 0,
    };
    store.prune(Utc::now(), &policy).expect("prune");
    assert_eq!(segments(), 2);
    let later = Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        store.prune(later, &policy).expect("prune").delivery_bodies,
        1
    );
    assert_eq!(segments(), 1, "the old segment went with its last body");
    let waiting = store
        .get_delivery("github", "new")
        .expect("get")
        .expect("kept");
    assert_eq!(
        waiting.body, new.body,
        "an unprocessed body is never pruned"
    );
}
