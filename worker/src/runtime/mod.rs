//! Where tasks really run. The worker talks to a `Runtime`; Docker is the real one, and a
//! simulated one stands in for unit tests and scale benchmarks (never for end-to-end tests).

mod docker;
mod sim;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cube_shared::Task;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::probe::ProbeError;

pub use crate::policy::Limits;
pub use docker::{DockerError, DockerRuntime};
pub use sim::{SimConfig, SimRuntime};

/// A container that is running for a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub container_id: String,
    pub start_time: DateTime<Utc>,
}

/// A task's container ended on its own (not by `stop`).
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub task_id: Uuid,
    /// The placement the container was started for.
    pub generation: u64,
    pub exit_code: i64,
    /// What the runtime knows beyond the code: "out of memory", Docker's own error.
    pub error: Option<String>,
    pub finish_time: DateTime<Utc>,
}

/// One of a worker's containers as the runtime finds it, whatever its state: what a worker
/// that starts again reconciles with the Task DB.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub task_id: Uuid,
    pub container_id: String,
    /// The placement generation the container was started for (its label).
    pub generation: u64,
    pub running: bool,
    pub start_time: Option<DateTime<Utc>>,
    /// How it ended, for a container that is not running.
    pub exit: Option<Exit>,
}

/// Which output of a container a piece of it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

impl Output {
    /// The value of the `Cube-Stream` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Stdout => "stdout",
            Output::Stderr => "stderr",
        }
    }
}

/// One piece of a container's output as the runtime delivers it (Docker: one log entry,
/// usually a line).
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub output: Output,
    /// When the runtime recorded it, if it says.
    pub time: Option<DateTime<Utc>>,
    pub bytes: bytes::Bytes,
}

/// The runtime's own error beneath a [`RuntimeError`] or a failed probe (for Docker, a
/// `DockerError` over bollard's), kept as the source so that callers can look inside.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a runtime operation failed. Each says its cause in its message too: a task's error is
/// this one line.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not on this node and could not be pulled.
    #[error("image {image} is not present on this node and could not be pulled: {cause}")]
    ImageUnavailable {
        image: String,
        #[source]
        cause: Cause,
    },
    /// The container was created but would not start (bad command, port in use, …).
    #[error("container would not start: {0}")]
    StartFailed(#[source] Cause),
    /// The runtime itself failed; the operation may succeed if tried again.
    #[error("runtime error: {0}")]
    Unavailable(#[source] Cause),
}

/// How a command run in a task's container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub exit_code: i64,
    /// The end of what it wrote (its last 512 bytes), to say why it failed.
    pub output: String,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates and starts the task's container, labelled with the task id and `worker`.
    /// Idempotent: if the container already runs, it is adopted, not started twice.
    async fn start(&self, task: &Task, worker: &str) -> Result<Started, RuntimeError>;

    /// Stops the container of the task's placement `generation` (signal, then kill after
    /// `grace`). Returns its exit code, or `None` if there was no container. The container
    /// (and its output) may remain until [`remove`](Runtime::remove): what it wrote while
    /// stopping can still be read.
    async fn stop(
        &self,
        task_id: Uuid,
        generation: u64,
        grace: Duration,
    ) -> Result<Option<i64>, RuntimeError>;

    /// Removes the container of a placement that has ended.
    async fn remove(&self, task_id: Uuid, generation: u64) -> Result<(), RuntimeError>;

    /// Exits of this worker's containers, as they happen, for as long as the receiver lives.
    fn exits(&self, worker: &str) -> mpsc::Receiver<Exit>;

    /// Changes each time the runtime's exit events may have missed something (Docker: its
    /// event stream reconnected): the worker then lists its containers. A runtime that never
    /// misses an exit keeps the default, which never changes.
    fn resyncs(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }

    /// Every container `worker` started that still exists, running or not.
    async fn list(&self, worker: &str) -> Result<Vec<Observed>, RuntimeError>;

    /// Whether health checks ask its containers (see [`crate::probe`]). The simulation's have
    /// no process to ask and always pass, so its workers spend nothing on probing them.
    fn probes(&self) -> bool {
        false
    }

    /// Where the task's current container answers on its first exposed port, as `ip:port`:
    /// what an HTTP health check connects to.
    async fn probe_address(&self, task: &Task) -> Result<String, ProbeError>;

    /// Runs `command` with `sh -c` in the task's current container, to its end: a command
    /// health check.
    async fn exec(&self, task: &Task, command: &str) -> Result<Exec, ProbeError>;

    /// Whether its containers have output worth publishing (the simulation's have none, so
    /// its workers spend nothing on it).
    fn has_output(&self) -> bool {
        false
    }

    /// The output of the container of the task's placement `generation`, from `since` (or
    /// its start): with `follow`, until the container ends, else what there is now. A
    /// runtime without output (the simulation) yields nothing.
    fn logs(
        &self,
        _task_id: Uuid,
        _generation: u64,
        _since: Option<DateTime<Utc>>,
        _follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        futures::stream::empty().boxed()
    }
}
