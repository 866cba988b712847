//! The HTTP API of `cube manager --http-addr`, over HTTP, against a real cluster (nats-server,
//! the manager and a Docker worker as `cube` processes): submit, bad input, get, list with
//! filters, events, logs, stop, and the dashboard's pages with hostile text in a task.

use anyhow::{anyhow, ensure, Result};
use cube_shared::token::TokenRole;
use cube_shared::{State, Task};
use cube_tests::web::{client_with, create_token, get_json, next_event, post, WebCluster};
use cube_tests::{eventually, in_state, unique, NatsServer, IMAGE, WITHIN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// A POST as the dashboard's own script makes it, with `Origin` and `Sec-Fetch-Site`.
async fn send_from_own_origin(web: &WebCluster, body: &str) -> Result<(StatusCode, Value)> {
    let r = web
        .http
        .post(web.url("/api/tasks"))
        .header("content-type", "application/json; charset=utf-8")
        .header("origin", web.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .body(body.to_string())
        .send()
        .await?;
    Ok((r.status(), r.json().await?))
}

/// Waits, reading the task over HTTP, until it is in `state` (failing early as
/// [`in_state`] says).
async fn wait_state(web: &WebCluster, id: Uuid, state: State) -> Result<Task> {
    eventually(WITHIN, &format!("task {id} becomes {state}"), || async {
        let (status, body) = get_json(web, &format!("/api/tasks/{id}")).await?;
        ensure!(status == StatusCode::OK, "{status}: {body}");
        in_state(serde_json::from_value(body)?, state)
    })
    .await
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

#[tokio::test(flavor = "multi_thread")]
async fn submit_get_list_events_logs_and_stop_over_http() -> Result<()> {
    let web = WebCluster::start(1).await?;
    let worker = web.cluster.worker_names()[0].clone();

    let (status, doc) = get_json(&web, "/api/openapi.json").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/tasks"]["post"].is_object());

    let (status, nodes) = get_json(&web, "/api/nodes").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(nodes[0]["name"], json!(worker), "{nodes}");

    // A bare task: Cube picks the id.
    let name = unique("http");
    let body = json!({ "name": name, "image": IMAGE, "cmd": ["sh", "-c", "echo hello from http; sleep 300"] });
    let (status, accepted) = post(&web, "/api/tasks", &body.to_string()).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id: Uuid = serde_json::from_value(accepted["id"].clone())?;
    let task = wait_state(&web, id, State::Running).await?;
    assert_eq!(task.worker.as_deref(), Some(worker.as_str()));
    assert_eq!(task.name, name);

    // By name too, as the CLI allows.
    let (status, by_name) = get_json(&web, &format!("/api/tasks/{name}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_name["id"], json!(id.to_string()));

    // Filters.
    let ids = |list: &Value| -> Vec<String> {
        list["tasks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t["id"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, running) = get_json(&web, "/api/tasks?state=running").await?;
    assert!(ids(&running).contains(&id.to_string()), "{running}");
    let (_, done) = get_json(&web, "/api/tasks?state=completed").await?;
    assert!(!ids(&done).contains(&id.to_string()), "{done}");
    let (_, on_node) = get_json(&web, &format!("/api/tasks?node={worker}")).await?;
    assert!(ids(&on_node).contains(&id.to_string()), "{on_node}");
    // Counts by state come with every list, whatever its filter and length.
    let (_, none) = get_json(&web, "/api/tasks?state=completed&limit=0").await?;
    assert_eq!(none["total"], json!(0), "{none}");
    assert_eq!(none["tasks"], json!([]), "{none}");
    assert_eq!(none["counts"], json!({ "running": 1 }), "{none}");
    let (_, elsewhere) = get_json(&web, "/api/tasks?node=nobody").await?;
    assert!(ids(&elsewhere).is_empty(), "{elsewhere}");
    assert_error(
        &get_json(&web, "/api/tasks?state=sleeping").await?,
        StatusCode::BAD_REQUEST,
        "unknown state `sleeping`",
    );

    // Bad input gets the manager's reasons, and nothing is published.
    assert_error(
        &post(&web, "/api/tasks", r#"{"image":"Not An Image!"}"#).await?,
        StatusCode::BAD_REQUEST,
        "task.image",
    );
    assert_error(
        &post(&web, "/api/tasks", r#"{"image":"busybox","colour":"red"}"#).await?,
        StatusCode::BAD_REQUEST,
        "colour",
    );
    assert_error(
        &post(&web, "/api/tasks", r#"{"image":"busybox","memory":1024}"#).await?,
        StatusCode::BAD_REQUEST,
        "6 MiB",
    );
    assert_error(
        &post(&web, "/api/tasks", "not json").await?,
        StatusCode::BAD_REQUEST,
        "not JSON",
    );
    // The same id with another specification.
    let clash = json!({ "id": id, "image": IMAGE, "cmd": ["sleep", "1"] });
    assert_error(
        &post(&web, "/api/tasks", &clash.to_string()).await?,
        StatusCode::CONFLICT,
        "different specification",
    );
    // What a web page could send on the user's behalf is refused, and nothing is published.
    let unseen = Uuid::new_v4();
    let task = json!({ "id": unseen, "image": IMAGE }).to_string();
    let send = |content_type: Option<&'static str>, extra: &[(&'static str, String)]| {
        let mut r = web.http.post(web.url("/api/tasks")).body(task.clone());
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        for (k, v) in extra {
            r = r.header(*k, v.as_str());
        }
        async move {
            let r = r.send().await?;
            anyhow::Ok((r.status(), r.json::<Value>().await?))
        }
    };
    assert_error(
        &send(Some("text/plain"), &[]).await?,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    assert_error(
        &send(None, &[]).await?,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    let json_ct = Some("application/json");
    assert_error(
        &send(json_ct, &[("origin", "http://evil.example".into())]).await?,
        StatusCode::FORBIDDEN,
        "another origin",
    );
    assert_error(
        &send(json_ct, &[("sec-fetch-site", "cross-site".into())]).await?,
        StatusCode::FORBIDDEN,
        "cross-site",
    );
    let r = web
        .http
        .post(web.url(&format!("/api/tasks/{id}/stop")))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A POST without a body needs no Content-Type, but another origin's is refused all the same.
    let r = web
        .http
        .post(web.url(&format!("/api/tasks/{id}/stop")))
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // DNS rebinding: a name that is not this server's.
    let port = web.base.rsplit(':').next().unwrap_or_default().to_string();
    let r = web
        .http
        .get(web.url("/api/tasks"))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await?;
    let refused = (r.status(), r.json::<Value>().await?);
    assert_error(
        &refused,
        StatusCode::MISDIRECTED_REQUEST,
        "--http-allowed-hosts",
    );
    let r = web
        .http
        .get(web.url("/"))
        .header("host", format!("localhost:{port}"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_error(
        &get_json(&web, &format!("/api/tasks/{unseen}")).await?,
        StatusCode::NOT_FOUND,
        "no task",
    );
    // The task is still running: the refused stops did nothing.
    assert_eq!(wait_state(&web, id, State::Running).await?.id, id);

    // A TaskEvent is accepted too, from the server's own origin (as the dashboard sends).
    let other = Uuid::new_v4();
    let event = json!({ "id": Uuid::new_v4(), "state": "running",
        "task": { "id": other, "image": IMAGE, "cmd": ["sleep", "300"] } });
    let (status, accepted) = send_from_own_origin(&web, &event.to_string()).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["id"], json!(other.to_string()));
    wait_state(&web, other, State::Running).await?;

    let missing = Uuid::new_v4();
    assert_error(
        &get_json(&web, &format!("/api/tasks/{missing}")).await?,
        StatusCode::NOT_FOUND,
        "no task",
    );

    // The journal, for the task.
    let (status, events) = get_json(&web, &format!("/api/events?task={id}")).await?;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"submitted") && kinds.contains(&"running"),
        "{kinds:?}"
    );
    let (_, recent) = get_json(&web, "/api/events?last=2").await?;
    assert_eq!(recent.as_array().unwrap().len(), 2, "{recent}");

    // The output: kept if the logs stream exists, said so if not.
    let (status, logs) = get_json(&web, &format!("/api/tasks/{id}/logs")).await?;
    assert_eq!(status, StatusCode::OK, "{logs}");
    if logs["kept"] == json!(true) {
        eventually(WITHIN, "the output is kept", || async {
            let (_, logs) = get_json(&web, &format!("/api/tasks/{id}/logs")).await?;
            let text = logs["text"].as_str().unwrap_or_default().to_string();
            ensure!(text.contains("hello from http"), "{logs}");
            Ok(())
        })
        .await?;
    } else {
        assert_eq!(logs["text"], json!(""));
    }

    // Stop: POST …/stop, with or without a Content-Type (it has no body).
    let (status, stopped) = post(&web, &format!("/api/tasks/{id}/stop"), "").await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{stopped}");
    assert_eq!(stopped["id"], json!(id.to_string()));
    let r = web
        .http
        .post(web.url(&format!("/api/tasks/{other}/stop")))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    wait_state(&web, id, State::Completed).await?;
    wait_state(&web, other, State::Completed).await?;
    assert_error(
        &post(&web, &format!("/api/tasks/{id}/stop"), "").await?,
        StatusCode::CONFLICT,
        "already completed",
    );
    assert_error(
        &post(&web, &format!("/api/tasks/{missing}/stop"), "").await?,
        StatusCode::NOT_FOUND,
        "no task",
    );
    Ok(())
}

/// Text a client controls reaches the dashboard as text: a task whose command, environment
/// and output carry markup renders it escaped, on the overview and on the task's page.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_escapes_what_clients_send() -> Result<()> {
    let web = WebCluster::start(1).await?;
    let evil = "<script>alert('pwned')</script>";
    let body = json!({
        "name": unique("evil"),
        "image": IMAGE,
        "env": [format!("EVIL={evil}\"><img src=x onerror=alert(1)>")],
        "cmd": ["sh", "-c", format!("echo \"$EVIL\" # {evil}\nsleep 300")],
    });
    let (status, accepted) = post(&web, "/api/tasks", &body.to_string()).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id: Uuid = serde_json::from_value(accepted["id"].clone())?;
    wait_state(&web, id, State::Running).await?;

    // Pages ignore query parameters they do not know; the API refuses them.
    for path in [
        "/".to_string(),
        "/?utm_source=elsewhere&state=running".to_string(),
        format!("/tasks/{id}"),
    ] {
        let r = web.http.get(web.url(&path)).send().await?;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()?
            .starts_with("text/html"));
        let page = r.text().await?;
        assert!(page.contains(&id.to_string()[..8]), "{path}: {page}");
        assert!(!page.contains("<script>alert"), "{path}: {page}");
        // The only pictures are the dashboard's own charts.
        assert_eq!(
            page.matches("<img").count(),
            page.matches("<img src=\"/charts/").count(),
            "{path}: {page}"
        );
        assert_eq!(page.matches("<script").count(), 1, "{path}: {page}");
    }
    let r = web
        .http
        .get(web.url("/api/tasks?status=running"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = web
        .http
        .get(web.url(&format!("/tasks/{id}")))
        .send()
        .await?
        .text()
        .await?;
    assert!(page.contains("&lt;script&gt;"), "{page}");
    let r = web
        .http
        .get(web.url(&format!("/tasks/{}", Uuid::new_v4())))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    Ok(())
}

/// The API works with the manager's NATS identity under Cube's generated permissions (what
/// `cube dev` runs): queries, the journal, a submission, live updates and a stop.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_works_under_the_managers_nats_permissions() -> Result<()> {
    use cube_bus::auth::{random_password, server_config, Role, User};
    cube_tests::init_tracing();
    let manager = User {
        role: Role::Manager,
        password: random_password(),
    };
    let nats = NatsServer::start_with(&server_config(std::slice::from_ref(&manager))).await?;
    let conn = cube_bus::Credentials::user(manager.name(), &manager.password)
        .options()
        .await?
        .connect(nats.url())
        .await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let manager_task = tokio::spawn(cube_manager::run(
        cube_manager::Config::default(),
        conn.clone(),
        shutdown.child_token(),
    ));
    let server = cube_web::Server::bind("127.0.0.1:0".parse()?).await?;
    let base = format!("http://{}", server.local_addr());
    let web_task = tokio::spawn(server.run(conn.clone(), shutdown.child_token()));
    // A token, made by the leader and checked by the web server in the `cube-tokens` bucket,
    // both under the manager's permissions.
    let token = create_token(&cube_client::Cube::new(conn), TokenRole::Submit).await?;
    let http = client_with(&token)?;

    let nodes = eventually(WITHIN, "the API lists nodes", || async {
        let r = http.get(format!("{base}/api/nodes")).send().await?;
        ensure!(r.status() == StatusCode::OK, "{}", r.text().await?);
        Ok(r.json::<Value>().await?)
    })
    .await?;
    assert_eq!(nodes, json!([]));
    // The manager answers on cube.managers under its own permissions.
    let managers = eventually(WITHIN, "the API lists the manager", || async {
        let r = http.get(format!("{base}/api/managers")).send().await?;
        ensure!(r.status() == StatusCode::OK, "{}", r.text().await?);
        let m = r.json::<Value>().await?;
        ensure!(m[0]["role"] == "leader", "{m}");
        Ok(m)
    })
    .await?;
    assert_eq!(managers[0]["pid"], json!(std::process::id()), "{managers}");
    // Live updates open, and carry the node list.
    let mut stream = http.get(format!("{base}/api/stream")).send().await?;
    assert_eq!(stream.status(), StatusCode::OK);
    let first = tokio::time::timeout(WITHIN, stream.chunk())
        .await
        .map_err(|_| anyhow!("no live update within {WITHIN:?}"))??
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&first).contains("event: nodes"),
        "{first:?}"
    );

    // No worker: the task waits, pending.
    let r = http
        .post(format!("{base}/api/tasks"))
        .json(&json!({ "image": IMAGE }))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let task = eventually(WITHIN, "the task is recorded", || async {
        let r = http.get(format!("{base}/api/tasks/{id}")).send().await?;
        ensure!(r.status() == StatusCode::OK, "{}", r.text().await?);
        Ok(r.json::<Task>().await?)
    })
    .await?;
    assert_eq!(task.state.as_str(), "pending");
    // The same task sent twice is accepted twice, though the manager keeps it normalised
    // (`80` becomes `80/tcp`, and is exposed). It stays pending: no worker binds the port.
    let ported = Uuid::new_v4();
    let same = json!({ "id": ported, "image": IMAGE, "port_bindings": { "80": "8080" } });
    for attempt in ["first", "again"] {
        let r = http
            .post(format!("{base}/api/tasks"))
            .json(&same)
            .send()
            .await?;
        let status = r.status();
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{attempt}: {}",
            r.text().await?
        );
        eventually(WITHIN, "the ported task is recorded", || async {
            let t: Task = http
                .get(format!("{base}/api/tasks/{ported}"))
                .send()
                .await?
                .json()
                .await?;
            ensure!(
                t.port_bindings.contains_key("80/tcp"),
                "{:?}",
                t.port_bindings
            );
            Ok(())
        })
        .await?;
    }
    let mut changed = same.clone();
    changed["port_bindings"] = json!({ "80": "8081" });
    let r = http
        .post(format!("{base}/api/tasks"))
        .json(&changed)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = http
        .get(format!("{base}/api/events?task={id}"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("{base}/api/tasks/{id}/logs"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(format!("{base}/api/tasks/{id}/stop"))
        .header("content-type", "application/json")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually(WITHIN, "the stopped task completes", || async {
        let t: Task = http
            .get(format!("{base}/api/tasks/{id}"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(t.state.as_str() == "completed", "{}", t.state);
        Ok(())
    })
    .await?;
    // Services too: a deploy (no worker, so its copy waits), its status, its endpoints (the
    // cube-endpoints bucket) and its removal.
    let r = http
        .post(format!("{base}/api/services"))
        .json(&json!({ "name": "perm", "template": { "image": IMAGE } }))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await?);
    eventually(WITHIN, "the service is recorded", || async {
        let r = http.get(format!("{base}/api/services/perm")).send().await?;
        ensure!(r.status() == StatusCode::OK, "{}", r.text().await?);
        let s = r.json::<Value>().await?;
        ensure!(s["copies"].as_array().map(Vec::len) == Some(1), "{s}");
        Ok(())
    })
    .await?;
    let r = http
        .get(format!("{base}/api/services/perm/endpoints"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await?["endpoints"], json!([]));
    let r = http
        .delete(format!("{base}/api/services/perm"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await?);
    drop(stream);
    shutdown.cancel();
    tokio::time::timeout(WITHIN, web_task)
        .await
        .map_err(|_| anyhow!("the HTTP server did not stop"))???;
    let _ = tokio::time::timeout(WITHIN, manager_task).await;
    Ok(())
}

/// A name given to `--http-allowed-hosts` is served; another name is not.
#[tokio::test(flavor = "multi_thread")]
async fn allowed_host_names_are_served() -> Result<()> {
    let web = WebCluster::start_with(0, &["--http-allowed-hosts", "cube.test,Other.Test"]).await?;
    let port = web.base.rsplit(':').next().unwrap_or_default().to_string();
    for (host, status) in [
        ("cube.test", StatusCode::OK),
        ("other.test", StatusCode::OK),
        ("evil.test", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let r = web
            .http
            .get(web.url("/api/nodes"))
            .header("host", format!("{host}:{port}"))
            .send()
            .await?;
        assert_eq!(r.status(), status, "{host}");
    }
    Ok(())
}

/// `GET /api/managers` lists the leader first and the standby, served by the standby itself
/// (the API holds no state: any manager's serves it); after the leader is SIGKILLed the list
/// and the live stream's `managers` event show the standby leading at a higher epoch, and the
/// API goes on answering through the new leader. A bad `wait` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn managers_over_http_show_the_takeover() -> Result<()> {
    cube_tests::init_tracing();
    let mut cluster = cube_tests::procs::ProcCluster::new().await?;
    cluster.start_manager().await?;
    let port = cube_tests::free_port()?;
    let logs = tempfile::tempdir()?;
    let standby = cluster.spawn_standby_serving_http(port, logs.path().join("standby.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    let token = create_token(&cluster.cube(), TokenRole::Read).await?;
    let http = client_with(&token)?;
    let result = async {
        let pair = eventually(WITHIN, "two managers listed", || async {
            let r = http.get(format!("{base}/api/managers")).send().await?;
            ensure!(r.status() == StatusCode::OK, "{}", r.text().await?);
            let m = r.json::<Value>().await?;
            ensure!(m.as_array().map(Vec::len) == Some(2), "{m}");
            Ok(m)
        })
        .await?;
        assert_eq!(pair[0]["role"], "leader", "{pair}");
        assert_eq!(pair[1]["role"], "standby", "{pair}");
        assert_eq!(pair[1]["pid"], json!(standby.pid()), "{pair}");
        let epoch = pair[0]["epoch"]
            .as_u64()
            .ok_or_else(|| anyhow!("no epoch: {pair}"))?;
        // The standby knows whom it waits for.
        assert!(pair[1]["leader"].is_string(), "{pair}");

        for bad in [
            "/api/managers?wait=soon",
            "/api/managers?wait=1h",
            "/api/managers?when=1s",
        ] {
            let r = http.get(format!("{base}{bad}")).send().await?;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let r = http
            .get(format!("{base}/api/managers?wait=100ms"))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::OK);

        let mut stream = http.get(format!("{base}/api/stream")).send().await?;
        assert_eq!(stream.status(), StatusCode::OK);
        let mut buffer = String::new();
        let first = next_event(&mut stream, &mut buffer, "managers", |_| true).await?;
        assert_eq!(first.as_array().map(Vec::len), Some(2), "{first}");

        cluster.kill_manager().await?;
        let pid = json!(standby.pid());
        let after = next_event(&mut stream, &mut buffer, "managers", |m| {
            m.as_array().map(Vec::len) == Some(1) && m[0]["role"] == "leader" && m[0]["pid"] == pid
        })
        .await?;
        let new_epoch = after[0]["epoch"]
            .as_u64()
            .ok_or_else(|| anyhow!("no epoch: {after}"))?;
        assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
        let (status, listed) = {
            let r = http.get(format!("{base}/api/managers")).send().await?;
            (r.status(), r.json::<Value>().await?)
        };
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed[0]["epoch"], json!(new_epoch), "{listed}");
        // The queries the dashboard makes are answered by the new leader.
        let r = http.get(format!("{base}/api/nodes")).send().await?;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await?);
        let page = http.get(format!("{base}/")).send().await?.text().await?;
        assert!(page.contains("id=\"managers\""), "{page}");
        assert!(
            page.contains(&format!("at epoch {new_epoch}; no standby")),
            "{page}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await
    .map_err(|e| e.context(format!("the standby's log ends:\n{}", standby.log_tail(30))));
    cluster.explain(result)
}
