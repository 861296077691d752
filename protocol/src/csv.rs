//! A small, strict CSV form for readings, one per line:
//!
//! ```text
//! device,channel,value,timestamp
//! pump-1,temperature,41.2,1767225600.5
//! pump-1,current,3.1,2026-01-01T00:00:00.5Z
//! ,flow,0.012
//! ```
//!
//! - An optional header line names the columns: exactly `device,channel,value`
//!   or `device,channel,value,timestamp` (case-insensitive).
//! - Every row has the same number of fields as the header, or as the first
//!   row when there is no header: 3 or 4. A ragged row is an error.
//! - Fields are trimmed of ASCII spaces and tabs. Quotes are not supported, so
//!   names cannot contain `,` or `"`; a quote anywhere is an error.
//! - An empty `device` takes the context's default device (e.g. `?device=` of
//!   the HTTP source).
//! - `value` is a decimal number (`nan` and `inf` parse, then fail validation
//!   as non-finite values).
//! - `timestamp` is decimal seconds since the epoch with at most 9 fractional
//!   digits (parsed exactly, without floating point) or RFC 3339. Empty or
//!   absent: the receive time, flagged [`Quality::TIME_FROM_RECEIVE`].
//! - Lines end in `\n` or `\r\n`; empty lines are skipped; a leading UTF-8 BOM
//!   is ignored.
//!
//! Unit, sequence number and quality flags are not carried.

use crate::limits::{DecodeError, DecodeLimits};
use crate::payload::DecodeContext;
use crate::reading::{Quality, Reading, Timestamp};

const FORMAT: &str = "CSV";
const HEADER: [&str; 4] = ["device", "channel", "value", "timestamp"];

/// Decodes a CSV payload into validated readings, or a typed error. Never panics.
pub fn decode(
    bytes: &[u8],
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    limits.check_size(bytes)?;
    let text = std::str::from_utf8(bytes).map_err(|e| syntax(format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut columns: Option<usize> = None;
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if line.contains('"') {
            return Err(syntax(format!(
                "line {line_no}: quoted fields are not supported"
            )));
        }
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim_matches([' ', '\t']))
            .collect();
        let first = columns.is_none();
        let expected = *columns.get_or_insert(fields.len());
        if !(3..=4).contains(&expected) {
            return Err(syntax(format!(
                "line {line_no}: {} fields; expected device,channel,value[,timestamp]",
                fields.len()
            )));
        }
        if fields.len() != expected {
            return Err(syntax(format!(
                "line {line_no}: {} fields, expected {expected} like the first line",
                fields.len()
            )));
        }
        if first && is_header(&fields) {
            continue;
        }
        let index = out.len();
        if index == limits.max_records {
            return Err(DecodeError::TooManyRecords {
                limit: limits.max_records,
            });
        }
        out.push(row(&fields, index, ctx)?);
    }
    if out.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(out)
}

fn syntax(detail: String) -> DecodeError {
    DecodeError::Syntax {
        format: FORMAT,
        detail,
    }
}

fn is_header(fields: &[&str]) -> bool {
    fields
        .iter()
        .zip(HEADER)
        .all(|(f, h)| f.eq_ignore_ascii_case(h))
}

fn row(fields: &[&str], index: usize, ctx: &DecodeContext<'_>) -> Result<Reading, DecodeError> {
    let (device, channel, value) = (fields[0], fields[1], fields[2]);
    let device = if device.is_empty() {
        ctx.default_device
            .ok_or(DecodeError::MissingName { index })?
    } else {
        device
    };
    if value.is_empty() {
        return Err(DecodeError::MissingValue { index });
    }
    let value: f64 = value.parse().map_err(|_| DecodeError::UnsupportedValue {
        index,
        kind: "non-numeric text",
    })?;
    let (ts, quality) = match fields.get(3).copied().unwrap_or("") {
        "" => (ctx.now, Quality::TIME_FROM_RECEIVE),
        t => (
            parse_seconds(t)
                .or_else(|| crate::plain::parse_rfc3339(t))
                .ok_or(DecodeError::BadTime { index })?,
            Quality::empty(),
        ),
    };
    let reading = Reading {
        device: device.to_owned(),
        channel: channel.to_owned(),
        ts,
        value,
        unit: None,
        seq: None,
        quality,
    };
    reading
        .validate()
        .map_err(|source| DecodeError::Invalid { index, source })?;
    Ok(reading)
}

/// `-?digits[.digits]` seconds, at most 9 fractional digits, exact to the nanosecond.
fn parse_seconds(s: &str) -> Option<Timestamp> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 12 || !digits(whole) || frac.len() > 9 || !digits(frac) {
        return None;
    }
    if unsigned.ends_with('.') {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        let scale = 10i128.pow(9 - u32::try_from(frac.len()).ok()?);
        frac.parse::<i128>().ok()? * scale
    };
    let nanos = whole * 1_000_000_000 + frac_nanos;
    i64::try_from(if negative { -nanos } else { nanos })
        .ok()
        .map(Timestamp)
}

/// A reading the CSV form cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading {index}: {field} {reason}")]
pub struct EncodeError {
    pub index: usize,
    pub field: &'static str,
    pub reason: &'static str,
}

/// Encodes readings as CSV with a header and exact decimal-second timestamps.
/// Unit, sequence number and quality are not carried. Names that contain `,`
/// or `"`, or that start or end with a space or tab, cannot be written.
pub fn encode(readings: &[Reading]) -> Result<String, EncodeError> {
    let mut out = String::from("device,channel,value,timestamp\n");
    for (index, r) in readings.iter().enumerate() {
        for (field, name) in [("device", &r.device), ("channel", &r.channel)] {
            if name.contains([',', '"']) {
                return Err(EncodeError {
                    index,
                    field,
                    reason: "contains a comma or a quote",
                });
            }
            if name.starts_with([' ', '\t']) || name.ends_with([' ', '\t']) {
                return Err(EncodeError {
                    index,
                    field,
                    reason: "starts or ends with whitespace",
                });
            }
        }
        let nanos = i128::from(r.ts.0);
        let sign = if nanos < 0 { "-" } else { "" };
        let abs = nanos.abs();
        out.push_str(&format!(
            "{},{},{},{sign}{}.{:09}\n",
            r.device,
            r.channel,
            r.value,
            abs / 1_000_000_000,
            abs % 1_000_000_000
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_700_000_000_000_000_000);

    fn decode_str(s: &str) -> Result<Vec<Reading>, DecodeError> {
        decode(
            s.as_bytes(),
            &DecodeContext::new(NOW).with_device(Some("dflt")),
            &DecodeLimits::default(),
        )
    }

    #[test]
    fn rows_with_and_without_a_header_decode_alike() {
        let body = "pump-1,temperature,41.2,1767225600.5\npump-1,current,3.1,1767225600\n";
        let plain = decode_str(body).unwrap();
        let with_header = decode_str(&format!("Device,Channel,Value,Timestamp\r\n{body}")).unwrap();
        assert_eq!(plain, with_header);
        assert_eq!(plain.len(), 2);
        assert_eq!(plain[0].device, "pump-1");
        assert_eq!(plain[0].channel, "temperature");
        assert_eq!(plain[0].value, 41.2);
        assert_eq!(plain[0].ts, Timestamp(1_767_225_600_500_000_000));
        assert_eq!(plain[0].quality, Quality::empty());
    }

    #[test]
    fn an_empty_device_takes_the_default_and_a_missing_time_the_receive_time() {
        let r = decode_str("device,channel,value\n,flow,0.5\n").unwrap();
        assert_eq!(r[0].device, "dflt");
        assert_eq!(r[0].ts, NOW);
        assert_eq!(r[0].quality, Quality::TIME_FROM_RECEIVE);
        let no_default = decode(
            b",flow,0.5",
            &DecodeContext::new(NOW),
            &DecodeLimits::default(),
        );
        assert_eq!(no_default, Err(DecodeError::MissingName { index: 0 }));
    }

    #[test]
    fn rfc3339_and_exact_decimal_timestamps_are_accepted() {
        let r = decode_str("d,c,1,2026-01-01T00:00:00.25Z\nd,c2,1,-0.000000001").unwrap();
        assert_eq!(r[0].ts, Timestamp(1_767_225_600_250_000_000));
        assert_eq!(r[1].ts, Timestamp(-1));
        for bad in ["1.0000000001", "1e9", "1.", ".5", "yesterday", "--1"] {
            assert_eq!(
                decode_str(&format!("d,c,1,{bad}")),
                Err(DecodeError::BadTime { index: 0 }),
                "{bad}"
            );
        }
    }

    #[test]
    fn ragged_rows_and_quotes_are_syntax_errors_naming_the_line() {
        for (body, line) in [
            ("d,c,1\nd,c,1,5\n", "line 2"),
            ("device,channel,value,timestamp\nd,c,1\n", "line 2"),
            ("d,c\n", "line 1"),
            ("d,c,1,2,3\n", "line 1"),
            ("d,\"c\",1\n", "line 1"),
        ] {
            match decode_str(body) {
                Err(DecodeError::Syntax { format, detail }) => {
                    assert_eq!(format, "CSV");
                    assert!(detail.starts_with(line), "{body:?}: {detail}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_values_get_the_same_reason_codes_as_the_other_decoders() {
        let code = |s: &str| decode_str(s).unwrap_err().reason_code();
        assert_eq!(code("d,c,NaN,1"), "non_finite_value");
        assert_eq!(code("d,c,inf,1"), "non_finite_value");
        assert_eq!(code("d,c,on,1"), "unsupported_value");
        assert_eq!(code("d,c,,1"), "missing_value");
        assert_eq!(code("d,,1,1"), "empty_name");
        assert_eq!(code(""), "empty");
        assert_eq!(code("\n\r\n"), "empty");
        assert_eq!(code("device,channel,value\n"), "empty");
        let not_utf8 = decode(
            b"d,c,1\xff",
            &DecodeContext::new(NOW),
            &DecodeLimits::default(),
        );
        assert_eq!(not_utf8.unwrap_err().reason_code(), "syntax");
    }

    #[test]
    fn limits_are_enforced_before_and_while_decoding() {
        let limits = DecodeLimits {
            max_bytes: 64,
            max_records: 2,
            max_depth: 2,
        };
        let ctx = DecodeContext::new(NOW);
        assert_eq!(
            decode("d,c,1\n".repeat(20).as_bytes(), &ctx, &limits),
            Err(DecodeError::TooLarge {
                size: 120,
                limit: 64
            })
        );
        assert_eq!(
            decode(b"d,c,1\nd,c,2\nd,c,3\n", &ctx, &limits),
            Err(DecodeError::TooManyRecords { limit: 2 })
        );
    }

    #[test]
    fn encode_refuses_names_it_cannot_carry() {
        let r = Reading::new("a,b", "c", NOW, 1.0).unwrap();
        assert_eq!(encode(&[r]).unwrap_err().field, "device");
        let r = Reading::new("a", " c", NOW, 1.0).unwrap();
        assert_eq!(encode(&[r]).unwrap_err().field, "channel");
    }
}
