//! NATS permissions per role, with a real nats-server running Cube's generated authorization
//! block: each role can do its job and nothing else, and the server says so.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream;
use cube_bus::auth::{server_config, Role, User};
use cube_shared::subjects::{state_for, EVENTS, MANAGER_STATE_CONSUMER, STATE_STREAM, WORK_STREAM};
use cube_shared::{State, StateReport, TaskEvent, LABEL_WORKER};
use cube_tests::{api, connect_as, denied, remove_containers, unique, NatsServer, WITHIN};
use cube_worker::runtime::{DockerRuntime, Runtime};
use tokio_util::sync::{CancellationToken, DropGuard};

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for w in &self.0 {
            remove_containers(&format!("{LABEL_WORKER}={w}"));
        }
    }
}

/// A user of the role with a fresh random password.
fn user(role: Role) -> User {
    User {
        role,
        password: cube_bus::auth::random_password(),
    }
}

/// A nats-server admitting only `users`, and a manager running as `users[0]` until the
/// returned token is cancelled (when its guard drops).
async fn cluster(users: &[User]) -> Result<(NatsServer, CancellationToken, DropGuard)> {
    let nats = NatsServer::start_with(&server_config(users)).await?;
    let shutdown = CancellationToken::new();
    let (conn, _) = connect_as(&nats, &users[0]).await?;
    let token = shutdown.child_token();
    tokio::spawn(async move {
        if let Err(e) = cube_manager::run(cube_manager::Config::default(), conn, token).await {
            panic!("manager failed: {e}");
        }
    });
    let guard = shutdown.clone().drop_guard();
    Ok((nats, shutdown, guard))
}

/// Runs a Docker worker `name` (labelled `name=<name>`) as `user` until `shutdown`.
async fn start_worker(
    nats: &NatsServer,
    user: &User,
    name: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    let runtime: Arc<dyn Runtime> = Arc::new(DockerRuntime::connect().await?);
    let (conn, _) = connect_as(nats, user).await?;
    let mut cfg = cube_worker::Config::new(name);
    cfg.heartbeat_interval = Duration::from_millis(500);
    cfg.labels.insert("name".into(), name.to_string());
    let name = name.to_string();
    tokio::spawn(async move {
        if let Err(e) = cube_worker::run(cfg, conn, runtime, shutdown).await {
            panic!("worker {name} failed: {e}");
        }
    });
    Ok(())
}

async fn task(client: &async_nats::Client, id: uuid::Uuid) -> Result<cube_shared::Task> {
    let query = cube_shared::TaskQuery { id: id.to_string() };
    api(client, cube_shared::subjects::API_TASKS_GET, &query).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_its_job_and_nothing_else() -> Result<()> {
    cube_tests::ensure_image()?;
    let (a, b) = (unique("wa"), unique("wb"));
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    let (manager, client) = (user(Role::Manager), user(Role::Client));
    let worker_a = user(Role::Worker(a.clone()));
    let worker_b = user(Role::Worker(b.clone()));
    // The whole cluster runs under its roles.
    let users = [
        manager.clone(),
        client.clone(),
        worker_a.clone(),
        worker_b.clone(),
    ];
    let (nats, shutdown, _stop) = cluster(&users).await?;
    for (name, user) in [(&a, &worker_a), (&b, &worker_b)] {
        start_worker(&nats, user, name, shutdown.child_token()).await?;
    }
    let (client_conn, mut client_errors) = connect_as(&nats, &client).await?;
    cube_tests::eventually(WITHIN, "both workers are ready", || async {
        let nodes: Vec<cube_shared::Node> =
            api(&client_conn, cube_shared::subjects::API_NODES_LIST, &()).await?;
        anyhow::ensure!(nodes.len() == 2, "{} nodes", nodes.len());
        Ok(())
    })
    .await?;
    let client_js = jetstream::new(client_conn.clone());
    let mut t = cube_tests::sleeper();
    t.constraints = vec![format!("name={b}")];
    let event = TaskEvent::submit(t);
    let id = event.task.id;
    client_js
        .publish(EVENTS, cube_shared::wire::encode(&event))
        .await?
        .await?;
    let running = cube_tests::eventually(WITHIN, "the client's task runs on worker b", || async {
        let t = task(&client_conn, id).await?;
        anyhow::ensure!(t.state == State::Running, "{}", t.state);
        Ok(t)
    })
    .await?;
    assert_eq!(running.worker.as_deref(), Some(b.as_str()));

    // A worker may not submit tasks, nor touch another worker's work or name.
    let (a_conn, mut a_errors) = connect_as(&nats, &worker_a).await?;
    a_conn.publish(EVENTS, "{}".into()).await?;
    denied(&mut a_errors, EVENTS).await?;
    let other_work = format!("tasks.pending.{b}");
    a_conn.publish(other_work.clone(), "{}".into()).await?;
    denied(&mut a_errors, &other_work).await?;
    let _sub = a_conn.subscribe(other_work.clone()).await?;
    denied(&mut a_errors, &other_work).await?;
    let other_next = format!("$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.worker-{b}");
    a_conn.publish(other_next.clone(), "{}".into()).await?;
    denied(&mut a_errors, &other_next).await?;
    let other_heartbeat = format!("nodes.heartbeat.{b}");
    a_conn.publish(other_heartbeat.clone(), "{}".into()).await?;
    denied(&mut a_errors, &other_heartbeat).await?;
    // Nor speak for another worker's task: under b's name the server refuses…
    let forged = state_for(id, &b);
    a_conn.publish(forged.clone(), "{}".into()).await?;
    denied(&mut a_errors, &forged).await?;
    // …and under its own name the manager ignores it (the task is b's).
    let mut lie = StateReport::new(id, &a, State::Failed);
    lie.error = Some("forged".into());
    jetstream::new(a_conn.clone())
        .publish(state_for(id, &a), cube_shared::wire::encode(&lie))
        .await?
        .await?;

    // A client may not publish task state or work.
    let state_subject = state_for(id, &b);
    client_conn
        .publish(state_subject.clone(), "{}".into())
        .await?;
    denied(&mut client_errors, &state_subject).await?;
    let work = format!("tasks.pending.{b}");
    client_conn.publish(work.clone(), "{}".into()).await?;
    denied(&mut client_errors, &work).await?;

    // The HTTP API's tokens: a client makes one through the manager, which alone may read
    // the bucket that keeps them (hashed).
    let created = cube_client::Cube::new(client_conn.clone())
        .create_token(cube_shared::token::TokenRole::Read, None)
        .await?;
    for subject in [
        format!(
            "$JS.API.DIRECT.GET.KV_cube-tokens.$KV.cube-tokens.{}",
            created.info.id
        ),
        "$JS.API.STREAM.INFO.KV_cube-tokens".to_string(),
        "$JS.API.CONSUMER.CREATE.KV_cube-tokens".to_string(),
    ] {
        client_conn.publish(subject.clone(), "".into()).await?;
        denied(&mut client_errors, &subject).await?;
    }

    // The manager has taken the forged report (it acknowledges a report once its outcome
    // is stored): what it did with it shows now.
    let (manager_conn, _) = connect_as(&nats, &manager).await?;
    cube_tests::wait_drained(
        &jetstream::new(manager_conn),
        STATE_STREAM,
        MANAGER_STATE_CONSUMER,
        WITHIN,
    )
    .await?;
    let t = task(&client_conn, id).await?;
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (State::Running, Some(b.as_str())),
        "the forged report changed nothing"
    );

    // Nobody gets in without a password.
    let anonymous = async_nats::ConnectOptions::new().connect(nats.url()).await;
    assert!(anonymous.is_err(), "an anonymous connection was accepted");
    Ok(())
}

/// The shared `workers` user (for workers whose names are not known in advance, as with
/// `docker compose up --scale`): workers of any name run under it, one that starts while the
/// Task DB holds tasks reads it, and it still may not submit, publish work or write the Task DB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_worker_user_may_be_any_worker_and_nothing_more() -> Result<()> {
    cube_tests::ensure_image()?;
    let (a, b) = (unique("sa"), unique("sb"));
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    let (manager, client, workers) = (user(Role::Manager), user(Role::Client), user(Role::Workers));
    let users = [manager.clone(), client.clone(), workers.clone()];
    let (nats, shutdown, _stop) = cluster(&users).await?;
    let (client_conn, _) = connect_as(&nats, &client).await?;
    let ready = |n: usize| {
        let client_conn = client_conn.clone();
        async move {
            let nodes: Vec<cube_shared::Node> =
                api(&client_conn, cube_shared::subjects::API_NODES_LIST, &()).await?;
            anyhow::ensure!(nodes.len() == n, "{} nodes", nodes.len());
            Ok(())
        }
    };

    start_worker(&nats, &workers, &a, shutdown.child_token()).await?;
    cube_tests::eventually(WITHIN, "worker a is ready", || ready(1)).await?;
    let event = TaskEvent::submit(cube_tests::sleeper());
    let id = event.task.id;
    jetstream::new(client_conn.clone())
        .publish(EVENTS, cube_shared::wire::encode(&event))
        .await?
        .await?;
    cube_tests::eventually(WITHIN, "the task runs on worker a", || async {
        let t = task(&client_conn, id).await?;
        anyhow::ensure!(t.state == State::Running, "{}", t.state);
        anyhow::ensure!(t.worker.as_deref() == Some(a.as_str()), "{:?}", t.worker);
        Ok(())
    })
    .await?;
    // A worker starts by reading the whole Task DB, which now holds a task: it must be
    // allowed to (it heartbeats only after that).
    start_worker(&nats, &workers, &b, shutdown.child_token()).await?;
    cube_tests::eventually(WITHIN, "worker b is ready", || ready(2)).await?;

    let (conn, mut errors) = connect_as(&nats, &workers).await?;
    for subject in [
        EVENTS.to_string(),
        "tasks.pending".to_string(),
        format!("tasks.pending.{a}"),
        format!("$KV.cube-tasks.{id}"),
        format!("$JS.API.STREAM.DELETE.{WORK_STREAM}"),
    ] {
        conn.publish(subject.clone(), "{}".into()).await?;
        denied(&mut errors, &subject).await?;
    }
    Ok(())
}

/// Secrets' values are for the manager alone: a client may store one through the manager
/// (`cube.api.secrets.put`), but neither a client nor a worker may read the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_manager_reads_secrets() -> Result<()> {
    use cube_shared::secret::{SecretInfo, SecretPut};
    use cube_shared::subjects::{API_SECRETS_LIST, API_SECRETS_PUT, SECRETS_DB};
    let w = unique("ws");
    let (manager, client, worker) = (
        user(Role::Manager),
        user(Role::Client),
        user(Role::Worker(w)),
    );
    let users = [manager.clone(), client.clone(), worker.clone()];
    let (nats, _shutdown, _stop) = cluster(&users).await?;
    let (client_conn, mut client_errors) = connect_as(&nats, &client).await?;
    let put = SecretPut {
        name: "db".into(),
        value: cube_shared::SecretValue::new("hunter2"),
    };
    cube_tests::eventually(WITHIN, "the manager stores the secret", || async {
        api::<_, ()>(&client_conn, API_SECRETS_PUT, &put).await
    })
    .await?;
    let listed: Vec<SecretInfo> = api(&client_conn, API_SECRETS_LIST, &()).await?;
    assert_eq!(listed.len(), 1);
    let (worker_conn, mut worker_errors) = connect_as(&nats, &worker).await?;
    let stream = format!("KV_{SECRETS_DB}");
    for subject in [
        format!("$JS.API.DIRECT.GET.{stream}.$KV.{SECRETS_DB}.db"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$KV.{SECRETS_DB}.db"),
    ] {
        for (conn, errors) in [
            (&client_conn, &mut client_errors),
            (&worker_conn, &mut worker_errors),
        ] {
            conn.publish(subject.clone(), "{}".into()).await?;
            denied(errors, &subject).await?;
        }
    }
    // Nor subscribe to its messages as they are written.
    let _sub = worker_conn.subscribe(format!("$KV.{SECRETS_DB}.>")).await?;
    denied(&mut worker_errors, &format!("$KV.{SECRETS_DB}.>")).await?;
    Ok(())
}

/// A worker's credentials reach its own work and nothing of another worker's: not the other's
/// Task DB records (by key, by wildcard, by sequence or by scan), not its tasks' output, not
/// its queue, not any secret. The same requests with the owner's credentials succeed, so the
/// refusals are the permissions' doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_only_its_own_work() -> Result<()> {
    use cube_shared::subjects::{
        logs_for, task_key, worker_consumer, TaskPlace, LOGS_STREAM, TASK_DB,
    };
    cube_tests::ensure_image()?;
    let (a, b) = (unique("oa"), unique("ob"));
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    let (manager, client) = (user(Role::Manager), user(Role::Client));
    let (wa, wb) = (user(Role::Worker(a.clone())), user(Role::Worker(b.clone())));
    let users = [manager, client.clone(), wa.clone(), wb.clone()];
    let (nats, shutdown, _stop) = cluster(&users).await?;
    let (client_conn, _) = connect_as(&nats, &client).await?;
    start_worker(&nats, &wa, &a, shutdown.child_token()).await?;
    let marker = unique("output");
    let mut t = cube_tests::task(&["sh", "-c", &format!("echo {marker}; sleep 300")]);
    t.env = vec!["PLAIN=visible-to-its-worker".into()];
    let event = TaskEvent::submit(t);
    let id = event.task.id;
    cube_tests::eventually(WITHIN, "the task runs on worker a", || async {
        jetstream::new(client_conn.clone())
            .publish(EVENTS, cube_shared::wire::encode(&event))
            .await?
            .await?;
        let t = task(&client_conn, id).await?;
        anyhow::ensure!(t.state == State::Running, "{}", t.state);
        anyhow::ensure!(t.worker.as_deref() == Some(a.as_str()), "{:?}", t.worker);
        Ok(())
    })
    .await?;
    let record = format!("$KV.{TASK_DB}.{}", task_key(id, TaskPlace::Worker(&a)));
    let output = logs_for(id, &a);

    // The owner reads its record and its task's output back, by direct get.
    let (own, _) = connect_as(&nats, &wa).await?;
    let own = jetstream::new(own);
    let db = own.get_stream_no_info(format!("KV_{TASK_DB}")).await?;
    let got = db.direct_get_last_for_subject(record.as_str()).await?;
    assert!(
        got.payload.windows(4).any(|w| w == b"PLAI"),
        "its own record"
    );
    let logs = own.get_stream_no_info(LOGS_STREAM).await?;
    cube_tests::eventually(WITHIN, "its output is stored", || async {
        let chunk = logs.direct_get_last_for_subject(output.as_str()).await?;
        anyhow::ensure!(String::from_utf8_lossy(&chunk.payload).contains(&marker));
        Ok(())
    })
    .await?;

    // The other worker reaches none of it.
    let (other, mut errors) = connect_as(&nats, &wb).await?;
    let direct = |stream: &str, subject: &str| format!("$JS.API.DIRECT.GET.{stream}.{subject}");
    let tasks = format!("KV_{TASK_DB}");
    for subject in [
        direct(&tasks, &record),
        direct(&tasks, &format!("$KV.{TASK_DB}.on.{a}.*")),
        direct(&tasks, &format!("$KV.{TASK_DB}.on.*.*")),
        direct(&tasks, &format!("$KV.{TASK_DB}.>")),
        direct(&tasks, &format!("$KV.{TASK_DB}.*")),
        direct(&tasks, &format!("$KV.{TASK_DB}.{id}")),
        format!("$JS.API.DIRECT.GET.{tasks}"),
        format!("$JS.API.STREAM.MSG.GET.{tasks}"),
        format!("$JS.API.STREAM.INFO.{tasks}"),
        format!("$JS.API.CONSUMER.CREATE.{tasks}"),
        direct(LOGS_STREAM, &output),
        direct(LOGS_STREAM, &format!("tasks.logs.{id}.*")),
        format!("$JS.API.STREAM.MSG.GET.{LOGS_STREAM}"),
        format!("$JS.API.CONSUMER.CREATE.{LOGS_STREAM}"),
        format!("tasks.logs.{id}.{a}"),
        format!(
            "$JS.API.CONSUMER.CREATE.{WORK_STREAM}.{}.tasks.pending.{a}",
            worker_consumer(&a)
        ),
        format!(
            "$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{}",
            worker_consumer(&a)
        ),
        direct("KV_cube-secrets", "$KV.cube-secrets.db"),
        "$JS.API.STREAM.MSG.GET.KV_cube-secrets".to_string(),
    ] {
        other.publish(subject.clone(), "{}".into()).await?;
        denied(&mut errors, &subject).await?;
    }
    // What it may ask by wildcard is the newest record of a task on the shared queue.
    let db = jetstream::new(other)
        .get_stream_no_info(format!("KV_{TASK_DB}"))
        .await?;
    if let Ok(m) = db
        .direct_get_last_for_subject(format!("$KV.{TASK_DB}.queue.>"))
        .await
    {
        assert!(!String::from_utf8_lossy(&m.payload).contains(&id.to_string()));
    }
    Ok(())
}
