//! Nodes: heartbeats, liveness (a silent node is down and its tasks are lost) and fencing (a
//! copy a heartbeat lists that is no longer current is stopped).

use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use cube_shared::{JournalEntry, Node, NodeState, Placement, State, Task};
use tracing::{info, warn};
use uuid::Uuid;

use super::Rules;

/// How often a stale copy is asked again to stop.
pub const FENCE_AGAIN: Duration = Duration::from_secs(10);

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

impl Rules {
    /// A heartbeat on `nodes.heartbeat.<worker>`, received at `now`.
    pub fn on_heartbeat(&mut self, subject: &str, payload: &[u8], now: DateTime<Utc>) {
        let token = subject.rsplit('.').next().unwrap_or_default();
        let mut node = match wire::decode::<Node>(payload, MAX_MESSAGE_BYTES) {
            Ok(node) if node.name == token => node,
            Ok(node) => {
                warn!(%subject, name = %node.name, "heartbeat names another worker; ignored");
                return;
            }
            Err(e) => {
                warn!(%subject, error = %e, "unreadable heartbeat; ignored");
                return;
            }
        };
        if cube_shared::validate::validate_worker_name(&node.name).is_err() {
            return;
        }
        // Liveness is judged by the manager's clock, never the worker's.
        node.last_heartbeat = now;
        let name = node.name.clone();
        let was = self.cluster.node(&name).map(|n| n.state);
        node.state = if node.leaving {
            NodeState::Down
        } else if self.drained.contains(&name) {
            NodeState::Draining
        } else {
            NodeState::Ready
        };
        let leaving = node.leaving;
        let running = node.running.clone();
        let fresh = self.cluster.put_node(node, now, self.timings.node_ttl);
        if leaving && was != Some(NodeState::Down) {
            self.journal(
                JournalEntry::new(
                    "node-left",
                    format!("{name} is shutting down: no new work for it"),
                )
                .worker(&name),
                now,
            );
        } else if !leaving && (fresh || was == Some(NodeState::Down)) {
            let message = if was.is_some() {
                format!("{name} is back")
            } else {
                format!("{name} is ready")
            };
            self.journal(JournalEntry::new("node-joined", message).worker(&name), now);
            self.place_pending(now);
        }
        if !running.is_empty() {
            self.fence(&name, &running, now);
        }
    }

    /// Nodes silent for longer than TTL + grace are down, and their tasks are lost: `failed`
    /// with reason "node lost", then placed elsewhere per their restart policy.
    pub(super) fn check_liveness(&mut self, now: DateTime<Utc>) {
        let limit = self.timings.node_ttl + self.timings.node_grace;
        // Right after a start every heartbeat looks old: give the workers time to speak.
        if elapsed(self.started, now) < limit {
            return;
        }
        let silent: Vec<Node> = self
            .cluster
            .nodes()
            .filter(|n| elapsed(n.last_heartbeat, now) > limit)
            .cloned()
            .collect();
        for node in silent {
            let name = node.name.clone();
            if node.state != NodeState::Down {
                let down = Node {
                    state: NodeState::Down,
                    ..node
                };
                self.cluster.put_node(down, now, self.timings.node_ttl);
                self.journal(
                    JournalEntry::new(
                        "node-down",
                        format!("{name} missed heartbeats for {limit:?}"),
                    )
                    .worker(&name),
                    now,
                );
            }
            for id in self.cluster.active_on(&name) {
                self.lose(id, &name, now);
            }
        }
    }

    fn lose(&mut self, id: Uuid, worker: &str, now: DateTime<Utc>) {
        let Some(mut task) = self.cluster.task(&id).cloned() else {
            return;
        };
        if task.previous.is_some() {
            // It was moving here: it stays on the copy it was moving away from.
            let reason = format!("node lost: {worker} stopped sending heartbeats");
            return self.move_failed(task, worker, &reason, now);
        }
        task.state = State::Failed;
        task.finish_time = Some(now);
        task.exit_code = None;
        task.health = None;
        task.error = Some(format!("node lost: {worker} stopped sending heartbeats"));
        // A lost node is not the task's fault: no backoff.
        super::plan_restart(&mut task, now, true);
        let next = match task.next_attempt_at {
            Some(_) => "; placing it elsewhere",
            None => "; its restart policy keeps it failed",
        };
        self.journal(
            JournalEntry::new("lost", format!("node lost: {worker}{next}"))
                .task(id)
                .worker(worker),
            now,
        );
        self.save(task);
    }

    /// A heartbeat lists the placements a worker runs; any that is no longer current (the
    /// task moved on while the worker was away, or was declared lost) is stopped there, and
    /// asked again every [`FENCE_AGAIN`] while it keeps being listed.
    fn fence(&mut self, node: &str, running: &[cube_shared::RunningTask], now: DateTime<Utc>) {
        let again = chrono::Duration::from_std(FENCE_AGAIN).unwrap_or_default();
        self.fenced.retain(|_, at| now - *at < again);
        for r in running {
            if !is_stale(self.cluster.task(&r.id), node, r.generation)
                || self.fenced.contains_key(&(r.id, r.generation))
            {
                continue;
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
}

/// How long since `since`, at `now` (zero if the clock went back).
fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}
