//! Node statistics for heartbeats, from sysinfo. Sampling is incremental (CPU usage is the
//! change since the previous sample), so it never blocks the way the book's 3-second
//! measurement did.

use std::path::Path;

use sysinfo::{Disks, System};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cores: f64,
    /// Fraction of all cores busy since the previous sample.
    pub cpu_usage: f64,
    pub memory: u64,
    pub memory_used: u64,
    pub disk: u64,
    pub disk_used: u64,
}

pub struct Stats {
    /// `None` where sysinfo does not support the platform: the node then reports zeros and
    /// only flag-given capacity.
    system: Option<System>,
    disks: Option<Disks>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let mut system = System::new().ok();
        if let Some(system) = &mut system {
            system.refresh_cpu_usage();
            system.refresh_memory();
        }
        Stats {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
        }
    }

    /// No sampling: a node that reports only the capacity it was given (simulated workers,
    /// which would otherwise all sample the same host, thousands of times a second).
    pub fn none() -> Stats {
        Stats {
            system: None,
            disks: None,
        }
    }

    pub fn sample(&mut self) -> Sample {
        let (cores, cpu_usage, memory, memory_used) = match &mut self.system {
            Some(system) => {
                system.refresh_cpu_usage();
                system.refresh_memory();
                (
                    system.cpus().len().max(1) as f64,
                    f64::from(system.global_cpu_usage()) / 100.0,
                    system.total_memory(),
                    system.used_memory(),
                )
            }
            None => (1.0, 0.0, 0, 0),
        };
        let (disk, disk_used) = match &mut self.disks {
            Some(disks) => {
                disks.refresh(true);
                // The root file system holds Docker's data on a typical node; fall back to
                // the largest disk.
                disks
                    .iter()
                    .find(|d| d.mount_point() == Path::new("/"))
                    .or_else(|| disks.iter().max_by_key(|d| d.total_space()))
                    .map_or((0, 0), |d| {
                        (
                            d.total_space(),
                            d.total_space().saturating_sub(d.available_space()),
                        )
                    })
            }
            None => (0, 0),
        };
        Sample {
            cores,
            cpu_usage: cpu_usage.clamp(0.0, 1.0),
            memory,
            memory_used,
            disk,
            disk_used,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_describes_this_machine() {
        let s = Stats::new().sample();
        assert!(s.cores >= 1.0);
        assert!(s.memory > 0 && s.memory_used <= s.memory);
        assert!((0.0..=1.0).contains(&s.cpu_usage));
        assert!(s.disk_used <= s.disk);
    }
}
