//! One run of a task's health check. `/path` is an HTTP GET on the task's first port that
//! must answer 2xx or 3xx; anything else is a command run in the container that must exit 0.
//! The runtime only says where the container answers and runs commands in it; the check and
//! what counts as passing are here, beside the worker's health-check loop.

use std::io;
use std::time::Duration;

use cube_shared::Task;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::{Cause, Exec, Runtime};

/// Why a health check did not pass. Its text is the reason a task that never became healthy,
/// or stopped being so, is reported failed with.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// An HTTP check of a task that exposes no port.
    #[error("the task exposes no port")]
    NoPort,
    /// An HTTP check of a container that has no address to connect to.
    #[error("the container has no IP address")]
    NoAddress,
    #[error("GET {path}: cannot connect to {address}: {source}")]
    Connect {
        path: String,
        address: String,
        #[source]
        source: io::Error,
    },
    /// The connection broke while asking or reading the answer.
    #[error("GET {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Something answered, but not HTTP.
    #[error("GET {path}: not an HTTP answer")]
    NotHttp { path: String },
    /// An HTTP answer that is neither 2xx nor 3xx.
    #[error("GET {path} answered {status}")]
    Status { path: String, status: u16 },
    /// A command check that exited non-zero; `output` is the end of what it wrote.
    #[error("`{command}` exited with {code}: {output}")]
    Exit {
        command: String,
        code: i64,
        output: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The runtime could not run the check (the container is gone, the engine failed).
    #[error("{0}")]
    Runtime(#[source] Cause),
}

/// Runs the task's health check once against its current placement's container, within
/// `timeout`. A task without a check, or on a runtime whose containers cannot be asked (the
/// simulation), passes.
pub async fn probe(
    runtime: &dyn Runtime,
    task: &Task,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let Some(check) = task.health_check.as_deref() else {
        return Ok(());
    };
    if !runtime.probes() {
        return Ok(());
    }
    let work = async {
        if check.starts_with('/') {
            let address = runtime.probe_address(task).await?;
            http(&address, check).await
        } else {
            passed(check, runtime.exec(task, check).await?)
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// `GET path` on `address` over HTTP/1.0, passing on a 2xx or 3xx status. Only the status
/// line is read: a health endpoint's body says nothing the status does not.
async fn http(address: &str, path: &str) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io {
        path: path.to_string(),
        source,
    };
    let mut conn = TcpStream::connect(address)
        .await
        .map_err(|source| ProbeError::Connect {
            path: path.to_string(),
            address: address.to_string(),
            source,
        })?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: cube-health\r\n\r\n");
    conn.write_all(request.as_bytes()).await.map_err(io)?;
    let mut head = [0u8; 256];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        let n = conn.read(&mut head[len..]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProbeError::NotHttp {
            path: path.to_string(),
        })?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            path: path.to_string(),
            status,
        })
    }
}

/// Whether a command check passed: it exited 0.
fn passed(command: &str, exec: Exec) -> Result<(), ProbeError> {
    if exec.exit_code == 0 {
        return Ok(());
    }
    Err(ProbeError::Exit {
        command: command.to_string(),
        code: exec.exit_code,
        output: exec.output.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server on a free local port that answers every connection with `answer` and closes.
    async fn answering(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 512];
                let _ = conn.read(&mut request).await;
                let _ = conn.write_all(answer).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn http_passes_on_2xx_and_3xx_only() {
        for ok in [
            &b"HTTP/1.0 200 OK\r\n\r\nfine"[..],
            b"HTTP/1.1 302 Found\r\n\r\n",
        ] {
            let address = answering(ok).await;
            http(&address, "/health").await.expect("passes");
        }
        let address = answering(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let err = http(&address, "/health").await.unwrap_err();
        assert!(
            matches!(err, ProbeError::Status { status: 503, .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "GET /health answered 503");
        let address = answering(b"SSH-2.0-OpenSSH\r\n").await;
        let err = http(&address, "/health").await.unwrap_err();
        assert_eq!(err.to_string(), "GET /health: not an HTTP answer");
    }

    #[tokio::test]
    async fn a_closed_port_does_not_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = http(&address, "/ready").await.unwrap_err();
        let ProbeError::Connect { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            err.to_string()
                .starts_with(&format!("GET /ready: cannot connect to {address}: ")),
            "{err}"
        );
    }

    #[test]
    fn a_command_passes_when_it_exits_0() {
        let exec = |exit_code, output: &str| Exec {
            exit_code,
            output: output.to_string(),
        };
        assert!(passed("test -f /ok", exec(0, "")).is_ok());
        let err = passed("test -f /ok", exec(1, "no such file\n")).unwrap_err();
        assert!(matches!(err, ProbeError::Exit { code: 1, .. }), "{err:?}");
        assert_eq!(err.to_string(), "`test -f /ok` exited with 1: no such file");
    }

    #[tokio::test]
    async fn the_simulation_and_tasks_without_checks_always_pass() {
        let sim = crate::runtime::SimRuntime::default();
        let mut task = Task::new("busybox");
        assert!(probe(&sim, &task, Duration::from_millis(10)).await.is_ok());
        task.health_check = Some("/health".into());
        assert!(probe(&sim, &task, Duration::from_millis(10)).await.is_ok());
    }
}
