//! Prometheus metrics (prometheus-client, OpenMetrics text).
//!
//! - `outpost_sink_batches_total{outcome}` — ingest requests by outcome.
//! - `outpost_sink_readings_stored_total` — readings newly stored.
//! - `outpost_sink_readings_duplicate_total` — readings already stored.
//! - `outpost_sink_seq_conflicts_total` — readings stored although a gateway reused their sequence number (a gateway bug; an alarm).
//! - `outpost_sink_ingest_seconds` — time from request to commit, accepted batches only.
//! - `outpost_sink_http_requests_total{path,status}` — every HTTP response.
//! - `outpost_sink_training_jobs_total{outcome}` — training jobs `accepted`,
//!   `refused` (queue full), `succeeded`, `failed`, `cancelled` (by an
//!   operator or the shutdown, queued or running).
//! - `outpost_sink_operator_labels_total{verdict}` — operator labels on
//!   alerts, `true_alarm` or `false_alarm`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set with one static label.
type OneLabel = [(&'static str, &'static str); 1];
/// Label set `path`, `status`.
type PathStatus = [(&'static str, String); 2];

/// How an ingest request ended; the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    Stored,
    Unauthorized,
    Forbidden,
    BadRequest,
    TooLarge,
    UnsupportedMediaType,
    StorageError,
}

impl BatchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Stored => "stored",
            BatchOutcome::Unauthorized => "unauthorized",
            BatchOutcome::Forbidden => "forbidden",
            BatchOutcome::BadRequest => "bad_request",
            BatchOutcome::TooLarge => "too_large",
            BatchOutcome::UnsupportedMediaType => "unsupported_media_type",
            BatchOutcome::StorageError => "storage_error",
        }
    }
}

/// The sink's metrics and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    batches: Family<OneLabel, Counter>,
    readings_stored: Counter,
    readings_duplicate: Counter,
    seq_conflicts: Counter,
    ingest_seconds: Histogram,
    http_requests: Family<PathStatus, Counter>,
    training_jobs: Family<OneLabel, Counter>,
    operator_labels: Family<OneLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let batches = Family::<OneLabel, Counter>::default();
        registry.register(
            "outpost_sink_batches",
            "Ingest requests by outcome",
            batches.clone(),
        );
        let readings_stored = Counter::default();
        registry.register(
            "outpost_sink_readings_stored",
            "Readings newly stored",
            readings_stored.clone(),
        );
        let readings_duplicate = Counter::default();
        registry.register(
            "outpost_sink_readings_duplicate",
            "Readings received again and not stored twice",
            readings_duplicate.clone(),
        );
        let seq_conflicts = Counter::default();
        registry.register(
            "outpost_sink_seq_conflicts",
            "Readings stored although another reading already had their gateway sequence number (gateway bug)",
            seq_conflicts.clone(),
        );
        // 0.5 ms .. ~16 s.
        let ingest_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "outpost_sink_ingest_seconds",
            "Time from ingest request to committed batch",
            ingest_seconds.clone(),
        );
        let http_requests = Family::<PathStatus, Counter>::default();
        registry.register(
            "outpost_sink_http_requests",
            "HTTP responses by route and status",
            http_requests.clone(),
        );
        let training_jobs = Family::<OneLabel, Counter>::default();
        registry.register(
            "outpost_sink_training_jobs",
            "Training jobs by outcome (accepted, refused, succeeded, failed, cancelled)",
            training_jobs.clone(),
        );
        let operator_labels = Family::<OneLabel, Counter>::default();
        registry.register(
            "outpost_sink_operator_labels",
            "Operator labels on alerts by verdict",
            operator_labels.clone(),
        );
        Metrics {
            training_jobs,
            operator_labels,
            registry,
            batches,
            readings_stored,
            readings_duplicate,
            seq_conflicts,
            ingest_seconds,
            http_requests,
        }
    }

    pub fn batch(&self, outcome: BatchOutcome) {
        self.batches
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn stored(&self, stored: u64, duplicates: u64, seq_conflicts: u64, seconds: f64) {
        self.readings_stored.inc_by(stored);
        self.readings_duplicate.inc_by(duplicates);
        self.seq_conflicts.inc_by(seq_conflicts);
        self.ingest_seconds.observe(seconds);
    }

    pub fn http_response(&self, path: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&[("path", path.to_owned()), ("status", status.to_string())])
            .inc();
    }

    /// A training job `accepted`, `refused`, `succeeded`, `failed` or
    /// `cancelled`.
    pub fn training_job(&self, outcome: &'static str) {
        self.training_jobs
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    pub fn operator_label(&self, true_alarm: bool) {
        let verdict = if true_alarm {
            "true_alarm"
        } else {
            "false_alarm"
        };
        self.operator_labels
            .get_or_create(&[("verdict", verdict)])
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_carries_the_documented_metric_names() {
        let m = Metrics::new();
        m.batch(BatchOutcome::Stored);
        m.stored(3, 1, 0, 0.01);
        m.http_response("/v1/ingest", 200);
        m.training_job("succeeded");
        m.operator_label(false);
        let text = m.render().unwrap();
        for needle in [
            "outpost_sink_batches_total{outcome=\"stored\"} 1",
            "outpost_sink_readings_stored_total 3",
            "outpost_sink_readings_duplicate_total 1",
            "outpost_sink_ingest_seconds_count 1",
            "outpost_sink_http_requests_total{path=\"/v1/ingest\",status=\"200\"} 1",
            "outpost_sink_training_jobs_total{outcome=\"succeeded\"} 1",
            "outpost_sink_operator_labels_total{verdict=\"false_alarm\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
