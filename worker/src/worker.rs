//! The worker's loop: work from two durable consumers, exits from the runtime, heartbeats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use chrono::Utc;
use cube_shared::subjects::*;
use cube_shared::validate::validate_worker_name;
use cube_shared::wire::{self, encode};
use cube_shared::{Node, NodeState, State, StateReport, TaskEvent};
use futures::StreamExt;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::runtime::{Exit, Runtime, RuntimeError};
use crate::stats::Stats;
use crate::{Config, Error};

/// How many times JetStream offers one piece of work before giving up on it. A start that
/// keeps failing for runtime reasons is reported `failed` on the last attempt, so the task
/// never silently stays `scheduled`.
const MAX_DELIVER: i64 = 10;
/// How long a worker may hold a message unacknowledged before JetStream offers it again. Long
/// operations (image pulls) send progress acks well inside this.
const ACK_WAIT: Duration = Duration::from_secs(60);
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

struct Inner {
    cfg: Config,
    js: jetstream::Context,
    runtime: Arc<dyn Runtime>,
    shutdown: CancellationToken,
    /// Tasks this worker runs: id → container id. A plain mutex: held for single map
    /// operations only, never across an await.
    running: Mutex<HashMap<Uuid, String>>,
    /// Tasks stopped on request, so the container's death is not reported as a failure.
    stopped: Mutex<HashMap<Uuid, Instant>>,
    /// One lock per task: operations on the same task happen in the order they arrived.
    task_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    ops: Arc<Semaphore>,
}

/// Runs a worker until `shutdown` is cancelled. Containers are left running on exit, for the
/// next worker process of the same name to adopt.
pub async fn run(
    cfg: Config,
    client: async_nats::Client,
    runtime: Arc<dyn Runtime>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    validate_worker_name(&cfg.name).map_err(|e| Error::Config(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let Some(work) = wait_for_stream(&js, &shutdown).await else {
        return Ok(());
    };
    let own = consume(
        &work,
        &worker_consumer(&cfg.name),
        &pending_for(&cfg.name),
        cfg.concurrency,
    )
    .await?;
    let shared = consume(&work, SHARED_WORK_CONSUMER, PENDING, cfg.concurrency).await?;
    let nodes = js
        .get_key_value(NODE_DB)
        .await
        .map_err(|e| Error::Nats(format!("bucket {NODE_DB}: {e}")))?;

    let inner = Arc::new(Inner {
        ops: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
        cfg,
        js,
        runtime,
        shutdown: shutdown.clone(),
        running: Mutex::default(),
        stopped: Mutex::default(),
        task_locks: Mutex::default(),
    });
    let tracker = TaskTracker::new();
    let mut exits = inner.runtime.exits(&inner.cfg.name);
    let mut stats = Stats::new();
    let mut heartbeat = tokio::time::interval(inner.cfg.heartbeat_interval);
    let (mut own, mut shared) = (own, shared);
    info!(worker = %inner.cfg.name, "worker ready");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = own.next() => inner.dispatch(msg, &tracker).await,
            Some(msg) = shared.next() => inner.dispatch(msg, &tracker).await,
            Some(exit) = exits.recv() => {
                let (guard, permit) = inner.reserve(exit.task_id).await;
                let inner = inner.clone();
                tracker.spawn(async move {
                    inner.on_exit(exit).await;
                    drop((guard, permit));
                });
            }
            _ = heartbeat.tick() => inner.heartbeat(&client, &nodes, &mut stats).await,
        }
    }
    // Stop taking work, let what is in flight finish, then go.
    drop((own, shared));
    tracker.close();
    tracker.wait().await;
    info!(worker = %inner.cfg.name, "worker stopped");
    Ok(())
}

/// The work stream is the manager's to create; a worker started first waits for it.
async fn wait_for_stream(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> Option<jetstream::stream::Stream> {
    let mut logged = false;
    loop {
        match js.get_stream(WORK_STREAM).await {
            Ok(stream) => return Some(stream),
            Err(e) => {
                if !logged {
                    info!(error = %e, "waiting for the manager to create stream {WORK_STREAM}");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn consume(
    stream: &jetstream::stream::Stream,
    name: &str,
    subject: &str,
    concurrency: usize,
) -> Result<pull::Stream, Error> {
    let err = |e: &dyn std::fmt::Display| Error::Nats(format!("consumer {name}: {e}"));
    stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_string()),
                filter_subject: subject.to_string(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                max_ack_pending: (concurrency * 8).max(64) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err(&e))?
        .messages()
        .await
        .map_err(|e| err(&e))
}

impl Inner {
    /// Takes one message off a consumer and hands it to a handler task. The task's lock is
    /// taken here, in arrival order, so a stop never overtakes the start before it.
    async fn dispatch(
        self: &Arc<Self>,
        msg: Result<jetstream::Message, pull::MessagesError>,
        tracker: &TaskTracker,
    ) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                warn!(error = %e, "reading work");
                return;
            }
        };
        let event = match wire::decode_event(&msg.payload) {
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

    fn forget(&self, task_id: Uuid) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_id);
        self.task_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_id);
    }

    async fn start(&self, event: TaskEvent, msg: jetstream::Message) {
        let task = event.task;
        if self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&task.id)
        {
            debug!("already running; duplicate start ignored");
            let _ = msg.ack().await;
            return;
        }
        let progress = keep_alive(&msg);
        let result = self.runtime.start(&task, &self.cfg.name).await;
        progress.cancel();
        let report = match result {
            Ok(started) => {
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(task.id, started.container_id.clone());
                info!(container = %started.container_id, "started");
                let mut r = StateReport::new(task.id, &self.cfg.name, State::Running);
                r.container_id = Some(started.container_id);
                r.start_time = Some(started.start_time);
                r
            }
            Err(RuntimeError::Unavailable(reason)) if delivered(&msg) < MAX_DELIVER => {
                warn!(%reason, "runtime unavailable; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "start failed");
                let mut r = StateReport::new(task.id, &self.cfg.name, State::Failed);
                r.error = Some(e.to_string());
                r.finish_time = Some(Utc::now());
                r
            }
        };
        // Acknowledge only once the outcome is durable in JetStream.
        if self.report(report).await {
            let _ = msg.ack().await;
        }
    }

    async fn stop(&self, event: TaskEvent, msg: jetstream::Message) {
        let id = event.task.id;
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        let progress = keep_alive(&msg);
        let result = self.runtime.stop(id, self.cfg.stop_grace).await;
        progress.cancel();
        match result {
            Ok(code) => {
                info!(exit_code = ?code, "stopped on request");
                self.forget(id);
                let mut r = StateReport::new(id, &self.cfg.name, State::Completed);
                r.exit_code = code;
                r.finish_time = Some(Utc::now());
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
            if requested {
                return;
            }
            let state = if exit.exit_code == 0 {
                State::Completed
            } else {
                State::Failed
            };
            info!(exit_code = exit.exit_code, "container exited");
            let mut r = StateReport::new(exit.task_id, &self.cfg.name, state);
            r.exit_code = Some(exit.exit_code);
            r.finish_time = Some(exit.finish_time);
            r.error = match (state, exit.error) {
                (_, Some(e)) => Some(e),
                (State::Failed, None) => Some(format!("exited with code {}", exit.exit_code)),
                _ => None,
            };
            self.forget(exit.task_id);
            self.report(r).await;
            if let Err(e) = self.runtime.remove(exit.task_id).await {
                warn!(error = %e, "removing the exited container");
            }
        }
        .instrument(span)
        .await
    }

    /// Publishes a state report into JetStream, retrying until it is stored or the worker
    /// shuts down. Returns whether it was stored.
    async fn report(&self, report: StateReport) -> bool {
        let subject = state_for(report.task_id);
        // The same id on every retry, so a retry after a lost ack is not stored twice.
        let msg_id = Uuid::new_v4().to_string();
        let payload = encode(&report);
        let mut backoff = Duration::from_millis(100);
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&msg_id);
            let result = match self.js.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => return true,
                Err(e) => warn!(error = %e, "publishing a state report; retrying"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn heartbeat(
        &self,
        client: &async_nats::Client,
        nodes: &jetstream::kv::Store,
        stats: &mut Stats,
    ) {
        let s = stats.sample();
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
            task_count: self.running.lock().unwrap_or_else(|p| p.into_inner()).len() as u32,
            labels: self.cfg.labels.clone(),
            last_heartbeat: Utc::now(),
            version: cube_shared::VERSION.to_string(),
            state: NodeState::Ready,
        };
        let payload = encode(&node);
        if let Err(e) = client
            .publish(heartbeat_for(&self.cfg.name), payload.clone())
            .await
        {
            warn!(error = %e, "publishing a heartbeat");
        }
        if let Err(e) = nodes.put(&self.cfg.name, payload).await {
            debug!(error = %e, "recording the node");
        }
    }
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
