//! Services over the HTTP API, against a real cluster (nats-server, the manager and a Docker
//! worker as `cube` processes): deploy two copies, see them run (in the API and in Docker),
//! their endpoints, scale to one, deploy a new version and roll back, the refusals (bad spec,
//! unknown service, another kind, nothing to promote, cross-site writes), then remove the
//! service and see its copies stop. The live stream carries the service's record.

use anyhow::{ensure, Result};
use bollard::models::ContainerSummaryStateEnum;
use cube_shared::LABEL_SERVICE;
use cube_tests::web::{get_json, next_event_of, post, WebCluster};
use cube_tests::{eventually, long_running, remove_containers, unique, IMAGE, WITHIN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn delete(web: &WebCluster, path: &str) -> Result<(StatusCode, Value)> {
    let r = web.http.delete(web.url(path)).send().await?;
    Ok((r.status(), r.json().await?))
}

/// An error answer: the status, and `{"error": "..."}` that contains `words`.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, words: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"));
    assert!(
        message.contains(words),
        "`{message}` does not say `{words}`"
    );
}

/// A 202 whose body names the service and the action.
fn assert_accepted(answer: &(StatusCode, Value), name: &str, action: &str) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["name"], json!(name), "{body}");
    assert_eq!(body["action"], json!(action), "{body}");
    assert!(body["event_id"].is_string(), "{body}");
}

/// The service's containers that Docker runs, found by the `cube.service` label.
async fn running_containers(web: &WebCluster, name: &str) -> Result<usize> {
    let all = web.cluster.containers(LABEL_SERVICE, name).await?;
    Ok(all
        .iter()
        .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
        .count())
}

/// Waits until `GET /api/services/{name}` satisfies `check`; returns the status.
async fn wait_service(
    web: &WebCluster,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    eventually(WITHIN, what, || async {
        let (status, body) = get_json(web, &format!("/api/services/{name}")).await?;
        ensure!(status == StatusCode::OK, "{status}: {body}");
        ensure!(check(&body), "{body}");
        Ok(body)
    })
    .await
}

/// Waits until Docker runs exactly `n` containers of the service.
async fn wait_containers(web: &WebCluster, name: &str, n: usize) -> Result<()> {
    eventually(WITHIN, &format!("Docker runs {n} of {name}"), || async {
        let running = running_containers(web, name).await?;
        ensure!(running == n, "{running} running");
        Ok(())
    })
    .await
}

/// Removes the service's containers, however the test ends.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        remove_containers(&format!("{LABEL_SERVICE}={}", self.0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_scale_roll_back_and_remove_a_service_over_http() -> Result<()> {
    let web = WebCluster::start(1).await?;
    let worker = web.cluster.worker_names()[0].clone();
    let name = unique("svc");
    let _sweep = Sweep(name.clone());
    let spec = |count: u32, env: &[&str]| {
        json!({
            "name": name,
            "count": count,
            "template": { "image": IMAGE, "cmd": long_running(), "env": env },
            "update": { "min_healthy_time": "1s" },
        })
    };

    // Nothing yet.
    let (status, list) = get_json(&web, "/api/services").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    assert_error(
        &get_json(&web, &format!("/api/services/{name}")).await?,
        StatusCode::NOT_FOUND,
        &format!("no service {name}"),
    );

    // The live stream, opened before the deploy, carries the service's record and its copies.
    let mut stream = web.http.get(web.url("/api/stream")).send().await?;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut buffer = String::new();

    // Deploy two copies; the template leaves its id to Cube.
    let deployed = post(&web, "/api/services", &spec(2, &[]).to_string()).await?;
    assert_accepted(&deployed, &name, "deploy");
    // In either order: the copies' records may be stored before the service's.
    let (mut record, mut copy) = (None, None);
    while record.is_none() || copy.is_none() {
        let (kind, value) = next_event_of(&mut stream, &mut buffer, |kind, v| {
            (kind == "service" && v["name"] == json!(name))
                || (kind == "task" && v["service"] == json!(name))
        })
        .await?;
        if kind == "service" {
            record = Some(value);
        } else {
            copy = Some(value);
        }
    }
    let (record, copy) = (record.unwrap_or_default(), copy.unwrap_or_default());
    assert_eq!(record["count"], json!(2), "{record}");
    assert_eq!(record["version"], json!(1), "{record}");
    assert_eq!(copy["service_version"], json!(1), "{copy}");
    drop(stream);
    let status = wait_service(&web, &name, "two copies run", |s| {
        s["running"] == json!(2) && s["healthy"] == json!(2)
    })
    .await?;
    assert_eq!(status["desired"], json!(2), "{status}");
    assert_eq!(status["service"]["kind"], json!("service"), "{status}");
    assert_eq!(status["service"]["version"], json!(1), "{status}");
    let copies = status["copies"].as_array().cloned().unwrap_or_default();
    assert_eq!(copies.len(), 2, "{status}");
    for c in &copies {
        assert_eq!(c["node"], json!(worker), "{c}");
        assert_eq!(c["version"], json!(1), "{c}");
        // A copy is a task, reachable as one.
        let (status, task) = get_json(
            &web,
            &format!("/api/tasks/{}", c["task_id"].as_str().unwrap_or_default()),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{task}");
        assert_eq!(task["service"], json!(name), "{task}");
    }
    // The dashboard: the copy's page links to its service, whose page lists the copy.
    let id = copies[0]["task_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let page = web
        .http
        .get(web.url(&format!("/tasks/{id}")))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        page.contains(&format!("href=\"/services/{name}\"")),
        "{page}"
    );
    let r = web
        .http
        .get(web.url(&format!("/services/{name}")))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await?;
    assert!(page.contains(&format!("href=\"/tasks/{id}\"")), "{page}");
    let r = web
        .http
        .get(web.url("/services/nobody-here"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    wait_containers(&web, &name, 2).await?;
    // The list shows it with its counts, without the copies.
    let (_, list) = get_json(&web, "/api/services").await?;
    let listed = list
        .as_array()
        .and_then(|l| l.iter().find(|s| s["service"]["name"] == json!(name)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["desired"], json!(2), "{list}");
    assert_eq!(listed["running"], json!(2), "{list}");
    assert_eq!(listed["copies"], json!([]), "{list}");
    // Both healthy copies are endpoints, on the worker.
    let endpoints = eventually(WITHIN, "two endpoints", || async {
        let (status, e) = get_json(&web, &format!("/api/services/{name}/endpoints")).await?;
        ensure!(status == StatusCode::OK, "{status}: {e}");
        ensure!(e["endpoints"].as_array().map(Vec::len) == Some(2), "{e}");
        Ok(e)
    })
    .await?;
    assert_eq!(endpoints["service"], json!(name));
    assert_eq!(
        endpoints["endpoints"][0]["node"],
        json!(worker),
        "{endpoints}"
    );

    // Bad input gets the reasons, and nothing is published.
    assert_error(
        &post(
            &web,
            "/api/services",
            r#"{"name":"Bad_Name","template":{"image":"busybox"}}"#,
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "lowercase",
    );
    let mut bad = spec(2, &[]);
    bad["template"]["image"] = json!("Not An Image!");
    assert_error(
        &post(&web, "/api/services", &bad.to_string()).await?,
        StatusCode::BAD_REQUEST,
        "template: task.image",
    );
    let mut bad = spec(2, &[]);
    bad["replicas"] = json!(3);
    assert_error(
        &post(&web, "/api/services", &bad.to_string()).await?,
        StatusCode::BAD_REQUEST,
        "replicas",
    );
    assert_error(
        &post(&web, "/api/services", "not json").await?,
        StatusCode::BAD_REQUEST,
        "not JSON",
    );
    assert_error(
        &post(
            &web,
            &format!("/api/services/{name}/scale"),
            r#"{"count":-1}"#,
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "count",
    );
    assert_error(
        &post(&web, &format!("/api/services/{name}/scale"), "{}").await?,
        StatusCode::BAD_REQUEST,
        "count",
    );
    // Another kind for a live service: the manager would refuse it in its journal only.
    let mut batch = spec(2, &[]);
    batch["kind"] = json!("batch");
    assert_error(
        &post(&web, "/api/services", &batch.to_string()).await?,
        StatusCode::CONFLICT,
        "remove it before deploying it as batch",
    );
    // Nothing waits for promotion (no canaries).
    assert_error(
        &post(&web, &format!("/api/services/{name}/promote"), "").await?,
        StatusCode::CONFLICT,
        "no rollout waiting for promotion",
    );
    // An unknown service, on every route that names one.
    let nobody = "nobody-here";
    for answer in [
        get_json(&web, &format!("/api/services/{nobody}")).await?,
        get_json(&web, &format!("/api/services/{nobody}/endpoints")).await?,
        post(
            &web,
            &format!("/api/services/{nobody}/scale"),
            r#"{"count":1}"#,
        )
        .await?,
        post(&web, &format!("/api/services/{nobody}/rollback"), "").await?,
        post(&web, &format!("/api/services/{nobody}/promote"), "").await?,
        delete(&web, &format!("/api/services/{nobody}")).await?,
    ] {
        assert_error(
            &answer,
            StatusCode::NOT_FOUND,
            &format!("no service {nobody}"),
        );
    }
    // A name that cannot be a service's is unknown too, not a failure to read the bucket.
    assert_error(
        &get_json(&web, "/api/services/no%20such/endpoints").await?,
        StatusCode::NOT_FOUND,
        "no service no such",
    );
    // What a web page could send on the user's behalf is refused (guard.rs), as for tasks.
    let scale = |extra: &[(&'static str, &'static str)]| {
        let mut r = web
            .http
            .post(web.url(&format!("/api/services/{name}/scale")))
            .body(r#"{"count":0}"#);
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        async move {
            let r = r.send().await?;
            anyhow::Ok((r.status(), r.json::<Value>().await?))
        }
    };
    assert_error(
        &scale(&[("content-type", "text/plain")]).await?,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    assert_error(
        &scale(&[
            ("content-type", "application/json"),
            ("origin", "http://evil.example"),
        ])
        .await?,
        StatusCode::FORBIDDEN,
        "another origin",
    );
    assert_error(
        &scale(&[
            ("content-type", "application/json"),
            ("sec-fetch-site", "cross-site"),
        ])
        .await?,
        StatusCode::FORBIDDEN,
        "cross-site",
    );
    let r = web
        .http
        .delete(web.url(&format!("/api/services/{name}")))
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // None of it changed anything: two copies still run.
    let status = wait_service(&web, &name, "still two", |s| s["running"] == json!(2)).await?;
    assert_eq!(status["desired"], json!(2), "{status}");
    assert_eq!(running_containers(&web, &name).await?, 2);

    // Scale to one.
    let scaled = post(
        &web,
        &format!("/api/services/{name}/scale"),
        r#"{"count":1}"#,
    )
    .await?;
    assert_accepted(&scaled, &name, "scale");
    wait_service(&web, &name, "one copy runs", |s| {
        s["desired"] == json!(1)
            && s["running"] == json!(1)
            && s["copies"].as_array().map(Vec::len) == Some(1)
    })
    .await?;
    wait_containers(&web, &name, 1).await?;

    // A new template is version 2, rolled out; a rollback goes back to version 1.
    assert_accepted(
        &post(&web, "/api/services", &spec(1, &["V=2"]).to_string()).await?,
        &name,
        "deploy",
    );
    wait_service(&web, &name, "version 2 rolled out", |s| {
        s["service"]["version"] == json!(2)
            && s["service"]["rollout"]["state"] == json!("succeeded")
            && s["copies"]
                .as_array()
                .is_some_and(|c| c.len() == 1 && c[0]["version"] == json!(2))
    })
    .await?;
    assert_error(
        &post(
            &web,
            &format!("/api/services/{name}/rollback"),
            r#"{"version":99}"#,
        )
        .await?,
        StatusCode::NOT_FOUND,
        "no version 99",
    );
    assert_error(
        &post(
            &web,
            &format!("/api/services/{name}/rollback"),
            r#"{"version":2}"#,
        )
        .await?,
        StatusCode::CONFLICT,
        "already runs version 2",
    );
    assert_accepted(
        &post(
            &web,
            &format!("/api/services/{name}/rollback"),
            r#"{"version":1}"#,
        )
        .await?,
        &name,
        "rollback",
    );
    let back = wait_service(&web, &name, "back to version 1", |s| {
        s["service"]["version"] == json!(1)
            && s["service"]["rollout"]["state"] == json!("succeeded")
            && s["running"] == json!(1)
            && s["copies"]
                .as_array()
                .is_some_and(|c| c.len() == 1 && c[0]["version"] == json!(1))
    })
    .await?;
    assert_eq!(back["service"]["rollout"]["from"], json!(2), "{back}");
    wait_containers(&web, &name, 1).await?;

    // Remove: every copy stops, in the API and in Docker. The service is gone (404); its
    // record stays in the list, `removed`.
    let removed = delete(&web, &format!("/api/services/{name}")).await?;
    assert_accepted(&removed, &name, "remove");
    let gone = eventually(WITHIN, "every copy stops", || async {
        let (status, list) = get_json(&web, "/api/services").await?;
        ensure!(status == StatusCode::OK, "{status}: {list}");
        let s = list
            .as_array()
            .and_then(|l| l.iter().find(|s| s["service"]["name"] == json!(name)))
            .cloned()
            .unwrap_or_default();
        ensure!(
            s["service"]["removed"] == json!(true) && s["running"] == json!(0),
            "{s}"
        );
        Ok(s)
    })
    .await?;
    assert_eq!(gone["desired"], json!(0), "{gone}");
    wait_containers(&web, &name, 0).await?;
    for path in [
        format!("/api/services/{name}"),
        format!("/api/services/{name}/endpoints"),
    ] {
        assert_error(
            &get_json(&web, &path).await?,
            StatusCode::NOT_FOUND,
            "removed",
        );
    }
    // A removed service takes no more changes.
    assert_error(
        &post(
            &web,
            &format!("/api/services/{name}/scale"),
            r#"{"count":2}"#,
        )
        .await?,
        StatusCode::NOT_FOUND,
        "removed",
    );
    assert_error(
        &delete(&web, &format!("/api/services/{name}")).await?,
        StatusCode::NOT_FOUND,
        "removed",
    );
    Ok(())
}
