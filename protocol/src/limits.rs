//! Decoder limits and the one error type every payload decoder returns.
//!
//! Limits are checked before work is done: size before parsing, nesting while
//! scanning, record count before resolving. A decoder never panics and never
//! allocates in proportion to a length the input merely *claims*.

use crate::reading::ReadingError;

/// Bounds applied to one payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest payload in bytes.
    pub max_bytes: usize,
    /// Most readings one payload may yield.
    pub max_records: usize,
    /// Deepest nesting of arrays/objects (maps) accepted.
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_bytes: 256 * 1024, max_records: 10_000, max_depth: 8 }
    }
}

/// Why a payload could not be decoded. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is {size} bytes, limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload holds more than {limit} records")]
    TooManyRecords { limit: usize },
    #[error("payload nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("payload is empty")]
    Empty,
    #[error("malformed {format}: {detail}")]
    Syntax { format: &'static str, detail: String },
    #[error("unexpected structure: {0}")]
    Schema(String),
    #[error("SenML version {0} is not supported (at most 10)")]
    UnsupportedVersion(i64),
    #[error("record {index}: field {field:?} must be understood but is not supported")]
    MustUnderstand { index: usize, field: String },
    #[error("record {index}: only numeric values are supported, found {kind}")]
    UnsupportedValue { index: usize, kind: &'static str },
    #[error("record {index}: no value")]
    MissingValue { index: usize },
    #[error("record {index}: no name, and no device known from context")]
    MissingName { index: usize },
    #[error("record {index}: time is not a finite, representable number")]
    BadTime { index: usize },
    #[error("record {index}: {source}")]
    Invalid { index: usize, source: ReadingError },
    #[error("unknown payload format")]
    UnknownFormat,
}

impl DecodeError {
    /// A short stable code for metrics labels and quarantine entries.
    pub fn reason_code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooManyRecords { .. } => "too_many_records",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::Empty => "empty",
            DecodeError::Syntax { .. } => "syntax",
            DecodeError::Schema(_) => "schema",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::MustUnderstand { .. } => "must_understand",
            DecodeError::UnsupportedValue { .. } => "unsupported_value",
            DecodeError::MissingValue { .. } => "missing_value",
            DecodeError::MissingName { .. } => "missing_name",
            DecodeError::BadTime { .. } => "bad_time",
            DecodeError::Invalid { source, .. } => source.reason_code(),
            DecodeError::UnknownFormat => "unknown_format",
        }
    }
}

impl DecodeLimits {
    pub(crate) fn check_size(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() > self.max_bytes {
            return Err(DecodeError::TooLarge { size: bytes.len(), limit: self.max_bytes });
        }
        Ok(())
    }

    /// Scans JSON text for nesting depth without parsing it (strings are skipped),
    /// so a deeply nested payload is refused before serde recurses into it.
    pub(crate) fn check_json_depth(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for &b in bytes {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > self.max_depth {
                        return Err(DecodeError::TooDeep { limit: self.max_depth });
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_scan_ignores_brackets_inside_strings() {
        let limits = DecodeLimits { max_depth: 2, ..Default::default() };
        assert!(limits.check_json_depth(br#"[{"n":"[[[[{{{{"}]"#).is_ok());
        assert!(limits.check_json_depth(br#"[{"n":"\"[[["}]"#).is_ok());
        assert_eq!(
            limits.check_json_depth(b"[[[1]]]"),
            Err(DecodeError::TooDeep { limit: 2 })
        );
    }

    #[test]
    fn size_check_rejects_empty_and_oversized() {
        let limits = DecodeLimits { max_bytes: 4, ..Default::default() };
        assert_eq!(limits.check_size(b""), Err(DecodeError::Empty));
        assert_eq!(limits.check_size(b"12345"), Err(DecodeError::TooLarge { size: 5, limit: 4 }));
        assert!(limits.check_size(b"1234").is_ok());
    }
}

/// The element count a CBOR array header at the start of `bytes` declares,
/// `None` when it is not a definite-length array. Lets a decoder refuse a
/// too-long pack before allocating anything for it.
pub(crate) fn cbor_array_len(bytes: &[u8]) -> Option<u64> {
    let first = *bytes.first()?;
    if first >> 5 != 4 {
        return None;
    }
    let extra = |n: usize| -> Option<u64> {
        let b = bytes.get(1..1 + n)?;
        Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    match first & 0x1f {
        n @ 0..=23 => Some(u64::from(n)),
        24 => extra(1),
        25 => extra(2),
        26 => extra(4),
        27 => extra(8),
        _ => None,
    }
}
