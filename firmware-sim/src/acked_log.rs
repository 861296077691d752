//! The acked log and the delivery accounting behind the summary.
//!
//! The acked log holds one line per reading of every message the peer ACKED
//! (MQTT PUBACK received, or HTTP 202), no header:
//!
//! ```text
//! device,channel,ts_ns,value
//! pump-0003,temperature,1760000000123456789,41.237
//! ```
//!
//! `ts_ns` is Unix nanoseconds exactly as a SenML decoder reads the message;
//! `value` uses Rust's shortest round-trip float formatting (parse it as f64).
//! Lines appear in ack order. The file is flushed every second and at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::Reading;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::publish::Delivery;

#[derive(Debug, thiserror::Error)]
pub enum AckedLogError {
    #[error("cannot write acked log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One acked-log line (without the newline).
pub fn acked_line(r: &Reading) -> String {
    format!("{},{},{},{}", r.device, r.channel, r.ts.0, r.value)
}

/// Buffered async writer of the acked log.
#[derive(Debug)]
pub struct AckedLog {
    path: PathBuf,
    out: BufWriter<tokio::fs::File>,
}

impl AckedLog {
    pub async fn create(path: &Path) -> Result<Self, AckedLogError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|source| AckedLogError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(AckedLog {
            path: path.to_owned(),
            out: BufWriter::with_capacity(256 * 1024, file),
        })
    }

    async fn write(&mut self, readings: &[Reading]) -> Result<(), AckedLogError> {
        let mut buf = String::with_capacity(readings.len() * 64);
        for r in readings {
            buf.push_str(&acked_line(r));
            buf.push('\n');
        }
        self.out
            .write_all(buf.as_bytes())
            .await
            .map_err(|source| AckedLogError::Io {
                path: self.path.clone(),
                source,
            })
    }

    async fn flush(&mut self) -> Result<(), AckedLogError> {
        self.out.flush().await.map_err(|source| AckedLogError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.out
            .get_ref()
            .sync_data()
            .await
            .map_err(|source| AckedLogError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Counts gathered from [`Delivery`] events.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub sent: u64,
    pub acked: u64,
    pub lost: u64,
    pub rejected: u64,
    pub readings_acked: u64,
    pub latencies: Vec<Duration>,
}

/// Live counters for the progress bar.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
}

/// Consumes deliveries until every sender is gone, writing the acked log.
/// Keeps draining after a write error (so the transport never stalls) and
/// reports the first error at the end.
pub async fn consume(
    mut rx: mpsc::Receiver<Delivery>,
    mut log: Option<AckedLog>,
    live: Arc<LiveCounters>,
) -> Result<DeliveryStats, AckedLogError> {
    let mut stats = DeliveryStats::default();
    let mut first_error = None;
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let d = tokio::select! {
            d = rx.recv() => d,
            _ = flush.tick() => {
                if let Some(l) = log.as_mut()
                    && let Err(e) = l.flush().await
                {
                    first_error.get_or_insert(e);
                    log = None;
                }
                continue;
            }
        };
        let Some(d) = d else { break };
        match d {
            Delivery::Sent { .. } => {
                stats.sent += 1;
                live.sent.fetch_add(1, Ordering::Relaxed);
            }
            Delivery::Acked { message, latency } => {
                stats.acked += 1;
                stats.readings_acked += message.readings.len() as u64;
                stats.latencies.push(latency);
                live.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = log.as_mut()
                    && let Err(e) = l.write(&message.readings).await
                {
                    first_error.get_or_insert(e);
                    log = None;
                }
            }
            Delivery::Lost { .. } => stats.lost += 1,
            Delivery::Rejected { .. } => stats.rejected += 1,
        }
    }
    if let Some(l) = log.as_mut()
        && let Err(e) = l.flush().await
    {
        first_error.get_or_insert(e);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::OutMessage;
    use protocol::Timestamp;

    #[tokio::test]
    async fn acked_messages_are_logged_one_line_per_reading_and_sent_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acked.csv");
        let log = AckedLog::create(&path).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        let live = Arc::new(LiveCounters::default());
        let task = tokio::spawn(consume(rx, Some(log), live.clone()));
        let readings = vec![
            Reading::new(
                "pump-0000",
                "flow",
                Timestamp(1_760_000_000_000_000_001),
                0.0125,
            )
            .unwrap(),
            Reading::new(
                "pump-0000",
                "current",
                Timestamp(1_760_000_000_000_000_001),
                17.0,
            )
            .unwrap(),
        ];
        let m = OutMessage {
            id: 1,
            topic: "t".into(),
            payload: vec![],
            readings,
        };
        tx.send(Delivery::Sent { id: 1 }).await.unwrap();
        tx.send(Delivery::Sent { id: 2 }).await.unwrap();
        tx.send(Delivery::Acked {
            message: m,
            latency: Duration::from_millis(2),
        })
        .await
        .unwrap();
        tx.send(Delivery::Lost { id: 2 }).await.unwrap();
        drop(tx);
        let stats = task.await.unwrap().unwrap();
        assert_eq!(
            (stats.sent, stats.acked, stats.lost, stats.readings_acked),
            (2, 1, 1, 2)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "pump-0000,flow,1760000000000000001,0.0125\npump-0000,current,1760000000000000001,17\n"
        );
        assert_eq!(live.acked.load(Ordering::Relaxed), 1);
    }
}
