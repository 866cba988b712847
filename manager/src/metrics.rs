//! The manager's Prometheus metrics. Every metric is an atomic: the loop updates them without
//! a lock, and a scrape reads them from another task. Labels are bounded sets known up front
//! (task states, node states, rejection kinds, placement reasons); their series are created
//! once here, so the hot path never looks a label up.

use cube_shared::{NodeState, State};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Why a message was refused: the `kind` label of `cube_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// A TaskEvent that could not be read or failed validation.
    InvalidEvent,
    /// A submission that reuses a known task id with a different spec.
    Conflict,
    /// A worker's state report that could not be read.
    InvalidReport,
    /// A state report sent on another task's or worker's subject.
    WrongSubject,
    /// A stop for a task nobody submitted.
    UnknownTask,
    /// A heartbeat that could not be read (its node still counts as heard).
    InvalidHeartbeat,
    /// A submission beyond the limits of bounded state (`--max-tasks`, a full Task DB).
    OverLimit,
}

impl RejectKind {
    pub const ALL: [RejectKind; 7] = [
        RejectKind::InvalidEvent,
        RejectKind::Conflict,
        RejectKind::InvalidReport,
        RejectKind::WrongSubject,
        RejectKind::UnknownTask,
        RejectKind::InvalidHeartbeat,
        RejectKind::OverLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::InvalidEvent => "invalid_event",
            RejectKind::Conflict => "conflict",
            RejectKind::InvalidReport => "invalid_report",
            RejectKind::WrongSubject => "wrong_subject",
            RejectKind::UnknownTask => "unknown_task",
            RejectKind::InvalidHeartbeat => "invalid_heartbeat",
            RejectKind::OverLimit => "over_limit",
        }
    }
}

/// Why a task was placed: the `reason` label of `cube_placements_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementReason {
    /// First placement of a submitted task.
    New,
    /// Placed again by its restart policy (or because its node was lost).
    Restart,
    /// Moved off a draining node.
    Drain,
}

impl PlacementReason {
    pub const ALL: [PlacementReason; 3] = [
        PlacementReason::New,
        PlacementReason::Restart,
        PlacementReason::Drain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlacementReason::New => "new",
            PlacementReason::Restart => "restart",
            PlacementReason::Drain => "drain",
        }
    }
}

const NODE_STATES: [NodeState; 4] = [
    NodeState::Ready,
    NodeState::Draining,
    NodeState::Unreachable,
    NodeState::Down,
];

/// Scheduling latency buckets, in seconds: from a millisecond to a minute (a task may wait
/// for a node with room).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The manager's metrics. Cloning shares them. A fresh set counts, but nobody sees it until
/// it is [registered](Metrics::register) (`cube manager --metrics-addr`).
#[derive(Debug, Clone)]
pub struct Metrics {
    tasks: IntGaugeVec,
    tasks_by_state: [IntGauge; State::ALL.len()],
    placements: IntCounterVec,
    pub(crate) scheduling_latency: Histogram,
    pub(crate) restarts: IntCounter,
    nodes: IntGaugeVec,
    nodes_by_state: [IntGauge; NODE_STATES.len()],
    rejected: IntCounterVec,
    rejected_by_kind: [IntCounter; RejectKind::ALL.len()],
    /// Counted by the connection's event callback (see `cube manager`).
    pub nats_reconnects: IntCounter,
    pub(crate) batch_messages: Histogram,
    pub(crate) commit_seconds: Histogram,
    /// 1 while most nodes are silent at once: taken for the manager's own deafness, so
    /// nothing is declared lost.
    pub(crate) disruption: IntGauge,
    /// Times liveness judgement was suspended because the manager could not hear (NATS
    /// connection lost, loop stalled).
    pub(crate) deaf: IntCounter,
    /// The leadership lease (see [`crate::Lease`]).
    pub(crate) lease: LeaseMetrics,
}

/// How this manager fares with the leadership lease.
#[derive(Debug, Clone)]
pub struct LeaseMetrics {
    /// 1 while this manager holds the lease and acts.
    pub leader: IntGauge,
    /// The epoch this manager leads at (0 while it is a standby).
    pub epoch: IntGauge,
    renewals: IntCounterVec,
    pub renewed: IntCounter,
    pub renew_failed: IntCounter,
    /// Times this manager won the lease (its first term included).
    pub takeovers: IntCounter,
    /// Times it stepped down because it could not renew in time, or found itself deposed.
    pub step_downs: IntCounter,
}

impl LeaseMetrics {
    fn new() -> LeaseMetrics {
        let renewals = IntCounterVec::new(
            Opts::new(
                "cube_lease_renewals_total",
                "Renewals of the leadership lease by this manager, by outcome (ok, failed).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        LeaseMetrics {
            leader: IntGauge::new(
                "cube_leader",
                "1 while this manager holds the leadership lease and acts; 0 while it stands by.",
            )
            .expect("valid metric"),
            epoch: IntGauge::new(
                "cube_lease_epoch",
                "The epoch this manager leads at (the lease revision it won); 0 on a standby.",
            )
            .expect("valid metric"),
            renewed: renewals.with_label_values(&["ok"]),
            renew_failed: renewals.with_label_values(&["failed"]),
            renewals,
            takeovers: IntCounter::new(
                "cube_lease_takeovers_total",
                "Times this manager won the leadership lease (its first term included).",
            )
            .expect("valid metric"),
            step_downs: IntCounter::new(
                "cube_lease_step_downs_total",
                "Times this manager stopped leading: it could not renew in time, or another took over.",
            )
            .expect("valid metric"),
        }
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.leader.clone()))?;
        registry.register(Box::new(self.epoch.clone()))?;
        registry.register(Box::new(self.renewals.clone()))?;
        registry.register(Box::new(self.takeovers.clone()))?;
        registry.register(Box::new(self.step_downs.clone()))?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The placement counters of one scheduler, by [`PlacementReason`].
#[derive(Debug, Clone)]
pub(crate) struct Placements([IntCounter; PlacementReason::ALL.len()]);

impl Placements {
    pub(crate) fn inc(&self, reason: PlacementReason) {
        // `ALL` lists the reasons in declaration order (a test checks it).
        self.0[reason as usize].inc();
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // The names and help texts are constants: building them cannot fail.
        let tasks = IntGaugeVec::new(
            Opts::new("cube_tasks", "Tasks in the Task DB, by state."),
            &["state"],
        )
        .expect("valid metric");
        let placements = IntCounterVec::new(
            Opts::new(
                "cube_placements_total",
                "Placements published to workers or the shared queue, by scheduler and reason (new, restart, drain).",
            ),
            &["scheduler", "reason"],
        )
        .expect("valid metric");
        let nodes = IntGaugeVec::new(
            Opts::new(
                "cube_nodes",
                "Worker nodes, by state (ready, draining, down; silent longer than the TTL is down).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "cube_rejected_total",
                "Messages refused and published on tasks.rejected, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        Metrics {
            tasks_by_state: State::ALL.map(|s| tasks.with_label_values(&[s.as_str()])),
            tasks,
            placements,
            scheduling_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "cube_scheduling_latency_seconds",
                    "From a submission's arrival at the manager to its placement being published.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            restarts: IntCounter::new(
                "cube_restarts_total",
                "Tasks started again by their restart policy (including after a lost node).",
            )
            .expect("valid metric"),
            nodes_by_state: NODE_STATES.map(|s| nodes.with_label_values(&[s.to_string()])),
            nodes,
            rejected_by_kind: RejectKind::ALL.map(|k| rejected.with_label_values(&[k.as_str()])),
            rejected,
            nats_reconnects: IntCounter::new(
                "cube_nats_reconnects_total",
                "Times the connection to NATS was re-established after it was lost.",
            )
            .expect("valid metric"),
            batch_messages: Histogram::with_opts(
                HistogramOpts::new(
                    "cube_manager_batch_messages",
                    "Messages (events or state reports) handled per batch.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            )
            .expect("valid metric"),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cube_manager_commit_seconds",
                    "Time to store a batch's records, publish its work and acknowledge its messages.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            disruption: IntGauge::new(
                "cube_disruption",
                "1 while more than the threshold share of nodes are silent at once: no node is declared lost.",
            )
            .expect("valid metric"),
            deaf: IntCounter::new(
                "cube_manager_deaf_total",
                "Times the manager could not hear (NATS connection lost, loop stalled) and gave every node a fresh TTL.",
            )
            .expect("valid metric"),
            lease: LeaseMetrics::new(),
        }
    }

    /// Makes the metrics visible in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.tasks.clone()))?;
        registry.register(Box::new(self.placements.clone()))?;
        registry.register(Box::new(self.scheduling_latency.clone()))?;
        registry.register(Box::new(self.restarts.clone()))?;
        registry.register(Box::new(self.nodes.clone()))?;
        registry.register(Box::new(self.rejected.clone()))?;
        registry.register(Box::new(self.nats_reconnects.clone()))?;
        registry.register(Box::new(self.batch_messages.clone()))?;
        registry.register(Box::new(self.commit_seconds.clone()))?;
        registry.register(Box::new(self.disruption.clone()))?;
        registry.register(Box::new(self.deaf.clone()))?;
        self.lease.register(registry)?;
        Ok(())
    }

    /// Sets the task gauges from counts indexed like [`State::ALL`].
    pub(crate) fn set_tasks(&self, counts: &[usize; State::ALL.len()]) {
        for (gauge, n) in self.tasks_by_state.iter().zip(counts) {
            gauge.set(*n as i64);
        }
    }

    /// Sets the node gauges from counts of ready, draining and down nodes.
    pub(crate) fn set_nodes(&self, counts: NodeCounts) {
        let [ready, draining, unreachable, down] = &self.nodes_by_state;
        ready.set(counts.ready as i64);
        draining.set(counts.draining as i64);
        unreachable.set(counts.unreachable as i64);
        down.set(counts.down as i64);
    }

    /// The placement counters of `scheduler` (created at zero, so they show before the
    /// first placement).
    pub(crate) fn placements(&self, scheduler: &str) -> Placements {
        Placements(
            PlacementReason::ALL
                .map(|r| self.placements.with_label_values(&[scheduler, r.as_str()])),
        )
    }

    pub(crate) fn rejected(&self, kind: RejectKind) {
        // `ALL` lists the kinds in declaration order (a test checks it).
        let i = kind as usize;
        self.rejected_by_kind[i].inc();
    }
}

/// Nodes by the state the manager gives them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounts {
    pub ready: usize,
    pub draining: usize,
    pub unreachable: usize,
    pub down: usize,
}

impl NodeCounts {
    pub fn add(&mut self, state: NodeState) {
        match state {
            NodeState::Ready => self.ready += 1,
            NodeState::Draining => self.draining += 1,
            NodeState::Unreachable => self.unreachable += 1,
            NodeState::Down => self.down += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    }

    #[test]
    fn the_lists_are_in_declaration_order() {
        for (i, r) in PlacementReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn every_series_is_exposed_with_help_from_the_start() {
        let m = Metrics::new();
        let registry = Registry::new();
        m.register(&registry).unwrap();
        m.placements("binpack");
        let text = scrape(&registry);
        for s in State::ALL {
            assert!(
                text.contains(&format!("cube_tasks{{state=\"{s}\"}} 0")),
                "{text}"
            );
        }
        for s in ["ready", "draining", "down"] {
            assert!(
                text.contains(&format!("cube_nodes{{state=\"{s}\"}} 0")),
                "{text}"
            );
        }
        assert!(text.contains("cube_placements_total{reason=\"restart\",scheduler=\"binpack\"} 0"));
        assert!(text.contains("cube_rejected_total{kind=\"wrong_subject\"} 0"));
        assert!(text.contains("# HELP cube_scheduling_latency_seconds "));
        assert!(text.contains("# TYPE cube_scheduling_latency_seconds histogram"));
        assert!(text.contains("cube_manager_commit_seconds_count 0"));
    }

    #[test]
    fn counts_land_in_their_own_series() {
        let m = Metrics::new();
        let registry = Registry::new();
        m.register(&registry).unwrap();
        let placements = m.placements("spread");
        m.set_tasks(&[1, 0, 2, 0, 3]);
        m.set_nodes(NodeCounts {
            ready: 2,
            draining: 1,
            unreachable: 0,
            down: 0,
        });
        placements.inc(PlacementReason::Drain);
        placements.inc(PlacementReason::Drain);
        m.rejected(RejectKind::Conflict);
        let text = scrape(&registry);
        assert!(text.contains("cube_tasks{state=\"pending\"} 1"));
        assert!(text.contains("cube_tasks{state=\"running\"} 2"));
        assert!(text.contains("cube_tasks{state=\"failed\"} 3"));
        assert!(text.contains("cube_nodes{state=\"ready\"} 2"));
        assert!(text.contains("cube_nodes{state=\"draining\"} 1"));
        assert!(text.contains("cube_placements_total{reason=\"drain\",scheduler=\"spread\"} 2"));
        assert!(text.contains("cube_placements_total{reason=\"new\",scheduler=\"spread\"} 0"));
        assert!(text.contains("cube_rejected_total{kind=\"conflict\"} 1"));
        assert!(text.contains("cube_rejected_total{kind=\"invalid_event\"} 0"));
    }
}
