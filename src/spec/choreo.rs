//! The Choreo shape: a file written to the Choreo Pipeline Specification (a simplified Argo dialect),
//! read as it is.
//!
//! A file without `apiVersion` and `kind` whose top level holds only Choreo's keys is a Choreo file.
//! [`rewrite`] turns its node tree into the node tree of the same pipeline in Gantry's own form,
//! keeping every node's position, so that `parse` and `validate` check it as usual and every
//! diagnostic still points into the file as written. Problems only a Choreo file can have are
//! reported here, worded with Choreo's field names. [`emit`] prints a rewritten tree as YAML
//! (`gantry convert`). This module does no IO.

use std::collections::{BTreeMap, BTreeSet};

use super::diagnostic::{Diagnostic, did_you_mean};
use super::expr::parse_text;
use super::model::{API_VERSION, Builtin, KIND};
use super::values;
use super::yaml::{Node, Pos, Value};

/// The top-level keys of a Choreo pipeline.
const TOP: &[&str] = &[
    "metadata",
    "steps",
    "templates",
    "containerTemplates",
    "arguments",
    "parameters",
    "volumeClaimTemplates",
    "volumes",
    "timeout",
];
/// Keys that make a file without `apiVersion` a Choreo file (at least one of them).
const MARKERS: &[&str] = &[
    "steps",
    "templates",
    "containerTemplates",
    "arguments",
    "parameters",
    "volumeClaimTemplates",
    "volumes",
];
const METADATA: &[&str] = &["name", "displayName", "description", "labels"];
const PARAMETER: &[&str] = &[
    "name",
    "displayName",
    "value",
    "default",
    "description",
    "enum",
];
const STEP: &[&str] = &[
    "name",
    "inlineScript",
    "script",
    "container",
    "containerSet",
    "template",
    "templateRef",
    "arguments",
    "image",
    "env",
    "workingDir",
    "outputs",
    "when",
    "retryStrategy",
    "timeout",
    "continueOn",
    "dependencies",
    "resources",
    "securityContext",
    "volumeMounts",
];
const TEMPLATE: &[&str] = &[
    "name",
    "inputs",
    "outputs",
    "inlineScript",
    "script",
    "container",
    "containerSet",
    "image",
    "command",
    "args",
    "env",
    "workingDir",
    "resources",
    "securityContext",
    "volumeMounts",
    "retryStrategy",
    "timeout",
    "when",
    "continueOn",
];
/// Template keys that belong on the calling step in Gantry.
const STEP_ONLY: &[&str] = &["retryStrategy", "timeout", "when", "continueOn"];
const ARGO_SCRIPT: &[&str] = &[
    "image",
    "command",
    "source",
    "env",
    "workingDir",
    "resources",
    "securityContext",
    "volumeMounts",
];
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "inlineScript",
    "containerTemplate",
    "command",
    "args",
    "env",
    "workingDir",
    "dependencies",
    "resources",
    "securityContext",
    "volumeMounts",
];
const CONTAINER_SET: &[&str] = &["containers", "volumeMounts"];

/// The most steps a Choreo file may expand to. Each step that calls a `containerSet` template
/// gets a copy of its containers, so a file far under the value budget can stand for far more
/// steps than a Gantry file can hold (400 calls of 100 containers: 40,000 steps from 17 KB).
pub const MAX_EXPANDED_STEPS: usize = 20_000;

/// The most `dependsOn` entries a Choreo file may expand to: each container of a set waits for
/// every container of the item before it (40,000 steps so made had 4 million, took 18 s and
/// 590 MB to check).
pub const MAX_EXPANDED_DEPENDENCIES: usize = 100_000;
const RETRY: &[&str] = &["limit", "retryPolicy", "backoff"];
const BACKOFF: &[&str] = &["duration", "factor", "maxDuration"];
const OUTPUT: &[&str] = &["name", "valueFrom", "description"];
const VALUE_FROM: &[&str] = &["path", "default"];
const INPUT: &[&str] = &["name", "value", "default", "description"];
const ARGUMENT: &[&str] = &["name", "value", "yamlObject"];
/// Keys that only a container executor (Argo) uses.
const NO_EFFECT: &[&str] = &["resources", "securityContext", "volumeMounts"];

/// True when `root` is a Choreo pipeline: a mapping without `apiVersion` or `kind` whose keys are
/// Choreo's, at least one of them one that only a Choreo file has at its top.
pub fn is_choreo(root: &Node) -> bool {
    let Value::Map(entries) = &root.value else {
        return false;
    };
    let keys: Vec<&str> = entries
        .iter()
        .filter_map(|(k, _)| match &k.value {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    !keys.contains(&"apiVersion")
        && !keys.contains(&"kind")
        && keys.iter().any(|k| MARKERS.contains(k))
        && keys.iter().all(|k| TOP.contains(k))
}

/// A pipeline name made from a file name: `infra/Rotate_Keys.yaml` → `rotate-keys`.
pub fn name_from_file(file_name: &str) -> Option<String> {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let stem = base
        .strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))
        .unwrap_or(base);
    let slug = slug(stem);
    let slug: String = slug.chars().take(63).collect();
    let slug = slug.trim_end_matches('-').to_string();
    values::is_pipeline_name(&slug).then_some(slug)
}

/// Lower case, every run of other characters one `-`, no `-` at either end.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// A step or template name as Gantry reads it: Choreo's own names are kept when they are valid,
/// others (`Run tests`, `run_terraform`) become their slug.
fn gantry_name(s: &str) -> String {
    if values::is_step_name(s) {
        return s.to_string();
    }
    let slugged = slug(s);
    match slugged.chars().next() {
        Some(c) if c.is_ascii_lowercase() => slugged,
        Some(_) => format!("s-{slugged}"),
        None => s.to_string(),
    }
}

fn str_node(s: impl Into<String>, pos: Pos) -> Node {
    Node {
        value: Value::Str(s.into()),
        pos,
    }
}

fn map_node(entries: Vec<(&str, Node)>, pos: Pos) -> Node {
    Node {
        value: Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (str_node(k, v.pos), v))
                .collect(),
        ),
        pos,
    }
}

fn seq_node(items: Vec<Node>, pos: Pos) -> Node {
    Node {
        value: Value::Seq(items),
        pos,
    }
}

/// One output whose value Gantry copies from a path after the body ran.
struct PathOutput {
    name: String,
    /// The path as the shell reads it (quoted).
    path: String,
    default: Option<String>,
}

/// A `containerSet` template, expanded where a step calls it.
struct ContainerSet {
    /// The Gantry templates made of its containers, with their names and dependencies.
    containers: Vec<(String, Vec<String>)>,
}

/// A step of the rewritten file, before the order is decided.
struct RwStep {
    node: Vec<(String, Node)>,
    name: String,
    pos: Pos,
    /// Gantry names of the steps it depends on (Choreo's `dependencies`).
    dependencies: Vec<(String, Pos)>,
    /// The step calling a containerSet that this step is one container of.
    part_of: Option<String>,
}

struct Rw<'s> {
    source: &'s str,
    line_starts: Vec<usize>,
    diags: Vec<Diagnostic>,
    container_sets: BTreeMap<String, ContainerSet>,
    /// Original step names that Gantry reads under another name.
    renamed_steps: BTreeMap<String, String>,
    /// The entries of `containerTemplates` by name, for containers that name one.
    container_templates: BTreeMap<String, Node>,
    /// Templates made of the containers of a step's own `containerSet`.
    step_templates: Vec<Node>,
}

/// The result of [`rewrite`].
pub struct Rewritten {
    /// The same pipeline in Gantry's form; positions point into the Choreo file.
    pub root: Node,
    /// Problems only a Choreo file can have, and warnings about what has no effect.
    pub diagnostics: Vec<Diagnostic>,
}

/// Rewrites the node tree of a Choreo file (see [`is_choreo`]) into Gantry's form. `file_name`
/// names the pipeline when the file has no `metadata.name`.
pub fn rewrite(root: &Node, source: &str, file_name: Option<&str>) -> Rewritten {
    let mut line_starts = vec![0];
    line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
    let mut rw = Rw {
        source,
        line_starts,
        diags: Vec::new(),
        container_sets: BTreeMap::new(),
        renamed_steps: BTreeMap::new(),
        container_templates: BTreeMap::new(),
        step_templates: Vec::new(),
    };
    let root = rw.pipeline(root, file_name);
    let mut root = root;
    rw.rename_references(&mut root);
    declare_secrets_and_variables(&mut root);
    Rewritten {
        root,
        diagnostics: rw.diags,
    }
}

/// Keys that give a step, template or container its body (exactly one of them).
fn is_body(key: &str) -> bool {
    matches!(key, "inlineScript" | "script" | "container" | "command")
}

/// Native messages name Gantry's fields; in a Choreo file the user wrote Choreo's.
pub fn reword(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("`retry.limit`", "`retryStrategy.limit`"),
        ("`retry.backoff`", "`retryStrategy.backoff.duration`"),
        ("`retry.factor`", "`retryStrategy.backoff.factor`"),
        ("`retry.maxBackoff`", "`retryStrategy.backoff.maxDuration`"),
        ("retry policy", "`retryStrategy.retryPolicy`"),
        ("`script`", "`inlineScript`"),
        ("`dependsOn`", "`dependencies`"),
        ("default of parameter", "`value` of parameter"),
        ("an input default", "an input `value`"),
        ("`arguments`", "`arguments.parameters`"),
        (
            "under the template's `inputs:`",
            "under the template's `inputs.parameters`",
        ),
    ];
    let mut out = message.to_string();
    for (from, to) in WORDS {
        out = out.replace(from, to);
    }
    // `outputs: [{name: x}]` and `arguments: {a: ...}` in Choreo's shapes.
    if let Some(start) = out.find("`outputs: [{name: ")
        && let Some(len) = out[start..].find("}]`")
    {
        let name = out[start + "`outputs: [{name: ".len()..start + len].to_string();
        out.replace_range(
            start..start + len + 3,
            &format!("`outputs: {{parameters: [{{name: {name}}}]}}`"),
        );
    }
    if let Some(start) = out.find("`arguments: {")
        && let Some(len) = out[start..].find(": ...}`")
    {
        let name = out[start + "`arguments: {".len()..start + len].to_string();
        if values::is_identifier(&name) {
            out.replace_range(
                start..start + len + 7,
                &format!("`arguments: {{parameters: [{{name: {name}, value: ...}}]}}`"),
            );
        }
    }
    out
}

impl Rw<'_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(pos, message));
    }

    fn err_help(&mut self, pos: Pos, message: impl Into<String>, help: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(pos, message).with_help(help));
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::warning(pos, message));
    }

    /// The entries of a mapping with string keys in `allowed`; others are reported.
    /// The required `name` of a template or a step (`what`), with its node; a missing or
    /// non-string name is reported (nothing is said of an entry that reported no fields at all).
    fn name_of<'n>(
        &mut self,
        node: &Node,
        f: &[(&'n str, &'n Node, &'n Node)],
        what: &str,
    ) -> Option<(&'n Node, String)> {
        let Some((_, _, name_node)) = f.iter().find(|(k, _, _)| *k == "name") else {
            if !f.is_empty() {
                self.err(
                    node.pos.with_len(1),
                    format!("{what} is missing the required field `name`"),
                );
            }
            return None;
        };
        let raw = self.string(name_node, &format!("{what} `name`"))?;
        Some((*name_node, raw))
    }

    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&str],
    ) -> Vec<(&'n str, &'n Node, &'n Node)> {
        let Value::Map(entries) = &node.value else {
            let found = node.value.kind();
            self.err(node.pos, format!("{what} must be a mapping, found {found}"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let Value::Str(key) = &k.value else {
                self.err(
                    k.pos,
                    format!("keys of {what} must be strings, found {}", k.value.kind()),
                );
                continue;
            };
            if !allowed.contains(&key.as_str()) {
                let message = format!("unknown field `{key}` in {what} of a Choreo pipeline");
                let pos = k.pos.with_len(key.chars().count() as u32);
                match did_you_mean(key, allowed.iter().copied()) {
                    Some(s) => self.err_help(pos, message, format!("did you mean `{s}`?")),
                    None => self.err_help(
                        pos,
                        message,
                        format!(
                            "Gantry reads these Choreo fields here: {}",
                            allowed.join(", ")
                        ),
                    ),
                }
                continue;
            }
            out.push((key.as_str(), k, v));
        }
        out
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                let found = node.value.kind();
                self.err(node.pos, format!("{what} must be a list, found {found}"));
                &[]
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                let found = node.value.kind();
                self.err(node.pos, format!("{what} must be a string, found {found}"));
                None
            }
        }
    }

    /// A scalar as written in the file (`1.10` stays `1.10`), as a string node.
    fn scalar_as_string(&self, node: &Node) -> Node {
        match &node.value {
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let written = written(self.source, &self.line_starts, node.pos).unwrap_or_else(
                    || match &node.value {
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => String::new(),
                    },
                );
                str_node(written, node.pos)
            }
            _ => node.clone(),
        }
    }

    fn no_effect(&mut self, key: &str, key_node: &Node) {
        self.warn(
            key_node.pos.with_len(key.chars().count() as u32),
            format!(
                "`{key}` has no effect on Gantry's local executor, which runs every step as a process in a sandbox sharing one workspace"
            ),
        );
    }

    // ---- the document ------------------------------------------------------------------------

    fn pipeline(&mut self, root: &Node, file_name: Option<&str>) -> Node {
        let pos = root.pos;
        let top = self.fields(root, "the pipeline", TOP);
        let get = |key: &str| top.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
        let mut out: Vec<(&str, Node)> = vec![
            ("apiVersion", str_node(API_VERSION, pos)),
            ("kind", str_node(KIND, pos)),
        ];
        out.push(("metadata", self.metadata(get("metadata"), pos, file_name)));
        if let Some(t) = get("timeout") {
            out.push(("timeout", self.timeout(t)));
        }
        for key in ["volumeClaimTemplates", "volumes"] {
            if let Some((_, k, _)) = top.iter().find(|(name, _, _)| *name == key) {
                self.no_effect(key, k);
            }
        }
        let mut params = Vec::new();
        if let Some(p) = get("parameters") {
            params.extend(self.parameters(p, "`parameters`"));
        }
        if let Some(a) = get("arguments") {
            let f = self.fields(a, "`arguments`", &["parameters"]);
            if let Some((_, _, p)) = f.first() {
                params.extend(self.parameters(p, "`arguments.parameters`"));
            }
        }
        if !params.is_empty() {
            out.push(("parameters", seq_node(params, pos)));
        }
        if let Some(Value::Seq(items)) = get("containerTemplates").map(|t| &t.value) {
            for item in items {
                if let Value::Map(entries) = &item.value
                    && let Some((
                        _,
                        Node {
                            value: Value::Str(n),
                            ..
                        },
                    )) = entries
                        .iter()
                        .find(|(k, _)| k.value == Value::Str("name".into()))
                {
                    self.container_templates.insert(n.clone(), item.clone());
                }
            }
        }
        let mut templates = Vec::new();
        for key in ["templates", "containerTemplates"] {
            if let Some(t) = get(key) {
                for item in self.list(t, &format!("`{key}`")) {
                    templates.extend(self.template(item));
                }
            }
        }
        let steps = match get("steps") {
            Some(s) => Some(self.steps(s)),
            None => {
                self.err_help(
                    pos.with_len(1),
                    "the Choreo pipeline has no `steps`",
                    "list what it runs under `steps:`",
                );
                None
            }
        };
        templates.append(&mut self.step_templates);
        if !templates.is_empty() {
            out.push(("templates", seq_node(templates, pos)));
        }
        if let Some(steps) = steps {
            out.push(("steps", steps));
        }
        map_node(out, pos)
    }

    fn metadata(&mut self, node: Option<&Node>, doc: Pos, file_name: Option<&str>) -> Node {
        let mut out: Vec<(&str, Node)> = Vec::new();
        let mut at = doc;
        if let Some(node) = node {
            at = node.pos;
            for (key, _, value) in self.fields(node, "`metadata`", METADATA) {
                out.push((key, value.clone()));
            }
        }
        if !out.iter().any(|(k, _)| *k == "name") {
            match file_name.and_then(name_from_file) {
                Some(name) => out.insert(0, ("name", str_node(name, at))),
                None => self.err_help(
                    at.with_len(1),
                    "this Choreo pipeline has no name: Gantry names it after its file, and none was given",
                    "add `metadata: {name: my-pipeline}`",
                ),
            }
        }
        map_node(out, at)
    }

    /// `timeout`: a duration with a unit, or a number of seconds (Choreo's Terraform example writes
    /// `timeout: 300`).
    fn timeout(&mut self, node: &Node) -> Node {
        match &node.value {
            Value::Int(i) => str_node(format!("{i}s"), node.pos),
            Value::Str(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
                str_node(format!("{s}s"), node.pos)
            }
            _ => node.clone(),
        }
    }

    fn parameters(&mut self, node: &Node, what: &str) -> Vec<Node> {
        let mut out = Vec::new();
        for item in self.list(node, what) {
            let f = self.fields(item, &format!("an item of {what}"), PARAMETER);
            if f.is_empty() {
                continue;
            }
            let mut entries: Vec<(&str, Node)> = Vec::new();
            for (key, _, value) in f {
                match key {
                    "value" | "default" => entries.push(("default", self.scalar_as_string(value))),
                    "enum" => {
                        let items = self
                            .list(value, "`enum`")
                            .iter()
                            .map(|v| self.scalar_as_string(v))
                            .collect();
                        entries.push(("enum", seq_node(items, value.pos)));
                    }
                    _ => entries.push((key, value.clone())),
                }
            }
            if !entries.iter().any(|(k, _)| *k == "enum") {
                entries.insert(1.min(entries.len()), ("type", str_node("string", item.pos)));
            }
            out.push(map_node(entries, item.pos));
        }
        out
    }

    // ---- templates ---------------------------------------------------------------------------

    fn template(&mut self, node: &Node) -> Vec<Node> {
        let f = self.fields(node, "a template", TEMPLATE);
        let get = |key: &str| f.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
        let Some((name_node, raw_name)) = self.name_of(node, &f, "a template") else {
            return Vec::new();
        };
        let name = gantry_name(&raw_name);
        for (key, k, _) in &f {
            if NO_EFFECT.contains(key) {
                self.no_effect(key, k);
            }
            if STEP_ONLY.contains(key) {
                self.err_help(
                    k.pos.with_len(key.chars().count() as u32),
                    format!("`{key}` on a template is not read by Gantry"),
                    format!("put `{key}` on each step that calls template `{raw_name}`"),
                );
            }
        }
        let inputs = get("inputs").map(|i| self.inputs(i));
        if let Some(set) = get("containerSet") {
            if let Some((body, k, _)) = f
                .iter()
                .find(|(k, _, _)| matches!(*k, "inlineScript" | "script" | "container" | "command"))
            {
                self.err(
                    k.pos.with_len(body.chars().count() as u32),
                    format!("template `{raw_name}` has a `containerSet` and `{body}`; a template runs exactly one of them"),
                );
            }
            if let Some(o) = get("outputs") {
                self.err_help(
                    o.pos,
                    "a `containerSet` template cannot declare `outputs` in Gantry",
                    "write the outputs of a container to \"$GANTRY_OUTPUTS/NAME\" and read them from that container's step",
                );
            }
            return self.container_set(&name, name_node.pos, set, inputs, get("env"));
        }
        let mut entries: Vec<(&str, Node)> = vec![("name", str_node(name, name_node.pos))];
        if let Some(inputs) = inputs {
            entries.push(("inputs", inputs));
        }
        let (outputs, paths) = match get("outputs") {
            Some(o) => self.outputs(o),
            None => (None, Vec::new()),
        };
        let body = self.body(&f, node.pos, &paths);
        entries.extend(body);
        if let Some(o) = outputs {
            entries.push(("outputs", o));
        }
        vec![map_node(entries, node.pos)]
    }

    fn inputs(&mut self, node: &Node) -> Node {
        let f = self.fields(node, "`inputs`", &["parameters"]);
        let mut out = Vec::new();
        if let Some((_, _, params)) = f.first() {
            for item in self.list(params, "`inputs.parameters`") {
                let fi = self.fields(item, "an item of `inputs.parameters`", INPUT);
                let mut entries: Vec<(&str, Node)> = Vec::new();
                for (key, _, value) in fi {
                    match key {
                        "value" | "default" => {
                            entries.push(("default", self.scalar_as_string(value)))
                        }
                        _ => entries.push((key, value.clone())),
                    }
                }
                if !entries.is_empty() {
                    out.push(map_node(entries, item.pos));
                }
            }
        }
        seq_node(out, node.pos)
    }

    /// `outputs` (`{parameters: [...]}`, or the list itself): Gantry outputs, and the values to copy
    /// from a path after the body ran.
    fn outputs(&mut self, node: &Node) -> (Option<Node>, Vec<PathOutput>) {
        let list = match &node.value {
            Value::Map(_) => {
                let f = self.fields(node, "`outputs`", &["parameters"]);
                match f.first() {
                    Some((_, _, p)) => *p,
                    None => return (None, Vec::new()),
                }
            }
            _ => node,
        };
        let mut outputs = Vec::new();
        let mut paths = Vec::new();
        for item in self.list(list, "`outputs.parameters`") {
            if let Value::Str(_) = item.value {
                outputs.push(item.clone());
                continue;
            }
            let f = self.fields(item, "an item of `outputs.parameters`", OUTPUT);
            let get = |key: &str| f.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
            let Some(name_node) = get("name") else {
                if !f.is_empty() {
                    self.err(
                        item.pos.with_len(1),
                        "an item of `outputs.parameters` is missing the required field `name`",
                    );
                }
                continue;
            };
            let mut entries: Vec<(&str, Node)> = vec![("name", name_node.clone())];
            if let Some(d) = get("description") {
                entries.push(("description", d.clone()));
            }
            outputs.push(map_node(entries, item.pos));
            if let (Some(vf), Value::Str(name)) = (get("valueFrom"), &name_node.value) {
                let fv = self.fields(vf, "`valueFrom`", VALUE_FROM);
                let path = fv.iter().find(|(k, _, _)| *k == "path").map(|(_, _, v)| *v);
                let default = fv
                    .iter()
                    .find(|(k, _, _)| *k == "default")
                    .map(|(_, _, v)| self.scalar_as_string(v));
                let Some(path_node) = path else {
                    if !fv.is_empty() {
                        self.err_help(
                            vf.pos,
                            "`valueFrom` needs `path`: Gantry reads an output from a file",
                            "write `valueFrom: {path: /tmp/NAME.txt}`",
                        );
                    }
                    continue;
                };
                if let Some(path) = self.output_path(path_node) {
                    paths.push(PathOutput {
                        name: name.clone(),
                        path,
                        default: default.and_then(|d| match d.value {
                            Value::Str(s) => Some(s),
                            _ => None,
                        }),
                    });
                }
            }
        }
        (Some(seq_node(outputs, list.pos)), paths)
    }

    /// A `valueFrom.path` as a shell word: inside the workspace (relative, or under `$WORKSPACE`)
    /// or under the step's private `/tmp`.
    fn output_path(&mut self, node: &Node) -> Option<String> {
        let path = self.string(node, "`valueFrom.path`")?;
        if path.contains(['"', '`', '\\', '\n']) || path.contains("{{") {
            self.err(
                node.pos,
                format!("`valueFrom.path` `{path}` must be a plain path, without quotes, backslashes or expressions"),
            );
            return None;
        }
        let rest = path
            .strip_prefix("$WORKSPACE/")
            .or_else(|| path.strip_prefix("${WORKSPACE}/"))
            .or_else(|| path.strip_prefix("$GANTRY_WORKSPACE/"));
        let shell = match rest {
            Some(rel) if !rel.contains('$') => format!("\"$GANTRY_WORKSPACE/{rel}\""),
            None if path.starts_with("/tmp/") && !path.contains('$') => format!("\"{path}\""),
            None if !path.starts_with('/') && !path.contains('$') => {
                format!("\"$GANTRY_WORKSPACE/{path}\"")
            }
            _ => {
                self.err_help(
                    node.pos,
                    format!("`valueFrom.path` `{path}` is outside what a step can write"),
                    "a step sees only the workspace and a private /tmp: write the value inside the workspace or under /tmp/",
                );
                return None;
            }
        };
        if path.split('/').any(|part| part == "..") {
            self.err(
                node.pos,
                format!("`valueFrom.path` `{path}` must not climb out with `..`"),
            );
            return None;
        }
        Some(shell)
    }

    /// The body of a step or template: `inlineScript`, Argo's `script {image, command, source}`, a
    /// `container {image, command, args}`, or Gantry's own `command`/`args`. `paths` are outputs
    /// copied from files after the body ran.
    fn body<'n>(
        &mut self,
        f: &[(&'n str, &'n Node, &'n Node)],
        at: Pos,
        paths: &[PathOutput],
    ) -> Vec<(&'static str, Node)> {
        let get = |key: &str| f.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
        let mut out: Vec<(&'static str, Node)> = Vec::new();
        let mut env = get("env").map(|e| self.env(e));
        let mut image = get("image").cloned();
        let mut working_dir = get("workingDir").cloned();
        let bodies: Vec<&str> = ["inlineScript", "script", "container", "command"]
            .into_iter()
            .filter(|k| get(k).is_some())
            .collect();
        if bodies.len() > 1 {
            let pos = f
                .iter()
                .find(|(k, _, _)| *k == bodies[1])
                .map(|(_, k, _)| k.pos)
                .unwrap_or(at);
            self.err(
                pos,
                format!(
                    "`{}` and `{}` are both given; a Choreo step or template runs exactly one of them",
                    bodies[0], bodies[1]
                ),
            );
        }
        let mut script: Option<Node> = None;
        let mut command: Option<(Node, Option<Node>)> = None;
        if let Some(s) = get("inlineScript") {
            script = Some(self.scalar_as_string(s));
        } else if let Some(s) = get("script") {
            match &s.value {
                Value::Map(_) => {
                    let fs = self.fields(s, "`script`", ARGO_SCRIPT);
                    let gs = |key: &str| fs.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
                    for (key, k, _) in &fs {
                        if NO_EFFECT.contains(key) {
                            self.no_effect(key, k);
                        }
                    }
                    image = gs("image").cloned().or(image);
                    working_dir = gs("workingDir").cloned().or(working_dir);
                    if let Some(e) = gs("env") {
                        env = Some(self.env(e));
                    }
                    match gs("source") {
                        Some(src) => {
                            let src = self.scalar_as_string(src);
                            script = Some(match gs("command") {
                                Some(c) => self.with_interpreter(&src, c),
                                None => src,
                            });
                        }
                        None => self.err(
                            s.pos.with_len(1),
                            "Argo's `script` is missing the required field `source`",
                        ),
                    }
                }
                _ => script = Some(self.scalar_as_string(s)),
            }
        } else if let Some(c) = get("container") {
            let fc = self.fields(c, "`container`", CONTAINER);
            let gc = |key: &str| fc.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
            for (key, k, _) in &fc {
                if NO_EFFECT.contains(key) {
                    self.no_effect(key, k);
                }
            }
            image = gc("image").cloned().or(image);
            working_dir = gc("workingDir").cloned().or(working_dir);
            if let Some(e) = gc("env") {
                env = Some(self.env(e));
            }
            match gc("command") {
                Some(cmd) => command = Some((cmd.clone(), gc("args").cloned())),
                None => self.err_help(
                    c.pos.with_len(1),
                    "`container` has no `command`",
                    "Gantry runs the command itself and does not know the image's entrypoint: give `command: [...]`",
                ),
            }
        } else if let Some(c) = get("command") {
            command = Some((c.clone(), get("args").cloned()));
        }
        if get("command").is_none()
            && let Some((_, k, _)) = f.iter().find(|(k, _, _)| *k == "args")
        {
            self.err(k.pos.with_len(4), "`args` needs `command`");
        }
        if !paths.is_empty() {
            match (&script, &command) {
                (Some(s), _) => script = Some(with_copies(s, paths)),
                (None, Some((c, a))) => {
                    script = self
                        .command_script(c, a.as_ref())
                        .map(|s| with_copies(&s, paths));
                    command = None;
                }
                _ => {}
            }
        }
        if let Some(i) = image {
            out.push(("image", i));
        }
        if let Some(s) = script {
            out.push(("script", s));
        }
        if let Some((c, a)) = command {
            out.push(("command", c));
            if let Some(a) = a {
                out.push(("args", a));
            }
        }
        if let Some(e) = env {
            out.push(("env", e));
        }
        if let Some(w) = working_dir {
            out.push(("workingDir", w));
        }
        out
    }

    /// Argo's `script.command` (`[python]`, `[bash]`) as the script's `#!` line.
    fn with_interpreter(&mut self, source: &Node, command: &Node) -> Node {
        let items: Vec<String> = match &command.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| self.string(i, "an item of `command`"))
                .collect(),
            Value::Str(s) => vec![s.clone()],
            _ => {
                let found = command.value.kind();
                self.err(
                    command.pos,
                    format!("`script.command` must be a list, found {found}"),
                );
                return source.clone();
            }
        };
        let Value::Str(text) = &source.value else {
            return source.clone();
        };
        if items.is_empty() || text.starts_with("#!") {
            return source.clone();
        }
        let line = if items[0].starts_with('/') {
            items.join(" ")
        } else if items.len() == 1 {
            format!("/usr/bin/env {}", items[0])
        } else {
            format!("/usr/bin/env -S {}", items.join(" "))
        };
        str_node(format!("#!{line}\n{text}"), source.pos)
    }

    /// A command and its args as a `/bin/sh` script, so that outputs can be copied after it.
    fn command_script(&mut self, command: &Node, args: Option<&Node>) -> Option<Node> {
        let mut words = Vec::new();
        let items: Vec<&Node> = match &command.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![command],
        };
        let args: Vec<&Node> = match args.map(|a| &a.value) {
            Some(Value::Seq(items)) => items.iter().collect(),
            _ => Vec::new(),
        };
        for item in items.into_iter().chain(args) {
            let s = self.scalar_as_string(item);
            let Value::Str(s) = s.value else {
                self.err(item.pos, "an item of `command` must be a string");
                return None;
            };
            words.push(shell_quote(&s));
        }
        Some(str_node(format!("{}\n", words.join(" ")), command.pos))
    }

    /// `env` as a list of `{name, value}` (Choreo, Argo) or as a mapping (Gantry).
    fn env(&mut self, node: &Node) -> Node {
        let Value::Seq(items) = &node.value else {
            return node.clone();
        };
        let mut entries = Vec::new();
        for item in items {
            let f = self.fields(item, "an item of `env`", &["name", "value", "valueFrom"]);
            let get = |key: &str| f.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
            if let Some(v) = get("valueFrom") {
                self.err_help(
                    v.pos,
                    "`env[].valueFrom` (a Kubernetes secret or config map) is not read by Gantry",
                    "store the value with `gantry secrets set NAME` and write `value: \"{{SECRETS.NAME}}\"`",
                );
                continue;
            }
            let Some(name) = get("name") else {
                if !f.is_empty() {
                    self.err(
                        item.pos.with_len(1),
                        "an item of `env` is missing the required field `name`",
                    );
                }
                continue;
            };
            let value = get("value")
                .cloned()
                .unwrap_or_else(|| str_node("", name.pos));
            if entries
                .iter()
                .any(|(k, _): &(Node, Node)| k.value == name.value)
            {
                self.err(name.pos, "duplicate `env` name: each variable is set once");
                continue;
            }
            entries.push((name.clone(), value));
        }
        Node {
            value: Value::Map(entries),
            pos: node.pos,
        }
    }

    fn container_set(
        &mut self,
        name: &str,
        at: Pos,
        node: &Node,
        inputs: Option<Node>,
        env: Option<&Node>,
    ) -> Vec<Node> {
        let f = self.fields(node, "`containerSet`", CONTAINER_SET);
        let mut templates = Vec::new();
        let mut containers = Vec::new();
        for (key, k, v) in &f {
            if *key == "volumeMounts" {
                self.no_effect(key, k);
                continue;
            }
            for item in self.list(v, "`containerSet.containers`") {
                let fc = self.fields(item, "a container", CONTAINER);
                let gc = |key: &str| fc.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
                let Some(cname) = gc("name").and_then(|n| self.string(n, "a container `name`"))
                else {
                    if !fc.is_empty() {
                        self.err(
                            item.pos.with_len(1),
                            "a container is missing the required field `name`",
                        );
                    }
                    continue;
                };
                let cname = gantry_name(&cname);
                let mut deps = Vec::new();
                if let Some(d) = gc("dependencies") {
                    for dep in self.list(d, "`dependencies`") {
                        if let Some(s) = self.string(dep, "an item of `dependencies`") {
                            deps.push(gantry_name(&s));
                        }
                    }
                }
                let mut entries: Vec<(&str, Node)> =
                    vec![("name", str_node(format!("{name}-{cname}"), item.pos))];
                if let Some(i) = &inputs {
                    entries.push(("inputs", i.clone()));
                }
                let mut fc_no_deps: Vec<_> = fc
                    .iter()
                    .filter(|(k, _, _)| {
                        !matches!(*k, "name" | "dependencies" | "containerTemplate")
                    })
                    .copied()
                    .collect();
                // `containerTemplate: NAME`: the container is that entry of `containerTemplates`,
                // with the container's own fields on top.
                let base = gc("containerTemplate").and_then(|t| self.container_template(t));
                let ft = base
                    .as_ref()
                    .map(|b| self.fields(b, "a container template", TEMPLATE))
                    .unwrap_or_default();
                let own: Vec<&str> = fc_no_deps.iter().map(|(k, _, _)| *k).collect();
                for (key, k, v) in &ft {
                    let body_key = matches!(
                        *key,
                        "image"
                            | "command"
                            | "args"
                            | "env"
                            | "workingDir"
                            | "inlineScript"
                            | "script"
                            | "container"
                    );
                    let overridden = own.iter().any(|own| {
                        own == key
                            || (is_body(own) && is_body(key))
                            || (*own == "command" && *key == "args")
                    });
                    if body_key && !overridden {
                        fc_no_deps.push((key, k, v));
                    }
                }
                if let Some(e) = env
                    && !fc_no_deps.iter().any(|(k, _, _)| *k == "env")
                {
                    fc_no_deps.push(("env", e, e));
                }
                for (key, k, _) in &fc_no_deps {
                    if NO_EFFECT.contains(key) {
                        self.no_effect(key, k);
                    }
                }
                let body = self.body(&fc_no_deps, item.pos, &[]);
                entries.extend(body);
                templates.push(map_node(entries, item.pos));
                containers.push((cname, deps));
            }
        }
        if containers.is_empty() {
            self.err(at, "a `containerSet` needs at least one container");
        }
        self.container_sets
            .insert(name.to_string(), ContainerSet { containers });
        templates
    }

    /// The `containerTemplates` entry a container names, or an error at the name.
    fn container_template(&mut self, name: &Node) -> Option<Node> {
        let wanted = self.string(name, "`containerTemplate`")?;
        if let Some(t) = self.container_templates.get(&wanted) {
            return Some(t.clone());
        }
        let known: Vec<&str> = self
            .container_templates
            .keys()
            .map(String::as_str)
            .collect();
        let help = match did_you_mean(&wanted, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if known.is_empty() => "the file has no `containerTemplates`".to_string(),
            None => format!("`containerTemplates` has: {}", known.join(", ")),
        };
        self.err_help(
            name.pos,
            format!("`containerTemplate` `{wanted}` is not an entry of `containerTemplates`"),
            help,
        );
        None
    }

    // ---- steps -------------------------------------------------------------------------------

    fn steps(&mut self, node: &Node) -> Node {
        let mut items: Vec<(Vec<RwStep>, bool, Pos)> = Vec::new();
        let list = self.list(node, "`steps`");
        if list.is_empty() {
            return node.clone();
        }
        let mut expanded = 0;
        for item in list {
            if expanded > MAX_EXPANDED_STEPS {
                self.err_help(
                    item.pos,
                    format!("the pipeline expands to more than {MAX_EXPANDED_STEPS} steps"),
                    "each step that calls a `containerSet` template gets a step per container",
                );
                break;
            }
            match &item.value {
                Value::Seq(group) => {
                    if group.is_empty() {
                        self.err(item.pos, "a parallel group must hold at least one step");
                    }
                    let mut steps = Vec::new();
                    for s in group {
                        steps.extend(self.step(s));
                    }
                    expanded += steps.len();
                    items.push((steps, true, item.pos));
                }
                _ => {
                    let steps = self.step(item);
                    expanded += steps.len();
                    items.push((steps, false, item.pos));
                }
            }
        }
        let dag = items
            .iter()
            .flat_map(|(steps, _, _)| steps)
            .any(|s| !s.dependencies.is_empty());
        let set_used = items
            .iter()
            .flat_map(|(steps, _, _)| steps)
            .any(|s| s.part_of.is_some());
        if !dag && !set_used {
            // Sequence mode, as written.
            let out = items
                .into_iter()
                .filter(|(steps, _, _)| !steps.is_empty())
                .map(|(steps, group, pos)| {
                    let nodes: Vec<Node> = steps.into_iter().map(step_node).collect();
                    if group {
                        seq_node(nodes, pos)
                    } else {
                        nodes
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| str_node("", pos))
                    }
                })
                .collect();
            return seq_node(out, node.pos);
        }
        // A DAG: Choreo's `dependencies`, or a containerSet's containers. Without `dependencies`,
        // each item waits for the whole previous one, as in sequence mode.
        let mut out = Vec::new();
        let mut previous: Vec<(String, Pos)> = Vec::new();
        let mut dependencies = 0usize;
        let expansions: BTreeMap<String, Vec<String>> = items
            .iter()
            .flat_map(|(steps, _, _)| steps)
            .filter_map(|s| s.part_of.clone().map(|call| (call, s.name.clone())))
            .fold(BTreeMap::new(), |mut acc, (call, name)| {
                acc.entry(call).or_insert_with(Vec::new).push(name);
                acc
            });
        for (steps, _, _) in items {
            let names: Vec<(String, Pos)> = steps.iter().map(|s| (s.name.clone(), s.pos)).collect();
            for mut s in steps {
                let mut deps: Vec<(String, Pos)> = Vec::new();
                let internal = s.node.iter().any(|(k, _)| k == "dependsOn");
                if dag {
                    for (d, pos) in std::mem::take(&mut s.dependencies) {
                        match expansions.get(&d) {
                            Some(parts) => deps.extend(parts.iter().map(|p| (p.clone(), pos))),
                            None => deps.push((d, pos)),
                        }
                    }
                } else if !internal {
                    deps.extend(previous.iter().cloned());
                }
                dependencies += deps.len();
                if dependencies > MAX_EXPANDED_DEPENDENCIES {
                    self.err_help(
                        s.pos,
                        format!(
                            "the pipeline expands to more than {MAX_EXPANDED_DEPENDENCIES} `dependsOn` entries"
                        ),
                        "each container of a `containerSet` waits for every step of the item before it; fewer containers per set, or `dependencies`, keep it small",
                    );
                    return seq_node(out, node.pos);
                }
                if !deps.is_empty() {
                    let pos = s.pos;
                    let mut list: Vec<Node> = Vec::new();
                    if let Some(i) = s.node.iter().position(|(k, _)| k == "dependsOn")
                        && let Value::Seq(items) = s.node.remove(i).1.value
                    {
                        list.extend(items);
                    }
                    let mut listed: std::collections::HashSet<String> = list
                        .iter()
                        .filter_map(|n| match &n.value {
                            Value::Str(name) => Some(name.clone()),
                            _ => None,
                        })
                        .collect();
                    for (d, p) in deps {
                        if listed.insert(d.clone()) {
                            list.push(str_node(d, p));
                        }
                    }
                    s.node.push(("dependsOn".into(), seq_node(list, pos)));
                }
                out.push(step_node(s));
            }
            previous = names;
        }
        seq_node(out, node.pos)
    }

    fn step(&mut self, node: &Node) -> Vec<RwStep> {
        let f = self.fields(node, "a step", STEP);
        let get = |key: &str| f.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
        let Some((name_node, raw)) = self.name_of(node, &f, "a step") else {
            return Vec::new();
        };
        let name = gantry_name(&raw);
        if name != raw {
            self.warn(
                name_node.pos,
                format!("step name `{raw}` is read as `{name}`: Gantry step names match ^[a-z][a-z0-9-]*$"),
            );
            self.renamed_steps.insert(raw.clone(), name.clone());
        }
        for (key, k, _) in &f {
            if NO_EFFECT.contains(key) {
                self.no_effect(key, k);
            }
        }
        let mut entries: Vec<(String, Node)> =
            vec![("name".into(), str_node(&name, name_node.pos))];
        let (outputs, paths) = match get("outputs") {
            Some(o) => self.outputs(o),
            None => (None, Vec::new()),
        };
        let template = match (get("template"), get("templateRef")) {
            (Some(t), None) => Some(t.clone()),
            (None, Some(r)) => {
                let fr = self.fields(r, "`templateRef`", &["name", "template", "clusterScope"]);
                let n = fr
                    .iter()
                    .find(|(k, _, _)| *k == "name")
                    .map(|(_, _, v)| (*v).clone());
                if let Some((_, k, _)) = fr.iter().find(|(k, _, _)| *k != "name") {
                    self.err_help(
                        k.pos,
                        "`templateRef` names a template of this file or a built-in in Gantry",
                        "Gantry has no WorkflowTemplates: keep only `templateRef.name`",
                    );
                }
                if n.is_none() && !fr.is_empty() {
                    self.err(
                        r.pos.with_len(1),
                        "`templateRef` is missing the required field `name`",
                    );
                }
                n
            }
            (Some(t), Some(r)) => {
                self.err(
                    r.pos,
                    "a step has both `template` and `templateRef`; give one",
                );
                Some(t.clone())
            }
            (None, None) => None,
        };
        let mut calls_set = None;
        // A step's own `containerSet`: a template of its containers, named after the step. Beside
        // another body it is reported and left out, and the other body is read.
        let mut own_set = get("containerSet");
        if let Some(set) = own_set {
            let others: Vec<&str> = f
                .iter()
                .map(|(k, _, _)| *k)
                .filter(|k| {
                    matches!(
                        *k,
                        "template" | "templateRef" | "inlineScript" | "script" | "container"
                    )
                })
                .collect();
            if let Some(other) = others.first() {
                let at = f
                    .iter()
                    .find(|(k, _, _)| k == other)
                    .map(|(_, k, _)| k.pos.with_len(other.chars().count() as u32))
                    .unwrap_or(node.pos);
                self.err(
                    at,
                    format!(
                        "step `{raw}` has a `containerSet` and `{other}`; a Choreo step has exactly one of `template`, `templateRef`, `containerSet` and `inlineScript`"
                    ),
                );
                own_set = None;
            } else {
                let made = self.container_set(&name, name_node.pos, set, None, get("env"));
                self.step_templates.extend(made);
                entries.push(("template".into(), str_node(&name, set.pos)));
                calls_set = Some(name.clone());
            }
        }
        if template.is_some()
            && let Some((body, k, _)) = f
                .iter()
                .find(|(k, _, _)| matches!(*k, "inlineScript" | "script" | "container"))
        {
            self.err_help(
                k.pos.with_len(body.chars().count() as u32),
                format!(
                    "step `{raw}` has a template and `{body}`; a step runs exactly one of them"
                ),
                "keep the template call, or the body, not both",
            );
        }
        if let Some(t) = &template {
            let reference = match &t.value {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            };
            let mut arguments = get("arguments").map(|a| self.arguments(a, reference.as_deref()));
            let value = match reference.as_deref() {
                Some("choreo/marketplace-publish@v1") => {
                    str_node(Builtin::MarketplacePublishV1.id(), t.pos)
                }
                Some(r) if r.starts_with("choreo/") => {
                    let ids: Vec<&str> = Builtin::ALL.iter().map(|(id, _)| *id).collect();
                    self.err_help(
                        t.pos,
                        format!("Gantry has no Choreo built-in `{r}`"),
                        format!(
                            "Gantry offers {} (for choreo/marketplace-publish@v1); write anything else as an `inlineScript` step",
                            ids.join(", ")
                        ),
                    );
                    arguments = None;
                    str_node(Builtin::GitCheckoutV1.id(), t.pos)
                }
                Some(r) => {
                    let g = gantry_name(r);
                    if self.container_sets.contains_key(&g) {
                        calls_set = Some(g.clone());
                    }
                    str_node(g, t.pos)
                }
                None => t.clone(),
            };
            entries.push(("template".into(), value));
            if let Some(a) = arguments {
                entries.push(("arguments".into(), a));
            }
        } else if own_set.is_none() {
            if let Some(a) = get("arguments") {
                self.err(a.pos, "`arguments` needs `template` or `templateRef`");
            }
            for (k, v) in self.body(&f, name_node.pos, &paths) {
                entries.push((k.into(), v));
            }
        } else if let Some(o) = get("outputs") {
            self.err_help(
                o.pos,
                "a step with a `containerSet` cannot declare `outputs` in Gantry",
                "write the outputs of a container to \"$GANTRY_OUTPUTS/NAME\" and read them from that container's step",
            );
        }
        if template.is_some() {
            for key in ["image", "env", "workingDir"] {
                if let Some(v) = get(key) {
                    let v = if key == "env" { self.env(v) } else { v.clone() };
                    entries.push((key.into(), v));
                }
            }
            if !paths.is_empty()
                && let Some(o) = get("outputs")
            {
                self.err_help(
                    o.pos,
                    "`valueFrom.path` on a step that calls a template is not read by Gantry",
                    "declare the output with its `valueFrom` in the template's `outputs.parameters`",
                );
            }
        }
        if let Some(o) = outputs {
            entries.push(("outputs".into(), o));
        }
        if let Some(w) = get("when") {
            entries.push(("when".into(), w.clone()));
        }
        if let Some(r) = get("retryStrategy") {
            entries.push(("retry".into(), self.retry(r)));
        }
        if let Some(t) = get("timeout") {
            entries.push(("timeout".into(), self.timeout(t)));
        }
        if let Some(c) = get("continueOn") {
            entries.push(("continueOn".into(), c.clone()));
        }
        let mut dependencies = Vec::new();
        if let Some(d) = get("dependencies") {
            for dep in self.list(d, "`dependencies`") {
                if let Some(s) = self.string(dep, "an item of `dependencies`") {
                    dependencies.push((gantry_name(&s), dep.pos));
                }
            }
        }
        let step = RwStep {
            node: entries,
            name: name.clone(),
            pos: node.pos,
            dependencies,
            part_of: None,
        };
        match calls_set {
            Some(set) => self.expand_set(step, &set),
            None => vec![step],
        }
    }

    /// A step calling a containerSet template: one step per container, calling the container's
    /// template, ordered by the containers' `dependencies`.
    fn expand_set(&mut self, step: RwStep, set: &str) -> Vec<RwStep> {
        let Some(cs) = self.container_sets.get(set) else {
            return vec![step];
        };
        let containers = cs.containers.clone();
        let mut out = Vec::new();
        for (cname, deps) in containers {
            let mut node: Vec<(String, Node)> = Vec::new();
            let name = format!("{}-{cname}", step.name);
            for (k, v) in &step.node {
                match k.as_str() {
                    "name" => node.push((k.clone(), str_node(&name, v.pos))),
                    "template" => node.push((k.clone(), str_node(format!("{set}-{cname}"), v.pos))),
                    "outputs" => {}
                    _ => node.push((k.clone(), v.clone())),
                }
            }
            if !deps.is_empty() {
                let list = deps
                    .iter()
                    .map(|d| str_node(format!("{}-{d}", step.name), step.pos))
                    .collect();
                node.push(("dependsOn".into(), seq_node(list, step.pos)));
            }
            out.push(RwStep {
                node,
                name,
                pos: step.pos,
                dependencies: step.dependencies.clone(),
                part_of: Some(step.name.clone()),
            });
        }
        out
    }

    /// `arguments.parameters` as Gantry's `arguments` mapping; a `yamlObject` is the structured
    /// `resource` of `choreo/marketplace-publish@v1`.
    fn arguments(&mut self, node: &Node, template: Option<&str>) -> Node {
        let f = self.fields(node, "`arguments`", &["parameters"]);
        let mut entries: Vec<(Node, Node)> = Vec::new();
        let publish = template == Some("choreo/marketplace-publish@v1");
        if let Some((_, _, params)) = f.first() {
            for item in self.list(params, "`arguments.parameters`") {
                let fa = self.fields(item, "an item of `arguments.parameters`", ARGUMENT);
                let ga = |key: &str| fa.iter().find(|(k, _, _)| *k == key).map(|(_, _, v)| *v);
                let Some(name) = ga("name") else {
                    if !fa.is_empty() {
                        self.err(
                            item.pos.with_len(1),
                            "an item of `arguments.parameters` is missing the required field `name`",
                        );
                    }
                    continue;
                };
                let value = match (ga("value"), ga("yamlObject")) {
                    (Some(v), None) => v.clone(),
                    (None, Some(y)) => {
                        if publish {
                            resource(y)
                        } else {
                            self.err_help(
                                y.pos,
                                "only choreo/marketplace-publish@v1 takes a `yamlObject` argument",
                                "pass a template input as `value: ...`",
                            );
                            continue;
                        }
                    }
                    (Some(_), Some(y)) => {
                        self.err(
                            y.pos,
                            "an argument has both `value` and `yamlObject`; give one",
                        );
                        continue;
                    }
                    (None, None) => {
                        self.err(
                            item.pos.with_len(1),
                            "an item of `arguments.parameters` needs `value` (or `yamlObject` for choreo/marketplace-publish@v1)",
                        );
                        continue;
                    }
                };
                if entries.iter().any(|(k, _)| k.value == name.value) {
                    self.err(
                        name.pos,
                        "duplicate argument name in `arguments.parameters`: each input gets one value",
                    );
                    continue;
                }
                entries.push((name.clone(), value));
            }
        }
        Node {
            value: Value::Map(entries),
            pos: node.pos,
        }
    }

    /// `retryStrategy {limit, retryPolicy, backoff {duration, factor, maxDuration}}` as `retry`.
    fn retry(&mut self, node: &Node) -> Node {
        let f = self.fields(node, "`retryStrategy`", RETRY);
        let mut out: Vec<(&str, Node)> = Vec::new();
        for (key, _, value) in f {
            match key {
                "limit" => out.push(("limit", number_of(value, true))),
                "retryPolicy" => {
                    let policy = match &value.value {
                        Value::Str(s) => match s.as_str() {
                            "OnFailure" => Some("OnFailure"),
                            "Always" | "OnError" | "OnTransientError" => Some("Always"),
                            _ => None,
                        },
                        _ => None,
                    };
                    match policy {
                        Some(p) => out.push(("policy", str_node(p, value.pos))),
                        None => self.err_help(
                            value.pos,
                            "invalid `retryStrategy.retryPolicy`: expected one of Always, OnFailure, OnError, OnTransientError",
                            "OnError and OnTransientError are read as Always",
                        ),
                    }
                }
                _ => {
                    for (bkey, _, bvalue) in self.fields(value, "`retryStrategy.backoff`", BACKOFF)
                    {
                        match bkey {
                            "duration" => out.push(("backoff", seconds(bvalue))),
                            "maxDuration" => out.push(("maxBackoff", seconds(bvalue))),
                            _ => out.push(("factor", number_of(bvalue, false))),
                        }
                    }
                }
            }
        }
        map_node(out, node.pos)
    }

    /// `{{steps.OLD.…}}` for a step read under another name.
    fn rename_references(&self, node: &mut Node) {
        if self.renamed_steps.is_empty() {
            return;
        }
        match &mut node.value {
            Value::Str(s) => {
                for (old, new) in &self.renamed_steps {
                    for prefix in ["steps.", "tasks."] {
                        let from = format!("{prefix}{old}.");
                        if s.contains(&from) {
                            *s = s.replace(&from, &format!("steps.{new}."));
                        }
                    }
                }
                if let Some(new) = self.renamed_steps.get(s.as_str()) {
                    *s = new.clone();
                }
            }
            Value::Seq(items) => items.iter_mut().for_each(|i| self.rename_references(i)),
            Value::Map(entries) => entries
                .iter_mut()
                .for_each(|(_, v)| self.rename_references(v)),
            _ => {}
        }
    }
}

/// A step's entries as a node.
fn step_node(step: RwStep) -> Node {
    let entries = step
        .node
        .into_iter()
        .map(|(k, v)| (str_node(k, v.pos), v))
        .collect();
    Node {
        value: Value::Map(entries),
        pos: step.pos,
    }
}

/// Choreo's `resource` as Gantry's: the category is case-insensitive (`Database`).
fn resource(node: &Node) -> Node {
    let mut node = node.clone();
    if let Value::Map(entries) = &mut node.value {
        for (k, v) in entries.iter_mut() {
            if k.value == Value::Str("category".into())
                && let Value::Str(s) = &mut v.value
            {
                *s = s.to_ascii_lowercase();
            }
        }
    }
    node
}

/// An Argo count or factor written as a string (`limit: "3"`) as a number.
fn number_of(node: &Node, integer: bool) -> Node {
    if let Value::Str(s) = &node.value {
        if integer && let Ok(i) = s.trim().parse::<i64>() {
            return Node {
                value: Value::Int(i),
                pos: node.pos,
            };
        }
        if !integer
            && let Ok(f) = s.trim().parse::<f64>()
            && f.is_finite()
        {
            return Node {
                value: Value::Float(f),
                pos: node.pos,
            };
        }
    }
    node.clone()
}

/// An Argo duration: a number of seconds (`5`, `"5"`) or a duration with units (`2m`).
fn seconds(node: &Node) -> Node {
    match &node.value {
        Value::Int(i) => str_node(format!("{i}s"), node.pos),
        Value::Str(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            str_node(format!("{s}s"), node.pos)
        }
        _ => node.clone(),
    }
}

/// The script, then a copy of each output's file to where Gantry reads it. Under a `#!` line of
/// another interpreter the script is written to a file first and run from there.
fn with_copies(script: &Node, paths: &[PathOutput]) -> Node {
    let Value::Str(text) = &script.value else {
        return script.clone();
    };
    let mut copies = String::from(
        "# Choreo's outputs.parameters[].valueFrom: copy each value to where Gantry reads it.\n",
    );
    for p in paths {
        let target = format!("\"$GANTRY_OUTPUTS/{}\"", p.name);
        match &p.default {
            Some(d) => copies.push_str(&format!(
                "if [ -f {path} ]; then cp {path} {target}; else printf '%s' {default} > {target}; fi\n",
                path = p.path,
                default = shell_quote(d),
            )),
            None => copies.push_str(&format!("cp {} {target}\n", p.path)),
        }
    }
    let first = text.lines().next().unwrap_or_default();
    let shell = !first.starts_with("#!")
        || ["/sh", "/bash", " sh", " bash", "/dash", " dash"]
            .iter()
            .any(|s| first.trim_end().ends_with(s) || first.contains(&format!("{s} ")));
    let body = if shell {
        let mut body = text.clone();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        if first.starts_with("#!") {
            // Without `-e` the script's last status would be lost to the copies.
            body.push_str("status=$?; [ \"$status\" -eq 0 ] || exit \"$status\"\n");
            // A missing file fails the step, whatever the script's own options.
            body.push_str("set -e\n");
        }
        body.push_str(&copies);
        body
    } else {
        let mut marker = String::from("CHOREO_SCRIPT");
        while text.contains(&marker) {
            marker.push('_');
        }
        let mut body = format!(
            "#!/bin/sh -e\n# The {} script, run from a file so that its outputs can be copied after it.\ncat > /tmp/.choreo-script-$$ <<'{marker}'\n{text}",
            first.trim_start_matches("#!")
        );
        if !body.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&format!(
            "{marker}\nchmod +x /tmp/.choreo-script-$$\n/tmp/.choreo-script-$$\n{copies}"
        ));
        body
    };
    str_node(body, script.pos)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A plain scalar as written at `pos`, as `parse.rs` reads it.
fn written(source: &str, line_starts: &[usize], pos: Pos) -> Option<String> {
    let line_start = *line_starts.get(pos.line.saturating_sub(1) as usize)?;
    let line = source.get(line_start..)?;
    let col = line
        .char_indices()
        .nth(pos.col.saturating_sub(1) as usize)
        .map(|(i, _)| i)?;
    let written: String = line[col..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !",]}#".contains(*c))
        .collect();
    (!written.is_empty() && !written.starts_with(['*', '"', '\'', '&', '!'])).then_some(written)
}

/// Choreo files use secrets and variables without declaring them: declare what the file reads.
fn declare_secrets_and_variables(root: &mut Node) {
    let mut secrets: BTreeMap<String, Pos> = BTreeMap::new();
    let mut variables: BTreeMap<String, Pos> = BTreeMap::new();
    collect_refs(root, &mut secrets, &mut variables);
    let Value::Map(entries) = &mut root.value else {
        return;
    };
    let at = entries
        .iter()
        .position(|(k, _)| {
            k.value == Value::Str("templates".into()) || k.value == Value::Str("steps".into())
        })
        .unwrap_or(entries.len());
    let pos = root.pos;
    for (key, names) in [("secrets", secrets), ("variables", variables)] {
        if names.is_empty() {
            continue;
        }
        let items = names.into_iter().map(|(n, p)| str_node(n, p)).collect();
        entries.insert(at, (str_node(key, pos), seq_node(items, pos)));
    }
}

fn collect_refs(
    node: &Node,
    secrets: &mut BTreeMap<String, Pos>,
    variables: &mut BTreeMap<String, Pos>,
) {
    match &node.value {
        Value::Str(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else {
                    break;
                };
                let inner = after[..end].trim();
                let parts: Vec<&str> = inner.split('.').collect();
                match parts.as_slice() {
                    ["secrets" | "SECRETS", n] if values::is_identifier(n) => {
                        secrets.entry((*n).to_string()).or_insert(node.pos);
                    }
                    ["vars" | "VARIABLES", n] if values::is_identifier(n) => {
                        variables.entry((*n).to_string()).or_insert(node.pos);
                    }
                    _ => {}
                }
                rest = &after[end + 2..];
            }
        }
        Value::Seq(items) => items
            .iter()
            .for_each(|i| collect_refs(i, secrets, variables)),
        Value::Map(entries) => entries
            .iter()
            .for_each(|(_, v)| collect_refs(v, secrets, variables)),
        _ => {}
    }
}

// ---- printing ----------------------------------------------------------------------------------

/// Prints a node tree as YAML in Gantry's layout. `source` is the file the tree's positions point
/// into: numbers and booleans are printed as they are written there (`1.10` stays `1.10`).
/// `header` is printed first (the comments kept from the original file).
pub fn emit(root: &Node, source: &str, header: &str) -> String {
    let mut line_starts = vec![0];
    line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
    let mut out = String::from(header);
    let mut e = Emitter {
        source,
        line_starts: &line_starts,
        out: &mut out,
    };
    // The header is printed already.
    let header_lines = source
        .lines()
        .take_while(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---"
        })
        .count();
    let mut seen: BTreeSet<usize> = (1..=header_lines).collect();
    e.block(root, 0, &mut seen);
    out
}

struct Emitter<'a> {
    source: &'a str,
    line_starts: &'a [usize],
    out: &'a mut String,
}

impl Emitter<'_> {
    /// The comment lines right above the line of `key` in the source, at its indentation (or up
    /// to the `- ` before it), each printed once. Lines inside a block scalar are indented deeper
    /// than the next key, so a `#` line of a script is never taken for a comment.
    fn comments(&mut self, key: &Node, pad: &str, seen: &mut BTreeSet<usize>) {
        let lines: Vec<&str> = self.source.lines().collect();
        let Value::Str(name) = &key.value else {
            return;
        };
        // The key's own line: a rewritten key stands where its value does, on the key's line
        // (a scalar) or on the line after it (a block), under its Choreo name.
        let names: &[&str] = match name.as_str() {
            "script" => &["script", "inlineScript"],
            "retry" => &["retry", "retryStrategy"],
            "template" => &["template", "templateRef"],
            "dependsOn" => &["dependsOn", "dependencies"],
            other => &[other],
        };
        let is_key_line = |i: usize| {
            lines.get(i.wrapping_sub(1)).is_some_and(|l| {
                let t = l.trim_start_matches([' ', '-']);
                names
                    .iter()
                    .any(|n| t.strip_prefix(n).is_some_and(|rest| rest.starts_with(':')))
            })
        };
        let at_value = key.pos.line as usize;
        let line = if is_key_line(at_value) {
            at_value
        } else if at_value > 1 && is_key_line(at_value - 1) {
            at_value - 1
        } else {
            return;
        };
        let Some(text) = lines.get(line - 1) else {
            return;
        };
        let key_indent = text.len() - text.trim_start_matches([' ', '-']).len();
        let mut found = Vec::new();
        let mut at = line - 1;
        while at >= 1 {
            let Some(above) = lines.get(at - 1) else {
                break;
            };
            let indent = above.len() - above.trim_start().len();
            if !above.trim_start().starts_with('#')
                || indent > key_indent
                || key_indent - indent > 2
                || seen.contains(&at)
            {
                break;
            }
            found.push(above.trim());
            seen.insert(at);
            at -= 1;
        }
        for comment in found.into_iter().rev() {
            self.out.push_str(&format!("{pad}{comment}\n"));
        }
    }

    fn block(&mut self, node: &Node, indent: usize, seen: &mut BTreeSet<usize>) {
        let pad = " ".repeat(indent);
        match &node.value {
            Value::Map(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    self.comments(k, &pad, seen);
                    let key = self.scalar(k, indent);
                    self.out.push_str(&format!("{pad}{key}:"));
                    self.value_after_key(v, indent, seen);
                }
            }
            Value::Seq(items) if !items.is_empty() => {
                for item in items {
                    if let Value::Map(entries) = &item.value
                        && let Some((k, _)) = entries.first()
                    {
                        self.comments(k, &pad, seen);
                    }
                    self.out.push_str(&format!("{pad}-"));
                    self.item(item, indent, seen);
                }
            }
            _ => {
                let s = self.scalar(node, indent);
                self.out.push_str(&format!("{pad}{s}\n"));
            }
        }
    }

    fn value_after_key(&mut self, v: &Node, indent: usize, seen: &mut BTreeSet<usize>) {
        match &v.value {
            Value::Map(e) if !e.is_empty() => {
                self.out.push('\n');
                self.block(v, indent + 2, seen);
            }
            Value::Seq(i) if !i.is_empty() => {
                self.out.push('\n');
                self.block(v, indent + 2, seen);
            }
            _ => {
                let s = self.scalar(v, indent + 2);
                self.out.push_str(&format!(" {s}\n"));
            }
        }
    }

    /// A list item after its `-`.
    fn item(&mut self, item: &Node, indent: usize, seen: &mut BTreeSet<usize>) {
        match &item.value {
            Value::Map(entries) if !entries.is_empty() => {
                let pad = " ".repeat(indent + 2);
                for (i, (k, v)) in entries.iter().enumerate() {
                    let key = self.scalar(k, indent + 2);
                    if i == 0 {
                        self.out.push_str(&format!(" {key}:"));
                    } else {
                        self.comments(k, &pad, seen);
                        self.out.push_str(&format!("{pad}{key}:"));
                    }
                    self.value_after_key(v, indent + 2, seen);
                }
            }
            Value::Seq(items) if !items.is_empty() => {
                // A nested list (a parallel group): `- - name: a`.
                for (i, inner) in items.iter().enumerate() {
                    if i == 0 {
                        self.out.push_str(" -");
                    } else {
                        self.out.push_str(&format!("{}-", " ".repeat(indent + 2)));
                    }
                    self.item(inner, indent + 2, seen);
                }
            }
            _ => {
                let s = self.scalar(item, indent + 2);
                self.out.push_str(&format!(" {s}\n"));
            }
        }
    }

    fn scalar(&self, node: &Node, indent: usize) -> String {
        match &node.value {
            Value::Null => "~".to_string(),
            Value::Map(_) => "{}".to_string(),
            Value::Seq(_) => "[]".to_string(),
            Value::Bool(b) => self.written_or(node, b.to_string()),
            Value::Int(i) => self.written_or(node, i.to_string()),
            Value::Float(f) => self.written_or(node, format!("{f:?}")),
            Value::Str(s) => string(&canonical(s), indent),
        }
    }

    /// A number or boolean as written in the source, when the node's position holds it.
    fn written_or(&self, node: &Node, fallback: String) -> String {
        match written(self.source, self.line_starts, node.pos) {
            Some(w) if reads_as(&w, &node.value) => w,
            _ => fallback,
        }
    }
}

/// A string with its `{{...}}` references in Gantry's canonical spelling (`{{SECRETS.X}}` is
/// `{{secrets.X}}`, `{{steps.S.outputs.parameters.X}}` is `{{steps.S.outputs.X}}`); a string with
/// a malformed reference is left as it is.
fn canonical(s: &str) -> String {
    if !s.contains("{{") {
        return s.to_string();
    }
    let (text, errors) = parse_text(s, |_, _| Pos::default());
    if errors.is_empty() {
        text.to_string()
    } else {
        s.to_string()
    }
}

/// Whether a plain scalar reads back as the same value.
fn reads_as(written: &str, value: &Value) -> bool {
    match value {
        Value::Bool(b) => written.eq_ignore_ascii_case(&b.to_string()),
        Value::Int(i) => {
            written.parse::<i64>().ok() == Some(*i)
                || (written.starts_with("0x") || written.starts_with("0o"))
        }
        Value::Float(f) => written.parse::<f64>().ok() == Some(*f),
        _ => false,
    }
}

/// A string scalar: plain when that reads back as the same string, a literal block for several
/// lines, double-quoted otherwise.
fn string(s: &str, indent: usize) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./@ ,()".contains(c))
        && !s.ends_with(' ')
        && !s.contains("  ")
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off"
        );
    if plain {
        return s.to_string();
    }
    let block_ok = s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && !s.contains('\r')
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control())
        && s.split('\n').all(|l| l.is_empty() || !l.trim().is_empty());
    if block_ok {
        let body = s.trim_end_matches('\n');
        let chomp = match s.len() - body.len() {
            0 => "-",
            1 => "",
            _ => "+",
        };
        let content = s.strip_suffix('\n').unwrap_or(s);
        let pad = " ".repeat(indent);
        let lines: Vec<String> = content
            .split('\n')
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{pad}{l}")
                }
            })
            .collect();
        return format!("|{chomp}\n{}", lines.join("\n"));
    }
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

/// The comment lines at the top of a file, kept by `gantry convert`.
pub fn leading_comments(source: &str) -> String {
    let mut out = String::new();
    for line in source.lines() {
        let t = line.trim_start();
        if t.starts_with('#') {
            out.push_str(line.trim_end());
            out.push('\n');
        } else if t.is_empty() || t == "---" {
            if !out.is_empty() {
                out.push('\n');
            }
            continue;
        } else {
            break;
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_advice_is_written_in_choreo_s_shapes() {
        assert_eq!(
            reword("step `two` declares no outputs; add `outputs: [{name: x}]` to it"),
            "step `two` declares no outputs; add `outputs: {parameters: [{name: x}]}` to it"
        );
        assert_eq!(
            reword("add `arguments: {a: ...}`"),
            "add `arguments: {parameters: [{name: a, value: ...}]}`"
        );
        assert_eq!(
            reword("default of parameter `env` must be one of `dev`, `prod`, got `qa`"),
            "`value` of parameter `env` must be one of `dev`, `prod`, got `qa`"
        );
        assert_eq!(
            reword("`retry.limit` must be a whole number"),
            "`retryStrategy.limit` must be a whole number"
        );
    }

    #[test]
    fn names_come_from_file_names() {
        assert_eq!(
            name_from_file("a/b/Rotate_Keys.yaml").as_deref(),
            Some("rotate-keys")
        );
        assert_eq!(
            name_from_file("provision.yml").as_deref(),
            Some("provision")
        );
        assert_eq!(name_from_file("9.yaml"), None);
    }

    #[test]
    fn step_names_with_spaces_become_slugs() {
        assert_eq!(gantry_name("Run tests"), "run-tests");
        assert_eq!(gantry_name("run_terraform"), "run-terraform");
        assert_eq!(gantry_name("ok-name"), "ok-name");
    }

    #[test]
    fn strings_are_printed_so_that_they_read_back() {
        assert_eq!(string("hello", 0), "hello");
        assert_eq!(string("MSSQL database (dev)", 0), "MSSQL database (dev)");
        assert_eq!(string("ends ", 0), "\"ends \"");
        assert_eq!(string("true", 0), "\"true\"");
        assert_eq!(string("1.0.0", 0), "\"1.0.0\"");
        assert_eq!(string("{{a}}", 0), "\"{{a}}\"");
        assert_eq!(string("a\nb\n", 2), "|\n  a\n  b");
        assert_eq!(string("a\nb", 2), "|-\n  a\n  b");
    }
}
