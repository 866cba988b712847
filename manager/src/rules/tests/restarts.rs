//! Restart policies and their backoff.

use super::*;

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
