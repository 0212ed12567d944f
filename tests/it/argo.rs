//! `gantry render --argo`: every valid fixture and example compiles to a Workflow that Argo's own
//! JSON Schema (v4.1.2, tightened against unknown fields) accepts, and no secret value is in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Argo's schema with `additionalProperties: false` on every object definition that lists
/// properties, and `IntOrString` as integer or string (see `tests/fixtures/argo/SOURCES.md`).
fn strict_schema() -> Value {
    let text = std::fs::read_to_string(fixtures().join("argo/workflow-schema.json"))
        .expect("the Argo schema fixture");
    let mut schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    let defs = schema["definitions"].as_object_mut().expect("definitions");
    for (name, def) in defs.iter_mut() {
        if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString" {
            *def = json!({"type": ["integer", "string"]});
            continue;
        }
        if def.get("properties").is_some() && def.get("additionalProperties").is_none() {
            def["additionalProperties"] = json!(false);
        }
    }
    // Validate against the Workflow definition itself.
    json!({
        "$schema": schema["$schema"],
        "definitions": schema["definitions"],
        "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow",
    })
}

fn render(file: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["render", "--argo", "--format", "json"])
        .arg(file)
        .args(extra)
        .output()
        .expect("gantry render runs")
}

fn pipeline_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        fixtures().join("valid"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout/.gantry/pipelines"),
    ] {
        for entry in std::fs::read_dir(&dir).expect("fixture dir").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_valid_pipeline_compiles_to_a_workflow_argo_accepts() {
    let schema = strict_schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let mut compiled = 0;
    let mut refused = 0;
    for file in pipeline_files() {
        let out = render(&file, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Refused by design, with a message naming the step: secret outputs (they would be in
        // the Workflow's status in plaintext) and fractional backoff factors (Argo's are whole).
        if out.status.code() == Some(1)
            && (stderr.contains("secret output") || stderr.contains("Argo takes whole factors"))
        {
            refused += 1;
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", file.display());
        let rendered: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let docs = match rendered {
            Value::Array(docs) => docs,
            one => vec![one],
        };
        let workflow = &docs[0];
        let errors: Vec<String> = validator
            .iter_errors(workflow)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{}: the Workflow breaks Argo's schema:\n{}",
            file.display(),
            errors.join("\n")
        );
        // The tightened schema does reject what Argo would: a misspelt field.
        let mut typo = workflow.clone();
        typo["spec"]["entrypiont"] = json!("main");
        assert!(
            !validator.is_valid(&typo),
            "the schema must catch unknown fields"
        );
        if let Some(secret) = docs.get(1) {
            assert_eq!(secret["kind"], "Secret");
            for value in secret["stringData"]
                .as_object()
                .expect("stringData")
                .values()
            {
                assert_eq!(value, "<redacted>", "render never prints a secret value");
            }
        }
        compiled += 1;
    }
    assert!(
        compiled >= 10,
        "only {compiled} pipelines compiled ({refused} refused)"
    );
}

#[test]
fn a_bad_file_is_reported_with_its_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: bad}\nstpes: []\n",
    )
    .expect("write");
    let out = render(&file, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:4:1"), "{stderr}");
}

/// `deploy/kubernetes/gantry.yaml`: every document is YAML with a kind, the config it carries is
/// one `gantry serve` accepts, and the Deployment runs one replica of it.
#[test]
fn the_kubernetes_manifests_parse_and_carry_a_valid_config() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/gantry.yaml"),
    )
    .expect("the manifests");
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Secret",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ]
    );
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the config");
    let toml = config["data"]["gantry.toml"].as_str().expect("gantry.toml");
    // The variables the manifests give the pod.
    let env = [
        ("GANTRY_ADMIN_TOKEN", "an-admin-token-of-enough-length"),
        ("ARGO_TOKEN", "a-service-account-token"),
        ("GITHUB_TOKEN", "ghp_example"),
    ];
    let checked =
        gantry::config::parse(toml, Path::new("/etc/gantry/gantry.toml"), &|name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        });
    let config = checked.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.executors.default, "cluster");
}
