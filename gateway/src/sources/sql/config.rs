//! `[[sql]]`: one polled table per entry.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::mapping::EpochUnit;
use super::query::{self, Columns, Dialect};
use crate::config::ConfigProblem;

/// Most rows one poll may return.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// One SQL polling source.
///
/// Rows are read in cursor order, `batch_size` at a time, with the cursor (and
/// tie value) as bound parameters. Each batch becomes one envelope whose
/// checkpoint `sql:<name>` (the last cursor of the batch) is stored in the same
/// atomic outbox write as its readings. **Requirement:** the cursor column
/// must increase in the order rows become visible (commit order): an identity
/// or sequence column written by one writer, or a timestamp set in a
/// serialised step. A row that commits later with a smaller cursor than one
/// already read is never seen. Rows whose cursor is NULL are never read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceConfig {
    /// Unique name of this source: the checkpoint key is `sql:<name>` and
    /// quarantine entries have the origin `sql:<name>`.
    pub name: String,
    /// `postgres` or `sqlite`.
    pub driver: SqlDriver,
    /// PostgreSQL: a connection string, `host=127.0.0.1 user=reader dbname=plant`
    /// or `postgres://reader@127.0.0.1/plant` (plain TCP; no TLS yet).
    /// SQLite: the path of the database file (opened read-only).
    pub url: String,
    /// Table (or view) to read: `table` or `schema.table`. Names are quoted,
    /// so they are case-sensitive.
    pub table: String,
    /// Column that orders the rows; must be strictly increasing (see above).
    pub cursor_column: String,
    /// `integer` (an id) or `timestamp`.
    #[serde(default)]
    pub cursor_type: CursorType,
    /// Integer column that breaks ties between rows with the same cursor value
    /// (usually the primary key). Required for `timestamp` cursors: several
    /// rows can share a timestamp, and a batch boundary between them would
    /// otherwise skip or repeat rows. `(cursor, tie)` must be unique.
    pub tie_column: Option<String>,
    /// Column holding the device name (text or integer).
    pub device_column: Option<String>,
    /// Fixed device name for every row (instead of `device_column`).
    pub device: Option<String>,
    /// Long form: column holding the channel name.
    pub channel_column: Option<String>,
    /// Long form: fixed channel name (instead of `channel_column`).
    pub channel: Option<String>,
    /// Long form: column holding the value (integer or floating point).
    pub value_column: Option<String>,
    /// Wide form: channel name → value column, one reading per non-NULL
    /// column of a row, e.g. `{ temperature = "temp_c", pressure = "p_kpa" }`.
    #[serde(default)]
    pub value_columns: BTreeMap<String, String>,
    /// Column holding the unit (text; NULL means none).
    pub unit_column: Option<String>,
    /// Fixed unit of every reading (long form).
    pub unit: Option<String>,
    /// Wide form: channel name → unit.
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// Column holding the reading's time: a timestamp, text (RFC 3339, or
    /// `YYYY-MM-DD HH:MM:SS[.fff]` taken as UTC), or a number since the
    /// epoch in `time_unit`. Default: the cursor column when
    /// `cursor_type = "timestamp"`; required otherwise (the reading identity
    /// is device, channel, time, so the poll time cannot stand in for it).
    pub time_column: Option<String>,
    /// Unit of a numeric time column: `s`, `ms`, `us` or `ns`.
    #[serde(default)]
    pub time_unit: EpochUnit,
    /// Most rows per poll (and per envelope), 1..=10000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Pause between polls when the last batch was not full (a full batch is
    /// followed by the next poll at once).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest time for connecting or for one query.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
    /// First delay after a connection or query error; doubles (with jitter)
    /// up to `backoff_max`. The source reconnects after every error.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest delay between attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlDriver {
    Postgres,
    Sqlite,
}

impl SqlDriver {
    pub fn dialect(self) -> Dialect {
        match self {
            SqlDriver::Postgres => Dialect::Postgres,
            SqlDriver::Sqlite => Dialect::Sqlite,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorType {
    #[default]
    Integer,
    Timestamp,
}

fn default_batch_size() -> usize {
    500
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}

impl SqlSourceConfig {
    /// The checkpoint key in the outbox.
    pub fn checkpoint_key(&self) -> String {
        format!("sql:{}", self.name)
    }

    /// The time column: configured, or the cursor when it is a timestamp.
    pub fn time_column(&self) -> Option<&str> {
        self.time_column.as_deref().or(match self.cursor_type {
            CursorType::Timestamp => Some(self.cursor_column.as_str()),
            CursorType::Integer => None,
        })
    }

    /// The columns to select, by role (after [`SqlSourceConfig::validate`] passed).
    pub fn columns(&self) -> Columns<'_> {
        let values = match &self.value_column {
            Some(v) => vec![(String::new(), v.as_str())],
            None => self
                .value_columns
                .iter()
                .map(|(ch, col)| (ch.clone(), col.as_str()))
                .collect(),
        };
        Columns {
            cursor: &self.cursor_column,
            tie: self.tie_column.as_deref(),
            device: self.device_column.as_deref(),
            channel: self.channel_column.as_deref(),
            time: self.time_column().unwrap_or(&self.cursor_column),
            unit: self.unit_column.as_deref(),
            values,
            cast_to_double: Vec::new(),
        }
    }

    /// Every problem, each under `key` (e.g. `sql[0]`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            })
        };
        if !valid_source_name(&self.name) {
            bad(
                "name",
                "must be 1..=64 characters of letters, digits, `_`, `-` or `.`".into(),
            );
        }
        if self.url.trim().is_empty() {
            bad("url", "is empty".into());
        } else if self.driver == SqlDriver::Postgres
            && let Err(e) = self.url.parse::<tokio_postgres::Config>()
        {
            bad("url", format!("not a PostgreSQL connection string: {e}"));
        }
        if let Err(e) = query::check_table(&self.table) {
            bad("table", e);
        }
        let mut check = |field: &str, v: &Option<String>| {
            if let Some(name) = v
                && let Err(e) = query::check_ident(name)
            {
                bad(field, e);
            }
        };
        check("cursor_column", &Some(self.cursor_column.clone()));
        check("tie_column", &self.tie_column);
        check("device_column", &self.device_column);
        check("channel_column", &self.channel_column);
        check("value_column", &self.value_column);
        check("unit_column", &self.unit_column);
        check("time_column", &self.time_column);
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            })
        };
        for (channel, col) in &self.value_columns {
            if let Err(e) = query::check_ident(col) {
                bad(&format!("value_columns.{channel}"), e);
            }
            if let Err(e) = check_name(channel) {
                bad(
                    &format!("value_columns.{channel}"),
                    format!("channel name {e}"),
                );
            }
        }
        for (channel, unit) in &self.units {
            if !self.value_columns.contains_key(channel) {
                bad(
                    &format!("units.{channel}"),
                    "names no channel of value_columns".into(),
                );
            }
            if let Err(e) = check_unit(unit) {
                bad(&format!("units.{channel}"), e);
            }
        }
        if self.cursor_type == CursorType::Timestamp && self.tie_column.is_none() {
            bad(
                "tie_column",
                "a timestamp cursor needs a tie_column (e.g. the primary key): several rows can \
                 share a timestamp, and a batch boundary between them would skip or repeat rows"
                    .into(),
            );
        }
        if self.tie_column.is_some() && self.tie_column.as_deref() == Some(&self.cursor_column) {
            bad("tie_column", "must differ from cursor_column".into());
        }
        match (&self.device_column, &self.device) {
            (Some(_), Some(_)) => bad(
                "device",
                "set either device_column or device, not both".into(),
            ),
            (None, None) => bad(
                "device_column",
                "set device_column or a fixed device".into(),
            ),
            (None, Some(d)) => {
                if let Err(e) = check_name(d) {
                    bad("device", e);
                }
            }
            (Some(_), None) => {}
        }
        let wide = !self.value_columns.is_empty();
        match (&self.value_column, wide) {
            (Some(_), true) => bad(
                "value_columns",
                "set either value_column (long form) or value_columns (wide form), not both".into(),
            ),
            (None, false) => bad(
                "value_column",
                "set value_column (long form) or value_columns (wide form)".into(),
            ),
            (Some(_), false) => match (&self.channel_column, &self.channel) {
                (Some(_), Some(_)) => bad(
                    "channel",
                    "set either channel_column or channel, not both".into(),
                ),
                (None, None) => bad(
                    "channel_column",
                    "the long form needs channel_column or a fixed channel".into(),
                ),
                (None, Some(c)) => {
                    if let Err(e) = check_name(c) {
                        bad("channel", e);
                    }
                }
                (Some(_), None) => {}
            },
            (None, true) => {
                if self.channel_column.is_some() || self.channel.is_some() {
                    bad(
                        "channel_column",
                        "the wide form names channels in value_columns; drop channel_column/channel"
                            .into(),
                    );
                }
                if self.unit.is_some() || self.unit_column.is_some() {
                    bad(
                        "unit",
                        "the wide form takes units from `units`, per channel".into(),
                    );
                }
            }
        }
        if self.unit.is_some() && self.unit_column.is_some() {
            bad("unit", "set either unit_column or unit, not both".into());
        }
        if let Some(u) = &self.unit
            && let Err(e) = check_unit(u)
        {
            bad("unit", e);
        }
        if self.time_column().is_none() {
            bad(
                "time_column",
                "required with an integer cursor: the reading identity is (device, channel, \
                 time), so rows need their own time"
                    .into(),
            );
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            bad("batch_size", format!("must be within 1..={MAX_BATCH_SIZE}"));
        }
        if self.poll_interval.is_zero() || self.poll_interval > Duration::from_secs(86_400) {
            bad("poll_interval", "must be positive and at most 24h".into());
        }
        if self.query_timeout.is_zero() || self.query_timeout > Duration::from_secs(3600) {
            bad("query_timeout", "must be positive and at most 1h".into());
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            bad(
                "backoff_min",
                "must be positive and not exceed backoff_max".into(),
            );
        }
    }
}

/// Validates every `[[sql]]` entry (keys `sql[i].…`) and that names are unique.
pub fn validate_all(sources: &[SqlSourceConfig], problems: &mut Vec<ConfigProblem>) {
    let mut seen = HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        let key = format!("sql[{i}]");
        s.validate(&key, problems);
        if !seen.insert(s.name.as_str()) {
            problems.push(ConfigProblem {
                key: format!("{key}.name"),
                message: format!("{:?} is used by another [[sql]] source", s.name),
            });
        }
    }
}

/// Source names end up in checkpoint keys, origins and metric labels.
pub(crate) fn valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A fixed device or channel name: the rules of [`protocol::Reading`].
pub(crate) fn check_name(s: &str) -> Result<(), String> {
    check_len(s, protocol::reading::MAX_NAME_LEN)
}

/// A fixed unit: the rules of [`protocol::Reading`].
pub(crate) fn check_unit(s: &str) -> Result<(), String> {
    check_len(s, protocol::reading::MAX_UNIT_LEN)
}

fn check_len(s: &str, limit: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > limit {
        return Err(format!("is longer than {limit} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, GatewayConfig};

    fn keys(extra: &str) -> Vec<String> {
        let text = format!(
            r#"
            name = "plant"
            driver = "postgres"
            url = "host=127.0.0.1 user=postgres dbname=test"
            table = "readings"
            {extra}
        "#
        );
        let c: SqlSourceConfig = toml::from_str(&text).unwrap();
        let mut p = Vec::new();
        c.validate("sql[0]", &mut p);
        p.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn a_long_form_source_is_valid() {
        let k = keys(
            r#"cursor_column = "id"
            device_column = "device"
            channel_column = "channel"
            value_column = "value"
            time_column = "ts""#,
        );
        assert!(k.is_empty(), "{k:?}");
    }

    #[test]
    fn every_mistake_is_reported_with_its_key() {
        let k = keys(
            r#"cursor_column = "id; DROP TABLE x"
            cursor_type = "timestamp"
            device_column = "device"
            device = "pump"
            value_column = "value"
            value_columns = { t = "temp" }
            unit_column = "1unit"
            batch_size = 0
            poll_interval = "0s"
            backoff_min = "2m""#,
        );
        for key in [
            "sql[0].cursor_column",
            "sql[0].tie_column",
            "sql[0].device",
            "sql[0].value_columns",
            "sql[0].unit_column",
            "sql[0].batch_size",
            "sql[0].poll_interval",
            "sql[0].backoff_min",
        ] {
            assert!(k.iter().any(|x| x == key), "missing {key} in {k:?}");
        }
        // An integer cursor without a time column has no identity for its rows.
        let k = keys(
            r#"cursor_column = "id"
            device = "d"
            channel = "c"
            value_column = "v""#,
        );
        assert_eq!(k, ["sql[0].time_column"]);
        // A wide form names its channels itself.
        let k = keys(
            r#"cursor_column = "at"
            cursor_type = "timestamp"
            tie_column = "id"
            device = "d"
            channel_column = "c"
            value_columns = { t = "temp" }
            units = { x = "Cel" }"#,
        );
        assert!(k.contains(&"sql[0].channel_column".to_owned()), "{k:?}");
        assert!(k.contains(&"sql[0].units.x".to_owned()), "{k:?}");
    }

    #[test]
    fn sql_and_rest_sources_count_as_sources_and_names_must_be_unique() {
        let base = r#"
            gateway_id = "gw-1"
            [uplink]
            url = "http://127.0.0.1:8080"
            token = "secret"
        "#;
        let sql = r#"
            [[sql]]
            name = "a"
            driver = "sqlite"
            url = "/tmp/x.db"
            table = "m"
            cursor_column = "id"
            device = "d"
            channel = "c"
            value_column = "v"
            time_column = "ts"
        "#;
        let rest = r#"
            [[rest]]
            name = "a"
            url = "http://127.0.0.1:1/x"
            device = "d"
            channel = "c"
            value_pointer = "/v"
        "#;
        let cfg = GatewayConfig::from_toml(&format!("{base}{sql}"), Path::new("t.toml")).unwrap();
        assert_eq!(cfg.sql.len(), 1);
        let cfg = GatewayConfig::from_toml(&format!("{base}{rest}"), Path::new("t.toml")).unwrap();
        assert_eq!(cfg.rest.len(), 1);
        let Err(ConfigError::Invalid { problems, .. }) =
            GatewayConfig::from_toml(&format!("{base}{sql}{sql}"), Path::new("t.toml"))
        else {
            panic!("two [[sql]] named alike accepted")
        };
        assert!(
            problems.iter().any(|p| p.key == "sql[1].name"),
            "{problems:?}"
        );
        let unknown = format!("{base}{sql}\nbatch = 5\n");
        let err = GatewayConfig::from_toml(&unknown, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch"), "{err}");
    }
}
