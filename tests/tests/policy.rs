//! The worker's task policy beyond the obvious (see `security.rs`), against the real Docker
//! engine: host mounts that would reach the engine by another name, port bindings on a host
//! address or a privileged port, log rotation on every container, and named volumes that are
//! each task's own unless the worker lets tasks share them. The last test starts `cube worker`
//! with the flags, so that they are what an operator sets.

use std::os::unix::fs::symlink;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use bollard::models::{ContainerInspectResponse, PortBinding};
use cube_shared::{container_name, State, Task, LABEL_TASK_ID};
use cube_tests::procs::ProcCluster;
use cube_tests::{free_port, sleeper, task, unique, Cluster, WITHIN};
use uuid::Uuid;

/// The review's exploit: the Docker socket by the host's `/proc/1/root`, checked for.
const SOCKET_VIA_PROC: &str = "/proc/1/root/run/docker.sock:/var/run/docker.sock";

fn constrained(mut t: Task, constraint: &str) -> Task {
    t.constraints = vec![constraint.to_string()];
    t
}

/// Submits `t` and checks that it fails with a reason containing `why`, starting no container.
async fn refused(cluster: &Cluster, t: Task, why: &str) -> Result<()> {
    let mounts = t.mounts.clone();
    let id = cluster.submit(t).await?;
    let failed = cluster.wait_state(id, State::Failed, WITHIN).await?;
    let error = failed.error.unwrap_or_default();
    ensure!(
        error.contains(why) && error.contains("refused by worker"),
        "{mounts:?}: {error}"
    );
    ensure!(
        cluster
            .containers(LABEL_TASK_ID, &id.to_string())
            .await?
            .is_empty(),
        "{mounts:?}: a container was created"
    );
    Ok(())
}

async fn inspect(docker: &bollard::Docker, id: Uuid) -> Result<ContainerInspectResponse> {
    Ok(docker
        .inspect_container(&container_name(id, 1), None)
        .await?)
}

/// `--allow-host-mounts` lets a task mount a host directory, but not the Docker socket under
/// another name: by `/proc`, by a symlink planted in a host directory, containerd's socket or
/// Docker's state. With `--allow-docker-socket` the planted symlink does reach the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mounts_do_not_reach_the_engine() -> Result<()> {
    let mut cluster = Cluster::empty().await?;
    cluster.start_manager(cube_manager::Config::default());
    cluster
        .add_worker(|c| {
            c.policy.allow_host_mounts = true;
            c.labels.insert("socket".into(), "no".into());
        })
        .await?;
    cluster
        .add_worker(|c| {
            c.policy.allow_docker_socket = true;
            c.labels.insert("socket".into(), "yes".into());
        })
        .await?;

    let dir = tempfile::tempdir()?;
    let host = dir.path().canonicalize()?;
    std::fs::create_dir(host.join("data"))?;
    std::fs::write(host.join("data/hello"), "hello")?;
    symlink("/var/run/docker.sock", host.join("data/sock"))?;
    symlink("/run", host.join("run"))?;
    let at = |p: &str| host.join(p).display().to_string();

    // An ordinary host directory is mounted (the planted link in it stays a link).
    let mut t = constrained(task(&["cat", "/data/hello"]), "socket=no");
    t.mounts = vec![format!("{}:/data:ro", at("data"))];
    let id = cluster.submit(t).await?;
    let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
    ensure!(done.exit_code == Some(0), "{done:?}");

    for source in [
        SOCKET_VIA_PROC.to_string(),
        format!("{}:/var/run/docker.sock", at("data/sock")),
        format!("{}:/r", at("run")),
        format!("{}:/var/run/docker.sock", at("run/docker.sock")),
        "/run/containerd/containerd.sock:/c.sock".to_string(),
        "/var/lib/docker:/d".to_string(),
        "/var/lib:/d".to_string(),
    ] {
        let mut t = constrained(task(&["test", "-S", "/var/run/docker.sock"]), "socket=no");
        t.mounts = vec![source];
        refused(&cluster, t, "--allow-docker-socket").await?;
    }

    // The planted link does lead Docker to the socket: what refusing it prevents.
    let mut t = constrained(task(&["test", "-S", "/var/run/docker.sock"]), "socket=yes");
    t.mounts = vec![format!("{}:/var/run/docker.sock", at("data/sock"))];
    let id = cluster.submit(t).await?;
    let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
    ensure!(
        done.exit_code == Some(0),
        "with --allow-docker-socket: {done:?}"
    );
    Ok(())
}

/// By default a binding names no host address and no privileged port; every container's
/// output is rotated (10 MiB × 3), as Docker itself reports; a named volume is its task's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_fence_ports_logs_and_volumes() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let port = free_port()?;
    let mut t = sleeper();
    t.port_bindings = [("80/tcp".to_string(), format!("127.0.0.1:{port}"))].into();
    refused(&cluster, t, "--allow-host-ips 127.0.0.1").await?;
    let mut t = sleeper();
    t.port_bindings = [("80/tcp".to_string(), "80".to_string())].into();
    refused(&cluster, t, "--allow-host-ports to include 80").await?;

    let mut t = sleeper();
    t.port_bindings = [("80/tcp".to_string(), port.to_string())].into();
    let id = cluster.submit(t).await?;
    cluster.wait_state(id, State::Running, WITHIN).await?;
    let c = inspect(cluster.docker.client(), id).await?;
    ensure!(
        rotation(&c) == Some(("10m".into(), "3".into())),
        "{:?}",
        c.host_config
    );
    ensure!(
        bound(&c, "80/tcp") == Some((None, port.to_string())),
        "{c:?}"
    );
    cluster.stop(id).await?;
    cluster.wait_state(id, State::Completed, WITHIN).await?;

    // One task writes to `name`; another naming it finds its own, empty volume. Docker
    // holds a volume for each, and none by the name they gave.
    let name = unique("vol");
    let mut volumes = Volumes(vec![name.clone()]);
    let mut writer = task(&["sh", "-c", "echo secret > /data/secret"]);
    writer.mounts = vec![format!("{name}:/data")];
    let mut reader = task(&["test", "!", "-e", "/data/secret"]);
    reader.mounts = writer.mounts.clone();
    let docker = cluster.docker.client();
    for t in [writer, reader] {
        let id = cluster.submit(t).await?;
        let scoped = format!("cube-task_{id}_{name}");
        volumes.0.push(scoped.clone());
        let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
        ensure!(done.exit_code == Some(0), "{done:?}");
        docker
            .inspect_volume(&scoped)
            .await
            .with_context(|| format!("the task's volume {scoped}"))?;
    }
    ensure!(
        docker.inspect_volume(&name).await.is_err(),
        "a volume named {name} was made"
    );
    Ok(())
}

/// `cube worker --allow-host-ips 127.0.0.1 --container-log-max-size 1m
/// --container-log-max-files 2 --allow-shared-volumes`: a binding on the loopback runs,
/// its container's log is rotated as set, and a named volume is the one of that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_flags_allow_them() -> Result<()> {
    let mut cluster = ProcCluster::new().await?;
    cluster.worker_args = [
        "--allow-host-ips",
        "127.0.0.1",
        "--container-log-max-size",
        "1m",
        "--container-log-max-files",
        "2",
        "--allow-shared-volumes",
    ]
    .map(String::from)
    .to_vec();
    cluster.start_manager().await?;
    cluster.add_worker().await?;
    let result = flags_allow_them(&mut cluster).await;
    cluster.explain(result)
}

async fn flags_allow_them(cluster: &mut ProcCluster) -> Result<()> {
    let port = free_port()?;
    let mut t = sleeper();
    t.port_bindings = [("80/tcp".to_string(), format!("127.0.0.1:{port}"))].into();
    let id = cluster.submit(t).await?;
    cluster.wait_state(id, State::Running, WITHIN).await?;
    let c = inspect(cluster.docker.client(), id).await?;
    ensure!(
        bound(&c, "80/tcp") == Some((Some("127.0.0.1".into()), port.to_string())),
        "{:?}",
        c.host_config
    );
    ensure!(
        rotation(&c) == Some(("1m".into(), "2".into())),
        "{:?}",
        c.host_config
    );
    cluster.cube().stop(id).await?;
    cluster.wait_state(id, State::Completed, WITHIN).await?;

    let name = unique("vol");
    let _volumes = Volumes(vec![name.clone()]);
    let mut writer = task(&["sh", "-c", "echo shared > /data/file"]);
    writer.mounts = vec![format!("{name}:/data")];
    let mut reader = task(&["grep", "-q", "shared", "/data/file"]);
    reader.mounts = writer.mounts.clone();
    for t in [writer, reader] {
        let id = cluster.submit(t).await?;
        let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
        ensure!(done.exit_code == Some(0), "{done:?}");
    }
    Ok(())
}

/// The json-file log's max-size and max-file, as Docker reports the container's LogConfig.
fn rotation(c: &ContainerInspectResponse) -> Option<(String, String)> {
    let log = c.host_config.as_ref()?.log_config.as_ref()?;
    if log.typ.as_deref() != Some("json-file") {
        return None;
    }
    let config = log.config.as_ref()?;
    Some((
        config.get("max-size")?.clone(),
        config.get("max-file")?.clone(),
    ))
}

/// The host address and port Docker bound for the container port `port`.
fn bound(c: &ContainerInspectResponse, port: &str) -> Option<(Option<String>, String)> {
    let bindings = c.host_config.as_ref()?.port_bindings.as_ref()?;
    let PortBinding { host_ip, host_port } = bindings.get(port)?.as_ref()?.first()?.clone();
    Some((host_ip.filter(|ip| !ip.is_empty()), host_port?))
}

/// Named volumes a test made: removed when it ends, with any container still using them.
struct Volumes(Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for volume in &self.0 {
            let users = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("volume={volume}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in users.split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", volume])
                .output();
        }
    }
}
