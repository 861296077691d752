//! Training time for 1M frames with 5-fold cross-validation, per family.
//!
//! `cargo bench -p outpost-cloud-sink --bench train` (a plain harness: one
//! training run per family is long, so criterion's repeated sampling would
//! take hours). `OUTPOST_TRAIN_BENCH_FRAMES` changes the frame count (default
//! 1 000 000) and `OUTPOST_TRAIN_BENCH_FAMILIES` (comma-separated) the families.
//!
//! The data: 10 simulated pumps × 100 000 one-second frames of 5 channels
//! (a slow duty cycle, a current that follows the flow, an AR(1) temperature,
//! pressure and vibration with noise), with labelled step anomalies on about
//! 2 % of frames, written as one CSV file. Each family is trained through
//! `run::train` exactly as `outpost-cloud-sink train --family F` does it:
//! read and window the CSV, 5 folds — by device, since the data is labelled
//! and has 10 pumps: 8 train, 2 held out, so 5 folds of 1–2 pumps (the
//! forecaster also k-fold and forward-chaining) — the final fit, the
//! threshold, held-out metrics.
//!
//! The in-run baseline is **reading and windowing the same file once**
//! (`load_files` + `build_samples`), the work every family repeats before it
//! fits anything; each family is reported as seconds and as a multiple of
//! that baseline, so the figures compare across machines of different speed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cloud_sink::train::dataset::{self, WindowOptions};
use cloud_sink::train::families::FamilyKind;
use cloud_sink::train::run::{self, TrainOptions};
use indicatif::ProgressBar;
use protocol::features::FeatureSpec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEVICES: usize = 10;
const WINDOW: usize = 30;
const HOP: usize = 10;

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Writes the fleet's frames; returns the path and the labelled fraction.
fn write_fleet(dir: &Path, frames: usize) -> std::io::Result<(PathBuf, f64)> {
    let path = dir.join("fleet.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(
        out,
        "time,device,flow,current,temp,pressure,vibration,label"
    )?;
    let mut rng = StdRng::seed_from_u64(42);
    let per_device = frames / DEVICES;
    let t0 = 1_767_225_600i64;
    let mut anomalous = 0usize;
    let mut line = String::new();
    for d in 0..DEVICES {
        let mut temp = 40.0;
        let mut step_left = 0usize;
        let mut step = 0.0;
        for i in 0..per_device {
            if step_left == 0 && rng.random_range(0.0..1.0) < 2e-4 {
                step_left = rng.random_range(50..150);
                step = if rng.random_range(0.0..1.0) < 0.5 {
                    2.5
                } else {
                    -2.5
                };
            }
            let off = if step_left > 0 {
                step_left -= 1;
                anomalous += 1;
                step
            } else {
                0.0
            };
            let phase = i as f64 / 600.0 + d as f64;
            let flow = 10.0 + 3.0 * phase.sin() + 0.2 * normal(&mut rng);
            let current = 2.0 + 0.5 * flow + 0.1 * normal(&mut rng) + off * 0.4;
            temp = 40.0 + 0.9 * (temp - 40.0) + 0.3 * normal(&mut rng);
            let pressure = 3.0 + 0.1 * flow + 0.05 * normal(&mut rng);
            let vibration = 0.5 + 0.05 * normal(&mut rng) + off * 0.1;
            line.clear();
            let _ = writeln!(
                line,
                "{},pump-{d},{flow:.4},{current:.4},{temp:.4},{pressure:.4},{vibration:.4},{}",
                t0 + i as i64,
                u8::from(off != 0.0)
            );
            out.write_all(line.as_bytes())?;
        }
    }
    out.flush()?;
    Ok((path, anomalous as f64 / (per_device * DEVICES) as f64))
}

fn options(input: &Path, family: FamilyKind) -> TrainOptions {
    let mut o = TrainOptions::new(vec![input.to_owned()]);
    o.columns.time_column = Some("time".into());
    o.columns.label_column = Some("label".into());
    o.family = Some(family);
    o.window_len = WINDOW;
    o.hop = HOP;
    o.folds = 5;
    o
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and must stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("train bench: run with `cargo bench -p outpost-cloud-sink --bench train`");
        return Ok(());
    }
    let frames: usize = std::env::var("OUTPOST_TRAIN_BENCH_FRAMES")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let families: Vec<FamilyKind> = match std::env::var("OUTPOST_TRAIN_BENCH_FAMILIES") {
        Ok(list) => list
            .split(',')
            .map(|f| f.trim().parse::<FamilyKind>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        Err(_) => FamilyKind::ALL.to_vec(),
    };
    let dir = tempfile::tempdir()?;
    let (input, anomalous) = write_fleet(dir.path(), frames)?;
    println!(
        "{frames} frames ({DEVICES} devices × {}, 5 channels, {:.2} % labelled anomalous); \
         windows of {WINDOW} frames every {HOP}; 5 folds",
        frames / DEVICES,
        anomalous * 100.0
    );

    // Baseline: read and window the file once (median of 3).
    let opts = options(&input, FamilyKind::Gaussian);
    let mut base = Vec::new();
    let mut windows = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let table = dataset::load_files(&opts.inputs, &opts.columns)?;
        let spec = FeatureSpec {
            channels: table.numeric_names.clone(),
            stats: opts.stats.clone(),
            bands: None,
            raw: false,
            categorical: Vec::new(),
            baseline: None,
        };
        let w = WindowOptions {
            len: WINDOW,
            hop: HOP,
            missing: opts.missing,
            features: Some(spec),
        };
        let (samples, _) = dataset::build_samples(&table, &w)?;
        windows = samples.len();
        base.push(t.elapsed().as_secs_f64());
    }
    base.sort_by(f64::total_cmp);
    let base = base[1];
    println!("baseline: read + window once: {base:.2} s ({windows} windows)");
    println!(
        "{:<18} {:>10} {:>10} {:>8} {:>9}",
        "family", "seconds", "× base", "F1", "samples"
    );
    for family in families {
        let t = Instant::now();
        let outcome = run::train(&options(&input, family), &ProgressBar::hidden());
        let secs = t.elapsed().as_secs_f64();
        match outcome {
            Ok(o) => println!(
                "{:<18} {:>10.1} {:>10.1} {:>8} {:>9}",
                family.name(),
                secs,
                secs / base,
                o.report
                    .heldout
                    .as_ref()
                    .and_then(|m| m.f1)
                    .map_or("-".into(), |f| format!("{f:.3}")),
                o.report.data.samples.windows
            ),
            Err(e) => println!("{:<18} failed after {secs:.1} s: {e}", family.name()),
        }
    }
    Ok(())
}
