//! The rules every executor obeys, defined once: when a step runs (`when`, and what a step that
//! did not pass does to the steps after it), when an attempt is tried again, and what the outputs
//! of a step that did not run read as. The local executor evaluates them as it schedules; the Argo
//! compiler states them in Argo's fields (`when`, `continueOn`, `retryStrategy`), and its tests
//! check that what it states is what these functions decide.

use std::time::Duration;

use super::{StepStatus, Values};
use crate::plan::PlanStep;
use crate::spec::model::{ContinueOn, Retry, RetryPolicy};

/// What the outputs of a skipped step (or one a failure kept from running) read as: empty, so
/// that `{{steps.x.outputs.y}}` after a step that may not run still resolves.
pub const SKIPPED_OUTPUT: &str = "";

/// Whether a step that ended with `status` lets its dependents run and the run succeed: a success
/// or a skip always does; a failure (non-zero exit) when `continueOn.failed`; an error or a
/// timeout (the step could not run to an end) when `continueOn.error`; a cancel never does.
pub fn passes(continue_on: ContinueOn, status: StepStatus) -> bool {
    match status {
        StepStatus::Succeeded | StepStatus::Skipped => true,
        StepStatus::Failed => continue_on.failed,
        StepStatus::Error | StepStatus::TimedOut => continue_on.error,
        StepStatus::Cancelled => false,
    }
}

/// When a step ended in a way that does not pass, why the steps after it do not run (they are
/// skipped with `not run: <reason>`, and their own dependents inherit the same reason).
pub fn blocks(step: &PlanStep, status: StepStatus) -> Option<String> {
    if passes(step.continue_on, status) {
        return None;
    }
    Some(ended(&step.name, status))
}

/// How a step that did not succeed ended, in the words of a "not run" reason: "`x` failed".
pub fn ended(step: &str, status: StepStatus) -> String {
    let what = match status {
        StepStatus::Failed => "failed",
        StepStatus::TimedOut => "timed out",
        StepStatus::Cancelled => "was cancelled",
        _ => "could not run",
    };
    format!("`{step}` {what}")
}

/// Whether an attempt that ended with `status` is tried again under `policy`: `OnFailure` only
/// after a non-zero exit; `Always` after any end but a success or a cancel.
pub fn retries(policy: RetryPolicy, status: StepStatus) -> bool {
    match policy {
        RetryPolicy::OnFailure => status == StepStatus::Failed,
        RetryPolicy::Always => matches!(
            status,
            StepStatus::Failed | StepStatus::TimedOut | StepStatus::Error
        ),
    }
}

/// The wait before the attempt after attempt `attempt` (1-based), when `status` is retried and
/// attempts are left; `None` when the step ends with this attempt.
pub fn retry_after(retry: Option<&Retry>, attempt: u32, status: StepStatus) -> Option<Duration> {
    let retry = retry?;
    let attempts = retry.limit.saturating_add(1);
    (attempt < attempts && retries(retry.policy, status)).then(|| retry.delay(attempt))
}

/// What a step's `when` decides, with the values known when the steps it needs have ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhenDecision {
    /// No `when`, or it is true.
    Run,
    /// It is false: the step is skipped, which passes.
    Skip,
    /// It cannot be evaluated (a value that is not a number where one is compared as one): the
    /// step is an error.
    Error(String),
}

/// Evaluates a step's `when`.
pub fn when(step: &PlanStep, values: &Values) -> WhenDecision {
    let Some(when) = &step.when else {
        return WhenDecision::Run;
    };
    match when.eval(&mut |r| values.resolve(r)) {
        Ok(true) => WhenDecision::Run,
        Ok(false) => WhenDecision::Skip,
        Err(e) => WhenDecision::Error(format!("when: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDS: [StepStatus; 6] = [
        StepStatus::Succeeded,
        StepStatus::Failed,
        StepStatus::TimedOut,
        StepStatus::Error,
        StepStatus::Skipped,
        StepStatus::Cancelled,
    ];

    #[test]
    fn continue_on_tolerates_exactly_what_it_names() {
        let none = ContinueOn::default();
        let failed = ContinueOn {
            failed: true,
            error: false,
        };
        let error = ContinueOn {
            failed: false,
            error: true,
        };
        for status in ENDS {
            let always = matches!(status, StepStatus::Succeeded | StepStatus::Skipped);
            assert_eq!(passes(none, status), always, "{status:?}");
            assert_eq!(
                passes(failed, status),
                always || status == StepStatus::Failed,
                "{status:?}"
            );
            assert_eq!(
                passes(error, status),
                always || matches!(status, StepStatus::Error | StepStatus::TimedOut),
                "{status:?}"
            );
        }
    }

    #[test]
    fn retries_follow_the_policy_and_the_limit() {
        let retry = Retry {
            limit: 2,
            backoff: Duration::from_secs(1),
            factor: 2.0,
            max_backoff: None,
            policy: RetryPolicy::OnFailure,
        };
        assert_eq!(
            retry_after(Some(&retry), 1, StepStatus::Failed),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_after(Some(&retry), 2, StepStatus::Failed),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_after(Some(&retry), 3, StepStatus::Failed), None);
        assert_eq!(retry_after(Some(&retry), 1, StepStatus::TimedOut), None);
        assert_eq!(retry_after(None, 1, StepStatus::Failed), None);
        for status in ENDS {
            assert!(!retries(RetryPolicy::Always, status) || status != StepStatus::Cancelled);
            assert_eq!(
                retries(RetryPolicy::Always, status),
                matches!(
                    status,
                    StepStatus::Failed | StepStatus::TimedOut | StepStatus::Error
                ),
                "{status:?}"
            );
        }
    }
}
