//! `cube.api.tokens.*`: the HTTP API's bearer tokens, kept hashed in the `cube-tokens` bucket
//! (see [`cube_shared::token`]). Only the manager role may read that bucket; clients manage
//! tokens through these requests, which the leading manager answers.

use async_nats::jetstream::kv;
use chrono::Utc;
use cube_shared::token::{
    format_token, hex, secret_hash, validate_token_name, TokenCreate, TokenCreated, TokenInfo,
    TokenRecord,
};
use cube_shared::wire::{self, encode, MAX_MESSAGE_BYTES};
use tracing::{info, warn};

/// Why a token request failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named `{0}` exists already (`cube token ls` lists them)")]
    NameTaken(String),
    #[error("no token named or with id `{0}` (`cube token ls` lists them)")]
    NoToken(String),
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error("{what}")]
    Bucket {
        what: String,
        #[source]
        source: cube_bus::NatsError,
    },
}

fn bucket(what: impl Into<String>) -> impl FnOnce(cube_bus::NatsError) -> TokenError {
    let what = what.into();
    move |source| TokenError::Bucket { what, source }
}

/// `n` random bytes from the operating system, in hex.
fn random_hex(n: usize) -> Result<String, TokenError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(hex(&bytes))
}

/// Every token's record, oldest first; records that do not decode are skipped (and logged).
pub async fn records(store: &kv::Store) -> Result<Vec<TokenRecord>, TokenError> {
    let entries = cube_bus::load_all(store)
        .await
        .map_err(|e| bucket("reading the tokens")(Box::new(e)))?;
    let mut records: Vec<TokenRecord> = entries
        .into_iter()
        .filter_map(
            |(key, value)| match wire::decode::<TokenRecord>(&value, MAX_MESSAGE_BYTES) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(key, error = %e, "a token record that does not decode");
                    None
                }
            },
        )
        .collect();
    records.sort_by_key(|r| r.info.created);
    Ok(records)
}

/// Makes a token: its record is stored (hashed) and the token itself returned, once.
pub async fn create(store: &kv::Store, request: TokenCreate) -> Result<TokenCreated, TokenError> {
    if let Some(name) = &request.name {
        validate_token_name(name).map_err(TokenError::Invalid)?;
    }
    let id = random_hex(cube_shared::token::ID_DIGITS / 2)?;
    let secret = random_hex(cube_shared::token::SECRET_DIGITS / 2)?;
    let name = request
        .name
        .unwrap_or_else(|| format!("{}-{id}", request.role));
    if records(store).await?.iter().any(|r| r.info.name == name) {
        return Err(TokenError::NameTaken(name));
    }
    let info = TokenInfo {
        id: id.clone(),
        name,
        role: request.role,
        created: Utc::now(),
    };
    let record = TokenRecord {
        info: info.clone(),
        secret_sha256: secret_hash(&secret),
    };
    // `create`, not `put`: an id is never reused, even by a (most unlikely) collision.
    store
        .create(&id, encode(&record))
        .await
        .map_err(|e| bucket("storing the token")(Box::new(e)))?;
    info!(id = %info.id, name = %info.name, role = %info.role, "token created");
    Ok(TokenCreated {
        token: format_token(&id, &secret),
        info,
    })
}

/// Revokes the token with this id or name.
pub async fn revoke(store: &kv::Store, which: &str) -> Result<TokenInfo, TokenError> {
    let all = records(store).await?;
    // An id first: a name may not look like another token's id, but ids are what is unique.
    let found = all
        .iter()
        .find(|r| r.info.id == which)
        .or_else(|| all.iter().find(|r| r.info.name == which))
        .cloned();
    let Some(record) = found else {
        return Err(TokenError::NoToken(which.to_string()));
    };
    store
        .purge(&record.info.id)
        .await
        .map_err(|e| bucket("removing the token")(Box::new(e)))?;
    info!(id = %record.info.id, name = %record.info.name, "token revoked");
    Ok(record.info)
}

/// Every token, oldest first, without hashes.
pub async fn list(store: &kv::Store) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(records(store).await?.into_iter().map(|r| r.info).collect())
}
