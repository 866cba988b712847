//! The oracle of the gray-failure tests: what each task should be once a fault has healed
//! ([`Expect`]), checked against the manager's API and against Docker (its container list, and
//! the create and die events a [`crate::procs::CreateEvents`] recorded), with every difference
//! reported at once and a [`tally`] of what happened.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bollard::models::ContainerSummaryStateEnum;
use cube_shared::{NodeState, State, Task, LABEL_TASK_ID, LABEL_WORKER};
use uuid::Uuid;

use crate::eventually;
use crate::procs::ProcCluster;

/// What a task should be once the fault has healed: `copy` running (its worker, container,
/// generation and restart count), and Docker having created `creates` containers for it and
/// seen `deaths` of them die.
pub struct Expect {
    pub copy: Task,
    pub creates: usize,
    pub deaths: usize,
}

/// Every task as it was, never restarted: one container created, none died.
pub fn untouched(before: &HashMap<Uuid, Task>) -> HashMap<Uuid, Expect> {
    before
        .iter()
        .map(|(id, t)| {
            let e = Expect {
                copy: t.clone(),
                creates: 1,
                deaths: 0,
            };
            (*id, e)
        })
        .collect()
}

/// After a heal: waits (up to a minute) until every worker is ready again, lets `linger` pass
/// (two TTL + grace, say: a fence or a restart would happen then), and checks each task against
/// what it should be ([`check`]).
pub async fn settled(
    c: &mut ProcCluster,
    expect: &HashMap<Uuid, Expect>,
    linger: Duration,
) -> Result<()> {
    let names = c.worker_names().to_vec();
    eventually(crate::WITHIN, "every worker is ready again", || async {
        let nodes = c.cube().nodes().await?;
        for name in &names {
            let state = nodes.iter().find(|n| &n.name == name).map(|n| n.state);
            ensure!(state == Some(NodeState::Ready), "{name} is {state:?}");
        }
        Ok(())
    })
    .await?;
    tokio::time::sleep(linger).await;
    c.check_alive()?;
    check(c, expect).await
}

/// Checks every task against what it should be, from the manager's API and from Docker, and
/// fails with every difference found (and a tally of what happened).
pub async fn check(c: &ProcCluster, expect: &HashMap<Uuid, Expect>) -> Result<()> {
    let tasks = c.tasks().await.context("the manager's task list")?;
    let mut problems = Vec::new();
    for (id, e) in expect {
        let was = &e.copy;
        let kind = format!(
            "task {id} ({:?}, was on {:?})",
            was.restart_policy, was.worker
        );
        match tasks.get(id) {
            None => problems.push(format!("{kind}: unknown to the manager")),
            Some(t) => {
                if t.state != State::Running {
                    problems.push(format!(
                        "{kind}: the API shows {} (exit code {:?}, error {:?})",
                        t.state, t.exit_code, t.error
                    ));
                } else if t.worker != was.worker || t.container_id != was.container_id {
                    problems.push(format!(
                        "{kind}: the API shows it running on {:?} in {:?}, want {:?}",
                        t.worker,
                        short(&t.container_id),
                        short(&was.container_id)
                    ));
                }
                if (t.generation, t.restart_count) != (was.generation, was.restart_count) {
                    problems.push(format!(
                        "{kind}: restarted: generation {} → {}, restart count {} → {}",
                        was.generation, t.generation, was.restart_count, t.restart_count
                    ));
                }
                if t.node_unreachable {
                    problems.push(format!("{kind}: still shown node_unreachable"));
                }
            }
        }
        let copies = running_copies(c, *id).await?;
        let want = (was.worker.clone(), short(&was.container_id));
        if copies != [want.clone()] {
            problems.push(format!(
                "{kind}: Docker runs {copies:?}, want exactly {want:?}"
            ));
        }
        let (created, died) = (c.creates.count(*id), c.creates.died(*id));
        if (created, died) != (e.creates, e.deaths) {
            problems.push(format!(
                "{kind}: Docker created {created} containers and saw {died} die, want {} and {}",
                e.creates, e.deaths
            ));
        }
    }
    let ids: Vec<Uuid> = expect.keys().copied().collect();
    let tally = tally(c, &ids).await;
    eprintln!("after the fault: {tally}");
    if !problems.is_empty() {
        bail!(
            "{} problems after the fault; {tally}:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    let errors = c.creates.errors();
    ensure!(errors.is_empty(), "Docker's event stream broke: {errors:?}");
    Ok(())
}

/// The task's running containers, as Docker lists them: (worker label, short id).
pub async fn running_copies(c: &ProcCluster, id: Uuid) -> Result<Vec<(Option<String>, String)>> {
    Ok(c.containers(LABEL_TASK_ID, &id.to_string())
        .await?
        .into_iter()
        .filter(|k| k.state == Some(ContainerSummaryStateEnum::RUNNING))
        .map(|k| {
            let worker = k.labels.unwrap_or_default().get(LABEL_WORKER).cloned();
            (worker, short(&k.id))
        })
        .collect())
}

/// The first 12 characters of a container id, as `docker ps` shows it.
pub fn short(id: &Option<String>) -> String {
    id.as_deref()
        .map_or("none", |s| &s[..s.len().min(12)])
        .to_string()
}

/// One line on what happened to `ids`: their states in the API (with the errors), and
/// Docker's creates, deaths and running copies.
pub async fn tally(c: &ProcCluster, ids: &[Uuid]) -> String {
    let api = match c.tasks().await {
        Ok(tasks) => {
            let mut by: BTreeMap<String, usize> = BTreeMap::new();
            for t in ids.iter().filter_map(|id| tasks.get(id)) {
                let key = match &t.error {
                    Some(e) => format!("{} ({e})", t.state),
                    None => t.state.to_string(),
                };
                *by.entry(key).or_default() += 1;
            }
            let restarted = ids
                .iter()
                .filter_map(|id| tasks.get(id))
                .filter(|t| t.restart_count > 0)
                .count();
            format!("{by:?}, {restarted} with restarts")
        }
        Err(e) => format!("unavailable ({e:#})"),
    };
    let mut copies: BTreeMap<usize, usize> = BTreeMap::new();
    for id in ids {
        let n = running_copies(c, *id).await.map_or(usize::MAX, |v| v.len());
        *copies.entry(n).or_default() += 1;
    }
    let created: usize = ids.iter().map(|id| c.creates.count(*id)).sum();
    let died: usize = ids.iter().map(|id| c.creates.died(*id)).sum();
    format!(
        "{} tasks; API: {api}; Docker: {created} containers created, {died} died; tasks by \
         number of running copies: {copies:?}",
        ids.len()
    )
}
