//! The OpenAPI 3.1 document, generated from the route table in `api.rs` and the schemas below.

use serde_json::{Map, Value, json};

use super::api::ROUTES;

/// A generator of JSON Schema 2020-12 (OpenAPI 3.1's) under `#/components/schemas/`, for what
/// the server writes (`Serialize`) or reads (`Deserialize`).
fn generator(contract: schemars::generate::Contract) -> schemars::SchemaGenerator {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    settings.contract = contract;
    settings.meta_schema = None;
    settings.into_generator()
}

/// The schemas generated from the answers' types (`views::api`), with every type they use, by
/// name: what the server serializes is what the document says.
fn generated() -> Map<String, Value> {
    use crate::views::api;
    let mut generator = generator(schemars::generate::Contract::Serialize);
    generator.subschema_for::<api::Run>();
    generator.subschema_for::<api::RunList>();
    generator.subschema_for::<api::RunDetail>();
    generator.subschema_for::<api::Pipeline>();
    generator.subschema_for::<api::PipelineList>();
    generator.subschema_for::<api::AppliedPipeline>();
    generator.subschema_for::<api::PipelineDetail>();
    generator.subschema_for::<api::ResourceList>();
    generator.subschema_for::<crate::marketplace::ResourceView>();
    generator.subschema_for::<api::ConnectionList>();
    generator.subschema_for::<crate::marketplace::Resolved>();
    generator.subschema_for::<crate::marketplace::ConnectionState>();
    generator.subschema_for::<api::Error>();
    generator.subschema_for::<api::VariableList>();
    generator.subschema_for::<api::SecretList>();
    generator.subschema_for::<api::SourceList>();
    generator.subschema_for::<api::Readiness>();
    generator.subschema_for::<api::Accepted>();
    generator.subschema_for::<api::AuditList>();
    generator.take_definitions(true)
}

/// The JSON schemas the routes name: the answers' and the request bodies'.
fn schemas() -> Value {
    let mut all = generated();
    // A name in both keeps the answer's (a test sees that none is).
    for (name, schema) in bodies() {
        all.entry(name).or_insert(schema);
    }
    Value::Object(all)
}

/// The request bodies' schemas, generated from the types the handlers read them into, with
/// the constraints the handlers check (as schemars attributes on those types).
fn bodies() -> Map<String, Value> {
    let mut generator = generator(schemars::generate::Contract::Deserialize);
    generator.subschema_for::<super::api::SpecBody>();
    generator.subschema_for::<super::api::RollbackBody>();
    generator.subschema_for::<super::api::RunBody>();
    generator.subschema_for::<super::api::VariableBody>();
    generator.subschema_for::<super::api::SecretBody>();
    generator.subschema_for::<super::market::DeprecateBody>();
    generator.subschema_for::<super::market::ConnectionBody>();
    generator.take_definitions(true)
}

fn content(schema: &str) -> Value {
    match schema {
        "text" => json!({"text/plain": {"schema": {"type": "string"}}}),
        "logs" => json!({"text/plain": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}}}),
        "metrics" => json!({"text/plain": {"schema": {"type": "string"}}}),
        name => {
            json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}})
        }
    }
}

/// The schema of a path or query parameter: what the server accepts, so that a value within it
/// is never refused as malformed.
fn param_schema(route: &super::api::Route, name: &str) -> Value {
    // Only pipelines defined in Gantry change through the API.
    let local_only = route.path.starts_with("/api/v1/pipelines/{source}/{name}")
        && !route.path.contains("/variables/")
        && !route.path.contains("/secrets/")
        && !route.path.ends_with("/runs")
        && route.method != "get";
    match name {
        "source" if local_only => json!({"type": "string", "enum": ["local"]}),
        "name" if local_only => json!({"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"}),
        "var" => json!({"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}),
        "resource" | "connection" => {
            json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"})
        }
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
        "all" | "follow" => json!({"type": "boolean", "default": false}),
        "status" => {
            json!({"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled", "interrupted", "skipped"]})
        }
        _ => json!({"type": "string"}),
    }
}

/// The document as `/api/v1/openapi.json` serves it: made once per process (it depends on the
/// code only), not at every request.
pub fn served() -> &'static Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(document)
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut responses = Map::new();
        for (status, description, schema) in route.responses {
            let mut r = json!({ "description": description });
            if let Some(schema) = schema {
                r["content"] = content(schema);
            }
            responses.insert(status.to_string(), r);
        }
        // The guard in front of state-changing calls (`guard.rs`).
        if route.path.starts_with("/api/v1/") && matches!(route.method, "post" | "put" | "delete") {
            responses.insert(
                "415".into(),
                json!({"description": "a body without `Content-Type: application/json`", "content": content("Error")}),
            );
            responses.insert(
                "403".into(),
                json!({"description": "a Host or Origin that is neither public_url nor loopback", "content": content("Error")}),
            );
        }
        if route.permission.needs_token() {
            let why = format!(
                "the token's role falls short: this needs {}",
                route.permission.as_str()
            );
            match responses.get_mut("403") {
                Some(r) => {
                    let before = r["description"].as_str().unwrap_or_default().to_string();
                    r["description"] = json!(format!("{before}; or {why}"));
                }
                None => {
                    responses.insert(
                        "403".into(),
                        json!({"description": why, "content": content("Error")}),
                    );
                }
            }
        }
        if route.path.starts_with("/api/v1/")
            && matches!(route.method, "post" | "put" | "delete")
            && !route.path.ends_with("/cancel")
        {
            responses.insert(
                "507".into(),
                json!({"description": "the data dir's file system is below its free-space reserve ([storage] min_free); the message names the data dir and its free space", "content": content("Error")}),
            );
        }
        if !super::api::is_health(route.path) {
            responses.entry("503").or_insert_with(|| {
                json!({"description": "too many requests in progress (with Retry-After), or the store failed and the server is restarting", "content": content("Error")})
            });
        }
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": param_schema(route, name)}))
            .collect();
        parameters.extend(route.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description,
                "schema": param_schema(route, name)})
        }));
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{}{}", route.method, route.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": parameters,
            "responses": responses,
        });
        op["x-gantry-permission"] = json!(route.permission.as_str());
        if route.permission.needs_token() {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        if let Some(body) = route.body {
            op["requestBody"] = json!({"required": true, "content": content(body)});
            // `extract::Body`: a body too large, or one that never arrived whole.
            op["responses"]["413"] = json!({"description": format!("a body larger than {} MiB", super::extract::MAX_BODY >> 20), "content": content("Error")});
            if op["responses"].get("400").is_none() {
                op["responses"]["400"] = json!({"description": "a body that could not be read (the connection broke, or it did not arrive within 30 s of the request's headers)", "content": content("Error")});
            }
        }
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gantry API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Pipelines, runs, logs, variables and secrets of a Gantry server. Authenticate with `Authorization: Bearer <token>` (a token from [[auth.tokens]] in gantry.toml). State-changing calls (POST, PUT, DELETE) with a body must send `Content-Type: application/json` (415 otherwise; a pipeline's PUT also takes the YAML itself as `application/yaml`), and a `Host`, and an `Origin` when there is one, naming the server's public_url or a loopback address (403 otherwise): no cross-site requests, no DNS rebinding. Webhooks under /hooks are checked by their signatures instead."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_request_bodies_have_schema_names_of_their_own() {
        let generated = generated();
        let bodies = bodies();
        for name in bodies.keys() {
            assert!(
                !generated.contains_key(name),
                "{name} is both an answer and a body"
            );
        }
        for name in [
            "PipelineSpec",
            "Rollback",
            "RunRequest",
            "Value",
            "SecretValue",
            "Deprecate",
            "NewConnection",
        ] {
            assert!(bodies.contains_key(name), "{name} is generated");
        }
        for name in [
            "Run",
            "RunList",
            "RunDetail",
            "Step",
            "Output",
            "RunPublication",
        ] {
            assert!(generated.contains_key(name), "{name} is generated");
        }
    }

    #[test]
    fn every_route_is_documented_and_every_named_schema_exists() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for route in ROUTES {
            assert!(
                doc["paths"][route.path][route.method].is_object(),
                "{} {}",
                route.method,
                route.path
            );
            for (_, _, schema) in route.responses {
                if let Some(s) = schema
                    && !matches!(*s, "text" | "logs" | "metrics")
                {
                    assert!(schemas.contains_key(*s), "schema {s}");
                }
            }
            if let Some(b) = route.body {
                assert!(schemas.contains_key(b), "schema {b}");
            }
            let op = &doc["paths"][route.path][route.method];
            let guarded = route.path.starts_with("/api/v1/") && route.method != "get";
            assert_eq!(
                op["responses"]["415"].is_object() && op["responses"]["403"].is_object(),
                guarded,
                "{} {} documents the guard exactly when it applies",
                route.method,
                route.path
            );
            assert!(
                super::super::api::handler(route.method, route.path).is_some(),
                "no handler for {} {}",
                route.method,
                route.path
            );
        }
    }
}
