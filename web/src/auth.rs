//! Who may use the HTTP API and dashboard: every route but the login page and the static
//! assets needs a bearer token (`cube token create`), sent as `Authorization: Bearer <token>`
//! or kept by the browser in the session cookie that `POST /login` sets. A token's role
//! decides what it may do ([`decide`]): `read` every GET route and the live stream,
//! `submit` also the routes that change tasks and services, `admin` everything.
//!
//! Tokens live hashed in the `cube-tokens` bucket, which the manager's NATS connection (the
//! one this server uses) may read. A lookup is remembered for [`CACHE_TTL`], so a revoked
//! token is refused at most that long after `cube token revoke` answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cube_shared::subjects::TOKENS_DB;
use cube_shared::token::{parse_token, secret_hash, TokenRecord, TokenRole};
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use tokio::sync::OnceCell;

use crate::api::ApiError;

/// How long a token lookup is remembered: the bound on how long a revoked token still works.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// The session cookie the dashboard keeps its token in.
pub(crate) const COOKIE: &str = "cube_token";

/// The most lookups remembered; past that the cache starts afresh (against floods of
/// made-up tokens).
const CACHE_MAX: usize = 10_000;

/// Whether the HTTP API and dashboard ask for tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every route but the login page and assets needs a token (the default).
    Tokens,
    /// No authentication: allowed only on a loopback address.
    None,
}

/// Refuses `--http-auth none` on an address other machines can reach.
pub fn check_mode(mode: AuthMode, addr: std::net::SocketAddr) -> Result<(), crate::Error> {
    if mode == AuthMode::None && !addr.ip().is_loopback() {
        return Err(crate::Error::Unauthenticated { addr });
    }
    Ok(())
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Anyone: the login page and the assets it needs.
    Nobody,
    /// A token of at least this role.
    Role(TokenRole),
}

/// What a route (its pattern, `None` if no route matched) needs, by method.
pub(crate) fn need(method: &Method, route: Option<&str>) -> Need {
    match route {
        Some("/login") | Some("/assets/{file}") => Need::Nobody,
        Some(r) if r == "/api/tokens" || r.starts_with("/api/tokens/") => {
            Need::Role(TokenRole::Admin)
        }
        _ if *method == Method::GET || *method == Method::HEAD => Need::Role(TokenRole::Read),
        // A route that is not served answers 404 or 405; only a reader learns which.
        None => Need::Role(TokenRole::Read),
        Some(_) => Need::Role(TokenRole::Submit),
    }
}

/// The verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    /// No token, or one that is unknown or revoked: 401.
    Unauthenticated,
    /// A token whose role is below what the route needs: 403.
    Forbidden(TokenRole),
}

/// Whether a request with this method, on this route, by a token of this role (`None`: no
/// valid token) is served.
pub(crate) fn decide(method: &Method, route: Option<&str>, role: Option<TokenRole>) -> Decision {
    match (need(method, route), role) {
        (Need::Nobody, _) => Decision::Allow,
        (Need::Role(_), None) => Decision::Unauthenticated,
        (Need::Role(needed), Some(role)) if role >= needed => Decision::Allow,
        (Need::Role(needed), Some(_)) => Decision::Forbidden(needed),
    }
}

/// Token lookups in the `cube-tokens` bucket, remembered for [`CACHE_TTL`].
#[derive(Clone)]
pub(crate) struct Tokens {
    pub mode: AuthMode,
    js: jetstream::Context,
    bucket: Arc<OnceCell<kv::Store>>,
    cache: Arc<Mutex<Cache>>,
}

/// SHA-256 of a presented token → its role (`None`: not a valid token) and when that was
/// looked up.
type Cache = HashMap<String, (Option<TokenRole>, Instant)>;

/// A lookup that could not be made (NATS trouble): 503, not a refusal of the token.
#[derive(Debug, thiserror::Error)]
#[error("checking the token: {0}")]
pub(crate) struct LookupError(String);

impl Tokens {
    pub fn new(mode: AuthMode, client: async_nats::Client) -> Tokens {
        Tokens {
            mode,
            js: jetstream::new(client),
            bucket: Arc::new(OnceCell::new()),
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The role of a valid token; `None` for an unknown, revoked or malformed one.
    pub async fn role(&self, token: &str) -> Result<Option<TokenRole>, LookupError> {
        let key = secret_hash(token);
        let now = Instant::now();
        if let Some((role, at)) = self.cache.lock().expect("cache lock").get(&key) {
            if now.duration_since(*at) < CACHE_TTL {
                return Ok(*role);
            }
        }
        let role = self.look_up(token).await?;
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        // The time before the lookup: an entry never outlives the bound.
        cache.insert(key, (role, now));
        Ok(role)
    }

    async fn look_up(&self, token: &str) -> Result<Option<TokenRole>, LookupError> {
        let Some((id, secret)) = parse_token(token) else {
            return Ok(None);
        };
        let bucket = self
            .bucket
            .get_or_try_init(|| self.js.get_key_value(TOKENS_DB))
            .await;
        let bucket = match bucket {
            Ok(b) => b,
            // No bucket: no manager made it yet, so there is no token either.
            Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
                return Ok(None)
            }
            Err(e) => return Err(LookupError(e.to_string())),
        };
        let entry = bucket
            .get(id)
            .await
            .map_err(|e| LookupError(e.to_string()))?;
        let Some(bytes) = entry else {
            return Ok(None);
        };
        let record: TokenRecord = wire::decode(&bytes, MAX_MESSAGE_BYTES)
            .map_err(|e| LookupError(format!("the token's record: {e}")))?;
        Ok(record.matches(secret).then_some(record.info.role))
    }
}

/// The token a request carries: the bearer header first, else the session cookie.
pub(crate) fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, token)| token)
        .filter(|t| !t.is_empty())
}

/// The session cookie holding `token`: for this browser session only (no Max-Age), never
/// readable by scripts, never sent by another site's requests.
pub(crate) fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    ))
    .expect("a token is plain ASCII")
}

/// A `?token=` in the URL: the token, and the URL without it.
fn token_in_query(uri: &axum::http::Uri) -> Option<(String, String)> {
    let query = uri.query()?;
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("token=") {
            Some(t) => {
                token = Some(t.to_string());
                false
            }
            None => true,
        })
        .collect();
    let token = token?;
    let path = uri.path();
    let url = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    Some((token, url))
}

fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

const NO_TOKEN: &str = "no token: send `Authorization: Bearer <token>` (make one with `cube token \
                        create --role read`) or log in at /login";
const BAD_TOKEN: &str = "unknown or revoked token (`cube token ls` lists the tokens)";

/// The middleware in front of every route (after routing, so that it sees the route).
pub(crate) async fn authenticate(
    State(tokens): State<Tokens>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(tokens.clone());
    if tokens.mode == AuthMode::None {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path = request.uri().path().to_string();
    let is_api = path.starts_with("/api/");
    // A link with `?token=`: log in, then go where it pointed without the token.
    if method == Method::GET {
        if let Some((token, url)) = token_in_query(request.uri()) {
            return match tokens.role(&token).await {
                Ok(Some(_)) => {
                    let mut r = Redirect::to(&url).into_response();
                    r.headers_mut()
                        .insert(header::SET_COOKIE, session_cookie(&token));
                    r
                }
                Ok(None) => refused(StatusCode::UNAUTHORIZED, BAD_TOKEN),
                Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
        }
    }
    let role = match presented(request.headers()) {
        Some(token) => match tokens.role(token).await {
            Ok(role) => role,
            Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        None => None,
    };
    match decide(&method, route.as_deref(), role) {
        Decision::Allow => next.run(request).await,
        Decision::Unauthenticated if !is_api && method == Method::GET => {
            // A page: the login form, which comes back here.
            let next_url = request
                .uri()
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            Redirect::to(&format!("/login?next={}", percent_encode(&next_url))).into_response()
        }
        Decision::Unauthenticated => {
            let why = if presented(request.headers()).is_some() {
                BAD_TOKEN
            } else {
                NO_TOKEN
            };
            tracing::info!(%method, path, "HTTP request refused: {why}");
            refused(StatusCode::UNAUTHORIZED, why)
        }
        Decision::Forbidden(needed) => {
            let role = role.map_or("none", TokenRole::name);
            tracing::info!(%method, path, role, %needed, "HTTP request refused: role too low");
            refused(
                StatusCode::FORBIDDEN,
                format!("a `{role}` token may not {method} {path}: it needs the `{needed}` role"),
            )
        }
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenRole::{Admin, Read, Submit};

    /// What each served route needs; every route served must be here, so that a new route
    /// is classified on purpose.
    fn expected(method: &Method, route: &str) -> Need {
        let m = method.as_str();
        let role = match (m, route) {
            ("GET", "/login") | ("POST", "/login") | ("GET", "/assets/{file}") => {
                return Need::Nobody
            }
            ("GET", "/api/tokens") | ("POST", "/api/tokens") | ("DELETE", "/api/tokens/{name}") => {
                Admin
            }
            ("POST", "/api/tasks")
            | ("POST", "/api/tasks/{id}/stop")
            | ("POST", "/api/services")
            | ("DELETE", "/api/services/{name}")
            | ("POST", "/api/services/{name}/scale")
            | ("POST", "/api/services/{name}/rollback")
            | ("POST", "/api/services/{name}/promote") => Submit,
            ("GET", _) => Read,
            _ => panic!("{m} {route} is not classified in this test: which role needs it?"),
        };
        Need::Role(role)
    }

    #[test]
    fn every_served_route_needs_what_its_class_says() {
        let served = crate::served_routes();
        assert!(served.len() > 20);
        for (method, route) in &served {
            let needed = expected(method, route);
            assert_eq!(need(method, Some(route)), needed, "{method} {route}");
            for role in [None, Some(Read), Some(Submit), Some(Admin)] {
                let want = match (needed, role) {
                    (Need::Nobody, _) => Decision::Allow,
                    (Need::Role(_), None) => Decision::Unauthenticated,
                    (Need::Role(n), Some(r)) if r >= n => Decision::Allow,
                    (Need::Role(n), Some(_)) => Decision::Forbidden(n),
                };
                assert_eq!(
                    decide(method, Some(route), role),
                    want,
                    "{method} {route} by {role:?}"
                );
            }
        }
        // Spot checks of each class, by hand.
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            decide(&get, Some("/api/tasks"), Some(Read)),
            Decision::Allow
        );
        assert_eq!(
            decide(&get, Some("/api/stream"), None),
            Decision::Unauthenticated
        );
        assert_eq!(
            decide(&post, Some("/api/tasks"), Some(Read)),
            Decision::Forbidden(Submit)
        );
        assert_eq!(
            decide(&post, Some("/api/tasks"), Some(Submit)),
            Decision::Allow
        );
        assert_eq!(
            decide(&post, Some("/api/tokens"), Some(Submit)),
            Decision::Forbidden(Admin)
        );
        assert_eq!(
            decide(&get, Some("/api/tokens"), Some(Read)),
            Decision::Forbidden(Admin)
        );
        assert_eq!(decide(&get, Some("/login"), None), Decision::Allow);
        // Unmatched routes: only a reader learns they are not there.
        assert_eq!(decide(&post, None, None), Decision::Unauthenticated);
        assert_eq!(decide(&post, None, Some(Read)), Decision::Allow);
    }

    /// openapi.json says what each route needs: the public ones need no security, the others
    /// document 401, and those above `read` 403.
    #[test]
    fn openapi_documents_what_each_route_needs() {
        let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI).unwrap();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["name"], COOKIE);
        for (method, route) in crate::served_routes() {
            let op = &doc["paths"][route][method.as_str().to_lowercase()];
            let responses = &op["responses"];
            match need(&method, Some(route)) {
                Need::Nobody => assert_eq!(op["security"], serde_json::json!([]), "{route}"),
                Need::Role(role) => {
                    assert!(op.get("security").is_none(), "{method} {route}");
                    assert!(responses.get("401").is_some(), "{method} {route}: no 401");
                    assert_eq!(
                        responses.get("403").is_some(),
                        role > Read || method != Method::GET,
                        "{method} {route}: 403"
                    );
                }
            }
        }
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            h
        };
        assert_eq!(
            presented(&h(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            presented(&h(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(presented(&h(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented(&h(&[("authorization", "Bearer ")])), None);
        assert_eq!(
            presented(&h(&[("cookie", "a=b; cube_token=xyz; c=d")])),
            Some("xyz")
        );
        assert_eq!(
            presented(&h(&[("cookie", "a=b"), ("cookie", "cube_token=xyz")])),
            Some("xyz")
        );
        assert_eq!(presented(&h(&[("cookie", "xcube_token=xyz")])), None);
        // The header wins over the cookie.
        assert_eq!(
            presented(&h(&[
                ("authorization", "Bearer h"),
                ("cookie", "cube_token=c")
            ])),
            Some("h")
        );
        let cookie = session_cookie("t");
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.to_ascii_lowercase().contains("max-age"));
        assert!(!cookie.to_ascii_lowercase().contains("expires"));
    }

    #[test]
    fn a_token_in_the_url_is_taken_out() {
        let t = |uri: &str| token_in_query(&uri.parse().unwrap());
        assert_eq!(t("/?token=abc"), Some(("abc".into(), "/".into())));
        assert_eq!(
            t("/tasks/x?state=running&token=abc&a=1"),
            Some(("abc".into(), "/tasks/x?state=running&a=1".into()))
        );
        assert_eq!(t("/?state=running"), None);
        assert_eq!(t("/"), None);
        assert_eq!(percent_encode("/?a=b&c"), "/%3Fa%3Db%26c");
    }

    #[test]
    fn tokens_are_refused_only_off_loopback() {
        let any: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lo6: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_mode(AuthMode::None, any).is_err());
        assert!(check_mode(AuthMode::None, lo).is_ok());
        assert!(check_mode(AuthMode::None, lo6).is_ok());
        assert!(check_mode(AuthMode::Tokens, any).is_ok());
    }
}
