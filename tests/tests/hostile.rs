//! Hostile messages: 1,000 malformed, oversized and wrong-typed messages, sent at the manager
//! and at a worker on every subject they read (`tasks.events`, the worker's
//! `tasks.pending.<worker>`, `tasks.state.*`, `nodes.heartbeat.<worker>` and the
//! `cube.api.*` requests), leave both running and start no container. Each is refused: every
//! one on `tasks.events` with a reason on `tasks.rejected`, every API request with an
//! `{"error": …}` reply. A valid task sent afterwards runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use async_nats::jetstream;
use cube_shared::subjects::{
    self, API_NODES_DRAIN, API_NODES_LIST, API_TASKS_GET, API_TASKS_LIST, EVENTS, REJECTED,
};
use cube_shared::TaskList;
use cube_shared::{ApiReply, Node, NodeState, Rejection, State, LABEL_WORKER};
use cube_tests::{api, consistently, eventually, task, Cluster, Rng, IMAGE, WITHIN};
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

const MESSAGES: usize = 1000;
/// JetStream publishes whose acks are awaited together: async-nats bounds the acks in flight,
/// and awaiting a thousand at the end stalls.
const WINDOW: usize = 100;
/// How long an API request may take before it counts as hung.
const REPLY_WITHIN: Duration = Duration::from_secs(20);

/// Where a hostile message goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// `tasks.events`: the manager's intake (JetStream).
    Events,
    /// `tasks.pending.<worker>`: the worker's own durable consumer (JetStream).
    Work,
    /// `tasks.state.<random id>[.<worker>]`: the manager's state reports (JetStream).
    State,
    /// `nodes.heartbeat.<worker>`: the manager's heartbeats (core NATS).
    Heartbeat,
    /// A `cube.api.*` request to the manager.
    Api(&'static str),
}

/// Half the messages go to `tasks.events`, a quarter to the worker, the rest spread over the
/// state reports, heartbeats and the four API calls.
fn target(i: usize) -> Target {
    const API: [&str; 4] = [
        API_TASKS_GET,
        API_TASKS_LIST,
        API_NODES_LIST,
        API_NODES_DRAIN,
    ];
    match i % 20 {
        0..=9 => Target::Events,
        10..=14 => Target::Work,
        15 | 16 => Target::State,
        17 => Target::Heartbeat,
        n => Target::Api(API[(i / 20 * 2 + n - 18) % API.len()]),
    }
}

/// A TaskEvent that looks like a submission of the test image running `true`, with `fields`
/// set on its task: if Cube ever accepted one, a container would start.
fn submission(fields: Value) -> Value {
    let mut task = json!({"id": Uuid::new_v4(), "image": IMAGE, "cmd": ["true"]});
    if let (Some(t), Value::Object(f)) = (task.as_object_mut(), fields) {
        t.extend(f);
    }
    json!({"id": Uuid::new_v4(), "state": "running", "timestamp": "2026-11-22T10:00:00Z",
           "task": task})
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON serialises")
}

/// The kinds of hostile message; each target gets them in turn.
const KINDS: usize = 21;

/// The `n`th hostile message for a target, and what it is. Kinds take turns, so that every
/// target gets each kind (and the first variants of each) whatever the seed.
fn hostile(n: usize, rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let (kind, round) = (n % KINDS, n / KINDS);
    let bad = |fields: Value| bytes(&submission(fields));
    match kind {
        0 => {
            let n = 1 + rng.below(1500);
            ("random bytes", rng.bytes(n))
        }
        1 => {
            let valid = bad(json!({}));
            let cut = 1 + rng.below(valid.len() - 1);
            ("truncated JSON", valid[..cut].to_vec())
        }
        2 => {
            let mut no_task = submission(json!({}));
            no_task.as_object_mut().unwrap().remove("task");
            let mut no_id = submission(json!({}));
            no_id.as_object_mut().unwrap().remove("id");
            let shapes = [
                json!([]),
                json!("tasks"),
                json!(42),
                json!(null),
                json!(true),
                json!({"foo": 1}),
                json!({"id": 5}),
                json!([{"id": 1}]),
                json!({"name": 7, "drain": "yes"}),
                no_task,
                no_id,
            ];
            let shape = &shapes[round % shapes.len()];
            ("JSON of the wrong shape", bytes(shape))
        }
        3 => ("memory as a string", bad(json!({"memory": "512m"}))),
        4 => ("negative cpu", bad(json!({"cpu": -2.5}))),
        5 => {
            let mut e = submission(json!({}));
            e["state"] = json!("exploded");
            ("state exploded", bytes(&e))
        }
        6 => (
            "10,000 env entries",
            bad(json!({"env": vec!["K=V"; 10_000]})),
        ),
        7 => (
            "a 5,000-character name",
            bad(json!({"name": "n".repeat(5000)})),
        ),
        8 => ("port 0", bad(json!({"exposed_ports": ["0/tcp"]}))),
        9 => (
            "port 70000",
            bad(json!({"port_bindings": {"80/tcp": "70000"}})),
        ),
        10 => ("image UPPER/Case!!", bad(json!({"image": "UPPER/Case!!"}))),
        11 => (
            "10,000 nested arrays",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        12 => {
            let e = bad(json!({"health_check": "true", "health_interval": "@@"}));
            let nested = format!("{}5{}", "[".repeat(10_000), "]".repeat(10_000));
            let e = String::from_utf8(e).unwrap().replacen("\"@@\"", &nested, 1);
            ("10,000 nested arrays in a field", e.into_bytes())
        }
        13 => {
            // 300 KB: under NATS' 1 MB limit, over Cube's 256 KiB; one of them otherwise valid.
            if rng.below(2) == 0 {
                let padding = json!({"padding": "x".repeat(300 * 1024)});
                ("300 KB of padding", bytes(&padding))
            } else {
                let cmd = vec!["x".repeat(4000); 77];
                ("a valid 300 KB submission", bad(json!({"cmd": cmd})))
            }
        }
        14 => ("empty", rng.pick(&[&b""[..], b"   \n"]).to_vec()),
        15 => {
            let wrong = [
                json!({"cmd": "sh -c true"}),
                json!({"env": {"K": "V"}}),
                json!({"restart_policy": "sometimes"}),
                json!({"max_restarts": -1}),
                json!({"health_check": "true", "health_interval": "forever"}),
                json!({"image": 12}),
                json!({"cpu": "lots"}),
                json!({"cpu": 1e300}),
                json!({"memory": -5}),
                json!({"memory": 1.5}),
                json!({"memory": 3}),
                json!({"disk": true}),
                json!({"id": "not-a-uuid"}),
                json!({"port_bindings": ["80"]}),
            ];
            ("a field of the wrong type", bad(rng.pick(&wrong)))
        }
        16 => {
            let mut e = submission(json!({"cpus": 2}));
            if rng.below(2) == 0 {
                e["priority"] = json!(1);
            }
            ("an unknown field", bytes(&e))
        }
        17 => {
            let mut e = submission(json!({}));
            e["state"] = json!(rng.pick(&["pending", "scheduled", "failed", "Running"]));
            ("a state that cannot be requested", bytes(&e))
        }
        18 => {
            let mut e = submission(json!({}));
            e["state"] = json!("s".repeat(20_000));
            ("a 20 KB state", bytes(&e))
        }
        19 => {
            let stop = json!({"id": Uuid::new_v4(), "state": "completed",
                              "task": {"id": rng.pick(&["nope", "", "0"])}});
            ("a stop without a task id", bytes(&stop))
        }
        _ => {
            let mut e = bad(json!({"name": "@@"}));
            let at = e.windows(4).position(|w| w == b"\"@@\"").unwrap();
            let junk: &[u8] = rng.pick(&[&b"\"\xff\xfe\""[..], b"\"\\ud800\"", b"\"\xc3\""]);
            e.splice(at..at + 4, junk.iter().copied());
            ("invalid UTF-8 or a lone surrogate", e)
        }
    }
}

/// What the `tasks.rejected` subscription has seen.
#[derive(Default)]
struct Seen {
    events: usize,
    state: usize,
    reasons: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_messages_leave_manager_and_worker_running() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let worker = cluster.worker_names[0].clone();
    let client = cluster.client.clone();
    let js = jetstream::new(client.clone());

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut rejected = client.subscribe(REJECTED).await?;
    client.flush().await?;
    let counter = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(msg) = rejected.next().await {
                let Ok(r) = serde_json::from_slice::<Rejection>(&msg.payload) else {
                    continue;
                };
                let mut seen = seen.lock().unwrap();
                if r.subject == EVENTS {
                    seen.events += 1;
                    seen.reasons.push(r.reason);
                } else if r.subject.starts_with("tasks.state.") {
                    seen.state += 1;
                }
            }
        })
    };

    let mut rng = Rng::from_env_or_random("CUBE_HOSTILE_SEED");
    let mut per_target = std::collections::HashMap::<String, usize>::new();
    let messages: Vec<(Target, &str, Vec<u8>)> = (0..MESSAGES)
        .map(|i| {
            let to = target(i);
            let n = per_target.entry(format!("{to:?}")).or_default();
            let (what, payload) = hostile(*n, &mut rng);
            *n += 1;
            (to, what, payload)
        })
        .collect();
    let count = |t: fn(&Target) -> bool| messages.iter().filter(|(to, _, _)| t(to)).count();
    let to_events = count(|t| *t == Target::Events);
    let to_state = count(|t| *t == Target::State);
    let total_bytes: usize = messages.iter().map(|(_, _, p)| p.len()).sum();
    println!(
        "{MESSAGES} messages, {:.1} MB: {to_events} to tasks.events, {} to tasks.pending.{worker}, \
         {to_state} to tasks.state.*, {} heartbeats, {} API requests",
        total_bytes as f64 / 1e6,
        count(|t| *t == Target::Work),
        count(|t| *t == Target::Heartbeat),
        count(|t| matches!(t, Target::Api(_))),
    );

    // Send: JetStream publishes awaited in windows, heartbeats as they come, API requests all
    // at once afterwards, each within a deadline.
    let started = Instant::now();
    let mut acks = Vec::new();
    let mut requests = Vec::new();
    for (i, (to, what, payload)) in messages.iter().enumerate() {
        let subject = match to {
            Target::Events => EVENTS.to_string(),
            Target::Work => subjects::pending_for(&worker),
            Target::State if i % 2 == 0 => format!("tasks.state.{}", Uuid::new_v4()),
            Target::State => format!("tasks.state.{}.{worker}", Uuid::new_v4()),
            Target::Heartbeat => {
                client
                    .publish(subjects::heartbeat_for(&worker), payload.clone().into())
                    .await?;
                continue;
            }
            Target::Api(subject) => {
                requests.push((*subject, *what, payload.clone()));
                continue;
            }
        };
        let ack = js
            .publish(subject.clone(), payload.clone().into())
            .await
            .with_context(|| format!("publishing {what} to {subject}"))?;
        acks.push((ack, subject, *what));
        if acks.len() == WINDOW {
            await_acks(&mut acks).await?;
        }
    }
    await_acks(&mut acks).await?;
    client.flush().await?;
    println!("published in {:?}", started.elapsed());

    let replies = futures::future::join_all(requests.into_iter().map(|(subject, what, body)| {
        let client = client.clone();
        async move {
            let reply = tokio::time::timeout(
                REPLY_WITHIN,
                client.request(subject.to_string(), body.clone().into()),
            )
            .await;
            (subject, what, body, reply)
        }
    }))
    .await;
    // Wrong answers are collected and reported at the end, after the checks that matter more
    // (liveness, containers) have run.
    let mut wrong_answers = Vec::new();
    for (subject, what, body, reply) in replies {
        let reply = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                wrong_answers.push(format!("{subject} ({what}): {e}"));
                continue;
            }
            Err(_) => {
                wrong_answers.push(format!("{subject} ({what}): no reply in {REPLY_WITHIN:?}"));
                continue;
            }
        };
        let Ok(answer) = serde_json::from_slice::<ApiReply<Value>>(&reply.payload) else {
            wrong_answers.push(format!(
                "{subject} ({what}) answered with something that is not an API reply: {}",
                excerpt(&String::from_utf8_lossy(&reply.payload))
            ));
            continue;
        };
        // `tasks.list` reads an empty body as "everything", `nodes.list` an empty one or
        // `null` as "the first page".
        let first_page = body.trim_ascii().is_empty() || body.trim_ascii() == b"null";
        let ignores_body = (subject == API_NODES_LIST && first_page)
            || (subject == API_TASKS_LIST && body.is_empty());
        match answer {
            ApiReply::Error(e) if ignores_body => {
                wrong_answers.push(format!("{subject} ({what}) failed: {e}"))
            }
            ApiReply::Ok(v) if !ignores_body => wrong_answers.push(format!(
                "{subject} accepted {what} ({}): {}",
                excerpt(&String::from_utf8_lossy(&body)),
                excerpt(&v.to_string())
            )),
            _ => {}
        }
    }
    println!("API requests answered after {:?}", started.elapsed());

    // Every event refused with a reason, exactly once; the worker and the manager have taken
    // everything off their consumers.
    eventually(WITHIN, "every bad event is rejected", || async {
        let n = seen.lock().unwrap().events;
        ensure!(n >= to_events, "{n} of {to_events} rejections so far");
        Ok(())
    })
    .await?;
    cube_tests::wait_idle(&js, std::slice::from_ref(&worker), WITHIN).await?;
    println!("all processed after {:?}", started.elapsed());
    // A second rejection of one event would come from a redelivery, which the drained
    // consumers rule out, or late: none arrives for a while.
    consistently(
        Duration::from_secs(1),
        "one rejection per bad event",
        || {
            let n = seen.lock().unwrap().events;
            async move {
                ensure!(n == to_events, "{n} rejections for {to_events} bad events");
                Ok(())
            }
        },
    )
    .await?;
    {
        let seen = seen.lock().unwrap();
        println!(
            "rejections: {} for tasks.events, {} for tasks.state.* ({to_state} sent); \
             longest reason {} bytes",
            seen.events,
            seen.state,
            seen.reasons.iter().map(String::len).max().unwrap_or(0)
        );
        ensure!(
            seen.reasons.iter().all(|r| !r.trim().is_empty()),
            "a rejection without a reason"
        );
    }

    // Both still alive: the worker heartbeats and is `ready`, the manager answers.
    let mut beats = client.subscribe(subjects::heartbeat_for(&worker)).await?;
    let beat = tokio::time::timeout(Duration::from_secs(10), beats.next())
        .await
        .map_err(|_| anyhow!("no heartbeat from {worker} within 10 s"))?
        .ok_or_else(|| anyhow!("heartbeat subscription closed"))?;
    let beat: Node = serde_json::from_slice(&beat.payload)?;
    assert_eq!(beat.name, worker);
    let nodes: Vec<Node> = api(&client, API_NODES_LIST, &()).await?;
    let node = nodes
        .iter()
        .find(|n| n.name == worker)
        .ok_or_else(|| anyhow!("{worker} is not listed: {nodes:?}"))?;
    assert_eq!(node.state, NodeState::Ready, "{node:?}");

    // No container, and no task but refused (failed) ones.
    let containers = cluster.containers(LABEL_WORKER, &worker).await?;
    assert!(
        containers.is_empty(),
        "hostile messages started containers: {:?}",
        containers.iter().map(|c| &c.labels).collect::<Vec<_>>()
    );
    for state in [
        State::Pending,
        State::Scheduled,
        State::Running,
        State::Completed,
    ] {
        let list: TaskList = api(&client, API_TASKS_LIST, &json!({"state": state})).await?;
        assert_eq!(
            list.total,
            0,
            "tasks {state}: {:?}",
            list.tasks.iter().map(|t| t.id).collect::<Vec<_>>()
        );
    }

    // A valid task runs.
    let id = cluster.submit(task(&["true"])).await?;
    let done = cluster.wait_state(id, State::Completed, WITHIN).await?;
    assert_eq!(done.worker.as_deref(), Some(worker.as_str()));
    assert_eq!(done.exit_code, Some(0));
    println!("a valid task completed after {:?}", started.elapsed());
    counter.abort();

    ensure!(
        wrong_answers.is_empty(),
        "API requests answered wrongly: {wrong_answers:#?}"
    );
    Ok(())
}

async fn await_acks(
    acks: &mut Vec<(jetstream::context::PublishAckFuture, String, &str)>,
) -> Result<()> {
    for (ack, subject, what) in acks.drain(..) {
        ack.await
            .with_context(|| format!("JetStream did not store {what} on {subject}"))?;
    }
    Ok(())
}

fn excerpt(s: &str) -> String {
    s.chars().take(200).collect()
}
