//! Cube's worker (data plane). It takes work from its own durable consumer
//! (`tasks.pending.<name>`) and the shared one (`tasks.pending`), runs each task through a
//! [`Runtime`](runtime::Runtime) (Docker, or a simulation), reports every change of state on
//! `tasks.state.<id>`, streams each container's output to `tasks.logs.<id>`, and heartbeats
//! its node's statistics.

mod adopt;
mod epoch;
mod finished;
mod health;
pub mod logs;
pub mod metrics;
mod node;
pub mod policy;
pub mod probe;
mod relist;
mod report;
mod run;
pub mod runtime;
mod slots;
pub mod stats;
mod stop;
mod task_db;
mod work;

use std::collections::BTreeMap;
use std::time::Duration;

pub use run::run;

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
        cube_shared::validate::validate_worker_name(&self.name).map_err(Error::Name)?;
        if cube_bus::auth::RESERVED.contains(&self.name.as_str()) {
            return Err(Error::ReservedName(self.name.clone()));
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

/// Why a worker could not run. Each keeps what caused it as its `source` (the CLI prints the
/// whole chain); nothing is flattened into a string.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: invalid worker name")]
    Name(#[source] cube_shared::validate::Invalid),
    #[error("configuration: worker name `{0}` is reserved for a NATS role; choose another")]
    ReservedName(String),
    /// A stream's handle could not be had.
    #[error("stream {name}")]
    Stream {
        name: String,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    /// A durable consumer of work could not be created or read.
    #[error("consumer {name}")]
    Consumer {
        name: String,
        #[source]
        source: cube_bus::Error,
    },
}
