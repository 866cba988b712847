//! Durable pull consumers whose messages keep coming across disconnections and server
//! restarts, bound by asking the server (and creating the consumer) or, for a consumer that
//! thousands of clients share, by taking it as there.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, pull, IntoConsumerConfig},
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{nats, Backoff, Chain, Error};

/// A durable pull consumer whose messages keep coming across disconnections and server
/// restarts: a background task (re)binds the consumer and forwards its messages, creating it
/// again if the server lost it. The channel closes when `shutdown` fires.
///
/// The first binding happens here, so that a consumer the server refuses (a misconfiguration,
/// a permission) is reported to the caller. One the server does not answer in time (a busy
/// server: ten thousand workers starting at once) is asked again after a growing, jittered
/// wait until it answers or `shutdown` fires; on shutdown the channel returned is closed.
pub async fn durable_messages<I: Send + Sync + 'static>(
    stream: jetstream::stream::Stream<I>,
    config: pull::Config,
    buffer: usize,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<jetstream::Message>, Error> {
    paced_messages(stream, config, Pace::default(), buffer, shutdown).await
}

/// How a consumer's pull requests are paced: how long one waits at the server for messages
/// before another is sent, and how often the server says it is still there while none come.
/// nats-server walks every request waiting on a consumer each time one of them is due
/// (a heartbeat or an expiry), so on a consumer that thousands of clients share the pace sets
/// the cost: n clients make about n × (1/heartbeat + 1/expires) walks of n a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub expires: Duration,
    /// At most half of `expires`, as the server requires.
    pub heartbeat: Duration,
}

impl Default for Pace {
    /// The client's own: a request waits 30 s, with a heartbeat every 15 s.
    fn default() -> Pace {
        Pace {
            expires: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// [`durable_messages`], with its pull requests paced by `pace`.
pub async fn paced_messages<I: Send + Sync + 'static>(
    stream: jetstream::stream::Stream<I>,
    config: pull::Config,
    pace: Pace,
    buffer: usize,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<jetstream::Message>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let mut backoff = first_wait();
    let first = loop {
        let bound = tokio::select! {
            _ = shutdown.cancelled() => return Ok(mpsc::channel(1).1),
            bound = bind(&stream, &config, pace) => bound,
        };
        match bound {
            Ok(messages) => break messages,
            Err(Bind::Refused(e)) => return Err(e),
            Err(Bind::Unanswered(e)) => {
                debug!(consumer = %name, error = %Chain(&e), "binding the consumer; asking again");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(mpsc::channel(1).1),
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                }
            }
        }
    };
    Ok(forward(
        stream,
        config,
        pace,
        First::Asked(first),
        buffer,
        shutdown,
    ))
}

/// [`paced_messages`] for a consumer that is there nearly always, one that thousands of
/// clients share: the first binding takes it as there, without a request. nats-server answers
/// a consumer's info (what binding by asking costs) by walking every pull request waiting on
/// it, so ten thousand workers starting at once made a walk of up to ten thousand each. For a
/// consumer that is not there after all, the server answers the first pull request "no
/// responders" (or, if a subscriber to the JetStream API takes the request, no heartbeat
/// comes); it is then asked for, and created, like any other.
pub async fn assumed_messages(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
    pace: Pace,
    buffer: usize,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<jetstream::Message>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(nats(format!("stream {stream}")))?;
    let info = assumed_info(stream, &config).map_err(nats(format!("consumer {name}")))?;
    let first = consumer::Consumer::new(config.clone(), info, js.clone())
        .stream()
        .expires(pace.expires)
        .heartbeat(pace.heartbeat)
        .messages()
        .await;
    let first = match first {
        Ok(messages) => First::Assumed(messages),
        Err(e) => {
            debug!(consumer = %name, error = %e, "taking the consumer as there; asking instead");
            First::None
        }
    };
    Ok(forward(handle, config, pace, first, buffer, shutdown))
}

/// What a consumer taken as there is known to be: its stream, name and configuration (all a
/// pull request needs); the rest is the server's to say.
fn assumed_info(stream: &str, config: &pull::Config) -> Result<consumer::Info, serde_json::Error> {
    let none_yet = serde_json::json!({"consumer_seq": 0, "stream_seq": 0});
    serde_json::from_value(serde_json::json!({
        "stream_name": stream,
        "name": config.durable_name,
        "created": "1970-01-01T00:00:00Z",
        "config": config.clone().into_consumer_config(),
        "delivered": none_yet,
        "ack_floor": none_yet,
        "num_ack_pending": 0,
        "num_redelivered": 0,
        "num_waiting": 0,
        "num_pending": 0,
    }))
}

fn first_wait() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// The messages a consumer's first binding gave.
enum First {
    /// None: the forwarder binds at once.
    None,
    /// Of a consumer the server gave (or made).
    Asked(pull::Stream),
    /// Of a consumer taken as there, until the server shows it is: a message comes.
    Assumed(pull::Stream),
}

/// Forwards the consumer's messages to the channel returned until `shutdown`, binding it again
/// (by asking) whenever its messages stop: after `first`, or at once if there is none.
fn forward<I: Send + Sync + 'static>(
    stream: jetstream::stream::Stream<I>,
    config: pull::Config,
    pace: Pace,
    first: First,
    buffer: usize,
    shutdown: CancellationToken,
) -> mpsc::Receiver<jetstream::Message> {
    let name = config.durable_name.clone().unwrap_or_default();
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let mut backoff = first_wait();
    tokio::spawn(async move {
        let (mut messages, mut assumed) = match first {
            First::None => (None, false),
            First::Asked(m) => (Some(m), false),
            First::Assumed(m) => (Some(m), true),
        };
        loop {
            let mut current = match messages.take() {
                Some(m) => m,
                None => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                    match bind(&stream, &config, pace).await {
                        Ok(m) => {
                            assumed = false;
                            m
                        }
                        Err(Bind::Refused(e) | Bind::Unanswered(e)) => {
                            warn!(consumer = %name, error = %Chain(&e), "binding the consumer; retrying");
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
                        backoff.reset();
                        assumed = false;
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
                            // Not there: one taken as there, or one removed.
                            K::NoResponders => {
                                debug!(consumer = %name, "no consumer answers; binding again");
                                break;
                            }
                            // Taken as there, and silent: perhaps not there, with a subscriber
                            // to the JetStream API keeping the server from saying so.
                            K::MissingHeartbeat if assumed => {
                                debug!(consumer = %name, "a consumer taken as there is silent; binding again");
                                break;
                            }
                            // Transient: the stream itself recovers once NATS is back (a
                            // request not answered is sent again once it expires). Asking
                            // for the consumer here would add to a busy server's work.
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
    rx
}

/// Why a consumer could not be bound: the server said no, or did not answer (in time).
enum Bind {
    Refused(Error),
    Unanswered(Error),
}

impl Bind {
    /// `source`, as an error about consumer `name`, refused or unanswered.
    fn of<E>(name: &str, unanswered: bool, source: E) -> Bind
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let e = nats(format!("consumer {name}"))(source);
        if unanswered {
            Bind::Unanswered(e)
        } else {
            Bind::Refused(e)
        }
    }
}

async fn bind<I>(
    stream: &jetstream::stream::Stream<I>,
    config: &pull::Config,
    pace: Pace,
) -> Result<pull::Stream, Bind> {
    use jetstream::consumer::StreamErrorKind as S;
    use jetstream::stream::ConsumerErrorKind as K;
    let name = config.durable_name.clone().unwrap_or_default();
    let consumer = stream
        .get_or_create_consumer(&name, config.clone())
        .await
        .map_err(|e| Bind::of(&name, matches!(e.kind(), K::TimedOut | K::Request), e))?;
    consumer
        .stream()
        .expires(pace.expires)
        .heartbeat(pace.heartbeat)
        .messages()
        .await
        .map_err(|e| Bind::of(&name, matches!(e.kind(), S::TimedOut), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_taken_as_there_is_known_by_its_stream_name_and_configuration() {
        let config = pull::Config {
            durable_name: Some("workers".into()),
            filter_subject: "tasks.pending".into(),
            ack_wait: Duration::from_secs(30),
            max_waiting: 200_000,
            ..Default::default()
        };
        let info = assumed_info("CUBE_WORK", &config).unwrap();
        assert_eq!(
            (info.stream_name.as_str(), info.name.as_str()),
            ("CUBE_WORK", "workers")
        );
        assert_eq!(info.config.filter_subject, "tasks.pending");
        assert_eq!(info.config.ack_wait, Duration::from_secs(30));
        assert_eq!(info.config.max_waiting, 200_000);
    }
}
