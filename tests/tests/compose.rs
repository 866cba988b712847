//! The shipped `docker-compose.yml`, for real, as a fresh clone runs it: in a copy of the
//! repository's files with no `.env`, exactly `docker-compose up -d` (or `docker compose up
//! -d`), the environment giving only this test's image names, host ports and project name.
//! `scripts/compose-images` builds the images it names from this build's `cube` and the
//! host's nats-server (nothing can be pulled here), so compose builds nothing. The `init`
//! service makes the NATS passwords; `cube` in the manager's container works with no flags;
//! the client's password, read out of it, lets the host's `cube` in. Scaled to two workers,
//! they have distinct names and run a task; a worker container that is stopped stops its
//! task, and comes back under the same name when started; the whole stack stopped and
//! started again keeps its passwords; `down -v` leaves no task container, and none of the
//! project's containers, volumes or networks. Everything the test made (those, and the
//! images) is removed when it ends, however it ends.

#[path = "compose/stack.rs"]
mod stack;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cube_shared::subjects::{API_NODES_LIST, API_TASKS_GET};
use cube_shared::{Node, NodeState, State, Task, TaskQuery, LABEL_TASK_ID, LABEL_WORKER};
use cube_tests::{api, cube_with_env, eventually, IMAGE};
use stack::{docker, hostname, run, Stack};
use uuid::Uuid;

/// Twice the usual: compose starts two debug-build processes in containers on a shared 2-core
/// machine.
const WITHIN: Duration = cube_tests::WITHIN.saturating_mul(2);

/// The host's `cube`, as the client, with the password read out of the manager's container.
struct Host<'a> {
    stack: &'a Stack,
    password: String,
}

impl Host<'_> {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.stack.nats_port)
    }

    async fn cube(&self, args: &[&str]) -> Result<String> {
        let env = [
            ("CUBE_NATS_USER", "client"),
            ("CUBE_NATS_PASSWORD", self.password.as_str()),
        ];
        cube_with_env(&self.url(), &env, args).await
    }

    async fn client(&self) -> Result<async_nats::Client> {
        let options = cube_bus::Credentials::user("client", &self.password)
            .options()
            .await?;
        Ok(options.connect(self.url()).await?)
    }
}

/// The client's password, as the README has the host read it.
fn client_password(stack: &Stack) -> Result<String> {
    let out =
        run(&mut stack.compose(&["exec", "-T", "manager", "cat", "/etc/cube/client.password"]))?;
    let password = out.trim().to_string();
    ensure!(
        password.len() == 32 && password.chars().all(|c| c.is_ascii_hexdigit()),
        "the client's password file holds {out:?}"
    );
    Ok(password)
}

/// Waits until `cube nodes` (the host's) lists each of `names`, ready.
async fn all_ready(host: &Host<'_>, names: &[String]) -> Result<()> {
    eventually(WITHIN, "cube nodes lists the workers, ready", || async {
        let out = host.cube(&["nodes"]).await?;
        for name in names {
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .with_context(|| format!("{name} not in:\n{out}"))?;
            ensure!(line.contains("ready"), "{name} is not ready:\n{out}");
        }
        Ok(())
    })
    .await
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
    run(&mut stack.compose(&["up", "-d"])).context("a fresh `up -d`")?;

    // `cube` in the manager's container: no flags, the client's user (the manager process
    // itself is given its own on its command line).
    let env = docker(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &stack.containers("manager")?[0],
    ])?;
    ensure!(
        env.contains("\"CUBE_NATS_USER=client\""),
        "the manager's container environment: {env}"
    );
    let first = stack.containers("worker")?;
    ensure!(
        first.len() == 1,
        "{} worker containers: {first:?}",
        first.len()
    );
    let first_name = hostname(&first[0])?;
    stack.workers.lock().unwrap().push(first_name.clone());
    eventually(WITHIN, "cube nodes in the manager's container", || async {
        let out = stack.exec_cube(&["nodes"])?;
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first_name.as_str()))
            .with_context(|| format!("{first_name} not in:\n{out}"))?;
        ensure!(line.contains("ready"), "{first_name} is not ready:\n{out}");
        Ok(())
    })
    .await?;

    // The host's `cube`, as the client, through the published port.
    let host = Host {
        stack,
        password: client_password(stack)?,
    };
    all_ready(&host, std::slice::from_ref(&first_name)).await?;

    // Scaled: two replicas of the one service, each named after its container.
    run(&mut stack.compose(&["up", "-d", "--scale", "worker=2"])).context("scaling")?;
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

    ensure!(
        names.contains(&first_name),
        "{first_name} was replaced: {names:?}"
    );
    all_ready(&host, &names).await?;
    let client = host.client().await?;
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

    // A task submitted with `cube` in the manager's container runs in a container on the
    // host's engine, started by one of the workers; both `cube`s see it.
    let long_running = cube_tests::long_running();
    let mut args = vec!["submit", "--image", IMAGE, "--"];
    args.extend(long_running.iter().map(String::as_str));
    let id = submitted(&stack.exec_cube(&args)?)?;
    let running = eventually(WITHIN, "the task runs", || async {
        let out = host.cube(&["status", &id]).await?;
        ensure!(out.split_whitespace().any(|w| w == "running"), "{out}");
        task(&client, &id).await
    })
    .await?;
    let inside = stack.exec_cube(&["status", &id])?;
    ensure!(
        inside.split_whitespace().any(|w| w == "running"),
        "in the manager's container: {inside}"
    );
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

    // The whole stack stopped and started again: `init` runs again and keeps the passwords,
    // so the host's client gets in with the one it has; the workers keep their names.
    run(&mut stack.compose(&["stop", "-t", "60"])).context("stopping the stack")?;
    run(&mut stack.compose(&["up", "-d", "--scale", "worker=2"])).context("starting it again")?;
    ensure!(
        client_password(stack)? == host.password,
        "the client's password changed with a restart"
    );
    all_ready(&host, &names).await?;
    let client = host.client().await?;
    ensure!(
        nodes(&client).await?.len() == 2,
        "the stack's restart made new nodes"
    );

    // `down -v` takes the cluster's task containers with it, and all of the project.
    let second = submitted(&host.cube(&args).await?)?;
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
    let left = stack.leftovers()?;
    ensure!(left.is_empty(), "down -v left of the project:\n{left}");
    Ok(())
}

/// The task id `cube submit` printed.
fn submitted(out: &str) -> Result<String> {
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
