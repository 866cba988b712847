//! Bounded state: tasks that ended for good are forgotten after `keep_ended`, or beyond
//! `keep_ended_max`; nothing else is.

use super::*;
use crate::rules::retention::SWEEP_EVERY;

fn harness(keep_s: u64, max: usize) -> Harness {
    let t = Timings {
        keep_ended: Duration::from_secs(keep_s),
        keep_ended_max: max,
        ..timings()
    };
    Harness::with(t, "spread", &["w1"])
}

/// Submits a task and has it run and end as `end` (exit code `exit`); returns its id.
fn ended(h: &mut Harness, policy: RestartPolicy, end: State, exit: i64) -> Uuid {
    let t = sleeper(policy);
    h.submit(t.clone());
    h.report(t.id, "w1", State::Running, None);
    h.report(t.id, "w1", end, Some(exit));
    t.id
}

/// Ticks through one sweep interval, the node heard meanwhile running `running`.
fn sweep_running(h: &mut Harness, running: &[(Uuid, u64)]) -> Decided {
    h.advance(SWEEP_EVERY.as_secs_f64());
    h.heartbeat("w1", running);
    h.tick()
}

fn sweep(h: &mut Harness) -> Decided {
    sweep_running(h, &[])
}

#[test]
fn a_task_that_ended_is_kept_for_keep_ended_then_forgotten() {
    let mut h = harness(60, 100);
    let id = ended(&mut h, RestartPolicy::No, State::Completed, 0);
    let d = h.tick();
    assert!(d.forgotten.is_empty(), "kept at first");
    let sweeps_within = (60.0 / SWEEP_EVERY.as_secs_f64()) as usize - 1;
    for _ in 0..sweeps_within {
        assert!(sweep(&mut h).forgotten.is_empty(), "kept for 60 s");
    }
    let d = sweep(&mut h);
    assert_eq!(d.forgotten, vec![id], "forgotten once 60 s have passed");
    assert!(h.rules.cluster().task(&id).is_none(), "gone from memory");
    assert!(d.tasks.iter().all(|t| t.id != id), "and not stored again");
    assert_eq!(d.journal_kinds(), ["forgotten"], "one entry for the sweep");
    assert!(sweep(&mut h).forgotten.is_empty(), "forgotten once");
}

#[test]
fn beyond_keep_ended_max_the_longest_ended_go_first() {
    let mut h = harness(24 * 3600, 2);
    let first = ended(&mut h, RestartPolicy::No, State::Completed, 0);
    h.advance(1.0);
    let second = ended(&mut h, RestartPolicy::No, State::Failed, 1);
    h.advance(1.0);
    let third = ended(&mut h, RestartPolicy::No, State::Completed, 0);
    let d = sweep(&mut h);
    assert_eq!(d.forgotten, vec![first]);
    for kept in [second, third] {
        assert!(h.rules.cluster().task(&kept).is_some());
    }
    assert_eq!(
        h.rules.cluster().count_by_state()[State::Completed as usize],
        1
    );
}

#[test]
fn what_has_not_ended_for_good_is_never_forgotten() {
    let mut h = harness(1, 0);
    let running = sleeper(RestartPolicy::No);
    h.submit(running.clone());
    h.report(running.id, "w1", State::Running, None);
    // Failed, with a restart to come.
    let restarting = ended(&mut h, RestartPolicy::Always, State::Failed, 1);
    // Pending: no node has room for it.
    let mut huge = sleeper(RestartPolicy::No);
    huge.cpu = 1000.0;
    h.submit(huge.clone());
    for _ in 0..3 {
        let generation = h.task(running.id).generation;
        assert!(sweep_running(&mut h, &[(running.id, generation)])
            .forgotten
            .is_empty());
    }
    for id in [running.id, restarting, huge.id] {
        assert!(h.rules.cluster().task(&id).is_some(), "{id} kept");
    }
}

#[test]
fn a_batch_jobs_completed_copies_are_kept_while_the_job_is() {
    let mut h = harness(1, 0);
    h.deploy("job", cube_shared::ServiceKind::Batch, 1);
    let copy = h
        .rules
        .cluster()
        .tasks()
        .find(|t| t.service.as_deref() == Some("job"))
        .map(|t| t.id)
        .expect("a copy");
    h.report(copy, "w1", State::Running, None);
    h.report(copy, "w1", State::Completed, Some(0));
    for _ in 0..3 {
        assert!(sweep(&mut h).forgotten.is_empty());
    }
    assert!(h.rules.cluster().task(&copy).is_some(), "the job counts it");
}
