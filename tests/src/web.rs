//! Support for the HTTP API and dashboard tests: a [`ProcCluster`] whose manager serves
//! `--http-addr` on a free port, and a headless Chromium driven over the DevTools protocol.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use cube_shared::token::TokenRole;

use crate::procs::ProcCluster;
use crate::{eventually, free_port, WITHIN};

/// A cluster of real processes whose manager serves the HTTP API, and the API's base URL.
pub struct WebCluster {
    pub cluster: ProcCluster,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base: String,
    /// Sends [`WebCluster::token`] with every request.
    pub http: reqwest::Client,
    /// An `admin` token, made when the cluster started.
    pub token: String,
}

impl WebCluster {
    /// nats-server, `cube manager --http-addr 127.0.0.1:<free port>` and `workers` Docker
    /// workers; returns once the API answers.
    pub async fn start(workers: usize) -> Result<WebCluster> {
        WebCluster::start_with(workers, &[]).await
    }

    /// As [`WebCluster::start`], with more arguments for `cube manager`.
    pub async fn start_with(workers: usize, manager_args: &[&str]) -> Result<WebCluster> {
        let mut cluster = ProcCluster::new().await?;
        let port = free_port()?;
        cluster.manager_args = vec!["--http-addr".into(), format!("127.0.0.1:{port}")];
        cluster
            .manager_args
            .extend(manager_args.iter().map(|a| a.to_string()));
        cluster.start_manager().await?;
        for _ in 0..workers {
            cluster.add_worker().await?;
        }
        let base = format!("http://127.0.0.1:{port}");
        let token = create_token(&cluster.cube(), TokenRole::Admin).await?;
        let http = client_with(&token)?;
        eventually(Duration::from_secs(30), "the HTTP API answers", || async {
            let r = http.get(format!("{base}/api/nodes")).send().await?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(anyhow!("{}", r.status()))
            }
        })
        .await?;
        Ok(WebCluster {
            cluster,
            base,
            http,
            token,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Submits `body` (a TaskSpec) through the HTTP API: the accepted task's id.
    pub async fn submit(&self, body: Value) -> Result<uuid::Uuid> {
        let r = self
            .http
            .post(self.url("/api/tasks"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 202, "{}", r.text().await?);
        let accepted: Value = r.json().await?;
        Ok(serde_json::from_value(accepted["id"].clone())?)
    }

    /// Waits until the HTTP API shows task `id` in `state`, and returns it as JSON.
    pub async fn wait_state(&self, id: impl std::fmt::Display, state: &str) -> Result<Value> {
        eventually(WITHIN, &format!("task {id} is {state}"), || async {
            let t: Value = self
                .http
                .get(self.url(&format!("/api/tasks/{id}")))
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(t["state"] == json!(state), "{t}");
            Ok(t)
        })
        .await
    }

    /// The URL of `path` (without a query) with the admin token: a browser that opens it
    /// logs in and lands on `path`.
    pub fn login_url(&self, path: &str) -> String {
        format!("{}{path}?token={}", self.base, self.token)
    }
}

/// A fresh token of `role`, made through the manager (`cube.api.tokens.create`), once the
/// leader answers.
pub async fn create_token(cube: &cube_client::Cube, role: TokenRole) -> Result<String> {
    eventually(WITHIN, "the manager makes a token", || async {
        Ok(cube.create_token(role, None).await?.token)
    })
    .await
}

/// An HTTP client that sends `token` as its bearer token on every request.
pub fn client_with(token: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .default_headers(headers)
        .build()?)
}

/// Headless Chromium (Debian's `chromium`), killed when dropped, with one page attached.
pub struct Browser {
    child: tokio::process::Child,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `CUBE_CHROMIUM`, or `chromium` on the PATH.
pub fn chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CUBE_CHROMIUM") {
        return Ok(path.into());
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("chromium is not installed: `apt-get install chromium` (scripts/setup does it)")
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    pub async fn open(url: &str) -> Result<Browser> {
        let profile = tempfile::Builder::new()
            .prefix("cube-chromium-")
            .tempdir()?;
        let child = tokio::process::Command::new(chromium()?)
            .args([
                "--headless",
                // Tests run as root here, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromium")?;
        // Chromium writes the port and browser path it listens on into the profile.
        let active = profile.path().join("DevToolsActivePort");
        let endpoint = eventually(
            Duration::from_secs(30),
            "chromium writes DevToolsActivePort",
            || async {
                let text = std::fs::read_to_string(&active)?;
                let mut lines = text.lines();
                match (lines.next(), lines.next()) {
                    (Some(port), Some(path)) => Ok(format!("ws://127.0.0.1:{port}{path}")),
                    _ => Err(anyhow!("incomplete: {text:?}")),
                }
            },
        )
        .await?;
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .context("connecting to chromium's DevTools")?;
        let mut browser = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": url }))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .context("a target id")?
            .to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("a session id")?
            .to_string();
        Ok(browser)
    }

    /// One DevTools command (on the page once attached); its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await?;
        let answer = async {
            while let Some(frame) = self.ws.next().await {
                let Message::Text(text) = frame? else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text)?;
                // Events (no id) and other answers are not ours.
                if v["id"].as_u64() == Some(id) {
                    if let Some(e) = v.get("error") {
                        bail!("{method}: {e}");
                    }
                    return Ok(v["result"].clone());
                }
            }
            bail!("chromium closed the DevTools connection")
        };
        tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .map_err(|_| anyhow!("{method}: no answer from chromium within 30 s"))?
    }

    /// Evaluates a JavaScript expression in the page; its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression` until its value is neither `null` nor `false`; that value.
    pub async fn wait_for(
        &mut self,
        expression: &str,
        within: Duration,
        what: &str,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = self.eval(expression).await;
            match last {
                Ok(v) if !v.is_null() && v != Value::Bool(false) => return Ok(v),
                _ if tokio::time::Instant::now() >= deadline => {
                    bail!("timed out after {within:?} waiting until {what}: last {last:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// On the login page (where the dashboard sends a browser without a token): types
    /// `token` into the form and submits it; returns once the page it was going to shows.
    pub async fn log_in(&mut self, token: &str) -> Result<()> {
        // Parsed to the end: the form is there before the script that sends it as JSON has
        // run, and a submission before that is a plain GET of the form.
        self.wait_for(
            "document.readyState !== 'loading' && document.body && document.body.dataset.page === 'login' && !!document.getElementById('token')",
            WITHIN,
            "the login page shows",
        )
        .await?;
        self.eval(&format!(
            "document.getElementById('token').value = {}; \
             document.getElementById('login').requestSubmit(); true",
            json!(token)
        ))
        .await?;
        self.wait_for(
            "document.readyState === 'complete' && document.body && document.body.dataset.page !== 'login'",
            WITHIN,
            "the dashboard shows after logging in",
        )
        .await?;
        Ok(())
    }

    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        self.call("Page.navigate", json!({ "url": url })).await?;
        Ok(())
    }

    /// Saves a PNG of the page.
    pub async fn screenshot(&mut self, path: &std::path::Path) -> Result<()> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await?;
        let data = shot["data"].as_str().context("screenshot data")?;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Closes Chromium and waits for it.
    pub async fn close(mut self) -> Result<()> {
        self.session.clear();
        let _ = self.call("Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(())
    }
}

/// Reads the event stream until an event `name` whose data `accept` takes; returns its data.
pub async fn next_event(
    stream: &mut reqwest::Response,
    buffer: &mut String,
    name: &str,
    accept: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let (_, value) = next_event_of(stream, buffer, |kind, v| kind == name && accept(v))
        .await
        .map_err(|e| anyhow!("awaiting a `{name}` event: {e}"))?;
    Ok(value)
}

/// Reads the event stream until an event that `accept` takes (given its name and data);
/// returns its name and data.
pub async fn next_event_of(
    stream: &mut reqwest::Response,
    buffer: &mut String,
    accept: impl Fn(&str, &Value) -> bool,
) -> Result<(String, Value)> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = String::new();
            for line in event.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if data.is_empty() {
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if accept(kind, &value) {
                return Ok((kind.to_string(), value));
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .map_err(|_| anyhow!("no event as awaited within {WITHIN:?}"))??
            .ok_or_else(|| anyhow!("the event stream ended"))?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// GETs `path`: the status and the JSON body.
pub async fn get_json(web: &WebCluster, path: &str) -> Result<(reqwest::StatusCode, Value)> {
    let r = web.http.get(web.url(path)).send().await?;
    Ok((r.status(), r.json().await?))
}

/// POSTs JSON `body` to `path`: the status and the JSON body.
pub async fn post(
    web: &WebCluster,
    path: &str,
    body: &str,
) -> Result<(reqwest::StatusCode, Value)> {
    let r = web
        .http
        .post(web.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    Ok((r.status(), r.json().await?))
}
