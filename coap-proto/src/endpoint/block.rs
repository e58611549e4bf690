//! Block-wise transfers (RFC 7959) and Request-Tag (RFC 9175 §3): the client's upload and
//! download state, the server's reassembly of request bodies and its cache of representations
//! served in blocks.
//!
//! The application never sees blocks unless it asks to: a client gets one complete response,
//! a server handler gets one complete request and returns one complete body.

use alloc::collections::VecDeque;
use core::net::SocketAddr;
use core::time::Duration;

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::cache_key::CacheKey;
use crate::msg::{Block, Code, OptionNumber, Options};
use crate::request::{Request, Response};
use crate::time::Instant;

/// The key of a block-wise operation on the server: the peer and the request's cache key
/// without Block1/Block2 (Request-Tag included, RFC 9175 §3.3).
pub(super) type OperationKey = (SocketAddr, CacheKey);

/// An ETag value.
pub(super) type Etag = SmallVec<[u8; 8]>;

/// The size of a block with this SZX.
pub(super) fn block_size(szx: u8) -> usize {
    1usize << (u32::from(szx.min(6)) + 4)
}

/// The largest SZX whose block fits in `size` bytes (16 at least, 1024 at most).
pub(super) fn szx_at_most(size: usize) -> u8 {
    let mut szx = 6u8;
    while szx > 0 && block_size(szx) > size {
        szx -= 1;
    }
    szx
}

/// A 64-bit FNV-1a hash, used to derive ETags from payloads (not a security measure: ETags
/// only let clients tell representations apart).
pub(super) fn fnv1a64(data: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes()
}

// ------------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------------

/// A request body being sent in blocks.
#[derive(Debug)]
pub(super) struct Upload {
    /// The request as the application made it, without block options; its payload is the
    /// whole body.
    pub(super) base: Request,
    /// Block size in use.
    pub(super) szx: u8,
    /// Offset of the block in flight.
    pub(super) offset: usize,
    /// How often the transfer restarted because the server asked for smaller blocks.
    pub(super) restarts: u8,
    /// Whether the final block went out: the response to it is the response to the request.
    pub(super) done: bool,
}

impl Upload {
    /// The request carrying the block at `self.offset`.
    pub(super) fn block_request(&self) -> Request {
        let total = self.base.payload.len();
        let size = block_size(self.szx);
        let end = (self.offset + size).min(total);
        let more = end < total;
        let num = u32::try_from(self.offset / size).unwrap_or(u32::MAX);
        let mut req = self.base.clone();
        req.payload = self.base.payload.slice(self.offset..end);
        if let Ok(block) = Block::new(num, more, size) {
            req.options.set_block1(block);
        }
        // Size1 tells the server the whole size up front (RFC 7959 §4).
        req.options.set_uint(
            OptionNumber::SIZE1,
            u32::try_from(total).unwrap_or(u32::MAX),
        );
        req
    }
}

/// A response body being collected block by block.
#[derive(Debug, Default)]
pub(super) struct Download {
    pub(super) body: BytesMut,
    pub(super) etag: Option<Etag>,
    /// Size2 as the server announced it.
    pub(super) size2: Option<u32>,
    pub(super) restarts: u8,
}

/// Block-wise state of one client exchange.
#[derive(Debug, Default)]
pub(super) struct ClientBlock {
    pub(super) upload: Option<Upload>,
    pub(super) download: Option<Download>,
}

// ------------------------------------------------------------------------------------------------
// Server side: reassembly of request bodies (Block1)
// ------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Assembly {
    expires: Instant,
    body: BytesMut,
    content_format: Option<u32>,
}

/// What became of an incoming Block1 block.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived return value, never stored"
)]
pub(super) enum Received {
    /// More blocks to come: answer 2.31 Continue with this Block1.
    Continue(Block),
    /// The last block: here is the whole body, and the Block1 to echo in the response.
    Complete(Bytes, Block),
    /// Refuse the block with this response (4.08 or 4.13).
    Refuse(Response),
}

/// Limits on reassembly.
#[derive(Clone, Copy, Debug)]
pub(super) struct AssemblyLimits {
    pub(super) max_body: usize,
    pub(super) max_per_peer: usize,
    pub(super) max_total: usize,
    pub(super) timeout: Duration,
    /// The largest block size this server prefers (its SZX).
    pub(super) szx: u8,
}

/// Request bodies being reassembled, bounded per peer, in total and in time.
#[derive(Debug, Default)]
pub(super) struct Assemblies {
    map: HashMap<OperationKey, Assembly>,
    order: VecDeque<(Instant, OperationKey)>,
    per_peer: HashMap<SocketAddr, usize>,
    total: usize,
}

impl Assemblies {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.total
    }

    fn remove(&mut self, key: &OperationKey) {
        if let Some(a) = self.map.remove(key) {
            self.total -= a.body.len();
            if let Some(n) = self.per_peer.get_mut(&key.0) {
                *n -= a.body.len();
                if *n == 0 {
                    self.per_peer.remove(&key.0);
                }
            }
        }
    }

    /// Takes one Block1 block of the operation `key` (RFC 7959 §2.5).
    pub(super) fn receive(
        &mut self,
        now: Instant,
        key: OperationKey,
        block: Block,
        payload: &[u8],
        options: &Options,
        limits: AssemblyLimits,
    ) -> Received {
        let content_format = options.get_uint(OptionNumber::CONTENT_FORMAT);
        let too_large = |max: usize| {
            let mut rsp = Response::new(Code::REQUEST_ENTITY_TOO_LARGE);
            rsp.options
                .set_uint(OptionNumber::SIZE1, u32::try_from(max).unwrap_or(u32::MAX));
            Received::Refuse(rsp)
        };
        let incomplete = |why: &'static str| {
            Received::Refuse(
                Response::new(Code::REQUEST_ENTITY_INCOMPLETE)
                    .with_payload(Bytes::from_static(why.as_bytes())),
            )
        };
        if block.more && payload.len() != block.size() {
            // Every block but the last is exactly the block size (§2.2).
            self.remove(&key);
            return incomplete("block payload does not match its size");
        }
        if block.num == 0 {
            // A new operation replaces an old one from the same peer (§2.5).
            self.remove(&key);
            if let Some(size1) = options.size1() {
                if usize::try_from(size1).map_or(true, |s| s > limits.max_body) {
                    return too_large(limits.max_body);
                }
            }
        } else {
            let Some(a) = self.map.get(&key) else {
                return incomplete("no block-wise transfer in progress");
            };
            if a.body.len() != block.offset() {
                self.remove(&key);
                return incomplete("block out of order");
            }
            if a.content_format != content_format {
                // §2.3: blocks with different Content-Formats are never assembled.
                self.remove(&key);
                return incomplete("Content-Format changed between blocks");
            }
        }
        let have = self.map.get(&key).map_or(0, |a| a.body.len());
        if have + payload.len() > limits.max_body {
            self.remove(&key);
            return too_large(limits.max_body);
        }
        let peer_bytes = self.per_peer.get(&key.0).copied().unwrap_or(0);
        if block.more
            && (peer_bytes + payload.len() > limits.max_per_peer
                || self.total + payload.len() > limits.max_total)
        {
            // §2.9.3: no resources to hold the body right now.
            self.remove(&key);
            return too_large(limits.max_body);
        }
        if !block.more {
            let body = match self.map.remove(&key) {
                Some(mut a) => {
                    self.total -= a.body.len();
                    if let Some(n) = self.per_peer.get_mut(&key.0) {
                        *n -= a.body.len();
                        if *n == 0 {
                            self.per_peer.remove(&key.0);
                        }
                    }
                    a.body.extend_from_slice(payload);
                    a.body.freeze()
                }
                None => Bytes::copy_from_slice(payload),
            };
            return Received::Complete(
                body,
                Block {
                    num: block.num,
                    more: false,
                    szx: block.szx,
                },
            );
        }
        let expires = now + limits.timeout;
        let entry = self.map.entry(key.clone()).or_insert_with(|| Assembly {
            expires,
            body: BytesMut::new(),
            content_format,
        });
        entry.expires = expires;
        entry.body.extend_from_slice(payload);
        self.total += payload.len();
        *self.per_peer.entry(key.0).or_default() += payload.len();
        self.order.push_back((expires, key));
        // Control usage (§2.3): acknowledge this block and state our preferred size.
        Received::Continue(Block {
            num: block.num,
            more: true,
            szx: block.szx.min(limits.szx),
        })
    }

    /// Drops partial bodies whose client went quiet ("waiting for client timed out").
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((expiry, key)) = self.order.pop_front() {
                if self.map.get(&key).is_some_and(|a| a.expires == expiry) {
                    self.remove(&key);
                }
            }
        }
        // Entries refreshed by later blocks leave stale items behind; keep the queue in step
        // with the map so it cannot grow without bound.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(t, k)| map.get(k).is_some_and(|a| a.expires == *t));
        }
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(t, _)| *t)
    }
}

// ------------------------------------------------------------------------------------------------
// Server side: representations served in blocks (Block2)
// ------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Representation {
    expires: Instant,
    code: Code,
    options: Options,
    body: Bytes,
}

/// Whole representations kept while clients fetch them block by block, so that every block
/// comes from one version (§2.4). Bounded in bytes; oldest first out.
#[derive(Debug, Default)]
pub(super) struct Representations {
    map: HashMap<OperationKey, Representation>,
    order: VecDeque<(Instant, OperationKey)>,
    bytes: usize,
}

impl Representations {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn insert(
        &mut self,
        key: OperationKey,
        expires: Instant,
        response: &Response,
        max_bytes: usize,
    ) {
        let size = response.payload.len();
        if size > max_bytes {
            return;
        }
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.body.len();
        }
        while self.bytes + size > max_bytes {
            let Some((t, k)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|r| r.expires == t) {
                if let Some(old) = self.map.remove(&k) {
                    self.bytes -= old.body.len();
                }
            }
        }
        self.bytes += size;
        self.map.insert(
            key.clone(),
            Representation {
                expires,
                code: response.code,
                options: response.options.clone(),
                body: response.payload.clone(),
            },
        );
        self.order.push_back((expires, key));
    }

    /// The stored representation for `key` as a whole response, if still fresh. Each use
    /// extends its life by `lifetime`, so a slow transfer of a large body is served from one
    /// version to the end.
    pub(super) fn get(
        &mut self,
        key: &OperationKey,
        now: Instant,
        lifetime: Duration,
    ) -> Option<Response> {
        let rep = self.map.get_mut(key).filter(|r| r.expires > now)?;
        rep.expires = now + lifetime;
        self.order.push_back((rep.expires, key.clone()));
        let rep = self.map.get(key)?;
        let mut rsp = Response::new(rep.code);
        rsp.options = rep.options.clone();
        rsp.payload = rep.body.clone();
        Some(rsp)
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if *t > now {
                break;
            }
            if let Some((t, k)) = self.order.pop_front() {
                if self.map.get(&k).is_some_and(|r| r.expires == t) {
                    if let Some(old) = self.map.remove(&k) {
                        self.bytes -= old.body.len();
                    }
                }
            }
        }
        // Renewals leave stale items behind; keep the queue proportional to the map.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(t, k)| map.get(k).is_some_and(|r| r.expires == *t));
        }
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(t, _)| *t)
    }
}

/// Gives a response an ETag derived from its body if the application set none, so clients
/// can tell versions of a representation apart (§2.4).
pub(super) fn ensure_etag(response: &mut Response) {
    if response.options.etag().is_none() {
        response.options.set_etag(&fnv1a64(&response.payload));
    }
}

/// Cuts block `requested.num` (or block 0) out of a whole response, at the smaller of the
/// requested size and `max_szx` (§2.4). Sets Block2, an ETag derived from the body when the
/// application gave none, and Size2 when `with_size2`. `Err` with a 4.02 response for a block
/// number past the end.
#[allow(
    clippy::result_large_err,
    reason = "both outcomes are responses to send"
)]
pub(super) fn slice_response(
    mut whole: Response,
    requested: Option<Block>,
    max_szx: u8,
    with_size2: bool,
) -> Result<Response, Response> {
    let szx = requested.map_or(max_szx, |b| b.szx.min(max_szx));
    let size = block_size(szx);
    let num = requested.map_or(0, |b| b.num);
    let total = whole.payload.len();
    let offset = usize::try_from(num)
        .unwrap_or(usize::MAX)
        .saturating_mul(size);
    if offset > total || (offset == total && num > 0) {
        return Err(
            Response::new(Code::BAD_OPTION).with_payload(Bytes::from_static(
                b"block number beyond the end of the representation",
            )),
        );
    }
    ensure_etag(&mut whole);
    let end = (offset + size).min(total);
    let more = end < total;
    whole.payload = whole.payload.slice(offset..end);
    whole.options.set_block2(Block { num, more, szx });
    if with_size2 {
        whole.options.set_uint(
            OptionNumber::SIZE2,
            u32::try_from(total).unwrap_or(u32::MAX),
        );
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr};

    fn key() -> OperationKey {
        let mut o = Options::new();
        o.push(OptionNumber::URI_PATH, b"up");
        (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            CacheKey::new(Code::PUT, &o, crate::cache_key::BLOCKWISE_EXCLUDED),
        )
    }

    const LIMITS: AssemblyLimits = AssemblyLimits {
        max_body: 100,
        max_per_peer: 1000,
        max_total: 1000,
        timeout: Duration::from_secs(10),
        szx: 6,
    };

    fn b(num: u32, more: bool) -> Block {
        Block { num, more, szx: 0 }
    }

    #[test]
    fn reassembles_in_order_and_refuses_gaps() {
        let mut a = Assemblies::default();
        let t = Instant::ZERO;
        let o = Options::new();
        assert!(matches!(
            a.receive(t, key(), b(0, true), &[1; 16], &o, LIMITS),
            Received::Continue(_)
        ));
        assert!(matches!(
            a.receive(t, key(), b(1, true), &[2; 16], &o, LIMITS),
            Received::Continue(_)
        ));
        match a.receive(t, key(), b(2, false), &[3; 5], &o, LIMITS) {
            Received::Complete(body, echo) => {
                assert_eq!(body.len(), 37);
                assert_eq!(&body[..16], &[1; 16]);
                assert_eq!(&body[32..], &[3; 5]);
                assert_eq!(echo, b(2, false));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.len(), 0);
        assert_eq!(a.bytes(), 0);
        // A block for no transfer, and a gap.
        assert!(
            matches!(a.receive(t, key(), b(1, true), &[0; 16], &o, LIMITS), Received::Refuse(r) if r.code == Code::REQUEST_ENTITY_INCOMPLETE)
        );
        a.receive(t, key(), b(0, true), &[0; 16], &o, LIMITS);
        assert!(
            matches!(a.receive(t, key(), b(2, true), &[0; 16], &o, LIMITS), Received::Refuse(r) if r.code == Code::REQUEST_ENTITY_INCOMPLETE)
        );
        assert_eq!(a.len(), 0, "a broken transfer is dropped");
    }

    #[test]
    fn too_large_bodies_get_4_13_with_size1() {
        let mut a = Assemblies::default();
        let mut o = Options::new();
        o.set_uint(OptionNumber::SIZE1, 1000);
        match a.receive(Instant::ZERO, key(), b(0, true), &[0; 16], &o, LIMITS) {
            Received::Refuse(r) => {
                assert_eq!(r.code, Code::REQUEST_ENTITY_TOO_LARGE);
                assert_eq!(r.options.size1(), Some(100));
            }
            other => panic!("{other:?}"),
        }
        let o = Options::new();
        for num in 0..6 {
            let r = a.receive(Instant::ZERO, key(), b(num, true), &[0; 16], &o, LIMITS);
            if num < 6 && (num + 1) * 16 <= 100 {
                assert!(matches!(r, Received::Continue(_)), "{num}");
            }
        }
        let r = a.receive(Instant::ZERO, key(), b(6, true), &[0; 16], &o, LIMITS);
        assert!(matches!(r, Received::Refuse(r) if r.code == Code::REQUEST_ENTITY_TOO_LARGE));
        assert_eq!(a.bytes(), 0);
    }

    #[test]
    fn partial_bodies_expire() {
        let mut a = Assemblies::default();
        let o = Options::new();
        a.receive(Instant::ZERO, key(), b(0, true), &[0; 16], &o, LIMITS);
        assert_eq!(a.next_expiry(), Some(Instant::from_secs(10)));
        a.expire(Instant::from_secs(10));
        assert_eq!(a.len(), 0);
        assert_eq!(a.bytes(), 0);
    }

    #[test]
    fn slicing_sets_block2_etag_and_size2() {
        let whole = Response::content(Bytes::from(alloc::vec![7u8; 100]));
        let first = slice_response(whole.clone(), None, 1, true).unwrap();
        assert_eq!(first.payload.len(), 32);
        assert_eq!(
            first.options.block2(),
            Some(Block {
                num: 0,
                more: true,
                szx: 1
            })
        );
        assert_eq!(first.options.size2(), Some(100));
        assert!(first.options.etag().is_some());
        let last = slice_response(
            whole.clone(),
            Some(Block {
                num: 6,
                more: false,
                szx: 0,
            }),
            1,
            false,
        )
        .unwrap();
        assert_eq!(last.payload.len(), 4);
        assert_eq!(
            last.options.block2(),
            Some(Block {
                num: 6,
                more: false,
                szx: 0
            })
        );
        assert_eq!(
            last.options.etag(),
            first.options.etag(),
            "same body, same ETag"
        );
        let past = slice_response(
            whole,
            Some(Block {
                num: 7,
                more: false,
                szx: 0,
            }),
            1,
            false,
        );
        assert_eq!(past.unwrap_err().code, Code::BAD_OPTION);
    }

    #[test]
    fn szx_helpers() {
        assert_eq!(block_size(0), 16);
        assert_eq!(block_size(6), 1024);
        assert_eq!(szx_at_most(1024), 6);
        assert_eq!(szx_at_most(1000), 5);
        assert_eq!(szx_at_most(5), 0);
    }
}
