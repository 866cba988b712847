//! Writes the seed corpus (`corpus/<target>/seed-*.json`): real, valid messages of each kind,
//! made from Cube's own types (or written as a person writes them, where a client may leave
//! fields out), each checked to be accepted by the decoder its target fuzzes.
//!
//! `cargo run --example seeds` from `fuzz/`; the seeds are deterministic (fixed ids and
//! times), so running it again changes nothing unless the types changed.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::body::{read_spec, read_submission};
use cube_shared::service::{decode_service_event, ServiceQuery};
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use cube_shared::{
    DrainRequest, ForgetRequest, Health, Node, Page, RestartPolicy, RunningTask, ServiceEvent,
    ServiceKind, ServiceSpec, State, StateReport, Task, TaskEvent, TaskListQuery, TaskQuery,
    UpdatePolicy,
};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

fn id(n: u8) -> Uuid {
    Uuid::from_bytes([
        0x5b, 0x0c, 0x2f, 0x7e, 0x3a, 0x1d, 0x4c, 0x55, 0x9f, 0x57, 0, 0, 0, 0, 0, n,
    ])
}

fn time() -> DateTime<Utc> {
    "2026-11-22T10:00:00Z".parse().expect("a time")
}

fn json_of<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("Cube's messages serialise")
}

/// A task that sets every field a client may set.
fn rich_task() -> Task {
    let mut t = Task::new("registry.local:5000/team/web:1.27");
    t.id = id(1);
    t.name = "web".into();
    t.cmd = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    t.env = vec!["K=V".into(), "EMPTY=".into()];
    t.cpu = 0.5;
    t.memory = 256 << 20;
    t.disk = 1 << 30;
    t.exposed_ports = vec!["80/tcp".into(), "53/udp".into()];
    t.port_bindings = [("80/tcp".to_string(), "127.0.0.1:8080".to_string())].into();
    t.restart_policy = RestartPolicy::OnFailure;
    t.mounts = vec![
        "data:/var/lib/data".into(),
        "/srv/www:/usr/share/www:ro".into(),
    ];
    t.network_mode = Some("bridge".into());
    t.cap_add = vec!["NET_ADMIN".into()];
    t.devices = vec!["/dev/fuse".into()];
    t.constraints = vec!["zone=eu".into(), "gpu!=none".into()];
    t.max_restarts = Some(3);
    t.health_check = Some("/health".into());
    t.health_interval = Some(Duration::from_secs(5));
    t.health_timeout = Some(Duration::from_millis(500));
    t.health_retries = Some(3);
    t.health_grace = Some(Duration::from_secs(30));
    t
}

fn event(task: Task, n: u8) -> TaskEvent {
    let mut e = TaskEvent::submit(task);
    e.id = id(n);
    e.timestamp = time();
    e
}

fn task_events() -> Vec<(&'static str, Vec<u8>)> {
    let mut minimal = Task::new("busybox");
    minimal.id = id(2);
    let mut stop = TaskEvent::stop(id(1));
    stop.id = id(12);
    stop.timestamp = time();
    // A placement as the manager hands it to a worker.
    let mut placed = rich_task();
    placed.state = State::Scheduled;
    placed.worker = Some("w-1".into());
    placed.generation = 2;
    placed.submitted_at = Some(time());
    let mut placement = TaskEvent::placement(&placed);
    placement.timestamp = time();
    placement.epoch = Some(7);
    vec![
        ("submit-minimal", json_of(&event(minimal, 10))),
        ("submit-rich", json_of(&event(rich_task(), 11))),
        ("stop", json_of(&stop)),
        ("placement", json_of(&placement)),
    ]
}

fn state_reports() -> Vec<(&'static str, Vec<u8>)> {
    let mut running = StateReport::new(id(1), "w-1", State::Running);
    running.timestamp = time();
    running.generation = Some(2);
    running.health = Some(Health::Healthy);
    running.container_id = Some("0123456789ab".into());
    running.start_time = Some(time());
    let mut failed = StateReport::new(id(1), "w-1", State::Failed);
    failed.timestamp = time();
    failed.generation = Some(2);
    failed.finish_time = Some(time());
    failed.exit_code = Some(137);
    failed.error = Some("OOM killed".into());
    vec![("running", json_of(&running)), ("failed", json_of(&failed))]
}

fn heartbeats() -> Vec<(&'static str, Vec<u8>)> {
    let node = Node {
        name: "w-1".into(),
        address: "10.0.0.2".into(),
        cores: 4.0,
        cpu_usage: 0.25,
        memory: 8 << 30,
        memory_used: 1 << 30,
        memory_allocated: 0,
        disk: 100 << 30,
        disk_used: 3 << 30,
        disk_allocated: 0,
        cpu_allocated: 0.0,
        task_count: 0,
        labels: [("zone".to_string(), "eu".to_string())].into(),
        last_heartbeat: time(),
        version: cube_shared::VERSION.into(),
        state: Default::default(),
        running: vec![RunningTask {
            id: id(1),
            generation: 2,
        }],
        page: Some(Page {
            index: 0,
            count: 1,
            total: 1,
        }),
        leaving: false,
    };
    // The fields a worker must send, the rest left to their defaults.
    let minimal = json!({"name": "w-2", "cores": 2.5, "memory": 1u64 << 30,
        "last_heartbeat": "2026-11-22T10:00:00.123+01:00"});
    vec![("node", json_of(&node)), ("minimal", json_of(&minimal))]
}

fn spec(name: &str) -> ServiceSpec {
    let mut template = rich_task();
    template.id = Uuid::nil();
    template.name = String::new();
    ServiceSpec {
        name: name.into(),
        kind: ServiceKind::Service,
        count: 3,
        template,
        update: UpdatePolicy {
            max_parallel: Some(2),
            min_healthy_time: Some(Duration::from_secs(10)),
            healthy_deadline: Some(Duration::from_secs(300)),
            auto_revert: Some(true),
            canary: Some(1),
        },
        max_failures: None,
    }
}

fn service_events() -> Vec<(&'static str, Vec<u8>)> {
    let stamped = |mut e: ServiceEvent, n: u8| {
        e.id = id(n);
        e.timestamp = time();
        json_of(&e)
    };
    let mut batch = spec("jobs");
    batch.kind = ServiceKind::Batch;
    batch.template.restart_policy = RestartPolicy::OnFailure;
    batch.max_failures = Some(5);
    // As a client writes one: the template's id left out, durations in words.
    let written = json!({"id": id(26), "name": "api", "action": "deploy",
        "spec": {"name": "api", "kind": "system", "update": {"min_healthy_time": "2s"},
                 "template": {"image": "cube-busybox:latest", "cmd": ["httpd", "-f"],
                              "exposed_ports": ["80"], "health_check": "wget -q -O- localhost",
                              "health_interval": 1.5}}});
    vec![
        ("deploy", stamped(ServiceEvent::deploy(spec("web")), 20)),
        ("deploy-batch", stamped(ServiceEvent::deploy(batch), 21)),
        ("scale", stamped(ServiceEvent::scale("web", 5), 22)),
        (
            "rollback",
            stamped(ServiceEvent::rollback("web", Some(1)), 23),
        ),
        ("promote", stamped(ServiceEvent::promote("web"), 24)),
        ("remove", stamped(ServiceEvent::remove("web"), 25)),
        ("deploy-written", json_of(&written)),
    ]
}

fn api_requests() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "tasks-get",
            json_of(&TaskQuery {
                id: "5b0c2f7e".into(),
            }),
        ),
        (
            "tasks-list",
            json_of(&TaskListQuery {
                state: Some(State::Running),
                limit: Some(5),
            }),
        ),
        (
            "nodes-drain",
            json_of(&DrainRequest {
                name: "w-1".into(),
                drain: true,
            }),
        ),
        (
            "nodes-forget",
            json_of(&ForgetRequest { name: "w-1".into() }),
        ),
        (
            "services-get",
            json_of(&ServiceQuery { name: "web".into() }),
        ),
    ]
}

/// Whether `bytes` is the body of one of the manager's API requests.
fn api_accepts(b: &[u8]) -> bool {
    let max = MAX_MESSAGE_BYTES;
    wire::decode::<TaskQuery>(b, max).is_ok()
        || wire::decode::<TaskListQuery>(b, max).is_ok()
        || wire::decode::<DrainRequest>(b, max).is_ok()
        || wire::decode::<ForgetRequest>(b, max).is_ok()
        || wire::decode::<ServiceQuery>(b, max).is_ok()
}

fn http_submissions() -> Vec<(&'static str, Vec<u8>)> {
    let bare = json!({"image": "cube-busybox:latest", "name": "hello", "cmd": ["sleep", "30"],
        "memory": 16u64 << 20, "exposed_ports": ["80"], "port_bindings": {"80": "8080"},
        "health_check": "/", "health_interval": "2s", "restart_policy": "always"});
    vec![
        ("task", json_of(&bare)),
        ("task-with-id", json_of(&rich_task())),
        ("event", json_of(&event(rich_task(), 30))),
    ]
}

fn http_specs() -> Vec<(&'static str, Vec<u8>)> {
    let written = json!({"name": "web", "count": 2,
        "template": {"image": "cube-busybox:latest", "cmd": ["sleep", "1"]}});
    vec![
        ("written", json_of(&written)),
        ("spec", json_of(&spec("web"))),
    ]
}

/// A target's name, its seeds (name, bytes), whether its decoder accepts a message, and the
/// check its fuzz target runs.
type Target = (
    &'static str,
    Vec<(&'static str, Vec<u8>)>,
    fn(&[u8]) -> bool,
    fn(&[u8]),
);

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [Target; 7] = [
        (
            "task_event",
            task_events(),
            |b| wire::decode_placement(b).is_ok(),
            cube_fuzz::task_event,
        ),
        (
            "state_report",
            state_reports(),
            |b| wire::decode::<StateReport>(b, MAX_MESSAGE_BYTES).is_ok(),
            cube_fuzz::state_report,
        ),
        (
            "heartbeat",
            heartbeats(),
            |b| wire::decode::<Node>(b, MAX_MESSAGE_BYTES).is_ok(),
            cube_fuzz::heartbeat,
        ),
        (
            "service_event",
            service_events(),
            |b| decode_service_event(b).is_ok(),
            cube_fuzz::service_event,
        ),
        (
            "api_request",
            api_requests(),
            api_accepts,
            cube_fuzz::api_request,
        ),
        (
            "http_submit",
            http_submissions(),
            |b| read_submission(b).is_ok(),
            cube_fuzz::http_submit,
        ),
        (
            "http_deploy",
            http_specs(),
            |b| read_spec(b).is_ok(),
            cube_fuzz::http_deploy,
        ),
    ];
    for (target, seeds, accepts, check) in targets {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in seeds {
            assert!(
                accepts(&bytes),
                "{target}/{name} is not accepted: {}",
                String::from_utf8_lossy(&bytes)
            );
            check(&bytes);
            let path = dir.join(format!("seed-{name}.json"));
            std::fs::write(&path, &bytes).expect("write a seed");
            println!("{} ({} bytes)", path.display(), bytes.len());
        }
    }
}
