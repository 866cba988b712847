//! The reconciler: desired state (a [`Service`]) against actual state (its copies, as
//! [`CopyView`]s) at a given time, giving the copies to start and stop and what became of the
//! rollout. A pure function: the rules gather its inputs and carry out its [`Plan`].
//!
//! Rollouts start new copies beside the old ones: an old copy is stopped only once a new one
//! has been healthy for `min_healthy_time`, so healthy copies never drop below the count for
//! an update, and never more than `count + max_parallel` copies exist (those being stopped
//! included; canaries add up to `canary` instead of `max_parallel` while they wait).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::{RolloutState, Service, ServiceKind};
use uuid::Uuid;

/// One copy as the reconciler sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CopyView {
    pub id: Uuid,
    pub version: u64,
    /// Where it runs or was placed.
    pub node: Option<String>,
    /// The node a `system` copy is pinned to.
    pub pin: Option<String>,
    /// Not ended for good (running, waiting to run, or to restart).
    pub live: bool,
    /// Asked to stop.
    pub stopping: bool,
    /// Running, its check passing (or without one).
    pub healthy: bool,
    /// Healthy for the update policy's `min_healthy_time`.
    pub ready: bool,
    pub created: DateTime<Utc>,
    /// Ended for good: `Some(true)` completed successfully, `Some(false)` failed.
    pub outcome: Option<bool>,
    pub ended: Option<DateTime<Utc>>,
}

impl CopyView {
    fn counts(&self) -> bool {
        self.live && !self.stopping
    }
}

/// Nodes for `system` services.
#[derive(Debug, Clone, Default)]
pub(crate) struct Nodes {
    /// Where a copy should run: ready, undrained, the template's constraints met.
    pub eligible: Vec<String>,
    /// Nodes silent for now: their copies are kept (the node may come back), none added.
    pub silent: BTreeSet<String>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// A new copy of `version` (on `node` for a `system` service).
    Start {
        version: u64,
        node: Option<String>,
    },
    Stop {
        id: Uuid,
        why: &'static str,
    },
}

/// What became of the rollout to the current version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RolloutChange {
    Succeeded,
    AwaitingPromotion,
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub rollout: Option<RolloutChange>,
    /// `batch`: the job ended, and how.
    pub finished: Option<String>,
    /// New copies wait this long yet (copies failing one after the other).
    pub backing_off: Option<Duration>,
}

impl Plan {
    fn start(&mut self, n: usize, version: u64) {
        for _ in 0..n {
            self.steps.push(Step::Start {
                version,
                node: None,
            });
        }
    }

    fn stop<'a>(&mut self, copies: impl IntoIterator<Item = &'a CopyView>, why: &'static str) {
        for c in copies {
            self.steps.push(Step::Stop { id: c.id, why });
        }
    }
}

/// How long new copies wait after copies of the service failed one after the other: the same
/// backoff as a task's restarts, counted over the last ten minutes.
fn backoff(copies: &[CopyView], now: DateTime<Utc>) -> Option<Duration> {
    let window = chrono::Duration::minutes(10);
    let failures: Vec<DateTime<Utc>> = copies
        .iter()
        .filter(|c| c.outcome == Some(false))
        .filter_map(|c| c.ended)
        .filter(|&at| now - at < window)
        .collect();
    let last = *failures.iter().max()?;
    let wait = crate::rules::backoff(failures.len() as u32 - 1);
    let waited = (now - last).to_std().unwrap_or_default();
    (waited < wait).then(|| wait - waited)
}

/// What to do for `svc` with `copies` at `now`.
pub(crate) fn reconcile(
    svc: &Service,
    copies: &[CopyView],
    nodes: &Nodes,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    if svc.removed {
        plan.stop(
            copies.iter().filter(|c| c.counts()),
            "the service was removed",
        );
        return plan;
    }
    if svc.kind == ServiceKind::Batch {
        batch(svc, copies, now, &mut plan);
        return plan;
    }
    if let Some(failure) = rollout_failure(svc, copies, now) {
        plan.rollout = Some(RolloutChange::Failed(failure));
        return plan;
    }
    match svc.kind {
        ServiceKind::System => system(svc, copies, nodes, &mut plan),
        _ => service(svc, copies, &mut plan),
    }
    if let Some(wait) = backoff(copies, now) {
        let before = plan.steps.len();
        plan.steps.retain(|s| !matches!(s, Step::Start { .. }));
        if plan.steps.len() < before {
            plan.backing_off = Some(wait);
        }
    }
    plan
}

/// The active rollout's first new copy that missed its deadline, said in words.
fn rollout_failure(svc: &Service, copies: &[CopyView], now: DateTime<Utc>) -> Option<String> {
    let rollout = svc.rollout.as_ref()?;
    if !rollout.state.is_active() || rollout.to != svc.version {
        return None;
    }
    let deadline = svc.update.healthy_deadline();
    let late = copies.iter().find(|c| {
        c.counts()
            && c.version == svc.version
            && !c.ready
            && c.created >= rollout.started_at
            && (now - c.created).to_std().is_ok_and(|age| age > deadline)
    })?;
    Some(format!(
        "copy {} of version {} was not healthy within {}",
        &late.id.to_string()[..8],
        svc.version,
        cube_shared::units::format_duration(deadline)
    ))
}

fn rollout_active(svc: &Service) -> bool {
    svc.rollout
        .as_ref()
        .is_some_and(|r| r.state.is_active() && r.to == svc.version)
}

fn rollout_failed(svc: &Service) -> bool {
    svc.rollout
        .as_ref()
        .is_some_and(|r| r.state == RolloutState::Failed && r.to == svc.version)
}

/// The `n` copies best stopped first: those not ready, then those on the nodes with the most
/// copies, then the newest.
fn extras<'a>(copies: &[&'a CopyView], all: &[&CopyView], n: usize) -> Vec<&'a CopyView> {
    let mut per_node: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    for c in all {
        *per_node.entry(c.node.as_deref()).or_default() += 1;
    }
    let mut ranked: Vec<&CopyView> = copies.to_vec();
    ranked.sort_by(|a, b| {
        a.ready
            .cmp(&b.ready)
            .then(per_node[&b.node.as_deref()].cmp(&per_node[&a.node.as_deref()]))
            .then(b.created.cmp(&a.created))
            .then(b.id.cmp(&a.id))
    });
    ranked.truncate(n);
    ranked
}

fn service(svc: &Service, copies: &[CopyView], plan: &mut Plan) {
    let count = svc.count as usize;
    let target = svc.version;
    let live: Vec<&CopyView> = copies.iter().filter(|c| c.counts()).collect();
    let existing = copies.iter().filter(|c| c.live).count();
    let (new, old): (Vec<&CopyView>, Vec<&CopyView>) =
        live.iter().partition(|c| c.version == target);
    let new_ready = new.iter().filter(|c| c.ready).count();
    let in_flight = new.len() - new_ready;
    let active = rollout_active(svc);
    let canary = svc.update.canary() as usize;
    let rollout = svc.rollout.as_ref();
    let canary_phase =
        active && canary > 0 && !rollout.is_some_and(|r| r.promoted) && !old.is_empty();
    let parallel = if canary_phase {
        canary
    } else {
        svc.update.max_parallel() as usize
    };
    let room = (count + parallel).saturating_sub(existing);

    if old.is_empty() {
        if new.len() < count {
            plan.start((count - new.len()).min(room), target);
        } else if new.len() > count {
            plan.stop(extras(&new, &live, new.len() - count), "scaled down");
        }
        if active && new_ready >= count && new.len() <= count {
            plan.rollout = Some(RolloutChange::Succeeded);
        }
        return;
    }

    // A rollout (or what is left of a failed one): old copies are stopped as new ones are
    // ready; new ones start `parallel` at a time.
    let want_new = if canary_phase { canary } else { count };
    let old_kept = if canary_phase {
        count
    } else {
        count.saturating_sub(new_ready)
    };
    let mut old_left = old.len();
    if old.len() > old_kept {
        plan.stop(
            extras(&old, &live, old.len() - old_kept),
            "replaced by a new version",
        );
        old_left = old_kept;
    }
    // Too many new copies for the count, or (the count or `max_parallel` lowered mid-way)
    // too many in all: the new ones not yet ready go first.
    let too_many = new
        .len()
        .saturating_sub(want_new)
        .max((old_left + new.len()).saturating_sub(count + parallel))
        .min(new.len());
    if too_many > 0 {
        plan.stop(extras(&new, &live, too_many), "scaled down");
    }
    let new_len = new.len() - too_many;
    let wanted = want_new.saturating_sub(new_len);
    let lost = count.saturating_sub(old_left + new_len);
    let n = if rollout_failed(svc) {
        // Nothing more is replaced; a lost copy is still replaced.
        lost
    } else {
        let in_flight = in_flight.saturating_sub(too_many);
        wanted.min(parallel.saturating_sub(in_flight)).max(lost)
    };
    plan.start(n.min(room), target);
    if canary_phase
        && new_ready >= canary
        && rollout.is_some_and(|r| r.state == RolloutState::Running)
    {
        plan.rollout = Some(RolloutChange::AwaitingPromotion);
    }
}

fn system(svc: &Service, copies: &[CopyView], nodes: &Nodes, plan: &mut Plan) {
    let target = svc.version;
    let eligible: BTreeSet<&str> = nodes.eligible.iter().map(String::as_str).collect();
    let live: Vec<&CopyView> = copies.iter().filter(|c| c.counts()).collect();
    // Copies on nodes that left, were drained or no longer meet the constraints.
    plan.stop(
        live.iter().copied().filter(|c| {
            let node = c.pin.as_deref().unwrap_or_default();
            !eligible.contains(node) && !nodes.silent.contains(node)
        }),
        "its node is no longer eligible",
    );
    let mut in_flight = live
        .iter()
        .filter(|c| c.version == target && !c.ready)
        .count();
    let parallel = svc.update.max_parallel() as usize;
    let failed = rollout_failed(svc);
    let mut complete = true;
    for node in &nodes.eligible {
        let on: Vec<&CopyView> = live
            .iter()
            .copied()
            .filter(|c| c.pin.as_deref() == Some(node.as_str()))
            .collect();
        let (new, mut old): (Vec<&CopyView>, Vec<&CopyView>) =
            on.iter().partition(|c| c.version == target);
        if old.len() > 1 {
            // Versions deployed one after the other: one old copy serves until the new one
            // is ready (the one best kept), the others go.
            let gone = extras(&old, &on, old.len() - 1);
            old.retain(|c| !gone.iter().any(|g| g.id == c.id));
            plan.stop(gone, "replaced by a new version");
        }
        if new.is_empty() {
            complete = false;
            let missing = old.is_empty();
            if missing || (!failed && in_flight < parallel) {
                if !missing {
                    in_flight += 1;
                }
                plan.steps.push(Step::Start {
                    version: target,
                    node: Some(node.clone()),
                });
            }
            continue;
        }
        if new.iter().any(|c| c.ready) {
            plan.stop(old.iter().copied(), "replaced by a new version");
        } else {
            complete = false;
        }
        if new.len() > 1 {
            plan.stop(extras(&new, &on, new.len() - 1), "one copy per node");
        }
    }
    // A silent node keeps its copy, and the rollout is not done until it runs the version.
    let silent_behind = nodes.silent.iter().any(|node| {
        !live
            .iter()
            .any(|c| c.pin.as_deref() == Some(node.as_str()) && c.version == target)
    });
    if complete && !silent_behind && rollout_active(svc) {
        plan.rollout = Some(RolloutChange::Succeeded);
    }
}

fn batch(svc: &Service, copies: &[CopyView], now: DateTime<Utc>, plan: &mut Plan) {
    if svc.finished.is_some() {
        return;
    }
    let count = svc.count as usize;
    let done = copies.iter().filter(|c| c.outcome == Some(true)).count();
    let failed = copies.iter().filter(|c| c.outcome == Some(false)).count();
    if done >= count {
        plan.finished = Some(format!("completed: {done} of {count} copies succeeded"));
        return;
    }
    if failed > svc.max_failures as usize {
        plan.finished = Some(format!(
            "failed: {failed} copies failed (at most {} may)",
            svc.max_failures
        ));
        return;
    }
    let live = copies.iter().filter(|c| c.counts()).count();
    let wanted = (count - done).saturating_sub(live);
    if wanted == 0 {
        return;
    }
    match backoff(copies, now) {
        Some(wait) => plan.backing_off = Some(wait),
        None => plan.start(wanted, svc.version),
    }
}
