//! The HTTP API's request bodies that become messages (`POST /api/tasks`, `POST
//! /api/services`): read here, with no I/O, so that the server and the fuzz targets
//! (`fuzz/`) run the same code, and checked as the manager will check what is published.

use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use crate::service::{decode_service_event, spec_from_json};
use crate::wire::{self, encode, DecodeError, MAX_EVENT_BYTES};
use crate::{task_with_optional_id, ServiceEvent, TaskEvent};

/// Why a request body is refused. Only [`BodyError::TooLarge`] is about its size (HTTP 413);
/// the others are about what it says (400).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Well-formed JSON that is not what the endpoint takes.
    #[error("{0}")]
    Unexpected(String),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// A request body as JSON, within what an event may be, its integral numbers made integers
/// ([`integral_numbers`]).
fn json_body(body: &[u8]) -> Result<Value, BodyError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(BodyError::TooLarge {
            size: body.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    let mut value = serde_json::from_slice(body).map_err(BodyError::NotJson)?;
    integral_numbers(&mut value);
    Ok(value)
}

/// Makes every number written with no fractional part (`3.0`, `1e3`) an integer, wherever it
/// is in `value`. JSON has one kind of number, and JSON Schema (hence the OpenAPI document)
/// counts `3.0` as an integer, as do clients that hold every number as a float (JavaScript);
/// serde refuses a float for an integer field. A float field takes an integer as it is, so
/// nothing that was accepted changes. Only floats up to 2^53 are made integers: beyond, a
/// float may be another integer rounded (`-9223372036854775809` reads as -2^63), which the
/// field must refuse rather than take for something else.
pub fn integral_numbers(value: &mut Value) {
    /// 2^53: every integer up to it is a float exactly, and no other number rounds to one.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) => {
            let Some(f) = n.as_f64().filter(|_| n.is_f64()) else {
                return;
            };
            if f.fract() != 0.0 || f.abs() >= EXACT {
                return;
            }
            *n = if f < 0.0 {
                Number::from(f as i64)
            } else {
                Number::from(f as u64)
            };
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// serde reads a struct from an array of its fields in order (`"update": [null, 1]`), but a
/// JSON client means an object, and the OpenAPI document says so: whatever was `read` as an
/// object (Cube writes it back as one) must have been `sent` as one.
fn sent_as_objects(sent: &Value, read: &Value, path: &str) -> Result<(), BodyError> {
    let at = |key: &dyn std::fmt::Display| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (sent, read) {
        (Value::Array(_), Value::Object(_)) => Err(BodyError::Unexpected(format!(
            "{}: an object, not an array",
            if path.is_empty() { "the body" } else { path }
        ))),
        (Value::Array(sent), Value::Array(read)) => sent
            .iter()
            .zip(read)
            .enumerate()
            .try_for_each(|(i, (s, r))| sent_as_objects(s, r, &format!("{path}[{i}]"))),
        (Value::Object(sent), Value::Object(read)) => sent.iter().try_for_each(|(key, s)| {
            read.get(key)
                .map_or(Ok(()), |r| sent_as_objects(s, r, &at(key)))
        }),
        _ => Ok(()),
    }
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("Cube's types serialise to JSON")
}

/// The bytes of a JSON value, for the decoders that read bytes (and say which field is wrong).
fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialise")
}

/// Reads a submission (a Task, or a TaskEvent with `state: running`) and checks it as the
/// manager will: the event returned re-encodes to bytes that `wire::decode_event` accepts.
pub fn read_submission(body: &[u8]) -> Result<TaskEvent, BodyError> {
    let value = json_body(body)?;
    let Some(object) = value.as_object() else {
        return Err(BodyError::Unexpected(
            "the body must be a JSON object: a Task, or a TaskEvent with a `task`".to_string(),
        ));
    };
    let event = if object.contains_key("task") {
        let event: TaskEvent = wire::decode(&bytes(&value), MAX_EVENT_BYTES)?;
        if event.is_stop() {
            return Err(BodyError::Unexpected(format!(
                "this event stops task {}: use POST /api/tasks/{}/stop",
                event.task.id, event.task.id
            )));
        }
        sent_as_objects(&value, &to_value(&event), "")?;
        event
    } else {
        // A bare task may leave its id to Cube, as `cube submit -f` does.
        let task = task_with_optional_id(value.clone())?;
        sent_as_objects(&value, &to_value(&task), "")?;
        TaskEvent::submit(task)
    };
    // The manager refuses these too, but only in its journal: the client hears it now.
    if event.task.service.is_some() || event.task.service_version.is_some() {
        return Err(BodyError::Unexpected(
            "task.service and task.service_version are set by Cube on copies of a service; \
             deploy a service with POST /api/services instead"
                .to_string(),
        ));
    }
    Ok(wire::decode_event(&encode(&event))?)
}

/// Reads a desired state (a ServiceSpec, whose template may leave out its `id`) and makes the
/// deploy event of it, checked as the manager will: it re-encodes to bytes that
/// `decode_service_event` accepts.
pub fn read_spec(body: &[u8]) -> Result<ServiceEvent, BodyError> {
    let value = json_body(body)?;
    if !value.is_object() {
        return Err(BodyError::Unexpected(
            "the body must be a JSON object: a ServiceSpec".to_string(),
        ));
    }
    let spec = spec_from_json(value.clone())?;
    sent_as_objects(&value, &to_value(&spec), "")?;
    let event = ServiceEvent::deploy(spec);
    Ok(decode_service_event(&encode(&event))?)
}

/// Reads the optional JSON body of an action on a service (scale, rollback, promote): an
/// empty body is `T::default()`; otherwise a JSON object of `T`'s fields, nothing else.
pub fn read_action<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value = json_body(body)?;
    Ok(wire::decode(&bytes(&value), MAX_EVENT_BYTES)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_become_integers_and_nothing_else_changes() {
        let mut v = json!({
            "a": 3.0, "b": -2.0, "c": 1e3, "d": 2.5, "e": [0.0, -0.0, 7],
            "f": {"g": 1e300, "h": 18446744073709551615u64, "i": "3.0"}, "j": null,
            "k": 9007199254740991.0, "l": 9007199254740992.0
        });
        integral_numbers(&mut v);
        assert_eq!(
            v,
            json!({
                "a": 3, "b": -2, "c": 1000, "d": 2.5, "e": [0, 0, 7],
                "f": {"g": 1e300, "h": 18446744073709551615u64, "i": "3.0"}, "j": null,
                "k": 9007199254740991u64, "l": 9007199254740992.0
            })
        );
        assert!(v["a"].is_u64() && v["b"].is_i64() && v["f"]["g"].is_f64() && v["l"].is_f64());
        // An integer beyond 64 bits reads as a float that rounds to one: it stays a float.
        let mut beyond: Value = serde_json::from_str("-9223372036854775809").unwrap();
        integral_numbers(&mut beyond);
        assert!(beyond.is_f64());
    }

    #[test]
    fn integers_may_be_written_as_floats() {
        let event = read_submission(
            br#"{"image": "busybox", "memory": 67108864.0, "max_restarts": 2.0, "cpu": 1}"#,
        )
        .expect("integral floats are integers");
        assert_eq!(event.task.memory, 64 << 20);
        assert_eq!(event.task.max_restarts, Some(2));
        assert_eq!(event.task.cpu, 1.0);
        let copy = read_submission(br#"{"image": "busybox", "service": "web"}"#);
        assert!(matches!(copy, Err(BodyError::Unexpected(_))), "{copy:?}");
        let refused = read_submission(br#"{"image": "busybox", "memory": 67108864.5}"#);
        assert!(matches!(refused, Err(BodyError::Decode(_))), "{refused:?}");
        let spec = read_spec(br#"{"name": "web", "count": 2.0, "template": {"image": "busybox"}}"#)
            .expect("a spec with an integral float");
        assert_eq!(spec.spec.map(|s| s.count), Some(2));
    }

    #[test]
    fn an_object_sent_as_an_array_is_refused() {
        fn refusal<T: std::fmt::Debug>(r: Result<T, BodyError>) -> String {
            match r {
                Err(BodyError::Unexpected(m)) => m,
                other => panic!("not refused as it should be: {other:?}"),
            }
        }
        let m = refusal(read_spec(
            br#"{"name": "web", "template": {"image": "busybox"}, "update": [null, 2]}"#,
        ));
        assert_eq!(m, "update: an object, not an array");
        let template = format!(
            r#"{{"name": "web", "template": ["{}", "", "pending", "busybox"]}}"#,
            uuid::Uuid::new_v4()
        );
        assert_eq!(
            refusal(read_spec(template.as_bytes())),
            "template: an object, not an array"
        );
        // (serde itself refuses an array for an environment variable: its enum is untagged.)
        assert!(
            read_submission(br#"{"image": "busybox", "env": [["DB_PASSWORD", "db"]]}"#).is_err()
        );
        let m = refusal(read_submission(
            br#"{"image": "busybox", "previous": ["w1", 3]}"#,
        ));
        assert_eq!(m, "previous: an object, not an array");
        let id = uuid::Uuid::new_v4();
        let event = format!(r#"{{"id": "{id}", "state": "running", "task": ["{id}"]}}"#);
        assert!(read_submission(event.as_bytes()).is_err());
        // Objects and arrays where they belong are read as before.
        read_submission(br#"{"image": "busybox", "env": ["A=1", {"name": "B", "secret": "db"}]}"#)
            .expect("a valid task");
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Scale {
        count: Option<u32>,
    }

    #[test]
    fn an_action_body_is_optional_strict_and_takes_integral_floats() {
        assert_eq!(read_action::<Scale>(b" \n").unwrap().count, None);
        assert_eq!(
            read_action::<Scale>(br#"{"count": 3.0}"#).unwrap().count,
            Some(3)
        );
        assert!(read_action::<Scale>(br#"{"count": 3.5}"#).is_err());
        assert!(read_action::<Scale>(br#"{"replicas": 3}"#).is_err());
        assert!(read_action::<Scale>(b"[]").is_err());
        assert!(matches!(
            read_action::<Scale>(&vec![b'1'; MAX_EVENT_BYTES + 1]),
            Err(BodyError::TooLarge { .. })
        ));
    }
}
