//! Opening the UDP socket (options through socket2, set before bind) and address forms.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::Error;

/// The receive buffer asked for by default (4 MiB), so a burst of datagrams waits in the
/// kernel while the I/O thread is busy. The kernel may grant less; see
/// [`Client::recv_buffer_size`](crate::Client::recv_buffer_size).
pub const DEFAULT_RECV_BUFFER: usize = 4 << 20;

/// Options applied to the UDP socket before it is bound; the same fields as in `coap-tokio`.
///
/// Defaults: no reuse, a [`DEFAULT_RECV_BUFFER`] receive buffer, the system's send buffer,
/// dual-stack IPv6 where the system allows it, no DSCP, the system's fragmentation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_REUSEADDR`.
    pub reuse_address: bool,
    /// `SO_REUSEPORT` (Unix): sockets share an address and port, and the system spreads
    /// unicast datagrams over them.
    pub reuse_port: bool,
    /// `SO_RCVBUF` in bytes; `None` keeps the system's.
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` in bytes; `None` keeps the system's.
    pub send_buffer_size: Option<usize>,
    /// `IPV6_V6ONLY` for IPv6 sockets; `None` asks for dual stack.
    pub only_v6: Option<bool>,
    /// DSCP code point (0..=63) for every datagram sent.
    pub dscp: Option<u8>,
    /// Don't fragment: oversized datagrams fail instead. IPv6 sockets on Linux only;
    /// elsewhere binding fails with [`Error::Unsupported`].
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
            Some(only) => socket.set_only_v6(only)?,
            None => {
                // Dual stack where the system agrees; not an error where it does not.
                let _ = socket.set_only_v6(false);
            }
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
        if dscp > 63 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a DSCP code point is at most 63",
            )));
        }
        // The upper six bits of the TOS / Traffic Class octet (RFC 2474 §3).
        let tos = u32::from(dscp) << 2;
        if addr.is_ipv4() {
            socket.set_tos_v4(tos)?;
        } else {
            traffic_class(&socket, tos)?;
            let _ = socket.set_tos_v4(tos);
        }
    }
    if opts.dont_fragment {
        dont_fragment(&socket, addr)?;
    }
    report_icmp_errors(&socket, addr);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
fn reuse_port(socket: &Socket) -> Result<(), Error> {
    Ok(socket.set_reuse_port(true)?)
}

#[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
fn reuse_port(_socket: &Socket) -> Result<(), Error> {
    Err(Error::Unsupported("SO_REUSEPORT"))
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
))]
fn traffic_class(socket: &Socket, value: u32) -> Result<(), Error> {
    Ok(socket.set_tclass_v6(value)?)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
)))]
fn traffic_class(_socket: &Socket, _value: u32) -> Result<(), Error> {
    Err(Error::Unsupported("IPv6 traffic class"))
}

#[cfg(target_os = "linux")]
fn dont_fragment(socket: &Socket, addr: SocketAddr) -> Result<(), Error> {
    if addr.is_ipv4() {
        return Err(Error::Unsupported("don't-fragment on IPv4 sockets"));
    }
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Ipv6DontFrag, &true)
        .map_err(io::Error::from)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn dont_fragment(_socket: &Socket, _addr: SocketAddr) -> Result<(), Error> {
    Err(Error::Unsupported("don't-fragment"))
}

/// Linux: queue ICMP errors on this unconnected socket (`IP_RECVERR`), each with the
/// destination it concerns, so a closed port is noticed at once. Best effort.
#[cfg(target_os = "linux")]
fn report_icmp_errors(socket: &Socket, addr: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
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

    #[test]
    fn options_are_applied_before_bind() {
        let opts = SocketOptions {
            reuse_address: true,
            dscp: Some(46),
            ..SocketOptions::default()
        };
        let socket = bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let s = socket2::SockRef::from(&socket);
        assert!(s.reuse_address().unwrap());
        assert_eq!(s.tos_v4().unwrap(), 46 << 2);
        let bad = SocketOptions {
            dscp: Some(64),
            ..SocketOptions::default()
        };
        assert!(bind("127.0.0.1:0".parse().unwrap(), &bad).is_err());
    }
}
