//! The CoAP server as a state machine without I/O: datagrams in, actions out.
//!
//! [`Exchanges::handle`] takes one datagram from one endpoint and returns an
//! [`Action`]: a reply to send at once, a payload to decode and commit, or
//! nothing. After the commit the I/O layer calls [`Exchanges::complete`], which
//! builds the response (for a confirmable request: the piggybacked ACK, 2.04
//! Changed only when the readings are durable), remembers it for
//! retransmissions, and returns it to send.
//!
//! Rules (RFC 7252 unless noted):
//! - A datagram that is not CoAP version 1 or shorter than its header is
//!   ignored. A confirmable message with a format error gets a Reset (§4.2).
//! - ACK and Reset messages are ignored (this server never sends a CON).
//!   An empty CON (a "CoAP ping") gets a Reset.
//! - `(endpoint, Message ID)` is remembered for `exchange_lifetime`
//!   ([`DedupCache`]): a retransmitted CON gets the cached response; a
//!   retransmission that arrives while the first copy is still being
//!   committed is ignored — the response goes out when the commit completes
//!   (a later retransmission gets it from the cache); a duplicate NON is ignored.
//! - `GET /.well-known/core` lists the readings resource (RFC 6690).
//! - `POST /{path}` or `/{path}/{device}` with Content-Format 110
//!   (senml+json), 112 (senml+cbor), 50 (json: the plain form, or SenML
//!   recognised by its labels) or 60 (cbor: SenML CBOR).
//! - Errors carry a short text diagnostic payload (§5.5.2): 4.00 (bad option
//!   value, undecodable payload once its quarantine entry is durable), 4.02
//!   (unknown critical option), 4.04, 4.05, 4.06, 4.08 (Block1 out of order),
//!   4.13 with Size1 (over the payload limit), 4.15 (missing or unsupported
//!   Content-Format), 5.03 with Max-Age (no room, or the commit failed: the
//!   readings are not stored, a retry with a new Message ID is safe), 5.05
//!   (proxying).
//! - Block1 (RFC 7959): [`Reassembly`] per endpoint, path and Request-Tag
//!   (RFC 9175) — not per token, because clients may use a new token for each
//!   block (libcoap 4.3 does); 2.31 Continue for each non-final block, the
//!   final response carries the Block1 option. A Size1 option over the limit
//!   gets 4.13 before any block is stored.

use std::fmt::Write as _;
use std::hash::Hash;
use std::time::{Duration, Instant};

use coap_lite::link_format::LinkFormatWrite;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use protocol::PayloadFormat;

use super::block1::{Block, Reassembly, Step};
use super::dedup::{DedupCache, Entry};

/// RFC 7252 Content-Format numbers this source accepts.
pub const CF_SENML_JSON: u16 = 110;
pub const CF_SENML_CBOR: u16 = 112;
pub const CF_JSON: u16 = 50;
pub const CF_CBOR: u16 = 60;
/// `application/link-format`.
pub const CF_LINK_FORMAT: u16 = 40;
/// Max-Age (seconds) on a 5.03: when to try again.
const RETRY_AFTER_SECS: u8 = 1;
/// Diagnostic payloads are cut to this many bytes.
const MAX_DIAGNOSTIC: usize = 160;

/// The payload format for a Content-Format number.
pub fn format_for(content_format: u16) -> Option<PayloadFormat> {
    match content_format {
        CF_SENML_JSON => Some(PayloadFormat::SenmlJson),
        CF_SENML_CBOR | CF_CBOR => Some(PayloadFormat::SenmlCbor),
        CF_JSON => Some(PayloadFormat::Json),
        _ => None,
    }
}

/// The settings of the state machine (from `[coap]`).
#[derive(Clone, Debug)]
pub struct ExchangeConfig {
    /// The readings resource's path segments.
    pub path: Vec<String>,
    pub max_payload: usize,
    pub exchange_lifetime: Duration,
    pub max_cached: usize,
    pub max_in_flight: usize,
    pub max_reassemblies: usize,
    pub reassembly_timeout: Duration,
}

/// Identifies a request waiting for its commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ticket<E> {
    pub endpoint: E,
    pub message_id: u16,
}

/// A payload to decode and commit, then [`Exchanges::complete`].
#[derive(Debug, PartialEq)]
pub struct Ingest<E> {
    pub ticket: Ticket<E>,
    pub format: PayloadFormat,
    pub payload: Vec<u8>,
    /// From `/{path}/{device}`: the device of payloads that name only channels.
    pub device: Option<String>,
    pub confirmable: bool,
}

/// An encoded response and what it is.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// E.g. `2.04`; `0.00` for a Reset.
    pub code: String,
    /// Sent again from the Message ID cache.
    pub from_cache: bool,
}

/// Why a datagram got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silence {
    /// Not CoAP version 1, or too short for a header.
    NotCoap,
    /// A non-confirmable message with a format error.
    Malformed,
    /// An ACK or Reset (this server sends no confirmable messages), or a
    /// non-confirmable empty message or response.
    NotARequest,
    /// A retransmission of a request still being committed.
    DuplicateInFlight,
    /// A duplicate non-confirmable request.
    DuplicateNon,
}

impl Silence {
    pub fn name(self) -> &'static str {
        match self {
            Silence::NotCoap => "not_coap",
            Silence::Malformed => "malformed",
            Silence::NotARequest => "not_a_request",
            Silence::DuplicateInFlight => "duplicate_in_flight",
            Silence::DuplicateNon => "duplicate_non",
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Action<E> {
    Reply(Reply),
    Ingest(Ingest<E>),
    Silent(Silence),
}

/// How the commit of an [`Ingest`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The readings are durable.
    Stored { readings: usize },
    /// The payload did not decode; its quarantine entry is durable.
    Rejected { reason: String, detail: String },
    /// Not stored (commit failed, shutdown): the sender may retry.
    NotStored(String),
}

/// What is needed to answer a pending request.
#[derive(Clone, Debug)]
struct Pending {
    token: Vec<u8>,
    confirmable: bool,
    block1: Option<Block>,
}

/// A response before encoding.
struct Response {
    code: ResponseType,
    payload: Vec<u8>,
    content_format: Option<u16>,
    block1: Option<Block>,
    size1: Option<usize>,
    max_age: Option<u8>,
}

impl Response {
    fn new(code: ResponseType) -> Self {
        Response {
            code,
            payload: Vec::new(),
            content_format: None,
            block1: None,
            size1: None,
            max_age: None,
        }
    }

    fn diagnostic(code: ResponseType, text: &str) -> Self {
        let mut r = Response::new(code);
        let mut end = text.len().min(MAX_DIAGNOSTIC);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        r.payload = text.as_bytes()[..end].to_vec();
        if code == ResponseType::ServiceUnavailable {
            r.max_age = Some(RETRY_AFTER_SECS);
        }
        r
    }
}

/// What a request turned into, before the dedup bookkeeping.
enum Handled {
    Now(Response),
    Commit {
        format: PayloadFormat,
        payload: Vec<u8>,
        device: Option<String>,
        block1: Option<Block>,
    },
}

/// Options this server understands (or may ignore safely). Any other
/// critical (odd-numbered) option gets 4.02 Bad Option.
const KNOWN_OPTIONS: &[u16] = &[
    1, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258,
];

#[derive(Debug)]
pub struct Exchanges<E> {
    cfg: ExchangeConfig,
    cache: DedupCache<(E, u16), Pending>,
    blocks: Reassembly<(E, Vec<u8>)>,
    /// Message IDs of our NON responses.
    next_mid: u16,
    blocks_received: u64,
}

impl<E: Clone + Eq + Hash> Exchanges<E> {
    pub fn new(cfg: ExchangeConfig) -> Self {
        Exchanges {
            cache: DedupCache::new(cfg.max_cached, cfg.exchange_lifetime),
            blocks: Reassembly::new(
                cfg.max_reassemblies,
                cfg.max_payload,
                cfg.reassembly_timeout,
            ),
            next_mid: rand::random(),
            blocks_received: 0,
            cfg,
        }
    }

    /// Requests waiting for their commit.
    pub fn in_flight(&self) -> usize {
        self.cache.pending()
    }

    /// Message IDs remembered.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Block1 transfers under way.
    pub fn reassemblies(&self) -> usize {
        self.blocks.len()
    }

    /// Block1 blocks received since the last call.
    pub fn take_blocks_received(&mut self) -> u64 {
        std::mem::take(&mut self.blocks_received)
    }

    /// Forgets expired Message IDs and idle Block1 transfers.
    pub fn purge(&mut self, now: Instant) {
        self.cache.purge(now);
        self.blocks.purge(now);
    }

    /// Handles one datagram from `from`.
    pub fn handle(&mut self, from: E, datagram: &[u8], now: Instant) -> Action<E> {
        if datagram.len() < 4 || datagram[0] >> 6 != 1 {
            return Action::Silent(Silence::NotCoap);
        }
        let confirmable = (datagram[0] >> 4) & 0x3 == 0;
        let message_id = u16::from_be_bytes([datagram[2], datagram[3]]);
        let packet = match Packet::from_bytes(datagram) {
            Ok(p) => p,
            Err(_) if confirmable => return Action::Reply(reset(message_id)),
            Err(_) => return Action::Silent(Silence::Malformed),
        };
        match packet.header.get_type() {
            MessageType::Acknowledgement | MessageType::Reset => {
                return Action::Silent(Silence::NotARequest);
            }
            MessageType::Confirmable | MessageType::NonConfirmable => {}
        }
        let method = match packet.header.code {
            MessageClass::Request(m) => m,
            _ if confirmable => return Action::Reply(reset(message_id)),
            _ => return Action::Silent(Silence::NotARequest),
        };
        let key = (from.clone(), message_id);
        match self.cache.get(&key) {
            Some(Entry::Pending(_)) => return Action::Silent(Silence::DuplicateInFlight),
            Some(Entry::Answered {
                response,
                confirmable: true,
            }) => {
                return Action::Reply(Reply {
                    code: code_of(response),
                    bytes: response.clone(),
                    from_cache: true,
                });
            }
            Some(Entry::Answered { .. }) => return Action::Silent(Silence::DuplicateNon),
            None => {}
        }
        let token = packet.get_token().to_vec();
        match self.request(&from, method, &packet, now) {
            Handled::Now(response) => {
                let bytes = self.encode(confirmable, message_id, &token, response);
                // No room to remember it only when every entry is pending,
                // which max_in_flight < max_cached rules out; answer anyway.
                self.cache
                    .insert_answered(key, bytes.clone(), confirmable, now);
                Action::Reply(Reply {
                    code: code_of(&bytes),
                    bytes,
                    from_cache: false,
                })
            }
            Handled::Commit {
                format,
                payload,
                device,
                block1,
            } => {
                let pending = Pending {
                    token: token.clone(),
                    confirmable,
                    block1,
                };
                if !self.cache.insert_pending(key, pending, now) {
                    let r = Response::diagnostic(
                        ResponseType::ServiceUnavailable,
                        "busy: too many exchanges; retry later",
                    );
                    let bytes = self.encode(confirmable, message_id, &token, r);
                    return Action::Reply(Reply {
                        code: code_of(&bytes),
                        bytes,
                        from_cache: false,
                    });
                }
                Action::Ingest(Ingest {
                    ticket: Ticket {
                        endpoint: from,
                        message_id,
                    },
                    format,
                    payload,
                    device,
                    confirmable,
                })
            }
        }
    }

    /// Records the commit's outcome and returns the response to send (`None`
    /// if the ticket is unknown).
    pub fn complete(
        &mut self,
        ticket: &Ticket<E>,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Reply> {
        let key = (ticket.endpoint.clone(), ticket.message_id);
        let pending = match self.cache.get(&key) {
            Some(Entry::Pending(p)) => p.clone(),
            _ => return None,
        };
        let mut r = match outcome {
            Outcome::Stored { .. } => Response::new(ResponseType::Changed),
            Outcome::Rejected { reason, detail } => {
                Response::diagnostic(ResponseType::BadRequest, &format!("{reason}: {detail}"))
            }
            Outcome::NotStored(why) => Response::diagnostic(
                ResponseType::ServiceUnavailable,
                &format!("not stored ({why}); retry"),
            ),
        };
        if r.code == ResponseType::Changed {
            r.block1 = pending.block1;
        }
        let bytes = self.encode(pending.confirmable, ticket.message_id, &pending.token, r);
        self.cache
            .answer(&key, bytes.clone(), pending.confirmable, now);
        Some(Reply {
            code: code_of(&bytes),
            bytes,
            from_cache: false,
        })
    }

    fn request(&mut self, from: &E, method: RequestType, p: &Packet, now: Instant) -> Handled {
        use ResponseType as R;
        for (number, _) in p.options() {
            if number % 2 == 1 && !KNOWN_OPTIONS.contains(number) {
                return Handled::Now(Response::diagnostic(
                    R::BadOption,
                    &format!("critical option {number} is not supported"),
                ));
            }
        }
        if p.get_option(CoapOption::ProxyUri).is_some()
            || p.get_option(CoapOption::ProxyScheme).is_some()
        {
            return Handled::Now(Response::diagnostic(
                R::ProxyingNotSupported,
                "this is not a proxy",
            ));
        }
        let mut segments = Vec::new();
        if let Some(list) = p.get_option(CoapOption::UriPath) {
            for s in list {
                match std::str::from_utf8(s) {
                    Ok(s) => segments.push(s),
                    Err(_) => {
                        return Handled::Now(Response::diagnostic(
                            R::BadRequest,
                            "Uri-Path is not UTF-8",
                        ));
                    }
                }
            }
        }
        if segments == [".well-known", "core"] {
            return Handled::Now(self.well_known_core(method, p));
        }
        let n = self.cfg.path.len();
        let ours = segments.len() >= n
            && segments.len() <= n + 1
            && segments[..n]
                .iter()
                .zip(&self.cfg.path)
                .all(|(a, b)| a == b);
        if !ours {
            return Handled::Now(Response::diagnostic(
                R::NotFound,
                &format!("no such resource; POST readings to {}", self.resource()),
            ));
        }
        let device = match segments.get(n) {
            Some(&"") => {
                return Handled::Now(Response::diagnostic(R::NotFound, "empty device name"));
            }
            Some(d) => Some((*d).to_owned()),
            None => None,
        };
        if method != RequestType::Post {
            return Handled::Now(Response::diagnostic(
                R::MethodNotAllowed,
                &format!("{} allows POST only", self.resource()),
            ));
        }
        let cf = match uint_option(p, CoapOption::ContentFormat) {
            Err(()) => {
                return Handled::Now(Response::diagnostic(
                    R::BadRequest,
                    "bad Content-Format option",
                ));
            }
            Ok(cf) => cf,
        };
        let Some(format) = cf.and_then(|c| u16::try_from(c).ok()).and_then(format_for) else {
            let said = cf.map_or_else(|| "none".to_owned(), |c| c.to_string());
            return Handled::Now(Response::diagnostic(
                R::UnsupportedContentFormat,
                &format!(
                    "Content-Format {said} is not supported; use 110 (senml+json), \
                     112 (senml+cbor), 50 (json) or 60 (cbor)"
                ),
            ));
        };
        match uint_option(p, CoapOption::Size1) {
            Err(()) => {
                return Handled::Now(Response::diagnostic(R::BadRequest, "bad Size1 option"));
            }
            Ok(Some(size)) if size > self.cfg.max_payload as u64 => {
                return Handled::Now(self.too_large());
            }
            Ok(_) => {}
        }
        let block = match p.get_first_option(CoapOption::Block1) {
            None => None,
            Some(v) => match Block::decode(v) {
                Ok(b) => Some(b),
                Err(e) => return Handled::Now(Response::diagnostic(R::BadRequest, e)),
            },
        };
        let final_part = block.is_none_or(|b| !b.more);
        if final_part && self.cache.pending() >= self.cfg.max_in_flight {
            return Handled::Now(Response::diagnostic(
                R::ServiceUnavailable,
                "busy: too many requests waiting for their commit; retry later",
            ));
        }
        let Some(block) = block else {
            if p.payload.len() > self.cfg.max_payload {
                return Handled::Now(self.too_large());
            }
            return Handled::Commit {
                format,
                payload: p.payload.clone(),
                device,
                block1: None,
            };
        };
        self.blocks_received += 1;
        let key = (from.clone(), transfer_key(&segments, p));
        let step = self
            .blocks
            .feed(&key, block, &p.payload, format, device, now);
        match step {
            Step::Continue | Step::Repeated => {
                let mut r = Response::new(R::Continue);
                r.block1 = Some(block);
                Handled::Now(r)
            }
            Step::Complete {
                payload,
                format,
                device,
            } => Handled::Commit {
                format,
                payload,
                device,
                block1: Some(block),
            },
            Step::Incomplete => Handled::Now(Response::diagnostic(
                R::RequestEntityIncomplete,
                "block out of order, or no transfer in progress (it may have timed out); \
                 start again at block 0",
            )),
            Step::TooLarge => Handled::Now(self.too_large()),
            Step::BadSize => Handled::Now(Response::diagnostic(
                R::BadRequest,
                "a block with the more flag set must be exactly the block size",
            )),
            Step::Full => Handled::Now(Response::diagnostic(
                R::ServiceUnavailable,
                "busy: too many block transfers in progress; retry later",
            )),
        }
    }

    fn resource(&self) -> String {
        format!("/{}", self.cfg.path.join("/"))
    }

    fn too_large(&self) -> Response {
        let mut r = Response::diagnostic(
            ResponseType::RequestEntityTooLarge,
            &format!("the payload is larger than {} bytes", self.cfg.max_payload),
        );
        r.size1 = Some(self.cfg.max_payload);
        r
    }

    fn well_known_core(&self, method: RequestType, p: &Packet) -> Response {
        if method != RequestType::Get {
            return Response::diagnostic(
                ResponseType::MethodNotAllowed,
                "/.well-known/core allows GET only",
            );
        }
        match uint_option(p, CoapOption::Accept) {
            Ok(None) => {}
            Ok(Some(a)) if a == u64::from(CF_LINK_FORMAT) => {}
            _ => {
                return Response::diagnostic(
                    ResponseType::NotAcceptable,
                    "only application/link-format (40) is available",
                );
            }
        }
        let mut text = String::new();
        let mut w = LinkFormatWrite::new(&mut text);
        let resource = self.resource();
        let ct = format!("{CF_SENML_JSON} {CF_SENML_CBOR} {CF_JSON} {CF_CBOR}");
        w.link(&resource)
            .attr_quoted("rt", "outpost.readings")
            .attr_quoted("ct", &ct)
            .attr_quoted("title", "POST sensor readings");
        let _ = w.finish();
        // A link per device path would be unbounded; describe the template instead.
        let _ = write!(text, ",<{resource}/{{device}}>;rt=\"outpost.readings\"");
        let mut r = Response::new(ResponseType::Content);
        r.payload = text.into_bytes();
        r.content_format = Some(CF_LINK_FORMAT);
        r
    }

    fn encode(&mut self, confirmable: bool, message_id: u16, token: &[u8], r: Response) -> Vec<u8> {
        let mut p = Packet::new();
        if confirmable {
            p.header.set_type(MessageType::Acknowledgement);
            p.header.message_id = message_id;
        } else {
            p.header.set_type(MessageType::NonConfirmable);
            self.next_mid = self.next_mid.wrapping_add(1);
            p.header.message_id = self.next_mid;
        }
        p.header.code = MessageClass::Response(r.code);
        // Tokens come from a parsed packet: at most 8 bytes.
        p.set_token(token[..token.len().min(8)].to_vec());
        if let Some(cf) = r.content_format {
            p.add_option(CoapOption::ContentFormat, uint_bytes(u64::from(cf)));
        }
        if let Some(age) = r.max_age {
            p.add_option(CoapOption::MaxAge, uint_bytes(u64::from(age)));
        }
        if let Some(b) = r.block1 {
            p.add_option(CoapOption::Block1, b.encode());
        }
        if let Some(size) = r.size1 {
            p.add_option(CoapOption::Size1, uint_bytes(size as u64));
        }
        p.payload = r.payload;
        p.to_bytes_unlimited()
            .unwrap_or_else(|_| reset(message_id).bytes)
    }
}

/// An empty Reset for `message_id`.
fn reset(message_id: u16) -> Reply {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Reset);
    p.header.code = MessageClass::Empty;
    p.header.message_id = message_id;
    Reply {
        bytes: p.to_bytes_unlimited().unwrap_or_default(),
        code: "0.00".into(),
        from_cache: false,
    }
}

/// Request-Tag (RFC 9175): tells concurrent block-wise bodies to one resource apart.
const REQUEST_TAG: u16 = 292;

/// What identifies one Block1 transfer of an endpoint: the path and the
/// Request-Tag. Not the token: clients may change it per block (libcoap does).
fn transfer_key(segments: &[&str], p: &Packet) -> Vec<u8> {
    let mut key = segments.join("/").into_bytes();
    key.push(0);
    if let Some(tag) = p.get_first_option(CoapOption::Unknown(REQUEST_TAG)) {
        key.extend_from_slice(tag);
    }
    key
}

/// `c.dd` of an encoded message.
fn code_of(bytes: &[u8]) -> String {
    bytes
        .get(1)
        .map(|c| MessageClass::from(*c).to_string())
        .unwrap_or_default()
}

/// The first value of a uint option (up to 8 bytes); `Err` if malformed.
fn uint_option(p: &Packet, option: CoapOption) -> Result<Option<u64>, ()> {
    match p.get_first_option(option) {
        None => Ok(None),
        Some(v) if v.len() > 8 => Err(()),
        Some(v) => Ok(Some(
            v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )),
    }
}

/// A uint option value in its shortest form.
fn uint_bytes(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ExchangeConfig {
        ExchangeConfig {
            path: vec!["readings".into()],
            max_payload: 256,
            exchange_lifetime: Duration::from_secs(247),
            max_cached: 16,
            max_in_flight: 2,
            max_reassemblies: 2,
            reassembly_timeout: Duration::from_secs(60),
        }
    }

    struct Req {
        t: MessageType,
        mid: u16,
        token: Vec<u8>,
        method: RequestType,
        path: &'static str,
        cf: Option<u16>,
        block1: Option<Block>,
        size1: Option<u64>,
        payload: Vec<u8>,
    }

    fn post(mid: u16, cf: u16, payload: &[u8]) -> Req {
        Req {
            t: MessageType::Confirmable,
            mid,
            token: vec![0xab, mid as u8],
            method: RequestType::Post,
            path: "readings",
            cf: Some(cf),
            block1: None,
            size1: None,
            payload: payload.to_vec(),
        }
    }

    impl Req {
        fn bytes(&self) -> Vec<u8> {
            let mut p = Packet::new();
            p.header.set_type(self.t);
            p.header.message_id = self.mid;
            p.header.code = MessageClass::Request(self.method);
            p.set_token(self.token.clone());
            for s in self.path.split('/').filter(|s| !s.is_empty()) {
                p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
            }
            if let Some(cf) = self.cf {
                p.add_option(CoapOption::ContentFormat, uint_bytes(cf.into()));
            }
            if let Some(b) = self.block1 {
                p.add_option(CoapOption::Block1, b.encode());
            }
            if let Some(s) = self.size1 {
                p.add_option(CoapOption::Size1, uint_bytes(s));
            }
            p.payload = self.payload.clone();
            p.to_bytes_unlimited().unwrap()
        }
    }

    fn reply(a: Action<u8>) -> Packet {
        match a {
            Action::Reply(r) => Packet::from_bytes(&r.bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn ingest(a: Action<u8>) -> Ingest<u8> {
        match a {
            Action::Ingest(i) => i,
            other => panic!("expected an ingest, got {other:?}"),
        }
    }

    fn code(p: &Packet) -> String {
        p.header.code.to_string()
    }

    const SENML: &[u8] = br#"[{"bn":"p/","n":"t","v":1}]"#;

    #[test]
    fn content_formats_map_to_the_protocol_decoders() {
        assert_eq!(format_for(110), Some(PayloadFormat::SenmlJson));
        assert_eq!(format_for(112), Some(PayloadFormat::SenmlCbor));
        assert_eq!(format_for(50), Some(PayloadFormat::Json));
        assert_eq!(format_for(60), Some(PayloadFormat::SenmlCbor));
        for other in [0, 40, 41, 42, 47, 111, 113, 11050, 65535] {
            assert_eq!(format_for(other), None, "{other}");
        }
    }

    #[test]
    fn a_con_post_is_acked_with_2_04_only_after_the_commit() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let i = ingest(ex.handle(1, &post(7, 110, SENML).bytes(), now));
        assert_eq!(
            (i.format, i.payload.as_slice(), i.confirmable),
            (PayloadFormat::SenmlJson, SENML, true)
        );
        assert_eq!(ex.in_flight(), 1);
        let r = ex
            .complete(&i.ticket, Outcome::Stored { readings: 1 }, now)
            .unwrap();
        let p = Packet::from_bytes(&r.bytes).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(p.header.message_id, 7, "piggybacked on the request's ACK");
        assert_eq!(p.get_token(), &[0xab, 7]);
        assert_eq!(code(&p), "2.04");
        assert_eq!(ex.in_flight(), 0);
        assert!(
            ex.complete(&i.ticket, Outcome::Stored { readings: 1 }, now)
                .is_none()
        );
    }

    #[test]
    fn a_retransmission_is_never_ingested_twice_and_gets_the_cached_answer() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let req = post(9, 110, SENML).bytes();
        let i = ingest(ex.handle(1, &req, now));
        // While the first copy is being committed: silence, no second ingest.
        assert_eq!(
            ex.handle(1, &req, now),
            Action::Silent(Silence::DuplicateInFlight)
        );
        let first = ex
            .complete(&i.ticket, Outcome::Stored { readings: 1 }, now)
            .unwrap();
        // Afterwards: the same bytes from the cache.
        match ex.handle(1, &req, now + Duration::from_secs(200)) {
            Action::Reply(r) => {
                assert!(r.from_cache);
                assert_eq!(r.bytes, first.bytes);
                assert_eq!(r.code, "2.04");
            }
            other => panic!("{other:?}"),
        }
        // The same Message ID from another endpoint is a new request.
        ingest(ex.handle(2, &req, now));
        // After the exchange lifetime it is a new request again.
        ex.purge(now + Duration::from_secs(248));
        ingest(ex.handle(1, &req, now + Duration::from_secs(248)));
    }

    #[test]
    fn a_duplicate_non_is_ignored_and_a_non_gets_a_non_response() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let mut r = post(3, 112, &[0x80]);
        r.t = MessageType::NonConfirmable;
        let i = ingest(ex.handle(1, &r.bytes(), now));
        assert!(!i.confirmable);
        let answer = ex
            .complete(&i.ticket, Outcome::Stored { readings: 0 }, now)
            .unwrap();
        let p = Packet::from_bytes(&answer.bytes).unwrap();
        assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(
            ex.handle(1, &r.bytes(), now),
            Action::Silent(Silence::DuplicateNon)
        );
    }

    #[test]
    fn failures_and_rejections_have_their_codes_and_diagnostics() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let i = ingest(ex.handle(1, &post(1, 110, b"[").bytes(), now));
        let r = ex
            .complete(
                &i.ticket,
                Outcome::Rejected {
                    reason: "syntax".into(),
                    detail: "EOF".into(),
                },
                now,
            )
            .unwrap();
        let p = Packet::from_bytes(&r.bytes).unwrap();
        assert_eq!(
            (code(&p), p.payload.as_slice()),
            ("4.00".into(), &b"syntax: EOF"[..])
        );
        let i = ingest(ex.handle(1, &post(2, 110, SENML).bytes(), now));
        let r = ex
            .complete(&i.ticket, Outcome::NotStored("disk".into()), now)
            .unwrap();
        let p = Packet::from_bytes(&r.bytes).unwrap();
        assert_eq!(code(&p), "5.03");
        assert_eq!(p.get_first_option(CoapOption::MaxAge), Some(&vec![1]));
    }

    #[test]
    fn wrong_format_method_path_and_size_get_their_4xx() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let c = |ex: &mut Exchanges<u8>, r: Req| code(&reply(ex.handle(1, &r.bytes(), now)));
        assert_eq!(c(&mut ex, post(1, 0, SENML)), "4.15");
        let mut none = post(2, 0, SENML);
        none.cf = None;
        assert_eq!(c(&mut ex, none), "4.15");
        let mut get = post(3, 110, SENML);
        get.method = RequestType::Get;
        assert_eq!(c(&mut ex, get), "4.05");
        let mut other = post(4, 110, SENML);
        other.path = "elsewhere";
        assert_eq!(c(&mut ex, other), "4.04");
        let mut deep = post(5, 110, SENML);
        deep.path = "readings/a/b";
        assert_eq!(c(&mut ex, deep), "4.04");
        let big = reply(ex.handle(1, &post(6, 110, &[b' '; 257]).bytes(), now));
        assert_eq!(code(&big), "4.13");
        assert_eq!(big.get_first_option(CoapOption::Size1), Some(&vec![1, 0]));
        assert!(!big.payload.is_empty(), "a diagnostic");
        let mut announced = post(7, 110, SENML);
        announced.size1 = Some(100_000);
        assert_eq!(c(&mut ex, announced), "4.13");
        let mut dev = post(8, 110, SENML);
        dev.path = "readings/pump-7";
        let i = ingest(ex.handle(1, &dev.bytes(), now));
        assert_eq!(i.device.as_deref(), Some("pump-7"));
    }

    #[test]
    fn well_known_core_lists_the_readings_resource() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let mut get = post(1, 0, b"");
        get.cf = None;
        get.method = RequestType::Get;
        get.path = ".well-known/core";
        let p = reply(ex.handle(1, &get.bytes(), now));
        assert_eq!(code(&p), "2.05");
        assert_eq!(
            p.get_first_option(CoapOption::ContentFormat),
            Some(&vec![40])
        );
        let text = String::from_utf8(p.payload).unwrap();
        assert!(
            text.starts_with(r#"</readings>;rt="outpost.readings";ct="110 112 50 60""#),
            "{text}"
        );
        let mut post_wk = post(2, 110, b"");
        post_wk.path = ".well-known/core";
        assert_eq!(code(&reply(ex.handle(1, &post_wk.bytes(), now))), "4.05");
    }

    #[test]
    fn block1_transfers_reassemble_and_the_final_answer_carries_block1() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        let mut payload = SENML.to_vec();
        payload.resize(40, b' ');
        let blocks: Vec<&[u8]> = payload.chunks(16).collect();
        for (n, chunk) in blocks.iter().enumerate() {
            let mut r = post(10 + n as u16, 110, chunk);
            // A new token per block, as libcoap sends them.
            r.token = vec![n as u8, 0xee];
            let more = n + 1 < blocks.len();
            r.block1 = Some(Block {
                num: n as u32,
                more,
                szx: 0,
            });
            let a = ex.handle(5, &r.bytes(), now);
            if more {
                let p = reply(a);
                assert_eq!(code(&p), "2.31");
                assert_eq!(
                    Block::decode(p.get_first_option(CoapOption::Block1).unwrap()),
                    Ok(Block {
                        num: n as u32,
                        more: true,
                        szx: 0
                    })
                );
            } else {
                let i = ingest(a);
                assert_eq!(i.payload, payload);
                let done = ex
                    .complete(&i.ticket, Outcome::Stored { readings: 1 }, now)
                    .unwrap();
                let p = Packet::from_bytes(&done.bytes).unwrap();
                assert_eq!(code(&p), "2.04");
                assert_eq!(
                    Block::decode(p.get_first_option(CoapOption::Block1).unwrap()),
                    Ok(Block {
                        num: 2,
                        more: false,
                        szx: 0
                    })
                );
            }
        }
        assert_eq!(ex.take_blocks_received(), 3);
        assert_eq!(ex.reassemblies(), 0);
        // Over the limit in blocks: 4.13 with Size1.
        let mut last = Action::Silent(Silence::NotCoap);
        for n in 0..20u32 {
            let mut r = post(100 + n as u16, 110, &[b' '; 16]);
            r.block1 = Some(Block {
                num: n,
                more: true,
                szx: 0,
            });
            last = ex.handle(5, &r.bytes(), now);
            if !matches!(&last, Action::Reply(r) if r.code == "2.31") {
                break;
            }
        }
        assert_eq!(code(&reply(last)), "4.13");
        // A block that belongs to no transfer: 4.08.
        let mut stray = post(200, 110, &[b' '; 16]);
        stray.block1 = Some(Block {
            num: 3,
            more: true,
            szx: 0,
        });
        assert_eq!(code(&reply(ex.handle(5, &stray.bytes(), now))), "4.08");
    }

    #[test]
    fn in_flight_requests_are_bounded_with_5_03() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        ingest(ex.handle(1, &post(1, 110, SENML).bytes(), now));
        ingest(ex.handle(1, &post(2, 110, SENML).bytes(), now));
        let p = reply(ex.handle(1, &post(3, 110, SENML).bytes(), now));
        assert_eq!(code(&p), "5.03");
        assert!(p.get_first_option(CoapOption::MaxAge).is_some());
    }

    #[test]
    fn pings_malformed_messages_acks_and_other_versions() {
        let now = Instant::now();
        let mut ex = Exchanges::new(cfg());
        // Empty CON (ping) → Reset with its Message ID.
        let p = reply(ex.handle(1, &[0x40, 0x00, 0x12, 0x34], now));
        assert_eq!(p.header.get_type(), MessageType::Reset);
        assert_eq!(p.header.message_id, 0x1234);
        // A CON with a token length of 9 is a format error → Reset.
        let p = reply(ex.handle(1, &[0x49, 0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], now));
        assert_eq!(p.header.get_type(), MessageType::Reset);
        // The same as NON: ignored.
        assert_eq!(
            ex.handle(1, &[0x59, 0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], now),
            Action::Silent(Silence::Malformed)
        );
        assert_eq!(
            ex.handle(1, &[0x60, 0x00, 0, 1], now),
            Action::Silent(Silence::NotARequest)
        );
        assert_eq!(
            ex.handle(1, &[0x80, 0x02, 0, 1], now),
            Action::Silent(Silence::NotCoap)
        );
        assert_eq!(ex.handle(1, &[0x40], now), Action::Silent(Silence::NotCoap));
        // An unknown critical option → 4.02.
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.add_option(CoapOption::Unknown(2049), vec![1]);
        let r = reply(ex.handle(1, &p.to_bytes_unlimited().unwrap(), now));
        assert_eq!(code(&r), "4.02");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic_and_state_stays_bounded(
            datagrams in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..80), 1..40),
            prefix in proptest::collection::vec(proptest::num::u8::ANY, 0..4),
        ) {
            let now = Instant::now();
            let mut ex = Exchanges::new(cfg());
            for (i, mut d) in datagrams.into_iter().enumerate() {
                // Half of them start like a CoAP request, to get past the header checks.
                if i % 2 == 0 && d.len() >= 4 {
                    d[0] = 0x40 | (d[0] & 0x3f);
                    d[1] = if prefix.is_empty() { 0x02 } else { prefix[0] % 8 };
                }
                let endpoint = (i % 3) as u8;
                if let Action::Ingest(ing) = ex.handle(endpoint, &d, now) {
                    let _ = ex.complete(&ing.ticket, Outcome::Stored { readings: 0 }, now);
                }
                proptest::prop_assert!(ex.cached() <= 16);
                proptest::prop_assert!(ex.in_flight() <= 2);
                proptest::prop_assert!(ex.reassemblies() <= 2);
            }
        }
    }
}
