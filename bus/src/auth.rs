//! Who may do what on Cube's subjects: the nats-server `authorization` block for the three
//! roles, deny by default. The manager may run the cluster; a worker may take only its own
//! work and the shared queue's, and speak only for itself; a client may submit, stop and ask.
//!
//! Workers whose names are not known in advance (`docker compose up --scale worker=3` names
//! each replica after its container) share one user instead, [`Role::Workers`]: it may do
//! what any one worker may, under any worker name. That is weaker isolation (one of them can
//! take or report on another's work), traded for not having to list the names.
//!
//! Each user's replies arrive under its own inbox prefix, `_INBOX.<user>`, so no one can
//! read another's replies (connect with [`inbox_prefix`]).

use std::fmt::Write;

/// A role and the user name that plays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Manager,
    Client,
    /// A worker; its user name is the worker's name.
    Worker(String),
    /// Every worker that connects as the shared user [`WORKERS_USER`], under any name.
    Workers,
}

/// The user name of the shared worker role.
pub const WORKERS_USER: &str = "workers";

/// A user of the nats-server configuration. `password` is written as given: a literal, or a
/// `$VARIABLE` that nats-server reads from its environment.
#[derive(Debug, Clone)]
pub struct User {
    pub role: Role,
    pub password: String,
}

impl User {
    pub fn name(&self) -> &str {
        match &self.role {
            Role::Manager => "manager",
            Role::Client => "client",
            Role::Worker(name) => name,
            Role::Workers => WORKERS_USER,
        }
    }
}

/// The inbox prefix a user's connection must use.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// Names reserved for the manager, client and shared worker users.
pub const RESERVED: [&str; 3] = ["manager", "client", WORKERS_USER];

fn permissions(role: &Role, user: &str) -> (Vec<String>, Vec<String>, bool) {
    let inbox = format!("{}.>", inbox_prefix(user));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match role {
        Role::Manager => (
            s(&[
                "$JS.API.>",
                "$JS.ACK.CUBE_EVENTS.>",
                "$JS.ACK.CUBE_STATE.>",
                "$JS.ACK.CUBE_SERVICES.>",
                "$JS.FC.>",
                "tasks.pending",
                "tasks.pending.*",
                "tasks.rejected",
                "cube.journal.>",
                // The journal as stored: up to 20 ms of entries per message.
                "cube.journal_batch",
                "$KV.cube-tasks.>",
                "$KV.cube-nodes.>",
                "$KV.cube-admin.>",
                "$KV.cube-endpoints.>",
                // Secrets' values: no other role may read or write them.
                "$KV.cube-secrets.>",
                // The HTTP API's bearer tokens (hashed): only the manager reads or writes
                // them; clients manage them through `cube.api.tokens.*`.
                "$KV.cube-tokens.>",
                // The HTTP API (`--http-addr`) asks and submits as any client does.
                "tasks.events",
                "services.events",
                "cube.api.>",
                // Every manager answers on `cube.managers`; the HTTP API asks there too.
                "cube.managers",
            ]),
            vec![
                inbox,
                "nodes.heartbeat.*".into(),
                "cube.api.>".into(),
                "cube.managers".into(),
            ],
            // Answers to `cube.api.*` requests go to the requester's inbox.
            true,
        ),
        Role::Client => (
            s(&[
                "tasks.events",
                "services.events",
                // Service discovery: `cube service endpoints`, or any client watching.
                "$JS.API.STREAM.INFO.KV_cube-endpoints",
                "$JS.API.DIRECT.GET.KV_cube-endpoints.>",
                "$JS.API.STREAM.MSG.GET.KV_cube-endpoints",
                "$JS.API.CONSUMER.CREATE.KV_cube-endpoints",
                "$JS.API.CONSUMER.CREATE.KV_cube-endpoints.>",
                "$JS.API.CONSUMER.DELETE.KV_cube-endpoints.>",
                "$JS.FC.KV_cube-endpoints.>",
                "cube.api.>",
                // `cube managers`: asks every manager, leader or standby.
                "cube.managers",
                "$JS.API.INFO",
                "$JS.API.STREAM.INFO.CUBE_JOURNAL",
                "$JS.API.CONSUMER.CREATE.CUBE_JOURNAL",
                "$JS.API.CONSUMER.CREATE.CUBE_JOURNAL.>",
                "$JS.API.CONSUMER.MSG.NEXT.CUBE_JOURNAL.>",
                // `Cube::journal` asks its ordered consumer how far behind it is.
                "$JS.API.CONSUMER.INFO.CUBE_JOURNAL.>",
                "$JS.API.CONSUMER.DELETE.CUBE_JOURNAL.>",
                // `cube logs`: reads a task's output, and its newest chunk's sequence.
                "$JS.API.STREAM.INFO.CUBE_LOGS",
                "$JS.API.STREAM.MSG.GET.CUBE_LOGS",
                "$JS.API.CONSUMER.CREATE.CUBE_LOGS",
                "$JS.API.CONSUMER.CREATE.CUBE_LOGS.>",
                "$JS.API.CONSUMER.MSG.NEXT.CUBE_LOGS.>",
                "$JS.API.CONSUMER.DELETE.CUBE_LOGS.>",
            ]),
            vec![inbox, "tasks.rejected".into(), "cube.journal.>".into()],
            false,
        ),
        Role::Worker(_) | Role::Workers => {
            // NATS wildcards match whole tokens only, so the shared role's "any worker's
            // consumer" is `*`, which also matches the shared `workers` consumer.
            let (name, own) = match role {
                Role::Worker(name) => (name.clone(), format!("worker-{name}")),
                _ => ("*".to_string(), "*".to_string()),
            };
            let mut publish = vec![
                "$JS.API.INFO".to_string(),
                "$JS.API.STREAM.INFO.CUBE_WORK".into(),
                "$JS.API.STREAM.INFO.KV_cube-nodes".into(),
                // The Task DB: only its own tasks' records and those waiting on the shared
                // queue, each by direct get, whose subject names the key (a wildcard there
                // reaches only keys the pattern allows), and the fence, to see the bucket is
                // there. No bucket info (it can list every key), no get by sequence, no scan.
                format!("$JS.API.DIRECT.GET.KV_cube-tasks.$KV.cube-tasks.on.{name}.*"),
                "$JS.API.DIRECT.GET.KV_cube-tasks.$KV.cube-tasks.queue.*".into(),
                "$JS.API.DIRECT.GET.KV_cube-tasks.$KV.cube-tasks.fence".into(),
                format!("$KV.cube-nodes.{name}"),
                format!("nodes.heartbeat.{name}"),
                format!("tasks.state.*.{name}"),
                // Container output, under its own name; a restarted worker reads back where
                // its own subject stopped, by direct get.
                format!("tasks.logs.*.{name}"),
                format!("$JS.API.DIRECT.GET.CUBE_LOGS.tasks.logs.*.{name}"),
            ];
            for (consumer, filter) in [
                (own.as_str(), format!("tasks.pending.{name}")),
                ("workers", "tasks.pending".to_string()),
            ] {
                publish.push(format!("$JS.API.CONSUMER.INFO.CUBE_WORK.{consumer}"));
                publish.push(format!(
                    "$JS.API.CONSUMER.CREATE.CUBE_WORK.{consumer}.{filter}"
                ));
                publish.push(format!(
                    "$JS.API.CONSUMER.DURABLE.CREATE.CUBE_WORK.{consumer}"
                ));
                publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.CUBE_WORK.{consumer}"));
                publish.push(format!("$JS.ACK.CUBE_WORK.{consumer}.>"));
            }
            (publish, vec![inbox], false)
        }
    }
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `authorization { users = [...] }` block for these users.
pub fn server_config(users: &[User]) -> String {
    let mut out = String::from(
        "# Cube's users and what each may do (deny by default). Generated by `cube auth-config`.\nauthorization {\n  users = [\n",
    );
    for u in users {
        let (publish, subscribe, responses) = permissions(&u.role, u.name());
        let _ = writeln!(out, "    {{");
        let _ = writeln!(out, "      user: \"{}\"", u.name());
        let password = if u.password.starts_with('$') {
            u.password.clone()
        } else {
            format!("\"{}\"", u.password)
        };
        let _ = writeln!(out, "      password: {password}");
        let _ = writeln!(out, "      permissions: {{");
        let _ = writeln!(out, "        publish: {{ allow: [{}] }}", quoted(&publish));
        let _ = writeln!(
            out,
            "        subscribe: {{ allow: [{}] }}",
            quoted(&subscribe)
        );
        if responses {
            let _ = writeln!(out, "        allow_responses: true");
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(out, "    }}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// A random password: 122 bits from the operating system's generator (a v4 UUID), in hex.
pub fn random_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The environment variable nats-server reads a role's password from, in a configuration
/// written with passwords by reference (`$CUBE_WORKER_NODE_1_PASSWORD` for worker `node-1`).
pub fn password_variable(role: &Role) -> String {
    let who = match role {
        Role::Manager => "MANAGER".to_string(),
        Role::Client => "CLIENT".to_string(),
        Role::Worker(name) => format!("WORKER_{}", name.to_uppercase().replace('-', "_")),
        Role::Workers => "WORKERS".to_string(),
    };
    format!("$CUBE_{who}_PASSWORD")
}

/// The users of a cluster with these named workers, and with the shared worker user if
/// `shared_workers`, their passwords read from the environment.
pub fn users_by_reference(shared_workers: bool, workers: &[String]) -> Vec<User> {
    let mut roles = vec![Role::Manager, Role::Client];
    if shared_workers {
        roles.push(Role::Workers);
    }
    roles.extend(workers.iter().cloned().map(Role::Worker));
    roles
        .into_iter()
        .map(|role| User {
            password: password_variable(&role),
            role,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped `nats/auth.conf` is this generator's output: they cannot drift apart.
    #[test]
    fn the_shipped_configuration_is_generated() {
        let shipped = include_str!("../../nats/auth.conf");
        assert_eq!(
            shipped,
            server_config(&users_by_reference(true, &[])),
            "regenerate with `cube auth-config --password-env --shared-workers > nats/auth.conf`"
        );
    }

    #[test]
    fn the_shared_worker_user_may_act_as_any_worker_but_not_submit() {
        let (publish, subscribe, responses) = permissions(&Role::Workers, WORKERS_USER);
        for any in [
            "nodes.heartbeat.*",
            "$KV.cube-nodes.*",
            "tasks.state.*.*",
            "$JS.API.CONSUMER.DURABLE.CREATE.CUBE_WORK.*",
            "$JS.API.CONSUMER.CREATE.CUBE_WORK.*.tasks.pending.*",
            "$JS.API.CONSUMER.CREATE.CUBE_WORK.workers.tasks.pending",
            "$JS.ACK.CUBE_WORK.*.>",
        ] {
            assert!(publish.contains(&any.to_string()), "{any} missing");
        }
        assert!(!publish
            .iter()
            .any(|s| s == "tasks.events" || s.starts_with("tasks.pending") || s == "$JS.API.>"));
        assert_eq!(subscribe, vec!["_INBOX.workers.>".to_string()]);
        assert!(!responses);
        assert_eq!(password_variable(&Role::Workers), "$CUBE_WORKERS_PASSWORD");
    }

    #[test]
    fn a_worker_may_publish_state_only_under_its_name() {
        let (publish, subscribe, _) = permissions(&Role::Worker("w1".into()), "w1");
        assert!(publish.contains(&"tasks.state.*.w1".to_string()));
        assert!(!publish
            .iter()
            .any(|s| s == "tasks.events" || s.starts_with("tasks.pending")));
        assert_eq!(subscribe, vec!["_INBOX.w1.>".to_string()]);
    }

    /// Whether a NATS subject pattern (`*` one token, `>` the rest) matches a subject.
    fn matches(pattern: &str, subject: &str) -> bool {
        let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// The `cube-tokens` bucket (the HTTP API's hashed tokens) is the manager's alone: no
    /// other role may read, watch or write it by any JetStream or KV subject.
    #[test]
    fn only_the_manager_may_touch_the_tokens_bucket() {
        assert!(matches("$JS.API.>", "$JS.API.STREAM.INFO.KV_cube-tokens"));
        assert!(matches("a.*.c", "a.b.c") && !matches("a.*", "a.b.c"));
        let subjects = [
            "$KV.cube-tokens.0123456789ab",
            "$JS.API.STREAM.INFO.KV_cube-tokens",
            "$JS.API.DIRECT.GET.KV_cube-tokens.$KV.cube-tokens.0123456789ab",
            "$JS.API.STREAM.MSG.GET.KV_cube-tokens",
            "$JS.API.CONSUMER.CREATE.KV_cube-tokens",
            "$JS.API.CONSUMER.CREATE.KV_cube-tokens.x.$KV.cube-tokens.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.KV_cube-tokens.x",
            "$JS.API.CONSUMER.MSG.NEXT.KV_cube-tokens.x",
            "$JS.API.STREAM.PURGE.KV_cube-tokens",
            "$JS.API.STREAM.DELETE.KV_cube-tokens",
            "$JS.API.STREAM.UPDATE.KV_cube-tokens",
            "$JS.FC.KV_cube-tokens.x",
        ];
        for role in [Role::Client, Role::Workers, Role::Worker("w1".into())] {
            let user = User {
                role: role.clone(),
                password: String::new(),
            };
            let (publish, subscribe, _) = permissions(&role, user.name());
            for subject in subjects {
                for pattern in publish.iter().chain(&subscribe) {
                    assert!(
                        !matches(pattern, subject),
                        "{role:?} may reach {subject} by {pattern}"
                    );
                }
            }
        }
        let (manager, _, _) = permissions(&Role::Manager, "manager");
        for subject in subjects {
            assert!(
                manager.iter().any(|p| matches(p, subject)),
                "the manager may not reach {subject}"
            );
        }
    }

    #[test]
    fn workers_publish_logs_and_clients_read_them() {
        let (worker, _, _) = permissions(&Role::Worker("w1".into()), "w1");
        let may = |subject: &str| worker.iter().any(|p| matches(p, subject));
        let id = "0b5e9bd6-3c53-4b0e-a2a3-5c7d2b0d7c11";
        assert!(may(&format!("tasks.logs.{id}.w1")));
        assert!(may(&format!(
            "$JS.API.DIRECT.GET.CUBE_LOGS.tasks.logs.{id}.w1"
        )));
        // Another worker's output: neither written nor read; and no get by sequence.
        assert!(!may(&format!("tasks.logs.{id}.w2")));
        assert!(!may(&format!("tasks.logs.{id}")));
        assert!(!may(&format!(
            "$JS.API.DIRECT.GET.CUBE_LOGS.tasks.logs.{id}.w2"
        )));
        assert!(!may("$JS.API.DIRECT.GET.CUBE_LOGS"));
        assert!(!may("$JS.API.STREAM.MSG.GET.CUBE_LOGS"));
        let (client, _, _) = permissions(&Role::Client, "client");
        assert!(client.contains(&"$JS.API.CONSUMER.MSG.NEXT.CUBE_LOGS.>".to_string()));
        assert!(!client.iter().any(|s| s.starts_with("tasks.logs")));
    }

    #[test]
    fn a_worker_reads_only_its_own_task_records() {
        let (worker, _, _) = permissions(&Role::Worker("w1".into()), "w1");
        let may = |subject: &str| worker.iter().any(|p| matches(p, subject));
        let get = |key: &str| format!("$JS.API.DIRECT.GET.KV_cube-tasks.$KV.cube-tasks.{key}");
        let id = "0b5e9bd6-3c53-4b0e-a2a3-5c7d2b0d7c11";
        assert!(may(&get(&format!("on.w1.{id}"))));
        // A task on the shared queue, and the fence.
        assert!(may(&get(&format!("queue.{id}"))));
        assert!(may(&get("fence")));
        for denied in [
            get(&format!("on.w2.{id}")),
            // A task on no worker; and wildcards, which a direct get would answer with the
            // newest record of any key they match.
            get(id),
            get("*"),
            get(">"),
            get("on.*.*"),
            get("service.web"),
            // By sequence, or a scan: either would reach every record.
            "$JS.API.DIRECT.GET.KV_cube-tasks".to_string(),
            "$JS.API.STREAM.MSG.GET.KV_cube-tasks".to_string(),
            "$JS.API.CONSUMER.CREATE.KV_cube-tasks".to_string(),
            // The bucket's info can list its keys.
            "$JS.API.STREAM.INFO.KV_cube-tasks".to_string(),
            "$KV.cube-tasks.on.w1.x".to_string(),
        ] {
            assert!(!may(&denied), "{denied}");
        }
    }
}
