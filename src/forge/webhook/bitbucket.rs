//! Bitbucket Cloud payloads: `repo:push`, `pullrequest:created|updated|fulfilled|rejected` and
//! `pullrequest:comment_created`, read into `ForgeEvent`s; field names as in NOTES.md "Fields to
//! extract" and Atlassian's event-payloads page.
//!
//! A `repo:push` can carry several changes (`git push --all`); a `ForgeEvent` is one push, so the
//! first change that moves a branch is taken and the others are dropped. `pullrequest:updated`
//! is sent for new commits and for title or description edits alike; the payload cannot tell
//! them apart, so every update is a `Synchronize`.

use serde_json::Value;

use super::{Fields, PayloadError, ignored, is_zero_sha};
use crate::forge::{Forge, ForgeEvent, PrAction};

pub(super) fn parse(event: Option<&str>, json: &Value) -> Result<ForgeEvent, PayloadError> {
    let event = event.ok_or(PayloadError::NoEvent {
        forge: Forge::Bitbucket,
        header: super::event_header(Forge::Bitbucket),
    })?;
    let f = Fields::new(Forge::Bitbucket, event, json);
    match event {
        "repo:push" => push(&f),
        "pullrequest:created" => pull_request(&f, PrAction::Opened),
        "pullrequest:updated" => pull_request(&f, PrAction::Synchronize),
        "pullrequest:fulfilled" | "pullrequest:rejected" => pull_request(&f, PrAction::Closed),
        "pullrequest:comment_created" => comment(&f),
        other => ignored(format!("Bitbucket event `{other}` starts nothing")),
    }
}

/// A Bitbucket account's name: `username` is gone from most payloads (GDPR), so `nickname`,
/// then `display_name`, then the account id.
fn user(f: &Fields, path: &str) -> Result<String, PayloadError> {
    ["username", "nickname", "display_name", "account_id", "uuid"]
        .iter()
        .find_map(|key| {
            f.opt_str(&format!("{path}.{key}"))
                .filter(|s| !s.is_empty())
        })
        .map(str::to_string)
        .ok_or_else(|| f.missing(&format!("{path}.nickname"), "string"))
}

/// The stable identity of the user at `path`: `account_id`, else `uuid`. Nicknames and display
/// names are chosen by their owners and need not be unique, so they never identify anyone.
fn user_id(f: &Fields, path: &str) -> Result<String, PayloadError> {
    ["account_id", "uuid"]
        .iter()
        .find_map(|key| {
            f.opt_str(&format!("{path}.{key}"))
                .filter(|s| !s.is_empty())
        })
        .map(str::to_string)
        .ok_or_else(|| f.missing(&format!("{path}.account_id"), "string"))
}

fn repo(f: &Fields) -> Result<String, PayloadError> {
    f.string("repository.full_name")
}

fn push(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let repo = repo(f)?;
    let changes = f
        .get("push.changes")
        .and_then(Value::as_array)
        .ok_or_else(|| f.missing("push.changes", "array"))?;
    let mut skipped = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let c = f.child(change, &format!("push.changes[{i}]"));
        let Some(new) = c.get("new") else {
            let name = c.opt_str("old.name").unwrap_or("?");
            skipped.push(format!("deletion of `{name}`"));
            continue;
        };
        let n = c.child(new, "new");
        let name = n.str("name")?;
        if n.str("type")? != "branch" {
            skipped.push(format!("{} `{name}`", n.str("type")?));
            continue;
        }
        let after = n.str("target.hash")?;
        if is_zero_sha(after) {
            skipped.push(format!("deletion of `{name}`"));
            continue;
        }
        let before = c
            .opt_str("old.target.hash")
            .filter(|h| !is_zero_sha(h))
            .map(str::to_string);
        return Ok(ForgeEvent::Push {
            repo,
            branch: name.to_string(),
            before,
            after: after.to_string(),
            pusher: user(f, "actor")?,
        });
    }
    if skipped.is_empty() {
        ignored("repo:push without changes".to_string())
    } else {
        ignored(format!(
            "repo:push that moves no branch ({}): tag pushes and branch deletions start nothing",
            skipped.join(", ")
        ))
    }
}

fn pull_request(f: &Fields, action: PrAction) -> Result<ForgeEvent, PayloadError> {
    let source_repo = f.opt_str("pullrequest.source.repository.full_name");
    let target_repo = f.opt_str("pullrequest.destination.repository.full_name");
    let from_fork = match (source_repo, target_repo) {
        (Some(source), Some(target)) => !source.eq_ignore_ascii_case(target),
        // A deleted fork leaves no source repository.
        (None, _) => true,
        (Some(source), None) => !source.eq_ignore_ascii_case(&repo(f)?),
    };
    Ok(ForgeEvent::PullRequest {
        repo: repo(f)?,
        number: f.number("pullrequest.id")?,
        action,
        head_sha: f.string("pullrequest.source.commit.hash")?,
        head_branch: f.string("pullrequest.source.branch.name")?,
        base_branch: f.string("pullrequest.destination.branch.name")?,
        from_fork,
        author: user(f, "actor")?,
    })
}

fn comment(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let who = if f.get("comment.user").is_some() {
        "comment.user"
    } else {
        "actor"
    };
    let (author, author_id) = (user(f, who)?, user_id(f, who)?);
    Ok(ForgeEvent::Comment {
        repo: repo(f)?,
        pr_number: f.number("pullrequest.id")?,
        comment_id: f.id("comment.id")?,
        body: f.string("comment.content.raw")?,
        author,
        author_id,
        head_sha: f
            .opt_str("pullrequest.source.commit.hash")
            .map(str::to_string),
        created_at: f
            .opt_str("comment.created_on")
            .and_then(crate::forge::parse_time),
    })
}
