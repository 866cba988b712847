//! The dashboard in a real browser: headless Chromium loads it from a real cluster
//! (nats-server, `cube manager --http-addr`, a Docker worker), a task is submitted after the
//! page loaded, and the page shows it appear and change state, with no reload. Then the
//! task's page stops it with its Stop button and shows it complete.
//!
//! With `CUBE_SCREENSHOT=path.png` it also saves a picture of the dashboard (how
//! docs/dashboard.png is made, with `CUBE_CHART_INTERVAL=1s` so that its charts have samples).

use std::time::Duration;

use anyhow::{ensure, Result};
use cube_shared::token::TokenRole;
use cube_tests::web::{Browser, WebCluster};
use cube_tests::{eventually, unique, IMAGE, WITHIN};
use serde_json::{json, Value};
use uuid::Uuid;

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
    // Without a token the dashboard sends the browser to its login page, and back.
    let mut browser = Browser::open(&web.url("/")).await?;
    browser.log_in(&web.token).await?;
    assert_eq!(browser.eval("location.pathname").await?, json!("/"));
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
    let id = web
        .submit(
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
            web.submit(
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
    let other = web
        .submit(json!({ "image": IMAGE, "cmd": ["sleep", "300"] }))
        .await?;
    web.wait_state(other, "running").await?;
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
        let token = cube_tests::web::create_token(&cluster.cube(), TokenRole::Read).await?;
        let http = cube_tests::web::client_with(&token)?;
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
        let mut browser = Browser::open(&format!("{base}/?token={token}")).await?;
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

/// What a service's row on the overview shows, or null while there is none.
fn service_row(name: &str) -> String {
    format!(
        "(() => {{ const tr = document.querySelector('#services tr[data-service=\"{name}\"]'); \
         if (!tr) return null; const t = (c) => tr.querySelector('td.' + c).textContent; \
         return {{ kind: t('kind'), desired: t('desired'), running: t('running'), \
         healthy: t('healthy'), version: t('version'), rollout: t('rollout') }}; }})()"
    )
}

/// What a service's page shows: its fields, its state and its copies.
const SERVICE_PAGE: &str = "(() => { const f = (k) => { const dd = document.querySelector('dd[data-field=\"' + k + '\"]'); \
     return dd ? dd.textContent : null; }; \
     return { state: document.getElementById('service-state').textContent, desired: f('desired'), \
     running: f('running'), healthy: f('healthy'), version: f('version'), rollout: f('rollout'), \
     command: f('command'), \
     copies: [...document.querySelectorAll('#copies tr')].map((tr) => ({ \
       link: tr.querySelector('a').getAttribute('href'), version: tr.querySelector('td.version').textContent, \
       state: tr.querySelector('td.state').textContent, node: tr.querySelector('td.node').textContent, \
       healthy: tr.querySelector('td.healthy').textContent })), \
     versions: document.querySelectorAll('#versions tr').length, \
     scripts: document.querySelectorAll('script').length }; })()";

/// Removes a service's containers, however the test ends.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        cube_tests::remove_containers(&format!("{}={}", cube_shared::LABEL_SERVICE, self.0));
    }
}

async fn deploy(web: &WebCluster, spec: Value) -> Result<()> {
    let r = web
        .http
        .post(web.url("/api/services"))
        .json(&spec)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "{}", r.text().await?);
    Ok(())
}

/// A service deployed after the overview loaded appears with its counts; its page lists its
/// copies and follows a scale and a new version's rollout, all without reload. Hostile text
/// in its template shows as text.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_and_its_rollout_show_live_without_reload() -> Result<()> {
    let web = WebCluster::start(1).await?;
    let worker = web.cluster.worker_names()[0].clone();
    let name = unique("svc");
    let _sweep = Sweep(name.clone());
    let evil = "<script>alert('pwned')</script>";
    let spec = |count: u32, env: &[&str]| {
        json!({
            "name": name,
            "count": count,
            "template": {
                "image": IMAGE,
                "cmd": ["sh", "-c", format!("trap 'exit 0' TERM; sleep 300 & wait # {evil}")],
                "env": env,
            },
            "update": { "min_healthy_time": "1s" },
        })
    };
    let mut browser = Browser::open(&web.login_url("/")).await?;
    wait_live(&mut browser).await?;
    assert_eq!(
        browser
            .eval("!!document.getElementById('no-services') && !document.getElementById('no-services').hidden")
            .await?,
        json!(true),
        "the overview says there is no service"
    );
    browser.eval("window.__cubeMarker = 'no reload'").await?;

    deploy(&web, spec(2, &[])).await?;
    let row = browser
        .wait_for(
            &format!(
                "(() => {{ const r = {}; return r && r.running === '2' && r.healthy === '2' \
                 && r.rollout === 'succeeded' ? r : null; }})()",
                service_row(&name)
            ),
            WITHIN,
            "the overview shows the service with two healthy copies",
        )
        .await?;
    assert_eq!(row["kind"], json!("service"), "{row}");
    assert_eq!(row["desired"], json!("2"), "{row}");
    assert_eq!(row["version"], json!("1"), "{row}");
    assert_eq!(
        browser
            .eval("document.getElementById('no-services').hidden")
            .await?,
        json!(true)
    );
    assert_eq!(
        browser.eval("window.__cubeMarker").await?,
        json!("no reload"),
        "the page was reloaded"
    );

    // The service's page, from the overview's link.
    let href = browser
        .eval(&format!(
            "document.querySelector('#services tr[data-service=\"{name}\"] td.name a').getAttribute('href')"
        ))
        .await?;
    assert_eq!(href, json!(format!("/services/{name}")));
    browser
        .navigate(&web.url(&format!("/services/{name}")))
        .await?;
    wait_live(&mut browser).await?;
    let page = browser
        .wait_for(
            &format!(
                "(() => {{ const p = {SERVICE_PAGE}; return p.copies.length === 2 \
                 && p.copies.every((c) => c.healthy === 'yes') ? p : null; }})()"
            ),
            WITHIN,
            "the service's page lists two healthy copies",
        )
        .await?;
    assert_eq!(page["running"], json!("2"), "{page}");
    assert_eq!(page["state"], json!("succeeded"), "{page}");
    for copy in page["copies"].as_array().cloned().unwrap_or_default() {
        assert_eq!(copy["node"], json!(worker), "{copy}");
        assert_eq!(copy["version"], json!("1"), "{copy}");
        assert_eq!(copy["state"], json!("running"), "{copy}");
        assert!(
            copy["link"]
                .as_str()
                .is_some_and(|l| l.starts_with("/tasks/")),
            "{copy}"
        );
    }
    // The template's hostile text is text: the page's only script is its own.
    assert!(
        page["command"].as_str().is_some_and(|c| c.contains(evil)),
        "{page}"
    );
    assert_eq!(page["scripts"], json!(1), "{page}");
    browser.eval("window.__cubeMarker = 'service page'").await?;

    // Scaled down over the API: the page follows.
    let r = web
        .http
        .post(web.url(&format!("/api/services/{name}/scale")))
        .json(&json!({ "count": 1 }))
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "{}", r.text().await?);
    browser
        .wait_for(
            &format!(
                "(() => {{ const p = {SERVICE_PAGE}; return p.desired === '1' && p.running === '1' \
                 && p.copies.length === 1 ? p : null; }})()"
            ),
            WITHIN,
            "the page shows one copy after the scale",
        )
        .await?;

    // A new version rolls out: the page shows it under way (the new copy started beside the
    // old one), then done. What the page shows is recorded at each change of it.
    browser
        .eval(&format!(
            "window.__seen = []; new MutationObserver(() => window.__seen.push({SERVICE_PAGE})) \
             .observe(document.querySelector('main'), {{ subtree: true, childList: true, characterData: true }}); true"
        ))
        .await?;
    deploy(&web, spec(1, &["V=2"])).await?;
    let rolled = browser
        .wait_for(
            &format!(
                "(() => {{ const p = {SERVICE_PAGE}; return p.version === '2' && p.state === 'succeeded' \
                 && p.copies.length === 1 && p.copies[0].version === '2' ? p : null; }})()"
            ),
            WITHIN,
            "the page shows version 2 rolled out",
        )
        .await?;
    assert_eq!(rolled["rollout"], json!("1 → 2"), "{rolled}");
    assert_eq!(rolled["versions"], json!(2), "{rolled}");
    let under_way = browser
        .eval(
            "window.__seen.some((p) => p.state === 'running' && p.rollout === '1 → 2' \
             && p.copies.length === 2 && p.copies.some((c) => c.version === '1') \
             && p.copies.some((c) => c.version === '2'))",
        )
        .await?;
    assert_eq!(
        under_way,
        json!(true),
        "the page never showed the rollout under way: {}",
        browser.eval("JSON.stringify(window.__seen.map((p) => [p.state, p.rollout, p.copies.map((c) => c.version + ':' + c.state)]))").await?
    );
    // The journal's entries about it arrived on the page as the manager wrote them.
    let rolled_out = browser
        .eval("[...document.querySelectorAll('#journal tr td:nth-child(5)')].some((td) => td.textContent.endsWith('every copy runs version 2'))")
        .await?;
    assert_eq!(rolled_out, json!(true));
    // The service's journal entries are on its page.
    let kinds = browser
        .eval("[...document.querySelectorAll('#journal tr td:nth-child(2)')].map((td) => td.textContent)")
        .await?;
    assert!(
        kinds.as_array().is_some_and(|k| k
            .iter()
            .any(|k| k.as_str().is_some_and(|k| k.starts_with("service")))),
        "{kinds}"
    );
    assert_eq!(
        browser.eval("window.__cubeMarker").await?,
        json!("service page"),
        "the service's page was reloaded"
    );
    browser.close().await?;
    Ok(())
}
