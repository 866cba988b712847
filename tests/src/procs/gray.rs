//! Gray faults on a [`ProcCluster`]'s processes: a partition from NATS through a per-process
//! [`Proxy`] (set up before the process starts), a pause (SIGSTOP/SIGCONT), and a step of the
//! manager's wall clock ([`FakeClock`]).

use anyhow::{bail, Context, Result};

use super::{worker_label, ProcCluster, MANAGER};
use crate::clock::FakeClock;
use crate::proxy::Proxy;
use crate::unique;

impl ProcCluster {
    /// From its next start on, the manager reaches NATS through a proxy of its own (this
    /// process's other connections, the test's and the workers', stay direct).
    pub async fn proxy_manager(&mut self) -> Result<&Proxy> {
        self.add_proxy(MANAGER.to_string()).await
    }

    /// The manager's proxy (see [`ProcCluster::proxy_manager`]).
    pub fn manager_proxy(&self) -> Result<&Proxy> {
        self.proxies
            .get(MANAGER)
            .context("the manager has no proxy: call proxy_manager before start_manager")
    }

    /// From its next start on, worker `name` reaches NATS through a proxy of its own.
    pub async fn proxy_worker(&mut self, name: &str) -> Result<&Proxy> {
        self.add_proxy(worker_label(name)).await
    }

    /// Worker `name`'s proxy (see [`ProcCluster::proxy_worker`]).
    pub fn worker_proxy(&self, name: &str) -> Result<&Proxy> {
        self.proxies
            .get(&worker_label(name))
            .with_context(|| format!("worker {name} has no proxy"))
    }

    /// Starts a worker with a fresh unique name that reaches NATS through a proxy of its own,
    /// and waits until it is ready (see [`ProcCluster::start_worker`]).
    pub async fn add_proxied_worker(&mut self) -> Result<String> {
        let name = unique("w");
        self.proxy_worker(&name).await?;
        self.start_worker(&name).await?;
        Ok(name)
    }

    async fn add_proxy(&mut self, label: String) -> Result<&Proxy> {
        if self.proxies.contains_key(&label) {
            bail!("{label} already has a proxy");
        }
        let proxy = Proxy::start(self.nats.port).await?;
        Ok(self.proxies.entry(label).or_insert(proxy))
    }

    /// Sends the manager a signal: `STOP` pauses it (a VM frozen, a stalled host: its
    /// connections stay open and silent), `CONT` resumes it.
    pub fn signal_manager(&self, signal: &str) -> Result<()> {
        self.manager
            .as_ref()
            .context("no manager to signal")?
            .signal(signal)
    }

    /// Sends a worker a signal: `STOP` pauses it, `CONT` resumes it.
    pub fn signal_worker(&self, name: &str, signal: &str) -> Result<()> {
        self.workers
            .get(name)
            .with_context(|| format!("no worker {name}"))?
            .signal(signal)
    }

    /// From its next start on, the manager runs on a wall clock the test can step
    /// ([`ProcCluster::step_manager_clock`]); it starts at the real time.
    pub fn fake_manager_clock(&mut self) -> Result<()> {
        if self.manager_clock.is_none() {
            self.manager_clock = Some(FakeClock::new(&self.logs_dir())?);
        }
        Ok(())
    }

    /// Steps the manager's wall clock by `secs` (forward if positive), at once; its monotonic
    /// clock does not move. Needs [`ProcCluster::fake_manager_clock`] before its start.
    pub fn step_manager_clock(&mut self, secs: i64) -> Result<()> {
        let clock = self.manager_clock.as_mut().context(
            "the manager has no fake clock: call fake_manager_clock before start_manager",
        )?;
        tracing::info!(secs, "stepping the manager's wall clock");
        clock.step(secs)
    }
}
