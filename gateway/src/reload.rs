//! SIGHUP: re-read the config file, validate it, and apply what can change
//! while the gateway runs.
//!
//! - The new file is loaded exactly like at start (parse, environment
//!   overrides, validation). If anything is wrong, every problem is logged with
//!   its key, the running config stays as it was, and
//!   `outpost_gateway_config_reloads_total{outcome="rejected"}` counts it.
//! - Applied live: the whole `[uplink]` section (batch sizes, linger, backoff,
//!   timeout, compression, token / token file, URL, CA bundle, client
//!   certificate — a new HTTP client is built and swapped in before the next
//!   batch or retry) and `mqtt.subscriptions` (new topics subscribed, dropped
//!   ones unsubscribed; formats apply to the next message).
//! - Everything else (storage path, listen addresses, ingest, limits, the MQTT
//!   connection, logging…) needs a restart: the changed keys are logged and
//!   `outpost_gateway_config_restart_pending` is 1 until the process restarts.
//!   The running values of those keys are kept, so a later reload reports them again.

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{ConfigError, GatewayConfig, Subscription};
use crate::contracts::{ContractSet, SharedContracts};
use crate::metrics::OutcomeLabel;
use crate::uplink::{SettingsSender, UplinkSettings};

/// Reload metrics (`outpost_gateway_config_*`).
#[derive(Clone, Debug)]
pub struct ReloadMetrics {
    /// Reloads by outcome: `applied`, `unchanged`, `rejected`.
    pub reloads: Family<OutcomeLabel, Counter>,
    /// 1 while the config file has changes that only a restart applies.
    pub restart_pending: Gauge,
}

impl ReloadMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ReloadMetrics {
            reloads: Family::default(),
            restart_pending: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("outpost_gateway");
        r.register(
            "config_reloads",
            "Config reloads (SIGHUP) by outcome: applied, unchanged, rejected (the old config stays)",
            m.reloads.clone(),
        );
        r.register(
            "config_restart_pending",
            "1 while the config file has changes that need a restart to apply",
            m.restart_pending.clone(),
        );
        m
    }

    fn count(&self, outcome: &'static str) {
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// What changed between the running config and the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Keys applied without a restart.
    pub live: Vec<String>,
    /// Keys that changed but need a restart.
    pub restart: Vec<String>,
}

/// Compares two configs by their `Debug` form (every config type has one;
/// secrets are compared, never printed).
fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The changed keys, split into live and restart-needing ones.
pub fn changes(old: &GatewayConfig, new: &GatewayConfig) -> Changes {
    let mut c = Changes::default();
    let (ou, nu) = (&old.uplink, &new.uplink);
    macro_rules! uplink_fields {
        ($($field:ident),*) => {
            $(if differs(&ou.$field, &nu.$field) {
                c.live.push(concat!("uplink.", stringify!($field)).to_owned());
            })*
        };
    }
    uplink_fields!(
        url,
        token,
        token_file,
        max_batch_records,
        max_batch_bytes,
        linger,
        timeout,
        backoff_min,
        backoff_max,
        compression_level,
        ca_file,
        client_cert,
        client_key
    );
    if c.live.is_empty() && differs(ou, nu) {
        c.live.push("uplink".to_owned());
    }
    match (&old.mqtt, &new.mqtt) {
        (Some(o), Some(n)) => {
            if differs(&o.subscriptions, &n.subscriptions) {
                c.live.push("mqtt.subscriptions".to_owned());
            }
            let mut probe = n.clone();
            probe.subscriptions = o.subscriptions.clone();
            if differs(o, &probe) {
                c.restart.push("mqtt (connection settings)".to_owned());
            }
        }
        (None, None) => {}
        _ => c.restart.push("mqtt".to_owned()),
    }
    // Every other section: named when known, and a catch-all for sections
    // this module does not know about.
    let mut probe = new.clone();
    probe.uplink = old.uplink.clone();
    probe.mqtt = old.mqtt.clone();
    macro_rules! restart_sections {
        ($($field:ident),*) => {
            $(if differs(&old.$field, &new.$field) {
                c.restart.push(stringify!($field).to_owned());
            }
            probe.$field = old.$field.clone();)*
        };
    }
    restart_sections!(gateway_id, storage, ingest, limits, http, admin, log);
    // Contract rules (inline and the file) are compared as built sets by the
    // reloader; the other `[contracts]` settings size state and need a restart.
    let oc = old.contracts.clone().unwrap_or_default();
    let mut nc = new.contracts.clone().unwrap_or_default();
    nc.contract = oc.contract.clone();
    nc.path = oc.path.clone();
    if differs(&oc, &nc) {
        c.restart
            .push("contracts (settings other than the rules)".to_owned());
    }
    probe.contracts = old.contracts.clone();
    if differs(old, &probe) {
        c.restart.push("other sections".to_owned());
    }
    c
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(Changes),
    /// The file says what is running (or only restart-needing keys changed).
    Unchanged(Changes),
    /// The file is bad; the running config stays.
    Rejected(String),
}

/// Holds the running config and the channels that apply a new one.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// The running config: restart-needing keys keep their start values.
    current: GatewayConfig,
    uplink: SettingsSender,
    subscriptions: Option<watch::Sender<Vec<Subscription>>>,
    contracts: Option<SharedContracts>,
    metrics: ReloadMetrics,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        current: GatewayConfig,
        uplink: SettingsSender,
        subscriptions: Option<watch::Sender<Vec<Subscription>>>,
        metrics: ReloadMetrics,
    ) -> Self {
        Reloader {
            path,
            current,
            uplink,
            subscriptions,
            contracts: None,
            metrics,
        }
    }

    /// Also reload the contract rules (`[contracts]` inline and its file) into
    /// the live set the ingest stage reads.
    pub fn with_contracts(mut self, contracts: SharedContracts) -> Self {
        self.contracts = Some(contracts);
        self
    }

    /// Reads and validates the file; applies it if good; logs and counts the outcome.
    pub fn reload(&mut self) -> Outcome {
        let outcome = self.try_reload();
        match &outcome {
            Outcome::Applied(c) => {
                self.metrics.count("applied");
                info!(path = %self.path.display(), applied = ?c.live, "Config reloaded.");
            }
            Outcome::Unchanged(_) => {
                self.metrics.count("unchanged");
                info!(path = %self.path.display(), "Config reloaded: nothing to apply.");
            }
            Outcome::Rejected(why) => {
                self.metrics.count("rejected");
                error!(path = %self.path.display(), reason = %why, "Config reload rejected; still running on the previous config.");
            }
        }
        if let Outcome::Applied(c) | Outcome::Unchanged(c) = &outcome {
            self.metrics
                .restart_pending
                .set(i64::from(!c.restart.is_empty()));
            if !c.restart.is_empty() {
                warn!(keys = ?c.restart, "These changed keys apply only after a restart (systemctl restart outpost-gateway).");
            }
        }
        outcome
    }

    fn try_reload(&mut self) -> Outcome {
        let new = match GatewayConfig::load(&self.path) {
            Ok(cfg) => cfg,
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in &problems {
                    warn!(key = %p.key, problem = %p.message, "Config problem.");
                }
                return Outcome::Rejected(format!(
                    "{} problem(s) in the new config",
                    problems.len()
                ));
            }
            Err(e) => return Outcome::Rejected(e.to_string()),
        };
        let mut changes = changes(&self.current, &new);
        // The token file's content may change under the same path.
        let settings = match UplinkSettings::build(new.uplink.clone()) {
            Ok(s) => s,
            Err(e) => return Outcome::Rejected(format!("uplink: {e}")),
        };
        let token_changed = settings.token() != self.uplink.borrow().token();
        if token_changed && !changes.live.iter().any(|k| k == "uplink.token") {
            changes.live.push("uplink.token (file content)".to_owned());
        }
        // The contract file's content may change under the same path too.
        let mut new_contracts = None;
        if let Some(live) = &self.contracts {
            let cfg = new.contracts.clone().unwrap_or_default();
            match ContractSet::from_config(&cfg, "contracts") {
                Ok(set) => {
                    if differs(&**live.load(), &set) {
                        changes.live.push("contracts".to_owned());
                        new_contracts = Some(set);
                    }
                }
                Err(e) => {
                    for p in e.problems() {
                        warn!(key = %p.key, problem = %p.message, "Contract problem.");
                    }
                    return Outcome::Rejected(format!("contracts: {e}"));
                }
            }
        }
        if changes.live.is_empty() {
            return Outcome::Unchanged(changes);
        }
        let uplink_changed = changes.live.iter().any(|k| k.starts_with("uplink"));
        if uplink_changed {
            self.uplink.send_replace(Arc::new(settings));
            self.current.uplink = new.uplink.clone();
        }
        if let (Some(tx), Some(old), Some(new)) =
            (&self.subscriptions, self.current.mqtt.as_mut(), &new.mqtt)
            && differs(&old.subscriptions, &new.subscriptions)
        {
            tx.send_replace(new.subscriptions.clone());
            old.subscriptions = new.subscriptions.clone();
        }
        if let (Some(live), Some(set)) = (&self.contracts, new_contracts) {
            info!(contracts = set.len(), "Contract rules reloaded.");
            live.store(Arc::new(set));
            self.current.contracts = new.contracts.clone();
        }
        Outcome::Applied(changes)
    }

    /// Installs the SIGHUP handler now (so a SIGHUP no longer terminates the
    /// process) and reloads on each one until `shutdown` turns true.
    #[cfg(unix)]
    pub fn spawn(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hup.recv() => {
                        if got.is_none() {
                            break;
                        }
                        info!(path = %self.path.display(), "SIGHUP: reloading the config.");
                        let _ = self.reload();
                    }
                    _ = shutdown.changed() => break,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
        gateway_id = "gw-1"
        [mqtt]
        [[mqtt.subscriptions]]
        topic = "a/#"
        [uplink]
        url = "http://127.0.0.1:8080"
        token = "secret"
    "#;

    fn cfg(text: &str) -> GatewayConfig {
        GatewayConfig::from_toml(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn uplink_and_subscription_changes_are_live_the_rest_needs_a_restart() {
        let old = cfg(BASE);
        let new = cfg(&BASE
            .replace("token = \"secret\"", "token = \"secret\"\nlinger = \"2s\"")
            .replace("topic = \"a/#\"", "topic = \"b/#\"")
            .replace("gateway_id = \"gw-1\"", "gateway_id = \"gw-1\"\n[storage]\npath = \"/tmp/x\"\n[admin]\nlisten = \"127.0.0.1:9999\""));
        let c = changes(&old, &new);
        assert_eq!(c.live, vec!["uplink.linger", "mqtt.subscriptions"]);
        assert_eq!(c.restart, vec!["storage", "admin"]);
        assert_eq!(changes(&old, &old), Changes::default());
        let mqtt = cfg(&BASE.replace("[mqtt]", "[mqtt]\nport = 1884"));
        assert_eq!(
            changes(&old, &mqtt).restart,
            vec!["mqtt (connection settings)"]
        );
    }

    #[tokio::test]
    async fn a_bad_file_is_rejected_and_the_running_settings_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, BASE).unwrap();
        let start = cfg(BASE);
        let (tx, rx) = watch::channel(Arc::new(
            UplinkSettings::build(start.uplink.clone()).unwrap(),
        ));
        let tx = Arc::new(tx);
        let (subs_tx, subs_rx) = watch::channel(start.mqtt.clone().unwrap().subscriptions);
        let mut registry = Registry::default();
        let metrics = ReloadMetrics::new(&mut registry);
        let mut r = Reloader::new(path.clone(), start, tx, Some(subs_tx), metrics.clone());

        assert!(matches!(r.reload(), Outcome::Unchanged(_)));

        std::fs::write(&path, BASE.replace("topic = \"a/#\"", "topic = \"a/#/b\"")).unwrap();
        assert!(matches!(r.reload(), Outcome::Rejected(_)));
        std::fs::write(&path, "not toml [").unwrap();
        assert!(matches!(r.reload(), Outcome::Rejected(_)));
        assert!(!subs_rx.has_changed().unwrap());
        assert_eq!(
            metrics
                .reloads
                .get_or_create(&OutcomeLabel {
                    outcome: "rejected"
                })
                .get(),
            2
        );

        std::fs::write(
            &path,
            BASE.replace("topic = \"a/#\"", "topic = \"c/#\"").replace(
                "token = \"secret\"",
                "token = \"other\"\nmax_batch_records = 7",
            ),
        )
        .unwrap();
        let Outcome::Applied(c) = r.reload() else {
            panic!("expected Applied")
        };
        assert_eq!(
            c.live,
            vec![
                "uplink.token",
                "uplink.max_batch_records",
                "mqtt.subscriptions"
            ]
        );
        assert_eq!(subs_rx.borrow()[0].topic, "c/#");
        assert_eq!(rx.borrow().cfg.max_batch_records, 7);
        assert_eq!(rx.borrow().token(), "other");
    }
}
