//! Gray failures (issue 15): the manager, a worker or nats-server is partitioned, paused or has
//! its clock stepped, for far longer than a node's TTL + grace, while healthy tasks run. After
//! each fault heals, no healthy task has failed or restarted, each task runs in exactly one
//! container, and what the manager's API shows is true. "Exactly one" and "never restarted" are
//! Docker's own word: its create and die events, recorded from before the first worker started,
//! and its container list.
//!
//! Each test runs a real nats-server, the `cube` manager and workers as child processes and
//! real containers; `.config/nextest.toml` runs them one at a time (group `faults`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cube_shared::{NodeState, RestartPolicy, State, Task, TaskListQuery};
use cube_tests::oracle::{self, untouched, Expect};
use cube_tests::procs::ProcCluster;
use cube_tests::{consistently, eventually, WITHIN};
use futures::StreamExt;
use tokio::time::Instant;
use uuid::Uuid;

/// A node silent for `TTL` is unreachable; after `TTL + GRACE` it is judged (`--node-ttl`,
/// `--node-grace`). Every fault below lasts many times longer.
const TTL: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(2);
const JUDGED: Duration = TTL.saturating_add(GRACE);
/// How long the faults of the issue last.
const OUTAGE: Duration = Duration::from_secs(30);

/// A manager with the short TTL and grace; its lost-after is the default (10 min), far beyond
/// any test.
async fn cluster(setup: impl FnOnce(&mut ProcCluster) -> Result<()>) -> Result<ProcCluster> {
    let mut c = ProcCluster::new().await?;
    c.manager_args = vec![
        "--node-ttl".into(),
        format!("{}s", TTL.as_secs()),
        "--node-grace".into(),
        format!("{}s", GRACE.as_secs()),
    ];
    setup(&mut c)?;
    Ok(c)
}

fn sleeper(policy: RestartPolicy) -> Task {
    let mut t = cube_tests::sleeper();
    t.restart_policy = policy;
    t
}

/// Submits `n` long-running tasks, two of policy `no` (the default), then two `on-failure`,
/// and so on (the spread scheduler alternates between two workers: each gets both kinds), and
/// returns them once all run.
async fn workload(c: &mut ProcCluster, n: usize) -> Result<HashMap<Uuid, Task>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let policy = if i / 2 % 2 == 0 {
            RestartPolicy::No
        } else {
            RestartPolicy::OnFailure
        };
        ids.push(c.submit(sleeper(policy)).await?);
    }
    c.wait_all(&ids, State::Running, WITHIN).await
}

/// After a heal: every worker ready again, two TTL + grace later each task is as expected.
async fn settled(c: &mut ProcCluster, expect: &HashMap<Uuid, Expect>) -> Result<()> {
    oracle::settled(c, expect, JUDGED * 2).await
}

/// Both outcomes: what went wrong during the fault and after it, if anything did.
fn both(during: Result<()>, after: Result<()>) -> Result<()> {
    match (during, after) {
        (Ok(()), after) => after,
        (Err(e), Ok(())) => Err(e.context("during the fault (all was well after it)")),
        (Err(during), Err(after)) => bail!("during the fault: {during:#}\n\nafter it: {after:#}"),
    }
}

/// The state the manager shows for each node.
async fn node_states(c: &ProcCluster) -> Result<HashMap<String, NodeState>> {
    let nodes = c.cube().nodes().await?;
    Ok(nodes.into_iter().map(|n| (n.name, n.state)).collect())
}

/// (a) nats-server down for 30 s (SIGKILL, then started again on its port and store), then
/// back: every task runs on, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_30s_kills_nothing() -> Result<()> {
    let mut c = cluster(|_| Ok(())).await?;
    let result = nats_down(&mut c).await;
    c.explain(result)
}

async fn nats_down(c: &mut ProcCluster) -> Result<()> {
    c.start_manager().await?;
    c.add_worker().await?;
    c.add_worker().await?;
    let before = workload(c, 8).await?;
    c.nats.restart_after(OUTAGE).await?;
    settled(c, &untouched(&before)).await
}

/// (b) The manager's path to NATS black-holed for 30 s (a stalled proxy: its connection stays
/// open and silent) while the workers run: nothing is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_cut_off_from_nats_30s_kills_nothing() -> Result<()> {
    let mut c = cluster(|_| Ok(())).await?;
    let result = manager_cut_off(&mut c).await;
    c.explain(result)
}

async fn manager_cut_off(c: &mut ProcCluster) -> Result<()> {
    c.proxy_manager().await?;
    c.start_manager().await?;
    c.add_worker().await?;
    c.add_worker().await?;
    let before = workload(c, 8).await?;
    c.manager_proxy()?.stall();
    tokio::time::sleep(OUTAGE).await;
    c.manager_proxy()?.heal();
    settled(c, &untouched(&before)).await
}

/// (d) The manager paused (SIGSTOP) for 30 s, then resumed (SIGCONT): nothing is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_paused_30s_kills_nothing() -> Result<()> {
    let mut c = cluster(|_| Ok(())).await?;
    let result = manager_paused(&mut c).await;
    c.explain(result)
}

async fn manager_paused(c: &mut ProcCluster) -> Result<()> {
    c.start_manager().await?;
    c.add_worker().await?;
    c.add_worker().await?;
    let before = workload(c, 8).await?;
    c.signal_manager("STOP")?;
    tokio::time::sleep(OUTAGE).await;
    c.signal_manager("CONT")?;
    settled(c, &untouched(&before)).await
}

/// (f) The manager's wall clock stepped forward 60 s (libfaketime; its monotonic clock does
/// not move, as with a real NTP step): no node is declared down, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_clock_stepped_forward_60s_kills_nothing() -> Result<()> {
    let mut c = cluster(ProcCluster::fake_manager_clock).await?;
    let result = clock_step(&mut c).await;
    c.explain(result)
}

async fn clock_step(c: &mut ProcCluster) -> Result<()> {
    const STEP: i64 = 60;
    c.start_manager().await?;
    c.add_worker().await?;
    c.add_worker().await?;
    let before = workload(c, 8).await?;
    c.step_manager_clock(STEP)?;
    // The step took: the manager stamps a submission with its own (stepped) clock.
    let probe = c.submit(cube_tests::task(&["true"])).await?;
    let stamped = eventually(WITHIN, "the manager stamps the probe", || async {
        c.task(probe).await?.submitted_at.context("not stamped yet")
    })
    .await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let ahead = stamped.timestamp() - now.as_secs() as i64;
    ensure!(
        ahead >= STEP - 10,
        "the manager's clock is not {STEP} s ahead after the step: it stamped {stamped} ({ahead} s \
         ahead): is libfaketime preloaded?"
    );
    let names = c.worker_names().to_vec();
    let during = consistently(JUDGED * 3, "every node stays ready", || async {
        let nodes = node_states(c).await?;
        for name in &names {
            let state = nodes.get(name);
            ensure!(state == Some(&NodeState::Ready), "{name} is {state:?}");
        }
        Ok(())
    })
    .await;
    let after = settled(c, &untouched(&before)).await;
    both(during, after)
}

/// (c) One worker of two cut off (its path to NATS black-holed) for three times TTL + grace
/// while it runs tasks of policy `no` and `on-failure`, then healed. While it is away, the API
/// shows its node `unreachable` and its tasks `node_unreachable`; its `no` tasks are never
/// failed and never killed (they wait for their node), its `on-failure` tasks are replaced on
/// the other worker. Once healed, every task runs exactly once: the replacement where one
/// started, the original otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_keeps_its_no_tasks_and_on_failure_tasks_move_once() -> Result<()> {
    let mut c = cluster(|_| Ok(())).await?;
    let result = worker_cut_off(&mut c).await;
    c.explain(result)
}

async fn worker_cut_off(c: &mut ProcCluster) -> Result<()> {
    c.start_manager().await?;
    let away = c.add_proxied_worker().await?;
    let mut before = workload(c, 4).await?;
    // The other worker, empty, gets the next four (the spread scheduler picks the least full).
    let stays = c.add_worker().await?;
    before.extend(workload(c, 4).await?);
    let on_away = |policy: RestartPolicy| -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = before
            .values()
            .filter(|t| t.worker.as_deref() == Some(away.as_str()) && t.restart_policy == policy)
            .map(|t| t.id)
            .collect();
        ids.sort();
        ids
    };
    let (waiting, moving) = (
        on_away(RestartPolicy::No),
        on_away(RestartPolicy::OnFailure),
    );
    ensure!(
        !waiting.is_empty() && !moving.is_empty(),
        "placement: {away} runs {} `no` and {} `on-failure` tasks, want some of each",
        waiting.len(),
        moving.len()
    );

    c.worker_proxy(&away)?.stall();
    let cut = Instant::now();
    let (mut seen, mut problems) = (Vec::<NodeState>::new(), BTreeMap::<Uuid, String>::new());
    let mut replaced: HashMap<Uuid, Task> = HashMap::new();
    let mut last: Option<HashMap<Uuid, Task>> = None;
    while cut.elapsed() < JUDGED * 3 || (replaced.len() < moving.len() && cut.elapsed() < WITHIN) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.check_alive()?;
        let (Ok(nodes), Ok(tasks)) = (node_states(c).await, c.tasks().await) else {
            continue;
        };
        if let Some(state) = nodes.get(&away) {
            if seen.last() != Some(state) {
                seen.push(*state);
            }
        }
        for id in &waiting {
            let t = &tasks[id];
            if t.state != State::Running && !problems.contains_key(id) {
                let at = cut.elapsed().as_secs_f32();
                problems.insert(
                    *id,
                    format!(
                        "task {id} (`no`) became {} ({:?}) {at:.1} s into the cut",
                        t.state, t.error
                    ),
                );
            }
        }
        for id in &moving {
            let t = &tasks[id];
            if t.state == State::Running && t.worker.as_deref() == Some(stays.as_str()) {
                replaced.insert(*id, t.clone());
            }
        }
        last = Some(tasks);
    }
    // The manager's view at the end of the cut.
    let mut during: Vec<String> = problems.into_values().collect();
    if !seen.contains(&NodeState::Unreachable) {
        during.push(format!(
            "{away}'s node was never shown unreachable: {seen:?}"
        ));
    }
    for id in &moving {
        if !replaced.contains_key(id) {
            during.push(format!(
                "task {id} (`on-failure`) was not replaced on {stays}"
            ));
        }
    }
    if let Some(tasks) = &last {
        for id in &waiting {
            let t = &tasks[id];
            if !t.node_unreachable {
                during.push(format!(
                    "task {id} (`no`) is not shown node_unreachable: {}",
                    t.state
                ));
            }
        }
    }
    eprintln!(
        "cut off for {:?}: {away}'s node went {seen:?}; {} of {} `on-failure` tasks replaced",
        cut.elapsed(),
        replaced.len(),
        moving.len()
    );
    c.worker_proxy(&away)?.heal();

    let mut expect = untouched(&before);
    for (id, copy) in replaced {
        // The replacement runs; the original was stopped once its worker was heard again.
        expect.insert(
            id,
            Expect {
                copy,
                creates: 2,
                deaths: 1,
            },
        );
    }
    let during = if during.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", during.join("\n  ")))
    };
    let after = settled(c, &expect).await;
    both(during, after)
}

/// (e) A worker running 5,000 tasks (simulated runtime) stays ready, and none of its tasks is
/// lost, for three times TTL + grace: its heartbeats do not outgrow any limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_5000_tasks_stays_ready() -> Result<()> {
    let mut c = cluster(|_| Ok(())).await?;
    let result = five_thousand(&mut c).await;
    c.explain(result)
}

async fn five_thousand(c: &mut ProcCluster) -> Result<()> {
    const TASKS: usize = 5_000;
    c.start_manager().await?;
    c.worker_args = ["--runtime", "sim", "--cpu", "64", "--memory", "64g"]
        .map(String::from)
        .to_vec();
    let sim = c.add_worker().await?;
    let began = Instant::now();
    let submitted: Vec<Result<Uuid>> = futures::stream::iter(0..TASKS)
        .map(|_| {
            let mut t = cube_tests::sleeper();
            t.cpu = 0.01;
            t.memory = 6 << 20;
            c.submit(t)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let failed = submitted.iter().filter(|r| r.is_err()).count();
    ensure!(
        failed == 0,
        "{failed} of {TASKS} submissions failed: {:?}",
        submitted.iter().find(|r| r.is_err())
    );
    eprintln!("{TASKS} submitted in {:?}", began.elapsed());

    // Every task running (or, as soon as one has failed, the counts that show it).
    let (mut seen, deadline) = (
        Vec::<Option<NodeState>>::new(),
        began + Duration::from_secs(240),
    );
    loop {
        c.check_alive()?;
        if let Ok((counts, state)) = counts(c, &sim).await {
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            let running = counts.get(&State::Running).copied().unwrap_or(0);
            if running == TASKS {
                break;
            }
            let lost = counts.get(&State::Failed).copied().unwrap_or(0);
            ensure!(
                lost == 0 && Instant::now() < deadline,
                "after {:?}, {running} of {TASKS} tasks run, {lost} failed: {counts:?}; {sim}'s \
                 node went {seen:?}",
                began.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{TASKS} running after {:?}; node went {seen:?}",
        began.elapsed()
    );
    consistently(
        JUDGED * 3,
        "the node is ready and all tasks run",
        || async {
            let (counts, state) = counts(c, &sim).await?;
            ensure!(
                state == Some(NodeState::Ready),
                "{sim} is {state:?}; tasks {counts:?}"
            );
            let all = BTreeMap::from([(State::Running, TASKS)]);
            ensure!(counts == all, "tasks {counts:?}");
            Ok(())
        },
    )
    .await?;
    // The simulated runtime never touches Docker.
    ensure!(
        c.creates.total() == 0,
        "Docker created {} containers",
        c.creates.total()
    );
    Ok(())
}

/// How many tasks the manager knows in each state, and the state it shows for node `name`.
async fn counts(
    c: &ProcCluster,
    name: &str,
) -> Result<(BTreeMap<State, usize>, Option<NodeState>)> {
    let query = TaskListQuery {
        state: None,
        limit: Some(0),
    };
    let list = c.cube().tasks(&query).await?;
    let state = node_states(c).await?.get(name).copied();
    Ok((list.counts, state))
}
