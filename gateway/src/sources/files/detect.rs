//! Format detection from a file's first bytes (its content, not its name).

use serde::{Deserialize, Serialize};

use super::config::FileFormatSetting;

/// How many bytes detection looks at.
pub const HEAD_BYTES: usize = 64 * 1024;

/// A detected (or configured) file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// CSV with a header line; the delimiter is `,`, `;` or a tab.
    Csv { delimiter: u8 },
    /// A JSON array of plain objects (`protocol::plain`).
    Json,
    /// One JSON object (plain or a SenML record) or array per line.
    Ndjson,
    /// A SenML JSON pack: one array of SenML records.
    Senml,
}

impl FileFormat {
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Csv { .. } => "csv",
            FileFormat::Json => "json",
            FileFormat::Ndjson => "ndjson",
            FileFormat::Senml => "senml",
        }
    }
}

/// Why a file's format could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is binary (NUL bytes or invalid UTF-8 at byte {at})")]
    Binary { at: usize },
    #[error("unknown format: {0}")]
    Unknown(String),
}

impl DetectError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            DetectError::Empty => "empty",
            DetectError::Binary { .. } => "binary",
            DetectError::Unknown(_) => "unknown_format",
        }
    }
}

/// SenML labels; a JSON object whose keys are all SenML labels, one of them a
/// name or value label, is a SenML record.
const SENML_LABELS: [&str; 17] = [
    "bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "l",
    "ct",
];

/// Whether an object's keys make it a SenML record rather than a plain object.
pub fn is_senml_object(obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    !obj.is_empty()
        && obj.keys().all(|k| SENML_LABELS.contains(&k.as_str()))
        && ["n", "bn", "v", "bv"].iter().any(|k| obj.contains_key(*k))
}

/// Detects the format from `head` (the first [`HEAD_BYTES`] of the file, or
/// all of it), honouring a configured format other than `auto` as long as
/// the content is text. `complete` says whether `head` is the whole file.
pub fn detect(
    head: &[u8],
    complete: bool,
    setting: FileFormatSetting,
    delimiter: Option<u8>,
) -> Result<FileFormat, DetectError> {
    let body = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    if let Some(at) = body.iter().position(|&b| b == 0) {
        return Err(DetectError::Binary { at });
    }
    if let Err(e) = std::str::from_utf8(body) {
        // A multi-byte character cut by the end of the head is fine.
        if complete || e.error_len().is_some() {
            return Err(DetectError::Binary {
                at: e.valid_up_to(),
            });
        }
    }
    let text = body.trim_ascii_start();
    let Some(&first) = text.first() else {
        return Err(DetectError::Empty);
    };
    let first_line = text.split(|&b| b == b'\n').next().unwrap_or(text);
    match setting {
        FileFormatSetting::Csv => return csv_format(first_line, delimiter),
        FileFormatSetting::Json => return Ok(FileFormat::Json),
        FileFormatSetting::Ndjson => return Ok(FileFormat::Ndjson),
        FileFormatSetting::Senml => return Ok(FileFormat::Senml),
        FileFormatSetting::Auto => {}
    }
    match first {
        b'[' => Ok(array_kind(text)),
        b'{' => {
            // NDJSON: the first line alone is a complete JSON value.
            let line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
            if serde_json::from_slice::<serde_json::Value>(line).is_ok() {
                Ok(FileFormat::Ndjson)
            } else {
                Err(DetectError::Unknown(
                    "a JSON object that spans several lines; use one object per line \
                     (NDJSON) or an array of objects"
                        .into(),
                ))
            }
        }
        _ => csv_format(first_line, delimiter),
    }
}

/// SenML when the first element of the array is a SenML record, else plain JSON.
fn array_kind(text: &[u8]) -> FileFormat {
    let mut de = serde_json::Deserializer::from_slice(&text[1..]);
    // Parse just the first element (an object); the rest may be cut off.
    let first: Result<serde_json::Map<String, serde_json::Value>, _> =
        serde::Deserialize::deserialize(&mut de);
    match first {
        Ok(obj) if is_senml_object(&obj) => FileFormat::Senml,
        Ok(_) => FileFormat::Json,
        // Not parseable in the head: fall back on the labels seen.
        Err(_) => {
            let head = &text[..text.len().min(512)];
            let senml = [&b"\"bn\""[..], b"\"n\"", b"\"bt\"", b"\"bver\""]
                .iter()
                .any(|l| head.windows(l.len()).any(|w| w == *l));
            if senml {
                FileFormat::Senml
            } else {
                FileFormat::Json
            }
        }
    }
}

/// CSV: the delimiter is the configured one, or the one of `,` `;` tab that
/// occurs most in the header line. The header must name at least two columns
/// and must not look like data (all numbers).
fn csv_format(first_line: &[u8], delimiter: Option<u8>) -> Result<FileFormat, DetectError> {
    let line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    let count = |d: u8| line.iter().filter(|&&b| b == d).count();
    let delimiter = match delimiter {
        Some(d) => d,
        None => {
            let best = [b',', b';', b'\t']
                .into_iter()
                .max_by_key(|&d| count(d))
                .unwrap_or(b',');
            if count(best) == 0 {
                return Err(DetectError::Unknown(
                    "not JSON, and the first line has no `,`, `;` or tab for a CSV header".into(),
                ));
            }
            best
        }
    };
    let text = String::from_utf8_lossy(line);
    let fields: Vec<&str> = text.split(char::from(delimiter)).map(str::trim).collect();
    if fields.len() < 2 {
        return Err(DetectError::Unknown(
            "a CSV header needs at least two columns".into(),
        ));
    }
    if fields
        .iter()
        .all(|f| f.is_empty() || f.parse::<f64>().is_ok())
    {
        return Err(DetectError::Unknown(
            "the first line looks like data, not a CSV header".into(),
        ));
    }
    Ok(FileFormat::Csv { delimiter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(text: &[u8]) -> Result<FileFormat, DetectError> {
        detect(text, true, FileFormatSetting::Auto, None)
    }

    #[test]
    fn each_format_is_told_from_its_content() {
        assert_eq!(
            auto(b"device,channel,timestamp,value\np,t,1,2\n"),
            Ok(FileFormat::Csv { delimiter: b',' })
        );
        assert_eq!(
            auto(b"\xef\xbb\xbftime;temp;hum\n1;2;3\n"),
            Ok(FileFormat::Csv { delimiter: b';' })
        );
        assert_eq!(
            auto(b"time\ttemp,C\thum\n"),
            Ok(FileFormat::Csv { delimiter: b'\t' })
        );
        assert_eq!(
            auto(b"  [{\"device\":\"p\",\"ts\":1,\"t\":2}]"),
            Ok(FileFormat::Json)
        );
        assert_eq!(
            auto(b"[{\"bn\":\"p/\",\"n\":\"t\",\"v\":1},{\"n\":\"u\",\"v\":2}]"),
            Ok(FileFormat::Senml)
        );
        assert_eq!(
            auto(b"{\"device\":\"p\",\"ts\":1,\"t\":2}\n{\"device\":\"p\",\"ts\":2,\"t\":3}\n"),
            Ok(FileFormat::Ndjson)
        );
    }

    #[test]
    fn a_senml_pack_cut_off_by_the_head_is_still_senml() {
        let mut text = b"[{\"bn\":\"p/\",\"bt\":1767225600,\"n\":\"temperature\",\"v\":1".to_vec();
        text.truncate(30);
        assert_eq!(
            detect(&text, false, FileFormatSetting::Auto, None),
            Ok(FileFormat::Senml)
        );
    }

    #[test]
    fn a_plain_object_with_a_v_channel_is_not_senml() {
        assert_eq!(
            auto(b"[{\"device\":\"p\",\"v\":1,\"ts\":3}]"),
            Ok(FileFormat::Json)
        );
    }

    #[test]
    fn empty_binary_and_ambiguous_input_is_refused_with_a_reason() {
        assert_eq!(auto(b""), Err(DetectError::Empty));
        assert_eq!(auto(b" \n\t\r\n"), Err(DetectError::Empty));
        assert_eq!(auto(b"\xef\xbb\xbf"), Err(DetectError::Empty));
        assert_eq!(auto(b"a,b\x00c"), Err(DetectError::Binary { at: 3 }));
        assert_eq!(auto(b"a,b\n\xff\xfe"), Err(DetectError::Binary { at: 4 }));
        assert!(matches!(
            auto(b"just some words\n"),
            Err(DetectError::Unknown(_))
        ));
        assert!(
            matches!(auto(b"1,2,3\n4,5,6\n"), Err(DetectError::Unknown(m)) if m.contains("data"))
        );
        assert!(matches!(
            auto(b"{\n  \"device\": \"p\"\n}\n"),
            Err(DetectError::Unknown(_))
        ));
    }

    #[test]
    fn a_multibyte_character_cut_by_the_head_is_not_binary() {
        let text = "time,température\n".as_bytes();
        let cut = &text[..10]; // inside "é"
        assert!(std::str::from_utf8(cut).is_err());
        assert_eq!(
            detect(cut, false, FileFormatSetting::Auto, None),
            Ok(FileFormat::Csv { delimiter: b',' })
        );
    }

    #[test]
    fn a_configured_format_wins_over_detection_but_not_over_binary() {
        assert_eq!(
            detect(b"{\"a\":1}", true, FileFormatSetting::Json, None),
            Ok(FileFormat::Json)
        );
        assert_eq!(
            detect(b"a|b\n", true, FileFormatSetting::Csv, Some(b'|')),
            Ok(FileFormat::Csv { delimiter: b'|' })
        );
        assert!(detect(b"\x00", true, FileFormatSetting::Csv, None).is_err());
    }
}
