//! What the manager answers about a service (`cube.api.services.*`) and publishes for
//! discovery (`cube-endpoints`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Service;

/// One copy as `cube service status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CopyStatus {
    pub task_id: Uuid,
    pub name: String,
    pub version: u64,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

/// A healthy copy's address: where clients reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    pub task_id: Uuid,
    pub node: String,
    /// The node's address, as its worker reports it.
    pub address: String,
    pub version: u64,
    /// Container port (`80/tcp`) → published host port.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// The value of a service's key in the `cube-endpoints` bucket: its healthy copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoints {
    pub service: String,
    pub endpoints: Vec<Endpoint>,
}

/// A service with its copies, as `cube.api.services.get` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceStatus {
    pub service: Service,
    /// Copies wanted now (for `system`: eligible nodes).
    pub desired: u32,
    /// Copies whose container runs.
    pub running: u32,
    /// Copies whose health check passes (or that run, without one).
    pub healthy: u32,
    /// `batch`: copies that completed successfully, and that failed for good.
    #[serde(default)]
    pub completed: u32,
    #[serde(default)]
    pub failed: u32,
    /// Live copies (not ended), and for `batch` the ended ones too.
    pub copies: Vec<CopyStatus>,
    pub endpoints: Vec<Endpoint>,
}

/// The request body of `cube.api.services.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceQuery {
    pub name: String,
}
