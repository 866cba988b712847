//! A task's page (`/tasks/ID`): its specification, its events, the tail of its output and a
//! Stop button.

use axum::extract::{Path, State};
use axum::response::Html;
use chrono::{DateTime, Utc};
use cube_client::{LogTail, LOG_TAIL_BYTES};
use cube_shared::units::format_bytes;
use cube_shared::{JournalEntry, State as TaskState, Task};
use maud::{html, Markup};

use super::{journal_table, layout, urlencode, PageError};
use crate::api::ApiError;
use crate::App;

pub(super) async fn task_page(
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

#[cfg(test)]
mod tests {
    use super::super::overview::task_row;
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
}
