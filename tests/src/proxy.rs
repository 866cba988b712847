//! A TCP proxy in front of nats-server, to partition one process from it for real: the process
//! connects to the proxy's loopback port instead of the server's. [`Proxy::stall`] black-holes
//! the path (every socket stays open, nothing is forwarded either way: the peers hear silence,
//! not a reset), [`Proxy::cut`] closes every connection with a reset and refuses new ones, and
//! [`Proxy::heal`] forwards again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::lock;

/// What the proxy does with the bytes and connections it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Forwards both ways.
    Open,
    /// Forwards nothing, closes nothing: connections (old and new) stay open and silent.
    Stalled,
    /// Has reset every connection and resets each new one at once.
    Cut,
}

/// A proxy from a free loopback port to `127.0.0.1:<upstream>`. Dropping it closes every
/// connection through it.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    flow: watch::Sender<Flow>,
    /// Cancelled by a cut (then replaced): every connection made before it ends.
    epoch: Mutex<CancellationToken>,
    accepted: AtomicUsize,
}

impl Proxy {
    /// Starts forwarding from a new loopback port to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy's port")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            flow: watch::Sender::new(Flow::Open),
            epoch: Mutex::new(CancellationToken::new()),
            accepted: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(Proxy {
            port,
            shared,
            accept,
        })
    }

    /// The URL to give a NATS client instead of the server's.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it has accepted so far (a client that reconnects adds one).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Black-holes the path: from now on no byte is forwarded either way, and no connection is
    /// closed; new connections are accepted and hear nothing. What the peers send meanwhile
    /// waits in the sockets' buffers, and is delivered on [`Proxy::heal`] (as TCP retransmits
    /// after a partition heals), unless a peer gave up on the connection first.
    pub fn stall(&self) {
        tracing::info!(port = self.port, "proxy stalled");
        self.shared.flow.send_replace(Flow::Stalled);
    }

    /// Resets every connection through it (both ends see a reset) and refuses new ones, until
    /// [`Proxy::heal`].
    pub fn cut(&self) {
        tracing::info!(port = self.port, "proxy cut");
        self.shared.flow.send_replace(Flow::Cut);
        let mut epoch = lock(&self.shared.epoch);
        epoch.cancel();
        *epoch = CancellationToken::new();
    }

    /// Forwards again: stalled connections resume with what was queued, and new connections
    /// are accepted (after a cut, clients reconnect).
    pub fn heal(&self) {
        tracing::info!(port = self.port, "proxy healed");
        self.shared.flow.send_replace(Flow::Open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        lock(&self.shared.epoch).cancel();
    }
}

async fn accept_loop(listener: TcpListener, upstream: u16, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors, say: try again shortly rather than end the proxy.
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        // A reset rather than an orderly close, whenever this side closes first.
        let _ = client.set_zero_linger();
        if *shared.flow.borrow() == Flow::Cut {
            drop(client);
            continue;
        }
        let epoch = lock(&shared.epoch).clone();
        let flow = shared.flow.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = epoch.cancelled() => {}
                _ = relay(client, upstream, flow) => {}
            }
        });
    }
}

/// Connects to the server and forwards both ways until either side closes.
async fn relay(client: TcpStream, upstream: u16, flow: watch::Receiver<Flow>) {
    let server = match TcpStream::connect(("127.0.0.1", upstream)).await {
        Ok(server) => server,
        // The server is down: the client sees its connection reset, as it would directly.
        Err(_) => return,
    };
    let _ = server.set_zero_linger();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, flow.clone()) => {}
        _ = pump(server_read, client_write, flow) => {}
    }
}

/// Copies `from` to `to` while the flow is open. While it is stalled it neither reads nor
/// writes (at most one chunk read before the stall waits in between), and an end of `from`
/// is passed on only once it flows again: the other peer hears nothing, not even a close.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flow: watch::Receiver<Flow>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !flowing(&mut flow).await {
            return;
        }
        let read = from.read(&mut buf).await;
        if !flowing(&mut flow).await {
            return;
        }
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits while the flow is stalled; false once it is cut (or the proxy is gone).
async fn flowing(flow: &mut watch::Receiver<Flow>) -> bool {
    loop {
        match *flow.borrow_and_update() {
            Flow::Open => return true,
            Flow::Cut => return false,
            Flow::Stalled => {}
        }
        if flow.changed().await.is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every connection's bytes back.
    async fn echo_server() -> Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(port)
    }

    /// Reads what arrives within 300 ms: `Ok(None)` if nothing (the line is silent),
    /// `Ok(Some(bytes))`, or an error / `Some(empty)` if the connection ended.
    async fn read_within(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await {
            Err(_) => Ok(None),
            Ok(n) => Ok(Some(buf[..n?].to_vec())),
        }
    }

    #[tokio::test]
    async fn stall_is_silence_heal_delivers_and_cut_resets() -> Result<()> {
        let proxy = Proxy::start(echo_server().await?).await?;
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        conn.write_all(b"one").await?;
        assert_eq!(read_within(&mut conn).await?, Some(b"one".to_vec()));

        proxy.stall();
        conn.write_all(b"two").await?;
        assert_eq!(
            read_within(&mut conn).await?,
            None,
            "a stalled path is silent"
        );
        let mut late = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        late.write_all(b"late").await?;
        assert_eq!(
            read_within(&mut late).await?,
            None,
            "and so is a new connection"
        );

        proxy.heal();
        assert_eq!(read_within(&mut conn).await?, Some(b"two".to_vec()));
        assert_eq!(read_within(&mut late).await?, Some(b"late".to_vec()));

        proxy.cut();
        let ended = read_within(&mut conn).await;
        assert!(
            ended.is_err() || matches!(&ended, Ok(Some(b)) if b.is_empty()),
            "a cut ends the connection: {ended:?}"
        );
        let mut refused = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        let _ = refused.write_all(b"x").await;
        let ended = read_within(&mut refused).await;
        assert!(
            ended.is_err() || matches!(&ended, Ok(Some(b)) if b.is_empty()),
            "a new connection is refused while cut: {ended:?}"
        );

        proxy.heal();
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        again.write_all(b"back").await?;
        assert_eq!(read_within(&mut again).await?, Some(b"back".to_vec()));
        assert_eq!(proxy.accepted(), 4);
        Ok(())
    }
}
