//! The built binary: config checking, gateway provisioning, serving, signals.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] fns; a panic is a failed test.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-cloud-sink");

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sink.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n{extra}\n[storage]\nsqlite_path = \"{}\"\n",
        dir.join("sink.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_and_version_work() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "check-config", "gateway"] {
        assert!(help.contains(word), "{help}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_a_good_file_and_exits_78_listing_every_problem_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n[limits]\nmax_records_per_batch = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "tls.cert: file not found",
        "tls.key: file not found",
        "storage.sqlite_path",
        "limits.max_records_per_batch",
    ] {
        assert!(stderr.contains(key), "missing {key} in\n{stderr}");
    }

    let unparsable = dir.path().join("typo.toml");
    std::fs::write(&unparsable, "lissen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&unparsable)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn serve_exits_78_on_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("listening on"));
}

#[tokio::test]
async fn gateway_add_prints_only_a_token_that_then_works_against_the_served_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");

    let out = Command::new(BIN)
        .args(["gateway", "add", "gw-cli", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout must hold the token alone: {stdout:?}"
    );
    let token = stdout.trim().to_owned();
    assert_eq!(token.len(), 64);

    // Adding the same name again fails and prints no token.
    let again = Command::new(BIN)
        .args(["gateway", "add", "gw-cli", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());

    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(url) = line.strip_prefix("listening on ") {
                tx.send(url.trim().to_owned()).unwrap();
                sent = true;
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no `listening on` line");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let c = client();
    let (status, body) = post(&c, &url, Some(&token), &batch("gw-cli", 1..=7, "dev-9")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 7);

    let list = Command::new(BIN)
        .args(["gateway", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(list.status.success());
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("gw-cli") && l.contains(" 7 ")),
        "{listing}"
    );

    // SIGTERM: graceful shutdown, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "sink did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
