//! What a worker does before it takes new work: it compares the containers labelled with its
//! name with what the Task DB says it runs, and acts on the difference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cube_shared::{wire, State, Task};
use tracing::{info, info_span, warn, Instrument, Span};
use uuid::Uuid;

use crate::report::report;
use crate::run::{retry, Worker};
use crate::runtime::Observed;
use crate::slots::Placement;

/// The placements the Task DB gives worker `name`, by task: the current placement of each
/// active task assigned to it, and the copy it runs of a task that is moving off it (a drain),
/// as that older placement (running). That copy is kept until the manager stops it once the
/// new one runs: a worker restarted mid-drain must not end it early, and reports what became
/// of it so the manager knows whether the task can still fall back to it.
pub(crate) fn owned_placements(
    tasks: impl Iterator<Item = Task>,
    name: &str,
) -> HashMap<Uuid, Task> {
    let mut owned = HashMap::new();
    for t in tasks.filter(|t| t.state.is_active()) {
        if t.worker.as_deref() == Some(name) {
            owned.insert(t.id, t);
        } else if let Some(old) = t.previous.clone().filter(|p| p.worker == name) {
            owned.entry(t.id).or_insert(Task {
                worker: Some(old.worker),
                generation: old.generation,
                state: State::Running,
                container_id: None,
                previous: None,
                ..t
            });
        }
    }
    owned
}

impl Worker {
    /// Adopts what should run, reports what ended while the worker was away (with the real
    /// exit code), and removes what should not exist. Returns false if it was shut down
    /// meanwhile.
    pub(crate) async fn reconcile_on_start(self: &Arc<Self>) -> bool {
        let name = self.cfg.name.clone();
        let every = Duration::from_secs(1);
        let list = || self.runtime.list(&name);
        let Some(observed) = retry(&self.shutdown, every, "listing containers", list).await else {
            return false;
        };
        let load = || cube_bus::load_all(&self.task_db);
        let Some(records) = retry(&self.shutdown, every, "reading the Task DB", load).await else {
            return false;
        };
        let tasks = records
            .into_iter()
            .filter_map(|(_, bytes)| wire::decode::<Task>(&bytes, usize::MAX).ok());
        let mut owned = owned_placements(tasks, &name);
        let (mut adopted, mut ended, mut removed) = (0, 0, 0);
        for o in observed {
            let span = info_span!("reconcile", task.id = %o.task_id, generation = o.generation, worker = %name);
            let current = owned
                .remove(&o.task_id)
                .filter(|t| o.generation == t.generation);
            match current {
                Some(task) if o.exit.is_none() => {
                    adopted += 1;
                    self.adopt(task, o).instrument(span).await;
                }
                Some(task) => {
                    ended += 1;
                    self.ended_away(task, o).instrument(span).await;
                }
                None => {
                    removed += 1;
                    self.remove_stale(o, span).await;
                }
            }
        }
        // Running by the Task DB, but no container: it vanished while the worker was away.
        let mut vanished = 0;
        for task in owned.into_values().filter(|t| t.state == State::Running) {
            vanished += 1;
            self.tasks.ended(task.id, task.generation);
            let why = "the container disappeared while its worker was away";
            self.report(report(&name, task.id, task.generation).failed(why))
                .await;
        }
        info!(worker = %name, adopted, ended, removed, vanished, "reconciled with the Task DB");
        true
    }

    /// Takes over a container that runs for a current placement of this worker.
    async fn adopt(self: &Arc<Self>, task: Task, o: Observed) {
        let Ok(claim) = self.tasks.claim(&task, false) else {
            warn!("adopting a container twice; ignored");
            return;
        };
        let checks = self.watch_health(&task);
        let placement = Placement {
            generation: task.generation,
            container_id: o.container_id.clone(),
            start_time: o.start_time,
        };
        self.tasks.run(claim, placement, checks);
        self.follow_logs(task.id, task.generation);
        if task.state != State::Running || task.container_id.as_deref() != Some(&o.container_id) {
            let r = report(&self.cfg.name, task.id, task.generation)
                .container(o.container_id, o.start_time)
                .running(None);
            self.report(r).await;
        }
        info!("adopted the running container");
    }

    /// Reports a container of a current placement that ended while the worker was away.
    async fn ended_away(&self, task: Task, o: Observed) {
        let Some(exit) = o.exit else { return };
        info!(
            exit_code = exit.exit_code,
            "the container ended while the worker was away"
        );
        // Its output since the last chunk published before the worker went away: the
        // follower resumes there, and `finish` lets it publish the rest before the container
        // is removed.
        self.follow_logs(task.id, task.generation);
        let placement = Placement {
            generation: task.generation,
            container_id: o.container_id,
            start_time: o.start_time,
        };
        self.finish(exit, placement).await;
    }

    /// Stops and removes a container that no current placement of this worker owns.
    async fn remove_stale(&self, o: Observed, span: Span) {
        span.in_scope(|| info!("removing a container this worker no longer owns"));
        let stopped = self
            .runtime
            .stop(o.task_id, o.generation, self.cfg.stop_grace)
            .await;
        match stopped {
            Ok(_) => {
                self.remove_container(o.task_id, o.generation)
                    .instrument(span)
                    .await
            }
            Err(e) => span.in_scope(|| warn!(error = %e, "removing a stale container")),
        }
    }
}

#[cfg(test)]
mod tests {
    use cube_shared::Placement as Assigned;

    use super::*;

    fn task(worker: &str, generation: u64, state: State) -> Task {
        let mut t = Task::new("busybox");
        t.worker = Some(worker.into());
        t.generation = generation;
        t.state = state;
        t
    }

    #[test]
    fn a_worker_owns_its_current_placements_and_the_copy_a_drain_moves_away() {
        let mine = task("w1", 2, State::Running);
        let ended = task("w1", 1, State::Completed);
        let elsewhere = task("w2", 4, State::Running);
        let mut moving = task("w2", 6, State::Scheduled);
        moving.previous = Some(Assigned {
            worker: "w1".into(),
            generation: 5,
        });
        let tasks = [mine.clone(), ended, elsewhere, moving.clone()];
        let owned = owned_placements(tasks.into_iter(), "w1");
        assert_eq!(owned.len(), 2);
        assert_eq!(owned[&mine.id], mine);
        let old = &owned[&moving.id];
        assert_eq!(
            (
                old.worker.as_deref(),
                old.generation,
                old.state,
                old.previous.as_ref()
            ),
            (Some("w1"), 5, State::Running, None)
        );
        assert!(owned_placements([moving].into_iter(), "w2").contains_key(&old.id));
    }
}
