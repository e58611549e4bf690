//! Wire-level tests of Observe (RFC 7641) on both sides.

use alloc::vec::Vec;

use bytes::Bytes;

use super::tests::{encode, endpoint, endpoint_with, events, sent, t, CLIENT, SERVER};
use super::*;
use crate::msg::{Code, ContentFormat, Message, MessageType, OptionNumber};

/// Delivers everything `from` has queued to `to`, returning the messages.
fn carry(
    from: &mut Endpoint,
    from_addr: SocketAddr,
    to: &mut Endpoint,
    now: Instant,
) -> Vec<Message> {
    let msgs: Vec<Message> = sent(from).into_iter().map(|(_, m)| m).collect();
    for m in &msgs {
        to.handle_datagram(now, from_addr, &encode(m));
    }
    msgs
}

/// A client observing `/temp` on a server that accepted; returns (client, server, id).
fn observed(server_config: impl FnOnce(&mut Config)) -> (Endpoint, Endpoint, RequestId) {
    let mut client = endpoint();
    let mut server = endpoint_with(server_config);
    let id = client
        .observe(t(0), SERVER, Request::get().with_path("temp"))
        .unwrap();
    let reg = carry(&mut client, CLIENT, &mut server, t(0));
    assert_eq!(reg[0].options.observe(), Some(0));
    let iid = match events(&mut server).as_slice() {
        [Event::Request { id, request, .. }] => {
            assert_eq!(request.options.observe(), Some(0));
            *id
        }
        other => panic!("{other:?}"),
    };
    server.accept_observer(iid).unwrap();
    server.respond(t(0), iid, Response::content("20")).unwrap();
    let rsp = carry(&mut server, SERVER, &mut client, t(1));
    assert_eq!(rsp[0].options.observe(), Some(1));
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::ObserverAdded { resource, observers: 1, .. }] if resource == "/temp"
    ));
    match events(&mut client).as_slice() {
        [Event::Notification {
            id: n,
            fresh: true,
            response,
            ..
        }] => {
            assert_eq!(*n, id);
            assert_eq!(&response.payload[..], b"20");
        }
        other => panic!("{other:?}"),
    }
    (client, server, id)
}

fn notification(token: &Token, mid: u16, seq: u32, body: &str) -> Vec<u8> {
    let mut m = Message::new(MessageType::Non, Code::CONTENT, mid);
    m.token = token.clone();
    m.options.set_observe(seq);
    m.payload = Bytes::copy_from_slice(body.as_bytes());
    encode(&m)
}

#[test]
fn notifications_arrive_in_order_and_stale_ones_are_dropped() {
    let (mut client, mut server, id) = observed(|_| {});
    assert_eq!(
        server.notify(t(10), "/temp", Some(Response::content("21"))),
        1
    );
    let n = carry(&mut server, SERVER, &mut client, t(11));
    assert_eq!(n[0].mtype, MessageType::Non, "NON by default");
    assert_eq!(n[0].options.observe(), Some(2));
    assert!(
        matches!(events(&mut client).as_slice(), [Event::Notification { id: i, fresh: true, .. }] if *i == id)
    );
    assert!(
        sent(&mut client).is_empty(),
        "NON notifications are not acknowledged"
    );
    // A reordered older one is dropped.
    let token = n[0].token.clone();
    client.handle_datagram(t(12), SERVER, &notification(&token, 900, 1, "old"));
    assert!(events(&mut client).is_empty());
    assert_eq!(client.table_sizes().client_exchanges, 1);
}

#[test]
fn stale_notifications_can_be_delivered_marked() {
    let mut client = endpoint_with(|c| c.deliver_stale_notifications = true);
    let id = client.observe(t(0), SERVER, Request::get()).unwrap();
    let token = sent(&mut client).remove(0).1.token;
    client.handle_datagram(t(1), SERVER, &notification(&token, 1, 10, "a"));
    client.handle_datagram(t(2), SERVER, &notification(&token, 2, 9, "b"));
    let evs = events(&mut client);
    assert!(matches!(evs[0], Event::Notification { fresh: true, .. }));
    assert!(matches!(evs[1], Event::Notification { id: i, fresh: false, .. } if i == id));
}

#[test]
fn sequence_wraps_and_the_128_second_rule_applies() {
    let mut client = endpoint();
    client.observe(t(0), SERVER, Request::get()).unwrap();
    let token = sent(&mut client).remove(0).1.token;
    client.handle_datagram(t(1), SERVER, &notification(&token, 1, 0xff_fff0, "a"));
    client.handle_datagram(t(2), SERVER, &notification(&token, 2, 5, "wrapped"));
    client.handle_datagram(t(3), SERVER, &notification(&token, 3, 0xff_fff8, "older"));
    let bodies: Vec<Vec<u8>> = events(&mut client)
        .into_iter()
        .filter_map(|e| match e {
            Event::Notification { response, .. } => Some(response.payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [b"a".to_vec(), b"wrapped".to_vec()]);
    // 128 s later, even a smaller value counts as fresh.
    client.handle_datagram(t(2 + 128_001), SERVER, &notification(&token, 4, 1, "late"));
    assert!(matches!(
        events(&mut client).as_slice(),
        [Event::Notification { fresh: true, .. }]
    ));
}

#[test]
fn passive_cancellation_resets_the_next_notification_and_the_server_forgets() {
    let (mut client, mut server, id) = observed(|_| {});
    assert!(client.cancel(t(5), id));
    assert_eq!(
        events(&mut client),
        [Event::RequestFailed {
            id,
            reason: Failure::Cancelled
        }]
    );
    server.notify(t(10), "/temp", Some(Response::content("22")));
    carry(&mut server, SERVER, &mut client, t(10));
    let rst = carry(&mut client, CLIENT, &mut server, t(11));
    assert_eq!(rst[0].mtype, MessageType::Rst);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::ObserverRemoved {
            reason: ObserverRemoval::Reset,
            observers: 0,
            ..
        }]
    ));
    assert_eq!(server.observer_count("/temp"), 0);
    assert_eq!(
        server.notify(t(12), "/temp", Some(Response::content("23"))),
        0
    );
}

#[test]
fn active_cancellation_deregisters_with_the_same_token() {
    let (mut client, mut server, id) = observed(|_| {});
    assert!(client.cancel_observation(t(5), id));
    let dereg = carry(&mut client, CLIENT, &mut server, t(5));
    assert_eq!(dereg[0].options.observe(), Some(1));
    let iid = match events(&mut server).as_slice() {
        [Event::ObserverRemoved {
            reason: ObserverRemoval::Deregistered,
            ..
        }, Event::Request { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    server.respond(t(5), iid, Response::content("20")).unwrap();
    let rsp = carry(&mut server, SERVER, &mut client, t(6));
    assert_eq!(
        rsp[0].options.observe(),
        None,
        "a deregistration's answer has no Observe"
    );
    assert_eq!(rsp[0].token, dereg[0].token);
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id: i, .. }] if *i == id));
    assert!(client.is_idle());
}

#[test]
fn plain_get_with_the_same_token_deregisters() {
    let (client, mut server, _id) = observed(|_| {});
    let token = client.pending_requests().next().unwrap().3.clone();
    let mut get = Message::new(MessageType::Con, Code::GET, 4242);
    get.token = token;
    get.options.push(OptionNumber::URI_PATH, b"temp");
    server.handle_datagram(t(3), CLIENT, &encode(&get));
    assert!(matches!(
        events(&mut server).first(),
        Some(Event::ObserverRemoved {
            reason: ObserverRemoval::Deregistered,
            ..
        })
    ));
}

#[test]
fn registration_not_accepted_is_a_plain_response() {
    let mut client = endpoint();
    let mut server = endpoint();
    let id = client
        .observe(t(0), SERVER, Request::get().with_path("x"))
        .unwrap();
    carry(&mut client, CLIENT, &mut server, t(0));
    let Some(Event::Request { id: iid, .. }) = server.poll_event() else {
        panic!()
    };
    let mut rsp = Response::content("v");
    rsp.options.set_observe(7);
    server.respond(t(0), iid, rsp).unwrap();
    let out = carry(&mut server, SERVER, &mut client, t(1));
    assert_eq!(out[0].options.observe(), None, "not registered: no Observe");
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id: i, .. }] if *i == id));
    assert_eq!(server.observer_count("/x"), 0);
}

#[test]
fn confirmable_notifications_are_acked_and_a_newer_state_replaces_the_waiting_one() {
    let (mut client, mut server, _id) = observed(|c| c.notification_type = MessageType::Con);
    server.notify(t(10), "/temp", Some(Response::content("a")));
    let first = sent(&mut server);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1.mtype, MessageType::Con);
    // Two more changes while the first is unacknowledged: only the newest will go.
    server.notify(t(11), "/temp", Some(Response::content("b")));
    server.notify(t(12), "/temp", Some(Response::content("c")));
    assert!(
        sent(&mut server).is_empty(),
        "one CON notification at a time"
    );
    client.handle_datagram(t(13), SERVER, &encode(&first[0].1));
    let ack = carry(&mut client, CLIENT, &mut server, t(13));
    assert_eq!(
        (ack[0].mtype, ack[0].message_id),
        (MessageType::Ack, first[0].1.message_id)
    );
    let next = sent(&mut server);
    assert_eq!(next.len(), 1);
    assert_eq!(&next[0].1.payload[..], b"c");
    assert_eq!(next[0].1.options.observe(), Some(4));
}

#[test]
fn retransmission_carries_the_newest_state() {
    let (_client, mut server, _id) = observed(|c| c.notification_type = MessageType::Con);
    server.notify(t(10), "/temp", Some(Response::content("a")));
    let first = sent(&mut server).remove(0).1;
    server.notify(t(11), "/temp", Some(Response::content("b")));
    // The first retransmission is due within ACK_TIMEOUT × ACK_RANDOM_FACTOR.
    server.handle_timeout(t(10 + 3000));
    let again = sent(&mut server);
    assert_eq!(again.len(), 1);
    assert_eq!(
        &again[0].1.payload[..],
        b"b",
        "§4.5.2: the new state supersedes the old"
    );
    assert_ne!(again[0].1.message_id, first.message_id);
}

#[test]
fn unacknowledged_confirmable_notification_removes_the_observer() {
    let (_client, mut server, _id) = observed(|c| c.notification_type = MessageType::Con);
    server.notify(t(10), "/temp", Some(Response::content("a")));
    let mut evs = Vec::new();
    while let Some(at) = server.poll_timeout() {
        if at > t(200_000) {
            break;
        }
        server.handle_timeout(at);
        sent(&mut server);
        evs.extend(events(&mut server));
    }
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::ObserverRemoved {
            reason: ObserverRemoval::Timeout,
            ..
        }
    )));
    assert_eq!(server.observer_count("/temp"), 0);
}

#[test]
fn error_notification_ends_the_observation_on_both_sides() {
    let (mut client, mut server, id) = observed(|_| {});
    server.notify(t(10), "/temp", Some(Response::new(Code::NOT_FOUND)));
    let n = carry(&mut server, SERVER, &mut client, t(10));
    assert_eq!(n[0].mtype, MessageType::Con, "the last word goes reliably");
    assert_eq!(
        n[0].options.observe(),
        None,
        "§4.2: no Observe on a non-2.xx notification"
    );
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::ObserverRemoved {
            reason: ObserverRemoval::ErrorNotified,
            ..
        }]
    ));
    let evs = events(&mut client);
    assert!(
        matches!(evs.last(), Some(Event::RequestFailed { id: i, reason: Failure::ObservationRejected(Code::NOT_FOUND) }) if *i == id)
    );
}

#[test]
fn silent_observation_re_registers_after_max_age() {
    let (mut client, _server, _id) = observed(|_| {});
    let token = client.pending_requests().next().unwrap().3.clone();
    // Max-Age defaults to 60 s, the grace to 5 s: nothing before 66 s.
    client.handle_timeout(t(64_000));
    assert!(sent(&mut client).is_empty());
    client.handle_timeout(t(66_000));
    let rereg = sent(&mut client);
    assert_eq!(rereg.len(), 1);
    assert_eq!(rereg[0].1.options.observe(), Some(0));
    assert_eq!(rereg[0].1.token, token, "re-registration keeps the token");
}

#[test]
fn render_on_demand_per_variant() {
    let mut server = endpoint();
    let mut client = endpoint_with(|c| c.nstart = 2);
    client
        .observe(
            t(0),
            SERVER,
            Request::get()
                .with_path("v")
                .with_accept(ContentFormat::JSON),
        )
        .unwrap();
    client
        .observe(
            t(0),
            SERVER,
            Request::get()
                .with_path("v")
                .with_accept(ContentFormat::CBOR),
        )
        .unwrap();
    carry(&mut client, CLIENT, &mut server, t(0));
    for ev in events(&mut server) {
        if let Event::Request { id, .. } = ev {
            server.accept_observer(id).unwrap();
            server.respond(t(0), id, Response::content("x")).unwrap();
        }
    }
    sent(&mut server);
    let evs = events(&mut server);
    assert_eq!(server.observer_count("/v"), 2, "{evs:?}");
    assert_eq!(server.notify(t(5), "/v", None), 2, "two variants");
    let renders: Vec<(IncomingId, Message)> = events(&mut server)
        .into_iter()
        .filter_map(|e| match e {
            Event::RenderNotification { id, request, .. } => Some((id, request)),
            _ => None,
        })
        .collect();
    assert_eq!(renders.len(), 2);
    for (id, req) in renders {
        assert_eq!(req.options.observe(), None);
        let body = if req.options.accept() == Some(ContentFormat::JSON) {
            "{}"
        } else {
            "\u{a0}"
        };
        server.respond(t(5), id, Response::content(body)).unwrap();
    }
    let out = sent(&mut server);
    assert_eq!(out.len(), 2);
    assert_ne!(out[0].1.payload, out[1].1.payload);
}

#[test]
fn observer_bounds_turn_registrations_into_plain_requests() {
    let mut server = endpoint_with(|c| c.max_observers_per_peer = 1);
    let mut client = endpoint_with(|c| c.nstart = 2);
    client
        .observe(t(0), SERVER, Request::get().with_path("a"))
        .unwrap();
    client
        .observe(t(0), SERVER, Request::get().with_path("b"))
        .unwrap();
    carry(&mut client, CLIENT, &mut server, t(0));
    let ids: Vec<IncomingId> = events(&mut server)
        .into_iter()
        .filter_map(|e| match e {
            Event::Request { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    server.accept_observer(ids[0]).unwrap();
    server
        .respond(t(0), ids[0], Response::content("a"))
        .unwrap();
    assert_eq!(
        server.accept_observer(ids[1]),
        Err(ObserveError::TooManyObservers)
    );
    server
        .respond(t(0), ids[1], Response::content("b"))
        .unwrap();
    let out = sent(&mut server);
    assert_eq!(out[0].1.options.observe(), Some(1));
    assert_eq!(out[1].1.options.observe(), None);
}

#[test]
fn tables_drain_after_observations_end() {
    let (mut client, mut server, id) = observed(|_| {});
    client.cancel(t(1), id);
    server.abort_peer(t(1), CLIENT);
    for ep in [&mut client, &mut server] {
        while let Some(at) = ep.poll_timeout() {
            ep.handle_timeout(at);
            sent(ep);
            events(ep);
        }
        assert!(ep.table_sizes().is_empty(), "{:?}", ep.table_sizes());
    }
}

#[test]
fn large_notifications_are_completed_with_block2_requests() {
    let (mut client, mut server, id) = observed(|_| {});
    let big: Bytes = (0..3000u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    server.notify(t(10), "/temp", Some(Response::content(big.clone())));
    let first = carry(&mut server, SERVER, &mut client, t(10));
    assert_eq!(
        first[0].payload.len(),
        1024,
        "the notification carries the first block"
    );
    assert!(first[0].options.observe().is_some());
    let mut follow_ups = Vec::new();
    for round in 0..10 {
        let reqs = carry(&mut client, CLIENT, &mut server, t(11 + round));
        if reqs.is_empty() {
            break;
        }
        follow_ups.extend(reqs);
        carry(&mut server, SERVER, &mut client, t(11 + round));
    }
    assert_eq!(follow_ups.len(), 2, "blocks 1 and 2 fetched");
    assert!(follow_ups
        .iter()
        .all(|r| r.options.observe().is_none() && r.token != first[0].token));
    match events(&mut client).as_slice() {
        [Event::Notification {
            id: n,
            response,
            fresh: true,
            ..
        }] => {
            assert_eq!(*n, id);
            assert_eq!(response.payload, big);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        events(&mut server).is_empty(),
        "follow-ups are served from the stored representation"
    );
    assert_eq!(
        client.table_sizes().client_exchanges,
        1,
        "only the observation remains"
    );
}

#[test]
fn an_unreachable_client_loses_its_observations() {
    let (_client, mut server, _id) = observed(|_| {});
    server.handle_unreachable(t(5), CLIENT);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::ObserverRemoved {
            reason: ObserverRemoval::Unreachable,
            observers: 0,
            ..
        }]
    ));
    assert_eq!(server.observer_count("/temp"), 0);
}

#[test]
fn the_application_can_choose_the_type_of_each_notification() {
    let (_client, mut server, _id) = observed(|_| {});
    let mut rsp = Response::content("con please");
    rsp.message_type = Some(MessageType::Con);
    server.notify(t(10), "/temp", Some(rsp));
    assert_eq!(sent(&mut server)[0].1.mtype, MessageType::Con);
    let (_client, mut server, _id) = observed(|c| c.notification_type = MessageType::Con);
    let mut rsp = Response::content("non please");
    rsp.message_type = Some(MessageType::Non);
    server.notify(t(10), "/temp", Some(rsp));
    assert_eq!(sent(&mut server)[0].1.mtype, MessageType::Non);
}

#[test]
fn a_reset_cancels_only_a_recent_notification_sent_to_that_peer() {
    let (_client, mut server, _) = observed(|_| {});
    let mut mids = Vec::new();
    for i in 0..6 {
        server.notify(t(10 + i), "/temp", Some(Response::content("x")));
        let out = sent(&mut server);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.mtype, MessageType::Non);
        mids.push(out[0].1.message_id);
    }
    let rst = |mid| encode(&Message::new(MessageType::Rst, Code::EMPTY, mid));
    let other: SocketAddr = "192.0.2.99:5683".parse().unwrap();
    // The newest notification's Message ID, from another peer: not this observation's.
    server.handle_datagram(t(20), other, &rst(mids[5]));
    // Older than the last four notifications: no longer matched.
    server.handle_datagram(t(20), CLIENT, &rst(mids[1]));
    assert_eq!(server.observer_count("/temp"), 1);
    assert!(events(&mut server).is_empty());
    server.handle_datagram(t(20), CLIENT, &rst(mids[2]));
    assert_eq!(server.observer_count("/temp"), 0);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::ObserverRemoved {
            reason: ObserverRemoval::Reset,
            ..
        }]
    ));
}

#[test]
fn a_reset_after_non_lifetime_does_not_cancel() {
    let (_client, mut server, _) = observed(|_| {});
    server.notify(t(10), "/temp", Some(Response::content("x")));
    let old = sent(&mut server)[0].1.message_id;
    server.notify(t(20), "/temp", Some(Response::content("y")));
    let newer = sent(&mut server)[0].1.message_id;
    let rst = |mid| encode(&Message::new(MessageType::Rst, Code::EMPTY, mid));
    // NON_LIFETIME is 145 s with the default transmission parameters (RFC 7252 §4.8.2):
    // the first notification left 145.001 s ago, the second 144.991 s ago.
    let now = t(10 + 145_001);
    server.handle_datagram(now, CLIENT, &rst(old));
    assert_eq!(server.observer_count("/temp"), 1);
    server.handle_datagram(now, CLIENT, &rst(newer));
    assert_eq!(server.observer_count("/temp"), 0);
}

/// A registration through a forward proxy (Config::proxy) is kept under the target's URI,
/// and registers only when the proxy's answer carries Observe: a proxy that relays the
/// observation says so, one that does not answers a plain response (RFC 7641 §4.1, §5).
#[test]
fn a_proxied_registration_registers_only_with_an_observed_answer() {
    let mut server = endpoint_with(|c| c.proxy = true);
    let target = "coap://192.0.2.7/temp";
    let register = |server: &mut Endpoint, mid: u16, token: u8| {
        let mut m = Message::new(MessageType::Con, Code::GET, mid);
        m.token = Token::new(&[token]);
        m.options.set_observe(0);
        m.options.set_proxy_uri(target);
        server.handle_datagram(t(0), CLIENT, &encode(&m));
        match events(server).as_slice() {
            [Event::Request { id, .. }] => *id,
            other => panic!("{other:?}"),
        }
    };

    // Answered without Observe: not registered, and the answer says so.
    let id = register(&mut server, 1, 1);
    server.accept_observer(id).unwrap();
    server.respond(t(0), id, Response::content("once")).unwrap();
    let answer = sent(&mut server);
    assert_eq!(answer[0].1.options.observe(), None);
    assert_eq!(server.observer_count(target), 0);
    assert!(events(&mut server).is_empty());

    // Answered with Observe: registered under the target's URI, with the server's own
    // sequence number.
    let id = register(&mut server, 2, 2);
    server.accept_observer(id).unwrap();
    let mut relayed = Response::content("relayed");
    relayed.options.set_observe(0);
    server.respond(t(0), id, relayed).unwrap();
    let answer = sent(&mut server);
    assert!(answer[0].1.options.observe().is_some());
    assert_eq!(server.observer_count(target), 1);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::ObserverAdded { resource, observers: 1, .. }] if resource == target
    ));
    assert_eq!(
        server.notify(t(1), target, Some(Response::content("next"))),
        1
    );
}
