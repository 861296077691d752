//! Decode + validate cost per reading for each payload format (SenML JSON,
//! SenML CBOR, plain JSON, CSV), with the same readings decoded by serde_json
//! into a plain struct as the in-run baseline.
//!
//! Every decoder validates each reading it builds (finite value, bounded
//! names without control characters, resolved time), so "decode" here is
//! decode + validate. The baseline does neither validation nor SenML base-field
//! resolution: it is the floor a JSON decoder cannot beat. Throughput is in
//! readings, so criterion reports time per reading; divide each format's time
//! by the baseline's for the ratio.
//!
//! Run: `cargo bench -p outpost-protocol --bench decode_validate` (add
//! `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protocol::{DecodeContext, DecodeLimits, Reading, Timestamp, csv, plain, senml};
use serde::{Deserialize, Serialize};

const T0: i64 = 1_767_225_600_000_000_000;
const CHANNELS: [(&str, &str); 5] = [
    ("vibration", "m/s"),
    ("current", "A"),
    ("pressure", "Pa"),
    ("temperature", "Cel"),
    ("flow", "m3/s"),
];

/// `n` readings of one pump, the five channels in turn, one tick per 5.
fn readings(n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let (ch, unit) = CHANNELS[i % CHANNELS.len()];
            Reading::new(
                "pump-0001",
                ch,
                Timestamp(T0 + (i / CHANNELS.len()) as i64 * 100_000_000),
                12.5 + (i % 97) as f64 * 0.125,
            )
            .expect("valid")
            .with_unit(unit)
        })
        .collect()
}

/// The baseline's shape: the same fields, no validation, no base fields.
#[derive(Serialize, Deserialize)]
struct PlainReading {
    device: String,
    channel: String,
    ts: i64,
    value: f64,
    unit: Option<String>,
}

/// The plain JSON form: one object per tick (five channels), in an array.
fn plain_payload(rs: &[Reading]) -> Vec<u8> {
    let objects: Vec<serde_json::Value> = rs
        .chunks(CHANNELS.len())
        .map(|tick| {
            let mut obj = serde_json::Map::new();
            obj.insert("device".into(), tick[0].device.clone().into());
            obj.insert("ts".into(), tick[0].ts.as_secs_f64().into());
            let mut units = serde_json::Map::new();
            for r in tick {
                obj.insert(r.channel.clone(), r.value.into());
                units.insert(r.channel.clone(), r.unit.clone().into());
            }
            obj.insert("units".into(), units.into());
            obj.into()
        })
        .collect();
    serde_json::to_vec(&objects).expect("serialises")
}

fn decode_validate(c: &mut Criterion) {
    let ctx = DecodeContext::new(Timestamp(T0));
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("decode_validate");
    for n in [5usize, 100] {
        let rs = readings(n);
        let baseline: Vec<u8> = serde_json::to_vec(
            &rs.iter()
                .map(|r| PlainReading {
                    device: r.device.clone(),
                    channel: r.channel.clone(),
                    ts: r.ts.0,
                    value: r.value,
                    unit: r.unit.clone(),
                })
                .collect::<Vec<_>>(),
        )
        .expect("serialises");
        let json = senml::encode_json(&rs);
        let cbor = senml::encode_cbor(&rs);
        let plain = plain_payload(&rs);
        let csv = csv::encode(&rs).expect("encodes").into_bytes();
        // Every format decodes to the same n readings.
        for (name, got) in [
            ("senml_json", senml::decode_json(&json, &ctx, &limits)),
            ("senml_cbor", senml::decode_cbor(&cbor, &ctx, &limits)),
            ("plain_json", plain::decode(&plain, &ctx, &limits)),
            ("csv", csv::decode(&csv, &ctx, &limits)),
        ] {
            assert_eq!(got.expect(name).len(), n, "{name}");
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("baseline_serde_json_struct", n),
            &baseline,
            |b, bytes| {
                b.iter(|| {
                    serde_json::from_slice::<Vec<PlainReading>>(black_box(bytes)).expect("parses")
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("senml_json", n), &json, |b, bytes| {
            b.iter(|| senml::decode_json(black_box(bytes), &ctx, &limits).expect("decodes"))
        });
        group.bench_with_input(BenchmarkId::new("senml_cbor", n), &cbor, |b, bytes| {
            b.iter(|| senml::decode_cbor(black_box(bytes), &ctx, &limits).expect("decodes"))
        });
        group.bench_with_input(BenchmarkId::new("plain_json", n), &plain, |b, bytes| {
            b.iter(|| plain::decode(black_box(bytes), &ctx, &limits).expect("decodes"))
        });
        group.bench_with_input(BenchmarkId::new("csv", n), &csv, |b, bytes| {
            b.iter(|| csv::decode(black_box(bytes), &ctx, &limits).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, decode_validate);
criterion_main!(benches);
