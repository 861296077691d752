//! Training jobs inside the running sink: a bounded queue, one worker,
//! progress kept in memory, and the scheduler that enqueues jobs when a
//! scope has enough new readings or operator labels.
//!
//! # Jobs
//! A job trains one **scope** — the fleet (every device), one device, or a
//! named list of devices (a group) — on the sink's own readings in a time
//! range `[from, to)`, then exports, checks and registers the model exactly
//! as `outpost-cloud-sink train --registry` does
//! ([`registry::register_trained`]). Stages, each logged with `tracing`:
//!
//! 1. `queued` — waiting in the queue;
//! 2. `loading` — readings → frames ([`dataset::load_storage`]);
//! 3. `labelling` — operator verdicts on alerts become frame labels
//!    ([`apply_operator_labels`]);
//! 4. `training` — [`run::train_table`] on the frame table in memory, on a
//!    blocking thread, with progress (folds done / total and the current
//!    fold) read from its hidden `ProgressBar`; `total` is the number of
//!    folds that will run, and `done` reaches it when training ends;
//! 5. `exporting` — ONNX export and the tract round-trip check, then
//!    `model.json` and the reports, into `training.models_dir/<scope>/<time>-job<id>`;
//! 6. `registering` — a registry version and champion/challenger;
//!
//! and then `succeeded`, `failed` (with an error code and message) or
//! `cancelled`. A job that fails or is cancelled leaves no model directory
//! behind and registers nothing.
//!
//! **Cancelling** ([`Jobs::cancel`], `POST /v1/training/jobs/{id}/cancel`).
//! A queued job is cancelled at once and never runs. A running job gets its
//! [`CancelToken`] cancelled: training stops at the next fold boundary
//! ([`run::train_table`] checks the token before every fold), the other
//! stages at their next stage change, and the job ends in `cancelled`. Once
//! a job is `registering` it can no longer be cancelled (the stage change
//! and the cancel request are decided under one lock); a finished job
//! neither. Shutting the sink down ([`Jobs::close`]) cancels the queued
//! jobs and the running one the same way.
//!
//! **Bounds.** At most `training.queue_capacity` jobs wait; one more is
//! refused ([`SubmitError::QueueFull`], HTTP 503 with `Retry-After`) rather
//! than queued without bound. One job runs at a time (training is
//! CPU-bound; a second would only halve the speed of both). Finished jobs
//! are kept in memory up to `training.keep_finished`, oldest evicted first;
//! a restart forgets them (the registry keeps every model). A job reads at
//! most `training.max_readings` readings and fails, asking for a narrower
//! range, beyond that.
//!
//! **Training from storage.** The job trains on the frame table it read
//! from storage and labelled, in memory ([`run::train_table`]); nothing is
//! written before the `exporting` stage. The training report's
//! `data.inputs` names the source ([`source_description`]), e.g. `sink
//! storage: scope pump-0001, readings in [2026-01-01T00:00:00.000000000Z,
//! 2026-01-02T00:00:00.000000000Z)`.
//!
//! # Operator labels ([`apply_operator_labels`])
//! Alerts an operator marked `true_alarm = true` label the frames of their
//! device within `[start, end]` anomalous. As soon as one such frame exists
//! the training set is labelled: frames within alerts marked false are
//! normal, frames within alerts nobody reviewed are left out (their truth is
//! unknown), every other frame is normal. Without a true alarm the set stays
//! unlabelled (what the unsupervised families assume anyway, and `family =
//! "auto"` then refuses: it compares families on labels).
//!
//! # Scheduler ([`Jobs::spawn_scheduler`])
//! Each `[[training.schedule]]` entry is checked every `every`: when no job
//! of its scope is queued or running, and at least `min_new_readings`
//! readings were received or `min_new_labels` labels given in the scope
//! since the last job of that scope started (since the scope's newest
//! registry version after a restart; since the beginning without one), a
//! job is enqueued. The counts are capped at the thresholds, so a check
//! visits at most that many index rows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indicatif::ProgressBar;
use protocol::features::Stat;
use protocol::{Reading, Timestamp};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::TrainError;
use super::dataset::{self, ColumnOptions, Table};
use super::families::{FamilyKind, HyperParams};
use super::metrics::BinaryMetrics;
use super::registry::{self, Registry};
use super::run::{self, CancelToken, TrainOptions, TrainOutcome, TrainTableError};
use crate::metrics::Metrics;
use crate::storage::{AlertSpan, ReadingQuery, Storage};

/// Longest scope name.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most devices one scope may list.
pub const MAX_SCOPE_DEVICES: usize = 1000;
/// Most alerts read to label one training set.
pub const MAX_LABEL_SPANS: u32 = 100_000;
/// The scope that means every device.
pub const FLEET: &str = "fleet";
/// `train`'s defaults: `--window 4 --hop 1`.
pub const DEFAULT_WINDOW: usize = super::run::DEFAULT_WINDOW;
pub const DEFAULT_HOP: usize = 1;
/// Bounds on a job's window options.
pub const MAX_WINDOW: usize = 4096;
pub const MAX_HOP: usize = 100_000;

/// `train`'s default statistics: `--stats mean,std,min,max,slope`.
pub fn default_stats() -> Vec<Stat> {
    vec![Stat::Mean, Stat::Std, Stat::Min, Stat::Max, Stat::Slope]
}

/// `auto` → `None`, else the family.
pub fn parse_family(s: &str) -> Result<Option<FamilyKind>, String> {
    match s {
        "auto" => Ok(None),
        other => other.parse().map(Some),
    }
}

fn family_name(f: Option<FamilyKind>) -> &'static str {
    f.map_or("auto", FamilyKind::name)
}

fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} {s:?} contains control characters"));
    }
    Ok(())
}

/// Unchecked job parameters, from an API request or a schedule entry.
#[derive(Clone, Debug, Default)]
pub struct SpecInput<'a> {
    /// `fleet`, a device, or the name of the device list `devices`.
    pub scope: &'a str,
    pub devices: Option<&'a [String]>,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// `auto` or a family name; `None`: `auto`.
    pub family: Option<&'a str>,
    pub window: Option<usize>,
    pub hop: Option<usize>,
    pub stats: Option<&'a [String]>,
    /// Log-scale the spread statistics (`train --log-spread`); `None`: no.
    pub log_spread: Option<bool>,
    pub period: Option<Duration>,
    /// Channels that carry integer codes (`train --categorical`); `None`: none.
    pub categorical: Option<&'a [String]>,
    /// Time constant of the per-device running baseline (`train --baseline`);
    /// `None`: no baseline features.
    pub baseline: Option<Duration>,
}

/// A job's parameters, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// The registry scope.
    pub scope: String,
    /// The devices read; `None`: every device (the fleet).
    pub devices: Option<Vec<String>>,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// `None`: choose by validation (`auto`: by F1 with labels, on
    /// simulated shifts without).
    pub family: Option<FamilyKind>,
    pub window: usize,
    pub hop: usize,
    pub stats: Vec<Stat>,
    /// `train --log-spread`.
    pub log_spread: bool,
    /// Frame period the readings are assembled with.
    pub period: Duration,
    /// `train --categorical`: channels one-hot encoded as integer codes.
    pub categorical: Vec<String>,
    /// `train --baseline`: the running baseline's time constant.
    pub baseline: Option<Duration>,
}

impl JobSpec {
    /// Checks `input`; every problem as `(field, message)`.
    /// `default_period` applies when `input.period` is `None`.
    pub fn check(
        input: &SpecInput<'_>,
        default_period: Duration,
    ) -> Result<JobSpec, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let scope = input.scope.trim();
        if let Err(m) = check_name("the scope", scope, MAX_SCOPE_LEN) {
            problems.push(("scope", m));
        }
        let devices = match (scope, input.devices) {
            (FLEET, Some(_)) => {
                problems.push((
                    "devices",
                    "the fleet scope means every device; name a group as the scope to train on a list"
                        .to_owned(),
                ));
                None
            }
            (FLEET, None) => None,
            (_, None) => Some(vec![scope.to_owned()]),
            (_, Some(list)) => {
                if list.is_empty() {
                    problems.push(("devices", "is empty".to_owned()));
                } else if list.len() > MAX_SCOPE_DEVICES {
                    problems.push((
                        "devices",
                        format!("lists {} devices, at most {MAX_SCOPE_DEVICES}", list.len()),
                    ));
                }
                for d in list {
                    if let Err(m) = check_name("a device name", d, protocol::alert::MAX_NAME_BYTES)
                    {
                        problems.push(("devices", m));
                        break;
                    }
                }
                let mut sorted = list.to_vec();
                sorted.sort();
                sorted.dedup();
                Some(sorted)
            }
        };
        if let (Some(from), Some(to)) = (input.from_ns, input.to_ns)
            && from >= to
        {
            problems.push((
                "to",
                format!("the range [{from}, {to}) is empty: `to` must be after `from`"),
            ));
        }
        let family = match parse_family(input.family.unwrap_or("auto")) {
            Ok(f) => f,
            Err(m) => {
                problems.push(("family", format!("{m}, or auto")));
                None
            }
        };
        let window = input.window.unwrap_or(DEFAULT_WINDOW);
        if !(2..=MAX_WINDOW).contains(&window) {
            problems.push((
                "window",
                format!(
                    "{window} frames: must be 2 to {MAX_WINDOW} (a job exports its model, and a one-frame model is not exportable)"
                ),
            ));
        }
        let hop = input.hop.unwrap_or(DEFAULT_HOP);
        if !(1..=MAX_HOP).contains(&hop) {
            problems.push(("hop", format!("{hop}: must be 1 to {MAX_HOP}")));
        }
        let stats = match input.stats {
            None => default_stats(),
            Some(names) => {
                let mut stats = Vec::new();
                for n in names {
                    match Stat::ALL.into_iter().find(|s| s.name() == n) {
                        Some(s) if !stats.contains(&s) => stats.push(s),
                        Some(_) => problems.push(("stats", format!("`{n}` is listed twice"))),
                        None => problems.push((
                            "stats",
                            format!(
                                "unknown statistic `{n}` (known: {})",
                                Stat::ALL.map(Stat::name).join(", ")
                            ),
                        )),
                    }
                }
                if names.is_empty() {
                    problems.push(("stats", "is empty".to_owned()));
                }
                stats
            }
        };
        let period = input.period.unwrap_or(default_period);
        if period < Duration::from_millis(1) || period > Duration::from_secs(86_400) {
            problems.push(("period", format!("{period:?}: must be 1 ms to 1 day")));
        }
        let categorical = input.categorical.unwrap_or_default().to_vec();
        if categorical.len() > protocol::features::MAX_CHANNELS {
            problems.push((
                "categorical",
                format!(
                    "lists {} channels, at most {}",
                    categorical.len(),
                    protocol::features::MAX_CHANNELS
                ),
            ));
        }
        for (i, c) in categorical.iter().enumerate() {
            if let Err(m) = check_name("a channel name", c, protocol::reading::MAX_NAME_LEN) {
                problems.push(("categorical", m));
                break;
            }
            if categorical[..i].contains(c) {
                problems.push(("categorical", format!("`{c}` is listed twice")));
                break;
            }
        }
        if let Some(t) = input.baseline {
            if t.is_zero() || t > protocol::features::MAX_TIME_CONSTANT {
                problems.push((
                    "baseline",
                    format!(
                        "{}: must be more than 0 and at most {}",
                        humantime::format_duration(t),
                        humantime::format_duration(protocol::features::MAX_TIME_CONSTANT)
                    ),
                ));
            }
            if window < 2 {
                problems.push((
                    "baseline",
                    "compares window means: it needs a window of 2 frames or more".to_owned(),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(JobSpec {
            scope: scope.to_owned(),
            devices,
            from_ns: input.from_ns,
            to_ns: input.to_ns,
            family,
            window,
            hop,
            stats,
            log_spread: input.log_spread.unwrap_or(false),
            period,
            categorical,
            baseline: input.baseline,
        })
    }
}

/// Where jobs write and register, and their bounds (from `[training]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The sink's SQLite file, which holds the registry.
    pub db_path: PathBuf,
    /// Model directories go below it.
    pub models_dir: PathBuf,
    pub queue_capacity: usize,
    pub keep_finished: usize,
    pub max_readings: u32,
    pub default_period: Duration,
    /// Champion/challenger margin on held-out F1.
    pub margin: f64,
}

/// Who asked for a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trigger {
    /// `POST /v1/training/jobs` by this operator.
    Api { operator: String },
    /// `training.schedule[index]`, with what it counted.
    Schedule {
        index: usize,
        new_readings: u64,
        new_labels: u64,
    },
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// The error code of a cancelled job.
pub const CANCELLED: &str = "cancelled";

/// Why a job could not be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error(
        "no training job {0} (finished jobs are kept up to training.keep_finished, and not across restarts)"
    )]
    NotFound(u64),
    #[error(
        "training job {id} has already finished ({}); only queued and running jobs can be cancelled",
        .state.as_str()
    )]
    Finished { id: u64, state: JobState },
    #[error(
        "training job {id} is registering its model; it is too late to cancel it (retire the version in the registry instead)"
    )]
    Registering { id: u64 },
}

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the training queue is full ({capacity} jobs waiting); retry later")]
    QueueFull { capacity: usize },
    #[error("the sink is shutting down")]
    Closed,
}

/// Why a job failed: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobError {
    pub code: &'static str,
    pub message: String,
}

impl From<TrainError> for JobError {
    fn from(e: TrainError) -> Self {
        JobError {
            code: e.reason_code(),
            message: e.to_string(),
        }
    }
}

impl JobError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        JobError {
            code,
            message: message.into(),
        }
    }
}

/// What operator labels did to a training set (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelSummary {
    /// Whether the training set is labelled.
    pub labelled: bool,
    /// Alerts overlapping the set's frames, by verdict.
    pub true_alarms: usize,
    pub false_alarms: usize,
    pub unreviewed: usize,
    /// Frames labelled anomalous and normal (0 when not labelled).
    pub anomalous_frames: usize,
    pub normal_frames: usize,
    /// Frames left out: within unreviewed alerts of a labelled set.
    pub dropped_frames: usize,
}

/// The result of a job that succeeded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobResult {
    /// The registry version.
    pub model_version: i64,
    /// Whether it became the scope's production model.
    pub promoted: bool,
    /// Why it was or was not promoted.
    pub registration: String,
    /// The chosen family and why.
    pub family: String,
    pub reason: String,
    pub threshold: f64,
    /// Held-out metrics (labelled sets) or alarm rate (unlabelled).
    pub heldout: Option<BinaryMetrics>,
    pub heldout_alarm_rate: Option<f64>,
    pub train_windows: usize,
    pub test_windows: usize,
    /// The model directory.
    pub artifact: String,
}

/// Progress of the training stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Folds validated so far.
    pub done: u64,
    /// Folds that will run: `done` reaches it when training ends (a family
    /// that fails is taken off by the folds it skips).
    pub total: Option<u64>,
    /// The current family, fold kind and fold.
    pub message: String,
}

/// A stage and when it began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageMark {
    pub stage: &'static str,
    pub at: String,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    pub id: u64,
    pub state: JobState,
    pub stage: &'static str,
    pub trigger: Trigger,
    pub scope: String,
    /// `null`: every device.
    pub devices: Option<Vec<String>>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub family: &'static str,
    pub window: usize,
    pub hop: usize,
    pub stats: Vec<&'static str>,
    pub log_spread: bool,
    pub period: String,
    /// Absent when none, as before categorical channels existed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categorical: Vec<String>,
    /// The running baseline's time constant; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    pub progress: Option<Progress>,
    /// Whether the job was asked to stop (by an operator or the shutdown).
    pub cancel_requested: bool,
    /// Every stage reached, in order, with its start time.
    pub stages: Vec<StageMark>,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub error: Option<JobError>,
    pub labels: Option<LabelSummary>,
    pub result: Option<JobResult>,
}

struct Job {
    id: u64,
    spec: JobSpec,
    trigger: Trigger,
    state: JobState,
    stages: Vec<(&'static str, i64)>,
    created_ns: i64,
    started_ns: Option<i64>,
    finished_ns: Option<i64>,
    bar: Option<ProgressBar>,
    cancel: CancelToken,
    /// The operator who cancelled it; `None` with a cancelled token: the
    /// sink's shutdown.
    cancelled_by: Option<String>,
    error: Option<JobError>,
    labels: Option<LabelSummary>,
    result: Option<JobResult>,
}

fn rfc3339(ns: i64) -> String {
    Timestamp(ns).to_string()
}

impl Job {
    fn view(&self) -> JobView {
        JobView {
            id: self.id,
            state: self.state,
            stage: self.stages.last().map_or("queued", |s| s.0),
            trigger: self.trigger.clone(),
            scope: self.spec.scope.clone(),
            devices: self.spec.devices.clone(),
            from: self.spec.from_ns.map(rfc3339),
            to: self.spec.to_ns.map(rfc3339),
            family: family_name(self.spec.family),
            window: self.spec.window,
            hop: self.spec.hop,
            stats: self.spec.stats.iter().map(|s| s.name()).collect(),
            log_spread: self.spec.log_spread,
            period: humantime::format_duration(self.spec.period).to_string(),
            categorical: self.spec.categorical.clone(),
            baseline: self
                .spec
                .baseline
                .map(|t| humantime::format_duration(t).to_string()),
            progress: self.bar.as_ref().map(|b| Progress {
                done: b.position(),
                total: b.length().filter(|l| *l > 0),
                message: b.message(),
            }),
            cancel_requested: self.cancel.is_cancelled(),
            stages: self
                .stages
                .iter()
                .map(|(stage, at)| StageMark {
                    stage,
                    at: rfc3339(*at),
                })
                .collect(),
            created: rfc3339(self.created_ns),
            started: self.started_ns.map(rfc3339),
            finished: self.finished_ns.map(rfc3339),
            error: self.error.clone(),
            labels: self.labels.clone(),
            result: self.result.clone(),
        }
    }

    fn pending(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
    }

    /// Why it stopped, once its token is cancelled.
    fn cancelled_error(&self) -> JobError {
        match &self.cancelled_by {
            Some(operator) => JobError::new(CANCELLED, format!("cancelled by operator {operator}")),
            None => JobError::new(CANCELLED, "cancelled: the sink is shutting down"),
        }
    }

    /// Ends a queued job as cancelled.
    fn cancel_queued(&mut self, now: i64) {
        self.cancel.cancel();
        self.state = JobState::Cancelled;
        self.finished_ns = Some(now);
        self.stages.push(("cancelled", now));
        self.error = Some(self.cancelled_error());
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Queued, running and the last `keep_finished` finished jobs.
    jobs: BTreeMap<u64, Job>,
    queue: VecDeque<u64>,
    /// Scopes the scheduler watches (one per schedule entry).
    tracked: HashSet<String>,
    /// When the last job of a tracked scope started.
    last_started: HashMap<String, i64>,
}

/// The sink's training jobs (see the module docs).
pub struct Jobs {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    settings: Settings,
    inner: Mutex<Inner>,
    wake: Notify,
    closed: AtomicBool,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A scheduled training (a checked `[[training.schedule]]` entry).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Its index in the config, for logs and the trigger.
    pub index: usize,
    /// `from_ns`/`to_ns` are ignored: see `lookback`.
    pub spec: JobSpec,
    /// Train on the readings of this long before the job is enqueued;
    /// `None`: on every stored reading.
    pub lookback: Option<Duration>,
    pub every: Duration,
    /// 0: readings do not trigger.
    pub min_new_readings: u64,
    /// 0: labels do not trigger.
    pub min_new_labels: u64,
}

impl Jobs {
    pub fn new(storage: Arc<dyn Storage>, metrics: Arc<Metrics>, settings: Settings) -> Arc<Self> {
        Arc::new(Jobs {
            storage,
            metrics,
            settings,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent; a panic inside
        // one cannot leave it half-updated in a way that matters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues a job; refused when `queue_capacity` jobs already wait.
    pub fn submit(&self, spec: JobSpec, trigger: Trigger) -> Result<JobView, SubmitError> {
        let view = {
            let mut inner = self.lock();
            if self.closed.load(Ordering::SeqCst) {
                return Err(SubmitError::Closed);
            }
            if inner.queue.len() >= self.settings.queue_capacity {
                self.metrics.training_job("refused");
                warn!(scope = %spec.scope, capacity = self.settings.queue_capacity, "Training job refused: the queue is full.");
                return Err(SubmitError::QueueFull {
                    capacity: self.settings.queue_capacity,
                });
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let now = Timestamp::now().as_nanos();
            let job = Job {
                id,
                spec,
                trigger,
                state: JobState::Queued,
                stages: vec![("queued", now)],
                created_ns: now,
                started_ns: None,
                finished_ns: None,
                bar: None,
                cancel: CancelToken::new(),
                cancelled_by: None,
                error: None,
                labels: None,
                result: None,
            };
            let view = job.view();
            inner.jobs.insert(id, job);
            inner.queue.push_back(id);
            view
        };
        self.metrics.training_job("accepted");
        info!(job = view.id, scope = %view.scope, family = view.family, trigger = ?view.trigger, "Training job queued.");
        self.wake.notify_one();
        Ok(view)
    }

    pub fn get(&self, id: u64) -> Option<JobView> {
        self.lock().jobs.get(&id).map(Job::view)
    }

    /// Every job kept, newest first.
    pub fn list(&self) -> Vec<JobView> {
        self.lock().jobs.values().rev().map(Job::view).collect()
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether a job of `scope` is queued or running.
    pub fn pending_for(&self, scope: &str) -> bool {
        self.lock()
            .jobs
            .values()
            .any(|j| j.pending() && j.spec.scope == scope)
    }

    /// When the last job of a scheduled scope started (since this start).
    pub fn last_started(&self, scope: &str) -> Option<i64> {
        self.lock().last_started.get(scope).copied()
    }

    /// Cancels job `id` on behalf of `operator` (see the module docs): a
    /// queued job ends `cancelled` now; a running one is asked to stop and
    /// ends `cancelled` at its next fold boundary or stage change (the view
    /// returned still says `running`, with `cancel_requested`).
    pub fn cancel(&self, id: u64, operator: &str) -> Result<JobView, CancelError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let job = inner.jobs.get_mut(&id).ok_or(CancelError::NotFound(id))?;
        match job.state {
            JobState::Queued => {
                job.cancelled_by = Some(operator.to_owned());
                job.cancel_queued(Timestamp::now().as_nanos());
                let view = job.view();
                inner.queue.retain(|&q| q != id);
                self.evict_finished(inner);
                drop(guard);
                self.metrics.training_job("cancelled");
                info!(job = id, scope = %view.scope, operator, "Queued training job cancelled.");
                Ok(view)
            }
            JobState::Running => {
                if job.stages.last().is_some_and(|s| s.0 == "registering") {
                    return Err(CancelError::Registering { id });
                }
                if !job.cancel.is_cancelled() {
                    job.cancelled_by = Some(operator.to_owned());
                    job.cancel.cancel();
                    info!(job = id, scope = %job.spec.scope, operator, "Running training job asked to stop.");
                }
                Ok(job.view())
            }
            state => Err(CancelError::Finished { id, state }),
        }
    }

    /// Refuses new jobs, cancels the queued jobs and the running one (which
    /// stops at its next fold boundary or stage change, through the same
    /// [`CancelToken`] as [`Jobs::cancel`]), and stops the worker once that
    /// job has ended.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut cancelled = 0;
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let now = Timestamp::now().as_nanos();
            for id in std::mem::take(&mut inner.queue) {
                if let Some(job) = inner.jobs.get_mut(&id) {
                    job.cancel_queued(now);
                    cancelled += 1;
                }
            }
            for job in inner.jobs.values() {
                if job.state == JobState::Running && !job.cancel.is_cancelled() {
                    info!(job = job.id, scope = %job.spec.scope, "Shutting down: the running training job is asked to stop.");
                    job.cancel.cancel();
                }
            }
        }
        for _ in 0..cancelled {
            self.metrics.training_job("cancelled");
        }
        self.wake.notify_one();
    }

    fn start_next(&self) -> Option<(u64, JobSpec, ProgressBar, CancelToken)> {
        let mut inner = self.lock();
        let id = inner.queue.pop_front()?;
        let now = Timestamp::now().as_nanos();
        let bar = ProgressBar::hidden();
        let job = inner.jobs.get_mut(&id)?;
        job.state = JobState::Running;
        job.started_ns = Some(now);
        job.bar = Some(bar.clone());
        let spec = job.spec.clone();
        let cancel = job.cancel.clone();
        if inner.tracked.contains(&spec.scope) {
            inner.last_started.insert(spec.scope.clone(), now);
        }
        Some((id, spec, bar, cancel))
    }

    /// Enters `stage`, unless the job was cancelled: then its error. Decided
    /// under the lock [`Jobs::cancel`] takes, so a cancel request either
    /// comes before the stage change (and stops the job) or sees the new
    /// stage.
    fn stage(
        &self,
        id: u64,
        spec: &JobSpec,
        stage: &'static str,
        cancel: &CancelToken,
    ) -> Result<(), JobError> {
        {
            let mut inner = self.lock();
            let job = inner.jobs.get_mut(&id);
            if cancel.is_cancelled() {
                return Err(job.map_or_else(
                    || JobError::new(CANCELLED, "cancelled"),
                    |j| j.cancelled_error(),
                ));
            }
            if let Some(job) = job {
                job.stages.push((stage, Timestamp::now().as_nanos()));
            }
        }
        info!(job = id, scope = %spec.scope, stage, "Training job stage.");
        Ok(())
    }

    /// The error of job `id`, cancelled.
    fn cancelled(&self, id: u64) -> JobError {
        self.lock().jobs.get(&id).map_or_else(
            || JobError::new(CANCELLED, "cancelled"),
            Job::cancelled_error,
        )
    }

    /// Forgets the oldest finished jobs beyond `keep_finished`.
    fn evict_finished(&self, inner: &mut Inner) {
        let finished: Vec<u64> = inner
            .jobs
            .values()
            .filter(|j| !j.pending())
            .map(|j| j.id)
            .collect();
        let excess = finished.len().saturating_sub(self.settings.keep_finished);
        for old in &finished[..excess] {
            inner.jobs.remove(old);
        }
    }

    fn finish(&self, id: u64, result: Result<JobResult, JobError>) {
        let now = Timestamp::now().as_nanos();
        let mut inner = self.lock();
        let Some(job) = inner.jobs.get_mut(&id) else {
            return;
        };
        job.finished_ns = Some(now);
        let seconds = (now - job.started_ns.unwrap_or(now)) as f64 * 1e-9;
        match result {
            Ok(r) => {
                info!(
                    job = id,
                    scope = %job.spec.scope,
                    family = %r.family,
                    model_version = r.model_version,
                    promoted = r.promoted,
                    f1 = r.heldout.as_ref().and_then(|m| m.f1),
                    seconds,
                    "Training job succeeded."
                );
                job.state = JobState::Succeeded;
                job.stages.push(("succeeded", now));
                job.result = Some(r);
                self.metrics.training_job("succeeded");
            }
            Err(e) if e.code == CANCELLED => {
                info!(job = id, scope = %job.spec.scope, reason = %e.message, seconds, "Training job cancelled.");
                job.state = JobState::Cancelled;
                job.stages.push(("cancelled", now));
                job.error = Some(e);
                self.metrics.training_job("cancelled");
            }
            Err(e) => {
                warn!(job = id, scope = %job.spec.scope, code = e.code, error = %e.message, seconds, "Training job failed.");
                job.state = JobState::Failed;
                job.stages.push(("failed", now));
                job.error = Some(e);
                self.metrics.training_job("failed");
            }
        }
        self.evict_finished(&mut inner);
    }

    /// Starts the worker: one job at a time, each on a blocking thread.
    pub fn spawn_worker(self: &Arc<Self>) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            loop {
                let wake = jobs.wake.notified();
                if jobs.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Some((id, spec, bar, cancel)) = jobs.start_next() else {
                    wake.await;
                    continue;
                };
                let worker = jobs.clone();
                let result =
                    tokio::task::spawn_blocking(move || worker.run(id, &spec, &bar, &cancel)).await;
                let result = result.unwrap_or_else(|e| {
                    Err(JobError::new(
                        "panic",
                        format!("the training task failed: {e}"),
                    ))
                });
                jobs.finish(id, result);
            }
            debug!("Training worker stopped.");
        })
    }

    /// The job, on a blocking thread.
    fn run(
        &self,
        id: u64,
        spec: &JobSpec,
        bar: &ProgressBar,
        cancel: &CancelToken,
    ) -> Result<JobResult, JobError> {
        self.stage(id, spec, "loading", cancel)?;
        let mut table = self.load(spec)?;
        info!(
            job = id,
            frames = table.rows(),
            devices = table.device_names().len(),
            channels = table.numeric_names.len(),
            "Training data loaded."
        );

        self.stage(id, spec, "labelling", cancel)?;
        let spans = self
            .storage
            .alert_spans(
                spec.devices.as_deref(),
                spec.from_ns,
                spec.to_ns,
                MAX_LABEL_SPANS + 1,
            )
            .map_err(TrainError::from)?;
        if spans.len() > MAX_LABEL_SPANS as usize {
            return Err(JobError::new(
                "too_many_alerts",
                format!("the range holds more than {MAX_LABEL_SPANS} alerts; narrow it"),
            ));
        }
        let summary = apply_operator_labels(&mut table, &spans);
        info!(
            job = id,
            labelled = summary.labelled,
            true_alarms = summary.true_alarms,
            false_alarms = summary.false_alarms,
            unreviewed = summary.unreviewed,
            "Operator labels applied."
        );
        if let Some(job) = self.lock().jobs.get_mut(&id) {
            job.labels = Some(summary.clone());
        }
        if !summary.labelled {
            match spec.family {
                None => {
                    return Err(JobError::new(
                        "need_labels",
                        "family `auto` compares families on labelled data, but no operator has marked an alert of this scope in this range as a true alarm: name a family (pca, gaussian, forecast, autoencoder) or label alerts",
                    ));
                }
                Some(f) if f.supervised() => {
                    return Err(JobError::new(
                        "need_labels",
                        format!(
                            "the {} family needs labels, but no operator has marked an alert of this scope in this range as a true alarm",
                            f.name()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }

        self.stage(id, spec, "training", cancel)?;
        let outcome = match run::train_table(
            &train_options(spec, &table),
            &table,
            vec![source_description(spec)],
            bar,
            cancel,
        ) {
            Ok(outcome) => outcome,
            Err(TrainTableError::Cancelled) => return Err(self.cancelled(id)),
            Err(TrainTableError::Train(e)) => return Err(e.into()),
        };
        drop(table);

        self.stage(id, spec, "exporting", cancel)?;
        let dir = self.model_dir(id, &spec.scope);
        let result = self.export_register(id, spec, outcome, &dir, cancel);
        if result.is_err() {
            // Nothing was registered: leave no half-written model behind.
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn export_register(
        &self,
        id: u64,
        spec: &JobSpec,
        mut outcome: TrainOutcome,
        dir: &Path,
        cancel: &CancelToken,
    ) -> Result<JobResult, JobError> {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let check = super::export::export(
            dir,
            &outcome.model,
            &outcome.report,
            &outcome.heldout,
            &spec.scope,
        )?;
        outcome.report.export = Some(check);
        run::write_outputs(dir, &outcome)?;

        // Checked with the stage change: once registering, a job cannot be
        // cancelled ([`Jobs::cancel`] answers so).
        self.stage(id, spec, "registering", cancel)?;
        let reg = registry::register_trained(
            &self.settings.db_path,
            &spec.scope,
            dir,
            &outcome,
            self.settings.margin,
        )?;
        let r = &outcome.report;
        Ok(JobResult {
            model_version: reg.id,
            promoted: reg.promoted,
            registration: reg.reason,
            family: r.chosen.name().to_owned(),
            reason: r.reason.clone(),
            threshold: r.threshold.value,
            heldout: r.heldout.clone(),
            heldout_alarm_rate: r.heldout_alarm_rate,
            train_windows: r.data.train_windows,
            test_windows: r.data.test_windows,
            artifact: dir.display().to_string(),
        })
    }

    /// `models_dir/<scope, file-name safe>/<now ns>-job<id>`.
    fn model_dir(&self, id: u64, scope: &str) -> PathBuf {
        let safe: String = scope
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let safe = if safe.starts_with('.') {
            format!("_{safe}")
        } else {
            safe
        };
        self.settings
            .models_dir
            .join(safe)
            .join(format!("{}-job{id}", Timestamp::now().as_nanos()))
    }

    /// The scope's readings as frames.
    fn load(&self, spec: &JobSpec) -> Result<Table, JobError> {
        let columns = ColumnOptions {
            period: Some(spec.period),
            categorical: spec.categorical.clone(),
            ..ColumnOptions::default()
        };
        let max = self.settings.max_readings;
        let loaded = match spec.devices.as_deref() {
            None => dataset::load_storage(
                &*self.storage,
                None,
                spec.from_ns,
                spec.to_ns,
                max,
                &columns,
            ),
            Some([one]) => dataset::load_storage(
                &*self.storage,
                Some(one),
                spec.from_ns,
                spec.to_ns,
                max,
                &columns,
            ),
            // A list: the readings of every device pooled under one bound,
            // assembled as `load_storage` does.
            Some(list) => self.load_devices(list, spec, &columns),
        };
        let no_data = || {
            JobError::new(
                "no_data",
                format!(
                    "no readings of {} in [{}, {})",
                    match &spec.devices {
                        None => "any device".to_owned(),
                        Some(d) => format!("{d:?}"),
                    },
                    spec.from_ns.map_or_else(|| "the beginning".into(), rfc3339),
                    spec.to_ns.map_or_else(|| "now".into(), rfc3339),
                ),
            )
        };
        match loaded {
            Err(TrainError::NoChannels) => Err(no_data()),
            Err(e) => Err(e.into()),
            Ok(t) if t.rows() == 0 => Err(no_data()),
            Ok(t) => Ok(t),
        }
    }

    fn load_devices(
        &self,
        devices: &[String],
        spec: &JobSpec,
        columns: &ColumnOptions,
    ) -> Result<Table, TrainError> {
        let max = self.settings.max_readings as usize;
        let mut readings = Vec::new();
        for device in devices {
            let room = max.saturating_sub(readings.len());
            let stored = self.storage.query_readings(&ReadingQuery {
                device: Some(device.clone()),
                channel: None,
                from_ns: spec.from_ns,
                to_ns: spec.to_ns,
                limit: u32::try_from(room.saturating_add(1)).unwrap_or(u32::MAX),
            })?;
            if stored.len() > room {
                return Err(TrainError::Option {
                    option: "max_readings",
                    message: format!("the range holds more than {max} readings; narrow it"),
                });
            }
            readings.extend(stored.into_iter().filter_map(|s| {
                Reading::new(s.device, s.channel, Timestamp(s.ts_ns), s.value).ok()
            }));
        }
        dataset::frames_from_readings(&readings, columns, spec.period)
    }

    /// Starts one task per schedule entry (see the module docs).
    pub fn spawn_scheduler(self: &Arc<Self>, schedules: Vec<Schedule>) -> Vec<JoinHandle<()>> {
        {
            let mut inner = self.lock();
            for s in &schedules {
                inner.tracked.insert(s.spec.scope.clone());
            }
        }
        schedules
            .into_iter()
            .map(|schedule| {
                let jobs = self.clone();
                tokio::spawn(async move { jobs.schedule_loop(schedule).await })
            })
            .collect()
    }

    async fn schedule_loop(self: Arc<Self>, s: Schedule) {
        // After a restart: new since the scope's newest model.
        let db = self.settings.db_path.clone();
        let scope = s.spec.scope.clone();
        let seed = tokio::task::spawn_blocking(move || {
            Registry::open(&db).and_then(|r| r.latest_created_ns(&scope))
        })
        .await;
        let seed = match seed {
            Ok(Ok(seed)) => seed,
            Ok(Err(e)) => {
                warn!(schedule = s.index, error = %e, "Cannot read the registry; counting every reading as new.");
                None
            }
            Err(e) => {
                warn!(schedule = s.index, error = %e, "Cannot read the registry; counting every reading as new.");
                None
            }
        };
        info!(schedule = s.index, scope = %s.spec.scope, every = %humantime::format_duration(s.every), min_new_readings = s.min_new_readings, min_new_labels = s.min_new_labels, "Training schedule active.");
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + s.every, s.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            self.check_schedule(&s, seed).await;
        }
    }

    async fn check_schedule(self: &Arc<Self>, s: &Schedule, seed: Option<i64>) {
        if self.pending_for(&s.spec.scope) {
            debug!(schedule = s.index, scope = %s.spec.scope, "A job of this scope is pending; not checking.");
            return;
        }
        let since = self
            .last_started(&s.spec.scope)
            .or(seed)
            .unwrap_or(i64::MIN);
        let cap = s.min_new_readings.max(s.min_new_labels).max(1);
        let storage = self.storage.clone();
        let devices = s.spec.devices.clone();
        let counted = tokio::task::spawn_blocking(move || {
            storage.new_activity(devices.as_deref(), since, cap)
        })
        .await;
        let activity = match counted {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                warn!(schedule = s.index, error = %e, "Cannot count new data; will retry.");
                return;
            }
            Err(e) => {
                warn!(schedule = s.index, error = %e, "Cannot count new data; will retry.");
                return;
            }
        };
        let by_readings = s.min_new_readings > 0 && activity.readings >= s.min_new_readings;
        let by_labels = s.min_new_labels > 0 && activity.labels >= s.min_new_labels;
        debug!(schedule = s.index, scope = %s.spec.scope, readings = activity.readings, labels = activity.labels, "Training schedule checked.");
        if !(by_readings || by_labels) {
            return;
        }
        let mut spec = s.spec.clone();
        spec.to_ns = None;
        spec.from_ns = s.lookback.map(|lb| {
            let lb = i64::try_from(lb.as_nanos()).unwrap_or(i64::MAX);
            Timestamp::now().as_nanos().saturating_sub(lb)
        });
        let trigger = Trigger::Schedule {
            index: s.index,
            new_readings: activity.readings,
            new_labels: activity.labels,
        };
        match self.submit(spec, trigger) {
            Ok(job) => info!(
                schedule = s.index,
                job = job.id,
                scope = %s.spec.scope,
                new_readings = activity.readings,
                new_labels = activity.labels,
                "Scheduled training enqueued."
            ),
            Err(e) => {
                warn!(schedule = s.index, error = %e, "Scheduled training not enqueued; will retry.")
            }
        }
    }
}

/// Labels `table`'s frames with operator verdicts (see the module docs).
/// `table` must have times (tables from storage always do); rows may be
/// in any order.
pub fn apply_operator_labels(table: &mut Table, spans: &[AlertSpan]) -> LabelSummary {
    let mut summary = LabelSummary::default();
    let Some(times) = table.times.as_ref() else {
        return summary;
    };
    // Rows of each device, by time.
    let mut rows: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, d) in table.devices.iter().enumerate() {
        rows.entry(d.as_str()).or_default().push(i);
    }
    for r in rows.values_mut() {
        r.sort_by_key(|&i| times[i]);
    }
    // Per row, the strongest verdict covering it:
    // 0 none < 1 unreviewed < 2 false alarm < 3 true alarm.
    const UNREVIEWED: u8 = 1;
    const FALSE_ALARM: u8 = 2;
    const TRUE_ALARM: u8 = 3;
    let mut mark = vec![0u8; table.rows()];
    for span in spans {
        let Some(r) = rows.get(span.device.as_str()) else {
            continue;
        };
        let lo = r.partition_point(|&i| times[i] < span.start_ns);
        let hi = r.partition_point(|&i| times[i] <= span.end_ns);
        if lo >= hi {
            continue;
        }
        let level = match span.true_alarm {
            Some(true) => {
                summary.true_alarms += 1;
                TRUE_ALARM
            }
            Some(false) => {
                summary.false_alarms += 1;
                FALSE_ALARM
            }
            None => {
                summary.unreviewed += 1;
                UNREVIEWED
            }
        };
        for &i in &r[lo..hi] {
            mark[i] = mark[i].max(level);
        }
    }
    if !mark.contains(&TRUE_ALARM) {
        return summary;
    }
    let labels: Vec<bool> = match &table.labels {
        Some(existing) => mark
            .iter()
            .zip(existing)
            .map(|(m, l)| *m == TRUE_ALARM || *l)
            .collect(),
        None => mark.iter().map(|m| *m == TRUE_ALARM).collect(),
    };
    table.labels = Some(labels);
    let keep: Vec<usize> = (0..table.rows())
        .filter(|&i| mark[i] != UNREVIEWED)
        .collect();
    summary.labelled = true;
    summary.dropped_frames = table.rows() - keep.len();
    if summary.dropped_frames > 0 {
        *table = table.select(&keep);
    }
    let anomalous = table
        .labels
        .as_ref()
        .map_or(0, |l| l.iter().filter(|&&v| v).count());
    summary.anomalous_frames = anomalous;
    summary.normal_frames = table.rows() - anomalous;
    summary
}

/// `train`'s options for a job on `table`. The time and device column
/// names only go into `model.json`, for scoring files with it: those of a
/// CSV export of the table (`time` and `device`, `_`-prefixed while a
/// channel has that name).
fn train_options(spec: &JobSpec, table: &Table) -> TrainOptions {
    let taken: HashSet<&str> = table
        .numeric_names
        .iter()
        .chain(&table.cat_names)
        .map(String::as_str)
        .collect();
    let free = |base: &str| {
        let mut name = base.to_owned();
        while taken.contains(name.as_str()) {
            name.insert(0, '_');
        }
        name
    };
    let mut opts = TrainOptions::new(Vec::new());
    opts.columns = ColumnOptions {
        time_column: Some(free("time")),
        device_column: Some(free("device")),
        ..ColumnOptions::default()
    };
    opts.family = spec.family;
    opts.window_len = spec.window;
    opts.hop = spec.hop;
    opts.stats = spec.stats.clone();
    opts.log_spread = spec.log_spread;
    opts.baseline = spec.baseline;
    // `train`'s defaults for what a job does not set.
    opts.hyper = HyperParams {
        lags: 4,
        ridge: 1e-2,
        ..HyperParams::default()
    };
    opts
}

/// Where a job's training data came from, for the report's `data.inputs`:
/// e.g. `sink storage: scope pumps (devices pump-0, pump-1), readings in
/// [2026-01-01T00:00:00.000000000Z, 2026-01-02T00:00:00.000000000Z)`.
pub fn source_description(spec: &JobSpec) -> String {
    let devices = match &spec.devices {
        None => " (every device)".to_owned(),
        Some(d) if d.len() == 1 && d[0] == spec.scope => String::new(),
        Some(d) => format!(" (devices {})", d.join(", ")),
    };
    let range = match (spec.from_ns, spec.to_ns) {
        (None, None) => "every stored reading".to_owned(),
        (Some(from), None) => format!("readings from {}", rfc3339(from)),
        (None, Some(to)) => format!("readings before {}", rfc3339(to)),
        (Some(from), Some(to)) => format!("readings in [{}, {})", rfc3339(from), rfc3339(to)),
    };
    format!("sink storage: scope {}{devices}, {range}", spec.scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(devices: &[(&str, usize)]) -> Table {
        let mut t = Table {
            times: Some(Vec::new()),
            period_ns: Some(1_000_000_000),
            numeric_names: vec!["a".into(), "time".into()],
            numeric: vec![Vec::new(), Vec::new()],
            ..Table::default()
        };
        for (d, n) in devices {
            for k in 0..*n {
                t.devices.push((*d).to_owned());
                t.times
                    .as_mut()
                    .unwrap()
                    .push(1_700_000_000_000_000_000 + k as i64 * 1_000_000_000);
                t.numeric[0].push(k as f64 * 0.1 + 1.0 / 3.0);
                t.numeric[1].push(if k == 2 { f64::NAN } else { -(k as f64) });
                t.source_rows.push(t.source_rows.len());
            }
        }
        t
    }

    fn span(device: &str, from: i64, to: i64, verdict: Option<bool>) -> AlertSpan {
        let s = |k: i64| 1_700_000_000_000_000_000 + k * 1_000_000_000;
        AlertSpan {
            device: device.into(),
            start_ns: s(from),
            end_ns: s(to),
            true_alarm: verdict,
        }
    }

    #[test]
    fn without_a_true_alarm_the_table_stays_unlabelled() {
        let mut t = table(&[("p1", 10)]);
        let before = t.clone();
        let s = apply_operator_labels(
            &mut t,
            &[span("p1", 2, 3, Some(false)), span("p1", 5, 6, None)],
        );
        // (The tables hold a NaN, so compare what labelling may touch.)
        assert_eq!(t.labels, None);
        assert_eq!((&t.devices, &t.times), (&before.devices, &before.times));
        assert!(!s.labelled);
        assert_eq!((s.false_alarms, s.unreviewed), (1, 1));
    }

    #[test]
    fn true_alarms_label_their_frames_false_ones_stay_normal_and_unreviewed_ones_are_dropped() {
        let mut t = table(&[("p1", 10), ("p2", 10)]);
        let s = apply_operator_labels(
            &mut t,
            &[
                span("p1", 2, 4, Some(true)),
                // Overlaps the true alarm: the true alarm wins on 4.
                span("p1", 4, 5, Some(false)),
                span("p2", 7, 8, None),
                // An unreviewed alert within a false one: reviewed, kept.
                span("p1", 5, 5, None),
                // Another device, and a span outside the data.
                span("p9", 0, 9, Some(true)),
                span("p2", 50, 60, Some(true)),
            ],
        );
        assert!(s.labelled);
        assert_eq!(
            (s.true_alarms, s.false_alarms, s.unreviewed),
            (1, 1, 2),
            "{s:?}"
        );
        assert_eq!(s.dropped_frames, 2);
        assert_eq!(t.rows(), 18);
        assert_eq!((s.anomalous_frames, s.normal_frames), (3, 15));
        let labels = t.labels.as_ref().unwrap();
        let p1: Vec<bool> = (0..10).map(|i| labels[i]).collect();
        assert_eq!(
            p1,
            [
                false, false, true, true, true, false, false, false, false, false
            ]
        );
        // p2 lost frames 7 and 8.
        let p2_times: Vec<i64> = (10..18)
            .map(|i| (t.times.as_ref().unwrap()[i] - 1_700_000_000_000_000_000) / 1_000_000_000)
            .collect();
        assert_eq!(p2_times, [0, 1, 2, 3, 4, 5, 6, 9]);
    }

    fn input<'a>(scope: &'a str, devices: Option<&'a [String]>) -> SpecInput<'a> {
        SpecInput {
            scope,
            devices,
            ..SpecInput::default()
        }
    }

    #[test]
    fn specs_resolve_scopes_and_take_the_cli_defaults() {
        let period = Duration::from_secs(1);
        let fleet = JobSpec::check(&input("fleet", None), period).unwrap();
        assert_eq!(fleet.devices, None);
        assert_eq!((fleet.window, fleet.hop, fleet.family), (4, 1, None));
        assert_eq!(fleet.stats, default_stats());
        assert!(!fleet.log_spread);
        assert!(!train_options(&fleet, &table(&[("a", 3)])).log_spread);
        let logged = SpecInput {
            log_spread: Some(true),
            ..input("fleet", None)
        };
        let logged = JobSpec::check(&logged, period).unwrap();
        assert!(train_options(&logged, &table(&[("a", 3)])).log_spread);
        assert_eq!(train_options(&fleet, &table(&[("a", 3)])).baseline, None);
        let tracked = SpecInput {
            baseline: Some(Duration::from_secs(600)),
            ..input("fleet", None)
        };
        let tracked = JobSpec::check(&tracked, period).unwrap();
        assert_eq!(
            train_options(&tracked, &table(&[("a", 3)])).baseline,
            Some(Duration::from_secs(600))
        );
        let one = JobSpec::check(&input("pump-1", None), period).unwrap();
        assert_eq!(one.devices, Some(vec!["pump-1".to_owned()]));
        let list = ["b".to_owned(), "a".to_owned(), "b".to_owned()];
        let group = JobSpec::check(&input("pumps", Some(&list)), period).unwrap();
        assert_eq!(group.devices, Some(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn the_report_names_the_storage_scope_and_range_a_job_trained_on() {
        let period = Duration::from_secs(1);
        let fleet = JobSpec::check(&input("fleet", None), period).unwrap();
        assert_eq!(
            source_description(&fleet),
            "sink storage: scope fleet (every device), every stored reading"
        );
        let mut one = JobSpec::check(&input("pump-0001", None), period).unwrap();
        one.from_ns = Some(1_767_225_600_000_000_000);
        assert_eq!(
            source_description(&one),
            "sink storage: scope pump-0001, readings from 2026-01-01T00:00:00.000000000Z"
        );
        one.to_ns = Some(1_767_312_000_000_000_000);
        assert_eq!(
            source_description(&one),
            "sink storage: scope pump-0001, readings in [2026-01-01T00:00:00.000000000Z, 2026-01-02T00:00:00.000000000Z)"
        );
        let list = ["b".to_owned(), "a".to_owned()];
        let mut group = JobSpec::check(&input("pumps", Some(&list)), period).unwrap();
        group.to_ns = one.to_ns;
        assert_eq!(
            source_description(&group),
            "sink storage: scope pumps (devices a, b), readings before 2026-01-02T00:00:00.000000000Z"
        );
    }

    #[test]
    fn bad_specs_report_every_field() {
        let list = ["a".to_owned()];
        let stats = ["mean".to_owned(), "nope".to_owned()];
        let cats = ["mode".to_owned(), "mode".to_owned()];
        let bad = SpecInput {
            scope: "fleet",
            devices: Some(&list),
            from_ns: Some(10),
            to_ns: Some(10),
            family: Some("magic"),
            window: Some(1),
            hop: Some(0),
            stats: Some(&stats),
            log_spread: Some(true),
            period: Some(Duration::ZERO),
            categorical: Some(&cats),
            baseline: Some(Duration::ZERO),
        };
        let problems = JobSpec::check(&bad, Duration::from_secs(1)).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            [
                "devices",
                "to",
                "family",
                "window",
                "hop",
                "stats",
                "period",
                "categorical",
                "baseline",
                "baseline"
            ]
        );
        assert!(
            problems[7].1.contains("`mode` is listed twice"),
            "{problems:?}"
        );
        assert!(JobSpec::check(&input("", None), Duration::from_secs(1)).is_err());
        let empty: [String; 0] = [];
        assert!(JobSpec::check(&input("g", Some(&empty)), Duration::from_secs(1)).is_err());
    }
}
