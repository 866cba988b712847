//! Health checks of running tasks: probe every interval; a task that never becomes healthy,
//! or stops being healthy, is stopped and reported failed, so its restart policy takes over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cube_shared::{Health, Task};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::report::report;
use crate::run::Worker;

/// How a task's health check is run, with the defaults filled in.
struct Schedule {
    interval: Duration,
    timeout: Duration,
    retries: u32,
    grace: Duration,
}

impl Schedule {
    fn of(task: &Task) -> Schedule {
        Schedule {
            interval: task.health_interval.unwrap_or(Duration::from_secs(5)),
            timeout: task.health_timeout.unwrap_or(Duration::from_secs(2)),
            retries: task.health_retries.unwrap_or(3).max(1),
            grace: task.health_grace.unwrap_or(Duration::from_secs(30)),
        }
    }
}

impl Worker {
    /// Runs the task's health check in the background, if it has one, until the returned
    /// guard drops (the task's slot holds it) or the worker shuts down. `run` waits for it.
    pub(crate) fn watch_health(self: &Arc<Self>, task: &Task) -> Option<DropGuard> {
        task.health_check.as_ref()?;
        let token = self.shutdown.child_token();
        let (worker, task, t) = (self.clone(), task.clone(), token.clone());
        let span = info_span!(
            "health",
            task.id = %task.id,
            generation = task.generation,
            worker = %self.cfg.name
        );
        self.background
            .spawn(async move { worker.check_health(task, t).await }.instrument(span));
        Some(token.drop_guard())
    }

    /// Probes every interval. The first pass makes the task healthy; a task that has not
    /// passed within its grace period, or that fails `retries` times in a row after passing,
    /// is stopped and reported failed.
    async fn check_health(&self, task: Task, token: CancellationToken) {
        let Schedule {
            interval,
            timeout,
            retries,
            grace,
        } = Schedule::of(&task);
        let started = Instant::now();
        let (mut healthy, mut failures) = (false, 0);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let outcome = tokio::select! {
                _ = token.cancelled() => return,
                outcome = crate::probe::probe(&*self.runtime, &task, timeout) => outcome,
            };
            // The reason a probe failed is only ever shown.
            let outcome = outcome.map_err(|e| e.to_string());
            if outcome.is_err() {
                self.cfg.metrics.health_check_failures.inc();
            }
            match outcome {
                Ok(()) => {
                    failures = 0;
                    if !healthy {
                        healthy = true;
                        info!("healthy");
                        self.report_health(&task, Health::Healthy).await;
                    }
                }
                Err(reason) if healthy => {
                    failures += 1;
                    debug!(failures, %reason, "health check failed");
                    if failures >= retries {
                        warn!(%reason, "unhealthy");
                        self.report_health(&task, Health::Unhealthy).await;
                        let why = format!(
                            "unhealthy: {failures} checks failed in a row, the last: {reason}"
                        );
                        self.end_unhealthy(&task, why).await;
                        return;
                    }
                }
                Err(reason) if started.elapsed() >= grace => {
                    warn!(%reason, "never became healthy");
                    let why = format!("did not become healthy within {grace:?}: {reason}");
                    self.end_unhealthy(&task, why).await;
                    return;
                }
                Err(reason) => debug!(%reason, "not healthy yet"),
            }
        }
    }

    async fn report_health(&self, task: &Task, health: Health) {
        // With its container: the last report of a copy is its status, kept in CUBE_STATE, and
        // read back alone by a manager that starts leading.
        let placement = self
            .tasks
            .running(task.id)
            .filter(|p| p.generation == task.generation);
        let r = report(&self.cfg.name, task.id, task.generation)
            .container(
                placement.as_ref().map(|p| p.container_id.clone()),
                placement.and_then(|p| p.start_time),
            )
            .running(Some(health));
        self.report(r).await;
    }

    /// Stops an unhealthy task's container and reports it failed with `reason`.
    async fn end_unhealthy(&self, task: &Task, reason: String) {
        let _turn = self.turn(task.id).await;
        // Holding the task's turn, its container's death cannot be handled meanwhile: once
        // the turn is let go, the placement is forgotten and the exit ignored.
        let current = self.tasks.running(task.id).map(|p| p.generation);
        if current != Some(task.generation) {
            return;
        }
        let stopped = self
            .runtime
            .stop(task.id, task.generation, self.cfg.stop_grace)
            .await;
        let code = stopped.unwrap_or_else(|e| {
            warn!(error = %e, "stopping an unhealthy container");
            None
        });
        self.drain_logs(task.id).await;
        self.remove_container(task.id, task.generation).await;
        self.tasks.ended(task.id, task.generation);
        self.tasks.forget(task.id);
        let r = report(&self.cfg.name, task.id, task.generation).exit_code(code);
        self.report(r.failed(reason)).await;
    }
}
