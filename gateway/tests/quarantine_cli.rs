//! `outpost-gateway quarantine list|show|purge` against an outbox filled
//! through the library and closed, as the stopped daemon would leave it.
#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outpost_gateway::config::StorageConfig;
use outpost_gateway::outbox::{Outbox, QuarantineEntry};
use protocol::Timestamp;

/// 2025-01-01T00:00:00Z and 2026-01-01T00:00:00Z, in ns.
const Y2025: i64 = 1_735_689_600_000_000_000;
const Y2026: i64 = 1_767_225_600_000_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    config: PathBuf,
    outbox: PathBuf,
}

fn storage(path: &Path) -> StorageConfig {
    StorageConfig {
        path: path.to_owned(),
        ..StorageConfig::default()
    }
}

fn entry(received: i64, origin: &str, reason: &str, payload: &[u8]) -> QuarantineEntry {
    QuarantineEntry {
        received: Timestamp(received),
        origin: origin.into(),
        reason: reason.into(),
        detail: format!("{reason} detail"),
        payload: payload.to_vec(),
        payload_len: payload.len(),
    }
}

/// A config and an outbox holding, by id: 0 a 2025 `syntax` text payload,
/// 1 a 2025 `too_large` binary payload, 2 a 2026 `syntax` text payload.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"gateway_id = "gw-1"
[storage]
path = "{}"
[mqtt]
[[mqtt.subscriptions]]
topic = "outpost/sensors/#"
[uplink]
url = "http://127.0.0.1:8080"
token = "secret"
"#,
            outbox.display()
        ),
    )
    .unwrap();
    let ob = Outbox::open(&outbox, &storage(&outbox)).unwrap();
    ob.quarantine(&entry(
        Y2025,
        "mqtt:outpost/sensors/pump-1",
        "syntax",
        b"{\"n\":\"temp\",\"v\":\n",
    ))
    .unwrap();
    ob.quarantine(&entry(
        Y2025 + 1,
        "http:127.0.0.1",
        "too_large",
        &[0xde, 0xad, 0xbe, 0xef, 0xff],
    ))
    .unwrap();
    ob.quarantine(&entry(
        Y2026,
        "http:127.0.0.1?device=tank-1",
        "syntax",
        b"level,oops",
    ))
    .unwrap();
    ob.flush().unwrap();
    drop(ob);
    Fixture {
        _dir: dir,
        config,
        outbox,
    }
}

fn quarantine(f: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-gateway"))
        .arg("quarantine")
        .args(args)
        .arg("--config")
        .arg(&f.config)
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ids_in_lines(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split('\t').next()?.parse().ok())
        .collect()
}

#[test]
fn list_shows_newest_first_filters_by_reason_and_prints_json() {
    let f = fixture();
    let all = stdout_ok(&quarantine(&f, &["list"]));
    assert_eq!(ids_in_lines(&all), vec![2, 1, 0], "{all}");
    assert!(
        all.lines().all(|l| l.split('\t').count() == 5),
        "one line per entry, newlines in payloads escaped:\n{all}"
    );
    assert!(all.contains("2026-01-01T00:00:00"), "{all}");

    let syntax = stdout_ok(&quarantine(&f, &["list", "--reason", "syntax"]));
    assert_eq!(ids_in_lines(&syntax), vec![2, 0], "{syntax}");

    let json = stdout_ok(&quarantine(
        &f,
        &["list", "--reason", "syntax", "--json", "--limit", "1"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 1, "{json}");
    assert_eq!(arr[0]["id"], 2);
    assert_eq!(arr[0]["reason"], "syntax");
    assert_eq!(arr[0]["origin"], "http:127.0.0.1?device=tank-1");
    assert_eq!(arr[0]["received_ns"], Y2026);
    assert_eq!(arr[0]["payload"], "level,oops");

    let none = stdout_ok(&quarantine(&f, &["list", "--reason", "nope", "--json"]));
    assert_eq!(none.trim(), "[]");
}

#[test]
fn show_prints_a_text_payload_as_text_and_a_binary_one_as_hex() {
    let f = fixture();
    let text = stdout_ok(&quarantine(&f, &["show", "0"]));
    assert!(
        text.contains("origin:   mqtt:outpost/sensors/pump-1"),
        "{text}"
    );
    assert!(text.contains("reason:   syntax"), "{text}");
    assert!(text.contains("shown as utf-8"), "{text}");
    assert!(text.contains("{\"n\":\"temp\",\"v\":\n"), "{text}");

    let bin = stdout_ok(&quarantine(&f, &["show", "1"]));
    assert!(bin.contains("shown as hex"), "{bin}");
    assert!(bin.contains("deadbeefff"), "{bin}");

    let json = stdout_ok(&quarantine(&f, &["show", "1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (v["payload_encoding"].as_str(), v["payload"].as_str()),
        (Some("hex"), Some("deadbeefff"))
    );

    let missing = quarantine(&f, &["show", "42"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no quarantine entry 42"));
}

#[test]
fn purge_deletes_nothing_without_yes_and_only_the_matches_with_it() {
    let f = fixture();
    let dry = stdout_ok(&quarantine(
        &f,
        &[
            "purge",
            "--reason",
            "syntax",
            "--before",
            "2025-06-01T00:00:00Z",
        ],
    ));
    assert_eq!(ids_in_lines(&dry), vec![0], "{dry}");
    assert!(dry.contains("1 entries would be deleted"), "{dry}");
    assert_eq!(
        ids_in_lines(&stdout_ok(&quarantine(&f, &["list"]))),
        vec![2, 1, 0],
        "a dry run deletes nothing"
    );

    let done = stdout_ok(&quarantine(
        &f,
        &[
            "purge",
            "--reason",
            "syntax",
            "--before",
            "2025-06-01T00:00:00Z",
            "--yes",
        ],
    ));
    assert!(done.contains("deleted 1 entries"), "{done}");
    assert_eq!(
        ids_in_lines(&stdout_ok(&quarantine(&f, &["list"]))),
        vec![2, 1]
    );

    let done = stdout_ok(&quarantine(&f, &["purge", "--yes"]));
    assert!(
        done.contains("deleted 2 entries; 0 bytes of quarantine left"),
        "{done}"
    );
    assert_eq!(stdout_ok(&quarantine(&f, &["list"])), "");

    let bad = quarantine(&f, &["purge", "--before", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "clap refuses a bad --before");
}

#[test]
fn every_command_refuses_a_database_the_gateway_holds_with_a_clear_message() {
    let f = fixture();
    // This process plays the running daemon.
    let _held = Outbox::open(&f.outbox, &storage(&f.outbox)).unwrap();
    for args in [&["list"][..], &["show", "0"], &["purge", "--yes"]] {
        let out = quarantine(&f, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("the gateway seems to be running: stop it first"),
            "{args:?}: {err}"
        );
    }
    drop(_held);
    assert_eq!(
        ids_in_lines(&stdout_ok(&quarantine(&f, &["list"]))),
        vec![2, 1, 0],
        "nothing was purged while locked"
    );
}

#[test]
fn a_missing_outbox_is_reported_and_not_created() {
    let f = fixture();
    std::fs::remove_dir_all(&f.outbox).unwrap();
    let out = quarantine(&f, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no outbox database"));
    assert!(!f.outbox.exists());
}
