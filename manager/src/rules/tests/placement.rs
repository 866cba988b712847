//! Waiting tasks: tried again when room is freed or a node changes, oldest first, each
//! request once per pass.

use super::*;

fn sized(cpu: f64) -> Task {
    let mut t = sleeper(RestartPolicy::No);
    t.cpu = cpu;
    t
}

#[test]
fn freed_room_goes_to_the_oldest_waiting_task_that_fits_it() {
    let mut h = Harness::new(&["w1"]);
    let running = sized(3.0);
    h.submit(running.clone());
    h.report(running.id, "w1", State::Running, None);
    // Waiting, oldest first: two that will never fit, then two that fit once room is freed.
    let (huge, huge_too) = (sized(8.0), sized(8.0));
    let (mid, mid_too) = (sized(3.0), sized(3.0));
    for t in [&huge, &huge_too, &mid, &mid_too] {
        let d = h.submit(t.clone());
        assert_eq!(d.journal_kinds(), ["submitted", "unschedulable"]);
    }
    let d = h.tick();
    assert!(
        d.journal.is_empty() && d.tasks.is_empty(),
        "nothing changed, nothing decided"
    );
    let d = h.report(running.id, "w1", State::Completed, Some(0));
    assert_eq!(starts(&d), vec![(pending_for("w1"), mid.id, 1)]);
    assert_eq!(h.task(huge.id).state, State::Pending);
    assert_eq!(h.task(huge_too.id).state, State::Pending);
    assert_eq!(
        h.task(mid_too.id).state,
        State::Pending,
        "3 of 4 cores are taken again"
    );
    assert!(starts(&h.tick()).is_empty());
}

#[test]
fn a_waiting_task_says_why_again_when_the_nodes_change() {
    let mut h = Harness::new(&["w1"]);
    let huge = sized(8.0);
    h.submit(huge.clone());
    let before = h.task(huge.id).error.unwrap();
    assert!(before.starts_with("0/1 nodes available"), "{before}");
    let d = h.heartbeat("w2", &[]);
    assert_eq!(d.journal_kinds(), ["node-joined", "unschedulable"]);
    let after = h.task(huge.id).error.unwrap();
    assert!(
        after.starts_with("0/2 nodes available: 2 insufficient cpu"),
        "{after}"
    );
}

/// The decisions are the scan's: these sequences are what each algorithm chose, by scanning
/// every node, before the index existed (main at a066b4d).
#[test]
fn every_algorithm_places_as_it_did_by_scanning() {
    let chosen = [
        (
            "spread",
            ["w1", "w2", "w3", "w1", "w1", "w2", "w3", "w1", "w3"],
        ),
        (
            "binpack",
            ["w1", "w1", "w1", "w1", "w1", "w2", "w1", "w2", "w2"],
        ),
        (
            "round-robin",
            ["w1", "w2", "w3", "w1", "w2", "w3", "w1", "w2", "w3"],
        ),
        (
            "epvm",
            ["w1", "w2", "w3", "w1", "w1", "w2", "w3", "w1", "w3"],
        ),
    ];
    for (name, expected) in chosen {
        let mut h = Harness::with_scheduler(name, &["w1", "w2", "w3"]);
        let mut on = Vec::new();
        for i in 0..9 {
            let d = h.submit(sized(0.25 + 0.5 * f64::from(i % 3)));
            on.push(d.work[0].subject.clone());
        }
        assert_eq!(on, expected.map(pending_for), "{name}");
    }
    let mut h = Harness::with_scheduler("queue", &["w1"]);
    assert_eq!(h.submit(sized(4.0)).work[0].subject, PENDING);
    assert!(
        h.submit(sized(4.5)).work.is_empty(),
        "no node could take it"
    );
}
