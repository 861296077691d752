//! The HTTP transport: each message is one `POST {target}/v1/readings` to the
//! gateway's HTTP push source, body SenML JSON.
//!
//! A message counts as acked only on **202**, the gateway's answer once the
//! readings are durable. Every other answer is classified by [`classify`]:
//! - connection errors, 408, 429 and 5xx (503: queue full, commit failed or
//!   timed out) are retried with exponential backoff and jitter, honouring
//!   `Retry-After`, until `retry_deadline` after the message was handed over;
//!   then it is reported [`Delivery::Lost`]. If the target could not even be
//!   connected to by then, the transport fails as a whole, as MQTT does when
//!   the broker stays unreachable past `connect_timeout`.
//! - any other 4xx is [`Delivery::Rejected`]: counted, never retried (the same
//!   body would be refused again).
//! - anything else (another 2xx, a redirect) is rejected too: it is not the
//!   gateway's promise of durability.
//!
//! A retried request that the gateway did commit (its answer was lost) is
//! stored again in the outbox; the sink keeps one row per reading identity.
//!
//! Concurrency: one task per message, each holding one of `max_inflight`
//! semaphore permits until its final answer, so at most that many requests
//! (with their retries) are outstanding.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{CloseReport, Delivery, OutMessage, Transport, TransportError};

/// The gateway's route for pushed readings.
pub const READINGS_PATH: &str = "/v1/readings";
/// What the simulator sends.
pub const SENML_JSON: &str = "application/senml+json";
/// First retry delay; doubles per attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A `Retry-After` longer than this is not believed.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// Even a request sent just before the deadline gets this long for its answer.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where to post and how.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The gateway's base URL (no trailing `/`), e.g. `http://127.0.0.1:8081`.
    pub target: String,
    /// Bearer token, when the gateway's `http.token` is set.
    pub token: Option<String>,
    /// Most messages handed over and without a final answer (1..=65535).
    pub max_inflight: u16,
    /// How long one message is retried after it was handed over.
    pub retry_deadline: Duration,
}

impl HttpConfig {
    pub fn readings_url(&self) -> String {
        format!("{}{READINGS_PATH}", self.target.trim_end_matches('/'))
    }
}

/// The result of one attempt, reduced to what decides the next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The peer answered with this status.
    Status(u16),
    /// No connection could be made (refused, unreachable, connect timeout).
    ConnectFailed,
    /// The connection was made, then the exchange failed (reset, timeout):
    /// the peer may or may not have committed the readings.
    Failed,
    /// The request could not even be built (a bad URL): nothing will work.
    Invalid,
}

impl Attempt {
    pub fn of_error(e: &reqwest::Error) -> Self {
        if e.is_builder() {
            Attempt::Invalid
        } else if e.is_connect() {
            Attempt::ConnectFailed
        } else {
            Attempt::Failed
        }
    }

    /// Whether the request may have reached the peer (for [`Delivery::Sent`]).
    pub fn reached_peer(self) -> bool {
        matches!(self, Attempt::Status(_) | Attempt::Failed)
    }
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 202: the readings are durable at the gateway.
    Acked,
    /// Try again after a backoff (until the deadline).
    Retry,
    /// Final refusal: count it, do not retry.
    Rejected,
    /// The transport cannot work at all.
    Fatal,
}

/// The retry rule (see the module docs).
pub fn classify(attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::Status(202) => Verdict::Acked,
        Attempt::Status(408 | 429 | 500..=599) => Verdict::Retry,
        Attempt::Status(_) => Verdict::Rejected,
        Attempt::ConnectFailed | Attempt::Failed => Verdict::Retry,
        Attempt::Invalid => Verdict::Fatal,
    }
}

/// `Retry-After` in whole seconds (the HTTP-date form is not used by the gateway).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX))
}

/// Exponential backoff with equal jitter: each delay is in `[b/2, b]` for the
/// current step `b`, and at least the server's `Retry-After`.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let half = self.step / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=half);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        (half + jitter).max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// What every message task needs.
#[derive(Debug)]
struct Shared {
    cfg: HttpConfig,
    url: String,
    client: reqwest::Client,
    window: Arc<Semaphore>,
    deliveries: mpsc::Sender<Delivery>,
    /// Why the transport failed, once it has.
    failure: Mutex<Option<String>>,
}

impl Shared {
    async fn deliver(&self, d: Delivery) {
        // The receiver is gone only when the run is over; nothing left to tell.
        let _ = self.deliveries.send(d).await;
    }

    fn fail(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(why);
        // Wake every sender and the drain: nothing more will be acked.
        self.window.close();
    }

    /// Posts one message until it gets a final answer or its deadline passes.
    async fn post(&self, msg: OutMessage, handed_over: Instant, _permit: OwnedSemaphorePermit) {
        let id = msg.id;
        let deadline = handed_over + self.cfg.retry_deadline;
        let mut backoff = Backoff::default();
        let mut sent = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut req = self
                .client
                .post(&self.url)
                .header(CONTENT_TYPE, SENML_JSON)
                .body(msg.payload.clone())
                .timeout(remaining.max(MIN_ATTEMPT_TIMEOUT));
            if let Some(t) = &self.cfg.token {
                req = req.bearer_auth(t);
            }
            let (attempt, hint, detail) = match req.send().await {
                Ok(r) => {
                    let status = r.status();
                    let hint = retry_after(r.headers());
                    // Read the (small) body so the connection can be reused.
                    let body = r.bytes().await.unwrap_or_default();
                    let detail = format!("{status}: {}", String::from_utf8_lossy(&body));
                    (Attempt::Status(status.as_u16()), hint, detail)
                }
                Err(e) => (Attempt::of_error(&e), None, error_chain(&e)),
            };
            if !sent && attempt.reached_peer() {
                sent = true;
                self.deliver(Delivery::Sent { id }).await;
            }
            match classify(attempt) {
                Verdict::Acked => {
                    let latency = handed_over.elapsed();
                    self.deliver(Delivery::Acked {
                        message: msg,
                        latency,
                    })
                    .await;
                    return;
                }
                Verdict::Rejected => {
                    let status = match attempt {
                        Attempt::Status(s) => s,
                        _ => 0,
                    };
                    warn!(id, status, answer = %detail, "Message rejected by the gateway; not retried.");
                    self.deliver(Delivery::Rejected { id, status }).await;
                    return;
                }
                Verdict::Fatal => {
                    self.fail(detail);
                    self.deliver(Delivery::Lost { id }).await;
                    return;
                }
                Verdict::Retry => {
                    let now = Instant::now();
                    if now >= deadline {
                        warn!(id, last = %detail, deadline = ?self.cfg.retry_deadline,
                            "No 202 before the deadline; the message is lost.");
                        if attempt == Attempt::ConnectFailed {
                            self.fail(detail);
                        }
                        self.deliver(Delivery::Lost { id }).await;
                        return;
                    }
                    debug!(id, answer = %detail, "Retrying.");
                    let nap = backoff.next_delay(hint).min(deadline - now);
                    tokio::time::sleep(nap).await;
                }
            }
        }
    }
}

/// A reqwest error with its causes ("error sending request: … refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Posts messages to the gateway's HTTP source and reports 202s as acks.
#[derive(Debug)]
pub struct HttpTransport {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl HttpTransport {
    /// Builds the client; no connection is made until the first message.
    pub fn new(
        cfg: HttpConfig,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Result<Self, TransportError> {
        let max_inflight = cfg.max_inflight.max(1);
        let client = reqwest::Client::builder()
            // A redirect is not the gateway's answer; see it as such.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(usize::from(max_inflight))
            .build()
            .map_err(|e| TransportError::Client(error_chain(&e)))?;
        Ok(HttpTransport {
            shared: Arc::new(Shared {
                url: cfg.readings_url(),
                cfg,
                client,
                window: Arc::new(Semaphore::new(usize::from(max_inflight))),
                deliveries,
                failure: Mutex::new(None),
            }),
            tasks: JoinSet::new(),
        })
    }

    fn failure(&self) -> TransportError {
        let last_error = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match last_error {
            Some(last_error) => TransportError::Disconnected {
                broker: self.shared.url.clone(),
                timeout: self.shared.cfg.retry_deadline,
                last_error,
            },
            None => TransportError::Stopped,
        }
    }
}

impl Transport for HttpTransport {
    async fn send(&mut self, msg: OutMessage) -> Result<(), TransportError> {
        // Forget the tasks that are done (a JoinSet keeps them until joined).
        while self.tasks.try_join_next().is_some() {}
        let permit = self
            .shared
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.failure())?;
        let shared = self.shared.clone();
        let handed_over = Instant::now();
        self.tasks
            .spawn(async move { shared.post(msg, handed_over, permit).await });
        Ok(())
    }

    async fn close(mut self, drain: Duration) -> Result<CloseReport, TransportError> {
        let total = u32::from(self.shared.cfg.max_inflight.max(1));
        // All permits back means every message got its final answer.
        let drained = tokio::time::timeout(drain, self.shared.window.acquire_many(total)).await;
        let failed = matches!(drained, Ok(Err(_)));
        self.tasks.abort_all();
        let mut unconfirmed = 0u64;
        while let Some(joined) = self.tasks.join_next().await {
            if joined.is_err_and(|e| e.is_cancelled()) {
                unconfirmed += 1;
            }
        }
        if failed {
            return Err(self.failure());
        }
        if drained.is_err() {
            warn!(unconfirmed, drain = ?drain, "Drain timed out with messages still without a 202.");
        }
        Ok(CloseReport {
            unconfirmed,
            reconnects: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    #[test]
    fn only_a_202_is_an_ack() {
        assert_eq!(classify(Attempt::Status(202)), Verdict::Acked);
        for not_durable in [200, 201, 204, 301, 307] {
            assert_eq!(
                classify(Attempt::Status(not_durable)),
                Verdict::Rejected,
                "{not_durable}"
            );
        }
    }

    #[test]
    fn unavailable_throttled_timed_out_and_unreachable_are_retried() {
        for status in [503, 500, 502, 504, 408, 429] {
            assert_eq!(
                classify(Attempt::Status(status)),
                Verdict::Retry,
                "{status}"
            );
        }
        assert_eq!(classify(Attempt::ConnectFailed), Verdict::Retry);
        assert_eq!(classify(Attempt::Failed), Verdict::Retry);
    }

    #[test]
    fn other_client_errors_are_rejected_without_retry() {
        for status in [400, 401, 403, 404, 413, 415, 422] {
            assert_eq!(
                classify(Attempt::Status(status)),
                Verdict::Rejected,
                "{status}"
            );
        }
        assert_eq!(classify(Attempt::Invalid), Verdict::Fatal);
    }

    #[test]
    fn only_attempts_that_may_have_reached_the_peer_count_as_sent() {
        assert!(Attempt::Status(503).reached_peer());
        assert!(Attempt::Failed.reached_peer());
        assert!(!Attempt::ConnectFailed.reached_peer());
        assert!(!Attempt::Invalid.reached_peer());
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap_and_honours_retry_after() {
        let mut b = Backoff::default();
        let first = b.next_delay(None);
        assert!(
            (BACKOFF_MIN / 2..=BACKOFF_MIN).contains(&first),
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay(None);
            assert!(d <= BACKOFF_MAX, "{d:?}");
        }
        assert!(b.next_delay(None) >= BACKOFF_MAX / 2, "reached the cap");
        assert_eq!(
            Backoff::default().next_delay(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "1".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(1)));
        h.insert(RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&h), Some(RETRY_AFTER_MAX));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}{READINGS_PATH}"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(Attempt::of_error(&e), Attempt::ConnectFailed);
    }

    /// A peer that answers successive requests with the given statuses (then
    /// 202) and records each request's head.
    async fn scripted_peer(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut script = statuses.into_iter();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut conn = BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    if head.is_empty() {
                        break;
                    }
                    let mut body = vec![0; len];
                    if conn.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    let _ = seen_tx.send(head);
                    let status = script.next().unwrap_or(202);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nretry-after: 0\r\n\r\n{{}}"
                    );
                    if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        });
        (url, seen)
    }

    fn message(id: u64) -> OutMessage {
        let r =
            protocol::Reading::new("pump-0001", "flow", protocol::Timestamp(1 << 62), 1.5).unwrap();
        OutMessage {
            id,
            topic: String::new(),
            payload: protocol::senml::encode_json(std::slice::from_ref(&r)),
            readings: vec![r],
        }
    }

    async fn outcomes(rx: &mut mpsc::Receiver<Delivery>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            out.push(match d {
                Delivery::Sent { id } => format!("sent {id}"),
                Delivery::Acked { message, .. } => format!("acked {}", message.id),
                Delivery::Lost { id } => format!("lost {id}"),
                Delivery::Rejected { id, status } => format!("rejected {id} {status}"),
            });
        }
        out
    }

    #[tokio::test]
    async fn a_503_is_retried_until_the_202_and_a_400_is_rejected_once() {
        let (url, mut seen) = scripted_peer(vec![503, 503, 202, 400]).await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut t = HttpTransport::new(
            HttpConfig {
                target: url,
                token: Some("tok".into()),
                max_inflight: 1,
                retry_deadline: Duration::from_secs(10),
            },
            tx,
        )
        .unwrap();
        t.send(message(1)).await.unwrap();
        t.send(message(2)).await.unwrap();
        let report = t.close(Duration::from_secs(10)).await.unwrap();
        assert_eq!(report.unconfirmed, 0);
        assert_eq!(
            outcomes(&mut rx).await,
            ["sent 1", "acked 1", "sent 2", "rejected 2 400"]
        );
        let mut heads = Vec::new();
        while let Ok(h) = seen.try_recv() {
            heads.push(h);
        }
        assert_eq!(heads.len(), 4, "503, 503, 202, then 400 not retried");
        for h in &heads {
            assert!(h.starts_with("POST /v1/readings HTTP/1.1"), "{h}");
            assert!(h.contains("content-type: application/senml+json"), "{h}");
            assert!(h.contains("authorization: Bearer tok"), "{h}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_target_loses_the_message_at_the_deadline_and_fails_the_transport() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (tx, mut rx) = mpsc::channel(64);
        let mut t = HttpTransport::new(
            HttpConfig {
                target: format!("http://127.0.0.1:{port}"),
                token: None,
                max_inflight: 1,
                retry_deadline: Duration::from_millis(300),
            },
            tx,
        )
        .unwrap();
        t.send(message(1)).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), t.send(message(2)))
            .await
            .expect("a failed transport wakes the sender");
        assert!(
            matches!(second, Err(TransportError::Disconnected { .. })),
            "{second:?}"
        );
        assert!(t.close(Duration::from_secs(1)).await.is_err());
        assert_eq!(outcomes(&mut rx).await, ["lost 1"]);
    }
}
