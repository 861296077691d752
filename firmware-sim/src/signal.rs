//! The clean signal model of one simulated pump: a shared latent load drives
//! every channel, so the channels are correlated the way a real machine's are.
//!
//! - **Load** `L` in `[0.05, 1]`: an Ornstein–Uhlenbeck process (time constant
//!   [`LOAD_TAU_S`]) around a daily cycle that peaks in the afternoon.
//! - **flow** (`m3/s`) = rated flow × `L`.
//! - **current** (`A`) = idle current + k × `L`^1.5 (hydraulic power grows faster than flow).
//! - **pressure** (`Pa`) = static head + k × `L`² (a system curve: pressure ∝ flow²).
//! - **temperature** (`Cel`) follows ambient + k × `L` through a first-order lag
//!   ([`TEMP_TAU_S`]), so it trails the load by minutes; ambient has its own daily cycle.
//! - **vibration** (`m/s`, RMS velocity as in ISO 10816; 1–6 mm/s is healthy) rises with `L`.
//!
//! Units are SenML-registered (RFC 8428 §12.1). Every channel gets gaussian
//! noise and is rounded to a fixed number of decimals, so values print short.
//! The model has no I/O; [`PumpModel::step`] is driven by the fleet.

use rand::Rng;

/// Seconds in a day; the period of the daily cycles.
pub const DAY_S: f64 = 86_400.0;
/// Time constant of the load process, in seconds.
pub const LOAD_TAU_S: f64 = 60.0;
/// Time constant of the temperature lag, in seconds.
pub const TEMP_TAU_S: f64 = 600.0;

/// The channels of a simulated pump, in the order they appear in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Vibration,
    Current,
    Pressure,
    Temperature,
    Flow,
}

impl Channel {
    /// Every channel, in pack order.
    pub const ALL: [Channel; 5] = [
        Channel::Vibration,
        Channel::Current,
        Channel::Pressure,
        Channel::Temperature,
        Channel::Flow,
    ];

    /// The channel name used in SenML `n` and in every log.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Vibration => "vibration",
            Channel::Current => "current",
            Channel::Pressure => "pressure",
            Channel::Temperature => "temperature",
            Channel::Flow => "flow",
        }
    }

    /// The SenML unit (RFC 8428 §12.1).
    pub fn unit(self) -> &'static str {
        match self {
            Channel::Vibration => "m/s",
            Channel::Current => "A",
            Channel::Pressure => "Pa",
            Channel::Temperature => "Cel",
            Channel::Flow => "m3/s",
        }
    }

    /// Standard deviation of the measurement noise, in the channel's unit.
    pub fn noise_sd(self) -> f64 {
        match self {
            Channel::Vibration => 0.000_1,
            Channel::Current => 0.15,
            Channel::Pressure => 1_500.0,
            Channel::Temperature => 0.05,
            Channel::Flow => 0.000_2,
        }
    }

    /// A typical operating span of the channel; anomaly magnitudes scale with it.
    pub fn span(self) -> f64 {
        match self {
            Channel::Vibration => 0.002,
            Channel::Current => 10.0,
            Channel::Pressure => 100_000.0,
            Channel::Temperature => 10.0,
            Channel::Flow => 0.01,
        }
    }

    /// Decimals kept when a value is rounded for the wire.
    pub fn decimals(self) -> i32 {
        match self {
            Channel::Vibration => 6,
            Channel::Current => 3,
            Channel::Pressure => 1,
            Channel::Temperature => 3,
            Channel::Flow => 6,
        }
    }

    /// Rounds a value to this channel's wire precision.
    pub fn round(self, v: f64) -> f64 {
        let scale = 10f64.powi(self.decimals());
        (v * scale).round() / scale
    }
}

/// One standard-normal sample (Box–Muller; the second variate is discarded to
/// keep the sample stream independent of call pairing).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // `random::<f64>()` is in [0, 1); 1 - u is in (0, 1], so ln never sees 0.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Per-device constants, drawn once from the device's RNG so pumps differ.
#[derive(Clone, Debug)]
pub struct PumpParams {
    pub rated_flow: f64,
    pub idle_current: f64,
    pub current_gain: f64,
    pub static_pressure: f64,
    pub pressure_gain: f64,
    pub ambient: f64,
    pub temp_gain: f64,
    pub vibration_base: f64,
    pub vibration_gain: f64,
    /// Standard deviation of the load process around its daily mean.
    pub load_sd: f64,
}

impl PumpParams {
    pub fn draw<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let s = |rng: &mut R| rng.random_range(0.9..1.1);
        PumpParams {
            rated_flow: 0.02 * s(rng),
            idle_current: 6.0 * s(rng),
            current_gain: 20.0 * s(rng),
            static_pressure: 150_000.0 * s(rng),
            pressure_gain: 250_000.0 * s(rng),
            ambient: 20.0 * s(rng),
            temp_gain: 25.0 * s(rng),
            vibration_base: 0.001_5 * s(rng),
            vibration_gain: 0.002_5 * s(rng),
            load_sd: 0.15 * s(rng),
        }
    }
}

/// Clean (anomaly-free) values of every channel at one instant, in [`Channel::ALL`] order.
pub type Frame = [f64; 5];

/// The evolving state of one pump.
#[derive(Clone, Debug)]
pub struct PumpModel {
    params: PumpParams,
    load: f64,
    temperature: Option<f64>,
}

impl PumpModel {
    pub fn new(params: PumpParams) -> Self {
        PumpModel {
            params,
            load: f64::NAN,
            temperature: None,
        }
    }

    pub fn params(&self) -> &PumpParams {
        &self.params
    }

    /// The daily mean of the load at `t_s` seconds since the Unix epoch (UTC).
    pub fn daily_load(t_s: f64) -> f64 {
        // Peak at 14:00 UTC, trough at 02:00.
        0.6 + 0.2 * (std::f64::consts::TAU * (t_s - 14.0 * 3600.0) / DAY_S).cos()
    }

    /// Advances the model by `dt_s` seconds to time `t_s` and returns the clean,
    /// noisy, rounded channel values.
    pub fn step<R: Rng + ?Sized>(&mut self, t_s: f64, dt_s: f64, rng: &mut R) -> Frame {
        let p = &self.params;
        let mean = Self::daily_load(t_s);
        // Exact OU discretisation: stationary sd stays `load_sd` for any step.
        self.load = if self.load.is_finite() {
            let a = (-dt_s / LOAD_TAU_S).exp();
            mean + a * (self.load - mean) + p.load_sd * (1.0 - a * a).sqrt() * standard_normal(rng)
        } else {
            mean + p.load_sd * standard_normal(rng)
        };
        let load = self.load.clamp(0.05, 1.0);

        let ambient =
            p.ambient + 4.0 * (std::f64::consts::TAU * (t_s - 15.0 * 3600.0) / DAY_S).cos();
        let target = ambient + p.temp_gain * load;
        let temperature = match self.temperature {
            Some(t) => t + (target - t) * (1.0 - (-dt_s / TEMP_TAU_S).exp()),
            None => target,
        };
        self.temperature = Some(temperature);

        let clean = [
            p.vibration_base + p.vibration_gain * load,
            p.idle_current + p.current_gain * load.powf(1.5),
            p.static_pressure + p.pressure_gain * load * load,
            temperature,
            p.rated_flow * load,
        ];
        let mut out = [0.0; 5];
        for (i, ch) in Channel::ALL.into_iter().enumerate() {
            let noisy = clean[i] + ch.noise_sd() * standard_normal(rng);
            // Physical quantities here are never negative.
            out[i] = ch.round(noisy.max(0.0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    fn run(ticks: usize, dt: f64) -> Vec<Frame> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut m = PumpModel::new(PumpParams::draw(&mut rng));
        (0..ticks)
            .map(|k| m.step(1.7e9 + k as f64 * dt, dt, &mut rng))
            .collect()
    }

    #[test]
    fn flow_current_and_pressure_are_strongly_correlated_over_a_long_run() {
        let frames = run(20_000, 1.0);
        let col = |c: usize| frames.iter().map(|f| f[c]).collect::<Vec<_>>();
        let (vib, cur, pre, flow) = (col(0), col(1), col(2), col(4));
        assert!(
            correlation(&flow, &cur) > 0.5,
            "flow/current {}",
            correlation(&flow, &cur)
        );
        assert!(
            correlation(&flow, &pre) > 0.5,
            "flow/pressure {}",
            correlation(&flow, &pre)
        );
        assert!(
            correlation(&flow, &vib) > 0.5,
            "flow/vibration {}",
            correlation(&flow, &vib)
        );
    }

    #[test]
    fn temperature_follows_the_load_with_a_lag() {
        // Over a simulated day the lagged temperature correlates better with the
        // earlier flow than with the simultaneous flow.
        let frames = run(8_640, 10.0);
        let flow: Vec<f64> = frames.iter().map(|f| f[4]).collect();
        let temp: Vec<f64> = frames.iter().map(|f| f[3]).collect();
        let lag = 30; // 300 s
        let now = correlation(&flow, &temp);
        let lagged = correlation(&flow[..flow.len() - lag], &temp[lag..]);
        assert!(
            lagged > now,
            "lagged {lagged} should beat simultaneous {now}"
        );
        assert!(lagged > 0.3, "lagged correlation {lagged}");
    }

    #[test]
    fn magnitudes_are_realistic() {
        for f in run(5_000, 1.0) {
            assert!((0.0005..0.01).contains(&f[0]), "vibration {}", f[0]);
            assert!((3.0..35.0).contains(&f[1]), "current {}", f[1]);
            assert!((100_000.0..600_000.0).contains(&f[2]), "pressure {}", f[2]);
            assert!((5.0..80.0).contains(&f[3]), "temperature {}", f[3]);
            assert!((0.0..0.03).contains(&f[4]), "flow {}", f[4]);
        }
    }

    #[test]
    fn standard_normal_has_zero_mean_and_unit_variance() {
        let mut rng = StdRng::seed_from_u64(1);
        let xs: Vec<f64> = (0..100_000).map(|_| standard_normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "var {var}");
    }
}
