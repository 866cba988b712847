//! `cube events`: the journal of decisions, its last entries or followed live.

use anyhow::Result;
use clap::Args;
use cube_shared::JournalEntry;

use super::{cube, explain};
use crate::output::{line, or_dash, print_json, OutputArgs};
use crate::NatsArgs;

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Keep printing new events as they happen.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many past events to show.
    #[arg(long, default_value_t = 50)]
    pub last: u64,
    /// With `-o json`: a JSON array of journal entries, or with `-f` one entry per line.
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn events(args: EventsArgs) -> Result<()> {
    let json = args.output.json();
    let cube = cube(&args.nats).await?;
    // `--last 0` shows the newest entry, as it always has.
    let mut journal = cube
        .follow_journal(args.last.max(1))
        .await
        .map_err(explain)?;
    // Without -f, JSON is one array: gathered, then printed.
    let mut gathered: Vec<JournalEntry> = Vec::new();
    if journal.was_empty() && !args.follow {
        return if json { print_json(&gathered) } else { Ok(()) };
    }
    if !json {
        line(format_args!(
            "{:<24}  {:<14}  {:<8}  {:<12}  MESSAGE",
            "TIME", "KIND", "TASK", "WORKER"
        ));
    }
    while let Some(read) = journal.next().await {
        let read = read.map_err(explain)?;
        match read.entry {
            Ok(e) if json && args.follow => line(serde_json::to_string(&e)?),
            Ok(e) if json => gathered.push(e),
            Ok(e) => line(format_args!(
                "{:<24}  {:<14}  {:<8}  {:<12}  {}",
                e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.kind,
                e.task_id
                    .map_or("-".to_string(), |id| id.to_string()[..8].to_string()),
                or_dash(e.worker.as_deref()),
                e.message
            )),
            Err(e) => eprintln!("(unreadable journal entry: {e})"),
        }
        if read.caught_up && !args.follow {
            break;
        }
    }
    if json && !args.follow {
        print_json(&gathered)?;
    }
    Ok(())
}
