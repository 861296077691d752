//! Training sets: files or stored readings → a [`Table`] of frames → windows
//! → sample rows through `protocol::features`.
//!
//! # Sources
//! - **CSV** (`.csv`, `.tsv`, `.txt`): a header row, one row per frame. The
//!   delimiter is detected on the header line: whichever of `,` `;` and tab
//!   occurs most outside quotes (`,` on a tie or none). Optional time column
//!   (`--time-column`), label column (`--label-column`), device column
//!   (`--device-column`, default `device` when present), excluded columns
//!   (`--exclude`). A column whose every non-empty cell is a number is a
//!   numeric channel (empty, `NA`, `NaN`, `null` cells are missing values);
//!   any other column is a categorical channel (one-hot encoded later).
//!   `--categorical` declares numeric columns or channels categorical too
//!   (see [Categorical codes](#categorical-codes)).
//! - **JSON, NDJSON, SenML** (`.json`, `.ndjson`/`.jsonl`, `.senml`,
//!   `.cbor`): decoded with the protocol decoders (`PayloadFormat::Auto` per
//!   document; NDJSON one document per line), then assembled into frames.
//! - **Storage**: the sink's readings of a device (or all) in a time range.
//!
//! Times: RFC 3339, or a number read by magnitude — below 1e11 seconds,
//! below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds since
//! the Unix epoch. Labels: `1/0`, `true/false`, `yes/no`, `anomaly/normal`
//! (any case); an empty label cell is normal.
//!
//! # Frames from readings
//! The same grid and hold rule as the gateway's `FrameAssembler`: frame times
//! are whole multiples of `period` since the epoch; channel `c` in the frame
//! at `T` holds the last reading of `c` with timestamp `≤ T` if `T − ts ≤ hold`,
//! else it is missing (NaN); frames where every channel is missing are not
//! made. Offline all readings are known, so there is no reorder window and no
//! late reading. (This batch form duplicates the gateway's streaming rule; the
//! frame and window logic should move to `protocol` so both share one
//! implementation.)
//!
//! # Windows
//! Rows of one device are consecutive frames when their times are one
//! `period` apart (the period of a CSV is its most common positive time step;
//! without a time column every row follows the previous). A non-consecutive
//! row starts the window sequence over. As on the gateway, a window ends at
//! frame index `k` (time / period, or the row count since the device's first
//! row without times) when `(k + 1) mod hop == 0` and the last `len` rows are
//! consecutive. `len = 1` makes every row a sample (features = the row).
//!
//! # Missing values ([`MissingPolicy`])
//! - `drop` (default): a window with any missing numeric value is dropped and
//!   counted;
//! - `ffill:N`: a missing value takes the last present value of the same
//!   device and channel if that is at most `N` rows back; otherwise it stays
//!   missing and its windows are dropped.
//!
//! A window's label is `true` when any of its rows is labelled anomalous.
//!
//! # Categorical codes
//! A numeric column or reading channel named in
//! [`ColumnOptions::categorical`] becomes a categorical channel whose
//! categories are its values written as integers (`1.0` → `"1"`; a value
//! that is not an integer keeps its decimal form, and such a channel cannot
//! be exported). Frames take its last reading like any channel, never an
//! average. It stays what the gateway sees — a number per frame — so a
//! missing value in it is a gap like a numeric one: `ffill:N` fills it, and
//! a window with a gap left in it is dropped. Columns that are categorical
//! already (text) may be named too; that changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nalgebra::DMatrix;
use protocol::features::{BaselineState, FeatureExtractor, FeatureSpec, Window};
use protocol::{DecodeContext, DecodeLimits, PayloadFormat, Reading, Timestamp};
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::storage::{ReadingQuery, Storage};

/// A table of frames: one row per (device, frame time), sorted by device,
/// then time (stable for equal keys).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub devices: Vec<String>,
    /// Nanoseconds since the epoch, per row; `None` without a time column.
    pub times: Option<Vec<i64>>,
    /// Grid step in nanoseconds, when known.
    pub period_ns: Option<i64>,
    pub numeric_names: Vec<String>,
    /// `numeric[col][row]`, NaN where missing.
    pub numeric: Vec<Vec<f64>>,
    pub cat_names: Vec<String>,
    /// `categorical[col][row]`.
    pub categorical: Vec<Vec<String>>,
    /// Per categorical column: it holds integer codes of a numeric column
    /// (see the module docs); `""` is then a missing value. Empty when no
    /// column was declared.
    pub code_columns: Vec<bool>,
    pub labels: Option<Vec<bool>>,
    /// For each row, its row number in the input (0-based data row across
    /// files for CSV; the frame number for assembled readings).
    pub source_rows: Vec<usize>,
}

impl Table {
    pub fn rows(&self) -> usize {
        self.devices.len()
    }

    /// Keeps the rows `keep` (in that order).
    pub fn select(&self, keep: &[usize]) -> Table {
        Table {
            devices: keep.iter().map(|&i| self.devices[i].clone()).collect(),
            times: self
                .times
                .as_ref()
                .map(|t| keep.iter().map(|&i| t[i]).collect()),
            period_ns: self.period_ns,
            numeric_names: self.numeric_names.clone(),
            numeric: self
                .numeric
                .iter()
                .map(|c| keep.iter().map(|&i| c[i]).collect())
                .collect(),
            cat_names: self.cat_names.clone(),
            categorical: self
                .categorical
                .iter()
                .map(|c| keep.iter().map(|&i| c[i].clone()).collect())
                .collect(),
            code_columns: self.code_columns.clone(),
            labels: self
                .labels
                .as_ref()
                .map(|l| keep.iter().map(|&i| l[i]).collect()),
            source_rows: keep.iter().map(|&i| self.source_rows[i]).collect(),
        }
    }

    /// Whether categorical column `k` holds codes (a missing cell is a gap).
    pub fn is_code_column(&self, k: usize) -> bool {
        self.code_columns.get(k).copied().unwrap_or(false)
    }

    /// Distinct devices, sorted.
    pub fn device_names(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.devices.iter().collect();
        set.into_iter().cloned().collect()
    }

    /// Sorts rows by device, then time (stable).
    fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.rows()).collect();
        let times = self.times.clone();
        order.sort_by(|&a, &b| {
            self.devices[a]
                .cmp(&self.devices[b])
                .then_with(|| match &times {
                    Some(t) => t[a].cmp(&t[b]),
                    None => std::cmp::Ordering::Equal,
                })
        });
        *self = self.select(&order);
    }
}

/// Column roles for file input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnOptions {
    pub time_column: Option<String>,
    pub label_column: Option<String>,
    /// `None`: `device` when such a column exists.
    pub device_column: Option<String>,
    pub exclude: Vec<String>,
    /// Frame period for readings (JSON/NDJSON/SenML/storage); CSV infers it.
    pub period: Option<Duration>,
    /// Hold tolerance for readings; default: one period.
    pub hold: Option<Duration>,
    /// Columns or channels that are categorical although numeric (integer
    /// codes, e.g. an operating mode); see the module docs.
    pub categorical: Vec<String>,
}

/// What to do with missing values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "max_rows")]
pub enum MissingPolicy {
    #[default]
    Drop,
    ForwardFill(usize),
}

impl std::str::FromStr for MissingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "drop" {
            return Ok(MissingPolicy::Drop);
        }
        s.strip_prefix("ffill:")
            .and_then(|n| n.parse().ok())
            .map(MissingPolicy::ForwardFill)
            .ok_or_else(|| format!("`{s}`: expected `drop` or `ffill:N`"))
    }
}

impl std::fmt::Display for MissingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissingPolicy::Drop => f.write_str("drop windows with missing values"),
            MissingPolicy::ForwardFill(n) => write!(
                f,
                "forward-fill within {n} rows, then drop windows still missing values"
            ),
        }
    }
}

/// How samples are cut from a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowOptions {
    /// Rows per window; 1 = every row is a sample.
    pub len: usize,
    /// A window every `hop` rows of the grid.
    pub hop: usize,
    /// Features per window (`len ≥ 2`); `None` with `len = 1`. Its
    /// `channels` must be the table's numeric channels.
    pub features: Option<FeatureSpec>,
    pub missing: MissingPolicy,
}

/// Counts of a sample build, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleStats {
    pub rows: usize,
    pub windows: usize,
    pub dropped_with_gaps: usize,
    pub filled_cells: usize,
    pub restarts: usize,
    pub missing_policy: String,
}

/// Sample rows ready for preprocessing.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    pub x: DMatrix<f64>,
    pub names: Vec<String>,
    /// `categorical[col][sample]`: the value at the window's last row.
    pub categorical: Vec<Vec<String>>,
    pub cat_names: Vec<String>,
    /// When every categorical column holds codes (and there is one): each
    /// sample's codes at the window's last row, as the gateway's frame holds
    /// them (the one-hot reads only that row), row-major — kept for the
    /// export check. Empty otherwise.
    pub codes: Vec<f64>,
    pub labels: Option<Vec<bool>>,
    pub devices: Vec<String>,
    /// The window's end time (ns), or the end row's index without times.
    pub times: Vec<i64>,
    /// Table row of each window's last row.
    pub end_rows: Vec<usize>,
    /// Numeric channels of the frames.
    pub channels: usize,
    /// What became of each table row as a window end.
    pub row_status: Vec<RowStatus>,
}

/// What a table row is as the possible end of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "sample")]
pub enum RowStatus {
    /// The window ending here is this sample.
    Sample(usize),
    /// Fewer than `len` consecutive rows end here (before the first full
    /// window of a device, or after a break in its times).
    BeforeFullWindow,
    /// The window ending here has a missing value.
    Gap,
    /// No window ends here (`hop > 1`).
    NotDue,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.x.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }

    /// The samples `keep`, in that order.
    pub fn select(&self, keep: &[usize]) -> Samples {
        Samples {
            x: self.x.select_rows(keep),
            names: self.names.clone(),
            categorical: self
                .categorical
                .iter()
                .map(|c| keep.iter().map(|&i| c[i].clone()).collect())
                .collect(),
            cat_names: self.cat_names.clone(),
            codes: match self.codes.len().checked_div(self.x.nrows()) {
                Some(per) if per > 0 => keep
                    .iter()
                    .flat_map(|&i| &self.codes[i * per..(i + 1) * per])
                    .copied()
                    .collect(),
                _ => Vec::new(),
            },
            labels: self
                .labels
                .as_ref()
                .map(|l| keep.iter().map(|&i| l[i]).collect()),
            devices: keep.iter().map(|&i| self.devices[i].clone()).collect(),
            times: keep.iter().map(|&i| self.times[i]).collect(),
            end_rows: keep.iter().map(|&i| self.end_rows[i]).collect(),
            channels: self.channels,
            row_status: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------- files

/// The kind of a file, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Csv,
    Json,
    Ndjson,
    SenmlCbor,
}

impl FileKind {
    pub fn of(path: &Path) -> Result<Self, TrainError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "csv" | "tsv" | "txt" => Ok(FileKind::Csv),
            "json" | "senml" => Ok(FileKind::Json),
            "ndjson" | "jsonl" => Ok(FileKind::Ndjson),
            "cbor" => Ok(FileKind::SenmlCbor),
            _ => Err(TrainError::Parse {
                path: path.to_owned(),
                message: format!(
                    "unknown file type `.{ext}` (csv, tsv, txt, json, senml, ndjson, jsonl, cbor)"
                ),
            }),
        }
    }
}

/// Reads every file into one table. CSV files must share their header;
/// reading files (JSON, NDJSON, SenML) are pooled and assembled into frames.
/// The two kinds cannot be mixed.
pub fn load_files(paths: &[PathBuf], opts: &ColumnOptions) -> Result<Table, TrainError> {
    let Some(first) = paths.first() else {
        return Err(TrainError::Option {
            option: "--input",
            message: "no input file".into(),
        });
    };
    let is_csv = FileKind::of(first)? == FileKind::Csv;
    let mut table: Option<Table> = None;
    let mut readings = Vec::new();
    for path in paths {
        let kind = FileKind::of(path)?;
        if (kind == FileKind::Csv) != is_csv {
            return Err(TrainError::Option {
                option: "--input",
                message: "CSV files and reading files (JSON, NDJSON, SenML) cannot be mixed".into(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| TrainError::Read {
            path: path.clone(),
            source,
        })?;
        match kind {
            FileKind::Csv => {
                let offset = table.as_ref().map_or(0, Table::rows);
                let t = parse_csv(path, &bytes, opts, offset)?;
                table = Some(match table.take() {
                    None => t,
                    Some(acc) => append(acc, t)?,
                });
            }
            _ => readings.extend(decode_readings(path, &bytes, kind)?),
        }
    }
    let mut table = match table {
        Some(t) => t,
        None => {
            let period = opts.period.ok_or_else(|| TrainError::Option {
                option: "--period",
                message: "reading files (JSON, NDJSON, SenML) need a frame period".into(),
            })?;
            frames_from_readings(&readings, opts, period)?
        }
    };
    table.sort();
    if table.period_ns.is_none() {
        table.period_ns = infer_period(&table);
    }
    declare_categorical(&mut table, &opts.categorical)?;
    Ok(table)
}

/// A numeric value as a category: an integer as such (`1.0` → `"1"`, what
/// an integer code looks like), anything else in its shortest decimal
/// form; a missing value (NaN) is `""`.
pub fn code_string(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else if v.fract() == 0.0 && v.abs() <= protocol::features::MAX_CODE as f64 {
        // Exact: an integer of magnitude ≤ 2^53 converts without rounding.
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Moves the numeric columns named in `names` to the categorical ones, as
/// codes (see the module docs), in the order named; a name that already is
/// categorical stays as it is. A name that is neither is an error.
pub fn declare_categorical(table: &mut Table, names: &[String]) -> Result<(), TrainError> {
    if names.is_empty() {
        return Ok(());
    }
    table.code_columns.resize(table.cat_names.len(), false);
    for name in names {
        if table.cat_names.contains(name) {
            continue;
        }
        let Some(i) = table.numeric_names.iter().position(|n| n == name) else {
            return Err(TrainError::Option {
                option: "--categorical",
                message: format!(
                    "`{name}` is not a channel of the data (numeric: {:?}; categorical: {:?})",
                    table.numeric_names, table.cat_names
                ),
            });
        };
        table.numeric_names.remove(i);
        let values = table.numeric.remove(i);
        table.cat_names.push(name.clone());
        table
            .categorical
            .push(values.into_iter().map(code_string).collect());
        table.code_columns.push(true);
    }
    if table.numeric.is_empty() {
        return Err(TrainError::Option {
            option: "--categorical",
            message: "every channel is categorical; at least one numeric channel is needed".into(),
        });
    }
    Ok(())
}

fn append(mut a: Table, b: Table) -> Result<Table, TrainError> {
    let cols = |t: &Table| [t.numeric_names.clone(), t.cat_names.clone()].concat();
    if cols(&a) != cols(&b)
        || a.times.is_some() != b.times.is_some()
        || a.labels.is_some() != b.labels.is_some()
    {
        return Err(TrainError::ColumnMismatch {
            first: cols(&a),
            other: cols(&b),
        });
    }
    a.devices.extend(b.devices);
    if let (Some(x), Some(y)) = (a.times.as_mut(), b.times) {
        x.extend(y);
    }
    for (x, y) in a.numeric.iter_mut().zip(b.numeric) {
        x.extend(y);
    }
    for (x, y) in a.categorical.iter_mut().zip(b.categorical) {
        x.extend(y);
    }
    if let (Some(x), Some(y)) = (a.labels.as_mut(), b.labels) {
        x.extend(y);
    }
    a.source_rows.extend(b.source_rows);
    Ok(a)
}

/// `,`, `;` or tab: the most frequent outside quotes on the first line.
pub fn detect_delimiter(text: &str) -> u8 {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for b in line.bytes() {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted {
            for c in counts.iter_mut() {
                if c.0 == b {
                    c.1 += 1;
                }
            }
        }
    }
    let best = counts.iter().max_by_key(|c| c.1).map_or((b',', 0), |c| *c);
    if best.1 == 0 || counts.iter().filter(|c| c.1 == best.1).count() > 1 {
        b','
    } else {
        best.0
    }
}

fn is_missing(cell: &str) -> bool {
    matches!(
        cell.trim().to_ascii_lowercase().as_str(),
        "" | "na" | "nan" | "null" | "none"
    )
}

/// Parses a time cell (see the module docs).
pub fn parse_time(cell: &str) -> Option<i64> {
    let cell = cell.trim();
    if let Ok(v) = cell.parse::<f64>() {
        if !v.is_finite() {
            return None;
        }
        let a = v.abs();
        let ns = if a < 1e11 {
            v * 1e9
        } else if a < 1e14 {
            v * 1e6
        } else if a < 1e17 {
            v * 1e3
        } else {
            v
        };
        return (ns.abs() < 9.2e18).then(|| ns.round() as i64);
    }
    let t = humantime::parse_rfc3339_weak(cell).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

fn parse_label(cell: &str) -> Option<bool> {
    match cell.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "anomaly" => Some(true),
        "" | "0" | "0.0" | "false" | "no" | "normal" => Some(false),
        _ => None,
    }
}

/// Parses one CSV file (see the module docs). `row_offset` numbers its rows
/// after the previous files'.
pub fn parse_csv(
    path: &Path,
    bytes: &[u8],
    opts: &ColumnOptions,
    row_offset: usize,
) -> Result<Table, TrainError> {
    let parse_err = |message: String| TrainError::Parse {
        path: path.to_owned(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| parse_err(format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(detect_delimiter(text))
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| parse_err(e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let find = |name: &str| -> Result<usize, TrainError> {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| TrainError::MissingColumn {
                path: path.to_owned(),
                column: name.to_owned(),
                available: header.join(", "),
            })
    };
    let time_col = opts.time_column.as_deref().map(find).transpose()?;
    let label_col = opts.label_column.as_deref().map(find).transpose()?;
    let device_col = match &opts.device_column {
        Some(d) => Some(find(d)?),
        None => header.iter().position(|h| h == "device"),
    };
    for e in &opts.exclude {
        find(e)?;
    }
    let data_cols: Vec<usize> = (0..header.len())
        .filter(|&i| {
            Some(i) != time_col
                && Some(i) != label_col
                && Some(i) != device_col
                && !opts.exclude.contains(&header[i])
        })
        .collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); data_cols.len()];
    let mut devices = Vec::new();
    let mut times = time_col.map(|_| Vec::new());
    let mut labels = label_col.map(|_| Vec::new());
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| parse_err(format!("row {}: {e}", row + 1)))?;
        let get = |i: usize| record.get(i).unwrap_or("");
        devices.push(device_col.map_or_else(String::new, |i| get(i).to_owned()));
        if let (Some(i), Some(t)) = (time_col, times.as_mut()) {
            t.push(parse_time(get(i)).ok_or_else(|| TrainError::BadTime {
                path: path.to_owned(),
                row: row + 1,
                value: get(i).to_owned(),
            })?);
        }
        if let (Some(i), Some(l)) = (label_col, labels.as_mut()) {
            l.push(parse_label(get(i)).ok_or_else(|| TrainError::BadLabel {
                path: path.to_owned(),
                row: row + 1,
                value: get(i).to_owned(),
            })?);
        }
        for (k, &i) in data_cols.iter().enumerate() {
            cells[k].push(get(i).to_owned());
        }
    }
    let rows = devices.len();
    let mut table = Table {
        devices,
        times,
        labels,
        source_rows: (row_offset..row_offset + rows).collect(),
        ..Table::default()
    };
    for (k, &i) in data_cols.iter().enumerate() {
        let col = &cells[k];
        let parsed: Option<Vec<f64>> = col
            .iter()
            .map(|c| {
                if is_missing(c) {
                    Some(f64::NAN)
                } else {
                    c.parse::<f64>().ok().filter(|v| v.is_finite())
                }
            })
            .collect();
        match parsed {
            Some(values) => {
                table.numeric_names.push(header[i].clone());
                table.numeric.push(values);
            }
            None => {
                table.cat_names.push(header[i].clone());
                table.categorical.push(col.clone());
            }
        }
    }
    if table.numeric.is_empty() {
        return Err(TrainError::NoChannels);
    }
    Ok(table)
}

/// Decodes a reading file with the protocol decoders. Files are read with
/// the decoders' default limits per document, except the size and record
/// limits, raised to the document's own size.
pub fn decode_readings(
    path: &Path,
    bytes: &[u8],
    kind: FileKind,
) -> Result<Vec<Reading>, TrainError> {
    let ctx = DecodeContext::new(Timestamp::now());
    let limits = |len: usize| DecodeLimits {
        max_bytes: len.max(1),
        max_records: len.max(1),
        ..DecodeLimits::default()
    };
    let decode = |doc: &[u8], format: PayloadFormat| {
        format
            .decode(doc, &ctx, &limits(doc.len()))
            .map_err(|source| TrainError::Decode {
                path: path.to_owned(),
                source,
            })
    };
    match kind {
        FileKind::Json => decode(bytes, PayloadFormat::Auto),
        FileKind::SenmlCbor => decode(bytes, PayloadFormat::SenmlCbor),
        FileKind::Ndjson => {
            let mut out = Vec::new();
            for line in bytes.split(|b| *b == b'\n') {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                out.extend(decode(line, PayloadFormat::Auto)?);
            }
            Ok(out)
        }
        FileKind::Csv => Err(TrainError::Parse {
            path: path.to_owned(),
            message: "CSV is read as a table, not as readings".into(),
        }),
    }
}

/// Assembles readings into frames (see the module docs). Channels are every
/// channel seen minus `opts.exclude`; `opts.label_column`, when set, names a
/// channel whose value (non-zero = anomaly) labels the frame.
/// The channels in `opts.categorical` become code columns (last reading of
/// the frame, like every channel).
pub fn frames_from_readings(
    readings: &[Reading],
    opts: &ColumnOptions,
    period: Duration,
) -> Result<Table, TrainError> {
    let period_ns = i64::try_from(period.as_nanos())
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| TrainError::Option {
            option: "--period",
            message: format!("{period:?} is zero or too long"),
        })?;
    let hold_ns = i64::try_from(opts.hold.unwrap_or(period).as_nanos()).unwrap_or(i64::MAX);
    let mut channels = BTreeSet::new();
    for r in readings {
        if !opts.exclude.contains(&r.channel)
            && opts.label_column.as_deref() != Some(r.channel.as_str())
        {
            channels.insert(r.channel.clone());
        }
    }
    let channels: Vec<String> = channels.into_iter().collect();
    if channels.is_empty() {
        return Err(TrainError::NoChannels);
    }
    let label_idx = channels.len();
    let index: HashMap<&str, usize> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .chain(opts.label_column.as_deref().map(|l| (l, label_idx)))
        .collect();
    // device → readings sorted by time.
    let mut by_device: std::collections::BTreeMap<&str, Vec<(i64, usize, f64)>> =
        Default::default();
    for r in readings {
        if let Some(&c) = index.get(r.channel.as_str()) {
            by_device
                .entry(&r.device)
                .or_default()
                .push((r.ts.0, c, r.value));
        }
    }
    let width = channels.len() + usize::from(opts.label_column.is_some());
    let mut table = Table {
        times: Some(Vec::new()),
        period_ns: Some(period_ns),
        numeric_names: channels.clone(),
        numeric: vec![Vec::new(); channels.len()],
        labels: opts.label_column.as_ref().map(|_| Vec::new()),
        ..Table::default()
    };
    let mut frame_no = 0;
    for (device, mut rs) in by_device {
        rs.sort_by_key(|r| r.0);
        let (Some(first), Some(last)) = (rs.first(), rs.last()) else {
            continue;
        };
        let start = -(-first.0).div_euclid(period_ns);
        let end = -(-last.0).div_euclid(period_ns);
        let mut held: Vec<Option<(i64, f64)>> = vec![None; width];
        let mut next = 0;
        let mut k = start;
        while k <= end {
            let t = k.saturating_mul(period_ns);
            while next < rs.len() && rs[next].0 <= t {
                let (ts, c, v) = rs[next];
                held[c] = Some((ts, v));
                next += 1;
            }
            let value = |c: usize| match held[c] {
                Some((ts, v)) if t - ts <= hold_ns => Some(v),
                _ => None,
            };
            if (0..channels.len()).any(|c| value(c).is_some()) {
                table.devices.push(device.to_owned());
                if let Some(times) = table.times.as_mut() {
                    times.push(t);
                }
                for (c, col) in table.numeric.iter_mut().enumerate() {
                    col.push(value(c).unwrap_or(f64::NAN));
                }
                if let Some(l) = table.labels.as_mut() {
                    l.push(value(label_idx).is_some_and(|v| v != 0.0));
                }
                table.source_rows.push(frame_no);
                frame_no += 1;
                k += 1;
            } else {
                // Every held value expired: jump to the next reading's frame.
                k = match rs.get(next) {
                    Some(r) => (-(-r.0).div_euclid(period_ns)).max(k + 1),
                    None => end + 1,
                };
            }
        }
    }
    declare_categorical(&mut table, &opts.categorical)?;
    Ok(table)
}

/// The sink's readings of `device` (all devices when `None`) in
/// `[from_ns, to_ns)`, assembled into frames; at most `max_readings`
/// readings (more is an error rather than a silent cut).
pub fn load_storage(
    storage: &dyn Storage,
    device: Option<&str>,
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    max_readings: u32,
    opts: &ColumnOptions,
) -> Result<Table, TrainError> {
    let period = opts.period.ok_or_else(|| TrainError::Option {
        option: "period",
        message: "stored readings need a frame period".into(),
    })?;
    let limit = max_readings.saturating_add(1);
    let stored = storage.query_readings(&ReadingQuery {
        device: device.map(str::to_owned),
        channel: None,
        from_ns,
        to_ns,
        limit,
    })?;
    if stored.len() > max_readings as usize {
        return Err(TrainError::Option {
            option: "max_readings",
            message: format!("the range holds more than {max_readings} readings; narrow it"),
        });
    }
    let readings: Vec<Reading> = stored
        .into_iter()
        .filter_map(|s| Reading::new(s.device, s.channel, Timestamp(s.ts_ns), s.value).ok())
        .collect();
    let mut table = frames_from_readings(&readings, opts, period)?;
    table.sort();
    Ok(table)
}

/// The most common positive time step within devices.
fn infer_period(table: &Table) -> Option<i64> {
    let times = table.times.as_ref()?;
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for i in 1..times.len() {
        if table.devices[i] == table.devices[i - 1] {
            let d = times[i] - times[i - 1];
            if d > 0 {
                *counts.entry(d).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(d, c)| (*c, -*d))
        .map(|(d, _)| d)
}

// ---------------------------------------------------------------- windows

// `i` indexes two parallel columns (devices and values).
#[allow(clippy::needless_range_loop)]
fn forward_fill(table: &mut Table, max_rows: usize) -> usize {
    let mut filled = 0;
    let n = table.rows();
    for col in table.numeric.iter_mut() {
        let mut last: Option<(usize, f64)> = None;
        for i in 0..n {
            if i > 0 && table.devices[i] != table.devices[i - 1] {
                last = None;
            }
            if col[i].is_nan() {
                if let Some((at, v)) = last
                    && i - at <= max_rows
                {
                    col[i] = v;
                    filled += 1;
                }
            } else {
                last = Some((i, col[i]));
            }
        }
    }
    // Code columns are numbers on the gateway: filled like them.
    for (k, col) in table.categorical.iter_mut().enumerate() {
        if !table.code_columns.get(k).copied().unwrap_or(false) {
            continue;
        }
        let mut last: Option<(usize, String)> = None;
        for i in 0..n {
            if i > 0 && table.devices[i] != table.devices[i - 1] {
                last = None;
            }
            if col[i].is_empty() {
                if let Some((at, v)) = &last
                    && i - at <= max_rows
                {
                    col[i] = v.clone();
                    filled += 1;
                }
            } else {
                last = Some((i, col[i].clone()));
            }
        }
    }
    filled
}

/// Cuts windows and computes their feature rows (see the module docs).
pub fn build_samples(
    table: &Table,
    opts: &WindowOptions,
) -> Result<(Samples, SampleStats), TrainError> {
    if opts.len == 0 || opts.hop == 0 {
        return Err(TrainError::Option {
            option: "window",
            message: format!(
                "length {} and hop {} must be at least 1",
                opts.len, opts.hop
            ),
        });
    }
    let mut table = table.clone();
    let mut stats = SampleStats {
        rows: table.rows(),
        missing_policy: opts.missing.to_string(),
        ..SampleStats::default()
    };
    if let MissingPolicy::ForwardFill(n) = opts.missing {
        stats.filled_cells = forward_fill(&mut table, n);
    }
    let c = table.numeric.len();
    if c == 0 {
        return Err(TrainError::NoChannels);
    }
    let mut extractor = match (&opts.features, opts.len) {
        (None, 1) => None,
        (Some(spec), len) if len >= 2 => {
            if spec.channels != table.numeric_names {
                return Err(TrainError::Option {
                    option: "features",
                    message: format!(
                        "the feature spec's channels {:?} are not the data's {:?}",
                        spec.channels, table.numeric_names
                    ),
                });
            }
            Some(FeatureExtractor::new(spec, len)?)
        }
        _ => {
            return Err(TrainError::Option {
                option: "window",
                message: "a window of 1 row takes no feature spec; longer windows need one".into(),
            });
        }
    };
    let names: Vec<String> = match &extractor {
        Some(e) => e.names().to_vec(),
        None => table.numeric_names.clone(),
    };
    let dt = table.period_ns.map_or(1.0, |p| p as f64 * 1e-9);
    let width = names.len();
    let mut data: Vec<f64> = Vec::new();
    let codes: Vec<usize> = (0..table.categorical.len())
        .filter(|&k| table.is_code_column(k))
        .collect();
    // Codes for the export check: only when every categorical column is
    // codes (text is not exportable) and there are features.
    let keep_codes =
        !codes.is_empty() && codes.len() == table.categorical.len() && extractor.is_some();
    let mut out = Samples {
        x: DMatrix::zeros(0, width),
        names,
        categorical: vec![Vec::new(); table.categorical.len()],
        cat_names: table.cat_names.clone(),
        codes: Vec::new(),
        labels: table.labels.as_ref().map(|_| Vec::new()),
        devices: Vec::new(),
        times: Vec::new(),
        end_rows: Vec::new(),
        channels: c,
        row_status: Vec::with_capacity(table.rows()),
    };
    let mut window = vec![0.0; opts.len * c];
    let mut feat = vec![0.0; width];
    let mut run = 0usize; // consecutive rows ending here
    let mut seq = 0i64; // row count since the device's first row (no times)
    // The device's running baseline, replayed in time order as the gateway
    // keeps it (`protocol::features::baseline`); rows come grouped by device.
    let mut baseline = BaselineState::new();
    for i in 0..table.rows() {
        let same_device = i > 0 && table.devices[i] == table.devices[i - 1];
        if !same_device {
            baseline = BaselineState::new();
        }
        let consecutive = same_device
            && match (&table.times, table.period_ns) {
                (Some(t), Some(p)) => t[i] - t[i - 1] == p,
                (Some(t), None) => t[i] > t[i - 1],
                (None, _) => true,
            };
        if consecutive {
            run += 1;
            seq += 1;
        } else {
            if same_device {
                stats.restarts += 1;
            }
            run = 1;
            if !same_device {
                seq = 0;
            }
        }
        let k = match (&table.times, table.period_ns) {
            (Some(t), Some(p)) if t[i].rem_euclid(p) == 0 => t[i].div_euclid(p),
            _ => seq,
        };
        if run < opts.len {
            out.row_status.push(RowStatus::BeforeFullWindow);
            continue;
        }
        if (k + 1).rem_euclid(opts.hop as i64) != 0 {
            out.row_status.push(RowStatus::NotDue);
            continue;
        }
        let first = i + 1 - opts.len;
        let mut gap = false;
        for r in 0..opts.len {
            for (j, col) in table.numeric.iter().enumerate() {
                let v = col[first + r];
                gap |= !v.is_finite();
                window[r * c + j] = v;
            }
            // A missing code is a gap on the gateway (its frame cell is NaN).
            for &k in &codes {
                gap |= table.categorical[k][first + r].is_empty();
            }
        }
        if gap {
            stats.dropped_with_gaps += 1;
            out.row_status.push(RowStatus::Gap);
            continue;
        }
        out.row_status.push(RowStatus::Sample(out.devices.len()));
        if keep_codes {
            out.codes.extend(table.categorical.iter().map(|col| {
                // Codes written by `code_string`: they parse back exactly.
                col[i].parse::<f64>().unwrap_or(f64::NAN)
            }));
        }
        match extractor.as_mut() {
            Some(e) => {
                let w = Window::try_new(&window, c, dt)?;
                // Without a time column the rows are 1 s apart (as `dt`).
                let end = table
                    .times
                    .as_ref()
                    .map_or(seq.saturating_mul(1_000_000_000), |t| t[i]);
                e.extract_tracked(&w, Timestamp(end), &mut baseline, &mut feat)?;
                data.extend_from_slice(&feat);
            }
            None => data.extend_from_slice(&window[..c]),
        }
        for (dst, src) in out.categorical.iter_mut().zip(&table.categorical) {
            dst.push(src[i].clone());
        }
        if let (Some(dst), Some(src)) = (out.labels.as_mut(), table.labels.as_ref()) {
            dst.push(src[first..=i].iter().any(|&l| l));
        }
        out.devices.push(table.devices[i].clone());
        out.times
            .push(table.times.as_ref().map_or(i as i64, |t| t[i]));
        out.end_rows.push(i);
    }
    let n = out.devices.len();
    out.x = DMatrix::from_row_slice(n, width, &data);
    stats.windows = n;
    Ok((out, stats))
}
