//! `GET /api/stream`: server-sent events for the dashboard. Each connection gets its own
//! NATS subscriptions, made before the response starts (so a client that saw the stream
//! open misses nothing after that), and dropped when the client goes away:
//!
//! - `task`: a Task, each time the Task DB records it (submission, placement, a decision such
//!   as a stop, a restart or an end); a service's copies are tasks with `service` set. That a
//!   task runs, and its health, are its worker's reports (kept in `CUBE_STATE`), not Task DB
//!   writes: they come as `journal` entries (`running`, `starting`, `healthy`, `unhealthy`);
//! - `service`: a Service, each time the Task DB records it (under `service.<name>`: a
//!   deploy, a scale, a rollout's progress, a removal), and `service-gone` with the name (a JSON
//!   string) when the record is deleted;
//! - `journal`: a JournalEntry, as the manager writes it;
//! - `nodes`: the node list (with states and reservations), after heartbeats, at most once
//!   a second, and every few seconds regardless so that a silent node is seen going down;
//! - `managers`: the manager processes (as `GET /api/managers`), at once on a takeover (a
//!   journal entry of kind `leader`) and every few seconds regardless, so that a leader's
//!   death and a standby's arrival are seen.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::response::sse::{Event, KeepAlive, Sse};
use cube_client::{Chain, JournalFollower};
use cube_shared::service::SERVICE_KEY_PREFIX;
use cube_shared::subjects::{HEARTBEAT_ALL, TASK_DB};
use cube_shared::{wire, Service};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::api::ApiError;
use crate::{App, Error, Routes};

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/api/stream", stream)
}

/// The node list is sent at least this often.
const NODES_EVERY: Duration = Duration::from_secs(5);

/// The manager list is sent at least this often.
const MANAGERS_EVERY: Duration = Duration::from_secs(5);

async fn stream(
    State(app): State<App>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tasks = app
        .cube
        .jetstream()
        .get_key_value(TASK_DB)
        .await
        .map_err(live("the Task DB"))?
        .watch_all()
        .await
        .map_err(live("watching the Task DB"))?;
    // From the next entry the manager writes.
    let journal = app.cube.follow_journal(0).await?;
    let heartbeats = app
        .cube
        .nats()
        .subscribe(HEARTBEAT_ALL)
        .await
        .map_err(live("heartbeats"))?;
    app.cube.nats().flush().await.map_err(live("flushing"))?;

    let (tx, rx) = mpsc::channel::<Event>(256);
    // Gathering the managers' answers takes a moment: apart, so that it never holds up the
    // other events.
    let takeover = Arc::new(Notify::new());
    tokio::spawn(managers(app.clone(), takeover.clone(), tx.clone()));
    tokio::spawn(forward(app, tasks, journal, heartbeats, takeover, tx));
    let events =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A closure for `map_err` that keeps a NATS error as the source of [`Error::Live`].
fn live<E>(what: &'static str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::Live {
        what,
        source: Box::new(e),
    }
}

/// Forwards one client's subscriptions until it disconnects or the server shuts down.
async fn forward(
    app: App,
    mut tasks: async_nats::jetstream::kv::Watch,
    mut journal: JournalFollower,
    mut heartbeats: async_nats::Subscriber,
    takeover: Arc<Notify>,
    tx: mpsc::Sender<Event>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut nodes_due = true;
    let mut last_nodes = tokio::time::Instant::now();
    loop {
        let event = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tx.closed() => break,
            Some(entry) = tasks.next() => match entry {
                Ok(entry) => task_db_event(&entry),
                Err(e) => {
                    debug!(error = %e, "watching the Task DB");
                    break;
                }
            },
            Some(read) = journal.next() => match read {
                Ok(read) => read.entry.ok().map(|e| {
                    if e.kind.starts_with("node") || e.kind == "drain" {
                        nodes_due = true;
                    }
                    if e.kind == "leader" {
                        takeover.notify_one();
                        // The new leader rebuilt its picture: the node list may differ.
                        nodes_due = true;
                    }
                    json_event("journal", &e)
                }),
                Err(e) => {
                    debug!(error = %Chain(&e), "following the journal");
                    break;
                }
            },
            Some(_) = heartbeats.next() => {
                nodes_due = true;
                None
            },
            _ = tick.tick() => {
                if nodes_due || last_nodes.elapsed() >= NODES_EVERY {
                    nodes_due = false;
                    last_nodes = tokio::time::Instant::now();
                    match app.cube.nodes().await {
                        Ok(nodes) => Some(json_event("nodes", &nodes)),
                        Err(e) => Some(Event::default().event("problem").data(Chain(&e).to_string())),
                    }
                } else {
                    None
                }
            }
        };
        if let Some(event) = event {
            if tx.send(event).await.is_err() {
                break;
            }
        }
    }
}

/// What the browser hears of a Task DB entry: only what parses as a Task or a Service goes
/// to it (not the fence, nor anything else the bucket may hold).
fn task_db_event(entry: &async_nats::jetstream::kv::Entry) -> Option<Event> {
    use async_nats::jetstream::kv::Operation;
    match (entry.key.strip_prefix(SERVICE_KEY_PREFIX), entry.operation) {
        (Some(_), Operation::Put) => wire::decode::<Service>(&entry.value, usize::MAX)
            .ok()
            .map(|s| json_event("service", &s)),
        (Some(name), _) => Some(json_event("service-gone", &name)),
        (None, Operation::Put) => wire::decode_stored_task(&entry.value)
            .ok()
            .map(|t| json_event("task", &t)),
        (None, _) => None,
    }
}

/// Sends the manager list at once, then on each takeover and every [`MANAGERS_EVERY`], until
/// the client disconnects or the server shuts down.
async fn managers(app: App, takeover: Arc<Notify>, tx: mpsc::Sender<Event>) {
    loop {
        let event = match app.cube.managers(cube_client::MANAGERS_WAIT).await {
            Ok(managers) => json_event("managers", &managers),
            Err(e) => Event::default()
                .event("problem")
                .data(Chain(&e).to_string()),
        };
        if tx.send(event).await.is_err() {
            return;
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = takeover.notified() => {}
            _ = tokio::time::sleep(MANAGERS_EVERY) => {}
        }
    }
}

/// A server-sent event named `name` whose data is `value` as JSON.
fn json_event(name: &'static str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(String::from_utf8_lossy(&wire::encode(value)))
}
