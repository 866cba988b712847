//! The HTTP API's request bodies that become messages (`POST /api/tasks`, `POST
//! /api/services`): read here, with no I/O, so that the server and the fuzz targets
//! (`fuzz/`) run the same code, and checked as the manager will check what is published.

use serde_json::Value;

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

/// A request body as JSON, within what an event may be.
fn json_body(body: &[u8]) -> Result<Value, BodyError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(BodyError::TooLarge {
            size: body.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    serde_json::from_slice(body).map_err(BodyError::NotJson)
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
        let event: TaskEvent = wire::decode(body, MAX_EVENT_BYTES)?;
        if event.is_stop() {
            return Err(BodyError::Unexpected(format!(
                "this event stops task {}: use POST /api/tasks/{}/stop",
                event.task.id, event.task.id
            )));
        }
        event
    } else {
        // A bare task may leave its id to Cube, as `cube submit -f` does.
        TaskEvent::submit(task_with_optional_id(value)?)
    };
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
    let event = ServiceEvent::deploy(spec_from_json(value)?);
    Ok(decode_service_event(&encode(&event))?)
}
