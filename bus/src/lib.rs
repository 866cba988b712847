//! NATS plumbing that the manager, the workers and the CLI share. Nothing here knows about
//! tasks: it moves bytes reliably.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{PublishError, PublishErrorKind},
    kv,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Any error a NATS call returns: async-nats has an error type per call, hence the box.
pub type NatsError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was being done, and the async-nats error that stopped it.
    #[error("{what}")]
    Nats {
        what: String,
        #[source]
        source: NatsError,
    },
    #[error("shutting down")]
    Shutdown,
    /// JetStream refused a conditional write (its expected last sequence did not hold): the
    /// condition, not NATS, failed, so sending it again would not help.
    #[error("JetStream refused the conditional write of message {index}")]
    Refused {
        /// Of the messages given, the first that was not stored.
        index: usize,
        #[source]
        source: PublishError,
    },
}

/// A closure for `map_err` that keeps a NATS error as the source of [`Error::Nats`].
pub fn nats<E>(what: impl Into<String>) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |e| Error::Nats {
        what,
        source: Box::new(e),
    }
}

/// Shows an error with its chain of causes on one line (`a: b: c`), for logs and messages
/// that carry an error as text: an error's own `Display` leaves its source out.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The servers of a `--nats-url`: one URL, or several separated by commas (as the `nats` CLI
/// takes them), e.g. `nats://a:4222,nats://b:4222,nats://c:4222`. The client connects to one
/// of them and fails over to the others (and to any the cluster gossips).
pub fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, Error> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Error::Nats {
            what: format!("no NATS server in {urls:?}"),
            source: "an empty list".into(),
        });
    }
    list.into_iter()
        .map(|u| u.parse().map_err(nats(format!("NATS server URL {u:?}"))))
        .collect()
}

/// Every current value of a KV bucket, read once: how a process rebuilds its picture.
pub async fn load_all(store: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>, Error> {
    let what = || format!("reading bucket {}", store.name);
    // Fresh from the server: `Store::status` answers from what was cached when the handle was
    // made, and a manager that waited for the lease made its handle long before.
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(nats(what()))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    // The latest value of every key (`watch_all` would deliver only new writes).
    let mut watch = store.watch_with_history(">").await.map_err(nats(what()))?;
    let mut out = Vec::new();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(nats(what()))?;
        if entry.operation == kv::Operation::Put {
            out.push((entry.key, entry.value));
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

/// The header that marks a KV write as a deletion or purge (`DEL`, `PURGE`) rather
/// than a value; async-nats keeps its own copy private.
pub const KV_OPERATION: &str = "KV-Operation";
/// [`KV_OPERATION`]'s value for a deletion.
pub const KV_DELETE: &str = "DEL";

/// A message for JetStream: where, what, and the `Nats-Msg-Id` that makes a retry harmless.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub msg_id: Option<String>,
    /// More headers (conditions on the stream's state, say).
    pub headers: Option<async_nats::HeaderMap>,
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
        headers: None,
    };
    publish_all(js, vec![message], shutdown).await
}

/// Publishes every message into JetStream, pipelined (all are sent before any acknowledgement
/// is awaited), until all are stored or `shutdown` fires. Messages are stored in the order
/// given: after a failure, everything from the first message not stored onwards is sent
/// again, in order (so a later write to the same key is never overtaken by a retried earlier
/// one; repeating a stored message is harmless, the `Nats-Msg-Id` or the same value makes it
/// so). A message whose condition failed ends it at once with [`Error::Refused`].
///
/// A replicated (clustered) stream checks a condition on a subject for one message at a
/// time: while one conditional message on that subject awaits its Raft commit, the next is
/// refused as "in process" (error 10164, not a failed condition). Then the rest of the call
/// is sent one message at a time, each awaiting its acknowledgement, at once and without a
/// warning; a failed condition found that way is still [`Error::Refused`].
pub async fn publish_all(
    js: &jetstream::Context,
    mut messages: Vec<Outgoing>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut backoff = Duration::from_millis(100);
    let mut sent_before = 0;
    let mut in_flight = IN_FLIGHT;
    loop {
        let Some((first_failed, error)) = publish_once(js, &messages, in_flight).await else {
            return Ok(());
        };
        if matches!(
            error.kind(),
            PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId
        ) {
            return Err(Error::Refused {
                index: sent_before + first_failed,
                source: error,
            });
        }
        sent_before += first_failed;
        messages.drain(..first_failed);
        if in_process(&error) {
            in_flight = 1;
            if first_failed == 0 {
                // Another writer's conditional message is in flight on the subject.
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Error::Shutdown),
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
            }
            continue;
        }
        warn!(
            unsent = messages.len(),
            error = %Chain(&error),
            "publishing to JetStream; retrying"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Shutdown),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether JetStream refused a conditional message because another on the same subject was
/// still in process (a replicated stream's 10164), rather than because its condition failed.
fn in_process(error: &PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

/// At most this many acknowledgements are awaited at once: async-nats lets a context have
/// 5,000 in flight and makes the next publish wait for a free slot.
const IN_FLIGHT: usize = 1024;

/// One pipelined attempt: `None` if every message was stored, else the index of the first
/// that was not, and why. Sends stay in order; acknowledgements are collected as they come.
async fn publish_once(
    js: &jetstream::Context,
    messages: &[Outgoing],
    in_flight: usize,
) -> Option<(usize, PublishError)> {
    use futures::stream::FuturesUnordered;
    let mut first_failed: Option<(usize, PublishError)> = None;
    let mut note = |i: usize, e: PublishError| {
        if first_failed.as_ref().is_none_or(|(f, _)| i < *f) {
            first_failed = Some((i, e));
        }
    };
    let mut acks = FuturesUnordered::new();
    for (i, m) in messages.iter().enumerate() {
        while acks.len() >= in_flight.max(1) {
            if let Some((j, Err(e))) = acks.next().await {
                note(j, e);
            }
        }
        let mut publish = jetstream::message::PublishMessage::build().payload(m.payload.clone());
        if let Some(headers) = &m.headers {
            publish = publish.headers(headers.clone());
        }
        if let Some(id) = &m.msg_id {
            publish = publish.message_id(id);
        }
        match js.send_publish(m.subject.clone(), publish).await {
            Ok(ack) => acks.push(async move {
                let result = std::future::IntoFuture::into_future(ack).await.map(|_| ());
                (i, result)
            }),
            Err(e) => note(i, e),
        }
    }
    while let Some((j, result)) = acks.next().await {
        if let Err(e) = result {
            note(j, e);
        }
    }
    first_failed
}

mod durable;
pub use durable::{assumed_messages, durable_messages, paced_messages, Pace};

pub mod auth;
mod backoff;
pub use backoff::Backoff;

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
                .map_err(nats(format!("reading {}", path.display())))?,
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
