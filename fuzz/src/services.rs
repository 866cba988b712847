//! Service events on `services.events` (deploy, scale, rollback, promote, remove), as the
//! manager reads them with `decode_service_event`.

use cube_shared::service::{decode_service_event, validate_service_event, validate_spec};
use cube_shared::wire::MAX_EVENT_BYTES;
use cube_shared::{ServiceAction, ServiceEvent};

use crate::{round_trip, within_limit};

/// Checks `decode_service_event` on `bytes`.
pub fn service_event(bytes: &[u8]) {
    let result = decode_service_event(bytes);
    if let Some(event) = within_limit("decode_service_event", bytes, MAX_EVENT_BYTES, &result) {
        accepted("decode_service_event", event);
        // The manager records what it accepted (the Task DB's `service.<name>` holds the
        // spec's template), and reads it back with `wire::decode`.
        round_trip("decode_service_event", event);
    }
}

/// What is accepted as a service event is valid, and carries what its action needs.
pub(crate) fn accepted(what: &str, event: &ServiceEvent) {
    if let Err(e) = validate_service_event(event) {
        panic!("{what}: accepted a service event that is not valid: {e}");
    }
    match event.action {
        ServiceAction::Deploy => {
            let spec = event
                .spec
                .as_ref()
                .expect("a deploy was accepted without a spec");
            assert_eq!(spec.name, event.name, "{what}: a deploy of another service");
            if let Err(e) = validate_spec(spec) {
                panic!("{what}: accepted a spec that is not valid: {e}");
            }
        }
        ServiceAction::Scale => assert!(event.count.is_some(), "{what}: a scale without count"),
        ServiceAction::Rollback | ServiceAction::Promote | ServiceAction::Remove => {}
    }
}
