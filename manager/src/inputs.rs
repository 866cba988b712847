//! The manager's inputs: the durable JetStream consumers it reads submissions, reports and
//! service events from, and its core NATS subscriptions.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::run::SET_UP_PATIENCE;
use crate::Error;

pub(crate) async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
) -> Result<async_nats::Subscriber, Error> {
    client
        .subscribe(subject.to_string())
        .await
        .map_err(|source| Error::Subscribe {
            subject: subject.to_string(),
            source,
        })
}

fn consumer_config(name: &str, subject: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: subject.to_string(),
        // Each message is acknowledged once the Task DB records its outcome. (Acknowledging
        // a batch with one cumulative ack, `AckPolicy::All`, was measured: it made latency at
        // 1,000 tasks/s ten times worse on nats-server 2.15; see docs/BENCHMARKS.md.)
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        // A message it could not finish (NATS trouble, or a manager killed mid-way) comes
        // back after this long.
        // Handling one takes milliseconds: short, so a restarted manager is not kept waiting,
        // and later messages overtake the unfinished one only briefly.
        ack_wait: Duration::from_secs(10),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// The messages of a durable consumer on `stream`, filtered to `subject`; they keep coming
/// across NATS restarts.
pub(crate) async fn durable(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    subject: &str,
    shutdown: &CancellationToken,
) -> Result<mpsc::Receiver<jetstream::Message>, Error> {
    let err = |source: cube_bus::NatsError| Error::Consumer {
        name: name.to_string(),
        stream: stream.to_string(),
        source,
    };
    // A takeover can come in the middle of a NATS cluster's failover (the stream without a
    // leader for seconds): keep trying, as the set-up does, rather than end the process.
    let started = Instant::now();
    loop {
        let attempt = async {
            let handle = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
            cube_bus::durable_messages(
                handle,
                consumer_config(name, subject),
                1024,
                shutdown.child_token(),
            )
            .await
            .map_err(|e| err(e.into()))
        };
        let e = match attempt.await {
            Ok(messages) => return Ok(messages),
            Err(e) => e,
        };
        if started.elapsed() >= SET_UP_PATIENCE || shutdown.is_cancelled() {
            return Err(e);
        }
        warn!(error = %cube_bus::Chain(&e), "binding the consumer; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(e),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
