//! A seeded simulation of a whole cluster: the manager's real rules, simulated workers, and an
//! in-memory JetStream that loses, duplicates, delays and reorders deliveries, while the
//! manager and the workers crash and restart at any step (a restarted process rebuilds only
//! from what was durably stored). Invariants are checked after every step and once the
//! faults stop and the cluster has gone quiet.
//!
//! An operator drains and undrains nodes meanwhile.
//!
//! The manager also suffers gray faults: it cannot hear for a while (its NATS connection is
//! down), it is cut off without knowing it, it pauses, its wall clock steps. Whatever the
//! faults, no task fails while its worker and container are alive (`sim/check.rs`).
//!
//! `CUBE_SIM_SEEDS` sets how many seeds run (default 10,000); `CUBE_SIM_SEED` replays one. A
//! failure is run again with a trace and prints its seed and the last `CUBE_SIM_TRACE` (80)
//! lines of what happened.

mod sim;

use sim::World;

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("CUBE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("CUBE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    (1..=n).collect()
}

/// How many lines of the trace a failure shows (`CUBE_SIM_TRACE`, default 80).
fn trace_len() -> usize {
    std::env::var("CUBE_SIM_TRACE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80)
        .max(1)
}

/// Runs `seeds` on the machine's cores; the first failure is reported with its seed.
fn run_all(seeds: Vec<u64>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|i| seeds.iter().copied().skip(i).step_by(threads).collect())
        .collect();
    let failures: Vec<(u64, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    for seed in chunk {
                        if World::new(seed, 0).run().is_err() {
                            // Again, with the trace of what happened.
                            let report = World::new(seed, trace_len()).run().err();
                            return Some((seed, report.unwrap_or_else(|| {
                                "it passed when replayed: the simulation is not deterministic".into()
                            })));
                        }
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    if let Some((seed, report)) = failures.into_iter().min_by_key(|(s, _)| *s) {
        panic!("simulation failed with seed {seed} (replay: CUBE_SIM_SEED={seed} cargo test -p cube-manager --test simulation):\n{report}");
    }
}

#[test]
fn seeded_schedules_of_faults_keep_every_invariant() {
    run_all(seeds());
}
