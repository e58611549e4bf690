//! Writing simulated UDP traffic as a pcap capture file.
//!
//! The classic libpcap format: a 24-byte file header, then per packet a 16-byte record header and
//! the packet. The link type is `LINKTYPE_RAW` (101): each packet starts with its IPv4 or IPv6
//! header, which we synthesize, followed by a UDP header and the datagram. Checksums are computed
//! so that Wireshark's validation passes when enabled.

use alloc::string::ToString;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::time::Instant;

/// The environment variable naming the file [`Network::new`](super::Network::new) captures to.
pub const PCAP_ENV_VAR: &str = "COAP_SIM_PCAP";

/// Magic number of a pcap file with microsecond timestamps.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_RAW`: packets begin with an IPv4 or IPv6 header.
const LINKTYPE_RAW: u32 = 101;
/// Largest packet we promise to record whole.
const SNAPLEN: u32 = 65_535;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Writes UDP datagrams as raw-IP packets of a pcap file.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    records: u64,
    packet: Vec<u8>,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header to `out` and returns a writer for the packets.
    pub fn new(mut out: W) -> io::Result<PcapWriter<W>> {
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes()); // version 2.4
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // 8..16: time zone offset and timestamp accuracy, both zero.
        header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter {
            out,
            records: 0,
            packet: Vec::new(),
        })
    }

    /// Records one UDP datagram from `from` to `to`, sent at `at` (microseconds since the origin,
    /// shown as seconds since 1970).
    ///
    /// Addresses of different families are both written as IPv6 (the IPv4 one mapped). Returns
    /// `Ok(false)` without writing if the datagram is too large for one IP packet.
    pub fn write_udp(
        &mut self,
        at: Instant,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> io::Result<bool> {
        self.packet.clear();
        let built = match (from.ip(), to.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => build_ipv4(
                &mut self.packet,
                src.octets(),
                dst.octets(),
                from,
                to,
                payload,
            ),
            (src, dst) => build_ipv6(
                &mut self.packet,
                to_v6(src).octets(),
                to_v6(dst).octets(),
                from,
                to,
                payload,
            ),
        };
        if !built {
            return Ok(false);
        }
        let micros = at.as_micros();
        let secs = u32::try_from(micros / 1_000_000).unwrap_or(u32::MAX);
        // Below one million, so it fits.
        let usecs = (micros % 1_000_000) as u32;
        let len = u32::try_from(self.packet.len()).unwrap_or(u32::MAX);
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&secs.to_le_bytes());
        rec[4..8].copy_from_slice(&usecs.to_le_bytes());
        rec[8..12].copy_from_slice(&len.to_le_bytes()); // captured length
        rec[12..16].copy_from_slice(&len.to_le_bytes()); // original length
        self.out.write_all(&rec)?;
        self.out.write_all(&self.packet)?;
        self.records += 1;
        Ok(true)
    }

    /// Packets written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer (not flushed).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The capture file name for `seed`: `template` with every `{seed}` replaced by the seed.
pub(crate) fn path_for_seed(template: &OsStr, seed: u64) -> PathBuf {
    match template.to_str() {
        Some(s) if s.contains("{seed}") => PathBuf::from(s.replace("{seed}", &seed.to_string())),
        _ => PathBuf::from(template),
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends the UDP header and payload; `pseudo` is the sum of the IP pseudo-header words.
fn push_udp(packet: &mut Vec<u8>, pseudo: u32, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let start = packet.len();
    // The caller checked that the length fits.
    let udp_len = (8 + payload.len()) as u16;
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let sum = pseudo + sum_words(packet.get(start..).unwrap_or(&[]));
    // A computed zero is sent as all ones; zero means "no checksum" (RFC 768).
    let checksum = match fold(sum) {
        0 => 0xffff,
        c => c,
    };
    if let Some(field) = packet.get_mut(start + 6..start + 8) {
        field.copy_from_slice(&checksum.to_be_bytes());
    }
}

fn build_ipv4(
    packet: &mut Vec<u8>,
    src: [u8; 4],
    dst: [u8; 4],
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> bool {
    let Ok(total) = u16::try_from(20 + 8 + payload.len()) else {
        return false;
    };
    let mut ip = [0u8; 20];
    ip[0] = 0x45; // version 4, 5-word header
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = TTL;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let checksum = fold(sum_words(&ip));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&ip);

    let udp_len = u32::from(total) - 20;
    let pseudo = sum_words(&src) + sum_words(&dst) + u32::from(IPPROTO_UDP) + udp_len;
    push_udp(packet, pseudo, from, to, payload);
    true
}

fn build_ipv6(
    packet: &mut Vec<u8>,
    src: [u8; 16],
    dst: [u8; 16],
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> bool {
    let Ok(udp_len) = u16::try_from(8 + payload.len()) else {
        return false;
    };
    let mut ip = [0u8; 40];
    ip[0] = 0x60; // version 6, traffic class and flow label zero
    ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
    ip[6] = IPPROTO_UDP;
    ip[7] = TTL;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    packet.extend_from_slice(&ip);

    let pseudo = sum_words(&src) + sum_words(&dst) + u32::from(udp_len) + u32::from(IPPROTO_UDP);
    push_udp(packet, pseudo, from, to, payload);
    true
}

/// Sum of big-endian 16-bit words (an odd last byte padded with zero), not yet folded.
fn sum_words(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = 0;
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Folds carries into 16 bits and complements: the Internet checksum (RFC 1071).
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
