//! Arguments and handlers of `outpost-cloud-sink train | evaluate | score`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::features::Stat;

use super::dataset::{ColumnOptions, MissingPolicy};
use super::families::{FamilyKind, HyperParams};
use super::preprocess::Scaling;
use super::registry::register_trained;
use super::run::{self, SmoothingChoice, TrainOptions};
use super::threshold::ThresholdRule;

fn parse_stat(s: &str) -> Result<Stat, String> {
    Stat::ALL
        .into_iter()
        .find(|st| st.name() == s)
        .ok_or_else(|| format!("unknown statistic `{s}`"))
}

fn parse_scaling(s: &str) -> Result<Scaling, String> {
    match s {
        "plain" => Ok(Scaling::Plain),
        "robust" => Ok(Scaling::Robust),
        _ => Err(format!("`{s}`: expected plain or robust")),
    }
}

/// `outpost-cloud-sink train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Input files: CSV/TSV (header row), JSON or SenML (.json, .senml), NDJSON (.ndjson), SenML CBOR (.cbor).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// CSV column holding the time (RFC 3339 or epoch s/ms/µs/ns).
    #[arg(long)]
    pub time_column: Option<String>,
    /// Column (CSV) or channel (readings) holding the anomaly label.
    #[arg(long)]
    pub label_column: Option<String>,
    /// CSV column naming the device (default: `device` when present).
    #[arg(long)]
    pub device_column: Option<String>,
    /// Columns or channels to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Numeric columns or channels that are categorical (integer codes such as an operating mode 0/1/2), comma-separated: one-hot encoded from the window's last frame, and exported with their codes in the manifest. Text columns are categorical anyway, but only integer codes can be exported (the gateway's readings are numbers).
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
    /// auto | pca | gaussian | weighted_gaussian | forecast | classifier | autoencoder. `auto` with labels compares pca, gaussian, forecast and classifier by out-of-fold F1; without labels it compares the one-class families pca and gaussian by how many simulated one-channel shifts they catch at the calibrated false-alarm rate.
    #[arg(long, default_value = "auto")]
    pub family: String,
    /// Output directory: model.json, model.onnx, manifest.json, report.json, report.html (with --fleet also devices/<device>/).
    #[arg(long)]
    pub out: PathBuf,
    /// Frames per window for the feature families (1: each row is a sample; not exportable).
    #[arg(long, default_value_t = run::DEFAULT_WINDOW)]
    pub window: usize,
    /// A window every this many frames.
    #[arg(long, default_value_t = 1)]
    pub hop: usize,
    /// Statistics per channel and window, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_stat, default_value = "mean,std,min,max,slope")]
    pub stats: Vec<Stat>,
    /// Also give the window's frames themselves as features: every channel at every lag within the window (the inputs of dynamic PCA).
    #[arg(long)]
    pub raw: bool,
    /// Missing values: `drop` (windows with gaps) or `ffill:N` (forward-fill within N frames).
    #[arg(long, default_value = "drop")]
    pub missing: MissingPolicy,
    /// Standardisation: plain (mean/std) or robust (median/MAD).
    #[arg(long, value_parser = parse_scaling, default_value = "plain")]
    pub scaling: Scaling,
    /// Log-scale the spread statistics (std, peak_to_peak) before standardising: a channel stuck at a constant then stands out.
    #[arg(long)]
    pub log_spread: bool,
    /// Also give each channel's window mean minus the device's own running baseline (an exponential average with this time constant, e.g. 10m), replayed per device in time order; the gateway keeps the same baseline per device. Exposes level shifts that outlast a window on devices the model never saw.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub baseline: Option<std::time::Duration>,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Fraction held out for the final evaluation.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Seed of the folds, the hold-out split and the autoencoder's weights and batches.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Forecaster lags (frames).
    #[arg(long, default_value_t = 4)]
    pub lags: usize,
    /// L2 penalty of the forecaster and the classifier.
    #[arg(long, default_value_t = 1e-2)]
    pub ridge: f64,
    /// Autoencoder: bottleneck width (default: a third of the input columns, at least 2).
    #[arg(long)]
    pub ae_hidden: Option<usize>,
    /// Autoencoder: most training epochs.
    #[arg(long, default_value_t = HyperParams::default().ae_epochs)]
    pub ae_epochs: usize,
    /// Autoencoder: rows per mini-batch.
    #[arg(long, default_value_t = HyperParams::default().ae_batch_size)]
    pub ae_batch_size: usize,
    /// Autoencoder: Adam learning rate.
    #[arg(long, default_value_t = HyperParams::default().ae_learning_rate)]
    pub ae_learning_rate: f64,
    /// Autoencoder fine-tuning (`--fleet`): most epochs per device.
    #[arg(long, default_value_t = HyperParams::default().ae_fine_tune_epochs)]
    pub ae_fine_tune_epochs: usize,
    /// Autoencoder: epochs without a better validation loss before training stops.
    #[arg(long, default_value_t = HyperParams::default().ae_patience)]
    pub ae_patience: usize,
    /// Frame period for reading files (JSON, NDJSON, SenML), e.g. 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub period: Option<Duration>,
    /// Hold tolerance for reading files (default: one period).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold: Option<Duration>,
    /// Threshold at this false-alarm rate on normal validation data instead of best F1 / the 0.99 quantile.
    #[arg(long)]
    pub target_false_alarm_rate: Option<f64>,
    /// Smoothing of each device's window scores before the threshold, the same on the gateway: `none`, `ewma:ALPHA` (exponential moving average, weight ALPHA in (0, 1] on the newest window) or `auto` (without labels ewma:0.1; with labels the best out-of-fold F1 of none, ewma:0.5, ewma:0.2, ewma:0.1).
    #[arg(long, default_value = "auto")]
    pub smoothing: SmoothingChoice,
    /// Fleet transfer learning (needs `--family autoencoder`): fine-tune the model per device
    /// (frozen encoder) and write each to OUT/devices/<device>/; the report compares each
    /// with the fleet base model on the device's held-out rows.
    #[arg(long)]
    pub fleet: bool,
    /// Skip the ONNX export (the model cannot be registered then).
    #[arg(long)]
    pub no_export: bool,
    /// Register the model in this sink database (SQLite file) after a passed export check.
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Registry scope (a device, a group or `fleet`).
    #[arg(long, default_value = "fleet")]
    pub scope: String,
    /// Champion/challenger: held-out F1 gain needed to replace the production model.
    #[arg(long, default_value_t = 0.01)]
    pub margin: f64,
}

fn progress() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} folds {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let family = match args.family.as_str() {
        "auto" => None,
        other => Some(other.parse::<FamilyKind>().map_err(anyhow::Error::msg)?),
    };
    if args.fleet && family != Some(FamilyKind::Autoencoder) {
        anyhow::bail!(
            "invalid option `--fleet`: it needs --family autoencoder (got --family {})",
            args.family
        );
    }
    let mut opts = TrainOptions::new(args.input.clone());
    opts.columns = ColumnOptions {
        time_column: args.time_column,
        label_column: args.label_column,
        device_column: args.device_column,
        exclude: args.exclude,
        period: args.period,
        hold: args.hold,
        categorical: args.categorical,
    };
    opts.family = family;
    opts.window_len = args.window;
    opts.hop = args.hop;
    opts.stats = args.stats;
    opts.raw = args.raw;
    opts.missing = args.missing;
    opts.scaling = args.scaling;
    opts.log_spread = args.log_spread;
    opts.baseline = args.baseline;
    opts.folds = args.folds;
    opts.holdout = args.holdout;
    opts.seed = args.seed;
    opts.hyper = HyperParams {
        lags: args.lags,
        ridge: args.ridge,
        ae_hidden: args.ae_hidden,
        ae_epochs: args.ae_epochs,
        ae_batch_size: args.ae_batch_size,
        ae_learning_rate: args.ae_learning_rate,
        ae_patience: args.ae_patience,
        ae_fine_tune_epochs: args.ae_fine_tune_epochs,
        // One seed for the folds, the hold-out split and the weights.
        seed: args.seed,
        ..HyperParams::default()
    };
    opts.threshold = args
        .target_false_alarm_rate
        .map(ThresholdRule::TargetFalseAlarmRate);
    opts.smoothing = args.smoothing;
    opts.fleet = args.fleet;
    let bar = progress();
    let mut outcome = run::train(&opts, &bar).context("training")?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut export_error = None;
    if !args.no_export {
        match super::export::export(
            &args.out,
            &outcome.model,
            &outcome.report,
            &outcome.heldout,
            &args.scope,
        ) {
            Ok(check) => outcome.report.export = Some(check),
            Err(e) => export_error = Some(e),
        }
    }
    let mut device_export_errors = Vec::new();
    if !args.no_export && !outcome.devices.is_empty() {
        // The device models' manifests carry no held-out metrics: those of
        // the report are the fleet model's.
        let mut device_report = outcome.report.clone();
        device_report.heldout = None;
        device_report.heldout_regression = None;
        for d in &outcome.devices {
            let dir = run::device_dir(&args.out, d);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if let Err(e) =
                super::export::export(&dir, &d.model, &device_report, &outcome.heldout, &d.device)
            {
                device_export_errors.push(format!("{}: {e}", d.device));
            }
        }
    }
    run::write_outputs(&args.out, &outcome).context("writing the model and report")?;
    let r = &outcome.report;
    eprintln!("family {} — {}", r.chosen.name(), r.reason);
    eprintln!("{}", summary(r));
    let floored = &outcome.model.pipeline.floored;
    if !floored.is_empty() {
        eprintln!(
            "note: {} feature(s) did not vary in the training data and are kept: a later move by 1 % of their level counts as one standard deviation ({})",
            floored.len(),
            floored.join(", ")
        );
    }
    if let Some(f) = &r.fleet {
        eprintln!(
            "fleet: {} devices fine-tuned, improved on {} of {}, mean held-out gain {} — models in {}",
            f.devices.len(),
            f.improved(),
            f.devices.len(),
            f.mean_gain()
                .map_or_else(|| "—".into(), |g| format!("{:.1}%", 100.0 * g)),
            args.out.join("devices").display()
        );
        for s in &f.skipped {
            eprintln!("fleet: left out {s}");
        }
    }
    for e in &device_export_errors {
        eprintln!("device ONNX export not written: {e}");
    }
    eprintln!("wrote {}", args.out.display());
    if let Some(e) = export_error {
        if args.registry.is_some() {
            return Err(e).context("ONNX export (registration refused)");
        }
        eprintln!("ONNX export not written: {e}");
    }
    if let (Some(db), Some(_)) = (&args.registry, &r.export) {
        let reg = register_trained(db, &args.scope, &args.out, &outcome, args.margin)
            .context("registering the model")?;
        eprintln!("registered version {}: {}", reg.id, reg.reason);
    }
    Ok(())
}

/// A number or a dash.
fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.3}"))
}

/// A rate as a percentage, or a dash.
fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{:.1} %", 100.0 * v))
}

/// The lines `train` prints about the threshold and the held-out data.
fn summary(r: &super::report::TrainingReport) -> String {
    let mut out = format!("threshold {:.6}", r.threshold.value);
    if let Some(c) = &r.calibration {
        let far = &c.false_alarm_rate;
        out.push_str(&format!(
            " on the {} smoothed score, chosen on {} {} windows\nexpected false-alarm rate {} (from {} to {} over {} validation folds)",
            c.smoothing.label(),
            c.windows,
            c.scores,
            pct(far.mean),
            pct(far.min),
            pct(far.max),
            far.defined
        ));
    }
    out.push_str(&format!("\nheld-out ({}): ", r.data.holdout));
    match &r.heldout {
        Some(m) => out.push_str(&format!(
            "F1 {}, precision {}, recall {}, ROC-AUC {}, false-alarm rate {}",
            num(m.f1),
            num(m.precision),
            num(m.recall),
            num(m.roc_auc),
            pct(m.false_alarm_rate)
        )),
        None => out.push_str(&format!(
            "{} of {} windows alarmed (all are taken as normal)",
            pct(r.heldout_alarm_rate),
            r.data.test_windows
        )),
    }
    out
}

/// `outpost-cloud-sink evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The directory `train --out` wrote.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    #[arg(long)]
    pub label_column: String,
}

pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let m = run::evaluate(&args.model, &args.input, &args.label_column).context("evaluating")?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}

/// `outpost-cloud-sink score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub input: PathBuf,
    /// Output CSV: row,device,time_ns,score,smoothed,alarm,status — one line per input row; `alarm` is decided on `smoothed`, the score smoothed per device as the gateway does.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let rows = run::score(&args.model, &args.input, &args.out).context("scoring")?;
    let alarms = rows.iter().filter(|r| r.alarm == Some(true)).count();
    eprintln!(
        "{} rows scored, {alarms} alarms, written to {}",
        rows.len(),
        args.out.display()
    );
    Ok(())
}
