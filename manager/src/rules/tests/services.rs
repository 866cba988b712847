//! Services: the reconciler through the rules, with workers that do what they are told.

use std::collections::{BTreeMap, VecDeque};

use cube_shared::subjects::SERVICE_EVENTS;
use cube_shared::{Health, RolloutState, ServiceEvent, ServiceKind, ServiceSpec, UpdatePolicy};

use super::*;

/// How the copies of each version behave once started.
#[derive(Clone, Copy, PartialEq)]
enum Behaves {
    Healthy,
    /// Runs, but its health check never passes.
    Unhealthy,
    /// Runs to completion (exit 0).
    Completes,
    /// Exits 1.
    Fails,
}

fn spec(name: &str, count: u32) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        kind: ServiceKind::Service,
        count,
        template: sleeper(RestartPolicy::No),
        update: UpdatePolicy {
            min_healthy_time: Some(Duration::from_secs(10)),
            healthy_deadline: Some(Duration::from_secs(60)),
            ..Default::default()
        },
        max_failures: None,
    }
}

/// `spec` with a health check and another command: a new version.
fn checked(mut s: ServiceSpec, cmd: &str) -> ServiceSpec {
    s.template.cmd = vec!["sh".into(), "-c".into(), cmd.into()];
    s.template.health_check = Some("true".into());
    s
}

impl Harness {
    fn service_event(&mut self, e: &ServiceEvent) -> Decided {
        self.rules
            .on_service_event(SERVICE_EVENTS, &encode(e), self.now);
        self.effects()
    }

    /// Workers carry out `d` and everything that follows from it: a start runs as its
    /// version `behaves`, a stop ends the copy.
    fn obey(&mut self, d: Decided, behaves: &dyn Fn(u64) -> Behaves) {
        let mut queue: VecDeque<Work> = d.work.into();
        let mut steps = 0;
        while let Some(w) = queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000, "the rules do not settle");
            let worker = w.subject.rsplit('.').next().unwrap().to_string();
            let id = w.event.task.id;
            let generation = w.event.task.generation;
            if self.task(id).generation != generation {
                continue;
            }
            let mut r = StateReport::new(id, &worker, State::Running);
            r.generation = Some(generation);
            if w.event.is_stop() {
                r.state = State::Completed;
                r.exit_code = Some(137);
                r.finish_time = Some(self.now);
            } else {
                let version = w.event.task.service_version.unwrap_or_default();
                r.start_time = Some(self.now);
                match behaves(version) {
                    Behaves::Healthy => r.health = Some(Health::Healthy),
                    Behaves::Unhealthy => r.health = Some(Health::Starting),
                    Behaves::Completes | Behaves::Fails => {
                        r.state = if behaves(version) == Behaves::Completes {
                            State::Completed
                        } else {
                            State::Failed
                        };
                        r.exit_code = Some(i64::from(behaves(version) == Behaves::Fails));
                        r.finish_time = Some(self.now);
                    }
                }
            }
            self.rules
                .on_report(&state_for(id, &worker), &encode(&r), self.now);
            queue.extend(self.effects().work);
        }
    }

    /// Time passes in one-second ticks, the workers obeying each.
    fn run_for(&mut self, secs: u32, behaves: &dyn Fn(u64) -> Behaves) {
        for _ in 0..secs {
            self.advance(1.0);
            for w in ["w1", "w2", "w3", "w4"] {
                if self.rules.cluster().node(w).is_some() {
                    let running = self.running_on(w);
                    self.rules.on_heartbeat(
                        &HEARTBEAT_ALL.replace('*', w),
                        &encode(&{
                            let mut n = crate::testing::node(w, 4.0, 8 << 30);
                            n.running = running;
                            n
                        }),
                        self.now,
                        self.mono,
                    );
                }
            }
            let d = self.tick();
            self.obey(d, behaves);
        }
    }

    fn running_on(&self, w: &str) -> Vec<RunningTask> {
        self.rules
            .cluster()
            .tasks()
            .filter(|t| t.state.is_active() && t.worker.as_deref() == Some(w))
            .map(|t| RunningTask {
                id: t.id,
                generation: t.generation,
            })
            .collect()
    }

    /// Live copies of `name` (not ended), by version.
    fn copies(&self, name: &str) -> BTreeMap<u64, usize> {
        let mut by_version = BTreeMap::new();
        for t in self.rules.cluster().tasks() {
            let live = t.state.is_active() || t.state == State::Pending;
            if t.service.as_deref() == Some(name) && live {
                *by_version.entry(t.service_version.unwrap()).or_default() += 1;
            }
        }
        by_version
    }

    fn status(&self, name: &str) -> cube_shared::ServiceStatus {
        self.rules.service_status(name).expect("a known service")
    }
}

fn healthy(_: u64) -> Behaves {
    Behaves::Healthy
}

/// Version 2 runs but never passes its check; the others are healthy.
fn v2_unhealthy(version: u64) -> Behaves {
    if version == 2 {
        Behaves::Unhealthy
    } else {
        Behaves::Healthy
    }
}

#[test]
fn copies_are_spread_one_per_node_and_carry_the_service() {
    let mut h = Harness::new(&["w1", "w2", "w3"]);
    let d = h.service_event(&ServiceEvent::deploy(spec("web", 3)));
    assert_eq!(d.services.len(), 1, "the record is stored");
    let mut nodes: Vec<String> = d.work.iter().map(|w| w.subject.clone()).collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["tasks.pending.w1", "tasks.pending.w2", "tasks.pending.w3"]
    );
    for w in &d.work {
        let t = &w.event.task;
        assert_eq!(t.service.as_deref(), Some("web"));
        assert_eq!(t.service_version, Some(1));
        assert_eq!(t.restart_policy, RestartPolicy::Always, "kept running");
        assert!(t.name.starts_with("web."), "{}", t.name);
    }
    h.obey(d, &healthy);
    h.run_for(11, &healthy);
    let s = h.status("web");
    assert_eq!((s.desired, s.running, s.healthy), (3, 3, 3));
    assert_eq!(
        s.service.rollout.as_ref().unwrap().state,
        RolloutState::Succeeded
    );
    assert!(s.service.versions[0].good);
}

#[test]
fn a_copy_that_ends_is_replaced_and_scaling_follows_the_count() {
    let mut h = Harness::new(&["w1", "w2", "w3"]);
    let d = h.service_event(&ServiceEvent::deploy(spec("web", 3)));
    h.obey(d, &healthy);
    let victim = h.status("web").copies[0].task_id;
    let d = h.stop(victim);
    h.obey(d, &healthy);
    assert_eq!(
        h.copies("web"),
        BTreeMap::from([(1, 3)]),
        "replaced at once"
    );
    assert_eq!(h.task(victim).state, State::Completed);

    let d = h.service_event(&ServiceEvent::scale("web", 5));
    h.obey(d, &healthy);
    assert_eq!(h.copies("web"), BTreeMap::from([(1, 5)]));
    let per_node: Vec<usize> = ["w1", "w2", "w3"]
        .iter()
        .map(|w| h.running_on(w).len())
        .collect();
    assert!(
        per_node.iter().all(|&n| (1..=2).contains(&n)),
        "{per_node:?}"
    );

    let d = h.service_event(&ServiceEvent::scale("web", 2));
    h.obey(d, &healthy);
    assert_eq!(h.copies("web"), BTreeMap::from([(1, 2)]));
    let s = h.status("web");
    assert_eq!((s.desired, s.running), (2, 2));
}

#[test]
fn a_system_service_runs_one_copy_per_node_including_new_ones() {
    let mut h = Harness::new(&["w1", "w2", "w3"]);
    let mut s = spec("agent", 0);
    s.kind = ServiceKind::System;
    let d = h.service_event(&ServiceEvent::deploy(s));
    let mut nodes: Vec<String> = d.work.iter().map(|w| w.subject.clone()).collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["tasks.pending.w1", "tasks.pending.w2", "tasks.pending.w3"]
    );
    h.obey(d, &healthy);
    h.heartbeat("w4", &[]);
    let d = h.tick();
    let started: Vec<String> = d.work.iter().map(|w| w.subject.clone()).collect();
    assert_eq!(started, ["tasks.pending.w4"]);
    h.obey(d, &healthy);
    assert_eq!(h.status("agent").desired, 4);
    assert_eq!(h.status("agent").running, 4);
    // A system service is not scaled.
    let d = h.service_event(&ServiceEvent::scale("agent", 2));
    assert_eq!(d.rejections.len(), 1);
}

#[test]
fn a_batch_job_completes_count_times_and_gives_up_after_max_failures() {
    let mut h = Harness::new(&["w1", "w2"]);
    let mut s = spec("job", 5);
    s.kind = ServiceKind::Batch;
    let d = h.service_event(&ServiceEvent::deploy(s.clone()));
    h.obey(d, &|_| Behaves::Completes);
    h.run_for(2, &|_| Behaves::Completes);
    let st = h.status("job");
    assert_eq!(st.completed, 5);
    assert!(st
        .service
        .finished
        .as_deref()
        .unwrap()
        .starts_with("completed"));
    assert_eq!(
        h.rules
            .cluster()
            .tasks()
            .filter(|t| t.service.as_deref() == Some("job"))
            .count(),
        5,
        "no more copies than completions"
    );

    s.name = "flaky".into();
    s.max_failures = Some(2);
    let d = h.service_event(&ServiceEvent::deploy(s));
    h.obey(d, &|_| Behaves::Fails);
    h.run_for(120, &|_| Behaves::Fails);
    let st = h.status("flaky");
    assert!(
        st.service
            .finished
            .as_deref()
            .unwrap()
            .starts_with("failed"),
        "{st:?}"
    );
    assert_eq!(st.completed, 0);
}

#[test]
fn events_are_applied_once_and_bad_ones_refused_with_a_reason() {
    let mut h = Harness::new(&["w1"]);
    let e = ServiceEvent::deploy(spec("web", 1));
    let d = h.service_event(&e);
    assert_eq!(d.work.len(), 1);
    let again = h.service_event(&e);
    assert!(
        again.work.is_empty() && again.journal.is_empty(),
        "applied once"
    );
    let d = h.service_event(&ServiceEvent::scale("nope", 2));
    assert!(d.rejections[0].reason.contains("no service nope"));
    let mut other = spec("web", 1);
    other.kind = ServiceKind::Batch;
    let d = h.service_event(&ServiceEvent::deploy(other));
    assert!(
        d.rejections[0].reason.contains("remove it"),
        "{:?}",
        d.rejections
    );
    h.rules
        .on_service_event(SERVICE_EVENTS, b"{\"id\": 1}", h.now);
    assert_eq!(h.effects().rejections.len(), 1);
    // A task may not pose as a copy.
    let mut t = sleeper(RestartPolicy::No);
    t.service = Some("web".into());
    let d = h.submit(t);
    assert!(d.rejections[0].reason.contains("set by Cube"));
}

#[test]
fn removing_a_service_stops_every_copy_and_its_endpoints_go() {
    let mut h = Harness::new(&["w1", "w2"]);
    let mut s = spec("web", 2);
    s.template.port_bindings = BTreeMap::from([("80/tcp".to_string(), "8080".to_string())]);
    let d = h.service_event(&ServiceEvent::deploy(s));
    let mut written = Vec::new();
    written.extend(d.endpoints.clone());
    h.obey(d, &healthy);
    let d = h.tick();
    written.extend(d.endpoints.clone());
    let last = h.status("web").endpoints;
    assert_eq!(last.len(), 2);
    assert_eq!(last[0].ports["80/tcp"], 8080);
    let d = h.service_event(&ServiceEvent::remove("web"));
    assert_eq!(stops(&d).len(), 2);
    assert_eq!(d.endpoints.last().unwrap().endpoints.len(), 0);
    h.obey(d, &healthy);
    assert!(h.copies("web").is_empty());
    assert!(h.status("web").service.removed);
}

/// The service's record kept within one NATS message.
mod records;
/// Rolling updates, reverts, canaries, a resumed rollout.
mod rollouts;
