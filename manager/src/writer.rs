//! The manager's writer: it makes each batch's decisions durable, in order, while the loop
//! goes on deciding the next batch. A batch's records (Task DB, Event DB) are stored before
//! the work that announces them (a worker checks the Task DB before it acts on work), and
//! the messages the batch handled are acknowledged last, so a manager that dies mid-way has
//! them delivered again.

use async_nats::jetstream;
use cube_bus::Outgoing;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What one batch decided.
#[derive(Default)]
pub(crate) struct Commit {
    pub records: Vec<Outgoing>,
    pub work: Vec<Outgoing>,
    pub handled: Vec<jetstream::Message>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.work.is_empty() && self.handled.is_empty()
    }

    fn append(&mut self, later: Commit) {
        self.records.extend(later.records);
        self.work.extend(later.work);
        self.handled.extend(later.handled);
    }
}

/// How many batches may wait for the writer before the loop waits too.
const QUEUE: usize = 16;

/// Starts the writer. It ends once every sender is dropped and what was queued is written,
/// or at shutdown, leaving unwritten batches unacknowledged.
pub(crate) fn spawn(
    js: jetstream::Context,
    shutdown: CancellationToken,
) -> (mpsc::Sender<Commit>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Commit>(QUEUE);
    let handle = tokio::spawn(async move {
        while let Some(mut commit) = rx.recv().await {
            // Batches that queued up meanwhile go out together: fewer round trips.
            while let Ok(later) = rx.try_recv() {
                commit.append(later);
            }
            for step in [commit.records, commit.work] {
                if step.is_empty() {
                    continue;
                }
                if cube_bus::publish_all(&js, step, &shutdown).await.is_err() {
                    return;
                }
            }
            for msg in commit.handled {
                if let Err(e) = msg.ack().await {
                    warn!(error = %e, "acknowledging");
                }
            }
        }
    });
    (tx, handle)
}
