//! Restart policies: when a task that ended (or was lost) starts again, with exponential
//! backoff, preferring the node it ran on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::{JournalEntry, Task};

use super::Rules;
use crate::metrics::PlacementReason;
use crate::scheduler::Unschedulable;

/// The first restart waits this long; each further one twice as long, up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A task that ran this long before it ended starts its restart count afresh.
pub const HEALTHY_RUN_RESETS: Duration = Duration::from_secs(600);

/// The delay before restart number `count + 1`: 1 s, 2 s, 4 s, … capped at 5 minutes.
pub fn backoff(count: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(count.min(20)))
        .min(BACKOFF_CAP)
}

/// A task's container ended (or was lost) at `now`: if its policy wants it back, say when
/// (`immediately`: a lost node is not the task's fault, so no backoff).
pub(super) fn plan_restart(task: &mut Task, now: DateTime<Utc>, immediately: bool) {
    if let (Some(start), Some(end)) = (task.start_time, task.finish_time) {
        if (end - start)
            .to_std()
            .is_ok_and(|ran| ran >= HEALTHY_RUN_RESETS)
        {
            task.restart_count = 0;
        }
    }
    task.next_attempt_at = None;
    if !task.wants_restart(task.state) {
        return;
    }
    let delay = if immediately {
        Duration::ZERO
    } else {
        backoff(task.restart_count)
    };
    task.next_attempt_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
}

impl Rules {
    /// Starts again every task whose restart is due at `now`.
    pub(super) fn restart_due(&mut self, now: DateTime<Utc>) {
        for id in self.cluster.restarts_due(now) {
            if let Some(task) = self.cluster.task(&id).cloned() {
                self.restart(task, now);
            }
        }
    }

    fn restart(&mut self, mut task: Task, now: DateTime<Utc>) {
        let previous_worker = task.worker.clone();
        let worker = match self.choose(&task, previous_worker.as_deref()) {
            Ok(w) => w,
            Err(Unschedulable(reason)) => {
                let reason = format!("restart waits: {reason}");
                if task.error.as_deref() != Some(reason.as_str()) {
                    task.error = Some(reason);
                    self.save(task);
                }
                return;
            }
        };
        task.restart_count += 1;
        let n = task.restart_count;
        let (kind, message) = match (&previous_worker, &worker) {
            (Some(p), Some(w)) if p == w => ("restarted", format!("restart {n} on {w}")),
            (Some(p), Some(w)) => ("rescheduled", format!("restart {n} moved from {p} to {w}")),
            (_, Some(w)) => ("restarted", format!("restart {n} on {w}")),
            (_, None) => ("restarted", format!("restart {n} queued for any worker")),
        };
        let mut entry = JournalEntry::new(kind, message).task(task.id);
        entry.worker = worker.clone();
        self.journal(entry, now);
        task.next_attempt_at = None;
        self.metrics.restarts.inc();
        self.assign(task, worker, PlacementReason::Restart);
    }
}
