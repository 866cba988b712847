//! `--metrics-addr`: a real manager and a real Docker worker (as `cube` processes) serve
//! Prometheus text on /metrics, and what they count matches what happened.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cube_shared::{RestartPolicy, State, TaskEvent};
use cube_tests::procs::ProcCluster;
use cube_tests::{eventually, free_port, sleeper, task, unique, WITHIN};

/// One scrape: every sample by its series (`name{labels}`), and the families' HELP and TYPE.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Result<Scrape> {
        let mut scrape = Scrape {
            samples: BTreeMap::new(),
            help: BTreeMap::new(),
            types: BTreeMap::new(),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').context("HELP without text")?;
                scrape.help.insert(name.into(), help.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').context("TYPE without a type")?;
                scrape.types.insert(name.into(), kind.into());
            } else if line.starts_with('#') {
                continue;
            } else {
                let (series, value) = line
                    .rsplit_once(' ')
                    .with_context(|| format!("not a sample: {line}"))?;
                let value: f64 = value
                    .parse()
                    .with_context(|| format!("not a number: {line}"))?;
                scrape.samples.insert(series.into(), value);
            }
        }
        Ok(scrape)
    }

    /// The value of one series, e.g. `cube_tasks{state="running"}`.
    fn value(&self, series: &str) -> Result<f64> {
        self.samples
            .get(series)
            .copied()
            .with_context(|| format!("no series {series}"))
    }

    /// The sum over every series of `name` (whatever its labels).
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }

    /// Prometheus conventions: the cube_ prefix, help text for every family, counters end in
    /// _total, and every histogram has its count, sum and +Inf bucket.
    fn check_conventions(&self) -> Result<()> {
        ensure!(!self.types.is_empty(), "no metric families");
        for (name, kind) in &self.types {
            ensure!(name.starts_with("cube_"), "{name}: no cube_ prefix");
            ensure!(
                self.help.get(name).is_some_and(|h| !h.is_empty()),
                "{name} has no HELP"
            );
            match kind.as_str() {
                "counter" => ensure!(name.ends_with("_total"), "counter {name} lacks _total"),
                "histogram" => {
                    for part in ["_count", "_sum"] {
                        ensure!(
                            self.samples.contains_key(&format!("{name}{part}")),
                            "histogram {name} has no {part}"
                        );
                    }
                    ensure!(
                        self.samples
                            .contains_key(&format!("{name}_bucket{{le=\"+Inf\"}}")),
                        "histogram {name} has no +Inf bucket"
                    );
                }
                "gauge" => {}
                other => bail!("{name}: unexpected type {other}"),
            }
        }
        Ok(())
    }
}

/// GET http://ADDR/metrics, checked to be Prometheus text, parsed.
async fn scrape(addr: &str) -> Result<Scrape> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        conn.read_to_string(&mut response).await?;
        Ok::<_, anyhow::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .with_context(|| format!("{addr}/metrics did not answer within 5 s"))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "not the Prometheus text format: {head}"
    );
    Scrape::parse(body)
}

/// Scrapes `addr` until `check` accepts what it reads.
async fn until(addr: &str, what: &str, check: impl Fn(&Scrape) -> Result<()>) -> Result<Scrape> {
    eventually(WITHIN, what, || async {
        let s = scrape(addr).await?;
        check(&s)?;
        Ok(s)
    })
    .await
}

fn is(s: &Scrape, series: &str, expected: f64) -> Result<()> {
    let v = s.value(series)?;
    ensure!(v == expected, "{series} is {v}, expected {expected}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_and_worker_metrics_follow_what_happens() -> Result<()> {
    let mut cluster = ProcCluster::new().await?;
    let result = scenario(&mut cluster).await;
    cluster.explain(result)
}

async fn scenario(cluster: &mut ProcCluster) -> Result<()> {
    let manager = format!("127.0.0.1:{}", free_port()?);
    let worker = format!("127.0.0.1:{}", free_port()?);
    cluster.manager_args = vec!["--metrics-addr".into(), manager.clone()];
    cluster.worker_args = vec!["--metrics-addr".into(), worker.clone()];
    cluster.start_manager().await?;

    // Before anything happens: every series is there, at zero.
    let s = scrape(&manager).await?;
    s.check_conventions()?;
    for state in State::ALL {
        is(&s, &format!("cube_tasks{{state=\"{state}\"}}"), 0.0)?;
    }
    is(&s, "cube_scheduling_latency_seconds_count", 0.0)?;
    ensure!(s.sum("cube_placements_total") == 0.0);
    is(&s, "cube_nats_reconnects_total", 0.0)?;

    cluster.add_worker().await?;
    until(&manager, "the manager counts one ready node", |s| {
        is(s, "cube_nodes{state=\"ready\"}", 1.0)?;
        is(s, "cube_nodes{state=\"down\"}", 0.0)
    })
    .await?;

    // One task runs.
    let running = cluster.submit(sleeper()).await?;
    cluster.wait_state(running, State::Running, WITHIN).await?;
    let s = until(&manager, "the manager counts the running task", |s| {
        is(s, "cube_tasks{state=\"running\"}", 1.0)?;
        is(s, "cube_tasks{state=\"pending\"}", 0.0)?;
        is(s, "cube_tasks{state=\"scheduled\"}", 0.0)
    })
    .await?;
    is(
        &s,
        "cube_placements_total{reason=\"new\",scheduler=\"spread\"}",
        1.0,
    )?;
    ensure!(s.sum("cube_placements_total") == 1.0, "{:?}", s.samples);
    is(&s, "cube_scheduling_latency_seconds_count", 1.0)?;
    is(
        &s,
        "cube_scheduling_latency_seconds_bucket{le=\"+Inf\"}",
        1.0,
    )?;
    let latency = s.value("cube_scheduling_latency_seconds_sum")?;
    ensure!(latency > 0.0 && latency < WITHIN.as_secs_f64(), "{latency}");
    is(&s, "cube_restarts_total", 0.0)?;
    ensure!(s.sum("cube_rejected_total") == 0.0);
    ensure!(s.value("cube_manager_batch_messages_count")? >= 2.0); // submission, report
    ensure!(s.value("cube_manager_commit_seconds_count")? >= 1.0);

    let w = until(&worker, "the worker counts the running task", |s| {
        is(s, "cube_worker_tasks_running", 1.0)
    })
    .await?;
    w.check_conventions()?;
    is(&w, "cube_containers_started_total", 1.0)?;
    is(&w, "cube_containers_failed_total", 0.0)?;
    ensure!(w.value("cube_heartbeats_sent_total")? >= 1.0);
    ensure!(w.sum("cube_docker_errors_total") == 0.0, "{:?}", w.samples);
    is(&w, "cube_nats_reconnects_total", 0.0)?;
    is(&w, "cube_health_check_failures_total", 0.0)?;

    // A task whose image exists nowhere: Docker cannot pull it.
    let mut missing = task(&["true"]);
    missing.image = format!("{}:latest", unique("cube-no-such-image"));
    missing.restart_policy = RestartPolicy::No;
    let failed = cluster.submit(missing).await?;
    cluster.wait_state(failed, State::Failed, WITHIN).await?;
    let w = until(&worker, "the worker counts the failed pull", |s| {
        is(s, "cube_containers_failed_total", 1.0)
    })
    .await?;
    is(
        &w,
        "cube_docker_errors_total{operation=\"pull_image\"}",
        1.0,
    )?;
    is(&w, "cube_containers_started_total", 1.0)?;
    is(&w, "cube_worker_tasks_running", 1.0)?;

    // Two refusals of different kinds.
    cluster
        .publish_event(bytes::Bytes::from_static(b"{not json"))
        .await?;
    let stop_nothing = TaskEvent::stop(uuid::Uuid::new_v4());
    cluster
        .publish_event(cube_shared::wire::encode(&stop_nothing))
        .await?;
    let s = until(&manager, "the manager counts both rejections", |s| {
        is(s, "cube_rejected_total{kind=\"invalid_event\"}", 1.0)?;
        is(s, "cube_rejected_total{kind=\"unknown_task\"}", 1.0)
    })
    .await?;
    is(&s, "cube_tasks{state=\"failed\"}", 1.0)?;
    is(&s, "cube_tasks{state=\"running\"}", 1.0)?;
    is(&s, "cube_scheduling_latency_seconds_count", 2.0)?;
    ensure!(s.sum("cube_placements_total") == 2.0);

    // A task that fails, is restarted once by its policy, and fails again.
    let mut flaky = task(&["sh", "-c", "exit 3"]);
    flaky.restart_policy = RestartPolicy::OnFailure;
    flaky.max_restarts = Some(1);
    cluster.submit(flaky).await?;
    let s = until(&manager, "the manager counts one restart", |s| {
        is(s, "cube_restarts_total", 1.0)?;
        is(s, "cube_tasks{state=\"failed\"}", 2.0)?;
        is(s, "cube_tasks{state=\"running\"}", 1.0)?;
        is(s, "cube_tasks{state=\"scheduled\"}", 0.0)
    })
    .await?;
    is(
        &s,
        "cube_placements_total{reason=\"restart\",scheduler=\"spread\"}",
        1.0,
    )?;
    is(
        &s,
        "cube_placements_total{reason=\"new\",scheduler=\"spread\"}",
        3.0,
    )?;
    // A restart is not a submission: no second latency observation.
    is(&s, "cube_scheduling_latency_seconds_count", 3.0)?;
    let w = scrape(&worker).await?;
    is(&w, "cube_containers_started_total", 3.0)?;
    is(&w, "cube_worker_tasks_running", 1.0)?;

    // A restarted manager reports the tasks it loads, before anything new happens.
    let status = cluster.term_manager().await?;
    ensure!(status.success(), "the manager exited with {status}");
    cluster.start_manager().await?;
    let s = scrape(&manager).await?;
    is(&s, "cube_tasks{state=\"running\"}", 1.0)?;
    is(&s, "cube_tasks{state=\"failed\"}", 2.0)?;
    is(&s, "cube_tasks{state=\"pending\"}", 0.0)?;
    // Counters start again with the process.
    ensure!(s.sum("cube_placements_total") == 0.0);
    until(&manager, "the restarted manager counts the node", |s| {
        is(s, "cube_nodes{state=\"ready\"}", 1.0)
    })
    .await?;

    // NATS goes away and comes back: both processes count one reconnection.
    cluster.nats.restart().await?;
    until(&manager, "the manager counts one reconnection", |s| {
        is(s, "cube_nats_reconnects_total", 1.0)
    })
    .await?;
    until(&worker, "the worker counts one reconnection", |s| {
        is(s, "cube_nats_reconnects_total", 1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_address_is_a_clear_error() -> Result<()> {
    let nats = cube_tests::NatsServer::start().await?;
    // A port in use: the manager says so and exits, rather than running without metrics.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let err = cube_tests::cube(&nats.url(), &["manager", "--metrics-addr", &addr])
        .await
        .expect_err("the manager cannot listen on a port in use");
    ensure!(
        format!("{err:#}").contains("--metrics-addr"),
        "the error names the flag: {err:#}"
    );
    let err = cube_tests::cube(&nats.url(), &["worker", "--metrics-addr", "not-an-address"])
        .await
        .expect_err("an address that does not parse is refused");
    ensure!(format!("{err:#}").contains("--metrics-addr"), "{err:#}");
    Ok(())
}
