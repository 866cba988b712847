//! Task status, as `CUBE_STATE` keeps it: the last report of each task's copy on each worker
//! (`tasks.state.<task>.<worker>`, one message per subject). The Task DB keeps decisions; that
//! a task runs, in which container and how healthy, is the worker's report, and a task costs
//! one stored record less for it (see the README, "What a task costs").
//!
//! So a manager that starts leading reads the kept reports back ([`replay`]) after the Task DB,
//! and a task's reports go when the task is forgotten ([`Purger`]), like its record.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use cube_shared::subjects::{STATE_ALL, STATE_STREAM};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::Error;

/// How long reading the kept reports back may take before the takeover is given up (and
/// tried again by the caller).
const REPLAY_PATIENCE: Duration = Duration::from_secs(120);

/// Reads every kept report, oldest first, handing each to `apply` (subject, payload), which
/// says whether its task is known; the reports of unknown tasks (forgotten while the manager
/// that forgot them died before their reports went) are handed to `purger`.
pub(crate) async fn replay(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
    purger: &Purger,
    apply: impl FnMut(&str, &[u8]) -> bool,
) -> Result<(), Error> {
    purger.purge(read_back(js, shutdown, apply).await?);
    Ok(())
}

/// [`replay`]'s reading: the tasks of the reports `apply` did not know.
async fn read_back(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
    mut apply: impl FnMut(&str, &[u8]) -> bool,
) -> Result<Vec<Uuid>, Error> {
    let err = |what: &str, e: async_nats::Error| Error::setup(format!("{what} {STATE_STREAM}"), e);
    let read = async {
        let mut stream = js
            .get_stream(STATE_STREAM)
            .await
            .map_err(|e| err("reading", e.into()))?;
        let kept = stream
            .info()
            .await
            .map_err(|e| err("reading", e.into()))?
            .state
            .messages;
        let mut unknown = Vec::new();
        if kept == 0 {
            return Ok(unknown);
        }
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: STATE_ALL.to_string(),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| err("reading", e.into()))?;
        let mut messages = reader
            .messages()
            .await
            .map_err(|e| err("reading", e.into()))?;
        let mut read = 0u64;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| err("reading", e.into()))?;
            read += 1;
            let pending = msg.info().map(|i| i.pending).unwrap_or(0);
            if !apply(msg.subject.as_str(), &msg.payload) {
                unknown.extend(task_of(msg.subject.as_str()));
            }
            if pending == 0 {
                break;
            }
        }
        info!(
            read,
            unknown = unknown.len(),
            "read back the kept state reports"
        );
        Ok(unknown)
    };
    tokio::select! {
        _ = shutdown.cancelled() => Ok(Vec::new()),
        read = tokio::time::timeout(REPLAY_PATIENCE, read) => match read {
            Ok(read) => read,
            Err(_) => Err(Error::setup(
                format!("reading {STATE_STREAM} back"),
                async_nats::Error::from(format!("not done within {REPLAY_PATIENCE:?}")),
            )),
        },
    }
}

/// The task a report's subject names.
fn task_of(subject: &str) -> Option<Uuid> {
    subject.split('.').nth(2)?.parse().ok()
}

/// The subjects of every report of `task`, on any worker.
fn reports_of(task: Uuid) -> String {
    format!("tasks.state.{task}.*")
}

/// How many purges are under way at once.
const PURGES_AT_ONCE: usize = 8;

/// Purges forgotten tasks' reports in the background, a bounded number at once: off the
/// writer's path, after the tasks' records are deleted. What it has not done when the manager
/// stops is found by the next leader's [`replay`] (reports of unknown tasks).
#[derive(Clone)]
pub(crate) struct Purger {
    tx: mpsc::UnboundedSender<Vec<Uuid>>,
}

impl Purger {
    pub fn spawn(js: jetstream::Context, shutdown: CancellationToken) -> Purger {
        let (tx, rx) = mpsc::unbounded_channel::<Vec<Uuid>>();
        tokio::spawn(async move {
            let Ok(stream) = js.get_stream(STATE_STREAM).await else {
                warn!("{STATE_STREAM} cannot be read: forgotten tasks' reports stay until the next leader");
                return;
            };
            let ids = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|ids| (futures::stream::iter(ids), rx))
            })
            .flatten();
            let purges = ids
                .map(|id| {
                    let stream = stream.clone();
                    async move {
                        if let Err(e) = stream.purge().filter(reports_of(id)).await {
                            debug!(task.id = %id, error = %e, "purging a forgotten task's reports");
                        }
                    }
                })
                .buffer_unordered(PURGES_AT_ONCE)
                .for_each(|()| async {});
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = purges => {}
            }
        });
        Purger { tx }
    }

    /// Purges the reports of `tasks`, whose records are deleted.
    pub fn purge(&self, tasks: Vec<Uuid>) {
        if !tasks.is_empty() {
            let _ = self.tx.send(tasks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_subject_names_its_task() {
        let id = Uuid::new_v4();
        let subject = cube_shared::subjects::state_for(id, "w1");
        assert_eq!(task_of(&subject), Some(id));
        assert_eq!(task_of("tasks.state.nonsense.w1"), None);
        assert_eq!(reports_of(id).replace('*', "w1"), subject);
    }
}
