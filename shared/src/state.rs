//! The life of a task as a small state machine.
//!
//! The legal moves follow the book: `pending → scheduled → running → completed | failed`,
//! with `running → scheduled` and `failed → scheduled` for rescheduling. Cube adds one move the
//! book lacks: a task that is stopped before it ever ran (`pending` or `scheduled`) ends
//! `completed`, which is what a user who cancels a queued job expects.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a task is in its life. On the wire: lowercase strings.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Scheduled,
    Running,
    Completed,
    Failed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Scheduled,
        State::Running,
        State::Completed,
        State::Failed,
    ];

    /// Whether a task may move from `self` to `to`. Staying put is not a transition.
    pub fn can_transition_to(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Pending, Scheduled)
                | (Pending, Completed)
                | (Scheduled, Running)
                | (Scheduled, Failed)
                | (Scheduled, Completed)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Scheduled)
                | (Failed, Scheduled)
        )
    }

    /// A terminal state never changes again (a failed task may still be rescheduled by the
    /// manager, which is a new decision, not a report).
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed)
    }

    /// The task holds (or is about to hold) resources on a worker.
    pub fn is_active(self) -> bool {
        matches!(self, State::Scheduled | State::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Scheduled => "scheduled",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown state `{s}`: expected pending, scheduled, running, completed or failed")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    #[test]
    fn legal_moves_are_exactly_the_documented_ones() {
        let legal = [
            (Pending, Scheduled),
            (Pending, Completed),
            (Scheduled, Running),
            (Scheduled, Failed),
            (Scheduled, Completed),
            (Running, Completed),
            (Running, Failed),
            (Running, Scheduled),
            (Failed, Scheduled),
        ];
        for from in State::ALL {
            for to in State::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn completed_is_final() {
        for to in State::ALL {
            assert!(!Completed.can_transition_to(to));
        }
    }

    #[test]
    fn wire_form_is_lowercase() {
        assert_eq!(serde_json::to_string(&Running).unwrap(), "\"running\"");
        assert!(serde_json::from_str::<State>("\"Running\"").is_err());
        assert_eq!("failed".parse::<State>().unwrap(), Failed);
    }
}
