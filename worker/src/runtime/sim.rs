//! A simulated runtime: containers that exist only in memory. For unit tests (it records
//! calls and fails on demand) and for scale benchmarks (one process hosting many workers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use cube_shared::Task;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Exec, Exit, Observed, Runtime, RuntimeError, Started};
use crate::probe::ProbeError;

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// How long a start takes.
    pub start_latency: Duration,
    /// How long a container runs before it exits with code 0 (`None`: until stopped).
    pub run_time: Option<Duration>,
}

struct SimContainer {
    id: String,
    worker: String,
    start_time: chrono::DateTime<Utc>,
}

#[derive(Default)]
struct SimState {
    /// Keyed by (task id, placement generation), like Docker's container names.
    running: HashMap<(Uuid, u64), SimContainer>,
    starts: u64,
    /// Images that "cannot be pulled".
    missing_images: Vec<String>,
    exit_senders: Vec<mpsc::Sender<Exit>>,
}

/// Cloneable handle; clones share the same simulated engine.
#[derive(Clone, Default)]
pub struct SimRuntime {
    config: SimConfig,
    // A plain mutex: every critical section is a few map operations and never awaits.
    state: Arc<Mutex<SimState>>,
}

impl SimRuntime {
    pub fn new(config: SimConfig) -> SimRuntime {
        SimRuntime {
            config,
            state: Arc::default(),
        }
    }

    /// Makes every later start of `image` fail as an image that cannot be pulled.
    pub fn fail_image(&self, image: &str) {
        self.lock().missing_images.push(image.to_string());
    }

    /// Ends a running container as if its process exited with `code`.
    pub fn exit(&self, task_id: Uuid, code: i64) {
        let senders = {
            let mut s = self.lock();
            let Some(key) = s.running.keys().find(|(id, _)| *id == task_id).copied() else {
                return;
            };
            s.running.remove(&key);
            (key.1, s.exit_senders.clone())
        };
        let (generation, senders) = senders;
        let exit = Exit {
            task_id,
            generation,
            exit_code: code,
            error: None,
            finish_time: Utc::now(),
        };
        for tx in senders {
            let _ = tx.try_send(exit.clone());
        }
    }

    /// Removes a running container without an exit event: a container removed behind the
    /// worker's back, or an exit the event stream missed.
    pub fn vanish(&self, task_id: Uuid) {
        self.lock().running.retain(|(id, _), _| *id != task_id);
    }

    pub fn running(&self) -> Vec<Uuid> {
        self.lock().running.keys().map(|(id, _)| *id).collect()
    }

    /// How many containers were really created (adoptions do not count).
    pub fn starts(&self) -> u64 {
        self.lock().starts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Runtime for SimRuntime {
    async fn start(&self, task: &Task, worker: &str) -> Result<Started, RuntimeError> {
        if !self.config.start_latency.is_zero() {
            tokio::time::sleep(self.config.start_latency).await;
        }
        let container_id = {
            let mut s = self.lock();
            if s.missing_images.contains(&task.image) {
                return Err(RuntimeError::ImageUnavailable {
                    image: task.image.clone(),
                    cause: "simulated: no such image".into(),
                });
            }
            if let Some(c) = s.running.get(&(task.id, task.generation)) {
                c.id.clone()
            } else {
                s.starts += 1;
                let id = format!("sim-{}", Uuid::new_v4().simple());
                let container = SimContainer {
                    id: id.clone(),
                    worker: worker.to_string(),
                    start_time: Utc::now(),
                };
                s.running.insert((task.id, task.generation), container);
                id
            }
        };
        if let Some(run_time) = self.config.run_time {
            let sim = self.clone();
            let id = task.id;
            tokio::spawn(async move {
                tokio::time::sleep(run_time).await;
                sim.exit(id, 0);
            });
        }
        Ok(Started {
            container_id,
            start_time: Utc::now(),
        })
    }

    async fn stop(
        &self,
        task_id: Uuid,
        generation: u64,
        _grace: Duration,
    ) -> Result<Option<i64>, RuntimeError> {
        Ok(self
            .lock()
            .running
            .remove(&(task_id, generation))
            .map(|_| 0))
    }

    async fn remove(&self, task_id: Uuid, generation: u64) -> Result<(), RuntimeError> {
        self.lock().running.remove(&(task_id, generation));
        Ok(())
    }

    fn exits(&self, _worker: &str) -> mpsc::Receiver<Exit> {
        let (tx, rx) = mpsc::channel(4096);
        self.lock().exit_senders.push(tx);
        rx
    }

    /// Never asked: [`probes`](Runtime::probes) says no, so simulated containers are always
    /// healthy. They have no network to answer on.
    async fn probe_address(&self, _task: &Task) -> Result<String, ProbeError> {
        Err(ProbeError::NoAddress)
    }

    /// Never asked, like [`probe_address`](Runtime::probe_address): a simulated command
    /// succeeds.
    async fn exec(&self, _task: &Task, _command: &str) -> Result<Exec, ProbeError> {
        Ok(Exec {
            exit_code: 0,
            output: String::new(),
        })
    }

    /// Running containers only: a simulated container is gone once it exits.
    async fn list(&self, worker: &str) -> Result<Vec<Observed>, RuntimeError> {
        Ok(self
            .lock()
            .running
            .iter()
            .filter(|(_, c)| c.worker == worker)
            .map(|((task_id, generation), c)| Observed {
                task_id: *task_id,
                container_id: c.id.clone(),
                generation: *generation,
                running: true,
                start_time: Some(c.start_time),
                exit: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_is_idempotent_per_task() {
        let sim = SimRuntime::default();
        let task = Task::new("busybox");
        let a = sim.start(&task, "w").await.unwrap();
        let b = sim.start(&task, "w").await.unwrap();
        assert_eq!(a.container_id, b.container_id);
        assert_eq!(sim.starts(), 1);
    }

    #[tokio::test]
    async fn exits_are_delivered() {
        let sim = SimRuntime::default();
        let mut exits = sim.exits("w");
        let task = Task::new("busybox");
        sim.start(&task, "w").await.unwrap();
        sim.exit(task.id, 3);
        let exit = exits.recv().await.unwrap();
        assert_eq!((exit.task_id, exit.exit_code), (task.id, 3));
        assert!(sim.running().is_empty());
    }

    #[tokio::test]
    async fn missing_images_fail() {
        let sim = SimRuntime::default();
        sim.fail_image("nope");
        let err = sim.start(&Task::new("nope"), "w").await.unwrap_err();
        assert!(matches!(err, RuntimeError::ImageUnavailable { .. }));
    }
}
