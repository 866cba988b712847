//! The placements that ended on a worker, remembered to refuse a late duplicate of their
//! start.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

/// How many ended placements a worker remembers, to refuse a late duplicate of their start.
const FINISHED_MEMORY: usize = 100_000;

/// Placements that ended here (task id → generation), oldest forgotten first.
#[derive(Default)]
pub(crate) struct Finished {
    pub(crate) by_task: HashMap<Uuid, u64>,
    pub(crate) order: VecDeque<Uuid>,
    /// How many tasks it remembers ([`FINISHED_MEMORY`] unless a test says otherwise).
    pub(crate) limit: Option<usize>,
}

impl Finished {
    /// Remembers that placement `generation` ended (a later one that ended stays remembered:
    /// a stop of an older placement must not make a newer one startable twice).
    pub(crate) fn insert(&mut self, id: Uuid, generation: u64) {
        match self.by_task.get_mut(&id) {
            Some(g) => *g = (*g).max(generation),
            None => {
                self.by_task.insert(id, generation);
                self.order.push_back(id);
            }
        }
        while self.order.len() > self.limit.unwrap_or(FINISHED_MEMORY) {
            if let Some(old) = self.order.pop_front() {
                self.by_task.remove(&old);
            }
        }
    }

    /// Whether this placement of the task, or a later one, already ended here.
    pub(crate) fn ended(&self, id: &Uuid, generation: u64) -> bool {
        self.by_task.get(id).is_some_and(|g| *g >= generation)
    }
}
