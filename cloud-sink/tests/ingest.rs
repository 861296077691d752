//! Black-box tests of the ingest and query API against a real sink on 127.0.0.1:0.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] fns; a panic is a failed test.

mod common;

use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn a_valid_batch_is_stored_and_can_be_queried() {
    let (sink, token, _) = start().await;
    let c = client();
    let (status, body) = post(&c, &sink.url, Some(&token), &batch("gw-a", 1..=10, "dev-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!({"stored": 10, "duplicates": 0}));

    let (status, body) = get_json(
        &c,
        &format!(
            "{}/v1/readings?device=dev-1&channel=temperature&from=1700000000000000003&to=1700000000000000006",
            sink.url
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let readings = body["readings"].as_array().unwrap();
    assert_eq!(body["count"], 3);
    assert_eq!(readings.len(), 3);
    let first = &readings[0];
    assert_eq!(first["device"], "dev-1");
    assert_eq!(first["channel"], "temperature");
    assert_eq!(first["ts_ns"], 1_700_000_000_000_000_003i64);
    assert_eq!(first["value"], 3.0);
    assert_eq!(first["unit"], "Cel");
    assert_eq!(first["gateway"], "gw-a");
    assert_eq!(first["seq"], 3);
    assert!(
        first["ts"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20"),
        "{first}"
    );

    // RFC 3339 bounds work too.
    let (_, body) = get_json(
        &c,
        &format!(
            "{}/v1/readings?device=dev-1&from=2023-11-14T22:13:20Z&to=2023-11-14T22:13:21Z&limit=4",
            sink.url
        ),
    )
    .await;
    assert_eq!(body["count"], 4);
    sink.sink.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_batch_sent_twice_is_stored_once_and_duplicates_are_counted() {
    let (sink, token, _) = start().await;
    let c = client();
    let b = batch("gw-a", 1..=5, "dev-1");
    let (s1, r1) = post(&c, &sink.url, Some(&token), &b).await;
    let (s2, r2) = post(&c, &sink.url, Some(&token), &b).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(r1, serde_json::json!({"stored": 5, "duplicates": 0}));
    assert_eq!(r2, serde_json::json!({"stored": 0, "duplicates": 5}));
    assert_eq!(readings_count(&c, &sink.url).await, 5);

    let (_, gws) = get_json(&c, &format!("{}/v1/gateways", sink.url)).await;
    let a = gws["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "gw-a")
        .unwrap()
        .clone();
    assert_eq!(a["readings_stored"], 5);
    assert_eq!(a["duplicates"], 5);
    assert_eq!(a["batches"], 2);
    assert!(a["last_seen"].is_string());
    let (_, stats) = get_json(&c, &format!("{}/v1/stats", sink.url)).await;
    assert_eq!(
        stats,
        serde_json::json!({"gateways": 2, "batches": 2, "readings_stored": 5, "duplicates": 5})
    );
}

#[tokio::test]
async fn a_wiped_gateway_restarting_its_sequence_in_a_new_epoch_loses_nothing() {
    let (sink, token, _) = start().await;
    let c = client();
    let before = batch("gw-a", 1..=5, "dev-1").with_epoch(7);
    let (_, r1) = post(&c, &sink.url, Some(&token), &before).await;
    assert_eq!(r1, serde_json::json!({"stored": 5, "duplicates": 0}));
    // Same sequence numbers, new readings (another device), new outbox epoch.
    let after = batch("gw-a", 1..=5, "dev-2").with_epoch(8);
    let (_, r2) = post(&c, &sink.url, Some(&token), &after).await;
    assert_eq!(r2, serde_json::json!({"stored": 5, "duplicates": 0}));
    // Reuse within one epoch is a gateway bug: counted as a conflict, but the
    // readings are still stored — an alarm must not cost data.
    let reused = batch("gw-a", 1..=5, "dev-3").with_epoch(8);
    let (_, r3) = post(&c, &sink.url, Some(&token), &reused).await;
    assert_eq!(r3, serde_json::json!({"stored": 5, "duplicates": 0}));
    assert_eq!(readings_count(&c, &sink.url).await, 15);
    let metrics = metrics_text(&c, &sink.url).await;
    assert!(
        metrics.contains("outpost_sink_seq_conflicts_total 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn overlapping_batches_store_each_reading_once() {
    let (sink, token, _) = start().await;
    let c = client();
    let (_, r1) = post(&c, &sink.url, Some(&token), &batch("gw-a", 1..=10, "dev-1")).await;
    let (_, r2) = post(&c, &sink.url, Some(&token), &batch("gw-a", 6..=15, "dev-1")).await;
    let (_, r3) = post(&c, &sink.url, Some(&token), &batch("gw-a", 3..=4, "dev-1")).await;
    assert_eq!(r1, serde_json::json!({"stored": 10, "duplicates": 0}));
    assert_eq!(r2, serde_json::json!({"stored": 5, "duplicates": 5}));
    assert_eq!(r3, serde_json::json!({"stored": 0, "duplicates": 2}));
    assert_eq!(readings_count(&c, &sink.url).await, 15);
    assert_eq!(stored_count(&c, &sink.url).await, 15);
}

#[tokio::test]
async fn a_missing_token_is_401_and_nothing_is_stored() {
    let (sink, _, _) = start().await;
    let c = client();
    let (status, body) = post(&c, &sink.url, None, &batch("gw-a", 1..=3, "dev-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(readings_count(&c, &sink.url).await, 0);
}

#[tokio::test]
async fn a_wrong_token_is_401_and_nothing_is_stored() {
    let (sink, _, _) = start().await;
    let c = client();
    let bogus = "0".repeat(64);
    let (status, _) = post(&c, &sink.url, Some(&bogus), &batch("gw-a", 1..=3, "dev-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(readings_count(&c, &sink.url).await, 0);
}

#[tokio::test]
async fn the_token_of_another_gateway_is_403_and_nothing_is_stored() {
    let (sink, _token_a, token_b) = start().await;
    let c = client();
    let (status, body) = post(
        &c,
        &sink.url,
        Some(&token_b),
        &batch("gw-a", 1..=3, "dev-1"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("gw-a"));
    assert_eq!(readings_count(&c, &sink.url).await, 0);
}

#[tokio::test]
async fn a_garbage_body_is_400_with_a_json_error() {
    let (sink, token, _) = start().await;
    let c = client();
    for body in [
        b"not zstd at all".to_vec(),
        zstd::bulk::compress(b"\xff\xff not cbor", 3).unwrap(),
        Vec::new(),
    ] {
        let (status, json) =
            post_raw(&c, &sink.url, Some(&token), body, None, "application/cbor").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert!(
            json["error"].as_str().unwrap().contains("invalid batch"),
            "{json}"
        );
    }
    assert_eq!(readings_count(&c, &sink.url).await, 0);
}

#[tokio::test]
async fn a_wrong_content_type_or_encoding_is_415() {
    let (sink, token, _) = start().await;
    let c = client();
    let body = batch("gw-a", 1..=3, "dev-1").encode(3).unwrap();
    let (status, json) = post_raw(
        &c,
        &sink.url,
        Some(&token),
        body.clone(),
        None,
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{json}");

    let resp = c
        .post(format!("{}/v1/ingest", sink.url))
        .header("Content-Type", "application/cbor")
        .header("Content-Encoding", "gzip")
        .header("Authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(readings_count(&c, &sink.url).await, 0);
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_413_and_a_batch_over_the_record_limit_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.limits.max_body_bytes = bytesize::ByteSize::kib(4);
    config.limits.max_records_per_batch = 50;
    let (_sink, url, tokens) = spawn_with_gateways(&config, &["gw-a"], None).await;
    let token = tokens[0].clone();
    let c = client();

    // Declared length over the limit: refused without reading the body.
    let (status, json) = post_raw(
        &c,
        &url,
        Some(&token),
        vec![0u8; 64 * 1024],
        None,
        "application/cbor",
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert!(json["error"].is_string());

    // A large body refused on Content-Length does not break the client either.
    let (status, _) = post_raw(
        &c,
        &url,
        Some(&token),
        vec![0u8; 16 * 1024 * 1024],
        None,
        "application/cbor",
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Streamed (chunked, no Content-Length): cut off once past the limit.
    assert_eq!(chunked_post_status(&url, &token, 16, 1024).await, Some(413));

    // Too many records: 413 too, so the gateway splits.
    let (status, json) = post(&c, &url, Some(&token), &batch("gw-a", 1..=51, "dev-1")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    let (status, _) = post(&c, &url, Some(&token), &batch("gw-a", 1..=50, "dev-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(readings_count(&c, &url).await, 50);
}

#[tokio::test]
async fn data_survives_a_restart_of_the_sink() {
    let (sink, token, _) = start().await;
    let c = client();
    post(&c, &sink.url, Some(&token), &batch("gw-a", 1..=20, "dev-1")).await;
    let Sink {
        dir, config, sink, ..
    } = sink;
    sink.shutdown().await.unwrap();

    let sink = cloud_sink::spawn(config).await.unwrap();
    let url = sink.url();
    assert_eq!(readings_count(&c, &url).await, 20);
    // The token still works, and the old batch is still recognised.
    let (status, body) = post(&c, &url, Some(&token), &batch("gw-a", 11..=30, "dev-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"stored": 10, "duplicates": 10}));
    sink.shutdown().await.unwrap();
    drop(dir);
}

#[tokio::test]
async fn health_metrics_and_bad_queries_answer_as_documented() {
    let (sink, token, _) = start().await;
    let c = client();
    post(&c, &sink.url, Some(&token), &batch("gw-a", 1..=4, "dev-1")).await;
    post(&c, &sink.url, Some(&token), &batch("gw-a", 1..=4, "dev-1")).await;
    post(&c, &sink.url, None, &batch("gw-a", 1..=4, "dev-1")).await;

    let (status, health) = get_json(&c, &format!("{}/health", sink.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");

    let text = metrics_text(&c, &sink.url).await;
    for needle in [
        "outpost_sink_batches_total{outcome=\"stored\"} 2",
        "outpost_sink_batches_total{outcome=\"unauthorized\"} 1",
        "outpost_sink_readings_stored_total 4",
        "outpost_sink_readings_duplicate_total 4",
        "outpost_sink_ingest_seconds_count 2",
        "outpost_sink_http_requests_total{path=\"/v1/ingest\",status=\"401\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    for query in [
        "limit=0",
        "limit=100001",
        "limit=abc",
        "from=yesterday",
        "to=2023-13-01T00:00:00Z",
    ] {
        let (status, body) = get_json(&c, &format!("{}/v1/readings?{query}", sink.url)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    let (status, body) = get_json(&c, &format!("{}/nope", sink.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

/// Sends `chunks` chunks of `size` zero bytes with chunked transfer encoding
/// over a raw socket; returns the status code if a response arrives.
async fn chunked_post_status(url: &str, token: &str, chunks: usize, size: usize) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/cbor\r\n\
         Content-Encoding: zstd\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; size];
    for _ in 0..chunks {
        // The server may stop reading (and close) once over the limit.
        if stream
            .write_all(format!("{size:x}\r\n").as_bytes())
            .await
            .is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut response),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
