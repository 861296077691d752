//! The plain JSON object form, for sensors that do not speak SenML:
//!
//! ```json
//! {"device": "pump-1", "ts": 1700000000.25, "seq": 7,
//!  "temperature": 21.5, "pressure": 1.02,
//!  "units": {"temperature": "Cel", "pressure": "bar"}}
//! ```
//!
//! Every other numeric member is a channel. `ts` is seconds since the epoch
//! (a number) or an RFC 3339 string; without it the receive time is used and
//! flagged. `device` may be omitted when the context supplies one. A payload
//! may also be an array of such objects.

use serde_json::{Map, Value};

use crate::limits::{DecodeError, DecodeLimits};
use crate::payload::DecodeContext;
use crate::reading::{Quality, Reading, Timestamp};

const RESERVED: [&str; 4] = ["device", "ts", "seq", "units"];

pub fn decode(
    bytes: &[u8],
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    limits.check_size(bytes)?;
    limits.check_json_depth(bytes)?;
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::Syntax {
        format: "JSON",
        detail: e.to_string(),
    })?;
    let mut out = Vec::new();
    match value {
        Value::Object(obj) => decode_object(&obj, 0, ctx, limits, &mut out)?,
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Object(obj) => decode_object(obj, i, ctx, limits, &mut out)?,
                    _ => return Err(DecodeError::Schema(format!("element {i} is not an object"))),
                }
            }
        }
        _ => {
            return Err(DecodeError::Schema(
                "expected an object or an array of objects".into(),
            ));
        }
    }
    if out.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(out)
}

fn decode_object(
    obj: &Map<String, Value>,
    index: usize,
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    let device = match obj.get("device") {
        Some(Value::String(d)) => d.as_str(),
        Some(_) => {
            return Err(DecodeError::Schema(format!(
                "object {index}: device is not a string"
            )));
        }
        None => ctx
            .default_device
            .ok_or(DecodeError::MissingName { index })?,
    };
    let mut quality = Quality::empty();
    let ts = match obj.get("ts") {
        None | Some(Value::Null) => {
            quality |= Quality::TIME_FROM_RECEIVE;
            ctx.now
        }
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(Timestamp::from_secs_f64)
            .ok_or(DecodeError::BadTime { index })?,
        Some(Value::String(s)) => parse_rfc3339(s).ok_or(DecodeError::BadTime { index })?,
        Some(_) => return Err(DecodeError::BadTime { index }),
    };
    let seq = match obj.get("seq") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            DecodeError::Schema(format!("object {index}: seq is not an unsigned integer"))
        })?),
    };
    let units = match obj.get("units") {
        None => None,
        Some(Value::Object(u)) => Some(u),
        Some(_) => {
            return Err(DecodeError::Schema(format!(
                "object {index}: units is not an object"
            )));
        }
    };
    let before = out.len();
    for (channel, value) in obj {
        if RESERVED.contains(&channel.as_str()) {
            continue;
        }
        let value = match value {
            Value::Number(n) => n.as_f64().ok_or(DecodeError::UnsupportedValue {
                index,
                kind: "number",
            })?,
            Value::String(_) => {
                return Err(DecodeError::UnsupportedValue {
                    index,
                    kind: "string",
                });
            }
            Value::Bool(_) => {
                return Err(DecodeError::UnsupportedValue {
                    index,
                    kind: "boolean",
                });
            }
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                return Err(DecodeError::UnsupportedValue {
                    index,
                    kind: "nested value",
                });
            }
        };
        if out.len() == limits.max_records {
            return Err(DecodeError::TooManyRecords {
                limit: limits.max_records,
            });
        }
        let reading = Reading {
            device: device.to_owned(),
            channel: channel.clone(),
            ts,
            value,
            unit: units
                .and_then(|u| u.get(channel))
                .and_then(Value::as_str)
                .map(str::to_owned),
            seq,
            quality,
        };
        reading
            .validate()
            .map_err(|source| DecodeError::Invalid { index, source })?;
        out.push(reading);
    }
    if out.len() == before {
        return Err(DecodeError::MissingValue { index });
    }
    Ok(())
}

/// RFC 3339 with `Z`, a numeric offset (`+02:00`, `-05:30`) or, leniently, no
/// offset (taken as UTC). humantime alone would ignore a non-zero offset after
/// fractional seconds, so the offset is split off and applied here.
pub(crate) fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let (local, offset_secs) = split_utc_offset(s)?;
    // After the seconds only a fraction may remain: no second offset, no `Z`.
    let rest = local.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    } else if !rest.is_empty() {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    let local_nanos = i64::try_from(d.as_nanos()).ok()?;
    local_nanos
        .checked_sub(offset_secs.checked_mul(1_000_000_000)?)
        .map(Timestamp)
}

/// Splits a trailing `Z`/`z` or `±HH:MM` off `s`; returns the rest and the offset in seconds.
fn split_utc_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(rest) = s.strip_suffix(['Z', 'z']) {
        return Some((rest, 0));
    }
    let Some(split) = s.len().checked_sub(6).filter(|&i| s.is_char_boundary(i)) else {
        return Some((s, 0));
    };
    let (rest, tail) = s.split_at(split);
    let t = tail.as_bytes();
    let sign = match t[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((s, 0)),
    };
    let digits = |a: u8, b: u8| -> Option<i64> {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
    };
    let (hh, mm) = (digits(t[1], t[2])?, digits(t[4], t[5])?);
    if t[3] != b':' || hh > 23 || mm > 59 {
        return None;
    }
    Some((rest, sign * (hh * 3600 + mm * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_123_456_789;

    fn ctx() -> DecodeContext<'static> {
        DecodeContext::new(Timestamp(NOW))
    }

    fn plain(s: &str) -> Result<Vec<Reading>, DecodeError> {
        decode(s.as_bytes(), &ctx(), &DecodeLimits::default())
    }

    #[test]
    fn an_object_yields_one_reading_per_numeric_member() {
        let r =
            plain(r#"{"device":"pump-1","ts":1700000000.25,"temperature":21.5,"pressure":1.02}"#)
                .unwrap();
        assert_eq!(r.len(), 2);
        // Members come out in name order.
        assert_eq!((r[0].channel.as_str(), r[0].value), ("pressure", 1.02));
        assert_eq!((r[1].channel.as_str(), r[1].value), ("temperature", 21.5));
        for x in &r {
            assert_eq!(x.device, "pump-1");
            assert_eq!(x.ts, Timestamp(1_700_000_000_250_000_000));
            assert!(x.quality.is_empty());
            assert_eq!((x.unit.as_deref(), x.seq), (None, None));
        }
    }

    #[test]
    fn an_array_of_objects_yields_the_readings_of_each() {
        let r =
            plain(r#"[{"device":"a","ts":1700000000,"t":1},{"device":"b","ts":1700000001,"t":2}]"#)
                .unwrap();
        let got: Vec<(&str, f64)> = r.iter().map(|x| (x.device.as_str(), x.value)).collect();
        assert_eq!(got, [("a", 1.0), ("b", 2.0)]);
        assert_eq!(
            plain(r#"[{"device":"a","t":1},2]"#),
            Err(DecodeError::Schema("element 1 is not an object".into()))
        );
    }

    #[test]
    fn the_units_map_gives_each_channel_its_unit() {
        let r = plain(
            r#"{"device":"p","ts":1700000000,"temperature":21.5,"pressure":1.02,"rpm":900,
                "units":{"temperature":"Cel","pressure":"bar"}}"#,
        )
        .unwrap();
        let units: Vec<(&str, Option<&str>)> = r
            .iter()
            .map(|x| (x.channel.as_str(), x.unit.as_deref()))
            .collect();
        assert_eq!(
            units,
            [
                ("pressure", Some("bar")),
                ("rpm", None),
                ("temperature", Some("Cel"))
            ]
        );
        assert!(matches!(
            plain(r#"{"device":"p","t":1,"units":"Cel"}"#),
            Err(DecodeError::Schema(_))
        ));
    }

    #[test]
    fn ts_may_be_a_number_of_seconds_or_an_rfc3339_string() {
        let at = |ts: &str| plain(&format!(r#"{{"device":"d","ts":{ts},"t":1}}"#)).map(|r| r[0].ts);
        assert_eq!(at("1700000000"), Ok(Timestamp(1_700_000_000_000_000_000)));
        assert_eq!(at("1700000000.5"), Ok(Timestamp(1_700_000_000_500_000_000)));
        assert_eq!(
            at(r#""2023-11-14T22:13:20Z""#),
            Ok(Timestamp(1_700_000_000_000_000_000))
        );
        assert_eq!(
            at(r#""2023-11-14T22:13:20.25Z""#),
            Ok(Timestamp(1_700_000_000_250_000_000))
        );
        assert_eq!(
            at(r#""2023-11-14T22:13:20+00:00""#),
            Ok(Timestamp(1_700_000_000_000_000_000))
        );
        assert_eq!(
            at(r#""2023-11-14 22:13:20""#),
            Ok(Timestamp(1_700_000_000_000_000_000))
        );
        assert_eq!(at("-1e300"), Err(DecodeError::BadTime { index: 0 }));
        assert_eq!(at(r#""yesterday""#), Err(DecodeError::BadTime { index: 0 }));
        assert_eq!(at("true"), Err(DecodeError::BadTime { index: 0 }));
    }

    #[test]
    fn an_rfc3339_offset_is_applied_with_or_without_fractional_seconds() {
        let at =
            |ts: &str| plain(&format!(r#"{{"device":"d","ts":"{ts}","t":1}}"#)).map(|r| r[0].ts);
        let utc = 1_700_000_000_500_000_000;
        assert_eq!(at("2023-11-15T00:13:20.5+02:00"), Ok(Timestamp(utc)));
        assert_eq!(at("2023-11-14T16:43:20.5-05:30"), Ok(Timestamp(utc)));
        assert_eq!(
            at("2023-11-15T00:13:20+02:00"),
            Ok(Timestamp(utc - 500_000_000))
        );
        assert_eq!(at("2023-11-14T22:13:20.5z"), Ok(Timestamp(utc)));
        for bad in [
            "2023-11-14T22:13:20+24:00",
            "2023-11-14T22:13:20.5+02:00Z",
            "2023-11-14T22:13:20.+02:00",
        ] {
            assert_eq!(at(bad), Err(DecodeError::BadTime { index: 0 }), "{bad}");
        }
    }

    #[test]
    fn a_missing_ts_uses_the_receive_time_and_says_so() {
        let r = plain(r#"{"device":"d","t":1}"#).unwrap();
        assert_eq!(r[0].ts, Timestamp(NOW));
        assert_eq!(r[0].quality, Quality::TIME_FROM_RECEIVE);
        let r = plain(r#"{"device":"d","ts":null,"t":1}"#).unwrap();
        assert_eq!(r[0].quality, Quality::TIME_FROM_RECEIVE);
    }

    #[test]
    fn seq_is_carried_on_every_reading_of_the_object() {
        let r = plain(r#"{"device":"d","ts":1700000000,"seq":7,"a":1,"b":2}"#).unwrap();
        assert!(r.iter().all(|x| x.seq == Some(7)));
        assert!(matches!(
            plain(r#"{"device":"d","seq":-1,"a":1}"#),
            Err(DecodeError::Schema(_))
        ));
        assert!(matches!(
            plain(r#"{"device":"d","seq":1.5,"a":1}"#),
            Err(DecodeError::Schema(_))
        ));
    }

    #[test]
    fn nested_string_and_boolean_values_are_refused() {
        for (member, kind) in [
            (r#""a":{"x":1}"#, "nested value"),
            (r#""a":[1,2]"#, "nested value"),
            (r#""a":"on""#, "string"),
            (r#""a":true"#, "boolean"),
        ] {
            let e = plain(&format!(r#"{{"device":"d",{member}}}"#)).unwrap_err();
            assert_eq!(
                e,
                DecodeError::UnsupportedValue { index: 0, kind },
                "{member}"
            );
        }
        // A null member is skipped; an object of nothing but nulls has no value.
        assert_eq!(plain(r#"{"device":"d","a":null,"b":1}"#).unwrap().len(), 1);
        assert_eq!(
            plain(r#"{"device":"d","a":null}"#),
            Err(DecodeError::MissingValue { index: 0 })
        );
    }

    #[test]
    fn the_device_comes_from_context_when_the_payload_has_none() {
        let ctx = ctx().with_device(Some("from-topic"));
        let r = decode(br#"{"t":1}"#, &ctx, &DecodeLimits::default()).unwrap();
        assert_eq!(r[0].device, "from-topic");
        // The payload's own device wins.
        let r = decode(br#"{"device":"own","t":1}"#, &ctx, &DecodeLimits::default()).unwrap();
        assert_eq!(r[0].device, "own");
        assert_eq!(
            plain(r#"{"t":1}"#),
            Err(DecodeError::MissingName { index: 0 })
        );
        assert!(matches!(
            plain(r#"{"device":7,"t":1}"#),
            Err(DecodeError::Schema(_))
        ));
    }

    #[test]
    fn limits_apply_to_plain_payloads() {
        let limits = DecodeLimits {
            max_records: 2,
            ..Default::default()
        };
        let e = decode(br#"{"device":"d","a":1,"b":2,"c":3}"#, &ctx(), &limits).unwrap_err();
        assert_eq!(e, DecodeError::TooManyRecords { limit: 2 });
        let deep = format!(
            r#"{{"device":"d","a":{}1{}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert_eq!(plain(&deep), Err(DecodeError::TooDeep { limit: 8 }));
        assert!(matches!(plain("{"), Err(DecodeError::Syntax { .. })));
        assert!(matches!(plain("42"), Err(DecodeError::Schema(_))));
        assert_eq!(plain("[]"), Err(DecodeError::Empty));
    }
}
