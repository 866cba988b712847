//! Cube's shared vocabulary: the model (Task, TaskEvent, State, Node), the wire format and
//! subject names that make up the public NATS contract, and validation. No I/O lives here.

pub mod body;
mod node;
mod report;
pub mod schema;
pub mod secret;
pub mod service;
mod state;
pub mod subjects;
mod submission;
mod task;
pub mod token;
pub mod units;
pub mod validate;
pub mod wire;

pub use node::{Node, NodeState, Page, RunningTask, HEARTBEAT_PAGE};
pub use report::{
    is_status_only, ApiReply, DrainRequest, ForgetRequest, JournalEntry, ManagerInfo, ManagerRole,
    NodeListQuery, Rejection, StateReport, TaskList, TaskListQuery, TaskQuery,
};
pub use secret::{EnvVar, SecretValue};
pub use service::{
    Endpoint, Endpoints, Rollout, RolloutState, Service, ServiceAction, ServiceEvent, ServiceKind,
    ServiceSpec, ServiceStatus, UpdatePolicy,
};
pub use state::State;
pub use submission::{check_resubmission, task_with_optional_id, SpecConflict};
pub use task::{
    container_name, Constraint, Health, Placement, RestartPolicy, Task, TaskEvent, NODE_NAME_KEY,
};

/// Docker label carrying the task id on every container Cube starts.
pub const LABEL_TASK_ID: &str = "cube.task.id";
/// Docker label carrying the name of the worker that started the container.
pub const LABEL_WORKER: &str = "cube.worker";

/// Docker label carrying the task's placement generation: a container whose generation is
/// older than the Task DB's belongs to a placement that was superseded.
pub const LABEL_GENERATION: &str = "cube.task.generation";

/// Docker label carrying the name of the service a container is a copy of.
pub const LABEL_SERVICE: &str = "cube.service";
/// Docker label carrying the version of the service's template the container runs.
pub const LABEL_SERVICE_VERSION: &str = "cube.service.version";

/// Cube's version, reported in heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
