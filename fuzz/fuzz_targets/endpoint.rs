//! Two endpoints, a client and a server, driven by a script decoded from the fuzz input: arbitrary
//! and forged datagrams from several peers (unicast and multicast), clock steps, requests,
//! responses, cancels, pings, peer aborts and shutdowns, with a lossy, duplicating in-memory
//! link between the two so real exchanges (block-wise ones included) happen too.
//!
//! After every step both endpoints' outputs are drained and these invariants are checked:
//! - no call panics;
//! - every table stays within its `Config` bound (`table_sizes`);
//! - every datagram sent parses, fits `max_message_size`, and a buffer of `max_message_size`
//!   bytes always suffices; a too-small buffer is an error that keeps the datagram queued;
//! - every `RequestId` returned by `request` or `ping` gets at most one final event (Response
//!   for unicast, RequestFailed, Pong, MulticastDone), events only name ids the endpoint gave
//!   out, and once the events are drained the endpoint's pending requests are exactly those
//!   without a final event; a unicast response comes from the peer the request went to;
//! - `cancel` answers true exactly for requests without a final event;
//! - every `IncomingId` appears in one Request event, `respond` accepts exactly the requests
//!   still pending (as `pending_incoming` lists them), and each gets at most one
//!   ResponseConfirmed / ResponseNotConfirmed, only after it was answered;
//! - after `handle_timeout(now)`, `poll_timeout` is later than `now`, and a second
//!   `handle_timeout(now)` does nothing;
//! - after `close`, `request` and `ping` fail with `ShuttingDown`.
//!
//! At the end the network goes silent and the clock jumps from deadline to deadline: every
//! request must then end with exactly one final event.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use coap_proto::endpoint::{RequestError, RespondError};
use coap_proto::msg::{Code, Message, MessageType, MessageView, OptionNumber, Options, Token};
use coap_proto::{Config, Endpoint, Event, IncomingId, Instant, Request, RequestId, Response};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000);
const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 5683);
/// All-CoAP-nodes (RFC 7252 §12.8); the server is a member.
const GROUP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(224, 0, 1, 187)), 5683);
/// Peers that exist only as sources of forged datagrams and destinations nobody reads.
const STRANGERS: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 5683),
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        61616,
    ),
];

const MAX_STEPS: usize = 200;
const MAX_IN_FLIGHT: usize = 64;
const MAX_HELD: usize = 16;

/// A datagram on the simulated link.
#[derive(Clone, Debug)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// What the harness knows about one request it started.
#[derive(Debug)]
struct Started {
    to: SocketAddr,
    multicast: bool,
    ping: bool,
    finals: u32,
}

/// One endpoint and the harness's model of what it must report.
struct Side {
    name: &'static str,
    ep: Endpoint,
    addr: SocketAddr,
    started: HashMap<RequestId, Started>,
    /// Incoming requests announced by an event and not answered or aborted.
    open: HashMap<IncomingId, SocketAddr>,
    /// Every incoming id ever announced.
    announced: HashSet<IncomingId>,
    /// Incoming ids answered with `respond`, and how many confirmation events each got.
    answered: HashMap<IncomingId, u32>,
    closed: bool,
}

impl Side {
    fn new(name: &'static str, config: Config, seed: u64, addr: SocketAddr) -> Side {
        Side {
            name,
            ep: Endpoint::new(config, seed).expect("the fuzz config is valid"),
            addr,
            started: HashMap::new(),
            open: HashMap::new(),
            announced: HashSet::new(),
            answered: HashMap::new(),
            closed: false,
        }
    }

    fn check_bounds(&self) {
        let c = self.ep.config();
        let t = self.ep.table_sizes();
        let name = self.name;
        assert!(
            t.client_exchanges <= c.max_client_exchanges,
            "{name}: {t:?}"
        );
        assert!(
            t.server_exchanges <= c.max_server_exchanges,
            "{name}: {t:?}"
        );
        assert!(t.dedup_entries <= c.max_dedup_entries, "{name}: {t:?}");
        // One entry is kept even when it alone exceeds the byte bound.
        assert!(
            t.dedup_bytes <= c.max_dedup_bytes || t.dedup_entries <= 1,
            "{name}: {t:?}"
        );
        assert!(t.peers <= c.max_peers, "{name}: {t:?}");
        assert!(t.transmit_queue <= c.max_transmit_queue, "{name}: {t:?}");
    }

    /// Drains the events and checks each against the model.
    fn drain_events(&mut self) {
        let name = self.name;
        while let Some(event) = self.ep.poll_event() {
            match event {
                Event::Request { id, peer, .. } => {
                    assert!(self.announced.insert(id), "{name}: {id} announced twice");
                    self.open.insert(id, peer);
                }
                Event::Response { id, peer, .. } => {
                    let s = self
                        .started
                        .get_mut(&id)
                        .unwrap_or_else(|| panic!("{name}: response to unknown {id}"));
                    assert_eq!(
                        s.finals, 0,
                        "{name}: response to {id} after its final event"
                    );
                    assert!(!s.ping, "{name}: response to ping {id}");
                    if !s.multicast {
                        assert_eq!(peer, s.to, "{name}: response to {id} from another peer");
                        s.finals += 1;
                    }
                }
                Event::RequestFailed { id, .. } => self.final_event(id, "RequestFailed"),
                Event::Pong { id } => {
                    assert!(
                        self.started.get(&id).is_some_and(|s| s.ping),
                        "{name}: Pong for {id}, which is not a ping"
                    );
                    self.final_event(id, "Pong");
                }
                Event::MulticastDone { id } => {
                    assert!(
                        self.started.get(&id).is_some_and(|s| s.multicast),
                        "{name}: MulticastDone for {id}, which is not multicast"
                    );
                    self.final_event(id, "MulticastDone");
                }
                Event::ResponseConfirmed { id } | Event::ResponseNotConfirmed { id, .. } => {
                    let n = self.answered.get_mut(&id).unwrap_or_else(|| {
                        panic!("{name}: confirmation event for unanswered {id}")
                    });
                    *n += 1;
                    assert_eq!(*n, 1, "{name}: two confirmation events for {id}");
                }
                Event::Progress { id, .. } => {
                    assert!(
                        self.started.contains_key(&id),
                        "{name}: progress of unknown {id}"
                    );
                }
                _ => {}
            }
        }
        // With the events drained, the endpoint's pending requests are exactly those without a
        // final event, and its pending incoming requests exactly the open ones.
        let pending: HashSet<RequestId> = self.ep.pending_requests().map(|(id, ..)| id).collect();
        let unfinished: HashSet<RequestId> = self
            .started
            .iter()
            .filter(|(_, s)| s.finals == 0)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(pending, unfinished, "{name}: pending requests disagree");
        let incoming: HashMap<IncomingId, SocketAddr> = self.ep.pending_incoming().collect();
        assert_eq!(
            incoming, self.open,
            "{name}: pending incoming requests disagree"
        );
    }

    fn final_event(&mut self, id: RequestId, what: &str) {
        let name = self.name;
        let s = self
            .started
            .get_mut(&id)
            .unwrap_or_else(|| panic!("{name}: {what} for unknown {id}"));
        s.finals += 1;
        assert_eq!(s.finals, 1, "{name}: second final event ({what}) for {id}");
    }

    fn record_start(
        &mut self,
        result: core::result::Result<RequestId, RequestError>,
        to: SocketAddr,
        ping: bool,
    ) {
        match result {
            Ok(id) => {
                assert!(!self.closed, "{}: request accepted after close", self.name);
                let previous = self.started.insert(
                    id,
                    Started {
                        to,
                        multicast: to.ip().is_multicast(),
                        ping,
                        finals: 0,
                    },
                );
                assert!(previous.is_none(), "{}: {id} given out twice", self.name);
            }
            Err(RequestError::ShuttingDown) => assert!(self.closed),
            Err(_) => assert!(!self.closed, "close must win over other refusals"),
        }
    }

    /// Drains the transmit queue onto the link, checking every datagram.
    fn drain_transmits(&mut self, now: Instant, small: usize, link: &mut Vec<Datagram>) {
        let max = self.ep.config().max_message_size;
        let mut buf = vec![0u8; max];
        let mut tiny = vec![0u8; small];
        loop {
            if small > 0 {
                // A too-small buffer is an error that leaves the datagram queued.
                let queued = self.ep.table_sizes().transmit_queue;
                match self.ep.poll_transmit(now, &mut tiny) {
                    Ok(Some(t)) => {
                        assert!(t.len <= small);
                        self.check_datagram(&tiny[..t.len], max);
                        push_link(link, self.addr, t.remote, &tiny[..t.len]);
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(e.needed > small);
                        assert_eq!(self.ep.table_sizes().transmit_queue, queued);
                    }
                }
            }
            match self.ep.poll_transmit(now, &mut buf) {
                Ok(Some(t)) => {
                    self.check_datagram(&buf[..t.len], max);
                    push_link(link, self.addr, t.remote, &buf[..t.len]);
                }
                Ok(None) => break,
                Err(e) => panic!(
                    "{}: a buffer of max_message_size ({max}) was too small: {e}",
                    self.name
                ),
            }
        }
    }

    fn check_datagram(&self, bytes: &[u8], max: usize) {
        assert!(
            bytes.len() <= max,
            "{}: datagram over max_message_size",
            self.name
        );
        if let Err(e) = MessageView::parse(bytes) {
            panic!(
                "{}: sent an unparsable datagram ({e}): {bytes:02x?}",
                self.name
            );
        }
    }
}

fn push_link(link: &mut Vec<Datagram>, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
    if link.len() < MAX_IN_FLIGHT {
        link.push(Datagram {
            from,
            to,
            bytes: bytes.to_vec(),
        });
    }
}

struct World {
    client: Side,
    server: Side,
    now: Instant,
    /// Datagrams sent and not yet delivered, dropped or held.
    link: Vec<Datagram>,
    /// Datagrams kept for later replay (duplicates, reordering, mutations).
    held: Vec<Datagram>,
    /// Buffer size for the too-small-buffer check, 0 for none.
    small: usize,
}

impl World {
    fn side(&mut self, server: bool) -> &mut Side {
        if server {
            &mut self.server
        } else {
            &mut self.client
        }
    }

    /// Hands a datagram to the endpoint it is addressed to, if it is one of ours.
    fn deliver(&mut self, d: &Datagram) {
        let now = self.now;
        if d.to == SERVER {
            self.server.ep.handle_datagram(now, d.from, &d.bytes);
        } else if d.to == GROUP {
            self.server
                .ep
                .handle_multicast_datagram(now, d.from, &d.bytes);
        } else if d.to == CLIENT {
            self.client.ep.handle_datagram(now, d.from, &d.bytes);
        }
    }

    /// Drains both endpoints and checks everything.
    fn settle(&mut self) {
        let now = self.now;
        let small = self.small;
        self.client.drain_transmits(now, small, &mut self.link);
        self.server.drain_transmits(now, small, &mut self.link);
        self.client.drain_events();
        self.server.drain_events();
        self.client.check_bounds();
        self.server.check_bounds();
    }

    /// Moves what is on the link: deliver, drop or hold each datagram, over a few rounds.
    fn network(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let rounds = u.int_in_range(0..=6u8)?;
        for _ in 0..rounds {
            if self.link.is_empty() {
                break;
            }
            let mode = u.int_in_range(0..=3u8)?;
            let batch = core::mem::take(&mut self.link);
            for d in batch {
                let fate = match mode {
                    0 => 0,
                    1 => 1,
                    2 => 2,
                    _ => u.int_in_range(0..=2u8)?,
                };
                match fate {
                    0 => self.deliver(&d),
                    1 => {}
                    _ => {
                        if self.held.len() >= MAX_HELD {
                            self.held.remove(0);
                        }
                        self.held.push(d.clone());
                        self.deliver(&d);
                    }
                }
            }
            self.settle();
        }
        Ok(())
    }

    fn advance(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let next = [self.client.ep.poll_timeout(), self.server.ep.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        self.now = match u.int_in_range(0..=4u8)? {
            0 => self.now + Duration::from_micros(u.int_in_range(0..=2_000)?),
            1 => self.now + Duration::from_millis(u.int_in_range(0..=5_000)?),
            2 => self.now + Duration::from_secs(u.int_in_range(0..=300)?),
            // Exactly at the next deadline, or just before it.
            3 => next.unwrap_or(self.now).max(self.now),
            _ => Instant::from_micros(
                next.unwrap_or(self.now)
                    .as_micros()
                    .saturating_sub(1)
                    .max(self.now.as_micros()),
            ),
        };
        match u.int_in_range(0..=2u8)? {
            0 => self.timeout(false),
            1 => self.timeout(true),
            _ => {
                self.timeout(false);
                self.timeout(true);
            }
        }
        Ok(())
    }

    /// `handle_timeout(now)` on one side, with the checks that go with it.
    fn timeout(&mut self, server: bool) {
        let now = self.now;
        let small = self.small;
        let mut link = core::mem::take(&mut self.link);
        let side = self.side(server);
        side.ep.handle_timeout(now);
        if let Some(next) = side.ep.poll_timeout() {
            assert!(
                next > now,
                "{}: poll_timeout {next} not after handle_timeout({now})",
                side.name
            );
        }
        side.drain_transmits(now, small, &mut link);
        side.drain_events();
        // A second call at the same time has nothing left to do.
        side.ep.handle_timeout(now);
        let t = side.ep.table_sizes();
        assert_eq!(
            (t.transmit_queue, t.events),
            (0, 0),
            "{}: handle_timeout({now}) twice did something the second time",
            side.name
        );
        self.link = link;
    }
}

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let mut c = Config::default();
    c.max_client_exchanges = u.int_in_range(1..=6)?;
    c.max_server_exchanges = u.int_in_range(1..=4)?;
    c.max_queued_per_peer = u.int_in_range(1..=4)?;
    c.max_peers = u.int_in_range(1..=3)?;
    c.max_dedup_entries = u.int_in_range(1..=8)?;
    c.max_dedup_bytes = u.int_in_range(0..=4096)?;
    c.max_transmit_queue = u.int_in_range(1..=12)?;
    c.nstart = u.int_in_range(1..=2)?;
    // Short and empty tokens make collisions and forged matches likely.
    c.token_len = *u.choose(&[8, 0, 1, 2])?;
    c.block_size = *u.choose(&[1024, 16, 64, 256])?;
    c.max_message_size = *u.choose(&[1152, 300, 64])?;
    c.max_body_size = u.int_in_range(0..=10_000)?;
    c.max_reassembly_bytes_per_peer = u.int_in_range(0..=4096)?;
    c.max_reassembly_bytes = u.int_in_range(0..=6000)?;
    c.max_representation_bytes = u.int_in_range(0..=8192)?;
    c.report_progress = u.arbitrary()?;
    c.restart_download_on_change = u.arbitrary()?;
    c.proxy = u.ratio(1, 8)?;
    if u.ratio(1, 4)? {
        c.raw_block_paths.push("raw".into());
    }
    if u.ratio(1, 8)? {
        c.extra_critical_options.push(OptionNumber(65001));
    }
    if u.ratio(1, 4)? {
        // Short timers so retransmissions and expiries happen within a few steps.
        c.ack_timeout = Duration::from_millis(u.int_in_range(1..=500)?);
        c.max_retransmit = u.int_in_range(0..=4)?;
        c.max_latency = Duration::from_millis(u.int_in_range(0..=2000)?);
        c.empty_ack_delay = Duration::from_millis(u.int_in_range(0..=200)?);
        c.default_leisure = Duration::from_millis(u.int_in_range(0..=500)?);
        c.representation_lifetime = Duration::from_millis(u.int_in_range(0..=5000)?);
        c.multicast_response_window = Duration::from_millis(u.int_in_range(0..=2000)?);
    }
    Ok(c)
}

/// Up to `len` bytes of input (fewer when it runs out).
fn take<'a>(u: &mut Unstructured<'a>, len: usize) -> Result<&'a [u8]> {
    u.bytes(len.min(u.len()))
}

fn address(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(*u.choose(&[SERVER, CLIENT, STRANGERS[0], STRANGERS[1], GROUP])?)
}

fn method(u: &mut Unstructured<'_>) -> Result<Code> {
    Ok(match u.int_in_range(0..=8u8)? {
        0 | 1 => Code::GET,
        2 => Code::POST,
        3 => Code::PUT,
        4 => Code::DELETE,
        5 => Code::FETCH,
        6 => Code::IPATCH,
        7 => Code::PATCH,
        _ => Code::from_u8(u.arbitrary()?),
    })
}

fn response_code(u: &mut Unstructured<'_>) -> Result<Code> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 | 1 => Code::CONTENT,
        2 => Code::CHANGED,
        3 => Code::CREATED,
        4 => Code::VALID,
        5 => Code::CONTINUE,
        6 => Code::NOT_FOUND,
        7 => Code::REQUEST_ENTITY_TOO_LARGE,
        8 => Code::INTERNAL_SERVER_ERROR,
        _ => Code::from_u8(u.arbitrary()?),
    })
}

fn payload(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let len = match u.int_in_range(0..=7u8)? {
        0 | 1 => 0,
        2 => u.int_in_range(1..=64)?,
        3 => u.int_in_range(1000..=1100)?,
        4 => 1024 * u.int_in_range(1..=4)?,
        5 => u.int_in_range(1025..=5000)?,
        6 => u.int_in_range(5000..=20_000)?,
        _ => u.int_in_range(0..=300)?,
    };
    let fill: u8 = u.arbitrary()?;
    Ok(Bytes::from(vec![fill; len]))
}

/// Options a request or response may carry: the interesting ones with plausible values, plus
/// the odd unknown or malformed one.
fn options(u: &mut Unstructured<'_>, options: &mut Options) -> Result<()> {
    for _ in 0..u.int_in_range(0..=4u8)? {
        let number = match u.int_in_range(0..=14u8)? {
            0 => OptionNumber::BLOCK2,
            1 => OptionNumber::BLOCK1,
            2 => OptionNumber::SIZE2,
            3 => OptionNumber::SIZE1,
            4 => OptionNumber::ETAG,
            5 => OptionNumber::OBSERVE,
            6 => OptionNumber::URI_PATH,
            7 => OptionNumber::REQUEST_TAG,
            8 => OptionNumber::NO_RESPONSE,
            9 => OptionNumber::PROXY_URI,
            10 => OptionNumber::CONTENT_FORMAT,
            11 => OptionNumber::IF_MATCH,
            12 => OptionNumber::URI_HOST,
            13 => OptionNumber(65001),
            _ => OptionNumber(u.arbitrary()?),
        };
        let value = if matches!(number, OptionNumber::BLOCK1 | OptionNumber::BLOCK2) {
            // NUM | M | SZX, mostly well-formed.
            let num: u32 = u.int_in_range(0..=40)?;
            let more: bool = u.arbitrary()?;
            let szx: u32 = u.int_in_range(0..=7)?;
            let v = (num << 4) | (u32::from(more) << 3) | szx;
            let bytes = v.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            bytes[skip..].to_vec()
        } else {
            let len = u.int_in_range(0..=9)?;
            take(u, len)?.to_vec()
        };
        options.push(number, &value);
    }
    Ok(())
}

fn start_request(w: &mut World, u: &mut Unstructured<'_>) -> Result<()> {
    let server_side = u.ratio(1, 8)?;
    let to = if server_side {
        *u.choose(&[CLIENT, STRANGERS[0], GROUP])?
    } else {
        *u.choose(&[SERVER, SERVER, SERVER, STRANGERS[0], STRANGERS[1], GROUP])?
    };
    let mut request = Request::new(method(u)?);
    let path = *u.choose(&["sensors/temp", "", "raw/x", "a", ".well-known/core"])?;
    request = request.with_path(path);
    options(u, &mut request.options)?;
    request.payload = payload(u)?;
    request.message_type = *u.choose(&[None, Some(MessageType::Con), Some(MessageType::Non)])?;
    if u.ratio(1, 4)? {
        request.timeout = Some(match u.int_in_range(0..=3u8)? {
            0 => Duration::ZERO,
            1 => Duration::from_millis(u.int_in_range(1..=10_000)?),
            2 => Duration::from_secs(u.int_in_range(1..=100_000)?),
            _ => Duration::MAX,
        });
    }
    let now = w.now;
    let side = w.side(server_side);
    let result = side.ep.request(now, to, request);
    side.record_start(result, to, false);
    Ok(())
}

fn respond(w: &mut World, u: &mut Unstructured<'_>) -> Result<()> {
    let server_side = !u.ratio(1, 8)?;
    let mut response = Response::new(response_code(u)?);
    options(u, &mut response.options)?;
    response.payload = payload(u)?;
    response.message_type = *u.choose(&[
        None,
        Some(MessageType::Con),
        Some(MessageType::Non),
        Some(MessageType::Ack),
    ])?;
    let pick = u.int_in_range(0..=7u8)?;
    let now = w.now;
    let side = w.side(server_side);
    // Mostly a pending request; sometimes one answered or aborted before.
    let id = if pick < 6 {
        let mut open: Vec<IncomingId> = side.open.keys().copied().collect();
        open.sort();
        match open.get(usize::from(pick) % open.len().max(1)) {
            Some(id) => *id,
            None => return Ok(()),
        }
    } else {
        let mut all: Vec<IncomingId> = side.announced.iter().copied().collect();
        all.sort();
        match all.get(usize::from(pick) % all.len().max(1)) {
            Some(id) => *id,
            None => return Ok(()),
        }
    };
    let is_response = response.code.is_response();
    let was_open = side.open.contains_key(&id);
    match side.ep.respond(now, id, response) {
        Ok(()) => {
            assert!(
                was_open,
                "{}: respond accepted {id}, not pending",
                side.name
            );
            side.open.remove(&id);
            side.answered.insert(id, 0);
        }
        Err(RespondError::UnknownRequest(got)) => {
            assert_eq!(got, id);
            assert!(!was_open, "{}: respond refused pending {id}", side.name);
        }
        Err(RespondError::NotAResponse(_)) => assert!(!is_response),
        Err(RespondError::MessageTooBig { .. }) => {
            assert!(was_open, "{}: {id} not pending but too big", side.name);
        }
        Err(e) => panic!("{}: unexpected respond error {e}", side.name),
    }
    Ok(())
}

/// A message built from the input, with a token that may match a live exchange.
fn forge(w: &mut World, u: &mut Unstructured<'_>) -> Result<()> {
    let to_server = u.arbitrary()?;
    let from = if to_server {
        *u.choose(&[CLIENT, CLIENT, STRANGERS[0], STRANGERS[1]])?
    } else {
        *u.choose(&[SERVER, SERVER, STRANGERS[0], STRANGERS[1]])?
    };
    let mtype = MessageType::from_bits(u.int_in_range(0..=3)?);
    let code = if u.arbitrary()? {
        method(u)?
    } else {
        response_code(u)?
    };
    let target = if to_server { &w.server } else { &w.client };
    // Tokens and Message IDs of live exchanges, or made up. Sorted by id: the endpoint lists
    // them in hash-map order, which differs from run to run.
    let mut tokens: Vec<(RequestId, Token)> = target
        .ep
        .pending_requests()
        .map(|(id, .., t)| (id, t.clone()))
        .collect();
    tokens.sort_by_key(|(id, _)| *id);
    let token = match tokens.get(usize::from(u.int_in_range(0..=7u8)?)) {
        Some((_, t)) => t.clone(),
        None => {
            let len = u.int_in_range(0..=9)?;
            Token::new(take(u, len)?)
        }
    };
    let recent_mid = w
        .held
        .iter()
        .rev()
        .find_map(|d| MessageView::parse(&d.bytes).ok().map(|v| v.message_id()));
    let mid = match (u.arbitrary::<bool>()?, recent_mid) {
        (true, Some(m)) => m.wrapping_add(u16::from(u.int_in_range(0..=2u8)?)),
        _ => u.arbitrary()?,
    };
    let mut m = Message::new(mtype, code, mid);
    m.token = token;
    options(u, &mut m.options)?;
    let len = u.int_in_range(0..=1100)?;
    m.payload = Bytes::copy_from_slice(take(u, len)?);
    let mut bytes = vec![0u8; m.encoded_len()];
    let Ok(n) = m.encode(&mut bytes) else {
        return Ok(());
    };
    bytes.truncate(n);
    let to = if to_server {
        if u.ratio(1, 4)? {
            GROUP
        } else {
            SERVER
        }
    } else {
        CLIENT
    };
    w.deliver(&Datagram { from, to, bytes });
    Ok(())
}

fn step(w: &mut World, u: &mut Unstructured<'_>) -> Result<()> {
    let now = w.now;
    match u.int_in_range(0..=13u8)? {
        0 => {
            // Raw bytes from some peer, unicast or to the group.
            let to = *u.choose(&[SERVER, CLIENT, GROUP])?;
            let from = address(u)?;
            let len = u.int_in_range(0..=80)?;
            let bytes = take(u, len)?.to_vec();
            w.deliver(&Datagram { from, to, bytes });
        }
        1 => forge(w, u)?,
        2 => {
            // Replay a held datagram, maybe altered.
            if w.held.is_empty() {
                return Ok(());
            }
            let i = u.int_in_range(0..=w.held.len() - 1)?;
            let mut d = w.held[i].clone();
            match u.int_in_range(0..=3u8)? {
                0 => {}
                1 if !d.bytes.is_empty() => {
                    let at = u.int_in_range(0..=d.bytes.len() - 1)?;
                    d.bytes[at] ^= u.arbitrary::<u8>()?;
                }
                2 => {
                    let keep = u.int_in_range(0..=d.bytes.len())?;
                    d.bytes.truncate(keep);
                }
                _ => d.from = address(u)?,
            }
            w.deliver(&d);
        }
        3 | 4 => w.advance(u)?,
        5 | 6 => start_request(w, u)?,
        7 | 8 => respond(w, u)?,
        9 => {
            let server_side = u.ratio(1, 8)?;
            let side = w.side(server_side);
            let mut ids: Vec<RequestId> = side.started.keys().copied().collect();
            ids.sort();
            if let Some(&id) = ids.get(usize::from(u.arbitrary::<u8>()?) % ids.len().max(1)) {
                let live = side.started.get(&id).is_some_and(|s| s.finals == 0);
                assert_eq!(side.ep.cancel(now, id), live, "{}: cancel({id})", side.name);
            }
        }
        10 => {
            let server_side = u.ratio(1, 8)?;
            let to = address(u)?;
            let side = w.side(server_side);
            let result = side.ep.ping(now, to);
            side.record_start(result, to, true);
        }
        11 => {
            let server_side = u.arbitrary()?;
            let peer = address(u)?;
            let side = w.side(server_side);
            side.ep.abort_peer(now, peer);
            side.open.retain(|_, p| *p != peer);
        }
        12 => {
            let server_side = u.arbitrary()?;
            let peer = address(u)?;
            w.side(server_side).ep.handle_unreachable(now, peer);
        }
        _ => {
            if u.ratio(1, 4)? {
                let side = w.side(u.arbitrary()?);
                side.ep.close(now);
                side.closed = true;
            }
        }
    }
    w.settle();
    w.network(u)
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let client_config = config(&mut u)?;
    let server_config = if u.arbitrary()? {
        client_config.clone()
    } else {
        config(&mut u)?
    };
    let seed: u64 = u.arbitrary()?;
    let small = *u.choose(&[0usize, 0, 0, 4, 40])?;
    let mut w = World {
        client: Side::new("client", client_config, seed, CLIENT),
        server: Side::new("server", server_config, seed ^ 0x5eed, SERVER),
        now: Instant::from_secs(1),
        link: Vec::new(),
        held: Vec::new(),
        small,
    };
    let mut steps = 0;
    while !u.is_empty() && steps < MAX_STEPS {
        if step(&mut w, &mut u).is_err() {
            break;
        }
        steps += 1;
    }
    w.settle();
    finish(&mut w);
    Ok(())
}

/// The network goes silent; the clock jumps from deadline to deadline until nothing is left.
/// Every request must then have ended with exactly one final event.
fn finish(w: &mut World) {
    w.link.clear();
    for _ in 0..10_000 {
        let next = [w.client.ep.poll_timeout(), w.server.ep.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        if w.client.ep.pending_requests().next().is_none()
            && w.server.ep.pending_requests().next().is_none()
        {
            break;
        }
        w.now = next.max(w.now);
        w.timeout(false);
        w.timeout(true);
        w.link.clear();
    }
    for side in [&w.client, &w.server] {
        let stuck: Vec<_> = side.ep.pending_requests().map(|(id, ..)| id).collect();
        assert!(
            stuck.is_empty(),
            "{}: requests {stuck:?} never ended (now {}, next deadline {:?})",
            side.name,
            w.now,
            side.ep.table_sizes()
        );
        for (id, s) in &side.started {
            assert_eq!(s.finals, 1, "{}: {id} ended {} times", side.name, s.finals);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
