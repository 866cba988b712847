//! The dashboard's overview (`/`): managers, nodes, services, tasks and the latest events.

use axum::extract::{Query, State};
use axum::response::Html;
use cube_shared::units::{age, format_bytes};
use cube_shared::{ManagerInfo, ManagerRole, Node, State as TaskState, Task};
use maud::{html, Markup};

use super::service::service_row;
use super::{journal_table, layout, urlencode, PageError};
use crate::api::{filtered_tasks, TasksFilter};
use crate::charts::{CHARTS, HEIGHT, WIDTH};
use crate::App;

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

pub(super) fn task_row(t: &Task) -> Markup {
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

pub(super) async fn overview(
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
        section #charts-section {
            h2 { "The last hour" }
            // Drawn on the server; app.js fetches them anew as often as they are sampled.
            div.charts #charts data-every=(app.charts.interval.as_millis()) {
                @for (name, title) in CHARTS {
                    img src=(format!("/charts/{name}")) alt=(title) title=(title) data-chart=(name)
                        width=(WIDTH) height=(HEIGHT);
                }
            }
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
