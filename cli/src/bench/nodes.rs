//! `cube bench nodes`: many simulated workers heartbeating; what the manager spends on them,
//! and how long `cube status` and `cube nodes` take over many tasks.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::*;

#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many simulated workers.
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// How often each heartbeats.
    #[arg(long, default_value = "1s", value_parser = crate::duration)]
    pub interval: Duration,
    /// How long the manager's CPU is measured, once all workers are registered.
    #[arg(long, default_value = "20s", value_parser = crate::duration)]
    pub duration: Duration,
    /// How many tasks to submit before timing `cube status` and `cube nodes`.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// How many times each command is timed (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

#[derive(Debug, Serialize)]
pub struct NodesReport {
    pub bench: &'static str,
    pub workers: usize,
    pub interval_ms: f64,
    pub sync: String,
    /// From the first worker's connection until the manager had journalled every worker as
    /// joined.
    pub registered_s: f64,
    /// nats-server's CPU over the same measurement as the manager's, as a share of one core.
    pub nats_cpu_share: f64,
    /// The manager's CPU time over the measurement, as a share of one core.
    pub manager_cpu_share: f64,
    /// The manager's resident memory at the end of the measurement, and its peak.
    pub manager_rss_mb: f64,
    pub manager_peak_rss_mb: f64,
    /// Heartbeats the manager received per second (counted by the bench on the same subject).
    pub heartbeats_per_s: f64,
    pub tasks: usize,
    /// The manager's CPU share and memory with the tasks in place (heartbeats now list them).
    pub manager_cpu_share_with_tasks: f64,
    pub manager_rss_mb_with_tasks: f64,
    /// Median wall time of the `cube status` and `cube nodes` commands (a new process each).
    pub status_ms: f64,
    pub nodes_ms: f64,
}

pub async fn run(args: NodesArgs) -> Result<()> {
    if args.workers == 0 || args.repeat == 0 {
        bail!("--workers and --repeat must be at least 1");
    }
    let harness = Harness::start(&args.common, "spread").await?;
    let result = measure(&args, &harness).await;
    harness.stop().await;
    let report = result?;
    finish(&args.common, &table(&report), &report)
}

async fn measure(args: &NodesArgs, harness: &Harness) -> Result<NodesReport> {
    let pid = harness
        .manager_pid()
        .context("the manager is not running")?;
    let spec = SimSpec {
        count: args.workers,
        prefix: "node-".into(),
        heartbeat: args.interval,
        start_latency: Duration::ZERO,
        cores: 64.0,
        memory: 256 << 30,
    };
    // The manager journals each node it hears of for the first time: counted from before the
    // first worker connects.
    let joins = harness.client.subscribe(journal_for(NODE_JOINED)).await?;
    // The workers connect on connections of their own: the subscription must have reached
    // the server before the first of them is heard, or its entry is missed.
    harness.client.flush().await?;
    let began = Instant::now();
    let fleet = SimFleet::start(&harness.url, &spec).await?;
    let outcome = async {
        let cube = cube_client::Cube::new(harness.client.clone());
        let registered = registered(joins, &cube, &spec.prefix, args.workers, began).await?;
        let nats = harness.nats_pid().context("nats-server is not running")?;
        let nats_before = cpu_ticks(nats)?;
        let (cpu, rss) = cpu_share(pid, args.duration).await?;
        let nats_cpu =
            (cpu_ticks(nats)? - nats_before) as f64 / USER_HZ / args.duration.as_secs_f64();
        let peak = status_mb(pid, "VmHWM:")?;
        // Heartbeats on the wire, counted by the bench on the manager's subject.
        let mut beats = harness.client.subscribe(HEARTBEAT_ALL).await?;
        let counted = {
            let window = Duration::from_secs(2);
            let until = tokio::time::Instant::now() + window;
            let mut n = 0usize;
            while let Ok(Some(_)) = tokio::time::timeout_at(until, beats.next()).await {
                n += 1;
            }
            n as f64 / window.as_secs_f64()
        };
        drop(beats);

        if args.tasks > 0 {
            let observer = Observer::start(&harness.client).await?;
            let tasks: Vec<Task> = (0..args.tasks).map(bench_task).collect();
            submit_all(&harness.js, tasks, args.common.window, None).await?;
            observer
                .wait_running(args.tasks, Duration::from_secs(60))
                .await?;
        }
        let (cpu_with, rss_with) =
            cpu_share(pid, args.duration.min(Duration::from_secs(10))).await?;
        let status_ms = median_ms(&harness.url, &["status"], args.repeat).await?;
        let nodes_ms = median_ms(&harness.url, &["nodes"], args.repeat).await?;
        Ok::<_, anyhow::Error>(NodesReport {
            bench: "nodes",
            workers: args.workers,
            registered_s: registered.as_secs_f64(),
            nats_cpu_share: nats_cpu,
            interval_ms: ms(args.interval),
            sync: format!("{:?}", args.common.sync).to_lowercase(),
            manager_cpu_share: cpu,
            manager_rss_mb: rss,
            manager_peak_rss_mb: peak,
            heartbeats_per_s: counted,
            tasks: args.tasks,
            manager_cpu_share_with_tasks: cpu_with,
            manager_rss_mb_with_tasks: rss_with,
            status_ms,
            nodes_ms,
        })
    }
    .await;
    fleet.stop().await;
    outcome
}

/// The manager journals each node it hears of for the first time as `node-joined`.
const NODE_JOINED: &str = "node-joined";
/// How long the bench waits for every worker to join (the target is a minute).
const REGISTER_WITHIN: Duration = Duration::from_secs(180);
/// How often the manager's node list may be read beside the journal.
const LIST_EVERY: Duration = Duration::from_secs(2);

/// Waits until the manager knows all `count` workers named `prefix…`, and returns how long
/// that took since `began`. Each is known from its `node-joined` entry, to the moment; the
/// entries are core NATS, at most once, so the manager's node list (paged) is also read once
/// no entry has come for [`LIST_EVERY`]: a worker whose entry was lost is counted from the
/// first list that has it. (Read every second while thousands join, the list of 10,000 nodes
/// slowed their joining from about 40 s to 75.)
async fn registered(
    mut joins: async_nats::Subscriber,
    cube: &cube_client::Cube,
    prefix: &str,
    count: usize,
    began: Instant,
) -> Result<Duration> {
    let deadline = tokio::time::Instant::from_std(began + REGISTER_WITHIN);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut quiet = true;
    let mut list = tokio::time::interval(LIST_EVERY);
    list.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while seen.len() < count {
        tokio::select! {
            joined = tokio::time::timeout_at(deadline, joins.next()) => {
                let Ok(Some(msg)) = joined else {
                    bail!(
                        "only {} of {count} workers registered within {REGISTER_WITHIN:?}",
                        seen.len()
                    );
                };
                let Ok(entry) = serde_json::from_slice::<cube_shared::JournalEntry>(&msg.payload)
                else {
                    continue;
                };
                if let Some(worker) = entry.worker.filter(|w| w.starts_with(prefix)) {
                    seen.insert(worker);
                    quiet = false;
                }
            }
            _ = list.tick() => {
                if !std::mem::replace(&mut quiet, true) {
                    continue;
                }
                // A list that fails or is cut short is read again at the next tick.
                if let Ok(nodes) = cube.nodes().await {
                    seen.extend(
                        nodes
                            .into_iter()
                            .filter(|n| n.name.starts_with(prefix))
                            .map(|n| n.name),
                    );
                }
            }
        }
    }
    Ok(began.elapsed())
}

/// The CPU time `pid` used over `window`, as a share of one core, and its resident memory
/// (MB) at the end.
async fn cpu_share(pid: u32, window: Duration) -> Result<(f64, f64)> {
    let before = cpu_ticks(pid)?;
    let began = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid)? - before;
    let seconds = used as f64 / USER_HZ;
    Ok((
        seconds / began.elapsed().as_secs_f64(),
        status_mb(pid, "VmRSS:")?,
    ))
}

/// utime + stime of a process, in clock ticks (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("parsing /proc stat")
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second in `/proc`: 100 on every Linux architecture Cube runs on.
const USER_HZ: f64 = 100.0;

/// A `/proc/<pid>/status` figure given in kB (`VmRSS:`, `VmHWM:`), in MB.
pub(super) fn status_mb(pid: u32, key: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// The median wall time of `cube <args>` against the private server, stdout discarded.
async fn median_ms(url: &str, args: &[&str], repeat: usize) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let began = Instant::now();
        let status = tokio::process::Command::new(&exe)
            .args(args)
            .args(["--nats-url", url])
            .env_remove("CUBE_NATS_USER")
            .env_remove("CUBE_NATS_PASSWORD")
            .env_remove("CUBE_NATS_PASSWORD_FILE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("`cube {}` failed ({status})", args.join(" "));
        }
        times.push(began.elapsed());
    }
    Ok(Latency::of(times).p50_ms)
}

fn table(r: &NodesReport) -> String {
    let mut out = format!(
        "cube bench nodes: {} simulated workers heartbeating every {:.0} ms, JetStream sync {}\n",
        r.workers, r.interval_ms, r.sync
    );
    out += &format!(
        "  {:<30} {:>8.1} s (from the first connection)\n",
        "all workers registered", r.registered_s
    );
    out += &format!(
        "  {:<30} {:>8.1} /s\n",
        "heartbeats received", r.heartbeats_per_s
    );
    out += &format!(
        "  {:<30} {:>8.1} % of one core\n",
        "manager CPU",
        r.manager_cpu_share * 100.0
    );
    out += &format!(
        "  {:<30} {:>8.1} MB (peak {:.1} MB)\n",
        "manager resident memory", r.manager_rss_mb, r.manager_peak_rss_mb
    );
    out += &format!(
        "  {:<30} {:>8.1} % of one core\n",
        "nats-server CPU",
        r.nats_cpu_share * 100.0
    );
    out += &format!(
        "  with {} tasks running:\n  {:<30} {:>8.1} % of one core\n  {:<30} {:>8.1} MB\n",
        r.tasks,
        "manager CPU",
        r.manager_cpu_share_with_tasks * 100.0,
        "manager resident memory",
        r.manager_rss_mb_with_tasks
    );
    out += &format!(
        "  {:<30} {:>8.1} ms (median, a new process each time)\n",
        "cube status", r.status_ms
    );
    out += &format!("  {:<30} {:>8.1} ms\n", "cube nodes", r.nodes_ms);
    out
}
