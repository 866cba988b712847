//! Cube's worker (data plane). It takes work from its own durable consumer
//! (`tasks.pending.<name>`) and the shared one (`tasks.pending`), runs each task through a
//! [`Runtime`](runtime::Runtime) (Docker, or a simulation), reports every change of state on
//! `tasks.state.<id>`, streams each container's output to `tasks.logs.<id>`, and heartbeats
//! its node's statistics.

pub mod logs;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod runtime;
pub mod stats;
mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

pub use worker::run;

#[derive(Debug, Clone)]
pub struct Config {
    /// Unique in the cluster; a NATS subject token.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// How often the worker reports its node.
    pub heartbeat_interval: Duration,
    /// How long a container may take to stop before it is killed.
    pub stop_grace: Duration,
    /// Cores offered to Cube (default: all of them).
    pub cpu: Option<f64>,
    /// Bytes of memory offered to Cube (default: all of it).
    pub memory: Option<u64>,
    /// How many runtime operations run at once.
    pub concurrency: usize,
    /// On shutdown, stop the containers too (default: leave them for the next worker of
    /// this name to adopt).
    pub stop_tasks_on_exit: bool,
    /// What tasks may do to this host.
    pub policy: policy::Policy,
    /// Sample the host's CPU, memory and disk for heartbeats. Off for simulated workers:
    /// their node is what `cpu` and `memory` say.
    pub host_stats: bool,
    /// Where the worker counts what it does; register them to expose them.
    pub metrics: metrics::Metrics,
}

impl Config {
    /// A usable name: a single NATS subject token, not one of the reserved role names.
    pub fn validate(&self) -> Result<(), Error> {
        cube_shared::validate::validate_worker_name(&self.name)
            .map_err(|e| Error::Config(e.to_string()))?;
        if cube_bus::auth::RESERVED.contains(&self.name.as_str()) {
            return Err(Error::Config(format!(
                "worker name `{}` is reserved for a NATS role; choose another",
                self.name
            )));
        }
        Ok(())
    }

    pub fn new(name: impl Into<String>) -> Config {
        Config {
            name: name.into(),
            labels: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(3),
            stop_grace: Duration::from_secs(10),
            cpu: None,
            memory: None,
            concurrency: 16,
            stop_tasks_on_exit: false,
            policy: policy::Policy::default(),
            host_stats: true,
            metrics: metrics::Metrics::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("NATS: {0}")]
    Nats(String),
}
