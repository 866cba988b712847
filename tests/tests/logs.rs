//! Container output through the real parts: Docker → worker → `tasks.logs.<id>` (stream
//! `CUBE_LOGS`) → `cube logs`. The manager and the worker run as `cube` processes, so the
//! worker can be killed and started again while a task writes.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cube_shared::subjects::{logs_for, LOGS_STREAM, LOG_STREAM_HEADER};
use cube_shared::State;
use cube_tests::procs::ProcCluster;
use cube_tests::{cube_bin, cube_output, eventually, task, CubeOutput, WITHIN};
use cube_worker::runtime::Runtime;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// `cube logs -f ID` running in the background; what it printed so far is readable any time.
struct Follow {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// The tasks reading its pipes: they end once it has ended and they have read all.
    readers: Vec<JoinHandle<()>>,
}

impl Follow {
    fn start(url: &str, id: Uuid) -> Result<Follow> {
        let mut child = tokio::process::Command::new(cube_bin())
            .args(["logs", "-f", &id.to_string()])
            .env("CUBE_NATS_URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (stdout, out_reader) = collect(child.stdout.take().context("stdout")?);
        let (stderr, err_reader) = collect(child.stderr.take().context("stderr")?);
        Ok(Follow {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn wait_for(&self, text: &str) -> Result<()> {
        eventually(
            WITHIN,
            &format!("`cube logs -f` prints {text:?}"),
            || async {
                let (out, err) = (self.stdout(), self.stderr());
                ensure!(
                    out.contains(text) || err.contains(text),
                    "so far: {out:?} / {err:?}"
                );
                Ok(())
            },
        )
        .await
    }

    /// Sends SIGINT (Ctrl-C) and waits for `cube logs -f` to end.
    async fn interrupt(&mut self) -> Result<()> {
        let pid = self.child.id().context("already ended")?;
        let sent = tokio::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await?;
        ensure!(sent.success(), "kill -INT {pid}: {sent}");
        self.ended("it was interrupted").await
    }

    /// Waits for `cube logs -f` to end by itself after `why`.
    async fn ended(&mut self, why: &str) -> Result<()> {
        let status = tokio::time::timeout(WITHIN, self.child.wait())
            .await
            .with_context(|| format!("`cube logs -f` did not end after {why}"))??;
        // Everything it wrote is read once the readers reach the ends of the pipes.
        for reader in self.readers.drain(..) {
            tokio::time::timeout(WITHIN, reader)
                .await
                .context("`cube logs -f` ended, but its output was not read to the end")??;
        }
        ensure!(
            status.success(),
            "`cube logs -f` failed: {status}: {}",
            self.stderr()
        );
        Ok(())
    }
}

/// What `pipe` delivers, gathered as it comes by the returned task.
fn collect(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

/// The lines of `text` that start with `prefix`.
fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_shows_stdout_and_stderr_and_follow_sees_what_comes_later() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = shows_and_follows(&mut c).await;
    c.explain(result)
}

async fn shows_and_follows(c: &mut ProcCluster) -> Result<()> {
    let url = c.nats.url();
    // Some output at once, more once `later` exists (the test makes it after it has seen the
    // first lines), then the task ends.
    let id = c
        .submit(task(&[
            "sh",
            "-c",
            "echo out-1; echo err-1 >&2; \
             while [ ! -e /later ]; do sleep 0.1; done; \
             echo out-2; echo err-2 >&2; sleep 0.5",
        ]))
        .await?;
    c.wait_state(id, State::Running, WITHIN).await?;

    // What is kept so far: stdout to stdout, stderr to stderr.
    let shown = eventually(WITHIN, "`cube logs` shows the first lines", || async {
        let out = cube_output(&url, &["logs", &id.to_string()]).await?;
        ensure!(out.ok, "cube logs failed: {}", out.stderr);
        ensure!(
            out.stdout.contains("out-1") && out.stderr.contains("err-1"),
            "{out:?} / {err:?}",
            out = out.stdout,
            err = out.stderr
        );
        Ok(out)
    })
    .await?;
    assert_eq!(shown.stdout, "out-1\n");
    assert_eq!(lines_with(&shown.stderr, "err-"), vec!["err-1"]);

    let mut follow = Follow::start(&url, id)?;
    follow.wait_for("out-1").await?;
    follow.wait_for("err-1").await?;
    // Ctrl-C ends a follow of a task that still runs, quietly.
    let mut interrupted = Follow::start(&url, id)?;
    interrupted.wait_for("out-1").await?;
    interrupted.interrupt().await?;
    assert_eq!(interrupted.stdout(), "out-1\n");
    // Now the task writes more: `-f` sees it, then ends with the task.
    let container = cube_shared::container_name(id, 1);
    let made = tokio::process::Command::new("docker")
        .args(["exec", &container, "touch", "/later"])
        .status()
        .await?;
    ensure!(made.success(), "docker exec touch failed: {made}");
    follow.wait_for("out-2").await?;
    follow.ended("the task ended").await?;
    assert_eq!(follow.stdout(), "out-1\nout-2\n");
    assert_eq!(lines_with(&follow.stderr(), "err-"), vec!["err-1", "err-2"]);
    let done = c.task(id).await?;
    assert_eq!(done.state, State::Completed);

    // Once it ended, `cube logs` still prints all of it, and `-f` ends at once.
    let all = cube_output(&url, &["logs", &id.to_string()]).await?;
    ensure!(all.ok, "{}", all.stderr);
    assert_eq!(all.stdout, "out-1\nout-2\n");
    let ended = cube_output(&url, &["logs", "--follow", &id.to_string()]).await?;
    ensure!(ended.ok, "{}", ended.stderr);
    assert_eq!(ended.stdout, "out-1\nout-2\n");

    // Every message carries the header that says which output it is.
    let stream = c.js.get_stream(LOGS_STREAM).await?;
    let last = stream
        .get_last_raw_message_by_subject(&logs_for(id, "*"))
        .await?;
    let header = last
        .headers
        .get(LOG_STREAM_HEADER)
        .map(|v| v.as_str().to_string());
    ensure!(
        matches!(header.as_deref(), Some("stdout" | "stderr")),
        "{header:?}"
    );

    // A task nobody knows is an error that says so.
    let unknown = Uuid::new_v4().to_string();
    let out = cube_output(&url, &["logs", &unknown]).await?;
    ensure!(!out.ok, "cube logs of an unknown task succeeded");
    ensure!(
        out.stderr.contains(&unknown[..8]) || out.stderr.to_lowercase().contains("no task"),
        "the error does not name the task: {}",
        out.stderr
    );
    Ok(())
}

/// Submits a task that prints `line-1` to `line-<lines>`, five a second, and waits until it
/// runs.
async fn submit_counter(c: &mut ProcCluster, lines: usize) -> Result<Uuid> {
    let id = c
        .submit(task(&[
            "sh",
            "-c",
            &format!("for i in $(seq 1 {lines}); do echo line-$i; sleep 0.2; done"),
        ]))
        .await?;
    c.wait_state(id, State::Running, WITHIN).await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_carries_on_across_a_worker_restart() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = across_restart(&mut c).await;
    c.explain(result)
}

async fn across_restart(c: &mut ProcCluster) -> Result<()> {
    const LINES: usize = 60;
    let url = c.nats.url();
    let worker = c.worker_names()[0].clone();
    let id = submit_counter(c, LINES).await?;
    let mut follow = Follow::start(&url, id)?;
    follow.wait_for("line-5\n").await?;

    // The worker dies (SIGKILL) mid-task and comes back: it adopts the container and its
    // output resumes where it stopped.
    c.kill_worker(&worker).await?;
    let at_kill = lines_with(&follow.stdout(), "line-").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start_worker(&worker).await?;
    follow.ended("the task ended").await?;

    let got = follow.stdout();
    let lines = lines_with(&got, "line-");
    ensure!(
        lines.len() > at_kill + 5,
        "little came after the restart: {} lines, {at_kill} at the kill",
        lines.len()
    );
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line-{i}")).collect();
    assert_eq!(
        lines, expected,
        "every line exactly once, in order, across the restart"
    );
    assert_eq!(c.task(id).await?.state, State::Completed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_while_the_worker_was_down_is_published_when_it_returns() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = ended_while_down(&mut c).await;
    c.explain(result)
}

async fn ended_while_down(c: &mut ProcCluster) -> Result<()> {
    const LINES: usize = 30;
    let url = c.nats.url();
    let worker = c.worker_names()[0].clone();
    let id = submit_counter(c, LINES).await?;
    eventually(WITHIN, "`cube logs` shows line-3", || async {
        let out = cube_output(&url, &["logs", &id.to_string()]).await?;
        ensure!(out.stdout.contains("line-3\n"), "{:?}", out.stdout);
        Ok(())
    })
    .await?;

    // The worker dies (SIGKILL) while the task writes; the task prints its last lines and
    // exits while no worker watches it.
    c.kill_worker(&worker).await?;
    let docker = c.docker.clone();
    let running = |worker: String| {
        let docker = docker.clone();
        async move {
            let observed = docker.list(&worker).await?;
            Ok::<_, anyhow::Error>(observed.iter().any(|o| o.task_id == id && o.running))
        }
    };
    ensure!(
        running(worker.clone()).await?,
        "the task ended before the worker was killed: nothing to test"
    );
    let before = cube_output(&url, &["logs", &id.to_string()]).await?;
    let at_kill = lines_with(&before.stdout, "line-").len();
    ensure!(at_kill < LINES, "all output was published before the kill");
    eventually(WITHIN, "the container exits", || async {
        ensure!(!running(worker.clone()).await?, "still running");
        Ok(())
    })
    .await?;

    // The worker comes back, reports the exit and publishes the rest before it removes the
    // container.
    c.start_worker(&worker).await?;
    c.wait_state(id, State::Completed, WITHIN).await?;
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line-{i}")).collect();
    eventually(WITHIN, "`cube logs` shows every line", || async {
        let out = cube_output(&url, &["logs", &id.to_string()]).await?;
        ensure!(out.ok, "{}", out.stderr);
        ensure!(
            lines_with(&out.stdout, "line-").len() >= LINES,
            "{} lines",
            lines_with(&out.stdout, "line-").len()
        );
        Ok(())
    })
    .await?;
    let out = cube_output(&url, &["logs", &id.to_string()]).await?;
    assert_eq!(
        lines_with(&out.stdout, "line-"),
        expected,
        "every line exactly once, in order ({at_kill} published before the kill)"
    );
    // Removed after its output is published, in the background of the worker's start.
    eventually(WITHIN, "the ended container is removed", || async {
        let left = c.docker.list(&worker).await?;
        ensure!(
            !left.iter().any(|o| o.task_id == id),
            "the ended container was not removed"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_task_writes_when_stopped_is_kept() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = written_at_stop(&mut c).await;
    c.explain(result)
}

/// How many lines a task of [`submit_term_writer`] writes when it gets SIGTERM.
const AT_TERM: usize = 5000;

/// Submits a task whose TERM handler writes `bye-1` to `bye-<AT_TERM>` (about 50 KB, so that
/// its output publisher is still reading when the container has exited), and waits until its
/// first output is published.
async fn submit_term_writer(c: &mut ProcCluster) -> Result<Uuid> {
    const LAST: usize = AT_TERM;
    let url = c.nats.url();
    let id = c
        .submit(task(&[
            "sh",
            "-c",
            &format!(
                "trap 'seq 1 {LAST} | sed s/^/bye-/; exit 0' TERM; \
                 echo started; while true; do sleep 0.1; done"
            ),
        ]))
        .await?;
    c.wait_state(id, State::Running, WITHIN).await?;
    eventually(WITHIN, "`cube logs` shows the task started", || async {
        let out = cube_output(&url, &["logs", &id.to_string()]).await?;
        ensure!(out.stdout.contains("started\n"), "{:?}", out.stdout);
        Ok(())
    })
    .await?;
    Ok(id)
}

/// `cube logs` shows all a task of [`submit_term_writer`] wrote at SIGTERM, once, in order.
async fn shows_all_written_at_term(url: &str, id: Uuid) -> Result<()> {
    let out = cube_output(url, &["logs", &id.to_string()]).await?;
    ensure!(out.ok, "{}", out.stderr);
    let expected: Vec<String> = (1..=AT_TERM).map(|i| format!("bye-{i}")).collect();
    assert_eq!(
        lines_with(&out.stdout, "bye-"),
        expected,
        "all the TERM handler wrote, once, in order, when the end is reported"
    );
    Ok(())
}

async fn written_at_stop(c: &mut ProcCluster) -> Result<()> {
    let url = c.nats.url();
    let id = submit_term_writer(c).await?;
    let out = cube_output(&url, &["stop", &id.to_string()]).await?;
    ensure!(out.ok, "cube stop: {}", out.stderr);
    c.wait_state(id, State::Completed, WITHIN).await?;
    shows_all_written_at_term(&url, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_its_tasks_on_exit_publishes_their_last_output() -> Result<()> {
    let mut c = ProcCluster::new().await?;
    c.start_manager().await?;
    c.worker_args = vec!["--stop-tasks-on-exit".into()];
    c.add_worker().await?;
    let result = written_at_worker_exit(&mut c).await;
    c.explain(result)
}

async fn written_at_worker_exit(c: &mut ProcCluster) -> Result<()> {
    let url = c.nats.url();
    let worker = c.worker_names()[0].clone();
    let id = submit_term_writer(c).await?;
    let status = c.term_worker(&worker).await?;
    ensure!(status.success(), "the worker ended with {status}");
    c.wait_state(id, State::Failed, WITHIN).await?;
    shows_all_written_at_term(&url, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_output_is_kept_per_task() -> Result<()> {
    let mut c = ProcCluster::new().await?;
    // 16 KiB per task: four chunks of at most 4 KiB.
    c.manager_args = vec!["--logs-per-task".into(), "16k".into()];
    c.start_manager().await?;
    c.add_worker().await?;
    let result = capped(&mut c).await;
    c.explain(result)
}

async fn capped(c: &mut ProcCluster) -> Result<()> {
    const LAST: u64 = 20_000;
    let url = c.nats.url();
    // About 110 KB of output.
    let id = c.submit(task(&["seq", "1", &LAST.to_string()])).await?;
    c.wait_state(id, State::Completed, WITHIN).await?;
    let out = cube_output(&url, &["logs", &id.to_string()]).await?;
    ensure!(out.ok, "{}", out.stderr);
    let kept = out.stdout;
    ensure!(
        !kept.is_empty() && kept.len() <= 16 << 10,
        "{} bytes kept, the cap is 16 KiB",
        kept.len()
    );
    ensure!(
        kept.ends_with(&format!("\n{LAST}\n")),
        "the newest output is kept; it ends: {:?}",
        &kept[kept.len().saturating_sub(60)..]
    );
    // The first line may start mid-number (a chunk boundary); the rest run on to the end.
    let numbers: Vec<u64> = kept
        .lines()
        .skip(1)
        .map(|l| l.parse().with_context(|| format!("line {l:?}")))
        .collect::<Result<_>>()?;
    let first = numbers[0];
    ensure!(first > 1, "the oldest output was dropped");
    let expected: Vec<u64> = (first..=LAST).collect();
    if numbers != expected {
        bail!("the kept output is not the contiguous newest part: starts at {first}");
    }
    let mut stream = c.js.get_stream(LOGS_STREAM).await?;
    let info = stream.info().await?;
    ensure!(
        info.config.max_messages_per_subject == 4,
        "per-task cap {}",
        info.config.max_messages_per_subject
    );
    Ok(())
}

/// Without the logs stream (deleted here; a manager from before Cube kept logs never made
/// it), tasks still run and end, and `cube logs` prints nothing rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_logs_stream_tasks_run_and_logs_are_empty() -> Result<()> {
    let mut c = ProcCluster::start(1).await?;
    let result = without_stream(&mut c).await;
    c.explain(result)
}

async fn without_stream(c: &mut ProcCluster) -> Result<()> {
    let url = c.nats.url();
    ensure!(c.js.delete_stream(LOGS_STREAM).await?.success);
    let id = c
        .submit(task(&["sh", "-c", "echo lost; sleep 0.5; exit 3"]))
        .await?;
    let failed = c.wait_state(id, State::Failed, WITHIN).await?;
    assert_eq!(failed.exit_code, Some(3));
    for args in [vec!["logs"], vec!["logs", "-f"]] {
        let mut args: Vec<&str> = args;
        let id = id.to_string();
        args.push(&id);
        let out = cube_output(&url, &args).await?;
        ensure!(out.ok, "cube {}: {}", args.join(" "), out.stderr);
        assert_eq!(out.stdout, "", "cube {}", args.join(" "));
    }
    Ok(())
}

/// Under Cube's generated NATS permissions, a worker may publish (and resume) its tasks'
/// output and a client may read it with `cube logs`, but not write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_work_under_the_nats_permissions() -> Result<()> {
    use cube_bus::auth::{random_password, server_config, Role, User};
    use cube_worker::runtime::{DockerRuntime, Runtime};

    cube_tests::init_tracing();
    cube_tests::ensure_image()?;
    let name = cube_tests::unique("wl");
    let _cleanup = RemoveContainers(name.clone());
    let user = |role: Role| User {
        role,
        password: random_password(),
    };
    let (manager, client, worker) = (
        user(Role::Manager),
        user(Role::Client),
        user(Role::Worker(name.clone())),
    );
    let nats = cube_tests::NatsServer::start_with(&server_config(&[
        manager.clone(),
        client.clone(),
        worker.clone(),
    ]))
    .await?;
    let connect = |u: &User| {
        let (nats, u) = (&nats, u.clone());
        async move { Ok::<_, anyhow::Error>(cube_tests::connect_as(nats, &u).await?.0) }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (conn, token) = (connect(&manager).await?, shutdown.child_token());
    tokio::spawn(async move {
        if let Err(e) = cube_manager::run(cube_manager::Config::default(), conn, token).await {
            panic!("manager failed: {e}");
        }
    });
    let runtime: Arc<dyn Runtime> = Arc::new(DockerRuntime::connect().await?);
    let (conn, token) = (connect(&worker).await?, shutdown.child_token());
    let mut cfg = cube_worker::Config::new(name.as_str());
    cfg.heartbeat_interval = Duration::from_millis(500);
    tokio::spawn(async move {
        if let Err(e) = cube_worker::run(cfg, conn, runtime, token).await {
            panic!("worker failed: {e}");
        }
    });

    let client_conn = connect(&client).await?;
    eventually(WITHIN, "the worker is ready", || async {
        let nodes: Vec<cube_shared::Node> =
            cube_tests::api(&client_conn, cube_shared::subjects::API_NODES_LIST, &()).await?;
        ensure!(nodes.len() == 1, "{} nodes", nodes.len());
        Ok(())
    })
    .await?;
    let event =
        cube_shared::TaskEvent::submit(task(&["sh", "-c", "echo auth-out; echo auth-err >&2"]));
    let id = event.task.id;
    async_nats::jetstream::new(client_conn.clone())
        .publish(
            cube_shared::subjects::EVENTS,
            cube_shared::wire::encode(&event),
        )
        .await?
        .await?;
    let out = eventually(
        WITHIN,
        "`cube logs` as the client shows the output",
        || async {
            let credentials = [
                ("CUBE_NATS_USER", client.name()),
                ("CUBE_NATS_PASSWORD", client.password.as_str()),
            ];
            let CubeOutput { ok, stdout, stderr } = cube_tests::cube_output_with_env(
                &nats.url(),
                &credentials,
                &["logs", &id.to_string()],
            )
            .await?;
            ensure!(ok, "cube logs failed: {stderr}");
            ensure!(
                stdout.contains("auth-out") && stderr.contains("auth-err"),
                "{stdout:?} / {stderr:?}"
            );
            Ok(stdout)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\nnats-server's log ends:\n{}", nats.log_tail(30)))?;
    assert_eq!(out, "auth-out\n");

    // A client may not write a task's output.
    let (conn, mut errors) = cube_tests::connect_as(&nats, &client).await?;
    let forged = logs_for(id, "some-worker");
    conn.publish(forged.clone(), "forged".into()).await?;
    cube_tests::denied(&mut errors, &forged).await?;
    Ok(())
}

struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        cube_tests::remove_containers(&format!("{}={}", cube_shared::LABEL_WORKER, self.0));
    }
}
