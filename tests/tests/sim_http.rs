//! The simulator over HTTP: `firmware-sim run --protocol http` → the real
//! gateway's `POST /v1/readings` → the real sink. The simulator counts a
//! message as acked only on a 202, so every reading in its acked log must be in
//! the sink exactly once, a kill -9 of the gateway mid-stream included.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outpost_tests::{
    Gateway, GatewayOpts, Mosquitto, Sink, free_port, read_acked, run_sim, spawn_sim, wait_for,
    wait_sim,
};

const DRAIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "sim-http-token";

/// A gateway with its HTTP source on a free port, behind a token.
fn gateway(dir: &Path, broker: &Mosquitto, sink: &Sink) -> (Gateway, SocketAddr) {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut opts = GatewayOpts::new(broker.port, sink);
    opts.http_listen = Some(http);
    opts.http_extra = format!("token = \"{TOKEN}\"");
    (Gateway::start(dir, &opts).expect("gateway"), http)
}

fn sim_args(http: SocketAddr, token: &str, count: u32, rate: u32) -> Vec<String> {
    [
        "--protocol",
        "http",
        "--target",
        &format!("http://{http}"),
        "--token",
        token,
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
        "--devices",
        "6",
        "--max-inflight",
        "8",
        "--seed",
        "11",
        "--start-time",
        "2026-01-01T00:00:00Z",
        // Room for a gateway restart on a busy machine.
        "--connect-timeout",
        "60s",
        "--no-progress",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn summary(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("summary file");
    serde_json::from_str(&text).expect("summary JSON")
}

#[test]
fn every_reading_the_simulator_got_a_202_for_is_in_the_sink_exactly_once() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let (mut gw, http) = gateway(dir.path(), &broker, &sink);

    let summary_path = dir.path().join("summary.json");
    let mut args = sim_args(http, TOKEN, 300, 0);
    args.extend(["--summary-json".into(), summary_path.display().to_string()]);
    let acked = run_sim(dir.path(), &refs(&args)).unwrap();
    let s = summary(&summary_path);
    assert_eq!(s["protocol"], "http");
    assert_eq!(s["qos"], serde_json::Value::Null);
    assert_eq!(s["messages_acked"], 300, "{s:#}");
    assert_eq!(s["messages_rejected"], 0, "{s:#}");
    assert_eq!(acked.len() as u64, s["readings_acked"].as_u64().unwrap());

    let r = outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    assert_eq!(r.stored, r.acked, "nothing else was stored");
    assert_eq!(gw.metric("outpost_gateway_messages_acked_total"), 300.0);

    // A wrong token: every message is refused with 401, counted, not retried.
    let summary_path = dir.path().join("summary-401.json");
    let mut args = sim_args(http, "wrong", 5, 0);
    args.extend(["--summary-json".into(), summary_path.display().to_string()]);
    let refused = run_sim(dir.path(), &refs(&args)).unwrap();
    let s = summary(&summary_path);
    assert!(refused.is_empty(), "nothing refused is in the acked log");
    assert_eq!(
        (
            s["messages_rejected"].as_u64(),
            s["messages_acked"].as_u64()
        ),
        (Some(5), Some(0)),
        "{s:#}"
    );
    assert_eq!(
        gw.metric("outpost_gateway_http_requests_total{status=\"401\"}"),
        5.0,
        "one request per refused message"
    );
    assert_eq!(gw.terminate().unwrap(), Some(0));
}

#[test]
fn a_kill_9_of_the_gateway_mid_stream_loses_and_duplicates_nothing_the_simulator_counted() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let (mut gw, http) = gateway(dir.path(), &broker, &sink);

    let summary_path = dir.path().join("summary.json");
    let mut args = sim_args(http, TOKEN, 1500, 300);
    args.extend(["--summary-json".into(), summary_path.display().to_string()]);
    let (mut sim, acked_path) = spawn_sim(dir.path(), &refs(&args)).unwrap();
    wait_for(Duration::from_secs(60), "202s before the kill", || {
        (gw.metric("outpost_gateway_messages_acked_total") >= 300.0).then_some(())
    })
    .unwrap();
    gw.kill9();
    std::thread::sleep(Duration::from_millis(500));
    gw.up().unwrap();
    wait_sim(&mut sim, Duration::from_secs(180)).unwrap();

    let s = summary(&summary_path);
    assert_eq!(
        s["messages_acked"], 1500,
        "every message got its 202 in the end: {s:#}"
    );
    let acked = read_acked(&acked_path).unwrap();
    let r = outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    assert_eq!(r.stored, r.acked, "nothing else was stored");
    assert_eq!(gw.terminate().unwrap(), Some(0));
}
