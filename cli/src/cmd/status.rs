//! `cube status`: the task list as a table or JSON, or one task in detail.

use anyhow::Result;
use clap::Args;
use cube_shared::units::format_bytes;
use cube_shared::{RestartPolicy, State, Task, TaskListQuery};

use super::{cube, explain, get_task};
use crate::output::{age, or_dash, print_json, table, OutputArgs};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Show one task in detail (id, unique id prefix, or name).
    pub id: Option<String>,
    /// Only tasks in this state.
    #[arg(long)]
    pub state: Option<State>,
    /// At most this many tasks, newest first.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let cube = cube(&args.nats).await?;
    if let Some(id) = &args.id {
        let task = match get_task(&cube, id).await {
            Ok(task) => task,
            Err(e) => {
                return forgotten(&cube, id, args.output.json())
                    .await
                    .unwrap_or(Err(e))
            }
        };
        if args.output.json() {
            print_json(&task)?;
        } else {
            print_task(&task);
        }
        return Ok(());
    }
    let query = TaskListQuery {
        state: args.state,
        limit: Some(args.limit),
    };
    let list = cube.tasks(&query).await.map_err(explain)?;
    if args.output.json() {
        // `{"total": n, "tasks": [...]}`: how many matched, and those shown.
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.display_name(),
                t.shown_state(),
                or_dash(t.worker.as_deref()),
                t.image.clone(),
                age(t.submitted_at),
            ]
        })
        .collect();
    table(&["ID", "NAME", "STATE", "WORKER", "IMAGE", "AGE"], &rows);
    if list.total > list.tasks.len() {
        eprintln!("({} of {} tasks shown)", list.tasks.len(), list.total);
    }
    Ok(())
}

/// A task the manager no longer knows may have ended long enough ago to be forgotten
/// (`cube manager --keep-ended`): what the journal still says of it, if it names it by its
/// full id. `None` if the journal has nothing (or `id` is not a full id).
async fn forgotten(cube: &cube_client::Cube, id: &str, json: bool) -> Option<Result<()>> {
    let uuid = id.parse::<uuid::Uuid>().ok()?;
    let entries = cube
        .journal(cube_client::JOURNAL_SCAN, Some(uuid))
        .await
        .ok()?;
    if entries.is_empty() {
        return None;
    }
    if json {
        let forgotten = serde_json::json!({"id": uuid, "forgotten": true, "journal": entries});
        return Some(print_json(&forgotten));
    }
    println!(
        "task {uuid} is no longer kept (it ended over `cube manager --keep-ended` ago); the journal says:"
    );
    for e in &entries {
        println!(
            "  {}  {:<14}  {}",
            e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            e.kind,
            e.message
        );
    }
    Some(Ok(()))
}

fn print_task(t: &Task) {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_string(), |t| t.to_rfc3339());
    let mut lines = vec![
        ("ID", t.id.to_string()),
        ("Name", t.display_name()),
        ("State", t.shown_state()),
        ("Worker", or_dash(t.worker.as_deref())),
        ("Image", t.image.clone()),
        (
            "Command",
            if t.cmd.is_empty() {
                "-".into()
            } else {
                t.cmd.join(" ")
            },
        ),
        ("CPU", format!("{}", t.cpu)),
        (
            "Memory",
            if t.memory == 0 {
                "-".into()
            } else {
                format_bytes(t.memory)
            },
        ),
        (
            "Ports",
            t.port_bindings
                .iter()
                .map(|(c, h)| format!("{h}->{c}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("Restart policy", t.restart_policy.to_string()),
        (
            "Restarts",
            match t.restart_limit() {
                Some(limit) if t.restart_policy != RestartPolicy::No => {
                    format!("{} of {limit}", t.restart_count)
                }
                _ => t.restart_count.to_string(),
            },
        ),
        ("Next attempt", time(t.next_attempt_at)),
        ("Health check", or_dash(t.health_check.as_deref())),
        (
            "Health",
            t.health.map_or("-".to_string(), |h| h.to_string()),
        ),
        ("Container", or_dash(t.container_id.as_deref())),
        ("Submitted", time(t.submitted_at)),
        ("Started", time(t.start_time)),
        ("Finished", time(t.finish_time)),
        (
            "Exit code",
            t.exit_code.map_or("-".into(), |c| c.to_string()),
        ),
    ];
    let label = if t.state == State::Pending {
        "Waiting because"
    } else {
        "Error"
    };
    lines.push((label, or_dash(t.error.as_deref())));
    for (k, v) in lines {
        println!(
            "{:<16}{}",
            format!("{k}:"),
            if v.is_empty() { "-".into() } else { v }
        );
    }
}
