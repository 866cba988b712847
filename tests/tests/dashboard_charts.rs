//! The dashboard's charts against a real cluster (nats-server, `cube manager --http-addr
//! --chart-interval 1s`, a Docker worker): once tasks are submitted, the SVG served over HTTP
//! draws the tasks by state, the placements and the worker's CPU and memory, sample after
//! sample; in headless Chromium the overview's four chart pictures load (none broken) and are
//! fetched anew as samples come, without a reload of the page.

use anyhow::{ensure, Context, Result};
use cube_tests::web::{Browser, WebCluster};
use cube_tests::{eventually, unique, IMAGE, WITHIN};
use serde_json::json;

const CHARTS: [&str; 4] = [
    "tasks.svg",
    "placements.svg",
    "nodes-cpu.svg",
    "nodes-memory.svg",
];

/// GETs a chart: its SVG, once checked to be served as one.
async fn chart(web: &WebCluster, name: &str) -> Result<String> {
    let r = web
        .http
        .get(web.url(&format!("/charts/{name}")))
        .send()
        .await?;
    ensure!(r.status().is_success(), "{name}: {}", r.status());
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(kind == "image/svg+xml", "{name}: served as {kind:?}");
    Ok(r.text().await?)
}

/// The points (x, y) of the series `name` of a chart: those of its polylines and dots.
fn points(svg: &str, name: &str) -> Vec<(f64, f64)> {
    let Some(start) = svg.find(&format!("<g class=\"series\" data-series=\"{name}\"")) else {
        return Vec::new();
    };
    let group = &svg[start..start + svg[start..].find("</g>").unwrap_or(0)];
    let attr = |text: &str, name: &str| -> Option<String> {
        let from = text.find(&format!("{name}=\""))? + name.len() + 2;
        Some(text[from..from + text[from..].find('"')?].to_string())
    };
    let mut out = Vec::new();
    for line in group.split("<polyline ").skip(1) {
        for pair in attr(line, "points").unwrap_or_default().split(' ') {
            if let Some((x, y)) = pair.split_once(',') {
                out.push((x.parse().unwrap_or(f64::NAN), y.parse().unwrap_or(f64::NAN)));
            }
        }
    }
    for dot in group.split("<circle ").skip(1) {
        if let (Some(x), Some(y)) = (attr(dot, "cx"), attr(dot, "cy")) {
            out.push((x.parse().unwrap_or(f64::NAN), y.parse().unwrap_or(f64::NAN)));
        }
    }
    out
}

/// Where a value of zero lies: the bottom of the plot, where the axes' path turns.
fn baseline(svg: &str) -> Result<f64> {
    let from = svg.find("class=\"axes\" d=\"").context("no axes")?;
    let path = &svg[from..];
    let v = path.find('V').context("no vertical axis")? + 1;
    let h = path.find('H').context("no horizontal axis")?;
    Ok(path[v..h].parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_draw_tasks_placements_and_nodes_and_load_in_the_browser() -> Result<()> {
    let web = WebCluster::start_with(1, &["--chart-interval", "1s"]).await?;
    let worker = web.cluster.worker_names()[0].clone();

    // Like every dashboard page, a chart needs a token: without one, the login page.
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(web.url("/charts/tasks.svg"))
        .send()
        .await?;
    assert!(anonymous.status().is_redirection(), "{anonymous:?}");
    let to = anonymous
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok());
    assert!(
        to.is_some_and(|l| l.starts_with("/login?")),
        "{anonymous:?}"
    );
    let none = web.http.get(web.url("/charts/secrets.svg")).send().await?;
    assert_eq!(none.status().as_u16(), 404);

    // The placements are counted from when the sampler first watches the Task DB (the
    // manager may not have made it yet when the sampler starts): until a sample counted
    // some, the chart has no point.
    eventually(WITHIN, "the sampler counts placements", || async {
        let svg = chart(&web, "placements.svg").await?;
        ensure!(!points(&svg, "placements").is_empty(), "{svg}");
        Ok(())
    })
    .await?;

    let name = unique("chart");
    let mut running = Vec::new();
    for i in 0..2 {
        running.push(
            web.submit(
                json!({ "name": format!("{name}-{i}"), "image": IMAGE, "cmd": ["sleep", "300"] }),
            )
            .await?,
        );
    }
    web.submit(json!({ "image": IMAGE, "cmd": ["true"] }))
        .await?;
    for id in &running {
        web.wait_state(id, "running").await?;
    }

    // A few samples later the charts draw it all.
    let tasks = eventually(
        WITHIN,
        "the tasks chart shows two running, one completed",
        || async {
            let svg = chart(&web, "tasks.svg").await?;
            ensure!(svg.contains(">running 2</text>"), "legend: {svg}");
            ensure!(svg.contains(">completed 1</text>"), "legend: {svg}");
            ensure!(points(&svg, "running").len() >= 3, "{svg}");
            Ok(svg)
        },
    )
    .await?;
    for state in ["pending", "scheduled", "running", "completed", "failed"] {
        assert!(!points(&tasks, state).is_empty(), "{state}: {tasks}");
    }
    assert!(!tasks.contains("no data yet"), "{tasks}");

    let placements = chart(&web, "placements.svg").await?;
    let zero = baseline(&placements)?;
    let drawn = points(&placements, "placements");
    assert!(drawn.len() >= 2, "{placements}");
    assert!(
        drawn.iter().any(|(_, y)| *y < zero),
        "no sample counted a placement: {placements}"
    );

    for name in ["nodes-cpu.svg", "nodes-memory.svg"] {
        let svg = eventually(WITHIN, "the node's line has a few samples", || async {
            let svg = chart(&web, name).await?;
            ensure!(points(&svg, &worker).len() >= 3, "{svg}");
            Ok(svg)
        })
        .await?;
        assert!(
            svg.contains(&format!(">{worker} ")),
            "{name}: no legend: {svg}"
        );
    }
    let memory = chart(&web, "nodes-memory.svg").await?;
    let zero = baseline(&memory)?;
    assert!(
        points(&memory, &worker).iter().all(|(_, y)| *y < zero),
        "a worker uses some memory: {memory}"
    );

    // In the browser: the four pictures load, none broken, and are fetched anew.
    let mut browser = Browser::open(&web.login_url("/")).await?;
    browser
        .wait_for(
            "document.readyState === 'complete' && document.body.dataset.live === 'connected'",
            WITHIN,
            "the overview loads",
        )
        .await?;
    browser.eval("window.__cubeMarker = 'no reload'").await?;
    let loaded = "(() => { const imgs = [...document.querySelectorAll('#charts img')]; \
         return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0) \
         ? imgs.map((i) => ({ chart: i.dataset.chart, width: i.naturalWidth, height: i.naturalHeight, src: i.getAttribute('src') })) : null; })()";
    let first = browser
        .wait_for(loaded, WITHIN, "the chart pictures load")
        .await?;
    let charts: Vec<&str> = first
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["chart"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(charts, CHARTS, "{first}");
    for img in first.as_array().into_iter().flatten() {
        assert_eq!(img["width"], json!(640), "{img}");
        assert_eq!(img["height"], json!(260), "{img}");
    }
    let again = browser
        .wait_for(
            &format!(
                "(() => {{ const l = {loaded}; return l && l.every((i) => i.src.includes('?at=')) ? l : null; }})()"
            ),
            WITHIN,
            "the pictures are fetched anew, and load",
        )
        .await?;
    eprintln!("the charts, fetched anew: {again}");
    assert_eq!(
        browser.eval("window.__cubeMarker").await?,
        json!("no reload")
    );
    browser.close().await?;
    Ok(())
}
