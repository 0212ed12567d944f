//! The pipeline model: what a valid pipeline file means, with YAML details gone.
//!
//! Every value here has passed validation. Strings that may hold expressions are [`Text`]; durations
//! are [`std::time::Duration`]; the `when` condition is an AST. Positions are kept only where a later
//! stage may still need to point back into the file (references inside texts).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::expr::Text;
use super::when::When;

pub const API_VERSION: &str = "gantry.dev/v1";
pub const KIND: &str = "Pipeline";
/// Where pipeline files live in a repository unless a watched repository configures other globs.
pub const DEFAULT_PIPELINE_GLOBS: [&str; 2] =
    [".gantry/pipelines/*.yaml", ".gantry/pipelines/*.yml"];
/// The whole-run limit when the file sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub metadata: Metadata,
    pub on: Triggers,
    pub concurrency: Option<Concurrency>,
    pub timeout: Duration,
    /// `sandbox.network`: whether steps reach the network (the local sandbox; default true).
    pub network: bool,
    pub parameters: Vec<Parameter>,
    pub variables: Vec<String>,
    pub secrets: Vec<String>,
    /// Marketplace connections the steps read credentials from (`{{connections.NAME.KEY}}`).
    pub connections: Vec<String>,
    pub templates: Vec<Template>,
    pub steps: Vec<StepItem>,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }

    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// All steps in file order, groups flattened.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().flat_map(|item| match item {
            StepItem::Step(step) => std::slice::from_ref(step.as_ref()).iter(),
            StepItem::Parallel(group) => group.iter(),
        })
    }

    /// True when any step declares `dependsOn`: the steps then form a DAG.
    pub fn is_dag(&self) -> bool {
        self.all_steps().any(|s| !s.depends_on.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Metadata {
    pub name: String,
    #[serde(rename = "displayName", skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Triggers {
    /// Runs from the CLI, the API or the UI. Default true.
    pub manual: bool,
    pub push: Option<PushTrigger>,
    #[serde(rename = "pullRequest")]
    pub pull_request: Option<PullRequestTrigger>,
    /// PR comments `/gantry run <pipeline>` start a run.
    pub comment: bool,
    pub schedule: Vec<Schedule>,
}

impl Default for Triggers {
    fn default() -> Triggers {
        Triggers {
            manual: true,
            push: None,
            pull_request: None,
            comment: false,
            schedule: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, schemars::JsonSchema)]
pub struct PushTrigger {
    /// Glob patterns on the branch name; empty means the watched branch.
    pub branches: Vec<String>,
    /// Glob patterns on changed paths; empty means any change.
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PullRequestTrigger {
    /// Glob patterns on the PR's target branch; empty means any.
    pub branches: Vec<String>,
    pub paths: Vec<String>,
    pub types: Vec<PullRequestType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullRequestType {
    Opened,
    Synchronize,
    Reopened,
    Closed,
}

impl PullRequestType {
    pub const ALL: [(&'static str, PullRequestType); 4] = [
        ("opened", PullRequestType::Opened),
        ("synchronize", PullRequestType::Synchronize),
        ("reopened", PullRequestType::Reopened),
        ("closed", PullRequestType::Closed),
    ];
    pub const DEFAULT: [PullRequestType; 3] = [
        PullRequestType::Opened,
        PullRequestType::Synchronize,
        PullRequestType::Reopened,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Schedule {
    /// The expression as written (5 fields, or 6 with seconds first).
    pub cron: String,
    /// IANA time zone name; `UTC` by default.
    pub timezone: String,
    pub parameters: BTreeMap<String, ParamValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Concurrency {
    /// Runs whose resolved group key is equal never overlap.
    pub group: Text,
    pub policy: ConcurrencyPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConcurrencyPolicy {
    #[serde(rename = "queue")]
    Queue,
    #[serde(rename = "cancel-running")]
    CancelRunning,
    #[serde(rename = "skip")]
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Enum,
}

impl ParamType {
    pub const ALL: [(&'static str, ParamType); 5] = [
        ("string", ParamType::String),
        ("integer", ParamType::Integer),
        ("number", ParamType::Number),
        ("boolean", ParamType::Boolean),
        ("enum", ParamType::Enum),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Enum => "enum",
        }
    }
}

/// A typed parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    String(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::String(s) => f.write_str(s),
            ParamValue::Integer(i) => write!(f, "{i}"),
            ParamValue::Number(n) => write!(f, "{n}"),
            ParamValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Parameter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(rename = "displayName", skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub inputs: Vec<Input>,
    pub body: Body,
    /// The container image: a string, with expressions but no secrets.
    pub image: Option<Text>,
    pub env: Vec<(String, Text)>,
    pub working_dir: Option<Text>,
    pub outputs: Vec<Output>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub default: Option<Text>,
}

/// What a step or template runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A script; a `#!` first line picks the interpreter, `/bin/sh -e` otherwise.
    Script(Text),
    /// A program and its arguments, run without a shell.
    Command { command: Vec<Text>, args: Vec<Text> },
}

/// A built-in template, addressed as `gantry/<name>@<version>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Builtin {
    GitCheckoutV1,
    MarketplacePublishV1,
}

impl Builtin {
    pub const ALL: [(&'static str, Builtin); 2] = [
        ("gantry/git-checkout@v1", Builtin::GitCheckoutV1),
        (
            "gantry/marketplace-publish@v1",
            Builtin::MarketplacePublishV1,
        ),
    ];

    pub fn id(self) -> &'static str {
        match self {
            Builtin::GitCheckoutV1 => "gantry/git-checkout@v1",
            Builtin::MarketplacePublishV1 => "gantry/marketplace-publish@v1",
        }
    }

    /// Outputs the built-in writes.
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Builtin::GitCheckoutV1 => &["sha", "path"],
            Builtin::MarketplacePublishV1 => &["name", "version"],
        }
    }
}

/// How a step gets its body.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRun {
    Body(Body),
    /// A template defined in this file, with its arguments.
    Template {
        name: String,
        arguments: BTreeMap<String, Text>,
    },
    /// `gantry/git-checkout@v1`: the pipeline's repository at the run's commit, into `path` of the
    /// workspace (default: the workspace itself).
    GitCheckout {
        path: Option<Text>,
    },
    /// `gantry/marketplace-publish@v1`.
    Publish(Box<Resource>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub run: StepRun,
    /// The container image: a string, with expressions but no secrets.
    pub image: Option<Text>,
    pub env: Vec<(String, Text)>,
    pub working_dir: Option<Text>,
    pub outputs: Vec<Output>,
    pub when: Option<When>,
    pub retry: Option<Retry>,
    pub timeout: Option<Duration>,
    pub continue_on: ContinueOn,
    pub depends_on: Vec<String>,
}

/// An item of `steps`: a step, or a group of steps that run in parallel.
#[derive(Debug, Clone, PartialEq)]
pub enum StepItem {
    Step(Box<Step>),
    Parallel(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    pub name: String,
    /// Masked in logs, encrypted at rest, never shown.
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    /// Retries after the first attempt.
    pub limit: u32,
    pub backoff: Duration,
    pub factor: f64,
    #[serde(rename = "maxBackoff")]
    pub max_backoff: Option<Duration>,
    pub policy: RetryPolicy,
}

impl Retry {
    /// The wait before retry number `n` (1-based): backoff × factor^(n-1), capped by `max_backoff`.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.backoff.as_secs_f64() * self.factor.powi(exp);
        let capped = match self.max_backoff {
            Some(max) => secs.min(max.as_secs_f64()),
            None => secs,
        };
        Duration::try_from_secs_f64(capped).unwrap_or(Duration::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RetryPolicy {
    /// Retry when the step exits non-zero (not on timeout or cancel).
    OnFailure,
    /// Retry on any unsuccessful end, timeouts included.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ContinueOn {
    /// The run does not fail because this step failed.
    pub failed: bool,
    /// The run does not fail because this step could not run (timeout, spawn error).
    pub error: bool,
}

/// What `gantry/marketplace-publish@v1` publishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub name: Text,
    pub version: Text,
    pub category: Category,
    pub description: Option<Text>,
    pub tags: Vec<Text>,
    pub properties: BTreeMap<String, Text>,
    #[serde(rename = "connectionCredentials")]
    pub connection_credentials: Vec<CredentialSet>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Database,
    Storage,
    Messaging,
    Cache,
    Ai,
    Service,
    Other,
}

impl Category {
    pub const ALL: [(&'static str, Category); 7] = [
        ("database", Category::Database),
        ("storage", Category::Storage),
        ("messaging", Category::Messaging),
        ("cache", Category::Cache),
        ("ai", Category::Ai),
        ("service", Category::Service),
        ("other", Category::Other),
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CredentialSet {
    pub environments: Vec<Text>,
    pub parameters: Vec<Credential>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Credential {
    pub key: String,
    pub value: Text,
    #[serde(rename = "isSecret")]
    pub is_secret: bool,
}
