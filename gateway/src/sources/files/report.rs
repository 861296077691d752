//! The per-file report written beside a finished file: `<name>.report.json`.

use serde::Serialize;

use super::reader::{BadRow, Cursor};

/// Where a finished file went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every row became readings, all durable.
    Done,
    /// Some rows were bad (the good ones are stored), or the file could not
    /// be read at all (too large, binary, unknown format, broken structure).
    Failed,
}

impl Outcome {
    pub fn of(cursor: &Cursor) -> Outcome {
        if cursor.bad_rows == 0 && cursor.fatal.is_none() {
            Outcome::Done
        } else {
            Outcome::Failed
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        }
    }
}

/// The report's JSON document.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub source: &'a str,
    /// The file's name in the watched directory.
    pub file: &'a str,
    /// Its name in `done/` or `failed/` (a suffix is added on a clash).
    pub stored_as: &'a str,
    pub outcome: Outcome,
    /// Detected format (`csv`, `json`, `ndjson`, `senml`), if one was.
    pub format: Option<&'static str>,
    pub size_bytes: u64,
    /// Rows read, good and bad (CSV header and blank lines not counted).
    pub rows: u64,
    /// Readings stored (a wide CSV row gives several).
    pub readings: u64,
    pub bad_rows: u64,
    /// The first bad rows, by line.
    pub errors: &'a [BadRow],
    /// Bad rows not listed in `errors`.
    pub errors_not_listed: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub fatal: Option<&'a BadRow>,
    /// When the report was written (RFC 3339, UTC).
    pub finished: String,
}

impl<'a> Report<'a> {
    pub fn new(
        source: &'a str,
        file: &'a str,
        stored_as: &'a str,
        cursor: &'a Cursor,
        detected: bool,
    ) -> Self {
        Report {
            source,
            file,
            stored_as,
            outcome: Outcome::of(cursor),
            format: detected.then(|| cursor.format.name()),
            size_bytes: cursor.identity.size,
            rows: cursor.rows,
            readings: cursor.readings,
            bad_rows: cursor.bad_rows,
            errors: &cursor.errors,
            errors_not_listed: cursor.bad_rows.saturating_sub(cursor.errors.len() as u64),
            fatal: cursor.fatal.as_ref(),
            finished: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::files::detect::FileFormat;
    use crate::sources::files::reader::FileIdentity;

    fn cursor() -> Cursor {
        Cursor::new(
            FileIdentity {
                size: 120,
                mtime_ns: 1,
                inode: 2,
            },
            FileFormat::Csv { delimiter: b',' },
        )
    }

    #[test]
    fn a_clean_file_is_done_and_its_report_has_the_counts() {
        let mut c = cursor();
        c.rows = 10;
        c.readings = 30;
        c.eof = true;
        let r = Report::new("drop", "a.csv", "a.csv", &c, true);
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["outcome"], "done");
        assert_eq!(v["format"], "csv");
        assert_eq!(v["rows"], 10);
        assert_eq!(v["readings"], 30);
        assert_eq!(v["bad_rows"], 0);
        assert_eq!(v["errors"], serde_json::json!([]));
        assert_eq!(v["fatal"], serde_json::Value::Null);
        assert_eq!(v["size_bytes"], 120);
    }

    #[test]
    fn bad_rows_are_listed_by_line_up_to_the_bound_and_the_rest_counted() {
        let mut c = cursor();
        c.rows = 100;
        c.bad_rows = 7;
        c.errors = (0..3)
            .map(|i| BadRow {
                line: 10 + i,
                reason: "bad_time".into(),
                detail: format!("row {i}"),
            })
            .collect();
        let r = Report::new("drop", "b.csv", "b.csv.1", &c, true);
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["stored_as"], "b.csv.1");
        assert_eq!(v["errors"][2]["line"], 12);
        assert_eq!(v["errors"][2]["reason"], "bad_time");
        assert_eq!(v["errors_not_listed"], 4);
    }

    #[test]
    fn an_unreadable_file_fails_with_its_reason_and_no_format() {
        let c = Cursor::failed(
            cursor().identity,
            FileFormat::Json,
            "too_large",
            "2 GiB is over max_file_bytes".into(),
        );
        let r = Report::new("drop", "big.json", "big.json", &c, false);
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["format"], serde_json::Value::Null);
        assert_eq!(v["fatal"]["reason"], "too_large");
    }
}
