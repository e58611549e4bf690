//! Opening the UDP socket: options set through socket2 before bind, and address helpers.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::Error;

/// The receive buffer asked for by default: large enough to absorb a burst of a few thousand
/// datagrams while the driver is busy. The kernel may grant less (on Linux, `net.core.rmem_max`
/// caps it); [`Client::recv_buffer_size`](crate::Client::recv_buffer_size) tells what it
/// granted.
pub const DEFAULT_RECV_BUFFER: usize = 4 << 20;

/// Options applied to the UDP socket before it is bound.
///
/// The defaults: no address or port reuse, a [`DEFAULT_RECV_BUFFER`] receive buffer, the
/// system's send buffer, dual-stack IPv6 sockets (IPv4 peers reachable through an `[::]`
/// socket where the system allows it), no DSCP marking, the system's fragmentation behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_REUSEADDR`.
    pub reuse_address: bool,
    /// `SO_REUSEPORT` (Unix): several sockets, even in several processes, bind the same
    /// address and port, and the system spreads unicast datagrams over them.
    pub reuse_port: bool,
    /// `SO_RCVBUF` in bytes; `None` keeps the system default.
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` in bytes; `None` keeps the system default.
    pub send_buffer_size: Option<usize>,
    /// `IPV6_V6ONLY` for IPv6 sockets; `None` asks for a dual-stack socket.
    pub only_v6: Option<bool>,
    /// The DSCP code point (0..=63) put in the IPv4 TOS or IPv6 Traffic Class field of every
    /// datagram sent; `None` leaves the field alone.
    pub dscp: Option<u8>,
    /// Set the don't-fragment bit: datagrams larger than the path MTU fail instead of being
    /// fragmented. Supported for IPv6 sockets on Linux; elsewhere binding fails with
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

/// Creates, configures and binds a non-blocking UDP socket.
pub(crate) fn bind(addr: SocketAddr, opts: &SocketOptions) -> Result<UdpSocket, Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        match opts.only_v6 {
            Some(v6only) => socket.set_only_v6(v6only)?,
            // Dual stack is a wish, not a requirement: some systems refuse it.
            None => {
                let _ = socket.set_only_v6(false);
            }
        }
    }
    if opts.reuse_address {
        socket.set_reuse_address(true)?;
    }
    if opts.reuse_port {
        set_reuse_port(&socket)?;
    }
    if let Some(size) = opts.recv_buffer_size {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = opts.send_buffer_size {
        socket.set_send_buffer_size(size)?;
    }
    if let Some(dscp) = opts.dscp {
        if dscp > 63 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "DSCP must be at most 63",
            )));
        }
        set_dscp(&socket, addr, dscp)?;
    }
    if opts.dont_fragment {
        set_dont_fragment(&socket, addr)?;
    }
    enable_error_queue(&socket, addr);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into())?)
}

#[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
fn set_reuse_port(socket: &Socket) -> Result<(), Error> {
    Ok(socket.set_reuse_port(true)?)
}

#[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
fn set_reuse_port(_socket: &Socket) -> Result<(), Error> {
    Err(Error::Unsupported("SO_REUSEPORT"))
}

fn set_dscp(socket: &Socket, addr: SocketAddr, dscp: u8) -> Result<(), Error> {
    // DSCP is the upper six bits of the TOS / Traffic Class octet (RFC 2474 §3).
    let value = u32::from(dscp) << 2;
    if addr.is_ipv4() {
        socket.set_tos_v4(value)?;
        return Ok(());
    }
    set_tclass(socket, value)?;
    // A dual-stack socket sends IPv4 datagrams too; mark those as well where allowed.
    let _ = socket.set_tos_v4(value);
    Ok(())
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
))]
fn set_tclass(socket: &Socket, value: u32) -> Result<(), Error> {
    Ok(socket.set_tclass_v6(value)?)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
)))]
fn set_tclass(_socket: &Socket, _value: u32) -> Result<(), Error> {
    Err(Error::Unsupported("IPv6 traffic class"))
}

#[cfg(target_os = "linux")]
fn set_dont_fragment(socket: &Socket, addr: SocketAddr) -> Result<(), Error> {
    if addr.is_ipv4() {
        return Err(Error::Unsupported("don't-fragment on IPv4 sockets"));
    }
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Ipv6DontFrag, &true)
        .map_err(io::Error::from)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_dont_fragment(_socket: &Socket, _addr: SocketAddr) -> Result<(), Error> {
    Err(Error::Unsupported("don't-fragment"))
}

/// Asks Linux to report ICMP errors on this unconnected socket (`IP_RECVERR`,
/// `IPV6_RECVERR`). Without it, an unconnected UDP socket never learns that a peer's port is
/// closed; with it, the error is queued with the destination it concerns, and the driver turns
/// it into [`Endpoint::handle_unreachable`](coap_proto::Endpoint::handle_unreachable).
#[cfg(target_os = "linux")]
fn enable_error_queue(socket: &Socket, addr: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
    // Best effort: without it, unreachable peers are noticed by timeout instead. The IPv4
    // option also covers IPv4 traffic of a dual-stack IPv6 socket.
    let _ = setsockopt(socket, sockopt::Ipv4RecvErr, &true);
    if addr.is_ipv6() {
        let _ = setsockopt(socket, sockopt::Ipv6RecvErr, &true);
    }
}

#[cfg(not(target_os = "linux"))]
fn enable_error_queue(_socket: &Socket, _addr: SocketAddr) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_reach_the_socket() {
        let opts = SocketOptions {
            reuse_address: true,
            recv_buffer_size: Some(1 << 20),
            send_buffer_size: Some(1 << 18),
            dscp: Some(46),
            ..SocketOptions::default()
        };
        let sock = bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let s = socket2::SockRef::from(&sock);
        assert!(s.reuse_address().unwrap());
        assert!(s.recv_buffer_size().unwrap() > 0);
        assert_eq!(s.tos_v4().unwrap(), 46 << 2);
        let bad = SocketOptions {
            dscp: Some(64),
            ..SocketOptions::default()
        };
        assert!(bind("127.0.0.1:0".parse().unwrap(), &bad).is_err());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn two_sockets_share_a_port_with_reuse_port() {
        let opts = SocketOptions {
            reuse_port: true,
            ..SocketOptions::default()
        };
        let a = bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let port = a.local_addr().unwrap();
        let b = bind(port, &opts).unwrap();
        assert_eq!(b.local_addr().unwrap(), port);
        // Without the option the port is taken.
        assert!(bind(port, &SocketOptions::default()).is_err());
    }
}
