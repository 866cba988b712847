//! Fuzzing every message the manager and the worker decode from the wire, through the entry
//! points they use: `wire::decode_event` (TaskEvents on `tasks.events` and
//! `tasks.pending.*`), `wire::decode::<T>` (state reports, heartbeats, API requests, journal
//! entries, Task DB records) and `wire::salvage` (what a rejection can still name).
//!
//! Property-based and bounded, so that it runs in CI on every `cargo test` in a few seconds:
//! arbitrary bytes, arbitrary JSON, and mutations of valid messages (a field replaced by random
//! JSON, fields deleted, unknown fields inserted, strings and lists grown to and past the size
//! limits, deep nesting). What must hold for every input:
//!
//! - decoding never panics (nor overflows the stack);
//! - an input over its size limit is refused as `TooLarge`; a message other than an event
//!   under its limit never is (an event may be, for the size of what Cube would make of it);
//! - whatever `decode_event` accepts is valid (`validate_event`), asks for `running` or
//!   `completed`, is named by `salvage`, and re-encodes to bytes that `decode_event` reads
//!   back as an equal event (the manager re-encodes what it accepted into the Task DB and
//!   into the placement it sends a worker, which reads it with `decode_event`);
//! - whatever `decode::<T>` accepts re-encodes and decodes to an equal value (durations and
//!   floating-point numbers included);
//! - a message is one JSON document: bytes after it are refused;
//! - a state other than pending, scheduled, running, completed and failed is refused.
//!
//! Failures are not persisted to files: proptest prints the shrunk input.

use std::fmt::Debug;
use std::time::Duration;

use cube_shared::validate::{validate_event, MAX_ARG_LEN};
use cube_shared::wire::{
    self, DecodeError, Salvaged, MAX_EVENT_BYTES, MAX_MESSAGE_BYTES, PLACEMENT_HEADROOM,
};
use cube_shared::{
    DrainRequest, JournalEntry, Node, RestartPolicy, State, StateReport, Task, TaskEvent,
    TaskListQuery, TaskQuery,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

mod exactness;
mod generators;
mod targets;

/// Cases for the cheap targets; the ones that build inputs near the 256 KiB limit run fewer.
const CASES: u32 = 2000;
const HUGE_CASES: u32 = 150;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The properties.

/// Every message type Cube decodes, with the limit its decoder is called with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `tasks.events` (manager) and `tasks.pending.*` (worker).
    Event,
    /// `tasks.state.<id>` (manager).
    Report,
    /// `nodes.heartbeat.<worker>` and the `cube-nodes` bucket (manager).
    Node,
    /// `cube.api.tasks.get` (manager).
    Query,
    /// `cube.api.nodes.drain` (manager).
    Drain,
    /// `cube.api.tasks.list` (manager).
    ListQuery,
    /// `cube.journal.>` (`cube events`).
    Journal,
    /// `cube-tasks` records (manager and worker, unbounded) and task files (`cube submit -f`).
    Task,
}

const KINDS: [Kind; 8] = [
    Kind::Event,
    Kind::Report,
    Kind::Node,
    Kind::Query,
    Kind::Drain,
    Kind::ListQuery,
    Kind::Journal,
    Kind::Task,
];

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(KINDS.to_vec())
}

/// Decodes `bytes` as `kind` and checks every property that applies.
fn check(kind: Kind, bytes: &[u8]) -> Result<(), TestCaseError> {
    match kind {
        Kind::Event => check_event(bytes).map(|_| ()),
        Kind::Report => check_message::<StateReport>(bytes, MAX_MESSAGE_BYTES),
        Kind::Node => check_message::<Node>(bytes, MAX_MESSAGE_BYTES),
        Kind::Query => check_message::<TaskQuery>(bytes, MAX_MESSAGE_BYTES),
        Kind::Drain => check_message::<DrainRequest>(bytes, MAX_MESSAGE_BYTES),
        Kind::ListQuery => check_message::<TaskListQuery>(bytes, MAX_MESSAGE_BYTES),
        Kind::Journal => check_message::<JournalEntry>(bytes, MAX_MESSAGE_BYTES),
        Kind::Task => {
            check_message::<Task>(bytes, MAX_EVENT_BYTES)?;
            check_message::<Task>(bytes, usize::MAX)
        }
    }
}

/// Whether the decoder of `kind` accepts `bytes`.
fn accepts(kind: Kind, bytes: &[u8]) -> bool {
    match kind {
        Kind::Event => wire::decode_event(bytes).is_ok(),
        Kind::Report => wire::decode::<StateReport>(bytes, MAX_MESSAGE_BYTES).is_ok(),
        Kind::Node => wire::decode::<Node>(bytes, MAX_MESSAGE_BYTES).is_ok(),
        Kind::Query => wire::decode::<TaskQuery>(bytes, MAX_MESSAGE_BYTES).is_ok(),
        Kind::Drain => wire::decode::<DrainRequest>(bytes, MAX_MESSAGE_BYTES).is_ok(),
        Kind::ListQuery => wire::decode::<TaskListQuery>(bytes, MAX_MESSAGE_BYTES).is_ok(),
        Kind::Journal => wire::decode::<JournalEntry>(bytes, MAX_MESSAGE_BYTES).is_ok(),
        Kind::Task => wire::decode::<Task>(bytes, usize::MAX).is_ok(),
    }
}

fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    KINDS.iter().try_for_each(|&k| check(k, bytes))
}

fn check_message<T>(bytes: &[u8], max: usize) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let name = std::any::type_name::<T>();
    let decoded = wire::decode::<T>(bytes, max);
    if bytes.len() > max {
        prop_assert!(
            matches!(decoded, Err(DecodeError::TooLarge { size, max: m })
                if size == bytes.len() && m == max),
            "{name}: {} bytes over the limit of {max} were not refused as too large: {decoded:?}",
            bytes.len()
        );
        return Ok(());
    }
    match decoded {
        Err(DecodeError::TooLarge { .. }) => {
            return Err(TestCaseError::fail(format!(
                "{name}: {} bytes, under the limit {max}, refused as too large",
                bytes.len()
            )));
        }
        Err(e) => prop_assert!(
            !e.to_string().is_empty(),
            "{name}: an error without a reason"
        ),
        Ok(value) => {
            let again = wire::decode::<T>(&wire::encode(&value), usize::MAX);
            prop_assert!(
                again.is_ok(),
                "{name}: the re-encoded value does not decode: {again:?}"
            );
            prop_assert_eq!(
                again.unwrap(),
                value,
                "{}: not equal after a round trip",
                name
            );
        }
    }
    Ok(())
}

/// Checks `decode_event` and `salvage` on `bytes`; returns the event if it was accepted.
fn check_event(bytes: &[u8]) -> Result<Option<TaskEvent>, TestCaseError> {
    let decoded = wire::decode_event(bytes);
    let salvaged = wire::salvage(bytes);
    if bytes.len() > MAX_EVENT_BYTES {
        prop_assert!(
            matches!(decoded, Err(DecodeError::TooLarge { size, max })
                if size == bytes.len() && max == MAX_EVENT_BYTES),
            "an event of {} bytes was not refused as too large: {decoded:?}",
            bytes.len()
        );
        prop_assert_eq!(salvaged, Salvaged::default());
        return Ok(None);
    }
    // Under the limit, an event may still be refused for its size: what Cube makes of it (the
    // task it records, the placement it sends) must fit too.
    let event = match decoded {
        Err(e) => {
            prop_assert!(!e.to_string().is_empty(), "an error without a reason");
            return Ok(None);
        }
        Ok(event) => event,
    };
    prop_assert!(
        validate_event(&event).is_ok(),
        "accepted but not valid: {:?}",
        validate_event(&event)
    );
    prop_assert!(
        matches!(event.state, State::Running | State::Completed),
        "accepted an event asking for {}",
        event.state
    );
    // `salvage` (used on refused events) never contradicts what was read, and names an event
    // sent in the documented form. (serde also reads a JSON array as a struct, field by field:
    // `salvage` does not look into those.)
    prop_assert!(salvaged.event_id.is_none_or(|id| id == event.id));
    prop_assert!(salvaged.task_id.is_none_or(|id| id == event.task.id));
    let documented_form = serde_json::from_slice::<Value>(bytes)
        .is_ok_and(|v| v.is_object() && v["task"].is_object());
    if documented_form {
        prop_assert_eq!(
            (salvaged.event_id, salvaged.task_id, salvaged.is_stop),
            (Some(event.id), Some(event.task.id), event.is_stop()),
            "salvage does not name the accepted event"
        );
    }
    let encoded = wire::encode(&event);
    match wire::decode_event(&encoded) {
        Ok(again) => prop_assert_eq!(&again, &event, "not equal after a round trip"),
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "accepted {} bytes, but its re-encoding ({} bytes) is refused: {e}",
                bytes.len(),
                encoded.len()
            )))
        }
    }
    Ok(Some(event))
}

// ---------------------------------------------------------------------------------------------
// Valid messages to start mutating from.

fn busybox_event() -> TaskEvent {
    TaskEvent::submit(Task::new("busybox"))
}

/// A submission that sets every field a client may set.
fn rich_event() -> TaskEvent {
    let mut t = Task::new("registry.local:5000/team/web:1.27");
    t.name = "web".into();
    t.cmd = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    t.env = vec!["K=V".into(), "EMPTY=".into()];
    t.cpu = 0.5;
    t.memory = 256 << 20;
    t.disk = 1 << 30;
    t.exposed_ports = vec!["80/tcp".into(), "53/udp".into()];
    t.port_bindings = [("80/tcp".to_string(), "127.0.0.1:8080".to_string())].into();
    t.restart_policy = RestartPolicy::OnFailure;
    t.constraints = vec!["zone=eu".into(), "gpu!=none".into()];
    t.max_restarts = Some(3);
    t.health_check = Some("/health".into());
    t.health_interval = Some(Duration::from_secs(5));
    t.health_timeout = Some(Duration::from_millis(500));
    t.health_retries = Some(3);
    t.health_grace = Some(Duration::from_secs(30));
    TaskEvent::submit(t)
}

fn base(kind: Kind, variant: usize) -> Value {
    let id = uuid::Uuid::new_v4();
    fn to_value<T: Serialize>(message: &T) -> Value {
        serde_json::to_value(message).expect("Cube's messages serialise")
    }
    match (kind, variant % 3) {
        (Kind::Event, 0) => to_value(&busybox_event()),
        (Kind::Event, 1) => to_value(&rich_event()),
        (Kind::Event, _) => to_value(&TaskEvent::stop(id)),
        (Kind::Report, 0) => to_value(&StateReport::new(id, "w-1", State::Completed)),
        (Kind::Report, _) => json!({
            "task_id": id, "worker": "w-1", "state": "running",
            "timestamp": "2026-11-22T10:00:00Z", "generation": 2, "health": "starting",
            "container_id": "abc123", "start_time": "2026-11-22T10:00:00.5+01:00",
            "finish_time": null, "exit_code": -1, "error": "oom"
        }),
        (Kind::Node, _) => json!({
            "name": "w-1", "address": "10.0.0.2", "cores": 4.0, "cpu_usage": 0.25,
            "memory": 8u64 << 30, "memory_used": 1u64 << 30, "memory_allocated": 0,
            "disk": 100u64 << 30, "disk_used": 0, "disk_allocated": 0, "cpu_allocated": 0.5,
            "task_count": 1, "labels": {"zone": "eu"}, "last_heartbeat": "2026-11-22T10:00:00Z",
            "version": "0.1.0", "state": "ready",
            "running": [{"id": id, "generation": 1}], "leaving": false
        }),
        (Kind::Query, _) => json!({ "id": id.to_string()[..8] }),
        (Kind::Drain, _) => json!({ "name": "w-1", "drain": variant.is_multiple_of(2) }),
        (Kind::ListQuery, 0) => json!({ "state": "running", "limit": 5 }),
        (Kind::ListQuery, 1) => json!({}),
        (Kind::ListQuery, _) => json!({ "state": null, "limit": null }),
        (Kind::Journal, _) => to_value(
            &JournalEntry::new("submitted", "web (busybox)")
                .task(id)
                .event(uuid::Uuid::new_v4())
                .worker("w-1"),
        ),
        (Kind::Task, 0) => to_value(&busybox_event().task),
        (Kind::Task, _) => to_value(&rich_event().task),
    }
}

#[test]
fn the_bases_are_valid() {
    for kind in KINDS {
        for variant in 0..3 {
            let bytes = serde_json::to_vec(&base(kind, variant)).unwrap();
            let ok = accepts(kind, &bytes);
            assert!(
                ok,
                "{kind:?} {variant}: {}",
                String::from_utf8_lossy(&bytes)
            );
            check(kind, &bytes).unwrap();
        }
    }
}
