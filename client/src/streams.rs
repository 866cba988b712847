//! Reading Cube's streams as any client may: the tail of a task's output (`CUBE_LOGS`,
//! subjects `tasks.logs.<task-id>.<worker>`), and the reading they share with the journal.

use std::collections::VecDeque;

use async_nats::jetstream::{self, consumer, context::GetStreamErrorKind};
use cube_shared::subjects::{logs_of, LOGS_STREAM};
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::{Cube, Error};

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

impl Cube {
    /// The end of a task's output, or `kept: false` if there is no logs stream.
    pub async fn logs(&self, task: Uuid) -> Result<LogTail, Error> {
        let mut tail = ByteTail::new(LOG_TAIL_BYTES);
        match self
            .read(LOGS_STREAM, logs_of(task), u64::MAX, |_, chunk| {
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
    pub(crate) async fn stream(
        &self,
        name: &'static str,
    ) -> Result<jetstream::stream::Stream, Error> {
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
    pub(crate) async fn bounded<T>(
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

    /// Hands `keep` the subject and payload of the messages of `stream` (on `subjects`, if
    /// any) oldest first: the last `last` of the stream without subjects, every one of the
    /// subjects with them. Only the messages present when the read starts: a busy writer
    /// cannot keep it going. The stream's first and last sequences when the read started.
    pub(crate) async fn read(
        &self,
        stream: &'static str,
        subjects: Vec<String>,
        last: u64,
        mut keep: impl FnMut(&str, bytes::Bytes),
    ) -> Result<(u64, u64), Error> {
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
                return Ok((first, last_seq));
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
                return Ok((first, last_seq));
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
                keep(msg.subject.as_str(), msg.payload.clone());
                delivered += 1;
                if left == 0 || delivered >= pending || sequence == last_seq {
                    break;
                }
            }
            Ok((first, last_seq))
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
