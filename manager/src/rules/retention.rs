//! Bounded state: a task that ended for good (completed, or failed with no restart to come)
//! stays in the manager's memory and the Task DB for [`Timings::keep_ended`], and at most
//! [`Timings::keep_ended_max`] of them are kept (the longest ended go first); then it is
//! forgotten. What the journal says of it outlives it, until the journal's own limits.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::units::format_duration;
use cube_shared::{JournalEntry, State, Task};
use uuid::Uuid;

use super::Rules;
use crate::cluster::Cluster;

/// How often the ended tasks are looked over. Every 10 s, at 1,000 tasks a second, a sweep
/// deleted 10,000 records in one commit and held placements back: p99 submit → running went
/// from 25 ms to 300–400 ms (`cube bench soak`). A sweep every second forgets a second's
/// worth, and the writer deletes their records a few at a time (`writer::forgetting::CHUNK`).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether `task` ended for good and nothing still looks at it (a batch service counts its
/// copies' completions until the service goes).
fn forgettable(task: &Task, cluster: &Cluster) -> bool {
    let ended = match task.state {
        State::Completed => true,
        State::Failed => task.next_attempt_at.is_none(),
        _ => false,
    };
    let watched = task
        .service
        .as_deref()
        .is_some_and(|s| cluster.copies_of(s).any(|id| id == task.id));
    ended && !watched
}

/// When `task` ended, as far as its record says (`None`: it does not).
fn ended_at(task: &Task) -> Option<DateTime<Utc>> {
    task.finish_time.or(task.submitted_at)
}

/// The tasks to forget at `now`: those ended before `now - keep`, and the longest ended
/// beyond the newest `max` (a task with no time in its record counts as the oldest).
pub fn to_forget<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    cluster: &Cluster,
    now: DateTime<Utc>,
    keep: Duration,
    max: usize,
) -> Vec<Uuid> {
    let mut ended: Vec<(Option<DateTime<Utc>>, Uuid)> = tasks
        .filter(|t| forgettable(t, cluster))
        .map(|t| (ended_at(t), t.id))
        .collect();
    ended.sort_unstable();
    let cutoff = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|keep| now.checked_sub_signed(keep));
    let over = ended.len().saturating_sub(max);
    ended
        .into_iter()
        .enumerate()
        .filter(|(i, (at, _))| *i < over || matches!((at, cutoff), (Some(at), Some(c)) if *at <= c))
        .map(|(_, (_, id))| id)
        .collect()
}

impl Rules {
    /// Forgets, at most every [`SWEEP_EVERY`], what [`to_forget`] names: from memory at once,
    /// from the Task DB with the effects, with one journal entry for all of them.
    pub(super) fn forget_ended(&mut self, now: DateTime<Utc>) {
        let due = self
            .last_sweep
            .is_none_or(|at| now < at || (now - at).to_std().is_ok_and(|gap| gap >= SWEEP_EVERY));
        if !due {
            return;
        }
        self.last_sweep = Some(now);
        let (keep, max) = (self.timings.keep_ended, self.timings.keep_ended_max);
        let forget = to_forget(self.cluster.tasks(), &self.cluster, now, keep, max);
        if forget.is_empty() {
            return;
        }
        for id in &forget {
            self.cluster.remove_task(id);
            self.lost.remove(id);
        }
        self.fenced.retain(|(id, _), _| !forget.contains(id));
        let kept = self.cluster.count_by_state();
        let ended_kept = kept[State::Completed as usize] + kept[State::Failed as usize];
        let message = format!(
            "forgot {} tasks that ended over {} ago or beyond the newest {max} ended ({ended_kept} ended tasks kept); their journal entries remain",
            forget.len(),
            format_duration(keep),
        );
        self.journal(JournalEntry::new("forgotten", message), now);
        self.effects.forgotten.extend(forget);
    }
}
