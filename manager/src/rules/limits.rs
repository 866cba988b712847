//! Bounded state, the live side: how many tasks may be live at once, and how full the Task DB
//! may grow, before new submissions are refused. [`super::retention`] bounds the ended side.
//!
//! A refusal is a rejection like any other (`tasks.rejected` and a `rejected` journal entry
//! naming the task, the submission acknowledged and not delivered again); what already runs
//! carries on, and once tasks end (and ended ones are forgotten) submissions are taken again.
//! That is the alternative to the wedge of a full store, where every write fails.

use cube_shared::units::format_bytes;
use cube_shared::State;

use super::Rules;

/// The default of `cube manager --max-tasks`. A live task costs one Task DB record (about
/// 1 KiB for a typical task; see the README, "Bounded state") and a few KiB of the
/// manager's memory: 100,000 live tasks plus the 50,000 ended ones `--keep-ended-max` keeps
/// are about 150 MiB of the Task DB's 1 GiB ([`crate::topology::TASK_DB_MAX_BYTES`]), which
/// leaves room for larger tasks, whose bytes [`StoreUse`] bounds in its own right.
pub const DEFAULT_MAX_TASKS: usize = 100_000;

/// Beyond this share of the Task DB's byte limit (in percent), submissions are refused: the
/// rest is room for the records of tasks already taken as they move on, so that a full
/// bucket never refuses the manager's own writes.
pub const TASK_DB_FULL_PERCENT: u64 = 80;

/// How many bytes a bucket holds, of how many it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUse {
    pub bytes: u64,
    pub max_bytes: u64,
}

impl StoreUse {
    /// At or beyond [`TASK_DB_FULL_PERCENT`] of its limit (never, with no limit).
    pub fn is_full(&self) -> bool {
        self.max_bytes > 0
            && u128::from(self.bytes) * 100
                >= u128::from(self.max_bytes) * u128::from(TASK_DB_FULL_PERCENT)
    }
}

impl Rules {
    /// What the shell read of the Task DB's size (`None`: it could not).
    pub fn set_task_db_use(&mut self, used: Option<StoreUse>) {
        self.task_db = used;
    }

    /// Live tasks: pending, scheduled, running, or failed with a restart to come; services'
    /// copies count like any other task.
    pub fn live_tasks(&self) -> usize {
        let by_state = self.cluster.count_by_state();
        [State::Pending, State::Scheduled, State::Running]
            .iter()
            .map(|s| by_state[*s as usize])
            .sum::<usize>()
            + self.cluster.restarting_count()
    }

    /// Why a new task cannot be taken now, if it cannot.
    pub(super) fn over_limit(&self) -> Option<String> {
        let live = self.live_tasks();
        let max = self.timings.max_tasks;
        if live >= max {
            return Some(format!(
                "refused: {live} tasks are live (pending, scheduled, running or waiting to restart), \
                 the most `cube manager --max-tasks` allows ({max}); submit it again once some have ended"
            ));
        }
        let used = self.task_db.filter(StoreUse::is_full)?;
        Some(format!(
            "refused: the Task DB holds {} of its {} limit ({TASK_DB_FULL_PERCENT} % or more); \
             submit it again once tasks have ended and been forgotten (`cube manager --keep-ended`)",
            format_bytes(used.bytes),
            format_bytes(used.max_bytes),
        ))
    }
}
