//! Submissions, stops and state reports.

use super::*;
use cube_shared::Health;

#[test]
fn a_submission_is_recorded_placed_and_announced() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::No);
    let d = h.submit(t.clone());
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
    assert_eq!(h.task(t.id).state, State::Running);
    assert!(
        d.tasks.is_empty(),
        "status, not a decision: the report is its record"
    );
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
fn a_report_delivered_again_after_a_later_one_never_takes_health_back() {
    let mut h = Harness::new(&["w1"]);
    let mut t = sleeper(RestartPolicy::Always);
    t.health_check = Some("true".into());
    h.submit(t.clone());
    let report = |health| {
        let mut r = StateReport::new(t.id, "w1", State::Running);
        r.generation = Some(1);
        r.container_id = Some("c-1".into());
        r.health = Some(health);
        encode(&r)
    };
    let (starting, healthy) = (report(Health::Starting), report(Health::Healthy));
    // A manager died before acknowledging `starting`: JetStream offers it again only after
    // its successor has applied the later `healthy`.
    for payload in [&healthy, &starting] {
        h.rules.on_report(&state_for(t.id, "w1"), payload, h.now);
        h.effects();
    }
    assert_eq!(h.task(t.id).state, State::Running);
    assert_eq!(h.task(t.id).health, Some(Health::Healthy));
    // Forward still goes forward.
    h.rules
        .on_report(&state_for(t.id, "w1"), &report(Health::Unhealthy), h.now);
    assert_eq!(h.task(t.id).health, Some(Health::Unhealthy));
}

#[test]
fn a_worker_time_ahead_of_the_managers_clock_is_not_believed() {
    let mut h = Harness::new(&["w1"]);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let mut r = StateReport::new(t.id, "w1", State::Running);
    r.generation = Some(1);
    r.start_time = Some(h.now + chrono::Duration::days(365));
    h.rules
        .on_report(&state_for(t.id, "w1"), &encode(&r), h.now);
    let d = h.effects();
    assert_eq!(h.task(t.id).start_time, Some(h.now));
    assert!(
        d.journal_kinds().contains(&"report-clock"),
        "{:?}",
        d.journal_kinds()
    );
    // A few seconds ahead is an ordinary clock difference.
    let mut r = StateReport::new(t.id, "w1", State::Completed);
    r.generation = Some(1);
    r.finish_time = Some(h.now + chrono::Duration::seconds(5));
    h.rules
        .on_report(&state_for(t.id, "w1"), &encode(&r), h.now);
    assert_eq!(h.task(t.id).finish_time, r.finish_time);
}
