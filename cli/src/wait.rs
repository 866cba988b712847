//! `cube submit --wait`: follows a task until it runs, ends, or cannot be placed in time.
//!
//! Two sources drive it: the journal (`cube.journal.>`, core NATS, subscribed before the
//! event is published so nothing is missed) says promptly what the manager decided, and a
//! `cube.api.tasks.get` every second says where the task is even if an entry was lost.
//! On a terminal the stages show on stderr, one line updated in place; otherwise nothing is
//! printed but the outcome of a failure.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Result};
use cube_shared::subjects::JOURNAL_ALL;
use cube_shared::wire::{self, MAX_MESSAGE_BYTES};
use cube_shared::{JournalEntry, State, Task};
use futures::StreamExt;
use uuid::Uuid;

use crate::output::or_dash;

/// Where a task stands, as far as `--wait` is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Published; the manager has not recorded it yet.
    Sent,
    /// Recorded, waiting for a node; the reason, if one was given.
    Pending(Option<String>),
    /// Placed on a worker (or queued for the first with room): the worker pulls the image if
    /// it lacks it, creates and starts the container.
    Scheduled(Option<String>),
    Running(Option<String>),
    /// Ran and ended well (exit code 0, or stopped).
    Completed(Option<i64>),
    /// Failed, refused or out of attempts: why.
    Failed(String),
}

impl Stage {
    /// What the task's record says.
    pub fn of(task: &Task) -> Stage {
        match task.state {
            State::Pending => Stage::Pending(task.error.clone()),
            State::Scheduled => Stage::Scheduled(task.worker.clone()),
            State::Running => Stage::Running(task.worker.clone()),
            State::Completed => Stage::Completed(task.exit_code),
            State::Failed => Stage::Failed(or_dash(task.error.as_deref())),
        }
    }

    /// What a journal entry about the task says, if it moves the task on.
    pub fn from_entry(entry: &JournalEntry) -> Option<Stage> {
        Some(match entry.kind.as_str() {
            "submitted" => Stage::Pending(None),
            "unschedulable" => Stage::Pending(Some(entry.message.clone())),
            "scheduled" => Stage::Scheduled(entry.worker.clone()),
            "running" => Stage::Running(entry.worker.clone()),
            "failed" | "rejected" => Stage::Failed(entry.message.clone()),
            _ => return None,
        })
    }

    /// How far along: a stage never gives way to an earlier one (a journal entry and the
    /// record may arrive in either order).
    fn rank(&self) -> u8 {
        match self {
            Stage::Sent => 0,
            Stage::Pending(_) => 1,
            Stage::Scheduled(_) => 2,
            Stage::Running(_) | Stage::Completed(_) | Stage::Failed(_) => 3,
        }
    }

    /// The later of the two; between equals, the newer (a pending task's latest reason).
    fn advance(self, next: Stage) -> Stage {
        if next.rank() >= self.rank() {
            next
        } else {
            self
        }
    }

    #[cfg(test)]
    fn is_done(&self) -> bool {
        matches!(
            self,
            Stage::Running(_) | Stage::Completed(_) | Stage::Failed(_)
        )
    }

    /// One line for the terminal.
    pub fn describe(&self) -> String {
        match self {
            Stage::Sent => "submitted; waiting for the manager".into(),
            Stage::Pending(None) => "pending: waiting for a node".into(),
            Stage::Pending(Some(why)) => format!("pending: {why}"),
            Stage::Scheduled(Some(w)) => {
                format!("scheduled on {w}: pulling the image if needed, starting the container")
            }
            Stage::Scheduled(None) => {
                "queued for the first worker with room: pulling the image if needed, starting the container".into()
            }
            Stage::Running(w) => format!("running on {}", or_dash(w.as_deref())),
            Stage::Completed(code) => format!(
                "completed (exit code {})",
                code.map_or("-".into(), |c| c.to_string())
            ),
            Stage::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// Shows progress on stderr, one line updated in place, when it is a terminal; stays silent
/// otherwise. Also used by `cube service deploy`.
pub struct Progress {
    terminal: bool,
    shown: Option<String>,
    started: tokio::time::Instant,
}

impl Progress {
    pub fn start() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            shown: None,
            started: tokio::time::Instant::now(),
        }
    }

    pub fn show(&mut self, text: &str) {
        if !self.terminal || self.shown.as_deref() == Some(text) {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64();
        // Back to the start of the line, clear it, write the stage.
        eprint!("\r\x1b[2K[{secs:5.1}s] {text}");
        let _ = std::io::stderr().flush();
        self.shown = Some(text.to_string());
    }

    /// A line of its own on stderr (terminal or not), above the progress line.
    pub fn note(&mut self, text: &str) {
        if self.terminal && self.shown.is_some() {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
        if let Some(shown) = self.shown.take() {
            self.show(&shown);
        }
    }

    /// Removes the progress line (the outcome is printed elsewhere).
    pub fn clear(&mut self) {
        if self.terminal && self.shown.take().is_some() {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    pub fn finish(&mut self, text: &str) {
        if self.terminal {
            self.show(text);
            eprintln!();
        }
    }
}

/// A subscription to the journal, made before the event is published.
pub async fn subscribe(client: &async_nats::Client) -> Result<async_nats::Subscriber> {
    Ok(client.subscribe(JOURNAL_ALL).await?)
}

/// Follows task `id` until it runs or ends, or `timeout` passes. Succeeds if it runs or
/// completed; fails with the reason if it failed, was refused, or is still not running.
pub async fn wait(
    cube: &cube_client::Cube,
    mut journal: async_nats::Subscriber,
    id: Uuid,
    timeout: Duration,
) -> Result<()> {
    let mut progress = Progress::start();
    let mut stage = Stage::Sent;
    progress.show(&stage.describe());
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            Some(msg) = journal.next() => {
                let Ok(entry) = wire::decode::<JournalEntry>(&msg.payload, MAX_MESSAGE_BYTES) else {
                    continue;
                };
                if entry.task_id != Some(id) {
                    continue;
                }
                if let Some(next) = Stage::from_entry(&entry) {
                    stage = stage.advance(next);
                }
            }
            _ = poll.tick() => match crate::cmd::get_task(cube, &id.to_string()).await {
                Ok(task) => {
                    stage = stage.advance(Stage::of(&task));
                    last_error = None;
                }
                Err(e) => last_error = Some(e),
            },
            _ = &mut deadline => {
                progress.finish(&stage.describe());
                if let Some(e) = last_error {
                    return Err(e.context(format!("task {id} not running after {timeout:?}")));
                }
                bail!(
                    "task {id} is not running after {timeout:?}: {} (it stays submitted: `cube stop {id}` cancels it)",
                    stage.describe()
                );
            }
        }
        progress.show(&stage.describe());
        match &stage {
            Stage::Running(_) | Stage::Completed(Some(0) | None) => {
                progress.finish(&stage.describe());
                return Ok(());
            }
            Stage::Completed(Some(code)) => {
                progress.finish(&stage.describe());
                bail!("task {id} exited with code {code}")
            }
            Stage::Failed(why) => {
                progress.finish(&stage.describe());
                bail!("task {id} failed: {why}")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_move_the_stage() {
        let id = Uuid::new_v4();
        let e = |kind: &str, msg: &str| JournalEntry::new(kind, msg).task(id).worker("w1");
        assert_eq!(
            Stage::from_entry(&e("unschedulable", "0/1 nodes available")),
            Some(Stage::Pending(Some("0/1 nodes available".into())))
        );
        assert_eq!(
            Stage::from_entry(&e("scheduled", "placed on w1")),
            Some(Stage::Scheduled(Some("w1".into())))
        );
        assert!(Stage::from_entry(&e("running", "on w1")).unwrap().is_done());
        assert_eq!(
            Stage::from_entry(&e("rejected", "image: bad")),
            Some(Stage::Failed("image: bad".into()))
        );
        assert_eq!(Stage::from_entry(&e("node-joined", "w2")), None);
        // Whatever order they come in, the stage only moves on.
        let scheduled = Stage::Scheduled(Some("w1".into()));
        assert_eq!(
            scheduled.clone().advance(Stage::Pending(None)),
            scheduled.clone()
        );
        assert_eq!(
            Stage::Pending(None).advance(Stage::Pending(Some("full".into()))),
            Stage::Pending(Some("full".into()))
        );
        assert!(scheduled.advance(Stage::Failed("x".into())).is_done());
    }

    #[test]
    fn the_record_gives_the_stage() {
        let mut t = Task::new("busybox");
        t.error = Some("0/1 nodes available: 1 insufficient memory".into());
        assert!(Stage::of(&t).describe().contains("insufficient memory"));
        t.state = State::Failed;
        t.error = Some("image missing".into());
        assert_eq!(Stage::of(&t), Stage::Failed("image missing".into()));
        t.state = State::Completed;
        t.exit_code = Some(0);
        assert_eq!(Stage::of(&t).describe(), "completed (exit code 0)");
    }
}
