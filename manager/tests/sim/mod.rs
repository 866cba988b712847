//! The simulated cluster: durable storage (streams and KV buckets), the manager's rules,
//! simulated workers with containers that outlive them, a client, and a fault schedule drawn
//! from one seed.

/// Adds a line to the trace, formatted only when the world keeps one (a replay).
macro_rules! note {
    ($world:expr, $($arg:tt)*) => {
        if $world.trace_len > 0 {
            let line = format!($($arg)*);
            $world.push_note(line);
        }
    };
}

mod bus;
mod check;
mod manager;
mod worker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use cube_manager::rules::{Decided, Rules, Timings};
use cube_shared::subjects::EVENTS;
use cube_shared::wire::encode;
use cube_shared::{Node, RestartPolicy, Task, TaskEvent};
use uuid::Uuid;

use bus::{Queue, Rng};
use manager::{Gray, Stream};
use worker::Worker;

/// Short timings, so that nodes are lost and found within a short schedule.
fn timings() -> Timings {
    Timings {
        node_ttl: Duration::from_secs(3),
        node_grace: Duration::from_secs(2),
        lost_after: Duration::from_secs(15),
        schedule_timeout: Duration::from_secs(20),
        ..Timings::default()
    }
}
const WORKERS: usize = 3;
/// Steps with faults, then at most this many calm rounds (of half a second) to go quiet: more
/// than the manager's clock may have stepped back (a restart due at a wall-clock time waits).
const FAULT_STEPS: usize = 160;
const CALM_ROUNDS: usize = 400;

/// What survives any process: JetStream's streams and buckets, and Docker's containers (kept
/// in each [`Worker`]).
#[derive(Default)]
pub struct Store {
    pub events: Queue,
    /// `services.events`.
    pub services: Queue,
    pub states: Queue,
    /// The work stream: one durable consumer per worker.
    pub work: BTreeMap<String, Queue>,
    /// `Nats-Msg-Id`s seen, with when: the stream's duplicate window.
    dedup: BTreeMap<String, DateTime<Utc>>,
    pub task_db: BTreeMap<Uuid, Task>,
    /// The services' records (in the Task DB under `service.<name>`).
    pub service_db: BTreeMap<String, cube_shared::Service>,
    pub node_db: BTreeMap<String, Node>,
    /// Core NATS on its way to the manager: heartbeats (subject, payload).
    pub heartbeats: VecDeque<(String, Vec<u8>)>,
    /// Drained nodes (the `cube-admin` bucket).
    pub drained: BTreeSet<String>,
    /// Every placement a worker ever started a container for: (task, generation, worker).
    pub started: BTreeSet<(Uuid, u64, String)>,
    /// Every placement whose container ended (by itself or stopped) at least once.
    pub ended: BTreeSet<(Uuid, u64, String)>,
    /// `CUBE_STATE` as kept: the last report on each subject, with its sequence.
    pub kept: BTreeMap<String, (u64, Vec<u8>)>,
}

pub struct World {
    seed: u64,
    rng: Rng,
    /// The wall clock of every host but the manager's.
    now: DateTime<Utc>,
    /// How far the manager host's wall clock is off `now` (it was stepped).
    clock: chrono::Duration,
    /// The manager host's monotonic clock.
    mono: Instant,
    start: Instant,
    store: Store,
    manager: Option<Rules>,
    /// When the manager's loop last ticked.
    last_tick: Instant,
    /// What the manager decided but could not write yet, in order; and the tasks as it
    /// decided them.
    unwritten: VecDeque<Decided>,
    unwritten_tasks: BTreeMap<Uuid, Task>,
    /// A gray fault of the manager's, until an instant of `mono`.
    gray: Option<(Gray, Instant)>,
    workers: Vec<Worker>,
    /// Ground truth, per worker: when it last sent a heartbeat that the network carried to
    /// the manager's host (whether the manager could take it or not).
    audible: Vec<Instant>,
    /// Submissions stored in the events stream (acknowledged to the client): id → spec.
    submitted: BTreeMap<Uuid, Task>,
    stopped: BTreeSet<Uuid>,
    /// Invariant violations seen so far.
    broken: Vec<String>,
    /// The last things that happened (at most `trace_len`; none when 0), with when.
    trace: VecDeque<(Duration, String)>,
    trace_len: usize,
    /// Faults are injected while this is true.
    faulty: bool,
}

impl World {
    /// The world of `seed`, keeping the last `trace_len` lines of what happened (0: none, the
    /// fastest; a failure is replayed with a trace).
    pub fn new(seed: u64, trace_len: usize) -> World {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let mono = Instant::now();
        World {
            seed,
            rng: Rng::new(seed),
            now,
            clock: chrono::Duration::zero(),
            mono,
            start: mono,
            store: Store::default(),
            manager: Some(manager::new_manager(&Store::default(), mono)),
            last_tick: mono,
            unwritten: VecDeque::new(),
            unwritten_tasks: BTreeMap::new(),
            gray: None,
            workers: (0..WORKERS).map(|i| Worker::new(format!("w{i}"))).collect(),
            audible: vec![mono; WORKERS],
            submitted: BTreeMap::new(),
            stopped: BTreeSet::new(),
            broken: Vec::new(),
            trace: VecDeque::new(),
            trace_len,
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
        note!(self, "faults stop");
        self.end_gray();
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
        for (at, line) in &self.trace {
            let ms = at.as_millis();
            out.push_str(&format!(
                "  {:02}:{:02}.{:03} {line}\n",
                ms / 60_000,
                ms / 1000 % 60,
                ms % 1000
            ));
        }
        out
    }

    fn push_note(&mut self, line: String) {
        if self.trace.len() == self.trace_len {
            self.trace.pop_front();
        }
        let at = self.mono - self.start;
        self.trace.push_back((at, line));
    }

    /// `ms` milliseconds pass, on every clock.
    fn pass(&mut self, ms: u64) {
        self.now += chrono::Duration::milliseconds(ms as i64);
        self.mono += Duration::from_millis(ms);
    }

    /// One step with faults: time passes, what is due happens (containers end, heartbeats go
    /// out, a gray fault of the manager's ends, its loop ticks every second), then one thing
    /// drawn from the table happens.
    fn step(&mut self) {
        let ms = self.rng.below(400);
        self.pass(ms);
        self.exits_and_heartbeats();
        self.gray_ends();
        self.manager_tick_due();
        match self.rng.below(200) {
            0..=23 => self.client(),
            24..=49 => self.manager_handles(Stream::Events),
            50..=59 => self.manager_handles(Stream::Services),
            60..=95 => self.manager_handles(Stream::States),
            96..=115 => self.manager_hears_heartbeats(),
            // Besides its every-second tick.
            116..=131 => self.manager_ticks(),
            132..=175 => {
                let w = self.rng.below(WORKERS as u64) as usize;
                self.worker_takes_work(w);
            }
            176..=181 => self.crash_or_restart_manager(),
            182..=191 => {
                let w = self.rng.below(WORKERS as u64) as usize;
                if self.workers[w].up {
                    self.crash_worker(w);
                } else {
                    self.restart_worker(w);
                }
            }
            192..=193 => {
                let w = self.rng.below(WORKERS as u64) as usize;
                let p = !self.workers[w].partitioned;
                self.workers[w].partitioned = p;
                note!(self, "{} partitioned: {p}", self.workers[w].name);
            }
            194..=195 => self.operator_drains(),
            // The manager cannot hear, is cut off, pauses, or its wall clock steps.
            196 => self.gray_fault(),
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
        self.manager_handles(Stream::Services);
        self.manager_handles(Stream::States);
        self.manager_hears_heartbeats();
        self.manager_ticks();
        for w in 0..self.workers.len() {
            while self.worker_takes_work(w) {}
        }
        self.manager_handles(Stream::States);
    }

    fn client(&mut self) {
        if self.rng.chance(0.25) {
            return self.service_client();
        }
        let roll = self.rng.below(10);
        if roll < 6 || self.submitted.is_empty() {
            let task = self.new_task();
            self.publish_event(TaskEvent::submit(task.clone()));
            note!(self, "client submits {} ({:?})", short(task.id), task.cmd);
            self.submitted.insert(task.id, task);
        } else if roll < 8 {
            let id = self.pick_submitted();
            let task = self.submitted[&id].clone();
            note!(self, "client submits {} again", short(id));
            self.publish_event(TaskEvent::submit(task));
        } else if roll < 9 {
            let id = self.pick_submitted();
            note!(self, "client stops {}", short(id));
            if self.store.task_db.contains_key(&id) {
                // Handled after the submission: it must end. (A stop that overtakes its
                // submission is refused, as it should be.)
                self.stopped.insert(id);
            }
            self.publish_event(TaskEvent::stop(id));
        } else {
            let id = Uuid::from_u128(self.rng.next() as u128);
            note!(self, "client sends garbage for {}", short(id));
            let payload = format!(
                r#"{{"id":"{id}","state":"running","task":{{"id":"{id}","image":"x","cpu":"lots"}}}}"#
            );
            self.store.events.push(EVENTS, payload.into_bytes());
        }
    }

    /// An operator changes services: `web` (a service) is deployed (a new version now and
    /// then), scaled, rolled back or removed; `agent` (one per node) is deployed.
    fn service_client(&mut self) {
        use cube_shared::{ServiceEvent, ServiceKind, ServiceSpec, UpdatePolicy};
        let max_parallel = 1 + self.rng.below(2) as u32;
        let spec = |name: &str, kind: ServiceKind, count: u32, version: u64| {
            let mut template = Task::new("sim");
            template.cmd = vec!["forever".into()];
            template.cpu = 0.25;
            template.env = vec![format!("VERSION={version}").into()];
            ServiceSpec {
                name: name.into(),
                kind,
                count,
                template,
                update: UpdatePolicy {
                    min_healthy_time: Some(Duration::from_secs(2)),
                    max_parallel: Some(max_parallel),
                    ..Default::default()
                },
                max_failures: None,
            }
        };
        let event = match self.rng.below(10) {
            0..=4 => {
                let (count, version) = (self.rng.below(5) as u32, 1 + self.rng.below(3));
                note!(
                    self,
                    "operator deploys web: {count} copies of version {version}"
                );
                ServiceEvent::deploy(spec("web", ServiceKind::Service, count, version))
            }
            5..=6 => {
                let count = self.rng.below(5) as u32;
                note!(self, "operator scales web to {count}");
                ServiceEvent::scale("web", count)
            }
            7 => {
                note!(self, "operator rolls web back");
                ServiceEvent::rollback("web", None)
            }
            8 => {
                let version = 1 + self.rng.below(2);
                note!(self, "operator deploys agent version {version}");
                ServiceEvent::deploy(spec("agent", ServiceKind::System, 1, version))
            }
            _ => {
                note!(self, "operator removes web");
                ServiceEvent::remove("web")
            }
        };
        self.store.services.push(
            cube_shared::subjects::SERVICE_EVENTS,
            encode(&event).to_vec(),
        );
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

    /// Containers that end by themselves, and heartbeats of the workers that are up.
    fn exits_and_heartbeats(&mut self) {
        for i in 0..self.workers.len() {
            let now = self.now;
            let queued = self.store.heartbeats.len();
            let lines = self.workers[i].on_time(now, &mut self.store);
            self.note_lines(lines);
            if self.store.heartbeats.len() > queued {
                if self.faulty && self.rng.chance(0.1) {
                    // The heartbeat it just sent is lost on the way: as far as anyone can
                    // tell, the worker was silent.
                    self.store.heartbeats.pop_back();
                } else {
                    self.audible[i] = self.mono;
                }
            }
        }
    }

    fn worker_takes_work(&mut self, i: usize) -> bool {
        let now = self.now;
        let lose_ack = self.faulty && self.rng.chance(0.05);
        match self.workers[i].take_work(now, &mut self.store, lose_ack) {
            Some(line) => {
                self.note_lines(vec![line]);
                true
            }
            None => false,
        }
    }

    fn crash_worker(&mut self, i: usize) {
        note!(self, "{} crashes", self.workers[i].name);
        self.workers[i].crash();
    }

    fn restart_worker(&mut self, i: usize) {
        let now = self.now;
        let lines = self.workers[i].restart(now, &mut self.store);
        note!(self, "{} starts", self.workers[i].name);
        self.note_lines(lines);
    }

    /// Lines a worker wrote (it writes them whether or not a trace is kept).
    fn note_lines(&mut self, lines: Vec<String>) {
        if self.trace_len > 0 {
            for line in lines {
                self.push_note(line);
            }
        }
    }
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}
