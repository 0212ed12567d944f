//! `gantry::source::mirror` against real git servers on loopback: `git daemon` (pushed to with the
//! real `git push`) and `git http-backend` behind a small HTTP/1.1 server requiring Basic auth.

use std::sync::atomic::AtomicBool;

use gantry::source::SourceError;
use gantry::source::mirror::{Credentials, Mirror};
use gantry::spec::model::DEFAULT_PIPELINE_GLOBS;

use crate::support::git::{GitDaemon, HttpGit, Repo};

fn default_globs() -> Vec<String> {
    DEFAULT_PIPELINE_GLOBS
        .iter()
        .map(|g| (*g).to_owned())
        .collect()
}

#[test]
fn mirror_follows_pushes_over_git_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = tmp.path().join("served");
    let mut repo = Repo::create(&served, "repo.git");
    let daemon = GitDaemon::start(&served);
    let url = daemon.url("repo.git");
    repo.set_remote(&url);

    repo.write(".gantry/pipelines/a.yaml", "name: a\n")
        .write("infra/x.sh", "echo x\n");
    let first = repo.commit_and_push("first");

    let dir = tmp.path().join("mirrors/repo");
    let mirror = Mirror::open_or_clone(&dir, &url, "main", None).expect("clone");
    assert_eq!(mirror.head("main").expect("head"), Some(first.clone()));
    assert_eq!(
        mirror
            .read_file(&first, ".gantry/pipelines/a.yaml")
            .expect("read"),
        Some(b"name: a\n".to_vec())
    );
    assert_eq!(mirror.read_file(&first, "nope.yaml").expect("read"), None);
    assert_eq!(mirror.read_file(&first, "infra").expect("read"), None);
    assert_eq!(
        mirror.list_files(&first, &default_globs()).expect("list"),
        vec![".gantry/pipelines/a.yaml".to_owned()]
    );
    assert_eq!(
        mirror.changed_paths(None, &first).expect("all files"),
        vec![
            ".gantry/pipelines/a.yaml".to_owned(),
            "infra/x.sh".to_owned()
        ]
    );

    repo.write(".gantry/pipelines/a.yaml", "name: a2\n")
        .write(".gantry/pipelines/b.yml", "name: b\n")
        .remove("infra/x.sh");
    let second = repo.commit_and_push("second");

    // A second handle on the same directory opens the existing mirror.
    let mirror = Mirror::open_or_clone(&dir, &url, "main", None).expect("open");
    let interrupt = AtomicBool::new(false);
    assert!(mirror.fetch(&interrupt).expect("fetch").changed);
    assert_eq!(mirror.head("main").expect("head"), Some(second.clone()));
    assert_eq!(
        mirror
            .changed_paths(Some(&first), &second)
            .expect("changed"),
        vec![
            ".gantry/pipelines/a.yaml".to_owned(),
            ".gantry/pipelines/b.yml".to_owned(),
            "infra/x.sh".to_owned(),
        ]
    );
    assert_eq!(
        mirror.list_files(&second, &default_globs()).expect("list"),
        vec![
            ".gantry/pipelines/a.yaml".to_owned(),
            ".gantry/pipelines/b.yml".to_owned(),
        ]
    );
    assert!(!mirror.fetch(&interrupt).expect("fetch again").changed);
    assert_eq!(mirror.resolve(&second[..12]).expect("resolve"), second);
    assert_eq!(mirror.resolve(&second).expect("resolve full"), second);
    assert!(matches!(
        mirror.resolve("zzzz"),
        Err(SourceError::InvalidSha { .. })
    ));
    assert_eq!(mirror.head("no-such-branch").expect("head"), None);
    assert!(matches!(
        mirror.list_files(&second, &["[".to_owned()]),
        Err(SourceError::InvalidGlob { .. })
    ));

    // Cloning with a branch the remote does not have names the branch.
    let err = Mirror::open_or_clone(&tmp.path().join("mirrors/other"), &url, "develop", None)
        .expect_err("no develop branch");
    let shown = err.to_string();
    assert!(shown.contains("`develop` does not exist"), "{shown}");
}

#[test]
fn mirror_clones_and_fetches_over_smart_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = tmp.path().join("served");
    let repo = Repo::create(&served, "repo.git");
    repo.write(".gantry/pipelines/a.yaml", "name: a\n");
    let first = repo.commit_and_push("first");
    let server = HttpGit::start(&served, None);

    let mirror =
        Mirror::open_or_clone(&tmp.path().join("m"), &server.url("repo.git"), "main", None)
            .expect("clone over http");
    assert_eq!(mirror.head("main").expect("head"), Some(first.clone()));
    let interrupt = AtomicBool::new(false);
    assert!(!mirror.fetch(&interrupt).expect("fetch").changed);

    repo.write(".gantry/pipelines/b.yml", "name: b\n");
    let second = repo.commit_and_push("second");
    assert!(mirror.fetch(&interrupt).expect("fetch").changed);
    assert_eq!(mirror.head("main").expect("head"), Some(second.clone()));
    assert_eq!(
        mirror
            .changed_paths(Some(&first), &second)
            .expect("changed"),
        vec![".gantry/pipelines/b.yml".to_owned()]
    );
}

#[test]
fn a_token_is_never_sent_over_plain_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = tmp.path().join("served");
    let repo = Repo::create(&served, "repo.git");
    repo.write(".gantry/pipelines/a.yaml", "name: a\n");
    repo.commit_and_push("first");
    let token = "ghs_T0kenForTests1234";
    let server = HttpGit::start(&served, Some(("x-access-token", token)));
    let url = server.url("repo.git");

    let err = Mirror::open_or_clone(
        &tmp.path().join("m"),
        &url,
        "main",
        Some(Credentials::for_provider("github", token.to_owned())),
    )
    .expect_err("credentials over http");
    let shown = format!("{err} / {err:?}");
    assert!(
        matches!(err, SourceError::CredentialsOverHttp { .. }),
        "{shown}"
    );
    assert!(!shown.contains(token), "{shown}");
    assert!(
        shown.contains(&url) && shown.contains("use an https url"),
        "{shown}"
    );
    assert!(
        server.auth_headers_seen().iter().all(|sent| !sent),
        "no Authorization header reached the server"
    );
}

/// The pipeline files an event reads at a commit are capped in count and bytes; sizes come from
/// the objects' headers, so a file over the cap is reported without being read or parsed.
#[test]
fn pipeline_files_at_a_commit_are_read_within_a_cap() {
    use gantry::trigger::events::{ReadCap, pipelines_at};
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = tmp.path().join("served");
    let mut repo = Repo::create(&served, "repo.git");
    let daemon = GitDaemon::start(&served);
    let url = daemon.url("repo.git");
    repo.set_remote(&url);
    let text = |name: &str| {
        format!(
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nsteps:\n  - name: s\n    script: 'true'\n"
        )
    };
    for name in ["a", "b", "c", "d"] {
        repo.write(&format!(".gantry/pipelines/{name}.yaml"), &text(name));
    }
    // Larger than any pipeline file may be (1 MiB).
    repo.write(
        ".gantry/pipelines/big.yaml",
        &format!("# {}\n", "x".repeat(2 * 1024 * 1024)),
    );
    let head = repo.commit_and_push("files");
    let mirror = Mirror::open_or_clone(&tmp.path().join("m"), &url, "main", None).expect("clone");
    assert_eq!(
        mirror
            .file_size(&head, ".gantry/pipelines/a.yaml")
            .expect("size"),
        Some(text("a").len() as u64)
    );

    let per_file = text("a").len() as u64;
    let cap = ReadCap {
        max_files: 4,
        max_total_bytes: 2 * per_file,
    };
    let found = pipelines_at(&mirror, &head, &default_globs(), cap).expect("pipelines");
    let summary: Vec<(String, bool, String)> = found
        .iter()
        .map(|at| {
            (
                at.path.clone(),
                at.pipeline.is_some(),
                at.errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (".gantry/pipelines/a.yaml".into(), true, String::new()),
            (".gantry/pipelines/b.yaml".into(), true, String::new()),
            (
                ".gantry/pipelines/big.yaml".into(),
                false,
                format!(
                    "not read: {} bytes, more than a pipeline file may have (1048576)",
                    2 * 1024 * 1024 + 3
                )
            ),
            (
                ".gantry/pipelines/c.yaml".into(),
                false,
                format!(
                    "not read: the pipeline files of a commit may hold at most {} bytes together",
                    2 * per_file
                )
            ),
            (
                ".gantry/pipelines/d.yaml".into(),
                false,
                "not read: a commit may hold at most 4 pipeline files".into()
            ),
        ],
    );
    assert!(
        found
            .iter()
            .all(|at| at.pipeline.is_some() || at.text.is_empty())
    );
}
