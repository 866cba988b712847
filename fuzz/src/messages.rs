//! Messages read with `wire::decode` alone: state reports (`tasks.state.<id>.<worker>`),
//! heartbeats (`nodes.heartbeat.<worker>`) and the request bodies of `cube.api.*`.

use cube_shared::service::{validate_service_name, ServiceQuery};
use cube_shared::subjects;
use cube_shared::validate::validate_worker_name;
use cube_shared::wire::MAX_MESSAGE_BYTES;
use cube_shared::{DrainRequest, ForgetRequest, Node, StateReport, TaskListQuery, TaskQuery};

use crate::message;

/// A worker's state report, as the manager reads it.
pub fn state_report(bytes: &[u8]) {
    if let Some(report) = message::<StateReport>(bytes, MAX_MESSAGE_BYTES) {
        // The manager compares the subject it came on with the one it names.
        let subject = subjects::state_for(report.task_id, &report.worker);
        assert!(subject.starts_with("tasks.state."), "{subject}");
    }
}

/// A worker's heartbeat (its node, capacity and usage, one page of what it runs), as the
/// manager reads it.
pub fn heartbeat(bytes: &[u8]) {
    if let Some(node) = message::<Node>(bytes, MAX_MESSAGE_BYTES) {
        // The manager keeps only nodes whose name can be a subject token.
        if validate_worker_name(&node.name).is_ok() {
            assert_eq!(
                subjects::heartbeat_for(&node.name).rsplit('.').next(),
                Some(node.name.as_str()),
                "a valid worker name is one subject token"
            );
        }
    }
}

/// The bodies of the manager's API requests (`cube.api.tasks.get`, `.tasks.list`,
/// `.nodes.drain`, `.nodes.forget`, `.services.get`): the same bytes are read as each.
pub fn api_request(bytes: &[u8]) {
    message::<TaskQuery>(bytes, MAX_MESSAGE_BYTES);
    message::<TaskListQuery>(bytes, MAX_MESSAGE_BYTES);
    if let Some(r) = message::<DrainRequest>(bytes, MAX_MESSAGE_BYTES) {
        let _ = validate_worker_name(&r.name);
    }
    if let Some(r) = message::<ForgetRequest>(bytes, MAX_MESSAGE_BYTES) {
        let _ = validate_worker_name(&r.name);
    }
    if let Some(q) = message::<ServiceQuery>(bytes, MAX_MESSAGE_BYTES) {
        let _ = validate_service_name(&q.name);
    }
}
