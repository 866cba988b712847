//! A child process of the test ([`Proc`]): its output in a log file, killed when dropped, and
//! signals to pause or resume any process by pid ([`signal`]).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::tail;

/// How many lines of each log a failure message shows.
pub(crate) const TAIL_LINES: usize = 40;

/// A child process with its stdout and stderr in a log file. Killed when dropped.
pub struct Proc {
    label: String,
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd`, its output going to `log` (created or truncated).
    pub fn spawn(label: &str, mut cmd: tokio::process::Command, log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {label}"))?;
        let pid = child.id().context("a just-spawned child has a pid")?;
        Ok(Proc {
            label: label.to_string(),
            child,
            pid,
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends it `sig` (see [`signal`]): `STOP` pauses it, `CONT` resumes it.
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal(self.pid, sig)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGKILL, then waits (up to 10 s) until it is gone.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        // Fails only if it has exited meanwhile; `wait` then returns its status.
        let _ = self.child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} (pid {}) survived SIGKILL for 10 s",
                    self.label,
                    self.pid
                )
            })??;
        self.exited = Some(status);
        Ok(status)
    }

    /// SIGTERM, then waits up to `within` for it to exit. If it does not, it is killed and
    /// this is an error that shows the end of its log.
    pub async fn term(&mut self, within: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        if !sent.success() {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            bail!("kill -TERM {} failed: {sent}", self.pid);
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.exited = Some(status);
                Ok(status)
            }
            Err(_) => {
                self.kill().await?;
                bail!(
                    "{} (pid {}) did not exit within {within:?} of SIGTERM and was killed; \
                     its log ends:\n{}",
                    self.label,
                    self.pid,
                    self.log_tail(TAIL_LINES)
                )
            }
        }
    }

    /// Sends SIGKILL and waits (blocking, up to 5 s): for `Drop`.
    pub(crate) fn kill_blocking(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = self.child.start_kill();
        for _ in 0..100 {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_blocking();
    }
}
/// Sends `signal` (`STOP`, `CONT`, `TERM`, ...: a name as `kill -NAME` takes it) to `pid`.
/// `STOP` freezes a process as a VM pause or a stalled host would: its sockets stay open and
/// its peers hear nothing; `CONT` resumes it where it was.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}
