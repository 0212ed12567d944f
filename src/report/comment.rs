//! Gantry's one comment on a pull request, rendered from the store.
//!
//! It lists each pipeline's latest run on the PR's head (status, duration, steps, non-secret
//! outputs, link) and the pipeline files that fail validation there. A hidden marker lets Gantry
//! find the comment again if the store lost its id. Every value that could carry a secret goes
//! through the run's secret mask first; secret outputs are never listed.

use crate::executor::mask::Secrets;
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

/// The comment's text for a pull request.
pub fn render(store: &Store, pr: &PrRecord, public_url: &str) -> Result<String, StoreError> {
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
        let steps = store.steps(&run.id)?;
        let outputs = store.outputs(&run.id)?;
        details.push_str(&format!(
            "\n<details><summary><code>{}</code> #{}: {}</summary>\n\n",
            cell(pipeline),
            run.number,
            run.status.as_str()
        ));
        if let Some(m) = &run.message {
            details.push_str(&format!("{}\n\n", quoted(&secrets.mask(m))));
        }
        for step in &steps {
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
        details.push_str("\n</details>\n");
    }
    out.push_str(&details);
    if !pr.invalid.is_empty() {
        out.push_str("\n**Pipelines that fail validation on this head**\n\n```text\n");
        for errors in pr.invalid.values() {
            for e in errors {
                out.push_str(&format!("{}\n", one_line(&e.to_string())));
            }
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
