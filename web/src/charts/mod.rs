//! The dashboard's charts, `GET /charts/{chart}`: tasks by state, placements per second, and
//! each node's CPU and memory over the last hour, as SVG pictures drawn on the server. A
//! [`sampler`] started with the web server takes a sample every interval (`--chart-interval`)
//! into a [`History`] held in memory: a restarted manager starts its charts afresh.

mod history;
mod sampler;
mod svg;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cube_client::Cube;
use tokio_util::sync::CancellationToken;

use crate::{App, Routes};
use history::{History, MIN_INTERVAL, WINDOW};
use svg::{Chart, Unit};
pub(crate) use svg::{HEIGHT, WIDTH};

pub(crate) use sampler::run as sample;

/// How often a sample is taken unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The charts, by the name of their route, with their titles: the overview shows them in
/// this order.
pub(crate) const CHARTS: [(&str, &str); 4] = [
    ("tasks.svg", "Tasks by state"),
    ("placements.svg", "Placements per second"),
    ("nodes-cpu.svg", "CPU busy, by node"),
    ("nodes-memory.svg", "Memory used, by node"),
];

pub(crate) fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/charts/{chart}", chart)
}

/// The history the sampler writes and the handlers read. A `std` mutex is right here: it is
/// held only to add a sample or draw a chart (no `.await` meanwhile), a few times a minute.
#[derive(Clone)]
pub(crate) struct Charts {
    history: Arc<Mutex<History>>,
    /// The sampling interval: the overview reloads the pictures as often.
    pub interval: Duration,
}

impl Charts {
    pub fn new(interval: Duration) -> Charts {
        let interval = interval.max(MIN_INTERVAL);
        Charts {
            history: Arc::new(Mutex::new(History::new(interval))),
            interval,
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, sample: history::Sample) {
        self.history().push(sample);
    }

    /// Starts the sampler; it ends with `shutdown`.
    pub fn start(&self, cube: Cube, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(sample(cube, self.clone(), self.interval, shutdown))
    }

    /// The SVG of chart `name` at `now`; `None` for no such chart.
    pub(crate) fn render(&self, name: &str, now: DateTime<Utc>) -> Option<String> {
        let title = CHARTS.iter().find(|(n, _)| *n == name)?.1.to_string();
        let mut history = self.history();
        history.forget_before(now);
        let nodes_note = || {
            history
                .nodes_left_out()
                .map(|(shown, total)| format!("the first {shown} of {total} nodes"))
        };
        let chart = match name {
            "tasks.svg" => Chart {
                title,
                unit: Unit::Count,
                series: history.tasks(),
                note: None,
            },
            "placements.svg" => Chart {
                title,
                unit: Unit::PerSecond,
                series: history.placements(),
                note: None,
            },
            "nodes-cpu.svg" => Chart {
                title,
                unit: Unit::Percent,
                series: history.nodes(|n| n.cpu * 100.0),
                note: nodes_note(),
            },
            "nodes-memory.svg" => Chart {
                title,
                unit: Unit::Bytes,
                series: history.nodes(|n| n.memory_used as f64),
                note: nodes_note(),
            },
            _ => return None,
        };
        drop(history);
        let window = chrono::Duration::from_std(WINDOW).expect("an hour");
        Some(svg::render(&chart, now, window))
    }
}

async fn chart(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.charts.render(&name, Utc::now()) {
        Some(svg) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                // A new sample may come any moment: the overview asks again as often.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            svg,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such chart").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::history::{NodeSample, Placements, Sample};
    use super::*;

    #[test]
    fn every_chart_draws_from_the_history_or_says_there_is_nothing_yet() {
        let charts = Charts::new(Duration::from_secs(10));
        let now = Utc::now();
        for (name, title) in CHARTS {
            let svg = charts.render(name, now).unwrap();
            assert!(svg.contains("no data yet"), "{name}: {svg}");
            assert!(svg.contains(title), "{name}: {svg}");
        }
        assert_eq!(charts.render("secrets.svg", now), None);

        for (i, secs) in [30, 20, 10].into_iter().enumerate() {
            charts.push(Sample {
                at: now - chrono::Duration::seconds(secs),
                tasks: Some([0, 0, i + 1, 0, 0]),
                placements: Some(Placements {
                    count: 5,
                    over: Duration::from_secs(10),
                }),
                nodes: vec![NodeSample {
                    name: "w<1>".into(),
                    cpu: 0.5,
                    memory_used: 3 << 30,
                }],
                nodes_total: 1,
            });
        }
        for (name, series, legend) in [
            ("tasks.svg", "running", "running 3"),
            ("placements.svg", "placements", "placements 0.5/s"),
            ("nodes-cpu.svg", "w&lt;1&gt;", "w&lt;1&gt; 50%"),
            ("nodes-memory.svg", "w&lt;1&gt;", "w&lt;1&gt; 3 GiB"),
        ] {
            let svg = charts.render(name, now).unwrap();
            assert!(!svg.contains("no data yet"), "{name}: {svg}");
            assert!(
                svg.contains(&format!("data-series=\"{series}\"")),
                "{name}: {svg}"
            );
            assert!(svg.contains(&format!(">{legend}<")), "{name}: {svg}");
            assert!(!svg.contains("w<1>"), "{name}: {svg}");
        }
        // An hour later, with no sample since, the charts are empty again.
        let later = now + chrono::Duration::seconds(3600);
        assert!(charts
            .render("nodes-cpu.svg", later)
            .unwrap()
            .contains("no data yet"));
    }
}
