//! Unit tests of the manager's rules: inputs in, effects out, time passed in. No NATS, no
//! Docker, no sleeps.

use std::time::Duration;

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

/// The rules with a clock of their own.
struct Harness {
    rules: Rules,
    now: DateTime<Utc>,
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
        let rules = Rules::new(
            Timings {
                node_ttl: TTL,
                node_grace: GRACE,
            },
            algorithms::by_name(scheduler).unwrap(),
            crate::metrics::Metrics::default(),
            Stored::default(),
            start(),
        );
        let mut h = Harness {
            rules,
            now: start(),
        };
        for w in workers {
            h.heartbeat(w, &[]);
        }
        h.effects();
        h
    }

    fn advance(&mut self, s: f64) {
        self.now += secs(s);
    }

    fn effects(&mut self) -> Decided {
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
        self.rules.on_heartbeat(&subject, &encode(&node), self.now);
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

    fn tick(&mut self) -> Decided {
        self.rules.tick(self.now);
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

#[test]
fn a_submission_is_recorded_placed_and_announced() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::No);
    let d = h.submit(t.clone());
    assert_eq!(d.events.len(), 1, "kept in the Event DB");
    assert_eq!(d.tasks.len(), 1, "one Task DB record, as it ends the batch");
    assert_eq!(
        (d.tasks[0].state, d.tasks[0].generation),
        (State::Scheduled, 1)
    );
    assert_eq!(d.tasks[0].submitted_at, Some(h.now));
    assert_eq!(starts(&d), vec![(pending_for("w1"), t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["submitted", "scheduled"]);
    assert!(
        d.journal.iter().all(|e| e.time == h.now),
        "stamped with the time passed in"
    );
    assert_eq!(
        d.placed,
        vec![h.now],
        "its scheduling latency is observed once published"
    );
}

#[test]
fn a_repeated_submission_is_sent_again_and_a_different_one_refused() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let again = h.submit(t.clone());
    assert!(again.tasks.is_empty() && again.journal.is_empty());
    assert_eq!(
        starts(&again),
        vec![(pending_for("w1"), t.id, 1)],
        "same placement"
    );

    let mut other = t.clone();
    other.image = "other".into();
    let refused = h.submit(other);
    assert!(refused.tasks.is_empty() && refused.work.is_empty());
    assert_eq!(refused.rejections.len(), 1);
    assert!(refused.rejections[0]
        .reason
        .contains("different specification"));
    assert_eq!(refused.journal_kinds(), ["rejected"]);
}

#[test]
fn an_unreadable_submission_is_refused_and_recorded_as_failed() {
    let mut h = Harness::new(&["w1"]);
    let id = Uuid::new_v4();
    let payload = format!(
        r#"{{"id":"{}","state":"running","task":{{"id":"{id}","image":"x","cpu":"lots"}}}}"#,
        Uuid::new_v4()
    );
    h.rules.on_event(EVENTS, payload.as_bytes(), h.now);
    let d = h.effects();
    assert_eq!(d.rejections.len(), 1);
    assert!(d.work.is_empty());
    let t = h.task(id);
    assert_eq!(t.state, State::Failed);
    assert!(t.error.unwrap().starts_with("rejected: "));
}

#[test]
fn reports_only_from_the_current_placement_and_only_legal_moves() {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let (w, other) = h.placed_and_other(t.id);

    let d = h.report(t.id, other, State::Running, None);
    assert!(d.is_empty(), "another worker cannot speak for it");
    let d = h.report_generation(t.id, &w, State::Running, None, 0);
    assert!(d.is_empty(), "a superseded placement cannot either");
    let d = h.report(t.id, &w, State::Running, None);
    assert_eq!(d.tasks[0].state, State::Running);
    assert_eq!(d.journal_kinds(), ["running"]);
    let d = h.report(t.id, &w, State::Running, None);
    assert!(d.is_empty(), "a repeated report changes nothing");
    let d = h.report(t.id, &w, State::Completed, Some(0));
    assert_eq!(
        (d.tasks[0].state, d.tasks[0].exit_code),
        (State::Completed, Some(0))
    );
    let d = h.report(t.id, &w, State::Running, None);
    assert!(
        d.is_empty(),
        "completed is final: a late running report is stale"
    );
}

#[test]
fn reordered_reports_end_where_the_last_word_says() {
    // The worker's `failed` overtakes its `running` (a redelivery): the late `running` is
    // stale, and the task is not stuck in `scheduled`.
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let d = h.report(t.id, "w1", State::Failed, Some(2));
    assert_eq!(d.tasks[0].state, State::Failed);
    assert_eq!(d.journal[0].message, "exit code 2");
    assert!(h.report(t.id, "w1", State::Running, None).is_empty());
    assert_eq!(h.task(t.id).state, State::Failed);
}

#[test]
fn on_failure_restarts_with_growing_backoff_then_gives_up() {
    let mut h = Harness::new(&["w1"]);
    let mut t = sleeper(RestartPolicy::OnFailure);
    t.max_restarts = Some(3);
    h.submit(t.clone());
    for (attempt, wait) in [(1u32, 1.0), (2, 2.0), (3, 4.0)] {
        h.report(t.id, "w1", State::Running, None);
        let d = h.report(t.id, "w1", State::Failed, Some(1));
        let failed = &d.tasks[0];
        assert_eq!(
            failed.next_attempt_at,
            Some(h.now + secs(wait)),
            "attempt {attempt}"
        );
        assert!(d.journal[0]
            .message
            .contains(&format!("restart {attempt} in {wait:.1}s")));
        h.advance(wait - 0.001);
        assert!(starts(&h.tick()).is_empty(), "not before {wait}s");
        h.advance(0.001);
        let d = h.tick();
        assert_eq!(
            starts(&d),
            vec![(pending_for("w1"), t.id, u64::from(attempt) + 1)]
        );
        assert_eq!(d.journal_kinds(), ["restarted"]);
        assert_eq!(h.task(t.id).restart_count, attempt);
    }
    h.report(t.id, "w1", State::Running, None);
    let d = h.report(t.id, "w1", State::Failed, Some(1));
    assert_eq!(d.journal[0].message, "exit code 1", "no restart announced");
    h.advance(600.0);
    h.heartbeat("w1", &[]);
    assert!(h.tick().is_empty(), "it stays failed");
    let t = h.task(t.id);
    assert_eq!(
        (t.state, t.restart_count, t.exit_code, t.next_attempt_at),
        (State::Failed, 3, Some(1), None)
    );
}

#[test]
fn backoff_doubles_to_a_cap() {
    assert_eq!(backoff(0), Duration::from_secs(1));
    assert_eq!(backoff(1), Duration::from_secs(2));
    assert_eq!(backoff(2), Duration::from_secs(4));
    assert_eq!(backoff(8), Duration::from_secs(256));
    assert_eq!(backoff(9), BACKOFF_CAP);
    assert_eq!(backoff(1000), BACKOFF_CAP);
}

#[test]
fn a_long_healthy_run_resets_the_restart_count() {
    let mut h = Harness::new(&["w1"]);
    let mut t = sleeper(RestartPolicy::OnFailure);
    t.max_restarts = Some(1);
    h.submit(t.clone());
    h.report(t.id, "w1", State::Running, None);
    h.report(t.id, "w1", State::Failed, Some(1));
    h.advance(1.0);
    h.tick();
    assert_eq!(h.task(t.id).restart_count, 1);
    h.report(t.id, "w1", State::Running, None);
    h.advance(HEALTHY_RUN_RESETS.as_secs_f64());
    let d = h.report(t.id, "w1", State::Failed, Some(1));
    assert_eq!(d.tasks[0].restart_count, 0);
    assert!(d.tasks[0].next_attempt_at.is_some(), "restarted again");
}

#[test]
fn always_treats_a_clean_exit_as_a_failure_unless_stopped() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::Always);
    h.submit(t.clone());
    h.report(t.id, "w1", State::Running, None);
    let d = h.report(t.id, "w1", State::Completed, Some(0));
    assert_eq!(d.tasks[0].state, State::Failed);
    assert_eq!(
        d.tasks[0].error.as_deref(),
        Some("exited with code 0 (restart policy always)")
    );
    h.advance(1.0);
    h.tick();
    h.report(t.id, "w1", State::Running, None);
    let d = h.stop(t.id);
    assert_eq!(
        stops(&d),
        vec![(pending_for("w1"), t.id, 2)],
        "the current placement"
    );
    let d = h.report(t.id, "w1", State::Completed, Some(0));
    assert_eq!(
        (d.tasks[0].state, d.tasks[0].next_attempt_at),
        (State::Completed, None)
    );
}

#[test]
fn stops_before_placement_while_queued_and_while_running() {
    // No node yet: the task waits, and a stop ends it at once.
    let mut h = Harness::new(&[]);
    let t = sleeper(RestartPolicy::No);
    let d = h.submit(t.clone());
    assert_eq!(d.journal_kinds(), ["submitted", "unschedulable"]);
    let d = h.stop(t.id);
    assert_eq!(d.tasks[0].state, State::Completed);
    assert_eq!(d.journal_kinds(), ["completed"]);

    // On the shared queue: the stop follows once a worker says where it runs.
    let mut h = Harness::with_scheduler("queue", &["w1"]);
    let t = sleeper(RestartPolicy::No);
    let d = h.submit(t.clone());
    assert_eq!(starts(&d), vec![(PENDING.to_string(), t.id, 1)]);
    assert!(h.stop(t.id).work.is_empty(), "nowhere to send it yet");
    let d = h.report(t.id, "w1", State::Running, None);
    assert_eq!(stops(&d), vec![(pending_for("w1"), t.id, 1)]);
    assert_eq!(h.task(t.id).worker.as_deref(), Some("w1"));

    let d = h.stop(Uuid::new_v4());
    assert_eq!(d.rejections.len(), 1, "an unknown task");
}

#[test]
fn a_silent_node_is_down_and_its_tasks_move_but_not_right_after_a_start() {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::Always);
    h.submit(t.clone());
    let (w, other) = h.placed_and_other(t.id);
    h.report(t.id, &w, State::Running, None);
    // Only the other node keeps speaking. Within TTL + grace of the start, nothing is judged.
    h.advance(14.0);
    h.heartbeat(other, &[]);
    assert!(h.tick().is_empty());
    h.advance(1.5);
    h.heartbeat(other, &[]);
    let d = h.tick();
    assert_eq!(d.journal_kinds(), ["node-down", "lost", "rescheduled"]);
    assert_eq!(starts(&d), vec![(pending_for(other), t.id, 2)]);
    assert_eq!(h.rules.cluster().node(&w).unwrap().state, NodeState::Down);
    // The node comes back listing the old copy: it is fenced, once per FENCE_AGAIN.
    let d = h.heartbeat(&w, &[(t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["node-joined", "fenced"]);
    assert_eq!(stops(&d), vec![(pending_for(&w), t.id, 1)]);
    assert!(stops(&h.heartbeat(&w, &[(t.id, 1)])).is_empty());
    h.advance(FENCE_AGAIN.as_secs_f64());
    assert_eq!(stops(&h.heartbeat(&w, &[(t.id, 1)])).len(), 1);
}

#[test]
fn fencing_spares_current_queued_and_moving_copies() {
    let mut t = sleeper(RestartPolicy::No);
    t.worker = Some("w1".into());
    t.generation = 3;
    t.state = State::Running;
    assert!(!nodes::is_stale(Some(&t), "w1", 3));
    assert!(nodes::is_stale(Some(&t), "w1", 2));
    assert!(nodes::is_stale(Some(&t), "w2", 3));
    assert!(nodes::is_stale(None, "w1", 3), "unknown to the manager");
    t.worker = None;
    t.state = State::Scheduled;
    assert!(
        !nodes::is_stale(Some(&t), "w2", 3),
        "taken from the queue, report on its way"
    );
    t.worker = Some("w2".into());
    t.previous = Some(cube_shared::Placement {
        worker: "w1".into(),
        generation: 2,
    });
    assert!(
        !nodes::is_stale(Some(&t), "w1", 2),
        "the copy being moved away from"
    );
    t.state = State::Completed;
    t.previous = None;
    assert!(
        nodes::is_stale(Some(&t), "w2", 3),
        "ended: its container must go"
    );
}

#[test]
fn a_drain_starts_the_replacement_first_then_stops_the_old_copy() {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let (from, to) = h.placed_and_other(t.id);
    h.report(t.id, &from, State::Running, None);
    assert_eq!(h.rules.check_drain("nope"), Err(NoSuchNode("nope".into())));
    h.rules.set_drain(&from, true, h.now).unwrap();
    let d = h.effects();
    assert_eq!(d.journal_kinds(), ["drain", "moving"]);
    assert_eq!(starts(&d), vec![(pending_for(to), t.id, 2)]);
    assert!(
        stops(&d).is_empty(),
        "the old copy runs until the new one does"
    );
    // Heartbeats of the draining node keep it draining, and its copy is not stale.
    let d = h.heartbeat(&from, &[(t.id, 1)]);
    assert!(d.work.is_empty());
    assert_eq!(
        h.rules.cluster().node(&from).unwrap().state,
        NodeState::Draining
    );
    let d = h.report(t.id, to, State::Running, None);
    assert_eq!(stops(&d), vec![(pending_for(&from), t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["moved", "running"]);
    assert_eq!(h.task(t.id).previous, None);
}

#[test]
fn a_failed_move_leaves_the_task_where_it_was() {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let (from, to) = h.placed_and_other(t.id);
    h.report(t.id, &from, State::Running, None);
    h.rules.set_drain(&from, true, h.now).unwrap();
    h.effects();
    let d = h.report(t.id, to, State::Failed, Some(125));
    assert_eq!(d.journal_kinds(), ["move-failed"]);
    let t = h.task(t.id);
    assert_eq!(
        (t.state, t.worker.as_deref(), t.generation),
        (State::Running, Some(from.as_str()), 1)
    );
}

#[test]
fn a_node_with_room_again_takes_the_waiting_tasks() {
    let mut h = Harness::new(&["w1"]);
    let mut big = sleeper(RestartPolicy::No);
    big.cpu = 3.0;
    let mut second = big.clone();
    second.id = Uuid::new_v4();
    h.submit(big.clone());
    let d = h.submit(second.clone());
    assert_eq!(d.journal_kinds(), ["submitted", "unschedulable"]);
    h.report(big.id, "w1", State::Running, None);
    let d = h.report(big.id, "w1", State::Completed, Some(0));
    assert_eq!(
        starts(&d),
        vec![(pending_for("w1"), second.id, 1)],
        "freed room is used at once"
    );
}

#[test]
fn a_restarted_manager_sends_recorded_placements_again_once() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let stored = Stored {
        tasks: h.rules.cluster().tasks().cloned().collect(),
        nodes: h.rules.cluster().nodes().cloned().collect(),
        drained: vec![],
    };
    let mut rules = Rules::new(
        h.rules.timings(),
        algorithms::by_name("spread").unwrap(),
        crate::metrics::Metrics::default(),
        stored,
        h.now,
    );
    assert!(rules.resend_due());
    rules.resend_placements();
    let d = rules.take_effects();
    assert_eq!(starts(&d), vec![(pending_for("w1"), t.id, 1)]);
    assert!(d.tasks.is_empty(), "nothing new to store");
    rules.resend_placements();
    assert!(rules.take_effects().is_empty());
}

#[test]
fn heartbeats_that_lie_about_their_name_are_ignored() {
    let mut h = Harness::new(&[]);
    let node: Node = crate::testing::node("w1", 1.0, 1 << 30);
    h.rules
        .on_heartbeat(&HEARTBEAT_ALL.replace('*', "w2"), &encode(&node), h.now);
    assert!(h.effects().is_empty());
    assert!(h.rules.cluster().node("w1").is_none());
}
