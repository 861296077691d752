//! `[[files]]`: one watched drop directory per entry.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::config::ConfigProblem;

/// Most rows one chunk (one envelope, one checkpoint) may hold.
pub const MAX_CHUNK_ROWS: usize = 10_000;
/// Largest `max_row_bytes`: a row is held in memory whole.
pub const MAX_ROW_BYTES: u64 = 16 * 1024 * 1024;

/// One file-drop source.
///
/// **Contract for writers:** write the file elsewhere on the same filesystem
/// (or in `directory` under a name starting with `.` or ending in `.tmp`,
/// `.part` or `.partial`), then `rename` it to its final name in `directory`.
/// As a second guard a file is picked up only once its size and mtime have
/// not changed for `settle_time` (and its mtime is at least that old), so a
/// writer that appends slowly in place is not read half-written — but a
/// pause longer than `settle_time` would still be taken for the end.
///
/// Each file is read in chunks of `chunk_rows` rows. A chunk is one envelope
/// whose checkpoint `file:<source>/<file name>` (file identity, byte offset
/// after the chunk, line number, counts and the first errors) is stored in the
/// same atomic outbox write as the chunk's readings, so a crash resumes
/// exactly after the last durable chunk. When the whole file is durable it is
/// moved to `done_directory` (or `failed_directory` if any row was bad or the
/// file could not be read at all) with `<name>.report.json` beside it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Unique name of this source: checkpoint keys are `file:<name>/<file>`
    /// and quarantine origins `file:<name>/<file>:<line>`.
    pub name: String,
    /// The watched drop directory (`incoming/`); created if missing.
    pub directory: PathBuf,
    /// Where fully ingested files go; default `done` next to `directory`.
    /// Must be on the same filesystem as `directory` (files are renamed).
    #[serde(default)]
    pub done_directory: Option<PathBuf>,
    /// Where files with bad rows, or unreadable ones, go; default `failed`
    /// next to `directory`. Same filesystem as `directory`.
    #[serde(default)]
    pub failed_directory: Option<PathBuf>,
    /// How often the directory is listed.
    #[serde(default = "default_scan_interval", with = "humantime_serde")]
    pub scan_interval: Duration,
    /// How long size and mtime must stay unchanged before a file is read.
    #[serde(default = "default_settle_time", with = "humantime_serde")]
    pub settle_time: Duration,
    /// Files larger than this are refused into `failed_directory` with a report.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: ByteSize,
    /// A row (CSV record, NDJSON line, JSON array element) longer than this
    /// is a bad row; the reader never buffers more of it.
    #[serde(default = "default_max_row_bytes")]
    pub max_row_bytes: ByteSize,
    /// Rows per chunk (one envelope and one checkpoint each), 1..=10000.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Bad rows listed by line in a report (and quarantined); the total is
    /// always counted.
    #[serde(default = "default_max_report_errors")]
    pub max_report_errors: usize,
    /// `auto` (detect from the content), `csv`, `json` (array of objects),
    /// `ndjson` or `senml` (a SenML JSON pack).
    #[serde(default)]
    pub format: FileFormatSetting,
    /// Device of readings whose row names none (CSV without a device column,
    /// JSON objects without `device`, SenML names without `/`).
    #[serde(default)]
    pub device: Option<String>,
    /// How CSV columns map to readings.
    #[serde(default)]
    pub csv: CsvConfig,
}

/// The configured format of a file source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormatSetting {
    #[default]
    Auto,
    Csv,
    Json,
    Ndjson,
    Senml,
}

/// CSV column mapping. The first line is always a header. Column names are
/// matched case-insensitively.
///
/// - **Long** form: one reading per row, from `device_column` (or
///   `[[files]].device`), `channel_column`, `value_column`, `time_column`.
/// - **Wide** form: every column other than the time, device and unit
///   columns is a channel; one reading per non-empty cell.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// `,`, `;` or a tab; detected from the header line when not set.
    #[serde(default)]
    pub delimiter: Option<char>,
    /// `auto` (long when the header has both the channel and the value
    /// column, else wide), `long` or `wide`.
    #[serde(default)]
    pub layout: CsvLayout,
    /// Device column; when the header lacks it, `[[files]].device` is used.
    #[serde(default = "default_device_column")]
    pub device_column: String,
    /// Channel column (long form).
    #[serde(default = "default_channel_column")]
    pub channel_column: String,
    /// Value column (long form).
    #[serde(default = "default_value_column")]
    pub value_column: String,
    /// Time column, one of these names (the first present wins). Values are
    /// decimal seconds since the epoch (`time_unit`) or RFC 3339.
    #[serde(default = "default_time_columns")]
    pub time_columns: Vec<String>,
    /// Unit column (long form, optional).
    #[serde(default = "default_unit_column")]
    pub unit_column: String,
    /// Unit of numeric times: `s` (default) or `ms`.
    #[serde(default)]
    pub time_unit: TimeUnit,
}

impl Default for CsvConfig {
    fn default() -> Self {
        CsvConfig {
            delimiter: None,
            layout: CsvLayout::default(),
            device_column: default_device_column(),
            channel_column: default_channel_column(),
            value_column: default_value_column(),
            time_columns: default_time_columns(),
            unit_column: default_unit_column(),
            time_unit: TimeUnit::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CsvLayout {
    #[default]
    Auto,
    Long,
    Wide,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    #[default]
    S,
    Ms,
}

fn default_scan_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_settle_time() -> Duration {
    Duration::from_secs(2)
}
fn default_max_file_bytes() -> ByteSize {
    ByteSize::gib(1)
}
fn default_max_row_bytes() -> ByteSize {
    ByteSize::kib(64)
}
fn default_chunk_rows() -> usize {
    500
}
fn default_max_report_errors() -> usize {
    100
}
fn default_device_column() -> String {
    "device".into()
}
fn default_channel_column() -> String {
    "channel".into()
}
fn default_value_column() -> String {
    "value".into()
}
fn default_time_columns() -> Vec<String> {
    ["timestamp", "time", "ts"].map(String::from).to_vec()
}
fn default_unit_column() -> String {
    "unit".into()
}

impl FileSourceConfig {
    /// `done_directory`, defaulted.
    pub fn done_dir(&self) -> PathBuf {
        self.done_directory
            .clone()
            .unwrap_or_else(|| sibling(&self.directory, "done"))
    }

    /// `failed_directory`, defaulted.
    pub fn failed_dir(&self) -> PathBuf {
        self.failed_directory
            .clone()
            .unwrap_or_else(|| sibling(&self.directory, "failed"))
    }

    /// Reports every problem of this entry under `key` (e.g. `files[0]`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            });
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bad(
                "name",
                "must be non-empty ASCII letters, digits, '-', '_' or '.'".into(),
            );
        }
        if self.directory.as_os_str().is_empty() {
            bad("directory", "is empty".into());
        }
        let (done, failed) = (self.done_dir(), self.failed_dir());
        if done == self.directory {
            bad("done_directory", "is the watched directory".into());
        }
        if failed == self.directory {
            bad("failed_directory", "is the watched directory".into());
        }
        if done == failed {
            bad("failed_directory", "is the same as done_directory".into());
        }
        if self.scan_interval < Duration::from_millis(10) {
            bad("scan_interval", "must be at least 10ms".into());
        }
        if self.max_file_bytes.as_u64() == 0 {
            bad("max_file_bytes", "must be at least 1 byte".into());
        }
        if !(64..=MAX_ROW_BYTES).contains(&self.max_row_bytes.as_u64()) {
            bad(
                "max_row_bytes",
                format!("must be between 64 B and {}", ByteSize::b(MAX_ROW_BYTES)),
            );
        }
        if !(1..=MAX_CHUNK_ROWS).contains(&self.chunk_rows) {
            bad(
                "chunk_rows",
                format!("must be between 1 and {MAX_CHUNK_ROWS}"),
            );
        }
        if self.max_report_errors > 10_000 {
            bad("max_report_errors", "must be at most 10000".into());
        }
        if let Some(d) = &self.device
            && d.trim().is_empty()
        {
            bad("device", "is empty".into());
        }
        if let Some(d) = self.csv.delimiter
            && !matches!(d, ',' | ';' | '\t')
        {
            bad("csv.delimiter", format!("{d:?} is not ',', ';' or a tab"));
        }
        for (field, v) in [
            ("csv.device_column", &self.csv.device_column),
            ("csv.channel_column", &self.csv.channel_column),
            ("csv.value_column", &self.csv.value_column),
            ("csv.unit_column", &self.csv.unit_column),
        ] {
            if v.trim().is_empty() {
                bad(field, "is empty".into());
            }
        }
        if self.csv.time_columns.is_empty() || self.csv.time_columns.iter().any(|c| c.is_empty()) {
            bad(
                "csv.time_columns",
                "needs at least one non-empty name".into(),
            );
        }
    }
}

/// Validates every `[[files]]` entry, and that names and directories are unique.
pub fn validate_all(sources: &[FileSourceConfig], problems: &mut Vec<ConfigProblem>) {
    let mut names = HashSet::new();
    let mut dirs = HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        let key = format!("files[{i}]");
        s.validate(&key, problems);
        if !names.insert(s.name.as_str()) {
            problems.push(ConfigProblem {
                key: format!("{key}.name"),
                message: format!("{:?} is used by another [[files]] entry", s.name),
            });
        }
        if !dirs.insert(s.directory.clone()) {
            problems.push(ConfigProblem {
                key: format!("{key}.directory"),
                message: "is watched by another [[files]] entry".into(),
            });
        }
    }
}

fn sibling(dir: &Path, name: &str) -> PathBuf {
    match dir.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> FileSourceConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_put_done_and_failed_next_to_the_directory() {
        let c = parse("name = \"drop\"\ndirectory = \"/var/lib/outpost/incoming\"");
        assert_eq!(c.done_dir(), PathBuf::from("/var/lib/outpost/done"));
        assert_eq!(c.failed_dir(), PathBuf::from("/var/lib/outpost/failed"));
        assert_eq!(c.chunk_rows, 500);
        let mut p = Vec::new();
        c.validate("files[0]", &mut p);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let c = parse(
            r#"name = "a b"
directory = "/x/in"
done_directory = "/x/in"
chunk_rows = 0
max_row_bytes = "1 B"
[csv]
delimiter = "|"
time_columns = []
"#,
        );
        let mut p = Vec::new();
        validate_all(&[c.clone(), c], &mut p);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "files[0].name",
            "files[0].done_directory",
            "files[0].chunk_rows",
            "files[0].max_row_bytes",
            "files[0].csv.delimiter",
            "files[0].csv.time_columns",
            "files[1].name",
            "files[1].directory",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(
            toml::from_str::<FileSourceConfig>("name = \"a\"\ndirectory = \"/x\"\ncolour = 1")
                .is_err()
        );
    }
}
