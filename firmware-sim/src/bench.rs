//! `bench-broker`: the raw broker → bare subscriber rate on this machine.
//!
//! One process, two rumqttc clients. The subscriber subscribes first (at the
//! benchmark QoS); the publisher then sends `count` messages as fast as its
//! inflight window allows. Each payload starts with the sequence number and the
//! send time (ns since the benchmark began, both big-endian u64), padded to
//! `payload_bytes`. The rate is unique messages received divided by the time
//! from the first publish to the last receipt. This is the baseline end-to-end
//! benchmarks divide by.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::sync::watch;

use crate::stats::LatencySummary;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub host: String,
    pub port: u16,
    pub count: u64,
    pub qos: QoS,
    pub payload_bytes: usize,
    pub max_inflight: u16,
    /// Give up this long after the first publish.
    pub timeout: Duration,
    pub topic: String,
    pub client_id_prefix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub broker: String,
    pub qos: u8,
    pub payload_bytes: usize,
    pub max_inflight: u16,
    pub count: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Extra copies received (QoS 1 redeliveries).
    pub duplicates: u64,
    /// Messages never received before the timeout.
    pub missing: u64,
    pub elapsed_s: f64,
    pub rate_msgs_per_s: f64,
    /// Publish → receive latency.
    pub latency: Option<LatencySummary>,
}

impl BenchReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "broker {} qos {} payload {} B inflight {}\n\
             received {}/{} (duplicates {}, missing {}) in {:.3} s: {:.1} msg/s\n",
            self.broker,
            self.qos,
            self.payload_bytes,
            self.max_inflight,
            self.received,
            self.count,
            self.duplicates,
            self.missing,
            self.elapsed_s,
            self.rate_msgs_per_s
        );
        if let Some(l) = &self.latency {
            s.push_str(&format!(
                "publish→receive latency ms: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}\n",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            ));
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("could not connect the {role} to {broker} within {timeout:?}: {error}")]
    Connect {
        role: &'static str,
        broker: String,
        timeout: Duration,
        error: String,
    },
    #[error("MQTT client error: {0}")]
    Client(String),
    #[error("no message arrived at the subscriber")]
    NothingReceived,
}

fn qos_number(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn options(cfg: &BenchConfig, role: &str) -> MqttOptions {
    let mut o = MqttOptions::new(
        format!("{}-{role}", cfg.client_id_prefix),
        cfg.host.clone(),
        cfg.port,
    );
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(cfg.max_inflight.max(1))
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Polls until CONNACK (and SUBACK, if `subscribe`), within 10 s.
async fn establish(
    eventloop: &mut rumqttc::EventLoop,
    role: &'static str,
    broker: &str,
    want_suback: bool,
) -> Result<(), BenchError> {
    let timeout = Duration::from_secs(10);
    let deadline = Instant::now() + timeout;
    let mut connected = false;
    let mut last_error = String::from("timed out");
    while Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                connected = true;
                if !want_suback {
                    return Ok(());
                }
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) if connected => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => break,
        }
    }
    Err(BenchError::Connect {
        role,
        broker: broker.to_owned(),
        timeout,
        error: last_error,
    })
}

pub async fn bench_broker(cfg: BenchConfig) -> Result<BenchReport, BenchError> {
    let broker = format!("{}:{}", cfg.host, cfg.port);
    let count = cfg.count.max(1);
    let (sub, mut sub_loop) = AsyncClient::new(options(&cfg, "sub"), 16);
    sub.subscribe(cfg.topic.clone(), cfg.qos)
        .await
        .map_err(|e| BenchError::Client(e.to_string()))?;
    establish(&mut sub_loop, "subscriber", &broker, true).await?;
    let (publisher, mut pub_loop) = AsyncClient::new(options(&cfg, "pub"), 64);
    establish(&mut pub_loop, "publisher", &broker, false).await?;

    let base = Instant::now();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    // The publisher's event loop only has to keep moving.
    let pub_driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = stop_rx.changed() => break,
                ev = pub_loop.poll() => if ev.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                },
            }
        }
    });
    let topic = cfg.topic.clone();
    let (qos, size) = (cfg.qos, cfg.payload_bytes.max(16));
    let pub_task = tokio::spawn(async move {
        for seq in 0..count {
            let mut payload = vec![b'x'; size];
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            let sent = base.elapsed().as_nanos() as u64;
            payload[8..16].copy_from_slice(&sent.to_be_bytes());
            if publisher
                .publish(topic.clone(), qos, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
    });

    let mut seen = vec![false; usize::try_from(count).unwrap_or(usize::MAX)];
    let (mut received, mut duplicates) = (0u64, 0u64);
    let mut latencies = Vec::with_capacity(seen.len());
    let mut last_receipt = base;
    let deadline = base + cfg.timeout;
    while received < count {
        let ev = match tokio::time::timeout_at(deadline.into(), sub_loop.poll()).await {
            Err(_) => break,
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(Ok(ev)) => ev,
        };
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        let now = base.elapsed();
        if p.payload.len() < 16 {
            continue;
        }
        let mut seq_b = [0u8; 8];
        let mut sent_b = [0u8; 8];
        seq_b.copy_from_slice(&p.payload[..8]);
        sent_b.copy_from_slice(&p.payload[8..16]);
        let seq = usize::try_from(u64::from_be_bytes(seq_b)).unwrap_or(usize::MAX);
        match seen.get_mut(seq) {
            Some(s) if !*s => {
                *s = true;
                received += 1;
                last_receipt = Instant::now();
                latencies
                    .push(now.saturating_sub(Duration::from_nanos(u64::from_be_bytes(sent_b))));
            }
            Some(_) => duplicates += 1,
            None => {}
        }
    }
    let _ = stop_tx.send(true);
    pub_task.abort();
    let _ = pub_driver.await;
    let _ = sub.disconnect().await;
    // Let the subscriber's DISCONNECT out; ignore what happens next.
    let _ = tokio::time::timeout(Duration::from_millis(200), sub_loop.poll()).await;

    if received == 0 {
        return Err(BenchError::NothingReceived);
    }
    let elapsed = last_receipt.duration_since(base).as_secs_f64();
    Ok(BenchReport {
        broker,
        qos: qos_number(cfg.qos),
        payload_bytes: size,
        max_inflight: cfg.max_inflight,
        count,
        received,
        duplicates,
        missing: count - received,
        elapsed_s: elapsed,
        rate_msgs_per_s: received as f64 / elapsed.max(1e-9),
        latency: LatencySummary::from_samples(&mut latencies),
    })
}
