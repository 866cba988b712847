//! The worker as a node of the cluster: its heartbeats (which also set what it offers) and
//! its last word when it leaves.
//!
//! A heartbeat lists every placement the worker has accepted (running, or being started), so
//! the manager can tell work in hand from work that vanished. A list longer than
//! [`HEARTBEAT_PAGE`] goes as several messages on the same subject, each a whole [`Node`] with
//! one page of the list, so that no message grows with the task count. Every send is bounded
//! in time: a heartbeat never waits for a NATS that is away.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use cube_shared::subjects::{heartbeat_for, kv_subject, NODE_DB};
use cube_shared::wire::encode;
use cube_shared::{Node, NodeState, Page, RunningTask, HEARTBEAT_PAGE};
use futures::StreamExt;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::report::report;
use crate::run::Worker;
use crate::stats::Stats;

/// How long one heartbeat message may take to be handed to NATS. While NATS is away its
/// outgoing buffer can fill up, and a send would wait for ever.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Node DB may take to store the node.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the last heartbeat (all its pages and the Node DB) may take on shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the last messages may take to reach NATS on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long, beyond the stop grace, stopping the containers may take on shutdown (with
/// `stop_tasks_on_exit`): their reports get this long to be stored.
const STOP_ALL_MARGIN: Duration = Duration::from_secs(3);

/// The heartbeat messages for `node` listing `placements`: one with the whole list (`page`
/// absent) if it has at most [`HEARTBEAT_PAGE`] entries, else one per page of that many, each
/// saying which page it is. Sorted by task, so pages are stable from one heartbeat to the
/// next.
pub(crate) fn pages(node: &Node, mut placements: Vec<RunningTask>) -> Vec<Node> {
    placements.sort_unstable_by_key(|p| (p.id, p.generation));
    let total = placements.len();
    let mut whole = node.clone();
    whole.task_count = total as u32;
    if total <= HEARTBEAT_PAGE {
        whole.running = placements;
        whole.page = None;
        return vec![whole];
    }
    let count = total.div_ceil(HEARTBEAT_PAGE);
    placements
        .chunks(HEARTBEAT_PAGE)
        .enumerate()
        .map(|(index, chunk)| Node {
            running: chunk.to_vec(),
            page: Some(Page {
                index: index as u32,
                count: count as u32,
                total: total as u32,
            }),
            ..whole.clone()
        })
        .collect()
}

/// The node as the Node DB keeps it: without its placement list, which only heartbeats carry
/// (so the record stays small whatever the task count).
pub(crate) fn record(node: &Node) -> Node {
    Node {
        running: Vec::new(),
        page: None,
        ..node.clone()
    }
}

/// How often the Node DB record is written again though nothing it says changed: it only
/// tells a manager that starts which nodes exist (liveness is the heartbeats'), so it need
/// not be fresh, but a record removed meanwhile (`cube nodes forget`) comes back.
pub(crate) const RECORD_REFRESH: Duration = Duration::from_secs(600);

/// The Node DB record last stored, and when.
pub(crate) type Recorded = Option<(Node, std::time::Instant)>;

/// Whether `record` must be stored, given what was `last` stored: the first, one that says
/// something new about what the node is or offers (capacity, labels, version, address, that it
/// is leaving), and one every [`RECORD_REFRESH`]. Usage samples (CPU, memory and disk used,
/// task count) and the heartbeat's time change every beat and do not count: stored every
/// second by every worker they made the bucket the cluster's busiest writer (10,000 workers,
/// 10,000 stored writes a second, each an fsync under `sync_interval: always`).
pub(crate) fn record_due(last: &Recorded, record: &Node, now: std::time::Instant) -> bool {
    let Some((stored, at)) = last else {
        return true;
    };
    let steady = |n: &Node| Node {
        cpu_usage: 0.0,
        memory_used: 0,
        disk_used: 0,
        task_count: 0,
        last_heartbeat: chrono::DateTime::UNIX_EPOCH,
        ..n.clone()
    };
    now.saturating_duration_since(*at) >= RECORD_REFRESH || steady(stored) != steady(record)
}

/// The worker's record in the Node DB, put as the bucket's own put does (a JetStream publish
/// on `$KV.cube-nodes.<worker>`), without first asking the server for the bucket's info:
/// ten thousand workers starting at once would each ask, and each request that a busy server
/// answers late is asked again.
#[derive(Clone)]
pub(crate) struct NodeDb {
    js: jetstream::Context,
    subject: String,
}

impl NodeDb {
    /// `worker`'s record. The bucket exists: a worker makes one only once the Task DB's fence
    /// is written, which a leader does after creating every bucket. Should an operator remove
    /// the bucket, a put is refused (no stream has the subject) and tried again at the next
    /// beat.
    pub(crate) fn new(js: jetstream::Context, worker: &str) -> NodeDb {
        NodeDb {
            js,
            subject: kv_subject(NODE_DB, worker),
        }
    }

    async fn put(&self, record: bytes::Bytes) -> Result<(), async_nats::Error> {
        self.js.publish(self.subject.clone(), record).await?.await?;
        Ok(())
    }
}

impl Worker {
    /// Heartbeats every interval until the worker shuts down; `first` is told once the first
    /// heartbeat has been sent (or tried).
    pub(crate) async fn beat(
        self: Arc<Self>,
        client: async_nats::Client,
        nodes: NodeDb,
        first: oneshot::Sender<()>,
    ) {
        let mut first = Some(first);
        let mut stats = self.stats();
        let mut recorded: Recorded = None;
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.heartbeat(&client, &nodes, &mut stats, &mut recorded, false) => {}
            }
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
        }
    }

    /// The last word of a worker that shuts down, bounded in time whatever NATS does: with
    /// `stop_tasks_on_exit` its containers are stopped (and reported, so their restart
    /// policies place them elsewhere); otherwise they are left running for the next worker of
    /// this name to adopt, NATS or not. A final heartbeat marked `leaving` tells the manager to
    /// send no more work.
    pub(crate) async fn leave(&self, client: &async_nats::Client, nodes: &NodeDb) {
        let mut stats = self.stats();
        // Leaving is news: the record is stored whatever was stored before.
        let mut recorded = None;
        let last = self.heartbeat(client, nodes, &mut stats, &mut recorded, true);
        if tokio::time::timeout(LEAVE_TIMEOUT, last).await.is_err() {
            warn!("the last heartbeat could not be sent in {LEAVE_TIMEOUT:?}; leaving anyway");
        }
        if self.cfg.stop_tasks_on_exit {
            let within = self.cfg.stop_grace + STOP_ALL_MARGIN;
            if tokio::time::timeout(within, self.stop_all()).await.is_err() {
                warn!("stopping the containers took longer than {within:?}; leaving anyway");
            }
        }
        match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "flushing the last messages"),
            Err(_) => debug!("the last messages could not be flushed in {FLUSH_TIMEOUT:?}"),
        }
    }

    /// Stops every container, all at once (`stop_tasks_on_exit`), and reports each failed.
    async fn stop_all(&self) {
        let running = futures::stream::iter(self.tasks.all_running());
        let concurrency = self.cfg.concurrency.max(1);
        running
            .for_each_concurrent(concurrency, |(id, generation)| async move {
                let stopped = self.runtime.stop(id, generation, self.cfg.stop_grace).await;
                let code = stopped.ok().flatten();
                self.drain_logs(id).await;
                self.remove_container(id, generation).await;
                self.tasks.forget(id);
                let why = format!("stopped: worker {} shut down", self.cfg.name);
                let r = report(&self.cfg.name, id, generation).exit_code(code);
                self.report(r.failed(why)).await;
            })
            .await;
    }

    fn stats(&self) -> Stats {
        if self.cfg.host_stats {
            Stats::new()
        } else {
            Stats::none()
        }
    }

    /// Says what the node offers and runs, on the heartbeat subject (in pages, see [`pages`]),
    /// and in the Node DB (without the list) when [`record_due`]; what it offers is also what
    /// tasks from the shared queue are claimed against.
    async fn heartbeat(
        &self,
        client: &async_nats::Client,
        nodes: &NodeDb,
        stats: &mut Stats,
        recorded: &mut Recorded,
        leaving: bool,
    ) {
        let s = stats.sample();
        let (cores, memory) = (
            self.cfg.cpu.unwrap_or(s.cores),
            self.cfg.memory.unwrap_or(s.memory),
        );
        self.tasks.set_capacity((cores, memory));
        let placements: Vec<RunningTask> = self
            .tasks
            .all_accepted()
            .into_iter()
            .map(|(id, generation)| RunningTask { id, generation })
            .collect();
        let node = Node {
            name: self.cfg.name.clone(),
            address: hostname(),
            cores,
            cpu_usage: s.cpu_usage,
            memory,
            memory_used: s.memory_used,
            memory_allocated: 0,
            disk: s.disk,
            disk_used: s.disk_used,
            disk_allocated: 0,
            cpu_allocated: 0.0,
            task_count: 0,
            labels: self.cfg.labels.clone(),
            last_heartbeat: Utc::now(),
            version: cube_shared::VERSION.to_string(),
            state: NodeState::Ready,
            running: Vec::new(),
            page: None,
            leaving,
        };
        let subject = heartbeat_for(&self.cfg.name);
        let pages = pages(&node, placements);
        let mut sent = true;
        for page in &pages {
            let publish = client.publish(subject.clone(), encode(page));
            match tokio::time::timeout(SEND_TIMEOUT, publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "publishing a heartbeat");
                    sent = false;
                    break;
                }
                Err(_) => {
                    warn!(
                        "publishing a heartbeat took longer than {SEND_TIMEOUT:?}; NATS is away?"
                    );
                    sent = false;
                    break;
                }
            }
        }
        if sent {
            self.cfg.metrics.heartbeats.inc();
        }
        let stored = pages.first().map(record).unwrap_or(node);
        let now = std::time::Instant::now();
        if !record_due(recorded, &stored, now) {
            return;
        }
        match tokio::time::timeout(RECORD_TIMEOUT, nodes.put(encode(&stored))).await {
            // Not stored: tried again at the next beat.
            Ok(Ok(_)) => *recorded = Some((stored, now)),
            Ok(Err(e)) => debug!(error = %e, "recording the node"),
            Err(_) => debug!("recording the node took longer than {RECORD_TIMEOUT:?}"),
        }
    }
}

fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use cube_shared::wire::MAX_MESSAGE_BYTES;
    use uuid::Uuid;

    use super::*;

    fn node() -> Node {
        Node {
            name: "a-worker-with-a-long-name-0123456789".into(),
            address: "host.example.internal".into(),
            cores: 64.0,
            cpu_usage: 0.5,
            memory: 1 << 40,
            memory_used: 1 << 39,
            memory_allocated: 0,
            disk: 1 << 42,
            disk_used: 1 << 41,
            disk_allocated: 0,
            cpu_allocated: 0.0,
            task_count: 0,
            labels: [("zone".to_string(), "eu-west-1a".to_string())].into(),
            last_heartbeat: Utc::now(),
            version: cube_shared::VERSION.to_string(),
            state: NodeState::Ready,
            running: Vec::new(),
            page: None,
            leaving: false,
        }
    }

    fn placements(n: usize) -> Vec<RunningTask> {
        (0..n)
            .map(|i| RunningTask {
                id: Uuid::new_v4(),
                generation: u64::MAX - i as u64,
            })
            .collect()
    }

    #[test]
    fn a_short_list_goes_whole_in_one_heartbeat() {
        let list = placements(HEARTBEAT_PAGE);
        let pages = pages(&node(), list.clone());
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].page, None);
        assert_eq!(pages[0].task_count as usize, HEARTBEAT_PAGE);
        let sent: HashSet<_> = pages[0].running.iter().copied().collect();
        assert_eq!(sent, list.into_iter().collect());
        assert_eq!(super::pages(&node(), Vec::new())[0].running, vec![]);
    }

    #[test]
    fn five_thousand_placements_go_in_pages_that_each_fit_a_message() {
        let list = placements(5_000);
        let pages = pages(&node(), list.clone());
        let count = 5_000usize.div_ceil(HEARTBEAT_PAGE);
        assert_eq!(pages.len(), count);
        let mut seen = HashSet::new();
        for (i, page) in pages.iter().enumerate() {
            let bytes = encode(page).len();
            assert!(bytes <= MAX_MESSAGE_BYTES, "page {i} is {bytes} bytes");
            assert_eq!(
                page.page,
                Some(Page {
                    index: i as u32,
                    count: count as u32,
                    total: 5_000
                })
            );
            assert!(page.running.len() <= HEARTBEAT_PAGE);
            assert_eq!(page.task_count, 5_000);
            assert_eq!(page.name, node().name);
            seen.extend(page.running.iter().copied());
        }
        assert_eq!(seen, list.into_iter().collect(), "every placement, once");
        let decoded: Node = cube_shared::wire::decode(&encode(&pages[3]), MAX_MESSAGE_BYTES)
            .expect("the manager can read a page");
        assert_eq!(decoded.page, pages[3].page);
    }

    #[test]
    fn the_node_db_is_written_when_what_the_node_offers_changes_not_every_beat() {
        let t0 = std::time::Instant::now();
        let first = record(&node());
        assert!(record_due(&None, &first, t0), "the first record is stored");
        let last: Recorded = Some((first.clone(), t0));
        // A later beat: new usage figures, a new time, more tasks: nothing worth storing.
        let beat = Node {
            cpu_usage: 0.9,
            memory_used: 7,
            disk_used: 9,
            task_count: 40,
            last_heartbeat: Utc::now() + chrono::Duration::seconds(5),
            ..first.clone()
        };
        assert!(!record_due(&last, &beat, t0 + Duration::from_secs(1)));
        // What it is or offers changed: stored at once.
        let changes = [
            Node {
                cores: 32.0,
                ..beat.clone()
            },
            Node {
                memory: 1 << 30,
                ..beat.clone()
            },
            Node {
                disk: 1,
                ..beat.clone()
            },
            Node {
                labels: Default::default(),
                ..beat.clone()
            },
            Node {
                version: "0.0.0".into(),
                ..beat.clone()
            },
            Node {
                address: "elsewhere".into(),
                ..beat.clone()
            },
            Node {
                leaving: true,
                ..beat.clone()
            },
        ];
        for changed in changes {
            assert!(
                record_due(&last, &changed, t0 + Duration::from_secs(1)),
                "{changed:?}"
            );
        }
        // Nothing changed, but the record is old: stored again.
        assert!(!record_due(
            &last,
            &beat,
            t0 + RECORD_REFRESH - Duration::from_millis(1)
        ));
        assert!(record_due(&last, &beat, t0 + RECORD_REFRESH));
    }

    #[test]
    fn the_node_db_keeps_the_node_without_its_list() {
        let pages = pages(&node(), placements(5_000));
        let stored = record(&pages[0]);
        assert!(stored.running.is_empty());
        assert_eq!((stored.page, stored.task_count), (None, 5_000));
        assert!(encode(&stored).len() < 1024);
    }
}
