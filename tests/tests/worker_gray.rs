//! Gray failures seen from a worker (issue 15), against real nats-server and Docker, with the
//! worker as a `cube worker` child process: it ends promptly on SIGTERM while NATS is gone
//! and leaves its containers running, and stale containers of its name never delay its
//! readiness. Counts come from Docker, not from Cube.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bollard::models::ContainerSummaryStateEnum;
use cube_shared::{State, LABEL_WORKER};
use cube_tests::procs::ProcCluster;
use cube_tests::{eventually, remove_containers, unique, WITHIN};
use cube_worker::runtime::Runtime;

/// Containers labelled for `worker`, as Docker lists them: (running, all).
async fn count(cluster: &ProcCluster, worker: &str) -> Result<(usize, usize)> {
    let all = cluster.containers(LABEL_WORKER, worker).await?;
    let running = all
        .iter()
        .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
        .count();
    Ok((running, all.len()))
}

/// SIGTERM to a worker while nats-server is down: it exits within 10 s, and both of its
/// containers still run (for the next worker of its name to adopt). Before the fix it ran on
/// for minutes, through a second SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nats_down_ends_the_worker_and_leaves_its_containers() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = sigterm_with_nats_down(&mut c).await;
    c.explain(result)
}

async fn sigterm_with_nats_down(c: &mut ProcCluster) -> Result<()> {
    let worker = c.worker_names()[0].clone();
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(c.submit(cube_tests::sleeper()).await?);
    }
    c.wait_all(&ids, State::Running, WITHIN).await?;
    ensure!(count(c, &worker).await?.0 == 2, "two containers run");

    c.nats.kill();
    // A few heartbeats fail meanwhile: nothing is stopped because NATS is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (running, _) = count(c, &worker).await?;
    ensure!(
        running == 2,
        "{running} of 2 containers run while NATS is down"
    );

    let asked = Instant::now();
    // Fails (and kills it) if it has not exited within 10 s.
    let status = c.term_worker(&worker).await?;
    eprintln!(
        "the worker exited {status} {:?} after SIGTERM",
        asked.elapsed()
    );
    let (running, all) = count(c, &worker).await?;
    ensure!(
        running == 2 && all == 2,
        "after the worker left, {running} of its {all} containers run (want 2 of 2)"
    );
    Ok(())
}

/// A worker that starts with ten stale containers of its name (of tasks the Task DB does not
/// give it) is ready (listed `ready` by the manager) well before it could have stopped them
/// one at a time, and removes all ten in the background. Before the fix it stopped them one
/// at a time before its first heartbeat (95 s for ten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_containers_never_delay_readiness() -> Result<()> {
    let mut c = ProcCluster::new().await?;
    c.start_manager().await?;
    let name = unique("w");
    // Removed whatever happens, even if the worker never starts.
    let _sweep = Sweep(format!("{LABEL_WORKER}={name}"));
    let result = stale_containers(&mut c, &name).await;
    c.explain(result)
}

struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        remove_containers(&self.0);
    }
}

async fn stale_containers(c: &mut ProcCluster, name: &str) -> Result<()> {
    const STALE: usize = 10;
    for _ in 0..STALE {
        // Busybox `sleep` as PID 1 ignores SIGTERM: each stop waits out the grace period,
        // as the containers of a real workload often do.
        let mut t = cube_tests::task(&["sleep", "600"]);
        t.generation = 1;
        c.docker
            .start(&t, name)
            .await
            .context("creating a stale container")?;
    }
    ensure!(
        count(c, name).await?.0 == STALE,
        "{STALE} stale containers run"
    );

    let began = Instant::now();
    // Waits until the worker heartbeats and the manager lists it ready (bounded there by
    // 30 s).
    c.start_worker(name).await?;
    let ready = began.elapsed();
    eprintln!("ready after {ready:?}");
    ensure!(
        ready < Duration::from_secs(20),
        "the worker took {ready:?} to be ready with {STALE} stale containers"
    );
    eventually(WITHIN, "every stale container is removed", || async {
        let (_, all) = count(c, name).await?;
        ensure!(all == 0, "{all} of {STALE} remain");
        Ok(())
    })
    .await
}
