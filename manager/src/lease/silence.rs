//! The judgement "has the holder gone silent", apart from NATS: time is passed in.

use std::time::Duration;

use tokio::time::Instant;

/// The judgement "has the holder gone silent": its revision unchanged for the ttl, watched
/// without a gap. A gap longer than half the ttl between two reads (this manager could not
/// reach NATS, or was itself paused) starts the watch again, so a holder is never judged over
/// time in which nobody could hear it.
#[derive(Debug, Default)]
pub struct Silence {
    /// The revision watched, when it was first seen, and when it was last read.
    watched: Option<(u64, Instant, Instant)>,
}

impl Silence {
    /// Records a read of `revision` at `now`; true if the holder has been silent for `ttl`.
    pub fn observe(&mut self, revision: u64, now: Instant, ttl: Duration) -> bool {
        match &mut self.watched {
            Some((r, since, last)) if *r == revision && now.duration_since(*last) <= ttl / 2 => {
                *last = now;
                now.duration_since(*since) >= ttl
            }
            _ => {
                self.watched = Some((revision, now, now));
                false
            }
        }
    }

    /// A read failed: what was watched says nothing about the time that follows.
    pub fn forget(&mut self) {
        self.watched = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(6);

    #[test]
    fn a_holder_is_silent_once_its_revision_stays_unchanged_for_the_ttl() {
        let t0 = Instant::now();
        let step = TTL / 4;
        let mut s = Silence::default();
        let mut now = t0;
        assert!(!s.observe(7, now, TTL), "first seen: not yet silent");
        while now.duration_since(t0) + step < TTL {
            now += step;
            assert!(!s.observe(7, now, TTL), "silent for {:?} only", now - t0);
        }
        now = t0 + TTL;
        assert!(s.observe(7, now, TTL));
    }

    #[test]
    fn a_renewal_starts_the_watch_again() {
        let t0 = Instant::now();
        let mut s = Silence::default();
        let step = TTL / 3;
        s.observe(7, t0, TTL);
        s.observe(7, t0 + step, TTL);
        assert!(!s.observe(8, t0 + 2 * step, TTL), "a new revision is news");
        assert!(!s.observe(8, t0 + 3 * step, TTL));
        assert!(!s.observe(8, t0 + 4 * step, TTL));
        assert!(
            s.observe(8, t0 + 5 * step, TTL),
            "silent for the ttl since 8"
        );
    }

    #[test]
    fn time_this_manager_could_not_read_is_not_held_against_the_holder() {
        let t0 = Instant::now();
        let mut s = Silence::default();
        s.observe(7, t0, TTL);
        // Paused, or cut off from NATS, for longer than the ttl: the same revision afterwards
        // does not prove the holder silent, it could not be heard either.
        let back = t0 + 3 * TTL;
        assert!(!s.observe(7, back, TTL));
        assert!(!s.observe(7, back + TTL / 2, TTL));
        assert!(s.observe(7, back + TTL, TTL));
        // A failed read forgets the watch.
        s.forget();
        assert!(!s.observe(7, back + TTL + TTL / 4, TTL));
    }
}
