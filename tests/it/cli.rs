//! The `gantry` binary, run as a user would: exit codes, output formats, directories, help.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("the gantry binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

const VALID: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: ok}\nsteps:\n  - {name: a, script: 'true'}\n";
const INVALID: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: bad}\nstpes:\n  - {name: a, script: 'true'}\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write fixture");
    path
}

#[test]
fn the_example_repository_validates_with_exit_0() {
    let dir = root().join("examples/repo-layout");
    let out = gantry(&["validate", dir.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("ok: "), "{}", stdout(&out));
    assert!(stderr(&out).contains("0 errors"), "{}", stderr(&out));
}

#[test]
fn an_invalid_file_exits_1_with_a_located_error_and_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = write(tmp.path(), "bad.yaml", INVALID);
    let out = gantry(&["validate", bad.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let want = format!(
        "{}:4:1: error: unknown field `stpes` in the pipeline\n  |\n4 | stpes:\n  | ^^^^^ did you mean `steps`?\n",
        bad.display()
    );
    assert!(text.contains(&want), "got:\n{text}\nwant:\n{want}");
    // Not a terminal: no colour codes.
    assert!(!text.contains('\x1b'));
}

#[test]
fn colour_can_be_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = write(tmp.path(), "bad.yaml", INVALID);
    let out = gantry(&[
        "validate",
        "--color",
        "always",
        bad.to_str().expect("utf-8 path"),
    ]);
    assert!(
        stdout(&out).contains("\x1b[1;31merror\x1b[0m"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn json_output_has_the_documented_shape() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = write(tmp.path(), "good.yaml", VALID);
    let bad = write(tmp.path(), "bad.yml", INVALID);
    let out = gantry(&[
        "validate",
        "--format",
        "json",
        good.to_str().expect("utf-8 path"),
        bad.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let files = v["files"].as_array().expect("files array");
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["path"], good.to_str().expect("utf-8 path"));
    assert_eq!(files[0]["errors"].as_array().map(Vec::len), Some(0));
    let err = &files[1]["errors"][0];
    assert_eq!(err["line"], 4);
    assert_eq!(err["column"], 1);
    assert_eq!(err["severity"], "error");
    assert_eq!(err["message"], "unknown field `stpes` in the pipeline");
    // Every key README lists is there: `pipeline` is null for a file that has none.
    assert_eq!(files[0]["pipeline"], "ok");
    let invalid = files[1].as_object().expect("an object");
    assert_eq!(invalid.get("pipeline"), Some(&serde_json::Value::Null));
}

#[test]
fn the_current_directory_shows_paths_as_readme_does() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), ".gantry/pipelines/bad.yaml", INVALID);
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["validate", "."])
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("gantry runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(".gantry/pipelines/bad.yaml:4:1: error:"),
        "{}",
        stdout(&out)
    );
}

/// `gantry runs | head -1`: a reader that goes away ends the command quietly, as it ends other
/// Unix tools (by SIGPIPE), never with a panic and its backtrace.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = write(tmp.path(), "bad.yaml", INVALID);
    let bad = bad.to_str().expect("utf-8 path");
    // Far more than a pipe holds, so the writer meets the closed pipe.
    let mut args = vec!["validate"];
    args.extend(std::iter::repeat_n(bad, 3000));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(&args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gantry runs");
    {
        use std::io::Read;
        let mut first = [0u8; 16];
        let mut out = child.stdout.take().expect("stdout");
        out.read_exact(&mut first).expect("some output");
    }
    let out = child.wait_with_output().expect("gantry ends");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_directory_means_its_gantry_pipelines_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), ".gantry/pipelines/a.yaml", VALID);
    write(
        tmp.path(),
        ".gantry/pipelines/b.yml",
        &VALID.replace("name: ok", "name: other"),
    );
    write(tmp.path(), ".gantry/pipelines/notes.txt", "not a pipeline");
    let out = gantry(&[
        "validate",
        "--format",
        "json",
        tmp.path().to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(2));
}

#[test]
fn pipeline_names_are_unique_within_a_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), ".gantry/pipelines/a.yaml", VALID);
    write(tmp.path(), ".gantry/pipelines/b.yaml", VALID);
    let out = gantry(&["validate", tmp.path().to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("b.yaml:3:18: error: pipeline name `ok` is already used by"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_file_with_other_errors_still_takes_part_in_the_name_check_in_position_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), ".gantry/pipelines/a.yaml", VALID);
    // Same name as a.yaml, and an unknown field on the line after the name.
    write(
        tmp.path(),
        ".gantry/pipelines/b.yaml",
        &INVALID.replace("name: bad", "name: ok"),
    );
    let out = gantry(&["validate", tmp.path().to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let duplicate = text
        .find("b.yaml:3:18: error: pipeline name `ok` is already used by")
        .unwrap_or_else(|| panic!("no duplicate-name error:\n{text}"));
    let unknown = text
        .find("b.yaml:4:1: error: unknown field `stpes`")
        .unwrap_or_else(|| panic!("no unknown-field error:\n{text}"));
    assert!(duplicate < unknown, "not in position order:\n{text}");
}

#[test]
fn unreadable_paths_exit_2() {
    let out = gantry(&["validate", "/nonexistent/gantry/pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/gantry/pipeline.yaml"),
        "{}",
        stderr(&out)
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = gantry(&["validate", tmp.path().to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(".gantry/pipelines"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = gantry(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = gantry(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_and_help_with_examples() {
    let out = gantry(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("gantry {}", env!("CARGO_PKG_VERSION"))
    );
    let out = gantry(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Examples:"));
    assert!(stdout(&out).contains("gantry validate examples/repo-layout"));
    let out = gantry(&["validate", "--help"]);
    assert!(stdout(&out).contains("Exit status"), "{}", stdout(&out));
}

#[test]
fn the_spec_benchmark_runs_and_prints_a_ratio() {
    let out = gantry(&["bench", "spec", "--seconds", "0.1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("specs/second/core"), "{text}");
    assert!(text.contains("ratio"), "{text}");
}

#[test]
fn the_logs_benchmark_masks_every_secret_and_prints_its_figures() {
    let out = gantry(&["bench", "logs", "--mb", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "baseline  cat FILE",
        "masking   LineSplitter",
        "ingest    cat in a step",
        "tail      last 100 lines",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(!text.contains("(0 lines masked)"), "{text}");
}
