//! The manager's shell: one loop feeds the [`Rules`] their inputs (submissions and stops,
//! workers' state reports, heartbeats, API calls, the passing of time) and hands what they
//! decide to the writer. All of the manager's I/O is here and in the writer; every decision
//! is in `rules/`.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use chrono::Utc;
use cube_bus::Outgoing;
use cube_shared::subjects::*;
use cube_shared::wire::{self, encode, MAX_MESSAGE_BYTES};
use cube_shared::Node;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::rules::{Decided, Rules, Stored};
use crate::topology::{self, Topology};
use crate::writer::{self, Commit};
use crate::{scheduler_by_name, Config, Error};

/// The manager's loop state: the rules, and what carries out their effects.
pub(crate) struct Shell {
    pub(crate) cfg: Config,
    pub(crate) client: async_nats::Client,
    pub(crate) topo: Topology,
    pub(crate) rules: Rules,
    writer: mpsc::Sender<Commit>,
    /// The writer has stopped: nothing more can be made durable.
    writer_gone: bool,
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
    let topo = topology::ensure(
        jetstream::new(client.clone()),
        cfg.logs_per_task,
        cfg.replicas,
    )
    .await?;
    // One manager acts at a time: a second one waits here, reading and writing nothing,
    // until the first has been silent for the lease's TTL.
    let Some(lease) = crate::Lease::acquire(
        &topo.admin,
        crate::Holder::this_process(),
        cfg.lease_ttl,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };
    let (writer, writing) = writer::spawn(
        topo.js.clone(),
        client.clone(),
        cfg.metrics.clone(),
        shutdown.clone(),
    );
    let stored = load(&topo).await?;
    let rules = Rules::new(
        cfg.timings,
        scheduler,
        cfg.metrics.clone(),
        stored,
        Instant::now(),
    );
    let mut shell = Shell {
        cfg,
        client: client.clone(),
        topo,
        rules,
        writer,
        writer_gone: false,
    };

    let js = shell.topo.js.clone();
    let mut events = durable(
        &js,
        EVENTS_STREAM,
        MANAGER_EVENTS_CONSUMER,
        EVENTS,
        &shutdown,
    )
    .await?;
    let mut states = durable(
        &js,
        STATE_STREAM,
        MANAGER_STATE_CONSUMER,
        STATE_ALL,
        &shutdown,
    )
    .await?;
    let mut heartbeats = subscribe(&client, HEARTBEAT_ALL).await?;
    let mut api = subscribe(&client, "cube.api.>").await?;
    let mut tick = tokio::time::interval(shell.cfg.timings.tick);
    let mut last_tick = Instant::now();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        scheduler = shell.rules.scheduler_name(),
        tasks = shell.rules.cluster().task_count(),
        "manager ready"
    );

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Another manager took over: this one must stop at once, writing nothing more.
            lost = lease.lost() => {
                writing.abort();
                return Err(lost);
            }
            Some(msg) = events.recv() => {
                let batch = batch_of(msg, &mut events);
                shell.cfg.metrics.batch_messages.observe(batch.len() as f64);
                let now = Utc::now();
                for msg in &batch {
                    shell.rules.on_event(msg.subject.as_str(), &msg.payload, now);
                }
                shell.flush(batch).await;
            }
            Some(msg) = states.recv() => {
                let batch = batch_of(msg, &mut states);
                shell.cfg.metrics.batch_messages.observe(batch.len() as f64);
                let caught_up = batch
                    .last()
                    .and_then(|m| m.info().ok())
                    .is_some_and(|i| i.pending == 0);
                let now = Utc::now();
                for msg in &batch {
                    shell.rules.on_report(msg.subject.as_str(), &msg.payload, now);
                }
                if caught_up {
                    shell.rules.resend_placements();
                }
                shell.flush(batch).await;
            }
            Some(msg) = heartbeats.next() => {
                shell.heartbeats(Some(msg), &mut heartbeats);
                shell.flush(Vec::new()).await;
            }
            Some(msg) = api.next() => {
                shell.on_api(msg).await;
                shell.flush(Vec::new()).await;
            }
            _ = tick.tick() => {
                if shell.rules.resend_due() {
                    shell.resend_if_caught_up().await;
                }
                // Heartbeats that arrived are heard before anyone is judged silent.
                shell.heartbeats(None, &mut heartbeats);
                let can_hear =
                    shell.client.connection_state() == async_nats::connection::State::Connected;
                let (now, mono) = (Utc::now(), Instant::now());
                shell.rules.set_hearing(can_hear, now, mono);
                let gap = mono.saturating_duration_since(std::mem::replace(&mut last_tick, mono));
                shell.rules.ticked_after(gap, now, mono);
                shell.rules.tick(now, mono);
                shell.flush(Vec::new()).await;
                shell.cfg.metrics.set_nodes(shell.rules.cluster().node_counts());
            }
            else => break,
        }
        if shell.writer_gone {
            if shutdown.is_cancelled() {
                break;
            }
            return Err(Error::WriterStopped);
        }
    }
    // What was decided is written before the manager goes, and then another may act at once.
    drop(shell);
    let _ = writing.await;
    if let Err(e) = lease.release(Duration::from_secs(2)).await {
        warn!(error = %cube_bus::Chain(&e), "releasing the leadership lease");
    }
    info!("manager stopped");
    Ok(())
}

/// What a starting manager rebuilds its picture from: the Task DB, the node list and the
/// drains in the `cube-admin` bucket.
async fn load(topo: &Topology) -> Result<Stored, Error> {
    let mut stored = Stored::default();
    for (key, value) in topology::load_all(&topo.tasks).await? {
        match wire::decode_stored_task(&value) {
            Ok(task) => stored.tasks.push(task),
            Err(e) => warn!(key, error = %e, "skipping unreadable task record"),
        }
    }
    for (key, _) in topology::load_all(&topo.admin).await? {
        if let Some(name) = key.strip_prefix("drain.") {
            stored.drained.push(name.to_string());
        }
    }
    for (key, value) in topology::load_all(&topo.nodes).await? {
        match wire::decode::<Node>(&value, MAX_MESSAGE_BYTES) {
            Ok(node) => stored.nodes.push(node),
            Err(e) => warn!(key, error = %e, "skipping unreadable node record"),
        }
    }
    Ok(stored)
}

async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
) -> Result<async_nats::Subscriber, Error> {
    client
        .subscribe(subject.to_string())
        .await
        .map_err(|source| Error::Subscribe {
            subject: subject.to_string(),
            source,
        })
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
    let err = |source: cube_bus::NatsError| Error::Consumer {
        name: name.to_string(),
        stream: stream.to_string(),
        source,
    };
    let handle = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
    cube_bus::durable_messages(
        handle,
        consumer_config(name, subject),
        1024,
        shutdown.child_token(),
    )
    .await
    .map_err(|e| err(e.into()))
}

impl Shell {
    /// Hands the rules `first` and every heartbeat waiting behind it. A large cluster
    /// heartbeats thousands of times a second: they are taken all at once, or they queue
    /// behind batches of submissions and nodes that are alive look silent.
    fn heartbeats(
        &mut self,
        first: Option<async_nats::Message>,
        heartbeats: &mut async_nats::Subscriber,
    ) {
        let (now, mono) = (Utc::now(), Instant::now());
        if let Some(msg) = first {
            self.rules
                .on_heartbeat(msg.subject.as_str(), &msg.payload, now, mono);
        }
        for _ in 1..BATCH * 8 {
            // Unconstrained: tokio's cooperative budget would end the loop early.
            match tokio::task::unconstrained(heartbeats.next()).now_or_never() {
                Some(Some(msg)) => {
                    self.rules
                        .on_heartbeat(msg.subject.as_str(), &msg.payload, now, mono)
                }
                _ => break,
            }
        }
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
            self.rules.resend_placements();
        }
    }

    /// Hands what the rules decided to the writer, which stores the records, publishes the
    /// work, then the journal and rejections, then acknowledges the `handled` messages.
    /// Waits only if the writer is far behind.
    pub(crate) async fn flush(&mut self, handled: Vec<jetstream::Message>) {
        let decided = self.rules.take_effects();
        let commit = commit(decided, handled);
        if !commit.is_empty() && self.writer.send(commit).await.is_err() {
            // It stops only at shutdown (or if it panicked): the loop must not go on deciding
            // what nobody will write.
            self.writer_gone = true;
        }
    }
}

/// The writer's messages for what the rules decided.
fn commit(decided: Decided, handled: Vec<jetstream::Message>) -> Commit {
    let kv = |bucket: &str, key: String, payload| Outgoing {
        subject: format!("$KV.{bucket}.{key}"),
        payload,
        msg_id: None,
    };
    let mut records: Vec<Outgoing> = decided
        .events
        .iter()
        .map(|e| kv(EVENT_DB, e.id.to_string(), encode(e)))
        .collect();
    records.extend(
        decided
            .tasks
            .iter()
            .map(|t| kv(TASK_DB, t.id.to_string(), encode(t))),
    );
    let work = decided
        .work
        .iter()
        .map(|w| Outgoing {
            subject: w.subject.clone(),
            payload: encode(&w.event),
            msg_id: Some(w.event.id.to_string()),
        })
        .collect();
    let mut notices: Vec<(String, bytes::Bytes)> = decided
        .journal
        .iter()
        .map(|e| (journal_for(&e.kind), encode(e)))
        .collect();
    notices.extend(
        decided
            .rejections
            .iter()
            .map(|r| (REJECTED.to_string(), encode(r))),
    );
    Commit {
        records,
        work,
        notices,
        placed: decided.placed,
        handled,
    }
}
