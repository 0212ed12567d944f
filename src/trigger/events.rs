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

/// How much of a commit's pipeline files an event reads: a commit anyone can push (a branch, a
/// pull request's head) must not make Gantry read or parse without bound.
#[derive(Debug, Clone, Copy)]
pub struct ReadCap {
    /// Pipeline files read at one commit; the rest are reported, not read.
    pub max_files: usize,
    /// Bytes read at one commit, all files together.
    pub max_total_bytes: u64,
}

impl Default for ReadCap {
    fn default() -> ReadCap {
        ReadCap {
            max_files: 200,
            max_total_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A file at a commit that was not read: invalid, with the reason at its first line.
fn not_read(path: String, message: String) -> AtCommit {
    let name = std::path::Path::new(&path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.clone());
    AtCommit {
        errors: vec![PipelineError {
            path: path.clone(),
            line: 1,
            column: 1,
            message,
        }],
        path,
        name,
        text: String::new(),
        pipeline: None,
    }
}

/// Every pipeline file matching `globs` at `commit`, checked, within `cap`: sizes are looked up
/// before anything is read, and a file over the cap (too many files, too many bytes, larger
/// than a pipeline file may be) is reported invalid without being read. The definitions a pull
/// request runs are these, read at its head: a PR can change a pipeline and see it run.
pub fn pipelines_at(
    mirror: &Mirror,
    commit: &str,
    globs: &[String],
    cap: ReadCap,
) -> Result<Vec<AtCommit>, SourceError> {
    let mut out = Vec::new();
    let max_file = crate::spec::yaml::Limits::default().max_bytes as u64;
    let mut total: u64 = 0;
    for (i, path) in mirror.list_files(commit, globs)?.into_iter().enumerate() {
        if i >= cap.max_files {
            out.push(not_read(
                path,
                format!(
                    "not read: a commit may hold at most {} pipeline files",
                    cap.max_files
                ),
            ));
            continue;
        }
        let size = mirror.file_size(commit, &path)?.unwrap_or(0);
        if size > max_file {
            out.push(not_read(
                path,
                format!("not read: {size} bytes, more than a pipeline file may have ({max_file})"),
            ));
            continue;
        }
        if total + size > cap.max_total_bytes {
            out.push(not_read(
                path,
                format!(
                    "not read: the pipeline files of a commit may hold at most {} bytes together",
                    cap.max_total_bytes
                ),
            ));
            continue;
        }
        total += size;
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

/// The valid pipelines among `pipelines` that a push to `branch` (changing `changed`) runs; intake
/// queues them.
pub fn push_runs<'a>(
    pipelines: &'a [AtCommit],
    branch: &str,
    watched: &str,
    changed: &[String],
) -> Vec<(&'a AtCommit, &'a Pipeline)> {
    pipelines
        .iter()
        .filter_map(|at| at.pipeline.as_ref().map(|p| (at, p)))
        .filter(|(_, p)| push_matches(p, branch, watched, changed))
        .collect()
}

/// The valid pipelines among `pipelines` that a pull request event runs; intake queues them.
pub fn pr_runs<'a>(
    pipelines: &'a [AtCommit],
    action: PrAction,
    base: &str,
    changed: &[String],
) -> Vec<(&'a AtCommit, &'a Pipeline)> {
    pipelines
        .iter()
        .filter_map(|at| at.pipeline.as_ref().map(|p| (at, p)))
        .filter(|(_, p)| pr_matches(p, action, base, changed))
        .collect()
}

/// A `/gantry` command found in a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Run {
        pipeline: String,
        params: Vec<(String, String)>,
        /// The commit the commenter means (`@abc1234`): the command runs only if it is still
        /// the head.
        at: Option<String>,
    },
}

/// `@<4 to 40 hex digits>`: the commit a command names.
fn commit_word(word: &str) -> Option<String> {
    let hex = word.strip_prefix('@')?;
    ((4..=40).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
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
                    "`/gantry run` needs a pipeline name: `/gantry run <pipeline> [@commit] \
                     [key=value ...]`"
                        .to_string(),
                ));
            };
            let mut params = Vec::new();
            let mut at = None;
            for word in words {
                if word.starts_with('@') {
                    match commit_word(word) {
                        Some(c) if at.is_none() => at = Some(c),
                        _ => {
                            return Some(Err(format!(
                                "{} does not name a commit; write `@` and 4 to 40 hex digits of \
                                 the head you mean, once",
                                crate::forge::code_span(word)
                            )));
                        }
                    }
                    continue;
                }
                match word.split_once('=') {
                    Some((k, v)) if !k.is_empty() => params.push((k.to_string(), v.to_string())),
                    _ => {
                        return Some(Err(format!(
                            "{} is not a parameter; write parameters as key=value",
                            crate::forge::code_span(word)
                        )));
                    }
                }
            }
            Ok(Command::Run {
                pipeline: pipeline.to_string(),
                params,
                at,
            })
        }
        Some(other) => Err(format!(
            "unknown command {}; the commands are `/gantry run <pipeline> [@commit] \
             [key=value ...]` and `/gantry help`",
            crate::forge::code_span(&format!("/gantry {other}"))
        )),
    })
}

/// What intake learned about a `/gantry run` command before deciding it.
#[derive(Debug, Clone)]
pub struct RunCommand<'a> {
    /// The commenter's name, already escaped for markdown (the reply mentions it).
    pub mention: &'a str,
    pub pr: u64,
    /// The repository as the forge names it.
    pub repo: &'a str,
    /// The pipeline named.
    pub name: &'a str,
    /// The pull request's head now (full sha).
    pub head: &'a str,
    /// The commit the pipelines were read at: the head, or the watched branch's head for a fork.
    pub defined_at: &'a str,
    /// Whether `defined_at` is the watched branch (a fork's pull request).
    pub watched_branch: bool,
    /// Whether the forge says the commenter has write access.
    pub can_write: bool,
    /// The commit the command named (`@abc1234`), lower case.
    pub named_commit: Option<&'a str>,
    /// Whether the head moved after the comment was written.
    pub moved_after_comment: bool,
    /// Whether nothing but the commit's own time says when the head became the head: a fork's
    /// commit times are its author's to set, so Gantry cannot tell that the commenter saw it.
    pub head_time_unknown: bool,
}

/// What a `/gantry run` command comes to; intake carries it out.
#[derive(Debug)]
pub enum CommentDecision<'a> {
    /// Run nothing; reply `text`. `outcome` is for the delivery's record.
    Reply { text: String, outcome: String },
    /// Queue a run of this pipeline at the head.
    Run {
        at: &'a AtCommit,
        pipeline: &'a Pipeline,
    },
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Decides a `/gantry run` command from what intake learned and the pipelines at
/// `cmd.defined_at`: in order, the commenter's access, the head the commenter saw, the
/// pipeline's existence, validity and `on.comment`. Text quoted from the comment is a code span.
pub fn decide_run<'a>(cmd: &RunCommand<'_>, pipelines: &'a [AtCommit]) -> CommentDecision<'a> {
    let RunCommand {
        mention,
        pr,
        repo,
        name,
        head,
        defined_at,
        ..
    } = *cmd;
    let reply = |text: String, outcome: String| CommentDecision::Reply { text, outcome };
    let quoted = crate::forge::code_span(name);
    let plain_name = name.replace('`', "'");
    if !cmd.can_write {
        return reply(
            format!(
                "@{mention} only users with write access to {repo} can run pipelines; ask a \
                 maintainer to comment `/gantry run {plain_name}`."
            ),
            format!("refused: {mention} has no write access"),
        );
    }
    if let Some(named) = cmd.named_commit
        && !head.starts_with(named)
    {
        return reply(
            format!(
                "@{mention} not started: {} is not the head of #{pr} any more (it is now `{}`); \
                 look at the new head and comment again.",
                crate::forge::code_span(named),
                short(head)
            ),
            format!("not started: @{named} is not the head"),
        );
    }
    if cmd.named_commit.is_none() && cmd.head_time_unknown {
        return reply(
            format!(
                "@{mention} not started: Gantry cannot tell when `{}` became the head of #{pr} (a \
                 fork's commit times are its author's to set), so it cannot tell that you saw it; \
                 name the commit you looked at: `/gantry run {plain_name} @{}`.",
                short(head),
                short(head)
            ),
            format!(
                "not started: when {} became the head is unknown",
                short(head)
            ),
        );
    }
    if cmd.named_commit.is_none() && cmd.moved_after_comment {
        return reply(
            format!(
                "@{mention} not started: the head of #{pr} moved to `{}` after your comment; look \
                 at the new head and comment again (or name it: `/gantry run {plain_name} @{}`).",
                short(head),
                short(head)
            ),
            format!("not started: the head moved to {}", short(head)),
        );
    }
    let Some(at) = pipelines.iter().find(|at| at.name == name) else {
        let known: Vec<String> = pipelines
            .iter()
            .map(|a| crate::forge::code_span(&a.name))
            .collect();
        return reply(
            format!(
                "@{mention} there is no pipeline {quoted} at `{}`; pipelines here: {}",
                short(defined_at),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            format!("no pipeline `{name}`"),
        );
    };
    let Some(pipeline) = &at.pipeline else {
        let first = at
            .errors
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| format!("{}: invalid", at.path));
        return reply(
            format!(
                "@{mention} {quoted} fails validation at `{}`: {}",
                short(defined_at),
                crate::forge::code_span(&first)
            ),
            format!("`{name}` is invalid"),
        );
    };
    if !pipeline.on.comment {
        return reply(
            format!(
                "@{mention} {quoted} does not take comment commands (add `on: {{comment: true}}` \
                 to its file{})",
                if cmd.watched_branch {
                    " on the watched branch"
                } else {
                    ""
                }
            ),
            format!("`{name}` does not take comment commands"),
        );
    }
    CommentDecision::Run { at, pipeline }
}

/// The reply to `/gantry help`, listing the pipelines that take comment commands.
pub fn help_text(commentable: &[(String, Vec<String>)]) -> String {
    let mut out = String::from(
        "**Gantry commands**\n\n- `/gantry run <pipeline> [@commit] [key=value ...]`: run a \
         pipeline on this pull request's head (naming the head you reviewed, if you like: it runs \
         only if that is still the head)\n- `/gantry help`: this message\n\nOnly users with write access to \
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
                at: None,
            }))
        );
        assert_eq!(
            parse_command("/gantry run plan @ABC1234 env=dev"),
            Some(Ok(Command::Run {
                pipeline: "plan".into(),
                params: vec![("env".into(), "dev".into())],
                at: Some("abc1234".into()),
            }))
        );
        assert!(
            matches!(parse_command("/gantry run plan @octocat"), Some(Err(m)) if m.contains("commit"))
        );
        assert!(matches!(
            parse_command("/gantry run plan @abcd @abce"),
            Some(Err(_))
        ));
        assert!(matches!(parse_command("/gantry run"), Some(Err(_))));
        assert!(matches!(parse_command("/gantry run p oops"), Some(Err(m)) if m.contains("oops")));
        assert!(matches!(parse_command("/gantry deploy"), Some(Err(m)) if m.contains("unknown")));
        assert_eq!(parse_command("/gantryx run p"), None);
    }

    fn at(name: &str, text: &str) -> AtCommit {
        let checked = crate::spec::check(text);
        AtCommit {
            path: format!(".gantry/pipelines/{name}.yaml"),
            name: name.to_string(),
            text: text.to_string(),
            errors: crate::catalog::errors_of(&format!(".gantry/pipelines/{name}.yaml"), &checked),
            pipeline: checked.pipeline,
        }
    }

    fn reply_of(d: CommentDecision<'_>) -> String {
        match d {
            CommentDecision::Reply { text, .. } => text,
            CommentDecision::Run { at, .. } => panic!("runs {}", at.name),
        }
    }

    #[test]
    fn comment_commands_decide_in_order_and_quote_as_code() {
        let head = "1234567890abcdef1234567890abcdef12345678";
        let pipelines = vec![
            at(
                "deploy",
                "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: deploy\non: {comment: true}\nsteps:\n  - name: s\n    script: 'true'\n",
            ),
            at(
                "plan",
                "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: plan\non: {push: {}}\nsteps:\n  - name: s\n    script: 'true'\n",
            ),
        ];
        let cmd = RunCommand {
            mention: "maintainer",
            pr: 7,
            repo: "acme/infra",
            name: "deploy",
            head,
            defined_at: "abcdef0123456789",
            watched_branch: true,
            can_write: true,
            named_commit: None,
            moved_after_comment: false,
            head_time_unknown: false,
        };
        assert!(matches!(
            decide_run(&cmd, &pipelines),
            CommentDecision::Run { at, .. } if at.name == "deploy"
        ));
        // Snapshots of every reply.
        assert_eq!(
            reply_of(decide_run(
                &RunCommand {
                    can_write: false,
                    ..cmd.clone()
                },
                &pipelines
            )),
            "@maintainer only users with write access to acme/infra can run pipelines; ask a \
             maintainer to comment `/gantry run deploy`."
        );
        assert_eq!(
            reply_of(decide_run(
                &RunCommand {
                    named_commit: Some("abcd"),
                    ..cmd.clone()
                },
                &pipelines
            )),
            "@maintainer not started: `abcd` is not the head of #7 any more (it is now \
             `1234567`); look at the new head and comment again."
        );
        assert!(
            matches!(
                decide_run(
                    &RunCommand {
                        named_commit: Some("12345"),
                        moved_after_comment: true,
                        ..cmd.clone()
                    },
                    &pipelines
                ),
                CommentDecision::Run { .. }
            ),
            "a named head wins over times"
        );
        assert_eq!(
            reply_of(decide_run(
                &RunCommand {
                    head_time_unknown: true,
                    ..cmd.clone()
                },
                &pipelines
            )),
            "@maintainer not started: Gantry cannot tell when `1234567` became the head of #7 (a \
             fork's commit times are its author's to set), so it cannot tell that you saw it; \
             name the commit you looked at: `/gantry run deploy @1234567`."
        );
        assert!(
            matches!(
                decide_run(
                    &RunCommand {
                        named_commit: Some("12345"),
                        head_time_unknown: true,
                        ..cmd.clone()
                    },
                    &pipelines
                ),
                CommentDecision::Run { .. }
            ),
            "a named head needs no time"
        );
        assert_eq!(
            reply_of(decide_run(
                &RunCommand {
                    moved_after_comment: true,
                    ..cmd.clone()
                },
                &pipelines
            )),
            "@maintainer not started: the head of #7 moved to `1234567` after your comment; look \
             at the new head and comment again (or name it: `/gantry run deploy @1234567`)."
        );
        assert_eq!(
            reply_of(decide_run(
                &RunCommand {
                    name: "[x](http://e.x) @all",
                    ..cmd.clone()
                },
                &pipelines
            )),
            "@maintainer there is no pipeline `[x](http://e.x) @all` at `abcdef0`; pipelines \
             here: `deploy`, `plan`"
        );
        assert_eq!(
            reply_of(decide_run(
                &RunCommand {
                    name: "plan",
                    ..cmd.clone()
                },
                &pipelines
            )),
            "@maintainer `plan` does not take comment commands (add `on: {comment: true}` to its \
             file on the watched branch)"
        );
        let broken = vec![at(
            "deploy",
            "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata:\n  name: deploy\nstpes: []\n",
        )];
        let text = reply_of(decide_run(&cmd, &broken));
        assert!(
            text.starts_with("@maintainer `deploy` fails validation at `abcdef0`: `"),
            "{text}"
        );
    }
}
