//! Tests for `mirror.rs` against real git servers on loopback: `git daemon` (pushed to with the
//! real `git push`) and `git http-backend` behind a small HTTP/1.1 server requiring Basic auth.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::source::test_support::git;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    fs::write(path, content).expect("write");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

fn default_globs() -> Vec<String> {
    crate::spec::model::DEFAULT_PIPELINE_GLOBS
        .iter()
        .map(|g| (*g).to_owned())
        .collect()
}

/// A `git daemon` child serving every repository under a directory; killed on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = free_port();
        let base_arg = format!("--base-path={}", base.display());
        let port_arg = format!("--port={port}");
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                &base_arg,
                "--export-all",
                "--enable=receive-pack",
                &port_arg,
                "--listen=127.0.0.1",
            ])
            .arg(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let mut daemon = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("git daemon exited early: {status}");
            }
            assert!(Instant::now() < deadline, "git daemon did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn redact_url_hides_userinfo_and_query() {
    assert_eq!(
        redact_url("https://user:s3cret@example.com/org/repo.git"),
        "https://***@example.com/org/repo.git"
    );
    assert_eq!(
        redact_url("https://ghp_token@example.com"),
        "https://***@example.com"
    );
    assert_eq!(
        redact_url("https://a:b@c@example.com:8443/r?private_token=x#f"),
        "https://***@example.com:8443/r?***"
    );
    assert_eq!(
        redact_url("https://example.com/org/repo.git"),
        "https://example.com/org/repo.git"
    );
    assert_eq!(
        redact_url("git@github.com:org/repo.git"),
        "git@github.com:org/repo.git"
    );
    assert_eq!(redact_url("/srv/git/repo.git"), "/srv/git/repo.git");
}

#[test]
fn credentials_debug_hides_the_password() {
    let shown = format!(
        "{:?}",
        Credentials::for_provider("github", "ghs_secret".into())
    );
    assert!(!shown.contains("ghs_secret"), "{shown}");
    assert!(shown.contains("***") && shown.contains("x-access-token"));
    assert_eq!(
        Credentials::for_provider("GitLab", "t".into()).username(),
        "oauth2"
    );
    assert_eq!(
        Credentials::for_provider("bitbucket", "t".into()).username(),
        "x-token-auth"
    );
    assert_eq!(
        Credentials::for_provider("gitea", "t".into()).username(),
        "git"
    );
}

#[test]
fn mirror_follows_pushes_over_git_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = tmp.path().join("served");
    fs::create_dir_all(&served).expect("mkdir");
    git(&served, &["init", "--bare", "-q", "repo.git"]);
    let daemon = Daemon::start(&served);
    let url = daemon.url("repo.git");

    let work = tmp.path().join("work");
    fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    write(&work, ".gantry/pipelines/a.yaml", "name: a\n");
    write(&work, "infra/x.sh", "echo x\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    let first = git(&work, &["rev-parse", "HEAD"]);

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

    write(&work, ".gantry/pipelines/a.yaml", "name: a2\n");
    write(&work, ".gantry/pipelines/b.yml", "name: b\n");
    fs::remove_file(work.join("infra/x.sh")).expect("rm");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "second"]);
    git(&work, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    let second = git(&work, &["rev-parse", "HEAD"]);

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
fn unreachable_remote_fails_fast_with_a_redacted_url() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("git://user:hunter2@127.0.0.1:{port}/repo.git");
    let started = Instant::now();
    let err = Mirror::open_or_clone(&tmp.path().join("m"), &url, "main", None)
        .expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(10));
    let shown = err.to_string();
    assert!(matches!(err, SourceError::Clone { .. }), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains(&format!("git://***@127.0.0.1:{port}/repo.git")),
        "{shown}"
    );
    assert!(shown.contains("check the url and the token"), "{shown}");
}

/// Standard base64 (with padding), for the expected `Authorization` header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A minimal HTTP/1.1 server running `git http-backend` as CGI for each request, one request per
/// connection (`Connection: close`), requiring Basic auth with one username and password when
/// given one (and answering 401 with `WWW-Authenticate: Basic realm="git"` otherwise).
struct HttpGit {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Authorization headers seen, to check that credentials were sent at all.
    seen_auth: Arc<Mutex<Vec<bool>>>,
}

impl HttpGit {
    fn start(root: &Path, auth: Option<(&str, &str)>) -> HttpGit {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen_auth = Arc::new(Mutex::new(Vec::new()));
        let expected = auth.map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        });
        let user = auth.map(|(user, _)| user).unwrap_or_default();
        let root = root.to_owned();
        let (stop2, seen2, user) = (stop.clone(), seen_auth.clone(), user.to_owned());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, expected, seen, user) =
                    (root.clone(), expected.clone(), seen2.clone(), user.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &root, expected.as_deref(), &user, &seen);
                });
            }
        });
        HttpGit {
            port,
            stop,
            seen_auth,
        }
    }

    fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    stream: TcpStream,
    root: &Path,
    expected_auth: Option<&str>,
    user: &str,
    seen_auth: &Mutex<Vec<bool>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };

    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // Trailers, then the final empty line.
                loop {
                    let mut trailer = String::new();
                    if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0; len];
        reader.read_exact(&mut body)?;
    }

    let authorized =
        expected_auth.is_none_or(|expected| header("authorization").as_deref() == Some(expected));
    seen_auth
        .lock()
        .expect("lock")
        .push(header("authorization").is_some());
    if !authorized {
        let message = b"authentication required\n";
        write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            message.len()
        )?;
        out.write_all(message)?;
        return out.flush();
    }

    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "HTTP_GIT_PROTOCOL",
            header("git-protocol").unwrap_or_default(),
        )
        .env(
            "HTTP_CONTENT_ENCODING",
            header("content-encoding").unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = cgi.stdin.take().expect("piped stdin");
    let writer = thread::spawn(move || stdin.write_all(&body));
    let output = cgi.wait_with_output()?;
    let _ = writer.join();

    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let (head, cgi_body) = match split {
        Some((p, n)) => (&raw[..p], &raw[p + n..]),
        None => (&raw[..], &[][..]),
    };
    let mut status = "200 OK".to_owned();
    let mut response_headers = String::new();
    for line in String::from_utf8_lossy(head).lines() {
        let line = line.trim_end();
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => {
                response_headers.push_str(line);
                response_headers.push_str("\r\n");
            }
            None => {}
        }
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        cgi_body.len()
    )?;
    out.write_all(cgi_body)?;
    out.flush()
}

/// A bare repository `repo.git` under `served` with one commit pushed from `work`; returns its sha.
fn served_repo(served: &Path, work: &Path) -> String {
    fs::create_dir_all(served).expect("mkdir");
    git(served, &["init", "--bare", "-q", "repo.git"]);
    fs::create_dir_all(work).expect("mkdir");
    git(work, &["init", "-q"]);
    write(work, ".gantry/pipelines/a.yaml", "name: a\n");
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", "first"]);
    push(served, work);
    git(work, &["rev-parse", "HEAD"])
}

fn push(served: &Path, work: &Path) {
    let bare = served.join("repo.git");
    git(
        work,
        &[
            "push",
            "-q",
            bare.to_str().expect("utf-8"),
            "HEAD:refs/heads/main",
        ],
    );
}

#[test]
fn mirror_clones_and_fetches_over_smart_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (served, work) = (tmp.path().join("served"), tmp.path().join("work"));
    let first = served_repo(&served, &work);
    let server = HttpGit::start(&served, None);

    let mirror =
        Mirror::open_or_clone(&tmp.path().join("m"), &server.url("repo.git"), "main", None)
            .expect("clone over http");
    assert_eq!(mirror.head("main").expect("head"), Some(first.clone()));
    let interrupt = AtomicBool::new(false);
    assert!(!mirror.fetch(&interrupt).expect("fetch").changed);

    write(&work, ".gantry/pipelines/b.yml", "name: b\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "second"]);
    push(&served, &work);
    let second = git(&work, &["rev-parse", "HEAD"]);
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
    let (served, work) = (tmp.path().join("served"), tmp.path().join("work"));
    served_repo(&served, &work);
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
        server
            .seen_auth
            .lock()
            .expect("lock")
            .iter()
            .all(|sent| !sent),
        "no Authorization header reached the server"
    );
}
