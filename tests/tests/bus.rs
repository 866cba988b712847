//! Binding a durable consumer (`cube_bus::durable_messages`, what every worker does at start)
//! against a real nats-server that stalls (SIGSTOP) or refuses. A stalled server is asked
//! again until it answers, as ten thousand workers starting at once met it; a refusal is the
//! caller's to see at once; a shutdown ends the wait.

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
