//! The throwaway PostgreSQL server of `gantry up`'s demo: a cluster in the data dir, started
//! with the demo and stopped when it ends, so that `provision-postgres` and `drift-check` run to
//! success on a machine that has Debian's `postgresql` package and nothing else.
//!
//! The cluster is made once (`initdb`) and kept with the data dir, so what the demo provisioned
//! is still there at the next start. Host logins use scram passwords; both demo logins (the admin
//! and a monitoring role) get fresh random passwords at every start, set over the cluster's own
//! Unix socket (trusted), and handed to the store as sealed secrets: no password is kept in a
//! file. As root, the server runs as `postgres` (Debian's account for it), else `nobody`, since
//! PostgreSQL refuses to run as root.

use std::ffi::CString;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The login that provisions databases (a superuser of the demo cluster).
pub const ADMIN_USER: &str = "gantry_admin";
/// The login the drift check reads the catalog with (no privileges).
pub const MONITOR_USER: &str = "gantry_monitor";

/// A running demo cluster; stopped when dropped.
pub struct DemoPostgres {
    bin: PathBuf,
    data: PathBuf,
    /// The folder of the cluster: `data`, the Unix socket, the server log and the port file.
    base: PathBuf,
    pub port: u16,
    owner: Option<Account>,
    /// The `postgres` process, a child of Gantry.
    server: Option<std::process::Child>,
    pub admin_password: String,
    pub monitor_password: String,
}

/// A user account the server runs as.
#[derive(Clone)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

/// Why there is no demo cluster.
#[derive(Debug, thiserror::Error)]
pub enum DemoPostgresError {
    /// The server programs are not installed: said once, with what to install.
    #[error(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed, so provision-postgres \
         and drift-check have no server to work on; install Debian's `postgresql` package (or \
         point their variables at a server of yours) and start `gantry up` again"
    )]
    NotInstalled,
    #[error("the demo's PostgreSQL server did not start: {0}")]
    Failed(String),
}

/// Finds a PostgreSQL server program: on PATH, else where Debian puts it
/// (`/usr/lib/postgresql/<version>/bin`, the newest version).
fn program_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pg_ctl"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(dir) = on_path
        && dir.join("initdb").is_file()
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The account the server runs as when Gantry is root: `postgres`, else `nobody`.
fn server_account() -> Option<Account> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    ["postgres", "nobody"].into_iter().find_map(|name| {
        let c_name = CString::new(name).ok()?;
        // SAFETY: getpwnam with a NUL-terminated name; the record is copied out at once, before
        // any other call could reuse its static buffer (`gantry up` has no other thread yet).
        let pw = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if pw.is_null() {
            return None;
        }
        // SAFETY: `pw` is a valid passwd record, checked non-null above.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Some(Account {
            name: name.to_string(),
            uid,
            gid,
        })
    })
}

/// 24 random bytes as 48 hex characters: a password that needs no quoting anywhere.
fn random_password() -> Result<String, DemoPostgresError> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| DemoPostgresError::Failed(format!("no randomness for a password: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a loopback TCP port can be listened on now.
fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn free_port() -> Result<u16, DemoPostgresError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoPostgresError::Failed(format!("no free loopback port: {e}")))
}

/// The cluster's folder. In the data dir, unless the server runs as another user who cannot
/// reach it (a data dir under `/root`): then a folder of root's under `/tmp` named after the data
/// dir, made and checked the way the work dir's fallback is.
fn cluster_base(data_dir: &Path, owner: Option<&Account>) -> Result<PathBuf, DemoPostgresError> {
    let inside = data_dir.join("postgres");
    if owner.is_none() || crate::store::open_to_others(data_dir) {
        return Ok(inside);
    }
    let outer = crate::store::private_tmp_dir("postgres", data_dir).map_err(|e| {
        DemoPostgresError::Failed(format!("cannot make a folder for it under /tmp: {e}"))
    })?;
    Ok(outer.join("cluster"))
}

impl DemoPostgres {
    /// Starts the demo cluster in `data_dir` (making it on the first start) and sets fresh
    /// passwords for its two logins.
    pub fn start(data_dir: &Path) -> Result<DemoPostgres, DemoPostgresError> {
        let bin = program_dir().ok_or(DemoPostgresError::NotInstalled)?;
        let owner = server_account();
        let base = cluster_base(data_dir, owner.as_ref())?;
        let failed = |what: &str, e: std::io::Error| {
            DemoPostgresError::Failed(format!("{what} {}: {e}", base.display()))
        };
        std::fs::create_dir_all(&base).map_err(|e| failed("cannot create", e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| failed("cannot set the mode of", e))?;
        }
        if let Some(account) = &owner {
            std::os::unix::fs::chown(&base, Some(account.uid), Some(account.gid))
                .map_err(|e| failed("cannot hand over", e))?;
        }
        let mut pg = DemoPostgres {
            data: base.join("data"),
            port: 0,
            bin,
            base,
            owner,
            server: None,
            admin_password: random_password()?,
            monitor_password: random_password()?,
        };
        if !pg.data.join("PG_VERSION").is_file() {
            pg.run(
                "initdb",
                Command::new(pg.bin.join("initdb"))
                    .arg("-D")
                    .arg(&pg.data)
                    .args(["-U", ADMIN_USER, "-E", "UTF8", "--no-instructions"])
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"]),
            )?;
        }
        // A server left running by an older `gantry up` that was killed: stop it first.
        if pg.data.join("postmaster.pid").exists() {
            let _ = pg.pg_ctl(&["-m", "fast", "-w", "stop"]);
        }
        pg.port = pg.choose_port()?;
        pg.server = Some(pg.spawn_server()?);
        pg.wait_ready()?;
        pg.set_passwords()?;
        Ok(pg)
    }

    /// Starts `postgres` as a child of Gantry that gets SIGINT (PostgreSQL's fast shutdown) when
    /// Gantry goes away however it ends, so a killed `gantry up` leaves no server behind.
    fn spawn_server(&self) -> Result<std::process::Child, DemoPostgresError> {
        let log = self.log_path();
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| {
                    DemoPostgresError::Failed(format!("cannot open {}: {e}", log.display()))
                })
        };
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.base.display()))
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            .current_dir(&self.base)
            .process_group(0);
        if let Some(account) = &self.owner {
            command.uid(account.uid).gid(account.gid);
        }
        // SAFETY: prctl is async-signal-safe; the closure runs in the child after its user was
        // set (which would clear the setting) and before exec (which keeps it).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().map_err(|e| {
            DemoPostgresError::Failed(format!(
                "cannot start {}: {e}",
                self.bin.join("postgres").display()
            ))
        })
    }

    /// Waits until the server accepts connections: its `postmaster.pid` says `ready` (what
    /// `pg_ctl -w` waits for), at most a minute, and not past the server's own exit.
    fn wait_ready(&mut self) -> Result<(), DemoPostgresError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let pid_file = self.data.join("postmaster.pid");
        loop {
            if let Some(server) = self.server.as_mut()
                && let Ok(Some(status)) = server.try_wait()
            {
                self.server = None;
                return Err(DemoPostgresError::Failed(format!(
                    "postgres ended ({status}); its log is {}",
                    self.log_path().display()
                )));
            }
            let ready = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().nth(7).map(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(DemoPostgresError::Failed(format!(
                    "postgres was not ready after a minute; its log is {}",
                    self.log_path().display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The port of the last start when it is still free, so variables and published
    /// connections stay valid across restarts; else a new free one (remembered).
    fn choose_port(&self) -> Result<u16, DemoPostgresError> {
        let file = self.base.join("port");
        let kept = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
            .filter(|p| *p != 0 && port_free(*p));
        if let Some(port) = kept {
            return Ok(port);
        }
        let port = free_port()?;
        std::fs::write(&file, port.to_string()).map_err(|e| {
            DemoPostgresError::Failed(format!("cannot write {}: {e}", file.display()))
        })?;
        Ok(port)
    }

    /// Runs a server program as the server's account, in a process group of its own so that a
    /// Ctrl-C at the terminal reaches Gantry (which then stops the server) and not the server.
    fn run(&self, what: &str, command: &mut Command) -> Result<(), DemoPostgresError> {
        command
            .stdin(Stdio::null())
            .current_dir(&self.base)
            .process_group(0);
        if let Some(account) = &self.owner {
            command.uid(account.uid).gid(account.gid);
        }
        let out = command.output().map_err(|e| {
            DemoPostgresError::Failed(format!(
                "cannot run {what} from {}: {e}",
                self.bin.display()
            ))
        })?;
        if out.status.success() {
            return Ok(());
        }
        let account = self
            .owner
            .as_ref()
            .map(|a| format!(" (as {})", a.name))
            .unwrap_or_default();
        Err(DemoPostgresError::Failed(format!(
            "{what}{account} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), DemoPostgresError> {
        self.run(
            "pg_ctl",
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(args),
        )
    }

    /// New passwords for both logins (the monitoring role is made on the first start), sent on
    /// psql's stdin over the Unix socket: never on a command line or in a file.
    fn set_passwords(&self) -> Result<(), DemoPostgresError> {
        let sql = format!(
            "ALTER ROLE {ADMIN_USER} WITH PASSWORD '{admin}';\n\
             SELECT 'CREATE ROLE {MONITOR_USER}' WHERE NOT EXISTS \
             (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{MONITOR_USER}') \\gexec\n\
             ALTER ROLE {MONITOR_USER} WITH LOGIN NOSUPERUSER PASSWORD '{monitor}';\n",
            admin = self.admin_password,
            monitor = self.monitor_password,
        );
        let psql = Some(self.bin.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("psql"));
        let mut command = Command::new(psql);
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
            .arg("-h")
            .arg(&self.base)
            .args(["-p", &self.port.to_string(), "-U", ADMIN_USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| DemoPostgresError::Failed(format!("cannot run psql: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| DemoPostgresError::Failed(format!("cannot talk to psql: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| DemoPostgresError::Failed(format!("psql: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DemoPostgresError::Failed(format!(
                "setting the demo passwords failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Where the server's log is, for messages.
    pub fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }
}

impl Drop for DemoPostgres {
    /// Fast shutdown (SIGINT: sessions end, the server checkpoints and exits), waited for.
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(server.id()) {
            // SAFETY: kill(2) on our own child, which has not been waited for yet.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match server.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => {
                    eprintln!("gantry: the demo's PostgreSQL server did not stop; killing it");
                    let _ = server.kill();
                    let _ = server.wait();
                    return;
                }
            }
        }
    }
}
