//! The manager's shell, as `manager/src/run.rs` drives the rules: it takes what its consumers
//! deliver, hears heartbeats, ticks every second (hearing the waiting heartbeats first, then
//! saying whether it can hear and how long since its last tick), and hands what the rules
//! decided to its writer. And the manager's gray faults: it cannot hear (its NATS connection
//! is down), it is cut off without knowing it (a stalled stream), it pauses (SIGSTOP), its
//! host's wall clock steps.

use std::time::{Duration, Instant};

use cube_manager::metrics::Metrics;
use cube_manager::rules::{Decided, Rules, Stored};
use cube_shared::wire::encode;

use super::{short, timings, Store, World, WORKERS};

/// The manager's two durable consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Events,
    States,
    Services,
}

impl Store {
    fn queue(&mut self, stream: Stream) -> &mut super::Queue {
        match stream {
            Stream::Events => &mut self.events,
            Stream::States => &mut self.states,
            Stream::Services => &mut self.services,
        }
    }
}

/// A gray fault of the manager's, for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gray {
    /// Its NATS connection is down, and the shell knows it: nothing reaches it, nothing it
    /// writes goes out, heartbeats sent meanwhile are lost.
    Deaf,
    /// Its connection stalls while it looks up: heartbeats to it are lost; with `all`, its
    /// consumers and its writes stall too (a stalled TCP stream), otherwise only its
    /// heartbeat subscription drops messages (a slow consumer).
    CutOff { all: bool },
    /// The process is stopped: nothing of it runs, everything waits for it.
    Paused,
}

/// A manager that starts with what is stored.
pub fn new_manager(store: &Store, mono: Instant) -> Rules {
    let stored = Stored {
        tasks: store.task_db.values().cloned().collect(),
        nodes: store.node_db.values().cloned().collect(),
        drained: store.drained.iter().cloned().collect(),
        services: store.service_db.values().cloned().collect(),
    };
    let scheduler = cube_manager::algorithms::by_name("spread").expect("known scheduler");
    Rules::new(timings(), scheduler, Metrics::default(), stored, mono)
}

impl World {
    /// The manager host's wall clock.
    fn manager_now(&self) -> chrono::DateTime<chrono::Utc> {
        self.now + self.clock
    }

    fn paused(&self) -> bool {
        matches!(self.gray, Some((Gray::Paused, _)))
    }

    fn deaf(&self) -> bool {
        matches!(self.gray, Some((Gray::Deaf, _)))
    }

    /// Heartbeats sent to the manager now are lost.
    fn heartbeats_lost(&self) -> bool {
        matches!(self.gray, Some((Gray::Deaf | Gray::CutOff { .. }, _)))
    }

    /// The manager's consumers deliver, its API answers and its writer writes.
    fn connected(&self) -> bool {
        self.manager.is_some()
            && !matches!(
                self.gray,
                Some((Gray::Deaf | Gray::Paused | Gray::CutOff { all: true }, _))
            )
    }

    pub(super) fn crash_or_restart_manager(&mut self) {
        if self.manager.is_some() {
            note!(self, "manager crashes");
            self.manager_dies();
        } else if self.deaf() {
            note!(self, "manager cannot start: NATS is unreachable");
        } else {
            self.restart_manager();
        }
    }

    /// The process is gone, and with it its pause and its stalled connection.
    fn manager_dies(&mut self) {
        self.manager = None;
        self.unwritten.clear();
        self.unwritten_tasks.clear();
        if matches!(self.gray, Some((Gray::Paused | Gray::CutOff { .. }, _))) {
            self.gray = None;
        }
    }

    pub(super) fn restart_manager(&mut self) {
        note!(self, "manager starts");
        let mut rules = new_manager(&self.store, self.mono);
        // The status the Task DB does not hold: the kept reports, read back.
        let now = self.manager_now();
        for (subject, payload) in self.store.kept_in_order() {
            if !rules.replay_report(&subject, &payload, now) {
                self.store.kept.remove(&subject);
            }
        }
        self.manager = Some(rules);
        self.last_tick = self.mono;
    }

    /// An operator drains a node (at most two of the three at once) or undrains one, through
    /// the manager's API: recorded in the admin bucket first, then applied.
    pub(super) fn operator_drains(&mut self) {
        if !self.connected() {
            return;
        }
        let now = self.manager_now();
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        let name = self.workers[self.rng.below(WORKERS as u64) as usize]
            .name
            .clone();
        let drain = !self.store.drained.contains(&name);
        if (drain && self.store.drained.len() >= WORKERS - 1) || rules.check_drain(&name).is_err() {
            return;
        }
        if drain {
            self.store.drained.insert(name.clone());
        } else {
            self.store.drained.remove(&name);
        }
        rules.set_drain(&name, drain, now).expect("checked");
        note!(self, "operator drains {name}: {drain}");
        self.commit(None);
    }

    /// Takes what the manager decided and carries it out, as its writer does: records, then
    /// work, then the acknowledgements of `handled`. With faults, the manager may die at any
    /// point. A writer that cannot reach NATS writes nothing yet: what was decided waits, in
    /// order, and dies with the manager.
    fn commit(&mut self, handled: Option<(Stream, Vec<u64>)>) {
        let now = self.manager_now();
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        rules.reconcile(now);
        let decided: Decided = rules.take_effects();
        self.check_services();
        if self.trace_len > 0 {
            for e in &decided.journal {
                let task = e.task_id.map(short).unwrap_or_default();
                let worker = e.worker.as_deref().unwrap_or_default();
                note!(self, "manager: {} {task} {worker}: {}", e.kind, e.message);
            }
        }
        for task in &decided.tasks {
            // Judged when decided, by what was true then.
            let before = self.unwritten_tasks.get(&task.id);
            if let Some(old) = before.or(self.store.task_db.get(&task.id)).cloned() {
                self.check_given_up(&old, task);
            }
            self.unwritten_tasks.insert(task.id, task.clone());
        }
        self.unwritten.push_back(decided);
        if !self.connected() {
            return;
        }
        let crash_at = if self.faulty && self.rng.chance(0.03) {
            self.rng.below(3)
        } else {
            3
        };
        let decided = std::mem::take(&mut self.unwritten);
        self.unwritten_tasks.clear();
        if crash_at > 0 {
            for task in decided.iter().flat_map(|d| &d.tasks) {
                self.store_task(task.clone());
            }
            let forgotten: Vec<_> = decided.iter().flat_map(|d| d.forgotten.clone()).collect();
            self.store.purge_reports(&forgotten);
            for service in decided.iter().flat_map(|d| &d.services) {
                self.store
                    .service_db
                    .insert(service.name.clone(), service.clone());
            }
        }
        if crash_at > 1 {
            for work in decided.iter().flat_map(|d| &d.work) {
                let subject = work.subject.clone();
                let payload = encode(&work.event).to_vec();
                self.store
                    .publish_work(&subject, payload, work.event.id.to_string(), self.now);
            }
        }
        if crash_at > 2 {
            // An acknowledgement may be lost: the message comes again.
            let lose = self.faulty && self.rng.chance(0.05);
            if let Some((stream, seqs)) = handled.filter(|_| !lose) {
                self.store.queue(stream).ack(&seqs);
            }
        } else {
            note!(self, "manager dies mid-commit (step {crash_at})");
            self.manager_dies();
        }
    }

    /// The manager takes what its consumer on `stream` delivers, decides, and commits.
    pub(super) fn manager_handles(&mut self, stream: Stream) {
        if !self.connected() {
            return;
        }
        let now = self.manager_now();
        let Some(rules) = self.manager.as_mut() else {
            return;
        };
        let queue = self.store.queue(stream);
        let batch = queue.deliver(&mut self.rng, self.faulty);
        if batch.is_empty() {
            return;
        }
        let caught_up = queue.len() == batch.len();
        for m in &batch {
            match stream {
                Stream::Events => rules.on_event(&m.subject, &m.payload, now),
                Stream::States => rules.on_report(&m.subject, &m.payload, now),
                Stream::Services => rules.on_service_event(&m.subject, &m.payload, now),
            }
        }
        if stream == Stream::States && caught_up {
            // Caught up: what was recorded before a restart can go out again.
            rules.resend_placements();
        }
        let seqs = batch.iter().map(|m| m.seq).collect();
        note!(self, "manager handles {} {stream:?}", batch.len());
        self.commit(Some((stream, seqs)));
    }

    /// The heartbeats that arrived reach the rules; a paused manager leaves them waiting, one
    /// that cannot hear never gets them.
    fn hear_heartbeats(&mut self) {
        if self.paused() {
            return;
        }
        let lost = self.manager.is_none() || self.heartbeats_lost();
        if lost && self.store.heartbeats.is_empty() {
            return;
        }
        let heard: Vec<(String, Vec<u8>)> = self.store.heartbeats.drain(..).collect();
        if lost {
            note!(
                self,
                "{} heartbeats lost on the way to the manager",
                heard.len()
            );
            return;
        }
        let (now, mono) = (self.manager_now(), self.mono);
        let rules = self.manager.as_mut().expect("checked");
        for (subject, payload) in heard {
            rules.on_heartbeat(&subject, &payload, now, mono);
        }
    }

    pub(super) fn manager_hears_heartbeats(&mut self) {
        self.hear_heartbeats();
        self.commit(None);
    }

    /// The shell's tick, as in `run.rs`: placements resent if the state reports are caught
    /// up, waiting heartbeats heard, then whether it can hear, how long since the last tick,
    /// and the tick itself.
    pub(super) fn manager_ticks(&mut self) {
        if self.manager.is_none() || self.paused() {
            return;
        }
        let reach_nats = self.connected();
        let states_empty = self.store.states.is_empty();
        self.hear_heartbeats();
        let can_hear = !self.deaf();
        let (now, mono) = (self.manager_now(), self.mono);
        let gap = mono.saturating_duration_since(std::mem::replace(&mut self.last_tick, mono));
        let rules = self.manager.as_mut().expect("checked");
        if rules.resend_due() && reach_nats && states_empty {
            rules.resend_placements();
        }
        rules.set_hearing(can_hear, now, mono);
        rules.ticked_after(gap, now, mono);
        rules.tick(now, mono);
        if gap > Duration::from_secs(2) {
            note!(self, "manager ticks after {:.1}s", gap.as_secs_f64());
        }
        self.commit(None);
    }

    /// The manager's loop ticks every [`cube_manager::rules::Timings::tick`].
    pub(super) fn manager_tick_due(&mut self) {
        if self.mono.saturating_duration_since(self.last_tick) >= timings().tick {
            self.manager_ticks();
        }
    }

    /// A gray fault of the manager's begins: for 5 to 40 s it cannot hear, is cut off or is
    /// paused (one at a time); or its host's wall clock steps by up to two minutes either way
    /// (staying within two minutes of the others').
    pub(super) fn gray_fault(&mut self) {
        let kind = self.rng.below(4);
        let span = Duration::from_millis(5_000 + self.rng.below(35_001));
        if kind == 3 {
            let step = self.rng.below(240_001) as i64 - 120_000;
            let limit = chrono::Duration::seconds(120);
            self.clock = (self.clock + chrono::Duration::milliseconds(step)).clamp(-limit, limit);
            note!(
                self,
                "the manager's wall clock steps {step} ms: now {} ms off",
                self.clock.num_milliseconds()
            );
            return;
        }
        if self.gray.is_some() || (kind > 0 && self.manager.is_none()) {
            return;
        }
        let gray = match kind {
            0 => Gray::Deaf,
            1 => Gray::CutOff {
                all: self.rng.chance(0.5),
            },
            _ => Gray::Paused,
        };
        note!(self, "manager gray fault for {span:?}: {gray:?}");
        self.gray = Some((gray, self.mono + span));
    }

    /// A gray fault whose time has come ends.
    pub(super) fn gray_ends(&mut self) {
        if self.gray.is_some_and(|(_, until)| self.mono >= until) {
            self.end_gray();
        }
    }

    /// The manager's gray fault (if any) ends now. A paused manager resumes with the tick it
    /// missed, which finds the real gap since the last one.
    pub(super) fn end_gray(&mut self) {
        let Some((gray, _)) = self.gray.take() else {
            return;
        };
        note!(self, "manager gray fault ends: {gray:?}");
        if gray == Gray::Paused {
            self.manager_ticks();
        }
    }
}
