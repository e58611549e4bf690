//! The UDP socket: options applied through socket2 before bind, registration with the
//! async-io reactor, and the address forms the engine and the user see.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use async_io::Async;
use socket2::{Domain, Protocol, Socket, Type};

use crate::Error;

/// The receive buffer size asked for unless told otherwise (4 MiB): room for a burst of a few
/// thousand datagrams while the driver is busy. The system may grant less (Linux caps it at
/// `net.core.rmem_max`); [`Client::recv_buffer_size`](crate::Client::recv_buffer_size)
/// reports what it granted.
pub const DEFAULT_RECV_BUFFER: usize = 4 << 20;

/// Options set on the UDP socket before it is bound.
///
/// By default: no address or port reuse, a [`DEFAULT_RECV_BUFFER`] receive buffer, the
/// system's send buffer, dual-stack IPv6 sockets where the system allows them, no DSCP
/// marking, and the system's fragmentation behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_REUSEADDR`.
    pub reuse_address: bool,
    /// `SO_REUSEPORT` (Unix): several sockets, in one process or several, bind the same
    /// address and port, and the system spreads unicast datagrams among them.
    pub reuse_port: bool,
    /// `SO_RCVBUF` in bytes; `None` leaves the system default.
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` in bytes; `None` leaves the system default.
    pub send_buffer_size: Option<usize>,
    /// `IPV6_V6ONLY` of an IPv6 socket; `None` asks for dual stack.
    pub only_v6: Option<bool>,
    /// DSCP code point (0..=63) written into the IPv4 TOS or IPv6 Traffic Class of every
    /// datagram; `None` leaves it alone.
    pub dscp: Option<u8>,
    /// Don't fragment: a datagram larger than the path MTU fails rather than being
    /// fragmented. Available for IPv6 sockets on Linux; elsewhere binding fails with
    /// [`Error::Unsupported`].
    pub dont_fragment: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            reuse_address: false,
            reuse_port: false,
            recv_buffer_size: Some(DEFAULT_RECV_BUFFER),
            send_buffer_size: None,
            only_v6: None,
            dscp: None,
            dont_fragment: false,
        }
    }
}

/// Opens a UDP socket with `opts`, binds it to `addr` and registers it with the reactor.
pub(crate) fn bind(addr: SocketAddr, opts: &SocketOptions) -> Result<Async<UdpSocket>, Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        if let Some(only) = opts.only_v6 {
            socket.set_only_v6(only)?;
        } else {
            // Dual stack where possible; a system that refuses keeps an IPv6-only socket.
            let _ = socket.set_only_v6(false);
        }
    }
    if opts.reuse_address {
        socket.set_reuse_address(true)?;
    }
    if opts.reuse_port {
        reuse_port(&socket)?;
    }
    if let Some(bytes) = opts.recv_buffer_size {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(bytes) = opts.send_buffer_size {
        socket.set_send_buffer_size(bytes)?;
    }
    if let Some(dscp) = opts.dscp {
        mark_dscp(&socket, addr, dscp)?;
    }
    if opts.dont_fragment {
        dont_fragment(&socket, addr)?;
    }
    report_icmp_errors(&socket, addr);
    socket.bind(&addr.into())?;
    // `Async::new` makes the socket non-blocking and registers it with the reactor.
    Ok(Async::new(UdpSocket::from(socket))?)
}

#[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
fn reuse_port(socket: &Socket) -> Result<(), Error> {
    socket.set_reuse_port(true)?;
    Ok(())
}

#[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
fn reuse_port(_socket: &Socket) -> Result<(), Error> {
    Err(Error::Unsupported("SO_REUSEPORT"))
}

fn mark_dscp(socket: &Socket, addr: SocketAddr, dscp: u8) -> Result<(), Error> {
    if dscp > 63 {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a DSCP code point is at most 63",
        )));
    }
    // The code point fills the six high bits of the TOS / Traffic Class octet (RFC 2474 §3).
    let octet = u32::from(dscp) << 2;
    if addr.is_ipv4() {
        socket.set_tos_v4(octet)?;
    } else {
        traffic_class(socket, octet)?;
        // IPv4 datagrams of a dual-stack socket are marked too where the system lets us.
        let _ = socket.set_tos_v4(octet);
    }
    Ok(())
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
))]
fn traffic_class(socket: &Socket, octet: u32) -> Result<(), Error> {
    socket.set_tclass_v6(octet)?;
    Ok(())
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
)))]
fn traffic_class(_socket: &Socket, _octet: u32) -> Result<(), Error> {
    Err(Error::Unsupported("IPv6 traffic class"))
}

#[cfg(target_os = "linux")]
fn dont_fragment(socket: &Socket, addr: SocketAddr) -> Result<(), Error> {
    use nix::sys::socket::{setsockopt, sockopt};
    if !addr.is_ipv6() {
        return Err(Error::Unsupported("don't-fragment on IPv4 sockets"));
    }
    setsockopt(socket, sockopt::Ipv6DontFrag, &true).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn dont_fragment(_socket: &Socket, _addr: SocketAddr) -> Result<(), Error> {
    Err(Error::Unsupported("don't-fragment"))
}

/// Linux only reports ICMP errors to an unconnected UDP socket that asks for them
/// (`IP_RECVERR` / `IPV6_RECVERR`); they are then queued with the destination they concern
/// and the driver reads them (see `coap_udp::error_queue_peers`). Best effort: without it,
/// unreachable peers are noticed by timeout.
#[cfg(target_os = "linux")]
fn report_icmp_errors(socket: &Socket, addr: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
    // The IPv4 option also covers the IPv4 traffic of a dual-stack socket.
    let _ = setsockopt(socket, sockopt::Ipv4RecvErr, &true);
    if addr.is_ipv6() {
        let _ = setsockopt(socket, sockopt::Ipv6RecvErr, &true);
    }
}

#[cfg(not(target_os = "linux"))]
fn report_icmp_errors(_socket: &Socket, _addr: SocketAddr) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn options_are_applied_before_bind() {
        let opts = SocketOptions {
            reuse_address: true,
            recv_buffer_size: Some(1 << 20),
            dscp: Some(46),
            ..SocketOptions::default()
        };
        let sock = bind(a("127.0.0.1:0"), &opts).unwrap();
        let s = socket2::SockRef::from(sock.get_ref());
        assert!(s.reuse_address().unwrap());
        assert_eq!(s.tos_v4().unwrap(), 46 << 2);
        let bad = SocketOptions {
            dscp: Some(64),
            ..SocketOptions::default()
        };
        assert!(bind(a("127.0.0.1:0"), &bad).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reuse_port_shares_a_port() {
        let opts = SocketOptions {
            reuse_port: true,
            ..SocketOptions::default()
        };
        let first = bind(a("127.0.0.1:0"), &opts).unwrap();
        let port = first.get_ref().local_addr().unwrap();
        assert!(bind(port, &opts).is_ok());
        assert!(bind(port, &SocketOptions::default()).is_err());
    }
}
