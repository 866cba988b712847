//! What the manager stores, and where: the picture a starting manager reads back from the
//! Task DB, and the writes a batch of decisions turns into.
//!
//! A task's record is kept under its worker's key (`on.<worker>.<task-id>`, see
//! [`task_key`]), so that NATS permissions can let each worker read its own records and no
//! other's; a task waiting on the shared queue under `queue.<task-id>`, which every worker
//! may read; any other under its id, which no worker may. A record therefore moves when its task does (placed on another worker, or on none):
//! the new key is written first and the old one deleted after it, in the same batch. A
//! manager that dies in between leaves two records of one task; the next reads both in
//! stream order, keeps the later and deletes the other ([`TaskKeys::settle`]).

use std::collections::HashMap;

use async_nats::HeaderMap;
use cube_bus::{Outgoing, KV_DELETE, KV_OPERATION};
use cube_shared::secret::SecretValues;
use cube_shared::service::{service_key, SERVICE_KEY_PREFIX};
use cube_shared::subjects::*;
use cube_shared::wire::{self, encode, MAX_MESSAGE_BYTES};
use cube_shared::{Node, Service, State, Task};
use tracing::warn;
use uuid::Uuid;

use crate::rules::{Decided, Stored};
use crate::topology::{self, Topology};
use crate::writer::Commit;
use crate::Error;

fn kv(bucket: &str, key: &str, payload: bytes::Bytes) -> Outgoing {
    Outgoing {
        subject: kv_subject(bucket, key),
        payload,
        msg_id: None,
        headers: None,
    }
}

/// A deletion of `key` from the Task DB. Its marker expires after
/// [`topology::limits::DELETION_TTL`], so that markers do not pile up with every task ever
/// run: a reader then finds no key, as it would a deleted one.
fn delete(key: &str) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(KV_OPERATION, KV_DELETE);
    let ttl = topology::limits::DELETION_TTL.as_secs();
    headers.insert(
        async_nats::header::NATS_MESSAGE_TTL,
        format!("{ttl}s").as_str(),
    );
    Outgoing {
        headers: Some(headers),
        ..kv(TASK_DB, key, bytes::Bytes::new())
    }
}

/// Whether `record` deletes its key.
pub(crate) fn is_deletion(record: &Outgoing) -> bool {
    record
        .headers
        .as_ref()
        .and_then(|h| h.get(KV_OPERATION))
        .is_some_and(|v| v.as_str() == KV_DELETE)
}

/// Where `task`'s record belongs: under its worker; on the shared queue while it waits there
/// for any worker (placed, on no worker); elsewhere under its id, out of every worker's reach.
fn place(task: &Task) -> TaskPlace<'_> {
    match (&task.worker, task.state) {
        (Some(w), _) => TaskPlace::Worker(w),
        (None, State::Scheduled) => TaskPlace::Queue,
        (None, _) => TaskPlace::Nowhere,
    }
}

/// Where each task's record is stored in the Task DB.
#[derive(Debug, Default)]
pub(crate) struct TaskKeys {
    at: HashMap<Uuid, String>,
}

impl TaskKeys {
    /// The task records of the Task DB, as read in stream order (oldest first): one task per
    /// id (the latest record), where each is kept, and the writes that put every record where
    /// it belongs: a second record of a task (left by a manager that died between writing a
    /// moved record and deleting the old one) is deleted, and a record under another key than
    /// its task's (an earlier release kept every task under its id) is moved.
    pub(crate) fn settle(loaded: Vec<(String, Task)>) -> (Vec<Task>, TaskKeys, Vec<Outgoing>) {
        let mut latest: HashMap<Uuid, (String, Task)> = HashMap::new();
        let mut writes = Vec::new();
        let mut order = Vec::new();
        for (key, task) in loaded {
            let id = task.id;
            match latest.insert(id, (key, task)) {
                Some((older, _)) => writes.push(delete(&older)),
                None => order.push(id),
            }
        }
        let mut keys = TaskKeys::default();
        let mut tasks = Vec::with_capacity(order.len());
        let mut moved = Vec::new();
        for id in order {
            let (key, task) = latest.remove(&id).expect("every id in order was inserted");
            keys.at.insert(id, key);
            let (put, old) = keys.store(&task);
            if let Some(old) = old {
                moved.push(put);
                moved.push(old);
            }
            tasks.push(task);
        }
        // Every put before any deletion: a record is never gone before its successor is in.
        writes.splice(0..0, moved);
        writes.sort_by_key(is_deletion);
        (tasks, keys, writes)
    }

    /// The writes that store `task`: its record under its key, then the deletion of the key
    /// it was stored under before, if that was another.
    pub(crate) fn store(&mut self, task: &Task) -> (Outgoing, Option<Outgoing>) {
        let key = task_key(task.id, place(task));
        let put = kv(TASK_DB, &key, encode(task));
        let old = self.at.insert(task.id, key.clone());
        (put, old.filter(|o| *o != key).map(|o| delete(&o)))
    }

    /// The deletion of a forgotten task's record, if it was stored.
    pub(crate) fn forget(&mut self, id: &Uuid) -> Option<Outgoing> {
        self.at.remove(id).map(|key| delete(&key))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }
}

/// What a starting manager rebuilds its picture from: the Task DB, the node list and the
/// drains in the `cube-admin` bucket; with where each task's record is, and the writes that
/// settle the Task DB (see [`TaskKeys::settle`]).
pub(crate) async fn load(topo: &Topology) -> Result<(Stored, TaskKeys, Vec<Outgoing>), Error> {
    let mut stored = Stored::default();
    let mut tasks = Vec::new();
    for (key, value) in topology::load_all(&topo.tasks).await? {
        if key == FENCE_KEY {
            continue;
        }
        if let Some(name) = key.strip_prefix(SERVICE_KEY_PREFIX) {
            match wire::decode::<Service>(&value, usize::MAX) {
                Ok(service) => stored.services.push(service),
                Err(e) => warn!(service = name, error = %e, "skipping unreadable service record"),
            }
            continue;
        }
        match wire::decode_stored_task(&value) {
            Ok(task) if task_of_key(&key) == Some(task.id) => tasks.push((key, task)),
            Ok(task) => {
                warn!(key, task.id = %task.id, "skipping a task record under another task's key")
            }
            Err(e) => warn!(key, error = %e, "skipping unreadable task record"),
        }
    }
    let (tasks, keys, settle) = TaskKeys::settle(tasks);
    stored.tasks = tasks;
    for (key, _) in topology::load_all(&topo.admin).await? {
        if let Some(name) = key.strip_prefix("drain.") {
            stored.drained.push(name.to_string());
        }
    }
    for (key, value) in topology::load_all(&topo.nodes).await? {
        match wire::decode::<Node>(&value, MAX_MESSAGE_BYTES) {
            Ok(node) => stored.nodes.push(node),
            Err(e) => warn!(key, error = %e, "skipping unreadable node record"),
        }
    }
    Ok((stored, keys, settle))
}

/// The writer's messages for what the rules decided, as the leader of `epoch` sends them.
pub(crate) fn commit(
    decided: Decided,
    handled: Vec<async_nats::jetstream::Message>,
    epoch: u64,
    secrets: &dyn Fn(&Task) -> SecretValues,
    keys: &mut TaskKeys,
) -> Commit {
    let mut records: Vec<Outgoing> = Vec::new();
    let mut deletions = Vec::new();
    for task in &decided.tasks {
        let (put, old) = keys.store(task);
        records.push(put);
        deletions.extend(old);
    }
    records.extend(deletions);
    let forgets = decided
        .forgotten
        .iter()
        .map(|id| (*id, keys.forget(id)))
        .collect();
    records.extend(
        decided
            .services
            .iter()
            .map(|s| kv(TASK_DB, &service_key(&s.name), encode(s))),
    );
    // Discovery follows what was stored; it is not fenced (a deposed leader's gate is shut
    // before it gets here, and the next leader writes every service's endpoints at once).
    records.extend(
        decided
            .endpoints
            .iter()
            .map(|e| kv(ENDPOINTS_DB, &e.service, encode(e))),
    );
    // Work carries the epoch; its message id too, so that a placement a new leader sends
    // again is not dropped as a duplicate of its predecessor's (a worker refuses the older).
    let work = decided
        .work
        .into_iter()
        .map(|mut w| {
            w.event.epoch = Some(epoch);
            if !w.event.is_stop() {
                w.event.secrets = secrets(&w.event.task);
            }
            Outgoing {
                subject: w.subject,
                payload: encode(&w.event),
                msg_id: Some(format!("{}.{epoch}", w.event.id)),
                headers: None,
            }
        })
        .collect();
    let mut notices: Vec<(String, bytes::Bytes)> = decided
        .journal
        .iter()
        .map(|e| (journal_for(&e.kind), encode(e)))
        .collect();
    notices.extend(
        decided
            .rejections
            .iter()
            .map(|r| (REJECTED.to_string(), encode(r))),
    );
    Commit {
        records,
        work,
        notices,
        placed: decided.placed,
        handled,
        forgets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_on(id: Uuid, worker: Option<&str>, generation: u64) -> Task {
        let mut t = Task::new("img:1");
        t.id = id;
        t.worker = worker.map(str::to_string);
        t.generation = generation;
        t.state = if worker.is_some() {
            State::Running
        } else {
            State::Pending
        };
        t
    }

    fn subjects(writes: &[Outgoing]) -> Vec<(String, bool)> {
        writes
            .iter()
            .map(|w| {
                let key = w.subject.strip_prefix("$KV.cube-tasks.").unwrap();
                (key.to_string(), is_deletion(w))
            })
            .collect()
    }

    #[test]
    fn a_moved_record_is_written_under_its_new_key_before_the_old_is_deleted() {
        let mut keys = TaskKeys::default();
        let id = Uuid::new_v4();
        let (put, old) = keys.store(&task_on(id, None, 0));
        assert_eq!(put.subject, format!("$KV.cube-tasks.{id}"));
        assert!(old.is_none(), "a new task has nothing to delete");
        let (put, old) = keys.store(&task_on(id, Some("w1"), 1));
        assert_eq!(put.subject, format!("$KV.cube-tasks.on.w1.{id}"));
        assert_eq!(subjects(&[old.unwrap()]), vec![(id.to_string(), true)]);
        let (_, old) = keys.store(&task_on(id, Some("w1"), 1));
        assert!(old.is_none(), "written again under the same key");
        let (_, old) = keys.store(&task_on(id, Some("w2"), 2));
        assert_eq!(
            subjects(&[old.unwrap()]),
            vec![(format!("on.w1.{id}"), true)]
        );
        // Lost with its worker, placed on the shared queue, taken by w3.
        let (put, old) = keys.store(&task_on(id, None, 2));
        assert_eq!(put.subject, format!("$KV.cube-tasks.{id}"));
        assert_eq!(
            subjects(&[old.unwrap()]),
            vec![(format!("on.w2.{id}"), true)]
        );
        let mut queued = task_on(id, None, 3);
        queued.state = State::Scheduled;
        let (put, _) = keys.store(&queued);
        assert_eq!(put.subject, format!("$KV.cube-tasks.queue.{id}"));
        let (_, old) = keys.store(&task_on(id, Some("w3"), 3));
        assert_eq!(
            subjects(&[old.unwrap()]),
            vec![(format!("queue.{id}"), true)]
        );
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn a_batch_puts_every_record_before_it_deletes_any() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut keys = TaskKeys::default();
        keys.store(&task_on(a, Some("w1"), 1));
        keys.store(&task_on(b, Some("w1"), 1));
        let decided = Decided {
            tasks: vec![task_on(a, Some("w2"), 2), task_on(b, None, 1)],
            ..Default::default()
        };
        let commit = commit(
            decided,
            Vec::new(),
            1,
            &|_| SecretValues::default(),
            &mut keys,
        );
        assert_eq!(
            subjects(&commit.records),
            vec![
                (format!("on.w2.{a}"), false),
                (b.to_string(), false),
                (format!("on.w1.{a}"), true),
                (format!("on.w1.{b}"), true),
            ]
        );
    }

    #[test]
    fn settling_keeps_the_latest_record_of_a_task_and_moves_old_layout_records() {
        let (moved, legacy, settled) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let loaded = vec![
            // A manager died between writing the moved record and deleting the old one.
            (format!("on.w1.{moved}"), task_on(moved, Some("w1"), 1)),
            (legacy.to_string(), task_on(legacy, Some("w1"), 3)),
            (format!("on.w2.{settled}"), task_on(settled, Some("w2"), 1)),
            (format!("on.w2.{moved}"), task_on(moved, Some("w2"), 2)),
        ];
        let (tasks, mut keys, writes) = TaskKeys::settle(loaded);
        assert_eq!(tasks.len(), 3);
        let of = |id: Uuid| tasks.iter().find(|t| t.id == id).unwrap();
        assert_eq!(of(moved).generation, 2);
        assert_eq!(
            subjects(&writes),
            vec![
                (format!("on.w1.{legacy}"), false),
                (legacy.to_string(), true),
                (format!("on.w1.{moved}"), true),
            ]
        );
        // Where each is kept now: no further move for an unchanged task.
        for t in &tasks {
            assert!(keys.store(t).1.is_none(), "{}", t.id);
        }
    }
}
