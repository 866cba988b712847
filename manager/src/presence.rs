//! Every manager process, leader or standby, answers on [`MANAGERS`] with what it is doing,
//! so `cube managers` and the dashboard can show the leader, its epoch and the standbys.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use cube_shared::subjects::MANAGERS;
use cube_shared::wire::encode;
use cube_shared::{ManagerInfo, ManagerRole};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::lease::Seen;
use crate::{Error, Holder};

/// What this manager answers on [`MANAGERS`].
pub(crate) struct Presence {
    info: Mutex<ManagerInfo>,
    /// What the lease looked like when this manager last read it as a standby.
    pub(crate) seen: Arc<Mutex<Seen>>,
}

impl Presence {
    pub(crate) fn new(holder: &Holder) -> Arc<Presence> {
        Arc::new(Presence {
            info: Mutex::new(ManagerInfo {
                id: holder.id,
                host: holder.host.clone(),
                pid: holder.pid,
                started: holder.started,
                role: ManagerRole::Standby,
                epoch: None,
                since: Utc::now(),
                leader: None,
                terms: 0,
            }),
            seen: Arc::default(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut ManagerInfo)) {
        f(&mut self.info.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(crate) fn standby(&self) {
        self.update(|i| {
            i.role = ManagerRole::Standby;
            i.epoch = None;
            i.since = Utc::now();
        });
    }

    pub(crate) fn lead(&self, epoch: u64) {
        self.update(|i| {
            i.role = ManagerRole::Leader;
            i.epoch = Some(epoch);
            i.since = Utc::now();
            i.leader = None;
            i.terms += 1;
        });
    }

    /// The answer now: a standby's includes the holder it last saw.
    pub(crate) fn info(&self) -> ManagerInfo {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if info.role == ManagerRole::Standby {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((holder, epoch)) = &seen.holder {
                info.leader = Some(holder.clone());
                info.epoch = Some(*epoch);
            }
        }
        info
    }

    /// Answers every request on [`MANAGERS`] until `shutdown`.
    pub(crate) async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, Error> {
        let mut requests = client
            .subscribe(MANAGERS.to_string())
            .await
            .map_err(|source| Error::Subscribe {
                subject: MANAGERS.to_string(),
                source,
            })?;
        Ok(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = requests.next() => m,
                };
                let Some(msg) = msg else { return };
                if let Some(reply) = msg.reply {
                    if let Err(e) = client.publish(reply, encode(&self.info())).await {
                        debug!(error = %e, "answering {MANAGERS}");
                    }
                }
            }
        }))
    }
}
