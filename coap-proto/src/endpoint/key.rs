//! Keys of the per-peer tables, hashed in one or two integer writes.
//!
//! `SocketAddr`'s own `Hash` feeds a hasher four to six separate values (the variant, a
//! length prefix, the address bytes, the port, ...), and the engine hashes a peer's address
//! several times per exchange. These keys pack the same information into one `u64` for IPv4
//! (two writes for IPv6), which the map's seeded hasher still mixes as before. Equality is
//! plain `SocketAddr` equality; the IPv6 flow label is left out of the hash only, which keeps
//! equal keys hashing equally.

use core::hash::{Hash, Hasher};
use core::net::SocketAddr;

/// A peer, by its socket address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PeerKey(pub(super) SocketAddr);

impl Hash for PeerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_addr(&self.0, 0, state);
    }
}

/// One message of a peer: its address and the Message ID (RFC 7252 §4.5 identifies a
/// message by both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MessageKey {
    pub(super) peer: SocketAddr,
    pub(super) mid: u16,
}

impl MessageKey {
    pub(super) fn new(peer: SocketAddr, mid: u16) -> MessageKey {
        MessageKey { peer, mid }
    }
}

impl Hash for MessageKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_addr(&self.peer, self.mid, state);
    }
}

fn hash_addr<H: Hasher>(addr: &SocketAddr, extra: u16, state: &mut H) {
    match addr {
        SocketAddr::V4(a) => state.write_u64(
            u64::from(a.ip().to_bits()) << 32 | u64::from(a.port()) << 16 | u64::from(extra),
        ),
        SocketAddr::V6(a) => {
            state.write_u128(a.ip().to_bits());
            state.write_u64(
                u64::from(a.scope_id()) << 32 | u64::from(a.port()) << 16 | u64::from(extra),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::BuildHasher;
    use core::net::{Ipv6Addr, SocketAddrV6};

    #[test]
    fn equal_keys_hash_equally_and_distinct_ones_are_told_apart() {
        let build = hashbrown::DefaultHashBuilder::default();
        let v4: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let v6 = |flow| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
                5683,
                flow,
                3,
            ))
        };
        assert_eq!(
            build.hash_one(MessageKey::new(v4, 7)),
            build.hash_one(MessageKey::new(v4, 7))
        );
        assert_ne!(
            build.hash_one(MessageKey::new(v4, 7)),
            build.hash_one(MessageKey::new(v4, 8))
        );
        assert_ne!(MessageKey::new(v6(0), 7), MessageKey::new(v6(1), 7));
        assert_eq!(
            build.hash_one(PeerKey(v6(0))),
            build.hash_one(PeerKey(v6(0)))
        );
        let mut map = hashbrown::HashMap::new();
        map.insert(PeerKey(v6(0)), 1);
        map.insert(PeerKey(v6(1)), 2);
        map.insert(PeerKey(v4), 3);
        assert_eq!(map.get(&PeerKey(v6(1))), Some(&2));
        assert_eq!(map.len(), 3);
    }
}
