//! The slot table's rules: claims and capacity, the finished memory, stop requests, turns.

use std::sync::Arc;
use std::time::Duration;

use cube_shared::Task;
use prometheus::IntGauge;
use tokio::sync::Semaphore;

use super::*;

fn table() -> Arc<Table> {
    Table::new(IntGauge::new("running", "running").unwrap())
}

fn task(cpu: f64, memory: u64) -> Task {
    let mut t = Task::new("busybox");
    t.cpu = cpu;
    t.memory = memory;
    t.generation = 1;
    t
}

fn placement(t: &Task) -> Placement {
    Placement {
        generation: t.generation,
        container_id: format!("c-{}", t.id),
        start_time: None,
    }
}

/// Starts `t` as the worker would: claim, then record its container.
fn run(tasks: &Arc<Table>, t: &Task) {
    let claim = tasks.claim(t, false).unwrap();
    tasks.run(claim, placement(t), None);
}

#[test]
fn finished_remembers_the_latest_placement_and_forgets_the_oldest_task() {
    let mut f = Finished {
        limit: Some(2),
        ..Finished::default()
    };
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    f.insert(a, 3);
    assert!(
        f.ended(&a, 3) && f.ended(&a, 2),
        "an older placement ended too"
    );
    assert!(!f.ended(&a, 4), "a newer placement is not ended");
    f.insert(b, 1);
    f.insert(a, 5);
    assert!(f.ended(&a, 5));
    f.insert(c, 1);
    assert!(
        !f.ended(&a, 1),
        "the oldest task is forgotten past the limit"
    );
    assert!(f.ended(&b, 1) && f.ended(&c, 1));
}

#[test]
fn a_task_fits_while_the_claims_leave_room() {
    let t = task(1.0, 100);
    assert!(fits(None, std::iter::empty(), &t), "capacity not known yet");
    assert!(fits(Some((2.0, 200)), [(1.0, 100)].into_iter(), &t));
    assert!(!fits(Some((2.0, 200)), [(1.5, 0)].into_iter(), &t), "cpu");
    assert!(
        !fits(Some((2.0, 200)), [(0.0, 101)].into_iter(), &t),
        "memory"
    );
    assert!(fits(
        Some((0.3, 0)),
        [(0.1, 0), (0.1, 0)].into_iter(),
        &task(0.1, 0)
    ));
}

#[test]
fn claims_from_the_shared_queue_never_overcommit() {
    let tasks = table();
    tasks.set_capacity((2.0, 1000));
    let (a, b) = (task(1.5, 10), task(1.0, 10));
    let claim_a = tasks.claim(&a, true).unwrap();
    assert_eq!(tasks.claim(&b, true).err(), Some(NoClaim::NoRoom));
    let placed = tasks
        .claim(&b, false)
        .expect("the manager's placements are taken anyway");
    drop(placed);
    drop(claim_a);
    assert!(tasks.claimed().is_empty());
    let _b = tasks
        .claim(&b, true)
        .expect("room once a's claim is given back");
}

#[test]
fn a_claim_dropped_before_its_container_runs_is_given_back() {
    let tasks = table();
    let t = task(1.0, 10);
    let claim = tasks.claim(&t, true).unwrap();
    assert_eq!(tasks.claimed(), vec![(t.id, (1.0, 10))]);
    drop(claim);
    assert!(tasks.claimed().is_empty());
    assert_eq!(tasks.slots(), 0, "an empty slot goes");
}

#[test]
fn a_running_task_keeps_its_claim_until_forgotten() {
    let tasks = table();
    let t = task(1.0, 10);
    run(&tasks, &t);
    assert_eq!(tasks.claimed(), vec![(t.id, (1.0, 10))]);
    assert_eq!(tasks.running(t.id), Some(placement(&t)));
    assert_eq!(tasks.all_running(), vec![(t.id, 1)]);
    assert_eq!(tasks.gauge.get(), 1);
    tasks.forget(t.id);
    assert!(tasks.claimed().is_empty());
    assert_eq!(tasks.running(t.id), None);
    assert_eq!((tasks.gauge.get(), tasks.slots()), (0, 0));
}

#[test]
fn a_start_of_a_running_task_gets_no_claim() {
    let tasks = table();
    let t = task(1.0, 10);
    run(&tasks, &t);
    assert_eq!(tasks.claim(&t, false).err(), Some(NoClaim::Running));
    assert_eq!(tasks.claimed().len(), 1);
}

#[test]
fn a_stop_request_is_kept_only_for_a_running_task_and_read_once() {
    let tasks = table();
    let t = task(0.0, 0);
    assert_eq!(tasks.request_stop(t.id, 1), None);
    assert!(!tasks.take_stop_request(t.id, 1));
    run(&tasks, &t);
    assert_eq!(tasks.request_stop(t.id, 1), Some(placement(&t)));
    assert!(tasks.take_stop_request(t.id, 1));
    assert!(!tasks.take_stop_request(t.id, 1), "read once");
    tasks.request_stop(t.id, 0);
    assert!(tasks.take_stop_request(t.id, 1), "0: whichever runs");
    tasks.request_stop(t.id, 1);
    tasks.forget(t.id);
    run(&tasks, &t);
    assert!(
        !tasks.take_stop_request(t.id, 1),
        "forgotten with its placement"
    );
}

/// With the generation in hand, run placement `g` of `t`.
fn run_generation(tasks: &Arc<Table>, t: &Task, g: u64) -> Task {
    let mut p = t.clone();
    p.generation = g;
    run(tasks, &p);
    p
}

#[test]
fn a_stop_of_an_older_placement_never_swallows_the_exit_of_the_newer_one() {
    // Finding 4: a repeated fence for placement 1 arrives while placement 2 runs here.
    let tasks = table();
    let t = task(0.0, 0);
    run_generation(&tasks, &t, 2);
    assert_eq!(tasks.request_stop(t.id, 1).map(|p| p.generation), Some(2));
    assert!(
        !tasks.take_stop_request(t.id, 2),
        "placement 2's own exit is a real exit"
    );
    // A stop of placement 2 that finds no container leaves no marker behind.
    tasks.request_stop(t.id, 2);
    tasks.clear_stop_request(t.id, 2);
    assert!(!tasks.take_stop_request(t.id, 2));
    // A stop of placement 2 that did stop it explains its exit.
    tasks.request_stop(t.id, 2);
    assert!(tasks.take_stop_request(t.id, 2));
}

#[test]
fn an_older_placement_ending_never_makes_a_newer_one_startable_again() {
    let tasks = table();
    let t = task(0.0, 0);
    tasks.ended(t.id, 5);
    tasks.ended(t.id, 3);
    assert!(tasks.placement_ended(t.id, 5), "5 stays remembered");
    assert!(!tasks.placement_ended(t.id, 6));
}

#[test]
fn a_newer_start_that_fails_gives_the_room_back_to_the_copy_that_runs() {
    // Finding 5: a start of placement 2 while placement 1 runs is not a duplicate; if it
    // fails (the old copy would not stop), the old copy keeps its room.
    let tasks = table();
    let t = task(1.0, 10);
    run(&tasks, &t);
    let mut newer = t.clone();
    newer.generation = 2;
    newer.cpu = 2.0;
    let claim = tasks.claim(&newer, false).expect("not a duplicate");
    assert_eq!(tasks.claimed(), vec![(t.id, (2.0, 10))]);
    let mut accepted = tasks.all_accepted();
    accepted.sort();
    assert_eq!(accepted, vec![(t.id, 1), (t.id, 2)], "both listed");
    drop(claim);
    assert_eq!(tasks.claimed(), vec![(t.id, (1.0, 10))]);
    assert_eq!(tasks.all_accepted(), vec![(t.id, 1)]);
    // Once the old copy is retired, a failed newer start leaves nothing held.
    let claim = tasks.claim(&newer, false).unwrap();
    tasks.retire(t.id, 1);
    drop(claim);
    assert!(tasks.claimed().is_empty());
    assert!(tasks.all_accepted().is_empty());
}

#[test]
fn a_heartbeat_lists_the_placements_being_started_too() {
    let tasks = table();
    let (a, b) = (task(0.0, 0), task(0.0, 0));
    run(&tasks, &a);
    let starting = tasks.claim(&b, false).unwrap();
    let mut accepted = tasks.all_accepted();
    accepted.sort();
    let mut want = vec![(a.id, 1), (b.id, 1)];
    want.sort();
    assert_eq!(accepted, want);
    drop(starting);
    assert_eq!(tasks.all_accepted(), vec![(a.id, 1)]);
}

#[test]
fn forgetting_stops_the_health_checks() {
    let tasks = table();
    let t = task(0.0, 0);
    let checks = tokio_util::sync::CancellationToken::new();
    let claim = tasks.claim(&t, false).unwrap();
    tasks.run(claim, placement(&t), Some(checks.clone().drop_guard()));
    assert!(!checks.is_cancelled());
    tasks.forget(t.id);
    assert!(checks.is_cancelled());
}

#[tokio::test]
async fn operations_on_one_task_take_turns_in_arrival_order() {
    let tasks = table();
    let ops = Arc::new(Semaphore::new(4));
    let permit = || {
        let ops = ops.clone();
        async move { ops.acquire_owned().await.unwrap() }
    };
    let id = Uuid::new_v4();
    let first = tasks.turn(id, permit()).await;
    let second = tokio::spawn({
        let tasks = tasks.clone();
        let permit = permit();
        async move { tasks.turn(id, permit).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!second.is_finished(), "the second waits for the first");
    drop(first);
    assert_eq!(
        tasks.slots(),
        1,
        "the slot stays while the second holds its turn"
    );
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second turn comes (likely deadlocked)")
        .unwrap();
    let other = tasks.turn(Uuid::new_v4(), permit()).await;
    drop((second, other));
    assert_eq!(tasks.slots(), 0, "no slot outlives the last turn");
}

#[tokio::test]
async fn a_placement_forgotten_during_its_turn_goes_when_the_turn_ends() {
    let tasks = table();
    let ops = Arc::new(Semaphore::new(1));
    let t = task(0.0, 0);
    let permit = async { ops.clone().acquire_owned().await.unwrap() };
    let turn = tasks.turn(t.id, permit).await;
    run(&tasks, &t);
    tasks.forget(t.id);
    assert_eq!(tasks.slots(), 1, "the turn still holds it");
    drop(turn);
    assert_eq!(tasks.slots(), 0);
}
