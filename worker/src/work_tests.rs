//! The work handlers' rules, without NATS or Docker: the Task DB record and the slot table are
//! passed in, and the runtime is the simulation.

use std::sync::Arc;

use chrono::Utc;
use cube_shared::{State, Task};
use prometheus::IntGauge;

use super::*;
use crate::runtime::SimRuntime;

fn cfg() -> Config {
    Config::new("w1")
}

fn table() -> Arc<Table> {
    Table::new(IntGauge::new("running", "running").unwrap())
}

/// A task placed on `w1` in placement 3, as the work message carries it.
fn task() -> Task {
    let mut t = Task::new("busybox");
    t.generation = 3;
    t.worker = Some("w1".into());
    t.state = State::Scheduled;
    t
}

/// The Task DB's record of `t`, changed by `change`.
fn record(t: &Task, change: impl FnOnce(&mut Task)) -> Record {
    let mut current = t.clone();
    change(&mut current);
    Record::Found(Box::new(current))
}

fn superseded(v: Verdict) -> bool {
    matches!(v, Verdict::Superseded(_))
}

fn report_of(outcome: Outcome) -> StateReport {
    match outcome {
        Outcome::Report(r) => *r,
        other => panic!("expected a report, got {other:?}"),
    }
}

#[test]
fn a_start_the_task_db_agrees_with_is_current() {
    let t = task();
    assert_eq!(verdict(&t, "w1", record(&t, |_| {})), Verdict::Current);
    let running = record(&t, |c| c.state = State::Running);
    assert_eq!(verdict(&t, "w1", running), Verdict::Current, "a redelivery");
    let stopping = record(&t, |c| {
        c.state = State::Running;
        c.stop_requested = true;
    });
    assert_eq!(
        verdict(&t, "w1", stopping),
        Verdict::Current,
        "the stop follows"
    );
}

#[test]
fn a_start_the_task_db_moved_on_from_is_superseded() {
    let t = task();
    assert!(superseded(verdict(
        &t,
        "w1",
        record(&t, |c| c.generation = 4)
    )));
    assert!(superseded(verdict(
        &t,
        "w1",
        record(&t, |c| c.generation = 2)
    )));
    let elsewhere = record(&t, |c| c.worker = Some("w2".into()));
    assert!(superseded(verdict(&t, "w1", elsewhere)));
    let ended = record(&t, |c| c.state = State::Completed);
    assert!(superseded(verdict(&t, "w1", ended)));
    // A placement delivered again after it failed (its consumer was made anew and replays
    // the work stream) must not run it a second time.
    let failed = record(&t, |c| c.state = State::Failed);
    assert!(superseded(verdict(&t, "w1", failed)));
    assert!(superseded(verdict(&t, "w1", Record::Missing)));
}

#[test]
fn an_unreadable_record_does_not_hold_up_the_work() {
    let t = task();
    let e = cube_shared::wire::decode::<Task>(b"not json", usize::MAX).unwrap_err();
    assert_eq!(verdict(&t, "w1", Record::Unreadable(e)), Verdict::Current);
}

#[test]
fn a_stop_before_the_start_reports_completed_and_gives_the_claim_back() {
    let (cfg, tasks, t) = (cfg(), table(), task());
    let stopped = record(&t, |c| c.stop_requested = true);
    let v = verdict(&t, "w1", stopped);
    assert_eq!(v, Verdict::StoppedBeforeStart);
    let claim = tasks.claim(&t, false).unwrap();
    let r = report_of(admit(&cfg, &tasks, &t, v, claim).err().unwrap());
    assert_eq!(
        (r.state, r.generation, r.error),
        (State::Completed, Some(3), None)
    );
    assert!(tasks.claimed().is_empty());
}

#[test]
fn a_start_older_than_a_placement_that_ended_here_is_superseded() {
    let (cfg, tasks, t) = (cfg(), table(), task());
    tasks.ended(t.id, 5);
    assert!(tasks.has_ended(&t), "placement 3 is older than 5");
    let claim = tasks.claim(&t, false).unwrap();
    let outcome = admit(&cfg, &tasks, &t, Verdict::ended_here(), claim);
    assert!(matches!(outcome, Err(Outcome::Ack)));
    assert!(tasks.claimed().is_empty());
    let mut newer = t.clone();
    newer.generation = 6;
    assert!(!tasks.has_ended(&newer));
}

#[test]
fn a_start_the_policy_refuses_fails_and_gives_the_claim_back() {
    let (cfg, tasks, mut t) = (cfg(), table(), task());
    t.privileged = true;
    let claim = tasks.claim(&t, false).unwrap();
    let r = report_of(
        admit(&cfg, &tasks, &t, Verdict::Current, claim)
            .err()
            .unwrap(),
    );
    assert_eq!(r.state, State::Failed);
    assert!(r.error.unwrap().starts_with("refused by worker w1"));
    assert!(tasks.claimed().is_empty());
    assert!(tasks.has_ended(&t), "a redelivery is not refused twice");
}

#[test]
fn a_start_that_did_not_fit_is_offered_elsewhere_then_fails() {
    let t = task();
    let early = no_claim("w1", &t, NoClaim::NoRoom, 1);
    assert!(matches!(early, Outcome::Retry(d) if d == RETRY_ELSEWHERE));
    let r = report_of(no_claim("w1", &t, NoClaim::NoRoom, MAX_DELIVER));
    assert_eq!((r.state, r.generation), (State::Failed, Some(3)));
}

/// Starts `t` under a claim and records its container as running, as `Worker::start` does.
async fn run_here(sim: &SimRuntime, cfg: &Config, tasks: &Arc<Table>, t: &Task) -> Started {
    let claim = tasks.claim(t, false).unwrap();
    let (started, claim) = launch(sim, cfg, tasks, t, claim, 1).await.unwrap();
    let placement = Placement {
        generation: t.generation,
        container_id: started.container_id.clone(),
        start_time: Some(started.start_time),
    };
    tasks.run(claim, placement, None);
    started
}

#[tokio::test]
async fn a_duplicate_start_does_not_start_a_second_container() {
    let (cfg, tasks, t) = (cfg(), table(), task());
    let sim = SimRuntime::default();
    let started = run_here(&sim, &cfg, &tasks, &t).await;

    let again = tasks.claim(&t, false).map(|_| ()).unwrap_err();
    assert!(matches!(no_claim("w1", &t, again, 1), Outcome::Ack));
    assert_eq!((sim.starts(), tasks.claimed().len()), (1, 1));

    // A worker that restarted knows nothing of it: the runtime adopts the container.
    let fresh = table();
    let claim = fresh.claim(&t, false).unwrap();
    let (adopted, _) = launch(&sim, &cfg, &fresh, &t, claim, 1).await.unwrap();
    assert_eq!(adopted.container_id, started.container_id);
    assert_eq!(sim.starts(), 1);
}

#[tokio::test]
async fn a_newer_placement_is_not_taken_for_a_duplicate_of_the_copy_that_runs() {
    // The simulation test found this: a task whose node fell silent was lost and placed on
    // the same node again; the new placement's start was acked as a duplicate of the old
    // copy's, and the task stayed `scheduled` for ever.
    let (cfg, tasks, t) = (cfg(), table(), task());
    let sim = SimRuntime::default();
    run_here(&sim, &cfg, &tasks, &t).await;

    let mut newer = t.clone();
    newer.generation = t.generation + 1;
    let claim = tasks
        .claim(&newer, false)
        .expect("an older copy does not block it");
    tasks.retire(t.id, t.generation);
    assert_eq!(tasks.running(t.id), None);
    assert!(tasks.has_ended(&t), "the old placement ended here");
    assert_eq!(
        tasks.claimed().len(),
        1,
        "the claim stays for the new placement"
    );
    let (_, claim) = launch(&sim, &cfg, &tasks, &newer, claim, 1).await.unwrap();
    assert_eq!(sim.starts(), 2, "the new placement has its own container");
    drop(claim);
}

#[tokio::test]
async fn a_start_the_runtime_fails_reports_failed_and_gives_the_claim_back() {
    let (cfg, tasks, t) = (cfg(), table(), task());
    let sim = SimRuntime::default();
    sim.fail_image("busybox");
    let claim = tasks.claim(&t, true).unwrap();
    let outcome = launch(&sim, &cfg, &tasks, &t, claim, 1)
        .await
        .err()
        .unwrap();
    let r = report_of(outcome);
    assert_eq!((r.state, r.generation), (State::Failed, Some(3)));
    assert!(r.error.unwrap().contains("busybox"));
    assert!(tasks.claimed().is_empty());
    assert!(tasks.has_ended(&t));
    assert_eq!(cfg.metrics.containers_failed.get(), 1);
}

#[test]
fn a_runtime_that_is_away_is_tried_again_until_the_last_offer() {
    let (cfg, tasks, t) = (cfg(), table(), task());
    let away = || RuntimeError::Unavailable("simulated: the engine is away".into());
    let outcome = start_failed(&cfg, &tasks, &t, away(), 1);
    assert!(matches!(outcome, Outcome::Retry(d) if d == RETRY_SOON));
    assert!(!tasks.has_ended(&t), "nothing ended yet");
    let r = report_of(start_failed(&cfg, &tasks, &t, away(), MAX_DELIVER));
    assert_eq!(r.state, State::Failed);
}

fn exit(t: &Task, generation: u64) -> Exit {
    Exit {
        task_id: t.id,
        generation,
        exit_code: 143,
        error: None,
        finish_time: Utc::now(),
    }
}

#[test]
fn an_exit_while_a_stop_was_requested_is_not_a_failure() {
    let tasks = table();
    let t = task();
    let claim = tasks.claim(&t, false).unwrap();
    let placement = Placement {
        generation: 3,
        container_id: "c1".into(),
        start_time: None,
    };
    tasks.run(claim, placement.clone(), None);
    tasks.request_stop(t.id, 3);
    let stop_requested = tasks.take_stop_request(t.id, 3);
    let meaning = exit_meaning(&exit(&t, 3), tasks.running(t.id), stop_requested);
    assert_eq!(meaning, ExitMeaning::Stopped);

    let by_itself = exit_meaning(&exit(&t, 3), tasks.running(t.id), false);
    assert_eq!(by_itself, ExitMeaning::Ended(placement));
}

#[test]
fn an_exit_of_a_placement_not_running_here_is_ignored() {
    let t = task();
    let running = Placement {
        generation: 4,
        container_id: "c2".into(),
        start_time: None,
    };
    let older = exit_meaning(&exit(&t, 3), Some(running), false);
    assert_eq!(older, ExitMeaning::Untracked);
    assert_eq!(
        exit_meaning(&exit(&t, 3), None, false),
        ExitMeaning::Untracked
    );
}

#[test]
fn a_start_whose_record_cannot_be_read_is_tried_again_then_reported_failed() {
    // Finding 7: this nak had no MaxDeliver check; after the last offer JetStream dropped the
    // work and the task stayed `scheduled` for ever.
    let (cfg, tasks, t) = (cfg(), table(), task());
    let e = std::io::Error::other("simulated: the Task DB stream has no leader");
    let outcome = unreadable_db(&cfg, &tasks, &t, &e, MAX_DELIVER - 1);
    assert!(matches!(outcome, Outcome::Retry(d) if d == RETRY_SOON));
    assert!(!tasks.has_ended(&t));
    let r = report_of(unreadable_db(&cfg, &tasks, &t, &e, MAX_DELIVER));
    assert_eq!((r.state, r.generation), (State::Failed, Some(3)));
    assert!(r.error.unwrap().contains("no leader"));
    assert!(tasks.has_ended(&t), "a redelivery does not start it");
}

#[test]
fn a_start_that_cannot_retire_the_older_copy_is_tried_again_then_reported_failed() {
    let (cfg, t) = (cfg(), task());
    let away = || RuntimeError::Unavailable("simulated: the engine is away".into());
    let outcome = retire_failed(&cfg, &t, 2, &away(), 1);
    assert!(matches!(outcome, Outcome::Retry(d) if d == RETRY_SOON));
    let r = report_of(retire_failed(&cfg, &t, 2, &away(), MAX_DELIVER));
    assert_eq!((r.state, r.generation), (State::Failed, Some(3)));
    assert!(r.error.unwrap().contains("older copy (placement 2)"));
}
