//! The journal as any client reads it: its tail ([`Cube::journal`]) or followed live
//! ([`Cube::follow_journal`]), from the stream `CUBE_JOURNAL`.
//!
//! The manager publishes each entry on `cube.journal.<kind>` (core NATS, for whoever listens
//! now) and stores the entries of each commit together, as one JSON array on
//! [`JOURNAL_STORED`]: one stored message per batch of decisions rather than one per entry.
//! Messages stored by earlier releases (one entry each, on `cube.journal.<kind>`) read too.

use std::collections::VecDeque;

use async_nats::jetstream::consumer;
use cube_shared::subjects::{JOURNAL_STORED, JOURNAL_STREAM};
use cube_shared::wire::{self, DecodeError, MAX_MESSAGE_BYTES};
use cube_shared::JournalEntry;
use futures::StreamExt;
use uuid::Uuid;

use crate::{Cube, Error};

/// The most journal entries scanned for one task's events.
pub const JOURNAL_SCAN: u64 = 10_000;

/// The largest stored journal message read (the manager writes at most a quarter of this).
const MAX_STORED_BYTES: usize = 1 << 20;

/// The entries of one stored journal message, on `subject`: an array on [`JOURNAL_STORED`],
/// one entry elsewhere (as earlier releases stored them).
pub fn entries_of(subject: &str, payload: &[u8]) -> Vec<Result<JournalEntry, DecodeError>> {
    if subject == JOURNAL_STORED {
        let invalid = |message: String| DecodeError::Json {
            path: String::new(),
            message,
        };
        if payload.len() > MAX_STORED_BYTES {
            return vec![Err(DecodeError::TooLarge {
                size: payload.len(),
                max: MAX_STORED_BYTES,
            })];
        }
        match serde_json::from_slice::<Vec<serde_json::Value>>(payload) {
            Ok(values) => values
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    serde_json::Value::Object(_) => {
                        serde_json::from_value(v).map_err(|e| invalid(format!("entry {i}: {e}")))
                    }
                    _ => Err(invalid(format!("entry {i} is not a JSON object"))),
                })
                .collect(),
            Err(e) => vec![Err(invalid(format!("a stored journal message: {e}")))],
        }
    } else {
        vec![wire::decode::<JournalEntry>(payload, MAX_MESSAGE_BYTES)]
    }
}

/// The journal from some entry on, as it grows: see [`Cube::follow_journal`].
pub struct JournalFollower {
    /// Entries read but not handed out yet, each with whether it was the newest stored.
    ready: VecDeque<JournalRead>,
    messages: consumer::pull::Ordered,
    was_empty: bool,
}

/// One entry read from the journal.
#[derive(Debug)]
pub struct JournalRead {
    /// The entry, or why it could not be read (the journal is written by the manager alone,
    /// but a reader should survive a stray message).
    pub entry: Result<JournalEntry, DecodeError>,
    /// Whether this was the newest entry stored when it was read.
    pub caught_up: bool,
}

impl JournalFollower {
    /// Whether the journal held no entry when following began: nothing will be read until
    /// the manager writes one.
    pub fn was_empty(&self) -> bool {
        self.was_empty
    }

    /// The next entry, waiting for one if need be; `None` if the consumer ended.
    pub async fn next(&mut self) -> Option<Result<JournalRead, Error>> {
        loop {
            if let Some(read) = self.ready.pop_front() {
                return Some(Ok(read));
            }
            let msg = match self.messages.next().await? {
                Ok(msg) => msg,
                Err(e) => return Some(Err(Error::nats("reading the journal")(e))),
            };
            let newest = msg.info().map_or(0, |i| i.pending) == 0;
            self.ready
                .extend(reads(entries_of(&msg.subject, &msg.payload), newest));
        }
    }
}

/// `entries` as reads, the last one `caught_up` if the message was the newest.
fn reads(
    entries: Vec<Result<JournalEntry, DecodeError>>,
    newest: bool,
) -> impl Iterator<Item = JournalRead> {
    let n = entries.len();
    entries
        .into_iter()
        .enumerate()
        .map(move |(i, entry)| JournalRead {
            entry,
            caught_up: newest && i + 1 == n,
        })
}

impl Cube {
    /// The last `last` journal entries, oldest first; with `task`, only that task's among
    /// the last [`JOURNAL_SCAN`]. Entries that do not read as JournalEntries are left out.
    pub async fn journal(&self, last: u64, task: Option<Uuid>) -> Result<Vec<JournalEntry>, Error> {
        let (entries, _) = self.journal_tail(last, task).await?;
        Ok(entries)
    }

    /// [`Cube::journal`], with the stream's last sequence when it was read (0: empty).
    async fn journal_tail(
        &self,
        last: u64,
        task: Option<Uuid>,
    ) -> Result<(Vec<JournalEntry>, u64), Error> {
        let scan = if task.is_some() { JOURNAL_SCAN } else { last };
        if scan == 0 {
            return Ok((Vec::new(), 0));
        }
        // A message holds one entry or many: read the last few messages, and more (from
        // further back) until they hold enough entries or the stream has no more.
        let mut messages = 64u64;
        loop {
            let mut entries: Vec<JournalEntry> = Vec::new();
            let mut scanned = 0u64;
            let read = self
                .read(JOURNAL_STREAM, Vec::new(), messages, |subject, payload| {
                    for entry in entries_of(subject, &payload).into_iter().flatten() {
                        scanned += 1;
                        entries.push(entry);
                    }
                })
                .await;
            let (first, newest) = match read {
                // A journal stream that does not exist yet holds no entries.
                Err(Error::NoStream(_)) => return Ok((Vec::new(), 0)),
                other => other?,
            };
            let from_start = newest.saturating_sub(messages) < first.max(1);
            if scanned >= scan || from_start {
                let excess = entries.len().saturating_sub(scan as usize);
                entries.drain(..excess);
                entries.retain(|e| task.is_none() || e.task_id == task);
                let excess = entries.len().saturating_sub(last as usize);
                entries.drain(..excess);
                return Ok((entries, newest));
            }
            messages = messages.saturating_mul(8);
        }
    }

    /// Follows the journal: from the `last` newest entries on, or, with `last` 0 or an empty
    /// journal, from the next entry written. [`Error::NoStream`] if no manager ever created
    /// the journal.
    pub async fn follow_journal(&self, last: u64) -> Result<JournalFollower, Error> {
        let (history, newest) = if last == 0 {
            (Vec::new(), 0)
        } else {
            self.journal_tail(last, None).await?
        };
        let follow = async {
            let stream = self.stream(JOURNAL_STREAM).await?;
            // `get_stream` fetched the stream's info just now: no second round trip.
            let now_newest = stream.cached_info().state.last_sequence;
            let deliver_policy = if last == 0 || newest == 0 {
                consumer::DeliverPolicy::New
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: newest + 1,
                }
            };
            let messages = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .map_err(Error::nats("reading the journal"))?
                .messages()
                .await
                .map_err(Error::nats("reading the journal"))?;
            let caught_up = now_newest <= newest;
            // Nothing readable stored yet counts as empty: a reader that stops once caught
            // up would otherwise wait for an entry that marks it.
            let was_empty = now_newest == 0 || (history.is_empty() && caught_up);
            let ready = reads(history.into_iter().map(Ok).collect(), caught_up).collect();
            Ok(JournalFollower {
                ready,
                messages,
                was_empty,
            })
        };
        self.bounded(JOURNAL_STREAM, follow).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_holds_an_array_or_one_entry_as_earlier_releases_stored() {
        let a = JournalEntry::new("submitted", "a");
        let b = JournalEntry::new("scheduled", "b");
        let batch = wire::encode(&vec![a.clone(), b.clone()]);
        let read: Vec<_> = entries_of(JOURNAL_STORED, &batch)
            .into_iter()
            .map(|e| e.unwrap().kind)
            .collect();
        assert_eq!(read, ["submitted", "scheduled"]);
        let one = entries_of("cube.journal.submitted", &wire::encode(&a));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_ref().unwrap().message, "a");
        assert!(entries_of(JOURNAL_STORED, b"not json")[0].is_err());
    }

    #[test]
    fn only_the_last_entry_of_the_newest_message_is_caught_up() {
        let e = || Ok(JournalEntry::new("k", "m"));
        let flags: Vec<bool> = reads(vec![e(), e(), e()], true)
            .map(|r| r.caught_up)
            .collect();
        assert_eq!(flags, [false, false, true]);
        assert!(reads(vec![e()], false).all(|r| !r.caught_up));
    }
}
