//! Bounded state, the shell's side, beside the loop (a slow or absent NATS never holds the
//! loop up): it reads how full the Task DB is, for the rules' refusal of new submissions
//! ([`crate::rules::limits`]), and it purges the input streams of what the manager has
//! handled.
//!
//! `CUBE_EVENTS` and `CUBE_SERVICES` keep their messages after the manager has acknowledged
//! them (limits retention, so that a message waits while no manager runs). Once acknowledged,
//! a message's effects are stored (the writer acknowledges last), so everything up to a
//! consumer's acknowledgement floor can go: the streams then hold only what waits, and their
//! limits ([`crate::topology`]) bound a backlog, not the history. `CUBE_STATE` is not purged:
//! it keeps each copy's last report, the task's status ([`crate::status`]).

use std::time::Duration;

use async_nats::jetstream;
use cube_shared::subjects::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::rules::limits::StoreUse;

/// How often the Task DB's size is read.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// How often the input streams are purged of what was handled.
pub const PURGE_EVERY: Duration = Duration::from_secs(10);

/// The input streams and the manager's consumer of each.
const HANDLED: [(&str, &str); 2] = [
    (EVENTS_STREAM, MANAGER_EVENTS_CONSUMER),
    (SERVICES_STREAM, MANAGER_SERVICES_CONSUMER),
];

/// Starts the upkeep; the receiver holds the Task DB's latest size (`None` until read, or
/// when it could not be). It ends at `shutdown`.
pub(crate) fn spawn(
    js: jetstream::Context,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Option<StoreUse>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(None);
    let handle = tokio::spawn(async move {
        let mut measure = tokio::time::interval(MEASURE_EVERY);
        measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = measure.tick() => {
                    let used = task_db_use(&js).await;
                    tx.send_replace(used);
                }
                _ = purge.tick() => {
                    for (stream, consumer) in HANDLED {
                        if let Err(e) = purge_handled(&js, stream, consumer).await {
                            debug!(stream, error = %e, "purging what was handled");
                        }
                    }
                }
            }
        }
    });
    (rx, handle)
}

/// The Task DB's bytes and byte limit.
async fn task_db_use(js: &jetstream::Context) -> Option<StoreUse> {
    let stream = js.get_stream_no_info(format!("KV_{TASK_DB}")).await.ok()?;
    match stream.get_info().await {
        Ok(info) => Some(StoreUse {
            bytes: info.state.bytes,
            max_bytes: u64::try_from(info.config.max_bytes).unwrap_or(0),
        }),
        Err(e) => {
            warn!(error = %e, "reading the Task DB's size");
            None
        }
    }
}

/// Purges `stream` of the messages `consumer` has acknowledged: those up to its
/// acknowledgement floor. Returns how many went.
pub async fn purge_handled(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<u64, async_nats::Error> {
    let handle = js.get_stream_no_info(stream).await?;
    let floor = handle
        .consumer_info(consumer)
        .await?
        .ack_floor
        .stream_sequence;
    if floor == 0 {
        return Ok(0);
    }
    let purged = handle.purge().sequence(floor + 1).await?.purged;
    Ok(purged)
}
