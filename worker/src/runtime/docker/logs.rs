//! A container's output, as Docker keeps it.

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use chrono::{DateTime, Utc};
use futures::future::ready;
use futures::stream::{BoxStream, StreamExt};

use super::errors::{status, unavailable};
use super::DockerRuntime;
use crate::runtime::{LogLine, Output, RuntimeError};

impl DockerRuntime {
    /// The output of the container `name`: see [`Runtime::logs`](crate::runtime::Runtime::logs).
    pub(super) fn output(
        &self,
        name: &str,
        since: Option<DateTime<Utc>>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        // Docker's `since` is in whole seconds: the caller drops what it already has.
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(since.map_or(0, |t| t.timestamp().clamp(0, i32::MAX as i64) as i32))
            .build();
        let errors = self.errors.clone();
        self.docker
            .logs(name, Some(options))
            // No such container (any more): its output has ended.
            .take_while(|item| ready(!matches!(item, Err(e) if status(e) == Some(404))))
            .filter_map(move |item| {
                ready(match item {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Ok(log_line(Output::Stdout, message)))
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        Some(Ok(log_line(Output::Stderr, message)))
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    // Not a 404 (that ended the stream above): a real failure.
                    Err(e) => {
                        errors.inc("logs");
                        Some(Err(unavailable("reading the container's output", e)))
                    }
                })
            })
            .boxed()
    }
}

/// A Docker log entry asked for with timestamps: `<RFC 3339 time> <output>`.
fn log_line(output: Output, message: bytes::Bytes) -> LogLine {
    let stamp = message
        .iter()
        .take(40)
        .position(|b| *b == b' ')
        .and_then(|space| {
            let text = std::str::from_utf8(&message[..space]).ok()?;
            let time = DateTime::parse_from_rfc3339(text).ok()?;
            Some((time.with_timezone(&Utc), space))
        });
    match stamp {
        Some((time, space)) => LogLine {
            output,
            time: Some(time),
            bytes: message.slice(space + 1..),
        },
        None => LogLine {
            output,
            time: None,
            bytes: message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_are_split_from_the_output() {
        let line = log_line(
            Output::Stderr,
            bytes::Bytes::from_static(b"2026-11-23T16:19:20.123456789Z hello world\n"),
        );
        assert_eq!(line.output, Output::Stderr);
        assert_eq!(&line.bytes[..], b"hello world\n");
        let time = line.time.expect("a time");
        assert_eq!(time.timestamp_subsec_nanos(), 123_456_789);
        // Without a timestamp, everything is output.
        let bare = log_line(Output::Stdout, bytes::Bytes::from_static(b"no time here\n"));
        assert_eq!((bare.time, &bare.bytes[..]), (None, &b"no time here\n"[..]));
    }
}
