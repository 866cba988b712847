//! `cube.api.*`: queries answered at once from the manager's picture of the cluster.

use std::collections::BTreeMap;

use chrono::Utc;
use cube_shared::secret::{SecretInfo, SecretName, SecretPut};
use cube_shared::service::ServiceQuery;
use cube_shared::subjects::{
    API_NODES_DRAIN, API_NODES_FORGET, API_NODES_LIST, API_SECRETS_LIST, API_SECRETS_PUT,
    API_SECRETS_RM, API_SERVICES_GET, API_SERVICES_LIST, API_TASKS_GET, API_TASKS_LIST,
    API_TOKENS_CREATE, API_TOKENS_LIST, API_TOKENS_REVOKE,
};
use cube_shared::token::{TokenCreate, TokenRevoke};
use cube_shared::wire::{self, encode, MAX_MESSAGE_BYTES};
use cube_shared::ServiceStatus;
use cube_shared::{ApiReply, DrainRequest, ForgetRequest, Task, TaskQuery};
use cube_shared::{NodeListQuery, TaskList, TaskListQuery};
use serde::Serialize;
use tracing::{debug, warn};

use crate::run::Shell;
use crate::tokens;

/// A reply must fit in one NATS message (1 MiB by default); lists stop short of that.
const MAX_REPLY_BYTES: usize = 900 * 1024;

impl Shell {
    pub(crate) async fn on_api(&mut self, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let payload = match msg.subject.as_str() {
            API_TASKS_LIST => respond(self.list_tasks(&msg.payload)),
            API_TASKS_GET => respond(
                wire::decode::<TaskQuery>(&msg.payload, MAX_MESSAGE_BYTES)
                    .map_err(ApiError::from)
                    .and_then(|q| {
                        let cluster = self.rules.cluster();
                        Ok(cluster.shown(cluster.find(&q.id)?))
                    }),
            ),
            API_SERVICES_LIST => respond::<Vec<ServiceStatus>>(Ok(self.list_services())),
            API_SERVICES_GET => respond(
                wire::decode::<ServiceQuery>(&msg.payload, MAX_MESSAGE_BYTES)
                    .map_err(ApiError::from)
                    .and_then(|q| {
                        let status = self
                            .rules
                            .service_status(&q.name)
                            .ok_or(ApiError::NoService(q.name))?;
                        Ok(fit_reply(status, MAX_REPLY_BYTES))
                    }),
            ),
            API_NODES_LIST => respond(self.list_nodes(&msg.payload)),
            API_NODES_DRAIN => {
                let result = match wire::decode::<DrainRequest>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(r) => self.drain(&r.name, r.drain).await,
                    Err(e) => Err(e.into()),
                };
                respond(result)
            }
            API_NODES_FORGET => {
                let result = match wire::decode::<ForgetRequest>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(r) => self.forget(&r.name).await,
                    Err(e) => Err(e.into()),
                };
                respond(result)
            }
            API_SECRETS_PUT => {
                let result = match wire::decode::<SecretPut>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(put) => self.secrets.put(put).await.map_err(ApiError::from),
                    Err(e) => Err(e.into()),
                };
                respond(result)
            }
            API_SECRETS_RM => {
                let result = match wire::decode::<SecretName>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(r) => self.secrets.remove(&r.name).await.map_err(ApiError::from),
                    Err(e) => Err(e.into()),
                };
                respond(result)
            }
            API_SECRETS_LIST => respond::<Vec<SecretInfo>>(Ok(self.secrets.list())),
            API_TOKENS_CREATE => respond(
                match wire::decode::<TokenCreate>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(r) => tokens::create(&self.topo.tokens, r)
                        .await
                        .map_err(Into::into),
                    Err(e) => Err(e.into()),
                },
            ),
            API_TOKENS_REVOKE => respond(
                match wire::decode::<TokenRevoke>(&msg.payload, MAX_MESSAGE_BYTES) {
                    Ok(r) => tokens::revoke(&self.topo.tokens, &r.token)
                        .await
                        .map_err(Into::into),
                    Err(e) => Err(e.into()),
                },
            ),
            API_TOKENS_LIST => respond(tokens::list(&self.topo.tokens).await.map_err(Into::into)),
            other => {
                debug!(subject = other, "unknown API call");
                respond::<()>(Err(ApiError::UnknownCall(other.to_string())))
            }
        };
        if let Err(e) = self.client.publish(reply, payload).await {
            warn!(error = %e, "answering an API call");
        }
    }

    /// Every service with its counts (without the copies and endpoints, which
    /// `cube.api.services.get` gives per service), as many as fit one reply.
    fn list_services(&self) -> Vec<ServiceStatus> {
        let mut size = 0;
        self.rules
            .services()
            .keys()
            .filter_map(|name| self.rules.service_status(name))
            .map(|mut s| {
                s.copies.clear();
                s.endpoints.clear();
                s.service
                    .versions
                    .retain(|v| v.version == s.service.version);
                s.service.applied.clear();
                s
            })
            .take_while(|s| {
                size += encode(s).len() + 1;
                size < MAX_REPLY_BYTES
            })
            .collect()
    }

    /// A page of nodes, by name, after `after` if the query names one. An empty body or
    /// `null` (what clients sent before there were pages) is the first page.
    fn list_nodes(&self, body: &[u8]) -> Result<Vec<cube_shared::Node>, ApiError> {
        let query: Option<NodeListQuery> =
            if body.trim_ascii().is_empty() || body.trim_ascii() == b"null" {
                None
            } else {
                wire::decode(body, MAX_MESSAGE_BYTES)?
            };
        let after = query.and_then(|q| q.after);
        Ok(fit_list(
            self.rules.cluster().node_list(after.as_deref()),
            MAX_REPLY_BYTES,
        ))
    }

    fn list_tasks(&self, body: &[u8]) -> Result<TaskList, ApiError> {
        let query: TaskListQuery = if body.is_empty() {
            TaskListQuery::default()
        } else {
            wire::decode(body, MAX_MESSAGE_BYTES)?
        };
        let mut counts = BTreeMap::new();
        let mut matching: Vec<&Task> = self
            .rules
            .cluster()
            .tasks()
            .inspect(|t| *counts.entry(t.state).or_insert(0) += 1)
            .filter(|t| query.state.is_none_or(|s| t.state == s))
            .collect();
        let total = matching.len();
        matching.sort_unstable_by(|a, b| b.submitted_at.cmp(&a.submitted_at).then(a.id.cmp(&b.id)));
        let mut size = 0;
        let cluster = self.rules.cluster();
        let tasks = matching
            .into_iter()
            .take(query.limit.unwrap_or(1000))
            .map(|t| cluster.shown(t))
            .take_while(|t| {
                size += encode(t).len() + 1;
                size < MAX_REPLY_BYTES
            })
            .collect();
        Ok(TaskList {
            total,
            tasks,
            counts,
        })
    }

    /// Drains or undrains a node: recorded in the `cube-admin` bucket first, so a restarted
    /// manager keeps it, then applied by the rules.
    async fn drain(&mut self, name: &str, drain: bool) -> Result<cube_shared::Node, ApiError> {
        self.rules.check_drain(name)?;
        let key = format!("drain.{name}");
        if drain {
            let at = Utc::now().to_rfc3339().into();
            self.topo
                .admin
                .put(&key, at)
                .await
                .map_err(|e| ApiError::RecordDrain(e.into()))?;
        } else {
            self.topo
                .admin
                .delete(&key)
                .await
                .map_err(|e| ApiError::RecordDrain(e.into()))?;
        }
        Ok(self.rules.set_drain(name, drain, Utc::now())?)
    }

    /// Forgets a silent node: the rules lose its tasks, then its record in the `cube-nodes`
    /// bucket goes, so a restarted manager does not bring it back.
    async fn forget(&mut self, name: &str) -> Result<(), ApiError> {
        self.rules.forget(name, Utc::now())?;
        if let Err(e) = self.topo.nodes.delete(name).await {
            warn!(node = name, error = %e, "removing a forgotten node's record");
        }
        Ok(())
    }
}

/// Why an API call is refused; its text (with causes) is the reply's error.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    BadRequest(#[from] wire::DecodeError),
    #[error(transparent)]
    NotFound(#[from] crate::cluster::NotFound),
    #[error(transparent)]
    NoSuchNode(#[from] crate::rules::NoSuchNode),
    #[error(transparent)]
    Forget(#[from] crate::rules::ForgetError),
    #[error("recording the drain")]
    RecordDrain(#[source] cube_bus::NatsError),
    #[error("unknown API call {0}")]
    UnknownCall(String),
    #[error("no service {0}")]
    NoService(String),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
}

impl ApiError {
    /// The reply's text: the message, with the causes of a failed write (the others carry
    /// their cause in their message already).
    fn reason(&self) -> String {
        match self {
            ApiError::RecordDrain(_)
            | ApiError::Secret(_)
            | ApiError::Tokens(tokens::TokenError::Bucket { .. }) => {
                cube_bus::Chain(self).to_string()
            }
            other => other.to_string(),
        }
    }
}

/// The first items of `list` whose encoding fits in `max` bytes: a list too long for one
/// NATS message would not be sent at all (ten thousand nodes are about 4 MB).
fn fit_list<T: Serialize>(list: Vec<T>, max: usize) -> Vec<T> {
    // `[`, `]`, and a comma between two items.
    let mut size = 1;
    list.into_iter()
        .take_while(|item| {
            size += encode(item).len() + 1;
            size <= max
        })
        .collect()
}

/// A service's status within `max` bytes encoded. Its record fits a message, but with its
/// copies it may not: older versions go first, then, for a service of thousands of copies,
/// the copies and endpoints that do not fit (its counts still count every copy).
fn fit_reply(mut status: ServiceStatus, max: usize) -> ServiceStatus {
    while encode(&status).len() > max && status.service.versions.len() > 1 {
        status.service.versions.remove(0);
    }
    if encode(&status).len() <= max {
        return status;
    }
    let copies = std::mem::take(&mut status.copies);
    let endpoints = std::mem::take(&mut status.endpoints);
    // Each element adds its encoding and a comma.
    let mut size = encode(&status).len();
    status.copies = copies
        .into_iter()
        .take_while(|c| {
            size += encode(c).len() + 1;
            size <= max
        })
        .collect();
    status.endpoints = endpoints
        .into_iter()
        .take_while(|e| {
            size += encode(e).len() + 1;
            size <= max
        })
        .collect();
    status
}

fn respond<T: Serialize>(result: Result<T, ApiError>) -> bytes::Bytes {
    encode(&match result {
        Ok(v) => ApiReply::Ok(v),
        Err(e) => ApiReply::Error(e.reason()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cube_shared::service::{CopyStatus, Endpoint, Service, ServiceKind, ServiceVersion};
    use uuid::Uuid;

    /// Service `web` at version 3 of 3 (each template about 200 KB), with `copies` copies
    /// and as many endpoints.
    fn status(copies: usize) -> ServiceStatus {
        let now = Utc::now();
        let version = |version| {
            let mut template = Task::new("cube-busybox:latest");
            template.cmd = vec!["x".repeat(200 * 1024)];
            ServiceVersion {
                version,
                template,
                created_at: now,
                good: true,
                failed: false,
            }
        };
        ServiceStatus {
            service: Service {
                name: "web".into(),
                kind: ServiceKind::Service,
                count: copies as u32,
                update: Default::default(),
                max_failures: 0,
                version: 3,
                versions: (1..=3).map(version).collect(),
                rollout: None,
                removed: false,
                finished: None,
                next_copy: copies as u64 + 1,
                applied: Vec::new(),
                created_at: now,
                updated_at: now,
            },
            desired: copies as u32,
            running: copies as u32,
            healthy: copies as u32,
            completed: 0,
            failed: 0,
            copies: (0..copies)
                .map(|i| CopyStatus {
                    task_id: Uuid::new_v4(),
                    name: format!("web.{i}"),
                    version: 3,
                    state: "running".into(),
                    node: Some("worker-1".into()),
                    healthy: true,
                    stopping: false,
                })
                .collect(),
            endpoints: (0..copies)
                .map(|_| Endpoint {
                    task_id: Uuid::new_v4(),
                    node: "worker-1".into(),
                    address: "10.0.0.1".into(),
                    version: 3,
                    ports: [("80/tcp".to_string(), 8080)].into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_service_that_fits_is_answered_whole() {
        let whole = status(10);
        assert!(encode(&whole).len() <= MAX_REPLY_BYTES);
        assert_eq!(fit_reply(whole.clone(), MAX_REPLY_BYTES), whole);
    }

    #[test]
    fn a_service_of_thousands_of_copies_is_answered_within_one_message() {
        // 10,000 copies and endpoints, ten times the most a service may ask for now (a record
        // kept from before that limit may hold them): well over 1 MiB.
        let whole = status(10_000);
        assert!(encode(&whole).len() > 2 * 1024 * 1024);
        let fitted = fit_reply(whole.clone(), MAX_REPLY_BYTES);
        let size = encode(&fitted).len();
        assert!(size <= MAX_REPLY_BYTES, "{size} bytes");
        // Older versions went first; the current one stays, and so do the counts.
        let versions: Vec<u64> = fitted.service.versions.iter().map(|v| v.version).collect();
        assert_eq!(versions, [3]);
        assert_eq!((fitted.desired, fitted.running), (10_000, 10_000));
        // Copies come before endpoints, in order, as many as fit.
        assert!(!fitted.copies.is_empty() && fitted.copies.len() < 10_000);
        assert_eq!(fitted.copies[..], whole.copies[..fitted.copies.len()]);
        assert!(fitted.endpoints.is_empty());
        // Nothing more would have fit.
        let mut more = fitted.clone();
        more.copies.push(whole.copies[fitted.copies.len()].clone());
        assert!(encode(&more).len() > MAX_REPLY_BYTES);
    }

    #[test]
    fn a_list_too_long_for_one_reply_is_cut_to_what_fits() {
        let names: Vec<String> = (0..10_000).map(|i| format!("node-{i:05}")).collect();
        let whole = encode(&names).len();
        assert!(whole > 100_000);
        let cut = fit_list(names.clone(), 100_000);
        assert!(encode(&cut).len() <= 100_000, "{}", encode(&cut).len());
        assert!(
            cut.len() > 100_000 / 20,
            "it keeps all that fits: {}",
            cut.len()
        );
        assert!(cut[..] == names[..cut.len()], "the first ones, in order");
        assert!(
            fit_list(names.clone(), whole) == names,
            "a list that fits is whole"
        );
        assert!(fit_list(names.clone(), whole - 1).len() == names.len() - 1);
    }
}
