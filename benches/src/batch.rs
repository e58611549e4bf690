//! Batched datagram I/O on Linux: `recvmmsg` (through nix) and `sendmmsg` (through rustix),
//! without any unsafe code here.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

/// The most datagrams one call moves.
pub const MAX_BATCH: usize = 64;

/// Room for one datagram: enough for anything the tools send or expect on loopback.
pub const SLOT: usize = 2048;

/// Buffers and headers for receiving up to [`MAX_BATCH`] datagrams per system call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    lens: [usize; MAX_BATCH],
    addrs: [Option<SocketAddr>; MAX_BATCH],
    headers: MultiHeaders<SockaddrStorage>,
    count: usize,
    width: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .field("width", &self.width)
            .finish()
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

impl RecvBatch {
    /// Receives at most `width` (capped to [`MAX_BATCH`]) datagrams per call.
    pub fn new(width: usize) -> RecvBatch {
        let width = width.clamp(1, MAX_BATCH);
        RecvBatch {
            bufs: vec![0; MAX_BATCH * SLOT],
            lens: [0; MAX_BATCH],
            addrs: [None; MAX_BATCH],
            headers: MultiHeaders::preallocate(MAX_BATCH, None),
            count: 0,
            width,
        }
    }

    /// Receives what is queued on `socket`: with `wait`, blocks until at least one datagram
    /// is there (`MSG_WAITFORONE`); without, returns `WouldBlock` when none is. Returns the
    /// number received; read them with [`RecvBatch::get`].
    pub fn recv(&mut self, socket: &impl AsRawFd, wait: bool) -> io::Result<usize> {
        self.count = 0;
        let flags = if wait {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let mut chunks = self.bufs.chunks_exact_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
            core::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut().take(self.width),
            flags,
            None,
        )?;
        let mut n = 0;
        for (msg, (len, addr)) in results.zip(self.lens.iter_mut().zip(self.addrs.iter_mut())) {
            *len = msg.bytes.min(SLOT);
            *addr = msg.address.as_ref().and_then(to_std);
            n += 1;
        }
        self.count = n;
        Ok(n)
    }

    /// How many datagrams the last call received.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last call and its source address.
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>)> {
        if i >= self.count {
            return None;
        }
        let len = *self.lens.get(i)?;
        let data = self.bufs.get(i * SLOT..i * SLOT + len)?;
        Some((data, *self.addrs.get(i)?))
    }

    /// Datagram `i` of the last call, mutable, and its source address.
    pub fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], Option<SocketAddr>)> {
        if i >= self.count {
            return None;
        }
        let len = *self.lens.get(i)?;
        let addr = *self.addrs.get(i)?;
        let data = self.bufs.get_mut(i * SLOT..i * SLOT + len)?;
        Some((data, addr))
    }
}

/// Sends `datagrams` on a connected socket with as few `sendmmsg` calls as possible. Returns
/// how many were sent: all of them, or fewer when the socket would block or reported an
/// error after the first ones (an error before any is sent is returned as the error).
pub fn send_connected(socket: &impl AsFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let mut sent = 0;
    for chunk in datagrams.chunks(MAX_BATCH) {
        let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|d| [IoSlice::new(d)]).collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut msgs: Vec<MMsgHdr<'_>> = iovs
            .iter()
            .zip(controls.iter_mut())
            .map(|(iov, ctl)| MMsgHdr::new(iov, ctl))
            .collect();
        match sendmmsg(socket, &mut msgs, SendFlags::DONTWAIT) {
            Ok(n) => {
                sent += n;
                if n < chunk.len() {
                    return Ok(sent);
                }
            }
            Err(e) if sent > 0 => {
                let _ = e;
                return Ok(sent);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}

/// Sends each datagram to its address with as few `sendmmsg` calls as possible, blocking
/// when the socket buffer is full. Returns how many were sent, as [`send_connected`] does.
pub fn send_to_each(socket: &impl AsFd, datagrams: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    let mut sent = 0;
    for chunk in datagrams.chunks(MAX_BATCH) {
        let addrs: Vec<SocketAddrAny> =
            chunk.iter().map(|(_, a)| SocketAddrAny::from(*a)).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(d, _)| [IoSlice::new(d)]).collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut msgs: Vec<MMsgHdr<'_>> = addrs
            .iter()
            .zip(iovs.iter())
            .zip(controls.iter_mut())
            .map(|((addr, iov), ctl)| MMsgHdr::new_with_addr(addr, iov, ctl))
            .collect();
        let mut done = 0;
        while done < msgs.len() {
            match sendmmsg(
                socket,
                msgs.get_mut(done..).unwrap_or_default(),
                SendFlags::empty(),
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                // One bad destination (say, an ICMP error queued for it) must not stop the
                // rest: skip that datagram.
                Err(_) if done + 1 < msgs.len() => done += 1,
                Err(e) if sent + done > 0 => {
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        sent += done;
    }
    Ok(sent)
}

/// The most segments the kernel accepts in one UDP GSO send (`UDP_MAX_SEGMENTS` in Linux
/// 4.18 to 6.x; newer kernels allow more).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Turns on UDP generic segmentation offload (`UDP_SEGMENT`) for every send on `socket`: a
/// buffer longer than `segment` bytes leaves as datagrams of `segment` bytes each (Linux 4.18+).
/// On loopback this saves most of the per-datagram cost of the sender; the receiver still
/// gets ordinary datagrams.
pub fn enable_gso(socket: &impl AsFd, segment: u16) -> io::Result<()> {
    nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::UdpGsoSegment,
        &i32::from(segment),
    )?;
    Ok(())
}

/// Splits back-to-back datagrams (lengths `lens`) into the sends that carry them: a run of
/// consecutive datagrams of exactly `segment` bytes becomes one send of up to
/// [`MAX_GSO_SEGMENTS`] of them; any other datagram is a send of its own. Returns
/// (offset, length) of each send.
pub fn gso_runs(lens: &[usize], segment: Option<usize>, runs: &mut Vec<(usize, usize)>) {
    runs.clear();
    let mut pos = 0;
    let mut run: Option<(usize, usize)> = None;
    for &len in lens {
        let fits = segment == Some(len);
        match run.as_mut() {
            Some((_, n)) if fits && *n < MAX_GSO_SEGMENTS * len => *n += len,
            _ => {
                if let Some(r) = run.take() {
                    runs.push(r);
                }
                if fits {
                    run = Some((pos, len));
                } else {
                    runs.push((pos, len));
                }
            }
        }
        pos += len;
    }
    if let Some(r) = run {
        runs.push(r);
    }
}

/// The local address of a socket bound by nix/rustix helpers, for messages.
pub fn local_addr(socket: &impl AsFd) -> Option<SocketAddr> {
    let any = rustix::net::getsockname(socket).ok()?;
    SocketAddr::try_from(any).ok()
}

/// Returns the socket's receive buffer size as the kernel reports it (twice what was asked,
/// on Linux), after asking for `bytes`; as root the `rmem_max` limit is bypassed.
pub fn grow_recv_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<usize> {
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, bytes).is_err() {
        rustix::net::sockopt::set_socket_recv_buffer_size(socket, bytes)?;
    }
    Ok(rustix::net::sockopt::socket_recv_buffer_size(socket)?)
}

/// Same as [`grow_recv_buffer`] for the send buffer.
pub fn grow_send_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<usize> {
    if rustix::net::sockopt::set_socket_send_buffer_size_force(socket, bytes).is_err() {
        rustix::net::sockopt::set_socket_send_buffer_size(socket, bytes)?;
    }
    Ok(rustix::net::sockopt::socket_send_buffer_size(socket)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batch_round_trip_over_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        assert_eq!(send_connected(&client, &refs).unwrap(), 100);

        let mut batch = RecvBatch::new(MAX_BATCH);
        let mut got = Vec::new();
        while got.len() < 100 {
            let n = batch.recv(&server, true).unwrap();
            assert!((1..=MAX_BATCH).contains(&n));
            for i in 0..n {
                let (d, from) = batch.get(i).unwrap();
                assert_eq!(from, Some(client.local_addr().unwrap()));
                got.push(d.to_vec());
            }
            assert!(batch.get(n).is_none());
        }
        assert_eq!(got, payloads);

        // Nothing left: a non-waiting call would block.
        let e = batch.recv(&server, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        // Answer each to its source.
        let to = client.local_addr().unwrap();
        let answers: Vec<(&[u8], SocketAddr)> = refs.iter().take(3).map(|d| (*d, to)).collect();
        assert_eq!(send_to_each(&server, &answers).unwrap(), 3);
        let n = batch.recv(&client, true).unwrap();
        assert!(n >= 1);
        assert_eq!(batch.get(0).unwrap().0, refs[0]);
        assert_eq!(local_addr(&client), Some(to));
    }

    #[test]
    fn runs_group_equal_datagrams() {
        let mut runs = Vec::new();
        gso_runs(&[10, 10, 10, 4, 10, 7], Some(10), &mut runs);
        assert_eq!(runs, [(0, 30), (30, 4), (34, 10), (44, 7)]);
        gso_runs(&[10, 10], None, &mut runs);
        assert_eq!(runs, [(0, 10), (10, 10)]);
        gso_runs(&vec![3; 130], Some(3), &mut runs);
        assert_eq!(runs, [(0, 192), (192, 192), (384, 6)]);
        gso_runs(&[], Some(3), &mut runs);
        assert!(runs.is_empty());
    }

    #[test]
    fn gso_sends_arrive_as_separate_datagrams() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        if enable_gso(&client, 8).is_err() {
            return; // a kernel without UDP GSO: nothing to check
        }
        let buf: Vec<u8> = (0..40u8).collect();
        let bufs = [&buf[..], &[0xee; 4][..]];
        assert_eq!(send_connected(&client, &bufs).unwrap(), 2);
        let mut batch = RecvBatch::new(MAX_BATCH);
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = batch.recv(&server, true).unwrap();
            for i in 0..n {
                got.push(batch.get(i).unwrap().0.to_vec());
            }
        }
        let want: Vec<Vec<u8>> = buf
            .chunks(8)
            .map(<[u8]>::to_vec)
            .chain([vec![0xee; 4]])
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn buffers_grow() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = grow_recv_buffer(&s, 1 << 20).unwrap();
        assert!(n >= 1 << 16, "receive buffer {n}");
        let n = grow_send_buffer(&s, 1 << 20).unwrap();
        assert!(n >= 1 << 16, "send buffer {n}");
    }
}
