//! The client commands: submit, stop, status, nodes, events. They speak only the public NATS
//! contract, as any other client could.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer};
use clap::Args;
use cube_manager::api::{TaskList, TaskListQuery};
use cube_shared::subjects::*;
use cube_shared::units::format_bytes;
use cube_shared::validate::{parse_container_port, parse_host_binding, validate_task};
use cube_shared::wire::{self, encode, MAX_EVENT_BYTES, MAX_MESSAGE_BYTES};
use cube_shared::{ApiReply, JournalEntry, Node, RestartPolicy, State, Task, TaskEvent, TaskQuery};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::connect::connect;
use crate::output::{age, or_dash, table};
use crate::{bytes_size, duration, NatsArgs};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// A task specification in JSON (the `task` object of the NATS contract); `-` reads
    /// standard input. Flags given as well override its fields.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// The Docker image to run.
    #[arg(long, required_unless_present = "file")]
    pub image: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Cores to reserve, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory limit and reservation, e.g. 256m.
    #[arg(long, value_parser = bytes_size)]
    pub memory: Option<u64>,
    /// Disk to reserve, e.g. 1g.
    #[arg(long, value_parser = bytes_size)]
    pub disk: Option<u64>,
    /// Publish a port: HOST:CONTAINER[/proto], IP:HOST:CONTAINER[/proto], or CONTAINER to
    /// only expose it. Repeatable.
    #[arg(short = 'p', long = "port")]
    pub ports: Vec<String>,
    /// An environment variable, K=V. Repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// no, on-failure or always.
    #[arg(long)]
    pub restart: Option<RestartPolicy>,
    /// A mount, SOURCE:TARGET[:ro]: a volume name, or a host path if the worker allows it.
    /// Repeatable.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// bridge (default), none, or host (if the worker allows it).
    #[arg(long)]
    pub network: Option<String>,
    /// host: share the host's PID namespace (if the worker allows it).
    #[arg(long)]
    pub pid: Option<String>,
    /// host: share the host's IPC namespace (if the worker allows it).
    #[arg(long)]
    pub ipc: Option<String>,
    /// Run privileged (if the worker allows it).
    #[arg(long)]
    pub privileged: bool,
    /// Add a Linux capability (if the worker allows it). Repeatable.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// A host device, /dev/… (if the worker allows it). Repeatable.
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Run only on workers whose labels match: key=value or key!=value. Repeatable.
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// How many restarts before the task stays failed (default 3 for on-failure, no limit
    /// for always).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// `/path` (HTTP GET on the first exposed port) or a command run in the container.
    #[arg(long)]
    pub health_check: Option<String>,
    /// How often the health check runs [default: 5s].
    #[arg(long, value_parser = duration)]
    pub health_interval: Option<Duration>,
    /// How long one check may take [default: 2s].
    #[arg(long, value_parser = duration)]
    pub health_timeout: Option<Duration>,
    /// Failed checks in a row that make the task unhealthy [default: 3].
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// How long a new task has to pass its first check [default: 30s].
    #[arg(long, value_parser = duration)]
    pub health_grace: Option<Duration>,
    /// Wait until the task runs (or fails) and say which.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub wait_timeout: Duration,
    /// The command to run instead of the image's default, after `--`.
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Task id, unique id prefix, or name.
    pub id: String,
}

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
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<NodesAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodesAction {
    /// No new work for the node; its tasks move elsewhere (each new copy starts before the
    /// old one stops).
    Drain { name: String },
    /// The node takes work again.
    Undrain { name: String },
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Keep printing new events as they happen.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many past events to show.
    #[arg(long, default_value_t = 50)]
    pub last: u64,
    #[arg(long)]
    pub json: bool,
}

/// Builds the task from `-f` and the flags.
fn build_task(args: &SubmitArgs) -> Result<Task> {
    let mut task = match &args.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            let mut value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            if let Some(obj) = value.as_object_mut() {
                obj.entry("id")
                    .or_insert_with(|| Uuid::new_v4().to_string().into());
            }
            let bytes = serde_json::to_vec(&value)?;
            wire::decode::<Task>(&bytes, MAX_EVENT_BYTES)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => Task::new(""),
    };
    if let Some(image) = &args.image {
        task.image = image.clone();
    }
    if let Some(name) = &args.name {
        task.name = name.clone();
    }
    if let Some(cpu) = args.cpu {
        task.cpu = cpu;
    }
    if let Some(memory) = args.memory {
        task.memory = memory;
    }
    if let Some(disk) = args.disk {
        task.disk = disk;
    }
    for port in &args.ports {
        let (container, host) = parse_port_flag(port)?;
        if let Some(host) = host {
            task.port_bindings.insert(container.clone(), host);
        }
        if !task.exposed_ports.contains(&container) {
            task.exposed_ports.push(container);
        }
    }
    task.env.extend(args.env.iter().cloned());
    task.constraints.extend(args.constraints.iter().cloned());
    task.mounts.extend(args.mounts.iter().cloned());
    task.cap_add.extend(args.cap_add.iter().cloned());
    task.devices.extend(args.devices.iter().cloned());
    task.privileged |= args.privileged;
    task.network_mode = args.network.clone().or(task.network_mode.take());
    task.pid_mode = args.pid.clone().or(task.pid_mode.take());
    task.ipc_mode = args.ipc.clone().or(task.ipc_mode.take());
    if let Some(restart) = args.restart {
        task.restart_policy = restart;
    }
    if let Some(check) = &args.health_check {
        task.health_check = Some(check.clone());
    }
    task.max_restarts = args.max_restarts.or(task.max_restarts);
    task.health_interval = args.health_interval.or(task.health_interval);
    task.health_timeout = args.health_timeout.or(task.health_timeout);
    task.health_retries = args.health_retries.or(task.health_retries);
    task.health_grace = args.health_grace.or(task.health_grace);
    if !args.cmd.is_empty() {
        task.cmd = args.cmd.clone();
    }
    validate_task(&task).map_err(|e| anyhow!("invalid task: {e}"))?;
    task.normalise();
    Ok(task)
}

/// `8080:80`, `127.0.0.1:8080:80/udp` or `80` → (container port, host binding).
fn parse_port_flag(spec: &str) -> Result<(String, Option<String>)> {
    let (host, container) = match spec.rsplit_once(':') {
        Some((host, container)) => (Some(host), container),
        None => (None, spec),
    };
    let container = parse_container_port(container).map_err(|e| anyhow!("--port {spec}: {e}"))?;
    if let Some(host) = host {
        parse_host_binding(host).map_err(|e| anyhow!("--port {spec}: {e}"))?;
    }
    Ok((container, host.map(str::to_string)))
}

/// Publishes an event into `tasks.events` and waits until JetStream has stored it.
async fn publish_event(js: &jetstream::Context, event: &TaskEvent) -> Result<()> {
    let payload = encode(event);
    if payload.len() > MAX_EVENT_BYTES {
        bail!(
            "the task is {} bytes; the limit is {MAX_EVENT_BYTES}",
            payload.len()
        );
    }
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(event.id.to_string());
    js.send_publish(EVENTS, publish)
        .await
        .context("publishing to tasks.events")?
        .await
        .map_err(|e| {
            anyhow!("JetStream did not store the event ({e}); has a manager ever run against this NATS server? It creates the streams")
        })?;
    Ok(())
}

/// A `cube.api.*` request, with errors that say what is wrong.
async fn request<Q: Serialize, T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    body: &Q,
) -> Result<T> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_string(), encode(body)),
    )
    .await
    .map_err(|_| anyhow!("the manager did not answer {subject} within 10 s"))?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            anyhow!("no manager is running (nobody answers {subject})")
        }
        _ => anyhow!("{subject}: {e}"),
    })?;
    let reply: ApiReply<T> =
        wire::decode(&reply.payload, usize::MAX).context("reading the manager's answer")?;
    reply.into_result().map_err(|e| anyhow!(e))
}

pub(crate) async fn get_task(client: &async_nats::Client, id: &str) -> Result<Task> {
    request(client, API_TASKS_GET, &TaskQuery { id: id.to_string() }).await
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let task = build_task(&args)?;
    let client = connect(&args.nats.client(), "cube-cli").await?;
    let js = jetstream::new(client.clone());
    let event = TaskEvent::submit(task);
    publish_event(&js, &event).await?;
    println!("{}", event.task.id);
    if !args.wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.wait_timeout;
    loop {
        match get_task(&client, &event.task.id.to_string()).await {
            Ok(t) if t.state == State::Running => {
                eprintln!("running on {}", or_dash(t.worker.as_deref()));
                return Ok(());
            }
            Ok(t) if t.state == State::Failed => {
                bail!("task failed: {}", or_dash(t.error.as_deref()))
            }
            Ok(t) if t.state == State::Completed => {
                eprintln!(
                    "completed (exit code {})",
                    t.exit_code.map_or("-".into(), |c| c.to_string())
                );
                return Ok(());
            }
            Ok(t) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "still {} after {:?}: {}",
                    t.state,
                    args.wait_timeout,
                    or_dash(t.error.as_deref())
                )
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn stop(args: StopArgs) -> Result<()> {
    let client = connect(&args.nats.client(), "cube-cli").await?;
    let id: Uuid = match args.id.parse() {
        Ok(id) => id,
        Err(_) => get_task(&client, &args.id).await?.id,
    };
    publish_event(&jetstream::new(client), &TaskEvent::stop(id)).await?;
    println!("{id}");
    Ok(())
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let client = connect(&args.nats.client(), "cube-cli").await?;
    if let Some(id) = &args.id {
        let task = get_task(&client, id).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&task)?);
        } else {
            print_task(&task);
        }
        return Ok(());
    }
    let query = TaskListQuery {
        state: args.state,
        limit: Some(args.limit),
    };
    let list: TaskList = request(&client, API_TASKS_LIST, &query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list.tasks)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.display_name(),
                t.state.to_string(),
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

fn print_task(t: &Task) {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_string(), |t| t.to_rfc3339());
    let mut lines = vec![
        ("ID", t.id.to_string()),
        ("Name", t.display_name()),
        ("State", t.state.to_string()),
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

pub async fn nodes(args: NodesArgs) -> Result<()> {
    let client = connect(&args.nats.client(), "cube-cli").await?;
    if let Some(action) = &args.action {
        let (name, drain) = match action {
            NodesAction::Drain { name } => (name, true),
            NodesAction::Undrain { name } => (name, false),
        };
        let body = cube_shared::DrainRequest {
            name: name.clone(),
            drain,
        };
        let node: Node = request(&client, API_NODES_DRAIN, &body).await?;
        println!("{} is {}", node.name, node.state);
        return Ok(());
    }
    let nodes: Vec<Node> = request(&client, API_NODES_LIST, &()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state.to_string(),
                format!(
                    "{:.1}/{} ({:.0}% busy)",
                    n.cpu_allocated,
                    n.cores,
                    n.cpu_usage * 100.0
                ),
                format!(
                    "{}/{}",
                    format_bytes(n.memory_allocated),
                    format_bytes(n.memory)
                ),
                format!(
                    "{}/{}",
                    format_bytes(n.disk_allocated),
                    format_bytes(n.disk)
                ),
                n.task_count.to_string(),
                format!("{} ago", age(Some(n.last_heartbeat))),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "CPU",
            "MEMORY",
            "DISK",
            "TASKS",
            "LAST SEEN",
        ],
        &rows,
    );
    Ok(())
}

pub async fn events(args: EventsArgs) -> Result<()> {
    let client = connect(&args.nats.client(), "cube-cli").await?;
    let js = jetstream::new(client);
    let mut stream = js.get_stream(JOURNAL_STREAM).await.context(
        "the journal stream does not exist yet; has a manager run against this NATS server?",
    )?;
    let last = stream
        .info()
        .await
        .context("reading the journal")?
        .state
        .last_sequence;
    if last == 0 && !args.follow {
        return Ok(());
    }
    let deliver_policy = if last == 0 {
        consumer::DeliverPolicy::New
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last.saturating_sub(args.last.saturating_sub(1)).max(1),
        }
    };
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("reading the journal")?
        .messages()
        .await
        .context("reading the journal")?;
    if !args.json {
        println!(
            "{:<24}  {:<14}  {:<8}  {:<12}  MESSAGE",
            "TIME", "KIND", "TASK", "WORKER"
        );
    }
    while let Some(msg) = messages.next().await {
        let msg = msg.context("reading the journal")?;
        match wire::decode::<JournalEntry>(&msg.payload, MAX_MESSAGE_BYTES) {
            Ok(e) if args.json => println!("{}", serde_json::to_string(&e)?),
            Ok(e) => println!(
                "{:<24}  {:<14}  {:<8}  {:<12}  {}",
                e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.kind,
                e.task_id
                    .map_or("-".to_string(), |id| id.to_string()[..8].to_string()),
                or_dash(e.worker.as_deref()),
                e.message
            ),
            Err(e) => eprintln!("(unreadable journal entry: {e})"),
        }
        let pending = msg.info().map_or(0, |i| i.pending);
        if pending == 0 && !args.follow {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_flags() {
        assert_eq!(
            parse_port_flag("8080:80").unwrap(),
            ("80/tcp".into(), Some("8080".into()))
        );
        assert_eq!(
            parse_port_flag("127.0.0.1:8080:53/udp").unwrap(),
            ("53/udp".into(), Some("127.0.0.1:8080".into()))
        );
        assert_eq!(parse_port_flag("80").unwrap(), ("80/tcp".into(), None));
        assert!(parse_port_flag("x:80").is_err());
        assert!(parse_port_flag("8080:0").is_err());
    }
}
