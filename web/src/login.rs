//! The login page: the dashboard asks for a token once and keeps it in a session cookie
//! (see [`crate::auth`]). `GET /login` is a form; `POST /login` with `{"token": "…"}` checks
//! the token and sets the cookie.

use axum::body::Bytes;
use axum::http::{header, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use maud::{html, DOCTYPE};
use serde::Deserialize;

use crate::api::{ApiError, ApiQuery};
use crate::auth::{session_cookie, AuthMode, Tokens};
use crate::Routes;

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/login", page)
        .add(Method::POST, "/login", log_in)
}

#[derive(Deserialize)]
struct PageQuery {
    next: Option<String>,
}

/// Where to go after logging in: a path on this server, never another site.
fn local(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/".to_string())
}

/// Sends the token as JSON (the guard accepts no form posts), then goes to `next`.
const SCRIPT: &str = r#"
document.getElementById('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target;
  const error = document.getElementById('login-error');
  error.textContent = '';
  const r = await fetch('/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token: form.token.value.trim() }),
  });
  if (r.ok) {
    location.assign(form.dataset.next);
  } else {
    const body = await r.json().catch(() => ({}));
    error.textContent = body.error || ('HTTP ' + r.status);
  }
});
"#;

async fn page(ApiQuery(q): ApiQuery<PageQuery>) -> Html<String> {
    let next = local(q.next);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Cube: log in" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body data-page="login" {
                header { h1 { "Cube" } }
                main {
                    h2 { "Log in" }
                    p { "Paste an HTTP API token (" code { "cube token create --role read" } " makes one). "
                        "The browser keeps it until it closes." }
                    form #login data-next=(next) {
                        input #token type="password" name="token" autocomplete="off"
                            placeholder="cube_…" size="60" required;
                        " "
                        button type="submit" { "Log in" }
                    }
                    p #login-error.error {}
                }
                script { (maud::PreEscaped(SCRIPT)) }
            }
        }
    };
    Html(page.into_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

async fn log_in(Extension(tokens): Extension<Tokens>, body: Bytes) -> Response {
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(e) => {
            return ApiError::bad_request(format!("the body must be {{\"token\": \"…\"}}: {e}"))
                .into_response()
        }
    };
    if tokens.mode == AuthMode::None {
        return StatusCode::NO_CONTENT.into_response();
    }
    match tokens.role(login.token.trim()).await {
        Ok(Some(_)) => (
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, session_cookie(login.token.trim()))],
        )
            .into_response(),
        Ok(None) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked token (`cube token ls` lists the tokens)",
        )
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_goes_back_only_to_this_server() {
        assert_eq!(local(Some("/tasks/x?a=1".into())), "/tasks/x?a=1");
        assert_eq!(local(Some("//evil.example/".into())), "/");
        assert_eq!(local(Some("https://evil.example/".into())), "/");
        assert_eq!(local(Some("/\\evil.example".into())), "/");
        assert_eq!(local(None), "/");
    }
}
