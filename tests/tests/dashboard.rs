//! The dashboard in a real browser: headless Chromium loads it from a real cluster
//! (nats-server, `cube manager --http-addr`, a Docker worker), a task is submitted after the
//! page loaded, and the page shows it appear and change state, with no reload. Then the
//! task's page stops it with its Stop button and shows it complete.
//!
//! With `CUBE_SCREENSHOT=path.png` it also saves a picture of the dashboard (how
//! docs/dashboard.png is made).

use std::time::Duration;

use anyhow::{ensure, Result};
use cube_tests::web::{Browser, WebCluster};
use cube_tests::{eventually, unique, IMAGE, WITHIN};
use serde_json::{json, Value};
use uuid::Uuid;

async fn submit(web: &WebCluster, body: Value) -> Result<Uuid> {
    let r = web
        .http
        .post(web.url("/api/tasks"))
        .json(&body)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "{}", r.text().await?);
    let accepted: Value = r.json().await?;
    Ok(serde_json::from_value(accepted["id"].clone())?)
}

/// Waits until the page is loaded and its live stream connected.
async fn wait_live(browser: &mut Browser) -> Result<()> {
    browser
        .wait_for(
            "document.readyState === 'complete' && document.body.dataset.live === 'connected'",
            WITHIN,
            "the page loads and its live stream connects",
        )
        .await?;
    Ok(())
}

/// What the row of the tasks table for `id` shows, or null while there is none.
fn row(id: Uuid) -> String {
    format!(
        "(() => {{ const tr = document.querySelector('#tasks tr[data-task=\"{id}\"]'); \
         return tr ? {{ state: tr.querySelector('td.state').textContent, \
         name: tr.querySelector('td.name').textContent, \
         worker: tr.querySelector('td.worker').textContent }} : null; }})()"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_submitted_after_the_page_loaded_appears_and_runs_without_reload() -> Result<()> {
    let web = WebCluster::start(1).await?;
    let worker = web.cluster.worker_names()[0].clone();
    let mut browser = Browser::open(&web.url("/")).await?;
    wait_live(&mut browser).await?;
    // The worker is listed with its bars.
    let listed = browser
        .eval(&format!(
            "!!document.querySelector('#nodes tr[data-node=\"{worker}\"] .bar')"
        ))
        .await?;
    assert_eq!(listed, json!(true), "the worker is not on the page");
    // A marker that a reload would wipe.
    browser.eval("window.__cubeMarker = 'no reload'").await?;

    let name = unique("browser");
    let id = submit(
        &web,
        json!({ "name": name, "image": IMAGE, "cmd": ["sh", "-c", "echo started; sleep 300"] }),
    )
    .await?;

    let first = browser
        .wait_for(&row(id), WITHIN, "the new task appears on the page")
        .await?;
    eprintln!("the task appeared as {first}");
    let running = browser
        .wait_for(
            &format!(
                "(() => {{ const r = {}; return r && r.state === 'running' ? r : null; }})()",
                row(id)
            ),
            WITHIN,
            "the task shows as running on the page",
        )
        .await?;
    assert_eq!(running["name"], json!(name));
    assert_eq!(running["worker"], json!(worker));
    assert_eq!(
        browser.eval("window.__cubeMarker").await?,
        json!("no reload"),
        "the page was reloaded"
    );
    // The running count went up in place too: for a task first seen on this page the counts
    // are fetched anew (a moment after the row changes), so wait for it.
    browser
        .wait_for(
            "(() => { const n = Number(document.querySelector('[data-count=\"running\"] .count').textContent); return n >= 1 ? n : null; })()",
            WITHIN,
            "the running count goes up without a reload",
        )
        .await?;

    if let Ok(path) = std::env::var("CUBE_SCREENSHOT") {
        // A few more tasks, in different states, for the picture.
        for (n, cmd) in [("web", "sleep 300"), ("batch", "true"), ("crash", "exit 3")] {
            submit(
                &web,
                json!({ "name": n, "image": IMAGE, "cmd": ["sh", "-c", cmd], "memory": 64 << 20, "cpu": 0.25 }),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        browser.screenshot(std::path::Path::new(&path)).await?;
    }

    // The task's page: its Stop button stops it, and the page shows it complete.
    browser.navigate(&web.url(&format!("/tasks/{id}"))).await?;
    wait_live(&mut browser).await?;
    let state = browser
        .eval("document.getElementById('task-state').textContent")
        .await?;
    assert_eq!(state, json!("running"));
    browser
        .eval("window.__cubeMarker = 'task page'; document.getElementById('stop').click(); true")
        .await?;
    browser
        .wait_for(
            "document.getElementById('task-state').textContent === 'completed'",
            WITHIN,
            "the task page shows the task completed",
        )
        .await?;
    assert_eq!(
        browser.eval("window.__cubeMarker").await?,
        json!("task page")
    );
    let journal = browser
        .eval("Array.from(document.querySelectorAll('#journal tr td:nth-child(2)')).map(td => td.textContent)")
        .await?;
    let kinds: Vec<&str> = journal
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"submitted"), "{kinds:?}");
    assert!(kinds.contains(&"stop-requested"), "{kinds:?}");

    // The counts by state stay right for a task whose row is not on the page (filtered
    // out here): it is not counted once more in every state it passes through.
    browser.navigate(&web.url("/?state=completed")).await?;
    wait_live(&mut browser).await?;
    let other = submit(&web, json!({ "image": IMAGE, "cmd": ["sleep", "300"] })).await?;
    eventually(WITHIN, "the second task runs", || async {
        let t: Value = web
            .http
            .get(web.url(&format!("/api/tasks/{other}")))
            .send()
            .await?
            .json()
            .await?;
        ensure!(t["state"] == json!("running"), "{t}");
        Ok(())
    })
    .await?;
    let counts = "(() => { const c = (s) => Number(document.querySelector('[data-count=\"' + s \
         + '\"] .count').textContent); return ['pending', 'scheduled', 'running', 'completed', \
         'failed'].map(c).join(' '); })()";
    browser
        .wait_for(
            &format!("{counts} === '0 0 1 1 0'"),
            WITHIN,
            "the counts show one running and one completed task",
        )
        .await?;
    assert_eq!(browser.eval(&row(other)).await?, Value::Null);
    browser.close().await?;
    Ok(())
}

/// The overview's Managers section shows the leader and the standby, and, live, the takeover
/// when the leader is SIGKILLed: the page is served by the standby's own HTTP server, which
/// goes on serving as the new leader, and is not reloaded.
#[tokio::test(flavor = "multi_thread")]
async fn the_managers_section_shows_a_takeover_live() -> Result<()> {
    let mut cluster = cube_tests::procs::ProcCluster::new().await?;
    cluster.start_manager().await?;
    let port = cube_tests::free_port()?;
    let logs = tempfile::tempdir()?;
    let standby = cluster.spawn_standby_serving_http(port, logs.path().join("standby.log"))?;
    let pid = standby.pid();
    let result = async {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(WITHIN, "the standby lists two managers", || async {
            let m: Value = http
                .get(format!("{base}/api/managers"))
                .send()
                .await?
                .json()
                .await?;
            ensure!(m.as_array().map(Vec::len) == Some(2), "{m}");
            Ok(())
        })
        .await?;
        let mut browser = Browser::open(&format!("{base}/")).await?;
        wait_live(&mut browser).await?;
        let roles = browser
            .eval("[...document.querySelectorAll('#managers tr')].map(tr => tr.dataset.role)")
            .await?;
        assert_eq!(roles, json!(["leader", "standby"]));
        let summary = browser
            .eval("document.getElementById('managers-summary').textContent")
            .await?;
        assert!(
            summary.as_str().is_some_and(|s| s.contains("; 1 standby")),
            "{summary}"
        );
        browser.eval("window.__cubeMarker = 'no reload'").await?;

        cluster.kill_manager().await?;
        let shown = browser
            .wait_for(
                &format!(
                    "(() => {{ const rows = [...document.querySelectorAll('#managers tr')]; \
                     return rows.length === 1 && rows[0].dataset.role === 'leader' \
                     && rows[0].textContent.includes('{pid}') \
                     ? document.getElementById('managers-summary').textContent : null; }})()"
                ),
                WITHIN,
                "the page shows the standby leading",
            )
            .await?;
        assert!(
            shown
                .as_str()
                .is_some_and(|s| s.contains(&format!("(pid {pid})")) && s.ends_with("no standby")),
            "{shown}"
        );
        assert_eq!(
            browser.eval("window.__cubeMarker").await?,
            json!("no reload")
        );
        browser.close().await?;
        Ok::<_, anyhow::Error>(())
    }
    .await
    .map_err(|e| e.context(format!("the standby's log ends:\n{}", standby.log_tail(30))));
    cluster.explain(result)
}
