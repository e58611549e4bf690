//! Memory held per observer on a server (the bar: under 512 bytes each).
//!
//! 10 000 clients register on one resource; once the deduplication entries of their
//! registrations have expired, what stays allocated is the observer lists themselves. A
//! counting allocator (stats_alloc, which holds the `unsafe impl` so this crate keeps unsafe
//! code forbidden) measures it. One test only, so no other thread allocates meanwhile.

use std::alloc::System;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use coap_proto::msg::{Code, Message, MessageType, OptionNumber, Token};
use coap_proto::{Config, Endpoint, Event, Instant, Response};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const OBSERVERS: usize = 10_000;

fn registration(i: usize) -> Vec<u8> {
    let mut m = Message::new(MessageType::Con, Code::GET, i as u16);
    m.token = Token::new(&(i as u64).to_be_bytes());
    m.options.push_uint(OptionNumber::OBSERVE, 0);
    m.options.push(OptionNumber::URI_PATH, b"sensors");
    m.options.push(OptionNumber::URI_PATH, b"temp");
    let mut buf = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn peer(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        )),
        5683,
    )
}

#[test]
fn memory_per_observer_stays_under_512_bytes() {
    let mut config = Config::default();
    config.max_observers_per_resource = OBSERVERS;
    let mut server = Endpoint::new(config, 1).unwrap();
    let datagrams: Vec<Vec<u8>> = (0..OBSERVERS).map(registration).collect();
    let mut buf = vec![0u8; 2048];
    let region = Region::new(GLOBAL);
    for (i, d) in datagrams.iter().enumerate() {
        let now = Instant::from_micros(i as u64);
        server.handle_datagram(now, peer(i), d);
        while let Some(ev) = server.poll_event() {
            if let Event::Request { id, .. } = ev {
                server.accept_observer(id).unwrap();
                server.respond(now, id, Response::content("21.5")).unwrap();
            }
        }
        while server.poll_transmit(now, &mut buf).unwrap().is_some() {}
    }
    assert_eq!(server.observer_count("/sensors/temp"), OBSERVERS);
    // Past EXCHANGE_LIFETIME the deduplication entries of the registrations are gone.
    let later = Instant::ZERO + Duration::from_secs(300);
    server.handle_timeout(later);
    while server.poll_event().is_some() {}
    let sizes = server.table_sizes();
    assert_eq!(sizes.dedup_entries, 0);
    let change = region.change();
    // `bytes_allocated` and `bytes_deallocated` already include the growth and shrinking
    // done by reallocation (`bytes_reallocated` is the same growth again, net).
    let held = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    let per_observer = held / OBSERVERS as i64;
    println!("{held} bytes held for {OBSERVERS} observers: {per_observer} bytes each");
    assert!(per_observer < 512, "{per_observer} bytes per observer");
    assert!(
        per_observer > 50,
        "the measurement sees the observer lists ({per_observer})"
    );
}
