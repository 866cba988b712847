//! Placement: asking the scheduler for a node, recording the placement, and handing it to the
//! worker (or the shared queue).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cube_shared::subjects::{pending_for, PENDING};
use cube_shared::{JournalEntry, State, Task, TaskEvent};
use tracing::{info, warn};
use uuid::Uuid;

use super::{Rules, Work};
use crate::cluster::room::Want;
use crate::cluster::Mark;
use crate::metrics::PlacementReason;
use crate::scheduler::{NodeView, Scheduler, Unschedulable};

/// What placement remembers between calls.
#[derive(Debug, Default)]
pub(super) struct Placing {
    /// The cluster's mark at the end of the last pass over the waiting tasks.
    passed: Option<Mark>,
    /// Why tasks asking for each request cannot be placed, found by a scan since room was
    /// last freed or a node last changed (`reasons_at`): placements since only took room, so
    /// the answer stands, though the counts in the text may have moved a little.
    reasons: HashMap<Request, String>,
    reasons_at: (u64, u64),
    /// One task of each request the last pass could not place.
    refused: Vec<Task>,
}

/// What decides whether a task fits on a node: its resources and constraints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Request {
    cpu: u64,
    memory: u64,
    disk: u64,
    constraints: Vec<String>,
}

impl Request {
    fn of(task: &Task) -> Request {
        Request {
            cpu: task.cpu.to_bits(),
            memory: task.memory,
            disk: task.disk,
            constraints: task.constraints.clone(),
        }
    }
}

/// A copy of a service goes to a node with the fewest copies of it among those that can take
/// it: never two on one node while another has room. (Nodes that cannot take it are kept, so
/// that an unschedulable copy still says why.)
fn spread<'a>(
    copies: &HashMap<String, usize>,
    task: &Task,
    views: Vec<NodeView<'a>>,
) -> Vec<NodeView<'a>> {
    if copies.is_empty() {
        return views;
    }
    let on = |v: &NodeView| copies.get(v.node.name.as_str()).copied().unwrap_or(0);
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

impl Rules {
    /// A known task that may have stalled: pending tasks get another placement attempt and
    /// scheduled ones are handed to their worker again (idempotently).
    pub(super) fn ensure_progress(&mut self, id: Uuid, now: DateTime<Utc>) {
        let Some(task) = self.cluster.task(&id).cloned() else {
            return;
        };
        match task.state {
            State::Pending => {
                self.try_place(id, now);
            }
            State::Scheduled => self.dispatch(&task),
            _ => {}
        }
    }

    /// Asks the scheduler for a node; records and publishes the placement, or records why
    /// the task must wait (and returns false).
    pub(super) fn try_place(&mut self, id: Uuid, now: DateTime<Utc>) -> bool {
        let Some(mut task) = self.cluster.task(&id).cloned() else {
            return false;
        };
        if task.state != State::Pending {
            return false;
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
                true
            }
            Err(Unschedulable(reason)) => {
                self.waits(task, reason, now);
                false
            }
        }
    }

    /// Records why `task` waits, if that is news.
    fn waits(&mut self, mut task: Task, reason: String, now: DateTime<Utc>) {
        if task.error.as_deref() != Some(reason.as_str()) {
            self.journal(
                JournalEntry::new("unschedulable", reason.clone()).task(task.id),
                now,
            );
            task.error = Some(reason);
            self.save(task);
        }
    }

    /// Tries the waiting tasks again, oldest first, when something happened since the last
    /// pass that may let one be placed ([`Mark`]). Once a task cannot be placed, later ones
    /// that ask for the same (resources and constraints) cannot either: they wait without
    /// asking the scheduler. A pass so costs O(waiting) cheap steps plus one placement per
    /// distinct request; nothing when nothing changed, and one index query per distinct
    /// request when room was freed that none of them fits.
    pub(super) fn place_pending(&mut self, now: DateTime<Utc>) {
        let mark = self.cluster.mark();
        if !self.cluster.has_pending() || self.placing.passed == Some(mark) {
            return;
        }
        if self
            .placing
            .passed
            .is_some_and(|p| (p.nodes, p.queued) == (mark.nodes, mark.queued))
        {
            // Only room was freed: unless some request refused last time fits now, the pass
            // would place nothing. The waiting tasks are the last pass's, all refused.
            let none = |_: &str| false;
            let room = self.cluster.room();
            if !self
                .placing
                .refused
                .iter()
                .any(|t| room.any(&Want::new(t, &none)))
            {
                self.placing.passed = Some(mark);
                return;
            }
        }
        let mut examples = Vec::new();
        let mut refused: HashMap<Request, String> = HashMap::new();
        for id in self.cluster.pending() {
            let Some(task) = self.cluster.task(&id) else {
                continue;
            };
            let request = Request::of(task);
            if let Some(reason) = refused.get(&request) {
                if task.error.as_ref() != Some(reason) {
                    let (task, reason) = (task.clone(), reason.clone());
                    self.waits(task, reason, now);
                }
                continue;
            }
            if !self.try_place(id, now) {
                let Some(task) = self.cluster.task(&id) else {
                    continue;
                };
                refused.insert(request, task.error.clone().unwrap_or_default());
                examples.push(task.clone());
            }
        }
        self.placing.refused = examples;
        self.placing.passed = Some(self.cluster.mark());
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
    /// the task. Through the node index when the algorithm has an indexed form; by scanning
    /// every node otherwise, or when a task pinned to one node or a service's copies leave
    /// only a few nodes to look at. Either way the choice is the one the scan would make.
    pub(super) fn choose(
        &mut self,
        task: &Task,
        prefer: Option<&str>,
    ) -> Result<Option<String>, Unschedulable> {
        let copies = match &task.service {
            Some(service) => self.copies_per_node(service, task.id),
            None => HashMap::new(),
        };
        let has_copy = |name: &str| copies.contains_key(name);
        let want = Want::new(task, &has_copy);
        let room = self.cluster.room();
        let few: Option<Vec<&str>> = match want.pinned() {
            Some(node) => Some(vec![node]),
            // Every node with room has a copy already: they are all there is to choose from.
            None if !copies.is_empty() && !room.any(&want) => {
                Some(copies.keys().map(String::as_str).collect())
            }
            None => None,
        };
        if let Some(names) = few {
            let views = names
                .into_iter()
                .filter_map(|n| self.cluster.view(n))
                .collect();
            let views = spread(&copies, task, views);
            return match choose_among(self.scheduler.as_mut(), task, prefer, &views) {
                Err(_) => self.refuse(task, prefer, &copies),
                chosen => chosen,
            };
        }
        if self.scheduler.uses_shared_queue() {
            // Some worker must be able to take it, or it would bounce around the queue.
            return match room.any(&want) {
                true => Ok(None),
                false => self.refuse(task, prefer, &copies),
            };
        }
        if let Some(p) = prefer {
            let fits = self
                .cluster
                .view(p)
                .is_some_and(|v| v.rejects(task).is_none());
            if fits && !has_copy(p) {
                return Ok(Some(p.to_string()));
            }
        }
        match self.scheduler.place_indexed(room, &want) {
            Some(Some(node)) => Ok(Some(node)),
            Some(None) => self.refuse(task, prefer, &copies),
            None => {
                let views = spread(&copies, task, self.cluster.views());
                choose_among(self.scheduler.as_mut(), task, prefer, &views)
            }
        }
    }

    /// Why no node can take `task`, found by scanning every node (what the scheduler did before
    /// the node index), and remembered for tasks that ask for the same until room is freed or
    /// a node changes. (Should the scan find a node the index missed, it is chosen.)
    fn refuse(
        &mut self,
        task: &Task,
        prefer: Option<&str>,
        copies: &HashMap<String, usize>,
    ) -> Result<Option<String>, Unschedulable> {
        let mark = self.cluster.mark();
        let mark = (mark.freed, mark.nodes);
        if self.placing.reasons_at != mark {
            self.placing.reasons.clear();
            self.placing.reasons_at = mark;
        }
        let request = Request::of(task);
        if let Some(reason) = self.placing.reasons.get(&request) {
            return Err(Unschedulable(reason.clone()));
        }
        let views = spread(copies, task, self.cluster.views());
        let chosen = choose_among(self.scheduler.as_mut(), task, prefer, &views);
        match &chosen {
            Err(Unschedulable(reason)) => {
                self.placing.reasons.insert(request, reason.clone());
            }
            Ok(node) => warn!(task.id = %task.id, ?node, "the node index missed a node with room"),
        }
        chosen
    }

    /// How many live copies of service `service` each node runs, leaving out `task` itself.
    fn copies_per_node(&self, service: &str, task: Uuid) -> HashMap<String, usize> {
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for t in self
            .cluster
            .copies_of(service)
            .filter_map(|id| self.cluster.task(&id))
        {
            if let (true, Some(w), false) = (t.state.is_active(), t.worker.as_deref(), t.id == task)
            {
                *per_node.entry(w.to_string()).or_default() += 1;
            }
        }
        per_node
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

/// The choice among `views`, as the scheduler makes it by scanning.
fn choose_among(
    scheduler: &mut dyn Scheduler,
    task: &Task,
    prefer: Option<&str>,
    views: &[NodeView<'_>],
) -> Result<Option<String>, Unschedulable> {
    if scheduler.uses_shared_queue() {
        scheduler.select_candidates(task, views)?;
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
    scheduler.place(task, views).map(Some)
}
