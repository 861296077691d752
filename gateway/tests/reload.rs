//! SIGHUP reload against the real binary: a good config's uplink linger and
//! MQTT subscription apply without a restart; a bad config is refused, counted,
//! and the gateway keeps running on the old one.
//!
//! Needs Mosquitto on 127.0.0.1:1883 and `mosquitto_pub` (mosquitto-clients).
//! The uplink points at a closed port, so every upload attempt fails and is
//! counted: that makes the linger observable without a sink.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns; a panic is a failed test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Gw {
    child: Child,
    admin: u16,
    log: PathBuf,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gw {
    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        // hyper answers an HTTP/1.0 request as HTTP/1.0.
        (out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"))
            .then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
    }

    fn metric(&self, series: &str) -> f64 {
        self.get("/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == series).then(|| v.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn wait_for(what: &str, gw: &Gw, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; gateway log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Setup {
    dir: tempfile::TempDir,
    admin: u16,
    sink: u16,
    prefix: String,
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            admin: free_port(),
            // Nothing listens there: every upload attempt fails (and is counted).
            sink: free_port(),
            prefix: format!("outpost-reload-{}-{}", std::process::id(), free_port()),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// Writes the config: `topic` is the subscription's last level, `uplink`
    /// extra lines in `[uplink]`, `extra` appended.
    fn write(&self, linger: &str, topic: &str, uplink: &str, extra: &str) {
        let text = format!(
            r#"gateway_id = "gw-reload"
[storage]
path = "{outbox}"
[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "{prefix}"
persistent_session = false
[[mqtt.subscriptions]]
topic = "{prefix}/{topic}/#"
format = "senml_json"
[uplink]
url = "http://127.0.0.1:{sink}"
token = "t0k3n"
linger = "{linger}"
backoff_min = "50ms"
backoff_max = "200ms"
{uplink}
[admin]
listen = "127.0.0.1:{admin}"
{extra}
"#,
            outbox = self.dir.path().join("outbox").display(),
            prefix = self.prefix,
            sink = self.sink,
            admin = self.admin,
        );
        // Write-then-rename, as an editor or config tool would.
        let tmp = self.dir.path().join("gateway.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
    }

    fn start(&self) -> Gw {
        let log = self.dir.path().join("gateway.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_outpost-gateway"))
            .arg("run")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .env_remove("OUTPOST_UPLINK_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        let gw = Gw {
            child,
            admin: self.admin,
            log,
        };
        wait_for(
            "the gateway to be ready",
            &gw,
            Duration::from_secs(60),
            || gw.get("/ready").is_some(),
        );
        gw
    }

    /// Publishes one SenML pack (QoS 1) on `{prefix}/{level}/dev`.
    fn publish(&self, level: &str, n: u32) {
        let payload = format!(r#"[{{"bn":"dev-{level}/","n":"temp","v":{n}}}]"#);
        let ok = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t"])
            .arg(format!("{}/{level}/dev", self.prefix))
            .arg("-m")
            .arg(payload)
            .status()
            .expect("mosquitto_pub (mosquitto-clients) is needed")
            .success();
        assert!(ok, "mosquitto_pub failed");
    }
}

const COMMITTED: &str = "outpost_gateway_readings_committed_total";
const FAILED: &str = "outpost_gateway_uplink_batches_total{outcome=\"failed\"}";
const REJECTED: &str = "outpost_gateway_config_reloads_total{outcome=\"rejected\"}";
const APPLIED: &str = "outpost_gateway_config_reloads_total{outcome=\"applied\"}";
const RESTART: &str = "outpost_gateway_config_restart_pending";

#[test]
fn sighup_applies_a_good_config_live_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let s = Setup::new();
    s.write("1h", "a", "", "");
    let mut gw = s.start();

    // Subscribed to `a`: readings arrive; with a 1 h linger none is sent yet.
    let mut n = 0;
    wait_for("a reading on topic a", &gw, Duration::from_secs(60), || {
        n += 1;
        s.publish("a", n);
        std::thread::sleep(Duration::from_millis(200));
        gw.metric(COMMITTED) >= 1.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.metric(FAILED), 0.0, "the 1 h linger holds the batch");

    // A bad file: refused with its key in the log, counted, nothing applied.
    s.write("10ms", "b", "compression_level = 40", "");
    gw.hup();
    wait_for(
        "the rejected reload to be counted",
        &gw,
        Duration::from_secs(30),
        || gw.metric(REJECTED) >= 1.0,
    );
    assert!(gw.running(), "a bad config must not stop the gateway");
    assert!(
        gw.log().contains("uplink.compression_level"),
        "the log names the bad key:\n{}",
        gw.log()
    );
    let before = gw.metric(COMMITTED);
    s.publish("b", 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        gw.metric(FAILED),
        0.0,
        "the old 1 h linger is still in force"
    );
    assert_eq!(gw.metric(COMMITTED), before, "still subscribed to a, not b");
    assert_eq!(gw.metric(APPLIED), 0.0);

    // A good file: the new linger and subscription apply live; the storage
    // change needs a restart and is reported as such.
    s.write("50ms", "b", "", "[ingest]\nqueue_capacity = 512\n");
    gw.hup();
    wait_for("the applied reload", &gw, Duration::from_secs(30), || {
        gw.metric(APPLIED) >= 1.0
    });
    wait_for(
        "an upload attempt under the new linger",
        &gw,
        Duration::from_secs(30),
        || gw.metric(FAILED) >= 1.0,
    );
    let before = gw.metric(COMMITTED);
    let mut n = 100;
    wait_for("a reading on topic b", &gw, Duration::from_secs(60), || {
        n += 1;
        s.publish("b", n);
        std::thread::sleep(Duration::from_millis(200));
        gw.metric(COMMITTED) > before
    });
    assert_eq!(
        gw.metric(RESTART),
        1.0,
        "ingest.queue_capacity needs a restart"
    );
    assert!(gw.log().contains("ingest"), "{}", gw.log());
    assert!(gw.running());
    assert_eq!(gw.metric(REJECTED), 1.0);
    // Not a terminal: plain text, no colour escapes.
    assert!(
        !gw.log().contains('\u{1b}'),
        "ANSI escapes in a log that is not a terminal"
    );
}
