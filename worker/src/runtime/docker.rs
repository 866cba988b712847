//! The Docker runtime, through bollard.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use cube_shared::validate::parse_host_binding;
use cube_shared::{container_name, Task, LABEL_GENERATION, LABEL_TASK_ID, LABEL_WORKER};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::metrics::DockerErrors;

use super::{Exit, LogLine, Observed, Output, Runtime, RuntimeError, Started};

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// How long an image pull may take before the task fails.
    pull_timeout: Duration,
    limits: Limits,
    /// Counts the API calls that fail (`cube_docker_errors_total`).
    errors: DockerErrors,
}

/// Limits every container gets, whatever the task asks.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The memory limit of a task that sets none (0: none).
    pub default_memory: u64,
    /// The most processes in one container (0: no limit): a fork bomb stays inside.
    pub pids_limit: i64,
}

impl Default for Limits {
    fn default() -> Self {
        let policy = crate::policy::Policy::default();
        Limits {
            default_memory: policy.default_memory,
            pids_limit: policy.pids_limit,
        }
    }
}

fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn unavailable(what: &str, e: DockerError) -> RuntimeError {
    RuntimeError::Unavailable(format!("{what}: {}", message(&e)))
}

impl DockerRuntime {
    /// Connects to the local engine and agrees on an API version (this machine speaks 1.41).
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| unavailable("connecting to Docker", e))?
            .negotiate_version()
            .await
            .map_err(|e| unavailable("negotiating the Docker API version", e))?;
        docker
            .ping()
            .await
            .map_err(|e| unavailable("Docker does not answer", e))?;
        Ok(DockerRuntime {
            docker,
            pull_timeout: Duration::from_secs(120),
            limits: Limits::default(),
            errors: DockerErrors::default(),
        })
    }

    pub fn with_limits(mut self, limits: Limits) -> DockerRuntime {
        self.limits = limits;
        self
    }

    /// Counts failed Docker API calls in `errors` (a worker's metrics).
    pub fn with_metrics(mut self, errors: DockerErrors) -> DockerRuntime {
        self.errors = errors;
        self
    }

    /// Counts a failed call to `operation`.
    fn failed(&self, operation: &'static str) {
        self.errors.inc(operation);
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure the image is here, pulling it if it is not.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => {
                self.failed("inspect_image");
                return Err(unavailable("inspecting the image", e));
            }
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(|e| message(&e))?;
            }
            Ok::<(), String>(())
        };
        let reason = match tokio::time::timeout(self.pull_timeout, pull).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(_) => format!("the pull took longer than {:?}", self.pull_timeout),
        };
        self.failed("pull_image");
        Err(RuntimeError::ImageUnavailable {
            image: image.to_string(),
            reason,
        })
    }

    /// The container Docker is asked to create for a task on `worker`. Public so that `cube
    /// bench docker` can create the very same containers directly, as its baseline.
    pub fn create_body(&self, task: &Task, worker: &str) -> ContainerCreateBody {
        let labels = HashMap::from([
            (LABEL_TASK_ID.to_string(), task.id.to_string()),
            (LABEL_WORKER.to_string(), worker.to_string()),
            (LABEL_GENERATION.to_string(), task.generation.to_string()),
        ]);
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = task
            .port_bindings
            .iter()
            .filter_map(|(container, host)| {
                let (ip, port) = parse_host_binding(host).ok()?;
                let binding = PortBinding {
                    host_ip: ip,
                    host_port: Some(port.to_string()),
                };
                Some((container.clone(), Some(vec![binding])))
            })
            .collect();
        let memory = if task.memory > 0 {
            task.memory
        } else {
            self.limits.default_memory
        };
        let mut binds = Vec::new();
        let mut volumes = Vec::new();
        for m in &task.mounts {
            if let Ok((source, target, read_only)) = cube_shared::validate::parse_mount(m) {
                let spec = format!("{source}:{target}{}", if read_only { ":ro" } else { "" });
                if source.starts_with('/') {
                    binds.push(spec);
                } else {
                    volumes.push(spec);
                }
            }
        }
        binds.extend(volumes);
        let devices: Vec<bollard::models::DeviceMapping> = task
            .devices
            .iter()
            .map(|d| bollard::models::DeviceMapping {
                path_on_host: Some(d.clone()),
                path_in_container: Some(d.clone()),
                cgroup_permissions: Some("rwm".into()),
            })
            .collect();
        // The worker's policy has already refused what this host does not allow.
        let host_config = HostConfig {
            memory: (memory > 0).then_some(memory as i64),
            nano_cpus: (task.cpu > 0.0).then_some((task.cpu * 1e9) as i64),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            pids_limit: (self.limits.pids_limit > 0).then_some(self.limits.pids_limit),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            privileged: Some(task.privileged),
            network_mode: task.network_mode.clone(),
            pid_mode: task.pid_mode.clone().filter(|m| !m.is_empty()),
            ipc_mode: task.ipc_mode.clone().filter(|m| !m.is_empty()),
            cap_add: (!task.cap_add.is_empty()).then(|| task.cap_add.clone()),
            devices: (!devices.is_empty()).then_some(devices),
            binds: (!binds.is_empty()).then_some(binds),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(task.image.clone()),
            cmd: (!task.cmd.is_empty()).then(|| task.cmd.clone()),
            env: (!task.env.is_empty()).then(|| task.env.clone()),
            exposed_ports: (!task.exposed_ports.is_empty()).then(|| task.exposed_ports.clone()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// A container as Docker describes it (`name` or id), or `None` if there is none.
    async fn observe(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        let c = match self.docker.inspect_container(name, None).await {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => {
                self.failed("inspect_container");
                return Err(unavailable("inspecting the container", e));
            }
        };
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let Some(task_id) = labels.get(LABEL_TASK_ID).and_then(|s| s.parse().ok()) else {
            return Ok(None);
        };
        let state = c.state.unwrap_or_default();
        let time = |t: Option<&str>| {
            t.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                // Docker reports "0001-01-01T00:00:00Z" for "never".
                .filter(|t| t.timestamp() > 0)
        };
        let running = state.running == Some(true);
        let generation = labels
            .get(LABEL_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let exit = (!running).then(|| Exit {
            task_id,
            generation,
            exit_code: state.exit_code.unwrap_or(-1),
            error: exit_error(&state),
            finish_time: time(state.finished_at.as_deref()).unwrap_or_else(Utc::now),
        });
        Ok(Some(Observed {
            task_id,
            container_id: c.id.unwrap_or_default(),
            generation,
            running,
            start_time: time(state.started_at.as_deref()),
            exit,
        }))
    }

    /// The task's container if it is running: what a repeated start adopts.
    async fn running(&self, name: &str) -> Result<Option<Started>, RuntimeError> {
        Ok(self
            .observe(name)
            .await?
            .filter(|o| o.running)
            .map(|o| Started {
                container_id: o.container_id,
                start_time: o.start_time.unwrap_or_else(Utc::now),
            }))
    }

    /// Creates the task's container: its id, or `None` if one of that name exists.
    async fn create(
        &self,
        name: &str,
        task: &Task,
        worker: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        match self
            .docker
            .create_container(Some(options), self.create_body(task, worker))
            .await
        {
            Ok(c) => Ok(Some(c.id)),
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => {
                self.failed("create_container");
                Err(match status(&e) {
                    Some(404) => RuntimeError::ImageUnavailable {
                        image: task.image.clone(),
                        reason: message(&e),
                    },
                    Some(400) => RuntimeError::StartFailed(message(&e)),
                    _ => unavailable("creating the container", e),
                })
            }
        }
    }

    async fn force_remove(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(404)) => Ok(()),
            // 409: removal already in progress.
            Err(e) if matches!(status(&e), Some(409)) => Ok(()),
            Err(e) => {
                self.failed("remove_container");
                Err(unavailable("removing the container", e))
            }
        }
    }

    /// Why a container that just died ended, beyond its exit code.
    async fn exit_reason(&self, container: &str) -> Option<String> {
        let inspected = self.docker.inspect_container(container, None).await;
        if inspected.is_err() {
            self.failed("inspect_container");
        }
        let state = inspected.ok()?.state?;
        exit_error(&state)
    }
}

fn exit_error(state: &bollard::models::ContainerState) -> Option<String> {
    if state.oom_killed == Some(true) {
        return Some("out of memory (killed by the kernel)".to_string());
    }
    state.error.clone().filter(|e| !e.is_empty())
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn start(&self, task: &Task, worker: &str) -> Result<Started, RuntimeError> {
        let name = task.container_name();
        self.ensure_image(&task.image).await?;
        // Create first: the name is the placement's, so it exists only if an earlier attempt
        // (a redelivery, a worker restarted mid-start) made it. Only then is it inspected.
        let created = match self.create(&name, task, worker).await? {
            Some(id) => id,
            None => {
                if let Some(started) = self.running(&name).await? {
                    debug!(container = %started.container_id, "adopting the running container");
                    return Ok(started);
                }
                // A leftover that is not running belongs to an earlier attempt: start afresh.
                self.force_remove(&name).await?;
                match self.create(&name, task, worker).await? {
                    Some(id) => id,
                    // Someone created it in between (a concurrent redelivery): adopt it once
                    // it runs, never make a second one.
                    None => {
                        return match self.running(&name).await? {
                            Some(started) => Ok(started),
                            None => Err(RuntimeError::Unavailable(
                                "the container is being created elsewhere".into(),
                            )),
                        }
                    }
                }
            }
        };
        match self.docker.start_container(&created, None).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(304) => {}
            Err(e) => {
                self.failed("start_container");
                let reason = message(&e);
                if let Err(e) = self.force_remove(&name).await {
                    warn!(error = %e, "removing a container that would not start");
                }
                return Err(match status(&e) {
                    Some(400 | 404 | 409 | 500) => RuntimeError::StartFailed(reason),
                    _ => RuntimeError::Unavailable(reason),
                });
            }
        }
        Ok(Started {
            container_id: created,
            start_time: Utc::now(),
        })
    }

    async fn stop(
        &self,
        task_id: Uuid,
        generation: u64,
        grace: Duration,
    ) -> Result<Option<i64>, RuntimeError> {
        let name = container_name(task_id, generation);
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        match self.docker.stop_container(&name, Some(options)).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(304) => {}
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => {
                self.failed("stop_container");
                return Err(unavailable("stopping the container", e));
            }
        }
        let code = match self.docker.inspect_container(&name, None).await {
            Ok(c) => c.state.and_then(|s| s.exit_code),
            Err(_) => {
                self.failed("inspect_container");
                None
            }
        };
        Ok(code.or(Some(0)))
    }

    async fn remove(&self, task_id: Uuid, generation: u64) -> Result<(), RuntimeError> {
        self.force_remove(&container_name(task_id, generation))
            .await
    }

    fn exits(&self, worker: &str) -> mpsc::Receiver<Exit> {
        let (tx, rx) = mpsc::channel(1024);
        let runtime = self.clone();
        let label = format!("{LABEL_WORKER}={worker}");
        tokio::spawn(async move {
            let filters = HashMap::from([
                ("type", vec!["container"]),
                ("event", vec!["die"]),
                ("label", vec![label.as_str()]),
            ]);
            // From the moment of the call (the caller lists containers right after, and an
            // exit in between must not be lost), and after the stream breaks, from the last
            // event seen. Replayed duplicates are the worker's to ignore.
            let mut since: Option<i64> = Some(Utc::now().timestamp());
            while !tx.is_closed() {
                let mut options = EventsOptionsBuilder::default().filters(&filters);
                if let Some(t) = since {
                    options = options.since(&t.to_string());
                }
                let options = options.build();
                let mut events = runtime.docker.events(Some(options));
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(e) => {
                            runtime.failed("events");
                            warn!(error = %e, "Docker event stream broke; reconnecting");
                            break;
                        }
                    };
                    if let Some(t) = event.time {
                        since = Some(t);
                    }
                    let Some(actor) = event.actor else { continue };
                    let attrs = actor.attributes.unwrap_or_default();
                    let Some(task_id) = attrs.get(LABEL_TASK_ID).and_then(|s| s.parse().ok())
                    else {
                        continue;
                    };
                    let generation = attrs
                        .get(LABEL_GENERATION)
                        .and_then(|g| g.parse().ok())
                        .unwrap_or(0);
                    let exit_code = attrs
                        .get("exitCode")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(-1);
                    let error = match actor.id {
                        Some(id) => runtime.exit_reason(&id).await,
                        None => None,
                    };
                    let exit = Exit {
                        task_id,
                        generation,
                        exit_code,
                        error,
                        finish_time: event
                            .time_nano
                            .map(DateTime::from_timestamp_nanos)
                            .unwrap_or_else(Utc::now),
                    };
                    if tx.send(exit).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }

    async fn list(&self, worker: &str) -> Result<Vec<Observed>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_WORKER}={worker}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| {
                self.failed("list_containers");
                unavailable("listing containers", e)
            })?;
        let mut out = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            if let Some(observed) = self.observe(&id).await? {
                out.push(observed);
            }
        }
        Ok(out)
    }

    async fn probe(&self, task: &Task, timeout: Duration) -> Result<(), String> {
        let Some(check) = task.health_check.as_deref() else {
            return Ok(());
        };
        let work = async {
            if check.starts_with('/') {
                self.probe_http(task, check).await
            } else {
                self.probe_command(task, check).await
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }

    fn has_output(&self) -> bool {
        true
    }

    fn logs(
        &self,
        task_id: Uuid,
        generation: u64,
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
        let docker = self.docker.clone();
        let errors = self.errors.clone();
        let name = container_name(task_id, generation);
        docker
            .logs(&name, Some(options))
            // No such container (any more): its output has ended.
            .take_while(|item| {
                futures::future::ready(!matches!(item, Err(e) if status(e) == Some(404)))
            })
            .filter_map(move |item| {
                use bollard::container::LogOutput;
                futures::future::ready(match item {
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

impl DockerRuntime {
    fn exec_failed(&self, e: &DockerError) -> String {
        self.failed("exec");
        format!("running the check: {}", message(e))
    }

    /// Where the task's first exposed port answers: its host binding if it has one (the
    /// worker runs on that host), else the container's own address.
    async fn probe_address(&self, task: &Task) -> Result<String, String> {
        let port = task
            .exposed_ports
            .first()
            .or_else(|| task.port_bindings.keys().next())
            .ok_or("the task exposes no port")?;
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
                message(&e)
            })?;
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|nets| {
                nets.into_values()
                    .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
            })
            .ok_or("the container has no IP address")?;
        Ok(format!("{ip}:{container_port}"))
    }

    async fn probe_http(&self, task: &Task, path: &str) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.probe_address(task).await?;
        let mut conn = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("GET {path}: cannot connect to {address}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: cube-health\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let mut head = vec![0u8; 256];
        let mut len = 0;
        while len < head.len() && !head[..len].contains(&b'\n') {
            let n = conn
                .read(&mut head[len..])
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
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
            .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    }

    async fn probe_command(&self, task: &Task, command: &str) -> Result<(), String> {
        let exec = self
            .docker
            .create_exec(
                &task.container_name(),
                bollard::exec::CreateExecOptions {
                    cmd: Some(vec!["sh", "-c", command]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.exec_failed(&e))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.exec_failed(&e))?;
        // The last 512 bytes of its output, for the reason.
        let mut tail: Vec<u8> = Vec::new();
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                if let Ok(chunk) = chunk {
                    tail.extend_from_slice(&chunk.into_bytes());
                    if tail.len() > 512 {
                        tail.drain(..tail.len() - 512);
                    }
                }
            }
        }
        let tail = String::from_utf8_lossy(&tail);
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| self.exec_failed(&e))?
            .exit_code
            .unwrap_or(-1);
        if code == 0 {
            Ok(())
        } else {
            Err(format!("`{command}` exited with {code}: {}", tail.trim()))
        }
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
