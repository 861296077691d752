//! The file-drop source end to end: files renamed into the gateway's watched
//! directory → readings in the real cloud sink exactly once, each file moved
//! to `done/` or `failed/` with its report — including a big file read while
//! the gateway is killed with SIGKILL three times.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_tests::{Gateway, GatewayOpts, Identity, Sink, free_port, wait_for};

/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600;
const NS: i64 = 1_000_000_000;

struct Dirs {
    incoming: PathBuf,
    done: PathBuf,
    failed: PathBuf,
}

/// A gateway (embedded broker, no MQTT traffic) with one `[[files]]` source.
fn gateway_opts(dir: &Path, sink: &Sink, extra_files: &str) -> (GatewayOpts, Dirs) {
    let mut o = GatewayOpts::new(free_port(), sink);
    o.embedded_broker = true;
    let drop = dir.join("drop");
    let dirs = Dirs {
        incoming: drop.join("incoming"),
        done: drop.join("done"),
        failed: drop.join("failed"),
    };
    o.extra = format!(
        "[[files]]\nname = \"drop\"\ndirectory = \"{}\"\nscan_interval = \"100ms\"\n\
         settle_time = \"200ms\"\n{extra_files}\n",
        dirs.incoming.display()
    );
    (o, dirs)
}

/// Writes `name` the way the contract asks: under a temporary name, then a rename.
fn drop_file(incoming: &Path, name: &str, bytes: &[u8]) {
    let tmp = incoming.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, incoming.join(name)).unwrap();
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    let text = fs::read_to_string(dir.join(format!("{name}.report.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn wait_file(path: &Path, gw: &Gateway) {
    let r = wait_for(
        Duration::from_secs(120),
        &path.display().to_string(),
        || path.exists().then_some(()),
    );
    assert!(
        r.is_ok(),
        "{} never appeared\n{}",
        path.display(),
        gw.log_tail(40)
    );
}

fn id(device: &str, channel: &str, ts_ns: i64) -> Identity {
    (device.to_owned(), channel.to_owned(), ts_ns)
}

/// Waits until the sink holds exactly `expected` (each identity once).
fn assert_sink_holds(sink: &Sink, expected: &HashSet<Identity>, gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored: BTreeMap<Identity, u32>;
    loop {
        stored = sink.stored().unwrap();
        if expected.iter().all(|i| stored.contains_key(i)) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let missing = expected.iter().filter(|i| !stored.contains_key(*i)).count();
    let extra = stored.keys().filter(|i| !expected.contains(*i)).count();
    let twice = stored.values().filter(|&&n| n > 1).count();
    assert_eq!(
        (missing, extra, twice),
        (0, 0, 0),
        "missing, unexpected, stored twice (of {} expected)\n{}",
        expected.len(),
        gw.log_tail(40)
    );
}

#[test]
fn csv_json_ndjson_and_senml_files_arrive_exactly_once_and_are_moved_to_done() {
    let dir = outpost_tests::test_dir();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let (o, d) = gateway_opts(dir.path(), &sink, "chunk_rows = 7");
    let mut gw = Gateway::start(dir.path(), &o).unwrap();
    let mut expected = HashSet::new();

    // Long CSV with a header, comma-separated, 50 rows (several chunks).
    let mut csv = String::from("device,channel,timestamp,value\n");
    for i in 0..50 {
        csv.push_str(&format!("csv-{},temp,{},{i}.5\n", i % 2, BASE + i));
        expected.insert(id(&format!("csv-{}", i % 2), "temp", (BASE + i) * NS));
    }
    // Wide CSV, semicolons, device column.
    let mut wide = String::from("time;device;flow;pressure\n");
    for i in 0..20 {
        wide.push_str(&format!("{};wide-1;{i};{}\n", BASE + i, i * 2));
        expected.insert(id("wide-1", "flow", (BASE + i) * NS));
        expected.insert(id("wide-1", "pressure", (BASE + i) * NS));
    }
    // JSON array of plain objects, pretty-printed over many lines.
    let objects: Vec<serde_json::Value> = (0..30)
        .map(
            |i| serde_json::json!({"device": "json-1", "ts": BASE + i, "level": i, "temp": 20 + i}),
        )
        .collect();
    for i in 0..30 {
        expected.insert(id("json-1", "level", (BASE + i) * NS));
        expected.insert(id("json-1", "temp", (BASE + i) * NS));
    }
    let json = serde_json::to_string_pretty(&objects).unwrap();
    // NDJSON.
    let mut ndjson = String::new();
    for i in 0..25 {
        ndjson.push_str(&format!(
            "{{\"device\":\"nd-1\",\"ts\":{},\"rpm\":{i}}}\n",
            BASE + i
        ));
        expected.insert(id("nd-1", "rpm", (BASE + i) * NS));
    }
    // A SenML pack: base name and time carried across chunks. The extension
    // says nothing (`.dat`): the format comes from the content.
    let mut records = vec![format!(
        "{{\"bn\":\"senml-1/\",\"bt\":{BASE},\"bu\":\"Cel\",\"n\":\"temp\",\"v\":1}}"
    )];
    expected.insert(id("senml-1", "temp", BASE * NS));
    for i in 1..40 {
        records.push(format!("{{\"n\":\"temp\",\"t\":{i},\"v\":{i}}}"));
        expected.insert(id("senml-1", "temp", (BASE + i) * NS));
    }
    let senml = format!("[\n{}\n]\n", records.join(",\n"));

    let files = [
        ("long.csv", csv.as_bytes()),
        ("wide.csv", wide.as_bytes()),
        ("objects.json", json.as_bytes()),
        ("lines.ndjson", ndjson.as_bytes()),
        ("pack.dat", senml.as_bytes()),
    ];
    // A partial upload that is never renamed must be left alone.
    fs::write(
        d.incoming.join("upload.csv.part"),
        "device,channel,ts,value\nx,y,1,2\n",
    )
    .unwrap();
    for (name, bytes) in files {
        drop_file(&d.incoming, name, bytes);
    }
    for (name, bytes) in files {
        wait_file(&d.done.join(format!("{name}.report.json")), &gw);
        let r = report(&d.done, name);
        assert_eq!(r["outcome"], "done", "{name}: {r}");
        assert_eq!(r["bad_rows"], 0, "{name}: {r}");
        assert_eq!(
            fs::read(d.done.join(name)).unwrap(),
            bytes,
            "{name} moved whole"
        );
        assert!(!d.incoming.join(name).exists());
    }
    assert_eq!(report(&d.done, "pack.dat")["format"], "senml");
    assert_eq!(report(&d.done, "objects.json")["format"], "json");
    assert_eq!(report(&d.done, "lines.ndjson")["format"], "ndjson");
    assert_eq!(report(&d.done, "wide.csv")["readings"], 40);
    assert_eq!(report(&d.done, "long.csv")["rows"], 50);
    assert_sink_holds(&sink, &expected, &gw);
    assert!(
        d.incoming.join("upload.csv.part").exists(),
        "a .part file is not picked up"
    );
    assert_eq!(fs::read_dir(&d.failed).unwrap().count(), 0);
    assert_eq!(gw.terminate().unwrap(), Some(0));
}

#[test]
fn a_big_csv_survives_three_kill_9s_mid_file_with_every_row_stored_once() {
    const ROWS: i64 = 200_000;
    let dir = outpost_tests::test_dir();
    // The sink stays down while the file is read: nothing is uploaded (so
    // nothing is ever sent twice by the uplink), and the sink's duplicate
    // counter at the end counts only rows the gateway stored twice.
    let port = free_port();
    let mut sink = Sink::prepare(dir.path(), "gw-test", port).unwrap();
    let (o, d) = gateway_opts(dir.path(), &sink, "chunk_rows = 500");
    let mut gw = Gateway::start(dir.path(), &o).unwrap();

    let mut csv = String::with_capacity(ROWS as usize * 40);
    csv.push_str("device,channel,timestamp,value\n");
    let mut expected = HashSet::new();
    for i in 0..ROWS {
        let (dev, ch) = (format!("big-{}", i % 10), format!("c{}", i % 3));
        let ts_ns = BASE * NS + i * 1_000_000;
        csv.push_str(&format!(
            "{dev},{ch},{}.{:03},{i}\n",
            BASE + i / 1000,
            i % 1000
        ));
        expected.insert(id(&dev, &ch, ts_ns));
    }
    assert_eq!(expected.len() as i64, ROWS);
    drop_file(&d.incoming, "big.csv", csv.as_bytes());

    let committed = "outpost_gateway_readings_committed_total";
    for kill in 1..=3 {
        // Let this run store a part of the file, then kill it mid-file.
        let r = wait_for(Duration::from_secs(120), "progress on the file", || {
            (gw.metric(committed) >= 20_000.0).then_some(())
        });
        assert!(
            r.is_ok(),
            "no progress before kill {kill}\n{}",
            gw.log_tail(40)
        );
        gw.kill9();
        assert!(
            d.incoming.join("big.csv").exists() && !d.done.join("big.csv").exists(),
            "kill {kill} came after the file was finished; it must hit mid-file"
        );
        gw.up().unwrap();
    }
    wait_file(&d.done.join("big.csv.report.json"), &gw);
    let r = report(&d.done, "big.csv");
    assert_eq!(r["outcome"], "done", "{r}");
    assert_eq!(
        r["rows"], ROWS,
        "the report's counts survive the restarts: {r}"
    );
    assert_eq!(r["readings"], ROWS);

    sink.up().unwrap();
    assert_sink_holds(&sink, &expected, &gw);
    let metrics = outpost_tests::parse_metrics(
        &outpost_tests::reqwest::blocking_get_text(&format!("{}/metrics", sink.url())).unwrap(),
    );
    assert_eq!(
        metrics
            .get("outpost_sink_readings_duplicate_total")
            .copied(),
        Some(0.0),
        "the gateway stored some rows twice"
    );
    assert_eq!(gw.terminate().unwrap(), Some(0));
}

#[test]
fn bad_rows_are_reported_by_line_while_good_rows_are_stored_and_unreadable_files_fail() {
    let dir = outpost_tests::test_dir();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let (o, d) = gateway_opts(dir.path(), &sink, "max_file_bytes = \"64 KiB\"");
    let mut gw = Gateway::start(dir.path(), &o).unwrap();

    let csv = format!(
        "device,channel,timestamp,value\n\
         bad-1,t,{b0},1\n\
         bad-1,t,not-a-time,2\n\
         bad-1,t,{b2},3\n\
         bad-1,t,{b3},warm\n\
         bad-1,t,{b4}\n\
         bad-1,t,{b5},6\n",
        b0 = BASE,
        b2 = BASE + 2,
        b3 = BASE + 3,
        b4 = BASE + 4,
        b5 = BASE + 5,
    );
    drop_file(&d.incoming, "rows.csv", csv.as_bytes());
    drop_file(
        &d.incoming,
        "blob.bin",
        &[0x89, b'P', b'N', b'G', 0, 0, 1, 2],
    );
    drop_file(&d.incoming, "huge.csv", &vec![b'a'; 100 * 1024]);
    drop_file(&d.incoming, "empty.csv", b"");

    wait_file(&d.failed.join("rows.csv.report.json"), &gw);
    let r = report(&d.failed, "rows.csv");
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["rows"], 6);
    assert_eq!(r["readings"], 3);
    assert_eq!(r["bad_rows"], 3);
    let errors: Vec<(i64, String)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_i64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (3, "bad_time".to_owned()),
            (5, "unsupported_value".to_owned()),
            (6, "syntax".to_owned()),
        ]
    );
    assert!(d.failed.join("rows.csv").exists());

    for (name, reason) in [
        ("blob.bin", "binary"),
        ("huge.csv", "too_large"),
        ("empty.csv", "empty"),
    ] {
        wait_file(&d.failed.join(format!("{name}.report.json")), &gw);
        let r = report(&d.failed, name);
        assert_eq!(r["outcome"], "failed", "{name}: {r}");
        assert_eq!(r["fatal"]["reason"], reason, "{name}: {r}");
        assert!(d.failed.join(name).exists());
    }

    let expected: HashSet<Identity> = [BASE, BASE + 2, BASE + 5]
        .into_iter()
        .map(|s| id("bad-1", "t", s * NS))
        .collect();
    assert_sink_holds(&sink, &expected, &gw);
    assert_eq!(
        gw.metric("outpost_gateway_files_bad_rows_total{source=\"drop\"}"),
        3.0
    );
    assert_eq!(gw.terminate().unwrap(), Some(0));
    // The bad rows are in the quarantine, with their line in the origin.
    let out = std::process::Command::new(outpost_tests::bin("outpost-gateway"))
        .args(["quarantine", "list", "--json", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [3, 5, 6] {
        assert!(
            text.contains(&format!("file:drop/rows.csv:{line}")),
            "line {line} not quarantined: {text}"
        );
    }
    assert!(d.done.read_dir().unwrap().next().is_none());
}
