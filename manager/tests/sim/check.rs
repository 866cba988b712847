//! The invariants: checked as records are stored, after every step, and once quiet.

use std::collections::BTreeMap;

use cube_shared::{ServiceKind, State, Task};
use uuid::Uuid;

use super::{short, timings, Queue, World, CALM_ROUNDS};

impl World {
    /// Stores a Task DB record, checking the move against the record it replaces.
    pub(super) fn store_task(&mut self, task: Task) {
        if let Some(old) = self.store.task_db.get(&task.id) {
            // A copy lost with its node, found running when the node came back before its
            // replacement was placed, is revived: the same placement runs again.
            let revived = old.state == State::Failed
                && task.state == State::Running
                && (old.worker.as_ref(), old.generation) == (task.worker.as_ref(), task.generation);
            if old.state != task.state && !old.state.can_transition_to(task.state) && !revived {
                self.broken.push(format!(
                    "illegal stored transition of {}: {} -> {} (was gen {} on {:?}: {:?}; now gen {} on {:?})",
                    task.id, old.state, task.state, old.generation, old.worker, old.error, task.generation, task.worker
                ));
            }
            // A failed move returns to the older placement, but the highest generation given
            // never goes back.
            let highest = |t: &Task| t.generation.max(t.highest_generation);
            if highest(&task) < highest(old) {
                self.broken.push(format!(
                    "generation of {} went back: {} -> {}",
                    task.id,
                    highest(old),
                    highest(&task)
                ));
            }
        }
        if task.state == State::Running {
            let placement = (
                task.id,
                task.generation,
                task.worker.clone().unwrap_or_default(),
            );
            if !self.store.started.contains(&placement) {
                self.broken.push(format!(
                    "the Task DB says placement {} of {} runs on {}, which never started it",
                    placement.1, placement.0, placement.2
                ));
            }
        }
        self.store.task_db.insert(task.id, task);
    }

    /// No task fails (or loses its placement to a replacement) while its worker and container
    /// are alive: a placement the manager gives up must have a real cause. Its container
    /// ended (once: a worker that forgot may start it again); or its worker, up, no longer lists it; or the worker was silent, in truth, for
    /// TTL + grace: it crashed, was partitioned, or its heartbeats were lost on its side. The
    /// manager's own deafness, pause, stalled connection or clock step are no cause.
    pub(super) fn check_given_up(&mut self, old: &Task, new: &Task) {
        let (Some(worker), g) = (old.worker.as_deref(), old.generation) else {
            return;
        };
        if !old.state.is_active() || new.stop_requested {
            return;
        }
        let kept = new.state.is_active() && new.worker == old.worker && new.generation == g;
        let moving_from = new
            .previous
            .as_ref()
            .is_some_and(|p| p.worker == worker && p.generation == g);
        // A node judged down came back before the replacement ran: its copy is kept and the
        // replacement called off, by design.
        let revived = old.previous.is_none() && new.state == State::Running && new.generation < g;
        if kept || moving_from || revived {
            return;
        }
        let Some(i) = self.workers.iter().position(|w| w.name == worker) else {
            return;
        };
        let limit = timings().node_ttl + timings().node_grace;
        let silence = self.mono.saturating_duration_since(self.audible[i]);
        let ended = self.store.ended.contains(&(new.id, g, worker.to_string()));
        if ended || !self.workers[i].keeps(new.id, g) || silence >= limit {
            return;
        }
        self.broken.push(format!(
            "{} gave up placement {g} on {worker} ({} -> {} gen {} on {:?}: {:?}), though its container runs, \
             its worker lists it and was silent only {silence:?} (less than {limit:?})",
            new.id, old.state, new.state, new.generation, new.worker, new.error
        ));
    }

    /// After every step: never two live containers of one placement.
    pub(super) fn check_always(&mut self) {
        let mut seen: BTreeMap<(Uuid, u64), &str> = BTreeMap::new();
        for w in &self.workers {
            for key in w.live_containers() {
                if let Some(other) = seen.insert(key, &w.name) {
                    self.broken.push(format!(
                        "placement {} of {} runs on both {other} and {}",
                        key.1, key.0, w.name
                    ));
                }
            }
        }
    }

    /// As the manager decides: no service has more copies than `count + max_parallel` (or
    /// its canaries) that it has not asked to stop.
    pub(super) fn check_services(&mut self) {
        let Some(rules) = self.manager.as_ref() else {
            return;
        };
        for (name, svc) in rules.services() {
            let Some(status) = rules.service_status(name) else {
                continue;
            };
            let kept = status.copies.iter().filter(|c| !c.stopping).count() as u32;
            let limit = match svc.kind {
                // One per node, two while a node's copy is replaced.
                ServiceKind::System => rules.cluster().nodes().count() as u32 * 2,
                _ => svc.count + svc.update.max_parallel().max(svc.update.canary()),
            };
            if kept > limit && !svc.removed {
                self.broken.push(format!(
                    "service {name} keeps {kept} copies, more than {limit} (count {}, version {})",
                    svc.count, svc.version
                ));
            }
        }
    }

    /// Services whose copies are not yet what they should be: (name, why).
    fn unsettled_services(&self) -> Vec<String> {
        let Some(rules) = self.manager.as_ref() else {
            return vec!["no manager".into()];
        };
        let mut unsettled = Vec::new();
        for (name, svc) in rules.services() {
            let Some(status) = rules.service_status(name) else {
                continue;
            };
            let current = status
                .copies
                .iter()
                .filter(|c| c.version == svc.version && c.state == "running" && !c.stopping)
                .count() as u32;
            let others = status.copies.len() as u32 - current;
            let want = if svc.removed { 0 } else { status.desired };
            let rollout_active = svc.rollout.as_ref().is_some_and(|r| r.state.is_active());
            if current != want || others > 0 || (rollout_active && !svc.removed) {
                let copies: Vec<String> = status
                    .copies
                    .iter()
                    .map(|c| {
                        format!(
                            "{} v{} {} on {:?}{}",
                            short(c.task_id),
                            c.version,
                            c.state,
                            c.node,
                            if c.stopping { " stopping" } else { "" }
                        )
                    })
                    .collect();
                unsettled.push(format!(
                    "{name}: {current} of {want} copies of version {} run, {others} others, rollout {:?}: {copies:?}",
                    svc.version,
                    svc.rollout.as_ref().map(|r| r.state)
                ));
            }
        }
        unsettled
    }

    /// Nothing waits to be delivered, nothing is due, no stale copy runs.
    pub(super) fn quiet(&self) -> bool {
        let work_waits = self.store.work.values().any(|q| !q.is_empty());
        let tasks_settled = self.store.views().iter().all(|t| {
            matches!(t.state, State::Running | State::Completed | State::Failed)
                && t.next_attempt_at.is_none()
        });
        self.store.events.is_empty()
            && self.store.services.is_empty()
            && self.store.states.is_empty()
            && self.unsettled_services().is_empty()
            && !work_waits
            && tasks_settled
            && self.stale_copies().is_empty()
    }

    /// Live containers that are not the current placement of a running task.
    fn stale_copies(&self) -> Vec<String> {
        let mut stale = Vec::new();
        for w in &self.workers {
            for (id, generation) in w.live_containers() {
                let current = self.store.view(&id).is_some_and(|t| {
                    t.state == State::Running
                        && t.generation == generation
                        && t.worker.as_deref() == Some(w.name.as_str())
                });
                if !current {
                    stale.push(format!("{id} placement {generation} on {}", w.name));
                }
            }
        }
        stale
    }

    /// Once quiet: every accepted submission ended running or in a final state with a
    /// reason, none is left scheduled, and what runs is exactly what the Task DB says.
    pub(super) fn check_quiescent(&mut self) {
        if !self.quiet() {
            self.broken.push(format!(
                "not quiet after {CALM_ROUNDS} calm rounds: services {:?}, events {}, reports {}, work {}, stale {:?}, unsettled {:?}",
                self.unsettled_services(),
                self.store.events.len(),
                self.store.states.len(),
                self.store.work.values().map(Queue::len).sum::<usize>(),
                self.stale_copies(),
                self.store
                    .views()
                    .iter()
                    .filter(|t| !matches!(t.state, State::Running | State::Completed | State::Failed)
                        || t.next_attempt_at.is_some())
                    .map(|t| format!("{} {} gen {} on {:?} next {:?} error {:?}", short(t.id), t.state, t.generation, t.worker, t.next_attempt_at, t.error))
                    .collect::<Vec<_>>()
            ));
        }
        for id in self.submitted.keys() {
            let Some(t) = self.store.view(id) else {
                self.broken.push(format!(
                    "submission {id} was acknowledged but never recorded"
                ));
                continue;
            };
            match t.state {
                State::Running => {
                    let w = t.worker.as_deref().unwrap_or("");
                    let runs = self.workers.iter().any(|x| {
                        x.name == w && x.live_containers().contains(&(t.id, t.generation))
                    });
                    if !runs {
                        self.broken.push(format!(
                            "{id} is running by the Task DB but no container runs it"
                        ));
                    }
                    if self.stopped.contains(id) {
                        self.broken.push(format!("{id} was stopped but still runs"));
                    }
                }
                State::Failed if t.error.is_none() && t.exit_code.is_none() => {
                    self.broken.push(format!("{id} failed without a reason"));
                }
                State::Completed | State::Failed => {}
                other => self.broken.push(format!("{id} stays {other}")),
            }
        }
    }
}
