//! What a worker lets a task do to its host. The Docker daemon is root on the host, so a task
//! that asks for privileged mode, the host's namespaces, host paths or the Docker socket is
//! asking for the host itself: refused unless the operator allows it on this worker.

mod mounts;
mod ports;
mod volumes;

use std::net::IpAddr;

use cube_shared::validate::parse_mount;
use cube_shared::Task;

pub use ports::{PortRange, UNPRIVILEGED};
pub use volumes::volume_name;

/// The worker's task policy; the defaults are the safe ones.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allow_privileged: bool,
    pub allow_host_network: bool,
    pub allow_host_pid: bool,
    pub allow_host_ipc: bool,
    /// Bind mounts of host paths, except those that reach the container engine (see
    /// [`mounts`]), which need `allow_docker_socket` too.
    pub allow_host_mounts: bool,
    pub allow_docker_socket: bool,
    pub allow_capabilities: bool,
    pub allow_devices: bool,
    /// The host ports a task may bind (default: 1024-65535, no privileged port).
    pub host_ports: Vec<PortRange>,
    /// The host addresses a port binding may name (default: none; a binding with no address
    /// is on all interfaces).
    pub host_ips: Vec<IpAddr>,
    /// What every container gets, whatever its task asks. Set here, once; the Docker runtime
    /// is given them (`DockerRuntime::with_limits`) and applies them.
    pub limits: Limits,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_privileged: false,
            allow_host_network: false,
            allow_host_pid: false,
            allow_host_ipc: false,
            allow_host_mounts: false,
            allow_docker_socket: false,
            allow_capabilities: false,
            allow_devices: false,
            host_ports: vec![UNPRIVILEGED],
            host_ips: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// What every container gets, whatever its task asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The memory limit of a task that sets none, in bytes (0: none).
    pub default_memory: u64,
    /// The most processes in one container (0: no limit): a fork bomb stays inside.
    pub pids_limit: i64,
    /// Docker keeps a container's output in `json-file` logs of at most this many bytes
    /// (0: Docker's own logging, as its daemon is configured)...
    pub log_max_size: u64,
    /// ...and this many files, the oldest dropped: a task that writes without end cannot
    /// fill the host's disk.
    pub log_max_files: u32,
    /// Named volumes go by the names tasks give them, shared by every task that names them;
    /// by default each task's are its own (see [`volume_name`]).
    pub shared_volumes: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_memory: 512 << 20,
            pids_limit: 512,
            log_max_size: 10 << 20,
            log_max_files: 3,
            shared_volumes: false,
        }
    }
}

/// "`what` is not allowed on this worker (it would need `flag`)": every refusal says so.
fn not_allowed(what: &str, flag: &str) -> String {
    format!("{what} is not allowed on this worker (it would need {flag})")
}

impl Policy {
    /// Why this worker refuses `task`, naming the flag that would allow it; `None` if it may
    /// run. Host paths are resolved on this host (see [`mounts`]).
    pub fn refuses(&self, task: &Task) -> Option<String> {
        let refuse = |what: &str, flag: &str| Some(not_allowed(what, flag));
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
        for (container, host) in &task.port_bindings {
            if let Some(why) = ports::refuses(container, host, &self.host_ports, &self.host_ips) {
                return Some(why);
            }
        }
        task.mounts.iter().find_map(|m| self.refuses_mount(m))
    }

    /// Why this worker refuses the mount `mount`; `None` if it may be mounted.
    fn refuses_mount(&self, mount: &str) -> Option<String> {
        let Ok((source, _, _)) = parse_mount(mount) else {
            return Some(format!("mount `{mount}` is not SOURCE:TARGET[:ro]"));
        };
        if !source.starts_with('/') {
            return None; // a named volume
        }
        let host_path = || {
            Some(not_allowed(
                &format!("mounting the host path {source}"),
                "--allow-host-mounts",
            ))
        };
        match mounts::classify(&source) {
            Ok(mounts::HostPath::Engine { .. }) if self.allow_docker_socket => None,
            Ok(mounts::HostPath::Engine { reaches }) => Some(not_allowed(
                &format!(
                    "mounting {source}, which reaches {reaches} (the Docker socket, the \
                     container engine or /proc: root on this host),"
                ),
                "--allow-docker-socket",
            )),
            _ if !self.allow_host_mounts => host_path(),
            Err(why) => Some(why),
            Ok(mounts::HostPath::Ordinary) => None,
        }
    }
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
        t.mounts = vec!["/var//run/./docker.sock:/s".into()];
        assert!(p.refuses(&t).unwrap().contains("Docker socket"));
        let mut t = task();
        t.port_bindings = [("80/tcp".to_string(), "80".to_string())].into();
        assert!(p.refuses(&t).unwrap().contains("--allow-host-ports"));
        let mut t = task();
        t.port_bindings = [("80/tcp".to_string(), "127.0.0.1:8080".to_string())].into();
        assert!(p
            .refuses(&t)
            .unwrap()
            .contains("--allow-host-ips 127.0.0.1"));
        t.port_bindings = [("80/tcp".to_string(), "8080".to_string())].into();
        assert_eq!(
            p.refuses(&t),
            None,
            "an unprivileged port on all interfaces"
        );
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
            host_ports: vec!["80".parse().unwrap(), UNPRIVILEGED],
            host_ips: vec!["127.0.0.1".parse().unwrap()],
            ..Policy::default()
        };
        let mut t = task();
        t.network_mode = Some("host".into());
        t.mounts = vec!["/srv/data:/data".into()];
        t.port_bindings = [
            ("80/tcp".to_string(), "127.0.0.1:80".to_string()),
            ("81/tcp".to_string(), "8081".to_string()),
        ]
        .into();
        assert_eq!(p.refuses(&t), None);
    }

    /// The review's bypasses of `--allow-host-mounts`: each reaches the engine, so each needs
    /// `--allow-docker-socket` too.
    #[test]
    fn host_mounts_do_not_include_the_engine() {
        let mounts_only = Policy {
            allow_host_mounts: true,
            ..Policy::default()
        };
        let socket_too = Policy {
            allow_docker_socket: true,
            ..mounts_only.clone()
        };
        for source in [
            "/var/run/docker.sock",
            "/proc/1/root/run/docker.sock",
            "/proc/1/root",
            "/proc/self/root/var/run",
            "/run/containerd/containerd.sock",
            "/var/lib/docker",
            "/var/lib",
            "/run",
            "/",
        ] {
            let mut t = task();
            t.mounts = vec![format!("{source}:/s")];
            let why = mounts_only.refuses(&t).unwrap_or_default();
            assert!(why.contains("--allow-docker-socket"), "{source}: {why}");
            assert_eq!(socket_too.refuses(&t), None, "{source}");
        }
        let mut t = task();
        t.mounts = vec!["/srv/../run/docker.sock:/s".into()];
        assert!(socket_too.refuses(&t).unwrap().contains("`..`"));
    }
}
