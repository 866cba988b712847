//! Container output to `tasks.logs.<task-id>` (stream `CUBE_LOGS`): one follower per running
//! container batches what the runtime delivers into chunks and publishes them, each with its
//! `Cube-Stream` header.
//!
//! A follower never holds up the worker: it runs on its own, holds at most one chunk, and
//! while NATS is slow or away it simply stops reading (Docker keeps the output meanwhile). A
//! follower that starts again for the same container (a restarted worker adopting it)
//! resumes after the Docker time of the last line it published, found in the last message of
//! the subject.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use cube_shared::subjects::*;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};
use uuid::Uuid;

use crate::runtime::{LogLine, Output, Runtime};

/// Output waits at most this long for more before it is published.
const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// How long one publish may take before it is tried again.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a broken Docker log stream is opened again before the follower gives up.
const REOPEN_ATTEMPTS: u32 = 3;
/// The first and the longest wait before a container that still runs is followed again
/// after its output ended.
const RESUME_MIN: Duration = Duration::from_secs(1);
const RESUME_MAX: Duration = Duration::from_secs(30);

/// A piece of output ready to publish: bytes of one output, and the time of the last line
/// that ends in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub output: Output,
    pub bytes: Bytes,
    pub time: Option<DateTime<Utc>>,
}

/// Batches output into chunks of at most `max` bytes, each of one output (stdout or stderr).
/// It holds at most `max` bytes.
#[derive(Debug)]
pub struct Chunker {
    max: usize,
    output: Output,
    buf: BytesMut,
    time: Option<DateTime<Utc>>,
}

impl Chunker {
    pub fn new(max: usize) -> Chunker {
        Chunker {
            max: max.max(1),
            output: Output::Stdout,
            buf: BytesMut::new(),
            time: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Adds a line; returns the chunks it completed, in order.
    pub fn push(&mut self, line: LogLine) -> Vec<Chunk> {
        let mut done = Vec::new();
        if line.output != self.output {
            done.extend(self.flush());
            self.output = line.output;
        }
        let mut rest = &line.bytes[..];
        while !rest.is_empty() {
            let room = self.max - self.buf.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
            if rest.is_empty() {
                // The line ends in this chunk: resuming after its time will not repeat it.
                self.time = line.time.or(self.time);
            }
            if self.buf.len() == self.max {
                done.extend(self.flush());
            }
        }
        done
    }

    /// What is buffered, as a chunk.
    pub fn flush(&mut self) -> Option<Chunk> {
        if self.buf.is_empty() {
            return None;
        }
        Some(Chunk {
            output: self.output,
            bytes: self.buf.split().freeze(),
            time: self.time,
        })
    }
}

/// A running follower: cancel it, or wait until it has published all the output.
pub(crate) struct Follower {
    token: CancellationToken,
    done: JoinHandle<()>,
    /// Whether its last attempt to reach JetStream failed.
    failing: watch::Receiver<bool>,
    /// How many chunks it has stored.
    stored: watch::Receiver<u64>,
}

/// However steadily a follower makes progress, a drain waits at most this many times its
/// bound without progress.
const DRAIN_LIMIT_FACTOR: u32 = 4;

impl Follower {
    /// Waits for the follower to publish the rest of the output (the container has ended),
    /// then stops it: as long as it stores a chunk at least every `within` (a busy
    /// nats-server acknowledges slowly, but the output still arrives), up to
    /// [`DRAIN_LIMIT_FACTOR`] times `within` in all. It is not waited for while it cannot
    /// reach JetStream: a broken logs stream must not delay the worker.
    pub(crate) async fn drain(mut self, within: Duration) {
        let mut failing = self.failing.clone();
        let limit = tokio::time::sleep(within * DRAIN_LIMIT_FACTOR);
        tokio::pin!(limit);
        loop {
            tokio::select! {
                // The follower ended: done, whatever else is ready too.
                biased;
                _ = &mut self.done => return,
                // `Err` is only the follower ending (its sender dropped): not a failure, and
                // `done` is about to be ready.
                Ok(_) = failing.wait_for(|f| *f) => {
                    warn!("cannot publish the container's output; giving up on the rest");
                    break;
                }
                Ok(()) = self.stored.changed() => continue,
                _ = &mut limit => {
                    warn!(
                        "container output not all published in {:?}; giving up on the rest",
                        within * DRAIN_LIMIT_FACTOR
                    );
                    break;
                }
                _ = tokio::time::sleep(within) => {
                    warn!("no container output published for {within:?}; giving up on the rest");
                    break;
                }
            }
        }
        self.token.cancel();
    }

    pub(crate) fn cancel(&self) {
        self.token.cancel();
    }
}

/// Starts publishing the output of the container of `task_id`'s placement `generation`.
pub(crate) fn follow(
    js: jetstream::Context,
    runtime: Arc<dyn Runtime>,
    task_id: Uuid,
    generation: u64,
    worker: &str,
    parent: &CancellationToken,
    tracker: &TaskTracker,
) -> Follower {
    let token = parent.child_token();
    // Its own span: it outlives the operation that started it.
    let span = info_span!(parent: None, "logs", task.id = %task_id, generation, worker);
    let (failing, failing_rx) = watch::channel(false);
    let (stored, stored_rx) = watch::channel(0);
    let publisher = Publisher {
        js,
        subject: logs_for(task_id, worker),
        generation,
        token: token.clone(),
        failing,
        stored,
    };
    let run = publisher.run(runtime, task_id, worker.to_string());
    let done = tracker.spawn(run.instrument(span));
    Follower {
        token,
        done,
        failing: failing_rx,
        stored: stored_rx,
    }
}

struct Publisher {
    js: jetstream::Context,
    subject: String,
    generation: u64,
    token: CancellationToken,
    /// Whether the last attempt to reach JetStream failed (only the first failure in a row
    /// is a warning).
    failing: watch::Sender<bool>,
    /// Chunks stored so far (a drain waits while this moves).
    stored: watch::Sender<u64>,
}

impl Publisher {
    async fn run(mut self, runtime: Arc<dyn Runtime>, task_id: Uuid, worker: String) {
        let Some(mut since) = self.resume_point().await else {
            return;
        };
        let mut chunker = Chunker::new(LOG_CHUNK_MAX);
        let mut attempts = 0;
        // How long to wait before following again a container whose output ended while it
        // still runs (Docker restarted, the stream broke for good).
        let mut resume_after = RESUME_MIN;
        // Docker's follow can end a moment before the last lines of a container that exits
        // are in its log: once it ends, the rest is read once more, without following.
        let mut catching_up = false;
        'open: loop {
            let mut lines = runtime.logs(task_id, self.generation, since, !catching_up);
            let mut flush_at: Option<tokio::time::Instant> = None;
            loop {
                let next = tokio::select! {
                    _ = self.token.cancelled() => return,
                    _ = sleep_until(flush_at) => {
                        flush_at = None;
                        if let Some(chunk) = chunker.flush() {
                            if !self.publish(chunk).await {
                                return;
                            }
                        }
                        continue;
                    }
                    next = lines.next() => next,
                };
                match next {
                    Some(Ok(line)) => {
                        // Docker's `since` is in whole seconds: skip what was published.
                        if let (Some(after), Some(t)) = (since, line.time) {
                            if t <= after {
                                continue;
                            }
                        }
                        attempts = 0;
                        resume_after = RESUME_MIN;
                        let time = line.time;
                        for chunk in chunker.push(line) {
                            if !self.publish(chunk).await {
                                return;
                            }
                        }
                        since = time.or(since);
                        if !chunker.is_empty() && flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + FLUSH_AFTER);
                        }
                    }
                    Some(Err(e)) if attempts < REOPEN_ATTEMPTS => {
                        attempts += 1;
                        debug!(error = %e, "container output broke off; opening it again");
                        tokio::select! {
                            _ = self.token.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue 'open;
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "cannot read the container's output");
                        break;
                    }
                    None if !catching_up => {
                        catching_up = true;
                        continue 'open;
                    }
                    None => break,
                }
            }
            // The output ended (and what followed was read once more), or cannot be read:
            // over for good only if the container no longer runs.
            if !still_runs(&*runtime, &worker, task_id, self.generation).await {
                break 'open;
            }
            debug!(
                ?resume_after,
                "the container still runs; following it again"
            );
            if let Some(chunk) = chunker.flush() {
                if !self.publish(chunk).await {
                    return;
                }
            }
            tokio::select! {
                _ = self.token.cancelled() => return,
                _ = tokio::time::sleep(resume_after) => {}
            }
            resume_after = (resume_after * 2).min(RESUME_MAX);
            (attempts, catching_up) = (0, false);
        }
        if let Some(chunk) = chunker.flush() {
            self.publish(chunk).await;
        }
        debug!("container output ended");
    }

    /// Where to resume: after the time in the last message of the subject, if it came from
    /// this very container. `None` if cancelled first.
    async fn resume_point(&mut self) -> Option<Option<DateTime<Utc>>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let last = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                let stream = self.js.get_stream_no_info(LOGS_STREAM).await?;
                // A direct get names the subject in the request's own subject, which NATS
                // permissions can bind: a worker may read back only its own output.
                match stream
                    .direct_get_last_for_subject(self.subject.as_str())
                    .await
                {
                    Ok(m) => Ok(Some(m.headers)),
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                }
            })
            .await;
            match last {
                Ok(Ok(headers)) => {
                    self.failing.send_replace(false);
                    let header = |name: &str| {
                        headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| v.as_str().to_string())
                    };
                    let same = header(LOG_GENERATION_HEADER).and_then(|g| g.parse::<u64>().ok())
                        == Some(self.generation);
                    let time = header(LOG_TIME_HEADER)
                        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&Utc));
                    return Some(time.filter(|_| same));
                }
                Ok(Err(e)) => self.failed(&e.to_string(), "reading where the output stopped"),
                Err(_) => self.failed("timed out", "reading where the output stopped"),
            }
            tokio::select! {
                _ = self.token.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Publishes a chunk and waits until JetStream stored it, trying again until it is or the
    /// follower is cancelled. Returns whether it was stored.
    async fn publish(&mut self, chunk: Chunk) -> bool {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(LOG_STREAM_HEADER, chunk.output.as_str());
        headers.insert(LOG_GENERATION_HEADER, self.generation.to_string().as_str());
        if let Some(t) = chunk.time {
            let t = t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            headers.insert(LOG_TIME_HEADER, t.as_str());
        }
        // The same id on every attempt: an attempt whose ack was lost is not stored twice.
        headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                let ack = self
                    .js
                    .publish_with_headers(
                        self.subject.clone(),
                        headers.clone(),
                        chunk.bytes.clone(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map(|_| ()).map_err(|e| e.to_string())
            });
            let result = tokio::select! {
                _ = self.token.cancelled() => return false,
                r = attempt => r,
            };
            match result {
                Ok(Ok(())) => {
                    self.failing.send_replace(false);
                    self.stored.send_modify(|n| *n += 1);
                    return true;
                }
                Ok(Err(e)) => self.failed(&e, "publishing container output"),
                Err(_) => self.failed("timed out", "publishing container output"),
            }
            tokio::select! {
                _ = self.token.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn failed(&mut self, error: &str, what: &str) {
        if self.failing.send_replace(true) {
            debug!(%error, "{what}; retrying");
        } else {
            warn!(%error, "{what}; retrying");
        }
    }
}

/// Whether the container of the task's placement `generation` still runs; if the runtime
/// cannot say, it may.
async fn still_runs(runtime: &dyn Runtime, worker: &str, task_id: Uuid, generation: u64) -> bool {
    match runtime.list(worker).await {
        Ok(observed) => observed
            .iter()
            .any(|o| o.task_id == task_id && o.generation == generation && o.running),
        Err(e) => {
            debug!(error = %e, "cannot tell whether the container still runs");
            true
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
