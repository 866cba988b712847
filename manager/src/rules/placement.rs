//! Placement: asking the scheduler for a node, recording the placement, and handing it to the
//! worker (or the shared queue).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cube_shared::subjects::{pending_for, PENDING};
use cube_shared::{JournalEntry, State, Task, TaskEvent};
use tracing::info;
use uuid::Uuid;

use super::{Rules, Work};
use crate::metrics::PlacementReason;
use crate::scheduler::{NodeView, Unschedulable};

impl Rules {
    /// A known task that may have stalled: pending tasks get another placement attempt and
    /// scheduled ones are handed to their worker again (idempotently).
    pub(super) fn ensure_progress(&mut self, id: Uuid, now: DateTime<Utc>) {
        let Some(task) = self.cluster.task(&id).cloned() else {
            return;
        };
        match task.state {
            State::Pending => self.try_place(id, now),
            State::Scheduled => self.dispatch(&task),
            _ => {}
        }
    }

    /// Asks the scheduler for a node; records and publishes the placement, or records why
    /// the task must wait.
    pub(super) fn try_place(&mut self, id: Uuid, now: DateTime<Utc>) {
        let Some(mut task) = self.cluster.task(&id).cloned() else {
            return;
        };
        if task.state != State::Pending {
            return;
        }
        match self.choose(&task, None) {
            Ok(worker) => {
                task.error = None;
                let entry = match &worker {
                    Some(w) => JournalEntry::new(
                        "scheduled",
                        format!("placed on {w} by {}", self.scheduler.name()),
                    )
                    .worker(w),
                    None => JournalEntry::new(
                        "scheduled",
                        "queued on tasks.pending for the first worker with room",
                    ),
                };
                self.assign(task, worker, PlacementReason::New);
                self.journal(entry.task(id), now);
            }
            Err(Unschedulable(reason)) => {
                if task.error.as_deref() != Some(reason.as_str()) {
                    self.journal(
                        JournalEntry::new("unschedulable", reason.clone()).task(id),
                        now,
                    );
                    task.error = Some(reason);
                    self.save(task);
                }
            }
        }
    }

    /// Tries every waiting task again, oldest first.
    pub(super) fn place_pending(&mut self, now: DateTime<Utc>) {
        if !self.cluster.has_pending() {
            return;
        }
        for id in self.cluster.pending() {
            self.try_place(id, now);
        }
    }

    /// Records a new placement of `task` on `worker` (`None`: the shared queue) and queues its
    /// work. Recorded before it is published: a manager that dies in between publishes it
    /// again on start, under the same message id.
    pub(super) fn assign(&mut self, mut task: Task, worker: Option<String>, why: PlacementReason) {
        task.state = State::Scheduled;
        task.worker = worker;
        task.generation = task.generation.max(task.highest_generation) + 1;
        task.highest_generation = 0;
        task.container_id = None;
        task.health = None;
        self.placements.inc(why);
        if let Some(received) = self.awaiting_placement.remove(&task.id) {
            self.effects.placed.push(received);
        }
        self.dispatch(&task);
        self.hearing.touch(task.id);
        self.save(task);
    }

    /// The scheduler's choice (`None`: the shared queue), or `prefer` if that node can take
    /// the task.
    pub(super) fn choose(
        &mut self,
        task: &Task,
        prefer: Option<&str>,
    ) -> Result<Option<String>, Unschedulable> {
        let views = match &task.service {
            Some(service) => self.spread(service, task, self.cluster.views()),
            None => self.cluster.views(),
        };
        if self.scheduler.uses_shared_queue() {
            // Some worker must be able to take it, or it would bounce around the queue.
            self.scheduler.select_candidates(task, &views)?;
            return Ok(None);
        }
        if let Some(p) = prefer {
            if views
                .iter()
                .any(|v| v.node.name == p && v.rejects(task).is_none())
            {
                return Ok(Some(p.to_string()));
            }
        }
        self.scheduler.place(task, &views).map(Some)
    }

    /// A copy of a service goes to a node with the fewest copies of it among those that can
    /// take it: never two on one node while another has room. (Nodes that cannot take it are
    /// kept, so that an unschedulable copy still says why.)
    fn spread<'a>(
        &self,
        service: &str,
        task: &Task,
        views: Vec<NodeView<'a>>,
    ) -> Vec<NodeView<'a>> {
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for t in self
            .cluster
            .copies_of(service)
            .filter_map(|id| self.cluster.task(&id))
        {
            if let (true, Some(w), false) =
                (t.state.is_active(), t.worker.as_deref(), t.id == task.id)
            {
                *per_node.entry(w).or_default() += 1;
            }
        }
        let on = |v: &NodeView| per_node.get(v.node.name.as_str()).copied().unwrap_or(0);
        let Some(fewest) = views
            .iter()
            .filter(|v| v.rejects(task).is_none())
            .map(on)
            .min()
        else {
            return views;
        };
        views
            .into_iter()
            .filter(|v| v.rejects(task).is_some() || on(v) == fewest)
            .collect()
    }

    /// Queues a recorded placement: to its worker, or to the shared queue.
    fn dispatch(&mut self, task: &Task) {
        let subject = match &task.worker {
            Some(worker) => pending_for(worker),
            None => PENDING.to_string(),
        };
        self.effects.work.push(Work {
            subject,
            event: TaskEvent::placement(task),
        });
    }

    /// Queues a stop of placement `generation` of task `id` for `worker`.
    pub(super) fn stop_copy(&mut self, id: Uuid, generation: u64, worker: &str) {
        let mut stop = TaskEvent::stop(id);
        stop.task.generation = generation;
        self.effects.work.push(Work {
            subject: pending_for(worker),
            event: stop,
        });
    }

    /// Re-publishes the work of every task still `scheduled` after a restart: the manager may
    /// have died between recording a placement and publishing it. The message id is the
    /// placement's, so JetStream drops the copy of one that did go out, and a worker that
    /// already handled it recognises it. The shell calls this once the state reports that
    /// waited for the manager are applied.
    pub fn resend_placements(&mut self) {
        if !self.resend_due {
            return;
        }
        self.resend_due = false;
        let mut scheduled: Vec<Task> = self
            .cluster
            .tasks()
            .filter(|t| t.state == State::Scheduled)
            .cloned()
            .collect();
        scheduled.sort_unstable_by_key(|t| t.id);
        info!(
            count = scheduled.len(),
            "re-sending placements recorded before the restart"
        );
        for task in scheduled {
            self.dispatch(&task);
        }
        // Stops recorded but perhaps never sent (a client's stop comes again with its
        // unacknowledged event; the rules' own stops, of service copies, would not).
        let mut stopping: Vec<(Uuid, u64, String)> = self
            .cluster
            .tasks()
            .filter(|t| t.stop_requested && t.state.is_active())
            .filter_map(|t| Some((t.id, t.generation, t.worker.clone()?)))
            .collect();
        stopping.sort_unstable();
        for (id, generation, worker) in stopping {
            self.stop_copy(id, generation, &worker);
        }
    }
}
