//! Reading a dropped file in bounded chunks from a byte offset.
//!
//! Every format is read as a stream: CSV and NDJSON line by line, a JSON
//! array (plain objects or a SenML pack) element by element with a scanner
//! that tracks strings and nesting. No row is ever held beyond
//! `max_row_bytes`, and no more than one chunk of rows is in memory.
//!
//! [`Cursor`] is everything needed to continue after a chunk: the byte offset
//! and line number of the next row, the CSV header, the JSON array position,
//! the SenML base fields in force, and the counts and first errors for the
//! report. It is stored as the chunk's checkpoint, so after a crash the file
//! continues exactly after the last durable chunk.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use protocol::senml::{self, SenmlRecord};
use protocol::{
    DecodeContext, DecodeError, DecodeLimits, PayloadFormat, Quality, Reading, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::config::{CsvConfig, CsvLayout, TimeUnit};
use super::detect::{FileFormat, is_senml_object};

/// A chunk also closes after this many input bytes.
const CHUNK_MAX_BYTES: u64 = 1024 * 1024;
/// Bytes of a bad row kept for its quarantine entry.
const BAD_ROW_PAYLOAD: usize = 4096;
/// Longest error detail kept in a cursor (and report).
const DETAIL_CHARS: usize = 200;

/// What makes a file the same file: a new file under an old name has a
/// different size, mtime or inode, so an old cursor is not applied to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            size: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// A row that could not be turned into readings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRow {
    /// 1-based line where the row starts.
    pub line: u64,
    /// Stable reason code (`DecodeError::reason_code`).
    pub reason: String,
    pub detail: String,
}

/// Position in a JSON array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JsonPos {
    #[default]
    BeforeOpen,
    InArray,
    Closed,
}

/// SenML base fields in force (RFC 8428 §4.1), carried across chunks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SenmlBase {
    pub bn: Option<String>,
    pub bt: Option<f64>,
    pub bu: Option<String>,
    pub bv: Option<f64>,
}

impl SenmlBase {
    /// Takes the record's base fields into force, then fills the record's
    /// missing ones from it, so the record resolves alone as it would in
    /// its pack.
    fn apply(&mut self, r: &mut SenmlRecord) {
        if r.bn.is_some() {
            self.bn.clone_from(&r.bn);
        }
        if r.bt.is_some() {
            self.bt = r.bt;
        }
        if r.bu.is_some() {
            self.bu.clone_from(&r.bu);
        }
        if r.bv.is_some() {
            self.bv = r.bv;
        }
        r.bn.clone_from(&self.bn);
        r.bt = self.bt;
        r.bu.clone_from(&self.bu);
        r.bv = self.bv;
    }
}

/// Where reading a file stands; stored as its checkpoint after every chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub identity: FileIdentity,
    pub format: FileFormat,
    /// Byte offset of the next unread row.
    pub offset: u64,
    /// 1-based line number at `offset`.
    pub line: u64,
    /// Rows read (good and bad).
    pub rows: u64,
    /// Readings produced (and, once this cursor is durable, stored).
    pub readings: u64,
    pub bad_rows: u64,
    /// The first `max_report_errors` bad rows.
    pub errors: Vec<BadRow>,
    /// Why reading stopped before the end, if it did (the file fails).
    pub fatal: Option<BadRow>,
    /// Nothing is left to read.
    pub eof: bool,
    /// CSV: the header fields, once read.
    pub csv_header: Option<Vec<String>>,
    pub json: JsonPos,
    pub senml: SenmlBase,
}

impl Cursor {
    pub fn new(identity: FileIdentity, format: FileFormat) -> Self {
        Cursor {
            identity,
            format,
            offset: 0,
            line: 1,
            rows: 0,
            readings: 0,
            bad_rows: 0,
            errors: Vec::new(),
            fatal: None,
            eof: false,
            csv_header: None,
            json: JsonPos::default(),
            senml: SenmlBase::default(),
        }
    }

    /// The checkpoint value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored checkpoint value; `None` if it does not parse (then the file
    /// starts over, which the identity check makes rare: only a format change
    /// of this struct across an upgrade).
    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        serde_json::from_slice(bytes).ok()
    }

    /// A cursor that ends the file with `why` before any row.
    pub fn failed(
        identity: FileIdentity,
        format: FileFormat,
        reason: &str,
        detail: String,
    ) -> Self {
        let mut c = Cursor::new(identity, format);
        c.fatal = Some(BadRow {
            line: 0,
            reason: reason.into(),
            detail,
        });
        c.eof = true;
        c
    }
}

/// Settings of the reader (from `[[files]]`).
#[derive(Clone, Debug)]
pub struct ReadSettings {
    pub chunk_rows: usize,
    pub max_row_bytes: usize,
    pub max_report_errors: usize,
    pub device: Option<String>,
    pub csv: CsvConfig,
}

/// A bad row of one chunk, for its quarantine entry.
#[derive(Debug)]
pub struct BadRowPayload {
    pub line: u64,
    pub error: DecodeError,
    /// The first bytes of the row.
    pub payload: Vec<u8>,
    pub payload_len: usize,
    /// Within the first `max_report_errors` of the file (those are quarantined).
    pub listed: bool,
}

/// One chunk: its readings, its bad rows, and the cursor after it.
#[derive(Debug)]
pub struct Chunk {
    pub readings: Vec<Reading>,
    pub bad: Vec<BadRowPayload>,
    pub cursor: Cursor,
}

/// Reads the chunk that starts at `cursor` (blocking).
///
/// I/O errors are returned (the file is tried again later); everything about
/// the content ends up in the chunk: bad rows, or `cursor.fatal` when the
/// rest of the file cannot be read (then `cursor.eof`).
pub fn read_chunk(path: &Path, cursor: &Cursor, s: &ReadSettings) -> io::Result<Chunk> {
    let mut next = cursor.clone();
    let mut chunk = Chunk {
        readings: Vec::new(),
        bad: Vec::new(),
        cursor: next.clone(),
    };
    if cursor.eof {
        return Ok(chunk);
    }
    let mut file = File::open(path)?;
    let now = FileIdentity::of(&file.metadata()?);
    if now != cursor.identity {
        next.fatal = Some(BadRow {
            line: cursor.line,
            reason: "file_changed".into(),
            detail: "the file changed while it was being read (size, mtime or inode); \
                     writers must rename complete files into the directory"
                .into(),
        });
        next.eof = true;
        chunk.cursor = next;
        return Ok(chunk);
    }
    file.seek(SeekFrom::Start(cursor.offset))?;
    let mut reader = Scanner {
        inner: BufReader::with_capacity(64 * 1024, file),
        offset: cursor.offset,
        line: cursor.line,
        max: s.max_row_bytes,
    };
    // Relative SenML times and missing timestamps resolve against the file's
    // mtime, not the wall clock: a chunk read again after a crash gives the
    // same readings (same identities).
    let ctx_now = Timestamp(cursor.identity.mtime_ns);
    let ctx = DecodeContext::new(ctx_now).with_device(s.device.as_deref());
    let limits = DecodeLimits {
        max_bytes: s.max_row_bytes,
        max_records: 10_000,
        max_depth: 8,
    };
    let start_offset = cursor.offset;
    let mut rows = 0usize;
    // Built once per chunk from the stored header.
    let mut csv_map: Option<CsvMap> = None;
    let max_readings = s.chunk_rows.saturating_mul(16);
    while rows < s.chunk_rows
        && reader.offset - start_offset < CHUNK_MAX_BYTES
        && chunk.readings.len() < max_readings
    {
        let item = match next.format {
            FileFormat::Csv { .. } | FileFormat::Ndjson => reader.next_line()?,
            FileFormat::Json | FileFormat::Senml => reader.next_element(&mut next.json)?,
        };
        let row = match item {
            Item::End => {
                next.eof = true;
                break;
            }
            Item::Fatal { line, detail } => {
                next.fatal = Some(BadRow {
                    line,
                    reason: "syntax".into(),
                    detail: truncate(&detail),
                });
                next.eof = true;
                break;
            }
            Item::Row(row) => row,
        };
        if row.too_long.is_none() && row.bytes.iter().all(u8::is_ascii_whitespace) {
            // Blank lines are not rows.
            continue;
        }
        if matches!(next.format, FileFormat::Csv { .. }) && next.csv_header.is_none() {
            match csv_header(&row, next.format) {
                Ok(h) => {
                    next.csv_header = Some(h);
                    // Mapping problems end the file before any row.
                    if let Err(detail) = CsvMap::new(next.csv_header.as_deref().unwrap_or(&[]), s) {
                        next.fatal = Some(BadRow {
                            line: row.line,
                            reason: "schema".into(),
                            detail,
                        });
                        next.eof = true;
                        break;
                    }
                }
                Err(detail) => {
                    next.fatal = Some(BadRow {
                        line: row.line,
                        reason: "syntax".into(),
                        detail,
                    });
                    next.eof = true;
                    break;
                }
            }
            continue;
        }
        rows += 1;
        next.rows += 1;
        let result = match row.too_long {
            Some(size) => Err(DecodeError::TooLarge {
                size,
                limit: s.max_row_bytes,
            }),
            None => {
                if matches!(next.format, FileFormat::Csv { .. }) && csv_map.is_none() {
                    let header = next.csv_header.as_deref().unwrap_or(&[]);
                    csv_map = CsvMap::new(header, s).ok();
                }
                decode_row(&row.bytes, &mut next, csv_map.as_ref(), s, &ctx, &limits)
            }
        };
        match result {
            Ok(mut readings) => {
                next.readings += readings.len() as u64;
                chunk.readings.append(&mut readings);
            }
            Err(error) => {
                next.bad_rows += 1;
                let listed = next.errors.len() < s.max_report_errors;
                if listed {
                    next.errors.push(BadRow {
                        line: row.line,
                        reason: error.reason_code().into(),
                        detail: truncate(&error.to_string()),
                    });
                }
                let payload_len = row.too_long.unwrap_or(row.bytes.len());
                let mut payload = row.bytes;
                payload.truncate(BAD_ROW_PAYLOAD);
                chunk.bad.push(BadRowPayload {
                    line: row.line,
                    error,
                    payload,
                    payload_len,
                    listed,
                });
            }
        }
    }
    next.offset = reader.offset;
    next.line = reader.line;
    chunk.cursor = next;
    Ok(chunk)
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(DETAIL_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn decode_row(
    bytes: &[u8],
    cursor: &mut Cursor,
    csv_map: Option<&CsvMap>,
    s: &ReadSettings,
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    match cursor.format {
        FileFormat::Csv { delimiter } => {
            let map = csv_map.ok_or_else(|| DecodeError::Schema("no usable CSV header".into()))?;
            map.row(bytes, delimiter, s, ctx)
        }
        FileFormat::Ndjson => {
            let text = bytes.trim_ascii();
            match text.first() {
                Some(b'{') => {
                    let value: serde_json::Value =
                        serde_json::from_slice(text).map_err(|e| DecodeError::Syntax {
                            format: "JSON",
                            detail: e.to_string(),
                        })?;
                    match value.as_object() {
                        Some(obj) if is_senml_object(obj) => {
                            senml_record(text, &mut cursor.senml, ctx)
                        }
                        _ => protocol::plain::decode(text, ctx, limits),
                    }
                }
                Some(b'[') => PayloadFormat::Auto.decode(text, ctx, limits),
                _ => Err(DecodeError::Syntax {
                    format: "NDJSON",
                    detail: "a line is neither a JSON object nor an array".into(),
                }),
            }
        }
        FileFormat::Json => {
            if bytes.first() != Some(&b'{') {
                return Err(DecodeError::Schema(
                    "an array element is not an object".into(),
                ));
            }
            protocol::plain::decode(bytes, ctx, limits)
        }
        FileFormat::Senml => senml_record(bytes, &mut cursor.senml, ctx),
    }
}

fn senml_record(
    bytes: &[u8],
    base: &mut SenmlBase,
    ctx: &DecodeContext<'_>,
) -> Result<Vec<Reading>, DecodeError> {
    let mut record: SenmlRecord =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Syntax {
            format: "SenML JSON",
            detail: e.to_string(),
        })?;
    base.apply(&mut record);
    senml::resolve(&[record], ctx)
}

fn csv_fields(bytes: &[u8], delimiter: u8) -> Result<Vec<String>, DecodeError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .buffer_capacity(bytes.len().clamp(64, 64 * 1024))
        .from_reader(bytes);
    let mut record = csv::StringRecord::new();
    let syntax = |detail: String| DecodeError::Syntax {
        format: "CSV",
        detail,
    };
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Err(syntax("an empty row".into())),
        Err(e) => return Err(syntax(e.to_string())),
    }
    // A quoted field may not run past the end of its line.
    let mut rest = csv::StringRecord::new();
    if matches!(reader.read_record(&mut rest), Ok(true)) {
        return Err(syntax("a quoted field spans lines (not supported)".into()));
    }
    Ok(record.iter().map(|f| f.trim().to_owned()).collect())
}

fn csv_header(row: &Row, format: FileFormat) -> Result<Vec<String>, String> {
    let FileFormat::Csv { delimiter } = format else {
        return Err("not CSV".into());
    };
    if row.too_long.is_some() {
        return Err("the header line is longer than max_row_bytes".into());
    }
    let bytes = row
        .bytes
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(&row.bytes);
    let fields = csv_fields(bytes, delimiter).map_err(|e| format!("header: {e}"))?;
    if fields.iter().any(String::is_empty) {
        return Err("the header has an empty column name".into());
    }
    Ok(fields)
}

/// How a CSV header maps to readings.
#[derive(Debug)]
struct CsvMap {
    columns: usize,
    device: Option<usize>,
    time: usize,
    layout: Layout,
}

#[derive(Debug)]
enum Layout {
    Long {
        channel: usize,
        value: usize,
        unit: Option<usize>,
    },
    Wide {
        /// Column index and channel name (the header field).
        channels: Vec<(usize, String)>,
    },
}

impl CsvMap {
    fn new(header: &[String], s: &ReadSettings) -> Result<CsvMap, String> {
        let find = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let c = &s.csv;
        let time = c.time_columns.iter().find_map(|n| find(n)).ok_or_else(|| {
            format!(
                "no time column (looked for {}); the reading identity needs a time",
                c.time_columns.join(", ")
            )
        })?;
        let device = find(&c.device_column);
        if device.is_none() && s.device.is_none() {
            return Err(format!(
                "no {:?} column and no device configured for the source",
                c.device_column
            ));
        }
        let channel = find(&c.channel_column);
        let value = find(&c.value_column);
        let unit = find(&c.unit_column);
        let long = match c.layout {
            CsvLayout::Long => true,
            CsvLayout::Wide => false,
            CsvLayout::Auto => channel.is_some() && value.is_some(),
        };
        let layout = if long {
            match (channel, value) {
                (Some(channel), Some(value)) => Layout::Long {
                    channel,
                    value,
                    unit,
                },
                _ => {
                    return Err(format!(
                        "long layout needs the {:?} and {:?} columns",
                        c.channel_column, c.value_column
                    ));
                }
            }
        } else {
            let channels: Vec<(usize, String)> = header
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != time && Some(i) != device && Some(i) != unit)
                .map(|(i, h)| (i, h.clone()))
                .collect();
            if channels.is_empty() {
                return Err("wide layout: no channel columns besides time and device".into());
            }
            Layout::Wide { channels }
        };
        Ok(CsvMap {
            columns: header.len(),
            device,
            time,
            layout,
        })
    }

    fn row(
        &self,
        bytes: &[u8],
        delimiter: u8,
        s: &ReadSettings,
        ctx: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, DecodeError> {
        let fields = csv_fields(bytes, delimiter)?;
        if fields.len() != self.columns {
            return Err(DecodeError::Syntax {
                format: "CSV",
                detail: format!("{} fields, the header has {}", fields.len(), self.columns),
            });
        }
        let device = match self.device.map(|i| fields[i].as_str()) {
            Some(d) if !d.is_empty() => d,
            _ => ctx
                .default_device
                .ok_or(DecodeError::MissingName { index: 0 })?,
        };
        let ts = parse_time(&fields[self.time], s.csv.time_unit)
            .ok_or(DecodeError::BadTime { index: 0 })?;
        let reading = |channel: &str, value: &str, unit: Option<&str>, index: usize| {
            let value: f64 = value.parse().map_err(|_| DecodeError::UnsupportedValue {
                index,
                kind: "non-numeric text",
            })?;
            let r = Reading {
                device: device.to_owned(),
                channel: channel.to_owned(),
                ts,
                value,
                unit: unit.filter(|u| !u.is_empty()).map(str::to_owned),
                seq: None,
                quality: Quality::empty(),
            };
            r.validate()
                .map_err(|source| DecodeError::Invalid { index, source })?;
            Ok::<_, DecodeError>(r)
        };
        match &self.layout {
            Layout::Long {
                channel,
                value,
                unit,
            } => {
                if fields[*value].is_empty() {
                    return Err(DecodeError::MissingValue { index: 0 });
                }
                Ok(vec![reading(
                    &fields[*channel],
                    &fields[*value],
                    unit.map(|u| fields[u].as_str()),
                    0,
                )?])
            }
            Layout::Wide { channels } => {
                let mut out = Vec::with_capacity(channels.len());
                for (index, (i, name)) in channels.iter().enumerate() {
                    if fields[*i].is_empty() {
                        continue;
                    }
                    out.push(reading(name, &fields[*i], None, index)?);
                }
                Ok(out)
            }
        }
    }
}

/// Decimal seconds (or milliseconds) since the epoch, exact to the
/// nanosecond, or RFC 3339.
pub fn parse_time(s: &str, unit: TimeUnit) -> Option<Timestamp> {
    let frac_digits: u32 = match unit {
        TimeUnit::S => 9,
        TimeUnit::Ms => 6,
    };
    if let Some(ts) = parse_decimal(s, frac_digits) {
        return Some(ts);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok().map(Timestamp)
}

/// `-?digits[.digits]` scaled so that `frac_digits` fractional digits make a
/// nanosecond count.
fn parse_decimal(s: &str, frac_digits: u32) -> Option<Timestamp> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 15
        || !digits(whole)
        || frac.len() > frac_digits as usize
        || !digits(frac)
        || unsigned.ends_with('.')
    {
        return None;
    }
    let scale = 10i128.pow(frac_digits);
    let whole: i128 = whole.parse().ok()?;
    let frac_part: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>().ok()? * 10i128.pow(frac_digits - u32::try_from(frac.len()).ok()?)
    };
    // Seconds with 9 digits or milliseconds with 6: either way nanoseconds.
    let nanos = whole * scale + frac_part;
    i64::try_from(if negative { -nanos } else { nanos })
        .ok()
        .map(Timestamp)
}

/// One row's bytes (without its line end) and where it starts.
#[derive(Debug)]
struct Row {
    bytes: Vec<u8>,
    line: u64,
    /// Set (to the row's full length) when it exceeded `max_row_bytes`; then
    /// `bytes` holds only its first part.
    too_long: Option<usize>,
}

enum Item {
    Row(Row),
    End,
    /// The rest of the file cannot be split into rows.
    Fatal {
        line: u64,
        detail: String,
    },
}

/// A buffered reader that knows its byte offset and line number.
struct Scanner {
    inner: BufReader<File>,
    offset: u64,
    line: u64,
    max: usize,
}

impl Scanner {
    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(self.inner.fill_buf()?.first().copied())
    }

    fn bump(&mut self, b: u8) {
        self.inner.consume(1);
        self.offset += 1;
        if b == b'\n' {
            self.line += 1;
        }
    }

    /// The next line (without `\n` / `\r\n`), bounded by `max`.
    fn next_line(&mut self) -> io::Result<Item> {
        let line = self.line;
        let mut bytes = Vec::new();
        let mut len = 0usize;
        let mut any = false;
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                if !any {
                    return Ok(Item::End);
                }
                break;
            }
            any = true;
            let (take, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let content = if found {
                &buf[..take - 1]
            } else {
                &buf[..take]
            };
            len += content.len();
            let room = (self.max + 1).saturating_sub(bytes.len());
            bytes.extend_from_slice(&content[..content.len().min(room)]);
            self.inner.consume(take);
            self.offset += take as u64;
            if found {
                self.line += 1;
                break;
            }
        }
        if bytes.last() == Some(&b'\r') && len <= self.max + 1 {
            bytes.pop();
            len -= 1;
        }
        let too_long = (len > self.max).then_some(len);
        if too_long.is_some() {
            bytes.truncate(self.max);
        }
        Ok(Item::Row(Row {
            bytes,
            line,
            too_long,
        }))
    }

    fn skip_ws(&mut self) -> io::Result<Option<u8>> {
        while let Some(b) = self.peek()? {
            if b.is_ascii_whitespace() {
                self.bump(b);
            } else {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// The next element of a top-level JSON array.
    fn next_element(&mut self, pos: &mut JsonPos) -> io::Result<Item> {
        loop {
            match *pos {
                JsonPos::BeforeOpen => {
                    if self.offset == 0 && self.inner.fill_buf()?.starts_with(b"\xef\xbb\xbf") {
                        self.inner.consume(3);
                        self.offset += 3;
                    }
                    match self.skip_ws()? {
                        Some(b'[') => {
                            self.bump(b'[');
                            *pos = JsonPos::InArray;
                        }
                        _ => {
                            return Ok(Item::Fatal {
                                line: self.line,
                                detail: "expected a JSON array ('[')".into(),
                            });
                        }
                    }
                }
                JsonPos::InArray => match self.skip_ws()? {
                    None => {
                        return Ok(Item::Fatal {
                            line: self.line,
                            detail: "the file ends inside the array (no closing ']')".into(),
                        });
                    }
                    Some(b']') => {
                        self.bump(b']');
                        *pos = JsonPos::Closed;
                    }
                    Some(b',') => {
                        return Ok(Item::Fatal {
                            line: self.line,
                            detail: "an empty array element (',,')".into(),
                        });
                    }
                    Some(_) => return self.element(pos),
                },
                JsonPos::Closed => {
                    return Ok(match self.skip_ws()? {
                        None => Item::End,
                        Some(_) => Item::Fatal {
                            line: self.line,
                            detail: "data after the closing ']'".into(),
                        },
                    });
                }
            }
        }
    }

    /// One element up to (and consuming) its `,` or the array's `]`.
    fn element(&mut self, pos: &mut JsonPos) -> io::Result<Item> {
        let line = self.line;
        let mut bytes = Vec::new();
        let mut len = 0usize;
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        loop {
            let Some(b) = self.peek()? else {
                return Ok(Item::Fatal {
                    line,
                    detail: "the file ends inside an array element".into(),
                });
            };
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' | b']' if depth == 0 => {
                        self.bump(b);
                        if b == b']' {
                            *pos = JsonPos::Closed;
                        }
                        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                            bytes.pop();
                        }
                        let too_long = (len > self.max).then_some(len);
                        return Ok(Item::Row(Row {
                            bytes,
                            line,
                            too_long,
                        }));
                    }
                    b'}' => {
                        return Ok(Item::Fatal {
                            line: self.line,
                            detail: "unbalanced '}'".into(),
                        });
                    }
                    _ => {}
                }
            }
            len += 1;
            if bytes.len() < self.max {
                bytes.push(b);
            }
            self.bump(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::files::config::CsvConfig;
    use crate::sources::files::detect::detect;

    fn settings(chunk_rows: usize) -> ReadSettings {
        ReadSettings {
            chunk_rows,
            max_row_bytes: 256,
            max_report_errors: 2,
            device: Some("dflt".into()),
            csv: CsvConfig::default(),
        }
    }

    fn file(text: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, Cursor) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, text).unwrap();
        let id = FileIdentity::of(&std::fs::metadata(&path).unwrap());
        let format = detect(text, true, Default::default(), None).unwrap();
        (dir, path, Cursor::new(id, format))
    }

    /// Reads the whole file in chunks of `rows`, round-tripping the cursor
    /// through its checkpoint encoding between chunks (as a restart would).
    fn read_all(path: &Path, mut c: Cursor, s: &ReadSettings) -> (Vec<Reading>, Vec<u64>, Cursor) {
        let (mut readings, mut bad_lines) = (Vec::new(), Vec::new());
        let mut guard = 0;
        while !c.eof {
            let chunk = read_chunk(path, &c, s).unwrap();
            readings.extend(chunk.readings);
            bad_lines.extend(chunk.bad.iter().map(|b| b.line));
            c = Cursor::decode(&chunk.cursor.encode()).unwrap();
            guard += 1;
            assert!(guard < 10_000, "no progress");
        }
        (readings, bad_lines, c)
    }

    fn ids(readings: &[Reading]) -> Vec<(String, String, i64, f64)> {
        readings
            .iter()
            .map(|r| (r.device.clone(), r.channel.clone(), r.ts.0, r.value))
            .collect()
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn a_long_csv_resumes_from_every_chunk_boundary_with_the_same_result() {
        let mut text = String::from("device,channel,timestamp,value,unit\r\n");
        for i in 0..23 {
            text.push_str(&format!("p{},t,{}.5,{i},Cel\r\n", i % 3, 1_767_225_600 + i));
        }
        let (_d, path, c) = file(text.as_bytes());
        let (whole, bad, end) = read_all(&path, c.clone(), &settings(1000));
        assert!(bad.is_empty());
        assert_eq!(whole.len(), 23);
        assert_eq!(whole[1].device, "p1");
        assert_eq!(whole[1].ts.0, (1_767_225_601) * S + S / 2);
        assert_eq!(whole[1].unit.as_deref(), Some("Cel"));
        assert_eq!(
            (end.rows, end.readings, end.offset),
            (23, 23, text.len() as u64)
        );
        assert_eq!(end.line, 25);
        for rows in [1, 2, 5, 7] {
            let (chunked, _, _) = read_all(&path, c.clone(), &settings(rows));
            assert_eq!(ids(&chunked), ids(&whole), "chunks of {rows}");
        }
    }

    #[test]
    fn a_wide_csv_gives_one_reading_per_filled_cell_and_a_semicolon_works() {
        let text = "time;temperature;humidity;pressure\n\
                    2026-01-01T00:00:00Z;21.5;40;\n\
                    1767225601;21.6;;1013\n";
        let (_d, path, c) = file(text.as_bytes());
        assert_eq!(c.format, FileFormat::Csv { delimiter: b';' });
        let (r, bad, _) = read_all(&path, c, &settings(1));
        assert!(bad.is_empty());
        assert_eq!(
            ids(&r),
            vec![
                ("dflt".into(), "temperature".into(), 1_767_225_600 * S, 21.5),
                ("dflt".into(), "humidity".into(), 1_767_225_600 * S, 40.0),
                ("dflt".into(), "temperature".into(), 1_767_225_601 * S, 21.6),
                ("dflt".into(), "pressure".into(), 1_767_225_601 * S, 1013.0),
            ]
        );
    }

    #[test]
    fn bad_csv_rows_are_reported_by_line_and_the_good_ones_kept() {
        let long = "x".repeat(300);
        let text = format!(
            "device,channel,ts,value\n\
             p,t,1767225600,1\n\
             p,t,1767225601\n\
             \n\
             p,t,yesterday,3\n\
             p,t,1767225603,hot\n\
             p,t,1767225604,\"4\"\n\
             p,t,1767225605,{long}\n\
             p,t,1767225606,nan\n\
             p,t,1767225607,7\n"
        );
        let (_d, path, c) = file(text.as_bytes());
        let (r, bad, end) = read_all(&path, c, &settings(3));
        assert_eq!(
            r.iter().map(|r| r.value).collect::<Vec<_>>(),
            vec![1.0, 4.0, 7.0],
            "a quoted number is fine"
        );
        assert_eq!(bad, vec![3, 5, 6, 8, 9]);
        assert_eq!(end.bad_rows, 5);
        assert_eq!(end.rows, 8, "the blank line is not a row");
        // Only the first max_report_errors are listed.
        assert_eq!(
            end.errors
                .iter()
                .map(|e| (e.line, e.reason.as_str()))
                .collect::<Vec<_>>(),
            vec![(3, "syntax"), (5, "bad_time")]
        );
        assert!(end.fatal.is_none());
    }

    #[test]
    fn a_csv_without_a_time_column_fails_as_a_whole() {
        let (_d, path, c) = file(b"device,channel,value\np,t,1\n");
        let (r, _, end) = read_all(&path, c, &settings(10));
        assert!(r.is_empty());
        let fatal = end.fatal.unwrap();
        assert_eq!((fatal.line, fatal.reason.as_str()), (1, "schema"));
        assert!(fatal.detail.contains("time"), "{}", fatal.detail);
    }

    #[test]
    fn a_json_array_resumes_between_elements_and_reports_bad_ones() {
        let text = "[\n  {\"device\":\"p\",\"ts\":1767225600,\"a\":1,\"b\":2},\n  \
                    {\"device\":\"p\",\"ts\":1767225601,\"a\":\"x\"},\n  \
                    {\"device\":\"p],{\\\"x\",\"ts\":1767225602,\"a\":3},\n  \
                    7,\n  {\"device\":\"p\",\"ts\":1767225603,\"a\":4}\n]\n";
        let (_d, path, c) = file(text.as_bytes());
        assert_eq!(c.format, FileFormat::Json);
        let (whole, bad, end) = read_all(&path, c.clone(), &settings(100));
        let why = read_chunk(&path, &c, &settings(100)).unwrap().bad;
        assert_eq!(bad, vec![3, 5], "{why:?}");
        assert_eq!(whole.len(), 4);
        assert_eq!((end.rows, end.bad_rows), (5, 2));
        assert!(end.fatal.is_none(), "{:?}", end.fatal);
        let (chunked, bad1, _) = read_all(&path, c, &settings(1));
        assert_eq!(ids(&chunked), ids(&whole));
        assert_eq!(bad1, bad);
    }

    #[test]
    fn a_broken_json_array_keeps_the_rows_before_the_break() {
        let text = "[{\"device\":\"p\",\"ts\":1767225600,\"a\":1},\n{\"device\":\"p\",\"ts\":1";
        let (_d, path, c) = file(text.as_bytes());
        let (r, _, end) = read_all(&path, c, &settings(1));
        assert_eq!(r.len(), 1);
        let fatal = end.fatal.unwrap();
        assert_eq!(fatal.line, 2);
        assert!(fatal.detail.contains("ends inside"), "{}", fatal.detail);
    }

    #[test]
    fn a_senml_pack_carries_base_fields_across_chunks() {
        let text = "[{\"bn\":\"pump-1/\",\"bt\":1767225600,\"bu\":\"Cel\",\"n\":\"t\",\"v\":1},\n\
                    {\"n\":\"t\",\"t\":1,\"v\":2},\n\
                    {\"n\":\"t\",\"t\":2,\"vs\":\"text\"},\n\
                    {\"bn\":\"pump-2/\",\"n\":\"p\",\"t\":3,\"v\":4,\"u\":\"Pa\"}]";
        let (_d, path, c) = file(text.as_bytes());
        assert_eq!(c.format, FileFormat::Senml);
        let (whole, bad, _) = read_all(&path, c.clone(), &settings(100));
        assert_eq!(bad, vec![3]);
        assert_eq!(
            ids(&whole),
            vec![
                ("pump-1".into(), "t".into(), 1_767_225_600 * S, 1.0),
                ("pump-1".into(), "t".into(), 1_767_225_601 * S, 2.0),
                ("pump-2".into(), "p".into(), 1_767_225_603 * S, 4.0),
            ]
        );
        assert_eq!(whole[1].unit.as_deref(), Some("Cel"));
        assert_eq!(whole[2].unit.as_deref(), Some("Pa"));
        let (chunked, _, _) = read_all(&path, c, &settings(1));
        assert_eq!(ids(&chunked), ids(&whole));
    }

    #[test]
    fn ndjson_mixes_plain_objects_and_senml_records_line_by_line() {
        let text = "{\"device\":\"p\",\"ts\":1767225600,\"a\":1}\n\
                    {\"bn\":\"q/\",\"bt\":1767225600,\"n\":\"b\",\"v\":2}\n\
                    {\"n\":\"c\",\"v\":3}\n\
                    not json\n\
                    {\"device\":\"p\",\"a\":5}";
        let (_d, path, c) = file(text.as_bytes());
        assert_eq!(c.format, FileFormat::Ndjson);
        let (r, bad, end) = read_all(&path, c.clone(), &settings(2));
        assert_eq!(bad, vec![4]);
        assert_eq!(r.len(), 4);
        assert_eq!((r[2].device.as_str(), r[2].channel.as_str()), ("q", "c"));
        // No timestamp: the file's mtime, flagged, and the same on a re-read.
        assert_eq!(r[3].ts.0, c.identity.mtime_ns);
        assert!(r[3].quality.contains(Quality::TIME_FROM_RECEIVE));
        assert_eq!(end.offset, text.len() as u64);
    }

    #[test]
    fn a_changed_file_stops_with_a_reason_instead_of_reading_on() {
        let (_d, path, c) = file(b"device,channel,ts,value\np,t,1767225600,1\n");
        let chunk = read_chunk(&path, &c, &settings(1)).unwrap();
        std::fs::write(
            &path,
            b"device,channel,ts,value\np,t,1767225600,1\np,t,1767225601,2\n",
        )
        .unwrap();
        let after = read_chunk(&path, &chunk.cursor, &settings(1)).unwrap();
        assert!(after.readings.is_empty());
        assert_eq!(after.cursor.fatal.unwrap().reason, "file_changed");
        assert!(after.cursor.eof);
    }

    #[test]
    fn times_parse_exactly_in_seconds_milliseconds_and_rfc3339() {
        assert_eq!(
            parse_time("1767225600.123456789", TimeUnit::S),
            Some(Timestamp(1_767_225_600_123_456_789))
        );
        assert_eq!(
            parse_time("1767225600123.5", TimeUnit::Ms),
            Some(Timestamp(1_767_225_600_123_500_000))
        );
        assert_eq!(
            parse_time("2026-01-01T00:00:01.5+01:00", TimeUnit::S),
            Some(Timestamp(1_767_222_001_500_000_000))
        );
        for bad in ["", "1.", ".5", "1e9", "12:00", "1.1234567891"] {
            assert_eq!(parse_time(bad, TimeUnit::S), None, "{bad:?}");
        }
    }
}
