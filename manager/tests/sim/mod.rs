//! The simulated cluster: durable storage (streams and KV buckets), the manager's rules,
//! simulated workers with containers that outlive them, a client, and a fault schedule drawn
//! from one seed.

mod bus;
mod check;
mod worker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use cube_manager::metrics::Metrics;
use cube_manager::rules::{Decided, Rules, Stored, Timings};
use cube_shared::subjects::EVENTS;
use cube_shared::wire::encode;
use cube_shared::{Node, RestartPolicy, Task, TaskEvent};
use uuid::Uuid;

use bus::{Queue, Rng};
use worker::Worker;

/// Short timings, so that nodes are lost and found within a short schedule.
fn timings() -> Timings {
    Timings {
        node_ttl: Duration::from_secs(3),
        node_grace: Duration::from_secs(2),
        lost_after: Duration::from_secs(60),
        schedule_timeout: Duration::from_secs(20),
        ..Timings::default()
    }
}
const WORKERS: usize = 3;
/// Steps with faults, then at most this many calm rounds to go quiet.
const FAULT_STEPS: usize = 160;
const CALM_ROUNDS: usize = 200;

/// What survives any process: JetStream's streams and buckets, and Docker's containers (kept
/// in each [`Worker`]).
#[derive(Default)]
pub struct Store {
    pub events: Queue,
    pub states: Queue,
    /// The work stream: one durable consumer per worker.
    pub work: BTreeMap<String, Queue>,
    /// `Nats-Msg-Id`s seen, with when: the stream's duplicate window.
    dedup: BTreeMap<String, DateTime<Utc>>,
    pub task_db: BTreeMap<Uuid, Task>,
    pub node_db: BTreeMap<String, Node>,
    /// Core NATS on its way to the manager: heartbeats (subject, payload).
    pub heartbeats: VecDeque<(String, Vec<u8>)>,
    /// Drained nodes (the `cube-admin` bucket).
    pub drained: BTreeSet<String>,
    /// Every placement a worker ever started a container for: (task, generation, worker).
    pub started: BTreeSet<(Uuid, u64, String)>,
}

pub struct World {
    seed: u64,
    rng: Rng,
    now: DateTime<Utc>,
    /// The manager host's monotonic clock.
    mono: Instant,
    store: Store,
    manager: Option<Rules>,
    workers: Vec<Worker>,
    /// Submissions stored in the events stream (acknowledged to the client): id → spec.
    submitted: BTreeMap<Uuid, Task>,
    stopped: BTreeSet<Uuid>,
    /// Invariant violations seen so far.
    broken: Vec<String>,
    /// The last things that happened, for the failure report.
    trace: VecDeque<String>,
    /// Faults are injected while this is true.
    faulty: bool,
}

impl World {
    pub fn new(seed: u64) -> World {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        World {
            seed,
            rng: Rng::new(seed),
            now,
            mono: Instant::now(),
            store: Store::default(),
            manager: Some(new_manager(&Store::default(), Instant::now())),
            workers: (0..WORKERS).map(|i| Worker::new(format!("w{i}"))).collect(),
            submitted: BTreeMap::new(),
            stopped: BTreeSet::new(),
            broken: Vec::new(),
            trace: VecDeque::new(),
            faulty: true,
        }
    }

    /// Runs the schedule: faults, then calm until quiet; `Err` describes what broke.
    pub fn run(mut self) -> Result<(), String> {
        for i in 0..self.workers.len() {
            self.restart_worker(i);
        }
        for _ in 0..FAULT_STEPS {
            self.step();
            self.check_always();
            if !self.broken.is_empty() {
                return Err(self.report());
            }
        }
        self.faulty = false;
        self.note("faults stop".into());
        if self.manager.is_none() {
            self.restart_manager();
        }
        for i in 0..self.workers.len() {
            if !self.workers[i].up {
                self.restart_worker(i);
            }
            self.workers[i].partitioned = false;
        }
        for _ in 0..CALM_ROUNDS {
            self.calm_round();
            self.check_always();
            if !self.broken.is_empty() || self.quiet() {
                break;
            }
        }
        self.check_quiescent();
        if self.broken.is_empty() {
            Ok(())
        } else {
            Err(self.report())
        }
    }

    fn report(&self) -> String {
        let mut out = format!(
            "seed {}: {}\nlast steps:\n",
            self.seed,
            self.broken.join("\n")
        );
        for line in &self.trace {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 80 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{} {line}", self.now.format("%M:%S%.3f")));
    }

    /// One step with faults: time passes, then one thing happens.
    /// `ms` milliseconds pass, on every clock.
    fn pass(&mut self, ms: u64) {
        self.now += chrono::Duration::milliseconds(ms as i64);
        self.mono += Duration::from_millis(ms);
    }

    fn step(&mut self) {
        let ms = self.rng.below(400);
        self.pass(ms);
        self.exits_and_heartbeats();
        match self.rng.below(100) {
            0..=11 => self.client(),
            12..=29 => self.manager_handles(Stream::Events),
            30..=47 => self.manager_handles(Stream::States),
            48..=57 => self.manager_hears_heartbeats(),
            58..=65 => self.manager_ticks(),
            66..=87 => {
                let w = self.rng.below(WORKERS as u64) as usize;
                self.worker_takes_work(w);
            }
            88..=90 => self.crash_or_restart_manager(),
            91..=95 => {
                let w = self.rng.below(WORKERS as u64) as usize;
                if self.workers[w].up {
                    self.crash_worker(w);
                } else {
                    self.restart_worker(w);
                }
            }
            96 => {
                let w = self.rng.below(WORKERS as u64) as usize;
                let p = !self.workers[w].partitioned;
                self.workers[w].partitioned = p;
                self.note(format!("{} partitioned: {p}", self.workers[w].name));
            }
            97 => self.operator_drains(),
            _ => {
                // Queued deliveries overtake each other.
                self.store.events.shuffle(&mut self.rng);
                self.store.states.shuffle(&mut self.rng);
            }
        }
    }

    /// A round without faults: everything that waits is delivered.
    fn calm_round(&mut self) {
        self.pass(500);
        self.exits_and_heartbeats();
        self.manager_handles(Stream::Events);
        self.manager_handles(Stream::States);
        self.manager_hears_heartbeats();
        self.manager_ticks();
        for w in 0..self.workers.len() {
            while self.worker_takes_work(w) {}
        }
        self.manager_handles(Stream::States);
    }

    fn client(&mut self) {
        let roll = self.rng.below(10);
        if roll < 6 || self.submitted.is_empty() {
            let task = self.new_task();
            self.publish_event(TaskEvent::submit(task.clone()));
            self.note(format!(
                "client submits {} ({:?})",
                short(task.id),
                task.cmd
            ));
            self.submitted.insert(task.id, task);
        } else if roll < 8 {
            let id = self.pick_submitted();
            let task = self.submitted[&id].clone();
            self.note(format!("client submits {} again", short(id)));
            self.publish_event(TaskEvent::submit(task));
        } else if roll < 9 {
            let id = self.pick_submitted();
            self.note(format!("client stops {}", short(id)));
            if self.store.task_db.contains_key(&id) {
                // Handled after the submission: it must end. (A stop that overtakes its
                // submission is refused, as it should be.)
                self.stopped.insert(id);
            }
            self.publish_event(TaskEvent::stop(id));
        } else {
            let id = Uuid::from_u128(self.rng.next() as u128);
            self.note(format!("client sends garbage for {}", short(id)));
            let payload = format!(
                r#"{{"id":"{id}","state":"running","task":{{"id":"{id}","image":"x","cpu":"lots"}}}}"#
            );
            self.store.events.push(EVENTS, payload.into_bytes());
        }
    }

    fn pick_submitted(&mut self) -> Uuid {
        let i = self.rng.below(self.submitted.len() as u64) as usize;
        *self.submitted.keys().nth(i).expect("in range")
    }

    fn publish_event(&mut self, event: TaskEvent) {
        self.store.events.push(EVENTS, encode(&event).to_vec());
    }

    /// A task that runs until stopped or ends after a while with a code, under a policy.
    fn new_task(&mut self) -> Task {
        let mut t = Task::new("sim");
        t.id = Uuid::from_u128(u128::from(self.rng.next()) << 64 | u128::from(self.rng.next()));
        t.cpu = 0.25;
        t.memory = 64 << 20;
        t.cmd = match self.rng.below(3) {
            0 => vec!["forever".into()],
            _ => vec![
                format!("{}", 500 + self.rng.below(6000)),
                format!("{}", self.rng.below(3)),
            ],
        };
        t.restart_policy = match self.rng.below(3) {
            0 => RestartPolicy::No,
            1 => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        };
        t.max_restarts = Some(self.rng.below(3) as u32);
        t
    }

    /// An operator drains a node (at most two of the three at once) or undrains one, through
    /// the manager's API: recorded in the admin bucket first, then applied.
    fn operator_drains(&mut self) {
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        let name = self.workers[self.rng.below(WORKERS as u64) as usize]
            .name
            .clone();
        let drain = !self.store.drained.contains(&name);
        if (drain && self.store.drained.len() >= WORKERS - 1) || rules.check_drain(&name).is_err() {
            return;
        }
        if drain {
            self.store.drained.insert(name.clone());
        } else {
            self.store.drained.remove(&name);
        }
        rules.set_drain(&name, drain, self.now).expect("checked");
        self.note(format!("operator drains {name}: {drain}"));
        self.commit(None);
    }

    fn crash_or_restart_manager(&mut self) {
        if self.manager.is_some() {
            self.note("manager crashes".into());
            self.manager = None;
        } else {
            self.restart_manager();
        }
    }

    fn restart_manager(&mut self) {
        self.note("manager starts".into());
        self.manager = Some(new_manager(&self.store, self.mono));
    }

    /// Carries out what the manager decided, as its writer does: records, then work, then
    /// the acknowledgements of `handled`. With faults, the manager may die at any point.
    fn commit(&mut self, handled: Option<(Stream, Vec<u64>)>) {
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        let decided: Decided = rules.take_effects();
        for e in &decided.journal {
            let task = e.task_id.map(short).unwrap_or_default();
            let worker = e.worker.clone().unwrap_or_default();
            self.note(format!(
                "manager: {} {task} {worker}: {}",
                e.kind, e.message
            ));
        }
        let crash_at = if self.faulty && self.rng.chance(0.03) {
            self.rng.below(3)
        } else {
            3
        };
        if crash_at > 0 {
            for task in decided.tasks {
                self.store_task(task);
            }
        }
        if crash_at > 1 {
            for work in decided.work {
                let subject = work.subject.clone();
                let payload = encode(&work.event).to_vec();
                self.store
                    .publish_work(&subject, payload, work.event.id.to_string(), self.now);
            }
        }
        if crash_at > 2 {
            // An acknowledgement may be lost: the message comes again.
            let lose = self.faulty && self.rng.chance(0.05);
            if let Some((stream, seqs)) = handled.filter(|_| !lose) {
                self.store.queue(stream).ack(&seqs);
            }
        } else {
            self.note(format!("manager dies mid-commit (step {crash_at})"));
            self.manager = None;
        }
    }

    /// The manager takes what its consumer on `stream` delivers, decides, and commits.
    fn manager_handles(&mut self, stream: Stream) {
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        let queue = self.store.queue(stream);
        let batch = queue.deliver(&mut self.rng, self.faulty);
        if batch.is_empty() {
            return;
        }
        let caught_up = queue.len() == batch.len();
        for m in &batch {
            match stream {
                Stream::Events => rules.on_event(&m.subject, &m.payload, self.now),
                Stream::States => rules.on_report(&m.subject, &m.payload, self.now),
            }
        }
        if stream == Stream::States && caught_up {
            // Caught up: what was recorded before a restart can go out again.
            rules.resend_placements();
        }
        let seqs = batch.iter().map(|m| m.seq).collect();
        self.note(format!("manager handles {} {stream:?}", batch.len()));
        self.commit(Some((stream, seqs)));
    }

    fn manager_hears_heartbeats(&mut self) {
        let heard: Vec<(String, Vec<u8>)> = self.store.heartbeats.drain(..).collect();
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        for (subject, payload) in heard {
            rules.on_heartbeat(&subject, &payload, self.now, self.mono);
        }
        self.commit(None);
    }

    fn manager_ticks(&mut self) {
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        if rules.resend_due() && self.store.states.is_empty() {
            rules.resend_placements();
        }
        rules.set_hearing(true, self.now, self.mono);
        rules.tick(self.now, self.mono);
        self.commit(None);
    }

    /// Containers that end by themselves, and heartbeats of the workers that are up.
    fn exits_and_heartbeats(&mut self) {
        for i in 0..self.workers.len() {
            let now = self.now;
            let queued = self.store.heartbeats.len();
            let lines = self.workers[i].on_time(now, &mut self.store);
            for line in lines {
                self.note(line);
            }
            if self.faulty && self.rng.chance(0.1) && self.store.heartbeats.len() > queued {
                // The heartbeat it just sent is lost on the way.
                self.store.heartbeats.pop_back();
            }
        }
    }

    fn worker_takes_work(&mut self, i: usize) -> bool {
        let now = self.now;
        let lose_ack = self.faulty && self.rng.chance(0.05);
        match self.workers[i].take_work(now, &mut self.store, lose_ack) {
            Some(line) => {
                self.note(line);
                true
            }
            None => false,
        }
    }

    fn crash_worker(&mut self, i: usize) {
        self.note(format!("{} crashes", self.workers[i].name));
        self.workers[i].crash();
    }

    fn restart_worker(&mut self, i: usize) {
        let now = self.now;
        let lines = self.workers[i].restart(now, &mut self.store);
        self.note(format!("{} starts", self.workers[i].name));
        for line in lines {
            self.note(line);
        }
    }
}

/// The manager's two durable consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Events,
    States,
}

impl Store {
    fn queue(&mut self, stream: Stream) -> &mut Queue {
        match stream {
            Stream::Events => &mut self.events,
            Stream::States => &mut self.states,
        }
    }
}

/// A manager that starts with what is stored.
fn new_manager(store: &Store, mono: Instant) -> Rules {
    let stored = Stored {
        tasks: store.task_db.values().cloned().collect(),
        nodes: store.node_db.values().cloned().collect(),
        drained: store.drained.iter().cloned().collect(),
    };
    let scheduler = cube_manager::algorithms::by_name("spread").expect("known scheduler");
    Rules::new(timings(), scheduler, Metrics::default(), stored, mono)
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}
