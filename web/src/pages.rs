//! The dashboard: server-rendered HTML (maud escapes every interpolated string) and one small
//! script, `app.js`, that keeps the page current from `/api/stream`. Assets are compiled in.

use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use cube_shared::service::{CopyStatus, Endpoint};
use cube_shared::units::{age, format_bytes};
use cube_shared::{
    JournalEntry, ManagerInfo, ManagerRole, Node, Service, ServiceKind, ServiceStatus,
    State as TaskState, Task,
};
use maud::{html, Markup, DOCTYPE};

use crate::api::{filtered_tasks, ApiError, TasksFilter};
use crate::{App, Routes};
use cube_client::{LogTail, LOG_TAIL_BYTES};

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/", overview)
        .add(Method::GET, "/tasks/{id}", task_page)
        .add(Method::GET, "/services/{name}", service_page)
        .add(Method::GET, "/assets/{file}", asset)
}

const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            APP_JS,
        )
            .into_response(),
        "style.css" => (
            [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
            STYLE_CSS,
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// An error as a page.
struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<cube_client::Error> for PageError {
    fn from(e: cube_client::Error) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout(
            "error",
            "Cube",
            html! {
                h2 { "Error " (self.0.status.as_u16()) }
                p.error { (self.0.message) }
                p { a href="/" { "Back to the dashboard" } }
            },
        );
        (self.0.status, Html(body.into_string())).into_response()
    }
}

fn layout(page: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/assets/style.css";
            }
            body data-page=(page) {
                header {
                    h1 { a href="/" { "Cube" } }
                    span #live.live title="live updates" { "connecting…" }
                }
                main { (body) }
                script src="/assets/app.js" {}
            }
        }
    }
}

/// A bar: `reserved` of `total` filled, `used` as a marker line.
fn bar(label: String, reserved: f64, used: f64, total: f64) -> Markup {
    let pct = |v: f64| {
        if total > 0.0 {
            (v / total * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        }
    };
    html! {
        div.bar title=(label) {
            div.fill style=(format!("width:{:.1}%", pct(reserved))) {}
            div.used style=(format!("left:{:.1}%", pct(used))) {}
            span { (label) }
        }
    }
}

fn node_row(n: &Node) -> Markup {
    let used_cores = n.cpu_usage * n.cores;
    html! {
        tr data-node=(n.name) {
            td { (n.name) }
            td { span class=(format!("badge {}", n.state)) { (n.state) } }
            td { (bar(format!("{:.1}/{} cores reserved, {:.0}% busy", n.cpu_allocated, n.cores, n.cpu_usage * 100.0), n.cpu_allocated, used_cores, n.cores)) }
            td { (bar(format!("{}/{} reserved, {} used", format_bytes(n.memory_allocated), format_bytes(n.memory), format_bytes(n.memory_used)), n.memory_allocated as f64, n.memory_used as f64, n.memory as f64)) }
            td.num { (n.task_count) }
            td { (age(Some(n.last_heartbeat))) " ago" }
        }
    }
}

fn manager_row(m: &ManagerInfo) -> Markup {
    let role = match m.role {
        ManagerRole::Leader => "leader",
        ManagerRole::Standby => "standby",
    };
    html! {
        tr data-manager=(m.id) data-role=(role) {
            td { span class=(format!("badge {role}")) { (role) } }
            td.num { (m.epoch.map_or("-".to_string(), |e| e.to_string())) }
            td.mono title=(m.id) { (m.id.to_string()[..8]) }
            td { (m.host) }
            td.num { (m.pid) }
            td.age data-time=(m.since.to_rfc3339()) { (age(Some(m.since))) }
            td.num { (m.terms) }
        }
    }
}

/// One line over the table: who leads at which epoch, and how many stand by.
pub(crate) fn managers_summary(managers: &[ManagerInfo]) -> String {
    let standbys = managers
        .iter()
        .filter(|m| m.role == ManagerRole::Standby)
        .count();
    let standbys = match standbys {
        0 => "no standby".to_string(),
        1 => "1 standby".to_string(),
        n => format!("{n} standbys"),
    };
    match managers.iter().find(|m| m.role == ManagerRole::Leader) {
        Some(l) => format!(
            "leader {} (pid {}) at epoch {}; {standbys}",
            l.host,
            l.pid,
            l.epoch.map_or("-".to_string(), |e| e.to_string())
        ),
        None if managers.is_empty() => "no manager answers".to_string(),
        None => {
            format!("no leader answers (a standby takes over when the lease expires); {standbys}")
        }
    }
}

fn task_row(t: &Task) -> Markup {
    html! {
        tr data-task=(t.id) data-state=(t.state) {
            td.mono { a href=(format!("/tasks/{}", t.id)) { (t.id.to_string()[..8]) } }
            td.name { (t.display_name()) }
            td.state { span class=(format!("badge {}", t.state)) { (t.shown_state()) } }
            td.worker { (t.worker.as_deref().unwrap_or("-")) }
            td.image { (t.image) }
            td.age data-time=[t.submitted_at.map(|s| s.to_rfc3339())] { (age(t.submitted_at)) }
        }
    }
}

fn journal_row(e: &JournalEntry) -> Markup {
    html! {
        tr {
            td.mono { (e.time.format("%H:%M:%S%.3f")) }
            td { (e.kind) }
            td.mono {
                @if let Some(id) = e.task_id {
                    a href=(format!("/tasks/{id}")) { (id.to_string()[..8]) }
                } @else { "-" }
            }
            td { (e.worker.as_deref().unwrap_or("-")) }
            td { (e.message) }
        }
    }
}

fn journal_table(id: &str, entries: &[JournalEntry]) -> Markup {
    html! {
        table.events {
            thead { tr { th { "time" } th { "kind" } th { "task" } th { "worker" } th { "message" } } }
            tbody #(id) {
                @for e in entries.iter().rev() { (journal_row(e)) }
            }
        }
    }
}

async fn overview(
    State(app): State<App>,
    Query(filter): Query<TasksFilter>,
) -> Result<Html<String>, PageError> {
    // The managers' answers take a moment to gather: meanwhile, the rest.
    let (managers, nodes, list, services) = tokio::join!(
        app.cube.managers(cube_client::MANAGERS_WAIT),
        app.cube.nodes(),
        filtered_tasks(&app, &filter),
        app.cube.services()
    );
    let (managers, nodes, list, services) = (managers?, nodes?, list?, services?);
    // Counts by state over all tasks: the manager sends them with every list.
    let counts: Vec<(TaskState, usize)> = TaskState::ALL
        .into_iter()
        .map(|s| (s, list.counts.get(&s).copied().unwrap_or(0)))
        .collect();
    let events = app.cube.journal(30, None).await?;
    let state = filter.state.clone().unwrap_or_default();
    let node = filter.node.clone().unwrap_or_default();
    let link = |s: &str| {
        let mut q = Vec::new();
        if !s.is_empty() {
            q.push(format!("state={s}"));
        }
        if !node.is_empty() {
            q.push(format!("node={}", urlencode(&node)));
        }
        if q.is_empty() {
            "/".to_string()
        } else {
            format!("/?{}", q.join("&"))
        }
    };
    let body = html! {
        section #managers-section {
            h2 { "Managers" }
            p #managers-summary { (managers_summary(&managers)) }
            table.managers {
                thead { tr { th { "role" } th { "epoch" } th { "id" } th { "host" } th { "pid" } th { "since" } th { "terms" } } }
                tbody #managers { @for m in &managers { (manager_row(m)) } }
            }
        }
        section {
            h2 { "Nodes" }
            table.nodes {
                thead { tr { th { "name" } th { "state" } th { "cpu" } th { "memory" } th { "tasks" } th { "last seen" } } }
                tbody #nodes { @for n in &nodes { (node_row(n)) } }
            }
            @if nodes.is_empty() { p.empty #no-nodes { "No workers yet: start one with `cube worker`." } }
        }
        section #services-section {
            h2 { "Services" }
            table.services {
                thead { tr { th { "name" } th { "kind" } th { "desired" } th { "running" } th { "healthy" } th { "version" } th { "rollout" } th { "message" } } }
                tbody #services { @for s in &services { (service_row(s)) } }
            }
            @if services.is_empty() { p.empty #no-services { "No services yet: deploy one with `cube service deploy`." } }
        }
        section {
            h2 { "Tasks" }
            nav.filters {
                a href=(link("")) class=[state.is_empty().then_some("on")] { "all" }
                @for (s, n) in &counts {
                    a href=(link(s.as_str())) class=[(state == s.as_str()).then_some("on")] data-count=(s) {
                        (s) " " span.count { (n) }
                    }
                }
                form method="get" action="/" {
                    @if !state.is_empty() { input type="hidden" name="state" value=(state); }
                    label { "node " select name="node" onchange="this.form.submit()" {
                        option value="" { "any" }
                        @for n in &nodes {
                            option value=(n.name) selected[n.name == node] { (n.name) }
                        }
                    } }
                }
            }
            table.tasks data-filter-state=(state) data-filter-node=(node) {
                thead { tr { th { "id" } th { "name" } th { "state" } th { "worker" } th { "image" } th { "age" } } }
                tbody #tasks { @for t in &list.tasks { (task_row(t)) } }
            }
            @if list.total > list.tasks.len() {
                p.note { (list.tasks.len()) " of " (list.total) " tasks shown" }
            }
        }
        section {
            h2 { "Events" }
            (journal_table("journal", &events))
        }
    };
    Ok(Html(layout("overview", "Cube", body).into_string()))
}

async fn task_page(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let task = app.cube.task(&id).await.map_err(ApiError::lookup)?;
    let events = app.cube.journal(200, Some(task.id)).await?;
    let logs = app.cube.logs(task.id).await?;
    Ok(Html(
        layout(
            "task",
            &format!("{} · Cube", task.display_name()),
            render_task(&task, &events, &logs),
        )
        .into_string(),
    ))
}

pub(crate) fn render_task(task: &Task, events: &[JournalEntry], logs: &LogTail) -> Markup {
    let time = |t: Option<DateTime<Utc>>| t.map_or("-".to_string(), |t| t.to_rfc3339());
    let fields: Vec<(&str, String)> = vec![
        ("image", task.image.clone()),
        (
            "command",
            if task.cmd.is_empty() {
                "-".into()
            } else {
                task.cmd.join(" ")
            },
        ),
        ("worker", task.worker.clone().unwrap_or("-".into())),
        ("cpu", task.cpu.to_string()),
        (
            "memory",
            if task.memory == 0 {
                "-".into()
            } else {
                format_bytes(task.memory)
            },
        ),
        ("restart policy", task.restart_policy.to_string()),
        ("restarts", task.restart_count.to_string()),
        (
            "health",
            task.health.map_or("-".to_string(), |h| h.to_string()),
        ),
        ("submitted", time(task.submitted_at)),
        ("started", time(task.start_time)),
        ("finished", time(task.finish_time)),
        (
            "exit code",
            task.exit_code.map_or("-".into(), |c| c.to_string()),
        ),
        (
            if task.state == TaskState::Pending {
                "waiting because"
            } else {
                "error"
            },
            task.error.clone().unwrap_or("-".into()),
        ),
    ];
    html! {
        div #task data-task=(task.id) data-state=(task.state) {
            h2 {
                span.name { (task.display_name()) } " "
                span #task-state class=(format!("badge {}", task.state)) { (task.shown_state()) }
                @if task.state != TaskState::Completed {
                    button #stop type="button" { "Stop" }
                }
            }
            p.mono { (task.id) }
            dl.fields {
                @for (k, v) in &fields {
                    dt { (k) } dd data-field=(k) { (v) }
                }
                @if !task.env.is_empty() {
                    dt { "env" }
                    dd { ul.env { @for e in &task.env { li.mono { (e) } } } }
                }
                @if let Some(service) = &task.service {
                    dt { "service" }
                    dd data-field="service" {
                        a href=(format!("/services/{}", urlencode(service))) { (service) }
                        @if let Some(v) = task.service_version { " (version " (v) ")" }
                    }
                }
                @if !task.port_bindings.is_empty() {
                    dt { "ports" }
                    dd { @for (c, h) in &task.port_bindings { span.mono { (h) "→" (c) } " " } }
                }
            }
        }
        section {
            h2 { "Events" }
            (journal_table("journal", events))
        }
        section {
            h2 { "Output" @if logs.truncated { " (last " (LOG_TAIL_BYTES / 1024) " KiB)" } }
            @if logs.kept {
                pre #log data-kept="true" { (logs.text) }
            } @else {
                p #log data-kept="false" .empty { "no output kept" }
            }
        }
    }
}

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

fn service_row(st: &ServiceStatus) -> Markup {
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

async fn service_page(
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

/// A time as Cube's JSON writes it (`…Z`).
fn wire_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a client put in a task shows as text, never as markup.
    #[test]
    fn user_controlled_text_is_escaped() {
        let evil = "<script>alert('x')</script>";
        let mut task = Task::new("cube-busybox:latest");
        task.name = "web-1".into();
        task.env = vec![format!("EVIL={evil}\"><img src=x onerror=alert(1)>").into()];
        task.cmd = vec!["sh".into(), "-c".into(), format!("echo {evil}")];
        task.error = Some(format!("rejected: {evil}"));
        task.service = Some(format!("web{evil}"));
        task.service_version = Some(2);
        task.port_bindings
            .insert("80/tcp".into(), "8080\"<b>".into());
        let entry = JournalEntry::new("submitted", evil)
            .task(task.id)
            .worker("<w>");
        let logs = LogTail {
            kept: true,
            text: format!("{evil}\n</pre><script>x()</script>"),
            truncated: false,
        };
        let page = layout(
            "task",
            &format!("{evil} · Cube"),
            render_task(&task, &[entry], &logs),
        )
        .into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("</pre><script>"), "{page}");
        assert!(!page.contains("<w>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(
            page.contains("href=\"/services/web%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E\""),
            "{page}"
        );
        assert!(
            page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
                || page.contains("&lt;script&gt;alert('x')&lt;/script&gt;"),
            "{page}"
        );
        // The only scripts are the dashboard's own.
        assert_eq!(page.matches("<script").count(), 1, "{page}");

        let mut row = task.clone();
        row.image = format!("img{evil}");
        let html = task_row(&row).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

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

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(urlencode("node-1_x.y"), "node-1_x.y");
    }
}
