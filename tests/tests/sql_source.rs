//! The SQL polling source end to end, against the real PostgreSQL at
//! 127.0.0.1:5432 (user `postgres`, trust auth, database `test`) and against
//! an SQLite file: rows → gateway → outbox → real cloud sink.
//!
//! Exactly once is checked two ways: every row of the table is in the sink
//! (missing = 0), and the gateway's outbox sequence numbers that reached the
//! sink are exactly 1..=rows (no row was appended twice: a source that re-read
//! rows after a kill -9 would burn extra sequence numbers, which the sink's
//! identity de-duplication would otherwise hide).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_tests::{Gateway, GatewayOpts, Identity, Mosquitto, Sink, free_port, wait_for};

const PG_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
/// 2026-01-01T00:00:00Z.
const BASE_SECS: i64 = 1_767_225_600;
const NS: i64 = 1_000_000_000;

/// A PostgreSQL client on its own runtime (the harness is blocking).
struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    table: String,
}

impl Pg {
    /// Connects and picks a table name unique to this test run.
    fn connect(prefix: &str) -> Pg {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, database test)");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let table = format!(
            "outpost_{prefix}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000
        );
        Pg { rt, client, table }
    }

    fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `(device, channel, ts_ns)` of the long-form table's rows.
    fn identities(&self) -> HashSet<Identity> {
        let sql = format!(
            "SELECT device, channel, (EXTRACT(EPOCH FROM ts) * 1000000)::bigint FROM {}",
            self.table
        );
        let rows = self.rt.block_on(self.client.query(&sql, &[])).unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) * 1000))
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.table);
        let _ = self.rt.block_on(self.client.batch_execute(&sql));
    }
}

/// Row `i` of the long-form table: a distinct identity per row.
fn row_values(i: usize) -> String {
    format!(
        "('sqlpump-{}', 'c{}', to_timestamp({}), {}.5, 'Cel')",
        i % 5,
        i % 3,
        BASE_SECS + i as i64,
        i
    )
}

fn sql_source(name: &str, extra: &str) -> String {
    format!("\n[[sql]]\nname = \"{name}\"\n{extra}\n")
}

#[test]
fn postgres_rows_inserted_while_polling_arrive_exactly_once_across_kill_9s() {
    let pg = Pg::connect("sqlkill");
    pg.exec(&format!(
        "CREATE TABLE {} (id bigserial PRIMARY KEY, device text NOT NULL, channel text NOT NULL, \
         ts timestamptz NOT NULL, value double precision, unit text)",
        pg.table
    ));
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.extra = sql_source(
        "plant",
        &format!(
            r#"driver = "postgres"
url = "{PG_URL}"
table = "public.{table}"
cursor_column = "id"
device_column = "device"
channel_column = "channel"
value_column = "value"
unit_column = "unit"
time_column = "ts"
batch_size = 100
poll_interval = "50ms"
backoff_min = "50ms"
backoff_max = "500ms""#,
            table = pg.table
        ),
    );
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();

    // A writer inserting 10 rows every 20 ms on its own connection.
    let total = 3000;
    let inserted = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (inserted, table) = (inserted.clone(), pg.table.clone());
        std::thread::spawn(move || {
            let w = Pg::connect("writer");
            let mut i = 0;
            while i < total {
                let values: Vec<String> = (i..i + 10).map(row_values).collect();
                w.exec(&format!(
                    "INSERT INTO {table} (device, channel, ts, value, unit) VALUES {}",
                    values.join(", ")
                ));
                i += 10;
                inserted.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    for at in [600, 1400, 2200] {
        wait_for(Duration::from_secs(120), "rows to be inserted", || {
            (inserted.load(Ordering::Relaxed) >= at).then_some(())
        })
        .unwrap();
        gw.kill9();
        std::thread::sleep(Duration::from_millis(200));
        gw.up().unwrap();
    }
    writer.join().unwrap();

    let expected = pg.identities();
    assert_eq!(expected.len(), total);
    let r = outpost_tests::assert_exactly_once(&sink, &expected, Duration::from_secs(120), &gw);
    assert_eq!(r.stored, total, "nothing but the table's rows: {r:?}");
    let seq = outpost_tests::seq_coverage(&sink, "gw-test").unwrap();
    assert_eq!(
        (seq.stored, seq.appended_twice(), seq.epochs),
        (total as u64, 0, 1),
        "rows re-read after a kill -9: {seq:?}\n{}",
        gw.log_tail(40)
    );
    assert!(gw.metric("outpost_gateway_sql_rows_total{source=\"plant\"}") > 0.0);
    gw.terminate().unwrap();
}

#[test]
fn postgres_timestamp_cursor_with_ties_wide_columns_and_unmappable_rows() {
    let pg = Pg::connect("sqlwide");
    // Six stations report at each instant: every timestamp is shared by six
    // rows, so batches of 7 always end between rows of one timestamp.
    pg.exec(&format!(
        "CREATE TABLE {} (seq serial PRIMARY KEY, at timestamptz NOT NULL, station text NOT NULL, \
         temp double precision, pressure numeric(8,3))",
        pg.table
    ));
    let mut values = Vec::new();
    let mut expected: HashSet<Identity> = HashSet::new();
    let (mut missing, mut nan) = (0, 0);
    for i in 0..90 {
        let (t, s) = (BASE_SECS + (i / 6) as i64, format!("st-{}", i % 6));
        let (temp, pressure) = match i % 15 {
            4 => {
                missing += 1;
                ("NULL".to_owned(), "NULL".to_owned())
            }
            9 => {
                nan += 1;
                ("'NaN'".to_owned(), "1013.25".to_owned())
            }
            11 => ("20.5".to_owned(), "NULL".to_owned()),
            _ => (format!("{i}.25"), format!("{}.125", 1000 + i)),
        };
        if temp != "NULL" && temp != "'NaN'" {
            expected.insert((s.clone(), "temperature".into(), t * NS));
        }
        if pressure != "NULL" && temp != "'NaN'" {
            expected.insert((s.clone(), "pressure".into(), t * NS));
        }
        values.push(format!("(to_timestamp({t}), '{s}', {temp}, {pressure})"));
    }
    pg.exec(&format!(
        "INSERT INTO {} (at, station, temp, pressure) VALUES {}",
        pg.table,
        values.join(", ")
    ));
    let dir = outpost_tests::test_dir();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.extra = sql_source(
        "weather",
        &format!(
            r#"driver = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
table = "{table}"
cursor_column = "at"
cursor_type = "timestamp"
tie_column = "seq"
device_column = "station"
value_columns = {{ temperature = "temp", pressure = "pressure" }}
units = {{ temperature = "Cel", pressure = "hPa" }}
batch_size = 7
poll_interval = "50ms""#,
            table = pg.table
        ),
    );
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();
    let r = outpost_tests::assert_exactly_once(&sink, &expected, Duration::from_secs(90), &gw);
    assert_eq!(r.stored, expected.len(), "{r:?}");
    // The cursor moved past the quarantined rows: a row inserted after them arrives.
    pg.exec(&format!(
        "INSERT INTO {} (at, station, temp, pressure) VALUES (to_timestamp({}), 'st-late', 1.5, 2.5)",
        pg.table,
        BASE_SECS + 1000
    ));
    expected.insert((
        "st-late".into(),
        "temperature".into(),
        (BASE_SECS + 1000) * NS,
    ));
    expected.insert(("st-late".into(), "pressure".into(), (BASE_SECS + 1000) * NS));
    let r = outpost_tests::assert_exactly_once(&sink, &expected, Duration::from_secs(60), &gw);
    assert_eq!(r.stored, expected.len(), "{r:?}");
    let seq = outpost_tests::seq_coverage(&sink, "gw-test").unwrap();
    assert_eq!(seq.appended_twice(), 0, "{seq:?}");
    // Units came from the config, the numeric column through its cast.
    let conn = rusqlite::Connection::open(&sink.db).unwrap();
    let (unit, value): (String, f64) = conn
        .query_row(
            "SELECT unit, value FROM readings WHERE device = 'st-0' AND channel = 'pressure' AND ts_ns = ?1",
            [BASE_SECS * NS],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((unit.as_str(), value), ("hPa", 1000.125));
    wait_for(Duration::from_secs(10), "quarantine counters", || {
        let m = gw.metrics().ok()?;
        let got = |reason: &str| {
            m.get(&format!(
                "outpost_gateway_quarantined_total{{reason=\"{reason}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        (got("missing_value") == f64::from(missing) && got("non_finite_value") == f64::from(nan))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", gw.metrics()));
    gw.terminate().unwrap();
}

#[test]
fn sqlite_rows_arrive_exactly_once_across_a_restart() {
    let dir = outpost_tests::test_dir();
    let db = dir.path().join("plant.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE samples (id INTEGER PRIMARY KEY, channel TEXT, at TEXT, v REAL);",
    )
    .unwrap();
    let insert = |from: usize, to: usize| {
        let mut ids = HashSet::new();
        for i in from..to {
            let secs = BASE_SECS + i as i64;
            // SQLite's own datetime() text form, UTC.
            conn.execute(
                "INSERT INTO samples (channel, at, v) VALUES (?1, datetime(?2, 'unixepoch'), ?3)",
                rusqlite::params![format!("ch{}", i % 4), secs, i as f64 / 4.0],
            )
            .unwrap();
            ids.insert(("line-1".to_owned(), format!("ch{}", i % 4), secs * NS));
        }
        ids
    };
    let mut expected = insert(0, 250);
    let broker = Mosquitto::start(dir.path()).unwrap();
    let sink = Sink::start(dir.path(), "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.extra = sql_source(
        "line",
        &format!(
            r#"driver = "sqlite"
url = "{}"
table = "samples"
cursor_column = "id"
device = "line-1"
channel_column = "channel"
value_column = "v"
time_column = "at"
batch_size = 40
poll_interval = "50ms""#,
            db.display()
        ),
    );
    let mut gw = Gateway::start(dir.path(), &opts).unwrap();
    outpost_tests::assert_exactly_once(&sink, &expected, Duration::from_secs(60), &gw);
    // Rows written while the gateway runs, then while it is stopped.
    expected.extend(insert(250, 300));
    outpost_tests::assert_exactly_once(&sink, &expected, Duration::from_secs(60), &gw);
    assert_eq!(gw.terminate().unwrap(), Some(0));
    expected.extend(insert(300, 420));
    gw.up().unwrap();
    let r = outpost_tests::assert_exactly_once(&sink, &expected, Duration::from_secs(60), &gw);
    assert_eq!(r.stored, 420, "{r:?}");
    let seq = outpost_tests::seq_coverage(&sink, "gw-test").unwrap();
    assert_eq!((seq.stored, seq.appended_twice()), (420, 0), "{seq:?}");
    gw.terminate().unwrap();
}
