//! Helpers shared by the integration tests: batches, a running sink, a client.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloud_sink::storage::Storage;
use cloud_sink::{Config, RunningSink};
use protocol::alert::Alert;
use protocol::batch::{OutboxItem, OutboxRecord};
use protocol::{Reading, Timestamp, UplinkBatch};
use reqwest::StatusCode;
use serde_json::Value;

/// A batch from `gateway` with one reading per sequence number; the reading's
/// timestamp is `ts_base + seq` so equal seqs mean equal identities.
pub fn batch(gateway: &str, seqs: std::ops::RangeInclusive<u64>, device: &str) -> UplinkBatch {
    let first = *seqs.start();
    let items = seqs
        .map(|seq| {
            OutboxItem::Reading(
                Reading::new(
                    device,
                    "temperature",
                    Timestamp(1_700_000_000_000_000_000 + seq as i64),
                    seq as f64,
                )
                .unwrap()
                .with_unit("Cel"),
            )
        })
        .collect();
    batch_of(gateway, first, items)
}

/// 2026-01-01T00:00:00Z, in seconds: the clock of the training fixtures.
pub const T0: i64 = 1_767_225_600;
pub const SECOND: i64 = 1_000_000_000;

/// `second` seconds after [`T0`].
pub fn at(second: i64) -> Timestamp {
    Timestamp((T0 + second) * SECOND)
}

/// An edge alert of `device` from second `from` to `to` (after [`T0`]).
pub fn alert(device: &str, from: i64, to: i64) -> Alert {
    Alert {
        device: device.into(),
        start: at(from),
        end: at(to),
        score: 12.0,
        threshold: 8.0,
        model: "fallback".into(),
        model_version: 0,
        channels: Vec::new(),
        raised: at(to),
    }
}

/// A batch from `gateway` of `items` with consecutive sequence numbers from
/// `first_seq`.
pub fn batch_of(gateway: &str, first_seq: u64, items: Vec<OutboxItem>) -> UplinkBatch {
    let records = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| OutboxRecord {
            seq: first_seq + i as u64,
            item,
        })
        .collect();
    UplinkBatch::new(gateway, records).unwrap()
}

pub struct Sink {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub sink: RunningSink,
    pub url: String,
}

impl Sink {
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("sink.db")
    }
}

pub fn config_in(dir: &Path) -> Config {
    Config::for_sqlite(dir.join("sink.db"))
}

/// Adds `gateways` to `config`'s database, then starts a sink on
/// 127.0.0.1:0 (on `storage` when given, else on the database itself);
/// returns it, its URL and the gateways' tokens in order.
pub async fn spawn_with_gateways(
    config: &Config,
    gateways: &[&str],
    storage: Option<Arc<dyn Storage>>,
) -> (RunningSink, String, Vec<String>) {
    let tokens = gateways
        .iter()
        .map(|g| cloud_sink::admin::add_gateway(config, g).unwrap())
        .collect();
    let sink = match storage {
        None => cloud_sink::spawn(config.clone()).await.unwrap(),
        Some(s) => cloud_sink::spawn_with_storage(config.clone(), s)
            .await
            .unwrap(),
    };
    let url = sink.url();
    (sink, url, tokens)
}

/// Starts a sink on 127.0.0.1:0 with a fresh database and gateways `gw-a` and
/// `gw-b`; returns it with their tokens.
pub async fn start() -> (Sink, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let (sink, url, tokens) = spawn_with_gateways(&config, &["gw-a", "gw-b"], None).await;
    let [token_a, token_b] = <[String; 2]>::try_from(tokens).unwrap();
    (
        Sink {
            dir,
            config,
            sink,
            url,
        },
        token_a,
        token_b,
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// POSTs an encoded batch with the protocol's headers; returns status and JSON body.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    batch: &UplinkBatch,
) -> (StatusCode, Value) {
    let body = batch.encode(3).unwrap();
    post_raw(
        client,
        url,
        token,
        body,
        Some(&batch.idempotency_key()),
        "application/cbor",
    )
    .await
}

pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
    key: Option<&str>,
    content_type: &str,
) -> (StatusCode, Value) {
    let mut req = client
        .post(format!("{url}/v1/ingest"))
        .header("Content-Type", content_type)
        .header("Content-Encoding", "zstd")
        .body(body);
    if let Some(token) = token {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn stored_count(client: &reqwest::Client, url: &str) -> u64 {
    let (status, stats) = get_json(client, &format!("{url}/v1/stats")).await;
    assert_eq!(status, StatusCode::OK);
    stats["readings_stored"].as_u64().unwrap()
}

pub async fn readings_count(client: &reqwest::Client, url: &str) -> usize {
    let (status, body) = get_json(client, &format!("{url}/v1/readings?limit=100000")).await;
    assert_eq!(status, StatusCode::OK);
    body["readings"].as_array().unwrap().len()
}

/// The sink's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
