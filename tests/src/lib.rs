//! Harness for end-to-end tests: runs the real binaries (gateway, cloud sink,
//! simulator) and a private Mosquitto, each on free loopback ports in a
//! temporary directory, and reads back what the sink stored.
//!
//! Binaries are taken from the same target directory as the test executable;
//! build them first (`cargo build --workspace --bins`, as `scripts/test` does).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A reading's identity as the tests compare it: (device, channel, ts_ns).
pub type Identity = (String, String, i64);

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A binary (the bench) runs from target/<profile>/; a test from
    // target/<profile>/deps/. Either way the programs sit in target/<profile>/.
    let here = exe.parent().expect("executable dir");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target dir")
    } else {
        here
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status.code());
            }
            if start.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private Mosquitto: persistent sessions kept in memory, no queue limit for
/// offline or slow subscribers (the default of 1000 would drop messages while
/// a test has the gateway down).
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    pub proc: Proc,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Result<Mosquitto> {
        Mosquitto::start_with(dir, false)
    }

    /// With `persistent`, sessions and queued messages are saved to `dir` on
    /// shutdown, so [`Mosquitto::restart`] keeps them (as a production broker should).
    pub fn start_with(dir: &Path, persistent: bool) -> Result<Mosquitto> {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let persistence = if persistent {
            // Run as root, mosquitto drops to its own user: give it a directory it can write.
            let data = dir.join("mosquitto-data");
            fs::create_dir_all(&data)?;
            fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
            format!(
                "persistence true\npersistence_location {}/\n",
                data.display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 max_queued_messages 0\nmax_inflight_messages 100\nset_tcp_nodelay true\n"
            ),
        )?;
        let proc = Mosquitto::spawn(dir, port)?;
        Ok(Mosquitto { port, proc })
    }

    fn spawn(dir: &Path, port: u16) -> Result<Proc> {
        let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                anyhow!("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
            })?;
        let conf = dir.join("mosquitto.conf");
        let proc = Proc::spawn(
            "mosquitto",
            Command::new(exe).arg("-c").arg(&conf),
            dir.join("mosquitto.log"),
        )?;
        wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(proc)
    }

    /// Clean stop (SIGTERM: a persistent broker saves its state), `down` pause, start again.
    pub fn restart(&mut self, dir: &Path, down: Duration) -> Result<()> {
        self.proc.terminate(Duration::from_secs(10))?;
        std::thread::sleep(down);
        self.proc = Mosquitto::spawn(dir, self.port)?;
        Ok(())
    }
}

/// The cloud sink binary with its own SQLite file and a token for one gateway.
#[derive(Debug)]
pub struct Sink {
    pub port: u16,
    pub config: PathBuf,
    pub db: PathBuf,
    pub token: String,
    pub proc: Option<Proc>,
    log: PathBuf,
    tls: bool,
}

impl Sink {
    /// Writes the config, provisions `gateway_id`, and starts the sink on `port`.
    pub fn start(dir: &Path, gateway_id: &str, port: u16) -> Result<Sink> {
        let mut sink = Sink::prepare(dir, gateway_id, port)?;
        sink.up()?;
        Ok(sink)
    }

    /// Like [`Sink::start`] but does not start the server (for "sink down" tests).
    pub fn prepare(dir: &Path, gateway_id: &str, port: u16) -> Result<Sink> {
        Sink::prepare_with(dir, gateway_id, port, "", false)
    }

    /// `extra` is appended to the sink's TOML config; `tls` makes [`Sink::url`] https.
    pub fn prepare_with(
        dir: &Path,
        gateway_id: &str,
        port: u16,
        extra: &str,
        tls: bool,
    ) -> Result<Sink> {
        let db = dir.join("sink.sqlite");
        let config = dir.join("cloud-sink.toml");
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\n[storage]\nsqlite_path = \"{}\"\n{extra}\n",
                db.display()
            ),
        )?;
        let out = Command::new(bin("outpost-cloud-sink"))
            .args(["gateway", "add", gateway_id, "--config"])
            .arg(&config)
            .output()?;
        if !out.status.success() {
            bail!(
                "gateway add failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        Ok(Sink {
            port,
            config,
            db,
            token,
            proc: None,
            log: dir.join("sink.log"),
            tls,
        })
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    pub fn up(&mut self) -> Result<()> {
        let proc = Proc::spawn(
            "cloud-sink",
            Command::new(bin("outpost-cloud-sink"))
                .arg("serve")
                .arg("--config")
                .arg(&self.config),
            self.log.clone(),
        )?;
        self.proc = Some(proc);
        // Health over plain TCP for TLS sinks: the port accepting connections is enough here.
        let url = format!("{}/health", self.url());
        let port = self.port;
        let tls = self.tls;
        wait_for(Duration::from_secs(15), "the sink to be healthy", || {
            let ok = if tls {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                reqwest::blocking_get_ok(&url)
            };
            ok.then_some(())
        })?;
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Every stored reading identity, with how many rows each has.
    pub fn stored(&self) -> Result<BTreeMap<Identity, u32>> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut stmt = conn.prepare(
            "SELECT device, channel, ts_ns, COUNT(*) FROM readings GROUP BY device, channel, ts_ns",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get::<_, u32>(3)?))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, v) = row?;
            out.insert(k, v);
        }
        Ok(out)
    }

    pub fn stored_count(&self) -> u64 {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return 0;
        };
        let _ = conn.busy_timeout(Duration::from_secs(5));
        conn.query_row("SELECT COUNT(*) FROM readings", [], |r| r.get::<_, i64>(0))
            .map_or(0, |n| n as u64)
    }
}

/// Options for a gateway under test.
#[derive(Clone, Debug)]
pub struct GatewayOpts {
    pub gateway_id: String,
    pub mqtt_port: u16,
    pub embedded_broker: bool,
    pub sink_url: String,
    pub token: String,
    pub max_outbox: &'static str,
    pub max_payload: &'static str,
    pub linger: &'static str,
    /// Extra lines inside `[mqtt]` (credentials, …).
    pub mqtt_extra: String,
    /// Extra lines inside `[uplink]`.
    pub uplink_extra: String,
    /// Extra lines inside `[storage]`.
    pub storage_extra: String,
    /// Extra TOML appended at the end.
    pub extra: String,
    /// When set, an `[http]` section makes the gateway listen here for `POST /v1/readings`.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Extra lines inside `[http]` (only with `http_listen`).
    pub http_extra: String,
}

impl GatewayOpts {
    pub fn new(mqtt_port: u16, sink: &Sink) -> Self {
        GatewayOpts {
            gateway_id: "gw-test".into(),
            mqtt_port,
            embedded_broker: false,
            sink_url: sink.url(),
            token: sink.token.clone(),
            max_outbox: "64 MiB",
            max_payload: "256 KiB",
            linger: "100ms",
            mqtt_extra: String::new(),
            uplink_extra: String::new(),
            storage_extra: String::new(),
            extra: String::new(),
            http_listen: None,
            http_extra: String::new(),
        }
    }
}

/// The gateway binary with its outbox in the test directory.
#[derive(Debug)]
pub struct Gateway {
    pub config: PathBuf,
    pub admin_port: u16,
    pub proc: Option<Proc>,
    log: PathBuf,
}

impl Gateway {
    /// Writes `gateway.toml` in `dir`; the process is not started.
    pub fn configure(dir: &Path, o: &GatewayOpts) -> Result<Gateway> {
        let admin_port = free_port();
        let config = dir.join("gateway.toml");
        let mode = if o.embedded_broker {
            "embedded"
        } else {
            "external"
        };
        fs::write(
            &config,
            format!(
                r#"gateway_id = "{id}"
[storage]
path = "{outbox}"
max_outbox_bytes = "{max_outbox}"
{storage_extra}
[limits]
max_payload_bytes = "{max_payload}"
[mqtt]
mode = "{mode}"
host = "127.0.0.1"
port = {port}
client_id = "outpost-{id}"
keep_alive = "10s"
reconnect_max = "1s"
{mqtt_extra}
[[mqtt.subscriptions]]
topic = "outpost/sensors/#"
format = "auto"
device_from_topic_level = 2
[mqtt.embedded]
listen = "127.0.0.1:{port}"
[uplink]
url = "{url}"
token = "{token}"
linger = "{linger}"
{uplink_extra}
backoff_min = "50ms"
backoff_max = "1s"
[admin]
listen = "127.0.0.1:{admin_port}"
{http}
{extra}
"#,
                id = o.gateway_id,
                outbox = dir.join("outbox").display(),
                max_outbox = o.max_outbox,
                max_payload = o.max_payload,
                port = o.mqtt_port,
                url = o.sink_url,
                token = o.token,
                linger = o.linger,
                mqtt_extra = o.mqtt_extra,
                uplink_extra = o.uplink_extra,
                storage_extra = o.storage_extra,
                extra = o.extra,
                http = o
                    .http_listen
                    .map(|a| format!("[http]\nlisten = \"{a}\"\n{}\n", o.http_extra))
                    .unwrap_or_default(),
            ),
        )?;
        Ok(Gateway {
            config,
            admin_port,
            proc: None,
            log: dir.join("gateway.log"),
        })
    }

    /// Writes the config and starts the gateway, waiting until it is ready.
    pub fn start(dir: &Path, o: &GatewayOpts) -> Result<Gateway> {
        let mut gw = Gateway::configure(dir, o)?;
        gw.up()?;
        Ok(gw)
    }

    /// Starts the process without waiting for readiness (for failure tests).
    pub fn spawn(&mut self) -> Result<()> {
        let proc = Proc::spawn(
            "gateway",
            Command::new(bin("outpost-gateway"))
                .arg("run")
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "info"),
            self.log.clone(),
        )?;
        self.proc = Some(proc);
        Ok(())
    }

    /// A stopped gateway for an existing `gateway.toml` in `dir` (start it with [`Gateway::up`]).
    pub fn from_config(dir: &Path) -> Gateway {
        let config = dir.join("gateway.toml");
        let text = fs::read_to_string(&config).unwrap_or_default();
        let admin_port = text
            .split("[admin]")
            .nth(1)
            .and_then(|rest| rest.split("127.0.0.1:").nth(1))
            .and_then(|p| p.split('"').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        Gateway {
            config,
            admin_port,
            proc: None,
            log: dir.join("gateway.log"),
        }
    }

    /// Starts (or restarts) the process and waits until it is connected to MQTT.
    pub fn up(&mut self) -> Result<()> {
        self.spawn()?;
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let res = wait_for(Duration::from_secs(20), "the gateway to be ready", || {
            reqwest::blocking_get_ok(&url).then_some(())
        });
        if res.is_err() {
            bail!("gateway not ready; log tail:\n{}", self.log_tail(40));
        }
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn terminate(&mut self) -> Result<Option<i32>> {
        match self.proc.take() {
            Some(mut p) => p.terminate(Duration::from_secs(30)),
            None => Ok(None),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Parsed `/metrics`: series name (with labels) → value.
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text =
            reqwest::blocking_get_text(&format!("http://127.0.0.1:{}/metrics", self.admin_port))?;
        Ok(parse_metrics(&text))
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(0.0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Prometheus/OpenMetrics text → map of series → value (comments skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Runs the simulator to completion (`args` after `run`) and returns its acked identities.
pub fn run_sim(dir: &Path, args: &[&str]) -> Result<HashSet<Identity>> {
    let acked = dir.join(format!("acked-{}.csv", free_port()));
    let out = Command::new(bin("outpost-firmware-sim"))
        .arg("run")
        .args(args)
        .arg("--acked-log")
        .arg(&acked)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "simulator failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    read_acked(&acked)
}

/// Spawns the simulator in the background; read its acked log after it exits.
pub fn spawn_sim(dir: &Path, args: &[&str]) -> Result<(Proc, PathBuf)> {
    let acked = dir.join(format!("acked-{}.csv", free_port()));
    let proc = Proc::spawn(
        "firmware-sim",
        Command::new(bin("outpost-firmware-sim"))
            .arg("run")
            .args(args)
            .arg("--acked-log")
            .arg(&acked),
        dir.join("sim.log"),
    )?;
    Ok((proc, acked))
}

/// Waits for a background simulator to exit successfully.
pub fn wait_sim(proc: &mut Proc, timeout: Duration) -> Result<()> {
    let Some(child) = proc.child.as_mut() else {
        bail!("simulator not running")
    };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("simulator exited with {status}:\n{}", proc.log_tail(30));
            }
            proc.child = None;
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("simulator still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the simulator's acked log: `device,channel,ts_ns,value` per line.
pub fn read_acked(path: &Path) -> Result<HashSet<Identity>> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = HashSet::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if line.is_empty() || line.starts_with('#') || line.starts_with("device,") {
            continue;
        }
        let mut parts = line.split(',');
        let (Some(d), Some(c), Some(ts)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad acked-log line {line:?}");
        };
        out.insert((d.to_owned(), c.to_owned(), ts.parse()?));
    }
    Ok(out)
}

/// Outcome of comparing what the broker acked with what the sink stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    pub acked: usize,
    pub stored: usize,
    /// Acked by the broker, not in the sink: must be 0.
    pub missing: usize,
    /// Identities stored more than once: must be 0.
    pub duplicates: usize,
}

/// Waits until every acked reading is in the sink (or `timeout`), then reconciles.
pub fn reconcile(
    sink: &Sink,
    acked: &HashSet<Identity>,
    timeout: Duration,
) -> Result<Reconciliation> {
    let start = Instant::now();
    loop {
        let stored = sink.stored()?;
        let missing = acked.iter().filter(|id| !stored.contains_key(*id)).count();
        if missing == 0 || start.elapsed() > timeout {
            return Ok(Reconciliation {
                acked: acked.len(),
                stored: stored.len(),
                missing,
                duplicates: stored.values().filter(|&&n| n > 1).count(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Tiny blocking HTTP helpers (reqwest's async client on a throwaway runtime).
pub mod reqwest {
    use anyhow::Result;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    pub fn blocking_get_ok(url: &str) -> bool {
        runtime().block_on(async {
            let client = ::reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(2))
                .build();
            match client {
                Ok(c) => c
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            }
        })
    }

    pub fn blocking_get_text(url: &str) -> Result<String> {
        runtime().block_on(async {
            let c = ::reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?;
            Ok(c.get(url).send().await?.error_for_status()?.text().await?)
        })
    }
}

/// A per-test directory, removed afterwards unless `OUTPOST_TEST_KEEP=1`
/// (then its path is printed, with every process log inside).
#[derive(Debug)]
pub struct TestDir {
    tmp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn test_dir() -> TestDir {
    let tmp = tempfile::Builder::new()
        .prefix("outpost-e2e-")
        .tempdir()
        .expect("temp dir");
    let path = tmp.path().to_path_buf();
    // Brokers started as root may drop to their own user; let them in.
    let _ = fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    if std::env::var_os("OUTPOST_TEST_KEEP").is_some() {
        eprintln!("test directory kept: {}", path.display());
        let _ = tmp.keep();
        TestDir { tmp: None, path }
    } else {
        TestDir {
            tmp: Some(tmp),
            path,
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = self.tmp.take();
    }
}

/// Waits up to `timeout` for every acked reading to reach the sink, then
/// asserts that none is missing and none is stored twice; on failure the
/// message carries the counts and the tail of the gateway's log.
pub fn assert_exactly_once(
    sink: &Sink,
    acked: &HashSet<Identity>,
    timeout: Duration,
    gw: &Gateway,
) -> Reconciliation {
    let r = reconcile(sink, acked, timeout).expect("reading the sink's database");
    assert_eq!(
        (r.missing, r.duplicates),
        (0, 0),
        "acked but missing, or stored twice: {r:?}\n{}",
        gw.log_tail(40)
    );
    r
}

/// `firmware-sim run` arguments for a small QoS 1 stream to the broker on
/// `port`: 5 devices at 1000 msgs/s, `count` messages, seeded.
pub fn small_qos1_sim(port: u16, count: u32, seed: u32) -> Vec<String> {
    let port = format!("127.0.0.1:{port}");
    let (count, seed) = (count.to_string(), seed.to_string());
    [
        "--broker",
        &port,
        "--devices",
        "5",
        "--rate",
        "1000",
        "--count",
        &count,
        "--qos",
        "1",
        "--seed",
        &seed,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Borrows argument strings for [`run_sim`] / [`spawn_sim`].
pub fn arg_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A `socat` pseudo-terminal pair: bytes written to `sim` come out of `gw` and
/// back; both are symlinks in the test directory to the `/dev/pts/N` devices.
/// Stopping it makes both devices vanish (a serial device unplugged); starting
/// it again re-creates the links (new pts numbers, same paths).
#[derive(Debug)]
pub struct Socat {
    /// The gateway's end (`[[serial]] path`).
    pub gw: PathBuf,
    /// The simulator's end (`--device`).
    pub sim: PathBuf,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Socat {
    /// Starts `socat pty,raw,echo=0,link=DIR/NAME-gw pty,raw,echo=0,link=DIR/NAME-sim`
    /// and waits for both links.
    pub fn start(dir: &Path, name: &str) -> Result<Socat> {
        let mut s = Socat {
            gw: dir.join(format!("{name}-gw")),
            sim: dir.join(format!("{name}-sim")),
            proc: None,
            log: dir.join(format!("socat-{name}.log")),
        };
        s.up()?;
        Ok(s)
    }

    /// (Re)starts socat with the same link paths.
    pub fn up(&mut self) -> Result<()> {
        // Stale links (after a SIGKILL) would point at freed pts numbers.
        let _ = fs::remove_file(&self.gw);
        let _ = fs::remove_file(&self.sim);
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let proc = Proc::spawn(
            "socat",
            Command::new("socat")
                .args(["-d", "-d"])
                .arg(end(&self.gw))
                .arg(end(&self.sim)),
            self.log.clone(),
        )?;
        self.proc = Some(proc);
        let (gw, sim) = (self.gw.clone(), self.sim.clone());
        wait_for(Duration::from_secs(20), "socat's pty links", || {
            (fs::metadata(&gw).is_ok() && fs::metadata(&sim).is_ok()).then_some(())
        })
    }

    /// Stops socat (SIGTERM: it removes its links) and waits until both devices are gone.
    pub fn down(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            let _ = p.terminate(Duration::from_secs(10));
        }
        let _ = fs::remove_file(&self.gw);
        let _ = fs::remove_file(&self.sim);
        Ok(())
    }
}

/// How the gateway's outbox sequence numbers cover what the sink stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeqCoverage {
    /// Readings of this gateway in the sink.
    pub stored: u64,
    /// Highest outbox sequence number among them.
    pub max_seq: u64,
    /// Distinct outbox epochs (1 unless the outbox was wiped).
    pub epochs: u64,
}

impl SeqCoverage {
    /// Outbox appends the sink dropped as duplicates of an identity it held.
    /// Sequence numbers start at 1 and are never reused, so when only one
    /// source feeds a gateway, `max_seq - stored` readings were appended to the
    /// outbox twice (a source that re-read data after a crash).
    pub fn appended_twice(&self) -> u64 {
        self.max_seq.saturating_sub(self.stored)
    }
}

/// [`SeqCoverage`] of `gateway` from the sink's database.
pub fn seq_coverage(sink: &Sink, gateway: &str) -> Result<SeqCoverage> {
    let conn = rusqlite::Connection::open_with_flags(
        &sink.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let (stored, max_seq, epochs) = conn.query_row(
        "SELECT COUNT(*), COALESCE(MAX(seq), 0), COUNT(DISTINCT outbox_epoch) FROM readings WHERE gateway = ?1",
        [gateway],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
    )?;
    Ok(SeqCoverage {
        stored: stored as u64,
        max_seq: max_seq as u64,
        epochs: epochs as u64,
    })
}
