//! The manager's shell: one loop feeds the [`Rules`] their inputs (submissions and stops,
//! workers' state reports, heartbeats, API calls, the passing of time) and hands what they
//! decide to the writer. All of the manager's I/O is here and in the writer; every decision
//! is in `rules/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use cube_bus::Outgoing;
use cube_shared::subjects::*;
use cube_shared::wire::encode;
use cube_shared::JournalEntry;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::inputs::{durable, subscribe};
use crate::presence::Presence;
use crate::records::{self, TaskKeys};
use crate::rules::Rules;
use crate::secrets::Secrets;
use crate::status;
use crate::topology::{self, Topology};
use crate::upkeep;
use crate::writer::{self, Commit};
use crate::{scheduler_by_name, Config, Error, Fence, Holder, Lease, Observer};

/// The manager's loop state: the rules, and what carries out their effects.
pub(crate) struct Shell {
    pub(crate) cfg: Config,
    pub(crate) client: async_nats::Client,
    pub(crate) topo: Topology,
    pub(crate) rules: Rules,
    /// Secrets' values, put into the placements that need them as they are sent.
    pub(crate) secrets: Secrets,
    /// Where each task's record is in the Task DB.
    keys: TaskKeys,
    writer: mpsc::Sender<Commit>,
    /// The writer has stopped: nothing more can be made durable.
    writer_gone: bool,
    /// This term's epoch, carried by every piece of work.
    epoch: u64,
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

/// How long a manager keeps trying to create its streams and buckets before it gives up:
/// long enough for a NATS cluster to elect its meta leader, and for several managers starting
/// at once (whose concurrent creation of replicated streams can time out) to settle.
pub(crate) const SET_UP_PATIENCE: Duration = Duration::from_secs(60);

/// [`topology::ensure`], retried for [`SET_UP_PATIENCE`]; `None` if `shutdown` comes first.
async fn set_up(
    cfg: &Config,
    client: &async_nats::Client,
    shutdown: &CancellationToken,
) -> Result<Option<topology::Topology>, Error> {
    let started = std::time::Instant::now();
    loop {
        let attempt = topology::ensure(
            jetstream::new(client.clone()),
            cfg.logs_per_task,
            cfg.replicas,
        );
        let err = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = attempt => match r {
                Ok(topo) => return Ok(Some(topo)),
                Err(e) => e,
            },
        };
        if started.elapsed() >= SET_UP_PATIENCE {
            return Err(err);
        }
        warn!(error = %cube_bus::Chain(&err), "creating Cube's streams and buckets; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Runs the manager until `shutdown` is cancelled: a standby until it wins the leadership
/// lease, then the leader until it loses it (and a standby again), any number of times.
pub async fn run(
    cfg: Config,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // An unknown scheduler is refused at once, not at the first takeover.
    scheduler_by_name(&cfg.scheduler)?;
    let Some(topo) = set_up(&cfg, &client, &shutdown).await? else {
        info!("manager stopped");
        return Ok(());
    };
    let holder = Holder::this_process();
    let presence = Presence::new(&holder);
    let _answering = presence
        .clone()
        .serve(client.clone(), shutdown.child_token())
        .await?;
    let observer = Observer {
        seen: presence.seen.clone(),
        metrics: Some(cfg.metrics.lease.clone()),
    };
    let metrics = cfg.metrics.lease.clone();
    loop {
        presence.standby();
        // A standby reads and writes nothing but the lease, until the leader has been silent
        // for the lease's TTL.
        let Some(lease) = Lease::acquire_observed(
            &topo.admin,
            holder.clone(),
            cfg.lease_ttl,
            &shutdown,
            &observer,
        )
        .await
        else {
            info!("manager stopped");
            return Ok(());
        };
        presence.lead(lease.epoch());
        metrics.leader.set(1);
        metrics.epoch.set(lease.epoch() as i64);
        metrics.takeovers.inc();
        let led = lead(&cfg, &client, &topo, &lease, &shutdown).await;
        metrics.leader.set(0);
        metrics.epoch.set(0);
        match led {
            Ok(()) => {
                // What was decided is written; another manager may act at once.
                if let Err(e) = lease.release(Duration::from_secs(2)).await {
                    warn!(error = %cube_bus::Chain(&e), "releasing the leadership lease");
                }
                info!("manager stopped");
                return Ok(());
            }
            Err(e) if e.is_loss_of_leadership() => {
                metrics.step_downs.inc();
                warn!(
                    error = %cube_bus::Chain(&e),
                    "no longer leading: wrote nothing more, standing by"
                );
            }
            Err(e) => {
                // NATS trouble while leading (a stream without a leader during a cluster's
                // failover, say): this process stays, gives the lease back so that any
                // manager may take over as soon as NATS lets it, and stands by again.
                metrics.step_downs.inc();
                error!(
                    error = %cube_bus::Chain(&e),
                    "could not go on leading: releasing the lease and standing by"
                );
                if let Err(e) = lease.release(Duration::from_secs(2)).await {
                    warn!(error = %cube_bus::Chain(&e), "releasing the leadership lease");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        info!("manager stopped");
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// One term as leader: raises the fence, rebuilds the picture from JetStream, and acts until
/// `shutdown` (`Ok`) or until the lease is lost or the fence names a newer leader (an error
/// for which [`Error::is_loss_of_leadership`] holds).
async fn lead(
    cfg: &Config,
    client: &async_nats::Client,
    topo: &Topology,
    lease: &Lease,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let epoch = lease.epoch();
    let span = info_span!("term", epoch);
    // Everything this term started (consumers, the writer) stops with it.
    let term = shutdown.child_token();
    let _stop_term = term.clone().drop_guard();
    let starting = async {
        let fence = Arc::new(Fence::raise(&topo.tasks, epoch, lease.holder()).await?);
        // Read after the fence: everything an earlier leader managed to write is here.
        let loaded = records::load(topo).await?;
        let secrets = Secrets::load(topo.secrets.clone()).await?;
        Ok::<_, Error>((fence, loaded, secrets))
    };
    let (fence, (stored, keys, settle), secrets) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        lost = lease.lost() => return Err(lost),
        started = starting.instrument(span.clone()) => started?,
    };
    let purger = status::Purger::spawn(topo.js.clone(), term.clone());
    let deposed = CancellationToken::new();
    let deposed_by = Arc::new(std::sync::Mutex::new(String::new()));
    let (writer, writing) = writer::spawn(
        topo.js.clone(),
        client.clone(),
        cfg.metrics.clone(),
        writer::Term {
            gate: lease.gate(),
            fence,
            tasks: topo.tasks.clone(),
            deposed: deposed.clone(),
            deposed_by: deposed_by.clone(),
        },
        purger.clone(),
        term.clone(),
    );
    let writing = AbortOnDrop(Some(writing));
    let (task_db_use, upkeep) = upkeep::spawn(topo.js.clone(), term.clone());
    let _upkeep = AbortOnDrop(Some(upkeep));
    let rules = Rules::new(
        cfg.timings,
        scheduler_by_name(&cfg.scheduler)?,
        cfg.metrics.clone(),
        stored,
        Instant::now(),
    );
    let mut shell = Shell {
        cfg: cfg.clone(),
        client: client.clone(),
        topo: topo.clone(),
        rules,
        secrets,
        keys,
        writer,
        writer_gone: false,
        epoch,
    };
    shell.settle(settle).await;
    // The status the Task DB does not hold: what the workers last reported.
    let now = Utc::now();
    let replayed = status::replay(&topo.js, &term, &purger, |subject, payload| {
        shell.rules.replay_report(subject, payload, now)
    });
    tokio::select! {
        lost = lease.lost() => return Err(lost),
        replayed = replayed.instrument(span.clone()) => replayed?,
    }
    shell.flush(Vec::new()).await;
    shell.journal_takeover(lease).await;
    let deposed_error = || Error::Deposed {
        epoch,
        by: deposed_by.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };

    let js = shell.topo.js.clone();
    let mut events = durable(&js, EVENTS_STREAM, MANAGER_EVENTS_CONSUMER, EVENTS, &term).await?;
    let mut states = durable(&js, STATE_STREAM, MANAGER_STATE_CONSUMER, STATE_ALL, &term).await?;
    let mut services = durable(
        &js,
        SERVICES_STREAM,
        MANAGER_SERVICES_CONSUMER,
        SERVICE_EVENTS,
        &term,
    )
    .await?;
    let mut heartbeats = subscribe(client, HEARTBEAT_ALL).await?;
    let mut api = subscribe(client, "cube.api.>").await?;
    let mut tick = tokio::time::interval(shell.cfg.timings.tick);
    let mut last_tick = Instant::now();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        epoch,
        scheduler = shell.rules.scheduler_name(),
        tasks = shell.rules.cluster().task_count(),
        "manager ready: leading"
    );

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Another manager took over, or this one could not renew in time: stop at once,
            // writing nothing more.
            lost = lease.lost() => return Err(lost),
            _ = deposed.cancelled() => return Err(deposed_error()),
            Some(msg) = events.recv() => {
                let batch = batch_of(msg, &mut events);
                shell.cfg.metrics.batch_messages.observe(batch.len() as f64);
                let now = Utc::now();
                for msg in &batch {
                    shell.rules.on_event(msg.subject.as_str(), &msg.payload, now);
                }
                shell.flush(batch).await;
            }
            Some(msg) = services.recv() => {
                let batch = batch_of(msg, &mut services);
                let now = Utc::now();
                for msg in &batch {
                    shell.rules.on_service_event(msg.subject.as_str(), &msg.payload, now);
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
                shell.rules.set_reports_waiting(!caught_up, Instant::now());
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
                shell.rules.set_task_db_use(*task_db_use.borrow());
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
            // The writer stops on its own only when this manager may no longer write.
            if deposed.is_cancelled() {
                return Err(deposed_error());
            }
            if lease.is_lost() || !lease.gate().is_open() {
                return Err(lease.lost().await);
            }
            return Err(Error::WriterStopped);
        }
    }
    // At shutdown, what was decided is written before the lease is released.
    drop(shell);
    let _ = writing.finish().await;
    Ok(())
}

/// A task aborted when dropped, unless [`AbortOnDrop::finish`] waits for it: a term that
/// ends because leadership was lost must not leave its writer running.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    async fn finish(mut self) -> Result<(), tokio::task::JoinError> {
        match self.0.take() {
            Some(h) => h.await,
            None => Ok(()),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

impl Shell {
    /// Puts every Task DB record where it belongs before anything else is written (see
    /// [`TaskKeys::settle`]).
    async fn settle(&mut self, records: Vec<Outgoing>) {
        if records.is_empty() {
            return;
        }
        info!(writes = records.len(), "settling the Task DB's keys");
        let commit = Commit {
            records,
            ..Default::default()
        };
        if self.writer.send(commit).await.is_err() {
            self.writer_gone = true;
        }
    }

    /// Journals this term's start: who leads now, at which epoch, and whom it took over from.
    async fn journal_takeover(&mut self, lease: &Lease) {
        let message = match lease.took_from() {
            Some(from) => format!(
                "manager {} leads at epoch {} (took over from {from}, silent for the lease's TTL)",
                lease.holder(),
                self.epoch
            ),
            None => format!("manager {} leads at epoch {}", lease.holder(), self.epoch),
        };
        let entry = JournalEntry::new("leader", message);
        let commit = Commit {
            notices: vec![(journal_for(&entry.kind), encode(&entry))],
            ..Default::default()
        };
        if self.writer.send(commit).await.is_err() {
            self.writer_gone = true;
        }
    }

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
        self.rules.reconcile(Utc::now());
        let decided = self.rules.take_effects();
        let secrets = &self.secrets;
        let commit = records::commit(
            decided,
            handled,
            self.epoch,
            &|t| secrets.resolve(t),
            &mut self.keys,
        );
        if !commit.is_empty() && self.writer.send(commit).await.is_err() {
            // It stops only at shutdown (or if it panicked): the loop must not go on deciding
            // what nobody will write.
            self.writer_gone = true;
        }
    }
}
