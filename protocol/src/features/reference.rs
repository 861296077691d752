//! A plain, obviously-correct implementation of the definitions in the
//! `features` module docs: textbook formulas, naive loops, an O(N²) DFT. It
//! shares no code with the real extractor. The parity tests compare the two;
//! the `features` bench uses it as the in-run baseline. Never used in
//! production code.

use std::f64::consts::PI;

use super::{FeatureSpec, Stat};

/// The feature vector of a row-major window for `spec`, in the documented order.
pub fn extract(spec: &FeatureSpec, values: &[f64], dt: f64) -> Vec<f64> {
    let c = spec.channels.len();
    // Window columns: the channels, then the categorical channels.
    let width = c + spec.categorical.len();
    let n = values.len() / width;
    let column = |j: usize| -> Vec<f64> { (0..n).map(|i| values[i * width + j]).collect() };
    let mut out = Vec::new();
    for j in 0..c {
        let x = column(j);
        for &stat in &spec.stats {
            out.push(stat_of(stat, &x, dt));
        }
    }
    if let Some(bands) = &spec.bands {
        for name in &bands.channels {
            let j = spec
                .channels
                .iter()
                .position(|c| c == name)
                .expect("a band channel is a channel");
            out.extend(band_energies(&column(j), bands.count, bands.detrend));
        }
    }
    if spec.raw {
        for i in 0..n {
            for j in 0..c {
                out.push(values[i * width + j]);
            }
        }
    }
    for (k, cat) in spec.categorical.iter().enumerate() {
        let last = values[(n - 1) * width + c + k];
        for &code in &cat.codes {
            let hit = last.fract() == 0.0 && last == code as f64;
            out.push(if hit { 1.0 } else { 0.0 });
        }
    }
    out
}

/// The feature names, in the documented order.
pub fn names(spec: &FeatureSpec, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for channel in &spec.channels {
        for stat in &spec.stats {
            names.push(format!("{channel}.{}", stat.name()));
        }
    }
    if let Some(bands) = &spec.bands {
        for channel in &bands.channels {
            for b in 0..bands.count {
                names.push(format!("{channel}.band{b}"));
            }
        }
    }
    if spec.raw {
        for t in 0..n {
            for channel in &spec.channels {
                names.push(format!("raw.t{t}.{channel}"));
            }
        }
    }
    for cat in &spec.categorical {
        for code in &cat.codes {
            names.push(format!("{}={}", cat.channel, code));
        }
    }
    names
}

fn stat_of(stat: Stat, x: &[f64], dt: f64) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let moment = |p: i32| x.iter().map(|v| (v - mean).powi(p)).sum::<f64>() / n;
    let min = x.iter().copied().fold(f64::INFINITY, f64::min);
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let constant = min == max;
    match stat {
        Stat::Mean => mean,
        Stat::Std => moment(2).sqrt(),
        Stat::Min => min,
        Stat::Max => max,
        Stat::Last => x[x.len() - 1],
        Stat::Slope => {
            let t: Vec<f64> = (0..x.len()).map(|i| i as f64 * dt).collect();
            let t_mean = t.iter().sum::<f64>() / n;
            let mut sxy = 0.0;
            let mut sxx = 0.0;
            for i in 0..x.len() {
                sxy += (t[i] - t_mean) * (x[i] - mean);
                sxx += (t[i] - t_mean) * (t[i] - t_mean);
            }
            sxy / sxx
        }
        Stat::Rms => (x.iter().map(|v| v * v).sum::<f64>() / n).sqrt(),
        Stat::PeakToPeak => max - min,
        Stat::Skew if constant => 0.0,
        Stat::Skew => moment(3) / moment(2).powf(1.5),
        Stat::Kurtosis if constant => 0.0,
        Stat::Kurtosis => moment(4) / moment(2).powi(2) - 3.0,
        Stat::Repeats => x.windows(2).filter(|p| p[0] == p[1]).count() as f64,
    }
}

fn band_energies(x: &[f64], count: usize, detrend: bool) -> Vec<f64> {
    let n = x.len();
    let mean = if detrend {
        x.iter().sum::<f64>() / n as f64
    } else {
        0.0
    };
    let y: Vec<f64> = (0..n)
        .map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / n as f64).cos()) * (x[i] - mean))
        .collect();
    let mut bands = vec![0.0; count];
    for k in 0..=n / 2 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, yi) in y.iter().enumerate() {
            // (k·i mod n) keeps the angle small and exact.
            let angle = 2.0 * PI * ((k * i) % n) as f64 / n as f64;
            re += yi * angle.cos();
            im -= yi * angle.sin();
        }
        let weight = if k == 0 || 2 * k == n { 1.0 } else { 2.0 };
        let band = ((2 * k * count) / n).min(count - 1);
        bands[band] += weight * (re * re + im * im) / n as f64;
    }
    bands
}
