//! Heap allocations per complete Confirmable GET exchange, in steady state, on each side.
//!
//! A client endpoint and a server endpoint talk in memory under a virtual clock that advances
//! 10 ms per exchange. After a warm-up long enough for every table to reach its steady size
//! (the deduplication cache holds EXCHANGE_LIFETIME = 247 s of entries, so the warm-up covers
//! more than that), the allocations made by each engine call are counted with a counting global
//! allocator (from `stats_alloc`, which holds the `unsafe impl GlobalAlloc` so this crate keeps
//! `unsafe_code` forbidden). Everything is in one test so that no other test thread allocates
//! during the measurement.
//!
//! Bars:
//! * server (`handle_datagram` of the request, `poll_event`, `respond`, `poll_transmit`): none
//!   (the bar is 2): small datagrams, the reply cached for duplicates included, are held
//!   inline;
//! * client (`request`, `poll_transmit`, `handle_datagram` of the response, `poll_event`): at
//!   most 1, the response's payload (the encoded request, kept for retransmission, is inline).

use core::hint::black_box;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::alloc::System;

use bytes::Bytes;
use coap_proto::msg::{Code, MessageType};
use coap_proto::time::Instant;
use coap_proto::{Config, Endpoint, Event, Request, Response};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40000);
const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 5683);

/// Virtual time between two exchanges: 24 700 Message IDs stay in use over EXCHANGE_LIFETIME,
/// well below the 65 536 available towards one peer.
const STEP: Duration = Duration::from_millis(10);
/// Twice EXCHANGE_LIFETIME / STEP: deduplication entries expire as fast as they arrive, and the
/// hash tables have made the one-off growth that tombstones of expired entries cause.
const WARM_UP: u32 = 60_000;
const MEASURED: u32 = 10_000;

const SERVER_BAR: usize = 0;
const CLIENT_BAR: usize = 1;

/// Allocations counted per engine call over the measured exchanges.
#[derive(Debug, Default)]
struct Counts {
    /// `(call, allocations, reallocations)` in call order.
    calls: Vec<(&'static str, usize, usize)>,
}

impl Counts {
    fn add(&mut self, call: &'static str, region: &Region<'_, System>) {
        let stats = region.change();
        match self.calls.iter_mut().find(|(name, _, _)| *name == call) {
            Some(entry) => {
                entry.1 += stats.allocations;
                entry.2 += stats.reallocations;
            }
            None => self
                .calls
                .push((call, stats.allocations, stats.reallocations)),
        }
    }

    /// Allocations plus reallocations (a reallocation may move the block: it is heap work
    /// too) of the named calls.
    fn total(&self, calls: &[&str]) -> usize {
        self.calls
            .iter()
            .filter(|(name, _, _)| calls.contains(name))
            .map(|(_, a, r)| a + r)
            .sum()
    }

    fn report(&self, exchanges: u32) -> String {
        let per = |n: usize| n as f64 / f64::from(exchanges);
        self.calls
            .iter()
            .map(|(name, a, r)| {
                format!(
                    "{name}: {a} alloc + {r} realloc ({:.4}/exchange)",
                    per(*a + *r)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Pair {
    client: Endpoint,
    server: Endpoint,
    now: Instant,
    buf: Vec<u8>,
    payload: Bytes,
}

impl Pair {
    fn new() -> Pair {
        let config = Config::default();
        let buf = vec![0u8; config.max_message_size];
        Pair {
            client: Endpoint::new(config.clone(), 1).expect("default config is valid"),
            server: Endpoint::new(config, 2).expect("default config is valid"),
            now: Instant::from_secs(1),
            buf,
            payload: Bytes::from_static(b"22.5 C"),
        }
    }

    /// One CON GET answered with a piggybacked 2.05. With `counts`, the allocations of each
    /// engine call are added to it. Returns whether the client got the response.
    fn exchange(&mut self, mut counts: Option<&mut Counts>) -> bool {
        let mut count = |call: &'static str, region: Region<'_, System>| {
            if let Some(c) = counts.as_deref_mut() {
                c.add(call, &region);
            }
        };
        self.now += STEP;
        let now = self.now;

        // Building the request is the application's work, not the engine's.
        let request = Request::get().with_path("/sensors/temp");

        // Client: start the request and take the datagram.
        let region = Region::new(GLOBAL);
        let id = self.client.request(now, SERVER, request).expect("starts");
        count("client.request", region);
        let region = Region::new(GLOBAL);
        let tx = self
            .client
            .poll_transmit(now, &mut self.buf)
            .expect("buffer is large enough")
            .expect("the request is sent at once");
        count("client.poll_transmit", region);
        assert_eq!(tx.remote, SERVER);
        let len = tx.len;

        // Server: the request, the event, the answer, the datagram.
        let region = Region::new(GLOBAL);
        self.server.handle_datagram(now, CLIENT, &self.buf[..len]);
        count("server.handle_datagram", region);
        let region = Region::new(GLOBAL);
        let event = self.server.poll_event();
        count("server.poll_event", region);
        let Some(Event::Request { id: incoming, .. }) = event else {
            panic!("expected a request, got {event:?}");
        };
        drop(event);
        let response = Response::content(self.payload.clone());
        let region = Region::new(GLOBAL);
        self.server
            .respond(now, incoming, response)
            .expect("the request waits for an answer");
        count("server.respond", region);
        let region = Region::new(GLOBAL);
        let tx = self
            .server
            .poll_transmit(now, &mut self.buf)
            .expect("buffer is large enough")
            .expect("the response is sent at once");
        count("server.poll_transmit", region);
        assert_eq!(tx.remote, CLIENT);
        let len = tx.len;

        // Client: the response and its event.
        let region = Region::new(GLOBAL);
        self.client.handle_datagram(now, SERVER, &self.buf[..len]);
        count("client.handle_datagram", region);
        let region = Region::new(GLOBAL);
        let event = self.client.poll_event();
        count("client.poll_event", region);
        let ok = matches!(
            &event,
            Some(Event::Response { id: got, response, .. })
                if *got == id
                    && response.code == Code::CONTENT
                    && response.mtype == MessageType::Ack
                    && response.payload == self.payload
        );
        drop(black_box(event));

        // Timers: expiries of deduplication entries, Message IDs and stale retransmission
        // entries. Counted apart, as a driver calls this when the deadline passes, not once
        // per exchange.
        let region = Region::new(GLOBAL);
        self.client.handle_timeout(now);
        count("client.handle_timeout", region);
        let region = Region::new(GLOBAL);
        self.server.handle_timeout(now);
        count("server.handle_timeout", region);
        ok
    }
}

#[test]
fn steady_state_allocations_per_con_get_exchange() {
    let mut pair = Pair::new();
    for i in 0..WARM_UP {
        assert!(pair.exchange(None), "warm-up exchange {i} got no response");
    }
    let sizes = pair.server.table_sizes();
    assert!(
        sizes.dedup_entries > 20_000,
        "the deduplication cache should hold ~247 s of entries: {sizes:?}"
    );

    let mut counts = Counts::default();
    for i in 0..MEASURED {
        assert!(
            pair.exchange(Some(&mut counts)),
            "measured exchange {i} got no response"
        );
    }
    // The tables did not grow during the measurement: this is steady state.
    let after = pair.server.table_sizes();
    assert!(
        after.dedup_entries.abs_diff(sizes.dedup_entries) < 100,
        "deduplication cache still growing: {sizes:?} -> {after:?}"
    );
    assert_eq!(pair.server.table_sizes().server_exchanges, 0);
    assert_eq!(pair.client.table_sizes().client_exchanges, 0);

    let report = counts.report(MEASURED);
    let server = counts.total(&[
        "server.handle_datagram",
        "server.poll_event",
        "server.respond",
        "server.poll_transmit",
    ]);
    let client = counts.total(&[
        "client.request",
        "client.poll_transmit",
        "client.handle_datagram",
        "client.poll_event",
    ]);
    let timeouts = counts.total(&["client.handle_timeout", "server.handle_timeout"]);
    println!("per exchange: {report}");
    let per = |n: usize| n as f64 / f64::from(MEASURED);
    println!(
        "server {:.3}, client {:.3}, handle_timeout (both) {:.3} allocations per exchange",
        per(server),
        per(client),
        per(timeouts)
    );
    // Integer bars over the whole run: at most BAR allocations per exchange on average, with no
    // slack for rare ones (a table growth during the measurement would show up here).
    assert!(
        server <= SERVER_BAR * MEASURED as usize,
        "server allocates {:.3} per exchange (bar {SERVER_BAR}): {report}",
        per(server)
    );
    assert!(
        client <= CLIENT_BAR * MEASURED as usize,
        "client allocates {:.3} per exchange (bar {CLIENT_BAR}): {report}",
        per(client)
    );
    assert!(
        timeouts <= MEASURED as usize / 100,
        "handle_timeout allocates in steady state ({:.3} per exchange): {report}",
        per(timeouts)
    );

    // The counter does see the engine's allocations: a fresh endpoint allocates its scratch
    // buffer.
    let region = Region::new(GLOBAL);
    let fresh = black_box(Endpoint::new(Config::default(), 3).expect("valid"));
    let stats = region.change();
    drop(fresh);
    assert!(
        stats.allocations > 0,
        "counting allocator saw nothing: {stats:?}"
    );
}
