//! The serial source end to end, over real pseudo-terminal pairs made by
//! `socat`: firmware-sim (or the test) writes lines to one end, the gateway
//! reads the other, the sink stores the readings.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_tests::{
    Gateway, GatewayOpts, Identity, Sink, Socat, assert_exactly_once, bin, free_port, run_sim,
    test_dir, wait_for,
};

const WAIT: Duration = Duration::from_secs(90);

/// One `[[serial]]` table.
fn port(name: &str, socat: &Socat, format: &str, device: Option<&str>) -> String {
    format!(
        "[[serial]]\nname = \"{name}\"\npath = \"{}\"\nformat = \"{format}\"\n{}\
         max_line_bytes = \"256 B\"\nreopen_min = \"50ms\"\nreopen_max = \"500ms\"\n",
        socat.gw.display(),
        device
            .map(|d| format!("device = \"{d}\"\n"))
            .unwrap_or_default()
    )
}

/// A gateway with the embedded broker (no MQTT traffic) and these serial ports.
fn start_gateway(dir: &Path, sink: &Sink, ports: &[String]) -> Gateway {
    let mut o = GatewayOpts::new(free_port(), sink);
    o.embedded_broker = true;
    o.extra = ports.concat();
    Gateway::start(dir, &o).unwrap()
}

fn wait_metric(gw: &Gateway, series: &str, what: &str, ok: impl Fn(f64) -> bool) {
    let res = wait_for(WAIT, what, || ok(gw.metric(series)).then_some(()));
    if let Err(e) = res {
        panic!("{e}: {series} = {}\n{}", gw.metric(series), gw.log_tail(40));
    }
}

fn connected(port: &str) -> String {
    format!("outpost_gateway_serial_connected{{port=\"{port}\"}}")
}

fn sim(dir: &Path, socat: &Socat, format: &str, args: &[&str]) -> HashSet<Identity> {
    let device = socat.sim.display().to_string();
    let mut all = vec![
        "--protocol",
        "serial",
        "--device",
        device.as_str(),
        "--serial-format",
        format,
        "--rate",
        "0",
        "--no-progress",
    ];
    all.extend_from_slice(args);
    run_sim(dir, &all).unwrap()
}

#[test]
fn every_format_arrives_exactly_once_through_a_pty() {
    let dir = test_dir();
    let d = dir.path();
    let mut sink = Sink::start(d, "gw-test", free_port()).unwrap();
    let senml = Socat::start(d, "senml").unwrap();
    let csv = Socat::start(d, "csv").unwrap();
    let sum = Socat::start(d, "sum").unwrap();
    let gw = start_gateway(
        d,
        &sink,
        &[
            port("senml", &senml, "senml", None),
            port("csv", &csv, "csv", Some("csv-0000")),
            port("sum", &sum, "checksummed", Some("sum-0000")),
        ],
    );
    for p in ["senml", "csv", "sum"] {
        wait_metric(&gw, &connected(p), "the port to be open", |v| v == 1.0);
    }
    let start = "2026-01-01T00:00:00Z";
    let mut acked = sim(
        d,
        &senml,
        "senml",
        &[
            "--devices",
            "3",
            "--count",
            "60",
            "--device-prefix",
            "sen-",
            "--start-time",
            start,
        ],
    );
    let n_senml = acked.len();
    let from_csv = sim(
        d,
        &csv,
        "csv",
        &[
            "--devices",
            "1",
            "--count",
            "40",
            "--device-prefix",
            "csv-",
            "--start-time",
            start,
        ],
    );
    let from_sum = sim(
        d,
        &sum,
        "checksummed",
        &[
            "--devices",
            "1",
            "--count",
            "40",
            "--device-prefix",
            "sum-",
            "--start-time",
            start,
        ],
    );
    // Every message is a pack of several channels; each is one csv line.
    assert!(n_senml >= 60 && from_csv.len() >= 40 && from_sum.len() >= 40);
    assert!(from_csv.iter().all(|(dev, ..)| dev == "csv-0000"));
    assert!(from_sum.iter().all(|(dev, ..)| dev == "sum-0000"));
    let expected = n_senml + from_csv.len() + from_sum.len();
    acked.extend(from_csv);
    acked.extend(from_sum);
    assert_eq!(acked.len(), expected, "the three runs share no identity");
    let r = assert_exactly_once(&sink, &acked, WAIT, &gw);
    assert_eq!(r.stored, expected, "nothing but the written readings");
    let m = gw.metrics().unwrap();
    let bad: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("outpost_gateway_serial_bad_frames_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(bad, 0.0, "no bad frame in clean runs");
    sink.kill9();
}

#[test]
fn the_gateway_reopens_a_device_that_vanished_and_came_back() {
    let dir = test_dir();
    let d = dir.path();
    let sink = Sink::start(d, "gw-test", free_port()).unwrap();
    let mut socat = Socat::start(d, "dev").unwrap();
    let gw = start_gateway(d, &sink, &[port("dev", &socat, "csv", Some("pump-0000"))]);
    let conn = connected("dev");
    let reconnects = "outpost_gateway_serial_reconnects_total{port=\"dev\"}";
    wait_metric(&gw, &conn, "the port to be open", |v| v == 1.0);
    let before = sim(
        d,
        &socat,
        "csv",
        &[
            "--devices",
            "1",
            "--count",
            "20",
            "--start-time",
            "2026-01-01T00:00:00Z",
        ],
    );
    assert_exactly_once(&sink, &before, WAIT, &gw);
    assert_eq!(gw.metric(reconnects), 0.0);

    // Unplugged: both ends of the pty pair disappear.
    socat.down().unwrap();
    wait_metric(&gw, &conn, "the port to be closed", |v| v == 0.0);
    // Let a few re-open attempts fail.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.metric(reconnects), 0.0);
    socat.up().unwrap();
    wait_metric(&gw, reconnects, "a reconnect", |v| v == 1.0);
    wait_metric(&gw, &conn, "the port to be open again", |v| v == 1.0);

    let after = sim(
        d,
        &socat,
        "csv",
        &[
            "--devices",
            "1",
            "--count",
            "20",
            "--start-time",
            "2026-01-02T00:00:00Z",
        ],
    );
    assert!(!after.is_empty() && after.is_disjoint(&before));
    let mut all = before;
    all.extend(after);
    let r = assert_exactly_once(&sink, &all, WAIT, &gw);
    assert_eq!(r.stored, all.len());
    // One log line per state change, however many re-open attempts failed.
    let log = std::fs::read_to_string(d.join("gateway.log")).unwrap();
    assert_eq!(log.matches("Serial device lost").count(), 1, "{log}");
    assert_eq!(log.matches("Serial device is back").count(), 1, "{log}");
    assert_eq!(
        log.matches("Cannot open the serial device").count(),
        0,
        "{log}"
    );
}

fn checksummed(payload: &str) -> String {
    let sum = payload.bytes().fold(0u8, |a, b| a ^ b);
    format!("{payload}*{sum:02X}")
}

#[test]
fn bad_frames_are_quarantined_by_reason_and_good_lines_around_them_stored() {
    let dir = test_dir();
    let d = dir.path();
    let sink = Sink::start(d, "gw-test", free_port()).unwrap();
    let socat = Socat::start(d, "bad").unwrap();
    let mut gw = start_gateway(
        d,
        &sink,
        &[port("bad", &socat, "checksummed", Some("sum-0000"))],
    );
    wait_metric(&gw, &connected("bad"), "the port to be open", |v| v == 1.0);

    let t = 1_767_225_600i64;
    let wrong = {
        let payload = format!("b,1.5,{}", t + 1);
        let sum = payload.bytes().fold(0u8, |a, b| a ^ b) ^ 0x5a;
        format!("{payload}*{sum:02X}")
    };
    // Good lines (LF, CRLF and CR endings) around each kind of bad frame.
    let text = [
        format!("{}\n", checksummed(&format!("a,1.5,{t}"))),
        format!("{wrong}\n"),
        format!("{}\r\n", checksummed(&format!("c,2.5,{}", t + 2))),
        format!("{}\n", "x".repeat(1000)),
        format!("{}\r", checksummed(&format!("d,3.5,{}", t + 3))),
        format!("{}\n", checksummed("e")),
        format!("{}\r\n", checksummed(&format!("f,NaN,{}", t + 5))),
        format!("g,1.5,{}\n", t + 6),
        format!("{}\n", checksummed(&format!("h,4.5,{}.25", t + 7))),
    ]
    .concat();
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(&socat.sim)
        .unwrap();
    dev.write_all(text.as_bytes()).unwrap();
    dev.flush().unwrap();

    let good: HashSet<Identity> = [("a", t * 1_000_000_000), ("c", (t + 2) * 1_000_000_000)]
        .into_iter()
        .chain([
            ("d", (t + 3) * 1_000_000_000),
            ("h", (t + 7) * 1_000_000_000 + 250_000_000),
        ])
        .map(|(c, ts)| ("sum-0000".to_owned(), c.to_owned(), ts))
        .collect();
    let r = assert_exactly_once(&sink, &good, WAIT, &gw);
    assert_eq!(r.stored, 4, "only the good lines");

    for reason in [
        "bad_checksum",
        "line_too_long",
        "field_count",
        "non_finite_value",
        "missing_checksum",
    ] {
        let series =
            format!("outpost_gateway_serial_bad_frames_total{{port=\"bad\",reason=\"{reason}\"}}");
        wait_metric(&gw, &series, reason, |v| v == 1.0);
    }
    for (reason, n) in [
        ("syntax", 3.0),
        ("too_large", 1.0),
        ("non_finite_value", 1.0),
    ] {
        let series = format!("outpost_gateway_quarantined_total{{reason=\"{reason}\"}}");
        wait_metric(&gw, &series, reason, |v| v == n);
    }
    assert_eq!(
        gw.metric("outpost_gateway_serial_lines_total{port=\"bad\"}"),
        9.0
    );

    // The quarantine itself (read while the gateway is stopped: it locks the outbox).
    assert_eq!(gw.terminate().unwrap(), Some(0));
    let out = Command::new(bin("outpost-gateway"))
        .args(["quarantine", "list", "--json", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.len(), 5, "{entries:#?}");
    assert!(entries.iter().all(|e| e["origin"] == "serial:bad"));
    let details: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}", e["reason"], e["detail"]))
        .collect();
    for needle in [
        "bad_checksum",
        "missing_checksum",
        "field_count",
        "too_large",
        "non_finite_value",
    ] {
        assert!(
            details.iter().any(|d| d.contains(needle)),
            "{needle} not in {details:#?}"
        );
    }
    let long = entries.iter().find(|e| e["reason"] == "too_large").unwrap();
    assert_eq!(long["payload_len"], 1000);
    assert_eq!(long["payload_kept"], 256, "only the bounded prefix is kept");
}
