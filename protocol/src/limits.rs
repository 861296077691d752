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
        DecodeLimits {
            max_bytes: 256 * 1024,
            max_records: 10_000,
            max_depth: 8,
        }
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
    Syntax {
        format: &'static str,
        detail: String,
    },
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
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: self.max_bytes,
            });
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
                        return Err(DecodeError::TooDeep {
                            limit: self.max_depth,
                        });
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

/// One open container while scanning CBOR.
struct CborFrame {
    /// Items still expected; `None` for an indefinite-length container.
    remaining: Option<u64>,
    /// For an indefinite-length byte or text string: the major type its chunks must have.
    chunks_of: Option<u8>,
}

impl DecodeLimits {
    /// Walks the structure of a CBOR pack without decoding or allocating for it:
    /// the top level must be one array that fills `bytes` exactly, nest at most
    /// `max_depth` levels and hold at most `max_records` items, and every length
    /// a header claims must fit in what is left of the input. Run before serde so
    /// that no claimed length, count or depth reaches the decoder unchecked.
    pub(crate) fn check_cbor_pack(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        const FORMAT: &str = "SenML CBOR";
        let syntax = |pos: usize, what: &str| DecodeError::Syntax {
            format: FORMAT,
            detail: format!("{what} at offset {pos}"),
        };
        if bytes.first().is_none_or(|b| b >> 5 != 4) {
            return Err(syntax(0, "expected an array (a SenML pack)"));
        }
        let mut stack: Vec<CborFrame> = Vec::new();
        let mut records = 0usize;
        let mut pos = 0usize;
        loop {
            let start = pos;
            let ib = *bytes
                .get(pos)
                .ok_or_else(|| syntax(pos, "unexpected end of input"))?;
            pos += 1;
            let (major, info) = (ib >> 5, ib & 0x1f);
            let arg = match info {
                0..=23 => Some(u64::from(info)),
                24..=27 => {
                    let n = 1usize << (info - 24);
                    let b = bytes
                        .get(pos..pos + n)
                        .ok_or_else(|| syntax(start, "truncated header"))?;
                    pos += n;
                    Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
                }
                31 => None,
                _ => return Err(syntax(start, "reserved additional information")),
            };
            let left = (bytes.len() - pos) as u64;
            if let Some(frame) = stack.last()
                && let Some(m) = frame.chunks_of
                && ib != 0xff
                && (major != m || arg.is_none())
            {
                return Err(syntax(start, "bad chunk in an indefinite-length string"));
            }
            // Whether this header completed an item (as opposed to opening one).
            let done = match (major, arg) {
                (0 | 1, Some(_)) => true,
                (2 | 3, Some(len)) => {
                    if len > left {
                        return Err(syntax(start, "string longer than the input"));
                    }
                    pos += len as usize;
                    true
                }
                (4 | 5, Some(n)) => {
                    if stack.is_empty() && n > self.max_records as u64 {
                        return Err(DecodeError::TooManyRecords {
                            limit: self.max_records,
                        });
                    }
                    let items = if major == 5 {
                        n.checked_mul(2)
                    } else {
                        Some(n)
                    };
                    // Every item takes at least one byte.
                    let items = items
                        .filter(|&i| i <= left)
                        .ok_or_else(|| syntax(start, "container longer than the input"))?;
                    if items == 0 {
                        true
                    } else {
                        self.push_frame(
                            &mut stack,
                            CborFrame {
                                remaining: Some(items),
                                chunks_of: None,
                            },
                        )?;
                        false
                    }
                }
                (2..=5, None) => {
                    let chunks_of = (major <= 3).then_some(major);
                    self.push_frame(
                        &mut stack,
                        CborFrame {
                            remaining: None,
                            chunks_of,
                        },
                    )?;
                    false
                }
                // A tag annotates the item that follows it.
                (6, Some(_)) => false,
                (7, Some(_)) => true,
                (7, None) => match stack.pop() {
                    Some(CborFrame {
                        remaining: None, ..
                    }) => true,
                    _ => return Err(syntax(start, "unexpected break")),
                },
                _ => return Err(syntax(start, "malformed header")),
            };
            if !done {
                continue;
            }
            // Close every container this item completes.
            loop {
                if stack.len() == 1 {
                    records += 1;
                    if records > self.max_records {
                        return Err(DecodeError::TooManyRecords {
                            limit: self.max_records,
                        });
                    }
                }
                match stack.last_mut() {
                    None => {
                        return if pos == bytes.len() {
                            Ok(())
                        } else {
                            Err(syntax(pos, "trailing bytes after the pack"))
                        };
                    }
                    Some(CborFrame {
                        remaining: Some(n), ..
                    }) => {
                        *n -= 1;
                        if *n > 0 {
                            break;
                        }
                        stack.pop();
                    }
                    Some(CborFrame {
                        remaining: None, ..
                    }) => break,
                }
            }
        }
    }

    fn push_frame(&self, stack: &mut Vec<CborFrame>, frame: CborFrame) -> Result<(), DecodeError> {
        if stack.len() + 1 > self.max_depth {
            return Err(DecodeError::TooDeep {
                limit: self.max_depth,
            });
        }
        stack.push(frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_scan_ignores_brackets_inside_strings() {
        let limits = DecodeLimits {
            max_depth: 2,
            ..Default::default()
        };
        assert!(limits.check_json_depth(br#"[{"n":"[[[[{{{{"}]"#).is_ok());
        assert!(limits.check_json_depth(br#"[{"n":"\"[[["}]"#).is_ok());
        assert_eq!(
            limits.check_json_depth(b"[[[1]]]"),
            Err(DecodeError::TooDeep { limit: 2 })
        );
    }

    #[test]
    fn size_check_rejects_empty_and_oversized() {
        let limits = DecodeLimits {
            max_bytes: 4,
            ..Default::default()
        };
        assert_eq!(limits.check_size(b""), Err(DecodeError::Empty));
        assert_eq!(
            limits.check_size(b"12345"),
            Err(DecodeError::TooLarge { size: 5, limit: 4 })
        );
        assert!(limits.check_size(b"1234").is_ok());
    }

    #[test]
    fn cbor_scan_accepts_a_well_formed_pack_with_tags_floats_and_chunked_strings() {
        let limits = DecodeLimits::default();
        // [{0: tag(0) "a/b", 2: 1.5 (f64), 3: (_ "o" "n"), 4: true}]
        let mut pack = vec![0x81, 0xa4, 0x00, 0xc0, 0x63, b'a', b'/', b'b', 0x02, 0xfb];
        pack.extend_from_slice(&1.5f64.to_be_bytes());
        pack.extend_from_slice(&[0x03, 0x7f, 0x61, b'o', 0x61, b'n', 0xff, 0x04, 0xf5]);
        assert_eq!(limits.check_cbor_pack(&pack), Ok(()));
    }

    #[test]
    fn cbor_scan_refuses_malformed_structure() {
        let limits = DecodeLimits::default();
        for bad in [
            &[0xa0][..],                                                   // a map, not a pack
            &[0x82, 0xa0],                                                 // one item short
            &[0x81, 0xa0, 0xa0],                                           // trailing item
            &[0x81, 0xff],                         // break in a definite array
            &[0x81, 0x1c],                         // reserved additional information
            &[0x81, 0x7f, 0x41, 0x00, 0xff],       // byte chunk in a text string
            &[0x81, 0x5a, 0xff, 0xff, 0xff, 0xff], // byte string longer than the input
            &[0x81, 0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // 2^64 - 1 pairs
        ] {
            assert!(
                matches!(limits.check_cbor_pack(bad), Err(DecodeError::Syntax { .. })),
                "{bad:02x?}"
            );
        }
    }
}
