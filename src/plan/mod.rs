//! The execution plan: a validated pipeline turned into a graph of steps ready for an executor.
//!
//! Planning is a pure function. It resolves what the file left indirect: user templates are expanded
//! (their `{{inputs.*}}` replaced by the step's arguments or the inputs' defaults, their env merged
//! under the step's), and the two ordering forms of the spec, a sequence with parallel groups or a
//! DAG, become one form: every step lists the steps it needs. What remains in the texts are run-time
//! references only (parameters, variables, secrets, step outputs, run, git, trigger, pr).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::spec::expr::Text;
use crate::spec::model::{
    Body, ContinueOn, Output, Pipeline, Resource, Retry, Step, StepItem, StepRun, Template,
};
use crate::spec::when::When;

/// A pipeline ready to execute.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub pipeline: String,
    /// The whole-run limit.
    pub timeout: Duration,
    /// Whether steps may reach the network (`sandbox.network`).
    pub network: bool,
    /// Steps in file order. `needs` indices always point into this list.
    pub steps: Vec<PlanStep>,
    /// Names of the variables the run must have.
    pub variables: Vec<String>,
    /// Names of the secrets the run must have.
    pub secrets: Vec<String>,
}

/// One step with everything resolved but run-time values.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    pub name: String,
    /// Indices of the steps that must have finished (succeeded, been skipped, or failed under
    /// `continueOn`) before this one may start.
    pub needs: Vec<usize>,
    pub action: Action,
    /// Container image, for executors that use one.
    pub image: Option<Text>,
    /// Environment, template entries first and overridden by the step's own.
    pub env: Vec<(String, Text)>,
    /// Relative to the run's workspace.
    pub working_dir: Option<Text>,
    pub outputs: Vec<Output>,
    pub when: Option<When>,
    pub retry: Option<Retry>,
    pub timeout: Option<Duration>,
    pub continue_on: ContinueOn,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A script; a `#!` first line picks the interpreter, `/bin/sh -e` otherwise.
    Script { source: Text },
    /// A program and its arguments, without a shell.
    Exec { argv: Vec<Text> },
    /// `gantry/git-checkout@v1`.
    GitCheckout { path: Option<Text> },
    /// `gantry/marketplace-publish@v1`.
    Publish(Box<Resource>),
}

impl Plan {
    /// Indices of the steps in an order where every step comes after all it needs (Kahn's
    /// algorithm, ties broken by file order). A valid pipeline has no cycle, so every step appears.
    pub fn topological_order(&self) -> Vec<usize> {
        let n = self.steps.len();
        let mut waiting: Vec<usize> = self.steps.iter().map(|s| s.needs.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, s) in self.steps.iter().enumerate() {
            for &d in &s.needs {
                dependents[d].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &j in &dependents[i] {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.insert(j);
                }
            }
        }
        order
    }

    pub fn step(&self, name: &str) -> Option<&PlanStep> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Whether output `output` of step `step` is declared secret.
    pub fn is_secret_output(&self, step: &str, output: &str) -> bool {
        self.step(step)
            .is_some_and(|s| s.outputs.iter().any(|o| o.name == output && o.secret))
    }
}

/// Builds the plan of a validated pipeline.
pub fn plan(p: &Pipeline) -> Plan {
    let dag = p.is_dag();
    let mut steps = Vec::new();
    let mut index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in p.all_steps().enumerate() {
        index_of.insert(s.name.as_str(), i);
    }
    // In a sequence, each item needs the whole previous item (the rest follows transitively).
    let mut previous: Vec<usize> = Vec::new();
    let mut next_index = 0;
    for item in &p.steps {
        let members: &[Step] = match item {
            StepItem::Step(s) => std::slice::from_ref(s.as_ref()),
            StepItem::Parallel(group) => group,
        };
        let mut current = Vec::with_capacity(members.len());
        for s in members {
            let needs = if dag {
                let mut deps: Vec<usize> = s
                    .depends_on
                    .iter()
                    .filter_map(|d| index_of.get(d.as_str()).copied())
                    .collect();
                deps.sort_unstable();
                deps.dedup();
                deps
            } else {
                previous.clone()
            };
            steps.push(plan_step(p, s, needs));
            current.push(next_index);
            next_index += 1;
        }
        previous = current;
    }
    Plan {
        pipeline: p.name().to_string(),
        timeout: p.timeout,
        network: p.network,
        steps,
        variables: p.variables.clone(),
        secrets: p.secrets.clone(),
    }
}

fn plan_step(p: &Pipeline, s: &Step, needs: Vec<usize>) -> PlanStep {
    let mut env = Vec::new();
    let mut image = s.image.clone();
    let mut working_dir = s.working_dir.clone();
    let mut outputs = Vec::new();
    let action = match &s.run {
        StepRun::Body(body) => body_action(body, |t| t.clone()),
        StepRun::GitCheckout { path } => Action::GitCheckout { path: path.clone() },
        StepRun::Publish(resource) => Action::Publish(resource.clone()),
        StepRun::Template { name, arguments } => match p.template(name) {
            Some(t) => {
                let expand = |text: &Text| expand_inputs(text, t, arguments);
                env.extend(t.env.iter().map(|(k, v)| (k.clone(), expand(v))));
                image = image.or_else(|| t.image.as_ref().map(expand));
                working_dir = working_dir.or_else(|| t.working_dir.as_ref().map(expand));
                outputs.extend(t.outputs.iter().cloned());
                body_action(&t.body, expand)
            }
            // Validation rejects unknown templates; a plan of an unvalidated file gets an empty script.
            None => Action::Script {
                source: Text::default(),
            },
        },
    };
    for (k, v) in &s.env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    outputs.extend(s.outputs.iter().cloned());
    PlanStep {
        name: s.name.clone(),
        needs,
        action,
        image,
        env,
        working_dir,
        outputs,
        when: s.when.clone(),
        retry: s.retry.clone(),
        timeout: s.timeout,
        continue_on: s.continue_on,
    }
}

fn body_action(body: &Body, map: impl Fn(&Text) -> Text) -> Action {
    match body {
        Body::Script(source) => Action::Script {
            source: map(source),
        },
        Body::Command { command, args } => Action::Exec {
            argv: command.iter().chain(args).map(map).collect(),
        },
    }
}

/// Replaces `{{inputs.X}}` by the step's argument for X, or X's default.
fn expand_inputs(text: &Text, t: &Template, arguments: &BTreeMap<String, Text>) -> Text {
    text.splice(|name| {
        arguments.get(name).cloned().or_else(|| {
            t.inputs
                .iter()
                .find(|i| i.name == name)
                .and_then(|i| i.default.clone())
        })
    })
}

#[cfg(test)]
mod tests;
