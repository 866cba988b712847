//! A task from flags: `cube submit`'s task, read from a task file (`-f`) whose fields the
//! flags override, checked as the manager will check it; and the same flags for the template
//! of `cube service deploy`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use cube_shared::validate::{parse_container_port, parse_host_binding, validate_task};
use cube_shared::{task_with_optional_id, EnvVar, RestartPolicy, Task};

use super::submit::SubmitArgs;
use crate::{bytes_size, duration};

/// What a task runs and needs, as flags (`cube submit`, `cube service deploy`).
#[derive(Args, Debug)]
pub struct TaskFlags {
    /// The Docker image to run.
    #[arg(long, required_unless_present = "file")]
    pub image: Option<String>,
    /// Cores to reserve, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory limit and reservation, e.g. 256m.
    #[arg(long, value_parser = bytes_size)]
    pub memory: Option<u64>,
    /// Disk to reserve, e.g. 1g.
    #[arg(long, value_parser = bytes_size)]
    pub disk: Option<u64>,
    /// Publish a port: HOST:CONTAINER[/proto], IP:HOST:CONTAINER[/proto], or CONTAINER to
    /// only expose it. Repeatable.
    #[arg(short = 'p', long = "port")]
    pub ports: Vec<String>,
    /// An environment variable, K=V. Repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// An environment variable whose value is a secret's, VAR=SECRET (see `cube secret put`):
    /// only the worker the task is placed on receives the value. Repeatable.
    #[arg(long = "secret-env", value_name = "VAR=SECRET")]
    pub secret_env: Vec<String>,
    /// no, on-failure or always.
    #[arg(long)]
    pub restart: Option<RestartPolicy>,
    /// A mount, SOURCE:TARGET[:ro]: a volume name (the task's own unless the worker allows
    /// shared volumes), or a host path if the worker allows it.
    /// Repeatable.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// bridge (default), none, or host (if the worker allows it).
    #[arg(long)]
    pub network: Option<String>,
    /// host: share the host's PID namespace (if the worker allows it).
    #[arg(long)]
    pub pid: Option<String>,
    /// host: share the host's IPC namespace (if the worker allows it).
    #[arg(long)]
    pub ipc: Option<String>,
    /// Run privileged (if the worker allows it).
    #[arg(long)]
    pub privileged: bool,
    /// Add a Linux capability (if the worker allows it). Repeatable.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// A host device, /dev/… (if the worker allows it). Repeatable.
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Run only on workers whose labels match: key=value or key!=value. Repeatable.
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// How many restarts before the task stays failed (default 3 for on-failure, no limit
    /// for always).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// `/path` (HTTP GET on the first exposed port) or a command run in the container.
    #[arg(long)]
    pub health_check: Option<String>,
    /// How often the health check runs [default: 5s].
    #[arg(long, value_parser = duration)]
    pub health_interval: Option<Duration>,
    /// How long one check may take [default: 2s].
    #[arg(long, value_parser = duration)]
    pub health_timeout: Option<Duration>,
    /// Failed checks in a row that make the task unhealthy [default: 3].
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// How long a new task has to pass its first check [default: 30s].
    #[arg(long, value_parser = duration)]
    pub health_grace: Option<Duration>,
    /// The command to run instead of the image's default, after `--`.
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

/// Builds the task from `-f` and the flags.
pub(super) fn build_task(args: &SubmitArgs) -> Result<Task> {
    let mut task = match &args.file {
        Some(path) => {
            let text = read_file(path)?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            // A task file may leave its id to Cube.
            task_with_optional_id(value).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => Task::new(""),
    };
    if let Some(name) = &args.name {
        task.name = name.clone();
    }
    args.task.apply(&mut task)?;
    validate_task(&task).map_err(|e| anyhow!("invalid task: {e}"))?;
    task.normalise();
    Ok(task)
}

/// The text of `path`, or of standard input for `-`.
pub(super) fn read_file(path: &Path) -> Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

impl TaskFlags {
    /// Whether any flag is given (a service file's template is then changed).
    pub(super) fn any(&self) -> bool {
        let TaskFlags {
            image,
            cpu,
            memory,
            disk,
            ports,
            env,
            secret_env,
            restart,
            mounts,
            network,
            pid,
            ipc,
            privileged,
            cap_add,
            devices,
            constraints,
            max_restarts,
            health_check,
            health_interval,
            health_timeout,
            health_retries,
            health_grace,
            cmd,
        } = self;
        image.is_some()
            || cpu.is_some()
            || memory.is_some()
            || disk.is_some()
            || !ports.is_empty()
            || !env.is_empty()
            || !secret_env.is_empty()
            || restart.is_some()
            || !mounts.is_empty()
            || network.is_some()
            || pid.is_some()
            || ipc.is_some()
            || *privileged
            || !cap_add.is_empty()
            || !devices.is_empty()
            || !constraints.is_empty()
            || max_restarts.is_some()
            || health_check.is_some()
            || health_interval.is_some()
            || health_timeout.is_some()
            || health_retries.is_some()
            || health_grace.is_some()
            || !cmd.is_empty()
    }

    /// Sets the fields the flags give; repeatable flags add to what `task` has.
    pub(super) fn apply(&self, task: &mut Task) -> Result<()> {
        let args = self;
        if let Some(image) = &args.image {
            task.image = image.clone();
        }
        if let Some(cpu) = args.cpu {
            task.cpu = cpu;
        }
        if let Some(memory) = args.memory {
            task.memory = memory;
        }
        if let Some(disk) = args.disk {
            task.disk = disk;
        }
        for port in &args.ports {
            let (container, host) = parse_port_flag(port)?;
            if let Some(host) = host {
                task.port_bindings.insert(container.clone(), host);
            }
            if !task.exposed_ports.contains(&container) {
                task.exposed_ports.push(container);
            }
        }
        task.env
            .extend(args.env.iter().map(|e| EnvVar::from(e.as_str())));
        for entry in &args.secret_env {
            let (name, secret) = entry
                .split_once('=')
                .filter(|(n, s)| !n.is_empty() && !s.is_empty())
                .with_context(|| format!("--secret-env {entry}: expected VAR=SECRET"))?;
            task.env.push(EnvVar::Secret {
                name: name.into(),
                secret: secret.into(),
            });
        }
        task.constraints.extend(args.constraints.iter().cloned());
        task.mounts.extend(args.mounts.iter().cloned());
        task.cap_add.extend(args.cap_add.iter().cloned());
        task.devices.extend(args.devices.iter().cloned());
        task.privileged |= args.privileged;
        task.network_mode = args.network.clone().or(task.network_mode.take());
        task.pid_mode = args.pid.clone().or(task.pid_mode.take());
        task.ipc_mode = args.ipc.clone().or(task.ipc_mode.take());
        if let Some(restart) = args.restart {
            task.restart_policy = restart;
        }
        if let Some(check) = &args.health_check {
            task.health_check = Some(check.clone());
        }
        task.max_restarts = args.max_restarts.or(task.max_restarts);
        task.health_interval = args.health_interval.or(task.health_interval);
        task.health_timeout = args.health_timeout.or(task.health_timeout);
        task.health_retries = args.health_retries.or(task.health_retries);
        task.health_grace = args.health_grace.or(task.health_grace);
        if !args.cmd.is_empty() {
            task.cmd = args.cmd.clone();
        }
        Ok(())
    }
}

/// `8080:80`, `127.0.0.1:8080:80/udp` or `80` → (container port, host binding).
fn parse_port_flag(spec: &str) -> Result<(String, Option<String>)> {
    let (host, container) = match spec.rsplit_once(':') {
        Some((host, container)) => (Some(host), container),
        None => (None, spec),
    };
    let container = parse_container_port(container).map_err(|e| anyhow!("--port {spec}: {e}"))?;
    if let Some(host) = host {
        parse_host_binding(host).map_err(|e| anyhow!("--port {spec}: {e}"))?;
    }
    Ok((container, host.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_flags() {
        assert_eq!(
            parse_port_flag("8080:80").unwrap(),
            ("80/tcp".into(), Some("8080".into()))
        );
        assert_eq!(
            parse_port_flag("127.0.0.1:8080:53/udp").unwrap(),
            ("53/udp".into(), Some("127.0.0.1:8080".into()))
        );
        assert_eq!(parse_port_flag("80").unwrap(), ("80/tcp".into(), None));
        assert!(parse_port_flag("x:80").is_err());
        assert!(parse_port_flag("8080:0").is_err());
    }
}
