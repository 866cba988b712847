//! The scheduler: the advisor the manager asks where a task should run.
//!
//! The book's interface — select candidate nodes, score them, pick one — as a trait. It works
//! only from state the manager already holds (each node's capacity from its heartbeat and
//! what the manager has reserved there), so placing a task costs no round trip.

use std::collections::BTreeMap;

use cube_shared::units::format_bytes;
use cube_shared::{Constraint, Node, NodeState, Task};

use crate::cluster::room::{Room, Want};

/// A node as the scheduler sees it: capacity from heartbeats, reservations from the Task DB.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub node: &'a Node,
    pub alive: bool,
    pub cpu_reserved: f64,
    pub memory_reserved: u64,
    pub disk_reserved: u64,
    pub tasks: u32,
}

impl NodeView<'_> {
    /// Why this node cannot take `task`, or `None` if it can.
    pub fn rejects(&self, task: &Task) -> Option<String> {
        self.rejects_with(task, &task.parsed_constraints())
    }

    /// [`NodeView::rejects`] with the task's constraints parsed once for many nodes.
    pub fn rejects_with(&self, task: &Task, constraints: &[Constraint]) -> Option<String> {
        match self.node.state {
            NodeState::Down => return Some("node down".into()),
            NodeState::Unreachable => return Some("node unreachable".into()),
            NodeState::Draining => return Some("node draining".into()),
            NodeState::Ready if !self.alive => return Some("node unreachable".into()),
            NodeState::Ready => {}
        }
        if let Some(c) = constraints
            .iter()
            .find(|c| !c.allows_node(&self.node.name, &self.node.labels))
        {
            return Some(format!("constraint {c}"));
        }
        if self.cpu_reserved + task.cpu > self.node.cores + 1e-9 {
            return Some("insufficient cpu".into());
        }
        if self.memory_reserved.saturating_add(task.memory) > self.node.memory {
            return Some("insufficient memory".into());
        }
        if self.disk_reserved.saturating_add(task.disk) > self.node.disk {
            return Some("insufficient disk".into());
        }
        None
    }

    /// How full the node would be with `task` on it (see [`fullness`]).
    pub fn fullness_with(&self, task: &Task) -> f64 {
        fullness(
            self.cpu_reserved,
            self.memory_reserved,
            self.tasks,
            self.node.cores,
            self.node.memory,
            task.cpu,
            task.memory,
        )
    }
}

/// How full a node of `cores` and `memory` with these reservations would be with `cpu` and
/// `memory_added` more: the larger of its reserved cpu and memory fractions (a node offering
/// none of a resource counts as full of it), with the task count as a tie-break among equally
/// loaded nodes. The node index ([`crate::cluster::room`]) orders nodes by it with nothing
/// added, and scores with it, so that it chooses to the bit as a scan would.
pub fn fullness(
    cpu_reserved: f64,
    memory_reserved: u64,
    tasks: u32,
    cores: f64,
    memory: u64,
    cpu: f64,
    memory_added: u64,
) -> f64 {
    let cpu = fraction(cpu_reserved + cpu, cores);
    let memory = fraction((memory_reserved + memory_added) as f64, memory as f64);
    cpu.max(memory) + f64::from(tasks) * 1e-6
}

fn fraction(used: f64, capacity: f64) -> f64 {
    if capacity > 0.0 {
        used / capacity
    } else {
        1.0
    }
}

/// Why a task could not be placed: a summary a person can read, like
/// `0/3 nodes available: 2 insufficient memory, 1 node down`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable(pub String);

pub trait Scheduler: Send + Sync {
    fn name(&self) -> &'static str;

    /// The nodes that could run `task`, and a reason for each that could not.
    fn select_candidates<'n>(
        &self,
        task: &Task,
        nodes: &[NodeView<'n>],
    ) -> Result<Vec<NodeView<'n>>, Unschedulable> {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let constraints = task.parsed_constraints();
        let candidates: Vec<NodeView<'n>> = nodes
            .iter()
            .filter(|n| match n.rejects_with(task, &constraints) {
                Some(reason) => {
                    *reasons.entry(reason).or_default() += 1;
                    false
                }
                None => true,
            })
            .cloned()
            .collect();
        if !candidates.is_empty() {
            return Ok(candidates);
        }
        if nodes.is_empty() {
            return Err(Unschedulable("no workers have joined yet".to_string()));
        }
        let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        Err(Unschedulable(format!(
            "0/{} nodes available: {} (task wants cpu {}, memory {}, disk {})",
            nodes.len(),
            detail.join(", "),
            task.cpu,
            format_bytes(task.memory),
            format_bytes(task.disk)
        )))
    }

    /// A score per candidate, in the candidates' order: lower is better.
    fn score(&mut self, task: &Task, candidates: &[NodeView<'_>]) -> Vec<f64>;

    /// The chosen node's name: the lowest score.
    fn pick(&mut self, candidates: &[NodeView<'_>], scores: &[f64]) -> String {
        candidates[lowest(scores)].node.name.clone()
    }

    /// Whether placements go to the shared queue (`tasks.pending`) for any worker with room
    /// to take, rather than to a chosen worker.
    fn uses_shared_queue(&self) -> bool {
        false
    }

    /// The choice among the ready nodes in `room` that `want` allows, through the index
    /// rather than a scan (`Some(None)`: none has room), for an algorithm that has an indexed
    /// form; `None` for one that must score every node (E-PVM).
    fn place_indexed(&mut self, _room: &Room, _want: &Want) -> Option<Option<String>> {
        None
    }

    /// Select, score, pick.
    fn place(&mut self, task: &Task, nodes: &[NodeView<'_>]) -> Result<String, Unschedulable> {
        let candidates = self.select_candidates(task, nodes)?;
        let scores = self.score(task, &candidates);
        Ok(self.pick(&candidates, &scores))
    }
}

/// The index of the lowest score (the first of equals, so ties break by candidate order).
pub fn lowest(scores: &[f64]) -> usize {
    scores
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::RoundRobin;

    use crate::testing::{node, view};

    #[test]
    fn round_robin_cycles_through_nodes_in_name_order() {
        let nodes = [
            node("b", 4.0, 1 << 30),
            node("a", 4.0, 1 << 30),
            node("c", 4.0, 1 << 30),
        ];
        let views: Vec<_> = nodes.iter().map(view).collect();
        let mut rr = RoundRobin::default();
        let task = Task::new("busybox");
        let picks: Vec<String> = (0..6).map(|_| rr.place(&task, &views).unwrap()).collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn round_robin_skips_nodes_without_room() {
        let nodes = [node("a", 4.0, 1 << 30), node("b", 4.0, 64 << 20)];
        let views: Vec<_> = nodes.iter().map(view).collect();
        let mut rr = RoundRobin::default();
        let mut task = Task::new("busybox");
        task.memory = 256 << 20;
        for _ in 0..3 {
            assert_eq!(rr.place(&task, &views).unwrap(), "a");
        }
    }

    #[test]
    fn unschedulable_names_each_reason() {
        let nodes = [
            node("a", 1.0, 1 << 30),
            node("b", 4.0, 64 << 20),
            node("c", 4.0, 1 << 30),
        ];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[2].alive = false;
        let mut task = Task::new("busybox");
        task.cpu = 2.0;
        task.memory = 256 << 20;
        let err = RoundRobin::default().place(&task, &views).unwrap_err();
        assert!(err.0.starts_with("0/3 nodes available:"), "{}", err.0);
        assert!(err.0.contains("1 insufficient cpu"), "{}", err.0);
        assert!(err.0.contains("1 insufficient memory"), "{}", err.0);
        assert!(err.0.contains("1 node unreachable"), "{}", err.0);
    }

    #[test]
    fn reservations_count_against_capacity() {
        let nodes = [node("a", 2.0, 1 << 30)];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[0].cpu_reserved = 1.5;
        let mut task = Task::new("busybox");
        task.cpu = 1.0;
        assert!(RoundRobin::default().place(&task, &views).is_err());
        task.cpu = 0.5;
        assert_eq!(RoundRobin::default().place(&task, &views).unwrap(), "a");
    }

    #[test]
    fn no_workers_is_its_own_reason() {
        let err = RoundRobin::default()
            .place(&Task::new("busybox"), &[])
            .unwrap_err();
        assert_eq!(err.0, "no workers have joined yet");
    }
}
