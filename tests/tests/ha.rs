//! Standby managers and a fenced lease (issue 16), on a real nats-server and the real Docker
//! engine: the leader dies, or is cut off from NATS by a real network partition, while tasks
//! are being submitted. A standby takes over within the lease's TTL; a deposed leader writes
//! nothing more to the Task DB once its successor has written (its history, as JetStream
//! stored it, says so); every task runs, and Docker's own events count exactly one container
//! per task.
//!
//! These tests run several managers, workers and hundreds of containers, and one needs root
//! (a network namespace and iptables); `.config/nextest.toml` runs them one at a time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cube_shared::subjects::PENDING;
use cube_shared::{ManagerRole, State, Task, TaskEvent};
use cube_tests::history::{check_fenced, epochs, Record, TaskDbHistory};
use cube_tests::netns::Netns;
use cube_tests::procs::{describe_managers, ProcCluster, GATHER};
use cube_tests::{eventually, task, NatsServer, Rng};
use futures::StreamExt;
use tokio::time::Instant;
use uuid::Uuid;

/// The lease's TTL in these tests: a takeover is due within it (plus a second).
const TTL: Duration = Duration::from_secs(2);

/// How many tasks test 1 submits.
const TASKS: usize = 200;

/// A short task: each completes a few seconds after it starts.
fn short() -> Task {
    task(&["sleep", "3"])
}

/// Checks what the managers' Task DB says of `ids` (all completed, each having run on one of
/// the cluster's workers and exited 0) and what Docker's events say (one container each,
/// none for any other task).
async fn all_ran_once(c: &mut ProcCluster, ids: &[Uuid], began: Instant) -> Result<()> {
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    ensure!(distinct.len() == ids.len(), "the task ids are distinct");
    let tasks = c
        .wait_all(ids, State::Completed, Duration::from_secs(180))
        .await?;
    eprintln!(
        "all {} tasks completed {:?} after the first submission",
        ids.len(),
        began.elapsed()
    );
    c.ensure_ran_cleanly_here(&tasks)?;
    c.creates.assert_exactly_one_each(ids)?;
    ensure!(
        c.creates.counts().len() == ids.len() && c.creates.total() == ids.len(),
        "Docker created {} containers for {} tasks, {} tasks submitted",
        c.creates.total(),
        c.creates.counts().len(),
        ids.len()
    );
    Ok(())
}

/// Issue 16, test 1: two managers (lease TTL 2 s), two workers on Docker, 200 submissions;
/// the leader is SIGKILLed at a random point during them. The standby answers as leader
/// within the TTL plus a second of the kill, at a newer epoch, and journals the takeover;
/// all 200 tasks run, Docker created exactly one container each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_within_the_ttl_when_the_leader_is_killed_during_200_submissions(
) -> Result<()> {
    let mut c = ProcCluster::new().await?;
    let result = leader_killed(&mut c).await;
    c.explain(result)
}

async fn leader_killed(c: &mut ProcCluster) -> Result<()> {
    let takeovers = c.follow_takeovers().await?;
    let first = c.spawn_manager(TTL).await?;
    let (leading, _) = c.wait_leader(None, Duration::from_secs(30)).await?;
    ensure!(leading.pid == first, "the first manager leads: {leading:?}");
    let second = c.spawn_manager(TTL).await?;
    let before = c.wait_roles(first, &[second]).await?;
    let old_epoch = before.epoch.context("the leader names its epoch")?;
    for _ in 0..2 {
        c.add_worker().await?;
    }

    let mut rng = Rng::from_env_or_random("CUBE_FAULT_SEED");
    let kill_at = rng.range(40, 100);
    eprintln!("the leader (pid {first}, epoch {old_epoch}) is SIGKILLed before task {kill_at}");
    let began = Instant::now();
    let mut ids = Vec::with_capacity(TASKS);
    for i in 0..kill_at {
        ids.push(submit(c, i).await?);
        tokio::time::sleep(Duration::from_millis(rng.range(10, 50) as u64)).await;
    }
    let (old, killed) = c.kill_leader().await?;
    ensure!(old.pid == first, "the leader killed is the first manager");
    let c_ref: &ProcCluster = c;
    let pace: Vec<u64> = (kill_at..TASKS).map(|_| rng.range(10, 50) as u64).collect();
    let submitting = async {
        let mut more = Vec::with_capacity(TASKS - kill_at);
        for (i, pause) in (kill_at..TASKS).zip(pace) {
            more.push((submit(c_ref, i).await?, Instant::now()));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok::<_, anyhow::Error>(more)
    };
    let (new, more) = tokio::join!(
        c_ref.wait_leader(Some(old.id), TTL + Duration::from_secs(10)),
        submitting
    );
    let (new, answered) = new?;
    let more = more?;
    let after = more.iter().filter(|(_, at)| *at > answered).count();
    ids.extend(more.into_iter().map(|(id, _)| id));
    let submitted = began.elapsed();
    let took = answered - killed;
    eprintln!(
        "takeover: pid {} answers as leader at epoch {:?} {took:?} after the SIGKILL; {TASKS} \
         submitted in {submitted:?}, {after} of them after the takeover",
        new.pid, new.epoch
    );
    ensure!(
        new.pid == second,
        "the standby took over: {new:?} (standby pid {second})"
    );
    let new_epoch = new.epoch.context("the new leader names its epoch")?;
    ensure!(new_epoch > old_epoch, "epoch {new_epoch} after {old_epoch}");
    ensure!(
        took <= TTL + Duration::from_secs(1),
        "the standby took over {took:?} after the leader's death: more than the TTL ({TTL:?}) \
         plus a second"
    );
    let (entry, journaled) = takeovers
        .wait_epoch(new_epoch, Duration::from_secs(10))
        .await?;
    eprintln!(
        "the journal's `leader` entry arrived {:?} after the SIGKILL: {}",
        journaled - killed,
        entry.message
    );
    let lease = c.lease().await?.context("nobody holds the lease")?;
    ensure!(
        lease.holder.id == new.id && lease.epoch == new_epoch,
        "the lease names the new leader at its epoch: {lease:?}"
    );

    all_ran_once(c, &ids, began).await?;
    let now = c.leader().await?;
    ensure!(
        now.pid == second && now.epoch == Some(new_epoch),
        "the new leader still leads: {now:?}"
    );
    Ok(())
}

/// Each message's epoch, and when it arrived here.
type Epochs = Arc<Mutex<Vec<(Option<u64>, Instant)>>>;

/// The work sent to workers (`tasks.pending.>`: placements and stops), each message's epoch
/// and when it arrived here, as a plain subscriber sees it.
struct WorkSent {
    seen: Epochs,
    task: tokio::task::JoinHandle<()>,
}

impl WorkSent {
    async fn record(client: &async_nats::Client) -> Result<WorkSent> {
        let mut sub = client.subscribe(format!("{PENDING}.>")).await?;
        client.flush().await?;
        let seen: Epochs = Arc::default();
        let into = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let epoch = serde_json::from_slice::<TaskEvent>(&msg.payload)
                    .ok()
                    .and_then(|e| e.epoch);
                into.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((epoch, Instant::now()));
            }
        });
        Ok(WorkSent { seen, task })
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many messages of epoch `old` arrived after the first of epoch `new`, and when the
    /// first of them did.
    fn after_first(&self, old: u64, new: u64) -> (usize, Option<Instant>) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first_new) = seen.iter().position(|(e, _)| *e == Some(new)) else {
            return (0, None);
        };
        let late: Vec<Instant> = seen[first_new..]
            .iter()
            .filter(|(e, _)| *e == Some(old))
            .map(|(_, at)| *at)
            .collect();
        (late.len(), late.first().copied())
    }
}

impl Drop for WorkSent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn submit(c: &ProcCluster, i: usize) -> Result<Uuid> {
    c.submit(short())
        .await
        .with_context(|| format!("submitting task {i}"))
}

/// Issue 16, test 2: the leader runs in a network namespace of its own and is cut off from
/// NATS while tasks are being submitted, in the middle of a burst of them: iptables drops
/// what it sends, then, half a second later, its packets both ways (its connection stalls,
/// nobody is told). The standby takes over; the link is healed while submissions go on; the
/// old leader, whose connection comes back with the writes it sent meanwhile, must have
/// written nothing to the Task DB after the new leader's first write (the history as
/// JetStream stored it), answers as a standby, and the new leader leads on. Every task runs,
/// and Docker created one container for each. What it had in flight (Task DB writes refused
/// by the fence, or work the workers refuse for its epoch) must have arrived after the new
/// leader's, or the run proved nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_nats_is_replaced_and_writes_nothing_once_healed() -> Result<()> {
    let mut ns = Netns::create()?;
    let nats = NatsServer::start_on(ns.host_ip().into()).await?;
    let mut c = ProcCluster::on(nats).await?;
    let result = leader_partitioned(&mut c, &mut ns).await;
    let result = c.explain(result);
    // The manager in the namespace goes before the namespace.
    drop(c);
    drop(ns);
    result
}

async fn leader_partitioned(c: &mut ProcCluster, ns: &mut Netns) -> Result<()> {
    /// Submissions before the cut, and after the heal.
    const BEFORE_CUT: usize = 40;
    const AFTER_HEAL: usize = 30;
    /// Submitted all at once, the link cut when a third of them are stored, so that the
    /// leader is cut off in the middle of handling them.
    const BURST: usize = 40;
    /// How long the link is cut one way only (what the leader sends is lost) before it is
    /// cut both ways: the leader goes on receiving submissions and deciding, and the writes
    /// it sends stall in its socket, to arrive (and be refused) once healed.
    const ONE_WAY: Duration = Duration::from_millis(500);
    /// How long the link stays cut after the takeover, submissions going on.
    const CUT_AFTER_TAKEOVER: Duration = Duration::from_secs(2);

    let takeovers = c.follow_takeovers().await?;
    let old_pid = c.spawn_manager_in(ns, TTL).await?;
    let (leading, _) = c.wait_leader(None, Duration::from_secs(30)).await?;
    ensure!(
        leading.pid == old_pid,
        "the manager in the namespace leads: {leading:?}"
    );
    let mut history = TaskDbHistory::record(&c.client).await?;
    let work = WorkSent::record(&c.client).await?;
    let standby = c.spawn_manager(TTL).await?;
    let old = c.wait_roles(old_pid, &[standby]).await?;
    let old_epoch = old.epoch.context("the leader names its epoch")?;
    for _ in 0..2 {
        c.add_worker().await?;
    }
    eprintln!(
        "the leader (pid {old_pid}, epoch {old_epoch}) runs in {} and reaches NATS at {}",
        ns.name(),
        c.nats.url()
    );

    let submitted = AtomicUsize::new(0);
    let healed = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let began = Instant::now();
    let c_ref: &ProcCluster = c;
    let submitting = async {
        let mut ids = Vec::new();
        let mut after_heal = 0;
        let mut rng = Rng::new(began.elapsed().as_nanos() as u64);
        while after_heal < AFTER_HEAL && ids.len() < 1000 && !failed.load(Ordering::SeqCst) {
            let i = ids.len();
            if i == BEFORE_CUT {
                let counter = &submitted;
                let burst = (i..i + BURST).map(|i| async move {
                    let id = submit(c_ref, i).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    id
                });
                let burst: Result<Vec<Uuid>> =
                    futures::future::join_all(burst).await.into_iter().collect();
                if burst.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                ids.extend(burst?);
                submitted.store(ids.len(), Ordering::SeqCst);
                continue;
            }
            let id = submit(c_ref, i).await;
            if id.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            ids.push(id?);
            submitted.store(ids.len(), Ordering::SeqCst);
            if healed.load(Ordering::SeqCst) {
                after_heal += 1;
            }
            tokio::time::sleep(Duration::from_millis(rng.range(30, 70) as u64)).await;
        }
        Ok::<_, anyhow::Error>(ids)
    };
    let partition = async {
        let result = async {
            while submitted.load(Ordering::SeqCst) < BEFORE_CUT + BURST / 3 {
                ensure!(!failed.load(Ordering::SeqCst), "a submission failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ns.cut_outgoing()?;
            let cut = Instant::now();
            tokio::time::sleep(ONE_WAY).await;
            ns.cut()?;
            let at_cut = submitted.load(Ordering::SeqCst);
            let (new, answered) = c_ref
                .wait_leader(Some(old.id), TTL + Duration::from_secs(10))
                .await?;
            let took = answered - cut;
            tokio::time::sleep(CUT_AFTER_TAKEOVER).await;
            ns.heal()?;
            let heal = Instant::now();
            let at_heal = submitted.load(Ordering::SeqCst);
            healed.store(true, Ordering::SeqCst);
            eprintln!(
                "cut after {at_cut} submissions; pid {} answered as leader at epoch {:?} \
                 {took:?} after the cut; healed {:?} after the cut, after {at_heal} submissions",
                new.pid,
                new.epoch,
                heal - cut
            );
            Ok::<_, anyhow::Error>((new, took, cut, heal))
        }
        .await;
        if result.is_err() {
            // The submissions end too.
            failed.store(true, Ordering::SeqCst);
            healed.store(true, Ordering::SeqCst);
        }
        result
    };
    let (ids, taken) = tokio::join!(submitting, partition);
    if ns.is_cut() {
        ns.heal()?;
    }
    let (new, took, cut, heal) = taken?;
    let ids = ids?;
    eprintln!("{} submitted in {:?}", ids.len(), began.elapsed());
    ensure!(
        new.pid == standby,
        "the standby took over: {new:?} (standby pid {standby})"
    );
    let new_epoch = new.epoch.context("the new leader names its epoch")?;
    ensure!(new_epoch > old_epoch, "epoch {new_epoch} after {old_epoch}");
    ensure!(
        took <= TTL + Duration::from_secs(1),
        "the standby took over {took:?} after the cut: more than the TTL ({TTL:?}) plus a \
         second"
    );
    takeovers
        .wait_epoch(new_epoch, Duration::from_secs(10))
        .await?;

    // Its connection back, the old leader answers again: as a standby, the new one leading.
    let back = Instant::now();
    let roles = eventually(
        Duration::from_secs(30),
        "the old leader answers as a standby once healed",
        || async {
            let all = c.managers(GATHER).await?;
            let old = all.iter().find(|m| m.pid == old_pid);
            let leaders: Vec<u32> = all
                .iter()
                .filter(|m| m.role == ManagerRole::Leader)
                .map(|m| m.pid)
                .collect();
            ensure!(
                old.is_some_and(|m| m.role == ManagerRole::Standby) && leaders == [standby],
                "{}",
                describe_managers(&all)
            );
            Ok(describe_managers(&all))
        },
    )
    .await?;
    eprintln!(
        "{:?} after the heal, the managers answer: {roles}",
        back.elapsed()
    );

    all_ran_once(c, &ids, began).await?;
    let now = c.leader().await?;
    ensure!(
        now.pid == standby && now.epoch == Some(new_epoch),
        "the new leader still leads: {now:?}"
    );
    let lease = c.lease().await?.context("nobody holds the lease")?;
    ensure!(
        lease.holder.id == new.id && lease.epoch == new_epoch,
        "the lease names the new leader at its epoch: {lease:?}"
    );

    // What JetStream stored: nothing of the old epoch after the new epoch's first record.
    let records = history.stored(Duration::from_secs(10)).await?;
    eprintln!(
        "the Task DB's history: {} records, by epoch in order {:?}",
        records.len(),
        epochs(&records)
    );
    ensure!(
        records.iter().any(|r| r.epoch == Some(old_epoch)),
        "the old leader wrote nothing at all: the test proves nothing"
    );
    check_fenced(&records, old_epoch, new_epoch)?;
    let attempts = history.attempts();
    let first_new = attempts
        .iter()
        .position(|r| r.epoch == Some(new_epoch))
        .unwrap_or(attempts.len());
    let late: Vec<&Record> = attempts[first_new..]
        .iter()
        .filter(|r| r.epoch == Some(old_epoch))
        .collect();
    let when = |at: Instant| {
        if at >= heal {
            format!("{:?} after the heal", at - heal)
        } else if at >= cut {
            format!("{:?} after the cut", at - cut)
        } else {
            format!("{:?} before the cut", cut - at)
        }
    };
    let last_old = attempts
        .iter()
        .filter(|r| r.epoch == Some(old_epoch))
        .map(|r| r.seen)
        .max();
    eprintln!(
        "the old leader's last write arrived {}; its writes after the new epoch's first: \
         first {}, last {}",
        last_old.map_or("never".into(), when),
        late.first().map_or("none".into(), |r| when(r.seen)),
        late.last().map_or("none".into(), |r| when(r.seen)),
    );
    let late = late.len();
    let (stale, stale_first) = work.after_first(old_epoch, new_epoch);
    eprintln!(
        "work sent: {} messages ({stale} of epoch {old_epoch} after the first of epoch \
         {new_epoch}, {}; the workers refuse those)",
        work.len(),
        stale_first.map_or("none".into(), when)
    );
    // Cut off one way mid-burst, the old leader had Task DB writes or work on their way:
    // they arrived after its successor's, so the fences above were put to the test.
    ensure!(
        late + stale > 0,
        "nothing the old leader sent arrived after the new leader's first write and work: \
         the fences were not put to the test"
    );
    eprintln!(
        "Task DB writes sent: {} ({late} of epoch {old_epoch} after the first of epoch \
         {new_epoch}, none of them stored)",
        attempts.len()
    );
    Ok(())
}
