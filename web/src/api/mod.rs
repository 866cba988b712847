//! The JSON API: tasks, one task, nodes, events, logs; submit and stop; services (list, one,
//! endpoints; deploy, scale, rollback, promote, remove). Errors are `{"error": "..."}` with a
//! status that says whose fault it is.

mod query;
mod services;
mod tasks;

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cube_client::Chain;
use cube_shared::body::BodyError;
use serde::Serialize;

pub(crate) use query::{ApiQuery, TasksFilter};
pub(crate) use tasks::filtered_tasks;

use crate::{Error, Routes, OPENAPI};

pub(crate) fn routes(r: Routes) -> Routes {
    let r = r.add(Method::GET, "/api/openapi.json", openapi);
    services::routes(tasks::routes(r))
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
            E::NoManager(_) | E::NoStream(_) | E::Refused { .. } => StatusCode::SERVICE_UNAVAILABLE,
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

type ApiResult<T> = Result<T, ApiError>;

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
