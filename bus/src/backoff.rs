//! How long to wait before asking NATS again: growing, and spread at random, so that
//! thousands of processes refused or left unanswered at the same moment (a busy server,
//! ten thousand workers starting at once) do not all ask again at the same moment.

use std::time::Duration;

/// Waits that double from `first` up to `max`, each drawn at random from its upper half
/// ("equal jitter"): never less than half the nominal wait, so a retry loop cannot spin.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    nominal: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            max,
            nominal: first,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let nominal = self.nominal;
        self.nominal = (nominal * 2).min(self.max);
        spread(nominal, random_fraction())
    }

    /// After a success: the next wait starts from `first` again.
    pub fn reset(&mut self) {
        self.nominal = self.first;
    }
}

/// `nominal`'s upper half at `fraction` (0..1) of the way up.
fn spread(nominal: Duration, fraction: f64) -> Duration {
    let half = nominal / 2;
    half + half.mul_f64(fraction.clamp(0.0, 1.0))
}

/// A number in 0..1 from the operating system's randomness: a version-4 UUID's last 62 bits,
/// which are all random (the two above them are its fixed variant).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 & ((1 << 62) - 1);
    (bits >> 9) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_most_and_start_again_after_a_reset() {
        let (first, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut b = Backoff::new(first, max);
        let nominal = [100, 200, 400, 800, 1000, 1000];
        for n in nominal {
            let n = Duration::from_millis(n);
            let w = b.next_wait();
            assert!(w >= n / 2 && w <= n, "{w:?} outside {:?}..={n:?}", n / 2);
        }
        b.reset();
        assert!(b.next_wait() <= first);
    }

    #[test]
    fn waits_are_spread_over_the_upper_half() {
        let n = Duration::from_secs(2);
        assert_eq!(spread(n, 0.0), Duration::from_secs(1));
        assert_eq!(spread(n, 1.0), n);
        assert_eq!(spread(n, 7.0), n);
        let mut b = Backoff::new(n, n);
        let waits: std::collections::HashSet<Duration> = (0..50).map(|_| b.next_wait()).collect();
        // Fifty draws from a continuous range: a constant wait would be one value.
        assert!(waits.len() > 40, "{} distinct waits", waits.len());
        let fractions: Vec<f64> = (0..1000).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let mean = fractions.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
