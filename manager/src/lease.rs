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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cube_bus::Chain;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::Error;

mod silence;
pub use silence::Silence;

/// The lease's key in the `cube-admin` bucket (beside `drain.<worker>`).
pub const LEASE_KEY: &str = "leader";

/// How often a waiting manager repeats that it is waiting.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

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

    fn encode(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("a Holder is plain data")
            .into()
    }
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
    /// Who has the lease now, once it is lost. A std Mutex: held only to copy a string.
    lost_to: Mutex<Option<String>>,
}

/// The lease, held: renewed in the background until it is released, dropped, or lost.
pub struct Lease {
    kv: kv::Store,
    holder: Holder,
    epoch: u64,
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
        // Often enough to see a release at once, and never a gap the judgement would reject.
        let poll = (ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
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
                Ok(Ok(Some(epoch))) => return Some(Lease::won(kv.clone(), holder, ttl, epoch)),
                Ok(Ok(None)) => {}
                Ok(Err(Attempt::Held { other, revision })) => logged(&|| {
                    warn!(
                        revision,
                        "another manager holds the lease ({other}); waiting — this manager will \
                         not act while it is held"
                    )
                }),
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

    fn won(kv: kv::Store, holder: Holder, ttl: Duration, epoch: u64) -> Lease {
        info!(epoch, "this manager holds the leadership lease ({holder})");
        let shared = Arc::new(Shared {
            revision: AtomicU64::new(epoch),
            lost_to: Mutex::new(None),
        });
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            kv.clone(),
            holder.clone(),
            ttl,
            shared.clone(),
            lost.clone(),
        ));
        Lease {
            kv,
            holder,
            epoch,
            shared,
            lost,
            renewer: Some(renewer),
        }
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

    /// Resolves once the lease is lost, with the error to stop on ([`Error::LeaseLost`]).
    /// Cancel-safe: usable as a `select!` branch.
    pub async fn lost(&self) -> Error {
        self.lost.cancelled().await;
        let to = self
            .shared
            .lost_to
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Error::LeaseLost {
            epoch: self.epoch,
            to: to.clone().unwrap_or_default(),
        }
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

/// Why one attempt to take the lease did not win.
enum Attempt {
    Held { other: String, revision: u64 },
    Nats(cube_bus::NatsError),
}

fn nats(e: impl std::error::Error + Send + Sync + 'static) -> Attempt {
    Attempt::Nats(Box::new(e))
}

/// One look at the lease: `Some(epoch)` if this manager now holds it, `None` if another
/// manager won a race for it just now.
async fn try_take(
    kv: &kv::Store,
    me: &Holder,
    ttl: Duration,
    silence: &mut Silence,
) -> Result<Option<u64>, Attempt> {
    let entry = kv.entry(LEASE_KEY).await.map_err(nats)?;
    let now = Instant::now();
    match entry {
        None
        | Some(kv::Entry {
            operation: Operation::Delete | Operation::Purge,
            ..
        }) => match kv.create(LEASE_KEY, me.encode()).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats(e)),
        },
        // An earlier attempt won, but its answer was lost.
        Some(e) if is_mine(&e.value, me) => Ok(Some(e.revision)),
        Some(e) => {
            if !silence.observe(e.revision, now, ttl) {
                return Err(Attempt::Held {
                    other: describe(&e.value),
                    revision: e.revision,
                });
            }
            match kv.update(LEASE_KEY, me.encode(), e.revision).await {
                Ok(rev) => {
                    warn!(
                        "took over the leadership lease from a manager silent for {ttl:?} ({})",
                        describe(&e.value)
                    );
                    Ok(Some(rev))
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(err) => Err(nats(err)),
            }
        }
    }
}

/// Renews the lease every ttl/3 until it is lost. NATS trouble is retried, never taken for a
/// loss: only a compare-and-set that finds another manager's value says so.
async fn renew(
    kv: kv::Store,
    me: Holder,
    ttl: Duration,
    shared: Arc<Shared>,
    lost: CancellationToken,
) {
    let mut failing_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    loop {
        sleep(ttl / 3).await;
        let rev = shared.revision.load(Ordering::SeqCst);
        match renew_once(&kv, &me, rev, ttl / 3).await {
            Renewal::Renewed(new) => {
                shared.revision.store(new, Ordering::SeqCst);
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
                *shared.lost_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
                lost.cancel();
                return;
            }
            Renewal::Failed(error) => {
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

async fn renew_once(kv: &kv::Store, me: &Holder, rev: u64, within: Duration) -> Renewal {
    match timeout(within, kv.update(LEASE_KEY, me.encode(), rev)).await {
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

async fn release(kv: &kv::Store, me: &Holder, rev: u64) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_value_names_its_holder_and_tolerates_new_fields() {
        let me = Holder::this_process();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.host.is_empty());
        let mut v: serde_json::Value = serde_json::from_slice(&me.encode()).unwrap();
        v["epoch_hint"] = 3.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(is_mine(&bytes, &me));
        assert!(!is_mine(&bytes, &Holder::this_process()), "another process");
        assert_eq!(describe(&bytes), me.to_string());
        assert!(describe(b"garbage").contains("unreadable"));
        assert!(!is_mine(b"garbage", &me));
    }
}
