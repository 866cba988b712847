//! Fuzzing the one message the manager decodes that is defined in the manager itself: the
//! body of `cube.api.tasks.list` ([`TaskListQuery`]), read with `wire::decode` and the
//! 64 KiB limit of every API request. The other message types are fuzzed in
//! `shared/tests/fuzz.rs`.
//!
//! What must hold: decoding never panics; a body over the limit is refused as `TooLarge`
//! (and one under it never is); a state other than the five is refused; whatever is accepted
//! re-encodes to a body that decodes to the same query.

use cube_manager::api::TaskListQuery;
use cube_shared::wire::{self, DecodeError, MAX_MESSAGE_BYTES};
use proptest::prelude::*;
use serde_json::{json, Value};

const STATES: [&str; 5] = ["pending", "scheduled", "running", "completed", "failed"];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn check(bytes: &[u8]) -> Result<Option<TaskListQuery>, TestCaseError> {
    let decoded = wire::decode::<TaskListQuery>(bytes, MAX_MESSAGE_BYTES);
    let too_large = matches!(decoded, Err(DecodeError::TooLarge { size, max })
        if size == bytes.len() && max == MAX_MESSAGE_BYTES);
    prop_assert_eq!(
        too_large,
        bytes.len() > MAX_MESSAGE_BYTES,
        "{} bytes: {:?}",
        bytes.len(),
        decoded
    );
    let Ok(query) = decoded else {
        return Ok(None);
    };
    // No PartialEq on the query: compare what it encodes to.
    let encoded = wire::encode(&query);
    let again = wire::decode::<TaskListQuery>(&encoded, MAX_MESSAGE_BYTES);
    prop_assert!(again.is_ok(), "re-encoded query refused: {:?}", again);
    prop_assert_eq!(wire::encode(&again.unwrap()), encoded);
    Ok(Some(query))
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(STATES.to_vec()).prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        3 => prop::sample::select(vec!["state", "limit"]).prop_map(String::from),
        1 => ".{0,8}",
    ];
    leaf().prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_json(v in json_value()) {
        check(&serde_json::to_vec(&v).unwrap())?;
    }

    /// `{"state": …, "limit": …}` with either field of any JSON value, or left out.
    #[test]
    fn queries(state in proptest::option::of(leaf()), limit in proptest::option::of(leaf())) {
        let mut query = serde_json::Map::new();
        if let Some(s) = &state {
            query.insert("state".into(), s.clone());
        }
        if let Some(l) = &limit {
            query.insert("limit".into(), l.clone());
        }
        let accepted = check(&serde_json::to_vec(&query).unwrap())?;
        if let Some(Value::String(s)) = &state {
            if !STATES.contains(&s.as_str()) {
                prop_assert!(accepted.is_none(), "state {:?} accepted", s);
            }
        }
    }

    /// Bodies around the 64 KiB limit: a long unknown field, or whitespace after a query.
    #[test]
    fn near_the_limit(
        size in (MAX_MESSAGE_BYTES - 200)..(MAX_MESSAGE_BYTES + 200),
        padded in any::<bool>(),
    ) {
        let mut bytes = if padded {
            serde_json::to_vec(&json!({"state": "running", "limit": 5})).unwrap()
        } else {
            serde_json::to_vec(&json!({ "x": "x".repeat(size.saturating_sub(8)) })).unwrap()
        };
        bytes.resize(bytes.len().max(size), b' ');
        let accepted = check(&bytes)?;
        if padded && bytes.len() <= MAX_MESSAGE_BYTES {
            prop_assert!(accepted.is_some());
        }
    }
}
