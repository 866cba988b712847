//! Two managers by mistake never double or kill work: the leadership lease in the `cube-admin`
//! bucket (issue 15; issue 16 builds standbys on it). Against a real nats-server: a second
//! holder waits while the first renews, takes over only after the first has been silent for
//! the ttl (or at once after a graceful release), and a holder whose lease another took hears
//! of it. NATS is also stopped under it: the holder steps down by its own clock, and nothing waits on it
//! past its bound.
//!
//! These tests kill nats-server and manager processes; `.config/nextest.toml` runs them one at
//! a time.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use async_nats::jetstream::{self, kv};
use bollard::models::ContainerSummaryStateEnum;
use cube_manager::lease::fence::Check;
use cube_manager::{topology, Error, Fence, Holder, Lease, LEASE_KEY};
use cube_shared::subjects::TASK_DB;
use cube_shared::{State, LABEL_TASK_ID};
use cube_tests::procs::{Proc, ProcCluster};
use cube_tests::{consistently, cube_bin, eventually, init_tracing, sleeper, NatsServer, WITHIN};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A connection of its own (as a second manager has) and the real `cube-admin` bucket.
async fn admin(nats: &NatsServer) -> Result<kv::Store> {
    let client = nats.connect().await?;
    let topo = topology::ensure(jetstream::new(client), topology::DEFAULT_LOGS_PER_TASK, 1).await?;
    Ok(topo.admin)
}

/// A manager waiting for the lease: its lease (or `None` if shut down first) and when it got it.
fn contend(
    kv: kv::Store,
    ttl: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<(Option<Lease>, Instant)> {
    tokio::spawn(async move {
        let lease = Lease::acquire(&kv, Holder::this_process(), ttl, &shutdown).await;
        (lease, Instant::now())
    })
}

async fn won(
    contender: JoinHandle<(Option<Lease>, Instant)>,
    within: Duration,
) -> Result<(Lease, Instant)> {
    match timeout(within, contender).await {
        Ok(Ok((Some(lease), at))) => Ok((lease, at)),
        Ok(Ok((None, _))) => bail!("acquire gave up without a shutdown"),
        Ok(Err(e)) => bail!("acquire panicked: {e}"),
        Err(_) => bail!("the lease was not won within {within:?}"),
    }
}

/// Who the lease names now.
async fn named(kv: &kv::Store) -> Result<Option<Uuid>> {
    let entry = kv.entry(LEASE_KEY).await?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            Some(serde_json::from_slice::<Holder>(&e.value)?.id)
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manager_waits_while_the_first_renews_and_takes_over_once_it_is_silent(
) -> Result<()> {
    init_tracing();
    let nats = NatsServer::start().await?;
    let ttl = Duration::from_secs(2);
    let never = CancellationToken::new();
    let (first, _) = won(contend(admin(&nats).await?, ttl, never.clone()), ttl).await?;
    let kv = admin(&nats).await?;
    let second = contend(kv.clone(), ttl, never.clone());

    let renewed_from = first.revision();
    consistently(
        3 * ttl,
        "the first holds the lease and the second waits",
        || {
            let (won, lost) = (second.is_finished(), first.is_lost());
            async move {
                ensure!(!won && !lost, "second won: {won}, first lost: {lost}");
                Ok(())
            }
        },
    )
    .await?;
    ensure!(
        first.revision() > renewed_from,
        "the first renewed its lease: revision {} then {}",
        renewed_from,
        first.revision()
    );
    ensure!(named(&kv).await? == Some(first.holder().id));

    // Dropped without a release: as if that manager died.
    let last = first.revision();
    let died = Instant::now();
    drop(first);
    let (second, at) = won(second, ttl + Duration::from_secs(15)).await?;
    // Its last renewal was at most ttl/3 before it died, and the second waits for the ttl
    // from when it saw that renewal.
    ensure!(
        at - died >= ttl / 2,
        "taken over {:?} after the holder died, before it could be judged silent ({ttl:?})",
        at - died
    );
    ensure!(
        second.epoch() > last,
        "epoch {} after {last}",
        second.epoch()
    );
    ensure!(named(&kv).await? == Some(second.holder().id));
    ensure!(!second.is_lost());
    second.release(Duration::from_secs(5)).await?;
    Ok(())
}

/// A holder that wrote the lease and never renewed it is taken over no sooner than the ttl
/// after the waiter first saw it, whatever time the value claims: here a start far in the
/// future, as a host with a clock ahead would write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_is_taken_over_no_sooner_than_the_ttl() -> Result<()> {
    init_tracing();
    let nats = NatsServer::start().await?;
    let kv = admin(&nats).await?;
    let ghost = Uuid::new_v4();
    let value = serde_json::json!({
        "id": ghost, "host": "elsewhere", "pid": 1, "started": "2999-01-01T00:00:00Z",
    });
    let rev = kv
        .create(LEASE_KEY, serde_json::to_vec(&value)?.into())
        .await?;
    ensure!(named(&kv).await? == Some(ghost));

    let ttl = Duration::from_secs(2);
    let began = Instant::now();
    let (lease, at) = won(
        contend(kv.clone(), ttl, CancellationToken::new()),
        ttl + Duration::from_secs(15),
    )
    .await?;
    ensure!(
        at - began >= ttl,
        "a holder silent for {:?} only was taken over (ttl {ttl:?})",
        at - began
    );
    ensure!(lease.epoch() > rev);
    ensure!(named(&kv).await? == Some(lease.holder().id));
    Ok(())
}

/// A graceful release deletes the lease: the next manager takes it at once, not after the ttl
/// (30 s here: the only way to win sooner is the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_at_once() -> Result<()> {
    init_tracing();
    let nats = NatsServer::start().await?;
    let ttl = Duration::from_secs(30);
    let kv = admin(&nats).await?;
    let (first, _) = won(
        contend(kv.clone(), ttl, CancellationToken::new()),
        Duration::from_secs(10),
    )
    .await?;
    let epoch = first.epoch();
    let second = contend(admin(&nats).await?, ttl, CancellationToken::new());
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(!second.is_finished(), "the second won a held lease");

    first.release(Duration::from_secs(5)).await?;
    let (second, _) = won(second, Duration::from_secs(10)).await?;
    ensure!(second.epoch() > epoch);
    ensure!(named(&kv).await? == Some(second.holder().id));
    Ok(())
}

/// A holder whose lease another manager took over (it judged it silent: paused, say) is told
/// so, with the other's name, and its release then leaves the other's lease alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_another_is_signalled_lost_and_not_released() -> Result<()> {
    init_tracing();
    let nats = NatsServer::start().await?;
    let ttl = Duration::from_secs(2);
    let kv = admin(&nats).await?;
    let (lease, _) = won(
        contend(kv.clone(), ttl, CancellationToken::new()),
        Duration::from_secs(10),
    )
    .await?;

    let other = Holder::this_process();
    let value: bytes::Bytes = serde_json::to_vec(&other)?.into();
    // Compare-and-set over whatever revision the holder's renewals have reached.
    eventually(
        Duration::from_secs(10),
        "another holder takes the lease over",
        || {
            let (kv, value) = (kv.clone(), value.clone());
            async move {
                let entry = kv.entry(LEASE_KEY).await?.context("no lease")?;
                kv.update(LEASE_KEY, value, entry.revision).await?;
                Ok(())
            }
        },
    )
    .await?;

    let lost = timeout(ttl + Duration::from_secs(10), lease.lost())
        .await
        .context("the holder was not told it lost the lease")?;
    match &lost {
        Error::LeaseLost { epoch, to } => {
            ensure!(*epoch == lease.epoch());
            ensure!(to.contains(&other.id.to_string()), "lost to {to}");
        }
        e => bail!("not a lost lease: {e}"),
    }
    ensure!(lease.is_lost() && lease.lost_token().is_cancelled());
    eprintln!("{lost}");
    lease.release(Duration::from_secs(5)).await?;
    ensure!(
        named(&kv).await? == Some(other.id),
        "the other's lease was deleted"
    );
    Ok(())
}

/// NATS down: the holder cannot renew, so it steps down by its own monotonic clock before the
/// ttl has passed since its last renewal (before any waiter could take over), and its gate
/// closes; a waiter shut down meanwhile returns at once. Once NATS is back the same manager
/// takes its own lease again, at a newer epoch (nobody else took it). A release with NATS
/// down gives up within its bound, so SIGTERM still ends a manager in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_the_holder_steps_down_before_the_ttl_and_nothing_waits_past_its_bound(
) -> Result<()> {
    init_tracing();
    let mut nats = NatsServer::start().await?;
    let ttl = Duration::from_secs(2);
    let kv = admin(&nats).await?;
    let me = Holder::this_process();
    let never = CancellationToken::new();
    let lease = Lease::acquire(&kv, me.clone(), ttl, &never)
        .await
        .context("no lease")?;
    let gate = lease.gate();
    ensure!(gate.is_open(), "a fresh lease lets its holder act");
    let shutdown = CancellationToken::new();
    let waiter = contend(admin(&nats).await?, ttl, shutdown.clone());

    let down = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let killed = Instant::now();
        nats.kill();
        // Its last renewal was sent before the kill, so it must stop within 3/4 of the ttl
        // of the kill; a waiter could take over no sooner than the ttl after it.
        let stepped = timeout(ttl, lease.lost())
            .await
            .context("the holder did not step down within the ttl of losing NATS")?;
        let after = killed.elapsed();
        match &stepped {
            Error::SteppedDown { epoch, .. } => ensure!(*epoch == lease.epoch()),
            e => bail!("not a step-down: {e}"),
        }
        ensure!(
            !gate.is_open(),
            "the gate is still open after the step-down"
        );
        eprintln!("stepped down {after:?} after NATS died: {stepped}");
        shutdown.cancel();
        match timeout(Duration::from_secs(2), waiter).await {
            Ok(Ok((None, _))) => {}
            Ok(Ok((Some(_), _))) => bail!("the waiter won the lease while NATS was down"),
            Ok(Err(e)) => bail!("the waiter panicked: {e}"),
            Err(_) => bail!("acquire did not return within 2 s of the shutdown"),
        }
        Ok::<_, anyhow::Error>(())
    };
    down.await?;
    nats.restart_after(Duration::from_secs(2)).await?;

    // The same manager takes its own lease again, at a newer epoch.
    let again = timeout(
        Duration::from_secs(30),
        Lease::acquire(&admin(&nats).await?, me.clone(), ttl, &never),
    )
    .await
    .context("the lease was not taken again")?
    .context("no lease")?;
    ensure!(
        again.epoch() > lease.epoch(),
        "epoch {} after {}",
        again.epoch(),
        lease.epoch()
    );
    drop(lease);

    nats.kill();
    let within = Duration::from_secs(2);
    let began = Instant::now();
    let released = again.release(within).await;
    ensure!(released.is_err(), "released with NATS down?");
    ensure!(
        began.elapsed() < within + Duration::from_secs(1),
        "the release took {:?}, its bound is {within:?}",
        began.elapsed()
    );
    Ok(())
}

/// The fence: once a newer leader has raised it, JetStream refuses every Task DB write of the
/// older one, and the older one reading it again learns it was deposed; the newer one's writes
/// go through. Nothing here depends on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_task_db_writes_are_refused_by_the_fence() -> Result<()> {
    init_tracing();
    let nats = NatsServer::start().await?;
    let client = nats.connect().await?;
    let topo = topology::ensure(
        jetstream::new(client.clone()),
        topology::DEFAULT_LOGS_PER_TASK,
        1,
    )
    .await?;
    let js = jetstream::new(client);
    let (old, new) = (Holder::this_process(), Holder::this_process());
    let old_fence = Fence::raise(&topo.tasks, 5, &old).await?;
    let write = |fence: &Fence, key: &str, value: &'static str| {
        let js = js.clone();
        let subject = format!("$KV.{TASK_DB}.{key}");
        let headers = fence.headers();
        async move {
            js.send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(value.into())
                    .headers(headers),
            )
            .await?
            .await
        }
    };
    write(&old_fence, "a", "old-1").await?;
    write(&old_fence, "b", "old-1").await?;

    let new_fence = Fence::raise(&topo.tasks, 9, &new).await?;
    for key in ["a", "c"] {
        let refused = write(&old_fence, key, "old-2").await;
        ensure!(
            refused.is_err(),
            "the deposed leader's write of {key} was stored"
        );
    }
    match old_fence.check(&topo.tasks).await? {
        Check::Deposed(by) => ensure!(by.contains("epoch 9"), "deposed by {by}"),
        Check::Ours => bail!("the deposed leader still takes the fence for its own"),
    }
    write(&new_fence, "a", "new-1").await?;
    ensure!(matches!(new_fence.check(&topo.tasks).await?, Check::Ours));
    // An older epoch cannot raise the fence over a newer one.
    match Fence::raise(&topo.tasks, 7, &old).await {
        Err(Error::Deposed { epoch: 7, by }) => ensure!(by.contains("epoch 9"), "{by}"),
        other => bail!(
            "raised an older fence over a newer one: {:?}",
            other.map(|f| f.epoch())
        ),
    }
    let a = topo.tasks.get("a").await?.context("a")?;
    ensure!(a == "new-1", "a = {a:?}");
    ensure!(topo.tasks.get("c").await?.is_none(), "c was written");
    Ok(())
}

/// The whole manager: a second `cube manager` started against the same NATS while the first
/// runs says it waits, and does not act. Tasks submitted after it started run once each and
/// none is killed, for longer than a node's TTL + grace (when each manager used to fence what
/// the other placed). Once the first is killed, the second takes over and the tasks run on.
///
/// NEEDS THE WIRING: this test drives the `cube` binary, so it passes only once
/// `cube_manager::run` acquires the lease before it binds its consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manager_process_waits_and_does_not_act() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let logs = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(cube_bin());
    cmd.arg("manager")
        .env("CUBE_NATS_URL", c.nats.url())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let log = logs.path().join("second-manager.log");
    let mut second = Proc::spawn("the second manager", cmd, log)?;
    let result = second_manager(&mut c, &mut second).await.map_err(|e| {
        anyhow!(
            "{e:#}\n\nthe second manager's log ends:\n{}",
            second.log_tail(40)
        )
    });
    c.explain(result)
}

async fn second_manager(c: &mut ProcCluster, second: &mut Proc) -> Result<()> {
    const TASKS: usize = 10;
    const WAITING: &str = "another manager holds the lease";
    let log = second.log_path().to_path_buf();
    eventually(
        Duration::from_secs(30),
        "the second manager says it waits",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                ensure!(text.contains(WAITING), "not in its log yet");
                Ok(())
            }
        },
    )
    .await?;

    let mut ids = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        ids.push(
            c.submit(sleeper())
                .await
                .with_context(|| format!("submitting task {i}"))?,
        );
    }
    c.wait_all(&ids, State::Running, WITHIN).await?;
    // Longer than the default node TTL + grace (15 s).
    let window = Duration::from_secs(20);
    let began = Instant::now();
    while began.elapsed() < window {
        c.check_alive()?;
        ensure!(second.exited().is_none(), "the second manager exited");
        let tasks = c.tasks().await?;
        for id in &ids {
            let t = tasks.get(id).context("a submitted task is missing")?;
            ensure!(t.state == State::Running, "task {id} is {}: {t:?}", t.state);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.creates.assert_exactly_one_each(&ids)?;
    each_runs_in_one_container(c, &ids).await?;

    // The first dies: the second takes the lease over and answers; nothing is doubled.
    c.kill_manager().await?;
    let cube = c.cube();
    eventually(WITHIN, "the second manager answers", || {
        let cube = cube.clone();
        async move {
            cube.nodes().await?;
            Ok(())
        }
    })
    .await?;
    let last = c.submit(sleeper()).await?;
    ids.push(last);
    c.wait_all(&ids, State::Running, WITHIN).await?;
    c.creates.assert_exactly_one_each(&ids)?;
    each_runs_in_one_container(c, &ids).await?;
    second.kill().await?;
    Ok(())
}

/// As Docker lists them: one container per task, running (none was killed).
async fn each_runs_in_one_container(c: &ProcCluster, ids: &[Uuid]) -> Result<()> {
    for id in ids {
        let containers = c.containers(LABEL_TASK_ID, &id.to_string()).await?;
        let states: Vec<_> = containers.iter().map(|c| c.state).collect();
        ensure!(
            states == [Some(ContainerSummaryStateEnum::RUNNING)],
            "task {id}: containers in states {states:?}"
        );
    }
    Ok(())
}
