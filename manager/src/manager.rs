//! The manager's loop: one task owns the cluster state and handles, in turn, submissions and
//! stops, workers' state reports, heartbeats, queries and a periodic reconciliation.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use chrono::Utc;
use cube_bus::Outgoing;
use cube_shared::subjects::{self, *};
use cube_shared::wire::{self, encode, MAX_MESSAGE_BYTES};
use cube_shared::{JournalEntry, Node, NodeState, Rejection, State, StateReport, Task, TaskEvent};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::metrics::{Metrics, PlacementReason, Placements, RejectKind};
use crate::scheduler::{Scheduler, Unschedulable};
use crate::topology::{self, Topology};
use crate::writer::{self, Commit};
use crate::{scheduler_by_name, Config, Error};

pub(crate) struct Manager {
    pub(crate) cfg: Config,
    pub(crate) client: async_nats::Client,
    pub(crate) topo: Topology,
    pub(crate) cluster: Cluster,
    pub(crate) scheduler: Box<dyn Scheduler>,
    /// When this manager started: node liveness is judged only after a TTL of listening.
    pub(crate) started: std::time::Instant,
    /// Stale copies recently asked to stop: (task, generation) → when.
    pub(crate) fenced: HashMap<(Uuid, u64), std::time::Instant>,
    /// Nodes an operator drained (kept in the `cube-admin` bucket).
    pub(crate) drained: HashSet<String>,
    /// Placements recorded before a restart are sent again once the state reports that
    /// queued up meanwhile are applied: a task that ran and ended while the manager was down
    /// must not be started again.
    resend_due: bool,
    /// What the current batch decided, to be made durable before its messages are acked.
    outbox: Outbox,
    writer: mpsc::Sender<Commit>,
    /// The writer has stopped: nothing more can be made durable.
    writer_gone: bool,
    pub(crate) metrics: Metrics,
    pub(crate) placements: Placements,
    /// When the batch being handled was taken from the events stream.
    batch_received: std::time::Instant,
    /// When each submission not yet placed arrived, for the scheduling latency. Only tasks
    /// submitted since this manager started: a restart forgets the others.
    awaiting_placement: HashMap<Uuid, std::time::Instant>,
}

/// The writes a batch of messages decided, waiting for [`Manager::flush`].
#[derive(Default)]
pub(crate) struct Outbox {
    /// Tasks changed, in the order first changed; each is written once, as it is at the end
    /// of the batch.
    tasks: Vec<Uuid>,
    dirty: HashSet<Uuid>,
    /// Other records (the Event DB).
    records: Vec<Outgoing>,
    /// Work for the workers: published after the records.
    work: Vec<Outgoing>,
    /// When the submissions whose first placement is in `work` arrived.
    placed: Vec<std::time::Instant>,
}

/// At most this many messages are handled, then made durable together.
const BATCH: usize = 512;

/// `first`, and whatever else is waiting on `rx`, up to [`BATCH`] messages.
fn batch_of(
    first: jetstream::Message,
    rx: &mut mpsc::Receiver<jetstream::Message>,
) -> Vec<jetstream::Message> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(msg) => batch.push(msg),
            Err(_) => break,
        }
    }
    batch
}

/// Runs the manager until `shutdown` is cancelled.
pub async fn run(
    cfg: Config,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let scheduler = scheduler_by_name(&cfg.scheduler)?;
    let topo = topology::ensure(jetstream::new(client.clone()), cfg.logs_per_task).await?;
    let (writer, writing) = writer::spawn(topo.js.clone(), cfg.metrics.clone(), shutdown.clone());
    let metrics = cfg.metrics.clone();
    let placements = metrics.placements(scheduler.name());
    let mut manager = Manager {
        metrics,
        placements,
        batch_received: std::time::Instant::now(),
        awaiting_placement: HashMap::new(),
        cfg,
        client: client.clone(),
        topo,
        cluster: Cluster::default(),
        scheduler,
        resend_due: false,
        started: std::time::Instant::now(),
        fenced: HashMap::new(),
        drained: HashSet::new(),
        outbox: Outbox::default(),
        writer,
        writer_gone: false,
    };
    manager.restore().await?;
    // The gauges describe the loaded state from the first scrape on.
    manager.metrics.set_tasks(&manager.cluster.count_by_state());

    let mut events = durable(
        &manager.topo.js,
        EVENTS_STREAM,
        MANAGER_EVENTS_CONSUMER,
        EVENTS,
        &shutdown,
    )
    .await?;
    let mut states = durable(
        &manager.topo.js,
        STATE_STREAM,
        MANAGER_STATE_CONSUMER,
        STATE_ALL,
        &shutdown,
    )
    .await?;
    let mut heartbeats = client
        .subscribe(HEARTBEAT_ALL)
        .await
        .map_err(|e| Error::Nats(format!("subscribing to heartbeats: {e}")))?;
    let mut api = client
        .subscribe("cube.api.>")
        .await
        .map_err(|e| Error::Nats(format!("subscribing to the API: {e}")))?;
    let mut tick = tokio::time::interval(manager.cfg.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        scheduler = manager.scheduler.name(),
        tasks = manager.cluster.task_count(),
        "manager ready"
    );

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = events.recv() => {
                manager.batch_received = std::time::Instant::now();
                let batch = batch_of(msg, &mut events);
                manager.metrics.batch_messages.observe(batch.len() as f64);
                for msg in &batch {
                    manager.on_event(msg).await;
                }
                manager.flush(batch).await;
            }
            Some(msg) = states.recv() => {
                let batch = batch_of(msg, &mut states);
                manager.metrics.batch_messages.observe(batch.len() as f64);
                let caught_up = batch
                    .last()
                    .and_then(|m| m.info().ok())
                    .is_some_and(|i| i.pending == 0);
                for msg in &batch {
                    manager.on_state(msg).await;
                }
                if caught_up {
                    manager.resend_placements().await;
                }
                manager.flush(batch).await;
            }
            Some(msg) = heartbeats.next() => {
                // A large cluster heartbeats thousands of times a second: take every heartbeat
                // that waits, or they queue behind batches of submissions and nodes that are
                // alive look silent.
                manager.on_heartbeat(msg).await;
                for _ in 1..BATCH * 8 {
                    // Unconstrained: tokio's cooperative budget would end the loop early.
                    match tokio::task::unconstrained(heartbeats.next()).now_or_never() {
                        Some(Some(msg)) => manager.on_heartbeat(msg).await,
                        _ => break,
                    }
                }
                manager.flush(Vec::new()).await;
            }
            Some(msg) = api.next() => {
                manager.on_api(msg).await;
                manager.flush(Vec::new()).await;
            }
            _ = tick.tick() => {
                if manager.resend_due {
                    manager.resend_if_caught_up().await;
                }
                let now = Utc::now();
                manager.check_liveness(now).await;
                manager.restart_due(now).await;
                if !manager.drained.is_empty() {
                    manager.migrate_drained().await;
                }
                manager.place_pending().await;
                manager.flush(Vec::new()).await;
                let nodes = manager.cluster.node_counts(now, manager.cfg.node_ttl);
                manager.metrics.set_nodes(nodes);
            }
            else => break,
        }
        if manager.writer_gone {
            if shutdown.is_cancelled() {
                break;
            }
            return Err(Error::Nats(
                "the writer of the Task DB stopped unexpectedly".into(),
            ));
        }
    }
    // What was decided is written before the manager goes.
    drop(manager);
    let _ = writing.await;
    info!("manager stopped");
    Ok(())
}

fn consumer_config(name: &str, subject: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: subject.to_string(),
        // Each message is acknowledged once the Task DB records its outcome. (Acknowledging
        // a batch with one cumulative ack, `AckPolicy::All`, was measured: it made latency at
        // 1,000 tasks/s ten times worse on nats-server 2.15; see docs/BENCHMARKS.md.)
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        // A message it could not finish (NATS trouble, or a manager killed mid-way) comes
        // back after this long.
        // Handling one takes milliseconds: short, so a restarted manager is not kept waiting,
        // and later messages overtake the unfinished one only briefly.
        ack_wait: Duration::from_secs(10),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// The messages of a durable consumer on `stream`, filtered to `subject`; they keep coming
/// across NATS restarts.
async fn durable(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    subject: &str,
    shutdown: &CancellationToken,
) -> Result<mpsc::Receiver<jetstream::Message>, Error> {
    let err = |e: &dyn std::fmt::Display| Error::Nats(format!("consumer {name} on {stream}: {e}"));
    let stream = js.get_stream(stream).await.map_err(|e| err(&e))?;
    cube_bus::durable_messages(
        stream,
        consumer_config(name, subject),
        1024,
        shutdown.child_token(),
    )
    .await
    .map_err(|e| err(&e))
}

impl Manager {
    /// Rebuilds the cluster picture from the Task DB and node list, and re-sends every
    /// placement the manager may have recorded without publishing (a crash in between).
    async fn restore(&mut self) -> Result<(), Error> {
        for (key, value) in topology::load_all(&self.topo.tasks).await? {
            match wire::decode::<Task>(&value, usize::MAX) {
                Ok(task) => self.cluster.put_task(task),
                Err(e) => warn!(key, error = %e, "skipping unreadable task record"),
            }
        }
        for (key, _) in topology::load_all(&self.topo.admin).await? {
            if let Some(name) = key.strip_prefix("drain.") {
                self.drained.insert(name.to_string());
            }
        }
        for (key, value) in topology::load_all(&self.topo.nodes).await? {
            match wire::decode::<Node>(&value, MAX_MESSAGE_BYTES) {
                Ok(mut node) => {
                    if self.drained.contains(&node.name) {
                        node.state = cube_shared::NodeState::Draining;
                    }
                    self.cluster.put_node(node, self.cfg.node_ttl);
                }
                Err(e) => warn!(key, error = %e, "skipping unreadable node record"),
            }
        }
        self.resend_due = self.cluster.tasks().any(|t| t.state == State::Scheduled);
        Ok(())
    }

    /// Sends the recorded placements again if no state report is waiting to be applied.
    async fn resend_if_caught_up(&mut self) {
        let info = async {
            let stream = self.topo.js.get_stream(STATE_STREAM).await.ok()?;
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(MANAGER_STATE_CONSUMER).await.ok()?;
            consumer.info().await.ok().cloned()
        }
        .await;
        if info.is_some_and(|i| i.num_pending == 0 && i.num_ack_pending == 0) {
            self.resend_placements().await;
        }
    }

    /// Re-publishes the work of every task still `scheduled` after a restart: the manager may
    /// have died between recording a placement and publishing it. The message id is the
    /// placement's, so JetStream drops the copy of one that did go out, and a worker that
    /// already handled it recognises it.
    async fn resend_placements(&mut self) {
        if !self.resend_due {
            return;
        }
        self.resend_due = false;
        let scheduled: Vec<Task> = self
            .cluster
            .tasks()
            .filter(|t| t.state == State::Scheduled)
            .cloned()
            .collect();
        info!(
            count = scheduled.len(),
            "re-sending placements recorded before the restart"
        );
        for task in scheduled {
            self.dispatch_placement(&task);
        }
    }

    async fn on_event(&mut self, msg: &jetstream::Message) {
        match wire::decode_event(&msg.payload) {
            Err(e) => {
                let reason = e.to_string();
                self.reject(
                    RejectKind::InvalidEvent,
                    &msg.payload,
                    msg.subject.as_str(),
                    reason.clone(),
                )
                .await;
                self.record_refused(&msg.payload, cap(reason));
            }
            Ok(event) => {
                let span = info_span!("event", event.id = %event.id, task.id = %event.task.id);
                if event.is_stop() {
                    self.stop(event).instrument(span).await
                } else {
                    self.submit(event).instrument(span).await
                }
            }
        }
    }

    async fn submit(&mut self, event: TaskEvent) {
        let mut task = event.task.clone();
        task.normalise();
        if let Some(existing) = self.cluster.task(&task.id) {
            if existing.same_spec(&task) {
                // A redelivery or a repeated submission: make sure it progresses, nothing more.
                debug!("task already known");
                return self.ensure_progress(task.id).await;
            }
            let reason = format!(
                "task {} already exists with a different specification; use a new id",
                task.id
            );
            self.reject(RejectKind::Conflict, &encode(&event), EVENTS, reason)
                .await;
            return;
        }
        task.reset_status();
        task.submitted_at = Some(Utc::now());
        self.record_event(&event);
        self.journal(
            JournalEntry::new(
                "submitted",
                format!("{} ({})", task.display_name(), task.image),
            )
            .task(task.id)
            .event(event.id),
        )
        .await;
        let id = task.id;
        self.save(task);
        self.awaiting_placement.insert(id, self.batch_received);
        self.try_place(id).await;
    }

    async fn stop(&mut self, event: TaskEvent) {
        let Some(task) = self.cluster.task(&event.task.id).cloned() else {
            let reason = format!("no task {} to stop", event.task.id);
            self.reject(RejectKind::UnknownTask, &encode(&event), EVENTS, reason)
                .await;
            return;
        };
        self.record_event(&event);
        if !task.stop_requested {
            let mut t = task.clone();
            t.stop_requested = true;
            t.next_attempt_at = None;
            self.save(t);
        }
        match (task.state, &task.worker) {
            (State::Scheduled | State::Running, Some(worker)) => {
                // The worker stops exactly the current placement.
                let mut event = event.clone();
                event.task.generation = task.generation;
                self.publish_work(pending_for(worker), &event);
                self.journal(
                    JournalEntry::new("stop-requested", format!("asked {worker} to stop it"))
                        .task(task.id)
                        .event(event.id)
                        .worker(worker),
                )
                .await;
            }
            (State::Pending, _) => {
                let mut task = self.cluster.task(&task.id).cloned().unwrap_or(task);
                task.state = State::Completed;
                task.finish_time = Some(Utc::now());
                task.error = None;
                self.journal(
                    JournalEntry::new("completed", "stopped before it was placed")
                        .task(task.id)
                        .event(event.id),
                )
                .await;
                self.save(task);
            }
            (state, _) => debug!(%state, "stop requested for a task that is not running"),
        }
    }

    /// A known task that may have stalled: pending tasks get another placement attempt and
    /// scheduled ones are handed to their worker again (idempotently).
    async fn ensure_progress(&mut self, id: Uuid) {
        let Some(task) = self.cluster.task(&id).cloned() else {
            return;
        };
        match task.state {
            State::Pending => self.try_place(id).await,
            State::Scheduled => self.dispatch_placement(&task),
            _ => {}
        }
    }

    /// Asks the scheduler for a node; records and publishes the placement, or records why
    /// the task must wait.
    async fn try_place(&mut self, id: Uuid) {
        let Some(mut task) = self.cluster.task(&id).cloned() else {
            return;
        };
        if task.state != State::Pending {
            return;
        }
        match self.choose(&task, None) {
            Ok(worker) => {
                task.error = None;
                self.assign(task, worker.clone(), PlacementReason::New);
                let entry = match worker {
                    Some(w) => JournalEntry::new(
                        "scheduled",
                        format!("placed on {w} by {}", self.scheduler.name()),
                    )
                    .worker(w),
                    None => JournalEntry::new(
                        "scheduled",
                        "queued on tasks.pending for the first worker with room",
                    ),
                };
                self.journal(entry.task(id)).await;
            }
            Err(Unschedulable(reason)) => {
                if task.error.as_deref() != Some(reason.as_str()) {
                    self.journal(JournalEntry::new("unschedulable", reason.clone()).task(id))
                        .await;
                    task.error = Some(reason);
                    self.save(task);
                }
            }
        }
    }

    /// Tries every waiting task again, oldest first.
    pub(crate) async fn place_pending(&mut self) {
        if !self.cluster.has_pending() {
            return;
        }
        for id in self.cluster.pending() {
            self.try_place(id).await;
        }
    }

    /// Publishes a new placement of `task` (counted as `reason`) with the batch.
    pub(crate) fn publish_placement(&mut self, task: &Task, reason: PlacementReason) {
        self.placements.inc(reason);
        if let Some(received) = self.awaiting_placement.remove(&task.id) {
            self.outbox.placed.push(received);
        }
        self.dispatch_placement(task);
    }

    /// Publishes a recorded placement: to its worker, or to the shared queue.
    pub(crate) fn dispatch_placement(&mut self, task: &Task) {
        let subject = match &task.worker {
            Some(worker) => pending_for(worker),
            None => PENDING.to_string(),
        };
        self.publish_work(subject, &TaskEvent::placement(task));
    }

    /// Queues a TaskEvent for the work queue, with `Nats-Msg-Id` = the event id. It is
    /// published once the records of the same batch are stored (see [`Manager::flush`]).
    pub(crate) fn publish_work(&mut self, subject: String, event: &TaskEvent) {
        self.outbox.work.push(Outgoing {
            subject,
            payload: encode(event),
            msg_id: Some(event.id.to_string()),
        });
    }

    async fn on_state(&mut self, msg: &jetstream::Message) {
        match wire::decode::<StateReport>(&msg.payload, MAX_MESSAGE_BYTES) {
            Err(e) => {
                self.reject(
                    RejectKind::InvalidReport,
                    &msg.payload,
                    msg.subject.as_str(),
                    format!("state report: {e}"),
                )
                .await;
            }
            Ok(report)
                if msg.subject.as_str() != subjects::state_for(report.task_id, &report.worker) =>
            {
                let reason = format!(
                    "state report for task {} by {} sent on {}",
                    report.task_id, report.worker, msg.subject
                );
                self.reject(
                    RejectKind::WrongSubject,
                    &msg.payload,
                    msg.subject.as_str(),
                    reason,
                )
                .await;
            }
            Ok(report) => {
                let span = info_span!("report", task.id = %report.task_id, worker = %report.worker);
                self.apply_report(report).instrument(span).await
            }
        }
    }

    /// Applies a worker's report. Workers are the source of truth for what they run, but only
    /// the task's assigned worker may speak for it, and only legal moves are taken.
    async fn apply_report(&mut self, report: StateReport) {
        let Some(mut task) = self.cluster.task(&report.task_id).cloned() else {
            warn!("report for an unknown task");
            return;
        };
        let from_queue = task.worker.is_none()
            && task.state == State::Scheduled
            && report.generation == Some(task.generation);
        if from_queue {
            // A worker took the task from the shared queue: it is now the task's worker.
            task.worker = Some(report.worker.clone());
        } else if task.worker.as_deref() != Some(report.worker.as_str()) {
            warn!(assigned = ?task.worker, "report from a worker the task is not assigned to; ignored");
            return;
        }
        if report.generation.is_some_and(|g| g != task.generation) {
            info!(generation = ?report.generation, current = task.generation, "report about a superseded placement; ignored");
            return;
        }
        if !matches!(
            report.state,
            State::Running | State::Completed | State::Failed
        ) {
            warn!(state = %report.state, "workers report running, completed or failed only");
            return;
        }
        let mut report = report;
        if report.state == State::Completed
            && task.restart_policy == cube_shared::RestartPolicy::Always
            && !task.stop_requested
        {
            // A task that should always run has failed to keep running, whatever its code.
            report.state = State::Failed;
            report.error = report.error.or(Some(format!(
                "exited with code {} (restart policy always)",
                report.exit_code.unwrap_or(0)
            )));
        }
        if report.state == State::Failed && task.previous.is_some() {
            return self.move_failed(task, report).await;
        }
        if report.state != task.state && !task.state.can_transition_to(report.state) {
            debug!(from = %task.state, to = %report.state, "stale report ignored");
            return;
        }
        let before = task.clone();
        task.state = report.state;
        if report.state == State::Running {
            if let Some(h) = report.health {
                task.health = Some(h);
            }
        }
        task.container_id = report.container_id.or(task.container_id);
        task.start_time = report.start_time.or(task.start_time);
        task.finish_time = report.finish_time.or(task.finish_time);
        task.exit_code = report.exit_code.or(task.exit_code);
        if report.state != State::Running {
            task.error = report.error;
        }
        if task == before {
            return;
        }
        if task.state == State::Running && task.health != before.health {
            if let Some(h) = task.health {
                self.journal(
                    JournalEntry::new(h.as_str(), format!("health check on {}", report.worker))
                        .task(task.id)
                        .worker(&report.worker),
                )
                .await;
            }
        }
        let started = task.state == State::Running && before.state != State::Running;
        if started && task.previous.is_some() {
            self.replacement_running(&mut task).await;
        }
        if started && task.stop_requested {
            // Stopped while it waited in the shared queue: now we know where it runs.
            let mut stop = TaskEvent::stop(task.id);
            stop.task.generation = task.generation;
            self.publish_work(pending_for(&report.worker), &stop);
        }
        if !task.state.is_active() && before.state.is_active() {
            self.plan_restart(&mut task, Utc::now(), false);
        }
        if before.state != task.state {
            let mut message = match (&task.exit_code, &task.error) {
                (_, Some(err)) => err.clone(),
                (Some(code), None) if task.state != State::Running => format!("exit code {code}"),
                _ => format!("on {}", report.worker),
            };
            if let Some(at) = task.next_attempt_at {
                let wait = (at - Utc::now()).num_milliseconds().max(0) as f64 / 1000.0;
                message.push_str(&format!(
                    "; restart {} in {wait:.1}s",
                    task.restart_count + 1
                ));
            }
            self.journal(
                JournalEntry::new(task.state.as_str(), message)
                    .task(task.id)
                    .worker(&report.worker),
            )
            .await;
        }
        let freed = before.state.is_active() && !task.state.is_active();
        self.save(task);
        if freed {
            self.place_pending().await;
        }
    }

    async fn on_heartbeat(&mut self, msg: async_nats::Message) {
        let token = msg.subject.as_str().rsplit('.').next().unwrap_or_default();
        let mut node = match wire::decode::<Node>(&msg.payload, MAX_MESSAGE_BYTES) {
            Ok(node) if node.name == token => node,
            Ok(node) => {
                warn!(subject = %msg.subject, name = %node.name, "heartbeat names another worker; ignored");
                return;
            }
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "unreadable heartbeat; ignored");
                return;
            }
        };
        if cube_shared::validate::validate_worker_name(&node.name).is_err() {
            return;
        }
        // Liveness is judged by the manager's clock, never the worker's.
        node.last_heartbeat = Utc::now();
        let name = node.name.clone();
        let was = self.cluster.node(&name).map(|n| n.state);
        node.state = if node.leaving {
            NodeState::Down
        } else if self.drained.contains(&name) {
            NodeState::Draining
        } else {
            NodeState::Ready
        };
        let fresh = self.cluster.put_node(node.clone(), self.cfg.node_ttl);
        if node.leaving && was != Some(NodeState::Down) {
            self.journal(
                JournalEntry::new(
                    "node-left",
                    format!("{name} is shutting down: no new work for it"),
                )
                .worker(&name),
            )
            .await;
        } else if !node.leaving && (fresh || was == Some(NodeState::Down)) {
            let message = if was.is_some() {
                format!("{name} is back")
            } else {
                format!("{name} is ready")
            };
            self.journal(JournalEntry::new("node-joined", message).worker(&name))
                .await;
            self.place_pending().await;
        }
        if !node.running.is_empty() {
            self.fence(&node).await;
        }
    }

    /// The new placement of a moving task failed: the task stays where it was.
    async fn move_failed(&mut self, mut task: Task, report: StateReport) {
        let Some(old) = task.previous.take() else {
            return;
        };
        let reason = report.error.unwrap_or_else(|| "it failed".to_string());
        self.journal(
            JournalEntry::new(
                "move-failed",
                format!(
                    "the copy on {} failed ({reason}); staying on {}",
                    report.worker, old.worker
                ),
            )
            .task(task.id)
            .worker(&report.worker),
        )
        .await;
        task.worker = Some(old.worker);
        task.generation = old.generation;
        task.state = State::Running;
        self.save(task);
    }

    /// Records a task's new version: in the in-memory picture at once, in the Task DB with
    /// the batch (see [`Manager::flush`]).
    pub(crate) fn save(&mut self, task: Task) {
        let id = task.id;
        if task.state != State::Pending {
            // Placed (the time went with the placement) or ended before it was placed.
            self.awaiting_placement.remove(&id);
        }
        self.cluster.put_task(task);
        if self.outbox.dirty.insert(id) {
            self.outbox.tasks.push(id);
        }
    }

    fn record_event(&mut self, event: &TaskEvent) {
        self.outbox.records.push(Outgoing {
            subject: format!("$KV.{EVENT_DB}.{}", event.id),
            payload: encode(event),
            msg_id: None,
        });
    }

    /// Hands what the batch decided to the writer, which stores the records, then publishes
    /// the work, then acknowledges the `handled` messages. Waits only if the writer is
    /// far behind.
    pub(crate) async fn flush(&mut self, handled: Vec<jetstream::Message>) {
        let outbox = std::mem::take(&mut self.outbox);
        let mut records = outbox.records;
        records.extend(outbox.tasks.iter().filter_map(|id| {
            let task = self.cluster.task(id)?;
            Some(Outgoing {
                subject: format!("$KV.{TASK_DB}.{id}"),
                payload: encode(task),
                msg_id: None,
            })
        }));
        self.metrics.set_tasks(&self.cluster.count_by_state());
        let commit = Commit {
            records,
            work: outbox.work,
            placed: outbox.placed,
            handled,
        };
        if !commit.is_empty() && self.writer.send(commit).await.is_err() {
            // It stops only at shutdown (or if it panicked): the loop must not go on deciding
            // what nobody will write.
            self.writer_gone = true;
        }
    }

    /// Refuses a message: the reason goes to `tasks.rejected` and the journal.
    async fn reject(&self, kind: RejectKind, payload: &[u8], subject: &str, reason: String) {
        self.metrics.rejected(kind);
        let reason = cap(reason);
        let wire::Salvaged {
            event_id, task_id, ..
        } = wire::salvage(payload);
        warn!(?event_id, ?task_id, %subject, %reason, "rejected");
        let rejection = Rejection {
            event_id,
            task_id,
            subject: subject.to_string(),
            reason: reason.clone(),
            timestamp: Utc::now(),
        };
        self.publish_core(REJECTED.to_string(), encode(&rejection))
            .await;
        let mut entry = JournalEntry::new("rejected", reason);
        entry.event_id = event_id;
        entry.task_id = task_id;
        self.journal(entry).await;
    }

    /// A submission that was refused, but names a task id nobody uses yet, is recorded as a
    /// `failed` task whose error says why: `cube status <id>` then answers the sender.
    fn record_refused(&mut self, payload: &[u8], reason: String) {
        let salvaged = wire::salvage(payload);
        let Some(id) = salvaged.task_id else {
            return;
        };
        if salvaged.is_stop || self.cluster.task(&id).is_some() {
            return;
        }
        let mut task = Task::new(salvaged.image.unwrap_or_default());
        task.id = id;
        task.name = salvaged.name.unwrap_or_default();
        task.state = State::Failed;
        task.submitted_at = Some(Utc::now());
        task.finish_time = task.submitted_at;
        task.error = Some(format!("rejected: {reason}"));
        self.save(task);
    }

    /// Records a decision in the journal (`cube events`) and the log.
    pub(crate) async fn journal(&self, entry: JournalEntry) {
        info!(kind = %entry.kind, task.id = ?entry.task_id, worker = ?entry.worker, "{}", entry.message);
        self.publish_core(journal_for(&entry.kind), encode(&entry))
            .await;
    }

    /// Core NATS publish: it only queues the message in the client, so it never holds up the
    /// loop, and keeps the journal in order.
    async fn publish_core(&self, subject: String, payload: bytes::Bytes) {
        if let Err(e) = self.client.publish(subject, payload).await {
            debug!(error = %e, "publishing");
        }
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
