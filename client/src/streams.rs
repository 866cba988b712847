//! Reading Cube's streams as any client may: the journal (`CUBE_JOURNAL`), its tail or live,
//! and the tail of a task's output (`CUBE_LOGS`, subjects `tasks.logs.<task-id>.<worker>`).

use std::collections::VecDeque;

use async_nats::jetstream::{self, consumer, context::GetStreamErrorKind};
use cube_shared::subjects::{logs_of, JOURNAL_STREAM, LOGS_STREAM};
use cube_shared::wire::{self, DecodeError, MAX_MESSAGE_BYTES};
use cube_shared::JournalEntry;
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::{Cube, Error};

/// The most journal entries scanned for one task's events.
pub const JOURNAL_SCAN: u64 = 10_000;
/// The most bytes of a task's output [`Cube::logs`] returns.
pub const LOG_TAIL_BYTES: usize = 64 * 1024;

/// The tail of a task's output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogTail {
    /// False when no output is kept: the logs stream does not exist (yet).
    pub kept: bool,
    /// The last [`LOG_TAIL_BYTES`] at most, UTF-8 (lossy).
    pub text: String,
    /// Whether earlier output was left out.
    pub truncated: bool,
}

/// The journal from some entry on, as it grows: see [`Cube::follow_journal`].
pub struct JournalFollower {
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
        let msg = match self.messages.next().await? {
            Ok(msg) => msg,
            Err(e) => return Some(Err(Error::nats("reading the journal")(e))),
        };
        Some(Ok(JournalRead {
            entry: wire::decode::<JournalEntry>(&msg.payload, MAX_MESSAGE_BYTES),
            caught_up: msg.info().map_or(0, |i| i.pending) == 0,
        }))
    }
}

impl Cube {
    /// The last `last` journal entries, oldest first; with `task`, only that task's among
    /// the last [`JOURNAL_SCAN`]. Entries that do not read as JournalEntries are left out.
    pub async fn journal(&self, last: u64, task: Option<Uuid>) -> Result<Vec<JournalEntry>, Error> {
        let scan = if task.is_some() { JOURNAL_SCAN } else { last };
        // A journal stream that does not exist yet holds no entries.
        let messages = match self.tail(JOURNAL_STREAM, Vec::new(), scan).await {
            Err(Error::NoStream(_)) => Vec::new(),
            other => other?,
        };
        let mut entries: Vec<JournalEntry> = messages
            .into_iter()
            .filter_map(|m| wire::decode::<JournalEntry>(&m, MAX_MESSAGE_BYTES).ok())
            .filter(|e| task.is_none() || e.task_id == task)
            .collect();
        let excess = entries.len().saturating_sub(last as usize);
        entries.drain(..excess);
        Ok(entries)
    }

    /// Follows the journal: from the `last` newest entries on, or, with `last` 0 or an empty
    /// journal, from the next entry written. [`Error::NoStream`] if no manager ever created
    /// the journal.
    pub async fn follow_journal(&self, last: u64) -> Result<JournalFollower, Error> {
        let follow = async {
            let stream = self.stream(JOURNAL_STREAM).await?;
            // `get_stream` fetched the stream's info just now: no second round trip.
            let newest = stream.cached_info().state.last_sequence;
            let deliver_policy = if last == 0 || newest == 0 {
                consumer::DeliverPolicy::New
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: newest.saturating_sub(last - 1).max(1),
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
            Ok(JournalFollower {
                messages,
                was_empty: newest == 0,
            })
        };
        self.bounded(JOURNAL_STREAM, follow).await
    }

    /// The end of a task's output, or `kept: false` if there is no logs stream.
    pub async fn logs(&self, task: Uuid) -> Result<LogTail, Error> {
        let mut tail = ByteTail::new(LOG_TAIL_BYTES);
        match self
            .read(LOGS_STREAM, logs_of(task), u64::MAX, |chunk| {
                tail.push(chunk)
            })
            .await
        {
            Err(Error::NoStream(_)) => {
                return Ok(LogTail {
                    kept: false,
                    text: String::new(),
                    truncated: false,
                })
            }
            other => other?,
        };
        let (bytes, truncated) = tail.into_bytes();
        Ok(LogTail {
            kept: true,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            truncated,
        })
    }

    /// A stream by name; [`Error::NoStream`] if it does not exist.
    async fn stream(&self, name: &'static str) -> Result<jetstream::stream::Stream, Error> {
        self.js.get_stream(name).await.map_err(|e| match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Error::NoStream(name)
            }
            _ => Error::nats(format!("stream {name}"))(e),
        })
    }

    /// `work`, bounded by the client's timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                what: what.to_string(),
                after: self.timeout,
            })?
    }

    /// The payloads of the last `last` messages of `stream` (on `subjects`, if any), oldest
    /// first. [`Error::NoStream`] if the stream does not exist.
    async fn tail(
        &self,
        stream: &'static str,
        subjects: Vec<String>,
        last: u64,
    ) -> Result<Vec<bytes::Bytes>, Error> {
        let mut out = Vec::new();
        self.read(stream, subjects, last, |m| out.push(m)).await?;
        let excess = out
            .len()
            .saturating_sub(usize::try_from(last).unwrap_or(usize::MAX));
        out.drain(..excess);
        Ok(out)
    }

    /// Hands `keep` the payloads of `stream` (on `subjects`, if any) oldest first: the last
    /// `last` of the stream without subjects, every one of the subjects with them. Only the
    /// messages present when the read starts: a busy writer cannot keep it going.
    async fn read(
        &self,
        stream: &'static str,
        subjects: Vec<String>,
        last: u64,
        mut keep: impl FnMut(bytes::Bytes),
    ) -> Result<(), Error> {
        fn reading<E>(stream: &str) -> impl FnOnce(E) -> Error
        where
            E: std::error::Error + Send + Sync + 'static,
        {
            Error::nats(format!("reading {stream}"))
        }
        let read = async {
            let handle = self.stream(stream).await?;
            let info = handle.cached_info();
            let (first, last_seq) = (info.state.first_sequence, info.state.last_sequence);
            if last_seq == 0 || last == 0 {
                return Ok(());
            }
            // Without a subject filter the tail is a range of sequences; with one, every
            // message of the subject is read (a task's output is capped per subject).
            let deliver_policy = if subjects.is_empty() {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: last_seq.saturating_sub(last - 1).max(first).max(1),
                }
            } else {
                consumer::DeliverPolicy::All
            };
            let mut consumer = handle
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy,
                    filter_subjects: subjects.clone(),
                    ..Default::default()
                })
                .await
                .map_err(reading(stream))?;
            // What is there now; messages stored later are not waited for.
            let pending = consumer.info().await.map_err(reading(stream))?.num_pending;
            if pending == 0 {
                return Ok(());
            }
            let mut messages = consumer.messages().await.map_err(reading(stream))?;
            let mut delivered = 0u64;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(reading(stream))?;
                let (sequence, left) = msg
                    .info()
                    .map_or((0, 0), |i| (i.stream_sequence, i.pending));
                if sequence > last_seq {
                    break;
                }
                keep(msg.payload.clone());
                delivered += 1;
                if left == 0 || delivered >= pending || sequence == last_seq {
                    break;
                }
            }
            Ok(())
        };
        self.bounded(stream, read).await
    }
}

/// The last `budget` bytes of a sequence of chunks, keeping no more than that (plus one
/// chunk) while they arrive.
struct ByteTail {
    budget: usize,
    chunks: VecDeque<bytes::Bytes>,
    held: usize,
    dropped: bool,
}

impl ByteTail {
    fn new(budget: usize) -> ByteTail {
        ByteTail {
            budget,
            chunks: VecDeque::new(),
            held: 0,
            dropped: false,
        }
    }

    fn push(&mut self, chunk: bytes::Bytes) {
        self.held += chunk.len();
        self.chunks.push_back(chunk);
        // Drop whole chunks while what is left still covers the budget.
        while let Some(front) = self.chunks.front() {
            if self.held - front.len() < self.budget {
                break;
            }
            self.held -= front.len();
            self.chunks.pop_front();
            self.dropped = true;
        }
    }

    /// The last `budget` bytes at most, and whether earlier bytes were left out.
    fn into_bytes(self) -> (Vec<u8>, bool) {
        let mut bytes = Vec::with_capacity(self.held);
        for chunk in &self.chunks {
            bytes.extend_from_slice(chunk);
        }
        let start = bytes.len().saturating_sub(self.budget);
        (bytes.split_off(start), self.dropped || start > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(chunks: &[&str], budget: usize) -> (String, bool, usize) {
        let mut tail = ByteTail::new(budget);
        let mut most = 0;
        for c in chunks {
            tail.push(bytes::Bytes::copy_from_slice(c.as_bytes()));
            most = most.max(tail.held);
        }
        let (bytes, truncated) = tail.into_bytes();
        (String::from_utf8(bytes).unwrap(), truncated, most)
    }

    #[test]
    fn the_byte_tail_keeps_the_last_bytes_only() {
        assert_eq!(tail_of(&[], 4), (String::new(), false, 0));
        assert_eq!(tail_of(&["ab", "cd"], 4), ("abcd".into(), false, 4));
        assert_eq!(tail_of(&["ab", "cd", "e"], 4), ("bcde".into(), true, 5));
        let (text, truncated, most) = tail_of(&["abc", "def", "ghi", "jkl", "m"], 4);
        assert_eq!((text.as_str(), truncated), ("jklm", true));
        assert!(most <= 4 + 3, "held {most} bytes");
        assert_eq!(tail_of(&["abcdefgh"], 4), ("efgh".into(), true, 8));
    }
}
