//! A worker's Prometheus metrics. Atomics only: updating one never takes a lock, except the
//! Docker error counter's label lookup, which happens only when something went wrong.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The Docker API calls the runtime makes: the `operation` label of `cube_docker_errors_total`.
pub const DOCKER_OPERATIONS: [&str; 11] = [
    "inspect_image",
    "pull_image",
    "create_container",
    "start_container",
    "stop_container",
    "inspect_container",
    "remove_container",
    "list_containers",
    "events",
    "exec",
    "logs",
];

/// A worker's metrics. Cloning shares them. A fresh set counts, but nobody sees it until it
/// is [registered](Metrics::register) (`cube worker --metrics-addr`).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub tasks_running: IntGauge,
    pub containers_started: IntCounter,
    pub containers_failed: IntCounter,
    pub docker_errors: DockerErrors,
    pub nats_reconnects: IntCounter,
    pub heartbeats: IntCounter,
    pub health_check_failures: IntCounter,
}

/// `cube_docker_errors_total`, by operation.
#[derive(Debug, Clone)]
pub struct DockerErrors(IntCounterVec);

impl Default for DockerErrors {
    fn default() -> Self {
        let errors = IntCounterVec::new(
            Opts::new(
                "cube_docker_errors_total",
                "Docker Engine API calls that failed, by operation.",
            ),
            &["operation"],
        )
        .expect("valid metric");
        for op in DOCKER_OPERATIONS {
            // Every series exists from the start, at zero.
            errors.with_label_values(&[op]);
        }
        DockerErrors(errors)
    }
}

impl DockerErrors {
    /// Counts a failed Docker API call. `operation` is one of [`DOCKER_OPERATIONS`].
    pub fn inc(&self, operation: &'static str) {
        debug_assert!(DOCKER_OPERATIONS.contains(&operation), "{operation}");
        self.0.with_label_values(&[operation]).inc();
    }

    pub fn get(&self, operation: &str) -> u64 {
        self.0.with_label_values(&[operation]).get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    // Names and help texts are constants: building the metric cannot fail.
    IntCounter::new(name, help).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            tasks_running: IntGauge::new(
                "cube_worker_tasks_running",
                "Tasks whose container runs on this worker.",
            )
            .expect("valid metric"),
            containers_started: counter(
                "cube_containers_started_total",
                "Containers this worker started for tasks.",
            ),
            containers_failed: counter(
                "cube_containers_failed_total",
                "Tasks whose container could not be started (missing image, bad command, refused by policy).",
            ),
            docker_errors: DockerErrors::default(),
            nats_reconnects: counter(
                "cube_nats_reconnects_total",
                "Times the connection to NATS was re-established after it was lost.",
            ),
            heartbeats: counter(
                "cube_heartbeats_sent_total",
                "Heartbeats this worker published.",
            ),
            health_check_failures: counter(
                "cube_health_check_failures_total",
                "Health checks of this worker's tasks that did not pass.",
            ),
        }
    }

    /// Makes the metrics visible in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.tasks_running.clone()))?;
        registry.register(Box::new(self.containers_started.clone()))?;
        registry.register(Box::new(self.containers_failed.clone()))?;
        registry.register(Box::new(self.docker_errors.0.clone()))?;
        registry.register(Box::new(self.nats_reconnects.clone()))?;
        registry.register(Box::new(self.heartbeats.clone()))?;
        registry.register(Box::new(self.health_check_failures.clone()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_and_counts_separately() {
        let m = Metrics::new();
        let registry = Registry::new();
        m.register(&registry).unwrap();
        m.docker_errors.inc("pull_image");
        m.docker_errors.inc("pull_image");
        m.containers_started.inc();
        m.tasks_running.set(3);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("cube_docker_errors_total{operation=\"pull_image\"} 2"));
        assert!(text.contains("cube_docker_errors_total{operation=\"create_container\"} 0"));
        assert!(text.contains("cube_containers_started_total 1"));
        assert!(text.contains("cube_containers_failed_total 0"));
        assert!(text.contains("cube_worker_tasks_running 3"));
        assert!(text.contains("# HELP cube_heartbeats_sent_total "));
        assert!(text.contains("# TYPE cube_nats_reconnects_total counter"));
        assert_eq!(m.docker_errors.get("pull_image"), 2);
    }
}
