//! The leadership lease: at most one manager acts on a cluster. A second manager started by
//! mistake (a rolling update, a restart racing a hung process) would otherwise split the
//! durable consumers with the first and fence every container the other placed.
//!
//! The lease is the key [`LEASE_KEY`] in the `cube-admin` bucket. It is taken with
//! create-if-absent and renewed every ttl/3 with compare-and-set on its revision; the revision
//! at which it was won is the holder's epoch, greater than any revision an earlier holder
//! wrote. A waiting manager never trusts a time written in the value (clocks differ across
//! hosts): it takes the lease over only once the revision has not moved for the ttl, measured
//! on its own monotonic clock, and then with compare-and-set, so two waiters cannot both win.
//!
//! A holder that cannot renew steps down by its own monotonic clock: it acts only until
//! [`VALID_FOR`] of the ttl has passed since it *sent* its latest successful renewal. A waiting
//! manager first saw that revision after it was sent, and waits a whole ttl from then, so the
//! holder has stopped before anyone else can start. What a paused holder might still do
//! after that (a write already on its way) the [`fence`] refuses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cube_bus::Chain;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Error;

pub mod fence;
mod silence;
mod writes;
pub use fence::Fence;
pub use silence::Silence;
use writes::{release, renew, try_take, Attempt, Won};

use crate::metrics::LeaseMetrics;

/// The lease's key in the `cube-admin` bucket (beside `drain.<worker>`).
pub const LEASE_KEY: &str = "leader";

/// How often a waiting manager repeats that it is waiting.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// A holder acts for this share of the ttl after sending its latest successful renewal: the
/// rest is the margin by which it stops before a waiting manager may take over.
const VALID_FOR: (u32, u32) = (3, 4);

/// How long a renewal sent at some instant lets the holder act.
fn validity(ttl: Duration) -> Duration {
    ttl * VALID_FOR.0 / VALID_FOR.1
}

/// How often the holder renews: four times per ttl, so that two renewals can fail and the
/// third still come before it must step down.
fn renew_every(ttl: Duration) -> Duration {
    ttl / 4
}

/// How often a waiting manager reads the lease: often enough to take over within a fraction
/// of a second of the ttl, and never a gap the silence judgement would reject.
fn poll_every(ttl: Duration) -> Duration {
    (ttl / 8).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// Who holds the lease: one value per manager process. Unknown fields are ignored, so a later
/// version can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Unique per process: a restarted manager is a new holder.
    pub id: Uuid,
    pub host: String,
    pub pid: u32,
    /// When the process started, on its own clock: for people, never for decisions.
    pub started: DateTime<Utc>,
}

impl Holder {
    /// This process, on this host.
    pub fn this_process() -> Holder {
        let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        Holder {
            id: Uuid::new_v4(),
            host,
            pid: std::process::id(),
            started: Utc::now(),
        }
    }

    /// The lease's value: the holder and, once it has renewed, the epoch of its term (a value
    /// written when the lease was won has none: its own revision is the epoch).
    fn encode(&self, epoch: Option<u64>) -> Bytes {
        #[derive(Serialize)]
        struct Value<'a> {
            #[serde(flatten)]
            holder: &'a Holder,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<u64>,
        }
        serde_json::to_vec(&Value {
            holder: self,
            epoch,
        })
        .expect("a Holder is plain data")
        .into()
    }
}

/// The epoch of the term a lease value at `revision` belongs to: the one it names, or its own
/// revision for a value written when the lease was won.
fn epoch_of(value: &[u8], revision: u64) -> u64 {
    #[derive(Deserialize)]
    struct Epoch {
        epoch: Option<u64>,
    }
    serde_json::from_slice::<Epoch>(value)
        .ok()
        .and_then(|e| e.epoch)
        .unwrap_or(revision)
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "id {}, host {}, pid {}", self.id, self.host, self.pid)
    }
}

/// What a lease's value says of its holder, readable or not (judged by revision either way).
fn describe(value: &[u8]) -> String {
    match serde_json::from_slice::<Holder>(value) {
        Ok(h) => h.to_string(),
        Err(_) => format!("unreadable value {:?}", String::from_utf8_lossy(value)),
    }
}

fn is_mine(value: &[u8], me: &Holder) -> bool {
    serde_json::from_slice::<Holder>(value).is_ok_and(|h| h.id == me.id)
}

struct Shared {
    /// The revision of the lease's latest value written by this holder.
    revision: AtomicU64,
    /// Until when this holder may act (see [`VALID_FOR`]). A std Mutex: held only to copy.
    valid_until: Mutex<Instant>,
    /// How long one renewal lets it act.
    validity: Duration,
    /// Why the lease is no longer held, once it is not.
    loss: Mutex<Option<Loss>>,
}

/// Why a holder stopped holding the lease.
#[derive(Debug, Clone)]
enum Loss {
    /// Another manager's value (described) is in the lease, or none is.
    To(String),
    /// No renewal succeeded in time: it stepped down by its own clock.
    SteppedDown(Duration),
}

impl Shared {
    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn extend(&self, until: Instant) {
        let mut v = self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        *v = (*v).max(until);
    }

    fn lose(&self, loss: Loss, lost: &CancellationToken) {
        self.loss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(loss);
        lost.cancel();
    }
}

/// Whether the holder may still act: a cheap check the writer makes before every write and
/// publish. Closed for good once the lease is lost or the holder stepped down.
#[derive(Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    lost: CancellationToken,
}

impl Gate {
    /// Open while the lease is held and its latest renewal still lets this holder act. Once
    /// found closed it stays closed: the holder has stepped down.
    pub fn is_open(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        let until = self.shared.valid_until();
        let now = Instant::now();
        if now < until {
            return true;
        }
        let unrenewed = now - (until - self.shared.validity);
        self.shared.lose(Loss::SteppedDown(unrenewed), &self.lost);
        false
    }
}

/// What a manager waiting for the lease last saw of it: for `cube managers`.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Who holds it (`id, host, pid`) and the epoch of its term, if it could be read.
    pub holder: Option<(String, u64)>,
}

/// Where a waiting manager reports what it sees, and where its lease counts renewals.
#[derive(Clone, Default)]
pub struct Observer {
    pub seen: Arc<Mutex<Seen>>,
    pub metrics: Option<LeaseMetrics>,
}

impl Observer {
    fn saw(&self, holder: Option<(String, u64)>) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).holder = holder;
    }
}

/// The lease, held: renewed in the background until it is released, dropped, or lost.
pub struct Lease {
    kv: kv::Store,
    holder: Holder,
    epoch: u64,
    /// The previous holder, if this manager took the lease over (for the journal).
    took_from: Option<String>,
    shared: Arc<Shared>,
    lost: CancellationToken,
    renewer: Option<JoinHandle<()>>,
}

impl Lease {
    /// Waits until this manager holds the lease, logging who holds it meanwhile; `None` if
    /// `shutdown` is cancelled first. Never fails: NATS trouble is logged and retried, and the
    /// holder is judged only over time in which this manager could read the lease.
    pub async fn acquire(
        kv: &kv::Store,
        holder: Holder,
        ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Lease> {
        Lease::acquire_observed(kv, holder, ttl, shutdown, &Observer::default()).await
    }

    /// [`Lease::acquire`], reporting what it sees of the holder and counting renewals.
    pub async fn acquire_observed(
        kv: &kv::Store,
        holder: Holder,
        ttl: Duration,
        shutdown: &CancellationToken,
        observer: &Observer,
    ) -> Option<Lease> {
        let poll = poll_every(ttl);
        let mut silence = Silence::default();
        let mut last_log: Option<Instant> = None;
        let mut logged = |what: &dyn Fn()| {
            if last_log.is_none_or(|t| t.elapsed() >= WAITING_LOG_EVERY) {
                what();
                last_log = Some(Instant::now());
            }
        };
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return None,
                a = timeout(ttl, try_take(kv, &holder, ttl, &mut silence)) => a,
            };
            match attempt {
                Ok(Ok(Some(won))) => {
                    observer.saw(None);
                    return Some(Lease::won(kv.clone(), holder, ttl, won, observer));
                }
                Ok(Ok(None)) => {}
                Ok(Err(Attempt::Held {
                    other,
                    revision,
                    epoch,
                })) => {
                    logged(&|| {
                        warn!(
                            revision,
                            "another manager holds the lease ({other}); standing by — this \
                             manager will not act while it is held"
                        )
                    });
                    observer.saw(Some((other, epoch)));
                }
                Ok(Err(Attempt::Nats(e))) => {
                    silence.forget();
                    logged(&|| warn!(error = %Chain(&*e), "reading the leadership lease; retrying"))
                }
                Err(_) => {
                    silence.forget();
                    logged(&|| warn!("reading the leadership lease: no answer; retrying"))
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = sleep(poll) => {}
            }
        }
    }

    fn won(kv: kv::Store, holder: Holder, ttl: Duration, won: Won, observer: &Observer) -> Lease {
        let epoch = won.revision;
        info!(epoch, "this manager holds the leadership lease ({holder})");
        let shared = Arc::new(Shared {
            revision: AtomicU64::new(epoch),
            valid_until: Mutex::new(won.sent + validity(ttl)),
            validity: validity(ttl),
            loss: Mutex::new(None),
        });
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            kv.clone(),
            holder.clone(),
            epoch,
            ttl,
            shared.clone(),
            lost.clone(),
            observer.metrics.clone(),
        ));
        Lease {
            kv,
            holder,
            epoch,
            took_from: won.took_from,
            shared,
            lost,
            renewer: Some(renewer),
        }
    }

    /// Whether this holder may act now, for the writer to check before every write.
    pub fn gate(&self) -> Gate {
        Gate {
            shared: self.shared.clone(),
            lost: self.lost.clone(),
        }
    }

    /// The holder this manager took the lease over from, if it was not free.
    pub fn took_from(&self) -> Option<&str> {
        self.took_from.as_deref()
    }

    /// The revision at which this manager won the lease: greater than any revision an
    /// earlier holder wrote, and constant while it holds it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The revision of the latest renewal.
    pub fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::SeqCst)
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Cancelled once another manager has taken the lease: from then on this one must not act.
    pub fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves once the lease is lost or this holder stepped down, with the error to stop on
    /// ([`Error::LeaseLost`], [`Error::SteppedDown`]). Cancel-safe: usable in `select!`.
    pub async fn lost(&self) -> Error {
        self.lost.cancelled().await;
        let loss = self
            .shared
            .loss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match loss {
            Some(Loss::SteppedDown(unrenewed)) => Error::SteppedDown {
                epoch: self.epoch,
                unrenewed,
            },
            Some(Loss::To(to)) => Error::LeaseLost {
                epoch: self.epoch,
                to,
            },
            None => Error::LeaseLost {
                epoch: self.epoch,
                to: String::new(),
            },
        }
    }

    /// Stops acting at once, as if the lease were lost: the fence found a newer holder.
    pub fn deposed(&self, by: String) {
        self.shared.lose(Loss::To(by), &self.lost);
    }

    /// Stops renewing and deletes the lease if it still holds this manager's value, so that
    /// a successor need not wait the ttl; gives up after `within` (NATS may be down).
    pub async fn release(mut self, within: Duration) -> Result<(), Error> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
            let _ = renewer.await;
        }
        if self.is_lost() {
            return Ok(());
        }
        let rev = self.revision();
        timeout(within, release(&self.kv, &self.holder, rev))
            .await
            .map_err(|_| Error::LeaseReleaseTimedOut { within })??;
        info!(epoch = self.epoch, "released the leadership lease");
        Ok(())
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] is no longer renewed: as if the manager died.
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_value_names_its_holder_and_tolerates_new_fields() {
        let me = Holder::this_process();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.host.is_empty());
        let mut v: serde_json::Value = serde_json::from_slice(&me.encode(None)).unwrap();
        v["epoch_hint"] = 3.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(is_mine(&bytes, &me));
        assert!(!is_mine(&bytes, &Holder::this_process()), "another process");
        assert_eq!(describe(&bytes), me.to_string());
        assert!(describe(b"garbage").contains("unreadable"));
        assert!(!is_mine(b"garbage", &me));
    }

    #[test]
    fn a_standby_reads_the_epoch_of_the_term_from_the_value() {
        let me = Holder::this_process();
        assert_eq!(epoch_of(&me.encode(None), 7), 7, "written when won");
        assert_eq!(epoch_of(&me.encode(Some(7)), 12), 7, "renewed");
        assert_eq!(epoch_of(b"garbage", 9), 9);
        assert!(is_mine(&me.encode(Some(7)), &me));
    }
}
