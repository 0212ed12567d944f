//! Gantry's one comment on a pull request, rendered from the store.
//!
//! It lists each pipeline's latest run on the PR's head (status, duration, steps, non-secret
//! outputs, link) and the pipeline files that fail validation there. A hidden marker lets Gantry
//! find the comment again if the store lost its id. Every value that could carry a secret goes
//! through the run's secret mask first; secret outputs are never listed.

use crate::executor::mask::Secrets;
use crate::forge::Forge;
use crate::store::{PrRecord, RunRecord, RunStatus, StepState, Store, StoreError};

/// The hidden marker that identifies Gantry's comment.
pub const MARKER: &str = "<!-- gantry:pr-comment -->";

/// The hidden marker of Gantry's replies to comment commands.
pub const REPLY_MARKER: &str = "<!-- gantry:reply -->";

/// Whether a comment was written by Gantry: such comments are never read as commands, whatever
/// text from a pull request they quote.
pub fn is_gantry_comment(body: &str) -> bool {
    body.contains(MARKER) || body.contains(REPLY_MARKER)
}

/// Text from a pull request (error messages, run messages) on one line, so no line of the
/// comment can be made to start with a command.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn icon(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "⏳",
        RunStatus::Running => "🔄",
        RunStatus::Succeeded => "✅",
        RunStatus::Failed => "❌",
        RunStatus::Cancelled | RunStatus::Skipped => "⏹️",
        RunStatus::Interrupted => "⚠️",
    }
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Markdown table cells must not break the table.
/// Text a run or step recorded (which may quote a pipeline's or a user's words), inert in
/// markdown and on one line.
fn quoted(text: &str) -> String {
    crate::forge::escape_markdown(&one_line(text))
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The values a run's report must not show: the secrets its pipeline declared.
pub(crate) fn secrets_of(store: &Store, run: &RunRecord) -> Secrets {
    let secrets = Secrets::new();
    let declared = store
        .get_version(&run.source, &run.pipeline, run.version)
        .ok()
        .flatten()
        .and_then(|v| crate::spec::check(&v.text).pipeline)
        .map(|p| p.secrets)
        .unwrap_or_default();
    let scope = crate::run::config_scope(&run.source, &run.pipeline);
    if let Ok(values) = store.resolve_secrets(&scope, &declared) {
        for v in values.values() {
            secrets.add(v);
        }
    }
    secrets
}

/// What a run published, for its section of the comment: each resource with its marketplace
/// version, environments, non-secret properties and credential keys, never a value of one.
fn published(store: &Store, run: &RunRecord, secrets: &Secrets) -> Result<String, StoreError> {
    let mut out = String::new();
    for p in crate::marketplace::run_publications(store, &run.id)? {
        if out.is_empty() {
            out.push_str("\nPublished to the marketplace:\n");
        }
        let version = match (&p.error, p.version, p.new_version) {
            (Some(e), _, _) => format!("not published: {}", quoted(&secrets.mask(e))),
            (None, Some(v), Some(true)) => format!("version {v}"),
            (None, Some(v), _) => format!("version {v} (unchanged)"),
            (None, None, _) => "not listed yet".to_string(),
        };
        out.push_str(&format!(
            "- {} {version} ({}), for {}\n",
            crate::forge::code_span(&p.resource),
            crate::marketplace::category_name(p.category),
            p.environments
                .iter()
                .map(|e| crate::forge::code_span(e))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (k, v) in &p.properties {
            out.push_str(&format!(
                "  - `{}` = {}\n",
                cell(k),
                crate::forge::code_span(&secrets.mask(v))
            ));
        }
        let keys: Vec<String> = p
            .credentials
            .iter()
            .map(|k| match k.secret {
                true => format!("`{}` (secret)", cell(&k.key)),
                false => format!("`{}`", cell(&k.key)),
            })
            .collect();
        if !keys.is_empty() {
            out.push_str(&format!("  - credentials: {}\n", keys.join(", ")));
        }
    }
    Ok(out)
}

/// The most of a step's summary the comment shows; the run's page has all of it.
const SUMMARY_IN_COMMENT: usize = 8_000;

/// How many of a failed step's last log lines the comment shows when it wrote no summary.
const TAIL_LINES: usize = 20;

/// A step's own section: its summary, or the end of its log when it failed without one.
fn step_text(
    store: &Store,
    run: &RunRecord,
    (index, step): (usize, &crate::store::StepRecord),
    secrets: &Secrets,
    url: &str,
    fold: &Fold,
) -> Result<String, StoreError> {
    if let Some(summary) = &step.summary {
        let mut text = crate::forge::summary_markdown(&secrets.mask(summary), SUMMARY_IN_COMMENT);
        if summary.chars().count() > SUMMARY_IN_COMMENT {
            text.push_str(&format!("\n\n[The whole summary]({url})\n"));
        }
        return Ok(format!(
            "{}{}\n{}",
            fold.open(&format!("Summary of `{}`", cell(&step.name))),
            text.trim_end(),
            fold.close()
        ));
    }
    if !matches!(
        step.state,
        StepState::Failed | StepState::TimedOut | StepState::Error
    ) {
        return Ok(String::new());
    }
    let lines = store.log_tail(&run.id, index, TAIL_LINES)?;
    if lines.is_empty() {
        return Ok(String::new());
    }
    let body: Vec<String> = lines
        .iter()
        .map(|l| one_line(&secrets.mask(&l.text)))
        .collect();
    let body = body.join("\n");
    let fence = crate::forge::fence_for(&body);
    Ok(format!(
        "{}{fence}text\n{body}\n{fence}\n{}",
        fold.open(&format!("Last lines of `{}`", cell(&step.name))),
        fold.close()
    ))
}

/// A collapsible section where the forge renders one (`<details>` on GitHub and GitLab), else a
/// bold title over the section's text (Bitbucket Cloud shows HTML tags as text).
struct Fold {
    html: bool,
}

impl Fold {
    fn for_forge(forge: Forge) -> Fold {
        Fold {
            html: !matches!(forge, Forge::Bitbucket),
        }
    }

    /// The section's opening; `title` is Markdown with names in backticks.
    fn open(&self, title: &str) -> String {
        if self.html {
            format!("\n<details><summary>{}</summary>\n\n", code_tags(title))
        } else {
            format!("\n**{title}**\n\n")
        }
    }

    fn close(&self) -> &'static str {
        if self.html { "\n</details>\n" } else { "" }
    }
}

/// Backtick spans as `<code>` (inside `<summary>`, Markdown is not rendered).
fn code_tags(title: &str) -> String {
    let mut out = String::new();
    for (i, part) in title.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{part}</code>"));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// How much of each run the comment shows: everything when it fits the forge's limit, less when
/// not (a comment past it is refused, and the PR would show none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    /// Every step, the outputs, publications, summaries and failed steps' last lines.
    Full,
    /// Each run's message and its first `BRIEF_STEPS` steps; `BRIEF_ERRORS` validation errors.
    Brief,
    /// The table of runs and `BRIEF_ERRORS` validation errors.
    Table,
}

/// The steps a run lists in a brief comment.
const BRIEF_STEPS: usize = 30;

/// The validation errors a brief comment lists.
const BRIEF_ERRORS: usize = 20;

/// The comment's text for a pull request, within the forge's limit
/// ([`Forge::max_comment_chars`]): when all of it is too long, each run's details shrink to its
/// steps, then to its row of the table (each run's page has everything), with a line saying so;
/// past that (hundreds of pipelines), the table keeps the rows that fit.
pub fn render(
    store: &Store,
    pr: &PrRecord,
    public_url: &str,
    forge: Forge,
) -> Result<String, StoreError> {
    let limit = forge.max_comment_chars();
    let full = render_at(store, pr, public_url, forge, Detail::Full)?;
    if full.chars().count() <= limit {
        return Ok(full);
    }
    let note = format!(
        "\n_Cut to fit {}'s limit of {limit} characters: each run's page shows all of it._\n",
        forge.title()
    );
    let room = limit.saturating_sub(note.chars().count());
    let mut text = String::new();
    for detail in [Detail::Brief, Detail::Table] {
        text = render_at(store, pr, public_url, forge, detail)?;
        if text.chars().count() <= room {
            return Ok(text + &note);
        }
    }
    // Whole lines of the table, as many as fit (and a code block cut open is closed).
    let room = room.saturating_sub(4);
    let mut cut = String::new();
    let mut used = 0;
    let mut fenced = false;
    for line in text.split_inclusive('\n') {
        let n = line.chars().count();
        if used + n > room {
            break;
        }
        fenced ^= line.starts_with("```");
        cut.push_str(line);
        used += n;
    }
    if fenced {
        cut.push_str("```\n");
    }
    Ok(cut + &note)
}

fn render_at(
    store: &Store,
    pr: &PrRecord,
    public_url: &str,
    forge: Forge,
    detail: Detail,
) -> Result<String, StoreError> {
    let fold = Fold::for_forge(forge);
    let short = &pr.head_sha[..pr.head_sha.len().min(7)];
    let mut out = format!("{MARKER}\n### Gantry on `{short}`\n\n");
    if pr.runs.is_empty() && pr.invalid.is_empty() {
        out.push_str("No pipeline ran on this head.\n");
    }
    if !pr.runs.is_empty() {
        out.push_str("| Pipeline | Status | Duration | Run |\n|---|---|---|---|\n");
    }
    let mut details = String::new();
    for (pipeline, run_id) in &pr.runs {
        let Some(run) = store.get_run(run_id)? else {
            continue;
        };
        let secrets = secrets_of(store, &run);
        let duration = match (run.started_at, run.finished_at) {
            (Some(s), Some(f)) => seconds((f - s).num_milliseconds()),
            (Some(_), None) => "…".to_string(),
            _ => "-".to_string(),
        };
        let url = super::run_url(public_url, &run.id);
        out.push_str(&format!(
            "| `{}` | {} {} | {duration} | [#{}]({url}) |\n",
            cell(pipeline),
            icon(run.status),
            run.status.as_str(),
            run.number
        ));
        if detail == Detail::Table {
            continue;
        }
        let steps = store.steps(&run.id)?;
        let outputs = store.outputs(&run.id)?;
        details.push_str(&fold.open(&format!(
            "`{}` #{}: {}",
            cell(pipeline),
            run.number,
            run.status.as_str()
        )));
        if let Some(m) = &run.message {
            details.push_str(&format!("{}\n\n", quoted(&secrets.mask(m))));
        }
        let listed = match detail {
            Detail::Full => steps.len(),
            Detail::Brief | Detail::Table => steps.len().min(BRIEF_STEPS),
        };
        for step in &steps[..listed] {
            let took = step.duration_ms().map(seconds).unwrap_or_default();
            let note = step
                .message
                .as_deref()
                .map(|m| format!(": {}", quoted(&secrets.mask(m))))
                .unwrap_or_default();
            let state = match step.state {
                StepState::Succeeded => "✅",
                StepState::Failed | StepState::TimedOut | StepState::Error => "❌",
                StepState::Running => "🔄",
                StepState::Pending => "⏳",
                _ => "⏹️",
            };
            details.push_str(&format!(
                "- {state} `{}` {} {took}{note}\n",
                step.name,
                step.state.as_str()
            ));
        }
        if listed < steps.len() {
            details.push_str(&format!(
                "- … and {} more steps: [the run's page]({url}) lists them\n",
                steps.len() - listed
            ));
        }
        if detail != Detail::Full {
            details.push_str(fold.close());
            continue;
        }
        let shown: Vec<String> = outputs
            .iter()
            .filter(|o| !o.secret)
            .filter_map(|o| {
                o.value.as_ref().map(|v| {
                    format!(
                        "- `{}.{}` = {}",
                        o.step,
                        o.name,
                        crate::forge::code_span(&secrets.mask(v))
                    )
                })
            })
            .collect();
        if !shown.is_empty() {
            details.push_str("\nOutputs:\n");
            for line in shown {
                details.push_str(&line);
                details.push('\n');
            }
        }
        details.push_str(&published(store, &run, &secrets)?);
        for step in steps.iter().enumerate() {
            details.push_str(&step_text(store, &run, step, &secrets, &url, &fold)?);
        }
        details.push_str(fold.close());
    }
    out.push_str(&details);
    if !pr.invalid.is_empty() {
        out.push_str("\n**Pipelines that fail validation on this head**\n\n```text\n");
        let errors: Vec<_> = pr.invalid.values().flatten().collect();
        let listed = match detail {
            Detail::Full => errors.len(),
            Detail::Brief | Detail::Table => errors.len().min(BRIEF_ERRORS),
        };
        for e in &errors[..listed] {
            out.push_str(&format!("{}\n", one_line(&e.to_string())));
        }
        if listed < errors.len() {
            out.push_str(&format!("… and {} more errors\n", errors.len() - listed));
        }
        out.push_str("```\n");
    }
    if pr.from_fork {
        out.push_str(
            "\nThis pull request comes from a fork: its pipelines do not run on their own. A user \
             with write access can start one with `/gantry run <pipeline>`.\n",
        );
    }
    Ok(out)
}
