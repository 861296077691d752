//! Black-box tests: the real binary against a private Mosquitto.
//!
//! Each test starts its own `mosquitto` on a free port with a temporary config.
//! The `mosquitto` binary is required (CI installs it); without it the tests fail
//! with a message saying so.
#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{DecodeContext, DecodeLimits, PayloadFormat, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-firmware-sim");

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_broker() -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        // No queue limit: the default (1000) drops messages for a subscriber that
        // falls behind on a busy machine, which would fail the counts below.
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"),
    )
    .unwrap();
    let child = match Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            panic!("these tests need the `mosquitto` binary on PATH (apt install mosquitto): {e}")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        child,
        port,
        _dir: dir,
    }
}

/// Subscribes to `topic` and collects payloads until `stop` resolves (after SUBACK).
async fn subscriber(
    port: u16,
    topic: &str,
) -> (
    tokio::task::JoinHandle<Vec<Vec<u8>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let mut o = MqttOptions::new(format!("test-sub-{port}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut got = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => got.push(p.payload.to_vec()),
                    Ok(_) => {}
                    Err(e) => panic!("subscriber lost its broker: {e}"),
                },
            }
        }
        got
    });
    (task, stop_tx)
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn run_sim(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_run_at_qos1_acks_every_message_and_the_acked_log_matches_what_subscribers_got() {
    let broker = start_broker();
    let port = broker.port.to_string();
    let (sub, stop) = subscriber(broker.port, "outpost/sensors/#").await;
    let dir = tempfile::tempdir().unwrap();
    let acked = dir.path().join("acked.csv");
    let summary = dir.path().join("summary.json");
    let truth = dir.path().join("truth.csv");
    let out = run_sim(&[
        "run",
        "--broker",
        &format!("127.0.0.1:{port}"),
        "--devices",
        "4",
        "--rate",
        "500",
        "--count",
        "200",
        "--qos",
        "1",
        "--seed",
        "11",
        "--anomaly-rate",
        "0.05",
        "--acked-log",
        acked.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
        "--ground-truth",
        truth.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("acked 200"), "{stdout}");

    // The acked log: 200 messages × 5 channels, every identity once.
    let lines = read_lines(&acked);
    assert_eq!(lines.len(), 200 * 5);
    let acked_ids: HashSet<(String, String, i64, String)> = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 4, "bad acked line {l}");
            (
                f[0].to_owned(),
                f[1].to_owned(),
                f[2].parse().unwrap(),
                f[3].to_owned(),
            )
        })
        .collect();
    assert_eq!(
        acked_ids.len(),
        1000,
        "duplicate identities in the acked log"
    );

    // The summary agrees.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["messages_published"], 200);
    assert_eq!(s["messages_sent"], 200);
    assert_eq!(s["messages_acked"], 200);
    assert_eq!(s["messages_lost"], 0);
    assert_eq!(s["messages_unconfirmed"], 0);
    assert_eq!(s["readings_acked"], 1000);
    assert_eq!(s["channels_per_device"], 5);
    assert_eq!(s["latency"]["count"], 200);
    assert!(s["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(s["achieved_rate_msgs_per_s"].as_f64().unwrap() > 0.0);

    // Ground truth: a header and as many lines as anomalies injected.
    let truth_lines = read_lines(&truth);
    assert_eq!(
        truth_lines[0],
        "device,channel,start_ns,end_ns,kind,magnitude"
    );
    assert_eq!(
        truth_lines.len() as u64 - 1,
        s["anomalies_injected"].as_u64().unwrap()
    );

    // What a subscriber decoded is exactly what the acked log says.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    let payloads = sub.await.unwrap();
    assert_eq!(payloads.len(), 200);
    let ctx = DecodeContext::new(Timestamp::now());
    let limits = DecodeLimits::default();
    let received: HashSet<(String, String, i64, String)> = payloads
        .iter()
        .flat_map(|p| PayloadFormat::SenmlJson.decode(p, &ctx, &limits).unwrap())
        .map(|r| (r.device, r.channel, r.ts.0, r.value.to_string()))
        .collect();
    assert_eq!(received, acked_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_publishes_one_reading_per_message() {
    let broker = start_broker();
    let (sub, stop) = subscriber(broker.port, "sim/#").await;
    let dir = tempfile::tempdir().unwrap();
    let acked = dir.path().join("acked.csv");
    let out = run_sim(&[
        "run",
        "--broker",
        &format!("127.0.0.1:{}", broker.port),
        "--devices",
        "2",
        "--rate",
        "0",
        "--count",
        "53",
        "--single",
        "--topic-prefix",
        "sim/x",
        "--acked-log",
        acked.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_lines(&acked).len(), 53);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    let payloads = sub.await.unwrap();
    assert_eq!(payloads.len(), 53);
    let ctx = DecodeContext::new(Timestamp::now());
    for p in payloads {
        assert_eq!(
            PayloadFormat::SenmlJson
                .decode(&p, &ctx, &DecodeLimits::default())
                .unwrap()
                .len(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_broker_reports_a_positive_rate() {
    let broker = start_broker();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = run_sim(&[
        "bench-broker",
        "--broker",
        &format!("127.0.0.1:{}", broker.port),
        "--count",
        "2000",
        "--qos",
        "1",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("msg/s"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["received"], 2000);
    assert!(r["rate_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["latency"]["p99_ms"].as_f64().unwrap() >= r["latency"]["p50_ms"].as_f64().unwrap());
}

#[tokio::test]
async fn an_unreachable_broker_fails_within_the_timeout_with_a_clear_message() {
    let port = free_port(); // nothing listens here
    let started = Instant::now();
    let out = run_sim(&[
        "run",
        "--broker",
        &format!("127.0.0.1:{port}"),
        "--count",
        "5",
        "--connect-timeout",
        "1s",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not connect to 127.0.0.1"),
        "{stderr}"
    );
}

#[test]
fn invalid_arguments_exit_with_ex_config_and_name_every_problem() {
    let out = Command::new(BIN)
        .args(["run", "--count", "5", "--qos", "7", "--devices", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--qos") && stderr.contains("--devices"),
        "{stderr}"
    );
}
