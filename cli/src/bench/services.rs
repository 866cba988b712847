//! `cube bench services`: how long the manager's reconciler takes to bring a service of many
//! copies up on simulated workers, and to roll all of them over to a new version, beside the
//! same number of plain tasks submitted one by one in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use cube_client::Cube;
use cube_shared::{
    RolloutState, ServiceEvent, ServiceKind, ServiceSpec, ServiceStatus, UpdatePolicy,
};
use serde::Serialize;

use super::*;

#[derive(Args, Debug)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub common: Common,
    /// Copies of the service.
    #[arg(long, default_value_t = 1000)]
    pub copies: u32,
    /// How many simulated workers.
    #[arg(long, default_value_t = 100)]
    pub workers: usize,
    /// The rolling update's `max_parallel`.
    #[arg(long, default_value_t = 100)]
    pub max_parallel: u32,
    /// The rolling update's `min_healthy_time`.
    #[arg(long, default_value = "0s", value_parser = crate::duration)]
    pub min_healthy_time: Duration,
    /// How long the whole run may take before it gives up.
    #[arg(long, default_value = "10m", value_parser = crate::duration)]
    pub patience: Duration,
}

#[derive(Debug, Serialize)]
pub struct ServicesReport {
    pub bench: &'static str,
    pub copies: u32,
    pub workers: usize,
    pub max_parallel: u32,
    pub min_healthy_time_s: f64,
    pub sync: String,
    /// The same number of plain tasks, submitted one by one: first submission to the last
    /// one running.
    pub tasks_to_running_s: f64,
    /// Deploy to every copy running (as the manager reports it).
    pub deploy_to_running_s: f64,
    /// A new template deployed to the rollout succeeded (every copy replaced).
    pub rolling_update_s: f64,
    /// The most copies that ran at once during the update (at most copies + max_parallel).
    pub most_copies_during_update: u32,
}

pub async fn run(args: ServicesArgs) -> Result<()> {
    if args.copies == 0 || args.workers == 0 {
        bail!("--copies and --workers must be at least 1");
    }
    let common = &args.common;
    let harness = Harness::start(common, "spread").await?;
    let spec = SimSpec {
        count: args.workers,
        prefix: "sim-".into(),
        heartbeat: Duration::from_secs(1),
        start_latency: Duration::ZERO,
        cores: 1024.0,
        memory: 1 << 40,
    };
    let fleet = SimFleet::start(&harness.url, &spec).await?;
    let result = async {
        harness.wait_for_nodes(&spec.prefix, args.workers).await?;
        measure(&args, &harness).await
    }
    .await;
    fleet.stop().await;
    let result = result.map_err(|e| e.context(harness.manager_log_tail(5)));
    harness.stop().await;
    let report = result?;
    finish(common, &table(&report), &report)
}

async fn measure(args: &ServicesArgs, harness: &Harness) -> Result<ServicesReport> {
    let deadline = Instant::now() + args.patience;
    // The limit in the same run: as many plain tasks.
    let observer = Observer::start(&harness.client).await?;
    let tasks: Vec<Task> = (0..args.copies as usize).map(bench_task).collect();
    let (sent, _) = submit_all(&harness.js, tasks, args.common.window, None).await?;
    observer
        .wait_running(args.copies as usize, args.patience)
        .await?;
    let (tasks_per_s, _) = observer.measure(&sent);
    drop(observer);
    let tasks_to_running = args.copies as f64 / tasks_per_s;

    let cube = Cube::new(harness.client.clone()).with_timeout(Duration::from_secs(30));
    let mut service = ServiceSpec {
        name: "bench".into(),
        kind: ServiceKind::Service,
        count: args.copies,
        template: bench_task(0),
        update: UpdatePolicy {
            max_parallel: Some(args.max_parallel),
            min_healthy_time: Some(args.min_healthy_time),
            ..Default::default()
        },
        max_failures: None,
    };
    service.template.name = String::new();
    let began = Instant::now();
    cube.deploy(service.clone()).await?;
    wait_for(&cube, deadline, |s| {
        s.service.version == 1 && s.running == args.copies && rolled_out(s)
    })
    .await?;
    let deploy_to_running = began.elapsed();

    service.template.env = vec!["VERSION=2".into()];
    let began = Instant::now();
    cube.publish_service(&ServiceEvent::deploy(service)).await?;
    let mut most = 0;
    wait_for(&cube, deadline, |s| {
        most = most.max(s.copies.len() as u32);
        s.service.version == 2 && rolled_out(s) && s.running == args.copies
    })
    .await?;
    let rolling_update = began.elapsed();
    Ok(ServicesReport {
        bench: "services",
        copies: args.copies,
        workers: args.workers,
        max_parallel: args.max_parallel,
        min_healthy_time_s: args.min_healthy_time.as_secs_f64(),
        sync: format!("{:?}", args.common.sync).to_lowercase(),
        tasks_to_running_s: tasks_to_running,
        deploy_to_running_s: deploy_to_running.as_secs_f64(),
        rolling_update_s: rolling_update.as_secs_f64(),
        most_copies_during_update: most,
    })
}

fn rolled_out(s: &ServiceStatus) -> bool {
    s.service.rollout.as_ref().map(|r| r.state) == Some(RolloutState::Succeeded)
}

/// Asks for the service every 100 ms until `done` holds.
async fn wait_for(
    cube: &Cube,
    deadline: Instant,
    mut done: impl FnMut(&ServiceStatus) -> bool,
) -> Result<()> {
    loop {
        let last = match cube.service("bench").await {
            Ok(s) if done(&s) => return Ok(()),
            Ok(s) => format!(
                "version {}, {} running, rollout {:?}",
                s.service.version,
                s.running,
                s.service.rollout.map(|r| r.state)
            ),
            Err(e) => cube_client::Chain(&e).to_string(),
        };
        if Instant::now() >= deadline {
            bail!("the service did not get there in time: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn table(r: &ServicesReport) -> String {
    format!(
        "cube bench services: a service of {} copies on {} simulated workers (sync {}; rolling update {} at a time, min healthy {}s)\n\
         {:<44} {:>9.2} s\n\
         {:<44} {:>9.2} s\n\
         {:<44} {:>9.2} s  (at most {} copies at once)",
        r.copies,
        r.workers,
        r.sync,
        r.max_parallel,
        r.min_healthy_time_s,
        format!("{} plain tasks, submitted to all running", r.copies),
        r.tasks_to_running_s,
        "service deployed to all copies running",
        r.deploy_to_running_s,
        "rolling update to every copy replaced",
        r.rolling_update_s,
        r.most_copies_during_update,
    )
}
