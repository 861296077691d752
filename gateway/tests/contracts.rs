//! Contracts, de-duplication and clock quality: each rule × each action, unit
//! normalisation, pattern precedence, bounded state, the ingest path (partial
//! rejection, quarantine entries, dedup only after a durable commit) and the
//! clock-correction path with an injected clock.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_gateway::clock::{
    self, ClockConfig, ClockMonitor, ClockNow, ManualClock, Resolution, SyncCheck,
};
use outpost_gateway::config::{ConfigError, GatewayConfig, IngestConfig, StorageConfig};
use outpost_gateway::contracts::stage::Validation;
use outpost_gateway::contracts::{ContractSet, ContractsError, Rule, SeriesTable, Verdict};
use outpost_gateway::envelope::{Commit, Content, Envelope};
use outpost_gateway::ingest::Ingest;
use outpost_gateway::metrics::Metrics;
use outpost_gateway::outbox::Outbox;
use protocol::batch::OutboxItem;
use protocol::{Quality, Reading, Timestamp};
use tokio::sync::{mpsc, watch};

const SEC: i64 = 1_000_000_000;
/// 2027-01-15: after every floor.
const NOW: i64 = 1_800_000_000 * SEC;

fn synced() -> ClockNow {
    ClockNow {
        wall: Timestamp(NOW),
        monotonic_ns: 1,
        synced: true,
    }
}

fn set(text: &str) -> ContractSet {
    ContractSet::parse(text, "test.toml").unwrap()
}

fn r(device: &str, ch: &str, secs: f64, v: f64, unit: Option<&str>) -> Reading {
    let mut r = Reading::new(device, ch, Timestamp(NOW + (secs * 1e9) as i64), v).unwrap();
    r.unit = unit.map(str::to_owned);
    r
}

/// Evaluates readings in order on fresh series state; the verdicts.
fn run(s: &ContractSet, readings: Vec<Reading>) -> Vec<(Verdict, Vec<Rule>)> {
    let mut series = SeriesTable::new(100);
    readings
        .into_iter()
        .map(|x| {
            let e = s.evaluate(x, &mut series, &synced());
            (e.verdict, e.flagged)
        })
        .collect()
}

fn rejected_by(v: &Verdict) -> Option<&'static str> {
    match v {
        Verdict::Reject { violation, .. } => Some(violation.reason_code()),
        Verdict::Accept(_) => None,
    }
}

fn accepted(v: &Verdict) -> &Reading {
    match v {
        Verdict::Accept(r) => r,
        Verdict::Reject { violation, .. } => panic!("rejected: {violation}"),
    }
}

/// One rule, both actions: the breaking reading is the last of `readings`.
fn check_rule(rule_toml: &str, rule: Rule, readings: Vec<Reading>) {
    for action in ["reject", "flag"] {
        let text = format!(
            "[[contract]]\nname = \"c\"\ndevice = \"pump-*\"\n{rule_toml}\naction = \"{action}\"\n"
        );
        let out = run(&set(&text), readings.clone());
        let (last, flagged) = out.last().unwrap();
        for (v, _) in &out[..out.len() - 1] {
            assert!(
                rejected_by(v).is_none(),
                "{rule:?}: an earlier reading broke the rule: {v:?}"
            );
        }
        match action {
            "reject" => {
                assert_eq!(rejected_by(last), Some(rule.reason_code()), "{rule:?}");
                let Verdict::Reject { violation, .. } = last else {
                    unreachable!()
                };
                assert_eq!(violation.contract, "c");
                assert!(
                    violation.to_string().contains(rule.name()),
                    "detail names the rule: {violation}"
                );
            }
            _ => {
                let kept = accepted(last);
                assert!(kept.quality.contains(rule.flag()), "{rule:?}: {kept:?}");
                assert_eq!(flagged, &vec![rule]);
            }
        }
    }
}

#[test]
fn the_range_rule_rejects_or_flags_values_outside_min_and_max() {
    check_rule(
        "min = 0.0\nmax = 100.0",
        Rule::Range,
        vec![
            r("pump-1", "t", 0.0, 50.0, None),
            r("pump-1", "t", 1.0, 100.5, None),
        ],
    );
    check_rule(
        "min = 0.0",
        Rule::Range,
        vec![r("pump-1", "t", 0.0, -0.1, None)],
    );
}

#[test]
fn the_rate_rule_compares_with_the_previous_reading_per_second() {
    // 10 → 14 in 2 s is 2/s: fine at max 2.5; 14 → 20 in 1 s is 6/s: not.
    check_rule(
        "max_rate = 2.5",
        Rule::Rate,
        vec![
            r("pump-1", "t", 0.0, 10.0, None),
            r("pump-1", "t", 2.0, 14.0, None),
            r("pump-1", "t", 3.0, 20.0, None),
        ],
    );
}

#[test]
fn the_stuck_rule_fires_on_the_nth_identical_value() {
    check_rule(
        "stuck = 3",
        Rule::Stuck,
        vec![
            r("pump-1", "t", 0.0, 1.0, None),
            r("pump-1", "t", 1.0, 2.0, None),
            r("pump-1", "t", 2.0, 2.0, None),
            r("pump-1", "t", 3.0, 2.0, None),
        ],
    );
}

#[test]
fn the_skew_rules_compare_with_the_gateway_clock() {
    check_rule(
        "max_future_skew = \"1m\"",
        Rule::Skew,
        vec![
            r("pump-1", "t", 59.0, 1.0, None),
            r("pump-1", "t", 61.0, 1.0, None),
        ],
    );
    check_rule(
        "max_past_age = \"1h\"",
        Rule::Skew,
        vec![
            r("pump-1", "t", -3599.0, 1.0, None),
            r("pump-1", "t", -3601.0, 1.0, None),
        ],
    );
}

#[test]
fn the_required_rule_checks_unit_timestamp_and_seq() {
    check_rule(
        "required = [\"unit\"]",
        Rule::Required,
        vec![
            r("pump-1", "t", 0.0, 1.0, Some("Cel")),
            r("pump-1", "t", 1.0, 1.0, None),
        ],
    );
    let mut no_time = r("pump-1", "t", 0.0, 1.0, None);
    no_time.quality = Quality::TIME_FROM_RECEIVE;
    check_rule("required = [\"timestamp\"]", Rule::Required, vec![no_time]);
    let mut with_seq = r("pump-1", "t", 0.0, 1.0, None);
    with_seq.seq = Some(1);
    check_rule(
        "required = [\"seq\"]",
        Rule::Required,
        vec![with_seq, r("pump-1", "t", 1.0, 1.0, None)],
    );
}

#[test]
fn the_unit_rule_converts_what_it_can_and_rejects_or_flags_the_rest() {
    check_rule(
        "unit = \"Cel\"",
        Rule::Unit,
        vec![
            r("pump-1", "t", 0.0, 20.0, Some("Cel")),
            r("pump-1", "t", 1.0, 68.0, Some("Fah")),
            r("pump-1", "t", 2.0, 3.0, Some("A")),
        ],
    );
    // Flagged as a mismatch: range and rate are not applied to a value in a
    // foreign unit, and the series is not updated with it.
    let s =
        set("[[contract]]\nunit = \"Cel\"\nmax = 50.0\nmax_rate = 1.0\nactions.unit = \"flag\"");
    let out = run(
        &s,
        vec![
            r("p", "t", 0.0, 20.0, Some("Cel")),
            r("p", "t", 1.0, 500.0, Some("A")),
            r("p", "t", 2.0, 20.5, Some("Cel")),
        ],
    );
    let mismatched = accepted(&out[1].0);
    assert_eq!(mismatched.quality, Quality::UNIT_MISMATCH);
    assert_eq!(
        (mismatched.value, mismatched.unit.as_deref()),
        (500.0, Some("A"))
    );
    assert_eq!(
        accepted(&out[2].0).quality,
        Quality::empty(),
        "rate vs 20.0, not 500"
    );
}

#[test]
fn units_are_normalised_to_the_contract_unit_and_flagged_converted() {
    let table: &[(&str, f64, &str, f64)] = &[
        ("Cel", 212.0, "Fah", 100.0),
        ("Cel", 273.15, "K", 0.0),
        ("Pa", 2.0, "kPa", 2000.0),
        ("Pa", 1.5, "bar", 150_000.0),
        ("Pa", 10.0, "psi", 68_947.572_931_683_61),
        ("%RH", 0.5, "/", 50.0),
        ("m/s", 4.0, "mm/s", 0.004),
        ("A", 250.0, "mA", 0.25),
        ("m3/s", 3.0, "l/s", 0.003),
        ("m3/s", 7.2, "m3/h", 0.002),
    ];
    for &(canonical, v, unit, want) in table {
        let s = set(&format!("[[contract]]\nunit = \"{canonical}\""));
        let out = run(&s, vec![r("p", "c", 0.0, v, Some(unit))]);
        let got = accepted(&out[0].0);
        assert!(
            (got.value - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{v} {unit} → {} {canonical}, want {want}",
            got.value
        );
        assert_eq!(got.unit.as_deref(), Some(canonical));
        assert_eq!(got.quality, Quality::UNIT_CONVERTED);
    }
    // Same unit: untouched. No unit: taken to be the canonical one.
    let s = set("[[contract]]\nunit = \"Pa\"");
    let out = run(
        &s,
        vec![
            r("p", "c", 0.0, 5.0, Some("Pa")),
            r("p", "c", 1.0, 5.0, None),
        ],
    );
    for (v, _) in &out {
        let x = accepted(v);
        assert_eq!(
            (x.value, x.unit.as_deref(), x.quality),
            (5.0, Some("Pa"), Quality::empty())
        );
    }
}

#[test]
fn a_conversion_that_overflows_is_rejected_as_non_finite_whatever_the_action() {
    let s = set("[[contract]]\nunit = \"Pa\"\naction = \"flag\"");
    let out = run(&s, vec![r("p", "c", 0.0, 1e308, Some("psi"))]);
    assert_eq!(rejected_by(&out[0].0), Some("non_finite_value"));
}

#[test]
fn the_first_matching_contract_wins() {
    let s = set(r#"
        [[contract]]
        name = "special"
        device = "pump-000[0-4]"
        channel = "temperature"
        max = 10.0
        [[contract]]
        name = "pumps"
        device = "pump-*"
        channel = "{temperature,pressure}"
        max = 100.0
        [[contract]]
        name = "fallback"
        max = 1.0
        "#);
    assert_eq!(s.find("pump-0003", "temperature").unwrap().name, "special");
    assert_eq!(s.find("pump-0007", "temperature").unwrap().name, "pumps");
    assert_eq!(s.find("pump-0003", "pressure").unwrap().name, "pumps");
    assert_eq!(s.find("pump-0003", "flow").unwrap().name, "fallback");
    assert_eq!(s.find("boiler-1", "pressure").unwrap().name, "fallback");
    let out = run(&s, vec![r("pump-0003", "temperature", 0.0, 50.0, None)]);
    assert_eq!(
        rejected_by(&out[0].0),
        Some("contract_range"),
        "special applies"
    );
    let out = run(&s, vec![r("pump-0009", "temperature", 0.0, 50.0, None)]);
    assert_eq!(rejected_by(&out[0].0), None, "pumps applies");
}

#[test]
fn a_contract_after_a_catch_all_is_reported_as_unreachable() {
    let e = ContractSet::parse(
        "[[contract]]\nmax = 1.0\n[[contract]]\ndevice = \"x\"\nmax = 2.0",
        "c.toml",
    )
    .unwrap_err();
    let keys: Vec<String> = e.problems().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["c.toml:contract[1]"]);
}

#[test]
fn series_state_is_bounded_and_evicts_the_least_recently_updated_series() {
    let s = set("[[contract]]\nmax_rate = 1.0");
    let mut series = SeriesTable::new(2);
    let mut eval = |ch: &str, secs: f64, v: f64| {
        s.evaluate(r("p", ch, secs, v, None), &mut series, &synced())
            .verdict
    };
    eval("a", 0.0, 0.0);
    eval("b", 0.0, 0.0);
    eval("a", 1.0, 0.5); // a is now the most recent
    eval("c", 0.0, 0.0); // evicts b
    assert_eq!(rejected_by(&eval("a", 2.0, 100.0)), Some("contract_rate"));
    // b was forgotten: its next reading starts afresh, however far it jumped.
    assert_eq!(rejected_by(&eval("b", 1.0, 100.0)), None);
    assert_eq!(series.len(), 2);
    assert!(series.evicted() >= 2, "{}", series.evicted());
}

#[test]
fn out_of_order_readings_are_not_rate_checked_and_do_not_move_the_series() {
    let s = set("[[contract]]\nmax_rate = 1.0\nstuck = 2");
    let out = run(
        &s,
        vec![
            r("p", "c", 10.0, 0.0, None),
            r("p", "c", 5.0, 100.0, None), // older: not compared
            r("p", "c", 5.0, 100.0, None), // a redelivery: not stuck
            r("p", "c", 11.0, 0.5, None),  // compared with 0.0 at 10 s
        ],
    );
    assert!(out.iter().all(|(v, _)| rejected_by(v).is_none()), "{out:?}");
}

#[test]
fn skew_rules_are_skipped_and_flagged_while_the_clock_is_unsynchronised() {
    let s = set("[[contract]]\nmax_future_skew = \"1m\"");
    let mut series = SeriesTable::new(10);
    let unsynced = ClockNow {
        synced: false,
        ..synced()
    };
    let e = s.evaluate(r("p", "c", 3600.0, 1.0, None), &mut series, &unsynced);
    assert_eq!(accepted(&e.verdict).quality, Quality::SKEW_UNCHECKED);
    // A reading the gateway timed itself is never skew-checked.
    let mut own = r("p", "c", 3600.0, 1.0, None);
    own.quality = Quality::TIME_FROM_RECEIVE;
    let e = s.evaluate(own, &mut series, &synced());
    assert_eq!(accepted(&e.verdict).quality, Quality::TIME_FROM_RECEIVE);
}

#[test]
fn a_bad_contracts_file_is_reported_with_every_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("contracts.toml");
    std::fs::write(
        &file,
        r#"
        [[contract]]
        name = "ok"
        device = "a"
        max = 1.0
        [[contract]]
        device = "pump-[*"
        unit = "celsius"
        min = 5.0
        max = 1.0
        stuck = 1
        max_rate = -2.0
        [[contract]]
        name = "no-rules"
        actions.rate = "flag"
        "#,
    )
    .unwrap();
    let e = ContractSet::load(&file).unwrap_err();
    let keys: Vec<String> = e.problems().into_iter().map(|p| p.key).collect();
    let f = file.display().to_string();
    for key in [
        "contract[1].device",
        "contract[1].unit",
        "contract[1].min",
        "contract[1].stuck",
        "contract[1].max_rate",
        "contract[2]",
        "contract[2].actions.rate",
    ] {
        assert!(
            keys.contains(&format!("{f}:{key}")),
            "missing {key} in {keys:?}"
        );
    }
    // Unknown keys are refused by name.
    std::fs::write(&file, "[[contract]]\nmaximum = 3\n").unwrap();
    let e = ContractSet::load(&file).unwrap_err();
    assert!(matches!(e, ContractsError::Parse { .. }));
    assert!(e.to_string().contains("maximum"), "{e}");

    // Through the gateway config: check-config fails with the file's problems.
    std::fs::write(&file, "[[contract]]\nunit = \"celsius\"\n").unwrap();
    let cfg = format!(
        r#"
        gateway_id = "gw"
        [http]
        [uplink]
        url = "http://127.0.0.1:1"
        token = "t"
        [contracts]
        path = "{f}"
        max_series = 0
        [[contracts.contract]]
        max = nan
        "#
    );
    let err = GatewayConfig::from_toml(&cfg, Path::new("gw.toml")).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("{err}")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "contracts.max_series".to_owned(),
        "contracts.contract[0].max".to_owned(),
        format!("{f}:contract[0].unit"),
    ] {
        assert!(keys.contains(&key.as_str()), "missing {key} in {keys:?}");
    }
    std::fs::remove_file(&file).unwrap();
    let err = GatewayConfig::from_toml(&cfg.replace("max_series = 0", ""), Path::new("gw.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("contracts.path"), "{err}");
}

#[test]
fn check_config_exits_78_on_a_bad_contracts_file() {
    let dir = tempfile::tempdir().unwrap();
    let contracts = dir.path().join("contracts.toml");
    std::fs::write(&contracts, "[[contract]]\nmin = 3.0\nmax = 1.0\n").unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "gateway_id = \"gw\"\n[http]\n[uplink]\nurl = \"http://127.0.0.1:1\"\ntoken = \"t\"\n[contracts]\npath = \"{}\"\n",
            contracts.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-gateway"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("contract[0].min"), "{text}");
    // The shipped example contracts are valid.
    ContractSet::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/contracts.toml"
    )))
    .unwrap();
}

// ---- The ingest path ----

fn outbox() -> (tempfile::TempDir, Arc<Outbox>, Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        cache_capacity: bytesize::ByteSize::mib(1),
        ..Default::default()
    };
    let outbox = Arc::new(Outbox::open(dir.path(), &cfg).unwrap());
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    (dir, outbox, metrics)
}

fn manual_monitor(clock: ManualClock) -> Arc<ClockMonitor> {
    let cfg = ClockConfig {
        sync_check: SyncCheck::Floor,
        recheck_interval: Duration::ZERO,
        ..Default::default()
    };
    Arc::new(ClockMonitor::new(&cfg, Box::new(clock)))
}

/// Runs the envelopes through a real ingest stage; their commit results.
async fn ingest(
    outbox: &Arc<Outbox>,
    metrics: &Metrics,
    validation: Validation,
    envelopes: Vec<Content>,
) -> Vec<Commit> {
    let (tx, rx) = mpsc::channel(100);
    let ingest = Ingest::new(
        outbox.clone(),
        metrics.clone(),
        IngestConfig::default(),
        1024,
    )
    .with_validation(validation);
    let task = tokio::spawn(ingest.run(rx, watch::channel(false).1));
    let mut results = Vec::new();
    for content in envelopes {
        let (e, done) = Envelope::new("test:origin".into(), Timestamp(NOW), content);
        tx.send(e).await.unwrap();
        // One at a time, so each commit (and the dedup it teaches) is done
        // before the next envelope is prepared.
        results.push(done.await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tx);
    task.await.unwrap();
    results
}

fn stored(outbox: &Outbox) -> Vec<OutboxItem> {
    outbox
        .read_batch(0, usize::MAX, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.item)
        .collect()
}

#[tokio::test]
async fn rejected_readings_are_quarantined_and_the_rest_of_the_message_is_stored() {
    let (_dir, outbox, metrics) = outbox();
    let set = set("[[contract]]\nchannel = \"temperature\"\nunit = \"Cel\"\nmax = 100.0");
    let clock = manual_monitor(ManualClock::new(Timestamp(NOW), "boot"));
    let validation = Validation::new(set.shared(), 100, 1000, clock);
    let readings = vec![
        r("pump-1", "temperature", 0.0, 20.0, Some("Cel")),
        r("pump-1", "temperature", 1.0, 250.0, Some("Fah")), // 121 °C
        r("pump-1", "flow", 0.0, 0.01, Some("m3/s")),
    ];
    let results = ingest(
        &outbox,
        &metrics,
        validation,
        vec![Content::Readings(readings)],
    )
    .await;
    assert_eq!(results, [Commit::Durable]);
    let items = stored(&outbox);
    let kept: Vec<(&str, f64)> = items
        .iter()
        .map(|i| {
            (
                i.reading().unwrap().channel.as_str(),
                i.reading().unwrap().value,
            )
        })
        .collect();
    assert_eq!(kept, [("temperature", 20.0), ("flow", 0.01)]);
    let q = outbox.quarantine_list(10).unwrap();
    assert_eq!(q.len(), 1);
    let entry = &q[0].1;
    assert_eq!(entry.reason, "contract_range");
    assert_eq!(entry.origin, "test:origin");
    assert!(
        entry.detail.contains("pump-1/temperature"),
        "{}",
        entry.detail
    );
    assert!(entry.detail.contains("max 100"), "{}", entry.detail);
    let back: Reading = serde_json::from_slice(&entry.payload).unwrap();
    assert_eq!(
        back.unit.as_deref(),
        Some("Cel"),
        "the converted reading is kept"
    );
}

#[tokio::test]
async fn duplicates_are_dropped_and_counted_once_their_first_copy_is_durable() {
    let (_dir, outbox, metrics) = outbox();
    let clock = manual_monitor(ManualClock::new(Timestamp(NOW), "boot"));
    let validation = Validation::new(ContractSet::empty().shared(), 100, 1000, clock);
    let a = r("pump-1", "current", 0.0, 3.0, Some("A"));
    let b = r("pump-1", "current", 1.0, 3.1, Some("A"));
    let results = ingest(
        &outbox,
        &metrics,
        validation,
        vec![
            // b twice in one message: the second is dropped.
            Content::Readings(vec![a.clone(), b.clone(), b.clone()]),
            // A redelivery of the whole message, value changed or not.
            Content::Readings(vec![a.clone(), b.clone()]),
            Content::Readings(vec![r("pump-1", "current", 2.0, 3.2, Some("A"))]),
        ],
    )
    .await;
    assert_eq!(results, [Commit::Durable, Commit::Durable, Commit::Durable]);
    assert_eq!(stored(&outbox).len(), 3);
    assert_eq!(metrics.readings_deduplicated.get(), 3);
    assert!(
        outbox.quarantine_list(10).unwrap().is_empty(),
        "not quarantined"
    );
}

#[tokio::test]
async fn a_failed_commit_does_not_teach_dedup_so_the_redelivery_is_stored() {
    let (_dir, outbox, metrics) = outbox();
    let clock = manual_monitor(ManualClock::new(Timestamp(NOW), "boot"));
    let validation = Validation::new(ContractSet::empty().shared(), 100, 1000, clock);
    let a = r("pump-1", "current", 0.0, 3.0, Some("A"));
    let checked = validation.check(vec![a.clone()]);
    assert_eq!(checked.accepted.len(), 1);
    // Nothing remembered (the commit never happened): the same reading again is new.
    let again = validation.check(vec![a.clone()]);
    assert_eq!((again.accepted.len(), again.duplicates), (1, 0));
    validation.remember(checked.keys);
    let third = validation.check(vec![a]);
    assert_eq!((third.accepted.len(), third.duplicates), (0, 1));
    drop((outbox, metrics));
}

#[tokio::test]
async fn readings_timed_while_unsynchronised_are_stamped_and_corrected_after_sync() {
    let (_dir, outbox, metrics) = outbox();
    // Booted with the clock in 1970: 100 s of wall time, 100 s monotonic.
    let manual = Arc::new(ManualClock::new(Timestamp(0), "boot-1"));
    manual.advance(Duration::from_secs(100));
    let monitor = Arc::new(ClockMonitor::new(
        &ClockConfig {
            sync_check: SyncCheck::Floor,
            recheck_interval: Duration::ZERO,
            ..Default::default()
        },
        Box::new(manual.clone()),
    ));
    let validation = Validation::new(ContractSet::empty().shared(), 100, 1000, monitor.clone());
    // A reading without a timestamp: the receive time (the wrong wall clock).
    let mut own = Reading::new("pump-1", "flow", Timestamp(100 * SEC), 0.01).unwrap();
    own.quality = Quality::TIME_FROM_RECEIVE;
    // A reading with the sensor's own (correct) timestamp: not stamped.
    let sensor = r("pump-1", "current", 0.0, 3.0, None);
    let results = ingest(
        &outbox,
        &metrics,
        validation,
        vec![Content::Readings(vec![own, sensor.clone()])],
    )
    .await;
    assert_eq!(results, [Commit::Durable]);
    assert_eq!(metrics.clock_synchronized.get(), 0);
    let items = stored(&outbox);
    let OutboxItem::ClockPending { reading, clock } = &items[0] else {
        panic!("{:?}", items[0])
    };
    assert_eq!(
        reading.quality,
        Quality::TIME_FROM_RECEIVE | Quality::CLOCK_UNSYNCED
    );
    assert_eq!(clock.boot_id, "boot-1");
    assert_eq!(clock.monotonic_ns, 100 * SEC);
    assert_eq!(items[1], OutboxItem::Reading(sensor));

    // Still unsynchronised: it leaves uncorrected, flagged.
    let (out, how) = clock::resolve(items[0].clone(), monitor.correction().as_ref(), "boot-1");
    assert_eq!(how, Resolution::StillUnsynced);
    assert_eq!(out.reading().unwrap().ts, Timestamp(100 * SEC));

    // 50 s later NTP steps the clock to the true time; monotonic is 150 s.
    manual.advance(Duration::from_secs(50));
    manual.step_wall(Timestamp(NOW));
    let correction = monitor.correction().expect("synchronised now");
    let (out, how) = clock::resolve(items[0].clone(), Some(&correction), &monitor.boot_id());
    assert_eq!(how, Resolution::Corrected);
    // Received 50 s before the true time NOW.
    assert_eq!(out.reading().unwrap().ts, Timestamp(NOW - 50 * SEC));
    assert_eq!(
        out.reading().unwrap().quality,
        Quality::TIME_FROM_RECEIVE | Quality::CLOCK_CORRECTED
    );
    let (out, how) = clock::resolve(items[1].clone(), Some(&correction), &monitor.boot_id());
    assert_eq!((out, how), (items[1].clone(), Resolution::Plain));

    // After a reboot the old boot's stamp cannot be mapped.
    manual.reboot("boot-2", Timestamp(NOW + 3600 * SEC));
    let correction = monitor.correction().unwrap();
    let (out, how) = clock::resolve(items[0].clone(), Some(&correction), &monitor.boot_id());
    assert_eq!(how, Resolution::Uncorrectable);
    assert!(
        out.reading()
            .unwrap()
            .quality
            .contains(Quality::CLOCK_UNCORRECTABLE | Quality::CLOCK_UNSYNCED)
    );
    assert_eq!(
        out.reading().unwrap().ts,
        Timestamp(100 * SEC),
        "left as it was"
    );
}
