//! Tests of planning: ordering forms, template expansion, built-ins.

use super::*;
use crate::spec;

fn plan_of(yaml: &str) -> Plan {
    let checked = spec::check(yaml);
    let Some(p) = checked.pipeline else {
        panic!("fixture does not validate: {:?}", checked.diagnostics);
    };
    plan(&p)
}

fn needs(plan: &Plan, name: &str) -> Vec<String> {
    let step = plan.step(name).unwrap_or_else(|| panic!("no step {name}"));
    step.needs
        .iter()
        .map(|&i| plan.steps[i].name.clone())
        .collect()
}

const HEAD: &str = "apiVersion: gantry.dev/v1\nkind: Pipeline\nmetadata: {name: p}\n";

#[test]
fn a_sequence_with_a_parallel_group_needs_the_previous_item() {
    let plan = plan_of(&format!(
        "{HEAD}steps:\n  - {{name: a, script: 'true'}}\n  - - {{name: b, script: 'true'}}\n    - {{name: c, script: 'true'}}\n  - {{name: d, script: 'true'}}\n"
    ));
    assert_eq!(needs(&plan, "a"), Vec::<String>::new());
    assert_eq!(needs(&plan, "b"), vec!["a"]);
    assert_eq!(needs(&plan, "c"), vec!["a"]);
    assert_eq!(needs(&plan, "d"), vec!["b", "c"]);
    assert_eq!(plan.topological_order(), vec![0, 1, 2, 3]);
}

#[test]
fn a_dag_keeps_only_declared_dependencies_and_orders_them() {
    // The file lists the join first; the order still puts it last.
    let plan = plan_of(&format!(
        "{HEAD}steps:\n  - {{name: d, script: 'true', dependsOn: [b, c]}}\n  - {{name: a, script: 'true'}}\n  - {{name: b, script: 'true', dependsOn: [a]}}\n  - {{name: c, script: 'true', dependsOn: [a]}}\n"
    ));
    assert_eq!(needs(&plan, "d"), vec!["b", "c"]);
    assert_eq!(needs(&plan, "c"), vec!["a"]);
    let order: Vec<&str> = plan
        .topological_order()
        .iter()
        .map(|&i| plan.steps[i].name.as_str())
        .collect();
    assert_eq!(order, vec!["a", "b", "c", "d"]);
}

#[test]
fn templates_expand_with_arguments_and_defaults_and_env_is_merged() {
    let plan = plan_of(&format!(
        r#"{HEAD}secrets: [pw]
templates:
  - name: psql
    inputs:
      - name: sql
      - name: database
        default: postgres
    image: postgres:16
    script: psql -d "$DATABASE" -c "$SQL" -v run={{{{run.id}}}}
    env:
      SQL: "{{{{inputs.sql}}}}"
      DATABASE: "{{{{inputs.database}}}}"
      MODE: template
    outputs: [rows]
steps:
  - name: grant
    template: psql
    arguments: {{sql: "GRANT {{{{secrets.pw}}}}"}}
    env:
      MODE: step
      EXTRA: "1"
"#
    ));
    let step = plan.step("grant").unwrap();
    let env: Vec<(String, String)> = step
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(
        env,
        vec![
            ("SQL".to_string(), "GRANT {{secrets.pw}}".to_string()),
            ("DATABASE".to_string(), "postgres".to_string()),
            ("MODE".to_string(), "step".to_string()),
            ("EXTRA".to_string(), "1".to_string()),
        ]
    );
    assert_eq!(
        step.image.as_ref().map(ToString::to_string).as_deref(),
        Some("postgres:16")
    );
    assert_eq!(
        step.outputs,
        vec![Output {
            name: "rows".into(),
            secret: false
        }]
    );
    match &step.action {
        Action::Script { source } => {
            assert_eq!(
                source.to_string(),
                "psql -d \"$DATABASE\" -c \"$SQL\" -v run={{run.id}}"
            )
        }
        other => panic!("unexpected action {other:?}"),
    }
}

#[test]
fn images_are_texts_and_a_template_image_gets_its_inputs() {
    let plan = plan_of(&format!(
        r#"{HEAD}parameters: [{{name: tag, default: "16"}}]
templates:
  - name: db
    inputs: [{{name: version, default: "15"}}]
    image: "postgres:{{{{inputs.version}}}}"
    script: pg_isready
steps:
  - {{name: given, template: db, arguments: {{version: "{{{{params.tag}}}}"}}}}
  - {{name: defaulted, template: db}}
  - {{name: own, template: db, image: "mine:{{{{git.sha}}}}"}}
"#
    ));
    let image = |name: &str| {
        plan.step(name)
            .and_then(|s| s.image.as_ref())
            .map(ToString::to_string)
    };
    assert_eq!(image("given").as_deref(), Some("postgres:{{params.tag}}"));
    assert_eq!(image("defaulted").as_deref(), Some("postgres:15"));
    assert_eq!(image("own").as_deref(), Some("mine:{{git.sha}}"));
}

#[test]
fn commands_become_argv_and_builtins_are_kept() {
    let plan = plan_of(&format!(
        r#"{HEAD}steps:
  - name: checkout
    template: gantry/git-checkout@v1
    arguments: {{path: src}}
  - name: run
    command: [sh, -c]
    args: ["echo hi"]
  - name: publish
    template: gantry/marketplace-publish@v1
    arguments:
      resource: {{name: r, version: 1.0.0, category: other}}
"#
    ));
    assert!(
        matches!(&plan.step("checkout").unwrap().action, Action::GitCheckout { path: Some(p) } if p.to_string() == "src")
    );
    match &plan.step("run").unwrap().action {
        Action::Exec { argv } => {
            let argv: Vec<String> = argv.iter().map(ToString::to_string).collect();
            assert_eq!(argv, vec!["sh", "-c", "echo hi"]);
        }
        other => panic!("unexpected action {other:?}"),
    }
    assert!(
        matches!(&plan.step("publish").unwrap().action, Action::Publish(r) if r.name.to_string() == "r")
    );
}

#[test]
fn secret_outputs_are_known_to_the_plan() {
    let plan = plan_of(&format!(
        "{HEAD}steps:\n  - name: a\n    script: 'true'\n    outputs: [{{name: pw, secret: true}}, host]\n"
    ));
    assert!(plan.is_secret_output("a", "pw"));
    assert!(!plan.is_secret_output("a", "host"));
    assert!(!plan.is_secret_output("b", "pw"));
}

#[test]
fn the_example_pipelines_plan() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/repo-layout/.gantry/pipelines");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples exist") {
        let path = entry.expect("readable").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let plan = plan_of(&text);
        assert_eq!(
            plan.topological_order().len(),
            plan.steps.len(),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 3);
}
