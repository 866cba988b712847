//! Binding a durable consumer (`cube_bus::durable_messages`, what every worker does at start)
//! against a real nats-server that stalls (SIGSTOP) or refuses. A stalled server is asked
//! again until it answers, as ten thousand workers starting at once met it; a refusal is the
//! caller's to see at once; a shutdown ends the wait. A consumer taken as there
//! (`cube_bus::assumed_messages`, a worker's binding of the shared queue) costs no request when
//! it is, and is created when it is not.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, consumer::pull, stream};
use cube_tests::NatsServer;
use tokio_util::sync::CancellationToken;

const STREAM: &str = "BUS_TEST";

/// A stream on `server`, reached through a context whose requests time out after 300 ms.
async fn stream(server: &NatsServer) -> Result<jetstream::stream::Stream> {
    let mut js = jetstream::new(server.connect().await?);
    js.set_timeout(Duration::from_millis(300));
    let config = stream::Config {
        name: STREAM.into(),
        subjects: vec!["bus.>".into()],
        ..Default::default()
    };
    Ok(js.create_stream(config).await?)
}

/// A stream on a server that is then stopped (SIGSTOP), and a binding of a consumer on it
/// started meanwhile, with the token that shuts it down.
async fn binding_while_stalled(
    server: &NatsServer,
    filter: &str,
) -> Result<(
    tokio::task::JoinHandle<Result<Messages, cube_bus::Error>>,
    CancellationToken,
)> {
    let work = stream(server).await?;
    server.signal("STOP")?;
    let shutdown = CancellationToken::new();
    let binding = tokio::spawn(cube_bus::durable_messages(
        work,
        consumer(filter),
        8,
        shutdown.clone(),
    ));
    Ok((binding, shutdown))
}

type Messages = tokio::sync::mpsc::Receiver<jetstream::Message>;

fn consumer(filter: &str) -> pull::Config {
    pull::Config {
        durable_name: Some("bound".into()),
        filter_subject: filter.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_bound_while_the_server_stalls_is_bound_once_it_answers() -> Result<()> {
    let server = NatsServer::start().await?;
    let (binding, shutdown) = binding_while_stalled(&server, "bus.one").await?;
    // Several request timeouts pass while the server is stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !binding.is_finished(),
        "binding gave up on a stalled server"
    );
    server.signal("CONT")?;
    let mut messages = tokio::time::timeout(Duration::from_secs(15), binding)
        .await
        .context("not bound within 15 s of the server answering again")???;
    let client = server.connect().await?;
    jetstream::new(client)
        .publish("bus.one", "hello".into())
        .await?
        .await?;
    let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .context("no message within 10 s")?
        .context("the channel closed")?;
    ensure!(&msg.payload[..] == b"hello", "{:?}", msg.payload);
    shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_consumer_is_an_error_at_once() -> Result<()> {
    let server = NatsServer::start().await?;
    let work = stream(&server).await?;
    let began = Instant::now();
    // More redelivery back-offs than deliveries: the server answers, with an error.
    let refused = pull::Config {
        backoff: vec![Duration::from_secs(1); 3],
        max_deliver: 2,
        ..consumer("bus.one")
    };
    let bound = cube_bus::durable_messages(work, refused, 8, CancellationToken::new()).await;
    ensure!(bound.is_err(), "a refused consumer was bound");
    ensure!(
        began.elapsed() < Duration::from_secs(5),
        "the refusal took {:?}",
        began.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_the_wait_for_a_stalled_server() -> Result<()> {
    let server = NatsServer::start().await?;
    let (binding, shutdown) = binding_while_stalled(&server, "bus.two").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(2), binding).await;
    server.signal("CONT")?;
    let mut messages = result
        .context("still binding 2 s after shutdown")?
        .context("the binding task")?
        .context("a shutdown is not an error")?;
    ensure!(
        messages.recv().await.is_none(),
        "the channel of a shutdown binding is closed"
    );
    ensure!(began.elapsed() < Duration::from_secs(2));
    Ok(())
}

/// Requests about consumer `name` of [`STREAM`] other than pull requests, as the server sees
/// them: a subscriber in the same account receives a copy of every JetStream API request.
async fn consumer_requests(
    server: &NatsServer,
    name: &str,
) -> Result<std::sync::Arc<std::sync::Mutex<Vec<String>>>> {
    use futures::StreamExt;
    let client = server.connect().await?;
    let mut requests = client.subscribe("$JS.API.CONSUMER.>").await?;
    client.flush().await?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    // `CONSUMER.<verb>.<stream>.<name>`, with the filter after it for a creation.
    let named = format!(".{STREAM}.{name}");
    tokio::spawn(async move {
        let _client = client;
        while let Some(msg) = requests.next().await {
            let subject = msg.subject.to_string();
            if subject.contains(&named) && !subject.contains(".MSG.NEXT.") {
                kept.lock().unwrap().push(subject);
            }
        }
    });
    Ok(seen)
}

/// What `assumed_messages` binds, published once it is bound, received within 10 s.
async fn assume_and_receive(server: &NatsServer, pace: cube_bus::Pace) -> Result<()> {
    let work = stream(server).await?;
    let js = jetstream::new(server.connect().await?);
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let mut messages =
        cube_bus::assumed_messages(&js, STREAM, consumer("bus.shared"), pace, 8, shutdown).await?;
    // The consumer is there (made beforehand, or by the binding) before the message is sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while work.consumer_info("bound").await.is_err() {
        ensure!(Instant::now() < deadline, "no consumer within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    js.publish("bus.shared", "hello".into()).await?.await?;
    let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .context("no message within 10 s")?
        .context("the channel closed")?;
    ensure!(&msg.payload[..] == b"hello", "{:?}", msg.payload);
    Ok(())
}

/// A request waits 2 s at the server, with a heartbeat every second.
const BRISK: cube_bus::Pace = cube_bus::Pace {
    expires: Duration::from_secs(2),
    heartbeat: Duration::from_secs(1),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_taken_as_there_costs_no_request() -> Result<()> {
    let server = NatsServer::start().await?;
    let work = stream(&server).await?;
    work.create_consumer(consumer("bus.shared")).await?;
    let requests = consumer_requests(&server, "bound").await?;
    assume_and_receive(&server, BRISK).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The test's own check of the consumer is one INFO request; the binding adds none.
    let seen = requests.lock().unwrap().clone();
    ensure!(
        seen.iter().all(|s| s.contains(".INFO.")) && seen.len() <= 1,
        "the binding asked the server: {seen:?}"
    );
    Ok(())
}

/// The server answers a pull request for a missing consumer with "no responders": the binding
/// then creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_taken_as_there_that_is_not_is_created() -> Result<()> {
    let server = NatsServer::start().await?;
    assume_and_receive(&server, BRISK).await
}

/// A subscriber to the JetStream API (a monitoring tool, say) takes every pull request for a
/// missing consumer, so the server never says "no responders": the missing heartbeats do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_taken_as_there_that_is_not_is_created_without_a_no_responders() -> Result<()> {
    let server = NatsServer::start().await?;
    let requests = consumer_requests(&server, "bound").await?;
    assume_and_receive(&server, BRISK).await?;
    let seen = requests.lock().unwrap().clone();
    ensure!(
        seen.iter().any(|s| s.contains(".CREATE.")),
        "the consumer was not created by the binding: {seen:?}"
    );
    Ok(())
}
