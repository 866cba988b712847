//! Several managers on a [`ProcCluster`] (issue 16): `cube manager` processes with a chosen
//! `--lease-ttl`, on this machine or inside a [`Netns`]; who leads, as the managers themselves
//! answer on `cube.managers` (every one answers; replies are gathered for a moment); the
//! lease as the `cube-admin` bucket holds it; the leader killed or paused; and the journal's
//! `leader` entries as they arrive.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream::kv;
use cube_manager::{Holder, LEASE_KEY};
use cube_shared::subjects::{journal_for, ADMIN_DB, MANAGERS};
use cube_shared::{JournalEntry, ManagerInfo, ManagerRole};
use futures::StreamExt;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::ProcCluster;
use crate::events::lock;
use crate::netns::Netns;
use crate::proc::{Proc, TAIL_LINES};
use crate::Nats;

/// How long [`ProcCluster::managers`] gathers answers: every manager answers within
/// milliseconds on a healthy bus.
pub const GATHER: Duration = Duration::from_millis(300);

/// The lease as the `cube-admin` bucket holds it now.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub holder: Holder,
    /// The revision of its latest value (moves with every renewal).
    pub revision: u64,
    /// The holder's epoch: the revision at which it won the lease.
    pub epoch: u64,
}

impl ProcCluster {
    /// A second `cube manager` (`--lease-ttl 2s`) serving the HTTP API and dashboard on
    /// 127.0.0.1:`port`, logging to `log`: a standby while this cluster's manager leads. The
    /// caller owns it (killed when dropped).
    pub fn spawn_standby_serving_http(&self, port: u16, log: PathBuf) -> Result<Proc> {
        let mut cmd = tokio::process::Command::new(crate::cube_bin());
        cmd.args(["manager", "--lease-ttl", "2s", "--http-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .env("CUBE_NATS_URL", self.nats.url())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Proc::spawn("the standby", cmd, log)
    }

    /// Starts one more `cube manager` (the same arguments as [`ProcCluster::start_manager`]'s,
    /// with `--lease-ttl ttl`) and waits until it answers on `cube.managers`, as leader or
    /// standby. Returns its pid (the `pid` of its answers).
    pub async fn spawn_manager(&mut self, ttl: Duration) -> Result<u32> {
        self.spawn_manager_inside(None, ttl).await
    }

    /// As [`ProcCluster::spawn_manager`], the manager running inside `ns` (`ip netns exec`):
    /// it reaches NATS across the namespace's link, which the test can cut.
    pub async fn spawn_manager_in(&mut self, ns: &Netns, ttl: Duration) -> Result<u32> {
        self.spawn_manager_inside(Some(ns), ttl).await
    }

    async fn spawn_manager_inside(&mut self, ns: Option<&Netns>, ttl: Duration) -> Result<u32> {
        let label = format!("manager-{}", self.extra_managers.len() + 2);
        let mut args = vec![
            "manager".to_string(),
            "--lease-ttl".into(),
            format!("{}ms", ttl.as_millis()),
        ];
        args.extend(self.manager_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (cmd, log) = self.command(&label, &args);
        let cmd = match ns {
            None => cmd,
            Some(ns) => {
                // The same command and environment, behind `ip netns exec NAME`.
                let std = cmd.as_std();
                let prefix = ns.exec_prefix();
                let mut inside = tokio::process::Command::new(&prefix[0]);
                inside
                    .args(&prefix[1..])
                    .arg(std.get_program())
                    .args(std.get_args());
                for (key, value) in std.get_envs() {
                    if let Some(value) = value {
                        inside.env(key, value);
                    }
                }
                inside
            }
        };
        let what = match ns {
            Some(ns) => format!("{label} (in {})", ns.name()),
            None => label.clone(),
        };
        let proc = Proc::spawn(&what, cmd, log)?;
        let pid = proc.pid();
        self.extra_managers.push(proc);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            if self.managers(GATHER).await?.iter().any(|m| m.pid == pid) {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                let tail = self.extra_managers.last().map(|m| m.log_tail(TAIL_LINES));
                bail!(
                    "{what} (pid {pid}) did not answer on {MANAGERS} within 30 s; its log \
                     ends:\n{}",
                    tail.unwrap_or_default()
                );
            }
        }
    }

    /// Every manager's answer on `cube.managers` within `gather`.
    pub async fn managers(&self, gather: Duration) -> Result<Vec<ManagerInfo>> {
        Ok(self
            .ask_managers(gather, |_| false)
            .await?
            .into_iter()
            .map(|(m, _)| m)
            .collect())
    }

    /// Asks `cube.managers` and gathers the answers, each with when it arrived, for `gather`
    /// or until one satisfies `enough`.
    async fn ask_managers(
        &self,
        gather: Duration,
        enough: impl Fn(&ManagerInfo) -> bool,
    ) -> Result<Vec<(ManagerInfo, Instant)>> {
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await?;
        self.client
            .publish_with_reply(MANAGERS, inbox, bytes::Bytes::new())
            .await?;
        self.client.flush().await?;
        let deadline = Instant::now() + gather;
        let mut out = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await {
            let at = Instant::now();
            if msg.status.is_some() {
                // "No responders": no manager listens (yet).
                continue;
            }
            let info: ManagerInfo = serde_json::from_slice(&msg.payload).with_context(|| {
                format!(
                    "an answer on {MANAGERS}: {:?}",
                    String::from_utf8_lossy(&msg.payload)
                )
            })?;
            let done = enough(&info);
            out.push((info, at));
            if done {
                break;
            }
        }
        let _ = answers.unsubscribe().await;
        Ok(out)
    }

    /// The one manager that answers as leader; fails if none or several do.
    pub async fn leader(&self) -> Result<ManagerInfo> {
        let all = self.managers(GATHER).await?;
        let leaders: Vec<&ManagerInfo> = all
            .iter()
            .filter(|m| m.role == ManagerRole::Leader)
            .collect();
        match leaders[..] {
            [one] => Ok(one.clone()),
            _ => bail!(
                "{} managers answer as leader: {}",
                leaders.len(),
                describe(&all)
            ),
        }
    }

    /// Waits until a manager other than `not` (by id) answers as leader, asking every 100 ms
    /// or so; returns its answer and when it arrived.
    pub async fn wait_leader(
        &self,
        not: Option<Uuid>,
        within: Duration,
    ) -> Result<(ManagerInfo, Instant)> {
        let deadline = Instant::now() + within;
        let new = |m: &ManagerInfo| m.role == ManagerRole::Leader && Some(m.id) != not;
        loop {
            let answers = self
                .ask_managers(Duration::from_millis(100), new)
                .await
                .unwrap_or_default();
            if let Some((m, at)) = answers.iter().find(|(m, _)| new(m)) {
                return Ok((m.clone(), *at));
            }
            if Instant::now() >= deadline {
                let all: Vec<ManagerInfo> = answers.into_iter().map(|(m, _)| m).collect();
                bail!(
                    "no manager other than {not:?} answered as leader within {within:?}: {}",
                    describe(&all)
                );
            }
        }
    }

    /// Waits (up to 30 s) until manager process `leader` answers as leader and every one of
    /// `standbys` as a standby; returns the leader's answer.
    pub async fn wait_roles(&self, leader: u32, standbys: &[u32]) -> Result<ManagerInfo> {
        crate::eventually(
            Duration::from_secs(30),
            &format!("pid {leader} leads and {standbys:?} stand by"),
            || async {
                let all = self.managers(GATHER).await?;
                let role = |pid: u32| all.iter().find(|m| m.pid == pid).map(|m| m.role);
                let l = all
                    .iter()
                    .find(|m| m.pid == leader && m.role == ManagerRole::Leader)
                    .with_context(|| format!("pid {leader} is not leader: {}", describe(&all)))?;
                for pid in standbys {
                    ensure!(
                        role(*pid) == Some(ManagerRole::Standby),
                        "pid {pid} is not a standby: {}",
                        describe(&all)
                    );
                }
                Ok(l.clone())
            },
        )
        .await
    }

    /// SIGKILLs the manager process `pid` (one of [`ProcCluster::start_manager`]'s or
    /// [`ProcCluster::spawn_manager`]'s), and returns the moment just before the signal.
    pub async fn kill_manager_pid(&mut self, pid: u32) -> Result<Instant> {
        let mut proc = if self.manager.as_ref().is_some_and(|m| m.pid() == pid) {
            self.manager.take().context("the manager")?
        } else {
            let at = self
                .extra_managers
                .iter()
                .position(|m| m.pid() == pid)
                .with_context(|| format!("no manager process with pid {pid}"))?;
            self.extra_managers.remove(at)
        };
        let before = Instant::now();
        proc.kill().await?;
        Ok(before)
    }

    /// SIGKILLs whichever manager answers as leader; returns its last answer and the moment
    /// just before the signal.
    pub async fn kill_leader(&mut self) -> Result<(ManagerInfo, Instant)> {
        let leader = self.leader().await?;
        let killed = self.kill_manager_pid(leader.pid).await?;
        Ok((leader, killed))
    }

    /// Sends manager process `pid` a signal: `STOP` pauses it, `CONT` resumes it.
    pub fn signal_manager_pid(&self, pid: u32, signal: &str) -> Result<()> {
        let proc = self
            .manager
            .iter()
            .chain(&self.extra_managers)
            .find(|m| m.pid() == pid)
            .with_context(|| format!("no manager process with pid {pid}"))?;
        proc.signal(signal)
    }

    /// The lease as the `cube-admin` bucket holds it (`None`: nobody holds it).
    pub async fn lease(&self) -> Result<Option<LeaseView>> {
        #[derive(Deserialize)]
        struct Value {
            #[serde(flatten)]
            holder: Holder,
            epoch: Option<u64>,
        }
        let admin = self.js.get_key_value(ADMIN_DB).await?;
        Ok(match admin.entry(LEASE_KEY).await? {
            Some(e) if e.operation == kv::Operation::Put => {
                let value: Value = serde_json::from_slice(&e.value)
                    .with_context(|| format!("the lease's value {:?}", e.value))?;
                Some(LeaseView {
                    holder: value.holder,
                    revision: e.revision,
                    epoch: value.epoch.unwrap_or(e.revision),
                })
            }
            _ => None,
        })
    }

    /// The end of manager process `pid`'s log.
    pub fn manager_log_tail(&self, pid: u32, lines: usize) -> String {
        self.manager
            .iter()
            .chain(&self.extra_managers)
            .find(|m| m.pid() == pid)
            .map(|m| m.log_tail(lines))
            .unwrap_or_default()
    }

    /// Records the journal's `leader` entries (one per takeover) from now on.
    pub async fn follow_takeovers(&self) -> Result<Takeovers> {
        let mut sub = self.client.subscribe(journal_for("leader")).await?;
        self.client.flush().await?;
        let seen: Arc<Mutex<Vec<(JournalEntry, Instant)>>> = Arc::default();
        let into = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Ok(entry) = serde_json::from_slice::<JournalEntry>(&msg.payload) {
                    lock(&into).push((entry, Instant::now()));
                }
            }
        });
        Ok(Takeovers { seen, task })
    }
}

/// The journal's `leader` entries, each with when it arrived ([`ProcCluster::follow_takeovers`]).
pub struct Takeovers {
    seen: Arc<Mutex<Vec<(JournalEntry, Instant)>>>,
    task: JoinHandle<()>,
}

impl<N: Nats> ProcCluster<N> {
    /// Whether a manager process started by [`ProcCluster::spawn_manager`] runs.
    pub(super) fn spawned_managers_running(&mut self) -> bool {
        self.extra_managers.iter_mut().any(|m| m.exited().is_none())
    }
}

impl Takeovers {
    /// Waits (up to `within`) for the entry of the term at `epoch`; returns it and when it
    /// arrived.
    pub async fn wait_epoch(
        &self,
        epoch: u64,
        within: Duration,
    ) -> Result<(JournalEntry, Instant)> {
        let needle = format!("at epoch {epoch} ");
        let needle_end = format!("at epoch {epoch}");
        crate::eventually(
            within,
            &format!("the journal tells of the takeover at epoch {epoch}"),
            || {
                let found = lock(&self.seen)
                    .iter()
                    .find(|(e, _)| e.message.contains(&needle) || e.message.ends_with(&needle_end))
                    .cloned();
                let all: Vec<String> = lock(&self.seen)
                    .iter()
                    .map(|(e, _)| e.message.clone())
                    .collect();
                async move { found.with_context(|| format!("`leader` entries so far: {all:?}")) }
            },
        )
        .await
    }

    /// Every entry so far.
    pub fn all(&self) -> Vec<JournalEntry> {
        lock(&self.seen).iter().map(|(e, _)| e.clone()).collect()
    }
}

impl Drop for Takeovers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Managers' answers in a line each: pid, role, epoch.
pub fn describe(all: &[ManagerInfo]) -> String {
    let each: Vec<String> = all
        .iter()
        .map(|m| {
            format!(
                "pid {} {:?} epoch {:?} terms {}",
                m.pid, m.role, m.epoch, m.terms
            )
        })
        .collect();
    format!("[{}]", each.join("; "))
}
