//! The dashboard's only way to the cluster: the same public NATS contract the CLI speaks
//! (`cube.api.*` requests, `tasks.events`, the journal stream, the logs stream).

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::GetStreamErrorKind};
use cube_manager::api::{TaskList, TaskListQuery};
use cube_shared::subjects::{
    logs_for, API_NODES_LIST, API_TASKS_GET, API_TASKS_LIST, EVENTS, JOURNAL_STREAM, LOGS_STREAM,
};
use cube_shared::wire::{self, encode, MAX_MESSAGE_BYTES};
use cube_shared::{ApiReply, JournalEntry, Node, Task, TaskEvent, TaskQuery};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::Error;

/// How long a request to the manager may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading a stream's tail may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most journal entries scanned for one task's events.
pub const JOURNAL_SCAN: u64 = 10_000;
/// The most bytes of a task's output the dashboard shows.
pub const LOG_TAIL_BYTES: usize = 64 * 1024;

/// A handle on the cluster, cheap to clone.
#[derive(Clone)]
pub struct Cube {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

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

impl Cube {
    pub fn new(client: async_nats::Client) -> Cube {
        Cube {
            js: jetstream::new(client.clone()),
            client,
        }
    }

    /// A `cube.api.*` request.
    async fn request<Q: Serialize, T: DeserializeOwned>(
        &self,
        subject: &'static str,
        body: &Q,
    ) -> Result<T, Error> {
        let reply =
            tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(subject, encode(body)))
                .await
                .map_err(|_| Error::Timeout(subject))?
                .map_err(|e| match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => Error::NoManager(subject),
                    async_nats::RequestErrorKind::TimedOut => Error::Timeout(subject),
                    _ => Error::Nats(format!("{subject}: {e}")),
                })?;
        let reply: ApiReply<T> = wire::decode(&reply.payload, usize::MAX)
            .map_err(|e| Error::Nats(format!("the manager's answer to {subject}: {e}")))?;
        reply.into_result().map_err(Error::Manager)
    }

    pub async fn tasks(&self, query: &TaskListQuery) -> Result<TaskList, Error> {
        self.request(API_TASKS_LIST, query).await
    }

    /// One task by full id, unique id prefix, or name. [`Error::Manager`] if none matches.
    pub async fn task(&self, id: &str) -> Result<Task, Error> {
        self.request(API_TASKS_GET, &TaskQuery { id: id.to_string() })
            .await
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, Error> {
        self.request(API_NODES_LIST, &()).await
    }

    /// Publishes a TaskEvent to `tasks.events` and waits until JetStream stored it.
    pub async fn publish(&self, event: &TaskEvent) -> Result<(), Error> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(encode(event))
            .message_id(event.id.to_string());
        self.js
            .send_publish(EVENTS, publish)
            .await
            .map_err(|e| Error::Nats(format!("publishing to {EVENTS}: {e}")))?
            .await
            .map_err(|e| Error::Nats(format!("JetStream did not store the event: {e}")))?;
        Ok(())
    }

    /// The last `last` journal entries, oldest first; with `task`, only that task's among
    /// the last [`JOURNAL_SCAN`].
    pub async fn journal(&self, last: u64, task: Option<Uuid>) -> Result<Vec<JournalEntry>, Error> {
        let scan = if task.is_some() { JOURNAL_SCAN } else { last };
        // A journal stream that does not exist yet holds no entries.
        let messages = match self.tail(JOURNAL_STREAM, None, scan).await {
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

    /// The end of a task's output, or `kept: false` if there is no logs stream.
    pub async fn logs(&self, task: Uuid) -> Result<LogTail, Error> {
        let mut tail = ByteTail::new(LOG_TAIL_BYTES);
        match self
            .read(LOGS_STREAM, Some(logs_for(task)), u64::MAX, |chunk| {
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

    /// The payloads of the last `last` messages of `stream` (on `subject`, if given), oldest
    /// first. [`Error::NoStream`] if the stream does not exist.
    async fn tail(
        &self,
        stream: &'static str,
        subject: Option<String>,
        last: u64,
    ) -> Result<Vec<bytes::Bytes>, Error> {
        let mut out = Vec::new();
        self.read(stream, subject, last, |m| out.push(m)).await?;
        let excess = out
            .len()
            .saturating_sub(usize::try_from(last).unwrap_or(usize::MAX));
        out.drain(..excess);
        Ok(out)
    }

    /// Hands `keep` the payloads of `stream` (on `subject`, if given) oldest first: the last
    /// `last` of the stream without a subject, every one of the subject with one. Only the
    /// messages present when the read starts: a busy writer cannot keep it going.
    async fn read(
        &self,
        stream: &'static str,
        subject: Option<String>,
        last: u64,
        mut keep: impl FnMut(bytes::Bytes),
    ) -> Result<(), Error> {
        let reading = |e: &dyn std::fmt::Display| Error::Nats(format!("reading {stream}: {e}"));
        let read = async {
            let handle = self
                .js
                .get_stream(stream)
                .await
                .map_err(|e| match e.kind() {
                    GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Error::NoStream(stream)
                    }
                    _ => Error::Nats(format!("stream {stream}: {e}")),
                })?;
            // `get_stream` fetched the stream's info just now: no second round trip.
            let info = handle.cached_info();
            let (first, last_seq) = (info.state.first_sequence, info.state.last_sequence);
            if last_seq == 0 || last == 0 {
                return Ok(());
            }
            // Without a subject filter the tail is a range of sequences; with one, every
            // message of the subject is read (a task's output is capped per subject).
            let deliver_policy = if subject.is_none() {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: last_seq.saturating_sub(last - 1).max(first).max(1),
                }
            } else {
                consumer::DeliverPolicy::All
            };
            let mut consumer = handle
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy,
                    filter_subject: subject.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(|e| reading(&e))?;
            // What is there now; messages stored later are not waited for.
            let pending = consumer.info().await.map_err(|e| reading(&e))?.num_pending;
            if pending == 0 {
                return Ok(());
            }
            let mut messages = consumer.messages().await.map_err(|e| reading(&e))?;
            let mut delivered = 0u64;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(|e| reading(&e))?;
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
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| Error::Timeout(stream))?
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
