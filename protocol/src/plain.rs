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
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Syntax { format: "JSON", detail: e.to_string() })?;
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
        _ => return Err(DecodeError::Schema("expected an object or an array of objects".into())),
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
        Some(_) => return Err(DecodeError::Schema(format!("object {index}: device is not a string"))),
        None => ctx.default_device.ok_or(DecodeError::MissingName { index })?,
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
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| DecodeError::Schema(format!("object {index}: seq is not an unsigned integer")))?,
        ),
    };
    let units = match obj.get("units") {
        None => None,
        Some(Value::Object(u)) => Some(u),
        Some(_) => return Err(DecodeError::Schema(format!("object {index}: units is not an object"))),
    };
    let before = out.len();
    for (channel, value) in obj {
        if RESERVED.contains(&channel.as_str()) {
            continue;
        }
        let value = match value {
            Value::Number(n) => n.as_f64().ok_or(DecodeError::UnsupportedValue { index, kind: "number" })?,
            Value::String(_) => return Err(DecodeError::UnsupportedValue { index, kind: "string" }),
            Value::Bool(_) => return Err(DecodeError::UnsupportedValue { index, kind: "boolean" }),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                return Err(DecodeError::UnsupportedValue { index, kind: "nested value" });
            }
        };
        if out.len() == limits.max_records {
            return Err(DecodeError::TooManyRecords { limit: limits.max_records });
        }
        let reading = Reading {
            device: device.to_owned(),
            channel: channel.clone(),
            ts,
            value,
            unit: units.and_then(|u| u.get(channel)).and_then(Value::as_str).map(str::to_owned),
            seq,
            quality,
        };
        reading.validate().map_err(|source| DecodeError::Invalid { index, source })?;
        out.push(reading);
    }
    if out.len() == before {
        return Err(DecodeError::MissingValue { index });
    }
    Ok(())
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok().map(Timestamp)
}
