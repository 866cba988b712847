//! `GET /api/stream`: server-sent events for the dashboard. Each connection gets its own
//! NATS subscriptions, made before the response starts (so a client that saw the stream
//! open misses nothing after that), and dropped when the client goes away:
//!
//! - `task`: a Task, each time the Task DB records it (submission, placement, state change);
//! - `journal`: a JournalEntry, as the manager writes it;
//! - `nodes`: the node list (with states and reservations), after heartbeats, at most once
//!   a second, and every few seconds regardless so that a silent node is seen going down.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer;
use axum::extract::State;
use axum::http::Method;
use axum::response::sse::{Event, KeepAlive, Sse};
use cube_shared::subjects::{HEARTBEAT_ALL, JOURNAL_STREAM, TASK_DB};
use cube_shared::wire::{self, MAX_EVENT_BYTES, MAX_MESSAGE_BYTES};
use cube_shared::{JournalEntry, Task};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::api::ApiError;
use crate::{App, Error, Routes};

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/api/stream", stream)
}

/// The node list is sent at least this often.
const NODES_EVERY: Duration = Duration::from_secs(5);

async fn stream(
    State(app): State<App>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let nats = |e: &dyn std::fmt::Display| Error::Nats(format!("live updates: {e}"));
    let tasks = app
        .cube
        .js
        .get_key_value(TASK_DB)
        .await
        .map_err(|e| nats(&e))?
        .watch_all()
        .await
        .map_err(|e| nats(&e))?;
    let journal = app
        .cube
        .js
        .get_stream(JOURNAL_STREAM)
        .await
        .map_err(|e| nats(&e))?
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?
        .messages()
        .await
        .map_err(|e| nats(&e))?;
    let heartbeats = app
        .cube
        .client
        .subscribe(HEARTBEAT_ALL)
        .await
        .map_err(|e| nats(&e))?;
    app.cube.client.flush().await.map_err(|e| nats(&e))?;

    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(forward(app, tasks, journal, heartbeats, tx));
    let events =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Forwards one client's subscriptions until it disconnects or the server shuts down.
async fn forward(
    app: App,
    mut tasks: async_nats::jetstream::kv::Watch,
    mut journal: consumer::pull::Ordered,
    mut heartbeats: async_nats::Subscriber,
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
                Ok(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                    // Only what parses as a Task goes to the browser.
                    wire::decode::<Task>(&entry.value, MAX_EVENT_BYTES)
                        .ok()
                        .map(|t| json_event("task", &t))
                }
                Ok(_) => None,
                Err(e) => {
                    debug!(error = %e, "watching the Task DB");
                    break;
                }
            },
            Some(msg) = journal.next() => match msg {
                Ok(msg) => wire::decode::<JournalEntry>(&msg.payload, MAX_MESSAGE_BYTES).ok().map(|e| {
                    if e.kind.starts_with("node") || e.kind == "drain" {
                        nodes_due = true;
                    }
                    json_event("journal", &e)
                }),
                Err(e) => {
                    debug!(error = %e, "following the journal");
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
                        Err(e) => Some(Event::default().event("problem").data(e.to_string())),
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

/// A server-sent event named `name` whose data is `value` as JSON.
fn json_event(name: &'static str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(String::from_utf8_lossy(&wire::encode(value)))
}
