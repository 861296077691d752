//! Training jobs, operator labels and the training scheduler, black-box
//! against a real sink on 127.0.0.1:0 fed through `POST /v1/ingest`.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] fns; a panic is a failed test.

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cloud_sink::Config;
use cloud_sink::auth::{OperatorTokens, TokenHash};
use cloud_sink::metrics::Metrics;
use cloud_sink::storage::sqlite::SqliteStorage;
use cloud_sink::storage::{
    Activity, AlertId, AlertLabel, AlertQuery, AlertSpan, GatewayStats, IngestOutcome,
    QuarantineQuery, ReadingQuery, Storage, StorageError, StoredAlert, StoredQuarantine,
    StoredReading, Totals,
};
use cloud_sink::train::jobs::{JobSpec, JobState, Jobs, Settings, SpecInput, SubmitError, Trigger};
use common::{
    alert, at, batch_of, client, config_in, get_json, metrics_text, post, spawn_with_gateways,
};
use protocol::batch::OutboxItem;
use protocol::{Reading, UplinkBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Readings of `devices`, one frame a second for `frames` seconds: `flow`
/// around 10, `current` following it, `temp` around 20 (Gaussian noise).
/// In `anomalies` (device, first second, last second) `current` is +8.
///
/// The noise is large next to the offsets on purpose: the ONNX export
/// standardises in f32, and a channel like 40 ± 0.3 loses enough digits
/// there to fail the export's 1e-5 round-trip check.
fn readings(devices: &[&str], frames: i64, anomalies: &[(&str, i64, i64)]) -> Vec<Reading> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for device in devices {
        for k in 0..frames {
            let flow = 10.0 + 2.0 * normal(&mut rng);
            let mut current = 2.0 + 0.5 * flow + normal(&mut rng);
            if anomalies
                .iter()
                .any(|(d, a, b)| d == device && (*a..=*b).contains(&k))
            {
                current += 8.0;
            }
            let temp = 20.0 + 2.0 * normal(&mut rng);
            for (channel, value) in [("flow", flow), ("current", current), ("temp", temp)] {
                out.push(Reading::new(*device, channel, at(k), value).unwrap());
            }
        }
    }
    out
}

struct Sink {
    _dir: tempfile::TempDir,
    /// Where the sink's jobs write model directories.
    models_dir: std::path::PathBuf,
    sink: cloud_sink::RunningSink,
    url: String,
    gateway: String,
    operator: String,
    next_seq: u64,
}

impl Sink {
    async fn send(&mut self, items: Vec<OutboxItem>) {
        let n = items.len() as u64;
        let (status, body) = post(
            &client(),
            &self.url,
            Some(&self.gateway),
            &batch_of("gw-a", self.next_seq, items),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.next_seq += n;
    }

    async fn send_readings(&mut self, readings: Vec<Reading>) {
        self.send(readings.into_iter().map(OutboxItem::Reading).collect())
            .await;
    }
}

/// A config in `dir` with an operator `ann` (whose token is returned).
fn config_with_operator(dir: &Path) -> (Config, String) {
    let mut config = config_in(dir);
    let token = cloud_sink::auth::generate_token();
    let file = dir.join("operators");
    std::fs::write(&file, OperatorTokens::line("ann", &token) + "\n").unwrap();
    config.api.operator_tokens_file = Some(file);
    (config, token)
}

async fn start_with(
    dir: tempfile::TempDir,
    config: Config,
    operator: String,
    storage: Option<Arc<dyn Storage>>,
) -> Sink {
    let models_dir = config.models_dir().unwrap();
    let (sink, url, mut tokens) = spawn_with_gateways(&config, &["gw-a"], storage).await;
    let gateway = tokens.remove(0);
    Sink {
        _dir: dir,
        models_dir,
        sink,
        url,
        gateway,
        operator,
        next_seq: 1,
    }
}

async fn start(edit: impl FnOnce(&mut Config)) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, token) = config_with_operator(dir.path());
    edit(&mut config);
    start_with(dir, config, token, None).await
}

fn with_json(req: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    req.header("Content-Type", "application/json")
        .body(body.to_string())
}

async fn post_json(url: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut req = with_json(client().post(url), body);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn submit(sink: &Sink, body: Value) -> u64 {
    let (status, job) = post_json(
        &format!("{}/v1/training/jobs", sink.url),
        Some(&sink.operator),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["state"], "queued", "{job}");
    job["id"].as_u64().unwrap()
}

async fn job(sink: &Sink, id: u64) -> Value {
    let (status, job) = get_json(&client(), &format!("{}/v1/training/jobs/{id}", sink.url)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job
}

/// Polls job `id` until `done` says so or `within` passes (then panics).
async fn wait_job(sink: &Sink, id: u64, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let j = job(sink, id).await;
        if done(&j) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not get there: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished(j: &Value) -> bool {
    j["state"] == "succeeded" || j["state"] == "failed" || j["state"] == "cancelled"
}

/// `POST /v1/training/jobs/{id}/cancel` with the operator's token.
async fn cancel(sink: &Sink, id: u64) -> (StatusCode, Value) {
    post_json(
        &format!("{}/v1/training/jobs/{id}/cancel", sink.url),
        Some(&sink.operator),
        &Value::Null,
    )
    .await
}

fn stages(j: &Value) -> Vec<&str> {
    j["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect()
}

async fn jobs(sink: &Sink) -> Vec<Value> {
    let (status, body) = get_json(&client(), &format!("{}/v1/training/jobs", sink.url)).await;
    assert_eq!(status, StatusCode::OK);
    body["jobs"].as_array().unwrap().clone()
}

async fn metrics(sink: &Sink) -> String {
    metrics_text(&client(), &sink.url).await
}

const DEVICES: [&str; 4] = ["pump-0", "pump-1", "pump-2", "pump-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_in_the_background_and_its_model_becomes_the_first_production_version() {
    let mut sink = start(|_| {}).await;
    sink.send_readings(readings(&DEVICES[..3], 240, &[])).await;

    let (status, empty) = get_json(&client(), &format!("{}/v1/models", sink.url)).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["count"], 0);

    let resp = with_json(
        client()
            .post(format!("{}/v1/training/jobs", sink.url))
            .header("Authorization", format!("Bearer {}", sink.operator)),
        &json!({"family": "gaussian"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let queued: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let id = queued["id"].as_u64().unwrap();
    assert_eq!(location, format!("/v1/training/jobs/{id}"));
    assert_eq!(queued["scope"], "fleet");
    assert_eq!(queued["devices"], Value::Null);
    assert_eq!(queued["trigger"], json!({"kind": "api", "operator": "ann"}));
    // `train`'s defaults.
    assert_eq!(
        (queued["window"].as_u64(), queued["hop"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        queued["stats"],
        json!(["mean", "std", "min", "max", "slope"])
    );
    assert_eq!(queued["log_spread"], false);

    let done = wait_job(&sink, id, Duration::from_secs(300), finished).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let stages: Vec<&str> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "queued",
            "loading",
            "labelling",
            "training",
            "exporting",
            "registering",
            "succeeded"
        ]
    );
    assert_eq!(done["stage"], "succeeded");
    let progress = &done["progress"];
    assert!(progress["done"].as_u64().unwrap() >= 5, "{progress}");
    assert_eq!(progress["done"], progress["total"], "{progress}");
    for key in ["created", "started", "finished"] {
        assert!(done[key].is_string(), "{key}: {done:#}");
    }
    assert_eq!(done["labels"]["labelled"], false);
    let result = &done["result"];
    assert_eq!(result["family"], "gaussian");
    assert_eq!(result["promoted"], true);
    assert!(result["heldout_alarm_rate"].is_number(), "{result}");
    assert!(result["threshold"].is_number(), "{result}");
    let version = result["model_version"].as_i64().unwrap();
    let artifact = Path::new(result["artifact"].as_str().unwrap());
    for file in ["model.onnx", "manifest.json", "model.json", "report.json"] {
        assert!(
            artifact.join(file).is_file(),
            "{file} in {}",
            artifact.display()
        );
    }
    assert!(!artifact.join("training-data.csv").exists());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(artifact.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["data"]["inputs"],
        json!(["sink storage: scope fleet (every device), every stored reading"])
    );

    let (_, models) = get_json(&client(), &format!("{}/v1/models", sink.url)).await;
    assert_eq!(models["count"], 1, "{models:#}");
    let m = &models["models"][0];
    assert_eq!(m["id"].as_i64(), Some(version));
    assert_eq!(
        (&m["scope"], &m["family"], &m["status"]),
        (&json!("fleet"), &json!("gaussian"), &json!("production"))
    );
    assert!(m["metrics"].is_null() || m["metrics"].is_object(), "{m}");
    assert!(m["created"].is_string());
    let (_, none) = get_json(&client(), &format!("{}/v1/models?scope=pump-0", sink.url)).await;
    assert_eq!(none["count"], 0);

    // A range without data fails with a clear error, and the sink carries on.
    let empty = submit(
        &sink,
        json!({"family": "gaussian", "from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}),
    )
    .await;
    let failed = wait_job(&sink, empty, Duration::from_secs(60), finished).await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["code"], "no_data");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no readings of any device in [2020-01-01T00:00:00"),
        "{failed:#}"
    );
    assert_eq!(failed["result"], Value::Null);

    // `auto` without operator labels cannot compare families: a clear failure.
    let auto = submit(&sink, json!({"scope": "pump-1"})).await;
    let failed = wait_job(&sink, auto, Duration::from_secs(60), finished).await;
    assert_eq!(failed["error"]["code"], "need_labels", "{failed:#}");

    let list = jobs(&sink).await;
    let ids: Vec<u64> = list.iter().map(|j| j["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [auto, empty, id], "newest first");
    let text = metrics(&sink).await;
    for needle in [
        "outpost_sink_training_jobs_total{outcome=\"accepted\"} 3",
        "outpost_sink_training_jobs_total{outcome=\"succeeded\"} 1",
        "outpost_sink_training_jobs_total{outcome=\"failed\"} 2",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    // Bad requests are refused before anything is queued.
    for (body, needle) in [
        (
            json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            "to: the range",
        ),
        (json!({"family": "magic"}), "family: unknown family"),
        (json!({"scope": "fleet", "devices": ["pump-0"]}), "devices:"),
        (json!({"window": 1}), "window:"),
        (json!({"stats": ["median"]}), "stats:"),
        (json!({"period": "soon"}), "period:"),
        (json!({"scop": "fleet"}), "unknown field"),
    ] {
        let (status, err) = post_json(
            &format!("{}/v1/training/jobs", sink.url),
            Some(&sink.operator),
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(needle),
            "{body}: {err}"
        );
    }
    let (status, _) = get_json(&client(), &format!("{}/v1/training/jobs/999", sink.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(jobs(&sink).await.len(), 3);
    sink.sink.shutdown().await.unwrap();
}

#[tokio::test]
async fn operator_routes_need_a_configured_operator_token() {
    // No operator tokens configured: 403 whatever the request carries.
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let closed = start_with(dir, config, String::new(), None).await;
    for (path, body) in [
        ("/v1/training/jobs", json!({"family": "gaussian"})),
        ("/v1/training/jobs/1/cancel", Value::Null),
        ("/v1/alerts/gw-a:0:1/label", json!({"true_alarm": true})),
    ] {
        for token in [None, Some("whatever")] {
            let (status, err) = post_json(&format!("{}{path}", closed.url), token, &body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {err}");
            assert!(
                err["error"]
                    .as_str()
                    .unwrap()
                    .contains("api.operator_tokens_file"),
                "{err}"
            );
        }
    }
    let (status, _) = get_json(&client(), &format!("{}/v1/training/jobs", closed.url)).await;
    assert_eq!(status, StatusCode::OK, "reading stays open");

    // Configured: a missing or unknown token is 401; the gateway's token is
    // not an operator's.
    let open = start(|_| {}).await;
    let wrong = "0".repeat(64);
    for (path, body) in [
        ("/v1/training/jobs", json!({"family": "gaussian"})),
        ("/v1/training/jobs/1/cancel", Value::Null),
        ("/v1/alerts/gw-a:0:1/label", json!({"true_alarm": true})),
    ] {
        for token in [None, Some(wrong.as_str()), Some(open.gateway.as_str())] {
            let resp = with_json(client().post(format!("{}{path}", open.url)), &body);
            let resp = match token {
                Some(t) => resp.header("Authorization", format!("Bearer {t}")),
                None => resp,
            }
            .send()
            .await
            .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {token:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        }
    }
    assert!(jobs(&open).await.is_empty());
    let text = metrics(&open).await;
    for path in ["/v1/training/jobs", "/v1/training/jobs/{id}/cancel"] {
        assert!(
            text.contains(&format!(
                "outpost_sink_http_requests_total{{path=\"{path}\",status=\"401\"}} 3"
            )),
            "{text}"
        );
    }
    // The right token gets through; no body at all means every default.
    let resp = client()
        .post(format!("{}/v1/training/jobs", open.url))
        .header("Authorization", format!("Bearer {}", open.operator))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (&job["scope"], &job["family"]),
        (&json!("fleet"), &json!("auto"))
    );
}

#[tokio::test]
async fn operators_label_alerts_and_see_the_label_in_the_alert_list() {
    let mut sink = start(|_| {}).await;
    sink.send(vec![
        OutboxItem::Alert(alert("pump-1", 100, 111)),
        OutboxItem::Alert(alert("pump-2", 50, 55)),
    ])
    .await;
    let (_, list) = get_json(&client(), &format!("{}/v1/alerts", sink.url)).await;
    let a = &list["alerts"][0];
    assert_eq!(a["device"], "pump-2");
    assert_eq!(a["label"], Value::Null);
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "gw-a:0:2");
    let url = format!("{}/v1/alerts/{id}/label", sink.url);

    let (status, labelled) =
        post_json(&url, Some(&sink.operator), &json!({"true_alarm": true})).await;
    assert_eq!(status, StatusCode::OK, "{labelled}");
    assert_eq!(labelled["id"], id.as_str());
    assert_eq!(labelled["label"]["true_alarm"], true);
    assert_eq!(
        labelled["label"]["by"], "ann",
        "by defaults to the operator"
    );
    assert!(labelled["start"].is_string());

    // A later verdict replaces the first; `by` is free text.
    let (status, _) = post_json(
        &url,
        Some(&sink.operator),
        &json!({"true_alarm": false, "by": "night shift"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = get_json(&client(), &format!("{}/v1/alerts", sink.url)).await;
    assert_eq!(list["alerts"][0]["label"]["true_alarm"], false);
    assert_eq!(list["alerts"][0]["label"]["by"], "night shift");
    assert!(list["alerts"][0]["label"]["labelled_ns"].is_i64());
    assert_eq!(list["alerts"][1]["label"], Value::Null, "the other alert");

    for (path, body, status) in [
        (
            "/v1/alerts/gw-a:0:99/label",
            json!({"true_alarm": true}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/alerts/gw-b:0:2/label",
            json!({"true_alarm": true}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/alerts/not-an-id/label",
            json!({"true_alarm": true}),
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!("/v1/alerts/{id}/label"),
            json!({}),
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!("/v1/alerts/{id}/label"),
            json!({"true_alarm": "yes"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!("/v1/alerts/{id}/label"),
            json!({"true_alarm": true, "by": ""}),
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!("/v1/alerts/{id}/label"),
            json!({"true_alarm": true, "why": "x"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, err) =
            post_json(&format!("{}{path}", sink.url), Some(&sink.operator), &body).await;
        assert_eq!(got, status, "{path} {body}: {err}");
        assert!(err["error"].is_string(), "{err}");
    }
    let text = metrics(&sink).await;
    assert!(
        text.contains("outpost_sink_operator_labels_total{verdict=\"true_alarm\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("outpost_sink_operator_labels_total{verdict=\"false_alarm\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_verdicts_label_the_training_frames_of_their_alerts() {
    let mut sink = start(|_| {}).await;
    let anomalies = [("pump-1", 100, 111), ("pump-2", 150, 161)];
    sink.send_readings(readings(&DEVICES, 240, &anomalies))
        .await;
    sink.send(vec![
        OutboxItem::Alert(alert("pump-1", 100, 111)),
        OutboxItem::Alert(alert("pump-2", 150, 161)),
        OutboxItem::Alert(alert("pump-0", 20, 25)),
        OutboxItem::Alert(alert("pump-3", 60, 65)),
    ])
    .await;
    let (_, list) = get_json(&client(), &format!("{}/v1/alerts", sink.url)).await;
    let id_of = |device: &str| {
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["device"] == device)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (device, verdict) in [("pump-1", true), ("pump-2", true), ("pump-0", false)] {
        let (status, body) = post_json(
            &format!("{}/v1/alerts/{}/label", sink.url, id_of(device)),
            Some(&sink.operator),
            &json!({"true_alarm": verdict}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // pump-3's alert stays unreviewed: its frames are left out.

    let id = submit(&sink, json!({"family": "gaussian"})).await;
    let done = wait_job(&sink, id, Duration::from_secs(300), finished).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(
        done["labels"],
        json!({
            "labelled": true,
            "true_alarms": 2,
            "false_alarms": 1,
            "unreviewed": 1,
            "anomalous_frames": 24,
            "normal_frames": 4 * 240 - 24 - 6,
            "dropped_frames": 6,
        }),
        "{done:#}"
    );
    // Labelled held-out data: binary metrics, not an alarm rate.
    let heldout = &done["result"]["heldout"];
    assert!(heldout["confusion"].is_object(), "{done:#}");
    assert_eq!(done["result"]["heldout_alarm_rate"], Value::Null);

    // With labels, `auto` compares families by validation.
    let auto = submit(&sink, json!({"scope": "pumps", "devices": DEVICES})).await;
    let done = wait_job(&sink, auto, Duration::from_secs(600), finished).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["devices"], json!(DEVICES));
    let version = done["result"]["model_version"].as_i64().unwrap();
    let (_, models) = get_json(&client(), &format!("{}/v1/models?scope=pumps", sink.url)).await;
    assert_eq!(models["models"][0]["id"].as_i64(), Some(version));
    assert_eq!(models["models"][0]["status"], "production");
}

/// Storage whose reading queries wait until the test opens the gate, so a
/// job can be held in its loading stage.
struct GatedStorage {
    inner: SqliteStorage,
    open: Mutex<bool>,
    changed: Condvar,
}

impl GatedStorage {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

impl Storage for GatedStorage {
    fn add_gateway(&self, name: &str, token_hash: &TokenHash) -> Result<(), StorageError> {
        self.inner.add_gateway(name, token_hash)
    }
    fn gateway_for_token(&self, token_hash: &TokenHash) -> Result<Option<String>, StorageError> {
        self.inner.gateway_for_token(token_hash)
    }
    fn ingest(&self, gateway: &str, batch: &UplinkBatch) -> Result<IngestOutcome, StorageError> {
        self.inner.ingest(gateway, batch)
    }
    fn query_readings(&self, query: &ReadingQuery) -> Result<Vec<StoredReading>, StorageError> {
        let open = self.open.lock().unwrap();
        // Bounded: a broken test fails instead of hanging.
        let (open, _) = self
            .changed
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open)
            .unwrap();
        drop(open);
        self.inner.query_readings(query)
    }
    fn query_alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, StorageError> {
        self.inner.query_alerts(query)
    }
    fn label_alert(
        &self,
        id: &AlertId,
        label: &AlertLabel,
    ) -> Result<Option<StoredAlert>, StorageError> {
        self.inner.label_alert(id, label)
    }
    fn alert_spans(
        &self,
        devices: Option<&[String]>,
        from_ns: Option<i64>,
        to_ns: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AlertSpan>, StorageError> {
        self.inner.alert_spans(devices, from_ns, to_ns, limit)
    }
    fn new_activity(
        &self,
        devices: Option<&[String]>,
        since_ns: i64,
        cap: u64,
    ) -> Result<Activity, StorageError> {
        self.inner.new_activity(devices, since_ns, cap)
    }
    fn query_quarantine(
        &self,
        query: &QuarantineQuery,
    ) -> Result<Vec<StoredQuarantine>, StorageError> {
        self.inner.query_quarantine(query)
    }
    fn gateways(&self) -> Result<Vec<GatewayStats>, StorageError> {
        self.inner.gateways()
    }
    fn totals(&self) -> Result<Totals, StorageError> {
        self.inner.totals()
    }
    fn ping(&self) -> Result<(), StorageError> {
        self.inner.ping()
    }
}

/// A sink with a queue of one whose storage holds reads until released, and
/// a job submitted and held in its `loading` stage.
async fn start_with_a_job_held_in_loading() -> (Sink, Arc<GatedStorage>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, token) = config_with_operator(dir.path());
    config.training.queue_capacity = 1;
    let gated = Arc::new(GatedStorage {
        inner: SqliteStorage::open(&dir.path().join("sink.db"), Duration::from_secs(5)).unwrap(),
        open: Mutex::new(false),
        changed: Condvar::new(),
    });
    let sink = start_with(dir, config, token, Some(gated.clone() as Arc<dyn Storage>)).await;

    let running = submit(&sink, json!({"family": "gaussian"})).await;
    wait_job(&sink, running, Duration::from_secs(30), |j| {
        j["state"] == "running" && j["stage"] == "loading"
    })
    .await;
    (sink, gated, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_jobs_with_503_and_accepts_again_once_it_drains() {
    let (sink, gated, running) = start_with_a_job_held_in_loading().await;
    let queued = submit(&sink, json!({"family": "gaussian"})).await;
    let resp = with_json(
        client()
            .post(format!("{}/v1/training/jobs", sink.url))
            .header("Authorization", format!("Bearer {}", sink.operator)),
        &json!({"family": "gaussian"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let err: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("training queue is full (1 jobs waiting)"),
        "{err}"
    );
    let (_, list) = get_json(&client(), &format!("{}/v1/training/jobs", sink.url)).await;
    assert_eq!(
        (list["count"].as_u64(), list["queued"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(list["queue_capacity"], 1);
    assert_eq!(job(&sink, queued).await["state"], "queued");

    gated.release();
    for id in [running, queued] {
        // No readings were ingested: both fail, cleanly.
        let j = wait_job(&sink, id, Duration::from_secs(60), finished).await;
        assert_eq!(j["error"]["code"], "no_data", "{j:#}");
    }
    submit(&sink, json!({"family": "gaussian"})).await;
    assert!(
        metrics(&sink)
            .await
            .contains("outpost_sink_training_jobs_total{outcome=\"refused\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_job_never_runs_and_finished_or_unknown_jobs_are_not_cancelled() {
    let (sink, gated, running) = start_with_a_job_held_in_loading().await;
    let queued = submit(&sink, json!({"family": "gaussian"})).await;
    let (status, cancelled) = cancel(&sink, queued).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(
        (&cancelled["state"], &cancelled["stage"]),
        (&json!("cancelled"), &json!("cancelled")),
        "{cancelled:#}"
    );
    assert_eq!(cancelled["cancel_requested"], true);
    assert_eq!(cancelled["error"]["code"], "cancelled");
    assert_eq!(
        cancelled["error"]["message"], "cancelled by operator ann",
        "{cancelled:#}"
    );
    assert!(cancelled["finished"].is_string(), "{cancelled:#}");
    // Its place in the queue (capacity 1) is free again.
    let next = submit(&sink, json!({"family": "gaussian"})).await;

    // A finished job (cancelled, here) is 409; an unknown one 404.
    let (status, err) = cancel(&sink, queued).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains(&format!(
            "training job {queued} has already finished (cancelled)"
        )),
        "{err}"
    );
    let (status, err) = cancel(&sink, 999).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("no training job 999"),
        "{err}"
    );
    let (status, err) = post_json(
        &format!("{}/v1/training/jobs/abc/cancel", sink.url),
        Some(&sink.operator),
        &Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");

    gated.release();
    for id in [running, next] {
        let j = wait_job(&sink, id, Duration::from_secs(60), finished).await;
        assert_eq!(j["error"]["code"], "no_data", "{j:#}");
    }
    // The cancelled job never ran.
    let never = job(&sink, queued).await;
    assert_eq!(stages(&never), ["queued", "cancelled"], "{never:#}");
    assert_eq!(never["started"], Value::Null);
    assert_eq!(never["progress"], Value::Null);
    let (status, err) = cancel(&sink, running).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err["error"].as_str().unwrap().contains("(failed)"), "{err}");
    let text = metrics(&sink).await;
    for needle in [
        "outpost_sink_training_jobs_total{outcome=\"accepted\"} 3",
        "outpost_sink_training_jobs_total{outcome=\"cancelled\"} 1",
        "outpost_sink_training_jobs_total{outcome=\"failed\"} 2",
        "outpost_sink_http_requests_total{path=\"/v1/training/jobs/{id}/cancel\",status=\"409\"} 2",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_running_job_stops_at_a_fold_boundary_and_registers_nothing() {
    let mut sink = start(|_| {}).await;
    // Enough data that the autoencoder's folds keep it in `training` for a
    // while (it would take many folds to finish).
    sink.send_readings(readings(&DEVICES[..3], 1500, &[])).await;
    let id = submit(&sink, json!({"family": "autoencoder"})).await;
    let started = Instant::now();
    let running = wait_job(&sink, id, Duration::from_secs(120), |j| {
        j["stage"] == "training" || finished(j)
    })
    .await;
    assert_eq!(running["stage"], "training", "{running:#}");
    let (status, asked) = cancel(&sink, id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    assert_eq!(asked["state"], "running", "{asked:#}");
    assert_eq!(asked["cancel_requested"], true);
    let asked_at = Instant::now();
    let done = wait_job(&sink, id, Duration::from_secs(120), finished).await;
    eprintln!(
        "training for {:?} before the cancel, stopped {:?} after it",
        asked_at - started,
        asked_at.elapsed()
    );
    assert_eq!(done["state"], "cancelled", "{done:#}");
    assert_eq!(done["error"]["code"], "cancelled");
    assert_eq!(done["error"]["message"], "cancelled by operator ann");
    let stages = stages(&done);
    assert_eq!(
        stages[stages.len() - 2..],
        ["training", "cancelled"],
        "{done:#}"
    );
    assert!(!stages.contains(&"exporting"), "{done:#}");
    let progress = &done["progress"];
    assert!(
        progress["done"].as_u64().unwrap() < progress["total"].as_u64().unwrap(),
        "stopped before the last fold: {progress}"
    );
    assert_eq!(done["result"], Value::Null);

    // Nothing registered, nothing left on disk.
    let (_, models) = get_json(&client(), &format!("{}/v1/models", sink.url)).await;
    assert_eq!(models["count"], 0, "{models:#}");
    let left: Vec<_> = std::fs::read_dir(&sink.models_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let (status, _) = cancel(&sink, id).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        metrics(&sink)
            .await
            .contains("outpost_sink_training_jobs_total{outcome=\"cancelled\"} 1")
    );
    sink.sink.shutdown().await.unwrap();
}

/// What the sink's shutdown does to its jobs ([`Jobs::close`]), on the jobs
/// directly: the server aborts its tasks, so its API cannot show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_jobs_cancels_the_running_job_through_its_token_and_the_worker_ends() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let storage =
        Arc::new(SqliteStorage::open(&dir.path().join("sink.db"), Duration::from_secs(5)).unwrap());
    storage
        .add_gateway("gw-a", &cloud_sink::auth::hash_token("t"))
        .unwrap();
    let items = readings(&DEVICES[..3], 1500, &[])
        .into_iter()
        .map(OutboxItem::Reading)
        .collect();
    storage.ingest("gw-a", &batch_of("gw-a", 1, items)).unwrap();
    let jobs = Jobs::new(
        storage,
        Arc::new(Metrics::new()),
        Settings {
            db_path: dir.path().join("sink.db"),
            models_dir: config.models_dir().unwrap(),
            queue_capacity: 4,
            keep_finished: 10,
            max_readings: config.training.max_readings,
            default_period: config.training.period,
            margin: config.training.margin,
        },
    );
    let worker = jobs.spawn_worker();
    let spec = JobSpec::check(
        &SpecInput {
            scope: "fleet",
            family: Some("autoencoder"),
            ..SpecInput::default()
        },
        config.training.period,
    )
    .unwrap();
    let ann = || Trigger::Api {
        operator: "ann".into(),
    };
    let running = jobs.submit(spec.clone(), ann()).unwrap().id;
    let queued = jobs.submit(spec.clone(), ann()).unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(120);
    while jobs.get(running).unwrap().stage != "training" {
        assert!(Instant::now() < deadline, "{:#?}", jobs.get(running));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    jobs.close();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker ends once its job has stopped")
        .unwrap();
    let stopped = jobs.get(running).unwrap();
    assert_eq!(stopped.state, JobState::Cancelled, "{stopped:#?}");
    let error = stopped.error.as_ref().unwrap();
    assert_eq!(
        (error.code, error.message.as_str()),
        ("cancelled", "cancelled: the sink is shutting down")
    );
    let stages: Vec<&str> = stopped.stages.iter().map(|s| s.stage).collect();
    assert_eq!(stages[stages.len() - 2..], ["training", "cancelled"]);
    let never = jobs.get(queued).unwrap();
    assert_eq!(never.state, JobState::Cancelled);
    assert_eq!(never.started, None);
    assert_eq!(jobs.submit(spec, ann()).unwrap_err(), SubmitError::Closed);
    assert!(!config.models_dir().unwrap().join("fleet").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_fires_on_enough_new_readings_or_labels_and_not_before() {
    let mut sink = start(|c| {
        c.training.schedule = Config::from_toml(
            r#"
            [[training.schedule]]
            scope = "fleet"
            family = "gaussian"
            every = "200ms"
            min_new_readings = 300
            [[training.schedule]]
            scope = "pump-9"
            family = "gaussian"
            every = "200ms"
            min_new_labels = 1
            "#,
        )
        .unwrap()
        .training
        .schedule;
    })
    .await;
    // An alert of pump-9 (not a reading: it does not count for the fleet).
    sink.send(vec![OutboxItem::Alert(alert("pump-9", 10, 20))])
        .await;
    // 240 of 300 readings: several checks pass, nothing fires.
    let all = readings(&["pump-0"], 200, &[]);
    sink.send_readings(all[..240].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(jobs(&sink).await.is_empty(), "{:#?}", jobs(&sink).await);

    // 60 more: 300, the fleet schedule fires once.
    sink.send_readings(all[240..300].to_vec()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let fired = loop {
        let list = jobs(&sink).await;
        if let Some(j) = list.first() {
            break j.clone();
        }
        assert!(Instant::now() < deadline, "the schedule did not fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fired["scope"], "fleet");
    assert_eq!(fired["trigger"]["kind"], "schedule");
    assert_eq!(fired["trigger"]["index"], 0);
    assert_eq!(fired["trigger"]["new_readings"], 300);
    assert_eq!(fired["family"], "gaussian");
    let id = fired["id"].as_u64().unwrap();
    wait_job(&sink, id, Duration::from_secs(120), finished).await;
    // Nothing new since that job started: no second job.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(jobs(&sink).await.len(), 1, "{:#?}", jobs(&sink).await);

    // One operator label on pump-9's alert fires pump-9's schedule.
    let (_, list) = get_json(&client(), &format!("{}/v1/alerts?device=pump-9", sink.url)).await;
    let alert_id = list["alerts"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = post_json(
        &format!("{}/v1/alerts/{alert_id}/label", sink.url),
        Some(&sink.operator),
        &json!({"true_alarm": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fired = loop {
        let list = jobs(&sink).await;
        if list.len() == 2 {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "the label schedule did not fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fired["scope"], "pump-9");
    assert_eq!(fired["devices"], json!(["pump-9"]));
    assert_eq!(fired["trigger"]["new_labels"], 1);
    let j = wait_job(
        &sink,
        fired["id"].as_u64().unwrap(),
        Duration::from_secs(60),
        finished,
    )
    .await;
    assert_eq!(
        j["error"]["code"], "no_data",
        "pump-9 has no readings: {j:#}"
    );
}

#[test]
fn check_config_exits_78_naming_a_bad_schedule_and_operator_tokens_are_made_by_the_cli() {
    let bin = env!("CARGO_BIN_EXE_outpost-cloud-sink");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nsqlite_path = \"{}\"\n[[training.schedule]]\nscope = \"fleet\"\nfamily = \"gaussian\"\nevery = \"1ms\"\n",
            dir.path().join("sink.db").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("training.schedule[0].every: 1ms: must be at least 100ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains("training.schedule[0]: set min_new_readings"),
        "{stderr}"
    );

    let out = std::process::Command::new(bin)
        .args(["operator-token", "ann"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);
    let line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let ops = OperatorTokens::parse(&line).unwrap();
    assert_eq!(ops.operator(&token), Some("ann"));
    let bad = std::process::Command::new(bin)
        .args(["operator-token", "a b"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
