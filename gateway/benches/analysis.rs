//! Analysis hot paths: ring push/pop, frame assembly, features per window,
//! and inference per window at batch 1/64/256 — tract against the plain-Rust
//! reference evaluator of the same graph as the in-run baseline.
//!
//! `cargo bench -p outpost-gateway --bench analysis`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use outpost_gateway::analysis::{AnalysisMetrics, Feed, FrameAssembler, FrameSpec};
use outpost_models::builder::graphs;
use outpost_models::{Model, ReferenceModel};
use prometheus_client::registry::Registry;
use protocol::features::{FeatureExtractor, FeatureSpec, Stat, Window};
use protocol::manifest::{
    Hysteresis, InputSpec, MANIFEST_FORMAT, ModelFamily, ModelManifest, ModelMetadata, ScoreSpec,
};
use protocol::{Reading, Timestamp};
use ringbuf::traits::Consumer;

const CHANNELS: [&str; 5] = ["current", "vibration", "pressure", "temperature", "flow"];

fn channels() -> Vec<String> {
    CHANNELS.iter().map(|c| c.to_string()).collect()
}

fn readings(n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let t = (i / CHANNELS.len()) as i64 * 1_000_000_000;
            Reading::new(
                "pump-1",
                CHANNELS[i % CHANNELS.len()],
                Timestamp(t),
                i as f64,
            )
            .unwrap()
        })
        .collect()
}

fn rings(c: &mut Criterion) {
    let batch = readings(1000);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(batch.len() as u64));
    let metrics = AnalysisMetrics::new(&mut Registry::default());
    let (feed, mut cons) = Feed::new(1, 4096, metrics);
    g.bench_function("offer_then_pop_1000", |b| {
        b.iter(|| {
            feed.offer(black_box(&batch));
            let mut n = 0;
            while let Some(r) = cons[0].try_pop() {
                n += black_box(r).value as usize & 1;
            }
            n
        })
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let batch = readings(5000);
    let spec = FrameSpec {
        channels: channels(),
        period: Duration::from_secs(1),
        hold: Duration::from_secs(2),
        reorder: Duration::from_secs(1),
    };
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("assemble_5000_readings", |b| {
        b.iter(|| {
            let mut asm = FrameAssembler::new(&spec).unwrap();
            let mut n = 0usize;
            for r in &batch {
                asm.push(r, |f| n += f.values.len());
            }
            n
        })
    });
    g.finish();
}

fn spec() -> FeatureSpec {
    FeatureSpec {
        channels: channels(),
        stats: vec![Stat::Mean, Stat::Std, Stat::Min, Stat::Max, Stat::Slope],
        bands: None,
        raw: false,
    }
}

fn features(c: &mut Criterion) {
    let len = 32;
    let values: Vec<f64> = (0..len * CHANNELS.len())
        .map(|i| (i as f64 * 0.37).sin())
        .collect();
    let mut x = FeatureExtractor::new(&spec(), len).unwrap();
    let mut out = vec![0.0; x.len()];
    let w = Window::try_new(&values, CHANNELS.len(), 1.0).unwrap();
    c.bench_function("features/window_32x5", |b| {
        b.iter(|| x.extract(black_box(&w), &mut out).unwrap())
    });
}

fn inference(c: &mut Criterion) {
    let (f, h) = (25usize, 8usize);
    let w1: Vec<f32> = (0..f * h)
        .map(|i| ((i as f32) * 0.13).sin() * 0.3)
        .collect();
    let b1 = vec![0.01; h];
    let w2: Vec<f32> = (0..h * f)
        .map(|i| ((i as f32) * 0.71).cos() * 0.3)
        .collect();
    let b2 = vec![0.0; f];
    let onnx = graphs::autoencoder(&w1, &b1, &w2, &b2).unwrap();
    let manifest = ModelManifest {
        format: MANIFEST_FORMAT,
        name: "bench-ae".into(),
        version: 1,
        family: ModelFamily::Autoencoder,
        input: InputSpec {
            channels: channels(),
            window_len: 32,
            hop: 8,
            frame_period: Duration::from_secs(1),
        },
        features: spec(),
        score: ScoreSpec {
            threshold: 1.0,
            hysteresis: Hysteresis::default(),
        },
        metadata: ModelMetadata::default(),
    };
    let model = Model::load(&onnx, manifest).unwrap();
    let reference = ReferenceModel::from_bytes(&onnx).unwrap();
    let mut g = c.benchmark_group("inference");
    for batch in [1usize, 64, 256] {
        let x: Vec<f32> = (0..batch * f).map(|i| ((i as f32) * 0.01).sin()).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("tract", batch), &x, |b, x| {
            b.iter(|| model.score(black_box(x)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("reference", batch), &x, |b, x| {
            b.iter(|| reference.scores(black_box(x), f).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, rings, frames, features, inference);
criterion_main!(benches);
