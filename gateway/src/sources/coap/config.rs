//! `[coap]`: the CoAP source's settings.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::config::{ConfigProblem, LimitsConfig};

/// Largest reassembled payload accepted (a payload is held in memory whole).
const MAX_COAP_PAYLOAD: u64 = 16 * 1024 * 1024;

/// The CoAP source (`gateway/src/sources/coap/`). Every table in it is
/// bounded; what happens when one is full is stated on its field.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapSourceConfig {
    /// UDP address to listen on (5683 is CoAP's port). Plain CoAP, no DTLS:
    /// keep it on loopback or a trusted network.
    pub listen: SocketAddr,
    /// The resource readings are POSTed to, without slashes at its ends
    /// (`readings` → `coap://gw/readings`). `coap://gw/readings/{device}`
    /// also works and names the default device for payloads that name only
    /// channels.
    pub path: String,
    /// Largest payload, whole or reassembled from Block1 blocks; a larger one
    /// gets 4.13 Request Entity Too Large with Size1 set to this limit. Also
    /// the decoders' size limit for this source. Default: `limits.max_payload_bytes`.
    pub max_payload_bytes: Option<ByteSize>,
    /// How long a request's Message ID is remembered per endpoint, so that a
    /// retransmission is answered from the cache and never stored twice.
    /// RFC 7252's EXCHANGE_LIFETIME (247 s) by default.
    #[serde(with = "humantime_serde")]
    pub exchange_lifetime: Duration,
    /// Most Message IDs remembered. When full, the oldest answered exchange is
    /// forgotten early (a retransmission of it after that would be stored
    /// again; the sink keeps one row per reading identity). Must exceed
    /// `max_in_flight`, so there is always an answered entry to forget.
    pub max_cached_exchanges: usize,
    /// Most requests waiting for their durable commit at once. When full, a
    /// new request gets 5.03 Service Unavailable with Max-Age 1 (retry later).
    pub max_in_flight: usize,
    /// Most Block1 transfers being reassembled at once (each up to
    /// `max_payload_bytes`). When full, the first block of a new transfer gets
    /// 5.03 with Max-Age 1; transfers already under way are not evicted.
    pub max_reassemblies: usize,
    /// A Block1 transfer without a new block for this long is dropped; its
    /// next block then gets 4.08 Request Entity Incomplete.
    #[serde(with = "humantime_serde")]
    pub reassembly_timeout: Duration,
}

impl Default for CoapSourceConfig {
    fn default() -> Self {
        CoapSourceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5683)),
            path: "readings".into(),
            max_payload_bytes: None,
            exchange_lifetime: Duration::from_secs(247),
            max_cached_exchanges: 4096,
            max_in_flight: 256,
            max_reassemblies: 32,
            reassembly_timeout: Duration::from_secs(60),
        }
    }
}

impl CoapSourceConfig {
    /// The payload limit in bytes: `max_payload_bytes`, or else `limits.max_payload_bytes`.
    pub fn payload_limit(&self, limits: &LimitsConfig) -> usize {
        let b = self.max_payload_bytes.unwrap_or(limits.max_payload_bytes);
        usize::try_from(b.as_u64()).unwrap_or(usize::MAX)
    }

    /// The path's segments (`readings` → `["readings"]`).
    pub fn path_segments(&self) -> Vec<String> {
        self.path.split('/').map(str::to_owned).collect()
    }

    /// Every problem, each with its key under `key` (e.g. `coap`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |field: &str, message: &str| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message: message.into(),
            })
        };
        if self.path.is_empty()
            || self.path.starts_with('/')
            || self.path.ends_with('/')
            || self.path.split('/').any(|s| s.is_empty() || s.len() > 255)
            || self.path.chars().any(|c| c.is_control() || c == '?')
        {
            bad(
                "path",
                "must be one or more non-empty segments separated by `/`, without a leading or \
                 trailing `/`, `?` or control characters",
            );
        }
        if self.path == ".well-known/core" || self.path.starts_with(".well-known/") {
            bad("path", "must not be under .well-known");
        }
        if let Some(b) = self.max_payload_bytes
            && (b.as_u64() == 0 || b.as_u64() > MAX_COAP_PAYLOAD)
        {
            bad(
                "max_payload_bytes",
                "must be positive and at most 16 MiB (a payload is held in memory)",
            );
        }
        if self.exchange_lifetime < Duration::from_secs(1)
            || self.exchange_lifetime > Duration::from_secs(3600)
        {
            bad("exchange_lifetime", "must be within 1s..=1h");
        }
        if self.max_in_flight == 0 {
            bad("max_in_flight", "must be at least 1");
        }
        if self.max_cached_exchanges <= self.max_in_flight {
            bad(
                "max_cached_exchanges",
                "must be larger than max_in_flight (pending exchanges are cached too)",
            );
        }
        if self.max_cached_exchanges > 1_000_000 {
            bad("max_cached_exchanges", "must be at most 1000000");
        }
        if self.max_reassemblies == 0 {
            bad("max_reassemblies", "must be at least 1");
        }
        if self.reassembly_timeout < Duration::from_secs(1)
            || self.reassembly_timeout > Duration::from_secs(600)
        {
            bad("reassembly_timeout", "must be within 1s..=10m");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(cfg: &CoapSourceConfig) -> Vec<String> {
        let mut p = Vec::new();
        cfg.validate("coap", &mut p);
        p.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(problems(&CoapSourceConfig::default()), Vec::<String>::new());
    }

    #[test]
    fn every_bad_setting_is_reported_with_its_key() {
        let cfg = CoapSourceConfig {
            path: "/readings/".into(),
            max_payload_bytes: Some(ByteSize::b(0)),
            exchange_lifetime: Duration::ZERO,
            max_cached_exchanges: 10,
            max_in_flight: 10,
            max_reassemblies: 0,
            reassembly_timeout: Duration::from_secs(3600),
            ..Default::default()
        };
        assert_eq!(
            problems(&cfg),
            [
                "coap.path",
                "coap.max_payload_bytes",
                "coap.exchange_lifetime",
                "coap.max_cached_exchanges",
                "coap.max_reassemblies",
                "coap.reassembly_timeout"
            ]
        );
        let wk = CoapSourceConfig {
            path: ".well-known/core".into(),
            ..Default::default()
        };
        assert_eq!(problems(&wk), ["coap.path"]);
    }
}
