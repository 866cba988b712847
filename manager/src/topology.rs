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

/// How long `CUBE_WORK` keeps a placement, and how many bytes of them at most (the oldest go
/// first). Longer than a placement can matter: one nobody took up is made again after the
/// schedule timeout (60 s), a node silent for `lost_after` (10 min) has its tasks failed, and a
/// copy a returning node still runs is fenced by its heartbeat. Each worker's consumer
/// remembers what it acknowledged, so nothing is delivered twice while it lives.
pub const WORK_MAX_AGE: Duration = Duration::from_secs(3600);
pub const WORK_MAX_BYTES: i64 = 1 << 30;

/// The work stream: placements and stops, one subject per worker (`tasks.pending.<worker>`)
/// and the shared queue (`tasks.pending`). Limits retention, not a work queue: on a work
/// queue nats-server scans every consumer on each acknowledgement (to see whether another
/// still needs the message) and checks each new consumer's filter against every other, which
/// made both O(workers); here an acknowledgement only moves its consumer's floor.
pub fn work_stream() -> stream::Config {
    stream::Config {
        retention: stream::RetentionPolicy::Limits,
        max_age: WORK_MAX_AGE,
        max_bytes: WORK_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        // One consumer per worker: nats-server 2.15 caps a stream at 1,000 consumers unless
        // it sets its own limit (and "unlimited" is not expressible).
        max_consumers: MAX_WORKERS as i32,
        ..file_stream(WORK_STREAM, &[PENDING, "tasks.pending.*"])
    }
}

/// JetStream cannot change a stream's retention: a `CUBE_WORK` made by an earlier release (a
/// work queue) is deleted, with its consumers, so that [`ensure`] makes it again. Nothing is
/// lost: what it held is placements and stops the Task DB records, which the leader sends
/// again when it takes over (and a placement not taken up is made again after the schedule
/// timeout); workers bind their consumers again on their own. The name stays, and with it the
/// NATS permissions and the contract.
async fn migrate_work_stream(js: &jetstream::Context) -> Result<(), Error> {
    let Ok(mut existing) = js.get_stream(WORK_STREAM).await else {
        return Ok(());
    };
    let info = existing
        .info()
        .await
        .map_err(|e| Error::setup(format!("stream {WORK_STREAM}"), e))?;
    if info.config.retention != stream::RetentionPolicy::WorkQueue {
        return Ok(());
    }
    tracing::warn!(
        messages = info.state.messages,
        consumers = info.state.consumer_count,
        "{WORK_STREAM} is a work queue (an earlier release): deleting it to make it again with \
         limits retention; the leader sends the recorded placements again"
    );
    match js.delete_stream(WORK_STREAM).await {
        Ok(_) => Ok(()),
        // Another manager starting at the same time deleted it first.
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::setup(format!("stream {WORK_STREAM}"), e)),
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

fn bucket(name: &str, description: &str, replicas: usize) -> kv::Config {
    kv::Config {
        num_replicas: replicas,
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
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
    migrate_work_stream(&js).await?;
    let streams = [
        // Submissions wait here while the manager is down. The size cap is above Cube's own
        // limit so that the manager, not the server, explains an oversized event.
        stream::Config {
            max_message_size: (MAX_EVENT_BYTES * 2) as i32,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..file_stream(EVENTS_STREAM, &[EVENTS])
        },
        work_stream(),
        stream::Config {
            max_age: Duration::from_secs(24 * 3600),
            ..file_stream(STATE_STREAM, &[STATE_ALL])
        },
        // Service events wait here while the manager is down, like submissions.
        stream::Config {
            max_message_size: (MAX_EVENT_BYTES * 2) as i32,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..file_stream(SERVICES_STREAM, &[SERVICE_EVENTS])
        },
        stream::Config {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 << 20,
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
    let ensure_bucket = |config: kv::Config| {
        let js = js.clone();
        async move {
            let name = config.bucket.clone();
            js.create_or_update_key_value(config)
                .await
                .map_err(|e| Error::setup(format!("bucket {name}"), e))
        }
    };
    let tasks = ensure_bucket(bucket(
        TASK_DB,
        "Cube's Task DB: task id → Task, service.<name> → Service",
        replicas,
    ))
    .await?;
    let nodes = ensure_bucket(bucket(
        NODE_DB,
        "Cube's nodes: worker name → Node",
        replicas,
    ))
    .await?;
    let admin = ensure_bucket(bucket(
        ADMIN_DB,
        "Cube's operator decisions (drain.<worker>) and the leadership lease (leader)",
        replicas,
    ))
    .await?;
    let endpoints = ensure_bucket(bucket(
        ENDPOINTS_DB,
        "Cube's service discovery: service name → its healthy copies' addresses",
        replicas,
    ))
    .await?;
    let secrets = ensure_bucket(bucket(
        SECRETS_DB,
        "Cube's secrets: name → value, read only by the manager",
        replicas,
    ))
    .await?;
    let tokens = ensure_bucket(bucket(
        TOKENS_DB,
        "Cube's HTTP API tokens: token id → name, role and SHA-256 of the secret",
        replicas,
    ))
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
    fn the_work_stream_is_bounded_and_not_a_work_queue() {
        let c = work_stream();
        assert_eq!(c.name, WORK_STREAM);
        assert_eq!(
            c.subjects,
            vec![PENDING.to_string(), "tasks.pending.*".into()]
        );
        // A work queue scans every consumer on each acknowledgement.
        assert_eq!(c.retention, stream::RetentionPolicy::Limits);
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
