//! Row → readings, with no I/O: both drivers turn a result row into
//! [`Cell`]s, and [`Mapper`] turns cells into readings or a typed reason.
//!
//! A row that cannot be mapped (NULL value, a value of the wrong type, no
//! device or channel, an unreadable time, an invalid reading) yields a
//! [`DecodeError`]; the source quarantines the row with it and the cursor
//! still moves past the row.

use protocol::{DecodeError, Reading, Timestamp};
use serde::{Deserialize, Serialize};

use super::config::{CursorType, SqlSourceConfig};
use super::query::Layout;

/// One value of a result row, driver-independent.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// A database timestamp (PostgreSQL `timestamp`/`timestamptz`).
    Time(Timestamp),
    /// Anything else; the name of its type.
    Other(String),
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Int(_) => "integer",
            Cell::Real(_) => "real",
            Cell::Text(_) => "text",
            Cell::Time(_) => "timestamp",
            Cell::Other(_) => "unsupported type",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Int(i) => (*i).into(),
            Cell::Real(f) => serde_json::Number::from_f64(*f)
                .map_or_else(|| f.to_string().into(), serde_json::Value::Number),
            Cell::Text(s) => s.clone().into(),
            Cell::Time(t) => t.to_string().into(),
            Cell::Other(t) => format!("<{t}>").into(),
        }
    }
}

/// Unit of a numeric time value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum EpochUnit {
    #[default]
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "us")]
    Micros,
    #[serde(rename = "ns")]
    Nanos,
}

impl EpochUnit {
    fn nanos_per_unit(self) -> i64 {
        match self {
            EpochUnit::Seconds => 1_000_000_000,
            EpochUnit::Millis => 1_000_000,
            EpochUnit::Micros => 1_000,
            EpochUnit::Nanos => 1,
        }
    }

    /// An integer count of units since the epoch.
    pub fn from_int(self, n: i64) -> Option<Timestamp> {
        n.checked_mul(self.nanos_per_unit()).map(Timestamp)
    }

    /// A (fractional) count of units since the epoch.
    pub fn from_f64(self, x: f64) -> Option<Timestamp> {
        Timestamp::from_secs_f64(x * self.nanos_per_unit() as f64 / 1e9)
    }
}

/// Text time: RFC 3339 (any offset), or `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z]`
/// without an offset, taken as UTC (SQLite's `datetime()` form).
pub fn parse_time_text(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos()).ok().map(Timestamp);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok().map(Timestamp),
        Err(e) => i64::try_from(e.duration().as_nanos())
            .ok()
            .map(|n| Timestamp(-n)),
    }
}

/// Where the cursor stands: the last row handed to ingest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub key: CursorValue,
    /// The tie-breaker column's value, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie: Option<i64>,
}

/// A cursor column's value, as the database returned it (bound back as is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorValue {
    Int(i64),
    /// A database timestamp, nanoseconds since the epoch.
    Time(i64),
    /// SQLite text (compared as text: the column must use one format).
    Text(String),
    /// SQLite real.
    Real(f64),
}

/// What the checkpoint stores: versioned, so a later format can be told apart.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCursor {
    v: u8,
    cursor: Cursor,
}

impl Cursor {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&StoredCursor {
            v: 1,
            cursor: self.clone(),
        })
        .unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Cursor, String> {
        let s: StoredCursor = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.v != 1 {
            return Err(format!("checkpoint format {} is not supported", s.v));
        }
        Ok(s.cursor)
    }
}

/// Why a row's cursor cannot be read: the source cannot move past such a row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cursor column {column:?} holds {found} where {expected} was expected")]
pub struct CursorError {
    pub column: String,
    pub found: &'static str,
    pub expected: &'static str,
}

/// Maps rows of one source; built from its config and its query layout.
#[derive(Clone, Debug)]
pub struct Mapper {
    layout: Layout,
    cursor_type: CursorType,
    device: Option<String>,
    channel: Option<String>,
    unit: Option<String>,
    units: std::collections::BTreeMap<String, String>,
    time_unit: EpochUnit,
}

impl Mapper {
    pub fn new(cfg: &SqlSourceConfig, layout: Layout) -> Self {
        Mapper {
            layout,
            cursor_type: cfg.cursor_type,
            device: cfg.device.clone(),
            channel: cfg.channel.clone(),
            unit: cfg.unit.clone(),
            units: cfg.units.clone(),
            time_unit: cfg.time_unit,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The row's position in the table.
    pub fn cursor(&self, row: &[Cell]) -> Result<Cursor, CursorError> {
        let column = &self.layout.columns[self.layout.cursor];
        let cell = row.get(self.layout.cursor).unwrap_or(&Cell::Null);
        let key = match (self.cursor_type, cell) {
            (CursorType::Integer, Cell::Int(i)) => CursorValue::Int(*i),
            (CursorType::Timestamp, Cell::Time(t)) => CursorValue::Time(t.as_nanos()),
            (CursorType::Timestamp, Cell::Int(i)) => CursorValue::Int(*i),
            (CursorType::Timestamp, Cell::Text(s)) => CursorValue::Text(s.clone()),
            (CursorType::Timestamp, Cell::Real(f)) => CursorValue::Real(*f),
            (t, c) => {
                return Err(CursorError {
                    column: column.clone(),
                    found: c.kind(),
                    expected: match t {
                        CursorType::Integer => "an integer",
                        CursorType::Timestamp => "a timestamp",
                    },
                });
            }
        };
        let tie = match self.layout.tie {
            None => None,
            Some(i) => match row.get(i).unwrap_or(&Cell::Null) {
                Cell::Int(v) => Some(*v),
                c => {
                    return Err(CursorError {
                        column: self.layout.columns[i].clone(),
                        found: c.kind(),
                        expected: "an integer",
                    });
                }
            },
        };
        Ok(Cursor { key, tie })
    }

    /// The row as a JSON object (column → value), for its quarantine entry.
    pub fn row_json(&self, row: &[Cell]) -> Vec<u8> {
        let mut obj = serde_json::Map::new();
        for (name, cell) in self.layout.columns.iter().zip(row) {
            obj.insert(name.clone(), cell.to_json());
        }
        serde_json::to_vec(&obj).unwrap_or_default()
    }

    /// The readings of one row (`index` is its position in the batch, for errors).
    pub fn map_row(&self, index: usize, row: &[Cell]) -> Result<Vec<Reading>, DecodeError> {
        let cell = |i: usize| row.get(i).unwrap_or(&Cell::Null);
        let col = |i: usize| self.layout.columns[i].as_str();
        let device = match (&self.device, self.layout.device) {
            (Some(d), _) => d.clone(),
            (None, Some(i)) => name_of(cell(i)).map_err(|why| {
                DecodeError::Schema(format!("row {index}: device column {:?} {why}", col(i)))
            })?,
            (None, None) => {
                return Err(DecodeError::MissingName { index });
            }
        };
        let ts = self.time_of(cell(self.layout.time)).map_err(|why| {
            DecodeError::Schema(format!(
                "row {index}: time column {:?} {why}",
                col(self.layout.time)
            ))
        })?;
        let wide = self.layout.channel.is_none() && self.channel.is_none();
        let mut out = Vec::with_capacity(self.layout.values.len());
        for (wide_channel, vi) in &self.layout.values {
            let value = match cell(*vi) {
                Cell::Int(i) => *i as f64,
                Cell::Real(f) => *f,
                Cell::Null if wide => continue,
                Cell::Null => return Err(DecodeError::MissingValue { index }),
                other => {
                    return Err(DecodeError::UnsupportedValue {
                        index,
                        kind: other.kind(),
                    });
                }
            };
            let (channel, unit) = if wide {
                (wide_channel.clone(), self.units.get(wide_channel).cloned())
            } else {
                let channel = match (&self.channel, self.layout.channel) {
                    (Some(c), _) => c.clone(),
                    (None, Some(i)) => name_of(cell(i)).map_err(|why| {
                        DecodeError::Schema(format!(
                            "row {index}: channel column {:?} {why}",
                            col(i)
                        ))
                    })?,
                    (None, None) => return Err(DecodeError::MissingName { index }),
                };
                let unit = match (&self.unit, self.layout.unit) {
                    (Some(u), _) => Some(u.clone()),
                    (None, Some(i)) => match cell(i) {
                        Cell::Null => None,
                        Cell::Text(s) if s.is_empty() => None,
                        Cell::Text(s) => Some(s.clone()),
                        other => {
                            return Err(DecodeError::Schema(format!(
                                "row {index}: unit column {:?} holds {}, not text",
                                col(i),
                                other.kind()
                            )));
                        }
                    },
                    (None, None) => None,
                };
                (channel, unit)
            };
            let mut r = Reading::new(device.clone(), channel, ts, value)
                .map_err(|source| DecodeError::Invalid { index, source })?;
            if let Some(u) = unit {
                r = r.with_unit(u);
                r.validate()
                    .map_err(|source| DecodeError::Invalid { index, source })?;
            }
            out.push(r);
        }
        if out.is_empty() {
            return Err(DecodeError::MissingValue { index });
        }
        Ok(out)
    }

    fn time_of(&self, cell: &Cell) -> Result<Timestamp, String> {
        let t = match cell {
            Cell::Time(t) => Some(*t),
            Cell::Int(i) => self.time_unit.from_int(*i),
            Cell::Real(f) => self.time_unit.from_f64(*f),
            Cell::Text(s) => parse_time_text(s),
            Cell::Null => return Err("is NULL".into()),
            Cell::Other(t) => return Err(format!("has the unsupported type {t}")),
        };
        t.ok_or_else(|| format!("holds {} that is not a representable time", cell.kind()))
    }
}

/// A device or channel name from a text or integer cell.
fn name_of(cell: &Cell) -> Result<String, String> {
    match cell {
        Cell::Text(s) => Ok(s.clone()),
        Cell::Int(i) => Ok(i.to_string()),
        Cell::Null => Err("is NULL".into()),
        other => Err(format!("holds {}, not text", other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::sql::query::{Dialect, build};

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn cfg(extra: &str) -> SqlSourceConfig {
        let text = format!(
            r#"
            name = "t"
            driver = "sqlite"
            url = "x.db"
            table = "m"
            cursor_column = "id"
            {extra}
        "#
        );
        toml::from_str(&text).unwrap()
    }

    fn mapper(c: &SqlSourceConfig) -> Mapper {
        let mut problems = Vec::new();
        c.validate("sql[0]", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let q = build(Dialect::Sqlite, &c.table, &c.columns());
        Mapper::new(c, q.layout)
    }

    fn long() -> Mapper {
        mapper(&cfg(r#"device_column = "dev"
            channel_column = "ch"
            value_column = "v"
            unit_column = "u"
            time_column = "ts""#))
    }

    // Long layout: id, dev, ch, ts, u, v
    fn row(dev: Cell, ch: Cell, ts: Cell, u: Cell, v: Cell) -> Vec<Cell> {
        vec![Cell::Int(7), dev, ch, ts, u, v]
    }

    #[test]
    fn a_long_row_maps_to_one_reading_with_unit_and_time() {
        let m = long();
        let r = m
            .map_row(
                0,
                &row(
                    Cell::Text("pump-1".into()),
                    Cell::Text("temp".into()),
                    Cell::Int(T0),
                    Cell::Text("Cel".into()),
                    Cell::Real(21.5),
                ),
            )
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].device, "pump-1");
        assert_eq!(r[0].channel, "temp");
        assert_eq!(r[0].ts, Timestamp(T0 * 1_000_000_000));
        assert_eq!(r[0].value, 21.5);
        assert_eq!(r[0].unit.as_deref(), Some("Cel"));
        assert_eq!(
            m.cursor(&row(
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null
            ))
            .unwrap(),
            Cursor {
                key: CursorValue::Int(7),
                tie: None
            }
        );
    }

    #[test]
    fn unmappable_rows_get_a_typed_reason() {
        let m = long();
        let ok = || {
            (
                Cell::Text("d".into()),
                Cell::Text("c".into()),
                Cell::Int(T0),
                Cell::Null,
                Cell::Int(1),
            )
        };
        let cases: Vec<(Vec<Cell>, &str)> = vec![
            (
                {
                    let (d, c, t, u, _) = ok();
                    row(d, c, t, u, Cell::Null)
                },
                "missing_value",
            ),
            (
                {
                    let (d, c, t, u, _) = ok();
                    row(d, c, t, u, Cell::Text("12".into()))
                },
                "unsupported_value",
            ),
            (
                {
                    let (_, c, t, u, v) = ok();
                    row(Cell::Null, c, t, u, v)
                },
                "schema",
            ),
            (
                {
                    let (d, _, t, u, v) = ok();
                    row(d, Cell::Real(1.0), t, u, v)
                },
                "schema",
            ),
            (
                {
                    let (d, c, _, u, v) = ok();
                    row(d, c, Cell::Null, u, v)
                },
                "schema",
            ),
            (
                {
                    let (d, c, _, u, v) = ok();
                    row(d, c, Cell::Text("yesterday".into()), u, v)
                },
                "schema",
            ),
            (
                {
                    let (d, c, t, u, _) = ok();
                    row(d, c, t, u, Cell::Real(f64::NAN))
                },
                "non_finite_value",
            ),
            (
                {
                    let (_, c, t, u, v) = ok();
                    row(Cell::Text(String::new()), c, t, u, v)
                },
                "empty_name",
            ),
            (
                {
                    let (d, c, t, _, v) = ok();
                    row(d, c, t, Cell::Int(3), v)
                },
                "schema",
            ),
            (
                {
                    let (d, c, t, _, v) = ok();
                    row(d, c, t, Cell::Text("x".repeat(40)), v)
                },
                "name_too_long",
            ),
        ];
        for (i, (r, reason)) in cases.into_iter().enumerate() {
            let e = m.map_row(i, &r).unwrap_err();
            assert_eq!(e.reason_code(), reason, "case {i}: {e}");
        }
        // The quarantine payload shows the row by column name.
        let json: serde_json::Value = serde_json::from_slice(&m.row_json(&row(
            Cell::Text("d".into()),
            Cell::Text("c".into()),
            Cell::Int(T0),
            Cell::Null,
            Cell::Null,
        )))
        .unwrap();
        assert_eq!(json["id"], 7);
        assert_eq!(json["v"], serde_json::Value::Null);
        assert_eq!(json["dev"], "d");
    }

    #[test]
    fn a_wide_row_maps_each_non_null_column_to_its_channel() {
        let m = mapper(&cfg(r#"device = "station-1"
            time_column = "ts"
            time_unit = "ms"
            value_columns = { temperature = "t", humidity = "h" }
            units = { temperature = "Cel" }"#));
        // Layout: id, ts, then value columns in channel order (humidity, temperature).
        assert_eq!(m.layout().columns, ["id", "ts", "h", "t"]);
        let r = m
            .map_row(
                0,
                &[
                    Cell::Int(1),
                    Cell::Int(T0 * 1000 + 5),
                    Cell::Null,
                    Cell::Real(3.5),
                ],
            )
            .unwrap();
        assert_eq!(r.len(), 1, "the NULL humidity is skipped");
        assert_eq!(r[0].channel, "temperature");
        assert_eq!(r[0].device, "station-1");
        assert_eq!(r[0].unit.as_deref(), Some("Cel"));
        assert_eq!(r[0].ts, Timestamp(T0 * 1_000_000_000 + 5_000_000));
        let both = m
            .map_row(
                0,
                &[Cell::Int(1), Cell::Int(T0), Cell::Int(40), Cell::Real(3.5)],
            )
            .unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].unit, None);
        let e = m
            .map_row(4, &[Cell::Int(1), Cell::Int(T0), Cell::Null, Cell::Null])
            .unwrap_err();
        assert_eq!(e, DecodeError::MissingValue { index: 4 });
    }

    #[test]
    fn timestamp_cursors_carry_their_tie_and_survive_the_checkpoint_round_trip() {
        let m = mapper(&cfg(r#"cursor_type = "timestamp"
            tie_column = "seq"
            device = "d"
            channel = "c"
            value_column = "v""#));
        // Layout: id (cursor), seq, id (time = cursor), v
        let t = Timestamp(T0 * 1_000_000_000 + 123_000);
        let row = [Cell::Time(t), Cell::Int(9), Cell::Time(t), Cell::Real(1.0)];
        let c = m.cursor(&row).unwrap();
        assert_eq!(
            c,
            Cursor {
                key: CursorValue::Time(t.as_nanos()),
                tie: Some(9)
            }
        );
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert_eq!(m.map_row(0, &row).unwrap()[0].ts, t);
        let text = Cursor {
            key: CursorValue::Text("2026-01-01 00:00:00.5".into()),
            tie: Some(1),
        };
        assert_eq!(Cursor::decode(&text.encode()).unwrap(), text);
        let real = Cursor {
            key: CursorValue::Real(1767225600.123456),
            tie: None,
        };
        assert_eq!(Cursor::decode(&real.encode()).unwrap(), real);
        assert!(Cursor::decode(b"{\"v\":2,\"cursor\":{\"key\":{\"int\":1}}}").is_err());
        assert!(Cursor::decode(b"garbage").is_err());
        // A tie that is not an integer cannot be a position.
        let bad = [
            Cell::Time(t),
            Cell::Text("x".into()),
            Cell::Time(t),
            Cell::Real(1.0),
        ];
        assert!(m.cursor(&bad).is_err());
    }

    #[test]
    fn an_integer_cursor_refuses_other_types() {
        let m = long();
        let e = m
            .cursor(&[
                Cell::Text("7".into()),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
            ])
            .unwrap_err();
        assert_eq!(e.found, "text");
    }

    #[test]
    fn text_times_accept_rfc3339_with_offsets_and_the_sqlite_form() {
        let base = T0 * 1_000_000_000;
        assert_eq!(
            parse_time_text("2026-01-01T00:00:00Z"),
            Some(Timestamp(base))
        );
        assert_eq!(
            parse_time_text("2026-01-01T01:00:00.25+01:00"),
            Some(Timestamp(base + 250_000_000))
        );
        assert_eq!(
            parse_time_text("2026-01-01 00:00:01"),
            Some(Timestamp(base + 1_000_000_000))
        );
        assert_eq!(
            parse_time_text("2026-01-01 00:00:00.001"),
            Some(Timestamp(base + 1_000_000))
        );
        assert_eq!(parse_time_text("yesterday"), None);
        assert_eq!(parse_time_text(""), None);
        assert_eq!(
            EpochUnit::Millis.from_int(1500),
            Some(Timestamp(1_500_000_000))
        );
        assert_eq!(EpochUnit::Seconds.from_int(i64::MAX), None);
        assert_eq!(
            EpochUnit::Seconds.from_f64(1.5),
            Some(Timestamp(1_500_000_000))
        );
        assert_eq!(EpochUnit::Seconds.from_f64(f64::NAN), None);
    }
}
