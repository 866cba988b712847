//! What a task asks of the cluster beside its image: its restart policy, its health as the
//! worker reports it, and its placement constraints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a worker does when a task's container exits. Cube enforces it; Docker's own restart
/// policy is never used, so every restart is a decision Cube can see and report.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure,
    Always,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        })
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            other => Err(format!(
                "unknown restart policy `{other}`: expected no, on-failure or always"
            )),
        }
    }
}

/// What a task's health check last found.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Started, not yet passed a check (within its grace period).
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// What a placement's health is once `reported` arrives after `known`. Within one
    /// placement a worker only moves it forward (starting, then healthy, then unhealthy, after
    /// which the task ends), but JetStream may deliver a report again after a later one (a
    /// manager that died before acknowledging it): an earlier step never undoes a later one.
    pub fn advance(known: Option<Health>, reported: Option<Health>) -> Option<Health> {
        known.max(reported)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A placement constraint on a worker label: `zone=eu` or `zone!=eu`. A node without the
/// label satisfies every `!=` and no `=`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub key: String,
    pub equal: bool,
    pub value: String,
}

impl std::str::FromStr for Constraint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = s.split_once('=') {
            (k, true, v)
        } else {
            return Err(format!("constraint `{s}` is not key=value or key!=value"));
        };
        let key = key.trim();
        let ok = |t: &str| {
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        if key.is_empty() || !ok(key) || !ok(value.trim()) {
            return Err(format!(
                "constraint `{s}`: keys and values are letters, digits and - _ . /"
            ));
        }
        Ok(Constraint {
            key: key.to_string(),
            equal,
            value: value.trim().to_string(),
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.equal { "=" } else { "!=" };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// The constraint key that names a node itself rather than one of its labels:
/// `cube.node=w1` runs a task on worker `w1` only (a `system` service pins each copy so).
pub const NODE_NAME_KEY: &str = "cube.node";

impl Constraint {
    pub fn allows(&self, labels: &BTreeMap<String, String>) -> bool {
        (labels.get(&self.key) == Some(&self.value)) == self.equal
    }

    /// Whether node `name` with `labels` satisfies it ([`NODE_NAME_KEY`] is the name).
    pub fn allows_node(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.key == NODE_NAME_KEY {
            (name == self.value) == self.equal
        } else {
            self.allows(labels)
        }
    }
}
