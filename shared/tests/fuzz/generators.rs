//! Generators: random JSON that looks like Cube's messages, and mutations of valid ones.

use super::*;

/// Field names of Cube's messages, so that random objects often look like the real thing.
pub(crate) const FIELDS: &[&str] = &[
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
pub(crate) fn interesting_string() -> impl Strategy<Value = String> {
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

pub(crate) fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(String::from),
        1 => ".{0,12}",
    ]
}

pub(crate) fn number() -> impl Strategy<Value = Value> {
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
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
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
pub(crate) enum Seg {
    Key(String),
    At(usize),
}

/// The paths to every value in `v` (the root is the empty path).
pub(crate) fn paths(v: &Value) -> Vec<Vec<Seg>> {
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

pub(crate) fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::At(i) => v.get_mut(*i),
    })
}

/// A change to a valid message.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
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

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        3 => any::<Index>().prop_map(Mutation::Delete),
        2 => (any::<Index>(), key(), json_value()).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
        1 => (any::<Index>(), 0usize..70_000).prop_map(|(i, n)| Mutation::LongString(i, n)),
        1 => (any::<Index>(), 0usize..12_000).prop_map(|(i, n)| Mutation::LongList(i, n)),
    ]
}

pub(crate) fn apply(doc: &mut Value, m: &Mutation) {
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
pub(crate) fn mutated(kind: Kind) -> impl Strategy<Value = (Value, Vec<Mutation>)> {
    (0..3usize, prop::collection::vec(mutation(), 1..5)).prop_map(move |(variant, ms)| {
        let mut doc = base(kind, variant);
        for m in &ms {
            apply(&mut doc, m);
        }
        (doc, ms)
    })
}

pub(crate) fn bytes_of(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}

/// How a TaskEvent is grown to a chosen size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Growth {
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

pub(crate) const GROWTHS: [Growth; 9] = [
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
pub(crate) fn event_doc(minimal: bool) -> Value {
    if minimal {
        json!({"id": uuid::Uuid::new_v4(), "state": "running",
               "task": {"id": uuid::Uuid::new_v4(), "image": "busybox"}})
    } else {
        serde_json::from_slice(&wire::encode(&busybox_event())).unwrap()
    }
}

/// `doc` (a TaskEvent) grown by `growth` to about `size` bytes, then padded with whitespace
/// to exactly `size` if it fell short.
pub(crate) fn grow(mut doc: Value, growth: Growth, size: usize) -> Vec<u8> {
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
