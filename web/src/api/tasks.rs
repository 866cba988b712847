//! Tasks, nodes, managers, the journal and logs: list, one, submit, stop.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use cube_client::{LogTail, JOURNAL_SCAN};
use cube_shared::{State as TaskState, Task, TaskEvent, TaskList, TaskListQuery};
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, Instrument};
use uuid::Uuid;

use super::query::{ApiQuery, Filter, TasksFilter};
use super::{ApiError, ApiResult};
use crate::{App, Routes};

pub(super) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/api/tasks", list_tasks)
        .add(Method::POST, "/api/tasks", submit)
        .add(Method::GET, "/api/tasks/{id}", get_task)
        .add(Method::POST, "/api/tasks/{id}/stop", stop)
        .add(Method::GET, "/api/tasks/{id}/logs", logs)
        .add(Method::GET, "/api/nodes", nodes)
        .add(Method::GET, "/api/managers", managers)
        .add(Method::GET, "/api/events", events)
}

/// Tasks newest first, by state and node; a filter that does not read is refused (400).
pub(crate) async fn filtered_tasks(app: &App, filter: &TasksFilter) -> ApiResult<TaskList> {
    tasks_matching(app, &filter.read()?).await
}

/// Tasks newest first, by state and node. With a node filter, the manager's list (up to its
/// reply size) is filtered here.
async fn tasks_matching(app: &App, filter: &Filter) -> ApiResult<TaskList> {
    let node = filter.node.as_deref();
    let query = TaskListQuery {
        state: filter.state,
        limit: Some(if node.is_some() {
            usize::MAX
        } else {
            filter.limit
        }),
    };
    let mut list = app.cube.tasks(&query).await?;
    if let Some(node) = node {
        list.tasks.retain(|t| t.worker.as_deref() == Some(node));
        list.total = list.tasks.len();
        list.tasks.truncate(filter.limit);
    }
    Ok(list)
}

async fn list_tasks(
    State(app): State<App>,
    Query(filter): Query<TasksFilter>,
) -> ApiResult<Json<TaskList>> {
    Ok(Json(tasks_matching(&app, &filter.read_strictly()?).await?))
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
    ApiQuery(q): ApiQuery<ManagersQuery>,
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
    /// How many entries (default 50, at most [`JOURNAL_SCAN`]).
    last: Option<u64>,
    /// Only this task's (full id, unique prefix or name).
    task: Option<String>,
}

async fn events(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<Vec<cube_shared::JournalEntry>>> {
    let last = q.last.unwrap_or(50);
    if last > JOURNAL_SCAN {
        return Err(ApiError::bad_request(format!(
            "last: at most {JOURNAL_SCAN} entries"
        )));
    }
    // A full id is taken as it is: the journal is all that remains of a task that was
    // refused, or forgotten after `--keep-ended`.
    let task = match q.task.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => match t.parse::<Uuid>() {
            Ok(id) => Some(id),
            Err(_) => Some(app.cube.task(t).await.map_err(ApiError::lookup)?.id),
        },
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
#[cfg(test)]
mod tests {
    use super::*;
    use cube_shared::wire::MAX_EVENT_BYTES;

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
