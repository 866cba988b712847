//! The shipped `docker-compose.yml`, for real: `scripts/compose-images` builds the images it
//! names from this build's `cube` and the host's nats-server (nothing can be pulled here), then
//! `docker-compose` (or `docker compose`) starts NATS, the manager and two replicas of the one
//! `worker` service, under a project name, host port and passwords of this test's own. The
//! host's `cube`, with the client's credentials, sees both workers under distinct names and
//! runs a task; a worker container that is stopped stops its task, and comes back under the
//! same name when started; `down` leaves no task container behind. Everything the test made (the project's containers, network and volume, the images,
//! the task's containers) is removed when it ends, however it ends.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cube_shared::subjects::{API_NODES_LIST, API_TASKS_GET};
use cube_shared::{Node, NodeState, State, Task, TaskQuery, LABEL_TASK_ID, LABEL_WORKER};
use cube_tests::{
    api, cube_bin, cube_with_env, eventually, free_port, remove_containers, root, IMAGE,
};
use uuid::Uuid;

/// Twice the usual: compose starts two debug-build processes in containers on a shared 2-core
/// machine.
const WITHIN: Duration = cube_tests::WITHIN.saturating_mul(2);

/// The compose command: v1's `docker-compose` where it is installed, else v2's plugin.
fn compose_program() -> Result<Vec<String>> {
    let works = |program: &[&str]| {
        Command::new(program[0])
            .args(&program[1..])
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for program in [&["docker-compose"][..], &["docker", "compose"]] {
        if works(program) {
            return Ok(program.iter().map(|s| s.to_string()).collect());
        }
    }
    bail!("neither `docker-compose` nor `docker compose` works: apt-get install docker-compose")
}

/// Runs a command; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

/// One compose project of this test. Dropping it takes everything down.
struct Stack {
    program: Vec<String>,
    project: String,
    file: PathBuf,
    /// The variables the compose file reads, also written to `env_file` so that a developer's
    /// `.env` beside the compose file is not read instead.
    env: Vec<(String, String)>,
    env_file: PathBuf,
    _dir: tempfile::TempDir,
    images: Vec<String>,
    /// The workers' names, to find the task containers they started on the host's engine.
    workers: Mutex<Vec<String>>,
    client_password: String,
    port: u16,
    /// The host ports of the manager's HTTP API and metrics.
    http_port: u16,
    metrics_port: u16,
}

impl Stack {
    fn new() -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        let id = Uuid::new_v4().simple().to_string()[..10].to_string();
        // Letters and digits only: v1 strips anything else from project names.
        let project = format!("cubetest{id}");
        let nats_image = format!("cube-nats-test:{id}");
        let cube_image = format!("cube-test:{id}");
        let port = free_port()?;
        let http_port = free_port()?;
        let metrics_port = free_port()?;
        let password = cube_bus::auth::random_password;
        let client_password = password();
        let env: Vec<(String, String)> = [
            ("CUBE_MANAGER_PASSWORD", password()),
            ("CUBE_CLIENT_PASSWORD", client_password.clone()),
            ("CUBE_WORKERS_PASSWORD", password()),
            ("CUBE_NATS_IMAGE", nats_image.clone()),
            ("CUBE_IMAGE", cube_image.clone()),
            ("CUBE_NATS_PORT", port.to_string()),
            ("CUBE_HTTP_PORT", http_port.to_string()),
            ("CUBE_METRICS_PORT", metrics_port.to_string()),
            // A stopped worker keeps its tasks for a minute, however slow this machine is.
            ("CUBE_NODE_GRACE", "60s".to_string()),
            ("RUST_LOG", "info,async_nats=warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let env_file = dir.path().join("env");
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&env_file, text)?;
        let stack = Stack {
            program: compose_program()?,
            project,
            file: root().join("docker-compose.yml"),
            env,
            env_file,
            _dir: dir,
            images: vec![nats_image.clone(), cube_image.clone()],
            workers: Mutex::new(Vec::new()),
            client_password,
            port,
            http_port,
            metrics_port,
        };
        run(Command::new(root().join("scripts/compose-images"))
            .arg("--cube")
            .arg(cube_bin())
            .args([&nats_image, &cube_image]))
        .context("building the compose images")?;
        Ok(stack)
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("--env-file")
            .arg(&self.env_file)
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The containers of a service, by id.
    fn containers(&self, service: &str) -> Result<Vec<String>> {
        let out = run(&mut self.compose(&["ps", "-q", service]))?;
        Ok(out.split_whitespace().map(String::from).collect())
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn client_env(&self) -> [(&str, &str); 2] {
        [
            ("CUBE_NATS_USER", "client"),
            ("CUBE_NATS_PASSWORD", self.client_password.as_str()),
        ]
    }

    async fn client(&self) -> Result<async_nats::Client> {
        let options = cube_bus::Credentials::user("client", &self.client_password)
            .options()
            .await?;
        Ok(options.connect(self.url()).await?)
    }

    /// What compose and the services said, for a failure message.
    fn logs(&self) -> String {
        let out = self
            .compose(&["logs", "--no-color", "--tail", "40"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut workers = std::mem::take(&mut *self.workers.lock().unwrap());
        for id in self.containers("worker").unwrap_or_default() {
            workers.extend(hostname(&id).ok());
        }
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for w in workers {
            remove_containers(&format!("{LABEL_WORKER}={w}"));
        }
        for image in &self.images {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A container's host name, which is what a worker without `--name` calls itself.
fn hostname(container: &str) -> Result<String> {
    Ok(
        docker(&["inspect", "-f", "{{.Config.Hostname}}", container])?
            .trim()
            .to_string(),
    )
}

async fn nodes(client: &async_nats::Client) -> Result<Vec<Node>> {
    api(client, API_NODES_LIST, &()).await
}

async fn node(client: &async_nats::Client, name: &str) -> Result<Node> {
    nodes(client)
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .with_context(|| format!("no node {name}"))
}

async fn task(client: &async_nats::Client, id: &str) -> Result<Task> {
    api(client, API_TASKS_GET, &TaskQuery { id: id.to_string() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_runs_a_scaled_cluster() -> Result<()> {
    cube_tests::ensure_image()?;
    let stack = Stack::new()?;
    let result = scenario(&stack).await;
    if result.is_err() {
        eprintln!("compose logs:\n{}", stack.logs());
    }
    result
}

async fn scenario(stack: &Stack) -> Result<()> {
    run(&mut stack.compose(&["up", "-d", "--scale", "worker=2"]))?;

    // Two replicas of the one service, each named after its container.
    let ids = stack.containers("worker")?;
    ensure!(ids.len() == 2, "{} worker containers: {ids:?}", ids.len());
    let names = ids
        .iter()
        .map(|id| hostname(id))
        .collect::<Result<Vec<_>>>()?;
    stack.workers.lock().unwrap().extend(names.iter().cloned());
    ensure!(names[0] != names[1], "both workers are named {}", names[0]);
    for name in &names {
        cube_shared::validate::validate_worker_name(name)?;
    }

    // Only the workers need root (for the Docker socket).
    let manager = stack.containers("manager")?;
    ensure!(manager.len() == 1, "{} managers", manager.len());
    let user = docker(&["inspect", "-f", "{{.Config.User}}", &manager[0]])?;
    ensure!(user.trim() == "cube", "the manager runs as {user:?}");

    // `cube nodes` on the host, through the published port, as the client.
    let url = stack.url();
    eventually(WITHIN, "cube nodes lists both workers, ready", || async {
        let out = cube_with_env(&url, &stack.client_env(), &["nodes"]).await?;
        for name in &names {
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .with_context(|| format!("{name} not in:\n{out}"))?;
            ensure!(line.contains("ready"), "{name} is not ready:\n{out}");
        }
        Ok(())
    })
    .await?;
    let client = stack.client().await?;
    ensure!(nodes(&client).await?.len() == 2, "more nodes than workers");

    // The manager's dashboard, HTTP API and metrics, on the host's loopback; the HTTP API
    // with a token the client role made (`cube token create`).
    let token = cube_tests::web::create_token(
        &cube_client::Cube::new(client.clone()),
        cube_shared::token::TokenRole::Read,
    )
    .await?;
    let http = cube_tests::web::client_with(&token)?;
    let base = format!("http://127.0.0.1:{}", stack.http_port);
    let page = http
        .get(format!("{base}/"))
        .send()
        .await?
        .error_for_status()?;
    ensure!(
        page.text().await?.contains("Nodes"),
        "the dashboard did not render"
    );
    let listed: Vec<serde_json::Value> = http
        .get(format!("{base}/api/nodes"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        listed.len() == 2,
        "GET /api/nodes lists {} nodes",
        listed.len()
    );
    let metrics_url = format!("http://127.0.0.1:{}/metrics", stack.metrics_port);
    eventually(
        WITHIN,
        "the manager's metrics count 2 ready nodes",
        || async {
            let text = http.get(&metrics_url).send().await?.text().await?;
            ensure!(
                text.lines().any(|l| l == r#"cube_nodes{state="ready"} 2"#),
                "{text}"
            );
            Ok(())
        },
    )
    .await?;

    // A task submitted with the host's `cube` runs in a container on the host's engine,
    // started by one of the workers.
    let long_running = cube_tests::long_running();
    let mut args = vec!["submit", "--image", IMAGE, "--"];
    args.extend(long_running.iter().map(String::as_str));
    let id = submit(stack, &args).await?;
    let running = eventually(WITHIN, "the task runs", || async {
        let out = cube_with_env(&url, &stack.client_env(), &["status", &id]).await?;
        ensure!(out.split_whitespace().any(|w| w == "running"), "{out}");
        task(&client, &id).await
    })
    .await?;
    let worker = running
        .worker
        .clone()
        .context("a running task has a worker")?;
    ensure!(names.contains(&worker), "{worker} is not one of {names:?}");
    let container = running.container_id.clone().context("no container id")?;
    let labels = docker(&[
        "inspect",
        "-f",
        &format!("{{{{.State.Running}}}} {{{{index .Config.Labels \"{LABEL_WORKER}\"}}}} {{{{index .Config.Labels \"{LABEL_TASK_ID}\"}}}}"),
        &container,
    ])?;
    ensure!(
        labels.trim() == format!("true {worker} {id}"),
        "task container: {labels}"
    );

    // The worker's container, stopped: by default (CUBE_STOP_TASKS_ON_EXIT) it stops its
    // task on the way out and reports why, leaving no container behind.
    let replica = &ids[names.iter().position(|n| *n == worker).unwrap()];
    docker(&["stop", "-t", "60", replica])?;
    let stopped = eventually(
        WITHIN,
        "the stopping worker reports its task failed",
        || async {
            let t = task(&client, &id).await?;
            ensure!(t.state == State::Failed, "{}", t.state);
            Ok(t)
        },
    )
    .await?;
    let why = stopped.error.unwrap_or_default();
    ensure!(why.contains("shut down"), "the task failed with {why:?}");
    ensure!(
        task_containers(&id)?.is_empty(),
        "the stopped worker left its task's container"
    );

    // Started again, it is the same worker: same name, no third node.
    docker(&["start", replica])?;
    ensure!(
        hostname(replica)? == worker,
        "the restarted worker has a new name"
    );
    eventually(WITHIN, "the restarted worker is ready again", || async {
        let n = node(&client, &worker).await?;
        ensure!(n.state == NodeState::Ready && !n.leaving, "{:?}", n.state);
        Ok(())
    })
    .await?;
    ensure!(
        nodes(&client).await?.len() == 2,
        "the restart made a third node"
    );

    // `down` takes the cluster's task containers with it.
    let second = submit(stack, &args).await?;
    eventually(WITHIN, "a second task runs", || async {
        let t = task(&client, &second).await?;
        ensure!(t.state == State::Running, "{}", t.state);
        Ok(())
    })
    .await?;
    run(&mut stack.compose(&["down", "-v", "-t", "60"]))?;
    for name in &names {
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_WORKER}={name}"),
        ])?;
        ensure!(
            left.trim().is_empty(),
            "down left {name}'s containers: {left}"
        );
    }
    let project = format!("label=com.docker.compose.project={}", stack.project);
    let left = docker(&["ps", "-aq", "--filter", &project])?;
    ensure!(
        left.trim().is_empty(),
        "down left the stack's containers: {left}"
    );
    Ok(())
}

/// Submits with the host's `cube`; the task's id.
async fn submit(stack: &Stack, args: &[&str]) -> Result<String> {
    let out = cube_with_env(&stack.url(), &stack.client_env(), args).await?;
    let id = out.trim().to_string();
    Uuid::parse_str(&id).with_context(|| format!("cube submit printed {id:?}"))?;
    Ok(id)
}

/// The containers of a task, running or not.
fn task_containers(id: &str) -> Result<Vec<String>> {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={LABEL_TASK_ID}={id}"),
    ])?;
    Ok(out.split_whitespace().map(String::from).collect())
}
