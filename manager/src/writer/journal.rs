//! The journal as stored. Each entry goes live on `cube.journal.<kind>` as the writer
//! publishes its commit; the keeper here stores them on [`JOURNAL_STORED`] as JSON arrays of
//! at most [`STORED_BATCH_BYTES`], at most once every [`STORE_EVERY`]: the entries of a quiet
//! cluster are stored at once (`cube events` shows what `cube submit --wait` just saw), those
//! of a busy one gathered over commits (at 1,000 tasks a second a commit holds a handful of
//! entries, and one stored message per commit was more than one per task).
//!
//! Like the live entries, the stored journal is best effort (core NATS, captured by the
//! stream): a manager killed loses what it had gathered, at most [`STORE_EVERY`]'s worth.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use cube_shared::subjects::{JOURNAL_ALL, JOURNAL_STORED};

/// How long after a store the next may follow.
pub(crate) const STORE_EVERY: Duration = Duration::from_millis(20);

/// The most bytes of one stored journal message.
pub(crate) const STORED_BATCH_BYTES: usize = 256 * 1024;

/// How many commits' entries may wait for the keeper; beyond, entries are not stored (the
/// keeper is stuck on a client that cannot send) rather than the writer waiting.
const QUEUE: usize = 1024;

/// How long the keeper may take to hand its last entries to the client once the writer ends.
const LAST_STORE: Duration = Duration::from_secs(1);

/// The journal entries among a commit's `notices` (on `cube.journal.<kind>`), in order.
pub(super) fn entries(notices: &[(String, Bytes)]) -> Vec<Bytes> {
    let prefix = JOURNAL_ALL.trim_end_matches('>');
    notices
        .iter()
        .filter(|(s, _)| s.starts_with(prefix))
        .map(|(_, e)| e.clone())
        .collect()
}

/// Entries as the journal stream stores them: JSON arrays, in order, each at most
/// [`STORED_BATCH_BYTES`] (or one entry, if a single one is larger).
fn stored_batches(entries: &[Bytes]) -> Vec<Bytes> {
    let mut batches = Vec::new();
    let mut batch: Vec<u8> = Vec::new();
    for entry in entries {
        if !batch.is_empty() && batch.len() + entry.len() + 2 > STORED_BATCH_BYTES {
            batch.push(b']');
            batches.push(std::mem::take(&mut batch).into());
        }
        batch.push(if batch.is_empty() { b'[' } else { b',' });
        batch.extend_from_slice(entry);
    }
    if !batch.is_empty() {
        batch.push(b']');
        batches.push(batch.into());
    }
    batches
}

/// Entries gathered for storing: when they are due, with time passed in.
#[derive(Debug, Default)]
struct Gathered {
    entries: Vec<Bytes>,
    bytes: usize,
    /// When the oldest of `entries` arrived.
    since: Option<Instant>,
    /// When entries were last taken to be stored.
    stored: Option<Instant>,
}

impl Gathered {
    /// Adds the entries of a commit that arrived at `now`; the batches to store at once
    /// (none, unless a full batch's worth has gathered).
    fn add(&mut self, entries: Vec<Bytes>, now: Instant) -> Vec<Bytes> {
        if entries.is_empty() {
            return Vec::new();
        }
        self.since.get_or_insert(now);
        self.bytes += entries.iter().map(|e| e.len() + 1).sum::<usize>();
        self.entries.extend(entries);
        if self.bytes >= STORED_BATCH_BYTES {
            return self.take(now);
        }
        Vec::new()
    }

    /// When what is gathered is due to be stored: at once if nothing was stored for
    /// [`STORE_EVERY`], else that long after the last store.
    fn due(&self) -> Option<Instant> {
        let since = self.since?;
        Some(match self.stored {
            Some(stored) => since.max(stored + STORE_EVERY),
            None => since,
        })
    }

    /// Everything gathered, as the batches to store at `now`.
    fn take(&mut self, now: Instant) -> Vec<Bytes> {
        let batches = stored_batches(&self.entries);
        *self = Gathered {
            stored: Some(now),
            ..Gathered::default()
        };
        batches
    }
}

/// The writer's side of the keeper.
pub(super) struct Keeper {
    tx: mpsc::Sender<Vec<Bytes>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Keeper {
    pub(super) fn spawn(client: async_nats::Client) -> Keeper {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(keep(client, rx));
        Keeper { tx, handle }
    }

    /// Hands a commit's journal entries over, never waiting.
    pub(super) fn store(&self, entries: Vec<Bytes>) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(entries) {
            debug!(error = %e, "the journal keeper is behind: entries not stored");
        }
    }

    /// Stores what is gathered and ends, within [`LAST_STORE`].
    pub(super) async fn finish(self) {
        drop(self.tx);
        if tokio::time::timeout(LAST_STORE, self.handle).await.is_err() {
            debug!("the journal's last entries were not stored in time");
        }
    }
}

async fn keep(client: async_nats::Client, mut rx: mpsc::Receiver<Vec<Bytes>>) {
    let mut gathered = Gathered::default();
    loop {
        let due = gathered.due();
        let batches = tokio::select! {
            got = rx.recv() => match got {
                Some(entries) => gathered.add(entries, Instant::now()),
                None => {
                    publish(&client, gathered.take(Instant::now())).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                gathered.take(Instant::now())
            }
        };
        publish(&client, batches).await;
    }
}

/// Core NATS: this only queues the messages in the client; the stream captures them.
async fn publish(client: &async_nats::Client, batches: Vec<Bytes>) {
    for batch in batches {
        if let Err(e) = client.publish(JOURNAL_STORED, batch).await {
            debug!(error = %e, "storing the journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Bytes {
        let e = cube_shared::JournalEntry::new("scheduled", format!("{i:0>1000}"));
        cube_shared::wire::encode(&e)
    }

    fn read(batches: &[Bytes]) -> Vec<String> {
        let mut read = Vec::new();
        for b in batches {
            assert!(b.len() <= STORED_BATCH_BYTES, "{}", b.len());
            let entries: Vec<cube_shared::JournalEntry> = serde_json::from_slice(b).unwrap();
            read.extend(entries.into_iter().map(|e| e.message));
        }
        read
    }

    fn message(i: usize) -> String {
        format!("{i:0>1000}")
    }

    #[test]
    fn the_journal_is_stored_a_batch_at_a_time_in_order_and_bounded() {
        let mut notices: Vec<(String, Bytes)> = (0..600)
            .map(|i| (cube_shared::subjects::journal_for("scheduled"), entry(i)))
            .collect();
        notices.insert(3, ("tasks.rejected".into(), Bytes::from_static(b"{}")));
        let batches = stored_batches(&entries(&notices));
        assert!(batches.len() >= 3, "{} batches", batches.len());
        let sent: Vec<String> = (0..600).map(message).collect();
        assert_eq!(
            read(&batches),
            sent,
            "every entry once, in order, and no rejection"
        );
        assert!(stored_batches(&[]).is_empty());
    }

    #[test]
    fn a_quiet_journal_is_stored_at_once_a_busy_one_at_most_every_20_ms() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut g = Gathered::default();
        assert_eq!(g.due(), None, "nothing gathered, nothing due");
        assert!(g.add(Vec::new(), t0).is_empty());
        assert_eq!(g.due(), None, "an empty commit makes nothing due");
        assert!(g.add(vec![entry(0)], t0).is_empty());
        assert_eq!(g.due(), Some(t0), "the first entries are due at once");
        assert_eq!(read(&g.take(t0)), [message(0)]);
        assert_eq!(g.due(), None);
        // Commits within 20 ms of that store wait until 20 ms after it, together.
        for i in 1..10 {
            assert!(
                g.add(vec![entry(i as usize)], ms(i * 2)).is_empty(),
                "stored early"
            );
        }
        assert_eq!(
            g.due(),
            Some(ms(20)),
            "due a store's interval after the last"
        );
        let batches = g.take(ms(20));
        assert_eq!(batches.len(), 1, "one stored message for nine commits");
        assert_eq!(read(&batches), (1..10).map(message).collect::<Vec<_>>());
        assert!(g.take(ms(20)).is_empty());
        // Quiet again: due when it arrives.
        assert!(g.add(vec![entry(10)], ms(500)).is_empty());
        assert_eq!(g.due(), Some(ms(500)));
    }

    #[test]
    fn a_full_batch_is_stored_at_once() {
        let now = Instant::now();
        let mut g = Gathered::default();
        let mut stored = Vec::new();
        for i in 0..300 {
            stored.extend(g.add(vec![entry(i)], now));
        }
        assert!(!stored.is_empty(), "300 KB gathered and nothing stored");
        stored.extend(g.take(now));
        assert_eq!(read(&stored), (0..300).map(message).collect::<Vec<_>>());
    }
}
