//! `run`: generate the fleet's readings, publish them paced, account for acks.
//!
//! The publish loop is the only producer: it steps the [`Fleet`], writes new
//! anomalies to the ground truth, encodes SenML, waits for a token, and hands
//! the message to the [`Transport`] (which waits while its window is full).
//! Deliveries flow to [`consume`], which writes the acked log. At the end the
//! transport drains (up to `drain_timeout`), and a [`RunSummary`] is built —
//! also when the connection failed for good, so the acked log and the summary
//! still tell the truth about what the broker acknowledged.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::QoS;
use tokio::sync::mpsc;

use crate::acked_log::{AckedLog, AckedLogError, LiveCounters, consume};
use crate::fleet::{Fleet, FleetConfig, FleetError};
use crate::ground_truth::{GroundTruthError, GroundTruthWriter};
use crate::pacing::TokenBucket;
use crate::publish::coap::{CoapConfig, CoapTransport};
use crate::publish::http::{HttpConfig, HttpTransport};
use crate::publish::mqtt::{MqttConfig, MqttTransport};
use crate::publish::serial::{SerialConfig, SerialTransport};
use crate::publish::{CloseReport, OutMessage, Transport, TransportError};
use crate::signal::Channel;
use crate::stats::{LatencySummary, RunSummary};

/// When to stop publishing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StopAfter {
    Duration(Duration),
    /// A number of messages (in `--single` mode one message is one reading).
    Count(u64),
}

/// How messages leave, and where to.
#[derive(Clone, Debug)]
pub enum TransportConfig {
    Mqtt(MqttConfig),
    Http(HttpConfig),
    Coap(CoapConfig),
    Serial(SerialConfig),
}

impl TransportConfig {
    pub fn protocol(&self) -> &'static str {
        match self {
            TransportConfig::Mqtt(_) => "mqtt",
            TransportConfig::Http(_) => "http",
            TransportConfig::Coap(_) => "coap",
            TransportConfig::Serial(_) => "serial",
        }
    }

    /// The broker (`HOST:PORT`) or the URL posted to.
    pub fn peer(&self) -> String {
        match self {
            TransportConfig::Mqtt(m) => m.broker(),
            TransportConfig::Http(h) => h.readings_url(),
            TransportConfig::Coap(c) => c.uri(),
            TransportConfig::Serial(s) => s.device.display().to_string(),
        }
    }

    /// The MQTT QoS; `None` for HTTP.
    pub fn qos(&self) -> Option<u8> {
        match self {
            TransportConfig::Mqtt(m) => Some(qos_number(m.qos)),
            TransportConfig::Http(_) => None,
            TransportConfig::Coap(_) | TransportConfig::Serial(_) => None,
        }
    }
}

/// Everything `run` needs, already validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub fleet: FleetConfig,
    pub transport: TransportConfig,
    /// Messages per second across the fleet; 0 means as fast as the window allows.
    pub rate: f64,
    pub stop: StopAfter,
    /// One reading per message instead of one pack per device tick.
    pub single: bool,
    pub topic_prefix: String,
    pub ground_truth: Option<PathBuf>,
    pub acked_log: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    GroundTruth(#[from] GroundTruthError),
    #[error(transparent)]
    AckedLog(#[from] AckedLogError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the delivery accounting task failed: {0}")]
    Accounting(String),
}

/// What a run produced: its summary, and the error that ended it early, if any.
#[derive(Debug)]
pub struct RunOutcome {
    pub summary: Option<RunSummary>,
    pub error: Option<RunError>,
}

fn qos_number(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Runs the simulation. Setup errors (files, first connection) return no summary.
pub async fn run(cfg: RunConfig) -> RunOutcome {
    match run_inner(cfg).await {
        Ok((summary, error)) => RunOutcome {
            summary: Some(summary),
            error,
        },
        Err(e) => RunOutcome {
            summary: None,
            error: Some(e),
        },
    }
}

struct Progress {
    bar: Option<ProgressBar>,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool, stop: StopAfter) -> Self {
        let bar = enabled.then(|| {
            let (len, template) = match stop {
                StopAfter::Count(n) => (n, "{bar:40} {pos}/{len} msgs {msg} [{elapsed_precise}]"),
                StopAfter::Duration(d) => (d.as_secs().max(1), "{bar:40} {pos}/{len} s {msg}"),
            };
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            last: Instant::now(),
        }
    }

    fn update(&mut self, stop: StopAfter, published: u64, started: Instant, live: &LiveCounters) {
        let Some(bar) = &self.bar else { return };
        if self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        match stop {
            StopAfter::Count(_) => bar.set_position(published),
            StopAfter::Duration(_) => bar.set_position(started.elapsed().as_secs()),
        }
        bar.set_message(format!("acked {}", live.acked.load(Ordering::Relaxed)));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What the publish loop did.
struct Published {
    started: Instant,
    messages: u64,
    readings: u64,
    sim_start: Option<i64>,
    sim_end: i64,
    report: CloseReport,
    error: Option<RunError>,
}

async fn run_inner(cfg: RunConfig) -> Result<(RunSummary, Option<RunError>), RunError> {
    let mut fleet = Fleet::try_new(cfg.fleet.clone())?;
    let mut ground_truth = cfg
        .ground_truth
        .as_deref()
        .map(GroundTruthWriter::create)
        .transpose()?;
    let acked_log = match &cfg.acked_log {
        Some(p) => Some(AckedLog::create(p).await?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(4096);
    let live = Arc::new(LiveCounters::default());
    let consumer = tokio::spawn(consume(rx, acked_log, live.clone()));
    let out = match &cfg.transport {
        TransportConfig::Mqtt(m) => {
            let transport = MqttTransport::connect(m.clone(), tx).await?;
            publish(transport, &cfg, &mut fleet, &mut ground_truth, &live).await
        }
        TransportConfig::Http(h) => {
            let transport = HttpTransport::new(h.clone(), tx)?;
            publish(transport, &cfg, &mut fleet, &mut ground_truth, &live).await
        }
        TransportConfig::Serial(s) => {
            let transport = SerialTransport::open(s.clone(), tx)?;
            publish(transport, &cfg, &mut fleet, &mut ground_truth, &live).await
        }
        TransportConfig::Coap(c) => {
            let transport = CoapTransport::new(c.clone(), tx).await?;
            publish(transport, &cfg, &mut fleet, &mut ground_truth, &live).await
        }
    };
    let Published {
        started,
        messages: published,
        readings: readings_published,
        sim_start,
        sim_end,
        report,
        error: loop_error,
    } = out;
    let elapsed = started.elapsed().as_secs_f64();
    let mut stats = match consumer.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(RunError::Accounting(e.to_string())),
    };
    let at_most_once =
        matches!(&cfg.transport, TransportConfig::Mqtt(m) if m.qos == QoS::AtMostOnce);
    let summary = RunSummary {
        protocol: cfg.transport.protocol(),
        broker: cfg.transport.peer(),
        qos: cfg.transport.qos(),
        mode: if cfg.single { "single" } else { "pack" },
        devices: cfg.fleet.devices,
        channels_per_device: Channel::ALL.len(),
        seed: cfg.fleet.seed,
        messages_published: published,
        messages_sent: stats.sent,
        messages_acked: stats.acked,
        messages_lost: stats.lost,
        messages_rejected: stats.rejected,
        messages_unconfirmed: if at_most_once {
            // Nothing is ever confirmed at QoS 0: count what was never written.
            published.saturating_sub(stats.sent)
        } else {
            published.saturating_sub(stats.acked + stats.lost + stats.rejected)
        },
        readings_published,
        readings_acked: stats.readings_acked,
        anomalies_injected: fleet.anomalies_started(),
        reconnects: report.reconnects,
        elapsed_s: elapsed,
        target_rate_msgs_per_s: cfg.rate,
        achieved_rate_msgs_per_s: stats.sent as f64 / elapsed.max(1e-9),
        acked_rate_msgs_per_s: stats.acked as f64 / elapsed.max(1e-9),
        latency: LatencySummary::from_samples(&mut stats.latencies),
        sim_start_ns: sim_start.unwrap_or(cfg.fleet.start.0),
        sim_end_ns: sim_end,
    };
    Ok((summary, loop_error))
}

/// The publish loop over any transport, then its drain.
async fn publish<T: Transport>(
    mut transport: T,
    cfg: &RunConfig,
    fleet: &mut Fleet,
    ground_truth: &mut Option<GroundTruthWriter>,
    live: &LiveCounters,
) -> Published {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let mut bucket = (cfg.rate > 0.0).then(|| TokenBucket::new(cfg.rate, started));
    let mut progress = Progress::new(cfg.progress, cfg.stop);
    let mut queue: VecDeque<OutMessage> = VecDeque::new();
    let (mut published, mut readings_published) = (0u64, 0u64);
    let (mut sim_start, mut sim_end) = (None, 0i64);
    let mut loop_error: Option<RunError> = None;

    'publish: loop {
        let done = match cfg.stop {
            StopAfter::Count(n) => published >= n,
            StopAfter::Duration(d) => started.elapsed() >= d,
        };
        if done || interrupted.load(Ordering::Relaxed) {
            break;
        }
        if queue.is_empty() {
            let sample = match fleet.next_sample() {
                Ok(s) => s,
                Err(e) => {
                    loop_error = Some(e.into());
                    break;
                }
            };
            if let Some(gt) = ground_truth.as_mut() {
                for record in &sample.started {
                    if let Err(e) = gt.write(record) {
                        loop_error = Some(e.into());
                        break 'publish;
                    }
                }
            }
            sim_start.get_or_insert(sample.ts.0);
            sim_end = sim_end.max(sample.ts.0);
            let device = sample
                .readings
                .first()
                .map(|r| r.reading.device.clone())
                .unwrap_or_default();
            let topic = format!("{}/{}", cfg.topic_prefix, device);
            let readings: Vec<_> = sample.readings.into_iter().map(|r| r.reading).collect();
            if cfg.single {
                for r in readings {
                    let one = vec![r];
                    let payload = protocol::senml::encode_json(&one);
                    queue.push_back(OutMessage {
                        id: 0,
                        topic: topic.clone(),
                        payload,
                        readings: one,
                    });
                }
            } else {
                let payload = protocol::senml::encode_json(&readings);
                queue.push_back(OutMessage {
                    id: 0,
                    topic,
                    payload,
                    readings,
                });
            }
        }
        if let Some(b) = bucket.as_mut() {
            while let Err(wait) = b.try_take(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            if let StopAfter::Duration(d) = cfg.stop
                && started.elapsed() >= d
            {
                break;
            }
        }
        let Some(mut msg) = queue.pop_front() else {
            continue;
        };
        msg.id = published;
        let n = msg.readings.len() as u64;
        if let Err(e) = transport.send(msg).await {
            loop_error = Some(e.into());
            break;
        }
        published += 1;
        readings_published += n;
        progress.update(cfg.stop, published, started, live);
    }
    progress.finish();
    if let Some(gt) = ground_truth.as_mut()
        && let Err(e) = gt.flush()
    {
        loop_error.get_or_insert(e.into());
    }

    let drain = if loop_error.is_some() {
        Duration::ZERO
    } else {
        cfg.drain_timeout
    };
    let report = match transport.close(drain).await {
        Ok(r) => r,
        Err(e) => {
            loop_error.get_or_insert(e.into());
            CloseReport::default()
        }
    };
    Published {
        started,
        messages: published,
        readings: readings_published,
        sim_start,
        sim_end,
        report,
        error: loop_error,
    }
}
