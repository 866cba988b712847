//! The dashboard: server-rendered HTML (maud escapes every interpolated string) and one small
//! script, `app.js`, that keeps the page current from `/api/stream`. Assets are compiled in.
//! The pages are [`overview`] (`/`), [`task`] (`/tasks/ID`) and [`service`]
//! (`/services/NAME`); what they share is here.

mod overview;
mod service;
mod task;

use axum::extract::Path;
use axum::http::{header, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use cube_shared::JournalEntry;
use maud::{html, Markup, DOCTYPE};

use crate::api::ApiError;
use crate::Routes;

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/", overview::overview)
        .add(Method::GET, "/tasks/{id}", task::task_page)
        .add(Method::GET, "/services/{name}", service::service_page)
        .add(Method::GET, "/assets/{file}", asset)
}

const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            APP_JS,
        )
            .into_response(),
        "style.css" => (
            [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
            STYLE_CSS,
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// An error as a page.
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<cube_client::Error> for PageError {
    fn from(e: cube_client::Error) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout(
            "error",
            "Cube",
            html! {
                h2 { "Error " (self.0.status.as_u16()) }
                p.error { (self.0.message) }
                p { a href="/" { "Back to the dashboard" } }
            },
        );
        (self.0.status, Html(body.into_string())).into_response()
    }
}

pub(crate) fn layout(page: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/assets/style.css";
            }
            body data-page=(page) {
                header {
                    h1 { a href="/" { "Cube" } }
                    span #live.live title="live updates" { "connecting…" }
                }
                main { (body) }
                script src="/assets/app.js" {}
            }
        }
    }
}

fn journal_row(e: &JournalEntry) -> Markup {
    html! {
        tr {
            td.mono { (e.time.format("%H:%M:%S%.3f")) }
            td { (e.kind) }
            td.mono {
                @if let Some(id) = e.task_id {
                    a href=(format!("/tasks/{id}")) { (id.to_string()[..8]) }
                } @else { "-" }
            }
            td { (e.worker.as_deref().unwrap_or("-")) }
            td { (e.message) }
        }
    }
}

pub(crate) fn journal_table(id: &str, entries: &[JournalEntry]) -> Markup {
    html! {
        table.events {
            thead { tr { th { "time" } th { "kind" } th { "task" } th { "worker" } th { "message" } } }
            tbody #(id) {
                @for e in entries.iter().rev() { (journal_row(e)) }
            }
        }
    }
}

/// A time as Cube's JSON writes it (`…Z`).
pub(crate) fn wire_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(urlencode("node-1_x.y"), "node-1_x.y");
    }
}
