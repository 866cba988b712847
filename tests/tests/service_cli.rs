//! `cube service`, run as a user runs it: the real `cube` binary against a cluster with a
//! Docker worker. Deploy from a TOML file and from flags, the counts in `ls` and `status`,
//! scale, refusals (client-side and the manager's) that exit non-zero with the reason,
//! history, and `rm` stopping every container.

use anyhow::{ensure, Context, Result};
use cube_shared::LABEL_SERVICE;
use cube_tests::{cube, cube_output, eventually, Cluster, IMAGE, WITHIN};
use serde_json::Value;

/// Removes a service's containers when the test ends, however it ends.
struct Sweep(Vec<String>);

impl Drop for Sweep {
    fn drop(&mut self) {
        for name in &self.0 {
            cube_tests::remove_containers(&format!("{LABEL_SERVICE}={name}"));
        }
    }
}

/// A service name no other test uses (Docker labels are shared by every test).
fn name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Its stderr, checking that it failed.
async fn failure(url: &str, args: &[&str]) -> Result<String> {
    let out = cube_output(url, args).await?;
    ensure!(
        !out.ok,
        "cube {args:?} succeeded: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(out.stderr)
}

async fn json(url: &str, args: &[&str]) -> Result<Value> {
    let out = cube(url, args).await?;
    serde_json::from_str(&out).with_context(|| format!("cube {args:?} printed {out}"))
}

/// The counts `cube service status NAME -o json` shows.
async fn counts(url: &str, name: &str) -> Result<(u64, u64, u64)> {
    let s = json(url, &["service", "status", name, "-o", "json"]).await?;
    let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
    Ok((n("desired"), n("running"), n("healthy")))
}

/// Running containers of service `name`, as Docker lists them.
fn containers(name: &str) -> Result<usize> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label={LABEL_SERVICE}={name}"),
        ])
        .output()?;
    ensure!(out.status.success(), "docker ps failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_from_the_command_line() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let url = cluster.nats.url();
    let (web, api) = (name("web"), name("api"));
    let _sweep = Sweep(vec![web.clone(), api.clone()]);
    let dir = tempfile::tempdir()?;

    // From a TOML file; deploy follows the rollout until both copies are healthy.
    let file = dir.path().join("web.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "{web}"
count = 2

[template]
image = "{IMAGE}"
cmd = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]

[update]
min_healthy_time = "1s"
"#
        ),
    )?;
    let file = file.to_str().unwrap();
    let out = cube_output(
        &url,
        &["service", "deploy", "-f", file, "--wait-timeout", "50s"],
    )
    .await?;
    ensure!(out.ok, "deploy failed: {}", out.stderr);
    let event_id = out.stdout.lines().next().unwrap_or_default();
    ensure!(
        event_id.parse::<uuid::Uuid>().is_ok(),
        "the first line is the event id: {}",
        out.stdout
    );
    ensure!(
        out.stdout.contains("created") && out.stdout.contains("version 1 rolled out, 2 of 2"),
        "{}",
        out.stdout
    );

    // `ls` and `status` show the counts; status shows every copy.
    let list = json(&url, &["service", "ls", "-o", "json"]).await?;
    let row = list
        .as_array()
        .context("ls -o json is an array")?
        .iter()
        .find(|s| s["service"]["name"] == web.as_str())
        .context("ls lists the service")?;
    ensure!(
        row["desired"] == 2 && row["running"] == 2 && row["healthy"] == 2,
        "{row}"
    );
    ensure!(row["service"]["rollout"]["state"] == "succeeded", "{row}");
    let table = cube(&url, &["service", "ls"]).await?;
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with(&web) && l.contains("succeeded")),
        "{table}"
    );
    let status = json(&url, &["service", "status", &web, "-o", "json"]).await?;
    let copies = status["copies"].as_array().context("copies")?;
    ensure!(copies.len() == 2, "{status}");
    for c in copies {
        ensure!(
            c["state"] == "running" && c["healthy"] == true && c["version"] == 1,
            "{c}"
        );
        ensure!(
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{web}."))),
            "{c}"
        );
    }
    ensure!(containers(&web)? == 2, "two containers");
    let text = cube(&url, &["service", "status", &web]).await?;
    ensure!(text.contains("Healthy:") && text.contains("TASK"), "{text}");

    // Scale: applied at once, the third copy follows.
    let out = cube(&url, &["service", "scale", &web, "3"]).await?;
    ensure!(out.contains("scaled from 2 to 3"), "{out}");
    eventually(WITHIN, "three healthy copies", || async {
        let c = counts(&url, &web).await?;
        ensure!(c == (3, 3, 3), "{c:?}");
        Ok(())
    })
    .await?;

    // The healthy copies' addresses, from the cube-endpoints bucket.
    eventually(WITHIN, "three endpoints", || async {
        let e = json(&url, &["service", "endpoints", &web, "-o", "json"]).await?;
        ensure!(
            e["service"] == web.as_str() && e["endpoints"].as_array().map(Vec::len) == Some(3),
            "{e}"
        );
        Ok(())
    })
    .await?;
    let err = failure(&url, &["service", "endpoints", "nowhere"]).await?;
    ensure!(err.contains("no service nowhere"), "{err}");

    // Refused by the manager: a service cannot change its kind.
    let err = failure(
        &url,
        &[
            "service", "deploy", "--name", &web, "--kind", "batch", "--image", IMAGE,
        ],
    )
    .await?;
    ensure!(
        err.contains("refused") && err.contains("remove it before deploying it as batch"),
        "{err}"
    );
    // Refused before anything is sent: a bad name, an unknown extension, an invalid file.
    let err = failure(
        &url,
        &["service", "deploy", "--name", "Web_1", "--image", IMAGE],
    )
    .await?;
    ensure!(err.contains("lowercase letters"), "{err}");
    let yaml = dir.path().join("web.yaml");
    std::fs::write(&yaml, "name: web\n")?;
    let err = failure(&url, &["service", "deploy", "-f", yaml.to_str().unwrap()]).await?;
    ensure!(err.contains("unknown service file extension"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\ncount = 20000\n[template]\n")?;
    let err = failure(&url, &["service", "deploy", "-f", bad.to_str().unwrap()]).await?;
    ensure!(
        err.contains("image is required") && err.contains("above the limit"),
        "{err}"
    );

    // No earlier version to go back to; no such service.
    let err = failure(&url, &["service", "rollback", &web]).await?;
    ensure!(err.contains("no earlier good version"), "{err}");
    let err = failure(&url, &["service", "scale", "nowhere", "2"]).await?;
    ensure!(err.contains("no service nowhere"), "{err}");
    let err = failure(&url, &["service", "status", "nowhere"]).await?;
    ensure!(
        err.contains("no service nowhere") && err.contains("cube service ls"),
        "{err}"
    );

    // From flags alone, with the task flags of `cube submit` and a command after `--`.
    let out = cube_output(
        &url,
        &[
            "service",
            "deploy",
            "--name",
            &api,
            "--count",
            "1",
            "--image",
            IMAGE,
            "-e",
            "MODE=api",
            "--min-healthy-time",
            "1s",
            "--wait-timeout",
            "50s",
            "--",
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 300 & wait",
        ],
    )
    .await?;
    ensure!(out.ok, "deploy from flags failed: {}", out.stderr);
    ensure!(counts(&url, &api).await? == (1, 1, 1), "one copy of api");
    let status = json(&url, &["service", "status", &api, "-o", "json"]).await?;
    let template = &status["service"]["versions"][0]["template"];
    ensure!(
        template["env"] == serde_json::json!(["MODE=api"]) && template["cmd"][0] == "sh",
        "{template}"
    );

    // A changed template (the file, with a flag added) rolls out as version 2, copy by copy;
    // then rollback goes back to version 1, the last good one.
    let out = cube_output(
        &url,
        &[
            "service",
            "deploy",
            "-f",
            file,
            "--count",
            "3",
            "-e",
            "V=2",
            "--wait-timeout",
            "50s",
        ],
    )
    .await?;
    ensure!(out.ok, "the second deploy failed: {}", out.stderr);
    ensure!(
        out.stdout.contains("version 2 rolls out")
            && out.stdout.contains("version 2 rolled out, 3 of 3"),
        "{}",
        out.stdout
    );
    let status = json(&url, &["service", "status", &web, "-o", "json"]).await?;
    let copies = status["copies"].as_array().context("copies")?;
    ensure!(
        copies
            .iter()
            .filter(|c| c["version"] == 2 && c["healthy"] == true)
            .count()
            == 3,
        "{status}"
    );
    let out = cube(&url, &["service", "rollback", &web]).await?;
    ensure!(out.contains("back to version 1 from 2"), "{out}");

    // History: the versions and the journal entries of this service only, oldest first.
    let history = cube(&url, &["service", "history", &web]).await?;
    let deploy_at = history.find("service-deploy").context(history.clone())?;
    let scale_at = history.find("service-scale").context(history.clone())?;
    ensure!(deploy_at < scale_at, "oldest first: {history}");
    ensure!(!history.contains(&api), "only {web}'s entries: {history}");
    ensure!(history.contains("service-rollback"), "{history}");
    let versions = json(&url, &["service", "history", &web, "-o", "json"]).await?;
    ensure!(
        versions["version"] == 1 && versions["versions"].as_array().map(Vec::len) == Some(2),
        "{versions}"
    );

    // rm stops every copy.
    for svc in [&web, &api] {
        let out = cube(&url, &["service", "rm", svc]).await?;
        ensure!(out.contains("removed"), "{out}");
    }
    eventually(WITHIN, "no container of either service runs", || async {
        let n = (containers(&web)?, containers(&api)?);
        ensure!(n == (0, 0), "{n:?} still running");
        Ok(())
    })
    .await?;
    let c = counts(&url, &web).await?;
    ensure!(c.0 == 0, "a removed service wants nothing: {c:?}");
    let err = failure(&url, &["service", "rm", &web]).await?;
    ensure!(err.contains(&format!("no service {web}")), "{err}");
    Ok(())
}

/// Every `cube service` command works with the `client` role's permissions alone (a manager
/// that never places a copy: no worker, no container).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_role_is_enough() -> Result<()> {
    use cube_bus::auth::{random_password, server_config, Role, User};
    cube_tests::init_tracing();
    let users = [
        User {
            role: Role::Manager,
            password: random_password(),
        },
        User {
            role: Role::Client,
            password: random_password(),
        },
    ];
    let nats = cube_tests::NatsServer::start_with(&server_config(&users)).await?;
    let (conn, _) = cube_tests::connect_as(&nats, &users[0]).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let token = shutdown.child_token();
    tokio::spawn(async move {
        if let Err(e) = cube_manager::run(cube_manager::Config::default(), conn, token).await {
            panic!("manager failed: {e}");
        }
    });
    let url = nats.url();
    let env = [
        ("CUBE_NATS_USER", users[1].name()),
        ("CUBE_NATS_PASSWORD", users[1].password.as_str()),
    ];
    let run = |args: &'static [&'static str]| {
        let (url, env) = (url.clone(), env);
        async move { cube_tests::cube_with_env(&url, &env, args).await }
    };
    eventually(WITHIN, "the manager answers", || run(&["service", "ls"])).await?;
    let out = run(&[
        "service", "deploy", "--name", "quiet", "--image", IMAGE, "--count", "2", "--detach",
    ])
    .await?;
    ensure!(out.contains("quiet created"), "{out}");
    let out = run(&["service", "scale", "quiet", "1"]).await?;
    ensure!(out.contains("scaled from 2 to 1"), "{out}");
    let status: Value =
        serde_json::from_str(&run(&["service", "status", "quiet", "-o", "json"]).await?)?;
    ensure!(status["desired"] == 1 && status["running"] == 0, "{status}");
    let history = run(&["service", "history", "quiet"]).await?;
    ensure!(
        history.contains("service-deploy") && history.contains("service-scale"),
        "{history}"
    );
    let endpoints: Value =
        serde_json::from_str(&run(&["service", "endpoints", "quiet", "-o", "json"]).await?)?;
    ensure!(
        endpoints["endpoints"] == serde_json::json!([]),
        "{endpoints}"
    );
    let out = run(&["service", "rm", "quiet"]).await?;
    ensure!(out.contains("removed"), "{out}");
    Ok(())
}
