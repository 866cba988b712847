//! Exits of a worker's containers, from Docker's event stream: reconnecting, and resuming from
//! the last event seen so that an exit while the stream was down is not lost.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptionsBuilder;
use chrono::{DateTime, Utc};
use cube_shared::{LABEL_GENERATION, LABEL_TASK_ID, LABEL_WORKER};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use super::inspect::exit_error;
use super::DockerRuntime;
use crate::runtime::Exit;

impl DockerRuntime {
    /// See [`Runtime::exits`](crate::runtime::Runtime::exits).
    pub(super) fn watch_exits(&self, worker: &str) -> mpsc::Receiver<Exit> {
        let (tx, rx) = mpsc::channel(1024);
        let runtime = self.clone();
        let label = format!("{LABEL_WORKER}={worker}");
        tokio::spawn(async move {
            let filters = HashMap::from([
                ("type", vec!["container"]),
                ("event", vec!["die"]),
                ("label", vec![label.as_str()]),
            ]);
            // From the moment of the call (the caller lists containers right after, and an
            // exit in between must not be lost), and after the stream breaks, from the last
            // event seen. Replayed duplicates are the worker's to ignore.
            let mut since: Option<i64> = Some(Utc::now().timestamp());
            let mut reconnecting = false;
            while !tx.is_closed() {
                if reconnecting {
                    // Docker may not replay everything (a daemon restarted keeps no events):
                    // the worker lists its containers.
                    runtime.resyncs.send_modify(|n| *n += 1);
                }
                reconnecting = true;
                let mut options = EventsOptionsBuilder::default().filters(&filters);
                if let Some(t) = since {
                    options = options.since(&t.to_string());
                }
                let options = options.build();
                let mut events = runtime.docker.events(Some(options));
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(e) => {
                            runtime.failed("events");
                            warn!(error = %e, "Docker event stream broke; reconnecting");
                            break;
                        }
                    };
                    if let Some(t) = event.time {
                        since = Some(t);
                    }
                    let Some((mut exit, container)) = exit_of(event) else {
                        continue;
                    };
                    if let Some(id) = container {
                        exit.error = runtime.exit_reason(&id).await;
                    }
                    if tx.send(exit).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }

    /// Why a container that just died ended, beyond its exit code.
    async fn exit_reason(&self, container: &str) -> Option<String> {
        let inspected = self.docker.inspect_container(container, None).await;
        if inspected.is_err() {
            self.failed("inspect_container");
        }
        let state = inspected.ok()?.state?;
        exit_error(&state)
    }
}

/// The exit a `die` event tells of (its `error` still to be asked), and the container's id;
/// `None` for a container that is not a task's.
fn exit_of(event: EventMessage) -> Option<(Exit, Option<String>)> {
    let actor = event.actor?;
    let attrs = actor.attributes.unwrap_or_default();
    let task_id = attrs.get(LABEL_TASK_ID)?.parse().ok()?;
    let exit = Exit {
        task_id,
        generation: attrs
            .get(LABEL_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        exit_code: attrs
            .get("exitCode")
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1),
        error: None,
        finish_time: event
            .time_nano
            .map(DateTime::from_timestamp_nanos)
            .unwrap_or_else(Utc::now),
    };
    Some((exit, actor.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;
    use uuid::Uuid;

    fn die(attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            actor: Some(EventActor {
                id: Some("c0ffee".into()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_000_000),
            ..Default::default()
        }
    }

    #[test]
    fn a_die_event_is_a_task_s_exit() {
        let id = Uuid::new_v4();
        let event = die(&[
            (LABEL_TASK_ID, &id.to_string()),
            (LABEL_GENERATION, "4"),
            ("exitCode", "137"),
        ]);
        let (exit, container) = exit_of(event).expect("a task's container");
        assert_eq!(
            (exit.task_id, exit.generation, exit.exit_code),
            (id, 4, 137)
        );
        assert_eq!(
            exit.finish_time.timestamp_nanos_opt(),
            Some(1_700_000_000_123_000_000)
        );
        assert_eq!(container.as_deref(), Some("c0ffee"));
        // Without a code or a generation (never in practice): unknown, not success.
        let (exit, _) = exit_of(die(&[(LABEL_TASK_ID, &id.to_string())])).unwrap();
        assert_eq!((exit.generation, exit.exit_code), (0, -1));
        // Not a task's container.
        assert_eq!(exit_of(die(&[("exitCode", "0")])), None);
    }
}
