//! Observe (RFC 7641): the server's lists of observers and the client's freshness rule.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::cache_key::CacheKey;
use crate::msg::{Message, Token};
use crate::request::Response;
use crate::time::Instant;

/// Names one observer on the server, for the lifetime of the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObserverId(pub(crate) u64);

impl fmt::Display for ObserverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "obs#{}", self.0)
    }
}

/// Why an observer left a resource's list (see
/// [`Event::ObserverRemoved`](super::Event::ObserverRemoved)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObserverRemoval {
    /// The client deregistered (GET with Observe = 1) or sent the same request without Observe
    /// (RFC 7641 §3.6, §4.1).
    Deregistered,
    /// The client answered a notification with Reset (§3.6).
    Reset,
    /// A Confirmable notification was never acknowledged (§4.5).
    Timeout,
    /// A notification with a non-2.xx code ended the observation (§4.2).
    ErrorNotified,
    /// The application removed it, aborted the peer, or the endpoint shut down.
    Cancelled,
    /// The network reported the client unreachable (see
    /// [`Endpoint::handle_unreachable`](super::Endpoint::handle_unreachable)).
    Unreachable,
}

/// The sequence-number rule of RFC 7641 §3.4: whether a notification with Observe value `v2`
/// received at `t2` is newer than the freshest one so far, `v1` received at `t1`.
pub fn is_fresher(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    const HALF: u32 = 1 << 23;
    let (v1, v2) = (v1 & 0xff_ffff, v2 & 0xff_ffff);
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || t2 > t1 + Duration::from_secs(128)
}

/// A client on a resource's list of observers.
#[derive(Debug)]
pub(super) struct Observer {
    pub(super) peer: SocketAddr,
    pub(super) token: Token,
    pub(super) resource: u32,
    pub(super) variant: u64,
    /// When the last Confirmable notification went to this observer (the 24-hour rule, §4.5).
    pub(super) last_con: Instant,
    /// Message ID of a Confirmable notification awaiting its ACK.
    pub(super) in_flight: Option<u16>,
    /// A newer state waiting for that ACK; a still newer one replaces it (§4.5.2).
    pub(super) waiting: Option<Box<Response>>,
    /// The last few Non-confirmable notifications sent, so that a Reset to one of them
    /// cancels the observation.
    pub(super) recent_non: RecentNon,
}

/// How many Non-confirmable notifications per observer a Reset is matched against.
const RECENT_NON: usize = 4;

/// Message IDs and send times of an observer's last [`RECENT_NON`] Non-confirmable
/// notifications.
///
/// RFC 7641 §3.6 lets a client reject a notification with a Reset, and §4.2 says the server
/// then removes the observer; a Reset names only the Message ID (RFC 7252 §4.2, §4.3). Kept per
/// observer, the record costs nothing to look up when a notification leaves (the observer is
/// at hand already) and cannot grow with the traffic: a client rejects a notification when
/// it arrives, and the few sent since are what it can answer. A Reset matches only a
/// notification sent within NON_LIFETIME: Message IDs towards a peer are not reused within
/// EXCHANGE_LIFETIME (§4.4), which is longer, so an older record could only name a later,
/// unrelated message.
///
/// Each record's send time is kept as milliseconds before the newest one's (saturating at
/// about 49 days, far beyond NON_LIFETIME), so a record costs six bytes and its age is exact.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RecentNon {
    /// When the newest record's notification left.
    newest: Instant,
    mids: [u16; RECENT_NON],
    /// Milliseconds from each record's send time to `newest`.
    before_newest: [u32; RECENT_NON],
    /// Where the next record goes.
    next: u8,
    len: u8,
}

/// Whole milliseconds in `d`, saturating at `u32::MAX`.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl RecentNon {
    /// Records a notification sent with Message ID `mid` at `now`, over the oldest record.
    pub(super) fn record(&mut self, mid: u16, now: Instant) {
        let moved = millis(now.saturating_duration_since(self.newest));
        for before in &mut self.before_newest {
            *before = before.saturating_add(moved);
        }
        self.newest = self.newest.max(now);
        let at = usize::from(self.next) % RECENT_NON;
        if let (Some(m), Some(b)) = (self.mids.get_mut(at), self.before_newest.get_mut(at)) {
            *m = mid;
            *b = 0;
        }
        self.next = ((at + 1) % RECENT_NON) as u8;
        self.len = (usize::from(self.len) + 1).min(RECENT_NON) as u8;
    }

    /// Whether a notification with Message ID `mid` was sent at most `lifetime` before `now`.
    pub(super) fn contains(&self, mid: u16, now: Instant, lifetime: Duration) -> bool {
        let since_newest = millis(now.saturating_duration_since(self.newest));
        let lifetime = millis(lifetime);
        self.mids
            .iter()
            .zip(&self.before_newest)
            .take(usize::from(self.len))
            .any(|(&m, &before)| m == mid && since_newest.saturating_add(before) <= lifetime)
    }
}

/// One variant of a resource: observers whose requests share a cache key (for example the same
/// Accept option), and the request to render it again.
#[derive(Debug)]
pub(super) struct Variant {
    pub(super) resource: u32,
    pub(super) key: CacheKey,
    /// The registration request, kept so the application can render this variant again.
    pub(super) request: Message,
    pub(super) members: BTreeSet<u64>,
}

/// An observed resource.
#[derive(Debug)]
pub(super) struct Resource {
    pub(super) path: String,
    /// Strictly increasing per resource; its 24 low bits are the Observe value (§4.4).
    pub(super) seq: u32,
    pub(super) variants: BTreeSet<u64>,
    pub(super) count: usize,
}

/// The server's observer lists. Ordered maps keep fan-out order deterministic (registration
/// order), which the simulation relies on.
#[derive(Debug, Default)]
pub(super) struct Registry {
    next_id: u64,
    pub(super) observers: BTreeMap<u64, Observer>,
    pub(super) resources: BTreeMap<u32, Resource>,
    pub(super) resource_ids: HashMap<String, u32>,
    pub(super) variants: BTreeMap<u64, Variant>,
    variant_ids: HashMap<(u32, CacheKey), u64>,
    /// Observers per peer, by token, in registration order. Keyed by peer alone because
    /// most peers hold one observation: one small inline vector instead of a second map keeps
    /// each observer's footprint down.
    per_peer: HashMap<SocketAddr, SmallVec<[(Token, u64); 1]>>,
}

/// Bounds on the registry, from the configuration.
#[derive(Clone, Copy, Debug)]
pub(super) struct ObserverLimits {
    pub(super) total: usize,
    pub(super) per_resource: usize,
    pub(super) per_peer: usize,
}

impl Registry {
    pub(super) fn len(&self) -> usize {
        self.observers.len()
    }

    /// The observer registered by `peer` with `token`, if any.
    pub(super) fn find(&self, peer: SocketAddr, token: &Token) -> Option<u64> {
        self.per_peer
            .get(&peer)?
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, oid)| *oid)
    }

    /// The observers `peer` holds, in registration order.
    pub(super) fn of_peer(&self, peer: SocketAddr) -> Vec<u64> {
        self.per_peer
            .get(&peer)
            .map(|v| v.iter().map(|(_, oid)| *oid).collect())
            .unwrap_or_default()
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether one more observer of `path` from `peer` fits the bounds. A re-registration
    /// (same peer and token) always fits: it replaces the old entry (§4.1).
    pub(super) fn has_room(
        &self,
        path: &str,
        peer: SocketAddr,
        token: &Token,
        limits: ObserverLimits,
    ) -> bool {
        if self.find(peer, token).is_some() {
            return true;
        }
        let on_resource = self
            .resource_ids
            .get(path)
            .and_then(|r| self.resources.get(r))
            .map_or(0, |r| r.count);
        let of_peer = self.per_peer.get(&peer).map_or(0, SmallVec::len);
        self.observers.len() < limits.total
            && on_resource < limits.per_resource
            && of_peer < limits.per_peer
    }

    /// Adds (or replaces) the observer `peer`/`token` of `path`, in the variant identified by
    /// `key`. Returns its id and the Observe value for the registration response.
    pub(super) fn add(
        &mut self,
        now: Instant,
        path: &str,
        key: CacheKey,
        request: &Message,
        peer: SocketAddr,
        token: Token,
    ) -> (u64, u32) {
        if let Some(old) = self.find(peer, &token) {
            self.remove(old);
        }
        let rid = match self.resource_ids.get(path) {
            Some(&rid) => rid,
            None => {
                let rid = u32::try_from(self.next_id()).unwrap_or(u32::MAX);
                self.resource_ids.insert(String::from(path), rid);
                self.resources.insert(
                    rid,
                    Resource {
                        path: String::from(path),
                        seq: 0,
                        variants: BTreeSet::new(),
                        count: 0,
                    },
                );
                rid
            }
        };
        let vid = match self.variant_ids.get(&(rid, key.clone())) {
            Some(&vid) => vid,
            None => {
                let vid = self.next_id();
                let mut stored = request.clone();
                stored.options.remove(crate::msg::OptionNumber::OBSERVE);
                self.variant_ids.insert((rid, key.clone()), vid);
                self.variants.insert(
                    vid,
                    Variant {
                        resource: rid,
                        key,
                        request: stored,
                        members: BTreeSet::new(),
                    },
                );
                if let Some(r) = self.resources.get_mut(&rid) {
                    r.variants.insert(vid);
                }
                vid
            }
        };
        let oid = self.next_id();
        self.observers.insert(
            oid,
            Observer {
                peer,
                token: token.clone(),
                resource: rid,
                variant: vid,
                last_con: now,
                in_flight: None,
                waiting: None,
                recent_non: RecentNon::default(),
            },
        );
        self.per_peer.entry(peer).or_default().push((token, oid));
        if let Some(v) = self.variants.get_mut(&vid) {
            v.members.insert(oid);
        }
        let seq = match self.resources.get_mut(&rid) {
            Some(r) => {
                r.count += 1;
                r.seq = r.seq.wrapping_add(1);
                r.seq
            }
            None => 0,
        };
        (oid, seq & 0xff_ffff)
    }

    /// Removes an observer; returns its peer, its resource's path and how many observers the
    /// resource has left.
    pub(super) fn remove(&mut self, oid: u64) -> Option<(SocketAddr, String, usize)> {
        let o = self.observers.remove(&oid)?;
        if let Some(set) = self.per_peer.get_mut(&o.peer) {
            set.retain(|(_, x)| *x != oid);
            if set.is_empty() {
                self.per_peer.remove(&o.peer);
            }
        }
        if let Some(v) = self.variants.get_mut(&o.variant) {
            v.members.remove(&oid);
            if v.members.is_empty() {
                let key = v.key.clone();
                self.variants.remove(&o.variant);
                self.variant_ids.remove(&(o.resource, key));
                if let Some(r) = self.resources.get_mut(&o.resource) {
                    r.variants.remove(&o.variant);
                }
            }
        }
        let (path, left) = match self.resources.get_mut(&o.resource) {
            Some(r) => {
                r.count -= 1;
                (r.path.clone(), r.count)
            }
            None => (String::new(), 0),
        };
        if left == 0 {
            // Keep the resource (and its sequence number) only while it has observers; a
            // resource observed again later starts a new sequence, which clients accept
            // because their observation is new too.
            if let Some(r) = self.resources.remove(&o.resource) {
                self.resource_ids.remove(&r.path);
            }
        }
        Some((o.peer, path, left))
    }

    /// The next Observe value for a notification of resource `rid`.
    pub(super) fn bump(&mut self, rid: u32) -> u32 {
        match self.resources.get_mut(&rid) {
            Some(r) => {
                r.seq = r.seq.wrapping_add(1);
                r.seq & 0xff_ffff
            }
            None => 0,
        }
    }

    /// The observation of `peer` whose Non-confirmable notification carried `mid`, sent at
    /// most `lifetime` (NON_LIFETIME) before `now`.
    pub(super) fn non_owner(
        &self,
        peer: SocketAddr,
        mid: u16,
        now: Instant,
        lifetime: Duration,
    ) -> Option<u64> {
        self.per_peer.get(&peer)?.iter().find_map(|&(_, oid)| {
            let o = self.observers.get(&oid)?;
            o.recent_non.contains(mid, now, lifetime).then_some(oid)
        })
    }
}

/// A client's registration (see [`Endpoint::observe`](super::Endpoint::observe)).
#[derive(Debug, Default)]
pub(super) struct ClientObserve {
    /// The first notification arrived: the server accepted the registration.
    pub(super) established: bool,
    /// Observe value and arrival time of the freshest notification so far.
    pub(super) freshest: Option<(u32, Instant)>,
    /// A deregistration (GET with Observe = 1) is under way.
    pub(super) deregistering: bool,
    /// Re-registrations in a row that got no answer.
    pub(super) failed_reregistrations: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The record answers as a plain list of every notification sent would: a Message ID
        /// matches if it is among the last four and sent at most `lifetime` ago, whatever the
        /// gaps between notifications (up to months, past the offsets' saturation).
        #[test]
        fn recent_non_matches_the_last_four_within_the_lifetime(
            sent in prop::collection::vec(
                (0u16..8, prop_oneof![0u64..2_000, 0u64..(1 << 34)]),
                0..12,
            ),
            // (Message ID, a record k back, ms from exactly `lifetime` after it, ms later).
            queries in prop::collection::vec((0u16..8, 0usize..6, -2i64..=2, 0u64..300_000), 1..8),
            lifetime_ms in 0u64..200_000,
        ) {
            let mut record = RecentNon::default();
            let mut all = Vec::new();
            let mut now = Instant::from_millis(1_000);
            for (mid, gap) in sent {
                now += Duration::from_millis(gap);
                record.record(mid, now);
                all.push((mid, now));
            }
            let lifetime = Duration::from_millis(lifetime_ms);
            for (mid, back, edge, later) in queries {
                // Queries come no earlier than the newest notification (the engine's clock
                // does not go back); half of them fall on a record's lifetime boundary.
                let at = match all.iter().rev().nth(back) {
                    Some(&(_, t)) if later % 2 == 0 => {
                        let edge = lifetime_ms.saturating_add_signed(edge);
                        (t + Duration::from_millis(edge)).max(now)
                    }
                    _ => now + Duration::from_millis(later),
                };
                let want = all.iter().rev().take(RECENT_NON).any(|&(m, t)| {
                    m == mid && at.saturating_duration_since(t) <= lifetime
                });
                prop_assert_eq!(record.contains(mid, at, lifetime), want);
            }
        }
    }

    #[test]
    fn freshness_follows_rfc7641_section_3_4() {
        let t = Instant::from_secs(10);
        assert!(is_fresher(1, t, 2, t));
        assert!(!is_fresher(2, t, 1, t));
        assert!(!is_fresher(5, t, 5, t));
        // Wrap-around of the 24-bit value.
        assert!(is_fresher(0xff_fffe, t, 3, t));
        assert!(!is_fresher(3, t, 0xff_fffe, t));
        // Exactly half the space apart is not fresher either way.
        assert!(!is_fresher(0, t, 1 << 23, t));
        // After 128 s anything is fresher.
        assert!(!is_fresher(9, t, 8, t + Duration::from_secs(128)));
        assert!(is_fresher(9, t, 8, t + Duration::from_micros(128_000_001)));
    }
}
