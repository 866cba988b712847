//! Fencing, drain, room freed, and a restarted manager.

use super::*;

#[test]
fn fencing_spares_current_queued_and_moving_copies() {
    let mut t = sleeper(RestartPolicy::No);
    t.worker = Some("w1".into());
    t.generation = 3;
    t.state = State::Running;
    assert!(!crate::rules::nodes::is_stale(Some(&t), "w1", 3));
    assert!(crate::rules::nodes::is_stale(Some(&t), "w1", 2));
    assert!(crate::rules::nodes::is_stale(Some(&t), "w2", 3));
    assert!(
        crate::rules::nodes::is_stale(None, "w1", 3),
        "unknown to the manager"
    );
    t.worker = None;
    t.state = State::Scheduled;
    assert!(
        !crate::rules::nodes::is_stale(Some(&t), "w2", 3),
        "taken from the queue, report on its way"
    );
    t.worker = Some("w2".into());
    t.previous = Some(cube_shared::Placement {
        worker: "w1".into(),
        generation: 2,
    });
    assert!(
        !crate::rules::nodes::is_stale(Some(&t), "w1", 2),
        "the copy being moved away from"
    );
    t.state = State::Completed;
    t.previous = None;
    assert!(
        crate::rules::nodes::is_stale(Some(&t), "w2", 3),
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
    let task = h.task(t.id);
    assert_eq!(
        (task.state, task.worker.as_deref(), task.generation),
        (State::Running, Some(from.as_str()), 1)
    );
    // The drain tries again with a placement of its own: generation 2 failed on `to`, and a
    // generation is never given twice (the worker there remembers it ended, and JetStream
    // would drop its work as a duplicate).
    h.heartbeat(&from, &[(t.id, 1)]);
    h.heartbeat(to, &[]);
    let d = h.tick();
    assert_eq!(starts(&d), vec![(pending_for(to), t.id, 3)]);
    assert_eq!(h.task(t.id).highest_generation, 0, "passed");
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
        ..Stored::default()
    };
    let mut rules = h.restarted(stored).rules;
    assert!(rules.resend_due());
    rules.resend_placements();
    let d = rules.take_effects();
    assert_eq!(starts(&d), vec![(pending_for("w1"), t.id, 1)]);
    assert!(d.tasks.is_empty(), "nothing new to store");
    rules.resend_placements();
    assert!(rules.take_effects().is_empty());
}

/// The Task DB holds decisions: a task that runs is stored `scheduled`, and a manager that
/// starts leading learns that it runs from the worker's kept report, quietly (the leader that
/// handled it journalled it), while a report nobody handled yet is acted on as delivered.
#[test]
fn a_restarted_manager_takes_status_from_the_kept_reports() {
    let mut h = Harness::new(&["w1"]);
    let (runs, ends) = (sleeper(RestartPolicy::No), sleeper(RestartPolicy::No));
    h.submit(runs.clone());
    h.submit(ends.clone());
    let stored_records = Stored {
        tasks: h.rules.cluster().tasks().cloned().collect(),
        nodes: h.rules.cluster().nodes().cloned().collect(),
        ..Stored::default()
    };
    let report = |id: Uuid, state: State| {
        let mut r = StateReport::new(id, "w1", state);
        r.generation = Some(1);
        r.container_id = Some(format!("c-{id}"));
        (state_for(id, "w1"), encode(&r))
    };
    let running = report(runs.id, State::Running);
    h.rules.on_report(&running.0, &running.1, h.now);
    assert!(h.effects().tasks.is_empty(), "running is not stored");
    let mut rules = h.restarted(stored_records).rules;
    assert!(rules.replay_report(&running.0, &running.1, h.now));
    let completed = report(ends.id, State::Completed);
    assert!(rules.replay_report(&completed.0, &completed.1, h.now));
    let forgotten = report(Uuid::new_v4(), State::Completed);
    assert!(!rules.replay_report(&forgotten.0, &forgotten.1, h.now));
    let restored = rules.cluster().task(&runs.id).unwrap();
    assert_eq!(
        (restored.state, restored.container_id.clone()),
        (State::Running, Some(format!("c-{}", runs.id)))
    );
    let d = rules.take_effects();
    assert_eq!(
        d.journal_kinds(),
        ["completed"],
        "only the news is journalled"
    );
    let stored: Vec<(Uuid, State)> = d.tasks.iter().map(|t| (t.id, t.state)).collect();
    assert_eq!(stored, [(ends.id, State::Completed)]);
    rules.resend_placements();
    assert!(
        starts(&rules.take_effects()).is_empty(),
        "nothing is placed again"
    );
}

#[test]
fn heartbeats_that_lie_about_their_name_are_ignored() {
    let mut h = Harness::new(&[]);
    let node: Node = crate::testing::node("w1", 1.0, 1 << 30);
    h.rules.on_heartbeat(
        &HEARTBEAT_ALL.replace('*', "w2"),
        &encode(&node),
        h.now,
        h.mono,
    );
    assert!(h.effects().is_empty());
    assert!(h.rules.cluster().node("w1").is_none());
}

/// A task on a node being drained, moving to the other node: (harness, task, from, to).
fn moving() -> (Harness, Task, String, &'static str) {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::OnFailure);
    h.submit(t.clone());
    let (from, to) = h.placed_and_other(t.id);
    h.report(t.id, &from, State::Running, None);
    h.rules.set_drain(&from, true, h.now).unwrap();
    h.effects();
    (h, t, from, to)
}

#[test]
fn a_task_stopped_while_it_moves_stops_both_copies() {
    let (mut h, t, from, to) = moving();
    let d = h.stop(t.id);
    assert_eq!(
        stops(&d),
        vec![(pending_for(&from), t.id, 1), (pending_for(to), t.id, 2)],
        "both copies at once: the old one would run on should the move fail"
    );
    let d = h.report(t.id, to, State::Completed, None);
    assert_eq!(
        stops(&d),
        vec![(pending_for(&from), t.id, 1)],
        "asked again"
    );
    assert_eq!(h.task(t.id).previous, None);
    // Its heartbeat still lists the old copy until it is stopped: that copy is now stale.
    h.advance(FENCE_AGAIN.as_secs_f64());
    assert_eq!(stops(&h.heartbeat(&from, &[(t.id, 1)])).len(), 1);
}

#[test]
fn when_the_old_copy_ends_mid_move_a_failed_move_is_a_failure() {
    let (mut h, t, from, to) = moving();
    let d = h.report_generation(t.id, &from, State::Failed, Some(1), 1);
    assert_eq!(
        d.journal_kinds(),
        ["moving"],
        "nothing to fall back to any more"
    );
    assert_eq!(h.task(t.id).state, State::Scheduled, "the move goes on");
    let d = h.report(t.id, to, State::Failed, Some(1));
    let task = &d.tasks[0];
    assert_eq!((task.state, task.previous.clone()), (State::Failed, None));
    assert!(task.next_attempt_at.is_some(), "its restart policy applies");
}

#[test]
fn a_destination_lost_mid_move_leaves_the_task_where_it_was() {
    let (mut h, t, from, to) = moving();
    // Only the draining node keeps speaking.
    for _ in 0..16 {
        h.advance(1.0);
        h.heartbeat(&from, &[(t.id, 1)]);
    }
    let d = h.tick();
    assert_eq!(d.journal_kinds(), ["node-down", "move-failed"]);
    let task = h.task(t.id);
    assert_eq!(
        (
            task.state,
            task.worker.as_deref(),
            task.generation,
            task.highest_generation
        ),
        (State::Running, Some(from.as_str()), 1, 2)
    );
    assert!(d.journal[1].message.contains(&format!("node lost: {to}")));
}

#[test]
fn a_heartbeat_that_cannot_be_true_is_not_believed_and_is_journalled() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::Always);
    h.submit(t.clone());
    h.report(t.id, "w1", State::Running, None);
    let lie = |h: &mut Harness, name: &str| {
        let mut node = crate::testing::node(name, 100_000.0, 1 << 60);
        node.running = vec![RunningTask {
            id: t.id,
            generation: 1,
        }];
        h.rules.on_heartbeat(
            &HEARTBEAT_ALL.replace('*', name),
            &encode(&node),
            h.now,
            h.mono,
        );
        h.effects()
    };
    // A known node claiming a capacity no host has keeps its record, and its task.
    let d = lie(&mut h, "w1");
    assert_eq!(d.journal_kinds(), ["heartbeat-refused"]);
    assert!(
        d.journal[0].message.contains("100000 cores"),
        "{}",
        d.journal[0].message
    );
    assert_eq!(h.rules.cluster().node("w1").unwrap().cores, 4.0);
    // Said again at once: not journalled again.
    assert!(lie(&mut h, "w1").journal.is_empty());
    // An unknown node that lies, or takes a reserved name, is not admitted.
    assert_eq!(lie(&mut h, "liar").journal_kinds(), ["heartbeat-refused"]);
    assert!(h.rules.cluster().node("liar").is_none());
    let d = h.heartbeat("manager", &[]);
    assert_eq!(d.journal_kinds(), ["heartbeat-refused"]);
    assert!(h.rules.cluster().node("manager").is_none());
    // Silence judged later spares w1's task: its lying heartbeats still count as heard.
    for _ in 0..12 {
        h.advance(1.0);
        lie(&mut h, "w1");
        h.tick();
    }
    assert_eq!(h.task(t.id).state, State::Running);
}
