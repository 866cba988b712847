//! The worker's task policy, against the real Docker engine: what would hand a task the host
//! is refused with its reason and starts no container; what is allowed is fenced in.

use std::time::Duration;

use anyhow::Result;
use cube_shared::{State, LABEL_TASK_ID};
use cube_tests::{task, Cluster};

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

/// A fork bomb is held by the pids limit; the worker keeps serving, and every container runs
/// with `no-new-privileges` and the default memory limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let bomb = cluster
        .submit(task(&["sh", "-c", "b(){ b|b& }; b; sleep 300"]))
        .await?;
    cluster.wait_state(bomb, State::Running, WITHIN).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let name = cube_shared::container_name(bomb, 1);
    let inspect = cluster
        .docker
        .client()
        .inspect_container(&name, None)
        .await?;
    let host = inspect.host_config.unwrap_or_default();
    assert_eq!(host.pids_limit, Some(512));
    assert_eq!(host.memory, Some(512 << 20));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    let stats = cluster.docker.client().stats(
        &name,
        Some(
            bollard::query_parameters::StatsOptionsBuilder::default()
                .stream(false)
                .build(),
        ),
    );
    use futures::StreamExt;
    let pids = Box::pin(stats)
        .next()
        .await
        .and_then(|s| s.ok())
        .and_then(|s| s.pids_stats)
        .and_then(|p| p.current);
    assert!(pids.is_some_and(|n| n <= 512), "pids {pids:?}");

    // The worker still serves.
    let t = cube_tests::sleeper();
    let other = cluster.submit(t).await?;
    cluster.wait_state(other, State::Running, WITHIN).await?;
    cluster.stop(bomb).await?;
    cluster.wait_state(bomb, State::Completed, WITHIN).await?;
    Ok(())
}
