//! The MQTT source over TLS with username/password, against a real Mosquitto
//! whose certificates are made at test time: a private CA that the gateway
//! trusts through `mqtt.tls.ca_file`, and a CA it does not trust.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is a failed test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost_tests::{Gateway, GatewayOpts, Proc, Sink, free_port, run_sim, test_dir, wait_for};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki(dir: &Path) -> Pki {
    let ca_cert = ca("outpost test CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        // Mosquitto drops to its own user when started as root.
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("broker.pem", leaf.pem()),
        key: write("broker.key", leaf_key.serialize_pem()),
        other_ca: write("other-ca.pem", ca("someone else").pem()),
    }
}

/// Mosquitto with a plain listener (for the simulator) and a TLS listener
/// (for the gateway), both requiring a username and password.
fn start_broker(dir: &Path, pki: &Pki) -> (Proc, u16, u16) {
    let (plain, tls) = (free_port(), free_port());
    let passwd = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["gateway", "s3cret"])
        .status()
        .unwrap();
    assert!(ok.success());
    Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwd)
        .args(["sim", "simpw"])
        .status()
        .unwrap();
    fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let conf = dir.join("mosquitto-tls.conf");
    fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\n\
             persistence false\nmax_queued_messages 0\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            pki.ca.display(),
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        "mosquitto",
        Command::new("/usr/sbin/mosquitto").arg("-c").arg(&conf),
        dir.join("mosquitto.log"),
    )
    .unwrap();
    for port in [plain, tls] {
        wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .unwrap();
    }
    (proc, plain, tls)
}

fn gateway_opts(sink: &Sink, tls_port: u16, ca: &Path, password: &str) -> GatewayOpts {
    let mut opts = GatewayOpts::new(tls_port, sink);
    opts.mqtt_extra = format!("username = \"gateway\"\npassword = \"{password}\"");
    opts.extra = format!("[mqtt.tls]\nca_file = \"{}\"\n", ca.display());
    opts
}

#[test]
fn the_gateway_reads_from_a_tls_broker_with_a_password_and_loses_nothing() {
    let dir = test_dir();
    let pki = pki(dir.path());
    let (_broker, plain, tls) = start_broker(dir.path(), &pki);
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    // The broker's certificate names 127.0.0.1 as well as localhost.
    let gw = Gateway::start(dir.path(), &gateway_opts(&sink, tls, &pki.ca, "s3cret")).unwrap();
    let args = [
        "--broker",
        &format!("127.0.0.1:{plain}"),
        "--username",
        "sim",
        "--password",
        "simpw",
        "--devices",
        "5",
        "--rate",
        "1000",
        "--count",
        "500",
        "--qos",
        "1",
    ];
    let acked = run_sim(dir.path(), &args).unwrap();
    assert_eq!(acked.len(), 500 * 5);
    outpost_tests::assert_exactly_once(&sink, &acked, Duration::from_secs(60), &gw);
}

/// Starts the gateway and waits until its log shows `needle`; it must never
/// report itself connected.
fn gateway_fails_with(dir: &Path, opts: &GatewayOpts, needle: &str) {
    let mut gw = Gateway::configure(dir, opts).unwrap();
    gw.spawn().unwrap();
    let seen = wait_for(Duration::from_secs(15), needle, || {
        let log = fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
        log.to_lowercase().contains(needle).then_some(())
    });
    assert!(seen.is_ok(), "expected {needle:?} in:\n{}", gw.log_tail(20));
    assert_eq!(gw.metric("outpost_gateway_mqtt_connected"), 0.0);
}

#[test]
fn a_broker_certificate_from_an_untrusted_ca_or_a_wrong_password_is_refused_clearly() {
    let dir = test_dir();
    let pki = pki(dir.path());
    let (_broker, _plain, tls) = start_broker(dir.path(), &pki);
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();

    let untrusted = dir.path().join("untrusted");
    fs::create_dir_all(&untrusted).unwrap();
    gateway_fails_with(
        &untrusted,
        &gateway_opts(&sink, tls, &pki.other_ca, "s3cret"),
        "invalid peer certificate: unknownissuer",
    );

    let wrong_password = dir.path().join("wrong-password");
    fs::create_dir_all(&wrong_password).unwrap();
    gateway_fails_with(
        &wrong_password,
        &gateway_opts(&sink, tls, &pki.ca, "nope"),
        "notauthorized",
    );
}
