//! Rendering a plan step into an owned [`Job`]: every reference resolved, every path checked.
//!
//! The scheduler renders a step once, when all it needs has finished, so the values it reads are
//! final; retries reuse the rendered job. A reference without a value is an error naming it.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::Shared;
use crate::executor::{Publication, Values};
use crate::plan::{Action, PlanStep};
use crate::spec::expr::{Ref, Text};
use crate::spec::model::{Output, Retry};

/// A step ready to run, with nothing left to resolve.
#[derive(Debug)]
pub(super) struct Job {
    pub index: usize,
    pub name: String,
    pub work: Work,
    pub outputs: Vec<Output>,
    pub retry: Option<Retry>,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub(super) enum Work {
    Process(Spawn),
    /// `gantry/git-checkout@v1` into `dest`, which is `rel` inside the workspace.
    Checkout {
        dest: PathBuf,
        rel: String,
    },
    Publish(Box<Publication>),
}

/// A child process to start.
pub(super) struct Spawn {
    pub program: Program,
    /// The step's own variables, set after the run's. Values may hold secrets, so `Debug` shows
    /// the names only.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

impl fmt::Debug for Spawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Spawn")
            .field("program", &self.program)
            .field("env", &names)
            .field("cwd", &self.cwd)
            .finish()
    }
}

#[derive(Debug)]
pub(super) enum Program {
    /// Runs under `/bin/sh -e -c`.
    Shell(String),
    /// Starts with `#!`: written to a file and executed directly.
    Shebang(String),
    /// A program and its arguments, no shell.
    Exec(Vec<String>),
}

/// Renders step `index` with the values known now.
pub(super) fn prepare(
    index: usize,
    step: &PlanStep,
    values: &Values,
    shared: &Shared,
) -> Result<Job, String> {
    let work = match &step.action {
        Action::Script { source } => {
            let script = render(source, values, "script")?;
            let cwd = working_dir(step, values, &shared.workspace)?;
            let env = env(step, values)?;
            let program = if script.starts_with("#!") {
                Program::Shebang(script)
            } else {
                Program::Shell(script)
            };
            Work::Process(Spawn { program, env, cwd })
        }
        Action::Exec { argv } => {
            let argv = argv
                .iter()
                .enumerate()
                .map(|(i, t)| render(t, values, if i == 0 { "command" } else { "args" }))
                .collect::<Result<Vec<_>, _>>()?;
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err("the command is empty".into());
            }
            let cwd = working_dir(step, values, &shared.workspace)?;
            let env = env(step, values)?;
            Work::Process(Spawn {
                program: Program::Exec(argv),
                env,
                cwd,
            })
        }
        Action::GitCheckout { path } => {
            let raw = match path {
                Some(t) => render(t, values, "path")?,
                None => String::new(),
            };
            let rel = inside_workspace("path", &raw)?;
            let shown = if rel.as_os_str().is_empty() {
                ".".to_string()
            } else {
                rel.to_string_lossy().into_owned()
            };
            Work::Checkout {
                dest: shared.workspace.join(&rel),
                rel: shown,
            }
        }
        Action::Publish(resource) => Work::Publish(Box::new(crate::executor::publish::resolve(
            resource, values,
        )?)),
    };
    Ok(Job {
        index,
        name: step.name.clone(),
        work,
        outputs: step.outputs.clone(),
        retry: step.retry.clone(),
        timeout: step.timeout,
    })
}

fn render(text: &Text, values: &Values, what: &str) -> Result<String, String> {
    text.render(|r| values.resolve(r))
        .map_err(|r| unresolved(what, &r))
}

fn unresolved(what: &str, r: &Ref) -> String {
    format!("{what}: `{{{{{r}}}}}` has no value")
}

fn env(step: &PlanStep, values: &Values) -> Result<Vec<(String, String)>, String> {
    step.env
        .iter()
        .map(|(k, v)| {
            let value = v
                .render(|r| values.resolve(r))
                .map_err(|r| unresolved(&format!("env `{k}`"), &r))?;
            Ok((k.clone(), value))
        })
        .collect()
}

fn working_dir(step: &PlanStep, values: &Values, workspace: &Path) -> Result<PathBuf, String> {
    match &step.working_dir {
        None => Ok(workspace.to_path_buf()),
        Some(t) => {
            let raw = render(t, values, "workingDir")?;
            Ok(workspace.join(inside_workspace("workingDir", &raw)?))
        }
    }
}

/// A relative path that cannot leave the workspace: no root, no `..`. (Symlinks inside the
/// workspace are followed; steps run arbitrary code anyway, so this guards against mistakes.)
pub(super) fn inside_workspace(what: &str, raw: &str) -> Result<PathBuf, String> {
    let mut rel = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "{what} `{raw}` must stay inside the workspace: `..` is not allowed"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{what} `{raw}` must be a path relative to the workspace"
                ));
            }
        }
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_env_names_only() {
        let spawn = Spawn {
            program: Program::Shell("deploy".into()),
            env: vec![("DB_PASSWORD".into(), "hunter2".into())],
            cwd: PathBuf::from("/w"),
        };
        let shown = format!("{spawn:?}");
        assert!(
            shown.contains("DB_PASSWORD") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
