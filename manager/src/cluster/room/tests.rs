//! The index against the scan it replaces: on random clusters, changed at random, every query
//! answers what scanning every node with the same algorithm answers.

use std::collections::BTreeSet;

use cube_shared::{Node, NodeState, State, Task};
use proptest::prelude::*;

use super::Want;
use crate::algorithms::{BinPack, RoundRobin, Spread};
use crate::cluster::Cluster;
use crate::scheduler::{NodeView, Scheduler};
use crate::testing::node;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    /// A task of this size goes to node `on` (modulo the node count), room or not: the index
    /// must follow whatever the Task DB says.
    Place {
        on: usize,
        cpu: f64,
        memory: u64,
        disk: u64,
    },
    /// The `i`th placed task ends.
    End(usize),
    /// Node `i` changes state, or shape (a worker restarted with other limits).
    Node(usize, NodeState, Option<usize>),
    Forget(usize),
}

const SHAPES: [(f64, u64, u64); 5] = [
    (1.0, 256 * MIB, 1 << 30),
    (2.0, 1024 * MIB, 1 << 30),
    (4.0, 1024 * MIB, 4 << 30),
    (0.0, 512 * MIB, 1 << 30),
    (0.5, 0, 1 << 30),
];

fn cpu() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..9).prop_map(|q| f64::from(q) * 0.25),
        (0u32..12).prop_map(|t| f64::from(t) * 0.1)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let state = prop_oneof![
        4 => Just(NodeState::Ready),
        1 => Just(NodeState::Draining),
        1 => Just(NodeState::Unreachable),
        1 => Just(NodeState::Down),
    ];
    prop_oneof![
        6 => (any::<usize>(), cpu(), 0u64..6, 0u64..3).prop_map(|(on, cpu, m, d)| Op::Place {
            on,
            cpu,
            memory: m * 96 * MIB,
            disk: d * (400 << 20),
        }),
        3 => any::<usize>().prop_map(Op::End),
        1 => (any::<usize>(), state, proptest::option::of(0usize..SHAPES.len()))
            .prop_map(|(i, s, shape)| Op::Node(i, s, shape)),
        1 => any::<usize>().prop_map(Op::Forget),
    ]
}

/// A task to place: a size, perhaps a zone or a node constraint.
fn ask() -> impl Strategy<Value = Task> {
    (cpu(), 0u64..8, 0u64..3, 0u8..6, 0usize..8).prop_map(|(cpu, m, d, c, n)| {
        let mut t = Task::new("busybox");
        t.cpu = cpu;
        t.memory = m * 64 * MIB;
        t.disk = d * (512 << 20);
        t.constraints = match c {
            0 => vec![format!("zone=z{}", n % 3)],
            1 => vec![format!("zone!=z{}", n % 3)],
            2 => vec![format!("cube.node!=n{n}")],
            3 => vec![format!("cube.node=n{n}")],
            _ => Vec::new(),
        };
        t
    })
}

fn shaped(i: usize, shape: usize) -> Node {
    let (cores, memory, disk) = SHAPES[shape];
    let mut n = node(&format!("n{i}"), cores, memory);
    n.disk = disk;
    n.labels.insert("zone".into(), format!("z{}", i % 3));
    n
}

/// The scan's answer: `scheduler` over the views `skip` leaves.
fn scan(
    scheduler: &mut dyn Scheduler,
    task: &Task,
    views: &[NodeView<'_>],
    skip: &BTreeSet<String>,
) -> Option<String> {
    let views: Vec<_> = views
        .iter()
        .filter(|v| !skip.contains(&v.node.name))
        .cloned()
        .collect();
    scheduler.place(task, &views).ok()
}

fn check(cluster: &Cluster, task: &Task, skip: &BTreeSet<String>, last: Option<String>) {
    let views = cluster.views();
    let skipped = |n: &str| skip.contains(n);
    let want = Want::new(task, &skipped);
    let room = cluster.room();
    let spread = scan(&mut Spread, task, &views, skip);
    assert_eq!(room.best(&want, false), spread, "spread, {task:?}");
    assert_eq!(room.any(&want), spread.is_some(), "any, {task:?}");
    let binpack = scan(&mut BinPack, task, &views, skip);
    assert_eq!(room.best(&want, true), binpack, "binpack, {task:?}");
    let mut rr = RoundRobin::after(last.clone());
    let expected = scan(&mut rr, task, &views, skip);
    assert_eq!(
        room.next_after(&want, last.as_deref()),
        expected,
        "round-robin after {last:?}, {task:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_index_chooses_as_the_scan_does(
        shapes in proptest::collection::vec(0usize..SHAPES.len(), 1..12),
        ops in proptest::collection::vec(op(), 0..60),
        asks in proptest::collection::vec((ask(), proptest::collection::btree_set(0usize..12, 0..3), proptest::option::of(0usize..13)), 1..8),
    ) {
        let mut cluster = Cluster::default();
        for (i, shape) in shapes.iter().enumerate() {
            cluster.put_node(shaped(i, *shape));
        }
        let mut placed = Vec::new();
        for op in &ops {
            match op {
                Op::Place { on, cpu, memory, disk } => {
                    let mut t = Task::new("busybox");
                    (t.cpu, t.memory, t.disk) = (*cpu, *memory, *disk);
                    t.state = State::Running;
                    t.worker = Some(format!("n{}", on % shapes.len()));
                    placed.push(t.id);
                    cluster.put_task(t);
                }
                Op::End(i) if !placed.is_empty() => {
                    let id = placed.swap_remove(i % placed.len());
                    let mut t = cluster.task(&id).unwrap().clone();
                    t.state = State::Completed;
                    cluster.put_task(t);
                }
                Op::End(_) => {}
                Op::Node(i, state, shape) => {
                    let name = format!("n{}", i % shapes.len());
                    let mut n = match (cluster.node(&name), shape) {
                        (Some(n), None) => n.clone(),
                        (_, s) => shaped(i % shapes.len(), s.unwrap_or(0)),
                    };
                    n.state = *state;
                    cluster.put_node(n);
                }
                Op::Forget(i) => {
                    cluster.remove_node(&format!("n{}", i % shapes.len()));
                }
            }
            for (task, skip, last) in &asks {
                let skip = skip.iter().map(|i| format!("n{i}")).collect();
                check(&cluster, task, &skip, last.map(|i| format!("n{i}")));
            }
        }
    }
}

/// Nodes that differ only by name are one state of one class: the first by name wins, and
/// the others are not looked at.
#[test]
fn twins_go_by_name() {
    let mut cluster = Cluster::default();
    for name in ["c", "a", "b"] {
        cluster.put_node(node(name, 2.0, 1024 * MIB));
    }
    let task = Task::new("busybox");
    let none = |_: &str| false;
    let want = Want::new(&task, &none);
    assert_eq!(cluster.room().best(&want, false).as_deref(), Some("a"));
    assert_eq!(cluster.room().best(&want, true).as_deref(), Some("a"));
    assert_eq!(
        cluster.room().next_after(&want, Some("a")).as_deref(),
        Some("b")
    );
    assert_eq!(
        cluster.room().next_after(&want, Some("c")).as_deref(),
        Some("a")
    );
    let not_a = |n: &str| n == "a";
    let want = Want::new(&task, &not_a);
    assert_eq!(cluster.room().best(&want, false).as_deref(), Some("b"));
}
