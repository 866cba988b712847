//! Token management over HTTP, for `admin` tokens: list, create and revoke, answered by the
//! leading manager through `cube.api.tokens.*` as for `cube token`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use cube_shared::token::{TokenCreate, TokenCreated, TokenInfo};

use crate::api::ApiError;
use crate::{App, Routes};

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/api/tokens", list)
        .add(Method::POST, "/api/tokens", create)
        .add(Method::DELETE, "/api/tokens/{name}", revoke)
}

async fn list(State(app): State<App>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(app.cube.tokens().await?))
}

async fn create(
    State(app): State<App>,
    body: Bytes,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let request: TokenCreate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("a token request: {e}")))?;
    // The manager refuses a name in use in its own words only; an HTTP client deserves to
    // hear that it is a conflict (409), as for a task id or a service's kind.
    if let Some(name) = &request.name {
        if app.cube.tokens().await?.iter().any(|t| &t.name == name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a token named `{name}` exists already (`cube token ls` lists them)"),
            ));
        }
    }
    let created = app.cube.create_token(request.role, request.name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn revoke(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    Ok(Json(
        app.cube
            .revoke_token(&name)
            .await
            .map_err(ApiError::lookup)?,
    ))
}
