//! Per-peer message-layer state: Message ID allocation (RFC 7252 §4.4) and NSTART (§4.7).

use alloc::collections::VecDeque;
use core::net::SocketAddr;
use core::time::Duration;

use super::{IncomingId, RequestId};
use crate::msg::Message;
use crate::time::Instant;

/// Message IDs expire in buckets of this width, so the state kept per peer is bounded by
/// `EXCHANGE_LIFETIME / BUCKET` entries however fast messages go out. Expiry is rounded up,
/// so an ID is never freed early.
const BUCKET_MICROS: u64 = 100_000;

/// The number of distinct Message IDs.
const MID_SPACE: u32 = 1 << 16;

/// A separate response (or a response to a NON request) waiting for a Message ID.
#[derive(Debug)]
pub(super) struct Held {
    /// The request it answers.
    pub(super) id: IncomingId,
    /// The client.
    pub(super) peer: SocketAddr,
    /// The Message ID of the request, which keys its deduplication entry.
    pub(super) request_mid: u16,
    /// Whether the request came by multicast.
    pub(super) multicast: bool,
    /// The response; its Message ID is filled in when one is free.
    pub(super) message: Message,
}

/// What an endpoint remembers about a peer it sends its own messages to.
#[derive(Debug)]
pub(super) struct Peer {
    /// The next Message ID to hand out. IDs go out in sequence from a random start, so the IDs
    /// in use always form one window ending just before this one.
    next_mid: u16,
    /// How many IDs are still within their lifetime.
    in_use: u32,
    /// (expiry, count) in allocation order; expiries never decrease.
    buckets: VecDeque<(Instant, u32)>,
    /// The deadline of this peer's one timer, if armed: the expiry of its oldest bucket.
    /// One timer per peer keeps the timer heap proportional to the number of peers.
    pub(super) armed: Option<Instant>,
    /// Requests counted against NSTART.
    pub(super) outstanding: usize,
    /// Requests waiting for NSTART or a Message ID, in order.
    pub(super) queue: VecDeque<RequestId>,
    /// Separate responses waiting for a Message ID, in order.
    pub(super) held: VecDeque<Held>,
    /// Whether `MessageIdsExhausted` was reported for the current shortage.
    pub(super) exhaustion_reported: bool,
}

impl Peer {
    /// A peer whose Message IDs start at `first_mid` (random, §4.4).
    pub(super) fn new(first_mid: u16) -> Peer {
        Peer {
            next_mid: first_mid,
            in_use: 0,
            buckets: VecDeque::new(),
            armed: None,
            outstanding: 0,
            queue: VecDeque::new(),
            held: VecDeque::new(),
            exhaustion_reported: false,
        }
    }

    /// Frees the Message IDs whose lifetime ended by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(expiry, count)) = self.buckets.front() {
            if expiry > now {
                break;
            }
            self.buckets.pop_front();
            self.in_use -= count;
        }
    }

    /// A fresh Message ID that stays reserved for `lifetime`, or `None` if every ID is still
    /// in use (§4.4 forbids reuse within EXCHANGE_LIFETIME / NON_LIFETIME).
    pub(super) fn allocate(&mut self, now: Instant, lifetime: Duration) -> Option<u16> {
        self.expire(now);
        if self.in_use >= MID_SPACE {
            return None;
        }
        let mid = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        self.in_use += 1;
        let raw = (now + lifetime).as_micros();
        let rounded = raw.div_ceil(BUCKET_MICROS).saturating_mul(BUCKET_MICROS);
        let expiry = Instant::from_micros(rounded);
        match self.buckets.back_mut() {
            Some((last, count)) if *last >= expiry => {
                // A shorter (NON) lifetime behind a longer one: keep the later expiry, which
                // only holds the ID longer than needed.
                *count += 1;
            }
            _ => self.buckets.push_back((expiry, 1)),
        }
        Some(mid)
    }

    /// Marks the peer's single timer armed at the expiry of its oldest Message ID bucket,
    /// if none is armed and some bucket is in use; returns the instant to arm it for.
    pub(super) fn arm(&mut self) -> Option<Instant> {
        if self.armed.is_some() {
            return None;
        }
        self.armed = self.next_free();
        self.armed
    }

    /// When the oldest ID in use becomes free.
    pub(super) fn next_free(&self) -> Option<Instant> {
        self.buckets.front().map(|(t, _)| *t)
    }

    /// Whether nothing is left that needs this peer's state.
    pub(super) fn is_idle(&self) -> bool {
        self.in_use == 0 && self.outstanding == 0 && self.queue.is_empty() && self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sequential_and_never_reused_within_their_lifetime() {
        let mut peer = Peer::new(65_530);
        let life = Duration::from_secs(247);
        let t0 = Instant::from_secs(1);
        let mut seen = alloc::collections::BTreeSet::new();
        for _ in 0..MID_SPACE {
            let mid = peer.allocate(t0, life).expect("space left");
            assert!(seen.insert(mid), "mid {mid} handed out twice");
        }
        assert_eq!(peer.allocate(t0, life), None, "all 65536 IDs are in use");
        assert_eq!(peer.next_free(), Some(Instant::from_secs(248)));
        // Still exhausted just before the lifetime ends...
        assert_eq!(peer.allocate(Instant::from_micros(247_999_999), life), None);
        // ...and free again at its end, continuing the sequence.
        assert_eq!(peer.allocate(Instant::from_secs(248), life), Some(65_530));
    }

    #[test]
    fn state_is_bounded_by_buckets_not_messages() {
        let mut peer = Peer::new(0);
        let life = Duration::from_secs(247);
        for i in 0..10_000u64 {
            peer.allocate(Instant::from_micros(i * 10), life);
        }
        // 10 000 IDs in 0.1 s of sending fit into at most two buckets.
        assert!(peer.buckets.len() <= 2, "{} buckets", peer.buckets.len());
        peer.expire(Instant::from_secs(1000));
        assert!(peer.is_idle());
    }
}
