//! The executors a process runs with, by name: what the queue sends a run to and what recovery
//! hands a lost run back to. A run goes to the executor its source or pipeline names (the
//! service's `ExecutorFor`), else to the default; the name is recorded on the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::executor::{Executor, Limits};

/// One executor, with the limits of the runs it runs.
#[derive(Clone)]
pub struct Registered {
    pub executor: Arc<dyn Executor>,
    pub limits: Limits,
}

/// The executors by name, and the default.
#[derive(Clone)]
pub struct Executors {
    default: String,
    by_name: BTreeMap<String, Registered>,
}

impl Executors {
    /// Only `executor`, under `name`, which is also the default.
    pub fn single(name: &str, executor: Arc<dyn Executor>, limits: Limits) -> Executors {
        let mut set = Executors {
            default: name.to_string(),
            by_name: BTreeMap::new(),
        };
        set.register(name, executor, limits);
        set
    }

    /// An empty set whose default is `default` (registered later).
    pub fn with_default(default: &str) -> Executors {
        Executors {
            default: default.to_string(),
            by_name: BTreeMap::new(),
        }
    }

    pub fn register(&mut self, name: &str, executor: Arc<dyn Executor>, limits: Limits) {
        self.by_name
            .insert(name.to_string(), Registered { executor, limits });
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The executor `name` names, or the default for `None`.
    pub fn get(&self, name: Option<&str>) -> Option<(&str, &Registered)> {
        let name = name.unwrap_or(&self.default);
        self.by_name
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Registered)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The longest kill grace of any executor: how long a stop may take to be seen through.
    pub fn longest_kill_grace(&self) -> Duration {
        self.by_name
            .values()
            .map(|r| r.limits.kill_grace)
            .max()
            .unwrap_or_default()
    }
}
