//! The endpoint's timer heap: O(log n) to arm, O(1) to ask for the next deadline.
//!
//! Timers are never cancelled in place. A fired entry is checked against the live state it
//! names (the deadline stored there must match) and ignored if stale; stale entries are
//! compacted away once they outnumber live ones.

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::{Ordering, Reverse};
use core::net::SocketAddr;

use super::RequestId;
use crate::time::Instant;

/// What a timer entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Retransmit (or give up on) the CON message with this Message ID to this peer.
    Retransmit(SocketAddr, u16),
    /// The wait for a response (separate, NON or multicast) ends.
    ClientDeadline(RequestId),
    /// A bucket of the peer's Message IDs expires: send what waits, or forget the peer.
    Peer(SocketAddr),
}

/// A heap item: small, so that the moves of every push and pop are cheap. The timer itself
/// waits in [`Timers::payloads`].
#[derive(Debug)]
struct Entry {
    deadline: Instant,
    seq: u64,
    slot: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// A min-heap of timers, first-in first-out among equal deadlines.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    /// The timer of each heap item, by its `slot`.
    payloads: Vec<Timer>,
    /// Slots of `payloads` no heap item names.
    free: Vec<u32>,
    seq: u64,
}

impl Timers {
    pub(super) fn push(&mut self, deadline: Instant, timer: Timer) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(p) = self.payloads.get_mut(slot as usize) {
                    *p = timer;
                }
                slot
            }
            None => {
                self.payloads.push(timer);
                (self.payloads.len() - 1) as u32
            }
        };
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            slot,
        }));
    }

    fn payload(&self, slot: u32) -> Option<Timer> {
        self.payloads.get(slot as usize).copied()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    /// The earliest timer due by `now`, removed from the heap.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        loop {
            if self.heap.peek()?.0.deadline > now {
                return None;
            }
            let Reverse(e) = self.heap.pop()?;
            let timer = self.payload(e.slot);
            self.release(e.slot);
            if let Some(timer) = timer {
                return Some((e.deadline, timer));
            }
        }
    }

    /// The earliest entry, without removing it.
    pub(super) fn peek(&self) -> Option<(Instant, Timer)> {
        let Reverse(e) = self.heap.peek()?;
        Some((e.deadline, self.payload(e.slot)?))
    }

    /// Removes the earliest entry.
    pub(super) fn pop(&mut self) {
        if let Some(Reverse(e)) = self.heap.pop() {
            self.release(e.slot);
        }
    }

    /// Frees the slot of a popped item; an empty heap gives back its slots (and, after a
    /// burst, their memory).
    fn release(&mut self, slot: u32) {
        if self.heap.is_empty() {
            self.payloads.clear();
            self.free.clear();
            if self.payloads.capacity() > 4096 {
                self.payloads.shrink_to(64);
                self.free.shrink_to(64);
            }
        } else {
            self.free.push(slot);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries for which `keep(deadline, timer)` holds, and packs the timers
    /// that stay into the lowest slots.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(Instant, &Timer) -> bool) {
        let entries: Vec<Reverse<Entry>> = core::mem::take(&mut self.heap).into_vec();
        let old = core::mem::take(&mut self.payloads);
        self.free.clear();
        let mut kept = Vec::with_capacity(entries.len());
        for Reverse(e) in entries {
            let Some(&timer) = old.get(e.slot as usize) else {
                continue;
            };
            if keep(e.deadline, &timer) {
                self.payloads.push(timer);
                kept.push(Reverse(Entry {
                    deadline: e.deadline,
                    seq: e.seq,
                    slot: (self.payloads.len() - 1) as u32,
                }));
            }
        }
        self.heap = BinaryHeap::from(kept);
        self.free.shrink_to_fit();
    }
}
