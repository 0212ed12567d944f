//! Real git on loopback for the tests: `git` itself with a fixed identity and no system or user
//! configuration, a `git daemon` that accepts pushes, a small HTTP/1.1 server running
//! `git http-backend` (optionally behind Basic auth), and `Repo`, a bare served repository with a
//! work clone to commit and push from.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Environment that keeps git away from the machine's and the user's configuration, and from
/// anything that could prompt for a password.
const ISOLATION: [(&str, &str); 3] = [
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

/// Variables removed so a failing authentication fails instead of asking a helper.
const UNSET: [&str; 2] = ["GIT_ASKPASS", "SSH_ASKPASS"];

/// The author and committer of every test commit.
const IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "Gantry Test"),
    ("GIT_AUTHOR_EMAIL", "test@gantry.invalid"),
    ("GIT_COMMITTER_NAME", "Gantry Test"),
    ("GIT_COMMITTER_EMAIL", "test@gantry.invalid"),
];

fn isolate(cmd: &mut Command) -> &mut Command {
    for name in UNSET {
        cmd.env_remove(name);
    }
    cmd.envs(ISOLATION)
}

/// A `git` command in `dir`, isolated and with the test identity, new repositories on `main` and
/// no commit signing. For when a test expects git to fail; otherwise use [`git`].
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    isolate(&mut cmd)
        .current_dir(dir)
        .envs(IDENTITY)
        .args(["-c", "init.defaultBranch=main"])
        .args(["-c", "commit.gpgsign=false"]);
    cmd
}

/// Runs git in `dir` (see [`git_command`]), panics with its stderr if it fails, and returns its
/// trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out: Output = git_command(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run git {args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "git {args:?} in {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loopback port that was free a moment ago (nothing else should grab it before it is used).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Waits until something accepts connections on the loopback `port`; `exited` reports the server
/// process's early death.
fn wait_listening(what: &str, port: u16, mut exited: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = exited() {
            panic!("{what} exited before it listened: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `git daemon` serving every repository under a directory over `git://`, pushes included
/// (`--enable=receive-pack`), so a test can `git push` to it for real. Killed on drop.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    /// Starts the daemon on a free loopback port and returns once it accepts connections.
    pub fn start(root: &Path) -> GitDaemon {
        let port = free_port();
        let mut cmd = Command::new("git");
        isolate(&mut cmd)
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--enable=receive-pack")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // `git daemon` runs `git-daemon` as a child (and forks one per connection): give them a
        // process group of their own, so dropping the daemon ends all of them.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("git daemon starts");
        let mut daemon = GitDaemon { child, port };
        wait_listening("git daemon", port, || {
            daemon
                .child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.to_string())
        });
        daemon
    }

    /// The `git://` URL of the repository `name` (a path relative to the served root, such as
    /// `infra.git`).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this daemon leads (see `start`).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 server that runs `git http-backend` as a CGI program for each request (one
/// request per connection, `Connection: close`), serving every repository under a directory. With
/// credentials it answers requests without the matching Basic `Authorization` with 401 and
/// `WWW-Authenticate: Basic realm="git"`. Stops accepting on drop.
pub struct HttpGit {
    port: u16,
    stop: Arc<AtomicBool>,
    auth_seen: Arc<Mutex<Vec<bool>>>,
}

/// What every request of one `HttpGit` is served with.
struct Backend {
    root: PathBuf,
    /// The whole expected `Authorization` value, if credentials are required.
    expected: Option<String>,
    /// Handed to the CGI as `REMOTE_USER`.
    user: String,
    auth_seen: Arc<Mutex<Vec<bool>>>,
}

impl HttpGit {
    /// Starts serving `root` on a free loopback port; `auth` is a username and password to
    /// require.
    pub fn start(root: &Path, auth: Option<(&str, &str)>) -> HttpGit {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let auth_seen = Arc::new(Mutex::new(Vec::new()));
        let backend = Arc::new(Backend {
            root: root.to_owned(),
            expected: auth.map(|(user, password)| {
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
            }),
            user: auth.map(|(user, _)| user.to_owned()).unwrap_or_default(),
            auth_seen: Arc::clone(&auth_seen),
        });
        let stopped = Arc::clone(&stop);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let backend = Arc::clone(&backend);
                thread::spawn(move || {
                    // A client that hangs up mid-request is its own problem.
                    let _ = backend.serve(stream);
                });
            }
        });
        HttpGit {
            port,
            stop,
            auth_seen,
        }
    }

    /// The `http://` URL of the repository `name` under the served root.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// For each request served so far, in order, whether it carried an `Authorization` header.
    pub fn auth_headers_seen(&self) -> Vec<bool> {
        self.auth_seen.lock().expect("auth log lock").clone()
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop only looks at the flag when a connection arrives.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One parsed request.
struct Request {
    method: String,
    target: String,
    /// Lowercased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn read(reader: &mut impl BufRead) -> std::io::Result<Request> {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut raw = String::new();
            if reader.read_line(&mut raw)? == 0 || raw.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = raw.trim_end().split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut request = Request {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        let chunked = request
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            request.body = read_chunked(reader)?;
        } else if let Some(len) = request.header("content-length") {
            let len: usize = len.parse().map_err(invalid_data)?;
            request.body = vec![0; len];
            reader.read_exact(&mut request.body)?;
        }
        Ok(request)
    }
}

fn invalid_data(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// A chunked request body (git sends large pushes and fetch negotiations this way).
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).map_err(invalid_data)?;
        if size == 0 {
            // Optional trailers up to an empty line.
            let mut trailer = String::new();
            while reader.read_line(&mut trailer)? > 0 && !trailer.trim().is_empty() {
                trailer.clear();
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

impl Backend {
    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        let request = Request::read(&mut reader)?;
        let sent = request.header("authorization");
        self.auth_seen
            .lock()
            .expect("auth log lock")
            .push(sent.is_some());
        if self
            .expected
            .as_deref()
            .is_some_and(|want| sent != Some(want))
        {
            let text = "authentication required\n";
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                 Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )?;
            return out.flush();
        }
        let cgi = self.run_cgi(&request)?;
        let (status, headers, body) = cgi_response(&cgi);
        write!(
            out,
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)?;
        out.flush()
    }

    /// Runs `git http-backend` for `request` and returns its raw output (CGI headers and body).
    fn run_cgi(&self, request: &Request) -> std::io::Result<Vec<u8>> {
        let (path, query) = request
            .target
            .split_once('?')
            .unwrap_or((&request.target, ""));
        let header = |name| request.header(name).unwrap_or_default();
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(ISOLATION)
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("REQUEST_METHOD", &request.method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", request.body.len().to_string())
            .env("REMOTE_USER", &self.user)
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let body = request.body.clone();
        // Feed the body while the output is read, or a large exchange could deadlock.
        let feeder = thread::spawn(move || stdin.write_all(&body));
        let output = child.wait_with_output()?;
        let _ = feeder.join();
        Ok(output.stdout)
    }
}

/// Splits CGI output into the HTTP status (from a `Status:` header, else 200), the other headers
/// (each ending in CRLF) and the body.
fn cgi_response(raw: &[u8]) -> (String, String, &[u8]) {
    let blank = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, at + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, at + 2))
        });
    let (head, body) = match blank {
        Some((end, body_start)) => (&raw[..end], &raw[body_start..]),
        None => (raw, &raw[raw.len()..]),
    };
    let mut status = String::from("200 OK");
    let mut headers = String::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.trim_end().split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            status = value.trim().to_owned();
        } else {
            headers.push_str(&format!("{name}:{value}\r\n"));
        }
    }
    (status, headers, body)
}

/// Standard base64 with padding, for a Basic `Authorization` value.
fn base64(input: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let bits = group.iter().enumerate().fold(0u32, |acc, (i, byte)| {
            acc | (u32::from(*byte) << (16 - 8 * i))
        });
        for sextet in 0..4 {
            if sextet <= group.len() {
                out.push(char::from(
                    DIGITS[(bits >> (18 - 6 * sextet)) as usize & 63],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A bare repository under a served root (so a `GitDaemon` or `HttpGit` on that root serves it)
/// and a work clone in a temporary directory to commit from. Pushes go to the bare repository's
/// path, or to the URL given to [`Repo::set_remote`]; the work clone's branch is `main`.
pub struct Repo {
    bare: PathBuf,
    work: tempfile::TempDir,
    remote: String,
}

impl Repo {
    /// Creates the empty bare repository `served_root/name` (`name` such as `infra.git`; the
    /// root is created if missing) and an empty work clone.
    pub fn create(served_root: &Path, name: &str) -> Repo {
        fs::create_dir_all(served_root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", served_root.display()));
        git(served_root, &["init", "--bare", "-q", name]);
        let work = tempfile::tempdir().expect("tempdir for the work clone");
        git(work.path(), &["init", "-q"]);
        let bare = served_root.join(name);
        let remote = bare.to_str().expect("utf-8 path").to_owned();
        Repo { bare, work, remote }
    }

    /// Pushes from now on go to `url` (a daemon's `git://` URL, to push over the network).
    pub fn set_remote(&mut self, url: &str) -> &mut Repo {
        self.remote = url.to_owned();
        self
    }

    /// Writes `content` to the file `rel` of the work clone, creating its directories.
    pub fn write(&self, rel: &str, content: &str) -> &Repo {
        let path = self.work.path().join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create the file's directory");
        }
        fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self
    }

    /// Removes the file `rel` from the work clone.
    pub fn remove(&self, rel: &str) -> &Repo {
        let path = self.work.path().join(rel);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
        self
    }

    /// Commits everything in the work clone (an empty commit if nothing changed), pushes it to
    /// `main` and returns its sha.
    pub fn commit_and_push(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.push("main");
        self.head()
    }

    /// Pushes the work clone's current commit to `branch` of the remote, forced.
    pub fn push(&self, branch: &str) {
        let refspec = format!("+HEAD:refs/heads/{branch}");
        self.git(&["push", "-q", &self.remote, &refspec]);
    }

    /// The sha of the work clone's current commit.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs git in the work clone.
    pub fn git(&self, args: &[&str]) -> String {
        git(self.work.path(), args)
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    pub fn bare_dir(&self) -> &Path {
        &self.bare
    }
}

#[test]
fn the_git_servers_serve_pushes_and_check_basic_auth() {
    let served = tempfile::tempdir().expect("tempdir");
    let mut repo = Repo::create(served.path(), "infra.git");
    let daemon = GitDaemon::start(served.path());
    repo.set_remote(&daemon.url("infra.git"));
    repo.write("a/b.txt", "one\n");
    let first = repo.commit_and_push("first");
    assert_eq!(first.len(), 40, "{first}");
    assert_eq!(git(&repo.bare, &["rev-parse", "refs/heads/main"]), first);
    repo.remove("a/b.txt");
    let second = repo.commit_and_push("second");
    assert_ne!(second, first);
    assert_eq!(repo.head(), second);
    assert!(
        git(repo.work_dir(), &["ls-remote", &daemon.url("infra.git")])
            .starts_with(&format!("{second}\tHEAD")),
        "the daemon serves the pushed commit"
    );

    let http = HttpGit::start(served.path(), Some(("user", "pa:ss")));
    let with_credentials = http.url("infra.git").replacen("://", "://user:pa%3Ass@", 1);
    let listed = git(repo.work_dir(), &["ls-remote", &with_credentials, "main"]);
    assert_eq!(listed, format!("{second}\trefs/heads/main"));
    let refused = git_command(repo.work_dir())
        .args(["ls-remote", &http.url("infra.git")])
        .output()
        .expect("git runs");
    assert!(!refused.status.success(), "no credentials, no refs");
    let seen = http.auth_headers_seen();
    assert!(seen.contains(&true) && seen.contains(&false), "{seen:?}");
    assert_eq!(base64(b"user:pa:ss"), "dXNlcjpwYTpzcw==");
    assert_eq!(base64(b"ab"), "YWI=");
}

/// A bare repository `infra.git` served by its own `git daemon`, with a work clone that pushes
/// over `git://`; pipeline files live under `.gantry/pipelines/`.
pub struct Remote {
    _served: tempfile::TempDir,
    pub daemon: GitDaemon,
    pub repo: Repo,
}

impl Remote {
    pub fn new() -> Remote {
        let served = tempfile::tempdir().expect("tempdir for the served repositories");
        let mut repo = Repo::create(served.path(), "infra.git");
        let daemon = GitDaemon::start(served.path());
        repo.set_remote(&daemon.url("infra.git"));
        Remote {
            _served: served,
            daemon,
            repo,
        }
    }

    pub fn url(&self) -> String {
        self.daemon.url("infra.git")
    }

    pub fn write(&self, file: &str, text: &str) {
        self.repo.write(&format!(".gantry/pipelines/{file}"), text);
    }

    pub fn remove(&self, file: &str) {
        self.repo.remove(&format!(".gantry/pipelines/{file}"));
    }

    pub fn push_branch(&self, branch: &str, message: &str) -> String {
        self.repo.git(&["checkout", "-q", "-B", branch]);
        self.repo.git(&["add", "-A"]);
        self.repo
            .git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.repo.push(branch);
        self.repo.head()
    }

    /// Pushes the current commit to an arbitrary ref of the served repository (a forge's
    /// `refs/pull/N/head`).
    pub fn push_ref(&self, reference: &str) {
        let refspec = format!("+HEAD:{reference}");
        self.repo.git(&["push", "-q", &self.url(), &refspec]);
    }
}
