//! Services: list, one, endpoints; deploy, scale, rollback, promote, remove.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use cube_shared::service::{decode_service_event, validate_service_name};
use cube_shared::wire::encode;
use cube_shared::{Endpoints, ServiceEvent, ServiceKind, ServiceStatus};
use serde::{Deserialize, Serialize};
use tracing::info;
use uuid::Uuid;

use super::{ApiError, ApiResult};
use crate::{App, Routes};

pub(super) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/api/services", list_services)
        .add(Method::POST, "/api/services", deploy)
        .add(Method::GET, "/api/services/{name}", get_service)
        .add(Method::DELETE, "/api/services/{name}", remove_service)
        .add(Method::GET, "/api/services/{name}/endpoints", endpoints)
        .add(Method::POST, "/api/services/{name}/scale", scale)
        .add(Method::POST, "/api/services/{name}/rollback", rollback)
        .add(Method::POST, "/api/services/{name}/promote", promote)
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

/// One service; a removed one is gone (404) here, as for the actions, though its record
/// stays in the list (`removed`) and the dashboard's pages.
async fn get_service(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceStatus>> {
    Ok(Json(live_service(&app, &name).await?))
}

/// The healthy copies' addresses, as the `cube-endpoints` bucket holds them; none yet (the
/// bucket holds nothing for a known service) is an empty list.
async fn endpoints(State(app): State<App>, Path(name): Path<String>) -> ApiResult<Json<Endpoints>> {
    // A name that cannot be a service's is no key of the bucket either.
    validate_service_name(&name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("no service {name}: {e}")))?;
    let status = live_service(&app, &name).await?;
    if let Some(endpoints) = app.cube.endpoints(&name).await? {
        return Ok(Json(endpoints));
    }
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
    Ok(cube_shared::body::read_action(body)?)
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
    use cube_shared::wire::MAX_EVENT_BYTES;

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
}
