//! Waiting in tests: for a condition to become true ([`eventually`]), for one to hold
//! throughout a window ([`consistently`]), for a task's state, and for Cube's consumers to
//! have handled everything sent so far.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use cube_shared::{State, Task};

/// How long a test waits for what should happen within seconds. Generous, because the
/// suite shares two cores; a wait that can tell it is hopeless fails early instead ([`Never`]).
pub const WITHIN: Duration = Duration::from_secs(60);

/// A check's answer that no retry can change (the task awaited `running` has completed):
/// [`eventually`] gives up at once on it instead of waiting out its deadline.
#[derive(Debug)]
pub struct Never(pub String);

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (and it never will be)", self.0)
    }
}

impl std::error::Error for Never {}

/// Retries `check` every 100 ms until it succeeds or `within` passes; the error then says
/// what was awaited and the last reason it was not yet true. A [`Never`] ends it at once.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let began = tokio::time::Instant::now();
    let deadline = began + within;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<Never>().is_some() => {
                bail!(
                    "gave up after {:?} waiting until {what}: {e:#}",
                    began.elapsed()
                )
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {within:?} waiting until {what}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Checks every 100 ms, for `window`, that `check` holds, and fails the moment it does not:
/// "it stays that way", where a sleep and one look would only see the end of the window.
pub async fn consistently<F, Fut>(window: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let began = tokio::time::Instant::now();
    loop {
        if let Err(e) = check().await {
            bail!(
                "not {what} throughout {window:?}: after {:?}, {e:#}",
                began.elapsed()
            );
        }
        if began.elapsed() >= window {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One look at a task awaited in `state`: it is there (`Ok`), or not yet (an error to retry),
/// or it has ended otherwise and never will be ([`Never`]): `completed` is final, and
/// `failed` with no restart planned stays so.
pub fn in_state(task: Task, state: State) -> Result<Task> {
    let why = format!(
        "task {} is {} (exit code {:?}, error {:?})",
        task.id, task.state, task.exit_code, task.error
    );
    if task.state == state {
        Ok(task)
    } else if cube_client::has_ended(&task) {
        Err(Never(why).into())
    } else {
        Err(anyhow!(why))
    }
}

/// Waits until a durable consumer has delivered everything and had it all acknowledged.
pub async fn wait_drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
    within: Duration,
) -> Result<()> {
    eventually(within, &format!("{consumer} has nothing left"), || {
        drained(js, stream, consumer)
    })
    .await
}

/// Waits until nothing is in flight: the manager's submissions, then the work queues (the
/// shared one and each of `workers`'), then the state reports, all seen drained in one
/// pass. Cube acknowledges a message once its outcome is stored (work once the container
/// started and its report is stored), and in that order each one's effects are in the next,
/// so then everything the messages sent so far cause has happened.
pub async fn wait_idle(
    js: &async_nats::jetstream::Context,
    workers: &[String],
    within: Duration,
) -> Result<()> {
    use cube_shared::subjects::{self, EVENTS_STREAM, STATE_STREAM, WORK_STREAM};
    let mut consumers = vec![
        (EVENTS_STREAM, subjects::MANAGER_EVENTS_CONSUMER.to_string()),
        (WORK_STREAM, subjects::SHARED_WORK_CONSUMER.to_string()),
    ];
    consumers.extend(
        workers
            .iter()
            .map(|w| (WORK_STREAM, subjects::worker_consumer(w))),
    );
    consumers.push((STATE_STREAM, subjects::MANAGER_STATE_CONSUMER.to_string()));
    eventually(within, "nothing is in flight", || async {
        for (stream, consumer) in &consumers {
            drained(js, stream, consumer).await?;
        }
        Ok(())
    })
    .await
}

async fn drained(js: &async_nats::jetstream::Context, stream: &str, consumer: &str) -> Result<()> {
    let info = js.get_stream(stream).await?.consumer_info(consumer).await?;
    anyhow::ensure!(
        info.num_pending == 0 && info.num_ack_pending == 0,
        "{consumer}: {} pending, {} unacknowledged",
        info.num_pending,
        info.num_ack_pending
    );
    Ok(())
}
