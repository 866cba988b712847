//! Reading and checking what clients send about services: names, desired states and events,
//! every problem listed.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{ServiceAction, ServiceEvent, ServiceKind, ServiceSpec, MAX_COUNT};
use crate::validate::{validate_task, Invalid};
use crate::wire::{self, DecodeError, MAX_EVENT_BYTES};

/// Whether `name` can name a service: it becomes part of KV keys, Docker labels and task
/// names.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name `{}` must be 1–63 lowercase letters, digits or `-`, starting with a letter",
            crate::validate::excerpt(name)
        ))
    }
}

/// Checks a desired state; every problem is listed.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    if let Err(e) = validate_service_name(&spec.name) {
        problems.push(e);
    }
    if spec.count > MAX_COUNT {
        problems.push(format!(
            "count {} is above the limit of {MAX_COUNT}",
            spec.count
        ));
    }
    if let Err(Invalid(p)) = validate_task(&spec.template) {
        problems.extend(p.into_iter().map(|p| format!("template: {p}")));
    }
    if spec.template.service.is_some() || spec.template.service_version.is_some() {
        problems.push("template: `service` and `service_version` are set by Cube".to_string());
    }
    if spec.kind == ServiceKind::Batch
        && spec.template.restart_policy == crate::RestartPolicy::Always
    {
        problems.push(
            "template.restart_policy: a batch copy runs to completion; `always` would never let it"
                .to_string(),
        );
    }
    if spec.kind == ServiceKind::Batch && spec.count == 0 {
        problems.push("count: a batch job needs at least one completion".to_string());
    }
    if spec.update.canary() > MAX_COUNT || spec.update.max_parallel() > MAX_COUNT {
        problems.push(format!(
            "update: canary and max_parallel are at most {MAX_COUNT}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

/// Checks a service event: what its action needs is there, and what it carries is valid.
pub fn validate_service_event(event: &ServiceEvent) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    if let Err(e) = validate_service_name(&event.name) {
        problems.push(e);
    }
    match event.action {
        ServiceAction::Deploy => match &event.spec {
            None => problems.push("deploy needs `spec`".to_string()),
            Some(spec) => {
                if spec.name != event.name {
                    problems.push(format!(
                        "spec.name `{}` is not the event's name `{}`",
                        crate::validate::excerpt(&spec.name),
                        crate::validate::excerpt(&event.name)
                    ));
                }
                if let Err(Invalid(p)) = validate_spec(spec) {
                    problems.extend(p.into_iter().map(|p| format!("spec: {p}")));
                }
            }
        },
        ServiceAction::Scale => match event.count {
            None => problems.push("scale needs `count`".to_string()),
            Some(n) if n > MAX_COUNT => {
                problems.push(format!("count {n} is above the limit of {MAX_COUNT}"))
            }
            Some(_) => {}
        },
        ServiceAction::Rollback | ServiceAction::Promote | ServiceAction::Remove => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

/// Parses and validates a service event from any client. The template's `id` may be left
/// out (every copy gets its own).
pub fn decode_service_event(bytes: &[u8]) -> Result<ServiceEvent, DecodeError> {
    let mut value: Map<String, Value> = wire::decode(bytes, MAX_EVENT_BYTES)?;
    if let Some(Value::Object(spec)) = value.get_mut("spec") {
        if let Some(Value::Object(template)) = spec.get_mut("template") {
            template
                .entry("id")
                .or_insert_with(|| Uuid::nil().to_string().into());
        }
    }
    let bytes = serde_json::to_vec(&value).expect("JSON values serialise");
    let event: ServiceEvent = wire::decode(&bytes, usize::MAX)?;
    validate_service_event(&event)?;
    Ok(event)
}

/// Reads a desired state as a person writes it: a JSON object, whose template may leave out
/// its `id`. (`cube service deploy -f` also reads YAML and TOML into the same JSON first.)
pub fn spec_from_json(mut value: Value) -> Result<ServiceSpec, DecodeError> {
    if let Some(Value::Object(template)) = value
        .as_object_mut()
        .and_then(|spec| spec.get_mut("template"))
    {
        template
            .entry("id")
            .or_insert_with(|| Uuid::nil().to_string().into());
    }
    let bytes = serde_json::to_vec(&value).expect("JSON values serialise");
    let spec: ServiceSpec = wire::decode(&bytes, MAX_EVENT_BYTES)?;
    validate_spec(&spec)?;
    Ok(spec)
}
