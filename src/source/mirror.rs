//! A bare git mirror of one watched repository: cloned once, then fetched incrementally with an
//! explicit `+refs/heads/*:refs/heads/*` refspec (a gix bare clone stores none), and read without a
//! worktree: branch heads, a file at a commit, the files matching globs, the paths changed between
//! two commits. Blocking; async callers wrap each call in `tokio::task::spawn_blocking`.
//!
//! Credentials are handed to gix through a credentials callback, never written into the URL or the
//! repository configuration. URLs are shown only through [`redact_url`], and transport errors are
//! scrubbed of the token before they become a [`SourceError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::{BString, ByteSlice};
use gix::object::tree::diff::ChangeDetached;
use gix::objs::tree::EntryKind;
use gix::remote::Direction;

use super::checkout::{SourceError, resolve_commit};

/// The refspec every fetch uses: all branches, mirrored under the same names, forced.
const REFSPEC: &str = "+refs/heads/*:refs/heads/*";

/// An https username and token. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The username a forge expects next to an access token: `x-access-token` for GitHub (App
    /// installation tokens), `oauth2` for GitLab, `x-token-auth` for Bitbucket access tokens, and
    /// `git` for anything else. The provider name is matched case-insensitively.
    pub fn for_provider(provider: &str, token: String) -> Self {
        let username = match provider.to_ascii_lowercase().as_str() {
            "github" => "x-access-token",
            "gitlab" => "oauth2",
            "bitbucket" => "x-token-auth",
            _ => "git",
        };
        Credentials::new(username, token)
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The token, for an executor that hands it to a checkout elsewhere (in a Secret, never in a
    /// manifest).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Whether any branch of the mirror now points somewhere else (or was created).
    pub changed: bool,
}

/// A bare mirror of the repository at `url`, stored in `git_dir`.
#[derive(Debug, Clone)]
pub struct Mirror {
    git_dir: PathBuf,
    url: String,
    credentials: Option<Credentials>,
}

impl Mirror {
    /// Opens the mirror in `dir`, or clones `url` into it as a bare repository if `dir` does not
    /// exist or is empty. After a clone, `branch` must exist on the remote. An existing mirror is
    /// opened as it is, without fetching.
    pub fn open_or_clone(
        dir: &Path,
        url: &str,
        branch: &str,
        credentials: Option<Credentials>,
    ) -> Result<Mirror, SourceError> {
        let mirror = Mirror {
            git_dir: dir.to_owned(),
            url: url.to_owned(),
            credentials,
        };
        mirror.check_transport()?;
        if is_missing_or_empty(dir)? {
            mirror.clone_bare()?;
            if mirror.head(branch)?.is_none() {
                return Err(SourceError::BranchNotFound {
                    branch: branch.to_owned(),
                    url: redact_url(url),
                });
            }
        } else {
            mirror.open()?;
        }
        Ok(mirror)
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The URL with any userinfo and query redacted, for logs and errors.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// gix never sends credentials over plain http; say so before connecting.
    fn check_transport(&self) -> Result<(), SourceError> {
        let plain_http = self
            .url
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
        if plain_http && self.credentials.is_some() {
            return Err(SourceError::CredentialsOverHttp {
                url: redact_url(&self.url),
            });
        }
        Ok(())
    }

    fn clone_bare(&self) -> Result<(), SourceError> {
        let err = |source: gix::Error| SourceError::Clone {
            url: redact_url(&self.url),
            dir: self.git_dir.clone(),
            detail: self.scrub(&source),
            hint: hint(&source),
        };
        fs::create_dir_all(&self.git_dir).map_err(|source| SourceError::Io {
            action: "create directory",
            path: self.git_dir.clone(),
            source,
        })?;
        let mut prepare = gix::prepare_clone_bare(self.url.as_str(), &self.git_dir).map_err(err)?;
        let credentials = self.credentials.clone();
        prepare = prepare.configure_connection(move |connection| {
            match credentials.clone() {
                Some(c) => connection.set_credentials(authenticate(c)),
                None => connection.set_credentials(no_credentials),
            };
            Ok(())
        });
        let interrupt = AtomicBool::new(false);
        // On failure, dropping `prepare` removes what the clone created.
        prepare
            .fetch_only(gix::progress::Discard, &interrupt)
            .map_err(err)?;
        Ok(())
    }

    fn open(&self) -> Result<gix::Repository, SourceError> {
        gix::open(&self.git_dir).map_err(|source| SourceError::OpenRepository {
            git_dir: self.git_dir.clone(),
            source,
        })
    }

    /// Fetches every branch of the remote into the mirror; `interrupt` set to `true` stops it.
    pub fn fetch(&self, interrupt: &AtomicBool) -> Result<FetchOutcome, SourceError> {
        self.fetch_refspecs(&[REFSPEC], interrupt)
    }

    /// Fetches with explicit refspecs, e.g. a pull request's head ref
    /// (`+refs/pull/7/head:refs/gantry/pr/7`), whose commits no branch of the mirror holds.
    pub fn fetch_refspecs(
        &self,
        refspecs: &[&str],
        interrupt: &AtomicBool,
    ) -> Result<FetchOutcome, SourceError> {
        self.check_transport()?;
        let repo = self.open()?;
        let before = self.branches(&repo)?;
        let err = |source: gix::Error| SourceError::Fetch {
            url: redact_url(&self.url),
            git_dir: self.git_dir.clone(),
            detail: self.scrub(&source),
            hint: hint(&source),
        };
        let remote = repo
            .remote_at(self.url.as_str())
            .and_then(|r| r.with_refspecs(refspecs.iter().copied(), Direction::Fetch))
            .map_err(err)?;
        let daemon = remote
            .url(Direction::Fetch)
            .map(daemon_connection)
            .transpose()
            .map_err(|e| SourceError::Fetch {
                url: redact_url(&self.url),
                git_dir: self.git_dir.clone(),
                detail: format!("could not connect to the git daemon: {e}"),
                hint: "check the url, and that the server is reachable",
            })?
            .flatten();
        match daemon {
            Some(transport) => {
                let connection = remote.to_connection_with_transport(transport);
                self.receive(connection, interrupt).map_err(err)?;
            }
            None => {
                let connection = remote.connect(Direction::Fetch).map_err(err)?;
                self.receive(connection, interrupt).map_err(err)?;
            }
        }
        // Re-open: the refs written by the fetch are then read from disk, not from a cache.
        let after = self.branches(&self.open()?)?;
        Ok(FetchOutcome {
            changed: before != after,
        })
    }

    /// Keeps the mirror's packs few. Every fetch adds a pack, and every object lookup (resolving
    /// a commit, reading a pipeline file, diffing two commits) tries the packs in turn, so a
    /// mirror of a repository pushed to all day grew slower at each push (`gantry bench
    /// webhooks`: push → pipelines read 51 ms at the first push, 86–102 ms at the 200th). Past
    /// `MAX_PACKS` packs, `git repack --geometric=2 -d` merges the small ones (each pack kept is at
    /// least twice the size of the next smaller one, so the count stays logarithmic in what was
    /// fetched, and a merge rewrites only the small packs). gix has no repack of its own: without
    /// the git CLI the packs pile up as before. Returns whether it repacked. Callers hold the
    /// repository's sync lock, so no fetch writes a pack meanwhile; readers of the old packs keep
    /// them mapped, and gix looks the pack folder up again when an object is not found.
    pub fn maintain(&self) -> Result<bool, SourceError> {
        let folder = self.git_dir.join("objects").join("pack");
        let packs = match fs::read_dir(&folder) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".pack"))
                .count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(SourceError::Io {
                    action: "list the packs in",
                    path: folder,
                    source,
                });
            }
        };
        if packs <= MAX_PACKS {
            return Ok(false);
        }
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(["-c", "gc.auto=0", "repack", "--geometric=2", "-d", "-q"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(std::process::Stdio::null())
            .output();
        let failed = |source: std::io::Error| SourceError::Io {
            action: "repack",
            path: self.git_dir.clone(),
            source,
        };
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(failed(e)),
            Ok(out) if out.status.success() => Ok(true),
            Ok(out) => Err(failed(std::io::Error::other(format!(
                "git repack: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))),
        }
    }

    /// Negotiates and receives what `connection` fetches, with the mirror's credentials.
    fn receive<T>(
        &self,
        mut connection: gix::remote::Connection<'_, '_, '_, T>,
        interrupt: &AtomicBool,
    ) -> Result<(), gix::Error>
    where
        T: gix::protocol::transport::client::blocking_io::Transport,
    {
        match self.credentials.clone() {
            Some(credentials) => connection.set_credentials(authenticate(credentials)),
            None => connection.set_credentials(no_credentials),
        };
        connection
            .prepare_fetch(gix::progress::Discard, Default::default())?
            .receive(gix::progress::Discard, interrupt)?;
        Ok(())
    }

    /// The commit `refs/heads/<branch>` points to, or `None` if the mirror has no such branch.
    pub fn head(&self, branch: &str) -> Result<Option<String>, SourceError> {
        let repo = self.open()?;
        let name = format!("refs/heads/{branch}");
        let err = |source| SourceError::Reference {
            name: name.clone(),
            git_dir: self.git_dir.clone(),
            source,
        };
        let Some(mut reference) = repo.try_find_reference(name.as_str()).map_err(err)? else {
            return Ok(None);
        };
        let id = reference.peel_to_id().map_err(err)?;
        Ok(Some(id.to_string()))
    }

    /// The full sha of a commit given by its full or abbreviated (at least 4 digits) sha.
    pub fn resolve(&self, short_or_full_sha: &str) -> Result<String, SourceError> {
        let repo = self.open()?;
        Ok(resolve_commit(&repo, short_or_full_sha, &self.git_dir)?.to_string())
    }

    /// The size in bytes of the file at `path` in `commit` (read from the object's header, not
    /// its content), or `None` if the commit has no file there.
    pub fn file_size(&self, commit: &str, path: &str) -> Result<Option<u64>, SourceError> {
        let repo = self.open()?;
        let what = || format!("the size of `{path}`");
        let Some((oid, err)) = self.file_at(&repo, commit, path, what)? else {
            return Ok(None);
        };
        let header = repo.find_header(oid).map_err(err)?;
        Ok(Some(header.size()))
    }

    /// The object of the file (or symlink) at `path` in `commit`, and how to report an error
    /// reading it (as `what`); `None` if the commit has no file there (nothing at all, or a
    /// directory or submodule).
    fn file_at(
        &self,
        repo: &gix::Repository,
        commit: &str,
        path: &str,
        what: impl Fn() -> String,
    ) -> Result<Option<(gix::ObjectId, impl Fn(gix::Error) -> SourceError)>, SourceError> {
        let (id, tree) = self.commit_tree(repo, commit)?;
        let (commit, git_dir) = (id.to_string(), self.git_dir.clone());
        let err = move |source: gix::Error| SourceError::Object {
            what: what(),
            commit: commit.clone(),
            git_dir: git_dir.clone(),
            source,
        };
        let Some(entry) = tree.lookup_entry_by_path(path).map_err(&err)? else {
            return Ok(None);
        };
        if !(entry.mode().is_blob() || entry.mode().is_link()) {
            return Ok(None);
        }
        Ok(Some((entry.object_id(), err)))
    }

    /// When `commit` was committed (its committer time), in seconds since the epoch.
    pub fn commit_time(&self, commit: &str) -> Result<i64, SourceError> {
        let repo = self.open()?;
        let id = resolve_commit(&repo, commit, &self.git_dir)?;
        let err = |source| SourceError::Object {
            what: "the committer time".to_owned(),
            commit: id.to_string(),
            git_dir: self.git_dir.clone(),
            source,
        };
        let commit = repo.find_commit(id).map_err(err)?;
        let time = commit.time().map_err(err)?;
        Ok(time.seconds)
    }

    /// The content of the file (or symlink target) at `path` in `commit`, or `None` if the commit
    /// has no file there (nothing at all, or a directory or submodule).
    pub fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let repo = self.open()?;
        let what = || format!("the file `{path}`");
        let Some((oid, err)) = self.file_at(&repo, commit, path, what)? else {
            return Ok(None);
        };
        let object = repo.find_object(oid).map_err(err)?;
        Ok(Some(object.detach().data))
    }

    /// The paths of the files (blobs) in `commit` that match any of `globs`, sorted. A `*` in a
    /// glob does not match `/`; use `**` for that.
    pub fn list_files(&self, commit: &str, globs: &[String]) -> Result<Vec<String>, SourceError> {
        let mut builder = globset::GlobSetBuilder::new();
        for glob in globs {
            let compiled = globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|source| SourceError::InvalidGlob {
                    glob: glob.clone(),
                    source,
                })?;
            builder.add(compiled);
        }
        let set = builder.build().map_err(|source| SourceError::InvalidGlob {
            glob: globs.join(", "),
            source,
        })?;
        let repo = self.open()?;
        let (id, tree) = self.commit_tree(&repo, commit)?;
        let mut files = self.blob_paths(&repo, &id.to_string(), tree.id)?;
        files.retain(|path| set.is_match(path));
        Ok(files)
    }

    /// The paths of files (blobs) that differ between `old` and `new`: added, modified, deleted,
    /// and both sides of a rename; sorted. With `old: None`, every file of `new`.
    pub fn changed_paths(&self, old: Option<&str>, new: &str) -> Result<Vec<String>, SourceError> {
        let repo = self.open()?;
        let (new_id, new_tree) = self.commit_tree(&repo, new)?;
        let Some(old) = old else {
            return self.blob_paths(&repo, &new_id.to_string(), new_tree.id);
        };
        let (old_id, old_tree) = self.commit_tree(&repo, old)?;
        let changes = repo
            .diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)
            .map_err(|source| SourceError::Diff {
                old: old_id.to_string(),
                new: new_id.to_string(),
                git_dir: self.git_dir.clone(),
                source,
            })?;
        let mut paths = BTreeSet::new();
        for change in changes {
            match change {
                ChangeDetached::Addition {
                    location,
                    entry_mode,
                    ..
                }
                | ChangeDetached::Deletion {
                    location,
                    entry_mode,
                    ..
                } => {
                    if entry_mode.is_blob() {
                        paths.insert(location);
                    }
                }
                ChangeDetached::Modification {
                    location,
                    previous_entry_mode,
                    entry_mode,
                    ..
                } => {
                    if entry_mode.is_blob() || previous_entry_mode.is_blob() {
                        paths.insert(location);
                    }
                }
                ChangeDetached::Rewrite {
                    source_location,
                    source_entry_mode,
                    location,
                    entry_mode,
                    copy,
                    ..
                } => {
                    if source_entry_mode.is_blob() && !copy {
                        paths.insert(source_location);
                    }
                    if entry_mode.is_blob() {
                        paths.insert(location);
                    }
                }
            }
        }
        Ok(paths
            .into_iter()
            .map(|p| p.to_str_lossy().into_owned())
            .collect())
    }

    /// Resolves `commit` and returns its id and root tree.
    fn commit_tree<'r>(
        &self,
        repo: &'r gix::Repository,
        commit: &str,
    ) -> Result<(gix::ObjectId, gix::Tree<'r>), SourceError> {
        let id = resolve_commit(repo, commit, &self.git_dir)?;
        let tree = repo
            .find_commit(id)
            .and_then(|c| c.tree())
            .map_err(|source| SourceError::Object {
                what: "the tree".to_owned(),
                commit: id.to_string(),
                git_dir: self.git_dir.clone(),
                source,
            })?;
        Ok((id, tree))
    }

    /// Every blob path under `root`, sorted; submodules and symlinks are not files here.
    fn blob_paths(
        &self,
        repo: &gix::Repository,
        commit: &str,
        root: gix::ObjectId,
    ) -> Result<Vec<String>, SourceError> {
        let err = |source| SourceError::Object {
            what: "a tree".to_owned(),
            commit: commit.to_owned(),
            git_dir: self.git_dir.clone(),
            source,
        };
        let mut files = Vec::new();
        // An explicit stack, so a deep hostile tree cannot overflow ours.
        let mut pending: Vec<(gix::ObjectId, BString)> = vec![(root, BString::default())];
        while let Some((tree_id, dir)) = pending.pop() {
            let tree = repo.find_tree(tree_id).map_err(err)?;
            for entry in tree.iter() {
                let entry = entry.map_err(err)?;
                let mut path = dir.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(entry.filename());
                match entry.kind() {
                    EntryKind::Tree => pending.push((entry.inner.oid.to_owned(), path)),
                    EntryKind::Blob | EntryKind::BlobExecutable => {
                        files.push(path.to_str_lossy().into_owned());
                    }
                    EntryKind::Link | EntryKind::Commit => {}
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every branch of the mirror and where it points.
    fn branches(
        &self,
        repo: &gix::Repository,
    ) -> Result<BTreeMap<BString, Option<gix::ObjectId>>, SourceError> {
        let err = |source: gix::Error| SourceError::Reference {
            name: "refs/heads/*".to_owned(),
            git_dir: self.git_dir.clone(),
            source,
        };
        let platform = repo.references().map_err(err)?;
        let mut branches = BTreeMap::new();
        for reference in platform.local_branches().map_err(err)? {
            let reference = reference.map_err(|e| err(gix::Error::from_error(e)))?;
            let target = reference.target().try_id().map(ToOwned::to_owned);
            branches.insert(reference.name().as_bstr().to_owned(), target);
        }
        Ok(branches)
    }

    /// Renders a transport error without the token or the URL's userinfo.
    fn scrub(&self, error: &gix::Error) -> String {
        let mut text = error.to_string();
        let cause = error.probable_cause().to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        let mut secrets = Vec::new();
        if let Some(credentials) = &self.credentials {
            secrets.push(credentials.password.clone());
        }
        if let Some(userinfo) = userinfo(&self.url) {
            secrets.push(userinfo.to_owned());
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_owned());
            }
        }
        text = text.replace(&self.url, &redact_url(&self.url));
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// The credentials callback gix calls when the server asks for authentication.
fn authenticate(
    credentials: Credentials,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>>
+ 'static {
    move |action| match action {
        gix::credentials::helper::Action::Get(context) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: credentials.username.clone(),
                    password: credentials.password.clone(),
                    oauth_refresh_token: None,
                },
                next: context.into(),
            }))
        }
        _ => Ok(None),
    }
}

/// The credentials callback of a repository configured without a token: a server that asks for
/// credentials gets none, and the fetch fails at once. Without it gix would ask git's credential
/// helpers, which may wait for a terminal the service does not have.
fn no_credentials(
    _action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    Ok(None)
}

/// A connection to the git daemon of a `git://` url (`None` for other urls) with Nagle's algorithm
/// off. gix writes each pkt-line of a request in three small writes (length, payload, newline),
/// and with Nagle on, the end of each request waited for the daemon's delayed ACK, 40 ms, twice a
/// fetch (`gantry bench webhooks`: a push's fetch took ~137 ms against ~99 ms for `git fetch`).
fn daemon_connection(
    url: &gix::Url,
) -> std::io::Result<
    Option<gix::protocol::transport::client::git::blocking_io::Connection<TcpStream, TcpStream>>,
> {
    use gix::protocol::transport::{Protocol, client::git};
    if url.scheme != gix::url::Scheme::Git {
        return Ok(None);
    }
    let Some(host) = url.host() else {
        return Ok(None);
    };
    let port = url.port_or_default().unwrap_or(9418);
    let address = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        )
    })?;
    let read = TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))?;
    read.set_nodelay(true)?;
    let write = read.try_clone()?;
    Ok(Some(git::blocking_io::Connection::new(
        read,
        write,
        Protocol::V2,
        url.path.clone(),
        Some((host.to_owned(), url.port)),
        git::ConnectMode::Daemon,
        false,
    )))
}

/// Packs a mirror may hold before `Mirror::maintain` merges them.
const MAX_PACKS: usize = 8;

/// The likely fix for a failed clone or fetch.
fn hint(error: &gix::Error) -> &'static str {
    if error.is_unauthenticated() || error.is_permission_denied() {
        "the server refused the credentials: check the token and that it grants read access to the repository"
    } else {
        "check the url and the token, and that the server is reachable"
    }
}

fn is_missing_or_empty(dir: &Path) -> Result<bool, SourceError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(SourceError::Io {
            action: "read directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The userinfo (`user:password`) of a `scheme://userinfo@host/...` URL, if any.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    authority.rfind('@').map(|at| &authority[..at])
}

/// A URL fit for logs and errors: the userinfo of `scheme://user:password@host/path` becomes
/// `***`, and a query string (where some forges accept tokens) becomes `?***`. Other forms
/// (`git@host:path`, local paths) are returned unchanged; they cannot carry a password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => format!("{}?***", &tail[..q]),
        None => tail.to_owned(),
    };
    format!("{scheme}://{host}{tail}")
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;
