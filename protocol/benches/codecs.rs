//! Decode cost per reading for each payload format, against a raw
//! `serde_json::Value` parse of the same SenML JSON bytes as the baseline, and
//! the uplink batch's encode/decode for 1000 readings.
//!
//! Quick run: `cargo bench -p outpost-protocol --bench codecs -- --quick`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protocol::batch::{BatchLimits, OutboxItem, OutboxRecord, UplinkBatch};
use protocol::{DecodeContext, DecodeLimits, Reading, Timestamp, plain, senml};

const T0: i64 = 1_700_000_000_000_000_000;

fn readings(n: usize) -> Vec<Reading> {
    let channels = ["temperature", "pressure", "humidity", "flow", "rpm"];
    (0..n)
        .map(|i| {
            let r = Reading::new(
                "pump-1",
                channels[i % channels.len()],
                Timestamp(T0 + (i as i64) * 1_000_000),
                20.0 + i as f64 * 0.25,
            )
            .expect("valid");
            if i % 2 == 0 { r.with_unit("Cel") } else { r }
        })
        .collect()
}

/// The plain form of `n` (≤ 5) readings: one object, one member per channel.
fn plain_payload(n: usize) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("device".into(), "pump-1".into());
    obj.insert("ts".into(), 1_700_000_000.25.into());
    for r in readings(n) {
        obj.insert(r.channel.clone(), r.value.into());
    }
    serde_json::to_vec(&obj).expect("serialises")
}

fn decoders(c: &mut Criterion) {
    let ctx = DecodeContext::new(Timestamp(T0));
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("decode");
    for n in [1usize, 5] {
        let rs = readings(n);
        let json = senml::encode_json(&rs);
        let cbor = senml::encode_cbor(&rs);
        let plain = plain_payload(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("baseline_serde_json_value", n),
            &json,
            |b, bytes| {
                b.iter(|| {
                    serde_json::from_slice::<serde_json::Value>(black_box(bytes)).expect("parses")
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
    }
    group.finish();
}

fn uplink_batch(c: &mut Criterion) {
    const N: usize = 1000;
    let rs = readings(N);
    let records = rs
        .iter()
        .enumerate()
        .map(|(i, r)| OutboxRecord {
            seq: i as u64 + 1,
            item: OutboxItem::Reading(r.clone()),
        })
        .collect();
    let batch = UplinkBatch::new("gw-1", records).expect("valid");
    let body = batch.encode(3).expect("encodes");
    let mut cbor = Vec::new();
    ciborium::into_writer(&batch, &mut cbor).expect("serialises");
    let json = serde_json::to_vec(&batch).expect("serialises");
    println!(
        "uplink batch of {N} readings: zstd(3) {} bytes, CBOR {} bytes, JSON {} bytes, SenML JSON {} bytes, SenML CBOR {} bytes",
        body.len(),
        cbor.len(),
        json.len(),
        senml::encode_json(&rs).len(),
        senml::encode_cbor(&rs).len(),
    );

    let limits = BatchLimits::default();
    let mut group = c.benchmark_group("uplink_batch");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("encode_1000", |b| {
        b.iter(|| black_box(&batch).encode(3).expect("encodes"))
    });
    group.bench_function("decode_1000", |b| {
        b.iter(|| UplinkBatch::decode(black_box(&body), &limits).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, decoders, uplink_batch);
criterion_main!(benches);
