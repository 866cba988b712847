//! Liveness: which nodes the manager may judge, and when. Silence is measured on the
//! manager's own monotonic clock, from when it *received* each heartbeat, and it counts only
//! while the manager could have heard: a manager whose NATS connection is down, whose loop
//! stalled, or which finds most nodes silent at once blames itself, not the nodes.
//!
//! A node goes through three judgements:
//! - silent for the TTL: `unreachable`. No new work; its tasks show as unknown.
//! - silent for TTL + grace: `down`. Its tasks whose restart policy allows it are placed
//!   elsewhere; the others keep waiting for it (`rules::nodes`).
//! - silent for `lost_after`: the tasks still waiting are declared failed.
//!
//! Nothing is judged while the manager cannot hear, and when it hears again every node gets a
//! fresh TTL + grace (Nomad's failover heartbeat TTL). When more than `disruption_threshold`
//! of the nodes are silent at once, no node goes `down` (Kubernetes' full disruption): the
//! likelier story is that the manager lost contact.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cube_shared::{JournalEntry, Node, NodeState, State};
use tracing::warn;
use uuid::Uuid;

use super::nodes::Unseen;
use super::Rules;

/// How long reports may wait unread before the manager counts itself behind on them: a
/// pipeline's ordinary lag, far below any placement's timeout.
pub(crate) const BACKLOG_TOLERATED: Duration = Duration::from_secs(1);

/// What the manager has heard, on its monotonic clock.
pub(crate) struct Hearing {
    /// When each node's last heartbeat arrived.
    heard: HashMap<String, Instant>,
    /// When each active task's current placement was last listed by its worker (or made).
    listed: HashMap<Uuid, Instant>,
    /// Silence before this instant is held against nobody: the manager's start, or the moment
    /// it could hear again after it could not.
    rearmed: Instant,
    /// The shell says the manager cannot hear: its NATS connection is down.
    deaf: bool,
    /// Most nodes are silent at once.
    disruption: bool,
    /// Nodes judged `down` whose tasks were dealt with.
    judged: BTreeSet<String>,
    /// When the last heartbeat of any node arrived.
    last_any: Option<Instant>,
    /// The latest reading of the monotonic clock a handler was given: what a placement made
    /// by a handler without one (a submission, a report) counts from.
    latest: Instant,
    /// Since when reports have been waiting in the state stream unread, at the end of every
    /// batch read: the manager is behind on what workers said.
    behind_since: Option<Instant>,
    /// Silence of a placement before this instant is held against nobody: the end of a
    /// backlog of reports, which may have held what would have explained it.
    placements_rearmed: Instant,
}

impl Hearing {
    pub(crate) fn new(now: Instant) -> Hearing {
        Hearing {
            heard: HashMap::new(),
            listed: HashMap::new(),
            rearmed: now,
            deaf: false,
            disruption: false,
            judged: BTreeSet::new(),
            behind_since: None,
            placements_rearmed: now,
            last_any: None,
            latest: now,
        }
    }

    /// The monotonic clock read `now` by the shell.
    pub(crate) fn at(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
    }

    /// Task `id` was just placed, or reported running: its worker has until TTL + grace (or
    /// the placement timeout) from now to list it.
    pub(crate) fn touch(&mut self, id: Uuid) {
        self.listed.insert(id, self.latest);
    }

    /// A heartbeat from `node` arrived at `now`. Returns whether this manager had heard it
    /// before.
    pub(crate) fn heard(&mut self, node: &str, now: Instant) -> bool {
        self.judged.remove(node);
        self.last_any = Some(self.last_any.map_or(now, |t| t.max(now)));
        self.heard.insert(node.to_string(), now).is_some()
    }

    /// How long `node` has been silent, as far as it can be held against it.
    pub(crate) fn silence(&self, node: &str, now: Instant) -> Duration {
        let since = self.heard.get(node).copied().unwrap_or(self.rearmed);
        now.saturating_duration_since(since.max(self.rearmed))
    }

    /// Task `id`'s current placement was listed by its worker (or just made) at `now`.
    pub(crate) fn listed(&mut self, id: Uuid, now: Instant) {
        self.listed.insert(id, now);
    }

    /// How long task `id`'s current placement has gone unlisted, as far as it can be held
    /// against it.
    fn unlisted(&self, id: Uuid, now: Instant) -> Duration {
        let floor = self.rearmed.max(self.placements_rearmed);
        let since = self.listed.get(&id).copied().unwrap_or(floor);
        now.saturating_duration_since(since.max(floor))
    }

    /// Whether reports have waited unread for longer than [`BACKLOG_TOLERATED`] at `now`.
    fn behind_on_reports(&self, now: Instant) -> bool {
        self.behind_since
            .is_some_and(|since| now.saturating_duration_since(since) > BACKLOG_TOLERATED)
    }

    pub(crate) fn forget_node(&mut self, node: &str) {
        self.heard.remove(node);
        self.judged.remove(node);
    }

    /// Whether nodes may be judged now.
    fn can_judge(&self) -> bool {
        !self.deaf && !self.disruption
    }

    /// Whether the manager has shown it can hear since `node` became overdue (silent for
    /// `limit`): some other node's heartbeat arrived after that. A manager cut off without
    /// knowing it hears nobody, so it judges nobody, however the silences line up.
    fn heard_others_since_overdue(&self, node: &str, limit: Duration) -> bool {
        let since = self
            .heard
            .get(node)
            .copied()
            .unwrap_or(self.rearmed)
            .max(self.rearmed);
        self.last_any.is_some_and(|any| any > since + limit)
    }
}

/// Why an active task's placement is in doubt.
enum Doubt {
    /// Its worker is heard but has not listed it for TTL + grace.
    Vanished,
    /// Nobody has taken the placement up.
    NotTaken,
}

impl Rules {
    /// The shell's word on whether the manager can hear: its NATS connection is up. Nothing
    /// is judged while it cannot; once it can, every node gets a fresh TTL + grace.
    pub fn set_hearing(&mut self, can_hear: bool, now: DateTime<Utc>, mono: Instant) {
        if !can_hear && !self.hearing.deaf {
            self.hearing.deaf = true;
            self.metrics.deaf.inc();
            warn!("lost contact with NATS: no node is judged until it is back");
        } else if can_hear && self.hearing.deaf {
            self.hearing.deaf = false;
            self.rearm("contact with NATS is back", now, mono);
        }
    }

    /// The shell read a batch of reports at `mono`; `waiting`: more were in the state stream
    /// after it. A placement is not judged unlisted while the manager is behind on reports
    /// (its `completed` may be among them: a slow manager would place again what ran), and
    /// after a backlog longer than [`BACKLOG_TOLERATED`] every placement gets its timeouts
    /// afresh, as nodes do when the manager hears again.
    pub fn set_reports_waiting(&mut self, waiting: bool, mono: Instant) {
        self.hearing.at(mono);
        match (waiting, self.hearing.behind_since) {
            (true, None) => self.hearing.behind_since = Some(mono),
            (false, Some(_)) => {
                if self.hearing.behind_on_reports(mono) {
                    self.hearing.placements_rearmed = mono;
                }
                self.hearing.behind_since = None;
            }
            _ => {}
        }
    }

    /// Holds no silence before `mono` against any node or placement.
    fn rearm(&mut self, why: &str, now: DateTime<Utc>, mono: Instant) {
        self.hearing.rearmed = mono;
        let fresh = self.timings.node_ttl + self.timings.node_grace;
        self.journal(
            JournalEntry::new(
                "hearing",
                format!("{why}: every node has a fresh {fresh:?} before it can be judged"),
            ),
            now,
        );
    }

    /// The shell's loop ticks after `gap` since its last tick. A loop that did not tick for
    /// longer than the grace may not have read heartbeats that arrived meanwhile (a paused
    /// process, a starved CPU, a writer that held it up): nobody is judged by that silence.
    pub fn ticked_after(&mut self, gap: Duration, now: DateTime<Utc>, mono: Instant) {
        let allowed = self.timings.node_grace.max(self.timings.tick * 2);
        if gap > allowed {
            self.metrics.deaf.inc();
            let why = format!("the manager's loop stalled for {:.1}s", gap.as_secs_f64());
            self.rearm(&why, now, mono);
        }
    }

    /// Judges every node by its silence at `mono` (see the module's documentation).
    pub(super) fn check_liveness(&mut self, now: DateTime<Utc>, mono: Instant) {
        if self.hearing.deaf {
            return;
        }
        let ttl = self.timings.node_ttl;
        let limit = ttl + self.timings.node_grace;
        let counted: Vec<Duration> = self
            .cluster
            .nodes()
            .filter(|n| !n.leaving && !self.hearing.judged.contains(&n.name))
            .map(|n| self.hearing.silence(&n.name, mono))
            .collect();
        let silent = counted.iter().filter(|q| **q > ttl).count();
        let share = silent as f64 / counted.len().max(1) as f64;
        let disrupted = share > self.timings.disruption_threshold;
        self.set_disruption(disrupted, silent, counted.len(), now, mono);
        // Measured after: the end of a disruption gives every node a fresh TTL.
        let nodes: Vec<(String, NodeState, bool, Duration)> = self
            .cluster
            .nodes()
            .map(|n| {
                let quiet = self.hearing.silence(&n.name, mono);
                (n.name.clone(), n.state, n.leaving, quiet)
            })
            .collect();
        for (name, state, leaving, quiet) in nodes {
            let judged = self.hearing.judged.contains(&name);
            let may_judge = leaving
                || (self.hearing.can_judge()
                    && self.hearing.heard_others_since_overdue(&name, limit));
            if quiet > self.timings.lost_after && judged && may_judge {
                self.give_up_waiting(&name, now);
            } else if quiet > limit && !judged && may_judge {
                // A node that said goodbye is judged even in a disruption: it is known gone.
                self.node_down(&name, quiet, now);
            } else if quiet > ttl && matches!(state, NodeState::Ready | NodeState::Draining) {
                self.node_unreachable(&name, quiet, now);
            }
        }
    }

    fn set_disruption(
        &mut self,
        on: bool,
        silent: usize,
        of: usize,
        now: DateTime<Utc>,
        mono: Instant,
    ) {
        if on == self.hearing.disruption {
            return;
        }
        self.hearing.disruption = on;
        self.metrics.disruption.set(i64::from(on));
        if on {
            let threshold = self.timings.disruption_threshold * 100.0;
            self.journal(
                JournalEntry::new(
                    "disruption",
                    format!(
                        "{silent} of {of} nodes are silent at once (more than {threshold:.0}%): \
                         taken for the manager's loss of contact, not dead nodes; \
                         no node is declared down until nodes report again"
                    ),
                ),
                now,
            );
        } else {
            self.rearm("most nodes report again (disruption over)", now, mono);
        }
    }

    fn set_node_state(&mut self, name: &str, state: NodeState) {
        if let Some(node) = self.cluster.node(name).cloned() {
            self.cluster.put_node(Node { state, ..node });
        }
    }

    fn node_unreachable(&mut self, name: &str, quiet: Duration, now: DateTime<Utc>) {
        self.set_node_state(name, NodeState::Unreachable);
        self.journal(
            JournalEntry::new(
                "node-unreachable",
                format!(
                    "{name} silent for {:.1}s: no new work for it; its tasks' state is unknown",
                    quiet.as_secs_f64()
                ),
            )
            .worker(name),
            now,
        );
    }

    fn node_down(&mut self, name: &str, quiet: Duration, now: DateTime<Utc>) {
        self.hearing.judged.insert(name.to_string());
        self.set_node_state(name, NodeState::Down);
        let lost_after = self.timings.lost_after;
        self.journal(
            JournalEntry::new(
                "node-down",
                format!(
                    "{name} silent for {:.1}s: its tasks that may restart are placed elsewhere, \
                     the others wait for it up to {lost_after:?}",
                    quiet.as_secs_f64()
                ),
            )
            .worker(name),
            now,
        );
        for id in self.cluster.active_on(name) {
            self.node_lost_under(id, name, now);
        }
    }

    /// The tasks still waiting for a node silent for `lost_after` are failed.
    fn give_up_waiting(&mut self, name: &str, now: DateTime<Utc>) {
        let reason = format!(
            "node lost: {name} silent for longer than {:?}",
            self.timings.lost_after
        );
        for id in self.cluster.active_on(name) {
            if let Some(task) = self.cluster.task(&id).cloned() {
                self.lose(task, name, &reason, now);
            }
        }
    }

    /// Placements in doubt at `mono`: a running task its heard worker no longer lists fails
    /// ("vanished": a missed exit, a worker restarted with an empty memory); a placement
    /// nobody took up is made again.
    pub(super) fn check_placements(&mut self, now: DateTime<Utc>, mono: Instant) {
        if !self.hearing.can_judge() || self.hearing.behind_on_reports(mono) {
            return;
        }
        let limit = self.timings.node_ttl + self.timings.node_grace;
        let heard = |w: &str| self.cluster.node(w).is_some_and(crate::cluster::alive);
        let mut doubts: Vec<(Uuid, Doubt)> = self
            .cluster
            .tasks()
            .filter_map(|t| {
                let unlisted = self.hearing.unlisted(t.id, mono);
                match (t.state, t.worker.as_deref()) {
                    (State::Running, Some(w)) if unlisted > limit && heard(w) => {
                        Some((t.id, Doubt::Vanished))
                    }
                    (State::Scheduled, w)
                        if unlisted > self.timings.schedule_timeout && w.is_none_or(heard) =>
                    {
                        Some((t.id, Doubt::NotTaken))
                    }
                    _ => None,
                }
            })
            .collect();
        doubts.sort_unstable_by_key(|(id, _)| *id);
        for (id, doubt) in doubts {
            let Some(task) = self.cluster.task(&id).cloned() else {
                continue;
            };
            match doubt {
                Doubt::Vanished => self.vanished(task, now),
                Doubt::NotTaken => self.not_taken(task, now),
            }
        }
        let cluster = &self.cluster;
        self.hearing
            .listed
            .retain(|id, _| cluster.task(id).is_some_and(|t| t.state.is_active()));
    }

    fn vanished(&mut self, task: cube_shared::Task, now: DateTime<Utc>) {
        let worker = task.worker.clone().unwrap_or_default();
        let reason = format!(
            "vanished: {worker} no longer lists placement {}",
            task.generation
        );
        self.fail_unseen(task, &worker, &reason, Unseen::Vanished, now);
    }

    fn not_taken(&mut self, mut task: cube_shared::Task, now: DateTime<Utc>) {
        let timeout = self.timings.schedule_timeout;
        let reason = format!(
            "placement {} not taken up within {timeout:?}",
            task.generation
        );
        if let Some(worker) = task.worker.clone() {
            if task.previous.is_some() {
                return self.move_failed(task, &worker, &reason, now);
            }
            self.stop_copy(task.id, task.generation, &worker);
        }
        task.highest_generation = task.highest_generation.max(task.generation);
        task.state = State::Pending;
        task.worker = None;
        task.error = Some(format!("{reason}: placing it again"));
        self.journal(
            JournalEntry::new("placement-timeout", format!("{reason}: placing it again"))
                .task(task.id),
            now,
        );
        self.save(task);
    }
}
