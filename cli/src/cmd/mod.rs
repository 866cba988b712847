//! The client commands: submit, stop, status, nodes, managers, events, service, secret,
//! token. Each speaks
//! only the public NATS contract, through `cube-client`, as any other client could; this
//! module turns the client's typed errors into messages that say what to do.

pub mod events;
pub mod managers;
pub mod nodes;
pub mod secret;
pub mod service;
pub mod status;
pub mod stop;
pub mod submit;
mod task_spec;
pub mod token;

use anyhow::{anyhow, Result};
use cube_client::{Chain, Cube, Error};
use cube_shared::Task;

use crate::connect::connect;
use crate::NatsArgs;

/// A client over a fresh connection, with the credentials `cube dev` left if none are given.
pub async fn cube(nats: &NatsArgs) -> Result<Cube> {
    Ok(Cube::new(connect(&nats.client(), "cube-cli").await?))
}

/// The client's error with a hint where one helps: nobody answering means no manager, a
/// missing stream or an event not stored means no manager ever ran.
pub fn explain(e: Error) -> anyhow::Error {
    const NO_MANAGER: &str = "is `cube manager` (or `cube dev`) running against this NATS server?";
    const NEVER_RAN: &str = "against this NATS server? It creates the streams";
    match e {
        Error::NoManager(subject) => {
            anyhow!("the manager does not answer {subject} (no responders) — {NO_MANAGER}")
        }
        Error::Timeout { what, after } => {
            anyhow!("no answer from {what} within {after:?} — {NO_MANAGER}")
        }
        Error::NoStream(stream) => {
            anyhow!("the stream {stream} does not exist — has `cube manager` ever run {NEVER_RAN}")
        }
        e @ Error::Refused { .. } if e.is_full() => anyhow!(
            "{e}; nothing was stored — its stream holds as many events as its limits allow, waiting for the manager (is it running and keeping up?): submit it again later"
        ),
        e @ Error::NotStored { .. } => {
            anyhow!("{}; has a manager ever run {NEVER_RAN}", Chain(&e))
        }
        other => other.into(),
    }
}

/// One task, by id, unique id prefix or name; one the manager cannot find says how to.
pub async fn get_task(cube: &Cube, id: &str) -> Result<Task> {
    cube.task(id).await.map_err(|e| match e {
        Error::Manager(_) => anyhow::Error::new(e).context(format!(
            "looking up task `{id}` (`cube status` lists the tasks; give an id, a unique id prefix or a name)"
        )),
        other => explain(other),
    })
}
