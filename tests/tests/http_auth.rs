//! The HTTP API's tokens against a real cluster (nats-server, `cube manager --http-addr`):
//! each role gets what its role allows on routes of each class (read, submit, admin), no
//! token or a revoked one gets 401 with a reason, the dashboard's login and its session
//! cookie, `cube token` itself, and a manager that will not serve without tokens off
//! loopback.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cube_shared::token::TokenRole;
use cube_tests::web::{client_with, create_token, WebCluster};
use cube_tests::{cube, cube_bin, cube_output, free_port, IMAGE, WITHIN};
use reqwest::{header, Method, StatusCode};
use serde_json::Value;

/// A request with `client`; the status and the JSON body (`null` if it is not JSON).
async fn call(
    web: &WebCluster,
    client: &reqwest::Client,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Value)> {
    let mut request = client.request(method, web.url(path));
    if let Some(body) = body {
        request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let r = request.send().await?;
    let status = r.status();
    // The live stream never ends: when it starts, only its status matters.
    if path == "/api/stream" && status.is_success() {
        return Ok((status, Value::Null));
    }
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

fn no_redirects(token: Option<&str>) -> Result<reqwest::Client> {
    let mut headers = header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(header::AUTHORIZATION, format!("Bearer {t}").parse()?);
    }
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()?)
}

/// `token` with the last digit of its secret changed: the right id, a wrong secret. (Always
/// changed: replacing it with a fixed digit left it as it was when it already was that one.)
fn wrong_secret(token: &str) -> String {
    let (kept, last) = token.split_at(token.len() - 1);
    format!("{kept}{}", if last == "0" { '1' } else { '0' })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_what_its_role_allows() -> Result<()> {
    let web = WebCluster::start(0).await?;
    let cube_api = web.cluster.cube();
    let read = create_token(&cube_api, TokenRole::Read).await?;
    let submit = create_token(&cube_api, TokenRole::Submit).await?;
    let admin = web.token.clone();
    let task = format!(r#"{{"image":"{IMAGE}","cmd":["sleep","30"]}}"#);
    // (method, path, body, the least role that may)
    let routes: Vec<(Method, String, Option<String>, TokenRole)> = vec![
        (Method::GET, "/api/tasks".into(), None, TokenRole::Read),
        (Method::GET, "/api/nodes".into(), None, TokenRole::Read),
        (
            Method::GET,
            "/api/openapi.json".into(),
            None,
            TokenRole::Read,
        ),
        (Method::GET, "/api/stream".into(), None, TokenRole::Read),
        (
            Method::POST,
            "/api/tasks".into(),
            Some(task),
            TokenRole::Submit,
        ),
        (Method::GET, "/api/tokens".into(), None, TokenRole::Admin),
        (
            Method::POST,
            "/api/tokens".into(),
            Some(r#"{"role":"read"}"#.into()),
            TokenRole::Admin,
        ),
    ];
    let anonymous = no_redirects(None)?;
    let clients = [
        (None, anonymous.clone()),
        (Some(TokenRole::Read), client_with(&read)?),
        (Some(TokenRole::Submit), client_with(&submit)?),
        (Some(TokenRole::Admin), client_with(&admin)?),
        // Not a token at all, and one with a wrong secret: as good as none.
        (None, client_with("not-a-token")?),
        (None, client_with(&wrong_secret(&admin))?),
    ];
    for (method, path, body, least) in &routes {
        for (role, client) in &clients {
            let (status, answer) =
                call(&web, client, method.clone(), path, body.as_deref()).await?;
            let expected = match role {
                None => StatusCode::UNAUTHORIZED,
                Some(r) if r < least => StatusCode::FORBIDDEN,
                Some(_) => status, // checked below
            };
            ensure!(
                status == expected,
                "{method} {path} by {role:?}: {status} {answer}, not {expected}"
            );
            if status.is_client_error() {
                let reason = answer["error"].as_str().unwrap_or_default();
                ensure!(
                    !reason.is_empty(),
                    "{method} {path}: {status} without a reason"
                );
                if status == StatusCode::FORBIDDEN {
                    ensure!(reason.contains(&format!("`{least}`")), "{reason}");
                }
            } else {
                ensure!(
                    status.is_success(),
                    "{method} {path} by {role:?}: {status} {answer}"
                );
            }
        }
    }
    let (_, refused) = call(&web, &anonymous, Method::GET, "/api/tasks", None).await?;
    let reason = refused["error"].as_str().context("a reason")?;
    ensure!(
        reason.contains("no token") && reason.contains("Bearer"),
        "{reason}"
    );

    // The login page and its assets need no token; the other pages send the browser there.
    for path in ["/login", "/assets/style.css"] {
        let r = anonymous.get(web.url(path)).send().await?;
        ensure!(r.status() == StatusCode::OK, "{path}: {}", r.status());
    }
    let r = anonymous.get(web.url("/tasks/x?a=1")).send().await?;
    ensure!(r.status() == StatusCode::SEE_OTHER, "{}", r.status());
    assert_eq!(
        r.headers()[header::LOCATION],
        "/login?next=/tasks/x%3Fa%3D1"
    );

    // POST /login sets the session cookie, which then stands for the token.
    let r = anonymous
        .post(web.url("/login"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(format!(r#"{{"token":"{read}"}}"#))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::NO_CONTENT, "{}", r.status());
    let cookie = r.headers()[header::SET_COOKIE].to_str()?.to_string();
    ensure!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |method: Method, path: &str| {
        anonymous
            .request(method, web.url(path))
            .header(header::COOKIE, session.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body("{}")
    };
    assert_eq!(
        with_cookie(Method::GET, "/api/tasks")
            .send()
            .await?
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        with_cookie(Method::POST, "/api/tasks")
            .send()
            .await?
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = anonymous
        .post(web.url("/login"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"token":"cube_000000000000_00"}"#)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A link with ?token= logs in and drops the token from the URL.
    let r = anonymous
        .get(web.url(&format!("/?state=running&token={read}")))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::SEE_OTHER, "{}", r.status());
    assert_eq!(r.headers()[header::LOCATION], "/?state=running");
    ensure!(r.headers()[header::SET_COOKIE]
        .to_str()?
        .starts_with(&format!("cube_token={read};")));
    Ok(())
}

/// `cube token create|ls|revoke`, and a revoked token refused once the cache's bound
/// ([`cube_web::CACHE_TTL`]) has passed since the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_token_makes_lists_and_revokes_tokens() -> Result<()> {
    let web = WebCluster::start(0).await?;
    let url = web.cluster.nats.url();
    let out = cube_output(&url, &["token", "create", "--role", "read", "--name", "ci"]).await?;
    ensure!(out.ok, "{}", out.stderr);
    let token = out.stdout.trim().to_string();
    ensure!(
        token.starts_with("cube_") && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    ensure!(out.stderr.contains("shown only now"), "{}", out.stderr);

    let listed = cube(&url, &["token", "ls"]).await?;
    let line = listed
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("ci"))
        .with_context(|| format!("ci is not listed: {listed}"))?;
    ensure!(line.split_whitespace().nth(2) == Some("read"), "{line}");
    let secret = token.rsplit('_').next().unwrap();
    let hash = cube_shared::token::secret_hash(secret);
    let json = cube(&url, &["token", "ls", "-o", "json"]).await?;
    for shown in [&listed, &json] {
        ensure!(!shown.contains(secret) && !shown.contains(&hash), "{shown}");
    }
    let tokens: Vec<Value> = serde_json::from_str(&json)?;
    let ci = tokens
        .iter()
        .find(|t| t["name"] == "ci")
        .context("ci in JSON")?;
    ensure!(ci["role"] == "read" && ci["created"].is_string(), "{ci}");

    // Names are unique; roles are read, submit or admin.
    let again = cube_output(
        &url,
        &["token", "create", "--role", "admin", "--name", "ci"],
    )
    .await?;
    ensure!(
        !again.ok && again.stderr.contains("exists already"),
        "{}",
        again.stderr
    );
    let bad = cube_output(&url, &["token", "create", "--role", "root"]).await?;
    ensure!(
        !bad.ok && bad.stderr.contains("read, submit or admin"),
        "{}",
        bad.stderr
    );

    // The token works, then is revoked by name.
    let http = client_with(&token)?;
    let r = http.get(web.url("/api/tasks")).send().await?;
    ensure!(r.status() == StatusCode::OK, "{}", r.status());
    let revoked = cube(&url, &["token", "revoke", "ci"]).await?;
    ensure!(revoked.contains("revoked"), "{revoked}");
    let listed = cube(&url, &["token", "ls"]).await?;
    ensure!(
        !listed
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("ci")),
        "{listed}"
    );
    // Past the cache's bound the server has looked again, and refuses it.
    tokio::time::sleep(cube_web::CACHE_TTL + Duration::from_secs(1)).await;
    let r = http.get(web.url("/api/tasks")).send().await?;
    ensure!(
        r.status() == StatusCode::UNAUTHORIZED,
        "a revoked token: {}",
        r.status()
    );
    let body: Value = r.json().await?;
    ensure!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
    let gone = cube_output(&url, &["token", "revoke", "ci"]).await?;
    ensure!(
        !gone.ok && gone.stderr.contains("no token"),
        "{}",
        gone.stderr
    );

    // By id too (the admin token over HTTP can revoke as well).
    let created: Value = serde_json::from_str(
        &cube(&url, &["token", "create", "--role", "submit", "-o", "json"]).await?,
    )?;
    let id = created["id"].as_str().context("an id")?;
    ensure!(created["name"] == format!("submit-{id}"), "{created}");
    let r = web
        .http
        .delete(web.url(&format!("/api/tokens/{id}")))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK, "{}", r.status());
    let listed = cube(&url, &["token", "ls"]).await?;
    ensure!(!listed.contains(id), "{listed}");
    Ok(())
}

/// `--http-auth none` on an address other machines reach: the manager will not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_refuses_unauthenticated_http_off_loopback() -> Result<()> {
    let port = free_port()?;
    let out = tokio::time::timeout(
        WITHIN,
        tokio::process::Command::new(cube_bin())
            .args(["manager", "--http-auth", "none", "--http-addr"])
            .arg(format!("0.0.0.0:{port}"))
            // Nobody listens here: the refusal comes before any connection.
            .env(
                "CUBE_NATS_URL",
                format!("nats://127.0.0.1:{}", free_port()?),
            )
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the manager did not exit")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "it started: {stderr}");
    ensure!(
        stderr.contains("--http-auth none") && stderr.contains("loopback"),
        "{stderr}"
    );
    Ok(())
}
