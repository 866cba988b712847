//! The JSON API: tasks, one task, nodes, events, logs; submit and stop; services (list, one,
//! endpoints; deploy, scale, rollback, promote, remove). Errors are `{"error": "..."}` with a
//! status that says whose fault it is.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cube_client::{Chain, LogTail, JOURNAL_SCAN};
use cube_shared::body::BodyError;
use cube_shared::service::{decode_service_event, validate_service_name};
use cube_shared::wire::{self, encode, MAX_EVENT_BYTES};
use cube_shared::{Endpoints, ServiceEvent, ServiceKind, ServiceStatus, TaskList, TaskListQuery};
use cube_shared::{State as TaskState, Task, TaskEvent};
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, Instrument};
use uuid::Uuid;

use crate::{App, Error, Routes, OPENAPI};

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/api/openapi.json", openapi)
        .add(Method::GET, "/api/tasks", list_tasks)
        .add(Method::POST, "/api/tasks", submit)
        .add(Method::GET, "/api/tasks/{id}", get_task)
        .add(Method::DELETE, "/api/tasks/{id}", stop)
        .add(Method::POST, "/api/tasks/{id}/stop", stop)
        .add(Method::GET, "/api/tasks/{id}/logs", logs)
        .add(Method::GET, "/api/nodes", nodes)
        .add(Method::GET, "/api/managers", managers)
        .add(Method::GET, "/api/events", events)
        .add(Method::GET, "/api/services", list_services)
        .add(Method::POST, "/api/services", deploy)
        .add(Method::GET, "/api/services/{name}", get_service)
        .add(Method::DELETE, "/api/services/{name}", remove_service)
        .add(Method::GET, "/api/services/{name}/endpoints", endpoints)
        .add(Method::POST, "/api/services/{name}/scale", scale)
        .add(Method::POST, "/api/services/{name}/rollback", rollback)
        .add(Method::POST, "/api/services/{name}/promote", promote)
}

/// An error answer: `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A lookup of one task: the manager's refusal means no single task matched.
    pub fn lookup(e: cube_client::Error) -> ApiError {
        match e {
            cube_client::Error::Manager(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            other => other.into(),
        }
    }
}

/// Whose fault it is, by the kind of error; the message carries every cause.
impl From<cube_client::Error> for ApiError {
    fn from(e: cube_client::Error) -> ApiError {
        use cube_client::Error as E;
        let status = match &e {
            E::NoManager(_) | E::NoStream(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            E::Manager(_) => StatusCode::BAD_REQUEST,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, Chain(&e).to_string())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, Chain(&e).to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Which tasks to list; strings so that a bad value gets Cube's own words. The dashboard's
/// pages ignore query parameters they do not know (a link may carry anything).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TasksFilter {
    pub state: Option<String>,
    pub node: Option<String>,
    pub limit: Option<usize>,
}

/// Query of `GET /api/tasks`: the API refuses an unknown parameter, so that a misspelt
/// filter (`?status=running`) is an error rather than the whole list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictTasksFilter {
    state: Option<String>,
    node: Option<String>,
    limit: Option<usize>,
}

/// Tasks newest first, by state and node. With a node filter, the manager's list (up to its
/// reply size) is filtered here.
pub(crate) async fn filtered_tasks(app: &App, filter: &TasksFilter) -> ApiResult<TaskList> {
    let state = match filter.state.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<TaskState>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let node = filter.node.as_deref().filter(|s| !s.is_empty());
    let limit = filter.limit.unwrap_or(1000);
    let query = TaskListQuery {
        state,
        limit: Some(if node.is_some() { usize::MAX } else { limit }),
    };
    let mut list = app.cube.tasks(&query).await?;
    if let Some(node) = node {
        list.tasks.retain(|t| t.worker.as_deref() == Some(node));
        list.total = list.tasks.len();
        list.tasks.truncate(limit);
    }
    Ok(list)
}

async fn list_tasks(
    State(app): State<App>,
    Query(filter): Query<StrictTasksFilter>,
) -> ApiResult<Json<TaskList>> {
    let StrictTasksFilter { state, node, limit } = filter;
    let filter = TasksFilter { state, node, limit };
    Ok(Json(filtered_tasks(&app, &filter).await?))
}

async fn get_task(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    Ok(Json(app.cube.task(&id).await.map_err(ApiError::lookup)?))
}

async fn nodes(State(app): State<App>) -> ApiResult<Json<Vec<cube_shared::Node>>> {
    Ok(Json(app.cube.nodes().await?))
}

/// The longest `GET /api/managers?wait=` may ask for.
const MANAGERS_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagersQuery {
    /// How long to gather answers (`500ms`, `2s`); default 500 ms, at most 5 s.
    wait: Option<String>,
}

/// Every manager that answers on `cube.managers` within the wait, the leader first. An empty
/// list is an answer too (no manager runs), not an error.
async fn managers(
    State(app): State<App>,
    Query(q): Query<ManagersQuery>,
) -> ApiResult<Json<Vec<cube_shared::ManagerInfo>>> {
    let wait = match q.wait.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => {
            let wait = cube_shared::units::parse_duration(w)
                .map_err(|e| ApiError::bad_request(format!("wait: {e}")))?;
            if wait > MANAGERS_WAIT_MAX {
                return Err(ApiError::bad_request(format!(
                    "wait: at most {MANAGERS_WAIT_MAX:?}"
                )));
            }
            wait
        }
        None => cube_client::MANAGERS_WAIT,
    };
    Ok(Json(app.cube.managers(wait).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// How many entries (default 50, at most 10,000).
    last: Option<u64>,
    /// Only this task's (full id, unique prefix or name).
    task: Option<String>,
}

async fn events(
    State(app): State<App>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<cube_shared::JournalEntry>>> {
    let last = q.last.unwrap_or(50).min(JOURNAL_SCAN);
    let task = match q.task.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(app.cube.task(t).await.map_err(ApiError::lookup)?.id),
        None => None,
    };
    Ok(Json(app.cube.journal(last, task).await?))
}

async fn logs(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<LogTail>> {
    let task = app.cube.task(&id).await.map_err(ApiError::lookup)?;
    Ok(Json(app.cube.logs(task.id).await?))
}

/// The answer to a submission or a stop.
#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    /// The task's id.
    pub id: Uuid,
    /// The id of the TaskEvent published to `tasks.events`.
    pub event_id: Uuid,
}

/// A refused request body: 413 if it is too large, 400 otherwise.
impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        let status = match e {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Reads a submission (a Task, or a TaskEvent with `state: running`) and checks it as the
/// manager will: the bytes published are the bytes checked by `wire::decode_event`.
pub(crate) fn read_submission(body: &[u8]) -> ApiResult<TaskEvent> {
    Ok(cube_shared::body::read_submission(body)?)
}

async fn submit(State(app): State<App>, body: Bytes) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let event = read_submission(&body)?;
    let span = info_span!("http_submit", task.id = %event.task.id, event.id = %event.id);
    async {
        // The manager refuses a known id with another specification only in the journal;
        // an HTTP client deserves to hear it now (409).
        app.cube.check_resubmission(&event.task).await?;
        app.cube.publish(&event).await?;
        info!("submitted over HTTP");
        Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                id: event.task.id,
                event_id: event.id,
            }),
        ))
    }
    .instrument(span)
    .await
}

async fn stop(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let task = app.cube.task(&id).await.map_err(ApiError::lookup)?;
    if task.state == TaskState::Completed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("task {} has already completed", task.id),
        ));
    }
    let event = app.cube.stop(task.id).await?;
    info!(task.id = %task.id, event.id = %event.id, "stop requested over HTTP");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: task.id,
            event_id: event.id,
        }),
    ))
}

/// The answer to a service event (deploy, scale, rollback, promote, remove).
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceAccepted {
    /// The service's name.
    pub name: String,
    /// What the event asks for.
    pub action: cube_shared::ServiceAction,
    /// The id of the ServiceEvent published to `services.events`.
    pub event_id: Uuid,
}

async fn list_services(State(app): State<App>) -> ApiResult<Json<Vec<ServiceStatus>>> {
    Ok(Json(app.cube.services().await?))
}

async fn get_service(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceStatus>> {
    Ok(Json(
        app.cube.service(&name).await.map_err(ApiError::lookup)?,
    ))
}

/// The healthy copies' addresses, as the `cube-endpoints` bucket holds them; none yet (the
/// bucket holds nothing for a known service) is an empty list.
async fn endpoints(State(app): State<App>, Path(name): Path<String>) -> ApiResult<Json<Endpoints>> {
    // A name that cannot be a service's is no key of the bucket either.
    validate_service_name(&name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("no service {name}: {e}")))?;
    if let Some(endpoints) = app.cube.endpoints(&name).await? {
        return Ok(Json(endpoints));
    }
    let status = app.cube.service(&name).await.map_err(ApiError::lookup)?;
    Ok(Json(Endpoints {
        service: status.service.name,
        endpoints: Vec::new(),
    }))
}

/// Reads a desired state (a ServiceSpec, whose template may leave out its `id`) and checks
/// the deploy event made of it as the manager will: the bytes published are the bytes
/// checked by `decode_service_event`.
pub(crate) fn read_spec(body: &[u8]) -> ApiResult<ServiceEvent> {
    Ok(cube_shared::body::read_spec(body)?)
}

/// Reads an action's optional JSON body (`{}` when empty), refusing unknown fields.
fn read_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    wire::decode(body, MAX_EVENT_BYTES).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Service `name` as it is now, if it is live: unknown or removed is 404, as the manager
/// would refuse the event ("no service NAME") only in its journal.
async fn live_service(app: &App, name: &str) -> ApiResult<ServiceStatus> {
    let status = app.cube.service(name).await.map_err(ApiError::lookup)?;
    if status.service.removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no service {name}: it was removed"),
        ));
    }
    Ok(status)
}

/// Checks `event` as the manager will, publishes it, and answers 202.
async fn publish_service(
    app: &App,
    event: ServiceEvent,
) -> ApiResult<(StatusCode, Json<ServiceAccepted>)> {
    let event =
        decode_service_event(&encode(&event)).map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.cube.publish_service(&event).await?;
    info!(service = %event.name, action = %event.action, event.id = %event.id, "service event over HTTP");
    Ok((
        StatusCode::ACCEPTED,
        Json(ServiceAccepted {
            name: event.name,
            action: event.action,
            event_id: event.id,
        }),
    ))
}

async fn deploy(
    State(app): State<App>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ServiceAccepted>)> {
    let event = read_spec(&body)?;
    let spec = event.spec.as_ref().expect("a deploy event has a spec");
    // The manager refuses another kind for a live service only in its journal; an HTTP
    // client deserves to hear it now (409).
    match app.cube.service(&spec.name).await {
        Ok(s) if !s.service.removed && s.service.kind != spec.kind => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "service {} is a {} service; remove it before deploying it as {}",
                    s.service.name, s.service.kind, spec.kind
                ),
            ))
        }
        Ok(_) | Err(cube_client::Error::Manager(_)) => {}
        Err(e) => return Err(e.into()),
    }
    publish_service(&app, event).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    count: Option<u32>,
}

async fn scale(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ServiceAccepted>)> {
    let ScaleBody { count } = read_body(&body)?;
    let count = count.ok_or_else(|| ApiError::bad_request("the body must be {\"count\": N}"))?;
    let status = live_service(&app, &name).await?;
    if status.service.kind == ServiceKind::System {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} is a system service: it runs one copy on every eligible node"),
        ));
    }
    publish_service(&app, ServiceEvent::scale(&name, count)).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: Option<u64>,
}

async fn rollback(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ServiceAccepted>)> {
    let RollbackBody { version } = read_body(&body)?;
    let status = live_service(&app, &name).await?;
    if let Some(v) = version {
        if status.service.version_of(v).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{name} has no version {v} (it keeps the last {})",
                    cube_shared::service::KEPT_VERSIONS
                ),
            ));
        }
        if v == status.service.version {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{name} already runs version {v}"),
            ));
        }
    }
    publish_service(&app, ServiceEvent::rollback(&name, version)).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

async fn promote(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ServiceAccepted>)> {
    let NoBody {} = read_body(&body)?;
    let status = live_service(&app, &name).await?;
    let waiting =
        status.service.rollout.as_ref().is_some_and(|r| {
            r.state.is_active() && status.service.update.canary() > 0 && !r.promoted
        });
    if !waiting {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} has no rollout waiting for promotion"),
        ));
    }
    publish_service(&app, ServiceEvent::promote(&name)).await
}

async fn remove_service(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<ServiceAccepted>)> {
    live_service(&app, &name).await?;
    publish_service(&app, ServiceEvent::remove(&name)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_task_gets_an_id_and_is_checked_like_the_manager_checks() {
        let event = read_submission(br#"{"image":"cube-busybox:latest","cmd":["sleep","1"]}"#)
            .expect("a valid task");
        assert_eq!(event.state, TaskState::Running);
        assert_eq!(event.task.image, "cube-busybox:latest");

        let bad = read_submission(br#"{"image":"Not An Image!"}"#).unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.message.contains("task.image"), "{}", bad.message);

        let unknown = read_submission(br#"{"image":"busybox","colour":"red"}"#).unwrap_err();
        assert!(unknown.message.contains("colour"), "{}", unknown.message);

        let typed = read_submission(br#"{"image":"busybox","memory":"lots"}"#).unwrap_err();
        assert!(typed.message.contains("memory"), "{}", typed.message);

        assert_eq!(
            read_submission(b"[1]").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            read_submission(&vec![b' '; MAX_EVENT_BYTES + 1])
                .unwrap_err()
                .status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn a_spec_is_checked_like_the_manager_checks_a_deploy() {
        let event = read_spec(
            br#"{"name":"web","count":2,"template":{"image":"cube-busybox:latest","cmd":["sleep","1"]}}"#,
        )
        .expect("a valid spec");
        assert_eq!(event.action, cube_shared::ServiceAction::Deploy);
        assert_eq!(event.name, "web");
        let spec = event.spec.expect("a deploy carries its spec");
        assert_eq!(spec.count, 2);
        assert_eq!(spec.kind, ServiceKind::Service);

        let bad = |body: &str| read_spec(body.as_bytes()).unwrap_err();
        let e = bad(r#"{"name":"Web","template":{"image":"busybox"}}"#);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("lowercase"), "{}", e.message);
        let e = bad(r#"{"name":"web","template":{"image":"Not An Image!"}}"#);
        assert!(e.message.contains("template"), "{}", e.message);
        let e = bad(r#"{"name":"web","template":{"image":"busybox"},"colour":"red"}"#);
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = bad(r#"{"name":"web","count":100000,"template":{"image":"busybox"}}"#);
        assert!(e.message.contains("count"), "{}", e.message);
        let e = bad(r#"{"name":"web","kind":"cron","template":{"image":"busybox"}}"#);
        assert!(e.message.contains("kind"), "{}", e.message);
        let e = bad(r#"{"name":"web"}"#);
        assert!(e.message.contains("template"), "{}", e.message);
        let e = bad(r#"{"name":"web","template":{"image":"busybox","service":"other"}}"#);
        assert!(e.message.contains("set by Cube"), "{}", e.message);
        assert!(bad("not json").message.contains("not JSON"));
        assert_eq!(bad("[1]").status, StatusCode::BAD_REQUEST);
        assert_eq!(
            read_spec(&vec![b' '; MAX_EVENT_BYTES + 1])
                .unwrap_err()
                .status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn action_bodies_are_optional_and_strict() {
        let ScaleBody { count } = read_body(br#"{"count": 3}"#).unwrap();
        assert_eq!(count, Some(3));
        let ScaleBody { count } = read_body(b"  ").unwrap();
        assert_eq!(count, None);
        let e = read_body::<ScaleBody>(br#"{"count": -1}"#).unwrap_err();
        assert!(e.message.contains("count"), "{}", e.message);
        let e = read_body::<ScaleBody>(br#"{"replicas": 3}"#).unwrap_err();
        assert!(e.message.contains("replicas"), "{}", e.message);
        let RollbackBody { version } = read_body(br#"{"version": 2}"#).unwrap();
        assert_eq!(version, Some(2));
        let RollbackBody { version } = read_body(b"{}").unwrap();
        assert_eq!(version, None);
        assert!(read_body::<NoBody>(br#"{"force": true}"#).is_err());
        assert!(read_body::<NoBody>(b"[]").is_err());
    }

    #[test]
    fn a_task_event_is_accepted_but_not_a_stop() {
        let id = Uuid::new_v4();
        let body = format!(
            r#"{{"id":"{}","state":"running","task":{{"id":"{id}","image":"busybox"}}}}"#,
            Uuid::new_v4()
        );
        assert_eq!(read_submission(body.as_bytes()).unwrap().task.id, id);
        let stop = format!(
            r#"{{"id":"{}","state":"completed","task":{{"id":"{id}"}}}}"#,
            Uuid::new_v4()
        );
        let err = read_submission(stop.as_bytes()).unwrap_err();
        assert!(err.message.contains("/stop"), "{}", err.message);
        let failed = format!(
            r#"{{"id":"{}","state":"failed","task":{{"id":"{id}","image":"busybox"}}}}"#,
            Uuid::new_v4()
        );
        assert!(read_submission(failed.as_bytes())
            .unwrap_err()
            .message
            .contains("cannot be requested"));
    }
}
