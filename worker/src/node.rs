//! The worker as a node of the cluster: its heartbeats (which also set what it offers) and
//! its last word when it leaves.

use std::sync::Arc;

use async_nats::jetstream::kv;
use chrono::Utc;
use cube_shared::subjects::heartbeat_for;
use cube_shared::wire::encode;
use cube_shared::{Node, NodeState, RunningTask};
use tracing::{debug, warn};

use crate::report::report;
use crate::run::Worker;
use crate::stats::Stats;

impl Worker {
    /// Heartbeats every interval until the worker shuts down.
    pub(crate) async fn beat(self: Arc<Self>, client: async_nats::Client, nodes: kv::Store) {
        let mut stats = self.stats();
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => self.heartbeat(&client, &nodes, &mut stats, false).await,
            }
        }
    }

    /// The last word of a worker that shuts down: with `stop_tasks_on_exit` its containers are
    /// stopped (and reported, so their restart policies place them elsewhere); otherwise they
    /// are left for the next worker of this name to adopt. A final heartbeat marked `leaving`
    /// tells the manager to send no more work.
    pub(crate) async fn leave(&self, client: &async_nats::Client, nodes: &kv::Store) {
        self.heartbeat(client, nodes, &mut self.stats(), true).await;
        if self.cfg.stop_tasks_on_exit {
            for (id, generation) in self.tasks.all_running() {
                let stopped = self.runtime.stop(id, generation, self.cfg.stop_grace).await;
                let code = stopped.ok().flatten();
                self.drain_logs(id).await;
                self.remove_container(id, generation).await;
                self.tasks.forget(id);
                let why = format!("stopped: worker {} shut down", self.cfg.name);
                let r = report(&self.cfg.name, id, generation).exit_code(code);
                self.report(r.failed(why)).await;
            }
        }
        if let Err(e) = client.flush().await {
            debug!(error = %e, "flushing the last messages");
        }
    }

    fn stats(&self) -> Stats {
        if self.cfg.host_stats {
            Stats::new()
        } else {
            Stats::none()
        }
    }

    /// Says what the node offers and runs, on the heartbeat subject and in the Node DB; what
    /// it offers is also what tasks from the shared queue are claimed against.
    async fn heartbeat(
        &self,
        client: &async_nats::Client,
        nodes: &kv::Store,
        stats: &mut Stats,
        leaving: bool,
    ) {
        let s = stats.sample();
        let (cores, memory) = (
            self.cfg.cpu.unwrap_or(s.cores),
            self.cfg.memory.unwrap_or(s.memory),
        );
        self.tasks.set_capacity((cores, memory));
        let running: Vec<RunningTask> = self
            .tasks
            .all_running()
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
            task_count: running.len() as u32,
            labels: self.cfg.labels.clone(),
            last_heartbeat: Utc::now(),
            version: cube_shared::VERSION.to_string(),
            state: NodeState::Ready,
            running,
            page: None,
            leaving,
        };
        let payload = encode(&node);
        match client
            .publish(heartbeat_for(&self.cfg.name), payload.clone())
            .await
        {
            Ok(()) => self.cfg.metrics.heartbeats.inc(),
            Err(e) => warn!(error = %e, "publishing a heartbeat"),
        }
        if let Err(e) = nodes.put(&self.cfg.name, payload).await {
            debug!(error = %e, "recording the node");
        }
    }
}

fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_default()
}
