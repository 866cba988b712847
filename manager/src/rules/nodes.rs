//! Nodes: heartbeats, what becomes of the tasks of a node judged down (see `liveness` for the
//! judging), revival of a returning node's copies, and fencing (a copy a heartbeat lists that
//! is no longer current is stopped).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use cube_shared::{JournalEntry, Node, NodeState, Placement, RunningTask, State, Task};
use tracing::{info, warn};
use uuid::Uuid;

use super::Rules;
use crate::metrics::RejectKind;

/// How often a stale copy is asked again to stop.
pub const FENCE_AGAIN: Duration = Duration::from_secs(10);
/// How often an unreadable heartbeat of one node is journalled again.
const UNREADABLE_AGAIN: Duration = Duration::from_secs(60);
/// How many doubted workers' names are remembered for [`UNREADABLE_AGAIN`].
const MAX_REMEMBERED_DOUBTS: usize = 10_000;

/// Whether the copy of `task` (`None`: unknown to the manager) at `generation` on `node` is
/// stale: not the current placement, not a queued placement whose `running` report may still
/// be on its way, and not the old copy of a task being moved.
pub(crate) fn is_stale(task: Option<&Task>, node: &str, generation: u64) -> bool {
    let Some(t) = task else {
        return true;
    };
    let current =
        t.worker.as_deref() == Some(node) && t.generation == generation && t.state.is_active();
    let taken_from_queue =
        t.worker.is_none() && t.state == State::Scheduled && t.generation == generation;
    let here = Placement {
        worker: node.to_string(),
        generation,
    };
    let moving_from_here = t.state.is_active() && t.previous.as_ref() == Some(&here);
    !current && !taken_from_queue && !moving_from_here
}

/// Why a task ended without its worker reporting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unseen {
    /// Its node was judged down, forgotten, or silent past `lost_after`.
    NodeLost,
    /// Its worker, though heard, stopped listing it.
    Vanished,
}

/// `cube nodes forget` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error("no node {0}")]
    NoSuchNode(String),
    #[error("{0} is heard from: only a node that went silent can be forgotten (drain it to move its tasks)")]
    Alive(String),
}

impl Rules {
    /// A heartbeat on `nodes.heartbeat.<worker>`, received at `now` (`mono` on the manager's
    /// monotonic clock: liveness is judged by when heartbeats arrive, never by the worker's
    /// clock).
    pub fn on_heartbeat(
        &mut self,
        subject: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        mono: Instant,
    ) {
        self.hearing.at(mono);
        let token = subject.rsplit('.').next().unwrap_or_default();
        let mut node = match wire::decode::<Node>(payload, MAX_MESSAGE_BYTES) {
            Ok(node) if node.name == token => node,
            Ok(node) => {
                warn!(%subject, name = %node.name, "heartbeat names another worker; ignored");
                return;
            }
            Err(e) => return self.unreadable_heartbeat(token, &e.to_string(), now, mono),
        };
        if cube_shared::validate::validate_worker_name(&node.name).is_err() {
            return;
        }
        if let Some(lie) = node.implausible() {
            return self.implausible_heartbeat(token, &lie, now, mono);
        }
        node.last_heartbeat = now;
        let name = node.name.clone();
        let was = self.cluster.node(&name).map(|n| n.state);
        let heard_before = self.hearing.heard(&name, mono);
        node.state = if node.leaving {
            NodeState::Down
        } else if self.drained.contains(&name) {
            NodeState::Draining
        } else {
            NodeState::Ready
        };
        let leaving = node.leaving;
        let running = std::mem::take(&mut node.running);
        // The list itself is not kept: it may be one page of several.
        self.cluster.put_node(node);
        if leaving && was != Some(NodeState::Down) {
            self.journal(
                JournalEntry::new(
                    "node-left",
                    format!("{name} is shutting down: no new work for it"),
                )
                .worker(&name),
                now,
            );
        } else if !leaving {
            let back = match was {
                None => Some(format!("{name} is ready")),
                Some(NodeState::Down) => Some(format!("{name} is back")),
                Some(NodeState::Unreachable) if heard_before => Some(format!("{name} is back")),
                _ => None,
            };
            if let Some(message) = back {
                self.journal(JournalEntry::new("node-joined", message).worker(&name), now);
            }
            if !matches!(was, Some(NodeState::Ready | NodeState::Draining)) {
                self.place_pending(now);
            }
        }
        if running.is_empty() {
            return;
        }
        let again = chrono::Duration::from_std(FENCE_AGAIN).unwrap_or_default();
        self.fenced.retain(|_, at| now - *at < again);
        for r in &running {
            self.revive(&name, r, now);
            if is_stale(self.cluster.task(&r.id), &name, r.generation) {
                self.fence(&name, r, now);
            } else {
                self.hearing.listed(r.id, mono);
            }
        }
    }

    /// A heartbeat that cannot be read still says its node is there; nothing it would have
    /// listed is held against the node until its heartbeats can be read again.
    /// A heartbeat that cannot be true (a capacity no host has, a reserved name): not
    /// believed, and journalled.
    fn implausible_heartbeat(&mut self, token: &str, lie: &str, now: DateTime<Utc>, mono: Instant) {
        warn!(worker = %token, %lie, "implausible heartbeat refused");
        let message = format!("a heartbeat of {token} cannot be true ({lie}); it is not believed");
        self.doubted_heartbeat(token, "heartbeat-refused", message, now, mono);
    }

    fn unreadable_heartbeat(
        &mut self,
        token: &str,
        error: &str,
        now: DateTime<Utc>,
        mono: Instant,
    ) {
        warn!(worker = %token, %error, "unreadable heartbeat");
        let message = format!("a heartbeat of {token} cannot be read ({error}); the node counts as heard, its placements are not checked");
        self.doubted_heartbeat(token, "heartbeat-unreadable", message, now, mono);
    }

    /// A report whose times are not believed: journalled as [`Rules::doubted_heartbeat`]
    /// journals.
    pub(super) fn doubted_report(&mut self, worker: &str, message: String, now: DateTime<Utc>) {
        self.journal_doubt(
            &format!("clock.{worker}"),
            worker,
            "report-clock",
            message,
            now,
        );
    }

    /// Journals `message` about `worker` at most once per [`UNREADABLE_AGAIN`] per `key`,
    /// remembering at most [`MAX_REMEMBERED_DOUBTS`] keys.
    fn journal_doubt(
        &mut self,
        key: &str,
        worker: &str,
        kind: &str,
        message: String,
        now: DateTime<Utc>,
    ) {
        let again = chrono::Duration::from_std(UNREADABLE_AGAIN).unwrap_or_default();
        if self.unreadable.get(key).is_none_or(|at| now - *at >= again) {
            if self.unreadable.len() >= MAX_REMEMBERED_DOUBTS {
                // Many names at once: forget them rather than grow without bound.
                self.unreadable.clear();
            }
            self.unreadable.insert(key.to_string(), now);
            self.journal(JournalEntry::new(kind, message).worker(worker), now);
        }
    }

    /// A heartbeat that is not believed: the node's record stays as it was (or the node is
    /// not admitted). A known node still counts as heard, so that its tasks are not judged
    /// lost for it.
    fn doubted_heartbeat(
        &mut self,
        token: &str,
        kind: &str,
        message: String,
        now: DateTime<Utc>,
        mono: Instant,
    ) {
        self.metrics.rejected(RejectKind::InvalidHeartbeat);
        let known = self.cluster.node(token).is_some();
        if known {
            self.hearing.heard(token, mono);
            for id in self.cluster.active_on(token) {
                self.hearing.listed(id, mono);
            }
        } else if kind == "heartbeat-unreadable" {
            return;
        }
        self.journal_doubt(token, token, kind, message, now);
    }

    /// Task `id` on `worker`, a node just judged down: placed elsewhere if its restart policy
    /// allows it, otherwise left waiting for its node (up to `lost_after`).
    pub(super) fn node_lost_under(&mut self, id: Uuid, worker: &str, now: DateTime<Utc>) {
        let Some(task) = self.cluster.task(&id).cloned() else {
            return;
        };
        if task.previous.is_some() || task.wants_restart(State::Failed) {
            let reason = format!("node lost: {worker} stopped sending heartbeats");
            if task.previous.is_none() {
                self.lost.insert(
                    id,
                    Placement {
                        worker: worker.to_string(),
                        generation: task.generation,
                    },
                );
            }
            return self.lose(task, worker, &reason, now);
        }
        let lost_after = self.timings.lost_after;
        self.journal(
            JournalEntry::new(
                "waiting",
                format!(
                    "its restart policy keeps it on {worker}: it waits for the node up to {lost_after:?} \
                     (`cube nodes forget {worker}` gives up at once)"
                ),
            )
            .task(id)
            .worker(worker),
            now,
        );
    }

    /// Task placed on `worker` is lost with its node: `failed` with `reason`, then placed
    /// elsewhere at once if its policy wants it back (a lost node is not the task's fault: no
    /// backoff).
    pub(super) fn lose(&mut self, task: Task, worker: &str, reason: &str, now: DateTime<Utc>) {
        self.fail_unseen(task, worker, reason, Unseen::NodeLost, now);
    }

    /// Task placed on `worker` ended unseen: `failed` with `reason` (there is no exit code),
    /// then restarted per its policy. A task that was moving there stays on the copy it moved
    /// from.
    pub(super) fn fail_unseen(
        &mut self,
        mut task: Task,
        worker: &str,
        reason: &str,
        why: Unseen,
        now: DateTime<Utc>,
    ) {
        if task.previous.is_some() {
            return self.move_failed(task, worker, reason, now);
        }
        let id = task.id;
        task.state = State::Failed;
        task.finish_time = Some(now);
        task.exit_code = None;
        task.health = None;
        task.error = Some(reason.to_string());
        super::plan_restart(&mut task, now, why == Unseen::NodeLost);
        let next = match task.next_attempt_at {
            Some(_) => "; restarting it",
            None => "; its restart policy keeps it failed",
        };
        let kind = match why {
            Unseen::NodeLost => "lost",
            Unseen::Vanished => "vanished",
        };
        self.journal(
            JournalEntry::new(kind, format!("{reason}{next}"))
                .task(id)
                .worker(worker),
            now,
        );
        self.save(task);
    }

    /// A node that was judged down lists placement `r` of a task that was placed elsewhere
    /// because of it: if the replacement has not started, the original is kept, without a
    /// restart, and the replacement is called off. Returns whether it was.
    fn revive(&mut self, node: &str, r: &RunningTask, now: DateTime<Utc>) -> bool {
        let Some(task) = self.cluster.task(&r.id) else {
            return false;
        };
        let remembered = self
            .lost
            .get(&r.id)
            .is_some_and(|p| p.worker == node && p.generation == r.generation);
        // After a manager restart only the record tells: failed as lost, not yet restarted.
        let recorded = task.state == State::Failed
            && task.next_attempt_at.is_some()
            && task.worker.as_deref() == Some(node)
            && task.generation == r.generation
            && task
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("node lost"));
        if !(remembered || recorded) {
            return false;
        }
        let mut task = task.clone();
        self.lost.remove(&r.id);
        let replacement = match task.state {
            State::Failed | State::Pending => None,
            State::Scheduled => Some((task.worker.clone(), task.generation)),
            // The replacement runs (or the task ended since): the returning copy is stale.
            _ => return false,
        };
        if task.stop_requested {
            return false;
        }
        let mut message = format!(
            "{node} is back and still runs placement {}: kept, without a restart",
            r.generation
        );
        if let Some((worker, generation)) = &replacement {
            if let Some(w) = worker {
                self.stop_copy(r.id, *generation, w);
                message.push_str(&format!("; placement {generation} on {w} is called off"));
            }
            task.restart_count = task.restart_count.saturating_sub(1);
        }
        task.highest_generation = task.highest_generation.max(task.generation);
        task.generation = r.generation;
        task.worker = Some(node.to_string());
        task.state = State::Running;
        task.error = None;
        task.finish_time = None;
        task.next_attempt_at = None;
        self.journal(
            JournalEntry::new("revived", message)
                .task(r.id)
                .worker(node),
            now,
        );
        self.save(task);
        true
    }

    /// The copy `report` speaks of ended: if it was lost with its node, it cannot be revived.
    pub(super) fn forget_lost(&mut self, report: &cube_shared::StateReport) {
        let ended = Placement {
            worker: report.worker.clone(),
            generation: report.generation.unwrap_or_default(),
        };
        if self.lost.get(&report.task_id) == Some(&ended) {
            self.lost.remove(&report.task_id);
        }
    }

    /// Forgets a node that went silent (`cube nodes forget NAME`): its tasks are lost now,
    /// restarted elsewhere per their policy or failed. If it comes back, it joins as a new
    /// node and its copies are stopped.
    pub fn forget(&mut self, name: &str, now: DateTime<Utc>) -> Result<(), ForgetError> {
        let Some(node) = self.cluster.node(name) else {
            return Err(ForgetError::NoSuchNode(name.to_string()));
        };
        if crate::cluster::alive(node) {
            return Err(ForgetError::Alive(name.to_string()));
        }
        let reason = format!("node lost: {name} was forgotten by an operator");
        for id in self.cluster.active_on(name) {
            self.lost.remove(&id);
            if let Some(task) = self.cluster.task(&id).cloned() {
                self.lose(task, name, &reason, now);
            }
        }
        self.cluster.remove_node(name);
        self.hearing.forget_node(name);
        self.journal(
            JournalEntry::new(
                "node-forgotten",
                format!("{name} was forgotten by an operator"),
            )
            .worker(name),
            now,
        );
        Ok(())
    }

    /// A stale copy a heartbeat lists (the task moved on while the worker was away, or was
    /// declared lost) is stopped there, and asked again every [`FENCE_AGAIN`] while it keeps
    /// being listed.
    fn fence(&mut self, node: &str, r: &RunningTask, now: DateTime<Utc>) {
        if self.fenced.contains_key(&(r.id, r.generation)) {
            return;
        }
        self.fenced.insert((r.id, r.generation), now);
        info!(task.id = %r.id, worker = %node, generation = r.generation, "stopping a stale copy");
        self.stop_copy(r.id, r.generation, node);
        self.journal(
            JournalEntry::new(
                "fenced",
                format!(
                    "stopping placement {} on {node}: no longer current",
                    r.generation
                ),
            )
            .task(r.id)
            .worker(node),
            now,
        );
    }
}
