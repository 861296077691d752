//! HTTPS with a certificate generated at test time.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] fns; a panic is a failed test.

mod common;

use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn https_with_a_self_signed_certificate_serves_ingest_to_a_client_that_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();

    let mut config = config_in(dir.path());
    config.tls = Some(cloud_sink::config::TlsConfig {
        cert: Some(cert_path),
        key: Some(key_path),
        client_ca: None,
    });
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let token = cloud_sink::admin::add_gateway(&config, "gw-a").unwrap();
    let sink = cloud_sink::spawn(config).await.unwrap();
    assert!(sink.is_tls());
    let url = format!("https://localhost:{}", sink.local_addr().port());

    let trusted = reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([trusted])
        .build()
        .unwrap();
    let (status, body) = post(&client, &url, Some(&token), &batch("gw-a", 1..=3, "dev-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 3);
    assert_eq!(readings_count(&client, &url).await, 3);

    // A client that does not trust the certificate cannot connect.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{url}/health"))
            .send()
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = client
        .get(format!(
            "http://127.0.0.1:{}/health",
            sink.local_addr().port()
        ))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true));

    sink.shutdown().await.unwrap();
}
