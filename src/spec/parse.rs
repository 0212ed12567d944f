//! The converter: a YAML node tree in, a best-effort [`Pipeline`] and a [`SourceMap`] out.
//!
//! Each field is checked where it stands (types, formats, allowed values, unknown keys), and every
//! problem becomes a diagnostic; a broken field falls back to a neutral value so that the rest of the
//! file is still checked. Checks that need the whole file (references, order, cycles) live in
//! `validate.rs` and use the positions this module records in the [`SourceMap`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::diagnostic::{Diagnostic, Diagnostics, did_you_mean};
use super::expr::{Text, parse_text};
use super::model::*;
use super::values;
use super::when::{When, parse_when};
use super::yaml::{Node, Pos, Value};

/// Positions of the parts of a pipeline that `validate.rs` may need to point at.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub root: Pos,
    /// `metadata.name`, or the document start when it is missing.
    pub name: Pos,
    pub parameters: Vec<ParamSpans>,
    pub variables: Vec<Pos>,
    pub secrets: Vec<Pos>,
    pub connections: Vec<Pos>,
    pub templates: Vec<TemplateSpans>,
    /// One entry per step, in `Pipeline::all_steps` order.
    pub steps: Vec<StepSpans>,
    pub schedules: Vec<ScheduleSpans>,
    pub concurrency: Option<Pos>,
    pub on: Option<Pos>,
}

#[derive(Debug, Clone, Default)]
pub struct ParamSpans {
    pub name: Pos,
    /// The `type` could not be read: the parameter is kept for references, its values unchecked.
    pub unknown_type: bool,
}

#[derive(Debug, Clone, Default)]
pub struct TemplateSpans {
    pub name: Pos,
    pub inputs: Vec<Pos>,
    pub outputs: Vec<Pos>,
}

#[derive(Debug, Clone, Default)]
pub struct StepSpans {
    pub name: Pos,
    pub depends_on: Vec<Pos>,
    /// The `template:` value.
    pub template: Option<Pos>,
    /// Argument keys of a user template call.
    pub arguments: BTreeMap<String, Pos>,
    pub outputs: Vec<Pos>,
    /// The parallel group holding the step, if any.
    pub group: Option<Pos>,
}

#[derive(Debug, Clone, Default)]
pub struct ScheduleSpans {
    pub cron: Pos,
    /// Parameter name → position of its value.
    pub parameters: BTreeMap<String, Pos>,
    /// Parameter name → position of its key, for every key given (also those with a broken value).
    pub keys: BTreeMap<String, Pos>,
}

/// Converts the root node of a pipeline file.
pub fn convert(root: &Node, source: &str) -> (Pipeline, SourceMap, Diagnostics) {
    let mut cx = Cx::new(source);
    let mut map = SourceMap {
        root: root.pos,
        ..SourceMap::default()
    };
    let pipeline = cx.pipeline(root, &mut map);
    (pipeline, map, cx.diags)
}

const TOP: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "on",
    "concurrency",
    "timeout",
    "sandbox",
    "parameters",
    "variables",
    "secrets",
    "connections",
    "templates",
    "steps",
];
const METADATA: &[&str] = &["name", "displayName", "description", "labels"];
const ON: &[&str] = &["manual", "push", "pullRequest", "comment", "schedule"];
const PUSH: &[&str] = &["branches", "paths"];
const PULL_REQUEST: &[&str] = &["branches", "paths", "types"];
const SCHEDULE: &[&str] = &["cron", "timezone", "parameters"];
const CONCURRENCY: &[&str] = &["group", "policy"];
const SANDBOX: &[&str] = &["network"];
const PARAMETER: &[&str] = &[
    "name",
    "type",
    "displayName",
    "description",
    "default",
    "required",
    "pattern",
    "enum",
    "minimum",
    "maximum",
];
const TEMPLATE: &[&str] = &[
    "name",
    "inputs",
    "image",
    "script",
    "command",
    "args",
    "env",
    "workingDir",
    "outputs",
];
const INPUT: &[&str] = &["name", "default", "description"];
const STEP: &[&str] = &[
    "name",
    "template",
    "arguments",
    "script",
    "command",
    "args",
    "image",
    "env",
    "workingDir",
    "outputs",
    "when",
    "retry",
    "timeout",
    "continueOn",
    "dependsOn",
];
const OUTPUT: &[&str] = &["name", "secret", "description"];
const RETRY: &[&str] = &["limit", "backoff", "factor", "maxBackoff", "policy"];
const CONTINUE_ON: &[&str] = &["failed", "error"];
const GIT_CHECKOUT_ARGS: &[&str] = &["path"];
const PUBLISH_ARGS: &[&str] = &["resource"];
const RESOURCE: &[&str] = &[
    "name",
    "version",
    "category",
    "description",
    "tags",
    "properties",
    "connectionCredentials",
];
const CREDENTIAL_SET: &[&str] = &["environments", "parameters"];
const CREDENTIAL: &[&str] = &["key", "value", "isSecret"];

/// The keys of a mapping node, checked against the allowed set.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
    /// Allowed keys that an unknown key was taken for a misspelling of (`stpes` → `steps`).
    suggested: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }

    fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, k, _)| k.pos)
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

struct Cx<'s> {
    source: &'s str,
    line_starts: Vec<usize>,
    /// Whether the file is ASCII: then a column is a byte count, found without counting.
    ascii: bool,
    /// The last position found in a file that is not ASCII (line index, byte offset, column):
    /// positions come mostly in order, so the next one on that line counts on from it, not from
    /// the line's start (tens of thousands of references on one long line).
    last: std::cell::Cell<(usize, usize, usize)>,
    diags: Diagnostics,
    /// Names of the file's templates, known before the steps are read.
    template_names: Vec<String>,
    /// The file's parameters and their types (`None`: the type could not be read), known before
    /// the schedules are read.
    param_kinds: Vec<(String, Option<ParamType>)>,
}

impl<'s> Cx<'s> {
    fn new(source: &'s str) -> Cx<'s> {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Cx {
            source,
            line_starts,
            ascii: source.is_ascii(),
            last: std::cell::Cell::new((0, 0, 0)),
            diags: Diagnostics::default(),
            template_names: Vec::new(),
            param_kinds: Vec::new(),
        }
    }

    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(pos, message));
    }

    fn err_help(&mut self, pos: Pos, message: impl Into<String>, help: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(pos, message).with_help(help));
    }

    fn expected(&mut self, node: &Node, what: &str, expected: &str) {
        let found = node.value.kind();
        self.err(
            node.pos,
            format!("{what} must be {expected}, found {found}"),
        );
    }

    // ---- positions -------------------------------------------------------------------------

    /// Byte offset of a position.
    fn offset_of(&self, pos: Pos) -> usize {
        let line_start = self
            .line_starts
            .get(pos.line.saturating_sub(1) as usize)
            .copied()
            .unwrap_or(0);
        let line = &self.source[line_start..];
        let col_bytes = line
            .char_indices()
            .nth(pos.col.saturating_sub(1) as usize)
            .map(|(i, _)| i)
            .unwrap_or(0);
        line_start + col_bytes
    }

    /// Position of a byte offset.
    fn pos_of(&self, offset: usize, len: usize) -> Pos {
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line_idx];
        let col = match self.source.get(start..offset) {
            Some(s) if self.ascii => s.len(),
            Some(s) => {
                let (line, at, col) = self.last.get();
                let col = match self.source.get(at..offset) {
                    Some(more) if line == line_idx && at >= start => col + more.chars().count(),
                    _ => s.chars().count(),
                };
                self.last.set((line_idx, offset, col));
                col
            }
            None => 0,
        };
        Pos::new(line_idx as u32 + 1, col as u32 + 1, len as u32)
    }

    /// Where `needle` first appears at or after `from` in the file, or `fallback`.
    fn find_after(&self, from: usize, needle: &str, fallback: Pos) -> (Pos, usize) {
        match self.source.get(from..).and_then(|rest| rest.find(needle)) {
            Some(i) => (
                self.pos_of(from + i, needle.chars().count()),
                from + i + needle.len(),
            ),
            None => (fallback, from),
        }
    }

    /// Position of the characters `value[offset..offset+len]` of a scalar node's value.
    fn locate_in(&self, node: &Node, value: &str, offset: usize, len: usize) -> Pos {
        let needle: String = value.chars().skip(offset).take(len.max(1)).collect();
        if needle.trim().is_empty() {
            // The end of the value (`a ==` stops short): point just after its last word, found by
            // the last line of the text before it; the node itself when that cannot be found.
            let before: String = value.chars().take(offset).collect();
            let last = before.trim_end().rsplit('\n').next().unwrap_or_default();
            let from = self.offset_of(node.pos);
            return match self.source.get(from..).and_then(|rest| rest.find(last)) {
                Some(i) if !last.is_empty() => self.pos_of(from + i + last.len(), 1),
                _ => node.pos,
            };
        }
        // The same text may stand earlier in the value (`{{a}}-{{a`): skip that many occurrences.
        let before: String = value.chars().take(offset).collect();
        let mut from = self.offset_of(node.pos);
        for _ in 0..before.matches(needle.as_str()).count() {
            match self
                .source
                .get(from..)
                .and_then(|rest| rest.find(needle.as_str()))
            {
                Some(i) => from += i + needle.len(),
                None => return node.pos,
            }
        }
        self.find_after(from, &needle, node.pos).0
    }

    // ---- scalars -----------------------------------------------------------------------------

    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&'static str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.expected(node, what, "a mapping");
            return None;
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut suggested = Vec::new();
        for (key, value) in entries {
            let Value::Str(k) = &key.value else {
                self.err(
                    key.pos,
                    format!("keys of {what} must be strings, found {}", key.value.kind()),
                );
                continue;
            };
            if !allowed.contains(&k.as_str()) {
                let message = format!("unknown field `{k}` in {what}");
                match did_you_mean(k, allowed.iter().copied()) {
                    Some(s) => {
                        suggested.push(s);
                        self.err_help(
                            key.pos.with_len(k.chars().count() as u32),
                            message,
                            format!("did you mean `{s}`?"),
                        )
                    }
                    None => self.err_help(
                        key.pos.with_len(k.chars().count() as u32),
                        message,
                        format!("expected one of: {}", allowed.join(", ")),
                    ),
                }
                continue;
            }
            out.push((k.as_str(), key, value));
        }
        Some(Fields {
            entries: out,
            suggested,
        })
    }

    fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        key: &str,
        what: &str,
        at: Pos,
    ) -> Option<&'n Node> {
        let node = fields.get(key);
        // A misspelt key has been reported with a suggestion already; "missing" would say it twice.
        if node.is_none() && !fields.suggested.contains(&key) {
            self.err(
                at.with_len(1),
                format!("{what} is missing the required field `{key}`"),
            );
        }
        node
    }

    /// A string scalar; other scalars are refused with a hint to quote them.
    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let found = node.value.kind();
                self.err_help(
                    node.pos,
                    format!("{what} must be a string, found {found}"),
                    "put it in quotes",
                );
                None
            }
            _ => {
                self.expected(node, what, "a string");
                None
            }
        }
    }

    /// Any scalar as text: numbers and booleans are taken as they are written (`8080`, `0x1F`,
    /// `1.10`, `True`).
    fn scalar_string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(self.written(node).unwrap_or_else(|| i.to_string())),
            Value::Bool(b) => Some(self.written(node).unwrap_or_else(|| b.to_string())),
            Value::Float(f) => Some(self.written(node).unwrap_or_else(|| f.to_string())),
            _ => {
                self.expected(node, what, "a string");
                None
            }
        }
    }

    /// A plain scalar as it is written in the file. `None` where the node's position holds no
    /// plain scalar of its own: an alias `*name` points at the alias, not at the value, and a
    /// tagged quoted value (`!!int "5"`) is not written as a number.
    fn written(&self, node: &Node) -> Option<String> {
        let start = self.offset_of(node.pos);
        let written: String = self
            .source
            .get(start..)?
            .chars()
            .take_while(|c| !c.is_whitespace() && !",]}#".contains(*c))
            .collect();
        (!written.is_empty() && !written.starts_with(['*', '"', '\''])).then_some(written)
    }

    /// A scalar parsed for `{{...}}` expressions.
    fn text(&mut self, node: &Node, what: &str) -> Option<Text> {
        let value = self.scalar_string(node, what)?;
        self.text_of(node, &value)
    }

    /// A string-only scalar parsed for `{{...}}` expressions (`image`).
    fn string_text(&mut self, node: &Node, what: &str) -> Option<Text> {
        let value = self.string(node, what)?;
        self.text_of(node, &value)
    }

    /// Parses the expressions of a scalar's value. Every malformed expression is reported; the text
    /// is still returned with the references around them, so that those are checked too (the file
    /// fails anyway).
    fn text_of(&mut self, node: &Node, value: &str) -> Option<Text> {
        let mut cursor = self.offset_of(node.pos);
        let (text, errors) = {
            let this = &*self;
            parse_text(value, |_, raw| {
                let (pos, next) = this.find_after(cursor, raw, node.pos);
                cursor = next;
                pos
            })
        };
        for e in errors {
            let pos = self.locate_in(node, value, e.offset, e.len);
            let d = Diagnostic::error(pos.with_len(e.len as u32), e.message);
            self.diags.push(match e.help {
                Some(h) => d.with_help(h),
                None => d,
            });
        }
        Some(text)
    }

    fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.expected(node, what, "true or false");
                None
            }
        }
    }

    fn number(&mut self, node: &Node, what: &str) -> Option<f64> {
        match node.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) if f.is_finite() => Some(f),
            _ => {
                self.expected(node, what, "a number");
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let s = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => {
                self.err_help(
                    node.pos,
                    format!("{what} must be a duration with a unit, found the number {i}"),
                    format!("write `{i}s` or `{i}m`"),
                );
                return None;
            }
            _ => {
                self.expected(node, what, "a duration such as `90s`, `10m` or `1h30m`");
                return None;
            }
        };
        match values::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(node.pos, e);
                None
            }
        }
    }

    fn positive_duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let d = self.duration(node, what)?;
        if d.is_zero() {
            self.err(node.pos, format!("{what} must be longer than zero"));
            return None;
        }
        Some(d)
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.expected(node, what, "a list");
                &[]
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Vec<(String, Pos)> {
        let mut out = Vec::new();
        for item in self.list(node, what) {
            if let Some(s) = self.string(item, &format!("an item of {what}")) {
                out.push((s, item.pos));
            }
        }
        out
    }

    fn name(
        &mut self,
        node: &Node,
        what: &str,
        check: fn(&str) -> bool,
        rule: &str,
    ) -> Option<String> {
        let s = self.kept_name(node, what, check, rule)?;
        check(&s).then_some(s)
    }

    /// A name that other parts of the file refer to: an invalid one is reported but kept, so that
    /// references to it resolve instead of cascading into "unknown" errors (the file fails anyway).
    fn kept_name(
        &mut self,
        node: &Node,
        what: &str,
        check: fn(&str) -> bool,
        rule: &str,
    ) -> Option<String> {
        let s = self.string(node, what)?;
        if !check(&s) {
            self.err(
                node.pos,
                format!("invalid {what} `{s}`: it must match {rule}"),
            );
        }
        Some(s)
    }

    fn enumerated<T: Copy>(&mut self, node: &Node, what: &str, choices: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, what)?;
        if let Some((_, v)) = choices.iter().find(|(k, _)| *k == s) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(k, _)| *k).collect();
        let message = format!("invalid {what} `{s}`: expected one of {}", names.join(", "));
        match did_you_mean(&s, names.iter().copied()) {
            Some(m) => self.err_help(node.pos, message, format!("did you mean `{m}`?")),
            None => self.err(node.pos, message),
        }
        None
    }

    // ---- the document ------------------------------------------------------------------------

    fn pipeline(&mut self, root: &Node, map: &mut SourceMap) -> Pipeline {
        let mut pipeline = Pipeline {
            metadata: Metadata::default(),
            on: Triggers::default(),
            concurrency: None,
            timeout: DEFAULT_TIMEOUT,
            network: true,
            parameters: Vec::new(),
            variables: Vec::new(),
            secrets: Vec::new(),
            connections: Vec::new(),
            templates: Vec::new(),
            steps: Vec::new(),
        };
        let Some(top) = self.fields(root, "the pipeline", TOP) else {
            return pipeline;
        };
        let doc = root.pos;
        if let Some(node) = self.required(&top, "apiVersion", "the pipeline", doc)
            && let Some(v) = self.string(node, "`apiVersion`")
            && v != API_VERSION
        {
            self.err_help(
                node.pos,
                format!("unsupported apiVersion `{v}`"),
                format!("write `apiVersion: {API_VERSION}`"),
            );
        }
        if let Some(node) = self.required(&top, "kind", "the pipeline", doc)
            && let Some(v) = self.string(node, "`kind`")
            && v != KIND
        {
            self.err_help(
                node.pos,
                format!("unsupported kind `{v}`"),
                format!("write `kind: {KIND}`"),
            );
        }
        map.name = doc;
        if let Some(node) = self.required(&top, "metadata", "the pipeline", doc) {
            pipeline.metadata = self.metadata(node);
            if let Value::Map(entries) = &node.value
                && let Some((_, name)) = entries
                    .iter()
                    .find(|(k, _)| k.value == Value::Str("name".into()))
            {
                map.name = name.pos;
            }
        }
        if let Some(node) = top.get("parameters") {
            for item in self.list(node, "`parameters`") {
                if let Some((param, spans)) = self.parameter(item) {
                    self.param_kinds.push((
                        param.name.clone(),
                        (!spans.unknown_type).then_some(param.kind),
                    ));
                    pipeline.parameters.push(param);
                    map.parameters.push(spans);
                }
            }
        }
        if let Some(node) = top.get("on") {
            map.on = top.key_pos("on");
            pipeline.on = self.triggers(node, map);
        }
        if let Some(node) = top.get("concurrency") {
            map.concurrency = Some(node.pos);
            pipeline.concurrency = self.concurrency(node);
        }
        if let Some(node) = top.get("timeout")
            && let Some(d) = self.positive_duration(node, "`timeout`")
        {
            pipeline.timeout = d;
        }
        if let Some(node) = top.get("sandbox")
            && let Some(f) = self.fields(node, "`sandbox`", SANDBOX)
            && let Some(n) = f.get("network")
            && let Some(network) = self.bool(n, "`sandbox.network`")
        {
            pipeline.network = network;
        }
        if let Some(node) = top.get("variables") {
            for (name, pos) in self.string_list(node, "`variables`") {
                // Kept even when invalid, so that references to it do not cascade.
                if !values::is_identifier(&name) {
                    self.err(
                        pos,
                        format!(
                            "invalid variable name `{name}`: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$"
                        ),
                    );
                }
                pipeline.variables.push(name);
                map.variables.push(pos);
            }
        }
        if let Some(node) = top.get("secrets") {
            for (name, pos) in self.string_list(node, "`secrets`") {
                // Kept even when invalid, so that references to it do not cascade.
                if !values::is_identifier(&name) {
                    self.err(
                        pos,
                        format!(
                            "invalid secret name `{name}`: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$"
                        ),
                    );
                }
                pipeline.secrets.push(name);
                map.secrets.push(pos);
            }
        }
        if let Some(node) = top.get("connections") {
            for (name, pos) in self.string_list(node, "`connections`") {
                // Kept even when invalid, so that references to it do not cascade.
                if !values::is_connection_name(&name) {
                    self.err(
                        pos,
                        format!(
                            "invalid connection name `{name}`: it must match ^[A-Za-z0-9][A-Za-z0-9_-]{{0,99}}$"
                        ),
                    );
                }
                pipeline.connections.push(name);
                map.connections.push(pos);
            }
        }
        if let Some(node) = top.get("templates") {
            for item in self.list(node, "`templates`") {
                if let Some((template, spans)) = self.template(item) {
                    pipeline.templates.push(template);
                    map.templates.push(spans);
                }
            }
            self.template_names = pipeline.templates.iter().map(|t| t.name.clone()).collect();
        }
        if let Some(node) = self.required(&top, "steps", "the pipeline", doc) {
            let items = self.list(node, "`steps`");
            if items.is_empty() && matches!(node.value, Value::Seq(_) | Value::Null) {
                self.err(node.pos, "`steps` must hold at least one step");
            }
            for item in items {
                if let Some(step_item) = self.step_item(item, map) {
                    pipeline.steps.push(step_item);
                }
            }
        }
        pipeline
    }

    fn metadata(&mut self, node: &Node) -> Metadata {
        let mut metadata = Metadata::default();
        let Some(f) = self.fields(node, "`metadata`", METADATA) else {
            return metadata;
        };
        if let Some(n) = self.required(&f, "name", "`metadata`", node.pos)
            && let Some(name) = self.name(
                n,
                "pipeline name",
                values::is_pipeline_name,
                "^[a-z][a-z0-9-]{0,62}$",
            )
        {
            metadata.name = name;
        }
        metadata.display_name = f
            .get("displayName")
            .and_then(|n| self.scalar_string(n, "`displayName`"));
        metadata.description = f
            .get("description")
            .and_then(|n| self.scalar_string(n, "`description`"));
        if let Some(labels) = f.get("labels") {
            match &labels.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let Some(key) = self.string(k, "a label key") else {
                            continue;
                        };
                        if let Some(value) = self.scalar_string(v, &format!("label `{key}`")) {
                            metadata.labels.insert(key, value);
                        }
                    }
                }
                Value::Null => {}
                _ => self.expected(labels, "`labels`", "a mapping of strings"),
            }
        }
        metadata
    }

    fn triggers(&mut self, node: &Node, map: &mut SourceMap) -> Triggers {
        let mut on = Triggers::default();
        let Some(f) = self.fields(node, "`on`", ON) else {
            return on;
        };
        if let Some(n) = f.get("manual") {
            on.manual = self.bool(n, "`on.manual`").unwrap_or(true);
        }
        if let Some(n) = f.get("comment") {
            on.comment = self.bool(n, "`on.comment`").unwrap_or(false);
        }
        if let Some(n) = f.get("push") {
            let mut push = PushTrigger::default();
            if !matches!(n.value, Value::Null)
                && let Some(pf) = self.fields(n, "`on.push`", PUSH)
            {
                push.branches = self.globs(pf.get("branches"), "`on.push.branches`");
                push.paths = self.globs(pf.get("paths"), "`on.push.paths`");
            }
            on.push = Some(push);
        }
        if let Some(n) = f.get("pullRequest") {
            let mut pr = PullRequestTrigger {
                branches: Vec::new(),
                paths: Vec::new(),
                types: PullRequestType::DEFAULT.to_vec(),
            };
            if !matches!(n.value, Value::Null)
                && let Some(pf) = self.fields(n, "`on.pullRequest`", PULL_REQUEST)
            {
                pr.branches = self.globs(pf.get("branches"), "`on.pullRequest.branches`");
                pr.paths = self.globs(pf.get("paths"), "`on.pullRequest.paths`");
                if let Some(types) = pf.get("types") {
                    pr.types.clear();
                    let items = self.list(types, "`on.pullRequest.types`");
                    for item in items {
                        if let Some(t) =
                            self.enumerated(item, "pull request type", &PullRequestType::ALL)
                            && !pr.types.contains(&t)
                        {
                            pr.types.push(t);
                        }
                    }
                    if items.is_empty() && matches!(types.value, Value::Seq(_) | Value::Null) {
                        self.err_help(
                            types.pos,
                            "`on.pullRequest.types` is empty, so the trigger can never fire",
                            "list at least one of opened, synchronize, reopened, closed, or leave `types` out for opened, synchronize and reopened",
                        );
                    }
                }
            }
            on.pull_request = Some(pr);
        }
        if let Some(n) = f.get("schedule") {
            for item in self.list(n, "`on.schedule`") {
                if let Some((schedule, spans)) = self.schedule(item) {
                    on.schedule.push(schedule);
                    map.schedules.push(spans);
                }
            }
        }
        on
    }

    fn globs(&mut self, node: Option<&Node>, what: &str) -> Vec<String> {
        let Some(node) = node else { return Vec::new() };
        let mut out = Vec::new();
        for (pattern, pos) in self.string_list(node, what) {
            match globset::GlobBuilder::new(&pattern)
                .literal_separator(true)
                .build()
            {
                Ok(_) => out.push(pattern),
                Err(e) => self.err(
                    pos,
                    format!("invalid glob `{pattern}` in {what}: {}", e.kind()),
                ),
            }
        }
        out
    }

    fn schedule(&mut self, node: &Node) -> Option<(Schedule, ScheduleSpans)> {
        let f = self.fields(node, "a schedule", SCHEDULE)?;
        let cron_node = self.required(&f, "cron", "a schedule", node.pos)?;
        let cron = self.string(cron_node, "`cron`")?;
        if let Err(e) = values::check_cron(&cron) {
            self.err(cron_node.pos, e);
        }
        let mut timezone = "UTC".to_string();
        if let Some(tz_node) = f.get("timezone")
            && let Some(tz) = self.string(tz_node, "`timezone`")
        {
            match values::parse_timezone(&tz) {
                Ok(_) => timezone = tz,
                Err(e) => match values::suggest_timezone(&tz) {
                    Some(s) => self.err_help(tz_node.pos, e, format!("did you mean `{s}`?")),
                    None => self.err(tz_node.pos, e),
                },
            }
        }
        let mut spans = ScheduleSpans {
            cron: cron_node.pos,
            parameters: BTreeMap::new(),
            keys: BTreeMap::new(),
        };
        let mut parameters = BTreeMap::new();
        if let Some(p) = f.get("parameters") {
            match &p.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let Some(key) = self.string(k, "a parameter name") else {
                            continue;
                        };
                        spans
                            .keys
                            .insert(key.clone(), k.pos.with_len(key.chars().count() as u32));
                        let value = match &v.value {
                            Value::Str(s) => ParamValue::String(s.clone()),
                            Value::Int(i) => ParamValue::Integer(*i),
                            Value::Float(x) => ParamValue::Number(*x),
                            Value::Bool(b) => ParamValue::Boolean(*b),
                            _ => {
                                self.expected(
                                    v,
                                    &format!("schedule parameter `{key}`"),
                                    "a scalar value",
                                );
                                continue;
                            }
                        };
                        // A declared parameter's value is typed as its default would be; an
                        // undeclared one, or one whose type is unknown, is reported by `validate`.
                        let kind = self
                            .param_kinds
                            .iter()
                            .find(|(name, _)| *name == key)
                            .and_then(|(_, kind)| *kind);
                        let value = match kind {
                            Some(kind) => {
                                let what = format!("schedule value of parameter `{key}`");
                                let Some(typed) = self.typed_value(v, kind, &what) else {
                                    continue;
                                };
                                typed
                            }
                            None => value,
                        };
                        spans.parameters.insert(key.clone(), v.pos);
                        parameters.insert(key, value);
                    }
                }
                Value::Null => {}
                _ => self.expected(p, "schedule `parameters`", "a mapping"),
            }
        }
        Some((
            Schedule {
                cron,
                timezone,
                parameters,
            },
            spans,
        ))
    }

    fn concurrency(&mut self, node: &Node) -> Option<Concurrency> {
        let f = self.fields(node, "`concurrency`", CONCURRENCY)?;
        let group = self
            .required(&f, "group", "`concurrency`", node.pos)
            .and_then(|n| self.text(n, "`concurrency.group`"));
        let policy = match f.get("policy") {
            Some(n) => self.enumerated(
                n,
                "concurrency policy",
                &[
                    ("queue", ConcurrencyPolicy::Queue),
                    ("cancel-running", ConcurrencyPolicy::CancelRunning),
                    ("skip", ConcurrencyPolicy::Skip),
                ],
            ),
            None => Some(ConcurrencyPolicy::Queue),
        };
        // A bad policy has been reported; the group is kept so that its references are checked.
        Some(Concurrency {
            group: group?,
            policy: policy.unwrap_or(ConcurrencyPolicy::Queue),
        })
    }

    fn parameter(&mut self, node: &Node) -> Option<(Parameter, ParamSpans)> {
        let f = self.fields(node, "a parameter", PARAMETER)?;
        let name_node = self.required(&f, "name", "a parameter", node.pos)?;
        let name = self.kept_name(
            name_node,
            "parameter name",
            values::is_identifier,
            "^[a-zA-Z_][a-zA-Z0-9_]*$",
        )?;
        let mut spans = ParamSpans {
            name: name_node.pos,
            unknown_type: false,
        };
        let explicit_type = match f.get("type") {
            Some(n) => match self.enumerated(n, "parameter type", &ParamType::ALL) {
                Some(kind) => Some(kind),
                // Kept without the checks that depend on its type, so that references to it and
                // schedules that set it do not cascade into more errors.
                None => {
                    let param = Parameter {
                        name,
                        kind: ParamType::String,
                        display_name: None,
                        description: None,
                        default: None,
                        required: false,
                        pattern: None,
                        choices: Vec::new(),
                        minimum: None,
                        maximum: None,
                    };
                    spans.unknown_type = true;
                    return Some((param, spans));
                }
            },
            None => None,
        };
        // `enum:` without `type:` means an enum parameter, as in Argo.
        let kind = explicit_type.unwrap_or(if f.has("enum") {
            ParamType::Enum
        } else {
            ParamType::String
        });
        let mut param = Parameter {
            name: name.clone(),
            kind,
            display_name: f
                .get("displayName")
                .and_then(|n| self.scalar_string(n, "`displayName`")),
            description: f
                .get("description")
                .and_then(|n| self.scalar_string(n, "`description`")),
            default: None,
            required: true,
            pattern: None,
            choices: Vec::new(),
            minimum: None,
            maximum: None,
        };
        if let Some(n) = f.get("enum") {
            if kind != ParamType::Enum {
                self.err_help(
                    f.key_pos("enum").unwrap_or(n.pos),
                    format!(
                        "`enum` is only allowed on parameters of type enum; `{name}` is of type {}",
                        kind.as_str()
                    ),
                    "write `type: enum`",
                );
            }
            for item in self.list(n, "`enum`") {
                if let Some(v) = self.scalar_string(item, "an enum value") {
                    if param.choices.contains(&v) {
                        self.err(item.pos, format!("duplicate enum value `{v}`"));
                    } else {
                        param.choices.push(v);
                    }
                }
            }
        }
        if kind == ParamType::Enum && param.choices.is_empty() {
            self.err(
                name_node.pos,
                format!("enum parameter `{name}` needs a non-empty `enum` list of allowed values"),
            );
        }
        // The pattern compiled here also checks the default below (compiling is most of a
        // pattern's cost).
        let mut compiled = None;
        if let Some(n) = f.get("pattern") {
            if kind != ParamType::String {
                self.err(
                    f.key_pos("pattern").unwrap_or(n.pos),
                    format!(
                        "`pattern` is only allowed on string parameters; `{name}` is of type {}",
                        kind.as_str()
                    ),
                );
            } else if let Some(p) = self.string(n, "`pattern`") {
                match values::Pattern::new(&p) {
                    Ok(re) => {
                        param.pattern = Some(p);
                        compiled = Some(re);
                    }
                    Err(e) => {
                        let first = e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .trim_start_matches("error: ")
                            .to_string();
                        self.err(n.pos, format!("invalid pattern `{p}`: {first}"));
                    }
                }
            }
        }
        for (key, slot) in [
            ("minimum", &mut param.minimum),
            ("maximum", &mut param.maximum),
        ] {
            if let Some(n) = f.get(key) {
                if !matches!(kind, ParamType::Integer | ParamType::Number) {
                    self.err(f.key_pos(key).unwrap_or(n.pos), format!("`{key}` is only allowed on integer and number parameters; `{name}` is of type {}", kind.as_str()));
                } else {
                    *slot = self.number(n, &format!("`{key}`"));
                }
            }
        }
        if let (Some(min), Some(max)) = (param.minimum, param.maximum)
            && min > max
        {
            let pos = f.get("maximum").map(|n| n.pos).unwrap_or(node.pos);
            self.err(
                pos,
                format!("`maximum` ({max}) of parameter `{name}` is below its `minimum` ({min})"),
            );
            // No value fits both; the default is not checked against them as well.
            param.minimum = None;
            param.maximum = None;
        }
        if let Some(n) = f.get("default") {
            param.default = self.param_default(n, &param, compiled.as_ref());
        }
        param.required = match f.get("required") {
            Some(n) => self.bool(n, "`required`").unwrap_or(true),
            // Absent `required` means "required unless there is a default"; a default that failed
            // its checks still counts, so the error is not repeated as a missing value elsewhere.
            None => !f.has("default"),
        };
        // A parameter with errors is kept so that references to it do not cascade into more errors;
        // the file already fails.
        Some((param, spans))
    }

    /// A YAML value as a value of a parameter type, the same way for defaults and schedule values:
    /// `enum` takes any scalar as written, `string` wants a YAML string, `number` an integer or a
    /// float, `integer` and `boolean` their own YAML type. `what` names the value for the error.
    fn typed_value(&mut self, node: &Node, kind: ParamType, what: &str) -> Option<ParamValue> {
        match (kind, &node.value) {
            (ParamType::String | ParamType::Enum, Value::Str(s)) => {
                Some(ParamValue::String(s.clone()))
            }
            (ParamType::Enum, Value::Int(_) | Value::Bool(_) | Value::Float(_)) => {
                self.scalar_string(node, what).map(ParamValue::String)
            }
            (ParamType::Integer, Value::Int(i)) => Some(ParamValue::Integer(*i)),
            (ParamType::Number, Value::Int(i)) => Some(ParamValue::Number(*i as f64)),
            (ParamType::Number, Value::Float(x)) => Some(ParamValue::Number(*x)),
            (ParamType::Boolean, Value::Bool(b)) => Some(ParamValue::Boolean(*b)),
            (_, other) => {
                let help = match (kind, other) {
                    (ParamType::String, Value::Int(_) | Value::Float(_) | Value::Bool(_)) => {
                        "put it in quotes to make it a string"
                    }
                    (ParamType::Integer | ParamType::Number, Value::Str(_)) => {
                        "write the number without quotes"
                    }
                    (ParamType::Boolean, Value::Str(_)) => "write true or false without quotes",
                    _ => "give a value of the parameter's type",
                };
                self.err_help(
                    node.pos,
                    format!(
                        "{what} must be {}, found {}",
                        match kind {
                            ParamType::String => "a string",
                            ParamType::Integer => "an integer",
                            ParamType::Number => "a number",
                            ParamType::Boolean => "true or false",
                            ParamType::Enum => "one of its enum values",
                        },
                        other.kind()
                    ),
                    help,
                );
                None
            }
        }
    }

    /// A parameter's default, checked against the parameter (with `pattern`, its `pattern`
    /// compiled).
    fn param_default(
        &mut self,
        node: &Node,
        param: &Parameter,
        pattern: Option<&values::Pattern>,
    ) -> Option<ParamValue> {
        let kind = param.kind;
        let value = self.typed_value(
            node,
            kind,
            &format!("default of parameter `{}`", param.name),
        )?;
        // An enum without values has been reported already; no default could match it.
        if kind == ParamType::Enum && param.choices.is_empty() {
            return None;
        }
        if let Err(e) = values::check_param_value_with(param, &value, pattern) {
            // The messages of check_param_value are written for run-time values.
            let message = e.replacen("parameter", "default of parameter", 1);
            if kind == ParamType::Enum
                && let ParamValue::String(s) = &value
                && let Some(m) = did_you_mean(s, param.choices.iter().map(String::as_str))
            {
                self.err_help(node.pos, message, format!("did you mean `{m}`?"));
            } else {
                self.err(node.pos, message);
            }
            return None;
        }
        Some(value)
    }

    fn env(&mut self, node: &Node) -> Vec<(String, Text)> {
        let mut out: Vec<(String, Text)> = Vec::new();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Some(key) = self.string(k, "an env name") else {
                        continue;
                    };
                    if !values::is_env_name(&key) {
                        self.err_help(
                            k.pos,
                            format!("invalid env name `{key}`: it must match ^[A-Z_][A-Z0-9_]*$"),
                            format!(
                                "write `{}`",
                                key.to_ascii_uppercase().replace(['-', '.'], "_")
                            ),
                        );
                        continue;
                    }
                    if key.starts_with("GANTRY_") {
                        self.err(
                            k.pos.with_len(key.chars().count() as u32),
                            format!(
                                "env name `{key}` is reserved: Gantry sets GANTRY_* variables itself"
                            ),
                        );
                    }
                    if let Some(text) = self.text(v, &format!("env `{key}`")) {
                        out.push((key, text));
                    }
                }
            }
            Value::Null => {}
            _ => self.expected(node, "`env`", "a mapping of NAME: value"),
        }
        out
    }

    fn outputs(&mut self, node: &Node) -> (Vec<Output>, Vec<Pos>) {
        let mut outputs = Vec::new();
        let mut spans = Vec::new();
        for item in self.list(node, "`outputs`") {
            let (name_node, secret) = match &item.value {
                Value::Str(_) => (item, false),
                _ => {
                    let Some(f) = self.fields(item, "an output", OUTPUT) else {
                        continue;
                    };
                    let Some(n) = self.required(&f, "name", "an output", item.pos) else {
                        continue;
                    };
                    let secret = f
                        .get("secret")
                        .and_then(|s| self.bool(s, "`secret`"))
                        .unwrap_or(false);
                    (n, secret)
                }
            };
            if let Some(name) = self.kept_name(
                name_node,
                "output name",
                values::is_output_name,
                "^[a-zA-Z_][a-zA-Z0-9_-]*$",
            ) {
                outputs.push(Output { name, secret });
                spans.push(name_node.pos);
            }
        }
        (outputs, spans)
    }

    /// `script`, or `command` with optional `args`; `what` names the owner for messages, and
    /// `bodies` says what it may have instead when it has none.
    fn body(&mut self, f: &Fields, what: &str, at: Pos, bodies: &str) -> Option<Body> {
        let script = f.get("script");
        let command = f.get("command");
        if let (Some(_), Some(c)) = (script, command) {
            self.err(
                f.key_pos("command").unwrap_or(c.pos),
                format!("{what} has both `script` and `command`; give exactly one"),
            );
            return None;
        }
        if let Some(args) = f.get("args")
            && command.is_none()
        {
            self.err(
                f.key_pos("args").unwrap_or(args.pos),
                "`args` needs `command`",
            );
        }
        if let Some(s) = script {
            let text = self.text(s, "`script`")?;
            if is_blank(&text) {
                self.err(s.pos, format!("{what} has an empty `script`"));
                return None;
            }
            return Some(Body::Script(text));
        }
        if let Some(c) = command {
            // Every item is checked, so that one bad item does not hide the others; the items that
            // could be read are kept so that their references are checked too (the file fails).
            let items = match &c.value {
                Value::Seq(items) => items.as_slice(),
                _ => std::slice::from_ref(c),
            };
            if items.is_empty() {
                self.err(c.pos, "`command` must name a program");
                return None;
            }
            let label = if matches!(c.value, Value::Seq(_)) {
                "an item of `command`"
            } else {
                "`command`"
            };
            let mut parts = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Some(text) = self.text(item, label) else {
                    continue;
                };
                if i == 0 && is_blank(&text) {
                    self.err(
                        item.pos,
                        "`command` must name a program, found an empty string",
                    );
                } else if text.parts.is_empty() {
                    self.err_help(
                        item.pos,
                        "an item of `command` is empty",
                        "remove it, or pass the empty argument in `args`",
                    );
                }
                parts.push(text);
            }
            let mut args = Vec::new();
            if let Some(a) = f.get("args") {
                for item in self.list(a, "`args`") {
                    args.extend(self.text(item, "an item of `args`"));
                }
            }
            return Some(Body::Command {
                command: parts,
                args,
            });
        }
        // A misspelt `scirpt:` has been reported with a suggestion already.
        if !["script", "command", "template"]
            .iter()
            .any(|k| f.suggested.contains(k))
        {
            self.err_help(at, format!("{what} has nothing to run"), bodies);
        }
        None
    }

    fn template(&mut self, node: &Node) -> Option<(Template, TemplateSpans)> {
        let f = self.fields(node, "a template", TEMPLATE)?;
        let name_node = self.required(&f, "name", "a template", node.pos)?;
        let name = self.kept_name(
            name_node,
            "template name",
            values::is_step_name,
            "^[a-z][a-z0-9-]*$",
        )?;
        let mut spans = TemplateSpans {
            name: name_node.pos,
            ..TemplateSpans::default()
        };
        let mut inputs = Vec::new();
        if let Some(n) = f.get("inputs") {
            for item in self.list(n, "`inputs`") {
                let (name_node, default) = match &item.value {
                    Value::Str(_) => (item, None),
                    _ => {
                        let Some(fi) = self.fields(item, "an input", INPUT) else {
                            continue;
                        };
                        let Some(n) = self.required(&fi, "name", "an input", item.pos) else {
                            continue;
                        };
                        let default = fi.get("default").and_then(|d| self.text(d, "`default`"));
                        (n, default)
                    }
                };
                if let Some(input) = self.kept_name(
                    name_node,
                    "input name",
                    values::is_identifier,
                    "^[a-zA-Z_][a-zA-Z0-9_]*$",
                ) {
                    inputs.push(Input {
                        name: input,
                        default,
                    });
                    spans.inputs.push(name_node.pos);
                }
            }
        }
        let body = self.body(
            &f,
            &format!("template `{name}`"),
            name_node.pos,
            "give it `script` or `command`",
        );
        let env = f.get("env").map(|n| self.env(n)).unwrap_or_default();
        let working_dir = f
            .get("workingDir")
            .and_then(|n| self.text(n, "`workingDir`"));
        let image = f.get("image").and_then(|n| self.string_text(n, "`image`"));
        let (outputs, output_spans) = f
            .get("outputs")
            .map(|n| self.outputs(n))
            .unwrap_or_default();
        spans.outputs = output_spans;
        Some((
            Template {
                name,
                inputs,
                body: body.unwrap_or(Body::Script(Text::default())),
                image,
                env,
                working_dir,
                outputs,
            },
            spans,
        ))
    }

    fn step_item(&mut self, node: &Node, map: &mut SourceMap) -> Option<StepItem> {
        match &node.value {
            Value::Seq(items) => {
                if items.is_empty() {
                    self.err(node.pos, "a parallel group must hold at least one step");
                    return None;
                }
                let mut group = Vec::new();
                for item in items {
                    if matches!(item.value, Value::Seq(_)) {
                        self.err_help(
                            item.pos,
                            "parallel groups cannot be nested",
                            "list the steps of the inner group directly in the outer group",
                        );
                        continue;
                    }
                    if let Some(step) = self.step(item, map, Some(node.pos)) {
                        group.push(step);
                    }
                }
                Some(StepItem::Parallel(group))
            }
            _ => self
                .step(node, map, None)
                .map(|s| StepItem::Step(Box::new(s))),
        }
    }

    fn step(&mut self, node: &Node, map: &mut SourceMap, group: Option<Pos>) -> Option<Step> {
        let f = self.fields(node, "a step", STEP)?;
        let name_node = self.required(&f, "name", "a step", node.pos)?;
        let name = self.kept_name(
            name_node,
            "step name",
            values::is_step_name,
            "^[a-z][a-z0-9-]*$",
        )?;
        let mut spans = StepSpans {
            name: name_node.pos,
            group,
            ..StepSpans::default()
        };
        let what = format!("step `{name}`");
        let run = match f.get("template") {
            Some(t) => {
                if f.has("script") || f.has("command") {
                    self.err(
                        f.key_pos("template").unwrap_or(t.pos),
                        format!("{what} has `template` and a body of its own; give exactly one of script, command, template"),
                    );
                }
                if let Some(a) = f.get("args") {
                    self.err(
                        f.key_pos("args").unwrap_or(a.pos),
                        "`args` needs `command`; pass template values in `arguments`",
                    );
                }
                spans.template = Some(t.pos);
                self.template_call(t, f.get("arguments"), &mut spans)
            }
            None => {
                if let Some(a) = f.get("arguments") {
                    self.err(
                        f.key_pos("arguments").unwrap_or(a.pos),
                        "`arguments` needs `template`",
                    );
                }
                self.body(
                    &f,
                    &what,
                    name_node.pos,
                    "give it `script`, `command` or `template`",
                )
                .map(StepRun::Body)
            }
        };
        let env = f.get("env").map(|n| self.env(n)).unwrap_or_default();
        let working_dir = f
            .get("workingDir")
            .and_then(|n| self.text(n, "`workingDir`"));
        let image = f.get("image").and_then(|n| self.string_text(n, "`image`"));
        let (outputs, output_spans) = f
            .get("outputs")
            .map(|n| self.outputs(n))
            .unwrap_or_default();
        spans.outputs = output_spans;
        let when = f.get("when").and_then(|n| self.when(n));
        let retry = f.get("retry").and_then(|n| self.retry(n));
        let timeout = f
            .get("timeout")
            .and_then(|n| self.positive_duration(n, "`timeout`"));
        let continue_on = f
            .get("continueOn")
            .map(|n| self.continue_on(n))
            .unwrap_or_default();
        let mut depends_on = Vec::new();
        if let Some(n) = f.get("dependsOn") {
            for (dep, pos) in self.string_list(n, "`dependsOn`") {
                depends_on.push(dep);
                spans.depends_on.push(pos);
            }
        }
        map.steps.push(spans);
        // A step whose body could not be read is kept with an empty script, so that references
        // to it are still checked; the error above already fails the file.
        let run = run.unwrap_or(StepRun::Body(Body::Script(Text::default())));
        Some(Step {
            name,
            run,
            image,
            env,
            working_dir,
            outputs,
            when,
            retry,
            timeout,
            continue_on,
            depends_on,
        })
    }

    fn template_call(
        &mut self,
        t: &Node,
        arguments: Option<&Node>,
        spans: &mut StepSpans,
    ) -> Option<StepRun> {
        let reference = self.string(t, "`template`")?;
        if reference.starts_with("gantry/") {
            let Some((_, builtin)) = Builtin::ALL.iter().find(|(id, _)| *id == reference) else {
                let ids: Vec<&str> = Builtin::ALL.iter().map(|(id, _)| *id).collect();
                let message = format!("unknown built-in template `{reference}`");
                match did_you_mean(&reference, ids.iter().copied()) {
                    Some(s) => self.err_help(t.pos, message, format!("did you mean `{s}`?")),
                    None => self.err_help(
                        t.pos,
                        message,
                        format!("built-in templates: {}", ids.join(", ")),
                    ),
                }
                return None;
            };
            return match builtin {
                Builtin::GitCheckoutV1 => {
                    let mut path = None;
                    if let Some(a) = arguments
                        && !matches!(a.value, Value::Null)
                        && let Some(af) =
                            self.fields(a, "arguments of gantry/git-checkout@v1", GIT_CHECKOUT_ARGS)
                    {
                        path = af.get("path").and_then(|n| self.text(n, "`path`"));
                    }
                    Some(StepRun::GitCheckout { path })
                }
                Builtin::MarketplacePublishV1 => {
                    let Some(a) = arguments.filter(|a| !matches!(a.value, Value::Null)) else {
                        self.err_help(
                            t.pos,
                            "gantry/marketplace-publish@v1 needs `arguments.resource`",
                            "describe the resource to publish under `arguments: {resource: ...}`",
                        );
                        return None;
                    };
                    let af = self.fields(
                        a,
                        "arguments of gantry/marketplace-publish@v1",
                        PUBLISH_ARGS,
                    )?;
                    let r = self.required(
                        &af,
                        "resource",
                        "arguments of gantry/marketplace-publish@v1",
                        a.pos,
                    )?;
                    self.resource(r).map(|res| StepRun::Publish(Box::new(res)))
                }
            };
        }
        // A template whose own name is invalid has been reported where it is declared.
        if !values::is_step_name(&reference) && !self.template_names.contains(&reference) {
            self.err_help(
                t.pos,
                format!("invalid template reference `{reference}`"),
                "name a template of this file, or a built-in such as `gantry/git-checkout@v1`",
            );
            return None;
        }
        let mut args = BTreeMap::new();
        if let Some(a) = arguments {
            match &a.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let Some(key) = self.string(k, "an argument name") else {
                            continue;
                        };
                        spans
                            .arguments
                            .insert(key.clone(), k.pos.with_len(key.chars().count() as u32));
                        if let Some(text) = self.text(v, &format!("argument `{key}`")) {
                            args.insert(key, text);
                        }
                    }
                }
                Value::Null => {}
                _ => self.expected(a, "`arguments`", "a mapping of input: value"),
            }
        }
        Some(StepRun::Template {
            name: reference,
            arguments: args,
        })
    }

    fn resource(&mut self, node: &Node) -> Option<Resource> {
        let f = self.fields(node, "`resource`", RESOURCE)?;
        let name = self
            .required(&f, "name", "`resource`", node.pos)
            .and_then(|n| self.text(n, "`resource.name`"));
        let version = self
            .required(&f, "version", "`resource`", node.pos)
            .and_then(|n| self.text(n, "`resource.version`"));
        let category = self
            .required(&f, "category", "`resource`", node.pos)
            .and_then(|n| self.enumerated(n, "resource category", &Category::ALL));
        let description = f
            .get("description")
            .and_then(|n| self.text(n, "`resource.description`"));
        let mut tags = Vec::new();
        if let Some(n) = f.get("tags") {
            for item in self.list(n, "`tags`") {
                if let Some(t) = self.text(item, "a tag") {
                    tags.push(t);
                }
            }
        }
        let mut properties = BTreeMap::new();
        if let Some(n) = f.get("properties") {
            match &n.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let Some(key) = self.string(k, "a property name") else {
                            continue;
                        };
                        if let Some(t) = self.text(v, &format!("property `{key}`")) {
                            properties.insert(key, t);
                        }
                    }
                }
                Value::Null => {}
                _ => self.expected(n, "`properties`", "a mapping"),
            }
        }
        let mut connection_credentials = Vec::new();
        if let Some(n) = f.get("connectionCredentials") {
            for item in self.list(n, "`connectionCredentials`") {
                let Some(cf) = self.fields(item, "a credential set", CREDENTIAL_SET) else {
                    continue;
                };
                let mut set = CredentialSet {
                    environments: Vec::new(),
                    parameters: Vec::new(),
                };
                if let Some(e) = self.required(&cf, "environments", "a credential set", item.pos) {
                    for env in self.list(e, "`environments`") {
                        if let Some(t) = self.text(env, "an environment") {
                            set.environments.push(t);
                        }
                    }
                }
                if let Some(p) = self.required(&cf, "parameters", "a credential set", item.pos) {
                    for param in self.list(p, "`parameters`") {
                        let Some(pf) = self.fields(param, "a credential", CREDENTIAL) else {
                            continue;
                        };
                        let key = self
                            .required(&pf, "key", "a credential", param.pos)
                            .and_then(|k| {
                                self.name(
                                    k,
                                    "credential key",
                                    values::is_env_name,
                                    "^[A-Z_][A-Z0-9_]*$",
                                )
                            });
                        let value = self
                            .required(&pf, "value", "a credential", param.pos)
                            .and_then(|v| self.text(v, "`value`"));
                        let is_secret = pf
                            .get("isSecret")
                            .and_then(|s| self.bool(s, "`isSecret`"))
                            .unwrap_or(false);
                        if let (Some(key), Some(value)) = (key, value) {
                            set.parameters.push(Credential {
                                key,
                                value,
                                is_secret,
                            });
                        }
                    }
                }
                connection_credentials.push(set);
            }
        }
        Some(Resource {
            name: name?,
            version: version?,
            category: category?,
            description,
            tags,
            properties,
            connection_credentials,
        })
    }

    fn when(&mut self, node: &Node) -> Option<When> {
        let value = match &node.value {
            Value::Bool(b) => return Some(When::Truthy(Text::literal(b.to_string()))),
            Value::Str(s) => s.clone(),
            _ => {
                self.expected(node, "`when`", "a condition string");
                return None;
            }
        };
        let mut cursor = self.offset_of(node.pos);
        let result = {
            let this = &*self;
            parse_when(&value, |_, raw| {
                let (pos, next) = this.find_after(cursor, raw, node.pos);
                cursor = next;
                pos
            })
        };
        match result {
            Ok(ast) => Some(ast),
            Err(errors) => {
                for e in errors {
                    let pos = self.locate_in(node, &value, e.offset, e.len);
                    let d = Diagnostic::error(
                        pos.with_len(e.len as u32),
                        format!("invalid `when`: {}", e.message),
                    );
                    self.diags.push(match e.help {
                        Some(h) => d.with_help(h),
                        None => d,
                    });
                }
                None
            }
        }
    }

    /// Every key is checked before a broken one drops the whole `retry`.
    fn retry(&mut self, node: &Node) -> Option<Retry> {
        let f = self.fields(node, "`retry`", RETRY)?;
        let limit = match f.get("limit") {
            Some(n) => match n.value {
                Value::Int(i) if (0..=100).contains(&i) => Some(i as u32),
                // "found an integer" would not say what is wrong with it.
                Value::Int(i) => {
                    self.err(
                        n.pos,
                        format!("`retry.limit` must be a whole number from 0 to 100, found {i}"),
                    );
                    None
                }
                _ => {
                    self.expected(n, "`retry.limit`", "a whole number from 0 to 100");
                    None
                }
            },
            None => Some(1),
        };
        let backoff = match f.get("backoff") {
            Some(n) => self.duration(n, "`retry.backoff`"),
            None => Some(Duration::from_secs(1)),
        };
        let factor = match f.get("factor") {
            Some(n) => self.number(n, "`retry.factor`").and_then(|x| {
                if (1.0..=100.0).contains(&x) {
                    Some(x)
                } else {
                    self.err(
                        n.pos,
                        format!("`retry.factor` must be between 1 and 100, found {x}"),
                    );
                    None
                }
            }),
            None => Some(1.0),
        };
        let max_backoff = match f.get("maxBackoff") {
            Some(n) => self.duration(n, "`retry.maxBackoff`").map(Some),
            None => Some(None),
        };
        let policy = match f.get("policy") {
            Some(n) => self.enumerated(
                n,
                "retry policy",
                &[
                    ("OnFailure", RetryPolicy::OnFailure),
                    ("Always", RetryPolicy::Always),
                ],
            ),
            None => Some(RetryPolicy::OnFailure),
        };
        Some(Retry {
            limit: limit?,
            backoff: backoff?,
            factor: factor?,
            max_backoff: max_backoff?,
            policy: policy?,
        })
    }

    fn continue_on(&mut self, node: &Node) -> ContinueOn {
        let mut c = ContinueOn::default();
        if let Some(f) = self.fields(node, "`continueOn`", CONTINUE_ON) {
            c.failed = f
                .get("failed")
                .and_then(|n| self.bool(n, "`continueOn.failed`"))
                .unwrap_or(false);
            c.error = f
                .get("error")
                .and_then(|n| self.bool(n, "`continueOn.error`"))
                .unwrap_or(false);
        }
        c
    }
}

/// A text without references that is empty or only whitespace.
fn is_blank(text: &Text) -> bool {
    text.as_literal().is_some_and(|s| s.trim().is_empty())
}
