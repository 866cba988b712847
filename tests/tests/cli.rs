//! The CLI's manners and the contract as a document: `submit --wait`, `-o json`, errors that
//! name the fix, completions, `cube schema`, and a client in another language (Python).

use anyhow::{ensure, Context, Result};
use cube_shared::State;
use cube_tests::{cube, cube_bin, cube_output, root, Cluster, NatsServer, IMAGE, WITHIN};
use serde_json::Value;
use uuid::Uuid;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Its stderr, checking that it failed.
async fn failure(url: &str, args: &[&str]) -> Result<String> {
    let out = cube_output(url, args).await?;
    ensure!(!out.ok, "cube {args:?} succeeded");
    Ok(out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem_and_the_fix() -> Result<()> {
    // Nobody listens on the port.
    let url = format!("nats://127.0.0.1:{}", cube_tests::free_port()?);
    let err = failure(&url, &["status", "--nats-connect-timeout", "1s"]).await?;
    assert!(
        err.contains(&format!("cannot reach NATS at {url}"))
            && err.contains("is `cube dev` or nats-server running?"),
        "{err}"
    );

    // Something listens but never speaks NATS: the connection times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("nats://{}", silent.local_addr()?);
    let err = failure(&url, &["nodes", "--nats-connect-timeout", "1s"]).await?;
    assert!(
        err.contains(&format!("cannot reach NATS at {url}"))
            && err.contains("is `cube dev` or nats-server running?"),
        "{err}"
    );
    drop(silent);

    // NATS without a manager.
    let nats = NatsServer::start().await?;
    for args in [&["nodes"][..], &["status"], &["status", "web"]] {
        let err = failure(&nats.url(), args).await?;
        assert!(err.contains("is `cube manager`"), "{args:?}: {err}");
    }
    let err = failure(&nats.url(), &["events"]).await?;
    assert!(err.contains("has `cube manager` ever run"), "{err}");

    // NATS that wants credentials.
    let guarded =
        NatsServer::start_with("authorization { user: someone, password: secret }").await?;
    let err = failure(&guarded.url(), &["nodes"]).await?;
    for hint in [
        "refused",
        "--nats-user",
        "CUBE_NATS_PASSWORD",
        "--nats-creds",
    ] {
        assert!(err.contains(hint), "{hint}: {err}");
    }

    // A manager that does not know the task.
    let cluster = Cluster::start(0).await?;
    let url = cluster.nats.url();
    cube_tests::eventually(WITHIN, "the manager answers", || cube(&url, &["status"])).await?;
    let missing = Uuid::new_v4().to_string();
    for args in [
        &["status", missing.as_str()][..],
        &["stop", "no-such-task"],
        &["status", "no-such-task", "-o", "json"],
    ] {
        let err = failure(&url, args).await?;
        assert!(
            err.contains("looking up task")
                && err.contains("`cube status` lists")
                && err.contains(": no task"),
            "{args:?}: {err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_and_json_listings() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let url = cluster.nats.url();
    let worker = cluster.worker_names[0].clone();

    // Piped: only the id on stdout, nothing on stderr, success once it runs.
    let long = cube_tests::long_running();
    let mut args = vec![
        "submit", "--image", IMAGE, "--name", "waited", "--wait", "--",
    ];
    args.extend(long.iter().map(String::as_str));
    let out = cube_output(&url, &args).await?;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stderr, "", "quiet when not a terminal");
    let id: Uuid = out.stdout.trim().parse()?;
    assert_eq!(cluster.task(id).await?.state, State::Running);

    // One task, as JSON.
    let task: Value =
        serde_json::from_str(&cube(&url, &["status", "waited", "-o", "json"]).await?)?;
    assert_eq!(task["id"], id.to_string());
    assert_eq!(task["state"], "running");
    assert_eq!(task["worker"], worker.as_str());

    // The list, as one JSON document.
    let list: Value = serde_json::from_str(&cube(&url, &["status", "--output", "json"]).await?)?;
    assert_eq!(list["total"], 1);
    assert_eq!(list["tasks"][0]["id"], id.to_string());
    let table = cube(&url, &["status", "-o", "table"]).await?;
    assert!(
        table.starts_with("ID") && table.contains("waited"),
        "{table}"
    );

    let nodes: Value = serde_json::from_str(&cube(&url, &["nodes", "-o", "json"]).await?)?;
    assert_eq!(nodes[0]["name"], worker.as_str());
    assert_eq!(nodes[0]["state"], "ready");

    let events: Value = serde_json::from_str(&cube(&url, &["events", "-o", "json"]).await?)?;
    let kinds: Vec<&str> = events
        .as_array()
        .context("events -o json is an array")?
        .iter()
        .filter(|e| e["task_id"] == id.to_string())
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["submitted", "scheduled", "running"]);

    let err = failure(&url, &["nodes", "-o", "yaml"]).await?;
    assert!(err.contains("yaml") && err.contains("json"), "{err}");

    // A command the container cannot run: the task fails, and --wait says why.
    let err = failure(
        &url,
        &[
            "submit",
            "--image",
            IMAGE,
            "--wait",
            "--",
            "/no/such/program",
        ],
    )
    .await?;
    assert!(
        err.contains("failed:") && err.contains("/no/such/program"),
        "{err}"
    );

    // A task no node can hold: --wait gives up with the scheduler's reason.
    let err = failure(
        &url,
        &[
            "submit",
            "--image",
            IMAGE,
            "--memory",
            "100000g",
            "--wait",
            "--wait-timeout",
            "3s",
        ],
    )
    .await?;
    assert!(
        err.contains("not running after") && err.contains("insufficient memory"),
        "{err}"
    );

    // On a terminal (a pseudo-terminal from script(1)), the stages show on stderr.
    let cmd = format!(
        "CUBE_NATS_URL={url} {} submit --image {IMAGE} --name shown --wait -- {}",
        cube_bin().display(),
        "sh -c 'trap \"exit 0\" TERM; sleep 300 & wait'"
    );
    let out = tokio::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .output()
        .await
        .context("running script(1), from util-linux")?;
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("running on {worker}")),
        "no progress on the terminal: {shown:?}"
    );
    for name in ["waited", "shown"] {
        cube(&url, &["stop", name]).await?;
    }

    // Drain and undrain answer with the node, as JSON too.
    let drained: Value =
        serde_json::from_str(&cube(&url, &["nodes", "drain", &worker, "-o", "json"]).await?)?;
    assert_eq!(drained["state"], "draining");
    let back: Value =
        serde_json::from_str(&cube(&url, &["nodes", "-o", "json", "undrain", &worker]).await?)?;
    assert_eq!(back["state"], "ready");
    Ok(())
}

#[tokio::test]
async fn completions_and_schemas() -> Result<()> {
    let url = "nats://127.0.0.1:1";
    let bash = cube(url, &["completions", "bash"]).await?;
    assert!(
        bash.contains("complete -F") && bash.contains("submit"),
        "{bash}"
    );
    assert!(cube(url, &["completions", "zsh"])
        .await?
        .starts_with("#compdef cube"));
    assert!(cube(url, &["completions", "fish"])
        .await?
        .contains("complete -c cube"));
    assert!(failure(url, &["completions", "tcsh"])
        .await?
        .contains("tcsh"));

    for name in ["task-event", "task"] {
        let printed = cube(url, &["schema", name]).await?;
        let shipped = std::fs::read_to_string(root().join(format!("docs/schema/{name}.json")))?;
        assert_eq!(printed, shipped, "docs/schema/{name}.json is out of date");
    }
    let all: Value = serde_json::from_str(&cube(url, &["schema", "all"]).await?)?;
    assert_eq!(all["task-event"]["title"], "TaskEvent");
    assert_eq!(all["task"]["title"], "Task");
    let err = failure(url, &["schema", "taskevent"]).await?;
    assert!(err.contains("task-event"), "{err}");
    Ok(())
}

/// Makes sure Python can import nats-py and jsonschema, installing them with pip if missing.
fn ensure_python_packages() -> Result<()> {
    for (package, module) in [("nats-py", "nats.js"), ("jsonschema", "jsonschema")] {
        let importable = || {
            std::process::Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if importable() {
            continue;
        }
        let pip = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", package])
            .output()
            .context("running python3 -m pip")?;
        ensure!(
            importable(),
            "the Python client test needs {package}, and `python3 -m pip install {package}` failed: {}\n\
             install it (scripts/setup does) and run the test again",
            text(&pip.stderr)
        );
    }
    Ok(())
}

async fn python(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("python3")
        .arg(root().join("tests/clients/submit.py"))
        .args(args)
        .env("CUBE_SCHEMA_DIR", root().join("docs/schema"))
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "submit.py {args:?}: {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// A TaskEvent written by a Python program (nats-py, JetStream publish), checked against the
/// shipped JSON Schema by Python's jsonschema, runs like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_submits_and_stops_a_task() -> Result<()> {
    ensure_python_packages()?;
    let cluster = Cluster::start(1).await?;
    let url = cluster.nats.url();
    let id = Uuid::new_v4();
    let ack: Value = serde_json::from_str(
        &python(&[
            &url,
            "submit",
            &id.to_string(),
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 300 & wait",
        ])
        .await?,
    )?;
    assert_eq!(ack["stream"], cube_shared::subjects::EVENTS_STREAM);

    let task = cluster.wait_state(id, State::Running, WITHIN).await?;
    assert_eq!(task.name, "from-python");
    assert_eq!(task.memory, 64 << 20);
    assert_eq!(
        task.worker.as_deref(),
        Some(cluster.worker_names[0].as_str())
    );
    let seen: Value = serde_json::from_str(&python(&[&url, "get", &id.to_string()]).await?)?;
    assert_eq!(seen["state"], "running");

    python(&[&url, "stop", &id.to_string()]).await?;
    cluster.wait_state(id, State::Completed, WITHIN).await?;
    let label = cube_shared::LABEL_TASK_ID;
    cube_tests::eventually(WITHIN, "the container is gone or stopped", || async {
        let left = cluster.containers(label, &id.to_string()).await?;
        ensure!(
            left.iter()
                .all(|c| c.state != Some(bollard::models::ContainerSummaryStateEnum::RUNNING)),
            "{} still running",
            left.len()
        );
        Ok(())
    })
    .await?;
    Ok(())
}
