//! Services (`services.events`): desired states the manager keeps true. An event changes a
//! service's record; after every change (a copy's state, a node, the passing of time) the
//! [`reconcile`](reconcile::reconcile)r compares the record with the service's copies and the
//! rules carry out its plan: copies placed like any task (spread over nodes), copies stopped,
//! rollouts that succeed, wait for promotion, fail and revert.

mod events;
pub(crate) mod reconcile;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cube_shared::service::CopyStatus;
use cube_shared::validate::parse_host_binding;
use cube_shared::{
    Endpoint, Endpoints, Health, JournalEntry, NodeState, RestartPolicy, RolloutState, Service,
    ServiceKind, ServiceStatus, State, Task, NODE_NAME_KEY,
};
use uuid::Uuid;

use super::Rules;
use events::new_rollout;
use reconcile::{CopyView, Nodes, Plan, RolloutChange, Step};

/// The namespace of copies' ids: a copy's id derives from its service's name and number.
const COPY_NAMESPACE: Uuid = Uuid::from_u128(0x6375_6265_2d73_6572_7669_6365_2d63_6f70);

/// What the rules keep about services besides their records.
#[derive(Default)]
pub(crate) struct Services {
    pub(crate) records: BTreeMap<String, Service>,
    /// Services to reconcile at the next [`Rules::reconcile`].
    dirty: BTreeSet<String>,
    /// When each copy was first seen healthy (by this manager: a restart waits again).
    healthy_since: HashMap<Uuid, DateTime<Utc>>,
    /// The endpoints last written per service.
    endpoints: HashMap<String, Vec<Endpoint>>,
}

impl Services {
    pub(crate) fn new(stored: Vec<Service>) -> Services {
        let records: BTreeMap<String, Service> =
            stored.into_iter().map(|s| (s.name.clone(), s)).collect();
        Services {
            dirty: records.keys().cloned().collect(),
            records,
            ..Default::default()
        }
    }

    pub(crate) fn touch(&mut self, name: &str) {
        self.dirty.insert(name.to_string());
    }

    pub(crate) fn touch_all(&mut self) {
        self.dirty.extend(self.records.keys().cloned());
    }
}

/// Whether a copy counts as healthy: running on a node that is heard, with its check passing
/// if it has one.
fn healthy(task: &Task) -> bool {
    task.state == State::Running
        && !task.node_unreachable
        && (task.health_check.is_none() || task.health == Some(Health::Healthy))
}

/// Whether a copy has ended for good.
fn ended(task: &Task) -> bool {
    matches!(task.state, State::Completed | State::Failed) && task.next_attempt_at.is_none()
}

impl Rules {
    /// The service's record changed: stored with the effects, reconciled.
    pub(super) fn service_changed(&mut self, name: &str) {
        self.effects.service(name);
        self.services.touch(name);
    }

    /// Compares every service that may have changed with its copies, and acts on the
    /// difference. The shell calls it before it takes the effects.
    pub fn reconcile(&mut self, now: DateTime<Utc>) {
        let dirty = std::mem::take(&mut self.services.dirty);
        for name in dirty {
            // A plan that changes the rollout is followed at once by what the change calls
            // for (a revert stops the failed version's copies in the same pass).
            for _ in 0..3 {
                if !self.reconcile_one(&name, now) {
                    break;
                }
            }
            self.publish_endpoints(&name);
        }
        // Placing and stopping copies marked their services again: that is this pass.
        self.services.dirty.clear();
    }

    /// One pass for service `name`; `true` if its rollout changed.
    fn reconcile_one(&mut self, name: &str, now: DateTime<Utc>) -> bool {
        let Some(svc) = self.services.records.get(name).cloned() else {
            return false;
        };
        let copies = self.copy_views(&svc, now);
        let nodes = match svc.kind {
            ServiceKind::System => self.system_nodes(&svc),
            _ => Nodes::default(),
        };
        let plan = reconcile::reconcile(&svc, &copies, &nodes, now);
        self.carry_out(svc, plan, now)
    }

    fn copy_views(&mut self, svc: &Service, now: DateTime<Utc>) -> Vec<CopyView> {
        let min_healthy = chrono::Duration::from_std(svc.update.min_healthy_time())
            .unwrap_or(chrono::Duration::MAX);
        let mut views = Vec::new();
        let ids: Vec<Uuid> = self.cluster.copies_of(&svc.name).collect();
        for id in ids {
            let Some(task) = self.cluster.task(&id).map(|t| self.cluster.shown(t)) else {
                continue;
            };
            let is_healthy = healthy(&task);
            let since = if is_healthy {
                *self.services.healthy_since.entry(id).or_insert(now)
            } else {
                self.services.healthy_since.remove(&id);
                now
            };
            let done = ended(&task);
            views.push(CopyView {
                id,
                version: task.service_version.unwrap_or_default(),
                node: task.worker.clone(),
                pin: task
                    .parsed_constraints()
                    .into_iter()
                    .find_map(|c| (c.key == NODE_NAME_KEY && c.equal).then_some(c.value)),
                live: !done,
                stopping: task.stop_requested,
                healthy: is_healthy,
                ready: is_healthy && now - since >= min_healthy,
                created: task.submitted_at.unwrap_or(now),
                // A copy stopped on request neither succeeded nor failed.
                outcome: (done && !task.stop_requested).then_some(task.state == State::Completed),
                ended: task.finish_time,
            });
            if done && svc.kind != ServiceKind::Batch && !task.stop_requested {
                // Kept only to count recent failures (the backoff) for a while.
                let old = task
                    .finish_time
                    .is_none_or(|at| now - at > chrono::Duration::minutes(10));
                if old {
                    self.cluster.forget_copy(&svc.name, id);
                }
            } else if done && task.stop_requested && svc.kind != ServiceKind::Batch {
                self.cluster.forget_copy(&svc.name, id);
            }
        }
        views.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        views
    }

    /// For a system service: the nodes its copies belong on, and those silent for now.
    fn system_nodes(&self, svc: &Service) -> Nodes {
        let constraints = svc
            .template()
            .map(|t| t.parsed_constraints())
            .unwrap_or_default();
        let mut nodes = Nodes::default();
        for n in self.cluster.nodes() {
            if n.leaving || self.drained.contains(&n.name) {
                continue;
            }
            if !constraints
                .iter()
                .all(|c| c.allows_node(&n.name, &n.labels))
            {
                continue;
            }
            match n.state {
                NodeState::Ready => nodes.eligible.push(n.name.clone()),
                NodeState::Unreachable | NodeState::Down => {
                    nodes.silent.insert(n.name.clone());
                }
                NodeState::Draining => {}
            }
        }
        nodes
    }

    /// Carries out `plan` for `svc`; `true` if the rollout changed.
    fn carry_out(&mut self, mut svc: Service, plan: Plan, now: DateTime<Utc>) -> bool {
        let name = svc.name.clone();
        let mut changed = false;
        for step in plan.steps {
            match step {
                Step::Start { version, node } => {
                    if self.start_copy(&mut svc, version, node, now) {
                        changed = true;
                    }
                }
                Step::Stop { id, why } => {
                    if let Some(task) = self.cluster.task(&id).cloned() {
                        self.journal(
                            JournalEntry::new("service-stop", format!("{name}: {why}"))
                                .task(id)
                                .service(&name),
                            now,
                        );
                        self.request_stop(task, None, now);
                    }
                }
            }
        }
        if let Some(finished) = plan.finished {
            self.journal(
                JournalEntry::new("service-finished", format!("{name}: {finished}")).service(&name),
                now,
            );
            svc.finished = Some(finished);
            changed = true;
        }
        let mut rollout_changed = false;
        if let Some(change) = plan.rollout {
            rollout_changed = self.rollout_change(&mut svc, change, now);
            changed |= rollout_changed;
        }
        if changed {
            svc.updated_at = now;
            self.services.records.insert(name.clone(), svc);
            self.service_changed(&name);
        }
        rollout_changed
    }

    fn rollout_change(
        &mut self,
        svc: &mut Service,
        change: RolloutChange,
        now: DateTime<Utc>,
    ) -> bool {
        let name = svc.name.clone();
        let Some(rollout) = svc.rollout.as_mut() else {
            return false;
        };
        let to = rollout.to;
        let (kind, message) = match change {
            RolloutChange::Succeeded => {
                rollout.state = RolloutState::Succeeded;
                rollout.ended_at = Some(now);
                if let Some(v) = svc.versions.iter_mut().find(|v| v.version == to) {
                    v.good = true;
                    v.failed = false;
                }
                (
                    "service-rolled-out",
                    format!("{name}: every copy runs version {to}"),
                )
            }
            RolloutChange::AwaitingPromotion => {
                if rollout.state == RolloutState::AwaitingPromotion {
                    return false;
                }
                rollout.state = RolloutState::AwaitingPromotion;
                (
                    "service-canaries-healthy",
                    format!("{name}: the canaries of version {to} are healthy; `cube service promote {name}` goes on"),
                )
            }
            RolloutChange::Failed(why) => {
                rollout.state = RolloutState::Failed;
                rollout.ended_at = Some(now);
                rollout.message = Some(why.clone());
                let from = rollout.from.filter(|&f| f != to);
                if let Some(v) = svc.versions.iter_mut().find(|v| v.version == to) {
                    v.failed = true;
                }
                match from.filter(|_| svc.update.auto_revert()) {
                    Some(back) if svc.version_of(back).is_some() => {
                        svc.version = back;
                        let mut revert = new_rollout(None, back, now);
                        revert.message = Some(format!("reverted from version {to}: {why}"));
                        svc.rollout = Some(revert);
                        (
                            "service-reverted",
                            format!("{name}: rollout of version {to} failed ({why}); back to version {back}"),
                        )
                    }
                    _ => (
                        "service-rollout-failed",
                        format!("{name}: rollout of version {to} failed ({why}); nothing more is replaced"),
                    ),
                }
            }
        };
        self.journal(JournalEntry::new(kind, message).service(&name), now);
        true
    }

    /// Creates and places a new copy of `svc`'s `version`; `false` if that version is no
    /// longer remembered.
    fn start_copy(
        &mut self,
        svc: &mut Service,
        version: u64,
        node: Option<String>,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(template) = svc.version_of(version).map(|v| v.template.clone()) else {
            return false;
        };
        let mut task = template;
        let (id, seq) = loop {
            let seq = svc.next_copy;
            svc.next_copy += 1;
            let id = Uuid::new_v5(&COPY_NAMESPACE, format!("{}/{seq}", svc.name).as_bytes());
            if self.cluster.task(&id).is_none() {
                break (id, seq);
            }
        };
        task.id = id;
        task.name = format!("{}.{seq}", svc.name);
        task.service = Some(svc.name.clone());
        task.service_version = Some(version);
        if svc.kind != ServiceKind::Batch {
            // Kept running: restarted where it is, moved if its node is lost.
            task.restart_policy = RestartPolicy::Always;
        }
        if let Some(node) = &node {
            task.constraints.push(format!("{NODE_NAME_KEY}={node}"));
        }
        task.reset_status();
        task.submitted_at = Some(now);
        let on = node.map(|n| format!(" on {n}")).unwrap_or_default();
        self.journal(
            JournalEntry::new(
                "submitted",
                format!("{} (copy of {} version {version}{on})", task.name, svc.name),
            )
            .task(id)
            .service(&svc.name),
            now,
        );
        self.save(task);
        self.awaiting_placement.insert(id, now);
        self.try_place(id, now);
        true
    }

    /// Writes the service's healthy endpoints if they changed.
    fn publish_endpoints(&mut self, name: &str) {
        let endpoints: Vec<Endpoint> = match self.services.records.get(name) {
            Some(svc) if !svc.removed => self.endpoints_of(name),
            _ => Vec::new(),
        };
        if self.services.endpoints.get(name) == Some(&endpoints) {
            return;
        }
        self.services
            .endpoints
            .insert(name.to_string(), endpoints.clone());
        self.effects.endpoints.push(Endpoints {
            service: name.to_string(),
            endpoints,
        });
    }

    fn endpoints_of(&self, name: &str) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self
            .cluster
            .copies_of(name)
            .filter_map(|id| self.cluster.task(&id))
            .map(|t| self.cluster.shown(t))
            .filter(|t| healthy(t) && !t.stop_requested)
            .filter_map(|t| {
                let node = t.worker.clone()?;
                let address = self
                    .cluster
                    .node(&node)
                    .map(|n| n.address.clone())
                    .unwrap_or_default();
                let ports = t
                    .port_bindings
                    .iter()
                    .filter_map(|(c, h)| Some((c.clone(), parse_host_binding(h).ok()?.1)))
                    .collect();
                Some(Endpoint {
                    task_id: t.id,
                    node,
                    address,
                    version: t.service_version.unwrap_or_default(),
                    ports,
                })
            })
            .collect();
        endpoints.sort_by(|a, b| a.node.cmp(&b.node).then(a.task_id.cmp(&b.task_id)));
        endpoints
    }

    /// Every service, by name.
    pub fn services(&self) -> &BTreeMap<String, Service> {
        &self.services.records
    }

    /// A service with its copies, as `cube service status` shows it.
    pub fn service_status(&self, name: &str) -> Option<ServiceStatus> {
        let svc = self.services.records.get(name)?.clone();
        let mut copies: Vec<CopyStatus> = Vec::new();
        let (mut completed, mut failed) = (0, 0);
        for id in self.cluster.copies_of(name) {
            let Some(task) = self.cluster.task(&id).map(|t| self.cluster.shown(t)) else {
                continue;
            };
            if ended(&task) {
                if task.state == State::Completed && !task.stop_requested {
                    completed += 1;
                } else if task.state == State::Failed {
                    failed += 1;
                }
                if svc.kind != ServiceKind::Batch {
                    continue;
                }
            }
            copies.push(CopyStatus {
                task_id: task.id,
                name: task.name.clone(),
                version: task.service_version.unwrap_or_default(),
                state: task.shown_state(),
                node: task.worker.clone(),
                healthy: healthy(&task),
                stopping: task.stop_requested && !ended(&task),
            });
        }
        copies.sort_by(|a, b| a.name.cmp(&b.name));
        let counting = copies.iter().filter(|c| !c.stopping);
        let running = counting
            .clone()
            .filter(|c| c.state == State::Running.as_str())
            .count() as u32;
        let healthy = counting.filter(|c| c.healthy).count() as u32;
        let desired = match svc.kind {
            _ if svc.removed => 0,
            ServiceKind::System => self.system_nodes(&svc).eligible.len() as u32,
            _ => svc.count,
        };
        Some(ServiceStatus {
            desired,
            running,
            healthy,
            completed,
            failed,
            copies,
            endpoints: self.endpoints_of(name),
            service: svc,
        })
    }
}
