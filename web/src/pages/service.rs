//! A service's page (`/services/NAME`): its counts and settings, copies, endpoints, versions
//! and events; and its row on the overview.

use axum::extract::{Path, State};
use axum::response::Html;
use cube_shared::service::{CopyStatus, Endpoint};
use cube_shared::{JournalEntry, Service, ServiceKind, ServiceStatus};
use maud::{html, Markup};

use super::{journal_table, layout, urlencode, wire_time, PageError};
use crate::api::ApiError;
use crate::App;

/// Where a service stands, in one word: removed, finished (a batch job), or its latest
/// rollout's state.
pub(crate) fn service_state(s: &Service) -> &'static str {
    if s.removed {
        "removed"
    } else if s.finished.is_some() {
        "finished"
    } else {
        s.rollout.as_ref().map_or("-", |r| r.state.as_str())
    }
}

/// What the latest rollout says (why it failed, that it reverts), or how a batch job ended.
fn service_message(s: &Service) -> String {
    s.finished
        .clone()
        .or_else(|| s.rollout.as_ref().and_then(|r| r.message.clone()))
        .unwrap_or_else(|| "-".to_string())
}

/// `version 2`, or `1 → 2` while (or once) a rollout moves from 1 to 2.
fn rollout_text(s: &Service) -> String {
    match &s.rollout {
        Some(r) => match r.from {
            Some(from) => format!("{from} → {}", r.to),
            None => r.to.to_string(),
        },
        None => "-".to_string(),
    }
}

/// A state shown as a badge: its class is the state's first word.
fn state_badge(state: &str) -> Markup {
    let class = state.split_whitespace().next().unwrap_or_default();
    html! { span class=(format!("badge {class}")) { (state) } }
}

pub(super) fn service_row(st: &ServiceStatus) -> Markup {
    let s = &st.service;
    html! {
        tr data-service=(s.name) data-state=(service_state(s)) {
            td.name { a href=(format!("/services/{}", urlencode(&s.name))) { (s.name) } }
            td.kind { (s.kind) }
            td.num.desired { (st.desired) }
            td.num.running { (st.running) }
            td.num.healthy { (st.healthy) }
            td.num.version { (s.version) }
            td.rollout { (state_badge(service_state(s))) }
            td.message { (service_message(s)) }
        }
    }
}

fn copy_row(c: &CopyStatus) -> Markup {
    html! {
        tr data-task=(c.task_id) data-state=(c.state) {
            td.mono { a href=(format!("/tasks/{}", c.task_id)) { (c.task_id.to_string()[..8]) } }
            td.name { (c.name) }
            td.num.version { (c.version) }
            td.state { (state_badge(&c.state)) @if c.stopping { " (stopping)" } }
            td.node { (c.node.as_deref().unwrap_or("-")) }
            td.healthy { (if c.healthy { "yes" } else { "no" }) }
        }
    }
}

fn endpoint_row(e: &Endpoint) -> Markup {
    let ports: Vec<String> = e.ports.iter().map(|(c, h)| format!("{h}→{c}")).collect();
    html! {
        tr data-task=(e.task_id) {
            td.mono { a href=(format!("/tasks/{}", e.task_id)) { (e.task_id.to_string()[..8]) } }
            td.node { (e.node) }
            td.address.mono { (e.address) }
            td.num.version { (e.version) }
            td.ports.mono { (if ports.is_empty() { "-".to_string() } else { ports.join(" ") }) }
        }
    }
}

/// The fields of a service's page, by name; app.js updates them by the same names.
fn service_fields(st: &ServiceStatus) -> Vec<(&'static str, String)> {
    let s = &st.service;
    let template = s.template();
    let mut fields = vec![
        ("desired", st.desired.to_string()),
        ("running", st.running.to_string()),
        ("healthy", st.healthy.to_string()),
    ];
    if s.kind == ServiceKind::Batch {
        fields.push(("completed", st.completed.to_string()));
        fields.push(("failed", st.failed.to_string()));
    }
    fields.extend([
        ("version", s.version.to_string()),
        ("rollout", rollout_text(s)),
        ("message", service_message(s)),
        (
            "image",
            template.map_or("-".to_string(), |t| t.image.clone()),
        ),
        (
            "command",
            template
                .filter(|t| !t.cmd.is_empty())
                .map_or("-".to_string(), |t| t.cmd.join(" ")),
        ),
        (
            "update",
            format!(
                "{} at a time, healthy for {:?} within {:?}, auto-revert {}, {} canaries",
                s.update.max_parallel(),
                s.update.min_healthy_time(),
                s.update.healthy_deadline(),
                if s.update.auto_revert() { "on" } else { "off" },
                s.update.canary()
            ),
        ),
        // As the JSON has them (app.js sets `updated` from it).
        ("created", wire_time(s.created_at)),
        ("updated", wire_time(s.updated_at)),
    ]);
    fields
}

pub(super) async fn service_page(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let status = app.cube.service(&name).await.map_err(ApiError::lookup)?;
    let events: Vec<JournalEntry> = app
        .cube
        .journal(cube_client::JOURNAL_SCAN, None)
        .await?
        .into_iter()
        .filter(|e| e.service.as_deref() == Some(status.service.name.as_str()))
        .collect();
    let start = events.len().saturating_sub(200);
    Ok(Html(
        layout(
            "service",
            &format!("{} · Cube", status.service.name),
            render_service(&status, &events[start..]),
        )
        .into_string(),
    ))
}

pub(crate) fn render_service(st: &ServiceStatus, events: &[JournalEntry]) -> Markup {
    let s = &st.service;
    let state = service_state(s);
    html! {
        div #service data-service=(s.name) data-state=(state) {
            h2 {
                span.name { (s.name) } " "
                span.badge.kind { (s.kind) } " "
                span #service-state class=(format!("badge {state}")) { (state) }
            }
            dl.fields {
                @for (k, v) in service_fields(st) {
                    dt { (k) } dd data-field=(k) { (v) }
                }
            }
        }
        section {
            h2 { "Copies" }
            table.copies {
                thead { tr { th { "task" } th { "name" } th { "version" } th { "state" } th { "node" } th { "healthy" } } }
                tbody #copies { @for c in &st.copies { (copy_row(c)) } }
            }
        }
        section {
            h2 { "Endpoints" }
            table.endpoints {
                thead { tr { th { "task" } th { "node" } th { "address" } th { "version" } th { "ports" } } }
                tbody #endpoints { @for e in &st.endpoints { (endpoint_row(e)) } }
            }
        }
        section {
            h2 { "Versions" }
            table.versions {
                thead { tr { th { "version" } th { "created" } th { "image" } th { "status" } } }
                tbody #versions {
                    @for v in s.versions.iter().rev() {
                        tr data-version=(v.version) {
                            td.num { (v.version) @if v.version == s.version { " (current)" } }
                            td.mono { (v.created_at.format("%Y-%m-%d %H:%M:%S")) }
                            td.image { (v.template.image) }
                            td { (if v.failed { "failed" } else if v.good { "good" } else { "-" }) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Events" }
            (journal_table("journal", events))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use cube_shared::Task;

    /// What a client or a node controls on a service's page (the template, a copy's node, an
    /// endpoint's address, a rollout's message, the journal) shows as text, never as markup.
    #[test]
    fn service_text_is_escaped() {
        use cube_shared::service::{Rollout, RolloutState, ServiceVersion};
        let evil = "<script>alert('x')</script>";
        let now = Utc::now();
        let mut template = Task::new(format!("img{evil}"));
        template.cmd = vec!["sh".into(), "-c".into(), format!("echo {evil}")];
        let service = Service {
            name: "web".into(),
            kind: ServiceKind::Service,
            count: 2,
            update: Default::default(),
            max_failures: 3,
            version: 2,
            versions: vec![
                ServiceVersion {
                    version: 1,
                    template: template.clone(),
                    created_at: now,
                    good: true,
                    failed: false,
                },
                ServiceVersion {
                    version: 2,
                    template,
                    created_at: now,
                    good: false,
                    failed: false,
                },
            ],
            rollout: Some(Rollout {
                from: Some(1),
                to: 2,
                state: RolloutState::Running,
                started_at: now,
                ended_at: None,
                promoted: false,
                message: Some(format!("reverting: {evil}")),
            }),
            removed: false,
            finished: None,
            next_copy: 3,
            applied: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        let copy = CopyStatus {
            task_id: uuid::Uuid::new_v4(),
            name: format!("web-1{evil}"),
            version: 2,
            state: format!("running{evil}"),
            node: Some(format!("<b>node</b>{evil}")),
            healthy: true,
            stopping: true,
        };
        let endpoint = Endpoint {
            task_id: copy.task_id,
            node: "<i>n</i>".into(),
            address: format!("10.0.0.1{evil}"),
            version: 2,
            ports: [("80/tcp\"><b>".to_string(), 8080)].into(),
        };
        let status = ServiceStatus {
            service,
            desired: 2,
            running: 1,
            healthy: 1,
            completed: 0,
            failed: 0,
            copies: vec![copy],
            endpoints: vec![endpoint],
        };
        let entry = JournalEntry::new("service-rollout", evil).service("web");
        let page = layout("service", "web · Cube", render_service(&status, &[entry])).into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("<i>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        // What the page shows, by the names app.js updates.
        assert!(page.contains("id=\"service-state\""), "{page}");
        assert!(page.contains("data-field=\"rollout\">1 → 2<"), "{page}");
        assert!(page.contains("data-field=\"running\">1<"), "{page}");

        let row = service_row(&status).into_string();
        assert!(!row.contains("<script>"), "{row}");
        assert!(row.contains("href=\"/services/web\""), "{row}");
        assert!(row.contains("badge running"), "{row}");
    }

    #[test]
    fn a_service_stands_removed_finished_or_as_its_rollout() {
        let now = Utc::now();
        let mut s = Service {
            name: "job".into(),
            kind: ServiceKind::Batch,
            count: 1,
            update: Default::default(),
            max_failures: 3,
            version: 1,
            versions: Vec::new(),
            rollout: None,
            removed: false,
            finished: None,
            next_copy: 1,
            applied: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        assert_eq!(service_state(&s), "-");
        assert_eq!(rollout_text(&s), "-");
        s.rollout = Some(cube_shared::Rollout {
            from: None,
            to: 1,
            state: cube_shared::RolloutState::AwaitingPromotion,
            started_at: now,
            ended_at: None,
            promoted: false,
            message: None,
        });
        assert_eq!(service_state(&s), "awaiting-promotion");
        assert_eq!(rollout_text(&s), "1");
        s.finished = Some("every completion done".into());
        assert_eq!(service_state(&s), "finished");
        assert_eq!(service_message(&s), "every completion done");
        s.removed = true;
        assert_eq!(service_state(&s), "removed");
    }
}
