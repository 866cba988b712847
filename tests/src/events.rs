//! Docker's own record of what happened to a cluster's containers ([`CreateEvents`]): which
//! containers it created, and which died, for each task id, independently of what Cube believes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use cube_shared::{LABEL_TASK_ID, LABEL_WORKER};
use cube_worker::runtime::DockerRuntime;
use futures::StreamExt;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{unique, IMAGE};

/// What the Docker engine reported: the containers created, and those that died (exited, were
/// stopped or killed), for each task id, from its event stream (`type=container`,
/// `event=create|die`, `label=cube.worker=<worker>`), recorded from before the worker starts.
/// A container id is counted once however often it is seen (a reconnected stream replays
/// recent events).
#[derive(Default)]
pub struct CreateEvents {
    seen: Arc<Mutex<Seen>>,
    streams: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    /// task id (the label's value, as Docker reported it) → container ids created for it.
    creates: HashMap<String, HashSet<String>>,
    /// task id → containers of it that died.
    deaths: HashMap<String, HashSet<String>>,
    /// Containers created with the worker label but no task id (the recorder's probes).
    probes: HashSet<String>,
    /// Problems with the event streams: if any, the counts cannot be trusted.
    errors: Vec<String>,
}

impl CreateEvents {
    /// Starts recording the containers Docker creates for `worker`, and returns once the
    /// recording is known to be live: a probe container with the worker's label (and no task
    /// id) has been created, seen in the stream, and removed.
    pub async fn watch(&mut self, docker: &DockerRuntime, worker: &str) -> Result<()> {
        let docker_client = docker.client().clone();
        let seen = self.seen.clone();
        let label = format!("{LABEL_WORKER}={worker}");
        let handle = tokio::spawn(async move {
            // Only a replay of the last moments: the probe below proves the stream is live.
            let mut since = unix_now() - 2.0;
            loop {
                let filters = HashMap::from([
                    ("type", vec!["container"]),
                    ("event", vec!["create", "die"]),
                    ("label", vec![label.as_str()]),
                ]);
                let options = EventsOptionsBuilder::default()
                    .since(&format!("{since:.9}"))
                    .filters(&filters)
                    .build();
                let mut events = docker_client.events(Some(options));
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(e) => {
                            lock(&seen)
                                .errors
                                .push(format!("Docker event stream for {label}: {e}"));
                            break;
                        }
                    };
                    if let Some(nanos) = event.time_nano {
                        since = since.max(nanos as f64 / 1e9 - 1.0);
                    }
                    let Some(actor) = event.actor else { continue };
                    let Some(id) = actor.id else { continue };
                    let attrs = actor.attributes.unwrap_or_default();
                    let mut seen = lock(&seen);
                    let died = event.action.as_deref() == Some("die");
                    match attrs.get(LABEL_TASK_ID) {
                        Some(task) if died => {
                            seen.deaths.entry(task.clone()).or_default().insert(id);
                        }
                        Some(task) => {
                            seen.creates.entry(task.clone()).or_default().insert(id);
                        }
                        None if !died => {
                            seen.probes.insert(id);
                        }
                        None => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        self.streams.push(handle);

        // The probe: created but never started.
        let name = format!("cube-probe-{}", unique(worker));
        let body = ContainerCreateBody {
            image: Some(IMAGE.to_string()),
            cmd: Some(vec!["true".to_string()]),
            labels: Some(HashMap::from([
                (LABEL_WORKER.to_string(), worker.to_string()),
                ("cube.probe".to_string(), "true".to_string()),
            ])),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let probe = docker
            .client()
            .create_container(Some(options), body)
            .await
            .context("creating the event recorder's probe container")?
            .id;
        let seen = self.seen.clone();
        let live = crate::eventually(
            Duration::from_secs(10),
            &format!("Docker's event stream reports the probe container for {worker}"),
            || {
                let found = lock(&seen).probes.contains(&probe);
                async move {
                    anyhow::ensure!(found, "not seen yet");
                    Ok(())
                }
            },
        )
        .await;
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        docker
            .client()
            .remove_container(&probe, Some(remove))
            .await
            .context("removing the probe container")?;
        live
    }

    /// How many containers Docker created for the task.
    pub fn count(&self, task: Uuid) -> usize {
        lock(&self.seen)
            .creates
            .get(&task.to_string())
            .map_or(0, HashSet::len)
    }

    /// How many containers of the task died (exited, were stopped or killed).
    pub fn died(&self, task: Uuid) -> usize {
        lock(&self.seen)
            .deaths
            .get(&task.to_string())
            .map_or(0, HashSet::len)
    }

    /// Task id (as Docker's label reported it) → containers created for it.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        lock(&self.seen)
            .creates
            .iter()
            .map(|(task, ids)| (task.clone(), ids.len()))
            .collect()
    }

    /// All containers created for tasks.
    pub fn total(&self) -> usize {
        lock(&self.seen).creates.values().map(HashSet::len).sum()
    }

    /// Problems with the event streams (empty if the counts can be trusted).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.seen).errors.clone()
    }

    /// Checks that Docker created exactly one container for each of `ids`, and none for any
    /// other task, and that the event streams never broke.
    pub fn assert_exactly_one_each(&self, ids: &[Uuid]) -> Result<()> {
        let errors = self.errors();
        anyhow::ensure!(
            errors.is_empty(),
            "the Docker event stream broke, counts are unreliable: {errors:?}"
        );
        let counts = self.counts();
        let wanted: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .collect();
        let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        let strangers: Vec<&String> = counts.keys().filter(|id| !wanted.contains(*id)).collect();
        anyhow::ensure!(
            missing.is_empty() && doubled.is_empty() && strangers.is_empty(),
            "Docker's create events: {} task ids with a container (want {}), {} containers in \
             all; no container for {} tasks {}; more than one for {} tasks {}; containers \
             for {} unknown task ids {}",
            counts.len(),
            wanted.len(),
            self.total(),
            missing.len(),
            first(&missing),
            doubled.len(),
            first(&doubled),
            strangers.len(),
            first(&strangers),
        );
        Ok(())
    }
}

impl Drop for CreateEvents {
    fn drop(&mut self) {
        for s in &self.streams {
            s.abort();
        }
    }
}

/// The first five items, for a message.
pub(crate) fn first<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(|i| format!("{i:?}")).collect();
    if items.len() > 5 {
        format!("[{}, …]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
