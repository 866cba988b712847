//! What the charts remember: one sample per interval, the last hour of them, in a ring buffer
//! of bounded size. Kept in the memory of the process that serves the dashboard only, so a
//! restart starts it afresh. Pure: time comes with the samples and the queries.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cube_shared::State as TaskState;

use super::svg::Series;

/// How far back the charts look.
pub(crate) const WINDOW: Duration = Duration::from_secs(3600);

/// The shortest interval between samples, which bounds how many a history holds.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The most nodes recorded in a sample (the first by name): more lines than this make a
/// chart no one can read, and memory stays bounded however large the cluster.
pub(crate) const MAX_NODES: usize = 12;

/// What the cluster looked like at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub at: DateTime<Utc>,
    /// How many tasks are in each state, in the order of [`TaskState::ALL`]; `None` if the
    /// manager did not answer.
    pub tasks: Option<[usize; TaskState::ALL.len()]>,
    /// The placements since the previous sample; `None` when they could not be counted.
    pub placements: Option<Placements>,
    /// The first [`MAX_NODES`] nodes by name that were heard from, with their use.
    pub nodes: Vec<NodeSample>,
    /// How many nodes the cluster listed, `nodes` holding fewer when there are more than
    /// [`MAX_NODES`].
    pub nodes_total: usize,
}

/// Placements counted over a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Placements {
    pub count: u64,
    pub over: Duration,
}

impl Placements {
    pub fn per_second(&self) -> f64 {
        if self.over.is_zero() {
            0.0
        } else {
            self.count as f64 / self.over.as_secs_f64()
        }
    }
}

/// One node's use, as its last heartbeat reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeSample {
    pub name: String,
    /// Share of all the machine's cores busy, 0 – 1.
    pub cpu: f64,
    /// Bytes of memory in use on the machine.
    pub memory_used: u64,
}

/// The samples of the last [`WINDOW`], oldest first.
#[derive(Debug)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    /// The most samples kept: a window's worth at the sampling interval.
    capacity: usize,
}

impl History {
    /// A history for samples taken every `interval` (at least [`MIN_INTERVAL`]).
    pub fn new(interval: Duration) -> History {
        let interval = interval.max(MIN_INTERVAL);
        let capacity = (WINDOW.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 1;
        History {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds the newest sample; drops those older than the window before it and, past the
    /// capacity, the oldest. A clock set back drops the samples that seem to come after it,
    /// so that time only goes forward along the buffer.
    pub fn push(&mut self, sample: Sample) {
        while self.samples.back().is_some_and(|s| s.at > sample.at) {
            self.samples.pop_back();
        }
        if self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        let at = sample.at;
        self.samples.push_back(sample);
        self.forget_before(at);
    }

    /// Drops the samples older than the window before `now` (a sampler that stopped leaves
    /// nothing behind after an hour, and a node gone that long has no line any more).
    pub fn forget_before(&mut self, now: DateTime<Utc>) {
        let from = now - WINDOW;
        while self.samples.front().is_some_and(|s| s.at < from) {
            self.samples.pop_front();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    #[cfg(test)]
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// One series per task state.
    pub fn tasks(&self) -> Vec<Series> {
        TaskState::ALL
            .into_iter()
            .enumerate()
            .map(|(i, state)| Series {
                name: state.as_str().to_string(),
                color: state_color(state),
                points: self
                    .samples
                    .iter()
                    .map(|s| (s.at, s.tasks.map(|t| t[i] as f64)))
                    .collect(),
            })
            .collect()
    }

    /// Placements per second, each over the stretch since the sample before.
    pub fn placements(&self) -> Vec<Series> {
        vec![Series {
            name: "placements".to_string(),
            color: "#2f6fde",
            points: self
                .samples
                .iter()
                .map(|s| (s.at, s.placements.map(|p| p.per_second())))
                .collect(),
        }]
    }

    /// One series per node seen in the window, by name, of `value` of its samples; a gap
    /// where a sample has no value for it.
    pub fn nodes(&self, value: impl Fn(&NodeSample) -> f64) -> Vec<Series> {
        let names: BTreeSet<&str> = self
            .samples
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.name.as_str()))
            .collect();
        names
            .into_iter()
            .take(MAX_NODES)
            .enumerate()
            .map(|(i, name)| Series {
                name: name.to_string(),
                color: PALETTE[i % PALETTE.len()],
                points: self
                    .samples
                    .iter()
                    .map(|s| (s.at, s.nodes.iter().find(|n| n.name == name).map(&value)))
                    .collect(),
            })
            .collect()
    }

    /// How many nodes the latest sample saw, when it could not record them all.
    pub fn nodes_left_out(&self) -> Option<(usize, usize)> {
        self.samples
            .back()
            .filter(|s| s.nodes_total > s.nodes.len())
            .map(|s| (s.nodes.len(), s.nodes_total))
    }
}

/// The colours of the dashboard's state badges (style.css).
fn state_color(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "#2f6fde",
        TaskState::Scheduled => "#c98a00",
        TaskState::Running => "#2e8b57",
        TaskState::Completed => "#8a8a85",
        TaskState::Failed => "#c0392b",
    }
}

/// Distinct colours for the nodes' lines.
const PALETTE: [&str; MAX_NODES] = [
    "#2f6fde", "#2e8b57", "#c0392b", "#c98a00", "#7b4fc9", "#1b9aaa", "#d35400", "#5b5b57",
    "#e84393", "#6ab04c", "#0a3d62", "#b33771",
];

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn sample(secs: i64, running: usize, nodes: &[(&str, f64)]) -> Sample {
        Sample {
            at: at(secs),
            tasks: Some([0, 0, running, 0, 0]),
            placements: Some(Placements {
                count: running as u64,
                over: Duration::from_secs(10),
            }),
            nodes: nodes
                .iter()
                .map(|(name, cpu)| NodeSample {
                    name: name.to_string(),
                    cpu: *cpu,
                    memory_used: 1 << 30,
                })
                .collect(),
            nodes_total: nodes.len(),
        }
    }

    #[test]
    fn samples_older_than_an_hour_are_dropped() {
        let mut h = History::new(Duration::from_secs(10));
        h.push(sample(0, 1, &[]));
        h.push(sample(10, 2, &[]));
        h.push(sample(3600, 3, &[]));
        // The first is 3600 s before the newest: still in the window; 3610 s is not.
        assert_eq!(
            h.samples().map(|s| s.at).collect::<Vec<_>>(),
            [at(0), at(10), at(3600)]
        );
        h.push(sample(3605, 4, &[]));
        assert_eq!(h.samples().next().unwrap().at, at(10));
        // Without new samples, asking later forgets them all in time.
        h.forget_before(at(3605 + 3600));
        assert_eq!(h.samples().map(|s| s.at).collect::<Vec<_>>(), [at(3605)]);
        h.forget_before(at(3606 + 3600));
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn the_buffer_holds_at_most_an_hour_at_the_interval() {
        let mut h = History::new(Duration::from_secs(60));
        assert_eq!(h.capacity, 61);
        // Samples faster than the interval (a clock running fast, or a test) cannot grow it.
        for i in 0..500 {
            h.push(sample(i, 1, &[]));
        }
        assert_eq!(h.len(), 61);
        assert_eq!(h.samples().next().unwrap().at, at(439));
        // An interval of zero is taken as the least.
        assert_eq!(History::new(Duration::ZERO).capacity, 3601);
    }

    #[test]
    fn a_clock_set_back_drops_what_seemed_to_come_later() {
        let mut h = History::new(Duration::from_secs(10));
        for i in [0, 10, 20, 30] {
            h.push(sample(i, 1, &[]));
        }
        h.push(sample(15, 2, &[]));
        assert_eq!(
            h.samples().map(|s| s.at).collect::<Vec<_>>(),
            [at(0), at(10), at(15)]
        );
    }

    #[test]
    fn series_follow_the_samples_with_gaps_where_a_value_is_missing() {
        let mut h = History::new(Duration::from_secs(10));
        h.push(sample(0, 1, &[("b", 0.5), ("a", 0.25)]));
        let mut lost = sample(10, 2, &[("a", 0.5)]);
        lost.tasks = None;
        lost.placements = None;
        h.push(lost);
        h.push(sample(20, 3, &[("a", 1.0), ("b", 0.75)]));

        let tasks = h.tasks();
        let names: Vec<&str> = tasks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["pending", "scheduled", "running", "completed", "failed"]
        );
        assert_eq!(
            tasks[2].points,
            [(at(0), Some(1.0)), (at(10), None), (at(20), Some(3.0))]
        );
        let placements = h.placements();
        assert_eq!(
            placements[0].points,
            [(at(0), Some(0.1)), (at(10), None), (at(20), Some(0.3))]
        );

        let cpu = h.nodes(|n| n.cpu * 100.0);
        let names: Vec<&str> = cpu.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            cpu[1].points,
            [(at(0), Some(50.0)), (at(10), None), (at(20), Some(75.0))]
        );
        assert_ne!(cpu[0].color, cpu[1].color);
        assert_eq!(h.nodes_left_out(), None);
    }

    #[test]
    fn a_node_gone_for_an_hour_has_no_line_any_more() {
        let mut h = History::new(Duration::from_secs(10));
        h.push(sample(0, 1, &[("gone", 0.5), ("stays", 0.5)]));
        h.push(sample(1800, 1, &[("stays", 0.5)]));
        assert_eq!(h.nodes(|n| n.cpu).len(), 2);
        h.push(sample(3601, 1, &[("stays", 0.5)]));
        let names: Vec<String> = h.nodes(|n| n.cpu).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["stays"]);
    }

    #[test]
    fn nodes_beyond_the_most_recorded_are_counted() {
        let mut h = History::new(Duration::from_secs(10));
        let mut s = sample(0, 1, &[("a", 0.1)]);
        s.nodes_total = 40;
        h.push(s);
        assert_eq!(h.nodes_left_out(), Some((1, 40)));
    }
}
