//! What the manager does about tasks that end and nodes that go quiet: restart policies with
//! backoff, lost nodes, fencing of stale copies, and drain. Each pass compares what is
//! recorded with what should be, acts on the difference, and is safe to repeat.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::subjects::pending_for;
use cube_shared::{JournalEntry, Node, NodeState, Placement, State, Task, TaskEvent};
use tracing::info;
use uuid::Uuid;

use crate::manager::Manager;
use crate::metrics::PlacementReason;
use crate::scheduler::Unschedulable;

/// The first restart waits this long; each further one twice as long, up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A task that ran this long before it ended starts its restart count afresh.
pub const HEALTHY_RUN_RESETS: Duration = Duration::from_secs(600);
/// How often a stale copy is asked again to stop.
const FENCE_AGAIN: Duration = Duration::from_secs(10);

/// The delay before restart number `count + 1`: 1 s, 2 s, 4 s, … capped at 5 minutes.
pub fn backoff(count: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(count.min(20)))
        .min(BACKOFF_CAP)
}

impl Manager {
    /// A task's container ended (or was lost): if its policy wants it back, say when.
    pub(crate) fn plan_restart(&self, task: &mut Task, now: DateTime<Utc>, immediately: bool) {
        if let (Some(start), Some(end)) = (task.start_time, task.finish_time) {
            if (end - start)
                .to_std()
                .is_ok_and(|ran| ran >= HEALTHY_RUN_RESETS)
            {
                task.restart_count = 0;
            }
        }
        task.next_attempt_at = None;
        if !task.wants_restart(task.state) {
            return;
        }
        let delay = if immediately {
            Duration::ZERO
        } else {
            backoff(task.restart_count)
        };
        task.next_attempt_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
    }

    /// Starts again every task whose restart is due, preferring the node it ran on.
    pub(crate) async fn restart_due(&mut self, now: DateTime<Utc>) {
        for id in self.cluster.restarts_due(now) {
            let Some(task) = self.cluster.task(&id).cloned() else {
                continue;
            };
            self.restart(task).await;
        }
    }

    async fn restart(&mut self, mut task: Task) {
        let previous_worker = task.worker.clone();
        let worker = match self.choose(&task, previous_worker.as_deref()) {
            Ok(w) => w,
            Err(Unschedulable(reason)) => {
                if task.error.as_deref() != Some(reason.as_str()) {
                    task.error = Some(format!("restart waits: {reason}"));
                    self.save(task);
                }
                return;
            }
        };
        task.restart_count += 1;
        let n = task.restart_count;
        let (kind, message) = match (&previous_worker, &worker) {
            (Some(p), Some(w)) if p == w => ("restarted", format!("restart {n} on {w}")),
            (Some(p), Some(w)) => ("rescheduled", format!("restart {n} moved from {p} to {w}")),
            (_, Some(w)) => ("restarted", format!("restart {n} on {w}")),
            (_, None) => ("restarted", format!("restart {n} queued for any worker")),
        };
        let mut entry = JournalEntry::new(kind, message).task(task.id);
        entry.worker = worker.clone();
        self.journal(entry).await;
        task.next_attempt_at = None;
        self.metrics.restarts.inc();
        self.assign(task, worker, PlacementReason::Restart);
    }

    /// Records a new placement of `task` on `worker` (`None`: the shared queue), then
    /// publishes it.
    pub(crate) fn assign(&mut self, mut task: Task, worker: Option<String>, why: PlacementReason) {
        task.state = State::Scheduled;
        task.worker = worker;
        task.generation += 1;
        task.container_id = None;
        task.health = None;
        // Recorded before it is published: a manager that dies in between publishes it again
        // on start, under the same message id.
        self.publish_placement(&task, why);
        self.save(task);
    }

    /// The scheduler's choice (`None`: the shared queue), or `prefer` if that node can take
    /// the task.
    pub(crate) fn choose(
        &mut self,
        task: &Task,
        prefer: Option<&str>,
    ) -> Result<Option<String>, Unschedulable> {
        let views = self.cluster.views(Utc::now(), self.cfg.node_ttl);
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

    /// Nodes silent for longer than TTL + grace are down, and their tasks are lost: `failed`
    /// with reason "node lost", then placed elsewhere per their restart policy.
    pub(crate) async fn check_liveness(&mut self, now: DateTime<Utc>) {
        // Right after a restart every heartbeat looks old: give the workers time to speak.
        if self.started.elapsed() < self.cfg.node_ttl + self.cfg.node_grace {
            return;
        }
        let limit = self.cfg.node_ttl + self.cfg.node_grace;
        let silent: Vec<Node> = self
            .cluster
            .nodes()
            .filter(|n| silent_for(n, now) > limit)
            .cloned()
            .collect();
        for node in silent {
            if node.state != NodeState::Down {
                let mut down = node.clone();
                down.state = NodeState::Down;
                self.cluster.put_node(down, self.cfg.node_ttl);
                self.journal(
                    JournalEntry::new(
                        "node-down",
                        format!("{} missed heartbeats for {:?}", node.name, limit),
                    )
                    .worker(&node.name),
                )
                .await;
            }
            for id in self.cluster.active_on(&node.name) {
                self.lose(id, &node.name, now).await;
            }
        }
    }

    async fn lose(&mut self, id: Uuid, worker: &str, now: DateTime<Utc>) {
        let Some(mut task) = self.cluster.task(&id).cloned() else {
            return;
        };
        task.state = State::Failed;
        task.finish_time = Some(now);
        task.exit_code = None;
        task.health = None;
        task.error = Some(format!("node lost: {worker} stopped sending heartbeats"));
        // A lost node is not the task's fault: no backoff.
        self.plan_restart(&mut task, now, true);
        let next = match task.next_attempt_at {
            Some(_) => "; placing it elsewhere",
            None => "; its restart policy keeps it failed",
        };
        self.journal(
            JournalEntry::new("lost", format!("node lost: {worker}{next}"))
                .task(id)
                .worker(worker),
        )
        .await;
        self.save(task);
    }

    /// A heartbeat lists the placements a worker runs; any that is no longer current (the
    /// task moved on while the worker was away, or was declared lost) is stopped there.
    pub(crate) async fn fence(&mut self, node: &Node) {
        let now = std::time::Instant::now();
        self.fenced
            .retain(|_, at| now.duration_since(*at) < FENCE_AGAIN);
        for r in &node.running {
            let stale = match self.cluster.task(&r.id) {
                None => true,
                Some(t) => {
                    let here = Placement {
                        worker: node.name.clone(),
                        generation: r.generation,
                    };
                    let current = t.worker.as_deref() == Some(node.name.as_str())
                        && t.generation == r.generation
                        && t.state.is_active();
                    // Queued on the shared queue: whichever worker took it runs the current
                    // placement, and its `running` report may still be on the way behind
                    // this heartbeat.
                    let taken_from_queue = t.worker.is_none()
                        && t.state == State::Scheduled
                        && t.generation == r.generation;
                    !current && !taken_from_queue && t.previous.as_ref() != Some(&here)
                }
            };
            if !stale || self.fenced.contains_key(&(r.id, r.generation)) {
                continue;
            }
            self.fenced.insert((r.id, r.generation), now);
            let mut stop = TaskEvent::stop(r.id);
            stop.task.generation = r.generation;
            info!(task.id = %r.id, worker = %node.name, generation = r.generation, "stopping a stale copy");
            self.publish_work(pending_for(&node.name), &stop);
            self.journal(
                JournalEntry::new(
                    "fenced",
                    format!(
                        "stopping placement {} on {}: no longer current",
                        r.generation, node.name
                    ),
                )
                .task(r.id)
                .worker(&node.name),
            )
            .await;
        }
    }

    /// Moves tasks off draining nodes: the replacement starts first; the old copy is stopped
    /// once the replacement runs (see [`Manager::replacement_running`]).
    pub(crate) async fn migrate_drained(&mut self) {
        let draining: Vec<String> = self
            .cluster
            .nodes()
            .filter(|n| n.state == NodeState::Draining)
            .map(|n| n.name.clone())
            .collect();
        for name in draining {
            for id in self.cluster.active_on(&name) {
                let Some(task) = self.cluster.task(&id).cloned() else {
                    continue;
                };
                if task.previous.is_some() || task.state != State::Running {
                    continue;
                }
                let worker = match self.choose(&task, None) {
                    Ok(w) => w,
                    Err(Unschedulable(reason)) => {
                        info!(task.id = %id, %reason, "cannot move the task off {name} yet");
                        continue;
                    }
                };
                let mut moving = task.clone();
                moving.previous = Some(Placement {
                    worker: name.clone(),
                    generation: task.generation,
                });
                let to = worker.clone().unwrap_or_else(|| "the shared queue".into());
                self.journal(
                    JournalEntry::new("moving", format!("drain: from {name} to {to}"))
                        .task(id)
                        .worker(to),
                )
                .await;
                self.assign(moving, worker, PlacementReason::Drain);
            }
        }
    }

    /// The new placement of a moving task runs: stop the old copy.
    pub(crate) async fn replacement_running(&mut self, task: &mut Task) {
        let Some(old) = task.previous.take() else {
            return;
        };
        let mut stop = TaskEvent::stop(task.id);
        stop.task.generation = old.generation;
        self.publish_work(pending_for(&old.worker), &stop);
        self.journal(
            JournalEntry::new(
                "moved",
                format!(
                    "running on {}; stopping the copy on {}",
                    or_none(&task.worker),
                    old.worker
                ),
            )
            .task(task.id)
            .worker(&old.worker),
        )
        .await;
    }

    /// Drain or undrain a node (`cube nodes drain NAME`).
    pub(crate) async fn set_drain(&mut self, name: &str, drain: bool) -> Result<Node, String> {
        let Some(mut node) = self.cluster.node(name).cloned() else {
            return Err(format!("no node {name}"));
        };
        let key = format!("drain.{name}");
        let stored = if drain {
            let at = Utc::now().to_rfc3339().into();
            self.topo
                .admin
                .put(&key, at)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.topo
                .admin
                .delete(&key)
                .await
                .map_err(|e| e.to_string())
        };
        stored.map_err(|e| format!("recording the drain: {e}"))?;
        if drain {
            self.drained.insert(name.to_string());
        } else {
            self.drained.remove(name);
        }
        node.state = match (drain, node.state) {
            (true, NodeState::Down) | (false, NodeState::Down) => NodeState::Down,
            (true, _) => NodeState::Draining,
            (false, _) => NodeState::Ready,
        };
        self.cluster.put_node(node.clone(), self.cfg.node_ttl);
        let (kind, message) = if drain {
            (
                "drain",
                format!("{name} is draining: no new work, its tasks move elsewhere"),
            )
        } else {
            ("undrain", format!("{name} takes work again"))
        };
        self.journal(JournalEntry::new(kind, message).worker(name))
            .await;
        if drain {
            self.migrate_drained().await;
        } else {
            self.place_pending().await;
        }
        Ok(node)
    }
}

fn silent_for(node: &Node, now: DateTime<Utc>) -> Duration {
    (now - node.last_heartbeat).to_std().unwrap_or_default()
}

fn or_none(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(8), Duration::from_secs(256));
        assert_eq!(backoff(9), BACKOFF_CAP);
        assert_eq!(backoff(1000), BACKOFF_CAP);
    }
}
