//! Two rules about submissions that every client path applies the same way (`cube submit -f`,
//! `POST /api/tasks`, the manager's intake): a task written by hand may leave its id to Cube,
//! and an id already recorded may only be submitted again with the same specification.

use serde_json::Value;
use uuid::Uuid;

use crate::wire::{self, DecodeError, MAX_EVENT_BYTES};
use crate::Task;

/// Reads a task as a client writes it for submission (a task file, the body of
/// `POST /api/tasks`): a JSON object whose `id` may be left out, in which case it gets a new
/// one. Everything else is read exactly as `wire::decode` reads a Task, within
/// [`MAX_EVENT_BYTES`].
pub fn task_with_optional_id(mut value: Value) -> Result<Task, DecodeError> {
    if let Some(object) = value.as_object_mut() {
        object
            .entry("id")
            .or_insert_with(|| Uuid::new_v4().to_string().into());
    }
    let bytes = serde_json::to_vec(&value).expect("JSON values serialise");
    wire::decode(&bytes, MAX_EVENT_BYTES)
}

/// A submission reuses the id of a task recorded with another specification. Cube refuses
/// it rather than replace the task: a retried submission must not change what runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("task {id} already exists with a different specification; use a new id")]
pub struct SpecConflict {
    pub id: Uuid,
}

/// Whether `submitted` may be submitted again while `existing` is recorded under its id: yes
/// if both ask for the same thing once normalised (`80` is `80/tcp`, bound ports are exposed),
/// whatever their status. A repeated submission then changes nothing.
pub fn check_resubmission(existing: &Task, submitted: &Task) -> Result<(), SpecConflict> {
    let mut submitted = submitted.clone();
    submitted.normalise();
    if existing.same_spec(&submitted) {
        Ok(())
    } else {
        Err(SpecConflict { id: existing.id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::State;
    use serde_json::json;

    #[test]
    fn a_task_without_an_id_gets_a_new_one() {
        let a = task_with_optional_id(json!({"image": "busybox"})).unwrap();
        let b = task_with_optional_id(json!({"image": "busybox"})).unwrap();
        assert_ne!(a.id, b.id);
        let id = Uuid::new_v4();
        let given = task_with_optional_id(json!({"id": id, "image": "busybox"})).unwrap();
        assert_eq!(given.id, id);
        // Anything else is read as strictly as ever.
        let err = task_with_optional_id(json!({"image": "busybox", "colour": "red"}));
        assert!(err.unwrap_err().to_string().contains("colour"));
        assert!(task_with_optional_id(json!([1])).is_err());
    }

    #[test]
    fn only_another_specification_conflicts() {
        let mut existing = Task::new("busybox");
        existing.exposed_ports = vec!["80/tcp".into()];
        existing.normalise();
        // What Cube recorded about it since does not matter.
        existing.state = State::Running;
        existing.worker = Some("w1".into());
        let mut same = existing.clone();
        same.state = State::Pending;
        same.worker = None;
        same.exposed_ports = vec!["80".into()];
        assert_eq!(check_resubmission(&existing, &same), Ok(()));
        let mut other = same.clone();
        other.cmd = vec!["sleep".into(), "1".into()];
        let conflict = check_resubmission(&existing, &other).unwrap_err();
        assert_eq!(conflict.id, existing.id);
        assert!(conflict.to_string().contains("different specification"));
    }
}
