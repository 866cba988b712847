//! Takes the charts' samples, through NATS like everything the web server knows: every
//! interval the tasks by state (the counts that come with `cube.api.tasks.list`) and each
//! node's CPU and memory (`cube.api.nodes.list`, from the workers' heartbeats); in between, the
//! placements, counted in the Task DB's updates (each placement stores its task `scheduled`
//! under a new generation: the same events the manager's `cube_placements_total` counts,
//! whichever manager leads).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation, Watch};
use chrono::Utc;
use cube_client::{Chain, Cube};

use cube_shared::service::SERVICE_KEY_PREFIX;
use cube_shared::subjects::TASK_DB;
use cube_shared::{wire, NodeState, State as TaskState, TaskListQuery};
use futures::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};
use uuid::Uuid;

use super::history::{NodeSample, Placements, Sample, MAX_NODES};
use super::Charts;

/// Samples every `interval` into `charts` until `shutdown`.
pub(crate) async fn run(
    cube: Cube,
    charts: Charts,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("charts", interval = ?interval);
    async {
        let mut placements = Counting::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                entry = next_entry(&mut placements.watch) => match entry {
                    Some(Ok(entry)) => placements.counter.entry(&entry),
                    Some(Err(e)) => {
                        debug!(error = %Chain(&e), "watching the Task DB; watching anew at the next sample");
                        placements.watch = None;
                    }
                    None => placements.watch = None,
                },
                _ = tick.tick() => {
                    let sample = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        s = take(&cube, &mut placements) => s,
                    };
                    charts.push(sample);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// The next update of the Task DB, or never while it is not watched.
async fn next_entry(
    watch: &mut Option<Watch>,
) -> Option<Result<Entry, async_nats::jetstream::kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// The counting of placements: the Task DB's watch, if any, and since when it counts.
#[derive(Default)]
struct Counting {
    watch: Option<Watch>,
    counter: PlacementCounter,
    since: Option<Instant>,
}

/// One sample: the placements since the last one (if they were counted all along), and the
/// tasks and nodes now. The watch is (re)made here when there is none, counting from then on.
async fn take(cube: &Cube, placements: &mut Counting) -> Sample {
    let now = Instant::now();
    let counted = match (&placements.watch, placements.since) {
        (Some(_), Some(since)) => Some(Placements {
            count: placements.counter.take(),
            over: now - since,
        }),
        _ => None,
    };
    if placements.watch.is_none() {
        placements.since = None;
        match watch(cube, &mut placements.counter).await {
            Ok(w) => {
                placements.watch = Some(w);
                placements.since = Some(Instant::now());
            }
            Err(e) => debug!(error = %e, "cannot count placements now"),
        }
    } else {
        placements.since = Some(now);
    }
    let (tasks, nodes) = tokio::join!(
        cube.tasks(&TaskListQuery {
            state: None,
            limit: Some(0),
        }),
        cube.nodes()
    );
    let tasks = match tasks {
        Ok(list) => Some(TaskState::ALL.map(|s| list.counts.get(&s).copied().unwrap_or(0))),
        Err(e) => {
            debug!(error = %Chain(&e), "no task counts in this sample");
            None
        }
    };
    let mut nodes = nodes.unwrap_or_else(|e| {
        debug!(error = %Chain(&e), "no nodes in this sample");
        Vec::new()
    });
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let nodes_total = nodes.len();
    let nodes = nodes
        .into_iter()
        // What a silent node reported last is not its use now: a gap in its line.
        .filter(|n| matches!(n.state, NodeState::Ready | NodeState::Draining))
        .take(MAX_NODES)
        .map(|n| NodeSample {
            name: n.name,
            cpu: n.cpu_usage,
            memory_used: n.memory_used,
        })
        .collect();
    Sample {
        at: Utc::now(),
        tasks,
        placements: counted,
        nodes,
        nodes_total,
    }
}

/// Watches the Task DB from now on, the counter knowing the tasks already `scheduled` (so
/// that a later write of one of them is not taken for a new placement).
async fn watch(cube: &Cube, counter: &mut PlacementCounter) -> Result<Watch, String> {
    let watch = cube
        .jetstream()
        .get_key_value(TASK_DB)
        .await
        .map_err(|e| format!("the Task DB: {}", Chain(&e)))?
        .watch_all()
        .await
        .map_err(|e| format!("watching the Task DB: {}", Chain(&e)))?;
    let scheduled = cube
        .tasks(&TaskListQuery {
            state: Some(TaskState::Scheduled),
            limit: None,
        })
        .await
        .map_err(|e| format!("the scheduled tasks: {}", Chain(&e)))?;
    *counter = PlacementCounter::default();
    for t in &scheduled.tasks {
        counter.observe(t.id, t.state, t.generation);
    }
    counter.take();
    Ok(watch)
}

/// Counts placements in the Task DB's updates: a task stored `scheduled` under a generation
/// not seen before for it is a new placement (a first one, a restart, a move off a draining
/// node). It remembers only the tasks that are `scheduled` now.
#[derive(Debug, Default)]
pub(crate) struct PlacementCounter {
    scheduled: HashMap<Uuid, u64>,
    counted: u64,
}

impl PlacementCounter {
    /// A write to (or removal from) the Task DB; services and other keys are not tasks.
    pub fn entry(&mut self, entry: &Entry) {
        if entry.key.starts_with(SERVICE_KEY_PREFIX) {
            return;
        }
        match entry.operation {
            Operation::Put => {
                if let Ok(task) = wire::decode_stored_task(&entry.value) {
                    self.observe(task.id, task.state, task.generation);
                }
            }
            // A record that moved to another key (its task was placed on another worker, or
            // on none): the put under its new key came first and said all there is.
            Operation::Delete | Operation::Purge => {}
        }
    }

    /// A task stored in `state` at its `generation`.
    pub fn observe(&mut self, id: Uuid, state: TaskState, generation: u64) {
        if state == TaskState::Scheduled {
            if self.scheduled.insert(id, generation) != Some(generation) {
                self.counted += 1;
            }
        } else {
            self.scheduled.remove(&id);
        }
    }

    /// The placements counted since the last call.
    pub fn take(&mut self) -> u64 {
        std::mem::take(&mut self.counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_generation_stored_scheduled_is_one_placement() {
        let mut c = PlacementCounter::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        c.observe(a, TaskState::Pending, 0);
        assert_eq!(c.take(), 0);
        // Placed, then written again while still scheduled (e.g. a worker took it from the
        // queue): one placement.
        c.observe(a, TaskState::Scheduled, 1);
        c.observe(a, TaskState::Scheduled, 1);
        c.observe(b, TaskState::Scheduled, 1);
        assert_eq!(c.take(), 2);
        assert_eq!(c.take(), 0);
        // Runs, fails, is restarted: a new generation, a new placement.
        c.observe(a, TaskState::Running, 1);
        c.observe(a, TaskState::Scheduled, 2);
        // Placed again before it ran (a placement timeout): a new generation too.
        c.observe(b, TaskState::Scheduled, 2);
        assert_eq!(c.take(), 2);
        // Only tasks scheduled now are remembered.
        c.observe(a, TaskState::Running, 2);
        c.observe(b, TaskState::Completed, 2);
        assert!(c.scheduled.is_empty());
    }

    /// Its queries may hang (no NATS server answers here, so each waits for its timeout):
    /// the sampler still ends as soon as it is told.
    #[tokio::test]
    async fn the_sampler_ends_at_once_on_shutdown_even_mid_sample() {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        let charts = Charts::new(Duration::from_secs(1));
        let shutdown = CancellationToken::new();
        let sampler = charts.start(Cube::new(client), shutdown.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!sampler.is_finished());
        let asked = Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), sampler)
            .await
            .expect("the sampler did not end within a second of shutdown (likely deadlocked)")
            .unwrap();
        assert!(asked.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn tasks_already_scheduled_when_counting_began_are_not_counted_again() {
        let mut c = PlacementCounter::default();
        let a = Uuid::new_v4();
        c.observe(a, TaskState::Scheduled, 3);
        c.take();
        c.observe(a, TaskState::Scheduled, 3);
        assert_eq!(c.take(), 0);
    }
}
