//! Submissions and stops (`tasks.events`): decoded, checked, recorded, and handed to
//! placement; what cannot be taken (unreadable, a conflict, beyond the [`super::limits`]) is
//! refused with a reason.

use chrono::{DateTime, Utc};
use cube_shared::subjects::{pending_for, EVENTS};
use cube_shared::wire::{self, encode};
use cube_shared::{JournalEntry, State, Task, TaskEvent};
use tracing::{debug, info_span};

use super::{cap, Rules, Work};
use crate::metrics::RejectKind;

impl Rules {
    /// A message from `tasks.events`, received at `now`.
    pub fn on_event(&mut self, subject: &str, payload: &[u8], now: DateTime<Utc>) {
        match wire::decode_event(payload) {
            Err(e) => {
                let reason = e.to_string();
                self.reject(
                    RejectKind::InvalidEvent,
                    payload,
                    subject,
                    reason.clone(),
                    now,
                );
                self.record_refused(payload, cap(reason), now);
            }
            Ok(event) => {
                let span = info_span!("event", event.id = %event.id, task.id = %event.task.id);
                let _entered = span.enter();
                if event.is_stop() {
                    self.stop(event, now)
                } else {
                    self.submit(event, now)
                }
            }
        }
    }

    fn submit(&mut self, event: TaskEvent, now: DateTime<Utc>) {
        let mut task = event.task.clone();
        task.normalise();
        if task.service.is_some() || task.service_version.is_some() {
            let reason = "task.service and task.service_version are set by Cube on copies of a \
                          service; deploy a service with `cube service deploy` instead"
                .to_string();
            return self.reject(
                RejectKind::InvalidEvent,
                &encode(&event),
                EVENTS,
                reason,
                now,
            );
        }
        if let Some(existing) = self.cluster.task(&task.id) {
            return match cube_shared::check_resubmission(existing, &task) {
                Ok(()) => {
                    // A redelivery or a repeated submission: make sure it progresses.
                    debug!("task already known");
                    self.ensure_progress(task.id, now)
                }
                Err(conflict) => {
                    let reason = conflict.to_string();
                    self.reject(RejectKind::Conflict, &encode(&event), EVENTS, reason, now)
                }
            };
        }
        if let Some(reason) = self.over_limit() {
            return self.reject(RejectKind::OverLimit, &encode(&event), EVENTS, reason, now);
        }
        task.reset_status();
        task.submitted_at = Some(now);
        self.journal(
            JournalEntry::new(
                "submitted",
                format!("{} ({})", task.display_name(), task.image),
            )
            .task(task.id)
            .event(event.id),
            now,
        );
        let id = task.id;
        self.save(task);
        self.awaiting_placement.insert(id, now);
        self.try_place(id, now);
    }

    fn stop(&mut self, event: TaskEvent, now: DateTime<Utc>) {
        let Some(task) = self.cluster.task(&event.task.id).cloned() else {
            let reason = format!("no task {} to stop", event.task.id);
            return self.reject(
                RejectKind::UnknownTask,
                &encode(&event),
                EVENTS,
                reason,
                now,
            );
        };
        self.request_stop(task, Some(&event), now);
    }

    /// Stops `task` (for the stop `event` a client sent, or for the rules' own reasons): it
    /// is never restarted, and its worker stops its current placement.
    pub(super) fn request_stop(
        &mut self,
        mut task: Task,
        event: Option<&TaskEvent>,
        now: DateTime<Utc>,
    ) {
        let event_id = event.map(|e| e.id);
        if !task.stop_requested {
            task.stop_requested = true;
            task.next_attempt_at = None;
            self.save(task.clone());
        }
        if let Some(old) = task.previous.as_ref().filter(|_| task.state.is_active()) {
            // Stopped while it moves: the copy it moves away from is stopped too, or it would
            // run on should the move fail.
            self.stop_copy(task.id, old.generation, &old.worker);
        }
        match (task.state, task.worker.clone()) {
            (State::Scheduled | State::Running, Some(worker)) => {
                // The worker stops exactly the current placement.
                let mut stop = match event {
                    Some(e) => e.clone(),
                    None => TaskEvent::stop_placement(task.id, task.generation),
                };
                stop.task.generation = task.generation;
                self.effects.work.push(Work {
                    subject: pending_for(&worker),
                    event: stop,
                });
                let mut entry =
                    JournalEntry::new("stop-requested", format!("asked {worker} to stop it"))
                        .task(task.id)
                        .worker(worker);
                entry.event_id = event_id;
                self.journal(entry, now);
            }
            (State::Pending, _) => {
                task.state = State::Completed;
                task.finish_time = Some(now);
                task.error = None;
                let mut entry =
                    JournalEntry::new("completed", "stopped before it was placed").task(task.id);
                entry.event_id = event_id;
                self.journal(entry, now);
                self.save(task);
            }
            // Queued on the shared queue: stopped once a worker reports where it runs.
            (state, _) => debug!(%state, "stop requested for a task that is not running"),
        }
    }

    /// A submission that was refused, but names a task id nobody uses yet, is recorded as a
    /// `failed` task whose error says why: `cube status <id>` then answers the sender.
    fn record_refused(&mut self, payload: &[u8], reason: String, now: DateTime<Utc>) {
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
        task.submitted_at = Some(now);
        task.finish_time = Some(now);
        task.error = Some(format!("rejected: {reason}"));
        self.save(task);
    }
}
