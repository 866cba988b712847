//! Query strings: refused with the API's JSON error (axum's own refusal is plain text), and
//! the task filters shared by `GET /api/tasks` and the dashboard.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::ApiError;
use cube_shared::State as TaskState;

/// As axum's `Query`, but a query string that does not read as `T` is a 400 with the reason
/// in the API's JSON error body.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// Which tasks to list, as given: checked by [`TasksFilter::read`], so that a bad value gets
/// Cube's own words and a page can show them. Reading the query never fails.
#[derive(Debug, Default)]
pub(crate) struct TasksFilter {
    pub state: Option<String>,
    /// Empty is any node (the dashboard's node menu sends `node=` for "any").
    pub node: Option<String>,
    pub limit: Option<String>,
    /// Parameters that are no filter: the API refuses them (a misspelt `?status=running`
    /// must not list every task), the dashboard's pages ignore them (a link may carry
    /// anything).
    others: Vec<String>,
    /// Filters given more than once: which one would count?
    repeated: Vec<String>,
}

/// A [`TasksFilter`] that reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    pub state: Option<TaskState>,
    pub node: Option<String>,
    pub limit: usize,
}

/// How many tasks a list holds unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 1000;

impl TasksFilter {
    /// The filter, or why it is refused. A limit beyond what the machine counts is no
    /// limit.
    pub fn read(&self) -> Result<Filter, ApiError> {
        if let Some(key) = self.repeated.first() {
            return Err(ApiError::bad_request(format!(
                "`{key}` is given more than once"
            )));
        }
        let state = match self.state.as_deref() {
            None => None,
            Some("") => {
                return Err(ApiError::bad_request(
                    "state is empty: leave it out for tasks in every state",
                ))
            }
            Some(s) => Some(
                s.parse::<TaskState>()
                    .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
            ),
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse().unwrap_or(usize::MAX)
            }
            Some(l) => {
                return Err(ApiError::bad_request(format!(
                    "limit: `{}` is not a whole number",
                    cube_shared::validate::excerpt(l)
                )))
            }
        };
        Ok(Filter {
            state,
            node: self.node.clone().filter(|n| !n.is_empty()),
            limit,
        })
    }

    /// As [`TasksFilter::read`], refusing parameters that are not filters too.
    pub fn read_strictly(&self) -> Result<Filter, ApiError> {
        if let Some(key) = self.others.first() {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{}`: the filters are state, node and limit",
                cube_shared::validate::excerpt(key)
            )));
        }
        self.read()
    }
}

impl<'de> Deserialize<'de> for TasksFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut filter = TasksFilter::default();
        for (key, value) in Vec::<(String, String)>::deserialize(d)? {
            let slot = match key.as_str() {
                "state" => &mut filter.state,
                "node" => &mut filter.node,
                "limit" => &mut filter.limit,
                _ => {
                    filter.others.push(key);
                    continue;
                }
            };
            if slot.replace(value).is_some() && !filter.repeated.contains(&key) {
                filter.repeated.push(key);
            }
        }
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(query: &str) -> TasksFilter {
        let uri: axum::http::Uri = format!("/?{query}").parse().unwrap();
        Query::<TasksFilter>::try_from_uri(&uri)
            .expect("a query string always reads")
            .0
    }

    fn refusal(result: Result<Filter, ApiError>) -> String {
        let e = result.expect_err("refused");
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        e.message
    }

    #[test]
    fn filters_read_and_say_what_is_wrong() {
        let f = filter("state=running&node=w1&limit=5")
            .read_strictly()
            .unwrap();
        assert_eq!(
            f,
            Filter {
                state: Some(TaskState::Running),
                node: Some("w1".into()),
                limit: 5
            }
        );
        let f = filter("node=").read_strictly().unwrap();
        assert_eq!((f.state, f.node, f.limit), (None, None, DEFAULT_LIMIT));
        let f = filter("limit=99999999999999999999999999").read().unwrap();
        assert_eq!(f.limit, usize::MAX);

        assert!(refusal(filter("state=").read()).contains("empty"));
        assert!(refusal(filter("state=sleeping").read()).contains("sleeping"));
        assert!(refusal(filter("state=RUNNING").read()).contains("RUNNING"));
        assert!(refusal(filter("state=running&state=failed").read()).contains("`state`"));
        assert!(refusal(filter("limit=-1").read()).contains("limit"));
        assert!(refusal(filter("limit=").read()).contains("limit"));
        assert!(refusal(filter("limit=2.5").read()).contains("limit"));
    }

    #[test]
    fn only_the_api_refuses_other_parameters() {
        let f = filter("status=running&utm_source=x");
        assert_eq!(f.read().unwrap().state, None);
        assert!(refusal(f.read_strictly()).contains("`status`"));
    }
}
