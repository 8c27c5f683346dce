//! CoAP over UDP (RFC 7252), tinyFaaS's third door: GET or POST `coap://host/{name}` invokes
//! the function `default/{name}` (or `coap://host/{ns}/{name}`) with the payload as its input
//! and answers 2.05 Content with its output. coap-lite reads and writes the messages; this
//! module runs the socket.
//!
//! - A confirmable request gets its answer piggybacked on the ACK (same message id and
//!   token); a non-confirmable one a NON answer with the same token.
//! - A message id seen again from the same peer (a retransmission) is answered from a cache
//!   of recent answers, and never invokes twice; while the first is still running the copy is
//!   dropped (the client retransmits until the piggybacked answer comes). A running call is
//!   never forgotten: past [`RUNNING_CAPACITY`] calls at once a new request is 5.03.
//! - Answers larger than one block go out with Block2 (RFC 7959), inputs may come with
//!   Block1, both through coap-lite's `BlockHandler`; an input beyond [`MAX_INPUT`] is 4.13.
//! - Codes: 4.00 for a path that names no function, 4.04 for an unknown one, 4.05 for a
//!   method other than GET or POST, 5.00 when the handler fails, 5.04 past its timeout, 5.03
//!   when its queue is full or no container starts. Errors carry a text diagnostic payload.
//! - With tokens configured (`--token-file`, `UFAAS_TOKEN`), a CoAP request cannot carry a
//!   bearer, so only peers on the loopback interface are answered; others get 4.01
//!   (SECURITY.rst).
//! - A datagram that is not CoAP is dropped; one whose header says confirmable gets a Reset,
//!   as does an empty confirmable message (a CoAP ping).
//!
//! Each call runs on a task of its own, so a slow function never holds the socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::block_handler::{BlockHandler, BlockHandlerConfig, BlockValue};
use coap_lite::{
    CoapOption, CoapRequest, ContentFormat, MessageClass, MessageType, Packet, RequestType,
    ResponseType,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::grpc::{run, target, Ran};
use crate::functions::invoke::{Answer, Call, Failure, Refusal};
use crate::functions::Functions;
use crate::http::auth::Tokens;

/// The largest input a call takes (assembled from Block1 blocks).
pub const MAX_INPUT: usize = 1 << 20;

/// How long an answer is kept for retransmissions: RFC 7252's EXCHANGE_LIFETIME.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// How many recent answers are remembered; the oldest go first beyond that.
const SEEN_CAPACITY: usize = 4096;

/// How many calls may run at once on the door; a new request beyond that is answered 5.03
/// rather than forgetting a running one (whose retransmission would then run it twice).
const RUNNING_CAPACITY: usize = 4096;

/// Serves calls on `socket` until `stop` is cancelled.
pub async fn serve(
    socket: UdpSocket,
    functions: Arc<Functions>,
    tokens: Option<Tokens>,
    stop: CancellationToken,
) {
    if tokens.is_some() {
        let local = socket
            .local_addr()
            .map(|a| a.ip().to_canonical().is_loopback());
        if !matches!(local, Ok(true)) {
            tracing::warn!(
                "tokens are configured and CoAP cannot carry one: the CoAP door answers \
                 loopback peers only (4.01 Unauthorized to every other)"
            );
        }
    }
    let door = Arc::new(Door {
        socket,
        functions,
        loopback_only: tokens.is_some(),
        seen: Mutex::new(Seen::default()),
        blocks: Mutex::new(BlockHandler::new(BlockHandlerConfig::default())),
        next_id: AtomicU16::new(rand_u16()),
    });
    // The largest UDP payload: nothing read is ever cut.
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = door.socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(error = %e, "CoAP receive failed");
                    continue;
                }
            },
        };
        door.clone().datagram(&buf[..n], peer);
    }
}

/// A message id to start from, different from one start to the next.
fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([b[0], b[1]])
}

struct Door {
    socket: UdpSocket,
    functions: Arc<Functions>,
    loopback_only: bool,
    seen: Mutex<Seen>,
    blocks: Mutex<BlockHandler<SocketAddr>>,
    /// Message ids of NON answers, which have their own.
    next_id: AtomicU16,
}

/// Locks `m`; a panic elsewhere while holding it leaves data that is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Door {
    /// Handles one datagram: answers at once what needs no function, else starts the call on
    /// a task of its own.
    fn datagram(self: Arc<Self>, bytes: &[u8], peer: SocketAddr) {
        let packet = match Packet::from_bytes(bytes) {
            Ok(p) => p,
            Err(_) => {
                if let Some(id) = confirmable_id(bytes) {
                    self.send(reset(id), peer);
                }
                return;
            }
        };
        let confirmable = match packet.header.get_type() {
            MessageType::Confirmable => true,
            MessageType::NonConfirmable => false,
            // We never send a confirmable message, so no ACK or RST is ours to read.
            MessageType::Acknowledgement | MessageType::Reset => return,
        };
        if !matches!(packet.header.code, MessageClass::Request(_)) {
            // An empty message (a ping) or a response sent to us as a request.
            if confirmable {
                self.send(reset(packet.header.message_id), peer);
            }
            return;
        }
        let key = (peer, packet.header.message_id);
        let exchange = lock(&self.seen).check(key, Instant::now());
        match exchange {
            Exchange::Answered(bytes) => {
                self.send(bytes, peer);
                return;
            }
            Exchange::Running => return,
            Exchange::Busy => {
                let non = packet.header.get_type() == MessageType::NonConfirmable;
                let mut request = CoapRequest::from_packet(packet, peer);
                fail(
                    &mut request,
                    ResponseType::ServiceUnavailable,
                    "too many calls are running on this CoAP door: try again later",
                );
                let answer = self.reply(request, non);
                // Not remembered: a retransmission is asked again.
                match answer.to_bytes_with_limit(MAX_DATAGRAM) {
                    Ok(b) => self.send(b, peer),
                    Err(e) => tracing::warn!(error = ?e, "a CoAP answer could not be written"),
                }
                return;
            }
            Exchange::New => {}
        }
        tokio::spawn(async move {
            let pending = Pending {
                door: self.clone(),
                key,
            };
            let answer = self.answer(packet, peer).await;
            let bytes = match answer.to_bytes_with_limit(MAX_DATAGRAM) {
                Ok(b) => b,
                Err(e) => {
                    // `pending` forgets it.
                    tracing::warn!(error = ?e, "a CoAP answer could not be written");
                    return;
                }
            };
            lock(&self.seen).answered(key, bytes.clone(), Instant::now());
            drop(pending);
            if let Err(e) = self.socket.send_to(&bytes, peer).await {
                tracing::debug!(error = %e, %peer, "CoAP send failed");
            }
        });
    }

    fn send(self: Arc<Self>, bytes: Vec<u8>, peer: SocketAddr) {
        tokio::spawn(async move {
            if let Err(e) = self.socket.send_to(&bytes, peer).await {
                tracing::debug!(error = %e, %peer, "CoAP send failed");
            }
        });
    }

    /// The answer to a request: piggybacked on the ACK of a CON, else a NON of its own.
    async fn answer(&self, packet: Packet, peer: SocketAddr) -> Packet {
        let non = packet.header.get_type() == MessageType::NonConfirmable;
        let mut request = CoapRequest::from_packet(packet, peer);
        self.respond(&mut request, peer).await;
        self.reply(request, non)
    }

    /// The message of `request`'s response; a NON gets a message id of its own.
    fn reply(&self, request: CoapRequest<SocketAddr>, non: bool) -> Packet {
        let mut answer = match request.response {
            Some(r) => r.message,
            // from_packet answers every CON and NON, the only types that reach here.
            None => Packet::new(),
        };
        if non {
            answer.header.message_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Fills `request.response`.
    async fn respond(&self, request: &mut CoapRequest<SocketAddr>, peer: SocketAddr) {
        if !admitted(self.loopback_only, peer) {
            return fail(
                request,
                ResponseType::Unauthorized,
                "this server wants a bearer token, which CoAP cannot carry: CoAP is answered \
                 on the loopback interface only; call over HTTP or gRPC with the token",
            );
        }
        let method = match *request.get_method() {
            RequestType::Get => "GET",
            RequestType::Post => "POST",
            _ => {
                return fail(
                    request,
                    ResponseType::MethodNotAllowed,
                    "call a function with GET or POST",
                )
            }
        };
        if let Some(Ok(b1)) = request
            .message
            .get_first_option_as::<BlockValue>(CoapOption::Block1)
        {
            if (usize::from(b1.num) + 1).saturating_mul(b1.size()) > MAX_INPUT {
                return fail(
                    request,
                    ResponseType::RequestEntityTooLarge,
                    &format!("the input is larger than {MAX_INPUT} bytes"),
                );
            }
        }
        let intercepted = lock(&self.blocks).intercept_request(request);
        match intercepted {
            // A block of a transfer: its answer is set already.
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                request.apply_from_error(e);
                return;
            }
        }
        if request.message.payload.len() > MAX_INPUT {
            return fail(
                request,
                ResponseType::RequestEntityTooLarge,
                &format!("the input is larger than {MAX_INPUT} bytes"),
            );
        }
        let path = match request.get_path_as_vec() {
            Ok(segments) => segments.join("/"),
            Err(_) => return fail(request, ResponseType::BadRequest, "the path is not UTF-8"),
        };
        let (namespace, name) = match target(&path) {
            Ok(t) => t,
            Err(why) => return fail(request, ResponseType::BadRequest, &why),
        };
        let payload = std::mem::take(&mut request.message.payload);
        let call = Call {
            method: method.into(),
            path: format!("/{path}"),
            query: Vec::new(),
            headers: Vec::new(),
            has_body: !payload.is_empty(),
            body: Bytes::from(payload),
        };
        match run(&self.functions, namespace, name, call).await {
            Ran::Answered(answer, _) => {
                if let Some(r) = request.response.as_mut() {
                    r.set_status(ResponseType::Content);
                    r.message.set_content_format(content_format(&answer));
                    r.message.payload = answer.body;
                }
                let intercepted = lock(&self.blocks).intercept_response(request);
                if let Err(e) = intercepted {
                    request.apply_from_error(e);
                }
            }
            Ran::Failed(failure, message, _) => {
                let code = match failure {
                    Failure::Timeout(_) => ResponseType::GatewayTimeout,
                    Failure::QueueFull(_) | Failure::Unavailable(_) => {
                        ResponseType::ServiceUnavailable
                    }
                    Failure::Function(_) | Failure::Gone => ResponseType::InternalServerError,
                };
                fail(request, code, &message)
            }
            Ran::Refused(Refusal::NotFound(what)) => fail(
                request,
                ResponseType::NotFound,
                &format!("no function {what}"),
            ),
            Ran::Refused(Refusal::QueueFull(n)) => fail(
                request,
                ResponseType::ServiceUnavailable,
                &format!("the function's queue is full ({n} calls wait); try again later"),
            ),
            Ran::Refused(Refusal::Store(e)) => {
                fail(request, ResponseType::InternalServerError, &e.to_string())
            }
            Ran::Lost(why) => fail(request, ResponseType::InternalServerError, &why),
        }
    }
}

/// Whether `peer` is answered: behind tokens, only on the loopback interface (an IPv4
/// address mapped into IPv6 counts as the IPv4 one).
fn admitted(loopback_only: bool, peer: SocketAddr) -> bool {
    !loopback_only || peer.ip().to_canonical().is_loopback()
}

/// The most an answer may take as one datagram; larger outputs went out in Block2 blocks
/// already, so only a diagnostic could be that long, and it is cut to fit.
const MAX_DATAGRAM: usize = 1152;

/// Sets an error answer with a diagnostic payload (RFC 7252 5.5.2), cut to fit a datagram.
fn fail(request: &mut CoapRequest<SocketAddr>, code: ResponseType, why: &str) {
    if let Some(r) = request.response.as_mut() {
        r.set_status(code);
        r.message.clear_all_options();
        r.message.set_content_format(ContentFormat::TextPlain);
        let mut end = why.len().min(MAX_DATAGRAM - 64);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        r.message.payload = why.as_bytes()[..end].to_vec();
    }
}

/// The Content-Format of an answer, from its content type.
fn content_format(answer: &Answer) -> ContentFormat {
    let t = answer.content_type.to_ascii_lowercase();
    if t.starts_with("application/json") {
        ContentFormat::ApplicationJSON
    } else if t.starts_with("text/") {
        ContentFormat::TextPlain
    } else {
        ContentFormat::ApplicationOctetStream
    }
}

/// A Reset for the message `id`.
fn reset(id: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Reset);
    p.header.code = MessageClass::Empty;
    p.header.message_id = id;
    // An empty message of 4 bytes always fits.
    p.to_bytes().unwrap_or_default()
}

/// The message id of a datagram whose fixed header says CoAP version 1, confirmable.
fn confirmable_id(bytes: &[u8]) -> Option<u16> {
    let (first, id) = (bytes.first()?, bytes.get(2..4)?);
    (first >> 6 == 1 && (first >> 4) & 0b11 == 0).then(|| u16::from_be_bytes([id[0], id[1]]))
}

/// An exchange: the peer and its message id.
type Key = (SocketAddr, u16);

/// What became of a message id from a peer.
#[derive(Debug, PartialEq)]
enum Exchange {
    /// Never seen (now it is, and running).
    New,
    Running,
    /// Answered: the answer to send again.
    Answered(Vec<u8>),
    /// Never seen, but [`RUNNING_CAPACITY`] calls are running: not taken (5.03).
    Busy,
}

/// Recent exchanges, by peer and message id: those running until they are answered (never
/// evicted, or a retransmission would run the call again), and the answers for
/// [`EXCHANGE_LIFETIME`], at most [`SEEN_CAPACITY`] of them.
#[derive(Default)]
struct Seen {
    running: HashSet<Key>,
    answered: HashMap<Key, (Instant, Vec<u8>)>,
    /// Answers by the time they were made, oldest first.
    order: VecDeque<(Instant, Key)>,
}

impl Seen {
    fn check(&mut self, key: Key, now: Instant) -> Exchange {
        self.expire(now);
        if self.running.contains(&key) {
            return Exchange::Running;
        }
        if let Some((_, bytes)) = self.answered.get(&key) {
            return Exchange::Answered(bytes.clone());
        }
        if self.running.len() >= RUNNING_CAPACITY {
            return Exchange::Busy;
        }
        self.running.insert(key);
        Exchange::New
    }

    fn answered(&mut self, key: Key, bytes: Vec<u8>, now: Instant) {
        if self.running.remove(&key) {
            self.answered.insert(key, (now, bytes));
            self.order.push_back((now, key));
        }
        self.expire(now);
    }

    /// Drops a running exchange that will have no answer (a later copy runs anew); an
    /// answered one stays.
    fn forget(&mut self, key: Key) {
        self.running.remove(&key);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            let old = now.duration_since(at) > EXCHANGE_LIFETIME;
            if !old && self.order.len() <= SEEN_CAPACITY {
                break;
            }
            self.order.pop_front();
            // Only the answer made at that time.
            if self.answered.get(&key).is_some_and(|(t, _)| *t == at) {
                self.answered.remove(&key);
            }
        }
    }
}

/// Forgets its exchange when dropped unless it was answered: a call task that ends without
/// an answer (it panicked) leaves no entry running for ever.
struct Pending {
    door: Arc<Door>,
    key: Key,
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.door.seen).forget(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_message_id_runs_once_and_is_answered_again() {
        let mut seen = Seen::default();
        let t = Instant::now();
        assert_eq!(seen.check((peer(1), 7), t), Exchange::New);
        assert_eq!(seen.check((peer(1), 7), t), Exchange::Running);
        // Another peer's same id is another exchange.
        assert_eq!(seen.check((peer(2), 7), t), Exchange::New);
        seen.answered((peer(1), 7), vec![1, 2], t);
        assert_eq!(seen.check((peer(1), 7), t), Exchange::Answered(vec![1, 2]));
        let later = t + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert_eq!(seen.check((peer(1), 7), later), Exchange::New);
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_of_answers() {
        let mut seen = Seen::default();
        let t = Instant::now();
        for id in 0..(SEEN_CAPACITY as u16 + 10) {
            assert_eq!(seen.check((peer(1), id), t), Exchange::New);
            seen.answered((peer(1), id), vec![1], t);
        }
        assert_eq!(seen.answered.len(), SEEN_CAPACITY);
        assert_eq!(seen.order.len(), SEEN_CAPACITY);
        // The oldest went first.
        assert_eq!(seen.check((peer(1), 0), t), Exchange::New);
        assert_eq!(
            seen.check((peer(1), SEEN_CAPACITY as u16 + 9), t),
            Exchange::Answered(vec![1])
        );
    }

    #[test]
    fn a_running_exchange_is_never_evicted() {
        let mut seen = Seen::default();
        let t = Instant::now();
        let slow = (peer(9), 1);
        assert_eq!(seen.check(slow, t), Exchange::New);
        // Many other calls come and are answered, more than the cache keeps, and time passes.
        for id in 0..(SEEN_CAPACITY as u16 + 10) {
            assert_eq!(seen.check((peer(1), id), t), Exchange::New);
            seen.answered((peer(1), id), vec![1], t);
        }
        let later = t + EXCHANGE_LIFETIME + Duration::from_secs(1);
        // Its retransmission is still a copy of a running call, not a new one.
        assert_eq!(seen.check(slow, later), Exchange::Running);
        seen.answered(slow, vec![2], later);
        assert_eq!(seen.check(slow, later), Exchange::Answered(vec![2]));
    }

    #[test]
    fn past_its_running_capacity_a_new_exchange_is_busy() {
        let mut seen = Seen::default();
        let t = Instant::now();
        let key = |i: usize| (peer(1 + (i / 60_000) as u16), (i % 60_000) as u16);
        for i in 0..RUNNING_CAPACITY {
            assert_eq!(seen.check(key(i), t), Exchange::New);
        }
        let extra = (peer(999), 1);
        assert_eq!(seen.check(extra, t), Exchange::Busy);
        // A busy answer is not remembered: asked again it is still busy, not running.
        assert_eq!(seen.check(extra, t), Exchange::Busy);
        // The running ones still are, and are answered.
        assert_eq!(seen.check(key(0), t), Exchange::Running);
        seen.answered(key(0), vec![3], t);
        assert_eq!(seen.check(extra, t), Exchange::New);
        // One forgotten (no answer could be written) frees its place too.
        seen.forget(key(1));
        assert_eq!(seen.check((peer(1000), 1), t), Exchange::New);
        assert_eq!(seen.check((peer(1000), 2), t), Exchange::Busy);
    }

    #[test]
    fn behind_tokens_only_loopback_peers_are_answered() {
        let v4: SocketAddr = "127.0.0.1:5".parse().expect("addr");
        let v6: SocketAddr = "[::1]:5".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().expect("addr");
        let lan: SocketAddr = "192.168.1.9:5".parse().expect("addr");
        let lan_mapped: SocketAddr = "[::ffff:192.168.1.9]:5".parse().expect("addr");
        for p in [v4, v6, mapped, lan, lan_mapped] {
            assert!(admitted(false, p), "{p}");
        }
        for p in [v4, v6, mapped] {
            assert!(admitted(true, p), "{p}");
        }
        for p in [lan, lan_mapped] {
            assert!(!admitted(true, p), "{p}");
        }
    }

    #[test]
    fn confirmable_ids_are_read_from_the_fixed_header_only() {
        // Version 1, CON, token length 0, GET, id 0x1234.
        assert_eq!(confirmable_id(&[0x40, 0x01, 0x12, 0x34]), Some(0x1234));
        // NON.
        assert_eq!(confirmable_id(&[0x50, 0x01, 0x12, 0x34]), None);
        // Version 2.
        assert_eq!(confirmable_id(&[0x80, 0x01, 0x12, 0x34]), None);
        assert_eq!(confirmable_id(&[0x40, 0x01]), None);
        let r = Packet::from_bytes(&reset(9)).expect("a reset parses");
        assert_eq!(r.header.get_type(), MessageType::Reset);
        assert_eq!(r.header.message_id, 9);
    }
}
