//! Storage wear: the bytes this process sent to storage (`write_bytes` of
//! `/proc/self/io`: outbox, quarantine, everything), exported as
//! `outpost_gateway_disk_bytes_written_total`, and a warning in the log when
//! the recent rate would write the card's stated endurance
//! (`storage.write_endurance`) within a year.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// How often the monitor samples `write_bytes`.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// The rate is judged over this window, so a burst alone does not warn.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// While the rate stays too high, the warning is repeated this often.
const REPEAT_WARNING: Duration = Duration::from_secs(24 * 3600);
const YEAR_S: f64 = 365.0 * 86_400.0;

/// `write_bytes` of `/proc/self/io`, or `None` where there is no such file
/// (not Linux, or a kernel without task I/O accounting).
pub fn process_write_bytes() -> Option<u64> {
    parse_write_bytes(&std::fs::read_to_string("/proc/self/io").ok()?)
}

fn parse_write_bytes(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What the monitor concluded from a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Bytes per year at the rate over the window, above the endurance.
    TooHigh { per_year: f64 },
    /// Back below the endurance after a warning.
    Recovered { per_year: f64 },
}

/// Keeps the samples of the last [`WINDOW`] and says when to warn.
#[derive(Debug)]
pub struct WearMonitor {
    endurance: u64,
    samples: VecDeque<(Instant, u64)>,
    warned_at: Option<Instant>,
}

impl WearMonitor {
    /// `endurance`: bytes the card is assumed to take; 0 disables the warning.
    pub fn new(endurance: u64) -> Self {
        WearMonitor {
            endurance,
            samples: VecDeque::with_capacity(32),
            warned_at: None,
        }
    }

    /// Records `written` (the process total) at `now`; a verdict when the
    /// state changed, or when a warning is due again.
    pub fn sample(&mut self, now: Instant, written: u64) -> Option<Verdict> {
        self.samples.push_back((now, written));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW)
        {
            self.samples.pop_front();
        }
        if self.endurance == 0 {
            return None;
        }
        let (t0, b0) = *self.samples.front()?;
        let span = now.duration_since(t0);
        // Judge only a full window: a restart's first minutes say little.
        if span < WINDOW {
            return None;
        }
        let per_year = written.saturating_sub(b0) as f64 / span.as_secs_f64() * YEAR_S;
        if per_year >= self.endurance as f64 {
            let due = self
                .warned_at
                .is_none_or(|t| now.duration_since(t) >= REPEAT_WARNING);
            if due {
                self.warned_at = Some(now);
                return Some(Verdict::TooHigh { per_year });
            }
        } else if self.warned_at.take().is_some() {
            return Some(Verdict::Recovered { per_year });
        }
        None
    }
}

/// Samples `write_bytes` into the metric (also refreshed on every scrape)
/// and logs the wear verdicts, until `shutdown` flips.
pub async fn run(metrics: Metrics, endurance: ByteSize, mut shutdown: watch::Receiver<bool>) {
    let mut monitor = WearMonitor::new(endurance.as_u64());
    loop {
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let Some(written) = metrics.observe_disk_writes() else {
            return;
        };
        match monitor.sample(Instant::now(), written) {
            Some(Verdict::TooHigh { per_year }) => warn!(
                per_year = %ByteSize::b(per_year as u64),
                endurance = %endurance,
                "At the rate of the last 15 minutes this gateway writes more to its storage in a \
                 year than storage.write_endurance; an SD card may wear out. See \
                 docs/raspberry-pi.md (SD cards): raise ingest.max_commit_delay, or move \
                 storage.path to USB storage."
            ),
            Some(Verdict::Recovered { per_year }) => info!(
                per_year = %ByteSize::b(per_year as u64),
                endurance = %endurance,
                "Storage write rate is back below storage.write_endurance per year."
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_bytes_is_read_from_proc_io_text() {
        let text = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\n\
                    write_bytes: 123456\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_write_bytes(text), Some(123_456));
        assert_eq!(parse_write_bytes("rchar: 1\n"), None);
        assert_eq!(parse_write_bytes("write_bytes: lots\n"), None);
    }

    #[test]
    fn this_process_has_a_write_counter_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_write_bytes().is_some());
        }
    }

    /// Feeds one sample a minute at `per_s` bytes/s for `minutes`.
    fn feed(
        m: &mut WearMonitor,
        t: &mut Instant,
        total: &mut u64,
        per_s: u64,
        minutes: u64,
    ) -> Vec<Verdict> {
        let mut out = Vec::new();
        for _ in 0..minutes {
            *t += SAMPLE_EVERY;
            *total += per_s * 60;
            out.extend(m.sample(*t, *total));
        }
        out
    }

    #[test]
    fn a_sustained_rate_above_the_endurance_warns_once_and_recovery_is_reported() {
        // 16 TB a year is about 507 KB/s.
        let mut m = WearMonitor::new(16_000_000_000_000);
        let (mut t, mut total) = (Instant::now(), 0u64);
        assert!(m.sample(t, 0).is_none());
        assert!(
            feed(&mut m, &mut t, &mut total, 100_000, 30).is_empty(),
            "well below"
        );
        let v = feed(&mut m, &mut t, &mut total, 1_000_000, 60);
        assert_eq!(v.len(), 1, "one warning, not one a minute: {v:?}");
        let Verdict::TooHigh { per_year } = v[0] else {
            panic!("{v:?}")
        };
        assert!(per_year >= 16e12);
        let v = feed(&mut m, &mut t, &mut total, 100_000, 30);
        assert!(matches!(v.as_slice(), [Verdict::Recovered { .. }]), "{v:?}");
    }

    #[test]
    fn a_short_burst_does_not_warn_and_zero_endurance_never_does() {
        let mut m = WearMonitor::new(16_000_000_000_000);
        let (mut t, mut total) = (Instant::now(), 0u64);
        m.sample(t, 0);
        assert!(feed(&mut m, &mut t, &mut total, 100_000, 20).is_empty());
        // One minute at 2 MB/s among quiet ones: ~230 KB/s over the window.
        assert!(feed(&mut m, &mut t, &mut total, 2_000_000, 1).is_empty());
        assert!(feed(&mut m, &mut t, &mut total, 100_000, 30).is_empty());

        let mut off = WearMonitor::new(0);
        let (mut t, mut total) = (Instant::now(), 0u64);
        off.sample(t, 0);
        assert!(feed(&mut off, &mut t, &mut total, 100_000_000, 60).is_empty());
    }

    #[test]
    fn the_window_stays_bounded() {
        let mut m = WearMonitor::new(1);
        let (mut t, mut total) = (Instant::now(), 0u64);
        m.sample(t, 0);
        feed(&mut m, &mut t, &mut total, 10, 24 * 60);
        assert!(m.samples.len() <= 17, "{}", m.samples.len());
    }
}
