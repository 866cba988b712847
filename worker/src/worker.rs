//! The worker's loop: work from two durable consumers, exits from the runtime, heartbeats.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, kv, AckKind};
use chrono::Utc;
use cube_shared::subjects::*;
use cube_shared::wire::{self, encode};
use cube_shared::{Health, Node, NodeState, RunningTask, State, StateReport, Task, TaskEvent};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::logs;
use crate::runtime::{Exit, Runtime, RuntimeError};
use crate::stats::Stats;
use crate::{Config, Error};

/// How many times JetStream offers one piece of work before giving up on it. A start that
/// keeps failing for runtime reasons is reported `failed` on the last attempt, so the task
/// never silently stays `scheduled`.
const MAX_DELIVER: i64 = 10;
/// How long a worker may hold a message unacknowledged before JetStream offers it again. Long
/// operations (image pulls) send progress acks well inside this.
const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How many ended placements a worker remembers, to refuse a late duplicate of their start.
const FINISHED_MEMORY: usize = 100_000;
/// How long the rest of a container's output may go without a chunk stored before the
/// container is reported ended (and removed) regardless: `cube logs -f` ends once a task
/// ended, and should have seen everything by then. Under a loaded nats-server and Docker
/// engine (the full test suite on two cores) a drain was seen to pause for 5 s.
const LOGS_DRAIN: Duration = Duration::from_secs(15);

/// What the Task DB says about a start this worker was handed.
enum Verdict {
    /// Act on it.
    Current,
    /// The task was stopped while it waited to start: report it ended, start nothing.
    StoppedBeforeStart,
    /// Not current any more (why): drop it.
    Superseded(String),
}

/// A task this worker runs.
#[derive(Debug, Clone)]
struct Running {
    container_id: String,
    generation: u64,
    start_time: Option<chrono::DateTime<Utc>>,
    /// Stops the task's health checks, if it has any.
    checks: Option<CancellationToken>,
}

/// Placements that ended here (task id → generation), oldest forgotten first.
#[derive(Default)]
struct Finished {
    by_task: HashMap<Uuid, u64>,
    order: VecDeque<Uuid>,
}

impl Finished {
    fn insert(&mut self, id: Uuid, generation: u64) {
        if self.by_task.insert(id, generation).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > FINISHED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.by_task.remove(&old);
            }
        }
    }

    fn ended(&self, id: &Uuid, generation: u64) -> bool {
        self.by_task.get(id).is_some_and(|g| *g >= generation)
    }
}

struct Inner {
    cfg: Config,
    js: jetstream::Context,
    /// The Task DB, read to check that a piece of work is still current before acting on it.
    tasks: kv::Store,
    runtime: Arc<dyn Runtime>,
    shutdown: CancellationToken,
    /// Tasks this worker runs. A plain mutex, like the maps below: held for single map
    /// operations only, never across an await.
    running: Mutex<HashMap<Uuid, Running>>,
    finished: Mutex<Finished>,
    /// Resources of the tasks this worker runs or is starting: (cpu, memory) per task.
    claimed: Mutex<HashMap<Uuid, (f64, u64)>>,
    /// What the worker offers, from its last heartbeat: (cores, memory).
    capacity: Mutex<Option<(f64, u64)>>,
    /// Tasks stopped on request, so the container's death is not reported as a failure.
    stopped: Mutex<HashMap<Uuid, Instant>>,
    /// One lock per task: operations on the same task happen in the order they arrived.
    task_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    ops: Arc<Semaphore>,
    /// The publisher of each running container's output (task id → generation, follower).
    logs: Mutex<HashMap<Uuid, (u64, logs::Follower)>>,
    log_tracker: TaskTracker,
    /// Cancels the output publishers: after `leave`, so that the output of the containers a
    /// worker stops on its way out is published.
    logs_shutdown: CancellationToken,
}

/// Runs a worker until `shutdown` is cancelled. Containers are left running on exit, for the
/// next worker process of the same name to adopt.
pub async fn run(
    cfg: Config,
    client: async_nats::Client,
    runtime: Arc<dyn Runtime>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    cfg.validate()?;
    let js = jetstream::new(client.clone());
    let Some(work) = wait_for(&shutdown, WORK_STREAM, || js.get_stream(WORK_STREAM)).await else {
        return Ok(());
    };
    let Some(tasks) = wait_for(&shutdown, TASK_DB, || js.get_key_value(TASK_DB)).await else {
        return Ok(());
    };
    // The manager creates the buckets one after another: wait for each.
    let Some(nodes) = wait_for(&shutdown, NODE_DB, || js.get_key_value(NODE_DB)).await else {
        return Ok(());
    };

    let inner = Arc::new(Inner {
        ops: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
        cfg,
        js,
        tasks,
        runtime,
        shutdown: shutdown.clone(),
        running: Mutex::default(),
        finished: Mutex::default(),
        claimed: Mutex::default(),
        capacity: Mutex::default(),
        stopped: Mutex::default(),
        task_locks: Mutex::default(),
        logs: Mutex::default(),
        log_tracker: TaskTracker::new(),
        logs_shutdown: CancellationToken::new(),
    });
    // However `run` returns, the publishers end with it.
    let _logs_shutdown = inner.logs_shutdown.clone().drop_guard();
    // Exits are watched before the containers are listed, so none falls in between.
    let mut exits = inner.runtime.exits(&inner.cfg.name);
    if !inner.reconcile_on_start().await {
        return Ok(());
    }
    let name = &inner.cfg.name;
    let concurrency = inner.cfg.concurrency;
    let own = consume(
        &work,
        &worker_consumer(name),
        &pending_for(name),
        concurrency,
        &shutdown,
    )
    .await?;
    let shared = consume(&work, SHARED_WORK_CONSUMER, PENDING, concurrency, &shutdown).await?;
    let tracker = TaskTracker::new();
    // Heartbeats run on their own, so that a slow NATS never holds up work or exits.
    let beating = {
        let inner = inner.clone();
        let (client, nodes) = (client.clone(), nodes.clone());
        tokio::spawn(async move {
            let mut stats = inner.stats();
            let mut tick = tokio::time::interval(inner.cfg.heartbeat_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tick.tick() => inner.heartbeat(&client, &nodes, &mut stats, false).await,
                }
            }
        })
    };
    let (mut own, mut shared) = (own, shared);
    info!(worker = %inner.cfg.name, "worker ready");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = own.recv() => inner.dispatch(msg, &tracker).await,
            Some(msg) = shared.recv() => inner.dispatch(msg, &tracker).await,
            Some(exit) = exits.recv() => {
                let (guard, permit) = inner.reserve(exit.task_id).await;
                let inner = inner.clone();
                tracker.spawn(async move {
                    inner.on_exit(exit).await;
                    drop((guard, permit));
                });
            }
        }
    }
    // Stop taking work, let what is in flight finish, then say goodbye.
    drop((own, shared));
    let _ = beating.await;
    tracker.close();
    tracker.wait().await;
    inner.leave(&client, &nodes).await;
    // The output publishers end now; a worker adopting the containers resumes where they
    // stopped.
    inner.logs_shutdown.cancel();
    inner.log_tracker.close();
    inner.log_tracker.wait().await;
    info!(worker = %inner.cfg.name, "worker stopped");
    Ok(())
}

/// Runs `op` every `every` until it succeeds, or returns `None` on shutdown. The first
/// failure is logged as a warning, later ones only at debug level.
async fn retry<T, E: std::fmt::Display, F, Fut>(
    shutdown: &CancellationToken,
    every: Duration,
    what: &str,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut logged = false;
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) if !logged => {
                warn!(error = %e, "{what}; retrying");
                logged = true;
            }
            Err(e) => debug!(error = %e, "{what}; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The streams and buckets are the manager's to create; a worker started first waits.
async fn wait_for<T, E: std::fmt::Display, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    get: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let what = format!("waiting for the manager to create {what}");
    retry(shutdown, Duration::from_millis(250), &what, get).await
}

async fn consume(
    stream: &jetstream::stream::Stream,
    name: &str,
    subject: &str,
    concurrency: usize,
    shutdown: &CancellationToken,
) -> Result<tokio::sync::mpsc::Receiver<jetstream::Message>, Error> {
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: subject.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        max_ack_pending: (concurrency * 8).max(64) as i64,
        ..Default::default()
    };
    cube_bus::durable_messages(stream.clone(), config, concurrency, shutdown.child_token())
        .await
        .map_err(|e| Error::Nats(format!("consumer {name}: {e}")))
}

impl Inner {
    /// Takes one message off a consumer and hands it to a handler task. The task's lock is
    /// taken here, in arrival order, so a stop never overtakes the start before it.
    async fn dispatch(self: &Arc<Self>, msg: jetstream::Message, tracker: &TaskTracker) {
        let event = match wire::decode_placement(&msg.payload) {
            Ok(event) => event,
            Err(e) => {
                // Only the manager publishes here; a bad message is dropped, not retried.
                warn!(subject = %msg.subject, error = %e, "dropping unreadable work");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let (guard, permit) = self.reserve(event.task.id).await;
        let inner = self.clone();
        let span = info_span!("work", task.id = %event.task.id, worker = %self.cfg.name);
        tracker.spawn(
            async move {
                if event.is_stop() {
                    inner.stop(event, msg).await;
                } else {
                    inner.start(event, msg).await;
                }
                drop((guard, permit));
            }
            .instrument(span),
        );
    }

    async fn reserve(&self, task_id: Uuid) -> (OwnedMutexGuard<()>, OwnedSemaphorePermit) {
        let lock = self
            .task_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(task_id)
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        let permit = self
            .ops
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        (guard, permit)
    }

    /// Takes room for a task from the shared queue, if this worker has it (checked and taken
    /// in one step, so concurrent starts cannot overcommit).
    fn claim(&self, task: &Task) -> bool {
        let capacity = *self.capacity.lock().unwrap_or_else(|p| p.into_inner());
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cores, memory)) = capacity {
            let (cpu, mem) = claimed
                .iter()
                .filter(|(id, _)| **id != task.id)
                .fold((0.0, 0u64), |(c, m), (_, (tc, tm))| (c + tc, m + tm));
            if cpu + task.cpu > cores + 1e-9 || mem.saturating_add(task.memory) > memory {
                return false;
            }
        }
        claimed.insert(task.id, (task.cpu, task.memory));
        true
    }

    /// Records the resources of a task the manager placed here (it already checked room).
    fn claim_anyway(&self, task: &Task) {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.id, (task.cpu, task.memory));
    }

    fn release(&self, task_id: Uuid) {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_id);
    }

    /// Starts publishing the output of the task's container (once per placement).
    fn follow_logs(&self, task_id: Uuid, generation: u64) {
        if !self.runtime.has_output() {
            return;
        }
        let mut followers = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if followers
            .get(&task_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            return;
        }
        let follower = logs::follow(
            self.js.clone(),
            self.runtime.clone(),
            task_id,
            generation,
            &self.cfg.name,
            &self.logs_shutdown,
            &self.log_tracker,
        );
        if let Some((_, old)) = followers.insert(task_id, (generation, follower)) {
            old.cancel();
        }
    }

    /// Lets the output publisher of the task's ended container finish, for up to `within`.
    async fn drain_logs(&self, task_id: Uuid, within: Duration) {
        let follower = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_id);
        if let Some((_, follower)) = follower {
            follower.drain(within).await;
        }
    }

    fn forget(&self, task_id: Uuid) {
        self.release(task_id);
        if let Some((_, follower)) = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_id)
        {
            follower.cancel();
        }
        let removed = {
            let mut running = self.lock_running();
            let removed = running.remove(&task_id);
            self.cfg.metrics.tasks_running.set(running.len() as i64);
            removed
        };
        if let Some(checks) = removed.and_then(|r| r.checks) {
            checks.cancel();
        }
        self.task_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_id);
    }

    async fn start(self: &Arc<Self>, event: TaskEvent, msg: jetstream::Message) {
        let task = event.task;
        if self.lock_running().contains_key(&task.id) {
            debug!("already running; duplicate start ignored");
            let _ = msg.ack().await;
            return;
        }
        let from_queue = msg.subject.as_str() == PENDING;
        if from_queue && !self.claim(&task) {
            if delivered(&msg) < MAX_DELIVER {
                debug!("no room for a task from the shared queue; leaving it to another worker");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
            let mut r = StateReport::new(task.id, &self.cfg.name, State::Failed);
            r.generation = Some(task.generation);
            r.finish_time = Some(Utc::now());
            r.error = Some(format!(
                "no worker had room for it in {MAX_DELIVER} offers from the shared queue"
            ));
            if self.report(r).await {
                let _ = msg.ack().await;
            }
            return;
        }
        if !from_queue {
            self.claim_anyway(&task);
        }
        match self.verdict(&task).await {
            Ok(Verdict::Current) => {}
            Ok(Verdict::StoppedBeforeStart) => {
                self.release(task.id);
                info!("stopped before it started");
                let mut r = StateReport::new(task.id, &self.cfg.name, State::Completed);
                r.generation = Some(task.generation);
                r.finish_time = Some(Utc::now());
                if self.report(r).await {
                    let _ = msg.ack().await;
                }
                return;
            }
            Ok(Verdict::Superseded(reason)) => {
                self.release(task.id);
                info!(generation = task.generation, %reason, "skipping work that is no longer current");
                let _ = msg.ack().await;
                return;
            }
            Err(e) => {
                self.release(task.id);
                warn!(error = %e, "cannot read the Task DB; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
                return;
            }
        }
        if let Some(reason) = self.cfg.policy.refuses(&task) {
            self.release(task.id);
            warn!(%reason, "refused by the worker's policy");
            self.cfg.metrics.containers_failed.inc();
            self.lock_finished().insert(task.id, task.generation);
            let mut r = StateReport::new(task.id, &self.cfg.name, State::Failed);
            r.generation = Some(task.generation);
            r.finish_time = Some(Utc::now());
            r.error = Some(format!("refused by worker {}: {reason}", self.cfg.name));
            if self.report(r).await {
                let _ = msg.ack().await;
            }
            return;
        }
        let progress = keep_alive(&msg);
        let result = self.runtime.start(&task, &self.cfg.name).await;
        progress.cancel();
        let mut report = match result {
            Ok(started) => {
                let checks = self.watch_health(&task);
                self.track(
                    task.id,
                    Running {
                        container_id: started.container_id.clone(),
                        generation: task.generation,
                        start_time: Some(started.start_time),
                        checks,
                    },
                );
                self.cfg.metrics.containers_started.inc();
                self.follow_logs(task.id, task.generation);
                info!(container = %started.container_id, "started");
                let mut r = StateReport::new(task.id, &self.cfg.name, State::Running);
                r.health = task.health_check.as_ref().map(|_| Health::Starting);
                r.container_id = Some(started.container_id);
                r.start_time = Some(started.start_time);
                r
            }
            Err(RuntimeError::Unavailable(reason)) if delivered(&msg) < MAX_DELIVER => {
                self.release(task.id);
                warn!(%reason, "runtime unavailable; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
                return;
            }
            Err(e) => {
                self.release(task.id);
                self.cfg.metrics.containers_failed.inc();
                warn!(error = %e, "start failed");
                self.lock_finished().insert(task.id, task.generation);
                let mut r = StateReport::new(task.id, &self.cfg.name, State::Failed);
                r.error = Some(e.to_string());
                r.finish_time = Some(Utc::now());
                r
            }
        };
        report.generation = Some(task.generation);
        // Acknowledge only once the outcome is durable in JetStream.
        if self.report(report).await {
            let _ = msg.ack().await;
        }
    }

    /// Whether to act on a start: not if the placement ended here already, or the Task DB
    /// has moved on (a newer placement, another worker, a final state, a stop). The manager
    /// records a placement before it publishes it, so the Task DB is never behind.
    async fn verdict(&self, task: &Task) -> Result<Verdict, Error> {
        let superseded = |why: String| Ok(Verdict::Superseded(why));
        if self.lock_finished().ended(&task.id, task.generation) {
            return superseded("this placement already ran here and ended".to_string());
        }
        let entry =
            self.tasks.get(task.id.to_string()).await.map_err(|e| {
                Error::Nats(format!("reading task {} from {TASK_DB}: {e}", task.id))
            })?;
        let Some(bytes) = entry else {
            return superseded("the task is not in the Task DB".to_string());
        };
        let current: Task = match wire::decode(&bytes, usize::MAX) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "unreadable Task DB record; acting on the work as sent");
                return Ok(Verdict::Current);
            }
        };
        if current.generation != task.generation {
            return superseded(format!(
                "placement {} was superseded by placement {}",
                task.generation, current.generation
            ));
        }
        if let Some(other) = current.worker.as_deref().filter(|w| *w != self.cfg.name) {
            return superseded(format!("the task is assigned to {other}"));
        }
        if current.state.is_final() {
            return superseded(format!("the task has ended ({})", current.state));
        }
        if current.stop_requested && current.state == State::Scheduled {
            return Ok(Verdict::StoppedBeforeStart);
        }
        Ok(Verdict::Current)
    }

    async fn stop(&self, event: TaskEvent, msg: jetstream::Message) {
        let id = event.task.id;
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        // The placement to stop: the one named in the request, else the one running here.
        let tracked = self.lock_running().get(&id).cloned();
        let running = tracked.as_ref().map(|r| r.generation);
        let generation = Some(event.task.generation).filter(|g| *g > 0).or(running);
        let Some(g) = generation else {
            debug!("nothing of this task runs here");
            let _ = msg.ack().await;
            return;
        };
        let progress = keep_alive(&msg);
        let result = self.runtime.stop(id, g, self.cfg.stop_grace).await;
        progress.cancel();
        match result {
            Ok(code) => {
                info!(exit_code = ?code, generation = g, "stopped on request");
                if running == Some(g) {
                    // What it wrote while stopping (a TERM handler) is published before the
                    // container goes.
                    self.drain_logs(id, LOGS_DRAIN).await;
                }
                self.remove_container(id, g).await;
                self.lock_finished().insert(id, g);
                if running == Some(g) {
                    self.forget(id);
                }
                let mut r = StateReport::new(id, &self.cfg.name, State::Completed);
                r.generation = generation;
                r.exit_code = code;
                r.finish_time = Some(Utc::now());
                if let Some(t) = tracked.filter(|t| t.generation == g) {
                    r.container_id = Some(t.container_id);
                    r.start_time = t.start_time;
                }
                if self.report(r).await {
                    let _ = msg.ack().await;
                }
            }
            Err(e) => {
                warn!(error = %e, "stop failed; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }

    /// A container ended by itself: report it and clean up.
    async fn on_exit(&self, exit: Exit) {
        let span = info_span!("exit", task.id = %exit.task_id, worker = %self.cfg.name);
        async {
            let requested = {
                let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
                stopped.retain(|_, at| at.elapsed() < Duration::from_secs(600));
                stopped.remove(&exit.task_id).is_some()
            };
            let tracked = self.lock_running().get(&exit.task_id).cloned();
            let Some(running) = tracked.filter(|r| r.generation == exit.generation) else {
                // Already handled (a replayed Docker event), or not a container this worker
                // runs: the start-up reconciliation deals with those.
                debug!("exit of a container this worker does not track; ignored");
                return;
            };
            if requested {
                return;
            }
            info!(exit_code = exit.exit_code, container = %running.container_id, "container exited");
            let run = (Some(running.container_id.clone()), running.start_time);
            self.finish(exit, running.generation, run).await;
        }
        .instrument(span)
        .await
    }

    /// Reports how a container ended, forgets it and removes it. The report carries the
    /// container and its start time too, so that it tells the whole story even if the
    /// `running` report before it is applied late (a redelivery after a manager restart).
    async fn finish(
        &self,
        exit: Exit,
        generation: u64,
        (container_id, start_time): (Option<String>, Option<chrono::DateTime<Utc>>),
    ) {
        let task_id = exit.task_id;
        self.drain_logs(task_id, LOGS_DRAIN).await;
        self.lock_finished().insert(task_id, generation);
        self.forget(task_id);
        let mut r = exit_report(exit, &self.cfg.name);
        r.generation = Some(generation);
        r.container_id = container_id;
        r.start_time = start_time;
        self.report(r).await;
        self.remove_container(task_id, generation).await;
    }

    /// Removes the container of a placement that has ended or was stopped.
    async fn remove_container(&self, task_id: Uuid, generation: u64) {
        if let Err(e) = self.runtime.remove(task_id, generation).await {
            warn!(error = %e, "removing the ended container");
        }
    }

    /// What a worker does before it takes new work: compares the containers labelled with its
    /// name with what the Task DB says it runs. It adopts what should run, reports what ended
    /// while it was away (with the real exit code), and removes what should not exist.
    /// Returns false if it was shut down meanwhile.
    async fn reconcile_on_start(self: &Arc<Self>) -> bool {
        let name = self.cfg.name.clone();
        let every = Duration::from_secs(1);
        let list = || self.runtime.list(&name);
        let Some(observed) = retry(&self.shutdown, every, "listing containers", list).await else {
            return false;
        };
        let load = || cube_bus::load_all(&self.tasks);
        let Some(records) = retry(&self.shutdown, every, "reading the Task DB", load).await else {
            return false;
        };
        let mut owned: HashMap<Uuid, Task> = records
            .into_iter()
            .filter_map(|(_, bytes)| wire::decode::<Task>(&bytes, usize::MAX).ok())
            .filter(|t| t.worker.as_deref() == Some(name.as_str()) && t.state.is_active())
            .map(|t| (t.id, t))
            .collect();
        let (mut adopted, mut ended, mut removed) = (0, 0, 0);
        for o in observed {
            let span = info_span!("reconcile", task.id = %o.task_id, worker = %name);
            let current = owned
                .remove(&o.task_id)
                .filter(|t| o.generation == t.generation);
            match (current, o.exit) {
                (Some(task), None) => {
                    adopted += 1;
                    self.claim_anyway(&task);
                    let checks = self.watch_health(&task);
                    self.track(
                        task.id,
                        Running {
                            container_id: o.container_id.clone(),
                            generation: task.generation,
                            start_time: o.start_time,
                            checks,
                        },
                    );
                    self.follow_logs(task.id, task.generation);
                    if task.state != State::Running
                        || task.container_id.as_deref() != Some(&o.container_id)
                    {
                        let mut r = StateReport::new(task.id, &name, State::Running);
                        r.generation = Some(task.generation);
                        r.container_id = Some(o.container_id);
                        r.start_time = o.start_time;
                        self.report(r).instrument(span.clone()).await;
                    }
                    span.in_scope(|| info!("adopted the running container"));
                }
                (Some(task), Some(exit)) => {
                    ended += 1;
                    span.in_scope(|| {
                        info!(
                            exit_code = exit.exit_code,
                            "the container ended while the worker was away"
                        )
                    });
                    // Its output since the last chunk published before the worker went
                    // away: the follower resumes there, and `finish` lets it publish the rest
                    // before the container is removed.
                    self.follow_logs(task.id, task.generation);
                    let run = (Some(o.container_id.clone()), o.start_time);
                    self.finish(exit, task.generation, run)
                        .instrument(span)
                        .await;
                }
                (None, _) => {
                    removed += 1;
                    span.in_scope(|| info!("removing a container this worker no longer owns"));
                    match self
                        .runtime
                        .stop(o.task_id, o.generation, self.cfg.stop_grace)
                        .await
                    {
                        Ok(_) => {
                            self.remove_container(o.task_id, o.generation)
                                .instrument(span)
                                .await
                        }
                        Err(e) => span.in_scope(|| warn!(error = %e, "removing a stale container")),
                    }
                }
            }
        }
        // Running by the Task DB, but no container: it vanished while the worker was away.
        let mut vanished = 0;
        for task in owned.into_values().filter(|t| t.state == State::Running) {
            vanished += 1;
            self.lock_finished().insert(task.id, task.generation);
            let mut r = StateReport::new(task.id, &name, State::Failed);
            r.generation = Some(task.generation);
            r.finish_time = Some(Utc::now());
            r.error = Some("the container disappeared while its worker was away".to_string());
            self.report(r).await;
        }
        info!(worker = %name, adopted, ended, removed, vanished, "reconciled with the Task DB");
        true
    }

    /// Runs the task's health check in the background, if it has one; cancel the token to stop.
    fn watch_health(self: &Arc<Self>, task: &Task) -> Option<CancellationToken> {
        task.health_check.as_ref()?;
        let token = self.shutdown.child_token();
        let (inner, task, t) = (self.clone(), task.clone(), token.clone());
        let span = info_span!("health", task.id = %task.id, worker = %self.cfg.name);
        tokio::spawn(async move { inner.check_health(task, t).await }.instrument(span));
        Some(token)
    }

    /// Probes every interval. The first pass makes the task healthy; a task that has not
    /// passed within its grace period, or that fails `retries` times in a row after passing,
    /// is stopped and reported failed, so its restart policy takes over.
    async fn check_health(&self, task: Task, token: CancellationToken) {
        let interval = task.health_interval.unwrap_or(Duration::from_secs(5));
        let timeout = task.health_timeout.unwrap_or(Duration::from_secs(2));
        let retries = task.health_retries.unwrap_or(3).max(1);
        let grace = task.health_grace.unwrap_or(Duration::from_secs(30));
        let started = Instant::now();
        let (mut healthy, mut failures) = (false, 0);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let outcome = tokio::select! {
                _ = token.cancelled() => return,
                outcome = crate::probe::probe(&*self.runtime, &task, timeout) => outcome,
            };
            if outcome.is_err() {
                self.cfg.metrics.health_check_failures.inc();
            }
            match outcome {
                Ok(()) => {
                    failures = 0;
                    if !healthy {
                        healthy = true;
                        info!("healthy");
                        self.report_health(&task, Health::Healthy).await;
                    }
                }
                Err(reason) if healthy => {
                    failures += 1;
                    debug!(failures, %reason, "health check failed");
                    if failures >= retries {
                        warn!(%reason, "unhealthy");
                        self.report_health(&task, Health::Unhealthy).await;
                        let why = format!(
                            "unhealthy: {failures} checks failed in a row, the last: {reason}"
                        );
                        self.end_unhealthy(&task, why).await;
                        return;
                    }
                }
                Err(reason) if started.elapsed() >= grace => {
                    warn!(%reason, "never became healthy");
                    let why = format!("did not become healthy within {grace:?}: {reason}");
                    self.end_unhealthy(&task, why).await;
                    return;
                }
                Err(reason) => debug!(%reason, "not healthy yet"),
            }
        }
    }

    async fn report_health(&self, task: &Task, health: Health) {
        let mut r = StateReport::new(task.id, &self.cfg.name, State::Running);
        r.generation = Some(task.generation);
        r.health = Some(health);
        self.report(r).await;
    }

    /// Stops an unhealthy task's container and reports it failed with `reason`.
    async fn end_unhealthy(&self, task: &Task, reason: String) {
        let (guard, permit) = self.reserve(task.id).await;
        let current = self.lock_running().get(&task.id).map(|r| r.generation);
        if current == Some(task.generation) {
            self.stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task.id, Instant::now());
            let code = match self
                .runtime
                .stop(task.id, task.generation, self.cfg.stop_grace)
                .await
            {
                Ok(code) => code,
                Err(e) => {
                    warn!(error = %e, "stopping an unhealthy container");
                    None
                }
            };
            self.drain_logs(task.id, LOGS_DRAIN).await;
            self.remove_container(task.id, task.generation).await;
            self.lock_finished().insert(task.id, task.generation);
            self.forget(task.id);
            let mut r = StateReport::new(task.id, &self.cfg.name, State::Failed);
            r.generation = Some(task.generation);
            r.exit_code = code;
            r.finish_time = Some(Utc::now());
            r.error = Some(reason);
            self.report(r).await;
        }
        drop((guard, permit));
    }

    /// The last word of a worker that shuts down: with `stop_tasks_on_exit` its containers are
    /// stopped (and reported, so their restart policies place them elsewhere); otherwise they
    /// are left for the next worker of this name to adopt. A final heartbeat marked `leaving`
    /// tells the manager to send no more work.
    async fn leave(&self, client: &async_nats::Client, nodes: &kv::Store) {
        self.heartbeat(client, nodes, &mut self.stats(), true).await;
        if self.cfg.stop_tasks_on_exit {
            let running: Vec<(Uuid, u64)> = self
                .lock_running()
                .iter()
                .map(|(id, r)| (*id, r.generation))
                .collect();
            for (id, generation) in running {
                let code = self
                    .runtime
                    .stop(id, generation, self.cfg.stop_grace)
                    .await
                    .ok()
                    .flatten();
                self.drain_logs(id, LOGS_DRAIN).await;
                self.remove_container(id, generation).await;
                self.forget(id);
                let mut r = StateReport::new(id, &self.cfg.name, State::Failed);
                r.generation = Some(generation);
                r.exit_code = code;
                r.finish_time = Some(Utc::now());
                r.error = Some(format!("stopped: worker {} shut down", self.cfg.name));
                self.report(r).await;
            }
        }
        if let Err(e) = client.flush().await {
            debug!(error = %e, "flushing the last messages");
        }
    }

    /// Publishes a state report into JetStream, retrying until it is stored or the worker
    /// shuts down. Returns whether it was stored.
    async fn report(&self, report: StateReport) -> bool {
        let subject = state_for(report.task_id, &report.worker);
        // The same id on every retry, so a retry after a lost ack is not stored twice.
        let msg_id = Uuid::new_v4().to_string();
        cube_bus::publish_durably(&self.js, subject, encode(&report), &msg_id, &self.shutdown)
            .await
            .is_ok()
    }

    fn stats(&self) -> Stats {
        if self.cfg.host_stats {
            Stats::new()
        } else {
            Stats::none()
        }
    }

    /// Records a task's running container (and updates `cube_worker_tasks_running`).
    fn track(&self, id: Uuid, running: Running) {
        let mut map = self.lock_running();
        map.insert(id, running);
        self.cfg.metrics.tasks_running.set(map.len() as i64);
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_finished(&self) -> std::sync::MutexGuard<'_, Finished> {
        self.finished.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn heartbeat(
        &self,
        client: &async_nats::Client,
        nodes: &jetstream::kv::Store,
        stats: &mut Stats,
        leaving: bool,
    ) {
        let s = stats.sample();
        let offered = (
            self.cfg.cpu.unwrap_or(s.cores),
            self.cfg.memory.unwrap_or(s.memory),
        );
        *self.capacity.lock().unwrap_or_else(|p| p.into_inner()) = Some(offered);
        let running: Vec<RunningTask> = self
            .lock_running()
            .iter()
            .map(|(id, r)| RunningTask {
                id: *id,
                generation: r.generation,
            })
            .collect();
        let node = Node {
            name: self.cfg.name.clone(),
            address: hostname(),
            cores: self.cfg.cpu.unwrap_or(s.cores),
            cpu_usage: s.cpu_usage,
            memory: self.cfg.memory.unwrap_or(s.memory),
            memory_used: s.memory_used,
            memory_allocated: 0,
            disk: s.disk,
            disk_used: s.disk_used,
            disk_allocated: 0,
            cpu_allocated: 0.0,
            task_count: running.len() as u32,
            labels: self.cfg.labels.clone(),
            last_heartbeat: Utc::now(),
            version: cube_shared::VERSION.to_string(),
            state: NodeState::Ready,
            running,
            leaving,
        };
        let payload = encode(&node);
        match client
            .publish(heartbeat_for(&self.cfg.name), payload.clone())
            .await
        {
            Ok(()) => self.cfg.metrics.heartbeats.inc(),
            Err(e) => warn!(error = %e, "publishing a heartbeat"),
        }
        if let Err(e) = nodes.put(&self.cfg.name, payload).await {
            debug!(error = %e, "recording the node");
        }
    }
}

/// The report of a container that ended by itself.
fn exit_report(exit: Exit, worker: &str) -> StateReport {
    let state = if exit.exit_code == 0 {
        State::Completed
    } else {
        State::Failed
    };
    let mut r = StateReport::new(exit.task_id, worker, state);
    r.exit_code = Some(exit.exit_code);
    r.finish_time = Some(exit.finish_time);
    r.error = match (state, exit.error) {
        (_, Some(e)) => Some(e),
        (State::Failed, None) => Some(format!("exited with code {}", exit.exit_code)),
        _ => None,
    };
    r
}

fn delivered(msg: &jetstream::Message) -> i64 {
    msg.info().map_or(1, |i| i.delivered)
}

/// Tells JetStream "still working on it" until the returned token is cancelled.
fn keep_alive(msg: &jetstream::Message) -> CancellationToken {
    let token = CancellationToken::new();
    let (msg, done) = (msg.clone(), token.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            }
        }
    });
    token
}

fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_default()
}
