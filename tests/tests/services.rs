//! Services end to end: a real nats-server, `cube manager` and `cube worker` processes and the
//! real Docker engine. What runs is counted from Docker (containers labelled
//! `cube.service=<name>`), not from what Cube says.
//!
//! A service of 3 on 3 workers runs one copy per worker; a copy `docker kill`ed is back within
//! seconds; a SIGKILLed worker's copy runs elsewhere; scaling; a rolling update that never
//! drops below `count - 1` healthy copies; an update that never turns healthy reverts by
//! itself while the old copies keep serving; a system service that follows the nodes; a batch
//! job that completes 5 times; a rollout that survives two SIGKILLs of the manager;
//! discovery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bollard::models::ContainerSummary;
use cube_shared::{
    RolloutState, ServiceEvent, ServiceKind, ServiceSpec, ServiceStatus, UpdatePolicy,
    LABEL_SERVICE, LABEL_SERVICE_VERSION, LABEL_WORKER,
};
use cube_tests::procs::ProcCluster;
use cube_tests::{eventually, long_running, sleeper, task, unique};

/// Long enough for Docker to start a few containers on a loaded machine.
const WITHIN: Duration = Duration::from_secs(60);

/// A service of `count` copies that run until stopped, healthy once their check passes.
fn spec(name: &str, count: u32) -> ServiceSpec {
    let mut template = sleeper();
    template.health_check = Some("test -f /tmp/ready".into());
    template.health_interval = Some(Duration::from_millis(300));
    template.cmd = vec![
        "sh".into(),
        "-c".into(),
        "mkdir -p /tmp && touch /tmp/ready; trap 'exit 0' TERM; sleep 300 & wait".into(),
    ];
    ServiceSpec {
        name: name.into(),
        kind: ServiceKind::Service,
        count,
        template,
        update: UpdatePolicy {
            min_healthy_time: Some(Duration::from_secs(1)),
            healthy_deadline: Some(Duration::from_secs(30)),
            ..Default::default()
        },
        max_failures: None,
    }
}

/// The service's containers that Docker says are running.
async fn running(c: &ProcCluster, name: &str) -> Result<Vec<ContainerSummary>> {
    Ok(c.containers(LABEL_SERVICE, name)
        .await?
        .into_iter()
        .filter(|s| s.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running"))
        .collect())
}

fn label(s: &ContainerSummary, key: &str) -> String {
    s.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .cloned()
        .unwrap_or_default()
}

/// Running containers per worker.
fn per_worker(containers: &[ContainerSummary]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for s in containers {
        *by.entry(label(s, LABEL_WORKER)).or_default() += 1;
    }
    by
}

async fn status(c: &ProcCluster, name: &str) -> Result<ServiceStatus> {
    Ok(c.cube().service(name).await?)
}

/// Waits until Docker runs exactly `n` containers of the service and Cube agrees.
async fn wait_running(c: &ProcCluster, name: &str, n: usize) -> Result<Vec<ContainerSummary>> {
    eventually(WITHIN, &format!("{n} copies of {name} run"), || async {
        let running = running(c, name).await?;
        ensure!(running.len() == n, "Docker runs {}", running.len());
        let s = status(c, name).await?;
        ensure!(
            s.running as usize == n && s.healthy as usize == n,
            "Cube says {} running, {} healthy",
            s.running,
            s.healthy
        );
        Ok(running)
    })
    .await
}

async fn wait_rollout(c: &ProcCluster, name: &str, state: RolloutState) -> Result<ServiceStatus> {
    eventually(
        WITHIN,
        &format!("the rollout of {name} is {state}"),
        || async {
            let s = status(c, name).await?;
            let now = s.service.rollout.as_ref().map(|r| r.state);
            ensure!(now == Some(state), "it is {now:?}");
            Ok(s)
        },
    )
    .await
}

async fn deploy(c: &ProcCluster, spec: ServiceSpec) -> Result<()> {
    c.cube().deploy(spec).await?;
    Ok(())
}

/// Deploys `spec` and waits until its copies run and its rollout succeeded.
async fn rolled_out(c: &ProcCluster, spec: ServiceSpec) -> Result<Vec<ContainerSummary>> {
    let (name, count) = (spec.name.clone(), spec.count as usize);
    deploy(c, spec).await?;
    let copies = wait_running(c, &name, count).await?;
    wait_rollout(c, &name, RolloutState::Succeeded).await?;
    Ok(copies)
}

async fn publish(c: &ProcCluster, event: ServiceEvent) -> Result<()> {
    c.cube().publish_service(&event).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_spread_come_back_when_killed_and_follow_the_count() -> Result<()> {
    let c = ProcCluster::start(3).await?;
    let name = unique("web");
    deploy(&c, spec(&name, 3)).await?;
    let copies = wait_running(&c, &name, 3).await?;
    let spread = per_worker(&copies);
    assert_eq!(spread.len(), 3, "one copy per worker: {spread:?}");
    for s in &copies {
        assert_eq!(label(s, LABEL_SERVICE_VERSION), "1");
    }

    // `docker kill` one copy: back to three within seconds.
    let victim = copies[0].id.clone().context("a container id")?;
    let killed = tokio::time::Instant::now();
    let out = std::process::Command::new("docker")
        .args(["kill", &victim])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    eventually(WITHIN, "a copy replaces the killed one", || async {
        let running = running(&c, &name).await?;
        ensure!(
            running.len() == 3 && running.iter().all(|s| s.id.as_deref() != Some(&victim)),
            "{} running",
            running.len()
        );
        Ok(())
    })
    .await?;
    println!("a killed copy was replaced in {:?}", killed.elapsed());

    publish(&c, ServiceEvent::scale(&name, 5)).await?;
    let five = wait_running(&c, &name, 5).await?;
    let spread = per_worker(&five);
    assert!(
        spread.values().all(|&n| (1..=2).contains(&n)),
        "spread over the workers: {spread:?}"
    );
    publish(&c, ServiceEvent::scale(&name, 2)).await?;
    wait_running(&c, &name, 2).await?;

    publish(&c, ServiceEvent::remove(&name)).await?;
    eventually(WITHIN, "every copy stopped", || async {
        let n = running(&c, &name).await?.len();
        ensure!(n == 0, "{n} still run");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_copy_is_replaced_elsewhere() -> Result<()> {
    let mut c = ProcCluster::new().await?;
    c.manager_args = ["--node-ttl", "2s", "--node-grace", "1s"]
        .map(String::from)
        .to_vec();
    c.start_manager().await?;
    for _ in 0..3 {
        c.add_worker().await?;
    }
    let name = unique("web");
    deploy(&c, spec(&name, 3)).await?;
    let copies = wait_running(&c, &name, 3).await?;
    let doomed = label(&copies[0], LABEL_WORKER);
    c.kill_worker(&doomed).await?;
    let killed = tokio::time::Instant::now();
    // Its container runs on (Docker does not know the worker died); three copies run on the
    // other workers.
    let elsewhere = eventually(WITHIN, "three copies run on the live workers", || async {
        let running = running(&c, &name).await?;
        let live: Vec<_> = running
            .iter()
            .filter(|s| label(s, LABEL_WORKER) != doomed)
            .collect();
        ensure!(live.len() == 3, "{} on live workers", live.len());
        Ok(per_worker(&running))
    })
    .await?;
    println!(
        "replaced {:?} after the SIGKILL: {elsewhere:?}",
        killed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_all_but_one_copy_healthy() -> Result<()> {
    let c = ProcCluster::start(3).await?;
    let name = unique("web");
    let v1 = spec(&name, 3);
    rolled_out(&c, v1.clone()).await?;

    let mut v2 = v1.clone();
    v2.template.env = vec!["VERSION=2".into()];
    deploy(&c, v2).await?;
    // Every 50 ms until the rollout is over: never fewer than count - 1 healthy copies (as
    // Cube judges them) nor running containers (as Docker lists them), never more than
    // count + max_parallel containers.
    let began = tokio::time::Instant::now();
    let (mut fewest_healthy, mut fewest_running, mut most_running) = (u32::MAX, usize::MAX, 0);
    loop {
        ensure!(began.elapsed() < WITHIN, "the rollout did not end in time");
        let (s, docker) = tokio::try_join!(status(&c, &name), running(&c, &name))?;
        fewest_healthy = fewest_healthy.min(s.healthy);
        fewest_running = fewest_running.min(docker.len());
        most_running = most_running.max(docker.len());
        assert!(s.healthy >= 2, "{} healthy copies", s.healthy);
        assert!(docker.len() >= 2, "{} running containers", docker.len());
        assert!(docker.len() <= 4, "{} running containers", docker.len());
        let done = s.service.version == 2
            && s.service.rollout.as_ref().map(|r| r.state) == Some(RolloutState::Succeeded);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "rolled out in {:?}: fewest healthy {fewest_healthy}, running {fewest_running}..={most_running}",
        began.elapsed()
    );
    let now = wait_running(&c, &name, 3).await?;
    assert!(now.iter().all(|s| label(s, LABEL_SERVICE_VERSION) == "2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_never_turns_healthy_reverts_while_the_old_copies_serve() -> Result<()> {
    let c = ProcCluster::start(3).await?;
    let name = unique("web");
    let mut v1 = spec(&name, 3);
    v1.update.healthy_deadline = Some(Duration::from_secs(8));
    let old = rolled_out(&c, v1.clone()).await?;
    let old_ids: BTreeSet<String> = old.iter().filter_map(|s| s.id.clone()).collect();

    let mut v2 = v1.clone();
    v2.template.health_check = Some("false".into());
    deploy(&c, v2).await?;
    let began = tokio::time::Instant::now();
    loop {
        ensure!(began.elapsed() < WITHIN, "it did not revert in time");
        let (s, docker) = tokio::try_join!(status(&c, &name), running(&c, &name))?;
        let ids: BTreeSet<String> = docker.iter().filter_map(|s| s.id.clone()).collect();
        assert!(
            old_ids.is_subset(&ids),
            "an old copy stopped during the failed rollout"
        );
        // Version 1's own finished rollout looks the same until the manager has taken the
        // deploy of version 2 in.
        let reverted = s.service.version_of(2).is_some()
            && s.service.version == 1
            && s.service.rollout.as_ref().map(|r| r.state) == Some(RolloutState::Succeeded)
            && docker.len() == 3;
        if reverted {
            let failed = s.service.version_of(2).context("version 2 is kept")?;
            assert!(failed.failed);
            let why = s
                .service
                .rollout
                .and_then(|r| r.message)
                .unwrap_or_default();
            assert!(why.contains("reverted from version 2"), "{why}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("reverted {:?} after the deploy", began.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_service_runs_on_every_node_including_one_that_joins() -> Result<()> {
    let mut c = ProcCluster::start(3).await?;
    let name = unique("agent");
    let mut s = spec(&name, 0);
    s.kind = ServiceKind::System;
    deploy(&c, s).await?;
    let copies = wait_running(&c, &name, 3).await?;
    assert_eq!(per_worker(&copies).len(), 3);
    let fourth = c.add_worker().await?;
    let copies = wait_running(&c, &name, 4).await?;
    let spread = per_worker(&copies);
    assert_eq!(spread.get(&fourth), Some(&1), "{spread:?}");
    assert!(spread.values().all(|&n| n == 1), "{spread:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_completes_five_times() -> Result<()> {
    let c = ProcCluster::start(2).await?;
    let name = unique("job");
    let mut s = spec(&name, 5);
    s.kind = ServiceKind::Batch;
    s.template = task(&["sh", "-c", "sleep 1; exit 0"]);
    deploy(&c, s).await?;
    let done = eventually(WITHIN, "the job completes", || async {
        let s = status(&c, &name).await?;
        ensure!(s.service.finished.is_some(), "{} completed", s.completed);
        Ok(s)
    })
    .await?;
    assert_eq!(done.completed, 5);
    assert!(done.service.finished.unwrap().starts_with("completed"));
    // Docker created one container per completion, no more.
    let created: usize = done
        .copies
        .iter()
        .map(|copy| c.creates.count(copy.task_id))
        .sum();
    assert_eq!(done.copies.len(), 5, "{:?}", done.copies);
    assert_eq!(created, 5, "{:?}", c.creates.counts());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_two_manager_kills_with_exactly_count_copies() -> Result<()> {
    let mut c = ProcCluster::start(3).await?;
    let name = unique("web");
    let mut v1 = spec(&name, 3);
    v1.update.min_healthy_time = Some(Duration::from_secs(2));
    // Two takeovers on a loaded machine may take longer than `spec`'s 30 s: the rollout
    // must not fail (and revert) for lack of time, which is another test's subject.
    v1.update.healthy_deadline = Some(Duration::from_secs(120));
    rolled_out(&c, v1.clone()).await?;
    let mut v2 = v1.clone();
    v2.template.env = vec!["VERSION=2".into()];
    deploy(&c, v2).await?;
    let mut most = 0;
    for _ in 0..2 {
        // Mid-rollout: a new copy exists.
        eventually(WITHIN, "a copy of version 2 runs", || async {
            let docker = running(&c, &name).await?;
            ensure!(docker
                .iter()
                .any(|s| label(s, LABEL_SERVICE_VERSION) == "2"));
            Ok(())
        })
        .await?;
        c.kill_manager().await?;
        most = most.max(running(&c, &name).await?.len());
        c.start_manager().await?;
    }
    let began = tokio::time::Instant::now();
    loop {
        let docker = running(&c, &name).await?;
        most = most.max(docker.len());
        let s = status(&c, &name).await?;
        ensure!(
            began.elapsed() < WITHIN,
            "the rollout did not finish: {} containers run; {:?}; copies {:?}",
            docker.len(),
            s.service.rollout,
            s.copies
        );
        if s.service.rollout.as_ref().map(|r| r.state) == Some(RolloutState::Succeeded)
            && s.service.version == 2
            && docker.len() == 3
        {
            assert!(docker
                .iter()
                .all(|s| label(s, LABEL_SERVICE_VERSION) == "2"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 4, "{most} copies ran at once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_copies_are_published_for_discovery() -> Result<()> {
    let c = ProcCluster::start(2).await?;
    let name = unique("api");
    let mut s = spec(&name, 2);
    s.template.cmd = long_running();
    s.template.health_check = None;
    deploy(&c, s).await?;
    wait_running(&c, &name, 2).await?;
    let cube = c.cube();
    let endpoints = eventually(WITHIN, "both copies are in cube-endpoints", || async {
        let e = cube.endpoints(&name).await?.context("no key yet")?;
        ensure!(e.endpoints.len() == 2, "{e:?}");
        Ok(e)
    })
    .await?;
    let nodes: BTreeSet<&str> = endpoints
        .endpoints
        .iter()
        .map(|e| e.node.as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "{endpoints:?}");
    publish(&c, ServiceEvent::scale(&name, 1)).await?;
    eventually(WITHIN, "one endpoint is left", || async {
        let e = cube.endpoints(&name).await?.context("no key")?;
        ensure!(e.endpoints.len() == 1, "{e:?}");
        Ok(())
    })
    .await?;
    Ok(())
}
