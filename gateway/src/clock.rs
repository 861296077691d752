//! Clock quality: is the gateway's wall clock synchronised, and how to correct
//! the timestamps it took while it was not.
//!
//! A Raspberry Pi has no real-time clock: it boots in 1970, or at the time
//! `fake-hwclock` saved at the last shutdown, and keeps that until NTP
//! synchronises. Readings the gateway times itself (no timestamp from the
//! sensor, flagged `TIME_FROM_RECEIVE`) would carry that wrong time.
//!
//! **Detection** ([`ClockMonitor::now`]), without unsafe code:
//! - a floor: a wall clock earlier than [`ClockConfig::not_before`] (default:
//!   the later of [`RELEASE_FLOOR_SECS`] and `SOURCE_DATE_EPOCH` at build time)
//!   is unsynchronised, whatever else says;
//! - `sync_check = "timesyncd"`: systemd-timesyncd creates
//!   `/run/systemd/timesync/synchronized` once it has synchronised the clock;
//! - `"auto"` (default): that flag when timesyncd runs (its directory
//!   `/run/systemd/timesync` exists), otherwise the floor alone;
//! - `"floor"`: the floor alone; `"assume_synced"`: always synchronised.
//!
//! The kernel's own flag (`adjtimex(2)`, `STA_UNSYNC`, which chrony and ntpd
//! maintain) is not read: neither `nix` nor `rustix` exposes `adjtimex`, and
//! calling it through `libc` needs unsafe code, which this workspace forbids.
//! With chrony or ntpd, use `"floor"` or `"assume_synced"`.
//!
//! **Stamping.** While unsynchronised, a reading the gateway timed gets
//! `CLOCK_UNSYNCED` and a [`ClockStamp`]: the boot id
//! (`/proc/sys/kernel/random/boot_id`) and `CLOCK_BOOTTIME` at the instant of
//! its timestamp. It is stored as an outbox-local `OutboxItem::ClockPending`.
//!
//! **Correction** happens in the uplink, when a batch is built from the
//! outbox ([`resolve`]): if the clock is now synchronised and the stamp is of
//! the current boot, `ts = monotonic + (wall − monotonic)` measured now, the
//! reading is flagged `CLOCK_CORRECTED` and `CLOCK_UNSYNCED` is cleared. A stamp
//! of an earlier boot cannot be mapped (`CLOCK_BOOTTIME` restarted) and is
//! flagged `CLOCK_UNCORRECTABLE`. A stamp of the current boot while the clock is
//! still unsynchronised leaves as it is (flagged `CLOCK_UNSYNCED`): data is not
//! held back waiting for NTP.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::batch::OutboxItem;
use protocol::{ClockStamp, Quality, Reading, Timestamp};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::ConfigProblem;

/// The flag file systemd-timesyncd creates once it has synchronised the clock.
pub const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";
/// Where Linux publishes the id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// 2026-01-01T00:00:00Z: no clock showing an earlier time can be right for
/// this release. Raised to `SOURCE_DATE_EPOCH` when the build sets it.
pub const RELEASE_FLOOR_SECS: i64 = 1_767_225_600;

/// How the gateway decides that its clock is synchronised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncCheck {
    /// systemd-timesyncd's flag when timesyncd runs, otherwise the floor alone.
    #[default]
    Auto,
    /// systemd-timesyncd's flag file (and the floor).
    Timesyncd,
    /// Only the floor (`not_before`).
    Floor,
    /// Always synchronised (a gateway with an RTC, or chrony you trust).
    AssumeSynced,
}

/// `[clock]`: clock-quality detection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// `auto` | `timesyncd` | `floor` | `assume_synced` (see [`SyncCheck`]).
    pub sync_check: SyncCheck,
    /// The flag file systemd-timesyncd creates once synchronised.
    pub timesyncd_flag: PathBuf,
    /// A wall clock before this instant (RFC 3339) is unsynchronised.
    /// Default: the later of 2026-01-01 and the build's `SOURCE_DATE_EPOCH`.
    #[serde(with = "humantime_serde")]
    pub not_before: Option<SystemTime>,
    /// How often the synchronisation state is looked up again (the floor is
    /// checked on every reading).
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            sync_check: SyncCheck::Auto,
            timesyncd_flag: PathBuf::from(TIMESYNCD_FLAG),
            not_before: None,
            recheck_interval: Duration::from_secs(1),
        }
    }
}

impl ClockConfig {
    /// Adds every problem of `[clock]` to `problems`, keyed under `key`.
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        if self.recheck_interval > Duration::from_secs(3600) {
            problems.push(ConfigProblem {
                key: format!("{key}.recheck_interval"),
                message: "must be at most 1h".into(),
            });
        }
        if self.timesyncd_flag.as_os_str().is_empty() {
            problems.push(ConfigProblem {
                key: format!("{key}.timesyncd_flag"),
                message: "is empty".into(),
            });
        }
    }

    /// The floor in force: `not_before`, or the release/build floor.
    pub fn floor(&self) -> Timestamp {
        match self.not_before {
            Some(t) => system_time_to_ts(t),
            None => build_floor(),
        }
    }
}

fn system_time_to_ts(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
    }
}

/// The later of [`RELEASE_FLOOR_SECS`] and `SOURCE_DATE_EPOCH` at build time.
pub fn build_floor() -> Timestamp {
    let built = option_env!("SOURCE_DATE_EPOCH")
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    Timestamp(RELEASE_FLOOR_SECS.max(built).saturating_mul(1_000_000_000))
}

/// Where the monitor gets time and synchronisation evidence from. The system
/// implementation is [`SystemClock`]; tests inject [`ManualClock`].
pub trait ClockSource: Send + Sync + fmt::Debug {
    /// The wall clock.
    fn wall(&self) -> Timestamp;
    /// A clock that never steps and counts suspend (`CLOCK_BOOTTIME`), in ns.
    fn monotonic_ns(&self) -> i64;
    /// The id of the current boot.
    fn boot_id(&self) -> String;
    /// What an external authority says about synchronisation under `check`:
    /// `Some(synced)`, or `None` when there is no one to ask.
    fn sync_evidence(&self, check: SyncCheck) -> Option<bool>;
}

/// A shared source (a test keeps a handle on the clock it gave the monitor).
impl<T: ClockSource + ?Sized> ClockSource for std::sync::Arc<T> {
    fn wall(&self) -> Timestamp {
        (**self).wall()
    }
    fn monotonic_ns(&self) -> i64 {
        (**self).monotonic_ns()
    }
    fn boot_id(&self) -> String {
        (**self).boot_id()
    }
    fn sync_evidence(&self, check: SyncCheck) -> Option<bool> {
        (**self).sync_evidence(check)
    }
}

/// The real clocks of a Linux machine.
#[derive(Debug)]
pub struct SystemClock {
    boot_id: String,
    timesyncd_flag: PathBuf,
    #[cfg(not(target_os = "linux"))]
    started: Instant,
}

impl SystemClock {
    pub fn new(cfg: &ClockConfig) -> Self {
        SystemClock {
            boot_id: read_boot_id(Path::new(BOOT_ID_PATH)),
            timesyncd_flag: cfg.timesyncd_flag.clone(),
            #[cfg(not(target_os = "linux"))]
            started: Instant::now(),
        }
    }
}

/// The boot id, or a random per-process id when the file is unreadable (then
/// stamps can be corrected only by the same process).
fn read_boot_id(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => format!("process:{:016x}", rand::random::<u64>()),
    }
}

impl ClockSource for SystemClock {
    fn wall(&self) -> Timestamp {
        Timestamp::now()
    }

    #[cfg(target_os = "linux")]
    fn monotonic_ns(&self) -> i64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        t.tv_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec)
    }

    #[cfg(not(target_os = "linux"))]
    fn monotonic_ns(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }

    fn sync_evidence(&self, check: SyncCheck) -> Option<bool> {
        match check {
            SyncCheck::Timesyncd => Some(self.timesyncd_flag.exists()),
            SyncCheck::Auto => {
                let running = self.timesyncd_flag.parent().is_some_and(Path::is_dir);
                running.then(|| self.timesyncd_flag.exists())
            }
            SyncCheck::Floor => None,
            SyncCheck::AssumeSynced => Some(true),
        }
    }
}

/// A clock set by hand, for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<ManualState>,
}

#[derive(Debug, Clone)]
struct ManualState {
    wall: Timestamp,
    monotonic_ns: i64,
    boot_id: String,
    evidence: Option<bool>,
}

impl ManualClock {
    /// A clock at `wall`, monotonic 0, in boot `boot_id`, with no evidence.
    pub fn new(wall: Timestamp, boot_id: &str) -> Self {
        ManualClock {
            state: Mutex::new(ManualState {
                wall,
                monotonic_ns: 0,
                boot_id: boot_id.to_owned(),
                evidence: None,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ManualState) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Both clocks move on by `d`.
    pub fn advance(&self, d: Duration) {
        let n = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.with(|s| {
            s.wall = Timestamp(s.wall.0.saturating_add(n));
            s.monotonic_ns = s.monotonic_ns.saturating_add(n);
        });
    }

    /// The wall clock jumps to `wall` (an NTP step); monotonic time does not.
    pub fn step_wall(&self, wall: Timestamp) {
        self.with(|s| s.wall = wall);
    }

    /// What [`ClockSource::sync_evidence`] answers.
    pub fn set_evidence(&self, evidence: Option<bool>) {
        self.with(|s| s.evidence = evidence);
    }

    /// A reboot: monotonic time restarts at 0 under a new boot id.
    pub fn reboot(&self, boot_id: &str, wall: Timestamp) {
        self.with(|s| {
            s.boot_id = boot_id.to_owned();
            s.monotonic_ns = 0;
            s.wall = wall;
        });
    }
}

impl ClockSource for ManualClock {
    fn wall(&self) -> Timestamp {
        self.with(|s| s.wall)
    }
    fn monotonic_ns(&self) -> i64 {
        self.with(|s| s.monotonic_ns)
    }
    fn boot_id(&self) -> String {
        self.with(|s| s.boot_id.clone())
    }
    fn sync_evidence(&self, _check: SyncCheck) -> Option<bool> {
        self.with(|s| s.evidence)
    }
}

/// One look at the clocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockNow {
    pub wall: Timestamp,
    pub monotonic_ns: i64,
    pub synced: bool,
}

/// How to map monotonic stamps of one boot to wall time: valid while the
/// clock is synchronised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub boot_id: String,
    /// wall − monotonic, in nanoseconds.
    pub offset_ns: i64,
}

/// Decides whether the clock is synchronised, caches the lookup, logs changes.
#[derive(Debug)]
pub struct ClockMonitor {
    source: Box<dyn ClockSource>,
    check: SyncCheck,
    floor: Timestamp,
    recheck: Duration,
    /// When the evidence was last looked up, and what it said.
    cached: Mutex<Option<(Instant, Option<bool>)>>,
    /// The last state logged (None before the first look).
    last_synced: Mutex<Option<bool>>,
}

impl ClockMonitor {
    pub fn new(cfg: &ClockConfig, source: Box<dyn ClockSource>) -> Self {
        ClockMonitor {
            source,
            check: cfg.sync_check,
            floor: cfg.floor(),
            recheck: cfg.recheck_interval,
            cached: Mutex::new(None),
            last_synced: Mutex::new(None),
        }
    }

    /// The monitor of this machine's clocks.
    pub fn system(cfg: &ClockConfig) -> Self {
        Self::new(cfg, Box::new(SystemClock::new(cfg)))
    }

    pub fn boot_id(&self) -> String {
        self.source.boot_id()
    }

    fn evidence(&self) -> Option<bool> {
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match *c {
            Some((at, e)) if at.elapsed() < self.recheck => e,
            _ => {
                let e = self.source.sync_evidence(self.check);
                *c = Some((Instant::now(), e));
                e
            }
        }
    }

    /// The clocks now, and whether the wall clock is synchronised.
    pub fn now(&self) -> ClockNow {
        let wall = self.source.wall();
        let monotonic_ns = self.source.monotonic_ns();
        let synced = match self.check {
            SyncCheck::AssumeSynced => true,
            _ => wall >= self.floor && self.evidence().unwrap_or(true),
        };
        let mut last = self.last_synced.lock().unwrap_or_else(|p| p.into_inner());
        if *last != Some(synced) {
            if synced {
                info!(wall = %wall, check = ?self.check, "Clock synchronised.");
            } else {
                warn!(
                    wall = %wall,
                    floor = %self.floor,
                    check = ?self.check,
                    "Clock not synchronised; readings the gateway times are flagged and stamped for correction."
                );
            }
            *last = Some(synced);
        }
        ClockNow {
            wall,
            monotonic_ns,
            synced,
        }
    }

    /// The stamp of a timestamp `ts` taken by this (unsynchronised) wall clock:
    /// the monotonic time at that instant, assuming the wall clock did not
    /// step between `ts` and `now` (receive → ingest is milliseconds).
    pub fn stamp(&self, ts: Timestamp, now: &ClockNow) -> ClockStamp {
        let behind = now.wall.0.saturating_sub(ts.0);
        ClockStamp {
            boot_id: self.boot_id(),
            monotonic_ns: now.monotonic_ns.saturating_sub(behind),
        }
    }

    /// The correction in force now: `Some` only while synchronised.
    pub fn correction(&self) -> Option<Correction> {
        let now = self.now();
        now.synced.then(|| Correction {
            boot_id: self.boot_id(),
            offset_ns: now.wall.0.saturating_sub(now.monotonic_ns),
        })
    }
}

/// What [`resolve`] did to one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A plain reading; untouched.
    Plain,
    /// Corrected from its monotonic stamp (`CLOCK_CORRECTED`).
    Corrected,
    /// Of an earlier boot: cannot be corrected (`CLOCK_UNCORRECTABLE`).
    Uncorrectable,
    /// Of this boot, but the clock is still unsynchronised: sent as it is.
    StillUnsynced,
}

/// Turns an outbox item into what may leave the gateway: a plain reading,
/// corrected when `correction` (the clock is synchronised) covers its boot.
pub fn resolve(
    item: OutboxItem,
    correction: Option<&Correction>,
    current_boot: &str,
) -> (OutboxItem, Resolution) {
    let (mut reading, clock) = match item {
        OutboxItem::ClockPending { reading, clock } => (reading, clock),
        plain => return (plain, Resolution::Plain),
    };
    let resolution = match correction {
        Some(c) if c.boot_id == clock.boot_id => {
            correct(&mut reading, clock.monotonic_ns, c.offset_ns);
            Resolution::Corrected
        }
        _ if clock.boot_id != current_boot => {
            reading.quality |= Quality::CLOCK_UNCORRECTABLE | Quality::CLOCK_UNSYNCED;
            Resolution::Uncorrectable
        }
        _ => {
            reading.quality |= Quality::CLOCK_UNSYNCED;
            Resolution::StillUnsynced
        }
    };
    (OutboxItem::Reading(reading), resolution)
}

fn correct(reading: &mut Reading, monotonic_ns: i64, offset_ns: i64) {
    reading.ts = Timestamp(monotonic_ns.saturating_add(offset_ns));
    reading.quality.remove(Quality::CLOCK_UNSYNCED);
    reading.quality |= Quality::CLOCK_CORRECTED;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn monitor(check: SyncCheck, clock: ManualClock) -> ClockMonitor {
        let cfg = ClockConfig {
            sync_check: check,
            recheck_interval: Duration::ZERO,
            ..Default::default()
        };
        ClockMonitor::new(&cfg, Box::new(clock))
    }

    #[test]
    fn a_clock_before_the_floor_is_unsynchronised_whatever_the_evidence_says() {
        let c = ManualClock::new(Timestamp(5 * SEC), "b1");
        c.set_evidence(Some(true));
        let m = monitor(SyncCheck::Auto, c);
        assert!(!m.now().synced);
        let c = ManualClock::new(Timestamp(5 * SEC), "b1");
        assert!(
            monitor(SyncCheck::AssumeSynced, c).now().synced,
            "assume_synced trusts the clock"
        );
    }

    #[test]
    fn after_the_floor_the_evidence_decides_and_no_evidence_means_synchronised() {
        let wall = Timestamp((RELEASE_FLOOR_SECS + 100) * SEC);
        for (evidence, synced) in [(None, true), (Some(true), true), (Some(false), false)] {
            let c = ManualClock::new(wall, "b1");
            c.set_evidence(evidence);
            assert_eq!(monitor(SyncCheck::Auto, c).now().synced, synced);
        }
    }

    #[test]
    fn the_system_clock_reads_the_timesyncd_flag_file() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("timesync").join("synchronized");
        let cfg = ClockConfig {
            timesyncd_flag: flag.clone(),
            ..Default::default()
        };
        let c = SystemClock::new(&cfg);
        assert_eq!(
            c.sync_evidence(SyncCheck::Auto),
            None,
            "timesyncd not running"
        );
        assert_eq!(c.sync_evidence(SyncCheck::Timesyncd), Some(false));
        std::fs::create_dir(flag.parent().unwrap()).unwrap();
        assert_eq!(c.sync_evidence(SyncCheck::Auto), Some(false));
        std::fs::write(&flag, b"").unwrap();
        assert_eq!(c.sync_evidence(SyncCheck::Auto), Some(true));
        assert_eq!(c.sync_evidence(SyncCheck::Floor), None);
        assert!(c.monotonic_ns() > 0);
        assert!(!c.boot_id().is_empty());
    }

    #[test]
    fn a_missing_boot_id_file_gives_a_per_process_id() {
        let id = read_boot_id(Path::new("/nonexistent/boot_id"));
        assert!(id.starts_with("process:"), "{id}");
    }

    #[test]
    fn stamps_map_back_to_the_true_time_after_the_clock_steps() {
        // Booted in 1970 + 10 s; monotonic 10 s.
        let c = ManualClock::new(Timestamp(10 * SEC), "boot-a");
        c.advance(Duration::from_secs(10));
        let m = monitor(SyncCheck::Floor, c);
        let now = m.now();
        assert!(!now.synced);
        // A reading received 2 s ago by the wrong wall clock.
        let ts = Timestamp(now.wall.0 - 2 * SEC);
        let stamp = m.stamp(ts, &now);
        assert_eq!(stamp.monotonic_ns, now.monotonic_ns - 2 * SEC);
        assert_eq!(stamp.boot_id, "boot-a");
    }

    #[test]
    fn resolve_corrects_this_boot_flags_an_earlier_boot_and_leaves_plain_readings() {
        let r = Reading::new("d", "c", Timestamp(20 * SEC), 1.0).unwrap();
        let mut pending = r.clone();
        pending.quality = Quality::TIME_FROM_RECEIVE | Quality::CLOCK_UNSYNCED;
        let item = |boot: &str| OutboxItem::ClockPending {
            reading: pending.clone(),
            clock: ClockStamp {
                boot_id: boot.into(),
                monotonic_ns: 18 * SEC,
            },
        };
        let corr = Correction {
            boot_id: "now".into(),
            offset_ns: 1_800_000_000 * SEC,
        };
        let (out, how) = resolve(item("now"), Some(&corr), "now");
        assert_eq!(how, Resolution::Corrected);
        assert_eq!(out.reading().unwrap().ts, Timestamp(1_800_000_018 * SEC));
        assert_eq!(
            out.reading().unwrap().quality,
            Quality::TIME_FROM_RECEIVE | Quality::CLOCK_CORRECTED
        );
        let (out, how) = resolve(item("old"), Some(&corr), "now");
        assert_eq!(how, Resolution::Uncorrectable);
        assert_eq!(
            out.reading().unwrap().ts,
            Timestamp(20 * SEC),
            "left as it was"
        );
        assert!(
            out.reading()
                .unwrap()
                .quality
                .contains(Quality::CLOCK_UNCORRECTABLE | Quality::CLOCK_UNSYNCED)
        );
        let (out, how) = resolve(item("now"), None, "now");
        assert_eq!(how, Resolution::StillUnsynced);
        assert!(matches!(out, OutboxItem::Reading(_)));
        let (out, how) = resolve(OutboxItem::Reading(r.clone()), Some(&corr), "now");
        assert_eq!((out, how), (OutboxItem::Reading(r), Resolution::Plain));
    }

    #[test]
    fn validation_reports_bad_keys() {
        let cfg = ClockConfig {
            recheck_interval: Duration::from_secs(7200),
            timesyncd_flag: PathBuf::new(),
            ..Default::default()
        };
        let mut p = Vec::new();
        cfg.validate("clock", &mut p);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["clock.recheck_interval", "clock.timesyncd_flag"]);
    }
}
