//! The Task DB's history as JetStream stored it ([`TaskDbHistory`]): every record of the
//! `cube-tasks` bucket (its stream `KV_cube-tasks`), in stream order, with the epoch of the
//! manager that wrote it (the `Cube-Epoch` header). With it a test checks fencing from the
//! outside: once a newer leader has written, nothing an older one sends is stored.
//!
//! The bucket keeps one value per key, so a record is gone from the stream once its task is
//! written again; the history is therefore read live, by an ordered consumer started before
//! the writes of interest, which delivers each record as it is stored. Beside it, a plain
//! subscription on the bucket's subjects sees every write *sent*, stored or refused by the
//! fence ([`TaskDbHistory::attempts`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use async_nats::jetstream::{self, consumer::push, consumer::DeliverPolicy};
use cube_shared::subjects::{EPOCH_HEADER, TASK_DB};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::events::lock;

/// One record of the Task DB, as stored (or, in [`TaskDbHistory::attempts`], as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence in the bucket's stream (0 for a write seen only as sent).
    pub seq: u64,
    /// The key (a task id, or `fence`).
    pub key: String,
    /// The writer's epoch, from the `Cube-Epoch` header (`None`: a write without it, such as
    /// the fence itself, or a deletion).
    pub epoch: Option<u64>,
    /// When this process received it.
    pub seen: tokio::time::Instant,
}

/// The bucket's stream.
fn stream_name() -> String {
    format!("KV_{TASK_DB}")
}

/// The bucket's subject prefix.
fn subject_prefix() -> String {
    format!("$KV.{TASK_DB}.")
}

fn epoch_of(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(EPOCH_HEADER)?.as_str().parse().ok()
}

impl Record {
    /// A record on `subject` (in the bucket's stream at `seq`), received now.
    fn of(subject: &str, headers: Option<&async_nats::HeaderMap>, seq: u64) -> Record {
        Record {
            seq,
            key: subject
                .strip_prefix(&subject_prefix())
                .unwrap_or(subject)
                .to_string(),
            epoch: epoch_of(headers),
            seen: tokio::time::Instant::now(),
        }
    }
}

/// The Task DB's history, recorded live from [`TaskDbHistory::record`] on; see the module's
/// documentation. Dropping it stops the recording.
pub struct TaskDbHistory {
    stream: jetstream::stream::Stream,
    stored: Arc<Mutex<Vec<Record>>>,
    attempts: Arc<Mutex<Vec<Record>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TaskDbHistory {
    /// Starts recording: every record the stream holds now and every one stored from now on,
    /// and every write sent from now on. Waits (up to 30 s) for the bucket to exist: a manager
    /// creates it.
    pub async fn record(client: &async_nats::Client) -> Result<TaskDbHistory> {
        let js = jetstream::new(client.clone());
        let name = stream_name();
        let mut stream = crate::eventually(
            Duration::from_secs(30),
            &format!("the stream {name} exists"),
            || {
                let (js, name) = (js.clone(), name.clone());
                async move { Ok(js.get_stream(&name).await?) }
            },
        )
        .await?;
        stream.info().await?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();

        let stored: Arc<Mutex<Vec<Record>>> = Arc::default();
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                deliver_policy: DeliverPolicy::All,
                filter_subject: format!("{}>", subject_prefix()),
                ..Default::default()
            })
            .await
            .context("creating an ordered consumer on the Task DB's stream")?;
        let mut messages = consumer.messages().await?;
        let (into, errs) = (stored.clone(), errors.clone());
        let reading = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        lock(&errs).push(format!("reading the Task DB's stream: {e}"));
                        continue;
                    }
                };
                let seq = match msg.info() {
                    Ok(info) => info.stream_sequence,
                    Err(e) => {
                        lock(&errs).push(format!("a Task DB record without its sequence: {e}"));
                        continue;
                    }
                };
                lock(&into).push(Record::of(&msg.subject, msg.headers.as_ref(), seq));
            }
            lock(&errs).push("the Task DB's ordered consumer ended".to_string());
        });

        let attempts: Arc<Mutex<Vec<Record>>> = Arc::default();
        let mut sent = client.subscribe(format!("{}>", subject_prefix())).await?;
        client.flush().await?;
        let into = attempts.clone();
        let watching = tokio::spawn(async move {
            while let Some(msg) = sent.next().await {
                lock(&into).push(Record::of(&msg.subject, msg.headers.as_ref(), 0));
            }
        });
        Ok(TaskDbHistory {
            stream,
            stored,
            attempts,
            errors,
            tasks: vec![reading, watching],
        })
    }

    /// Every record stored so far, in stream order, once the recording has caught up with
    /// everything the stream had stored when this was called (waiting up to `within`).
    pub async fn stored(&mut self, within: Duration) -> Result<Vec<Record>> {
        let last = self.stream.info().await?.state.last_sequence;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let errors = lock(&self.errors).clone();
            ensure!(
                errors.is_empty(),
                "the Task DB's history cannot be trusted: {errors:?}"
            );
            let records = lock(&self.stored).clone();
            if records.last().is_some_and(|r| r.seq >= last) {
                for pair in records.windows(2) {
                    ensure!(
                        pair[0].seq < pair[1].seq,
                        "the history is out of order: {:?} then {:?}",
                        pair[0],
                        pair[1]
                    );
                }
                return Ok(records);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the Task DB's history did not reach sequence {last} within {within:?}: \
                     {} records, the last {:?}",
                    records.len(),
                    records.last()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every write sent to the bucket since the recording began, stored or not, in the order
    /// this process received them.
    pub fn attempts(&self) -> Vec<Record> {
        lock(&self.attempts).clone()
    }
}

impl Drop for TaskDbHistory {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The epochs of `records` in the order of their first write, with how many records each
/// has: `[(epoch, count)]`.
pub fn epochs(records: &[Record]) -> Vec<(u64, usize)> {
    let mut out: Vec<(u64, usize)> = Vec::new();
    for epoch in records.iter().filter_map(|r| r.epoch) {
        match out.iter_mut().find(|(e, _)| *e == epoch) {
            Some((_, n)) => *n += 1,
            None => out.push((epoch, 1)),
        }
    }
    out
}

/// Checks that no record of epoch `old` comes after the first record of epoch `new`, and
/// that, more generally, no record's epoch is below one stored before it (each leader's
/// writes end where the next one's begin).
pub fn check_fenced(records: &[Record], old: u64, new: u64) -> Result<()> {
    ensure!(old < new, "epoch {old} is not older than {new}");
    let first_new = records
        .iter()
        .position(|r| r.epoch == Some(new))
        .ok_or_else(|| anyhow!("no record of epoch {new} was stored"))?;
    let late: Vec<(u64, &str)> = records[first_new..]
        .iter()
        .filter(|r| r.epoch == Some(old))
        .map(|r| (r.seq, r.key.as_str()))
        .collect();
    ensure!(
        late.is_empty(),
        "{} records of epoch {old} were stored after the first of epoch {new} (sequence {}); \
         (sequence, key): {}",
        late.len(),
        records[first_new].seq,
        crate::events::first(&late),
    );
    let mut highest: Option<&Record> = None;
    for r in records {
        let Some(epoch) = r.epoch else { continue };
        if let Some(h) = highest {
            ensure!(
                epoch >= h.epoch.unwrap_or(0),
                "a record of epoch {epoch} was stored after one of epoch {:?}: {r:?} after {h:?}",
                h.epoch
            );
        }
        if highest.is_none_or(|h| Some(epoch) > h.epoch) {
            highest = Some(r);
        }
    }
    Ok(())
}
