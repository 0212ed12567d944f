//! Forge events to pipelines: which pipelines a push or a pull request starts, read at the
//! event's commit, and the `/gantry` comment commands.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::forge::PrAction;
use crate::source::SourceError;
use crate::source::mirror::Mirror;
use crate::spec::model::Pipeline;
use crate::store::PipelineError;

/// A pipeline file at a commit, checked.
#[derive(Debug, Clone)]
pub struct AtCommit {
    pub path: String,
    /// `metadata.name`, or the file's stem when the name cannot be read.
    pub name: String,
    pub text: String,
    /// `None` when the file has errors.
    pub pipeline: Option<Pipeline>,
    pub errors: Vec<PipelineError>,
}

/// Every pipeline file matching `globs` at `commit`, checked. The definitions a pull request runs
/// are these, read at its head: a PR can change a pipeline and see it run.
pub fn pipelines_at(
    mirror: &Mirror,
    commit: &str,
    globs: &[String],
) -> Result<Vec<AtCommit>, SourceError> {
    let mut out = Vec::new();
    for path in mirror.list_files(commit, globs)? {
        let bytes = mirror.read_file(commit, &path)?.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let checked = crate::spec::check_file(&text, Some(&path));
        // A Choreo-shaped file runs in Gantry's form: it then reads the same without its path.
        let text = crate::spec::self_contained(&text, Some(&path), &checked).into_owned();
        let name = crate::catalog::name_of(&path, &checked);
        let errors = crate::catalog::errors_of(&path, &checked);
        out.push(AtCommit {
            path,
            name,
            text,
            pipeline: checked.pipeline,
            errors,
        });
    }
    Ok(out)
}

fn globs(patterns: &[String], literal_separator: bool) -> Option<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(
            GlobBuilder::new(p)
                .literal_separator(literal_separator)
                .build()
                .ok()?,
        );
    }
    builder.build().ok()
}

/// Whether any of `patterns` matches `value` (no patterns: `default`).
fn any_match(patterns: &[String], value: &str, literal_separator: bool, default: bool) -> bool {
    if patterns.is_empty() {
        return default;
    }
    globs(patterns, literal_separator).is_some_and(|set| set.is_match(value))
}

/// Whether any changed path matches the `paths` filter (none: any change counts).
fn paths_match(patterns: &[String], changed: &[String]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    match globs(patterns, true) {
        Some(set) => changed.iter().any(|p| set.is_match(p)),
        None => false,
    }
}

/// Whether a push of `changed` paths to `branch` starts the pipeline (`on.push`; its `branches`
/// default to the watched branch).
pub fn push_matches(p: &Pipeline, branch: &str, watched: &str, changed: &[String]) -> bool {
    let Some(push) = &p.on.push else {
        return false;
    };
    let branch_ok = if push.branches.is_empty() {
        branch == watched
    } else {
        any_match(&push.branches, branch, false, false)
    };
    branch_ok && paths_match(&push.paths, changed)
}

/// Whether a pull request event starts the pipeline (`on.pullRequest`: types, target branches,
/// changed paths).
pub fn pr_matches(p: &Pipeline, action: PrAction, base: &str, changed: &[String]) -> bool {
    let Some(pr) = &p.on.pull_request else {
        return false;
    };
    let type_ok = crate::spec::model::PullRequestType::ALL
        .iter()
        .any(|(name, t)| *name == action.as_str() && pr.types.contains(t));
    type_ok && any_match(&pr.branches, base, false, true) && paths_match(&pr.paths, changed)
}

/// A `/gantry` command found in a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Run {
        pipeline: String,
        params: Vec<(String, String)>,
    },
}

/// The command in a comment: `None` when the comment has no line starting with `/gantry`;
/// `Some(Err)` with a reply text when the command is malformed.
pub fn parse_command(body: &str) -> Option<Result<Command, String>> {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/gantry"))?;
    let mut words = line.split_whitespace();
    if words.next() != Some("/gantry") {
        return None;
    }
    Some(match words.next() {
        None | Some("help") => Ok(Command::Help),
        Some("run") => {
            let Some(pipeline) = words.next() else {
                return Some(Err(
                    "`/gantry run` needs a pipeline name: `/gantry run <pipeline> [key=value ...]`"
                        .to_string(),
                ));
            };
            let mut params = Vec::new();
            for word in words {
                match word.split_once('=') {
                    Some((k, v)) if !k.is_empty() => params.push((k.to_string(), v.to_string())),
                    _ => {
                        return Some(Err(format!(
                            "`{word}` is not a parameter; write parameters as key=value"
                        )));
                    }
                }
            }
            Ok(Command::Run {
                pipeline: pipeline.to_string(),
                params,
            })
        }
        Some(other) => Err(format!(
            "unknown command `/gantry {other}`; the commands are `/gantry run <pipeline> \
             [key=value ...]` and `/gantry help`"
        )),
    })
}

/// The reply to `/gantry help`, listing the pipelines that take comment commands.
pub fn help_text(commentable: &[(String, Vec<String>)]) -> String {
    let mut out = String::from(
        "**Gantry commands**\n\n- `/gantry run <pipeline> [key=value ...]`: run a pipeline on this \
         pull request's head\n- `/gantry help`: this message\n\nOnly users with write access to \
         the repository can run pipelines.\n",
    );
    if commentable.is_empty() {
        out.push_str("\nNo pipeline at this head accepts comment commands (`on.comment: true`).\n");
    } else {
        out.push_str("\nPipelines that accept `/gantry run`:\n");
        for (name, params) in commentable {
            if params.is_empty() {
                out.push_str(&format!("- `{name}`\n"));
            } else {
                out.push_str(&format!("- `{name}` (parameters: {})\n", params.join(", ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(on: &str) -> Pipeline {
        let text = format!(
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: p\non:\n{on}\nsteps:\n  - name: s\n    script: 'true'\n"
        );
        let checked = crate::spec::check(&text);
        checked
            .pipeline
            .unwrap_or_else(|| panic!("{text}\n{:?}", checked.diagnostics))
    }

    #[test]
    fn push_filters_on_branches_and_paths() {
        let p = pipeline("  push:\n    paths: [\"infra/**\"]");
        let changed = vec!["infra/db/x.sql".to_string()];
        assert!(push_matches(&p, "main", "main", &changed));
        assert!(
            !push_matches(&p, "feature", "main", &changed),
            "default: watched branch"
        );
        assert!(!push_matches(
            &p,
            "main",
            "main",
            &["README.md".to_string()]
        ));
        let p = pipeline("  push:\n    branches: [\"release/*\"]");
        assert!(push_matches(&p, "release/1.2", "main", &changed));
        assert!(!push_matches(&p, "main", "main", &changed));
        let none = pipeline("  manual: true");
        assert!(!push_matches(&none, "main", "main", &changed));
    }

    #[test]
    fn pull_requests_filter_on_types_and_target_branches() {
        let p = pipeline("  pullRequest:\n    branches: [main]");
        assert!(pr_matches(&p, PrAction::Opened, "main", &[]));
        assert!(pr_matches(&p, PrAction::Synchronize, "main", &[]));
        assert!(
            !pr_matches(&p, PrAction::Closed, "main", &[]),
            "closed is not a default type"
        );
        assert!(!pr_matches(&p, PrAction::Opened, "develop", &[]));
    }

    #[test]
    fn comment_commands() {
        assert_eq!(parse_command("looks good"), None);
        assert_eq!(parse_command("/gantry"), Some(Ok(Command::Help)));
        assert_eq!(
            parse_command("thanks!\n/gantry help"),
            Some(Ok(Command::Help))
        );
        assert_eq!(
            parse_command("/gantry run provision-postgres db_name=orders size=small"),
            Some(Ok(Command::Run {
                pipeline: "provision-postgres".into(),
                params: vec![
                    ("db_name".into(), "orders".into()),
                    ("size".into(), "small".into())
                ],
            }))
        );
        assert!(matches!(parse_command("/gantry run"), Some(Err(_))));
        assert!(matches!(parse_command("/gantry run p oops"), Some(Err(m)) if m.contains("oops")));
        assert!(matches!(parse_command("/gantry deploy"), Some(Err(m)) if m.contains("unknown")));
        assert_eq!(parse_command("/gantryx run p"), None);
    }
}
