//! The manager's writer: it carries out each batch's decisions, in order, while the loop goes
//! on deciding the next batch. A batch's records (the Task DB's) are stored before the
//! work that announces them (a worker checks the Task DB before it acts on work); the journal
//! and rejections follow, so they never announce what was not stored; the messages the batch
//! handled are acknowledged last, so a manager that dies mid-way has them delivered again.
//! Forgotten tasks' deletions are the exception: they wait in a queue and go a few at a time
//! with the commits that follow ([`forgetting::CHUNK`]), so that a sweep's thousand never hold
//! up the placements behind them (all go first when a commit writes a task whose id was
//! submitted again). Its journal entry may say "forgotten" a moment before; a manager that
//! dies meanwhile leaves the records to its successor, which forgets them again.
//!
//! It writes only while this manager leads: before each step it checks the lease's [`Gate`],
//! and every Task DB write is conditional on the [`Fence`]. A closed gate or a refused
//! condition (re-read: a newer leader raised the fence) ends the writer at once, leaving the
//! rest unwritten and unacknowledged for the next leader.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use cube_bus::Outgoing;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::lease::fence::Check;
use crate::metrics::Metrics;
use crate::{Fence, Gate};

mod forgetting;
mod journal;

/// What lets the writer write: this manager's term as leader.
pub(crate) struct Term {
    pub gate: Gate,
    pub fence: Arc<Fence>,
    /// The Task DB, whose writes the fence guards.
    pub tasks: kv::Store,
    /// Cancelled by the writer when the fence names a newer leader; the description is
    /// in `deposed_by`.
    pub deposed: CancellationToken,
    pub deposed_by: Arc<std::sync::Mutex<String>>,
}

impl Term {
    /// Stores `records` (Task DB writes conditional on the fence), re-reading the fence when
    /// JetStream refuses one: `false` if this manager must stop writing.
    async fn store(
        &self,
        js: &jetstream::Context,
        records: Vec<Outgoing>,
        shutdown: &CancellationToken,
    ) -> bool {
        let prefix = format!("$KV.{}.", self.tasks.name);
        let mut records = records;
        loop {
            for r in &mut records {
                if r.subject.starts_with(&prefix) {
                    // Beside its own (a deletion's `KV-Operation`).
                    let own = r.headers.take().unwrap_or_default();
                    r.headers = Some(self.fence.add_headers(own));
                }
            }
            match cube_bus::publish_all(js, records.clone(), shutdown).await {
                Ok(()) => return true,
                Err(cube_bus::Error::Refused { index, .. }) => {
                    records.drain(..index);
                    match self.fence.check(&self.tasks).await {
                        Ok(Check::Ours) if self.gate.is_open() => continue,
                        Ok(Check::Ours) => return false,
                        Ok(Check::Deposed(by)) => {
                            error!(epoch = self.fence.epoch(), "a newer leader raised the Task DB fence ({by}); this manager writes nothing more");
                            *self.deposed_by.lock().unwrap_or_else(|p| p.into_inner()) = by;
                            self.deposed.cancel();
                            return false;
                        }
                        Err(e) => {
                            warn!(error = %cube_bus::Chain(&e), "reading the Task DB fence; writing nothing more this term");
                            self.deposed.cancel();
                            return false;
                        }
                    }
                }
                Err(_) => return false,
            }
        }
    }
}

/// What one batch decided.
#[derive(Default)]
pub(crate) struct Commit {
    pub records: Vec<Outgoing>,
    pub work: Vec<Outgoing>,
    /// Journal entries and rejections: core NATS, published after the work.
    pub notices: Vec<(String, bytes::Bytes)>,
    /// When the submissions first placed by `work` arrived: the scheduling latency of each
    /// is observed once `work` is published.
    pub placed: Vec<DateTime<Utc>>,
    pub handled: Vec<jetstream::Message>,
    /// Forgotten tasks, with the deletion of each one's record (if it was stored): their kept
    /// reports go once that is stored.
    pub forgets: Vec<(uuid::Uuid, Option<Outgoing>)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.work.is_empty()
            && self.notices.is_empty()
            && self.handled.is_empty()
            && self.forgets.is_empty()
    }

    fn append(&mut self, later: Commit) {
        self.records.extend(later.records);
        self.work.extend(later.work);
        self.notices.extend(later.notices);
        self.placed.extend(later.placed);
        self.handled.extend(later.handled);
        self.forgets.extend(later.forgets);
    }
}

/// How many batches may wait for the writer before the loop waits too.
const QUEUE: usize = 16;

/// Starts the writer. It ends once every sender is dropped and what was queued is written,
/// or at shutdown, leaving unwritten batches unacknowledged.
pub(crate) fn spawn(
    js: jetstream::Context,
    client: async_nats::Client,
    metrics: Metrics,
    term: Term,
    purger: crate::status::Purger,
    shutdown: CancellationToken,
) -> (mpsc::Sender<Commit>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Commit>(QUEUE);
    let handle = tokio::spawn(async move {
        let journal = journal::Keeper::spawn(client.clone());
        let out = Out {
            js: &js,
            client: &client,
            metrics: &metrics,
            journal: &journal,
            purger: &purger,
        };
        write(&mut rx, &out, &term, &shutdown).await;
        journal.finish().await;
    });
    (tx, handle)
}

/// Where the writer writes.
struct Out<'a> {
    js: &'a jetstream::Context,
    client: &'a async_nats::Client,
    metrics: &'a Metrics,
    journal: &'a journal::Keeper,
    purger: &'a crate::status::Purger,
}

/// Writes commit after commit until every sender is dropped, or until it may not write.
async fn write(
    rx: &mut mpsc::Receiver<Commit>,
    out: &Out<'_>,
    term: &Term,
    shutdown: &CancellationToken,
) {
    let Out {
        js,
        client,
        metrics,
        journal,
        purger,
    } = *out;
    let mut forgetting = forgetting::Forgetting::default();
    loop {
        // While forgotten tasks' deletions wait, an empty commit carries the next few.
        let mut commit = if forgetting.is_empty() {
            match rx.recv().await {
                Some(commit) => commit,
                None => return,
            }
        } else {
            rx.try_recv().unwrap_or_default()
        };
        // Batches that queued up meanwhile go out together: fewer round trips.
        while let Ok(later) = rx.try_recv() {
            commit.append(later);
        }
        forgetting.add(std::mem::take(&mut commit.forgets));
        let began = Instant::now();
        let records = latest_only(commit.records);
        let deletions = forgetting.next_for(&records);
        let records: Vec<Outgoing> = (deletions.before.into_iter())
            .chain(records)
            .chain(deletions.after)
            .collect();
        let sizes = Sizes {
            records: records.len(),
            deletions: records
                .iter()
                .filter(|r| crate::records::is_deletion(r))
                .count(),
            work: commit.work.len(),
            handled: commit.handled.len(),
        };
        if !term.gate.is_open() || !(records.is_empty() || term.store(js, records, shutdown).await)
        {
            return;
        }
        let stored = began.elapsed();
        purger.purge(deletions.forgotten);
        if !commit.work.is_empty()
            && (!term.gate.is_open()
                || cube_bus::publish_all(js, commit.work, shutdown)
                    .await
                    .is_err())
        {
            return;
        }
        if !term.gate.is_open() {
            return;
        }
        let now = Utc::now();
        for received in commit.placed {
            let latency = (now - received).num_microseconds().unwrap_or(0).max(0);
            metrics.scheduling_latency.observe(latency as f64 / 1e6);
        }
        // Core NATS: this only queues the messages in the client. Each entry goes to its
        // own subject for live listeners; the keeper stores them a batch at a time.
        journal.store(journal::entries(&commit.notices));
        for (subject, payload) in commit.notices {
            if let Err(e) = client.publish(subject, payload).await {
                debug!(error = %e, "publishing the journal");
            }
        }
        for msg in commit.handled {
            if let Err(e) = msg.ack().await {
                warn!(error = %e, "acknowledging");
            }
        }
        let took = began.elapsed();
        metrics.commit_seconds.observe(took.as_secs_f64());
        if took >= SLOW_COMMIT {
            debug!(
                took_ms = took.as_millis() as u64,
                stored_ms = stored.as_millis() as u64,
                records = sizes.records,
                deletions = sizes.deletions,
                work = sizes.work,
                handled = sizes.handled,
                "a slow commit: what comes after it waited"
            );
        }
    }
}

/// A commit that takes this long holds up every decision queued behind it (the tail of
/// submit → running); it is logged with its size.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(25);

/// How much a commit wrote.
struct Sizes {
    records: usize,
    deletions: usize,
    work: usize,
    handled: usize,
}

/// Of several writes to the same key (batches merged), only the last: it is the one that
/// must stand.
fn latest_only(records: Vec<Outgoing>) -> Vec<Outgoing> {
    let mut seen = std::collections::HashSet::new();
    let mut latest: Vec<Outgoing> = records
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.subject.clone()))
        .collect();
    latest.reverse();
    // Deletions last: each is of a key whose record was written under another first, which
    // must be stored before the old goes (a record that moved twice in merged batches would
    // otherwise lose its old key before its newest is in).
    latest.sort_by_key(crate::records::is_deletion);
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(subject: &str, value: &'static str) -> Outgoing {
        Outgoing {
            subject: subject.into(),
            payload: bytes::Bytes::from_static(value.as_bytes()),
            msg_id: None,
            headers: None,
        }
    }

    #[test]
    fn merged_batches_write_each_key_once_with_its_last_value() {
        let records = vec![put("a", "1"), put("b", "1"), put("a", "2"), put("c", "1")];
        let kept: Vec<(String, bytes::Bytes)> = latest_only(records)
            .into_iter()
            .map(|r| (r.subject, r.payload))
            .collect();
        let expected = [("b", "1"), ("a", "2"), ("c", "1")]
            .map(|(s, v)| (s.to_string(), bytes::Bytes::from_static(v.as_bytes())));
        assert_eq!(kept, expected);
    }

    #[test]
    fn merged_batches_store_a_record_that_moved_twice_before_deleting_its_old_keys() {
        let del = |subject: &str| {
            let mut h = async_nats::HeaderMap::new();
            h.insert("KV-Operation", "DEL");
            Outgoing {
                headers: Some(h),
                ..put(subject, "")
            }
        };
        // On w1, then w2, then w3, in three merged batches.
        let records = vec![
            put("on.w1.x", "1"),
            put("on.w2.x", "2"),
            del("on.w1.x"),
            put("on.w3.x", "3"),
            del("on.w2.x"),
        ];
        let kept: Vec<String> = latest_only(records)
            .into_iter()
            .map(|r| r.subject)
            .collect();
        assert_eq!(kept, ["on.w3.x", "on.w1.x", "on.w2.x"]);
    }
}
