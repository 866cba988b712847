//! `cube bench` runs end to end (its own nats-server, a manager process, simulated or Docker
//! workers) and reports well-formed figures. Speed itself is not asserted: the figures go in
//! docs/BENCHMARKS.md.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use bollard::query_parameters::ListContainersOptionsBuilder;
use cube_tests::{cube_bin, ensure_image, init_tracing};
use serde_json::Value;

/// Runs `cube bench ARGS --json FILE` and returns the JSON it wrote, checking it printed a
/// table too.
async fn bench(args: &[&str]) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("figures.json");
    let out = tokio::process::Command::new(cube_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "cube bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.starts_with(&format!("cube bench {}", args[0])),
        "no table printed: {stdout}"
    );
    let text = std::fs::read_to_string(&json).context("the JSON report")?;
    Ok(serde_json::from_str(&text)?)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

/// Percentiles are present, positive and in order.
fn assert_latency(v: &Value, key: &str) {
    let l = &v[key];
    let (p50, p90, p99, max) = (
        num(l, "p50_ms"),
        num(l, "p90_ms"),
        num(l, "p99_ms"),
        num(l, "max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{key}: {l}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_reports_throughput_latency_and_the_raw_jetstream_ratio() -> Result<()> {
    init_tracing();
    let v = bench(&["schedule", "--tasks", "300", "--workers", "5"]).await?;
    assert_eq!(v["bench"], "schedule");
    assert_eq!(v["tasks"], 300);
    assert_eq!(v["workers"], 5);
    assert_eq!(v["scheduler"], "spread");
    assert_eq!(v["sync"], "always");
    let (cube, raw) = (num(&v, "tasks_per_s"), num(&v, "raw_jetstream_msgs_per_s"));
    assert!(cube > 0.0 && raw > 0.0, "{v}");
    // A task is about 13 JetStream operations where a raw message is 2 (docs/BENCHMARKS.md):
    // Cube cannot place tasks as fast as JetStream stores bare messages. A ratio of 1 or
    // more means one of the two measurements is wrong.
    let ratio = num(&v, "ratio_to_raw");
    assert!(0.0 < ratio && ratio < 1.0, "{v}");
    assert!(num(&v, "message_bytes") > 100.0, "{v}");
    assert_latency(&v, "submit_to_scheduled");
    assert_latency(&v, "submit_to_running");
    // A task is scheduled before it runs.
    assert!(
        num(&v["submit_to_scheduled"], "p50_ms") <= num(&v["submit_to_running"], "p50_ms"),
        "{v}"
    );
    // What nats-server counted: every task's submission is stored in CUBE_EVENTS, and its
    // placement in CUBE_WORK, once each (a second would be a duplicate).
    let cost = &v["cost"];
    let by_stream = &cost["stored_per_task_by_stream"];
    assert_eq!(num(by_stream, "CUBE_EVENTS"), 1.0, "{v}");
    assert_eq!(num(by_stream, "CUBE_WORK"), 1.0, "{v}");
    // The submission is kept in its stream alone (no Event DB copy).
    assert!(by_stream.get("KV_cube-events").is_none(), "{v}");
    assert!(num(cost, "stored_per_task") >= 2.0, "{v}");
    assert!(
        num(cost, "msgs_in_per_task") >= num(cost, "stored_per_task"),
        "{v}"
    );
    assert!(num(cost, "manager_cpu_ms_per_task") > 0.0, "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_at_an_offered_rate_with_the_queue_scheduler() -> Result<()> {
    init_tracing();
    let v = bench(&[
        "schedule",
        "--tasks",
        "100",
        "--workers",
        "3",
        "--scheduler",
        "queue",
        "--rate",
        "200",
        "--sync",
        "default",
        "--no-raw",
    ])
    .await?;
    assert_eq!(v["scheduler"], "queue");
    assert_eq!(v["sync"], "default");
    assert_eq!(v["offered_rate"], 200.0);
    // 100 submissions paced at 200/s take about half a second, whatever the machine.
    assert!(num(&v, "submitted_per_s") <= 200.0 * 1.05, "{v}");
    assert!(v["raw_jetstream_msgs_per_s"].is_null(), "{v}");
    assert_latency(&v, "submit_to_running");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compares_cube_with_the_raw_docker_api_and_cleans_up() -> Result<()> {
    init_tracing();
    ensure_image()?;
    let v = bench(&[
        "docker",
        "--tasks",
        "4",
        "--concurrency",
        "2",
        "--samples",
        "2",
    ])
    .await?;
    assert_eq!(v["bench"], "docker");
    assert_eq!(v["tasks"], 4);
    let (cube, raw) = (num(&v, "cube_per_s"), num(&v, "raw_per_s"));
    assert!(
        cube > 0.0 && raw > 0.0 && num(&v, "ratio_to_raw") > 0.0,
        "{v}"
    );
    assert_latency(&v, "raw_latency");
    assert_latency(&v, "cube_submit_to_running");
    assert_latency(&v, "raw_sequential");
    assert_latency(&v, "cube_sequential");
    assert!(num(&v, "added_p50_ms").is_finite(), "{v}");
    // Every container it made, raw or through Cube, is gone.
    let docker = bollard::Docker::connect_with_local_defaults()?;
    let filters = HashMap::from([("label", vec!["cube.bench".to_string()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let left = docker.list_containers(Some(options)).await?;
    assert!(left.is_empty(), "containers left behind: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reports_the_managers_cost_and_command_times() -> Result<()> {
    init_tracing();
    let v = bench(&[
        "nodes",
        "--workers",
        "20",
        "--interval",
        "500ms",
        "--duration",
        "2s",
        "--tasks",
        "200",
        "--repeat",
        "2",
    ])
    .await?;
    assert_eq!(v["bench"], "nodes");
    assert_eq!(v["workers"], 20);
    assert_eq!(v["tasks"], 200);
    // 20 workers every 500 ms: about 40 heartbeats a second.
    let beats = num(&v, "heartbeats_per_s");
    assert!((20.0..=60.0).contains(&beats), "{v}");
    for key in ["manager_cpu_share", "manager_cpu_share_with_tasks"] {
        let share = num(&v, key);
        assert!((0.0..=2.0).contains(&share), "{key}: {v}");
    }
    for key in [
        "manager_rss_mb",
        "manager_peak_rss_mb",
        "manager_rss_mb_with_tasks",
        "status_ms",
        "nodes_ms",
    ] {
        assert!(num(&v, key) > 0.0, "{key}: {v}");
    }
    assert!(
        num(&v, "manager_peak_rss_mb") >= num(&v, "manager_rss_mb") * 0.99,
        "{v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_reports_takeover_and_first_placement_and_r1_beside_r3() -> Result<()> {
    init_tracing();
    let v = bench(&[
        "failover",
        "--lease-ttl",
        "1s,2s",
        "--rounds",
        "2",
        "--workers",
        "3",
        "--tasks",
        "200",
        "--sync",
        "default",
    ])
    .await?;
    assert_eq!(v["bench"], "failover");
    assert_eq!(
        (v["servers"].clone(), v["replicas"].clone()),
        (3.into(), 3.into())
    );
    let failover = v["failover"].as_array().context("failover figures")?;
    assert_eq!(failover.len(), 2, "{v}");
    for (f, ttl_ms) in failover.iter().zip([1000.0, 2000.0]) {
        assert_eq!(num(f, "lease_ttl_ms"), ttl_ms, "{f}");
        let rounds = f["rounds"].as_array().context("rounds")?;
        assert_eq!(rounds.len(), 2, "{f}");
        let mut pids = Vec::new();
        for r in rounds {
            let (takeover, placed) = (num(r, "takeover_ms"), num(r, "first_placement_ms"));
            // Not sooner than the lease allows (renewed every third of the TTL), and the
            // first placement comes after the takeover.
            assert!(takeover >= ttl_ms / 2.0, "{r}");
            assert!(placed >= takeover, "{r}");
            assert!(
                num(r, "epoch_after") > num(r, "epoch_before"),
                "a takeover raises the epoch: {r}"
            );
            pids.push(num(r, "killed_pid"));
        }
        // The second round kills the manager that took over in the first.
        assert_ne!(pids[0], pids[1], "{f}");
        for key in ["takeover", "first_placement"] {
            let s = &f[key];
            let (min, median, max) = (num(s, "min_ms"), num(s, "median_ms"), num(s, "max_ms"));
            assert!(0.0 < min && min <= median && median <= max, "{key}: {s}");
        }
    }
    let throughput = v["throughput"].as_array().context("throughput figures")?;
    let configs: Vec<(f64, f64)> = throughput
        .iter()
        .map(|t| (num(t, "servers"), num(t, "replicas")))
        .collect();
    assert_eq!(configs, [(1.0, 1.0), (3.0, 3.0)], "{v}");
    for t in throughput {
        assert_eq!(t["tasks"], 200);
        assert!(num(t, "tasks_per_s") > 0.0, "{t}");
        assert!(num(t, "raw_jetstream_msgs_per_s") > 0.0, "{t}");
        let ratio = num(t, "ratio_to_raw");
        assert!(0.0 < ratio && ratio < 1.0, "{t}");
        assert_latency(t, "submit_to_running");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reports_deploy_and_rolling_update_beside_plain_tasks() -> Result<()> {
    init_tracing();
    let v = bench(&[
        "services",
        "--copies",
        "60",
        "--workers",
        "5",
        "--max-parallel",
        "10",
        "--sync",
        "default",
    ])
    .await?;
    assert_eq!(v["bench"], "services");
    assert_eq!(v["copies"], 60);
    for key in [
        "tasks_to_running_s",
        "deploy_to_running_s",
        "rolling_update_s",
    ] {
        assert!(num(&v, key) > 0.0, "{key}: {v}");
    }
    // A rollout never runs more than count + max_parallel copies.
    let most = num(&v, "most_copies_during_update");
    assert!((60.0..=70.0).contains(&most), "{v}");
    Ok(())
}

/// `cube bench place` times every algorithm's placement rules alone (no NATS), each phase
/// with how many operations it timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_times_each_algorithm_and_phase() -> Result<()> {
    init_tracing();
    let v = bench(&[
        "place",
        "--nodes",
        "30",
        "--pending",
        "50",
        "--placements",
        "60",
        "--rounds",
        "4",
    ])
    .await?;
    assert_eq!(v["bench"], "place");
    assert_eq!(v["nodes"], 30);
    let algorithms = v["per_algorithm"].as_object().context("per_algorithm")?;
    let mut names: Vec<&str> = algorithms.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["binpack", "epvm", "queue", "round-robin", "spread"],
        "{v}"
    );
    for (name, phases) in algorithms {
        for (phase, timed) in [
            ("join", 30.0),
            ("place", 60.0),
            ("wait", 50.0),
            ("tick", 4.0),
        ] {
            let p = &phases[phase];
            assert_eq!(num(p, "count"), timed, "{name} {phase}: {v}");
            assert!(num(p, "mean_us") > 0.0, "{name} {phase}: {v}");
        }
        // The shared queue frees nothing a waiting task could take: no freeing is timed.
        let freed = num(&phases["free"], "count");
        if name == "queue" {
            assert_eq!(freed, 0.0, "{v}");
        } else {
            assert_eq!(freed, 4.0, "{name}: {v}");
        }
    }
    Ok(())
}
