//! Cube's manager (control plane). It consumes TaskEvents from `tasks.events`, records tasks
//! in the Task DB (a KV bucket), asks the scheduler where each should run, publishes the work
//! to the chosen worker's subject, and applies the workers' state reports. Everything it knows
//! lives in JetStream, so a restarted manager carries on where it stopped.

pub mod algorithms;
pub mod api;
pub mod cluster;
mod inputs;
pub mod lease;
pub mod metrics;
mod presence;
mod records;
pub mod rules;
mod run;
pub mod scheduler;
mod secrets;
mod status;
#[cfg(test)]
mod testing;
pub mod tokens;
pub mod topology;
pub mod upkeep;
mod writer;

use std::time::Duration;

pub use lease::{Fence, Gate, Holder, Lease, Observer, LEASE_KEY};
pub use run::run;

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// When nodes are judged unreachable, down and lost, and how often the manager looks
    /// again at what time decides (`timings.tick`).
    pub timings: rules::Timings,
    /// The placement algorithm: one of [`algorithms::ALGORITHMS`].
    pub scheduler: String,
    /// Where the manager counts what it does; register them to expose them.
    pub metrics: metrics::Metrics,
    /// Bytes of container output kept per task in `CUBE_LOGS` (the newest; see
    /// [`topology::logs_stream`]).
    pub logs_per_task: u64,
    /// How long a manager's lease on leadership lasts unrenewed: a second manager waits
    /// until the first has been silent this long before it acts.
    pub lease_ttl: Duration,
    /// How many copies JetStream keeps of every stream and bucket (3 on a cluster).
    pub replicas: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timings: rules::Timings::default(),
            scheduler: "spread".to_string(),
            metrics: metrics::Metrics::default(),
            logs_per_task: topology::DEFAULT_LOGS_PER_TASK,
            lease_ttl: Duration::from_secs(6),
            replicas: 1,
        }
    }
}

/// Chooses the scheduler named on the command line.
pub fn scheduler_by_name(name: &str) -> Result<Box<dyn scheduler::Scheduler>, Error> {
    algorithms::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = algorithms::ALGORITHMS.iter().map(|(n, _)| *n).collect();
        Error::UnknownScheduler {
            name: name.to_string(),
            known: known.join(", "),
        }
    })
}

use cube_bus::NatsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up JetStream: {what}")]
    Setup {
        what: String,
        #[source]
        source: NatsError,
    },
    #[error("consumer {name} on {stream}")]
    Consumer {
        name: String,
        stream: String,
        #[source]
        source: NatsError,
    },
    #[error("subscribing to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error(transparent)]
    Bus(#[from] cube_bus::Error),
    #[error("the writer of the Task DB stopped unexpectedly")]
    WriterStopped,
    #[error("configuration: unknown scheduler `{name}`: available: {known}")]
    UnknownScheduler { name: String, known: String },
    /// Another manager took the leadership lease (see [`Lease`]): this one must stop acting.
    #[error("lost the leadership lease (epoch {epoch}) to manager {to}; stopping")]
    LeaseLost { epoch: u64, to: String },
    /// This manager could not renew its lease in time and stopped acting by its own clock.
    #[error(
        "could not renew the leadership lease (epoch {epoch}) for {unrenewed:?}; stepped down"
    )]
    SteppedDown { epoch: u64, unrenewed: Duration },
    /// A newer leader raised the Task DB fence: this manager's writes are refused.
    #[error(
        "deposed: the Task DB fence names a newer leader, {by} (this manager's epoch {epoch})"
    )]
    Deposed { epoch: u64, by: String },
    #[error("reading or raising the Task DB fence")]
    Fence {
        #[source]
        source: NatsError,
    },
    #[error("releasing the leadership lease")]
    LeaseRelease {
        #[source]
        source: NatsError,
    },
    #[error("releasing the leadership lease: no answer within {within:?}")]
    LeaseReleaseTimedOut { within: Duration },
}

impl Error {
    pub(crate) fn fence(source: impl Into<NatsError>) -> Error {
        Error::Fence {
            source: source.into(),
        }
    }

    /// This manager stopped leading (the lease lost or stepped down, or deposed by the
    /// fence): it stands by again rather than exit.
    pub fn is_loss_of_leadership(&self) -> bool {
        matches!(
            self,
            Error::LeaseLost { .. } | Error::SteppedDown { .. } | Error::Deposed { .. }
        )
    }

    pub(crate) fn setup(what: String, source: impl Into<NatsError>) -> Error {
        Error::Setup {
            what,
            source: source.into(),
        }
    }
}
