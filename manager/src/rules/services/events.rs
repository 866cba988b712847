//! Service events (`services.events`): deploy, scale, rollback, promote and remove, each
//! applied once to the service's record, or refused with a reason.

use chrono::{DateTime, Utc};
use cube_shared::service::{decode_service_event, ServiceVersion, KEPT_EVENT_IDS, KEPT_VERSIONS};
use cube_shared::subjects::SERVICE_EVENTS;
use cube_shared::{
    JournalEntry, Rollout, RolloutState, Service, ServiceAction, ServiceEvent, ServiceKind,
    ServiceSpec,
};
use tracing::info_span;
use uuid::Uuid;

use super::super::Rules;
use crate::metrics::RejectKind;

impl Rules {
    /// A message from `services.events`, received at `now`.
    pub fn on_service_event(&mut self, subject: &str, payload: &[u8], now: DateTime<Utc>) {
        let event = match decode_service_event(payload) {
            Ok(event) => event,
            Err(e) => {
                return self.reject(
                    RejectKind::InvalidEvent,
                    payload,
                    subject,
                    e.to_string(),
                    now,
                )
            }
        };
        let span = info_span!("service-event", event.id = %event.id, service = %event.name);
        let _entered = span.enter();
        if self
            .services
            .records
            .get(&event.name)
            .is_some_and(|s| s.applied.contains(&event.id))
        {
            return; // Delivered again: applied once already.
        }
        let outcome = match event.action {
            ServiceAction::Deploy => self.deploy(&event, now),
            ServiceAction::Scale => self.scale(&event),
            ServiceAction::Rollback => self.rollback(&event, now),
            ServiceAction::Promote => self.promote(&event),
            ServiceAction::Remove => self.remove(&event, now),
        };
        match outcome {
            Ok(message) => {
                let svc = self
                    .services
                    .records
                    .get_mut(&event.name)
                    .expect("applied to a recorded service");
                svc.applied.push(event.id);
                let excess = svc.applied.len().saturating_sub(KEPT_EVENT_IDS);
                svc.applied.drain(..excess);
                svc.updated_at = now;
                let name = event.name.clone();
                self.service_changed(&name);
                let mut entry =
                    JournalEntry::new(&format!("service-{}", event.action), message).service(&name);
                entry.event_id = Some(event.id);
                self.journal(entry, now);
            }
            Err((kind, reason)) => self.reject(
                kind,
                &cube_shared::wire::encode(&event),
                SERVICE_EVENTS,
                reason,
                now,
            ),
        }
    }

    fn deploy(&mut self, event: &ServiceEvent, now: DateTime<Utc>) -> Result<String, Refusal> {
        let spec: &ServiceSpec = event.spec.as_ref().expect("validated: deploy has a spec");
        let mut template = spec.template.clone();
        template.normalise();
        template.id = Uuid::nil();
        template.name = String::new();
        template.reset_status();
        let Some(svc) = self
            .services
            .records
            .get_mut(&spec.name)
            .filter(|s| !s.removed)
        else {
            let previous = self.services.records.remove(&spec.name);
            let version = previous
                .as_ref()
                .and_then(|p| p.versions.last())
                .map_or(1, |v| v.version + 1);
            let svc = Service {
                name: spec.name.clone(),
                kind: spec.kind,
                count: spec.count,
                update: spec.update.clone(),
                max_failures: spec.max_failures(),
                version,
                versions: vec![ServiceVersion {
                    version,
                    template,
                    created_at: now,
                    good: false,
                    failed: false,
                }],
                rollout: Some(new_rollout(None, version, now)),
                removed: false,
                finished: None,
                next_copy: previous.as_ref().map_or(1, |p| p.next_copy),
                applied: previous.map(|p| p.applied).unwrap_or_default(),
                created_at: now,
                updated_at: now,
            };
            let message = match svc.kind {
                ServiceKind::System => format!(
                    "{} created: version {version}, one copy on every eligible node",
                    svc.name
                ),
                kind => format!(
                    "{} created ({kind}): version {version}, {} {}",
                    svc.name,
                    svc.count,
                    if svc.count == 1 { "copy" } else { "copies" }
                ),
            };
            self.services.records.insert(svc.name.clone(), svc);
            return Ok(message);
        };
        if svc.kind != spec.kind {
            return Err((
                RejectKind::Conflict,
                format!(
                    "service {} is a {} service; remove it before deploying it as {}",
                    svc.name, svc.kind, spec.kind
                ),
            ));
        }
        svc.count = spec.count;
        svc.update = spec.update.clone();
        svc.max_failures = spec.max_failures();
        let same = svc.template().is_some_and(|t| t.same_spec(&template));
        if same {
            return Ok(format!(
                "{} updated: count {}, template unchanged (version {})",
                svc.name, svc.count, svc.version
            ));
        }
        let version = svc.versions.last().map_or(1, |v| v.version) + 1;
        let back_to = last_good(svc, version);
        if let Some(r) = svc.rollout.as_mut().filter(|r| r.state.is_active()) {
            r.state = RolloutState::Superseded;
            r.ended_at = Some(now);
        }
        svc.versions.push(ServiceVersion {
            version,
            template,
            created_at: now,
            good: false,
            failed: false,
        });
        svc.version = version;
        svc.finished = None;
        svc.rollout = Some(new_rollout(back_to, version, now));
        forget_old_versions(svc);
        Ok(format!(
            "{}: version {version} rolls out, {} at a time{}",
            svc.name,
            svc.update.max_parallel(),
            match svc.update.canary() {
                0 => String::new(),
                n => format!(", after {n} canaries and `cube service promote`"),
            }
        ))
    }

    fn scale(&mut self, event: &ServiceEvent) -> Result<String, Refusal> {
        let svc = self.live_service(&event.name)?;
        if svc.kind == ServiceKind::System {
            return Err((
                RejectKind::InvalidEvent,
                format!(
                    "{} is a system service: it runs one copy on every eligible node",
                    svc.name
                ),
            ));
        }
        let count = event.count.expect("validated: scale has a count");
        let before = std::mem::replace(&mut svc.count, count);
        Ok(format!("{} scaled from {before} to {count}", svc.name))
    }

    fn rollback(&mut self, event: &ServiceEvent, now: DateTime<Utc>) -> Result<String, Refusal> {
        let svc = self.live_service(&event.name)?;
        let current = svc.version;
        let target = match event.version {
            Some(v) if svc.version_of(v).is_none() => {
                return Err((
                    RejectKind::InvalidEvent,
                    format!(
                        "{} has no version {v} (it keeps the last {KEPT_VERSIONS})",
                        svc.name
                    ),
                ))
            }
            Some(v) => v,
            None => last_good(svc, current).ok_or_else(|| {
                (
                    RejectKind::InvalidEvent,
                    format!("{} has no earlier good version to go back to", svc.name),
                )
            })?,
        };
        if target == current {
            return Err((
                RejectKind::InvalidEvent,
                format!("{} already runs version {target}", svc.name),
            ));
        }
        if let Some(r) = svc.rollout.as_mut().filter(|r| r.state.is_active()) {
            r.state = RolloutState::Superseded;
            r.ended_at = Some(now);
        }
        svc.version = target;
        svc.finished = None;
        let mut rollout = new_rollout(Some(current), target, now);
        rollout.message = Some(format!("rolled back from version {current}"));
        svc.rollout = Some(rollout);
        Ok(format!(
            "{}: back to version {target} from {current}",
            svc.name
        ))
    }

    fn promote(&mut self, event: &ServiceEvent) -> Result<String, Refusal> {
        let svc = self.live_service(&event.name)?;
        let name = svc.name.clone();
        match svc.rollout.as_mut() {
            Some(r) if r.state.is_active() && svc.update.canary() > 0 && !r.promoted => {
                r.promoted = true;
                r.state = RolloutState::Running;
                Ok(format!("{name}: canaries of version {} promoted", r.to))
            }
            _ => Err((
                RejectKind::InvalidEvent,
                format!("{name} has no rollout waiting for promotion"),
            )),
        }
    }

    fn remove(&mut self, event: &ServiceEvent, now: DateTime<Utc>) -> Result<String, Refusal> {
        let svc = self.live_service(&event.name)?;
        svc.removed = true;
        if let Some(r) = svc.rollout.as_mut().filter(|r| r.state.is_active()) {
            r.state = RolloutState::Superseded;
            r.ended_at = Some(now);
        }
        Ok(format!("{} removed: every copy stops", svc.name))
    }

    fn live_service(&mut self, name: &str) -> Result<&mut Service, Refusal> {
        self.services
            .records
            .get_mut(name)
            .filter(|s| !s.removed)
            .ok_or_else(|| (RejectKind::UnknownTask, format!("no service {name}")))
    }
}

/// Why an event was refused.
type Refusal = (RejectKind, String);

pub(super) fn new_rollout(from: Option<u64>, to: u64, now: DateTime<Utc>) -> Rollout {
    Rollout {
        from,
        to,
        state: RolloutState::Running,
        started_at: now,
        ended_at: None,
        promoted: false,
        message: None,
    }
}

/// The newest good version other than `except`: where a failed rollout goes back to.
/// Of the versions a service remembers, the oldest go: beyond [`KEPT_VERSIONS`], and while
/// the record is over [`MAX_RECORD_BYTES`] (templates are up to a TaskEvent's size, and the
/// record must fit one NATS message). The current version and the one its rollout would go
/// back to always stay, and those two fit.
fn forget_old_versions(svc: &mut Service) {
    let excess = svc.versions.len().saturating_sub(KEPT_VERSIONS);
    svc.versions.drain(..excess);
    let back_to = svc.rollout.as_ref().and_then(|r| r.from);
    while cube_shared::wire::encode(&*svc).len() > MAX_RECORD_BYTES {
        let current = svc.version;
        let Some(oldest) = svc
            .versions
            .iter()
            .position(|v| v.version != current && Some(v.version) != back_to)
        else {
            break;
        };
        svc.versions.remove(oldest);
    }
}

/// The most a service's record may take in the Task DB (NATS's default payload limit is 1 MiB).
pub(crate) const MAX_RECORD_BYTES: usize = 768 * 1024;

fn last_good(svc: &Service, except: u64) -> Option<u64> {
    svc.versions
        .iter()
        .rev()
        .find(|v| v.good && v.version != except)
        .map(|v| v.version)
}
