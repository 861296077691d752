//! `outpost-gateway models --config F`: the configured models (manifest
//! summary, after loading them as the daemon would) and, when the daemon
//! runs, its live analysis stats from the admin server's `/metrics`.

use std::fmt::Write as _;
use std::time::Duration;

use outpost_models::Model;

use super::config::{AnalysisConfig, ModelFiles};
use crate::config::GatewayConfig;

fn describe(out: &mut String, slot: &str, files: &ModelFiles) {
    let _ = writeln!(
        out,
        "{slot}: {} ({})",
        files.onnx.display(),
        files.manifest.display()
    );
    match Model::load_files(&files.onnx, &files.manifest) {
        Ok(m) => {
            let man = m.manifest();
            let _ = writeln!(
                out,
                "  {} v{} ({}), {} ONNX bytes, loads and plans OK",
                man.name,
                man.version,
                man.family,
                m.onnx_len()
            );
            let _ = writeln!(
                out,
                "  input: {} every {} frames of {:?} over [{}]",
                man.input.window_len,
                man.input.hop,
                man.input.frame_period,
                man.input.channels.join(", ")
            );
            let stats: Vec<&str> = man.features.stats.iter().map(|s| s.name()).collect();
            let _ = writeln!(
                out,
                "  features: {} (stats [{}]{}{})",
                m.feature_count(),
                stats.join(", "),
                if man.features.bands.is_some() {
                    ", bands"
                } else {
                    ""
                },
                if man.features.raw { ", raw" } else { "" }
            );
            let _ = writeln!(
                out,
                "  alert: {} score > {} in {} of {} windows",
                match man.score.smoothing {
                    protocol::decision::Smoothing::None => "window".to_owned(),
                    s => format!("smoothed ({})", s.label()),
                },
                man.score.threshold,
                man.score.hysteresis.k,
                man.score.hysteresis.n
            );
            let md = &man.metadata;
            if let (Some(from), Some(to)) = (md.training_from, md.training_to) {
                let _ = writeln!(out, "  trained on: {from} .. {to}");
            }
            if !md.metrics.is_empty() {
                let metrics: Vec<String> = md
                    .metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v:.4}"))
                    .collect();
                let _ = writeln!(out, "  metrics: {}", metrics.join(" "));
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  CANNOT LOAD: {e}");
        }
    }
}

/// The text `models` prints for `cfg`'s `[analysis]`.
pub fn summary(cfg: &GatewayConfig) -> String {
    let mut out = String::new();
    let Some(a) = &cfg.analysis else {
        out.push_str("analysis: off (no [analysis] section)\n");
        return out;
    };
    summarize(&mut out, a);
    out
}

fn summarize(out: &mut String, a: &AnalysisConfig) {
    let _ = writeln!(
        out,
        "analysis: {} shard(s), rings of {} readings, batches of {} within {:?}",
        a.shards, a.ring_capacity, a.batch_size, a.batch_latency
    );
    match &a.model {
        Some(files) => describe(out, "model", files),
        None => {
            let f = &a.fallback;
            let _ = writeln!(
                out,
                "model: none — fallback robust z-score over [{}], windows of {} on a {:?} grid every {}, \
                 warm-up {} windows, alert when |z| > {} in {} of {} windows",
                f.channels.join(", "),
                f.window_len,
                f.frame_period,
                f.hop,
                f.warmup_windows,
                f.threshold,
                f.k,
                f.n
            );
        }
    }
    if let Some(files) = &a.shadow {
        describe(out, "shadow", files);
    }
}

/// The daemon's live `outpost_gateway_analysis_*` samples, or why not.
pub async fn live_stats(cfg: &GatewayConfig) -> String {
    if !cfg.admin.enabled {
        return "live stats: admin server disabled\n".into();
    }
    let mut addr = cfg.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/metrics");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => return format!("live stats: {e}\n"),
    };
    let text = match client.get(&url).send().await {
        Ok(r) => match r.text().await {
            Ok(t) => t,
            Err(e) => return format!("live stats: {url}: {e}\n"),
        },
        Err(_) => return format!("live stats: the gateway is not running ({url} unreachable)\n"),
    };
    let mut out = format!("live stats ({url}):\n");
    for line in text.lines() {
        if line.starts_with("outpost_gateway_analysis_") && !line.contains("_bucket{") {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}
