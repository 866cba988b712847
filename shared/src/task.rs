//! Task and TaskEvent: the unit of work and a request to move it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::State;

mod policy;
pub use policy::{Constraint, Health, RestartPolicy, NODE_NAME_KEY};

/// One placement of a task: which worker, which generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Placement {
    pub worker: String,
    pub generation: u64,
}

/// The smallest unit of work: one container. The first group of fields is the specification
/// a client sends; the second is what Cube records about the task's life. A client may send
/// the second group, but the manager resets it on submission. The Task DB stores a task at each
/// decision about it: one that runs stays stored `scheduled` until the next, and its status
/// (running, container, start time, health) is its worker's last report in `CUBE_STATE`; the
/// manager's answers (`cube.api.tasks.*`) give the two merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: Uuid,
    #[serde(default)]
    pub name: String,
    #[serde(default = "pending")]
    pub state: State,
    /// Required when submitting; absent in a stop request.
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings, or `{"name": "KEY", "secret": "NAME"}` for a secret's value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<crate::EnvVar>,
    /// Cores, fractional.
    #[serde(default)]
    pub cpu: f64,
    /// Bytes; 0 means the worker's default limit.
    #[serde(default)]
    pub memory: u64,
    /// Bytes of disk the task reserves on its node.
    #[serde(default)]
    pub disk: u64,
    /// Container ports, `"80/tcp"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// Container port → host port (`"8080"` or `"127.0.0.1:8080"`). A host address or a
    /// privileged port (below 1024) is refused unless the worker allows it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_bindings: BTreeMap<String, String>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Host bind mounts (`/host/path:/container/path[:ro]`) or named volumes
    /// (`name:/container/path[:ro]`). Host paths are refused unless the worker allows them
    /// (those that reach the Docker socket, the engine or `/proc` need it to allow the socket).
    /// A named volume is the task's own (shared by a service's copies on a worker) unless the
    /// worker allows shared volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// Docker's network mode: `bridge` (default), `none`, or `host` (if the worker allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// `host` to share the host's PID namespace (if the worker allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    /// `host` to share the host's IPC namespace (if the worker allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,
    /// Run privileged (if the worker allows it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Linux capabilities to add, e.g. `NET_ADMIN` (if the worker allows it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Host devices, e.g. `/dev/fuse` (if the worker allows it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Where the task may run: `key=value` or `key!=value` on the workers' labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// How many times Cube restarts the task after it ends (per its policy) before it leaves
    /// it `failed`. Default: 3 for `on-failure`, unlimited for `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// `/path`: an HTTP GET on the first exposed port must answer 2xx or 3xx. Anything else: a
    /// command run in the container with `sh -c`, which must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
    /// How often the check runs (default 5s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::opt_duration"
    )]
    #[schemars(with = "Option<crate::schema::WireDuration>")]
    pub health_interval: Option<Duration>,
    /// How long one check may take (default 2s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::opt_duration"
    )]
    #[schemars(with = "Option<crate::schema::WireDuration>")]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures that make the task unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_retries: Option<u32>,
    /// How long a started task has to pass its first check before it counts as failed
    /// (default 30s). Failures before the first success only count after it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::opt_duration"
    )]
    #[schemars(with = "Option<crate::schema::WireDuration>")]
    pub health_grace: Option<Duration>,
    /// Set by Cube on a copy of a service (`cube service`): the service's name. A submitted
    /// task may not carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Set by Cube on a copy of a service: the version of the service's template it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_version: Option<u64>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub restart_count: u32,
    /// When the manager will start the task again (restart policy, with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The outcome of the health check, for a task that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Shown, never stored: the task's node has been silent for longer than its TTL, so
    /// whether the task still runs is unknown (`cube status` shows `unknown (node
    /// unreachable)`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_unreachable: bool,
    /// While a task moves (drain): the placement it moves from, stopped once the new one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Placement>,
    /// Someone asked for the task to stop: it is never restarted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_requested: bool,
    /// How many times the manager has placed this task. Each placement is a new assignment;
    /// the TaskEvent that carries it has an id derived from the task id and this number.
    #[serde(default)]
    pub generation: u64,
    /// Set only while the task runs an older placement than its last one (a move off a
    /// draining node failed and it stayed where it was): the highest generation it was given.
    /// The next placement goes past it, because a generation is never given twice (the work's
    /// message id and the workers' memory of ended placements are keyed by it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub highest_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The last error: why the task failed, or why it cannot be placed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the manager first accepted the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn pending() -> State {
    State::Pending
}

impl Task {
    /// A task with just an id and an image; everything else at its default.
    pub fn new(image: impl Into<String>) -> Task {
        Task {
            id: Uuid::new_v4(),
            name: String::new(),
            state: State::Pending,
            image: image.into(),
            cmd: Vec::new(),
            env: Vec::new(),
            cpu: 0.0,
            memory: 0,
            disk: 0,
            exposed_ports: Vec::new(),
            port_bindings: BTreeMap::new(),
            restart_policy: RestartPolicy::No,
            mounts: Vec::new(),
            network_mode: None,
            pid_mode: None,
            ipc_mode: None,
            privileged: false,
            cap_add: Vec::new(),
            devices: Vec::new(),
            constraints: Vec::new(),
            max_restarts: None,
            health_check: None,
            health_interval: None,
            health_timeout: None,
            health_retries: None,
            health_grace: None,
            service: None,
            service_version: None,
            container_id: None,
            worker: None,
            start_time: None,
            finish_time: None,
            restart_count: 0,
            next_attempt_at: None,
            health: None,
            node_unreachable: false,
            previous: None,
            stop_requested: false,
            generation: 0,
            highest_generation: 0,
            exit_code: None,
            error: None,
            submitted_at: None,
        }
    }

    /// Forget everything a previous life recorded: what a fresh submission starts from.
    pub fn reset_status(&mut self) {
        self.state = State::Pending;
        self.container_id = None;
        self.worker = None;
        self.start_time = None;
        self.finish_time = None;
        self.restart_count = 0;
        self.next_attempt_at = None;
        self.health = None;
        self.node_unreachable = false;
        self.previous = None;
        self.stop_requested = false;
        self.generation = 0;
        self.highest_generation = 0;
        self.exit_code = None;
        self.error = None;
        self.submitted_at = None;
    }

    /// Whether two tasks ask for the same thing (their specifications are equal), whatever
    /// their recorded histories.
    pub fn same_spec(&self, other: &Task) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        a.reset_status();
        b.reset_status();
        a == b
    }

    /// Writes ports in one form: `80` becomes `80/tcp`, and every bound port is exposed.
    /// Call after validation; unparsable entries are left as they are.
    pub fn normalise(&mut self) {
        let norm = |p: &String| crate::validate::parse_container_port(p).unwrap_or(p.clone());
        let mut exposed: Vec<String> = self.exposed_ports.iter().map(norm).collect();
        self.port_bindings = std::mem::take(&mut self.port_bindings)
            .into_iter()
            .map(|(k, v)| (norm(&k), v))
            .collect();
        for k in self.port_bindings.keys() {
            if !exposed.contains(k) {
                exposed.push(k.clone());
            }
        }
        exposed.dedup();
        self.exposed_ports = exposed;
    }

    /// The Docker container name of this task's current placement. Derived from the id and
    /// the placement generation, so that a redelivered start finds the container it already
    /// created instead of making another, while a new placement (a restart, a move to another
    /// worker on the same engine) gets its own.
    pub fn container_name(&self) -> String {
        container_name(self.id, self.generation)
    }

    /// A name for tables: the task's name or, without one, the start of its id.
    /// The task's constraints, parsed (validation guarantees they parse).
    pub fn parsed_constraints(&self) -> Vec<Constraint> {
        self.constraints
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// How many restarts the policy allows in all (`None`: no limit).
    pub fn restart_limit(&self) -> Option<u32> {
        match self.restart_policy {
            RestartPolicy::No => Some(0),
            RestartPolicy::OnFailure => Some(self.max_restarts.unwrap_or(3)),
            RestartPolicy::Always => self.max_restarts,
        }
    }

    /// Whether the policy asks for a restart after the container ended with `state`.
    pub fn wants_restart(&self, ended: State) -> bool {
        let policy_says = match self.restart_policy {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => ended == State::Failed,
            RestartPolicy::Always => true,
        };
        policy_says
            && !self.stop_requested
            && self
                .restart_limit()
                .is_none_or(|limit| self.restart_count < limit)
    }

    /// The state as people are shown it: a task whose node is silent is of unknown state.
    pub fn shown_state(&self) -> String {
        if self.node_unreachable && self.state.is_active() {
            "unknown (node unreachable)".to_string()
        } else {
            self.state.to_string()
        }
    }

    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            self.id.to_string()[..8].to_string()
        } else {
            self.name.clone()
        }
    }
}

pub fn container_name(task_id: Uuid, generation: u64) -> String {
    format!("cube-{task_id}-{generation}")
}

/// A request to move a task to a state: `running` submits it, `completed` stops it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::no_default_timestamp)]
pub struct TaskEvent {
    pub id: Uuid,
    /// `running` submits the task, `completed` stops it.
    pub state: State,
    /// When the client sent it; the time of receipt if absent.
    #[serde(default = "Utc::now")]
    pub timestamp: DateTime<Utc>,
    pub task: Task,
    /// On work (placements and stops the manager sends a worker): the epoch of the manager
    /// that sent it, the revision at which it won the leadership lease. A worker refuses work
    /// from an epoch older than the newest it has seen: a deposed manager's. Ignored on
    /// submissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// On a placement only: the values of the secrets the task's environment names, put in
    /// by the manager as it sends the placement (they are in no stored record). A
    /// submission that carries any is refused.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: crate::secret::SecretValues,
}

impl TaskEvent {
    pub fn submit(task: Task) -> TaskEvent {
        TaskEvent {
            id: Uuid::new_v4(),
            state: State::Running,
            timestamp: Utc::now(),
            task,
            epoch: None,
            secrets: Default::default(),
        }
    }

    /// A stop request carries only the task's id.
    pub fn stop(task_id: Uuid) -> TaskEvent {
        let mut task = Task::new("");
        task.id = task_id;
        TaskEvent {
            id: Uuid::new_v4(),
            state: State::Completed,
            timestamp: Utc::now(),
            task,
            epoch: None,
            secrets: Default::default(),
        }
    }

    /// The event that hands a task's current placement to its worker. Its id is derived from
    /// the task id and the placement generation, so publishing it twice (say, after a manager
    /// restart) is recognised as a duplicate by JetStream and by the worker.
    pub fn placement(task: &Task) -> TaskEvent {
        let name = format!("placement-{}", task.generation);
        TaskEvent {
            id: Uuid::new_v5(&task.id, name.as_bytes()),
            state: State::Running,
            timestamp: Utc::now(),
            task: task.clone(),
            epoch: None,
            secrets: Default::default(),
        }
    }

    /// The manager's own request to stop placement `generation` of task `id` (a service
    /// copy it no longer wants): its id derives from both, so a repeat is recognised.
    pub fn stop_placement(id: Uuid, generation: u64) -> TaskEvent {
        let mut stop = TaskEvent::stop(id);
        stop.id = Uuid::new_v5(&id, format!("stop-{generation}").as_bytes());
        stop.task.generation = generation;
        stop
    }

    pub fn is_stop(&self) -> bool {
        self.state == State::Completed
    }
}
