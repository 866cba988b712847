//! `cube service`: services, a named desired state (a task template, a count, an update
//! policy and a kind) that the manager keeps true. Deploy, scale, roll back, promote and
//! remove publish a ServiceEvent on `services.events` and wait briefly for the manager to
//! apply or refuse it; ls, status and history ask the manager; endpoints reads the
//! `cube-endpoints` bucket as any client can.

mod follow;
mod spec;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use cube_client::{Cube, Error, JOURNAL_SCAN};
use cube_shared::service::{Endpoint, ServiceEvent, ServiceKind, ServiceStatus, ServiceVersion};
use cube_shared::JournalEntry;
use serde::Serialize;

use super::task_spec::TaskFlags;
use super::{cube, explain};
use crate::output::{age, line, or_dash, print_json, table, OutputArgs};
use crate::{duration, NatsArgs};

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service or change it, from a service file or flags; then follow its rollout.
    ///
    /// Prints the event's id and what the manager did, then (unless --detach) shows the
    /// rollout's progress on stderr until every copy runs the new version healthy, the
    /// canaries wait for `cube service promote`, or the rollout fails. Exits non-zero if the
    /// manager refuses the deploy, the rollout fails, or --wait-timeout passes.
    Deploy(DeployArgs),
    /// Change how many copies run.
    Scale(ScaleArgs),
    /// List the services with their counts and rollouts.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show one service: counts, rollout, every copy, endpoints.
    Status(NameOutputArgs),
    /// Show a service's versions and its journal entries, oldest first.
    History(NameOutputArgs),
    /// Go back to the last good version before the current one, or to --version.
    Rollback(RollbackArgs),
    /// Let a rollout waiting on its canaries go on.
    Promote(NameArgs),
    /// Stop every copy and forget the desired state.
    #[command(alias = "remove")]
    Rm(NameArgs),
    /// Show a service's healthy copies' addresses (the `cube-endpoints` bucket).
    Endpoints(NameOutputArgs),
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// A service file: JSON (`.json`, or `-` for standard input) or TOML (`.toml`) with
    /// name, kind, count, template (a task; its id may be left out), update and
    /// max_failures. Flags given as well override its fields.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// The service's name: 1–63 lowercase letters, digits or `-`, starting with a letter.
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Copies wanted (service), or completions wanted (batch) [default: 1].
    #[arg(long)]
    pub count: Option<u32>,
    /// service (count copies running), batch (count copies run to completion) or system
    /// (one copy on every eligible node) [default: service].
    #[arg(long)]
    pub kind: Option<ServiceKind>,
    /// New copies started at a time during a rollout [default: 1].
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// How long a new copy must be healthy before it counts [default: 10s].
    #[arg(long, value_parser = duration)]
    pub min_healthy_time: Option<Duration>,
    /// How long a new copy has to become healthy before the rollout fails [default: 5m].
    #[arg(long, value_parser = duration)]
    pub healthy_deadline: Option<Duration>,
    /// Do not go back to the last good version when a rollout fails.
    #[arg(long)]
    pub no_auto_revert: bool,
    /// New copies started beside the old ones before anything is replaced; the rollout then
    /// waits for `cube service promote` [default: 0].
    #[arg(long)]
    pub canary: Option<u32>,
    /// batch: copies that may fail before the job is failed [default: 3].
    #[arg(long)]
    pub max_failures: Option<u32>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Return once the manager has applied the deploy, without following the rollout.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// How long to follow the rollout.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub wait_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    pub name: String,
    /// The new count.
    pub count: u32,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    pub name: String,
}

#[derive(Args, Debug)]
pub struct NameOutputArgs {
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    pub name: String,
    /// The version to go back to (`cube service history` lists them).
    #[arg(long)]
    pub version: Option<u64>,
}

pub async fn service(args: ServiceArgs) -> Result<()> {
    // A bad service file is reported before any connection is tried.
    let spec = match &args.command {
        ServiceCommand::Deploy(deploy) => Some(spec::build_spec(deploy)?),
        _ => None,
    };
    let cube = cube(&args.nats).await?;
    match args.command {
        ServiceCommand::Deploy(deploy) => {
            let spec = spec.expect("built above");
            let name = spec.name.clone();
            let confirmed = follow::publish(&cube, &ServiceEvent::deploy(spec)).await?;
            if deploy.detach {
                return Ok(());
            }
            if let follow::Confirmed::Unconfirmed(_) = confirmed {
                bail!("the manager has not applied the deploy of {name}: its rollout cannot be followed");
            }
            follow::rollout(&cube, &name, deploy.wait_timeout).await
        }
        ServiceCommand::Scale(a) => {
            follow::publish(&cube, &ServiceEvent::scale(&a.name, a.count)).await?;
            Ok(())
        }
        ServiceCommand::Rollback(a) => {
            follow::publish(&cube, &ServiceEvent::rollback(&a.name, a.version)).await?;
            Ok(())
        }
        ServiceCommand::Promote(a) => {
            follow::publish(&cube, &ServiceEvent::promote(&a.name)).await?;
            Ok(())
        }
        ServiceCommand::Rm(a) => {
            follow::publish(&cube, &ServiceEvent::remove(&a.name)).await?;
            Ok(())
        }
        ServiceCommand::Ls(a) => ls(&cube, &a.output).await,
        ServiceCommand::Status(a) => status(&cube, &a.name, &a.output).await,
        ServiceCommand::History(a) => history(&cube, &a.name, &a.output).await,
        ServiceCommand::Endpoints(a) => endpoints(&cube, &a.name, &a.output).await,
    }
}

/// One service; one the manager does not know says how to find them.
async fn get_service(cube: &Cube, name: &str) -> Result<ServiceStatus> {
    cube.service(name).await.map_err(|e| match e {
        Error::Manager(_) => anyhow::Error::new(e).context(format!(
            "looking up service `{name}` (`cube service ls` lists the services)"
        )),
        other => explain(other),
    })
}

/// What the ROLLOUT column says.
fn rollout_word(s: &ServiceStatus) -> String {
    let svc = &s.service;
    if svc.removed {
        return "removed".into();
    }
    if let Some(finished) = &svc.finished {
        // "completed: …" or "failed: …"
        return finished.split(':').next().unwrap_or(finished).to_string();
    }
    svc.rollout
        .as_ref()
        .map_or("-".into(), |r| r.state.to_string())
}

async fn ls(cube: &Cube, output: &OutputArgs) -> Result<()> {
    let list = cube.services().await.map_err(explain)?;
    if output.json() {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.service.name.clone(),
                s.service.kind.to_string(),
                s.desired.to_string(),
                s.running.to_string(),
                s.healthy.to_string(),
                s.service.version.to_string(),
                rollout_word(s),
                age(Some(s.service.updated_at)),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "KIND", "DESIRED", "RUNNING", "HEALTHY", "VERSION", "ROLLOUT", "UPDATED",
        ],
        &rows,
    );
    Ok(())
}

async fn status(cube: &Cube, name: &str, output: &OutputArgs) -> Result<()> {
    let s = get_service(cube, name).await?;
    if output.json() {
        return print_json(&s);
    }
    let svc = &s.service;
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut lines = vec![
        ("Name", svc.name.clone()),
        ("Kind", svc.kind.to_string()),
        ("Desired", s.desired.to_string()),
        ("Running", s.running.to_string()),
        ("Healthy", s.healthy.to_string()),
        ("Version", svc.version.to_string()),
        ("Image", or_dash(svc.template().map(|t| t.image.as_str()))),
    ];
    if svc.kind == ServiceKind::Batch {
        lines.push(("Completed", s.completed.to_string()));
        lines.push(("Failed", s.failed.to_string()));
        lines.push(("Finished", or_dash(svc.finished.as_deref())));
    }
    if svc.removed {
        lines.push(("Removed", "yes: every copy stops".into()));
    }
    match &svc.rollout {
        Some(r) => {
            let from = r.from.map_or(String::new(), |f| format!("{f} → "));
            let ended = r
                .ended_at
                .map_or(String::new(), |t| format!(", ended {}", time(t)));
            lines.push((
                "Rollout",
                format!(
                    "{from}{}: {} (started {}{ended})",
                    r.to,
                    r.state,
                    time(r.started_at)
                ),
            ));
            lines.push(("Message", or_dash(r.message.as_deref())));
        }
        None => lines.push(("Rollout", "-".into())),
    }
    for (k, v) in lines {
        line(format_args!("{:<11}{v}", format!("{k}:")));
    }
    line("");
    let rows: Vec<Vec<String>> = s
        .copies
        .iter()
        .map(|c| {
            vec![
                c.task_id.to_string(),
                c.name.clone(),
                c.version.to_string(),
                if c.stopping {
                    format!("{} (stopping)", c.state)
                } else {
                    c.state.clone()
                },
                or_dash(c.node.as_deref()),
                if c.healthy { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table(
        &["TASK", "NAME", "VERSION", "STATE", "NODE", "HEALTHY"],
        &rows,
    );
    line("");
    line("Endpoints:");
    endpoint_table(&s.endpoints);
    Ok(())
}

fn endpoint_table(endpoints: &[Endpoint]) {
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            vec![
                e.task_id.to_string(),
                e.node.clone(),
                e.address.clone(),
                e.version.to_string(),
                if e.ports.is_empty() {
                    "-".into()
                } else {
                    e.ports
                        .iter()
                        .map(|(c, h)| format!("{}:{h}->{c}", e.address))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]
        })
        .collect();
    table(&["TASK", "NODE", "ADDRESS", "VERSION", "PORTS"], &rows);
}

/// `cube service history -o json`.
#[derive(Serialize)]
struct History {
    name: String,
    /// The version copies should run now.
    version: u64,
    versions: Vec<ServiceVersion>,
    /// The service's journal entries, oldest first.
    events: Vec<JournalEntry>,
}

async fn history(cube: &Cube, name: &str, output: &OutputArgs) -> Result<()> {
    let s = get_service(cube, name).await?;
    let events = journal_of(cube, name).await?;
    let history = History {
        name: s.service.name.clone(),
        version: s.service.version,
        versions: s.service.versions,
        events,
    };
    if output.json() {
        return print_json(&history);
    }
    let rows: Vec<Vec<String>> = history
        .versions
        .iter()
        .map(|v| {
            let mut marks = Vec::new();
            if v.version == history.version {
                marks.push("current");
            }
            if v.good {
                marks.push("good");
            }
            if v.failed {
                marks.push("failed");
            }
            vec![
                v.version.to_string(),
                v.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                v.template.image.clone(),
                if marks.is_empty() {
                    "-".into()
                } else {
                    marks.join(", ")
                },
            ]
        })
        .collect();
    table(&["VERSION", "CREATED", "IMAGE", "STATUS"], &rows);
    line("");
    let rows: Vec<Vec<String>> = history
        .events
        .iter()
        .map(|e| {
            vec![
                e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                e.kind.clone(),
                e.task_id
                    .map_or("-".to_string(), |id| id.to_string()[..8].to_string()),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "TASK", "MESSAGE"], &rows);
    Ok(())
}

/// Service `name`'s entries among the journal's last [`JOURNAL_SCAN`], oldest first. Read
/// as `cube events` reads it (the client role may follow the journal).
async fn journal_of(cube: &Cube, name: &str) -> Result<Vec<JournalEntry>> {
    let mut journal = match cube.follow_journal(JOURNAL_SCAN).await {
        Err(Error::NoStream(_)) => return Ok(Vec::new()),
        other => other.map_err(explain)?,
    };
    let mut entries = Vec::new();
    if journal.was_empty() {
        return Ok(entries);
    }
    let read = async {
        while let Some(read) = journal.next().await {
            let read = read.map_err(explain)?;
            if let Ok(e) = read.entry {
                if e.service.as_deref() == Some(name) {
                    entries.push(e);
                }
            }
            if read.caught_up {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| anyhow::anyhow!("reading the journal took over 30s"))??;
    Ok(entries)
}

async fn endpoints(cube: &Cube, name: &str, output: &OutputArgs) -> Result<()> {
    let found = cube.endpoints(name).await.map_err(explain)?;
    let endpoints = match found {
        Some(e) => e,
        None => {
            // Nothing in the bucket: a service without healthy copies, or none at all.
            if let Err(Error::Manager(e)) = cube.service(name).await {
                bail!("looking up service `{name}` (`cube service ls` lists the services): {e}");
            }
            cube_shared::Endpoints {
                service: name.to_string(),
                endpoints: Vec::new(),
            }
        }
    };
    if output.json() {
        return print_json(&endpoints);
    }
    endpoint_table(&endpoints.endpoints);
    Ok(())
}
