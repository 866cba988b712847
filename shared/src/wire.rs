//! Decoding untrusted bytes: bounded in size, exact about what is wrong and where.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::validate::{validate_event, validate_work, Invalid};
use crate::{Task, TaskEvent};

/// The largest TaskEvent Cube accepts. Checked before parsing.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// The largest state report, heartbeat or API request Cube accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The largest work a worker reads: an event, plus the values of the secrets its task names
/// (each escaped in JSON at worst six bytes for one). Under NATS's default 1 MiB payload.
pub const MAX_WORK_BYTES: usize =
    MAX_EVENT_BYTES + crate::secret::MAX_TASK_SECRETS * (crate::secret::MAX_SECRET_BYTES * 6 + 256);

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("payload is empty")]
    Empty,
    #[error("the event is {size} bytes once normalised; a submission must stay under {max} bytes to leave room for what Cube adds to it")]
    NoHeadroom { size: usize, max: usize },
    /// `path` says which field: `task.memory`.
    #[error("{}", if path.is_empty() || path == "." { message.clone() } else { format!("{path}: {message}") })]
    Json { path: String, message: String },
    #[error("{0}")]
    Invalid(#[from] Invalid),
}

/// Parses JSON from at most `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max,
        });
    }
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(DecodeError::Empty);
    };
    // Every message is a JSON object; serde would also read a struct from an array.
    if *first != b'{' {
        return Err(DecodeError::Json {
            path: String::new(),
            message: "a message must be a JSON object".to_string(),
        });
    }
    let json = |e: serde_json::Error, path: String| DecodeError::Json {
        path,
        message: e.to_string(),
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        json(e.into_inner(), path)
    })?;
    // One document, nothing after it.
    de.end().map_err(|e| json(e, String::new()))?;
    Ok(value)
}

/// The top-level fields this version of Cube knows in the wire type `schema` names.
fn known_fields(schema: &'static str) -> &'static BTreeSet<String> {
    static TASK: OnceLock<BTreeSet<String>> = OnceLock::new();
    static EVENT: OnceLock<BTreeSet<String>> = OnceLock::new();
    let cell = if schema == "task" { &TASK } else { &EVENT };
    cell.get_or_init(|| {
        crate::schema::schema(schema)
            .and_then(|s| s.get("properties").and_then(|p| p.as_object()).cloned())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
}

fn from_json<T: DeserializeOwned>(value: Map<String, Value>) -> Result<T, DecodeError> {
    serde_json::from_value(Value::Object(value)).map_err(|e| DecodeError::Json {
        path: String::new(),
        message: e.to_string(),
    })
}

/// Reads a Task DB record, which a newer Cube may have written: fields this version does not
/// know are set aside, so a manager or worker one version behind still reads the record
/// (a submission, by contrast, must carry none: [`decode_event`]).
pub fn decode_stored_task(bytes: &[u8]) -> Result<Task, DecodeError> {
    let mut task: Map<String, Value> = decode(bytes, usize::MAX)?;
    task.retain(|key, _| known_fields("task").contains(key));
    from_json(task)
}

/// Reads work the manager handed a worker (`tasks.pending.*`), which a newer manager may have
/// written: as [`decode_placement`], with fields this version does not know set aside.
pub fn decode_work(bytes: &[u8]) -> Result<TaskEvent, DecodeError> {
    let mut event: Map<String, Value> = decode(bytes, MAX_WORK_BYTES)?;
    event.retain(|key, _| known_fields("task-event").contains(key));
    if let Some(Value::Object(task)) = event.get_mut("task") {
        task.retain(|key, _| known_fields("task").contains(key));
    }
    let event: TaskEvent = from_json(event)?;
    validate_work(&event)?;
    Ok(event)
}

/// Room left under [`MAX_EVENT_BYTES`] for what the manager adds to a submitted task before
/// it hands it to a worker (worker name, generation, times): a submission must leave it free.
pub const PLACEMENT_HEADROOM: usize = 4096;

/// Parses and validates a submitted TaskEvent (from any client): it must also leave room
/// for what Cube adds to it, so that the placement made from it can be handed on.
pub fn decode_event(bytes: &[u8]) -> Result<TaskEvent, DecodeError> {
    let event = decode_placement(bytes)?;
    let size = encode(&event).len();
    if size + PLACEMENT_HEADROOM > MAX_EVENT_BYTES {
        return Err(DecodeError::NoHeadroom {
            size,
            max: MAX_EVENT_BYTES - PLACEMENT_HEADROOM,
        });
    }
    Ok(event)
}

/// Parses and validates a TaskEvent the manager sent to a worker (a placement or a stop).
pub fn decode_placement(bytes: &[u8]) -> Result<TaskEvent, DecodeError> {
    let event: TaskEvent = decode(bytes, MAX_EVENT_BYTES)?;
    validate_event(&event)?;
    Ok(event)
}

/// Serialises a message. Cube's own types always serialise.
pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value)
        .expect("Cube's message types serialise to JSON")
        .into()
}

/// What can be read from an event that is not valid, so that its rejection can name it and
/// the task it meant to submit can be recorded as refused.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Salvaged {
    pub event_id: Option<uuid::Uuid>,
    pub task_id: Option<uuid::Uuid>,
    /// Whether the event asked to stop a task (`state: "completed"`).
    pub is_stop: bool,
    pub name: Option<String>,
    pub image: Option<String>,
}

pub fn salvage(bytes: &[u8]) -> Salvaged {
    if bytes.len() > MAX_EVENT_BYTES {
        return Salvaged::default();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Salvaged::default();
    };
    let task = v.get("task");
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str()).map(|s| {
            s.chars()
                .take(crate::validate::MAX_IMAGE_LEN)
                .collect::<String>()
        })
    };
    let id = |v: Option<&serde_json::Value>| text(v).and_then(|s| s.parse().ok());
    Salvaged {
        event_id: id(v.get("id")),
        task_id: id(task.and_then(|t| t.get("id"))),
        is_stop: v.get("state").and_then(|s| s.as_str()) == Some("completed"),
        name: text(task.and_then(|t| t.get("name"))),
        image: text(task.and_then(|t| t.get("image"))),
    }
}

/// The TaskEvent of the README's NATS contract, for tests.
#[cfg(test)]
pub(crate) const CONTRACT_EXAMPLE: &str = r#"{ "id": "5b0c2f7e-3a1d-4c55-9f57-2f1a8a3c9d01", "state": "running",
  "timestamp": "2026-11-22T10:00:00Z",
  "task": { "id": "c3a5e0f2-7b8e-4d6c-a1f0-9e2d3b4c5a60", "name": "web", "image": "nginx:1.27",
    "cmd": ["nginx", "-g", "daemon off;"], "env": ["K=V"],
    "cpu": 0.5, "memory": 268435456, "disk": 0,
    "exposed_ports": ["80/tcp"], "port_bindings": { "80/tcp": "8080" },
    "restart_policy": "on-failure", "health_check": "/health" } }"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_task_from_a_newer_version_is_read_but_a_submission_must_be_exact() {
        let mut task = Task::new("busybox");
        task.generation = 3;
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&task)).unwrap();
        json["added_in_a_later_version"] = serde_json::json!({"x": 1});
        let bytes = serde_json::to_vec(&json).unwrap();
        assert_eq!(decode_stored_task(&bytes).unwrap(), task);
        assert!(decode::<Task>(&bytes, usize::MAX).is_err());
        let event = format!(
            r#"{{"id":"{}","state":"running","timestamp":"2026-11-30T00:00:00Z","task":{}}}"#,
            uuid::Uuid::new_v4(),
            json
        );
        let e = decode_event(event.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("added_in_a_later_version"), "{e}");
        // Work from a newer manager: new fields in the envelope or the task are set aside.
        let mut work: serde_json::Value = serde_json::from_str(&event).unwrap();
        work["new_envelope_field"] = serde_json::json!(true);
        let work = serde_json::to_vec(&work).unwrap();
        assert_eq!(decode_work(&work).unwrap().task, task);
        assert!(decode_placement(&work).is_err());
    }

    fn valid() -> String {
        String::from_utf8(encode(&TaskEvent::submit(Task::new("busybox"))).to_vec()).unwrap()
    }

    #[test]
    fn round_trip() {
        let e = decode_event(valid().as_bytes()).unwrap();
        assert_eq!(e.task.image, "busybox");
    }

    #[test]
    fn contract_example_decodes() {
        let json = CONTRACT_EXAMPLE;
        let e = decode_event(json.as_bytes()).unwrap();
        assert_eq!(e.task.memory, 268435456);
        assert_eq!(e.task.port_bindings["80/tcp"], "8080");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = valid().replace("\"memory\":0", "\"memory\":-5");
        let err = decode_event(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("task.memory:"), "{err}");

        let bad = valid().replace("\"state\":\"running\"", "\"state\":\"exploded\"");
        let err = decode_event(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("unknown variant `exploded`"), "{err}");

        let bad = valid().replace("\"cpu\":0.0", "\"cpu\":\"lots\"");
        let err = decode_event(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("task.cpu:"), "{err}");

        let err = decode_event(b"{not json").unwrap_err().to_string();
        assert!(err.contains("key must be a string"), "{err}");
    }

    #[test]
    fn oversized_is_refused_before_parsing() {
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            decode_event(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = valid().replace("\"cpu\":", "\"cpus\":1,\"cpu\":");
        let err = decode_event(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("unknown field `cpus`"), "{err}");
    }

    #[test]
    fn salvages_ids_from_invalid_events() {
        let bad = valid().replace("\"image\":\"busybox\"", "\"image\":\"\"");
        let Salvaged {
            event_id: event,
            task_id: task,
            ..
        } = salvage(bad.as_bytes());
        assert!(event.is_some() && task.is_some());
    }
}
