//! `cube bench docker`: real containers through Cube beside the same number created and started
//! directly through the Docker API, at the same concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use clap::Args;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::*;

/// The label every container of a run carries, raw or through Cube, so that all are removed.
const LABEL: &str = "cube.bench";

#[derive(Args, Debug)]
pub struct DockerArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many containers, each way, for throughput.
    #[arg(long, default_value_t = 50)]
    pub tasks: usize,
    /// How many containers are created and started at once, each way (the worker's
    /// concurrency for Cube).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How many containers, each way, started one at a time, for latency without queueing.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
}

#[derive(Debug, Serialize)]
pub struct DockerReport {
    pub bench: &'static str,
    pub tasks: usize,
    pub concurrency: usize,
    pub samples: usize,
    pub sync: String,
    /// Containers/s created and started directly through the Docker API.
    pub raw_per_s: f64,
    /// Create + start of one container, directly, `concurrency` at a time.
    pub raw_latency: Latency,
    /// Tasks/s from the first submission to the last `running`.
    pub cube_per_s: f64,
    /// Submit → running, `tasks` submitted at once (includes waiting for a free slot).
    pub cube_submit_to_running: Latency,
    /// cube_per_s / raw_per_s.
    pub ratio_to_raw: f64,
    /// One at a time: create + start directly, and submit → running through Cube.
    pub raw_sequential: Latency,
    pub cube_sequential: Latency,
    /// cube_sequential p50 minus raw_sequential p50: what Cube adds to one start.
    pub added_p50_ms: f64,
}

pub async fn run(args: DockerArgs) -> Result<()> {
    if args.tasks == 0 || args.concurrency == 0 || args.samples == 0 {
        bail!("--tasks, --concurrency and --samples must be at least 1");
    }
    let docker = Docker::connect_with_local_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("the Docker engine does not answer; is dockerd running?")?;
    docker
        .inspect_image(crate::IMAGE)
        .await
        .with_context(|| format!("image {} is missing: run scripts/setup", crate::IMAGE))?;
    let run_id = Uuid::new_v4().simple().to_string();
    let runtime = cube_worker::runtime::DockerRuntime::connect()
        .await
        .context("connecting to the Docker engine")?;

    let raw = async {
        let throughput = raw_docker(&docker, &runtime, args.tasks, args.concurrency, &run_id, 0);
        let (per_s, latency) = throughput.await?;
        remove_all(&docker, &run_id).await;
        let sequential = raw_docker(&docker, &runtime, args.samples, 1, &run_id, args.tasks);
        let (_, one_by_one) = sequential.await?;
        Ok::<_, anyhow::Error>((per_s, latency, one_by_one))
    }
    .await;
    remove_all(&docker, &run_id).await;
    let (raw_per_s, raw_latency, raw_sequential) = raw?;

    let harness = Harness::start(&args.common, "spread").await?;
    let cube = through_cube(&harness, &docker, &args, &run_id).await;
    harness.stop().await;
    remove_all(&docker, &run_id).await;
    let (cube_per_s, cube_latency, cube_sequential) = cube?;

    let report = DockerReport {
        bench: "docker",
        tasks: args.tasks,
        concurrency: args.concurrency,
        samples: args.samples,
        sync: format!("{:?}", args.common.sync).to_lowercase(),
        raw_per_s,
        raw_latency,
        cube_per_s,
        cube_submit_to_running: cube_latency,
        ratio_to_raw: cube_per_s / raw_per_s,
        raw_sequential,
        cube_sequential,
        added_p50_ms: cube_sequential.p50_ms - raw_sequential.p50_ms,
    };
    finish(&args.common, &table(&report), &report)
}

/// Creates and starts `tasks` containers, `concurrency` at a time: the very containers a
/// worker would create for the bench's tasks (same image, command, limits), one create and
/// one start call each.
async fn raw_docker(
    docker: &Docker,
    runtime: &cube_worker::runtime::DockerRuntime,
    count: usize,
    concurrency: usize,
    run_id: &str,
    first: usize,
) -> Result<(f64, Latency)> {
    let worker = format!("bench-raw-{}", &run_id[..8]);
    let mut inflight = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(count);
    let begin = Instant::now();
    for i in first..first + count {
        while inflight.len() >= concurrency {
            latencies.push(inflight.next().await.expect("not empty")?);
        }
        let docker = docker.clone();
        let task = bench_task(i);
        let mut body = runtime.create_body(&task, &worker);
        body.labels
            .get_or_insert_with(HashMap::new)
            .insert(LABEL.to_string(), run_id.to_string());
        let name = format!("cube-bench-raw-{run_id}-{i}");
        inflight.push(async move {
            let started = Instant::now();
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            let created = docker.create_container(Some(options), body).await?;
            docker.start_container(&created.id, None).await?;
            Ok::<_, anyhow::Error>(started.elapsed())
        });
    }
    while let Some(latency) = inflight.next().await {
        latencies.push(latency?);
    }
    Ok((per_second(count, begin.elapsed()), Latency::of(latencies)))
}

/// Submits `tasks` tasks at once to a manager with one Docker worker of the given
/// concurrency, then `samples` one at a time, each once the one before runs.
async fn through_cube(
    harness: &Harness,
    docker: &Docker,
    args: &DockerArgs,
    run_id: &str,
) -> Result<(f64, Latency, Latency)> {
    let name = format!("bench-{}", &run_id[..8]);
    let runtime = cube_worker::runtime::DockerRuntime::connect()
        .await
        .context("connecting the worker to Docker")?;
    let mut cfg = cube_worker::Config::new(&name);
    cfg.concurrency = args.concurrency;
    // The bench's containers sleep: offer cores for all of them, whatever this host has.
    cfg.cpu = Some((args.tasks + args.samples) as f64);
    cfg.labels.insert(LABEL.into(), run_id.into());
    let client = connect(&harness.url, &name).await?;
    let shutdown = CancellationToken::new();
    let worker = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(
            async move { cube_worker::run(cfg, client, Arc::new(runtime), shutdown).await },
        )
    };
    let task = |i: usize| {
        let mut t = bench_task(i);
        t.constraints = vec![format!("{LABEL}={run_id}")];
        t
    };
    let outcome = async {
        harness.wait_for_nodes(&name, 1).await?;
        let observer = Observer::start(&harness.client).await?;
        let patience = Duration::from_secs(60);
        let tasks: Vec<Task> = (0..args.tasks).map(task).collect();
        let (sent, _) = submit_all(&harness.js, tasks, args.common.window, None).await?;
        observer.wait_running(args.tasks, patience).await?;
        let (per_s, latency) = observer.measure(&sent);
        remove_all(docker, run_id).await;
        let mut one_by_one = HashMap::new();
        for i in 0..args.samples {
            let t = task(args.tasks + i);
            let (sent, _) = submit_all(&harness.js, vec![t], 1, None).await?;
            observer.wait_running(args.tasks + i + 1, patience).await?;
            one_by_one.extend(sent);
        }
        let (_, sequential) = observer.measure(&one_by_one);
        Ok::<_, anyhow::Error>((per_s, latency, sequential))
    }
    .await;
    shutdown.cancel();
    match worker.await {
        Ok(Err(e)) => eprintln!("the bench's worker: {e}"),
        Err(e) => eprintln!("the bench's worker: {e}"),
        Ok(Ok(())) => {}
    }
    outcome
}

/// Removes every container of this run: the raw ones by the run's label, Cube's by the
/// worker's name.
async fn remove_all(docker: &Docker, run_id: &str) {
    let worker = format!("{}=bench-{}", cube_shared::LABEL_WORKER, &run_id[..8]);
    for label in [format!("{LABEL}={run_id}"), worker] {
        let filters = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let Ok(containers) = docker.list_containers(Some(options)).await else {
            continue;
        };
        let removals = containers.into_iter().filter_map(|c| c.id).map(|id| {
            let docker = docker.clone();
            async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                if let Err(e) = docker.remove_container(&id, Some(options)).await {
                    eprintln!("removing container {id}: {e}");
                }
            }
        });
        futures::future::join_all(removals).await;
    }
}

fn table(r: &DockerReport) -> String {
    let mut out = format!(
        "cube bench docker: {} containers each way, concurrency {}, JetStream sync {}\n",
        r.tasks, r.concurrency, r.sync
    );
    out += &format!(
        "  {:<24} {:>10.2} containers/s\n",
        "raw Docker API", r.raw_per_s
    );
    out += &r.raw_latency.row("create + start");
    out += "\n";
    out += &format!("  {:<24} {:>10.2} tasks/s\n", "through Cube", r.cube_per_s);
    out += &r.cube_submit_to_running.row("submit → running");
    out += "\n";
    out += &format!(
        "  {:<24} {:>10.1} %\n",
        "Cube / raw Docker",
        r.ratio_to_raw * 100.0
    );
    out += &format!("  one at a time ({}):\n", r.samples);
    out += &r.raw_sequential.row("raw create + start");
    out += "\n";
    out += &r.cube_sequential.row("Cube submit → running");
    out += "\n";
    out += &format!(
        "  {:<24} {:>10.1} ms  (p50 one at a time, Cube minus raw)\n",
        "Cube's added latency", r.added_p50_ms
    );
    out
}
