//! The serial transport: each message is written as lines to a serial device
//! (in tests, one end of a `socat` pseudo-terminal pair), in the format the
//! gateway's `[[serial]]` port expects:
//! - `senml`: the message's SenML JSON pack on one line;
//! - `csv`: one `channel,value,timestamp` line per reading (exact decimal
//!   seconds, nanosecond precision);
//! - `checksummed`: the csv line followed by `*hh`, the XOR of its bytes in
//!   two hex digits (NMEA-style).
//!
//! csv and checksummed lines carry no device name: the gateway takes it from
//! the port's `device` setting, so a run in those formats simulates exactly one
//! device (`--devices 1`) and the port's `device` must be that device's name
//! (`pump-0000` with the default prefix).
//!
//! **Acked means written and drained — weaker than MQTT or HTTP.** Serial has
//! no acknowledgement. A message counts as acked once its bytes were written
//! and `tcdrain` returned (the kernel has transmitted them; on a pty: handed
//! them to the other side). Nothing tells the simulator whether the gateway
//! read, decoded or stored them: a message written while the gateway is down,
//! or that the gateway holds uncommitted when it crashes, is "acked" and lost.
//! The acked log is therefore an upper bound of what the gateway can have.
//!
//! Writing is blocking I/O on one dedicated thread; at most `max_inflight`
//! messages wait for it. A write that blocks longer than `write_timeout` (no
//! reader draining the other side) or fails ends the transport: that message
//! and every waiting one are reported lost.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use protocol::Reading;
use tokio::sync::mpsc;
use tracing::warn;

use super::{CloseReport, Delivery, OutMessage, Transport, TransportError};

/// `--serial-format`: how lines are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SerialFormat {
    /// One SenML JSON pack per line.
    #[default]
    Senml,
    /// `channel,value,timestamp` per reading.
    Csv,
    /// `channel,value,timestamp*hh` per reading.
    Checksummed,
}

impl SerialFormat {
    pub fn name(self) -> &'static str {
        match self {
            SerialFormat::Senml => "senml",
            SerialFormat::Csv => "csv",
            SerialFormat::Checksummed => "checksummed",
        }
    }
}

/// Where and how to write.
#[derive(Clone, Debug)]
pub struct SerialConfig {
    /// The device path (a tty or one end of a pty pair).
    pub device: PathBuf,
    pub format: SerialFormat,
    pub baud: u32,
    /// Most messages handed over and not yet written (1..=65535).
    pub max_inflight: u16,
    /// Longest a single write may block before the transport gives up.
    pub write_timeout: Duration,
}

/// Why a reading cannot be written as a csv line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel {0:?} cannot be written as a csv field")]
pub struct EncodeError(String);

/// XOR of every byte (the `checksummed` form's `hh`).
pub fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0, |acc, b| acc ^ b)
}

/// The message's lines in `format`, each ending in `\n`. `senml_pack` is the
/// message's SenML JSON payload (used as is for `senml`).
pub fn encode_lines(
    format: SerialFormat,
    senml_pack: &[u8],
    readings: &[Reading],
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    match format {
        SerialFormat::Senml => {
            out.extend_from_slice(senml_pack);
            out.push(b'\n');
        }
        SerialFormat::Csv | SerialFormat::Checksummed => {
            for r in readings {
                let c = &r.channel;
                if c.contains([',', '"', '*', '\n', '\r'])
                    || c.starts_with([' ', '\t'])
                    || c.ends_with([' ', '\t'])
                {
                    return Err(EncodeError(c.clone()));
                }
                let nanos = i128::from(r.ts.0);
                let sign = if nanos < 0 { "-" } else { "" };
                let abs = nanos.abs();
                let line = format!(
                    "{c},{},{sign}{}.{:09}",
                    r.value,
                    abs / 1_000_000_000,
                    abs % 1_000_000_000
                );
                out.extend_from_slice(line.as_bytes());
                if format == SerialFormat::Checksummed {
                    out.extend_from_slice(format!("*{:02X}", checksum(line.as_bytes())).as_bytes());
                }
                out.push(b'\n');
            }
        }
    }
    Ok(out)
}

/// Writes messages to a serial device; "acked" = written and drained.
#[derive(Debug)]
pub struct SerialTransport {
    queue: Option<mpsc::Sender<(OutMessage, Instant)>>,
    /// Taken once awaited (a JoinHandle must not be polled after it finished).
    worker: Option<tokio::task::JoinHandle<Result<(), String>>>,
    device: String,
    handed_over: u64,
    /// Messages the worker has finished with (acked or lost).
    finished: Arc<AtomicU64>,
    write_timeout: Duration,
}

impl SerialTransport {
    /// Opens the device (8N1, no flow control, `cfg.baud`).
    pub fn open(
        cfg: SerialConfig,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Result<Self, TransportError> {
        let device = cfg.device.display().to_string();
        let port = tokio_serial::new(device.clone(), cfg.baud)
            .timeout(cfg.write_timeout)
            .open_native()
            .map_err(|e| TransportError::ConnectTimeout {
                broker: device.clone(),
                timeout: Duration::ZERO,
                last_error: e.to_string(),
            })?;
        let (queue, rx) = mpsc::channel(usize::from(cfg.max_inflight.max(1)));
        let finished = Arc::new(AtomicU64::new(0));
        let worker = {
            let finished = finished.clone();
            let format = cfg.format;
            tokio::task::spawn_blocking(move || write_loop(port, format, rx, deliveries, &finished))
        };
        Ok(SerialTransport {
            queue: Some(queue),
            worker: Some(worker),
            device,
            handed_over: 0,
            finished,
            write_timeout: cfg.write_timeout,
        })
    }

    fn failed(&self, last_error: String) -> TransportError {
        TransportError::Disconnected {
            broker: self.device.clone(),
            timeout: self.write_timeout,
            last_error,
        }
    }
}

/// The writer thread: write, drain, report; on the first failure report the
/// message and every queued one lost, and stop.
fn write_loop(
    mut port: impl Write,
    format: SerialFormat,
    mut rx: mpsc::Receiver<(OutMessage, Instant)>,
    deliveries: mpsc::Sender<Delivery>,
    finished: &AtomicU64,
) -> Result<(), String> {
    // The receiver goes away only when the run is over.
    let report = |d: Delivery| {
        let _ = deliveries.blocking_send(d);
    };
    while let Some((msg, handed_over)) = rx.blocking_recv() {
        let id = msg.id;
        let written = encode_lines(format, &msg.payload, &msg.readings)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                port.write_all(&bytes).map_err(|e| format!("write: {e}"))?;
                report(Delivery::Sent { id });
                // TTYPort::flush is tcdrain(3).
                port.flush().map_err(|e| format!("drain: {e}"))
            });
        finished.fetch_add(1, Ordering::Relaxed);
        match written {
            Ok(()) => report(Delivery::Acked {
                message: msg,
                latency: handed_over.elapsed(),
            }),
            Err(e) => {
                warn!(id, error = %e, "Serial write failed; this and every waiting message are lost.");
                report(Delivery::Lost { id });
                rx.close();
                while let Ok((m, _)) = rx.try_recv() {
                    finished.fetch_add(1, Ordering::Relaxed);
                    report(Delivery::Lost { id: m.id });
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

impl Transport for SerialTransport {
    async fn send(&mut self, msg: OutMessage) -> Result<(), TransportError> {
        let Some(queue) = &self.queue else {
            return Err(TransportError::Stopped);
        };
        if queue.send((msg, Instant::now())).await.is_err() {
            // The writer stopped: learn why.
            self.queue = None;
            let why = match self.worker.take() {
                Some(worker) => match worker.await {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => "the writer stopped".into(),
                    Err(e) => e.to_string(),
                },
                None => "the writer stopped".into(),
            };
            return Err(self.failed(why));
        }
        self.handed_over += 1;
        Ok(())
    }

    async fn close(mut self, drain: Duration) -> Result<CloseReport, TransportError> {
        self.queue = None;
        let Some(worker) = self.worker.take() else {
            return Err(TransportError::Stopped);
        };
        let result = tokio::time::timeout(drain, worker).await;
        let unconfirmed = self
            .handed_over
            .saturating_sub(self.finished.load(Ordering::Relaxed));
        match result {
            Ok(Ok(Ok(()))) => Ok(CloseReport {
                unconfirmed,
                reconnects: 0,
            }),
            Ok(Ok(Err(e))) => Err(self.failed(e)),
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => {
                warn!(unconfirmed, drain = ?drain, "Drain timed out with messages not yet written.");
                Ok(CloseReport {
                    unconfirmed,
                    reconnects: 0,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::Timestamp;

    use super::*;

    fn reading(channel: &str, ts: i64, value: f64) -> Reading {
        Reading::new("pump-0000", channel, Timestamp(ts), value).unwrap()
    }

    #[test]
    fn csv_and_checksummed_lines_carry_exact_times() {
        let rs = [
            reading("temperature", 1_767_225_600_000_001_000, 41.25),
            reading("flow", 1_767_225_600_500_000_000, -0.5),
        ];
        let csv = encode_lines(SerialFormat::Csv, b"", &rs).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "temperature,41.25,1767225600.000001000\nflow,-0.5,1767225600.500000000\n"
        );
        let sum = encode_lines(SerialFormat::Checksummed, b"", &rs[..1]).unwrap();
        let text = String::from_utf8(sum).unwrap();
        let (payload, hh) = text.trim_end().rsplit_once('*').unwrap();
        assert_eq!(
            u8::from_str_radix(hh, 16).unwrap(),
            checksum(payload.as_bytes())
        );
        assert_eq!(
            encode_lines(SerialFormat::Senml, b"[{}]", &rs).unwrap(),
            b"[{}]\n"
        );
    }

    #[test]
    fn a_channel_that_cannot_be_a_csv_field_is_refused() {
        assert!(encode_lines(SerialFormat::Csv, b"", &[reading("a,b", 0, 1.0)]).is_err());
    }

    /// A writer that fails after `ok` writes.
    struct Failing {
        ok: usize,
        lines: Vec<u8>,
    }
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.ok == 0 {
                return Err(std::io::Error::other("gone"));
            }
            self.ok -= 1;
            self.lines.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn written_messages_are_acked_and_after_a_failure_all_waiting_are_lost() {
        let (tx, rx) = mpsc::channel(8);
        let (dtx, mut drx) = mpsc::channel(64);
        for id in 0..4 {
            let r = vec![reading("flow", 1_000_000_000 + id, 1.0)];
            tx.send((
                OutMessage {
                    id: id as u64,
                    topic: String::new(),
                    payload: Vec::new(),
                    readings: r,
                },
                Instant::now(),
            ))
            .await
            .unwrap();
        }
        drop(tx);
        let finished = AtomicU64::new(0);
        let port = Failing {
            ok: 2,
            lines: Vec::new(),
        };
        let r = tokio::task::spawn_blocking(move || {
            let r = write_loop(port, SerialFormat::Csv, rx, dtx, &finished);
            (r, finished.load(Ordering::Relaxed))
        })
        .await
        .unwrap();
        assert!(r.0.is_err());
        assert_eq!(r.1, 4);
        let mut events = Vec::new();
        while let Some(d) = drx.recv().await {
            events.push(match d {
                Delivery::Sent { id } => format!("sent {id}"),
                Delivery::Acked { message, .. } => format!("acked {}", message.id),
                Delivery::Lost { id } => format!("lost {id}"),
                Delivery::Rejected { id, .. } => format!("rejected {id}"),
            });
        }
        assert_eq!(
            events,
            ["sent 0", "acked 0", "sent 1", "acked 1", "lost 2", "lost 3"]
        );
    }
}
