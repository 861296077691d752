//! The CoAP source end to end, with real peers: libcoap's `coap-client-notls`
//! (Debian `libcoap3-bin`) and `firmware-sim run --protocol coap` → the real
//! gateway binary → the real sink. A 2.04 is the gateway's promise that the
//! readings are durable, so every reading that got one must be in the sink
//! exactly once, a kill -9 of the gateway mid-stream included.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_tests::{
    Gateway, GatewayOpts, Identity, Mosquitto, Sink, free_port, read_acked, spawn_sim, wait_for,
    wait_sim,
};

const DRAIN: Duration = Duration::from_secs(60);
/// 2026-01-01T00:00:00Z.
const BASE_SECS: i64 = 1_767_225_600;
const CLIENT: &str = "coap-client-notls";

/// A free UDP port on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A gateway with a `[coap]` source on a free UDP port (payload limit 8 KiB).
fn gateway(dir: &Path, broker: &Mosquitto, sink: &Sink) -> (Gateway, SocketAddr) {
    let coap = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut opts = GatewayOpts::new(broker.port, sink);
    opts.extra = format!("[coap]\nlisten = \"{coap}\"\nmax_payload_bytes = \"8 KiB\"\n");
    (Gateway::start(dir, &opts).expect("gateway"), coap)
}

/// What `coap-client` printed.
#[derive(Debug)]
struct Answer {
    ok: bool,
    out: String,
}

/// Runs `coap-client-notls` with `args` and the URI.
fn coap_client(args: &[&str], uri: &str) -> Answer {
    let out = Command::new(CLIENT)
        .args(args)
        .args(["-B", "30"])
        .arg(uri)
        .output()
        .unwrap_or_else(|e| panic!("{CLIENT} not runnable ({e}); apt-get install libcoap3-bin"));
    Answer {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A SenML JSON pack of `n` readings of `device`, one per second from `start`.
fn senml_pack(device: &str, start: i64, n: usize) -> (String, Vec<Identity>) {
    let records: Vec<String> = (0..n)
        .map(|i| {
            let base = if i == 0 {
                format!(r#""bn":"{device}/","bt":{start},"#)
            } else {
                String::new()
            };
            format!(r#"{{{base}"n":"temperature","t":{i},"v":{i}.5}}"#)
        })
        .collect();
    let ids = (0..n)
        .map(|i| {
            (
                device.to_owned(),
                "temperature".to_owned(),
                (start + i as i64) * 1_000_000_000,
            )
        })
        .collect();
    (format!("[{}]", records.join(",")), ids)
}

#[test]
fn coap_client_posts_reach_the_sink_exactly_once_and_errors_get_their_codes() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let (mut gw, coap) = gateway(dir.path(), &broker, &sink);
    let uri = format!("coap://{coap}/readings");
    let mut expected: HashSet<Identity> = HashSet::new();

    // SenML JSON inline (Content-Format 110).
    let (json, ids) = senml_pack("cpump-1", BASE_SECS, 3);
    let a = coap_client(&["-m", "post", "-t", "110", "-e", &json], &uri);
    assert!(a.ok && !a.out.contains("4."), "{a:?}");
    expected.extend(ids);

    // SenML CBOR from a file (Content-Format 112), to a per-device path.
    let readings: Vec<protocol::Reading> = (0..2)
        .map(|i| {
            protocol::Reading::new(
                "cpump-2",
                "flow",
                protocol::Timestamp((BASE_SECS + i) * 1_000_000_000),
                0.25 * i as f64,
            )
            .unwrap()
        })
        .collect();
    let cbor = dir.path().join("pack.cbor");
    std::fs::write(&cbor, protocol::senml::encode_cbor(&readings)).unwrap();
    let a = coap_client(
        &["-m", "post", "-t", "112", "-f", cbor.to_str().unwrap()],
        &format!("{uri}/cpump-2"),
    );
    assert!(a.ok && !a.out.contains("4."), "{a:?}");
    expected.extend(
        readings
            .iter()
            .map(|r| (r.device.clone(), r.channel.clone(), r.ts.0)),
    );

    // Block1: a pack of 150 readings (about 5 KB) in 64-byte blocks.
    let (big, ids) = senml_pack("cpump-3", BASE_SECS, 150);
    assert!(big.len() > 4000 && big.len() < 8 * 1024, "{}", big.len());
    let big_file = dir.path().join("big.json");
    std::fs::write(&big_file, &big).unwrap();
    let a = coap_client(
        &[
            "-m",
            "post",
            "-t",
            "110",
            "-b",
            "64",
            "-f",
            big_file.to_str().unwrap(),
        ],
        &uri,
    );
    assert!(a.ok && !a.out.contains("4."), "{a:?}");
    expected.extend(ids);

    // Wrong Content-Format (text/plain): 4.15, nothing stored.
    let a = coap_client(&["-m", "post", "-t", "0", "-e", &json], &uri);
    assert!(a.out.contains("4.15"), "{a:?}");
    // Over the 8 KiB limit: 4.13.
    let (huge, _) = senml_pack("cpump-4", BASE_SECS, 400);
    let huge_file = dir.path().join("huge.json");
    std::fs::write(&huge_file, &huge).unwrap();
    let a = coap_client(
        &["-m", "post", "-t", "110", "-f", huge_file.to_str().unwrap()],
        &uri,
    );
    assert!(a.out.contains("4.13"), "{a:?}");
    // Unknown resource and method: 4.04, 4.05.
    let a = coap_client(
        &["-m", "post", "-t", "110", "-e", &json],
        &format!("coap://{coap}/nope"),
    );
    assert!(a.out.contains("4.04"), "{a:?}");
    let a = coap_client(&["-m", "get"], &uri);
    assert!(a.out.contains("4.05"), "{a:?}");
    // Resource discovery.
    let a = coap_client(&["-m", "get"], &format!("coap://{coap}/.well-known/core"));
    assert!(a.ok, "{a:?}");
    assert!(
        a.out.contains("</readings>;rt=\"outpost.readings\""),
        "{a:?}"
    );

    let r = outpost_tests::assert_exactly_once(&sink, &expected, DRAIN, &gw);
    assert_eq!(r.stored, expected.len(), "nothing else was stored");
    let code = |c: &str| {
        gw.metric(&format!(
            "outpost_gateway_coap_responses_total{{code=\"{c}\"}}"
        ))
    };
    assert_eq!(code("2.04"), 3.0, "three POSTs stored");
    assert_eq!(code("4.15"), 1.0);
    assert!(code("4.13") >= 1.0);
    assert!(code("2.31") >= 10.0, "the 64-byte blocks were continued");
    assert!(gw.metric("outpost_gateway_coap_blocks_total") >= 10.0);
    assert_eq!(gw.metric("outpost_gateway_messages_acked_total"), 3.0);
    assert_eq!(gw.terminate().unwrap(), Some(0));
}

fn sim_args(coap: SocketAddr, count: u32, rate: u32, summary: &Path) -> Vec<String> {
    [
        "--protocol",
        "coap",
        "--target",
        &coap.to_string(),
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
        "--devices",
        "6",
        "--max-inflight",
        "8",
        "--seed",
        "13",
        "--start-time",
        "2026-01-01T00:00:00Z",
        // Room for a gateway restart on a busy machine.
        "--connect-timeout",
        "90s",
        "--drain-timeout",
        "90s",
        "--no-progress",
        "--summary-json",
        &summary.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn a_kill_9_of_the_gateway_mid_stream_loses_and_duplicates_nothing_the_simulator_got_a_2_04_for() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let (mut gw, coap) = gateway(dir.path(), &broker, &sink);

    let summary_path = dir.path().join("summary.json");
    let args = sim_args(coap, 1500, 300, &summary_path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut sim, acked_path) = spawn_sim(dir.path(), &args).unwrap();
    for kill in 1..=2 {
        let target = 300.0 * f64::from(kill);
        wait_for(Duration::from_secs(90), "2.04s before the kill", || {
            (gw.metric("outpost_gateway_messages_acked_total") >= 300.0).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e} (kill {kill}, target {target})\n{}", gw.log_tail(30)));
        gw.kill9();
        std::thread::sleep(Duration::from_millis(500));
        gw.up().unwrap();
    }
    wait_sim(&mut sim, Duration::from_secs(300)).unwrap();

    let text = std::fs::read_to_string(&summary_path).unwrap();
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["protocol"], "coap");
    assert_eq!(
        s["messages_acked"], 1500,
        "every message got its 2.04 in the end: {s:#}"
    );
    assert_eq!(s["messages_rejected"], 0, "{s:#}");
    let acked = read_acked(&acked_path).unwrap();
    assert_eq!(acked.len() as u64, s["readings_acked"].as_u64().unwrap());
    let r = outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    assert_eq!(r.stored, r.acked, "nothing else was stored");
    assert_eq!(gw.terminate().unwrap(), Some(0));
}
