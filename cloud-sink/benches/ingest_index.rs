//! What the `readings_received` index (schema 3: "readings received since
//! T", for the training scheduler) costs at ingest.
//!
//! `cargo bench -p outpost-cloud-sink --bench ingest_index` (a plain harness:
//! each case is a few seconds of SQLite writes with fsync, so criterion's
//! sampling adds nothing but time). The same batches — `BATCHES` gateway
//! batches of `READINGS` readings each, 20 devices × 5 channels — are ingested
//! through `SqliteStorage::ingest` into a fresh database twice per round: once
//! as the sink creates it, once with the index dropped before the first
//! batch (the baseline: the same work without the feature). Rounds alternate
//! the order; the median of `ROUNDS` is reported.
//! `OUTPOST_INGEST_BENCH_BATCHES` changes the batch count.

use std::path::Path;
use std::time::{Duration, Instant};

use cloud_sink::auth::hash_token;
use cloud_sink::storage::Storage;
use cloud_sink::storage::sqlite::SqliteStorage;
use protocol::batch::{OutboxItem, OutboxRecord, UplinkBatch};
use protocol::{Reading, Timestamp};

const READINGS: usize = 500;
const ROUNDS: usize = 5;
const GATEWAY: &str = "gw-bench";

fn batches(count: usize) -> Vec<UplinkBatch> {
    let mut seq = 1u64;
    (0..count)
        .map(|b| {
            let records = (0..READINGS)
                .map(|i| {
                    let n = b * READINGS + i;
                    let device = format!("pump-{:04}", n % 20);
                    let channel =
                        ["flow", "current", "pressure", "temperature", "vibration"][(n / 20) % 5];
                    let ts = Timestamp(1_767_225_600_000_000_000 + (n as i64) * 10_000_000);
                    let reading = Reading::new(&device, channel, ts, n as f64 * 0.01)
                        .expect("a valid reading");
                    let record = OutboxRecord {
                        seq,
                        item: OutboxItem::Reading(reading),
                    };
                    seq += 1;
                    record
                })
                .collect();
            UplinkBatch::new(GATEWAY, records).expect("a valid batch")
        })
        .collect()
}

/// Seconds to ingest `batches` into a new database in `dir`.
fn ingest(dir: &Path, batches: &[UplinkBatch], drop_index: bool) -> f64 {
    let path = dir.join(if drop_index { "plain.db" } else { "indexed.db" });
    let _ = std::fs::remove_file(&path);
    let storage = SqliteStorage::open(&path, Duration::from_secs(5)).expect("open");
    storage
        .add_gateway(GATEWAY, &hash_token("bench-token"))
        .expect("add gateway");
    if drop_index {
        let db = rusqlite::Connection::open(&path).expect("open for DROP INDEX");
        db.execute_batch("DROP INDEX readings_received")
            .expect("drop the index");
    }
    let start = Instant::now();
    for b in batches {
        let outcome = storage.ingest(GATEWAY, b).expect("ingest");
        std::hint::black_box(outcome);
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let count: usize = std::env::var("OUTPOST_INGEST_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let batches = batches(count);
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            with.push(ingest(dir.path(), &batches, false));
            without.push(ingest(dir.path(), &batches, true));
        } else {
            without.push(ingest(dir.path(), &batches, true));
            with.push(ingest(dir.path(), &batches, false));
        }
    }
    let readings = (count * READINGS) as f64;
    let (w, wo) = (median(with), median(without));
    println!(
        "{count} batches × {READINGS} readings, median of {ROUNDS} rounds:\n\
         without readings_received (baseline): {wo:.3} s ({:.0} readings/s)\n\
         with readings_received:               {w:.3} s ({:.0} readings/s)\n\
         cost of the index: {:+.1} % time",
        readings / wo,
        readings / w,
        100.0 * (w / wo - 1.0)
    );
}
