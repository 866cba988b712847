//! `cube submit`'s task: read from a task file (`-f`), then the flags override its fields;
//! checked as the manager will check it.

use anyhow::{anyhow, Context, Result};
use cube_shared::validate::{parse_container_port, parse_host_binding, validate_task};
use cube_shared::{task_with_optional_id, Task};

use super::submit::SubmitArgs;

/// Builds the task from `-f` and the flags.
pub(super) fn build_task(args: &SubmitArgs) -> Result<Task> {
    let mut task = match &args.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            // A task file may leave its id to Cube.
            task_with_optional_id(value).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => Task::new(""),
    };
    if let Some(image) = &args.image {
        task.image = image.clone();
    }
    if let Some(name) = &args.name {
        task.name = name.clone();
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
    task.env.extend(args.env.iter().cloned());
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
    validate_task(&task).map_err(|e| anyhow!("invalid task: {e}"))?;
    task.normalise();
    Ok(task)
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
