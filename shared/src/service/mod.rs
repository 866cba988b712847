//! Services: a named desired state (a task template, a count, an update policy and a kind)
//! that the manager keeps true by placing and stopping copies of the template. The events
//! that change one travel on `services.events`; the manager records each service in the Task
//! DB under `service.<name>`.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Task;

mod status;
mod validate;
pub use status::{CopyStatus, Endpoint, Endpoints, ServiceQuery, ServiceStatus};
pub use validate::{
    decode_service_event, spec_from_json, validate_service_event, validate_service_name,
    validate_spec,
};

/// What a service keeps true.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// `count` copies running; any that ends is replaced.
    #[default]
    Service,
    /// `count` copies run to successful completion; a failed copy is replaced up to
    /// `max_failures` times.
    Batch,
    /// One copy on every eligible node, including nodes that join later.
    System,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Service => "service",
            ServiceKind::Batch => "batch",
            ServiceKind::System => "system",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "service" => Ok(ServiceKind::Service),
            "batch" => Ok(ServiceKind::Batch),
            "system" => Ok(ServiceKind::System),
            other => Err(format!(
                "unknown kind `{other}`: expected service, batch or system"
            )),
        }
    }
}

/// How a changed template replaces the running copies: a new copy is started beside the old
/// ones (at most `max_parallel` at a time), and an old copy is stopped only once a new one has
/// been healthy for `min_healthy_time`. A new copy not healthy within `healthy_deadline` fails
/// the rollout, which then (with `auto_revert`) goes back to the last good version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// New copies started at a time (default 1): never more than `count + max_parallel`
    /// copies run during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_COUNT))]
    pub max_parallel: Option<u32>,
    /// How long a new copy must be healthy (its health check passing, or running without one)
    /// before it counts (default 10s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::opt_duration"
    )]
    #[schemars(with = "Option<crate::schema::WireDuration>")]
    pub min_healthy_time: Option<Duration>,
    /// How long a new copy has to become healthy before the rollout fails (default 5m).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::opt_duration"
    )]
    #[schemars(with = "Option<crate::schema::WireDuration>")]
    pub healthy_deadline: Option<Duration>,
    /// Go back to the last good version when a rollout fails (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert: Option<bool>,
    /// New copies started beside the old ones before anything is replaced; the rollout then
    /// waits for `cube service promote` (default 0: no canaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_COUNT))]
    pub canary: Option<u32>,
}

impl UpdatePolicy {
    pub fn max_parallel(&self) -> u32 {
        self.max_parallel.unwrap_or(1).max(1)
    }

    pub fn min_healthy_time(&self) -> Duration {
        self.min_healthy_time.unwrap_or(Duration::from_secs(10))
    }

    pub fn healthy_deadline(&self) -> Duration {
        self.healthy_deadline.unwrap_or(Duration::from_secs(300))
    }

    pub fn auto_revert(&self) -> bool {
        self.auto_revert.unwrap_or(true)
    }

    pub fn canary(&self) -> u32 {
        self.canary.unwrap_or(0)
    }
}

/// What a user declares: `deploy` creates the service or changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1–63 lowercase letters, digits and `-`, starting with a letter.
    pub name: String,
    #[serde(default)]
    pub kind: ServiceKind,
    /// Copies wanted (`service`), or completions wanted (`batch`), at most 1000; ignored for
    /// `system`.
    #[serde(default = "one")]
    #[schemars(range(max = MAX_COUNT))]
    pub count: u32,
    /// The task every copy runs. Its `id` may be left out; `name` is set by Cube.
    pub template: Task,
    #[serde(default)]
    pub update: UpdatePolicy,
    /// `batch`: copies that may fail before the job is failed (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
}

fn one() -> u32 {
    1
}

/// The largest count a service may ask for (and the most canaries, or copies started at once,
/// in a rollout). Every copy is a task the manager places and records, and a service's status
/// is one reply: ten thousand copies stalled the manager for seconds.
pub const MAX_COUNT: u32 = 1_000;

impl ServiceSpec {
    pub fn max_failures(&self) -> u32 {
        self.max_failures.unwrap_or(3)
    }
}

/// What a [`ServiceEvent`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    /// Create the service, or change it (with `spec`). A changed template makes a new
    /// version, rolled out by the update policy.
    Deploy,
    /// Change the count (with `count`).
    Scale,
    /// Go back to `version`, or to the last good version before the current one.
    Rollback,
    /// Let a rollout waiting on its canaries go on.
    Promote,
    /// Stop every copy and forget the desired state.
    Remove,
}

impl fmt::Display for ServiceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceAction::Deploy => "deploy",
            ServiceAction::Scale => "scale",
            ServiceAction::Rollback => "rollback",
            ServiceAction::Promote => "promote",
            ServiceAction::Remove => "remove",
        })
    }
}

/// A request to change a service, on `services.events`. Its `id` makes it idempotent: the
/// same event applied twice changes nothing the second time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::no_default_timestamp)]
pub struct ServiceEvent {
    pub id: Uuid,
    /// When the client sent it; the time of receipt if absent.
    #[serde(default = "Utc::now")]
    pub timestamp: DateTime<Utc>,
    /// The service's name.
    pub name: String,
    pub action: ServiceAction,
    /// `deploy`: the desired state (its `name` is the event's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceSpec>,
    /// `scale`: the new count, at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_COUNT))]
    pub count: Option<u32>,
    /// `rollback`: the version to go back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl ServiceEvent {
    fn new(name: &str, action: ServiceAction) -> ServiceEvent {
        ServiceEvent {
            id: Uuid::new_v4(),
            timestamp: Utc::now(),
            name: name.to_string(),
            action,
            spec: None,
            count: None,
            version: None,
        }
    }

    pub fn deploy(spec: ServiceSpec) -> ServiceEvent {
        let mut e = ServiceEvent::new(&spec.name, ServiceAction::Deploy);
        e.spec = Some(spec);
        e
    }

    pub fn scale(name: &str, count: u32) -> ServiceEvent {
        let mut e = ServiceEvent::new(name, ServiceAction::Scale);
        e.count = Some(count);
        e
    }

    pub fn rollback(name: &str, version: Option<u64>) -> ServiceEvent {
        let mut e = ServiceEvent::new(name, ServiceAction::Rollback);
        e.version = version;
        e
    }

    pub fn promote(name: &str) -> ServiceEvent {
        ServiceEvent::new(name, ServiceAction::Promote)
    }

    pub fn remove(name: &str) -> ServiceEvent {
        ServiceEvent::new(name, ServiceAction::Remove)
    }
}

/// How a version's rollout went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// New copies are being started and old ones replaced.
    Running,
    /// The canaries are healthy: waiting for `cube service promote`.
    AwaitingPromotion,
    /// Every copy runs the new version.
    Succeeded,
    /// A new copy did not become healthy in time; nothing more is replaced.
    Failed,
    /// Replaced by a later deploy or rollback before it finished.
    Superseded,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::AwaitingPromotion => "awaiting-promotion",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::Superseded => "superseded",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Running | RolloutState::AwaitingPromotion
        )
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The move from one version to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rollout {
    /// The version it replaces (none for a first deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    pub to: u64,
    pub state: RolloutState,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// The canaries were promoted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted: bool,
    /// Why it failed, or that it reverts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One version of a service's template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceVersion {
    pub version: u64,
    pub template: Task,
    pub created_at: DateTime<Utc>,
    /// Every copy ran it healthy at some point (a rollout to it succeeded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub good: bool,
    /// A rollout to it failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// How many versions a service remembers (the newest).
pub const KEPT_VERSIONS: usize = 20;
/// How many applied event ids a service remembers, to recognise a repeated event.
pub const KEPT_EVENT_IDS: usize = 64;

/// A service as the manager records it (the Task DB, `service.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
    pub count: u32,
    pub update: UpdatePolicy,
    pub max_failures: u32,
    /// The version copies should run now.
    pub version: u64,
    /// Every version still remembered, oldest first.
    pub versions: Vec<ServiceVersion>,
    /// The latest rollout (kept once it ended, for `cube service status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Removed: every copy is stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// `batch`: the job ended (every completion done, or too many failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// The number the next copy's name and id are made from.
    pub next_copy: u64,
    /// The newest applied event ids (at most [`KEPT_EVENT_IDS`]).
    #[serde(default)]
    pub applied: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Service {
    /// The version record of `version`, if still remembered.
    pub fn version_of(&self, version: u64) -> Option<&ServiceVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The template of the current version.
    pub fn template(&self) -> Option<&Task> {
        self.version_of(self.version).map(|v| &v.template)
    }

    /// The key of its record in the Task DB.
    pub fn key(&self) -> String {
        service_key(&self.name)
    }
}

/// The Task DB key of service `name`'s record.
pub fn service_key(name: &str) -> String {
    format!("{SERVICE_KEY_PREFIX}{name}")
}

/// Task DB keys that hold services rather than tasks start with this.
pub const SERVICE_KEY_PREFIX: &str = "service.";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_template_may_leave_out_its_id() {
        let e = json!({
            "id": Uuid::new_v4(), "name": "web", "action": "deploy",
            "spec": {"name": "web", "count": 3, "template": {"image": "busybox"}}
        });
        let event = decode_service_event(&serde_json::to_vec(&e).unwrap()).unwrap();
        let spec = event.spec.unwrap();
        assert_eq!(spec.count, 3);
        assert_eq!(spec.kind, ServiceKind::Service);
        assert_eq!(spec.update.max_parallel(), 1);
        assert!(spec.update.auto_revert());
    }

    #[test]
    fn problems_are_named() {
        let bad = |e: serde_json::Value| {
            decode_service_event(&serde_json::to_vec(&e).unwrap())
                .unwrap_err()
                .to_string()
        };
        let id = Uuid::new_v4();
        assert!(bad(json!({"id": id, "name": "Web", "action": "promote"})).contains("lowercase"));
        assert!(bad(json!({"id": id, "name": "web", "action": "scale"})).contains("count"));
        assert!(bad(json!({"id": id, "name": "web", "action": "deploy"})).contains("spec"));
        assert!(bad(json!({"id": id, "name": "web", "action": "deploy",
            "spec": {"name": "api", "template": {"image": "busybox"}}}))
        .contains("not the event's name"));
        assert!(bad(json!({"id": id, "name": "web", "action": "deploy",
            "spec": {"name": "web", "template": {}}}))
        .contains("template: task.image is required"));
        assert!(bad(json!({"id": id, "name": "web", "action": "deploy",
            "spec": {"name": "web", "kind": "batch",
                     "template": {"image": "busybox", "restart_policy": "always"}}}))
        .contains("batch"));
        assert!(bad(json!({"id": id, "name": "web", "action": "jump"})).contains("action"));
        assert!(
            bad(json!({"id": id, "name": "web", "action": "promote", "colour": 1}))
                .contains("colour")
        );
    }

    #[test]
    fn names_are_dns_labels() {
        validate_service_name("web-1").unwrap();
        for bad in ["", "1web", "web.1", "Web", "web_1", &"a".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_service_asks_for_at_most_a_thousand_copies() {
        let event = |count: u32| {
            let e = json!({"id": Uuid::new_v4(), "name": "web", "action": "deploy",
                "spec": {"name": "web", "count": count, "template": {"image": "busybox"}}});
            decode_service_event(&serde_json::to_vec(&e).unwrap())
        };
        assert_eq!(MAX_COUNT, 1000);
        assert!(event(1000).is_ok());
        assert!(event(1001)
            .unwrap_err()
            .to_string()
            .contains("above the limit of 1000"));
        assert!(validate_service_event(&ServiceEvent::scale("web", 1000)).is_ok());
        assert!(validate_service_event(&ServiceEvent::scale("web", 1001)).is_err());
    }
}
