//! Prometheus metrics of the gateway (`outpost_gateway_*`), one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A sensor-contract rule that fired, and what was done about it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabel {
    pub reason: &'static str,
    pub action: &'static str,
}

/// A CoAP response code, `c.dd`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoapCodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

/// Every metric the gateway exports. Cloning shares the underlying values.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub messages_received: Counter,
    pub readings_received: Counter,
    pub readings_committed: Counter,
    pub messages_committed: Counter,
    pub messages_acked: Counter,
    pub acks_stale: Counter,
    pub quarantined: Family<ReasonLabel, Counter>,
    pub outbox_records: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_dropped: Counter,
    pub outbox_full_waits: Counter,
    pub fsyncs: Counter,
    /// `write_bytes` of `/proc/self/io`, brought up to date by
    /// [`Metrics::observe_disk_writes`].
    pub disk_bytes_written: Counter,
    /// The `write_bytes` value already added to `disk_bytes_written`.
    disk_bytes_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub commit_seconds: Histogram,
    pub commit_envelopes: Histogram,
    pub ack_latency_seconds: Histogram,
    pub uplink_batches: Family<OutcomeLabel, Counter>,
    pub uplink_readings_sent: Counter,
    pub uplink_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub uplink_request_seconds: Histogram,
    pub mqtt_connected: Gauge,
    pub mqtt_connections: Counter,
    pub http_requests: Family<StatusLabel, Counter>,
    pub readings_deduplicated: Counter,
    pub contract_violations: Family<ViolationLabel, Counter>,
    pub contract_series: Gauge,
    pub contract_series_evicted: Counter,
    pub clock_synchronized: Gauge,
    pub clock_resolved: Family<OutcomeLabel, Counter>,
    pub files_readings: Family<crate::sources::files::FileSourceLabel, Counter>,
    pub files_bad_rows: Family<crate::sources::files::FileSourceLabel, Counter>,
    pub files: Family<crate::sources::files::FileOutcomeLabel, Counter>,
    pub coap_responses: Family<CoapCodeLabel, Counter>,
    pub coap_duplicates: Family<OutcomeLabel, Counter>,
    pub coap_blocks: Counter,
    pub coap_ignored: Family<ReasonLabel, Counter>,
    pub serial_connected: Family<crate::sources::serial::PortLabel, Gauge>,
    pub serial_reconnects: Family<crate::sources::serial::PortLabel, Counter>,
    pub serial_lines: Family<crate::sources::serial::PortLabel, Counter>,
    pub serial_bad_frames: Family<crate::sources::serial::PortReasonLabel, Counter>,
    pub sql_rows: Family<crate::sources::sql::SourceLabel, Counter>,
    pub sql_errors: Family<crate::sources::sql::SourceKindLabel, Counter>,
    pub rest_requests: Family<crate::sources::rest::SourceOutcomeLabel, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            messages_received: Counter::default(),
            readings_received: Counter::default(),
            readings_committed: Counter::default(),
            messages_committed: Counter::default(),
            messages_acked: Counter::default(),
            acks_stale: Counter::default(),
            quarantined: Family::default(),
            outbox_records: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_dropped: Counter::default(),
            outbox_full_waits: Counter::default(),
            fsyncs: Counter::default(),
            disk_bytes_written: Counter::default(),
            disk_bytes_seen: Default::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            commit_envelopes: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            ack_latency_seconds: Histogram::new(exponential_buckets(0.0001, 1.5, 30)),
            uplink_batches: Family::default(),
            uplink_readings_sent: Counter::default(),
            uplink_lag_seconds: Gauge::default(),
            uplink_request_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            mqtt_connected: Gauge::default(),
            mqtt_connections: Counter::default(),
            http_requests: Family::default(),
            readings_deduplicated: Counter::default(),
            contract_violations: Family::default(),
            contract_series: Gauge::default(),
            contract_series_evicted: Counter::default(),
            clock_synchronized: Gauge::default(),
            clock_resolved: Family::default(),
            files_readings: Family::default(),
            files_bad_rows: Family::default(),
            files: Family::default(),
            coap_responses: Family::default(),
            coap_duplicates: Family::default(),
            coap_blocks: Counter::default(),
            coap_ignored: Family::default(),
            serial_connected: Family::default(),
            serial_reconnects: Family::default(),
            serial_lines: Family::default(),
            serial_bad_frames: Family::default(),
            sql_rows: Family::default(),
            sql_errors: Family::default(),
            rest_requests: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("outpost_gateway");
        r.register(
            "messages_received",
            "Messages received from all sources",
            m.messages_received.clone(),
        );
        r.register(
            "readings_received",
            "Readings decoded from received messages",
            m.readings_received.clone(),
        );
        r.register(
            "readings_committed",
            "Readings made durable in the outbox",
            m.readings_committed.clone(),
        );
        r.register(
            "messages_acked",
            "Messages acknowledged to their sender after a durable commit",
            m.messages_acked.clone(),
        );
        r.register(
            "quarantined",
            "Payloads or readings quarantined, by reason code",
            m.quarantined.clone(),
        );
        r.register(
            "outbox_records",
            "Records in the outbox waiting for upload",
            m.outbox_records.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes of the outbox counted against its cap",
            m.outbox_bytes.clone(),
        );
        r.register(
            "outbox_dropped",
            "Readings deleted unsent by the drop_oldest policy",
            m.outbox_dropped.clone(),
        );
        r.register(
            "outbox_full_waits",
            "Commits that waited because the outbox was full (block policy)",
            m.outbox_full_waits.clone(),
        );
        r.register("fsyncs", "Outbox flushes (fsyncs)", m.fsyncs.clone());
        r.register(
            "disk_bytes_written",
            "Bytes this process sent to storage (write_bytes of /proc/self/io)",
            m.disk_bytes_written.clone(),
        );
        r.register(
            "messages_committed",
            "Messages made durable (readings in the outbox or the payload in quarantine)",
            m.messages_committed.clone(),
        );
        r.register(
            "acks_stale",
            "Acks not sent because their connection ended first (the broker redelivers)",
            m.acks_stale.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "From a message's receipt to the release of its acknowledgement (durable commit)",
            m.ack_latency_seconds.clone(),
        );
        r.register(
            "commit_seconds",
            "Time of one group commit (append + flush)",
            m.commit_seconds.clone(),
        );
        r.register(
            "commit_envelopes",
            "Envelopes (messages) per group commit",
            m.commit_envelopes.clone(),
        );
        r.register(
            "uplink_batches",
            "Uplink batch attempts by outcome",
            m.uplink_batches.clone(),
        );
        r.register(
            "uplink_readings_sent",
            "Readings confirmed by the sink",
            m.uplink_readings_sent.clone(),
        );
        r.register(
            "uplink_lag_seconds",
            "Seconds the outbox has had unsent records since the last confirmed upload (0 when empty)",
            m.uplink_lag_seconds.clone(),
        );
        r.register(
            "uplink_request_seconds",
            "Duration of uplink HTTP requests",
            m.uplink_request_seconds.clone(),
        );
        r.register(
            "mqtt_connected",
            "1 while connected to the MQTT broker",
            m.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_connections",
            "MQTT connections established",
            m.mqtt_connections.clone(),
        );
        r.register(
            "http_requests",
            "Requests answered by the HTTP source, by status code",
            m.http_requests.clone(),
        );
        r.register(
            "readings_deduplicated",
            "Readings dropped because their identity (device, channel, ts) was stored recently \
             (bandwidth only: the sink's key is the exactly-once guarantee)",
            m.readings_deduplicated.clone(),
        );
        r.register(
            "contract_violations",
            "Contract rules broken, by reason code and action (reject: quarantined; flag: quality bit)",
            m.contract_violations.clone(),
        );
        r.register(
            "contract_series",
            "Series (device, channel) whose previous value is tracked for rate and stuck rules",
            m.contract_series.clone(),
        );
        r.register(
            "contract_series_evicted",
            "Series evicted from the contract state table (LRU, contracts.max_series)",
            m.contract_series_evicted.clone(),
        );
        r.register(
            "clock_synchronized",
            "1 while the gateway's wall clock is considered synchronised",
            m.clock_synchronized.clone(),
        );
        r.register(
            "clock_resolved",
            "Readings stamped while the clock was unsynchronised, by what the uplink did: \
             corrected, uncorrectable (earlier boot), unsynced (sent uncorrected)",
            m.clock_resolved.clone(),
        );
        r.register(
            "files_readings",
            "Readings from dropped files made durable, by source",
            m.files_readings.clone(),
        );
        r.register(
            "files_bad_rows",
            "Rows of dropped files that could not be read (quarantined and reported), by source",
            m.files_bad_rows.clone(),
        );
        r.register(
            "files",
            "Dropped files finished, by source and outcome (done, failed)",
            m.files.clone(),
        );
        r.register(
            "coap_responses",
            "Responses sent by the CoAP source, by code (e.g. 2.04; 0.00 is a Reset), cached ones included",
            m.coap_responses.clone(),
        );
        r.register(
            "coap_duplicates",
            "Retransmitted CoAP requests (same endpoint and Message ID), never stored twice: \
             answered_from_cache, in_flight (answered when the commit completes), non_ignored",
            m.coap_duplicates.clone(),
        );
        r.register(
            "coap_blocks",
            "Block1 blocks received by the CoAP source",
            m.coap_blocks.clone(),
        );
        r.register(
            "coap_ignored",
            "Datagrams the CoAP source dropped without an answer, by reason",
            m.coap_ignored.clone(),
        );
        r.register(
            "serial_connected",
            "1 while the serial port is open, by port",
            m.serial_connected.clone(),
        );
        r.register(
            "serial_reconnects",
            "Times a serial port was re-opened after it went away, by port",
            m.serial_reconnects.clone(),
        );
        r.register(
            "serial_lines",
            "Lines read from a serial port, by port",
            m.serial_lines.clone(),
        );
        r.register(
            "serial_bad_frames",
            "Serial lines that could not be used (quarantined), by port and reason",
            m.serial_bad_frames.clone(),
        );
        r.register(
            "sql_rows",
            "Rows read by SQL polling sources (mapped and quarantined), by source",
            m.sql_rows.clone(),
        );
        r.register(
            "sql_errors",
            "Failed SQL polls by source and kind (connect, query, timeout, schema, checkpoint, cursor)",
            m.sql_errors.clone(),
        );
        r.register(
            "rest_requests",
            "REST polling requests by source and outcome (ok, not_modified, rate_limited, \
             http_error, network, too_large, bad_json)",
            m.rest_requests.clone(),
        );
        m
    }

    /// Sets the outbox gauges from its current counters.
    /// Brings `disk_bytes_written` up to `/proc/self/io`; returns the total,
    /// or `None` without per-process I/O accounting.
    pub fn observe_disk_writes(&self) -> Option<u64> {
        let now = crate::wear::process_write_bytes()?;
        let before = self
            .disk_bytes_seen
            .fetch_max(now, std::sync::atomic::Ordering::AcqRel);
        self.disk_bytes_written.inc_by(now.saturating_sub(before));
        Some(now)
    }

    pub fn observe_outbox(&self, outbox: &crate::outbox::Outbox) {
        self.outbox_records
            .set(i64::try_from(outbox.depth()).unwrap_or(i64::MAX));
        self.outbox_bytes
            .set(i64::try_from(outbox.bytes()).unwrap_or(i64::MAX));
    }

    pub fn contract_violation(&self, reason: &'static str, action: &'static str) {
        self.contract_violations
            .get_or_create(&ViolationLabel { reason, action })
            .inc();
    }

    pub fn quarantine(&self, reason: &str) {
        self.quarantined
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn coap_response(&self, code: &str) {
        self.coap_responses
            .get_or_create(&CoapCodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }

    pub fn coap_duplicate(&self, outcome: &'static str) {
        self.coap_duplicates
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn coap_ignored(&self, reason: &str) {
        self.coap_ignored
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn http_request(&self, status: u16) {
        self.http_requests
            .get_or_create(&StatusLabel { status })
            .inc();
    }

    pub fn uplink(&self, outcome: &'static str) {
        self.uplink_batches
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}
