//! The REST API against its own OpenAPI document, checked by schemathesis, a property-based API
//! tester (installed by `./scripts/test` into a virtualenv, `$GANTRY_SCHEMATHESIS`): requests
//! generated from the document (valid ones, and invalid ones the server must refuse) against a
//! real `gantry serve`; every answer must be documented, in status, content type and shape.

use std::path::PathBuf;
use std::process::Command;

use crate::support::server::{GantryServer, ServerConfig, TOKEN};

/// The one operation whose schema-valid requests the server may still refuse: a pipeline's text
/// is YAML that must pass `gantry validate`, which no JSON Schema can say (a 422 lists why).
const CONFIG: &str = r#"[[operations]]
include-path = "/api/v1/pipelines/{source}/{name}"
include-method = "PUT"
checks.positive_data_acceptance.enabled = false
"#;

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("GANTRY_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis-4.32.5/bin/st")
        });
    assert!(
        path.exists(),
        "schemathesis is not at {}: ./scripts/test installs it (or set GANTRY_SCHEMATHESIS)",
        path.display()
    );
    path
}

#[test]
fn schemathesis_finds_nothing_against_the_served_document() {
    let st = schemathesis();
    let s = GantryServer::start(ServerConfig::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let out = Command::new(&st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/api/v1/openapi.json", s.url())])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "30", "--seed", "7", "--no-color"])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\n{}", s.logs());
    assert!(
        said.contains("Tested:") && said.contains("generated"),
        "{said}"
    );
}
