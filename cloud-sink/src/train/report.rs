//! The training report: one JSON document and one self-contained HTML page
//! (inline SVG: ROC and PR curves and score histograms on the held-out data,
//! per-fold metric tables for every family tried, and with `--fleet` the
//! per-device transfer-learning table).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::cv::FoldKind;
use super::dataset::SampleStats;
use super::families::fleet::FleetReport;
use super::families::{FamilyKind, HyperParams};
use super::metrics::{BinaryMetrics, RegressionMetrics, Spread, pr_curve, roc_curve};
use super::threshold::Threshold;

/// One fold of one family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    pub index: usize,
    pub train: usize,
    pub test: usize,
    /// With labels: metrics at the fold's threshold.
    pub metrics: Option<BinaryMetrics>,
    /// Forecaster: errors predicting the newest frame (standardised units).
    pub regression: Option<RegressionMetrics>,
    /// Without labels: fraction of test windows over the threshold fitted on
    /// the fold's training scores.
    pub alarm_rate: Option<f64>,
}

/// Cross-validation of one family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FamilyResult {
    pub family: FamilyKind,
    pub fold_kind: FoldKind,
    pub folds: Vec<FoldResult>,
    /// Metric name → its spread over folds.
    pub spread: BTreeMap<String, Spread>,
    /// Why the family could not be validated, when it could not.
    pub error: Option<String>,
    pub seconds: f64,
    /// Without labels, `--family auto`: share of the windows with one
    /// channel shifted by one standard deviation that alarm at the family's
    /// calibrated threshold (out-of-fold; see `run::shift_probes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_detection: Option<f64>,
    /// The false-alarm rate its calibrated threshold gives on the
    /// out-of-fold normal windows, averaged over folds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_false_alarm_rate: Option<f64>,
}

/// What data went in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub inputs: Vec<String>,
    pub devices: usize,
    pub channels: Vec<String>,
    pub categorical: Vec<String>,
    pub features: usize,
    pub window_len: usize,
    pub window_hop: usize,
    pub samples: SampleStats,
    pub labelled: bool,
    pub anomalies: usize,
    pub train_windows: usize,
    pub test_windows: usize,
    /// How the held-out set was chosen.
    pub holdout: String,
    pub time_from_ns: Option<i64>,
    pub time_to_ns: Option<i64>,
}

/// The ONNX round-trip check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportCheck {
    pub rows: usize,
    pub max_abs_diff: f64,
    pub tolerance: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    pub created_ns: i64,
    pub data: DataSummary,
    pub hyper_params: HyperParams,
    pub candidates: Vec<FamilyResult>,
    pub chosen: FamilyKind,
    /// Why this family won.
    pub reason: String,
    pub threshold: Threshold,
    pub heldout: Option<BinaryMetrics>,
    pub heldout_regression: Option<RegressionMetrics>,
    /// Without labels: alarm rate on the held-out data.
    pub heldout_alarm_rate: Option<f64>,
    /// Held-out scores and labels, for the plots (at most 20 000).
    pub heldout_scores: Vec<f64>,
    pub heldout_labels: Option<Vec<bool>>,
    pub export: Option<ExportCheck>,
    /// How the threshold was calibrated and the false-alarm rate to expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// With `--fleet`: the fleet base model and each device's fine-tuned
    /// model on the device's held-out rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
}

/// How the chosen family's threshold was calibrated (see `run`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `out-of-fold`: every window scored by a fold model that never saw it;
    /// `in-sample`: the final model's own training windows (only when no
    /// fold could be validated).
    pub scores: String,
    /// Windows the threshold was chosen on.
    pub windows: usize,
    /// The smoothing the threshold applies to.
    pub smoothing: protocol::decision::Smoothing,
    /// With labels and `--smoothing auto`: each candidate smoothing and its
    /// out-of-fold F1 at its own threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smoothing_candidates: Vec<(String, f64)>,
    /// Share of the normal windows of each fold above the threshold: the
    /// false-alarm rate to expect on new normal data, with its spread over
    /// time blocks (or devices).
    pub false_alarm_rate: Spread,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.4}"))
}

const W: f64 = 320.0;
const H: f64 = 240.0;
const PAD: f64 = 36.0;

/// A line chart over [0,1]² of `points`.
fn curve_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    diagonal: bool,
) -> String {
    let sx = |x: f64| PAD + x * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - y * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" aria-label="{t}"><title>{t}</title><rect x="{PAD}" y="{PAD}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##,
        t = esc(title),
        w = W - 2.0 * PAD,
        h = H - 2.0 * PAD
    );
    if diagonal {
        let _ = write!(
            s,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#ccc" stroke-dasharray="4"/>"##,
            sx(0.0),
            sy(0.0),
            sx(1.0),
            sy(1.0)
        );
    }
    if !points.is_empty() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text><text x="12" y="{}" font-size="12" transform="rotate(-90 12 {})" text-anchor="middle">{}</text><text x="{}" y="20" font-size="13" text-anchor="middle">{}</text><text x="{PAD}" y="{}" font-size="10">0</text><text x="{}" y="{}" font-size="10">1</text></svg>"#,
        W / 2.0,
        H - 8.0,
        esc(x_label),
        H / 2.0,
        H / 2.0,
        esc(y_label),
        W / 2.0,
        esc(title),
        H - PAD + 12.0,
        W - PAD - 4.0,
        H - PAD + 12.0
    );
    s
}

/// Histograms of scores, normal in blue and anomalous in red, 30 bins.
fn histogram_svg(scores: &[f64], labels: Option<&[bool]>, threshold: f64) -> String {
    const BINS: usize = 30;
    let finite: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    let lo = finite
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(threshold);
    let hi = finite
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(threshold);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W2}" height="{H}" role="img" aria-label="score histogram"><title>score histogram</title>"#,
        W2 = 2.0 * W
    );
    if !(lo.is_finite() && hi.is_finite()) || finite.is_empty() {
        s.push_str("</svg>");
        return s;
    }
    let span = (hi - lo).max(1e-12);
    let bin = |v: f64| {
        (((v - lo) / span) * BINS as f64)
            .floor()
            .clamp(0.0, (BINS - 1) as f64) as usize
    };
    let mut normal = [0usize; BINS];
    let mut anomal = [0usize; BINS];
    for (i, v) in scores.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        if labels.and_then(|l| l.get(i)).copied().unwrap_or(false) {
            anomal[bin(*v)] += 1;
        } else {
            normal[bin(*v)] += 1;
        }
    }
    let max = normal
        .iter()
        .chain(&anomal)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let width = 2.0 * W - 2.0 * PAD;
    let bw = width / BINS as f64;
    for (k, (n, a)) in normal.iter().zip(&anomal).enumerate() {
        for (count, color, off) in [(*n, "#1f77b4", 0.0), (*a, "#d62728", bw / 2.0)] {
            let h = count as f64 / max * (H - 2.0 * PAD);
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" opacity="0.8"/>"#,
                PAD + k as f64 * bw + off,
                H - PAD - h,
                bw / 2.0,
                h
            );
        }
    }
    let tx = PAD + (threshold - lo) / span * width;
    let _ = write!(
        s,
        r##"<line x1="{tx:.1}" y1="{PAD}" x2="{tx:.1}" y2="{}" stroke="#000" stroke-dasharray="3"/><text x="{tx:.1}" y="{}" font-size="11">threshold {threshold:.4}</text><text x="{PAD}" y="{}" font-size="10">{lo:.3}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{hi:.3}</text><text x="{}" y="20" font-size="13" text-anchor="middle">held-out scores (blue normal, red anomaly)</text></svg>"##,
        H - PAD,
        PAD - 4.0,
        H - PAD + 12.0,
        2.0 * W - PAD,
        H - PAD + 12.0,
        W
    );
    s
}

impl TrainingReport {
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The human page.
    pub fn to_html(&self) -> String {
        let mut h = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Outpost training report</title>\
             <style>body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;margin:1em 0}\
             td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}\
             td:first-child,th:first-child{text-align:left}</style></head><body>",
        );
        let _ = write!(
            h,
            "<h1>Training report</h1><p><b>Chosen family: {}</b>. {}</p>",
            self.chosen.name(),
            esc(&self.reason)
        );
        let d = &self.data;
        let _ = write!(
            h,
            "<h2>Data</h2><table><tr><th>inputs</th><td>{}</td></tr><tr><th>devices</th><td>{}</td></tr>\
             <tr><th>channels</th><td>{}</td></tr><tr><th>categorical</th><td>{}</td></tr>\
             <tr><th>window (rows, hop)</th><td>{}, {}</td></tr><tr><th>features</th><td>{}</td></tr>\
             <tr><th>rows / windows</th><td>{} / {}</td></tr><tr><th>missing values</th><td>{}: {} windows dropped, {} cells filled, {} restarts</td></tr>\
             <tr><th>labelled</th><td>{} ({} anomalous windows)</td></tr><tr><th>train / held-out windows</th><td>{} / {}</td></tr>\
             <tr><th>held-out set</th><td>{}</td></tr></table>",
            esc(&d.inputs.join(", ")),
            d.devices,
            esc(&d.channels.join(", ")),
            esc(&d.categorical.join(", ")),
            d.window_len,
            d.window_hop,
            d.features,
            d.samples.rows,
            d.samples.windows,
            esc(&d.samples.missing_policy),
            d.samples.dropped_with_gaps,
            d.samples.filled_cells,
            d.samples.restarts,
            d.labelled,
            d.anomalies,
            d.train_windows,
            d.test_windows,
            esc(&d.holdout)
        );
        let _ = write!(
            h,
            "<h2>Threshold</h2><p>{:.6} ({})</p>",
            self.threshold.value,
            esc(&serde_json::to_string(&self.threshold.rule).unwrap_or_default())
        );
        h.push_str("<h2>Held-out results</h2>");
        if let Some(m) = &self.heldout {
            h.push_str("<table><tr>");
            for name in BinaryMetrics::NAMES {
                let _ = write!(h, "<th>{name}</th>");
            }
            h.push_str("</tr><tr>");
            for name in BinaryMetrics::NAMES {
                let _ = write!(h, "<td>{}</td>", fmt_opt(m.get(name)));
            }
            let c = m.confusion;
            let _ = write!(
                h,
                "</tr></table><table><tr><th>confusion</th><th>alarm</th><th>no alarm</th></tr>\
                 <tr><th>anomaly</th><td>{}</td><td>{}</td></tr><tr><th>normal</th><td>{}</td><td>{}</td></tr></table>",
                c.tp, c.fn_, c.fp, c.tn
            );
        }
        if let Some(r) = &self.heldout_regression {
            let _ = write!(
                h,
                "<p>Forecast on held-out data: MSE {:.5}, MAE {:.5}, R² {}</p>",
                r.mse,
                r.mae,
                fmt_opt(r.r2)
            );
        }
        if let Some(a) = self.heldout_alarm_rate {
            let _ = write!(h, "<p>Alarm rate on held-out (unlabelled) data: {a:.4}</p>");
        }
        if let Some(labels) = &self.heldout_labels {
            h.push_str(&curve_svg(
                "ROC",
                "false-alarm rate",
                "recall",
                &roc_curve(&self.heldout_scores, labels),
                true,
            ));
            h.push_str(&curve_svg(
                "Precision-recall",
                "recall",
                "precision",
                &pr_curve(&self.heldout_scores, labels),
                false,
            ));
        }
        h.push_str("<br>");
        h.push_str(&histogram_svg(
            &self.heldout_scores,
            self.heldout_labels.as_deref(),
            self.threshold.value,
        ));
        if let Some(e) = &self.export {
            let _ = write!(
                h,
                "<h2>ONNX export</h2><p>{} rows re-scored with tract: max |diff| {:.3e} (tolerance {:.0e}) — {}</p>",
                e.rows,
                e.max_abs_diff,
                e.tolerance,
                if e.passed { "passed" } else { "REFUSED" }
            );
        }
        if let Some(f) = &self.fleet {
            h.push_str(&fleet_html(f));
        }
        h.push_str("<h2>Cross-validation per family</h2>");
        for f in &self.candidates {
            let _ = write!(
                h,
                "<h3>{} ({:?}, {:.2} s)</h3>",
                f.family.name(),
                f.fold_kind,
                f.seconds
            );
            if let Some(e) = &f.error {
                let _ = write!(h, "<p>not validated: {}</p>", esc(e));
                continue;
            }
            let names: Vec<&String> = f.spread.keys().collect();
            h.push_str("<table><tr><th>fold</th><th>train</th><th>test</th>");
            for n in &names {
                let _ = write!(h, "<th>{}</th>", esc(n));
            }
            h.push_str("</tr>");
            for fold in &f.folds {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td>",
                    fold.index, fold.train, fold.test
                );
                for n in &names {
                    let _ = write!(h, "<td>{}</td>", fmt_opt(fold_metric(fold, n)));
                }
                h.push_str("</tr>");
            }
            h.push_str("<tr><th>mean ± std</th><td></td><td></td>");
            for n in &names {
                let s = &f.spread[*n];
                let _ = write!(h, "<td>{} ± {}</td>", fmt_opt(s.mean), fmt_opt(s.std));
            }
            h.push_str("</tr></table>");
        }
        h.push_str("</body></html>\n");
        h
    }
}

/// The fleet section of the HTML report.
fn fleet_html(f: &FleetReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<h2>Fleet transfer learning</h2><p>Base model (hidden width {}) trained on all devices: \
         {} epochs (best {}), validation loss {:.4}. Each device's model is the base fine-tuned on \
         the device's rows with the encoder frozen; losses are mean squared reconstruction errors \
         on the device's latest {:.0}% of rows, held out. Gain = (base − fine-tuned) / base.</p>\
         <p>Mean gain {}; improved on {} of {} devices.</p>",
        f.hidden,
        f.base.epochs,
        f.base.best_epoch,
        f.base.validation_loss,
        100.0 * f.heldout_fraction,
        f.mean_gain()
            .map_or_else(|| "—".into(), |g| format!("{:.1}%", 100.0 * g)),
        f.improved(),
        f.devices.len()
    );
    h.push_str(
        "<table class=\"fleet\"><tr><th>device</th><th>train rows</th><th>held-out rows</th>\
         <th>base loss</th><th>fine-tuned loss</th><th>gain</th><th>epochs (best/ran)</th></tr>",
    );
    for d in &f.devices {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.1}%</td><td>{}/{}</td></tr>",
            esc(&d.device),
            d.train_rows,
            d.heldout_rows,
            d.base_heldout_loss,
            d.fine_tuned_heldout_loss,
            100.0 * d.gain,
            d.fine_tuning.best_epoch,
            d.fine_tuning.epochs
        );
    }
    h.push_str("</table>");
    if !f.skipped.is_empty() {
        let _ = write!(h, "<p>Left out: {}</p>", esc(&f.skipped.join("; ")));
    }
    h
}

impl FoldKind {
    /// How the folds are cut, for the report's sentences.
    pub fn describe(self) -> &'static str {
        match self {
            FoldKind::KFold => "shuffled k-fold",
            FoldKind::Stratified => "stratified k-fold",
            FoldKind::ByDevice => {
                "by-device folds, each scored on training devices its model never saw"
            }
            FoldKind::Blocked => "blocked (consecutive time blocks) folds",
            FoldKind::ForwardChaining => "forward-chaining (time-ordered) folds",
        }
    }
}

fn mean_std(r: &FamilyResult, name: &str) -> (Option<f64>, Option<f64>) {
    r.spread.get(name).map_or((None, None), |s| (s.mean, s.std))
}

/// Why `chosen` won a comparison of `compared` (the results the choice was
/// made on, one per family): its validation F1 and PR-AUC with their fold
/// spread, the runner-up's, the other families' F1, and the families that
/// could not be validated, with why.
/// `named`: the family was named with `--family`, nothing was compared.
/// Why `chosen` won a comparison without labels: the most simulated
/// one-channel shifts caught at the calibrated false-alarm rate.
pub fn one_class_reason(chosen: FamilyKind, compared: &[&FamilyResult]) -> String {
    let describe = |r: &FamilyResult| {
        format!(
            "{} catches {} of the windows with one channel shifted by one standard deviation, at an expected false-alarm rate of {}",
            r.family.name(),
            r.shift_detection
                .map_or_else(|| "—".into(), |d| format!("{:.1} %", 100.0 * d)),
            r.expected_false_alarm_rate
                .map_or_else(|| "—".into(), |d| format!("{:.1} %", 100.0 * d)),
        )
    };
    let mut out = String::from(
        "no labels: the one-class families were compared on simulated sensor shifts (out-of-fold, each at its own calibrated threshold). ",
    );
    if let Some(w) = compared.iter().find(|r| r.family == chosen) {
        let _ = write!(out, "{}.", describe(w));
    }
    for r in compared.iter().filter(|r| r.family != chosen) {
        match &r.error {
            None => {
                let _ = write!(out, " Runner-up: {}.", describe(r));
            }
            Some(e) => {
                let _ = write!(out, " {} could not be validated: {e}.", r.family.name());
            }
        }
    }
    out
}

pub fn selection_reason(chosen: FamilyKind, compared: &[&FamilyResult], named: bool) -> String {
    let f1 = |r: &FamilyResult| mean_std(r, "f1").0.unwrap_or(f64::NEG_INFINITY);
    let ap = |r: &FamilyResult| mean_std(r, "pr_auc").0.unwrap_or(f64::NEG_INFINITY);
    let mut ok: Vec<&FamilyResult> = compared
        .iter()
        .copied()
        .filter(|r| r.error.is_none())
        .collect();
    ok.sort_by(|a, b| f1(b).total_cmp(&f1(a)).then(ap(b).total_cmp(&ap(a))));
    let metric = |r: &FamilyResult| {
        if !r.spread.contains_key("f1") {
            let (a, sd) = mean_std(r, "alarm_rate");
            return format!("alarm rate {} ± {} (no labels)", fmt_opt(a), fmt_opt(sd));
        }
        let (m, sd) = mean_std(r, "f1");
        let (p, _) = mean_std(r, "pr_auc");
        let folds = r.spread.get("f1").map_or(0, |s| s.defined);
        format!(
            "F1 {} ± {} over {folds} folds, PR-AUC {}",
            fmt_opt(m),
            fmt_opt(sd),
            fmt_opt(p)
        )
    };
    let mut out = String::new();
    if named {
        match compared.iter().find(|r| r.family == chosen) {
            Some(r) if r.error.is_none() => {
                let _ = write!(
                    out,
                    "{} was named with --family (no comparison); its validation with {}: {}.",
                    chosen.name(),
                    r.fold_kind.describe(),
                    metric(r)
                );
            }
            _ => {
                let _ = write!(out, "{} was named with --family.", chosen.name());
            }
        }
        return out;
    }
    match ok.iter().find(|r| r.family == chosen) {
        Some(w) => {
            let _ = write!(
                out,
                "{} has the highest mean cross-validated F1 on the training data (validation with {}): {}.",
                chosen.name(),
                w.fold_kind.describe(),
                metric(w)
            );
        }
        None => {
            let _ = write!(out, "{} was chosen.", chosen.name());
        }
    }
    let others: Vec<&&FamilyResult> = ok.iter().filter(|r| r.family != chosen).collect();
    if let Some(r) = others.first() {
        let _ = write!(out, " Runner-up: {}, {}.", r.family.name(), metric(r));
    }
    if others.len() > 1 {
        let rest: Vec<String> = others[1..]
            .iter()
            .map(|r| format!("{} F1 {}", r.family.name(), fmt_opt(mean_std(r, "f1").0)))
            .collect();
        let _ = write!(out, " Then: {}.", rest.join(", "));
    }
    let failed: Vec<String> = compared
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("{} ({e})", r.family.name()))
        })
        .collect();
    if !failed.is_empty() {
        let _ = write!(out, " Not validated: {}.", failed.join("; "));
    }
    out
}

/// A fold's value of a metric named as in [`FamilyResult::spread`].
pub fn fold_metric(fold: &FoldResult, name: &str) -> Option<f64> {
    match name {
        "mse" => fold.regression.as_ref().map(|r| r.mse),
        "mae" => fold.regression.as_ref().map(|r| r.mae),
        "r2" => fold.regression.as_ref().and_then(|r| r.r2),
        "alarm_rate" => fold.alarm_rate,
        other => fold.metrics.as_ref().and_then(|m| m.get(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(family: FamilyKind, f1: f64, error: Option<&str>) -> FamilyResult {
        let spread = |v: f64| Spread::of(&[Some(v - 0.01), Some(v + 0.01)]);
        let mut s = BTreeMap::new();
        if error.is_none() {
            s.insert("f1".to_owned(), spread(f1));
            s.insert("pr_auc".to_owned(), spread(f1 + 0.05));
        }
        FamilyResult {
            family,
            fold_kind: FoldKind::ByDevice,
            folds: Vec::new(),
            spread: s,
            error: error.map(str::to_owned),
            seconds: 0.0,
            shift_detection: None,
            expected_false_alarm_rate: None,
        }
    }

    #[test]
    fn the_reason_cites_the_validation_the_runner_up_and_the_failures() {
        let r = [
            result(FamilyKind::Pca, 0.70, None),
            result(FamilyKind::WeightedGaussian, 0.85, None),
            result(FamilyKind::Gaussian, 0.80, None),
            result(FamilyKind::Classifier, 0.0, Some("did not converge")),
        ];
        let refs: Vec<&FamilyResult> = r.iter().collect();
        let why = selection_reason(FamilyKind::WeightedGaussian, &refs, false);
        assert!(
            why.starts_with("weighted_gaussian has the highest mean cross-validated F1"),
            "{why}"
        );
        assert!(why.contains("F1 0.8500 ± 0.0100 over 2 folds"), "{why}");
        assert!(why.contains("by-device folds"), "{why}");
        assert!(why.contains("Runner-up: gaussian, F1 0.8000"), "{why}");
        assert!(why.contains("Then: pca F1 0.7000"), "{why}");
        assert!(
            why.contains("Not validated: classifier (did not converge)"),
            "{why}"
        );
        let named = selection_reason(FamilyKind::Pca, &refs[..1], true);
        assert!(named.starts_with("pca was named with --family"), "{named}");
        assert!(named.contains("F1 0.7000"), "{named}");
    }
}
