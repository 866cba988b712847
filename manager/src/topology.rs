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
    pub events: kv::Store,
    pub nodes: kv::Store,
    pub admin: kv::Store,
}

/// How many workers one cluster can have: each has its own consumer of the work stream.
pub const MAX_WORKERS: usize = 100_000;

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

fn bucket(name: &str, description: &str) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

pub async fn ensure(js: jetstream::Context) -> Result<Topology, Error> {
    let streams = [
        // Submissions wait here while the manager is down. The size cap is above Cube's own
        // limit so that the manager, not the server, explains an oversized event.
        stream::Config {
            max_message_size: (MAX_EVENT_BYTES * 2) as i32,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..file_stream(EVENTS_STREAM, &[EVENTS])
        },
        // A work queue: each message is removed once a worker acknowledges it. Consumers'
        // filters (`tasks.pending` and `tasks.pending.<worker>`) never overlap.
        stream::Config {
            retention: stream::RetentionPolicy::WorkQueue,
            // One durable consumer per worker: nats-server 2.15 caps a stream at 1,000
            // consumers unless it sets its own limit (and "unlimited" is not expressible).
            max_consumers: MAX_WORKERS as i32,
            ..file_stream(WORK_STREAM, &[PENDING, "tasks.pending.*"])
        },
        stream::Config {
            max_age: Duration::from_secs(24 * 3600),
            ..file_stream(STATE_STREAM, &[STATE_ALL])
        },
        stream::Config {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 << 20,
            ..file_stream(JOURNAL_STREAM, &[JOURNAL_ALL])
        },
    ];
    for config in streams {
        let name = config.name.clone();
        if let Err(e) = js.create_or_update_stream(config.clone()).await {
            // Servers before 2.12 cannot change a stream's consumer limit: keep the one it
            // has (those servers do not cap consumers by default either).
            let Ok(mut existing) = js.get_stream(&name).await else {
                return Err(Error::Setup(format!("stream {name}: {e}")));
            };
            let kept = existing
                .info()
                .await
                .map_err(|e| Error::Setup(format!("stream {name}: {e}")))?
                .config
                .max_consumers;
            js.create_or_update_stream(stream::Config {
                max_consumers: kept,
                ..config
            })
            .await
            .map_err(|e| Error::Setup(format!("stream {name}: {e}")))?;
        }
    }
    let tasks = js
        .create_or_update_key_value(bucket(TASK_DB, "Cube's Task DB: task id → Task"))
        .await
        .map_err(|e| Error::Setup(format!("bucket {TASK_DB}: {e}")))?;
    let events = js
        .create_or_update_key_value(kv::Config {
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..bucket(EVENT_DB, "Cube's Event DB: event id → TaskEvent")
        })
        .await
        .map_err(|e| Error::Setup(format!("bucket {EVENT_DB}: {e}")))?;
    let nodes = js
        .create_or_update_key_value(bucket(NODE_DB, "Cube's nodes: worker name → Node"))
        .await
        .map_err(|e| Error::Setup(format!("bucket {NODE_DB}: {e}")))?;
    let admin = js
        .create_or_update_key_value(bucket(
            ADMIN_DB,
            "Cube's operator decisions: drain.<worker>",
        ))
        .await
        .map_err(|e| Error::Setup(format!("bucket {ADMIN_DB}: {e}")))?;
    Ok(Topology {
        js,
        tasks,
        events,
        nodes,
        admin,
    })
}

/// Every current value of a bucket, read once (used to rebuild state on start).
pub async fn load_all(store: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>, Error> {
    cube_bus::load_all(store)
        .await
        .map_err(|e| Error::Nats(e.to_string()))
}
