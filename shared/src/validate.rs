//! Validation of everything a client can send, with reasons a person can read.
//!
//! Bounds are deliberate: they keep one hostile or mistaken event from costing the manager,
//! the workers or Docker more than a small, known amount.

use std::fmt;

use std::time::Duration;

use crate::secret::MAX_TASK_SECRETS;
use crate::{EnvVar, State, Task, TaskEvent};

mod image;
pub use image::{
    validate_image, INVALID_EXAMPLES as INVALID_IMAGES, REFERENCE_PIECES as IMAGE_REFERENCE_PIECES,
    VALID_EXAMPLES as VALID_IMAGES,
};

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_IMAGE_LEN: usize = 255;
pub const MAX_CMD_ARGS: usize = 256;
pub const MAX_ARG_LEN: usize = 4096;
pub const MAX_ENV: usize = 256;
pub const MAX_ENV_LEN: usize = 8192;
pub const MAX_PORTS: usize = 64;
pub const MAX_CPU: f64 = 1024.0;
/// Docker refuses a memory limit below 6 MiB.
pub const MIN_MEMORY: u64 = 6 << 20;
pub const MAX_BYTES: u64 = 1 << 50;
pub const MAX_WORKER_NAME_LEN: usize = 64;

/// Everything wrong with a message, each problem on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<String>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Collects problems so that a client learns all of them at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn into_result(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// Validates an event: what it asks for and, for a submission, the whole task specification.
pub fn validate_event(event: &TaskEvent) -> Result<(), Invalid> {
    if !event.secrets.is_empty() {
        return Err(Invalid(vec![
            "an event may not carry secrets' values: store them with `cube secret put` and \
             name them in task.env as {\"name\": \"VAR\", \"secret\": \"NAME\"}"
                .into(),
        ]));
    }
    validate_work(event)
}

/// Validates work the manager sent a worker: as [`validate_event`], but a placement carries
/// the values of the secrets its task names.
pub fn validate_work(event: &TaskEvent) -> Result<(), Invalid> {
    match event.state {
        State::Running => validate_task(&event.task),
        State::Completed => Ok(()),
        other => Err(Invalid(vec![format!(
            "state `{other}` cannot be requested: send `running` to start a task or `completed` to stop it"
        )])),
    }
}

/// Validates a task specification (the fields a client sets).
pub fn validate_task(task: &Task) -> Result<(), Invalid> {
    let mut p = Problems::default();
    p.check(task.name.len() <= MAX_NAME_LEN, || {
        format!("task.name is longer than {MAX_NAME_LEN} characters")
    });
    p.check(
        task.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        || "task.name may only contain letters, digits, `-`, `_` and `.`".to_string(),
    );
    if task.image.is_empty() {
        p.0.push("task.image is required".to_string());
    } else if let Err(e) = validate_image(&task.image) {
        p.0.push(format!("task.image: {e}"));
    }
    p.check(task.cmd.len() <= MAX_CMD_ARGS, || {
        format!(
            "task.cmd has {} arguments; at most {MAX_CMD_ARGS}",
            task.cmd.len()
        )
    });
    p.check(
        task.cmd
            .iter()
            .all(|a| a.len() <= MAX_ARG_LEN && !a.contains('\0')),
        || format!("task.cmd: each argument must be under {MAX_ARG_LEN} bytes, without NUL"),
    );
    p.check(task.env.len() <= MAX_ENV, || {
        format!("task.env has {} entries; at most {MAX_ENV}", task.env.len())
    });
    let mut secrets = 0;
    for e in &task.env {
        match e {
            EnvVar::Value(e) => {
                let ok = match e.split_once('=') {
                    Some((k, _)) => !k.is_empty() && !e.contains('\0') && e.len() <= MAX_ENV_LEN,
                    None => false,
                };
                p.check(ok, || {
                    format!("task.env entry `{}` is not KEY=VALUE", excerpt(e))
                });
            }
            EnvVar::Secret { name, secret } => {
                let ok =
                    !name.is_empty() && name.len() <= MAX_ENV_LEN && !name.contains(['=', '\0']);
                p.check(ok, || {
                    format!("task.env: `{}` is not a variable name", excerpt(name))
                });
                secrets += 1;
                if let Err(why) = crate::secret::check_name(secret) {
                    p.check(false, || format!("task.env entry {}: {why}", excerpt(name)));
                }
            }
        }
    }
    p.check(secrets <= MAX_TASK_SECRETS, || {
        format!("task.env names {secrets} secrets; at most {MAX_TASK_SECRETS}")
    });
    p.check(task.cpu.is_finite() && task.cpu >= 0.0, || {
        "task.cpu must be a non-negative number of cores".to_string()
    });
    p.check(task.cpu <= MAX_CPU, || {
        format!(
            "task.cpu {} is more cores than any node has (at most {MAX_CPU})",
            task.cpu
        )
    });
    p.check(task.memory == 0 || task.memory >= MIN_MEMORY, || {
        format!(
            "task.memory {} bytes is below Docker's minimum of 6 MiB ({MIN_MEMORY} bytes)",
            task.memory
        )
    });
    p.check(task.memory <= MAX_BYTES, || {
        "task.memory is impossibly large".to_string()
    });
    p.check(task.disk <= MAX_BYTES, || {
        "task.disk is impossibly large".to_string()
    });
    p.check(task.exposed_ports.len() <= MAX_PORTS, || {
        format!("task.exposed_ports has more than {MAX_PORTS} entries")
    });
    for port in &task.exposed_ports {
        if let Err(e) = parse_container_port(port) {
            p.0.push(format!("task.exposed_ports: {e}"));
        }
    }
    p.check(task.port_bindings.len() <= MAX_PORTS, || {
        format!("task.port_bindings has more than {MAX_PORTS} entries")
    });
    for (container, host) in &task.port_bindings {
        if let Err(e) = parse_container_port(container) {
            p.0.push(format!("task.port_bindings: {e}"));
        }
        if let Err(e) = parse_host_binding(host) {
            p.0.push(format!("task.port_bindings[{}]: {e}", excerpt(container)));
        }
    }
    if let Some(check) = &task.health_check {
        p.check(!check.trim().is_empty() && check.len() <= MAX_ARG_LEN && !check.contains('\0'), || {
            format!("task.health_check must be an HTTP path (`/health`) or a command, under {MAX_ARG_LEN} bytes")
        });
        if check.starts_with('/') {
            p.check(!check.contains(char::is_whitespace), || {
                "task.health_check: an HTTP path has no spaces".to_string()
            });
            p.check(
                !task.exposed_ports.is_empty() || !task.port_bindings.is_empty(),
                || "task.health_check: an HTTP check needs an exposed port to probe".to_string(),
            );
        }
    }
    let durations = [
        ("health_interval", task.health_interval),
        ("health_timeout", task.health_timeout),
        ("health_grace", task.health_grace),
    ];
    for (field, d) in durations {
        if let Some(d) = d {
            p.check(
                d >= Duration::from_millis(100) && d <= Duration::from_secs(3600),
                || format!("task.{field} must be between 100ms and 1h"),
            );
        }
    }
    if let Some(n) = task.health_retries {
        p.check((1..=100).contains(&n), || {
            "task.health_retries must be from 1 to 100".to_string()
        });
    }
    p.check(task.mounts.len() <= 32, || {
        "task.mounts has more than 32 entries".to_string()
    });
    for m in &task.mounts {
        if let Err(e) = parse_mount(m) {
            p.0.push(format!("task.mounts: {e}"));
        }
    }
    let modes = [
        (
            "network_mode",
            &task.network_mode,
            &["bridge", "none", "host"][..],
        ),
        ("pid_mode", &task.pid_mode, &["", "host"][..]),
        (
            "ipc_mode",
            &task.ipc_mode,
            &["", "private", "shareable", "none", "host"][..],
        ),
    ];
    for (field, value, allowed) in modes {
        if let Some(v) = value {
            p.check(allowed.contains(&v.as_str()), || {
                format!(
                    "task.{field} `{}` is not one of {}",
                    excerpt(v),
                    allowed.join(", ")
                )
            });
        }
    }
    let capability = |c: &String| {
        !c.is_empty()
            && c.len() <= 64
            && c.chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
    };
    p.check(
        task.cap_add.len() <= 64 && task.cap_add.iter().all(capability),
        || "task.cap_add: capabilities are names like NET_ADMIN".to_string(),
    );
    p.check(
        task.devices.len() <= 32
            && task.devices.iter().all(|d| {
                d.starts_with("/dev/") && d.len() <= 256 && !d.contains(char::is_whitespace)
            }),
        || "task.devices: devices are paths under /dev/".to_string(),
    );
    p.check(task.constraints.len() <= 32, || {
        "task.constraints has more than 32 entries".to_string()
    });
    for c in &task.constraints {
        if let Err(e) = c.parse::<crate::Constraint>() {
            p.0.push(format!("task.constraints: {e}"));
        }
    }
    if let Some(n) = task.max_restarts {
        p.check(n <= 10_000, || {
            "task.max_restarts must be at most 10000".to_string()
        });
    }
    p.into_result()
}

/// A mount, `SOURCE:TARGET[:ro|:rw]`: SOURCE is an absolute host path or a volume name, TARGET
/// an absolute path in the container. Returns (source, target, read_only).
pub fn parse_mount(spec: &str) -> Result<(String, String, bool), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        _ => return Err(format!("`{}` is not SOURCE:TARGET[:ro]", excerpt(spec))),
    };
    let volume_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    if !(source.starts_with('/') || volume_name(source)) {
        return Err(format!(
            "`{}`: the source is an absolute host path or a volume name",
            excerpt(spec)
        ));
    }
    if !target.starts_with('/') || target.len() > 1024 {
        return Err(format!(
            "`{}`: the target is an absolute path in the container",
            excerpt(spec)
        ));
    }
    Ok((source.to_string(), target.to_string(), read_only))
}

/// A container port, `80`, `80/tcp` or `53/udp`, normalised to `port/proto`.
pub fn parse_container_port(spec: &str) -> Result<String, String> {
    let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!(
            "`{}`: protocol must be tcp, udp or sctp",
            excerpt(spec)
        ));
    }
    let n = parse_port(port).map_err(|e| format!("`{}`: {e}", excerpt(spec)))?;
    Ok(format!("{n}/{proto}"))
}

/// A host binding, `8080` or `127.0.0.1:8080`, split into (ip, port).
pub fn parse_host_binding(spec: &str) -> Result<(Option<String>, u16), String> {
    let (ip, port) = match spec.rsplit_once(':') {
        Some((ip, port)) => {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("`{}` is not an IP address", excerpt(ip)))?;
            (Some(ip.to_string()), port)
        }
        None => (None, spec),
    };
    Ok((ip, parse_port(port)?))
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!(
            "port `{}` is not a number from 1 to 65535",
            excerpt(s)
        )),
    }
}

/// A worker name becomes a NATS subject token and part of a consumer name.
pub fn validate_worker_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= MAX_WORKER_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Invalid(vec![format!(
            "worker name `{}` must be 1–{MAX_WORKER_NAME_LEN} letters, digits, `-` or `_`",
            excerpt(name)
        )]))
    }
}

/// At most 64 characters of untrusted text, for error messages.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::new("nginx:1.27")
    }

    #[test]
    fn a_plain_task_is_valid() {
        validate_task(&task()).unwrap();
    }

    #[test]
    fn every_problem_is_reported() {
        let mut t = task();
        t.image.clear();
        t.cpu = -1.0;
        t.memory = 10;
        t.env = vec!["NOEQUALS".into()];
        t.exposed_ports = vec!["99999/tcp".into()];
        let err = validate_task(&t).unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        assert!(err.to_string().contains("task.image is required"));
        assert!(err.to_string().contains("6 MiB"));
    }

    #[test]
    fn ports() {
        assert_eq!(parse_container_port("80").unwrap(), "80/tcp");
        assert_eq!(parse_container_port("53/udp").unwrap(), "53/udp");
        assert!(parse_container_port("0/tcp").is_err());
        assert!(parse_container_port("80/xyz").is_err());
        assert_eq!(parse_host_binding("8080").unwrap(), (None, 8080));
        assert_eq!(
            parse_host_binding("127.0.0.1:8080").unwrap(),
            (Some("127.0.0.1".into()), 8080)
        );
        assert!(parse_host_binding("nope:8080").is_err());
    }

    #[test]
    fn only_running_and_completed_can_be_requested() {
        let mut e = TaskEvent::submit(task());
        validate_event(&e).unwrap();
        e.state = State::Scheduled;
        assert!(validate_event(&e)
            .unwrap_err()
            .to_string()
            .contains("cannot be requested"));
        let stop = TaskEvent::stop(uuid::Uuid::new_v4());
        validate_event(&stop).unwrap();
    }

    #[test]
    fn secrets_are_named_in_env_and_never_sent_in_an_event() {
        let mut t = task();
        t.env = vec![
            "A=1".into(),
            EnvVar::Secret {
                name: "DB_PASSWORD".into(),
                secret: "db".into(),
            },
        ];
        assert!(validate_task(&t).is_ok());
        t.env.push(EnvVar::Secret {
            name: "X=Y".into(),
            secret: "no/slash".into(),
        });
        let problems = validate_task(&t).unwrap_err().0;
        assert_eq!(problems.len(), 2, "{problems:?}");
        let mut event = TaskEvent::submit(task());
        event
            .secrets
            .insert("db".into(), crate::SecretValue::new("v"));
        let refused = validate_event(&event).unwrap_err().to_string();
        assert!(refused.contains("cube secret put"), "{refused}");
    }

    #[test]
    fn worker_names() {
        validate_worker_name("worker-1").unwrap();
        assert!(validate_worker_name("a.b").is_err());
        assert!(validate_worker_name("").is_err());
        assert!(validate_worker_name(&"x".repeat(65)).is_err());
    }
}
