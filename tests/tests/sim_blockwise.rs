//! Block-wise transfers (RFC 7959) over a lossy, duplicating, reordering simulated network:
//! bodies from 0 to 1 MiB at every block size from 16 to 1024 bytes arrive byte for byte, and
//! the server application runs once per request.
//!
//! Rerun one failing case with `SIM_SEED=<seed>`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use coap_proto::endpoint::{Config, Event};
use coap_proto::msg::Code;
use coap_proto::sim::{LinkConfig, Network};
use coap_proto::{Instant, Request, Response};
use coap_tests::Host;
use proptest::prelude::*;

const SERVER: &str = "[2001:db8::1]:5683";
const CLIENT: &str = "[2001:db8::2]:49152";

#[derive(Clone, Copy, Debug)]
enum Method {
    Get,
    Put,
    Post,
}

fn body(len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect::<Vec<u8>>()
        .into()
}

/// Runs one transfer and checks it. `client_block` and `server_block` are the two sides'
/// preferred block sizes.
fn transfer(
    seed: u64,
    method: Method,
    len: usize,
    client_block: usize,
    server_block: usize,
    lossy: bool,
) {
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    let mut net = Network::new(seed);
    let mut link = LinkConfig::default().with_delay(Duration::from_millis(1));
    if lossy {
        link = link
            .with_loss(0.02)
            .with_duplicate(0.02)
            .with_reorder(0.02, Duration::from_millis(30));
    }
    net.set_default_link(link);

    let resource = body(len, 3);
    let upload = body(len, 11);
    let mut server_config = Config::default();
    server_config.block_size = server_block;
    let served = resource.clone();
    let server = Host::new(
        server_config,
        net.derive_seed(2),
        Box::new(move |req| match req.code {
            Code::GET => Response::content(served.clone()),
            // PUT answers 2.04 with no body; POST echoes the body it got, so the reply is as
            // large as the upload (block-wise both ways).
            Code::PUT => Response::new(Code::CHANGED),
            _ => Response::new(Code::CHANGED).with_payload(req.payload.clone()),
        }),
    );
    let mut client_config = Config::default();
    client_config.block_size = client_block;
    let mut client = Host::new(
        client_config,
        net.derive_seed(1),
        Box::new(|_| Response::new(Code::NOT_FOUND)),
    );
    let req = match method {
        Method::Get => Request::get(),
        Method::Put => Request::put().with_payload(upload.clone()),
        Method::Post => Request::post().with_payload(upload.clone()),
    }
    .with_path("data");
    let id = client
        .ep
        .request(Instant::ZERO, server_addr, req)
        .expect("admitted");
    let s = net.add_node(server_addr, server);
    let c = net.add_node(client_addr, client);
    net.run_until_idle()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));

    let client = net.node(c);
    let server = net.node(s);
    let outcome = client
        .outcomes
        .get(&id)
        .unwrap_or_else(|| panic!("seed {seed}: no outcome"));
    assert_eq!(outcome.len(), 1, "seed {seed}: one final event");
    let Event::Response { response, .. } = &outcome[0].1 else {
        panic!(
            "seed {seed}: {method:?} of {len} bytes failed: {:?}",
            outcome[0].1
        );
    };
    assert_eq!(
        server.seen.len(),
        1,
        "seed {seed}: the handler ran {} times",
        server.seen.len()
    );
    match method {
        Method::Get => assert!(
            response.payload == resource,
            "seed {seed}: GET body differs"
        ),
        Method::Put => {
            assert!(
                server.seen[0].payload == upload,
                "seed {seed}: PUT body differs"
            );
            assert_eq!(response.code, Code::CHANGED);
        }
        Method::Post => {
            assert!(
                server.seen[0].payload == upload,
                "seed {seed}: POST body differs"
            );
            assert!(
                response.payload == upload,
                "seed {seed}: POST response differs"
            );
        }
    }
    assert!(
        client.ep.table_sizes().is_empty(),
        "seed {seed}: client {:?}",
        client.ep.table_sizes()
    );
    assert!(
        server.ep.table_sizes().is_empty(),
        "seed {seed}: server {:?}",
        server.ep.table_sizes()
    );
}

fn seeds() -> BoxedStrategy<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => Just(seed).boxed(),
        None => any::<u64>().boxed(),
    }
}

fn block_sizes() -> impl Strategy<Value = usize> {
    (4u32..=10).prop_map(|e| 1usize << e)
}

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::Get), Just(Method::Put), Just(Method::Post)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Any size up to 1 MiB; the number of blocks (and so the run time) grows as the block
    /// size shrinks, so small blocks get proportionally smaller bodies here and the full
    /// range is covered at 1024.
    #[test]
    fn bodies_arrive_whole_over_a_lossy_link(
        seed in seeds(),
        method in methods(),
        client_block in block_sizes(),
        server_block in block_sizes(),
        fraction in 0.0f64..=1.0,
    ) {
        let max_blocks = 1024usize;
        let len = (fraction * (client_block.min(server_block) * max_blocks) as f64) as usize;
        transfer(seed, method, len, client_block, server_block, true);
    }
}

#[test]
fn a_full_mebibyte_both_ways_at_1024() {
    for (i, method) in [Method::Get, Method::Put, Method::Post]
        .into_iter()
        .enumerate()
    {
        transfer(1000 + i as u64, method, 1 << 20, 1024, 1024, true);
    }
}

#[test]
fn a_full_mebibyte_at_16_byte_blocks() {
    transfer(77, Method::Get, 1 << 20, 16, 16, false);
}

#[test]
fn every_block_size_pair_and_edge_lengths() {
    let mut seed = 0;
    for client_block in [16, 32, 64, 128, 256, 512, 1024] {
        for server_block in [16, 1024] {
            for len in [0, 1, 15, 16, 17, 1023, 1024, 1025, 4096] {
                for method in [Method::Get, Method::Post] {
                    seed += 1;
                    transfer(seed, method, len, client_block, server_block, false);
                }
            }
        }
    }
}
