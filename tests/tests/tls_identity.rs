//! TLS identity between gateway and sink, with certificates made at test time
//! (rcgen): mutual TLS accepted; refused without a client certificate, with a
//! server certificate from a CA the gateway does not trust, with an expired
//! server certificate, and with a certificate for another host name. A
//! refused gateway sends nothing, keeps every reading in its outbox, and says
//! why in its log.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is a failed test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_tests::{
    Gateway, GatewayOpts, Mosquitto, Sink, arg_refs, free_port, run_sim, small_qos1_sim, test_dir,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A CA that can sign leaf certificates; its certificate is written to `dir/<name>.pem`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, issuer.pem()).unwrap();
    Ca { issuer, pem }
}

#[derive(Clone, Copy, PartialEq)]
enum Use {
    Server,
    Client,
}

/// A leaf certificate for `names` signed by `ca`; returns (cert, key) paths.
fn leaf(
    dir: &Path,
    ca: &Ca,
    file: &str,
    names: &[&str],
    usage: Use,
    expired: bool,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![match usage {
        Use::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Use::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &*ca.issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// An HTTPS sink with `cert`/`key`, requiring client certificates from
/// `client_ca` when given.
fn sink(dir: &Path, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Sink {
    let mut tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        tls.push_str(&format!("client_ca = \"{}\"\n", ca.display()));
    }
    let mut sink = Sink::prepare_with(dir, "gw-test", free_port(), &tls, true).unwrap();
    sink.up().unwrap();
    sink
}

/// Starts a gateway with `uplink_extra`, sends 100 messages (500 readings),
/// and checks that none reaches the sink, all stay in the outbox, and the
/// log contains one of `why` (lower-cased). Returns the log tail.
fn assert_refused(dir: &Path, sink: &Sink, uplink_extra: String, why: &[&str]) -> String {
    let broker = Mosquitto::start(dir).unwrap();
    let mut opts = GatewayOpts::new(broker.port, sink);
    opts.uplink_extra = uplink_extra;
    let gw = Gateway::start(dir, &opts).unwrap();
    run_sim(dir, &arg_refs(&small_qos1_sim(broker.port, 100, 21))).unwrap();
    // Under TLS 1.3 the server refuses a client certificate after the client
    // considers the handshake done, so one attempt may end in "broken pipe"
    // before the alert is read; the reason must show within a few retries.
    let says_why = || {
        let log = gw.log_tail(400).to_lowercase();
        why.iter().any(|w| log.contains(w))
    };
    outpost_tests::wait_for(Duration::from_secs(60), "failed uplink attempts", || {
        (gw.metric("outpost_gateway_uplink_batches_total{outcome=\"failed\"}") >= 2.0 && says_why())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e} (the log should say why: {why:?})\n{}", gw.log_tail(30)));
    assert_eq!(
        sink.stored_count(),
        0,
        "the sink must not have stored anything"
    );
    assert_eq!(
        gw.metric("outpost_gateway_outbox_records"),
        500.0,
        "the unsent readings stay in the outbox"
    );
    gw.log_tail(400).to_lowercase()
}

#[test]
fn mutual_tls_with_a_client_certificate_from_the_sinks_client_ca_is_accepted() {
    let dir = test_dir();
    let d = dir.path();
    let server_ca = ca(d, "server-ca");
    let client_ca = ca(d, "client-ca");
    let (cert, key) = leaf(d, &server_ca, "sink", &["localhost"], Use::Server, false);
    let (ccert, ckey) = leaf(d, &client_ca, "gw", &["gw-test"], Use::Client, false);
    let sink = sink(d, &cert, &key, Some(&client_ca.pem));
    let broker = Mosquitto::start(d).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.uplink_extra = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        server_ca.pem.display(),
        ccert.display(),
        ckey.display()
    );
    let gw = Gateway::start(d, &opts).unwrap();
    let acked = run_sim(d, &arg_refs(&small_qos1_sim(broker.port, 200, 20))).unwrap();
    outpost_tests::assert_exactly_once(&sink, &acked, Duration::from_secs(60), &gw);
    assert!(gw.metric("outpost_gateway_uplink_batches_total{outcome=\"sent\"}") >= 1.0);
    assert_eq!(
        gw.metric("outpost_gateway_uplink_batches_total{outcome=\"failed\"}"),
        0.0
    );
}

#[test]
fn a_sink_requiring_client_certificates_refuses_a_gateway_without_one() {
    let dir = test_dir();
    let d = dir.path();
    let server_ca = ca(d, "server-ca");
    let client_ca = ca(d, "client-ca");
    let (cert, key) = leaf(d, &server_ca, "sink", &["localhost"], Use::Server, false);
    let sink = sink(d, &cert, &key, Some(&client_ca.pem));
    assert_refused(
        d,
        &sink,
        format!("ca_file = \"{}\"", server_ca.pem.display()),
        &[
            "certificaterequired",
            "certificate required",
            "handshake",
            "alert",
        ],
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let dir = test_dir();
    let d = dir.path();
    let server_ca = ca(d, "server-ca");
    let client_ca = ca(d, "client-ca");
    let rogue_ca = ca(d, "rogue-ca");
    let (cert, key) = leaf(d, &server_ca, "sink", &["localhost"], Use::Server, false);
    let (ccert, ckey) = leaf(d, &rogue_ca, "gw", &["gw-test"], Use::Client, false);
    let sink = sink(d, &cert, &key, Some(&client_ca.pem));
    assert_refused(
        d,
        &sink,
        format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            server_ca.pem.display(),
            ccert.display(),
            ckey.display()
        ),
        &[
            "unknownca",
            "unknown ca",
            "badcertificate",
            "bad certificate",
            "alert",
        ],
    );
}

#[test]
fn a_server_certificate_from_a_ca_the_gateway_does_not_trust_is_refused_with_a_clear_error() {
    let dir = test_dir();
    let d = dir.path();
    let server_ca = ca(d, "server-ca");
    let other_ca = ca(d, "other-ca");
    let (cert, key) = leaf(d, &server_ca, "sink", &["localhost"], Use::Server, false);
    let sink = sink(d, &cert, &key, None);
    assert_refused(
        d,
        &sink,
        format!("ca_file = \"{}\"", other_ca.pem.display()),
        &["unknownissuer", "unknown issuer"],
    );
}

#[test]
fn an_expired_server_certificate_is_refused() {
    let dir = test_dir();
    let d = dir.path();
    let server_ca = ca(d, "server-ca");
    let (cert, key) = leaf(d, &server_ca, "sink", &["localhost"], Use::Server, true);
    let sink = sink(d, &cert, &key, None);
    assert_refused(
        d,
        &sink,
        format!("ca_file = \"{}\"", server_ca.pem.display()),
        &["expired"],
    );
}

#[test]
fn a_server_certificate_for_another_host_name_is_refused() {
    let dir = test_dir();
    let d = dir.path();
    let server_ca = ca(d, "server-ca");
    let (cert, key) = leaf(
        d,
        &server_ca,
        "sink",
        &["sink.example.com"],
        Use::Server,
        false,
    );
    let sink = sink(d, &cert, &key, None);
    assert_refused(
        d,
        &sink,
        format!("ca_file = \"{}\"", server_ca.pem.display()),
        &["notvalidforname", "not valid for name"],
    );
}
