//! The manager's picture of the cluster: every task, every node, and what is reserved where.
//! Owned by the manager's single loop; rebuilt from JetStream on start.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use cube_shared::{Node, NodeState, State, Task};
use uuid::Uuid;

use crate::metrics::NodeCounts;
use crate::scheduler::NodeView;

pub mod room;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub cpu: f64,
    pub memory: u64,
    pub disk: u64,
    pub tasks: u32,
}

impl Reservation {
    fn add(&mut self, t: &Task) {
        self.cpu += t.cpu;
        self.memory += t.memory;
        self.disk += t.disk;
        self.tasks += 1;
    }

    fn remove(&mut self, t: &Task) {
        self.cpu = (self.cpu - t.cpu).max(0.0);
        self.memory = self.memory.saturating_sub(t.memory);
        self.disk = self.disk.saturating_sub(t.disk);
        self.tasks = self.tasks.saturating_sub(1);
    }
}

/// Why [`Cluster::find`] found no task; the text is what `cube status` prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("no task {0}")]
    NoTask(Uuid),
    #[error("no task matches `{0}`")]
    NoMatch(String),
    #[error("`{0}` matches {1} tasks; give more of the id")]
    Ambiguous(String, usize),
}

#[derive(Default)]
pub struct Cluster {
    /// Each task on the heap of its own: a hash table never shrinks, and under churn (tasks
    /// submitted and forgotten all the time) it doubles once its tombstones fill it while it
    /// is more than half full. With tasks (680 bytes each) in its slots, that doubling
    /// took 46 MiB more for good (`cube bench soak`: manager RSS 95 → 142 MiB at 380,000
    /// tasks, 30,000 kept); with boxes in them, 24 bytes a slot, a task's memory goes when it
    /// is forgotten.
    tasks: HashMap<Uuid, Box<Task>>,
    nodes: BTreeMap<String, Node>,
    reserved: HashMap<String, Reservation>,
    /// Tasks waiting for a node, oldest first. May hold ids that have since moved on; they
    /// are dropped when met.
    pending: VecDeque<Uuid>,
    /// Failed tasks whose restart policy will start them again.
    restarting: HashSet<Uuid>,
    /// Copies of each service (see [`Cluster::copies_of`]).
    copies: HashMap<String, std::collections::BTreeSet<Uuid>>,
    /// How many tasks are in each state, indexed like [`State::ALL`]: kept by
    /// [`Cluster::put_task`], so it is right from the first task loaded after a restart.
    by_state: [usize; State::ALL.len()],
    /// The nodes that take work, by free room.
    room: room::Room,
    /// What may have changed the fate of a waiting task (see [`Mark`]).
    mark: Mark,
}

/// Counts of the changes that may let a waiting task be placed or change why it waits: room
/// freed on a node, a node joined, left or changed (state, capacity, labels), a task newly
/// waiting. Nothing else can: a placement only takes room. So a pass over the waiting tasks
/// with the same mark as the last one would decide nothing new.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub freed: u64,
    pub nodes: u64,
    pub queued: u64,
}

impl Cluster {
    pub fn task(&self, id: &Uuid) -> Option<&Task> {
        self.tasks.get(id).map(|t| &**t)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// How many tasks are in each state, indexed like [`State::ALL`].
    pub fn count_by_state(&self) -> [usize; State::ALL.len()] {
        self.by_state
    }

    /// How many failed tasks wait for a restart.
    pub fn restarting_count(&self) -> usize {
        self.restarting.len()
    }

    /// Records a task's new version, keeping reservations and the pending queue in step.
    /// This is the only way a task changes, so the accounting cannot drift.
    pub fn put_task(&mut self, task: Task) {
        let held = |t: &Task| match (t.state.is_active(), &t.worker) {
            (true, Some(w)) => Some((w.clone(), t.cpu, t.memory, t.disk)),
            _ => None,
        };
        let before = self.task(&task.id).and_then(held);
        let after = held(&task);
        if before != after {
            if let Some((w, ..)) = &before {
                let old = &self.tasks[&task.id];
                self.reserved.entry(w.clone()).or_default().remove(old);
                self.reindex(w);
                self.mark.freed += 1;
            }
            if let Some((w, ..)) = &after {
                self.reserved.entry(w.clone()).or_default().add(&task);
                self.reindex(w);
            }
        }
        if let Some(old) = self.tasks.get(&task.id) {
            self.by_state[old.state as usize] -= 1;
        }
        self.by_state[task.state as usize] += 1;
        let newly_pending = task.state == cube_shared::State::Pending
            && self
                .tasks
                .get(&task.id)
                .is_none_or(|old| old.state != cube_shared::State::Pending);
        if newly_pending {
            self.pending.push_back(task.id);
            self.mark.queued += 1;
        }
        if let Some(service) = &task.service {
            self.copies
                .entry(service.clone())
                .or_default()
                .insert(task.id);
        }
        if task.state == cube_shared::State::Failed && task.next_attempt_at.is_some() {
            self.restarting.insert(task.id);
        } else {
            self.restarting.remove(&task.id);
        }
        self.tasks.insert(task.id, Box::new(task));
    }

    /// Forgets task `id` (an ended one: it holds no reservation and waits for nothing).
    pub fn remove_task(&mut self, id: &Uuid) -> Option<Task> {
        let task = self.tasks.remove(id)?;
        if let (true, Some(w)) = (task.state.is_active(), &task.worker) {
            self.reserved.entry(w.clone()).or_default().remove(&task);
            self.reindex(w);
            self.mark.freed += 1;
        }
        self.by_state[task.state as usize] -= 1;
        self.restarting.remove(id);
        if let Some(service) = &task.service {
            self.forget_copy(service, *id);
        }
        Some(*task)
    }

    /// The copies of service `name` the reconciler still looks at: every live one, and ended
    /// ones until it lets them go ([`Cluster::forget_copy`]).
    pub fn copies_of(&self, name: &str) -> impl Iterator<Item = Uuid> + '_ {
        self.copies.get(name).into_iter().flatten().copied()
    }

    /// The reconciler no longer needs to see copy `id` of service `name` (it ended).
    pub fn forget_copy(&mut self, name: &str, id: Uuid) {
        if let Some(ids) = self.copies.get_mut(name) {
            ids.remove(&id);
            if ids.is_empty() {
                self.copies.remove(name);
            }
        }
    }

    /// The ids of tasks still pending, oldest first (compacting the queue as it goes).
    pub fn pending(&mut self) -> Vec<Uuid> {
        let tasks = &self.tasks;
        self.pending.retain(|id| {
            tasks
                .get(id)
                .is_some_and(|t| t.state == cube_shared::State::Pending)
        });
        self.pending.iter().copied().collect()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Finds a task by full id, unique id prefix or unique name.
    pub fn find(&self, query: &str) -> Result<&Task, NotFound> {
        if let Ok(id) = query.parse::<Uuid>() {
            return self.task(&id).ok_or(NotFound::NoTask(id));
        }
        let matches: Vec<&Task> = self
            .tasks()
            .filter(|t| t.id.to_string().starts_with(query) || t.name == query)
            .collect();
        match matches.as_slice() {
            [t] => Ok(t),
            [] => Err(NotFound::NoMatch(query.to_string())),
            _ => Err(NotFound::Ambiguous(query.to_string(), matches.len())),
        }
    }

    /// Failed tasks whose restart is due at `now`, in id order (decisions must not depend on
    /// a hash map's order: the simulation test replays them from a seed).
    pub fn restarts_due(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        let mut due: Vec<Uuid> = self
            .restarting
            .iter()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .and_then(|t| t.next_attempt_at)
                    .is_some_and(|at| at <= now)
            })
            .copied()
            .collect();
        due.sort_unstable();
        due
    }

    /// Tasks placed on `worker` that are scheduled or running there, in id order.
    pub fn active_on(&self, worker: &str) -> Vec<Uuid> {
        if self.reserved.get(worker).is_none_or(|r| r.tasks == 0) {
            return Vec::new();
        }
        let mut ids: Vec<Uuid> = self
            .tasks
            .values()
            .filter(|t| t.state.is_active() && t.worker.as_deref() == Some(worker))
            .map(|t| t.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Records a node as the rules now see it.
    pub fn put_node(&mut self, node: Node) {
        let changed = self.nodes.get(&node.name).is_none_or(|old| {
            old.state != node.state
                || old.cores.to_bits() != node.cores.to_bits()
                || old.memory != node.memory
                || old.disk != node.disk
                || old.labels != node.labels
        });
        let name = node.name.clone();
        self.nodes.insert(name.clone(), node);
        if changed {
            self.mark.nodes += 1;
            self.reindex(&name);
        }
    }

    /// Forgets a node (`cube nodes forget`); what was reserved there goes with its tasks.
    pub fn remove_node(&mut self, name: &str) -> Option<Node> {
        let node = self.nodes.remove(name)?;
        self.mark.nodes += 1;
        self.room.remove(name);
        Some(node)
    }

    /// Files node `name` in the index again, after a change to it or its reservations.
    fn reindex(&mut self, name: &str) {
        match self.nodes.get(name) {
            Some(node) => {
                let r = self.reserved.get(name).copied().unwrap_or_default();
                self.room.update(node, r);
            }
            None => self.room.remove(name),
        }
    }

    /// The index of the nodes that take work, by free room.
    pub fn room(&self) -> &room::Room {
        &self.room
    }

    /// See [`Mark`].
    pub fn mark(&self) -> Mark {
        self.mark
    }

    /// Node `name` as the scheduler sees it.
    pub fn view(&self, name: &str) -> Option<NodeView<'_>> {
        self.nodes.get(name).map(|n| self.view_of(n))
    }

    /// Nodes as the scheduler sees them.
    pub fn views(&self) -> Vec<NodeView<'_>> {
        self.nodes.values().map(|n| self.view_of(n)).collect()
    }

    fn view_of<'a>(&'a self, n: &'a Node) -> NodeView<'a> {
        let r = self.reserved.get(&n.name).copied().unwrap_or_default();
        NodeView {
            node: n,
            alive: alive(n),
            cpu_reserved: r.cpu,
            memory_reserved: r.memory,
            disk_reserved: r.disk,
            tasks: r.tasks,
        }
    }

    /// How many nodes are in each state, as `cube nodes` shows them.
    pub fn node_counts(&self) -> NodeCounts {
        let mut counts = NodeCounts::default();
        for n in self.nodes.values() {
            counts.add(n.state);
        }
        counts
    }

    /// Nodes as `cube nodes` shows them, by name (those after `after`, if given): the
    /// heartbeat plus the manager's reservations.
    pub fn node_list(&self, after: Option<&str>) -> Vec<Node> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        self.nodes
            .range((from, Bound::Unbounded))
            .map(|(_, n)| self.view_of(n))
            .map(|v| {
                // Without the placements the worker listed for fencing: thousands of nodes with
                // a hundred tasks each would not fit in one reply.
                let mut n = Node {
                    running: Vec::new(),
                    page: None,
                    ..v.node.clone()
                };
                n.cpu_allocated = v.cpu_reserved;
                n.memory_allocated = v.memory_reserved;
                n.disk_allocated = v.disk_reserved;
                n.task_count = v.tasks;
                n
            })
            .collect()
    }

    /// A task as the API shows it: marked when its node has gone silent, so that `cube
    /// status` does not claim it runs.
    pub fn shown(&self, task: &Task) -> Task {
        let mut t = task.clone();
        t.node_unreachable = t.state.is_active()
            && t.worker
                .as_deref()
                .and_then(|w| self.nodes.get(w))
                .is_some_and(|n| matches!(n.state, NodeState::Unreachable | NodeState::Down));
        t
    }
}

/// A node takes work only while it is heard (the rules set its state from the manager's own
/// monotonic clock; see `rules::liveness`).
pub fn alive(node: &Node) -> bool {
    matches!(node.state, NodeState::Ready | NodeState::Draining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_task_states() {
        let mut c = Cluster::default();
        let mut t = Task::new("busybox");
        t.cpu = 1.0;
        t.memory = 64 << 20;
        c.put_task(t.clone());
        assert_eq!(c.pending(), vec![t.id]);
        t.state = State::Scheduled;
        t.worker = Some("w1".into());
        c.put_task(t.clone());
        assert!(c.pending().is_empty());
        assert_eq!(c.reserved["w1"].cpu, 1.0);
        t.state = State::Running;
        c.put_task(t.clone());
        assert_eq!(c.reserved["w1"].tasks, 1);
        t.state = State::Completed;
        c.put_task(t);
        assert_eq!(c.reserved["w1"], Reservation::default());
    }

    #[test]
    fn state_is_an_index_into_all() {
        for (i, s) in State::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i, "{s}");
        }
    }

    #[test]
    fn counts_by_state_follow_every_change() {
        let mut c = Cluster::default();
        let mut a = Task::new("busybox");
        let b = Task::new("busybox");
        c.put_task(a.clone());
        c.put_task(b.clone());
        assert_eq!(c.count_by_state(), [2, 0, 0, 0, 0]);
        a.state = State::Scheduled;
        c.put_task(a.clone());
        a.state = State::Running;
        c.put_task(a.clone());
        // The same version again changes nothing.
        c.put_task(a.clone());
        assert_eq!(c.count_by_state(), [1, 0, 1, 0, 0]);
        a.state = State::Failed;
        c.put_task(a);
        assert_eq!(c.count_by_state(), [1, 0, 0, 0, 1]);
        assert_eq!(c.count_by_state().iter().sum::<usize>(), c.task_count());
    }

    #[test]
    fn nodes_count_by_the_state_the_rules_gave_them() {
        let mut c = Cluster::default();
        let node = |name: &str, state| Node {
            state,
            ..crate::testing::node(name, 1.0, 1 << 30)
        };
        c.put_node(node("a", NodeState::Ready));
        c.put_node(node("b", NodeState::Draining));
        c.put_node(node("c", NodeState::Unreachable));
        c.put_node(node("d", NodeState::Down));
        assert_eq!(
            c.node_counts(),
            NodeCounts {
                ready: 1,
                draining: 1,
                unreachable: 1,
                down: 1
            }
        );
        let alive: Vec<bool> = c.views().iter().map(|v| v.alive).collect();
        assert_eq!(alive, [true, true, false, false]);
    }

    #[test]
    fn tasks_on_a_silent_node_show_as_unreachable() {
        let mut c = Cluster::default();
        c.put_node(Node {
            state: NodeState::Unreachable,
            ..crate::testing::node("w1", 1.0, 1 << 30)
        });
        let mut t = Task::new("busybox");
        t.state = State::Running;
        t.worker = Some("w1".into());
        c.put_task(t.clone());
        assert!(c.shown(&t).node_unreachable);
        t.state = State::Completed;
        assert!(!c.shown(&t).node_unreachable);
    }

    #[test]
    fn find_by_prefix_or_name() {
        let mut c = Cluster::default();
        let mut t = Task::new("busybox");
        t.name = "web".into();
        c.put_task(t.clone());
        assert_eq!(c.find("web").unwrap().id, t.id);
        assert_eq!(c.find(&t.id.to_string()[..6]).unwrap().id, t.id);
        assert!(c.find("nope").is_err());
    }
}
