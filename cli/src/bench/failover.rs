//! `cube bench failover`: high availability in figures. (a) On a 3-node nats-server cluster
//! with every stream and bucket at three replicas and two managers, the leader is SIGKILLed
//! while submissions continue: how long until the standby's takeover is journaled, and until
//! its first placement, per `--lease-ttl`, over `--rounds`. (b) Placement throughput on that
//! cluster (R3) beside a single server (R1), each beside raw JetStream on the same servers
//! with the same replication, as `cube bench schedule` measures it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use cube_shared::{JournalEntry, ManagerRole};
use futures::StreamExt;
use serde::Serialize;

use super::schedule::{measure, raw_jetstream, ScheduleArgs};
use super::*;
use crate::serve::SchedulerKind;

#[derive(Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub common: Common,
    /// The managers' lease TTLs to measure failover with, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = crate::duration, default_value = "2s,6s")]
    pub lease_ttl: Vec<Duration>,
    /// Leader kills per lease TTL.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Simulated workers for the throughput measurement (the failover rounds use 3).
    #[arg(long, default_value_t = 100)]
    pub workers: usize,
    /// Tasks for the throughput measurement, on each of the two configurations.
    #[arg(long, default_value_t = 5_000)]
    pub tasks: usize,
    #[arg(long, value_enum, default_value_t = SchedulerKind::Spread)]
    pub scheduler: SchedulerKind,
    /// Skip the raw JetStream measurements.
    #[arg(long)]
    pub no_raw: bool,
    /// Only the failover rounds.
    #[arg(long, conflicts_with = "no_failover")]
    pub no_throughput: bool,
    /// Only the throughput comparison.
    #[arg(long)]
    pub no_failover: bool,
}

/// nats-servers in the cluster, and replicas of each stream and bucket on it.
const CLUSTER: usize = 3;
/// Simulated workers during the failover rounds.
const FAILOVER_WORKERS: usize = 3;
/// Submissions per second while the leader is dead.
const TRICKLE_PER_S: u64 = 20;

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub bench: &'static str,
    pub sync: String,
    pub servers: usize,
    pub replicas: usize,
    pub managers: usize,
    pub failover: Vec<TtlFigures>,
    pub throughput: Vec<Throughput>,
}

#[derive(Debug, Serialize)]
pub struct TtlFigures {
    pub lease_ttl_ms: f64,
    pub rounds: Vec<Round>,
    /// From the SIGKILL to the new leader's `leader` journal entry.
    pub takeover: Spread,
    /// From the SIGKILL to the first `scheduled` entry after it.
    pub first_placement: Spread,
}

#[derive(Debug, Serialize)]
pub struct Round {
    pub killed_pid: u32,
    pub epoch_before: Option<u64>,
    pub epoch_after: Option<u64>,
    pub takeover_ms: f64,
    pub first_placement_ms: f64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Spread {
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    fn of(mut ms: Vec<f64>) -> Spread {
        if ms.is_empty() {
            return Spread::default();
        }
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Spread {
            min_ms: ms[0],
            median_ms: median,
            max_ms: ms[n - 1],
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub servers: usize,
    pub replicas: usize,
    pub tasks: usize,
    pub workers: usize,
    pub tasks_per_s: f64,
    pub submit_to_running: Latency,
    pub message_bytes: usize,
    pub raw_jetstream_msgs_per_s: Option<f64>,
    pub ratio_to_raw: Option<f64>,
}

pub async fn run(args: FailoverArgs) -> Result<()> {
    if args.rounds == 0 || args.lease_ttl.is_empty() {
        bail!("--rounds and --lease-ttl must name at least one");
    }
    if args.tasks == 0 || args.workers == 0 {
        bail!("--tasks and --workers must be at least 1");
    }
    let mut report = FailoverReport {
        bench: "failover",
        sync: format!("{:?}", args.common.sync).to_lowercase(),
        servers: CLUSTER,
        replicas: CLUSTER,
        managers: 2,
        failover: Vec::new(),
        throughput: Vec::new(),
    };
    if !args.no_failover {
        for &ttl in &args.lease_ttl {
            eprintln!("failover: lease TTL {ttl:?}, {} rounds …", args.rounds);
            report.failover.push(failover(&args, ttl).await?);
        }
    }
    if !args.no_throughput {
        for (servers, replicas) in [(1, 1), (CLUSTER, CLUSTER)] {
            eprintln!(
                "throughput: {servers} server(s), R{replicas}, {} tasks …",
                args.tasks
            );
            report
                .throughput
                .push(throughput(&args, servers, replicas).await?);
        }
    }
    finish(&args.common, &table(&args, &report), &report)
}

/// What the bench saw in the journal, when it arrived.
#[derive(Default)]
struct Journal {
    leader: Vec<(Instant, JournalEntry)>,
    scheduled: Vec<Instant>,
}

async fn failover(args: &FailoverArgs, ttl: Duration) -> Result<TtlFigures> {
    let spec = HarnessSpec {
        scheduler: args.scheduler.name().to_string(),
        servers: CLUSTER,
        replicas: CLUSTER,
        lease_ttl: Some(ttl),
    };
    let mut harness = Harness::start_with(&args.common, spec).await?;
    let fleet = SimFleet::start(
        &harness.url,
        &SimSpec {
            count: FAILOVER_WORKERS,
            prefix: "ha-".into(),
            heartbeat: Duration::from_millis(500),
            start_latency: Duration::ZERO,
            cores: 1024.0,
            memory: 1 << 40,
        },
    )
    .await?;
    let outcome = rounds(args, ttl, &mut harness).await;
    let outcome = outcome.map_err(|e| e.context(harness.manager_log_tail(8)));
    fleet.stop().await;
    harness.stop().await;
    let rounds = outcome?;
    Ok(TtlFigures {
        lease_ttl_ms: ms(ttl),
        takeover: Spread::of(rounds.iter().map(|r| r.takeover_ms).collect()),
        first_placement: Spread::of(rounds.iter().map(|r| r.first_placement_ms).collect()),
        rounds,
    })
}

async fn rounds(args: &FailoverArgs, ttl: Duration, harness: &mut Harness) -> Result<Vec<Round>> {
    let cube = cube_client::Cube::new(harness.client.clone()).with_timeout(Duration::from_secs(5));
    harness.wait_for_nodes("ha-", FAILOVER_WORKERS).await?;
    harness.start_manager().await?;
    wait_for_pair(&cube, ttl).await?;

    let journal = Arc::new(Mutex::new(Journal::default()));
    let mut leaders = harness.client.subscribe(journal_for("leader")).await?;
    let mut scheduled = harness.client.subscribe(journal_for("scheduled")).await?;
    harness.client.flush().await?;
    let stop = CancellationToken::new();
    let _stop_watch = stop.clone().drop_guard();
    {
        let (journal, stop) = (journal.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    Some(m) = leaders.next() => {
                        if let Ok(e) = serde_json::from_slice::<JournalEntry>(&m.payload) {
                            journal.lock().unwrap_or_else(|p| p.into_inner()).leader.push((Instant::now(), e));
                        }
                    }
                    Some(_) = scheduled.next() => {
                        journal.lock().unwrap_or_else(|p| p.into_inner()).scheduled.push(Instant::now());
                    }
                    else => return,
                }
            }
        });
    }

    // The leader places before anything is killed.
    let mut next_task = 0;
    let before = Instant::now();
    submit_one(harness, &mut next_task).await?;
    wait_until(Duration::from_secs(30), "the first placement", || {
        journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .scheduled
            .iter()
            .any(|t| *t >= before)
    })
    .await?;

    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let managers = cube.managers(Duration::from_millis(500)).await?;
        let leader = managers
            .iter()
            .find(|m| m.role == ManagerRole::Leader)
            .context("no leader answers")?;
        let index = (0..2)
            .find(|&i| harness.pid_of(i) == Some(leader.pid))
            .with_context(|| {
                format!(
                    "the leader's pid {} is not one of the bench's managers",
                    leader.pid
                )
            })?;
        let (killed_pid, epoch_before) = (leader.pid, leader.epoch);

        let killed = Instant::now();
        harness.kill_manager(index).await?;
        // Submissions go on while nobody leads; JetStream keeps them for the next leader.
        let patience = ttl * 4 + Duration::from_secs(30);
        let mut pace = tokio::time::interval(Duration::from_millis(1000 / TRICKLE_PER_S));
        let (takeover, placement, epoch_after) = loop {
            pace.tick().await;
            submit_one(harness, &mut next_task).await?;
            let seen = journal.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, entry)) = seen.leader.iter().find(|(t, _)| *t >= killed) {
                if let Some(placed) = seen.scheduled.iter().find(|t| *t >= at) {
                    break (*at - killed, *placed - killed, epoch_in(&entry.message));
                }
            }
            if killed.elapsed() > patience {
                bail!(
                    "round {round}: no takeover and placement within {patience:?} of the leader's kill (leader entries since: {})",
                    seen.leader.iter().filter(|(t, _)| *t >= killed).count()
                );
            }
        };
        eprintln!(
            "  round {round}: leader pid {killed_pid} killed; takeover after {:.0} ms, first placement after {:.0} ms",
            ms(takeover),
            ms(placement)
        );
        rounds.push(Round {
            killed_pid,
            epoch_before,
            epoch_after,
            takeover_ms: ms(takeover),
            first_placement_ms: ms(placement),
        });
        // The killed manager comes back, as a standby, for the next round.
        harness.restart_manager(index).await?;
        wait_for_pair(&cube, ttl).await?;
    }
    Ok(rounds)
}

/// The epoch in a `leader` entry's message ("manager … leads at epoch N …").
fn epoch_in(message: &str) -> Option<u64> {
    let rest = message.split("at epoch ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn submit_one(harness: &Harness, next: &mut usize) -> Result<()> {
    let event = TaskEvent::submit(bench_task(*next));
    *next += 1;
    let publish = jetstream::message::PublishMessage::build()
        .payload(encode(&event))
        .message_id(event.id.to_string());
    // Not awaited: acknowledgements come from the cluster, not from the dead manager.
    harness.js.send_publish(EVENTS, publish).await?;
    Ok(())
}

/// Waits until two managers answer, one of them the leader.
async fn wait_for_pair(cube: &cube_client::Cube, ttl: Duration) -> Result<()> {
    let deadline = Instant::now() + ttl * 3 + Duration::from_secs(60);
    loop {
        let managers = cube.managers(Duration::from_millis(300)).await?;
        let leaders = managers
            .iter()
            .filter(|m| m.role == ManagerRole::Leader)
            .count();
        if managers.len() == 2 && leaders == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not one leader and one standby: {managers:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn throughput(args: &FailoverArgs, servers: usize, replicas: usize) -> Result<Throughput> {
    let spec = HarnessSpec {
        scheduler: args.scheduler.name().to_string(),
        servers,
        replicas,
        lease_ttl: None,
    };
    let harness = Harness::start_with(&args.common, spec).await?;
    let schedule = ScheduleArgs {
        common: args.common.clone(),
        tasks: args.tasks,
        workers: args.workers,
        scheduler: args.scheduler,
        rate: None,
        start_latency: Duration::ZERO,
        no_raw: args.no_raw,
    };
    let result = measure(&schedule, &harness).await;
    let raw = match (&result, args.no_raw) {
        (Ok(r), false) => Some(
            raw_jetstream(
                &harness.js,
                args.tasks,
                r.message_bytes,
                args.common.window,
                replicas,
            )
            .await,
        ),
        _ => None,
    };
    harness.stop().await;
    let r = result?;
    let raw = raw.transpose()?;
    Ok(Throughput {
        servers,
        replicas,
        tasks: args.tasks,
        workers: args.workers,
        tasks_per_s: r.tasks_per_s,
        submit_to_running: r.submit_to_running,
        message_bytes: r.message_bytes,
        raw_jetstream_msgs_per_s: raw,
        ratio_to_raw: raw.map(|raw| r.tasks_per_s / raw),
    })
}

fn table(args: &FailoverArgs, r: &FailoverReport) -> String {
    let mut out = format!("cube bench failover: JetStream sync {}\n", r.sync);
    if !r.failover.is_empty() {
        out += &format!(
            "  leader SIGKILLed {} times per lease TTL: {} nats-servers (R{}), 2 managers, {} simulated workers, {} submissions/s meanwhile\n",
            args.rounds, r.servers, r.replicas, FAILOVER_WORKERS, TRICKLE_PER_S
        );
        out += &format!(
            "  {:<14} {:>28}   {:>28}\n",
            "lease TTL", "kill → takeover (ms)", "kill → first placement (ms)"
        );
        out += &format!(
            "  {:<14} {:>8} {:>9} {:>9}   {:>8} {:>9} {:>9}\n",
            "", "min", "median", "max", "min", "median", "max"
        );
        for f in &r.failover {
            out += &format!(
                "  {:<14} {:>8.0} {:>9.0} {:>9.0}   {:>8.0} {:>9.0} {:>9.0}\n",
                format!("{:?}", Duration::from_secs_f64(f.lease_ttl_ms / 1000.0)),
                f.takeover.min_ms,
                f.takeover.median_ms,
                f.takeover.max_ms,
                f.first_placement.min_ms,
                f.first_placement.median_ms,
                f.first_placement.max_ms
            );
        }
    }
    if !r.throughput.is_empty() {
        out += &format!(
            "  placement throughput: {} tasks, {} simulated workers, first submission to last running\n",
            args.tasks, args.workers
        );
        for t in &r.throughput {
            let what = if t.servers == 1 {
                format!("1 server, R{}", t.replicas)
            } else {
                format!("{}-node cluster, R{}", t.servers, t.replicas)
            };
            out += &format!("  {:<24} {:>10.0} tasks/s", what, t.tasks_per_s);
            if let (Some(raw), Some(ratio)) = (t.raw_jetstream_msgs_per_s, t.ratio_to_raw) {
                out += &format!(
                    "   raw JetStream {:>8.0} msgs/s ({} B, publish+consume, R{})   Cube / raw {:.1} %",
                    raw,
                    t.message_bytes,
                    t.replicas,
                    ratio * 100.0
                );
            }
            out += "\n";
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_epoch() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.min_ms, s.median_ms, s.max_ms), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of(vec![4.0, 1.0]).median_ms, 2.5);
        assert_eq!(
            epoch_in("manager a, h, 1 leads at epoch 42 (took over from b)"),
            Some(42)
        );
        assert_eq!(epoch_in("manager a leads at epoch 7"), Some(7));
        assert_eq!(epoch_in("nothing"), None);
    }
}
