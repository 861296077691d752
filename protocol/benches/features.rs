//! Feature extraction per window — 5 channels × 128 samples, every statistic,
//! with and without band energies (8 bands on 2 channels) — against the naive
//! reference implementation (textbook loops, O(N²) DFT) of the same features
//! as the in-run baseline. Report the ratio, not the absolute time.
//!
//! Quick run: `cargo bench -p outpost-protocol --bench features -- --quick`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use protocol::features::{BandSpec, FeatureExtractor, FeatureSpec, Stat, Window};

#[path = "../src/features/reference.rs"]
mod reference;

const CHANNELS: usize = 5;
const ROWS: usize = 128;
const DT: f64 = 1e-3;

/// A deterministic multichannel window: offsets, a drift, two tones, noise.
fn window_values() -> Vec<f64> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut values = Vec::with_capacity(CHANNELS * ROWS);
    for t in 0..ROWS {
        let time = t as f64 * DT;
        for c in 0..CHANNELS {
            let tone = (2.0 * std::f64::consts::PI * (50.0 + 70.0 * c as f64) * time).sin();
            values.push(20.0 * c as f64 + 0.5 * time + tone + 0.1 * noise());
        }
    }
    values
}

fn spec(bands: bool) -> FeatureSpec {
    FeatureSpec {
        channels: [
            "temperature",
            "pressure",
            "current",
            "vibration_x",
            "vibration_y",
        ]
        .map(String::from)
        .to_vec(),
        stats: Stat::ALL.to_vec(),
        bands: bands.then(|| BandSpec {
            channels: vec!["vibration_x".into(), "vibration_y".into()],
            count: 8,
            detrend: true,
        }),
        raw: false,
        categorical: Vec::new(),
        baseline: None,
    }
}

fn per_window(c: &mut Criterion) {
    let values = window_values();
    let window = Window::try_new(&values, CHANNELS, DT).expect("valid window");
    for (label, bands) in [("stats", false), ("stats_and_bands", true)] {
        let spec = spec(bands);
        let mut extractor = FeatureExtractor::new(&spec, ROWS).expect("valid spec");
        let mut out = vec![0.0; extractor.len()];
        // The baseline computes the same features, in the same order.
        assert_eq!(extractor.names(), reference::names(&spec, ROWS).as_slice());
        extractor.extract(&window, &mut out).expect("extracts");
        let naive = reference::extract(&spec, &values, DT);
        for (name, (a, b)) in extractor.names().iter().zip(out.iter().zip(&naive)) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{name}: {a} vs {b}"
            );
        }
        let mut group = c.benchmark_group(format!("features_5x128/{label}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("baseline_naive_reference", |b| {
            b.iter(|| reference::extract(black_box(&spec), black_box(&values), DT))
        });
        group.bench_function("extract", |b| {
            b.iter(|| {
                extractor
                    .extract(black_box(&window), black_box(&mut out))
                    .expect("extracts")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, per_window);
criterion_main!(benches);
