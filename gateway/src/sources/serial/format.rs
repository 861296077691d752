//! Line formats of the serial source, without I/O: one line in, readings or a
//! typed reason out.
//!
//! - `senml`: one SenML JSON pack per line (`protocol::senml::decode_json`);
//!   records that name only a channel take the port's `device`.
//! - `csv`: `channel,value[,timestamp]` for the port's `device`. The timestamp
//!   is decimal seconds since the Unix epoch with up to 9 fractional digits
//!   (`1767225600.25`, exact to the nanosecond) or RFC 3339
//!   (`2026-01-01T00:00:00.25Z`). Without one, the reading gets the time the
//!   line was received and the quality flag `TIME_FROM_RECEIVE`. Fields are
//!   decoded by `protocol::csv`, so values, names and times follow the same
//!   rules (and reason codes) as CSV everywhere else: NaN/inf are
//!   `non_finite_value`, quotes are refused.
//! - `checksummed`: `PAYLOAD*hh`, NMEA-style: `hh` is the XOR of every byte of
//!   `PAYLOAD` as two hex digits (either case), `PAYLOAD` is in the `csv` form.
//!   A missing or wrong checksum is a bad frame.

use protocol::{DecodeContext, DecodeError, DecodeLimits, Reading, Timestamp};
use serde::Deserialize;

/// How the lines of one port are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialFormat {
    /// One SenML JSON pack per line.
    #[default]
    Senml,
    /// `channel,value[,timestamp]`.
    Csv,
    /// `channel,value[,timestamp]*hh` with an XOR checksum.
    Checksummed,
}

impl SerialFormat {
    pub fn name(self) -> &'static str {
        match self {
            SerialFormat::Senml => "senml",
            SerialFormat::Csv => "csv",
            SerialFormat::Checksummed => "checksummed",
        }
    }

    /// Whether lines in this format carry no device name (so `device` is required).
    pub fn needs_device(self) -> bool {
        !matches!(self, SerialFormat::Senml)
    }
}

/// Why a line is a bad frame. [`LineError::reason`] is the serial metric's
/// label; [`LineError::into_decode_error`] the quarantine entry's error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("line is {len} bytes, limit is {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("line was cut off: the device went away before its end")]
    Truncated,
    #[error("no `*hh` checksum at the end of the line")]
    MissingChecksum,
    #[error("checksum {found:?} is not two hex digits")]
    MalformedChecksum { found: String },
    #[error("checksum mismatch: line says {stated:02X}, payload XOR is {computed:02X}")]
    BadChecksum { stated: u8, computed: u8 },
    #[error("{fields} fields; expected channel,value[,timestamp]")]
    FieldCount { fields: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl LineError {
    /// A short stable code, finer than the quarantine's (a metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            LineError::TooLong { .. } => "line_too_long",
            LineError::Truncated => "truncated",
            LineError::MissingChecksum => "missing_checksum",
            LineError::MalformedChecksum { .. } => "malformed_checksum",
            LineError::BadChecksum { .. } => "bad_checksum",
            LineError::FieldCount { .. } => "field_count",
            LineError::Decode(e) => e.reason_code(),
        }
    }

    /// The error a quarantine entry carries: its reason code is the
    /// `DecodeError`'s (`too_large`, `syntax`, …) and its detail names the
    /// serial reason, e.g. `serial bad_checksum: checksum mismatch: …`.
    pub fn into_decode_error(self) -> DecodeError {
        match self {
            LineError::TooLong { len, limit } => DecodeError::TooLarge { size: len, limit },
            LineError::Decode(e) => e,
            other => DecodeError::Syntax {
                format: "serial line",
                detail: format!("{}: {other}", other.reason()),
            },
        }
    }
}

/// Decodes one line (without its terminator) in `format`.
pub fn decode_line(
    format: SerialFormat,
    line: &[u8],
    device: Option<&str>,
    now: Timestamp,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, LineError> {
    let ctx = DecodeContext::new(now).with_device(device);
    match format {
        SerialFormat::Senml => Ok(protocol::senml::decode_json(line, &ctx, limits)?),
        SerialFormat::Csv => decode_csv(line, &ctx, limits),
        SerialFormat::Checksummed => decode_csv(verify_checksum(line)?, &ctx, limits),
    }
}

/// Splits `PAYLOAD*hh` and checks `hh`; returns `PAYLOAD`.
pub fn verify_checksum(line: &[u8]) -> Result<&[u8], LineError> {
    let star = line
        .iter()
        .rposition(|&b| b == b'*')
        .ok_or(LineError::MissingChecksum)?;
    let (payload, tail) = (&line[..star], &line[star + 1..]);
    let hex = |b: u8| char::from(b).to_digit(16);
    let stated = match tail {
        [hi, lo] => match (hex(*hi), hex(*lo)) {
            (Some(h), Some(l)) => (h * 16 + l) as u8,
            _ => {
                return Err(LineError::MalformedChecksum {
                    found: String::from_utf8_lossy(tail).into_owned(),
                });
            }
        },
        [] => return Err(LineError::MissingChecksum),
        _ => {
            return Err(LineError::MalformedChecksum {
                found: String::from_utf8_lossy(&tail[..tail.len().min(16)]).into_owned(),
            });
        }
    };
    let computed = checksum(payload);
    if stated != computed {
        return Err(LineError::BadChecksum { stated, computed });
    }
    Ok(payload)
}

/// XOR of every byte.
pub fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0, |acc, b| acc ^ b)
}

/// `channel,value[,timestamp]`: the field count is checked here, everything
/// else by `protocol::csv` on the row `,channel,value[,timestamp]` (an empty
/// device field takes the port's device).
fn decode_csv(
    line: &[u8],
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, LineError> {
    let fields = line.iter().filter(|&&b| b == b',').count() + 1;
    if !(2..=3).contains(&fields) {
        return Err(LineError::FieldCount { fields });
    }
    let mut row = Vec::with_capacity(line.len() + 1);
    row.push(b',');
    row.extend_from_slice(line);
    let limits = DecodeLimits {
        max_bytes: limits.max_bytes.saturating_add(1),
        max_records: 1,
        ..limits.clone()
    };
    Ok(protocol::csv::decode(&row, ctx, &limits)?)
}

/// Encodes readings as lines of `format` (each ending in `\n`), the inverse of
/// [`decode_line`]; `None` for a reading the format cannot carry (a name with
/// a comma or a quote, or surrounding blanks). Used by tests and firmware-sim
/// mirrors it.
pub fn encode_lines(format: SerialFormat, readings: &[Reading]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        SerialFormat::Senml => {
            out.extend_from_slice(&protocol::senml::encode_json(readings));
            out.push(b'\n');
        }
        SerialFormat::Csv | SerialFormat::Checksummed => {
            for r in readings {
                let payload = csv_payload(r)?;
                out.extend_from_slice(payload.as_bytes());
                if format == SerialFormat::Checksummed {
                    out.extend_from_slice(
                        format!("*{:02X}", checksum(payload.as_bytes())).as_bytes(),
                    );
                }
                out.push(b'\n');
            }
        }
    }
    Some(out)
}

/// `channel,value,timestamp` with exact decimal seconds.
fn csv_payload(r: &Reading) -> Option<String> {
    let c = &r.channel;
    if c.contains([',', '"', '*']) || c.starts_with([' ', '\t']) || c.ends_with([' ', '\t']) {
        return None;
    }
    let nanos = i128::from(r.ts.0);
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.abs();
    Some(format!(
        "{c},{},{sign}{}.{:09}",
        r.value,
        abs / 1_000_000_000,
        abs % 1_000_000_000
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use protocol::Quality;

    use super::*;

    const NOW: Timestamp = Timestamp(1_767_225_600_000_000_000);

    fn dec(format: SerialFormat, line: &str) -> Result<Vec<Reading>, LineError> {
        decode_line(
            format,
            line.as_bytes(),
            Some("pump-1"),
            NOW,
            &DecodeLimits::default(),
        )
    }

    fn with_sum(payload: &str) -> String {
        format!("{payload}*{:02x}", checksum(payload.as_bytes()))
    }

    #[test]
    fn csv_lines_take_the_port_device_and_both_time_forms() {
        let r = dec(SerialFormat::Csv, "temperature,41.2,1767225600.25").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].device.as_str(), r[0].channel.as_str(), r[0].value),
            ("pump-1", "temperature", 41.2)
        );
        assert_eq!(r[0].ts, Timestamp(1_767_225_600_250_000_000));
        assert_eq!(r[0].quality, Quality::empty());
        let r = dec(SerialFormat::Csv, "flow, 0.5 ,2026-01-01T00:00:01Z").unwrap();
        assert_eq!(r[0].ts, Timestamp(1_767_225_601_000_000_000));
        assert_eq!(r[0].value, 0.5);
    }

    #[test]
    fn a_csv_line_without_time_gets_the_receive_time_flagged() {
        let r = dec(SerialFormat::Csv, "flow,0.5").unwrap();
        assert_eq!(r[0].ts, NOW);
        assert_eq!(r[0].quality, Quality::TIME_FROM_RECEIVE);
    }

    #[test]
    fn ragged_and_bad_csv_lines_have_typed_reasons() {
        let reason = |l: &str| dec(SerialFormat::Csv, l).unwrap_err().reason();
        assert_eq!(reason("flow"), "field_count");
        assert_eq!(reason("pump-1,flow,0.5,1767225600"), "field_count");
        assert_eq!(reason("a,b,c,d,e"), "field_count");
        assert_eq!(reason("flow,NaN"), "non_finite_value");
        assert_eq!(reason("flow,-inf,1"), "non_finite_value");
        assert_eq!(reason("flow,on"), "unsupported_value");
        assert_eq!(reason("flow,"), "missing_value");
        assert_eq!(reason(",1"), "empty_name");
        assert_eq!(reason("flow,1,yesterday"), "bad_time");
        assert_eq!(reason("\"flow\",1"), "syntax");
        let not_utf8 = decode_line(
            SerialFormat::Csv,
            b"fl\xffow,1",
            Some("d"),
            NOW,
            &DecodeLimits::default(),
        );
        assert_eq!(not_utf8.unwrap_err().reason(), "syntax");
        let no_device = decode_line(
            SerialFormat::Csv,
            b"flow,1",
            None,
            NOW,
            &DecodeLimits::default(),
        );
        assert_eq!(no_device.unwrap_err().reason(), "missing_name");
    }

    #[test]
    fn checksummed_lines_are_verified_before_decoding() {
        let good = with_sum("temperature,41.2,1767225600");
        let r = dec(SerialFormat::Checksummed, &good).unwrap();
        assert_eq!(r[0].value, 41.2);
        assert_eq!(
            dec(
                SerialFormat::Checksummed,
                &good.to_uppercase().replace("TEMPERATURE", "temperature")
            )
            .unwrap(),
            r,
            "hex digits in either case"
        );
        let reason = |l: &str| dec(SerialFormat::Checksummed, l).unwrap_err().reason();
        // One flipped payload bit.
        let flipped = good.replacen("41.2", "41.3", 1);
        assert_eq!(reason(&flipped), "bad_checksum");
        assert_eq!(reason("temperature,41.2"), "missing_checksum");
        assert_eq!(reason("temperature,41.2*"), "missing_checksum");
        assert_eq!(reason("temperature,41.2*zz"), "malformed_checksum");
        assert_eq!(reason("temperature,41.2*123"), "malformed_checksum");
        // A good checksum over a bad payload: the payload's reason.
        assert_eq!(reason(&with_sum("temperature,NaN")), "non_finite_value");
        assert_eq!(reason(&with_sum("temperature")), "field_count");
    }

    #[test]
    fn senml_lines_decode_with_the_port_device_as_default() {
        let r = dec(
            SerialFormat::Senml,
            r#"[{"bt":1767225600,"n":"temperature","u":"Cel","v":41.2},{"n":"x/flow","v":1}]"#,
        )
        .unwrap();
        assert_eq!(r[0].device, "pump-1");
        assert_eq!(r[1].device, "x");
        assert_eq!(
            dec(SerialFormat::Senml, r#"[{"n":"a/b","v":NaN}]"#)
                .unwrap_err()
                .reason(),
            "syntax"
        );
        assert_eq!(
            dec(SerialFormat::Senml, r#"[{"n":"a/b","v":1e999}]"#)
                .unwrap_err()
                .reason(),
            "syntax"
        );
        assert_eq!(
            dec(SerialFormat::Senml, "[{\"n\":\"a/b\",\"v\":1")
                .unwrap_err()
                .reason(),
            "syntax"
        );
    }

    #[test]
    fn quarantine_errors_keep_the_serial_reason_in_their_detail() {
        let e = LineError::BadChecksum {
            stated: 1,
            computed: 2,
        }
        .into_decode_error();
        assert_eq!(e.reason_code(), "syntax");
        assert!(e.to_string().contains("bad_checksum"), "{e}");
        let e = LineError::TooLong { len: 9, limit: 8 }.into_decode_error();
        assert_eq!(e.reason_code(), "too_large");
    }

    /// Readings of one device; `whole_secs` keeps the time exact in SenML
    /// (whose times are f64 seconds), and times stay above 2^28 s (SenML
    /// reads smaller ones as relative).
    fn reading(whole_secs: bool) -> impl Strategy<Value = Reading> {
        (
            "[a-z][a-z0-9_]{0,15}",
            -1e12f64..1e12,
            300_000_000i64..4_000_000_000,
            0i64..1_000_000_000,
        )
            .prop_map(move |(c, v, secs, nanos)| {
                let nanos = if whole_secs { 0 } else { nanos };
                Reading::new("pump-1", c, Timestamp(secs * 1_000_000_000 + nanos), v).unwrap()
            })
    }

    proptest! {
        /// Whatever the line, every format gives readings or a typed reason.
        #[test]
        fn arbitrary_lines_never_panic(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            for f in [SerialFormat::Senml, SerialFormat::Csv, SerialFormat::Checksummed] {
                let _ = decode_line(f, &line, Some("d"), NOW, &DecodeLimits::default());
            }
        }

        /// Encoded lines decode back to the same readings in every format.
        #[test]
        fn encode_then_decode_round_trips(
            exact in proptest::collection::vec(reading(false), 1..8),
            whole in proptest::collection::vec(reading(true), 1..8),
        ) {
            for (f, readings) in [
                (SerialFormat::Csv, &exact),
                (SerialFormat::Checksummed, &exact),
                (SerialFormat::Senml, &whole),
            ] {
                let bytes = encode_lines(f, readings).unwrap();
                let mut back = Vec::new();
                for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    back.extend(decode_line(f, line, Some("pump-1"), NOW, &DecodeLimits::default()).unwrap());
                }
                prop_assert_eq!(&back, readings);
            }
        }

        /// Any change of one payload byte is caught by the checksum (or leaves
        /// a line that is not a valid checksummed line at all).
        #[test]
        fn one_changed_byte_never_passes(r in reading(false), pos in any::<prop::sample::Index>(), to in any::<u8>()) {
            let mut line = encode_lines(SerialFormat::Checksummed, &[r]).unwrap();
            line.pop();
            let star = line.iter().rposition(|&b| b == b'*').unwrap();
            let i = pos.index(star);
            prop_assume!(line[i] != to);
            line[i] = to;
            prop_assert!(decode_line(SerialFormat::Checksummed, &line, Some("pump-1"), NOW, &DecodeLimits::default()).is_err());
        }
    }
}
