//! A deterministic network simulation: many nodes, one thread, a virtual clock, seeded links.
//!
//! A [`Network`] holds nodes (anything implementing [`Node`]: a CoAP endpoint or a test double),
//! each at one [`SocketAddr`], and carries the datagrams they send over simulated links that lose,
//! duplicate, delay, jitter and reorder them as a [`LinkConfig`] says. Every random choice comes
//! from one [`SeededRng`] seeded at construction, and every iteration order is fixed, so **the same
//! seed and the same node behaviour give the same run, datagram for datagram**.
//!
//! # Time model
//!
//! Nothing here reads a real clock. The network keeps a virtual [`Instant`] that starts at
//! [`Instant::ZERO`] and only moves forward, in jumps: each [`Network::step`]
//!
//! 1. jumps the clock to the earliest pending event — the next datagram delivery or the earliest
//!    node deadline (from [`Node::poll_timeout`]) — unless that is already in the past;
//! 2. delivers every datagram due by then, in delivery-time order (ties in send order);
//! 3. calls [`Node::handle_timeout`] on every node whose deadline has been reached, earliest first;
//! 4. drains [`Node::poll_transmit`] of every node touched in this step (visited in [`NodeId`]
//!    order) and puts what they sent on the links, then asks those nodes for their next deadline.
//!
//! Datagrams sent during a step are never delivered in that same step, even over a zero-delay
//! link; they arrive in a later step (possibly at the same virtual instant). A node is only
//! polled after something happened to it: a delivery, a timeout, [`Network::add_node`] or
//! [`Network::node_mut`] (so calling a node's API between steps is noticed).
//!
//! A run stops when nothing is left to do, at a time you choose, or when a condition fails; a
//! step budget ([`Network::set_step_limit`]) turns a livelock into a loud [`SimError`] that names
//! the seed.
//!
//! # Reproducing a failure
//!
//! Give every node its own seed derived from the network's ([`Network::derive_seed`]) so a whole
//! scenario hangs off one number. Run many seeds in a loop; when one fails, the error (or your
//! assertion message, if it prints [`Network::seed`]) names it, and rerunning that single seed
//! replays the failure exactly. Turn on [`Network::record_trace`] to see every send, drop,
//! duplication, delivery and timeout; with the `std` feature, set the environment variable
//! `COAP_SIM_PCAP` to a file name (a `{seed}` in it is replaced by the seed) or call
//! [`Network::write_pcap`] to open the traffic in Wireshark.
//!
//! # Example
//!
//! ```
//! use core::net::SocketAddr;
//! use core::time::Duration;
//! use coap_proto::sim::{LinkConfig, Network, Node};
//! use coap_proto::Instant;
//!
//! /// Sends "ping" every second until it hears "pong".
//! struct Pinger { peer: SocketAddr, next: Option<Instant>, due: bool, got_pong: bool }
//! /// Answers every datagram with "pong".
//! struct Echo { reply_to: Vec<SocketAddr> }
//!
//! enum Toy { Pinger(Pinger), Echo(Echo) }
//!
//! impl Node for Toy {
//!     fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, datagram: &[u8]) {
//!         match self {
//!             Toy::Pinger(p) if datagram == b"pong" => { p.got_pong = true; p.next = None; }
//!             Toy::Echo(e) => e.reply_to.push(from),
//!             _ => {}
//!         }
//!     }
//!     fn handle_timeout(&mut self, now: Instant) {
//!         if let Toy::Pinger(p) = self {
//!             if p.next.is_some_and(|t| t <= now) { p.due = true; p.next = Some(now + Duration::from_secs(1)); }
//!         }
//!     }
//!     fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
//!         match self {
//!             Toy::Pinger(p) if p.due => { p.due = false; buf[..4].copy_from_slice(b"ping"); Some((p.peer, 4)) }
//!             Toy::Echo(e) => { let to = e.reply_to.pop()?; buf[..4].copy_from_slice(b"pong"); Some((to, 4)) }
//!             _ => None,
//!         }
//!     }
//!     fn poll_timeout(&mut self) -> Option<Instant> {
//!         match self { Toy::Pinger(p) => p.next, Toy::Echo(_) => None }
//!     }
//! }
//!
//! let server: SocketAddr = "[2001:db8::1]:5683".parse().unwrap();
//! let client: SocketAddr = "[2001:db8::2]:5683".parse().unwrap();
//! let mut net = Network::new(42);
//! // Every datagram has a one-in-two chance of being lost.
//! net.set_default_link(LinkConfig::default().with_loss(0.5).with_delay(Duration::from_millis(20)));
//! net.add_node(server, Toy::Echo(Echo { reply_to: Vec::new() }));
//! let c = net.add_node(client, Toy::Pinger(Pinger {
//!     peer: server, next: Some(Instant::ZERO), due: false, got_pong: false,
//! }));
//!
//! // Runs until the pinger's deadline disappears; fails loudly (naming the seed) if it never does.
//! net.run_until_idle().unwrap();
//! let Toy::Pinger(p) = net.node(c) else { unreachable!() };
//! assert!(p.got_pong);
//! println!("done at {} after {} datagrams", net.now(), net.stats().sent);
//! ```
//!
//! For networks of different node types, use `Network<Box<dyn Node>>` or, as above, an enum
//! (which keeps [`Network::node_mut`] able to reach each node's own API).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::{Ordering, Reverse};
use core::fmt;
use core::mem;
use core::net::SocketAddr;
use core::time::Duration;

use bytes::Bytes;

use crate::rng::{splitmix64, SeededRng};
use crate::time::Instant;

#[cfg(feature = "std")]
pub mod pcap;

#[cfg(test)]
mod tests;

/// Size of the buffer handed to [`Node::poll_transmit`]: the largest UDP payload over IPv6.
const TRANSMIT_BUF_LEN: usize = 65_535;
/// At most this many datagrams are taken from one node in one drain; a node with more is drained
/// again in the next step (at the same instant), so a node that never stops sending trips the
/// step limit instead of hanging the harness.
const TRANSMIT_BURST_LIMIT: usize = 4096;
/// Default of [`Network::set_step_limit`].
const DEFAULT_STEP_LIMIT: u64 = 10_000_000;
/// Default of [`Network::set_trace_limit`].
const DEFAULT_TRACE_LIMIT: usize = 100_000;
/// IPv4 (20) plus UDP (8) header bytes, counted against the link MTU.
const IPV4_UDP_OVERHEAD: usize = 28;
/// IPv6 (40) plus UDP (8) header bytes, counted against the link MTU.
const IPV6_UDP_OVERHEAD: usize = 48;

/// Something that sits at one address of the simulated network (a CoAP endpoint, or a test double).
///
/// The methods mirror the Sans-IO engine's surface, so an endpoint implements this trait by
/// forwarding. A node must tolerate extra calls: `handle_timeout` may come early (it should then
/// do nothing), and `poll_transmit`/`poll_timeout` may be asked when nothing changed.
pub trait Node {
    /// A datagram arrived from `from`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);

    /// The clock reached (or passed) a deadline this node asked for.
    fn handle_timeout(&mut self, now: Instant);

    /// Write the next outgoing datagram into `buf`; return its destination and length.
    ///
    /// `buf` is 65535 bytes long. A returned length larger than `buf` is counted as oversize
    /// and the datagram discarded.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)>;

    /// The earliest instant this node wants `handle_timeout` called, if any.
    fn poll_timeout(&mut self) -> Option<Instant>;

    /// A datagram sent to the multicast `group` this node joined arrived from `from`.
    ///
    /// CoAP treats multicast requests differently (RFC 7252 §8.1: no piggybacked ACK, no RST,
    /// leisure before answering), so a node that cares overrides this. The default forwards to
    /// [`Node::handle_datagram`].
    fn handle_multicast_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        group: SocketAddr,
        datagram: &[u8],
    ) {
        let _ = group;
        self.handle_datagram(now, from, datagram);
    }
}

impl<T: Node + ?Sized> Node for Box<T> {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        (**self).handle_datagram(now, from, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        (**self).poll_transmit(now, buf)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn handle_multicast_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        group: SocketAddr,
        datagram: &[u8],
    ) {
        (**self).handle_multicast_datagram(now, from, group, datagram);
    }
}

/// Names one node of a [`Network`]; ids count up from 0 in the order nodes were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u32);

impl NodeId {
    /// The position of this node in the order nodes were added (0 for the first).
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node#{}", self.0)
    }
}

/// Gilbert–Elliott burst loss: a link flips between a good and a bad state, and loses datagrams
/// at a higher rate while bad.
///
/// The state is kept per directed link and may change before each datagram crosses it. In the
/// good state the link's [`LinkConfig::loss`] applies; in the bad state `bad_loss` does. The mean
/// burst lasts `1 / leave_bad` datagrams; the link is bad a fraction
/// `enter_bad / (enter_bad + leave_bad)` of the time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstLoss {
    /// Probability, per datagram, of moving from the good to the bad state.
    pub enter_bad: f64,
    /// Probability, per datagram, of moving from the bad back to the good state.
    pub leave_bad: f64,
    /// Loss probability while in the bad state.
    pub bad_loss: f64,
}

/// How one directed link treats the datagrams crossing it.
///
/// Each datagram is judged independently (apart from [`BurstLoss`] state), in this order: larger
/// than `mtu` → dropped; lost → dropped; otherwise delivered after `delay` plus a uniform jitter,
/// plus, with probability `reorder`, an extra uniform hold of up to `reorder_delay` so that it is
/// overtaken by later datagrams; and with probability `duplicate` a second copy is delivered too,
/// with its own independently drawn delay.
///
/// Construct with [`LinkConfig::default`] (a perfect 1 ms link) and the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Probability that a datagram is lost (in the good state, when `burst_loss` is set).
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram gets an extra delay of up to `reorder_delay`.
    pub reorder: f64,
    /// The largest extra delay a reordered datagram gets (drawn uniformly from zero to this).
    pub reorder_delay: Duration,
    /// Fixed one-way latency.
    pub delay: Duration,
    /// Extra latency drawn uniformly from zero to this, per datagram (which also reorders
    /// datagrams sent closer together than the jitter).
    pub jitter: Duration,
    /// The IP MTU in bytes: a datagram whose UDP payload plus IP and UDP headers (28 bytes over
    /// IPv4, 48 over IPv6) exceeds it is dropped and counted in [`NetStats::oversize`].
    pub mtu: usize,
    /// Optional bursty loss on top of `loss`.
    pub burst_loss: Option<BurstLoss>,
}

impl Default for LinkConfig {
    /// A perfect link: 1 ms latency, no jitter, loss, duplication or reordering, MTU 1500.
    fn default() -> LinkConfig {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            delay: Duration::from_millis(1),
            jitter: Duration::ZERO,
            mtu: 1500,
            burst_loss: None,
        }
    }
}

impl LinkConfig {
    /// Sets [`LinkConfig::loss`].
    pub fn with_loss(mut self, p: f64) -> LinkConfig {
        self.loss = p;
        self
    }
    /// Sets [`LinkConfig::duplicate`].
    pub fn with_duplicate(mut self, p: f64) -> LinkConfig {
        self.duplicate = p;
        self
    }
    /// Sets [`LinkConfig::reorder`] and [`LinkConfig::reorder_delay`].
    pub fn with_reorder(mut self, p: f64, max_extra_delay: Duration) -> LinkConfig {
        self.reorder = p;
        self.reorder_delay = max_extra_delay;
        self
    }
    /// Sets [`LinkConfig::delay`].
    pub fn with_delay(mut self, delay: Duration) -> LinkConfig {
        self.delay = delay;
        self
    }
    /// Sets [`LinkConfig::jitter`].
    pub fn with_jitter(mut self, jitter: Duration) -> LinkConfig {
        self.jitter = jitter;
        self
    }
    /// Sets [`LinkConfig::mtu`].
    pub fn with_mtu(mut self, mtu: usize) -> LinkConfig {
        self.mtu = mtu;
        self
    }
    /// Sets [`LinkConfig::burst_loss`].
    pub fn with_burst_loss(mut self, burst: BurstLoss) -> LinkConfig {
        self.burst_loss = Some(burst);
        self
    }
}

/// What the filter installed with [`Network::set_filter`] decides about one datagram copy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Deliver it as the link model decided.
    Deliver,
    /// Drop it (counted in [`NetStats::filtered`]).
    Drop,
    /// Deliver it this much later than the link model decided.
    Delay(Duration),
    /// Deliver these bytes instead, at the time the link model decided.
    Replace(Bytes),
}

/// One copy of a datagram on its way to one receiver, as shown to the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Datagram {
    /// The send it is a copy of (shared by duplicates and by the copies of a multicast send);
    /// matches the `id` in the [`TraceEvent::Sent`] entry.
    pub id: u64,
    /// The sender's address.
    pub from: SocketAddr,
    /// The destination address as sent: the receiver's address, or a multicast group.
    pub to: SocketAddr,
    /// The node it will be delivered to.
    pub receiver: NodeId,
    /// When it was sent.
    pub sent_at: Instant,
    /// When the link model will deliver it.
    pub deliver_at: Instant,
    /// `true` for the extra copy made by [`LinkConfig::duplicate`].
    pub duplicate: bool,
    /// The UDP payload.
    pub bytes: Bytes,
}

/// Why a datagram (or one copy of it) was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Random loss ([`LinkConfig::loss`]).
    Loss,
    /// Loss while the link was in the bad state of its [`BurstLoss`] model.
    BurstLoss,
    /// Larger than the link MTU (or than the transmit buffer).
    Oversize {
        /// The UDP payload length.
        len: usize,
        /// The limit it broke: the link MTU, or the transmit buffer size.
        mtu: usize,
    },
    /// No node has the destination address and no group by that address has other members.
    NoRoute,
    /// The filter returned [`Verdict::Drop`].
    Filtered,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Loss => f.write_str("lost"),
            DropReason::BurstLoss => f.write_str("lost in a burst"),
            DropReason::Oversize { len, mtu } => {
                write!(f, "oversize ({len}-byte payload, limit {mtu})")
            }
            DropReason::NoRoute => f.write_str("no route to destination"),
            DropReason::Filtered => f.write_str("dropped by filter"),
        }
    }
}

/// One thing that happened on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceEvent {
    /// A node (or [`Network::inject`]) sent a datagram.
    Sent {
        /// Identifies this send in later events.
        id: u64,
        /// Sender address.
        from: SocketAddr,
        /// Destination address (possibly a multicast group).
        to: SocketAddr,
        /// The UDP payload.
        bytes: Bytes,
    },
    /// A datagram, or its copy towards one receiver, was dropped.
    Dropped {
        /// The send.
        id: u64,
        /// The receiver it was heading for, if one was known.
        receiver: Option<NodeId>,
        /// Why.
        reason: DropReason,
    },
    /// The link made an extra copy of a datagram.
    Duplicated {
        /// The send.
        id: u64,
        /// The receiver of both copies.
        receiver: NodeId,
    },
    /// A datagram copy was handed to its receiver.
    Delivered {
        /// The send.
        id: u64,
        /// The receiving node.
        receiver: NodeId,
        /// Sender address.
        from: SocketAddr,
        /// When it was sent.
        sent_at: Instant,
        /// `true` for the extra copy made by duplication.
        duplicate: bool,
    },
    /// A node's deadline was reached and its `handle_timeout` called.
    Timeout {
        /// The node.
        node: NodeId,
    },
}

/// An entry of the trace log: what happened, and at which virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceEntry {
    /// Virtual time of the event.
    pub at: Instant,
    /// The event.
    pub event: TraceEvent,
}

/// Counters of what the network did, from its creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Datagrams taken from nodes (and injected); a multicast send counts once.
    pub sent: u64,
    /// Datagram copies handed to a node.
    pub delivered: u64,
    /// Copies dropped by random or burst loss.
    pub lost: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies that got the reordering hold ([`LinkConfig::reorder`]).
    pub reordered: u64,
    /// Copies dropped for exceeding the MTU or the transmit buffer.
    pub oversize: u64,
    /// Datagrams dropped for lack of a receiver.
    pub unroutable: u64,
    /// Copies dropped by the filter.
    pub filtered: u64,
    /// `handle_timeout` calls.
    pub timeouts: u64,
    /// Steps taken.
    pub steps: u64,
}

/// A run of the network ended without reaching its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// The step budget of one run call ran out while there was still work to do: usually a
    /// livelock (a node whose deadline never moves, or that sends forever).
    StepLimit {
        /// Steps taken in the failing call.
        steps: u64,
        /// Virtual time when it gave up.
        now: Instant,
        /// The network's seed, to reproduce the run.
        seed: u64,
    },
    /// [`Network::run_while`]: the network went idle (nothing in flight, no deadlines) while the
    /// condition still held, so it could never become false.
    Idle {
        /// Virtual time when it went idle.
        now: Instant,
        /// The network's seed, to reproduce the run.
        seed: u64,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::StepLimit { steps, now, seed } => write!(
                f,
                "simulation still busy after {steps} steps at virtual time {now}; \
                 rerun with seed {seed} to reproduce"
            ),
            SimError::Idle { now, seed } => write!(
                f,
                "simulation went idle at virtual time {now} while the run condition still \
                 held; rerun with seed {seed} to reproduce"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl core::error::Error for SimError {}

/// A datagram copy in flight, ordered so that the max-heap pops the earliest `(deliver_at, seq)`.
struct InFlight {
    seq: u64,
    multicast: bool,
    datagram: Datagram,
}

impl InFlight {
    fn key(&self) -> (Instant, u64) {
        (self.datagram.deliver_at, self.seq)
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &InFlight) -> bool {
        self.key() == other.key()
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &InFlight) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &InFlight) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        other.key().cmp(&self.key())
    }
}

/// A node and the harness's bookkeeping about it.
struct Slot<N> {
    addr: SocketAddr,
    node: N,
    /// In the `dirty` list: must be drained and re-asked for its deadline.
    dirty: bool,
    /// The deadline of this node's one valid entry in the deadline heap.
    queued: Option<Instant>,
    /// Generation of the valid heap entry; older entries are stale and skipped.
    generation: u64,
}

/// The hook installed by [`Network::set_filter`].
type Filter = Box<dyn FnMut(&Datagram) -> Verdict>;

/// Where the traffic capture goes, under `std`.
#[cfg(feature = "std")]
struct Capture {
    writer: pcap::PcapWriter<Box<dyn std::io::Write>>,
    error: Option<std::io::Error>,
}

/// A simulated network of nodes of type `N`. See the [module documentation](self).
pub struct Network<N> {
    seed: u64,
    rng: SeededRng,
    now: Instant,
    nodes: Vec<Slot<N>>,
    by_addr: BTreeMap<SocketAddr, NodeId>,
    groups: BTreeMap<SocketAddr, Vec<NodeId>>,
    default_link: LinkConfig,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    /// Burst-loss state per directed link (`None` sender: injected traffic); `true` = bad.
    burst_bad: BTreeMap<(Option<NodeId>, NodeId), bool>,
    in_flight: BinaryHeap<InFlight>,
    deadlines: BinaryHeap<Reverse<(Instant, NodeId, u64)>>,
    dirty: Vec<NodeId>,
    filter: Option<Filter>,
    tracing: bool,
    trace: Vec<TraceEntry>,
    trace_limit: usize,
    stats: NetStats,
    step_limit: u64,
    next_send_id: u64,
    next_seq: u64,
    buf: Vec<u8>,
    #[cfg(feature = "std")]
    capture: Option<Capture>,
}

impl<N> fmt::Debug for Network<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<N: Node> Network<N> {
    /// An empty network whose every random choice derives from `seed`, with the clock at
    /// [`Instant::ZERO`] and [`LinkConfig::default`] links.
    ///
    /// With the `std` feature, if the environment variable `COAP_SIM_PCAP` is set, the traffic is
    /// captured to the file it names (see [`Network::write_pcap`]); a `{seed}` in the name is
    /// replaced by the seed, so that many seeds do not overwrite one file. A file that cannot be
    /// created is reported on standard error and the run continues without a capture.
    pub fn new(seed: u64) -> Network<N> {
        #[allow(unused_mut)]
        let mut net = Network {
            seed,
            rng: SeededRng::new(seed),
            now: Instant::ZERO,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            groups: BTreeMap::new(),
            default_link: LinkConfig::default(),
            links: BTreeMap::new(),
            burst_bad: BTreeMap::new(),
            in_flight: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            dirty: Vec::new(),
            filter: None,
            tracing: false,
            trace: Vec::new(),
            trace_limit: DEFAULT_TRACE_LIMIT,
            stats: NetStats::default(),
            step_limit: DEFAULT_STEP_LIMIT,
            next_send_id: 0,
            next_seq: 0,
            buf: vec![0; TRANSMIT_BUF_LEN],
            #[cfg(feature = "std")]
            capture: None,
        };
        #[cfg(feature = "std")]
        if let Some(template) = std::env::var_os(pcap::PCAP_ENV_VAR) {
            let path = pcap::path_for_seed(&template, seed);
            if let Err(e) = net.write_pcap(&path) {
                std::eprintln!(
                    "{}: cannot create {}: {e}; continuing without a capture",
                    pcap::PCAP_ENV_VAR,
                    path.display()
                );
            }
        }
        net
    }

    /// The seed this network was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A seed for the `n`th node (or anything else) derived from the network's seed, so that a
    /// whole scenario is reproduced from one number. Does not consume the link randomness.
    pub fn derive_seed(&self, n: u64) -> u64 {
        let mut s = self.seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03);
        splitmix64(&mut s)
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Puts `node` at `addr` and returns its id. The node is polled for transmits and its
    /// deadline in the next step.
    ///
    /// # Panics
    ///
    /// If another node already has `addr` (a bug in the test).
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> NodeId {
        assert!(
            !self.by_addr.contains_key(&addr),
            "a node already sits at {addr}"
        );
        let id = NodeId(u32::try_from(self.nodes.len()).expect("more than 2^32 nodes"));
        self.nodes.push(Slot {
            addr,
            node,
            dirty: false,
            queued: None,
            generation: 0,
        });
        self.by_addr.insert(addr, id);
        self.touch(id);
        id
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The ids of all nodes, in the order they were added.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).map(|i| NodeId(i as u32))
    }

    /// The address of a node.
    ///
    /// # Panics
    ///
    /// If `id` is not from this network.
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.slot(id).addr
    }

    /// The node at `addr`, if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.by_addr.get(&addr).copied()
    }

    /// Shared access to a node.
    ///
    /// # Panics
    ///
    /// If `id` is not from this network.
    pub fn node(&self, id: NodeId) -> &N {
        &self.slot(id).node
    }

    /// Mutable access to a node, to call its own API between steps (at [`Network::now`]).
    ///
    /// The node is marked as touched: the next step drains its transmits and re-reads its
    /// deadline.
    ///
    /// # Panics
    ///
    /// If `id` is not from this network.
    pub fn node_mut(&mut self, id: NodeId) -> &mut N {
        self.touch(id);
        &mut self.slot_mut(id).node
    }

    /// The link configuration used for pairs without an override.
    pub fn default_link(&self) -> &LinkConfig {
        &self.default_link
    }

    /// Sets the link configuration for every pair without an override.
    pub fn set_default_link(&mut self, cfg: LinkConfig) {
        self.default_link = cfg;
    }

    /// The configuration of the directed link from `from` to `to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> &LinkConfig {
        self.links.get(&(from, to)).unwrap_or(&self.default_link)
    }

    /// Overrides the configuration of the directed link from `from` to `to` (set both
    /// directions for a symmetric link). Applies to datagrams sent from now on.
    ///
    /// # Panics
    ///
    /// If either id is not from this network.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, cfg: LinkConfig) {
        self.slot(from);
        self.slot(to);
        self.links.insert((from, to), cfg);
    }

    /// Removes the override of the directed link from `from` to `to`.
    pub fn clear_link(&mut self, from: NodeId, to: NodeId) {
        self.links.remove(&(from, to));
    }

    /// Makes `id` a member of the multicast `group`: datagrams sent to that address are
    /// delivered, each through its own link, to every member except the sender.
    ///
    /// # Panics
    ///
    /// If `id` is not from this network.
    pub fn join(&mut self, id: NodeId, group: SocketAddr) {
        self.slot(id);
        let members = self.groups.entry(group).or_default();
        if let Err(pos) = members.binary_search(&id) {
            members.insert(pos, id);
        }
    }

    /// Removes `id` from the multicast `group`.
    pub fn leave(&mut self, id: NodeId, group: SocketAddr) {
        if let Some(members) = self.groups.get_mut(&group) {
            members.retain(|&m| m != id);
            if members.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    /// The members of a multicast group, in id order.
    pub fn members(&self, group: SocketAddr) -> &[NodeId] {
        self.groups.get(&group).map_or(&[], Vec::as_slice)
    }

    /// Installs a hook that sees every datagram copy after the link model has scheduled it and
    /// decides whether it is delivered, dropped, delayed or rewritten. Replaces any earlier
    /// filter.
    pub fn set_filter<F>(&mut self, filter: F)
    where
        F: FnMut(&Datagram) -> Verdict + 'static,
    {
        self.filter = Some(Box::new(filter));
    }

    /// Removes the filter.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Sends a datagram from any address (a node's, or one no node has) at the current time,
    /// as if a node had; it crosses the link model like any other. Useful to play a raw peer.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        let sender = self.node_at(from);
        self.send(sender, from, to, Bytes::copy_from_slice(datagram));
    }

    /// Counters since creation.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Datagram copies currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Turns the trace log on or off (it starts off).
    pub fn record_trace(&mut self, on: bool) {
        self.tracing = on;
    }

    /// Keeps at most the `limit` most recent trace entries (default 100 000).
    pub fn set_trace_limit(&mut self, limit: usize) {
        self.trace_limit = limit;
        self.compact_trace();
    }

    /// The most recent trace entries, oldest first (at most the trace limit).
    pub fn trace(&self) -> &[TraceEntry] {
        let skip = self.trace.len().saturating_sub(self.trace_limit);
        self.trace.get(skip..).unwrap_or(&[])
    }

    /// Empties the trace log.
    pub fn clear_trace(&mut self) {
        self.trace.clear();
    }

    /// Sets how many steps one call of [`Network::run_until`], [`Network::run_until_idle`] or
    /// [`Network::run_while`] may take before failing with [`SimError::StepLimit`]
    /// (default 10 000 000).
    pub fn set_step_limit(&mut self, steps: u64) {
        self.step_limit = steps;
    }

    /// When the next step will happen: the earliest pending delivery or node deadline (or now,
    /// if a touched node still has to be drained). `None` when the network is idle.
    pub fn next_event_time(&mut self) -> Option<Instant> {
        self.drain_touched();
        if !self.dirty.is_empty() {
            return Some(self.now);
        }
        let delivery = self.in_flight.peek().map(|f| f.datagram.deliver_at);
        let deadline = self.peek_deadline();
        match (delivery, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances to the next event and processes everything due then (see the module docs).
    /// Returns `false`, doing nothing, when the network is idle: nothing in flight and no node
    /// deadline.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_event_time() else {
            return false;
        };
        if t > self.now {
            self.now = t;
        }
        let now = self.now;
        self.stats.steps += 1;

        while self
            .in_flight
            .peek()
            .is_some_and(|f| f.datagram.deliver_at <= now)
        {
            if let Some(f) = self.in_flight.pop() {
                self.deliver(f);
            }
        }

        while let Some(t) = self.peek_deadline() {
            if t > now {
                break;
            }
            let Some(Reverse((_, id, _))) = self.deadlines.pop() else {
                break;
            };
            self.slot_mut(id).queued = None;
            self.stats.timeouts += 1;
            self.record(TraceEvent::Timeout { node: id });
            self.slot_mut(id).node.handle_timeout(now);
            self.touch(id);
        }

        self.drain_touched();
        true
    }

    /// Runs every event up to and including `deadline`, then sets the clock to `deadline` (if it
    /// is later than now).
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), SimError> {
        let mut steps = 0;
        while self.next_event_time().is_some_and(|t| t <= deadline) {
            if steps >= self.step_limit {
                return Err(self.step_limit_error(steps));
            }
            self.step();
            steps += 1;
        }
        if deadline > self.now {
            self.now = deadline;
        }
        Ok(())
    }

    /// [`Network::run_until`] `now + d`.
    pub fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        self.run_until(self.now + d)
    }

    /// Steps until the network is idle.
    ///
    /// Fails with [`SimError::StepLimit`] if the step limit is reached first.
    pub fn run_until_idle(&mut self) -> Result<(), SimError> {
        let mut steps = 0;
        loop {
            if steps >= self.step_limit && self.next_event_time().is_some() {
                return Err(self.step_limit_error(steps));
            }
            if !self.step() {
                return Ok(());
            }
            steps += 1;
        }
    }

    /// Steps while `condition` holds (checked before each step).
    ///
    /// Fails with [`SimError::StepLimit`] if the step limit is reached first, and with
    /// [`SimError::Idle`] if the network goes idle while the condition still holds.
    pub fn run_while<F>(&mut self, mut condition: F) -> Result<(), SimError>
    where
        F: FnMut(&mut Network<N>) -> bool,
    {
        let mut steps = 0;
        while condition(self) {
            if steps >= self.step_limit {
                return Err(self.step_limit_error(steps));
            }
            if !self.step() {
                return Err(SimError::Idle {
                    now: self.now,
                    seed: self.seed,
                });
            }
            steps += 1;
        }
        Ok(())
    }

    fn step_limit_error(&self, steps: u64) -> SimError {
        SimError::StepLimit {
            steps,
            now: self.now,
            seed: self.seed,
        }
    }

    fn slot(&self, id: NodeId) -> &Slot<N> {
        match self.nodes.get(id.index()) {
            Some(s) => s,
            None => panic!("{id} is not a node of this network"),
        }
    }

    fn slot_mut(&mut self, id: NodeId) -> &mut Slot<N> {
        match self.nodes.get_mut(id.index()) {
            Some(s) => s,
            None => panic!("{id} is not a node of this network"),
        }
    }

    /// Marks a node to be drained and re-asked for its deadline.
    fn touch(&mut self, id: NodeId) {
        let slot = self.slot_mut(id);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id);
        }
    }

    /// The earliest valid node deadline, discarding stale heap entries on the way.
    fn peek_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, id, generation))) = self.deadlines.peek() {
            let valid = self
                .nodes
                .get(id.index())
                .is_some_and(|s| s.generation == generation && s.queued == Some(t));
            if valid {
                return Some(t);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Drains the transmits of every touched node, in id order, then refreshes their deadlines.
    fn drain_touched(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut touched = mem::take(&mut self.dirty);
        touched.sort_unstable();
        for &id in &touched {
            self.slot_mut(id).dirty = false;
            self.drain_node(id);
            self.refresh_deadline(id);
        }
        // Reuse the allocation unless draining touched nodes again (burst limit).
        touched.clear();
        if self.dirty.is_empty() {
            self.dirty = touched;
        }
    }

    fn drain_node(&mut self, id: NodeId) {
        let now = self.now;
        for _ in 0..TRANSMIT_BURST_LIMIT {
            let Some(slot) = self.nodes.get_mut(id.index()) else {
                return;
            };
            let Some((to, len)) = slot.node.poll_transmit(now, &mut self.buf) else {
                return;
            };
            let from = slot.addr;
            match self.buf.get(..len) {
                Some(payload) => {
                    let bytes = Bytes::copy_from_slice(payload);
                    self.send(Some(id), from, to, bytes);
                }
                None => {
                    // The node claimed more bytes than the buffer holds.
                    let id_sent = self.next_send_id;
                    self.next_send_id += 1;
                    self.stats.sent += 1;
                    self.stats.oversize += 1;
                    self.record(TraceEvent::Dropped {
                        id: id_sent,
                        receiver: None,
                        reason: DropReason::Oversize {
                            len,
                            mtu: TRANSMIT_BUF_LEN,
                        },
                    });
                }
            }
        }
        // Still sending: come back in the next step.
        self.touch(id);
    }

    fn refresh_deadline(&mut self, id: NodeId) {
        let slot = self.slot_mut(id);
        let deadline = slot.node.poll_timeout();
        if deadline == slot.queued {
            return;
        }
        slot.generation += 1;
        slot.queued = deadline;
        let generation = slot.generation;
        if let Some(t) = deadline {
            self.deadlines.push(Reverse((t, id, generation)));
        }
    }

    /// Puts one sent datagram on the links towards its receiver(s).
    fn send(&mut self, sender: Option<NodeId>, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        let id = self.next_send_id;
        self.next_send_id += 1;
        self.stats.sent += 1;
        #[cfg(feature = "std")]
        self.capture(from, to, &bytes);
        if self.tracing {
            self.record(TraceEvent::Sent {
                id,
                from,
                to,
                bytes: bytes.clone(),
            });
        }

        if let Some(members) = self.groups.get_mut(&to) {
            // Nodes are not called while fanning out, so the member list cannot change; take it
            // to satisfy the borrow checker and put it back.
            let members = mem::take(members);
            let mut any = false;
            for &m in &members {
                if Some(m) != sender {
                    any = true;
                    self.traverse(id, sender, from, to, m, true, bytes.clone());
                }
            }
            self.groups.insert(to, members);
            if any {
                return;
            }
        } else if let Some(&receiver) = self.by_addr.get(&to) {
            self.traverse(id, sender, from, to, receiver, false, bytes);
            return;
        }
        self.stats.unroutable += 1;
        self.record(TraceEvent::Dropped {
            id,
            receiver: None,
            reason: DropReason::NoRoute,
        });
    }

    /// One datagram crossing the directed link from `sender` to `receiver`.
    #[allow(clippy::too_many_arguments)]
    fn traverse(
        &mut self,
        id: u64,
        sender: Option<NodeId>,
        from: SocketAddr,
        to: SocketAddr,
        receiver: NodeId,
        multicast: bool,
        bytes: Bytes,
    ) {
        let cfg = match sender {
            Some(s) => *self.link(s, receiver),
            None => self.default_link,
        };

        let overhead = if from.is_ipv4() && to.is_ipv4() {
            IPV4_UDP_OVERHEAD
        } else {
            IPV6_UDP_OVERHEAD
        };
        if bytes.len().saturating_add(overhead) > cfg.mtu {
            self.stats.oversize += 1;
            self.record(TraceEvent::Dropped {
                id,
                receiver: Some(receiver),
                reason: DropReason::Oversize {
                    len: bytes.len(),
                    mtu: cfg.mtu,
                },
            });
            return;
        }

        if let Some(reason) = self.loss(&cfg, sender, receiver) {
            self.stats.lost += 1;
            self.record(TraceEvent::Dropped {
                id,
                receiver: Some(receiver),
                reason,
            });
            return;
        }

        let copies = if self.rng.gen_bool(cfg.duplicate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let duplicate = copy == 1;
            if duplicate {
                self.stats.duplicated += 1;
                self.record(TraceEvent::Duplicated { id, receiver });
            }
            let mut deliver_at = self.now + cfg.delay;
            if !cfg.jitter.is_zero() {
                let max = u64::try_from(cfg.jitter.as_micros()).unwrap_or(u64::MAX);
                deliver_at += Duration::from_micros(self.rng.gen_range_inclusive_u64(0, max));
            }
            if self.rng.gen_bool(cfg.reorder) {
                self.stats.reordered += 1;
                let max = u64::try_from(cfg.reorder_delay.as_micros()).unwrap_or(u64::MAX);
                deliver_at += Duration::from_micros(self.rng.gen_range_inclusive_u64(0, max));
            }
            let datagram = Datagram {
                id,
                from,
                to,
                receiver,
                sent_at: self.now,
                deliver_at,
                duplicate,
                bytes: bytes.clone(),
            };
            self.schedule(datagram, multicast);
        }
    }

    /// Decides whether the link loses this datagram, advancing its burst state.
    fn loss(
        &mut self,
        cfg: &LinkConfig,
        sender: Option<NodeId>,
        receiver: NodeId,
    ) -> Option<DropReason> {
        let Some(burst) = cfg.burst_loss else {
            return self.rng.gen_bool(cfg.loss).then_some(DropReason::Loss);
        };
        let state = self.burst_bad.entry((sender, receiver)).or_insert(false);
        let flip = if *state {
            burst.leave_bad
        } else {
            burst.enter_bad
        };
        if self.rng.gen_bool(flip) {
            *state = !*state;
        }
        if *state {
            self.rng
                .gen_bool(burst.bad_loss)
                .then_some(DropReason::BurstLoss)
        } else {
            self.rng.gen_bool(cfg.loss).then_some(DropReason::Loss)
        }
    }

    /// Runs the filter on a scheduled copy and queues it.
    fn schedule(&mut self, mut datagram: Datagram, multicast: bool) {
        if let Some(filter) = self.filter.as_mut() {
            match filter(&datagram) {
                Verdict::Deliver => {}
                Verdict::Drop => {
                    self.stats.filtered += 1;
                    self.record(TraceEvent::Dropped {
                        id: datagram.id,
                        receiver: Some(datagram.receiver),
                        reason: DropReason::Filtered,
                    });
                    return;
                }
                Verdict::Delay(d) => datagram.deliver_at += d,
                Verdict::Replace(bytes) => datagram.bytes = bytes,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push(InFlight {
            seq,
            multicast,
            datagram,
        });
    }

    fn deliver(&mut self, f: InFlight) {
        let InFlight {
            multicast,
            datagram: d,
            ..
        } = f;
        let now = self.now;
        self.stats.delivered += 1;
        self.record(TraceEvent::Delivered {
            id: d.id,
            receiver: d.receiver,
            from: d.from,
            sent_at: d.sent_at,
            duplicate: d.duplicate,
        });
        let slot = self.slot_mut(d.receiver);
        if multicast {
            slot.node
                .handle_multicast_datagram(now, d.from, d.to, &d.bytes);
        } else {
            slot.node.handle_datagram(now, d.from, &d.bytes);
        }
        self.touch(d.receiver);
    }

    fn record(&mut self, event: TraceEvent) {
        if !self.tracing {
            return;
        }
        self.trace.push(TraceEntry {
            at: self.now,
            event,
        });
        // Amortised O(1): let the log grow to twice the limit, then cut it back.
        if self.trace.len() >= self.trace_limit.saturating_mul(2).max(1) {
            self.compact_trace();
        }
    }

    fn compact_trace(&mut self) {
        let excess = self.trace.len().saturating_sub(self.trace_limit);
        if excess > 0 {
            self.trace.drain(..excess);
        }
    }
}

#[cfg(feature = "std")]
impl<N: Node> Network<N> {
    /// Captures all traffic sent from now on to a pcap file at `path` (created or truncated),
    /// replacing any earlier capture. Wireshark opens it: raw IP packets (link type 101) with
    /// synthesized IPv4/IPv6 and UDP headers, timestamped with the virtual clock (microseconds
    /// since [`Instant::ZERO`] read as seconds since 1970). Each datagram is recorded once, when
    /// sent, addressed as sent (a multicast send shows its group address), whether or not the
    /// links then deliver it.
    ///
    /// The file is flushed by [`Network::finish_pcap`] or when the network is dropped.
    pub fn write_pcap<P: AsRef<std::path::Path>>(&mut self, path: P) -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        self.capture_pcap(std::io::BufWriter::new(file))
    }

    /// Like [`Network::write_pcap`], into any writer.
    pub fn capture_pcap<W: std::io::Write + 'static>(&mut self, out: W) -> std::io::Result<()> {
        let writer = pcap::PcapWriter::new(Box::new(out) as Box<dyn std::io::Write>)?;
        self.capture = Some(Capture {
            writer,
            error: None,
        });
        Ok(())
    }

    /// Stops the capture, flushes it, and reports the first error that happened while writing
    /// it (writing stops at the first error). `Ok` if there was no capture.
    pub fn finish_pcap(&mut self) -> std::io::Result<()> {
        let Some(mut capture) = self.capture.take() else {
            return Ok(());
        };
        if let Some(e) = capture.error.take() {
            return Err(e);
        }
        capture.writer.flush()
    }

    fn capture(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let now = self.now;
        if let Some(capture) = self.capture.as_mut() {
            if capture.error.is_none() {
                if let Err(e) = capture.writer.write_udp(now, from, to, payload) {
                    capture.error = Some(e);
                }
            }
        }
    }
}
