//! Observe fan-out in the engine: the cost of notifying 10 000 observers of one change, per
//! observer (bar: under 1 µs), from `notify` to the last datagram in the caller's buffer.
//!
//! `cargo bench -p coap-benches --bench observe`

// criterion_group! and criterion_main! generate undocumented public functions.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use coap_proto::msg::{Code, Message, MessageType, OptionNumber, Token};
use coap_proto::{Config, Endpoint, Event, Instant, Response};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

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

/// A server with `n` observers of `/temp`, each from its own client address.
fn server_with_observers(n: usize) -> Endpoint {
    let mut config = Config::default();
    config.max_observers = n;
    config.max_observers_per_resource = n;
    let mut server = Endpoint::new(config, 1).expect("valid config");
    let mut buf = vec![0u8; 2048];
    for i in 0..n {
        let mut m = Message::new(MessageType::Con, Code::GET, i as u16);
        m.token = Token::new(&(i as u32).to_be_bytes());
        m.options.push_uint(OptionNumber::OBSERVE, 0);
        m.options.push(OptionNumber::URI_PATH, b"temp");
        let mut wire = vec![0u8; m.encoded_len()];
        let len = m.encode(&mut wire).expect("fits");
        server.handle_datagram(Instant::ZERO, peer(i), &wire[..len]);
        while let Some(ev) = server.poll_event() {
            if let Event::Request { id, .. } = ev {
                server.accept_observer(id).expect("room");
                server
                    .respond(Instant::ZERO, id, Response::content("20.0"))
                    .expect("pending");
            }
        }
        while server
            .poll_transmit(Instant::ZERO, &mut buf)
            .expect("large")
            .is_some()
        {}
    }
    while server.poll_event().is_some() {}
    assert_eq!(server.observer_count("/temp"), n);
    server
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe");
    for n in [100usize, 10_000] {
        // Four changes per iteration, one datagram per observer each.
        group.throughput(Throughput::Elements(4 * n as u64));
        group.bench_function(format!("notify {n} observers"), |b| {
            let mut buf = vec![0u8; 2048];
            // Each iteration notifies once and drains every datagram; the clock moves on by a
            // second per change so Message IDs (one per observer per change) never run out.
            b.iter_batched_ref(
                || server_with_observers(n),
                |server| {
                    for k in 0..4u64 {
                        let now = Instant::ZERO + Duration::from_secs(1 + k);
                        server.notify(now, "/temp", Some(Response::content("21.5")));
                        let mut sent = 0;
                        while server
                            .poll_transmit(now, &mut buf)
                            .expect("large")
                            .is_some()
                        {
                            sent += 1;
                        }
                        assert_eq!(sent, n);
                        while server.poll_event().is_some() {}
                    }
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = fan_out
}
criterion_main!(benches);
