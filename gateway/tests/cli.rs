//! The binary's command line: config checking, exit codes, version.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost-gateway"))
}

const GOOD: &str = r#"
gateway_id = "gw-1"
[mqtt]
[[mqtt.subscriptions]]
topic = "outpost/sensors/#"
[uplink]
url = "http://127.0.0.1:8080"
token = "secret"
"#;

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = gateway().arg("check-config").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_reports_every_problem_with_its_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let bad = GOOD
        .replace("gw-1", "")
        .replace("outpost/sensors/#", "a/#/b")
        .replace("http://127.0.0.1:8080", "http://sink.example.com");
    std::fs::write(&path, bad).unwrap();
    let out = gateway().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["gateway_id", "mqtt.subscriptions[0].topic", "uplink.url"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(
        err.contains(&path.display().to_string()),
        "the file is named: {err}"
    );
}

#[test]
fn run_with_a_bad_config_exits_78_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, "gateway_id = 5\n").unwrap();
    let out = gateway()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        !dir.path().join("outbox").exists(),
        "nothing may be created on a config error"
    );
}

#[test]
fn version_and_help_are_printed() {
    let out = gateway().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = gateway().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "check-config", "quarantine"] {
        assert!(help.contains(sub), "{help}");
    }
}
