//! The container Docker is asked to create for a task: a pure mapping from the task and the
//! worker's limits, and the part of the runtime that fences a task in (`no-new-privileges`,
//! the pids and memory limits, log rotation, volumes of its own), so it is tested here rather
//! than only through a fork bomb.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HostConfig, HostConfigLogConfig, PortBinding,
};
use cube_shared::validate::{parse_host_binding, parse_mount};
use cube_shared::{
    Task, LABEL_GENERATION, LABEL_SERVICE, LABEL_SERVICE_VERSION, LABEL_TASK_ID, LABEL_WORKER,
};

use crate::policy::{volume_name, Limits};

/// Every container gets it: no process in it gains privileges it did not start with (setuid
/// binaries, file capabilities).
const NO_NEW_PRIVILEGES: &str = "no-new-privileges:true";

/// The container for `task` on `worker`. The worker's policy has already refused what this
/// host does not allow; what is left is mapped as asked, within `limits`.
pub(super) fn create_body(task: &Task, worker: &str, limits: &Limits) -> ContainerCreateBody {
    let mut labels = HashMap::from([
        (LABEL_TASK_ID.to_string(), task.id.to_string()),
        (LABEL_WORKER.to_string(), worker.to_string()),
        (LABEL_GENERATION.to_string(), task.generation.to_string()),
    ]);
    if let (Some(service), Some(version)) = (&task.service, task.service_version) {
        labels.insert(LABEL_SERVICE.to_string(), service.clone());
        labels.insert(LABEL_SERVICE_VERSION.to_string(), version.to_string());
    }
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
        limits.default_memory
    };
    let binds = binds(task, limits.shared_volumes);
    let devices: Vec<DeviceMapping> = task
        .devices
        .iter()
        .map(|d| DeviceMapping {
            path_on_host: Some(d.clone()),
            path_in_container: Some(d.clone()),
            cgroup_permissions: Some("rwm".into()),
        })
        .collect();
    let host_config = HostConfig {
        memory: (memory > 0).then_some(memory as i64),
        nano_cpus: (task.cpu > 0.0).then_some((task.cpu * 1e9) as i64),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        pids_limit: (limits.pids_limit > 0).then_some(limits.pids_limit),
        security_opt: Some(vec![NO_NEW_PRIVILEGES.to_string()]),
        privileged: Some(task.privileged),
        network_mode: task.network_mode.clone(),
        pid_mode: task.pid_mode.clone().filter(|m| !m.is_empty()),
        ipc_mode: task.ipc_mode.clone().filter(|m| !m.is_empty()),
        cap_add: (!task.cap_add.is_empty()).then(|| task.cap_add.clone()),
        devices: (!devices.is_empty()).then_some(devices),
        binds: (!binds.is_empty()).then_some(binds),
        log_config: log_config(limits),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(task.image.clone()),
        cmd: (!task.cmd.is_empty()).then(|| task.cmd.clone()),
        // Secrets' variables were given their values (`work::with_secrets`) before this: a
        // reference that is left has no value to give and is not passed on.
        env: (!task.env.is_empty()).then(|| {
            task.env
                .iter()
                .filter_map(|e| e.as_value())
                .map(String::from)
                .collect()
        }),
        exposed_ports: (!task.exposed_ports.is_empty()).then(|| task.exposed_ports.clone()),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Docker's `binds` for the task's mounts: host paths first, then named volumes (under the
/// names [`volume_name`] gives them), each `source:target[:ro]`. A mount that does not parse
/// was refused before it got here.
fn binds(task: &Task, shared_volumes: bool) -> Vec<String> {
    let (mut host, mut volumes) = (Vec::new(), Vec::new());
    for m in &task.mounts {
        if let Ok((source, target, read_only)) = parse_mount(m) {
            let ro = if read_only { ":ro" } else { "" };
            if source.starts_with('/') {
                host.push(format!("{source}:{target}{ro}"));
            } else {
                let name = volume_name(task, &source, shared_volumes);
                volumes.push(format!("{name}:{target}{ro}"));
            }
        }
    }
    host.extend(volumes);
    host
}

/// Rotated `json-file` logs, as `limits` says; `None` (the daemon's own logging) if they set
/// no size.
fn log_config(limits: &Limits) -> Option<HostConfigLogConfig> {
    (limits.log_max_size > 0).then(|| HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), docker_size(limits.log_max_size)),
            (
                "max-file".to_string(),
                limits.log_max_files.max(1).to_string(),
            ),
        ])),
    })
}

/// A size as Docker reads it (powers of 1024): `10m` rather than `10485760`, when it is one.
fn docker_size(bytes: u64) -> String {
    for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
        if bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(body: &ContainerCreateBody) -> &HostConfig {
        body.host_config.as_ref().expect("a host config")
    }

    /// The `json-file` log's max-size and max-file, if that is its logging.
    fn rotation(body: &ContainerCreateBody) -> Option<(String, String)> {
        let log = host(body).log_config.clone()?;
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let config = log.config?;
        Some((config["max-size"].clone(), config["max-file"].clone()))
    }

    /// What every container gets, whatever its task asks: what `security.rs` proves holds a
    /// fork bomb.
    #[test]
    fn every_container_is_fenced_in() {
        let task = Task::new("busybox");
        let body = create_body(&task, "w1", &Limits::default());
        let h = host(&body);
        assert_eq!(h.security_opt, Some(vec![NO_NEW_PRIVILEGES.to_string()]));
        assert_eq!(h.pids_limit, Some(512));
        assert_eq!(h.memory, Some(512 << 20), "the default memory limit");
        assert_eq!(rotation(&body), Some(("10m".into(), "3".into())));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.nano_cpus, None, "no CPU limit unless asked");
        for unset in [&h.cap_add, &h.binds] {
            assert_eq!(unset, &None);
        }
        assert_eq!(h.devices, None);
        assert_eq!(h.port_bindings, None);
        assert_eq!(
            (&h.network_mode, &h.pid_mode, &h.ipc_mode),
            (&None, &None, &None)
        );
        assert_eq!(body.image.as_deref(), Some("busybox"));
        assert_eq!(
            (&body.cmd, &body.env, &body.exposed_ports),
            (&None, &None, &None)
        );
    }

    #[test]
    fn the_worker_limits_apply_and_zero_means_none() {
        let task = Task::new("busybox");
        let limits = Limits {
            default_memory: 64 << 20,
            pids_limit: 100,
            log_max_size: 1 << 20,
            log_max_files: 5,
            ..Limits::default()
        };
        let body = create_body(&task, "w1", &limits);
        assert_eq!(
            (host(&body).memory, host(&body).pids_limit),
            (Some(64 << 20), Some(100))
        );
        assert_eq!(rotation(&body), Some(("1m".into(), "5".into())));
        let none = Limits {
            default_memory: 0,
            pids_limit: 0,
            log_max_size: 0,
            ..Limits::default()
        };
        let body = create_body(&task, "w1", &none);
        assert_eq!((host(&body).memory, host(&body).pids_limit), (None, None));
        assert_eq!(host(&body).log_config, None, "the daemon's own logging");
        // `no-new-privileges` is not a limit: it stays.
        assert_eq!(
            host(&body).security_opt,
            Some(vec![NO_NEW_PRIVILEGES.to_string()])
        );
    }

    #[test]
    fn a_task_s_own_limits_win_over_the_default() {
        let mut task = Task::new("busybox");
        task.memory = 128 << 20;
        task.cpu = 1.5;
        let body = create_body(&task, "w1", &Limits::default());
        assert_eq!(host(&body).memory, Some(128 << 20));
        assert_eq!(host(&body).nano_cpus, Some(1_500_000_000));
        assert_eq!(host(&body).pids_limit, Some(512), "not the task's to raise");
    }

    #[test]
    fn labels_say_whose_container_it_is() {
        let mut task = Task::new("busybox");
        task.generation = 7;
        let body = create_body(&task, "w1", &Limits::default());
        let labels = body.labels.expect("labels");
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert_eq!(labels[LABEL_TASK_ID], task.id.to_string());
        assert_eq!(labels[LABEL_WORKER], "w1");
        assert_eq!(labels[LABEL_GENERATION], "7");
        assert_eq!(LABEL_TASK_ID, "cube.task.id");
        assert_eq!(LABEL_WORKER, "cube.worker");
        // A copy of a service also says which service and version.
        task.service = Some("web".into());
        task.service_version = Some(2);
        let labels = create_body(&task, "w1", &Limits::default()).labels.unwrap();
        assert_eq!(labels[LABEL_SERVICE], "web");
        assert_eq!(labels[LABEL_SERVICE_VERSION], "2");
        assert_eq!(LABEL_SERVICE, "cube.service");
    }

    #[test]
    fn command_environment_and_ports_are_passed_on() {
        let mut task = Task::new("nginx:1");
        task.cmd = vec!["sh".into(), "-c".into(), "echo $A".into()];
        task.env = vec!["A=1".into(), "B=two words".into()];
        task.exposed_ports = vec!["80/tcp".into(), "53/udp".into()];
        task.port_bindings = [
            ("80/tcp".to_string(), "8080".to_string()),
            ("53/udp".to_string(), "127.0.0.1:5353".to_string()),
        ]
        .into();
        let body = create_body(&task, "w1", &Limits::default());
        assert_eq!(body.image.as_deref(), Some("nginx:1"));
        assert_eq!(body.cmd, Some(task.cmd.clone()));
        assert_eq!(
            body.env,
            Some(vec!["A=1".to_string(), "B=two words".to_string()])
        );
        assert_eq!(body.exposed_ports, Some(task.exposed_ports.clone()));
        let ports = host(&body).port_bindings.clone().expect("port bindings");
        let binding = |host_ip: Option<&str>, port: &str| {
            Some(vec![PortBinding {
                host_ip: host_ip.map(str::to_string),
                host_port: Some(port.to_string()),
            }])
        };
        assert_eq!(ports.len(), 2);
        assert_eq!(ports["80/tcp"], binding(None, "8080"));
        assert_eq!(ports["53/udp"], binding(Some("127.0.0.1"), "5353"));
    }

    #[test]
    fn mounts_are_host_paths_then_volumes_and_devices_pass_through() {
        let mut task = Task::new("busybox");
        task.mounts = vec![
            "data:/data".into(),
            "/srv/conf:/etc/app:ro".into(),
            "cache:/cache:ro".into(),
            "/srv/out:/out:rw".into(),
        ];
        task.devices = vec!["/dev/fuse".into()];
        let body = create_body(&task, "w1", &Limits::default());
        let h = host(&body);
        let id = task.id;
        assert_eq!(
            h.binds,
            Some(vec![
                "/srv/conf:/etc/app:ro".to_string(),
                "/srv/out:/out".to_string(),
                format!("cube-task_{id}_data:/data"),
                format!("cube-task_{id}_cache:/cache:ro"),
            ])
        );
        let shared = Limits {
            shared_volumes: true,
            ..Limits::default()
        };
        let binds = host(&create_body(&task, "w1", &shared)).binds.clone();
        assert_eq!(binds.unwrap()[2], "data:/data", "as named when shared");
        assert_eq!(
            h.devices,
            Some(vec![DeviceMapping {
                path_on_host: Some("/dev/fuse".into()),
                path_in_container: Some("/dev/fuse".into()),
                cgroup_permissions: Some("rwm".into()),
            }])
        );
    }

    /// What an operator allowed reaches Docker as asked.
    #[test]
    fn allowed_host_access_is_mapped() {
        let mut task = Task::new("busybox");
        task.privileged = true;
        task.network_mode = Some("host".into());
        task.pid_mode = Some("host".into());
        task.ipc_mode = Some(String::new());
        task.cap_add = vec!["NET_ADMIN".into()];
        let body = create_body(&task, "w1", &Limits::default());
        let h = host(&body);
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(h.pid_mode.as_deref(), Some("host"));
        assert_eq!(h.ipc_mode, None, "an empty mode is Docker's default");
        assert_eq!(h.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(
            h.security_opt,
            Some(vec![NO_NEW_PRIVILEGES.to_string()]),
            "even a privileged container gains no new privileges"
        );
    }

    #[test]
    fn sizes_are_written_as_docker_reads_them() {
        assert_eq!(docker_size(10 << 20), "10m");
        assert_eq!(docker_size(2 << 30), "2g");
        assert_eq!(docker_size(3 << 10), "3k");
        assert_eq!(docker_size(1536), "1536");
    }
}
