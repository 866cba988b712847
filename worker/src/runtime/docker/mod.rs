//! The Docker runtime, through bollard. This file is the [`Runtime`] itself: starting a task's
//! container (adopting one an earlier attempt made), stopping, removing and listing them. The
//! container spec, the exit events, the output and what health checks need are beside it.

mod errors;
mod events;
mod inspect;
mod logs;
mod probe;
mod spec;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use cube_shared::{container_name, Task, LABEL_WORKER};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

pub use errors::DockerError;

use self::errors::{image_unavailable, inspect_failed, start_failed, status, unavailable};
use super::{Exec, Exit, LogLine, Observed, Runtime, RuntimeError, Started};
use crate::metrics::DockerErrors;
use crate::policy::Limits;
use crate::probe::ProbeError;

/// How many containers a listing inspects at once.
const INSPECTS_AT_ONCE: usize = 8;

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// How long an image pull may take before the task fails.
    pull_timeout: Duration,
    limits: Limits,
    /// Counts the API calls that fail (`cube_docker_errors_total`).
    errors: DockerErrors,
    /// Counts the reconnections of the exit event stream (see [`Runtime::resyncs`]).
    resyncs: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl DockerRuntime {
    /// Connects to the local engine and agrees on an API version (this machine speaks 1.41).
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| unavailable("connecting to Docker", e))?
            .negotiate_version()
            .await
            .map_err(|e| unavailable("negotiating the Docker API version", e))?;
        docker
            .ping()
            .await
            .map_err(|e| unavailable("Docker does not answer", e))?;
        Ok(DockerRuntime {
            docker,
            pull_timeout: Duration::from_secs(120),
            limits: Limits::default(),
            errors: DockerErrors::default(),
            resyncs: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// Applies the worker's limits (its policy's) to every container.
    pub fn with_limits(mut self, limits: Limits) -> DockerRuntime {
        self.limits = limits;
        self
    }

    /// Counts failed Docker API calls in `errors` (a worker's metrics).
    pub fn with_metrics(mut self, errors: DockerErrors) -> DockerRuntime {
        self.errors = errors;
        self
    }

    /// Counts a failed call to `operation`.
    fn failed(&self, operation: &'static str) {
        self.errors.inc(operation);
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The container Docker is asked to create for a task on `worker`. Public so that `cube
    /// bench docker` can create the very same containers directly, as its baseline.
    pub fn create_body(&self, task: &Task, worker: &str) -> ContainerCreateBody {
        spec::create_body(task, worker, &self.limits)
    }

    /// Makes sure the image is here, pulling it if it is not.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => {
                self.failed("inspect_image");
                return Err(inspect_failed(image, e));
            }
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(DockerError::engine)?;
            }
            Ok::<(), DockerError>(())
        };
        let cause = match tokio::time::timeout(self.pull_timeout, pull).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(cause)) => cause,
            Err(_) => DockerError::PullTimeout(self.pull_timeout),
        };
        self.failed("pull_image");
        Err(image_unavailable(image, cause))
    }

    /// Creates the task's container: its id, or `None` if one of that name exists.
    async fn create(
        &self,
        name: &str,
        task: &Task,
        worker: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        match self
            .docker
            .create_container(Some(options), self.create_body(task, worker))
            .await
        {
            Ok(c) => Ok(Some(c.id)),
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => {
                self.failed("create_container");
                Err(match status(&e) {
                    Some(404) => image_unavailable(&task.image, DockerError::engine(e)),
                    Some(400) => start_failed(e),
                    _ => unavailable("creating the container", e),
                })
            }
        }
    }

    async fn force_remove(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(404)) => Ok(()),
            // 409: removal already in progress.
            Err(e) if matches!(status(&e), Some(409)) => Ok(()),
            Err(e) => {
                self.failed("remove_container");
                Err(unavailable("removing the container", e))
            }
        }
    }

    /// Creates the placement's container, or adopts it: its name is the placement's, so it
    /// exists only if an earlier attempt (a redelivery, a worker restarted mid-start) made
    /// it. Create first; only then inspect. `Err(started)` is a running container to adopt.
    async fn create_or_adopt(&self, task: &Task, worker: &str) -> Result<Adopt, RuntimeError> {
        let name = task.container_name();
        if let Some(id) = self.create(&name, task, worker).await? {
            return Ok(Adopt::Created(id));
        }
        if let Some(started) = self.running(&name).await? {
            debug!(container = %started.container_id, "adopting the running container");
            return Ok(Adopt::Running(started));
        }
        // A leftover that is not running belongs to an earlier attempt: start afresh.
        self.force_remove(&name).await?;
        if let Some(id) = self.create(&name, task, worker).await? {
            return Ok(Adopt::Created(id));
        }
        // Someone created it in between (a concurrent redelivery): adopt it once it runs,
        // never make a second one.
        match self.running(&name).await? {
            Some(started) => Ok(Adopt::Running(started)),
            None => Err(RuntimeError::Unavailable(Box::new(
                DockerError::CreatedElsewhere,
            ))),
        }
    }
}

/// A placement's container, as [`DockerRuntime::create_or_adopt`] found it.
enum Adopt {
    /// Made just now, not started yet: its id.
    Created(String),
    /// Already running: an earlier attempt started it.
    Running(Started),
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn start(&self, task: &Task, worker: &str) -> Result<Started, RuntimeError> {
        self.ensure_image(&task.image).await?;
        let created = match self.create_or_adopt(task, worker).await? {
            Adopt::Created(id) => id,
            Adopt::Running(started) => return Ok(started),
        };
        match self.docker.start_container(&created, None).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(304) => {}
            Err(e) => {
                self.failed("start_container");
                if let Err(e) = self.force_remove(&task.container_name()).await {
                    warn!(error = %e, "removing a container that would not start");
                }
                return Err(match status(&e) {
                    Some(400 | 404 | 409 | 500) => start_failed(e),
                    _ => RuntimeError::Unavailable(Box::new(DockerError::engine(e))),
                });
            }
        }
        Ok(Started {
            container_id: created,
            start_time: Utc::now(),
        })
    }

    async fn stop(
        &self,
        task_id: Uuid,
        generation: u64,
        grace: Duration,
    ) -> Result<Option<i64>, RuntimeError> {
        let name = container_name(task_id, generation);
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        match self.docker.stop_container(&name, Some(options)).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(304) => {}
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => {
                self.failed("stop_container");
                return Err(unavailable("stopping the container", e));
            }
        }
        let code = match self.docker.inspect_container(&name, None).await {
            Ok(c) => c.state.and_then(|s| s.exit_code),
            Err(_) => {
                self.failed("inspect_container");
                None
            }
        };
        Ok(code.or(Some(0)))
    }

    async fn remove(&self, task_id: Uuid, generation: u64) -> Result<(), RuntimeError> {
        self.force_remove(&container_name(task_id, generation))
            .await
    }

    fn exits(&self, worker: &str) -> mpsc::Receiver<Exit> {
        self.watch_exits(worker)
    }

    fn resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    async fn list(&self, worker: &str) -> Result<Vec<Observed>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_WORKER}={worker}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| {
                self.failed("list_containers");
                unavailable("listing containers", e)
            })?;
        // Inspected a few at once: a worker with many containers lists them every
        // `RELIST_EVERY` and at start-up.
        let inspected: Vec<Result<Option<Observed>, RuntimeError>> =
            futures::stream::iter(summaries.into_iter().filter_map(|s| s.id))
                .map(|id| async move { self.observe(&id).await })
                .buffer_unordered(INSPECTS_AT_ONCE)
                .collect()
                .await;
        let mut out = Vec::with_capacity(inspected.len());
        for observed in inspected {
            out.extend(observed?);
        }
        Ok(out)
    }

    fn probes(&self) -> bool {
        true
    }

    async fn probe_address(&self, task: &Task) -> Result<String, ProbeError> {
        self.address(task).await
    }

    async fn exec(&self, task: &Task, command: &str) -> Result<Exec, ProbeError> {
        self.run_in(task, command).await
    }

    fn has_output(&self) -> bool {
        true
    }

    fn logs(
        &self,
        task_id: Uuid,
        generation: u64,
        since: Option<DateTime<Utc>>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        self.output(&container_name(task_id, generation), since, follow)
    }
}
