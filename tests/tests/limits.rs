//! Bounded state through the real parts: a submission beyond `--max-tasks` is refused with a
//! reason the sender sees and the journal keeps, nothing else is lost, and the streams and
//! buckets carry their limits (an existing cluster's included) with handled input purged.

use std::time::Duration;

use async_nats::jetstream;
use cube_manager::topology::limits;
use cube_shared::subjects::{
    EVENTS, EVENTS_STREAM, MANAGER_EVENTS_CONSUMER, STATE_STREAM, TASK_DB,
};
use cube_shared::State;
use cube_tests::{cube_output, long_running, Cluster, IMAGE, WITHIN};
use uuid::Uuid;

/// `cube submit --wait` of a long-running task: its id, and whether it ran.
async fn submit_wait(url: &str) -> anyhow::Result<(Uuid, cube_tests::CubeOutput)> {
    let mut args = vec!["submit", "--wait", "--image", IMAGE, "--"];
    let cmd = long_running();
    args.extend(cmd.iter().map(String::as_str));
    let out = cube_output(url, &args).await?;
    let id = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("no id in {:?} ({e}): {}", out.stdout, out.stderr))?;
    Ok((id, out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_beyond_max_tasks_is_refused_journaled_and_nothing_else_is_lost(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::empty().await?;
    cluster.start_manager(cube_manager::Config {
        timings: cube_manager::rules::Timings {
            max_tasks: 2,
            ..Default::default()
        },
        ..Default::default()
    });
    cluster.add_worker(|_| {}).await?;
    let url = cluster.nats.url();
    let (a, out) = submit_wait(&url).await?;
    anyhow::ensure!(out.ok, "{}", out.stderr);
    let (b, out) = submit_wait(&url).await?;
    anyhow::ensure!(out.ok, "{}", out.stderr);

    // The third is refused, and the sender hears why.
    let (c, out) = submit_wait(&url).await?;
    assert!(!out.ok, "refused: {}", out.stdout);
    assert!(
        out.stderr.contains("--max-tasks") && out.stderr.contains("2 tasks are live"),
        "{}",
        out.stderr
    );
    // The stored journal may lag what went live by up to 20 ms.
    let refusal = cube_tests::eventually(WITHIN, "the journal keeps the refusal", || async {
        let journal = cluster
            .cube()
            .journal(cube_client::JOURNAL_SCAN, Some(c))
            .await?;
        journal
            .into_iter()
            .find(|e| e.kind == "rejected")
            .ok_or_else(|| anyhow::anyhow!("no rejected entry yet"))
    })
    .await?;
    assert!(
        refusal.message.contains("--max-tasks"),
        "{}",
        refusal.message
    );
    assert!(
        cluster.task(c).await.is_err(),
        "a refused submission leaves no record"
    );

    // Acknowledged, not delivered again; the others run on.
    let js = jetstream::new(cluster.client.clone());
    let consumer = js
        .get_stream_no_info(EVENTS_STREAM)
        .await?
        .consumer_info(MANAGER_EVENTS_CONSUMER)
        .await?;
    assert_eq!(
        (consumer.num_pending, consumer.num_ack_pending),
        (0, 0),
        "{consumer:?}"
    );
    for id in [a, b] {
        assert_eq!(cluster.task(id).await?.state, State::Running);
    }

    // Room again once one ends.
    cluster.stop(a).await?;
    cluster.wait_state(a, State::Completed, WITHIN).await?;
    let (d, out) = submit_wait(&url).await?;
    anyhow::ensure!(out.ok, "{}", out.stderr);
    assert_eq!(cluster.task(d).await?.state, State::Running);
    assert_eq!(cluster.task(b).await?.state, State::Running);
    cluster.stop(b).await?;
    cluster.stop(d).await?;
    for id in [b, d] {
        cluster.wait_state(id, State::Completed, WITHIN).await?;
    }
    Ok(())
}

/// An existing cluster's streams and buckets (made as an earlier release made them, with a
/// backlog of submissions) get the limits when the manager starts; the backlog is handled,
/// then purged from `CUBE_EVENTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_cluster_gets_the_limits_and_handled_submissions_are_purged(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::empty().await?;
    let js = jetstream::new(cluster.client.clone());
    js.create_stream(jetstream::stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![EVENTS.into()],
        storage: jetstream::stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await?;
    js.create_key_value(jetstream::kv::Config {
        bucket: TASK_DB.into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let cube = cluster.cube();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(cube.submit(cube_tests::task(&["true"])).await?.task.id);
    }

    cluster.start_manager(cube_manager::Config::default());
    cluster.add_worker(|_| {}).await?;
    for id in &ids {
        cluster.wait_state(*id, State::Completed, WITHIN).await?;
    }
    let events = js.get_stream(EVENTS_STREAM).await?.info().await?.clone();
    assert_eq!(events.config.max_messages, limits::EVENTS_MAX_MSGS);
    assert_eq!(events.config.max_bytes, limits::EVENTS_MAX_BYTES);
    assert_eq!(events.config.discard, jetstream::stream::DiscardPolicy::New);
    let tasks = js
        .get_stream(format!("KV_{TASK_DB}"))
        .await?
        .info()
        .await?
        .clone();
    assert!(tasks.config.allow_message_ttl, "deletions may expire");
    assert_eq!(tasks.config.max_bytes, limits::TASK_DB_MAX_BYTES);
    let state = js.get_stream(STATE_STREAM).await?.info().await?.clone();
    assert_eq!(state.config.max_messages, limits::STATE_MAX_MSGS);

    // Purged every 10 s of what the manager acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = js
            .get_stream(EVENTS_STREAM)
            .await?
            .info()
            .await?
            .state
            .messages;
        if held == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{held} submissions still in {EVENTS_STREAM} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
