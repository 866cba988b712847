//! Secrets: named values kept where only the manager can read them (the `cube-secrets` KV
//! bucket). A task refers to one by name in its environment; the value travels only inside
//! the placement the manager sends the worker that runs the task, and is never part of the
//! task's record, its events, the journal or any API reply.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The most bytes a secret's value may have.
pub const MAX_SECRET_BYTES: usize = 8 * 1024;
/// The most secrets one task may name: with [`MAX_SECRET_BYTES`], what bounds a placement's
/// size (see [`crate::wire::MAX_WORK_BYTES`]).
pub const MAX_TASK_SECRETS: usize = 8;
/// The longest secret name.
pub const MAX_SECRET_NAME: usize = 64;

/// One entry of a task's environment: `KEY=VALUE`, or a variable whose value is a secret's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum EnvVar {
    /// `KEY=VALUE`.
    Value(String),
    /// `{"name": "DB_PASSWORD", "secret": "db"}`: the variable `name` holds the value of the
    /// secret `secret` (`cube secret put`), resolved when the task is placed.
    Secret { name: String, secret: String },
}

impl EnvVar {
    /// The variable's name.
    pub fn name(&self) -> &str {
        match self {
            EnvVar::Value(kv) => kv.split_once('=').map_or(kv.as_str(), |(k, _)| k),
            EnvVar::Secret { name, .. } => name,
        }
    }

    /// The secret it names, if any.
    pub fn secret(&self) -> Option<&str> {
        match self {
            EnvVar::Value(_) => None,
            EnvVar::Secret { secret, .. } => Some(secret),
        }
    }

    /// `KEY=VALUE`, if that is what it is.
    pub fn as_value(&self) -> Option<&str> {
        match self {
            EnvVar::Value(kv) => Some(kv),
            EnvVar::Secret { .. } => None,
        }
    }
}

impl From<&str> for EnvVar {
    fn from(kv: &str) -> EnvVar {
        EnvVar::Value(kv.to_string())
    }
}

impl From<String> for EnvVar {
    fn from(kv: String) -> EnvVar {
        EnvVar::Value(kv)
    }
}

/// As shown to people: a secret's variable names the secret, never its value.
impl fmt::Display for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvVar::Value(kv) => f.write_str(kv),
            EnvVar::Secret { name, secret } => write!(f, "{name}=<secret {secret}>"),
        }
    }
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}", self = self.to_string())
    }
}

/// A secret's value. Its `Debug` and `Display` never show it, so that it cannot reach a log
/// line by accident; [`SecretValue::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secrets' values a placement carries: secret name → value.
pub type SecretValues = BTreeMap<String, SecretValue>;

/// `cube.api.secrets.put`: stores (or replaces) a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretPut {
    pub name: String,
    pub value: SecretValue,
}

/// `cube.api.secrets.rm`: removes a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretName {
    pub name: String,
}

/// What `cube.api.secrets.list` tells about a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretInfo {
    pub name: String,
    /// The value's length in bytes.
    pub bytes: usize,
    pub updated: DateTime<Utc>,
}

/// The environment with each secret's variable given the secret's value from `values` (what
/// a worker does with a placement): the first secret missing from `values` is the error.
pub fn resolve_env(env: &[EnvVar], values: &SecretValues) -> Result<Vec<EnvVar>, String> {
    env.iter()
        .map(|e| match e {
            EnvVar::Value(_) => Ok(e.clone()),
            EnvVar::Secret { name, secret } => match values.get(secret) {
                Some(v) => Ok(EnvVar::Value(format!("{name}={}", v.expose()))),
                None => Err(format!(
                    "secret `{secret}` (for {name}) does not exist: `cube secret put {secret}` \
                     stores it"
                )),
            },
        })
        .collect()
}

/// Why a secret's name or value is refused.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "secret name `{}` must be 1 to {MAX_SECRET_NAME} letters, digits, `_`, `-` or `.`, \
             not starting with `.`",
            name.chars().take(MAX_SECRET_NAME + 1).collect::<String>()
        ))
    }
}

pub fn check_value(value: &SecretValue) -> Result<(), String> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "a secret's value has at most {MAX_SECRET_BYTES} bytes; this one has {}",
            value.len()
        ));
    }
    if value.expose().contains('\0') {
        return Err(
            "a secret's value cannot contain a NUL byte (it becomes an environment variable)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries_are_strings_or_secret_references() {
        let env: Vec<EnvVar> =
            serde_json::from_str(r#"["A=1", {"name": "DB_PASSWORD", "secret": "db"}]"#).unwrap();
        assert_eq!(env[0], EnvVar::from("A=1"));
        assert_eq!(env[1].name(), "DB_PASSWORD");
        assert_eq!(env[1].secret(), Some("db"));
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"["A=1",{"name":"DB_PASSWORD","secret":"db"}]"#
        );
        assert!(serde_json::from_str::<EnvVar>(r#"{"name": "X"}"#).is_err());
        assert!(
            serde_json::from_str::<EnvVar>(r#"{"name": "X", "secret": "s", "value": "v"}"#)
                .is_err()
        );
    }

    #[test]
    fn a_value_never_shows_in_debug_or_display() {
        let v = SecretValue::new("hunter2");
        let put = SecretPut {
            name: "db".into(),
            value: v.clone(),
        };
        assert!(!format!("{put:?}").contains("hunter2"));
        assert_eq!(serde_json::to_string(&v).unwrap(), r#""hunter2""#);
        let var = EnvVar::Secret {
            name: "P".into(),
            secret: "db".into(),
        };
        assert_eq!(var.to_string(), "P=<secret db>");
    }

    #[test]
    fn a_placement_resolves_each_secret_or_names_the_missing_one() {
        let env = vec![
            EnvVar::from("A=1"),
            EnvVar::Secret {
                name: "P".into(),
                secret: "db".into(),
            },
        ];
        let mut values = SecretValues::new();
        let missing = resolve_env(&env, &values).unwrap_err();
        assert!(missing.contains("secret `db`"), "{missing}");
        values.insert("db".into(), SecretValue::new("s=3\ncret"));
        let resolved = resolve_env(&env, &values).unwrap();
        assert_eq!(
            resolved
                .iter()
                .map(|e| e.as_value().unwrap())
                .collect::<Vec<_>>(),
            ["A=1", "P=s=3\ncret"]
        );
    }

    #[test]
    fn names_and_values_are_checked() {
        for ok in ["db", "db.password", "A_b-9"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a b", "a/b", "a*", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_value(&SecretValue::new("x".repeat(MAX_SECRET_BYTES))).is_ok());
        assert!(check_value(&SecretValue::new("x".repeat(MAX_SECRET_BYTES + 1))).is_err());
        assert!(check_value(&SecretValue::new("a\0b")).is_err());
    }
}
