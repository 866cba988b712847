//! The worker's periodic look at its runtime: every [`RELIST_EVERY`], and after the runtime's
//! event stream reconnects, it lists its containers and deals with every tracked placement
//! whose container has exited or vanished exactly as an exit event would have. Docker's event
//! stream can miss an exit (the daemon restarted, the stream broke for longer than Docker
//! keeps events); without this the task would stay `running` for ever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::report::report;
use crate::run::Worker;
use crate::runtime::{Exit, Observed};
use crate::slots::Placement;

/// How often the worker lists its containers to catch exits it was not told of.
pub(crate) const RELIST_EVERY: Duration = Duration::from_secs(30);

/// Why a tracked placement is no longer running.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Missed {
    /// Its container exited: how.
    Exited(Exit),
    /// Its container is gone (removed behind the worker's back).
    Vanished,
}

/// What to say of a placement whose container vanished.
pub(crate) const VANISHED: &str = "container vanished";

/// The tracked placements (`tracked`, taken before the runtime was listed) that `observed`
/// shows have exited or vanished. A placement tracked before the list began had its
/// container before it too, so its absence from the list is not a start still under way.
pub(crate) fn missed(
    tracked: Vec<(Uuid, Placement)>,
    observed: &[Observed],
) -> Vec<(Uuid, Placement, Missed)> {
    let by_placement: HashMap<(Uuid, u64), &Observed> = observed
        .iter()
        .map(|o| ((o.task_id, o.generation), o))
        .collect();
    let mut out = Vec::new();
    for (id, placement) in tracked {
        match by_placement.get(&(id, placement.generation)) {
            Some(o) if o.running => {}
            Some(o) => {
                let exit = o.exit.clone().unwrap_or(Exit {
                    task_id: id,
                    generation: placement.generation,
                    exit_code: -1,
                    error: None,
                    finish_time: Utc::now(),
                });
                out.push((id, placement, Missed::Exited(exit)));
            }
            None => out.push((id, placement, Missed::Vanished)),
        }
    }
    out
}

impl Worker {
    /// Lists the runtime's containers and reports the tracked placements that ended unseen.
    pub(crate) async fn relist(self: &Arc<Self>) {
        let tracked = self.tasks.running_placements();
        if tracked.is_empty() {
            return;
        }
        let observed = match self.runtime.list(&self.cfg.name).await {
            Ok(observed) => observed,
            Err(e) => {
                debug!(error = %e, "listing containers for the periodic check");
                return;
            }
        };
        for (id, placement, missed) in missed(tracked, &observed) {
            let span = info_span!(
                "relist",
                task.id = %id,
                generation = placement.generation,
                worker = %self.cfg.name
            );
            self.missed_exit(id, placement, missed)
                .instrument(span)
                .await;
        }
    }

    /// Deals with a placement that ended unseen, under the task's turn, if it is still the
    /// one tracked (a stop or the exit event may have dealt with it meanwhile).
    async fn missed_exit(self: &Arc<Self>, id: Uuid, placement: Placement, missed: Missed) {
        let turn = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            turn = self.turn(id) => turn,
        };
        if self.tasks.running(id).as_ref() != Some(&placement) {
            return;
        }
        match missed {
            Missed::Exited(exit) => {
                info!(exit_code = exit.exit_code, "an exit no event told of");
                self.on_exit(exit).await;
            }
            Missed::Vanished => {
                if self.tasks.take_stop_request(id, placement.generation) {
                    // Being stopped: the stop reports it.
                    return;
                }
                warn!(container = %placement.container_id, "the container vanished");
                let g = placement.generation;
                self.drain_logs(id).await;
                self.tasks.ended(id, g);
                self.tasks.forget(id);
                drop(turn);
                let r = report(&self.cfg.name, id, g)
                    .container(placement.container_id, placement.start_time);
                self.report(r.failed(VANISHED)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cube_shared::{State, Task};

    use super::*;
    use crate::runtime::{Runtime, SimRuntime};

    async fn start(sim: &SimRuntime, t: &Task) -> (Uuid, Placement) {
        let started = sim.start(t, "w1").await.unwrap();
        let placement = Placement {
            generation: t.generation,
            container_id: started.container_id,
            start_time: Some(started.start_time),
        };
        (t.id, placement)
    }

    #[tokio::test]
    async fn a_container_removed_behind_the_worker_s_back_is_reported_vanished() {
        let sim = SimRuntime::default();
        let (a, b) = (Task::new("busybox"), Task::new("busybox"));
        let tracked = vec![start(&sim, &a).await, start(&sim, &b).await];
        assert_eq!(
            missed(tracked.clone(), &sim.list("w1").await.unwrap()),
            vec![]
        );

        sim.vanish(a.id);
        let observed = sim.list("w1").await.unwrap();
        let found = missed(tracked.clone(), &observed);
        assert_eq!(found, vec![(a.id, tracked[0].1.clone(), Missed::Vanished)]);
        // What the worker then reports: failed, with the container and why.
        let r = report("w1", a.id, 0)
            .container(tracked[0].1.container_id.clone(), None)
            .failed(VANISHED);
        assert_eq!(
            (r.state, r.error.as_deref()),
            (State::Failed, Some(VANISHED))
        );
    }

    #[test]
    fn an_exited_container_is_reported_as_its_exit_and_a_newer_one_is_not_mixed_up() {
        let id = Uuid::new_v4();
        let placement = |g| Placement {
            generation: g,
            container_id: format!("c{g}"),
            start_time: None,
        };
        let exit = Exit {
            task_id: id,
            generation: 2,
            exit_code: 3,
            error: None,
            finish_time: Utc::now(),
        };
        let observed = |g, running| Observed {
            task_id: id,
            container_id: format!("c{g}"),
            generation: g,
            running,
            start_time: None,
            exit: (!running).then(|| Exit {
                generation: g,
                ..exit.clone()
            }),
        };
        let found = missed(vec![(id, placement(2))], &[observed(2, false)]);
        assert_eq!(
            found,
            vec![(id, placement(2), Missed::Exited(exit.clone()))]
        );
        // Placement 3 runs; the old container of placement 2 that exited is not its exit.
        let found = missed(
            vec![(id, placement(3))],
            &[observed(2, false), observed(3, true)],
        );
        assert_eq!(found, vec![]);
    }
}
