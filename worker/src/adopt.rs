//! What a worker does before it takes new work: it compares the containers labelled with its
//! name with what the Task DB says of their tasks, adopts what should run, and leaves the
//! rest (containers that ended while it was away, containers it no longer owns) to be dealt
//! with in the background once it has sent its first heartbeat: nothing there may delay
//! readiness.
//!
//! Only the records of the tasks whose containers it found are read (one get per task, a
//! bounded number at once), never the whole Task DB: start-up time does not grow with every
//! task the cluster ever ran. A task the Task DB says runs here but whose container is gone is
//! therefore not found here; the worker's heartbeats do not list it, and the manager, which
//! compares what it recorded with what a worker lists, deals with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cube_shared::{wire, State, Task};
use futures::StreamExt;
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

/// How many Task DB records a worker that starts reads at once.
const READS_AT_ONCE: usize = 32;

/// What start-up leaves to the background: containers of current placements that ended
/// while the worker was away (to report), and containers no current placement owns (to
/// remove).
#[derive(Default)]
pub(crate) struct Leftovers {
    ended: Vec<(Task, Observed)>,
    stale: Vec<Observed>,
}

impl Worker {
    /// Adopts what should run, and returns what is left to do once the worker is ready (see
    /// [`Worker::clean_up`]). `None` if it was shut down meanwhile.
    pub(crate) async fn reconcile_on_start(self: &Arc<Self>) -> Option<Leftovers> {
        let name = self.cfg.name.clone();
        let every = Duration::from_secs(1);
        let list = || self.runtime.list(&name);
        let observed = retry(&self.shutdown, every, "listing containers", list).await?;
        let tasks = self.records(observed.iter().map(|o| o.task_id)).await?;
        let mut owned = owned_placements(tasks.into_iter(), &name);
        let mut leftovers = Leftovers::default();
        let mut adopted = 0;
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
                    // A late duplicate of its start must not run it again meanwhile.
                    self.tasks.ended(task.id, task.generation);
                    leftovers.ended.push((task, o));
                }
                None => leftovers.stale.push(o),
            }
        }
        let (ended, stale) = (leftovers.ended.len(), leftovers.stale.len());
        info!(worker = %name, adopted, ended, stale, "reconciled with the Task DB");
        Some(leftovers)
    }

    /// The Task DB's records of the tasks `ids` (those it has and can decode), read a bounded
    /// number at once, each retried until read. `None` if the worker was shut down meanwhile.
    async fn records(&self, ids: impl Iterator<Item = Uuid>) -> Option<Vec<Task>> {
        let ids: HashSet<Uuid> = ids.collect();
        let every = Duration::from_secs(1);
        let reads = futures::stream::iter(ids).map(|id| async move {
            let get = || self.task_db.record(id);
            retry(&self.shutdown, every, "reading the Task DB", get).await
        });
        let read: Vec<Option<Option<bytes::Bytes>>> =
            reads.buffer_unordered(READS_AT_ONCE).collect().await;
        let mut tasks = Vec::with_capacity(read.len());
        for entry in read {
            if let Some(task) = entry?.and_then(|b| wire::decode_stored_task(&b).ok()) {
                tasks.push(task);
            }
        }
        Some(tasks)
    }

    /// What start-up left: reports the containers that ended while the worker was away and
    /// removes those it no longer owns, a bounded number at once, until done or shut down
    /// (what is left then is the next worker's to do).
    pub(crate) async fn clean_up(self: Arc<Self>, leftovers: Leftovers) {
        let Leftovers { ended, stale } = leftovers;
        if ended.is_empty() && stale.is_empty() {
            return;
        }
        let at_once = self.cfg.concurrency.max(1);
        let (n_ended, n_stale) = (ended.len(), stale.len());
        let worker = &self;
        let ended = futures::stream::iter(ended).for_each_concurrent(at_once, |(task, o)| {
            let worker = worker.clone();
            let span = info_span!("reconcile", task.id = %o.task_id, generation = o.generation, worker = %worker.cfg.name);
            async move {
                let _turn = worker.turn(task.id).await;
                worker.ended_away(task, o).await;
            }
            .instrument(span)
        });
        let stale = futures::stream::iter(stale).for_each_concurrent(at_once, |o| {
            let worker = worker.clone();
            let span = info_span!("reconcile", task.id = %o.task_id, generation = o.generation, worker = %worker.cfg.name);
            async move { worker.remove_stale(o, span).await }
        });
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = futures::future::join(ended, stale) => {
                info!(worker = %self.cfg.name, ended = n_ended, removed = n_stale, "cleaned up after start-up");
            }
        }
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
        if task.stop_requested {
            // A stop was asked and may have been lost with the worker that had it (see
            // `stop::stop_failed`): this worker carries it out.
            info!("a stop was requested for it; stopping it");
            self.keep_stopping(task.id, task.generation);
        }
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
