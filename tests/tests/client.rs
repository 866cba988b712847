//! `cube-client` against a real cluster: `wait` fails early on a task that ended otherwise,
//! a resubmission with another specification is refused at once, and the journal can be
//! followed from before a submission.

use std::time::Duration;

use anyhow::{Context, Result};
use cube_client::Error;
use cube_shared::State;
use cube_tests::{task, Cluster};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_waits_checks_and_follows() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let cube = cluster.cube();
    let mut journal = cube.follow_journal(0).await?;

    // A task that cannot start fails for good: waiting for it to run ends then, not after
    // the whole wait.
    let broken = cube.submit(task(&["/no/such/program"])).await?.task.id;
    let started = tokio::time::Instant::now();
    match cube.wait(broken, State::Running, WITHIN).await {
        Err(Error::Ended { task, wanted }) => {
            assert_eq!(
                (task.id, task.state, wanted),
                (broken, State::Failed, State::Running)
            );
        }
        other => panic!("waiting for a broken task to run: {other:?}"),
    }
    assert!(started.elapsed() < WITHIN / 2, "{:?}", started.elapsed());

    let quick = task(&["true"]);
    let id = cube.submit(quick.clone()).await?.task.id;
    let done = cube.wait(id, State::Completed, WITHIN).await?;
    assert_eq!(done.exit_code, Some(0));
    let waited = cube
        .wait(id, State::Running, Duration::from_millis(1))
        .await;
    assert!(matches!(waited, Err(Error::Ended { .. })), "{waited:?}");

    // The same specification again is fine; another one under the same id is not.
    cube.check_resubmission(&quick).await?;
    let mut other = quick.clone();
    other.cmd = vec!["sleep".into(), "1".into()];
    let refused = cube.check_resubmission(&other).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(c)) if c.id == id),
        "{refused:?}"
    );
    let unknown = cube.task(&Uuid::new_v4().to_string()).await;
    assert!(matches!(unknown, Err(Error::Manager(_))), "{unknown:?}");

    // Followed from before the submissions, the journal tells of both.
    let mut submitted = Vec::new();
    while !(submitted.contains(&broken) && submitted.contains(&id)) {
        let read = tokio::time::timeout(WITHIN, journal.next())
            .await
            .context("no journal entry within 30 s")?
            .context("the journal ended")??;
        let entry = read.entry?;
        if entry.kind == "submitted" {
            submitted.extend(entry.task_id);
        }
    }
    // The stored journal may lag what went live by up to 20 ms.
    cube_tests::eventually(Duration::from_secs(10), "the journal stored", || async {
        let last = cube.journal(50, Some(id)).await?;
        anyhow::ensure!(
            last.first().map(|e| e.kind.as_str()) == Some("submitted"),
            "{last:?}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// More nodes than one reply holds (about 2,000): `nodes()` reads them a page at a time and
/// gets every one, each once, sorted by name. Before paging it got the first page only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_listed_however_many_there_are() -> Result<()> {
    use cube_shared::{subjects::heartbeat_for, wire::encode, Node};
    const NODES: usize = 5_000;
    let cluster = Cluster::start(0).await?;
    let cube = cluster.cube();
    // Heartbeats as 5,000 workers would send them (with room for tasks, no task running),
    // again each round: core NATS keeps none for a manager still starting.
    let names: Vec<String> = (0..NODES).map(|i| format!("paged-{i:05}")).collect();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let listed = loop {
        for name in &names {
            let node = Node::ready(name, 2.0, 1 << 30);
            cluster
                .client
                .publish(heartbeat_for(name), encode(&node))
                .await?;
        }
        cluster.client.flush().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listed: Vec<String> = match cube.nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .map(|n| n.name)
                .filter(|n| n.starts_with("paged-"))
                .collect(),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) => continue,
        };
        if listed.len() >= NODES || tokio::time::Instant::now() > deadline {
            break listed;
        }
    };
    assert_eq!(listed, names, "every node, once, by name");
    Ok(())
}
