//! Batched datagram I/O between a UDP socket and a [`coap_proto::Endpoint`], shared by the
//! CoAP runtime crates.
//!
//! A runtime crate's driver moves datagrams between one socket and one engine. One system call
//! per datagram makes entering and leaving the kernel a large share of a busy server's time;
//! this crate keeps the buffers that move many datagrams per call:
//!
//! - [`RecvBatch`]: up to [`RECV_BATCH`] received datagrams. On Linux [`RecvBatch::recv`] fills
//!   it with one `recvmmsg`; everywhere [`RecvBatch::recv_with`] fills it one datagram at a
//!   time through the runtime's own `recv_from`.
//! - [`SendBatch`]: up to [`SEND_BATCH`] datagrams taken from [`Endpoint::poll_transmit`]
//!   and packed into one buffer. On Linux [`SendBatch::send`] hands them to one `sendmmsg`,
//!   or a run of them to one destination to one segmented `sendmsg` (UDP generic
//!   segmentation offload: the kernel routes and queues the run once and cuts it into the
//!   same datagrams); everywhere [`SendBatch::send_with`] sends them one at a time through
//!   the runtime's own `send_to`.
//!
//! [`DatagramIo`] puts the two together with the policy every driver shares: how many
//! datagrams one wake-up moves, what a send or receive error means (an ICMP error queued for
//! an earlier datagram, a peer without a route, a full socket buffer), and reporting the peers
//! the socket's error queue names as unreachable to the engine. A runtime crate only says how
//! to make each system call, by implementing [`DatagramSocket`].
//!
//! Buffers are allocated once, when the batch is made: nothing is allocated per datagram or
//! per call. The crate never waits: the runtime wraps each call in its own readiness
//! mechanism (tokio's `try_io`, async-io's readiness futures, `poll(2)`), and a call that
//! would block returns [`io::ErrorKind::WouldBlock`] as the socket does.
//!
//! Every call goes through safe wrappers (nix for `recvmmsg`, rustix for `sendmmsg`, socket2
//! for the segmented `sendmsg`), so the crate keeps `unsafe_code = "forbid"` like the rest of
//! the workspace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;

use coap_proto::addr::{for_socket, unmapped};
use coap_proto::host::is_unreachable;
use coap_proto::{Endpoint, Instant};
use tracing::{debug, trace, warn};

/// The most datagrams one receive call takes.
pub const RECV_BATCH: usize = 32;

/// The fewest datagrams a receive call of [`DatagramIo`] asks for: its limit follows the
/// traffic (twice what the last call brought) but stays at least this.
const MIN_RECV_LIMIT: usize = 4;

/// The most datagrams one send call hands over: enough for the notifications of a change
/// to a hundred observers to leave in two calls.
pub const SEND_BATCH: usize = 64;

/// Room for one received datagram: any UDP payload (at most 65 507 bytes) fits, so nothing
/// arrives truncated whatever the peer sends.
const SLOT: usize = 65_536;

/// Distance between the starts of two receive slots. A little more than a slot, so that the
/// slots' first bytes (where small datagrams land) do not all fall into the same cache set.
/// The buffer is allocated zeroed, so the system maps its pages only as datagrams land in
/// them: a slot holding small datagrams costs one page of memory, not 64 KiB.
const STRIDE: usize = SLOT + 256;

/// The least room the send buffer has for datagrams packed back to back.
const SEND_BUFFER: usize = 64 * 1024;

/// One datagram of a [`RecvBatch`]: where it lies, where it came from, and the multicast
/// group it was sent to, if the socket reports destinations and it was.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    slot: usize,
    len: usize,
    from: SocketAddr,
    group: Option<IpAddr>,
}

/// Up to [`RECV_BATCH`] datagrams received by one call, each with its source address.
pub struct RecvBatch {
    /// `width` slots, [`STRIDE`] bytes apart.
    buf: Vec<u8>,
    width: usize,
    /// The most datagrams the next call takes (1 to `width`).
    limit: usize,
    /// The datagrams of the last call.
    received: Vec<Arrival>,
    /// An error met after some datagrams of a [`RecvBatch::recv_with`] call: returned by the
    /// next call, so that it is not lost.
    deferred: Option<io::Error>,
    /// What the system said of the socket last received from, asked again when the socket
    /// changes or another socket has joined a group since.
    #[cfg(target_os = "linux")]
    socket: Option<SocketTraits>,
}

/// What [`RecvBatch::recv`] needs to know of a socket to prepare its `recvmmsg` headers.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug)]
struct SocketTraits {
    fd: std::os::fd::RawFd,
    v6: bool,
    /// The socket reports each datagram's destination (`IP_PKTINFO` / `IPV6_RECVPKTINFO`).
    destinations: bool,
    /// [`GROUPS_JOINED`] when this was learnt.
    epoch: u64,
}

/// Counts the calls to [`report_group_destinations`] in this process. A
/// [`RecvBatch`] that knew a socket not to report destinations asks again when it moves.
#[cfg(target_os = "linux")]
static GROUPS_JOINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("width", &self.width)
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// A batch receiving at most `width` datagrams per call (1 to [`RECV_BATCH`]; other
    /// values are brought into that range).
    pub fn new(width: usize) -> RecvBatch {
        let width = width.clamp(1, RECV_BATCH);
        RecvBatch {
            buf: vec![0; width * STRIDE],
            width,
            limit: width,
            received: Vec::with_capacity(width),
            deferred: None,
            #[cfg(target_os = "linux")]
            socket: None,
        }
    }

    /// The most datagrams one call can receive (the slots the batch has).
    pub fn width(&self) -> usize {
        self.width
    }

    /// The most datagrams the next call receives: [`width`](RecvBatch::width) unless
    /// [`set_limit`](RecvBatch::set_limit) lowered it.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sets how many datagrams the next calls receive at most (1 to
    /// [`width`](RecvBatch::width); other values are brought into that range). A `recvmmsg`
    /// prepares a header for every slot it may fill, so a socket that brings one datagram
    /// per wake-up is read more cheaply with a small limit.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, self.width);
    }

    /// Receives what the socket holds, up to [`limit`](RecvBatch::limit) datagrams, with one
    /// `recvmmsg` that does not wait. Returns how many arrived (read them with
    /// [`get`](RecvBatch::get) or [`iter`](RecvBatch::iter)), or the socket's error:
    /// `WouldBlock` when nothing is there. An error met after some datagrams is reported by
    /// the next call (the system keeps it).
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        self.received.clear();
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let traits = self.traits(socket)?;
        let (buf, width, received) = (&mut self.buf, self.limit, &mut self.received);
        let destinations = traits.destinations;
        let set = usize::from(traits.v6) | usize::from(destinations) << 1;
        let mut call =
            |headers: &mut Headers| recv_into(headers, socket, buf, width, destinations, received);
        HEADERS
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut kept) => {
                    let Some(slot) = kept.get_mut(set) else {
                        return call(&mut new_headers(destinations)).map(|(n, _)| n);
                    };
                    let (n, worn) = call(slot.get_or_insert_with(|| new_headers(destinations)))?;
                    if worn {
                        // Some control data did not fit in room a shorter message left:
                        // start the next call with fresh headers.
                        *slot = None;
                    }
                    Ok(n)
                }
                Err(_) => call(&mut new_headers(destinations)).map(|(n, _)| n),
            })
            // The thread is ending and its headers are gone: use fresh ones this once.
            .unwrap_or_else(|_| call(&mut new_headers(destinations)).map(|(n, _)| n))
    }

    /// The family of `socket` and whether it reports destinations, asked of the system when
    /// the socket is not the last one or a group has been joined since.
    #[cfg(target_os = "linux")]
    fn traits(&mut self, socket: &impl AsFd) -> io::Result<SocketTraits> {
        use std::sync::atomic::Ordering;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket.as_fd());
        let epoch = GROUPS_JOINED.load(Ordering::Relaxed);
        match self.socket {
            Some(known) if known.fd == fd && (known.destinations || known.epoch == epoch) => {
                Ok(known)
            }
            _ => {
                let local = rustix::net::getsockname(socket)?;
                let v6 = local.address_family() == rustix::net::AddressFamily::INET6;
                let traits = SocketTraits {
                    fd,
                    v6,
                    destinations: reports_destinations(socket, v6),
                    epoch,
                };
                self.socket = Some(traits);
                Ok(traits)
            }
        }
    }

    /// Receives up to [`limit`](RecvBatch::limit) datagrams by calling `recv_from` (a
    /// non-blocking `recv_from` of the runtime's socket) once per datagram until it fails.
    /// Returns how many arrived; fails only if the first call fails (`WouldBlock` when
    /// nothing is there). Any error other than `WouldBlock` after some datagrams is returned
    /// by the next call.
    pub fn recv_with(
        &mut self,
        mut recv_from: impl FnMut(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
    ) -> io::Result<usize> {
        self.received.clear();
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let limit = self.limit;
        for (slot, buf) in self.buf.chunks_exact_mut(STRIDE).take(limit).enumerate() {
            let Some(buf) = buf.get_mut(..SLOT) else {
                break;
            };
            match recv_from(buf) {
                Ok((len, from)) => self.received.push(Arrival {
                    slot,
                    len: len.min(SLOT),
                    from,
                    group: None,
                }),
                Err(e) if self.received.is_empty() => return Err(e),
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.deferred = Some(e);
                    }
                    break;
                }
            }
        }
        Ok(self.received.len())
    }

    /// How many datagrams the last call received.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    /// Whether the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// Datagram `i` of the last call and its source.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let a = self.received.get(i)?;
        let start = a.slot * STRIDE;
        Some((a.from, self.buf.get(start..start + a.len)?))
    }

    /// The multicast group datagram `i` of the last call was sent to, or `None` if it came
    /// by unicast or the socket does not report destinations (only a socket that joined a
    /// group and was prepared with [`report_group_destinations`] does, and only on
    /// Linux).
    pub fn group(&self, i: usize) -> Option<IpAddr> {
        self.received.get(i)?.group
    }

    /// The datagrams of the last call, in arrival order, with their sources.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        (0..self.received.len()).filter_map(|i| self.get(i))
    }
}

/// One datagram waiting in a [`SendBatch`].
#[derive(Clone, Copy, Debug)]
struct Queued {
    start: usize,
    len: usize,
    remote: SocketAddr,
}

/// Datagrams taken from an engine and not sent yet, packed back to back in one buffer.
///
/// [`fill`](SendBatch::fill) takes up to [`SEND_BATCH`] datagrams from
/// [`Endpoint::poll_transmit`] when the batch is empty; [`send`](SendBatch::send) (Linux) or
/// [`send_with`](SendBatch::send_with) hands the unsent ones to the socket, keeping those it
/// would not take for the next call.
pub struct SendBatch {
    buf: Vec<u8>,
    queued: Vec<Queued>,
    /// The first datagram of `queued` not sent yet.
    head: usize,
    #[cfg(target_os = "linux")]
    addrs: Vec<rustix::net::SocketAddrAny>,
    /// Whether runs to one destination leave as one segmented send.
    segmentation: bool,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("unsent", &self.len())
            .field("buffer", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl SendBatch {
    /// An empty batch whose buffer holds at least one datagram of `max_datagram` bytes
    /// ([`Config::max_message_size`](coap_proto::Config::max_message_size)); it grows if
    /// the engine ever hands out a larger one.
    pub fn new(max_datagram: usize) -> SendBatch {
        SendBatch {
            buf: vec![0; max_datagram.max(SEND_BUFFER)],
            queued: Vec::with_capacity(SEND_BATCH),
            head: 0,
            #[cfg(target_os = "linux")]
            addrs: Vec::with_capacity(SEND_BATCH),
            segmentation: cfg!(target_os = "linux"),
        }
    }

    /// Takes datagrams from `ep` until [`SEND_BATCH`] are queued, the buffer is full or the
    /// engine has none left, but only when every datagram taken before has been sent (or
    /// dropped): a batch the socket would not take stays as it is. Returns how many were
    /// taken.
    pub fn fill(&mut self, ep: &mut Endpoint, now: Instant) -> usize {
        if !self.is_empty() {
            return 0;
        }
        self.queued.clear();
        self.head = 0;
        let mut used = 0;
        while self.queued.len() < SEND_BATCH {
            let Some(room) = self.buf.get_mut(used..) else {
                break;
            };
            match ep.poll_transmit(now, room) {
                Ok(Some(t)) => {
                    self.queued.push(Queued {
                        start: used,
                        len: t.len,
                        remote: t.remote,
                    });
                    used += t.len;
                }
                Ok(None) => break,
                // Larger than the whole buffer: grow it, once, for this datagram.
                Err(small) if self.queued.is_empty() => self.buf.resize(small.needed, 0),
                // It waits in the engine for the next batch.
                Err(_) => break,
            }
        }
        self.queued.len()
    }

    /// How many datagrams wait to be sent.
    pub fn len(&self) -> usize {
        self.queued.len().saturating_sub(self.head)
    }

    /// Whether every datagram taken has been sent (or dropped).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next datagram to send and its destination.
    pub fn front(&self) -> Option<(SocketAddr, &[u8])> {
        let q = self.queued.get(self.head)?;
        Some((q.remote, self.buf.get(q.start..q.start + q.len)?))
    }

    /// Drops the next datagram (after the socket refused it for good) and returns its
    /// destination.
    pub fn pop_front(&mut self) -> Option<SocketAddr> {
        let q = self.queued.get(self.head)?;
        self.head += 1;
        Some(q.remote)
    }

    /// The unsent datagrams, in order, with their destinations.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.queued
            .get(self.head..)
            .unwrap_or_default()
            .iter()
            .filter_map(|q| Some((q.remote, self.buf.get(q.start..q.start + q.len)?)))
    }

    /// Sends unsent datagrams with one system call that does not wait. Returns how many the
    /// socket took (they leave the batch); the others stay for the next call. Fails, leaving
    /// the batch as it was, when the first cannot be sent: `WouldBlock` when the socket
    /// buffer is full, or the error about that datagram (drop it with
    /// [`pop_front`](SendBatch::pop_front) if it is final).
    ///
    /// Datagrams at the head of the batch that go to one destination and can leave as one
    /// segmented send ([`set_segmentation`](SendBatch::set_segmentation)) go with one
    /// `sendmsg` carrying `UDP_SEGMENT`; otherwise every datagram up to the next such run
    /// goes with one `sendmmsg`.
    #[cfg(target_os = "linux")]
    pub fn send(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        let pending = self.queued.get(self.head..).unwrap_or_default();
        if pending.is_empty() {
            return Ok(0);
        }
        if !self.segmentation {
            return self.send_each(socket, pending.len());
        }
        let run = segment_run(pending);
        if run < 2 {
            // Singles up to where the next run starts.
            let singles = (1..pending.len())
                .find(|&i| segment_run(pending.get(i..).unwrap_or_default()) >= 2)
                .unwrap_or(pending.len());
            return self.send_each(socket, singles);
        }
        match self.send_segmented(socket, run) {
            Ok(()) => {
                self.head += run;
                Ok(run)
            }
            Err(e) if segmentation_unsupported(&e) => {
                // RFC-wise nothing is lost: the same datagrams leave one by one, now and from
                // here on.
                debug!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                self.segmentation = false;
                self.send_each(socket, pending.len())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether [`send`](SendBatch::send) may hand a run of datagrams to one destination to
    /// the kernel as one segmented send (Linux UDP generic segmentation offload, `UDP_SEGMENT`
    /// in udp(7)). On by default; the datagrams on the wire are the same either way, each
    /// its own UDP datagram, but the kernel routes and queues the run once. It turns itself
    /// off for good when the system refuses it (a kernel before 4.18, or a route whose
    /// device cannot checksum segments). Linux only: elsewhere datagrams always leave one by
    /// one.
    pub fn set_segmentation(&mut self, enabled: bool) {
        self.segmentation = enabled;
    }

    /// Whether segmented sends are in use (see [`set_segmentation`](SendBatch::set_segmentation)).
    pub fn segmentation(&self) -> bool {
        self.segmentation
    }

    /// One `sendmmsg` of the first `count` unsent datagrams, each its own message.
    #[cfg(target_os = "linux")]
    fn send_each(&mut self, socket: &impl AsFd, count: usize) -> io::Result<usize> {
        use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
        use smallvec::SmallVec;
        use std::io::IoSlice;

        let pending = self
            .queued
            .get(self.head..)
            .unwrap_or_default()
            .get(..count)
            .unwrap_or_default();
        if pending.is_empty() {
            return Ok(0);
        }
        self.addrs.clear();
        self.addrs
            .extend(pending.iter().map(|q| SocketAddrAny::from(q.remote)));
        let iovs: SmallVec<[[IoSlice<'_>; 1]; SEND_BATCH]> = pending
            .iter()
            .map(|q| {
                let bytes = self.buf.get(q.start..q.start + q.len).unwrap_or_default();
                [IoSlice::new(bytes)]
            })
            .collect();
        let mut controls: SmallVec<[SendAncillaryBuffer<'_, '_, '_>; SEND_BATCH]> = pending
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut msgs: SmallVec<[MMsgHdr<'_>; SEND_BATCH]> = self
            .addrs
            .iter()
            .zip(iovs.iter())
            .zip(controls.iter_mut())
            .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
            .collect();
        let sent = sendmmsg(socket, &mut msgs, SendFlags::DONTWAIT)?;
        self.head += sent.min(pending.len());
        Ok(sent)
    }

    /// One `sendmsg` of the first `run` unsent datagrams (see [`segment_run`]) as one buffer
    /// that the kernel cuts into datagrams of the first one's size.
    #[cfg(target_os = "linux")]
    fn send_segmented(&self, socket: &impl AsFd, run: usize) -> io::Result<()> {
        use std::io::IoSlice;

        let pending = self.queued.get(self.head..).unwrap_or_default();
        let (Some(first), Some(last)) = (pending.first(), pending.get(run.wrapping_sub(1))) else {
            return Ok(());
        };
        let bytes = self
            .buf
            .get(first.start..last.start + last.len)
            .unwrap_or_default();
        let control = SegmentSize::new(first.len);
        let to = socket2::SockAddr::from(first.remote);
        let iov = [IoSlice::new(bytes)];
        let msg = socket2::MsgHdr::new()
            .with_addr(&to)
            .with_buffers(&iov)
            .with_control(control.as_bytes());
        socket2::SockRef::from(socket).sendmsg(&msg, nix::libc::MSG_DONTWAIT)?;
        Ok(())
    }

    /// Sends the unsent datagrams one at a time with `send_to` (a non-blocking `send_to` of
    /// the runtime's socket) until it fails. Returns how many were sent; fails, leaving the
    /// batch as it was, only if the first one fails.
    pub fn send_with(
        &mut self,
        mut send_to: impl FnMut(&[u8], SocketAddr) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        while let Some((remote, bytes)) = self.front() {
            match send_to(bytes, remote) {
                Ok(_) => {
                    self.head += 1;
                    sent += 1;
                }
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
}

/// The most datagrams one segmented send carries (`UDP_MAX_SEGMENTS` of Linux 4.18 to 6.x).
#[cfg(target_os = "linux")]
const SEGMENTS_MAX: usize = 64;

/// The most bytes one segmented send carries: the datagrams of a run together must fit in
/// one IP packet's length field before the kernel cuts them.
#[cfg(target_os = "linux")]
const SEGMENTED_BYTES_MAX: usize = 64_000;

/// The largest datagram sent segmented. The kernel refuses a segment larger than the
/// route's MTU allows instead of fragmenting it, so runs keep to what fits the IPv6 minimum
/// MTU of 1280 bytes (RFC 8200 §5) less the IPv6 and UDP headers; CoAP's own size limit
/// (RFC 7252 §4.6) is below it.
#[cfg(target_os = "linux")]
const SEGMENT_MAX: usize = 1232;

/// How many datagrams at the start of `pending` can leave as one segmented send: datagrams
/// to one destination, back to back in the buffer, all of the first one's size except the
/// last, which may be shorter (udp(7), `UDP_SEGMENT`). Stops at the first that does not fit.
#[cfg(target_os = "linux")]
fn segment_run(pending: &[Queued]) -> usize {
    let Some(first) = pending.first() else {
        return 0;
    };
    let size = first.len;
    if size == 0 || size > SEGMENT_MAX {
        return 1;
    }
    let mut run = 1;
    let mut end = first.start + size;
    for q in pending.iter().skip(1).take(SEGMENTS_MAX - 1) {
        if q.remote != first.remote
            || q.start != end
            || q.len == 0
            || q.len > size
            || end + q.len - first.start > SEGMENTED_BYTES_MAX
        {
            break;
        }
        run += 1;
        end += q.len;
        if q.len < size {
            // Only the last segment may be shorter.
            break;
        }
    }
    run
}

/// Whether a segmented send failed because the system cannot segment (the datagrams can
/// still leave one by one), not because of the datagrams' destination.
#[cfg(target_os = "linux")]
fn segmentation_unsupported(e: &io::Error) -> bool {
    use nix::libc::{EINVAL, EIO, ENOPROTOOPT, EOPNOTSUPP};
    matches!(
        e.raw_os_error(),
        Some(EINVAL | EIO | ENOPROTOOPT | EOPNOTSUPP)
    )
}

/// The ancillary data of one segmented send: a control message of level `SOL_UDP` and type
/// `UDP_SEGMENT` holding the segment size as a `u16` (udp(7)), laid out as `CMSG_SPACE` and
/// `CMSG_LEN` lay it out: a header of `cmsg_len` (a `size_t`), level and type, aligned to
/// the size of a `size_t`, then the data.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
struct SegmentSize {
    bytes: [u8; 32],
}

#[cfg(target_os = "linux")]
impl SegmentSize {
    const ALIGN: usize = size_of::<usize>();
    const HEADER: usize = Self::align(size_of::<nix::libc::cmsghdr>());
    /// `CMSG_SPACE(sizeof(u16))`: the length of the control buffer.
    const SPACE: usize = Self::HEADER + Self::align(2);

    const fn align(len: usize) -> usize {
        (len + Self::ALIGN - 1) & !(Self::ALIGN - 1)
    }

    fn new(segment: usize) -> SegmentSize {
        let mut bytes = [0; 32];
        let word = Self::ALIGN;
        // `CMSG_LEN(sizeof(u16))`.
        let len = Self::HEADER + 2;
        let segment = u16::try_from(segment).unwrap_or(u16::MAX);
        let fields: [(usize, &[u8]); 4] = [
            (0, &len.to_ne_bytes()),
            (word, &nix::libc::SOL_UDP.to_ne_bytes()),
            (word + 4, &nix::libc::UDP_SEGMENT.to_ne_bytes()),
            (Self::HEADER, &segment.to_ne_bytes()),
        ];
        for (at, value) in fields {
            if let Some(dst) = bytes.get_mut(at..at + value.len()) {
                dst.copy_from_slice(value);
            }
        }
        SegmentSize { bytes }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..Self::SPACE).unwrap_or_default()
    }
}

/// The system calls of one runtime's socket, for [`DatagramIo`]. Each call must not wait:
/// when the socket is not ready it returns [`io::ErrorKind::WouldBlock`] (and, where the
/// runtime caches readiness, clears it).
pub trait DatagramSocket {
    /// One receive call into `batch`: [`RecvBatch::recv`] on Linux, or
    /// [`RecvBatch::recv_with`] with the runtime's `recv_from`. A call that receives fewer
    /// than [`RecvBatch::limit`] datagrams has emptied the socket: a runtime that caches
    /// readiness clears it then, as after `WouldBlock` ([`DatagramIo::receive`] does not call
    /// again to be told so).
    fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize>;

    /// One send call from `batch`: [`SendBatch::send`] on Linux, or
    /// [`SendBatch::send_with`] with the runtime's `send_to`.
    fn send(&self, batch: &mut SendBatch) -> io::Result<usize>;

    /// The destinations of earlier datagrams that drew an ICMP error, from the socket's
    /// error queue: [`error_queue_peers`] on Linux, none elsewhere.
    fn unreachable_peers(&self) -> Vec<SocketAddr>;
}

/// A non-blocking [`std::net::UdpSocket`] (as a blocking runtime or an async-io reactor holds
/// it) making its calls directly.
#[derive(Clone, Copy, Debug)]
pub struct StdSocket<'a>(pub &'a std::net::UdpSocket);

impl DatagramSocket for StdSocket<'_> {
    fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        let received = batch.recv(self.0);
        #[cfg(not(target_os = "linux"))]
        let received = batch.recv_with(|buf| self.0.recv_from(buf));
        received
    }

    fn send(&self, batch: &mut SendBatch) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        let sent = batch.send(self.0);
        #[cfg(not(target_os = "linux"))]
        let sent = batch.send_with(|bytes, remote| self.0.send_to(bytes, remote));
        sent
    }

    fn unreachable_peers(&self) -> Vec<SocketAddr> {
        #[cfg(target_os = "linux")]
        let peers = error_queue_peers(self.0);
        #[cfg(not(target_os = "linux"))]
        let peers = Vec::new();
        peers
    }
}

/// How a [`DatagramIo::receive`] call ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvEnd {
    /// The socket holds nothing more.
    Drained,
    /// The limit was reached; more may wait.
    Limit,
    /// The socket failed with this error (the driver decides whether to retry).
    Failed(io::Error),
}

/// What one [`DatagramIo::receive`] call did.
#[derive(Debug)]
pub struct Received {
    /// Datagrams handed to the engine.
    pub datagrams: usize,
    /// Why the call stopped.
    pub end: RecvEnd,
}

/// The datagram I/O of one driver: a [`RecvBatch`], a [`SendBatch`] and the socket's local
/// address (which gives peer addresses the form the socket uses, see
/// [`coap_proto::addr::for_socket`]).
#[derive(Debug)]
pub struct DatagramIo {
    rx: RecvBatch,
    tx: SendBatch,
    local: SocketAddr,
}

impl DatagramIo {
    /// The I/O of a socket bound to `local` for an engine whose datagrams are at most
    /// `max_datagram` bytes ([`Config::max_message_size`](coap_proto::Config::max_message_size)).
    pub fn new(local: SocketAddr, max_datagram: usize) -> DatagramIo {
        DatagramIo {
            rx: RecvBatch::new(RECV_BATCH),
            tx: SendBatch::new(max_datagram),
            local,
        }
    }

    /// Whether datagrams taken from the engine wait for the socket to take them (the driver
    /// then waits for the socket to become writable, and does not stop before they leave).
    pub fn has_unsent(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Receives up to `limit` datagrams (rounded up to whole batches) and hands each to
    /// `ep`. An ICMP error the socket reports on the way is looked up in the error queue and
    /// its peer reported unreachable to `ep`.
    ///
    /// A call that fills its batch only partly took everything the socket held, so it ends
    /// [`RecvEnd::Drained`] without asking the socket again. A runtime that caches readiness
    /// must then have cleared it in [`DatagramSocket::recv`] (as it does on `WouldBlock`).
    pub fn receive(
        &mut self,
        socket: &impl DatagramSocket,
        ep: &mut Endpoint,
        now: Instant,
        limit: usize,
    ) -> Received {
        let mut datagrams = 0;
        for _ in 0..limit {
            let asked = self.rx.limit();
            let received = socket.recv(&mut self.rx);
            if let Ok(n) = received {
                // Room for twice what this call brought: as many slots as the traffic
                // fills, whether it grows or shrinks.
                self.rx.set_limit((2 * n).max(MIN_RECV_LIMIT));
            }
            match received {
                Ok(n) => {
                    for (i, (from, datagram)) in self.rx.iter().enumerate() {
                        let Some(from) = for_socket(self.local, from) else {
                            continue;
                        };
                        if let Some(group) = self.rx.group(i) {
                            // RFC 7252 §8.2: answered after a leisure, errors suppressed.
                            trace!(peer = %from, %group, len = datagram.len(), "multicast datagram received");
                            ep.handle_multicast_datagram(now, from, datagram);
                            continue;
                        }
                        trace!(peer = %from, len = datagram.len(), "datagram received");
                        ep.handle_datagram(now, from, datagram);
                    }
                    datagrams += n;
                    if n < asked && self.rx.deferred.is_none() {
                        // A short batch: the call stopped because the socket had no more
                        // (a non-blocking receive takes all it can), so another call would
                        // only be told `WouldBlock`. The socket signals readiness again for
                        // anything that arrives after it.
                        return Received {
                            datagrams,
                            end: RecvEnd::Drained,
                        };
                    }
                    if datagrams >= limit {
                        return Received {
                            datagrams,
                            end: RecvEnd::Limit,
                        };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Received {
                        datagrams,
                        end: RecvEnd::Drained,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_unreachable(&e) => {
                    // An ICMP error for some earlier datagram; the queue says which peer.
                    self.report_unreachable(socket, ep, now);
                }
                Err(e) => {
                    return Received {
                        datagrams,
                        end: RecvEnd::Failed(e),
                    }
                }
            }
        }
        Received {
            datagrams,
            end: RecvEnd::Limit,
        }
    }

    /// Sends up to `limit` datagrams from `ep`, many per call, keeping back those the socket
    /// would not take. A datagram the socket refuses for good is dropped, as if lost on the
    /// way (retransmission covers it); when the refusal says its peer cannot be reached, the
    /// peer is reported to `ep`. Returns true if datagrams still wait (in the batch or in the
    /// engine) and the socket may take more.
    pub fn flush(
        &mut self,
        socket: &impl DatagramSocket,
        ep: &mut Endpoint,
        now: Instant,
        limit: usize,
    ) -> bool {
        // Counts datagrams sent or dropped; the loop count bounds the calls.
        let mut handled = 0;
        for _ in 0..limit {
            if handled >= limit {
                break;
            }
            if self.tx.is_empty() && self.tx.fill(ep, now) == 0 {
                return false;
            }
            match socket.send(&mut self.tx) {
                Ok(n) => {
                    trace!(datagrams = n, "datagrams sent");
                    handled += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_unreachable(&e) => {
                    // On Linux a pending ICMP error of an earlier datagram can surface here;
                    // the error queue says whom it concerns. Either way the datagram at the
                    // head is dropped.
                    handled += 1;
                    let Some(remote) = self.tx.pop_front() else {
                        continue;
                    };
                    debug!(peer = %unmapped(remote), error = %e, "send reported an unreachable peer");
                    let queued = self.report_unreachable(socket, ep, now);
                    let no_route = matches!(
                        e.kind(),
                        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable
                    );
                    if !queued && no_route {
                        // No route: the error is about this very datagram.
                        ep.handle_unreachable(now, remote);
                    }
                }
                Err(e) => {
                    handled += 1;
                    let len = self.tx.front().map_or(0, |(_, bytes)| bytes.len());
                    if let Some(remote) = self.tx.pop_front() {
                        warn!(peer = %unmapped(remote), len, error = %e, "send failed; datagram dropped");
                    }
                }
            }
        }
        self.has_unsent() || ep.table_sizes().transmit_queue > 0
    }

    /// Reports every peer the socket's error queue names to `ep` as unreachable. Returns
    /// whether there was any.
    pub fn report_unreachable(
        &self,
        socket: &impl DatagramSocket,
        ep: &mut Endpoint,
        now: Instant,
    ) -> bool {
        let peers = socket.unreachable_peers();
        for &dest in &peers {
            if let Some(dest) = for_socket(self.local, dest) {
                debug!(peer = %unmapped(dest), "ICMP error: peer unreachable");
                ep.handle_unreachable(now, dest);
            }
        }
        !peers.is_empty()
    }
}

/// Prepares a socket that joins multicast groups (call it with the join): on Linux the socket
/// then reports each datagram's destination (`IP_PKTINFO`, or `IPV6_RECVPKTINFO` on an IPv6
/// socket, which reports IPv4 destinations too), so that [`RecvBatch::group`] tells the
/// datagrams sent to a group and [`DatagramIo::receive`] hands them to
/// [`Endpoint::handle_multicast_datagram`] (RFC 7252 §8.2: answered after a random leisure,
/// never with an error or a Reset). It also stops the socket from receiving what is sent to
/// groups that only other sockets of the host joined (`IP_MULTICAST_ALL`, which Linux turns
/// on by default for sockets bound to the wildcard address): with several engines sharing a
/// port, only the one whose socket joined answers. Elsewhere it does nothing, and datagrams
/// sent to a group are handled like any other.
#[cfg(target_os = "linux")]
pub fn report_group_destinations(socket: &impl AsFd) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    use std::sync::atomic::Ordering;
    let v6 =
        rustix::net::getsockname(socket)?.address_family() == rustix::net::AddressFamily::INET6;
    let s = socket2::SockRef::from(socket);
    if v6 {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        // Kernels before 4.20 lack the IPv6 option; a dual-stack socket also takes the
        // IPv4 one.
        let _ = s.set_multicast_all_v6(false);
        let _ = s.set_multicast_all_v4(false);
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        s.set_multicast_all_v4(false)?;
    }
    GROUPS_JOINED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Prepares a socket that joins multicast groups; see the Linux version. Elsewhere the
/// socket cannot report destinations and this does nothing.
#[cfg(not(target_os = "linux"))]
pub fn report_group_destinations<S>(_socket: &S) -> io::Result<()> {
    Ok(())
}

/// Joins the IPv4 multicast `group` on the interface with address `interface` (`0.0.0.0`:
/// the system chooses) and prepares the socket with [`report_group_destinations`], so that
/// requests sent to the group are handled as multicast requests.
pub fn join_multicast_v4(
    socket: socket2::SockRef<'_>,
    group: Ipv4Addr,
    interface: Ipv4Addr,
) -> io::Result<()> {
    socket.join_multicast_v4(&group, &interface)?;
    report_group_destinations(&*socket)
}

/// Joins the IPv6 multicast `group` on the interface with index `interface` (0: the system
/// chooses) and prepares the socket with [`report_group_destinations`].
pub fn join_multicast_v6(
    socket: socket2::SockRef<'_>,
    group: Ipv6Addr,
    interface: u32,
) -> io::Result<()> {
    socket.join_multicast_v6(&group, interface)?;
    report_group_destinations(&*socket)
}

/// Writes `join_multicast_v4`, `join_multicast_v6`, `leave_multicast_v4` and
/// `leave_multicast_v6` for a runtime crate's type (a client or a single-engine server)
/// whose socket `$socket` names as a [`socket2::SockRef`], with `$this` standing for
/// `self`. The invoking module must have the crate's `Error` (from [`io::Error`]) in scope.
#[macro_export]
macro_rules! group_methods {
    ($ty:ty, |$this:ident| $socket:expr) => {
        impl $ty {
            /// Joins the IPv4 multicast `group` (such as `ALL_COAP_NODES_V4`) on the
            /// interface with address `interface` (`0.0.0.0`: the system chooses). Bind to
            /// the wildcard address (`0.0.0.0` or `[::]`) to receive what is sent to the
            /// group. On Linux the requests sent to the group are then answered as RFC 7252
            /// §8.2 asks: after a random leisure (`Config::default_leisure`), never with an
            /// error or a Reset, and from the unicast address; elsewhere they are answered
            /// like unicast requests.
            pub fn join_multicast_v4(
                &self,
                group: ::std::net::Ipv4Addr,
                interface: ::std::net::Ipv4Addr,
            ) -> Result<(), Error> {
                let $this = self;
                Ok($crate::join_multicast_v4($socket, group, interface)?)
            }

            /// Joins the IPv6 multicast `group` (such as `ALL_COAP_NODES_V6_LINK_LOCAL`) on
            /// the interface with index `interface` (0: the system chooses); see
            /// `join_multicast_v4`.
            pub fn join_multicast_v6(
                &self,
                group: ::std::net::Ipv6Addr,
                interface: u32,
            ) -> Result<(), Error> {
                let $this = self;
                Ok($crate::join_multicast_v6($socket, group, interface)?)
            }

            /// Leaves an IPv4 multicast group.
            pub fn leave_multicast_v4(
                &self,
                group: ::std::net::Ipv4Addr,
                interface: ::std::net::Ipv4Addr,
            ) -> Result<(), Error> {
                let $this = self;
                Ok($socket.leave_multicast_v4(&group, &interface)?)
            }

            /// Leaves an IPv6 multicast group.
            pub fn leave_multicast_v6(
                &self,
                group: ::std::net::Ipv6Addr,
                interface: u32,
            ) -> Result<(), Error> {
                let $this = self;
                Ok($socket.leave_multicast_v6(&group, interface)?)
            }
        }
    };
}

/// Reads up to [`RECV_BATCH`] entries of the socket's error queue (Linux, `MSG_ERRQUEUE` on a
/// socket with `IP_RECVERR` / `IPV6_RECVERR`, see ip(7)) and returns the original destinations
/// of the datagrams that drew an ICMP error, except "packet too big", which reports a path
/// MTU and not an unreachable peer.
#[cfg(target_os = "linux")]
pub fn error_queue_peers(socket: &impl AsFd) -> Vec<SocketAddr> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let fd = socket.as_fd().as_raw_fd();
    let mut peers = Vec::new();
    for _ in 0..RECV_BATCH {
        let mut data = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut space = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(msg) = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), flags) else {
            break;
        };
        let too_big = msg.cmsgs().into_iter().flatten().any(|c| {
            matches!(c, ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _)
                if e.ee_errno == nix::libc::EMSGSIZE as u32)
        });
        if too_big {
            continue;
        }
        // ip(7): the message's address is the original destination.
        peers.extend(msg.address.as_ref().and_then(storage_to_socket_addr));
    }
    peers
}

/// The message headers `recvmmsg` fills in. They hold raw pointers, so they cannot live in a
/// [`RecvBatch`] that moves between threads; each thread keeps its own instead, one set per
/// address family and per kind of socket (reporting destinations or not). A set keeps each
/// message's address and control lengths from its last call (nix does not reset them, and
/// the kernel copies no more than that). Every peer of a socket has the socket's address
/// family (IPv4 peers of a dual-stack socket arrive IPv4-mapped), and a socket reporting
/// destinations adds the same control message to every datagram (an IPv6 socket reports
/// IPv4 destinations IPv4-mapped, in the same form), so sockets of one set never leave it
/// too short for the next; a message that still finds its control data cut short
/// (`MSG_CTRUNC`) has the set replaced.
#[cfg(target_os = "linux")]
type Headers = nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>;

#[cfg(target_os = "linux")]
thread_local! {
    /// Indexed by `v6 | destinations << 1`.
    static HEADERS: std::cell::RefCell<[Option<Headers>; 4]> =
        const { std::cell::RefCell::new([None, None, None, None]) };
}

#[cfg(target_os = "linux")]
fn new_headers(destinations: bool) -> Headers {
    // Room for the larger of the two destination reports.
    let control = destinations.then(|| nix::cmsg_space!(nix::libc::in6_pktinfo));
    nix::sys::socket::MultiHeaders::preallocate(RECV_BATCH, control)
}

/// Whether `socket` reports each datagram's destination address.
#[cfg(target_os = "linux")]
fn reports_destinations(socket: &impl AsFd, v6: bool) -> bool {
    use nix::sys::socket::{getsockopt, sockopt};
    if v6 {
        getsockopt(socket, sockopt::Ipv6RecvPacketInfo).unwrap_or(false)
    } else {
        getsockopt(socket, sockopt::Ipv4PacketInfo).unwrap_or(false)
    }
}

/// The multicast destination a control message reports, if it reports one.
#[cfg(target_os = "linux")]
fn multicast_destination(c: &nix::sys::socket::ControlMessageOwned) -> Option<IpAddr> {
    use nix::sys::socket::ControlMessageOwned;
    let to = match c {
        // ip(7): `ipi_addr` is the destination address in the packet header.
        ControlMessageOwned::Ipv4PacketInfo(info) => {
            IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
        }
        ControlMessageOwned::Ipv6PacketInfo(info) => {
            let v6 = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    to.is_multicast().then_some(to)
}

/// One `recvmmsg` of up to `width` datagrams into the slots of `buf`. Returns how many
/// arrived and whether a message found its control data cut short.
#[cfg(target_os = "linux")]
fn recv_into(
    headers: &mut Headers,
    socket: &impl AsFd,
    buf: &mut [u8],
    width: usize,
    destinations: bool,
    received: &mut Vec<Arrival>,
) -> io::Result<(usize, bool)> {
    use nix::sys::socket::{recvmmsg, MsgFlags};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let mut slots = buf.chunks_exact_mut(STRIDE).take(width);
    let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] = core::array::from_fn(|_| {
        let slot = slots
            .next()
            .and_then(|s| s.get_mut(..SLOT))
            .unwrap_or_default();
        [IoSliceMut::new(slot)]
    });
    let results = recvmmsg(
        socket.as_fd().as_raw_fd(),
        headers,
        iovs.iter_mut().take(width),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    let mut worn = false;
    for (slot, msg) in results.enumerate() {
        let group = if destinations {
            worn |= msg.flags.contains(MsgFlags::MSG_CTRUNC);
            msg.cmsgs()
                .into_iter()
                .flatten()
                .find_map(|c| multicast_destination(&c))
        } else {
            None
        };
        if let Some(from) = msg.address.as_ref().and_then(storage_to_socket_addr) {
            received.push(Arrival {
                slot,
                len: msg.bytes.min(SLOT),
                from,
                group,
            });
        }
    }
    Ok((received.len(), worn))
}

#[cfg(target_os = "linux")]
fn storage_to_socket_addr(s: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_proto::msg::{Code, Message, MessageType};
    use coap_proto::{Config, Request};
    use std::net::UdpSocket;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (a, b)
    }

    /// An endpoint with `n` NON requests to `to` queued, each carrying its index as payload.
    fn endpoint_with(n: usize, to: SocketAddr, payload: usize) -> Endpoint {
        let mut config = Config::default();
        config.nstart = n.max(1);
        let mut ep = Endpoint::new(config, 7).unwrap();
        for i in 0..n {
            let mut req = Request::new(Code::POST);
            req.message_type = Some(MessageType::Non);
            let mut body = vec![b'.'; payload];
            body.extend_from_slice(i.to_string().as_bytes());
            req.payload = body.into();
            ep.request(Instant::from_micros(0), to, req).unwrap();
        }
        ep
    }

    fn payload_of(datagram: &[u8]) -> String {
        let m = Message::parse(datagram).unwrap();
        String::from_utf8(m.payload.to_vec()).unwrap()
    }

    /// Sends what the batch holds with the portable path or, on Linux, with sendmmsg.
    fn send(batch: &mut SendBatch, socket: &UdpSocket, portable: bool) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if !portable {
            return batch.send(socket);
        }
        let _ = portable;
        batch.send_with(|bytes, to| socket.send_to(bytes, to))
    }

    fn recv(batch: &mut RecvBatch, socket: &UdpSocket, portable: bool) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if !portable {
            return batch.recv(socket);
        }
        let _ = portable;
        batch.recv_with(|buf| socket.recv_from(buf))
    }

    fn round_trip(portable: bool) {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let mut ep = endpoint_with(70, to, 0);
        let mut out = SendBatch::new(1152);
        // The engine queued 70: the first batch takes SEND_BATCH of them.
        assert_eq!(out.fill(&mut ep, Instant::from_micros(0)), SEND_BATCH);
        assert_eq!(out.len(), SEND_BATCH);
        assert!(out.iter().all(|(remote, _)| remote == to));
        // Not refilled while datagrams wait.
        assert_eq!(out.fill(&mut ep, Instant::from_micros(0)), 0);
        // The portable path sends all; the batched one sends the run of one-digit payloads
        // (one segment size) with one call, then the two-digit ones with another.
        let first = send(&mut out, &tx, portable).unwrap();
        assert_eq!(first, if portable { SEND_BATCH } else { 10 });
        while !out.is_empty() {
            assert!(send(&mut out, &tx, portable).unwrap() > 0);
        }
        while out.fill(&mut ep, Instant::from_micros(0)) > 0 {
            send(&mut out, &tx, portable).unwrap();
        }
        assert!(out.is_empty());

        rx.set_nonblocking(true).unwrap();
        let mut batch = RecvBatch::new(RECV_BATCH);
        let mut got = Vec::new();
        for _ in 0..1000 {
            match recv(&mut batch, &rx, portable) {
                Ok(n) => {
                    assert!((1..=RECV_BATCH).contains(&n));
                    assert_eq!(batch.len(), n);
                    for (from, d) in batch.iter() {
                        assert_eq!(from, tx.local_addr().unwrap());
                        got.push(payload_of(d));
                    }
                    assert!(batch.get(n).is_none());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == 70 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let want: Vec<String> = (0..70).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        assert!(batch.is_empty());
    }

    #[test]
    fn datagrams_go_out_and_come_back_in_order_portable() {
        round_trip(true);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_go_out_and_come_back_in_order_batched() {
        round_trip(false);
    }

    #[test]
    fn a_full_buffer_ends_the_batch() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        // Bodies just under the block size: each request is one datagram of about 1 KiB,
        // and 64 KiB of buffer hold fewer than SEND_BATCH of them.
        let mut ep = endpoint_with(70, to, 1020);
        let mut out = SendBatch::new(1152);
        let first = out.fill(&mut ep, Instant::from_micros(0));
        assert!(first < SEND_BATCH, "{first}");
        let bytes: usize = out.iter().map(|(_, d)| d.len()).sum();
        assert!(
            bytes <= SEND_BUFFER && bytes + 1030 > SEND_BUFFER,
            "{bytes}"
        );
        let mut buf = vec![0; 2048];
        let mut got = Vec::new();
        let mut read = |count: usize, got: &mut Vec<String>| {
            for _ in 0..count {
                let (n, _) = rx.recv_from(&mut buf).unwrap();
                got.push(payload_of(&buf[..n]));
            }
        };
        // 1024-byte datagrams with bodies of 1021 and 1022 bytes: runs of one segment size.
        let mut sent = 0;
        while !out.is_empty() {
            sent += send(&mut out, &tx, false).unwrap();
        }
        assert_eq!(sent, first);
        read(first, &mut got);
        // The rest waited in the engine.
        assert_eq!(out.fill(&mut ep, Instant::from_micros(0)), 70 - first);
        while !out.is_empty() {
            sent += send(&mut out, &tx, false).unwrap();
        }
        assert_eq!(sent, 70);
        read(70 - first, &mut got);
        let want: Vec<String> = (0..70)
            .map(|i| format!("{}{i}", ".".repeat(1020)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn large_datagrams_arrive_whole() {
        for portable in [true, false] {
            let (tx, rx) = pair();
            let to = rx.local_addr().unwrap();
            tx.send_to(&vec![7; 60_000], to).unwrap();
            tx.send_to(&[1, 2, 3], to).unwrap();
            tx.send_to(&vec![9; 30_000], to).unwrap();
            rx.set_nonblocking(true).unwrap();
            let mut batch = RecvBatch::new(4);
            let mut lens = Vec::new();
            for _ in 0..1000 {
                if let Ok(n) = recv(&mut batch, &rx, portable) {
                    assert!(n <= 4);
                    lens.extend(batch.iter().map(|(_, d)| (d.len(), d[0])));
                }
                if lens.len() == 3 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                lens,
                [(60_000, 7), (3, 1), (30_000, 9)],
                "portable {portable}"
            );
        }
    }

    /// A dual-stack socket on `[::]` and an IPv6 peer on `[::1]`, where IPv6 is available.
    #[cfg(target_os = "linux")]
    fn dual_stack() -> Option<(UdpSocket, UdpSocket)> {
        Some((
            UdpSocket::bind("[::]:0").ok()?,
            UdpSocket::bind("[::1]:0").ok()?,
        ))
    }

    /// How a dual-stack socket names the peer at `a`: IPv4 as ::ffff:a.b.c.d.
    #[cfg(target_os = "linux")]
    fn mapped(a: SocketAddr) -> SocketAddr {
        match a {
            SocketAddr::V4(a) => SocketAddr::from((a.ip().to_ipv6_mapped(), a.port())),
            other => other,
        }
    }

    /// Sockets of both families take turns on one thread: each receive reports whole
    /// source addresses (the kept message headers never leave too little room).
    #[cfg(target_os = "linux")]
    #[test]
    fn ipv4_and_ipv6_sockets_share_a_thread() {
        // A dual-stack socket hears IPv4 peers as ::ffff:a.b.c.d and IPv6 peers as they are.
        let Some((dual, v6_peer)) = dual_stack() else {
            return; // no IPv6 here
        };
        let (v4_peer, v4) = pair();
        dual.set_nonblocking(true).unwrap();
        v4.set_nonblocking(true).unwrap();
        let dual_port = dual.local_addr().unwrap().port();
        let mut batch = RecvBatch::new(4);
        let mut recv_one = |socket: &UdpSocket| {
            for _ in 0..1000 {
                if batch.recv(socket).is_ok() {
                    return batch.get(0).map(|(from, _)| from);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        };
        for _ in 0..3 {
            v4_peer.send_to(&[1], ("127.0.0.1", dual_port)).unwrap();
            assert_eq!(recv_one(&dual), Some(mapped(v4_peer.local_addr().unwrap())));
            v4_peer.send_to(&[2], v4.local_addr().unwrap()).unwrap();
            assert_eq!(recv_one(&v4), Some(v4_peer.local_addr().unwrap()));
            v6_peer.send_to(&[3], ("::1", dual_port)).unwrap();
            assert_eq!(recv_one(&dual), Some(v6_peer.local_addr().unwrap()));
        }
    }

    /// A socket whose calls give scripted results, for the policy of [`DatagramIo`].
    struct Scripted {
        recv: std::cell::RefCell<Vec<io::ErrorKind>>,
        send: std::cell::RefCell<Vec<io::ErrorKind>>,
        queued: Vec<SocketAddr>,
    }

    impl DatagramSocket for Scripted {
        fn recv(&self, _batch: &mut RecvBatch) -> io::Result<usize> {
            let kind = self.recv.borrow_mut().pop();
            Err(kind.unwrap_or(io::ErrorKind::WouldBlock).into())
        }

        fn send(&self, batch: &mut SendBatch) -> io::Result<usize> {
            match self.send.borrow_mut().pop() {
                Some(kind) => Err(kind.into()),
                None => batch.send_with(|bytes, _| Ok(bytes.len())),
            }
        }

        fn unreachable_peers(&self) -> Vec<SocketAddr> {
            self.queued.clone()
        }
    }

    fn failures(ep: &mut Endpoint) -> Vec<coap_proto::endpoint::Failure> {
        let mut out = Vec::new();
        while let Some(event) = ep.poll_event() {
            if let coap_proto::endpoint::Event::RequestFailed { reason, .. } = event {
                out.push(reason);
            }
        }
        out
    }

    #[test]
    fn a_send_without_route_fails_the_requests_to_that_peer() {
        use coap_proto::endpoint::Failure;
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let now = Instant::from_micros(0);
        let mut ep = endpoint_with(2, peer, 0);
        let mut io = DatagramIo::new("127.0.0.1:5683".parse().unwrap(), 1152);
        let socket = Scripted {
            recv: Default::default(),
            send: vec![io::ErrorKind::HostUnreachable].into(),
            queued: Vec::new(),
        };
        // The first datagram is refused and dropped, the second goes out.
        assert!(!io.flush(&socket, &mut ep, now, 64));
        assert!(!io.has_unsent());
        assert_eq!(ep.stats().datagrams_sent, 2);
        assert_eq!(
            failures(&mut ep),
            [Failure::Unreachable, Failure::Unreachable]
        );

        // A full socket buffer keeps the batch for later.
        let mut ep = endpoint_with(2, peer, 0);
        let socket = Scripted {
            recv: Default::default(),
            send: vec![io::ErrorKind::WouldBlock].into(),
            queued: Vec::new(),
        };
        assert!(!io.flush(&socket, &mut ep, now, 64));
        assert!(io.has_unsent());
        assert!(failures(&mut ep).is_empty());
        assert!(!io.flush(&socket, &mut ep, now, 64));
        assert!(!io.has_unsent());
    }

    #[test]
    fn icmp_errors_in_the_queue_reach_the_engine() {
        use coap_proto::endpoint::Failure;
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let now = Instant::from_micros(0);
        let mut ep = endpoint_with(1, peer, 0);
        let mut io = DatagramIo::new("127.0.0.1:5683".parse().unwrap(), 1152);
        let socket = Scripted {
            recv: vec![io::ErrorKind::ConnectionRefused].into(),
            send: Default::default(),
            queued: vec![peer],
        };
        assert!(!io.flush(&socket, &mut ep, now, 64));
        let received = io.receive(&socket, &mut ep, now, 64);
        assert!(matches!(received.end, RecvEnd::Drained), "{received:?}");
        assert_eq!(received.datagrams, 0);
        assert_eq!(failures(&mut ep), [Failure::Unreachable]);
    }

    /// A socket that counts its receive calls.
    struct Counting<'a>(StdSocket<'a>, std::cell::Cell<usize>);

    impl DatagramSocket for Counting<'_> {
        fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
            self.1.set(self.1.get() + 1);
            self.0.recv(batch)
        }

        fn send(&self, batch: &mut SendBatch) -> io::Result<usize> {
            self.0.send(batch)
        }

        fn unreachable_peers(&self) -> Vec<SocketAddr> {
            self.0.unreachable_peers()
        }
    }

    #[test]
    fn a_short_batch_ends_the_receive_without_another_call() {
        let (tx, rx) = pair();
        rx.set_nonblocking(true).unwrap();
        let mut ep = Endpoint::new(Config::default(), 3).unwrap();
        let now = Instant::from_micros(0);
        // Loopback queues each datagram before `send_to` returns.
        for (sent, calls) in [(3, 1), (RECV_BATCH, 2), (RECV_BATCH + 1, 2)] {
            let mut io = DatagramIo::new(rx.local_addr().unwrap(), 1152);
            for i in 0..sent {
                tx.send_to(&[0x50, 0, 1, i as u8], rx.local_addr().unwrap())
                    .unwrap();
            }
            let socket = Counting(StdSocket(&rx), std::cell::Cell::new(0));
            let received = io.receive(&socket, &mut ep, now, 64);
            assert!(matches!(received.end, RecvEnd::Drained), "{received:?}");
            assert_eq!(received.datagrams, sent);
            // A full batch may have left more: the socket is asked again, and only a short
            // batch (or `WouldBlock`) ends the call.
            assert_eq!(socket.1.get(), calls, "{sent} datagrams");
        }
    }

    #[test]
    fn receive_calls_ask_for_twice_what_the_last_one_brought() {
        let (tx, rx) = pair();
        rx.set_nonblocking(true).unwrap();
        let mut ep = Endpoint::new(Config::default(), 3).unwrap();
        let mut io = DatagramIo::new(rx.local_addr().unwrap(), 1152);
        let now = Instant::from_micros(0);
        let to = rx.local_addr().unwrap();
        assert_eq!(io.rx.limit(), RECV_BATCH);
        // One datagram per wake-up: the next call prepares the fewest slots.
        tx.send_to(&[0x50, 0, 2, 0], to).unwrap();
        assert_eq!(io.receive(&StdSocket(&rx), &mut ep, now, 64).datagrams, 1);
        assert_eq!(io.rx.limit(), MIN_RECV_LIMIT);
        // A burst: each full call doubles the next, up to the batch's width, and nothing is
        // left behind.
        for i in 0..20u8 {
            tx.send_to(&[0x50, 0, 3, i], to).unwrap();
        }
        let socket = Counting(StdSocket(&rx), std::cell::Cell::new(0));
        let received = io.receive(&socket, &mut ep, now, 64);
        assert_eq!(received.datagrams, 20);
        assert!(matches!(received.end, RecvEnd::Drained), "{received:?}");
        // 4 + 8 + 8 of 16.
        assert_eq!(socket.1.get(), 3);
        assert_eq!(io.rx.limit(), 16);
        assert!(matches!(
            io.receive(&StdSocket(&rx), &mut ep, now, 64).end,
            RecvEnd::Drained
        ));
        assert_eq!(ep.stats().datagrams_received, 21);
    }

    #[test]
    fn one_receive_stops_at_its_limit() {
        let (tx, rx) = pair();
        rx.set_nonblocking(true).unwrap();
        for i in 0..100u8 {
            tx.send_to(&[0x50, 0, 0, i], rx.local_addr().unwrap())
                .unwrap();
        }
        let mut ep = Endpoint::new(Config::default(), 3).unwrap();
        let mut io = DatagramIo::new(rx.local_addr().unwrap(), 1152);
        let now = Instant::from_micros(0);
        let mut total = 0;
        for _ in 0..1000 {
            let received = io.receive(&StdSocket(&rx), &mut ep, now, 40);
            assert!(received.datagrams <= 40 + RECV_BATCH);
            total += received.datagrams;
            match received.end {
                RecvEnd::Limit => assert!(received.datagrams >= 40),
                RecvEnd::Drained if total == 100 => break,
                RecvEnd::Drained => std::thread::sleep(Duration::from_millis(1)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 100);
        assert_eq!(ep.stats().datagrams_received, 100);
    }

    #[test]
    fn portable_receive_keeps_an_error_for_the_next_call() {
        let mut batch = RecvBatch::new(8);
        let mut calls = 0;
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let n = batch
            .recv_with(|buf| {
                calls += 1;
                match calls {
                    1 | 2 => {
                        buf[0] = calls;
                        Ok((1, from))
                    }
                    _ => Err(io::ErrorKind::ConnectionRefused.into()),
                }
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(batch.get(1), Some((from, &[2u8][..])));
        let e = batch.recv_with(|_| panic!("not called")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(batch.is_empty());
        let e = batch
            .recv_with(|_| Err(io::ErrorKind::WouldBlock.into()))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_refused_datagram_stays_until_dropped() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut ep = endpoint_with(3, to, 0);
        let mut out = SendBatch::new(1152);
        assert_eq!(out.fill(&mut ep, Instant::from_micros(0)), 3);
        let mut tries = 0;
        let e = out
            .send_with(|_, _| {
                tries += 1;
                Err(io::ErrorKind::WouldBlock.into())
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!((tries, out.len()), (1, 3));
        // The second one fails: the first counts as sent, the rest wait.
        let mut n = 0;
        let sent = out
            .send_with(|_, _| {
                n += 1;
                if n == 2 {
                    Err(io::ErrorKind::HostUnreachable.into())
                } else {
                    Ok(4)
                }
            })
            .unwrap();
        assert_eq!((sent, out.len()), (1, 2));
        assert_eq!(out.pop_front(), Some(to));
        assert_eq!(out.send_with(|b, _| Ok(b.len())).unwrap(), 1);
        assert!(out.is_empty());
        assert_eq!(out.pop_front(), None);
        assert!(out.front().is_none());
    }

    /// An endpoint with NON POSTs queued in the order given: one per destination, each
    /// carrying `body` and its index.
    #[cfg(target_os = "linux")]
    fn endpoint_to(destinations: &[SocketAddr], body: usize) -> Endpoint {
        let mut config = Config::default();
        config.nstart = destinations.len();
        let mut ep = Endpoint::new(config, 7).unwrap();
        for (i, &to) in destinations.iter().enumerate() {
            let mut req = Request::new(Code::POST);
            req.message_type = Some(MessageType::Non);
            req.payload = format!("{}{i:02}", ".".repeat(body)).into_bytes().into();
            ep.request(Instant::from_micros(0), to, req).unwrap();
        }
        ep
    }

    /// Receives `count` datagrams from a blocking `socket`.
    #[cfg(target_os = "linux")]
    fn read_datagrams(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buf = vec![0; 65_536];
        (0..count)
            .map(|_| {
                let (n, _) = socket.recv_from(&mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn runs_to_one_peer_leave_segmented_and_arrive_as_separate_datagrams() {
        let (tx, a) = pair();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // Five to a, three to b, two to a, one to b: four runs.
        let order = [
            to_a, to_a, to_a, to_a, to_a, to_b, to_b, to_b, to_a, to_a, to_b,
        ];
        let mut ep = endpoint_to(&order, 40);
        let mut out = SendBatch::new(1152);
        assert_eq!(out.fill(&mut ep, Instant::from_micros(0)), order.len());
        let queued: Vec<(SocketAddr, Vec<u8>)> =
            out.iter().map(|(to, d)| (to, d.to_vec())).collect();
        let mut calls = Vec::new();
        while !out.is_empty() {
            calls.push(out.send(&tx).unwrap());
        }
        // The last one to b is a run of one: it leaves with sendmmsg.
        assert_eq!(calls, [5, 3, 2, 1]);
        assert!(out.segmentation(), "the kernel refused UDP_SEGMENT");
        let want = |to: SocketAddr| -> Vec<Vec<u8>> {
            queued
                .iter()
                .filter(|(dest, _)| *dest == to)
                .map(|(_, d)| d.clone())
                .collect()
        };
        // Each datagram arrives on its own, whole and in order.
        assert_eq!(read_datagrams(&a, 7), want(to_a));
        assert_eq!(read_datagrams(&b, 4), want(to_b));
    }

    /// A dual-stack socket segments runs to IPv6 peers and to IPv4 peers it names
    /// IPv4-mapped alike.
    #[cfg(target_os = "linux")]
    #[test]
    fn segmented_sends_from_a_dual_stack_socket_reach_both_families() {
        let Some((dual, v6_peer)) = dual_stack() else {
            return; // no IPv6 here
        };
        let (_, v4_peer) = pair();
        v6_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let v4_mapped = mapped(v4_peer.local_addr().unwrap());
        let to_v6 = v6_peer.local_addr().unwrap();
        let order = [v4_mapped, v4_mapped, v4_mapped, to_v6, to_v6];
        let mut ep = endpoint_to(&order, 20);
        let mut out = SendBatch::new(1152);
        out.fill(&mut ep, Instant::from_micros(0));
        let queued: Vec<Vec<u8>> = out.iter().map(|(_, d)| d.to_vec()).collect();
        let mut calls = Vec::new();
        while !out.is_empty() {
            calls.push(out.send(&dual).unwrap());
        }
        assert_eq!(calls, [3, 2]);
        assert!(out.segmentation());
        assert_eq!(read_datagrams(&v4_peer, 3), queued[..3]);
        assert_eq!(read_datagrams(&v6_peer, 2), queued[3..]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_shorter_datagram_ends_a_run_and_a_longer_one_starts_the_next() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let mut config = Config::default();
        config.nstart = 8;
        let mut ep = Endpoint::new(config, 7).unwrap();
        // Bodies of 10, 10, 4, 10, 30, 30 bytes.
        for body in [10, 10, 4, 10, 30, 30] {
            let mut req = Request::new(Code::POST);
            req.message_type = Some(MessageType::Non);
            req.payload = vec![b'x'; body].into();
            ep.request(Instant::from_micros(0), to, req).unwrap();
        }
        let mut out = SendBatch::new(1152);
        out.fill(&mut ep, Instant::from_micros(0));
        let queued: Vec<Vec<u8>> = out.iter().map(|(_, d)| d.to_vec()).collect();
        let mut calls = Vec::new();
        while !out.is_empty() {
            calls.push(out.send(&tx).unwrap());
        }
        assert_eq!(calls, [3, 1, 2]);
        assert_eq!(read_datagrams(&rx, 6), queued);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn without_segmentation_one_call_sends_the_whole_batch() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let mut ep = endpoint_to(&[to; 20], 8);
        let mut out = SendBatch::new(1152);
        out.set_segmentation(false);
        out.fill(&mut ep, Instant::from_micros(0));
        let queued: Vec<Vec<u8>> = out.iter().map(|(_, d)| d.to_vec()).collect();
        assert_eq!(out.send(&tx).unwrap(), 20);
        assert_eq!(read_datagrams(&rx, 20), queued);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn runs_keep_to_the_kernel_limits() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let queue = |lens: &[usize], remotes: &[SocketAddr]| -> Vec<Queued> {
            let mut start = 0;
            lens.iter()
                .zip(remotes.iter().cycle())
                .map(|(&len, &remote)| {
                    let q = Queued { start, len, remote };
                    start += len;
                    q
                })
                .collect()
        };
        assert_eq!(segment_run(&[]), 0);
        assert_eq!(segment_run(&queue(&[20; 100], &[to])), SEGMENTS_MAX);
        assert_eq!(segment_run(&queue(&[20, 20, 20], &[to, to, other])), 2);
        assert_eq!(segment_run(&queue(&[20, 21], &[to])), 1);
        assert_eq!(segment_run(&queue(&[20, 19, 19], &[to])), 2);
        // Too large to send segmented at all, and too many bytes for one run.
        assert_eq!(segment_run(&queue(&[SEGMENT_MAX + 1; 4], &[to])), 1);
        let per_run = SEGMENTED_BYTES_MAX / SEGMENT_MAX;
        assert_eq!(segment_run(&queue(&[SEGMENT_MAX; 64], &[to])), per_run);
        // Not back to back in the buffer.
        let mut gap = queue(&[20; 3], &[to]);
        gap[2].start += 1;
        assert_eq!(segment_run(&gap), 2);
        // The control message's layout as CMSG_LEN and CMSG_SPACE give it on this target.
        let word = size_of::<usize>();
        let c = SegmentSize::new(1000);
        assert_eq!(c.as_bytes().len(), if word == 8 { 24 } else { 16 });
        assert_eq!(
            c.as_bytes()[..word],
            (SegmentSize::HEADER + 2).to_ne_bytes()[..]
        );
        assert_eq!(
            c.as_bytes()[SegmentSize::HEADER..SegmentSize::HEADER + 2],
            1000u16.to_ne_bytes()
        );
    }

    /// The All CoAP Nodes group (RFC 7252 §12.8), joined on the loopback interface only, so
    /// nothing leaves the host.
    #[cfg(target_os = "linux")]
    const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);

    /// A sender whose multicast datagrams leave through the loopback interface.
    #[cfg(target_os = "linux")]
    fn loopback_sender() -> UdpSocket {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&tx)
            .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
            .unwrap();
        tx
    }

    /// Receives until `n` datagrams came or 5 s passed; returns each one's first byte and
    /// group.
    #[cfg(target_os = "linux")]
    fn collect(batch: &mut RecvBatch, rx: &UdpSocket, n: usize) -> Vec<(u8, Option<IpAddr>)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < n && std::time::Instant::now() < deadline {
            match batch.recv(rx) {
                Ok(k) => got.extend((0..k).map(|i| {
                    let (_, d) = batch.get(i).unwrap();
                    (d[0], batch.group(i))
                })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_sent_to_a_joined_group_are_told_apart() {
        for bind in ["0.0.0.0:0", "[::]:0"] {
            let rx = UdpSocket::bind(bind).unwrap();
            rx.set_nonblocking(true).unwrap();
            let port = rx.local_addr().unwrap().port();
            let tx = loopback_sender();
            let mut batch = RecvBatch::new(RECV_BATCH);
            // Before the join the batch learns that the socket reports nothing.
            tx.send_to(&[1], ("127.0.0.1", port)).unwrap();
            assert_eq!(collect(&mut batch, &rx, 1), [(1, None)], "{bind}");
            socket2::SockRef::from(&rx)
                .join_multicast_v4(&GROUP, &Ipv4Addr::LOCALHOST)
                .unwrap();
            report_group_destinations(&rx).unwrap();
            tx.send_to(&[2], (GROUP, port)).unwrap();
            tx.send_to(&[3], ("127.0.0.1", port)).unwrap();
            tx.send_to(&[4], (GROUP, port)).unwrap();
            let group = Some(IpAddr::V4(GROUP));
            assert_eq!(
                collect(&mut batch, &rx, 3),
                [(2, group), (3, None), (4, group)],
                "{bind}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_that_did_not_join_does_not_get_the_groups_datagrams() {
        // Two engines' sockets on one port: only the one that joined hears the group.
        let open = |addr: SocketAddr| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.set_nonblocking(true).unwrap();
            s.bind(&addr.into()).unwrap();
            UdpSocket::from(s)
        };
        let joined = open("0.0.0.0:0".parse().unwrap());
        let port = joined.local_addr().unwrap().port();
        let other = open(SocketAddr::from(([0, 0, 0, 0], port)));
        socket2::SockRef::from(&joined)
            .join_multicast_v4(&GROUP, &Ipv4Addr::LOCALHOST)
            .unwrap();
        report_group_destinations(&joined).unwrap();
        report_group_destinations(&other).unwrap();
        let tx = loopback_sender();
        for i in 0..8 {
            tx.send_to(&[i], (GROUP, port)).unwrap();
        }
        let mut batch = RecvBatch::new(RECV_BATCH);
        assert_eq!(collect(&mut batch, &joined, 8).len(), 8);
        assert!(matches!(batch.recv(&other), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn group_datagrams_reach_the_engine_as_multicast() {
        let rx = UdpSocket::bind("0.0.0.0:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let port = rx.local_addr().unwrap().port();
        socket2::SockRef::from(&rx)
            .join_multicast_v4(&GROUP, &Ipv4Addr::LOCALHOST)
            .unwrap();
        report_group_destinations(&rx).unwrap();
        let tx = loopback_sender();
        tx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ep = Endpoint::new(Config::default(), 9).unwrap();
        let mut io = DatagramIo::new(rx.local_addr().unwrap(), 1152);
        let now = Instant::from_micros(0);
        let mut get = Vec::new();
        Message::new(MessageType::Non, Code::GET, 0x1234)
            .encode_to_vec(&mut get)
            .unwrap();
        tx.send_to(&get, (GROUP, port)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut handled = 0;
        while handled == 0 && std::time::Instant::now() < deadline {
            handled += io.receive(&StdSocket(&rx), &mut ep, now, 64).datagrams;
        }
        assert_eq!(handled, 1);
        // A NON request: nothing to acknowledge, and the engine waits for the application.
        assert!(!io.flush(&StdSocket(&rx), &mut ep, now, 64));
        let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(
            matches!(
                events.as_slice(),
                [coap_proto::Event::Request {
                    multicast: true,
                    ..
                }]
            ),
            "{events:?}"
        );
    }
}
