//! Unit tests of the manager's rules: inputs in, effects out, time passed in. No NATS, no
//! Docker, no sleeps. The harness is here; the tests are by concern beside it.

mod intake;
mod limits;
mod liveness;
mod nodes;
mod placement;
mod restarts;
mod retention;
mod services;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use cube_shared::subjects::{pending_for, state_for, EVENTS, HEARTBEAT_ALL, PENDING};
use cube_shared::wire::encode;
use cube_shared::{
    Node, NodeState, RestartPolicy, RunningTask, State, StateReport, Task, TaskEvent,
};
use uuid::Uuid;

use super::*;
use crate::algorithms;

const TTL: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(5);
const LOST_AFTER: Duration = Duration::from_secs(600);

fn timings() -> Timings {
    Timings {
        node_ttl: TTL,
        node_grace: GRACE,
        lost_after: LOST_AFTER,
        ..Timings::default()
    }
}

/// The rules with clocks of their own: the wall clock (which may be stepped) and the
/// monotonic one (which only moves forward, with time).
struct Harness {
    rules: Rules,
    now: DateTime<Utc>,
    mono: Instant,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

fn secs(s: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((s * 1000.0) as i64)
}

impl Harness {
    /// Rules with the spread scheduler and `workers` that have just sent a heartbeat.
    fn new(workers: &[&str]) -> Harness {
        Harness::with_scheduler("spread", workers)
    }

    fn with_scheduler(scheduler: &str, workers: &[&str]) -> Harness {
        Harness::with(timings(), scheduler, workers)
    }

    fn with(timings: Timings, scheduler: &str, workers: &[&str]) -> Harness {
        let mono = Instant::now();
        let rules = Rules::new(
            timings,
            algorithms::by_name(scheduler).unwrap(),
            crate::metrics::Metrics::default(),
            Stored::default(),
            mono,
        );
        let mut h = Harness {
            rules,
            now: start(),
            mono,
        };
        for w in workers {
            h.heartbeat(w, &[]);
        }
        h.effects();
        h
    }

    /// The manager restarted from `stored` (with the spread scheduler), at this moment.
    fn restarted(&self, stored: Stored) -> Harness {
        Harness {
            rules: Rules::new(
                self.rules.timings(),
                algorithms::by_name("spread").unwrap(),
                crate::metrics::Metrics::default(),
                stored,
                self.mono,
            ),
            now: self.now,
            mono: self.mono,
        }
    }

    /// Time passes: both clocks move.
    fn advance(&mut self, s: f64) {
        self.now += secs(s);
        self.mono += Duration::from_secs_f64(s);
    }

    /// The wall clock is stepped (NTP, a resumed VM); the monotonic clock does not move.
    fn step_wall(&mut self, s: f64) {
        self.now += secs(s);
    }

    /// What the rules decided, once services have followed (as the shell does).
    fn effects(&mut self) -> Decided {
        self.rules.reconcile(self.now);
        self.rules.take_effects()
    }

    fn task(&self, id: Uuid) -> Task {
        self.rules.cluster().task(&id).cloned().expect("known task")
    }

    fn submit(&mut self, task: Task) -> Decided {
        let event = TaskEvent::submit(task);
        self.rules.on_event(EVENTS, &encode(&event), self.now);
        self.effects()
    }

    fn stop(&mut self, id: Uuid) -> Decided {
        let event = TaskEvent::stop(id);
        self.rules.on_event(EVENTS, &encode(&event), self.now);
        self.effects()
    }

    fn heartbeat(&mut self, worker: &str, running: &[(Uuid, u64)]) -> Decided {
        let mut node = crate::testing::node(worker, 4.0, 8 << 30);
        node.running = running
            .iter()
            .map(|&(id, generation)| RunningTask { id, generation })
            .collect();
        let subject = HEARTBEAT_ALL.replace('*', worker);
        self.rules
            .on_heartbeat(&subject, &encode(&node), self.now, self.mono);
        self.effects()
    }

    /// `worker` reports `state` for the task's current placement (or `generation`).
    fn report(&mut self, id: Uuid, worker: &str, state: State, exit: Option<i64>) -> Decided {
        let generation = self.task(id).generation;
        self.report_generation(id, worker, state, exit, generation)
    }

    fn report_generation(
        &mut self,
        id: Uuid,
        worker: &str,
        state: State,
        exit: Option<i64>,
        generation: u64,
    ) -> Decided {
        let mut r = StateReport::new(id, worker, state);
        r.generation = Some(generation);
        r.exit_code = exit;
        if state == State::Running {
            r.start_time = Some(self.now);
            r.container_id = Some(format!("c-{generation}"));
        } else {
            r.finish_time = Some(self.now);
        }
        self.rules
            .on_report(&state_for(id, worker), &encode(&r), self.now);
        self.effects()
    }

    /// Where the task was placed, and the other of two workers `w1` and `w2`.
    fn placed_and_other(&self, id: Uuid) -> (String, &'static str) {
        let w = self.task(id).worker.expect("placed on a worker");
        let other = if w == "w1" { "w2" } else { "w1" };
        (w, other)
    }

    /// Deploys a service `name` of `count` copies of a sleeper (or a batch job of them).
    fn deploy(&mut self, name: &str, kind: cube_shared::ServiceKind, count: u32) -> Decided {
        let spec = cube_shared::ServiceSpec {
            name: name.into(),
            kind,
            count,
            template: sleeper(RestartPolicy::No),
            update: Default::default(),
            max_failures: None,
        };
        let deploy = encode(&cube_shared::ServiceEvent::deploy(spec));
        self.rules
            .on_service_event(cube_shared::subjects::SERVICE_EVENTS, &deploy, self.now);
        self.effects()
    }

    /// The shell's tick: it first says whether the manager can hear.
    fn tick(&mut self) -> Decided {
        self.tick_hearing(true)
    }

    fn tick_hearing(&mut self, can_hear: bool) -> Decided {
        self.rules.set_hearing(can_hear, self.now, self.mono);
        self.rules.tick(self.now, self.mono);
        self.effects()
    }
}

fn sleeper(policy: RestartPolicy) -> Task {
    let mut t = Task::new("busybox");
    t.cmd = vec!["sleep".into(), "1000".into()];
    t.restart_policy = policy;
    t
}

/// The placements in `d`: (subject, task id, generation) of each start.
fn starts(d: &Decided) -> Vec<(String, Uuid, u64)> {
    d.work
        .iter()
        .filter(|w| !w.event.is_stop())
        .map(|w| (w.subject.clone(), w.event.task.id, w.event.task.generation))
        .collect()
}

fn stops(d: &Decided) -> Vec<(String, Uuid, u64)> {
    d.work
        .iter()
        .filter(|w| w.event.is_stop())
        .map(|w| (w.subject.clone(), w.event.task.id, w.event.task.generation))
        .collect()
}
