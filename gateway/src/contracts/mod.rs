//! Sensor contracts: declarative validation and cleansing of readings.
//!
//! A contract names the readings it covers by device and channel glob
//! patterns (`*`, `?`, `[abc]`, `{a,b}`), and the rules they must follow:
//!
//! | key | rule | reason code when rejected | flag when flagged |
//! |---|---|---|---|
//! | `required = ["unit", "timestamp", "seq"]` | fields that must be present | `contract_required` | `MISSING_FIELD` |
//! | `unit = "Cel"` | canonical SenML unit; convertible units are converted ([`units`]) | `contract_unit` | `UNIT_MISMATCH` |
//! | `max_future_skew`, `max_past_age` | timestamp vs the gateway clock | `contract_skew` | `TIME_SKEW` |
//! | `min`, `max` | value range (in the canonical unit) | `contract_range` | `OUT_OF_RANGE` |
//! | `max_rate` | change per second vs the previous accepted reading of the series | `contract_rate` | `RATE_OF_CHANGE` |
//! | `stuck = N` | N identical consecutive values | `contract_stuck` | `STUCK` |
//!
//! Each rule's action is `reject` (the reading becomes a quarantine entry with
//! the reason code and a detail naming contract, rule and value; the other
//! readings of its message go on) or `flag` (a quality bit on the reading).
//! The contract's `action` applies to every rule, `actions.<rule>` overrides it.
//! A converted value gets `UNIT_CONVERTED`. NaN and ±∞ are always rejected
//! (`non_finite_value`): decoders refuse them and a conversion that overflows
//! is caught here.
//!
//! **Matching: the first contract that matches wins**, in order: inline
//! contracts of `[contracts]` first, then those of the file, each in the order
//! written. Put specific patterns before general ones; a contract after one
//! that matches everything (`*`/`*`) can never apply and is reported by
//! validation.
//!
//! **Rule order** for one reading: required, unit, skew, range, rate, stuck;
//! the first rejecting rule decides the reason code. A reading whose unit
//! could not be converted (flagged) skips range and rate and does not update
//! its series. Skew rules do not apply to readings the gateway timed itself
//! (`TIME_FROM_RECEIVE`), and while the gateway clock is unsynchronised they
//! are skipped and the reading is flagged `SKEW_UNCHECKED`.
//!
//! **Series state** (previous accepted value and time, identical-value run) is
//! kept per `(device, channel)` in a table capped at `max_series` entries; the
//! least recently updated series is evicted first (LRU), and an evicted series
//! starts afresh (its next reading is not rate- or stuck-checked). A reading
//! not newer than its series' last accepted one (out of order, or a redelivery)
//! is not rate- or stuck-checked and does not update the series. Rejected
//! readings do not update it either: a stuck sensor stays rejected until its
//! value changes.
//!
//! The rules are I/O-free ([`ContractSet::evaluate`]); [`stage`] wires them,
//! de-duplication ([`dedup`]) and clock stamping into the ingest stage. The
//! set is held in an [`ArcSwap`] so it can be replaced live.

pub mod dedup;
pub mod stage;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use globset::{GlobBuilder, GlobMatcher};
use hashlink::LruCache;
use protocol::{Quality, Reading, Timestamp};
use serde::Deserialize;

use crate::clock::ClockNow;
use crate::config::ConfigProblem;

/// The live contract set; a reload stores a new one.
pub type SharedContracts = Arc<ArcSwap<ContractSet>>;

/// What happens to a reading that breaks a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Quarantine the reading with the rule's reason code.
    #[default]
    Reject,
    /// Keep the reading, with the rule's quality flag.
    Flag,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reject => "reject",
            Action::Flag => "flag",
        }
    }
}

/// A field a contract can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequiredField {
    /// A unit (`u`/`bu` in SenML, `units` in the plain form).
    Unit,
    /// The sensor's own timestamp (not the gateway's receive time).
    Timestamp,
    /// The sensor's sequence number.
    Seq,
}

impl RequiredField {
    fn name(self) -> &'static str {
        match self {
            RequiredField::Unit => "unit",
            RequiredField::Timestamp => "timestamp",
            RequiredField::Seq => "seq",
        }
    }

    fn present(self, r: &Reading) -> bool {
        match self {
            RequiredField::Unit => r.unit.is_some(),
            RequiredField::Timestamp => !r.quality.contains(Quality::TIME_FROM_RECEIVE),
            RequiredField::Seq => r.seq.is_some(),
        }
    }
}

/// Per-rule overrides of a contract's `action`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleActions {
    /// Action of `required`.
    pub required: Option<Action>,
    /// Action of `unit` (an unconvertible unit).
    pub unit: Option<Action>,
    /// Action of `max_future_skew` / `max_past_age`.
    pub skew: Option<Action>,
    /// Action of `min` / `max`.
    pub range: Option<Action>,
    /// Action of `max_rate`.
    pub rate: Option<Action>,
    /// Action of `stuck`.
    pub stuck: Option<Action>,
}

/// One contract as written in TOML (`[[contract]]` in a contracts file,
/// `[[contracts.contract]]` inline in the gateway config).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// Name used in quarantine details, logs and problems; default `contract[i]`.
    pub name: Option<String>,
    /// Glob over the device name; default `*`.
    #[serde(default = "star")]
    pub device: String,
    /// Glob over the channel name; default `*`.
    #[serde(default = "star")]
    pub channel: String,
    /// Canonical SenML unit; readings in a convertible unit are converted,
    /// readings without a unit are taken to be in it.
    pub unit: Option<String>,
    /// Smallest valid value (canonical unit).
    pub min: Option<f64>,
    /// Largest valid value (canonical unit).
    pub max: Option<f64>,
    /// Largest change per second vs the previous accepted reading of the series.
    pub max_rate: Option<f64>,
    /// This many identical consecutive values (≥ 2) break the rule.
    pub stuck: Option<u32>,
    /// How far a timestamp may be ahead of the gateway clock.
    #[serde(default, with = "humantime_serde")]
    pub max_future_skew: Option<Duration>,
    /// How far a timestamp may be behind the gateway clock.
    #[serde(default, with = "humantime_serde")]
    pub max_past_age: Option<Duration>,
    /// Fields that must be present.
    #[serde(default)]
    pub required: Vec<RequiredField>,
    /// Action of every rule of this contract (default `reject`).
    #[serde(default)]
    pub action: Action,
    /// Per-rule overrides of `action`.
    #[serde(default)]
    pub actions: RuleActions,
}

fn star() -> String {
    "*".into()
}

/// A contracts file: `[[contract]]` tables.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractFile {
    #[serde(default)]
    contract: Vec<ContractSpec>,
}

/// `[contracts]` in the gateway config: validation, cleansing, de-duplication.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContractsConfig {
    /// A TOML file of `[[contract]]` tables (see `configs/contracts.toml`).
    pub path: Option<PathBuf>,
    /// Contracts written inline (`[[contracts.contract]]`); matched before the file's.
    pub contract: Vec<ContractSpec>,
    /// Most series whose previous value is kept for `max_rate`/`stuck` (LRU eviction).
    pub max_series: usize,
    /// Reading identities remembered for de-duplication (FIFO); 0 turns it off.
    pub dedup_window: usize,
}

/// Default of `contracts.max_series`.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// Default of `contracts.dedup_window`.
pub const DEFAULT_DEDUP_WINDOW: usize = 65_536;

impl Default for ContractsConfig {
    fn default() -> Self {
        ContractsConfig {
            path: None,
            contract: Vec::new(),
            max_series: DEFAULT_MAX_SERIES,
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }
}

impl ContractsConfig {
    /// Adds every problem (of the section, its inline contracts and its file)
    /// to `problems`; `key` is the section's key (`contracts`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        if self.max_series == 0 || self.max_series > 10_000_000 {
            problems.push(ConfigProblem {
                key: format!("{key}.max_series"),
                message: "must be within 1..=10000000".into(),
            });
        }
        if self.dedup_window > 10_000_000 {
            problems.push(ConfigProblem {
                key: format!("{key}.dedup_window"),
                message: "must be at most 10000000 (0 turns de-duplication off)".into(),
            });
        }
        if let Err(e) = ContractSet::from_config(self, key) {
            problems.extend(e.problems());
        }
    }
}

/// Why a contract set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ContractsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{} contract problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl ContractsError {
    /// Every problem, each with its key path.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        match self {
            ContractsError::Read { path, source } => vec![ConfigProblem {
                key: path.display().to_string(),
                message: format!("cannot read: {source}"),
            }],
            ContractsError::Parse { path, message } => vec![ConfigProblem {
                key: path.display().to_string(),
                message: message.trim_end().to_owned(),
            }],
            ContractsError::Invalid(p) => p.clone(),
        }
    }
}

/// A rule of a contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    Required,
    Unit,
    Skew,
    Range,
    Rate,
    Stuck,
    /// Not configurable: a value that is NaN or infinite (after conversion).
    NonFinite,
}

impl Rule {
    /// The quarantine reason code of a rejection by this rule.
    pub fn reason_code(self) -> &'static str {
        match self {
            Rule::Required => "contract_required",
            Rule::Unit => "contract_unit",
            Rule::Skew => "contract_skew",
            Rule::Range => "contract_range",
            Rule::Rate => "contract_rate",
            Rule::Stuck => "contract_stuck",
            Rule::NonFinite => "non_finite_value",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::Unit => "unit",
            Rule::Skew => "skew",
            Rule::Range => "range",
            Rule::Rate => "rate",
            Rule::Stuck => "stuck",
            Rule::NonFinite => "finite",
        }
    }

    /// The quality flag of a flagged violation.
    pub fn flag(self) -> Quality {
        match self {
            Rule::Required => Quality::MISSING_FIELD,
            Rule::Unit => Quality::UNIT_MISMATCH,
            Rule::Skew => Quality::TIME_SKEW,
            Rule::Range => Quality::OUT_OF_RANGE,
            Rule::Rate => Quality::RATE_OF_CHANGE,
            Rule::Stuck => Quality::STUCK,
            Rule::NonFinite => Quality::empty(),
        }
    }
}

/// A glob, with fast paths for `*` and for plain names.
#[derive(Clone, Debug)]
enum Pattern {
    Any,
    Exact(String),
    Glob(GlobMatcher),
}

impl Pattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if s.is_empty() {
            return Err("is empty".into());
        }
        if !s.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            return Ok(Pattern::Exact(s.to_owned()));
        }
        GlobBuilder::new(s)
            .literal_separator(false)
            .build()
            .map(|g| Pattern::Glob(g.compile_matcher()))
            .map_err(|e| format!("not a valid glob: {e}"))
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(x) => x == s,
            Pattern::Glob(g) => g.is_match(s),
        }
    }
}

/// A validated contract.
#[derive(Clone, Debug)]
pub struct Contract {
    pub name: String,
    /// Where it was written, e.g. `contracts.toml:contract[2]`.
    pub key: String,
    device: Pattern,
    channel: Pattern,
    unit: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    max_rate: Option<f64>,
    stuck: Option<u32>,
    max_future_ns: Option<i64>,
    max_past_ns: Option<i64>,
    required: Vec<RequiredField>,
    action: Action,
    actions: RuleActions,
}

impl Contract {
    fn action(&self, rule: Rule) -> Action {
        let o = &self.actions;
        let over = match rule {
            Rule::Required => o.required,
            Rule::Unit => o.unit,
            Rule::Skew => o.skew,
            Rule::Range => o.range,
            Rule::Rate => o.rate,
            Rule::Stuck => o.stuck,
            Rule::NonFinite => Some(Action::Reject),
        };
        over.unwrap_or(self.action)
    }

    pub fn matches(&self, device: &str, channel: &str) -> bool {
        self.device.matches(device) && self.channel.matches(channel)
    }

    fn needs_series(&self) -> bool {
        self.max_rate.is_some() || self.stuck.is_some()
    }

    /// Builds a contract, reporting every problem under `key` (e.g. `contract[2]`).
    fn build(spec: &ContractSpec, key: &str, problems: &mut Vec<ConfigProblem>) -> Option<Self> {
        let before = problems.len();
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: if field.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{field}")
                },
                message,
            })
        };
        let name = spec.name.clone().unwrap_or_else(|| key.to_owned());
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            bad("name", "must be 1..=128 printable characters".into());
        }
        let device = Pattern::parse(&spec.device)
            .map_err(|e| bad("device", e))
            .ok();
        let channel = Pattern::parse(&spec.channel)
            .map_err(|e| bad("channel", e))
            .ok();
        if let Some(u) = &spec.unit
            && units::lookup(u).is_none()
        {
            bad(
                "unit",
                format!(
                    "unknown unit {u:?}; use a SenML unit name such as Cel, Pa, %RH, m/s, A, m3/s"
                ),
            );
        }
        for (field, v) in [("min", spec.min), ("max", spec.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                bad(field, "must be a finite number".into());
            }
        }
        if let (Some(lo), Some(hi)) = (spec.min, spec.max)
            && lo > hi
        {
            bad("min", format!("is above max ({lo} > {hi})"));
        }
        if let Some(r) = spec.max_rate
            && !(r.is_finite() && r > 0.0)
        {
            bad("max_rate", "must be a positive number (per second)".into());
        }
        if let Some(n) = spec.stuck
            && n < 2
        {
            bad(
                "stuck",
                "must be at least 2 (identical consecutive values)".into(),
            );
        }
        let nanos =
            |d: Option<Duration>| d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        for (field, d) in [
            ("max_future_skew", spec.max_future_skew),
            ("max_past_age", spec.max_past_age),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                bad(field, "must be positive".into());
            }
        }
        let mut seen = Vec::new();
        for f in &spec.required {
            if seen.contains(f) {
                bad("required", format!("{:?} is listed twice", f.name()));
            }
            seen.push(*f);
        }
        let has_rule = spec.unit.is_some()
            || spec.min.is_some()
            || spec.max.is_some()
            || spec.max_rate.is_some()
            || spec.stuck.is_some()
            || spec.max_future_skew.is_some()
            || spec.max_past_age.is_some()
            || !spec.required.is_empty();
        if !has_rule {
            bad("", "has no rule (unit, min, max, max_rate, stuck, max_future_skew, max_past_age or required)".into());
        }
        let a = &spec.actions;
        for (field, set, rule_present) in [
            ("actions.required", a.required, !spec.required.is_empty()),
            ("actions.unit", a.unit, spec.unit.is_some()),
            (
                "actions.skew",
                a.skew,
                spec.max_future_skew.is_some() || spec.max_past_age.is_some(),
            ),
            (
                "actions.range",
                a.range,
                spec.min.is_some() || spec.max.is_some(),
            ),
            ("actions.rate", a.rate, spec.max_rate.is_some()),
            ("actions.stuck", a.stuck, spec.stuck.is_some()),
        ] {
            if set.is_some() && !rule_present {
                bad(
                    field,
                    "sets the action of a rule this contract does not have".into(),
                );
            }
        }
        if problems.len() > before {
            return None;
        }
        Some(Contract {
            name,
            key: key.to_owned(),
            device: device?,
            channel: channel?,
            unit: spec.unit.clone(),
            min: spec.min,
            max: spec.max,
            max_rate: spec.max_rate,
            stuck: spec.stuck,
            max_future_ns: nanos(spec.max_future_skew),
            max_past_ns: nanos(spec.max_past_age),
            required: spec.required.clone(),
            action: spec.action,
            actions: spec.actions.clone(),
        })
    }
}

/// The previous accepted reading of one series.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SeriesState {
    ts: Timestamp,
    value: f64,
    /// Identical consecutive values up to and including this one.
    run: u32,
}

/// Per-series state, at most `capacity` series; least recently updated
/// evicted first.
#[derive(Debug)]
pub struct SeriesTable {
    map: LruCache<String, SeriesState>,
    capacity: usize,
    evicted: u64,
}

impl SeriesTable {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        SeriesTable {
            map: LruCache::new(capacity),
            capacity,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Series evicted so far to stay within the capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn key(device: &str, channel: &str) -> String {
        // Names never contain control characters, so NUL cannot be ambiguous.
        let mut k = String::with_capacity(device.len() + channel.len() + 1);
        k.push_str(device);
        k.push('\0');
        k.push_str(channel);
        k
    }

    pub fn contains(&self, device: &str, channel: &str) -> bool {
        self.map.contains_key(&Self::key(device, channel))
    }

    fn put(&mut self, key: String, state: SeriesState) {
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.evicted += 1;
        }
        self.map.insert(key, state);
    }
}

/// What a contract set says about one reading.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Keep it (possibly converted and flagged).
    Accept(Reading),
    /// Quarantine it.
    Reject {
        reading: Reading,
        violation: Violation,
    },
}

/// A broken rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub rule: Rule,
    /// The contract's name.
    pub contract: String,
    /// What was wrong, with the value.
    pub detail: String,
}

impl Violation {
    pub fn reason_code(&self) -> &'static str {
        self.rule.reason_code()
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "contract {:?}, rule {}: {}",
            self.contract,
            self.rule.name(),
            self.detail
        )
    }
}

/// One reading's evaluation: the verdict and the rules it broke with `flag`.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub flagged: Vec<Rule>,
}

/// A validated, ordered list of contracts.
#[derive(Clone, Debug, Default)]
pub struct ContractSet {
    contracts: Vec<Contract>,
}

impl ContractSet {
    /// No contracts: every (finite) reading is accepted unchanged.
    pub fn empty() -> Self {
        ContractSet::default()
    }

    pub fn len(&self) -> usize {
        self.contracts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contracts.is_empty()
    }

    /// A held, swappable set.
    pub fn shared(self) -> SharedContracts {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Loads and validates a contracts file; every problem is reported with
    /// its key path, prefixed by the file (`contracts.toml:contract[1].min`).
    pub fn load(path: &Path) -> Result<Self, ContractsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractsError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates the text of a contracts file; `origin` (a file
    /// name) prefixes every problem's key.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ContractsError> {
        let specs = parse_file(text, Path::new(origin))?;
        let mut problems = Vec::new();
        let mut set = Self::build(&specs, &format!("{origin}:contract"), &mut problems);
        set.check_shadowing(&mut problems);
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(ContractsError::Invalid(problems))
        }
    }

    /// Builds the set of `[contracts]`: inline contracts (keys
    /// `{key}.contract[i]`), then the file's.
    pub fn from_config(cfg: &ContractsConfig, key: &str) -> Result<Self, ContractsError> {
        let mut problems = Vec::new();
        let mut set = Self::build(&cfg.contract, &format!("{key}.contract"), &mut problems);
        if let Some(path) = &cfg.path {
            match read_file(path) {
                Ok(specs) => {
                    let file = Self::build(
                        &specs,
                        &format!("{}:contract", path.display()),
                        &mut problems,
                    );
                    set.contracts.extend(file.contracts);
                }
                Err(e) => problems.extend(e.problems().into_iter().map(|p| ConfigProblem {
                    key: format!("{key}.path"),
                    message: format!("{}: {}", p.key, p.message),
                })),
            }
        }
        set.check_shadowing(&mut problems);
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(ContractsError::Invalid(problems))
        }
    }

    /// Builds from specs without reading anything (keys `{prefix}[i]`).
    pub fn from_specs(specs: &[ContractSpec]) -> Result<Self, ContractsError> {
        let mut problems = Vec::new();
        let mut set = Self::build(specs, "contract", &mut problems);
        set.check_shadowing(&mut problems);
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(ContractsError::Invalid(problems))
        }
    }

    fn build(specs: &[ContractSpec], prefix: &str, problems: &mut Vec<ConfigProblem>) -> Self {
        let contracts = specs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Contract::build(s, &format!("{prefix}[{i}]"), problems))
            .collect();
        ContractSet { contracts }
    }

    /// A contract after one matching every reading can never apply.
    fn check_shadowing(&mut self, problems: &mut Vec<ConfigProblem>) {
        if let Some(i) = self
            .contracts
            .iter()
            .position(|c| matches!((&c.device, &c.channel), (Pattern::Any, Pattern::Any)))
        {
            for c in &self.contracts[i + 1..] {
                problems.push(ConfigProblem {
                    key: c.key.clone(),
                    message: format!(
                        "can never apply: {} ({:?}) before it matches every reading (the first match wins)",
                        self.contracts[i].key, self.contracts[i].name
                    ),
                });
            }
        }
    }

    /// The contract that applies to a series: the first that matches.
    pub fn find(&self, device: &str, channel: &str) -> Option<&Contract> {
        self.contracts.iter().find(|c| c.matches(device, channel))
    }

    /// Applies the matching contract to `r`. `series` holds (and gets) the
    /// previous accepted reading of each series; `clock` is the gateway's.
    pub fn evaluate(
        &self,
        mut r: Reading,
        series: &mut SeriesTable,
        clock: &ClockNow,
    ) -> Evaluation {
        let mut flagged = Vec::new();
        if !r.value.is_finite() {
            let violation = Violation {
                rule: Rule::NonFinite,
                contract: String::new(),
                detail: format!("value {} is not finite", r.value),
            };
            return reject(r, violation, flagged);
        }
        let Some(c) = self.find(&r.device, &r.channel) else {
            return Evaluation {
                verdict: Verdict::Accept(r),
                flagged,
            };
        };
        // Each check says what is wrong; the rule's action decides what happens.
        macro_rules! violated {
            ($rule:expr, $detail:expr) => {{
                let rule = $rule;
                match c.action(rule) {
                    Action::Reject => {
                        let violation = Violation {
                            rule,
                            contract: c.name.clone(),
                            detail: $detail,
                        };
                        return reject(r, violation, flagged);
                    }
                    Action::Flag => {
                        r.quality |= rule.flag();
                        flagged.push(rule);
                    }
                }
            }};
        }
        for f in &c.required {
            if !f.present(&r) {
                violated!(Rule::Required, format!("{} is missing", f.name()));
            }
        }
        let mut unit_ok = true;
        if let Some(canonical) = &c.unit {
            match r.unit.as_deref() {
                None => r.unit = Some(canonical.clone()),
                Some(u) if u == canonical => {}
                Some(u) => match units::convert(r.value, u, canonical) {
                    Ok(v) if v.is_finite() => {
                        r.value = v;
                        r.unit = Some(canonical.clone());
                        r.quality |= Quality::UNIT_CONVERTED;
                    }
                    Ok(v) => {
                        let violation = Violation {
                            rule: Rule::NonFinite,
                            contract: c.name.clone(),
                            detail: format!("value {} {u} is {v} {canonical}", r.value),
                        };
                        return reject(r, violation, flagged);
                    }
                    Err(e) => {
                        unit_ok = false;
                        violated!(Rule::Unit, format!("value {} {u}: {e}", r.value));
                    }
                },
            }
        }
        if (c.max_future_ns.is_some() || c.max_past_ns.is_some())
            && !r.quality.contains(Quality::TIME_FROM_RECEIVE)
        {
            if clock.synced {
                let ahead = r.ts.0.saturating_sub(clock.wall.0);
                if let Some(max) = c.max_future_ns
                    && ahead > max
                {
                    violated!(
                        Rule::Skew,
                        format!(
                            "timestamp {} is {:.3} s ahead of the gateway clock (max {:.3} s)",
                            r.ts,
                            ahead as f64 / 1e9,
                            max as f64 / 1e9
                        )
                    );
                }
                if let Some(max) = c.max_past_ns
                    && -ahead > max
                {
                    violated!(
                        Rule::Skew,
                        format!(
                            "timestamp {} is {:.3} s behind the gateway clock (max {:.3} s)",
                            r.ts,
                            -ahead as f64 / 1e9,
                            max as f64 / 1e9
                        )
                    );
                }
            } else {
                r.quality |= Quality::SKEW_UNCHECKED;
            }
        }
        if unit_ok {
            let unit = r.unit.as_deref().unwrap_or("");
            if let Some(min) = c.min
                && r.value < min
            {
                violated!(
                    Rule::Range,
                    format!("value {} {unit} is below min {min}", r.value)
                );
            }
            if let Some(max) = c.max
                && r.value > max
            {
                violated!(
                    Rule::Range,
                    format!("value {} {unit} is above max {max}", r.value)
                );
            }
        }
        if c.needs_series() && unit_ok {
            let key = SeriesTable::key(&r.device, &r.channel);
            let prev = series.map.get(&key).copied();
            let newer = prev.is_none_or(|p| r.ts > p.ts);
            let mut run = 1u32;
            if let Some(p) = prev
                && newer
            {
                if let Some(max) = c.max_rate {
                    let dt = (r.ts.0 - p.ts.0) as f64 / 1e9;
                    let rate = (r.value - p.value).abs() / dt;
                    if rate > max {
                        violated!(
                            Rule::Rate,
                            format!(
                                "value {} changed from {} in {dt:.3} s: {rate:.6}/s, max {max}/s",
                                r.value, p.value
                            )
                        );
                    }
                }
                if r.value == p.value {
                    run = p.run.saturating_add(1);
                }
                if let Some(n) = c.stuck
                    && run >= n
                {
                    violated!(
                        Rule::Stuck,
                        format!(
                            "value {} repeated {run} times in a row (limit {n})",
                            r.value
                        )
                    );
                }
            }
            if newer {
                series.put(
                    key,
                    SeriesState {
                        ts: r.ts,
                        value: r.value,
                        run,
                    },
                );
            }
        }
        Evaluation {
            verdict: Verdict::Accept(r),
            flagged,
        }
    }
}

fn reject(reading: Reading, violation: Violation, flagged: Vec<Rule>) -> Evaluation {
    Evaluation {
        verdict: Verdict::Reject { reading, violation },
        flagged,
    }
}

fn read_file(path: &Path) -> Result<Vec<ContractSpec>, ContractsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ContractsError::Read {
        path: path.into(),
        source,
    })?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<Vec<ContractSpec>, ContractsError> {
    toml::from_str::<ContractFile>(text)
        .map(|f| f.contract)
        .map_err(|e| ContractsError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;
    const NOW: i64 = 1_800_000_000 * SEC;

    fn clock(synced: bool) -> ClockNow {
        ClockNow {
            wall: Timestamp(NOW),
            monotonic_ns: 1,
            synced,
        }
    }

    fn set(toml_text: &str) -> ContractSet {
        let f: ContractFile = toml::from_str(toml_text).unwrap();
        ContractSet::from_specs(&f.contract).unwrap()
    }

    fn reading(ch: &str, secs: i64, v: f64, unit: Option<&str>) -> Reading {
        let mut r = Reading::new("pump-1", ch, Timestamp(NOW + secs * SEC), v).unwrap();
        r.unit = unit.map(str::to_owned);
        r
    }

    #[test]
    fn without_a_matching_contract_a_reading_passes_unchanged() {
        let s = set("[[contract]]\nchannel = \"temperature\"\nmax = 1.0");
        let r = reading("flow", 0, 99.0, None);
        let e = s.evaluate(r.clone(), &mut SeriesTable::new(10), &clock(true));
        assert_eq!(e.verdict, Verdict::Accept(r));
    }

    #[test]
    fn a_series_key_never_confuses_device_and_channel_boundaries() {
        assert_ne!(SeriesTable::key("a", "bc"), SeriesTable::key("ab", "c"));
    }
}
