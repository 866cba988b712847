//! The worker's picture of its tasks, with one owner: a slot per task it is starting, running
//! or handling a message for, the placements that ended here, and what the node offers.
//!
//! Invariants, kept by the methods below rather than by their callers:
//! - a task that runs here has a claim (its resources count against the node);
//! - a stop request is only remembered for a task that runs here, and goes with it;
//! - a slot with nothing in it (no claim, no container, no output follower) is removed as soon
//!   as no operation on the task holds or awaits its turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cube_shared::Task;
use prometheus::IntGauge;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};
use tokio_util::sync::DropGuard;
use uuid::Uuid;

use crate::finished::Finished;
use crate::logs::Follower;

/// How long a stop request explains the death of the container it was for.
const STOP_MEMORY: Duration = Duration::from_secs(600);

/// What a task holds on this node: (cores, bytes of memory).
pub(crate) type Resources = (f64, u64);

/// The container of a task's placement that runs here.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placement {
    pub generation: u64,
    pub container_id: String,
    pub start_time: Option<DateTime<Utc>>,
}

struct Running {
    placement: Placement,
    /// What its health check last found and was reported.
    health: Option<cube_shared::Health>,
    /// Stops the task's health checks when the placement is forgotten.
    _checks: Option<DropGuard>,
}

/// Everything the worker knows about one task.
#[derive(Default)]
struct Slot {
    /// Operations on one task run one at a time, in the order their messages arrived.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The room taken for the task, and the placement it was taken for: the one running, or
    /// one being started (which a heartbeat lists too).
    claim: Option<Held>,
    running: Option<Running>,
    /// The publisher of the running container's output, and the placement it follows.
    follower: Option<(u64, Follower)>,
    /// When a stop was asked for the running container, and for which placement: the death
    /// of that placement's container is then not a failure (a later placement's still is).
    stop_requested: Option<(u64, Instant)>,
}

/// Room held for one placement of a task.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Held {
    generation: u64,
    resources: Resources,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.claim.is_none() && self.running.is_none() && self.follower.is_none()
    }

    /// Nobody holds or awaits the task's turn but the slot itself (the turn is only cloned
    /// under the table's lock, so this cannot change while the caller holds it).
    fn is_idle(&self) -> bool {
        self.is_empty() && Arc::strong_count(&self.turn) == 1
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((_, follower)) = self.follower.take() {
            follower.cancel();
        }
    }
}

/// Whether `task` fits next to `claimed` in `capacity` (`None`: not known yet, anything fits).
pub(crate) fn fits(
    capacity: Option<Resources>,
    claimed: impl Iterator<Item = Resources>,
    task: &Task,
) -> bool {
    let Some((cores, memory)) = capacity else {
        return true;
    };
    let (cpu, mem) = claimed.fold((0.0, 0u64), |(c, m), (tc, tm)| (c + tc, m + tm));
    cpu + task.cpu <= cores + 1e-9 && mem.saturating_add(task.memory) <= memory
}

/// Why a start got no claim.
#[derive(Debug, PartialEq)]
pub(crate) enum NoClaim {
    /// The placement already runs here.
    Running,
    /// The node has no room for it.
    NoRoom,
}

#[derive(Default)]
struct Tasks {
    slots: HashMap<Uuid, Slot>,
    finished: Finished,
    /// What the worker offers, from its last heartbeat.
    capacity: Option<Resources>,
    /// How many slots have a running container.
    running: usize,
}

impl Tasks {
    /// Removes the task's slot if nothing is in it and nobody waits for its turn.
    fn tidy(&mut self, id: Uuid) {
        if self.slots.get(&id).is_some_and(Slot::is_idle) {
            self.slots.remove(&id);
        }
    }
}

/// The worker's tasks, shared by its handlers. A std mutex, as in mini-redis' `Db`: every
/// critical section is a few map operations that never await, so the lock is never held
/// across a suspension point and an async mutex would only add cost.
pub(crate) struct Table {
    tasks: Mutex<Tasks>,
    /// `cube_worker_tasks_running`, kept equal to the running containers.
    gauge: IntGauge,
}

impl Table {
    pub(crate) fn new(gauge: IntGauge) -> Arc<Table> {
        Arc::new(Table {
            tasks: Mutex::default(),
            gauge,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the task's turn (after every operation on it that arrived before), then for
    /// `permit`. Call in arrival order.
    pub(crate) async fn turn(
        self: &Arc<Self>,
        id: Uuid,
        permit: impl std::future::Future<Output = OwnedSemaphorePermit>,
    ) -> Turn {
        let lock = self.lock().slots.entry(id).or_default().turn.clone();
        let guard = lock.lock_owned().await;
        Turn {
            table: self.clone(),
            id,
            guard: Some(guard),
            _permit: permit.await,
        }
    }

    /// Takes room for the task: checked against the node's capacity with `check_room` (a task
    /// from the shared queue), else taken regardless (the manager placed it and checked).
    /// Checked and taken in one step, so concurrent starts cannot overcommit.
    pub(crate) fn claim(self: &Arc<Self>, task: &Task, check_room: bool) -> Result<Claim, NoClaim> {
        let mut tasks = self.lock();
        let tasks = &mut *tasks;
        // An older placement that still runs here does not block a newer one: the task was
        // lost (its node fell silent) and placed here again; the start retires the old copy.
        let running = tasks.slots.get(&task.id).and_then(|s| s.running.as_ref());
        if running.is_some_and(|r| r.placement.generation >= task.generation) {
            return Err(NoClaim::Running);
        }
        if check_room {
            let others = tasks.slots.iter().filter(|(id, _)| **id != task.id);
            let held = others.filter_map(|(_, s)| Some(s.claim?.resources));
            if !fits(tasks.capacity, held, task) {
                return Err(NoClaim::NoRoom);
            }
        }
        let held = Held {
            generation: task.generation,
            resources: (task.cpu, task.memory),
        };
        let previous = tasks.slots.entry(task.id).or_default().claim.replace(held);
        Ok(Claim {
            table: self.clone(),
            id: task.id,
            previous,
            committed: false,
        })
    }

    /// Records the task's running container, under the claim it was started with.
    pub(crate) fn run(&self, claim: Claim, placement: Placement, checks: Option<DropGuard>) {
        let mut tasks = self.lock();
        let slot = tasks.slots.entry(claim.id).or_default();
        let was_running = slot.running.is_some();
        slot.running = Some(Running {
            placement,
            health: None,
            _checks: checks,
        });
        if !was_running {
            tasks.running += 1;
        }
        self.gauge.set(tasks.running as i64);
        claim.commit();
    }

    /// Notes what the health check of placement `generation` of task `id` found, as reported.
    pub(crate) fn set_health(&self, id: Uuid, generation: u64, health: cube_shared::Health) {
        let mut tasks = self.lock();
        let running = tasks.slots.get_mut(&id).and_then(|s| s.running.as_mut());
        if let Some(r) = running.filter(|r| r.placement.generation == generation) {
            r.health = Some(health);
        }
    }

    /// The placement of the task that runs here, with its health as last reported.
    pub(crate) fn status(&self, id: Uuid) -> Option<(Placement, Option<cube_shared::Health>)> {
        let tasks = self.lock();
        let r = tasks.slots.get(&id)?.running.as_ref()?;
        Some((r.placement.clone(), r.health))
    }

    /// The placement of the task that runs here.
    pub(crate) fn running(&self, id: Uuid) -> Option<Placement> {
        let tasks = self.lock();
        tasks
            .slots
            .get(&id)?
            .running
            .as_ref()
            .map(|r| r.placement.clone())
    }

    /// Every task that runs here, with its placement's generation.
    pub(crate) fn all_running(&self) -> Vec<(Uuid, u64)> {
        let tasks = self.lock();
        let running = tasks
            .slots
            .iter()
            .filter_map(|(id, s)| Some((*id, s.running.as_ref()?)));
        running
            .map(|(id, r)| (id, r.placement.generation))
            .collect()
    }

    /// Every placement this worker has accepted, by task: the one running, and one being
    /// started (claimed, no container yet) if it is another. What a heartbeat lists, so that
    /// the manager can tell work in hand from work that vanished.
    pub(crate) fn all_accepted(&self) -> Vec<(Uuid, u64)> {
        let tasks = self.lock();
        let mut out = Vec::with_capacity(tasks.slots.len());
        for (id, slot) in &tasks.slots {
            let running = slot.running.as_ref().map(|r| r.placement.generation);
            if let Some(g) = running {
                out.push((*id, g));
            }
            if let Some(held) = slot.claim.filter(|h| Some(h.generation) != running) {
                out.push((*id, held.generation));
            }
        }
        out
    }

    /// Every running placement, with its container (for a re-list of the runtime).
    pub(crate) fn running_placements(&self) -> Vec<(Uuid, Placement)> {
        let tasks = self.lock();
        let running = tasks
            .slots
            .iter()
            .filter_map(|(id, s)| Some((*id, s.running.as_ref()?.placement.clone())));
        running.collect()
    }

    /// Notes that a stop was asked for the task's placement `generation` (0: whichever runs);
    /// returns the task's running placement, if any. The note is kept only if that placement
    /// is the one running: a stop of an older one must not explain away the newer one's exit.
    pub(crate) fn request_stop(&self, id: Uuid, generation: u64) -> Option<Placement> {
        let mut tasks = self.lock();
        let slot = tasks.slots.get_mut(&id)?;
        let running = slot.running.as_ref()?.placement.clone();
        if generation == 0 || generation == running.generation {
            slot.stop_requested = Some((running.generation, Instant::now()));
        }
        Some(running)
    }

    /// Forgets a stop request for the task's placement `generation` (the stop found no
    /// container, so no exit will come to consume it).
    pub(crate) fn clear_stop_request(&self, id: Uuid, generation: u64) {
        let mut tasks = self.lock();
        if let Some(slot) = tasks.slots.get_mut(&id) {
            if slot.stop_requested.is_some_and(|(g, _)| g == generation) {
                slot.stop_requested = None;
            }
        }
    }

    /// Whether a stop was asked lately for the task's placement `generation`, forgetting it:
    /// that container's death is then the stop's to report. A request for another placement
    /// stays.
    pub(crate) fn take_stop_request(&self, id: Uuid, generation: u64) -> bool {
        let mut tasks = self.lock();
        let Some(slot) = tasks.slots.get_mut(&id) else {
            return false;
        };
        match slot.stop_requested {
            Some((g, at)) if g == generation => {
                slot.stop_requested = None;
                at.elapsed() < STOP_MEMORY
            }
            _ => false,
        }
    }

    /// Keeps `start()`'s follower of the task's placement `generation`, unless one follows it
    /// already; a follower of an older placement is cancelled.
    pub(crate) fn follow(&self, id: Uuid, generation: u64, start: impl FnOnce() -> Follower) {
        let mut tasks = self.lock();
        let slot = tasks.slots.entry(id).or_default();
        if slot
            .follower
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            return;
        }
        if let Some((_, old)) = slot.follower.replace((generation, start())) {
            old.cancel();
        }
    }

    /// Takes the task's output follower, to let it finish.
    pub(crate) fn take_follower(&self, id: Uuid) -> Option<Follower> {
        let mut tasks = self.lock();
        let follower = tasks.slots.get_mut(&id)?.follower.take();
        follower.map(|(_, f)| f)
    }

    /// Records that the task's placement `generation` ended here.
    pub(crate) fn ended(&self, id: Uuid, generation: u64) {
        self.lock().finished.insert(id, generation);
    }

    /// Whether this placement of the task (or a later one) already ended here.
    pub(crate) fn has_ended(&self, task: &Task) -> bool {
        self.lock().finished.ended(&task.id, task.generation)
    }

    /// Whether placement `generation` of the task (or a later one) already ended here.
    pub(crate) fn placement_ended(&self, id: Uuid, generation: u64) -> bool {
        self.lock().finished.ended(&id, generation)
    }

    /// Forgets the running container of placement `generation` (stopped to make way for a
    /// newer placement of the same task), keeping the task's claim for the newer one.
    pub(crate) fn retire(&self, id: Uuid, generation: u64) {
        let mut tasks = self.lock();
        let Some(slot) = tasks.slots.get_mut(&id) else {
            return;
        };
        if slot
            .running
            .as_ref()
            .is_none_or(|r| r.placement.generation != generation)
        {
            return;
        }
        slot.running = None;
        slot.stop_requested = None;
        tasks.running -= 1;
        self.gauge.set(tasks.running as i64);
        tasks.finished.insert(id, generation);
    }

    /// Forgets the task's placement: its claim, container, health checks, follower and stop
    /// request.
    pub(crate) fn forget(&self, id: Uuid) {
        let mut tasks = self.lock();
        let Some(slot) = tasks.slots.get_mut(&id) else {
            return;
        };
        let was_running = slot.running.take().is_some();
        slot.claim = None;
        slot.stop_requested = None;
        if let Some((_, follower)) = slot.follower.take() {
            follower.cancel();
        }
        if was_running {
            tasks.running -= 1;
            self.gauge.set(tasks.running as i64);
        }
        tasks.tidy(id);
    }

    /// Records what the node offers.
    pub(crate) fn set_capacity(&self, offered: Resources) {
        self.lock().capacity = Some(offered);
    }

    /// What the tasks here hold, in all (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn claimed(&self) -> Vec<(Uuid, Resources)> {
        let tasks = self.lock();
        let claims = tasks
            .slots
            .iter()
            .filter_map(|(id, s)| Some((*id, s.claim?.resources)));
        claims.collect()
    }

    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.lock().slots.len()
    }
}

/// A task's turn: operations on it wait for this to drop. Holds one of the worker's
/// concurrent operations too.
pub(crate) struct Turn {
    table: Arc<Table>,
    id: Uuid,
    guard: Option<OwnedMutexGuard<()>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Let go of the turn first: the slot goes only if nobody else holds or awaits it.
        drop(self.guard.take());
        self.table.lock().tidy(self.id);
    }
}

/// Room taken for a task that is starting. Dropped, it gives the room back (to the older
/// placement that still runs, if the start was of a newer one); committed (the container
/// runs), the room stays with the task until it is forgotten.
pub(crate) struct Claim {
    table: Arc<Table>,
    id: Uuid,
    /// What the slot held before: an older placement's room, if one runs.
    previous: Option<Held>,
    committed: bool,
}

impl Claim {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut tasks = self.table.lock();
        if let Some(slot) = tasks.slots.get_mut(&self.id) {
            // The older placement keeps its room while it runs.
            let running = slot.running.as_ref().map(|r| r.placement.generation);
            slot.claim = self.previous.filter(|p| Some(p.generation) == running);
        }
        tasks.tidy(self.id);
    }
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
