//! The simulated JetStream: streams whose messages stay until acknowledged, delivered in
//! batches that faults may shrink, delay and reorder; and the seeded randomness.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

/// xorshift64*: small, fast, and the same sequence for the same seed everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub seq: u64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// A stream with one durable consumer: a message is delivered (again) until acknowledged.
#[derive(Default)]
pub struct Queue {
    next_seq: u64,
    unacked: VecDeque<Msg>,
}

impl Queue {
    pub fn push(&mut self, subject: &str, payload: Vec<u8>) {
        self.next_seq += 1;
        self.unacked.push_back(Msg {
            seq: self.next_seq,
            subject: subject.to_string(),
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// The sequence of the last message stored.
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// What the consumer hands over now: the waiting messages in order, or with faults a
    /// random number of them (a pull that returns early), possibly none.
    pub fn deliver(&mut self, rng: &mut Rng, faulty: bool) -> Vec<Msg> {
        let n = if faulty {
            rng.below(self.unacked.len() as u64 + 1) as usize
        } else {
            self.unacked.len()
        };
        self.unacked.iter().take(n).cloned().collect()
    }

    /// The first waiting message, if any.
    pub fn first(&self) -> Option<Msg> {
        self.unacked.front().cloned()
    }

    pub fn ack(&mut self, seqs: &[u64]) {
        self.unacked.retain(|m| !seqs.contains(&m.seq));
    }

    /// Redeliveries after an ack wait overtake later messages: reorder what waits.
    pub fn shuffle(&mut self, rng: &mut Rng) {
        let n = self.unacked.len();
        if n < 2 {
            return;
        }
        let i = rng.below(n as u64) as usize;
        let j = rng.below(n as u64) as usize;
        self.unacked.swap(i, j);
    }
}

impl super::Store {
    /// Publishes work with a message id: a copy within the duplicate window is dropped.
    pub fn publish_work(
        &mut self,
        subject: &str,
        payload: Vec<u8>,
        msg_id: String,
        now: DateTime<Utc>,
    ) {
        let window = chrono::Duration::seconds(120);
        self.dedup.retain(|_, at| now - *at < window);
        if self.dedup.insert(msg_id, now).is_some() {
            return;
        }
        let worker = subject.rsplit('.').next().unwrap_or_default().to_string();
        self.work.entry(worker).or_default().push(subject, payload);
    }
}

impl super::Store {
    /// A worker's report: delivered to the manager's consumer, and kept as its subject's last.
    pub fn publish_report(&mut self, subject: &str, payload: Vec<u8>) {
        self.states.push(subject, payload.clone());
        self.kept
            .insert(subject.to_string(), (self.states.last_seq(), payload));
    }

    /// The kept reports of forgotten tasks go (`tasks.state.<task>.*` purged).
    pub fn purge_reports(&mut self, tasks: &[uuid::Uuid]) {
        for id in tasks {
            let prefix = format!("tasks.state.{id}.");
            self.kept.retain(|subject, _| !subject.starts_with(&prefix));
        }
    }

    /// The kept reports, oldest first, as a starting manager reads them.
    pub fn kept_in_order(&self) -> Vec<(String, Vec<u8>)> {
        let mut kept: Vec<(u64, String, Vec<u8>)> = self
            .kept
            .iter()
            .map(|(s, (seq, p))| (*seq, s.clone(), p.clone()))
            .collect();
        kept.sort_unstable_by_key(|k| k.0);
        kept.into_iter().map(|(_, s, p)| (s, p)).collect()
    }

    /// What a reader of the Task DB and `CUBE_STATE` sees of task `id`: its record, running if
    /// the kept report of its placement says so (the status the Task DB does not hold).
    pub fn view(&self, id: &uuid::Uuid) -> Option<cube_shared::Task> {
        use cube_shared::{State, StateReport};
        let mut t = self.task_db.get(id)?.clone();
        if !matches!(t.state, State::Scheduled | State::Running) {
            return Some(t);
        }
        let Some(worker) = t.worker.clone() else {
            return Some(t);
        };
        let subject = cube_shared::subjects::state_for(*id, &worker);
        let report = self
            .kept
            .get(&subject)
            .and_then(|(_, p)| serde_json::from_slice::<StateReport>(p).ok());
        if let Some(r) = report.filter(|r| r.generation == Some(t.generation)) {
            if r.state == State::Running {
                t.state = State::Running;
                t.container_id = r.container_id.or(t.container_id);
                t.start_time = r.start_time.or(t.start_time);
            }
        }
        Some(t)
    }

    /// [`Self::view`] of every task.
    pub fn views(&self) -> Vec<cube_shared::Task> {
        self.task_db.keys().filter_map(|id| self.view(id)).collect()
    }
}
