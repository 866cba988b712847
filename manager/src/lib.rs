//! Cube's manager (control plane). It consumes TaskEvents from `tasks.events`, records tasks
//! in the Task DB (a KV bucket), asks the scheduler where each should run, publishes the work
//! to the chosen worker's subject, and applies the workers' state reports. Everything it knows
//! lives in JetStream, so a restarted manager carries on where it stopped.

pub mod algorithms;
pub mod api;
pub mod cluster;
pub mod lifecycle;
mod manager;
pub mod metrics;
pub mod scheduler;
#[cfg(test)]
mod testing;
pub mod topology;
mod writer;

use std::time::Duration;

pub use manager::run;

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// A worker whose last heartbeat is older than this is not given new work.
    pub node_ttl: Duration,
    /// After TTL + this grace without a heartbeat, a worker is `down` and its tasks are lost
    /// (and placed elsewhere per their restart policy).
    pub node_grace: Duration,
    /// How often the manager looks again at tasks that could not be placed.
    pub reconcile_interval: Duration,
    /// The placement algorithm: one of [`algorithms::ALGORITHMS`].
    pub scheduler: String,
    /// Where the manager counts what it does; register them to expose them.
    pub metrics: metrics::Metrics,
    /// Bytes of container output kept per task in `CUBE_LOGS` (the newest; see
    /// [`topology::logs_stream`]).
    pub logs_per_task: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_ttl: Duration::from_secs(10),
            node_grace: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(1),
            scheduler: "spread".to_string(),
            metrics: metrics::Metrics::default(),
            logs_per_task: topology::DEFAULT_LOGS_PER_TASK,
        }
    }
}

/// Chooses the scheduler named on the command line.
pub fn scheduler_by_name(name: &str) -> Result<Box<dyn scheduler::Scheduler>, Error> {
    algorithms::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = algorithms::ALGORITHMS.iter().map(|(n, _)| *n).collect();
        Error::Config(format!(
            "unknown scheduler `{name}`: available: {}",
            known.join(", ")
        ))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up JetStream: {0}")]
    Setup(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("configuration: {0}")]
    Config(String),
}
