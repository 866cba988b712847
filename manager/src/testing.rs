//! Node sets for the scheduler's tests.

use cube_shared::Node;

use crate::scheduler::NodeView;

pub fn node(name: &str, cores: f64, memory: u64) -> Node {
    Node::ready(name, cores, memory)
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
