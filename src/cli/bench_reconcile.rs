//! `gantry bench reconcile`: the repository reconciler against a real `git daemon` on loopback.
//!
//! Setup (not measured) creates N bare repositories with the git CLI, each holding P valid
//! pipeline files, and serves them with `git daemon`. Then, on a fresh store:
//!
//! - cold sync: `catalog::sync` of every repository (clone + reconcile) on a bounded pool of
//!   worker threads, against `git clone --bare` of the same repositories with the same pool;
//! - one push: a pipeline file changes in one repository and is pushed with git; the mirror fetch
//!   and the reconcile after it are timed separately, against `git fetch` of the same push;
//! - steady state: what the poll timer does, a sync of every repository with nothing new, against
//!   `git fetch` of every repository; wall time, CPU time (getrusage) and RSS (/proc/self/status).
//!
//! The figures are printed with their ratios to the git CLI and the goals; nothing is
//! asserted about speed.

use std::fmt::Write as _;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::exit;
use crate::catalog::{self, RepoSource};
use crate::source::Mirror;
use crate::store::Store;

/// The goals.
const GOAL_COLD: Duration = Duration::from_secs(60);
const GOAL_PUSH: Duration = Duration::from_millis(50);
const GOAL_RSS_BYTES: u64 = 200_000_000;

/// The branch every benchmark repository is on.
const BRANCH: &str = "main";
/// What the git CLI baseline fetches: the mirror's refspec.
const FETCH_REFSPEC: &str = "+refs/heads/*:refs/heads/*";

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Repositories to create and watch
    #[arg(long, default_value_t = 1000)]
    pub repos: usize,
    /// Pipeline files per repository
    #[arg(long, default_value_t = 5)]
    pub pipelines: usize,
    /// Syncs (and git CLI baseline commands) running at once
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Single pushes picked up one at a time, each to a different repository where possible
    #[arg(long, default_value_t = 20)]
    pub pushes: usize,
    /// Steady-state passes over every repository (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
}

/// Runs the benchmark and writes its figures to `out`; progress goes to stderr.
pub fn run(options: &Options, out: &mut dyn Write) -> u8 {
    let options = Options {
        repos: options.repos.max(1),
        pipelines: options.pipelines.max(1),
        parallel: options.parallel.max(1),
        pushes: options.pushes.max(1),
        passes: options.passes.max(1),
    };
    let mut bench = match Bench::create() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gantry: reconcile benchmark failed: {e}");
            return exit::FAILURE;
        }
    };
    // `bench` is dropped (daemon killed, directory removed) however this ends.
    match bench.measure(&options) {
        Ok(figures) => {
            let text = figures.render(&options);
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                eprintln!("gantry: cannot write the figures: {e}");
                return exit::FAILURE;
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("gantry: reconcile benchmark failed: {e}");
            exit::FAILURE
        }
    }
}

/// The benchmark's scratch directory and `git daemon`; both go away on drop.
struct Bench {
    root: PathBuf,
    daemon: Option<Child>,
    port: u16,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(child) = &mut self.daemon {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Everything measured, for the report.
struct Figures {
    setup: Duration,
    root: PathBuf,
    cold: Phase,
    cold_baseline: Phase,
    rss_after_cold: u64,
    push_fetch: Vec<Duration>,
    push_reconcile: Vec<Duration>,
    push_baseline: Vec<Duration>,
    steady: Vec<Phase>,
    steady_baseline: Vec<Phase>,
    rss_end: u64,
    rss_peak: u64,
}

/// One pass over every repository: wall time, CPU time and the time of each repository.
struct Phase {
    wall: Duration,
    cpu: Duration,
    each: Vec<Duration>,
}

impl Bench {
    fn create() -> Result<Bench, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "gantry-bench-reconcile-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["served", "work", "baseline"] {
            std::fs::create_dir_all(root.join(dir))
                .map_err(|e| format!("cannot create {}: {e}", root.join(dir).display()))?;
        }
        Ok(Bench {
            root,
            daemon: None,
            port: 0,
        })
    }

    fn served(&self) -> PathBuf {
        self.root.join("served")
    }

    fn work(&self, repo: usize) -> PathBuf {
        self.root.join("work").join(repo_name(repo))
    }

    fn baseline(&self, repo: usize) -> PathBuf {
        self.root
            .join("baseline")
            .join(format!("{}.git", repo_name(repo)))
    }

    fn url(&self, repo: usize) -> String {
        format!("git://127.0.0.1:{}/{}.git", self.port, repo_name(repo))
    }

    fn source(&self, data: &Path, repo: usize) -> RepoSource {
        let name = repo_name(repo);
        RepoSource {
            url: self.url(repo),
            branch: BRANCH.to_string(),
            paths: crate::spec::model::DEFAULT_PIPELINE_GLOBS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            credentials: None,
            mirror_dir: data.join("mirrors").join(format!("{name}.git")),
            name,
        }
    }

    /// One repository: a bare repository to serve and a work clone that pushed the pipelines.
    fn create_repo(&self, repo: usize, pipelines: usize) -> Result<(), String> {
        let bare = format!("{}.git", repo_name(repo));
        let work = self.work(repo);
        git(&self.served(), &["init", "-q", "--bare", &bare])?;
        let dir = work.join(".gantry").join("pipelines");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        git(&work, &["init", "-q"])?;
        for file in 0..pipelines {
            let path = dir.join(format!("pipeline-{file}.yaml"));
            std::fs::write(&path, pipeline_text(repo, file, 0))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", "pipelines"])?;
        // Relative to the work clone: `work/<name>` and `served/<name>.git` share the root.
        git(
            &work,
            &["push", "-q", &format!("../../served/{bare}"), BRANCH],
        )
    }

    /// Starts `git daemon` on a free loopback port and waits until it accepts connections.
    fn start_daemon(&mut self) -> Result<(), String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?
            .port();
        let served = self.served();
        let mut base_path = std::ffi::OsString::from("--base-path=");
        base_path.push(&served);
        // `git daemon` would run `git-daemon` as a child of its own, which killing our child
        // would leave running; start the program itself. It stays in our process group, so a
        // Ctrl-C ends it too. The processes it forks per connection end with their request.
        let exec_path = git_output(&served, &["--exec-path"])?;
        let child = isolated(&Path::new(exec_path.trim()).join("git-daemon"), &served)
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .args(["--max-connections=0", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(base_path)
            .arg(&served)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start git daemon: {e}"))?;
        self.port = port;
        let child = self.daemon.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("git daemon exited before it listened: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "git daemon did not listen on port {port} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn measure(&mut self, options: &Options) -> Result<Figures, String> {
        let &Options {
            repos: n,
            pipelines,
            parallel,
            pushes,
            passes,
        } = options;
        let text = pipeline_text(0, 0, 0);
        if crate::spec::check(&text).pipeline.is_none() {
            return Err("the benchmark pipeline does not validate".into());
        }

        progress(format_args!(
            "creating {n} repositories × {pipelines} pipelines with git"
        ));
        let setup_workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
        let start = Instant::now();
        parallel_map(n, setup_workers, |i| self.create_repo(i, pipelines))?;
        let setup = start.elapsed();
        self.start_daemon()?;

        let data = self.root.join("data");
        let store = Store::open(&data).map_err(|e| e.to_string())?;
        let sources: Vec<RepoSource> = (0..n).map(|i| self.source(&data, i)).collect();
        let interrupt = AtomicBool::new(false);

        // Cold sync: the git CLI first, then gantry, with the same pool.
        progress(format_args!("cold: git clone --bare of {n} repositories"));
        let cold_baseline = phase(n, parallel, libc::RUSAGE_CHILDREN, |i| {
            let target = format!("{}.git", repo_name(i));
            git(
                &self.root.join("baseline"),
                &["clone", "-q", "--bare", &self.url(i), &target],
            )
        })?;
        progress(format_args!("cold: gantry sync of {n} repositories"));
        let cold = phase(n, parallel, libc::RUSAGE_SELF, |i| {
            let report = catalog::sync(&store, &sources[i], &interrupt)
                .map_err(|e| format!("sync of {}: {e}", sources[i].name))?;
            if report.new_versions.len() != pipelines {
                return Err(format!(
                    "cold sync of {} made {} new versions, expected {pipelines}",
                    sources[i].name,
                    report.new_versions.len()
                ));
            }
            Ok(())
        })?;
        let records = store.list_pipelines(None).map_err(|e| e.to_string())?;
        let good = records
            .iter()
            .filter(|r| r.valid && r.version == Some(1) && !r.retired && r.errors.is_empty())
            .count();
        if records.len() != n * pipelines || good != records.len() {
            return Err(format!(
                "after the cold sync the store holds {} pipelines ({good} valid at version 1), \
                 expected {}",
                records.len(),
                n * pipelines
            ));
        }
        let rss_after_cold = memory("VmRSS");

        // One push at a time: push with git, then time gantry's fetch and reconcile and the git
        // CLI's fetch of the same push (alternating which goes first).
        progress(format_args!("push: {pushes} single pushes"));
        let mut push_fetch = Vec::new();
        let mut push_reconcile = Vec::new();
        let mut push_baseline = Vec::new();
        for k in 0..pushes {
            let i = k * n / pushes;
            let repo = &sources[i];
            let before = current_version(&store, &repo.name)?;
            let work = self.work(i);
            let path = work.join(".gantry/pipelines/pipeline-0.yaml");
            std::fs::write(&path, pipeline_text(i, 0, k + 1))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            git(&work, &["commit", "-q", "-a", "-m", "change pipeline-0"])?;
            git(&work, &["push", "-q", &self.url(i), BRANCH])?;

            let baseline = || -> Result<Duration, String> {
                let start = Instant::now();
                git(
                    &self.baseline(i),
                    &["fetch", "-q", &self.url(i), FETCH_REFSPEC],
                )?;
                Ok(start.elapsed())
            };
            let gantry_first = k % 2 == 0;
            if !gantry_first {
                push_baseline.push(baseline()?);
            }
            let start = Instant::now();
            let mirror = Mirror::open_or_clone(&repo.mirror_dir, &repo.url, BRANCH, None)
                .map_err(|e| e.to_string())?;
            let fetched = mirror.fetch(&interrupt).map_err(|e| e.to_string())?;
            push_fetch.push(start.elapsed());
            let start = Instant::now();
            let head = mirror
                .head(BRANCH)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{} has no branch {BRANCH}", repo.name))?;
            let report = catalog::reconcile(&store, repo, &mirror, &head)
                .map_err(|e| format!("reconcile of {}: {e}", repo.name))?;
            push_reconcile.push(start.elapsed());
            if gantry_first {
                push_baseline.push(baseline()?);
            }
            let after = current_version(&store, &repo.name)?;
            if !fetched.changed || report.new_versions != ["pipeline-0"] || after != before + 1 {
                return Err(format!(
                    "push {k} to {}: fetch changed: {}, new versions {:?}, version {before} -> \
                     {after}",
                    repo.name, fetched.changed, report.new_versions
                ));
            }
        }

        // Steady state: what the poll timer does, with nothing new.
        let mut steady = Vec::new();
        let mut steady_baseline = Vec::new();
        for pass in 1..=passes {
            progress(format_args!(
                "steady: pass {pass} of {passes}, git fetch then gantry sync"
            ));
            steady_baseline.push(phase(n, parallel, libc::RUSAGE_CHILDREN, |i| {
                git(
                    &self.baseline(i),
                    &["fetch", "-q", &self.url(i), FETCH_REFSPEC],
                )
            })?);
            steady.push(phase(n, parallel, libc::RUSAGE_SELF, |i| {
                let report = catalog::sync(&store, &sources[i], &interrupt)
                    .map_err(|e| format!("sync of {}: {e}", sources[i].name))?;
                if !report.unchanged {
                    return Err(format!(
                        "steady sync of {} changed something: {report:?}",
                        sources[i].name
                    ));
                }
                Ok(())
            })?);
        }

        Ok(Figures {
            setup,
            root: self.root.clone(),
            cold,
            cold_baseline,
            rss_after_cold,
            push_fetch,
            push_reconcile,
            push_baseline,
            steady,
            steady_baseline,
            rss_end: memory("VmRSS"),
            rss_peak: memory("VmHWM"),
        })
    }
}

impl Figures {
    fn render(&self, options: &Options) -> String {
        let n = options.repos;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "gantry bench reconcile: {n} repositories × {} pipelines served by git daemon on \
             loopback, {} at once",
            options.pipelines, options.parallel
        );
        let _ = writeln!(
            s,
            "setup (not measured): repositories created with the git CLI in {:.1} s, under {}",
            self.setup.as_secs_f64(),
            self.root.display()
        );
        let _ = writeln!(
            s,
            "baseline: the git CLI against the same daemon with the same parallelism; CPU is \
             gantry's process (getrusage self) against the git processes (getrusage children)"
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<38} {:>22} {:>24} {:>7}",
            "", "gantry", "git CLI", "ratio"
        );
        let row =
            |s: &mut String, label: &str, ours: String, theirs: String, ratio: Option<f64>| {
                let ratio = ratio.map_or_else(String::new, |r| format!("{r:.2}"));
                let _ = writeln!(s, "{label:<38} {ours:>22} {theirs:>24} {ratio:>7}");
            };
        let cold_label = "cold sync (clone + reconcile), wall";
        row(
            &mut s,
            cold_label,
            secs(self.cold.wall),
            format!("{} clone --bare", secs(self.cold_baseline.wall)),
            Some(ratio(self.cold.wall, self.cold_baseline.wall)),
        );
        row(
            &mut s,
            "  per repository p50 / p99",
            p50_p99(&self.cold.each),
            p50_p99(&self.cold_baseline.each),
            Some(ratio(
                percentile(&self.cold.each, 50),
                percentile(&self.cold_baseline.each, 50),
            )),
        );
        row(
            &mut s,
            "  CPU user+sys",
            secs(self.cold.cpu),
            secs(self.cold_baseline.cpu),
            Some(ratio(self.cold.cpu, self.cold_baseline.cpu)),
        );
        let k = self.push_fetch.len();
        row(
            &mut s,
            &format!("one push ({k}×): fetch p50 / p99"),
            p50_p99(&self.push_fetch),
            format!("{} fetch", p50_p99(&self.push_baseline)),
            Some(ratio(
                percentile(&self.push_fetch, 50),
                percentile(&self.push_baseline, 50),
            )),
        );
        row(
            &mut s,
            "  reconcile after the fetch p50 / p99",
            p50_p99(&self.push_reconcile),
            String::new(),
            None,
        );
        let total: Vec<Duration> = self
            .push_fetch
            .iter()
            .zip(&self.push_reconcile)
            .map(|(a, b)| *a + *b)
            .collect();
        row(
            &mut s,
            "  fetch + reconcile p50 / p99",
            p50_p99(&total),
            p50_p99(&self.push_baseline),
            Some(ratio(
                percentile(&total, 50),
                percentile(&self.push_baseline, 50),
            )),
        );
        let wall = median(self.steady.iter().map(|p| p.wall));
        let base_wall = median(self.steady_baseline.iter().map(|p| p.wall));
        let cpu = median(self.steady.iter().map(|p| p.cpu));
        let base_cpu = median(self.steady_baseline.iter().map(|p| p.cpu));
        let each: Vec<Duration> = self.steady.iter().flat_map(|p| p.each.clone()).collect();
        let base_each: Vec<Duration> = self
            .steady_baseline
            .iter()
            .flat_map(|p| p.each.clone())
            .collect();
        row(
            &mut s,
            &format!("steady pass (median of {}), wall", self.steady.len()),
            secs(wall),
            format!("{} fetch", secs(base_wall)),
            Some(ratio(wall, base_wall)),
        );
        row(
            &mut s,
            "  per repository p50 / p99",
            p50_p99(&each),
            p50_p99(&base_each),
            Some(ratio(percentile(&each, 50), percentile(&base_each, 50))),
        );
        row(
            &mut s,
            "  CPU user+sys per pass",
            secs(cpu),
            secs(base_cpu),
            Some(ratio(cpu, base_cpu)),
        );
        let poll = crate::config::DEFAULT_POLL_INTERVAL;
        let _ = writeln!(
            s,
            "  = {:.2}% of one core when every repository is polled every {} s; {:.2} ms CPU per \
             repository and poll",
            100.0 * cpu.as_secs_f64() / poll.as_secs_f64(),
            poll.as_secs(),
            cpu.as_secs_f64() * 1e3 / n as f64
        );
        let _ = writeln!(
            s,
            "memory (gantry process): VmRSS {} after the cold sync, {} at the end; peak VmHWM {}",
            mb(self.rss_after_cold),
            mb(self.rss_end),
            mb(self.rss_peak)
        );
        let _ = writeln!(s);

        let goal = |s: &mut String, label: &str, target: &str, measured: String, pass: bool| {
            let verdict = if pass { "PASS" } else { "MISS" };
            let _ = writeln!(s, "{label:<46} {target:>9} {measured:>14}  {verdict}");
        };
        let _ = writeln!(s, "{:<46} {:>9} {:>14}", "goal", "target", "measured");
        goal(
            &mut s,
            &format!("cold sync of {n} × {}", options.pipelines),
            "< 60 s",
            secs(self.cold.wall),
            self.cold.wall < GOAL_COLD,
        );
        let push_p99 = percentile(&self.push_reconcile, 99);
        goal(
            &mut s,
            "one push: reconcile after the fetch (p99)",
            "< 50 ms",
            ms(push_p99),
            push_p99 < GOAL_PUSH,
        );
        goal(
            &mut s,
            "RSS in steady state (VmRSS at the end)",
            "< 200 MB",
            mb(self.rss_end),
            self.rss_end < GOAL_RSS_BYTES,
        );
        goal(
            &mut s,
            "peak RSS of the whole run (VmHWM)",
            "< 200 MB",
            mb(self.rss_peak),
            self.rss_peak < GOAL_RSS_BYTES,
        );
        s
    }
}

/// Runs `each(i)` for every repository on `workers` threads, timing each call, the whole, and
/// the CPU time of `who` (`RUSAGE_SELF` or `RUSAGE_CHILDREN`) over the whole.
fn phase(
    n: usize,
    workers: usize,
    who: libc::c_int,
    each: impl Fn(usize) -> Result<(), String> + Sync,
) -> Result<Phase, String> {
    let cpu = cpu_time(who);
    let start = Instant::now();
    let each = parallel_map(n, workers, |i| {
        let start = Instant::now();
        each(i)?;
        Ok(start.elapsed())
    })?;
    Ok(Phase {
        wall: start.elapsed(),
        cpu: cpu_time(who).saturating_sub(cpu),
        each,
    })
}

/// `f(0..n)` on `workers` threads, results in index order. The first error stops the workers
/// from taking more items and is returned.
fn parallel_map<T: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.clamp(1, n.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        match f(i) {
                            Ok(value) => done.push((i, value)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a worker thread panicked".into()))
            })
            .collect::<Vec<_>>()
    });
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for outcome in outcomes {
        for (i, value) in outcome? {
            slots[i] = Some(value);
        }
    }
    slots
        .into_iter()
        .map(|v| v.ok_or_else(|| "a work item was not done".to_string()))
        .collect()
}

fn repo_name(repo: usize) -> String {
    format!("r{repo:04}")
}

/// The sample pipeline with its own name and a line that makes its text unique to the
/// repository, the file and the push.
fn pipeline_text(repo: usize, file: usize, push: usize) -> String {
    let mut text = super::sample_pipeline().replacen(
        "name: provision-postgres",
        &format!("name: pipeline-{file}"),
        1,
    );
    let _ = writeln!(text, "# {} file {file}, push {push}", repo_name(repo));
    text
}

/// The current version of `pipeline-0` of a repository.
fn current_version(store: &Store, source: &str) -> Result<u32, String> {
    store
        .get_pipeline(source, "pipeline-0")
        .map_err(|e| e.to_string())?
        .and_then(|p| p.version)
        .ok_or_else(|| format!("{source}/pipeline-0 has no version"))
}

/// `git` in `dir`, kept away from the machine's and the user's configuration, with a fixed
/// identity, new repositories on `main` and no commit signing.
fn git_command(dir: &Path) -> Command {
    let mut cmd = isolated(Path::new("git"), dir);
    cmd.args([
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
    ]);
    cmd
}

/// A git program in `dir`, kept away from the machine's and the user's configuration, with a
/// fixed identity.
fn isolated(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for name in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
    ] {
        cmd.env_remove(name);
    }
    cmd.current_dir(dir)
        .envs([
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_AUTHOR_NAME", "Gantry Bench"),
            ("GIT_AUTHOR_EMAIL", "bench@gantry.invalid"),
            ("GIT_COMMITTER_NAME", "Gantry Bench"),
            ("GIT_COMMITTER_EMAIL", "bench@gantry.invalid"),
        ])
        .stdin(Stdio::null());
    cmd
}

/// Runs git in `dir` and fails with its stderr if it fails.
fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    git_output(dir, args).map(drop)
}

/// Runs git in `dir` and returns its stdout, or fails with its stderr.
pub(super) fn git_output(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = git_command(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} in {} failed ({}): {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("gantry bench reconcile: {what}");
}

/// User + system CPU time of this process (`RUSAGE_SELF`) or of its waited-for children
/// (`RUSAGE_CHILDREN`).
fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain old data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through the valid pointer it is given.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A `/proc/self/status` memory figure (`VmRSS`, `VmHWM`) in bytes; 0 when unknown.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The nearest-rank percentile `p` of `values`.
pub(super) fn percentile(values: &[Duration], p: usize) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: impl Iterator<Item = Duration>) -> Duration {
    percentile(&values.collect::<Vec<_>>(), 50)
}

fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn p50_p99(values: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.1} / {:.1} ms",
        ms(percentile(values, 50)),
        ms(percentile(values, 99))
    )
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 99), Duration::from_millis(99));
        assert_eq!(percentile(&values[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    /// A smoke test: a tiny run completes, checks what it synced and prints every figure. Nothing
    /// about speed is asserted.
    #[test]
    fn a_small_reconcile_benchmark_runs_and_prints_its_figures() {
        let cli = Cli::try_parse_from([
            "gantry",
            "bench",
            "reconcile",
            "--repos",
            "3",
            "--pipelines",
            "2",
            "--pushes",
            "3",
            "--passes",
            "1",
        ])
        .expect("the command line parses");
        let Command::Bench(super::super::Args {
            which: super::super::Which::Reconcile(options),
        }) = cli.command
        else {
            panic!("not the reconcile benchmark: {:?}", cli.command);
        };
        let mut out = Vec::new();
        let code = run(&options, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(code, exit::OK, "{text}");
        for figure in [
            "3 repositories × 2 pipelines",
            "cold sync (clone + reconcile), wall",
            "reconcile after the fetch p50 / p99",
            "steady pass (median of 1), wall",
            "CPU user+sys per pass",
            "VmRSS",
            "ratio",
            "one push: reconcile after the fetch (p99)",
        ] {
            assert!(text.contains(figure), "no `{figure}` in:\n{text}");
        }
        assert_eq!(
            text.matches("PASS").count() + text.matches("MISS").count(),
            4,
            "{text}"
        );
    }
}
