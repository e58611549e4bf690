//! The ceiling: a bare UDP loop that answers every CoAP request with a fixed 2.05 made by
//! rewriting the request's header in place (CON becomes ACK, NON stays NON, same message ID
//! and token, nothing after the token). It does no CoAP work beyond that, so its rate is the
//! most any server can reach with the same socket calls on this machine.
//!
//! ```text
//! udp-echo-ceiling [ADDR] [--threads N] [--batch N] [--rcvbuf BYTES]
//! ```
//!
//! ADDR defaults to 127.0.0.1:5683 (port 0 picks a free one). Datagrams are received with
//! `recvmmsg` and answered with `sendmmsg`, up to `--batch` (default 64) per call. With
//! `--threads N`, N sockets share the port through SO_REUSEPORT, one loop per thread. The
//! bound address is printed on the first line of standard output.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

use coap_benches::batch::{self, RecvBatch, MAX_BATCH};
use coap_benches::wire::ceiling_reply;
use rustix::net::{AddressFamily, SocketType};

struct Opts {
    addr: SocketAddr,
    threads: usize,
    batch: usize,
    rcvbuf: usize,
}

const USAGE: &str = "usage: udp-echo-ceiling [ADDR] [--threads N] [--batch N] [--rcvbuf BYTES]";

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        addr: SocketAddr::from(([127, 0, 0, 1], 5683)),
        threads: 1,
        batch: MAX_BATCH,
        rcvbuf: 4 << 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--threads" => opts.threads = num(&value("--threads")?)?,
            "--batch" => opts.batch = num(&value("--batch")?)?,
            "--rcvbuf" => opts.rcvbuf = num(&value("--rcvbuf")?)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            s if !s.starts_with('-') => {
                opts.addr = s
                    .parse()
                    .map_err(|e| format!("bad address {s}: {e}\n{USAGE}"))?
            }
            s => return Err(format!("unknown option {s}\n{USAGE}")),
        }
    }
    if opts.threads == 0 || opts.batch == 0 {
        return Err(format!("--threads and --batch must be at least 1\n{USAGE}"));
    }
    Ok(opts)
}

fn num(s: &str) -> Result<usize, String> {
    s.parse().map_err(|e| format!("bad number {s}: {e}"))
}

/// A UDP socket bound to `addr`, with SO_REUSEPORT when several loops share the port.
fn bind(addr: SocketAddr, reuse_port: bool, rcvbuf: usize) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    if reuse_port {
        rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    let sock = UdpSocket::from(fd);
    batch::grow_recv_buffer(&sock, rcvbuf)?;
    batch::grow_send_buffer(&sock, rcvbuf)?;
    Ok(sock)
}

fn serve(sock: &UdpSocket, width: usize) -> io::Result<()> {
    let mut rx = RecvBatch::new(width);
    // (index in the batch, answer length, destination)
    let mut answers: Vec<(usize, usize, SocketAddr)> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = match rx.recv(sock, true) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP error for an earlier answer surfaces here; it concerns a peer that went
            // away, not this socket.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        answers.clear();
        for i in 0..n {
            if let Some((buf, Some(from))) = rx.get_mut(i) {
                if let Some(len) = ceiling_reply(buf) {
                    answers.push((i, len, from));
                }
            }
        }
        let out: Vec<(&[u8], SocketAddr)> = answers
            .iter()
            .filter_map(|&(i, len, to)| Some((rx.get(i)?.0.get(..len)?, to)))
            .collect();
        if !out.is_empty() {
            match batch::send_to_each(sock, &out) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let reuse = opts.threads > 1;
    let first = match bind(opts.addr, reuse, opts.rcvbuf) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-echo-ceiling: cannot bind {}: {e}", opts.addr);
            return ExitCode::FAILURE;
        }
    };
    let local = match first.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("udp-echo-ceiling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sockets = vec![first];
    for _ in 1..opts.threads {
        match bind(local, true, opts.rcvbuf) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("udp-echo-ceiling: cannot bind another socket to {local}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "udp-echo-ceiling listening on {local} ({} loop(s))",
        opts.threads
    );
    let width = opts.batch;
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|s| std::thread::spawn(move || serve(&s, width)))
        .collect();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("udp-echo-ceiling: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}
