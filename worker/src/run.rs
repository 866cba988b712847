//! The worker's loop: work from two durable consumers, exits from the runtime, heartbeats;
//! and the one place where what a handler decided becomes JetStream calls.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use cube_shared::subjects::*;
use cube_shared::wire::{self, encode};
use cube_shared::{State, StateReport};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::epoch::Epochs;
use crate::node::NodeDb;
use crate::relist::RELIST_EVERY;
use crate::runtime::Runtime;
use crate::slots::{Table, Turn};
use crate::task_db::TaskDb;
use crate::work::Outcome;
use crate::{Config, Error};

/// How many times JetStream offers one piece of work before giving up on it. A start that
/// keeps failing for runtime reasons is reported `failed` on the last attempt, so the task
/// never silently stays `scheduled`.
pub(crate) const MAX_DELIVER: i64 = 10;
/// How long a worker may hold a message unacknowledged before JetStream offers it again. Long
/// operations (image pulls) send progress acks well inside this.
const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// On shutdown, how long the work in flight may take to finish before it is abandoned. With
/// the last heartbeat (`node::LEAVE_TIMEOUT`, 2 s), the flush (1 s) and the output publishers
/// ([`SHUTDOWN_LOGS`]), a worker ends within 10 s of SIGTERM whatever NATS does.
const SHUTDOWN_WORK: Duration = Duration::from_secs(4);
/// On shutdown, how long the output publishers may take to end once cancelled.
const SHUTDOWN_LOGS: Duration = Duration::from_secs(1);

/// What every part of a worker shares. The tasks' state is in `tasks`, its one owner.
pub(crate) struct Worker {
    pub(crate) cfg: Config,
    pub(crate) js: jetstream::Context,
    /// The Task DB, read to check that a piece of work is still current before acting on it.
    pub(crate) task_db: TaskDb,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: Arc<Table>,
    /// How many runtime operations run at once.
    ops: Arc<Semaphore>,
    /// Health checks and progress acks, waited for before `run` returns.
    pub(crate) background: TaskTracker,
    pub(crate) log_tracker: TaskTracker,
    /// Cancels the output publishers: after `leave`, so that the output of the containers a
    /// worker stops on its way out is published.
    pub(crate) logs_shutdown: CancellationToken,
    /// The newest manager epoch seen on work: older work is a deposed manager's.
    pub(crate) epochs: Epochs,
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
    let name = cfg.name.clone();
    // The Task DB's fence is written by a leader, which created every stream and bucket
    // before it led: once it is there, so are they, and their handles are taken without a
    // request each (ten thousand workers starting at once make a busy server).
    let Some(task_db) = wait_for(&shutdown, "cube-tasks' fence", || TaskDb::open(&js, &name)).await
    else {
        return Ok(());
    };
    let nodes = NodeDb::new(js.clone(), &name);
    // The consumers are bound through this context (and the work stream's handle taken
    // from it): on a busy server an answer that takes longer than a publish's timeout is
    // still awaited, rather than thrown away and asked for again.
    let mut setup = js.clone();
    setup.set_timeout(SETUP_TIMEOUT);
    let work = setup
        .get_stream_no_info(WORK_STREAM)
        .await
        .map_err(|source| Error::Stream {
            name: WORK_STREAM.to_string(),
            source,
        })?;

    let worker = Arc::new(Worker {
        ops: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
        tasks: Table::new(cfg.metrics.tasks_running.clone()),
        cfg,
        js,
        task_db,
        runtime,
        shutdown: shutdown.clone(),
        background: TaskTracker::new(),
        log_tracker: TaskTracker::new(),
        logs_shutdown: CancellationToken::new(),
        epochs: Epochs::default(),
    });
    // However `run` returns, the publishers end with it.
    let _logs_shutdown = worker.logs_shutdown.clone().drop_guard();
    // Exits are watched before the containers are listed, so none falls in between.
    let mut exits = worker.runtime.exits(&worker.cfg.name);
    let mut resyncs = worker.runtime.resyncs();
    let Some(leftovers) = worker.reconcile_on_start().await else {
        return Ok(());
    };
    let name = &worker.cfg.name;
    let concurrency = worker.cfg.concurrency;
    let own = own_consumer(name, concurrency);
    let mut own = consume(&work, own, concurrency, &shutdown).await?;
    // Taken as there: asking costs the server a walk of every worker's waiting request.
    let shared = shared_consumer(concurrency);
    let mut shared = cube_bus::assumed_messages(
        &setup,
        WORK_STREAM,
        shared,
        SHARED_PACE,
        concurrency,
        shutdown.child_token(),
    )
    .await
    .map_err(|source| Error::Consumer {
        name: SHARED_WORK_CONSUMER.to_string(),
        source,
    })?;
    let tracker = TaskTracker::new();
    // Heartbeats run on their own, so that a slow NATS never holds up work or exits.
    let (first_beat, after_first_beat) = oneshot::channel();
    tracker.spawn(
        worker
            .clone()
            .beat(client.clone(), nodes.clone(), first_beat),
    );
    // What start-up left (stale containers, exits while away) never delays readiness.
    let cleaner = worker.clone();
    tracker.spawn(async move {
        let _ = after_first_beat.await;
        cleaner.clean_up(leftovers).await;
    });
    info!(worker = %worker.cfg.name, "worker ready");

    let mut relist =
        tokio::time::interval_at(tokio::time::Instant::now() + RELIST_EVERY, RELIST_EVERY);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let relisting = Arc::new(tokio::sync::Mutex::new(()));
    let work = async {
        loop {
            tokio::select! {
                Some(msg) = own.recv() => worker.dispatch(msg, &tracker).await,
                Some(msg) = shared.recv() => worker.dispatch(msg, &tracker).await,
                Some(exit) = exits.recv() => {
                    let turn = worker.turn(exit.task_id).await;
                    let worker = worker.clone();
                    tracker.spawn(async move {
                        worker.on_exit(exit).await;
                        drop(turn);
                    });
                }
                _ = relist.tick() => worker.spawn_relist(&relisting, &tracker),
                Ok(()) = resyncs.changed() => worker.spawn_relist(&relisting, &tracker),
                else => std::future::pending().await,
            }
        }
    };
    // Shutdown ends the loop wherever it waits (a handler's turn included).
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = work => {}
    }
    drop((own, shared));
    worker.shut_down(&client, &nodes, tracker).await;
    info!(worker = %worker.cfg.name, "worker stopped");
    Ok(())
}

/// Runs `op` until it succeeds, or returns `None` on shutdown: first after `first`, then after
/// waits that grow to [`RETRY_AT_MOST`], jittered ([`cube_bus::Backoff`]), so that many
/// workers refused at once (a busy server, a cluster starting) do not ask again in step. The
/// first failure is logged as a warning, later ones only at debug level.
pub(crate) async fn retry<T, E, F, Fut>(
    shutdown: &CancellationToken,
    first: Duration,
    what: &str,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let mut logged = false;
    let mut backoff = cube_bus::Backoff::new(first, RETRY_AT_MOST.max(first));
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            outcome = op() => outcome,
        };
        match outcome {
            Ok(v) => return Some(v),
            Err(e) if !logged => {
                warn!(error = %cube_bus::Chain(&e), "{what}; retrying");
                logged = true;
            }
            Err(e) => debug!(error = %cube_bus::Chain(&e), "{what}; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

/// How long a worker waits for NATS to answer a request that sets it up (a stream's handle,
/// a consumer's binding).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest a worker waits before asking again what it needs to start.
const RETRY_AT_MOST: Duration = Duration::from_secs(2);

/// The streams and buckets are the manager's to create; a worker started first waits.
async fn wait_for<T, E: std::error::Error + 'static, F, Fut>(
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

/// The settings both work consumers share.
fn work_consumer(name: &str, subject: &str, concurrency: usize) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: subject.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        max_ack_pending: (concurrency * 8).max(64) as i64,
        ..Default::default()
    }
}

/// The worker's own consumer, `worker-<name>` on `tasks.pending.<name>`. Its state (what was
/// delivered and acknowledged) is kept in the server's memory: a consumer kept on disk costs
/// its creation a few synchronous writes (under `sync_interval: always`, fsyncs), which held
/// 10,000 workers starting at once to about 60 a second. A nats-server restart loses it; the
/// worker's binding makes it again, and it delivers what `CUBE_WORK` still holds for this
/// worker (what it had not acknowledged: a work queue), each checked against the
/// Task DB like any redelivery: what was already done is acknowledged and skipped, what was
/// not is done. So a worker still gets every placement it had not acknowledged.
pub(crate) fn own_consumer(name: &str, concurrency: usize) -> pull::Config {
    pull::Config {
        memory_storage: true,
        ..work_consumer(&worker_consumer(name), &pending_for(name), concurrency)
    }
}

/// The consumer every worker shares, `workers` on `tasks.pending` (the `queue` scheduler's).
/// Each worker keeps a pull request waiting on it: nats-server refuses requests beyond the
/// consumer's `max_waiting` (512 by default), and a refused client asks again at once, so
/// the limit is the cluster's. A worker takes it as there ([`cube_bus::assumed_messages`]);
/// the first worker of a cluster finds it missing and creates it with these settings.
pub(crate) fn shared_consumer(concurrency: usize) -> pull::Config {
    pull::Config {
        max_waiting: MAX_WAITING,
        ..work_consumer(SHARED_WORK_CONSUMER, PENDING, concurrency)
    }
}

/// Pull requests the shared consumer keeps waiting: one per worker, with room for a worker
/// whose previous request the server has not yet expired.
const MAX_WAITING: i64 = 2 * MAX_WORKERS as i64;

/// The pace of a worker's pull requests on the shared consumer. nats-server walks all the
/// requests waiting there whenever one is due a heartbeat or expires: at the client's pace
/// (15 s, 30 s) 10,000 workers cost it about 1,000 walks of 10,000 a second, a whole core.
/// A heartbeat a minute and a request every two make that four times fewer. The heartbeat
/// only says the request is still there; a reconnection asks again at once whatever the
/// pace.
pub(crate) const SHARED_PACE: cube_bus::Pace = cube_bus::Pace {
    expires: Duration::from_secs(120),
    heartbeat: Duration::from_secs(60),
};
const _: () = assert!(SHARED_PACE.heartbeat.as_secs() * 2 <= SHARED_PACE.expires.as_secs());

async fn consume(
    stream: &jetstream::stream::Stream<()>,
    config: pull::Config,
    concurrency: usize,
    shutdown: &CancellationToken,
) -> Result<tokio::sync::mpsc::Receiver<jetstream::Message>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    cube_bus::durable_messages(stream.clone(), config, concurrency, shutdown.child_token())
        .await
        .map_err(|source| Error::Consumer { name, source })
}

impl Worker {
    /// Stops taking work, lets what is in flight finish, says goodbye and ends the output
    /// publishers, each step bounded in time (see [`SHUTDOWN_WORK`]), so that the worker ends
    /// promptly whatever NATS does. What is still in flight then is abandoned: a message not
    /// acknowledged is offered again, to the next worker of this name, which adopts the
    /// containers. No container is stopped here (unless `stop_tasks_on_exit` asks for it).
    async fn shut_down(
        self: &Arc<Self>,
        client: &async_nats::Client,
        nodes: &NodeDb,
        tracker: TaskTracker,
    ) {
        tracker.close();
        self.background.close();
        let in_flight = async {
            tracker.wait().await;
            self.background.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_WORK, in_flight)
            .await
            .is_err()
        {
            warn!(
                worker = %self.cfg.name,
                in_flight = tracker.len() + self.background.len(),
                "work in flight did not finish in {SHUTDOWN_WORK:?}; leaving it to the next worker of this name"
            );
        }
        self.leave(client, nodes).await;
        // The output publishers end now; a worker adopting the containers resumes where they
        // stopped.
        self.logs_shutdown.cancel();
        self.log_tracker.close();
        if tokio::time::timeout(SHUTDOWN_LOGS, self.log_tracker.wait())
            .await
            .is_err()
        {
            debug!("output publishers did not end in {SHUTDOWN_LOGS:?}");
        }
    }

    /// Lists the runtime's containers in the background, unless a listing is under way.
    fn spawn_relist(
        self: &Arc<Self>,
        relisting: &Arc<tokio::sync::Mutex<()>>,
        tracker: &TaskTracker,
    ) {
        let Ok(guard) = relisting.clone().try_lock_owned() else {
            return;
        };
        let worker = self.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = worker.shutdown.cancelled() => {}
                _ = worker.relist() => {}
            }
            drop(guard);
        });
    }

    /// Takes one message off a consumer and hands it to a handler task. The task's turn is
    /// taken here, in arrival order, so a stop never overtakes the start before it.
    async fn dispatch(self: &Arc<Self>, msg: jetstream::Message, tracker: &TaskTracker) {
        let event = match wire::decode_work(&msg.payload) {
            Ok(event) => event,
            Err(e) => {
                // Only the manager publishes here; a bad message is dropped, not retried.
                warn!(subject = %msg.subject, error = %e, "dropping unreadable work");
                return self.settle(&msg, Outcome::Reject).await;
            }
        };
        if let Err(newest) = self.epochs.admit(event.epoch) {
            warn!(
                task.id = %event.task.id,
                epoch = event.epoch,
                newest,
                "refusing work from a deposed manager (an older epoch than one already seen)"
            );
            return self.settle(&msg, Outcome::Ack).await;
        }
        let turn = self.turn(event.task.id).await;
        let worker = self.clone();
        let span = info_span!(
            "work",
            task.id = %event.task.id,
            generation = event.task.generation,
            worker = %self.cfg.name
        );
        tracker.spawn(
            async move {
                let outcome = if event.is_stop() {
                    worker.stop(event, &msg).await
                } else {
                    worker.start(event.task, &event.secrets, &msg).await
                };
                worker.settle(&msg, outcome).await;
                drop(turn);
            }
            .instrument(span),
        );
    }

    /// Waits for the task's turn and for a free runtime operation.
    pub(crate) async fn turn(&self, task_id: Uuid) -> Turn {
        let ops = self.ops.clone();
        let permit = async move { ops.acquire_owned().await.expect("never closed") };
        self.tasks.turn(task_id, permit).await
    }

    /// Carries out what a handler decided about its message. A report is acknowledged only
    /// once it is durable in JetStream; if it could not be stored, the message stays
    /// unacknowledged and JetStream offers it again.
    async fn settle(&self, msg: &jetstream::Message, outcome: Outcome) {
        let ack = match outcome {
            Outcome::Ack => AckKind::Ack,
            Outcome::Retry(after) => AckKind::Nak(Some(after)),
            Outcome::Reject => AckKind::Term,
            Outcome::Report(report) => {
                if !self.report(*report).await {
                    return;
                }
                AckKind::Ack
            }
        };
        if let Err(e) = msg.ack_with(ack).await {
            debug!(error = %e, "acknowledging work");
        }
    }

    /// Publishes a state report into JetStream, retrying until it is stored or the worker
    /// shuts down. Returns whether it was stored.
    ///
    /// `CUBE_STATE` keeps only the last report of each subject, and a task's subject on this
    /// worker is the same for all its placements here: a report about another placement than
    /// the one that runs (an old copy that made way for a new one) is followed by the running
    /// one's again, so that the last word is the status of what runs.
    pub(crate) async fn report(&self, report: StateReport) -> bool {
        let (id, generation) = (report.task_id, report.generation.unwrap_or_default());
        if let (State::Running, Some(health)) = (report.state, report.health) {
            self.tasks.set_health(id, generation, health);
        }
        if !self.publish_report(&report).await {
            return false;
        }
        match self.tasks.status(id) {
            Some((p, health)) if p.generation != generation => {
                let current = crate::report::report(&self.cfg.name, id, p.generation)
                    .container(p.container_id, p.start_time)
                    .running(health);
                self.publish_report(&current).await
            }
            _ => true,
        }
    }

    async fn publish_report(&self, report: &StateReport) -> bool {
        let subject = state_for(report.task_id, &report.worker);
        // The same id on every retry, so a retry after a lost ack is not stored twice.
        let msg_id = Uuid::new_v4().to_string();
        cube_bus::publish_durably(&self.js, subject, encode(report), &msg_id, &self.shutdown)
            .await
            .is_ok()
    }

    /// Tells JetStream "still working on it" about `msg` until the returned guard drops.
    pub(crate) fn keep_alive(&self, msg: &jetstream::Message) -> tokio_util::sync::DropGuard {
        let token = CancellationToken::new();
        let (msg, done) = (msg.clone(), token.clone());
        self.background.spawn(async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                }
            }
        });
        token.drop_guard()
    }
}

/// How many times JetStream has offered this message, this time included.
pub(crate) fn delivered(msg: &jetstream::Message) -> i64 {
    msg.info().map_or(1, |i| i.delivered)
}
