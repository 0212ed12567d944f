//! `gantry render --argo FILE`: the Argo Workflow a pipeline compiles to, and the Secret it would
//! read (values redacted), for reading or for `argo submit`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::{exit, key_value};
use crate::executor::argo::compile::{self, Options, RunFacts};
use crate::spec::model::ParamValue;
use crate::spec::{self, diagnostic};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file
    pub file: PathBuf,
    /// Print the Argo Workflows manifests (the only target for now)
    #[arg(long, required = true)]
    pub argo: bool,
    /// A parameter value (repeatable)
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// The namespace of the Workflow and its Secret
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The image of steps that name none
    #[arg(long, default_value = "debian:bookworm-slim")]
    pub image: String,
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

pub fn run(args: &Args) -> u8 {
    let shown = args.file.display().to_string();
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gantry: cannot read {shown}: {e}");
            return exit::USAGE;
        }
    };
    let checked = spec::check(&text);
    let lines = diagnostic::Lines::of(&text);
    for d in checked.diagnostics.iter() {
        eprint!("{}", lines.render(&shown, d, diagnostic::Style::default()));
    }
    let Some(pipeline) = checked.pipeline else {
        return exit::FAILURE;
    };
    // Given values are checked as a run would check them; a required parameter left out stays a
    // Workflow parameter without a value, for `argo submit -p NAME=VALUE`.
    let mut params = BTreeMap::new();
    for (name, raw) in &args.params {
        let Some(param) = pipeline.parameter(name) else {
            eprintln!("gantry: unknown parameter `{name}`");
            return exit::USAGE;
        };
        match crate::spec::values::check_param_text(param, raw) {
            Ok(v) => {
                params.insert(name.clone(), text_of(v));
            }
            Err(e) => {
                eprintln!("gantry: {e}");
                return exit::USAGE;
            }
        }
    }
    let mut unset = Vec::new();
    for param in &pipeline.parameters {
        if params.contains_key(&param.name) {
            continue;
        }
        match &param.default {
            Some(d) => {
                params.insert(param.name.clone(), text_of(d.clone()));
            }
            None => unset.push(param.name.clone()),
        }
    }
    let plan = crate::plan::plan(&pipeline);
    let run = RunFacts {
        id: "render".into(),
        number: 0,
        source: "file".into(),
        pipeline: pipeline.name().to_string(),
        params,
        unset_params: unset,
        // Variables are the server's; a rendered Workflow shows them as parameters to fill in.
        vars: pipeline
            .variables
            .iter()
            .map(|v| (v.clone(), format!("<variable {v}>")))
            .collect(),
        git: None,
        checkout_credentials: false,
        checkout_url: None,
        trigger: "manual".into(),
        pr: None,
    };
    let options = Options {
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        ..Options::default()
    };
    let compiled = match compile::compile(&plan, &run, &options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gantry: {shown}: {e}");
            return exit::FAILURE;
        }
    };
    let mut documents = vec![compiled.workflow.clone()];
    if !compiled.secret_keys.is_empty() {
        documents.push(compile::secret_manifest(
            &compiled,
            &args.namespace,
            &run.id,
            None,
        ));
    }
    match args.format {
        Format::Json => {
            let out = if documents.len() == 1 {
                documents.remove(0)
            } else {
                Value::Array(documents)
            };
            match serde_json::to_string_pretty(&out) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("gantry: {e}");
                    return exit::FAILURE;
                }
            }
        }
        Format::Yaml => {
            let texts: Vec<String> = documents.iter().map(to_yaml).collect();
            print!("{}", texts.join("---\n"));
        }
    }
    exit::OK
}

fn text_of(v: ParamValue) -> String {
    match v {
        ParamValue::String(s) => s,
        ParamValue::Integer(i) => i.to_string(),
        ParamValue::Number(n) => n.to_string(),
        ParamValue::Boolean(b) => b.to_string(),
    }
}

/// A JSON value as block-style YAML. Every string is double-quoted (JSON's escapes are YAML's),
/// multi-line strings too, so nothing in a value can change the document's structure.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        emit(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        emit(v, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{}: {}\n", key(k), inline(v))),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        // The first line of the item goes after the dash.
                        let trimmed = inner.trim_start_matches(' ');
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        emit(item, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", inline(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", inline(other))),
    }
}

fn inline(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_back_as_the_same_json() {
        let v = serde_json::json!({
            "a": {"b": [1, "two", {"c": "multi\nline: with # and -", "d": []}], "e": {}},
            "f:g": true, "h": null, "list": [[1, 2], {"k": "v", "k2": {"x": 1}}]
        });
        let yaml = to_yaml(&v);
        let back: Value = serde_saphyr::from_str(&yaml).expect("valid YAML");
        assert_eq!(back, v, "{yaml}");
    }
}
