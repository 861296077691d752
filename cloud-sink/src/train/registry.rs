//! The model registry, in the sink's SQLite database (its own table, created
//! on open; the readings schema is untouched).
//!
//! A version records its lineage — scope (a device, a device group or the
//! fleet), family, data range, hyper-parameters, metrics, parent version —
//! and a status: `candidate` → `production` → `retired`. At most one
//! version per scope is in production (a partial unique index enforces it).
//!
//! **Registration needs a passed export check**: a model whose exported
//! graph did not reproduce the in-Rust scores within the tolerance is
//! refused ([`Registry::register`]).
//!
//! **Champion/challenger** ([`Registry::challenge`]): the caller scores the
//! champion and the challenger on the *same* held-out data with the same
//! metric; the challenger is promoted only if it beats the champion by at
//! least `margin` (absolute, in the metric's units, in the metric's better
//! direction). Promotion retires the champion in the same transaction.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::report::ExportCheck;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS model_versions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns      INTEGER NOT NULL,
    scope           TEXT NOT NULL,
    family          TEXT NOT NULL,
    data_from_ns    INTEGER,
    data_to_ns      INTEGER,
    hyper_params    TEXT NOT NULL,
    metrics         TEXT NOT NULL,
    parent          INTEGER REFERENCES model_versions(id),
    status          TEXT NOT NULL CHECK (status IN ('candidate', 'production', 'retired')),
    artifact        TEXT NOT NULL,
    export_max_diff REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_production
    ON model_versions (scope) WHERE status = 'production';
";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Candidate,
    Production,
    Retired,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Candidate => "candidate",
            Status::Production => "production",
            Status::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Result<Self, TrainError> {
        match s {
            "candidate" => Ok(Status::Candidate),
            "production" => Ok(Status::Production),
            "retired" => Ok(Status::Retired),
            other => Err(TrainError::Registry(format!("unknown status {other:?}"))),
        }
    }
}

/// What a new version records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewVersion {
    pub scope: String,
    pub family: String,
    pub data_from_ns: Option<i64>,
    pub data_to_ns: Option<i64>,
    pub hyper_params: serde_json::Value,
    pub metrics: serde_json::Value,
    /// `None`: the scope's production version at registration, if any.
    pub parent: Option<i64>,
    /// Where the model files are (a directory or URL).
    pub artifact: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub id: i64,
    pub created_ns: i64,
    pub scope: String,
    pub family: String,
    pub data_from_ns: Option<i64>,
    pub data_to_ns: Option<i64>,
    pub hyper_params: serde_json::Value,
    pub metrics: serde_json::Value,
    pub parent: Option<i64>,
    pub status: Status,
    pub artifact: String,
    pub export_max_diff: f64,
}

/// Outcome of a champion/challenger comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub promoted: bool,
    pub challenger: i64,
    pub champion: Option<i64>,
    pub challenger_value: f64,
    pub champion_value: Option<f64>,
    pub margin: f64,
    pub reason: String,
}

#[derive(Debug)]
pub struct Registry {
    conn: Connection,
}

fn reg(e: rusqlite::Error) -> TrainError {
    TrainError::Registry(e.to_string())
}

impl Registry {
    /// Opens the sink's database (creating the table when missing).
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let conn = Connection::open(path).map_err(reg)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(reg)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(reg)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(reg)?;
        conn.execute_batch(SCHEMA).map_err(reg)?;
        Ok(Registry { conn })
    }

    /// Registers a candidate. Refused unless `export.passed` and its
    /// difference is within its tolerance.
    pub fn register(&self, v: &NewVersion, export: &ExportCheck) -> Result<i64, TrainError> {
        if !export.passed
            || export.max_abs_diff.is_nan()
            || export.max_abs_diff > export.tolerance
            || export.rows == 0
        {
            return Err(TrainError::Export(format!(
                "registration refused: the exported model differs from the reference by {:.3e} on {} rows (tolerance {:.0e})",
                export.max_abs_diff, export.rows, export.tolerance
            )));
        }
        let parent = match v.parent {
            Some(p) => Some(p),
            None => self.production(&v.scope)?.map(|m| m.id),
        };
        self.conn
            .execute(
                "INSERT INTO model_versions (created_ns, scope, family, data_from_ns, data_to_ns,
                   hyper_params, metrics, parent, status, artifact, export_max_diff)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'candidate', ?9, ?10)",
                params![
                    protocol::Timestamp::now().as_nanos(),
                    v.scope,
                    v.family,
                    v.data_from_ns,
                    v.data_to_ns,
                    v.hyper_params.to_string(),
                    v.metrics.to_string(),
                    parent,
                    v.artifact,
                    export.max_abs_diff
                ],
            )
            .map_err(reg)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ModelVersion, String)> {
        let parse = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
        Ok((
            ModelVersion {
                id: row.get(0)?,
                created_ns: row.get(1)?,
                scope: row.get(2)?,
                family: row.get(3)?,
                data_from_ns: row.get(4)?,
                data_to_ns: row.get(5)?,
                hyper_params: parse(row.get(6)?),
                metrics: parse(row.get(7)?),
                parent: row.get(8)?,
                status: Status::Candidate,
                artifact: row.get(10)?,
                export_max_diff: row.get(11)?,
            },
            row.get(9)?,
        ))
    }

    fn query(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<ModelVersion>, TrainError> {
        let mut stmt = self.conn.prepare(sql).map_err(reg)?;
        let rows = stmt.query_map(p, Self::row).map_err(reg)?;
        let mut out = Vec::new();
        for r in rows {
            let (mut v, status) = r.map_err(reg)?;
            v.status = Status::parse(&status)?;
            out.push(v);
        }
        Ok(out)
    }

    const COLUMNS: &str = "SELECT id, created_ns, scope, family, data_from_ns, data_to_ns, hyper_params, metrics, parent, status, artifact, export_max_diff FROM model_versions";

    pub fn get(&self, id: i64) -> Result<Option<ModelVersion>, TrainError> {
        Ok(self
            .query(&format!("{} WHERE id = ?1", Self::COLUMNS), params![id])?
            .pop())
    }

    /// The scope's production version.
    pub fn production(&self, scope: &str) -> Result<Option<ModelVersion>, TrainError> {
        Ok(self
            .query(
                &format!(
                    "{} WHERE scope = ?1 AND status = 'production'",
                    Self::COLUMNS
                ),
                params![scope],
            )?
            .pop())
    }

    /// Every version of a scope, oldest first.
    pub fn list(&self, scope: &str) -> Result<Vec<ModelVersion>, TrainError> {
        self.query(
            &format!("{} WHERE scope = ?1 ORDER BY id", Self::COLUMNS),
            params![scope],
        )
    }

    /// The newest versions first, of one scope or of all, at most `limit`.
    pub fn recent(&self, scope: Option<&str>, limit: u32) -> Result<Vec<ModelVersion>, TrainError> {
        self.query(
            &format!(
                "{} WHERE (?1 IS NULL OR scope = ?1) ORDER BY id DESC LIMIT ?2",
                Self::COLUMNS
            ),
            params![scope, limit],
        )
    }

    /// When the scope's newest version was registered.
    pub fn latest_created_ns(&self, scope: &str) -> Result<Option<i64>, TrainError> {
        self.conn
            .query_row(
                "SELECT MAX(created_ns) FROM model_versions WHERE scope = ?1",
                params![scope],
                |row| row.get(0),
            )
            .map_err(reg)
    }

    /// Sets a version's status; promoting retires the scope's current
    /// production version in the same transaction.
    pub fn set_status(&mut self, id: i64, status: Status) -> Result<(), TrainError> {
        let v = self
            .get(id)?
            .ok_or_else(|| TrainError::Registry(format!("no model version {id}")))?;
        let tx = self.conn.transaction().map_err(reg)?;
        if status == Status::Production {
            tx.execute(
                "UPDATE model_versions SET status = 'retired' WHERE scope = ?1 AND status = 'production' AND id != ?2",
                params![v.scope, id],
            )
            .map_err(reg)?;
        }
        tx.execute(
            "UPDATE model_versions SET status = ?1 WHERE id = ?2",
            params![status.as_str(), id],
        )
        .map_err(reg)?;
        tx.commit().map_err(reg)
    }

    /// Champion/challenger (see the module docs). `higher_is_better` says
    /// which way the metric points (true for F1, false for a false-alarm
    /// rate or an MSE).
    pub fn challenge(
        &mut self,
        challenger: i64,
        challenger_value: f64,
        champion_value: Option<f64>,
        margin: f64,
        higher_is_better: bool,
    ) -> Result<Decision, TrainError> {
        let cand = self
            .get(challenger)?
            .ok_or_else(|| TrainError::Registry(format!("no model version {challenger}")))?;
        if cand.status != Status::Candidate {
            return Err(TrainError::Registry(format!(
                "version {challenger} is {:?}, only a candidate can challenge",
                cand.status
            )));
        }
        if !challenger_value.is_finite() || margin.is_nan() || margin < 0.0 {
            return Err(TrainError::Registry(format!(
                "challenger value {challenger_value} or margin {margin} is not usable"
            )));
        }
        let champion = self.production(&cand.scope)?;
        let (promoted, reason) = match (&champion, champion_value) {
            (None, _) => (true, "no production model in this scope".to_owned()),
            (Some(c), None) => {
                return Err(TrainError::Registry(format!(
                    "scope {:?} has champion {} but no champion value was given",
                    cand.scope, c.id
                )));
            }
            (Some(_), Some(champ)) => {
                let gain = if higher_is_better {
                    challenger_value - champ
                } else {
                    champ - challenger_value
                };
                if gain >= margin {
                    (true, format!("better by {gain:.6} ≥ margin {margin}"))
                } else {
                    (
                        false,
                        format!("better by {gain:.6} < margin {margin}: champion kept"),
                    )
                }
            }
        };
        if promoted {
            self.set_status(challenger, Status::Production)?;
        }
        Ok(Decision {
            promoted,
            challenger,
            champion: champion.map(|c| c.id),
            challenger_value,
            champion_value,
            margin,
            reason,
        })
    }
}

/// What [`register_trained`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The new version.
    pub id: i64,
    /// Whether it is now the scope's production version.
    pub promoted: bool,
    /// The champion/challenger decision, when one was made.
    pub decision: Option<Decision>,
    /// One line for people: why it was or was not promoted.
    pub reason: String,
}

/// Registers a trained and exported model and runs champion/challenger on
/// held-out F1, as `outpost-cloud-sink train --registry` does: the first
/// version of a scope goes to production; later ones replace the champion
/// only when both F1 values exist (labelled held-out data the champion can
/// score) and the challenger wins by `margin`; otherwise the new version
/// stays a candidate. `artifact` is the directory holding the model files.
pub fn register_trained(
    db: &Path,
    scope: &str,
    artifact: &Path,
    outcome: &super::run::TrainOutcome,
    margin: f64,
) -> Result<Registration, TrainError> {
    let r = &outcome.report;
    let check = r.export.as_ref().ok_or_else(|| {
        TrainError::Export("the model was not exported; it cannot be registered".into())
    })?;
    let mut registry = Registry::open(db)?;
    let id = registry.register(
        &NewVersion {
            scope: scope.to_owned(),
            family: r.chosen.name().to_owned(),
            data_from_ns: r.data.time_from_ns,
            data_to_ns: r.data.time_to_ns,
            hyper_params: serde_json::to_value(&r.hyper_params)?,
            metrics: serde_json::to_value(&r.heldout)?,
            parent: None,
            artifact: artifact.display().to_string(),
        },
        check,
    )?;
    let challenger_f1 = r.heldout.as_ref().and_then(|m| m.f1);
    let champion = registry.production(scope)?;
    let champion_f1 = match &champion {
        Some(c) => champion_f1(&c.artifact, &outcome.heldout),
        None => None,
    };
    match (challenger_f1, &champion, champion_f1) {
        (_, None, _) | (Some(_), Some(_), Some(_)) => {
            let d = registry.challenge(
                id,
                challenger_f1.unwrap_or(0.0),
                champion_f1,
                margin,
                true,
            )?;
            Ok(Registration {
                id,
                promoted: d.promoted,
                reason: d.reason.clone(),
                decision: Some(d),
            })
        }
        _ => Ok(Registration {
            id,
            promoted: false,
            decision: None,
            reason: "registered as a candidate: champion and challenger cannot be compared on F1 (no labels or incompatible inputs)".into(),
        }),
    }
}

/// The champion's F1 on the challenger's held-out samples, when its inputs match.
fn champion_f1(artifact: &str, heldout: &super::dataset::Samples) -> Option<f64> {
    let model = super::run::SavedModel::load(Path::new(artifact)).ok()?;
    let labels = heldout.labels.as_ref()?;
    let scores = model.decision_scores(heldout).ok()?;
    super::metrics::BinaryMetrics::compute(&scores, labels, model.threshold.value).f1
}
