//! What a health check needs from Docker: where a task's container answers, and running a
//! command in it. The checks themselves are the worker's (`crate::probe`).

use bollard::exec::{CreateExecOptions, StartExecResults};
use cube_shared::validate::parse_host_binding;
use cube_shared::Task;
use futures::StreamExt;

use super::errors::DockerError;
use super::DockerRuntime;
use crate::probe::ProbeError;
use crate::runtime::Exec;

/// How much of a command's output is kept, from its end.
const OUTPUT_TAIL: usize = 512;

impl DockerRuntime {
    /// See [`Runtime::probe_address`](crate::runtime::Runtime::probe_address): the task's
    /// host binding if it has one (the worker runs on that host), else the container's own
    /// address.
    pub(super) async fn address(&self, task: &Task) -> Result<String, ProbeError> {
        let port = task
            .exposed_ports
            .first()
            .or_else(|| task.port_bindings.keys().next())
            .ok_or(ProbeError::NoPort)?;
        if let Some((ip, host_port)) = task
            .port_bindings
            .get(port)
            .and_then(|h| parse_host_binding(h).ok())
        {
            let ip = ip
                .filter(|ip| ip != "0.0.0.0" && ip != "::")
                .unwrap_or_else(|| "127.0.0.1".to_string());
            return Ok(format!("{ip}:{host_port}"));
        }
        let container_port = port.split('/').next().unwrap_or(port);
        let inspect = self
            .docker
            .inspect_container(&task.container_name(), None)
            .await
            .map_err(|e| {
                self.failed("inspect_container");
                ProbeError::Runtime(Box::new(DockerError::engine(e)))
            })?;
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|nets| {
                nets.into_values()
                    .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
            })
            .ok_or(ProbeError::NoAddress)?;
        Ok(format!("{ip}:{container_port}"))
    }

    /// See [`Runtime::exec`](crate::runtime::Runtime::exec).
    pub(super) async fn run_in(&self, task: &Task, command: &str) -> Result<Exec, ProbeError> {
        let failed = |e: bollard::errors::Error| {
            self.failed("exec");
            ProbeError::Runtime(Box::new(DockerError::api("running the check", e)))
        };
        let options = CreateExecOptions {
            cmd: Some(vec!["sh", "-c", command]),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&task.container_name(), options)
            .await
            .map_err(failed)?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(failed)?;
        let mut tail: Vec<u8> = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                if let Ok(chunk) = chunk {
                    tail.extend_from_slice(&chunk.into_bytes());
                    if tail.len() > OUTPUT_TAIL {
                        tail.drain(..tail.len() - OUTPUT_TAIL);
                    }
                }
            }
        }
        let exit_code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(failed)?
            .exit_code
            .unwrap_or(-1);
        Ok(Exec {
            exit_code,
            output: String::from_utf8_lossy(&tail).into_owned(),
        })
    }
}
