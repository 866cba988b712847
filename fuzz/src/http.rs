//! The HTTP API's request bodies that become messages: `POST /api/tasks` (a Task or a
//! TaskEvent) and `POST /api/services` (a ServiceSpec), read by the functions the server
//! calls (`cube_shared::body`).

use cube_shared::body::{integral_numbers, read_spec, read_submission, BodyError};
use cube_shared::service::{decode_service_event, spec_from_json};
use cube_shared::validate::validate_event;
use cube_shared::wire::{self, encode, MAX_EVENT_BYTES};
use cube_shared::{task_with_optional_id, ServiceAction, State, TaskEvent};
use serde_json::Value;

/// Checks the size rule on a body: over the limit it is refused as too large (413), under it
/// never is.
fn size_rule<T: std::fmt::Debug>(what: &str, body: &[u8], result: &Result<T, BodyError>) {
    let too_large = matches!(result, Err(BodyError::TooLarge { size, max })
        if *size == body.len() && *max == MAX_EVENT_BYTES);
    assert_eq!(
        too_large,
        body.len() > MAX_EVENT_BYTES,
        "{what}: {} bytes (limit {MAX_EVENT_BYTES}): {result:?}",
        body.len()
    );
}

/// `POST /api/tasks`: what is accepted is the event the manager accepts, and a TaskEvent sent
/// as such is accepted when the manager would accept it as a submission (with its integral
/// floats read as integers), but for what the API refuses at once on its own.
pub fn http_submit(body: &[u8]) {
    let result = read_submission(body);
    size_rule("read_submission", body, &result);
    // The API reads `3.0` as 3 (`integral_numbers`): compare with the manager reading the
    // same numbers.
    let value = serde_json::from_slice::<Value>(body).ok().map(|mut v| {
        integral_numbers(&mut v);
        v
    });
    let as_event = value
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|o| o.contains_key("task"));
    if as_event && body.len() <= MAX_EVENT_BYTES {
        let normalised = serde_json::to_vec(value.as_ref().expect("JSON")).expect("serialises");
        let manager = wire::decode_event(&normalised).ok().filter(|e| !e.is_stop());
        match (result.as_ref().ok(), manager.as_ref()) {
            // A missing `timestamp` reads as each decoder's own now.
            (Some(api), manager) => assert_eq!(
                Some(api),
                manager
                    .map(|m| TaskEvent {
                        timestamp: api.timestamp,
                        ..m.clone()
                    })
                    .as_ref(),
                "the API and the manager disagree about a TaskEvent"
            ),
            // The API refuses at once what the manager's intake refuses later, in its journal
            // (a copy's `service`), and objects sent as arrays; it reads nothing else
            // differently.
            (None, Some(_)) => assert!(
                matches!(result, Err(BodyError::Unexpected(_))),
                "the API refused a TaskEvent the manager accepts: {result:?}"
            ),
            (None, None) => {}
        }
    }
    let Ok(event) = result else { return };
    if let Err(e) = validate_event(&event) {
        panic!("read_submission: accepted an event that is not valid: {e}");
    }
    assert_eq!(
        event.state,
        State::Running,
        "read_submission accepted a stop"
    );
    match wire::decode_event(&encode(&event)) {
        Ok(again) => assert_eq!(
            again, event,
            "read_submission: not equal after a round trip"
        ),
        Err(e) => panic!("read_submission: accepted, but the manager refuses it: {e}"),
    }
    if !as_event {
        // A bare task with its id is the task read from the body.
        let value = value.expect("an accepted body is JSON");
        if value.get("id").is_some() {
            let task = task_with_optional_id(value).expect("an accepted task reads again");
            assert_eq!(task, event.task, "read_submission changed the task");
        }
    }
}

/// `POST /api/services`: what is accepted is a deploy of the spec the body holds, which the
/// manager accepts as it is published.
pub fn http_deploy(body: &[u8]) {
    let result = read_spec(body);
    size_rule("read_spec", body, &result);
    let Ok(event) = result else { return };
    assert_eq!(
        event.action,
        ServiceAction::Deploy,
        "read_spec made another action"
    );
    crate::services::accepted("read_spec", &event);
    let mut value: Value = serde_json::from_slice(body).expect("an accepted body is JSON");
    integral_numbers(&mut value);
    let spec = spec_from_json(value).expect("an accepted spec reads again");
    assert_eq!(
        event.spec.as_ref(),
        Some(&spec),
        "read_spec changed the spec"
    );
    match decode_service_event(&encode(&event)) {
        Ok(again) => assert_eq!(again, event, "read_spec: not equal after a round trip"),
        Err(e) => panic!("read_spec: accepted, but the manager refuses it: {e}"),
    }
}
