//! A task's life through the real parts: `cube` (or any NATS client) → JetStream → manager →
//! worker → Docker container → state report → Task DB.

use std::time::Duration;

use async_nats::jetstream;
use cube_shared::subjects::{state_for, EVENTS, NODE_DB, STATE_STREAM, TASK_DB};
use cube_shared::{State, StateReport, Task, LABEL_TASK_ID, LABEL_WORKER};
use cube_tests::{cube, long_running, task, Cluster, IMAGE, WITHIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_submit_runs_a_labelled_container_and_stop_removes_it() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let url = cluster.nats.url();
    let worker = &cluster.worker_names[0];

    let mut args = vec![
        "submit", "--image", IMAGE, "--name", "web", "--memory", "64m", "--",
    ];
    let cmd = long_running();
    args.extend(cmd.iter().map(String::as_str));
    let id: uuid::Uuid = cube(&url, &args).await?.trim().parse()?;

    let running = cluster.wait_state(id, State::Running, WITHIN).await?;
    assert_eq!(running.worker.as_deref(), Some(worker.as_str()));
    let containers = cluster.containers(LABEL_TASK_ID, &id.to_string()).await?;
    assert_eq!(containers.len(), 1, "exactly one container for the task");
    let c = &containers[0];
    assert_eq!(
        c.state,
        Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
    );
    let labels = c.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(LABEL_WORKER), Some(worker));
    assert_eq!(running.container_id.as_deref(), c.id.as_deref());
    assert_eq!(
        c.names.clone().unwrap_or_default(),
        vec![format!("/{}", cube_shared::container_name(id, 1))]
    );

    // The memory limit reached Docker.
    let inspect = cluster
        .docker
        .client()
        .inspect_container(&cube_shared::container_name(id, 1), None)
        .await?;
    assert_eq!(inspect.host_config.and_then(|h| h.memory), Some(64 << 20));

    let table = cube(&url, &["status"]).await?;
    let row = table
        .lines()
        .find(|l| l.contains(&id.to_string()))
        .expect("the task is listed");
    assert!(
        row.contains("running") && row.contains("web") && row.contains(worker),
        "{row}"
    );
    let detail = cube(&url, &["status", "web"]).await?;
    assert!(
        detail.contains("State:") && detail.contains("running"),
        "{detail}"
    );
    let nodes = cube(&url, &["nodes"]).await?;
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(worker.as_str()) && l.contains("ready")),
        "{nodes}"
    );

    assert_eq!(cube(&url, &["stop", "web"]).await?.trim(), id.to_string());
    let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
    assert_eq!(done.exit_code, Some(0));
    assert!(done.finish_time.is_some());
    cube_tests::eventually(WITHIN, "the container is removed", || async {
        let left = cluster.containers(LABEL_TASK_ID, &id.to_string()).await?;
        anyhow::ensure!(left.is_empty(), "{} left", left.len());
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_reported_with_their_code() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let ok = cluster.submit(task(&["true"])).await?;
    let bad = cluster.submit(task(&["sh", "-c", "exit 3"])).await?;

    let ok = cluster.wait_state(ok, State::Completed, WITHIN).await?;
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.error, None);
    let bad = cluster.wait_state(bad, State::Failed, WITHIN).await?;
    assert_eq!(bad.exit_code, Some(3));
    assert_eq!(bad.error.as_deref(), Some("exited with code 3"));
    Ok(())
}

/// The contract is public: a hand-written JSON event from a plain NATS client starts a task,
/// and the Task DB and node list are KV buckets any client can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_nats_client_can_submit_and_read_the_task_db() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let id = uuid::Uuid::new_v4();
    let event = format!(
        r#"{{"id": "{}", "state": "running", "timestamp": "2026-11-22T10:00:00Z",
            "task": {{"id": "{id}", "name": "raw", "image": "{IMAGE}",
                      "cmd": ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"],
                      "env": ["GREETING=hello"], "cpu": 0.1, "memory": 33554432}}}}"#,
        uuid::Uuid::new_v4()
    );
    let js = jetstream::new(cluster.client.clone());
    js.publish(EVENTS, event.into()).await?.await?;
    cluster.wait_state(id, State::Running, WITHIN).await?;

    let inspect = cluster
        .docker
        .client()
        .inspect_container(&cube_shared::container_name(id, 1), None)
        .await?;
    let env = inspect.config.and_then(|c| c.env).unwrap_or_default();
    assert!(env.contains(&"GREETING=hello".to_string()), "{env:?}");

    let tasks = js.get_key_value(TASK_DB).await?;
    // Under its worker's key: the worker may read it, and no other may.
    let place = cube_shared::subjects::TaskPlace::Worker(&cluster.worker_names[0]);
    let key = cube_shared::subjects::task_key(id, place);
    let stored: Task = serde_json::from_slice(&tasks.get(key).await?.expect("in the Task DB"))?;
    // The Task DB holds decisions: placed on this worker. That it runs is the worker's last
    // report, which CUBE_STATE keeps under the copy's subject.
    assert_eq!(stored.state, State::Scheduled);
    assert_eq!(
        stored.worker.as_deref(),
        Some(cluster.worker_names[0].as_str())
    );
    assert_eq!(stored.name, "raw");
    let reports = js.get_stream(STATE_STREAM).await?;
    let last = reports
        .direct_get_last_for_subject(state_for(id, &cluster.worker_names[0]))
        .await?;
    let status: StateReport = serde_json::from_slice(&last.payload)?;
    assert_eq!((status.state, status.generation), (State::Running, Some(1)));
    assert!(status.container_id.is_some(), "{status:?}");
    let nodes = js.get_key_value(NODE_DB).await?;
    assert!(
        nodes.get(&cluster.worker_names[0]).await?.is_some(),
        "the worker is in the node bucket"
    );
    Ok(())
}

/// Submitting the same task twice (a client retry) runs it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_submission_runs_once() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let t = cube_tests::sleeper();
    let id = cluster.submit(t.clone()).await?;
    cluster.submit(t).await?;
    cluster.wait_state(id, State::Running, WITHIN).await?;
    // Both copies handled by the manager, whatever work they caused handled by the worker.
    let js = jetstream::new(cluster.client.clone());
    cube_tests::wait_idle(&js, &cluster.worker_names, WITHIN).await?;
    cube_tests::consistently(
        Duration::from_secs(1),
        "one container for the task",
        || async {
            let n = cluster
                .containers(LABEL_TASK_ID, &id.to_string())
                .await?
                .len();
            anyhow::ensure!(n == 1, "{n} containers");
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// `--port HOST:CONTAINER` publishes the container's port on the host, `--env` reaches the
/// process, and `--wait` returns once the task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_and_env_reach_the_container() -> anyhow::Result<()> {
    // The port is published on the loopback only, which the worker must allow.
    let cluster = Cluster::start_allowing_loopback_ports().await?;
    let url = cluster.nats.url();
    let port = cube_tests::free_port()?;
    let script =
        "mkdir -p /www && echo \"hello $WHO\" > /www/index.html && exec httpd -f -p 8080 -h /www";
    let binding = format!("127.0.0.1:{port}:8080");
    let out = cube(
        &url,
        &[
            "submit", "--wait", "--image", IMAGE, "-p", &binding, "-e", "WHO=cube", "--", "sh",
            "-c", script,
        ],
    )
    .await?;
    let id: uuid::Uuid = out.trim().parse()?;
    assert_eq!(cluster.task(id).await?.state, State::Running);
    let body = cube_tests::eventually(WITHIN, "httpd answers on the published port", || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
        let mut body = String::new();
        conn.read_to_string(&mut body).await?;
        anyhow::ensure!(body.contains("200"), "{body}");
        Ok(body)
    })
    .await?;
    assert!(body.contains("hello cube"), "{body}");
    Ok(())
}

/// A task that ended is kept for `--keep-ended`, then forgotten: gone from the Task DB and the
/// manager, while `cube status ID` still tells what the journal kept of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_task_is_forgotten_after_keep_ended_and_the_journal_still_tells(
) -> anyhow::Result<()> {
    use cube_shared::subjects::{task_key, TaskPlace};
    let mut cluster = Cluster::empty().await?;
    cluster.start_manager(cube_manager::Config {
        timings: cube_manager::rules::Timings {
            keep_ended: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    });
    let worker = cluster.add_worker(|_| {}).await?;
    let url = cluster.nats.url();
    let id: uuid::Uuid = cube(&url, &["submit", "--image", IMAGE, "--", "true"])
        .await?
        .trim()
        .parse()?;
    cluster.wait_state(id, State::Completed, WITHIN).await?;
    let js = jetstream::new(cluster.client.clone());
    let tasks = js.get_key_value(TASK_DB).await?;
    let key = task_key(id, TaskPlace::Worker(&worker));
    assert!(tasks.get(&key).await?.is_some(), "kept at first");

    // Looked over every 10 s: forgotten within two sweeps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = cube_tests::cube_output(&url, &["status", &id.to_string()]).await?;
        if out.stdout.contains("no longer kept") {
            anyhow::ensure!(out.ok, "{}", out.stderr);
            assert!(out.stdout.contains("completed"), "{}", out.stdout);
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "still known after 30 s: {}{}",
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(tasks.get(&key).await?.is_none(), "its record is deleted");
    let listed = cube(&url, &["status", "-o", "json"]).await?;
    assert!(!listed.contains(&id.to_string()), "{listed}");
    Ok(())
}
