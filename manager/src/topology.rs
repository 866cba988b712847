//! The JetStream streams and KV buckets Cube lives in. The manager owns them: it creates
//! them on start (idempotently) and every other process waits until they exist.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use cube_shared::subjects::*;
use cube_shared::wire::MAX_EVENT_BYTES;

use crate::Error;

/// Handles on everything the manager reads and writes.
#[derive(Clone)]
pub struct Topology {
    pub js: jetstream::Context,
    pub tasks: kv::Store,
    pub nodes: kv::Store,
    pub admin: kv::Store,
    pub endpoints: kv::Store,
    /// Secrets' values: only the manager may read it.
    pub secrets: kv::Store,
    pub tokens: kv::Store,
}

pub use cube_shared::subjects::MAX_WORKERS;

/// How long `CUBE_WORK` keeps a placement nobody acknowledged, and how many bytes of them at
/// most (the oldest go first). Longer than a placement can matter: one nobody took up is made
/// again after the schedule timeout (60 s), a node silent for `lost_after` (10 min) has its
/// tasks failed, and a copy a returning node still runs is fenced by its heartbeat.
pub const WORK_MAX_AGE: Duration = Duration::from_secs(3600);
/// 512 MiB: about half a million placements, minutes of work at full speed (a placement
/// dropped before it was taken is made again after the schedule timeout). Every stream's byte
/// limit is reserved against the server's `max_file_store`, which the sum must fit.
pub const WORK_MAX_BYTES: i64 = 512 << 20;

/// The work stream: placements and stops, one subject per worker (`tasks.pending.<worker>`)
/// and the shared queue (`tasks.pending`). A work queue: a message is removed once its worker
/// acknowledges it. That costs nats-server a look at every consumer per acknowledgement (is
/// another still interested?), O(workers), and limits retention would avoid it; but a
/// placement carries the values of its task's secrets (`run::commit`), which must not stay
/// stored once the worker has them (`tests/tests/secrets.rs` searches every stream for them).
/// Consumers' filters (`tasks.pending` and `tasks.pending.<worker>`) never overlap.
pub fn work_stream() -> stream::Config {
    stream::Config {
        retention: stream::RetentionPolicy::WorkQueue,
        max_age: WORK_MAX_AGE,
        max_bytes: WORK_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        // One consumer per worker: nats-server 2.15 caps a stream at 1,000 consumers unless
        // it sets its own limit (and "unlimited" is not expressible).
        max_consumers: MAX_WORKERS as i32,
        ..file_stream(WORK_STREAM, &[PENDING, "tasks.pending.*"])
    }
}

/// How long JetStream remembers a `Nats-Msg-Id` to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

fn file_stream(name: &str, subjects: &[&str]) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// Bounded state: every stream and bucket has limits (see the README, "Bounded state").
///
/// nats-server reserves a file stream's `max_bytes` against its `max_file_store` (a stream
/// whose limit does not fit is refused), so the byte limits add up to about 3 GiB with
/// `CUBE_LOGS`: they fit the shipped 10 GB store with room for the work stream, and the
/// 4 GB of the test clusters.
pub mod limits {
    use std::time::Duration;

    /// Submissions waiting for the manager (handled ones are purged, see
    /// [`crate::upkeep`]): a full stream refuses new ones, so the client hears it.
    pub const EVENTS_MAX_BYTES: i64 = 256 << 20;
    pub const EVENTS_MAX_MSGS: i64 = 1_000_000;
    /// Service events waiting for the manager, likewise.
    pub const SERVICES_MAX_BYTES: i64 = 32 << 20;
    pub const SERVICES_MAX_MSGS: i64 = 100_000;
    /// Workers' reports: the last of each task's copy on each worker (its status), kept
    /// until the task is forgotten. Live and kept ended tasks (`--max-tasks`,
    /// `--keep-ended-max`: 150,000 by default, at about 300 B a report) take a fraction of
    /// it. A full stream holds a worker's report back (it tries again) rather than drop one.
    pub const STATE_MAX_BYTES: i64 = 256 << 20;
    pub const STATE_MAX_MSGS: i64 = 2_000_000;
    /// How long a message waits for a manager, at most.
    pub const INPUT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The journal: the oldest entries go first.
    pub const JOURNAL_MAX_BYTES: i64 = 256 << 20;
    pub const JOURNAL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The Task DB: live tasks (`--max-tasks`), ended ones (`--keep-ended-max`), services
    /// and deletion markers. Submissions are refused before it is full
    /// ([`crate::rules::limits::TASK_DB_FULL_PERCENT`]).
    pub const TASK_DB_MAX_BYTES: i64 = 1 << 30;
    /// How long a Task DB deletion marker stays (a per-message TTL), so that markers do not
    /// pile up with every task ever run: at most this long times the rate of deletions (one
    /// per task forgotten, one per record moved). Nothing needs it longer: a reader that
    /// finds no key (the worker's direct get, a starting manager's load) takes it as
    /// deleted, and live watchers (the dashboard) see the marker as it is written.
    pub const DELETION_TTL: Duration = Duration::from_secs(60);
    pub const NODE_DB_MAX_BYTES: i64 = 256 << 20;
    pub const ADMIN_DB_MAX_BYTES: i64 = 8 << 20;
    pub const ENDPOINTS_DB_MAX_BYTES: i64 = 32 << 20;
    pub const SECRETS_DB_MAX_BYTES: i64 = 32 << 20;
    pub const TOKENS_DB_MAX_BYTES: i64 = 8 << 20;
}

pub use limits::TASK_DB_MAX_BYTES;

/// A KV bucket: one value per key, at most `max_bytes` in all (a put beyond is refused).
fn bucket(name: &str, description: &str, max_bytes: i64) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        max_bytes,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The stream behind bucket `config`, as async-nats makes it, and with per-message TTLs
/// allowed if `ttl`: the Task DB's deletions expire ([`limits::DELETION_TTL`]). Made here
/// because async-nats allows TTLs only with server-made delete markers as well, and a
/// bucket's TTLs, once allowed, cannot be disallowed by a later update.
fn bucket_stream(config: &kv::Config, replicas: usize, ttl: bool) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", config.bucket),
        description: Some(config.description.clone()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history,
        max_bytes: config.max_bytes,
        storage: config.storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_message_ttl: ttl,
        ..Default::default()
    }
}

/// A stream of messages for the manager (submissions, service events, reports): what it
/// has handled is purged ([`crate::upkeep`]), and a backlog beyond `max_bytes` or `max_msgs`
/// is refused to the publisher (never the oldest dropped: it may not have been handled).
fn input_stream(name: &str, subject: &str, max_bytes: i64, max_msgs: i64) -> stream::Config {
    stream::Config {
        max_bytes,
        max_messages: max_msgs,
        discard: stream::DiscardPolicy::New,
        ..file_stream(name, &[subject])
    }
}

/// What `CUBE_LOGS` keeps by default: per task, about 4 MiB of the newest output.
pub const DEFAULT_LOGS_PER_TASK: u64 = 4 << 20;
/// What `CUBE_LOGS` keeps in all, and for how long.
pub const LOGS_MAX_BYTES: i64 = 1 << 30;
pub const LOGS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The container-output stream: one subject per task, whose oldest chunks are dropped once it
/// holds `per_task` bytes' worth of chunks (chunks are at most [`LOG_CHUNK_MAX`] bytes, so
/// that is the most it keeps; a task that writes a line at a time keeps fewer bytes).
pub fn logs_stream(per_task: u64) -> stream::Config {
    let chunks = per_task
        .div_ceil(LOG_CHUNK_MAX as u64)
        .clamp(1, i64::MAX as u64) as i64;
    stream::Config {
        max_messages_per_subject: chunks,
        discard: stream::DiscardPolicy::Old,
        max_bytes: LOGS_MAX_BYTES,
        max_age: LOGS_MAX_AGE,
        // Room for the headers; a larger message is refused, so no worker can flood a task's
        // share with one huge chunk.
        max_message_size: (LOG_CHUNK_MAX * 2) as i32,
        // Workers read back the newest chunk of their own subjects by direct get, which
        // permissions can bind to the subject (a plain get names it only in its body).
        allow_direct: true,
        ..file_stream(LOGS_STREAM, &[LOGS_ALL])
    }
}

/// Creates (or updates) every stream and bucket, each with `replicas` copies (an existing one
/// is changed to that many: JetStream moves its data); `logs_per_task` is the per-task cap of
/// [`LOGS_STREAM`] in bytes.
pub async fn ensure(
    js: jetstream::Context,
    logs_per_task: u64,
    replicas: usize,
) -> Result<Topology, Error> {
    let streams = [
        // Submissions wait here while the manager is down. The size cap is above Cube's own
        // limit so that the manager, not the server, explains an oversized event.
        stream::Config {
            max_message_size: (MAX_EVENT_BYTES * 2) as i32,
            max_age: limits::INPUT_MAX_AGE,
            ..input_stream(
                EVENTS_STREAM,
                EVENTS,
                limits::EVENTS_MAX_BYTES,
                limits::EVENTS_MAX_MSGS,
            )
        },
        work_stream(),
        // Each copy's last report is kept (the task's status, see `crate::status`) until
        // its task is forgotten; a report replaces the one before it on its subject.
        stream::Config {
            max_messages_per_subject: 1,
            allow_direct: true,
            ..input_stream(
                STATE_STREAM,
                STATE_ALL,
                limits::STATE_MAX_BYTES,
                limits::STATE_MAX_MSGS,
            )
        },
        // Service events wait here while the manager is down, like submissions.
        stream::Config {
            max_message_size: (MAX_EVENT_BYTES * 2) as i32,
            max_age: limits::INPUT_MAX_AGE,
            ..input_stream(
                SERVICES_STREAM,
                SERVICE_EVENTS,
                limits::SERVICES_MAX_BYTES,
                limits::SERVICES_MAX_MSGS,
            )
        },
        stream::Config {
            max_age: limits::JOURNAL_MAX_AGE,
            max_bytes: limits::JOURNAL_MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            ..file_stream(JOURNAL_STREAM, &[JOURNAL_STORED])
        },
        logs_stream(logs_per_task),
    ];
    for config in streams {
        let config = stream::Config {
            num_replicas: replicas,
            ..config
        };
        let name = config.name.clone();
        if let Err(e) = js.create_or_update_stream(config.clone()).await {
            // Servers before 2.12 cannot change a stream's consumer limit: keep the one it
            // has (those servers do not cap consumers by default either).
            let Ok(mut existing) = js.get_stream(&name).await else {
                return Err(Error::setup(format!("stream {name}"), e));
            };
            let kept = existing
                .info()
                .await
                .map_err(|e| Error::setup(format!("stream {name}"), e))?
                .config
                .max_consumers;
            js.create_or_update_stream(stream::Config {
                max_consumers: kept,
                ..config
            })
            .await
            .map_err(|e| Error::setup(format!("stream {name}"), e))?;
        }
    }
    let ensure_bucket = |config: kv::Config, ttl: bool| {
        let js = js.clone();
        async move {
            let name = config.bucket.clone();
            let what = || format!("bucket {name}");
            js.create_or_update_stream(bucket_stream(&config, replicas, ttl))
                .await
                .map_err(|e| Error::setup(what(), e))?;
            js.get_key_value(&name)
                .await
                .map_err(|e| Error::setup(what(), e))
        }
    };
    let tasks = ensure_bucket(
        bucket(
            TASK_DB,
            "Cube's Task DB: task id → Task, service.<name> → Service",
            limits::TASK_DB_MAX_BYTES,
        ),
        true,
    )
    .await?;
    let nodes = ensure_bucket(
        bucket(
            NODE_DB,
            "Cube's nodes: worker name → Node",
            limits::NODE_DB_MAX_BYTES,
        ),
        false,
    )
    .await?;
    let admin = ensure_bucket(
        bucket(
            ADMIN_DB,
            "Cube's operator decisions (drain.<worker>) and the leadership lease (leader)",
            limits::ADMIN_DB_MAX_BYTES,
        ),
        false,
    )
    .await?;
    let endpoints = ensure_bucket(
        bucket(
            ENDPOINTS_DB,
            "Cube's service discovery: service name → its healthy copies' addresses",
            limits::ENDPOINTS_DB_MAX_BYTES,
        ),
        false,
    )
    .await?;
    let secrets = ensure_bucket(
        bucket(
            SECRETS_DB,
            "Cube's secrets: name → value, read only by the manager",
            limits::SECRETS_DB_MAX_BYTES,
        ),
        false,
    )
    .await?;
    let tokens = ensure_bucket(
        bucket(
            TOKENS_DB,
            "Cube's HTTP API tokens: token id → name, role and SHA-256 of the secret",
            limits::TOKENS_DB_MAX_BYTES,
        ),
        false,
    )
    .await?;
    Ok(Topology {
        endpoints,
        secrets,
        tokens,
        js,
        tasks,
        nodes,
        admin,
    })
}

/// Every current value of a bucket, read once (used to rebuild state on start).
pub async fn load_all(store: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>, Error> {
    Ok(cube_bus::load_all(store).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_stream_is_a_bounded_work_queue() {
        let c = work_stream();
        assert_eq!(c.name, WORK_STREAM);
        assert_eq!(
            c.subjects,
            vec![PENDING.to_string(), "tasks.pending.*".into()]
        );
        // An acknowledged placement (and the secrets it carries) goes at once.
        assert_eq!(c.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!((c.max_age, c.max_bytes), (WORK_MAX_AGE, WORK_MAX_BYTES));
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        // Longer than a node may be silent before its tasks are failed (`lost_after`).
        assert!(WORK_MAX_AGE > crate::rules::Timings::default().lost_after);
        assert_eq!(c.max_consumers, MAX_WORKERS as i32);
    }

    #[test]
    fn the_logs_stream_keeps_the_newest_chunks_of_each_task() {
        let c = logs_stream(16 << 10);
        assert_eq!(c.subjects, vec![LOGS_ALL.to_string()]);
        assert_eq!(
            c.max_messages_per_subject,
            (16 << 10) / LOG_CHUNK_MAX as i64
        );
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        assert!(c.max_bytes > 0 && !c.max_age.is_zero());
        // A cap below one chunk still keeps one, and a partial chunk counts as one.
        assert_eq!(logs_stream(1).max_messages_per_subject, 1);
        assert_eq!(
            logs_stream(LOG_CHUNK_MAX as u64 + 1).max_messages_per_subject,
            2
        );
    }
}
