//! `cube bench soak`: many short tasks through simulated workers, at an offered rate, for as
//! long as they take; every interval a row of what Cube does (throughput, p99 submit →
//! running) and what it holds (the JetStream store, the manager's resident memory). The
//! figures when `--checkpoint` tasks have completed are compared with those at the end: state
//! that stays bounded keeps them flat.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::*;
use crate::serve::SchedulerKind;

#[derive(Args, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many tasks to submit.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: usize,
    /// How many simulated workers.
    #[arg(long, default_value_t = 100)]
    pub workers: usize,
    #[arg(long, value_enum, default_value_t = SchedulerKind::Spread)]
    pub scheduler: SchedulerKind,
    /// Offered load in tasks/s.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long each simulated task runs before it exits with code 0.
    #[arg(long, default_value = "200ms", value_parser = crate::duration)]
    pub run_time: Duration,
    /// The manager's --keep-ended: short, so that state reaches its bound early in the run.
    #[arg(long, default_value = "30s", value_parser = crate::duration)]
    pub keep_ended: Duration,
    /// The manager's --keep-ended-max.
    #[arg(long, default_value_t = 50_000)]
    pub keep_ended_max: usize,
    /// How often a row is printed.
    #[arg(long, default_value = "10s", value_parser = crate::duration)]
    pub interval: Duration,
    /// The figures at this many completed tasks are compared with those at the end.
    #[arg(long, default_value_t = 100_000)]
    pub checkpoint: usize,
}

/// One interval of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Seconds since the first submission, at the end of the interval.
    pub at_s: f64,
    pub submitted: usize,
    pub completed: usize,
    /// Refused by the manager (journal `rejected`) or by JetStream (a full stream).
    pub refused: usize,
    /// Tasks completed in the interval, per second.
    pub tasks_per_s: f64,
    /// p99 submit → running of the tasks that started running in the interval.
    pub p99_submit_to_running_ms: f64,
    pub store_mib: f64,
    pub manager_rss_mib: f64,
    /// What each stream holds at the end of the interval: messages and MiB.
    pub streams: BTreeMap<String, (u64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub bench: &'static str,
    pub tasks: usize,
    pub workers: usize,
    pub sync: String,
    pub offered_rate: f64,
    pub keep_ended_s: f64,
    pub rows: Vec<Row>,
    /// The row when `checkpoint` tasks had completed, and the last row while submissions
    /// were still being made (a full interval at the offered load).
    pub at_checkpoint: Option<Row>,
    pub at_end: Option<Row>,
    /// What the manager counted still live at the end, and tasks never seen completing.
    pub live_at_end: usize,
    pub unaccounted: usize,
}

/// What the bench has seen so far (shared by the submitter, the journal reader and the
/// reporter).
#[derive(Default)]
struct Seen {
    /// Submitted, not yet seen running: when each was sent.
    waiting: HashMap<Uuid, Instant>,
    /// Submit → running of the tasks that started running since the last row.
    latencies: Vec<Duration>,
    submitted: usize,
    completed: usize,
    refused: usize,
    /// The submitter is done.
    sent_all: bool,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn run(args: SoakArgs) -> Result<()> {
    if args.tasks == 0 || args.workers == 0 || args.rate <= 0.0 {
        bail!("--tasks, --workers and --rate must be above 0");
    }
    let manager_args = vec![
        "--keep-ended".to_string(),
        format!("{}ms", args.keep_ended.as_millis()),
        "--keep-ended-max".to_string(),
        args.keep_ended_max.to_string(),
    ];
    let spec = HarnessSpec::single(args.scheduler.name());
    let harness = Harness::start_with_args(&args.common, spec, manager_args).await?;
    let result = soak(&args, &harness).await;
    harness.stop().await;
    let report = result?;
    finish(&args.common, &summary(&report), &report)
}

async fn soak(args: &SoakArgs, harness: &Harness) -> Result<SoakReport> {
    let spec = SimSpec {
        count: args.workers,
        prefix: "soak-".into(),
        heartbeat: Duration::from_secs(1),
        start_latency: Duration::ZERO,
        cores: 1024.0,
        memory: 1 << 40,
    };
    let fleet = SimFleet::start_running(&harness.url, &spec, Some(args.run_time)).await?;
    let outcome = async {
        harness.wait_for_nodes(&spec.prefix, args.workers).await?;
        let seen = Shared::default();
        let reader = read_journal(&harness.client, seen.clone()).await?;
        let submitter = tokio::spawn(submit(
            harness.js.clone(),
            args.tasks,
            args.rate,
            args.common.window,
            seen.clone(),
        ));
        let rows = report_rows(args, harness, &seen).await;
        submitter.abort();
        reader.abort();
        let rows = rows?;
        let live_at_end = harness.live_tasks().await.unwrap_or(0);
        let s = lock(&seen);
        let at_checkpoint = rows
            .iter()
            .find(|r| r.completed >= args.checkpoint)
            .cloned();
        let at_end = last_loaded(&rows);
        Ok::<_, anyhow::Error>(SoakReport {
            bench: "soak",
            tasks: args.tasks,
            workers: args.workers,
            sync: format!("{:?}", args.common.sync).to_lowercase(),
            offered_rate: args.rate,
            keep_ended_s: args.keep_ended.as_secs_f64(),
            at_checkpoint,
            at_end,
            live_at_end,
            unaccounted: args.tasks.saturating_sub(s.completed + s.refused),
            rows,
        })
    }
    .await;
    fleet.stop().await;
    outcome
}

/// The last row whose whole interval was at the offered load (submissions still going at
/// its end), or the last row if none.
fn last_loaded(rows: &[Row]) -> Option<Row> {
    let total = rows.last()?.submitted;
    rows.iter()
        .rev()
        .find(|r| r.submitted < total)
        .or(rows.last())
        .cloned()
}

/// Follows the journal: tasks that start running (their latency), complete, or are refused.
async fn read_journal(
    client: &async_nats::Client,
    seen: Shared,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut subs = futures::stream::select_all([
        client.subscribe(journal_for("running")).await?,
        client.subscribe(journal_for("completed")).await?,
        client.subscribe(journal_for("rejected")).await?,
    ]);
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = subs.next().await {
            let at = Instant::now();
            let Ok(entry) = serde_json::from_slice::<JournalEntry>(&msg.payload) else {
                continue;
            };
            let mut s = lock(&seen);
            match entry.kind.as_str() {
                "running" => {
                    if let Some(sent) = entry.task_id.and_then(|id| s.waiting.remove(&id)) {
                        s.latencies.push(at.saturating_duration_since(sent));
                    }
                }
                "completed" => s.completed += 1,
                "rejected" => {
                    if let Some(id) = entry.task_id {
                        s.waiting.remove(&id);
                    }
                    s.refused += 1;
                }
                _ => {}
            }
        }
    }))
}

/// Submits `count` short tasks at `rate` per second, at most `window` awaiting JetStream's
/// acknowledgement; a submission JetStream refuses (a full stream) is counted as refused.
async fn submit(js: jetstream::Context, count: usize, rate: f64, window: usize, seen: Shared) {
    let mut acks = FuturesUnordered::new();
    let begin = Instant::now();
    let refused = |seen: &Shared, id: Uuid| {
        let mut s = lock(seen);
        s.waiting.remove(&id);
        s.refused += 1;
    };
    for i in 0..count {
        let due = begin + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        while acks.len() >= window.max(1) {
            if let Some(Err(id)) = acks.next().await {
                refused(&seen, id);
            }
        }
        let mut task = bench_task(i);
        task.cmd = vec!["true".into()];
        let event = TaskEvent::submit(task);
        let id = event.task.id;
        let publish = jetstream::message::PublishMessage::build()
            .payload(encode(&event))
            .message_id(event.id.to_string());
        {
            let mut s = lock(&seen);
            s.waiting.insert(id, Instant::now());
            s.submitted += 1;
        }
        match js.send_publish(EVENTS, publish).await {
            Ok(ack) => acks.push(async move { ack.await.map(|_| ()).map_err(|_| id) }),
            Err(_) => refused(&seen, id),
        }
    }
    while let Some(ack) = acks.next().await {
        if let Err(id) = ack {
            refused(&seen, id);
        }
    }
    lock(&seen).sent_all = true;
}

/// A row every interval until every task is accounted for (completed or refused), or no
/// progress for a minute once all were sent.
async fn report_rows(args: &SoakArgs, harness: &Harness, seen: &Shared) -> Result<Vec<Row>> {
    let begin = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut last = (0, Instant::now());
    println!("{}", header());
    loop {
        tokio::time::sleep(args.interval).await;
        let (submitted, completed, refused, latencies, sent_all) = {
            let mut s = lock(seen);
            let l = std::mem::take(&mut s.latencies);
            (s.submitted, s.completed, s.refused, l, s.sent_all)
        };
        let counters = harness.counters().await?;
        let rss = harness
            .manager_pid()
            .and_then(|p| super::nodes::status_mb(p, "VmRSS:").ok())
            .unwrap_or(0.0);
        let previous = rows.last().map_or(0, |r| r.completed);
        let row = Row {
            at_s: begin.elapsed().as_secs_f64(),
            submitted,
            completed,
            refused,
            tasks_per_s: per_second(completed - previous, args.interval),
            p99_submit_to_running_ms: Latency::of(latencies).p99_ms,
            store_mib: mib(counters.storage_bytes),
            manager_rss_mib: rss,
            streams: counters
                .held
                .iter()
                .map(|(name, (msgs, bytes))| (name.clone(), (*msgs, mib(*bytes))))
                .collect(),
        };
        println!("{}", line(&row));
        rows.push(row);
        if completed + refused >= args.tasks {
            return Ok(rows);
        }
        if completed + refused > last.0 {
            last = (completed + refused, Instant::now());
        } else if sent_all && last.1.elapsed() > Duration::from_secs(60) {
            eprintln!("note: no task completed for 60 s after the last submission; ending the run (journal notices are core NATS: some may have been lost on the way to the bench)");
            return Ok(rows);
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn header() -> String {
    format!(
        "{:>7} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>8}  Task DB msgs, journal MiB",
        "at s", "submitted", "completed", "refused", "tasks/s", "p99 ms", "store MiB", "RSS MiB"
    )
}

fn line(r: &Row) -> String {
    let held = |name: &str| r.streams.get(name).copied().unwrap_or((0, 0.0));
    format!(
        "{:>7.0} {:>9} {:>9} {:>7} {:>9.0} {:>9.1} {:>9.1} {:>8.1}  {}, {:.1}",
        r.at_s,
        r.submitted,
        r.completed,
        r.refused,
        r.tasks_per_s,
        r.p99_submit_to_running_ms,
        r.store_mib,
        r.manager_rss_mib,
        held(&format!("KV_{TASK_DB}")).0,
        held(JOURNAL_STREAM).1,
    )
}

fn summary(r: &SoakReport) -> String {
    let mut out = format!(
        "\ncube bench soak: {} tasks at {:.0}/s offered, {} simulated workers, JetStream sync {}, --keep-ended {}s\n",
        r.tasks, r.offered_rate, r.workers, r.sync, r.keep_ended_s
    );
    let (Some(a), Some(b)) = (&r.at_checkpoint, &r.at_end) else {
        out += "  the run did not reach the checkpoint: nothing to compare\n";
        return out;
    };
    out += &format!(
        "  {:<28} {:>12} {:>12} {:>8}\n",
        "",
        format!("at {}", a.completed),
        format!("at {}", b.completed),
        "ratio"
    );
    let mut compare = |what: &str, x: f64, y: f64| {
        let ratio = if x > 0.0 { y / x } else { f64::NAN };
        out += &format!("  {what:<28} {x:>12.1} {y:>12.1} {ratio:>8.2}\n");
    };
    compare("throughput (tasks/s)", a.tasks_per_s, b.tasks_per_s);
    compare(
        "p99 submit → running (ms)",
        a.p99_submit_to_running_ms,
        b.p99_submit_to_running_ms,
    );
    compare("JetStream store (MiB)", a.store_mib, b.store_mib);
    compare("manager RSS (MiB)", a.manager_rss_mib, b.manager_rss_mib);
    for name in b.streams.keys() {
        let (x, y) = (
            a.streams.get(name).copied().unwrap_or_default(),
            b.streams[name],
        );
        if x.1 > 0.0 || y.1 > 0.0 {
            compare(&format!("  {name} (MiB)"), x.1, y.1);
        }
    }
    out += &format!(
        "  at the end: {} tasks live in the manager, {} never seen completing or refused\n",
        r.live_at_end, r.unaccounted
    );
    out
}
