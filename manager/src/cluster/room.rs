//! An index of the nodes that take work, by free room, so that a placement looks at a handful
//! of nodes rather than at every one (issue 19).
//!
//! Nodes with the same capacity and labels form a *class*: to any task they differ only by
//! their reservations and their names. Within a class, nodes are grouped by *state* (cpu,
//! memory and disk reserved, and task count), ordered by load; nodes in one state are
//! interchangeable, so the first of them by name stands for them all. A query visits the
//! classes whose labels satisfy the task's constraints and whose least-reserved member could
//! hold it, and in each the states in order of load, stopping as soon as no later state can
//! beat the best found. A placement so costs O(classes + states visited × log n): with a few
//! node shapes and task sizes, a handful of states however many nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use cube_shared::{Constraint, Node, NodeState, Task, NODE_NAME_KEY};

use super::Reservation;
use crate::scheduler::fullness;

/// An `f64` ordered by [`f64::total_cmp`], to key ordered maps.
#[derive(Debug, Clone, Copy)]
struct Ordered(f64);

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What is reserved on a node, led by its load (how full it is, as spread and binpack see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct State {
    load: Ordered,
    cpu: Ordered,
    memory: u64,
    disk: u64,
    tasks: u32,
}

/// What nodes of one class share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    cores: u64,
    memory: u64,
    disk: u64,
    labels: BTreeMap<String, String>,
}

impl Shape {
    fn of(node: &Node) -> Shape {
        Shape {
            cores: node.cores.to_bits(),
            memory: node.memory,
            disk: node.disk,
            labels: node.labels.clone(),
        }
    }

    fn is_of(&self, node: &Node) -> bool {
        self.cores == node.cores.to_bits()
            && self.memory == node.memory
            && self.disk == node.disk
            && self.labels == node.labels
    }
}

/// A count of each value, to know the least of them.
#[derive(Debug)]
struct Counts<K: Ord>(BTreeMap<K, usize>);

impl<K: Ord> Default for Counts<K> {
    fn default() -> Self {
        Counts(BTreeMap::new())
    }
}

impl<K: Ord + Copy> Counts<K> {
    fn add(&mut self, k: K) {
        *self.0.entry(k).or_default() += 1;
    }

    fn remove(&mut self, k: K) {
        if let Some(n) = self.0.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&k);
            }
        }
    }

    fn least(&self) -> Option<K> {
        self.0.keys().next().copied()
    }
}

#[derive(Debug)]
struct Class {
    shape: Shape,
    cores: f64,
    states: BTreeMap<State, BTreeSet<String>>,
    cpu: Counts<Ordered>,
    memory: Counts<u64>,
    disk: Counts<u64>,
}

impl Class {
    /// Whether a node of this class in state `s` has room for `t`: what
    /// [`NodeView::rejects`](crate::scheduler::NodeView::rejects) checks, to the bit.
    fn fits(&self, cpu: f64, memory: u64, disk: u64, t: &Task) -> bool {
        cpu + t.cpu <= self.cores + 1e-9
            && memory.saturating_add(t.memory) <= self.shape.memory
            && disk.saturating_add(t.disk) <= self.shape.disk
    }

    fn holds(&self, s: &State, t: &Task) -> bool {
        self.fits(s.cpu.0, s.memory, s.disk, t)
    }

    /// Whether some member might hold `t`: each resource on its own is free enough somewhere.
    fn could_hold(&self, want: &Want) -> bool {
        let (Some(cpu), Some(memory), Some(disk)) =
            (self.cpu.least(), self.memory.least(), self.disk.least())
        else {
            return false;
        };
        want.labels.iter().all(|c| c.allows(&self.shape.labels))
            && self.fits(cpu.0, memory, disk, want.task)
    }

    /// The first member in state `names` (by name, from `from`) that `want` allows.
    fn first<'a>(
        names: &'a BTreeSet<String>,
        from: Bound<&str>,
        want: &Want,
    ) -> Option<&'a String> {
        names
            .range::<str, _>((from, Bound::Unbounded))
            .find(|n| want.allows_name(n))
    }

    fn score(&self, s: &State, t: &Task) -> f64 {
        fullness(
            s.cpu.0,
            s.memory,
            s.tasks,
            self.cores,
            self.shape.memory,
            t.cpu,
            t.memory,
        )
    }
}

/// What a placement asks of a node besides room: its constraints, and nodes left out (the
/// nodes that already run a copy of the same service).
pub struct Want<'a> {
    pub task: &'a Task,
    labels: Vec<Constraint>,
    names: Vec<Constraint>,
    skip: &'a dyn Fn(&str) -> bool,
}

impl<'a> Want<'a> {
    pub fn new(task: &'a Task, skip: &'a dyn Fn(&str) -> bool) -> Want<'a> {
        let (names, labels) = task
            .parsed_constraints()
            .into_iter()
            .partition(|c| c.key == NODE_NAME_KEY);
        Want {
            task,
            labels,
            names,
            skip,
        }
    }

    /// The node a constraint pins the task to, if any.
    pub fn pinned(&self) -> Option<&str> {
        self.names
            .iter()
            .find(|c| c.equal)
            .map(|c| c.value.as_str())
    }

    fn allows_name(&self, name: &str) -> bool {
        let no_labels = BTreeMap::new();
        !(self.skip)(name) && self.names.iter().all(|c| c.allows_node(name, &no_labels))
    }
}

/// The index: every node that takes work (`ready`), by class and state.
#[derive(Debug, Default)]
pub struct Room {
    classes: Vec<Class>,
    ids: HashMap<Shape, usize>,
    at: HashMap<String, (usize, State)>,
}

impl Room {
    /// Files `node` under its class and state, or takes it out if it takes no work.
    pub fn update(&mut self, node: &Node, r: Reservation) {
        if node.state != NodeState::Ready {
            return self.remove(&node.name);
        }
        let class = match self.at.get(&node.name) {
            Some(&(c, _)) if self.classes[c].shape.is_of(node) => c,
            _ => self.class_for(node),
        };
        let load = fullness(r.cpu, r.memory, r.tasks, node.cores, node.memory, 0.0, 0);
        let state = State {
            load: Ordered(load),
            cpu: Ordered(r.cpu),
            memory: r.memory,
            disk: r.disk,
            tasks: r.tasks,
        };
        if self.at.get(&node.name) == Some(&(class, state)) {
            return;
        }
        self.remove(&node.name);
        let c = &mut self.classes[class];
        c.states.entry(state).or_default().insert(node.name.clone());
        c.cpu.add(state.cpu);
        c.memory.add(state.memory);
        c.disk.add(state.disk);
        self.at.insert(node.name.clone(), (class, state));
    }

    pub fn remove(&mut self, name: &str) {
        let Some((class, state)) = self.at.remove(name) else {
            return;
        };
        let c = &mut self.classes[class];
        if let Some(names) = c.states.get_mut(&state) {
            names.remove(name);
            if names.is_empty() {
                c.states.remove(&state);
            }
        }
        c.cpu.remove(state.cpu);
        c.memory.remove(state.memory);
        c.disk.remove(state.disk);
    }

    fn class_for(&mut self, node: &Node) -> usize {
        let shape = Shape::of(node);
        if let Some(&c) = self.ids.get(&shape) {
            return c;
        }
        self.classes.push(Class {
            shape: shape.clone(),
            cores: node.cores,
            states: BTreeMap::new(),
            cpu: Counts::default(),
            memory: Counts::default(),
            disk: Counts::default(),
        });
        self.ids.insert(shape, self.classes.len() - 1);
        self.classes.len() - 1
    }

    fn candidates<'s>(&'s self, want: &'s Want) -> impl Iterator<Item = &'s Class> + 's {
        self.classes.iter().filter(|c| c.could_hold(want))
    }

    /// Whether some node has room for the task and allows it.
    pub fn any(&self, want: &Want) -> bool {
        self.candidates(want).any(|c| {
            c.states.iter().any(|(s, names)| {
                c.holds(s, want.task) && Class::first(names, Bound::Unbounded, want).is_some()
            })
        })
    }

    /// The least full node after placing the task (`fullest`: the fullest), the first by name
    /// among equals: spread's and binpack's choice.
    pub fn best(&self, want: &Want, fullest: bool) -> Option<String> {
        let t = want.task;
        // (the key: lower wins, the name).
        let mut best: Option<(f64, &String)> = None;
        for c in self.candidates(want) {
            if fullest {
                // The task adds at most this much to a node's load.
                let add = |used: f64, capacity: f64| {
                    if capacity > 0.0 {
                        used / capacity
                    } else {
                        0.0
                    }
                };
                let most = add(t.cpu, c.cores).max(add(t.memory as f64, c.shape.memory as f64));
                for (s, names) in c.states.iter().rev() {
                    if best.is_some_and(|(b, _)| -(s.load.0 + most + 1e-9) > b) {
                        break;
                    }
                    consider(&mut best, c, s, names, want, -c.score(s, t));
                }
            } else {
                for (s, names) in &c.states {
                    // A node's score is at least its load.
                    if best.is_some_and(|(b, _)| s.load.0 > b) {
                        break;
                    }
                    consider(&mut best, c, s, names, want, c.score(s, t));
                }
            }
        }
        best.map(|(_, name)| name.clone())
    }

    /// The first node by name after `last` that has room for the task, wrapping to the first
    /// one: round-robin's choice.
    pub fn next_after(&self, want: &Want, last: Option<&str>) -> Option<String> {
        let mut after: Option<&String> = None;
        let mut first: Option<&String> = None;
        for c in self.candidates(want) {
            for (s, names) in &c.states {
                if !c.holds(s, want.task) {
                    continue;
                }
                if let Some(last) = last {
                    if let Some(n) = Class::first(names, Bound::Excluded(last), want) {
                        after = Some(after.map_or(n, |a| a.min(n)));
                    }
                }
                if after.is_none() {
                    if let Some(n) = Class::first(names, Bound::Unbounded, want) {
                        first = Some(first.map_or(n, |f| f.min(n)));
                    }
                }
            }
        }
        after.or(first).cloned()
    }
}

/// Keeps the better of `best` and the first allowed node in state `s` with key `key`.
fn consider<'a>(
    best: &mut Option<(f64, &'a String)>,
    c: &Class,
    s: &State,
    names: &'a BTreeSet<String>,
    want: &Want,
    key: f64,
) {
    if !c.holds(s, want.task) {
        return;
    }
    let Some(name) = Class::first(names, Bound::Unbounded, want) else {
        return;
    };
    let better = match *best {
        None => true,
        Some((b, n)) => key.total_cmp(&b).then_with(|| name.cmp(n)).is_lt(),
    };
    if better {
        *best = Some((key, name));
    }
}

#[cfg(test)]
mod tests;
