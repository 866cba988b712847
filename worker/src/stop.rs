//! Stops: a stop request for one placement of a task (the manager's, or a fence of a copy it
//! no longer wants), and the worker's own retries of a stop that kept failing.
//!
//! Everything is keyed by (task, placement generation): a stop of placement g never explains
//! away the exit of placement g+1, and a stop that finds no container leaves no marker behind.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use cube_shared::{StateReport, TaskEvent};
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::report::report;
use crate::run::{delivered, Worker, MAX_DELIVER};
use crate::work::{Outcome, RETRY_SOON};

/// The longest wait between two of the worker's own attempts at a stop that keeps failing.
const KEEP_STOPPING_MAX: Duration = Duration::from_secs(60);

/// What to do about a stop the runtime failed, on the message's `attempt`th delivery.
#[derive(Debug, PartialEq)]
pub(crate) enum StopFailed {
    /// Offers remain: let JetStream offer it again.
    Retry(Duration),
    /// The last offer: acknowledge it and keep trying here (see [`stop_failed`]).
    KeepTrying,
}

/// What to do about a stop the runtime failed, on the message's `attempt`th delivery.
///
/// Before the last offer, JetStream offers it again. On the last one it would drop it
/// silently and the container would run on, so the worker acknowledges it and keeps trying
/// itself ([`Worker::keep_stopping`]) until the stop succeeds, and then reports the task
/// `completed` as any stop does. Reporting it `failed` instead would be a lie while its
/// container may still run (the restart policy would then run a second copy). The local retry
/// is lost only if this worker process ends; the next worker of this name then finds the
/// container, reads `stop_requested` in the task's record and stops it
/// ([`Worker::reconcile_on_start`]), so the stop is never lost.
pub(crate) fn stop_failed(attempt: i64) -> StopFailed {
    if attempt < MAX_DELIVER {
        StopFailed::Retry(RETRY_SOON)
    } else {
        StopFailed::KeepTrying
    }
}

impl Worker {
    pub(crate) async fn stop(
        self: &Arc<Self>,
        event: TaskEvent,
        msg: &jetstream::Message,
    ) -> Outcome {
        let id = event.task.id;
        let asked = event.task.generation;
        let tracked = self.tasks.request_stop(id, asked);
        // The placement to stop: the one named in the request, else the one running here.
        let running = tracked.as_ref().map(|p| p.generation);
        let Some(g) = Some(asked).filter(|g| *g > 0).or(running) else {
            debug!("nothing of this task runs here");
            return Outcome::Ack;
        };
        let result = {
            let _progress = self.keep_alive(msg);
            self.runtime.stop(id, g, self.cfg.stop_grace).await
        };
        match result {
            Ok(code) => Outcome::from(self.stopped(id, g, code).await),
            Err(e) => match stop_failed(delivered(msg)) {
                StopFailed::Retry(after) => {
                    warn!(error = %e, "stop failed; will retry");
                    Outcome::Retry(after)
                }
                StopFailed::KeepTrying => {
                    warn!(error = %e, "stop failed on the last offer; the worker keeps trying");
                    self.keep_stopping(id, g);
                    Outcome::Ack
                }
            },
        }
    }

    /// Cleans up after placement `g` of the task was stopped (`code`: its exit code, `None` if
    /// there was no container), and says so: `completed`, with its container if it ran here.
    pub(crate) async fn stopped(&self, id: Uuid, g: u64, code: Option<i64>) -> StateReport {
        if code.is_none() {
            // No container, so no exit will come to consume the marker.
            self.tasks.clear_stop_request(id, g);
        }
        info!(exit_code = ?code, generation = g, "stopped on request");
        let tracked = self.tasks.running(id).filter(|p| p.generation == g);
        if tracked.is_some() {
            // What it wrote while stopping (a TERM handler) is published before the
            // container goes.
            self.drain_logs(id).await;
        }
        self.remove_container(id, g).await;
        self.tasks.ended(id, g);
        let mut r = report(&self.cfg.name, id, g).exit_code(code);
        if let Some(p) = tracked {
            self.tasks.forget(id);
            r = r.container(p.container_id, p.start_time);
        }
        r.completed()
    }

    /// Keeps trying to stop placement `g` of the task, in the background, until it is stopped
    /// (then reported like any stop), it ended otherwise, or the worker shuts down (the
    /// container is then left for the next worker of this name, which honours the stop).
    pub(crate) fn keep_stopping(self: &Arc<Self>, id: Uuid, g: u64) {
        let worker = self.clone();
        let span =
            info_span!("keep stopping", task.id = %id, generation = g, worker = %self.cfg.name);
        let retries = async move {
            let mut backoff = RETRY_SOON;
            loop {
                tokio::select! {
                    _ = worker.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                let turn = tokio::select! {
                    _ = worker.shutdown.cancelled() => return,
                    turn = worker.turn(id) => turn,
                };
                if worker.tasks.placement_ended(id, g) {
                    debug!("it ended meanwhile");
                    return;
                }
                match worker.runtime.stop(id, g, worker.cfg.stop_grace).await {
                    Ok(code) => {
                        let r = worker.stopped(id, g, code).await;
                        drop(turn);
                        worker.report(r).await;
                        return;
                    }
                    Err(e) => debug!(error = %e, "stop failed again; will retry"),
                }
                drop(turn);
                backoff = (backoff * 2).min(KEEP_STOPPING_MAX);
            }
        };
        self.background.spawn(retries.instrument(span));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_stop_is_offered_again_then_kept_by_the_worker() {
        assert_eq!(stop_failed(1), StopFailed::Retry(RETRY_SOON));
        assert_eq!(stop_failed(MAX_DELIVER - 1), StopFailed::Retry(RETRY_SOON));
        assert_eq!(stop_failed(MAX_DELIVER), StopFailed::KeepTrying);
    }
}
