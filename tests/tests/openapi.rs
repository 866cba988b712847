//! The HTTP API against its OpenAPI document (`/api/openapi.json`), by schemathesis (`st`,
//! from PyPI; `scripts/setup` installs it) with every check it has: status codes, content
//! types and headers as documented, answers that match their schemas (the live stream's
//! events too), valid requests accepted and invalid ones refused, 405 for undocumented
//! methods, no 5xx, and resources there after they were made. The cluster is real
//! (nats-server, the manager and a Docker worker as `cube` processes) and holds a task and a
//! service, so that the answers have something in them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cube_tests::web::{post, WebCluster};
use cube_tests::{long_running, unique, IMAGE};
use reqwest::StatusCode;
use serde_json::json;

/// Test cases per operation and phase: enough to cover every operation's boundaries, few
/// enough that the run takes about a minute and a half on two cores.
const MAX_EXAMPLES: &str = "15";

/// schemathesis' settings beyond its command line:
/// - a request body is at most 256 KiB whatever it holds, which no JSON Schema can say: 413
///   refuses a body as rightly as 400 does, valid or not;
/// - the live stream never ends: five events are enough to check (the managers and nodes
///   come at once, tasks and journal entries as schemathesis makes them).
const CONFIG: &str = r#"
max-stream-events = 5

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
"#;

/// A schemathesis hook (Python), for a gap in its generator: `env` says in JSON Schema that a
/// task names at most `MAX_TASK_SECRETS` secrets (`maxContains` on its objects), which the
/// generator does not always honour (it once sent a task's env with 11). The API rightly
/// refuses such a request with 400; this drops that one failure, "schema-valid request
/// rejected", when the request was in fact not schema-valid in just that way. Every other
/// failure stands.
fn hooks() -> String {
    format!(
        r#"
import schemathesis

MAX_SECRETS = {max}


def secrets(body):
    if not isinstance(body, dict):
        return 0
    task = body.get("task") or body.get("template") or body
    env = task.get("env") if isinstance(task, dict) else None
    return sum(isinstance(e, dict) for e in env) if isinstance(env, list) else 0


@schemathesis.hook
def filter_failure(context, failure, case, response):
    return not (
        failure.code == "ST202"
        and response.status_code == 400
        and secrets(case.body) > MAX_SECRETS
    )
"#,
        max = cube_shared::secret::MAX_TASK_SECRETS
    )
}

/// schemathesis' `st`: `CUBE_SCHEMATHESIS`, or `st` on the PATH.
fn schemathesis() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CUBE_SCHEMATHESIS") {
        return Ok(path.into());
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let st = dir.join("st");
        if st.is_file() {
            return Ok(st);
        }
    }
    bail!("schemathesis' `st` is not on the PATH: run scripts/setup (it pip-installs schemathesis)")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_does_what_its_openapi_document_says() -> Result<()> {
    let st = schemathesis()?;
    let web = WebCluster::start(1).await?;

    // A task and a service of two copies, for the lists, the stream and the pages.
    let task = json!({ "image": IMAGE, "cmd": long_running() });
    let (status, body) = post(&web, "/api/tasks", &task.to_string()).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let service = json!({
        "name": unique("svc"),
        "count": 2,
        "template": { "image": IMAGE, "cmd": long_running() },
    });
    let (status, body) = post(&web, "/api/services", &service.to_string()).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG)?;
    let hooks_file = dir.path().join("cube_hooks.py");
    std::fs::write(&hooks_file, hooks())?;
    let run = tokio::process::Command::new(&st)
        .env("SCHEMATHESIS_HOOKS", &hooks_file)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &web.url("/api/openapi.json")])
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {}", web.token)])
        .args(["--max-examples", MAX_EXAMPLES])
        // Every run starts afresh: no examples remembered from an earlier one.
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .context("schemathesis did not finish within 5 minutes")?
        .with_context(|| format!("running {}", st.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found the API and its document at odds ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // A run that tested nothing would pass too: every documented operation was tested, but
    // `GET /api/openapi.json`, which schemathesis leaves out as the document it reads.
    let doc: serde_json::Value = serde_json::from_str(cube_web::OPENAPI)?;
    let operations: usize = doc["paths"]
        .as_object()
        .context("paths")?
        .values()
        .map(|ops| {
            ops.as_object()
                .map_or(0, |o| o.keys().filter(|k| *k != "parameters").count())
        })
        .sum::<usize>()
        - 1;
    assert!(
        stdout.contains(&format!("Tested: {operations}\n")),
        "schemathesis did not test all {operations} operations:\n{stdout}"
    );
    Ok(())
}
