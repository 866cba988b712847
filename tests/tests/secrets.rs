//! Secrets end to end (real nats-server, `cube` processes, Docker): a task gets a secret's
//! value in its environment on the worker it runs on, and the value is nowhere else: not in
//! any stream or bucket but the secrets' own, not in an API answer, not in a log line.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream;
use cube_shared::secret::SecretInfo;
use cube_shared::subjects::{
    API_SECRETS_LIST, API_TASKS_GET, API_TASKS_LIST, REJECTED, SECRETS_DB,
};
use cube_shared::{EnvVar, Rejection, State, TaskListQuery, TaskQuery};
use cube_tests::procs::ProcCluster;
use cube_tests::{api, cube, cube_output, task, unique, WITHIN};
use futures::StreamExt;

/// A task that exits 0 exactly when `$DB_PASSWORD` has the MD5 sum `md5`: the value itself
/// appears nowhere in the task's specification.
fn checks_password(md5: &str, secret: &str) -> cube_shared::Task {
    let check = format!(
        "[ \"$(printf %s \"$DB_PASSWORD\" | md5sum | cut -c1-32)\" = {md5} ] || {{ echo wrong; exit 3; }}"
    );
    let mut t = task(&["sh", "-c", &check]);
    t.env = vec![
        EnvVar::from("PLAIN=1"),
        EnvVar::Secret {
            name: "DB_PASSWORD".into(),
            secret: secret.into(),
        },
    ];
    t
}

fn md5(value: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", "printf %s \"$V\" | md5sum | cut -c1-32"])
        .env("V", value)
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Every stored message of every stream but the secrets' bucket that holds `needle`.
async fn stored_copies(js: &jetstream::Context, needle: &[u8]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = names.next().await {
        streams.push(name?);
    }
    for name in streams {
        if name == format!("KV_{SECRETS_DB}") {
            continue;
        }
        let mut stream = js.get_stream(&name).await?;
        let state = stream.info().await?.state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(msg) = stream.get_raw_message(seq).await else {
                continue; // deleted, or removed once acknowledged
            };
            let headers = format!("{:?}", msg.headers);
            if contains(&msg.payload, needle) || contains(headers.as_bytes(), needle) {
                found.push(format!("{name} #{seq} ({})", msg.subject));
            }
        }
    }
    Ok(found)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_task_and_nothing_else() -> Result<()> {
    // Everything the manager and worker log, down to debug, is searched for the value.
    std::env::set_var(
        "CUBE_TEST_RUST_LOG",
        "debug,async_nats=info,hyper=info,bollard=info",
    );
    let mut c = ProcCluster::start(1).await?;
    let url = c.nats.url();
    let value = format!("s3cr3t-{}", unique("v"));
    let name = unique("db");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &value)?;
    let path = file.path().to_str().context("a UTF-8 path")?;
    let put = cube(&url, &["secret", "put", &name, "--file", path]).await?;
    assert!(put.contains(&format!("secret {name} stored")), "{put}");

    // With it: the task sees the value and completes.
    let ok = c.submit(checks_password(&md5(&value)?, &name)).await?;
    let done = c.wait_state(ok, State::Completed, WITHIN).await?;
    assert_eq!(done.exit_code, Some(0));
    // A task naming a secret that does not exist fails, naming it.
    let missing = unique("nope");
    let failed = c.submit(checks_password("0", &missing)).await?;
    let failed = c.wait_state(failed, State::Failed, WITHIN).await?;
    let why = failed.error.unwrap_or_default();
    assert!(why.contains(&format!("secret `{missing}`")), "{why}");
    // Through the CLI too: `--secret-env`, and the secret replaced by a new value.
    let value2 = format!("{value}-2");
    std::fs::write(file.path(), &value2)?;
    cube(&url, &["secret", "put", &name, "-f", path]).await?;
    let check = format!(
        "[ \"$(printf %s \"$DB_PASSWORD\" | md5sum | cut -c1-32)\" = {} ]",
        md5(&value2)?
    );
    let submitted = cube(
        &url,
        &[
            "submit",
            "--image",
            cube_tests::IMAGE,
            "--secret-env",
            &format!("DB_PASSWORD={name}"),
            "--",
            "sh",
            "-c",
            &check,
        ],
    )
    .await?;
    let id = submitted.trim().parse()?;
    let done = c.wait_state(id, State::Completed, WITHIN).await?;
    assert_eq!(done.exit_code, Some(0), "{:?}", done.error);
    assert!(done
        .env
        .iter()
        .any(|e| e.secret() == Some(name.as_str()) && e.name() == "DB_PASSWORD"));

    // Listed by name and size, never by value.
    let listed: Vec<SecretInfo> = api(&c.client, API_SECRETS_LIST, &()).await?;
    let mine = listed.iter().find(|s| s.name == name).context("listed")?;
    assert_eq!(mine.bytes, value2.len());
    let ls = cube(&url, &["secret", "ls"]).await?;
    assert!(ls.contains(&name) && !ls.contains(&value), "{ls}");

    // The value is in no stored record, no answer, no log line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for v in [&value, &value2] {
        let stored = stored_copies(&c.js, v.as_bytes()).await?;
        ensure!(stored.is_empty(), "the value is stored in {stored:?}");
    }
    let query = TaskListQuery::default();
    let list: serde_json::Value = api(&c.client, API_TASKS_LIST, &query).await?;
    let one: serde_json::Value =
        api(&c.client, API_TASKS_GET, &TaskQuery { id: id.to_string() }).await?;
    let status = cube(&url, &["status", &id.to_string()]).await?;
    let events = cube_output(&url, &["events", "--since", "1h"]).await?;
    for (what, text) in [
        ("tasks.list", list.to_string()),
        ("tasks.get", one.to_string()),
        ("cube status", status),
        ("cube events", events.stdout + &events.stderr),
    ] {
        ensure!(
            !text.contains(&value) && !text.contains(&value2),
            "{what} shows the value"
        );
    }
    let logs = c.keep_logs();
    for entry in std::fs::read_dir(&logs)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        ensure!(!text.is_empty() || path.ends_with("nats-server.log"));
        ensure!(
            !text.contains(&value) && !text.contains(&value2),
            "{} holds the value",
            path.display()
        );
    }
    std::fs::remove_dir_all(&logs)?;

    // Removed: gone from the list, and a task naming it fails again.
    cube(&url, &["secret", "rm", &name]).await?;
    let gone = cube_output(&url, &["secret", "rm", &name]).await?;
    assert!(
        !gone.ok && gone.stderr.contains("no secret"),
        "{}",
        gone.stderr
    );
    let after = c.submit(checks_password("0", &name)).await?;
    let after = c.wait_state(after, State::Failed, WITHIN).await?;
    assert!(after.error.unwrap_or_default().contains("does not exist"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_are_refused_with_a_reason() -> Result<()> {
    let c = ProcCluster::start(0).await?;
    cube_tests::ensure_image()?;
    let url = c.nats.url();
    let bad_name = cube_output(&url, &["secret", "put", "a/b", "-f", "/dev/null"]).await?;
    assert!(
        !bad_name.ok && bad_name.stderr.contains("secret name"),
        "{}",
        bad_name.stderr
    );
    let big = tempfile::NamedTempFile::new()?;
    std::fs::write(
        big.path(),
        "x".repeat(cube_shared::secret::MAX_SECRET_BYTES + 1),
    )?;
    let path = big.path().to_str().context("a UTF-8 path")?;
    let too_big = cube_output(&url, &["secret", "put", "big", "-f", path]).await?;
    assert!(
        !too_big.ok && too_big.stderr.contains("at most"),
        "{}",
        too_big.stderr
    );
    // A submission may not carry values itself: refused, with the way to do it.
    let mut rejected = c.client.subscribe(REJECTED).await?;
    let mut event = cube_shared::TaskEvent::submit(task(&["true"]));
    event
        .secrets
        .insert("db".into(), cube_shared::SecretValue::new("v"));
    c.cube().publish(&event).await?;
    let rejection = tokio::time::timeout(WITHIN, async {
        while let Some(msg) = rejected.next().await {
            let r: Rejection = serde_json::from_slice(&msg.payload)?;
            if r.event_id == Some(event.id) {
                return Ok::<_, anyhow::Error>(r);
            }
        }
        anyhow::bail!("the subscription ended")
    })
    .await
    .context("no rejection")??;
    assert!(
        rejection.reason.contains("cube secret put"),
        "{}",
        rejection.reason
    );
    // Recorded as failed, as any refused submission, and never run.
    let kept = c.cube().task(&event.task.id.to_string()).await?;
    assert_eq!(kept.state, State::Failed);
    assert!(kept.worker.is_none());
    let listed: Vec<SecretInfo> = api(&c.client, API_SECRETS_LIST, &()).await?;
    assert!(listed.iter().all(|s| s.name != "big"));
    Ok(())
}
