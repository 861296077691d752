//! The `[http]` section through the binary: an HTTP-only gateway is a valid
//! config, and `OUTPOST_HTTP_TOKEN` overrides `http.token`.

use std::process::Command;

const HTTP_ONLY: &str = r#"
gateway_id = "gw-1"
[http]
listen = "127.0.0.1:8081"
token = ""
[uplink]
url = "http://127.0.0.1:8080"
token = "secret"
"#;

fn check_config(text: &str, env_token: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("config written");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-gateway"));
    cmd.arg("check-config")
        .arg(&path)
        .env_remove("OUTPOST_HTTP_TOKEN");
    if let Some(t) = env_token {
        cmd.env("OUTPOST_HTTP_TOKEN", t);
    }
    cmd.output().expect("gateway runs")
}

#[test]
fn an_empty_http_token_is_refused_unless_the_environment_supplies_one() {
    let out = check_config(HTTP_ONLY, None);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check_config(HTTP_ONLY, Some("from-the-environment"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_gateway_without_any_source_is_refused() {
    let out = check_config(
        &HTTP_ONLY
            .replace("[http]", "[log]")
            .replace("listen = \"127.0.0.1:8081\"\ntoken = \"\"\n", ""),
        None,
    );
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no source is configured; add one of [mqtt]"),
        "{err}"
    );
}
