//! Nothing lost, nothing doubled: the manager, a worker and nats-server are killed for real
//! (SIGKILL: they run as `cube` / `nats-server` child processes of the test) while tasks are in
//! flight. Every count is exact, and "exactly one container per task" is Docker's own word: its
//! event stream of container creations, recorded from before the first worker started.
//!
//! These tests are heavy; `.config/nextest.toml` runs them one at a time.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::KillContainerOptionsBuilder;
use cube_shared::{State, Task, TaskEvent, LABEL_TASK_ID};
use cube_tests::procs::ProcCluster;
use cube_tests::{consistently, eventually, task, Rng};
use uuid::Uuid;

/// Exits 7 when sent SIGUSR1, runs (five minutes) until then: an exit the test can cause at
/// the moment it wants, with a real exit code, from the container's own process.
fn exits_7_on_usr1() -> Task {
    task(&["sh", "-c", "trap 'exit 7' USR1; sleep 300 & wait"])
}

/// Checks, as Docker lists them, that the task has one container, running, and that it is
/// `expected`.
async fn runs_alone_in(c: &ProcCluster, id: Uuid, expected: &Option<String>) -> Result<()> {
    let containers = c.containers(LABEL_TASK_ID, &id.to_string()).await?;
    ensure!(
        containers.len() == 1
            && containers[0].state == Some(ContainerSummaryStateEnum::RUNNING)
            && containers[0].id == *expected,
        "task {id} should run in one container, {expected:?}, alone: {:?}",
        containers
            .iter()
            .map(|c| (&c.id, &c.state))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Issue 3, fault test 1: 200 tasks submitted while the manager is SIGKILLed and restarted
/// twice at random points. All 200 run (and complete); Docker created exactly one container
/// for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_killed_twice_while_200_tasks_are_submitted() -> Result<()> {
    let mut c = ProcCluster::start(2).await?;
    let result = manager_killed_twice(&mut c).await;
    c.explain(result)
}

async fn manager_killed_twice(c: &mut ProcCluster) -> Result<()> {
    const TASKS: usize = 200;
    let began = Instant::now();
    let mut rng = Rng::from_env_or_random("CUBE_FAULT_SEED");
    let kill1 = rng.range(10, 70);
    let restart1 = kill1 + rng.range(5, 40);
    let kill2 = restart1 + rng.range(10, 60);
    let restart2 = kill2 + rng.range(5, 40);
    eprintln!(
        "manager: SIGKILL before task {kill1}, restart before {restart1}, \
         SIGKILL before {kill2}, restart before {restart2} (or after the last)"
    );
    let mut ids = Vec::with_capacity(TASKS);
    let mut kills = 0;
    for i in 0..TASKS {
        if i == kill1 || i == kill2 {
            c.kill_manager().await?;
            kills += 1;
        }
        if i == restart1 || i == restart2 {
            c.start_manager().await?;
        }
        let id = c
            .submit(task(&["sleep", "5"]))
            .await
            .with_context(|| format!("submitting task {i}"))?;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(rng.range(0, 15) as u64)).await;
    }
    if !c.manager_running() {
        c.start_manager().await?;
    }
    assert_eq!(kills, 2, "the manager was killed twice");
    eprintln!("{TASKS} submitted in {:?}", began.elapsed());
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    ensure!(distinct.len() == TASKS, "{TASKS} distinct task ids");

    let tasks = c
        .wait_all(&ids, State::Completed, Duration::from_secs(300))
        .await?;
    eprintln!("all {TASKS} completed after {:?}", began.elapsed());
    c.ensure_ran_cleanly_here(&tasks)?;
    c.creates.assert_exactly_one_each(&ids)?;
    ensure!(c.creates.counts().len() == TASKS && c.creates.total() == TASKS);
    Ok(())
}

/// Issue 3, fault test 2: a worker running 20 tasks is SIGKILLed and started again under the
/// same name. The 15 tasks still running are adopted (same container, no new one created) and
/// the 5 whose containers exited (code 7) while it was down are reported failed with code 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_adopts_its_containers_and_reports_exits_it_missed() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = worker_killed_and_restarted(&mut c).await;
    c.explain(result)
}

async fn worker_killed_and_restarted(c: &mut ProcCluster) -> Result<()> {
    let began = Instant::now();
    let worker = c.worker_names()[0].clone();
    let mut staying = Vec::new();
    let mut exiting = Vec::new();
    for i in 0..20 {
        if i % 4 == 3 {
            exiting.push(c.submit(exits_7_on_usr1()).await?);
        } else {
            staying.push(c.submit(cube_tests::sleeper()).await?);
        }
    }
    let all: Vec<Uuid> = staying.iter().chain(&exiting).copied().collect();
    let before = c
        .wait_all(&all, State::Running, Duration::from_secs(60))
        .await?;
    eprintln!("20 running after {:?}", began.elapsed());
    // Each runs in exactly one container, running, the one Cube recorded.
    for id in &all {
        runs_alone_in(c, *id, &before[id].container_id)
            .await
            .context("before the kill")?;
        ensure!(before[id].worker.as_deref() == Some(worker.as_str()));
    }
    c.creates.assert_exactly_one_each(&all)?;

    c.kill_worker(&worker).await?;
    eprintln!("worker killed after {:?}", began.elapsed());
    // While it is down, five containers exit with code 7.
    let docker = c.docker.clone();
    for id in &exiting {
        let usr1 = KillContainerOptionsBuilder::default()
            .signal("SIGUSR1")
            .build();
        docker
            .client()
            .kill_container(&cube_shared::container_name(*id, 1), Some(usr1))
            .await
            .with_context(|| format!("signalling task {id}'s container"))?;
    }
    for id in &exiting {
        eventually(
            Duration::from_secs(20),
            &format!("task {id}'s container exits with code 7 while the worker is down"),
            || async {
                let state = docker
                    .client()
                    .inspect_container(&cube_shared::container_name(*id, 1), None)
                    .await?
                    .state
                    .unwrap_or_default();
                ensure!(
                    state.running == Some(false) && state.exit_code == Some(7),
                    "running {:?}, exit code {:?}",
                    state.running,
                    state.exit_code
                );
                Ok(())
            },
        )
        .await?;
    }
    eprintln!(
        "5 exited while the worker was down, after {:?}",
        began.elapsed()
    );

    c.start_worker(&worker).await?;
    eprintln!("worker restarted after {:?}", began.elapsed());
    let failed = c
        .wait_all(&exiting, State::Failed, Duration::from_secs(30))
        .await
        .context("the exits that happened while the worker was down are reported")?;
    for (id, t) in &failed {
        ensure!(
            t.exit_code == Some(7),
            "task {id} is failed with exit code {:?} (error {:?}), want 7",
            t.exit_code,
            t.error
        );
    }
    // Everything the restart set off has been handled; then, for a few seconds (a wrongly
    // restarted task would show up in Docker's events), the staying tasks keep their
    // containers and none is created again.
    cube_tests::wait_idle(&c.js, c.worker_names(), cube_tests::WITHIN).await?;
    consistently(
        Duration::from_secs(3),
        "the staying tasks run in their own containers, each created once",
        || async {
            let after = c.tasks().await?;
            for id in &staying {
                let t = &after[id];
                ensure!(
                    t.state == State::Running && t.container_id == before[id].container_id,
                    "task {id} should still run in container {:?}: it is {} in {:?} (error {:?})",
                    before[id].container_id,
                    t.state,
                    t.container_id,
                    t.error
                );
                runs_alone_in(c, *id, &before[id].container_id)
                    .await
                    .context("its container is adopted")?;
            }
            c.creates
                .assert_exactly_one_each(&all)
                .context("no container is created again after the restart")
        },
    )
    .await?;
    eprintln!("done after {:?}", began.elapsed());
    Ok(())
}

/// Issue 3, fault test 3: nats-server is SIGKILLed and restarted (same port, same JetStream
/// store) while 50 tasks are in flight, some of them exiting during the outage. All 50 reach
/// their final state, each in exactly one container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_with_50_tasks_in_flight() -> Result<()> {
    let mut c = ProcCluster::start(2).await?;
    let result = nats_restarted(&mut c).await;
    c.explain(result)
}

async fn nats_restarted(c: &mut ProcCluster) -> Result<()> {
    const TASKS: usize = 50;
    let began = Instant::now();
    let mut ids = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        ids.push(c.submit(task(&["sleep", "2"])).await?);
    }
    // In flight: some running already, not all of them done.
    let started = eventually(
        Duration::from_secs(60),
        "at least 10 of the tasks run",
        || async {
            let all = c.tasks().await?;
            let running = ids
                .iter()
                .filter(|id| all.get(id).is_some_and(|t| t.state == State::Running))
                .count();
            let done = ids
                .iter()
                .filter(|id| all.get(id).is_some_and(|t| t.state.is_final()))
                .count();
            ensure!(running >= 10, "{running} running, {done} done");
            Ok((running, done))
        },
    )
    .await?;
    eprintln!(
        "restarting nats-server after {:?}: {} running, {} done",
        began.elapsed(),
        started.0,
        started.1
    );
    // Down for 3 s: containers exit during the outage, and their reports must wait.
    c.nats.restart_after(Duration::from_secs(3)).await?;
    eprintln!("nats-server back after {:?}", began.elapsed());

    let tasks = c
        .wait_all(&ids, State::Completed, Duration::from_secs(180))
        .await?;
    eprintln!("all {TASKS} completed after {:?}", began.elapsed());
    for (id, t) in &tasks {
        ensure!(
            t.exit_code == Some(0) && t.start_time.is_some(),
            "task {id}: exit code {:?}, start time {:?}, error {:?}",
            t.exit_code,
            t.start_time,
            t.error
        );
    }
    c.creates.assert_exactly_one_each(&ids)?;
    c.check_alive()
        .context("the manager and workers survive the NATS restart")?;
    Ok(())
}

/// Issue 3, fault test 4: the very same TaskEvent JSON published 5 times on `tasks.events`
/// (no `Nats-Msg-Id`, so JetStream stores all five): one task, one container, and it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_task_event_published_five_times_runs_one_container() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = published_five_times(&mut c).await;
    c.explain(result)
}

async fn published_five_times(c: &mut ProcCluster) -> Result<()> {
    let mut t = cube_tests::sleeper();
    t.name = "five-times".to_string();
    let event = TaskEvent::submit(t);
    let id = event.task.id;
    let payload = cube_shared::wire::encode(&event);
    let mut sequences = HashSet::new();
    for _ in 0..5 {
        let ack = c.publish_event(payload.clone()).await?;
        ensure!(!ack.duplicate, "JetStream must store every copy: {ack:?}");
        sequences.insert(ack.sequence);
    }
    ensure!(sequences.len() == 5, "five messages stored: {sequences:?}");

    let running = c
        .wait_state(id, State::Running, Duration::from_secs(30))
        .await?;
    // The manager has taken in all five copies, and the worker whatever work they caused;
    // then, for a moment (Docker's events arrive on their own stream), one task, one
    // container.
    cube_tests::wait_idle(&c.js, c.worker_names(), cube_tests::WITHIN).await?;
    consistently(
        Duration::from_secs(2),
        "one task, running in the one container Docker created",
        || async {
            let tasks = c.tasks().await?;
            ensure!(
                tasks.len() == 1 && tasks.contains_key(&id),
                "one task in the Task DB, {id}: {:?}",
                tasks.keys().collect::<Vec<_>>()
            );
            let now = &tasks[&id];
            ensure!(
                now.state == State::Running && now.container_id == running.container_id,
                "still running in {:?}: {now:?}",
                running.container_id
            );
            runs_alone_in(c, id, &running.container_id).await?;
            c.creates.assert_exactly_one_each(&[id])?;
            ensure!(
                c.creates.total() == 1,
                "Docker created {} containers",
                c.creates.total()
            );
            Ok(())
        },
    )
    .await
}
