//! The run form: one field per declared parameter, and the server-side check of what a form
//! sends (the same check the API and the CLI use, `spec::values::check_param_text`), with each
//! error kept beside its field.

use std::collections::BTreeMap;

use crate::spec::model::{ParamType, ParamValue, Parameter, Pipeline};
use crate::spec::values::check_param_text;

/// How a field is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Select,
    Checkbox,
    Number,
    Text,
}

/// One field of the run form.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub label: String,
    pub description: Option<String>,
    pub control: Control,
    /// `select`: the choices.
    pub choices: Vec<String>,
    /// What the field holds: what was sent, else the default.
    pub value: String,
    pub required: bool,
    /// A browser `pattern` (anchored by the browser, so the declared one is wrapped to match
    /// anywhere, as the server matches it).
    pub pattern: Option<String>,
    /// The pattern as declared, for people (`title`, which browsers add to their message).
    pub pattern_hint: Option<String>,
    pub min: Option<String>,
    pub max: Option<String>,
    /// `1` for integers, `any` for numbers.
    pub step: Option<&'static str>,
    pub error: Option<String>,
}

fn default_text(p: &Parameter) -> String {
    match &p.default {
        Some(ParamValue::String(s)) => s.clone(),
        Some(ParamValue::Integer(i)) => i.to_string(),
        Some(ParamValue::Number(n)) => n.to_string(),
        Some(ParamValue::Boolean(b)) => b.to_string(),
        None => String::new(),
    }
}

fn bound(v: Option<f64>) -> Option<String> {
    v.map(|n| {
        if n.fract() == 0.0 && n.abs() < 1e15 {
            format!("{}", n as i64)
        } else {
            n.to_string()
        }
    })
}

/// The form's fields for `pipeline`, holding `sent` values (else defaults) and `errors`.
pub fn fields(
    pipeline: &Pipeline,
    sent: &BTreeMap<String, String>,
    errors: &BTreeMap<String, String>,
) -> Vec<Field> {
    pipeline
        .parameters
        .iter()
        .map(|p| {
            let control = match p.kind {
                ParamType::Enum => Control::Select,
                ParamType::Boolean => Control::Checkbox,
                ParamType::Integer | ParamType::Number => Control::Number,
                ParamType::String if !p.choices.is_empty() => Control::Select,
                ParamType::String => Control::Text,
            };
            Field {
                name: p.name.clone(),
                label: p.display_name.clone().unwrap_or_else(|| p.name.clone()),
                description: p.description.clone(),
                control,
                choices: p.choices.clone(),
                value: sent
                    .get(&p.name)
                    .cloned()
                    .unwrap_or_else(|| default_text(p)),
                // A checkbox cannot be required to be ticked: false is a value.
                required: p.required && p.default.is_none() && control != Control::Checkbox,
                pattern: p
                    .pattern
                    .as_ref()
                    .map(|re| format!("[\\s\\S]*(?:{re})[\\s\\S]*")),
                pattern_hint: p.pattern.as_ref().map(|re| format!("must match {re}")),
                min: bound(p.minimum),
                max: bound(p.maximum),
                step: match p.kind {
                    ParamType::Integer => Some("1"),
                    ParamType::Number => Some("any"),
                    _ => None,
                },
                error: errors.get(&p.name).cloned(),
            }
        })
        .collect()
}

/// Checks what a form sent: the parameter values to run with, or the error of each field that
/// is wrong. An unticked checkbox sends nothing, which means false; an empty field means "not
/// given" (its default applies, or it is missing when required).
pub fn check(
    pipeline: &Pipeline,
    sent: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for p in &pipeline.parameters {
        let raw = sent.get(&p.name).map(String::as_str).unwrap_or("");
        let raw = match p.kind {
            ParamType::Boolean if raw.is_empty() || raw == "on" => {
                if raw == "on" {
                    "true"
                } else {
                    "false"
                }
            }
            _ => raw,
        };
        if raw.is_empty() {
            if p.required && p.default.is_none() {
                errors.insert(p.name.clone(), format!("`{}` is required", p.name));
            }
            continue;
        }
        match check_param_text(p, raw) {
            Ok(_) => {
                values.insert(p.name.clone(), raw.to_string());
            }
            Err(e) => {
                errors.insert(p.name.clone(), e);
            }
        }
    }
    for name in sent.keys() {
        if pipeline.parameter(name).is_none() {
            errors.insert(
                name.clone(),
                format!("the pipeline has no parameter `{name}`"),
            );
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let text = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: p}\nparameters:\n  - {name: env, type: enum, enum: [dev, prod], default: dev}\n  - {name: size, type: integer, minimum: 1, maximum: 10, required: true}\n  - {name: dry, type: boolean, default: true}\n  - {name: bucket, type: string, required: false, pattern: '^[a-z-]+$', description: The bucket}\nsteps:\n  - {name: s, script: \"true\"}\n";
        let checked = crate::spec::check(text);
        checked
            .pipeline
            .unwrap_or_else(|| panic!("{:?}", checked.diagnostics))
    }

    #[test]
    fn every_parameter_type_gets_its_control_and_constraints() {
        let p = pipeline();
        let f = fields(&p, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(f[0].control, Control::Select);
        assert_eq!(f[0].choices, ["dev", "prod"]);
        assert_eq!(f[0].value, "dev");
        assert_eq!(f[1].control, Control::Number);
        assert_eq!(
            (f[1].min.as_deref(), f[1].max.as_deref()),
            (Some("1"), Some("10"))
        );
        assert_eq!(f[1].step, Some("1"));
        assert!(f[1].required);
        assert_eq!(f[2].control, Control::Checkbox);
        assert_eq!(f[2].value, "true");
        assert_eq!(f[3].control, Control::Text);
        assert_eq!(
            f[3].pattern.as_deref(),
            Some("[\\s\\S]*(?:^[a-z-]+$)[\\s\\S]*")
        );
        assert_eq!(f[3].description.as_deref(), Some("The bucket"));
    }

    #[test]
    fn a_bad_value_gets_its_error_beside_its_field_and_a_good_form_gives_the_values() {
        let p = pipeline();
        let sent: BTreeMap<String, String> = [("size", "11"), ("bucket", "Bad_Name")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let errors = check(&p, &sent).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors["size"].contains("size"), "{errors:?}");
        assert!(errors["bucket"].contains("must match"), "{errors:?}");
        let shown = fields(&p, &sent, &errors);
        assert_eq!(shown[1].value, "11");
        assert!(shown[1].error.is_some());
        // A missing required value is named.
        let errors = check(&p, &BTreeMap::new()).unwrap_err();
        assert_eq!(errors["size"], "`size` is required");
        let good: BTreeMap<String, String> = [("size", "3"), ("env", "prod"), ("dry", "on")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let values = check(&p, &good).unwrap();
        assert_eq!(values["size"], "3");
        assert_eq!(values["dry"], "true");
        // An unticked checkbox is false, not "not given".
        let unticked: BTreeMap<String, String> = [("size".to_string(), "3".to_string())]
            .into_iter()
            .collect();
        assert_eq!(check(&p, &unticked).unwrap()["dry"], "false");
    }
}
