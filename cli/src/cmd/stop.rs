//! `cube stop`: asks Cube to stop a task, named by id, unique id prefix or name.

use anyhow::Result;
use clap::Args;
use uuid::Uuid;

use super::{cube, explain, get_task};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Task id, unique id prefix, or name.
    pub id: String,
}

pub async fn stop(args: StopArgs) -> Result<()> {
    let cube = cube(&args.nats).await?;
    let id: Uuid = match args.id.parse() {
        Ok(id) => id,
        Err(_) => get_task(&cube, &args.id).await?.id,
    };
    cube.stop(id).await.map_err(explain)?;
    println!("{id}");
    Ok(())
}
