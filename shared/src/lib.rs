//! Cube's shared vocabulary: the model (Task, TaskEvent, State, Node), the wire format and
//! subject names that make up the public NATS contract, and validation. No I/O lives here.

mod node;
mod report;
pub mod schema;
mod state;
pub mod subjects;
mod submission;
mod task;
pub mod units;
pub mod validate;
pub mod wire;

pub use node::{Node, NodeState, Page, RunningTask, HEARTBEAT_PAGE};
pub use report::{
    ApiReply, DrainRequest, ForgetRequest, JournalEntry, ManagerInfo, ManagerRole, Rejection,
    StateReport, TaskList, TaskListQuery, TaskQuery,
};
pub use state::State;
pub use submission::{check_resubmission, task_with_optional_id, SpecConflict};
pub use task::{container_name, Constraint, Health, Placement, RestartPolicy, Task, TaskEvent};

/// Docker label carrying the task id on every container Cube starts.
pub const LABEL_TASK_ID: &str = "cube.task.id";
/// Docker label carrying the name of the worker that started the container.
pub const LABEL_WORKER: &str = "cube.worker";

/// Docker label carrying the task's placement generation: a container whose generation is
/// older than the Task DB's belongs to a placement that was superseded.
pub const LABEL_GENERATION: &str = "cube.task.generation";

/// Cube's version, reported in heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
