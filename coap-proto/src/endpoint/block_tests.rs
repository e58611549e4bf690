//! Wire-level tests of block-wise transfers (RFC 7959) between two endpoints in memory.

use alloc::vec;
use alloc::vec::Vec;

use bytes::Bytes;
use core::time::Duration;

use super::tests::{con_get, encode, endpoint, endpoint_with, events, sent, t, CLIENT, SERVER};
use super::*;
use crate::msg::{Block, Code, Message, MessageType, OptionNumber};

/// Moves datagrams between a client and a server until both fall quiet, answering every
/// request the server application sees with `handler`. Returns the client's events and every
/// message the client sent, in order.
fn exchange(
    client: &mut Endpoint,
    server: &mut Endpoint,
    mut handler: impl FnMut(&Message) -> Response,
) -> (Vec<Event>, Vec<Message>) {
    let mut client_events = Vec::new();
    let mut client_sent = Vec::new();
    for _ in 0..100_000 {
        let mut moved = false;
        for (to, m) in sent(client) {
            assert_eq!(to, SERVER);
            server.handle_datagram(t(0), CLIENT, &encode(&m));
            client_sent.push(m);
            moved = true;
        }
        while let Some(ev) = server.poll_event() {
            if let Event::Request { id, request, .. } = ev {
                let rsp = handler(&request);
                server.respond(t(0), id, rsp).expect("pending");
            }
        }
        for (to, m) in sent(server) {
            assert_eq!(to, CLIENT);
            client.handle_datagram(t(0), SERVER, &encode(&m));
            moved = true;
        }
        client_events.extend(events(client));
        if !moved {
            return (client_events, client_sent);
        }
    }
    panic!("no quiescence");
}

fn body(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn only_response(events: &[Event]) -> &Message {
    match events {
        [Event::Response { response, .. }] => response,
        other => panic!("expected one response, got {other:?}"),
    }
}

#[test]
fn large_get_arrives_whole_with_one_handler_call() {
    let mut client = endpoint();
    let mut server = endpoint();
    let big = body(5000);
    let mut calls = 0;
    client
        .request(t(0), SERVER, Request::get().with_path("big"))
        .unwrap();
    let (evs, reqs) = exchange(&mut client, &mut server, |_| {
        calls += 1;
        Response::content(big.clone())
    });
    let rsp = only_response(&evs);
    assert_eq!(rsp.payload, big);
    assert!(
        !rsp.options.contains(OptionNumber::BLOCK2),
        "the application sees no blocks"
    );
    assert_eq!(calls, 1, "later blocks come from the stored representation");
    // 5000 bytes in 1024-byte blocks: five requests, numbered 0..5.
    assert_eq!(reqs.len(), 5);
    let nums: Vec<u32> = reqs
        .iter()
        .map(|r| r.options.block2().map_or(0, |b| b.num))
        .collect();
    assert_eq!(nums, [0, 1, 2, 3, 4]);
    assert!(
        reqs[0].options.block2().is_none(),
        "no early negotiation at 1024"
    );
    assert!(
        reqs.windows(2).all(|w| w[0].token != w[1].token),
        "fresh token per block"
    );
    assert_eq!(server.table_sizes().representations, 1);
    assert!(client.is_idle());
}

#[test]
fn early_negotiation_and_size2() {
    let mut client = endpoint_with(|c| c.block_size = 64);
    let mut server = endpoint();
    let big = body(200);
    client
        .request(
            t(0),
            SERVER,
            Request::get()
                .with_path("x")
                .with_option(OptionNumber::SIZE2, &[]),
        )
        .unwrap();
    let (evs, reqs) = exchange(&mut client, &mut server, |_| Response::content(big.clone()));
    assert_eq!(
        reqs[0].options.block2(),
        Some(Block {
            num: 0,
            more: false,
            szx: 2
        })
    );
    assert_eq!(reqs.len(), 4, "200 bytes in 64-byte blocks");
    let rsp = only_response(&evs);
    assert_eq!(rsp.payload, big);
    assert_eq!(
        rsp.options.size2(),
        Some(200),
        "Size2 answered for Size2 = 0"
    );
}

#[test]
fn large_put_is_reassembled_and_handled_once() {
    let mut client = endpoint();
    let mut server = endpoint();
    let big = body(3000);
    let mut seen = Vec::new();
    client
        .request(
            t(0),
            SERVER,
            Request::put().with_path("up").with_payload(big.clone()),
        )
        .unwrap();
    let (evs, reqs) = exchange(&mut client, &mut server, |req| {
        seen.push(req.payload.clone());
        assert!(!req.options.contains(OptionNumber::BLOCK1));
        Response::new(Code::CHANGED)
    });
    assert_eq!(seen, vec![big]);
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].options.size1(), Some(3000));
    assert_eq!(
        reqs[0].options.block1(),
        Some(Block {
            num: 0,
            more: true,
            szx: 6
        })
    );
    assert_eq!(
        reqs[2].options.block1(),
        Some(Block {
            num: 2,
            more: false,
            szx: 6
        })
    );
    let rsp = only_response(&evs);
    assert_eq!(rsp.code, Code::CHANGED);
    assert_eq!(
        rsp.options.block1(),
        Some(Block {
            num: 2,
            more: false,
            szx: 6
        })
    );
    assert_eq!(server.table_sizes().reassemblies, 0);
}

#[test]
fn server_asking_for_smaller_blocks_midway_is_followed() {
    let mut client = endpoint();
    let mut server = endpoint_with(|c| c.block_size = 256);
    let big = body(3000);
    let mut seen = Vec::new();
    client
        .request(
            t(0),
            SERVER,
            Request::post().with_path("up").with_payload(big.clone()),
        )
        .unwrap();
    let (evs, reqs) = exchange(&mut client, &mut server, |req| {
        seen.push(req.payload.clone());
        Response::new(Code::CHANGED)
    });
    assert_eq!(seen, vec![big]);
    // First block at 1024, then 256-byte blocks starting at number 4 (1024 / 256).
    assert_eq!(
        reqs[0].options.block1(),
        Some(Block {
            num: 0,
            more: true,
            szx: 6
        })
    );
    assert_eq!(
        reqs[1].options.block1(),
        Some(Block {
            num: 4,
            more: true,
            szx: 4
        })
    );
    assert_eq!(reqs.len(), 1 + (3000usize - 1024).div_ceil(256));
    assert_eq!(only_response(&evs).code, Code::CHANGED);
}

#[test]
fn large_post_with_large_response() {
    let mut client = endpoint();
    let mut server = endpoint();
    let up = body(2500);
    let down = body(4100);
    client
        .request(
            t(0),
            SERVER,
            Request::post().with_path("rpc").with_payload(up.clone()),
        )
        .unwrap();
    let mut calls = 0;
    let (evs, reqs) = exchange(&mut client, &mut server, |req| {
        calls += 1;
        assert_eq!(req.payload, up);
        Response::new(Code::CHANGED).with_payload(down.clone())
    });
    assert_eq!(calls, 1);
    assert_eq!(only_response(&evs).payload, down);
    // 3 upload blocks, then 4 more requests for blocks 1..=4 of the response, without body.
    assert_eq!(reqs.len(), 7);
    assert!(reqs[3..]
        .iter()
        .all(|r| r.payload.is_empty() && r.code == Code::POST));
}

#[test]
fn etag_change_midway_fails_or_restarts() {
    for restart in [false, true] {
        let mut client = endpoint_with(|c| c.restart_download_on_change = restart);
        let id = client
            .request(t(0), SERVER, Request::get().with_path("v"))
            .unwrap();
        let mut version = 0u8;
        let mut last = None;
        for round in 0..6 {
            let Some((_, req)) = sent(&mut client).into_iter().next() else {
                break;
            };
            let num = req.options.block2().map_or(0, |b| b.num);
            // The representation changes after the first block of the first attempt.
            if round == 1 {
                version = 1;
            }
            let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, req.message_id);
            rsp.token = req.token.clone();
            rsp.options.set_etag(&[version]);
            rsp.options.set_block2(Block {
                num,
                more: num < 1,
                szx: 0,
            });
            rsp.payload = Bytes::from(vec![version; 16]);
            client.handle_datagram(t(1), SERVER, &encode(&rsp));
            last = Some(events(&mut client));
            if !last.as_ref().unwrap().is_empty() {
                break;
            }
        }
        let last = last.unwrap();
        if restart {
            let rsp = only_response(&last);
            assert_eq!(
                rsp.payload,
                Bytes::from(vec![1u8; 32]),
                "restarted on the new version"
            );
        } else {
            assert_eq!(
                last,
                vec![Event::RequestFailed {
                    id,
                    reason: Failure::ResourceChanged
                }]
            );
        }
    }
}

#[test]
fn out_of_order_and_unknown_blocks_get_4_08() {
    let mut server = endpoint();
    let mut req = con_get(1, b"a", "/up");
    req.code = Code::PUT;
    req.options.set_block1(Block {
        num: 1,
        more: true,
        szx: 0,
    });
    req.payload = Bytes::from(vec![0u8; 16]);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let rsp = sent(&mut server).remove(0).1;
    assert_eq!(rsp.code, Code::REQUEST_ENTITY_INCOMPLETE);
    assert!(events(&mut server).is_empty());

    let mut first = req.clone();
    first.message_id = 2;
    first.options.set_block1(Block {
        num: 0,
        more: true,
        szx: 0,
    });
    server.handle_datagram(t(0), CLIENT, &encode(&first));
    let rsp = sent(&mut server).remove(0).1;
    assert_eq!(rsp.code, Code::CONTINUE);
    assert_eq!(
        rsp.options.block1(),
        Some(Block {
            num: 0,
            more: true,
            szx: 0
        })
    );
    let mut gap = req.clone();
    gap.message_id = 3;
    gap.options.set_block1(Block {
        num: 2,
        more: false,
        szx: 0,
    });
    server.handle_datagram(t(0), CLIENT, &encode(&gap));
    assert_eq!(
        sent(&mut server).remove(0).1.code,
        Code::REQUEST_ENTITY_INCOMPLETE
    );
    assert!(events(&mut server).is_empty());
}

#[test]
fn too_large_upload_gets_4_13_with_size1() {
    let mut server = endpoint_with(|c| c.max_body_size = 1000);
    let mut req = con_get(1, b"a", "/up");
    req.code = Code::PUT;
    req.options.set_block1(Block {
        num: 0,
        more: true,
        szx: 6,
    });
    req.options.set_uint(OptionNumber::SIZE1, 5000);
    req.payload = Bytes::from(vec![0u8; 1024]);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let rsp = sent(&mut server).remove(0).1;
    assert_eq!(rsp.code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(rsp.options.size1(), Some(1000));
}

#[test]
fn partial_uploads_are_dropped_after_the_timeout() {
    let mut server = endpoint_with(|c| c.reassembly_timeout = Some(Duration::from_secs(30)));
    let mut req = con_get(1, b"a", "/up");
    req.code = Code::PUT;
    req.options.set_block1(Block {
        num: 0,
        more: true,
        szx: 0,
    });
    req.payload = Bytes::from(vec![0u8; 16]);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    sent(&mut server);
    assert_eq!(server.table_sizes().reassemblies, 1);
    server.handle_timeout(t(30_000));
    assert_eq!(server.table_sizes().reassemblies, 0);
    let mut next = req.clone();
    next.message_id = 2;
    next.options.set_block1(Block {
        num: 1,
        more: false,
        szx: 0,
    });
    server.handle_datagram(t(30_001), CLIENT, &encode(&next));
    assert_eq!(
        sent(&mut server).remove(0).1.code,
        Code::REQUEST_ENTITY_INCOMPLETE
    );
}

#[test]
fn random_access_delivers_the_requested_block_only() {
    let mut client = endpoint();
    let mut server = endpoint_with(|c| c.block_size = 16);
    let big = body(100);
    client
        .request(
            t(0),
            SERVER,
            Request::get()
                .with_path("x")
                .with_option(OptionNumber::BLOCK2, &[0x20]),
        )
        .unwrap();
    let (evs, reqs) = exchange(&mut client, &mut server, |_| Response::content(big.clone()));
    assert_eq!(reqs.len(), 1);
    let rsp = only_response(&evs);
    assert_eq!(
        rsp.options.block2(),
        Some(Block {
            num: 2,
            more: true,
            szx: 0
        })
    );
    assert_eq!(rsp.payload, big.slice(32..48));
}

#[test]
fn block_beyond_the_end_is_4_02() {
    let mut client = endpoint();
    let mut server = endpoint();
    client
        .request(
            t(0),
            SERVER,
            Request::get()
                .with_path("x")
                .with_option(OptionNumber::BLOCK2, &[0x90]),
        )
        .unwrap();
    let (evs, _) = exchange(&mut client, &mut server, |_| Response::content(body(40)));
    assert_eq!(only_response(&evs).code, Code::BAD_OPTION);
}

#[test]
fn raw_block_paths_see_blocks_themselves() {
    let mut server = endpoint_with(|c| c.raw_block_paths = vec!["/raw".into()]);
    let mut req = con_get(1, b"a", "/raw/file");
    req.code = Code::PUT;
    req.options.set_block1(Block {
        num: 3,
        more: true,
        szx: 0,
    });
    req.payload = Bytes::from(vec![0u8; 16]);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    match events(&mut server).as_slice() {
        [Event::Request { request, .. }] => {
            assert_eq!(
                request.options.block1(),
                Some(Block {
                    num: 3,
                    more: true,
                    szx: 0
                })
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrent_uploads_to_one_resource_carry_distinct_request_tags() {
    let mut client = endpoint_with(|c| c.nstart = 4);
    for _ in 0..3 {
        client
            .request(
                t(0),
                SERVER,
                Request::put().with_path("same").with_payload(body(2000)),
            )
            .unwrap();
    }
    let tags: Vec<Option<Vec<u8>>> = sent(&mut client)
        .iter()
        .map(|(_, m)| m.options.request_tag().map(<[u8]>::to_vec))
        .collect();
    assert_eq!(tags.len(), 3);
    assert_eq!(tags[0], None, "the first upload needs no tag");
    assert!(tags[1].is_some() && tags[2].is_some() && tags[1] != tags[2]);
}

#[test]
fn missing_block2_midway_is_a_typed_failure() {
    let mut client = endpoint();
    let id = client.request(t(0), SERVER, Request::get()).unwrap();
    let req = sent(&mut client).remove(0).1;
    let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, req.message_id);
    rsp.token = req.token;
    rsp.options.set_block2(Block {
        num: 0,
        more: true,
        szx: 0,
    });
    rsp.payload = Bytes::from(vec![0u8; 16]);
    client.handle_datagram(t(1), SERVER, &encode(&rsp));
    let req = sent(&mut client).remove(0).1;
    let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, req.message_id);
    rsp.token = req.token;
    rsp.payload = Bytes::from(vec![0u8; 3]);
    client.handle_datagram(t(2), SERVER, &encode(&rsp));
    assert_eq!(
        events(&mut client),
        vec![Event::RequestFailed {
            id,
            reason: Failure::MissingBlock2
        }]
    );
}
