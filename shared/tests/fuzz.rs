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

// ---------------------------------------------------------------------------------------------
// Generators.

/// Field names of Cube's messages, so that random objects often look like the real thing.
const FIELDS: &[&str] = &[
    "id",
    "state",
    "timestamp",
    "task",
    "name",
    "image",
    "cmd",
    "env",
    "cpu",
    "memory",
    "disk",
    "exposed_ports",
    "port_bindings",
    "restart_policy",
    "constraints",
    "max_restarts",
    "health_check",
    "health_interval",
    "health_timeout",
    "health_retries",
    "health_grace",
    "generation",
    "worker",
    "task_id",
    "container_id",
    "exit_code",
    "error",
    "drain",
    "limit",
    "kind",
    "time",
    "message",
    "event_id",
    "cores",
    "labels",
    "last_heartbeat",
    "running",
    "leaving",
    "privileged",
    "mounts",
    "network_mode",
    "pid_mode",
    "ipc_mode",
    "cap_add",
    "devices",
    "__proto__",
    "",
];

/// Strings that mean something somewhere in Cube, and some that almost do.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "pending",
            "scheduled",
            "running",
            "completed",
            "failed",
            "Running",
            "RUNNING",
            " running",
            "exploded",
            "ready",
            "draining",
            "on-failure",
            "always",
            "no",
            "busybox",
            "nginx:1.27",
            "UPPER/Case!!",
            "a//b",
            "x@sha256:00",
            "80/tcp",
            "0/tcp",
            "70000",
            "65535",
            "127.0.0.1:8080",
            "::1:80",
            "5s",
            "500ms",
            "100.5ms",
            "-1s",
            "1e400",
            "K=V",
            "=V",
            "NOEQUALS",
            "/health",
            "host",
            "/var/run/docker.sock:/var/run/docker.sock",
            "SYS_ADMIN",
            "zone=eu",
            "a!=b",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.123456789+05:30",
            "2016-12-31T23:59:60Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "not a time",
            "00000000-0000-0000-0000-000000000000",
            "\u{0}",
            "\u{feff}",
            "\u{10ffff}",
            "",
        ])
        .prop_map(String::from),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        ".{0,24}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(String::from),
        1 => ".{0,12}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            0i64,
            1,
            -1,
            6 << 20,
            1 << 50,
            (1 << 50) + 1,
            65535,
            70000
        ])
        .prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        (-2000.0f64..2000.0).prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// One step in the path to a member of a JSON document.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    At(usize),
}

/// The paths to every value in `v` (the root is the empty path).
fn paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    here.push(Seg::Key(k.clone()));
                    walk(child, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    here.push(Seg::At(i));
                    walk(child, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::At(i) => v.get_mut(*i),
    })
}

/// A change to a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a value with random JSON.
    Replace(Index, Value),
    /// Delete a member or an element.
    Delete(Index),
    /// Add a member to the nearest object at or above a value.
    Insert(Index, String, Value),
    /// Replace a value with a string of this many bytes.
    LongString(Index, usize),
    /// Replace a value with a list of this many short strings.
    LongList(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        3 => any::<Index>().prop_map(Mutation::Delete),
        2 => (any::<Index>(), key(), json_value()).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
        1 => (any::<Index>(), 0usize..70_000).prop_map(|(i, n)| Mutation::LongString(i, n)),
        1 => (any::<Index>(), 0usize..12_000).prop_map(|(i, n)| Mutation::LongList(i, n)),
    ]
}

fn apply(doc: &mut Value, m: &Mutation) {
    let all = paths(doc);
    let pick = |i: &Index| all[i.index(all.len())].clone();
    match m {
        Mutation::Replace(i, v) => {
            if let Some(slot) = get_mut(doc, &pick(i)) {
                *slot = v.clone();
            }
        }
        Mutation::Delete(i) => {
            let mut path = pick(i);
            let Some(last) = path.pop() else { return };
            match (get_mut(doc, &path), last) {
                (Some(Value::Object(m)), Seg::Key(k)) => {
                    m.remove(&k);
                }
                (Some(Value::Array(a)), Seg::At(i)) => {
                    a.remove(i);
                }
                _ => {}
            }
        }
        Mutation::Insert(i, k, v) => {
            let mut path = pick(i);
            loop {
                if let Some(Value::Object(m)) = get_mut(doc, &path) {
                    m.insert(k.clone(), v.clone());
                    return;
                }
                if path.pop().is_none() {
                    return;
                }
            }
        }
        Mutation::LongString(i, n) => {
            if let Some(slot) = get_mut(doc, &pick(i)) {
                *slot = Value::String("x".repeat(*n));
            }
        }
        Mutation::LongList(i, n) => {
            if let Some(slot) = get_mut(doc, &pick(i)) {
                *slot = Value::Array(vec![Value::String("K=V".into()); *n]);
            }
        }
    }
}

/// A valid message of `kind`, changed by one to four mutations.
fn mutated(kind: Kind) -> impl Strategy<Value = (Value, Vec<Mutation>)> {
    (0..3usize, prop::collection::vec(mutation(), 1..5)).prop_map(move |(variant, ms)| {
        let mut doc = base(kind, variant);
        for m in &ms {
            apply(&mut doc, m);
        }
        (doc, ms)
    })
}

fn bytes_of(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}

// ---------------------------------------------------------------------------------------------
// Targets.

fn kind_and_mutated() -> impl Strategy<Value = (Kind, Value, Vec<Mutation>)> {
    kind().prop_flat_map(|k| mutated(k).prop_map(move |(doc, ms)| (k, doc, ms)))
}

const STATES: [&str; 5] = ["pending", "scheduled", "running", "completed", "failed"];

/// Whether a decoder refused a message for what it found at the JSON path `at`.
fn refused_at<T>(result: &Result<T, DecodeError>, at: &str) -> bool {
    matches!(result, Err(DecodeError::Json { path, .. }) if path == at)
}

fn not_a_state() -> impl Strategy<Value = String> {
    prop_oneof![interesting_string(), ".{0,16}", "[a-z]{1,10}"]
        .prop_filter("a real state", |s| !STATES.contains(&s.as_str()))
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Random bytes, and random bytes after the start of a valid event (so that the parser
    /// gets further in).
    #[test]
    fn arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        prefix in any::<bool>(),
    ) {
        check_all(&bytes)?;
        if prefix {
            let mut event = bytes_of(&base(Kind::Event, 1));
            event.truncate(bytes.len() % event.len());
            event.extend_from_slice(&bytes);
            check_all(&event)?;
        }
    }

    /// Any JSON document, fed to every decoder.
    #[test]
    fn arbitrary_json(v in json_value()) {
        check_all(&bytes_of(&v))?;
    }

    /// Valid TaskEvents (a plain submission, one with every field, a stop) with fields
    /// replaced by random JSON, deleted, inserted, and grown into long strings and lists.
    #[test]
    fn mutated_events((doc, _mutations) in mutated(Kind::Event)) {
        check_event(&bytes_of(&doc))?;
    }

    /// The same for every other message type.
    #[test]
    fn mutated_messages((k, doc, _mutations) in kind_and_mutated()) {
        check(k, &bytes_of(&doc))?;
    }

    /// A valid message cut short anywhere is refused by every decoder, never half-read.
    #[test]
    fn truncated_messages(k in kind(), variant in 0..3usize, cut in any::<Index>()) {
        let bytes = wire::encode(&base(k, variant));
        let cut = cut.index(bytes.len());
        check_all(&bytes[..cut])?;
        prop_assert!(wire::decode_event(&bytes[..cut]).is_err());
        prop_assert!(wire::decode::<Task>(&bytes[..cut], usize::MAX).is_err());
    }

    /// A state outside the five is refused wherever a state is read; of the five, a client
    /// may only ask for `running` and `completed`.
    #[test]
    fn unknown_states_are_refused(
        state in not_a_state(),
        real in prop::sample::select(STATES.to_vec()),
    ) {
        let mut event = base(Kind::Event, 1);
        event["state"] = json!(state);
        let err = wire::decode_event(&bytes_of(&event));
        prop_assert!(refused_at(&err, "state"), "{:?}", err);

        let mut event = base(Kind::Event, 1);
        event["task"]["state"] = json!(state);
        let err = wire::decode_event(&bytes_of(&event));
        prop_assert!(refused_at(&err, "task.state"), "{:?}", err);

        let mut task = base(Kind::Task, 1);
        task["state"] = json!(state);
        prop_assert!(wire::decode::<Task>(&bytes_of(&task), usize::MAX).is_err());

        let mut report = base(Kind::Report, 1);
        report["state"] = json!(state);
        let err = wire::decode::<StateReport>(&bytes_of(&report), MAX_MESSAGE_BYTES);
        prop_assert!(refused_at(&err, "state"), "{:?}", err);

        let mut query = base(Kind::ListQuery, 0);
        query["state"] = json!(state);
        let err = wire::decode::<TaskListQuery>(&bytes_of(&query), MAX_MESSAGE_BYTES);
        prop_assert!(refused_at(&err, "state"), "{:?}", err);

        let mut event = base(Kind::Event, 0);
        event["state"] = json!(real);
        let decoded = wire::decode_event(&bytes_of(&event));
        if matches!(real, "running" | "completed") {
            prop_assert!(decoded.is_ok(), "{:?}", decoded);
        } else {
            prop_assert!(matches!(decoded, Err(DecodeError::Invalid(_))), "{:?}", decoded);
        }
    }

    /// JSON nested far deeper than any message: refused, without exhausting the stack.
    #[test]
    fn deep_nesting(
        depth in prop_oneof![0usize..300, 300usize..20_000],
        objects in any::<bool>(),
        k in kind(),
        inside in any::<bool>(),
    ) {
        let (open, close) = if objects { ("{\"a\":", "}") } else { ("[", "]") };
        let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        // At the top, or in a field: `task.health_interval` of an event (read through an
        // untagged enum, which buffers what it reads) or an unknown member of anything else.
        let bytes = if inside {
            let mut doc = base(k, 1);
            match k {
                Kind::Event => doc["task"]["health_interval"] = json!("@@nested@@"),
                Kind::Task => doc["health_interval"] = json!("@@nested@@"),
                _ => doc["nested"] = json!("@@nested@@"),
            }
            String::from_utf8(bytes_of(&doc))
                .unwrap()
                .replacen("\"@@nested@@\"", &nested, 1)
                .into_bytes()
        } else {
            nested.into_bytes()
        };
        check_all(&bytes)?;
        if depth > 200 {
            // Nested in a field, the message is refused by its own decoder when that reads the
            // field. Decoders that ignore unknown members (Node, TaskQuery, JournalEntry) skip
            // one without recursion: accepting that is fine.
            let decoders = if !inside {
                KINDS.to_vec()
            } else if matches!(k, Kind::Event | Kind::Task) {
                vec![k]
            } else {
                vec![]
            };
            for kind in decoders {
                let refused = !accepts(kind, &bytes);
                prop_assert!(refused, "{:?} accepted {} levels of nesting", kind, depth);
            }
            prop_assert_eq!(wire::salvage(&bytes), Salvaged::default());
        }
    }
}

/// How a TaskEvent is grown to a chosen size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Growth {
    /// Whitespace after the event: still a valid event.
    Whitespace,
    /// Arguments of up to 4,000 bytes in `task.cmd` (at most 256 are allowed): still valid.
    CmdArgs,
    /// One long `task.name`, `task.image`, `task.health_check` or `task.cmd` argument.
    Name,
    Image,
    HealthCheck,
    LongArg,
    /// Thousands of `task.env` entries.
    EnvEntries,
    /// Thousands of `task.exposed_ports`.
    Ports,
    /// An unknown field holding a long string.
    UnknownField,
}

const GROWTHS: [Growth; 9] = [
    Growth::Whitespace,
    Growth::CmdArgs,
    Growth::Name,
    Growth::Image,
    Growth::HealthCheck,
    Growth::LongArg,
    Growth::EnvEntries,
    Growth::Ports,
    Growth::UnknownField,
];

/// A submission as Cube encodes it (every field, defaults included), or with only the fields
/// the README says are required.
fn event_doc(minimal: bool) -> Value {
    if minimal {
        json!({"id": uuid::Uuid::new_v4(), "state": "running",
               "task": {"id": uuid::Uuid::new_v4(), "image": "busybox"}})
    } else {
        serde_json::from_slice(&wire::encode(&busybox_event())).unwrap()
    }
}

/// `doc` (a TaskEvent) grown by `growth` to about `size` bytes, then padded with whitespace
/// to exactly `size` if it fell short.
fn grow(mut doc: Value, growth: Growth, size: usize) -> Vec<u8> {
    let room = size.saturating_sub(bytes_of(&doc).len());
    let task = &mut doc["task"];
    match growth {
        Growth::Whitespace => {}
        Growth::CmdArgs => task["cmd"] = json!(vec!["x".repeat(3997); room / 4000]),
        Growth::Name => task["name"] = json!("n".repeat(room.saturating_sub(16))),
        Growth::Image => task["image"] = json!("i".repeat(room.saturating_sub(16))),
        Growth::HealthCheck => task["health_check"] = json!("h".repeat(room.saturating_sub(24))),
        Growth::LongArg => task["cmd"] = json!(["a".repeat(room.saturating_sub(16))]),
        // `"K=V",` and `"80",`: 6 and 5 bytes
        Growth::EnvEntries => task["env"] = json!(vec!["K=V"; room / 6]),
        Growth::Ports => task["exposed_ports"] = json!(vec!["80"; room / 5]),
        Growth::UnknownField => task["padding"] = json!("p".repeat(room.saturating_sub(16))),
    }
    let mut bytes = bytes_of(&doc);
    if growth == Growth::CmdArgs {
        // One more argument fills what whole ones left (`"x…x",` is its length + 3 bytes).
        let rest = size.saturating_sub(bytes.len() + 3);
        if rest > 0 {
            let mut args = doc["task"]["cmd"].as_array().cloned().unwrap_or_default();
            args.push(json!("y".repeat(rest.min(4000))));
            doc["task"]["cmd"] = Value::Array(args);
            bytes = bytes_of(&doc);
        }
    }
    if bytes.len() < size {
        bytes.resize(size, b' ');
    }
    bytes
}

proptest! {
    #![proptest_config(config(HUGE_CASES))]

    /// TaskEvents grown to just under, at and just over the 256 KiB limit (and far past it):
    /// over is `TooLarge` whatever the content; well under, a valid event is accepted and an
    /// invalid one refused with the reason.
    #[test]
    fn events_near_the_size_limit(
        growth in prop::sample::select(GROWTHS.to_vec()),
        minimal in any::<bool>(),
        size in prop_oneof![
            4 => (MAX_EVENT_BYTES - 600)..(MAX_EVENT_BYTES + 600),
            1 => 1024usize..(MAX_EVENT_BYTES * 2),
        ],
    ) {
        let doc = event_doc(minimal);
        let base_len = bytes_of(&doc).len();
        let bytes = grow(doc, growth, size);
        let accepted = check_event(&bytes)?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Ok(());
        }
        match growth {
            // Still valid (whitespace is not kept, so it never costs headroom).
            Growth::Whitespace => prop_assert!(
                accepted.is_some(),
                "a valid event of {} bytes refused: {:?}",
                bytes.len(),
                wire::decode_event(&bytes)
            ),
            // Still valid. Near the limit, though, it may be refused for the size of what Cube
            // would make of it: its normalised encoding (every defaulted field written out, so
            // larger than a minimal submission) must leave `PLACEMENT_HEADROOM` free.
            Growth::CmdArgs => {
                let normalised = wire::decode_placement(&bytes).map(|e| wire::encode(&e).len());
                prop_assert!(
                    accepted.is_some()
                        || matches!(normalised, Ok(n) if n + PLACEMENT_HEADROOM > MAX_EVENT_BYTES),
                    "a valid event of {} bytes ({:?} once normalised) refused: {:?}",
                    bytes.len(),
                    normalised,
                    wire::decode_event(&bytes)
                )
            }
            // Grown past what validation allows: the grown field is what `size` leaves beyond
            // the base event, less at most 24 bytes of JSON around it, and no field may be
            // longer than `MAX_ARG_LEN` (lists are past their count well before).
            _ if bytes.len().saturating_sub(base_len) > MAX_ARG_LEN + 24 => prop_assert!(
                accepted.is_none(),
                "{:?}: {} bytes accepted",
                growth,
                bytes.len()
            ),
            _ => {}
        }
    }

    /// The other messages around their 64 KiB limit.
    #[test]
    fn messages_near_the_size_limit(
        k in kind(),
        variant in 0..3usize,
        size in (MAX_MESSAGE_BYTES - 300)..(MAX_MESSAGE_BYTES + 300),
        long_field in any::<bool>(),
    ) {
        let mut doc = base(k, variant);
        if long_field {
            let room = size.saturating_sub(bytes_of(&doc).len() + 16);
            let field = match k {
                Kind::Report => "error",
                Kind::Journal => "message",
                Kind::Node => "version",
                Kind::Query | Kind::Task | Kind::Drain => "name",
                Kind::ListQuery => "state",
                Kind::Event => "id",
            };
            doc[field] = json!("x".repeat(room));
        }
        let mut bytes = bytes_of(&doc);
        bytes.resize(bytes.len().max(size), b' ');
        check(k, &bytes)?;
    }
}

// ---------------------------------------------------------------------------------------------
// What a client sends is what Cube keeps: exactness of the wire format.

proptest! {
    #![proptest_config(config(CASES))]

    /// A message is one JSON document: bytes after it are refused, not ignored.
    #[test]
    fn trailing_bytes_are_refused(
        k in kind(),
        variant in 0..3usize,
        tail in "[ \t\r\n]{0,2}[^ \t\r\n]{1,8}",
    ) {
        let mut bytes = bytes_of(&base(k, variant));
        bytes.extend_from_slice(tail.as_bytes());
        check(k, &bytes)?;
        prop_assert!(!accepts(k, &bytes), "{:?} followed by {:?} was accepted", k, tail);
    }

    /// Health durations as a client may write them (`"1.5s"`, `"100.5ms"`, `2.25`) are read
    /// back as accepted once Cube re-encodes them (into the Task DB, into a placement).
    #[test]
    fn durations_survive_a_round_trip(
        field in prop::sample::select(vec!["health_interval", "health_timeout", "health_grace"]),
        value in prop_oneof![
            (100u64..3_600_000).prop_map(|ms| json!(format!("{ms}ms"))),
            (1u64..60).prop_map(|m| json!(format!("{m}m"))),
            (0.1f64..3600.0).prop_map(|s| json!(format!("{s}s"))),
            (100.0f64..10_000.0).prop_map(|ms| json!(format!("{ms}ms"))),
            (0.1f64..3600.0).prop_map(|s| json!(s)),
        ],
    ) {
        let mut event = base(Kind::Event, 1);
        event["task"][field] = value;
        let bytes = bytes_of(&event);
        prop_assert!(check_event(&bytes)?.is_some(), "refused: {:?}", wire::decode_event(&bytes));
    }

    /// Numbers are read back as accepted once Cube re-encodes them: a task's cpu, a node's
    /// cores and cpu usage.
    #[test]
    fn numbers_survive_a_round_trip(
        cpu in 0.0f64..1024.0,
        cores in any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()),
        usage in 0.0f64..1.0,
    ) {
        let mut event = base(Kind::Event, 1);
        event["task"]["cpu"] = json!(cpu);
        let bytes = bytes_of(&event);
        prop_assert!(check_event(&bytes)?.is_some(), "refused: {:?}", wire::decode_event(&bytes));
        let mut node = base(Kind::Node, 0);
        node["cores"] = json!(cores);
        node["cpu_usage"] = json!(usage);
        check(Kind::Node, &bytes_of(&node))?;
    }
}

proptest! {
    #![proptest_config(config(HUGE_CASES))]

    /// An event accepted just under the limit still fits once Cube re-encodes it, and as the
    /// placement the manager hands to a worker (the task with its worker, generation and
    /// submission time), which the worker reads with `decode_placement`: every TaskEvent Cube
    /// publishes is one it accepts.
    #[test]
    fn accepted_events_still_fit_once_re_encoded(
        size in (MAX_EVENT_BYTES - 1500)..=MAX_EVENT_BYTES,
        minimal in any::<bool>(),
    ) {
        let bytes = grow(event_doc(minimal), Growth::CmdArgs, size);
        // Refusing an event this close to the limit is fine; accepting one that cannot be
        // handed on is not.
        let Some(accepted) = check_event(&bytes)? else {
            return Ok(());
        };
        let mut task = accepted.task;
        task.normalise();
        task.state = State::Scheduled;
        task.worker = Some("w".repeat(64));
        task.generation = 1;
        task.submitted_at = Some(chrono::Utc::now());
        let placement = wire::encode(&TaskEvent::placement(&task));
        let read = wire::decode_placement(&placement);
        prop_assert!(
            read.is_ok(),
            "accepted {} bytes, but its placement ({} bytes) is refused by the worker: {}",
            bytes.len(),
            placement.len(),
            read.unwrap_err()
        );
    }
}
