//! Issue 16, tests 3 and 4: Cube on a real 3-node nats-server cluster (routes on loopback),
//! every stream and bucket with three replicas (`cube manager --replicas 3`). The server that
//! leads the work stream is SIGKILLed under load: nothing acknowledged is lost, nothing is
//! doubled, also with the manager and a worker on different servers. All three servers are
//! restarted one at a time under long-running tasks: no task fails or restarts. And the
//! shipped `nats/cluster/nats-server.conf` forms a cluster. Counts of containers are Docker's
//! own (its event stream).
//!
//! These tests kill nats-servers and run dozens of containers; `.config/nextest.toml` runs
//! them one at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream;
use bollard::models::ContainerSummaryStateEnum;
use cube_client::Cube;
use cube_manager::topology;
use cube_shared::subjects::{
    ADMIN_DB, EVENTS_STREAM, JOURNAL_STREAM, LOGS_STREAM, NODE_DB, STATE_STREAM, TASK_DB,
    WORK_STREAM,
};
use cube_shared::{State, LABEL_TASK_ID};
use cube_tests::cluster::{Launch, NodeConf};
use cube_tests::procs::{Proc, ProcCluster};
use cube_tests::{consistently, cube_bin, eventually, root, sleeper, task, NatsCluster};
use uuid::Uuid;

/// The manager's lease TTL: the shipped default. A NATS failover takes 4-9 s, so a manager
/// whose `cube-admin` bucket loses its leader may step down and take over again; that is
/// allowed, losing or doubling a task is not.
const LEASE_TTL: &str = "6s";

/// The streams every R3 Cube deployment has (the Task DB and `cube-admin` are KV buckets).
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// A 3-node cluster; the manager (not started yet) with three replicas.
async fn on_a_cluster() -> Result<ProcCluster<NatsCluster>> {
    let nats = NatsCluster::start().await?;
    let mut c = ProcCluster::on(nats).await?;
    c.manager_args = ["--replicas", "3", "--lease-ttl", LEASE_TTL]
        .map(String::from)
        .to_vec();
    Ok(c)
}

/// What the submitter saw: the tasks JetStream acknowledged, and the attempts that failed.
struct Submitted {
    ids: Vec<Uuid>,
    failed_attempts: Vec<String>,
}

/// Submits `n` short tasks one after the other, counting them in `done`. A submission that
/// fails (no acknowledgement: the stream may be electing a leader) is tried again with the
/// same task id, as a client should; only acknowledged ones are returned.
async fn submit_all(cube: Cube, n: usize, done: Arc<AtomicUsize>) -> Result<Submitted> {
    let mut ids = Vec::with_capacity(n);
    let mut failed_attempts = Vec::new();
    for i in 0..n {
        let t = task(&["sleep", "2"]);
        let started = Instant::now();
        loop {
            match cube.submit(t.clone()).await {
                Ok(event) => {
                    ensure!(event.task.id == t.id);
                    break;
                }
                Err(e) => {
                    failed_attempts.push(format!("task {i} after {:?}: {e}", started.elapsed()));
                    if started.elapsed() > Duration::from_secs(60) {
                        bail!("task {i} not stored within 60 s: {failed_attempts:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        ids.push(t.id);
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(Submitted {
        ids,
        failed_attempts,
    })
}

/// Submits `tasks` tasks; once `kill_at` are acknowledged, SIGKILLs the server leading the
/// work stream; starts it again once all are submitted. Every task completes, in exactly one
/// container each (Docker's count), and the streams end healthy. Returns the server killed.
async fn kill_the_work_leader_under_load(
    c: &mut ProcCluster<NatsCluster>,
    tasks: usize,
    kill_at: usize,
) -> Result<usize> {
    let began = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let cube = Cube::new(c.client.clone()).with_timeout(Duration::from_secs(5));
    let submitter = tokio::spawn(submit_all(cube, tasks, done.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < kill_at {
        ensure!(
            !submitter.is_finished() && Instant::now() < deadline,
            "{} of {kill_at} submitted within 60 s",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leaders = c.nats.stream_leaders().await?;
    let leader = c.nats.stream_leader(WORK_STREAM).await?;
    let running = placed(c).await.unwrap_or_default();
    c.nats.kill(leader);
    let killed = Instant::now();
    eprintln!(
        "SIGKILLed {} (leader of {WORK_STREAM}) after {:?}, {} submitted, {running} placed; \
         leaders then: {leaders:?}",
        c.nats.name(leader),
        began.elapsed(),
        done.load(Ordering::SeqCst),
    );
    let new_leader = loop {
        if let Ok(i) = c.nats.stream_leader(WORK_STREAM).await {
            break i;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "{WORK_STREAM} has no new leader 60 s after its leader died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{WORK_STREAM} led by {} {:?} after the kill",
        c.nats.name(new_leader),
        killed.elapsed()
    );
    let submitted = submitter.await.context("the submitter panicked")??;
    eprintln!(
        "{tasks} submitted and acknowledged after {:?}; {} attempts failed and were retried: {:?}",
        began.elapsed(),
        submitted.failed_attempts.len(),
        submitted.failed_attempts
    );
    let ids = submitted.ids;
    c.nats.start_again(leader).await?;
    eprintln!("{} back after {:?}", c.nats.name(leader), killed.elapsed());
    let all = c
        .wait_all(&ids, State::Completed, Duration::from_secs(180))
        .await?;
    eprintln!("all {tasks} completed after {:?}", began.elapsed());
    for (id, t) in &all {
        ensure!(
            t.exit_code == Some(0) && t.start_time.is_some() && t.error.is_none(),
            "task {id}: exit code {:?}, start time {:?}, error {:?}",
            t.exit_code,
            t.start_time,
            t.error
        );
    }
    c.creates.assert_exactly_one_each(&ids)?;
    ensure!(
        c.creates.total() == tasks,
        "{} containers",
        c.creates.total()
    );
    let streams = c.nats.wait_streams_healthy(Duration::from_secs(60)).await?;
    eprintln!(
        "{streams} streams healthy, leaders: {:?}",
        c.nats.stream_leaders().await?
    );
    c.check_alive()
        .context("the manager and workers survive the failover")?;
    Ok(leader)
}

/// How many tasks the manager has placed so far (any state past pending).
async fn placed(c: &ProcCluster<NatsCluster>) -> Result<usize> {
    Ok(c.tasks()
        .await?
        .values()
        .filter(|t| t.worker.is_some())
        .count())
}

/// Waits until every Cube stream and bucket exists with three replicas, all current.
async fn three_replicas_each(c: &mut NatsCluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let why = match has_three_replicas_each(c).await {
            Ok(()) => break,
            Err(e) => e,
        };
        ensure!(Instant::now() < deadline, "after 90 s: {why:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.wait_streams_healthy(Duration::from_secs(90)).await?;
    Ok(())
}

async fn has_three_replicas_each(c: &mut NatsCluster) -> Result<()> {
    let replicas = c.stream_replicas().await?;
    for stream in [
        EVENTS_STREAM.to_string(),
        WORK_STREAM.to_string(),
        STATE_STREAM.to_string(),
        JOURNAL_STREAM.to_string(),
        LOGS_STREAM.to_string(),
        kv_stream(TASK_DB),
        kv_stream(NODE_DB),
        kv_stream(ADMIN_DB),
    ] {
        ensure!(
            replicas.get(&stream) == Some(&3),
            "{stream} has {:?} replicas: {replicas:?}",
            replicas.get(&stream)
        );
    }
    ensure!(
        replicas.values().all(|r| *r == 3),
        "streams with other than 3 replicas: {replicas:?}"
    );
    Ok(())
}

/// Issue 16, test 3: the server leading the work stream is SIGKILLed while 150 tasks are
/// being submitted and placed (every process connected to all three servers). Every task the
/// client saw acknowledged completes, in exactly one container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_stream_leader_killed_under_load_loses_and_doubles_nothing() -> Result<()> {
    let mut c = on_a_cluster().await?;
    let result = async {
        c.start_manager().await?;
        for _ in 0..3 {
            c.add_worker().await?;
        }
        three_replicas_each(&mut c.nats).await?;
        kill_the_work_leader_under_load(&mut c, 150, 50).await?;
        Ok(())
    }
    .await;
    c.explain(result)
}

/// Issue 16, test 3, second part: the same with the manager on one server, a worker on
/// another, and a second worker on the third, the one leading the work stream, which is
/// SIGKILLed: the manager and the first worker keep their connections and reach each other
/// through the routes while the stream elects a new leader; the second worker moves to a
/// server it learnt of from the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_manager_and_workers_on_different_servers() -> Result<()> {
    let mut nats = NatsCluster::start().await?;
    // Cube's streams, before any process, to know which server will lead the work stream.
    let js = jetstream::new(nats.connect().await?);
    eventually(
        Duration::from_secs(30),
        "Cube's streams are created with 3 replicas",
        || {
            let js = js.clone();
            async move {
                topology::ensure(js, topology::DEFAULT_LOGS_PER_TASK, 3).await?;
                Ok(())
            }
        },
    )
    .await?;
    nats.wait_streams_healthy(Duration::from_secs(60)).await?;
    let leader = nats.stream_leader(WORK_STREAM).await?;
    let (manager_at, worker_at) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut c = ProcCluster::on(nats).await?;
    c.manager_args = ["--replicas", "3", "--lease-ttl", LEASE_TTL]
        .map(String::from)
        .to_vec();
    let result = async {
        let url = c.nats.url_of(manager_at);
        c.connect_manager_to(&url);
        c.start_manager().await?;
        let url = c.nats.url_of(worker_at);
        c.add_worker_connected_to(&url).await?;
        let url = c.nats.url_of(leader);
        c.add_worker_connected_to(&url).await?;
        eprintln!(
            "manager on {}, workers on {} and {}",
            c.nats.name(manager_at),
            c.nats.name(worker_at),
            c.nats.name(leader)
        );
        three_replicas_each(&mut c.nats).await?;
        let killed = kill_the_work_leader_under_load(&mut c, 150, 50).await?;
        ensure!(
            killed != manager_at && killed != worker_at,
            "the work stream's leader moved to {} before the kill, where the manager or the \
             first worker is",
            c.nats.name(killed)
        );
        Ok(())
    }
    .await;
    c.explain(result)
}

/// Issue 16, test 4: a rolling restart of all three servers (SIGTERM, start again, wait until
/// every stream is healthy, next) while 30 long-running tasks run: no task fails or restarts.
/// Each keeps its one container, which never dies (Docker's events), and the Task DB still
/// says running, also once the manager has had its node TTL to judge the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_nats_servers_fails_or_restarts_no_task() -> Result<()> {
    let mut c = on_a_cluster().await?;
    let result = rolling_restart(&mut c).await;
    c.explain(result)
}

async fn rolling_restart(c: &mut ProcCluster<NatsCluster>) -> Result<()> {
    const TASKS: usize = 30;
    c.start_manager().await?;
    for _ in 0..3 {
        c.add_worker().await?;
    }
    three_replicas_each(&mut c.nats).await?;
    let mut ids = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        ids.push(c.submit(sleeper()).await?);
    }
    let running = c
        .wait_all(&ids, State::Running, Duration::from_secs(120))
        .await?;
    let containers: HashMap<Uuid, Option<String>> = running
        .iter()
        .map(|(id, t)| (*id, t.container_id.clone()))
        .collect();
    ensure!(containers.values().all(Option::is_some));
    c.nats.wait_streams_healthy(Duration::from_secs(60)).await?;

    let began = Instant::now();
    for i in 0..3 {
        let t = Instant::now();
        c.nats.stop(i).await?;
        let stopped = t.elapsed();
        c.nats.start_again(i).await?;
        let ready = t.elapsed();
        let streams = c.nats.wait_streams_healthy(Duration::from_secs(90)).await?;
        let leaders = c.nats.stream_leaders().await?;
        eprintln!(
            "{}: stopped in {stopped:?}, ready after {ready:?}, {streams} streams healthy \
             after {:?}; leaders {leaders:?}",
            c.nats.name(i),
            t.elapsed(),
        );
        c.check_alive()?;
    }
    eprintln!("rolling restart done in {:?}", began.elapsed());

    // The manager judges a worker silent after its node TTL (10 s) plus grace (5 s): give it
    // that long to get anything wrong.
    consistently(
        Duration::from_secs(16),
        "every task is still running in its first container",
        || async {
            let all = c.tasks().await?;
            let mut wrong = BTreeMap::new();
            for id in &ids {
                let t = all.get(id).with_context(|| format!("task {id} is gone"))?;
                if t.state != State::Running || t.container_id != containers[id] {
                    wrong.insert(*id, (t.state, t.container_id.clone(), t.error.clone()));
                }
            }
            ensure!(wrong.is_empty(), "not running as before: {wrong:?}");
            Ok(())
        },
    )
    .await?;
    for id in &ids {
        let listed = c.containers(LABEL_TASK_ID, &id.to_string()).await?;
        ensure!(
            listed.len() == 1
                && listed[0].state == Some(ContainerSummaryStateEnum::RUNNING)
                && listed[0].id == containers[id],
            "task {id}: containers {:?}",
            listed.iter().map(|c| (&c.id, &c.state)).collect::<Vec<_>>()
        );
        ensure!(c.creates.died(*id) == 0, "task {id}'s container died");
    }
    c.creates.assert_exactly_one_each(&ids)?;
    c.check_alive()?;
    Ok(())
}

/// The shipped `nats/cluster/nats-server.conf` (with its include of `../auth.conf`), run three
/// times as its comment says, with only the ports and the store moved so that the three fit
/// on loopback: the nodes form one cluster (their routes authenticated with the route
/// password), and `cube manager --replicas 3`, as the manager user, keeps every stream with
/// three current replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_cluster_config_forms_a_three_node_cluster() -> Result<()> {
    cube_tests::init_tracing();
    let shipped = std::fs::read_to_string(root().join("nats/cluster/nats-server.conf"))?;
    let auth = std::fs::read_to_string(root().join("nats/auth.conf"))?;
    // What moves, each found exactly once.
    let moves = [
        ("port: 4222", "listen: \"127.0.0.1:{port}\""),
        ("http_port: 8222", "http: \"127.0.0.1:{http}\""),
        ("port: 6222", "listen: \"127.0.0.1:{route}\""),
        ("store_dir: \"/data/jetstream\"", "store_dir: {store}"),
    ];
    for (from, _) in moves {
        ensure!(
            shipped.matches(from).count() == 1,
            "the shipped cluster configuration has {from:?} {} times",
            shipped.matches(from).count()
        );
    }
    ensure!(shipped.contains("include \"../auth.conf\""));
    let passwords: BTreeMap<&str, String> = [
        "CUBE_ROUTE_PASSWORD",
        "CUBE_MANAGER_PASSWORD",
        "CUBE_CLIENT_PASSWORD",
        "CUBE_WORKERS_PASSWORD",
    ]
    .into_iter()
    .map(|v| (v, cube_bus::auth::random_password()))
    .collect();
    let route_password = passwords["CUBE_ROUTE_PASSWORD"].clone();
    let env = passwords.clone();
    let mut nats = NatsCluster::start_configured(move |node: &NodeConf| {
        let quote =
            |p: &std::path::Path| serde_json::to_string(&p.to_string_lossy()).expect("a string");
        let mut config = shipped.clone();
        for (from, to) in moves {
            let to = to
                .replace("{port}", &node.port.to_string())
                .replace("{http}", &node.http_port.to_string())
                .replace("{route}", &node.route_port.to_string())
                .replace("{store}", &quote(node.store));
            config = config.replace(from, &to);
        }
        config.push_str(&format!("log_file: {}\n", quote(&node.log)));
        // The configuration goes in `cluster/`, its `../auth.conf` beside that.
        let _ = std::fs::write(node.store.join("auth.conf"), &auth);
        let mut all = node.peers.clone();
        all.push(node.route_port);
        let routes: Vec<String> = all
            .iter()
            .map(|p| format!("nats-route://route:{route_password}@127.0.0.1:{p}"))
            .collect();
        let mut vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        vars.push(("CUBE_NATS_NAME".into(), node.name.to_string()));
        vars.push((
            "CUBE_NATS_ROUTES".into(),
            format!("[{}]", routes.join(", ")),
        ));
        Launch {
            config,
            env: vars,
            conf_dir: Some("cluster".into()),
        }
    })
    .await?;

    let logs = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(cube_bin());
    cmd.args(["manager", "--replicas", "3"])
        .env("CUBE_NATS_URL", nats.url())
        .env("CUBE_NATS_USER", "manager")
        .env("CUBE_NATS_PASSWORD", &passwords["CUBE_MANAGER_PASSWORD"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let mut manager = Proc::spawn("the manager", cmd, logs.path().join("manager.log"))?;
    let result = async {
        three_replicas_each(&mut nats).await?;
        let streams = nats.wait_streams_healthy(Duration::from_secs(10)).await?;
        // The client user, through any server, reaches the manager through the routes.
        for i in 0..3 {
            let client = cube_bus::Credentials::user("client", &passwords["CUBE_CLIENT_PASSWORD"])
                .options()
                .await?
                .connect(nats.url_of(i))
                .await?;
            let cube = Cube::new(client).with_timeout(Duration::from_secs(5));
            eventually(
                Duration::from_secs(30),
                "the manager answers a client",
                || async { Ok(cube.nodes().await?) },
            )
            .await
            .with_context(|| format!("through {}", nats.name(i)))?;
        }
        eprintln!(
            "{streams} streams healthy, leaders {:?}",
            nats.stream_leaders().await?
        );
        ensure!(manager.exited().is_none(), "the manager exited");
        Ok(())
    }
    .await;
    if let Err(e) = result {
        bail!(
            "{e:#}\n----- manager -----\n{}{}",
            manager.log_tail(40),
            nats.log_tail(20)
        );
    }
    manager.kill().await?;
    Ok(())
}

/// Moving an existing single-replica deployment to three replicas, on a real cluster: a
/// manager with the default one replica runs a task; the manager is stopped and started again
/// with `--replicas 3`, which changes every existing stream and bucket to three replicas
/// (JetStream copies the data); the task runs on, in its one container, and the Task DB
/// still has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_deployment_moves_to_three_replicas() -> Result<()> {
    let nats = NatsCluster::start().await?;
    let mut c = ProcCluster::on(nats).await?;
    let result = async {
        c.start_manager().await?;
        c.add_worker().await?;
        let id = c.submit(sleeper()).await?;
        let before = c
            .wait_state(id, State::Running, Duration::from_secs(60))
            .await?;
        let replicas = c.nats.stream_replicas().await?;
        ensure!(replicas.values().all(|r| *r == 1), "before: {replicas:?}");
        c.term_manager().await?;
        c.manager_args = ["--replicas", "3"].map(String::from).to_vec();
        c.start_manager().await?;
        three_replicas_each(&mut c.nats).await?;
        let after = c.task(id).await?;
        ensure!(
            after.state == State::Running && after.container_id == before.container_id,
            "after the move: {after:?}"
        );
        // And the data moved: a fresh task still runs, and the first one is listed.
        let second = c.submit(task(&["true"])).await?;
        c.wait_state(second, State::Completed, Duration::from_secs(60))
            .await?;
        ensure!(c.tasks().await?.contains_key(&id));
        c.creates.assert_exactly_one_each(&[id, second])?;
        ensure!(c.creates.died(id) == 0);
        Ok(())
    }
    .await;
    c.explain(result)
}
