//! Bad input gets a clear error and loses nothing: each bad message is refused with a reason
//! a person can read, and the tasks around it carry on.

use std::time::Duration;

use async_nats::jetstream;
use cube_shared::subjects::{EVENTS, REJECTED};
use cube_shared::{Rejection, State};
use cube_tests::{cube, task, Cluster, IMAGE, WITHIN};
use futures::StreamExt;

async fn next_rejection(sub: &mut async_nats::Subscriber) -> anyhow::Result<Rejection> {
    let msg = tokio::time::timeout(WITHIN, sub.next())
        .await
        .map_err(|_| anyhow::anyhow!("no rejection within {WITHIN:?}"))?
        .expect("subscription open");
    Ok(serde_json::from_slice(&msg.payload)?)
}

/// A hand-written TaskEvent whose task has `id` and the JSON members `fields`.
fn event(state: &str, id: uuid::Uuid, fields: &str) -> String {
    format!(
        r#"{{"id":"{}","state":"{state}","timestamp":"2026-11-22T10:00:00Z","task":{{"id":"{id}",{fields}}}}}"#,
        uuid::Uuid::new_v4()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_rejected_with_reasons_and_others_run() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let mut rejected = cluster.client.subscribe(REJECTED).await?;
    cluster.client.flush().await?;
    let js = jetstream::new(cluster.client.clone());

    let t = cube_tests::sleeper();
    let before = cluster.submit(t).await?;
    cluster.wait_state(before, State::Running, WITHIN).await?;

    let wrong_type_id = uuid::Uuid::new_v4();
    let cases: Vec<(String, &str)> = vec![
        ("{not json".to_string(), "key must be a string"),
        (
            event(
                "running",
                wrong_type_id,
                &format!(r#""image":"{IMAGE}","memory":"lots""#),
            ),
            "task.memory",
        ),
        (
            event(
                "running",
                uuid::Uuid::new_v4(),
                &format!(r#""image":"{IMAGE}","memory":-5"#),
            ),
            "task.memory",
        ),
        (
            event(
                "exploded",
                uuid::Uuid::new_v4(),
                &format!(r#""image":"{IMAGE}""#),
            ),
            "state",
        ),
        (
            event(
                "running",
                uuid::Uuid::new_v4(),
                r#""image":"Not An Image!""#,
            ),
            "task.image",
        ),
        (
            // 300 KB: under NATS' 1 MB message limit, over Cube's 256 KiB event limit.
            format!(r#"{{"padding":"{}"}}"#, "x".repeat(300 * 1024)),
            "limit is 262144 bytes",
        ),
    ];
    for (payload, expected) in &cases {
        js.publish(EVENTS, payload.clone().into()).await?.await?;
        let r = next_rejection(&mut rejected).await?;
        assert!(
            r.reason.contains(expected),
            "reason {:?} should mention {expected:?}",
            r.reason
        );
        assert_eq!(r.subject, EVENTS);
    }

    // The sender of the wrong-typed task can ask about it and learn why it failed.
    let refused = cluster.task(wrong_type_id).await?;
    assert_eq!(refused.state, State::Failed);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap_or("")
            .contains("task.memory"),
        "{:?}",
        refused.error
    );

    // 2 MB is over NATS' max_payload: the client refuses it before it reaches the server.
    let err = js.publish(EVENTS, vec![b' '; 2 << 20].into()).await;
    assert!(err.is_err(), "a 2 MB message must be refused");

    // Nothing else was affected: the earlier task still runs, a new one starts.
    assert_eq!(cluster.task(before).await?.state, State::Running);
    let after = cluster.submit(task(&["true"])).await?;
    cluster.wait_state(after, State::Completed, WITHIN).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_task_with_the_reason() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let mut t = task(&["true"]);
    t.image = "cube-test/does-not-exist:1".to_string();
    let id = cluster.submit(t).await?;
    let failed = cluster
        .wait_state(id, State::Failed, Duration::from_secs(60))
        .await?;
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("cube-test/does-not-exist:1"), "{error}");
    let ok = cluster.submit(task(&["true"])).await?;
    cluster.wait_state(ok, State::Completed, WITHIN).await?;
    Ok(())
}

/// A task no node can hold stays pending and says why (like Kubernetes' "0/3 nodes are
/// available"), and is placed once a node with room joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_task_waits_with_a_reason_until_a_node_fits() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(0).await?;
    let small = cluster.add_worker(|c| c.memory = Some(128 << 20)).await?;
    let mut t = task(&["true"]);
    t.memory = 512 << 20;
    let id = cluster.submit(t).await?;
    let pending = cube_tests::eventually(WITHIN, "the task says why it waits", || async {
        let t = cluster.task(id).await?;
        anyhow::ensure!(
            t.state == State::Pending && t.error.is_some(),
            "{} {:?}",
            t.state,
            t.error
        );
        Ok(t)
    })
    .await?;
    let reason = pending.error.unwrap();
    assert!(
        reason.contains("0/1 nodes") && reason.contains("memory"),
        "{reason}"
    );
    let detail = cube(&cluster.nats.url(), &["status", &id.to_string()]).await?;
    assert!(
        detail.contains("Waiting because") && detail.contains("memory"),
        "{detail}"
    );

    let big = cluster.add_worker(|c| c.memory = Some(1 << 30)).await?;
    let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
    assert_eq!(done.worker.as_deref(), Some(big.as_str()));
    assert_ne!(done.worker.as_deref(), Some(small.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_explains_bad_flags_before_sending() -> anyhow::Result<()> {
    let cluster = Cluster::start(0).await?;
    let url = cluster.nats.url();
    let err = cube(&url, &["submit", "--image", "Not An Image!"])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("image"), "{err:#}");
    let err = cube(&url, &["submit", "--image", IMAGE, "--memory", "lots"])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("memory"), "{err:#}");
    let err = cube(&url, &["submit", "--image", IMAGE, "-p", "8080:99999"])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("99999"), "{err:#}");
    let err = cube(&url, &["status", "no-such-task"]).await.unwrap_err();
    assert!(format!("{err:#}").contains("no-such-task"), "{err:#}");
    Ok(())
}
