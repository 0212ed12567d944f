//! Tests of the reconciler's bookkeeping and of local pipelines, on a real store.

use std::collections::BTreeMap;

use super::*;

fn pipeline(name: &str, echo: &str) -> String {
    format!(
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nsteps:\n  - name: say\n    script: echo {echo}\n"
    )
}

fn files(list: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    list.iter()
        .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
        .collect()
}

#[test]
fn changes_make_versions_errors_keep_the_last_good_one_and_deletion_retires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut report = Report::default();
    let a1 = pipeline("alpha", "one");
    let b1 = pipeline("beta", "one");
    apply_files(
        &store,
        "infra",
        "c1",
        &files(&[("p/a.yaml", &a1), ("p/b.yaml", &b1)]),
        &mut report,
    )
    .expect("first sync");
    assert_eq!(report.new_versions, vec!["alpha", "beta"]);

    // The same files again: nothing changes, nothing is written.
    let before = store
        .get_pipeline("infra", "alpha")
        .expect("get")
        .expect("alpha");
    let mut again = Report::default();
    apply_files(
        &store,
        "infra",
        "c2",
        &files(&[("p/a.yaml", &a1), ("p/b.yaml", &b1)]),
        &mut again,
    )
    .expect("same files");
    assert_eq!(again, Report::default());
    assert_eq!(
        store.get_pipeline("infra", "alpha").expect("get"),
        Some(before)
    );

    // alpha breaks, beta changes.
    let broken = a1.replace("steps:", "stpes:");
    let b2 = pipeline("beta", "two");
    let mut third = Report::default();
    apply_files(
        &store,
        "infra",
        "c3",
        &files(&[("p/a.yaml", &broken), ("p/b.yaml", &b2)]),
        &mut third,
    )
    .expect("third");
    assert_eq!(third.invalid, vec!["alpha"]);
    assert_eq!(third.new_versions, vec!["beta"]);
    let alpha = store
        .get_pipeline("infra", "alpha")
        .expect("get")
        .expect("alpha");
    assert!(!alpha.valid);
    assert_eq!(
        alpha.version,
        Some(1),
        "the last valid version stays current"
    );
    assert!(
        alpha
            .errors
            .iter()
            .any(|e| e.to_string().starts_with("p/a.yaml:") && e.message.contains("stpes")),
        "{:?}",
        alpha.errors
    );
    let beta = store
        .get_pipeline("infra", "beta")
        .expect("get")
        .expect("beta");
    assert_eq!(
        (beta.version, beta.commit.as_deref()),
        (Some(2), Some("c3"))
    );

    // beta's file goes away: retired, versions kept.
    let mut fourth = Report::default();
    apply_files(
        &store,
        "infra",
        "c4",
        &files(&[("p/a.yaml", &a1)]),
        &mut fourth,
    )
    .expect("fourth");
    assert_eq!(fourth.retired, vec!["beta"]);
    let beta = store
        .get_pipeline("infra", "beta")
        .expect("get")
        .expect("beta");
    assert!(beta.retired);
    assert_eq!(store.versions("infra", "beta").expect("versions").len(), 2);
    let alpha = store
        .get_pipeline("infra", "alpha")
        .expect("get")
        .expect("alpha");
    assert!(alpha.valid && alpha.errors.is_empty());
    assert_eq!(
        alpha.version,
        Some(1),
        "the fixed text equals version 1: no new version"
    );
}

#[test]
fn two_files_with_one_name_report_the_second_on_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut report = Report::default();
    let a = pipeline("same", "a");
    let b = pipeline("same", "b");
    apply_files(
        &store,
        "infra",
        "c1",
        &files(&[("a.yaml", &a), ("b.yaml", &b)]),
        &mut report,
    )
    .expect("sync");
    let record = store
        .get_pipeline("infra", "same")
        .expect("get")
        .expect("same");
    assert_eq!(record.path, "a.yaml");
    assert!(
        record.errors[0].message.contains("already used by a.yaml"),
        "{:?}",
        record.errors
    );
}

#[test]
fn local_pipelines_apply_refuse_invalid_text_and_roll_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let v1 = apply_local(&store, &pipeline("db", "one"), "db.yaml", None).expect("v1");
    assert_eq!((v1.record.version, v1.changed), (Some(1), true));
    let same = apply_local(&store, &pipeline("db", "one"), "db.yaml", Some("db")).expect("same");
    assert_eq!((same.record.version, same.changed), (Some(1), false));
    let v2 = apply_local(&store, &pipeline("db", "two"), "db.yaml", None).expect("v2");
    assert_eq!(v2.record.version, Some(2));

    let err = apply_local(
        &store,
        &pipeline("db", "x").replace("steps:", "stpes:"),
        "db.yaml",
        None,
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("db.yaml:") && text.contains("stpes"),
        "{text}"
    );
    assert_eq!(
        store
            .get_pipeline(LOCAL_SOURCE, "db")
            .expect("get")
            .expect("db")
            .version,
        Some(2)
    );

    let err =
        apply_local(&store, &pipeline("db", "x"), "db.yaml", Some("other")).expect_err("name");
    assert!(err.to_string().contains("local/other"), "{err}");

    let back = rollback_local(&store, "db", 1).expect("rollback");
    assert_eq!(back.record.version, Some(3));
    let text = store
        .get_version(LOCAL_SOURCE, "db", 3)
        .expect("get")
        .expect("v3")
        .text;
    assert!(text.contains("echo one"));
    let err = rollback_local(&store, "db", 9).expect_err("no v9");
    assert!(err.to_string().contains("versions: 1, 2, 3"), "{err}");
}

#[test]
fn a_choreo_file_is_named_after_its_path_and_stored_in_gantry_s_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut report = Report::default();
    let choreo = "steps:\n  - name: say\n    inlineScript: |\n      echo hi\n";
    apply_files(
        &store,
        "infra",
        "c1",
        &files(&[(".gantry/pipelines/Nightly_Build.yaml", choreo)]),
        &mut report,
    )
    .expect("sync");
    assert_eq!(report.new_versions, vec!["nightly-build"]);
    let record = store
        .get_pipeline("infra", "nightly-build")
        .expect("get")
        .expect("record");
    let version = store
        .get_version("infra", "nightly-build", record.version.expect("a version"))
        .expect("get")
        .expect("stored");
    // Everything that re-reads the stored text (queue, API, comments) finds the same pipeline.
    let again = crate::spec::check(&version.text);
    assert_eq!(again.pipeline.expect("valid").name(), "nightly-build");
}
