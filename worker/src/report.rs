//! The worker's state reports, built one way: `report(worker, task, generation)`, then what
//! is known about the container, then the state it is in.

use chrono::{DateTime, Utc};
use cube_shared::{Health, State, StateReport};
use uuid::Uuid;

use crate::runtime::Exit;

/// A report about the placement `generation` of a task, not yet told its state.
#[must_use]
pub(crate) struct Report(StateReport);

pub(crate) fn report(worker: &str, task_id: Uuid, generation: u64) -> Report {
    let mut r = StateReport::new(task_id, worker, State::Running);
    r.generation = Some(generation);
    Report(r)
}

impl Report {
    /// The container it is about, so that a report tells the whole story even if the
    /// `running` report before it is applied late (a redelivery after a manager restart).
    pub(crate) fn container(
        mut self,
        id: impl Into<Option<String>>,
        start_time: Option<DateTime<Utc>>,
    ) -> Report {
        self.0.container_id = id.into();
        self.0.start_time = start_time;
        self
    }

    pub(crate) fn exit_code(mut self, code: Option<i64>) -> Report {
        self.0.exit_code = code;
        self
    }

    /// Runs, with what its health check found (`None`: it has none, or nothing new).
    pub(crate) fn running(mut self, health: Option<Health>) -> StateReport {
        self.0.health = health;
        self.0
    }

    /// Ended as asked (or before it started).
    pub(crate) fn completed(self) -> StateReport {
        self.ended(State::Completed, None, Utc::now())
    }

    /// Ended, or never started, because of `reason`.
    pub(crate) fn failed(self, reason: impl Into<String>) -> StateReport {
        self.ended(State::Failed, Some(reason.into()), Utc::now())
    }

    /// The container ended by itself: completed with code 0, failed otherwise.
    pub(crate) fn exited(self, exit: Exit) -> StateReport {
        let code = exit.exit_code;
        let (state, error) = match (code, exit.error) {
            (0, error) => (State::Completed, error),
            (_, Some(error)) => (State::Failed, Some(error)),
            (_, None) => (State::Failed, Some(format!("exited with code {code}"))),
        };
        self.exit_code(Some(code))
            .ended(state, error, exit.finish_time)
    }

    fn ended(mut self, state: State, error: Option<String>, at: DateTime<Utc>) -> StateReport {
        self.0.state = state;
        self.0.error = error;
        self.0.finish_time = Some(at);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i64, error: Option<&str>) -> Exit {
        Exit {
            task_id: Uuid::nil(),
            generation: 4,
            exit_code: code,
            error: error.map(str::to_string),
            finish_time: Utc::now(),
        }
    }

    #[test]
    fn every_report_names_its_placement() {
        let id = Uuid::new_v4();
        for r in [
            report("w", id, 7).running(None),
            report("w", id, 7).completed(),
            report("w", id, 7).failed("no"),
            report("w", id, 7).exited(exit(0, None)),
        ] {
            assert_eq!(
                (r.task_id, r.worker.as_str(), r.generation),
                (id, "w", Some(7))
            );
        }
    }

    #[test]
    fn running_carries_its_container_and_health() {
        let at = Utc::now();
        let r = report("w", Uuid::nil(), 1)
            .container("c1".to_string(), Some(at))
            .running(Some(Health::Starting));
        assert_eq!(r.state, State::Running);
        assert_eq!(r.container_id.as_deref(), Some("c1"));
        assert_eq!((r.start_time, r.health), (Some(at), Some(Health::Starting)));
        assert_eq!((r.finish_time, r.error), (None, None));
    }

    #[test]
    fn completed_and_failed_are_final_with_a_finish_time() {
        let done = report("w", Uuid::nil(), 1).exit_code(Some(143)).completed();
        assert_eq!(
            (done.state, done.exit_code, done.error),
            (State::Completed, Some(143), None)
        );
        assert!(done.finish_time.is_some());
        let failed = report("w", Uuid::nil(), 1).failed("refused");
        assert_eq!(failed.state, State::Failed);
        assert_eq!(failed.error.as_deref(), Some("refused"));
        assert!(failed.finish_time.is_some());
    }

    #[test]
    fn an_exit_is_judged_by_its_code() {
        let ok = report("w", Uuid::nil(), 4).exited(exit(0, None));
        assert_eq!(
            (ok.state, ok.exit_code, ok.error),
            (State::Completed, Some(0), None)
        );

        let bad = report("w", Uuid::nil(), 4).exited(exit(3, None));
        assert_eq!((bad.state, bad.exit_code), (State::Failed, Some(3)));
        assert_eq!(bad.error.as_deref(), Some("exited with code 3"));

        let oom = report("w", Uuid::nil(), 4).exited(exit(137, Some("out of memory")));
        assert_eq!(oom.state, State::Failed);
        assert_eq!(oom.error.as_deref(), Some("out of memory"));
    }
}
