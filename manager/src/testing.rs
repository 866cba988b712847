//! Node sets for the scheduler's tests.

use chrono::Utc;
use cube_shared::{Node, NodeState};

use crate::scheduler::NodeView;

pub fn node(name: &str, cores: f64, memory: u64) -> Node {
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
        last_heartbeat: Utc::now(),
        version: String::new(),
        state: NodeState::Ready,
        running: Vec::new(),
        page: None,
        leaving: false,
    }
}

pub fn view(n: &Node) -> NodeView<'_> {
    NodeView {
        node: n,
        alive: true,
        cpu_reserved: 0.0,
        memory_reserved: 0,
        disk_reserved: 0,
        tasks: 0,
    }
}
