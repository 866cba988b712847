//! A node: the machine a worker runs on, as its heartbeats describe it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How the manager regards a node.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Ready,
    Down,
    Draining,
    /// Silent for longer than the TTL: no new work, its tasks' fate unknown until it speaks
    /// again or stays silent past the grace.
    Unreachable,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
            NodeState::Unreachable => "unreachable",
        })
    }
}

/// A worker's node. Workers send it as their heartbeat (capacity and usage); the manager adds
/// what it has reserved there (`*_allocated`, `task_count`) and the node's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    /// The worker's name: unique in the cluster, a single NATS subject token.
    pub name: String,
    #[serde(default)]
    pub address: String,
    /// Cores the worker offers to Cube.
    pub cores: f64,
    /// Fraction of all cores in use on the machine, 0.0 – 1.0.
    #[serde(default)]
    pub cpu_usage: f64,
    /// Bytes of memory the worker offers to Cube.
    pub memory: u64,
    #[serde(default)]
    pub memory_used: u64,
    #[serde(default)]
    pub memory_allocated: u64,
    /// Bytes of disk the worker offers to Cube.
    #[serde(default)]
    pub disk: u64,
    #[serde(default)]
    pub disk_used: u64,
    #[serde(default)]
    pub disk_allocated: u64,
    #[serde(default)]
    pub cpu_allocated: f64,
    #[serde(default)]
    pub task_count: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub last_heartbeat: DateTime<Utc>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub state: NodeState,
    /// The placements the worker runs, as it reports them: the manager stops any that are no
    /// longer current (a worker that comes back after being declared down).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<RunningTask>,
    /// Which part of the worker's placement list this heartbeat carries: a worker running
    /// more than [`HEARTBEAT_PAGE`] placements sends one heartbeat message per page, so no
    /// heartbeat grows with the task count. Absent: the list is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Page>,
    /// The worker's last heartbeat before it shuts down: no new work for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// The most cores a node may claim: more than any one host has.
pub const MAX_NODE_CORES: f64 = 4096.0;
/// The most memory, and disk, a node may claim (64 TiB, 1 PiB).
pub const MAX_NODE_MEMORY: u64 = 64 << 40;
pub const MAX_NODE_DISK: u64 = 1 << 50;
/// Names that belong to the manager, the client and the shared worker user.
pub const RESERVED_NODE_NAMES: [&str; 3] = ["manager", "client", "workers"];

impl Node {
    /// A ready node named `name` offering `cores`, `memory` bytes and 1 TiB of disk, with
    /// nothing reserved or running, heard now: what tests and benchmarks build on.
    pub fn ready(name: &str, cores: f64, memory: u64) -> Node {
        Node {
            name: name.into(),
            address: String::new(),
            cores,
            cpu_usage: 0.0,
            memory,
            memory_used: 0,
            memory_allocated: 0,
            disk: 1 << 40,
            disk_used: 0,
            disk_allocated: 0,
            cpu_allocated: 0.0,
            task_count: 0,
            labels: Default::default(),
            last_heartbeat: chrono::Utc::now(),
            version: String::new(),
            state: NodeState::Ready,
            running: Vec::new(),
            page: None,
            leaving: false,
        }
    }

    /// Why the node's heartbeat cannot be true (a capacity no host has, a reserved name), if
    /// it cannot: a worker that lies is not believed.
    pub fn implausible(&self) -> Option<String> {
        let name = &self.name;
        if RESERVED_NODE_NAMES.contains(&name.as_str()) {
            return Some(format!("the name {name} is reserved"));
        }
        let finite = [self.cores, self.cpu_usage, self.cpu_allocated]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0);
        if !finite || self.cores > MAX_NODE_CORES {
            return Some(format!(
                "{name} claims {} cores; a host has 0 to {MAX_NODE_CORES}",
                self.cores
            ));
        }
        if self.memory > MAX_NODE_MEMORY {
            return Some(format!(
                "{name} claims {} bytes of memory; a host has at most {MAX_NODE_MEMORY}",
                self.memory
            ));
        }
        if self.disk > MAX_NODE_DISK {
            return Some(format!(
                "{name} claims {} bytes of disk; a host has at most {MAX_NODE_DISK}",
                self.disk
            ));
        }
        None
    }
}

/// At most this many placements are listed in one heartbeat message (about 30 KB of JSON,
/// well under the 64 KiB a heartbeat may take).
pub const HEARTBEAT_PAGE: usize = 500;

/// One page of a worker's placement list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Page {
    /// 0-based index of this page.
    pub index: u32,
    /// How many pages the worker sent for this heartbeat.
    pub count: u32,
    /// How many placements the worker runs, over all pages.
    pub total: u32,
}

/// One placement a worker runs (or is starting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunningTask {
    pub id: uuid::Uuid,
    pub generation: u64,
}
