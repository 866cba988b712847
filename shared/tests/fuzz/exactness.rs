//! What a client sends is what Cube keeps: exactness of the wire format.

use super::generators::*;
use super::*;

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
