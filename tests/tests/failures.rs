//! Failure handling against real nats-server and Docker: dead and returning workers, restart
//! policies with backoff, health checks, drain. Heartbeat intervals and TTLs are shortened by
//! configuration, never by sleeping long.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use bollard::models::ContainerSummaryStateEnum;
use cube_shared::subjects::JOURNAL_ALL;
use cube_shared::{
    JournalEntry, NodeState, RestartPolicy, State, Task, LABEL_TASK_ID, LABEL_WORKER,
};
use cube_tests::procs::ProcCluster;
use cube_tests::{consistently, cube, eventually, task, Cluster, WITHIN};
use futures::StreamExt;
use uuid::Uuid;

fn service() -> Task {
    let mut t = cube_tests::sleeper();
    t.restart_policy = RestartPolicy::OnFailure;
    t
}

/// Running containers per task id, as Docker lists them, with the worker label of each.
async fn running_copies(
    docker: &cube_worker::runtime::DockerRuntime,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<String>>> {
    let mut out = HashMap::new();
    for id in ids {
        let copies = cube_tests::containers(docker, LABEL_TASK_ID, &id.to_string())
            .await?
            .into_iter()
            .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
            .map(|c| {
                c.labels
                    .unwrap_or_default()
                    .get(LABEL_WORKER)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        out.insert(*id, copies);
    }
    Ok(out)
}

/// Waits until every task runs on `worker` in exactly one container, and none runs elsewhere.
async fn one_copy_each_on(
    docker: &cube_worker::runtime::DockerRuntime,
    ids: &[Uuid],
    worker: &str,
) -> Result<()> {
    eventually(
        WITHIN,
        &format!("exactly one running copy of each task, on {worker}"),
        || only_on(docker, ids, worker),
    )
    .await
}

/// Whether every task runs on `worker` in exactly one container, and none runs elsewhere.
async fn only_on(
    docker: &cube_worker::runtime::DockerRuntime,
    ids: &[Uuid],
    worker: &str,
) -> Result<()> {
    let copies = running_copies(docker, ids).await?;
    for (id, on) in &copies {
        ensure!(
            on.len() == 1 && on[0] == worker,
            "task {id}: running on {on:?}"
        );
    }
    Ok(())
}

/// Waits until the Task DB says the task runs on `worker`.
async fn running_on(c: &ProcCluster, id: Uuid, worker: &str) -> Result<Task> {
    eventually(WITHIN, &format!("task {id} runs on {worker}"), || async {
        let t = c.task(id).await?;
        ensure!(
            t.state == State::Running && t.worker.as_deref() == Some(worker),
            "{} on {:?}",
            t.state,
            t.worker
        );
        Ok(t)
    })
    .await
}

async fn node_state(client: &async_nats::Client, name: &str) -> Result<NodeState> {
    let nodes: Vec<cube_shared::Node> =
        cube_tests::api(client, cube_shared::subjects::API_NODES_LIST, &()).await?;
    nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.state)
        .ok_or_else(|| anyhow::anyhow!("{name} is not listed"))
}

/// A worker SIGKILLed while running 10 `on-failure` tasks is `down` within TTL + grace, its
/// tasks run on the other worker, and once it is started again there is still exactly one
/// container per task across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_tasks_move_and_its_return_leaves_one_copy() -> Result<()> {
    let mut c = ProcCluster::new().await?;
    c.manager_args = ["--node-ttl", "2s", "--node-grace", "1s"]
        .map(String::from)
        .to_vec();
    c.start_manager().await?;
    let doomed = c.add_worker().await?;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(c.submit(service()).await?);
    }
    for id in &ids {
        let t = c.wait_state(*id, State::Running, WITHIN).await?;
        assert_eq!(t.worker.as_deref(), Some(doomed.as_str()));
    }
    let survivor = c.add_worker().await?;

    c.kill_worker(&doomed).await?;
    let killed = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "the dead worker is down",
        || async {
            ensure!(
                node_state(&c.client, &doomed).await? == NodeState::Down,
                "not yet"
            );
            Ok(())
        },
    )
    .await?;
    // TTL 2 s + grace 1 s, judged on a 1 s tick, and the 500 ms heartbeat it last sent.
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "down after {:?}",
        killed.elapsed()
    );
    for id in &ids {
        let t = running_on(&c, *id, &survivor).await?;
        assert_eq!(t.restart_count, 1);
    }
    // The dead worker's containers outlive it (SIGKILL), so right now each task has two.
    c.start_worker(&doomed).await?;
    one_copy_each_on(&c.docker, &ids, &survivor).await?;
    // And it stays that way: nothing restarts the stale copies.
    consistently(
        Duration::from_secs(2),
        &format!("exactly one running copy of each task, on {survivor}"),
        || only_on(&c.docker, &ids, &survivor),
    )
    .await?;
    Ok(())
}

/// A worker cut off (SIGSTOP) long enough to be declared down comes back (SIGCONT) still
/// running its containers: the manager, reading its heartbeat, has it stop the stale copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_worker_stops_copies_it_no_longer_owns() -> Result<()> {
    let mut c = ProcCluster::new().await?;
    c.manager_args = ["--node-ttl", "2s", "--node-grace", "1s"]
        .map(String::from)
        .to_vec();
    c.start_manager().await?;
    let away = c.add_worker().await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(c.submit(service()).await?);
    }
    for id in &ids {
        c.wait_state(*id, State::Running, WITHIN).await?;
    }
    let other = c.add_worker().await?;
    c.signal_worker(&away, "STOP")?;
    for id in &ids {
        running_on(&c, *id, &other).await?;
    }
    c.signal_worker(&away, "CONT")?;
    one_copy_each_on(&c.docker, &ids, &other).await?;
    eventually(WITHIN, "the returned worker is ready again", || async {
        ensure!(
            node_state(&c.client, &away).await? == NodeState::Ready,
            "not yet"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// The journal, as it is published.
async fn journal(client: &async_nats::Client) -> Result<async_nats::Subscriber> {
    let sub = client.subscribe(JOURNAL_ALL).await?;
    client.flush().await?;
    Ok(sub)
}

async fn entries_until(
    sub: &mut async_nats::Subscriber,
    within: Duration,
    mut done: impl FnMut(&[JournalEntry]) -> bool,
) -> Result<Vec<JournalEntry>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&seen) {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .map_err(|_| anyhow::anyhow!("journal so far: {seen:#?}"))?
            .expect("subscribed");
        seen.push(serde_json::from_slice(&msg.payload)?);
    }
    Ok(seen)
}

/// `on-failure` end to end: a container that exits 1 is restarted on Docker, then the task
/// stays `failed` once its one restart is spent. (The backoff's timing and the giving up after
/// several attempts are rules, tested in milliseconds in `manager/src/rules/tests/`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_then_gives_up() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let mut sub = journal(&cluster.client).await?;
    let mut t = task(&["sh", "-c", "exit 1"]);
    t.restart_policy = RestartPolicy::OnFailure;
    t.max_restarts = Some(1);
    let id = cluster.submit(t).await?;

    let mine = |e: &JournalEntry| e.task_id == Some(id);
    let seen = entries_until(&mut sub, Duration::from_secs(30), |seen| {
        seen.iter()
            .filter(|e| mine(e) && e.kind == "failed")
            .count()
            == 2
    })
    .await?;
    let kinds: Vec<&str> = seen
        .iter()
        .filter(|e| mine(e) && matches!(e.kind.as_str(), "failed" | "restarted" | "running"))
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["running", "failed", "restarted", "running", "failed"],
        "{seen:#?}"
    );
    let last = seen
        .iter()
        .rev()
        .find(|e| mine(e) && e.kind == "failed")
        .expect("seen");
    assert_eq!(last.message, "exited with code 1", "{last:?}");

    let t = cluster.task(id).await?;
    assert_eq!(
        (t.state, t.restart_count, t.exit_code, t.next_attempt_at),
        (State::Failed, 1, Some(1), None)
    );
    let detail = cube(&cluster.nats.url(), &["status", &id.to_string()]).await?;
    assert!(detail.contains("1 of 1"), "{detail}");
    Ok(())
}

/// A busybox httpd whose health endpoint starts failing is restarted; the new copy is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_task_is_restarted() -> Result<()> {
    // The port is published on the loopback only, which the worker must allow.
    let cluster = Cluster::start_allowing_loopback_ports().await?;
    let mut sub = journal(&cluster.client).await?;
    let port = cube_tests::free_port()?;
    let mut t = task(&[
        "sh",
        "-c",
        // Healthy at first; each copy breaks its health endpoint after 2 s (the test
        // follows the first copy to its restart and the second copy until it is healthy).
        "mkdir -p /www; echo ok > /www/health; (sleep 2; rm /www/health) & \
         exec httpd -f -p 8080 -h /www",
    ]);
    t.restart_policy = RestartPolicy::OnFailure;
    t.exposed_ports = vec!["8080/tcp".into()];
    t.port_bindings
        .insert("8080/tcp".into(), format!("127.0.0.1:{port}"));
    t.health_check = Some("/health".into());
    t.health_interval = Some(Duration::from_millis(300));
    t.health_retries = Some(2);
    t.health_grace = Some(Duration::from_secs(10));
    let id = cluster.submit(t).await?;

    let mine = |e: &JournalEntry| e.task_id == Some(id);
    let seen = entries_until(&mut sub, WITHIN, |seen| {
        seen.iter()
            .filter(|e| mine(e) && e.kind == "healthy")
            .count()
            == 2
    })
    .await?;
    let kinds: Vec<&str> = seen
        .iter()
        .filter(|e| mine(e))
        .map(|e| e.kind.as_str())
        .collect();
    let pos = |k: &str| kinds.iter().position(|x| *x == k);
    let (unhealthy, failed, restarted) = (pos("unhealthy"), pos("failed"), pos("restarted"));
    assert!(
        matches!((pos("healthy"), unhealthy, failed, restarted), (Some(a), Some(b), Some(c), Some(d)) if a < b && b < c && c < d),
        "expected healthy, unhealthy, failed, restarted, healthy: {kinds:?}"
    );
    let t = cluster.task(id).await?;
    assert_eq!(t.state, State::Running);
    assert_eq!(t.restart_count, 1);
    assert_eq!(t.health, Some(cube_shared::Health::Healthy));
    assert_eq!(
        cluster
            .containers(LABEL_TASK_ID, &id.to_string())
            .await?
            .len(),
        1
    );
    Ok(())
}

/// Drain moves every task off a worker, each new copy running before the old one stops:
/// at no moment does a task have zero running copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_tasks_without_a_gap() -> Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let drained = cluster.worker_names[0].clone();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(cluster.submit(service()).await?);
    }
    for id in &ids {
        cluster.wait_state(*id, State::Running, WITHIN).await?;
    }
    let target = cluster.add_worker(|_| {}).await?;

    // Watch Docker every 50 ms from before the drain until it is over: the fewest running
    // copies seen of each task.
    let watching = tokio_util::sync::CancellationToken::new();
    let (first_look, looked) = tokio::sync::oneshot::channel();
    let watcher = {
        let (docker, ids, stop) = (cluster.docker.clone(), ids.clone(), watching.clone());
        tokio::spawn(async move {
            let mut fewest: HashMap<Uuid, usize> = HashMap::new();
            let mut first_look = Some(first_look);
            while !stop.is_cancelled() {
                let copies = running_copies(&docker, &ids).await?;
                for (id, on) in copies {
                    let f = fewest.entry(id).or_insert(on.len());
                    *f = (*f).min(on.len());
                }
                if let Some(tx) = first_look.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(fewest)
        })
    };
    if looked.await.is_err() {
        watcher.await??;
        anyhow::bail!("the watcher ended before its first look");
    }
    let url = cluster.nats.url();
    let out = cube(&url, &["nodes", "drain", &drained]).await?;
    assert!(out.contains("draining"), "{out}");
    let nodes = cube(&url, &["nodes"]).await?;
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(drained.as_str()) && l.contains("draining")),
        "{nodes}"
    );

    one_copy_each_on(&cluster.docker, &ids, &target).await?;
    for id in &ids {
        let t = cluster.task(*id).await?;
        assert_eq!(
            (t.state, t.worker.as_deref()),
            (State::Running, Some(target.as_str()))
        );
        assert_eq!(t.previous, None);
    }
    watching.cancel();
    let fewest = watcher.await??;
    for id in &ids {
        let n = fewest[id];
        assert!(n >= 1, "task {id} had {n} running copies at some moment");
    }

    // A drained node takes no new work; undrained, it does again.
    let t = cluster.submit(service()).await?;
    let placed = cluster.wait_state(t, State::Running, WITHIN).await?;
    assert_eq!(placed.worker.as_deref(), Some(target.as_str()));
    let out = cube(&url, &["nodes", "undrain", &drained]).await?;
    assert!(out.contains("ready"), "{out}");
    Ok(())
}
