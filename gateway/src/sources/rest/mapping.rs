//! JSON document → readings with JSON pointers (RFC 6901,
//! `serde_json::Value::pointer`). No I/O.
//!
//! A document-level problem (the `items` pointer missing or not an array,
//! too many items) is one error for the whole response. An item that cannot
//! be mapped is rejected on its own, with its JSON, and the other items still
//! become readings.

use protocol::{DecodeError, Quality, Reading, Timestamp};
use serde_json::Value;

use super::config::{RestField, RestSourceConfig, TimeFormat};
use crate::sources::sql::mapping::{EpochUnit, parse_time_text};

/// How one source maps its documents (built from its config).
#[derive(Clone, Debug)]
pub struct PointerMap {
    items: Option<String>,
    max_items: usize,
    device: Option<String>,
    device_pointer: Option<String>,
    time_pointer: Option<String>,
    time_format: TimeFormat,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Shape {
    Long {
        channel: Option<String>,
        channel_pointer: Option<String>,
        value_pointer: String,
        unit: Option<String>,
        unit_pointer: Option<String>,
    },
    Fields(Vec<RestField>),
}

/// The result of mapping one document.
#[derive(Debug, Default)]
pub struct Mapped {
    pub readings: Vec<Reading>,
    /// Items that could not be mapped: the reason and the item's JSON.
    pub rejects: Vec<(DecodeError, Vec<u8>)>,
    /// Items seen (mapped or not).
    pub items: usize,
}

impl PointerMap {
    /// From a config that passed validation.
    pub fn new(cfg: &RestSourceConfig) -> Self {
        let shape = match &cfg.value_pointer {
            Some(v) => Shape::Long {
                channel: cfg.channel.clone(),
                channel_pointer: cfg.channel_pointer.clone(),
                value_pointer: v.clone(),
                unit: cfg.unit.clone(),
                unit_pointer: cfg.unit_pointer.clone(),
            },
            None => Shape::Fields(cfg.fields.clone()),
        };
        PointerMap {
            items: cfg.items.clone(),
            max_items: cfg.max_items,
            device: cfg.device.clone(),
            device_pointer: cfg.device_pointer.clone(),
            time_pointer: cfg.time_pointer.clone(),
            time_format: cfg.time_format,
            shape,
        }
    }

    /// Maps a parsed document; `received` stamps readings without a time pointer.
    pub fn map(&self, doc: &Value, received: Timestamp) -> Result<Mapped, DecodeError> {
        let items: Vec<&Value> = match &self.items {
            None => vec![doc],
            Some(p) => match doc.pointer(p) {
                Some(Value::Array(a)) => {
                    if a.len() > self.max_items {
                        return Err(DecodeError::TooManyRecords {
                            limit: self.max_items,
                        });
                    }
                    a.iter().collect()
                }
                Some(other) => {
                    return Err(DecodeError::Schema(format!(
                        "items pointer {p:?} points at {}, not an array",
                        kind(other)
                    )));
                }
                None => {
                    return Err(DecodeError::Schema(format!(
                        "items pointer {p:?} points at nothing"
                    )));
                }
            },
        };
        let mut out = Mapped {
            items: items.len(),
            ..Mapped::default()
        };
        for (index, item) in items.into_iter().enumerate() {
            match self.map_item(index, item, received) {
                Ok(r) => out.readings.extend(r),
                Err(e) => out
                    .rejects
                    .push((e, serde_json::to_vec(item).unwrap_or_default())),
            }
        }
        Ok(out)
    }

    fn map_item(
        &self,
        index: usize,
        item: &Value,
        received: Timestamp,
    ) -> Result<Vec<Reading>, DecodeError> {
        let schema = |what: String| DecodeError::Schema(format!("item {index}: {what}"));
        let device = match (&self.device, &self.device_pointer) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(p)) => Some(name_at(item, p).map_err(schema)?),
            (None, None) => None,
        };
        let (ts, quality) = match &self.time_pointer {
            None => (received, Quality::TIME_FROM_RECEIVE),
            Some(p) => (
                self.time_at(item, p)
                    .ok_or(DecodeError::BadTime { index })?,
                Quality::empty(),
            ),
        };
        let make = |device: &str, channel: String, value: f64, unit: Option<String>| {
            let mut r = Reading::new(device, channel, ts, value)
                .map_err(|source| DecodeError::Invalid { index, source })?;
            r.quality = quality;
            if let Some(u) = unit {
                r = r.with_unit(u);
                r.validate()
                    .map_err(|source| DecodeError::Invalid { index, source })?;
            }
            Ok::<_, DecodeError>(r)
        };
        match &self.shape {
            Shape::Long {
                channel,
                channel_pointer,
                value_pointer,
                unit,
                unit_pointer,
            } => {
                let device = device.ok_or(DecodeError::MissingName { index })?;
                let channel = match (channel, channel_pointer) {
                    (Some(c), _) => c.clone(),
                    (None, Some(p)) => name_at(item, p).map_err(schema)?,
                    (None, None) => return Err(DecodeError::MissingName { index }),
                };
                let value = match item.pointer(value_pointer) {
                    None | Some(Value::Null) => return Err(DecodeError::MissingValue { index }),
                    Some(v) => number(v).ok_or(DecodeError::UnsupportedValue {
                        index,
                        kind: kind(v),
                    })?,
                };
                let unit = match (unit, unit_pointer) {
                    (Some(u), _) => Some(u.clone()),
                    (None, Some(p)) => match item.pointer(p) {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.is_empty() => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(v) => {
                            return Err(schema(format!(
                                "unit at {p:?} is {}, not a string",
                                kind(v)
                            )));
                        }
                    },
                    (None, None) => None,
                };
                Ok(vec![make(&device, channel, value, unit)?])
            }
            Shape::Fields(fields) => {
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    let value = match item.pointer(&f.pointer) {
                        None | Some(Value::Null) => continue,
                        Some(v) => number(v).ok_or(DecodeError::UnsupportedValue {
                            index,
                            kind: kind(v),
                        })?,
                    };
                    let d = f
                        .device
                        .as_deref()
                        .or(device.as_deref())
                        .ok_or(DecodeError::MissingName { index })?;
                    out.push(make(d, f.channel.clone(), value, f.unit.clone())?);
                }
                if out.is_empty() {
                    return Err(DecodeError::MissingValue { index });
                }
                Ok(out)
            }
        }
    }

    fn time_at(&self, item: &Value, p: &str) -> Option<Timestamp> {
        let v = item.pointer(p)?;
        let unit = match self.time_format {
            TimeFormat::Rfc3339 => return v.as_str().and_then(parse_time_text),
            TimeFormat::EpochS => EpochUnit::Seconds,
            TimeFormat::EpochMs => EpochUnit::Millis,
            TimeFormat::EpochUs => EpochUnit::Micros,
            TimeFormat::EpochNs => EpochUnit::Nanos,
        };
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => unit.from_int(i),
                None => n.as_f64().and_then(|f| unit.from_f64(f)),
            },
            _ => None,
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A device or channel name: a string, or a number written out.
fn name_at(item: &Value, p: &str) -> Result<String, String> {
    match item.pointer(p) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        None | Some(Value::Null) => Err(format!("nothing at {p:?}")),
        Some(v) => Err(format!("{p:?} is {}, not a name", kind(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_767_225_600;

    fn map_of(text: &str) -> PointerMap {
        let c: RestSourceConfig = toml::from_str(text).unwrap();
        let mut p = Vec::new();
        c.validate("rest[0]", &mut p);
        assert!(p.is_empty(), "{p:?}");
        PointerMap::new(&c)
    }

    fn long() -> PointerMap {
        map_of(
            r#"
            name = "api"
            url = "http://127.0.0.1/x"
            items = "/data/readings"
            device_pointer = "/sensor/id"
            channel_pointer = "/kind"
            value_pointer = "/v"
            unit_pointer = "/u"
            time_pointer = "/at"
        "#,
        )
    }

    #[test]
    fn items_map_with_per_item_pointers_and_bad_items_are_rejected_alone() {
        let doc = json!({"data": {"readings": [
            {"sensor": {"id": "p-1"}, "kind": "temp", "v": 21.5, "u": "Cel", "at": "2026-01-01T00:00:00Z"},
            {"sensor": {"id": 7}, "kind": "flow", "v": 3, "at": "2026-01-01T01:00:00+01:00"},
            {"sensor": {"id": "p-1"}, "kind": "temp", "v": null, "at": "2026-01-01T00:00:00Z"},
            {"sensor": {"id": "p-1"}, "kind": "temp", "v": "21", "at": "2026-01-01T00:00:00Z"},
            {"sensor": {"id": "p-1"}, "kind": "temp", "v": 1, "at": "soon"},
            {"kind": "temp", "v": 1, "at": "2026-01-01T00:00:00Z"},
            {"sensor": {"id": "p-1"}, "kind": "temp", "v": 1, "u": 5, "at": "2026-01-01T00:00:00Z"}
        ]}});
        let m = long().map(&doc, Timestamp(0)).unwrap();
        assert_eq!(m.items, 7);
        assert_eq!(m.readings.len(), 2);
        let r = &m.readings[0];
        assert_eq!((r.device.as_str(), r.channel.as_str()), ("p-1", "temp"));
        assert_eq!(r.ts, Timestamp(T0 * 1_000_000_000));
        assert_eq!(r.unit.as_deref(), Some("Cel"));
        assert_eq!(r.quality, Quality::empty());
        assert_eq!(m.readings[1].device, "7");
        assert_eq!(m.readings[1].ts, Timestamp(T0 * 1_000_000_000));
        assert_eq!(m.readings[1].unit, None);
        let reasons: Vec<&str> = m.rejects.iter().map(|(e, _)| e.reason_code()).collect();
        assert_eq!(
            reasons,
            [
                "missing_value",
                "unsupported_value",
                "bad_time",
                "schema",
                "schema"
            ]
        );
        // The rejected item's own JSON goes to quarantine.
        let item: Value = serde_json::from_slice(&m.rejects[0].1).unwrap();
        assert_eq!(item["v"], Value::Null);
    }

    #[test]
    fn a_missing_or_wrong_items_pointer_rejects_the_whole_document() {
        let m = long();
        for doc in [
            json!({"data": {}}),
            json!({"data": {"readings": {"a": 1}}}),
            json!([1]),
        ] {
            assert_eq!(
                m.map(&doc, Timestamp(0)).unwrap_err().reason_code(),
                "schema"
            );
        }
        let many = json!({"data": {"readings": vec![json!({}); 10_001]}});
        assert_eq!(
            m.map(&many, Timestamp(0)).unwrap_err().reason_code(),
            "too_many_records"
        );
        // An empty array is fine: nothing new.
        let empty = m
            .map(&json!({"data": {"readings": []}}), Timestamp(0))
            .unwrap();
        assert_eq!((empty.items, empty.readings.len()), (0, 0));
    }

    #[test]
    fn a_single_object_maps_a_fixed_field_list_and_stamps_receive_time() {
        let m = map_of(
            r#"
            name = "station"
            url = "http://127.0.0.1/now"
            device = "station-1"
            [[fields]]
            pointer = "/main/temp"
            channel = "temperature"
            unit = "Cel"
            [[fields]]
            pointer = "/main/humidity"
            channel = "humidity"
            unit = "%RH"
            [[fields]]
            pointer = "/wind/speed"
            channel = "wind"
            device = "mast-2"
        "#,
        );
        let doc = json!({"main": {"temp": 3.5, "humidity": null}, "wind": {"speed": 7}});
        let now = Timestamp(T0 * 1_000_000_000);
        let r = m.map(&doc, now).unwrap().readings;
        assert_eq!(r.len(), 2, "a null field yields no reading");
        assert_eq!(
            (r[0].device.as_str(), r[0].channel.as_str()),
            ("station-1", "temperature")
        );
        assert_eq!(r[0].ts, now);
        assert!(r[0].quality.contains(Quality::TIME_FROM_RECEIVE));
        assert_eq!((r[1].device.as_str(), r[1].value), ("mast-2", 7.0));
        let nothing = m.map(&json!({"main": {}}), now).unwrap();
        assert_eq!(nothing.rejects[0].0.reason_code(), "missing_value");
        let wrong = m.map(&json!({"main": {"temp": [1]}}), now).unwrap();
        assert_eq!(wrong.rejects[0].0.reason_code(), "unsupported_value");
    }

    #[test]
    fn epoch_times_in_each_unit_and_escaped_pointers() {
        for (fmt, at, expect) in [
            ("epoch_s", json!(T0), T0 * 1_000_000_000),
            (
                "epoch_s",
                json!(T0 as f64 + 0.5),
                T0 * 1_000_000_000 + 500_000_000,
            ),
            (
                "epoch_ms",
                json!(T0 * 1000 + 1),
                T0 * 1_000_000_000 + 1_000_000,
            ),
            ("epoch_us", json!(T0 * 1_000_000), T0 * 1_000_000_000),
            (
                "epoch_ns",
                json!(T0 * 1_000_000_000 + 7),
                T0 * 1_000_000_000 + 7,
            ),
        ] {
            let m = map_of(&format!(
                r#"
                name = "e"
                url = "http://127.0.0.1/x"
                device = "d"
                channel = "c"
                value_pointer = "/a~1b"
                time_pointer = "/t~0"
                time_format = "{fmt}"
            "#
            ));
            let doc = json!({"a/b": 1.0, "t~": at});
            let r = m.map(&doc, Timestamp(0)).unwrap();
            assert_eq!(r.readings[0].ts, Timestamp(expect), "{fmt}");
            let bad = m.map(
                &json!({"a/b": 1.0, "t~": "2026-01-01T00:00:00Z"}),
                Timestamp(0),
            );
            assert_eq!(bad.unwrap().rejects[0].0.reason_code(), "bad_time", "{fmt}");
        }
    }
}
