//! The Sans-IO CoAP endpoint: message layer (RFC 7252 §4) and exchange layer (§5), client and
//! server in one state machine.
//!
//! # Driving an endpoint
//!
//! An [`Endpoint`] is driven by three kinds of calls, always with the current time:
//!
//! * **Input** — [`handle_datagram`](Endpoint::handle_datagram) (and
//!   [`handle_multicast_datagram`](Endpoint::handle_multicast_datagram)) for each datagram that
//!   arrives, [`handle_timeout`](Endpoint::handle_timeout) when the deadline from
//!   `poll_timeout` passes, [`handle_unreachable`](Endpoint::handle_unreachable) when the
//!   socket reports an ICMP error for a peer.
//! * **Commands** — [`request`](Endpoint::request), [`cancel`](Endpoint::cancel),
//!   [`ping`](Endpoint::ping) as a client; [`respond`](Endpoint::respond) as a server;
//!   [`abort_peer`](Endpoint::abort_peer) and [`close`](Endpoint::close).
//! * **Output** — after any input or command, drain
//!   [`poll_transmit`](Endpoint::poll_transmit) (datagrams to send) and
//!   [`poll_event`](Endpoint::poll_event) (what the application should know), then sleep until
//!   [`poll_timeout`](Endpoint::poll_timeout).
//!
//! There is no hidden call-order contract: outputs queue (within bounds) until polled, an early
//! `handle_timeout` does nothing, and polling an idle endpoint is cheap.
//!
//! # Guarantees
//!
//! * Every request started with `request` or `ping` ends in exactly one final event:
//!   [`Event::Response`], [`Event::RequestFailed`], [`Event::Pong`] or, for multicast,
//!   [`Event::MulticastDone`].
//! * A request that the network duplicates reaches the application once; the duplicates get the
//!   same answer again from the deduplication cache (RFC 7252 §4.5).
//! * Every table a peer can grow is bounded by [`Config`]; over a bound the endpoint answers
//!   5.03 Service Unavailable, returns a typed error, or evicts the oldest deduplication entry
//!   (counted in [`Stats`]).
//! * Misbehaving peers get the answer the RFC prescribes (Reset, 4.00, 4.02, 5.05, or silence);
//!   nothing a peer sends makes a call return an error or panic.

mod block;
mod config;
mod datagram;
mod dedup;
mod event;
mod key;
mod observe;
mod peer;
mod timer;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;
use datagram::Datagram;

use bytes::Bytes;
use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use key::{MessageKey, PeerKey};
use rand_core::RngCore;

use crate::cache_key::{CacheKey, BLOCKWISE_EXCLUDED, BLOCKWISE_OBSERVE_EXCLUDED};
use crate::msg::{
    parse_header, Code, Message, MessageType, MessageView, OptionErrorKind, OptionNumber, Options,
    Token,
};
use crate::request::{Request, Response};
use crate::rng::SeededRng;
use crate::time::Instant;

pub use config::{Config, ConfigError};
pub use event::{Event, Failure, IncomingId, Progress, RequestId};
pub use observe::{is_fresher, ObserverId, ObserverRemoval};

use block::{
    block_size, slice_response, szx_at_most, Assemblies, AssemblyLimits, ClientBlock, Received,
    Representations, Upload,
};
use dedup::{Dedup, DedupSlot, DedupState};
use observe::{ClientObserve, ObserverLimits, Registry};
use peer::{Held, Peer};
use timer::{Timer, Timers};

/// A datagram to send, written into the caller's buffer by [`Endpoint::poll_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub remote: SocketAddr,
    /// How many bytes of the buffer it fills.
    pub len: usize,
}

/// The buffer given to [`Endpoint::poll_transmit`] cannot hold the next datagram, which stays
/// queued. A buffer of [`Config::max_message_size`] bytes always suffices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// The size of the waiting datagram.
    pub needed: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transmit buffer too small: {} bytes needed", self.needed)
    }
}

impl core::error::Error for BufferTooSmall {}

/// Why [`Endpoint::request`] or [`Endpoint::ping`] refused to start an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The code is not a request method (class 0, detail 1..=31).
    NotARequest(Code),
    /// [`Config::max_client_exchanges`] exchanges are already under way; retry when one ends.
    TooManyExchanges,
    /// [`Config::max_queued_per_peer`] requests already wait for this peer; retry when one ends.
    QueueFull,
    /// [`Config::max_peers`] peers already have state; retry when exchanges end.
    TooManyPeers,
    /// The encoded request exceeds [`Config::max_message_size`].
    MessageTooBig {
        /// Encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// [`Endpoint::close`] was called.
    ShuttingDown,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NotARequest(c) => write!(f, "code {c} is not a request method"),
            RequestError::TooManyExchanges => f.write_str("too many exchanges under way"),
            RequestError::QueueFull => f.write_str("too many requests queued for this peer"),
            RequestError::TooManyPeers => f.write_str("too many peers with state"),
            RequestError::MessageTooBig { size, max } => {
                write!(f, "request of {size} bytes exceeds the maximum of {max}")
            }
            RequestError::ShuttingDown => f.write_str("the endpoint is shutting down"),
        }
    }
}

impl core::error::Error for RequestError {}

/// Why [`Endpoint::respond`] refused a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RespondError {
    /// No request with this id waits for an answer: it was answered already, or its peer was
    /// aborted.
    UnknownRequest(IncomingId),
    /// The code is not a response code (classes 2, 4 and 5).
    NotAResponse(Code),
    /// The encoded response exceeds [`Config::max_message_size`]; the request still waits for
    /// an answer.
    MessageTooBig {
        /// Encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

impl fmt::Display for RespondError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespondError::UnknownRequest(id) => write!(f, "no request {id} waits for an answer"),
            RespondError::NotAResponse(c) => write!(f, "code {c} is not a response code"),
            RespondError::MessageTooBig { size, max } => {
                write!(f, "response of {size} bytes exceeds the maximum of {max}")
            }
        }
    }
}

impl core::error::Error for RespondError {}

/// Counters of what an endpoint has seen and done, for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams passed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Datagrams handed out by `poll_transmit`.
    pub datagrams_sent: u64,
    /// Datagrams that could not be parsed or broke a format rule.
    pub malformed: u64,
    /// Duplicate CON/NON messages recognised by the deduplication cache.
    pub duplicates: u64,
    /// Retransmissions of Confirmable messages.
    pub retransmissions: u64,
    /// Deduplication entries evicted before their lifetime ended because the cache was full.
    pub dedup_evictions: u64,
    /// Requests answered 5.03 because a table was full.
    pub overload_rejections: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub transmit_queue_drops: u64,
    /// ACK and RST messages that matched nothing.
    pub unmatched_acks: u64,
    /// Responses whose token matched no exchange (answered with Reset).
    pub unmatched_responses: u64,
}

impl core::ops::AddAssign for Stats {
    /// Adds another endpoint's counters to these, for totals over several endpoints (a
    /// server with one engine per core). Counters saturate instead of wrapping.
    fn add_assign(&mut self, other: Stats) {
        // Every field is named, so a new counter cannot be left out of the sum.
        let Stats {
            datagrams_received,
            datagrams_sent,
            malformed,
            duplicates,
            retransmissions,
            dedup_evictions,
            overload_rejections,
            transmit_queue_drops,
            unmatched_acks,
            unmatched_responses,
        } = other;
        for (total, add) in [
            (&mut self.datagrams_received, datagrams_received),
            (&mut self.datagrams_sent, datagrams_sent),
            (&mut self.malformed, malformed),
            (&mut self.duplicates, duplicates),
            (&mut self.retransmissions, retransmissions),
            (&mut self.dedup_evictions, dedup_evictions),
            (&mut self.overload_rejections, overload_rejections),
            (&mut self.transmit_queue_drops, transmit_queue_drops),
            (&mut self.unmatched_acks, unmatched_acks),
            (&mut self.unmatched_responses, unmatched_responses),
        ] {
            *total = total.saturating_add(add);
        }
    }
}

/// The sizes of an endpoint's tables (see [`Endpoint::table_sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableSizes {
    /// Client exchanges queued or in flight.
    pub client_exchanges: usize,
    /// Incoming requests not yet answered.
    pub server_exchanges: usize,
    /// Confirmable messages awaiting their ACK.
    pub awaiting_ack: usize,
    /// Peers with message-layer state.
    pub peers: usize,
    /// Deduplication cache entries.
    pub dedup_entries: usize,
    /// Bytes charged to the deduplication cache (see
    /// [`Config::max_dedup_bytes`](super::Config::max_dedup_bytes)).
    pub dedup_bytes: usize,
    /// Request bodies being reassembled from Block1 blocks.
    pub reassemblies: usize,
    /// Representations kept for follow-up Block2 requests.
    pub representations: usize,
    /// Observers on this server, and render requests not yet answered. (Each observer
    /// remembers its last few NON notifications for Reset matching in a fixed-size record.)
    pub observers: usize,
    /// Armed timers (including stale entries not yet compacted).
    pub timers: usize,
    /// Datagrams waiting for `poll_transmit`.
    pub transmit_queue: usize,
    /// Events waiting for `poll_event`.
    pub events: usize,
}

impl TableSizes {
    /// Whether every table is empty.
    pub fn is_empty(&self) -> bool {
        *self == TableSizes::default()
    }
}

/// Where a client exchange stands.
#[derive(Debug)]
enum ClientState {
    /// Waiting for NSTART or a Message ID; holds the request until it is sent.
    Queued(Box<Request>),
    /// Sent as CON with this Message ID; retransmitted until acknowledged.
    AwaitingAck { mid: u16 },
    /// Acknowledged by an empty ACK, or sent as NON: waiting for the response until `deadline`.
    AwaitingResponse { deadline: Instant, mid: u16 },
    /// An established observation: notifications arrive as they come; at `deadline` (Max-Age
    /// of the last one plus a grace) the client registers again (RFC 7641 §3.3.1).
    Observing { deadline: Instant },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientKind {
    Request,
    Ping,
    Multicast,
}

#[derive(Debug)]
struct ClientExchange {
    peer: SocketAddr,
    token: Token,
    kind: ClientKind,
    message_type: MessageType,
    method: Code,
    timeout: Option<Duration>,
    state: ClientState,
    /// Whether this exchange holds one of its peer's NSTART slots.
    outstanding: bool,
    /// The request message as last sent (shared with the retransmission state), from which
    /// follow-up Block2 requests are derived.
    sent: Option<Datagram>,
    /// Block-wise upload or download in progress.
    block: Option<Box<ClientBlock>>,
    /// The application chose the Block2 option itself (random access): deliver that block as
    /// it is instead of fetching the rest.
    random_access: bool,
    /// Set for observations (RFC 7641).
    observe: Option<Box<ClientObserve>>,
    /// Set for the internal request that fetches the rest of a block-wise notification.
    notification_of: Option<Box<NotificationBlocks>>,
}

/// A notification whose first block arrived; the rest is being fetched (RFC 7959 §2.6).
#[derive(Debug)]
struct NotificationBlocks {
    /// The observation it belongs to.
    parent: RequestId,
    /// The first block's message, whose options the complete notification keeps.
    first: Message,
    fresh: bool,
}

/// Who waits for the acknowledgement of a Confirmable message this endpoint sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConOwner {
    Request(RequestId),
    Response(IncomingId),
    /// A Confirmable notification to an observer.
    Notification(u64),
}

/// A Confirmable message waiting for its ACK (RFC 7252 §4.2).
#[derive(Debug)]
struct PendingCon {
    owner: ConOwner,
    bytes: Datagram,
    retransmissions: u32,
    timeout: Duration,
    deadline: Instant,
}

/// A request handed to the application and not yet answered.
#[derive(Debug)]
struct ServerExchange {
    peer: SocketAddr,
    mid: u16,
    token: Token,
    message_type: MessageType,
    multicast: bool,
    /// Whether the empty ACK went out, making the response a separate one.
    ack_sent: bool,
    /// The No-Response option (RFC 7967), 0 when absent.
    no_response: u8,
    /// Block-wise bookkeeping for the response; `None` when the handler sees raw blocks.
    block: Option<ServerBlock>,
    /// A registration (Observe = 0), and whether the application accepted it.
    observe: Option<Box<ObserveRequest>>,
    /// The request's entry in the deduplication cache, where its answer goes.
    dedup: Option<DedupSlot>,
}

/// An incoming observe registration waiting for its response.
#[derive(Debug)]
struct ObserveRequest {
    path: alloc::string::String,
    key: CacheKey,
    request: Message,
    accepted: bool,
    /// It registers only if the answer carries Observe: a registration through a forward
    /// proxy (the proxy relays an observation of the origin, or not), or one accepted with
    /// [`Endpoint::accept_observer_if_observed`].
    if_observed: bool,
}

/// Why [`Endpoint::accept_observer`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObserveError {
    /// No request with this id waits for an answer.
    UnknownRequest(IncomingId),
    /// The request is not a registration (GET or FETCH with Observe = 0).
    NotARegistration,
    /// A bound on observers (in total, per resource or per peer) is reached; answer the
    /// request as a plain one.
    TooManyObservers,
}

impl fmt::Display for ObserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObserveError::UnknownRequest(id) => write!(f, "no request {id} waits for an answer"),
            ObserveError::NotARegistration => {
                f.write_str("the request is not an observe registration")
            }
            ObserveError::TooManyObservers => f.write_str("too many observers"),
        }
    }
}

impl core::error::Error for ObserveError {}

/// What the engine must remember to answer a request block-wise.
#[derive(Debug)]
struct ServerBlock {
    /// Identifies the representation for follow-up Block2 requests.
    key: CacheKey,
    /// The Block2 option of the request, if any.
    block2: Option<crate::msg::Block>,
    /// The request carried Size2 = 0: answer with the total size (RFC 7959 §4).
    size2: bool,
    /// The Block1 option to echo in the response to the final block of an upload.
    block1_echo: Option<crate::msg::Block>,
}

/// A datagram waiting for `poll_transmit`.
#[derive(Debug)]
struct Outgoing {
    remote: SocketAddr,
    bytes: Datagram,
}

/// Option numbers whose meaning the engine or every application understands. A critical
/// option outside this list (and [`Config::extra_critical_options`]) is "unrecognized" in the
/// sense of RFC 7252 §5.4.1.
const RECOGNIZED_CRITICAL: &[OptionNumber] = &[
    OptionNumber::IF_MATCH,
    OptionNumber::URI_HOST,
    OptionNumber::IF_NONE_MATCH,
    OptionNumber::URI_PORT,
    OptionNumber::URI_PATH,
    OptionNumber::URI_QUERY,
    OptionNumber::ACCEPT,
    OptionNumber::BLOCK2,
    OptionNumber::BLOCK1,
    OptionNumber::PROXY_URI,
    OptionNumber::PROXY_SCHEME,
];

/// A CoAP endpoint: client and server in one Sans-IO state machine.
///
/// See the [module documentation](self) for how to drive it.
pub struct Endpoint {
    config: Config,
    lifetimes: Lifetimes,
    rng: Box<dyn RngCore + Send>,
    next_request_id: u64,
    next_incoming_id: u64,
    clients: HashMap<RequestId, ClientExchange>,
    tokens: HashMap<Token, RequestId>,
    /// NON requests by (peer, Message ID), so a Reset can be matched to them.
    non_requests: HashMap<MessageKey, RequestId>,
    pending_con: HashMap<MessageKey, PendingCon>,
    peers: HashMap<PeerKey, Peer>,
    servers: HashMap<IncomingId, ServerExchange>,
    /// Empty-ACK deadlines in arrival order; the delay is constant, so this stays sorted.
    empty_acks: VecDeque<(Instant, IncomingId)>,
    dedup: Dedup,
    assemblies: Assemblies,
    representations: Representations,
    /// Counter giving concurrent uploads to one resource distinct Request-Tags (RFC 9175 §3).
    next_request_tag: u32,
    observers: Registry,
    /// Render requests handed to the application (see [`Event::RenderNotification`]): which
    /// variant each one is for.
    renders: HashMap<IncomingId, u64>,
    timers: Timers,
    /// CONs sent within the last ACK_TIMEOUT, in sending order, with the instant to look at
    /// them and their first retransmission deadline (see `arm_retransmit`).
    first_timeouts: VecDeque<(Instant, MessageKey, Instant)>,
    /// Responses to multicast requests waiting out their random leisure (RFC 7252 §8.2).
    delayed: VecDeque<(Instant, Outgoing)>,
    transmits: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    scratch: Vec<u8>,
    stats: Stats,
    closing: bool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("client_exchanges", &self.clients.len())
            .field("server_exchanges", &self.servers.len())
            .field("pending_con", &self.pending_con.len())
            .field("peers", &self.peers.len())
            .field("dedup_entries", &self.dedup.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Creates an endpoint whose randomness (Message IDs, tokens, back-off jitter, multicast
    /// leisure) comes from a generator seeded with `seed`: the same seed and the same inputs
    /// give the same outputs.
    pub fn new(config: Config, seed: u64) -> Result<Endpoint, ConfigError> {
        Endpoint::with_rng(config, Box::new(SeededRng::new(seed)))
    }

    /// Creates an endpoint that draws its randomness from `rng`. Give it a cryptographically
    /// strong generator when tokens must be hard to guess for off-path attackers
    /// (RFC 7252 §5.3.1).
    pub fn with_rng(config: Config, rng: Box<dyn RngCore + Send>) -> Result<Endpoint, ConfigError> {
        config.validate()?;
        let scratch = Vec::with_capacity(config.max_message_size);
        Ok(Endpoint {
            lifetimes: Lifetimes::new(&config),
            config,
            rng,
            next_request_id: 1,
            next_incoming_id: 1,
            clients: HashMap::new(),
            tokens: HashMap::new(),
            non_requests: HashMap::new(),
            pending_con: HashMap::new(),
            peers: HashMap::new(),
            servers: HashMap::new(),
            empty_acks: VecDeque::new(),
            dedup: Dedup::default(),
            assemblies: Assemblies::default(),
            representations: Representations::default(),
            next_request_tag: 1,
            observers: Registry::default(),
            renders: HashMap::new(),
            timers: Timers::default(),
            first_timeouts: VecDeque::new(),
            delayed: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch,
            stats: Stats::default(),
            closing: false,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters of what the endpoint has seen and done.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ----------------------------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------------------------

    /// Writes the next datagram to send into `buf` and says where it goes, or returns
    /// `Ok(None)` when nothing waits. If `buf` is too small the datagram stays queued.
    ///
    /// `now` is reserved for pacing; pass the current time.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, BufferTooSmall> {
        let _ = now;
        let Some(next) = self.transmits.front() else {
            return Ok(None);
        };
        let len = next.bytes.len();
        let Some(dst) = buf.get_mut(..len) else {
            return Err(BufferTooSmall { needed: len });
        };
        dst.copy_from_slice(&next.bytes);
        let remote = next.remote;
        self.transmits.pop_front();
        self.stats.datagrams_sent += 1;
        Ok(Some(Transmit { remote, len }))
    }

    /// The next event for the application, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called, or `None` if no timer is armed.
    ///
    /// Calling `handle_timeout` earlier is harmless; calling it later delays retransmissions
    /// and expiries by as much.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Drop timer entries at the top that no longer name live state, so the deadline
        // reported is a real one.
        while let Some((deadline, timer)) = self.timers.peek() {
            if self.timer_is_live(deadline, &timer) {
                break;
            }
            self.timers.pop();
        }
        // Likewise for acknowledged CONs at the front of the first-timeout queue.
        while let Some(&(_, key, deadline)) = self.first_timeouts.front() {
            if self.timer_is_live(deadline, &Timer::Retransmit(key.peer, key.mid)) {
                break;
            }
            self.first_timeouts.pop_front();
        }
        // Folded one by one: an array of all of them is copied with a library call.
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut next = self.timers.next_deadline();
        next = earliest(next, self.first_timeouts.front().map(|&(t, ..)| t));
        next = earliest(next, self.empty_acks.front().map(|(t, _)| *t));
        next = earliest(next, self.dedup.next_expiry());
        next = earliest(next, self.assemblies.next_expiry());
        next = earliest(next, self.representations.next_expiry());
        earliest(next, self.delayed.front().map(|(t, _)| *t))
    }

    /// How full each table is: for monitoring, and for tests that check state drains.
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            client_exchanges: self.clients.len(),
            server_exchanges: self.servers.len(),
            awaiting_ack: self.pending_con.len(),
            peers: self.peers.len(),
            dedup_entries: self.dedup.len(),
            dedup_bytes: self.dedup.bytes(),
            reassemblies: self.assemblies.len(),
            representations: self.representations.len(),
            observers: self.observers.len() + self.renders.len(),
            timers: self.timers.len()
                + self.first_timeouts.len()
                + self.empty_acks.len()
                + self.delayed.len(),
            transmit_queue: self.transmits.len(),
            events: self.events.len(),
        }
    }

    /// Whether nothing is under way: no exchange in either direction, no Confirmable message
    /// awaiting its ACK, nothing waiting to be sent. After [`close`](Endpoint::close), a driver
    /// can stop once this is true.
    pub fn is_idle(&self) -> bool {
        self.clients.is_empty()
            && self.pending_con.is_empty()
            && self.servers.is_empty()
            && self.delayed.is_empty()
            && self.transmits.is_empty()
    }

    // ----------------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------------

    /// Processes a datagram that arrived from `remote` on a unicast address.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) {
        self.handle_incoming(now, remote, datagram, false);
    }

    /// Processes a datagram that arrived from `remote` addressed to a multicast group this
    /// endpoint joined. Requests received this way are answered after a random leisure, and
    /// error responses to them are suppressed (RFC 7252 §8.2).
    pub fn handle_multicast_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) {
        self.handle_incoming(now, remote, datagram, true);
    }

    /// Reports that the network said `remote` is unreachable (for example an ICMP port
    /// unreachable error surfaced by the socket). Every client exchange with that peer fails
    /// with [`Failure::Unreachable`], and its observations on this server end
    /// ([`ObserverRemoval::Unreachable`]).
    pub fn handle_unreachable(&mut self, now: Instant, remote: SocketAddr) {
        self.fail_peer_requests(now, remote, Failure::Unreachable);
        for oid in self.observers.of_peer(remote) {
            self.remove_observer(oid, ObserverRemoval::Unreachable);
        }
    }

    /// Advances timers to `now`: retransmissions, empty ACKs, timeouts and expiries.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.empty_acks.front() {
            if deadline > now {
                break;
            }
            self.empty_acks.pop_front();
            self.send_empty_ack_for(id);
        }
        if self.empty_acks.capacity() > 4 * self.empty_acks.len() + 64 {
            self.empty_acks.shrink_to(2 * self.empty_acks.len());
        }
        while self.delayed.front().is_some_and(|(t, _)| *t <= now) {
            // Sorted insertion keeps the earliest first.
            if let Some((_, out)) = self.delayed.pop_front() {
                self.queue_transmit(out.remote, out.bytes);
            }
        }
        self.dedup.expire(now);
        self.assemblies.expire(now);
        self.representations.expire(now);
        self.move_first_timeouts(now);
        while let Some((deadline, timer)) = self.timers.pop_due(now) {
            self.fire_timer(now, deadline, timer);
        }
        self.compact_timers();
    }

    // ----------------------------------------------------------------------------------------
    // Client commands
    // ----------------------------------------------------------------------------------------

    /// Starts a request to `remote`. The response, or the reason there is none, arrives as an
    /// event naming the returned id.
    ///
    /// A request to a multicast address is sent Non-confirmable and collects responses from
    /// every responder until [`Config::multicast_response_window`] (or the request's timeout)
    /// has passed.
    pub fn request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        request: Request,
    ) -> Result<RequestId, RequestError> {
        if self.closing {
            return Err(RequestError::ShuttingDown);
        }
        if !request.method.is_request() {
            return Err(RequestError::NotARequest(request.method));
        }
        let multicast = remote.ip().is_multicast();
        let kind = if multicast {
            ClientKind::Multicast
        } else {
            ClientKind::Request
        };
        let message_type = if multicast {
            MessageType::Non
        } else {
            request
                .message_type
                .unwrap_or(self.config.default_request_type)
        };
        let random_access = !multicast && request.options.contains(OptionNumber::BLOCK2);
        let szx = szx_at_most(self.config.block_size);
        let mut request = request;
        let mut block = None;
        if !multicast
            && !request.options.contains(OptionNumber::BLOCK1)
            && request.payload.len() > block_size(szx)
        {
            // RFC 7959 §2.5: a body larger than a block goes block by block.
            let mut base = request;
            self.tag_concurrent_upload(remote, &mut base);
            let upload = Upload {
                base,
                szx,
                offset: 0,
                restarts: 0,
                done: false,
            };
            request = upload.block_request();
            block = Some(Box::new(ClientBlock {
                upload: Some(upload),
                download: None,
            }));
        }
        if !multicast
            && !random_access
            && block_size(szx) < 1024
            && matches!(request.method, Code::GET | Code::FETCH)
        {
            // Early negotiation (§2.4): ask for our smaller block size from the first
            // response on. At 1024 bytes a Block2 option would say nothing the server does not
            // assume, and a server without block-wise support would reject the critical
            // option, so it is left out.
            if let Ok(b) = crate::msg::Block::new(0, false, block_size(szx)) {
                request.options.set_block2(b);
            }
        }
        // Size check up front: the header is 4 bytes plus the token; the Message ID does not
        // change the length.
        let size = message_len(&request, self.config.token_len);
        if size > self.config.max_message_size {
            return Err(RequestError::MessageTooBig {
                size,
                max: self.config.max_message_size,
            });
        }
        let token = self.fresh_token().ok_or(RequestError::TooManyExchanges)?;
        let id = self.start_exchange(now, remote, kind, message_type, token, request)?;
        if let Some(ex) = self.clients.get_mut(&id) {
            ex.block = block;
            ex.random_access = random_access;
        }
        Ok(id)
    }

    /// Gives a block-wise upload a Request-Tag when another upload to the same resource of
    /// the same peer is under way, so the server keeps them apart (RFC 9175 §3.3).
    fn tag_concurrent_upload(&mut self, remote: SocketAddr, base: &mut Request) {
        let key = CacheKey::new(base.method, &base.options, BLOCKWISE_EXCLUDED);
        let busy = self.clients.values().any(|ex| {
            ex.peer == remote
                && ex
                    .block
                    .as_ref()
                    .and_then(|b| b.upload.as_ref())
                    .is_some_and(|u| {
                        !u.done
                            && CacheKey::new(u.base.method, &u.base.options, BLOCKWISE_EXCLUDED)
                                == key
                    })
        });
        if busy {
            let tag = self.next_request_tag;
            self.next_request_tag = self.next_request_tag.wrapping_add(1);
            base.options
                .set(OptionNumber::REQUEST_TAG, &tag.to_be_bytes());
        }
    }

    /// Sends a CoAP ping (an empty Confirmable message, RFC 7252 §4.3) to `remote`. It ends
    /// with [`Event::Pong`] when the peer answers with Reset, or [`Event::RequestFailed`].
    pub fn ping(&mut self, now: Instant, remote: SocketAddr) -> Result<RequestId, RequestError> {
        if self.closing {
            return Err(RequestError::ShuttingDown);
        }
        let request = Request::new(Code::EMPTY).con();
        self.start_exchange(
            now,
            remote,
            ClientKind::Ping,
            MessageType::Con,
            Token::default(),
            request,
        )
    }

    /// Cancels a request. Its exchange ends with [`Failure::Cancelled`]; a response arriving
    /// later is answered with Reset. Returns false if the request had already ended.
    pub fn cancel(&mut self, now: Instant, id: RequestId) -> bool {
        if self.clients.contains_key(&id) {
            self.finish_client(
                now,
                id,
                Event::RequestFailed {
                    id,
                    reason: Failure::Cancelled,
                },
            );
            true
        } else {
            false
        }
    }

    /// Observes a resource (RFC 7641): sends `request` (a GET or FETCH) with Observe = 0.
    /// Each response carrying Observe arrives as [`Event::Notification`], marked fresh or not
    /// by the §3.4 ordering rule (stale ones are dropped unless
    /// [`Config::deliver_stale_notifications`] is set). When Max-Age of the last notification
    /// (plus [`Config::reregistration_grace`]) passes in silence, the client registers again.
    ///
    /// The observation ends with one final event: [`Event::Response`] if the server did not
    /// register us (a response without Observe: "not observable") or answered a
    /// deregistration; [`Event::RequestFailed`] with
    /// [`Failure::ObservationRejected`] after a non-2.xx notification, or with the reason the
    /// registration failed.
    pub fn observe(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        mut request: Request,
    ) -> Result<RequestId, RequestError> {
        request.options.set_uint(OptionNumber::OBSERVE, 0);
        let id = self.request(now, remote, request)?;
        if let Some(ex) = self.clients.get_mut(&id) {
            ex.observe = Some(Box::default());
        }
        Ok(id)
    }

    /// Ends an observation actively: sends the registration again with Observe = 1 and the
    /// same token (RFC 7641 §3.6). The server's answer arrives as the final
    /// [`Event::Response`]. Returns false if `id` is no established observation. (To end one
    /// passively, [`cancel`](Endpoint::cancel) it: later notifications are then answered with
    /// Reset.)
    pub fn cancel_observation(&mut self, now: Instant, id: RequestId) -> bool {
        let Some(ex) = self.clients.get_mut(&id) else {
            return false;
        };
        let Some(ob) = ex.observe.as_mut() else {
            return false;
        };
        if !ob.established || ob.deregistering {
            return false;
        }
        ob.deregistering = true;
        let next = registration_request(ex, 1);
        self.continue_exchange(now, id, next, false);
        true
    }

    /// The requests this endpoint has sent or queued and not yet seen end: id, peer, method
    /// and token (empty for pings).
    pub fn pending_requests(
        &self,
    ) -> impl Iterator<Item = (RequestId, SocketAddr, Code, &Token)> + '_ {
        self.clients
            .iter()
            .map(|(id, ex)| (*id, ex.peer, ex.method, &ex.token))
    }

    /// The requests received and not yet answered: id and peer.
    pub fn pending_incoming(&self) -> impl Iterator<Item = (IncomingId, SocketAddr)> + '_ {
        self.servers.iter().map(|(id, ex)| (*id, ex.peer))
    }

    /// Ends every exchange with `remote`, in both directions: its client exchanges fail with
    /// [`Failure::Cancelled`], its unanswered incoming requests are forgotten (a later
    /// `respond` for them returns [`RespondError::UnknownRequest`]) and Confirmable responses
    /// to it stop being retransmitted.
    pub fn abort_peer(&mut self, now: Instant, remote: SocketAddr) {
        self.fail_peer_requests(now, remote, Failure::Cancelled);
        self.servers.retain(|_, ex| ex.peer != remote);
        let mut ended = Vec::new();
        self.pending_con.retain(|key, pc| {
            if key.peer == remote {
                if let ConOwner::Response(id) = pc.owner {
                    ended.push(id);
                }
                false
            } else {
                true
            }
        });
        ended.sort_unstable();
        for id in ended {
            self.events.push_back(Event::ResponseNotConfirmed {
                id,
                reason: Failure::Cancelled,
            });
        }
        if let Some(peer) = self.peers.get_mut(&PeerKey(remote)) {
            peer.held.clear();
        }
        for oid in self.observers.of_peer(remote) {
            self.remove_observer(oid, ObserverRemoval::Cancelled);
        }
    }

    /// Starts shutting down: new requests are refused with [`RequestError::ShuttingDown`],
    /// incoming requests are answered 5.03 Service Unavailable, queued requests are cancelled,
    /// and what is in flight (including Confirmable responses awaiting their ACK) runs to its
    /// end. Stop driving the endpoint once [`is_idle`](Endpoint::is_idle) is true.
    pub fn close(&mut self, now: Instant) {
        self.closing = true;
        let observers: Vec<u64> = self.observers.observers.keys().copied().collect();
        for oid in observers {
            self.remove_observer(oid, ObserverRemoval::Cancelled);
        }
        let mut queued: Vec<RequestId> = self
            .clients
            .iter()
            .filter(|(_, ex)| matches!(ex.state, ClientState::Queued(_)))
            .map(|(id, _)| *id)
            .collect();
        queued.sort_unstable();
        for id in queued {
            self.finish_client(
                now,
                id,
                Event::RequestFailed {
                    id,
                    reason: Failure::Cancelled,
                },
            );
        }
    }

    // ----------------------------------------------------------------------------------------
    // Server commands
    // ----------------------------------------------------------------------------------------

    /// Accepts the registration `id` (a GET or FETCH with Observe = 0, see [`Event::Request`]):
    /// if the response given to [`respond`](Endpoint::respond) is 2.xx, the client becomes an
    /// observer of the request's path and the response carries the Observe option. Without
    /// this call a registration is answered as a plain request (RFC 7641 §4.1).
    pub fn accept_observer(&mut self, id: IncomingId) -> Result<(), ObserveError> {
        self.accept(id, false)
    }

    /// Accepts the registration `id` like [`accept_observer`](Endpoint::accept_observer),
    /// on the condition that the response carries an Observe option: a 2.xx response with
    /// one makes the client an observer (the engine puts its own sequence number in it),
    /// one without is a plain response (RFC 7641 §4.1). For handlers that find out while
    /// answering whether they can offer the observation, such as a proxy relaying the
    /// origin's. A registration through a forward proxy ([`Config::proxy`]) is always
    /// taken this way.
    pub fn accept_observer_if_observed(&mut self, id: IncomingId) -> Result<(), ObserveError> {
        self.accept(id, true)
    }

    fn accept(&mut self, id: IncomingId, if_observed: bool) -> Result<(), ObserveError> {
        let limits = ObserverLimits {
            total: self.config.max_observers,
            per_resource: self.config.max_observers_per_resource,
            per_peer: self.config.max_observers_per_peer,
        };
        let Some(ex) = self.servers.get_mut(&id) else {
            return Err(ObserveError::UnknownRequest(id));
        };
        let Some(reg) = ex.observe.as_mut() else {
            return Err(ObserveError::NotARegistration);
        };
        if !self
            .observers
            .has_room(&reg.path, ex.peer, &ex.token, limits)
        {
            return Err(ObserveError::TooManyObservers);
        }
        reg.accepted = true;
        reg.if_observed |= if_observed;
        Ok(())
    }

    /// Tells the engine that the resource at `path` (such as `"/temp"`) changed.
    ///
    /// With a representation, every observer of the resource gets it as a notification.
    /// Without one, the engine asks the application to render each variant of the resource
    /// (one [`Event::RenderNotification`] per distinct registration request, for example per
    /// Accept option); the application answers each with [`respond`](Endpoint::respond) and the
    /// engine fans the answer out. A non-2.xx representation ends the observations (§4.2).
    /// Returns how many observers (or render requests) were involved.
    pub fn notify(&mut self, now: Instant, path: &str, representation: Option<Response>) -> usize {
        let Some(&rid) = self.observers.resource_ids.get(path) else {
            return 0;
        };
        let variants: Vec<u64> = self
            .observers
            .resources
            .get(&rid)
            .map(|r| r.variants.iter().copied().collect())
            .unwrap_or_default();
        match representation {
            Some(rsp) => {
                let seq = self.observers.bump(rid);
                let mut n = 0;
                for vid in variants {
                    n += self.notify_variant_seq(now, vid, &rsp, seq);
                }
                n
            }
            None => {
                let n = variants.len();
                for vid in variants {
                    let Some(v) = self.observers.variants.get(&vid) else {
                        continue;
                    };
                    let id = IncomingId(self.next_incoming_id);
                    self.next_incoming_id += 1;
                    let request = v.request.clone();
                    self.renders.insert(id, vid);
                    self.events.push_back(Event::RenderNotification {
                        id,
                        resource: alloc::string::String::from(path),
                        request,
                    });
                }
                n
            }
        }
    }

    /// How many clients observe the resource at `path`.
    pub fn observer_count(&self, path: &str) -> usize {
        self.observers
            .resource_ids
            .get(path)
            .and_then(|r| self.observers.resources.get(r))
            .map_or(0, |r| r.count)
    }

    /// Removes every observer of the resource at `path` without telling the clients (they
    /// will re-register or notice Max-Age run out). Prefer [`notify`](Endpoint::notify) with
    /// a 4.04 when the resource is gone.
    pub fn remove_observers(&mut self, path: &str) {
        let Some(&rid) = self.observers.resource_ids.get(path) else {
            return;
        };
        let oids: Vec<u64> = self
            .observers
            .observers
            .iter()
            .filter(|(_, o)| o.resource == rid)
            .map(|(oid, _)| *oid)
            .collect();
        for oid in oids {
            self.remove_observer(oid, ObserverRemoval::Cancelled);
        }
    }

    /// Answers the request `id` (from [`Event::Request`]), now or much later.
    ///
    /// If the empty ACK has not gone out yet the response is piggybacked on the ACK; otherwise
    /// it is a separate response, Confirmable by default (RFC 7252 §5.2.2). Responses to
    /// multicast requests wait a random leisure and error responses to them are suppressed
    /// (§8.2); responses the request's No-Response option declines are suppressed too
    /// (RFC 7967).
    pub fn respond(
        &mut self,
        now: Instant,
        id: IncomingId,
        response: Response,
    ) -> Result<(), RespondError> {
        if !response.code.is_response() {
            return Err(RespondError::NotAResponse(response.code));
        }
        if let Some(vid) = self.renders.remove(&id) {
            self.notify_variant(now, vid, response);
            return Ok(());
        }
        let Some(mut ex) = self.servers.remove(&id) else {
            return Err(RespondError::UnknownRequest(id));
        };
        let mut response = response;
        match ex.observe.take() {
            Some(reg)
                if reg.accepted
                    && response.code.is_success()
                    && (!reg.if_observed || response.options.observe().is_some()) =>
            {
                let (oid, seq) = self.observers.add(
                    now,
                    &reg.path,
                    reg.key,
                    &reg.request,
                    ex.peer,
                    ex.token.clone(),
                );
                response.options.set_observe(seq);
                let count = self
                    .observers
                    .resource_ids
                    .get(&reg.path)
                    .and_then(|r| self.observers.resources.get(r))
                    .map_or(0, |r| r.count);
                self.events.push_back(Event::ObserverAdded {
                    id: ObserverId(oid),
                    resource: reg.path,
                    peer: ex.peer,
                    observers: count,
                });
            }
            // §4.1: a response that does not register carries no Observe option.
            _ => {
                response.options.remove(OptionNumber::OBSERVE);
            }
        }
        let response = match ex.block.take() {
            Some(block) => self.server_blocks_out(now, ex.peer, &block, response),
            None => response,
        };
        let size = message_len_response(&response, ex.token.len());
        if size > self.config.max_message_size {
            self.servers.insert(id, ex);
            return Err(RespondError::MessageTooBig {
                size,
                max: self.config.max_message_size,
            });
        }
        let key = MessageKey::new(ex.peer, ex.mid);
        if suppressed(&ex, response.code) {
            if ex.message_type == MessageType::Con && !ex.ack_sent {
                let bytes = self.encode_empty(MessageType::Ack, ex.mid);
                self.queue_transmit(ex.peer, bytes);
            }
            self.answer_dedup(ex.dedup, key, DedupState::AckOnly);
            return Ok(());
        }
        if ex.message_type == MessageType::Con && !ex.ack_sent {
            // Piggybacked on the ACK (§5.2.1).
            let bytes = self.encode_owned(MessageType::Ack, ex.mid, ex.token.clone(), response);
            self.answer_dedup(ex.dedup, key, DedupState::Reply(bytes.clone()));
            self.queue_transmit(ex.peer, bytes);
            return Ok(());
        }
        let default_type = if ex.message_type == MessageType::Con {
            MessageType::Con
        } else {
            MessageType::Non
        };
        let message_type = match response.message_type {
            Some(MessageType::Con) => MessageType::Con,
            Some(MessageType::Non) => MessageType::Non,
            _ => default_type,
        };
        let message_type = if ex.multicast {
            MessageType::Non
        } else {
            message_type
        };
        self.answer_dedup(ex.dedup, key, DedupState::AckOnly);
        self.send_separate(now, id, ex, message_type, response);
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Internals: incoming datagrams
    // ----------------------------------------------------------------------------------------

    fn handle_incoming(&mut self, now: Instant, remote: SocketAddr, data: &[u8], multicast: bool) {
        self.stats.datagrams_received += 1;
        let view = match MessageView::parse(data) {
            Ok(view) => view,
            Err(_) => {
                // A message-format error (§4.2, §4.3): reject a CON with RST if we can read
                // its Message ID, drop anything else.
                self.stats.malformed += 1;
                if let Ok(header) = parse_header(data) {
                    // §3: a message with an unknown version is silently ignored.
                    if header.version == 1 && header.mtype == MessageType::Con && !multicast {
                        self.send_reset(remote, header.message_id);
                    }
                }
                return;
            }
        };
        let code = view.code();
        let mtype = view.mtype();
        let format_error = code.is_reserved_class()
            || (code.is_empty()
                && (!view.token().is_empty()
                    || view.options().next().is_some()
                    || !view.payload().is_empty()))
            || (mtype == MessageType::Rst && !code.is_empty());
        if format_error {
            self.reject(remote, &view, multicast);
            return;
        }
        match (mtype, code.is_empty(), code.is_request()) {
            (MessageType::Con, true, _) => {
                // CoAP ping (§4.3): answer with RST. Never to a multicast message.
                if !multicast {
                    self.send_reset(remote, view.message_id());
                }
            }
            (MessageType::Non, true, _) => self.stats.malformed += 1,
            (MessageType::Ack, true, _) => self.handle_ack(now, remote, view.message_id(), None),
            (MessageType::Rst, _, _) => self.handle_reset(now, remote, view.message_id()),
            (MessageType::Ack, false, true) => {
                // A request carried in an ACK is a format error; ACKs are never rejected with
                // RST (§4.2), so it is ignored.
                self.stats.malformed += 1;
            }
            (MessageType::Ack, false, false) => {
                self.handle_ack(now, remote, view.message_id(), Some(&view))
            }
            (_, false, true) => self.handle_request(now, remote, &view, multicast),
            (_, false, false) => self.handle_separate_response(now, remote, &view, multicast),
        }
    }

    /// Rejects a message (§4.2, §4.3): RST for a unicast CON, silence otherwise.
    fn reject(&mut self, remote: SocketAddr, view: &MessageView<'_>, multicast: bool) {
        self.stats.malformed += 1;
        if view.mtype() == MessageType::Con && !multicast {
            self.send_reset(remote, view.message_id());
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        view: &MessageView<'_>,
        multicast: bool,
    ) {
        let mid = view.message_id();
        let mtype = view.mtype();
        let key = MessageKey::new(remote, mid);
        if let Some(state) = self.dedup.get(&key) {
            self.stats.duplicates += 1;
            self.answer_duplicate(remote, mid, mtype, state.clone());
            return;
        }
        if view.token().len() > self.config.max_token_len {
            // RFC 8974 §2.2.1: a token longer than we accept is a message-format error.
            self.reject(remote, view, multicast);
            return;
        }
        if multicast && mtype == MessageType::Con {
            // Multicast requests must be NON (§8.1); a CON one cannot be acknowledged sanely.
            self.stats.malformed += 1;
            return;
        }
        let mut request = view.to_message();
        if let Err(number) = self.check_options(&mut request.options) {
            // §5.4.1: 4.02 for a CON request; a NON request is rejected (silently here).
            if mtype == MessageType::Con {
                let mut rsp = Response::new(Code::BAD_OPTION);
                rsp.payload = bad_option_diagnostic(number);
                self.answer_directly(now, remote, &request, rsp, multicast);
            } else {
                self.stats.malformed += 1;
            }
            return;
        }
        if !self.config.proxy
            && (request.options.contains(OptionNumber::PROXY_URI)
                || request.options.contains(OptionNumber::PROXY_SCHEME))
        {
            // §5.7.2: we are not a forward proxy.
            let rsp = Response::new(Code::PROXYING_NOT_SUPPORTED);
            self.answer_directly(now, remote, &request, rsp, multicast);
            return;
        }
        if self.closing || self.servers.len() >= self.config.max_server_exchanges {
            self.stats.overload_rejections += 1;
            let rsp =
                Response::new(Code::SERVICE_UNAVAILABLE).with_max_age(self.config.overload_max_age);
            self.answer_directly(now, remote, &request, rsp, multicast);
            return;
        }
        let block = if self.sees_raw_blocks(&request.options) || multicast {
            None
        } else {
            match self.server_blocks_in(now, remote, &mut request) {
                Ok(block) => Some(block),
                Err(response) => {
                    self.answer_directly(now, remote, &request, response, multicast);
                    return;
                }
            }
        };
        let observe = self.observe_in(now, remote, &request);
        let id = IncomingId(self.next_incoming_id);
        self.next_incoming_id += 1;
        let no_response = request
            .options
            .get_uint(OptionNumber::NO_RESPONSE)
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(0);
        let lifetime = self.lifetimes.of(mtype);
        let dedup = self.insert_dedup(now, key, lifetime, DedupState::Pending(id));
        self.servers.insert(
            id,
            ServerExchange {
                peer: remote,
                mid,
                token: request.token.clone(),
                message_type: mtype,
                multicast,
                ack_sent: false,
                no_response,
                block,
                observe,
                dedup,
            },
        );
        if mtype == MessageType::Con {
            self.empty_acks
                .push_back((now + self.config.empty_ack_delay, id));
        }
        self.events.push_back(Event::Request {
            id,
            peer: remote,
            request,
            multicast,
        });
    }

    /// Whether requests for this path bypass reassembly and slicing
    /// ([`Config::raw_block_paths`]).
    fn sees_raw_blocks(&self, options: &Options) -> bool {
        self.config.raw_block_paths.iter().any(|prefix| {
            let mut want = prefix.split('/').filter(|s| !s.is_empty());
            let mut have = options.uri_path();
            loop {
                match (want.next(), have.next()) {
                    (None, _) => return true,
                    (Some(w), Some(h)) if w == h => {}
                    _ => return false,
                }
            }
        })
    }

    /// Server side of RFC 7959 for an incoming request: reassembles Block1 uploads (answering
    /// 2.31, 4.08 or 4.13 itself until the body is whole) and serves follow-up Block2 requests
    /// from the stored representation. `Ok` means the application gets the request, with
    /// what the response will need; `Err` is the answer to send instead.
    #[allow(clippy::result_large_err, reason = "the error is the response to send")]
    fn server_blocks_in(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        request: &mut Message,
    ) -> Result<ServerBlock, Response> {
        let bad_block = || {
            Response::new(Code::BAD_OPTION)
                .with_payload(Bytes::from_static(b"malformed block option"))
        };
        // Observe is no part of the key (RFC 7641 §2): the follow-up Block2 requests of a
        // notification carry none (RFC 7959 §2.6).
        let key = CacheKey::new(request.code, &request.options, BLOCKWISE_OBSERVE_EXCLUDED);
        let mut block1_echo = None;
        if request.options.contains(OptionNumber::BLOCK1) {
            let block1 = request.options.block1().ok_or_else(bad_block)?;
            let limits = AssemblyLimits {
                max_body: self.config.max_body_size,
                max_per_peer: self.config.max_reassembly_bytes_per_peer,
                max_total: self.config.max_reassembly_bytes,
                timeout: self
                    .config
                    .reassembly_timeout
                    .unwrap_or_else(|| self.config.exchange_lifetime()),
                szx: szx_at_most(self.config.block_size),
            };
            let payload = core::mem::take(&mut request.payload);
            match self.assemblies.receive(
                now,
                (remote, key.clone()),
                block1,
                &payload,
                &request.options,
                limits,
            ) {
                Received::Continue(control) => {
                    let mut rsp = Response::new(Code::CONTINUE);
                    rsp.options.set_block1(control);
                    return Err(rsp);
                }
                Received::Refuse(rsp) => return Err(rsp),
                Received::Complete(body, echo) => {
                    request.payload = body;
                    request.options.remove(OptionNumber::BLOCK1);
                    block1_echo = Some(echo);
                }
            }
        }
        let block2 = if request.options.contains(OptionNumber::BLOCK2) {
            Some(request.options.block2().ok_or_else(bad_block)?)
        } else {
            None
        };
        let size2 = request.options.size2() == Some(0);
        if let Some(b2) = block2.filter(|b| b.num > 0) {
            let op = (remote, key);
            let lifetime = self.config.representation_lifetime;
            if let Some(whole) = self.representations.get(&op, now, lifetime) {
                let max_szx = szx_at_most(self.config.block_size);
                return Err(match slice_response(whole, Some(b2), max_szx, size2) {
                    Ok(rsp) | Err(rsp) => rsp,
                });
            }
            return Ok(ServerBlock {
                key: op.1,
                block2,
                size2,
                block1_echo,
            });
        }
        Ok(ServerBlock {
            key,
            block2,
            size2,
            block1_echo,
        })
    }

    /// Server side of RFC 7959 for a response: cuts a body larger than a block (or the block
    /// the client asked for) out of the whole, keeps the whole for the follow-up requests, and
    /// echoes Block1 after an upload.
    fn server_blocks_out(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        block: &ServerBlock,
        response: Response,
    ) -> Response {
        let max_szx = szx_at_most(self.config.block_size);
        let szx = block.block2.map_or(max_szx, |b| b.szx.min(max_szx));
        let sliced =
            block.block2.is_some_and(|b| b.num > 0) || response.payload.len() > block_size(szx);
        let mut response = if sliced {
            let mut response = response;
            // Derive the ETag once, before the whole is stored, so every block carries the
            // same one without hashing the body again.
            block::ensure_etag(&mut response);
            if response.code.is_success() {
                self.representations.insert(
                    (peer, block.key.clone()),
                    now + self.config.representation_lifetime,
                    &response,
                    self.config.max_representation_bytes,
                );
            }
            match slice_response(response, block.block2, max_szx, block.size2) {
                Ok(rsp) | Err(rsp) => rsp,
            }
        } else {
            let mut response = response;
            if block.size2 {
                let len = u32::try_from(response.payload.len()).unwrap_or(u32::MAX);
                response.options.set_uint(OptionNumber::SIZE2, len);
            }
            response
        };
        if let Some(echo) = block.block1_echo {
            response.options.set_block1(echo);
        }
        response
    }

    /// Answers a duplicate CON or NON message from the deduplication cache (§4.5).
    fn answer_duplicate(
        &mut self,
        remote: SocketAddr,
        mid: u16,
        mtype: MessageType,
        state: DedupState,
    ) {
        match state {
            DedupState::Reply(bytes) => self.queue_transmit(remote, bytes),
            DedupState::Pending(id) => {
                // The client retransmitted before we answered: acknowledge now so it stops,
                // and the response becomes a separate one.
                if mtype == MessageType::Con {
                    self.send_empty_ack_for(id);
                }
            }
            DedupState::AckOnly => {
                if mtype == MessageType::Con {
                    let bytes = self.encode_empty(MessageType::Ack, mid);
                    self.queue_transmit(remote, bytes);
                }
            }
            DedupState::Silent => {}
        }
    }

    /// Checks options against RFC 7252 §5.4: drops elective options that break their format,
    /// and returns the first critical option that is unrecognized or malformed.
    fn check_options(&self, options: &mut Options) -> Result<(), OptionNumber> {
        // RFC 7252 §5.7.1: a forward proxy forwards the Safe-to-Forward options it does not
        // recognize, critical or not; only an unrecognized Unsafe one is an error.
        let proxied = self.config.proxy
            && (options.contains(OptionNumber::PROXY_URI)
                || options.contains(OptionNumber::PROXY_SCHEME));
        for (number, _) in options.iter() {
            if number.is_critical()
                && (!proxied || number.is_unsafe_to_forward())
                && !RECOGNIZED_CRITICAL.contains(&number)
                && !self.config.extra_critical_options.contains(&number)
            {
                return Err(number);
            }
        }
        // Bounded: each round removes one option number.
        for _ in 0..options.len() {
            match options.validate() {
                Ok(()) => return Ok(()),
                Err(e) if e.number.is_critical() => return Err(e.number),
                Err(e) => {
                    // §5.4.3 and §5.4.5: a malformed or supernumerary elective option is
                    // ignored; for a repeated one, the first occurrence stays.
                    if e.kind == OptionErrorKind::Repeated {
                        let first: Option<smallvec::SmallVec<[u8; 16]>> =
                            options.get(e.number).map(|v| v.into());
                        options.remove(e.number);
                        if let Some(first) = first {
                            options.push(e.number, &first);
                        }
                    } else {
                        options.remove(e.number);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends an engine-made response (4.02, 5.03, 5.05) to a request the application never
    /// sees, and remembers it for duplicates.
    fn answer_directly(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        request: &Message,
        response: Response,
        multicast: bool,
    ) {
        if multicast {
            // §8.2: error responses to multicast requests are suppressed.
            return;
        }
        let key = MessageKey::new(remote, request.message_id);
        match request.mtype {
            MessageType::Con => {
                let bytes = self.encode_response(
                    MessageType::Ack,
                    request.message_id,
                    &request.token,
                    &response,
                );
                let lifetime = self.lifetimes.of(MessageType::Con);
                self.insert_dedup(now, key, lifetime, DedupState::Reply(bytes.clone()));
                self.queue_transmit(remote, bytes);
            }
            _ => {
                // A NON request gets a NON response with a Message ID of our own (§5.2.3).
                let Some(mid) = self.allocate_mid_now(now, remote, MessageType::Non) else {
                    return;
                };
                let bytes = self.encode_response(MessageType::Non, mid, &request.token, &response);
                let lifetime = self.lifetimes.of(MessageType::Non);
                self.insert_dedup(now, key, lifetime, DedupState::Reply(bytes.clone()));
                self.queue_transmit(remote, bytes);
            }
        }
    }

    fn handle_ack(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        mid: u16,
        response: Option<&MessageView<'_>>,
    ) {
        let Some(pc) = self.pending_con.remove(&MessageKey::new(remote, mid)) else {
            self.stats.unmatched_acks += 1;
            return;
        };
        match pc.owner {
            ConOwner::Response(id) => {
                self.events.push_back(Event::ResponseConfirmed { id });
            }
            ConOwner::Notification(oid) => {
                let waiting = self.observers.observers.get_mut(&oid).and_then(|o| {
                    o.in_flight = None;
                    o.waiting.take()
                });
                if let Some(next) = waiting {
                    self.send_notification(now, oid, *next);
                }
            }
            ConOwner::Request(id) => {
                let Some(ex) = self.clients.get(&id) else {
                    return;
                };
                match response {
                    _ if ex.kind == ClientKind::Ping => {
                        // An ACK instead of the expected RST still proves liveness.
                        self.finish_client(now, id, Event::Pong { id });
                    }
                    Some(view) if view.token() == ex.token.as_bytes() => {
                        let message = view.to_message();
                        self.deliver_response(now, id, remote, message);
                    }
                    _ => {
                        // Empty ACK (or a response with a foreign token, which we treat as a
                        // bare acknowledgement, §5.3.2): wait for the separate response.
                        let wait = ex.timeout.unwrap_or_else(|| self.config.separate_timeout());
                        let deadline = now + wait;
                        self.release_outstanding(now, id);
                        if let Some(ex) = self.clients.get_mut(&id) {
                            ex.state = ClientState::AwaitingResponse { deadline, mid };
                        }
                        self.timers.push(deadline, Timer::ClientDeadline(id));
                        self.progress(id, Progress::Acknowledged);
                    }
                }
            }
        }
    }

    fn handle_reset(&mut self, now: Instant, remote: SocketAddr, mid: u16) {
        let key = MessageKey::new(remote, mid);
        if let Some(pc) = self.pending_con.remove(&key) {
            match pc.owner {
                ConOwner::Request(id) => {
                    let ping = self
                        .clients
                        .get(&id)
                        .is_some_and(|ex| ex.kind == ClientKind::Ping);
                    let event = if ping {
                        Event::Pong { id }
                    } else {
                        Event::RequestFailed {
                            id,
                            reason: Failure::Reset,
                        }
                    };
                    self.finish_client(now, id, event);
                }
                ConOwner::Response(id) => self.events.push_back(Event::ResponseNotConfirmed {
                    id,
                    reason: Failure::Reset,
                }),
                ConOwner::Notification(oid) => self.remove_observer(oid, ObserverRemoval::Reset),
            }
        } else if let Some(oid) =
            self.observers
                .non_owner(key.peer, key.mid, now, self.lifetimes.non)
        {
            // RFC 7641 §3.6: a Reset to a notification cancels the observation.
            self.remove_observer(oid, ObserverRemoval::Reset);
        } else if let Some(&id) = self.non_requests.get(&key) {
            // §4.3: a NON request may be rejected with RST.
            self.finish_client(
                now,
                id,
                Event::RequestFailed {
                    id,
                    reason: Failure::Reset,
                },
            );
        } else {
            self.stats.unmatched_acks += 1;
        }
    }

    /// A response in a CON or NON message (a separate response, §5.2.2, or the answer to a
    /// NON request, §5.2.3).
    fn handle_separate_response(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        view: &MessageView<'_>,
        multicast: bool,
    ) {
        let mid = view.message_id();
        let mtype = view.mtype();
        let key = MessageKey::new(remote, mid);
        if let Some(state) = self.dedup.get(&key) {
            self.stats.duplicates += 1;
            self.answer_duplicate(remote, mid, mtype, state.clone());
            return;
        }
        let token = view.token();
        let id = (token.len() <= 8)
            .then(|| self.tokens.get(&Token::new(token)).copied())
            .flatten()
            .filter(|id| {
                // Only an exchange whose request went out can be answered: a token that
                // belongs to a request still waiting in the queue matches nothing.
                self.clients.get(id).is_some_and(|ex| {
                    (ex.kind == ClientKind::Multicast || ex.peer == remote)
                        && !matches!(ex.state, ClientState::Queued(_))
                })
            });
        let Some(id) = id else {
            // §5.3.2 / RFC 7641 §3.6: nobody wants it; RST tells the sender so.
            self.stats.unmatched_responses += 1;
            if !multicast {
                self.send_reset(remote, mid);
            }
            return;
        };
        if mtype == MessageType::Con {
            let bytes = self.encode_empty(MessageType::Ack, mid);
            self.queue_transmit(remote, bytes);
        }
        let (state, lifetime) = if mtype == MessageType::Con {
            (DedupState::AckOnly, self.lifetimes.of(MessageType::Con))
        } else {
            (DedupState::Silent, self.lifetimes.of(MessageType::Non))
        };
        self.insert_dedup(now, key, lifetime, state);
        let message = view.to_message();
        self.deliver_response(now, id, remote, message);
    }

    /// Hands a matched response to the application and ends the exchange (or, for multicast,
    /// keeps collecting).
    fn deliver_response(
        &mut self,
        now: Instant,
        id: RequestId,
        remote: SocketAddr,
        response: Message,
    ) {
        let Some(ex) = self.clients.get(&id) else {
            return;
        };
        let multicast = ex.kind == ClientKind::Multicast;
        let observing = ex.observe.is_some();
        // No block-wise state and no Block2 option: nothing for RFC 7959 to do.
        let whole = ex.block.is_none() && !response.options.contains(OptionNumber::BLOCK2);
        if let Some(number) = self.unrecognized_critical(&response.options) {
            if !multicast {
                self.finish_client(
                    now,
                    id,
                    Event::RequestFailed {
                        id,
                        reason: Failure::UnrecognizedCriticalOption(number),
                    },
                );
            }
            return;
        }
        if multicast {
            self.events.push_back(Event::Response {
                id,
                peer: remote,
                response,
            });
            return;
        }
        if observing {
            self.observe_step(now, id, remote, response);
            return;
        }
        if whole {
            let event = Event::Response {
                id,
                peer: remote,
                response,
            };
            self.finish_client(now, id, event);
            return;
        }
        match self.client_block_step(id, response) {
            BlockStep::Deliver(response) => self.finish_client(
                now,
                id,
                Event::Response {
                    id,
                    peer: remote,
                    response,
                },
            ),
            BlockStep::Continue(next) => self.continue_exchange(now, id, next, true),
            BlockStep::Fail(reason) => {
                self.finish_client(now, id, Event::RequestFailed { id, reason })
            }
        }
    }

    /// Decides what a response means for a block-wise transfer in progress (RFC 7959 §2.4,
    /// §2.5): the final answer, the next request to send, or a failure.
    fn client_block_step(&mut self, id: RequestId, mut response: Message) -> BlockStep {
        let max_body = self.config.max_body_size;
        let restart_on_change = self.config.restart_download_on_change;
        let Some(ex) = self.clients.get_mut(&id) else {
            return BlockStep::Deliver(response);
        };
        if ex.random_access {
            return BlockStep::Deliver(response);
        }
        // Upload: the response to a block that was not the last.
        if let Some(up) = ex
            .block
            .as_mut()
            .and_then(|b| b.upload.as_mut())
            .filter(|u| !u.done)
        {
            let total = up.base.payload.len();
            let end = (up.offset + block_size(up.szx)).min(total);
            let smaller = response
                .options
                .block1()
                .map(|b| b.szx)
                .filter(|&s| s < up.szx);
            if response.code == Code::REQUEST_ENTITY_TOO_LARGE {
                // §2.9.3: a 4.13 with a smaller SZX asks us to start over with smaller blocks.
                if let Some(szx) = smaller.filter(|_| up.restarts < 4) {
                    up.restarts += 1;
                    up.szx = szx;
                    up.offset = 0;
                    return BlockStep::Continue(up.block_request());
                }
                return BlockStep::Deliver(response);
            }
            if end < total {
                if !response.code.is_success() {
                    return BlockStep::Deliver(response);
                }
                // 2.31 Continue (or a per-block 2.xx): send the next block, at the size the
                // server prefers if it is smaller (§2.3). `end` is a multiple of any smaller
                // power-of-two size, so the block number scales exactly.
                if let Some(szx) = smaller {
                    up.szx = szx;
                }
                up.offset = end;
                return BlockStep::Continue(up.block_request());
            }
            up.done = true;
            if response.code == Code::CONTINUE {
                // The server asks for more after our last block.
                return BlockStep::Fail(Failure::UnexpectedBlock1);
            }
        }
        // Download: Block2 in the response.
        let downloading = ex.block.as_ref().is_some_and(|b| b.download.is_some());
        let block2 = if response.options.contains(OptionNumber::BLOCK2) {
            match response.options.block2() {
                Some(b) => Some(b),
                None => return BlockStep::Fail(Failure::UnexpectedBlock2),
            }
        } else {
            None
        };
        let Some(b2) = block2 else {
            if downloading && response.code.is_success() {
                return BlockStep::Fail(Failure::MissingBlock2);
            }
            return BlockStep::Deliver(response);
        };
        if !response.code.is_success() {
            return BlockStep::Deliver(response);
        }
        if !downloading && b2.num == 0 && !b2.more {
            // The whole body in one block.
            return BlockStep::Deliver(response);
        }
        let block = ex.block.get_or_insert_with(Default::default);
        let dl = block.download.get_or_insert_with(Default::default);
        let etag = response.options.etag().map(block::Etag::from);
        if b2.num == 0 && dl.body.is_empty() {
            dl.etag = etag;
            dl.size2 = response.options.size2();
        } else if etag != dl.etag {
            // §2.4: blocks of different representations must not be mixed.
            if restart_on_change && dl.restarts < 3 {
                dl.restarts += 1;
                dl.body.clear();
                dl.etag = None;
                return BlockStep::Continue(next_block2_request(ex, 0, b2.szx));
            }
            return BlockStep::Fail(Failure::ResourceChanged);
        }
        if b2.offset() != dl.body.len() || (b2.more && response.payload.len() != b2.size()) {
            return BlockStep::Fail(Failure::UnexpectedBlock2);
        }
        if dl.body.len() + response.payload.len() > max_body {
            return BlockStep::Fail(Failure::BodyTooLarge);
        }
        dl.body.extend_from_slice(&response.payload);
        if b2.more {
            let next = u32::try_from(dl.body.len() / b2.size()).unwrap_or(u32::MAX);
            return BlockStep::Continue(next_block2_request(ex, next, b2.szx));
        }
        let body = core::mem::take(&mut dl.body).freeze();
        let size2 = dl.size2;
        block.download = None;
        response.payload = body;
        response.options.remove(OptionNumber::BLOCK2);
        if let Some(size2) = size2 {
            response.options.set_uint(OptionNumber::SIZE2, size2);
        }
        BlockStep::Deliver(response)
    }

    /// Sends `next` as the following step of exchange `id` (the next block), with a fresh
    /// token and Message ID, queued behind NSTART like any request.
    /// With `new_token` false the token stays, as re-registration and deregistration of an
    /// observation require (RFC 7641 §3.3.1, §3.6).
    fn continue_exchange(&mut self, now: Instant, id: RequestId, next: Request, new_token: bool) {
        // The old token is given up first, so a fresh one can always be found.
        let token = if new_token {
            if let Some(ex) = self.clients.get(&id) {
                let old = ex.token.clone();
                self.tokens.remove(&old);
            }
            self.fresh_token()
        } else {
            None
        };
        let Some(ex) = self.clients.get_mut(&id) else {
            return;
        };
        match ex.state {
            ClientState::AwaitingAck { mid } => {
                self.pending_con.remove(&MessageKey::new(ex.peer, mid));
            }
            ClientState::AwaitingResponse { mid, .. } => {
                self.non_requests.remove(&MessageKey::new(ex.peer, mid));
            }
            ClientState::Queued(_) | ClientState::Observing { .. } => {}
        }
        if let Some(token) = token {
            ex.token = token.clone();
            self.tokens.insert(token, id);
        } else if new_token && !ex.token.is_empty() {
            // Not reachable in practice (the old token was just freed): keep the old one.
            self.tokens.insert(ex.token.clone(), id);
        }
        ex.state = ClientState::Queued(Box::new(next));
        let remote = ex.peer;
        let was_outstanding = core::mem::replace(&mut ex.outstanding, false);
        let peer = self.peer_entry(remote);
        if was_outstanding {
            peer.outstanding = peer.outstanding.saturating_sub(1);
        }
        peer.queue.push_back(id);
        self.pump_peer(now, remote);
        if self
            .clients
            .get(&id)
            .is_some_and(|ex| matches!(ex.state, ClientState::Queued(_)))
        {
            self.progress(id, Progress::Queued);
        }
    }

    /// Client side of a response to an observation (RFC 7641 §3).
    fn observe_step(&mut self, now: Instant, id: RequestId, remote: SocketAddr, response: Message) {
        let deliver_stale = self.config.deliver_stale_notifications;
        let Some(ex) = self.clients.get_mut(&id) else {
            return;
        };
        let Some(ob) = ex.observe.as_mut() else {
            return;
        };
        let value = response.options.observe();
        if ob.deregistering || (!ob.established && (value.is_none() || !response.code.is_success()))
        {
            // The answer to a deregistration, or a registration the server did not accept.
            self.finish_client(
                now,
                id,
                Event::Response {
                    id,
                    peer: remote,
                    response,
                },
            );
            return;
        }
        if !response.code.is_success() {
            // §3.2: a non-2.xx notification ends the observation.
            let code = response.code;
            self.events.push_back(Event::Notification {
                id,
                peer: remote,
                response,
                fresh: true,
            });
            self.finish_client(
                now,
                id,
                Event::RequestFailed {
                    id,
                    reason: Failure::ObservationRejected(code),
                },
            );
            return;
        }
        let Some(value) = value else {
            // 2.xx without Observe on an established observation: the server dropped us.
            self.finish_client(
                now,
                id,
                Event::Response {
                    id,
                    peer: remote,
                    response,
                },
            );
            return;
        };
        ob.established = true;
        ob.failed_reregistrations = 0;
        let fresh = ob
            .freshest
            .is_none_or(|(v1, t1)| is_fresher(v1, t1, value, now));
        if fresh {
            ob.freshest = Some((value, now));
        }
        // Whatever the message carried it, the exchange now just listens.
        match ex.state {
            ClientState::AwaitingAck { mid } => {
                self.pending_con.remove(&MessageKey::new(ex.peer, mid));
            }
            ClientState::AwaitingResponse { mid, .. } => {
                self.non_requests.remove(&MessageKey::new(ex.peer, mid));
            }
            _ => {}
        }
        let max_age = response.options.max_age().unwrap_or(60);
        let deadline =
            now + Duration::from_secs(u64::from(max_age)) + self.config.reregistration_grace;
        ex.state = ClientState::Observing { deadline };
        self.timers.push(deadline, Timer::ClientDeadline(id));
        let more_blocks = response
            .options
            .block2()
            .is_some_and(|b| b.more && b.num == 0 && response.payload.len() == b.size());
        let follow_up = response
            .options
            .block2()
            .filter(|_| more_blocks)
            .map(|b| next_block2_request(ex, 1, b.szx));
        self.release_outstanding(now, id);
        if !(fresh || deliver_stale) {
            return;
        }
        match follow_up {
            Some(next) => self.fetch_notification_blocks(now, id, remote, response, fresh, next),
            None => self.events.push_back(Event::Notification {
                id,
                peer: remote,
                response,
                fresh,
            }),
        }
    }

    /// RFC 7959 §2.6: a notification larger than a block carries its first block; the rest
    /// comes by plain GETs (no Observe, a token of their own), assembled before the
    /// application sees the notification.
    fn fetch_notification_blocks(
        &mut self,
        now: Instant,
        parent: RequestId,
        remote: SocketAddr,
        first: Message,
        fresh: bool,
        next: Request,
    ) {
        let message_type = self
            .clients
            .get(&parent)
            .map_or(MessageType::Con, |ex| ex.message_type);
        let Some(token) = self.fresh_token() else {
            return;
        };
        let Ok(child) =
            self.start_exchange(now, remote, ClientKind::Request, message_type, token, next)
        else {
            return;
        };
        if let Some(ex) = self.clients.get_mut(&child) {
            let mut body = bytes::BytesMut::with_capacity(first.payload.len() * 2);
            body.extend_from_slice(&first.payload);
            ex.block = Some(Box::new(ClientBlock {
                upload: None,
                download: Some(block::Download {
                    body,
                    etag: first.options.etag().map(block::Etag::from),
                    size2: first.options.size2(),
                    restarts: 0,
                }),
            }));
            ex.notification_of = Some(Box::new(NotificationBlocks {
                parent,
                first,
                fresh,
            }));
        }
    }

    /// A request got no answer in time. An established observation whose re-registration
    /// went unanswered tries again later (up to [`Config::reregistration_attempts`] times in
    /// a row) rather than ending: the server may well still be notifying.
    fn request_timed_out(&mut self, now: Instant, id: RequestId) {
        let attempts = self.config.reregistration_attempts;
        let retry = self.config.reregistration_grace;
        if let Some(ex) = self.clients.get_mut(&id) {
            if let Some(ob) = ex.observe.as_mut() {
                if ob.established && !ob.deregistering && ob.failed_reregistrations < attempts {
                    ob.failed_reregistrations += 1;
                    if let ClientState::AwaitingAck { mid } = ex.state {
                        self.pending_con.remove(&MessageKey::new(ex.peer, mid));
                    }
                    if let ClientState::AwaitingResponse { mid, .. } = ex.state {
                        self.non_requests.remove(&MessageKey::new(ex.peer, mid));
                    }
                    let deadline = now + retry;
                    ex.state = ClientState::Observing { deadline };
                    self.timers.push(deadline, Timer::ClientDeadline(id));
                    self.release_outstanding(now, id);
                    return;
                }
            }
        }
        self.finish_client(
            now,
            id,
            Event::RequestFailed {
                id,
                reason: Failure::Timeout,
            },
        );
    }

    /// Registers again when an observation fell silent past Max-Age (RFC 7641 §3.3.1).
    fn reregister(&mut self, now: Instant, id: RequestId) {
        let Some(ex) = self.clients.get(&id) else {
            return;
        };
        let next = registration_request(ex, 0);
        self.continue_exchange(now, id, next, false);
    }

    /// Server side of an incoming request's Observe option (RFC 7641 §4.1): deregisters on
    /// Observe = 1 or on the same request without Observe, and notes a registration.
    fn observe_in(
        &mut self,
        _now: Instant,
        remote: SocketAddr,
        request: &Message,
    ) -> Option<Box<ObserveRequest>> {
        let value = request.options.observe();
        if value != Some(0) {
            if let Some(oid) = self.observers.find(remote, &request.token) {
                self.remove_observer(oid, ObserverRemoval::Deregistered);
            }
            return None;
        }
        if !matches!(request.code, Code::GET | Code::FETCH) {
            return None;
        }
        let proxied = self.config.proxy
            && (request.options.contains(OptionNumber::PROXY_URI)
                || request.options.contains(OptionNumber::PROXY_SCHEME));
        let path = if proxied {
            // A forward proxy relaying observations keeps the observers of each target under
            // the target's URI (RFC 7641 §5).
            crate::proxy::observe_key(&request.options)?
        } else {
            crate::resource::path_from_segments(request.options.uri_path())
        };
        Some(Box::new(ObserveRequest {
            path,
            key: CacheKey::new(request.code, &request.options, BLOCKWISE_OBSERVE_EXCLUDED),
            request: request.clone(),
            accepted: false,
            if_observed: proxied,
        }))
    }

    /// Sends a new state to every observer of one variant.
    fn notify_variant(&mut self, now: Instant, vid: u64, response: Response) -> usize {
        let Some(rid) = self.observers.variants.get(&vid).map(|v| v.resource) else {
            return 0;
        };
        let seq = self.observers.bump(rid);
        self.notify_variant_seq(now, vid, &response, seq)
    }

    fn notify_variant_seq(
        &mut self,
        now: Instant,
        vid: u64,
        response: &Response,
        seq: u32,
    ) -> usize {
        let Some(v) = self.observers.variants.get(&vid) else {
            return 0;
        };
        let members: Vec<u64> = v.members.iter().copied().collect();
        let key = v.key.clone();
        let mut rsp = response.clone();
        if rsp.code.is_success() {
            rsp.options.set_observe(seq);
        } else {
            // RFC 7641 §4.2: a non-2.xx notification carries no Observe option; it ends the
            // observation.
            rsp.options.remove(OptionNumber::OBSERVE);
        }
        let max_szx = szx_at_most(self.config.block_size);
        if rsp.payload.len() > block_size(max_szx) {
            // §2.6 of RFC 7959: the first block goes out; the client fetches the rest with
            // plain GETs served from the stored representation.
            block::ensure_etag(&mut rsp);
            let mut whole = rsp.clone();
            whole.options.remove(OptionNumber::OBSERVE);
            for &oid in &members {
                if let Some(peer) = self.observers.observers.get(&oid).map(|o| o.peer) {
                    self.representations.insert(
                        (peer, key.clone()),
                        now + self.config.representation_lifetime,
                        &whole,
                        self.config.max_representation_bytes,
                    );
                }
            }
            rsp = match slice_response(rsp, None, max_szx, false) {
                Ok(r) | Err(r) => r,
            };
        }
        // Encoded once; each observer's copy only differs in type, Message ID and token.
        let template = self.encode_response(MessageType::Non, 0, &Token::default(), &rsp);
        for &oid in &members {
            self.send_notification_with(now, oid, &rsp, &template);
        }
        members.len()
    }

    /// Sends one notification, or parks it behind an unacknowledged Confirmable one, where a
    /// newer state replaces an older one (RFC 7641 §4.5.2).
    fn send_notification(&mut self, now: Instant, oid: u64, response: Response) {
        let template = self.encode_response(MessageType::Non, 0, &Token::default(), &response);
        self.send_notification_with(now, oid, &response, &template);
    }

    /// [`send_notification`](Self::send_notification) with the response already cut to one
    /// block and encoded as `template` (no token, Message ID 0).
    fn send_notification_with(
        &mut self,
        now: Instant,
        oid: u64,
        response: &Response,
        template: &[u8],
    ) {
        let Some(o) = self.observers.observers.get_mut(&oid) else {
            return;
        };
        if o.in_flight.is_some() {
            o.waiting = Some(Box::new(response.clone()));
            return;
        }
        let peer = o.peer;
        // The application may choose the type per notification (`Response::message_type`);
        // otherwise the configuration decides. Errors, and the periodic CON of §4.5, are always
        // Confirmable.
        let wanted = response
            .message_type
            .filter(|t| matches!(t, MessageType::Con | MessageType::Non))
            .unwrap_or(self.config.notification_type);
        let confirmable = wanted == MessageType::Con
            || !response.code.is_success()
            || now >= o.last_con + self.config.con_notification_interval;
        let mtype = if confirmable {
            MessageType::Con
        } else {
            MessageType::Non
        };
        let Some(mid) = self.allocate_mid_now(now, peer, mtype) else {
            // Message IDs towards this peer are used up: keep the state for later.
            if let Some(o) = self.observers.observers.get_mut(&oid) {
                o.waiting = Some(Box::new(response.clone()));
            }
            if let Some(until) = self.peers.get(&PeerKey(peer)).and_then(Peer::next_free) {
                let _ = until;
                self.arm_peer_timer(peer);
            }
            return;
        };
        let success = response.code.is_success();
        let Some(o) = self.observers.observers.get(&oid) else {
            return;
        };
        let bytes = match stamp(&mut self.scratch, template, mtype, mid, &o.token) {
            Some(bytes) => bytes,
            None => {
                let token = o.token.clone();
                self.encode_response(mtype, mid, &token, response)
            }
        };
        if confirmable {
            let timeout = self.initial_timeout();
            let deadline = now + timeout;
            self.pending_con.insert(
                MessageKey::new(peer, mid),
                PendingCon {
                    owner: ConOwner::Notification(oid),
                    bytes: bytes.clone(),
                    retransmissions: 0,
                    timeout,
                    deadline,
                },
            );
            self.arm_retransmit(now, peer, mid, deadline);
            if let Some(o) = self.observers.observers.get_mut(&oid) {
                o.in_flight = Some(mid);
                o.last_con = now;
            }
        } else if let Some(o) = self.observers.observers.get_mut(&oid) {
            o.recent_non.record(mid, now);
        }
        self.queue_transmit(peer, bytes);
        if !success {
            self.remove_observer(oid, ObserverRemoval::ErrorNotified);
        }
    }

    /// RFC 7641 §4.5.2: when a newer state waits behind an unacknowledged Confirmable
    /// notification, the next transmission carries the newer state (a new Message ID) while
    /// the retransmission counter and timer carry on.
    fn supersede_notification(&mut self, now: Instant, key: MessageKey, oid: u64) {
        let Some(old) = self.pending_con.remove(&key) else {
            return;
        };
        let Some(next) = self
            .observers
            .observers
            .get_mut(&oid)
            .and_then(|o| o.waiting.take())
        else {
            return;
        };
        if old.retransmissions >= self.config.max_retransmit {
            self.remove_observer(oid, ObserverRemoval::Timeout);
            return;
        }
        let peer = key.peer;
        let Some(mid) = self.allocate_mid_now(now, peer, MessageType::Con) else {
            self.remove_observer(oid, ObserverRemoval::Timeout);
            return;
        };
        let token = match self.observers.observers.get(&oid) {
            Some(o) => o.token.clone(),
            None => return,
        };
        let bytes = self.encode_response(MessageType::Con, mid, &token, &next);
        let timeout = old.timeout * 2;
        let deadline = now + timeout;
        self.pending_con.insert(
            MessageKey::new(peer, mid),
            PendingCon {
                owner: ConOwner::Notification(oid),
                bytes: bytes.clone(),
                retransmissions: old.retransmissions + 1,
                timeout,
                deadline,
            },
        );
        self.timers.push(deadline, Timer::Retransmit(peer, mid));
        if let Some(o) = self.observers.observers.get_mut(&oid) {
            o.in_flight = Some(mid);
            o.last_con = now;
        }
        self.stats.retransmissions += 1;
        self.queue_transmit(peer, bytes);
    }

    fn remove_observer(&mut self, oid: u64, reason: ObserverRemoval) {
        if let Some((peer, resource, observers)) = self.observers.remove(oid) {
            self.events.push_back(Event::ObserverRemoved {
                id: ObserverId(oid),
                resource,
                peer,
                reason,
                observers,
            });
        }
    }

    fn unrecognized_critical(&self, options: &Options) -> Option<OptionNumber> {
        options.iter().map(|(n, _)| n).find(|n| {
            n.is_critical()
                && !RECOGNIZED_CRITICAL.contains(n)
                && !self.config.extra_critical_options.contains(n)
        })
    }

    // ----------------------------------------------------------------------------------------
    // Internals: client exchanges
    // ----------------------------------------------------------------------------------------

    fn start_exchange(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        kind: ClientKind,
        message_type: MessageType,
        token: Token,
        request: Request,
    ) -> Result<RequestId, RequestError> {
        if self.clients.len() >= self.config.max_client_exchanges {
            return Err(RequestError::TooManyExchanges);
        }
        if self.peers.len() >= self.config.max_peers && !self.peers.contains_key(&PeerKey(remote)) {
            return Err(RequestError::TooManyPeers);
        }
        let id = RequestId(self.next_request_id);
        let max_queued = self.config.max_queued_per_peer;
        let nstart = self.config.nstart;
        let lifetime = self.lifetimes.of(message_type);
        let rng = &mut self.rng;
        let peer = self
            .peers
            .entry(PeerKey(remote))
            .or_insert_with(|| Peer::new(rng.next_u32() as u16));
        if peer.queue.len() >= max_queued {
            return Err(RequestError::QueueFull);
        }
        // The usual case: nothing waits before this request and NSTART and a Message ID allow
        // it, so it goes out now instead of being queued (and boxed) first.
        let direct = if peer.queue.is_empty() && peer.held.is_empty() && peer.outstanding < nstart {
            let mid = take_mid(peer, &mut self.timers, remote, now, lifetime);
            if mid.is_some() {
                peer.outstanding += 1;
            }
            mid
        } else {
            None
        };
        if direct.is_none() {
            peer.queue.push_back(id);
        }
        self.next_request_id += 1;
        // Pings carry no token and are matched by Message ID alone; every other exchange
        // owns its token, even an empty one (token_len 0 allows one such exchange at a time).
        if kind != ClientKind::Ping {
            self.tokens.insert(token.clone(), id);
        }
        let method = request.method;
        let timeout = request.timeout;
        let (state, send_now) = match direct {
            Some(mid) => (ClientState::AwaitingAck { mid }, Some((mid, request))),
            None => (ClientState::Queued(Box::new(request)), None),
        };
        self.clients.insert(
            id,
            ClientExchange {
                peer: remote,
                token,
                kind,
                message_type,
                method,
                timeout,
                state,
                outstanding: false,
                sent: None,
                block: None,
                random_access: false,
                observe: None,
                notification_of: None,
            },
        );
        if let Some((mid, request)) = send_now {
            self.transmit_request(now, id, mid, request);
            return Ok(id);
        }
        self.pump_peer(now, remote);
        if self.config.report_progress
            && self
                .clients
                .get(&id)
                .is_some_and(|ex| matches!(ex.state, ClientState::Queued(_)))
        {
            self.progress(id, Progress::Queued);
        }
        Ok(id)
    }

    /// Sends queued requests to `remote` while NSTART and Message IDs allow, and sends held
    /// separate responses once Message IDs free up. Forgets the peer once nothing is left.
    fn pump_peer(&mut self, now: Instant, remote: SocketAddr) {
        self.pump_peer_releasing(now, remote, false);
    }

    /// [`Self::pump_peer`], first giving back the NSTART slot of an exchange that no longer
    /// holds one (`release`).
    fn pump_peer_releasing(&mut self, now: Instant, remote: SocketAddr, mut release: bool) {
        let nstart = self.config.nstart;
        loop {
            // One lookup per message sent: the peer's state, its timer and the choice of what
            // goes next are all handled through this borrow.
            let Some(peer) = self.peers.get_mut(&PeerKey(remote)) else {
                return;
            };
            if release {
                peer.outstanding = peer.outstanding.saturating_sub(1);
                release = false;
            }
            let has_held = !peer.held.is_empty();
            let next_request = if peer.outstanding < nstart {
                peer.queue.front().copied()
            } else {
                None
            };
            if !has_held && next_request.is_none() {
                if peer.is_idle() {
                    self.peers.remove(&PeerKey(remote));
                }
                return;
            }
            let mtype = match next_request {
                Some(id) if !has_held => self
                    .clients
                    .get(&id)
                    .map_or(MessageType::Con, |ex| ex.message_type),
                _ => MessageType::Con,
            };
            let lifetime = self.lifetimes.of(mtype);
            let Some(mid) = take_mid(peer, &mut self.timers, remote, now, lifetime) else {
                if let Some(until) = peer.next_free() {
                    if !peer.exhaustion_reported {
                        peer.exhaustion_reported = true;
                        self.events.push_back(Event::MessageIdsExhausted {
                            peer: remote,
                            until,
                        });
                    }
                }
                return;
            };
            if has_held {
                if let Some(held) = peer.held.pop_front() {
                    self.transmit_held(now, held, mid);
                }
            } else if let Some(id) = peer.queue.pop_front() {
                // Only a request that is still waiting takes a slot; a stale queue entry (its
                // exchange ended or was sent already) is skipped.
                if self
                    .clients
                    .get(&id)
                    .is_some_and(|ex| matches!(ex.state, ClientState::Queued(_)))
                {
                    peer.outstanding += 1;
                    self.send_request(now, id, mid);
                }
            }
        }
    }

    /// Sends a queued request with the Message ID `mid`.
    fn send_request(&mut self, now: Instant, id: RequestId, mid: u16) {
        let Some(ex) = self.clients.get_mut(&id) else {
            return;
        };
        let ClientState::Queued(request) =
            core::mem::replace(&mut ex.state, ClientState::AwaitingAck { mid })
        else {
            return;
        };
        self.transmit_request(now, id, mid, *request);
    }

    /// Encodes and sends the request of exchange `id` with the Message ID `mid`, and arms what
    /// waits for its answer: the retransmission of a CON, the deadline of a NON.
    fn transmit_request(&mut self, now: Instant, id: RequestId, mid: u16, request: Request) {
        let Some(ex) = self.clients.get_mut(&id) else {
            return;
        };
        ex.state = ClientState::AwaitingAck { mid };
        ex.outstanding = true;
        let remote = ex.peer;
        let message_type = ex.message_type;
        let message = Message {
            mtype: message_type,
            code: request.method,
            message_id: mid,
            token: ex.token.clone(),
            options: request.options,
            payload: request.payload,
        };
        let bytes = encode_with(&mut self.scratch, &message);
        ex.sent = Some(bytes.clone());
        if message_type == MessageType::Con {
            let timeout = initial_timeout(&self.config, &mut *self.rng);
            let deadline = now + timeout;
            self.pending_con.insert(
                MessageKey::new(remote, mid),
                PendingCon {
                    owner: ConOwner::Request(id),
                    bytes: bytes.clone(),
                    retransmissions: 0,
                    timeout,
                    deadline,
                },
            );
            self.arm_retransmit(now, remote, mid, deadline);
        } else {
            let wait = ex.timeout.unwrap_or(if ex.kind == ClientKind::Multicast {
                self.config.multicast_response_window
            } else {
                self.config.non_timeout()
            });
            let deadline = now + wait;
            ex.state = ClientState::AwaitingResponse { deadline, mid };
            self.non_requests.insert(MessageKey::new(remote, mid), id);
            self.timers.push(deadline, Timer::ClientDeadline(id));
        }
        self.queue_transmit(remote, bytes);
        self.progress(id, Progress::Sent);
    }

    /// Ends a client exchange with its final event and frees what it held.
    fn finish_client(&mut self, now: Instant, id: RequestId, event: Event) {
        let Some(ex) = self.clients.remove(&id) else {
            return;
        };
        if ex.kind != ClientKind::Ping {
            if let EntryRef::Occupied(entry) = self.tokens.entry_ref(&ex.token) {
                if *entry.get() == id {
                    entry.remove();
                }
            }
        }
        match ex.state {
            ClientState::AwaitingAck { mid } => {
                self.pending_con.remove(&MessageKey::new(ex.peer, mid));
            }
            ClientState::AwaitingResponse { mid, .. } => {
                self.non_requests.remove(&MessageKey::new(ex.peer, mid));
            }
            ClientState::Queued(_) => {
                if let Some(peer) = self.peers.get_mut(&PeerKey(ex.peer)) {
                    peer.queue.retain(|q| *q != id);
                }
            }
            ClientState::Observing { .. } => {}
        }
        if let Some(notification) = ex.notification_of {
            // An internal fetch of a notification's remaining blocks (RFC 7959 §2.6): the
            // application never saw this request, so it sees no end of it either; a complete
            // body becomes the parent's notification.
            if let Event::Response { response, peer, .. } = event {
                let NotificationBlocks {
                    parent,
                    mut first,
                    fresh,
                } = *notification;
                if response.code.is_success() && self.clients.contains_key(&parent) {
                    first.payload = response.payload;
                    first.options.remove(OptionNumber::BLOCK2);
                    self.events.push_back(Event::Notification {
                        id: parent,
                        peer,
                        response: first,
                        fresh,
                    });
                }
            }
        } else {
            self.events.push_back(event);
        }
        self.pump_peer_releasing(now, ex.peer, ex.outstanding);
    }

    /// Frees the NSTART slot of an exchange that is no longer outstanding (§4.7) but still
    /// waits for a separate response.
    fn release_outstanding(&mut self, now: Instant, id: RequestId) {
        let Some(ex) = self.clients.get_mut(&id) else {
            return;
        };
        if !ex.outstanding {
            return;
        }
        ex.outstanding = false;
        let remote = ex.peer;
        self.pump_peer_releasing(now, remote, true);
    }

    fn fail_peer_requests(&mut self, now: Instant, remote: SocketAddr, reason: Failure) {
        let mut ids: Vec<RequestId> = self
            .clients
            .iter()
            .filter(|(_, ex)| ex.peer == remote)
            .map(|(id, _)| *id)
            .collect();
        // Hash-map order differs between processes; events must not.
        ids.sort_unstable();
        for id in ids {
            self.finish_client(now, id, Event::RequestFailed { id, reason });
        }
    }

    fn progress(&mut self, id: RequestId, progress: Progress) {
        if self.config.report_progress {
            self.events.push_back(Event::Progress { id, progress });
        }
    }

    /// A random token (§5.3.1) that no live exchange uses, or `None` when the configured
    /// length leaves none free (with `token_len` 0 there is one token, the empty one).
    fn fresh_token(&mut self) -> Option<Token> {
        let len = self.config.token_len;
        if len == 0 {
            let empty = Token::default();
            return (!self.tokens.contains_key(&empty)).then_some(empty);
        }
        let mut bytes = [0u8; 8];
        for _ in 0..64 {
            self.rng.fill_bytes(&mut bytes);
            let token = Token::new(&bytes[..len]);
            if !self.tokens.contains_key(&token) {
                return Some(token);
            }
        }
        // A crowded short token space: walk it from a random point, a bounded number of
        // steps (the space has at most as many used values as live exchanges).
        let space = if len >= 8 {
            u64::MAX
        } else {
            1u64 << (8 * len)
        };
        let start = self.rng.next_u64();
        let steps = (self.tokens.len() as u64 + 1).min(space);
        for i in 0..steps {
            let v = start.wrapping_add(i);
            let v = if len >= 8 { v } else { v % space };
            let token = Token::new(&v.to_be_bytes()[8 - len..]);
            if !self.tokens.contains_key(&token) {
                return Some(token);
            }
        }
        None
    }

    // ----------------------------------------------------------------------------------------
    // Internals: server responses
    // ----------------------------------------------------------------------------------------

    fn send_empty_ack_for(&mut self, id: IncomingId) {
        let Some(ex) = self.servers.get_mut(&id) else {
            return;
        };
        if ex.ack_sent || ex.message_type != MessageType::Con {
            return;
        }
        ex.ack_sent = true;
        let (peer, mid) = (ex.peer, ex.mid);
        let bytes = self.encode_empty(MessageType::Ack, mid);
        self.queue_transmit(peer, bytes);
    }

    fn send_separate(
        &mut self,
        now: Instant,
        id: IncomingId,
        ex: ServerExchange,
        message_type: MessageType,
        response: Response,
    ) {
        let held = Held {
            id,
            peer: ex.peer,
            request_mid: ex.mid,
            multicast: ex.multicast,
            message: Message {
                mtype: message_type,
                code: response.code,
                message_id: 0,
                token: ex.token,
                options: response.options,
                payload: response.payload,
            },
        };
        let lifetime = self.lifetimes.of(message_type);
        // One lookup of the peer for the whole step (this runs for every NON response).
        let room = self.peers.len() < self.config.max_peers;
        let rng = &mut self.rng;
        let peer = match self.peers.entry(PeerKey(held.peer)) {
            hashbrown::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            hashbrown::hash_map::Entry::Vacant(entry) if room => {
                entry.insert(Peer::new(rng.next_u32() as u16))
            }
            hashbrown::hash_map::Entry::Vacant(_) => {
                // No room for the Message ID state this response needs.
                if message_type == MessageType::Con {
                    self.events.push_back(Event::ResponseNotConfirmed {
                        id,
                        reason: Failure::TooManyPeers,
                    });
                }
                return;
            }
        };
        if !peer.held.is_empty() {
            // Keep order behind responses already waiting for a Message ID.
            peer.held.push_back(held);
            return;
        }
        let remote = held.peer;
        let allocated = peer.allocate(now, lifetime);
        if allocated.is_none() {
            let until = peer.next_free();
            peer.held.push_back(held);
            if let Some(until) = until {
                if !peer.exhaustion_reported {
                    peer.exhaustion_reported = true;
                    self.events.push_back(Event::MessageIdsExhausted {
                        peer: remote,
                        until,
                    });
                }
            }
            self.arm_peer_timer(remote);
            return;
        }
        // Arm the peer's timer now, while the peer is at hand.
        let arm = peer.arm();
        if let Some(mid) = allocated {
            self.transmit_held(now, held, mid);
        }
        if let Some(at) = arm {
            self.timers.push(at, Timer::Peer(remote));
        }
    }

    /// Sends a separate response (or the response to a NON request) with Message ID `mid`.
    fn transmit_held(&mut self, now: Instant, held: Held, mid: u16) {
        let Held {
            id,
            peer: remote,
            request_mid,
            multicast,
            mut message,
        } = held;
        message.message_id = mid;
        let message_type = message.mtype;
        let bytes = self.encode(&message);
        if message_type == MessageType::Non {
            // A duplicate of the NON request gets this response again (§4.5).
            self.update_dedup(
                MessageKey::new(remote, request_mid),
                DedupState::Reply(bytes.clone()),
            );
        }
        if multicast {
            // §8.2: spread responses to a multicast request over DEFAULT_LEISURE.
            let leisure =
                u64::try_from(self.config.default_leisure.as_micros()).unwrap_or(u64::MAX);
            let at = now + Duration::from_micros(self.random_below(leisure.saturating_add(1)));
            let pos = self.delayed.partition_point(|(t, _)| *t <= at);
            self.delayed.insert(pos, (at, Outgoing { remote, bytes }));
            return;
        }
        if message_type == MessageType::Con {
            let timeout = self.initial_timeout();
            let deadline = now + timeout;
            self.pending_con.insert(
                MessageKey::new(remote, mid),
                PendingCon {
                    owner: ConOwner::Response(id),
                    bytes: bytes.clone(),
                    retransmissions: 0,
                    timeout,
                    deadline,
                },
            );
            self.arm_retransmit(now, remote, mid, deadline);
        }
        self.queue_transmit(remote, bytes);
    }

    // ----------------------------------------------------------------------------------------
    // Internals: timers
    // ----------------------------------------------------------------------------------------

    fn fire_timer(&mut self, now: Instant, deadline: Instant, timer: Timer) {
        match timer {
            Timer::Retransmit(remote, mid) => {
                let key = MessageKey::new(remote, mid);
                let Some(pc) = self.pending_con.get_mut(&key) else {
                    return;
                };
                if pc.deadline != deadline {
                    return;
                }
                if let ConOwner::Notification(oid) = pc.owner {
                    if self
                        .observers
                        .observers
                        .get(&oid)
                        .is_some_and(|o| o.waiting.is_some())
                    {
                        self.supersede_notification(now, key, oid);
                        return;
                    }
                }
                let Some(pc) = self.pending_con.get_mut(&key) else {
                    return;
                };
                if pc.retransmissions < self.config.max_retransmit {
                    // §4.2: double the timeout and send again.
                    pc.retransmissions += 1;
                    pc.timeout *= 2;
                    pc.deadline = now + pc.timeout;
                    let (next, bytes, attempt, owner) =
                        (pc.deadline, pc.bytes.clone(), pc.retransmissions, pc.owner);
                    self.timers.push(next, Timer::Retransmit(remote, mid));
                    self.stats.retransmissions += 1;
                    self.queue_transmit(remote, bytes);
                    if let ConOwner::Request(id) = owner {
                        self.progress(id, Progress::Retransmitted { attempt });
                    }
                } else {
                    let owner = pc.owner;
                    self.pending_con.remove(&key);
                    match owner {
                        ConOwner::Request(id) => self.request_timed_out(now, id),
                        ConOwner::Response(id) => {
                            self.events.push_back(Event::ResponseNotConfirmed {
                                id,
                                reason: Failure::Timeout,
                            })
                        }
                        // §4.5: an observer that never acknowledges is gone.
                        ConOwner::Notification(oid) => {
                            self.remove_observer(oid, ObserverRemoval::Timeout)
                        }
                    }
                }
            }
            Timer::ClientDeadline(id) => {
                let Some(ex) = self.clients.get(&id) else {
                    return;
                };
                let d = match ex.state {
                    ClientState::AwaitingResponse { deadline: d, .. } => d,
                    ClientState::Observing { deadline: d } => {
                        if d == deadline {
                            self.reregister(now, id);
                        }
                        return;
                    }
                    _ => return,
                };
                if d != deadline {
                    return;
                }
                if ex.kind == ClientKind::Multicast {
                    self.finish_client(now, id, Event::MulticastDone { id });
                } else {
                    self.request_timed_out(now, id);
                }
            }
            Timer::Peer(remote) => {
                match self.peers.get_mut(&PeerKey(remote)) {
                    Some(peer) if peer.armed == Some(deadline) => {
                        peer.armed = None;
                        peer.expire(now);
                    }
                    _ => return,
                }
                self.pump_peer(now, remote);
                // Notifications parked for want of a Message ID.
                let parked: Vec<u64> = self
                    .observers
                    .of_peer(remote)
                    .into_iter()
                    .filter(|oid| {
                        self.observers
                            .observers
                            .get(oid)
                            .is_some_and(|o| o.in_flight.is_none() && o.waiting.is_some())
                    })
                    .collect();
                for oid in parked {
                    let next = self
                        .observers
                        .observers
                        .get_mut(&oid)
                        .and_then(|o| o.waiting.take());
                    if let Some(next) = next {
                        self.send_notification(now, oid, *next);
                    }
                }
                // The next bucket's expiry, if the peer is still remembered.
                self.arm_peer_timer(remote);
            }
        }
    }

    /// Drops timer entries that no longer point at live state once they outnumber the live
    /// ones, so the heap stays proportional to what is under way.
    /// Arms the first retransmission of a CON sent at `now`. Most CONs are acknowledged
    /// within ACK_TIMEOUT, before any first timeout can fall due (§4.2: it is at least
    /// ACK_TIMEOUT), so they wait in a queue in sending order instead of the heap: the queue's
    /// front is due for a look at its send time plus ACK_TIMEOUT, and only a CON still
    /// unacknowledged then moves to the heap under its real deadline. An acknowledged one
    /// costs a queue push and pop, not a heap push and a heap pop of its stale entry.
    fn arm_retransmit(&mut self, now: Instant, remote: SocketAddr, mid: u16, deadline: Instant) {
        let look_at = now + self.config.ack_timeout;
        let in_order = self
            .first_timeouts
            .back()
            .is_none_or(|&(t, ..)| t <= look_at);
        // At the end of time `now + ACK_TIMEOUT` saturates to `now`: the look would be due
        // at once, inside the `handle_timeout` that may be sending this CON, after that call
        // moved the queue. The heap handles such a deadline in the same call.
        if now < look_at && look_at <= deadline && in_order {
            self.first_timeouts
                .push_back((look_at, MessageKey::new(remote, mid), deadline));
        } else {
            self.timers.push(deadline, Timer::Retransmit(remote, mid));
        }
    }

    /// Moves the CONs of the first-timeout queue whose look is due by `now` to the heap, if
    /// they still wait for their acknowledgement.
    fn move_first_timeouts(&mut self, now: Instant) {
        while let Some(&(look_at, key, deadline)) = self.first_timeouts.front() {
            if look_at > now {
                break;
            }
            self.first_timeouts.pop_front();
            let timer = Timer::Retransmit(key.peer, key.mid);
            if self.timer_is_live(deadline, &timer) {
                self.timers.push(deadline, timer);
            }
        }
        if self.first_timeouts.capacity() > 4 * self.first_timeouts.len() + 64 {
            self.first_timeouts.shrink_to(2 * self.first_timeouts.len());
        }
    }

    fn compact_timers(&mut self) {
        let live = self.pending_con.len() + self.clients.len() + self.peers.len();
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let mut timers = core::mem::take(&mut self.timers);
        timers.retain(|deadline, timer| self.timer_is_live(deadline, timer));
        self.timers = timers;
    }

    /// Whether a timer entry still names live state due at `deadline`.
    fn timer_is_live(&self, deadline: Instant, timer: &Timer) -> bool {
        match timer {
            Timer::Retransmit(remote, mid) => self
                .pending_con
                .get(&MessageKey::new(*remote, *mid))
                .is_some_and(|pc| pc.deadline == deadline),
            Timer::ClientDeadline(id) => self.clients.get(id).is_some_and(|ex| {
                matches!(ex.state, ClientState::AwaitingResponse { deadline: d, .. } | ClientState::Observing { deadline: d } if d == deadline)
            }),
            Timer::Peer(remote) => self
                .peers
                .get(&PeerKey(*remote))
                .is_some_and(|p| p.armed == Some(deadline)),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Internals: message layer helpers
    // ----------------------------------------------------------------------------------------

    /// A random initial retransmission timeout in `[ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR]`
    /// (§4.2).
    fn initial_timeout(&mut self) -> Duration {
        initial_timeout(&self.config, &mut *self.rng)
    }

    /// A uniform random number in `0..n` (0 when `n` is 0).
    fn random_below(&mut self, n: u64) -> u64 {
        random_below(&mut *self.rng, n)
    }

    /// Allocates a Message ID towards `remote` for a message sent right now, creating the
    /// peer's state if needed. `None` if the ID space is exhausted or the peer table is full.
    fn allocate_mid_now(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        mtype: MessageType,
    ) -> Option<u16> {
        if self.peers.len() >= self.config.max_peers && !self.peers.contains_key(&PeerKey(remote)) {
            return None;
        }
        let lifetime = self.lifetimes.of(mtype);
        let peer = self.peer_entry(remote);
        let mid = peer.allocate(now, lifetime)?;
        self.arm_peer_timer(remote);
        Some(mid)
    }

    /// The peer's state, created with a random first Message ID (§4.4) if new.
    fn peer_entry(&mut self, remote: SocketAddr) -> &mut Peer {
        let rng = &mut self.rng;
        self.peers
            .entry(PeerKey(remote))
            .or_insert_with(|| Peer::new(rng.next_u32() as u16))
    }

    /// Arms the peer's single timer at the expiry of its oldest Message ID bucket, if it has
    /// none armed: expired IDs are freed, waiting messages sent and an idle peer forgotten
    /// then.
    fn arm_peer_timer(&mut self, remote: SocketAddr) {
        let Some(peer) = self.peers.get_mut(&PeerKey(remote)) else {
            return;
        };
        if let Some(at) = peer.arm() {
            self.timers.push(at, Timer::Peer(remote));
        }
    }

    /// Records a message in the deduplication cache; returns where its entry went.
    fn insert_dedup(
        &mut self,
        now: Instant,
        key: MessageKey,
        lifetime: Duration,
        state: DedupState,
    ) -> Option<DedupSlot> {
        let evicted = self.dedup.insert(
            key,
            now + lifetime,
            state,
            self.config.max_dedup_entries,
            self.config.max_dedup_bytes,
        );
        self.stats.dedup_evictions += evicted;
        self.dedup.newest()
    }

    fn update_dedup(&mut self, key: MessageKey, state: DedupState) {
        let evicted = self.dedup.update(key, state, self.config.max_dedup_bytes);
        self.stats.dedup_evictions += evicted;
    }

    /// Records the answer to a server exchange's request in its deduplication entry.
    fn answer_dedup(&mut self, slot: Option<DedupSlot>, key: MessageKey, state: DedupState) {
        let max = self.config.max_dedup_bytes;
        let evicted = match slot {
            Some(slot) => self.dedup.update_at(slot, &key, state, max),
            None => self.dedup.update(key, state, max),
        };
        self.stats.dedup_evictions += evicted;
    }

    fn send_reset(&mut self, remote: SocketAddr, mid: u16) {
        let bytes = self.encode_empty(MessageType::Rst, mid);
        self.queue_transmit(remote, bytes);
    }

    fn queue_transmit(&mut self, remote: SocketAddr, bytes: Datagram) {
        if self.transmits.len() >= self.config.max_transmit_queue {
            self.stats.transmit_queue_drops += 1;
            return;
        }
        self.transmits.push_back(Outgoing { remote, bytes });
    }

    fn encode_empty(&mut self, mtype: MessageType, mid: u16) -> Datagram {
        let [hi, lo] = mid.to_be_bytes();
        Datagram::new(&[0x40 | (mtype.to_bits() << 4), 0, hi, lo])
    }

    /// Encodes a response it owns, without copying its options or payload.
    fn encode_owned(
        &mut self,
        mtype: MessageType,
        mid: u16,
        token: Token,
        response: Response,
    ) -> Datagram {
        let message = Message {
            mtype,
            code: response.code,
            message_id: mid,
            token,
            options: response.options,
            payload: response.payload,
        };
        self.encode(&message)
    }

    fn encode_response(
        &mut self,
        mtype: MessageType,
        mid: u16,
        token: &Token,
        response: &Response,
    ) -> Datagram {
        let message = Message {
            mtype,
            code: response.code,
            message_id: mid,
            token: token.clone(),
            options: response.options.clone(),
            payload: response.payload.clone(),
        };
        self.encode(&message)
    }

    fn encode(&mut self, message: &Message) -> Datagram {
        encode_with(&mut self.scratch, message)
    }
}

/// Allocates a Message ID towards a peer (§4.4) and arms the peer's single timer, at the
/// expiry of its oldest Message ID bucket, if none is armed: expired IDs are freed, waiting
/// messages sent and an idle peer forgotten then. `None` when the ID space is exhausted.
fn take_mid(
    peer: &mut Peer,
    timers: &mut Timers,
    remote: SocketAddr,
    now: Instant,
    lifetime: Duration,
) -> Option<u16> {
    let mid = peer.allocate(now, lifetime);
    if peer.armed.is_none() {
        if let Some(at) = peer.next_free() {
            peer.armed = Some(at);
            timers.push(at, Timer::Peer(remote));
        }
    }
    if mid.is_some() {
        peer.exhaustion_reported = false;
    }
    mid
}

/// Encodes `message` through the reusable `scratch` buffer into a shared datagram.
fn encode_with(scratch: &mut Vec<u8>, message: &Message) -> Datagram {
    scratch.clear();
    match message.encode_to_vec(scratch) {
        Ok(_) => Datagram::new(scratch),
        // Tokens and option values were checked against their limits before a message got
        // here (the token length by the configuration, option values by the size checks):
        // this cannot fail.
        Err(_) => Datagram::new(&[]),
    }
}

/// The initial retransmission timeout of a CON message: uniformly random in
/// [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR] (RFC 7252 §4.2).
fn initial_timeout(config: &Config, rng: &mut dyn RngCore) -> Duration {
    let lo = u64::try_from(config.ack_timeout.as_micros()).unwrap_or(u64::MAX);
    let hi = u64::try_from(config.max_initial_timeout().as_micros()).unwrap_or(u64::MAX);
    let span = hi.saturating_sub(lo);
    Duration::from_micros(lo + random_below(rng, span.saturating_add(1)))
}

/// A uniform random number in `0..n` (0 when `n` is 0).
fn random_below(rng: &mut dyn RngCore, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    // Multiply-shift: bias below 2^-64 × n, negligible for timer jitter.
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// What a response means for a client exchange that may be block-wise.
enum BlockStep {
    /// Hand this response to the application; the exchange ends.
    Deliver(Message),
    /// Send this request as the next step of the same exchange.
    Continue(Request),
    /// End the exchange with this failure.
    Fail(Failure),
}

/// The request for block `num` of a download (§2.4): the same options as the request last
/// sent, without Block1, Size1 or Observe (§2.6), no payload, and Block2 giving the block.
fn next_block2_request(ex: &ClientExchange, num: u32, szx: u8) -> Request {
    let mut next = Request::new(ex.method);
    next.message_type = Some(ex.message_type);
    next.timeout = ex.timeout;
    if let Some(view) = ex.sent.as_deref().and_then(|b| MessageView::parse(b).ok()) {
        for (n, v) in view.options() {
            if !matches!(
                n,
                OptionNumber::BLOCK1
                    | OptionNumber::BLOCK2
                    | OptionNumber::SIZE1
                    | OptionNumber::OBSERVE
            ) {
                next.options.push(n, v);
            }
        }
    }
    next.options.set_block2(crate::msg::Block {
        num,
        more: false,
        szx,
    });
    next
}

/// The registration request of an observation again, with Observe set to `value` (0 to
/// re-register, 1 to deregister) and any Block2 option removed.
fn registration_request(ex: &ClientExchange, value: u32) -> Request {
    let mut next = Request::new(ex.method);
    next.message_type = Some(ex.message_type);
    next.timeout = ex.timeout;
    if let Some(view) = ex.sent.as_deref().and_then(|b| MessageView::parse(b).ok()) {
        for (n, v) in view.options() {
            if n != OptionNumber::BLOCK2 {
                next.options.push(n, v);
            }
        }
        next.payload = Bytes::copy_from_slice(view.payload());
    }
    next.options.set_uint(OptionNumber::OBSERVE, value);
    next
}

/// A message encoded earlier with no token and Message ID 0 (`template`), stamped with a type,
/// a Message ID and a token into a new datagram: notifications to many observers share
/// everything else. `None` when the token needs the extended length encoding (RFC 8974).
fn stamp(
    scratch: &mut Vec<u8>,
    template: &[u8],
    mtype: MessageType,
    mid: u16,
    token: &Token,
) -> Option<Datagram> {
    let tkl = token.len();
    let (&code, rest) = template.get(1..)?.split_first()?;
    let rest = rest.get(2..)?;
    if tkl > 12 {
        return None;
    }
    scratch.clear();
    scratch.push(0x40 | (mtype.to_bits() << 4) | tkl as u8);
    scratch.push(code);
    scratch.extend_from_slice(&mid.to_be_bytes());
    scratch.extend_from_slice(token.as_bytes());
    scratch.extend_from_slice(rest);
    Some(Datagram::new(scratch))
}

/// How long a Message ID stays in use, and a deduplication entry lives (§4.4, §4.5):
/// EXCHANGE_LIFETIME and NON_LIFETIME, derived from the configuration once.
#[derive(Clone, Copy, Debug)]
struct Lifetimes {
    exchange: Duration,
    non: Duration,
}

impl Lifetimes {
    fn new(config: &Config) -> Lifetimes {
        Lifetimes {
            exchange: config.exchange_lifetime(),
            non: config.non_lifetime(),
        }
    }

    fn of(self, mtype: MessageType) -> Duration {
        if mtype == MessageType::Con {
            self.exchange
        } else {
            self.non
        }
    }
}

/// Whether a response must not be sent: an error to a multicast request (§8.2), or a class the
/// request's No-Response option declines (RFC 7967 §2.1).
fn suppressed(ex: &ServerExchange, code: Code) -> bool {
    if ex.multicast && !code.is_success() {
        return true;
    }
    let bit = match code.class() {
        2 => 0x02,
        4 => 0x08,
        5 => 0x10,
        _ => 0,
    };
    ex.no_response & bit != 0
}

fn bad_option_diagnostic(number: OptionNumber) -> Bytes {
    Bytes::from(alloc::format!(
        "unrecognized or malformed critical option {}",
        number.0
    ))
}

/// The encoded size of a request with a token of `token_len` bytes.
fn message_len(request: &Request, token_len: usize) -> usize {
    Message::encoded_len_of(token_len, &request.options, request.payload.len())
}

fn message_len_response(response: &Response, token_len: usize) -> usize {
    Message::encoded_len_of(token_len, &response.options, response.payload.len())
}

#[cfg(feature = "sim")]
impl crate::sim::Node for Endpoint {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        Endpoint::handle_datagram(self, now, from, datagram);
    }

    fn handle_multicast_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        _group: SocketAddr,
        datagram: &[u8],
    ) {
        Endpoint::handle_multicast_datagram(self, now, from, datagram);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Endpoint::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        match Endpoint::poll_transmit(self, now, buf) {
            Ok(Some(t)) => Some((t.remote, t.len)),
            _ => None,
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod block_tests;

#[cfg(test)]
mod observe_tests;
