//! Tests for `checkout.rs` against fixture repositories built with the real `git` CLI.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::source::test_support::git;

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { content: String, mode: u32 },
    Link(PathBuf),
}

fn file(content: &str, mode: u32) -> Node {
    Node::File {
        content: content.to_string(),
        mode,
    }
}

fn link(target: &str) -> Node {
    Node::Link(PathBuf::from(target))
}

/// Every file and symlink under `dir`, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in fs::read_dir(dir).expect("readable dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(&path).expect("lstat");
            if md.file_type().is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&path).expect("readlink")));
            } else if md.is_dir() {
                walk(base, &path, out);
            } else {
                let content = fs::read_to_string(&path).expect("utf-8 content");
                let mode = md.permissions().mode() & 0o777;
                out.insert(rel, Node::File { content, mode });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn expected(entries: Vec<(&str, Node)>) -> BTreeMap<String, Node> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A work tree with every kind of entry `copy_worktree` must tell apart.
fn fixture_worktree(base: &Path) -> PathBuf {
    let repo = base.join("repo");
    fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    let global_excludes = base.join("global-ignore");
    write(&global_excludes, "*.tmp\n");
    git(
        &repo,
        &[
            "config",
            "core.excludesFile",
            global_excludes.to_str().expect("utf-8 path"),
        ],
    );

    write(&repo.join("README.md"), "readme\n");
    write(&repo.join("config.yaml"), "committed: true\n");
    write(&repo.join(".gitignore"), "*.log\nbuild/\n");
    write(
        &repo.join("build/keep.txt"),
        "tracked inside an ignored dir\n",
    );
    write(&repo.join("scripts/run.sh"), "#!/bin/sh\necho hi\n");
    set_mode(&repo.join("scripts/run.sh"), 0o755);
    write(&repo.join("gone.txt"), "deleted later\n");
    write(&repo.join(".gantry/pipeline.yaml"), "name: p\n");
    symlink("README.md", repo.join("link")).expect("symlink");
    git(&repo, &["add", "."]);
    git(&repo, &["add", "-f", "build/keep.txt"]);
    git(&repo, &["commit", "-q", "-m", "first"]);

    // Uncommitted state.
    write(&repo.join("config.yaml"), "committed: false\n");
    fs::remove_file(repo.join("gone.txt")).expect("rm");
    write(&repo.join("staged.txt"), "staged, never committed\n");
    git(&repo, &["add", "staged.txt"]);
    write(&repo.join("notes.txt"), "untracked\n");
    write(&repo.join("new/deep/file.txt"), "untracked nested\n");
    write(&repo.join("tool.sh"), "#!/bin/sh\n");
    set_mode(&repo.join("tool.sh"), 0o700);
    symlink("nowhere", repo.join("dangling")).expect("symlink");
    write(&repo.join("debug.log"), "ignored file\n");
    write(&repo.join("build/out.bin"), "ignored dir\n");
    write(&repo.join("scratch.tmp"), "ignored by core.excludesFile\n");
    write(&repo.join(".git/info/exclude"), "secret.env\n");
    write(&repo.join("secret.env"), "ignored by info/exclude\n");
    fs::create_dir_all(repo.join("empty/dir")).expect("mkdir");
    let nested = repo.join("vendor/inner");
    fs::create_dir_all(&nested).expect("mkdir");
    git(&nested, &["init", "-q"]);
    write(
        &nested.join("lib.txt"),
        "belongs to the nested repository\n",
    );
    repo
}

fn expected_worktree() -> BTreeMap<String, Node> {
    expected(vec![
        (".gantry/pipeline.yaml", file("name: p\n", 0o644)),
        (".gitignore", file("*.log\nbuild/\n", 0o644)),
        ("README.md", file("readme\n", 0o644)),
        (
            "build/keep.txt",
            file("tracked inside an ignored dir\n", 0o644),
        ),
        ("config.yaml", file("committed: false\n", 0o644)),
        ("dangling", link("nowhere")),
        ("link", link("README.md")),
        ("new/deep/file.txt", file("untracked nested\n", 0o644)),
        ("notes.txt", file("untracked\n", 0o644)),
        ("scripts/run.sh", file("#!/bin/sh\necho hi\n", 0o755)),
        ("staged.txt", file("staged, never committed\n", 0o644)),
        ("tool.sh", file("#!/bin/sh\n", 0o755)),
    ])
}

#[test]
fn copies_the_work_tree_as_git_sees_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = fixture_worktree(tmp.path());
    let dest = tmp.path().join("ws");

    let stats = copy_worktree(&repo, &dest).expect("copy");

    let want = expected_worktree();
    assert_eq!(snapshot(&dest), want);
    assert_eq!(stats.files, want.len() as u64);
    let bytes: usize = want
        .values()
        .map(|n| match n {
            Node::File { content, .. } => content.len(),
            Node::Link(_) => 0,
        })
        .sum();
    assert_eq!(stats.bytes, bytes as u64);
}

/// A repository layout kept in a folder of a bigger repository (`examples/repo-layout` in
/// Gantry's own) is what a run of its pipeline checks out: that folder, at the workspace's root.
#[test]
fn copying_from_a_subdirectory_copies_that_folder_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = fixture_worktree(tmp.path());

    for (folder, want) in [
        (
            "scripts",
            expected(vec![("run.sh", file("#!/bin/sh\necho hi\n", 0o755))]),
        ),
        (
            "new",
            expected(vec![("deep/file.txt", file("untracked nested\n", 0o644))]),
        ),
    ] {
        let dest = tmp.path().join(format!("ws-{folder}"));
        let stats = copy_worktree(&repo.join(folder), &dest).expect("copy");
        assert_eq!(snapshot(&dest), want, "{folder}");
        assert_eq!(stats.files, want.len() as u64);
    }
}

#[test]
fn a_destination_inside_the_work_tree_is_not_copied_into_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = fixture_worktree(tmp.path());
    let dest = repo.join(".gantry/ws");

    copy_worktree(&repo, &dest).expect("copy");
    assert_eq!(snapshot(&dest), expected_worktree());

    // A second copy into the same place replaces the files and still skips itself.
    copy_worktree(&repo, &dest).expect("copy again");
    assert_eq!(snapshot(&dest), expected_worktree());
}

#[test]
fn a_destination_containing_the_work_tree_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = fixture_worktree(tmp.path());

    for dest in [repo.clone(), tmp.path().to_path_buf()] {
        let err = copy_worktree(&repo, &dest).expect_err("overlap");
        assert!(
            matches!(err, SourceError::DestinationOverlaps { .. }),
            "{err}"
        );
    }
    assert_eq!(
        fs::read_to_string(repo.join("config.yaml")).expect("still there"),
        "committed: false\n"
    );
}

#[test]
fn outside_a_work_tree_the_error_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = tmp.path().join("plain");
    fs::create_dir_all(&plain).expect("mkdir");

    let err = copy_worktree(&plain, &tmp.path().join("ws")).expect_err("no repository");

    assert!(matches!(err, SourceError::NotAWorkTree { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "{} is not inside a git work tree",
            fs::canonicalize(&plain).expect("real").display()
        )),
        "{message}"
    );
    assert!(message.contains("git init"), "{message}");
}

#[test]
fn a_bare_repository_is_not_a_work_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = tmp.path().join("bare.git");
    fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare"]);

    let err = copy_worktree(&bare, &tmp.path().join("ws")).expect_err("bare");

    assert!(matches!(err, SourceError::NotAWorkTree { .. }), "{err:?}");
}

#[test]
fn a_missing_root_names_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing");

    let err = copy_worktree(&missing, &tmp.path().join("ws")).expect_err("missing");

    assert!(err.to_string().contains("missing"), "{err}");
}

/// A repository with two commits and its bare clone; returns (bare, first sha, second sha).
fn fixture_history(base: &Path) -> (PathBuf, String, String) {
    let repo = base.join("origin");
    fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    write(&repo.join("a.txt"), "v1\n");
    write(&repo.join("sub/b.txt"), "b\n");
    write(&repo.join("run.sh"), "#!/bin/sh\n");
    set_mode(&repo.join("run.sh"), 0o755);
    symlink("a.txt", repo.join("link")).expect("symlink");
    git(&repo, &["add", "."]);
    // A submodule entry (gitlink) pointing at an arbitrary commit.
    git(
        &repo,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,1111111111111111111111111111111111111111,vendor/module",
        ],
    );
    git(&repo, &["commit", "-q", "-m", "first"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);

    write(&repo.join("a.txt"), "v2\n");
    fs::remove_file(repo.join("sub/b.txt")).expect("rm");
    write(&repo.join("c.txt"), "c\n");
    set_mode(&repo.join("run.sh"), 0o644);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "second"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);

    git(&repo, &["tag", "-a", "-m", "annotated", "v1", &first]);
    git(base, &["clone", "-q", "--bare", "origin", "bare.git"]);
    (base.join("bare.git"), first, second)
}

#[test]
fn checkout_commit_writes_an_older_commit_of_a_bare_clone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bare, first, second) = fixture_history(tmp.path());

    let want_first = expected(vec![
        ("a.txt", file("v1\n", 0o644)),
        ("link", link("a.txt")),
        ("run.sh", file("#!/bin/sh\n", 0o755)),
        ("sub/b.txt", file("b\n", 0o644)),
    ]);
    let dest = tmp.path().join("full");
    let stats = checkout_commit(&bare, &first, &dest).expect("checkout");
    assert_eq!(snapshot(&dest), want_first);
    assert_eq!(
        stats,
        CopyStats {
            files: 4,
            bytes: 3 + 10 + 2
        }
    );

    let dest = tmp.path().join("short");
    checkout_commit(&bare, &first[..7], &dest).expect("abbreviated sha");
    assert_eq!(snapshot(&dest), want_first);

    let tag = git(&bare, &["rev-parse", "v1"]);
    assert_ne!(tag, first, "an annotated tag object");
    let dest = tmp.path().join("tag");
    checkout_commit(&bare, &tag, &dest).expect("tag peeled to its commit");
    assert_eq!(snapshot(&dest), want_first);

    let dest = tmp.path().join("second");
    checkout_commit(&bare, &second, &dest).expect("checkout");
    assert_eq!(
        snapshot(&dest),
        expected(vec![
            ("a.txt", file("v2\n", 0o644)),
            ("c.txt", file("c\n", 0o644)),
            ("link", link("a.txt")),
            ("run.sh", file("#!/bin/sh\n", 0o644)),
        ])
    );
}

#[test]
fn checkout_commit_of_an_unknown_sha_names_it_and_the_repository() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bare, _, _) = fixture_history(tmp.path());

    for sha in ["deadbeef", "0123456789abcdef0123456789abcdef01234567"] {
        let err = checkout_commit(&bare, sha, &tmp.path().join("ws")).expect_err("unknown");

        assert!(matches!(err, SourceError::UnknownCommit { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "commit {sha} is not in {}; fetch the repository again or check the sha",
                bare.display()
            )
        );
    }
}

#[test]
fn checkout_commit_of_a_blob_says_it_is_not_a_commit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bare, first, _) = fixture_history(tmp.path());
    let blob = git(&bare, &["rev-parse", &format!("{first}:a.txt")]);

    let err = checkout_commit(&bare, &blob, &tmp.path().join("ws")).expect_err("a blob");

    assert!(matches!(err, SourceError::NotACommit { .. }), "{err:?}");
    assert!(err.to_string().contains("is a blob, not a commit"), "{err}");
}

#[test]
fn checkout_commit_only_takes_hex() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bare, _, _) = fixture_history(tmp.path());

    for sha in ["HEAD", "main", "abc", "", "deadbeef~1"] {
        let err = checkout_commit(&bare, sha, &tmp.path().join("ws")).expect_err("refused");
        assert!(
            matches!(err, SourceError::InvalidSha { .. }),
            "{sha}: {err}"
        );
    }
}

#[test]
fn checkout_commit_of_a_missing_repository_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope.git");

    let err = checkout_commit(&missing, "deadbeef", &tmp.path().join("ws")).expect_err("missing");

    assert!(matches!(err, SourceError::OpenRepository { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.git"), "{err}");
}

/// Builds a commit whose root tree has a single entry `name` (pointing at a blob), bypassing
/// git's own path checks with `mktree`.
fn hostile_commit(repo: &Path, name: &str) -> String {
    let blob = git(repo, &["hash-object", "-w", "--stdin"]);
    let input = format!("100644 blob {blob}\t{name}\n");
    let mut child = Command::new("git")
        .current_dir(repo)
        .args(["mktree", "--missing"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git mktree");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("mktree output");
    assert!(out.status.success(), "mktree failed");
    let tree = String::from_utf8_lossy(&out.stdout).trim().to_string();
    git(repo, &["commit-tree", &tree, "-m", "hostile"])
}

#[test]
fn checkout_commit_refuses_entries_that_escape_or_name_git() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "--bare"]);

    for name in ["..", ".git", ".GIT", "."] {
        let sha = hostile_commit(&repo, name);
        let dest = tmp.path().join("ws");
        let err = checkout_commit(&repo, &sha, &dest).expect_err("refused");
        assert!(
            matches!(err, SourceError::UnsafePath { .. }),
            "{name}: {err}"
        );
        assert!(snapshot(&dest).is_empty(), "{name}: nothing written");
    }
}

#[test]
fn checked_paths_stay_inside_the_destination() {
    let writer = Writer::new(Path::new("/ws"));
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a//b",
        "a/",
        ".git/config",
        "a/.Git/hooks/x",
        "./a",
    ] {
        let err = writer.checked_path(bad.into()).expect_err("refused");
        assert!(
            matches!(err, SourceError::UnsafePath { .. }),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        writer
            .checked_path("a/b.c/.gitignore".into())
            .expect("fine"),
        PathBuf::from("a/b.c/.gitignore")
    );
}

#[test]
fn nothing_is_written_through_a_symlink_in_the_destination() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).expect("mkdir");
    let dest = tmp.path().join("ws");
    fs::create_dir_all(&dest).expect("mkdir");
    symlink(&outside, dest.join("sub")).expect("symlink");
    symlink(outside.join("f"), dest.join("f")).expect("symlink");

    let mut writer = Writer::new(&dest);
    let err = writer
        .write_bytes(Path::new("sub/x"), false, b"x")
        .expect_err("blocked");
    assert!(matches!(err, SourceError::NotADirectory { .. }), "{err}");
    // A symlink at the file's own path is replaced, not followed.
    writer
        .write_bytes(Path::new("f"), false, b"x")
        .expect("replaced");
    assert!(fs::read_dir(&outside).expect("list").next().is_none());
    assert_eq!(fs::read(dest.join("f")).expect("read"), b"x");
}

#[test]
fn a_conflicted_file_is_copied_once_with_its_markers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    write(&repo.join("a.txt"), "base\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    git(&repo, &["checkout", "-q", "-b", "other"]);
    write(&repo.join("a.txt"), "other\n");
    git(&repo, &["commit", "-q", "-am", "other"]);
    git(&repo, &["checkout", "-q", "main"]);
    write(&repo.join("a.txt"), "main\n");
    git(&repo, &["commit", "-q", "-am", "main"]);
    let merge = Command::new("git")
        .current_dir(&repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(["merge", "-q", "other"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git merge");
    assert!(!merge.status.success(), "the merge conflicts");
    let on_disk = fs::read_to_string(repo.join("a.txt")).expect("read");

    let dest = tmp.path().join("ws");
    let stats = copy_worktree(&repo, &dest).expect("copy");

    assert_eq!(stats.files, 1);
    assert_eq!(
        snapshot(&dest),
        expected(vec![("a.txt", file(&on_disk, 0o644))])
    );
}

#[test]
fn tracked_files_under_a_directory_turned_symlink_are_not_read_through_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    write(&repo.join("lib/x.txt"), "tracked\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "x"]);
    let outside = tmp.path().join("outside");
    write(&outside.join("x.txt"), "outside the repository\n");
    fs::remove_dir_all(repo.join("lib")).expect("rm");
    symlink(&outside, repo.join("lib")).expect("symlink");

    let dest = tmp.path().join("ws");
    copy_worktree(&repo, &dest).expect("copy");

    // Git sees `lib/x.txt` as deleted and `lib` as an untracked symlink.
    assert_eq!(
        snapshot(&dest),
        expected(vec![("lib", Node::Link(outside.clone()))])
    );
}
