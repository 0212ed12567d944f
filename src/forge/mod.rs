//! Forges: everything specific to GitHub, GitLab and Bitbucket lives here and nowhere else: webhook
//! signatures and payloads in, status and comment API calls out. The rest of the crate sees the
//! neutral types of this file only.
//!
//! - `webhook.rs`: checking a delivery (constant-time, on the raw body, before any parsing), its
//!   delivery id, and normalising its payload into a `ForgeEvent`; one submodule per forge.
//! - `api.rs`: the write-back client (`ForgeClient`): commit statuses, the PR comment, commenter
//!   permissions and PR heads, over octocrab (GitHub), the gitlab crate (GitLab) and reqwest
//!   (Bitbucket), each with a configurable API base URL.
//!
//! Imports nothing from the crate.

pub mod api;
pub mod webhook;

use std::fmt;

/// The three forges Gantry speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Forge {
    Github,
    Gitlab,
    Bitbucket,
}

impl Forge {
    pub const ALL: [Forge; 3] = [Forge::Github, Forge::Gitlab, Forge::Bitbucket];

    /// `github`, `gitlab`, `bitbucket`: the provider name in gantry.toml and the hook path.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
            Forge::Bitbucket => "bitbucket",
        }
    }

    pub fn from_name(name: &str) -> Option<Forge> {
        Forge::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The ref under which the forge keeps a pull request's head (a fork's commits are on no
    /// branch of the repository), where it has one.
    pub fn pr_head_ref(self, number: u64) -> Option<String> {
        match self {
            Forge::Github => Some(format!("refs/pull/{number}/head")),
            Forge::Gitlab => Some(format!("refs/merge-requests/{number}/head")),
            Forge::Bitbucket => None,
        }
    }

    /// The forge's name as it writes it.
    pub fn title(self) -> &'static str {
        match self {
            Forge::Github => "GitHub",
            Forge::Gitlab => "GitLab",
            Forge::Bitbucket => "Bitbucket",
        }
    }

    /// The longest comment the forge takes, in characters. GitHub refuses a longer one with 422
    /// ("Body is too long (maximum is 65536 characters)"); GitLab's notes take 1,000,000.
    /// Bitbucket Cloud documents no limit, so Gantry keeps to GitHub's there.
    pub fn max_comment_chars(self) -> usize {
        match self {
            Forge::Github | Forge::Bitbucket => 65_536,
            Forge::Gitlab => 1_000_000,
        }
    }

    /// The refspec that fetches a pull request's head into a mirror, as `refs/gantry/pr/<n>`.
    pub fn pr_refspec(self, number: u64) -> Option<String> {
        self.pr_head_ref(number)
            .map(|r| format!("+{r}:refs/gantry/pr/{number}"))
    }
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a pull request (merge request on GitLab).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAction {
    Opened,
    /// New commits were pushed to its head.
    Synchronize,
    Reopened,
    Closed,
}

impl PrAction {
    /// The name used in `on.pullRequest.types`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrAction::Opened => "opened",
            PrAction::Synchronize => "synchronize",
            PrAction::Reopened => "reopened",
            PrAction::Closed => "closed",
        }
    }
}

/// A forge event in neutral terms. Repository ids are the forge's: `owner/repo` (GitHub),
/// `group/project` (GitLab, `path_with_namespace`), `workspace/slug` (Bitbucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeEvent {
    /// A push to a branch. Tag pushes and branch deletions are `Ignored`.
    Push {
        repo: String,
        branch: String,
        /// The commit before the push; `None` when the branch was created.
        before: Option<String>,
        after: String,
        pusher: String,
    },
    PullRequest {
        repo: String,
        number: u64,
        action: PrAction,
        /// Full sha, except on Bitbucket, whose payloads carry 12 hex digits: resolve it in the
        /// mirror before use.
        head_sha: String,
        head_branch: String,
        base_branch: String,
        /// The head lives in another repository (a fork).
        from_fork: bool,
        author: String,
    },
    /// A new comment on a pull request.
    Comment {
        repo: String,
        pr_number: u64,
        comment_id: String,
        body: String,
        /// The author's name as people see it (for a reply's mention).
        author: String,
        /// The author's stable identity, the one a permission check asks about: the GitHub
        /// login, the GitLab username, the Bitbucket `account_id` (else `uuid`); never a
        /// Bitbucket nickname or display name, which anyone can choose.
        author_id: String,
        /// Missing on GitHub (`issue_comment` has no head): ask the forge (`ForgeClient::pr_head`).
        head_sha: Option<String>,
        /// When the comment was written, where the payload says (and it parses).
        created_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// GitHub's `ping` when a hook is created.
    Ping { repo: Option<String> },
    /// Genuine, but nothing Gantry acts on; the reason is sent back with the 202.
    Ignored { reason: String },
}

impl ForgeEvent {
    /// The repository the event is about, if it names one.
    pub fn repo(&self) -> Option<&str> {
        match self {
            ForgeEvent::Push { repo, .. }
            | ForgeEvent::PullRequest { repo, .. }
            | ForgeEvent::Comment { repo, .. } => Some(repo),
            ForgeEvent::Ping { repo } => repo.as_deref(),
            ForgeEvent::Ignored { .. } => None,
        }
    }
}

/// A payload's timestamp: RFC 3339 (GitHub, Bitbucket, newer GitLab) or GitLab's older
/// `2015-05-17 18:21:36 UTC`.
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    let bare = text.strip_suffix(" UTC")?;
    chrono::NaiveDateTime::parse_from_str(bare, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Text quoted from a user, made inert for a forge's markdown while it still reads the same:
/// markdown punctuation is backslash-escaped, a zero-width space after `@` keeps it from
/// mentioning anyone and one inside `://` and `www.` keeps it from becoming a link, and line
/// breaks become spaces (it stays on its line). Use it for prose; `code_span` for names.
pub fn escape_markdown(text: &str) -> String {
    const ZWSP: char = '\u{200B}';
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '<' | '>' | '#' | '|' | '~' | '!'
            | '{' | '}' | '&' | '=' | '+' | '-' => {
                out.push('\\');
                out.push(c);
            }
            '@' => {
                out.push('@');
                out.push(ZWSP);
            }
            ':' if rest.starts_with("//") => {
                out.push(':');
                out.push(ZWSP);
            }
            'w' | 'W' if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("ww.") => {
                out.push(c);
                out.push(ZWSP);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A step's Markdown summary, fit for a comment: rendered as Markdown (the step wrote it to be),
/// but with every `@` followed by a zero-width space so that it mentions no one, Gantry's own
/// hidden markers taken out, a code block it left open closed, and at most `max` characters.
pub fn summary_markdown(text: &str, max: usize) -> String {
    const ZWSP: char = '\u{200B}';
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for c in text.chars().take(max) {
        out.push(c);
        if c == '@' {
            out.push(ZWSP);
        }
    }
    if text.chars().count() > max {
        out.push_str("\n…");
    }
    let mut out = out.replace("<!-- gantry:", "<!-- ");
    let fences = out
        .lines()
        .filter(|l| l.trim_start().starts_with("```") || l.trim_start().starts_with("~~~"))
        .count();
    if fences % 2 == 1 {
        out.push_str("\n```");
    }
    out
}

/// A code fence longer than any run of backticks in `text`, so the block cannot be closed early.
pub fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// `text` as an inline code span for a forge's markdown: shown as typed, so text quoted from a
/// user cannot mention anyone, link anywhere or format the message. Backticks and line breaks
/// inside become plain quotes and spaces (a span cannot hold them safely), and very long text is
/// cut to 300 characters.
pub fn code_span(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| match c {
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        clean.push('…');
    }
    format!("`{clean}`")
}

/// The state of a commit status, in Gantry's terms; each forge maps it to its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusState {
    /// Queued.
    Pending,
    Running,
    Success,
    Failure,
    /// Gantry could not run it (invalid pipeline, refused to start, interrupted).
    Error,
    Canceled,
}

#[cfg(test)]
mod tests {
    use super::{code_span, escape_markdown};

    #[test]
    fn quoted_user_text_cannot_mention_link_or_format() {
        // Snapshots: what a forge gets for hostile text.
        assert_eq!(
            escape_markdown("@octocat see [this](https://evil.example) **now**\n# or www.x.io"),
            "@\u{200B}octocat see \\[this\\]\\(https:\u{200B}//evil.example\\) \\*\\*now\\*\\* \\# \
             or w\u{200B}ww.x.io"
        );
        assert_eq!(escape_markdown("plain words, 2.5s"), "plain words, 2.5s");
        assert_eq!(code_span("a`b`\n@x <img src=x>"), "`a'b' @x <img src=x>`");
        let long = "x".repeat(400);
        assert_eq!(code_span(&long), format!("`{}…`", "x".repeat(300)));
    }
}
