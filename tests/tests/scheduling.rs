//! Placement end to end: constraints, the distribution each algorithm produces, and the
//! shared queue, with real workers and containers.

use std::collections::HashMap;

use anyhow::Result;
use cube_shared::{State, Task};
use cube_tests::{Cluster, WITHIN};

const MIB: u64 = 1 << 20;

fn service(memory: u64) -> Task {
    let mut t = cube_tests::sleeper();
    t.memory = memory;
    t
}

async fn cluster_with(scheduler: &str) -> Result<Cluster> {
    let mut cluster = Cluster::empty().await?;
    cluster.start_manager(cube_manager::Config {
        scheduler: scheduler.to_string(),
        ..Default::default()
    });
    Ok(cluster)
}

/// Submits `tasks`, waits until all run, and counts them per worker.
async fn run_all(cluster: &Cluster, tasks: Vec<Task>) -> Result<HashMap<String, usize>> {
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(cluster.submit(t).await?);
    }
    let mut per_worker = HashMap::new();
    for id in ids {
        let t = cluster.wait_state(id, State::Running, WITHIN).await?;
        *per_worker.entry(t.worker.unwrap()).or_default() += 1;
    }
    Ok(per_worker)
}

fn sorted_counts(per_worker: &HashMap<String, usize>, workers: &[String]) -> Vec<usize> {
    let mut counts: Vec<usize> = workers
        .iter()
        .map(|w| per_worker.get(w).copied().unwrap_or(0))
        .collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_tasks_land_only_where_they_may() -> Result<()> {
    let mut cluster = cluster_with("spread").await?;
    let eu = cluster
        .add_worker(|c| {
            c.labels.insert("zone".into(), "eu".into());
        })
        .await?;
    let us = cluster
        .add_worker(|c| {
            c.labels.insert("zone".into(), "us".into());
        })
        .await?;
    let mut tasks = Vec::new();
    for constraint in ["zone=eu", "zone=eu", "zone=eu", "zone!=eu", "zone!=eu"] {
        let mut t = service(0);
        t.constraints = vec![constraint.to_string()];
        tasks.push(t);
    }
    let per_worker = run_all(&cluster, tasks).await?;
    assert_eq!(per_worker.get(&eu), Some(&3), "{per_worker:?}");
    assert_eq!(per_worker.get(&us), Some(&2), "{per_worker:?}");

    // A constraint nobody satisfies waits, and says so.
    let mut t = service(0);
    t.constraints = vec!["zone=ap".into()];
    let id = cluster.submit(t).await?;
    let reason = cube_tests::eventually(WITHIN, "the task says why it waits", || async {
        let t = cluster.task(id).await?;
        anyhow::ensure!(
            t.state == State::Pending && t.error.is_some(),
            "{}",
            t.state
        );
        Ok(t.error.unwrap())
    })
    .await?;
    assert!(
        reason.contains("0/2 nodes available: 2 constraint zone=ap"),
        "{reason}"
    );
    Ok(())
}

/// Three workers offering 256 MiB each, ten tasks of 64 MiB: `binpack` fills nodes one by
/// one (4, 4, 2), `spread` evens them out (4, 3, 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_and_spread_distribute_ten_tasks_as_expected() -> Result<()> {
    for (scheduler, expected) in [("binpack", vec![4, 4, 2]), ("spread", vec![4, 3, 3])] {
        let mut cluster = cluster_with(scheduler).await?;
        for _ in 0..3 {
            cluster.add_worker(|c| c.memory = Some(256 * MIB)).await?;
        }
        let per_worker = run_all(&cluster, (0..10).map(|_| service(64 * MIB)).collect()).await?;
        assert_eq!(
            sorted_counts(&per_worker, &cluster.worker_names),
            expected,
            "{scheduler}: {per_worker:?}"
        );
    }
    Ok(())
}

/// With `queue`, work goes to the shared `tasks.pending` subject; a worker without room
/// leaves a task to one with room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_queue_feeds_workers_with_room() -> Result<()> {
    let mut cluster = cluster_with("queue").await?;
    let small = cluster.add_worker(|c| c.memory = Some(128 * MIB)).await?;
    let big = cluster.add_worker(|c| c.memory = Some(1024 * MIB)).await?;
    let per_worker = run_all(&cluster, (0..6).map(|_| service(100 * MIB)).collect()).await?;
    assert!(
        per_worker.get(&small).copied().unwrap_or(0) <= 1,
        "{per_worker:?}"
    );
    assert_eq!(per_worker.values().sum::<usize>(), 6);
    // Only the big worker can hold this one.
    let id = cluster.submit(service(300 * MIB)).await?;
    let t = cluster.wait_state(id, State::Running, WITHIN).await?;
    assert_eq!(t.worker.as_deref(), Some(big.as_str()));
    // Stop works for a task placed through the queue.
    cluster.stop(id).await?;
    cluster.wait_state(id, State::Completed, WITHIN).await?;
    Ok(())
}
