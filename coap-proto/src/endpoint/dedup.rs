//! The deduplication cache (RFC 7252 §4.5): what was answered to each recent CON or NON
//! message, so that a duplicate gets the same answer without reaching the application again.

use alloc::collections::VecDeque;
use alloc::sync::Arc;

use hashbrown::hash_map;
use hashbrown::HashMap;
use smallvec::SmallVec;

use super::key::MessageKey;
use super::IncomingId;
use crate::time::Instant;

/// A message is identified by its sender and Message ID (§4.5).
pub(super) type DedupKey = MessageKey;

/// What to do with a duplicate.
#[derive(Clone, Debug)]
pub(super) enum DedupState {
    /// The request went to the application, which has not answered yet.
    Pending(IncomingId),
    /// Send these bytes again (a piggybacked response, a NON response or an error).
    Reply(Arc<[u8]>),
    /// Acknowledge again with an empty ACK (the response, if any, travels separately).
    AckOnly,
    /// Ignore it.
    Silent,
}

#[derive(Debug)]
struct Entry {
    expires: Instant,
    state: DedupState,
}

/// The cache, bounded in entries and bytes. Entries expire in insertion order, since every
/// entry of one message type lives equally long; when a bound is hit the oldest entry goes
/// first.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    map: HashMap<DedupKey, Entry>,
    /// (expiry, key) in insertion order. An item whose key now maps to an entry with another
    /// expiry is stale and skipped.
    order: VecDeque<(Instant, DedupKey)>,
    bytes: usize,
}

/// What one entry costs besides its cached reply: its slot in the hash table (key, entry and
/// control byte, with the table's one-in-eight spare slots), and its item in the expiry queue.
/// Counting this, not only the replies, is what lets the byte bound stand for the memory the
/// cache really holds.
pub(super) const ENTRY_BYTES: usize =
    (size_of::<(DedupKey, Entry)>() + 1) * 8 / 7 + size_of::<(Instant, DedupKey)>();

/// What a cached reply adds: its bytes and the shared allocation's header (two counters).
const REPLY_OVERHEAD: usize = 2 * size_of::<usize>();

fn state_bytes(state: &DedupState) -> usize {
    match state {
        DedupState::Reply(bytes) => bytes.len() + REPLY_OVERHEAD,
        _ => 0,
    }
}

fn entry_bytes(state: &DedupState) -> usize {
    ENTRY_BYTES + state_bytes(state)
}

impl Dedup {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The bytes charged against the bound: every entry's bookkeeping and cached reply.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn get(&self, key: &DedupKey) -> Option<&DedupState> {
        self.map.get(key).map(|e| &e.state)
    }

    /// Records a message; returns how many older entries were evicted to make room.
    pub(super) fn insert(
        &mut self,
        key: DedupKey,
        expires: Instant,
        state: DedupState,
        max_entries: usize,
        max_bytes: usize,
    ) -> u64 {
        let mut evicted = 0;
        let size = entry_bytes(&state);
        while self.map.len() >= max_entries
            || (self.bytes + size > max_bytes && !self.map.is_empty())
        {
            let Some((expiry, old)) = self.order.pop_front() else {
                break;
            };
            if self.remove_if(&old, expiry) {
                evicted += 1;
            }
        }
        if let Some(previous) = self.map.insert(key, Entry { expires, state }) {
            self.bytes -= entry_bytes(&previous.state);
        }
        self.bytes += size;
        self.order.push_back((expires, key));
        evicted
    }

    /// Replaces the state of an entry, if it is still there. A larger reply can push the cache
    /// over `max_bytes`: older entries are evicted then, never the one just updated. Returns
    /// how many were evicted.
    pub(super) fn update(&mut self, key: DedupKey, state: DedupState, max_bytes: usize) -> u64 {
        let Some(entry) = self.map.get_mut(&key) else {
            return 0;
        };
        self.bytes -= state_bytes(&entry.state);
        self.bytes += state_bytes(&state);
        entry.state = state;
        let mut evicted = 0;
        let mut kept: SmallVec<[(Instant, DedupKey); 2]> = SmallVec::new();
        while self.bytes > max_bytes && self.map.len() > 1 {
            let Some((expiry, old)) = self.order.pop_front() else {
                break;
            };
            if old == key {
                kept.push((expiry, old));
            } else if self.remove_if(&old, expiry) {
                evicted += 1;
            }
        }
        for item in kept.into_iter().rev() {
            self.order.push_front(item);
        }
        evicted
    }

    /// Drops the entries whose lifetime ended by `now`, and gives memory back once the cache
    /// has shrunk well below its peak, so a burst does not pin its high-water mark.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(expiry, key)) = self.order.front() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            self.remove_if(&key, expiry);
        }
        if self.map.capacity() > 4 * self.map.len() + 64 {
            self.map.shrink_to(2 * self.map.len());
        }
        if self.order.capacity() > 4 * self.order.len() + 64 {
            self.order.shrink_to(2 * self.order.len());
        }
    }

    /// The earliest instant an entry may expire.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(t, _)| *t)
    }

    fn remove_if(&mut self, key: &DedupKey, expiry: Instant) -> bool {
        match self.map.entry(*key) {
            hash_map::Entry::Occupied(entry) if entry.get().expires == expiry => {
                self.bytes -= entry_bytes(&entry.remove().state);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn key(mid: u16) -> DedupKey {
        MessageKey::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5683), mid)
    }

    #[test]
    fn bounded_in_entries_and_bytes_oldest_first() {
        let mut d = Dedup::default();
        let t = Instant::from_secs(1);
        for mid in 0..10 {
            assert_eq!(
                d.insert(key(mid), t, DedupState::Silent, 4, 1000),
                if mid < 4 { 0 } else { 1 }
            );
        }
        assert_eq!(d.len(), 4);
        assert!(d.get(&key(5)).is_none());
        assert!(d.get(&key(9)).is_some());
        let big: Arc<[u8]> = Arc::from(&[0u8; 400][..]);
        let one = ENTRY_BYTES + 400 + REPLY_OVERHEAD;
        let bound = 2 * one + ENTRY_BYTES;
        let mut d = Dedup::default();
        d.insert(key(1), t, DedupState::Reply(Arc::clone(&big)), 100, bound);
        d.insert(key(2), t, DedupState::Reply(Arc::clone(&big)), 100, bound);
        assert_eq!(d.insert(key(3), t, DedupState::Reply(big), 100, bound), 1);
        assert!(d.get(&key(1)).is_none());
        assert_eq!(d.bytes(), 2 * one);
        // Entries without a reply count too: the bound holds the cache's whole memory.
        let mut d = Dedup::default();
        for mid in 0..10 {
            d.insert(key(mid), t, DedupState::AckOnly, 100, 3 * ENTRY_BYTES);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.bytes(), 3 * ENTRY_BYTES);
        // A reply stored later counts too: older entries make room, the updated one stays.
        let reply: Arc<[u8]> = Arc::from(&[0u8; 100][..]);
        let evicted = d.update(key(9), DedupState::Reply(reply), 3 * ENTRY_BYTES);
        assert_eq!(evicted, 1);
        assert_eq!(d.len(), 2);
        assert!(d.get(&key(9)).is_some());
        assert!(d.bytes() <= 3 * ENTRY_BYTES);
    }

    #[test]
    fn expires_in_order_and_empties() {
        let mut d = Dedup::default();
        d.insert(
            key(1),
            Instant::from_secs(10),
            DedupState::AckOnly,
            100,
            1000,
        );
        d.insert(
            key(2),
            Instant::from_secs(20),
            DedupState::AckOnly,
            100,
            1000,
        );
        d.expire(Instant::from_secs(10));
        assert!(d.get(&key(1)).is_none());
        assert!(d.get(&key(2)).is_some());
        assert_eq!(d.next_expiry(), Some(Instant::from_secs(20)));
        d.expire(Instant::from_secs(30));
        assert_eq!(d.len(), 0);
        assert_eq!(d.bytes(), 0);
        assert_eq!(d.next_expiry(), None);
    }
}
