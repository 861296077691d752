//! The HTTP push source end to end: reqwest → `POST /v1/readings` on the real
//! gateway binary → real cloud sink. A 202 is the gateway's promise that the
//! readings are durable, so every reading that got one must reach the sink
//! exactly once, kill -9s included; refused requests get their 4xx, and a
//! payload answered 400 is in the quarantine.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outpost_tests::{Gateway, GatewayOpts, Identity, Mosquitto, Sink, free_port, reconcile};

const DRAIN: Duration = Duration::from_secs(60);
/// 2026-01-01T00:00:00Z.
const BASE_SECS: i64 = 1_767_225_600;
const CHANNELS: usize = 5;

fn readings_url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/readings")
}

/// Batch `i`: five channels of one device at second `BASE_SECS + i`, so every
/// identity in the run is distinct. Returns the SenML JSON and its identities.
fn batch(i: usize) -> (String, Vec<Identity>) {
    let device = format!("hpump-{}", i % 8);
    let ts = BASE_SECS + i as i64;
    let records: Vec<String> = (0..CHANNELS)
        .map(|c| {
            if c == 0 {
                format!(r#"{{"bn":"{device}/","bt":{ts},"n":"c{c}","v":{i}.{c}}}"#)
            } else {
                format!(r#"{{"n":"c{c}","v":{i}.{c}}}"#)
            }
        })
        .collect();
    let ids = (0..CHANNELS)
        .map(|c| (device.clone(), format!("c{c}"), ts * 1_000_000_000))
        .collect();
    (format!("[{}]", records.join(",")), ids)
}

/// The JSON body of a response (`null` when it is not JSON).
async fn json_of(r: reqwest::Response) -> serde_json::Value {
    let bytes = r.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// What the client saw.
#[derive(Debug, Default)]
struct ClientLog {
    acked: HashSet<Identity>,
    /// Attempts that failed at the connection level (the gateway was down).
    connection_errors: usize,
    /// 503 answers (queue full, commit failed or timed out, shutting down).
    unavailable: usize,
}

/// Posts `batches` batches from `workers` concurrent clients and, like a real
/// client, retries each one after a connection error or a 503 until it gets a
/// 202. `progress` counts the 202s.
async fn post_all(
    url: String,
    batches: usize,
    workers: usize,
    progress: Arc<AtomicUsize>,
) -> ClientLog {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, progress) = (client.clone(), url.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut log = ClientLog::default();
            for i in (w..batches).step_by(workers) {
                let (body, ids) = batch(i);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    assert!(Instant::now() < deadline, "batch {i} never got a 202");
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/senml+json")
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => {
                            let json = json_of(r).await;
                            assert_eq!(json["accepted"], CHANNELS, "batch {i}");
                            log.acked.extend(ids);
                            progress.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(r) if r.status() == 503 => {
                            assert!(r.headers().contains_key("retry-after"));
                            log.unavailable += 1;
                        }
                        Ok(r) => panic!("batch {i}: unexpected {}", r.status()),
                        Err(_) => log.connection_errors += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            log
        }));
    }
    let mut all = ClientLog::default();
    for t in tasks {
        let log = t.await.expect("worker");
        all.acked.extend(log.acked);
        all.connection_errors += log.connection_errors;
        all.unavailable += log.unavailable;
    }
    all
}

#[test]
fn every_reading_that_got_a_202_is_in_the_sink_exactly_once_across_kill_9s() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.http_listen = Some(http);
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();

    let batches = 3000;
    let progress = Arc::new(AtomicUsize::new(0));
    let client = {
        let (url, progress) = (readings_url(http), progress.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(post_all(url, batches, 4, progress))
        })
    };
    // Kill -9 at three points of the stream, whatever the machine's speed.
    let mut kills = 0;
    for at in [400, 1200, 2100] {
        outpost_tests::wait_for(Duration::from_secs(120), "202s to accumulate", || {
            (progress.load(Ordering::Relaxed) >= at).then_some(())
        })
        .unwrap();
        gw.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(300));
        gw.up().unwrap();
    }
    let log = client.join().expect("client thread");
    eprintln!(
        "after {kills} kill -9: {} readings got a 202; {} connection errors, {} 503s retried",
        log.acked.len(),
        log.connection_errors,
        log.unavailable
    );
    assert_eq!(
        log.acked.len(),
        batches * CHANNELS,
        "every batch got a 202 in the end"
    );
    assert!(
        log.connection_errors > 0,
        "the kills should have hit requests in flight"
    );
    let r = outpost_tests::assert_exactly_once(&sink, &log.acked, DRAIN, &gw);
    assert_eq!(r.stored, r.acked, "nothing else was stored");
    assert_eq!(
        gw.terminate().unwrap(),
        Some(0),
        "SIGTERM drains and exits 0"
    );
}

#[test]
fn refused_requests_get_401_413_415_and_400_and_a_400_payload_is_quarantined() {
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.http_listen = Some(http);
    opts.http_extra = "token = \"e2e-http-token\"\nmax_body_bytes = \"2 KiB\"".into();
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();
    let url = readings_url(http);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let post = |token: Option<&str>, content_type: &str, body: Vec<u8>| {
        rt.block_on(async {
            let mut req = reqwest::Client::new()
                .post(&url)
                .header("content-type", content_type)
                .body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            (status, json_of(r).await)
        })
    };
    let token = Some("e2e-http-token");
    let senml = batch(7).0.into_bytes();

    assert_eq!(post(None, "application/senml+json", senml.clone()).0, 401);
    assert_eq!(
        post(Some("nope"), "application/senml+json", senml.clone()).0,
        401
    );
    let (status, json) = post(token, "application/xml", senml.clone());
    assert_eq!(
        (status, json["reason"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, json) = post(token, "text/csv", "d,c,1\n".repeat(1000).into_bytes());
    assert_eq!((status, json["reason"].as_str()), (413, Some("too_large")));
    let bad = br#"[{"bn":"hpump-x/","n":"t","v":1.0"#.to_vec();
    let (status, json) = post(token, "application/senml+json", bad);
    assert_eq!(
        (status, json["reason"].as_str()),
        (400, Some("syntax")),
        "{json}"
    );
    assert!(
        json["error"].as_str().is_some_and(|e| e.contains("SenML")),
        "{json}"
    );

    let csv = format!(
        "device,channel,value,timestamp\n,level,0.25,{BASE_SECS}\n,level,0.5,{}\n",
        BASE_SECS + 1
    );
    let (status, json) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}?device=tank-1"))
            .bearer_auth("e2e-http-token")
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), json_of(r).await)
    });
    assert_eq!((status, json["accepted"].as_u64()), (202, Some(2)));
    let (status, _) = post(token, "application/senml+json", senml);
    assert_eq!(status, 202);

    let mut want: HashSet<Identity> = batch(7).1.into_iter().collect();
    want.insert(("tank-1".into(), "level".into(), BASE_SECS * 1_000_000_000));
    want.insert((
        "tank-1".into(),
        "level".into(),
        (BASE_SECS + 1) * 1_000_000_000,
    ));
    let r = reconcile(&sink, &want, DRAIN).unwrap();
    assert_eq!(
        (r.missing, r.duplicates, r.stored),
        (0, 0, want.len()),
        "{r:?}"
    );

    let m = gw.metrics().unwrap();
    for (status, n) in [(401, 2.0), (415, 1.0), (413, 1.0), (400, 1.0), (202, 2.0)] {
        let key = format!("outpost_gateway_http_requests_total{{status=\"{status}\"}}");
        assert_eq!(m.get(&key), Some(&n), "{key}: {m:#?}");
    }
    assert_eq!(m["outpost_gateway_messages_acked_total"], 2.0);
    assert_eq!(
        m["outpost_gateway_quarantined_total{reason=\"syntax\"}"],
        1.0
    );

    assert_eq!(gw.terminate().unwrap(), Some(0));
    let out = std::process::Command::new(outpost_tests::bin("outpost-gateway"))
        .args(["quarantine", "list", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = listing
        .lines()
        .find(|l| l.contains("http:127.0.0.1"))
        .unwrap_or_else(|| panic!("no HTTP entry in:\n{listing}"));
    assert!(
        line.contains("syntax") && line.contains("hpump-x"),
        "{line}"
    );
}
