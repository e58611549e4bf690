//! `coap-bench`: a loopback load generator for CoAP servers.
//!
//! One thread drives many client sockets through epoll (run it pinned to a core of its own
//! with `taskset`). Each socket keeps `--outstanding` requests in flight: every response (or
//! timeout) immediately sends the next request. Requests are never retransmitted: a request
//! without an answer after `--timeout` counts as a timeout and its place is taken by a new one.
//!
//! Message IDs: each socket uses each of its 65 536 IDs at most once and then hands its place
//! to a fresh socket on a new endpoint (see `coap_benches::ids`), so no ID is reused towards
//! the server within EXCHANGE_LIFETIME. For IPv4 targets every socket binds to a random
//! address in 127.0.0.0/8.
//!
//! Observe mode (`--observe N`) registers N observers (GET with Observe: 0) and counts the
//! notifications they receive, while trigger requests (PUT by default, to the same URI, with
//! a 10-digit sequence number as payload) change the resource in a closed loop. When a
//! notification carries that sequence number back, the time from the trigger's send to the
//! notification's arrival is its fan-out latency. CON notifications are acknowledged.
//!
//! Only loopback targets are accepted, and the run always ends by itself: a watchdog ends the
//! process if the loop overruns its deadline.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use coap_benches::batch::{self, RecvBatch, MAX_BATCH};
use coap_benches::cli::{
    count, cpu_time, finish, hist_json, hist_text, json_escape, loopback_uri, seconds, usage_exit,
    watchdog,
};
use coap_benches::hist::Histogram;
use coap_benches::ids::{
    random_loopback_v4, EndpointLedger, MidSpace, SplitMix, EXCHANGE_LIFETIME,
};
use coap_benches::wire::{classify, empty_ack, token_u32, Incoming, RequestTemplate, TOKEN_LEN};
use coap_proto::msg::{Code, Message, MessageType, Token};
use coap_proto::uri::CoapUri;
use rustix::event::epoll;

const USAGE: &str = "\
usage: coap-bench [OPTIONS] URI

  URI                        coap://127.0.0.1:5683/path (loopback only: 127.0.0.0/8 or [::1])

load:
  -m, --method M             GET (default), PUT, POST, DELETE, FETCH
  -t, --type T               con (default) or non
  -p, --payload N            request payload bytes (default 0)
  -c, --clients N            client sockets, each its own endpoint (default 4)
  -o, --outstanding N        requests in flight per socket (default 4)
  -d, --duration S           measured seconds (default 5, at most 3600)
  -w, --warmup S             seconds before measuring (default 1)
      --timeout MS           a request unanswered this long is a timeout (default 1000)
      --mids-per-socket N    move to a fresh socket after N message IDs (default 65536)
      --same-source          bind every socket to 127.0.0.1 / ::1 (default: random 127.x.y.z)
      --spin                 busy-poll instead of sleeping in epoll_wait
      --no-gso               one datagram per send even when several requests leave together
                             (by default a socket with -o > 1 uses UDP GSO, Linux 4.18+)

observe:
      --observe N            register N observers on URI and count notifications
      --observers-per-socket N  observers sharing one socket, distinct tokens (default 1;
                             coap-rs keeps only one observation per client address and path)
      --trigger M            PUT (default), POST or none: request that changes the resource
      --trigger-uri URI      where triggers go (default: URI)
      --trigger-outstanding N   triggers in flight (default 1)

output:
      --json                 one JSON object on stdout
      --label TEXT           copied into the JSON output
";

/// How often outstanding requests are checked for timeouts.
const SCAN_EVERY: Duration = Duration::from_millis(10);
/// Receive buffer asked for on every client socket.
const CLIENT_RCVBUF: usize = 1 << 20;
/// Width of the sequence number a trigger carries.
const SEQ_DIGITS: usize = 10;
/// epoll data values at or above this name observer sockets.
const OBSERVER_BASE: u64 = 1 << 32;

#[derive(Clone, Debug)]
struct Args {
    uri: CoapUri,
    target: SocketAddr,
    method: Code,
    mtype: MessageType,
    payload: usize,
    clients: usize,
    outstanding: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    mids_per_socket: u32,
    same_source: bool,
    spin: bool,
    gso: bool,
    observe: Option<usize>,
    observers_per_socket: usize,
    trigger: Option<Code>,
    trigger_uri: Option<CoapUri>,
    trigger_outstanding: usize,
    json: bool,
    label: String,
}

fn parse_method(s: &str) -> Result<Code, String> {
    match s.to_ascii_uppercase().as_str() {
        "GET" => Ok(Code::GET),
        "PUT" => Ok(Code::PUT),
        "POST" => Ok(Code::POST),
        "DELETE" => Ok(Code::DELETE),
        "FETCH" => Ok(Code::FETCH),
        _ => Err(format!("unknown method {s}")),
    }
}

fn method_name(c: Code) -> &'static str {
    match c {
        Code::GET => "GET",
        Code::PUT => "PUT",
        Code::POST => "POST",
        Code::DELETE => "DELETE",
        Code::FETCH => "FETCH",
        _ => "?",
    }
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut uri = None;
    let mut a = Args {
        uri: CoapUri::parse("coap://127.0.0.1/").map_err(|e| e.to_string())?,
        target: SocketAddr::from(([127, 0, 0, 1], 5683)),
        method: Code::GET,
        mtype: MessageType::Con,
        payload: 0,
        clients: 4,
        outstanding: 4,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        timeout: Duration::from_millis(1000),
        mids_per_socket: 1 << 16,
        same_source: false,
        spin: false,
        gso: true,
        observe: None,
        observers_per_socket: 1,
        trigger: Some(Code::PUT),
        trigger_uri: None,
        trigger_outstanding: 1,
        json: false,
        label: String::new(),
    };
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "-m" | "--method" => a.method = parse_method(&value()?)?,
            "-t" | "--type" => {
                a.mtype = match value()?.to_ascii_lowercase().as_str() {
                    "con" => MessageType::Con,
                    "non" => MessageType::Non,
                    other => return Err(format!("--type is con or non, not {other}")),
                }
            }
            "-p" | "--payload" => a.payload = count(&value()?)?,
            "-c" | "--clients" => a.clients = count(&value()?)?,
            "-o" | "--outstanding" => a.outstanding = count(&value()?)?,
            "-d" | "--duration" => a.duration = seconds(&value()?)?,
            "-w" | "--warmup" => a.warmup = seconds(&value()?)?,
            "--timeout" => a.timeout = Duration::from_millis(count(&value()?)? as u64),
            "--mids-per-socket" => {
                let n = count(&value()?)?;
                if !(1..=1 << 16).contains(&n) {
                    return Err("--mids-per-socket is 1..=65536".into());
                }
                a.mids_per_socket = n as u32;
            }
            "--same-source" => a.same_source = true,
            "--spin" => a.spin = true,
            "--no-gso" => a.gso = false,
            "--observe" => a.observe = Some(count(&value()?)?),
            "--observers-per-socket" => a.observers_per_socket = count(&value()?)?,
            "--trigger" => {
                let v = value()?;
                a.trigger = if v.eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(parse_method(&v)?)
                };
            }
            "--trigger-uri" => a.trigger_uri = Some(loopback_uri(&value()?)?.0),
            "--trigger-outstanding" => a.trigger_outstanding = count(&value()?)?,
            "--json" => a.json = true,
            "--label" => a.label = value()?,
            "-h" | "--help" => return Err(String::new()),
            s if !s.starts_with('-') && uri.is_none() => uri = Some(loopback_uri(s)?),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    let (u, target) = uri.ok_or("a target URI is required")?;
    a.uri = u;
    a.target = target;
    if let Some(t) = &a.trigger_uri {
        let addr = t.socket_addr_hint().ok_or("bad --trigger-uri")?;
        if addr != target {
            return Err("--trigger-uri must name the same server as URI".into());
        }
    }
    if a.clients == 0 || a.outstanding == 0 || a.observers_per_socket == 0 {
        return Err(
            "--clients, --outstanding and --observers-per-socket must be at least 1".into(),
        );
    }
    if a.outstanding > usize::from(u16::MAX) || a.observers_per_socket > usize::from(u16::MAX) {
        return Err("at most 65535 requests or observers per socket".into());
    }
    if a.observe == Some(0) {
        return Err("--observe needs at least 1 observer".into());
    }
    if a.observe.is_some() && a.trigger.is_some() && a.trigger_outstanding == 0 {
        return Err("--trigger-outstanding must be at least 1".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be above 0".into());
    }
    Ok(a)
}

/// What is counted during the measured window.
#[derive(Clone, Debug)]
struct Stats {
    sent: u64,
    completed: u64,
    codes: [u64; 256],
    timeouts: u64,
    resets: u64,
    empty_acks: u64,
    unmatched: u64,
    malformed: u64,
    unexpected: u64,
    send_errors: u64,
    refused: u64,
    latency: Histogram,
    // observe
    notifications: u64,
    unattributed: u64,
    duplicates: u64,
    lost: u64,
    fanout: Histogram,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            sent: 0,
            completed: 0,
            codes: [0; 256],
            timeouts: 0,
            resets: 0,
            empty_acks: 0,
            unmatched: 0,
            malformed: 0,
            unexpected: 0,
            send_errors: 0,
            refused: 0,
            latency: Histogram::new(),
            notifications: 0,
            unattributed: 0,
            duplicates: 0,
            lost: 0,
            fanout: Histogram::new(),
        }
    }

    fn non_2xx(&self) -> u64 {
        self.codes
            .iter()
            .enumerate()
            .filter(|(c, _)| Code::from_u8(*c as u8).class() != 2)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One request slot of a socket.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    busy: bool,
    gen: u16,
    mid: u16,
    sent: u64,
    seq: u32,
}

/// A client socket and its requests in flight.
struct Conn {
    sock: UdpSocket,
    local: SocketAddr,
    mids: MidSpace,
    slots: Vec<Slot>,
    free: Vec<u16>,
    in_flight: usize,
    lane: usize,
    retired: bool,
    /// Whether UDP GSO is on: runs of requests leave in one segmented send.
    gso: bool,
    /// Datagrams waiting for the next flush, back to back, and their lengths.
    out: Vec<u8>,
    out_lens: Vec<usize>,
    /// Slots whose send time is taken at the next flush.
    stamp: Vec<u16>,
}

/// Observer sockets: the observers sharing one socket, by slot.
struct ObsConn {
    sock: UdpSocket,
    mids: MidSpace,
    observers: Vec<Observer>,
    out: Vec<u8>,
    out_lens: Vec<usize>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ObsState {
    #[default]
    Idle,
    Registering,
    Registered,
    Failed,
}

#[derive(Clone, Copy, Debug, Default)]
struct Observer {
    state: ObsState,
    gen: u16,
    mid: u16,
    sent: u64,
    attempts: u8,
    last_notification_mid: Option<u16>,
    notified: bool,
}

/// The run: sockets, the epoll set, counters.
struct Bench {
    args: Args,
    t0: Instant,
    epfd: OwnedFd,
    rng: SplitMix,
    ledger: EndpointLedger,
    template: RequestTemplate,
    /// Whether the template carries a sequence number to patch (triggers).
    sequenced: bool,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    /// The socket each lane currently sends on.
    lanes: Vec<usize>,
    /// Requests each lane keeps in flight.
    per_lane: usize,
    dirty: Vec<usize>,
    obs: Vec<ObsConn>,
    obs_dirty: Vec<usize>,
    obs_template: Option<RequestTemplate>,
    /// Send time of each trigger, by sequence number modulo the ring size.
    seq_times: Vec<(u32, u64)>,
    next_seq: u32,
    measuring: bool,
    issuing: bool,
    stats: Stats,
    rotations: u64,
    timeout_ns: u64,
    /// Scratch space for [`send_all`].
    runs: Vec<(usize, usize)>,
}

fn now_ns(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

impl Bench {
    fn new(args: Args, template: RequestTemplate, sequenced: bool) -> io::Result<Bench> {
        let epfd = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_err)?;
        let timeout_ns = args.timeout.as_nanos() as u64;
        Ok(Bench {
            args,
            t0: Instant::now(),
            epfd,
            rng: SplitMix::from_entropy(),
            ledger: EndpointLedger::new(EXCHANGE_LIFETIME),
            template,
            sequenced,
            conns: Vec::new(),
            free_conns: Vec::new(),
            lanes: Vec::new(),
            per_lane: 0,
            dirty: Vec::new(),
            obs: Vec::new(),
            obs_dirty: Vec::new(),
            obs_template: None,
            seq_times: vec![(u32::MAX, 0); 1 << 16],
            next_seq: 1,
            measuring: false,
            issuing: true,
            stats: Stats::new(),
            rotations: 0,
            timeout_ns,
            runs: Vec::new(),
        })
    }

    fn now(&self) -> u64 {
        now_ns(self.t0)
    }

    /// A socket on a fresh endpoint, connected to the target.
    fn open_socket(&mut self) -> io::Result<(UdpSocket, SocketAddr)> {
        let mut refused = Vec::new();
        for _ in 0..64 {
            let ip = match (self.args.target.ip(), self.args.same_source) {
                (IpAddr::V4(_), false) => IpAddr::V4(random_loopback_v4(&mut self.rng)),
                (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                (IpAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
            let local = sock.local_addr()?;
            let now = Duration::from_nanos(self.now());
            if !self.ledger.is_fresh(local, now) {
                // Keep it open until we have a fresh one, so the kernel hands out another.
                refused.push(sock);
                continue;
            }
            sock.connect(self.args.target)?;
            sock.set_nonblocking(true)?;
            let _ = batch::grow_recv_buffer(&sock, CLIENT_RCVBUF);
            return Ok((sock, local));
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no fresh client endpoint after 64 tries",
        ))
    }

    /// Opens a request socket for `lane` and returns its index.
    fn open_conn(&mut self, lane: usize, slots: usize) -> io::Result<usize> {
        let (sock, local) = self.open_socket()?;
        // GSO only pays when several requests leave together.
        let gso = self.args.gso
            && slots > 1
            && u16::try_from(self.template.len())
                .is_ok_and(|seg| batch::enable_gso(&sock, seg).is_ok());
        let idx = self.free_conns.pop().unwrap_or(self.conns.len());
        epoll::add(
            &self.epfd,
            &sock,
            epoll::EventData::new_u64(idx as u64),
            epoll::EventFlags::IN,
        )
        .map_err(io_err)?;
        let mut mids = MidSpace::new(self.rng.next_u16());
        // Use only the first `mids_per_socket` IDs of the space.
        for _ in self.args.mids_per_socket..(1 << 16) {
            mids.next_id();
        }
        let conn = Conn {
            sock,
            local,
            mids,
            slots: vec![Slot::default(); slots],
            free: (0..slots as u16).rev().collect(),
            in_flight: 0,
            lane,
            retired: false,
            gso,
            out: Vec::with_capacity(slots * (self.template.len() + 4)),
            out_lens: Vec::with_capacity(slots),
            stamp: Vec::with_capacity(slots),
        };
        if idx == self.conns.len() {
            self.conns.push(Some(conn));
        } else if let Some(c) = self.conns.get_mut(idx) {
            *c = Some(conn);
        }
        Ok(idx)
    }

    fn close_conn(&mut self, idx: usize) {
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::take) {
            let now = Duration::from_nanos(self.now());
            self.ledger.retire(conn.local, now);
            let _ = epoll::delete(&self.epfd, &conn.sock);
            self.free_conns.push(idx);
        }
    }

    /// Queues the next request of `lane`, moving the lane to a fresh socket when the current
    /// one has used up its message IDs.
    fn issue(&mut self, lane: usize) -> io::Result<()> {
        if !self.issuing {
            return Ok(());
        }
        let Some(&idx) = self.lanes.get(lane) else {
            return Ok(());
        };
        let exhausted = self
            .conns
            .get(idx)
            .and_then(Option::as_ref)
            .is_none_or(|c| c.mids.remaining() == 0);
        let idx = if exhausted {
            let new = self.open_conn(lane, self.per_lane)?;
            self.rotations += 1;
            if let Some(old) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                old.retired = true;
                if old.in_flight == 0 {
                    self.close_conn(idx);
                }
            }
            if let Some(l) = self.lanes.get_mut(lane) {
                *l = new;
            }
            new
        } else {
            idx
        };
        let seq = if self.sequenced {
            let s = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1) % 10u32.pow(9);
            s
        } else {
            0
        };
        let now = self.now();
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return Ok(());
        };
        let (Some(s), Some(mid)) = (conn.free.pop(), conn.mids.next_id()) else {
            return Ok(());
        };
        let Some(slot) = conn.slots.get_mut(usize::from(s)) else {
            return Ok(());
        };
        slot.busy = true;
        slot.gen = slot.gen.wrapping_add(1);
        slot.mid = mid;
        slot.sent = now;
        slot.seq = seq;
        let token = (u32::from(s) << 16) | u32::from(slot.gen);
        let start = conn.out.len();
        self.template.push(&mut conn.out, mid, token);
        if self.sequenced {
            let end = conn.out.len();
            if let Some(digits) = conn.out.get_mut(end - SEQ_DIGITS..end) {
                write_digits(digits, seq);
            }
        }
        conn.out_lens.push(conn.out.len() - start);
        conn.stamp.push(s);
        conn.in_flight += 1;
        if conn.out_lens.len() == 1 {
            self.dirty.push(idx);
        }
        if self.measuring {
            self.stats.sent += 1;
        }
        Ok(())
    }

    /// Sends everything queued on request sockets.
    fn flush(&mut self) {
        let now = self.now();
        for idx in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            for &s in &conn.stamp {
                if let Some(slot) = conn.slots.get_mut(usize::from(s)) {
                    slot.sent = now;
                    if self.sequenced {
                        if let Some(e) = self.seq_times.get_mut(slot.seq as usize & 0xffff) {
                            *e = (slot.seq, now);
                        }
                    }
                }
            }
            conn.stamp.clear();
            let gso = conn.gso.then_some(self.template.len());
            let (lost, refused) =
                send_all(&conn.sock, &conn.out, &conn.out_lens, gso, &mut self.runs);
            if self.measuring {
                self.stats.send_errors += lost;
                self.stats.refused += u64::from(refused);
            }
            conn.out.clear();
            conn.out_lens.clear();
        }
        for idx in std::mem::take(&mut self.obs_dirty) {
            let Some(oc) = self.obs.get_mut(idx) else {
                continue;
            };
            let (lost, refused) = send_all(&oc.sock, &oc.out, &oc.out_lens, None, &mut self.runs);
            if self.measuring {
                self.stats.send_errors += lost;
                self.stats.refused += u64::from(refused);
            }
            oc.out.clear();
            oc.out_lens.clear();
        }
    }

    /// A request finished (answered, reset or timed out): free its slot and send the next.
    fn finish(&mut self, idx: usize, s: u16) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return Ok(());
        };
        let Some(slot) = conn.slots.get_mut(usize::from(s)) else {
            return Ok(());
        };
        slot.busy = false;
        conn.free.push(s);
        conn.in_flight -= 1;
        let lane = conn.lane;
        let close = conn.retired && conn.in_flight == 0;
        if close {
            self.close_conn(idx);
        }
        self.issue(lane)
    }

    fn queue_ack(&mut self, idx: usize, mid: u16) {
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
            conn.out.extend_from_slice(&empty_ack(mid));
            conn.out_lens.push(4);
            if conn.out_lens.len() == 1 {
                self.dirty.push(idx);
            }
        }
    }

    fn on_request_datagram(&mut self, idx: usize, d: &[u8], now: u64) -> io::Result<()> {
        match classify(d) {
            Incoming::Response {
                mtype,
                mid,
                token,
                code,
                ..
            } => {
                if mtype == MessageType::Con {
                    self.queue_ack(idx, mid);
                }
                let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) else {
                    return Ok(());
                };
                let found = token_u32(token).and_then(|t| {
                    let s = (t >> 16) as u16;
                    let slot = conn.slots.get(usize::from(s))?;
                    let ok = slot.busy
                        && slot.gen == t as u16
                        && (mtype != MessageType::Ack || slot.mid == mid);
                    ok.then_some((s, slot.sent))
                });
                match found {
                    Some((s, sent)) => {
                        if self.measuring {
                            self.stats.completed += 1;
                            self.stats.latency.record(now.saturating_sub(sent));
                            if let Some(c) = self.stats.codes.get_mut(usize::from(code.to_u8())) {
                                *c += 1;
                            }
                        }
                        self.finish(idx, s)?;
                    }
                    None => self.stats.unmatched += u64::from(self.measuring),
                }
            }
            Incoming::EmptyAck { mid } => {
                let known = self
                    .conns
                    .get(idx)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| c.slots.iter().any(|s| s.busy && s.mid == mid));
                if self.measuring {
                    if known {
                        self.stats.empty_acks += 1;
                    } else {
                        self.stats.unmatched += 1;
                    }
                }
            }
            Incoming::Reset { mid } => {
                let found = self.conns.get(idx).and_then(Option::as_ref).and_then(|c| {
                    c.slots
                        .iter()
                        .position(|s| s.busy && s.mid == mid)
                        .map(|p| p as u16)
                });
                match found {
                    Some(s) => {
                        self.stats.resets += u64::from(self.measuring);
                        self.finish(idx, s)?;
                    }
                    None => self.stats.unmatched += u64::from(self.measuring),
                }
            }
            Incoming::Unexpected { .. } => self.stats.unexpected += u64::from(self.measuring),
            Incoming::Malformed => self.stats.malformed += u64::from(self.measuring),
        }
        Ok(())
    }

    fn on_observer_datagram(&mut self, oi: usize, d: &[u8], now: u64) {
        let measuring = self.measuring;
        let Some(oc) = self.obs.get_mut(oi) else {
            return;
        };
        let Incoming::Response {
            mtype,
            mid,
            token,
            code,
            observe,
            payload,
        } = classify(d)
        else {
            match classify(d) {
                Incoming::Malformed => self.stats.malformed += u64::from(measuring),
                _ => self.stats.unexpected += u64::from(measuring),
            }
            return;
        };
        if mtype == MessageType::Con {
            oc.out.extend_from_slice(&empty_ack(mid));
            oc.out_lens.push(4);
            if oc.out_lens.len() == 1 {
                self.obs_dirty.push(oi);
            }
        }
        let Some(t) = token_u32(token) else {
            self.stats.unmatched += u64::from(measuring);
            return;
        };
        let Some(ob) = oc.observers.get_mut((t >> 16) as usize) else {
            self.stats.unmatched += u64::from(measuring);
            return;
        };
        if ob.gen != t as u16 {
            self.stats.unmatched += u64::from(measuring);
            return;
        }
        match ob.state {
            ObsState::Registering => {
                if mtype == MessageType::Ack && mid != ob.mid {
                    return;
                }
                ob.state = if code.is_success() && observe.is_some() {
                    ObsState::Registered
                } else {
                    ObsState::Failed
                };
                ob.last_notification_mid = None;
                let _ = now;
            }
            ObsState::Registered => {
                if !code.is_success() || observe.is_none() {
                    // RFC 7641 §3.2: a response without Observe ends the observation.
                    ob.state = ObsState::Failed;
                    self.stats.lost += u64::from(measuring);
                    return;
                }
                if mtype == MessageType::Con && ob.last_notification_mid == Some(mid) {
                    self.stats.duplicates += u64::from(measuring);
                    return;
                }
                ob.last_notification_mid = Some(mid);
                if !measuring {
                    return;
                }
                ob.notified = true;
                self.stats.notifications += 1;
                let at = parse_digits(payload).and_then(|seq| {
                    let (s, t) = *self.seq_times.get(seq as usize & 0xffff)?;
                    (s == seq).then_some(t)
                });
                match at {
                    Some(t) => self.stats.fanout.record(now.saturating_sub(t)),
                    None => self.stats.unattributed += 1,
                }
            }
            ObsState::Idle | ObsState::Failed => self.stats.unmatched += u64::from(measuring),
        }
    }

    /// Receives what is queued on the socket named by `key` and handles it.
    fn on_readable(&mut self, rx: &mut RecvBatch, key: u64) -> io::Result<()> {
        for _ in 0..4 {
            let res = if key >= OBSERVER_BASE {
                match self.obs.get((key - OBSERVER_BASE) as usize) {
                    Some(oc) => rx.recv(&oc.sock, false),
                    None => return Ok(()),
                }
            } else {
                match self.conns.get(key as usize).and_then(Option::as_ref) {
                    Some(c) => rx.recv(&c.sock, false),
                    None => return Ok(()),
                }
            };
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    self.stats.refused += u64::from(self.measuring);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = self.now();
            for i in 0..n {
                let Some((d, _)) = rx.get(i) else { continue };
                if key >= OBSERVER_BASE {
                    self.on_observer_datagram((key - OBSERVER_BASE) as usize, d, now);
                } else {
                    self.on_request_datagram(key as usize, d, now)?;
                }
            }
            if n < MAX_BATCH {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Ends requests unanswered for longer than the timeout, replacing each with a new one.
    fn scan_timeouts(&mut self) -> io::Result<()> {
        let now = self.now();
        let mut expired = Vec::new();
        for (idx, conn) in self.conns.iter().enumerate() {
            let Some(conn) = conn else { continue };
            for (s, slot) in conn.slots.iter().enumerate() {
                if slot.busy && now.saturating_sub(slot.sent) > self.timeout_ns {
                    expired.push((idx, s as u16));
                }
            }
        }
        for (idx, s) in expired {
            self.stats.timeouts += u64::from(self.measuring);
            self.finish(idx, s)?;
        }
        Ok(())
    }

    /// One round of the event loop: wait at most `wait`, handle what is ready, flush.
    fn turn(
        &mut self,
        rx: &mut RecvBatch,
        events: &mut Vec<epoll::Event>,
        wait: Duration,
    ) -> io::Result<()> {
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos() as _,
        };
        events.clear();
        match epoll::wait(
            &self.epfd,
            rustix::buffer::spare_capacity(events),
            Some(&ts),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for i in 0..events.len() {
            let Some(ev) = events.get(i) else { break };
            let key = ev.data.u64();
            self.on_readable(rx, key)?;
        }
        self.flush();
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // observe mode

    fn open_observers(&mut self, n: usize) -> io::Result<()> {
        let per = self.args.observers_per_socket;
        let mut left = n;
        while left > 0 {
            let k = left.min(per);
            left -= k;
            let (sock, _) = self.open_socket()?;
            let oi = self.obs.len();
            epoll::add(
                &self.epfd,
                &sock,
                epoll::EventData::new_u64(OBSERVER_BASE + oi as u64),
                epoll::EventFlags::IN,
            )
            .map_err(io_err)?;
            self.obs.push(ObsConn {
                sock,
                mids: MidSpace::new(self.rng.next_u16()),
                observers: vec![Observer::default(); k],
                out: Vec::new(),
                out_lens: Vec::new(),
            });
        }
        Ok(())
    }

    /// Sends a registration for observer `s` of socket `oi`.
    fn register(&mut self, oi: usize, s: usize) {
        let now = self.now();
        let Some(tpl) = self.obs_template.as_ref() else {
            return;
        };
        let Some(oc) = self.obs.get_mut(oi) else {
            return;
        };
        let Some(mid) = oc.mids.next_id() else {
            return;
        };
        let Some(ob) = oc.observers.get_mut(s) else {
            return;
        };
        ob.state = ObsState::Registering;
        ob.gen = ob.gen.wrapping_add(1);
        ob.mid = mid;
        ob.sent = now;
        ob.attempts += 1;
        let start = oc.out.len();
        tpl.push(&mut oc.out, mid, ((s as u32) << 16) | u32::from(ob.gen));
        oc.out_lens.push(oc.out.len() - start);
        if oc.out_lens.len() == 1 {
            self.obs_dirty.push(oi);
        }
    }

    /// Registers every observer, at most `window` registrations in flight, retrying each up
    /// to three times. Returns (registered, failed).
    fn register_all(
        &mut self,
        rx: &mut RecvBatch,
        events: &mut Vec<epoll::Event>,
        deadline: Instant,
    ) -> io::Result<(usize, usize)> {
        let window: usize = 64;
        loop {
            let now = self.now();
            let mut in_flight = 0;
            let mut todo = Vec::new();
            let mut registered = 0;
            let mut failed = 0;
            for (oi, oc) in self.obs.iter_mut().enumerate() {
                for (s, ob) in oc.observers.iter_mut().enumerate() {
                    match ob.state {
                        ObsState::Registered => registered += 1,
                        ObsState::Failed => failed += 1,
                        ObsState::Registering => {
                            if now.saturating_sub(ob.sent) > self.timeout_ns {
                                if ob.attempts >= 3 {
                                    ob.state = ObsState::Failed;
                                    failed += 1;
                                } else {
                                    todo.push((oi, s));
                                }
                            } else {
                                in_flight += 1;
                            }
                        }
                        ObsState::Idle => todo.push((oi, s)),
                    }
                }
            }
            let total: usize = self.obs.iter().map(|o| o.observers.len()).sum();
            if registered + failed == total || Instant::now() >= deadline {
                return Ok((registered, failed));
            }
            for (oi, s) in todo.into_iter().take(window.saturating_sub(in_flight)) {
                self.register(oi, s);
            }
            self.flush();
            self.turn(rx, events, Duration::from_millis(5))?;
        }
    }
}

/// Writes `v` as zero-padded decimal digits filling `out`.
fn write_digits(out: &mut [u8], mut v: u32) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Reads a payload of ASCII digits (at most [`SEQ_DIGITS`] of them) as a number.
fn parse_digits(p: &[u8]) -> Option<u32> {
    if p.is_empty() || p.len() > SEQ_DIGITS || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(p)
        .ok()?
        .parse::<u64>()
        .ok()
        .map(|v| v as u32)
}

/// Sends the back-to-back datagrams of `out` (lengths in `lens`) on a connected socket; with
/// `gso`, runs of datagrams of that size go out as one segmented send each. Returns how many
/// datagrams could not be sent, and whether the server refused them (ICMP port unreachable).
fn send_all(
    sock: &UdpSocket,
    out: &[u8],
    lens: &[usize],
    gso: Option<usize>,
    runs: &mut Vec<(usize, usize)>,
) -> (u64, bool) {
    batch::gso_runs(lens, gso, runs);
    let parts: Vec<&[u8]> = runs
        .iter()
        .filter_map(|&(at, len)| out.get(at..at + len))
        .collect();
    let datagrams = |r: &[(usize, usize)]| -> u64 {
        r.iter()
            .map(|&(_, len)| match gso {
                Some(seg) if seg > 0 && len > seg => len.div_ceil(seg) as u64,
                _ => 1,
            })
            .sum()
    };
    match batch::send_connected(sock, &parts) {
        Ok(n) => (datagrams(runs.get(n..).unwrap_or_default()), false),
        Err(e) => (
            datagrams(runs),
            e.kind() == io::ErrorKind::ConnectionRefused,
        ),
    }
}

/// Raises the open-file limit to its maximum: observe mode may open thousands of sockets.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

fn build_request(
    args: &Args,
    uri: &CoapUri,
    code: Code,
    mtype: MessageType,
    payload: &[u8],
) -> Result<RequestTemplate, String> {
    let mut m = Message::new(mtype, code, 0);
    m.token = Token::new(&[0; TOKEN_LEN]);
    uri.to_options_for(&mut m.options, args.target);
    m.payload = bytes::Bytes::copy_from_slice(payload);
    RequestTemplate::new(&m).map_err(|e| e.to_string())
}

struct Outcome {
    stats: Stats,
    window: Duration,
    cpu: Duration,
    rotations: u64,
    registered: usize,
    registration_failed: usize,
    observers_notified: usize,
}

fn run(args: Args) -> Result<Outcome, String> {
    raise_fd_limit();
    let observe = args.observe;
    // The request template: the load itself, or the observe mode's trigger.
    let (template, sequenced) = match (observe, args.trigger) {
        (None, _) => {
            let payload = vec![b'x'; args.payload];
            (
                build_request(&args, &args.uri, args.method, args.mtype, &payload)?,
                false,
            )
        }
        (Some(_), Some(method)) => {
            let uri = args.trigger_uri.clone().unwrap_or_else(|| args.uri.clone());
            (
                build_request(&args, &uri, method, MessageType::Con, &[b'0'; SEQ_DIGITS])?,
                true,
            )
        }
        (Some(_), None) => (
            build_request(&args, &args.uri, Code::GET, MessageType::Con, &[])?,
            false,
        ),
    };
    let mut b = Bench::new(args.clone(), template, sequenced).map_err(|e| e.to_string())?;
    let mut rx = RecvBatch::new(MAX_BATCH);
    let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
    let err = |e: io::Error| e.to_string();

    // Lanes: the load's sockets, or the triggers in observe mode.
    let (lanes, per_lane) = match observe {
        None => (args.clients, args.outstanding),
        Some(_) if args.trigger.is_some() => (1, args.trigger_outstanding),
        Some(_) => (0, 0),
    };
    b.per_lane = per_lane;
    for lane in 0..lanes {
        let idx = b.open_conn(lane, per_lane).map_err(err)?;
        b.lanes.push(idx);
    }

    let mut registered = 0;
    let mut registration_failed = 0;
    if let Some(n) = observe {
        // Make sure the resource exists (coap-rs and libcoap's dynamic resources are
        // created by the first PUT), then register.
        if lanes > 0 {
            b.issue(0).map_err(err)?;
            b.issuing = false;
            b.flush();
            let until = Instant::now() + args.timeout * 3;
            while Instant::now() < until && b.conns.iter().flatten().any(|c| c.in_flight > 0) {
                b.turn(&mut rx, &mut events, Duration::from_millis(5))
                    .map_err(err)?;
                b.scan_timeouts().map_err(err)?;
            }
            b.issuing = true;
        }
        let mut m = Message::new(args.mtype, Code::GET, 0);
        m.token = Token::new(&[0; TOKEN_LEN]);
        args.uri.to_options_for(&mut m.options, args.target);
        m.options.set_observe(0);
        b.obs_template = Some(RequestTemplate::new(&m).map_err(|e| e.to_string())?);
        b.open_observers(n).map_err(err)?;
        let deadline = Instant::now() + registration_budget(n);
        let (r, f) = b
            .register_all(&mut rx, &mut events, deadline)
            .map_err(err)?;
        registered = r;
        registration_failed = f;
        if r == 0 {
            return Err(format!(
                "no observer could register on {} ({f} failed)",
                args.uri
            ));
        }
    }

    // Warm-up, then the measured window; the loop never runs past `end`.
    let start = Instant::now();
    let measure_at = start + args.warmup;
    let end = measure_at + args.duration;
    for lane in 0..lanes {
        for _ in 0..per_lane {
            b.issue(lane).map_err(err)?;
        }
    }
    b.flush();
    let mut next_scan = Instant::now() + SCAN_EVERY;
    let mut cpu0 = cpu_time();
    let mut window_start = start;
    if args.warmup.is_zero() {
        b.measuring = true;
    }
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !b.measuring && now >= measure_at {
            b.stats = Stats::new();
            b.rotations = 0;
            for oc in &mut b.obs {
                for ob in &mut oc.observers {
                    ob.notified = false;
                }
            }
            b.measuring = true;
            cpu0 = cpu_time();
            window_start = now;
        }
        if now >= next_scan {
            b.scan_timeouts().map_err(err)?;
            b.flush();
            next_scan = now + SCAN_EVERY;
        }
        let wait = if args.spin {
            Duration::ZERO
        } else {
            let boundary = if b.measuring { end } else { measure_at };
            boundary.min(next_scan).saturating_duration_since(now)
        };
        b.turn(&mut rx, &mut events, wait).map_err(err)?;
    }
    let window = window_start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let observers_notified = b
        .obs
        .iter()
        .flat_map(|o| o.observers.iter())
        .filter(|o| o.notified)
        .count();
    Ok(Outcome {
        stats: b.stats,
        window,
        cpu,
        rotations: b.rotations,
        registered,
        registration_failed,
        observers_notified,
    })
}

/// Time allowed for registering `n` observers.
fn registration_budget(n: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(n as u64 * 2).min(Duration::from_secs(110))
}

fn code_name(c: u8) -> String {
    let c = Code::from_u8(c);
    format!("{}.{:02}", c.class(), c.detail())
}

fn report(args: &Args, o: &Outcome) -> String {
    let s = &o.stats;
    let secs = o.window.as_secs_f64().max(1e-9);
    let rate = s.completed as f64 / secs;
    let cpu = o.cpu.as_secs_f64() / secs;
    let mut codes = String::new();
    for (c, n) in s.codes.iter().enumerate() {
        if *n > 0 && Code::from_u8(c as u8).class() != 2 {
            if !codes.is_empty() {
                codes.push(',');
            }
            let _ = write!(codes, "\"{}\":{n}", code_name(c as u8));
        }
    }
    let mode = if args.observe.is_some() {
        "observe"
    } else {
        "load"
    };
    if args.json {
        let mut j = String::new();
        let _ = write!(
            j,
            "{{\"label\":\"{}\",\"mode\":\"{mode}\",\"target\":\"{}\",\"method\":\"{}\",\"type\":\"{}\",\
\"payload\":{},\"clients\":{},\"outstanding\":{},\"warmup_s\":{:.3},\"duration_s\":{:.3},\
\"sent\":{},\"completed\":{},\"req_per_s\":{:.1},\"non_2xx\":{},\"codes\":{{{codes}}},\
\"timeouts\":{},\"resets\":{},\"empty_acks\":{},\"unmatched\":{},\"unexpected\":{},\"malformed\":{},\
\"send_errors\":{},\"refused\":{},\"rotations\":{},\"client_cpu\":{:.3},\"latency_us\":{}",
            json_escape(&args.label),
            json_escape(&args.uri.to_string()),
            method_name(args.method),
            if args.mtype == MessageType::Con { "con" } else { "non" },
            args.payload,
            args.clients,
            args.outstanding,
            args.warmup.as_secs_f64(),
            secs,
            s.sent,
            s.completed,
            rate,
            s.non_2xx(),
            s.timeouts,
            s.resets,
            s.empty_acks,
            s.unmatched,
            s.unexpected,
            s.malformed,
            s.send_errors,
            s.refused,
            o.rotations,
            cpu,
            hist_json(&s.latency),
        );
        if let Some(n) = args.observe {
            let _ = write!(
                j,
                ",\"observers\":{n},\"registered\":{},\"registration_failed\":{},\
\"observers_notified\":{},\"notifications\":{},\"notifications_per_s\":{:.1},\"unattributed\":{},\
\"duplicates\":{},\"lost\":{},\"fanout_latency_us\":{}",
                o.registered,
                o.registration_failed,
                o.observers_notified,
                s.notifications,
                s.notifications as f64 / secs,
                s.unattributed,
                s.duplicates,
                s.lost,
                hist_json(&s.fanout),
            );
        }
        j.push('}');
        return j;
    }
    let mut t = String::new();
    let kind = if args.mtype == MessageType::Con {
        "CON"
    } else {
        "NON"
    };
    let _ = match (args.observe, args.trigger) {
        (None, _) => writeln!(
            t,
            "load {} {} ({kind}), {} clients x {} outstanding, payload {} B, {secs:.2} s measured",
            method_name(args.method),
            args.uri,
            args.clients,
            args.outstanding,
            args.payload,
        ),
        (Some(_), Some(m)) => writeln!(
            t,
            "observe {} ({kind} registrations), {} triggers in flight ({} {}), {secs:.2} s measured",
            args.uri,
            args.trigger_outstanding,
            method_name(m),
            args.trigger_uri.as_ref().unwrap_or(&args.uri),
        ),
        (Some(_), None) => writeln!(
            t,
            "observe {} ({kind} registrations), no triggers, {secs:.2} s measured",
            args.uri
        ),
    };
    if let Some(n) = args.observe {
        let _ = writeln!(
            t,
            "observers:     {n} ({} registered, {} failed, {} notified in the window, {} lost)",
            o.registered, o.registration_failed, o.observers_notified, s.lost
        );
        let _ = writeln!(
            t,
            "notifications: {} = {:.0}/s ({} without a trigger sequence number, {} duplicates)",
            s.notifications,
            s.notifications as f64 / secs,
            s.unattributed,
            s.duplicates
        );
        let _ = writeln!(t, "fan-out:       {}", hist_text(&s.fanout));
        let _ = write!(t, "triggers:      ");
    }
    let _ = writeln!(
        t,
        "completed:     {} = {:.0} req/s (sent {}, client CPU {:.0} %)",
        s.completed,
        rate,
        s.sent,
        cpu * 100.0
    );
    let _ = writeln!(t, "latency:       {}", hist_text(&s.latency));
    let _ = writeln!(
        t,
        "errors:        {} timeouts, {} non-2.xx{}{}{}, {} resets, {} unmatched, {} malformed, {} send errors, {} refused",
        s.timeouts,
        s.non_2xx(),
        if codes.is_empty() { "" } else { " (" },
        codes.replace('"', ""),
        if codes.is_empty() { "" } else { ")" },
        s.resets,
        s.unmatched,
        s.malformed,
        s.send_errors,
        s.refused
    );
    let _ = write!(
        t,
        "sockets:       {} moved to a fresh endpoint after using their message IDs",
        o.rotations
    );
    t
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return usage_exit("coap-bench", USAGE, &e),
    };
    // The watchdog: whatever happens, the process ends shortly after its deadline.
    let setup = match args.observe {
        Some(n) => registration_budget(n) + args.timeout * 3,
        None => Duration::from_secs(5),
    };
    watchdog(
        "coap-bench",
        setup + args.warmup + args.duration + Duration::from_secs(10),
    );
    finish("coap-bench", run(args.clone()).map(|o| report(&args, &o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn refuses_non_loopback_targets() {
        for bad in [
            "coap://10.0.0.1/x",
            "coap://[2001:db8::1]/x",
            "coap://example.com/x",
            "coap://0.0.0.0/x",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
        let a = args("coap://127.0.0.1:9999/bench -c 2 -o 3 -t non -m put -p 7").unwrap();
        assert_eq!(a.target, "127.0.0.1:9999".parse().unwrap());
        assert_eq!((a.clients, a.outstanding, a.payload), (2, 3, 7));
        assert_eq!(a.mtype, MessageType::Non);
        assert_eq!(a.method, Code::PUT);
        assert!(args("coap://[::1]/x").is_ok());
        assert!(args("coap://127.0.0.1/x --trigger-uri coap://127.0.0.1:5/y").is_err());
    }

    #[test]
    fn bounds_are_checked() {
        assert!(args("coap://127.0.0.1/x -d 0").is_err());
        assert!(args("coap://127.0.0.1/x -d 3601").is_err());
        assert!(args("coap://127.0.0.1/x -c 0").is_err());
        assert!(args("coap://127.0.0.1/x -o 70000").is_err());
        assert!(args("coap://127.0.0.1/x --mids-per-socket 0").is_err());
        assert!(args("coap://127.0.0.1/x --observe 0").is_err());
        assert!(args("").is_err());
    }

    #[test]
    fn sequence_digits_round_trip() {
        let mut d = [0u8; SEQ_DIGITS];
        write_digits(&mut d, 123_456_789);
        assert_eq!(&d, b"0123456789");
        assert_eq!(parse_digits(&d), Some(123_456_789));
        assert_eq!(parse_digits(b"12a"), None);
        assert_eq!(parse_digits(b""), None);
        assert_eq!(parse_digits(b"12345678901"), None);
    }

    /// Drives the whole tool against a tiny in-test server that answers like the ceiling
    /// loop, with few message IDs per socket so that rotation happens many times.
    #[test]
    fn runs_against_a_loopback_server_and_rotates_sockets() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let seen = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut dup = 0u64;
            let mut buf = [0u8; 1500];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    continue;
                };
                let mid = u16::from_be_bytes([buf[2], buf[3]]);
                if !seen.insert((from, mid)) {
                    dup += 1;
                }
                if let Some(len) = coap_benches::wire::ceiling_reply(&mut buf[..n]) {
                    let _ = server.send_to(&buf[..len], from);
                }
            }
            (seen.len(), dup)
        });
        let a = args(&format!(
            "coap://{addr}/bench -c 2 -o 2 -d 0.5 -w 0.1 --mids-per-socket 50 --timeout 5000"
        ))
        .unwrap();
        let o = run(a).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (distinct, dup) = seen.join().unwrap();
        assert!(o.stats.completed > 100, "completed {}", o.stats.completed);
        assert_eq!(o.stats.non_2xx(), 0);
        assert_eq!(o.stats.timeouts, 0);
        assert!(o.rotations > 0);
        assert!(o.stats.latency.count() == o.stats.completed);
        // No (endpoint, message ID) pair was ever sent twice.
        assert_eq!(dup, 0);
        assert!(distinct as u64 >= o.stats.completed);
    }

    /// A tiny observable resource: a GET with Observe registers the sender, a PUT answers
    /// 2.04 and sends every observer a CON notification carrying the PUT's payload.
    fn observe_server(sock: UdpSocket, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
        use coap_proto::msg::MessageView;
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut observers: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut seq = 2u32;
        let mut mid = 1u16;
        let mut acks = 0u64;
        let mut buf = [0u8; 1500];
        let send = |m: &Message, to: SocketAddr| {
            let mut out = [0u8; 256];
            let n = m.encode(&mut out).unwrap();
            sock.send_to(&out[..n], to).unwrap();
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let req = MessageView::parse(&buf[..n]).unwrap();
            if req.mtype() == MessageType::Ack {
                acks += 1;
                continue;
            }
            let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, req.message_id());
            rsp.token = Token::new(req.token());
            match req.code() {
                Code::GET => {
                    assert_eq!(
                        req.option(coap_proto::msg::OptionNumber::OBSERVE),
                        Some(&[][..])
                    );
                    observers.push((from, req.token().to_vec()));
                    rsp.options.set_observe(1);
                    send(&rsp, from);
                }
                Code::PUT => {
                    rsp.code = Code::CHANGED;
                    send(&rsp, from);
                    for (to, token) in &observers {
                        mid = mid.wrapping_add(1);
                        let mut note = Message::new(MessageType::Con, Code::CONTENT, mid);
                        note.token = Token::new(token);
                        note.options.set_observe(seq);
                        note.payload = bytes::Bytes::copy_from_slice(req.payload());
                        send(&note, *to);
                    }
                    seq += 1;
                }
                _ => panic!("unexpected request"),
            }
        }
        acks
    }

    #[test]
    fn observe_mode_counts_notifications_and_acknowledges_them() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let srv = std::thread::spawn(move || observe_server(server, stop2));
        let a = args(&format!(
            "coap://{addr}/obs --observe 5 -d 0.4 -w 0.1 --timeout 2000"
        ))
        .unwrap();
        let o = run(a).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acks = srv.join().unwrap();
        assert_eq!(o.registered, 5);
        assert_eq!(o.observers_notified, 5);
        // Every trigger reaches all five observers, and each notification finds its trigger.
        assert!(o.stats.completed > 10, "triggers {}", o.stats.completed);
        assert!(o.stats.notifications >= 5 * (o.stats.completed - 1));
        assert_eq!(o.stats.unattributed, 0);
        assert_eq!(o.stats.fanout.count(), o.stats.notifications);
        assert_eq!(o.stats.lost, 0);
        // Every CON notification was acknowledged (those of the warm-up too).
        assert!(acks >= o.stats.notifications);
    }

    #[test]
    fn counts_timeouts_when_nobody_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let a = args(&format!(
            "coap://{addr}/bench -c 1 -o 3 -d 0.35 -w 0 --timeout 100"
        ))
        .unwrap();
        let o = run(a).unwrap();
        assert_eq!(o.stats.completed, 0);
        // Three requests time out every 100 ms.
        assert!(o.stats.timeouts >= 6, "timeouts {}", o.stats.timeouts);
        drop(silent);
    }
}
