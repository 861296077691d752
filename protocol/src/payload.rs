//! One entry point for every payload format a source may receive.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{DecodeError, DecodeLimits};
use crate::reading::{Reading, Timestamp};
use crate::{plain, senml};

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
        DecodeContext { now, default_device: None }
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
}

impl PayloadFormat {
    pub fn name(self) -> &'static str {
        match self {
            PayloadFormat::SenmlJson => "senml_json",
            PayloadFormat::SenmlCbor => "senml_cbor",
            PayloadFormat::Json => "json",
            PayloadFormat::Auto => "auto",
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
        }
    }

    /// Guesses the format from content: a JSON array whose first element has a
    /// SenML label is SenML JSON; other JSON is the plain form; a CBOR array or
    /// map header is SenML CBOR.
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
                Ok(if looks_senml { PayloadFormat::SenmlJson } else { PayloadFormat::Json })
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
            other => Err(format!("unknown payload format {other:?}")),
        }
    }
}
