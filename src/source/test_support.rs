//! Helpers shared by the tests of this module: real git, configured so it works on a fresh machine.

use std::path::Path;
use std::process::Command;

/// Runs git in `dir` with a fixed identity and no system or global configuration.
pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_AUTHOR_NAME", "Gantry Test")
        .env("GIT_AUTHOR_EMAIL", "test@gantry.invalid")
        .env("GIT_COMMITTER_NAME", "Gantry Test")
        .env("GIT_COMMITTER_EMAIL", "test@gantry.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
