//! Materialising a repository's files in a directory: the work tree "as git sees it"
//! ([`copy_worktree`], for a local `gantry run`) or the tree of one commit of a (bare) mirror
//! ([`checkout_commit`], for runs triggered by a push). Both are blocking; async callers wrap them
//! in `tokio::task::spawn_blocking`.
//!
//! Both treat paths coming from git (index entries, tree entries) as hostile: an entry that is
//! absolute, has an empty, `.` or `..` component, or names `.git` is refused, and nothing is ever
//! written through a symlink (directories are created component by component and checked, files are
//! created with `O_EXCL`). Symlinks themselves are recreated verbatim, whatever they point to, as
//! `git checkout` does. Files are copied raw: no end-of-line conversion, no smudge filters (Git
//! LFS pointers stay pointers). Nested repositories and submodules are skipped.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::{BStr, BString, ByteSlice};
use gix::dir::entry::{Kind, Status};
use gix::dir::walk::{Action, Delegate, EmissionMode};
use gix::dir::{EntryRef, entry};
use gix::objs::tree::EntryKind;

/// What was written into the destination directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files and symlinks written.
    pub files: u64,
    /// Bytes of regular-file content written (symlink targets are not counted).
    pub bytes: u64,
}

/// Why a work tree or a commit could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `copy_worktree` was given a directory that belongs to no git work tree (or only to a bare
    /// repository).
    #[error(
        "{} is not inside a git work tree: `gantry run` copies the pipeline's repository into the workspace; run it from a git repository (git init) or remove the gantry/git-checkout@v1 step",
        root.display()
    )]
    NotAWorkTree {
        root: PathBuf,
        #[source]
        source: Option<gix::Error>,
    },
    #[error("cannot read the git index {}: {source}; check the repository with `git status`", path.display())]
    Index { path: PathBuf, source: gix::Error },
    #[error("cannot list the untracked files of {}: {source}", workdir.display())]
    Dirwalk {
        workdir: PathBuf,
        source: gix::Error,
    },
    /// Copying would write over the repository's own files.
    #[error(
        "cannot copy the work tree {} into {}: the destination contains the work tree; choose a workspace directory outside it",
        workdir.display(),
        dest.display()
    )]
    DestinationOverlaps { workdir: PathBuf, dest: PathBuf },
    #[error(
        "cannot open the git repository {}: {source}; check that it is a git directory (a bare mirror or a .git folder)",
        git_dir.display()
    )]
    OpenRepository {
        git_dir: PathBuf,
        source: gix::Error,
    },
    #[error(
        "`{sha}` is not a commit sha: expected a full or abbreviated (at least 4 digits) hexadecimal object id"
    )]
    InvalidSha { sha: String },
    #[error(
        "commit {sha} is not in {}; fetch the repository again or check the sha",
        git_dir.display()
    )]
    UnknownCommit { sha: String, git_dir: PathBuf },
    #[error(
        "`{sha}` is ambiguous in {}: several objects start with it; use more digits of the sha",
        git_dir.display()
    )]
    AmbiguousSha { sha: String, git_dir: PathBuf },
    #[error("{sha} in {} is a {kind}, not a commit; pass a commit sha", git_dir.display())]
    NotACommit {
        sha: String,
        git_dir: PathBuf,
        kind: String,
    },
    #[error("cannot look up {sha} in {}: {source}; the repository may be corrupt, check it with `git fsck`", git_dir.display())]
    Lookup {
        sha: String,
        git_dir: PathBuf,
        source: gix::Error,
    },
    /// A tree or blob of a resolved commit could not be read or decoded.
    #[error(
        "cannot read {what} of commit {commit} in {}: {source}; the repository may be corrupt, check it with `git fsck`",
        git_dir.display()
    )]
    Object {
        /// What was being read, with its path in the tree (e.g. "the file `a/b.txt`").
        what: String,
        commit: String,
        git_dir: PathBuf,
        source: gix::Error,
    },
    /// An index or tree entry whose path would leave the destination or write git metadata.
    #[error(
        "refusing to write `{path}` into {}: {reason}; the git index or tree is corrupt or hostile",
        dest.display()
    )]
    UnsafePath {
        path: String,
        reason: &'static str,
        dest: PathBuf,
    },
    #[error(
        "cannot write {}: {} is not a directory; empty the destination directory and retry",
        path.display(),
        blocker.display()
    )]
    NotADirectory { path: PathBuf, blocker: PathBuf },
    /// Cloning a mirror failed; `url` is redacted and `detail` scrubbed of credentials.
    #[error("cannot clone {url} into {}: {detail}; {hint}", dir.display())]
    Clone {
        url: String,
        dir: PathBuf,
        detail: String,
        hint: &'static str,
    },
    /// Fetching into a mirror failed; `url` is redacted and `detail` scrubbed of credentials.
    #[error("cannot fetch {url} into {}: {detail}; {hint}", git_dir.display())]
    Fetch {
        url: String,
        git_dir: PathBuf,
        detail: String,
        hint: &'static str,
    },
    #[error(
        "refusing to send credentials to {url} over plain http, where anyone on the path could read the token; use an https url"
    )]
    CredentialsOverHttp { url: String },
    #[error(
        "the branch `{branch}` does not exist on the remote {url}; check the branch name configured for the repository"
    )]
    BranchNotFound { branch: String, url: String },
    #[error("cannot read the reference {name} in {}: {source}; check the branch name", git_dir.display())]
    Reference {
        name: String,
        git_dir: PathBuf,
        source: gix::Error,
    },
    #[error(
        "invalid glob `{glob}`: {source}; fix the pattern (`*` stops at `/`, `**` crosses directories)"
    )]
    InvalidGlob {
        glob: String,
        source: globset::Error,
    },
    #[error(
        "cannot compare commits {old} and {new} in {}: {source}; the repository may be corrupt, check it with `git fsck`",
        git_dir.display()
    )]
    Diff {
        old: String,
        new: String,
        git_dir: PathBuf,
        source: gix::Error,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> SourceError + 'p {
    move |source| SourceError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Copies the files under `root`, a folder of a git work tree (its root, or the folder of a
/// repository layout kept inside a bigger repository, as `examples/repo-layout` is), into `dest`,
/// relative to `root`, creating `dest` if needed. Only what lies under `root` is copied.
///
/// Copied: every index entry that exists in the work tree, with its current content on disk
/// (uncommitted changes included; tracked files deleted from disk are skipped), and every
/// untracked file that `.gitignore`, `.git/info/exclude` and `core.excludesFile` do not ignore.
/// Never copied: `.git`, ignored files, empty directories, nested repositories and submodules
/// (their content belongs to another repository), special files (FIFOs, sockets, devices), files
/// under a symlinked directory, and `dest` itself when it lies inside the work tree. Regular files
/// get mode 0755 if their owner-executable bit is set on disk, else 0644; symlinks are recreated.
/// Files already at a destination path are replaced.
pub fn copy_worktree(root: &Path, dest: &Path) -> Result<CopyStats, SourceError> {
    let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
    let not_a_work_tree = |source| SourceError::NotAWorkTree {
        root: root.clone(),
        source,
    };
    let repo = gix::discover(&root).map_err(|e| not_a_work_tree(Some(e)))?;
    let workdir = match repo.workdir() {
        Some(dir) => fs::canonicalize(dir).map_err(io_err("resolve", dir))?,
        None => return Err(not_a_work_tree(None)),
    };

    // `root` relative to the work tree: what every copied path starts with.
    let below = root
        .strip_prefix(&workdir)
        .map(Path::to_owned)
        .unwrap_or_default();

    fs::create_dir_all(dest).map_err(io_err("create directory", dest))?;
    let dest_real = fs::canonicalize(dest).map_err(io_err("resolve", dest))?;
    if root.starts_with(&dest_real) {
        return Err(SourceError::DestinationOverlaps {
            workdir: root,
            dest: dest_real,
        });
    }
    // A destination inside the copied folder is not copied into itself.
    let dest_in_root = dest_real.strip_prefix(&root).ok().map(Path::to_owned);
    let skipped = |sub: &Path| dest_in_root.as_deref().is_some_and(|d| sub.starts_with(d));

    let index = repo.index_or_empty().map_err(|source| SourceError::Index {
        path: repo.index_path(),
        source,
    })?;
    let mut writer = Writer::new(&dest_real);
    let mut source_dirs = SourceDirs::default();

    let mut previous: Option<&BStr> = None;
    for entry in index.entries() {
        let rela = entry.path(&index);
        // Conflicted paths appear once per stage; submodules and sparse directories have no file.
        if previous == Some(rela) {
            continue;
        }
        previous = Some(rela);
        if entry.mode.is_submodule() || entry.mode.is_sparse() {
            continue;
        }
        let rel = writer.checked_path(rela)?;
        let Ok(sub) = rel.strip_prefix(&below) else {
            continue;
        };
        if skipped(sub) || !source_dirs.all_real(&workdir, &rel)? {
            continue;
        }
        writer.copy_from_disk(&root, sub)?;
    }

    let untracked = untracked_paths(&repo, &index, &workdir)?;
    for rela in &untracked {
        // An untracked path git could never add (say `.GIT` on a case-sensitive file system) is
        // not part of the repository as git sees it: skip it rather than fail the run.
        let Ok(rel) = writer.checked_path(rela.as_bstr()) else {
            continue;
        };
        let Ok(sub) = rel.strip_prefix(&below) else {
            continue;
        };
        if skipped(sub) {
            continue;
        }
        writer.copy_from_disk(&root, sub)?;
    }
    Ok(writer.stats)
}

/// Untracked, not ignored files and symlinks of the work tree, found with gix's dirwalk.
fn untracked_paths(
    repo: &gix::Repository,
    index: &gix::index::State,
    workdir: &Path,
) -> Result<Vec<BString>, SourceError> {
    let dirwalk_err = |source| SourceError::Dirwalk {
        workdir: workdir.to_owned(),
        source,
    };
    let options = repo
        .dirwalk_options()
        .map_err(dirwalk_err)?
        .emit_tracked(false)
        .emit_ignored(None)
        .emit_pruned(false)
        .emit_empty_directories(false)
        .emit_untracked(EmissionMode::Matching)
        .recurse_repositories(false);
    let mut collect = UntrackedFiles::default();
    let interrupt = AtomicBool::new(false);
    repo.dirwalk(index, None::<&str>, &interrupt, options, &mut collect)
        .map_err(dirwalk_err)?;
    Ok(collect.paths)
}

/// Collects the untracked regular files and symlinks a dirwalk emits. Untracked directories are
/// recursed into (the default `can_recurse`), so their files are emitted one by one; nested
/// repositories are not, and are dropped here.
#[derive(Default)]
struct UntrackedFiles {
    paths: Vec<BString>,
}

impl Delegate for UntrackedFiles {
    fn emit(&mut self, entry: EntryRef<'_>, _collapsed: Option<entry::Status>) -> Action {
        if entry.status == Status::Untracked
            && entry.property.is_none()
            && matches!(entry.disk_kind, Some(Kind::File | Kind::Symlink))
        {
            self.paths.push(entry.rela_path.into_owned());
        }
        Action::Continue(())
    }
}

/// Remembers which directories of the work tree are real directories, so that a tracked path
/// under a directory that has become a symlink is skipped, as git does, instead of read through it.
#[derive(Default)]
struct SourceDirs {
    real: HashMap<PathBuf, bool>,
}

impl SourceDirs {
    fn all_real(&mut self, workdir: &Path, rel: &Path) -> Result<bool, SourceError> {
        let Some(parent) = rel.parent() else {
            return Ok(true);
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            let known = match self.real.get(&prefix) {
                Some(known) => *known,
                None => {
                    let path = workdir.join(&prefix);
                    let real = match fs::symlink_metadata(&path) {
                        Ok(md) => md.is_dir(),
                        Err(e) if is_missing(&e) => false,
                        Err(e) => return Err(io_err("inspect", &path)(e)),
                    };
                    self.real.insert(prefix.clone(), real);
                    real
                }
            };
            if !known {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Writes files under `dest`, never through a symlink.
struct Writer<'a> {
    dest: &'a Path,
    /// Destination-relative directories known to be real directories.
    dirs: HashSet<PathBuf>,
    stats: CopyStats,
}

impl<'a> Writer<'a> {
    fn new(dest: &'a Path) -> Self {
        Writer {
            dest,
            dirs: HashSet::new(),
            stats: CopyStats::default(),
        }
    }

    /// Converts a slash-separated git path into a relative path that stays inside `dest`.
    fn checked_path(&self, rela: &BStr) -> Result<PathBuf, SourceError> {
        let mut out = PathBuf::new();
        if rela.is_empty() {
            return Err(self.unsafe_path(rela, "the path is empty"));
        }
        if rela.starts_with(b"/") {
            return Err(self.unsafe_path(rela, "the path is absolute"));
        }
        for component in rela.split_str("/") {
            check_component(component.as_bstr())
                .map_err(|reason| self.unsafe_path(rela, reason))?;
            out.push(OsStr::from_bytes(component));
        }
        Ok(out)
    }

    fn unsafe_path(&self, rela: &BStr, reason: &'static str) -> SourceError {
        SourceError::UnsafePath {
            path: rela.to_str_lossy().into_owned(),
            reason,
            dest: self.dest.to_owned(),
        }
    }

    /// Copies the work-tree file at `workdir/rel`, if it is a regular file or a symlink.
    fn copy_from_disk(&mut self, workdir: &Path, rel: &Path) -> Result<(), SourceError> {
        let from = workdir.join(rel);
        let md = match fs::symlink_metadata(&from) {
            Ok(md) => md,
            // Tracked but deleted (or replaced by something under a now-missing directory).
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(io_err("inspect", &from)(e)),
        };
        let file_type = md.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("read symlink", &from))?;
            self.write_symlink(rel, target.as_os_str())
        } else if file_type.is_file() {
            let executable = md.permissions().mode() & 0o100 != 0;
            let mut file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&from)
                .map_err(io_err("open", &from))?;
            self.write_file(rel, executable, |out, to| {
                io::copy(&mut file, out).map_err(|source| {
                    // Either side may have failed; name both files.
                    SourceError::Io {
                        action: "copy into",
                        path: to.to_owned(),
                        source: io::Error::new(
                            source.kind(),
                            format!("from {}: {source}", from.display()),
                        ),
                    }
                })
            })
        } else {
            // Directories (a tracked file replaced by one), FIFOs, sockets, devices.
            Ok(())
        }
    }

    /// Creates `dest/rel` with the given mode and lets `fill` write its content; returns the
    /// content length through the stats.
    fn write_file(
        &mut self,
        rel: &Path,
        executable: bool,
        fill: impl FnOnce(&mut fs::File, &Path) -> Result<u64, SourceError>,
    ) -> Result<(), SourceError> {
        let to = self.prepare(rel)?;
        let mode = if executable { 0o755 } else { 0o644 };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&to)
            .map_err(io_err("create", &to))?;
        let bytes = fill(&mut out, &to)?;
        // The process umask may have masked bits off at creation.
        out.set_permissions(Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", &to))?;
        self.stats.files += 1;
        self.stats.bytes += bytes;
        Ok(())
    }

    fn write_bytes(
        &mut self,
        rel: &Path,
        executable: bool,
        data: &[u8],
    ) -> Result<(), SourceError> {
        self.write_file(rel, executable, |out, to| {
            out.write_all(data).map_err(io_err("write", to))?;
            Ok(data.len() as u64)
        })
    }

    fn write_symlink(&mut self, rel: &Path, target: &OsStr) -> Result<(), SourceError> {
        let to = self.prepare(rel)?;
        std::os::unix::fs::symlink(target, &to).map_err(io_err("create symlink", &to))?;
        self.stats.files += 1;
        Ok(())
    }

    /// Makes sure every parent of `dest/rel` is a real directory (creating missing ones) and that
    /// nothing but a directory is left at `dest/rel`; returns `dest/rel`.
    fn prepare(&mut self, rel: &Path) -> Result<PathBuf, SourceError> {
        let to = self.dest.join(rel);
        if let Some(parent) = rel.parent() {
            let mut prefix = PathBuf::new();
            for component in parent.components() {
                prefix.push(component);
                if self.dirs.contains(&prefix) {
                    continue;
                }
                let dir = self.dest.join(&prefix);
                match fs::symlink_metadata(&dir) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        return Err(SourceError::NotADirectory {
                            path: to,
                            blocker: dir,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir(&dir).map_err(io_err("create directory", &dir))?;
                    }
                    Err(e) => return Err(io_err("inspect", &dir)(e)),
                }
                self.dirs.insert(prefix.clone());
            }
        }
        match fs::symlink_metadata(&to) {
            Ok(md) if md.is_dir() => Err(SourceError::Io {
                action: "create",
                path: to,
                source: io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            }),
            Ok(_) => {
                fs::remove_file(&to).map_err(io_err("replace", &to))?;
                Ok(to)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(to),
            Err(e) => Err(io_err("inspect", &to)(e)),
        }
    }
}

/// Checks one component of a git path; returns why it is refused.
fn check_component(name: &BStr) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("the path has an empty component (`//` or a trailing `/`)")
    } else if name == "." || name == ".." {
        Err("the path has a `.` or `..` component")
    } else if name.contains(&b'/') {
        Err("a tree entry name contains `/`")
    } else if name.contains(&0) {
        Err("the path contains a NUL byte")
    } else if name.eq_ignore_ascii_case(b".git") {
        Err("the path names `.git`")
    } else {
        Ok(())
    }
}

/// Writes the tree of commit `sha` (full or abbreviated hex, or an annotated tag pointing to a
/// commit) of the repository at `git_dir` (typically a bare mirror) into `dest`, creating it if
/// needed. Blobs become files with mode 0755 or 0644, symlinks become symlinks, submodule entries
/// are skipped. The repository's index and work tree, if any, are not touched.
pub fn checkout_commit(git_dir: &Path, sha: &str, dest: &Path) -> Result<CopyStats, SourceError> {
    if !(4..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SourceError::InvalidSha {
            sha: sha.to_owned(),
        });
    }
    let repo = gix::open(git_dir).map_err(|source| SourceError::OpenRepository {
        git_dir: git_dir.to_owned(),
        source,
    })?;
    let commit_id = resolve_commit(&repo, sha, git_dir)?;
    let commit = commit_id.to_string();
    let object_err = |what: &'static str, path: &Path| {
        let what = if path.as_os_str().is_empty() {
            what.to_owned()
        } else {
            format!("{what} `{}`", path.display())
        };
        let commit = commit.clone();
        move |source| SourceError::Object {
            what,
            commit,
            git_dir: git_dir.to_owned(),
            source,
        }
    };
    let root_tree = repo
        .find_commit(commit_id)
        .and_then(|c| c.tree_id())
        .map_err(object_err("the commit", Path::new("")))?
        .detach();

    fs::create_dir_all(dest).map_err(io_err("create directory", dest))?;
    let mut writer = Writer::new(dest);
    // Depth-first with an explicit stack, so a deep hostile tree cannot overflow ours.
    let mut pending = vec![(root_tree, PathBuf::new())];
    while let Some((tree_id, dir)) = pending.pop() {
        let tree = repo
            .find_tree(tree_id)
            .map_err(object_err("the tree", &dir))?;
        for entry in tree.iter() {
            let entry = entry.map_err(object_err("an entry of the tree", &dir))?;
            let name = entry.filename();
            check_component(name).map_err(|reason| {
                let shown = dir.join(OsStr::from_bytes(name));
                writer.unsafe_path(shown.as_os_str().as_bytes().as_bstr(), reason)
            })?;
            let rel = dir.join(OsStr::from_bytes(name));
            let id = entry.inner.oid.to_owned();
            match entry.kind() {
                EntryKind::Tree => pending.push((id, rel)),
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    let blob = repo.find_blob(id).map_err(object_err("the file", &rel))?;
                    let executable = entry.kind() == EntryKind::BlobExecutable;
                    writer.write_bytes(&rel, executable, &blob.data)?;
                }
                EntryKind::Link => {
                    let blob = repo
                        .find_blob(id)
                        .map_err(object_err("the symlink", &rel))?;
                    writer.write_symlink(&rel, OsStr::from_bytes(&blob.data))?;
                }
                EntryKind::Commit => {}
            }
        }
    }
    Ok(writer.stats)
}

/// Resolves a full or abbreviated hex object id to a commit, peeling annotated tags.
///
/// Done by hand rather than with `rev_parse`, which would also accept ref names and reports a miss
/// as "couldn't parse revision"; here a miss, an ambiguous prefix and a non-commit each get their
/// own error, and a corrupt tag is an error rather than a panic.
pub(crate) fn resolve_commit(
    repo: &gix::Repository,
    sha: &str,
    git_dir: &Path,
) -> Result<gix::ObjectId, SourceError> {
    let invalid = || SourceError::InvalidSha {
        sha: sha.to_owned(),
    };
    let unknown = || SourceError::UnknownCommit {
        sha: sha.to_owned(),
        git_dir: git_dir.to_owned(),
    };
    let lookup_err = |source| SourceError::Lookup {
        sha: sha.to_owned(),
        git_dir: git_dir.to_owned(),
        source,
    };
    let mut id = if sha.len() == repo.object_hash().len_in_hex() {
        let id = gix::ObjectId::from_hex(sha.as_bytes()).map_err(|_| invalid())?;
        if !repo.has_object(id) {
            return Err(unknown());
        }
        id
    } else {
        let prefix = gix::hash::Prefix::from_hex(sha).map_err(|_| invalid())?;
        match repo
            .objects
            .lookup_prefix(prefix, None)
            .map_err(lookup_err)?
        {
            None => return Err(unknown()),
            Some(Err(())) => {
                return Err(SourceError::AmbiguousSha {
                    sha: sha.to_owned(),
                    git_dir: git_dir.to_owned(),
                });
            }
            Some(Ok(id)) => id,
        }
    };
    // Annotated tags can point at tags; git caps such chains too.
    for _ in 0..16 {
        let object = repo.find_object(id).map_err(lookup_err)?;
        match object.kind {
            gix::object::Kind::Commit => return Ok(id),
            gix::object::Kind::Tag => {
                id = object
                    .try_to_tag_ref_iter()
                    .ok_or_else(unknown)?
                    .target_id()
                    .map_err(lookup_err)?;
            }
            kind => {
                return Err(SourceError::NotACommit {
                    sha: sha.to_owned(),
                    git_dir: git_dir.to_owned(),
                    kind: kind.to_string(),
                });
            }
        }
    }
    Err(SourceError::NotACommit {
        sha: sha.to_owned(),
        git_dir: git_dir.to_owned(),
        kind: "chain of more than 16 tags".to_owned(),
    })
}

#[cfg(test)]
#[path = "checkout_tests.rs"]
mod tests;
