//! Conditional requests and what a response status means for the poll loop.
//! No I/O: headers in, decisions out.
//!
//! - The validators (`ETag`, `Last-Modified`) of the last stored response are
//!   sent back as `If-None-Match` / `If-Modified-Since`; 304 means nothing new.
//! - They are the source's checkpoint `rest:<name>`, stored in the same atomic
//!   outbox write as the readings of that response: after a crash the gateway
//!   asks "anything newer than what I stored?", never "than what I saw".

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{
    ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    RETRY_AFTER,
};
use serde::{Deserialize, Serialize};

/// Longest validator kept (a header value the server sent us).
const MAX_VALIDATOR_LEN: usize = 512;

/// The validators of a stored response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    v: u8,
    #[serde(flatten)]
    validators: Validators,
}

impl Validators {
    /// From a 2xx response's headers (absent or unusable values: none).
    pub fn from_headers(h: &HeaderMap) -> Self {
        let get = |name: HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= MAX_VALIDATOR_LEN)
                .map(str::to_owned)
        };
        Validators {
            etag: get(ETAG),
            last_modified: get(LAST_MODIFIED),
        }
    }

    /// The conditional request headers.
    pub fn request_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Some(v) = self
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            out.push((IF_NONE_MATCH, v));
        }
        if let Some(v) = self
            .last_modified
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            out.push((IF_MODIFIED_SINCE, v));
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Stored {
            v: 1,
            validators: self.clone(),
        })
        .unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let s: Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.v != 1 {
            return Err(format!("checkpoint format {} is not supported", s.v));
        }
        Ok(s.validators)
    }
}

/// What to do with a response, by its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: read and map the body.
    Body,
    /// 304: nothing new since the stored validators.
    NotModified,
    /// Try again later: after `retry_after` when the server said so (429 or
    /// 503 with `Retry-After`), else after the backoff delay.
    Retry {
        retry_after: Option<Duration>,
        reason: String,
        /// Metric outcome: `rate_limited` or `http_error`.
        outcome: &'static str,
    },
}

/// Classifies a response. `now` is for an HTTP-date `Retry-After`.
pub fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Answer {
    if status == StatusCode::NOT_MODIFIED {
        return Answer::NotModified;
    }
    if status.is_success() {
        return Answer::Body;
    }
    let retry_after = if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
    } else {
        None
    };
    Answer::Retry {
        outcome: if retry_after.is_some() || status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limited"
        } else {
            "http_error"
        },
        retry_after,
        reason: format!("HTTP {status}"),
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). A date in
/// the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before the next attempt: the backoff delay, or longer when the
/// server asked for it (capped at `max_retry_after`).
pub fn retry_delay(
    backoff: Duration,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Duration {
    match retry_after {
        Some(r) => r.min(max_retry_after).max(backoff),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn validators_of_a_response_become_the_next_conditional_request() {
        let h = headers(&[
            ("etag", "\"v42\""),
            ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ]);
        let v = Validators::from_headers(&h);
        assert_eq!(v.etag.as_deref(), Some("\"v42\""));
        let req = v.request_headers();
        assert_eq!(req[0].0, IF_NONE_MATCH);
        assert_eq!(req[0].1, "\"v42\"");
        assert_eq!(req[1].0, IF_MODIFIED_SINCE);
        assert_eq!(req[1].1, "Thu, 01 Jan 2026 00:00:00 GMT");
        // The checkpoint round-trips, and an empty one asks unconditionally.
        assert_eq!(Validators::decode(&v.encode()).unwrap(), v);
        let none = Validators::from_headers(&HeaderMap::new());
        assert_eq!(none, Validators::default());
        assert!(none.request_headers().is_empty());
        assert_eq!(Validators::decode(&none.encode()).unwrap(), none);
        assert!(Validators::decode(b"{\"v\":9}").is_err());
        assert!(Validators::decode(b"[").is_err());
        // An absurdly long validator is not kept.
        let long = headers(&[("etag", &"x".repeat(600))]);
        assert_eq!(Validators::from_headers(&long).etag, None);
    }

    #[test]
    fn statuses_map_to_what_the_loop_does() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &none, now), Answer::Body);
        assert_eq!(
            classify(StatusCode::NOT_MODIFIED, &none, now),
            Answer::NotModified
        );
        let r = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "7")]),
            now,
        );
        assert!(matches!(
            r,
            Answer::Retry { retry_after: Some(d), outcome: "rate_limited", .. } if d == Duration::from_secs(7)
        ));
        let r = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "Thu, 01 Jan 2026 00:01:00 GMT")]),
            now,
        );
        assert!(matches!(
            r,
            Answer::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(60)
        ));
        // Retry-After on other statuses is not ours to honour; plain errors back off.
        let r = classify(
            StatusCode::INTERNAL_SERVER_ERROR,
            &headers(&[("retry-after", "7")]),
            now,
        );
        assert!(matches!(
            r,
            Answer::Retry {
                retry_after: None,
                outcome: "http_error",
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &none, now),
            Answer::Retry { .. }
        ));
    }

    #[test]
    fn retry_after_parsing_and_the_resulting_delay() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        let s = Duration::from_secs;
        assert_eq!(retry_delay(s(1), Some(s(30)), s(3600)), s(30));
        assert_eq!(retry_delay(s(1), Some(s(99_999)), s(3600)), s(3600));
        assert_eq!(retry_delay(s(5), Some(s(1)), s(3600)), s(5));
        assert_eq!(retry_delay(s(5), None, s(3600)), s(5));
    }
}
