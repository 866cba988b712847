//! A client of Cube's public NATS contract, and the only one Cube itself uses: the `cube` CLI,
//! the web API and the end-to-end tests all speak through [`Cube`]. Every call is bounded by
//! the client's timeout and fails with a typed [`Error`] that keeps the NATS error as its
//! source.
//!
//! What it speaks: `cube.api.*` requests (answered by the manager), TaskEvents published to
//! `tasks.events` (stored by JetStream, then read by the manager), and the journal and logs
//! streams. Nothing here needs more than the `client` role's permissions.

mod error;
mod journal;
mod streams;

use std::time::Duration;

use async_nats::jetstream;
use cube_shared::secret::{SecretInfo, SecretName, SecretPut, SecretValue};
use cube_shared::service::ServiceQuery;
use cube_shared::subjects::{
    API_NODES_DRAIN, API_NODES_FORGET, API_NODES_LIST, API_SECRETS_LIST, API_SECRETS_PUT,
    API_SECRETS_RM, API_SERVICES_GET, API_SERVICES_LIST, API_TASKS_GET, API_TASKS_LIST,
    API_TOKENS_CREATE, API_TOKENS_LIST, API_TOKENS_REVOKE, ENDPOINTS_DB, EVENTS, MANAGERS,
    SERVICE_EVENTS,
};
use cube_shared::token::{TokenCreate, TokenCreated, TokenInfo, TokenRevoke, TokenRole};
use cube_shared::wire::{self, encode, MAX_EVENT_BYTES};
use cube_shared::{
    check_resubmission, ApiReply, DrainRequest, Endpoints, ForgetRequest, ManagerInfo, ManagerRole,
    Node, NodeListQuery, ServiceEvent, ServiceSpec, ServiceStatus, State, Task, TaskEvent,
    TaskList, TaskListQuery, TaskQuery,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

pub use cube_bus::Chain;
pub use error::{Error, NatsError};
pub use journal::{entries_of, JournalFollower, JournalRead, JOURNAL_SCAN};
pub use streams::{LogTail, LOG_TAIL_BYTES};

/// How long a call may take unless [`Cube::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Cube::managers`] gathers answers unless told otherwise.
pub const MANAGERS_WAIT: Duration = Duration::from_millis(500);

/// How often [`Cube::wait`] asks the manager about the task.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// A handle on a Cube cluster through one NATS connection; cheap to clone.
#[derive(Clone)]
pub struct Cube {
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
}

impl Cube {
    /// Over an existing connection (which decides the credentials and inbox prefix).
    pub fn new(client: async_nats::Client) -> Cube {
        Cube {
            js: jetstream::new(client.clone()),
            client,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Connects to NATS at `url` once, with `credentials`. Callers that must wait for a
    /// server to come up, or explain a refusal, connect themselves and use [`Cube::new`].
    pub async fn connect(url: &str, credentials: &cube_bus::Credentials) -> Result<Cube, Error> {
        let connect = |source: NatsError| Error::Connect {
            url: url.to_string(),
            source,
        };
        let options = credentials
            .options()
            .await
            .map_err(|e| connect(Box::new(e)))?;
        let servers = cube_bus::servers(url).map_err(|e| connect(Box::new(e)))?;
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| connect(Box::new(e)))?;
        Ok(Cube::new(client))
    }

    /// The same handle with another bound on each call.
    pub fn with_timeout(mut self, timeout: Duration) -> Cube {
        self.timeout = timeout;
        self
    }

    /// The NATS connection, for what the contract offers beyond these calls (live feeds).
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context of the connection.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// A `cube.api.*` request with any body; the typed calls below are built on it.
    pub async fn request<Q: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        body: &Q,
    ) -> Result<T, Error> {
        let timeout = || Error::Timeout {
            what: subject.to_string(),
            after: self.timeout,
        };
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(subject.to_string(), encode(body)),
        )
        .await
        .map_err(|_| timeout())?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Error::NoManager(subject.to_string()),
            async_nats::RequestErrorKind::TimedOut => timeout(),
            _ => Error::nats(format!("requesting {subject}"))(e),
        })?;
        let reply: ApiReply<T> =
            wire::decode(&reply.payload, usize::MAX).map_err(|source| Error::Reply {
                subject: subject.to_string(),
                source,
            })?;
        reply.into_result().map_err(Error::Manager)
    }

    /// Tasks newest first, with how many matched and how many are in each state.
    pub async fn tasks(&self, query: &TaskListQuery) -> Result<TaskList, Error> {
        self.request(API_TASKS_LIST, query).await
    }

    /// One task by full id, unique id prefix, or name; [`Error::Manager`] if none matches.
    pub async fn task(&self, id: &str) -> Result<Task, Error> {
        self.request(API_TASKS_GET, &TaskQuery { id: id.to_string() })
            .await
    }

    /// The workers' nodes, as the manager sees them, sorted by name. A reply holds as many as
    /// fit in one message (about 2,000), so they are asked for a page at a time, each after
    /// the last name received, until a page is empty.
    pub async fn nodes(&self) -> Result<Vec<Node>, Error> {
        let mut all: Vec<Node> = Vec::new();
        loop {
            let after = all.last().map(|n| n.name.clone());
            let query = NodeListQuery {
                after: after.clone(),
            };
            let page: Vec<Node> = self.request(API_NODES_LIST, &query).await?;
            match (page.last(), &after) {
                (None, _) => return Ok(all),
                // A manager that does not page answers the first page again.
                (Some(last), Some(after)) if last.name <= *after => return Ok(all),
                _ => all.extend(page),
            }
        }
    }

    /// Every manager process that answers on `cube.managers` within `wait` (leader or
    /// standby: each answers for itself), the leader first, then standbys by start time.
    /// One request, every answer gathered until `wait` has passed; an empty list means no
    /// manager answered. An answer that does not parse is skipped.
    pub async fn managers(&self, wait: Duration) -> Result<Vec<ManagerInfo>, Error> {
        use futures::StreamExt;
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(Error::nats(format!(
                "subscribing to the answers on {MANAGERS}"
            )))?;
        let ask = async {
            self.client
                .publish_with_reply(MANAGERS, inbox, bytes::Bytes::new())
                .await
                .map_err(Error::nats(format!("asking on {MANAGERS}")))?;
            self.client
                .flush()
                .await
                .map_err(Error::nats(format!("asking on {MANAGERS}")))
        };
        tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("NATS (asking on {MANAGERS})"),
                after: self.timeout,
            })??;
        let deadline = tokio::time::Instant::now() + wait;
        let mut managers: Vec<ManagerInfo> = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await {
            if let Ok(info) = wire::decode::<ManagerInfo>(&msg.payload, usize::MAX) {
                // One answer per process, should a request ever be delivered twice.
                if !managers.iter().any(|m| m.id == info.id) {
                    managers.push(info);
                }
            }
        }
        sort_managers(&mut managers);
        Ok(managers)
    }

    /// Drains a node (`drain`) or gives it work again; returns the node as it is now.
    pub async fn drain(&self, name: &str, drain: bool) -> Result<Node, Error> {
        let body = DrainRequest {
            name: name.to_string(),
            drain,
        };
        self.request(API_NODES_DRAIN, &body).await
    }

    /// Gives up on a silent node that will not return (`cube nodes forget`): its tasks are
    /// lost at once and restarted elsewhere per their policy.
    pub async fn forget(&self, name: &str) -> Result<(), Error> {
        let body = ForgetRequest {
            name: name.to_string(),
        };
        self.request(API_NODES_FORGET, &body).await
    }

    /// Stores (or replaces) a secret, which only the manager can read (`cube secret put`).
    pub async fn put_secret(&self, name: &str, value: SecretValue) -> Result<(), Error> {
        let body = SecretPut {
            name: name.to_string(),
            value,
        };
        self.request(API_SECRETS_PUT, &body).await
    }

    /// Removes a secret (`cube secret rm`).
    pub async fn remove_secret(&self, name: &str) -> Result<(), Error> {
        let body = SecretName {
            name: name.to_string(),
        };
        self.request(API_SECRETS_RM, &body).await
    }

    /// Every secret's name, size and time of change: never a value (`cube secret ls`).
    pub async fn secrets(&self) -> Result<Vec<SecretInfo>, Error> {
        self.request(API_SECRETS_LIST, &()).await
    }

    /// Makes an HTTP API token with `role` (named `name`, or after its role and id); the
    /// answer is the only time the token itself is shown.
    pub async fn create_token(
        &self,
        role: TokenRole,
        name: Option<String>,
    ) -> Result<TokenCreated, Error> {
        self.request(API_TOKENS_CREATE, &TokenCreate { role, name })
            .await
    }

    /// Revokes the HTTP API token with this name or id; returns what it was.
    pub async fn revoke_token(&self, name_or_id: &str) -> Result<TokenInfo, Error> {
        let body = TokenRevoke {
            token: name_or_id.to_string(),
        };
        self.request(API_TOKENS_REVOKE, &body).await
    }

    /// Every HTTP API token (names, roles, when made; never the tokens), oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.request(API_TOKENS_LIST, &()).await
    }

    /// Submits `task` (its id decides which task it is); returns the event published.
    pub async fn submit(&self, task: Task) -> Result<TaskEvent, Error> {
        let event = TaskEvent::submit(task);
        self.publish(&event).await?;
        Ok(event)
    }

    /// Asks Cube to stop task `id`; returns the event published.
    pub async fn stop(&self, id: Uuid) -> Result<TaskEvent, Error> {
        let event = TaskEvent::stop(id);
        self.publish(&event).await?;
        Ok(event)
    }

    /// Refuses, as [`Error::Conflict`], a submission of `task` whose id the manager already
    /// records with another specification. The manager refuses it too, but only in its
    /// journal: a client that can answer at once should.
    pub async fn check_resubmission(&self, task: &Task) -> Result<(), Error> {
        match self.task(&task.id.to_string()).await {
            Ok(existing) => Ok(check_resubmission(&existing, task)?),
            Err(Error::Manager(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Publishes a TaskEvent to `tasks.events` and waits until JetStream has stored it. Its
    /// id goes as `Nats-Msg-Id`, so publishing it again within the stream's window is
    /// harmless.
    pub async fn publish(&self, event: &TaskEvent) -> Result<(), Error> {
        self.store(EVENTS, event.id, encode(event)).await
    }

    /// Publishes a ServiceEvent to `services.events` and waits until JetStream has stored it
    /// (idempotent as [`Cube::publish`]). The manager applies it, or refuses it on
    /// `tasks.rejected` and in the journal.
    pub async fn publish_service(&self, event: &ServiceEvent) -> Result<(), Error> {
        self.store(SERVICE_EVENTS, event.id, encode(event)).await
    }

    /// Deploys `spec` (creates the service or changes it); returns the event published.
    pub async fn deploy(&self, spec: ServiceSpec) -> Result<ServiceEvent, Error> {
        let event = ServiceEvent::deploy(spec);
        self.publish_service(&event).await?;
        Ok(event)
    }

    /// Every service with its counts (no copies: see [`Cube::service`]).
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, Error> {
        self.request(API_SERVICES_LIST, &()).await
    }

    /// One service with its copies, versions, rollout and endpoints.
    pub async fn service(&self, name: &str) -> Result<ServiceStatus, Error> {
        let query = ServiceQuery {
            name: name.to_string(),
        };
        self.request(API_SERVICES_GET, &query).await
    }

    /// Service `name`'s healthy endpoints as the `cube-endpoints` bucket holds them (what any
    /// NATS client watching the bucket sees); `None` if it holds nothing for the service.
    pub async fn endpoints(&self, name: &str) -> Result<Option<Endpoints>, Error> {
        let read = async {
            let store = self
                .js
                .get_key_value(ENDPOINTS_DB)
                .await
                .map_err(Error::nats(format!("opening the {ENDPOINTS_DB} bucket")))?;
            let value = store
                .get(name)
                .await
                .map_err(Error::nats(format!("reading {name} in {ENDPOINTS_DB}")))?;
            value
                .map(|v| {
                    wire::decode::<Endpoints>(&v, usize::MAX).map_err(|source| Error::Reply {
                        subject: ENDPOINTS_DB.to_string(),
                        source,
                    })
                })
                .transpose()
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("reading the {ENDPOINTS_DB} bucket"),
                after: self.timeout,
            })?
    }

    /// Stores `payload` on `subject` with message id `id`, waiting for JetStream's
    /// acknowledgement.
    async fn store(
        &self,
        subject: &'static str,
        id: Uuid,
        payload: bytes::Bytes,
    ) -> Result<(), Error> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(Error::TooLarge {
                size: payload.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id.to_string());
        let stored = async {
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| Error::Publish {
                    subject,
                    source: Box::new(e),
                })?;
            ack.await.map_err(|e| Error::refused(subject, e))
        };
        tokio::time::timeout(self.timeout, stored)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("JetStream (storing an event on {subject})"),
                after: self.timeout,
            })??;
        Ok(())
    }

    /// Waits until task `id` is in `state`, asking the manager every 100 ms, and returns it.
    /// Fails early, with [`Error::Ended`], once the task has ended in another state for good
    /// (see [`has_ended`]); after `within`, with [`Error::NotYet`] and where the task was.
    pub async fn wait(&self, id: Uuid, state: State, within: Duration) -> Result<Task, Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = match self.task(&id.to_string()).await {
                Ok(task) if task.state == state => return Ok(task),
                Ok(task) if has_ended(&task) => {
                    return Err(Error::Ended {
                        task: Box::new(task),
                        wanted: state,
                    })
                }
                Ok(task) => format!("it is {} (error {:?})", task.state, task.error),
                Err(e) => Chain(&e).to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotYet {
                    id,
                    wanted: state,
                    within,
                    last,
                });
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}

/// The leader first (the highest epoch first, should two answer as leader for a moment),
/// then standbys, each group oldest process first.
pub fn sort_managers(managers: &mut [ManagerInfo]) {
    managers.sort_by(|a, b| {
        let leader = |m: &ManagerInfo| m.role == ManagerRole::Leader;
        leader(b)
            .cmp(&leader(a))
            .then_with(|| {
                if leader(a) {
                    b.epoch.cmp(&a.epoch)
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .then_with(|| a.started.cmp(&b.started))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// Whether nothing will run `task` again: it completed, or failed with no restart planned.
pub fn has_ended(task: &Task) -> bool {
    match task.state {
        State::Completed => true,
        State::Failed => task.next_attempt_at.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managers_are_sorted_leader_first_then_standbys_oldest_first() {
        let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let m = |role, started: i64, epoch| ManagerInfo {
            id: Uuid::new_v4(),
            host: "h".into(),
            pid: started as u32,
            started: at(started),
            role,
            epoch,
            since: at(started),
            leader: None,
            terms: 0,
        };
        let mut list = vec![
            m(ManagerRole::Standby, 3, Some(5)),
            m(ManagerRole::Standby, 1, Some(5)),
            m(ManagerRole::Leader, 2, Some(5)),
            // A deposed leader that has not noticed yet, for a moment.
            m(ManagerRole::Leader, 0, Some(4)),
        ];
        sort_managers(&mut list);
        let order: Vec<(ManagerRole, u32)> = list.iter().map(|m| (m.role, m.pid)).collect();
        assert_eq!(
            order,
            [
                (ManagerRole::Leader, 2),
                (ManagerRole::Leader, 0),
                (ManagerRole::Standby, 1),
                (ManagerRole::Standby, 3)
            ]
        );
    }

    #[test]
    fn a_task_has_ended_when_nothing_will_run_it_again() {
        let mut t = Task::new("busybox");
        for (state, done) in [
            (State::Pending, false),
            (State::Scheduled, false),
            (State::Running, false),
            (State::Completed, true),
            (State::Failed, true),
        ] {
            t.state = state;
            assert_eq!(has_ended(&t), done, "{state}");
        }
        t.next_attempt_at = Some(chrono::Utc::now());
        assert!(
            !has_ended(&t),
            "a failed task with a restart planned has not ended"
        );
    }
}
