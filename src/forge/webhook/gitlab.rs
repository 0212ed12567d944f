//! GitLab payloads: `Push Hook`, `Merge Request Hook` and `Note Hook` (comments on merge
//! requests) read into `ForgeEvent`s; field names as in NOTES.md "Fields to extract" and
//! GitLab's webhook_events.md. The event comes from `X-Gitlab-Event`, or from the body's
//! `object_kind` for a `System Hook` or when the header is missing.

use serde_json::Value;

use super::{Fields, PayloadError, ignored, is_zero_sha};
use crate::forge::{Forge, ForgeEvent, PrAction};

pub(super) fn parse(event: Option<&str>, json: &Value) -> Result<ForgeEvent, PayloadError> {
    let kind = json.get("object_kind").and_then(Value::as_str);
    let event = match (event, kind) {
        (Some(e), _) if e != "System Hook" => e,
        (_, Some(kind)) => match kind {
            "push" => "Push Hook",
            "tag_push" => "Tag Push Hook",
            "merge_request" => "Merge Request Hook",
            "note" => "Note Hook",
            other => return ignored(format!("GitLab `{other}` event starts nothing")),
        },
        _ => {
            return Err(PayloadError::NoEvent {
                forge: Forge::Gitlab,
                header: super::event_header(Forge::Gitlab),
            });
        }
    };
    let f = Fields::new(Forge::Gitlab, event, json);
    match event {
        "Push Hook" => push(&f),
        "Tag Push Hook" => ignored(format!(
            "Tag Push Hook for `{}`: tag pushes start nothing",
            f.opt_str("ref").unwrap_or("?")
        )),
        "Merge Request Hook" => merge_request(&f),
        "Note Hook" => note(&f),
        other => ignored(format!("GitLab event `{other}` starts nothing")),
    }
}

fn repo(f: &Fields) -> Result<String, PayloadError> {
    f.string("project.path_with_namespace")
}

fn push(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let repo = repo(f)?;
    let git_ref = f.str("ref")?;
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return match git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ignored(format!("push of tag `{tag}`: tag pushes start nothing")),
            None => ignored(format!("push to `{git_ref}`, which is not a branch")),
        };
    };
    let after = f.str("after")?;
    if is_zero_sha(after) {
        return ignored(format!("push deleting branch `{branch}`"));
    }
    let before = f.str("before")?;
    Ok(ForgeEvent::Push {
        repo,
        branch: branch.to_string(),
        before: (!is_zero_sha(before)).then(|| before.to_string()),
        after: after.to_string(),
        pusher: f.string("user_username")?,
    })
}

fn merge_request(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let number = f.number("object_attributes.iid")?;
    let action = match f.str("object_attributes.action")? {
        "open" => PrAction::Opened,
        "reopen" => PrAction::Reopened,
        // `oldrev` is only sent when the update brought new commits.
        "update"
            if f.opt_str("object_attributes.oldrev")
                .is_some_and(|s| !s.is_empty()) =>
        {
            PrAction::Synchronize
        }
        "update" => {
            return ignored(format!(
                "merge request !{number} update without new commits (a metadata update)"
            ));
        }
        "close" | "merge" => PrAction::Closed,
        other => return ignored(format!("merge request action `{other}` starts nothing")),
    };
    Ok(ForgeEvent::PullRequest {
        repo: repo(f)?,
        number,
        action,
        head_sha: f.string("object_attributes.last_commit.id")?,
        head_branch: f.string("object_attributes.source_branch")?,
        base_branch: f.string("object_attributes.target_branch")?,
        from_fork: f.number("object_attributes.source_project_id")?
            != f.number("object_attributes.target_project_id")?,
        author: f.string("user.username")?,
    })
}

fn note(f: &Fields) -> Result<ForgeEvent, PayloadError> {
    let on = f.str("object_attributes.noteable_type")?;
    if on != "MergeRequest" {
        return ignored(format!(
            "Note Hook on a {on}: only comments on merge requests are read"
        ));
    }
    // `action` arrived in GitLab 16.11; older deliveries are always new notes.
    if let Some(action) = f.opt_str("object_attributes.action")
        && action != "create"
    {
        return ignored(format!(
            "Note Hook action `{action}`: only new comments are read"
        ));
    }
    if f.bool("object_attributes.system") {
        return ignored("Note Hook for a system note".to_string());
    }
    Ok(ForgeEvent::Comment {
        repo: repo(f)?,
        pr_number: f.number("merge_request.iid")?,
        comment_id: f.id("object_attributes.id")?,
        body: f.string("object_attributes.note")?,
        author: f.string("user.username")?,
        author_id: f.string("user.username")?,
        head_sha: f
            .opt_str("merge_request.last_commit.id")
            .map(str::to_string),
        created_at: f
            .opt_str("object_attributes.created_at")
            .and_then(crate::forge::parse_time),
    })
}
