//! What Docker says of a container: whose it is, whether it runs, and how it ended.

use bollard::models::ContainerState;
use chrono::{DateTime, Utc};
use cube_shared::{LABEL_GENERATION, LABEL_TASK_ID};

use super::errors::{status, unavailable};
use super::DockerRuntime;
use crate::runtime::{Exit, Observed, RuntimeError, Started};

impl DockerRuntime {
    /// A container as Docker describes it (`name` or id), or `None` if there is none.
    pub(super) async fn observe(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        let c = match self.docker.inspect_container(name, None).await {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => {
                self.failed("inspect_container");
                return Err(unavailable("inspecting the container", e));
            }
        };
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let Some(task_id) = labels.get(LABEL_TASK_ID).and_then(|s| s.parse().ok()) else {
            return Ok(None);
        };
        let state = c.state.unwrap_or_default();
        let time = |t: Option<&str>| {
            t.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                // Docker reports "0001-01-01T00:00:00Z" for "never".
                .filter(|t| t.timestamp() > 0)
        };
        let running = state.running == Some(true);
        let generation = labels
            .get(LABEL_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let exit = (!running).then(|| Exit {
            task_id,
            generation,
            exit_code: state.exit_code.unwrap_or(-1),
            error: exit_error(&state),
            finish_time: time(state.finished_at.as_deref()).unwrap_or_else(Utc::now),
        });
        Ok(Some(Observed {
            task_id,
            container_id: c.id.unwrap_or_default(),
            generation,
            running,
            start_time: time(state.started_at.as_deref()),
            exit,
        }))
    }

    /// The task's container if it is running: what a repeated start adopts.
    pub(super) async fn running(&self, name: &str) -> Result<Option<Started>, RuntimeError> {
        Ok(self
            .observe(name)
            .await?
            .filter(|o| o.running)
            .map(|o| Started {
                container_id: o.container_id,
                start_time: o.start_time.unwrap_or_else(Utc::now),
            }))
    }
}

/// What a stopped container's state says beyond its exit code: the kernel's OOM kill, or
/// Docker's own error.
pub(super) fn exit_error(state: &ContainerState) -> Option<String> {
    if state.oom_killed == Some(true) {
        return Some("out of memory (killed by the kernel)".to_string());
    }
    state.error.clone().filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_says_what_killed_it() {
        let oom = ContainerState {
            oom_killed: Some(true),
            error: Some("ignored".into()),
            ..Default::default()
        };
        assert_eq!(
            exit_error(&oom).as_deref(),
            Some("out of memory (killed by the kernel)")
        );
        let failed = ContainerState {
            error: Some("mount failed".into()),
            ..Default::default()
        };
        assert_eq!(exit_error(&failed).as_deref(), Some("mount failed"));
        let clean = ContainerState {
            error: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(exit_error(&clean), None);
    }
}
