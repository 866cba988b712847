//! Refuses requests that a web page the user visits could make on the user's behalf. The
//! user's browser holds the dashboard's session cookie (or the server runs with
//! `--http-auth none`), so a browser on the same machine is the API's weak point:
//!
//! - DNS rebinding: a page on `evil.example` whose name then resolves to 127.0.0.1 may read
//!   the API as a same-origin page. Its requests carry `Host: evil.example`, so only a `Host`
//!   that is an IP literal, `localhost`, or a name the operator allowed
//!   (`--http-allowed-hosts`) is served, on every request (421 otherwise).
//! - Cross-site writes: an HTML form or a `fetch` in "no-cors" mode may POST without any
//!   preflight, but only with a form or `text/plain` body. A POST with a body must say
//!   `Content-Type: application/json` (415 otherwise), which such a page cannot send without
//!   a preflight that Cube never grants (it sends no CORS headers). A POST or DELETE whose
//!   `Origin` is not the server's own, or whose `Sec-Fetch-Site` is `cross-site`, is refused
//!   (403). DELETE needs no Content-Type: a browser never sends it cross-site unpreflighted.
//!   Nor does a POST without a body (a stop, a promote): a form always sends a Content-Type,
//!   and a `fetch` that sends none also sends its `Origin` (every browser does for a POST),
//!   which the Origin check refuses.
//!
//! Reads (GET) may come from anywhere that passes the Host check, so that a link to the
//! dashboard from another site still opens it.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// Names, besides IP literals and `localhost`, that the server answers to; lower case,
/// without a port.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    pub fn new(names: impl IntoIterator<Item = String>) -> AllowedHosts {
        AllowedHosts(
            names
                .into_iter()
                .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }

    /// Whether a `Host` value (`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`) is served.
    fn allows(&self, host: &str) -> bool {
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return false;
        }
        name.parse::<IpAddr>().is_ok() || name == "localhost" || self.0.contains(&name)
    }
}

/// The name of a `Host` value, without its port or an IPv6 literal's brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or("", |(ip, _)| ip);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Why a request is refused, or `None` if it is served.
pub(crate) fn refusal(
    allowed: &AllowedHosts,
    method: &Method,
    headers: &HeaderMap,
    body_empty: bool,
) -> Option<ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if host.is_empty() {
        return Some(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request has no Host header",
        ));
    }
    if !allowed.allows(host) {
        return Some(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer to the host `{}`: use an IP address or localhost, \
                 or allow the name with --http-allowed-hosts (CUBE_HTTP_ALLOWED_HOSTS)",
                host_name(host)
            ),
        ));
    }
    if *method != Method::POST && *method != Method::DELETE {
        return None;
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"));
    if cross_site {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-site requests may not change anything (Sec-Fetch-Site: cross-site)",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
        if !own {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from another origin may not change anything: `{origin}` is not \
                     this server (http://{host})"
                ),
            ));
        }
    }
    if *method == Method::POST {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if content_type.is_none() && body_empty {
            return None;
        }
        let content_type = content_type.unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Some(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a POST must have Content-Type: application/json, not `{content_type}`"),
            ));
        }
    }
    None
}

/// The middleware in front of every route.
pub(crate) async fn guard(
    State(allowed): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    // Only HTTP/1 is served: a request without Content-Length or Transfer-Encoding has no
    // body, which hyper reports as an exact size of 0.
    let body_empty = request.body().size_hint().exact() == Some(0);
    match refusal(&allowed, request.method(), request.headers(), body_empty) {
        Some(refused) => {
            tracing::info!(
                method = %request.method(),
                path = %request.uri().path(),
                status = refused.status.as_u16(),
                reason = %refused.message,
                "HTTP request refused"
            );
            refused.into_response()
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn status(allowed: &AllowedHosts, method: Method, pairs: &[(&'static str, &str)]) -> u16 {
        refusal(allowed, &method, &headers(pairs), false).map_or(200, |e| e.status.as_u16())
    }

    /// As [`status`], for a request without a body.
    fn bodiless(allowed: &AllowedHosts, method: Method, pairs: &[(&'static str, &str)]) -> u16 {
        refusal(allowed, &method, &headers(pairs), true).map_or(200, |e| e.status.as_u16())
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_allowed_names() {
        let none = AllowedHosts::default();
        let some = AllowedHosts::new(["Cube.Example.".to_string(), " ".to_string()]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "localhost:80",
            "LOCALHOST",
            "10.1.2.3",
        ] {
            assert!(none.allows(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost.evil.example", "[::1", ""] {
            assert!(!none.allows(bad), "{bad}");
        }
        assert!(!none.allows("cube.example:8080"));
        assert!(some.allows("cube.example:8080"));
        assert!(some.allows("CUBE.example."));
        assert!(!some.allows("other.example"));
        assert_eq!(status(&none, Method::GET, &[]), 400);
        assert_eq!(status(&none, Method::GET, &[("host", "evil.example")]), 421);
        assert_eq!(status(&some, Method::GET, &[("host", "cube.example")]), 200);
    }

    #[test]
    fn writes_need_json_and_the_servers_own_origin() {
        let a = AllowedHosts::default();
        let host = ("host", "127.0.0.1:8080");
        let json = ("content-type", "application/json");
        assert_eq!(status(&a, Method::POST, &[host, json]), 200);
        assert_eq!(
            status(
                &a,
                Method::POST,
                &[host, ("content-type", "Application/JSON; charset=utf-8")]
            ),
            200
        );
        assert_eq!(status(&a, Method::POST, &[host]), 415);
        assert_eq!(
            status(&a, Method::POST, &[host, ("content-type", "text/plain")]),
            415
        );
        assert_eq!(status(&a, Method::DELETE, &[host]), 200);
        let own = ("origin", "http://127.0.0.1:8080");
        assert_eq!(status(&a, Method::POST, &[host, json, own]), 200);
        assert_eq!(
            status(
                &a,
                Method::POST,
                &[host, json, ("origin", "https://127.0.0.1:8080")]
            ),
            200
        );
        let other = ("origin", "http://evil.example");
        assert_eq!(status(&a, Method::POST, &[host, json, other]), 403);
        assert_eq!(status(&a, Method::DELETE, &[host, other]), 403);
        assert_eq!(
            status(&a, Method::POST, &[host, json, ("origin", "null")]),
            403
        );
        let cross = ("sec-fetch-site", "cross-site");
        assert_eq!(status(&a, Method::POST, &[host, json, own, cross]), 403);
        assert_eq!(
            status(
                &a,
                Method::POST,
                &[host, json, own, ("sec-fetch-site", "same-origin")]
            ),
            200
        );
        // A POST without a body (a stop) needs no Content-Type, but a declared one must be
        // JSON, and another origin is refused all the same.
        assert_eq!(bodiless(&a, Method::POST, &[host]), 200);
        assert_eq!(bodiless(&a, Method::POST, &[host, own]), 200);
        assert_eq!(bodiless(&a, Method::POST, &[host, other]), 403);
        assert_eq!(bodiless(&a, Method::POST, &[host, own, cross]), 403);
        assert_eq!(
            bodiless(
                &a,
                Method::POST,
                &[host, ("content-type", "application/x-www-form-urlencoded")]
            ),
            415
        );
        // Reads are not writes: a link from another site still opens the dashboard.
        assert_eq!(status(&a, Method::GET, &[host, other, cross]), 200);
    }
}
