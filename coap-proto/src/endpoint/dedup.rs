//! The deduplication cache (RFC 7252 §4.5): what was answered to each recent CON or NON
//! message, so that a duplicate gets the same answer without reaching the application again.

use alloc::collections::VecDeque;
use core::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::datagram::Datagram;
use super::key::MessageKey;
use super::IncomingId;
use crate::time::Instant;

/// A message is identified by its sender and Message ID (§4.5).
pub(super) type DedupKey = MessageKey;

/// Where an entry sits in the cache's queue (its sequence number), so that the answer to a
/// request can be recorded without looking its key up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DedupSlot(u32);

/// What to do with a duplicate.
#[derive(Clone, Debug)]
pub(super) enum DedupState {
    /// The request went to the application, which has not answered yet.
    Pending(IncomingId),
    /// Send these bytes again (a piggybacked response, a NON response or an error).
    Reply(Datagram),
    /// Acknowledge again with an empty ACK (the response, if any, travels separately).
    AckOnly,
    /// Ignore it.
    Silent,
}

/// One remembered message. `state` is `None` once the entry was replaced or evicted ahead of
/// its turn; the empty slot leaves when it reaches the front of the queue.
#[derive(Debug)]
struct Slot {
    key: DedupKey,
    expires: Instant,
    state: Option<DedupState>,
}

/// The cache, bounded in entries and bytes.
///
/// Entries live in a queue in insertion order, and a hash table maps each live key to its
/// place in the queue. Expiry and eviction work at the front of the queue (every entry of one
/// message type lives equally long, so the oldest is the first to go), insertion at the
/// back: both touch memory the last call touched. The random access of a lookup goes to a
/// table of 8-byte items (a queue position and 32 bits of the key's hash, so that a lookup
/// seldom reads a queue slot that is not the one it looks for), small enough to stay in cache
/// at tens of thousands of entries.
///
/// Entries leaving at the front keep their item in the table: it names a position before the
/// front, which no lookup accepts, and such items are swept out in one pass over the table
/// when the table is full (instead of growing it) or, after expiry, once they are as many as
/// the live entries. That saves a random access per expired entry. The table files each item
/// under a hash made from its tag alone, so that resizing or rehashing the table never reads
/// the queue.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    /// Slot `i` has the sequence number `head + i` (modulo 2^32).
    slots: VecDeque<Slot>,
    head: u32,
    /// (sequence number, upper half of the key's hash) of the slots whose `state` is `Some`,
    /// plus items of slots that have left the queue (see above).
    index: HashTable<(u32, u32)>,
    hasher: DefaultHashBuilder,
    /// Entries whose `state` is `Some`.
    live: usize,
    bytes: usize,
}

/// What one entry costs besides its cached reply: its slot in the queue and its place in the
/// hash table (with the control byte and the table's one-in-eight spare slots), twice, since
/// items of departed entries stay until they are as many as the live ones. Counting this, not
/// only the replies, is what lets the byte bound stand for the memory the cache really holds.
pub(super) const ENTRY_BYTES: usize = size_of::<Slot>() + 2 * (size_of::<(u32, u32)>() + 1) * 8 / 7;

/// What a cached reply adds besides its slot: the allocation of one too large to be held
/// inline.
fn state_bytes(state: &DedupState) -> usize {
    match state {
        DedupState::Reply(bytes) => bytes.heap_bytes(),
        _ => 0,
    }
}

/// The part of a key's hash kept beside its position.
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// How many items a table with `allocation` bytes holds before it must grow or rehash: its
/// buckets (a power of two, each an item and a control byte, plus one group of control bytes)
/// at hashbrown's load factor of 7/8. An estimate from the outside: if hashbrown changes its
/// layout, the worst case is a growth or a sweep that was not needed.
fn full_capacity(allocation: usize) -> usize {
    let per_bucket = size_of::<(u32, u32)>() + 1;
    let n = allocation / per_bucket;
    if n == 0 {
        return 0;
    }
    let buckets = 1usize << (usize::BITS - 1 - n.leading_zeros());
    if buckets < 8 {
        buckets - 1
    } else {
        buckets / 8 * 7
    }
}

/// The hash the table files an item under, made from its tag alone: the table can then grow,
/// shrink or rehash in place (to clear the marks that removals leave) without reading a
/// single queue slot. The tag's low bits pick the bucket and its high bits the control byte.
fn table_hash(tag: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(tag)
}

impl Dedup {
    /// Live entries.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// The bytes charged against the bound: every live entry's bookkeeping and cached reply.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The tag of `key` (see [`table_hash`]).
    fn tag_of(&self, key: &DedupKey) -> u32 {
        tag(self.hasher.hash_one(key))
    }

    /// The queue position of sequence number `seq`, if that slot is still in the queue.
    fn offset(&self, seq: u32) -> Option<usize> {
        let at = seq.wrapping_sub(self.head) as usize;
        (at < self.slots.len()).then_some(at)
    }

    /// The queue position of the live entry for `key`.
    fn position(&self, key: &DedupKey) -> Option<usize> {
        self.position_tagged(key, self.tag_of(key))
    }

    /// [`position`](Dedup::position) for a key whose tag is known.
    fn position_tagged(&self, key: &DedupKey, want: u32) -> Option<usize> {
        let (slots, head) = (&self.slots, self.head);
        let &(seq, _) = self.index.find(table_hash(want), |&(seq, t)| {
            t == want
                && slots
                    .get(seq.wrapping_sub(head) as usize)
                    .is_some_and(|s| s.key == *key && s.state.is_some())
        })?;
        self.offset(seq)
    }

    pub(super) fn get(&self, key: &DedupKey) -> Option<&DedupState> {
        let at = self.position(key)?;
        self.slots.get(at)?.state.as_ref()
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
        // The entry bound counts slots, emptied ones included, so the queue never outgrows it.
        // (Slots are emptied ahead of their turn only when an entry is replaced or evicted to
        // make room for a larger reply; their bytes are released then.)
        let size = ENTRY_BYTES + state_bytes(&state);
        while !self.slots.is_empty()
            && (self.slots.len() >= max_entries || self.bytes + size > max_bytes)
        {
            if self.pop_front() {
                evicted += 1;
            }
        }
        let t = self.tag_of(&key);
        if let Some(at) = self.position_tagged(&key, t) {
            // The same message again after all (its entry is replaced, not doubled).
            self.forget(at);
        }
        self.make_room();
        let seq = self.head.wrapping_add(self.slots.len() as u32);
        self.slots.push_back(Slot {
            key,
            expires,
            state: Some(state),
        });
        self.live += 1;
        self.bytes += size;
        self.index
            .insert_unique(table_hash(t), (seq, t), |&(_, t)| table_hash(t));
        evicted
    }

    /// Replaces the state of an entry, if it is still there. A larger reply can push the cache
    /// over `max_bytes`: older entries are evicted then, never the one just updated. Returns
    /// how many were evicted.
    pub(super) fn update(&mut self, key: DedupKey, state: DedupState, max_bytes: usize) -> u64 {
        let Some(at) = self.position(&key) else {
            return 0;
        };
        self.update_position(at, state, max_bytes)
    }

    /// The newest entry's place in the queue, for [`update_at`](Dedup::update_at) right after
    /// [`insert`](Dedup::insert).
    pub(super) fn newest(&self) -> Option<DedupSlot> {
        let len = u32::try_from(self.slots.len()).ok()?;
        (len > 0).then(|| DedupSlot(self.head.wrapping_add(len - 1)))
    }

    /// [`update`](Dedup::update) of the entry for `key` that [`newest`](Dedup::newest) named
    /// when it was inserted, without a lookup; nothing happens if that entry has left.
    pub(super) fn update_at(
        &mut self,
        slot: DedupSlot,
        key: &DedupKey,
        state: DedupState,
        max_bytes: usize,
    ) -> u64 {
        let Some(at) = self.offset(slot.0) else {
            return 0;
        };
        let live = self
            .slots
            .get(at)
            .is_some_and(|s| s.key == *key && s.state.is_some());
        if !live {
            return 0;
        }
        self.update_position(at, state, max_bytes)
    }

    fn update_position(&mut self, at: usize, state: DedupState, max_bytes: usize) -> u64 {
        let Some(slot) = self.slots.get_mut(at) else {
            return 0;
        };
        self.bytes += state_bytes(&state);
        if let Some(old) = slot.state.replace(state) {
            self.bytes -= state_bytes(&old);
        }
        let mut evicted = 0;
        // Oldest first, skipping the updated entry: slots ahead of it leave the queue, those
        // behind it (newer ones, when it was itself among the oldest) are emptied in place.
        let mut at = at;
        let mut next = 0;
        while self.bytes > max_bytes && next < self.slots.len() {
            if next == at {
                next += 1;
                continue;
            }
            if next == 0 {
                let before = self.slots.len();
                if self.pop_front() {
                    evicted += 1;
                }
                at -= before - self.slots.len();
            } else {
                if self.forget(next) {
                    evicted += 1;
                }
                next += 1;
            }
        }
        evicted
    }

    /// Removes every entry that has expired by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while self.slots.front().is_some_and(|s| s.expires <= now) {
            self.pop_front();
        }
        self.sweep();
        if self.slots.capacity() > 4 * self.slots.len() + 64 {
            self.slots.shrink_to(2 * self.slots.len());
        }
    }

    /// Before an insertion into a full table: drops the items of entries that have left the
    /// queue instead of growing the table, when they are at least a quarter of it. A table
    /// grown here would only be shrunk again by the next sweep; under steady load the table
    /// keeps its size and departed items leave in one sequential pass each time it fills.
    ///
    /// "Full" counts the marks removals leave: a table short of room that way is rehashed in
    /// place by hashbrown if its items fit in half of it, and grown otherwise. Departed items
    /// are also dropped whenever that is what keeps the table from growing.
    fn make_room(&mut self) {
        let len = self.index.len();
        if len < self.index.capacity() {
            return;
        }
        let departed = len.saturating_sub(self.live);
        let half = full_capacity(self.index.allocation_size()) / 2;
        let would_grow = len >= half && self.live < half;
        if departed > 0 && (departed >= len / 4 + 16 || would_grow) {
            self.drop_departed();
        }
    }

    /// After expiry: drops the items of entries that have left the queue once they are as
    /// many as the live entries, and gives memory back when the table is far larger than its
    /// items need (eight times: a table that shrinks at a smaller margin would grow again
    /// under the same load, and each resize rehashes every item).
    fn sweep(&mut self) {
        if self.index.len() <= 2 * self.live + 64 {
            return;
        }
        self.drop_departed();
        if self.index.capacity() > 8 * self.index.len() + 64 {
            self.index
                .shrink_to(2 * self.index.len(), |&(_, t)| table_hash(t));
        }
    }

    /// One sequential pass over the table keeping the items of slots still in the queue; no
    /// queue slot is read.
    fn drop_departed(&mut self) {
        let (len, head) = (self.slots.len(), self.head);
        self.index
            .retain(|&mut (seq, _)| (seq.wrapping_sub(head) as usize) < len);
    }

    /// The earliest instant an entry may expire.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.slots.front().map(|s| s.expires)
    }

    /// Drops the oldest slot, and the emptied slots right behind it; returns whether it still
    /// held an entry. Its table item stays until the next sweep.
    fn pop_front(&mut self) -> bool {
        let live = match self.slots.pop_front() {
            Some(Slot {
                state: Some(state), ..
            }) => {
                self.bytes -= ENTRY_BYTES + state_bytes(&state);
                self.live -= 1;
                true
            }
            _ => false,
        };
        self.head = self.head.wrapping_add(1);
        while self.slots.front().is_some_and(|s| s.state.is_none()) {
            self.slots.pop_front();
            self.head = self.head.wrapping_add(1);
        }
        live
    }

    /// Ends the entry in the slot at queue position `at` and releases its bytes; the empty
    /// slot stays in the queue until it reaches the front. Returns whether it held an entry.
    fn forget(&mut self, at: usize) -> bool {
        let Some(slot) = self.slots.get_mut(at) else {
            return false;
        };
        let Some(state) = slot.state.take() else {
            return false;
        };
        self.bytes -= ENTRY_BYTES + state_bytes(&state);
        self.live -= 1;
        let seq = self.head.wrapping_add(at as u32);
        let t = tag(self.hasher.hash_one(slot.key));
        if let Ok(entry) = self.index.find_entry(table_hash(t), |&(s, _)| s == seq) {
            entry.remove();
        }
        true
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
        let big = Datagram::new(&[0u8; 400]);
        let one = ENTRY_BYTES + big.heap_bytes();
        let bound = 2 * one + ENTRY_BYTES;
        let mut d = Dedup::default();
        d.insert(key(1), t, DedupState::Reply(big.clone()), 100, bound);
        d.insert(key(2), t, DedupState::Reply(big.clone()), 100, bound);
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
        // (A reply smaller than one entry's bookkeeping: evicting one entry makes room.)
        let reply = Datagram::new(&[0u8; 64]);
        assert!(reply.heap_bytes() > 0 && reply.heap_bytes() < ENTRY_BYTES);
        let evicted = d.update(key(9), DedupState::Reply(reply), 3 * ENTRY_BYTES);
        assert_eq!(evicted, 1);
        assert_eq!(d.len(), 2);
        assert!(d.get(&key(9)).is_some());
        assert!(d.bytes() <= 3 * ENTRY_BYTES);
    }

    #[test]
    fn an_update_among_the_oldest_evicts_newer_entries_in_place() {
        let t = Instant::from_secs(1);
        let mut d = Dedup::default();
        for mid in 0..4 {
            d.insert(key(mid), t, DedupState::AckOnly, 100, 4 * ENTRY_BYTES);
        }
        // The oldest entry grows: every other entry goes, newer ones emptied in place.
        let reply = Datagram::new(&alloc::vec![0u8; 2 * ENTRY_BYTES]);
        assert_eq!(
            d.update(key(0), DedupState::Reply(reply), 4 * ENTRY_BYTES),
            3
        );
        assert_eq!(d.len(), 1);
        assert!(matches!(d.get(&key(0)), Some(DedupState::Reply(_))));
        assert!(d.bytes() <= 4 * ENTRY_BYTES);
        // The emptied slots count against the entry bound until they leave the queue, which
        // they do as new entries need the room.
        for mid in 10..14 {
            d.insert(key(mid), t, DedupState::AckOnly, 4, usize::MAX);
        }
        assert!(d.get(&key(0)).is_none());
        assert_eq!(d.len(), 4);
        assert!(d.get(&key(10)).is_some() && d.get(&key(13)).is_some());
        d.expire(t);
        assert_eq!((d.len(), d.bytes()), (0, 0));
    }

    #[test]
    fn an_entry_is_updated_where_it_was_put_while_it_is_there() {
        let t = Instant::from_secs(1);
        let mut d = Dedup::default();
        d.insert(key(1), t, DedupState::AckOnly, 2, usize::MAX);
        let one = d.newest().unwrap();
        d.insert(key(2), t, DedupState::AckOnly, 2, usize::MAX);
        let two = d.newest().unwrap();
        assert_ne!(one, two);
        // Another key never takes the update.
        d.update_at(one, &key(2), DedupState::Silent, usize::MAX);
        assert!(matches!(d.get(&key(2)), Some(DedupState::AckOnly)));
        d.update_at(one, &key(1), DedupState::Silent, usize::MAX);
        assert!(matches!(d.get(&key(1)), Some(DedupState::Silent)));
        // Evicted by a third entry, then the same key again: its new entry is not the old
        // slot's, and the late update goes nowhere.
        d.insert(key(3), t, DedupState::AckOnly, 2, usize::MAX);
        d.insert(key(1), t, DedupState::Pending(IncomingId(7)), 2, usize::MAX);
        d.update_at(one, &key(1), DedupState::Silent, usize::MAX);
        assert!(matches!(
            d.get(&key(1)),
            Some(DedupState::Pending(IncomingId(7)))
        ));
    }

    #[test]
    fn the_same_message_again_replaces_its_entry() {
        let t = Instant::from_secs(1);
        let mut d = Dedup::default();
        d.insert(key(1), t, DedupState::AckOnly, 100, usize::MAX);
        d.insert(key(1), t, DedupState::Silent, 100, usize::MAX);
        assert_eq!(d.len(), 1);
        assert!(matches!(d.get(&key(1)), Some(DedupState::Silent)));
        d.expire(t);
        assert_eq!((d.len(), d.bytes()), (0, 0));
    }

    #[test]
    fn lookups_survive_growth_and_shrinking() {
        let mut d = Dedup::default();
        for mid in 0..5000u16 {
            let expires = Instant::from_secs(1 + u64::from(mid));
            d.insert(
                key(mid),
                expires,
                DedupState::Pending(IncomingId(u64::from(mid))),
                100_000,
                usize::MAX,
            );
        }
        d.expire(Instant::from_secs(4900));
        assert_eq!(d.len(), 100);
        // The items of the departed entries were swept out of the table.
        assert!(d.index.len() <= 2 * 100 + 64, "{}", d.index.len());
        for mid in 0..5000u16 {
            let found = d.get(&key(mid));
            if mid < 4900 {
                assert!(found.is_none(), "{mid}");
            } else {
                assert!(
                    matches!(found, Some(DedupState::Pending(IncomingId(id))) if *id == u64::from(mid))
                );
            }
        }
    }

    /// Under steady load, at the entry bound (every insertion evicts the oldest) or with
    /// entries expiring as fast as new ones arrive, the table settles: after the first fill it
    /// changes size at most once, and only to grow (each resize rehashes every item). One
    /// late growth can happen: removals leave tombstones where the hash seed (random per
    /// process) packs items into full groups, and a table short of room by tombstones grows
    /// once; what must not happen is a table that keeps growing and shrinking.
    #[test]
    fn the_table_keeps_its_size_under_steady_load() {
        let peer = |i: u32| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)), 5683);
        // (entry bound, lifetime in insertions): expiry keeps half the bound live, or every
        // insertion evicts.
        for (bound, lifetime) in [
            (1_000u32, 500u32),
            (30_000, 15_000),
            (1_000, 20_000),
            (30_000, 600_000),
        ] {
            let mut d = Dedup::default();
            let mut sizes: alloc::vec::Vec<usize> = alloc::vec::Vec::new();
            // One insertion per virtual microsecond. Expiry runs now and then, as it does in
            // an endpoint (when its timer fires), not before every insertion.
            for i in 0..12 * bound {
                let now = Instant::from_micros(u64::from(i));
                let key = MessageKey::new(peer(i % 4096), (i / 4096) as u16);
                if i % 997 == 0 {
                    d.expire(now);
                }
                let expires = now + core::time::Duration::from_micros(u64::from(lifetime));
                d.insert(
                    key,
                    expires,
                    DedupState::AckOnly,
                    bound as usize,
                    usize::MAX,
                );
                let size = d.index.allocation_size();
                if i > 4 * bound && sizes.last() != Some(&size) {
                    sizes.push(size);
                }
            }
            let settled = match sizes[..] {
                [_] => true,
                [before, after] => after > before,
                _ => false,
            };
            assert!(settled, "bound {bound}: table sizes in turn {sizes:?}");
        }
    }

    /// With entries evicted at the bound and never expired, the table fills with the items of
    /// departed entries; each time it is full they are dropped instead of the table growing,
    /// whatever marks the removals left (this holds for any hash seed: the live entries fit
    /// in half the table, so hashbrown rehashes in place).
    #[test]
    fn departed_items_make_room_instead_of_growth() {
        let peer = |i: u32| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)), 5683);
        let mut d = Dedup::default();
        let mut sizes: alloc::vec::Vec<usize> = alloc::vec::Vec::new();
        for i in 0..200_000u32 {
            let key = MessageKey::new(peer(i % 4096), (i / 4096) as u16);
            d.insert(key, Instant::MAX, DedupState::AckOnly, 100, usize::MAX);
            let size = d.index.allocation_size();
            if i > 2_000 && sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        assert_eq!(sizes.len(), 1, "table sizes in turn {sizes:?}");
        assert_eq!(d.len(), 100);
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
