//! Bounded state, the live side: beyond `max_tasks` live tasks, or with the Task DB nearly
//! full, a submission is refused with a reason and journaled; nothing already taken is
//! affected, and submissions are taken again once there is room.

use cube_shared::ServiceKind;

use super::*;
use crate::rules::limits::{StoreUse, TASK_DB_FULL_PERCENT};

fn harness(max_tasks: usize) -> Harness {
    let t = Timings {
        max_tasks,
        ..timings()
    };
    Harness::with(t, "spread", &["w1", "w2"])
}

/// `d` refused task `id` because of a limit: a rejection and its journal entry naming it,
/// and nothing recorded or placed.
fn assert_refused(d: &Decided, id: Uuid, because: &str) {
    assert_eq!(d.rejections.len(), 1, "{d:?}");
    assert_eq!(d.rejections[0].task_id, Some(id));
    assert!(
        d.rejections[0].reason.contains(because),
        "{}",
        d.rejections[0].reason
    );
    assert_eq!(d.journal_kinds(), ["rejected"]);
    assert_eq!(d.journal[0].task_id, Some(id), "the journal names the task");
    assert!(d.tasks.is_empty() && d.work.is_empty(), "{d:?}");
}

#[test]
fn a_submission_beyond_max_tasks_is_refused_with_a_reason_and_the_others_go_on() {
    let mut h = harness(2);
    let (a, b, c) = (
        sleeper(RestartPolicy::No),
        sleeper(RestartPolicy::No),
        sleeper(RestartPolicy::No),
    );
    h.submit(a.clone());
    h.submit(b.clone());
    assert_eq!(h.rules.live_tasks(), 2);
    let d = h.submit(c.clone());
    assert_refused(&d, c.id, "--max-tasks");
    assert!(d.rejections[0].reason.contains("2 tasks are live"));
    assert!(h.rules.cluster().task(&c.id).is_none(), "not recorded");
    assert_eq!(h.task(a.id).state, State::Scheduled, "the others go on");
    assert_eq!(h.task(b.id).state, State::Scheduled);

    // A task that ends makes room: the same task submitted again is taken.
    let w = h.task(a.id).worker.unwrap();
    h.report(a.id, &w, State::Running, None);
    h.report(a.id, &w, State::Completed, Some(0));
    assert_eq!(h.rules.live_tasks(), 1);
    let d = h.submit(c.clone());
    assert!(d.rejections.is_empty(), "{d:?}");
    assert_eq!(h.task(c.id).state, State::Scheduled);
}

#[test]
fn a_known_task_submitted_again_and_stops_are_never_refused_at_the_bound() {
    let mut h = harness(1);
    let t = sleeper(RestartPolicy::No);
    h.submit(t.clone());
    let again = h.submit(t.clone());
    assert!(
        again.rejections.is_empty(),
        "a redelivery is not a new task"
    );
    assert_eq!(starts(&again).len(), 1, "sent again, as below the bound");
    let d = h.stop(t.id);
    assert!(d.rejections.is_empty());
    assert!(d.work.iter().any(|w| w.event.is_stop()));
}

#[test]
fn services_count_their_copies_and_a_restart_to_come_counts() {
    let mut h = harness(3);
    h.deploy("web", ServiceKind::Service, 2);
    assert_eq!(h.rules.live_tasks(), 2, "the service's two copies");

    // One more fits; it fails and waits for its restart: still live.
    let t = sleeper(RestartPolicy::Always);
    h.submit(t.clone());
    let w = h.task(t.id).worker.unwrap();
    h.report(t.id, &w, State::Running, None);
    h.report(t.id, &w, State::Failed, Some(1));
    assert_eq!(h.task(t.id).state, State::Failed);
    assert!(h.task(t.id).next_attempt_at.is_some(), "a restart to come");
    assert_eq!(h.rules.live_tasks(), 3);
    let u = sleeper(RestartPolicy::No);
    assert_refused(&h.submit(u.clone()), u.id, "--max-tasks");
}

#[test]
fn a_nearly_full_task_db_refuses_submissions_until_it_has_room_again() {
    let mut h = harness(1000);
    let max_bytes = 1000;
    let full = max_bytes * TASK_DB_FULL_PERCENT / 100;
    h.rules.set_task_db_use(Some(StoreUse {
        bytes: full - 1,
        max_bytes,
    }));
    let a = sleeper(RestartPolicy::No);
    assert!(h.submit(a.clone()).rejections.is_empty(), "below the share");
    h.rules.set_task_db_use(Some(StoreUse {
        bytes: full,
        max_bytes,
    }));
    let b = sleeper(RestartPolicy::No);
    let d = h.submit(b.clone());
    assert_refused(&d, b.id, "Task DB");
    assert!(d.rejections[0].reason.contains("--keep-ended"));
    // The task already taken still moves on.
    let w = h.task(a.id).worker.unwrap();
    h.report(a.id, &w, State::Running, None);
    let d = h.report(a.id, &w, State::Completed, Some(0));
    assert_eq!(d.tasks.len(), 1, "its record is still written");
    // Unknown, or with room again: taken.
    h.rules.set_task_db_use(None);
    assert!(h.submit(b.clone()).rejections.is_empty());
}

#[test]
fn a_bucket_is_full_from_its_share_of_the_limit_and_never_without_a_limit() {
    let at = |bytes, max_bytes| StoreUse { bytes, max_bytes }.is_full();
    assert!(!at(79, 100) && at(80, 100) && at(200, 100));
    assert!(!at(u64::MAX, 0), "no limit");
    assert!(at(u64::MAX, u64::MAX), "no overflow");
}
