//! Serial source: lines from a serial port (tokio-serial), one `[[serial]]`
//! table and one task per port.
//!
//! - [`framer`] — the I/O-free line framer (bounded buffer, LF/CRLF/CR).
//! - [`format`] — the line formats `senml`, `csv`, `checksummed`.
//! - [`config`] — `[[serial]]` and its validation.
//!
//! **No acknowledgement.** A serial line has no way to say "stored": every
//! line becomes an [`Envelope::unacked`]. A line the gateway has read but not
//! yet committed is lost if the gateway crashes (the device will not resend
//! it), exactly like MQTT QoS 0. Lines are handed to ingest in order.
//!
//! **Backpressure.** The ingest queue is bounded. While it is full (e.g. the
//! outbox is full under the `block` policy) the port task waits with at most
//! one line's envelope in hand and stops reading the port. The kernel then
//! buffers what the device keeps sending in the tty input queue (about 4 KiB
//! on Linux). Once that is full:
//! - with `flow_control = "hardware"` the UART deasserts RTS (and with
//!   `software` sends XOFF), so a device that honours flow control pauses;
//! - without flow control, the UART driver drops the bytes it cannot store
//!   (counted by the kernel as overruns, invisible here); the framer then sees
//!   a line with a gap, which usually fails to decode and is quarantined;
//! - on a pseudo-terminal (tests, firmware-sim) the writer blocks instead.
//!
//! **Device vanishing.** A read error or end of file (USB unplugged, pty
//! master closed) closes the port; a partial line is quarantined as
//! `truncated`; the path is re-opened with exponential backoff
//! (`reopen_min`..`reopen_max`) until it is back. Each state change is logged
//! once (open failures while already disconnected only at debug level).
//!
//! **Bad frames** (over-long line, bad or missing checksum, ragged CSV,
//! NaN, …) are counted in `outpost_gateway_serial_bad_frames_total{port,reason}`
//! and quarantined with origin `serial:<name>`; the good lines around them are
//! unaffected.

pub mod config;
pub mod format;
pub mod framer;

use prometheus_client::encoding::EncodeLabelSet;
use protocol::{DecodeLimits, Timestamp};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_serial::SerialStream;
use tracing::{debug, info, warn};

pub use config::{SerialFlowControl, SerialParity, SerialSourceConfig, validate_ports};
pub use format::{LineError, SerialFormat};
pub use framer::{Frame, LineFramer};

use crate::backoff::Backoff;
use crate::envelope::{Content, Envelope};
use crate::metrics::Metrics;

/// Bytes asked of the port per read.
const READ_CHUNK: usize = 4096;

/// Label of the per-port serial metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    pub port: String,
}

/// Label of `serial_bad_frames`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortReasonLabel {
    pub port: String,
    pub reason: String,
}

/// Why a serial port task stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SerialSourceError {
    #[error("serial port {port}: the ingest stage stopped while the gateway was running")]
    IngestClosed { port: String },
}

/// How one open period of the port ended.
enum End {
    Shutdown,
    IngestClosed,
    Lost(String),
}

/// One serial port.
#[derive(Debug)]
pub struct SerialSource {
    cfg: SerialSourceConfig,
    limits: DecodeLimits,
    metrics: Metrics,
    quarantine_payload_bytes: usize,
    origin: String,
    label: PortLabel,
}

impl SerialSource {
    /// `limits`: the gateway's decode limits; a line's byte limit is `max_line_bytes`.
    pub fn new(
        cfg: SerialSourceConfig,
        limits: DecodeLimits,
        metrics: Metrics,
        quarantine_payload_bytes: usize,
    ) -> Self {
        let limits = DecodeLimits {
            max_bytes: cfg.max_line(),
            ..limits
        };
        SerialSource {
            origin: format!("serial:{}", cfg.name),
            label: PortLabel {
                port: cfg.name.clone(),
            },
            cfg,
            limits,
            metrics,
            quarantine_payload_bytes,
        }
    }

    /// Reads the port until `shutdown` turns true, re-opening it whenever it
    /// goes away. Returns an error only if ingest stops first.
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), SerialSourceError> {
        let port = self.cfg.name.as_str();
        let path = self.cfg.path.display().to_string();
        let connected = self
            .metrics
            .serial_connected
            .get_or_create(&self.label)
            .clone();
        let reconnects = self
            .metrics
            .serial_reconnects
            .get_or_create(&self.label)
            .clone();
        connected.set(0);
        let mut backoff = Backoff::new(self.cfg.reopen_min, self.cfg.reopen_max);
        let mut framer = LineFramer::new(self.cfg.max_line());
        let mut ever_open = false;
        // Whether "not connected" has been logged since the last state change.
        let mut down_logged = false;
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            match self.open() {
                Ok(stream) => {
                    if ever_open {
                        reconnects.inc();
                        info!(port, path = %path, "Serial device is back; reading again.");
                    } else {
                        info!(port, path = %path, format = self.cfg.format.name(), baud = self.cfg.baud,
                            "Serial port open.");
                    }
                    ever_open = true;
                    connected.set(1);
                    backoff.reset();
                    let end = self.read(stream, &mut framer, &tx, &mut shutdown).await;
                    connected.set(0);
                    if let Some(partial) = framer.reset() {
                        let bytes = match partial {
                            Frame::Line(b) | Frame::TooLong { prefix: b, .. } => b,
                        };
                        let len = bytes.len();
                        let env = self.rejected(LineError::Truncated, bytes, len, Timestamp::now());
                        // Best effort: the envelope is lost if ingest is full at shutdown.
                        let _ = tx.try_send(env);
                    }
                    match end {
                        End::Shutdown => break Ok(()),
                        End::IngestClosed => {
                            break Err(SerialSourceError::IngestClosed {
                                port: port.to_owned(),
                            });
                        }
                        End::Lost(why) => {
                            warn!(port, path = %path, reason = %why,
                                "Serial device lost; re-opening it with backoff.");
                            down_logged = true;
                        }
                    }
                }
                Err(e) => {
                    if down_logged {
                        debug!(port, path = %path, error = %e, "Serial device still not openable.");
                    } else {
                        warn!(port, path = %path, error = %e,
                            "Cannot open the serial device; retrying with backoff.");
                        down_logged = true;
                    }
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
            }
        };
        connected.set(0);
        info!(port, "Serial source stopped.");
        result
    }

    fn open(&self) -> Result<SerialStream, tokio_serial::Error> {
        let c = &self.cfg;
        let builder = tokio_serial::new(c.path.to_string_lossy(), c.baud)
            .data_bits(match c.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .parity(match c.parity {
                SerialParity::None => tokio_serial::Parity::None,
                SerialParity::Odd => tokio_serial::Parity::Odd,
                SerialParity::Even => tokio_serial::Parity::Even,
            })
            .stop_bits(match c.stop_bits {
                2 => tokio_serial::StopBits::Two,
                _ => tokio_serial::StopBits::One,
            })
            .flow_control(match c.flow_control {
                SerialFlowControl::None => tokio_serial::FlowControl::None,
                SerialFlowControl::Software => tokio_serial::FlowControl::Software,
                SerialFlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            });
        SerialStream::open(&builder)
    }

    /// Reads and hands over lines until the port fails, ingest closes or shutdown.
    async fn read(
        &self,
        mut stream: SerialStream,
        framer: &mut LineFramer,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) => return End::Lost("end of file (hang-up)".into()),
                    Ok(n) => n,
                    Err(e) => return End::Lost(e.to_string()),
                },
                _ = shutdown.wait_for(|s| *s) => return End::Shutdown,
            };
            let received = Timestamp::now();
            let mut input = &buf[..n];
            while let Some(frame) = framer.next_frame(&mut input) {
                let envelope = self.envelope(frame, received);
                // While the ingest queue is full the port is not read: see the module docs.
                tokio::select! {
                    r = tx.send(envelope) => if r.is_err() {
                        return End::IngestClosed;
                    },
                    _ = shutdown.wait_for(|s| *s) => return End::Shutdown,
                }
            }
        }
    }

    /// One frame as an envelope: readings, or a quarantine entry.
    fn envelope(&self, frame: Frame, received: Timestamp) -> Envelope {
        self.metrics.messages_received.inc();
        self.metrics.serial_lines.get_or_create(&self.label).inc();
        match frame {
            Frame::Line(line) => match format::decode_line(
                self.cfg.format,
                &line,
                self.cfg.device.as_deref(),
                received,
                &self.limits,
            ) {
                Ok(readings) => {
                    self.metrics.readings_received.inc_by(readings.len() as u64);
                    Envelope::unacked(self.origin.clone(), received, Content::Readings(readings))
                }
                Err(e) => {
                    let len = line.len();
                    self.rejected(e, line, len, received)
                }
            },
            Frame::TooLong { prefix, len } => self.rejected(
                LineError::TooLong {
                    len,
                    limit: self.cfg.max_line(),
                },
                prefix,
                len,
                received,
            ),
        }
    }

    fn rejected(
        &self,
        error: LineError,
        mut payload: Vec<u8>,
        payload_len: usize,
        received: Timestamp,
    ) -> Envelope {
        let reason = error.reason();
        self.metrics
            .serial_bad_frames
            .get_or_create(&PortReasonLabel {
                port: self.cfg.name.clone(),
                reason: reason.to_owned(),
            })
            .inc();
        debug!(port = %self.cfg.name, reason, error = %error, "Bad serial frame; quarantined.");
        payload.truncate(self.quarantine_payload_bytes);
        Envelope::unacked(
            self.origin.clone(),
            received,
            Content::Rejected {
                error: error.into_decode_error(),
                payload,
                payload_len,
            },
        )
    }
}
