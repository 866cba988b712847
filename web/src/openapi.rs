//! Tests that tie openapi.json to the wire types: what the API answers is described by the
//! JSON Schemas made from the types (docs/schema, `cube schema`), and what it takes names the
//! same fields, with the same bounds, as the server checks.

use serde_json::{json, Map, Value};

use crate::OPENAPI;
use cube_shared::service::MAX_COUNT;

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

fn wire(name: &str) -> Value {
    cube_shared::schema::schema(name).unwrap_or_else(|| panic!("no wire type {name}"))
}

/// A draft-07 schema of docs/schema as openapi.json spells it: its definitions are components,
/// and Rust's integer formats (`uint64`, `uint32`, ...), which OpenAPI does not define, become
/// the bounds they mean. Without a `maximum`, a client (schemathesis did) may send a whole
/// number the server cannot read, as the document allows it.
fn as_component(schema: &Value) -> Value {
    match schema {
        Value::Object(fields) => {
            let mut out: Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "$schema" | "title" | "definitions"))
                .filter(|(k, v)| {
                    !(k.as_str() == "format" && v.as_str().is_some_and(|f| f.starts_with("uint")))
                })
                .map(|(k, v)| match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => (
                        k.clone(),
                        Value::String(r.replace("#/definitions/", "#/components/schemas/")),
                    ),
                    _ => (k.clone(), as_component(v)),
                })
                .collect();
            if let Some((min, max)) = fields.get("format").and_then(integer_range) {
                out.entry("minimum").or_insert(min);
                out.entry("maximum").or_insert(max);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(as_component).collect()),
        other => other.clone(),
    }
}

/// The range of one of the integer formats schemars writes for Rust's types (`uint` is usize,
/// 64 bits here). `int64` is OpenAPI's own format, kept, but its range is stated too.
fn integer_range(format: &Value) -> Option<(Value, Value)> {
    let range = match format.as_str()? {
        "uint8" => (json!(0), json!(u8::MAX)),
        "uint16" => (json!(0), json!(u16::MAX)),
        "uint32" => (json!(0), json!(u32::MAX)),
        "uint64" | "uint" => (json!(0), json!(u64::MAX)),
        "int64" => (json!(i64::MIN), json!(i64::MAX)),
        _ => return None,
    };
    Some(range)
}

fn keys(schema: &Value) -> Vec<String> {
    let mut k: Vec<String> = schema["properties"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Every schema of an answer is the wire type's, so that the document cannot drift from
/// what the server sends (nullable fields included).
#[test]
fn answers_are_described_by_the_wire_types() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (wire_name, component) in [
        ("task", "Task"),
        ("node", "Node"),
        ("journal-entry", "JournalEntry"),
        ("manager-info", "ManagerInfo"),
        ("task-list", "TaskList"),
        ("service", "Service"),
        ("service-status", "ServiceStatus"),
        ("endpoints", "Endpoints"),
    ] {
        let schema = wire(wire_name);
        assert_eq!(schemas[component], as_component(&schema), "{component}");
        for (name, definition) in schema["definitions"].as_object().into_iter().flatten() {
            assert_eq!(
                schemas[name],
                as_component(definition),
                "{name} (in {wire_name})"
            );
        }
    }
}

/// The request bodies name the wire types' fields, and the bounds the server checks.
#[test]
fn requests_name_the_fields_and_bounds_the_server_reads() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let task = wire("task");
    let spec = &schemas["TaskSpec"];
    let mut sent = keys(spec);
    // A copy's fields are set by Cube and refused in a submission.
    sent.extend(["service".to_string(), "service_version".to_string()]);
    sent.sort();
    assert_eq!(sent, keys(&task), "TaskSpec");
    assert_eq!(spec["required"], json!(["image"]));
    assert_eq!(spec["additionalProperties"], json!(false));
    assert_eq!(keys(&schemas["TaskEvent"]), keys(&wire("task-event")));
    let service_spec = wire("service-spec");
    assert_eq!(keys(&schemas["ServiceSpec"]), keys(&service_spec));
    assert_eq!(
        keys(&schemas["UpdatePolicySpec"]),
        keys(&service_spec["definitions"]["UpdatePolicy"])
    );
    for (what, bound) in [
        (
            "ServiceSpec count",
            &schemas["ServiceSpec"]["properties"]["count"],
        ),
        (
            "ScaleRequest count",
            &schemas["ScaleRequest"]["properties"]["count"],
        ),
        ("service-spec count", &service_spec["properties"]["count"]),
        (
            "service-event count",
            &wire("service-event")["properties"]["count"],
        ),
    ] {
        assert_eq!(bound["maximum"], json!(MAX_COUNT), "{what}");
    }
    for field in ["canary", "max_parallel"] {
        let bound = &schemas["UpdatePolicySpec"]["properties"][field]["maximum"];
        assert_eq!(*bound, json!(MAX_COUNT), "{field}");
    }
    let max_bytes = json!(cube_shared::validate::MAX_BYTES);
    assert_eq!(spec["properties"]["disk"]["maximum"], max_bytes);
    assert_eq!(
        spec["properties"]["cpu"]["maximum"].as_f64(),
        Some(cube_shared::validate::MAX_CPU)
    );
    assert_eq!(
        spec["properties"]["memory"]["anyOf"][1],
        json!({"minimum": cube_shared::validate::MIN_MEMORY, "maximum": max_bytes})
    );
    assert_eq!(
        spec["properties"]["image"]["maxLength"],
        json!(cube_shared::validate::MAX_IMAGE_LEN)
    );
    let env = &spec["properties"]["env"];
    assert_eq!(env["maxItems"], json!(cube_shared::validate::MAX_ENV));
    // The entries that name a secret (the objects) are bounded apart.
    assert_eq!(env["contains"], json!({"type": "object"}));
    assert_eq!(env["minContains"], json!(0));
    assert_eq!(
        env["maxContains"],
        json!(cube_shared::secret::MAX_TASK_SECRETS)
    );
}

/// The live stream is documented event by event, each `data` with its schema.
#[test]
fn the_stream_names_every_event_it_sends() {
    let doc = document();
    let events = &doc["paths"]["/api/stream"]["get"]["responses"]["200"]["content"]
        ["text/event-stream"]["schema"]["oneOf"];
    let mut names: Vec<&str> = events
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|e| e["properties"]["event"]["const"].as_str().expect("a name"))
        .collect();
    names.sort();
    // As web/src/live.rs sends them.
    let sent = [
        "journal",
        "managers",
        "nodes",
        "problem",
        "service",
        "service-gone",
        "task",
    ];
    assert_eq!(names, sent);
}

/// Every whole number in a schema has a largest value the server can read. Schemathesis sent
/// `previous.generation: 2.9e20` (a u64 beyond 2^64) because the document allowed it, and the
/// server answered 400. Query parameters are read as text, and a `limit` beyond what the
/// machine counts is no limit, so they are not held to this.
#[test]
fn every_whole_number_in_a_schema_is_bounded() {
    fn walk(at: &str, schema: &Value, unbounded: &mut Vec<String>) {
        match schema {
            Value::Object(fields) => {
                let whole = match &fields.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                    _ => false,
                };
                let bounded = fields.contains_key("maximum")
                    || fields.get("anyOf").is_some_and(|any| {
                        any.as_array()
                            .into_iter()
                            .flatten()
                            .all(|a| a.get("maximum").is_some() || a.get("const").is_some())
                    });
                if whole && !bounded {
                    unbounded.push(at.to_string());
                }
                for (k, v) in fields {
                    walk(&format!("{at}/{k}"), v, unbounded);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{at}/{i}"), v, unbounded);
                }
            }
            _ => {}
        }
    }
    let doc = document();
    let mut unbounded = Vec::new();
    walk("components", &doc["components"], &mut unbounded);
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let body = &operation["requestBody"];
            walk(&format!("{path} {method} body"), body, &mut unbounded);
        }
    }
    assert!(unbounded.is_empty(), "no maximum: {unbounded:#?}");
}
