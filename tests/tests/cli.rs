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

    // The stored journal may lag what went live by up to 20 ms.
    cube_tests::eventually(WITHIN, "cube events shows the task running", || async {
        let events: Value = serde_json::from_str(&cube(&url, &["events", "-o", "json"]).await?)?;
        let kinds: Vec<&str> = events
            .as_array()
            .context("events -o json is an array")?
            .iter()
            .filter(|e| e["task_id"] == id.to_string())
            .map(|e| e["kind"].as_str().unwrap_or_default())
            .collect();
        ensure!(kinds == ["submitted", "scheduled", "running"], "{kinds:?}");
        Ok(())
    })
    .await?;

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

/// `cube manager` with a short lease, its log in `dir`.
fn manager_proc(url: &str, dir: &std::path::Path, label: &str) -> Result<cube_tests::procs::Proc> {
    let mut cmd = tokio::process::Command::new(cube_bin());
    cmd.args(["manager", "--lease-ttl", "2s"])
        .env("CUBE_NATS_URL", url)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cube_tests::procs::Proc::spawn(label, cmd, dir.join(format!("{label}.log")))
}

/// `cube managers -o json`, parsed.
async fn managers_json(url: &str) -> Result<Vec<Value>> {
    let out = cube(url, &["managers", "-o", "json"]).await?;
    let v: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    Ok(v.as_array().context("an array")?.clone())
}

/// `cube managers` lists the leader first (its epoch, pid, one term) and the standby; once
/// the leader is SIGKILLed the standby leads at a higher epoch, and `cube status` and `cube
/// nodes` are answered by it; with no manager left, `cube managers` says so and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_shows_the_leader_and_the_standby_and_the_takeover() -> Result<()> {
    cube_tests::init_tracing();
    let nats = NatsServer::start().await?;
    let url = nats.url();
    let logs = tempfile::tempdir()?;
    let mut first = manager_proc(&url, logs.path(), "manager-1")?;
    let result = async {
        cube_tests::eventually(WITHIN, "the first manager leads", || async {
            cube(&url, &["nodes"]).await.map(|_| ())
        })
        .await?;
        let mut second = manager_proc(&url, logs.path(), "manager-2")?;
        let outcome = async {
            let pair = cube_tests::eventually(WITHIN, "two managers answer", || async {
                let m = managers_json(&url).await?;
                ensure!(m.len() == 2, "{m:?}");
                Ok(m)
            })
            .await?;
            let (leader, standby) = (&pair[0], &pair[1]);
            assert_eq!(leader["role"], "leader", "{pair:?}");
            assert_eq!(leader["pid"], first.pid(), "{pair:?}");
            assert_eq!(leader["terms"], 1, "{pair:?}");
            let epoch = leader["epoch"].as_u64().context("the leader's epoch")?;
            assert_eq!(standby["role"], "standby", "{pair:?}");
            assert_eq!(standby["pid"], second.pid(), "{pair:?}");
            assert_eq!(standby["terms"], 0, "{pair:?}");
            assert_ne!(leader["id"], standby["id"]);

            // The table: a header, then the leader's row, then the standby's.
            let table = cube(&url, &["managers"]).await?;
            let lines: Vec<&str> = table.lines().collect();
            assert_eq!(lines.len(), 3, "{table}");
            for column in ["ROLE", "EPOCH", "ID", "HOST", "PID", "SINCE", "TERMS"] {
                assert!(lines[0].contains(column), "{table}");
            }
            assert!(lines[1].starts_with("leader"), "{table}");
            assert!(lines[1].contains(&first.pid().to_string()), "{table}");
            assert!(lines[1].contains(&epoch.to_string()), "{table}");
            assert!(lines[2].starts_with("standby"), "{table}");
            assert!(lines[2].contains(&second.pid().to_string()), "{table}");

            // The leader dies: the standby takes over, at a higher epoch.
            first.kill().await?;
            let now = cube_tests::eventually(WITHIN, "the standby leads", || async {
                let m = managers_json(&url).await?;
                ensure!(m.len() == 1 && m[0]["role"] == "leader", "{m:?}");
                Ok(m)
            })
            .await?;
            assert_eq!(now[0]["pid"], second.pid(), "{now:?}");
            let new_epoch = now[0]["epoch"].as_u64().context("the new epoch")?;
            assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
            // The client commands are answered by whichever manager leads.
            cube(&url, &["nodes"]).await?;
            cube(&url, &["status"]).await?;
            let takeover = cube(&url, &["events", "-o", "json"]).await?;
            assert!(
                takeover.contains(&format!("leads at epoch {new_epoch}")),
                "{takeover}"
            );

            second.kill().await?;
            let err = failure(&url, &["managers", "--wait", "300ms"]).await?;
            assert!(
                err.contains("no manager answered on cube.managers")
                    && err.contains("is `cube manager`"),
                "{err}"
            );
            Ok::<_, anyhow::Error>(())
        }
        .await;
        outcome.map_err(|e| e.context(format!("manager-2's log ends:\n{}", second.log_tail(30))))
    }
    .await;
    result.map_err(|e| e.context(format!("manager-1's log ends:\n{}", first.log_tail(30))))
}
