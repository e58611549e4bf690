//! Identifiers for the load tool: message IDs, client endpoints, and the loopback rule.
//!
//! A server deduplicates Confirmable and Non-confirmable messages by (source endpoint,
//! message ID) for EXCHANGE_LIFETIME (RFC 7252 §4.5, §4.8.2: 247 s with the default
//! parameters). A load tool that reused an ID within that time would be answered from the
//! server's deduplication cache (or not at all), which is neither what it wants to measure nor
//! what the RFC allows a client to do. So every client socket gets at most 65 536 message IDs
//! ([`MidSpace`]); when they are used up the tool moves to a fresh socket whose endpoint has
//! not been used in the last EXCHANGE_LIFETIME ([`EndpointLedger`]). For IPv4 targets each
//! socket binds to a random address in 127.0.0.0/8 ([`random_loopback_v4`]), which makes an
//! endpoint repeat across runs of the tool improbable as well.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// EXCHANGE_LIFETIME with the default transmission parameters (RFC 7252 §4.8.2): 247 s.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// A small, fast pseudo-random generator (SplitMix64). Not for cryptography: it picks message
/// ID starting points, token salts and source addresses.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed; equal seeds give equal sequences.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// A generator seeded from the wall clock and the process ID, different on every run.
    pub fn from_entropy() -> SplitMix {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random `u16`.
    pub fn next_u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
}

/// The message IDs one client endpoint may use: all 65 536 of them once, in sequence from a
/// random start, and then none.
#[derive(Clone, Debug)]
pub struct MidSpace {
    next: u16,
    left: u32,
}

impl MidSpace {
    /// The full space, starting at `start`.
    pub fn new(start: u16) -> MidSpace {
        MidSpace {
            next: start,
            left: 1 << 16,
        }
    }

    /// The next unused ID, or `None` when all have been used.
    #[inline]
    pub fn next_id(&mut self) -> Option<u16> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        Some(id)
    }

    /// How many IDs are left.
    pub fn remaining(&self) -> u32 {
        self.left
    }
}

/// The client endpoints retired in the last [`EXCHANGE_LIFETIME`], so that a new socket that
/// happens to get one of them again is refused.
#[derive(Debug)]
pub struct EndpointLedger {
    retired: HashMap<SocketAddr, Duration>,
    lifetime: Duration,
}

impl EndpointLedger {
    /// A ledger that remembers endpoints for `lifetime`.
    pub fn new(lifetime: Duration) -> EndpointLedger {
        EndpointLedger {
            retired: HashMap::new(),
            lifetime,
        }
    }

    /// Records that `endpoint` stopped being used at `now` (time since any fixed origin).
    pub fn retire(&mut self, endpoint: SocketAddr, now: Duration) {
        self.retired.insert(endpoint, now);
    }

    /// Whether `endpoint` may be used at `now`: it was not retired within the lifetime.
    pub fn is_fresh(&mut self, endpoint: SocketAddr, now: Duration) -> bool {
        let lifetime = self.lifetime;
        if self.retired.len() > 4096 {
            self.retired
                .retain(|_, &mut at| now.saturating_sub(at) < lifetime);
        }
        match self.retired.get(&endpoint) {
            Some(&at) => now.saturating_sub(at) >= lifetime,
            None => true,
        }
    }

    /// How many endpoints are remembered.
    pub fn len(&self) -> usize {
        self.retired.len()
    }

    /// Whether no endpoint is remembered.
    pub fn is_empty(&self) -> bool {
        self.retired.is_empty()
    }
}

/// A random address in 127.0.0.0/8 other than the network and broadcast addresses.
pub fn random_loopback_v4(rng: &mut SplitMix) -> Ipv4Addr {
    loop {
        let [a, b, c, ..] = rng.next_u64().to_be_bytes();
        if (a, b, c) != (0, 0, 0) && (a, b, c) != (255, 255, 255) {
            return Ipv4Addr::new(127, a, b, c);
        }
    }
}

/// The target is not a loopback address; the load tool sends only to 127.0.0.0/8 and ::1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLoopback(pub IpAddr);

impl fmt::Display for NotLoopback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing target {}: only loopback addresses (127.0.0.0/8, ::1) may be loaded",
            self.0
        )
    }
}

impl std::error::Error for NotLoopback {}

/// Accepts 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8; refuses everything else.
pub fn check_loopback(ip: IpAddr) -> Result<(), NotLoopback> {
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(NotLoopback(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn mid_space_gives_each_id_once() {
        let mut m = MidSpace::new(65_530);
        let mut seen = HashSet::new();
        while let Some(id) = m.next_id() {
            assert!(seen.insert(id), "id {id} repeated");
        }
        assert_eq!(seen.len(), 65_536);
        assert_eq!(m.remaining(), 0);
        assert_eq!(m.next_id(), None);
    }

    #[test]
    fn ledger_refuses_recent_endpoints() {
        let mut l = EndpointLedger::new(EXCHANGE_LIFETIME);
        let a: SocketAddr = "127.1.2.3:40000".parse().unwrap();
        let b: SocketAddr = "127.1.2.3:40001".parse().unwrap();
        assert!(l.is_fresh(a, Duration::from_secs(1)));
        l.retire(a, Duration::from_secs(10));
        assert!(!l.is_fresh(a, Duration::from_secs(11)));
        assert!(!l.is_fresh(a, Duration::from_secs(256)));
        assert!(l.is_fresh(a, Duration::from_secs(257)));
        assert!(l.is_fresh(b, Duration::from_secs(11)));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn loopback_rule() {
        for ok in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"] {
            assert!(check_loopback(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "192.168.1.1",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert_eq!(check_loopback(ip), Err(NotLoopback(ip)), "{bad}");
        }
        let msg = NotLoopback("8.8.8.8".parse().unwrap()).to_string();
        assert!(msg.contains("8.8.8.8"));
    }

    #[test]
    fn rng_is_deterministic_per_seed() {
        let mut a = SplitMix::new(7);
        let mut b = SplitMix::new(7);
        let mut c = SplitMix::new(8);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    proptest! {
        #[test]
        fn random_sources_are_usable_loopback(seed in any::<u64>()) {
            let mut rng = SplitMix::new(seed);
            for _ in 0..16 {
                let ip = random_loopback_v4(&mut rng);
                prop_assert!(ip.is_loopback());
                prop_assert!(ip != Ipv4Addr::new(127, 0, 0, 0));
                prop_assert!(ip != Ipv4Addr::new(127, 255, 255, 255));
            }
        }
    }
}
