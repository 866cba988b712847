//! The fence: JetStream itself refuses a deposed leader's Task DB writes.
//!
//! The lease decides who acts, but a leader can be paused (a stopped process, a stalled
//! connection) between checking that it still leads and a write reaching the server. So the
//! Task DB carries the key [`FENCE_KEY`]: a manager that wins the lease writes its epoch there
//! with compare-and-set before it reads anything, and every Task DB write it makes is
//! conditional on that key's sequence being the one it wrote
//! (`Nats-Expected-Last-Subject-Sequence-Subject`). Once a newer leader has written the fence,
//! every write of an older one fails, whatever it was about to do and however late it arrives.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::HeaderMap;
use cube_shared::subjects::{kv_subject, EPOCH_HEADER, FENCE_KEY};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Holder;
use crate::Error;

/// The header that makes `Nats-Expected-Last-Subject-Sequence` apply to another subject of the
/// same stream (nats-server 2.11 and later).
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// The fence's value: who raised it, at which epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceValue {
    pub epoch: u64,
    pub holder: Holder,
}

/// A fence this manager raised: the sequence its writes are conditional on.
#[derive(Debug)]
pub struct Fence {
    bucket: String,
    epoch: u64,
    holder: Holder,
    /// The fence key's sequence in the bucket's stream, as this manager last wrote it.
    seq: AtomicU64,
}

/// What reading the fence found.
pub enum Check {
    /// Still this manager's: its writes may go on (at this sequence).
    Ours,
    /// A newer manager raised it (described): this one must stop.
    Deposed(String),
}

impl Fence {
    /// Raises the fence for `epoch`: writes it unless a newer epoch is already there.
    /// Retries a race with another writer; [`Error::Deposed`] if a newer leader got there.
    pub async fn raise(tasks: &kv::Store, epoch: u64, holder: &Holder) -> Result<Fence, Error> {
        let value = serde_json::to_vec(&FenceValue {
            epoch,
            holder: holder.clone(),
        })
        .expect("a FenceValue is plain data");
        loop {
            let entry = tasks.entry(FENCE_KEY).await.map_err(Error::fence)?;
            let written = match entry {
                Some(e) if e.operation == Operation::Put => {
                    if let Some(newer) = read(&e.value).filter(|f| f.epoch > epoch) {
                        return Err(Error::Deposed {
                            epoch,
                            by: describe(&newer),
                        });
                    }
                    tasks
                        .update(FENCE_KEY, value.clone().into(), e.revision)
                        .await
                        .map_err(|e| (e.kind() == UpdateErrorKind::WrongLastRevision, e.into()))
                }
                _ => tasks
                    .create(FENCE_KEY, value.clone().into())
                    .await
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.into())),
            };
            match written {
                Ok(seq) => {
                    info!(epoch, seq, "raised the Task DB fence");
                    return Ok(Fence {
                        bucket: tasks.name.clone(),
                        epoch,
                        holder: holder.clone(),
                        seq: AtomicU64::new(seq),
                    });
                }
                // Another writer moved it between the read and the write: read again.
                Err((true, _)) => continue,
                Err((false, source)) => return Err(Error::Fence { source }),
            }
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The headers that make a Task DB write conditional on this fence, and name its epoch.
    pub fn headers(&self) -> HeaderMap {
        self.add_headers(HeaderMap::new())
    }

    /// `h` with [`Fence::headers`] added.
    pub fn add_headers(&self, mut h: HeaderMap) -> HeaderMap {
        h.insert(
            EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            kv_subject(&self.bucket, FENCE_KEY).as_str(),
        );
        h.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.seq.load(Ordering::SeqCst).to_string().as_str(),
        );
        h.insert(EPOCH_HEADER, self.epoch.to_string().as_str());
        h
    }

    /// A conditional write was refused: reads the fence again. If it is still this
    /// manager's (at another sequence: a retried write of its own), writes go on with it.
    pub async fn check(&self, tasks: &kv::Store) -> Result<Check, Error> {
        let entry = tasks.entry(FENCE_KEY).await.map_err(Error::fence)?;
        match entry {
            Some(e) if e.operation == Operation::Put => match read(&e.value) {
                Some(f) if f.epoch == self.epoch && f.holder.id == self.holder.id => {
                    self.seq.store(e.revision, Ordering::SeqCst);
                    Ok(Check::Ours)
                }
                Some(f) => Ok(Check::Deposed(describe(&f))),
                None => Ok(Check::Deposed("an unreadable fence".to_string())),
            },
            _ => {
                warn!("the Task DB fence is gone");
                Ok(Check::Deposed("nobody (the fence was deleted)".to_string()))
            }
        }
    }
}

fn read(value: &[u8]) -> Option<FenceValue> {
    serde_json::from_slice(value).ok()
}

fn describe(f: &FenceValue) -> String {
    format!("epoch {} ({})", f.epoch, f.holder)
}
