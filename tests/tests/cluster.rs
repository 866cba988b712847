//! Several workers, discovered from their heartbeats, and `cube dev` as a user starts it.

use std::collections::HashMap;
use std::process::Stdio;

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
    let worker = unique("dev");
    let _cleanup = RemoveOnDrop(worker.clone());
    let mut dev = tokio::process::Command::new(cube_bin())
        .args([
            "dev",
            "--port",
            &port.to_string(),
            "--worker-name",
            &worker,
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("nats://127.0.0.1:{port}");
    // `cube dev` runs NATS with authentication and leaves the client's password here.
    let auth = eventually(
        WITHIN,
        "cube dev writes the client's credentials",
        || async {
            let text = std::fs::read_to_string(dir.path().join("client.auth"))?;
            let (user, password) = text
                .trim()
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("{text}"))?;
            Ok((user.to_string(), password.to_string()))
        },
    )
    .await?;
    let env = [
        ("CUBE_NATS_USER", auth.0.as_str()),
        ("CUBE_NATS_PASSWORD", auth.1.as_str()),
    ];
    let cube = |args: Vec<String>| {
        let url = url.clone();
        let env = env.map(|(k, v)| (k, v.to_string()));
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cube_with_env(&url, &env, &args).await
        }
    };
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Without them, NATS turns the client away.
    let refused = cube_tests::cube(&url, &["nodes"]).await.unwrap_err();
    assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
    eventually(WITHIN, "cube dev's worker is ready", || async {
        let nodes = cube(strings(&["nodes"])).await?;
        anyhow::ensure!(
            nodes.contains(&worker) && nodes.contains("ready"),
            "{nodes}"
        );
        Ok(())
    })
    .await?;

    let mut args = strings(&["submit", "--image", IMAGE, "--"]);
    args.extend(long_running());
    let id = cube(args).await?.trim().to_string();
    eventually(WITHIN, "the task shows running", || async {
        let status = cube(strings(&["status"])).await?;
        let row = status
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(row.contains("running"), "{status}");
        Ok(())
    })
    .await?;

    let pid = dev.id().expect("running") as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(WITHIN, dev.wait())
        .await
        .map_err(|_| anyhow::anyhow!("cube dev did not exit on SIGTERM (likely deadlocked)"))??;
    assert!(status.success(), "cube dev exited with {status}");
    // nats-server went with it.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    Ok(())
}

struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        cube_tests::remove_containers(&format!("{LABEL_WORKER}={}", self.0));
    }
}
