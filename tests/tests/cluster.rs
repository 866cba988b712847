//! Several workers, discovered from their heartbeats, and `cube dev` as a user starts it.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use cube_shared::{State, LABEL_TASK_ID, LABEL_WORKER};
use cube_tests::{
    cube_bin, cube_with_env, eventually, long_running, unique, Cluster, IMAGE, WITHIN,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_shared_between_workers() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let t = cube_tests::sleeper();
        ids.push(cluster.submit(t).await?);
    }
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let t = cluster.wait_state(*id, State::Running, WITHIN).await?;
        *per_worker.entry(t.worker.clone().unwrap()).or_default() += 1;
        // The container runs where the Task DB says.
        let c = cluster.containers(LABEL_TASK_ID, &id.to_string()).await?;
        assert_eq!(c.len(), 1);
        let labels = c[0].labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_WORKER), t.worker.as_ref());
    }
    for name in &cluster.worker_names {
        assert_eq!(per_worker.get(name), Some(&2), "{per_worker:?}");
    }
    let nodes: Vec<cube_shared::Node> =
        cube_tests::api(&cluster.client, cube_shared::subjects::API_NODES_LIST, &()).await?;
    for name in &cluster.worker_names {
        let node = nodes.iter().find(|n| &n.name == name).expect("listed");
        assert_eq!(node.task_count, 2, "{node:?}");
        assert!(node.cores > 0.0 && node.memory > 0, "{node:?}");
    }
    Ok(())
}

/// The README's run command: `cube dev` brings up nats-server, a manager and a worker;
/// a submitted task runs; SIGTERM stops all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_dev_runs_a_whole_cluster() -> anyhow::Result<()> {
    cube_tests::ensure_image()?;
    let dir = tempfile::tempdir()?;
    let port = cube_tests::free_port()?;
    let http_port = cube_tests::free_port()?;
    let worker = unique("dev");
    let _cleanup = RemoveOnDrop(worker.clone());
    let log = dir.path().join("dev.log");
    let mut dev = tokio::process::Command::new(cube_bin())
        .args([
            "dev",
            "--port",
            &port.to_string(),
            "--worker-name",
            &worker,
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("nats://127.0.0.1:{port}");
    // `cube dev` runs NATS with authentication and leaves the client's password here.
    let cli = DevCli::of(dir.path(), &url).await?;
    // Without them, NATS turns the client away.
    let refused = cube_tests::cube(&url, &["nodes"]).await.unwrap_err();
    assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
    eventually(WITHIN, "cube dev's worker is ready", || async {
        let nodes = cli.run(&["nodes"]).await?;
        anyhow::ensure!(
            nodes.contains(&worker) && nodes.contains("ready"),
            "{nodes}"
        );
        Ok(())
    })
    .await?;

    // It prints the dashboard's URL with an admin token, which the HTTP API takes.
    let dashboard = format!("http://127.0.0.1:{http_port}/?token=");
    let token = eventually(WITHIN, "cube dev prints the dashboard's URL", || async {
        let text = std::fs::read_to_string(&log)?;
        let at = text
            .find(&dashboard)
            .ok_or_else(|| anyhow::anyhow!("no URL yet"))?
            + dashboard.len();
        Ok(text[at..]
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_string())
    })
    .await?;
    let nodes = cube_tests::web::client_with(&token)?
        .get(format!("http://127.0.0.1:{http_port}/api/tokens"))
        .send()
        .await?;
    assert_eq!(nodes.status(), reqwest::StatusCode::OK);
    let tokens = cli.run(&["token", "ls"]).await?;
    assert!(
        tokens
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("dev")
                && l.split_whitespace().nth(2) == Some("admin")),
        "{tokens}"
    );

    let id = cli.submit_long_running().await?;
    eventually(WITHIN, "the task shows running", || async {
        let status = cli.run(&["status"]).await?;
        let row = status
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(row.contains("running"), "{status}");
        Ok(())
    })
    .await?;

    let status = terminate(&mut dev, "cube dev").await?;
    assert!(status.success(), "cube dev exited with {status}");
    // nats-server went with it.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    Ok(())
}

/// The first of three consecutive loopback ports nobody listens on, at or above `from`.
fn three_free_ports(from: u16) -> anyhow::Result<u16> {
    let mut base = from;
    while base < 65000 {
        let free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return Ok(base);
        }
        base += 3;
    }
    anyhow::bail!("no three consecutive free ports from {from}")
}

/// The README's failover demonstration: `cube dev --ha` brings up three clustered
/// nats-servers, two managers and a worker; `cube managers` shows a leader and a standby; the
/// leader is SIGKILLed and the standby leads at a higher epoch, tasks submitted before and
/// after run; the killed manager comes back as a standby; SIGTERM stops everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_dev_ha_survives_the_leaders_death() -> anyhow::Result<()> {
    use anyhow::{ensure, Context};
    use serde_json::Value;
    cube_tests::ensure_image()?;
    let dir = tempfile::tempdir()?;
    // Random bases, so that parallel runs and a developer's own `cube dev --ha` do not clash.
    let seed = (std::process::id() % 1000) as u16 * 3;
    let port = three_free_ports(20_000 + seed)?;
    let route_port = three_free_ports(port + 3)?;
    let worker = unique("dev-ha");
    let _cleanup = RemoveOnDrop(worker.clone());
    let mut dev = tokio::process::Command::new(cube_bin())
        .args(["dev", "--ha", "--no-http", "--lease-ttl", "2s"])
        .args([
            "--port",
            &port.to_string(),
            "--route-port",
            &route_port.to_string(),
        ])
        .args(["--worker-name", &worker, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("dev.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let url = (0..3)
        .map(|i| format!("nats://127.0.0.1:{}", port + i))
        .collect::<Vec<_>>()
        .join(",");
    let outcome = async {
        let cli = DevCli::of(dir.path(), &url).await?;
        let managers = || async {
            let out = cli.run(&["managers", "-o", "json"]).await?;
            let v: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
            Ok::<_, anyhow::Error>(v.as_array().cloned().unwrap_or_default())
        };
        let pair = eventually(
            Duration::from_secs(120),
            "a leader and a standby",
            || async {
                let m = managers().await?;
                ensure!(
                    m.len() == 2 && m[0]["role"] == "leader" && m[1]["role"] == "standby",
                    "{m:?}"
                );
                Ok(m)
            },
        )
        .await?;
        let (leader_pid, epoch) = (
            pair[0]["pid"].as_u64().context("pid")?,
            pair[0]["epoch"].as_u64().context("epoch")?,
        );
        eventually(WITHIN, "the worker is ready", || async {
            let nodes = cli.run(&["nodes"]).await?;
            ensure!(
                nodes.contains(&worker) && nodes.contains("ready"),
                "{nodes}"
            );
            Ok(())
        })
        .await?;
        let submit = || async { cli.submit_long_running().await };
        let runs = |id: String| {
            let cli = &cli;
            async move {
                eventually(WITHIN, "the task shows running", || async {
                    let status = cli.run(&["status", &id, "-o", "json"]).await?;
                    let t: Value = serde_json::from_str(&status)?;
                    ensure!(t["state"] == "running", "{status}");
                    Ok(())
                })
                .await
            }
        };
        let before = submit().await?;
        runs(before.clone()).await?;

        std::process::Command::new("kill")
            .args(["-KILL", &leader_pid.to_string()])
            .status()?;
        let after = eventually(WITHIN, "the standby leads", || async {
            let m = managers().await?;
            ensure!(
                m.first()
                    .is_some_and(|l| l["role"] == "leader" && l["pid"] != leader_pid),
                "{m:?}"
            );
            Ok(m)
        })
        .await?;
        let new_epoch = after[0]["epoch"].as_u64().context("epoch")?;
        ensure!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
        let later = submit().await?;
        runs(later).await?;
        runs(before).await?;
        // The killed manager is started again, as a standby.
        eventually(
            WITHIN,
            "the killed manager comes back as a standby",
            || async {
                let m = managers().await?;
                ensure!(
                    m.len() == 2 && m[1]["role"] == "standby" && m[1]["pid"] != leader_pid,
                    "{m:?}"
                );
                Ok(())
            },
        )
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = outcome {
        let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
        anyhow::bail!("{e:#}\n\ncube dev --ha's log:\n{log}");
    }

    let status = terminate(&mut dev, "cube dev --ha").await?;
    assert!(status.success(), "cube dev --ha exited with {status}");
    // Every nats-server went with it, and the managers and the worker too.
    for p in (port..port + 3).chain(route_port..route_port + 3) {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", p))
                .await
                .is_err(),
            "port {p} still listened on"
        );
    }
    let left = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("--name {worker}")])
        .output()?;
    assert!(left.stdout.is_empty(), "the worker is still running");
    Ok(())
}

struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        cube_tests::remove_containers(&format!("{LABEL_WORKER}={}", self.0));
    }
}

/// `cube` as a user of a `cube dev` cluster runs it: against `url`, with the client's
/// credentials that `cube dev` leaves in its data directory.
struct DevCli {
    url: String,
    user: String,
    password: String,
}

impl DevCli {
    /// Waits until `cube dev` has written the client's credentials into `dir`.
    async fn of(dir: &std::path::Path, url: &str) -> anyhow::Result<DevCli> {
        let (user, password) = eventually(
            WITHIN,
            "cube dev writes the client's credentials",
            || async {
                let text = std::fs::read_to_string(dir.join("client.auth"))?;
                let (user, password) = text
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("{text}"))?;
                Ok((user.to_string(), password.to_string()))
            },
        )
        .await?;
        Ok(DevCli {
            url: url.to_string(),
            user,
            password,
        })
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let env = [
            ("CUBE_NATS_USER", self.user.as_str()),
            ("CUBE_NATS_PASSWORD", self.password.as_str()),
        ];
        cube_with_env(&self.url, &env, args).await
    }

    /// Submits a long-running task; its id.
    async fn submit_long_running(&self) -> anyhow::Result<String> {
        let mut args = vec![
            "submit".to_string(),
            "--image".into(),
            IMAGE.into(),
            "--".into(),
        ];
        args.extend(long_running());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.run(&args).await?.trim().to_string())
    }
}

/// Sends `what` SIGTERM and waits for it to exit (failing if it does not within [`WITHIN`]).
async fn terminate(
    dev: &mut tokio::process::Child,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let pid = dev.id().expect("running") as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    tokio::time::timeout(WITHIN, dev.wait())
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not exit on SIGTERM (likely deadlocked)"))?
        .map_err(Into::into)
}
