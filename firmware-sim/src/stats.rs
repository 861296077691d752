//! Latency percentiles and the run summary.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a latency sample, in milliseconds (nearest-rank).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// `None` for an empty sample. Sorts `samples` in place.
    pub fn from_samples(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let pick = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e3
        };
        Some(LatencySummary {
            count: samples.len() as u64,
            p50_ms: pick(0.50),
            p90_ms: pick(0.90),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        })
    }
}

/// The summary of one `run`, printed and written as JSON (`--summary-json`).
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// `mqtt` or `http`.
    pub protocol: &'static str,
    /// The MQTT broker (`HOST:PORT`), or the URL posted to (HTTP).
    pub broker: String,
    /// The MQTT QoS; `null` for HTTP.
    pub qos: Option<u8>,
    /// `pack` (one SenML pack per device per tick) or `single` (one reading per message).
    pub mode: &'static str,
    pub devices: usize,
    pub channels_per_device: usize,
    pub seed: u64,
    /// Messages handed to the transport.
    pub messages_published: u64,
    /// Messages written to the network at least once.
    pub messages_sent: u64,
    /// Messages whose PUBACK (HTTP: 202) arrived (always 0 at QoS 0: nothing is acked).
    pub messages_acked: u64,
    /// Messages given up: rumqttc dropped them because the broker lost the
    /// session, or (HTTP) no 202 came before the retry deadline.
    pub messages_lost: u64,
    /// Messages refused for good (HTTP 4xx other than 408/429), not retried.
    pub messages_rejected: u64,
    /// Messages neither acked nor lost when the drain timed out.
    pub messages_unconfirmed: u64,
    pub readings_published: u64,
    pub readings_acked: u64,
    pub anomalies_injected: u64,
    pub reconnects: u64,
    pub elapsed_s: f64,
    /// The requested rate (0 = unlimited).
    pub target_rate_msgs_per_s: f64,
    /// `messages_sent / elapsed_s`.
    pub achieved_rate_msgs_per_s: f64,
    /// `messages_acked / elapsed_s`.
    pub acked_rate_msgs_per_s: f64,
    /// Publish → PUBACK (HTTP: hand-over → 202) latency; `null` when nothing was acked.
    pub latency: Option<LatencySummary>,
    /// Simulated time of the first and last reading generated (Unix ns).
    pub sim_start_ns: i64,
    pub sim_end_ns: i64,
}

impl RunSummary {
    pub fn human(&self) -> String {
        let peer = match self.qos {
            Some(q) => format!("broker {} qos {q}", self.broker),
            None => format!("{} {}", self.protocol, self.broker),
        };
        let mut s = format!(
            "{peer} mode {} devices {} seed {}\n\
             messages: published {} sent {} acked {} lost {} rejected {} unconfirmed {}\n\
             readings: published {} acked {}\n\
             anomalies injected: {}  reconnects: {}\n\
             elapsed {:.3} s  rate: target {} achieved {:.1} msg/s  acked {:.1} msg/s\n",
            self.mode,
            self.devices,
            self.seed,
            self.messages_published,
            self.messages_sent,
            self.messages_acked,
            self.messages_lost,
            self.messages_rejected,
            self.messages_unconfirmed,
            self.readings_published,
            self.readings_acked,
            self.anomalies_injected,
            self.reconnects,
            self.elapsed_s,
            if self.target_rate_msgs_per_s > 0.0 {
                format!("{}", self.target_rate_msgs_per_s)
            } else {
                "unlimited".into()
            },
            self.achieved_rate_msgs_per_s,
            self.acked_rate_msgs_per_s,
        );
        let what = if self.qos.is_some() {
            "publish→PUBACK"
        } else {
            "send→202"
        };
        match &self.latency {
            Some(l) => s.push_str(&format!(
                "{what} latency ms: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} (n={})\n",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )),
            None => s.push_str(&format!("{what} latency: none (nothing acked)\n")),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = LatencySummary::from_samples(&mut v).unwrap();
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        assert_eq!(LatencySummary::from_samples(&mut []), None);
        let mut one = [Duration::from_millis(3)];
        assert_eq!(LatencySummary::from_samples(&mut one).unwrap().p50_ms, 3.0);
    }
}
