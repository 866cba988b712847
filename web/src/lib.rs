//! Cube's HTTP API and live dashboard. The manager serves them on `--http-addr`, but they
//! hold no state of their own and reach the cluster only through NATS, exactly as the `cube`
//! CLI does: `cube.api.*` for queries, `tasks.events` for submissions and stops, the journal
//! and logs streams, the Task DB's updates and the workers' heartbeats for live updates.

mod api;
mod auth;
mod charts;
mod guard;
mod live;
mod login;
mod pages;
mod tokens;

#[cfg(test)]
mod openapi;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tracing::info;

use cube_client::Cube;

pub use auth::{check_mode, AuthMode, CACHE_TTL};
pub use charts::DEFAULT_INTERVAL as DEFAULT_CHART_INTERVAL;

/// The OpenAPI 3 document of every route, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../assets/openapi.json");

/// The web server's own failures; talking to the cluster fails with [`cube_client::Error`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up a live feed the client does not offer (Task DB updates, heartbeats).
    #[error("live updates: {what}")]
    Live {
        what: &'static str,
        #[source]
        source: cube_client::NatsError,
    },
    #[error(
        "the HTTP API on {addr} would have no authentication: `--http-auth none` is allowed \
         only on a loopback address (127.0.0.1 or ::1); use tokens (`cube token create`)"
    )]
    Unauthenticated { addr: SocketAddr },
    #[error("HTTP server on {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct App {
    pub cube: Cube,
    pub shutdown: CancellationToken,
    /// The charts' history, which the sampler fills.
    pub charts: charts::Charts,
}

/// The router, with the list of (method, path) it serves: the OpenAPI test compares the two.
pub(crate) struct Routes {
    router: Router<App>,
    served: Vec<(Method, &'static str)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, App>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.served.push((method, path));
        self
    }
}

pub(crate) fn routes() -> Routes {
    let r = Routes {
        router: Router::new(),
        served: Vec::new(),
    };
    let r = api::routes(r);
    let r = live::routes(r);
    let r = tokens::routes(r);
    let r = login::routes(r);
    let r = charts::routes(r);
    pages::routes(r)
}

/// Every (method, path) the server answers.
pub fn served_routes() -> Vec<(Method, &'static str)> {
    routes().served
}

/// The HTTP server, bound and ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    allowed_hosts: guard::AllowedHosts,
    auth: AuthMode,
    chart_interval: Duration,
}

impl Server {
    /// Binds `addr` now, so that a busy port is an error at start-up.
    pub async fn bind(addr: SocketAddr) -> Result<Server, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Http { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Http { addr, source })?;
        Ok(Server {
            listener,
            addr,
            allowed_hosts: guard::AllowedHosts::default(),
            auth: AuthMode::Tokens,
            chart_interval: DEFAULT_CHART_INTERVAL,
        })
    }

    /// Host names, besides IP literals and `localhost`, that requests may name in their
    /// `Host` header (e.g. the name of a proxy in front). Others are refused, against DNS
    /// rebinding.
    pub fn allow_hosts(mut self, names: impl IntoIterator<Item = String>) -> Server {
        self.allowed_hosts = guard::AllowedHosts::new(names);
        self
    }

    /// Whether requests need a token (the default) or not; [`AuthMode::None`] is refused
    /// off loopback.
    pub fn auth(mut self, mode: AuthMode) -> Result<Server, Error> {
        check_mode(mode, self.addr)?;
        self.auth = mode;
        Ok(self)
    }

    /// How often the dashboard's charts take a sample (default
    /// [`DEFAULT_CHART_INTERVAL`]; at least a second). They keep the last hour.
    pub fn chart_interval(mut self, interval: Duration) -> Server {
        self.chart_interval = interval;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`; live streams end then too, so that it returns promptly. The
    /// charts' sampler runs as long, and has ended when this returns.
    pub async fn run(
        self,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let tokens = auth::Tokens::new(self.auth, client.clone());
        let cube = Cube::new(client);
        let charts = charts::Charts::new(self.chart_interval);
        // Its own token: it stops when the server does, even on an error.
        let sampling = shutdown.child_token();
        let sampler = charts.start(cube.clone(), sampling.clone());
        let app = App {
            cube,
            shutdown: shutdown.clone(),
            charts,
        };
        let router = routes()
            .router
            // After routing (so that it sees the route), before the handlers.
            .layer(axum::middleware::from_fn_with_state(
                tokens,
                auth::authenticate,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.allowed_hosts,
                guard::guard,
            ))
            .with_state(app);
        info!(addr = %self.addr, "dashboard and HTTP API on http://{}/", self.addr);
        let addr = self.addr;
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| Error::Http { addr, source });
        sampling.cancel();
        if let Err(e) = sampler.await {
            tracing::warn!(error = %e, "the charts' sampler ended abnormally");
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is documented, and nothing else is.
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let served = served_routes();
        assert!(!served.is_empty());
        for (method, path) in &served {
            let op = paths
                .get(*path)
                .and_then(|p| p.get(method.as_str().to_lowercase()));
            assert!(op.is_some(), "{method} {path} is not in openapi.json");
            assert!(
                op.unwrap().get("responses").is_some(),
                "{method} {path} has no responses in openapi.json"
            );
        }
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    served
                        .iter()
                        .any(|(m, p)| p == path && m.as_str().eq_ignore_ascii_case(method)),
                    "openapi.json documents {method} {path}, which is not served"
                );
            }
        }
    }
}
