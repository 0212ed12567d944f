//! What `gantry run` shows while a run goes: one line per step with its state (indicatif, on a
//! terminal) and every log line prefixed by its step; plain lines when output is not a terminal.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::executor::{Event, StepStatus, Stream};
use crate::plan::Plan;
use crate::store::{RunRecord, StepRecord};

pub struct Progress {
    multi: Option<MultiProgress>,
    bars: Vec<Option<ProgressBar>>,
    started: Vec<Option<Instant>>,
    width: usize,
}

impl Progress {
    pub fn new(plan: &Plan, plain: bool) -> Progress {
        let fancy =
            !plain && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Progress {
            multi: fancy.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: vec![None; plan.steps.len()],
            started: vec![None; plan.steps.len()],
            width: plan
                .steps
                .iter()
                .map(|s| s.name.len())
                .max()
                .unwrap_or(4)
                .min(24),
        }
    }

    fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                if m.println(text).is_err() {
                    println!("{text}");
                }
            }
            None => println!("{text}"),
        }
    }

    pub fn header(&self, text: &str) {
        eprintln!("{text}");
    }

    pub fn event(&mut self, plan: &Plan, event: &Event) {
        let name = |i: usize| plan.steps.get(i).map(|s| s.name.as_str()).unwrap_or("?");
        match event {
            Event::Attached { .. } => {}
            Event::StepStarted { step, attempt, .. } => {
                if let Some(started) = self.started.get_mut(*step) {
                    started.get_or_insert_with(Instant::now);
                }
                let label = if *attempt > 1 {
                    format!("{} (attempt {attempt})", name(*step))
                } else {
                    name(*step).to_string()
                };
                match (&self.multi, self.bars.get_mut(*step)) {
                    (Some(m), Some(slot)) => {
                        let bar = slot.get_or_insert_with(|| {
                            let bar = m.add(ProgressBar::new_spinner());
                            bar.set_style(
                                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            bar.enable_steady_tick(std::time::Duration::from_millis(120));
                            bar
                        });
                        bar.set_message(label);
                    }
                    _ => eprintln!("==> {label}"),
                }
            }
            Event::Log {
                step,
                stream,
                lines,
                ..
            } => {
                let marker = match stream {
                    Stream::Stdout => "|",
                    Stream::Stderr => "!",
                    Stream::System => "#",
                };
                for line in lines {
                    self.line(&format!(
                        "{:<w$} {marker} {line}",
                        name(*step),
                        w = self.width
                    ));
                }
            }
            Event::AttemptFinished {
                step,
                status,
                exit_code,
                retry_in: Some(delay),
                ..
            } => {
                let why = match (status, exit_code) {
                    (StepStatus::Failed, Some(code)) => format!("exit {code}"),
                    (s, _) => status_word(*s).to_string(),
                };
                let text = format!("{} failed ({why}); retrying in {:.0?}", name(*step), delay);
                match self.bars.get(*step).and_then(Option::as_ref) {
                    Some(bar) => bar.set_message(text),
                    None => eprintln!("... {text}"),
                }
            }
            Event::StepFinished {
                step,
                status,
                message,
                ..
            } => {
                let elapsed = self
                    .started
                    .get(*step)
                    .copied()
                    .flatten()
                    .map(|s| format!(" in {:.1?}", s.elapsed()))
                    .unwrap_or_default();
                let detail = message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                let text = format!("{} {}{elapsed}{detail}", name(*step), status_word(*status));
                match self.bars.get_mut(*step).and_then(Option::take) {
                    Some(bar) => bar.finish_with_message(text),
                    None => eprintln!("<== {text}"),
                }
            }
            Event::AttemptFinished { .. }
            | Event::Outputs { .. }
            | Event::Published { .. }
            | Event::Summary { .. } => {}
        }
    }

    pub fn finish(&mut self) {
        for bar in self.bars.iter_mut().filter_map(Option::take) {
            bar.finish();
        }
    }

    pub fn summary(&mut self, run: &RunRecord, steps: &[StepRecord]) {
        self.finish();
        let duration = match (run.started_at, run.finished_at) {
            (Some(s), Some(f)) => format!(" in {:.1}s", (f - s).num_milliseconds() as f64 / 1000.0),
            _ => String::new(),
        };
        let counts = steps
            .iter()
            .fold(std::collections::BTreeMap::new(), |mut m, s| {
                *m.entry(s.state.as_str()).or_insert(0) += 1;
                m
            });
        let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        eprintln!(
            "run #{} of {} {}{duration} ({}){}",
            run.number,
            run.pipeline,
            run.status.as_str(),
            counts.join(", "),
            run.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
}

fn status_word(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::TimedOut => "timed out",
        StepStatus::Error => "errored",
        StepStatus::Skipped => "skipped",
        StepStatus::Cancelled => "cancelled",
    }
}
