//! The manager's rules: every decision it takes, as plain synchronous functions over its
//! state with the time passed in.
//!
//! Each handler ([`Rules::on_event`], [`Rules::on_report`], [`Rules::on_heartbeat`],
//! [`Rules::tick`], [`Rules::set_drain`], …) updates the picture of the cluster and records what
//! must follow in [`Effects`]: task records to store, work to publish, journal entries and
//! rejections. Nothing here touches NATS. The shell (`crate::run`) feeds the inputs and hands
//! the effects to the writer, which stores the records first, then publishes the work, the
//! journal and the rejections, then acknowledges the messages that caused them. That is
//! Nomad's scheduler/planner split and kube-runtime's `reconcile -> Action` in Cube's terms,
//! and it is what lets the rules be unit-tested in milliseconds and run under the seeded
//! simulation in `manager/tests/simulation.rs`.
//!
//! One file per concern: `intake` (submissions and stops), `placement`, `reports`, `liveness`
//! (judging silent nodes, only when the manager can hear), `nodes` (heartbeats, lost tasks,
//! revival, fencing), `restarts`, `drain`, `retention` and `limits` (bounded state).

mod drain;
mod effects;
mod intake;
pub mod limits;
mod liveness;
mod nodes;
mod placement;
mod reports;
mod restarts;
pub mod retention;
mod services;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cube_shared::{JournalEntry, Node, NodeState, Placement, Rejection, Service, State, Task};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::metrics::{Metrics, Placements, RejectKind};
use crate::scheduler::Scheduler;

pub use drain::NoSuchNode;
use effects::Effects;
pub use effects::{Decided, Work};
use liveness::Hearing;
pub use nodes::{ForgetError, FENCE_AGAIN};
use restarts::plan_restart;
pub use restarts::{backoff, BACKOFF_BASE, BACKOFF_CAP, HEALTHY_RUN_RESETS};

/// The journal's kinds every task goes through: logged at debug level only.
const ROUTINE: [&str; 5] = [
    "submitted",
    "scheduled",
    "running",
    "completed",
    "forgotten",
];

/// The timings the rules judge by.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// A worker silent for longer than this is `unreachable`: no new work for it.
    pub node_ttl: Duration,
    /// After TTL + this grace without a heartbeat, a worker is `down`: its tasks that may
    /// restart are placed elsewhere.
    pub node_grace: Duration,
    /// After this long without a heartbeat, the tasks still waiting for a node are failed.
    pub lost_after: Duration,
    /// A share of silent nodes above this is taken for the manager's own loss of contact.
    pub disruption_threshold: f64,
    /// A placement nobody has taken up (listed in a heartbeat, reported running) after this
    /// long is made again.
    pub schedule_timeout: Duration,
    /// How often the shell calls [`Rules::tick`]; a longer gap is a stall.
    pub tick: Duration,
    /// How long a task that ended for good is kept (memory and Task DB) before it is
    /// forgotten ([`retention`]).
    pub keep_ended: Duration,
    /// The most tasks that ended for good kept at once: beyond it the longest ended go.
    pub keep_ended_max: usize,
    /// The most live tasks (not ended for good, services' copies included): a submission
    /// beyond it is refused ([`limits`]).
    pub max_tasks: usize,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            node_ttl: Duration::from_secs(10),
            node_grace: Duration::from_secs(5),
            lost_after: Duration::from_secs(600),
            disruption_threshold: 0.55,
            schedule_timeout: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            keep_ended: Duration::from_secs(24 * 3600),
            keep_ended_max: 50_000,
            max_tasks: limits::DEFAULT_MAX_TASKS,
        }
    }
}

/// What the manager knows and has decided. Owned by the manager's loop (or a test).
pub struct Rules {
    timings: Timings,
    cluster: Cluster,
    scheduler: Box<dyn Scheduler>,
    /// What the manager has heard, on its monotonic clock: node liveness.
    hearing: Hearing,
    /// Tasks placed elsewhere because their node was judged down, with the placement lost:
    /// if that node comes back before the replacement starts, the original is kept.
    lost: HashMap<Uuid, Placement>,
    /// Doubts about workers (an unreadable or implausible heartbeat, a report ahead of the
    /// clock), and when each was last journalled.
    unreadable: HashMap<String, DateTime<Utc>>,
    /// Stale copies recently asked to stop: (task, generation) → when.
    fenced: HashMap<(Uuid, u64), DateTime<Utc>>,
    /// Nodes an operator drained (kept in the `cube-admin` bucket by the shell).
    drained: BTreeSet<String>,
    /// Placements recorded before a restart are sent again once the state reports that
    /// queued up meanwhile are applied: a task that ran and ended while the manager was down
    /// must not be started again.
    resend_due: bool,
    /// When ended tasks were last looked over ([`retention`]).
    last_sweep: Option<DateTime<Utc>>,
    /// How full the Task DB is, as the shell last read it ([`limits`]).
    task_db: Option<limits::StoreUse>,
    /// When each submission not yet placed arrived, for the scheduling latency. Only tasks
    /// submitted since this manager started: a restart forgets the others.
    awaiting_placement: HashMap<Uuid, DateTime<Utc>>,
    /// Services, and what the reconciler keeps about them.
    services: services::Services,
    metrics: Metrics,
    placements: Placements,
    placing: placement::Placing,
    effects: Effects,
}

/// What a manager finds stored when it starts: the Task DB, the node list and the drains.
#[derive(Debug, Default, Clone)]
pub struct Stored {
    pub tasks: Vec<Task>,
    pub nodes: Vec<Node>,
    pub drained: Vec<String>,
    pub services: Vec<Service>,
}

impl Rules {
    /// Rules over what was stored, for a manager that starts listening at `now` (`mono` on
    /// its monotonic clock). The stored nodes are `unreachable` until this manager hears
    /// them: it inherits no liveness from what workers wrote.
    pub fn new(
        timings: Timings,
        scheduler: Box<dyn Scheduler>,
        metrics: Metrics,
        stored: Stored,
        mono: Instant,
    ) -> Rules {
        let placements = metrics.placements(scheduler.name());
        let mut rules = Rules {
            timings,
            cluster: Cluster::default(),
            scheduler,
            hearing: Hearing::new(mono),
            lost: HashMap::new(),
            unreadable: HashMap::new(),
            fenced: HashMap::new(),
            drained: stored.drained.into_iter().collect(),
            resend_due: false,
            last_sweep: None,
            task_db: None,
            awaiting_placement: HashMap::new(),
            services: services::Services::new(stored.services),
            metrics,
            placements,
            placing: Default::default(),
            effects: Effects::default(),
        };
        for task in stored.tasks {
            rules.cluster.put_task(task);
        }
        for mut node in stored.nodes {
            node.state = if node.leaving {
                NodeState::Down
            } else {
                NodeState::Unreachable
            };
            node.running.clear();
            rules.cluster.put_node(node);
        }
        rules.resend_due = rules
            .cluster
            .tasks()
            .any(|t| t.state == State::Scheduled || (t.stop_requested && t.state.is_active()));
        rules.metrics.set_tasks(&rules.cluster.count_by_state());
        rules
    }

    /// The manager's picture of the cluster, for queries.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    pub fn scheduler_name(&self) -> &'static str {
        self.scheduler.name()
    }

    /// Whether placements recorded before this manager started still wait to be sent again.
    pub fn resend_due(&self) -> bool {
        self.resend_due
    }

    /// Everything the passage of time decides at `now` (`mono` on the monotonic clock): nodes
    /// gone silent, placements in doubt, restarts due, drains to carry on, waiting tasks to
    /// place. The shell calls it every [`Timings::tick`].
    pub fn tick(&mut self, now: DateTime<Utc>, mono: Instant) {
        self.hearing.at(mono);
        self.check_liveness(now, mono);
        self.check_placements(now, mono);
        self.restart_due(now);
        self.forget_ended(now);
        self.migrate_drained(now);
        self.place_pending(now);
        // Time decides too (healthy long enough, deadlines, backoff), and so do nodes.
        self.services.touch_all();
    }

    /// Everything decided since the last call, with each changed task as it is now. Call
    /// [`Rules::reconcile`] first, so that services follow what changed.
    pub fn take_effects(&mut self) -> Decided {
        let effects = std::mem::take(&mut self.effects);
        self.metrics.set_tasks(&self.cluster.count_by_state());
        effects.resolve(&self.cluster, &self.services.records)
    }

    /// Records a task's new version: in the picture at once, in the Task DB with the effects
    /// unless only its status changed (it runs, its health): the worker's report, kept in
    /// `CUBE_STATE`, is the record of that ([`cube_shared::is_status_only`]).
    fn save(&mut self, task: Task) {
        if task.state != State::Pending {
            // Placed (the time went with the placement) or ended before it was placed.
            self.awaiting_placement.remove(&task.id);
        }
        let status_only = self
            .cluster
            .task(&task.id)
            .is_some_and(|before| cube_shared::is_status_only(before, &task));
        if !status_only {
            self.effects.changed(task.id);
        }
        if let Some(service) = &task.service {
            self.services.touch(service);
        }
        self.cluster.put_task(task);
    }

    /// Records a decision in the journal (`cube events`) and the log: a task's routine steps
    /// ([`ROUTINE`]) at debug level, since every task takes them (a million tasks made a
    /// gigabyte of log), the rest at info.
    fn journal(&mut self, mut entry: JournalEntry, now: DateTime<Utc>) {
        if ROUTINE.contains(&entry.kind.as_str()) {
            debug!(kind = %entry.kind, task.id = ?entry.task_id, worker = ?entry.worker, "{}", entry.message);
        } else {
            info!(kind = %entry.kind, task.id = ?entry.task_id, worker = ?entry.worker, "{}", entry.message);
        }
        entry.time = now;
        self.effects.journal.push(entry);
    }

    /// Refuses a message: the reason goes to `tasks.rejected` and the journal.
    fn reject(
        &mut self,
        kind: RejectKind,
        payload: &[u8],
        subject: &str,
        reason: String,
        now: DateTime<Utc>,
    ) {
        self.metrics.rejected(kind);
        let reason = cap(reason);
        let cube_shared::wire::Salvaged {
            event_id, task_id, ..
        } = cube_shared::wire::salvage(payload);
        warn!(?event_id, ?task_id, %subject, %reason, "rejected");
        self.effects.rejections.push(Rejection {
            event_id,
            task_id,
            subject: subject.to_string(),
            reason: reason.clone(),
            timestamp: now,
        });
        let mut entry = JournalEntry::new("rejected", reason);
        entry.event_id = event_id;
        entry.task_id = task_id;
        self.journal(entry, now);
    }
}

/// A reason, shortened to at most 1,000 characters: a hostile message must not grow the
/// rejections and the journal.
fn cap(reason: String) -> String {
    const MAX: usize = 1000;
    if reason.chars().count() <= MAX {
        return reason;
    }
    let mut short: String = reason.chars().take(MAX).collect();
    short.push('…');
    short
}
