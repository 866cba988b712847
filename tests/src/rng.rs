//! A small seedable random source for tests that make random choices (when to kill, what
//! garbage to send): the seed is printed, and an environment variable replays a run.

use uuid::Uuid;

/// xorshift64*: fast, good enough for choosing, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the environment variable `replay` if it holds a number, else at random;
    /// the seed is printed with how to replay it.
    pub fn from_env_or_random(replay: &str) -> Rng {
        let seed = std::env::var(replay)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| Uuid::new_v4().as_u64_pair().0);
        eprintln!("random choices from seed {seed} ({replay}={seed} replays them)");
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        // xorshift never leaves 0.
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.range(0, n)
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_choices_within_bounds() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let draws: Vec<usize> = (0..1000).map(|_| a.range(10, 70)).collect();
        assert!(draws.iter().all(|n| (10..70).contains(n)));
        assert_eq!(
            draws,
            (0..1000).map(|_| b.range(10, 70)).collect::<Vec<_>>()
        );
        assert_ne!(Rng::new(0).next_u64(), 0, "seed 0 does not get stuck");
    }
}
