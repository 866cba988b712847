//! Drain: an operator takes a node out of service; its tasks move elsewhere, the replacement
//! starting before the old copy is stopped.

use chrono::{DateTime, Utc};
use cube_shared::{JournalEntry, Node, NodeState, Placement, State, Task};
use tracing::info;

use super::Rules;
use crate::metrics::PlacementReason;
use crate::scheduler::Unschedulable;

/// A drain asked for a node the manager does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no node {0}")]
pub struct NoSuchNode(pub String);

impl Rules {
    /// Whether `name` is a node that can be drained or undrained. The shell asks before it
    /// records the drain in the `cube-admin` bucket, then calls [`Rules::set_drain`].
    pub fn check_drain(&self, name: &str) -> Result<(), NoSuchNode> {
        match self.cluster.node(name) {
            Some(_) => Ok(()),
            None => Err(NoSuchNode(name.to_string())),
        }
    }

    /// Drains or undrains a node (`cube nodes drain NAME`), once the shell has recorded it.
    pub fn set_drain(
        &mut self,
        name: &str,
        drain: bool,
        now: DateTime<Utc>,
    ) -> Result<Node, NoSuchNode> {
        let Some(mut node) = self.cluster.node(name).cloned() else {
            return Err(NoSuchNode(name.to_string()));
        };
        if drain {
            self.drained.insert(name.to_string());
        } else {
            self.drained.remove(name);
        }
        node.state = match (drain, node.state) {
            (_, silent @ (NodeState::Down | NodeState::Unreachable)) => silent,
            (true, _) => NodeState::Draining,
            (false, _) => NodeState::Ready,
        };
        self.cluster.put_node(node.clone());
        let (kind, message) = if drain {
            (
                "drain",
                format!("{name} is draining: no new work, its tasks move elsewhere"),
            )
        } else {
            ("undrain", format!("{name} takes work again"))
        };
        self.journal(JournalEntry::new(kind, message).worker(name), now);
        if drain {
            self.migrate_drained(now);
        } else {
            self.place_pending(now);
        }
        Ok(node)
    }

    /// Moves tasks off draining nodes: the replacement starts first; the old copy is stopped
    /// once the replacement runs (see [`Rules::replacement_running`]).
    pub(super) fn migrate_drained(&mut self, now: DateTime<Utc>) {
        if self.drained.is_empty() {
            return;
        }
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
                    now,
                );
                self.assign(moving, worker, PlacementReason::Drain);
            }
        }
    }

    /// The new placement of a moving task runs: stop the old copy.
    pub(super) fn replacement_running(&mut self, task: &mut Task, now: DateTime<Utc>) {
        let Some(old) = task.previous.take() else {
            return;
        };
        self.stop_copy(task.id, old.generation, &old.worker);
        self.journal(
            JournalEntry::new(
                "moved",
                format!(
                    "running on {}; stopping the copy on {}",
                    task.worker.as_deref().unwrap_or("-"),
                    old.worker
                ),
            )
            .task(task.id)
            .worker(&old.worker),
            now,
        );
    }
}
