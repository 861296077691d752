//! SenML (RFC 8428) packs in JSON and CBOR.
//!
//! Decoding resolves the base fields as §4.6 says: `bn`, `bt`, `bu`, `bv` carry
//! forward to every later record until redefined; name = `bn` + `n`,
//! time = `bt` + `t` (a resolved time below 2^28 is relative to "now"),
//! unit = `u` or else `bu`, value = `bv` + `v`. `bver` above 10 is refused, and
//! so is any field whose label ends in `_` ("must understand", §4.4).
//! CBOR uses the integer labels of §6; string labels are accepted too.
//!
//! **Device and channel.** The resolved name is split at its last `/` or `:`:
//! `bn = "pump-1/"`, `n = "temperature"` → device `pump-1`, channel
//! `temperature`. A name with neither separator is a channel of the context's
//! default device (for example one taken from the MQTT topic).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::limits::{DecodeError, DecodeLimits};
use crate::payload::DecodeContext;
use crate::reading::{Quality, Reading, Timestamp};

/// Times below this many seconds are relative to now (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = (1u64 << 28) as f64;
/// Highest SenML version understood.
const SUPPORTED_VERSION: i64 = 10;

/// One SenML record as it appears on the wire, before base-field resolution.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SenmlRecord {
    pub bn: Option<String>,
    pub bt: Option<f64>,
    pub bu: Option<String>,
    pub bv: Option<f64>,
    pub bver: Option<i64>,
    pub n: Option<String>,
    pub u: Option<String>,
    pub v: Option<f64>,
    pub t: Option<f64>,
    /// Set when the record carried a string, boolean or data value (unsupported).
    other_value: Option<&'static str>,
    /// The first "must understand" label seen, if any.
    must_understand: Option<String>,
}

#[derive(Debug)]
enum Label {
    Bver,
    Bn,
    Bt,
    Bu,
    Bv,
    N,
    U,
    V,
    Vs,
    Vb,
    Vd,
    T,
    /// Known but ignored here: `bs`, `s`, `ut`.
    Ignored,
    MustUnderstand(String),
    Unknown,
}

impl Label {
    fn from_str(s: &str) -> Label {
        match s {
            "bver" => Label::Bver,
            "bn" => Label::Bn,
            "bt" => Label::Bt,
            "bu" => Label::Bu,
            "bv" => Label::Bv,
            "n" => Label::N,
            "u" => Label::U,
            "v" => Label::V,
            "vs" => Label::Vs,
            "vb" => Label::Vb,
            "vd" => Label::Vd,
            "t" => Label::T,
            "bs" | "s" | "ut" => Label::Ignored,
            s if s.ends_with('_') => Label::MustUnderstand(s.to_owned()),
            _ => Label::Unknown,
        }
    }

    fn from_int(i: i64) -> Label {
        match i {
            -1 => Label::Bver,
            -2 => Label::Bn,
            -3 => Label::Bt,
            -4 => Label::Bu,
            -5 => Label::Bv,
            0 => Label::N,
            1 => Label::U,
            2 => Label::V,
            3 => Label::Vs,
            4 => Label::Vb,
            8 => Label::Vd,
            6 => Label::T,
            -6 | 5 | 7 => Label::Ignored,
            // Negative labels below -6 are "must understand" extensions (§6, §12.2).
            i if i < -6 => Label::MustUnderstand(i.to_string()),
            _ => Label::Unknown,
        }
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LabelVisitor;
        impl Visitor<'_> for LabelVisitor {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a SenML label (string or integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
                Ok(Label::from_str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Label, E> {
                Ok(Label::from_int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Label, E> {
                Ok(i64::try_from(v)
                    .map(Label::from_int)
                    .unwrap_or(Label::Unknown))
            }
        }
        d.deserialize_any(LabelVisitor)
    }
}

/// A number as SenML CBOR writes it: an integer (`2`, `-5`) or a float.
/// (`f64`'s own `Deserialize` refuses CBOR integers.)
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NumVisitor;
        impl Visitor<'_> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
        }
        d.deserialize_any(NumVisitor)
    }
}

impl<'de> Deserialize<'de> for SenmlRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = SenmlRecord;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a SenML record (a map)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SenmlRecord, A::Error> {
                let mut r = SenmlRecord::default();
                while let Some(label) = map.next_key::<Label>()? {
                    match label {
                        Label::Bver => r.bver = Some(map.next_value()?),
                        Label::Bn => r.bn = Some(map.next_value()?),
                        Label::Bt => r.bt = Some(map.next_value::<Num>()?.0),
                        Label::Bu => r.bu = Some(map.next_value()?),
                        Label::Bv => r.bv = Some(map.next_value::<Num>()?.0),
                        Label::N => r.n = Some(map.next_value()?),
                        Label::U => r.u = Some(map.next_value()?),
                        Label::V => r.v = Some(map.next_value::<Num>()?.0),
                        Label::T => r.t = Some(map.next_value::<Num>()?.0),
                        Label::Vs => {
                            map.next_value::<IgnoredAny>()?;
                            r.other_value = Some("string value (vs)");
                        }
                        Label::Vb => {
                            map.next_value::<IgnoredAny>()?;
                            r.other_value = Some("boolean value (vb)");
                        }
                        Label::Vd => {
                            map.next_value::<IgnoredAny>()?;
                            r.other_value = Some("data value (vd)");
                        }
                        Label::MustUnderstand(name) => {
                            map.next_value::<IgnoredAny>()?;
                            r.must_understand.get_or_insert(name);
                        }
                        Label::Ignored | Label::Unknown => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(RecordVisitor)
    }
}

/// A pack: a sequence of records, refused past `limit` records while reading,
/// so a claimed length is never trusted.
struct BoundedPack {
    records: Vec<SenmlRecord>,
}

struct PackSeed<'a> {
    limit: usize,
    /// Set when the pack held more than `limit` records, so the caller can tell
    /// that refusal from a syntax error without matching on error text.
    too_many: &'a Cell<bool>,
}

impl<'de> de::DeserializeSeed<'de> for PackSeed<'_> {
    type Value = BoundedPack;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BoundedPack, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackSeed<'_> {
    type Value = BoundedPack;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SenML pack (an array of records)")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedPack, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(r) = seq.next_element::<SenmlRecord>()? {
            if records.len() == self.limit {
                self.too_many.set(true);
                return Err(de::Error::custom("too many records"));
            }
            records.push(r);
        }
        Ok(BoundedPack { records })
    }
}

/// Decodes a SenML JSON pack (`application/senml+json`).
pub fn decode_json(
    bytes: &[u8],
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    limits.check_size(bytes)?;
    limits.check_json_depth(bytes)?;
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = PackSeed {
        limit: limits.max_records,
        too_many: &too_many,
    };
    let pack = de::DeserializeSeed::deserialize(seed, &mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|e| {
            if too_many.get() {
                DecodeError::TooManyRecords {
                    limit: limits.max_records,
                }
            } else {
                DecodeError::Syntax {
                    format: "SenML JSON",
                    detail: e.to_string(),
                }
            }
        })?;
    resolve(&pack.records, ctx)
}

/// Decodes a SenML CBOR pack (`application/senml+cbor`).
pub fn decode_cbor(
    bytes: &[u8],
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    limits.check_size(bytes)?;
    // Structure, depth, record count and every claimed length are checked
    // before serde sees the bytes.
    limits.check_cbor_pack(bytes)?;
    let records: Vec<SenmlRecord> =
        ciborium::de::from_reader_with_recursion_limit(bytes, limits.max_depth).map_err(|e| {
            DecodeError::Syntax {
                format: "SenML CBOR",
                detail: e.to_string(),
            }
        })?;
    if records.len() > limits.max_records {
        return Err(DecodeError::TooManyRecords {
            limit: limits.max_records,
        });
    }
    resolve(&records, ctx)
}

/// Applies RFC 8428 §4.6 resolution and maps names to device/channel.
pub fn resolve(
    records: &[SenmlRecord],
    ctx: &DecodeContext<'_>,
) -> Result<Vec<Reading>, DecodeError> {
    if records.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut out = Vec::with_capacity(records.len());
    let (mut bn, mut bt, mut bu, mut bv): (&str, f64, Option<&str>, Option<f64>) =
        ("", 0.0, None, None);
    for (index, r) in records.iter().enumerate() {
        if let Some(ver) = r.bver
            && ver > SUPPORTED_VERSION
        {
            return Err(DecodeError::UnsupportedVersion(ver));
        }
        if let Some(field) = &r.must_understand {
            return Err(DecodeError::MustUnderstand {
                index,
                field: field.clone(),
            });
        }
        if let Some(x) = r.bn.as_deref() {
            bn = x;
        }
        if let Some(x) = r.bt {
            bt = x;
        }
        if let Some(x) = r.bu.as_deref() {
            bu = Some(x);
        }
        if let Some(x) = r.bv {
            bv = Some(x);
        }
        let value = match (r.v, bv, r.other_value) {
            (Some(v), Some(base), _) => base + v,
            // Not `0.0 + v`: that would turn -0.0 into 0.0.
            (Some(v), None, _) => v,
            (None, _, Some(kind)) => return Err(DecodeError::UnsupportedValue { index, kind }),
            (None, Some(base), None) => base,
            (None, None, None) => return Err(DecodeError::MissingValue { index }),
        };
        let mut quality = Quality::empty();
        let t = r.t.unwrap_or(0.0);
        let time = bt + t;
        let ts = if !time.is_finite() {
            return Err(DecodeError::BadTime { index });
        } else if time == 0.0 {
            // "A time of zero indicates that the sensor does not know the
            // absolute time" (§4.5.3): the receive time is all we have.
            quality |= Quality::TIME_FROM_RECEIVE;
            ctx.now
        } else {
            // Base time and time are converted separately and added in integer
            // nanoseconds: their f64 sum would lose up to 256 ns near 2^31 s.
            let offset = Timestamp::from_secs_f64(bt)
                .zip(Timestamp::from_secs_f64(t))
                .and_then(|(a, b)| a.0.checked_add(b.0));
            let nanos = if time < RELATIVE_TIME_LIMIT {
                // Relative to now (§4.5.3), negative times included.
                offset.and_then(|o| ctx.now.0.checked_add(o))
            } else {
                offset
            };
            nanos.map(Timestamp).ok_or(DecodeError::BadTime { index })?
        };
        let name_owned;
        let name: &str = match r.n.as_deref() {
            Some(n) if bn.is_empty() => n,
            Some(n) => {
                name_owned = format!("{bn}{n}");
                &name_owned
            }
            None => bn,
        };
        let (device, channel) = split_name(name, ctx).ok_or(DecodeError::MissingName { index })?;
        let reading = Reading {
            device: device.to_owned(),
            channel: channel.to_owned(),
            ts,
            value,
            unit: r.u.as_deref().or(bu).map(str::to_owned),
            seq: None,
            quality,
        };
        reading
            .validate()
            .map_err(|source| DecodeError::Invalid { index, source })?;
        out.push(reading);
    }
    Ok(out)
}

fn split_name<'a>(name: &'a str, ctx: &DecodeContext<'a>) -> Option<(&'a str, &'a str)> {
    match name.rfind(['/', ':']) {
        Some(i) if i > 0 && i + 1 < name.len() => Some((&name[..i], &name[i + 1..])),
        Some(_) => None,
        None if name.is_empty() => None,
        None => ctx.default_device.map(|d| (d, name)),
    }
}

/// One record of an encoded pack; serialised with string (JSON) or integer (CBOR) labels.
struct EncRecord<'a> {
    bn: Option<String>,
    bt: Option<f64>,
    n: &'a str,
    u: Option<&'a str>,
    v: f64,
    t: f64,
    cbor: bool,
}

impl Serialize for EncRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        macro_rules! field {
            ($json:literal, $cbor:literal, $val:expr) => {
                if self.cbor {
                    m.serialize_entry(&($cbor as i64), $val)?;
                } else {
                    m.serialize_entry($json, $val)?;
                }
            };
        }
        if let Some(bn) = &self.bn {
            field!("bn", -2, bn);
        }
        if let Some(bt) = &self.bt {
            field!("bt", -3, bt);
        }
        field!("n", 0, self.n);
        if let Some(u) = self.u {
            field!("u", 1, u);
        }
        field!("v", 2, &self.v);
        if self.t != 0.0 {
            field!("t", 6, &self.t);
        }
        m.end()
    }
}

fn enc_records(readings: &[Reading], cbor: bool) -> Vec<EncRecord<'_>> {
    let mut out = Vec::with_capacity(readings.len());
    let mut cur_dev: Option<&str> = None;
    let mut base_t = 0i64;
    for r in readings {
        let new_base = cur_dev != Some(r.device.as_str());
        if new_base {
            cur_dev = Some(&r.device);
            base_t = r.ts.0;
        }
        out.push(EncRecord {
            bn: new_base.then(|| format!("{}/", r.device)),
            bt: new_base.then(|| Timestamp(base_t).as_secs_f64()),
            n: &r.channel,
            u: r.unit.as_deref(),
            v: r.value,
            // Offsets from the base time keep sub-microsecond precision
            // (i128: the difference of two i64 may not fit in one).
            t: (i128::from(r.ts.0) - i128::from(base_t)) as f64 / 1e9,
            cbor,
        });
    }
    out
}

/// Encodes readings as a SenML JSON pack (one base name per run of a device).
pub fn encode_json(readings: &[Reading]) -> Vec<u8> {
    serde_json::to_vec(&enc_records(readings, false)).unwrap_or_default()
}

/// Encodes readings as a SenML CBOR pack with integer labels.
pub fn encode_cbor(readings: &[Reading]) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail; an error here would be a bug in ciborium.
    let _ = ciborium::into_writer(&enc_records(readings, true), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use ciborium::Value;

    use super::*;

    /// 2023-11-14T22:13:20.123456789Z: not representable exactly as f64 seconds.
    const NOW: i64 = 1_700_000_000_123_456_789;

    fn ctx() -> DecodeContext<'static> {
        DecodeContext::new(Timestamp(NOW))
    }

    fn json(s: &str) -> Result<Vec<Reading>, DecodeError> {
        decode_json(s.as_bytes(), &ctx(), &DecodeLimits::default())
    }

    fn cbor_bytes(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn int(i: i64) -> Value {
        Value::Integer(i.into())
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    /// Asserts two instants are within a microsecond (f64 seconds near 2^31 carry ~0.24 µs).
    fn assert_near(actual: Timestamp, expected_nanos: i64) {
        assert!(
            (actual.0 - expected_nanos).abs() < 1_000,
            "{} is not within 1 µs of {expected_nanos}",
            actual.0
        );
    }

    #[test]
    fn rfc_single_datapoint_uses_the_receive_time_and_splits_the_urn_at_the_last_colon() {
        // RFC 8428 §5.1.1.
        let r = json(r#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].device, "urn:dev:ow");
        assert_eq!(r[0].channel, "10e2073a01080063");
        assert_eq!(r[0].unit.as_deref(), Some("Cel"));
        assert_eq!(r[0].value, 23.1);
        assert_eq!(r[0].ts, Timestamp(NOW));
        assert_eq!(r[0].quality, Quality::TIME_FROM_RECEIVE);
    }

    #[test]
    fn rfc_multiple_datapoints_carry_base_name_time_and_unit_forward() {
        // RFC 8428 §5.1.2 (base name) and §5.1.3 (base time, base unit, bver 5).
        let r = json(
            r#"[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
                 "bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
                {"n":"current","t":-5,"v":1.2},
                {"n":"current","t":-4,"v":1.3},
                {"n":"current","t":-3,"v":1.4},
                {"n":"current","t":-2,"v":1.5},
                {"n":"current","t":-1,"v":1.6},
                {"n":"current","v":1.7}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 7);
        for x in &r {
            assert_eq!(x.device, "urn:dev:ow:10e2073a0108006");
            assert!(x.quality.is_empty());
        }
        assert_eq!(
            (r[0].channel.as_str(), r[0].unit.as_deref(), r[0].value),
            ("voltage", Some("V"), 120.1)
        );
        assert_near(r[0].ts, 1_276_020_076_001_000_000);
        let values: Vec<f64> = r[1..].iter().map(|x| x.value).collect();
        assert_eq!(values, [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]);
        for (i, x) in r[1..].iter().enumerate() {
            assert_eq!(x.channel, "current");
            assert_eq!(x.unit.as_deref(), Some("A"), "bu applies where u is absent");
            assert_near(
                x.ts,
                1_276_020_076_001_000_000 - (5 - i as i64) * 1_000_000_000,
            );
        }
    }

    #[test]
    fn relative_times_are_resolved_against_now_to_the_nanosecond() {
        let r = json(
            r#"[{"bn":"pump-1/","n":"temp","t":-10,"v":1},
                {"n":"temp","t":-0.5,"v":2},
                {"bn":"pump-2/","bt":-60,"n":"temp","t":30,"v":3}]"#,
        )
        .unwrap();
        assert_eq!(r[0].ts, Timestamp(NOW - 10_000_000_000));
        assert_eq!(r[1].ts, Timestamp(NOW - 500_000_000));
        assert_eq!(r[2].ts, Timestamp(NOW - 30_000_000_000));
        assert_eq!(r[2].device, "pump-2");
        assert!(r.iter().all(|x| x.quality.is_empty()));
    }

    #[test]
    fn a_time_just_below_two_to_the_28_is_relative_and_at_it_is_absolute() {
        let r = json(r#"[{"n":"d/c","v":1,"t":-1e9},{"n":"d/c","v":1,"t":268435456}]"#).unwrap();
        // Any time below 2^28, negative ones included, is relative (§4.5.3).
        assert_eq!(r[0].ts, Timestamp(NOW - 1_000_000_000_000_000_000));
        assert_eq!(r[1].ts, Timestamp(268_435_456_000_000_000));
    }

    #[test]
    fn base_value_is_added_to_each_value() {
        let r = json(r#"[{"bn":"d/","bv":100,"n":"a","v":1.5},{"n":"b","v":-0.5}]"#).unwrap();
        assert_eq!(r[0].value, 101.5);
        assert_eq!(r[1].value, 99.5);
    }

    #[test]
    fn version_eleven_is_refused_and_ten_is_accepted() {
        assert_eq!(
            json(r#"[{"bver":11,"n":"d/c","v":1}]"#),
            Err(DecodeError::UnsupportedVersion(11))
        );
        assert!(json(r#"[{"bver":10,"n":"d/c","v":1}]"#).is_ok());
    }

    #[test]
    fn a_must_understand_field_is_refused() {
        let e = json(r#"[{"n":"d/c","v":1},{"n":"d/c","v":2,"foo_":1}]"#).unwrap_err();
        assert_eq!(
            e,
            DecodeError::MustUnderstand {
                index: 1,
                field: "foo_".into()
            }
        );
        // Unknown fields without the trailing underscore are ignored.
        assert!(json(r#"[{"n":"d/c","v":1,"foo":[1,{"x":2}]}]"#).is_ok());
    }

    #[test]
    fn string_boolean_and_data_values_are_refused_as_unsupported() {
        for (field, kind) in [
            (r#""vs":"on""#, "string value (vs)"),
            (r#""vb":true"#, "boolean value (vb)"),
            (r#""vd":"AQI""#, "data value (vd)"),
        ] {
            let e = json(&format!(r#"[{{"n":"d/c",{field}}}]"#)).unwrap_err();
            assert_eq!(e, DecodeError::UnsupportedValue { index: 0, kind });
            assert_eq!(e.reason_code(), "unsupported_value");
        }
    }

    #[test]
    fn a_record_without_any_value_is_refused() {
        assert_eq!(
            json(r#"[{"n":"d/c","v":1},{"n":"d/c"}]"#),
            Err(DecodeError::MissingValue { index: 1 })
        );
    }

    #[test]
    fn names_split_at_the_last_slash_or_colon() {
        let r = json(
            r#"[{"n":"pump-1/temp","v":1},{"n":"a:b","v":1},{"n":"site/line:3/flow","v":1},
                {"n":"x/y:z","v":1}]"#,
        )
        .unwrap();
        let split: Vec<(&str, &str)> = r
            .iter()
            .map(|x| (x.device.as_str(), x.channel.as_str()))
            .collect();
        assert_eq!(
            split,
            [
                ("pump-1", "temp"),
                ("a", "b"),
                ("site/line:3", "flow"),
                ("x/y", "z")
            ]
        );
    }

    #[test]
    fn a_bare_channel_name_uses_the_default_device_from_context() {
        let ctx = ctx().with_device(Some("from-topic"));
        let r = decode_json(br#"[{"n":"temp","v":1}]"#, &ctx, &DecodeLimits::default()).unwrap();
        assert_eq!(
            (r[0].device.as_str(), r[0].channel.as_str()),
            ("from-topic", "temp")
        );
    }

    #[test]
    fn a_bare_channel_name_without_a_default_device_is_missing_a_name() {
        assert_eq!(
            json(r#"[{"n":"temp","v":1}]"#),
            Err(DecodeError::MissingName { index: 0 })
        );
        // A separator at either end leaves device or channel empty.
        assert_eq!(
            json(r#"[{"bn":"dev/","v":1}]"#),
            Err(DecodeError::MissingName { index: 0 })
        );
        assert_eq!(
            json(r#"[{"n":"/temp","v":1}]"#),
            Err(DecodeError::MissingName { index: 0 })
        );
        assert_eq!(
            json(r#"[{"v":1}]"#),
            Err(DecodeError::MissingName { index: 0 })
        );
    }

    #[test]
    fn cbor_with_integer_labels_decodes_the_same_as_json() {
        let from_json = json(
            r#"[{"bver":10,"bn":"pump-1/","bt":1700000000.5,"bu":"Cel","bv":10,"n":"temp","v":1.5,"t":-1},
                {"n":"pressure","u":"bar","v":2,"s":7,"ut":60}]"#,
        )
        .unwrap();
        let pack = Value::Array(vec![
            Value::Map(vec![
                (int(-1), int(10)),
                (int(-2), text("pump-1/")),
                (int(-3), Value::Float(1_700_000_000.5)),
                (int(-4), text("Cel")),
                (int(-5), int(10)),
                (int(0), text("temp")),
                (int(2), Value::Float(1.5)),
                (int(6), int(-1)),
            ]),
            Value::Map(vec![
                (int(0), text("pressure")),
                (int(1), text("bar")),
                (int(2), int(2)),
                (int(5), int(7)),
                (int(7), int(60)),
            ]),
        ]);
        let from_cbor = decode_cbor(&cbor_bytes(&pack), &ctx(), &DecodeLimits::default()).unwrap();
        assert_eq!(from_cbor, from_json);
        assert_eq!(from_cbor[0].value, 11.5);
        assert_eq!(from_cbor[1].value, 12.0);
        assert_eq!(from_cbor[1].unit.as_deref(), Some("bar"));
    }

    #[test]
    fn cbor_string_labels_and_negative_must_understand_labels_are_handled() {
        let pack = Value::Array(vec![Value::Map(vec![
            (text("n"), text("d/c")),
            (text("v"), int(3)),
        ])]);
        let r = decode_cbor(&cbor_bytes(&pack), &ctx(), &DecodeLimits::default()).unwrap();
        assert_eq!(r[0].value, 3.0);
        let pack = Value::Array(vec![Value::Map(vec![
            (int(0), text("d/c")),
            (int(2), int(3)),
            (int(-7), int(1)),
        ])]);
        let e = decode_cbor(&cbor_bytes(&pack), &ctx(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            e,
            DecodeError::MustUnderstand {
                index: 0,
                field: "-7".into()
            }
        );
    }

    #[test]
    fn a_cbor_array_claiming_two_to_the_60_elements_is_refused_before_allocating() {
        let mut bytes = vec![0x9b];
        bytes.extend_from_slice(&(1u64 << 60).to_be_bytes());
        bytes.extend_from_slice(&[0xa0; 4]);
        let e = decode_cbor(&bytes, &ctx(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e, DecodeError::TooManyRecords { limit: 10_000 });
    }

    #[test]
    fn a_cbor_text_header_claiming_a_huge_length_is_a_syntax_error() {
        // [{0: text(2^63 - 1 bytes)...}] with only a few bytes behind the header.
        let mut bytes = vec![0x81, 0xa1, 0x00, 0x7b];
        bytes.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        bytes.extend_from_slice(b"abc");
        let e = decode_cbor(&bytes, &ctx(), &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Syntax {
                    format: "SenML CBOR",
                    ..
                }
            ),
            "{e:?}"
        );
        // ciborium itself reads strings in chunks rather than trusting the
        // header: without our scan it also fails cleanly instead of allocating.
        assert!(ciborium::de::from_reader::<Vec<SenmlRecord>, _>(bytes.as_slice()).is_err());
        let top_level = [0x7b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let e = decode_cbor(&top_level, &ctx(), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, DecodeError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn truncated_and_trailing_cbor_is_a_syntax_error() {
        let good = cbor_bytes(&Value::Array(vec![Value::Map(vec![
            (int(0), text("d/c")),
            (int(2), int(1)),
        ])]));
        assert!(decode_cbor(&good, &ctx(), &DecodeLimits::default()).is_ok());
        for cut in 1..good.len() {
            let e = decode_cbor(&good[..cut], &ctx(), &DecodeLimits::default()).unwrap_err();
            assert!(
                matches!(e, DecodeError::Syntax { .. }),
                "cut at {cut}: {e:?}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0x00);
        let e = decode_cbor(&trailing, &ctx(), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, DecodeError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn indefinite_length_cbor_packs_are_counted_while_scanning() {
        // [_ {0:"d/c", 2:1}, {0:"d/c", 2:2}, {0:"d/c", 2:3} ]
        let mut bytes = vec![0x9f];
        for v in 1..=3u8 {
            bytes.extend_from_slice(&[0xa2, 0x00, 0x63, b'd', b'/', b'c', 0x02, v]);
        }
        bytes.push(0xff);
        let r = decode_cbor(&bytes, &ctx(), &DecodeLimits::default()).unwrap();
        assert_eq!(
            r.iter().map(|x| x.value).collect::<Vec<_>>(),
            [1.0, 2.0, 3.0]
        );
        let limits = DecodeLimits {
            max_records: 2,
            ..Default::default()
        };
        assert_eq!(
            decode_cbor(&bytes, &ctx(), &limits),
            Err(DecodeError::TooManyRecords { limit: 2 })
        );
    }

    #[test]
    fn deep_nesting_is_refused_in_json_and_cbor() {
        let deep_json = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(json(&deep_json), Err(DecodeError::TooDeep { limit: 8 }));
        let hidden = r#"[{"n":"d/c","v":1,"x":[[[[[[[[[1]]]]]]]]]}]"#;
        assert_eq!(json(hidden), Err(DecodeError::TooDeep { limit: 8 }));

        let mut deep_cbor = vec![0x81; 10_000];
        deep_cbor.push(0x00);
        let e = decode_cbor(&deep_cbor, &ctx(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e, DecodeError::TooDeep { limit: 8 });
        // Indefinite-length nesting too.
        let mut deep_cbor = vec![0x9f; 10_000];
        deep_cbor.extend(std::iter::repeat_n(0xff, 10_000));
        let e = decode_cbor(&deep_cbor, &ctx(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e, DecodeError::TooDeep { limit: 8 });
    }

    #[test]
    fn an_oversized_payload_is_refused_before_parsing() {
        let limits = DecodeLimits {
            max_bytes: 16,
            ..Default::default()
        };
        let bytes = br#"[{"n":"d/c","v":1},{"n":"d/c","v":2}]"#;
        let e = decode_json(bytes, &ctx(), &limits).unwrap_err();
        assert_eq!(
            e,
            DecodeError::TooLarge {
                size: bytes.len(),
                limit: 16
            }
        );
        let e = decode_cbor(&[0x80; 17], &ctx(), &limits).unwrap_err();
        assert_eq!(
            e,
            DecodeError::TooLarge {
                size: 17,
                limit: 16
            }
        );
        assert_eq!(decode_json(b"", &ctx(), &limits), Err(DecodeError::Empty));
        assert_eq!(json("[]"), Err(DecodeError::Empty));
    }

    #[test]
    fn too_many_json_records_are_refused() {
        let limits = DecodeLimits {
            max_records: 2,
            ..Default::default()
        };
        let bytes = br#"[{"n":"d/a","v":1},{"n":"d/b","v":2},{"n":"d/c","v":3}]"#;
        let e = decode_json(bytes, &ctx(), &limits).unwrap_err();
        assert_eq!(e, DecodeError::TooManyRecords { limit: 2 });
        assert!(decode_json(&bytes[..], &ctx(), &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn error_text_inside_the_payload_cannot_pose_as_too_many_records() {
        let e = json(r#"[{"n":"d/c","v":"outpost: too many records"}]"#).unwrap_err();
        assert!(matches!(e, DecodeError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn nan_in_cbor_is_an_invalid_non_finite_value() {
        for v in [f64::NAN, f64::INFINITY] {
            let pack = Value::Array(vec![Value::Map(vec![
                (int(0), text("d/c")),
                (int(2), Value::Float(v)),
            ])]);
            let e = decode_cbor(&cbor_bytes(&pack), &ctx(), &DecodeLimits::default()).unwrap_err();
            assert!(matches!(e, DecodeError::Invalid { index: 0, .. }), "{e:?}");
            assert_eq!(e.reason_code(), "non_finite_value");
        }
        // A NaN time is a bad time, not a reading at "now".
        let pack = Value::Array(vec![Value::Map(vec![
            (int(0), text("d/c")),
            (int(2), int(1)),
            (int(6), Value::Float(f64::NAN)),
        ])]);
        let e = decode_cbor(&cbor_bytes(&pack), &ctx(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e, DecodeError::BadTime { index: 0 });
    }

    #[test]
    fn encoding_uses_one_base_name_and_time_per_run_of_a_device() {
        let t0 = Timestamp(1_700_000_000_000_000_000);
        let readings = vec![
            Reading::new("pump-1", "temp", t0, 21.5)
                .unwrap()
                .with_unit("Cel"),
            Reading::new("pump-1", "flow", Timestamp(t0.0 + 250_000_000), 3.0).unwrap(),
            Reading::new("pump-2", "temp", Timestamp(t0.0 + 1_000_000_000), 19.0).unwrap(),
        ];
        let text = String::from_utf8(encode_json(&readings)).unwrap();
        assert_eq!(
            text,
            r#"[{"bn":"pump-1/","bt":1700000000.0,"n":"temp","u":"Cel","v":21.5},{"n":"flow","v":3.0,"t":0.25},{"bn":"pump-2/","bt":1700000001.0,"n":"temp","v":19.0}]"#
        );
        assert_eq!(json(&text).unwrap(), readings);
        let back = decode_cbor(&encode_cbor(&readings), &ctx(), &DecodeLimits::default()).unwrap();
        assert_eq!(back, readings);
    }

    #[test]
    fn encoding_readings_at_the_ends_of_time_does_not_overflow() {
        let readings = vec![
            Reading::new("d", "c", Timestamp(i64::MIN), 1.0).unwrap(),
            Reading::new("d", "c", Timestamp(i64::MAX), 1.0).unwrap(),
        ];
        assert!(!encode_json(&readings).is_empty());
        assert!(!encode_cbor(&readings).is_empty());
    }
}
