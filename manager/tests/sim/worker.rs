//! A simulated worker that follows the real worker's protocol (`worker/src`): it checks the
//! Task DB before it starts a placement, starts at most one container per placement (the
//! container name is derived from the placement), reports every change on the state stream,
//! lists what it runs in its heartbeats, and on start compares its containers with the Task
//! DB. Its containers outlive it, as Docker's do; everything else it knows dies with it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cube_shared::subjects::{heartbeat_for, pending_for, state_for};
use cube_shared::wire::{self, encode};
use cube_shared::{Node, RunningTask, State, StateReport, Task, TaskEvent};
use uuid::Uuid;

use super::Store;

/// One container: when it ends by itself (and with which code), and whether it has ended.
struct Container {
    ends: Option<(DateTime<Utc>, i64)>,
    exited: Option<i64>,
    started: DateTime<Utc>,
}

pub struct Worker {
    pub name: String,
    pub up: bool,
    /// Its heartbeats are lost on the way (its work and reports still flow).
    pub partitioned: bool,
    /// Docker's containers of this worker: (task, generation) → container.
    containers: BTreeMap<(Uuid, u64), Container>,
    /// What the process tracks: task → generation running here.
    tracked: BTreeMap<Uuid, u64>,
    /// Placements that ended here.
    finished: BTreeMap<Uuid, u64>,
    last_heartbeat: Option<DateTime<Utc>>,
}

impl Worker {
    pub fn new(name: String) -> Worker {
        Worker {
            name,
            up: false,
            partitioned: false,
            containers: BTreeMap::new(),
            tracked: BTreeMap::new(),
            finished: BTreeMap::new(),
            last_heartbeat: None,
        }
    }

    /// Containers that have not ended.
    pub fn live_containers(&self) -> Vec<(Uuid, u64)> {
        self.containers
            .iter()
            .filter(|(_, c)| c.exited.is_none())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Whether placement `g` of `id` is alive here: its container has not ended and the
    /// worker, when up, lists it in its heartbeats.
    pub fn keeps(&self, id: Uuid, g: u64) -> bool {
        let live = self
            .containers
            .get(&(id, g))
            .is_some_and(|c| c.exited.is_none());
        live && (!self.up || self.tracked.get(&id) == Some(&g))
    }

    pub fn crash(&mut self) {
        self.up = false;
        self.tracked.clear();
        self.finished.clear();
        self.last_heartbeat = None;
    }

    /// Publishes a report; one about another placement than the one that runs here is
    /// followed by the running one's again, as the worker's `report` does (the stream keeps
    /// one report per subject, and the last must be the status of what runs).
    fn report(&self, store: &mut Store, mut r: StateReport, generation: u64, now: DateTime<Utc>) {
        r.generation = Some(generation);
        r.timestamp = now;
        let id = r.task_id;
        store.publish_report(&state_for(id, &self.name), encode(&r).to_vec());
        if let Some(g) = self.tracked.get(&id).copied().filter(|g| *g != generation) {
            if let Some(c) = self.containers.get(&(id, g)) {
                let mut again = StateReport::new(id, &self.name, State::Running);
                again.generation = Some(g);
                again.timestamp = now;
                again.container_id = Some(format!("{id}-{g}"));
                again.start_time = Some(c.started);
                store.publish_report(&state_for(id, &self.name), encode(&again).to_vec());
            }
        }
    }

    /// Reports how placement `g` of `id` ended by itself, as the worker's `exit_report` does.
    fn report_exit(&self, store: &mut Store, id: Uuid, g: u64, code: i64, now: DateTime<Utc>) {
        let state = if code == 0 {
            State::Completed
        } else {
            State::Failed
        };
        let mut r = StateReport::new(id, &self.name, state);
        r.exit_code = Some(code);
        r.finish_time = Some(now);
        if state == State::Failed {
            r.error = Some(format!("exited with code {code}"));
        }
        self.report(store, r, g, now);
    }

    /// Time passes: containers end by themselves; a worker that is up sends a heartbeat every
    /// second and notices the containers that ended.
    pub fn on_time(&mut self, now: DateTime<Utc>, store: &mut Store) -> Vec<String> {
        let mut lines = Vec::new();
        for ((id, g), c) in self.containers.iter_mut() {
            if let (None, Some((at, code))) = (c.exited, c.ends) {
                if at <= now {
                    c.exited = Some(code);
                    store.ended.insert((*id, *g, self.name.clone()));
                    lines.push(format!("{}: container {id}/{g} exits {code}", self.name));
                }
            }
        }
        if !self.up {
            return lines;
        }
        let ended: Vec<(Uuid, u64, i64)> = self
            .tracked
            .iter()
            .filter_map(|(id, g)| Some((*id, *g, self.containers.get(&(*id, *g))?.exited?)))
            .collect();
        for (id, g, code) in ended {
            self.tracked.remove(&id);
            self.finished.insert(id, g);
            self.report_exit(store, id, g, code, now);
            self.containers.remove(&(id, g));
        }
        if self
            .last_heartbeat
            .is_none_or(|at| now - at >= chrono::Duration::seconds(1))
        {
            self.last_heartbeat = Some(now);
            let node = self.node(now);
            store.node_db.insert(self.name.clone(), node.clone());
            if !self.partitioned {
                store
                    .heartbeats
                    .push_back((heartbeat_for(&self.name), encode(&node).to_vec()));
            }
        }
        lines
    }

    fn node(&self, now: DateTime<Utc>) -> Node {
        Node {
            task_count: self.tracked.len() as u32,
            last_heartbeat: now,
            running: self
                .tracked
                .iter()
                .map(|(id, g)| RunningTask {
                    id: *id,
                    generation: *g,
                })
                .collect(),
            ..Node::ready(&self.name, 4.0, 8 << 30)
        }
    }

    /// Takes the next piece of work from its consumer, if it is up; `lose_ack`: the
    /// acknowledgement is lost and the work comes again.
    pub fn take_work(
        &mut self,
        now: DateTime<Utc>,
        store: &mut Store,
        lose_ack: bool,
    ) -> Option<String> {
        if !self.up {
            return None;
        }
        let queue = store.work.entry(self.name.clone()).or_default();
        let msg = queue.first()?;
        debug_assert_eq!(msg.subject, pending_for(&self.name));
        let event = wire::decode_placement(&msg.payload).expect("the manager's work decodes");
        let line = if event.is_stop() {
            self.stop(&event, now, store)
        } else {
            self.start(event.task, now, store)
        };
        if !lose_ack {
            store
                .work
                .entry(self.name.clone())
                .or_default()
                .ack(&[msg.seq]);
        }
        Some(line)
    }

    fn start(&mut self, task: Task, now: DateTime<Utc>, store: &mut Store) -> String {
        let (id, g) = (task.id, task.generation);
        match self.tracked.get(&id) {
            Some(t) if *t >= g => {
                return format!("{}: start {id}/{g}: already running here", self.name);
            }
            // A newer placement of a task whose old copy still runs here (it was lost and
            // placed here again): the old copy makes way once the new one is confirmed current.
            _ => {}
        }
        if self.finished.get(&id).is_some_and(|f| *f >= g) {
            return format!("{}: start {id}/{g}: already ended here", self.name);
        }
        // The fencing read: act only on the current placement.
        let Some(current) = store.task_db.get(&id) else {
            return format!("{}: start {id}/{g}: not in the Task DB", self.name);
        };
        if current.generation != g
            || current.worker.as_deref().is_some_and(|w| w != self.name)
            || current.state.is_final()
        {
            return format!("{}: start {id}/{g}: superseded", self.name);
        }
        if current.stop_requested && current.state == State::Scheduled {
            let mut r = StateReport::new(id, &self.name, State::Completed);
            r.finish_time = Some(now);
            self.report(store, r, g, now);
            return format!("{}: start {id}/{g}: stopped before it started", self.name);
        }
        if let Some(old) = self.tracked.remove(&id) {
            self.containers.remove(&(id, old));
            self.finished.insert(id, old);
        }
        // The container name is the placement's: a second start finds the first container.
        let ends = match task.cmd.as_slice() {
            [ms, code] => Some((
                now + chrono::Duration::milliseconds(ms.parse().unwrap_or(1000)),
                code.parse().unwrap_or(0),
            )),
            _ => None,
        };
        let started = self
            .containers
            .entry((id, g))
            .or_insert(Container {
                ends,
                exited: None,
                started: now,
            })
            .started;
        store.started.insert((id, g, self.name.clone()));
        self.tracked.insert(id, g);
        let mut r = StateReport::new(id, &self.name, State::Running);
        r.container_id = Some(format!("{id}-{g}"));
        r.start_time = Some(started);
        self.report(store, r, g, now);
        format!("{}: starts {id}/{g}", self.name)
    }

    fn stop(&mut self, event: &TaskEvent, now: DateTime<Utc>, store: &mut Store) -> String {
        let id = event.task.id;
        let running = self.tracked.get(&id).copied();
        let Some(g) = Some(event.task.generation).filter(|g| *g > 0).or(running) else {
            return format!("{}: stop {id}: nothing runs here", self.name);
        };
        let code = match self.containers.remove(&(id, g)) {
            Some(c) => c.exited.unwrap_or(137),
            None => 0,
        };
        store.ended.insert((id, g, self.name.clone()));
        self.finished.insert(id, g);
        if running == Some(g) {
            self.tracked.remove(&id);
        }
        let mut r = StateReport::new(id, &self.name, State::Completed);
        r.exit_code = Some(code);
        r.finish_time = Some(now);
        self.report(store, r, g, now);
        format!("{}: stops {id}/{g}", self.name)
    }

    /// Starts the process: adopts the containers the Task DB says it runs, reports those that
    /// ended while it was away, removes the others, and reports as failed what should run
    /// here but has no container.
    pub fn restart(&mut self, now: DateTime<Utc>, store: &mut Store) -> Vec<String> {
        self.up = true;
        let mut lines = Vec::new();
        // As the worker's `owned_placements`: its current placements, and the copy a drain
        // is moving away from it, as that older placement.
        let mut owned: BTreeMap<Uuid, Task> = BTreeMap::new();
        for t in store.views().iter().filter(|t| t.state.is_active()) {
            if t.worker.as_deref() == Some(self.name.as_str()) {
                owned.insert(t.id, t.clone());
            } else if let Some(old) = t.previous.as_ref().filter(|p| p.worker == self.name) {
                let mut copy = t.clone();
                copy.generation = old.generation;
                copy.state = State::Running;
                copy.container_id = None;
                owned.entry(t.id).or_insert(copy);
            }
        }
        let keys: Vec<(Uuid, u64)> = self.containers.keys().copied().collect();
        for (id, g) in keys {
            let current = owned.remove(&id).filter(|t| t.generation == g);
            let exited = self.containers[&(id, g)].exited;
            match (current, exited) {
                (Some(task), None) => {
                    self.tracked.insert(id, g);
                    if task.state != State::Running || task.container_id.is_none() {
                        let mut r = StateReport::new(id, &self.name, State::Running);
                        r.container_id = Some(format!("{id}-{g}"));
                        r.start_time = Some(self.containers[&(id, g)].started);
                        self.report(store, r, g, now);
                    }
                    lines.push(format!("{}: adopts {id}/{g}", self.name));
                }
                (Some(_), Some(code)) => {
                    self.containers.remove(&(id, g));
                    self.finished.insert(id, g);
                    self.report_exit(store, id, g, code, now);
                    lines.push(format!("{}: {id}/{g} ended while away", self.name));
                }
                (None, _) => {
                    self.containers.remove(&(id, g));
                    lines.push(format!("{}: removes {id}/{g}", self.name));
                }
            }
        }
        for task in owned.into_values().filter(|t| t.state == State::Running) {
            self.finished.insert(task.id, task.generation);
            let mut r = StateReport::new(task.id, &self.name, State::Failed);
            r.finish_time = Some(now);
            r.error = Some("the container disappeared while its worker was away".into());
            self.report(store, r, task.generation, now);
        }
        lines
    }
}
