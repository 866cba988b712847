//! `cube logs`: a task's container output from `tasks.logs.<task-id>` (stream `CUBE_LOGS`),
//! read as any NATS client can: stdout chunks to stdout, stderr chunks to stderr.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream::LastRawMessageErrorKind, ErrorCode};
use clap::Args;
use cube_client::has_ended;
use cube_shared::subjects::*;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cmd::{cube, get_task};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Task id, unique id prefix, or name.
    pub id: String,
    /// Keep printing new output as it comes, also across restarts of the task's worker and
    /// of the task itself. Ends on Ctrl-C, or once the task has ended for good (completed, or
    /// failed with no restart to come) and all its output is printed.
    #[arg(short, long)]
    pub follow: bool,
}

/// How often `--follow` asks whether the task has ended.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub async fn logs(args: LogsArgs, shutdown: CancellationToken) -> Result<()> {
    let cube = cube(&args.nats).await?;
    // An unknown task is an error, not an empty log.
    let task = get_task(&cube, &args.id).await?;
    let subjects = logs_of(task.id);
    let stream = cube
        .jetstream()
        .get_stream_no_info(LOGS_STREAM)
        .await
        .context("reading the logs stream")?;

    // Without --follow: up to the last chunk there is now.
    let mut end = if args.follow {
        None
    } else {
        match last_sequence(&stream, &subjects).await? {
            Some(last) => Some(last),
            None => return Ok(()),
        }
    };
    let mut messages = loop {
        match open(&stream, &subjects).await {
            Ok(m) => break m,
            Err(e) if args.follow => {
                // The stream may not exist yet (a manager that has not run since Cube
                // learned to keep logs): wait for it.
                tracing::debug!(error = %e, "waiting for the logs stream");
                if get_task(&cube, &task.id.to_string())
                    .await
                    .is_ok_and(|t| has_ended(&t))
                {
                    return Ok(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let mut printed = 0u64;
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if end.is_some_and(|end| printed >= end) {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick(), if args.follow && end.is_none() => {
                match get_task(&cube, &task.id.to_string()).await {
                    // Everything the task will ever write is in the stream by now: its worker
                    // publishes a container's output before it reports the container ended.
                    Ok(t) if has_ended(&t) => end = Some(last_sequence(&stream, &subjects).await?.unwrap_or(0)),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "asking whether the task ended"),
                }
            }
            next = messages.next() => {
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "reading the logs; the consumer recovers");
                        continue;
                    }
                    None => anyhow::bail!("the logs stream ended unexpectedly"),
                };
                if let Ok(info) = msg.info() {
                    printed = printed.max(info.stream_sequence);
                }
                print_chunk(&msg)?;
            }
        }
    }
}

/// The stream sequence of the task's newest chunk, `None` if it has none (or the stream does
/// not exist yet).
/// The sequence of the newest chunk on any of `subjects` (wildcards allowed).
async fn last_sequence(
    stream: &jetstream::stream::Stream<()>,
    subjects: &[String],
) -> Result<Option<u64>> {
    let mut last = None;
    for subject in subjects {
        let newest = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Some(m.sequence),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => None,
                LastRawMessageErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                _ => return Err(e).context("reading the logs stream"),
            },
        };
        last = last.max(newest);
    }
    Ok(last)
}

async fn open(
    stream: &jetstream::stream::Stream<()>,
    subjects: &[String],
) -> Result<consumer::pull::Ordered> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: subjects.to_vec(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("reading the logs stream")?
        .messages()
        .await
        .context("reading the logs stream")
}

fn print_chunk(msg: &jetstream::Message) -> Result<()> {
    let stderr = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(LOG_STREAM_HEADER))
        .is_some_and(|v| v.as_str() == "stderr");
    if stderr {
        emit(std::io::stderr().lock(), &msg.payload)
    } else {
        emit(std::io::stdout().lock(), &msg.payload)
    }
}

fn emit(mut to: impl Write, bytes: &[u8]) -> Result<()> {
    to.write_all(bytes)?;
    to.flush()?;
    Ok(())
}
