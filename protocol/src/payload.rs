//! One entry point for every payload format a source may receive.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{DecodeError, DecodeLimits};
use crate::reading::{Reading, Timestamp};
use crate::{csv, plain, senml};

/// What a decoder needs to know about where and when a payload arrived.
#[derive(Clone, Copy, Debug)]
pub struct DecodeContext<'a> {
    /// The receive time: used for relative SenML times and missing timestamps.
    pub now: Timestamp,
    /// Device to use when a payload names only a channel (e.g. from the MQTT topic).
    pub default_device: Option<&'a str>,
}

impl<'a> DecodeContext<'a> {
    pub fn new(now: Timestamp) -> Self {
        DecodeContext {
            now,
            default_device: None,
        }
    }

    pub fn with_device(mut self, device: Option<&'a str>) -> Self {
        self.default_device = device;
        self
    }
}

/// A payload format. Config names are the lower-case ones in [`PayloadFormat::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// `application/senml+json` (RFC 8428).
    SenmlJson,
    /// `application/senml+cbor` (RFC 8428 §6).
    SenmlCbor,
    /// The plain JSON object form, or an array of such objects.
    Json,
    /// Detect SenML JSON, SenML CBOR or plain JSON from the first byte(s).
    Auto,
    /// `text/csv` lines `device,channel,value[,timestamp]` ([`crate::csv`]).
    /// Never chosen by `Auto`: it must be named.
    Csv,
}

impl PayloadFormat {
    pub fn name(self) -> &'static str {
        match self {
            PayloadFormat::SenmlJson => "senml_json",
            PayloadFormat::SenmlCbor => "senml_cbor",
            PayloadFormat::Json => "json",
            PayloadFormat::Auto => "auto",
            PayloadFormat::Csv => "csv",
        }
    }

    /// Decodes `bytes` into validated readings, or a typed error.
    pub fn decode(
        self,
        bytes: &[u8],
        ctx: &DecodeContext<'_>,
        limits: &DecodeLimits,
    ) -> Result<Vec<Reading>, DecodeError> {
        match self {
            PayloadFormat::SenmlJson => senml::decode_json(bytes, ctx, limits),
            PayloadFormat::SenmlCbor => senml::decode_cbor(bytes, ctx, limits),
            PayloadFormat::Json => plain::decode(bytes, ctx, limits),
            PayloadFormat::Auto => Self::detect(bytes)?.decode(bytes, ctx, limits),
            PayloadFormat::Csv => csv::decode(bytes, ctx, limits),
        }
    }

    /// Guesses the format from content: a JSON array whose first element has a
    /// SenML label is SenML JSON; other JSON is the plain form; a CBOR array
    /// header is SenML CBOR (a SenML CBOR pack is always an array).
    pub fn detect(bytes: &[u8]) -> Result<PayloadFormat, DecodeError> {
        let trimmed = bytes.trim_ascii_start();
        match trimmed.first() {
            None => Err(DecodeError::Empty),
            Some(b'{') => Ok(PayloadFormat::Json),
            Some(b'[') => {
                let head = &trimmed[..trimmed.len().min(256)];
                let looks_senml = [&b"\"bn\""[..], b"\"n\"", b"\"bt\"", b"\"bver\"", b"\"v\""]
                    .iter()
                    .any(|label| head.windows(label.len()).any(|w| w == *label));
                Ok(if looks_senml {
                    PayloadFormat::SenmlJson
                } else {
                    PayloadFormat::Json
                })
            }
            Some(&b) if b >> 5 == 4 => Ok(PayloadFormat::SenmlCbor),
            Some(_) => Err(DecodeError::UnknownFormat),
        }
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PayloadFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "senml_json" | "senml+json" => Ok(PayloadFormat::SenmlJson),
            "senml_cbor" | "senml+cbor" => Ok(PayloadFormat::SenmlCbor),
            "json" => Ok(PayloadFormat::Json),
            "auto" => Ok(PayloadFormat::Auto),
            "csv" => Ok(PayloadFormat::Csv),
            other => Err(format!("unknown payload format {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_recognises_senml_json_by_its_labels() {
        for p in [
            &br#"[{"bn":"d/","n":"c","v":1}]"#[..],
            br#"  [{"n":"d/c","v":1}]"#,
            b"\n[{\"bver\":10}]",
        ] {
            assert_eq!(PayloadFormat::detect(p), Ok(PayloadFormat::SenmlJson));
        }
    }

    #[test]
    fn detect_takes_objects_and_other_arrays_for_plain_json() {
        assert_eq!(
            PayloadFormat::detect(br#"{"device":"d","t":1}"#),
            Ok(PayloadFormat::Json)
        );
        assert_eq!(
            PayloadFormat::detect(br#" [{"device":"d","t":1}]"#),
            Ok(PayloadFormat::Json)
        );
    }

    #[test]
    fn detect_takes_a_cbor_array_header_for_senml_cbor() {
        let pack = crate::senml::encode_cbor(&[Reading::new(
            "d",
            "c",
            Timestamp(1_700_000_000_000_000_000),
            1.0,
        )
        .unwrap()]);
        assert_eq!(PayloadFormat::detect(&pack), Ok(PayloadFormat::SenmlCbor));
        assert_eq!(
            PayloadFormat::detect(&[0x9f, 0xff]),
            Ok(PayloadFormat::SenmlCbor)
        );
    }

    #[test]
    fn detect_refuses_garbage_and_empty_input() {
        assert_eq!(PayloadFormat::detect(b""), Err(DecodeError::Empty));
        assert_eq!(PayloadFormat::detect(b"   \n"), Err(DecodeError::Empty));
        for garbage in [
            &b"hello"[..],
            b"\x00\x01",
            b"\xa1\x00\x00",
            b"42",
            b"\"str\"",
        ] {
            assert_eq!(
                PayloadFormat::detect(garbage),
                Err(DecodeError::UnknownFormat),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn auto_decodes_each_format_the_same_as_its_own_decoder() {
        let ctx = DecodeContext::new(Timestamp(1_700_000_000_000_000_000));
        let limits = DecodeLimits::default();
        let readings =
            vec![Reading::new("d", "c", Timestamp(1_700_000_000_000_000_000), 1.5).unwrap()];
        for (format, bytes) in [
            (
                PayloadFormat::SenmlJson,
                crate::senml::encode_json(&readings),
            ),
            (
                PayloadFormat::SenmlCbor,
                crate::senml::encode_cbor(&readings),
            ),
            (
                PayloadFormat::Json,
                br#"{"device":"d","ts":1700000000,"c":1.5}"#.to_vec(),
            ),
        ] {
            assert_eq!(
                PayloadFormat::Auto.decode(&bytes, &ctx, &limits),
                Ok(readings.clone()),
                "{format}"
            );
            assert_eq!(
                format.decode(&bytes, &ctx, &limits),
                Ok(readings.clone()),
                "{format}"
            );
        }
        assert_eq!(
            PayloadFormat::Auto.decode(b"nope", &ctx, &limits),
            Err(DecodeError::UnknownFormat)
        );
    }

    #[test]
    fn format_names_round_trip_through_from_str() {
        for f in [
            PayloadFormat::SenmlJson,
            PayloadFormat::SenmlCbor,
            PayloadFormat::Json,
            PayloadFormat::Auto,
            PayloadFormat::Csv,
        ] {
            assert_eq!(f.name().parse::<PayloadFormat>(), Ok(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert!("xml".parse::<PayloadFormat>().is_err());
    }
}
