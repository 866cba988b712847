//! After a service event is published: whether the manager applied it or refused it (a
//! refusal is only seen in the journal and on `tasks.rejected`), and for `deploy` the rollout
//! followed until it succeeded, failed, or ran out of time.
//!
//! As `cube submit --wait` does, it listens to the journal (`cube.journal.>`, subscribed
//! before the event is published) for what the manager decided, and asks the manager every
//! second where the service stands in case an entry was missed.

use std::time::Duration;

use anyhow::{bail, Result};
use cube_client::{Chain, Cube};
use cube_shared::service::{RolloutState, ServiceEvent, ServiceKind, ServiceStatus};
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use cube_shared::JournalEntry;
use futures::StreamExt;

use crate::cmd::explain;
use crate::output::line;
use crate::wait::Progress;

/// How long to wait for the manager to apply or refuse an event.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// What became of a published event.
pub enum Confirmed {
    /// Applied; the manager's journal message, if it was seen.
    Applied(Option<String>),
    /// Neither applied nor refused within [`CONFIRM_WITHIN`]: stored, it applies when a
    /// manager reads it. Why it may not have been, if a question to the manager failed.
    Unconfirmed(Option<String>),
}

/// Publishes `event` and waits (briefly) for the manager's answer; prints the event id, then
/// the manager's message. Fails with the manager's reason if it refused the event.
pub async fn publish(cube: &Cube, event: &ServiceEvent) -> Result<Confirmed> {
    // Subscribed before publishing: the manager's decision cannot slip past.
    let journal = crate::wait::subscribe(cube.nats()).await?;
    cube.publish_service(event).await.map_err(explain)?;
    line(format_args!("{}", event.id));
    let confirmed = confirm(cube, journal, event).await?;
    match &confirmed {
        Confirmed::Applied(Some(message)) => line(message),
        Confirmed::Applied(None) => line(format_args!("{} {}: applied", event.action, event.name)),
        Confirmed::Unconfirmed(why) => eprintln!(
            "warning: the manager has not applied {} {} within {CONFIRM_WITHIN:?}{}; the event is stored and applies when a manager reads it (`cube events` shows what it decided)",
            event.action,
            event.name,
            why.as_deref()
                .map_or(String::new(), |w| format!(" (asking it: {w})"))
        ),
    }
    Ok(confirmed)
}

async fn confirm(
    cube: &Cube,
    mut journal: async_nats::Subscriber,
    event: &ServiceEvent,
) -> Result<Confirmed> {
    let deadline = tokio::time::sleep(CONFIRM_WITHIN);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    // The first tick is at once: the event was only just published.
    poll.tick().await;
    let mut last_error = None;
    // A question must not hold up the deadline for the client's whole timeout.
    let asking = cube.clone().with_timeout(Duration::from_secs(2));
    loop {
        tokio::select! {
            Some(msg) = journal.next() => {
                let Ok(entry) = wire::decode::<JournalEntry>(&msg.payload, MAX_MESSAGE_BYTES) else {
                    continue;
                };
                if entry.event_id != Some(event.id) {
                    continue;
                }
                if entry.kind == "rejected" {
                    bail!("the manager refused {} {}: {}", event.action, event.name, entry.message);
                }
                if entry.kind.starts_with("service-") {
                    return Ok(Confirmed::Applied(Some(entry.message)));
                }
            }
            _ = poll.tick() => match asking.service(&event.name).await {
                Ok(status) if status.service.applied.contains(&event.id) => {
                    return Ok(Confirmed::Applied(None));
                }
                Ok(_) => last_error = None,
                // No such service yet (a first deploy not yet applied), or no manager.
                Err(e) => last_error = Some(Chain(&e).to_string()),
            },
            _ = &mut deadline => return Ok(Confirmed::Unconfirmed(last_error)),
        }
    }
}

/// Where a rollout to `target` stands.
#[derive(Debug, PartialEq)]
enum Outcome {
    Going(String),
    Done(String),
    Failed(String),
}

fn outcome(status: &ServiceStatus, target: u64) -> Outcome {
    let svc = &status.service;
    let name = &svc.name;
    if svc.removed {
        return Outcome::Failed(format!("{name} was removed"));
    }
    let new_healthy = status
        .copies
        .iter()
        .filter(|c| c.version == target && c.healthy && !c.stopping)
        .count();
    let old = status
        .copies
        .iter()
        .filter(|c| c.version != target && !c.stopping)
        .count();
    let progress = format!(
        "version {target}: {new_healthy} of {} copies healthy, {} running{}",
        status.desired,
        status.running,
        match old {
            0 => String::new(),
            n => format!(", {n} of an older version"),
        }
    );
    let Some(r) = &svc.rollout else {
        return Outcome::Going(progress);
    };
    let why = r.message.as_deref().unwrap_or("no reason given");
    if r.to != target {
        return match svc.version_of(target) {
            Some(v) if v.failed => Outcome::Failed(format!(
                "the rollout of version {target} failed; {name} goes back to version {}: {why}",
                r.to
            )),
            _ => Outcome::Failed(format!(
                "version {target} was replaced by version {} (another deploy or a rollback)",
                r.to
            )),
        };
    }
    match r.state {
        RolloutState::Running => Outcome::Going(format!("rolling out {progress}")),
        RolloutState::AwaitingPromotion => Outcome::Done(format!(
            "{name}: the canaries of version {target} are healthy; `cube service promote {name}` goes on"
        )),
        RolloutState::Succeeded if status.healthy >= status.desired => Outcome::Done(format!(
            "{name}: version {target} rolled out, {} of {} copies healthy",
            status.healthy, status.desired
        )),
        RolloutState::Succeeded => Outcome::Going(format!("scaling {progress}")),
        RolloutState::Failed => Outcome::Failed(format!(
            "the rollout of version {target} failed: {why}"
        )),
        RolloutState::Superseded => Outcome::Failed(format!(
            "the rollout of version {target} was superseded (another deploy or a rollback)"
        )),
    }
}

/// Follows service `name`'s rollout until it succeeded (or waits for promotion), failed, or
/// `timeout` passed. A batch job is not followed: it runs to completion on its own time.
pub async fn rollout(cube: &Cube, name: &str, timeout: Duration) -> Result<()> {
    let mut journal = crate::wait::subscribe(cube.nats()).await?;
    let first = cube.service(name).await.map_err(explain)?;
    if first.service.kind == ServiceKind::Batch {
        eprintln!("{name} is a batch job: `cube service status {name}` shows its progress");
        return Ok(());
    }
    let target = first.service.version;
    let asking = cube.clone().with_timeout(Duration::from_secs(2));
    let mut progress = Progress::start();
    let mut state = outcome(&first, target);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.tick().await;
    loop {
        match &state {
            Outcome::Going(text) => progress.show(text),
            Outcome::Done(text) => {
                progress.clear();
                line(text);
                return Ok(());
            }
            Outcome::Failed(text) => {
                progress.clear();
                bail!("{text}");
            }
        }
        let ask = tokio::select! {
            Some(msg) = journal.next() => {
                match wire::decode::<JournalEntry>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(entry) if entry.service.as_deref() == Some(name) => {
                        progress.note(&format!("{}: {}", entry.kind, entry.message));
                        true
                    }
                    _ => false,
                }
            }
            _ = poll.tick() => true,
            _ = &mut deadline => {
                let text = match &state {
                    Outcome::Going(text) => text.clone(),
                    _ => unreachable!("returned above"),
                };
                progress.clear();
                bail!(
                    "{name} is not rolled out after {timeout:?}: {text}; the rollout goes on (`cube service status {name}`)"
                );
            }
        };
        if ask {
            match asking.service(name).await {
                Ok(status) => state = outcome(&status, target),
                Err(e) => progress.note(&format!("asking the manager: {}", Chain(&e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cube_shared::service::{CopyStatus, Rollout, Service, ServiceVersion, UpdatePolicy};
    use cube_shared::Task;

    fn status(rollout: RolloutState, to: u64, healthy: u32) -> ServiceStatus {
        let now = chrono::Utc::now();
        let version = |v| ServiceVersion {
            version: v,
            template: Task::new("busybox"),
            created_at: now,
            good: v == 1,
            failed: false,
        };
        let copy = |v, healthy| CopyStatus {
            task_id: uuid::Uuid::new_v4(),
            name: "web.1".into(),
            version: v,
            state: "running".into(),
            node: Some("w1".into()),
            healthy,
            stopping: false,
        };
        ServiceStatus {
            service: Service {
                name: "web".into(),
                kind: ServiceKind::Service,
                count: 2,
                update: UpdatePolicy::default(),
                max_failures: 3,
                version: to,
                versions: vec![version(1), version(2)],
                rollout: Some(Rollout {
                    from: Some(1),
                    to,
                    state: rollout,
                    started_at: now,
                    ended_at: None,
                    promoted: false,
                    message: Some("copy 1234 was not healthy within 5m".into()),
                }),
                removed: false,
                finished: None,
                next_copy: 3,
                applied: vec![],
                created_at: now,
                updated_at: now,
            },
            desired: 2,
            running: 2,
            healthy,
            completed: 0,
            failed: 0,
            copies: vec![copy(2, healthy > 0), copy(1, true)],
            endpoints: vec![],
        }
    }

    #[test]
    fn the_rollout_decides_the_outcome() {
        let going = outcome(&status(RolloutState::Running, 2, 1), 2);
        assert_eq!(
            going,
            Outcome::Going(
                "rolling out version 2: 1 of 2 copies healthy, 2 running, 1 of an older version"
                    .into()
            )
        );
        assert!(matches!(
            outcome(&status(RolloutState::Succeeded, 2, 2), 2),
            Outcome::Done(_)
        ));
        // Succeeded, but scaled up since: not all there yet.
        assert!(matches!(
            outcome(&status(RolloutState::Succeeded, 2, 1), 2),
            Outcome::Going(_)
        ));
        let Outcome::Failed(why) = outcome(&status(RolloutState::Failed, 2, 0), 2) else {
            panic!("a failed rollout fails");
        };
        assert!(why.contains("not healthy within 5m"), "{why}");
        // Reverted to version 1: version 2 failed.
        let mut reverted = status(RolloutState::Running, 1, 1);
        reverted.service.versions[1].failed = true;
        let Outcome::Failed(why) = outcome(&reverted, 2) else {
            panic!("a reverted rollout fails");
        };
        assert!(why.contains("goes back to version 1"), "{why}");
        assert!(matches!(
            outcome(&status(RolloutState::AwaitingPromotion, 2, 1), 2),
            Outcome::Done(d) if d.contains("cube service promote web")
        ));
        let mut removed = status(RolloutState::Running, 2, 1);
        removed.service.removed = true;
        assert!(matches!(outcome(&removed, 2), Outcome::Failed(_)));
    }
}
