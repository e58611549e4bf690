//! Peer addresses in the one form an endpoint keys its state by.
//!
//! A dual-stack IPv6 socket sees IPv4 peers as IPv4-mapped IPv6 addresses; an IPv4 socket
//! cannot reach IPv6 at all. Every runtime crate turns user-given addresses into the socket's
//! form before they reach the engine, and back into the plain form before they reach users.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The IPv4 "All CoAP Nodes" multicast address (RFC 7252 §12.8).
pub const ALL_COAP_NODES_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);

/// The link-local IPv6 "All CoAP Nodes" multicast address, `ff02::fd` (RFC 7252 §12.8).
pub const ALL_COAP_NODES_V6_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfd);

/// The site-local IPv6 "All CoAP Nodes" multicast address, `ff05::fd` (RFC 7252 §12.8).
pub const ALL_COAP_NODES_V6_SITE_LOCAL: Ipv6Addr = Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 0xfd);

/// `remote` in the form a socket bound to `local` sends to and receives from: IPv4 peers of
/// an IPv6 socket as IPv4-mapped IPv6 addresses, IPv4-mapped addresses of an IPv4 socket as
/// plain IPv4, and no IPv6 flow label. `None` when the socket cannot reach that family.
pub fn for_socket(local: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
    match (local, remote) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => Some(SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        (SocketAddr::V6(_), SocketAddr::V6(v6)) => Some(SocketAddr::V6(SocketAddrV6::new(
            *v6.ip(),
            v6.port(),
            0,
            v6.scope_id(),
        ))),
        (SocketAddr::V4(_), SocketAddr::V4(v4)) => Some(SocketAddr::V4(v4)),
        (SocketAddr::V4(_), SocketAddr::V6(v6)) => v6
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, v6.port()))),
    }
}

/// The form of a peer address shown to users: IPv4-mapped IPv6 addresses as plain IPv4.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_socket_family() {
        let v6: SocketAddr = "[::]:0".parse().unwrap();
        let v4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let peer4: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5683".parse().unwrap();
        let peer6: SocketAddr = "[2001:db8::1]:5683".parse().unwrap();
        assert_eq!(for_socket(v6, peer4), Some(mapped));
        assert_eq!(for_socket(v4, mapped), Some(peer4));
        assert_eq!(for_socket(v4, peer6), None);
        assert_eq!(for_socket(v6, peer6), Some(peer6));
        assert_eq!(unmapped(mapped), peer4);
        assert_eq!(unmapped(peer6), peer6);
    }
}
