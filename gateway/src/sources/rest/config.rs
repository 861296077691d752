//! `[[rest]]`: one polled JSON endpoint per entry.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::config::ConfigProblem;
use crate::sources::sql::config::{check_name, check_unit, valid_source_name};

/// Largest `max_response_bytes`: a response is held in memory whole.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// One REST polling source: `GET url` every `interval`, JSON pointers (RFC
/// 6901) to readings.
///
/// Two shapes, combinable with `items`:
/// - long form: per item `channel`/`channel_pointer` + `value_pointer`
///   (+ `unit`/`unit_pointer`);
/// - fixed list: `[[rest.fields]]` entries `{ pointer, channel, device?, unit? }`,
///   each a value of the item (or of the whole document).
///
/// `items` points at an array; every element is mapped with the item
/// pointers. Without it the whole document is the one item.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSourceConfig {
    /// Unique name: the checkpoint key is `rest:<name>`, quarantine entries
    /// have the origin `rest:<name>`, metrics the label `source="<name>"`.
    pub name: String,
    /// The endpoint, `https://…` (plain `http://` is refused with a token
    /// unless the host is loopback).
    pub url: String,
    /// Bearer token sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// File holding the bearer token (instead of `token`).
    pub token_file: Option<PathBuf>,
    /// Time between polls (after a success or a 304).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest time for one request, body included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest response body; a larger one is refused (counted as
    /// `too_large`, quarantined) without being read past the limit.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: ByteSize,
    /// Most items (array elements) mapped from one response; more is an error.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// First delay after an error (5xx, timeout, bad JSON, …); doubles with
    /// jitter up to `backoff_max`.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest delay after errors.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A `Retry-After` on 429/503 is honoured up to this long.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Pointer to the array of items, e.g. `/data/readings`.
    pub items: Option<String>,
    /// Fixed device name.
    pub device: Option<String>,
    /// Pointer (in the item) to the device name (string or number).
    pub device_pointer: Option<String>,
    /// Long form: fixed channel name.
    pub channel: Option<String>,
    /// Long form: pointer to the channel name.
    pub channel_pointer: Option<String>,
    /// Long form: pointer to the value (a JSON number).
    pub value_pointer: Option<String>,
    /// Long form: fixed unit.
    pub unit: Option<String>,
    /// Long form: pointer to the unit (string; absent or null means none).
    pub unit_pointer: Option<String>,
    /// Pointer to the time. Without it readings get the receive time and the
    /// `TIME_FROM_RECEIVE` flag (each poll that returns 200 then yields new
    /// readings; a 304 yields none).
    pub time_pointer: Option<String>,
    /// How the time is written: `rfc3339` (a string), or a number since the
    /// epoch: `epoch_s` (may be fractional), `epoch_ms`, `epoch_us`, `epoch_ns`.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Fixed list of values: one reading per entry and item.
    #[serde(default)]
    pub fields: Vec<RestField>,
}

/// One value at a fixed place of the item (or document).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestField {
    /// Pointer to the value (a JSON number; absent or null: no reading).
    pub pointer: String,
    /// Channel of the reading.
    pub channel: String,
    /// Device of the reading (default: the source's `device`/`device_pointer`).
    pub device: Option<String>,
    /// Unit of the reading.
    pub unit: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    #[default]
    Rfc3339,
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_response() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_items() -> usize {
    10_000
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(3600)
}

/// RFC 6901: empty (the whole value), or `/`-separated tokens where `~` is
/// only followed by `0` or `1`.
pub fn check_pointer(p: &str) -> Result<(), String> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not a JSON pointer: it must start with `/`"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{p:?}: `~` must be followed by 0 (for `~`) or 1 (for `/`)"
            ));
        }
    }
    Ok(())
}

impl RestSourceConfig {
    pub fn checkpoint_key(&self) -> String {
        format!("rest:{}", self.name)
    }

    /// Every problem, each under `key` (e.g. `rest[0]`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            })
        };
        if !valid_source_name(&self.name) {
            bad(
                "name",
                "must be 1..=64 characters of letters, digits, `_`, `-` or `.`".into(),
            );
        }
        match reqwest::Url::parse(&self.url) {
            Err(e) => bad("url", format!("not a URL: {e}")),
            Ok(url) => match url.scheme() {
                "https" => {}
                "http" => {
                    let loopback = match url.host() {
                        Some(url::Host::Domain(d)) => d == "localhost",
                        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                        None => false,
                    };
                    if !loopback && (self.token.is_some() || self.token_file.is_some()) {
                        bad(
                            "url",
                            "a token over plain http to a non-loopback host would travel in clear; use https"
                                .into(),
                        );
                    }
                }
                other => bad("url", format!("scheme {other:?} is not http(s)")),
            },
        }
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => bad("token", "set either token or token_file, not both".into()),
            (Some(t), None)
                if t.trim().is_empty() || !t.trim().bytes().all(|b| b.is_ascii_graphic()) =>
            {
                bad("token", "must be printable ASCII without spaces".into())
            }
            (None, Some(f)) if !f.is_file() => {
                bad("token_file", format!("file {} not found", f.display()))
            }
            _ => {}
        }
        if self.interval.is_zero() || self.interval > Duration::from_secs(86_400) {
            bad("interval", "must be positive and at most 24h".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            bad("timeout", "must be positive and at most 10m".into());
        }
        let max = self.max_response_bytes.as_u64();
        if max == 0 || max > MAX_RESPONSE {
            bad(
                "max_response_bytes",
                "must be positive and at most 64 MiB (a response is held in memory)".into(),
            );
        }
        if self.max_items == 0 || self.max_items > 1_000_000 {
            bad("max_items", "must be within 1..=1000000".into());
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            bad(
                "backoff_min",
                "must be positive and not exceed backoff_max".into(),
            );
        }
        if self.max_retry_after.is_zero() {
            bad("max_retry_after", "must be positive".into());
        }
        let pointers = [
            ("items", &self.items),
            ("device_pointer", &self.device_pointer),
            ("channel_pointer", &self.channel_pointer),
            ("value_pointer", &self.value_pointer),
            ("unit_pointer", &self.unit_pointer),
            ("time_pointer", &self.time_pointer),
        ];
        for (field, p) in pointers {
            if let Some(p) = p
                && let Err(e) = check_pointer(p)
            {
                bad(field, e);
            }
        }
        for (field, v) in [("device", &self.device), ("channel", &self.channel)] {
            if let Some(v) = v
                && let Err(e) = check_name(v)
            {
                bad(field, e);
            }
        }
        if let Some(u) = &self.unit
            && let Err(e) = check_unit(u)
        {
            bad("unit", e);
        }
        if self.device.is_some() && self.device_pointer.is_some() {
            bad(
                "device",
                "set either device or device_pointer, not both".into(),
            );
        }
        let long = self.value_pointer.is_some();
        let wide = !self.fields.is_empty();
        match (long, wide) {
            (true, true) => bad(
                "fields",
                "set either value_pointer (long form) or [[rest.fields]], not both".into(),
            ),
            (false, false) => bad(
                "value_pointer",
                "set value_pointer (long form) or [[rest.fields]]".into(),
            ),
            (true, false) => {
                if self.device.is_none() && self.device_pointer.is_none() {
                    bad(
                        "device_pointer",
                        "set device_pointer or a fixed device".into(),
                    );
                }
                match (&self.channel, &self.channel_pointer) {
                    (Some(_), Some(_)) => bad(
                        "channel",
                        "set either channel or channel_pointer, not both".into(),
                    ),
                    (None, None) => bad(
                        "channel_pointer",
                        "the long form needs channel_pointer or a fixed channel".into(),
                    ),
                    _ => {}
                }
                if self.unit.is_some() && self.unit_pointer.is_some() {
                    bad("unit", "set either unit or unit_pointer, not both".into());
                }
            }
            (false, true) => {
                for (field, set) in [
                    ("channel", self.channel.is_some()),
                    ("channel_pointer", self.channel_pointer.is_some()),
                    ("unit", self.unit.is_some()),
                    ("unit_pointer", self.unit_pointer.is_some()),
                ] {
                    if set {
                        bad(
                            field,
                            "belongs to the long form; [[rest.fields]] name their own channel and unit"
                                .into(),
                        );
                    }
                }
                let mut seen = HashSet::new();
                for (i, f) in self.fields.iter().enumerate() {
                    let fk = format!("fields[{i}]");
                    if let Err(e) = check_pointer(&f.pointer) {
                        bad(&format!("{fk}.pointer"), e);
                    }
                    if let Err(e) = check_name(&f.channel) {
                        bad(&format!("{fk}.channel"), e);
                    }
                    if let Some(d) = &f.device
                        && let Err(e) = check_name(d)
                    {
                        bad(&format!("{fk}.device"), e);
                    }
                    if let Some(u) = &f.unit
                        && let Err(e) = check_unit(u)
                    {
                        bad(&format!("{fk}.unit"), e);
                    }
                    if f.device.is_none() && self.device.is_none() && self.device_pointer.is_none()
                    {
                        bad(
                            &format!("{fk}.device"),
                            "no device: set it here, or the source's device or device_pointer"
                                .into(),
                        );
                    }
                    if !seen.insert((f.device.clone(), f.channel.clone())) {
                        bad(
                            &format!("{fk}.channel"),
                            "two fields give the same device and channel (one identity)".into(),
                        );
                    }
                }
            }
        }
    }
}

/// Validates every `[[rest]]` entry (keys `rest[i].…`) and that names are unique.
pub fn validate_all(sources: &[RestSourceConfig], problems: &mut Vec<ConfigProblem>) {
    let mut seen = HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        let key = format!("rest[{i}]");
        s.validate(&key, problems);
        if !seen.insert(s.name.as_str()) {
            problems.push(ConfigProblem {
                key: format!("{key}.name"),
                message: format!("{:?} is used by another [[rest]] source", s.name),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_rfc_6901() {
        for ok in ["", "/", "/a/0/b", "/a~1b", "/m~0n", "/ "] {
            assert!(check_pointer(ok).is_ok(), "{ok:?}");
        }
        for bad in ["a", "data/x", "/a~", "/a~2", "~1"] {
            assert!(check_pointer(bad).is_err(), "{bad:?}");
        }
    }

    fn problems(text: &str) -> Vec<String> {
        let c: RestSourceConfig = toml::from_str(text).unwrap();
        let mut p = Vec::new();
        c.validate("rest[0]", &mut p);
        p.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn a_long_form_source_is_valid_and_mistakes_are_reported_with_keys() {
        let ok = r#"
            name = "api"
            url = "https://api.example.com/v1"
            items = "/data/readings"
            device_pointer = "/sensor"
            channel_pointer = "/kind"
            value_pointer = "/value"
            time_pointer = "/at"
        "#;
        assert!(problems(ok).is_empty(), "{:?}", problems(ok));
        let bad = r#"
            name = "a b"
            url = "http://api.example.com/v1"
            token = "t"
            items = "data"
            channel = "x"
            channel_pointer = "/kind"
            value_pointer = "/value"
            interval = "0s"
            max_response_bytes = "65 MiB"
        "#;
        let keys = problems(bad);
        for k in [
            "rest[0].name",
            "rest[0].url",
            "rest[0].items",
            "rest[0].channel",
            "rest[0].device_pointer",
            "rest[0].interval",
            "rest[0].max_response_bytes",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn a_fixed_field_list_needs_devices_and_distinct_channels() {
        let text = r#"
            name = "station"
            url = "http://127.0.0.1:9/now"
            [[fields]]
            pointer = "/main/temp"
            channel = "temperature"
            [[fields]]
            pointer = "/main/t2"
            channel = "temperature"
            device = "x"
            [[fields]]
            pointer = "/main/t3"
            channel = "temperature"
            device = "x"
        "#;
        let keys = problems(text);
        assert!(
            keys.contains(&"rest[0].fields[0].device".to_owned()),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"rest[0].fields[2].channel".to_owned()),
            "{keys:?}"
        );
        assert!(
            !keys.contains(&"rest[0].fields[1].device".to_owned()),
            "{keys:?}"
        );
    }
}
