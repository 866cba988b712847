//! The worker's window on the Task DB: the records of its own tasks, read one at a time by
//! direct get, whose request subject names the key (`$JS.API.DIRECT.GET.KV_cube-tasks.
//! $KV.cube-tasks.on.<worker>.<task-id>`), so that NATS permissions can hold a worker to its
//! own keys. It never asks for the bucket's info (which could list every key) nor scans it.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use cube_shared::subjects::{kv_subject, task_key, TaskPlace, FENCE_KEY, TASK_DB};
use uuid::Uuid;

/// Why a record could not be read.
pub(crate) type ReadError = async_nats::jetstream::stream::DirectGetError;

pub(crate) struct TaskDb {
    stream: jetstream::stream::Stream<()>,
    worker: String,
}

impl TaskDb {
    /// The Task DB as `worker` reads it, once a leader has written its fence there (which
    /// it does after creating every stream and bucket, before anything else); until then an
    /// error, to be tried again.
    pub(crate) async fn open(js: &jetstream::Context, worker: &str) -> Result<TaskDb, ReadError> {
        let stream = js
            .get_stream_no_info(format!("KV_{TASK_DB}"))
            .await
            .map_err(|e| ReadError::with_source(DirectGetErrorKind::Other, e))?;
        let db = TaskDb {
            stream,
            worker: worker.to_string(),
        };
        // A bucket without a fence was made by something else (an earlier release, an
        // operator) before any leader: the streams a leader makes may not be there yet.
        match db.value(FENCE_KEY).await? {
            Some(_) => Ok(db),
            None => Err(ReadError::new(DirectGetErrorKind::NotFound)),
        }
    }

    /// The record of task `id` as this worker may read it: under its own key, or, for a task
    /// on the shared queue, under the queue's. `None`: no record this worker may act on (the
    /// task is on another worker, or on none).
    pub(crate) async fn record(&self, id: Uuid) -> Result<Option<bytes::Bytes>, ReadError> {
        match self
            .value(&task_key(id, TaskPlace::Worker(&self.worker)))
            .await?
        {
            Some(record) => Ok(Some(record)),
            None => self.value(&task_key(id, TaskPlace::Queue)).await,
        }
    }

    /// The current value of `key` (`None`: never written, or deleted).
    async fn value(&self, key: &str) -> Result<Option<bytes::Bytes>, ReadError> {
        let subject = kv_subject(TASK_DB, key);
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(m) if m.headers.get(cube_bus::KV_OPERATION).is_some() => Ok(None),
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
