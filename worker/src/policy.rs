//! What a worker lets a task do to its host. The Docker daemon is root on the host, so a task
//! that asks for privileged mode, the host's namespaces, host paths or the Docker socket is
//! asking for the host itself: refused unless the operator allows it on this worker.

use cube_shared::validate::parse_mount;
use cube_shared::Task;

/// The worker's task policy; the defaults are the safe ones (nothing allowed).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_privileged: bool,
    pub allow_host_network: bool,
    pub allow_host_pid: bool,
    pub allow_host_ipc: bool,
    /// Bind mounts of host paths (the Docker socket stays refused unless
    /// `allow_docker_socket` too).
    pub allow_host_mounts: bool,
    pub allow_docker_socket: bool,
    pub allow_capabilities: bool,
    pub allow_devices: bool,
    /// What every container gets, whatever its task asks. Set here, once; the Docker runtime
    /// is given them (`DockerRuntime::with_limits`) and applies them.
    pub limits: Limits,
}

/// Limits every container gets, whatever its task asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The memory limit of a task that sets none, in bytes (0: none).
    pub default_memory: u64,
    /// The most processes in one container (0: no limit): a fork bomb stays inside.
    pub pids_limit: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_memory: 512 << 20,
            pids_limit: 512,
        }
    }
}

const DOCKER_SOCKETS: [&str; 3] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/docker",
];

impl Policy {
    /// Why this worker refuses `task`, naming the flag that would allow it; `None` if it may run.
    pub fn refuses(&self, task: &Task) -> Option<String> {
        let refuse = |what: &str, flag: &str| {
            Some(format!(
                "{what} is not allowed on this worker (it would need {flag})"
            ))
        };
        if task.privileged && !self.allow_privileged {
            return refuse("privileged mode", "--allow-privileged");
        }
        if task.network_mode.as_deref() == Some("host") && !self.allow_host_network {
            return refuse("the host network", "--allow-host-network");
        }
        if task.pid_mode.as_deref() == Some("host") && !self.allow_host_pid {
            return refuse("the host PID namespace", "--allow-host-pid");
        }
        if task.ipc_mode.as_deref() == Some("host") && !self.allow_host_ipc {
            return refuse("the host IPC namespace", "--allow-host-ipc");
        }
        if !task.cap_add.is_empty() && !self.allow_capabilities {
            return refuse(
                &format!("adding capabilities ({})", task.cap_add.join(", ")),
                "--allow-capabilities",
            );
        }
        if !task.devices.is_empty() && !self.allow_devices {
            return refuse(
                &format!("host devices ({})", task.devices.join(", ")),
                "--allow-devices",
            );
        }
        for mount in &task.mounts {
            let Ok((source, _, _)) = parse_mount(mount) else {
                return Some(format!("mount `{mount}` is not SOURCE:TARGET[:ro]"));
            };
            if !source.starts_with('/') {
                continue; // a named volume
            }
            let normal = normalise(&source);
            if DOCKER_SOCKETS
                .iter()
                .any(|s| normal == *s || normal.starts_with(&format!("{s}/")))
                || normal == "/var/run"
                || normal == "/run"
                || normal == "/var"
                || normal == "/"
            {
                if !self.allow_docker_socket {
                    return refuse(
                        &format!("mounting the Docker socket ({source})"),
                        "--allow-docker-socket",
                    );
                }
            } else if !self.allow_host_mounts {
                return refuse(
                    &format!("mounting the host path {source}"),
                    "--allow-host-mounts",
                );
            }
        }
        None
    }
}

/// `/var//run/./docker.sock/` → `/var/run/docker.sock`; `..` climbs.
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::new("busybox")
    }

    #[test]
    fn safe_by_default() {
        let p = Policy::default();
        assert_eq!(p.refuses(&task()), None);
        let mut t = task();
        t.privileged = true;
        assert!(p.refuses(&t).unwrap().contains("--allow-privileged"));
        let mut t = task();
        t.network_mode = Some("host".into());
        assert!(p.refuses(&t).unwrap().contains("host network"));
        let mut t = task();
        t.mounts = vec!["/var/run/docker.sock:/var/run/docker.sock".into()];
        assert!(p.refuses(&t).unwrap().contains("Docker socket"));
        let mut t = task();
        t.mounts = vec!["/var/run/../run/./docker.sock:/s".into()];
        assert!(p.refuses(&t).unwrap().contains("Docker socket"));
        let mut t = task();
        t.mounts = vec!["/etc:/host-etc:ro".into()];
        assert!(p.refuses(&t).unwrap().contains("--allow-host-mounts"));
        let mut t = task();
        t.mounts = vec!["data:/data".into()];
        assert_eq!(p.refuses(&t), None, "named volumes are fine");
        let mut t = task();
        t.cap_add = vec!["SYS_ADMIN".into()];
        assert!(p.refuses(&t).is_some());
        let mut t = task();
        t.devices = vec!["/dev/fuse".into()];
        assert!(p.refuses(&t).is_some());
    }

    #[test]
    fn operators_can_allow_each() {
        let p = Policy {
            allow_host_network: true,
            allow_host_mounts: true,
            ..Policy::default()
        };
        let mut t = task();
        t.network_mode = Some("host".into());
        t.mounts = vec!["/srv/data:/data".into()];
        assert_eq!(p.refuses(&t), None);
        t.mounts = vec!["/var/run/docker.sock:/s".into()];
        assert!(
            p.refuses(&t).is_some(),
            "host mounts do not include the Docker socket"
        );
    }
}
