//! Analysis hot paths: ring push/pop (one thread, and ingest + worker on two
//! threads against a locked queue and std's channel), frame assembly, features per window,
//! and inference per window at batch 1/64/256 — tract against the plain-Rust
//! reference evaluator of the same graph as the in-run baseline.
//!
//! `cargo bench -p outpost-gateway --bench analysis`

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    // Baseline: the same clones through a bounded Mutex<VecDeque> (the
    // obvious locked queue), same capacity and drop-newest policy; the
    // consumer locks per pop, as a worker sharing it with ingest would.
    let queue = std::sync::Mutex::new(std::collections::VecDeque::with_capacity(4096));
    g.bench_function("mutex_vecdeque_baseline_1000", |b| {
        b.iter(|| {
            {
                // One lock per batch on the producer side, as `Feed::offer`.
                let mut q = queue.lock().unwrap();
                for r in black_box(&batch) {
                    if q.len() < 4096 {
                        q.push_back(r.clone());
                    }
                }
            }
            let mut n = 0;
            while let Some(r) = queue.lock().unwrap().pop_front() {
                n += black_box(r).value as usize & 1;
            }
            n
        })
    });
    g.finish();
}

/// Ingest and a worker on two threads: 100 batches of 1000 readings offered
/// while a consumer thread pops them all. Baselines: the same through a
/// `Mutex<VecDeque>` (consumer locks per pop) and through std's bounded
/// `sync_channel`. Capacity holds everything, so nothing is dropped. An
/// empty consumer yields (the worker parks), so it does not spin on the
/// producer's cache line.
fn rings_two_threads(c: &mut Criterion) {
    const BATCHES: usize = 100;
    const CAPACITY: usize = 1 << 17;
    let batch = readings(1000);
    let total = BATCHES * batch.len();
    let mut g = c.benchmark_group("ring_two_threads");
    g.throughput(Throughput::Elements(total as u64));
    g.bench_function("spsc_feed_100k", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let metrics = AnalysisMetrics::new(&mut Registry::default());
                let (feed, mut cons) = Feed::new(1, CAPACITY, metrics);
                let mut cons = cons.pop().unwrap();
                let start = Instant::now();
                let consumer = std::thread::spawn(move || {
                    let mut n = 0;
                    while n < total {
                        match cons.try_pop() {
                            Some(r) => {
                                black_box(r);
                                n += 1;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                });
                for _ in 0..BATCHES {
                    feed.offer(black_box(&batch));
                }
                consumer.join().unwrap();
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
    g.bench_function("mutex_vecdeque_baseline_100k", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let queue = Arc::new(Mutex::new(VecDeque::<Reading>::with_capacity(CAPACITY)));
                let q = Arc::clone(&queue);
                let start = Instant::now();
                let consumer = std::thread::spawn(move || {
                    let mut n = 0;
                    while n < total {
                        let popped = q.lock().unwrap().pop_front();
                        match popped {
                            Some(r) => {
                                black_box(r);
                                n += 1;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                });
                for _ in 0..BATCHES {
                    let mut q = queue.lock().unwrap();
                    for r in black_box(&batch) {
                        if q.len() < CAPACITY {
                            q.push_back(r.clone());
                        }
                    }
                }
                consumer.join().unwrap();
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
    g.bench_function("std_sync_channel_baseline_100k", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Reading>(CAPACITY);
                let start = Instant::now();
                let consumer = std::thread::spawn(move || {
                    for _ in 0..total {
                        black_box(rx.recv().unwrap());
                    }
                });
                for _ in 0..BATCHES {
                    for r in black_box(&batch) {
                        // Drop newest when full, as the ring does.
                        let _ = tx.try_send(r.clone());
                    }
                }
                consumer.join().unwrap();
                elapsed += start.elapsed();
            }
            elapsed
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
        categorical: Vec::new(),
        baseline: None,
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
            threshold_rule: None,
            smoothing: Default::default(),
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

criterion_group!(
    benches,
    rings,
    rings_two_threads,
    frames,
    features,
    inference
);
criterion_main!(benches);
