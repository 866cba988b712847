//! What can go wrong talking to Cube, by kind, so that callers branch on the kind (the web
//! API picks a status, the CLI a hint) and the underlying NATS error stays attached as the
//! source.

use std::time::Duration;

use cube_shared::wire::DecodeError;
use cube_shared::{SpecConflict, State, Task};

pub use cube_bus::NatsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nobody answers `cube.api.*` requests: no manager runs against this NATS server.
    #[error("no manager is running (nobody answers {0})")]
    NoManager(String),
    /// No answer, or no end to a read, within the client's timeout.
    #[error("no answer from {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    /// The manager answered and refused, in its own words (e.g. "no task matches `x`").
    #[error("{0}")]
    Manager(String),
    /// A stream the manager creates does not exist: no manager has run against this server.
    #[error("stream {0} does not exist")]
    NoStream(&'static str),
    /// The task id is taken by a task with another specification.
    #[error(transparent)]
    Conflict(#[from] SpecConflict),
    /// The event is too large for Cube to accept; nothing was published.
    #[error("the task is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    /// The event could not be sent to JetStream.
    #[error("publishing to {subject}")]
    Publish {
        subject: &'static str,
        #[source]
        source: NatsError,
    },
    /// The event was sent, but JetStream did not acknowledge storing it (no stream takes
    /// `tasks.events` until a manager has created it).
    #[error("JetStream did not store the event")]
    NotStored {
        #[source]
        source: NatsError,
    },
    /// JetStream answered that it will not store the event, with its reason: above all a
    /// stream full of events the manager has not handled yet ([`Error::is_full`]). Nothing
    /// was stored; the event may be sent again later.
    #[error("JetStream refused to store the event on {subject}: {reason}")]
    Refused {
        subject: &'static str,
        /// JetStream's error code (10077: the stream could not store it, e.g. it is full).
        code: u64,
        reason: String,
    },
    /// The manager's answer is not what the contract says.
    #[error("the manager's answer to {subject} is not readable")]
    Reply {
        subject: String,
        #[source]
        source: DecodeError,
    },
    /// [`crate::Cube::wait`]: the task ended in another state, for good.
    #[error(
        "task {} ended {} instead of becoming {wanted} (exit code {:?}, error {:?})",
        task.id, task.state, task.exit_code, task.error
    )]
    Ended { task: Box<Task>, wanted: State },
    /// [`crate::Cube::wait`]: the task did not reach the state in time.
    #[error("task {id} is not {wanted} after {within:?}: {last}")]
    NotYet {
        id: uuid::Uuid,
        wanted: State,
        within: Duration,
        /// Where it was last seen, or why it could not be seen.
        last: String,
    },
    /// Connecting to NATS failed.
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: NatsError,
    },
    /// Any other NATS failure: what was being done, and the NATS error.
    #[error(transparent)]
    Nats(#[from] cube_bus::Error),
}

/// JetStream's error code for a message its stream could not store ("maximum messages
/// exceeded", "maximum bytes exceeded", …).
pub const STREAM_STORE_FAILED: u64 = 10077;

impl Error {
    /// What a publish acknowledgement's failure means: JetStream's own refusal (with its code
    /// and reason), or no acknowledgement at all.
    pub(crate) fn refused(
        subject: &'static str,
        e: async_nats::jetstream::context::PublishError,
    ) -> Error {
        use std::error::Error as _;
        let answer = e
            .source()
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .map(|j| (j.error_code().0, j.to_string()));
        match answer {
            Some((code, reason)) => Error::Refused {
                subject,
                code,
                reason,
            },
            None => Error::NotStored {
                source: Box::new(e),
            },
        }
    }

    /// A refusal by a full stream (or one that could not store for another reason of its
    /// own): a backlog the manager has not caught up with.
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Refused { code, .. } if *code == STREAM_STORE_FAILED)
    }

    /// A closure for `map_err` that wraps a NATS error with what was being done.
    pub(crate) fn nats<E>(what: impl Into<String>) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let wrap = cube_bus::nats(what);
        move |e| Error::Nats(wrap(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_streams_refusal_says_so_and_keeps_jetstreams_reason() {
        use async_nats::jetstream::context::{PublishError, PublishErrorKind};
        let answer: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":503,"err_code":10077,"description":"maximum messages exceeded"}"#,
        )
        .unwrap();
        let e = Error::refused(
            "tasks.events",
            PublishError::with_source(PublishErrorKind::Other, answer),
        );
        assert!(e.is_full(), "{e:?}");
        assert!(e.to_string().contains("maximum messages exceeded"), "{e}");
        let timed_out = Error::refused(
            "tasks.events",
            PublishError::new(PublishErrorKind::TimedOut),
        );
        assert!(
            matches!(timed_out, Error::NotStored { .. }),
            "{timed_out:?}"
        );
        assert!(!timed_out.is_full());
    }

    #[test]
    fn the_chain_keeps_every_cause() {
        let io = std::io::Error::other("connection reset");
        let e = Error::nats("reading CUBE_JOURNAL")(io);
        assert_eq!(e.to_string(), "reading CUBE_JOURNAL");
        assert_eq!(
            cube_bus::Chain(&e).to_string(),
            "reading CUBE_JOURNAL: connection reset"
        );
    }
}
