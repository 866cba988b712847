//! `cube bench schedule`: submission to `running` on simulated workers, beside raw JetStream.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use async_nats::jetstream::{self, consumer::pull, stream};
use clap::Args;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

use super::*;
use crate::serve::SchedulerKind;

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many tasks to submit.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// How many simulated workers.
    #[arg(long, default_value_t = 100)]
    pub workers: usize,
    #[arg(long, value_enum, default_value_t = SchedulerKind::Spread)]
    pub scheduler: SchedulerKind,
    /// Offered load in tasks/s (default: as fast as Cube takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long a simulated container takes to start.
    #[arg(long, default_value = "0s", value_parser = crate::duration)]
    pub start_latency: Duration,
    /// Skip the raw JetStream measurement.
    #[arg(long)]
    pub no_raw: bool,
}

#[derive(Debug, Serialize)]
pub struct ScheduleReport {
    pub bench: &'static str,
    pub tasks: usize,
    pub workers: usize,
    pub scheduler: String,
    pub sync: String,
    pub offered_rate: Option<f64>,
    /// Tasks/s from the first submission to the last task `running`.
    pub tasks_per_s: f64,
    /// Submissions/s acknowledged by JetStream.
    pub submitted_per_s: f64,
    pub elapsed_s: f64,
    pub submit_to_scheduled: Latency,
    pub submit_to_running: Latency,
    /// Bytes of one submission (the raw measurement uses messages of this size).
    pub message_bytes: usize,
    /// Raw JetStream: messages/s published (acknowledged) and consumed (acknowledged) by one
    /// client on this server, from the first publish to the last message consumed.
    pub raw_jetstream_msgs_per_s: Option<f64>,
    /// tasks_per_s / raw_jetstream_msgs_per_s.
    pub ratio_to_raw: Option<f64>,
    /// What the tasks cost nats-server and the manager (heartbeats of the simulated workers
    /// during the run included).
    pub cost: cost::Cost,
}

pub async fn run(args: ScheduleArgs) -> Result<()> {
    if args.tasks == 0 || args.workers == 0 {
        bail!("--tasks and --workers must be at least 1");
    }
    let common = &args.common;
    let harness = Harness::start(common, args.scheduler.name()).await?;
    let result = measure(&args, &harness).await;
    let raw = match (&result, args.no_raw) {
        (Ok(report), false) => Some(
            raw_jetstream(
                &harness.js,
                args.tasks,
                report.message_bytes,
                common.window,
                1,
            )
            .await?,
        ),
        _ => None,
    };
    harness.stop().await;
    let mut report = result?;
    report.raw_jetstream_msgs_per_s = raw;
    report.ratio_to_raw = raw.map(|r| report.tasks_per_s / r);
    finish(common, &table(&report), &report)
}

pub(super) async fn measure(args: &ScheduleArgs, harness: &Harness) -> Result<ScheduleReport> {
    let spec = SimSpec {
        count: args.workers,
        prefix: "sim-".into(),
        heartbeat: Duration::from_secs(1),
        start_latency: args.start_latency,
        cores: 1024.0,
        memory: 1 << 40,
    };
    let fleet = SimFleet::start(&harness.url, &spec).await?;
    let outcome = async {
        harness.wait_for_nodes(&spec.prefix, args.workers).await?;
        let observer = Observer::start(&harness.client).await?;
        let tasks: Vec<Task> = (0..args.tasks).map(bench_task).collect();
        let message_bytes = encode(&TaskEvent::submit(tasks[0].clone())).len();
        let manager_cpu = || harness.manager_pid().and_then(|p| cost::cpu_time(p).ok());
        let (counters, cpu) = (harness.counters().await?, manager_cpu());
        let (sent, acked) = submit_all(&harness.js, tasks, args.common.window, args.rate).await?;
        if let Err(e) = observer
            .wait_running(args.tasks, Duration::from_secs(30))
            .await
        {
            // The journal's notices are core NATS (at most once): on a loaded machine one
            // can be lost on its way to the bench. The manager's own count decides.
            let running = harness.running_tasks().await.unwrap_or(0);
            if running < args.tasks {
                return Err(e.context(format!(
                    "the manager counts {running} running\n{}",
                    harness.manager_log_tail(5)
                )));
            }
            eprintln!(
                "note: {e:#}, but the manager counts all {running} running (a journal notice was lost on its way to the bench; the figures leave those tasks out)"
            );
        }
        let cpu = manager_cpu().zip(cpu).map(|(after, before)| after.saturating_sub(before));
        let cost = counters.cost(&harness.counters().await?, args.tasks, cpu);
        let (tasks_per_s, submit_to_running) = observer.measure(&sent);
        let first = sent.values().min().copied().expect("at least one task");
        let seen = observer.seen.lock().unwrap_or_else(|p| p.into_inner());
        let scheduled = since(&sent, &seen.scheduled);
        Ok::<_, anyhow::Error>(ScheduleReport {
            bench: "schedule",
            tasks: args.tasks,
            workers: args.workers,
            scheduler: args.scheduler.name().to_string(),
            sync: format!("{:?}", args.common.sync).to_lowercase(),
            offered_rate: args.rate,
            tasks_per_s,
            submitted_per_s: per_second(args.tasks, acked - first),
            elapsed_s: args.tasks as f64 / tasks_per_s,
            submit_to_scheduled: Latency::of(scheduled),
            submit_to_running,
            message_bytes,
            raw_jetstream_msgs_per_s: None,
            ratio_to_raw: None,
            cost,
        })
    }
    .await;
    fleet.stop().await;
    outcome
}

/// One client publishes `count` messages of `size` bytes into a file stream (at most
/// `window` awaiting acknowledgement) while a pull consumer takes and acknowledges them:
/// messages/s from the first publish to the last message consumed. The stream has
/// `replicas` copies, as Cube's own do under `--replicas`.
pub async fn raw_jetstream(
    js: &jetstream::Context,
    count: usize,
    size: usize,
    window: usize,
    replicas: usize,
) -> Result<f64> {
    const STREAM: &str = "CUBE_BENCH_RAW";
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["cube-bench.raw".into()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let consume = tokio::spawn(async move {
        let mut got = 0;
        while got < count {
            match messages.next().await {
                Some(Ok(msg)) => {
                    msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    got += 1;
                }
                Some(Err(e)) => bail!("consuming: {e}"),
                None => bail!("the consumer ended after {got} messages"),
            }
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let begin = Instant::now();
    let mut acks = FuturesUnordered::new();
    for _ in 0..count {
        while acks.len() >= window.max(1) {
            acks.next().await.expect("not empty")?;
        }
        let ack = js.publish("cube-bench.raw", payload.clone()).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let end = tokio::time::timeout(Duration::from_secs(120), consume).await???;
    js.delete_stream(STREAM).await.ok();
    Ok(per_second(count, end - begin))
}

fn table(r: &ScheduleReport) -> String {
    let mut out = format!(
        "cube bench schedule: {} tasks, {} simulated workers, scheduler {}, JetStream sync {}{}\n",
        r.tasks,
        r.workers,
        r.scheduler,
        r.sync,
        r.offered_rate
            .map_or(String::new(), |rate| format!(", offered {rate:.0} tasks/s"))
    );
    out += &format!(
        "  {:<24} {:>10.0} tasks/s   ({:.2} s, first submission to last running)\n",
        "submitted → running", r.tasks_per_s, r.elapsed_s
    );
    out += &format!(
        "  {:<24} {:>10.0} tasks/s\n",
        "submissions acked", r.submitted_per_s
    );
    out += &r.submit_to_scheduled.row("submit → scheduled");
    out += "\n";
    out += &r.submit_to_running.row("submit → running");
    out += "\n";
    out += &cost_rows(&r.cost);
    if let (Some(raw), Some(ratio)) = (r.raw_jetstream_msgs_per_s, r.ratio_to_raw) {
        out += &format!(
            "  {:<24} {:>10.0} msgs/s    ({} B messages, publish+consume)\n",
            "raw JetStream", raw, r.message_bytes
        );
        out += &format!(
            "  {:<24} {:>10.1} %\n",
            "Cube / raw JetStream",
            ratio * 100.0
        );
    }
    out
}

/// The cost lines of a bench's table.
pub(super) fn cost_rows(c: &cost::Cost) -> String {
    let streams: Vec<String> = c
        .stored_per_task_by_stream
        .iter()
        .map(|(name, n)| format!("{name} {n:.2}"))
        .collect();
    let mut out = format!(
        "  {:<24} {:>10.2} per task ({})\n",
        "stored messages",
        c.stored_per_task,
        streams.join(", ")
    );
    out += &format!(
        "  {:<24} {:>10.2} per task (/jsz api.total: stream and consumer requests)\n",
        "JetStream API requests", c.api_calls_per_task
    );
    out += &format!(
        "  {:<24} {:>10.2} per task (/varz in_msgs: publishes, acks, gets, heartbeats)\n",
        "messages into NATS", c.msgs_in_per_task
    );
    if let Some(ms) = c.manager_cpu_ms_per_task {
        out += &format!("  {:<24} {:>10.3} ms per task\n", "manager CPU", ms);
    }
    out += &format!(
        "  {:<24} {:>10.1} MiB at the end\n",
        "JetStream store",
        c.storage_bytes as f64 / (1 << 20) as f64
    );
    out
}
