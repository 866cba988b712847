//! JSON Schemas of the wire types, generated from the types themselves (`cube schema`), so
//! that clients in other languages can be written from them. `docs/schema/` holds a copy of
//! each, and `docs/asyncapi.yaml` refers to those copies; a test keeps them in step.

use schemars::{JsonSchema, Schema};
use serde_json::Value;

use crate::secret::{SecretInfo, SecretName, SecretPut};
use crate::service::ServiceQuery;
use crate::{
    DrainRequest, Endpoints, ForgetRequest, JournalEntry, ManagerInfo, Node, NodeListQuery,
    Rejection, Service, ServiceEvent, ServiceSpec, ServiceStatus, StateReport, Task, TaskEvent,
    TaskList, TaskListQuery, TaskQuery,
};

/// How a duration travels: text such as `"5s"`, `"500ms"` or `"1m30s"`, or a number of
/// seconds. Only for the schema; serde reads it with [`crate::units::opt_duration`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum WireDuration {
    /// A number and a unit (`ms`, `s`, `m`, `h`), e.g. `"5s"` or `"1m30s"`.
    Text(String),
    /// Seconds.
    Seconds(#[schemars(range(min = 0))] f64),
}

/// A TaskEvent's `timestamp` defaults to the time of receipt, which is no fixed value: the
/// schema says it is optional without naming a default.
pub fn no_default_timestamp(schema: &mut Schema) {
    if let Some(Value::Object(timestamp)) = schema.pointer_mut("/properties/timestamp") {
        timestamp.remove("default");
    }
}

/// The names `cube schema` knows, each with what it describes.
pub const NAMES: [(&str, &str); 22] = [
    (
        "task-event",
        "a request to submit or stop a task, on tasks.events",
    ),
    (
        "task",
        "a task: its specification and what Cube records about it",
    ),
    (
        "state-report",
        "a worker's report on tasks.state.<task>.<worker>",
    ),
    ("rejection", "a refused event, on tasks.rejected"),
    (
        "journal-entry",
        "one entry of the journal, on cube.journal.<kind>",
    ),
    ("node", "a worker's node, on nodes.heartbeat.<worker>"),
    ("task-query", "the request body of cube.api.tasks.get"),
    (
        "node-list-query",
        "the request body of cube.api.nodes.list (a page of nodes)",
    ),
    ("drain-request", "the request body of cube.api.nodes.drain"),
    (
        "forget-request",
        "the request body of cube.api.nodes.forget",
    ),
    (
        "manager-info",
        "each manager's answer on cube.managers (leader and standbys)",
    ),
    ("task-list-query", "the request body of cube.api.tasks.list"),
    ("task-list", "the answer to cube.api.tasks.list, under `ok`"),
    (
        "service-event",
        "a request to deploy, scale, roll back, promote or remove a service, on services.events",
    ),
    (
        "service-spec",
        "a service's desired state, as `cube service deploy -f` reads it",
    ),
    ("service", "a service as the manager records it"),
    (
        "service-status",
        "the answer to cube.api.services.get (and each item of cube.api.services.list), under `ok`",
    ),
    ("service-query", "the request body of cube.api.services.get"),
    (
        "endpoints",
        "a service's healthy copies' addresses, in the cube-endpoints bucket",
    ),
    ("secret-put", "the request body of cube.api.secrets.put"),
    ("secret-name", "the request body of cube.api.secrets.rm"),
    (
        "secret-info",
        "each item of the answer to cube.api.secrets.list, under `ok` (never a value)",
    ),
];

/// The JSON Schema of one wire type, by its name in [`NAMES`]. Draft-07, the dialect
/// AsyncAPI documents name (`application/schema+json;version=draft-07`).
pub fn schema(name: &str) -> Option<Value> {
    let schema = match name {
        "task-event" => draft07::<TaskEvent>(),
        "task" => draft07::<Task>(),
        "state-report" => draft07::<StateReport>(),
        "rejection" => draft07::<Rejection>(),
        "journal-entry" => draft07::<JournalEntry>(),
        "node" => draft07::<Node>(),
        "task-query" => draft07::<TaskQuery>(),
        "node-list-query" => draft07::<NodeListQuery>(),
        "drain-request" => draft07::<DrainRequest>(),
        "forget-request" => draft07::<ForgetRequest>(),
        "manager-info" => draft07::<ManagerInfo>(),
        "task-list-query" => draft07::<TaskListQuery>(),
        "task-list" => draft07::<TaskList>(),
        "service-event" => draft07::<ServiceEvent>(),
        "service-spec" => draft07::<ServiceSpec>(),
        "service" => draft07::<Service>(),
        "service-status" => draft07::<ServiceStatus>(),
        "service-query" => draft07::<ServiceQuery>(),
        "endpoints" => draft07::<Endpoints>(),
        "secret-put" => draft07::<SecretPut>(),
        "secret-name" => draft07::<SecretName>(),
        "secret-info" => draft07::<SecretInfo>(),
        _ => return None,
    };
    let mut value = schema.to_value();
    uuid_patterns(&mut value);
    Some(value)
}

/// Every form of UUID that Cube reads: hyphenated, simple, braced, or as a URN.
const UUID_PATTERN: &str = concat!(
    "^([0-9a-fA-F]{32}",
    "|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "|\\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\}",
    "|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
);

/// Draft-07 has no `uuid` format, so validators ignore it: each UUID also gets a pattern.
fn uuid_patterns(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("format").and_then(Value::as_str) == Some("uuid") {
                map.insert("pattern".into(), UUID_PATTERN.into());
            }
            map.values_mut().for_each(uuid_patterns);
        }
        Value::Array(items) => items.iter_mut().for_each(uuid_patterns),
        _ => {}
    }
}

fn draft07<T: JsonSchema>() -> Schema {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// Every schema, in one JSON object keyed by name.
pub fn all() -> Value {
    Value::Object(
        NAMES
            .iter()
            .map(|(name, _)| (name.to_string(), schema(name).expect("a known name")))
            .collect(),
    )
}

/// How `cube schema NAME` prints it, and how `docs/schema/NAME.json` holds it.
pub fn to_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a JSON value serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, decode_event, encode, MAX_EVENT_BYTES};
    use crate::{Health, Placement, RestartPolicy, State};
    use std::path::PathBuf;
    use std::time::Duration;

    fn docs() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
    }

    /// A validator that also checks `format` (uuid, date-time), as Cube does.
    fn validator(name: &str) -> jsonschema::Validator {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema(name).unwrap())
            .expect("the schema compiles")
    }

    #[test]
    fn checked_in_schemas_match_the_types() {
        for (name, _) in NAMES {
            let path = docs().join(format!("{name}.json"));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                on_disk,
                to_text(&schema(name).unwrap()),
                "{} is out of date: run `cargo run -q --bin cube -- schema {name} > docs/schema/{name}.json`",
                path.display()
            );
        }
        let files = std::fs::read_dir(docs()).unwrap().count();
        assert_eq!(
            files,
            NAMES.len(),
            "docs/schema holds a file per schema, no more"
        );
    }

    #[test]
    fn unknown_names_have_no_schema() {
        assert!(schema("taskevent").is_none());
        assert_eq!(all().as_object().unwrap().len(), NAMES.len());
    }

    /// A task with every field set, as the manager records it.
    fn full_task() -> Task {
        let mut t = Task::new("nginx:1.27");
        t.name = "web".into();
        t.state = State::Running;
        t.cmd = vec!["nginx".into()];
        t.env = vec!["K=V".into()];
        t.cpu = 0.5;
        t.memory = 256 << 20;
        t.disk = 1 << 30;
        t.exposed_ports = vec!["80/tcp".into()];
        t.port_bindings
            .insert("80/tcp".into(), "127.0.0.1:8080".into());
        t.restart_policy = RestartPolicy::OnFailure;
        t.mounts = vec!["data:/data:ro".into()];
        t.network_mode = Some("bridge".into());
        t.pid_mode = Some("host".into());
        t.ipc_mode = Some("host".into());
        t.privileged = true;
        t.cap_add = vec!["NET_ADMIN".into()];
        t.devices = vec!["/dev/fuse".into()];
        t.constraints = vec!["zone=eu".into()];
        t.max_restarts = Some(5);
        t.health_check = Some("/health".into());
        t.health_interval = Some(Duration::from_millis(1500));
        t.health_timeout = Some(Duration::from_secs(2));
        t.health_retries = Some(3);
        t.health_grace = Some(Duration::from_secs(30));
        t.container_id = Some("abc".into());
        t.worker = Some("w1".into());
        t.start_time = Some(chrono::Utc::now());
        t.finish_time = Some(chrono::Utc::now());
        t.restart_count = 2;
        t.next_attempt_at = Some(chrono::Utc::now());
        t.health = Some(Health::Healthy);
        t.previous = Some(Placement {
            worker: "w0".into(),
            generation: 1,
        });
        t.stop_requested = true;
        t.generation = 2;
        t.exit_code = Some(-1);
        t.error = Some("oops".into());
        t.submitted_at = Some(chrono::Utc::now());
        t
    }

    /// Events any client might send, and that Cube accepts.
    fn valid_events() -> Vec<String> {
        let example = crate::wire::CONTRACT_EXAMPLE;
        let minimal = r#"{"id":"5b0c2f7e-3a1d-4c55-9f57-2f1a8a3c9d01","state":"running",
          "task":{"id":"c3a5e0f2-7b8e-4d6c-a1f0-9e2d3b4c5a60","image":"busybox"}}"#;
        let durations = r#"{"id":"5b0c2f7e-3a1d-4c55-9f57-2f1a8a3c9d01","state":"running",
          "task":{"id":"c3a5e0f2-7b8e-4d6c-a1f0-9e2d3b4c5a60","image":"busybox","cpu":1,
          "health_check":"true","health_interval":"500ms","health_timeout":2.5,"health_grace":null}}"#;
        let stop = r#"{"id":"5b0c2f7e-3a1d-4c55-9f57-2f1a8a3c9d01","state":"completed",
          "timestamp":"2026-11-22T10:00:00+01:00","task":{"id":"c3a5e0f2-7b8e-4d6c-a1f0-9e2d3b4c5a60"}}"#;
        let mut placed = full_task();
        placed.stop_requested = false;
        vec![
            example.to_string(),
            minimal.to_string(),
            durations.to_string(),
            stop.to_string(),
            String::from_utf8(encode(&TaskEvent::submit(Task::new("busybox"))).to_vec()).unwrap(),
            String::from_utf8(encode(&TaskEvent::placement(&placed)).to_vec()).unwrap(),
        ]
    }

    #[test]
    fn events_cube_accepts_validate() {
        let v = validator("task-event");
        for event in valid_events() {
            decode_event(event.as_bytes()).unwrap_or_else(|e| panic!("serde: {e}: {event}"));
            let json: Value = serde_json::from_str(&event).unwrap();
            let errors: Vec<String> = v.iter_errors(&json).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{errors:?}: {event}");
        }
    }

    #[test]
    fn what_cube_writes_validates() {
        let task = serde_json::to_value(full_task()).unwrap();
        assert!(validator("task").is_valid(&task), "{task}");
        let report = StateReport::new(uuid::Uuid::new_v4(), "w1", State::Failed);
        assert!(validator("state-report").is_valid(&serde_json::to_value(report).unwrap()));
        let entry = JournalEntry::new("scheduled", "placed on w1")
            .task(uuid::Uuid::new_v4())
            .worker("w1");
        assert!(validator("journal-entry").is_valid(&serde_json::to_value(entry).unwrap()));
        let list = TaskList {
            total: 2,
            tasks: vec![full_task()],
            counts: [(State::Running, 1), (State::Failed, 1)].into(),
        };
        let list = serde_json::to_value(list).unwrap();
        assert!(validator("task-list").is_valid(&list), "{list}");
        let query = TaskListQuery {
            state: Some(State::Running),
            limit: Some(5),
        };
        let query = serde_json::to_value(query).unwrap();
        assert!(validator("task-list-query").is_valid(&query), "{query}");
        assert!(!validator("task-list-query").is_valid(&serde_json::json!({"state": "asleep"})));
    }

    /// Each is refused by serde and by the schema: the two agree on what is wrong.
    #[test]
    fn events_cube_refuses_fail_validation() {
        let base: Value = serde_json::from_str(&valid_events()[1]).unwrap();
        // Sets a field of the event (`/state`) or of its task (`/task/cpu`).
        let with = |pointer: &str, value: Value| {
            let mut v = base.clone();
            let (parent, field) = pointer.rsplit_once('/').unwrap();
            v.pointer_mut(parent).unwrap()[field] = value;
            v
        };
        let mut no_state = base.clone();
        no_state.as_object_mut().unwrap().remove("state");
        let mut no_task_id = base.clone();
        no_task_id["task"].as_object_mut().unwrap().remove("id");
        let mut unknown = base.clone();
        unknown["task"]["cpus"] = Value::from(1);
        let bad = [
            with("/state", "Running".into()),
            with("/state", "exploded".into()),
            with("/task/cpu", "lots".into()),
            with("/task/memory", Value::from(-5)),
            with("/task/memory", Value::from(1.5)),
            with("/task/restart_policy", "sometimes".into()),
            with("/task/id", "not-a-uuid".into()),
            with("/task/cmd", "sleep 5".into()),
            with("/timestamp", "yesterday".into()),
            no_state,
            no_task_id,
            unknown,
        ];
        let v = validator("task-event");
        for event in bad {
            let bytes = serde_json::to_vec(&event).unwrap();
            assert!(
                decode::<TaskEvent>(&bytes, MAX_EVENT_BYTES).is_err(),
                "serde accepts {event}"
            );
            assert!(!v.is_valid(&event), "the schema accepts {event}");
        }
    }

    fn base_with_task_id(id: &str) -> Value {
        let mut v: Value = serde_json::from_str(&valid_events()[1]).unwrap();
        v["task"]["id"] = Value::from(id);
        v
    }

    #[test]
    fn wire_forms_in_the_schema() {
        let s = schema("task").unwrap();
        let props = &s["properties"];
        assert_eq!(props["cpu"]["type"], "number");
        assert_eq!(props["memory"]["type"], "integer");
        assert_eq!(props["memory"]["minimum"], 0);
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["id"]);
        let states = serde_json::to_string(&s["definitions"]["State"]).unwrap();
        for st in State::ALL {
            assert!(states.contains(&format!("\"{st}\"")), "{states}");
        }
        let e = schema("task-event").unwrap();
        assert!(e["properties"]["timestamp"].get("default").is_none());
        let id = uuid::Uuid::new_v4();
        let query = validator("task-query");
        for form in [
            id.hyphenated().to_string(),
            id.simple().to_string(),
            id.braced().to_string(),
            id.urn().to_string(),
            id.to_string().to_uppercase(),
        ] {
            let as_json = Value::from(form.clone());
            assert!(
                serde_json::from_value::<uuid::Uuid>(as_json).is_ok(),
                "{form}"
            );
            let event = base_with_task_id(&form);
            assert!(validator("task-event").is_valid(&event), "{form}");
        }
        assert!(query.is_valid(&serde_json::json!({"id": "web"})));
        assert_eq!(e["additionalProperties"], false);
    }
}
