//! Whole-file checks: names are unique, every reference resolves, step outputs are read only after
//! the step that writes them, dependencies form no cycle, secrets go only where they cannot leak,
//! and parameters are not pasted into script text (a warning).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::diagnostic::{Diagnostic, Diagnostics, did_you_mean};
use super::expr::{Ref, Text};
use super::model::*;
use super::parse::SourceMap;
use super::values;
use super::yaml::Pos;

/// Where a text stands, which decides what it may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// An `env` value: secrets allowed.
    Env,
    /// A template argument: secrets allowed (checked against how the template uses the input).
    Argument,
    /// A credential marked `isSecret: true` of a published resource: secrets allowed.
    SecretCredential,
    /// A public field of a published resource: no secrets.
    PublicResource,
    /// Script text, a command or its arguments: no secrets, and parameters get a warning.
    Script,
    /// An input default: no secrets, and no other inputs (defaults are spliced in once, so an
    /// input reference in one would never be replaced).
    InputDefault,
    /// Anything else (`when`, `workingDir`, `image`, `concurrency.group`): no secrets.
    Other,
}

impl Place {
    fn allows_secrets(self) -> bool {
        matches!(self, Place::Env | Place::Argument | Place::SecretCredential)
    }
}

/// Who owns a text, which decides which step outputs and inputs it can see.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Pipeline,
    Template(&'a Template),
    Step { index: usize },
}

struct Checker<'a> {
    p: &'a Pipeline,
    map: &'a SourceMap,
    steps: Vec<&'a Step>,
    /// Which steps run before which (filled in once the structure is checked).
    order: Order,
    step_index: HashMap<&'a str, usize>,
    diags: &'a mut Diagnostics,
    /// What is left of the work "did you mean" may do for this file (see [`SUGGESTION_BUDGET`]).
    suggestions_left: usize,
}

/// The work, in pairs of characters compared, that "did you mean" help may cost one file. Each
/// unknown name is compared with every name of its kind, so a file of many steps that all name
/// unknown ones would otherwise cost the product of the two (a 650 KB file took a minute); past
/// this budget, errors come without the help. A typical file uses a few thousand.
const SUGGESTION_BUDGET: usize = 5_000_000;

/// "Runs before", as the run-time rules have it, answered without a set of earlier steps per
/// step: those sets grow with the square of the steps (a 12,000-step chain took 3 GB).
enum Order {
    /// Sequence mode: the item (a step, or a parallel group) each step belongs to. A step runs
    /// before another when its item comes first.
    Items(Vec<usize>),
    /// DAG mode: each step's `dependsOn`, by index. A step runs before another when it is
    /// reachable from it through them; each question is a search, over a stamp per step.
    Dag {
        deps: Vec<Vec<usize>>,
        /// `seen[i] == stamp` when the current search has visited step `i`.
        seen: Vec<u32>,
        stamp: u32,
        stack: Vec<usize>,
    },
}

impl Order {
    /// Whether step `j` is certain to have finished before step `here` starts.
    fn runs_before(&mut self, j: usize, here: usize) -> bool {
        match self {
            Order::Items(item) => match (item.get(j), item.get(here)) {
                (Some(a), Some(b)) => a < b,
                _ => false,
            },
            Order::Dag {
                deps,
                seen,
                stamp,
                stack,
            } => {
                if *stamp == u32::MAX {
                    seen.iter_mut().for_each(|s| *s = 0);
                    *stamp = 0;
                }
                *stamp += 1;
                stack.clear();
                stack.push(here);
                while let Some(i) = stack.pop() {
                    for &d in deps.get(i).map(Vec::as_slice).unwrap_or_default() {
                        if d == j {
                            return true;
                        }
                        if let Some(s) = seen.get_mut(d)
                            && *s != *stamp
                        {
                            *s = *stamp;
                            stack.push(d);
                        }
                    }
                }
                false
            }
        }
    }
}

/// Runs the whole-file checks on a converted pipeline.
pub fn validate(p: &Pipeline, map: &SourceMap, diags: &mut Diagnostics) {
    let steps: Vec<&Step> = p.all_steps().collect();
    let mut step_index = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        step_index.entry(s.name.as_str()).or_insert(i);
    }
    let mut c = Checker {
        p,
        map,
        order: Order::Items(Vec::new()),
        steps,
        step_index,
        diags,
        suggestions_left: SUGGESTION_BUDGET,
    };
    c.unique_declarations();
    c.step_structure();
    c.order = c.order();
    c.templates();
    c.step_texts();
    c.schedules();
    if let Some(cc) = &p.concurrency {
        c.text(&cc.group, Place::Other, Scope::Pipeline);
    }
    let on = &p.on;
    if !on.manual
        && on.push.is_none()
        && on.pull_request.is_none()
        && !on.comment
        && on.schedule.is_empty()
    {
        let pos = map.on.unwrap_or(map.root);
        c.diags.push(
            Diagnostic::warning(
                pos,
                "the pipeline has no trigger and `on.manual` is false, so it can never run",
            )
            .with_help("add a trigger or remove `manual: false`"),
        );
    }
}

impl<'a> Checker<'a> {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(pos, message));
    }

    fn err_suggest<'c>(
        &mut self,
        pos: Pos,
        message: String,
        word: &str,
        candidates: impl IntoIterator<Item = &'c str>,
        fallback: Option<String>,
    ) {
        let d = Diagnostic::error(pos, message);
        // Once the budget is spent, the candidates are not even looked at.
        let mut suggestion = None;
        if self.suggestions_left > 0 {
            let candidates: Vec<&str> = candidates.into_iter().collect();
            let cost = candidates
                .iter()
                .map(|c| c.len().max(1) * word.len().max(1))
                .sum::<usize>();
            match self.suggestions_left.checked_sub(cost) {
                Some(left) => {
                    self.suggestions_left = left;
                    suggestion = did_you_mean(word, candidates);
                }
                None => self.suggestions_left = 0,
            }
        }
        let d = match suggestion {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => match fallback {
                Some(f) => d.with_help(f),
                None => d,
            },
        };
        self.diags.push(d);
    }

    fn unique_declarations(&mut self) {
        let p = self.p;
        let map = self.map;
        let groups: [(&str, Vec<(&str, Pos)>); 5] = [
            (
                "parameter",
                p.parameters
                    .iter()
                    .zip(&map.parameters)
                    .map(|(x, s)| (x.name.as_str(), s.name))
                    .collect(),
            ),
            (
                "variable",
                p.variables
                    .iter()
                    .zip(&map.variables)
                    .map(|(x, s)| (x.as_str(), *s))
                    .collect(),
            ),
            (
                "secret",
                p.secrets
                    .iter()
                    .zip(&map.secrets)
                    .map(|(x, s)| (x.as_str(), *s))
                    .collect(),
            ),
            (
                "template",
                p.templates
                    .iter()
                    .zip(&map.templates)
                    .map(|(x, s)| (x.name.as_str(), s.name))
                    .collect(),
            ),
            (
                "step",
                self.steps
                    .iter()
                    .zip(&map.steps)
                    .map(|(x, s)| (x.name.as_str(), s.name))
                    .collect(),
            ),
        ];
        for (what, names) in groups {
            let mut seen: HashMap<&str, Pos> = HashMap::new();
            for (name, pos) in names {
                if let Some(first) = seen.get(name) {
                    self.err(
                        pos,
                        format!(
                            "duplicate {what} name `{name}` (first declared on line {})",
                            first.line
                        ),
                    );
                } else {
                    seen.insert(name, pos);
                }
            }
        }
        for (t, spans) in p.templates.iter().zip(&map.templates) {
            self.unique_in(
                &t.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
                &spans.inputs,
                "input",
            );
            self.unique_in(
                &t.outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>(),
                &spans.outputs,
                "output",
            );
        }
        for (s, spans) in self.steps.clone().iter().zip(&map.steps) {
            self.unique_in(
                &s.outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>(),
                &spans.outputs,
                "output",
            );
        }
    }

    fn unique_in(&mut self, names: &[&str], positions: &[Pos], what: &str) {
        let mut seen = BTreeSet::new();
        for (name, pos) in names.iter().zip(positions) {
            if !seen.insert(*name) {
                self.err(*pos, format!("duplicate {what} name `{name}`"));
            }
        }
    }

    /// `dependsOn` targets exist, no cycles, no parallel groups in a DAG.
    fn step_structure(&mut self) {
        let dag = self.p.is_dag();
        let map = self.map;
        if dag {
            let mut reported = BTreeSet::new();
            for spans in &map.steps {
                if let Some(group) = spans.group
                    && reported.insert((group.line, group.col))
                {
                    self.diags.push(
                        Diagnostic::error(group, "parallel groups are not allowed when steps use `dependsOn`")
                            .with_help("steps without a dependency between them already run in parallel in a DAG"),
                    );
                }
            }
        }
        let names: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        for (i, step) in self.steps.clone().into_iter().enumerate() {
            let mut seen: BTreeSet<&str> = BTreeSet::new();
            for (dep, pos) in step.depends_on.iter().zip(&map.steps[i].depends_on) {
                if !seen.insert(dep.as_str()) {
                    self.err(
                        *pos,
                        format!("step `{}` lists `{dep}` twice in `dependsOn`", step.name),
                    );
                } else if dep == &step.name {
                    self.err(*pos, format!("step `{dep}` depends on itself"));
                } else if !self.step_index.contains_key(dep.as_str()) {
                    self.err_suggest(
                        *pos,
                        format!("`dependsOn` names an unknown step `{dep}`"),
                        dep,
                        names.iter().copied(),
                        None,
                    );
                }
            }
        }
        if dag {
            self.cycles();
        }
    }

    fn deps_of(&self, i: usize) -> Vec<usize> {
        self.steps[i]
            .depends_on
            .iter()
            .filter_map(|d| self.step_index.get(d.as_str()).copied())
            .filter(|&j| j != i)
            .collect()
    }

    fn cycles(&mut self) {
        // Iterative three-colour DFS; each back edge closes a cycle, reported at that dependsOn entry.
        let n = self.steps.len();
        let mut colour = vec![0u8; n];
        let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let deps = self.deps_of(node);
                if *next < deps.len() {
                    let dep = deps[*next];
                    *next += 1;
                    match colour[dep] {
                        0 => {
                            colour[dep] = 1;
                            stack.push((dep, 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(s, _)| *s == dep).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[from..].iter().map(|(s, _)| *s).collect();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if reported.insert(key) {
                                cycle.push(dep);
                                let path: Vec<&str> =
                                    cycle.iter().map(|&k| self.steps[k].name.as_str()).collect();
                                let dep_name = &self.steps[dep].name;
                                let entry = self.steps[node]
                                    .depends_on
                                    .iter()
                                    .position(|d| d == dep_name)
                                    .unwrap_or(0);
                                let pos = self.map.steps[node]
                                    .depends_on
                                    .get(entry)
                                    .copied()
                                    .unwrap_or(self.map.steps[node].name);
                                self.err(pos, format!("dependency cycle: {}", path.join(" → ")));
                            }
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
    }

    /// The order the run-time rules give the steps (see [`Order`]).
    fn order(&self) -> Order {
        let n = self.steps.len();
        if self.p.is_dag() {
            Order::Dag {
                deps: (0..n).map(|i| self.deps_of(i)).collect(),
                seen: vec![0; n],
                stamp: 0,
                stack: Vec::new(),
            }
        } else {
            let mut item = Vec::with_capacity(n);
            for (k, step_item) in self.p.steps.iter().enumerate() {
                let width = match step_item {
                    StepItem::Step(_) => 1,
                    StepItem::Parallel(g) => g.len(),
                };
                item.extend(std::iter::repeat_n(k, width));
            }
            Order::Items(item)
        }
    }

    fn outputs_of(&self, step: &Step) -> Vec<Output> {
        let mut out = step.outputs.clone();
        match &step.run {
            StepRun::Template { name, .. } => {
                if let Some(t) = self.p.template(name) {
                    out.extend(t.outputs.iter().cloned());
                }
            }
            StepRun::GitCheckout { .. } => {
                out.extend(Builtin::GitCheckoutV1.outputs().iter().map(|n| Output {
                    name: n.to_string(),
                    secret: false,
                }))
            }
            StepRun::Publish(_) => out.extend(Builtin::MarketplacePublishV1.outputs().iter().map(
                |n| Output {
                    name: n.to_string(),
                    secret: false,
                },
            )),
            StepRun::Body(_) => {}
        }
        out
    }

    fn body(&mut self, body: &Body, scope: Scope) {
        match body {
            Body::Script(t) => self.text(t, Place::Script, scope),
            Body::Command { command, args } => {
                for t in command.iter().chain(args) {
                    self.text(t, Place::Script, scope);
                }
            }
        }
    }

    fn templates(&mut self) {
        for t in &self.p.templates {
            let scope = Scope::Template(t);
            self.body(&t.body, scope);
            for (_, v) in &t.env {
                self.text(v, Place::Env, scope);
            }
            if let Some(w) = &t.working_dir {
                self.text(w, Place::Other, scope);
            }
            if let Some(i) = &t.image {
                self.text(i, Place::Other, scope);
            }
            for input in &t.inputs {
                if let Some(d) = &input.default {
                    self.text(d, Place::InputDefault, scope);
                }
            }
        }
    }

    /// Inputs of a template that end up outside `env` values, each with the fields it lands in, in
    /// the order `script`, `command`, `args`, `workingDir`, `image`.
    fn pasted_inputs(t: &Template) -> BTreeMap<String, Vec<&'static str>> {
        let mut texts: Vec<(&'static str, &Text)> = Vec::new();
        match &t.body {
            Body::Script(s) => texts.push(("script", s)),
            Body::Command { command, args } => {
                texts.extend(command.iter().map(|x| ("command", x)));
                texts.extend(args.iter().map(|x| ("args", x)));
            }
        }
        texts.extend(t.working_dir.iter().map(|x| ("workingDir", x)));
        texts.extend(t.image.iter().map(|x| ("image", x)));
        let mut out: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for (field, text) in texts {
            for (r, _) in text.refs() {
                if let Ref::Input(n) = r {
                    let fields = out.entry(n.clone()).or_default();
                    if !fields.contains(&field) {
                        fields.push(field);
                    }
                }
            }
        }
        out
    }

    fn step_texts(&mut self) {
        for (index, step) in self.steps.clone().into_iter().enumerate() {
            let scope = Scope::Step { index };
            for (_, v) in &step.env {
                self.text(v, Place::Env, scope);
            }
            if let Some(w) = &step.working_dir {
                self.text(w, Place::Other, scope);
            }
            if let Some(i) = &step.image {
                self.text(i, Place::Other, scope);
            }
            if let Some(when) = &step.when {
                for t in when.texts() {
                    self.text(t, Place::Other, scope);
                }
            }
            match &step.run {
                StepRun::Body(body) => self.body(body, scope),
                StepRun::GitCheckout { path } => {
                    if let Some(p) = path {
                        self.text(p, Place::Other, scope);
                    }
                }
                StepRun::Publish(resource) => self.resource(resource, scope),
                StepRun::Template { name, arguments } => {
                    self.template_call(index, step, name, arguments)
                }
            }
            // `outputs_of` lists the step's own outputs first, then those of its template. The
            // error points at the step's declaration (repeats among the step's own outputs are
            // reported as duplicates by `unique_declarations`).
            let outputs = self.outputs_of(step);
            let inherited = outputs.get(step.outputs.len()..).unwrap_or_default();
            for (o, pos) in step.outputs.iter().zip(&self.map.steps[index].outputs) {
                if inherited.iter().any(|t| t.name == o.name) {
                    self.err(
                        *pos,
                        format!(
                            "step `{}` declares output `{}` that its template already declares",
                            step.name, o.name
                        ),
                    );
                }
            }
        }
    }

    fn template_call(
        &mut self,
        index: usize,
        step: &Step,
        name: &str,
        arguments: &BTreeMap<String, Text>,
    ) {
        let spans = &self.map.steps[index];
        let tpos = spans.template.unwrap_or(spans.name);
        let Some(t) = self.p.template(name) else {
            let names: Vec<&str> = self.p.templates.iter().map(|t| t.name.as_str()).collect();
            self.err_suggest(
                tpos,
                format!("step `{}` uses an unknown template `{name}`", step.name),
                name,
                names.iter().copied(),
                Some("define it under `templates:`, or use a built-in such as `gantry/git-checkout@v1`".into()),
            );
            return;
        };
        for input in &t.inputs {
            if input.default.is_none() && !arguments.contains_key(&input.name) {
                self.diags.push(
                    Diagnostic::error(
                        tpos,
                        format!(
                            "step `{}` does not give template `{name}` its input `{}`",
                            step.name, input.name
                        ),
                    )
                    .with_help(format!("add `arguments: {{{}: ...}}`", input.name)),
                );
            }
        }
        let pasted = Self::pasted_inputs(t);
        for (arg, value) in arguments {
            let apos = spans.arguments.get(arg).copied().unwrap_or(tpos);
            if !t.inputs.iter().any(|i| &i.name == arg) {
                let inputs: Vec<&str> = t.inputs.iter().map(|i| i.name.as_str()).collect();
                self.err_suggest(
                    apos,
                    format!("template `{name}` has no input `{arg}`"),
                    arg,
                    inputs.iter().copied(),
                    Some(format!(
                        "inputs of `{name}`: {}",
                        if inputs.is_empty() {
                            "none".to_string()
                        } else {
                            inputs.join(", ")
                        }
                    )),
                );
                continue;
            }
            self.text(value, Place::Argument, Scope::Step { index });
            let Some(fields) = pasted.get(arg) else {
                continue;
            };
            let listed: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
            if self.carries_secret(value) {
                self.diags.push(
                    Diagnostic::error(apos, format!("argument `{arg}` carries a secret, but template `{name}` uses `{{{{inputs.{arg}}}}}` outside `env` (in {})", listed.join(", ")))
                        .with_help("in the template, pass the input through `env` and use the variable instead"),
                );
            } else if let Some(param) = self.string_param_in(value) {
                // An image name is not run by a shell; the other fields are.
                let shell: Vec<&str> = fields
                    .iter()
                    .zip(&listed)
                    .filter(|(f, _)| **f != "image")
                    .map(|(_, l)| l.as_str())
                    .collect();
                if !shell.is_empty() {
                    self.diags.push(
                        Diagnostic::warning(apos, format!("parameter `{param}` reaches the {} of template `{name}` through argument `{arg}`; a crafted value can inject shell commands", shell.join(", ")))
                            .with_help("in the template, pass the input through `env` and quote the variable in the script"),
                    );
                }
            }
        }
    }

    fn carries_secret(&self, text: &Text) -> bool {
        text.refs().any(|(r, _)| match r {
            Ref::Secret(_) | Ref::Connection { .. } => true,
            Ref::StepOutput { step, output } => {
                self.step_index.get(step.as_str()).is_some_and(|&j| {
                    self.outputs_of(self.steps[j])
                        .iter()
                        .any(|o| &o.name == output && o.secret)
                })
            }
            _ => false,
        })
    }

    fn string_param_in(&self, text: &Text) -> Option<String> {
        text.refs().find_map(|(r, _)| match r {
            Ref::Param(n)
                if self
                    .p
                    .parameter(n)
                    .is_some_and(|p| p.kind == ParamType::String) =>
            {
                Some(n.clone())
            }
            _ => None,
        })
    }

    fn resource(&mut self, r: &Resource, scope: Scope) {
        let mut public: Vec<&Text> = vec![&r.name, &r.version];
        public.extend(r.description.iter());
        public.extend(r.tags.iter());
        public.extend(r.properties.values());
        for set in &r.connection_credentials {
            public.extend(set.environments.iter());
        }
        for t in public {
            self.text(t, Place::PublicResource, scope);
        }
        for set in &r.connection_credentials {
            for c in &set.parameters {
                let place = if c.is_secret {
                    Place::SecretCredential
                } else {
                    Place::PublicResource
                };
                self.text(&c.value, place, scope);
            }
        }
    }

    fn schedules(&mut self) {
        for (schedule, spans) in self.p.on.schedule.iter().zip(&self.map.schedules) {
            // Parameters an undeclared key was taken for a misspelling of: not reported missing.
            let mut misspelt = BTreeSet::new();
            for (name, value) in &schedule.parameters {
                let pos = spans.parameters.get(name).copied().unwrap_or(spans.cron);
                let Some(param) = self.p.parameter(name) else {
                    let names: Vec<&str> =
                        self.p.parameters.iter().map(|p| p.name.as_str()).collect();
                    misspelt.extend(did_you_mean(name, names.iter().copied()));
                    self.err_suggest(
                        spans.keys.get(name).copied().unwrap_or(pos),
                        format!("schedule sets an undeclared parameter `{name}`"),
                        name,
                        names.iter().copied(),
                        None,
                    );
                    continue;
                };
                let unknown_type = self
                    .p
                    .parameters
                    .iter()
                    .zip(&self.map.parameters)
                    .any(|(p, s)| p.name == param.name && s.unknown_type);
                if unknown_type {
                    continue; // its `type` has been reported; nothing to check the value against
                }
                // The parser has typed the value as the parameter's default would be.
                if let Err(e) = values::check_param_value(param, value) {
                    self.err(pos, e);
                }
            }
            for param in &self.p.parameters {
                if param.required
                    && param.default.is_none()
                    && !spans.keys.contains_key(&param.name)
                    && !misspelt.contains(param.name.as_str())
                {
                    self.diags.push(
                        Diagnostic::error(spans.cron, format!("schedule gives no value for the required parameter `{}`", param.name))
                            .with_help(format!("add `parameters: {{{}: ...}}` to the schedule, or give the parameter a default", param.name)),
                    );
                }
            }
        }
    }

    /// Checks every reference of one text.
    fn text(&mut self, text: &Text, place: Place, scope: Scope) {
        for (r, pos) in text.refs() {
            self.reference(r, pos, place, scope);
        }
    }

    fn reference(&mut self, r: &Ref, pos: Pos, place: Place, scope: Scope) {
        let p = self.p;
        match r {
            Ref::Param(n) => match p.parameter(n) {
                None => {
                    let names: Vec<&str> = p.parameters.iter().map(|x| x.name.as_str()).collect();
                    self.err_suggest(
                        pos,
                        format!("undeclared parameter `{n}`"),
                        n,
                        names.iter().copied(),
                        Some(format!("declare it under `parameters:` with `name: {n}`")),
                    );
                }
                Some(param) => {
                    if place == Place::Script && param.kind == ParamType::String {
                        self.diags.push(
                            Diagnostic::warning(pos, format!("parameter `{n}` is pasted into script text; a crafted value can inject shell commands"))
                                .with_help(format!("pass it through env, e.g. `env: {{{}: \"{{{{params.{n}}}}}\"}}`, and use \"${}\"", n.to_ascii_uppercase(), n.to_ascii_uppercase())),
                        );
                    }
                }
            },
            Ref::Var(n) => {
                if !p.variables.iter().any(|v| v == n) {
                    self.err_suggest(
                        pos,
                        format!("undeclared variable `{n}`"),
                        n,
                        p.variables.iter().map(String::as_str),
                        Some(format!("add `{n}` to `variables:`")),
                    );
                }
            }
            Ref::Secret(n) => {
                if !p.secrets.iter().any(|v| v == n) {
                    self.err_suggest(
                        pos,
                        format!("undeclared secret `{n}`"),
                        n,
                        p.secrets.iter().map(String::as_str),
                        Some(format!("add `{n}` to `secrets:`")),
                    );
                }
                self.secret_placement(pos, &format!("secret `{n}`"), place);
            }
            Ref::Connection { name, key } => {
                if !p.connections.iter().any(|c| c == name) {
                    self.err_suggest(
                        pos,
                        format!("undeclared connection `{name}`"),
                        name,
                        p.connections.iter().map(String::as_str),
                        Some(format!("add `{name}` to `connections:`")),
                    );
                }
                // Whether a key is secret is the publisher's to say, so every one is kept
                // where a secret may go.
                self.secret_placement(pos, &format!("connection credential `{name}.{key}`"), place);
            }
            Ref::StepOutput { step, output } => self.step_output(step, output, pos, place, scope),
            Ref::Input(n) => match scope {
                Scope::Template(_) if place == Place::InputDefault => {
                    self.diags.push(
                        Diagnostic::error(
                            pos,
                            format!("an input default cannot use `{{{{inputs.{n}}}}}`: defaults are not expanded again, so it would never be replaced"),
                        )
                        .with_help("write the value out, or have the calling step pass it as an argument"),
                    );
                }
                Scope::Template(t) => {
                    if !t.inputs.iter().any(|i| &i.name == n) {
                        let names: Vec<&str> = t.inputs.iter().map(|i| i.name.as_str()).collect();
                        self.err_suggest(
                            pos,
                            format!("template `{}` has no input `{n}`", t.name),
                            n,
                            names.iter().copied(),
                            Some("declare it under the template's `inputs:`".to_string()),
                        );
                    }
                }
                _ => self.err(
                    pos,
                    format!("`{{{{inputs.{n}}}}}` can only be used inside a template"),
                ),
            },
            Ref::RunId
            | Ref::RunNumber
            | Ref::GitSha
            | Ref::GitRef
            | Ref::GitRepo
            | Ref::TriggerKind
            | Ref::PrNumber => {}
        }
    }

    fn secret_placement(&mut self, pos: Pos, what: &str, place: Place) {
        if place.allows_secrets() {
            return;
        }
        let d = if place == Place::PublicResource {
            Diagnostic::error(
                pos,
                format!("{what} would be published in a public field of the resource"),
            )
            .with_help("publish it as a connection credential with `isSecret: true`")
        } else {
            Diagnostic::error(
                pos,
                format!("{what} may only be used in an `env` value or a template argument"),
            )
            .with_help(
                "pass it through env, e.g. `env: {TOKEN: ...}`, and read $TOKEN in the script",
            )
        };
        self.diags.push(d);
    }

    fn step_output(&mut self, step: &str, output: &str, pos: Pos, place: Place, scope: Scope) {
        let here = match scope {
            Scope::Step { index } => index,
            Scope::Template(t) => {
                self.diags.push(
                    Diagnostic::error(
                        pos,
                        format!("template `{}` cannot read step outputs", t.name),
                    )
                    .with_help("declare an input and pass the output as an argument"),
                );
                return;
            }
            Scope::Pipeline => {
                self.err(pos, "step outputs are not known yet when the run is queued");
                return;
            }
        };
        let Some(&j) = self.step_index.get(step) else {
            let p = self.p;
            self.err_suggest(
                pos,
                format!("reference to an unknown step `{step}`"),
                step,
                p.all_steps().map(|s| s.name.as_str()),
                None,
            );
            return;
        };
        let outputs = self.outputs_of(self.steps[j]);
        let Some(decl) = outputs.iter().find(|o| o.name == output) else {
            // The outputs of a template that is unknown, or a built-in that could not be read,
            // are unknown too; that template has been reported at the step that uses it.
            let template_unknown = match &self.steps[j].run {
                StepRun::Template { name, .. } => self.p.template(name).is_none(),
                StepRun::Body(_) => self.map.steps[j].template.is_some(),
                StepRun::GitCheckout { .. } | StepRun::Publish(_) => false,
            };
            if template_unknown {
                return;
            }
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            let help = if names.is_empty() {
                format!(
                    "step `{step}` declares no outputs; add `outputs: [{{name: {output}}}]` to it"
                )
            } else {
                format!("outputs of `{step}`: {}", names.join(", "))
            };
            self.err_suggest(
                pos,
                format!("step `{step}` has no output `{output}`"),
                output,
                names.iter().copied(),
                Some(help),
            );
            return;
        };
        if j == here {
            self.err(
                pos,
                format!("step `{step}` cannot read its own output `{output}`"),
            );
        } else if !self.order.runs_before(j, here) {
            let me = &self.steps[here].name;
            let help = if self.p.is_dag() {
                format!("add `{step}` to the `dependsOn` of `{me}`")
            } else {
                format!("move `{step}` before `{me}`, outside its parallel group")
            };
            self.diags.push(
                Diagnostic::error(
                    pos,
                    format!(
                        "step `{me}` reads an output of `{step}`, which does not run before it"
                    ),
                )
                .with_help(help),
            );
        }
        if decl.secret {
            self.secret_placement(pos, &format!("secret output `{step}.{output}`"), place);
        }
    }
}
