//! Workers' state reports (`tasks.state.<task>.<worker>`). Workers are the source of truth for
//! what they run, but only the task's current placement may speak for it, and only legal
//! moves are taken. A report goes through three steps: [`authorise`] (may this worker say
//! this?), [`transition`] (what changes?) and [`Rules::after`] (what follows from the change).

use chrono::{DateTime, Utc};
use cube_shared::subjects;
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use cube_shared::{Health, JournalEntry, RestartPolicy, State, StateReport, Task};
use tracing::{debug, info, info_span, warn};

use super::Rules;
use crate::metrics::RejectKind;

/// How far ahead of the manager's clock a worker's times may be (clocks are never exactly in
/// step) before they are not believed.
pub(crate) const MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// Why a report changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ignored {
    UnknownTask,
    /// Another worker holds the task (or nobody asked this one).
    NotAssigned,
    /// About an older placement than the current one.
    Superseded,
    /// Workers report running, completed or failed only.
    NotAReportableState,
    /// The move is not legal from the recorded state (a late or repeated report).
    Stale,
}

/// What a report did to a task.
struct Change {
    before: Task,
    after: Task,
}

/// Whether `report` may speak for `task`; `Ok(true)` if the worker took it from the shared
/// queue and becomes its worker by saying so.
pub(crate) fn authorise(task: &Task, report: &StateReport) -> Result<bool, Ignored> {
    let from_queue = task.worker.is_none()
        && task.state == State::Scheduled
        && report.generation == Some(task.generation);
    if !from_queue && task.worker.as_deref() != Some(report.worker.as_str()) {
        return Err(Ignored::NotAssigned);
    }
    if report.generation.is_some_and(|g| g != task.generation) {
        return Err(Ignored::Superseded);
    }
    if !matches!(
        report.state,
        State::Running | State::Completed | State::Failed
    ) {
        return Err(Ignored::NotAReportableState);
    }
    Ok(from_queue)
}

/// What the report means under the task's restart policy: a task that should always run has
/// failed to keep running when it completes, whatever its code.
pub(crate) fn interpret(task: &Task, mut report: StateReport) -> StateReport {
    if report.state == State::Completed
        && task.restart_policy == RestartPolicy::Always
        && !task.stop_requested
    {
        report.state = State::Failed;
        report.error = report.error.or(Some(format!(
            "exited with code {} (restart policy always)",
            report.exit_code.unwrap_or(0)
        )));
    }
    report
}

/// The task as the report leaves it, if the move is legal.
fn transition(task: &Task, report: &StateReport) -> Result<Task, Ignored> {
    if report.state != task.state && !task.state.can_transition_to(report.state) {
        return Err(Ignored::Stale);
    }
    let mut t = task.clone();
    t.state = report.state;
    if report.state == State::Running {
        t.health = Health::advance(t.health, report.health);
    }
    t.container_id = report.container_id.clone().or(t.container_id);
    t.start_time = report.start_time.or(t.start_time);
    t.finish_time = report.finish_time.or(t.finish_time);
    t.exit_code = report.exit_code.or(t.exit_code);
    if report.state != State::Running {
        t.error = report.error.clone();
    }
    Ok(t)
}

impl Rules {
    /// A message from the state stream, received at `now`.
    pub fn on_report(&mut self, subject: &str, payload: &[u8], now: DateTime<Utc>) {
        let report = match wire::decode::<StateReport>(payload, MAX_MESSAGE_BYTES) {
            Err(e) => {
                let reason = format!("state report: {e}");
                return self.reject(RejectKind::InvalidReport, payload, subject, reason, now);
            }
            Ok(report) => report,
        };
        if subject != subjects::state_for(report.task_id, &report.worker) {
            let reason = format!(
                "state report for task {} by {} sent on {subject}",
                report.task_id, report.worker
            );
            return self.reject(RejectKind::WrongSubject, payload, subject, reason, now);
        }
        let span = info_span!("report", task.id = %report.task_id, worker = %report.worker);
        let _entered = span.enter();
        if report.state != State::Running {
            // A lost copy that ended cannot be kept when its node comes back.
            self.forget_lost(&report);
        }
        if let Err(why) = self.apply_report(report, now) {
            match why {
                Ignored::UnknownTask => warn!("report for an unknown task"),
                Ignored::NotAssigned => {
                    warn!("report from a worker the task is not assigned to; ignored")
                }
                Ignored::NotAReportableState => {
                    warn!("workers report running, completed or failed only")
                }
                Ignored::Superseded => info!("report about a superseded placement; ignored"),
                Ignored::Stale => debug!("stale report ignored"),
            }
        }
    }

    /// A report kept in `CUBE_STATE` (the last of its subject), read back by a manager that
    /// starts leading, in the order stored. It is applied as if delivered again, since it may
    /// not have been handled (applying a report twice changes nothing), except that a change
    /// of status alone, which the leader that handled it journalled and did not store, is not
    /// journalled again. Unreadable reports are left to the consumer, which rejects them.
    /// Returns `false` if the task is not known (forgotten): its reports may go.
    pub fn replay_report(&mut self, subject: &str, payload: &[u8], now: DateTime<Utc>) -> bool {
        let Ok(report) = wire::decode::<StateReport>(payload, MAX_MESSAGE_BYTES) else {
            return true;
        };
        if subject != subjects::state_for(report.task_id, &report.worker) {
            return true;
        }
        let Some(before) = self.cluster.task(&report.task_id).cloned() else {
            return false;
        };
        let journalled = self.effects.journal.len();
        if report.state != State::Running {
            self.forget_lost(&report);
        }
        if let Err(why) = self.apply_report(report, now) {
            debug!(?why, "kept report changes nothing");
        }
        let status_only = self
            .cluster
            .task(&before.id)
            .is_some_and(|after| cube_shared::is_status_only(&before, after));
        if status_only {
            self.effects.journal.truncate(journalled);
        }
        true
    }

    /// Applies a decoded report.
    pub(crate) fn apply_report(
        &mut self,
        report: StateReport,
        now: DateTime<Utc>,
    ) -> Result<(), Ignored> {
        let mut task = self
            .cluster
            .task(&report.task_id)
            .cloned()
            .ok_or(Ignored::UnknownTask)?;
        if is_about_previous(&task, &report) {
            self.previous_ended(task, &report, now);
            return Ok(());
        }
        if authorise(&task, &report)? {
            // A worker took the task from the shared queue: it is now the task's worker.
            task.worker = Some(report.worker.clone());
        }
        let report = self.within_clock(interpret(&task, report), now);
        if report.state == State::Failed && task.previous.is_some() {
            let reason = report.error.as_deref().unwrap_or("it failed");
            self.move_failed(task, &report.worker, reason, now);
            return Ok(());
        }
        let after = transition(&task, &report)?;
        if after != task {
            self.after(
                Change {
                    before: task,
                    after,
                },
                &report.worker,
                now,
            );
        }
        Ok(())
    }

    /// The report with its times no later than the manager's clock allows: a worker's time
    /// more than [`MAX_CLOCK_AHEAD`] ahead (a wrong clock, or a lie) is replaced by the
    /// manager's, and the node journalled (at most once a minute).
    fn within_clock(&mut self, mut report: StateReport, now: DateTime<Utc>) -> StateReport {
        let limit = now + chrono::Duration::from_std(MAX_CLOCK_AHEAD).unwrap_or_default();
        let mut ahead = None;
        for time in [&mut report.start_time, &mut report.finish_time] {
            if let Some(t) = time.filter(|t| *t > limit) {
                ahead = Some(t);
                *time = Some(now);
            }
        }
        if let Some(t) = ahead {
            let message = format!(
                "{} reports a time {}s ahead of the manager's clock; the manager's time is recorded",
                report.worker,
                (t - now).num_seconds()
            );
            warn!(worker = %report.worker, "{message}");
            self.doubted_report(&report.worker, message, now);
        }
        report
    }

    /// What follows a change: journal entries, the old copy of a moved task stopped, a stop
    /// forwarded to where a queued task turned up, a restart planned, room freed for others.
    fn after(&mut self, change: Change, worker: &str, now: DateTime<Utc>) {
        let Change { before, mut after } = change;
        if after.state == State::Running && after.health != before.health {
            if let Some(h) = after.health {
                self.journal(
                    JournalEntry::new(h.as_str(), format!("health check on {worker}"))
                        .task(after.id)
                        .worker(worker),
                    now,
                );
            }
        }
        let started = after.state == State::Running && before.state != State::Running;
        if started {
            // Its worker has from now until TTL + grace to list it in a heartbeat.
            self.hearing.touch(after.id);
        }
        if started && after.previous.is_some() {
            self.replacement_running(&mut after, now);
        }
        if started && after.stop_requested {
            // Stopped while it waited in the shared queue: now we know where it runs.
            self.stop_copy(after.id, after.generation, worker);
        }
        if !after.state.is_active() && before.state.is_active() {
            if let Some(old) = after.previous.take() {
                // It ended (stopped, say) while moving: the copy it was moving away from goes.
                self.stop_copy(after.id, old.generation, &old.worker);
            }
            super::plan_restart(&mut after, now, false);
        }
        if before.state != after.state {
            let mut message = match (&after.exit_code, &after.error) {
                (_, Some(err)) => err.clone(),
                (Some(code), None) if after.state != State::Running => format!("exit code {code}"),
                _ => format!("on {worker}"),
            };
            if let Some(at) = after.next_attempt_at {
                let wait = (at - now).num_milliseconds().max(0) as f64 / 1000.0;
                message.push_str(&format!(
                    "; restart {} in {wait:.1}s",
                    after.restart_count + 1
                ));
            }
            self.journal(
                JournalEntry::new(after.state.as_str(), message)
                    .task(after.id)
                    .worker(worker),
                now,
            );
        }
        let freed = before.state.is_active() && !after.state.is_active();
        self.save(after);
        if freed {
            self.place_pending(now);
        }
    }

    /// The new placement of a moving task failed on `worker` (`reason`): the task stays where
    /// it was, on the copy it was moving away from.
    pub(super) fn move_failed(
        &mut self,
        mut task: Task,
        worker: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) {
        let Some(old) = task.previous.take() else {
            return;
        };
        self.journal(
            JournalEntry::new(
                "move-failed",
                format!(
                    "the copy on {worker} failed ({reason}); staying on {}",
                    old.worker
                ),
            )
            .task(task.id)
            .worker(worker),
            now,
        );
        task.worker = Some(old.worker);
        // The failed placement's generation is not given again.
        task.highest_generation = task.generation.max(task.highest_generation);
        task.generation = old.generation;
        task.state = State::Running;
        task.container_id = None;
        self.save(task);
    }

    /// The copy a moving task was moving away from ended by itself before the new one ran:
    /// there is nothing to fall back to any more, and the move goes on.
    fn previous_ended(&mut self, mut task: Task, report: &StateReport, now: DateTime<Utc>) {
        if !matches!(report.state, State::Completed | State::Failed) {
            return;
        }
        let Some(old) = task.previous.take() else {
            return;
        };
        self.journal(
            JournalEntry::new(
                "moving",
                format!(
                    "the copy on {} ended ({}); the move goes on",
                    old.worker, report.state
                ),
            )
            .task(task.id)
            .worker(&old.worker),
            now,
        );
        self.save(task);
    }
}

/// Whether `report` is about the copy a moving task is moving away from.
fn is_about_previous(task: &Task, report: &StateReport) -> bool {
    task.previous
        .as_ref()
        .is_some_and(|p| p.worker == report.worker && report.generation == Some(p.generation))
}
