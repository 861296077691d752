//! Helpers shared by the integration tests: batches, a running sink, a client.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cloud_sink::{Config, RunningSink};
use protocol::batch::{OutboxItem, OutboxRecord};
use protocol::{Reading, Timestamp, UplinkBatch};
use reqwest::StatusCode;
use serde_json::Value;

/// A batch from `gateway` with one reading per sequence number; the reading's
/// timestamp is `ts_base + seq` so equal seqs mean equal identities.
pub fn batch(gateway: &str, seqs: std::ops::RangeInclusive<u64>, device: &str) -> UplinkBatch {
    let records = seqs
        .map(|seq| OutboxRecord {
            seq,
            item: OutboxItem::Reading(
                Reading::new(
                    device,
                    "temperature",
                    Timestamp(1_700_000_000_000_000_000 + seq as i64),
                    seq as f64,
                )
                .unwrap()
                .with_unit("Cel"),
            ),
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

/// Starts a sink on 127.0.0.1:0 with a fresh database and gateways `gw-a` and
/// `gw-b`; returns it with their tokens.
pub async fn start() -> (Sink, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let token_a = cloud_sink::admin::add_gateway(&config, "gw-a").unwrap();
    let token_b = cloud_sink::admin::add_gateway(&config, "gw-b").unwrap();
    let sink = cloud_sink::spawn(config.clone()).await.unwrap();
    let url = sink.url();
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
