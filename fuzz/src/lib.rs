//! What the coverage-guided fuzz targets (`fuzz_targets/`) check: each target hands its input
//! to one function here, which calls the decoder Cube calls on that input and panics if a
//! property that must hold for every input does not:
//!
//! - decoding never panics;
//! - input over its size limit is refused as `TooLarge`, naming its size and the limit, and
//!   input under the limit never is;
//! - whatever is accepted is valid (the `validate` functions agree with the decoder);
//! - whatever is accepted re-encodes to bytes that decode to an equal value
//!   (`decode(encode(x)) == x`), through the decoder that reads the re-encoding in Cube;
//! - decoders that read the same message agree (a placement is also work; an HTTP
//!   submission is the event the manager would accept).
//!
//! The same functions check the seed corpus (`examples/seeds.rs`), so every seed is known to
//! be accepted.
//!
//! The corpus (`corpus/<target>/`) is the seeds plus what runs of a few minutes found, cut
//! down to one input per covered edge; to grow it after a longer run into `NEW/`:
//! `target/x86_64-unknown-linux-gnu/release/TARGET -set_cover_merge=1 -use_counters=0
//! corpus/TARGET NEW` (only inputs that add coverage are copied in).

#![forbid(unsafe_code)]

use std::fmt::Debug;

use cube_shared::wire::{self, DecodeError};
use serde::de::DeserializeOwned;
use serde::Serialize;

mod events;
mod http;
mod messages;
mod services;

pub use events::task_event;
pub use http::{http_deploy, http_submit};
pub use messages::{api_request, heartbeat, state_report};
pub use services::service_event;

/// Whether `result` is the refusal an input of `size` bytes over `max` must get.
fn too_large<T>(result: &Result<T, DecodeError>, size: usize, max: usize) -> bool {
    matches!(result, Err(DecodeError::TooLarge { size: s, max: m }) if *s == size && *m == max)
}

/// Checks the size rule on what a decoder made of `bytes` with limit `max`: returns the
/// accepted value, if any, for the caller's further checks.
fn within_limit<'a, T: Debug>(
    what: &str,
    bytes: &[u8],
    max: usize,
    result: &'a Result<T, DecodeError>,
) -> Option<&'a T> {
    if bytes.len() > max {
        assert!(
            too_large(result, bytes.len(), max),
            "{what}: {} bytes over the limit of {max} not refused as too large: {result:?}",
            bytes.len()
        );
        return None;
    }
    match result {
        Err(DecodeError::TooLarge { .. }) => panic!(
            "{what}: {} bytes, under the limit of {max}, refused as too large",
            bytes.len()
        ),
        Err(e) => {
            assert!(
                !e.to_string().is_empty(),
                "{what}: a refusal without a reason"
            );
            None
        }
        Ok(value) => Some(value),
    }
}

/// `decode(encode(value)) == value`, for a message read with `wire::decode`.
fn round_trip<T>(what: &str, value: &T)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let encoded = wire::encode(value);
    match wire::decode::<T>(&encoded, usize::MAX) {
        Ok(again) => assert_eq!(&again, value, "{what}: not equal after a round trip"),
        Err(e) => panic!(
            "{what}: accepted, but its re-encoding is refused: {e}\n{}",
            String::from_utf8_lossy(&encoded)
        ),
    }
}

/// Decodes `bytes` as a message of type `T` with limit `max`, as `wire::decode` callers do,
/// and checks the size rule and the round trip. Returns the accepted message.
fn message<T>(bytes: &[u8], max: usize) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let what = std::any::type_name::<T>();
    let result = wire::decode::<T>(bytes, max);
    let value = within_limit(what, bytes, max, &result)?;
    round_trip(what, value);
    result.ok()
}
