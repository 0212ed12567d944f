//! The marketplace's rules on a real store in a temporary directory.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};

use super::binding::{Format, binding_files, render_env, well_known};
use super::*;
use crate::executor::PublishedCredential;

const PASSWORD: &str = "s3cret-Pa55word-1";

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    (dir, store)
}

fn origin(pipeline: &str, run: u64) -> Origin {
    Origin {
        source: "demo".into(),
        pipeline: pipeline.into(),
        run_id: format!("RUN-{pipeline}-{run}"),
        run_number: run,
        commit: Some("a".repeat(40)),
        git_ref: Some("refs/heads/main".into()),
    }
}

fn publication(envs: &[&str], password: &str) -> Publication {
    Publication {
        description: Some("Orders database".into()),
        tags: vec!["postgres".into(), "team-a".into()],
        properties: BTreeMap::from([
            ("type".to_string(), "PostgreSQL".to_string()),
            ("port".to_string(), "5432".to_string()),
        ]),
        ..Publication::example("orders-db", envs, password)
    }
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 10, minute, 0)
        .single()
        .expect("valid time")
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut found = false;
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found |= files_contain(&path, needle);
        } else if let Ok(bytes) = std::fs::read(&path) {
            found |= bytes.windows(needle.len()).any(|w| w == needle);
        }
    }
    found
}

#[test]
fn a_publish_makes_a_version_only_when_something_changed() {
    let (_dir, store) = store();
    let first = publish(
        &store,
        &origin("pg", 1),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(0),
    )
    .expect("publish");
    assert_eq!((first.version, first.new), (1, true));
    // The same resource again from another run: nothing new.
    let same = publish(
        &store,
        &origin("pg", 2),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(1),
    )
    .expect("publish");
    assert_eq!((same.version, same.new), (1, false));
    // A rotated password is a change.
    let rotated = publish(
        &store,
        &origin("pg", 3),
        "publish",
        &publication(&["dev"], "another-password"),
        at(2),
    )
    .expect("publish");
    assert_eq!((rotated.version, rotated.new), (2, true));
    // A run and step publish once: asking again answers what was done.
    let again = publish(
        &store,
        &origin("pg", 3),
        "publish",
        &publication(&["dev"], "yet-another"),
        at(3),
    )
    .expect("publish");
    assert_eq!(again, rotated);
    let record = store
        .get_resource("orders-db")
        .expect("read")
        .expect("there");
    assert_eq!(record.latest, 2);
    assert_eq!(record.kind.as_deref(), Some("postgresql"));
    let versions = store
        .resource_versions("orders-db", false)
        .expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].semver.as_deref(), Some("1.0.0"));
    assert_eq!(versions[1].provenance.run_id, "RUN-pg-3");
    // Never revealed: the secret has no value; revealed: the newest password.
    let cred = &versions[1].environments["dev"][1];
    assert!(cred.secret && cred.value.is_none(), "{cred:?}");
    let open = store
        .resource_version("orders-db", 2, true)
        .expect("read")
        .expect("there");
    assert_eq!(
        open.environments["dev"][1].value.as_deref(),
        Some("another-password")
    );
    store.flush().expect("flush");
    assert!(!files_contain(store.dir(), PASSWORD.as_bytes()));
    assert!(!files_contain(store.dir(), b"another-password"));
}

#[test]
fn environments_published_by_different_runs_add_up_and_another_pipeline_is_refused() {
    let (_dir, store) = store();
    publish(
        &store,
        &origin("pg", 1),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(0),
    )
    .expect("dev");
    let staging = publish(
        &store,
        &origin("pg", 2),
        "publish",
        &publication(&["staging"], "staging-password"),
        at(1),
    )
    .expect("staging");
    assert_eq!(staging.version, 2);
    let view = show(&store, "orders-db").expect("show");
    assert_eq!(view.environments, ["dev", "staging"]);
    let err = publish(
        &store,
        &origin("other", 1),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(2),
    )
    .expect_err("not the owner");
    assert_eq!(
        err.to_string(),
        "resource `orders-db` is published by pipeline demo/pg; pipeline demo/other may not publish under its name"
    );
    // The refusal is recorded with the run, and asking again answers it.
    let recorded = store.published_as("RUN-other-1").expect("read");
    assert_eq!(
        recorded[0].1.error.as_deref(),
        Some(err.to_string().as_str())
    );
    let again = publish(
        &store,
        &origin("other", 1),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(3),
    );
    assert!(matches!(again, Err(MarketError::Refused(_))), "{again:?}");
    assert_eq!(
        store
            .get_resource("orders-db")
            .expect("read")
            .expect("there")
            .latest,
        2
    );
}

#[test]
fn resources_are_found_by_type_tag_and_text_and_shown_without_secret_values() {
    let (_dir, store) = store();
    publish(
        &store,
        &origin("pg", 1),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(0),
    )
    .expect("publish");
    let mut bucket = publication(&["dev"], "bucket-secret-key");
    bucket.name = "assets".into();
    bucket.category = Category::Storage;
    bucket.tags = vec!["s3".into()];
    bucket.description = Some("Static assets".into());
    bucket.properties.insert("type".into(), "s3".into());
    publish(&store, &origin("bucket", 1), "publish", &bucket, at(1)).expect("publish");
    let names = |f: Filter| -> Vec<String> {
        list(&store, &f)
            .expect("list")
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(names(Filter::default()), ["assets", "orders-db"]);
    let by_type = |t: &str| Filter {
        kind: Some(t.into()),
        ..Filter::default()
    };
    assert_eq!(names(by_type("database")), ["orders-db"]);
    assert_eq!(names(by_type("postgresql")), ["orders-db"]);
    assert_eq!(names(by_type("s3")), ["assets"]);
    let tagged = Filter {
        tag: Some("team-a".into()),
        ..Filter::default()
    };
    assert_eq!(names(tagged), ["orders-db"]);
    let text = Filter {
        search: Some("STATIC".into()),
        ..Filter::default()
    };
    assert_eq!(names(text), ["assets"]);
    let both = Filter {
        kind: Some("database".into()),
        tag: Some("s3".into()),
        ..Filter::default()
    };
    assert!(names(both).is_empty());
    let json = serde_json::to_string(&show(&store, "orders-db").expect("show")).expect("json");
    assert!(
        json.contains("DB_PASSWORD") && !json.contains(PASSWORD),
        "{json}"
    );
    // Unpublished: out of the list, still shown, with its history.
    unpublish(&store, "assets", None, at(5)).expect("unpublish");
    assert_eq!(names(Filter::default()), ["orders-db"]);
    let all = Filter {
        all: true,
        ..Filter::default()
    };
    assert_eq!(names(all), ["assets", "orders-db"]);
    assert_eq!(show(&store, "assets").expect("show").versions.len(), 1);
    // A retagged resource leaves its old index entries.
    let mut retagged = publication(&["dev"], PASSWORD);
    retagged.tags = vec!["team-b".into()];
    publish(&store, &origin("pg", 2), "publish", &retagged, at(6)).expect("publish");
    let old_tag = Filter {
        tag: Some("team-a".into()),
        ..Filter::default()
    };
    assert!(names(old_tag).is_empty());
}

#[test]
fn a_connection_hands_over_the_newest_version_within_its_constraint() {
    let (_dir, store) = store();
    publish(
        &store,
        &origin("pg", 1),
        "publish",
        &publication(&["dev"], PASSWORD),
        at(0),
    )
    .expect("publish");
    let created = create_connection(
        &store,
        NewConnection {
            name: "orders".into(),
            consumer: Some("orders-api".into()),
            resource: "orders-db".into(),
            environment: "dev".into(),
            mapping: BTreeMap::from([("DB_PASSWORD".to_string(), "PGPASSWORD".to_string())]),
            ..NewConnection::default()
        },
        at(1),
    )
    .expect("create");
    assert_eq!(created.resolved.version, 1);
    assert!(
        created
            .resolved
            .credentials
            .iter()
            .all(|b| b.secret == b.value.is_none())
    );
    let revealed = resolve(&store, "orders", true, at(2)).expect("resolve");
    assert_eq!(
        render_env(&revealed, Format::Shell),
        format!("export ORDERS_DB_HOST='db.internal'\nexport PGPASSWORD='{PASSWORD}'\n")
    );
    // Republished with a new password: the connection follows and records it.
    publish(
        &store,
        &origin("pg", 2),
        "publish",
        &publication(&["dev"], "rotated-it"),
        at(3),
    )
    .expect("publish");
    let followed = resolve(&store, "orders", true, at(4)).expect("resolve");
    assert_eq!(followed.resolved.version, 2);
    assert_eq!(
        store
            .get_connection("orders")
            .expect("read")
            .expect("there")
            .resolved_version,
        Some(2)
    );
    assert!(render_env(&followed, Format::Dotenv).contains("PGPASSWORD=\"rotated-it\"\n"));
    // Pinned to version 1: stays there.
    create_connection(
        &store,
        NewConnection {
            name: "pinned".into(),
            resource: "orders-db".into(),
            environment: "dev".into(),
            version: Some("1".into()),
            ..NewConnection::default()
        },
        at(5),
    )
    .expect("create");
    let pinned = resolve(&store, "pinned", true, at(6)).expect("resolve");
    assert_eq!(pinned.resolved.version, 1);
    assert!(render_env(&pinned, Format::Json).contains(PASSWORD));
    // A semver requirement the publisher's version does not meet.
    let err = create_connection(
        &store,
        NewConnection {
            name: "next".into(),
            resource: "orders-db".into(),
            environment: "dev".into(),
            version: Some("^2".into()),
            ..NewConnection::default()
        },
        at(7),
    )
    .expect_err("no 2.x");
    assert_eq!(
        err.to_string(),
        "no version of resource `orders-db` matches `^2` with environment `dev`"
    );
    // An environment the resource does not have, a key it does not have, a bad variable.
    let new = |env: &str, map: &[(&str, &str)]| NewConnection {
        name: "x".into(),
        resource: "orders-db".into(),
        environment: env.into(),
        mapping: map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..NewConnection::default()
    };
    let err = create_connection(&store, new("prod", &[]), at(8)).expect_err("no prod");
    assert_eq!(
        err.to_string(),
        "resource `orders-db` has no environment `prod` (it has: dev)"
    );
    let err = create_connection(&store, new("dev", &[("NOPE", "X")]), at(8)).expect_err("no key");
    assert!(
        err.to_string()
            .starts_with("`NOPE` is not a credential key"),
        "{err}"
    );
    let err =
        create_connection(&store, new("dev", &[("DB_HOST", "1X")]), at(8)).expect_err("bad var");
    assert!(
        err.to_string()
            .starts_with("`1X` is not an environment variable name"),
        "{err}"
    );
    let err = create_connection(
        &store,
        new(
            "dev",
            &[("DB_HOST", "PGPASSWORD"), ("DB_PASSWORD", "PGPASSWORD")],
        ),
        at(8),
    )
    .expect_err("same var");
    assert!(
        err.to_string().contains("would both be $PGPASSWORD"),
        "{err}"
    );
    // Unpublishing the environment stops it; publishing it again brings it back.
    unpublish(&store, "orders-db", Some("dev"), at(9)).expect("unpublish dev");
    let err = resolve(&store, "orders", true, at(10)).expect_err("withdrawn");
    assert_eq!(
        err.to_string(),
        "environment `dev` of resource `orders-db` was unpublished"
    );
    let back = publish(
        &store,
        &origin("pg", 3),
        "publish",
        &publication(&["dev"], "rotated-it"),
        at(11),
    )
    .expect("publish");
    assert_eq!((back.version, back.new), (3, true));
    assert_eq!(
        resolve(&store, "orders", true, at(12))
            .expect("resolve")
            .resolved
            .version,
        3
    );
    remove_connection(&store, "orders").expect("rm");
    assert!(matches!(
        resolve(&store, "orders", true, at(13)),
        Err(MarketError::NoSuchConnection(_))
    ));
}

#[test]
fn names_versions_and_variables_follow_their_rules() {
    assert!(valid_name("orders-db") && valid_name("a.b_c") && !valid_name("-x"));
    assert!(!valid_name("") && !valid_name("a/b") && !valid_name(&"a".repeat(101)));
    assert_eq!(default_var("orders-db", "DB_HOST"), "ORDERS_DB_DB_HOST");
    assert_eq!(default_var("cache", "host.name"), "CACHE_HOST_NAME");
    assert!(valid_var("PGPASSWORD") && valid_var("_x") && !valid_var("9a") && !valid_var("A-B"));
    assert!(matches!(VersionReq::parse(None), Ok(VersionReq::Latest)));
    assert!(matches!(
        VersionReq::parse(Some("3")),
        Ok(VersionReq::Number(3))
    ));
    assert!(matches!(
        VersionReq::parse(Some(">=1.0, <2")),
        Ok(VersionReq::Semver(_))
    ));
    assert!(VersionReq::parse(Some("banana")).is_err());
    assert_eq!(semver_of("v1.2.3").as_deref(), Some("1.2.3"));
    assert_eq!(semver_of("2024-01"), None);
}

#[test]
fn bindings_use_the_well_known_names_and_shell_lines_quote_safely() {
    for (key, name) in [
        ("DB_HOST", Some("host")),
        ("HostName", Some("host")),
        ("PGPORT", Some("port")),
        ("DB_USER", Some("username")),
        ("DB_PASSWORD", Some("password")),
        ("DB_NAME", Some("database")),
        ("DATABASE_URL", Some("uri")),
        ("REDIS_HOST", Some("host")),
        ("ORDERS_DB_PASSWORD", Some("password")),
        ("AMQP_URL", Some("uri")),
        ("REGION", None),
        ("DB_REGION", None),
    ] {
        assert_eq!(well_known(key), name, "{key}");
    }
    let (_dir, store) = store();
    let mut p = publication(&["dev"], "it's \"quoted\" $HOME");
    p.credentials[0].parameters.push(PublishedCredential {
        key: "REGION".into(),
        value: "eu-1".into(),
        is_secret: false,
    });
    p.credentials[0].parameters.push(PublishedCredential {
        key: "../escape".into(),
        value: "no".into(),
        is_secret: false,
    });
    publish(&store, &origin("pg", 1), "publish", &p, at(0)).expect("publish");
    create_connection(
        &store,
        NewConnection {
            name: "db".into(),
            resource: "orders-db".into(),
            environment: "dev".into(),
            ..NewConnection::default()
        },
        at(1),
    )
    .expect("create");
    let resolved = resolve(&store, "db", true, at(2)).expect("resolve");
    let shell = render_env(&resolved, Format::Shell);
    assert!(
        shell.contains(r#"export DB_DB_PASSWORD='it'\''s "quoted" $HOME'"#),
        "{shell}"
    );
    let dotenv = render_env(&resolved, Format::Dotenv);
    assert!(
        dotenv.contains(r#"DB_DB_PASSWORD="it's \"quoted\" \$HOME""#),
        "{dotenv}"
    );
    let (files, skipped) = binding_files(&resolved);
    let names: Vec<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["type", "provider", "host", "password", "REGION"]);
    assert_eq!(files[0].1, "postgresql");
    assert_eq!(skipped, ["../escape"]);
}
