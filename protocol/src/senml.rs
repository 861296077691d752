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
                Ok(i64::try_from(v).map(Label::from_int).unwrap_or(Label::Unknown))
            }
        }
        d.deserialize_any(LabelVisitor)
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
                        Label::Bt => r.bt = Some(map.next_value()?),
                        Label::Bu => r.bu = Some(map.next_value()?),
                        Label::Bv => r.bv = Some(map.next_value()?),
                        Label::N => r.n = Some(map.next_value()?),
                        Label::U => r.u = Some(map.next_value()?),
                        Label::V => r.v = Some(map.next_value()?),
                        Label::T => r.t = Some(map.next_value()?),
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

struct PackSeed {
    limit: usize,
}

impl<'de> de::DeserializeSeed<'de> for PackSeed {
    type Value = BoundedPack;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BoundedPack, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackSeed {
    type Value = BoundedPack;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SenML pack (an array of records)")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedPack, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(r) = seq.next_element::<SenmlRecord>()? {
            if records.len() == self.limit {
                return Err(de::Error::custom(TOO_MANY_MARKER));
            }
            records.push(r);
        }
        Ok(BoundedPack { records })
    }
}

const TOO_MANY_MARKER: &str = "outpost: too many records";

fn syntax(format: &'static str, detail: String, limits: &DecodeLimits) -> DecodeError {
    if detail.contains(TOO_MANY_MARKER) {
        DecodeError::TooManyRecords { limit: limits.max_records }
    } else {
        DecodeError::Syntax { format, detail }
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
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let pack = de::DeserializeSeed::deserialize(PackSeed { limit: limits.max_records }, &mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|e| syntax("SenML JSON", e.to_string(), limits))?;
    resolve(&pack.records, ctx)
}

/// Decodes a SenML CBOR pack (`application/senml+cbor`).
pub fn decode_cbor(
    bytes: &[u8],
    ctx: &DecodeContext<'_>,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    limits.check_size(bytes)?;
    if let Some(n) = crate::limits::cbor_array_len(bytes)
        && n > limits.max_records as u64
    {
        return Err(DecodeError::TooManyRecords { limit: limits.max_records });
    }
    let records: Vec<SenmlRecord> =
        ciborium::de::from_reader_with_recursion_limit(bytes, limits.max_depth)
            .map_err(|e| syntax("SenML CBOR", e.to_string(), limits))?;
    if records.len() > limits.max_records {
        return Err(DecodeError::TooManyRecords { limit: limits.max_records });
    }
    let pack = BoundedPack { records };
    resolve(&pack.records, ctx)
}

/// Applies RFC 8428 §4.6 resolution and maps names to device/channel.
pub fn resolve(records: &[SenmlRecord], ctx: &DecodeContext<'_>) -> Result<Vec<Reading>, DecodeError> {
    if records.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut out = Vec::with_capacity(records.len());
    let (mut bn, mut bt, mut bu, mut bv): (&str, f64, Option<&str>, Option<f64>) = ("", 0.0, None, None);
    for (index, r) in records.iter().enumerate() {
        if let Some(ver) = r.bver
            && ver > SUPPORTED_VERSION
        {
            return Err(DecodeError::UnsupportedVersion(ver));
        }
        if let Some(field) = &r.must_understand {
            return Err(DecodeError::MustUnderstand { index, field: field.clone() });
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
            (Some(v), base, _) => base.unwrap_or(0.0) + v,
            (None, _, Some(kind)) => return Err(DecodeError::UnsupportedValue { index, kind }),
            (None, Some(base), None) => base,
            (None, None, None) => return Err(DecodeError::MissingValue { index }),
        };
        let mut quality = Quality::empty();
        let time = bt + r.t.unwrap_or(0.0);
        let ts = if !time.is_finite() {
            return Err(DecodeError::BadTime { index });
        } else if r.t.is_none() && r.bt.is_none() && bt == 0.0 {
            // No time at all in the pack: the receive time is all we have.
            quality |= Quality::TIME_FROM_RECEIVE;
            ctx.now
        } else if time.abs() < RELATIVE_TIME_LIMIT {
            let abs = ctx.now.as_secs_f64() + time;
            Timestamp::from_secs_f64(abs).ok_or(DecodeError::BadTime { index })?
        } else {
            Timestamp::from_secs_f64(time).ok_or(DecodeError::BadTime { index })?
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
        reading.validate().map_err(|source| DecodeError::Invalid { index, source })?;
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
                if self.cbor { m.serialize_entry(&($cbor as i64), $val)?; } else { m.serialize_entry($json, $val)?; }
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
            // Offsets from the base time keep sub-microsecond precision.
            t: (r.ts.0 - base_t) as f64 / 1e9,
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
