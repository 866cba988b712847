//! Rolling updates of a service: replaced `max_parallel` at a time, reverted when the new
//! version never turns healthy, canaries, and a rollout resumed by a restarted manager.

use super::*;

/// Three workers running `v1` of service `web` until every copy has been healthy past its
/// minimum healthy time.
fn running(v1: ServiceSpec, behaves: &dyn Fn(u64) -> Behaves) -> Harness {
    let mut h = Harness::new(&["w1", "w2", "w3"]);
    let d = h.service_event(&ServiceEvent::deploy(v1));
    h.obey(d, behaves);
    h.run_for(11, behaves);
    h
}

#[test]
fn a_rolling_update_never_drops_below_the_count_nor_exceeds_count_plus_max_parallel() {
    let mut h = running(checked(spec("web", 3), "v1"), &healthy);

    let v2 = checked(spec("web", 3), "v2");
    let d = h.service_event(&ServiceEvent::deploy(v2));
    assert_eq!(h.status("web").service.version, 2);
    h.obey(d, &healthy);
    let mut seen_most = 0;
    for _ in 0..120 {
        h.run_for(1, &healthy);
        let s = h.status("web");
        assert!(s.healthy >= 3, "healthy copies fell to {}", s.healthy);
        let live: usize = h.copies("web").values().sum();
        assert!(
            live <= 4,
            "{live} copies live, more than count + max_parallel"
        );
        seen_most = seen_most.max(live);
    }
    assert_eq!(seen_most, 4, "one new copy at a time");
    assert_eq!(h.copies("web"), BTreeMap::from([(2, 3)]));
    let s = h.status("web");
    assert_eq!(
        s.service.rollout.as_ref().unwrap().state,
        RolloutState::Succeeded
    );
    // The same template again is no new version.
    let d = h.service_event(&ServiceEvent::deploy(checked(spec("web", 3), "v2")));
    assert!(d.work.is_empty());
    assert_eq!(h.status("web").service.version, 2);
}

#[test]
fn an_update_that_never_turns_healthy_reverts_and_the_old_copies_keep_serving() {
    let mut h = running(checked(spec("web", 3), "v1"), &v2_unhealthy);
    let old: Vec<Uuid> = h.status("web").copies.iter().map(|c| c.task_id).collect();

    let d = h.service_event(&ServiceEvent::deploy(checked(spec("web", 3), "v2")));
    h.obey(d, &v2_unhealthy);
    for _ in 0..70 {
        h.run_for(1, &v2_unhealthy);
        for id in &old {
            assert_eq!(h.task(*id).state, State::Running, "an old copy was touched");
            assert!(!h.task(*id).stop_requested);
        }
    }
    let s = h.status("web");
    assert_eq!(s.service.version, 1, "back to the last good version");
    assert!(s.service.version_of(2).unwrap().failed);
    assert_eq!(h.copies("web"), BTreeMap::from([(1, 3)]));
    assert_eq!(s.healthy, 3);
}

#[test]
fn without_auto_revert_a_failed_rollout_stops_replacing() {
    let mut v1 = checked(spec("web", 3), "v1");
    v1.update.auto_revert = Some(false);
    let mut h = running(v1.clone(), &v2_unhealthy);
    let mut v2 = checked(v1, "v2");
    v2.update.auto_revert = Some(false);
    let d = h.service_event(&ServiceEvent::deploy(v2));
    h.obey(d, &v2_unhealthy);
    h.run_for(90, &v2_unhealthy);
    let s = h.status("web");
    assert_eq!(s.service.version, 2);
    assert_eq!(
        s.service.rollout.as_ref().unwrap().state,
        RolloutState::Failed
    );
    assert_eq!(h.copies("web"), BTreeMap::from([(1, 3), (2, 1)]));
    // A rollback by hand goes back.
    let d = h.service_event(&ServiceEvent::rollback("web", None));
    h.obey(d, &v2_unhealthy);
    h.run_for(5, &v2_unhealthy);
    assert_eq!(h.copies("web"), BTreeMap::from([(1, 3)]));
}

#[test]
fn canaries_wait_for_promotion() {
    let mut h = running(checked(spec("web", 3), "v1"), &healthy);
    let mut v2 = checked(spec("web", 3), "v2");
    v2.update.canary = Some(1);
    let d = h.service_event(&ServiceEvent::deploy(v2));
    h.obey(d, &healthy);
    h.run_for(30, &healthy);
    assert_eq!(h.copies("web"), BTreeMap::from([(1, 3), (2, 1)]));
    assert_eq!(
        h.status("web").service.rollout.unwrap().state,
        RolloutState::AwaitingPromotion
    );
    let d = h.service_event(&ServiceEvent::promote("web"));
    h.obey(d, &healthy);
    h.run_for(60, &healthy);
    assert_eq!(h.copies("web"), BTreeMap::from([(2, 3)]));
    // Nothing waits now: a second promote is refused.
    let d = h.service_event(&ServiceEvent::promote("web"));
    assert_eq!(d.rejections.len(), 1, "{:?}", d.journal_kinds());
}

#[test]
fn a_restarted_manager_resumes_a_rollout_without_extra_copies() {
    let mut h = running(checked(spec("web", 3), "v1"), &healthy);
    let d = h.service_event(&ServiceEvent::deploy(checked(spec("web", 3), "v2")));
    h.obey(d, &healthy);
    h.run_for(15, &healthy);
    // The manager restarts from what it stored.
    let stored = Stored {
        tasks: h.rules.cluster().tasks().cloned().collect(),
        nodes: h.rules.cluster().nodes().cloned().collect(),
        drained: Vec::new(),
        services: h.rules.services().values().cloned().collect(),
    };
    h.rules = h.restarted(stored).rules;
    for _ in 0..120 {
        h.run_for(1, &healthy);
        let live: usize = h.copies("web").values().sum();
        assert!(live <= 4, "{live} copies after the restart");
    }
    assert_eq!(h.copies("web"), BTreeMap::from([(2, 3)]));
}

#[test]
fn a_rollout_goes_on_as_reports_arrive_without_waiting_for_a_tick() {
    let mut h = Harness::new(&["w1", "w2", "w3"]);
    let mut s = spec("web", 10);
    s.update.min_healthy_time = Some(Duration::ZERO);
    s.update.max_parallel = Some(2);
    let d = h.service_event(&ServiceEvent::deploy(s.clone()));
    h.obey(d, &healthy);
    s.template.env = vec!["VERSION=2".into()];
    let d = h.service_event(&ServiceEvent::deploy(s));
    h.obey(d, &healthy);
    assert_eq!(h.copies("web"), BTreeMap::from([(2, 10)]));
}
