//! TaskEvents: submissions and stops on `tasks.events` (the manager's `decode_event`), and
//! placements and stops the manager hands a worker on `tasks.pending.*` (the worker's
//! `decode_work`; `decode_placement` is the strict form), plus `salvage`, which names what a
//! refused event meant.

use cube_shared::validate::validate_event;
use cube_shared::wire::{self, encode, DecodeError, Salvaged, MAX_EVENT_BYTES, PLACEMENT_HEADROOM};
use cube_shared::{State, TaskEvent};
use serde_json::Value;

use crate::within_limit;

/// Checks every TaskEvent decoder on `bytes`.
pub fn task_event(bytes: &[u8]) {
    let event = wire::decode_event(bytes);
    let placement = wire::decode_placement(bytes);
    let work = wire::decode_work(bytes);
    let salvaged = wire::salvage(bytes);
    if bytes.len() > MAX_EVENT_BYTES {
        assert_eq!(salvaged, Salvaged::default(), "salvaged an oversized event");
    }
    let event = within_limit("decode_event", bytes, MAX_EVENT_BYTES, &event);
    let placement = within_limit("decode_placement", bytes, MAX_EVENT_BYTES, &placement);
    let work = within_limit("decode_work", bytes, MAX_EVENT_BYTES, &work);

    if let Some(event) = event {
        // A submission is a placement that leaves room for what Cube adds to it. A missing
        // `timestamp` reads as the time of decoding: each decoder's own now.
        let same_time = placement.map(|p| TaskEvent {
            timestamp: event.timestamp,
            ..p.clone()
        });
        assert_eq!(
            same_time.as_ref(),
            Some(event),
            "decode_event and decode_placement disagree"
        );
        let size = encode(event).len();
        assert!(
            size + PLACEMENT_HEADROOM <= MAX_EVENT_BYTES,
            "accepted an event of {size} bytes once re-encoded, leaving no headroom"
        );
        match wire::decode_event(&encode(event)) {
            Ok(again) => assert_eq!(&again, event, "decode_event: not equal after a round trip"),
            Err(e) => panic!("decode_event: accepted, but its re-encoding is refused: {e}"),
        }
    }
    if let Some(placement) = placement {
        accepted("decode_placement", placement);
        salvage_agrees(bytes, &salvaged, placement);
        // What the manager may send, the worker reads, as the same event (decoded at its
        // own now, if the event has no `timestamp`).
        let same_time = work.map(|w| TaskEvent {
            timestamp: placement.timestamp,
            ..w.clone()
        });
        assert_eq!(
            same_time.as_ref(),
            Some(placement),
            "decode_work reads a placement otherwise"
        );
        same_placement("decode_placement", placement);
    }
    if let Some(work) = work {
        accepted("decode_work", work);
        // Work is a placement once the fields this version does not know are set aside.
        same_placement("decode_work", work);
        let encoded = encode(work);
        match wire::decode_work(&encoded) {
            Ok(again) => assert_eq!(&again, work, "decode_work: not equal after a round trip"),
            Err(DecodeError::TooLarge { .. }) if encoded.len() > MAX_EVENT_BYTES => {}
            Err(e) => panic!("decode_work: accepted, but its re-encoding is refused: {e}"),
        }
    }
}

/// What any TaskEvent decoder accepts is valid and asks to run or to stop.
fn accepted(what: &str, event: &TaskEvent) {
    if let Err(e) = validate_event(event) {
        panic!("{what}: accepted an event that is not valid: {e}");
    }
    assert!(
        matches!(event.state, State::Running | State::Completed),
        "{what}: accepted an event asking for {}",
        event.state
    );
}

/// The re-encoding of an accepted event is read back by `decode_placement` as the same event.
fn same_placement(what: &str, event: &TaskEvent) {
    let encoded = encode(event);
    match wire::decode_placement(&encoded) {
        Ok(again) => assert_eq!(&again, event, "{what}: not equal after a round trip"),
        // A re-encoding may outgrow the limit (defaults written out); nothing else refuses it.
        Err(DecodeError::TooLarge { .. }) if encoded.len() > MAX_EVENT_BYTES => {}
        Err(e) => panic!("{what}: accepted, but decode_placement refuses its re-encoding: {e}"),
    }
}

/// `salvage` (what a rejection names) never contradicts what was read, and names an event
/// sent in the documented form (an object with a `task` object).
fn salvage_agrees(bytes: &[u8], salvaged: &Salvaged, event: &TaskEvent) {
    assert!(
        salvaged.event_id.is_none_or(|id| id == event.id),
        "salvage names another event"
    );
    assert!(
        salvaged.task_id.is_none_or(|id| id == event.task.id),
        "salvage names another task"
    );
    let documented = serde_json::from_slice::<Value>(bytes)
        .is_ok_and(|v| v.is_object() && v["task"].is_object());
    if documented {
        assert_eq!(
            (salvaged.event_id, salvaged.task_id, salvaged.is_stop),
            (Some(event.id), Some(event.task.id), event.is_stop()),
            "salvage does not name the accepted event"
        );
    }
}
