//! Secrets (`cube secret put`): the leader's copy of the `cube-secrets` bucket, which only the
//! manager may read. Only the leader writes it, and each term starts by reading it, so the
//! copy is the bucket. A placement of a task whose environment names secrets carries their
//! values, put in as the work is sent (see `run::commit`): they are in no record the manager
//! stores and never in an answer, a journal entry or a log line.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use cube_shared::secret::{self, SecretInfo, SecretPut, SecretValue, SecretValues};
use cube_shared::wire::encode;
use cube_shared::Task;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// A secret as the bucket keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    value: SecretValue,
    updated: DateTime<Utc>,
}

/// Why a secret could not be stored or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    #[error("{0}")]
    Invalid(String),
    #[error("no secret {0}")]
    Unknown(String),
    #[error("storing secret {name}")]
    Store {
        name: String,
        #[source]
        source: cube_bus::NatsError,
    },
}

#[derive(Clone)]
pub(crate) struct Secrets {
    store: kv::Store,
    values: BTreeMap<String, Stored>,
}

impl Secrets {
    /// Reads every secret (at the start of a term). An entry this version cannot read is
    /// skipped, with a warning naming it.
    pub(crate) async fn load(store: kv::Store) -> Result<Secrets, crate::Error> {
        let mut values = BTreeMap::new();
        for (name, bytes) in crate::topology::load_all(&store).await? {
            match serde_json::from_slice::<Stored>(&bytes) {
                Ok(stored) => {
                    values.insert(name, stored);
                }
                Err(e) => warn!(secret = %name, error = %e, "an unreadable secret is ignored"),
            }
        }
        Ok(Secrets { store, values })
    }

    /// The values of the secrets `task`'s environment names, as far as they exist: a
    /// placement without one of them fails on its worker with the secret's name.
    pub(crate) fn resolve(&self, task: &Task) -> SecretValues {
        task.env
            .iter()
            .filter_map(|e| e.secret())
            .filter_map(|name| {
                let stored = self.values.get(name)?;
                Some((name.to_string(), stored.value.clone()))
            })
            .collect()
    }

    pub(crate) async fn put(&mut self, put: SecretPut) -> Result<(), SecretError> {
        secret::check_name(&put.name).map_err(SecretError::Invalid)?;
        secret::check_value(&put.value).map_err(SecretError::Invalid)?;
        let stored = Stored {
            value: put.value,
            updated: Utc::now(),
        };
        self.store
            .put(&put.name, encode(&stored))
            .await
            .map_err(|e| SecretError::Store {
                name: put.name.clone(),
                source: e.into(),
            })?;
        info!(secret = %put.name, "secret stored");
        self.values.insert(put.name, stored);
        Ok(())
    }

    pub(crate) async fn remove(&mut self, name: &str) -> Result<(), SecretError> {
        if !self.values.contains_key(name) {
            return Err(SecretError::Unknown(name.to_string()));
        }
        // Purged, not only deleted: the value leaves the bucket's history too.
        self.store
            .purge(name)
            .await
            .map_err(|e| SecretError::Store {
                name: name.to_string(),
                source: e.into(),
            })?;
        info!(secret = %name, "secret removed");
        self.values.remove(name);
        Ok(())
    }

    pub(crate) fn list(&self) -> Vec<SecretInfo> {
        self.values
            .iter()
            .map(|(name, s)| SecretInfo {
                name: name.clone(),
                bytes: s.value.len(),
                updated: s.updated,
            })
            .collect()
    }
}
