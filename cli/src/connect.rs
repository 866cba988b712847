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
         --nats-user and --nats-password (CUBE_NATS_USER, CUBE_NATS_PASSWORD), --nats-token \
         (CUBE_NATS_TOKEN) or --nats-creds (CUBE_NATS_CREDS); `cube dev` keeps its client's as \
         user:password in <data dir>/client.auth, and cube reads .cube/dev/client.auth by itself"
    )
}
