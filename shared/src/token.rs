//! Bearer tokens for the HTTP API and dashboard: their roles, what the `cube-tokens` bucket
//! keeps of them, and the `cube.api.tokens.*` requests that manage them.
//!
//! A token reads `cube_<id>_<secret>`: the id (12 hex digits) names its record in the bucket,
//! the secret (64 hex digits, 256 random bits) is known only to whoever was given the token.
//! The bucket keeps the SHA-256 of the secret, never the secret, and a presented secret is
//! compared with it in constant time.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Every GET route and the live streams.
    Read,
    /// Also submitting and stopping tasks, and deploying, scaling, rolling back, promoting
    /// and removing services.
    Submit,
    /// Everything, including managing tokens.
    Admin,
}

impl TokenRole {
    pub const ALL: [TokenRole; 3] = [TokenRole::Read, TokenRole::Submit, TokenRole::Admin];

    pub fn name(self) -> &'static str {
        match self {
            TokenRole::Read => "read",
            TokenRole::Submit => "submit",
            TokenRole::Admin => "admin",
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TokenRole {
    type Err = String;
    fn from_str(s: &str) -> Result<TokenRole, String> {
        TokenRole::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role `{s}`: read, submit or admin"))
    }
}

/// What anyone may see of a token: never its secret nor the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: TokenRole,
    pub created: DateTime<Utc>,
}

/// A token's record in the `cube-tokens` bucket, under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// SHA-256 of the secret, in hex.
    pub secret_sha256: String,
}

impl TokenRecord {
    /// Whether `secret` is this token's, compared in constant time.
    pub fn matches(&self, secret: &str) -> bool {
        let presented = secret_hash(secret);
        presented
            .as_bytes()
            .ct_eq(self.secret_sha256.as_bytes())
            .into()
    }
}

/// Request body of `cube.api.tokens.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub role: TokenRole,
    /// Unique among the tokens; by default `<role>-<id>`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Answer to `cube.api.tokens.create`: the only time the token itself is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// Request body of `cube.api.tokens.revoke`: a token's name or id. The answer is the
/// revoked token's [`TokenInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoke {
    pub token: String,
}

/// How a token begins.
pub const TOKEN_PREFIX: &str = "cube_";
/// Hex digits of a token's id and of its secret.
pub const ID_DIGITS: usize = 12;
pub const SECRET_DIGITS: usize = 64;

/// The token made of an id and a secret.
pub fn format_token(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{id}_{secret}")
}

/// A token's id and secret, if it has the shape of one.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_DIGITS) && hex(secret, SECRET_DIGITS)).then_some((id, secret))
}

/// SHA-256 of a secret, in lower-case hex.
pub fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a token name is acceptable: 1 to 63 letters, digits, `-`, `_` or `.`.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "token name `{name}`: 1 to 63 letters, digits, `-`, `_` or `.`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(TokenRole::Read < TokenRole::Submit && TokenRole::Submit < TokenRole::Admin);
        for r in TokenRole::ALL {
            assert_eq!(r.name().parse::<TokenRole>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!("root".parse::<TokenRole>().is_err());
    }

    #[test]
    fn tokens_parse_and_match_only_their_secret() {
        let (id, secret) = ("0123456789ab", "f".repeat(64));
        let token = format_token(id, &secret);
        assert_eq!(parse_token(&token), Some((id, secret.as_str())));
        for bad in [
            "",
            "cube_",
            "cube_0123456789ab",
            "cube_0123456789a_ffff",
            "xube_0123456789ab_ffff",
            &format!("cube_0123456789ab_{}", "g".repeat(64)),
            &format!("cube_0123456789ab_{}", "f".repeat(63)),
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
        let record = TokenRecord {
            info: TokenInfo {
                id: id.into(),
                name: "ci".into(),
                role: TokenRole::Read,
                created: Utc::now(),
            },
            secret_sha256: secret_hash(&secret),
        };
        assert!(record.matches(&secret));
        assert!(!record.matches(&"e".repeat(64)));
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // The record as stored names no secret.
        let stored = serde_json::to_string(&record).unwrap();
        assert!(!stored.contains(&secret), "{stored}");
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(validate_token_name("ci-bot_1.2").is_ok());
        for bad in ["", "a b", "x/y", &"a".repeat(64)] {
            assert!(validate_token_name(bad).is_err(), "{bad}");
        }
    }
}
