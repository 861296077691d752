//! The spine, end to end: simulator → MQTT broker → gateway → cloud sink,
//! with real processes, a real Mosquitto, kills and outages. Every test counts
//! what the broker acknowledged to the simulator and what the sink stored:
//! acked-but-missing and duplicates must both be 0.

use std::time::Duration;

use outpost_tests::{
    Gateway, GatewayOpts, Mosquitto, Sink, free_port, reconcile, run_sim, spawn_sim, wait_for,
    wait_sim,
};

const DRAIN: Duration = Duration::from_secs(60);

fn sim_args(port: u16, devices: u32, rate: u32, count: u32, seed: u32) -> Vec<String> {
    vec![
        "--broker".into(),
        format!("127.0.0.1:{port}"),
        "--devices".into(),
        devices.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--count".into(),
        count.to_string(),
        "--qos".into(),
        "1".into(),
        "--seed".into(),
        seed.to_string(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn every_reading_acked_by_mosquitto_arrives_in_the_sink_exactly_once() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut gw = Gateway::start(dir.path(), &GatewayOpts::new(broker.port, &sink)).unwrap();

    let acked = run_sim(dir.path(), &refs(&sim_args(broker.port, 10, 1000, 2000, 1))).unwrap();
    assert_eq!(
        acked.len(),
        2000 * 5,
        "the simulator should get a PUBACK for every message"
    );
    let r = outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    assert_eq!(r.stored, r.acked, "nothing else was stored");

    let m = gw.metrics().unwrap();
    assert_eq!(m.get("outpost_gateway_messages_acked_total"), Some(&2000.0));
    let fsyncs = m["outpost_gateway_fsyncs_total"];
    assert!(
        (1.0..2000.0).contains(&fsyncs),
        "group commit should batch messages per fsync, got {fsyncs} fsyncs"
    );
    assert_eq!(
        gw.terminate().unwrap(),
        Some(0),
        "SIGTERM should drain and exit 0"
    );
}

#[test]
fn every_reading_acked_by_the_embedded_broker_arrives_in_the_sink_exactly_once() {
    let dir = outpost_tests::test_dir();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(free_port(), &sink);
    opts.embedded_broker = true;
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();

    let acked = run_sim(
        dir.path(),
        &refs(&sim_args(opts.mqtt_port, 10, 1000, 2000, 2)),
    )
    .unwrap();
    assert_eq!(acked.len(), 2000 * 5);
    outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    assert_eq!(
        gw.metric("outpost_gateway_messages_acked_total"),
        2000.0,
        "the gateway acked every message to rumqttd in order"
    );
    assert_eq!(gw.terminate().unwrap(), Some(0));
}

#[test]
fn kill_9_of_the_gateway_mid_stream_loses_and_duplicates_nothing() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    // A 4 MiB cap makes the outbox log's segments 256 KiB: the ~4.5 MB of this
    // run fill and delete many of them, so kills land around segment changes.
    opts.max_outbox = "4 MiB";
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();

    // ~10 s of traffic; the gateway is killed with SIGKILL four times meanwhile.
    let (mut sim, acked_log) = spawn_sim(
        dir.path(),
        &refs(&sim_args(broker.port, 20, 1000, 10_000, 3)),
    )
    .unwrap();
    let mut kills = 0;
    for pause in [1200u64, 1700, 900, 2100] {
        std::thread::sleep(Duration::from_millis(pause));
        gw.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(300));
        gw.up().unwrap();
    }
    wait_sim(&mut sim, Duration::from_secs(120)).unwrap();
    let acked = outpost_tests::read_acked(&acked_log).unwrap();
    assert_eq!(acked.len(), 10_000 * 5);
    let r = reconcile(&sink, &acked, DRAIN).unwrap();
    eprintln!("after {kills} kill -9: {r:?}");
    assert_eq!(
        r.missing,
        0,
        "acked by the broker but lost: {r:?}\n{}",
        gw.log_tail(40)
    );
    assert_eq!(r.duplicates, 0, "{r:?}");
    assert_eq!(r.stored, r.acked);
}

#[test]
fn a_sink_outage_is_drained_afterwards_without_loss_or_duplicates() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let mut sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let gw = Gateway::start(dir.path(), &GatewayOpts::new(broker.port, &sink)).unwrap();

    let (mut sim, acked_log) =
        spawn_sim(dir.path(), &refs(&sim_args(broker.port, 10, 1000, 6000, 4))).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sink.kill9();
    // While the sink is down the gateway keeps accepting into its outbox.
    let acked_before = gw.metric("outpost_gateway_messages_acked_total");
    std::thread::sleep(Duration::from_secs(3));
    let acked_during = gw.metric("outpost_gateway_messages_acked_total");
    assert!(
        acked_during > acked_before,
        "the gateway should keep acking into its outbox while the sink is down"
    );
    assert!(gw.metric("outpost_gateway_outbox_records") > 0.0);
    assert!(gw.metric("outpost_gateway_uplink_batches_total{outcome=\"failed\"}") >= 1.0);
    sink.up().unwrap();
    wait_sim(&mut sim, Duration::from_secs(120)).unwrap();

    let acked = outpost_tests::read_acked(&acked_log).unwrap();
    outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    wait_for(Duration::from_secs(20), "the outbox to drain", || {
        (gw.metric("outpost_gateway_outbox_records") == 0.0).then_some(())
    })
    .unwrap();
}

#[test]
fn a_full_outbox_under_block_stops_acking_instead_of_losing_data() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    // The sink is provisioned but not started: the outbox can only fill.
    let mut sink = Sink::prepare(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.max_outbox = "1 MiB";
    let gw = Gateway::start(dir.path(), &opts).unwrap();

    // 4000 messages × 5 readings ≈ 2 MB of outbox records: twice the cap.
    let total_messages = 4000.0;
    let acked = run_sim(dir.path(), &refs(&sim_args(broker.port, 10, 2000, 4000, 5))).unwrap();
    assert_eq!(
        acked.len(),
        4000 * 5,
        "Mosquitto acks the simulator and queues for the gateway"
    );
    let stalled_at = wait_for(
        Duration::from_secs(30),
        "the gateway to stop acking",
        || {
            let a = gw.metric("outpost_gateway_messages_acked_total");
            std::thread::sleep(Duration::from_millis(700));
            let b = gw.metric("outpost_gateway_messages_acked_total");
            (a == b && gw.metric("outpost_gateway_outbox_full_waits_total") >= 1.0).then_some(b)
        },
    )
    .unwrap();
    assert!(
        stalled_at < total_messages,
        "the gateway acked everything although the outbox is full"
    );
    assert!(gw.metric("outpost_gateway_outbox_bytes") <= 1024.0 * 1024.0);
    assert_eq!(gw.metric("outpost_gateway_outbox_dropped_total"), 0.0);

    // Sink up: the outbox drains, acking resumes, and nothing was lost.
    sink.up().unwrap();
    outpost_tests::assert_exactly_once(&sink, &acked, Duration::from_secs(90), &gw);
    assert_eq!(
        gw.metric("outpost_gateway_messages_acked_total"),
        total_messages
    );
}

#[test]
fn malformed_oversized_and_nan_payloads_are_quarantined_and_good_data_flows() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.max_payload = "4 KiB";
    opts.storage_extra = "uplink_quarantine = true".into();
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();

    let nan_cbor = {
        // A SenML CBOR pack whose value is NaN (JSON cannot carry NaN; CBOR can).
        use ciborium::Value;
        let rec = Value::Map(vec![
            (Value::Integer((-2).into()), Value::Text("pump-x/".into())),
            (Value::Integer(0.into()), Value::Text("temperature".into())),
            (Value::Integer(2.into()), Value::Float(f64::NAN)),
            (Value::Integer(6.into()), Value::Float(1.7e9)),
        ]);
        let mut buf = Vec::new();
        ciborium::into_writer(&Value::Array(vec![rec]), &mut buf).unwrap();
        buf
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("syntax", b"{not json".to_vec()),
        ("syntax", br#"[{"bn":"p/","n":"t","v":1.0"#.to_vec()),
        (
            "too_large",
            format!(
                r#"[{{"bn":"p/","n":"t","v":1,"x":"{}"}}]"#,
                "x".repeat(8 * 1024)
            )
            .into_bytes(),
        ),
        (
            "too_deep",
            format!("{}{}", "[".repeat(64), "]".repeat(64)).into_bytes(),
        ),
        ("non_finite_value", nan_cbor),
        (
            "unsupported_value",
            br#"[{"bn":"p/","n":"state","vs":"on"}]"#.to_vec(),
        ),
        ("empty", Vec::new()),
    ];
    let good = 100;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
        let mut o = MqttOptions::new("malformed-publisher", "127.0.0.1", broker.port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 256);
        let mut expected_acks = 0;
        for i in 0..good {
            if let Some((_, payload)) = bad.get(i % 15) {
                client.publish("outpost/sensors/pump-bad", QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
                expected_acks += 1;
            }
            let payload = format!(r#"[{{"bn":"pump-good/","bt":1700000000,"n":"temperature","u":"Cel","v":{i},"t":{i}}}]"#);
            client.publish("outpost/sensors/pump-good", QoS::AtLeastOnce, false, payload).await.unwrap();
            expected_acks += 1;
        }
        let mut acks = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acks < expected_acks {
            match tokio::time::timeout_at(deadline, ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
                Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) | Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher: {e}"),
                Err(_) => panic!("only {acks} of {expected_acks} PUBACKs"),
            }
        }
    });

    let want: std::collections::HashSet<_> = (0..good as i64)
        .map(|i| {
            (
                "pump-good".to_owned(),
                "temperature".to_owned(),
                (1_700_000_000 + i) * 1_000_000_000,
            )
        })
        .collect();
    let r = reconcile(&sink, &want, DRAIN).unwrap();
    assert_eq!(
        (r.missing, r.duplicates, r.stored),
        (0, 0, good),
        "{r:?}\n{}",
        gw.log_tail(30)
    );

    let m = gw.metrics().unwrap();
    for (reason, _) in &bad {
        let key = format!("outpost_gateway_quarantined_total{{reason=\"{reason}\"}}");
        assert!(
            m.get(&key).copied().unwrap_or(0.0) >= 1.0,
            "no quarantine count for {reason}: {m:#?}"
        );
    }
    assert!(
        gw.is_running(),
        "bad input must never take the gateway down"
    );
    // Every bad message was acked after its durable quarantine, so none is redelivered forever.
    let expected_acks = good + (0..good).filter(|i| bad.get(i % 15).is_some()).count();
    assert_eq!(
        m["outpost_gateway_messages_acked_total"],
        expected_acks as f64
    );
    // With storage.uplink_quarantine, the sink lists every quarantined message.
    let bad_count = expected_acks - good;
    let url = format!("{}/v1/quarantine?limit=1000", sink.url());
    let listed = outpost_tests::wait_for(DRAIN, "quarantine reports in the sink", || {
        let text = outpost_tests::reqwest::blocking_get_text(&url).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["count"].as_u64()? >= bad_count as u64).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    assert_eq!(listed["count"].as_u64(), Some(bad_count as u64));
    let entries = listed["entries"].as_array().unwrap();
    for (reason, _) in &bad {
        assert!(
            entries.iter().any(|e| e["reason"] == *reason
                && e["gateway"] == "gw-test"
                && e["origin"] == "mqtt:outpost/sensors/pump-bad"),
            "no report for {reason}: {listed:#}"
        );
    }
    gw.terminate().unwrap();
    let out = std::process::Command::new(outpost_tests::bin("outpost-gateway"))
        .args(["quarantine", "list", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains("non_finite_value"),
        "{listing}"
    );
}

#[test]
fn a_broker_restart_mid_stream_is_survived_by_reconnecting_without_loss() {
    let dir = outpost_tests::test_dir();
    let mut broker = Mosquitto::start_with(dir.path(), true).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let gw = Gateway::start(dir.path(), &GatewayOpts::new(broker.port, &sink)).unwrap();

    let (mut sim, acked_log) =
        spawn_sim(dir.path(), &refs(&sim_args(broker.port, 10, 500, 4000, 6))).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    broker
        .restart(dir.path(), Duration::from_millis(500))
        .unwrap();
    wait_sim(&mut sim, Duration::from_secs(120)).unwrap();

    let acked = outpost_tests::read_acked(&acked_log).unwrap();
    assert!(
        acked.len() > 1000,
        "the simulator should have delivered most of its messages"
    );
    outpost_tests::assert_exactly_once(&sink, &acked, DRAIN, &gw);
    assert!(
        gw.metric("outpost_gateway_mqtt_connections_total") >= 2.0,
        "the gateway should have reconnected"
    );
    assert_eq!(gw.metric("outpost_gateway_mqtt_connected"), 1.0);
}
