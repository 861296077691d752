//! The REST polling source end to end: a local axum server in this test
//! serves a changing JSON document with ETags; the real gateway polls it and
//! the real sink must end up with every published reading exactly once.
//!
//! Along the way: 304s answer unchanged polls (counted on the server from
//! `If-None-Match`), a 503 with `Retry-After` spaces the next attempts by at
//! least that long, bad JSON is quarantined and the source carries on, and
//! after a kill -9 the first request carries the ETag stored with the
//! readings (the checkpoint).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_tests::{Gateway, GatewayOpts, Identity, Mosquitto, Sink, free_port, wait_for};
use serde_json::{Value, json};

/// 2026-01-01T00:00:00Z.
const BASE_SECS: i64 = 1_767_225_600;
const TOKEN: &str = "rest-s3cret";
/// Items in one document: the newest ones, so consecutive versions overlap
/// (re-served readings must not be stored twice).
const WINDOW: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Unavailable,
    BadJson,
}

#[derive(Debug)]
struct Req {
    at: Instant,
    if_none_match: Option<String>,
    status: u16,
}

#[derive(Debug)]
struct Api {
    mode: Mode,
    version: u64,
    items: Vec<Value>,
    log: Vec<Req>,
}

type Shared = Arc<Mutex<Api>>;

impl Api {
    fn etag(&self) -> String {
        match self.mode {
            Mode::BadJson => format!("\"bad-{}\"", self.version),
            _ => format!("\"v{}\"", self.version),
        }
    }
}

async fn readings(State(api): State<Shared>, headers: HeaderMap) -> Response {
    let mut a = api.lock().unwrap();
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let etag = a.etag();
    let resp = if !authorized {
        (StatusCode::UNAUTHORIZED, "token").into_response()
    } else if a.mode == Mode::Unavailable {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "2")],
            "busy",
        )
            .into_response()
    } else if inm.as_deref() == Some(etag.as_str()) {
        (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
    } else if a.mode == Mode::BadJson {
        (
            StatusCode::OK,
            [
                (header::ETAG, etag),
                (header::CONTENT_TYPE, "application/json".into()),
            ],
            "{\"data\": {\"readings\": [oops",
        )
            .into_response()
    } else {
        let start = a.items.len().saturating_sub(WINDOW);
        let doc = json!({"data": {"readings": a.items[start..]}, "version": a.version});
        (
            StatusCode::OK,
            [
                (header::ETAG, etag),
                (header::CONTENT_TYPE, "application/json".into()),
            ],
            doc.to_string(),
        )
            .into_response()
    };
    let status = resp.status().as_u16();
    a.log.push(Req {
        at: Instant::now(),
        if_none_match: inm,
        status,
    });
    resp
}

/// Serves the API on a free port from a background thread.
fn serve(api: Shared) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/readings", axum::routing::get(readings))
                .with_state(api);
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// Item `k`: a distinct identity per item, time as RFC 3339.
fn item(k: usize) -> (Value, Identity) {
    let device = format!("rdev-{}", k % 4);
    let at = format!(
        "2026-01-01T{:02}:{:02}:{:02}+00:00",
        k / 3600,
        (k / 60) % 60,
        k % 60
    );
    let v = json!({"sensor": {"id": device}, "kind": "temp", "value": k as f64 / 2.0, "at": at});
    let id = (
        device,
        "temp".to_owned(),
        (BASE_SECS + k as i64) * 1_000_000_000,
    );
    (v, id)
}

/// Publishes `n` new items as a new version; returns their identities.
fn publish(api: &Shared, n: usize) -> HashSet<Identity> {
    let mut a = api.lock().unwrap();
    let mut ids = HashSet::new();
    for _ in 0..n {
        let k = a.items.len();
        let (v, id) = item(k);
        a.items.push(v);
        ids.insert(id);
    }
    a.version += 1;
    ids
}

fn set_mode(api: &Shared, mode: Mode) {
    let mut a = api.lock().unwrap();
    a.mode = mode;
    a.version += 1;
    a.log.clear();
}

fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metric(name)
}

#[test]
fn polled_readings_arrive_exactly_once_with_304s_retry_after_and_bad_json() {
    let api: Shared = Arc::new(Mutex::new(Api {
        mode: Mode::Normal,
        version: 0,
        items: Vec::new(),
        log: Vec::new(),
    }));
    let addr = serve(api.clone());
    let mut expected = publish(&api, 20);

    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.extra = format!(
        r#"
[[rest]]
name = "api"
url = "http://{addr}/readings"
token = "{TOKEN}"
interval = "200ms"
backoff_min = "100ms"
backoff_max = "400ms"
items = "/data/readings"
device_pointer = "/sensor/id"
channel_pointer = "/kind"
value_pointer = "/value"
time_pointer = "/at"
"#
    );
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();
    let long = Duration::from_secs(60);
    outpost_tests::assert_exactly_once(&sink, &expected, long, &gw);

    // Unchanged document: conditional requests answered 304.
    wait_for(long, "three 304s", || {
        let a = api.lock().unwrap();
        let etag = a.etag();
        let n = a
            .log
            .iter()
            .filter(|r| r.status == 304 && r.if_none_match.as_deref() == Some(etag.as_str()))
            .count();
        (n >= 3).then_some(())
    })
    .unwrap();

    // New versions overlap the old ones; one item cannot be mapped.
    for round in 0..3 {
        expected.extend(publish(&api, 20));
        if round == 1 {
            let mut a = api.lock().unwrap();
            a.items.push(json!({"sensor": {"id": "rdev-x"}, "kind": "temp", "value": null, "at": "2026-01-01T00:00:00Z"}));
            a.version += 1;
        }
        outpost_tests::assert_exactly_once(&sink, &expected, long, &gw);
    }
    wait_for(long, "the null value in quarantine", || {
        (metric(
            &gw,
            "outpost_gateway_quarantined_total{reason=\"missing_value\"}",
        ) >= 1.0)
            .then_some(())
    })
    .unwrap();

    // 503 with Retry-After: 2 → at least ~2 s between attempts (the backoff
    // alone would be at most 400 ms).
    set_mode(&api, Mode::Unavailable);
    let times = wait_for(long, "three 503s", || {
        let a = api.lock().unwrap();
        let t: Vec<Instant> = a
            .log
            .iter()
            .filter(|r| r.status == 503)
            .map(|r| r.at)
            .collect();
        (t.len() >= 3).then_some(t)
    })
    .unwrap();
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(1800),
            "attempts {gap:?} apart despite Retry-After: 2"
        );
    }
    assert!(
        metric(
            &gw,
            "outpost_gateway_rest_requests_total{source=\"api\",outcome=\"rate_limited\"}"
        ) >= 3.0
    );

    // Bad JSON: quarantined, and the same bad document is then answered 304.
    set_mode(&api, Mode::BadJson);
    wait_for(long, "the bad JSON in quarantine", || {
        (metric(&gw, "outpost_gateway_quarantined_total{reason=\"syntax\"}") >= 1.0
            && metric(
                &gw,
                "outpost_gateway_rest_requests_total{source=\"api\",outcome=\"bad_json\"}",
            ) >= 1.0)
            .then_some(())
    })
    .unwrap();
    wait_for(long, "a 304 for the bad document", || {
        let a = api.lock().unwrap();
        a.log.iter().any(|r| r.status == 304).then_some(())
    })
    .unwrap();

    // The source carries on.
    set_mode(&api, Mode::Normal);
    expected.extend(publish(&api, 20));
    outpost_tests::assert_exactly_once(&sink, &expected, long, &gw);

    // kill -9: the first request after the restart carries the stored ETag.
    wait_for(long, "a 304 for the current version", || {
        let a = api.lock().unwrap();
        let etag = a.etag();
        a.log
            .iter()
            .any(|r| r.status == 304 && r.if_none_match.as_deref() == Some(etag.as_str()))
            .then_some(())
    })
    .unwrap();
    gw.kill9();
    let etag = {
        let mut a = api.lock().unwrap();
        a.log.clear();
        a.etag()
    };
    gw.up().unwrap();
    wait_for(long, "a request after the restart", || {
        let a = api.lock().unwrap();
        a.log.first().map(|r| (r.if_none_match.clone(), r.status))
    })
    .map(|(inm, status)| {
        assert_eq!(inm.as_deref(), Some(etag.as_str()));
        assert_eq!(status, 304);
    })
    .unwrap();

    let r = outpost_tests::assert_exactly_once(&sink, &expected, long, &gw);
    assert_eq!(
        r.stored,
        expected.len(),
        "only the published readings: {r:?}"
    );
    gw.terminate().unwrap();
}
