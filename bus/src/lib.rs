//! NATS plumbing that the manager, the workers and the CLI share. Nothing here knows about
//! tasks: it moves bytes reliably.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {message}")]
    Nats { what: String, message: String },
    #[error("shutting down")]
    Shutdown,
}

fn nats(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Nats {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Every current value of a KV bucket, read once: how a process rebuilds its picture.
pub async fn load_all(store: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>, Error> {
    let what = || format!("reading bucket {}", store.name);
    let info = store.status().await.map_err(|e| nats(what(), e))?;
    if info.values() == 0 {
        return Ok(Vec::new());
    }
    // The latest value of every key (`watch_all` would deliver only new writes).
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| nats(what(), e))?;
    let mut out = Vec::new();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| nats(what(), e))?;
        if entry.operation == kv::Operation::Put {
            out.push((entry.key, entry.value));
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

/// A message for JetStream: where, what, and the `Nats-Msg-Id` that makes a retry harmless.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub msg_id: Option<String>,
}

/// Publishes into JetStream and waits for the server to store it, retrying with backoff
/// (through disconnections and server restarts) until it is stored or `shutdown` fires. The
/// same `msg_id` goes with every attempt, so an attempt whose ack was lost is not stored twice.
pub async fn publish_durably(
    js: &jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    msg_id: &str,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let message = Outgoing {
        subject,
        payload,
        msg_id: Some(msg_id.to_string()),
    };
    publish_all(js, vec![message], shutdown).await
}

/// Publishes every message into JetStream, pipelined (all are sent before any acknowledgement
/// is awaited), and retries those that failed, with backoff, until all are stored or
/// `shutdown` fires. Messages on one subject are stored in the order given.
pub async fn publish_all(
    js: &jetstream::Context,
    mut messages: Vec<Outgoing>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let failed = publish_once(js, messages).await;
        let Some((_, first_error)) = failed.first() else {
            return Ok(());
        };
        warn!(
            failed = failed.len(),
            error = %first_error,
            "publishing to JetStream; retrying"
        );
        messages = failed.into_iter().map(|(m, _)| m).collect();
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Shutdown),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// At most this many acknowledgements are awaited at once: async-nats lets a context have
/// 5,000 in flight and makes the next publish wait for a free slot.
const IN_FLIGHT: usize = 1024;

/// One pipelined attempt: the messages that were not stored, each with why. Sends stay in
/// order; acknowledgements are collected as they come.
async fn publish_once(js: &jetstream::Context, messages: Vec<Outgoing>) -> Vec<(Outgoing, String)> {
    use futures::stream::FuturesUnordered;
    let mut failed = Vec::new();
    let mut acks = FuturesUnordered::new();
    let settle = |failed: &mut Vec<_>, (m, result): (Outgoing, Result<_, String>)| {
        if let Err(e) = result {
            failed.push((m, e));
        }
    };
    for m in messages {
        while acks.len() >= IN_FLIGHT {
            if let Some(done) = acks.next().await {
                settle(&mut failed, done);
            }
        }
        let mut publish = jetstream::message::PublishMessage::build().payload(m.payload.clone());
        if let Some(id) = &m.msg_id {
            publish = publish.message_id(id);
        }
        match js.send_publish(m.subject.clone(), publish).await {
            Ok(ack) => acks.push(async move {
                let result = std::future::IntoFuture::into_future(ack)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                (m, result)
            }),
            Err(e) => failed.push((m, e.to_string())),
        }
    }
    while let Some(done) = acks.next().await {
        settle(&mut failed, done);
    }
    failed
}

/// A durable pull consumer whose messages keep coming across disconnections and server
/// restarts: a background task (re)binds the consumer and forwards its messages, creating it
/// again if the server lost it. The channel closes when `shutdown` fires.
pub async fn durable_messages(
    stream: jetstream::stream::Stream,
    config: pull::Config,
    buffer: usize,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<jetstream::Message>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    // The first binding happens here, so a misconfiguration is reported to the caller.
    let first = bind(&stream, &config).await?;
    let (tx, rx) = mpsc::channel(buffer.max(1));
    tokio::spawn(async move {
        let mut messages = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut current = match messages.take() {
                Some(m) => m,
                None => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match bind(&stream, &config).await {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(consumer = %name, error = %e, "binding the consumer; retrying");
                            continue;
                        }
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = current.next() => next,
                };
                match next {
                    Some(Ok(msg)) => {
                        backoff = Duration::from_millis(100);
                        let sent = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            sent = tx.send(msg) => sent,
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        use pull::MessagesErrorKind as K;
                        match e.kind() {
                            // Transient: the stream itself recovers once NATS is back.
                            K::MissingHeartbeat | K::Pull => {
                                debug!(consumer = %name, error = %e, "consumer hiccup")
                            }
                            _ => {
                                warn!(consumer = %name, error = %e, "consumer broke; binding again");
                                break;
                            }
                        }
                    }
                    None => {
                        debug!(consumer = %name, "consumer stream ended; binding again");
                        break;
                    }
                }
            }
        }
    });
    Ok(rx)
}

async fn bind(
    stream: &jetstream::stream::Stream,
    config: &pull::Config,
) -> Result<pull::Stream, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let consumer = stream
        .get_or_create_consumer(&name, config.clone())
        .await
        .map_err(|e| nats(format!("consumer {name}"), e))?;
    consumer
        .messages()
        .await
        .map_err(|e| nats(format!("consumer {name}"), e))
}
pub mod auth;

/// How a process proves who it is to NATS, and how it checks the server (TLS).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A `.creds` file (NKey seed and user JWT), for servers in operator/JWT mode.
    pub creds_file: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate that signed the server's: turns TLS on.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate and key, for servers that verify clients.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

impl Credentials {
    /// A user and password.
    pub fn user(user: &str, password: &str) -> Credentials {
        Credentials {
            user: Some(user.to_string()),
            password: Some(password.to_string()),
            ..Default::default()
        }
    }

    /// Connect options carrying these credentials. With a user name, replies come under the
    /// user's own inbox prefix, the only one its permissions let it read.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions, Error> {
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::new()
                .credentials_file(path)
                .await
                .map_err(|e| nats(format!("reading {}", path.display()), e))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(user) = &self.user {
            options = options
                .user_and_password(user.clone(), self.password.clone().unwrap_or_default())
                .custom_inbox_prefix(auth::inbox_prefix(user));
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}
