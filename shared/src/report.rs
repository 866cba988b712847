//! Messages other than TaskEvents: state reports, rejections, the journal and API replies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{State, Task};

/// A worker's account of what happened to a task. Workers are the source of truth for the
/// state of what they run; the manager applies these to the Task DB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateReport {
    pub task_id: Uuid,
    pub worker: String,
    pub state: State,
    pub timestamp: DateTime<Utc>,
    /// The placement generation the report is about; a report about a superseded placement
    /// is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// For a `running` report from a task with a health check: what the check found. Within
    /// a placement it only moves forward (`starting`, `healthy`, `unhealthy`): a report that
    /// would move it back is taken for a late redelivery and leaves it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StateReport {
    pub fn new(task_id: Uuid, worker: &str, state: State) -> StateReport {
        StateReport {
            task_id,
            worker: worker.to_string(),
            state,
            timestamp: Utc::now(),
            generation: None,
            health: None,
            container_id: None,
            start_time: None,
            finish_time: None,
            exit_code: None,
            error: None,
        }
    }
}

/// Whether `after` differs from `before` only in what a worker's `running` report says of the
/// same placement: it runs, its container and start time, its health. Such a change is status,
/// not a decision: the Task DB keeps the decision (`scheduled` on that worker) and the report
/// itself, kept in `CUBE_STATE` under `tasks.state.<task>.<worker>`, keeps the status.
pub fn is_status_only(before: &crate::Task, after: &crate::Task) -> bool {
    if after.state != crate::State::Running
        || !matches!(
            before.state,
            crate::State::Scheduled | crate::State::Running
        )
    {
        return false;
    }
    let mut status_applied = before.clone();
    status_applied.state = after.state;
    status_applied.container_id = after.container_id.clone();
    status_applied.start_time = after.start_time;
    status_applied.health = after.health;
    status_applied == *after
}

/// Published on `tasks.rejected` (and kept in the journal) for every event Cube refuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rejection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    pub subject: String,
    pub reason: String,
    pub timestamp: DateTime<Utc>,
}

/// One line of `cube events`: a decision or an observation, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JournalEntry {
    pub time: DateTime<Utc>,
    /// A short machine-readable word: submitted, rejected, scheduled, unschedulable, running,
    /// completed, failed, stop-requested, node-joined.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The service the decision concerns (`cube service history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
}

impl JournalEntry {
    pub fn new(kind: &str, message: impl Into<String>) -> JournalEntry {
        JournalEntry {
            time: Utc::now(),
            kind: kind.to_string(),
            task_id: None,
            event_id: None,
            worker: None,
            service: None,
            message: message.into(),
        }
    }

    pub fn service(mut self, name: &str) -> Self {
        self.service = Some(name.to_string());
        self
    }

    pub fn task(mut self, id: Uuid) -> Self {
        self.task_id = Some(id);
        self
    }

    pub fn event(mut self, id: Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    pub fn worker(mut self, name: impl Into<String>) -> Self {
        self.worker = Some(name.into());
        self
    }
}

/// The answer to a `cube.api.*` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiReply<T> {
    Ok(T),
    Error(String),
}

impl<T> ApiReply<T> {
    pub fn into_result(self) -> Result<T, String> {
        match self {
            ApiReply::Ok(v) => Ok(v),
            ApiReply::Error(e) => Err(e),
        }
    }
}

/// Request body of `cube.api.nodes.drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub name: String,
    /// `true` drains, `false` undrains.
    pub drain: bool,
}

/// Request body of `cube.api.nodes.forget`: a silent node to give up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    pub name: String,
}

/// Request body of `cube.api.tasks.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskQuery {
    /// A full task id, or a unique prefix of one, or a task name.
    pub id: String,
}

/// Request body of `cube.api.tasks.list` (all fields optional; an empty body is the default).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// Only tasks in this state.
    #[serde(default)]
    pub state: Option<State>,
    /// At most this many tasks, newest first (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Request body of `cube.api.nodes.list` (optional: an empty body, `null` or `{}` lists from
/// the first node). The reply is a list of nodes sorted by name, as many as fit in one NATS
/// message (about 2,000): to read them all, ask again with `after` set to the last name
/// received, until a reply is empty.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeListQuery {
    /// Only nodes whose name sorts after this one.
    #[serde(default)]
    pub after: Option<String>,
}

/// Reply of `cube.api.tasks.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskList {
    /// How many tasks matched; `tasks` may hold fewer.
    pub total: usize,
    pub tasks: Vec<Task>,
    /// How many tasks the manager knows in each state, whatever the query (states with
    /// none are left out), so that one request gives a list and its counts.
    #[serde(default)]
    pub counts: BTreeMap<State, usize>,
}

/// What a manager process is doing about the leadership lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ManagerRole {
    /// Holds the lease and acts: the one manager that places, stops and writes.
    Leader,
    /// Waits for the lease, writing nothing, ready to take over.
    Standby,
}

/// One manager's answer on [`MANAGERS`](crate::subjects::MANAGERS): every manager process,
/// leader or standby, answers, so a client that gathers answers for a moment sees them all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ManagerInfo {
    /// Unique per process: a restarted manager is a new one.
    pub id: Uuid,
    pub host: String,
    pub pid: u32,
    /// When the process started, on its own clock.
    pub started: DateTime<Utc>,
    pub role: ManagerRole,
    /// The leader's epoch: the revision at which it won the lease. A standby's is the epoch
    /// of the leader it last saw, if it could read the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Since when it has had this role, on its own clock.
    pub since: DateTime<Utc>,
    /// A standby's view of who holds the lease (`id, host, pid`), if it could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// How many times this process has taken the lease (the first time included).
    #[serde(default)]
    pub terms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Health, State, Task};

    fn placed() -> Task {
        let mut t = Task::new("app");
        t.state = State::Scheduled;
        t.worker = Some("w1".into());
        t.generation = 2;
        t
    }

    #[test]
    fn what_a_running_report_says_is_status_only() {
        let before = placed();
        let mut running = before.clone();
        running.state = State::Running;
        running.container_id = Some("c1".into());
        running.start_time = Some(Utc::now());
        assert!(is_status_only(&before, &running));
        let mut healthy = running.clone();
        healthy.health = Some(Health::Healthy);
        assert!(is_status_only(&running, &healthy));
    }

    #[test]
    fn a_decision_beside_the_status_is_not_status_only() {
        let before = placed();
        let mut running = before.clone();
        running.state = State::Running;
        let mut moved = running.clone();
        moved.worker = Some("w2".into());
        assert!(!is_status_only(&before, &moved), "another worker");
        let mut stopping = running.clone();
        stopping.stop_requested = true;
        assert!(!is_status_only(&before, &stopping), "a stop");
        let mut ended = before.clone();
        ended.state = State::Completed;
        assert!(!is_status_only(&before, &ended), "an end");
        let mut pending = before.clone();
        pending.state = State::Pending;
        assert!(!is_status_only(&pending, &running), "from pending");
    }
}
