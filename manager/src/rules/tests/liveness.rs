//! Liveness under gray failures: a silent node is unreachable, then down; only a manager that
//! can hear judges; most nodes silent at once is the manager's problem; a returning node's
//! copies are kept where no replacement started; placements in doubt are made again.

use super::*;

/// A task of `policy` running on one of `w1`, `w2`: (harness, task, its node, the other).
fn running(policy: RestartPolicy) -> (Harness, Task, String, &'static str) {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(policy);
    h.submit(t.clone());
    let (w, other) = h.placed_and_other(t.id);
    h.report(t.id, &w, State::Running, None);
    h.heartbeat(&w, &[(t.id, 1)]);
    h.effects();
    (h, t, w, other)
}

/// `secs` pass in one-second ticks while only `speaking` send heartbeats (the others are
/// silent); returns everything decided.
fn pass(h: &mut Harness, secs: u32, speaking: &[(&str, &[(Uuid, u64)])]) -> Vec<Decided> {
    let mut all = Vec::new();
    for _ in 0..secs {
        h.advance(1.0);
        for (w, running) in speaking {
            all.push(h.heartbeat(w, running));
        }
        all.push(h.tick());
    }
    all
}

fn kinds(all: &[Decided]) -> Vec<String> {
    all.iter()
        .flat_map(|d| d.journal_kinds().into_iter().map(String::from))
        .collect()
}

fn state_of(h: &Harness, node: &str) -> NodeState {
    h.rules.cluster().node(node).unwrap().state
}

#[test]
fn a_silent_node_is_unreachable_then_down_and_its_restartable_tasks_move() {
    let (mut h, t, w, other) = running(RestartPolicy::Always);
    let all = pass(&mut h, 11, &[(other, &[])]);
    assert_eq!(kinds(&all), ["node-unreachable"]);
    assert_eq!(state_of(&h, &w), NodeState::Unreachable);
    assert!(h.rules.cluster().shown(&h.task(t.id)).node_unreachable);
    assert_eq!(h.task(t.id).state, State::Running, "not judged yet");
    let all = pass(&mut h, 5, &[(other, &[])]);
    assert_eq!(kinds(&all), ["node-down", "lost", "rescheduled"]);
    let placed: Vec<_> = all.iter().flat_map(starts).collect();
    assert_eq!(placed, vec![(pending_for(other), t.id, 2)]);
    // The replacement runs; the node comes back listing the old copy: it is fenced.
    h.report(t.id, other, State::Running, None);
    let d = h.heartbeat(&w, &[(t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["node-joined", "fenced"]);
    assert_eq!(stops(&d), vec![(pending_for(&w), t.id, 1)]);
    assert!(stops(&h.heartbeat(&w, &[(t.id, 1)])).is_empty());
    h.advance(FENCE_AGAIN.as_secs_f64());
    assert_eq!(stops(&h.heartbeat(&w, &[(t.id, 1)])).len(), 1);
}

#[test]
fn a_returning_node_keeps_its_copy_when_the_replacement_has_not_started() {
    let (mut h, t, w, other) = running(RestartPolicy::OnFailure);
    pass(&mut h, 16, &[(other, &[])]);
    assert_eq!(h.task(t.id).state, State::Scheduled, "replacement placed");
    assert_eq!(h.task(t.id).restart_count, 1);
    let d = h.heartbeat(&w, &[(t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["node-joined", "revived"]);
    assert_eq!(stops(&d), vec![(pending_for(other), t.id, 2)], "called off");
    let t2 = h.task(t.id);
    assert_eq!(
        (
            t2.state,
            t2.worker.as_deref(),
            t2.generation,
            t2.restart_count
        ),
        (State::Running, Some(w.as_str()), 1, 0)
    );
    // The called-off placement's late report changes nothing; the next placement is new.
    h.report_generation(t.id, other, State::Running, None, 2);
    assert_eq!(h.task(t.id).generation, 1);
    let d = h.report(t.id, &w, State::Failed, Some(1));
    assert_eq!(d.tasks[0].state, State::Failed);
    h.advance(1.0);
    let placed = starts(&h.tick());
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].2, 3, "generation 2 is never given twice");
}

#[test]
fn a_task_that_may_not_restart_waits_for_its_node_and_is_never_killed() {
    let (mut h, t, w, other) = running(RestartPolicy::No);
    let all = pass(&mut h, 16, &[(other, &[])]);
    assert_eq!(
        kinds(&all),
        ["node-unreachable", "node-down", "waiting"],
        "not failed"
    );
    assert_eq!(h.task(t.id).state, State::Running);
    assert!(all.iter().all(|d| d.work.is_empty()));
    // Back after five minutes: the task simply runs on.
    pass(&mut h, 300, &[(other, &[])]);
    let d = h.heartbeat(&w, &[(t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["node-joined"]);
    assert!(d.work.is_empty(), "no stop, no restart");
    assert_eq!(h.task(t.id).state, State::Running);
    assert!(!h.rules.cluster().shown(&h.task(t.id)).node_unreachable);
}

#[test]
fn after_lost_after_a_waiting_task_is_failed() {
    let (mut h, t, w, other) = running(RestartPolicy::No);
    let all = pass(&mut h, LOST_AFTER.as_secs() as u32 + 1, &[(other, &[])]);
    assert_eq!(
        kinds(&all),
        ["node-unreachable", "node-down", "waiting", "lost"]
    );
    let t = h.task(t.id);
    assert_eq!(t.state, State::Failed);
    assert!(t.error.unwrap().contains("silent for longer than"));
    assert_eq!(state_of(&h, &w), NodeState::Down);
}

#[test]
fn nothing_is_judged_while_the_manager_cannot_hear_and_every_node_gets_a_fresh_ttl_after() {
    let (mut h, t, w, other) = running(RestartPolicy::No);
    for _ in 0..30 {
        h.advance(1.0);
        assert!(h.tick_hearing(false).is_empty());
    }
    let d = h.tick_hearing(true);
    assert_eq!(d.journal_kinds(), ["hearing"]);
    // Only `other` speaks again: `w` is judged only TTL + grace after contact came back.
    let all = pass(&mut h, 15, &[(other, &[])]);
    assert_eq!(kinds(&all), ["node-unreachable"]);
    let all = pass(&mut h, 1, &[(other, &[])]);
    assert_eq!(kinds(&all), ["node-down", "waiting"]);
    assert_eq!(h.task(t.id).worker.as_deref(), Some(w.as_str()));
}

#[test]
fn most_nodes_silent_at_once_is_a_disruption_and_nothing_is_lost() {
    let mut h = Harness::new(&["w1", "w2", "w3"]);
    let t = sleeper(RestartPolicy::Always);
    h.submit(t.clone());
    let w = h.task(t.id).worker.unwrap();
    h.report(t.id, &w, State::Running, None);
    // The manager's connection looks fine but nothing arrives (a stalled TCP stream).
    let all = pass(&mut h, 60, &[]);
    assert_eq!(
        kinds(&all),
        [
            "disruption",
            "node-unreachable",
            "node-unreachable",
            "node-unreachable"
        ]
    );
    assert!(all.iter().all(|d| d.work.is_empty() && d.tasks.is_empty()));
    assert_eq!(h.task(t.id).state, State::Running);
    // Nodes report again: the disruption is over and the task was never touched.
    let d = h.heartbeat("w1", &[]);
    h.heartbeat("w2", &[]);
    h.heartbeat("w3", &[]);
    assert!(d.work.is_empty());
    let all = pass(&mut h, 1, &[]);
    assert_eq!(kinds(&all), ["hearing"], "disruption over: fresh TTLs");
    assert_eq!(h.task(t.id).state, State::Running);
}

#[test]
fn one_node_of_two_silent_is_not_a_disruption() {
    let (mut h, t, _, other) = running(RestartPolicy::Always);
    let all = pass(&mut h, 16, &[(other, &[])]);
    assert!(kinds(&all).contains(&"node-down".to_string()));
    assert_eq!(h.task(t.id).worker.as_deref(), Some(other));
}

#[test]
fn a_stalled_loop_or_a_clock_step_judges_nobody() {
    let (mut h, t, w, other) = running(RestartPolicy::Always);
    // Paused for 30 s: heartbeats that arrived meanwhile were not read.
    h.advance(30.0);
    h.rules.ticked_after(Duration::from_secs(30), h.now, h.mono);
    assert_eq!(h.effects().journal_kinds(), ["hearing"]);
    assert!(h.tick().is_empty());
    // The wall clock jumps an hour forward, then back: the monotonic clock decides.
    h.heartbeat(&w, &[(t.id, 1)]);
    h.heartbeat(other, &[]);
    h.step_wall(3600.0);
    assert!(h.tick().is_empty());
    h.step_wall(-7200.0);
    assert!(h.tick().is_empty());
    assert_eq!(state_of(&h, &w), NodeState::Ready);
    assert_eq!(h.task(t.id).state, State::Running);
}

#[test]
fn a_restarted_manager_trusts_no_timestamp_a_worker_wrote() {
    let (h, t, w, _) = running(RestartPolicy::Always);
    let mut nodes: Vec<Node> = h.rules.cluster().nodes().cloned().collect();
    for n in &mut nodes {
        // A worker with a clock far ahead (or a forged record).
        n.last_heartbeat = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    }
    let stored = Stored {
        tasks: h.rules.cluster().tasks().cloned().collect(),
        nodes,
        ..Stored::default()
    };
    let mut h2 = h.restarted(stored);
    assert_eq!(state_of(&h2, &w), NodeState::Unreachable, "not heard yet");
    // Nobody speaks: both nodes are silent, which is a disruption, so nothing is lost ...
    let all = pass(&mut h2, 16, &[]);
    assert!(!kinds(&all).contains(&"node-down".to_string()));
    // ... but once one speaks (the disruption ends, every node gets a fresh TTL + grace),
    // the other is judged by this manager's clock alone.
    let other = if w == "w1" { "w2" } else { "w1" };
    let all = pass(&mut h2, 17, &[(other, &[])]);
    assert!(
        kinds(&all).contains(&"node-down".to_string()),
        "{:?}",
        kinds(&all)
    );
    assert_eq!(h2.task(t.id).worker.as_deref(), Some(other));
}

#[test]
fn a_running_task_its_worker_stops_listing_has_vanished() {
    let (mut h, t, w, other) = running(RestartPolicy::OnFailure);
    // The worker speaks but no longer lists the task (a missed exit, a lost container).
    let all = pass(&mut h, 15, &[(&w, &[]), (other, &[])]);
    assert!(kinds(&all).is_empty());
    let all = pass(&mut h, 1, &[(&w, &[]), (other, &[])]);
    assert_eq!(kinds(&all), ["vanished"]);
    let task = h.task(t.id);
    assert_eq!(task.state, State::Failed);
    assert!(task.next_attempt_at.is_some(), "restarted per its policy");
    // Listed all along: never vanished.
    let (mut h, t, w, other) = running(RestartPolicy::OnFailure);
    let all = pass(&mut h, 60, &[(&w, &[(t.id, 1)]), (other, &[])]);
    assert!(kinds(&all).is_empty());
}

#[test]
fn a_placement_nobody_takes_up_is_made_again() {
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let (w, other) = h.placed_and_other(t.id);
    let all = pass(&mut h, 60, &[(&w, &[]), (other, &[])]);
    assert!(kinds(&all).is_empty());
    let all = pass(&mut h, 1, &[(&w, &[]), (other, &[])]);
    assert_eq!(kinds(&all), ["placement-timeout", "scheduled"]);
    let work: Vec<_> = all.iter().flat_map(|d| d.work.clone()).collect();
    assert!(work[0].event.is_stop() && work[0].event.task.generation == 1);
    assert_eq!(work[1].event.task.generation, 2);
    // A worker that lists the placement it is starting keeps it.
    let mut h = Harness::new(&["w1"]);
    h.submit(t.clone());
    let all = pass(&mut h, 90, &[("w1", &[(t.id, 1)])]);
    assert!(kinds(&all).is_empty());
}

#[test]
fn no_placement_is_judged_while_reports_wait_unread() {
    // A slow manager: the worker ran the task and reported it completed, but the report waits
    // in the stream behind thousands of others. Placing it again would run it twice.
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let (w, other) = h.placed_and_other(t.id);
    h.rules.set_reports_waiting(true, h.mono);
    let all = pass(&mut h, 120, &[(&w, &[]), (other, &[])]);
    assert!(
        kinds(&all).is_empty(),
        "judged while behind: {:?}",
        kinds(&all)
    );
    // Caught up without its report: its timeout starts afresh from there.
    h.rules.set_reports_waiting(false, h.mono);
    let all = pass(&mut h, 60, &[(&w, &[]), (other, &[])]);
    assert!(kinds(&all).is_empty());
    let all = pass(&mut h, 1, &[(&w, &[]), (other, &[])]);
    assert_eq!(kinds(&all), ["placement-timeout", "scheduled"]);
    // A running task's worker stops listing it while its exit waits unread: not vanished.
    let (mut h, t, w, other) = running(RestartPolicy::OnFailure);
    h.rules.set_reports_waiting(true, h.mono);
    let all = pass(&mut h, 40, &[(&w, &[]), (other, &[])]);
    assert!(kinds(&all).is_empty());
    assert_eq!(h.task(t.id).state, State::Running);
    // An ordinary lag (reports waiting for less than a second, batch after batch) holds
    // nothing up.
    let mut h = Harness::new(&["w1", "w2"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let (w, other) = h.placed_and_other(t.id);
    let mut all = Vec::new();
    for _ in 0..61 {
        h.rules.set_reports_waiting(true, h.mono);
        h.advance(0.5);
        h.rules.set_reports_waiting(false, h.mono);
        all.extend(pass(&mut h, 1, &[(&w, &[]), (other, &[])]));
    }
    assert_eq!(kinds(&all), ["placement-timeout", "scheduled"]);
}

#[test]
fn paged_heartbeats_list_every_placement() {
    let mut h = Harness::new(&["w1"]);
    let ids: Vec<Uuid> = (0..3)
        .map(|_| {
            let t = sleeper(RestartPolicy::No);
            h.submit(t.clone());
            h.report(t.id, "w1", State::Running, None);
            t.id
        })
        .collect();
    for _ in 0..30 {
        h.advance(1.0);
        // One page per message: each lists one task.
        for (i, id) in ids.iter().enumerate() {
            let mut node = crate::testing::node("w1", 4.0, 8 << 30);
            node.running = vec![RunningTask {
                id: *id,
                generation: 1,
            }];
            node.page = Some(cube_shared::Page {
                index: i as u32,
                count: 3,
                total: 3,
            });
            let subject = HEARTBEAT_ALL.replace('*', "w1");
            h.rules
                .on_heartbeat(&subject, &encode(&node), h.now, h.mono);
        }
        assert!(h.tick().is_empty());
    }
}

#[test]
fn an_unreadable_heartbeat_is_seen_and_its_node_still_counts_as_heard() {
    let (mut h, t, w, other) = running(RestartPolicy::Always);
    let subject = HEARTBEAT_ALL.replace('*', &w);
    let mut kinds_seen = Vec::new();
    for _ in 0..40 {
        h.advance(1.0);
        h.rules.on_heartbeat(&subject, b"{not json", h.now, h.mono);
        let unreadable = h.effects();
        h.heartbeat(other, &[]);
        kinds_seen.extend(kinds(&[unreadable, h.tick()]));
    }
    assert_eq!(
        kinds_seen,
        ["heartbeat-unreadable"],
        "once a minute at most"
    );
    assert_eq!(h.task(t.id).state, State::Running);
}

#[test]
fn only_a_silent_node_can_be_forgotten_and_its_tasks_go_at_once() {
    let (mut h, t, w, other) = running(RestartPolicy::No);
    assert_eq!(
        h.rules.forget(&w, h.now),
        Err(ForgetError::Alive(w.clone()))
    );
    assert_eq!(
        h.rules.forget("nope", h.now),
        Err(ForgetError::NoSuchNode("nope".into()))
    );
    pass(&mut h, 16, &[(other, &[])]);
    h.rules.forget(&w, h.now).unwrap();
    let d = h.effects();
    assert_eq!(d.journal_kinds(), ["lost", "node-forgotten"]);
    assert_eq!(h.task(t.id).state, State::Failed);
    assert!(h.rules.cluster().node(&w).is_none());
    // It comes back after all: it is a new node, and its copy is stopped.
    let d = h.heartbeat(&w, &[(t.id, 1)]);
    assert_eq!(d.journal_kinds(), ["node-joined", "fenced"]);
}

#[test]
fn a_node_is_judged_down_only_once_another_was_heard_after_it_became_overdue() {
    let (mut h, t, w, other) = running(RestartPolicy::Always);
    // `w` falls silent; 12 s later the manager is cut off without knowing it (nothing more
    // arrives from anyone), before the others' silence adds up to a disruption.
    pass(&mut h, 12, &[(other, &[])]);
    let all = pass(&mut h, 5, &[]);
    assert!(
        !kinds(&all).contains(&"node-down".to_string()),
        "{:?}",
        kinds(&all)
    );
    assert_eq!(h.task(t.id).worker.as_deref(), Some(w.as_str()));
    // Once `other` is heard again, `w` is judged.
    let all = pass(&mut h, 1, &[(other, &[])]);
    assert!(kinds(&all).contains(&"node-down".to_string()));
}
