//! `cube bench place`: what the manager's placement rules cost with many nodes and many
//! waiting tasks, measured on the rules themselves in this process (no NATS, no workers), so
//! that the figure is the algorithm's and nothing else's.
//!
//! The nodes come in three shapes and three zones; a share of the submissions carry a zone
//! constraint. Measured, per algorithm: a node joining, a placement, a submission that fits
//! nowhere while others wait, a report that frees room while they wait, and a tick.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use cube_manager::metrics::Metrics;
use cube_manager::rules::{Rules, Stored, Timings};
use cube_shared::subjects::{state_for, EVENTS, HEARTBEAT_ALL};
use cube_shared::wire::encode;
use cube_shared::{Node, State, StateReport, Task, TaskEvent};
use serde::Serialize;
use uuid::Uuid;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[derive(Args, Debug)]
pub struct PlaceArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// How many tasks wait that fit on no node.
    #[arg(long, default_value_t = 10_000)]
    pub pending: usize,
    /// The algorithms measured, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spread,binpack,round-robin,epvm,queue"
    )]
    pub schedulers: Vec<String>,
    /// How many placements are timed (they fill the nodes: keep it under about 10 a node).
    #[arg(long, default_value_t = 5000)]
    pub placements: usize,
    /// How many freeing reports and ticks are timed.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// A phase that takes longer than this stops early; the report says how far it got.
    #[arg(long, default_value = "120s", value_parser = crate::duration)]
    pub budget: Duration,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Mean cost of one operation of a phase, and how many were done.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phase {
    pub count: usize,
    pub mean_us: f64,
}

#[derive(Debug, Serialize)]
pub struct PlaceReport {
    pub bench: &'static str,
    pub nodes: usize,
    pub pending_asked: usize,
    pub per_algorithm: BTreeMap<String, Figures>,
}

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    /// A node's first heartbeat (it joins: waiting tasks are tried again).
    pub join: Phase,
    /// A submission that is placed.
    pub place: Phase,
    /// A submission that fits nowhere (the waiting tasks are these).
    pub wait: Phase,
    /// A report of a task that ended, freeing room, while the others wait.
    pub free: Phase,
    /// The manager's once-a-second tick while they wait.
    pub tick: Phase,
}

pub async fn run(args: PlaceArgs) -> Result<()> {
    if args.nodes == 0 || args.rounds == 0 {
        bail!("--nodes and --rounds must be at least 1");
    }
    let mut report = PlaceReport {
        bench: "place",
        nodes: args.nodes,
        pending_asked: args.pending,
        per_algorithm: BTreeMap::new(),
    };
    for name in &args.schedulers {
        let figures = measure(&args, name)?;
        report.per_algorithm.insert(name.clone(), figures);
    }
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The rules and their clocks.
struct Bench {
    rules: Rules,
    now: DateTime<Utc>,
    mono: Instant,
}

impl Bench {
    /// Time passes a little (nodes stay heard: no heartbeat is older than the TTL).
    fn step(&mut self) {
        self.now += chrono::Duration::microseconds(100);
        self.mono += Duration::from_micros(100);
    }

    /// What the manager's loop does after each input.
    fn settle(&mut self) {
        self.rules.reconcile(self.now);
        self.rules.take_effects();
    }

    fn submit(&mut self, task: Task) {
        self.step();
        let event = TaskEvent::submit(task);
        self.rules.on_event(EVENTS, &encode(&event), self.now);
        self.settle();
    }

    fn report(&mut self, id: Uuid, worker: &str, state: State, generation: u64) {
        self.step();
        let mut r = StateReport::new(id, worker, state);
        r.generation = Some(generation);
        if state == State::Running {
            r.start_time = Some(self.now);
            r.container_id = Some(format!("c-{generation}"));
        } else {
            r.finish_time = Some(self.now);
            r.exit_code = Some(0);
        }
        self.rules
            .on_report(&state_for(id, worker), &encode(&r), self.now);
        self.settle();
    }
}

/// Runs `op` for `count` rounds or until `budget` is spent.
fn timed(count: usize, budget: Duration, mut op: impl FnMut(usize)) -> Phase {
    let start = Instant::now();
    let mut done = 0;
    while done < count && start.elapsed() < budget {
        op(done);
        done += 1;
    }
    Phase {
        count: done,
        mean_us: start.elapsed().as_secs_f64() * 1e6 / done.max(1) as f64,
    }
}

fn node(i: usize) -> Node {
    let (cores, memory) = [(4.0, 8 * GIB), (8.0, 16 * GIB), (16.0, 64 * GIB)][i % 3];
    Node {
        cpu_usage: 0.1,
        labels: [("zone".to_string(), format!("z{}", (i / 3) % 3))].into(),
        ..Node::ready(&format!("node-{i:05}"), cores, memory)
    }
}

/// The `i`th task that fits: three sizes, and every fourth wants a zone.
fn fitting(i: usize) -> Task {
    let mut t = Task::new("busybox");
    let (cpu, memory) = [(0.25, 256 * MIB), (0.5, MIB << 10), (1.0, 2 * GIB)][i % 3];
    t.cpu = cpu;
    t.memory = memory;
    if i.is_multiple_of(4) {
        t.constraints = vec![format!("zone=z{}", i % 3)];
    }
    t
}

fn measure(args: &PlaceArgs, name: &str) -> Result<Figures> {
    let scheduler =
        cube_manager::algorithms::by_name(name).with_context(|| format!("no algorithm {name}"))?;
    let mono = Instant::now();
    let mut b = Bench {
        rules: Rules::new(
            Timings::default(),
            scheduler,
            Metrics::default(),
            Stored::default(),
            mono,
        ),
        now: Utc::now(),
        mono,
    };
    b.rules.set_hearing(true, b.now, b.mono);
    let join = timed(args.nodes, args.budget, |i| {
        b.step();
        let n = node(i);
        let subject = HEARTBEAT_ALL.replace('*', &n.name);
        b.rules.on_heartbeat(&subject, &encode(&n), b.now, b.mono);
        b.settle();
    });
    let mut placed = Vec::new();
    let place = timed(args.placements, args.budget, |i| {
        let t = fitting(i);
        let id = t.id;
        b.submit(t);
        placed.push(id);
    });
    let wait = timed(args.pending, args.budget, |_| {
        let mut t = Task::new("busybox");
        t.memory = 128 * GIB;
        b.submit(t);
    });
    // The tasks that will end run first (untimed), as they would.
    let ending: Vec<(Uuid, String, u64)> = placed
        .iter()
        .filter_map(|id| {
            let t = b.rules.cluster().task(id)?;
            Some((t.id, t.worker.clone()?, t.generation))
        })
        .take(args.rounds)
        .collect();
    for (id, worker, generation) in &ending {
        b.report(*id, worker, State::Running, *generation);
    }
    let free = timed(ending.len(), args.budget, |i| {
        let (id, worker, generation) = &ending[i];
        b.report(*id, worker, State::Completed, *generation);
    });
    let tick = timed(args.rounds, args.budget, |_| {
        b.step();
        b.rules.set_hearing(true, b.now, b.mono);
        b.rules.tick(b.now, b.mono);
        b.settle();
    });
    Ok(Figures {
        join,
        place,
        wait,
        free,
        tick,
    })
}

fn table(r: &PlaceReport) -> String {
    let mut out = format!(
        "cube bench place: {} nodes (3 shapes, 3 zones), up to {} tasks waiting that fit nowhere\n\
         (mean per operation; n = how many were timed within the budget)\n\
         {:<12} {:>18} {:>18} {:>18} {:>18} {:>18}\n",
        r.nodes, r.pending_asked, "algorithm", "join", "place", "wait", "free", "tick"
    );
    let cell = |p: &Phase| format!("{:>9.1} µs n={:<6}", p.mean_us, p.count);
    for (name, f) in &r.per_algorithm {
        out.push_str(&format!(
            "{name:<12} {} {} {} {} {}\n",
            cell(&f.join),
            cell(&f.place),
            cell(&f.wait),
            cell(&f.free),
            cell(&f.tick)
        ));
    }
    out
}
