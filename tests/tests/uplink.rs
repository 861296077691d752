//! Uplink behaviour against the real sink: HTTPS with a private CA, and
//! batch splitting when the sink answers 413.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is a failed test.

use std::time::Duration;

use outpost_tests::{
    Gateway, GatewayOpts, Mosquitto, Sink, arg_refs, free_port, run_sim, small_qos1_sim, test_dir,
};

/// A sink serving HTTPS with a self-signed certificate for `localhost`,
/// made at test time; returns it and the certificate's PEM path.
fn https_sink(dir: &std::path::Path) -> (Sink, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("sink-cert.pem"), dir.join("sink-key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let mut sink = Sink::prepare_with(dir, "gw-test", free_port(), &tls, true).unwrap();
    sink.up().unwrap();
    (sink, cert_path)
}

#[test]
fn the_uplink_speaks_https_to_a_sink_whose_certificate_it_trusts_via_ca_file() {
    let dir = test_dir();
    let (sink, cert_path) = https_sink(dir.path());
    let broker = Mosquitto::start(dir.path()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    assert!(opts.sink_url.starts_with("https://localhost:"));
    opts.uplink_extra = format!("ca_file = \"{}\"", cert_path.display());
    let gw = Gateway::start(dir.path(), &opts).unwrap();

    let acked = run_sim(dir.path(), &arg_refs(&small_qos1_sim(broker.port, 500, 11))).unwrap();
    outpost_tests::assert_exactly_once(&sink, &acked, Duration::from_secs(60), &gw);
    assert!(gw.metric("outpost_gateway_uplink_batches_total{outcome=\"sent\"}") >= 1.0);
}

#[test]
fn a_gateway_that_does_not_trust_the_sink_certificate_sends_nothing_and_keeps_its_data() {
    let dir = test_dir();
    let (sink, _) = https_sink(dir.path());
    let broker = Mosquitto::start(dir.path()).unwrap();
    let gw = Gateway::start(dir.path(), &GatewayOpts::new(broker.port, &sink)).unwrap();

    run_sim(dir.path(), &arg_refs(&small_qos1_sim(broker.port, 100, 12))).unwrap();
    outpost_tests::wait_for(Duration::from_secs(20), "failed uplink attempts", || {
        (gw.metric("outpost_gateway_uplink_batches_total{outcome=\"failed\"}") >= 2.0).then_some(())
    })
    .unwrap();
    assert_eq!(sink.stored_count(), 0);
    assert_eq!(
        gw.metric("outpost_gateway_outbox_records"),
        500.0,
        "the unsent readings stay in the outbox"
    );
    assert!(
        gw.log_tail(50).contains("certificate"),
        "the log should say why: {}",
        gw.log_tail(10)
    );
}

#[test]
fn batches_the_sink_refuses_as_too_large_are_split_until_they_fit() {
    let dir = test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let mut sink = Sink::prepare_with(
        dir.path(),
        "gw-test",
        free_port(),
        "[limits]\nmax_body_bytes = \"2 KiB\"\n",
        false,
    )
    .unwrap();
    sink.up().unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.linger = "300ms";
    let gw = Gateway::start(dir.path(), &opts).unwrap();

    let acked = run_sim(
        dir.path(),
        &arg_refs(&small_qos1_sim(broker.port, 2000, 13)),
    )
    .unwrap();
    outpost_tests::assert_exactly_once(&sink, &acked, Duration::from_secs(60), &gw);
    assert!(
        gw.metric("outpost_gateway_uplink_batches_total{outcome=\"split\"}") >= 1.0,
        "no batch was split"
    );
    assert_eq!(
        gw.metric("outpost_gateway_uplink_batches_total{outcome=\"too_large\"}"),
        0.0
    );
}
