//! Plan → Argo Workflow (see the module documentation of `argo`).
//!
//! A pure function: the same plan, run and options always give the same object. Parameter and
//! variable values travel as `spec.arguments.parameters` and are referenced as
//! `{{workflow.parameters.*}}`, so a value is never pasted into a template where Argo would read
//! `{{...}}` in it as a reference of its own; run facts (id, commit, trigger) are literal.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::executor::GitInfo;
use crate::plan::{Action, Plan, PlanStep};
use crate::spec::expr::{Part, Ref, Text};
use crate::spec::model::RetryPolicy;
use crate::spec::when::{CmpOp, When};

/// Where the shared workspace is mounted in every step's container.
pub const WORKSPACE: &str = "/workspace";
/// `$GANTRY_OUTPUTS` inside every step's container.
pub const OUTPUTS: &str = "/gantry/outputs";

/// How the executor's installation wants Workflows built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub namespace: String,
    /// The image of steps that name none.
    pub image: String,
    /// The image that runs `gantry/git-checkout@v1` (needs `git` and `sh`).
    pub checkout_image: String,
    pub service_account: Option<String>,
    /// The size of the workspace volume claim.
    pub workspace_size: String,
    /// `spec.podGC.strategy`, e.g. `OnPodCompletion`.
    pub pod_gc: Option<String>,
    /// `spec.ttlStrategy.secondsAfterCompletion`.
    pub ttl_seconds: Option<u64>,
    /// `spec.parallelism`: pods at once.
    pub parallelism: Option<u32>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            namespace: "default".into(),
            image: "debian:bookworm-slim".into(),
            checkout_image: "alpine/git:2.47.2".into(),
            service_account: None,
            workspace_size: "1Gi".into(),
            pod_gc: Some("OnPodCompletion".into()),
            ttl_seconds: Some(24 * 3600),
            parallelism: None,
        }
    }
}

/// The run a Workflow is compiled for.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    pub id: String,
    pub number: u64,
    pub source: String,
    pub pipeline: String,
    pub params: BTreeMap<String, String>,
    /// Declared parameters without a value: left for `argo submit -p NAME=VALUE`.
    pub unset_params: Vec<String>,
    pub vars: BTreeMap<String, String>,
    pub git: Option<GitInfo>,
    /// The URL `gantry/git-checkout@v1` fetches `git.sha` from.
    pub checkout_url: Option<String>,
    /// The fetch needs the https credentials kept in the run's Secret (`CHECKOUT_USERNAME`,
    /// `CHECKOUT_PASSWORD` keys).
    pub checkout_credentials: bool,
    pub trigger: String,
    pub pr: Option<u64>,
}

/// A compiled run: the Workflow, and the Secret it needs (by name and keys; values are filled in
/// by whoever creates it).
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub workflow: Value,
    pub secret_name: String,
    /// The run's secrets the Workflow reads, by name (each a key of the Secret).
    pub secret_keys: Vec<String>,
    /// The DAG task of each plan step, in plan order.
    pub tasks: Vec<String>,
    /// The one-time pad of each secret output: its step, its output, and its key in the Secret
    /// (whose value, `PAD_BYTES` random bytes in hex, the executor supplies).
    pub pads: Vec<(usize, String, String)>,
}

/// The run's Secret keys of the checkout's https credentials.
pub const CHECKOUT_USERNAME: &str = "gantry-checkout.username";
pub const CHECKOUT_PASSWORD: &str = "gantry-checkout.password";

/// The largest secret output on Argo, in bytes: the length of its one-time pad.
pub const PAD_BYTES: usize = 4096;

/// The Secret key of the pad that seals output `output` of task `task`.
pub fn pad_key(task: &str, output: &str) -> String {
    format!("gantry-pad.{task}.{output}")
}

/// The shell functions of the sealing wrapper (POSIX `sh`, `od`, `awk`): `gantry_seal FILE PAD`
/// replaces a secret output file by its bytes XORed with the pad, in hex; `gantry_open HEX PAD`
/// prints the bytes again. Argo then holds only the hex, which without the pad (in the run's
/// Secret, deleted with the run) says nothing of the value.
const SEAL_FUNCTIONS: &str = r#"gantry_hex='BEGIN { for (i = 0; i < 256; i++) h[sprintf("%02x", i)] = i }
function xor(a, b,   x, bit, j) { x = 0; bit = 1; for (j = 0; j < 8; j++) { if ((a % 2) != (b % 2)) x += bit; a = int(a / 2); b = int(b / 2); bit *= 2 } return x }'
gantry_seal() {
  [ -f "$1" ] || return 0
  size=$(wc -c < "$1")
  if [ "$size" -gt PAD_BYTES ]; then echo "gantry: the secret output ${1##*/} is $size bytes; on Argo a secret output holds at most PAD_BYTES" >&2; return 1; fi
  od -An -v -tu1 "$1" | LC_ALL=C awk -v pad="$2" "$gantry_hex"'
{ for (i = 1; i <= NF; i++) { k++; printf "%02x", xor($i, h[substr(pad, 2 * k - 1, 2)]) } }' > "$1.sealed" && mv "$1.sealed" "$1"
}
gantry_open() {
  LC_ALL=C awk -v data="$1" -v pad="$2" "$gantry_hex"'
END { n = length(data) / 2; for (k = 1; k <= n; k++) printf "%c", xor(h[substr(data, 2 * k - 1, 2)], h[substr(pad, 2 * k - 1, 2)]) }' < /dev/null
}
"#;

/// A word quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "step `{step}` uses the secret output `{output}` inside a longer text: on Argo a secret output reaches a step sealed, and only a whole env value (`NAME: \"{{{{steps.….outputs.{output}}}}}\"`) is opened for it"
    )]
    SealedInText { step: String, output: String },
    #[error(
        "step `{step}` retries with backoff factor {factor}: Argo takes whole factors; use 1, 2, 3..."
    )]
    Factor { step: String, factor: f64 },
    #[error(
        "step `{step}` compares with a text holding both ' and \": an Argo condition can quote only one of them"
    )]
    Quote { step: String },
}

/// Compiles `plan` for the run `run`.
pub fn compile(plan: &Plan, run: &RunFacts, options: &Options) -> Result<Compiled, CompileError> {
    let names = task_names(plan);
    let secret_name = secret_name(&run.id);
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    let mut templates = Vec::new();
    let mut tasks = Vec::new();
    let mut publish_steps = Vec::new();
    let mut pads: Vec<(usize, String, String)> = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        for output in step.outputs.iter().filter(|o| o.secret) {
            let key = pad_key(&names[i], &output.name);
            secrets.insert(key.clone());
            pads.push((i, output.name.clone(), key));
        }
    }
    for (i, step) in plan.steps.iter().enumerate() {
        let cx = Cx {
            run,
            names: &names,
            plan,
        };
        let name = &names[i];
        if matches!(step.action, Action::Publish(_)) {
            publish_steps.push(step.name.clone());
        }
        templates.push(cx.template(step, name, options, &secret_name, &mut secrets, &mut pads)?);
        let mut task = json!({"name": name, "template": name});
        let deps: Vec<&String> = step.needs.iter().filter_map(|&d| names.get(d)).collect();
        if !deps.is_empty() {
            task["dependencies"] = json!(deps);
        }
        if let Some(when) = &step.when {
            task["when"] = json!(cx.when(when, step)?);
        }
        if step.continue_on.failed || step.continue_on.error {
            let mut c = serde_json::Map::new();
            if step.continue_on.failed {
                c.insert("failed".into(), json!(true));
            }
            if step.continue_on.error {
                c.insert("error".into(), json!(true));
            }
            task["continueOn"] = Value::Object(c);
        }
        tasks.push(task);
    }
    templates.insert(0, json!({"name": "main", "dag": {"tasks": tasks}}));

    let mut labels = serde_json::Map::new();
    labels.insert("gantry.dev/run-id".into(), json!(label_value(&run.id)));
    labels.insert("gantry.dev/source".into(), json!(label_value(&run.source)));
    labels.insert(
        "gantry.dev/pipeline".into(),
        json!(label_value(&run.pipeline)),
    );
    let mut annotations = serde_json::Map::new();
    annotations.insert("gantry.dev/run-id".into(), json!(run.id));
    annotations.insert(
        "gantry.dev/run-number".into(),
        json!(run.number.to_string()),
    );
    annotations.insert("gantry.dev/source".into(), json!(run.source));
    annotations.insert("gantry.dev/pipeline".into(), json!(run.pipeline));
    if let Some(git) = &run.git {
        annotations.insert("gantry.dev/commit".into(), json!(git.sha));
        annotations.insert("gantry.dev/ref".into(), json!(git.reference));
    }
    if !publish_steps.is_empty() {
        annotations.insert(
            "gantry.dev/publish-steps".into(),
            json!(publish_steps.join(",")),
        );
    }

    let mut parameters = Vec::new();
    for (k, v) in &run.params {
        parameters.push(json!({"name": param_name(k), "value": v}));
    }
    for k in &run.unset_params {
        parameters.push(json!({"name": param_name(k)}));
    }
    for (k, v) in &run.vars {
        parameters.push(json!({"name": var_name(k), "value": v}));
    }
    let mut spec = json!({
        "entrypoint": "main",
        "templates": templates,
        "activeDeadlineSeconds": plan.timeout.as_secs().max(1),
        "volumeClaimTemplates": [{
            "metadata": {"name": "workspace"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": options.workspace_size}}
            }
        }],
        "volumes": [{"name": "gantry-outputs", "emptyDir": {}}],
    });
    if !parameters.is_empty() {
        spec["arguments"] = json!({"parameters": parameters});
    }
    if let Some(sa) = &options.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    if let Some(p) = options.parallelism {
        spec["parallelism"] = json!(p);
    }
    if let Some(strategy) = &options.pod_gc {
        spec["podGC"] = json!({"strategy": strategy});
    }
    if let Some(ttl) = options.ttl_seconds {
        spec["ttlStrategy"] = json!({"secondsAfterCompletion": ttl});
    }
    let workflow = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": generate_name(&run.pipeline),
            "namespace": options.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    });
    Ok(Compiled {
        workflow,
        secret_name,
        secret_keys: secrets.into_iter().collect(),
        tasks: names,
        pads,
    })
}

/// The Secret of a compiled run. `values` fills it in; without them every value reads
/// `<redacted>` (what `gantry render` prints).
pub fn secret_manifest(
    compiled: &Compiled,
    namespace: &str,
    run_id: &str,
    values: Option<&BTreeMap<String, String>>,
) -> Value {
    let data: serde_json::Map<String, Value> = compiled
        .secret_keys
        .iter()
        .map(|k| {
            let v = values
                .and_then(|vals| vals.get(k).cloned())
                .unwrap_or_else(|| "<redacted>".into());
            (k.clone(), json!(v))
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": true,
        "metadata": {
            "name": compiled.secret_name,
            "namespace": namespace,
            "labels": {"gantry.dev/run-id": label_value(run_id)},
        },
        "stringData": data,
    })
}

/// The value of a run's `gantry.dev/run-id` label, by which its Workflow is found again.
pub fn run_label(run_id: &str) -> String {
    label_value(run_id)
}

/// The Secret's name for a run: DNS-1123, at most 63 characters.
pub fn secret_name(run_id: &str) -> String {
    let mut name = format!("gantry-run-{}", dns_label(run_id));
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// `generateName`: the API server keeps at most 58 characters of it and adds five.
fn generate_name(pipeline: &str) -> String {
    let mut base = format!("gantry-{}", dns_label(pipeline));
    base.truncate(57);
    let base = base.trim_end_matches('-');
    format!("{base}-")
}

/// Lower-case letters, digits and `-`, starting and ending alphanumeric.
fn dns_label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "x".into()
    } else {
        trimmed.to_string()
    }
}

/// A Kubernetes label value: at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Task and template names, one per step: `[a-zA-Z0-9][-a-zA-Z0-9]*`, unique, never `main`.
fn task_names(plan: &Plan) -> Vec<String> {
    let mut taken: BTreeSet<String> = BTreeSet::from(["main".to_string()]);
    plan.steps
        .iter()
        .map(|s| {
            let mut base: String = s
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            base = base.trim_matches('-').to_string();
            if base.is_empty() {
                base = "step".into();
            }
            base.truncate(120);
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}-{n}");
                n += 1;
            }
            taken.insert(name.clone());
            name
        })
        .collect()
}

fn param_name(name: &str) -> String {
    name.to_string()
}

fn var_name(name: &str) -> String {
    format!("gantry-var-{name}")
}

/// The hidden variable a secret is read into when its value is part of a longer text: the
/// key itself when it is an identifier (a secret's name), else its bytes in hex.
fn secret_env(key: &str) -> String {
    if crate::spec::values::is_identifier(key) {
        format!("GANTRY_SECRET_{key}")
    } else {
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        format!("GANTRY_SECRET_X{hex}")
    }
}

/// What starts the run's Secret key of a connection's credential; `NAME.KEY` follows.
pub const CONNECTION_PREFIX: &str = "gantry-conn.";

/// The run's Secret key a sealed reference is read from: a secret's name, or a connection's
/// credential (every credential of a connection goes through the Secret: whether a key is
/// secret is known only when the run starts).
fn sealed_key(r: &Ref) -> Option<String> {
    match r {
        Ref::Secret(s) => Some(s.clone()),
        Ref::Connection { name, key } => Some(format!("{CONNECTION_PREFIX}{name}.{key}")),
        _ => None,
    }
}

struct Cx<'a> {
    run: &'a RunFacts,
    names: &'a [String],
    plan: &'a Plan,
}

impl Cx<'_> {
    /// A reference as Argo text, or `None` for a secret (which never becomes Argo text).
    fn reference(&self, r: &Ref) -> Option<String> {
        let git = self.run.git.as_ref();
        Some(match r {
            Ref::Param(n) => format!("{{{{workflow.parameters.{}}}}}", param_name(n)),
            Ref::Var(n) => format!("{{{{workflow.parameters.{}}}}}", var_name(n)),
            Ref::Secret(_) | Ref::Connection { .. } => return None,
            Ref::StepOutput { step, output } => {
                let task = self
                    .plan
                    .steps
                    .iter()
                    .position(|s| &s.name == step)
                    .and_then(|i| self.names.get(i))
                    .cloned()
                    .unwrap_or_else(|| step.clone());
                format!("{{{{tasks.{task}.outputs.parameters.{output}}}}}")
            }
            // Inputs were spliced in by the plan.
            Ref::Input(n) => n.clone(),
            Ref::RunId => self.run.id.clone(),
            Ref::RunNumber => self.run.number.to_string(),
            Ref::GitSha => git.map(|g| g.sha.clone()).unwrap_or_default(),
            Ref::GitRef => git.map(|g| g.reference.clone()).unwrap_or_default(),
            Ref::GitRepo => git.map(|g| g.repo.clone()).unwrap_or_default(),
            Ref::TriggerKind => self.run.trigger.clone(),
            Ref::PrNumber => self.run.pr.map(|n| n.to_string()).unwrap_or_default(),
        })
    }

    /// A text without secrets as Argo text.
    fn text(&self, t: &Text) -> String {
        let mut out = String::new();
        for part in &t.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Ref { reference, .. } => {
                    out.push_str(&self.reference(reference).unwrap_or_default())
                }
            }
        }
        out
    }

    /// The env entries of one variable: a plain value, a whole secret from the run's Secret, or
    /// a text with secrets assembled from hidden variables by Kubernetes' `$(VAR)` expansion.
    fn env(
        &self,
        name: &str,
        value: &Text,
        secret_name: &str,
        secrets: &mut BTreeSet<String>,
        hidden: &mut Vec<Value>,
    ) -> Value {
        let secret_ref = |key: &str| json!({"secretKeyRef": {"name": secret_name, "key": key}});
        if let [Part::Ref { reference, .. }] = value.parts.as_slice()
            && let Some(s) = sealed_key(reference)
        {
            let entry = json!({"name": name, "valueFrom": secret_ref(&s)});
            secrets.insert(s);
            return entry;
        }
        let mut out = String::new();
        for part in &value.parts {
            match part {
                // `$(` would be expanded by Kubernetes: `$$(` keeps it literal.
                Part::Lit(s) => out.push_str(&s.replace("$(", "$$(")),
                Part::Ref { reference, .. } => match sealed_key(reference) {
                    Some(s) => {
                        if secrets.insert(s.clone())
                            || !hidden.iter().any(|h| h["name"] == secret_env(&s))
                        {
                            hidden
                                .push(json!({"name": secret_env(&s), "valueFrom": secret_ref(&s)}));
                        }
                        out.push_str(&format!("$({})", secret_env(&s)));
                    }
                    None => out.push_str(&self.reference(reference).unwrap_or_default()),
                },
            }
        }
        json!({"name": name, "value": out})
    }

    fn template(
        &self,
        step: &PlanStep,
        name: &str,
        options: &Options,
        secret_name: &str,
        secrets: &mut BTreeSet<String>,
        pads: &mut [(usize, String, String)],
    ) -> Result<Value, CompileError> {
        let mut hidden = Vec::new();
        // The sealing wrapper's lines: opening sealed values before the step, sealing its own
        // secret outputs after it.
        let mut open_lines: Vec<String> = Vec::new();
        let mut seal_lines: Vec<String> = Vec::new();
        let secret_ref = |key: &str| json!({"secretKeyRef": {"name": secret_name, "key": key}});
        let mut env = vec![
            json!({"name": "GANTRY_WORKSPACE", "value": WORKSPACE}),
            json!({"name": "WORKSPACE", "value": WORKSPACE}),
            json!({"name": "GANTRY_OUTPUTS", "value": OUTPUTS}),
            // Steps may write a summary on Argo too; it is not read back there yet.
            json!({"name": "GANTRY_SUMMARY", "value": format!("{OUTPUTS}/.summary.md")}),
            json!({"name": "GANTRY_STEP", "value": step.name}),
            json!({"name": "GANTRY_RUN_ID", "value": self.run.id}),
            json!({"name": "GANTRY_RUN_NUMBER", "value": self.run.number.to_string()}),
            json!({"name": "GANTRY_PIPELINE", "value": self.run.pipeline}),
        ];
        if let Some(git) = &self.run.git {
            env.push(json!({"name": "GANTRY_GIT_SHA", "value": git.sha}));
            env.push(json!({"name": "GANTRY_GIT_REF", "value": git.reference}));
        }
        let mut own = Vec::new();
        for (k, v) in &step.env {
            // A secret output arrives sealed: its pad too, and the wrapper opens it.
            let sealed: Vec<(String, String)> = v
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::Ref {
                        reference: Ref::StepOutput { step: from, output },
                        ..
                    } if self.plan.is_secret_output(from, output) => {
                        Some((from.clone(), output.clone()))
                    }
                    _ => None,
                })
                .collect();
            if let Some((from, output)) = sealed.first() {
                if v.parts.len() != 1 {
                    return Err(CompileError::SealedInText {
                        step: step.name.clone(),
                        output: output.clone(),
                    });
                }
                let task = self
                    .plan
                    .steps
                    .iter()
                    .position(|s| &s.name == from)
                    .and_then(|i| self.names.get(i))
                    .cloned()
                    .unwrap_or_default();
                let pad_var = format!("GANTRY_OPEN_{}", open_lines.len());
                hidden.push(
                    json!({"name": pad_var, "valueFrom": secret_ref(&pad_key(&task, output))}),
                );
                open_lines.push(format!(
                    "{k}=$(gantry_open \"${k}\" \"${pad_var}\") || exit 1; export {k}; unset {pad_var}"
                ));
            }
            own.push(self.env(k, v, secret_name, secrets, &mut hidden));
        }
        for (n, (_, output, key)) in pads
            .iter()
            .filter(|(i, _, _)| self.names.get(*i).map(String::as_str) == Some(name))
            .enumerate()
        {
            let pad_var = format!("GANTRY_PAD_{n}");
            hidden.push(json!({"name": pad_var, "valueFrom": secret_ref(key)}));
            open_lines.push(format!("gantry_pad_{n}=${pad_var}; unset {pad_var}"));
            seal_lines.push(format!(
                "gantry_seal \"$GANTRY_OUTPUTS\"/{} \"$gantry_pad_{n}\" || exit 1",
                sh_quote(output)
            ));
        }
        // Hidden secret variables first: `$(VAR)` expands only variables defined before it.
        env.extend(hidden);
        env.extend(own);
        let working_dir = match &step.working_dir {
            Some(dir) => format!("{WORKSPACE}/{}", self.text(dir).trim_start_matches('/')),
            None => WORKSPACE.to_string(),
        };
        let mounts = json!([
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "gantry-outputs", "mountPath": OUTPUTS},
        ]);
        let image = step
            .image
            .as_ref()
            .map(|i| self.text(i))
            .unwrap_or_else(|| options.image.clone());
        let mut template = json!({"name": name});
        match &step.action {
            Action::Script { source } => {
                let source = self.text(source);
                let command = match source.strip_prefix("#!") {
                    Some(rest) => {
                        let line = rest.lines().next().unwrap_or_default();
                        let words: Vec<String> =
                            line.split_whitespace().map(str::to_string).collect();
                        if words.is_empty() {
                            vec!["sh".to_string(), "-e".to_string()]
                        } else {
                            words
                        }
                    }
                    None => vec!["sh".to_string(), "-e".to_string()],
                };
                template["script"] = json!({
                    "image": image, "command": command, "source": source,
                    "env": env, "workingDir": working_dir, "volumeMounts": mounts,
                });
            }
            Action::Exec { argv } => {
                // Kubernetes expands `$(VAR)` in a container's command: `$$(` keeps it literal,
                // as it is for the same command run locally.
                let argv: Vec<String> = argv
                    .iter()
                    .map(|a| self.text(a).replace("$(", "$$("))
                    .collect();
                template["container"] = json!({
                    "image": image, "command": argv,
                    "env": env, "workingDir": working_dir, "volumeMounts": mounts,
                });
            }
            Action::GitCheckout { path } => {
                let dest = match path {
                    Some(p) => format!("{WORKSPACE}/{}", self.text(p).trim_start_matches('/')),
                    None => WORKSPACE.to_string(),
                };
                let url = self.run.checkout_url.clone().unwrap_or_default();
                let sha = self
                    .run
                    .git
                    .as_ref()
                    .map(|g| g.sha.clone())
                    .unwrap_or_default();
                env.push(json!({"name": "GANTRY_CHECKOUT_URL", "value": url}));
                env.push(json!({"name": "GANTRY_CHECKOUT_SHA", "value": sha}));
                env.push(json!({"name": "GANTRY_CHECKOUT_DEST", "value": dest}));
                // https credentials from the run's Secret, handed to git by a credential helper
                // that reads them from the environment: never on a command line or in a URL.
                if self.run.checkout_credentials {
                    for (var, key) in [
                        ("GANTRY_CHECKOUT_USERNAME", CHECKOUT_USERNAME),
                        ("GANTRY_CHECKOUT_PASSWORD", CHECKOUT_PASSWORD),
                    ] {
                        secrets.insert(key.to_string());
                        env.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}));
                    }
                }
                let source = "if [ -z \"$GANTRY_CHECKOUT_URL\" ] || [ -z \"$GANTRY_CHECKOUT_SHA\" ]; then echo 'no repository to check out: this run has no repository' >&2; exit 1; fi\n\
mkdir -p \"$GANTRY_CHECKOUT_DEST\" && cd \"$GANTRY_CHECKOUT_DEST\"\n\
git init -q .\n\
if [ -n \"${GANTRY_CHECKOUT_PASSWORD:-}\" ]; then git config credential.helper '!f() { echo \"username=$GANTRY_CHECKOUT_USERNAME\"; echo \"password=$GANTRY_CHECKOUT_PASSWORD\"; }; f'; fi\n\
git fetch -q --depth 1 \"$GANTRY_CHECKOUT_URL\" \"$GANTRY_CHECKOUT_SHA\" && git checkout -q FETCH_HEAD\n\
rm -rf .git\n\
printf %s \"$GANTRY_CHECKOUT_SHA\" > \"$GANTRY_OUTPUTS/sha\"\n\
printf %s \"${GANTRY_CHECKOUT_DEST#/workspace/}\" > \"$GANTRY_OUTPUTS/path\"\n";
                template["script"] = json!({
                    "image": options.checkout_image, "command": ["sh", "-e"], "source": source,
                    "env": env, "workingDir": WORKSPACE, "volumeMounts": mounts,
                });
                template["outputs"] = json!({"parameters": [
                    {"name": "sha", "valueFrom": {"path": format!("{OUTPUTS}/sha")}},
                    {"name": "path", "valueFrom": {"path": format!("{OUTPUTS}/path")}},
                ]});
            }
            // Publishing happens in Gantry, from the outputs the Workflow produced; the task keeps
            // its place in the graph.
            Action::Publish(_) => {
                template["script"] = json!({
                    "image": options.image, "command": ["sh", "-e"],
                    "source": "echo 'published by Gantry once the outputs it needs are in'\n",
                    "env": env, "workingDir": WORKSPACE, "volumeMounts": mounts,
                });
            }
        }
        if !open_lines.is_empty() || !seal_lines.is_empty() {
            // `sh -c WRAPPER gantry-step COMMAND...`: Argo appends a script's file to the
            // command, so `"$@"` runs the step as it would have run.
            let mut wrapper = SEAL_FUNCTIONS.replace("PAD_BYTES", &PAD_BYTES.to_string());
            for line in &open_lines {
                wrapper.push_str(line);
                wrapper.push('\n');
            }
            wrapper.push_str("\"$@\"; rc=$?; [ \"$rc\" -eq 0 ] || exit \"$rc\"\n");
            for line in &seal_lines {
                wrapper.push_str(line);
                wrapper.push('\n');
            }
            // Kubernetes expands `$(VAR)` in a command: `$$(` keeps the shell's own.
            let wrapper = wrapper.replace("$(", "$$(");
            for body in ["script", "container"] {
                if let Some(command) = template[body]["command"].as_array().cloned() {
                    let mut wrapped = vec![
                        json!("sh"),
                        json!("-c"),
                        json!(wrapper),
                        json!("gantry-step"),
                    ];
                    wrapped.extend(command);
                    template[body]["command"] = json!(wrapped);
                }
            }
        }
        if !step.outputs.is_empty() {
            let params: Vec<Value> = step
                .outputs
                .iter()
                .map(|o| {
                    json!({"name": o.name, "valueFrom": {"path": format!("{OUTPUTS}/{}", o.name)}})
                })
                .collect();
            template["outputs"] = json!({"parameters": params});
        }
        if let Some(retry) = &step.retry {
            if retry.factor.fract() != 0.0 || retry.factor < 1.0 {
                return Err(CompileError::Factor {
                    step: step.name.clone(),
                    factor: retry.factor,
                });
            }
            let mut backoff = json!({
                "duration": format!("{}s", retry.backoff.as_secs().max(1)),
                "factor": retry.factor as u64,
            });
            if let Some(cap) = retry.max_backoff {
                backoff["cap"] = json!(format!("{}s", cap.as_secs().max(1)));
            }
            template["retryStrategy"] = json!({
                "limit": retry.limit,
                "retryPolicy": match retry.policy {
                    RetryPolicy::OnFailure => "OnFailure",
                    RetryPolicy::Always => "Always",
                },
                "backoff": backoff,
            });
        }
        if let Some(timeout) = step.timeout {
            template["activeDeadlineSeconds"] = json!(timeout.as_secs().max(1));
        }
        Ok(template)
    }

    /// A `when` in Argo's expression syntax: each side a quoted string (numbers bare, so that
    /// `<` compares them as numbers, as Gantry does).
    fn when(&self, w: &When, step: &PlanStep) -> Result<String, CompileError> {
        Ok(match w {
            When::Or(a, b) => format!("({} || {})", self.when(a, step)?, self.when(b, step)?),
            When::And(a, b) => format!("({} && {})", self.when(a, step)?, self.when(b, step)?),
            When::Not(a) => format!("!({})", self.when(a, step)?),
            When::Truthy(t) => format!("{} == 'true'", self.operand(t, false, step)?),
            When::Cmp { op, lhs, rhs } => {
                let numeric = [lhs, rhs]
                    .iter()
                    .any(|t| t.as_literal().is_some_and(|l| l.parse::<f64>().is_ok()))
                    && !matches!(op, CmpOp::Eq | CmpOp::Ne);
                let op = match op {
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                format!(
                    "{} {op} {}",
                    self.operand(lhs, numeric, step)?,
                    self.operand(rhs, numeric, step)?
                )
            }
        })
    }

    fn operand(&self, t: &Text, bare: bool, step: &PlanStep) -> Result<String, CompileError> {
        let text = self.text(t);
        if bare {
            return Ok(text);
        }
        if !text.contains('\'') {
            Ok(format!("'{text}'"))
        } else if !text.contains('"') {
            Ok(format!("\"{text}\""))
        } else {
            Err(CompileError::Quote {
                step: step.name.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(yaml: &str) -> Plan {
        let checked = crate::spec::check(yaml);
        let pipeline = checked
            .pipeline
            .unwrap_or_else(|| panic!("invalid: {:?}", checked.diagnostics));
        crate::plan::plan(&pipeline)
    }

    fn run() -> RunFacts {
        RunFacts {
            id: "01JDRUN".into(),
            number: 3,
            source: "infra".into(),
            pipeline: "db-setup".into(),
            params: BTreeMap::from([("name".to_string(), "{{tasks.x}}".to_string())]),
            unset_params: Vec::new(),
            vars: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            git: Some(GitInfo {
                sha: "abc123".into(),
                reference: "refs/heads/main".into(),
                repo: "acme/infra".into(),
            }),
            checkout_url: Some("https://git.example/acme/infra.git".into()),
            checkout_credentials: false,
            trigger: "push".into(),
            pr: None,
        }
    }

    const HEAD: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: db-setup}\n";

    #[test]
    fn connection_credentials_are_read_from_the_run_s_secret() {
        let plan = plan_of(&format!(
            "{HEAD}connections: [orders-db]\nsteps:\n  - name: migrate\n    command: [sh, migrate.sh]\n    env: {{PGHOST: '{{{{connections.orders-db.host}}}}', URL: 'postgres://{{{{connections.orders-db.host}}}}/x'}}\n"
        ));
        let compiled = compile(&plan, &run(), &Options::default()).expect("compiles");
        assert_eq!(
            compiled.secret_keys,
            vec!["gantry-conn.orders-db.host".to_string()]
        );
        let template = &compiled.workflow["spec"]["templates"][1];
        let env = template["container"]["env"].as_array().expect("env");
        let find = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            find("PGHOST")["valueFrom"]["secretKeyRef"]["key"],
            "gantry-conn.orders-db.host"
        );
        let hidden = format!(
            "GANTRY_SECRET_X{}",
            "gantry-conn.orders-db.host"
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        assert_eq!(find("URL")["value"], format!("postgres://$({hidden})/x"));
        assert_eq!(
            find(&hidden)["valueFrom"]["secretKeyRef"]["key"],
            "gantry-conn.orders-db.host"
        );
    }

    #[test]
    fn steps_become_dag_tasks_with_dependencies_and_argo_references() {
        let plan = plan_of(&format!(
            "{HEAD}parameters: [{{name: name}}]\nvariables: [region]\nsecrets: [token]\nsteps:\n  - name: make-db\n    script: 'echo {{{{params.name}}}} > $GANTRY_OUTPUTS/id'\n    env: {{REGION: '{{{{vars.region}}}}', TOKEN: '{{{{secrets.token}}}}', AUTH: 'Bearer {{{{secrets.token}}}}'}}\n    outputs: [id]\n    retry: {{limit: 2, backoff: 5s, factor: 2}}\n    timeout: 2m\n  - name: use\n    script: 'echo {{{{steps.make-db.outputs.id}}}}'\n    when: '{{{{steps.make-db.outputs.id}}}} != none'\n"
        ));
        let compiled = compile(&plan, &run(), &Options::default()).expect("compiles");
        let wf = &compiled.workflow;
        let text = wf.to_string();
        assert_eq!(wf["metadata"]["generateName"], "gantry-db-setup-");
        let tasks = &wf["spec"]["templates"][0]["dag"]["tasks"];
        assert_eq!(tasks[0]["name"], "make-db");
        assert_eq!(tasks[1]["dependencies"], json!(["make-db"]));
        assert_eq!(
            tasks[1]["when"],
            "'{{tasks.make-db.outputs.parameters.id}}' != 'none'"
        );
        let make = &wf["spec"]["templates"][1];
        assert_eq!(
            make["script"]["source"],
            "echo {{workflow.parameters.name}} > $GANTRY_OUTPUTS/id"
        );
        assert_eq!(make["retryStrategy"]["limit"], 2);
        assert_eq!(make["activeDeadlineSeconds"], 120);
        assert_eq!(
            make["outputs"]["parameters"][0]["valueFrom"]["path"],
            "/gantry/outputs/id"
        );
        // The parameter's value travels as an argument, never pasted into a template.
        assert_eq!(
            wf["spec"]["arguments"]["parameters"][0],
            json!({"name": "name", "value": "{{tasks.x}}"})
        );
        assert_eq!(compiled.secret_keys, vec!["token".to_string()]);
        let env = make["script"]["env"].as_array().expect("env");
        let find = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(find("TOKEN")["valueFrom"]["secretKeyRef"]["key"], "token");
        assert_eq!(find("AUTH")["value"], "Bearer $(GANTRY_SECRET_token)");
        assert_eq!(
            find("GANTRY_SECRET_token")["valueFrom"]["secretKeyRef"]["name"],
            compiled.secret_name
        );
        assert!(!text.contains("s3cr3t"));
    }

    #[test]
    fn secret_outputs_are_sealed_and_only_opened_whole() {
        let plan = plan_of(&format!(
            "{HEAD}steps:\n  - name: gen\n    script: 'true'\n    outputs: [{{name: pw, secret: true}}]\n  - name: use\n    script: 'true'\n    env: {{PW: '{{{{steps.gen.outputs.pw}}}}'}}\n"
        ));
        let c = compile(&plan, &run(), &Options::default()).expect("compiles");
        assert_eq!(
            c.pads,
            [(0, "pw".to_string(), "gantry-pad.gen.pw".to_string())]
        );
        assert!(c.secret_keys.contains(&"gantry-pad.gen.pw".to_string()));
        let templates = c.workflow["spec"]["templates"]
            .as_array()
            .expect("templates");
        let make = &templates[1]["script"];
        assert_eq!(make["command"][0], "sh");
        assert!(
            make["command"][2]
                .as_str()
                .is_some_and(|w| w.contains("gantry_seal \"$GANTRY_OUTPUTS\"/'pw'"))
        );
        let use_ = &templates[2]["script"];
        assert!(
            use_["command"][2]
                .as_str()
                .is_some_and(|w| w.contains("PW=$$(gantry_open \"$PW\""))
        );
        let env = use_["env"].as_array().expect("env");
        assert!(env.iter().any(|e| e["name"] == "GANTRY_OPEN_0"
            && e["valueFrom"]["secretKeyRef"]["key"] == "gantry-pad.gen.pw"));

        let mixed = plan_of(&format!(
            "{HEAD}steps:\n  - name: gen\n    script: 'true'\n    outputs: [{{name: pw, secret: true}}]\n  - name: use\n    script: 'true'\n    env: {{AUTH: 'Bearer {{{{steps.gen.outputs.pw}}}}'}}\n"
        ));
        assert_eq!(
            compile(&mixed, &run(), &Options::default()).map(|_| ()),
            Err(CompileError::SealedInText {
                step: "use".into(),
                output: "pw".into()
            })
        );
    }

    #[test]
    fn a_command_keeps_dollar_parens_literal() {
        let plan = plan_of(&format!(
            "{HEAD}steps:\n  - name: echo\n    command: [echo, '$(HOME)']\n"
        ));
        let compiled = compile(&plan, &run(), &Options::default()).expect("compiles");
        assert_eq!(
            compiled.workflow["spec"]["templates"][1]["container"]["command"],
            json!(["echo", "$$(HOME)"])
        );
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert_eq!(secret_name("01JD_X"), "gantry-run-01jd-x");
        assert_eq!(label_value("local/my pipe"), "local-my-pipe");
        let long = "x".repeat(100);
        assert!(generate_name(&long).len() <= 58);
    }
}
