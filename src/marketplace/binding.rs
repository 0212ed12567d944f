//! How a resolved connection is handed to an application: environment lines (shell, dotenv,
//! JSON) and a binding directory in the layout of the Service Binding specification
//! (servicebinding.io): one file per entry, plus `type` and `provider`.

use std::collections::BTreeMap;

use super::{Resolved, category_name};

/// The Service Binding spec's well-known entry names, and the credential keys Gantry takes for
/// each (compared without case and without `_`, `-` and `.`).
const WELL_KNOWN: [(&str, &[&str]); 6] = [
    (
        "host",
        &[
            "host", "hostname", "dbhost", "pghost", "server", "address", "endpoint",
        ],
    ),
    ("port", &["port", "dbport", "pgport"]),
    (
        "username",
        &[
            "username",
            "user",
            "dbuser",
            "dbusername",
            "pguser",
            "login",
        ],
    ),
    (
        "password",
        &[
            "password",
            "pass",
            "dbpassword",
            "dbpass",
            "pgpassword",
            "secret",
        ],
    ),
    (
        "database",
        &[
            "database",
            "dbname",
            "databasename",
            "pgdatabase",
            "db",
            "bucket",
        ],
    ),
    (
        "uri",
        &[
            "uri",
            "url",
            "databaseurl",
            "dburl",
            "dburi",
            "connectionstring",
            "connectionuri",
        ],
    ),
];

/// The well-known name a credential key stands for, if any (`DB_HOST`, `HostName` → `host`):
/// the key itself, else what follows a product's prefix (`REDIS_HOST`, `ORDERS_DB_PASSWORD`).
pub fn well_known(key: &str) -> Option<&'static str> {
    let lookup = |part: &str| {
        let folded: String = part
            .chars()
            .filter(|c| !matches!(c, '_' | '-' | '.'))
            .flat_map(char::to_lowercase)
            .collect();
        WELL_KNOWN
            .iter()
            .find(|(_, aliases)| aliases.contains(&folded.as_str()))
            .map(|(name, _)| *name)
    };
    let mut rest = key;
    loop {
        if let Some(name) = lookup(rest) {
            return Some(name);
        }
        let (_, after) = rest.split_once(['_', '-', '.'])?;
        rest = after;
    }
}

/// How `gantry connection env` prints credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `export VAR='value'` lines, for `eval` in a POSIX shell.
    Shell,
    /// `VAR="value"` lines, for `.env` files.
    Dotenv,
    /// One JSON object of variable names to values.
    Json,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "shell" => Some(Format::Shell),
            "dotenv" => Some(Format::Dotenv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// The credentials of a revealed connection in `format` (a secret never revealed prints empty).
pub fn render_env(resolved: &Resolved, format: Format) -> String {
    let pairs = resolved
        .resolved
        .credentials
        .iter()
        .map(|b| (b.var.as_str(), b.value.as_deref().unwrap_or("")));
    match format {
        Format::Shell => pairs
            .map(|(var, value)| format!("export {var}='{}'\n", value.replace('\'', r"'\''")))
            .collect(),
        Format::Dotenv => pairs
            .map(|(var, value)| format!("{var}=\"{}\"\n", dotenv_escape(value)))
            .collect(),
        Format::Json => {
            let map: BTreeMap<&str, &str> = pairs.collect();
            let mut text = serde_json::to_string_pretty(&map).unwrap_or_else(|_| "{}".into());
            text.push('\n');
            text
        }
    }
}

fn dotenv_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '$' => out.push_str(r"\$"),
            c => out.push(c),
        }
    }
    out
}

/// The files of a binding directory for a revealed connection: `type` (the resource's kind, or
/// its category), `provider` (`gantry`), then one file per credential, named by its well-known
/// name when it has one (`DB_HOST` → `host`), else by its key. A key that cannot be a file
/// name (`/`, a leading `.`) is left out, and returned second.
pub fn binding_files(resolved: &Resolved) -> (Vec<(String, String)>, Vec<String>) {
    let resource = &resolved.resolved.resource;
    let kind = resource
        .kind
        .clone()
        .unwrap_or_else(|| category_name(resource.category).to_string());
    let mut files = vec![
        ("type".to_string(), kind),
        ("provider".to_string(), "gantry".to_string()),
    ];
    let mut skipped = Vec::new();
    for b in &resolved.resolved.credentials {
        let wanted = well_known(&b.key)
            .filter(|w| !files.iter().any(|(f, _)| f == w))
            .map(str::to_string)
            .unwrap_or_else(|| b.key.clone());
        let usable = !wanted.is_empty()
            && !wanted.starts_with('.')
            && wanted
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !usable || files.iter().any(|(f, _)| *f == wanted) {
            skipped.push(b.key.clone());
            continue;
        }
        files.push((wanted, b.value.clone().unwrap_or_default()));
    }
    (files, skipped)
}
