//! The lease's writes: taking it (create, or compare-and-set over a silent holder), renewing
//! it every quarter ttl, and releasing it. Each is one compare-and-set on [`LEASE_KEY`] and a
//! read of the value when the revision moved, since only the value tells whose it is.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use cube_bus::Chain;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    describe, epoch_of, is_mine, renew_every, validity, Holder, Loss, Shared, Silence, LEASE_KEY,
    WAITING_LOG_EVERY,
};
use crate::metrics::LeaseMetrics;
use crate::Error;

/// Why one attempt to take the lease did not win.
pub(super) enum Attempt {
    Held {
        other: String,
        revision: u64,
        epoch: u64,
    },
    Nats(cube_bus::NatsError),
}

pub(super) fn nats(e: impl std::error::Error + Send + Sync + 'static) -> Attempt {
    Attempt::Nats(Box::new(e))
}

/// A lease won: at which revision (the epoch), when the winning write was sent (the holder's
/// validity counts from then), and from whom it was taken.
pub(super) struct Won {
    pub(super) revision: u64,
    pub(super) sent: Instant,
    pub(super) took_from: Option<String>,
}

/// One look at the lease: `Some` if this manager now holds it, `None` if another manager won
/// a race for it just now.
pub(super) async fn try_take(
    kv: &kv::Store,
    me: &Holder,
    ttl: Duration,
    silence: &mut Silence,
) -> Result<Option<Won>, Attempt> {
    let entry = kv.entry(LEASE_KEY).await.map_err(nats)?;
    let sent = Instant::now();
    let won = |revision, took_from| {
        Some(Won {
            revision,
            sent,
            took_from,
        })
    };
    match entry {
        None
        | Some(kv::Entry {
            operation: Operation::Delete | Operation::Purge,
            ..
        }) => match kv.create(LEASE_KEY, me.encode(None)).await {
            Ok(rev) => Ok(won(rev, None)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats(e)),
        },
        // Still this manager's value: it stepped down (or an earlier attempt won and its
        // answer was lost). Nobody took over, but a waiting manager may be about to: write it
        // again with compare-and-set, which also moves the revision it watches.
        Some(e) if is_mine(&e.value, me) => {
            match kv.update(LEASE_KEY, me.encode(None), e.revision).await {
                Ok(rev) => Ok(won(rev, None)),
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(err) => Err(nats(err)),
            }
        }
        Some(e) => {
            if !silence.observe(e.revision, sent, ttl) {
                return Err(Attempt::Held {
                    other: describe(&e.value),
                    revision: e.revision,
                    epoch: epoch_of(&e.value, e.revision),
                });
            }
            match kv.update(LEASE_KEY, me.encode(None), e.revision).await {
                Ok(rev) => {
                    let from = describe(&e.value);
                    warn!(
                        "took over the leadership lease from a manager silent for {ttl:?} ({from})"
                    );
                    Ok(won(rev, Some(from)))
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(err) => Err(nats(err)),
            }
        }
    }
}

/// Renews the lease every quarter ttl until it is lost, or until no renewal has succeeded for
/// [`VALID_FOR`] of the ttl: then the holder steps down by its own clock, before any waiting
/// manager can take over. NATS trouble is retried until then; only a compare-and-set that
/// finds another manager's value is taken for a loss.
pub(super) async fn renew(
    kv: kv::Store,
    me: Holder,
    epoch: u64,
    ttl: Duration,
    shared: Arc<Shared>,
    lost: CancellationToken,
    metrics: Option<LeaseMetrics>,
) {
    let mut failing_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    let mut next = Instant::now() + renew_every(ttl);
    loop {
        let deadline = shared.valid_until();
        let outcome = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => None,
            r = async {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                let rev = shared.revision.load(Ordering::SeqCst);
                (sent, renew_once(&kv, &me, epoch, rev, renew_every(ttl)).await)
            } => Some(r),
        };
        let Some((sent, outcome)) = outcome else {
            let unrenewed = Instant::now() - (deadline - validity(ttl));
            error!(
                ?unrenewed,
                "could not renew the leadership lease in time; stepping down before another \
                 manager may take over"
            );
            shared.lose(Loss::SteppedDown(unrenewed), &lost);
            return;
        };
        next = sent + renew_every(ttl);
        match outcome {
            Renewal::Renewed(new) => {
                shared.revision.store(new, Ordering::SeqCst);
                shared.extend(sent + validity(ttl));
                if let Some(m) = &metrics {
                    m.renewed.inc();
                }
                if let Some(since) = failing_since.take() {
                    let failed_for = since.elapsed();
                    info!(
                        revision = new,
                        ?failed_for,
                        "renewed the leadership lease again"
                    );
                }
            }
            Renewal::Lost(to) => {
                error!("lost the leadership lease to manager {to}; stopping");
                shared.lose(Loss::To(to), &lost);
                return;
            }
            Renewal::Failed(error) => {
                if let Some(m) = &metrics {
                    m.renew_failed.inc();
                }
                failing_since.get_or_insert_with(Instant::now);
                if last_log.is_none_or(|t| t.elapsed() >= WAITING_LOG_EVERY) {
                    warn!(error, "renewing the leadership lease; retrying");
                    last_log = Some(Instant::now());
                }
            }
        }
    }
}

enum Renewal {
    /// The lease holds this manager's value at this revision.
    Renewed(u64),
    /// To another manager (described), or to none.
    Lost(String),
    /// No answer, or a NATS error: says nothing about who holds the lease.
    Failed(String),
}

async fn renew_once(
    kv: &kv::Store,
    me: &Holder,
    epoch: u64,
    rev: u64,
    within: Duration,
) -> Renewal {
    match timeout(within, kv.update(LEASE_KEY, me.encode(Some(epoch)), rev)).await {
        Ok(Ok(new)) => return Renewal::Renewed(new),
        Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
        Ok(Err(e)) => return Renewal::Failed(Chain(&e).to_string()),
        Err(_) => return Renewal::Failed("no answer".to_string()),
    }
    // The revision moved: another manager's value, or this one's, written by a renewal whose
    // answer was lost. Only the value tells.
    match timeout(within, kv.entry(LEASE_KEY)).await {
        Ok(Ok(Some(e))) if e.operation == Operation::Put && is_mine(&e.value, me) => {
            Renewal::Renewed(e.revision)
        }
        Ok(Ok(Some(e))) if e.operation == Operation::Put => Renewal::Lost(describe(&e.value)),
        Ok(Ok(_)) => Renewal::Lost("none (the lease was deleted)".to_string()),
        Ok(Err(e)) => Renewal::Failed(Chain(&e).to_string()),
        Err(_) => Renewal::Failed("no answer".to_string()),
    }
}

pub(super) async fn release(kv: &kv::Store, me: &Holder, rev: u64) -> Result<(), Error> {
    let err = match kv.delete_expect_revision(LEASE_KEY, Some(rev)).await {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => e,
        Err(e) => return Err(Error::LeaseRelease { source: e.into() }),
    };
    // A renewal whose answer was lost may have moved the revision: delete only our value.
    match kv.entry(LEASE_KEY).await {
        Ok(Some(e)) if e.operation == Operation::Put && is_mine(&e.value, me) => kv
            .delete_expect_revision(LEASE_KEY, Some(e.revision))
            .await
            .map_err(|e| Error::LeaseRelease { source: e.into() }),
        Ok(_) => {
            warn!(error = %Chain(&err), "the leadership lease was no longer this manager's");
            Ok(())
        }
        Err(e) => Err(Error::LeaseRelease { source: e.into() }),
    }
}
