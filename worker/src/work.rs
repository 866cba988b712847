//! Work handlers: a start or a stop of a task, and a container that ended by itself. Each
//! handler returns an [`Outcome`]; `Worker::settle` turns it into JetStream calls. What they
//! decide is in plain functions ([`no_claim`], [`verdict`], [`admit`], [`start_failed`],
//! [`exit_meaning`]), unit-tested in `work_tests.rs` without NATS or Docker.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use cube_shared::secret::{resolve_env, SecretValues};
use cube_shared::subjects::{PENDING, TASK_DB};
use cube_shared::{wire, Health, State, StateReport, Task};
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::report::report;
use crate::run::{delivered, Worker, MAX_DELIVER};
use crate::runtime::{Exit, Runtime, RuntimeError, Started};
use crate::slots::{Claim, NoClaim, Placement, Table};
use crate::{logs, Config};

/// How long the rest of a container's output may go without a chunk stored before the
/// container is reported ended (and removed) regardless: `cube logs -f` ends once a task
/// ended, and should have seen everything by then. Under a loaded nats-server and Docker
/// engine (the full test suite on two cores) a drain was seen to pause for 5 s.
const LOGS_DRAIN: Duration = Duration::from_secs(15);
/// How soon a piece of work that failed for a passing reason is offered again.
pub(crate) const RETRY_SOON: Duration = Duration::from_secs(2);
/// How soon a task from the shared queue that did not fit here is offered again.
const RETRY_ELSEWHERE: Duration = Duration::from_secs(1);

/// What a handler decided about its message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Done with it; nothing to say.
    Ack,
    /// Not now: offer it again after this long.
    Retry(Duration),
    /// Store this report, then acknowledge (boxed: it is most of the enum's size).
    Report(Box<StateReport>),
    /// Unreadable: never offer it again.
    Reject,
}

impl From<StateReport> for Outcome {
    fn from(report: StateReport) -> Outcome {
        Outcome::Report(Box::new(report))
    }
}

/// What the Task DB says about a start this worker was handed.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Act on it.
    Current,
    /// The task was stopped while it waited to start: report it ended, start nothing.
    StoppedBeforeStart,
    /// Not current any more (why): drop it.
    Superseded(String),
}

impl Verdict {
    /// This placement, or a later one, already ran here and ended: a late duplicate.
    pub(crate) fn ended_here() -> Verdict {
        Verdict::Superseded("this placement already ran here and ended".into())
    }
}

/// The Task DB's record of a task, as far as it could be read.
pub(crate) enum Record {
    Missing,
    Unreadable(wire::DecodeError),
    Found(Box<Task>),
}

/// Whether to act on a start, given the task's record: not if the Task DB has moved on (a
/// newer placement, another worker, a final state, a stop). The manager records a placement
/// before it publishes it, so the Task DB is never behind.
pub(crate) fn verdict(task: &Task, worker: &str, record: Record) -> Verdict {
    let current = match record {
        Record::Found(current) => *current,
        Record::Missing => {
            return Verdict::Superseded("the Task DB has no record of it on this worker".into())
        }
        Record::Unreadable(e) => {
            warn!(error = %e, "unreadable Task DB record; acting on the work as sent");
            return Verdict::Current;
        }
    };
    let superseded = |why: String| Verdict::Superseded(why);
    if current.generation != task.generation {
        return superseded(format!(
            "placement {} was superseded by placement {}",
            task.generation, current.generation
        ));
    }
    if let Some(other) = current.worker.as_deref().filter(|w| *w != worker) {
        return superseded(format!("the task is assigned to {other}"));
    }
    // Every placement has a generation of its own, so a record of this generation that ended
    // (failed too, even if a restart is to come: that is a new placement) says this one ran.
    if matches!(current.state, State::Completed | State::Failed) {
        return superseded(format!("the task has ended ({})", current.state));
    }
    if current.stop_requested && current.state == State::Scheduled {
        return Verdict::StoppedBeforeStart;
    }
    Verdict::Current
}

/// Whether a start may go on under `claim`: `Ok` gives the claim back to start the container
/// with; otherwise the outcome for the message, and the claim is released with it.
pub(crate) fn admit(
    cfg: &Config,
    tasks: &Table,
    task: &Task,
    verdict: Verdict,
    claim: Claim,
) -> Result<Claim, Outcome> {
    let report = || report(&cfg.name, task.id, task.generation);
    match verdict {
        Verdict::Current => {}
        Verdict::StoppedBeforeStart => {
            info!("stopped before it started");
            return Err(Outcome::from(report().completed()));
        }
        Verdict::Superseded(reason) => {
            info!(%reason, "skipping work that is no longer current");
            return Err(Outcome::Ack);
        }
    }
    if let Some(reason) = cfg.policy.refuses(task) {
        warn!(%reason, "refused by the worker's policy");
        cfg.metrics.containers_failed.inc();
        tasks.ended(task.id, task.generation);
        let why = format!("refused by worker {}: {reason}", cfg.name);
        return Err(Outcome::from(report().failed(why)));
    }
    Ok(claim)
}

/// The task with its secrets' variables given the values its placement carries (kept in
/// memory only: the task as reported and recorded names its secrets, never their values). A
/// secret the placement lacks (it does not exist, or was removed) fails the task, naming it.
pub(crate) fn with_secrets(
    cfg: &Config,
    tasks: &Table,
    mut task: Task,
    secrets: &SecretValues,
) -> Result<Task, Outcome> {
    match resolve_env(&task.env, secrets) {
        Ok(env) => {
            task.env = env;
            Ok(task)
        }
        Err(why) => {
            warn!(%why, "a secret the task names is missing");
            cfg.metrics.containers_failed.inc();
            tasks.ended(task.id, task.generation);
            Err(Outcome::from(
                report(&cfg.name, task.id, task.generation).failed(why),
            ))
        }
    }
}

/// What to do about a start that got no claim, on the message's `attempt`th delivery.
pub(crate) fn no_claim(worker: &str, task: &Task, why: NoClaim, attempt: i64) -> Outcome {
    match why {
        NoClaim::Running => {
            debug!("already running; duplicate start ignored");
            Outcome::Ack
        }
        NoClaim::NoRoom if attempt < MAX_DELIVER => {
            debug!("no room for a task from the shared queue; leaving it to another worker");
            Outcome::Retry(RETRY_ELSEWHERE)
        }
        NoClaim::NoRoom => {
            let why =
                format!("no worker had room for it in {MAX_DELIVER} offers from the shared queue");
            Outcome::from(report(worker, task.id, task.generation).failed(why))
        }
    }
}

/// Starts the task's container under `claim`, on the message's `attempt`th delivery. If the
/// runtime fails, the claim is given back and the outcome for the message returned.
pub(crate) async fn launch(
    runtime: &dyn Runtime,
    cfg: &Config,
    tasks: &Table,
    task: &Task,
    claim: Claim,
    attempt: i64,
) -> Result<(Started, Claim), Outcome> {
    match runtime.start(task, &cfg.name).await {
        Ok(started) => Ok((started, claim)),
        Err(error) => Err(start_failed(cfg, tasks, task, error, attempt)),
    }
}

/// What to do about a start the runtime failed, on the message's `attempt`th delivery: try
/// again while the runtime itself is failing and offers remain, else report it failed.
pub(crate) fn start_failed(
    cfg: &Config,
    tasks: &Table,
    task: &Task,
    error: RuntimeError,
    attempt: i64,
) -> Outcome {
    if matches!(error, RuntimeError::Unavailable(_)) && attempt < MAX_DELIVER {
        warn!(%error, "runtime unavailable; will retry");
        return Outcome::Retry(RETRY_SOON);
    }
    cfg.metrics.containers_failed.inc();
    warn!(%error, "start failed");
    tasks.ended(task.id, task.generation);
    let failed = report(&cfg.name, task.id, task.generation).failed(error.to_string());
    Outcome::from(failed)
}

/// What to do about a start whose Task DB record could not be read, on the message's
/// `attempt`th delivery: try again while offers remain; on the last one report it failed
/// (JetStream would drop it silently, leaving the task `scheduled` for ever), so the manager
/// applies its restart policy.
pub(crate) fn unreadable_db(
    cfg: &Config,
    tasks: &Table,
    task: &Task,
    error: &dyn std::error::Error,
    attempt: i64,
) -> Outcome {
    if attempt < MAX_DELIVER {
        warn!(error = %error, "cannot read the task from {TASK_DB}; will retry");
        return Outcome::Retry(RETRY_SOON);
    }
    warn!(error = %error, "cannot read the task from {TASK_DB}; last offer, giving up");
    cfg.metrics.containers_failed.inc();
    tasks.ended(task.id, task.generation);
    let why = format!(
        "worker {} could not read the task from {TASK_DB} in {MAX_DELIVER} offers: {error}",
        cfg.name
    );
    Outcome::from(report(&cfg.name, task.id, task.generation).failed(why))
}

/// What to do about a start that could not stop the older copy of its task (placement
/// `older`) to make way, on the message's `attempt`th delivery: try again while offers
/// remain; on the last one report the new placement failed (the older copy runs on, and the
/// manager, told, applies the restart policy and stops the copy it no longer wants).
pub(crate) fn retire_failed(
    cfg: &Config,
    task: &Task,
    older: u64,
    error: &RuntimeError,
    attempt: i64,
) -> Outcome {
    if attempt < MAX_DELIVER {
        warn!(%error, "stopping the older copy failed; will retry");
        return Outcome::Retry(RETRY_SOON);
    }
    warn!(%error, "stopping the older copy failed on the last offer");
    cfg.metrics.containers_failed.inc();
    let why = format!("could not stop the older copy (placement {older}) to make way: {error}");
    Outcome::from(report(&cfg.name, task.id, task.generation).failed(why))
}

/// What the exit of a container means to the worker.
#[derive(Debug, PartialEq)]
pub(crate) enum ExitMeaning {
    /// Not the placement it runs (a replayed event, or a container of another placement): the
    /// start-up reconciliation deals with those.
    Untracked,
    /// It was asked to stop: the stop reports it, this is no failure.
    Stopped,
    /// It ended by itself, in this placement: report it.
    Ended(Placement),
}

/// What an exit means, given the placement that runs here and whether a stop was asked.
pub(crate) fn exit_meaning(
    exit: &Exit,
    running: Option<Placement>,
    stop_requested: bool,
) -> ExitMeaning {
    match running.filter(|p| p.generation == exit.generation) {
        None => ExitMeaning::Untracked,
        Some(_) if stop_requested => ExitMeaning::Stopped,
        Some(placement) => ExitMeaning::Ended(placement),
    }
}

impl Worker {
    pub(crate) async fn start(
        self: &Arc<Self>,
        task: Task,
        secrets: &SecretValues,
        msg: &jetstream::Message,
    ) -> Outcome {
        let from_queue = msg.subject.as_str() == PENDING;
        let claim = match self.tasks.claim(&task, from_queue) {
            Ok(claim) => claim,
            Err(NoClaim::Running) => return self.runs_already(&task),
            Err(why) => return no_claim(&self.cfg.name, &task, why, delivered(msg)),
        };
        let verdict = if self.tasks.has_ended(&task) {
            Verdict::ended_here()
        } else {
            match self.record(task.id).await {
                Ok(record) => verdict(&task, &self.cfg.name, record),
                Err(e) => return unreadable_db(&self.cfg, &self.tasks, &task, &e, delivered(msg)),
            }
        };
        let claim = match admit(&self.cfg, &self.tasks, &task, verdict, claim) {
            Ok(claim) => claim,
            Err(outcome) => return outcome,
        };
        let task = match with_secrets(&self.cfg, &self.tasks, task, secrets) {
            Ok(task) => task,
            Err(outcome) => return outcome,
        };
        let older = self.tasks.running(task.id);
        if let Some(old) = older.filter(|p| p.generation < task.generation) {
            if let Err(outcome) = self.retire(&task, old, msg).await {
                return outcome;
            }
        }
        let launched = {
            let _progress = self.keep_alive(msg);
            let (cfg, tasks) = (&self.cfg, &self.tasks);
            launch(&*self.runtime, cfg, tasks, &task, claim, delivered(msg)).await
        };
        match launched {
            Ok((started, claim)) => Outcome::from(self.started(&task, started, claim)),
            Err(outcome) => outcome,
        }
    }

    /// Stops and removes the container of an older placement of a task that was placed here
    /// again (its node was declared lost while this copy ran on): the Task DB says the newer
    /// placement is current, and one node runs one copy of a task.
    async fn retire(
        &self,
        task: &Task,
        old: Placement,
        msg: &jetstream::Message,
    ) -> Result<(), Outcome> {
        let id = task.id;
        info!(
            generation = old.generation,
            "stopping the older copy to make way for the new placement"
        );
        let stopped = {
            let _progress = self.keep_alive(msg);
            self.runtime
                .stop(id, old.generation, self.cfg.stop_grace)
                .await
        };
        if let Err(e) = stopped {
            return Err(retire_failed(
                &self.cfg,
                task,
                old.generation,
                &e,
                delivered(msg),
            ));
        }
        self.drain_logs(id).await;
        self.remove_container(id, old.generation).await;
        self.tasks.retire(id, old.generation);
        Ok(())
    }

    /// A placement of a copy that runs here already (a redelivery, or a new leader sending
    /// again what it found `scheduled`): it is said again that it runs, with its health as
    /// last reported, so that a manager that lost the report learns it, and nothing else is
    /// done.
    fn runs_already(&self, task: &Task) -> Outcome {
        match self.tasks.status(task.id) {
            Some((p, health)) if p.generation == task.generation => {
                debug!("already running; said again");
                Outcome::from(
                    report(&self.cfg.name, task.id, task.generation)
                        .container(p.container_id, p.start_time)
                        .running(health),
                )
            }
            _ => no_claim(&self.cfg.name, task, NoClaim::Running, 1),
        }
    }

    /// Records a container that now runs for `task` under `claim`, with its health checks
    /// and its output follower.
    fn started(self: &Arc<Self>, task: &Task, started: Started, claim: Claim) -> StateReport {
        let checks = self.watch_health(task);
        let placement = Placement {
            generation: task.generation,
            container_id: started.container_id.clone(),
            start_time: Some(started.start_time),
        };
        self.tasks.run(claim, placement, checks);
        self.cfg.metrics.containers_started.inc();
        self.follow_logs(task.id, task.generation);
        info!(container = %started.container_id, "started");
        let health = task.health_check.as_ref().map(|_| Health::Starting);
        report(&self.cfg.name, task.id, task.generation)
            .container(started.container_id, Some(started.start_time))
            .running(health)
    }

    /// The task's record in the Task DB.
    async fn record(&self, id: Uuid) -> Result<Record, crate::task_db::ReadError> {
        let entry = self.task_db.record(id).await?;
        Ok(match entry {
            None => Record::Missing,
            Some(bytes) => match wire::decode_stored_task(&bytes) {
                Ok(task) => Record::Found(Box::new(task)),
                Err(e) => Record::Unreadable(e),
            },
        })
    }

    /// A container ended by itself: report it and clean up.
    pub(crate) async fn on_exit(&self, exit: Exit) {
        let span = info_span!(
            "exit",
            task.id = %exit.task_id,
            generation = exit.generation,
            worker = %self.cfg.name
        );
        async {
            let stop_requested = self.tasks.take_stop_request(exit.task_id, exit.generation);
            let running = self.tasks.running(exit.task_id);
            match exit_meaning(&exit, running, stop_requested) {
                ExitMeaning::Untracked => {
                    debug!("exit of a container this worker does not track; ignored");
                }
                ExitMeaning::Stopped => debug!("exit of a container being stopped"),
                ExitMeaning::Ended(placement) => {
                    info!(exit_code = exit.exit_code, container = %placement.container_id, "container exited");
                    self.finish(exit, placement).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Reports how the container of `placement` ended, forgets it and removes it.
    pub(crate) async fn finish(&self, exit: Exit, placement: Placement) {
        let task_id = exit.task_id;
        let generation = placement.generation;
        self.drain_logs(task_id).await;
        self.tasks.ended(task_id, generation);
        self.tasks.forget(task_id);
        let r = report(&self.cfg.name, task_id, generation)
            .container(placement.container_id, placement.start_time)
            .exited(exit);
        self.report(r).await;
        self.remove_container(task_id, generation).await;
    }

    /// Removes the container of a placement that has ended or was stopped.
    pub(crate) async fn remove_container(&self, task_id: Uuid, generation: u64) {
        if let Err(e) = self.runtime.remove(task_id, generation).await {
            warn!(error = %e, "removing the ended container");
        }
    }

    /// Starts publishing the output of the task's container (once per placement).
    pub(crate) fn follow_logs(&self, task_id: Uuid, generation: u64) {
        if !self.runtime.has_output() {
            return;
        }
        self.tasks.follow(task_id, generation, || {
            logs::follow(
                self.js.clone(),
                self.runtime.clone(),
                task_id,
                generation,
                &self.cfg.name,
                &self.logs_shutdown,
                &self.log_tracker,
            )
        });
    }

    /// Lets the output publisher of the task's ended container finish (see [`LOGS_DRAIN`]).
    pub(crate) async fn drain_logs(&self, task_id: Uuid) {
        if let Some(follower) = self.tasks.take_follower(task_id) {
            follower.drain(LOGS_DRAIN).await;
        }
    }
}

#[cfg(test)]
#[path = "work_tests.rs"]
mod tests;
