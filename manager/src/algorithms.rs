//! The placement algorithms behind the [`Scheduler`] trait. Each scores candidates from what
//! the manager already holds (reservations and the latest heartbeat): no stats call, no round
//! trip per node. Lower scores win; ties go to the first candidate in name order.

use cube_shared::Task;

use crate::cluster::room::{Room, Want};
use crate::scheduler::{lowest, NodeView, Scheduler};

/// The algorithms `cube manager --scheduler` accepts, with one line each.
pub const ALGORITHMS: &[(&str, &str)] = &[
    (
        "spread",
        "the least-loaded node that fits (default): tasks spread evenly",
    ),
    (
        "binpack",
        "the fullest node that fits: as few nodes as possible",
    ),
    (
        "epvm",
        "the book's E-PVM: least marginal cost of memory, cpu and jobs on an exponential scale",
    ),
    (
        "round-robin",
        "each placement to the next node in name order (the book's first scheduler)",
    ),
    (
        "queue",
        "publish to the shared tasks.pending queue: the first worker with room takes it",
    ),
];

/// The scheduler called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Scheduler>> {
    Some(match name {
        "spread" => Box::new(Spread),
        "binpack" => Box::new(BinPack),
        "epvm" => Box::new(Epvm),
        "round-robin" => Box::<RoundRobin>::default(),
        "queue" => Box::new(Queue),
        _ => return None,
    })
}

/// Tasks per core at which E-PVM's job term reaches 1 (the book uses 4 jobs a node).
const JOBS_PER_CORE: f64 = 4.0;
/// The base of E-PVM's exponential cost (the book's `LIEB`).
const LIEB: f64 = 1.539_600_717_839_002;

/// The least-loaded node that fits: load after placing the task (the larger of its cpu and
/// memory fractions), then the fewest tasks.
#[derive(Debug, Default)]
pub struct Spread;

impl Scheduler for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn score(&mut self, task: &Task, candidates: &[NodeView<'_>]) -> Vec<f64> {
        candidates.iter().map(|n| n.fullness_with(task)).collect()
    }

    fn place_indexed(&mut self, room: &Room, want: &Want) -> Option<Option<String>> {
        Some(room.best(want, false))
    }
}

/// The fullest node that fits: highest load after placing the task, then the most tasks.
#[derive(Debug, Default)]
pub struct BinPack;

impl Scheduler for BinPack {
    fn name(&self) -> &'static str {
        "binpack"
    }

    fn score(&mut self, task: &Task, candidates: &[NodeView<'_>]) -> Vec<f64> {
        candidates.iter().map(|n| -n.fullness_with(task)).collect()
    }

    fn place_indexed(&mut self, room: &Room, want: &Want) -> Option<Option<String>> {
        Some(room.best(want, true))
    }
}

/// E-PVM (Amir et al., as in the book): the marginal cost of adding the task to a node, with
/// each resource's cost exponential in its utilisation, so that a node near full is avoided
/// steeply. Memory and cpu utilisation come from reservations (cpu also from the heartbeat's
/// measured usage, whichever is higher); jobs count against cores.
#[derive(Debug, Default)]
pub struct Epvm;

impl Epvm {
    fn marginal(before: f64, after: f64) -> f64 {
        LIEB.powf(after) - LIEB.powf(before)
    }
}

impl Scheduler for Epvm {
    fn name(&self) -> &'static str {
        "epvm"
    }

    fn score(&mut self, task: &Task, candidates: &[NodeView<'_>]) -> Vec<f64> {
        candidates
            .iter()
            .map(|n| {
                let cores = n.node.cores.max(f64::EPSILON);
                let memory = (n.node.memory as f64).max(1.0);
                let mem_before = n.memory_reserved as f64 / memory;
                let mem_after = (n.memory_reserved + task.memory) as f64 / memory;
                let cpu_before = (n.cpu_reserved / cores).max(n.node.cpu_usage);
                let cpu_after = cpu_before + task.cpu / cores;
                let max_jobs = cores * JOBS_PER_CORE;
                let jobs_before = f64::from(n.tasks) / max_jobs;
                let jobs_after = f64::from(n.tasks + 1) / max_jobs;
                let jobs = Self::marginal(jobs_before, jobs_after);
                (Self::marginal(mem_before, mem_after) + jobs)
                    + (Self::marginal(cpu_before, cpu_after) + jobs)
            })
            .collect()
    }
}

/// No choice of node: the task goes to the shared queue and the first worker with room takes
/// it. The manager still checks that some node could (else the task waits, with a reason).
#[derive(Debug, Default)]
pub struct Queue;

impl Scheduler for Queue {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn uses_shared_queue(&self) -> bool {
        true
    }

    fn score(&mut self, _task: &Task, candidates: &[NodeView<'_>]) -> Vec<f64> {
        vec![0.0; candidates.len()]
    }
}

/// The book's first scheduler: each placement goes to the next node in name order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last: Option<String>,
}

impl RoundRobin {
    /// Round-robin as if it had last chosen `last`.
    pub fn after(last: Option<String>) -> RoundRobin {
        RoundRobin { last }
    }
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    /// The first candidate after the last node chosen (by name, wrapping) scores 0; the rest
    /// score by their distance from it.
    fn score(&mut self, _task: &Task, candidates: &[NodeView<'_>]) -> Vec<f64> {
        let mut names: Vec<&str> = candidates.iter().map(|c| c.node.name.as_str()).collect();
        names.sort_unstable();
        let start = match &self.last {
            Some(last) => names.partition_point(|n| *n <= last.as_str()) % names.len(),
            None => 0,
        };
        candidates
            .iter()
            .map(|c| {
                let pos = names.binary_search(&c.node.name.as_str()).unwrap_or(0);
                ((pos + names.len() - start) % names.len()) as f64
            })
            .collect()
    }

    fn pick(&mut self, candidates: &[NodeView<'_>], scores: &[f64]) -> String {
        let name = candidates[lowest(scores)].node.name.clone();
        self.last = Some(name.clone());
        name
    }

    fn place_indexed(&mut self, room: &Room, want: &Want) -> Option<Option<String>> {
        let name = room.next_after(want, self.last.as_deref());
        if name.is_some() {
            self.last.clone_from(&name);
        }
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cube_shared::{Node, State};
    use proptest::prelude::*;

    use super::*;
    use crate::cluster::Cluster;
    use crate::testing::node;

    const MIB: u64 = 1 << 20;

    /// Places `n` tasks of `memory` bytes one after another, as the manager would (each
    /// placement reserves), and counts them per node.
    fn distribute(name: &str, nodes: &[Node], n: usize, memory: u64) -> BTreeMap<String, usize> {
        let mut cluster = Cluster::default();
        for node in nodes {
            cluster.put_node(node.clone());
        }
        let mut scheduler = by_name(name).unwrap();
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let mut task = Task::new("busybox");
            task.memory = memory;
            let chosen = scheduler.place(&task, &cluster.views()).unwrap();
            *counts.entry(chosen.clone()).or_default() += 1;
            task.state = State::Running;
            task.worker = Some(chosen);
            cluster.put_task(task);
        }
        counts
    }

    fn three_nodes() -> Vec<Node> {
        vec![
            node("a", 4.0, 256 * MIB),
            node("b", 4.0, 256 * MIB),
            node("c", 4.0, 256 * MIB),
        ]
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn spread_evens_out() {
        let got = distribute("spread", &three_nodes(), 10, 16 * MIB);
        assert_eq!(got, counts(&[("a", 4), ("b", 3), ("c", 3)]));
        // Without any resources asked, the task count decides.
        let got = distribute("spread", &three_nodes(), 10, 0);
        assert_eq!(got, counts(&[("a", 4), ("b", 3), ("c", 3)]));
    }

    #[test]
    fn binpack_fills_one_node_before_the_next() {
        let got = distribute("binpack", &three_nodes(), 10, 64 * MIB);
        assert_eq!(got, counts(&[("a", 4), ("b", 4), ("c", 2)]));
    }

    #[test]
    fn round_robin_ignores_load() {
        let got = distribute("round-robin", &three_nodes(), 10, 16 * MIB);
        assert_eq!(got, counts(&[("a", 4), ("b", 3), ("c", 3)]));
    }

    #[test]
    fn epvm_prefers_the_cheaper_node() {
        let mut busy = node("a", 4.0, 1 << 30);
        busy.cpu_usage = 0.9;
        let nodes = [busy, node("b", 4.0, 1 << 30)];
        let mut task = Task::new("busybox");
        task.cpu = 1.0;
        task.memory = 256 * MIB;
        let views: Vec<_> = nodes.iter().map(crate::testing::view).collect();
        assert_eq!(Epvm.place(&task, &views).unwrap(), "b");
        // Memory already reserved costs more on an exponential scale.
        let nodes = [node("a", 4.0, 1 << 30), node("b", 4.0, 1 << 30)];
        let mut views: Vec<_> = nodes.iter().map(crate::testing::view).collect();
        views[1].memory_reserved = 768 * MIB;
        assert_eq!(Epvm.place(&task, &views).unwrap(), "a");
        let scores = Epvm.score(&task, &views);
        assert!(scores[0] < scores[1], "{scores:?}");
    }

    #[test]
    fn constraints_choose_the_node_and_explain_refusals() {
        let mut eu = node("eu-1", 4.0, 1 << 30);
        eu.labels.insert("zone".into(), "eu".into());
        let mut us = node("us-1", 4.0, 1 << 30);
        us.labels.insert("zone".into(), "us".into());
        let nodes = [eu, us];
        let views: Vec<_> = nodes.iter().map(crate::testing::view).collect();
        let mut task = Task::new("busybox");
        task.constraints = vec!["zone=us".into()];
        for name in ["spread", "binpack", "epvm", "round-robin"] {
            assert_eq!(
                by_name(name).unwrap().place(&task, &views).unwrap(),
                "us-1",
                "{name}"
            );
        }
        task.constraints = vec!["zone!=us".into()];
        assert_eq!(Spread.place(&task, &views).unwrap(), "eu-1");
        task.constraints = vec!["zone=ap".into()];
        task.memory = 2 << 30;
        let err = Spread.place(&task, &views).unwrap_err();
        assert!(
            err.0
                .starts_with("0/2 nodes available: 2 constraint zone=ap"),
            "{}",
            err.0
        );
    }

    #[test]
    fn queue_only_checks_that_someone_could() {
        let nodes = [node("a", 1.0, 64 * MIB)];
        let views: Vec<_> = nodes.iter().map(crate::testing::view).collect();
        let mut task = Task::new("busybox");
        assert!(Queue.uses_shared_queue());
        assert!(Queue.select_candidates(&task, &views).is_ok());
        task.memory = 128 * MIB;
        assert!(Queue.select_candidates(&task, &views).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit {
            cpu: f64,
            memory: u64,
            zone: Option<(u8, bool)>,
        },
        Exit(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..4, 0u64..2048, proptest::option::of((0u8..3, any::<bool>()))).prop_map(
                |(quarters, mib, zone)| Op::Submit {
                    cpu: f64::from(quarters) * 0.25,
                    memory: mib * MIB,
                    zone,
                }
            ),
            1 => any::<usize>().prop_map(Op::Exit),
        ]
    }

    proptest! {
        /// No algorithm ever places a task on a node without room for it or against its
        /// constraints, whatever the nodes and the stream of submissions and exits; and
        /// when it refuses, no node could have taken the task.
        #[test]
        fn placements_respect_room_and_constraints(
            specs in proptest::collection::vec((1u32..8, 256u64..8192, 0u8..3), 1..6),
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            for (name, _) in ALGORITHMS.iter().filter(|(n, _)| *n != "queue") {
                let mut cluster = Cluster::default();
                for (i, (cores, mib, zone)) in specs.iter().enumerate() {
                    let mut n = node(&format!("n{i}"), f64::from(*cores), mib * MIB);
                    n.labels.insert("zone".into(), format!("z{zone}"));
                    cluster.put_node(n);
                }
                let mut scheduler = by_name(name).unwrap();
                let mut running = Vec::new();
                for op in &ops {
                    match op {
                        Op::Submit { cpu, memory, zone } => {
                            let mut task = Task::new("busybox");
                            task.cpu = *cpu;
                            task.memory = *memory;
                            if let Some((z, equal)) = zone {
                                let op = if *equal { "=" } else { "!=" };
                                task.constraints = vec![format!("zone{op}z{z}")];
                            }
                            let views = cluster.views();
                            match scheduler.place(&task, &views) {
                                Ok(chosen) => {
                                    let view = views.iter().find(|v| v.node.name == chosen).unwrap();
                                    prop_assert_eq!(view.rejects(&task), None, "{} chose {}", name, chosen);
                                    drop(views);
                                    task.state = State::Running;
                                    task.worker = Some(chosen);
                                    running.push(task.id);
                                    cluster.put_task(task);
                                }
                                Err(_) => {
                                    prop_assert!(views.iter().all(|v| v.rejects(&task).is_some()), "{} refused a task some node could take", name);
                                }
                            }
                        }
                        Op::Exit(i) if !running.is_empty() => {
                            let id = running.swap_remove(i % running.len());
                            let mut task = cluster.task(&id).unwrap().clone();
                            task.state = State::Completed;
                            cluster.put_task(task);
                        }
                        Op::Exit(_) => {}
                    }
                    for v in cluster.views() {
                        prop_assert!(v.cpu_reserved <= v.node.cores + 1e-9, "{}: cpu over on {}", name, v.node.name);
                        prop_assert!(v.memory_reserved <= v.node.memory, "{}: memory over on {}", name, v.node.name);
                    }
                }
            }
        }
    }
}
