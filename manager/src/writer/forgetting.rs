//! Forgotten tasks' deletions, waiting to be stored a few at a time with the commits that
//! follow (see [`super`]).

use std::collections::{HashSet, VecDeque};

use cube_bus::Outgoing;
use cube_shared::subjects::{task_of_key, TASK_DB};
use uuid::Uuid;

/// How many forgotten tasks' deletions go with one commit. A sweep forgets a second's worth
/// of ended tasks at once (1,000 at 1,000 tasks a second): stored in one go they took 30 to
/// 76 ms, and every placement queued behind waited (`cube bench soak`, the tail of submit →
/// running); 100 take a few.
pub(super) const CHUNK: usize = 100;

/// The forgotten tasks whose records are not deleted yet, in the order they were forgotten.
#[derive(Default)]
pub(super) struct Forgetting {
    queue: VecDeque<(Uuid, Option<Outgoing>)>,
    ids: HashSet<Uuid>,
}

/// Deletions to store with a commit's records, and the tasks whose kept reports go once
/// they are stored.
#[derive(Default, Debug)]
pub(super) struct Deletions {
    /// Stored before the commit's records.
    pub before: Vec<Outgoing>,
    /// Stored after them.
    pub after: Vec<Outgoing>,
    pub forgotten: Vec<Uuid>,
}

impl Forgetting {
    /// Forgotten tasks, each with the deletion of its record (if it was stored).
    pub fn add(&mut self, forgets: Vec<(Uuid, Option<Outgoing>)>) {
        for (id, deletion) in forgets {
            self.ids.insert(id);
            self.queue.push_back((id, deletion));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// What goes with a commit that writes `records`: at most [`CHUNK`] deletions, after
    /// them; or every deletion waiting, before them, if one of `records` is of a task still
    /// waiting here (its id submitted again once forgotten): its old record must go before
    /// its new one is written, as it was decided first.
    pub fn next_for(&mut self, records: &[Outgoing]) -> Deletions {
        if self.queue.is_empty() {
            return Deletions::default();
        }
        let prefix = format!("$KV.{TASK_DB}.");
        let again = records.iter().any(|r| {
            r.subject
                .strip_prefix(&prefix)
                .and_then(task_of_key)
                .is_some_and(|id| self.ids.contains(&id))
        });
        let n = if again { self.queue.len() } else { CHUNK };
        let (forgotten, deletions): (Vec<Uuid>, Vec<Option<Outgoing>>) =
            self.queue.drain(..n.min(self.queue.len())).unzip();
        for id in &forgotten {
            self.ids.remove(id);
        }
        let deletions = deletions.into_iter().flatten().collect();
        let (before, after) = if again {
            (deletions, Vec::new())
        } else {
            (Vec::new(), deletions)
        };
        Deletions {
            before,
            after,
            forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cube_shared::subjects::kv_subject;

    fn record(id: Uuid) -> Outgoing {
        Outgoing {
            subject: kv_subject(TASK_DB, &id.to_string()),
            payload: bytes::Bytes::new(),
            msg_id: None,
            headers: None,
        }
    }

    fn forgotten(n: usize) -> Vec<(Uuid, Option<Outgoing>)> {
        (0..n)
            .map(|_| {
                let id = Uuid::new_v4();
                (id, Some(record(id)))
            })
            .collect()
    }

    #[test]
    fn deletions_go_a_chunk_at_a_time_after_the_records_in_the_order_forgotten() {
        let mut f = Forgetting::default();
        let forgets = forgotten(CHUNK * 2 + 5);
        let ids: Vec<Uuid> = forgets.iter().map(|(id, _)| *id).collect();
        f.add(forgets);
        let mut seen = Vec::new();
        for expected in [CHUNK, CHUNK, 5] {
            let d = f.next_for(&[record(Uuid::new_v4())]);
            assert!(d.before.is_empty());
            assert_eq!((d.after.len(), d.forgotten.len()), (expected, expected));
            seen.extend(d.forgotten);
        }
        assert_eq!(seen, ids);
        assert!(f.is_empty());
        assert!(f.next_for(&[]).forgotten.is_empty());
    }

    #[test]
    fn a_task_forgotten_without_a_record_still_has_its_reports_purged() {
        let mut f = Forgetting::default();
        let id = Uuid::new_v4();
        f.add(vec![(id, None)]);
        let d = f.next_for(&[]);
        assert!(d.after.is_empty());
        assert_eq!(d.forgotten, vec![id]);
    }

    #[test]
    fn an_id_submitted_again_has_every_waiting_deletion_stored_before_its_new_record() {
        let mut f = Forgetting::default();
        let forgets = forgotten(CHUNK * 3);
        let again = forgets[CHUNK * 2 + 1].0;
        f.add(forgets);
        let placed_again = format!("{}on.w1.{again}", kv_subject(TASK_DB, ""));
        let new_record = Outgoing {
            subject: placed_again,
            ..record(again)
        };
        let d = f.next_for(&[new_record]);
        assert_eq!(d.before.len(), CHUNK * 3, "all of them, in order, first");
        assert!(d.after.is_empty());
        assert!(d.forgotten.contains(&again));
        assert!(f.is_empty());
    }
}
