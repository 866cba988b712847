//! The fuzz targets: every decoder on random, mutated, truncated, nested and oversized input.

use super::generators::*;
use super::*;

pub(crate) fn kind_and_mutated() -> impl Strategy<Value = (Kind, Value, Vec<Mutation>)> {
    kind().prop_flat_map(|k| mutated(k).prop_map(move |(doc, ms)| (k, doc, ms)))
}

pub(crate) const STATES: [&str; 5] = ["pending", "scheduled", "running", "completed", "failed"];

/// Whether a decoder refused a message for what it found at the JSON path `at`.
pub(crate) fn refused_at<T>(result: &Result<T, DecodeError>, at: &str) -> bool {
    matches!(result, Err(DecodeError::Json { path, .. }) if path == at)
}

pub(crate) fn not_a_state() -> impl Strategy<Value = String> {
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
