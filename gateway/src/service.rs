//! systemd integration via sd_notify: `READY=1` once the sources listen,
//! `STOPPING=1` when the drain starts, and `WATCHDOG=1` pings at half the
//! unit's `WatchdogSec` while the runtime schedules tasks and the ingest stage
//! is alive — a wedged runtime or a dead ingest gets the service restarted.
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "Could not notify systemd.");
    }
}

/// Startup is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The drain has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Starts the watchdog pinger if the unit asked for one (`WATCHDOG_USEC`).
/// Pings stop — and systemd restarts the service — when `alive` turns false
/// or when the runtime stops scheduling this task.
pub fn spawn_watchdog(alive: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()? / 2;
    debug!(?period, "systemd watchdog enabled.");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if !alive.load(Ordering::Acquire) {
                warn!("Ingest stage is not running; no longer feeding the systemd watchdog.");
                return;
            }
            send(&[NotifyState::Watchdog]);
        }
    }))
}
