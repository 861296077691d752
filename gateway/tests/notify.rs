#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is a failed test.
//! systemd notifications from the real binary, read from a notify socket the
//! test owns (as systemd would provide with Type=notify and WatchdogSec=).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Collects notification lines until `want` has been seen or the timeout passes.
fn wait_for(sock: &UnixDatagram, want: &str, timeout: Duration, seen: &mut Vec<String>) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_feeds_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"gw-notify\"\n[storage]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [uplink]\nurl = \"http://127.0.0.1:{}\"\ntoken = \"t\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("outbox").display(),
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let ready = wait_for(&sock, "READY=1", Duration::from_secs(15), &mut seen);
    let mut pings = 0;
    if ready {
        for _ in 0..3 {
            if wait_for(&sock, "WATCHDOG=1", Duration::from_secs(2), &mut seen) {
                pings += 1;
            }
        }
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let stopping = wait_for(&sock, "STOPPING=1", Duration::from_secs(10), &mut seen);
    let status = child.wait().unwrap();
    assert!(ready, "no READY=1; got {seen:?}");
    assert_eq!(
        pings, 3,
        "the watchdog should be fed every 150 ms; got {seen:?}"
    );
    assert!(stopping, "no STOPPING=1; got {seen:?}");
    assert_eq!(status.code(), Some(0));
}
