//! Fuzz-style tests: mutated and random YAML never panics the parser, the validator, the renderer or
//! the planner, and every diagnostic points inside the file.
//!
//! Mutations come from a small seeded generator so failures reproduce; set GANTRY_FUZZ_ITERS to run
//! more (the default keeps the suite fast in debug builds) and GANTRY_FUZZ_SEED to explore.

use std::path::Path;

use gantry::spec;

/// xorshift64*: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{{params.",
    "{{steps.a.outputs.",
    "{{secrets.x}}",
    "{{inputs.y}}",
    ": ",
    "- ",
    "- - ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "<<: *a",
    "\"",
    "'",
    "|\n",
    ">-\n",
    "\t",
    "\n  ",
    "\n",
    "#",
    "!!str ",
    "!!binary ",
    "~",
    "null",
    "yes",
    "on",
    "0x1F",
    "1e999",
    "-.inf",
    ".nan",
    "é",
    "\u{1F600}",
    "\u{feff}",
    "\r\n",
    ": :",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "dependsOn: [",
    "when: \"",
    "cron: \"",
    "template: gantry/",
    "outputs: [",
    "retry: {limit: ",
    "== ",
    "&& ",
    "(",
    ")",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut text: Vec<char> = seed.chars().collect();
    for _ in 0..=rng.below(4) {
        let len = text.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below(40).min(len - at);
                text.drain(at..at + n);
            }
            1 => {
                let at = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                for (k, c) in token.chars().enumerate() {
                    text.insert(at + k, c);
                }
            }
            2 if len > 0 => {
                // Duplicate a line.
                let s: String = text.iter().collect();
                let lines: Vec<&str> = s.lines().collect();
                let i = rng.below(lines.len().max(1));
                let mut out: Vec<&str> = lines.clone();
                if let Some(line) = lines.get(i) {
                    out.insert(i, line);
                }
                text = out.join("\n").chars().collect();
            }
            3 if len > 0 => {
                // Swap two lines.
                let s: String = text.iter().collect();
                let mut lines: Vec<&str> = s.lines().collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                text = lines.join("\n").chars().collect();
            }
            4 if len > 0 => {
                // Change one character to a random printable one.
                let at = rng.below(len);
                text[at] = char::from(b' ' + (rng.below(95) as u8));
            }
            5 if len > 0 => {
                let at = rng.below(len);
                text.truncate(at);
            }
            _ => {
                // Re-indent a line.
                let s: String = text.iter().collect();
                let mut lines: Vec<String> = s.lines().map(String::from).collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    let pad = " ".repeat(rng.below(6));
                    lines[i] = format!("{pad}{}", lines[i].trim_start());
                }
                text = lines.join("\n").chars().collect();
            }
        }
    }
    text.into_iter().collect()
}

fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![gantry::cli::bench::sample_pipeline()];
    for dir in [
        "tests/fixtures/spec-examples",
        "examples/repo-layout/.gantry/pipelines",
        "tests/fixtures/valid",
        "tests/fixtures/invalid",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml")
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                out.push(text);
            }
        }
    }
    out
}

/// Everything the library offers for a text must run to completion.
fn exercise(text: &str) {
    let checked = spec::check(text);
    let lines = text.lines().count() as u32 + 1;
    for d in checked.diagnostics.iter() {
        assert!(
            d.pos.line >= 1 && d.pos.line <= lines.max(1),
            "diagnostic outside the file: {d:?}\n---\n{text}"
        );
        assert!(d.pos.col >= 1, "column 0: {d:?}");
        let rendered = spec::diagnostic::render("f.yaml", text, d, Default::default());
        assert!(rendered.starts_with("f.yaml:"), "{rendered}");
    }
    match &checked.pipeline {
        Some(p) => {
            assert!(!checked.diagnostics.has_errors());
            let plan = gantry::plan::plan(p);
            assert_eq!(
                plan.topological_order().len(),
                plan.steps.len(),
                "a valid pipeline has no cycle"
            );
        }
        None => assert!(
            checked.diagnostics.has_errors(),
            "no pipeline and no error for:\n{text}"
        ),
    }
}

fn iterations() -> usize {
    std::env::var("GANTRY_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn seed() -> u64 {
    std::env::var("GANTRY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

#[test]
fn mutated_pipelines_never_panic() {
    let seeds = seeds();
    assert!(seeds.len() >= 5, "expected fixture files to mutate");
    let mut rng = Rng(seed());
    for _ in 0..iterations() {
        let base = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, base);
        exercise(&text);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(seed() ^ 0xDEAD_BEEF);
    let alphabet: Vec<char> = "ab: -[]{}\"'|>&*!#%@`\n\t {{}}.,?~0123456789é"
        .chars()
        .collect();
    for _ in 0..iterations() / 2 {
        let len = rng.below(300);
        let text: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        exercise(&text);
    }
}

#[test]
fn hostile_documents_are_refused_within_the_budget() {
    // A billion-laughs alias bomb, deep nesting and a huge file each end in an error, not a hang.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let deep = format!("steps: {}1{}", "[".repeat(500), "]".repeat(500));
    let huge = format!(
        "apiVersion: gantry.dev/v1\ndescription: \"{}\"\n",
        "x".repeat(2 * 1024 * 1024)
    );
    for text in [bomb, deep, huge] {
        let checked = spec::check(&text);
        assert!(checked.pipeline.is_none());
        assert!(checked.diagnostics.has_errors());
    }
}

/// Choreo-shaped files: mutated, they never panic the Choreo reading or `convert`, every
/// diagnostic stays inside the file, and whatever `convert` prints validates.
#[test]
fn mutated_choreo_pipelines_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choreo");
    let mut seeds: Vec<String> = std::fs::read_dir(&root)
        .expect("choreo fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "expected Choreo fixtures to mutate");
    let mut rng = Rng(seed() ^ 0xC0FF_EE00);
    for _ in 0..iterations() / 2 {
        let base = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, base);
        exercise(&text);
        let lines = text.lines().count() as u32 + 1;
        let converted = spec::convert(&text, Some("fuzzed.yaml"));
        for d in converted.diagnostics.iter() {
            assert!(
                d.pos.line >= 1 && d.pos.line <= lines.max(1) && d.pos.col >= 1,
                "diagnostic outside the file: {d:?}\n---\n{text}"
            );
        }
        if let Some(out) = converted.text {
            let again = spec::check(&out);
            assert!(
                again.pipeline.is_some(),
                "converted text does not validate:\n{out}\n{:?}\n--- from\n{text}",
                again.diagnostics
            );
        }
    }
}

/// A pipeline of `n` steps under the usual header: `step(i)` is each step's flow mapping.
fn many_steps(n: usize, step: impl Fn(usize) -> String) -> String {
    let mut text =
        String::from("apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: big}\nsteps:\n");
    for i in 0..n {
        text.push_str(&format!("  - {}\n", step(i)));
    }
    text
}

/// Forks the command of its arguments, waits for it and prints its exit code and peak RSS (KiB).
const FORK_AND_MEASURE: &str = "import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
";

/// `gantry validate` of `text` in a process of its own: its exit code and peak RSS in KiB.
///
/// The process is forked by a small Python, not started from this test process: a child that
/// std starts (with `vfork`) is charged the peak RSS of the process it was started from (the
/// kernel keeps the old address space's high-water mark at `exec`), and this one's is that of
/// every test running beside it (a dependsOn chain "took 341 MiB" that way).
fn validate_in_child(dir: &Path, text: &str) -> (i32, i64) {
    let file = dir.join("big.yaml");
    std::fs::write(&file, text).expect("write the file");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(FORK_AND_MEASURE)
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run python3 (./scripts/test installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the measuring python: {said} {out:?}");
    let mut words = said.split_whitespace().map(|w| w.parse::<i64>());
    match (words.next(), words.next()) {
        (Some(Ok(code)), Some(Ok(peak))) => (code as i32, peak),
        _ => panic!("the measuring python said {said:?}"),
    }
}

#[test]
fn long_pipelines_within_the_limits_check_in_memory_that_grows_with_the_file() {
    // Files under 1 MiB and the value limit that held memory in the square of their steps: a set
    // of earlier steps per step (12,000 steps in a dependsOn chain took 3 GB and 10 s, a server's
    // PUT as much) and, for thousands of unknown names, a suggestion searched among thousands.
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = many_steps(12_000, |i| match i {
        0 => "{name: s0, script: x}".to_string(),
        i => format!("{{name: s{i}, dependsOn: [s{}], script: x}}", i - 1),
    });
    let sequence = many_steps(16_000, |i| format!("{{name: s{i}, script: x}}"));
    let unknown = many_steps(9_000, |i| {
        format!("{{name: step-number-{i:06}-abcdefghij, dependsOn: [zz{i}], script: x}}")
    });
    // A condition 200,000 parentheses deep overflowed the stack (the process ended); 80,000
    // references on one line (not ASCII) took a minute to locate and quote.
    let head = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: w}\nparameters:\n  - {name: p, default: a}\nsteps:\n  - name: a\n";
    let deep = format!(
        "{head}    when: \"{}true{}\"\n    script: x\n",
        "(".repeat(200_000),
        ")".repeat(200_000)
    );
    let line = format!("{head}    script: \"é{}\"\n", "{{params.p}}".repeat(80_000));
    for (what, text, code) in [
        ("a dependsOn chain", chain, 0),
        ("a sequence", sequence, 0),
        ("steps naming unknown ones", unknown, 1),
        ("a deep condition", deep, 1),
        ("a long line of references", line, 0),
    ] {
        assert!(
            text.len() < 1024 * 1024,
            "{what}: within the file size limit"
        );
        let (exit, peak_kib) = validate_in_child(dir.path(), &text);
        assert_eq!(exit, code, "{what}");
        assert!(
            peak_kib < 200 * 1024,
            "{what}: checking {} KB took {} MiB",
            text.len() / 1000,
            peak_kib / 1024
        );
    }
}

#[test]
fn did_you_mean_help_stops_at_its_budget_and_every_error_is_still_reported() {
    // Each unknown name is compared with every step's: past the budget the rest of the errors
    // come without help, so that thousands of them cost no more than a few.
    let text = many_steps(3_000, |i| {
        format!("{{name: step-{i:05}, dependsOn: [stpe-{i:05}], script: x}}")
    });
    let checked = spec::check(&text);
    let errors: Vec<_> = checked.diagnostics.errors().collect();
    assert_eq!(errors.len(), 3_000);
    assert_eq!(
        errors[0].help.as_deref(),
        Some("did you mean `step-00000`?"),
        "{:?}",
        errors[0]
    );
    let helped = errors.iter().filter(|d| d.help.is_some()).count();
    assert!((1..100).contains(&helped), "{helped} errors with help");
    assert!(
        errors.iter().all(|d| d
            .message
            .starts_with("`dependsOn` names an unknown step `stpe-")),
        "{:?}",
        errors.iter().find(|d| !d.message.contains("unknown step"))
    );
}

/// A Choreo file of `calls` steps that each call one containerSet template of `containers`.
fn container_sets(containers: usize, calls: usize) -> String {
    let mut text = String::from("templates:\n  - name: t\n    containerSet:\n      containers:\n");
    for i in 0..containers {
        text.push_str(&format!(
            "        - {{name: c{i}, image: a, command: [sh], args: [x]}}\n"
        ));
    }
    text.push_str("steps:\n");
    for i in 0..calls {
        text.push_str(&format!("  - {{name: s{i}, template: t}}\n"));
    }
    text
}

#[test]
fn a_small_choreo_file_cannot_expand_to_a_huge_pipeline() {
    // 17 KB: 400 steps that each call a containerSet of 100 containers stood for 40,000 steps
    // and 4 million dependsOn entries (18 s and 590 MB to check); now it is refused at the step
    // where either passes its limit.
    let checked = spec::check_file(&container_sets(100, 400), Some("sets.yaml"));
    assert!(checked.pipeline.is_none());
    let errors: Vec<String> = checked
        .diagnostics
        .errors()
        .map(|d| format!("{}:{} {}", d.pos.line, d.pos.col, d.message))
        .collect();
    assert_eq!(
        errors,
        [
            "117:5 the pipeline expands to more than 100000 `dependsOn` entries",
            "307:5 the pipeline expands to more than 20000 steps",
        ],
        "{errors:?}"
    );
    // Within the limits, the same shape checks: 100 calls of a set of 30 containers.
    let checked = spec::check_file(&container_sets(30, 100), Some("sets.yaml"));
    assert!(
        checked.pipeline.is_some(),
        "{:?}",
        checked.diagnostics.errors().next()
    );
}
