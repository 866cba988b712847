//! Connecting to NATS, with a clear error when nobody answers.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use async_nats::Event;
use prometheus::IntCounter;

use crate::NatsArgs;

/// Connects, trying again until `--nats-connect-timeout` has passed (a cluster's processes
/// may start before its nats-server is ready).
pub async fn connect(args: &NatsArgs, name: &str) -> Result<async_nats::Client> {
    connect_counting(args, name, None).await
}

/// [`connect`], counting in `reconnects` every time the connection is re-established after
/// it was lost (`cube_nats_reconnects_total`).
pub async fn connect_counting(
    args: &NatsArgs,
    name: &str,
    reconnects: Option<IntCounter>,
) -> Result<async_nats::Client> {
    let deadline = tokio::time::Instant::now() + args.nats_connect_timeout;
    let servers = cube_bus::servers(&args.nats_url)?;
    let credentials = args.credentials()?;
    loop {
        let options = credentials
            .options()
            .await?
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            // Once connected, reconnect forever: a NATS restart must not end a long-running
            // process.
            .max_reconnects(None);
        let options = match &reconnects {
            Some(counter) => options.event_callback(reconnect_counter(counter.clone())),
            None => options,
        };
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) if e.kind() == async_nats::ConnectErrorKind::Tls => {
                anyhow::bail!(
                    "the TLS handshake with NATS at {} failed ({e}) — check --nats-tls-ca (CUBE_NATS_TLS_CA), and --nats-tls-cert/--nats-tls-key (CUBE_NATS_TLS_CERT/CUBE_NATS_TLS_KEY) if the server verifies clients",
                    args.nats_url
                )
            }
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication
                ) =>
            {
                anyhow::bail!("{}", refused(&args.nats_url, &e.to_string()))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => anyhow::bail!(
                "cannot reach NATS at {} ({e}) — is `cube dev` or nats-server running? Point --nats-url (CUBE_NATS_URL) at another server, or wait longer with --nats-connect-timeout",
                args.nats_url
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// NATS turned the credentials away: which flags and variables set them.
fn refused(url: &str, error: &str) -> String {
    format!(
        "NATS at {url} refused this connection ({error}) — give the credentials of a user it knows: \
         --nats-user and --nats-password or --nats-password-file (CUBE_NATS_USER, \
         CUBE_NATS_PASSWORD, CUBE_NATS_PASSWORD_FILE), --nats-token \
         (CUBE_NATS_TOKEN) or --nats-creds (CUBE_NATS_CREDS); `cube dev` keeps its client's as \
         user:password in <data dir>/client.auth, and cube reads .cube/dev/client.auth by itself"
    )
}

/// An event callback that counts reconnections: every `Connected` after the first one (the
/// first is the initial connection).
fn reconnect_counter(
    counter: IntCounter,
) -> impl Fn(Event) -> std::future::Ready<()> + Send + Sync {
    let connected_once = Arc::new(AtomicBool::new(false));
    move |event| {
        if matches!(event, Event::Connected) && connected_once.swap(true, Ordering::Relaxed) {
            counter.inc();
        }
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_connection_is_not_a_reconnect() {
        let counter = IntCounter::new("cube_nats_reconnects_total", "test").unwrap();
        let on_event = reconnect_counter(counter.clone());
        on_event(Event::Connected).await;
        assert_eq!(counter.get(), 0);
        on_event(Event::Disconnected).await;
        on_event(Event::Connected).await;
        on_event(Event::Disconnected).await;
        on_event(Event::Connected).await;
        assert_eq!(counter.get(), 2);
    }
}
