//! The worker's task policy, against the real Docker engine: what would hand a task the host
//! is refused with its reason and starts no container; what is allowed is fenced in.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bollard::query_parameters::StatsOptionsBuilder;
use bollard::Docker;
use cube_shared::{State, LABEL_TASK_ID};
use cube_tests::{task, Cluster};
use cube_worker::policy::Limits;
use futures::StreamExt;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_would_own_the_host_are_refused() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let mut cases = Vec::new();
    let mut t = task(&["true"]);
    t.privileged = true;
    cases.push((t, "privileged mode"));
    let mut t = task(&["true"]);
    t.mounts = vec!["/var/run/docker.sock:/var/run/docker.sock".into()];
    cases.push((t, "Docker socket"));
    let mut t = task(&["true"]);
    t.network_mode = Some("host".into());
    cases.push((t, "host network"));
    let mut t = task(&["true"]);
    t.mounts = vec!["/etc:/host-etc:ro".into()];
    cases.push((t, "host path /etc"));
    let mut t = task(&["true"]);
    t.cap_add = vec!["SYS_ADMIN".into()];
    cases.push((t, "capabilities"));
    for (t, why) in cases {
        let id = cluster.submit(t).await?;
        let failed = cluster.wait_state(id, State::Failed, WITHIN).await?;
        let error = failed.error.unwrap_or_default();
        assert!(
            error.contains(why) && error.contains("not allowed"),
            "{why}: {error}"
        );
        assert!(cluster
            .containers(LABEL_TASK_ID, &id.to_string())
            .await?
            .is_empty());
    }
    Ok(())
}

/// A fork bomb fills its container's pids limit and is held there, while the worker keeps
/// serving. The kernel's count shows the bomb really went off (a bomb that failed to fork
/// would stay far below the ceiling). That every container gets the limit, `no-new-privileges`
/// and the default memory limit is the container spec's unit tests' (`runtime/docker/spec.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained() -> Result<()> {
    let limit = Limits::default().pids_limit as u64;
    let cluster = Cluster::start(1).await?;
    let bomb = cluster
        .submit(task(&["sh", "-c", "b(){ b|b& }; b; sleep 300"]))
        .await?;
    cluster.wait_state(bomb, State::Running, WITHIN).await?;
    let name = cube_shared::container_name(bomb, 1);
    let docker = cluster.docker.client();

    // Every sample is within the limit; the bomb reaches it (within a few processes: some
    // die after a failed fork while others take their place).
    let deadline = Instant::now() + WITHIN;
    let mut samples = Vec::new();
    loop {
        let current = pids(docker, &name, limit).await?;
        samples.push(current);
        if current >= limit - 12 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the bomb never reached the pids limit of {limit}: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The worker still serves, with the bomb at the ceiling; the bomb stays held.
    let other = cluster.submit(cube_tests::sleeper()).await?;
    cluster.wait_state(other, State::Running, WITHIN).await?;
    for _ in 0..5 {
        pids(docker, &name, limit).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        cluster.task(bomb).await?.state == State::Running,
        "the bomb's container no longer runs"
    );
    cluster.stop(bomb).await?;
    cluster.wait_state(bomb, State::Completed, WITHIN).await?;
    Ok(())
}

/// How many processes the container `name` has, as the kernel counts them, checking that its
/// cgroup's ceiling is `limit` and that the count is within it.
async fn pids(docker: &Docker, name: &str, limit: u64) -> Result<u64> {
    let options = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(true)
        .build();
    let stats = Box::pin(docker.stats(name, Some(options)))
        .next()
        .await
        .context("no stats")??;
    let pids = stats.pids_stats.context("no pids in the stats")?;
    ensure!(pids.limit == Some(limit), "the pids ceiling: {pids:?}");
    let current = pids.current.context("no pids count")?;
    ensure!(
        current <= limit,
        "{current} processes, over the limit of {limit}"
    );
    Ok(current)
}
