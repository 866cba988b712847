//! Names on the wire: subjects, streams, buckets and consumers. These are the public contract
//! (see the README); changing one breaks other clients.

use uuid::Uuid;

/// Any client → manager: TaskEvents (submit and stop). Captured by [`EVENTS_STREAM`].
pub const EVENTS: &str = "tasks.events";
/// Manager → any worker: work for whichever worker takes it first.
pub const PENDING: &str = "tasks.pending";
/// Worker → manager: state reports, `tasks.state.<task-id>.<worker>`.
pub const STATE_ALL: &str = "tasks.state.>";
/// Any client → manager: [`ServiceEvent`](crate::ServiceEvent)s (deploy, scale, rollback,
/// promote, remove). Captured by [`SERVICES_STREAM`].
pub const SERVICE_EVENTS: &str = "services.events";
/// Manager → anyone: rejected events (task and service events) and why.
pub const REJECTED: &str = "tasks.rejected";
/// Worker → manager: node stats, `nodes.heartbeat.<worker>`.
pub const HEARTBEAT_ALL: &str = "nodes.heartbeat.*";
/// Manager → anyone: the journal of decisions, `cube.journal.<kind>`.
pub const JOURNAL_ALL: &str = "cube.journal.>";
/// The journal as stored (stream `CUBE_JOURNAL`): a JSON array of the entries the manager
/// published on `cube.journal.<kind>`, in order, at most 256 KiB, stored at most every 20 ms.
pub const JOURNAL_STORED: &str = "cube.journal_batch";
/// Worker → anyone: container output, `tasks.logs.<task-id>`. Captured by [`LOGS_STREAM`].
pub const LOGS_ALL: &str = "tasks.logs.>";

pub const API_TASKS_LIST: &str = "cube.api.tasks.list";
pub const API_TASKS_GET: &str = "cube.api.tasks.get";
pub const API_NODES_LIST: &str = "cube.api.nodes.list";
/// Body: [`DrainRequest`](crate::report::DrainRequest).
pub const API_NODES_DRAIN: &str = "cube.api.nodes.drain";
/// Body: [`ForgetRequest`](crate::report::ForgetRequest).
pub const API_NODES_FORGET: &str = "cube.api.nodes.forget";
pub const API_SERVICES_LIST: &str = "cube.api.services.list";
/// Body: [`ServiceQuery`](crate::service::ServiceQuery).
pub const API_SERVICES_GET: &str = "cube.api.services.get";
/// Body: [`SecretPut`](crate::secret::SecretPut); stores a secret (the leader answers).
pub const API_SECRETS_PUT: &str = "cube.api.secrets.put";
/// Body: [`SecretName`](crate::secret::SecretName); removes a secret.
pub const API_SECRETS_RM: &str = "cube.api.secrets.rm";
/// Answers the [`SecretInfo`](crate::secret::SecretInfo) of every secret, never a value.
pub const API_SECRETS_LIST: &str = "cube.api.secrets.list";
/// Body: [`TokenCreate`](crate::token::TokenCreate); answer:
/// [`TokenCreated`](crate::token::TokenCreated), the only time the token is shown.
pub const API_TOKENS_CREATE: &str = "cube.api.tokens.create";
/// Body: [`TokenRevoke`](crate::token::TokenRevoke); answer: the revoked
/// [`TokenInfo`](crate::token::TokenInfo).
pub const API_TOKENS_REVOKE: &str = "cube.api.tokens.revoke";
/// Answer: every [`TokenInfo`](crate::token::TokenInfo), oldest first.
pub const API_TOKENS_LIST: &str = "cube.api.tokens.list";
/// Any client → every manager, leader and standbys: each answers with a
/// [`ManagerInfo`](crate::report::ManagerInfo). Gather answers for a moment to see them all.
pub const MANAGERS: &str = "cube.managers";

pub const EVENTS_STREAM: &str = "CUBE_EVENTS";
pub const WORK_STREAM: &str = "CUBE_WORK";
/// Service events, kept while the manager is down.
pub const SERVICES_STREAM: &str = "CUBE_SERVICES";
pub const STATE_STREAM: &str = "CUBE_STATE";
pub const JOURNAL_STREAM: &str = "CUBE_JOURNAL";
/// Container output, capped per task (the newest is kept) and overall.
pub const LOGS_STREAM: &str = "CUBE_LOGS";

/// Header of a log message: which output of the container it carries, `stdout` or `stderr`.
pub const LOG_STREAM_HEADER: &str = "Cube-Stream";
/// Header of a log message (informative): the placement generation of the container.
pub const LOG_GENERATION_HEADER: &str = "Cube-Generation";
/// Header of a log message (informative): Docker's time (RFC 3339, nanoseconds) of the last
/// line that ends in the message. A restarted worker resumes after it.
pub const LOG_TIME_HEADER: &str = "Cube-Log-Time";
/// The most bytes of output in one log message. With the stream's per-subject message limit
/// it bounds what is kept per task.
pub const LOG_CHUNK_MAX: usize = 4096;

/// Header of every Task DB write by the manager: the writer's epoch (see [`FENCE_KEY`]).
pub const EPOCH_HEADER: &str = "Cube-Epoch";
/// Key of the Task DB that is not a task: the fence. A manager that wins the lease writes
/// its epoch here (compare-and-set) before it reads anything, and every Task DB write it
/// makes is conditional on this key not having moved since, so a deposed manager's writes
/// are refused by JetStream itself.
pub const FENCE_KEY: &str = "fence";

/// KV bucket: the Task DB, one record per task (keys: [`task_key`]), the services'
/// (`service.<name>`) and the leaders' [`FENCE_KEY`].
pub const TASK_DB: &str = "cube-tasks";
/// The Task DB keeps a task placed on a worker under `on.<worker>.<task-id>`: NATS
/// permissions then let each worker read its own records and no other's.
pub const TASK_ON_WORKER_PREFIX: &str = "on.";
/// The Task DB keeps a task waiting on the shared queue (`tasks.pending`) under
/// `queue.<task-id>`: any worker may take it, so any worker may read it.
pub const TASK_QUEUED_PREFIX: &str = "queue.";
/// KV bucket: worker name → Node (the node list).
pub const NODE_DB: &str = "cube-nodes";
/// KV bucket: service name → [`Endpoints`](crate::Endpoints), its healthy copies' addresses.
/// Any client may watch it.
pub const ENDPOINTS_DB: &str = "cube-endpoints";
/// KV bucket: secret name → value. Only the manager may read or write it.
pub const SECRETS_DB: &str = "cube-secrets";
/// KV bucket: operators' decisions that outlive the manager (`drain.<worker>`).
pub const ADMIN_DB: &str = "cube-admin";

/// KV bucket: token id → [`TokenRecord`](crate::token::TokenRecord), the HTTP API's bearer
/// tokens (hashed). Only the manager role may read it.
pub const TOKENS_DB: &str = "cube-tokens";

/// The manager's durable consumers.
pub const MANAGER_EVENTS_CONSUMER: &str = "manager-events";
pub const MANAGER_STATE_CONSUMER: &str = "manager-state";
pub const MANAGER_SERVICES_CONSUMER: &str = "manager-services";
/// The durable consumer all workers share on [`PENDING`]: the queue group.
pub const SHARED_WORK_CONSUMER: &str = "workers";

/// How many workers one cluster can have: each has its own consumer of the work stream, and
/// a pull request waiting on the shared one.
pub const MAX_WORKERS: usize = 100_000;

/// The subject a KV bucket stores `key` under, `$KV.<bucket>.<key>`: a put is a JetStream
/// publish there (what a client's `put` sends), and the stream's last message on it is the
/// key's value.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Work the scheduler placed on one worker, and stop requests for its tasks.
pub fn pending_for(worker: &str) -> String {
    format!("{PENDING}.{worker}")
}

/// A worker's report about a task: `tasks.state.<task-id>.<worker>`. The worker's name is in
/// the subject so that NATS permissions can bind it: a worker may publish only under its own
/// name, and the manager accepts a report only from the subject of the task's worker.
pub fn state_for(task_id: Uuid, worker: &str) -> String {
    format!("tasks.state.{task_id}.{worker}")
}

pub fn heartbeat_for(worker: &str) -> String {
    format!("nodes.heartbeat.{worker}")
}

pub fn journal_for(kind: &str) -> String {
    format!("cube.journal.{kind}")
}

/// A task's container output as its worker ships it: `tasks.logs.<task-id>.<worker>`, one
/// message per chunk, with the [`LOG_STREAM_HEADER`]. The worker's name is in the subject so
/// that a worker may write, and read back, only its own tasks' output.
pub fn logs_for(task_id: Uuid, worker: &str) -> String {
    format!("tasks.logs.{task_id}.{worker}")
}

/// Every chunk of a task's output, from whichever workers ran it: the subjects a reader
/// filters on (`tasks.logs.<task-id>` is where earlier releases wrote it).
pub fn logs_of(task_id: Uuid) -> Vec<String> {
    vec![
        format!("tasks.logs.{task_id}"),
        format!("tasks.logs.{task_id}.*"),
    ]
}

/// Where in the Task DB a task's record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPlace<'a> {
    /// Placed on this worker: `on.<worker>.<task-id>`.
    Worker(&'a str),
    /// Waiting on the shared queue for any worker: `queue.<task-id>`.
    Queue,
    /// On no worker (not placed yet, or ended before it was): `<task-id>`; no worker may
    /// read it.
    Nowhere,
}

/// The Task DB key of a task's record.
pub fn task_key(task_id: Uuid, place: TaskPlace) -> String {
    match place {
        TaskPlace::Worker(w) => format!("{TASK_ON_WORKER_PREFIX}{w}.{task_id}"),
        TaskPlace::Queue => format!("{TASK_QUEUED_PREFIX}{task_id}"),
        TaskPlace::Nowhere => task_id.to_string(),
    }
}

/// The task whose record a Task DB key holds (`None`: not a task's key, such as the fence
/// or a service's).
pub fn task_of_key(key: &str) -> Option<Uuid> {
    let id = if let Some(rest) = key.strip_prefix(TASK_ON_WORKER_PREFIX) {
        rest.split_once('.')?.1
    } else {
        key.strip_prefix(TASK_QUEUED_PREFIX).unwrap_or(key)
    };
    Uuid::parse_str(id).ok().filter(|u| u.to_string() == id)
}

/// A worker's own durable consumer on `tasks.pending.<worker>`.
pub fn worker_consumer(worker: &str) -> String {
    format!("worker-{worker}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASYNCAPI: &str = include_str!("../../docs/asyncapi.yaml");

    /// The document is YAML (a description holding `: ` must be quoted), and every message a
    /// channel names is one of its components.
    #[test]
    fn the_asyncapi_document_is_yaml_whose_references_resolve() {
        use yaml_rust2::{Yaml, YamlLoader};
        let docs = YamlLoader::load_from_str(ASYNCAPI)
            .unwrap_or_else(|e| panic!("docs/asyncapi.yaml is not YAML: {e}"));
        let doc = &docs[0];
        let messages = doc["components"]["messages"]
            .as_hash()
            .expect("components.messages");
        let channels = doc["channels"].as_hash().expect("channels");
        assert!(channels.len() > 5);
        for (name, channel) in channels {
            // `null`: a dynamic address (the requester's inbox).
            let address = &channel["address"];
            assert!(
                address.as_str().is_some() || address.is_null(),
                "{name:?} has no address"
            );
            for (_, m) in channel["messages"].as_hash().expect("messages") {
                let target = m["$ref"].as_str().expect("a $ref");
                let component = target
                    .strip_prefix("#/components/messages/")
                    .unwrap_or_else(|| panic!("{target}"));
                assert!(
                    messages.contains_key(&Yaml::String(component.to_string())),
                    "{name:?} refers to {target}, which is not there"
                );
            }
        }
    }

    /// `pub const NAME: &str = "value";` in this file: every name on the wire.
    fn constants() -> Vec<(String, String)> {
        include_str!("subjects.rs")
            .lines()
            .filter_map(|line| line.trim().strip_prefix("pub const "))
            .filter_map(|rest| {
                let (name, value) = rest.split_once(": &str = \"")?;
                Some((name.to_string(), value.strip_suffix("\";")?.to_string()))
            })
            .collect()
    }

    #[test]
    fn every_constant_is_in_the_asyncapi_document() {
        let constants = constants();
        assert!(constants.len() >= 20, "read {} constants", constants.len());
        assert!(constants.contains(&("EVENTS".into(), EVENTS.into())));
        for (name, value) in constants {
            assert!(
                ASYNCAPI.contains(&value),
                "docs/asyncapi.yaml does not mention {name} ({value})"
            );
        }
    }

    #[test]
    fn every_subject_pattern_is_a_channel() {
        let task = Uuid::new_v4();
        let as_param = |s: String| s.replace(&task.to_string(), "{taskId}");
        for address in [
            pending_for("{worker}"),
            as_param(state_for(task, "{worker}")),
            heartbeat_for("{worker}"),
            journal_for("{kind}"),
            as_param(logs_for(task, "{worker}")),
            EVENTS.to_string(),
            SERVICE_EVENTS.to_string(),
            API_SERVICES_LIST.to_string(),
            API_SERVICES_GET.to_string(),
            PENDING.to_string(),
            REJECTED.to_string(),
            API_TASKS_LIST.to_string(),
            API_TASKS_GET.to_string(),
            API_NODES_LIST.to_string(),
            API_NODES_DRAIN.to_string(),
            API_NODES_FORGET.to_string(),
            API_SECRETS_PUT.to_string(),
            API_SECRETS_RM.to_string(),
            API_SECRETS_LIST.to_string(),
            API_TOKENS_CREATE.to_string(),
            API_TOKENS_REVOKE.to_string(),
            API_TOKENS_LIST.to_string(),
        ] {
            assert!(
                ASYNCAPI.contains(&format!("address: {address}\n")),
                "docs/asyncapi.yaml has no channel {address}"
            );
        }
        assert!(ASYNCAPI.contains(&worker_consumer("{worker}")));
    }

    #[test]
    fn task_keys_name_the_worker_and_give_the_task_back() {
        let id = Uuid::new_v4();
        assert_eq!(task_key(id, TaskPlace::Worker("w1")), format!("on.w1.{id}"));
        assert_eq!(task_key(id, TaskPlace::Queue), format!("queue.{id}"));
        assert_eq!(task_key(id, TaskPlace::Nowhere), id.to_string());
        for place in [
            TaskPlace::Worker("w-1_x"),
            TaskPlace::Queue,
            TaskPlace::Nowhere,
        ] {
            assert_eq!(task_of_key(&task_key(id, place)), Some(id), "{place:?}");
        }
        for other in [FENCE_KEY, "service.web", "on.w1", "on.w1.nope", "on..x"] {
            assert_eq!(task_of_key(other), None, "{other}");
        }
        // A service named like a task id is not a task (its key has the service prefix).
        assert_eq!(task_of_key(&format!("service.{id}")), None);
    }

    #[test]
    fn every_schema_it_refers_to_is_shipped() {
        let refs: Vec<&str> = ASYNCAPI
            .split("'./schema/")
            .skip(1)
            .filter_map(|rest| rest.split_once(".json'").map(|(name, _)| name))
            .collect();
        for (name, _) in crate::schema::NAMES {
            assert!(
                refs.contains(&name),
                "docs/asyncapi.yaml does not use {name}"
            );
        }
        for name in refs {
            assert!(
                crate::schema::schema(name).is_some(),
                "docs/asyncapi.yaml refers to schema/{name}.json, which `cube schema` does not make"
            );
        }
    }
}
