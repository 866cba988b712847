//! `--metrics-addr`: serves a process's Prometheus metrics on `http://ADDR/metrics`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// With an address, registers a process's metrics (`register`) in a new registry and serves
/// it (see [`serve`]); without one, does nothing.
pub async fn serve_if(
    addr: Option<SocketAddr>,
    register: impl FnOnce(&Registry) -> prometheus::Result<()>,
    shutdown: &CancellationToken,
) -> Result<Option<JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let registry = Registry::new();
    register(&registry).context("registering the metrics")?;
    Ok(Some(serve(addr, registry, shutdown.clone()).await?))
}

/// Binds `addr` now (so that a port in use is reported before anything else starts) and
/// serves `registry` in the Prometheus text format until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen there"))?;
    let local = listener.local_addr().unwrap_or(addr);
    let app = Router::new().route("/metrics", get(move || scrape(registry.clone())));
    info!(addr = %local, "serving Prometheus metrics on /metrics");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the metrics server stopped");
        }
    }))
}

async fn scrape(registry: Registry) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding the metrics: {e}").into_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_registry_and_stops_on_shutdown() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("cube_test_total", "A test counter.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let shutdown = CancellationToken::new();
        // A free port from the kernel: the test must know it to scrape.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = serve(addr, registry, shutdown.clone()).await.unwrap();
        let body = http_get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("text/plain; version=0.0.4"), "{body}");
        assert!(body.contains("cube_test_total 1"), "{body}");
        assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the server stops on shutdown (likely deadlocked)")
            .unwrap();
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Registry::new(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("--metrics-addr"), "{err:#}");
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }
}
