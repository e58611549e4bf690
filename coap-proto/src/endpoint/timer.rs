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

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    seq: u64,
    timer: Timer,
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
    seq: u64,
}

impl Timers {
    pub(super) fn push(&mut self, deadline: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            timer,
        }));
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    /// The earliest timer due by `now`, removed from the heap.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        if self.heap.peek()?.0.deadline > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.deadline, e.timer))
    }

    /// The earliest entry, without removing it.
    pub(super) fn peek(&self) -> Option<(Instant, Timer)> {
        self.heap.peek().map(|Reverse(e)| (e.deadline, e.timer))
    }

    /// Removes the earliest entry.
    pub(super) fn pop(&mut self) {
        self.heap.pop();
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries for which `keep(deadline, timer)` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(Instant, &Timer) -> bool) {
        let entries: Vec<Reverse<Entry>> = core::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse(e)| keep(e.deadline, &e.timer))
            .collect();
    }
}
