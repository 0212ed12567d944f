//! GitHub payloads: `push`, `pull_request`, `issue_comment` (on pull requests) and `ping`, read
//! into `ForgeEvent`s; field names as in NOTES.md "Fields to extract" and octokit/webhooks.

use serde_json::Value;

use super::{Fields, PayloadError, ignored, is_zero_sha};
use crate::forge::{Forge, ForgeEvent, PrAction};

pub(super) fn parse(event: Option<&str>, json: &Value) -> Result<ForgeEvent, PayloadError> {
    let event = event.ok_or(PayloadError::NoEvent {
        forge: Forge::Github,
        header: super::event_header(Forge::Github),
    })?;
    let f = Fields::new(Forge::Github, event, json);
    match event {
        "ping" => Ok(ForgeEvent::Ping {
            repo: f.opt_str("repository.full_name").map(str::to_string),
        }),
        "push" => push(&f),
        "pull_request" => pull_request(&f),
        "issue_comment" => issue_comment(&f),
        other => ignored(format!("GitHub event `{other}` starts nothing")),
    }
}

/// The account that caused the delivery.
fn sender(f: &Fields) -> Result<String, PayloadError> {
    f.string("sender.login")
}

fn push(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let repo = f.string("repository.full_name")?;
    let git_ref = f.str("ref")?;
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return match git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ignored(format!("push of tag `{tag}`: tag pushes start nothing")),
            None => ignored(format!("push to `{git_ref}`, which is not a branch")),
        };
    };
    let after = f.str("after")?;
    if f.bool("deleted") || is_zero_sha(after) {
        return ignored(format!("push deleting branch `{branch}`"));
    }
    let before = f.str("before")?;
    let pusher = match f.opt_str("sender.login") {
        Some(login) => login.to_string(),
        None => f.string("pusher.name")?,
    };
    Ok(ForgeEvent::Push {
        repo,
        branch: branch.to_string(),
        before: (!is_zero_sha(before)).then(|| before.to_string()),
        after: after.to_string(),
        pusher,
    })
}

fn pull_request(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let action = match f.str("action")? {
        "opened" => PrAction::Opened,
        "synchronize" => PrAction::Synchronize,
        "reopened" => PrAction::Reopened,
        "closed" => PrAction::Closed,
        other => return ignored(format!("pull_request action `{other}` starts nothing")),
    };
    let repo = f.string("repository.full_name")?;
    let number = match f.get("number") {
        Some(_) => f.number("number")?,
        None => f.number("pull_request.number")?,
    };
    let base_repo = f
        .opt_str("pull_request.base.repo.full_name")
        .unwrap_or(&repo);
    // The head repository is null when the fork was deleted: still not this repository.
    let from_fork = match f.opt_str("pull_request.head.repo.full_name") {
        Some(head_repo) => !head_repo.eq_ignore_ascii_case(base_repo),
        None => true,
    };
    Ok(ForgeEvent::PullRequest {
        number,
        action,
        head_sha: f.string("pull_request.head.sha")?,
        head_branch: f.string("pull_request.head.ref")?,
        base_branch: f.string("pull_request.base.ref")?,
        from_fork,
        author: sender(f)?,
        repo,
    })
}

fn issue_comment(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let action = f.str("action")?;
    if action != "created" {
        return ignored(format!(
            "issue_comment action `{action}`: only new comments are read"
        ));
    }
    let number = f.number("issue.number")?;
    if f.get("issue.pull_request").is_none() {
        return ignored(format!(
            "issue_comment on issue #{number}, which is not a pull request"
        ));
    }
    Ok(ForgeEvent::Comment {
        repo: f.string("repository.full_name")?,
        pr_number: number,
        comment_id: f.id("comment.id")?,
        body: f.string("comment.body")?,
        author: f.string("comment.user.login")?,
        author_id: f.string("comment.user.login")?,
        head_sha: None,
        created_at: f
            .opt_str("comment.created_at")
            .and_then(crate::forge::parse_time),
    })
}
