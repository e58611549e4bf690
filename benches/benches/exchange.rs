//! Engine benchmarks: whole exchanges through a client and a server `Endpoint` in memory, and
//! the cost of the timer calls on an endpoint with many idle exchanges.
//!
//! - `exchange/con_get_piggybacked`: one CON GET answered with a piggybacked 2.05 (6-byte
//!   payload), every engine call of both sides included. The virtual clock advances 10 ms per
//!   exchange, so Message IDs, deduplication entries and stale retransmission timers expire as
//!   fast as they are made (about 24 700 of each live at a time).
//! - `exchange/con_get_piggybacked_fast_clock`: the same at 5 µs of virtual time per exchange,
//!   the rate of a busy server: the deduplication cache stays at its bound and evicts its
//!   oldest entry on every request, and the pair moves to new ports (as if the client opened
//!   a new socket to another server instance) every 4096 exchanges so that the 65 536 Message
//!   IDs towards one peer (each in use for 247 s) never run out.
//! - `blockwise_1mib/{put,get}/{10ms,5us}`: a 1 MiB body in 1024-byte blocks (RFC 7959), Block1
//!   upload reassembled by the server and Block2 download sliced by the server, with 10 ms or
//!   5 µs of virtual time per round trip.
//! - `idle_timers/{client,server}/N`: `poll_timeout` followed by `handle_timeout` (nothing
//!   due) on an endpoint with N exchanges in flight: a client whose N requests were
//!   acknowledged with empty ACKs and wait for their separate responses, and the server that
//!   holds those N requests unanswered.
//!
//! Every benchmark checks that each response arrives, so a stall (such as Message IDs running
//! out) fails loudly instead of measuring nothing.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use core::hint::black_box;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

use bytes::Bytes;
use coap_proto::msg::{Code, Message};
use coap_proto::{Config, Endpoint, Event, Instant, Request, RequestId, Response};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const CLIENT: SocketAddr = SocketAddr::new(CLIENT_IP, 40000);
const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const SERVER: SocketAddr = SocketAddr::new(SERVER_IP, 5683);

/// Exchanges towards one server port before the fast-clock benchmark moves to the next.
const PER_PORT: u32 = 4096;

/// A client and a server endpoint joined by a lossless in-memory link, under a virtual clock.
struct Pair {
    client: Endpoint,
    server: Endpoint,
    now: Instant,
    /// Virtual time added per exchange (or per block round trip).
    step: Duration,
    /// The address the client sends to; the server answers from it.
    server_addr: SocketAddr,
    /// The address the server sees the client's datagrams come from.
    client_addr: SocketAddr,
    /// Exchanges since the addresses last changed (fast-clock benchmark only).
    on_port: u32,
    rotate: bool,
    buf: Vec<u8>,
    small: Bytes,
}

impl Pair {
    fn new(step: Duration, rotate: bool) -> Pair {
        Pair::with_config(Config::default(), step, rotate)
    }

    fn with_config(config: Config, step: Duration, rotate: bool) -> Pair {
        let buf = vec![0u8; config.max_message_size];
        Pair {
            client: Endpoint::new(config.clone(), 1).expect("valid config"),
            server: Endpoint::new(config, 2).expect("valid config"),
            now: Instant::from_secs(1),
            step,
            server_addr: SERVER,
            client_addr: CLIENT,
            on_port: 0,
            rotate,
            buf,
            small: Bytes::from_static(b"22.5 C"),
        }
    }

    /// Moves both sides to new ports, as if the client opened a new socket to another server
    /// instance: the client's Message IDs start in a fresh space, and the server's
    /// deduplication keys (source address, Message ID) never collide with earlier ones.
    fn rotate_ports(&mut self) {
        let port = self.server_addr.port().wrapping_add(1).max(1024);
        self.server_addr = SocketAddr::new(SERVER_IP, port);
        self.client_addr = SocketAddr::new(CLIENT_IP, port);
    }

    /// One CON GET with a piggybacked 2.05, as a driver would run it: every output drained.
    fn con_get(&mut self) {
        if self.rotate {
            self.on_port += 1;
            if self.on_port == PER_PORT {
                self.on_port = 0;
                self.rotate_ports();
            }
        }
        self.now += self.step;
        let now = self.now;
        let to = self.server_addr;
        let id = self
            .client
            .request(now, to, Request::get().with_path("/sensors/temp"))
            .expect("request starts");
        let tx = self
            .client
            .poll_transmit(now, &mut self.buf)
            .expect("buffer is large enough")
            .expect("the request goes out at once");
        assert_eq!(tx.remote, to);
        self.server
            .handle_datagram(now, self.client_addr, &self.buf[..tx.len]);
        let Some(Event::Request { id: incoming, .. }) = self.server.poll_event() else {
            panic!("the server did not get the request");
        };
        self.server
            .respond(now, incoming, Response::content(self.small.clone()))
            .expect("request waits");
        let tx = self
            .server
            .poll_transmit(now, &mut self.buf)
            .expect("buffer is large enough")
            .expect("the response goes out at once");
        assert_eq!(tx.remote, self.client_addr);
        self.client.handle_datagram(now, to, &self.buf[..tx.len]);
        match self.client.poll_event() {
            Some(Event::Response {
                id: got, response, ..
            }) if got == id && response.code == Code::CONTENT => {}
            other => panic!("expected the response to {id}, got {other:?}"),
        }
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
    }

    /// Moves datagrams both ways, advancing the clock one step per round, and answers the
    /// server's requests with `answer`, until the client's request `id` ends.
    fn run(&mut self, id: RequestId, answer: &mut dyn FnMut(&Message) -> Response) -> Message {
        for _ in 0..100_000 {
            let now = self.now;
            while let Some(tx) = self
                .client
                .poll_transmit(now, &mut self.buf)
                .expect("buffer is large enough")
            {
                self.server
                    .handle_datagram(now, self.client_addr, &self.buf[..tx.len]);
            }
            while let Some(event) = self.server.poll_event() {
                if let Event::Request {
                    id: incoming,
                    request,
                    ..
                } = event
                {
                    self.server
                        .respond(now, incoming, answer(&request))
                        .expect("request waits");
                }
            }
            while let Some(tx) = self
                .server
                .poll_transmit(now, &mut self.buf)
                .expect("buffer is large enough")
            {
                self.client
                    .handle_datagram(now, self.server_addr, &self.buf[..tx.len]);
            }
            match self.client.poll_event() {
                Some(Event::Response {
                    id: got, response, ..
                }) if got == id => return response,
                None => {}
                Some(other) => panic!("unexpected client event {other:?}"),
            }
            self.now += self.step;
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
        panic!("request {id} did not complete");
    }
}

fn exchange(c: &mut Criterion) {
    let mut group = c.benchmark_group("exchange");
    group.throughput(Throughput::Elements(1));

    let mut pair = Pair::new(Duration::from_millis(10), false);
    // Warm up past EXCHANGE_LIFETIME so every table has its steady size before measuring.
    for _ in 0..30_000 {
        pair.con_get();
    }
    group.bench_function("con_get_piggybacked", |b| b.iter(|| pair.con_get()));
    let stats = pair.server.stats();
    assert_eq!(stats.overload_rejections + stats.transmit_queue_drops, 0);

    let mut pair = Pair::new(Duration::from_micros(5), true);
    // Fill the deduplication cache to its bound (entries or bytes, whichever binds first).
    while pair.server.stats().dedup_evictions == 0 {
        pair.con_get();
    }
    for _ in 0..1000 {
        pair.con_get();
    }
    let config = pair.server.config();
    let sizes = pair.server.table_sizes();
    assert!(sizes.dedup_entries <= config.max_dedup_entries);
    assert!(sizes.dedup_bytes <= config.max_dedup_bytes);
    group.bench_function("con_get_piggybacked_fast_clock", |b| {
        b.iter(|| pair.con_get())
    });
    assert!(pair.server.stats().dedup_evictions > 0);
    group.finish();
}

fn blockwise(c: &mut Criterion) {
    const MIB: usize = 1 << 20;
    let body = Bytes::from((0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut group = c.benchmark_group("blockwise_1mib");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.sample_size(20);

    // 10 ms per round trip: a transfer takes about 10 s of virtual time, and timers,
    // Message IDs and deduplication entries expire as they would on a real link. 5 µs per
    // round trip: the whole transfer fits in 5 ms of virtual time, nothing expires, and every
    // transfer uses fresh ports (1025 Message IDs each) so that IDs never run out.
    for (clock, step, rotate) in [
        ("10ms", Duration::from_millis(10), false),
        ("5us", Duration::from_micros(5), true),
    ] {
        let mut pair = Pair::new(step, false);
        group.bench_function(BenchmarkId::new("put", clock), |b| {
            b.iter(|| {
                if rotate {
                    pair.rotate_ports();
                }
                let request = Request::put()
                    .with_path("/upload")
                    .with_payload(body.clone());
                let id = pair
                    .client
                    .request(pair.now, pair.server_addr, request)
                    .expect("request starts");
                let response = pair.run(id, &mut |request| {
                    assert_eq!(request.payload.len(), MIB, "the server got the whole body");
                    Response::new(Code::CHANGED)
                });
                assert_eq!(response.code, Code::CHANGED);
            })
        });

        let mut pair = Pair::new(step, false);
        group.bench_function(BenchmarkId::new("get", clock), |b| {
            b.iter(|| {
                if rotate {
                    pair.rotate_ports();
                }
                let request = Request::get().with_path("/download");
                let id = pair
                    .client
                    .request(pair.now, pair.server_addr, request)
                    .expect("request starts");
                let response = pair.run(id, &mut |_| Response::content(body.clone()));
                assert_eq!(response.code, Code::CONTENT);
                assert_eq!(response.payload.len(), MIB, "the client got the whole body");
            })
        });
    }
    group.finish();
}

/// A pair where the client has `n` requests in flight, each acknowledged by an empty ACK and
/// waiting for a separate response the server has not sent.
fn idle_pair(n: usize) -> Pair {
    let mut config = Config::default();
    // All n requests go out at once to one server (Message IDs stay sequential, so the
    // server's deduplication keys never collide).
    config.nstart = n;
    let mut pair = Pair::with_config(config, Duration::ZERO, false);
    let now = pair.now;
    for i in 0..n {
        let request = Request::get()
            .with_path(&format!("/slow/{i}"))
            .with_timeout(Duration::from_secs(1_000_000));
        pair.client.request(now, SERVER, request).expect("starts");
    }
    while let Some(tx) = pair
        .client
        .poll_transmit(now, &mut pair.buf)
        .expect("buffer is large enough")
    {
        pair.server
            .handle_datagram(now, CLIENT, &pair.buf[..tx.len]);
    }
    let requests = core::iter::from_fn(|| pair.server.poll_event()).count();
    assert_eq!(requests, n);
    // The server acknowledges every request with an empty ACK after EMPTY_ACK_DELAY.
    let later = now + Duration::from_secs(1);
    pair.server.handle_timeout(later);
    pair.client.handle_timeout(later);
    while let Some(tx) = pair
        .server
        .poll_transmit(later, &mut pair.buf)
        .expect("buffer is large enough")
    {
        pair.client
            .handle_datagram(later, SERVER, &pair.buf[..tx.len]);
    }
    assert_eq!(pair.client.poll_event(), None);
    let client = pair.client.table_sizes();
    assert_eq!(client.client_exchanges, n);
    assert_eq!(client.awaiting_ack, 0, "every request was acknowledged");
    assert_eq!(pair.server.table_sizes().server_exchanges, n);
    pair.now = later;
    pair
}

/// `poll_timeout` then `handle_timeout` with nothing due, the clock moving 1 µs per call.
fn idle_poll(ep: &mut Endpoint, now: &mut Instant) {
    *now += Duration::from_micros(1);
    let next = ep.poll_timeout();
    assert!(next.is_some_and(|t| t > *now), "a timer came due: {next:?}");
    ep.handle_timeout(black_box(*now));
}

fn idle_timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle_timers");
    for n in [100, 1000, 10_000] {
        let mut pair = idle_pair(n);
        let mut now = pair.now;
        group.bench_with_input(BenchmarkId::new("client", n), &n, |b, _| {
            b.iter(|| idle_poll(&mut pair.client, &mut now))
        });
        let mut now = pair.now;
        group.bench_with_input(BenchmarkId::new("server", n), &n, |b, _| {
            b.iter(|| idle_poll(&mut pair.server, &mut now))
        });
        assert_eq!(pair.client.table_sizes().client_exchanges, n);
        assert_eq!(pair.server.table_sizes().server_exchanges, n);
    }
    group.finish();
}

criterion_group!(benches, exchange, blockwise, idle_timers);
criterion_main!(benches);
