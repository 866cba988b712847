//! Connecting to NATS, with a clear error when nobody answers.

use std::time::Duration;

use anyhow::Result;

use crate::NatsArgs;

/// Connects, trying again until `--nats-connect-timeout` has passed (a cluster's processes
/// may start before its nats-server is ready).
pub async fn connect(args: &NatsArgs, name: &str) -> Result<async_nats::Client> {
    let deadline = tokio::time::Instant::now() + args.nats_connect_timeout;
    loop {
        let options = args
            .credentials()
            .options()
            .await?
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            // Once connected, reconnect forever: a NATS restart must not end a long-running
            // process.
            .max_reconnects(None);
        match options.connect(&args.nats_url).await {
            Ok(client) => return Ok(client),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::Tls
                ) =>
            {
                anyhow::bail!(
                    "NATS at {} refused this connection ({e}): check --nats-user/--nats-password, --nats-creds, --nats-token or the TLS options",
                    args.nats_url
                )
            }
            Err(e) if tokio::time::Instant::now() >= deadline => anyhow::bail!(
                "cannot reach NATS at {}: {e}; is nats-server running? (`cube dev` starts one)",
                args.nats_url
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
