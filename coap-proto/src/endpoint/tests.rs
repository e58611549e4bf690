//! Wire-level tests of the endpoint: bytes in, bytes out, events, virtual time.

use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

use super::*;
use crate::msg::{Code, Message, MessageType, OptionNumber};

pub(super) const CLIENT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40000);
pub(super) const SERVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 5683);
pub(super) const GROUP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(224, 0, 1, 187)), 5683);

pub(super) fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

pub(super) fn endpoint() -> Endpoint {
    Endpoint::new(Config::default(), 7).expect("default config is valid")
}

pub(super) fn endpoint_with(f: impl FnOnce(&mut Config)) -> Endpoint {
    let mut c = Config::default();
    f(&mut c);
    Endpoint::new(c, 7).expect("valid config")
}

/// Every datagram waiting, parsed.
pub(super) fn sent(ep: &mut Endpoint) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(tx) = ep
        .poll_transmit(Instant::ZERO, &mut buf)
        .expect("buffer is large")
    {
        out.push((
            tx.remote,
            Message::parse(&buf[..tx.len]).expect("we send valid messages"),
        ));
    }
    out
}

pub(super) fn raw_sent(ep: &mut Endpoint) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(tx) = ep
        .poll_transmit(Instant::ZERO, &mut buf)
        .expect("buffer is large")
    {
        out.push(buf[..tx.len].to_vec());
    }
    out
}

pub(super) fn events(ep: &mut Endpoint) -> Vec<Event> {
    core::iter::from_fn(|| ep.poll_event()).collect()
}

pub(super) fn encode(m: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut buf).expect("fits");
    buf.truncate(n);
    buf
}

pub(super) fn con_get(mid: u16, token: &[u8], path: &str) -> Message {
    let mut m = Message::new(MessageType::Con, Code::GET, mid);
    m.token = Token::new(token);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        m.options.push(OptionNumber::URI_PATH, seg.as_bytes());
    }
    m
}

pub(super) fn expect_request(ep: &mut Endpoint) -> (IncomingId, Message) {
    match events(ep).as_slice() {
        [Event::Request { id, request, .. }] => (*id, request.clone()),
        other => panic!("expected one request event, got {other:?}"),
    }
}

#[test]
fn piggybacked_exchange_end_to_end() {
    let mut client = endpoint();
    let mut server = endpoint();
    let id = client
        .request(t(0), SERVER, Request::get().with_path("/sensors/temp"))
        .expect("request starts");
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    let (to, req) = &out[0];
    assert_eq!(*to, SERVER);
    assert_eq!(req.mtype, MessageType::Con);
    assert_eq!(req.code, Code::GET);
    assert_eq!(req.token.len(), 8);
    assert_eq!(
        req.options.uri_path().collect::<Vec<_>>(),
        ["sensors", "temp"]
    );

    server.handle_datagram(t(1), CLIENT, &encode(req));
    let (iid, got) = expect_request(&mut server);
    assert_eq!(got, *req);
    server
        .respond(t(1), iid, Response::content("22.3 C"))
        .expect("pending");
    let out = sent(&mut server);
    assert_eq!(out.len(), 1);
    let (to, rsp) = &out[0];
    assert_eq!(*to, CLIENT);
    assert_eq!(rsp.mtype, MessageType::Ack);
    assert_eq!(
        rsp.message_id, req.message_id,
        "piggybacked: same Message ID"
    );
    assert_eq!(rsp.token, req.token);
    assert_eq!(rsp.code, Code::CONTENT);

    client.handle_datagram(t(2), SERVER, &encode(rsp));
    match events(&mut client).as_slice() {
        [Event::Response {
            id: rid,
            peer,
            response,
        }] => {
            assert_eq!(*rid, id);
            assert_eq!(*peer, SERVER);
            assert_eq!(&response.payload[..], b"22.3 C");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(client.is_idle());
    assert!(server.is_idle());
    assert_eq!(client.poll_timeout().map(|d| d > t(2)), Some(true));
}

#[test]
fn retransmission_backs_off_within_rfc_bounds_then_times_out() {
    let mut client = endpoint();
    let id = client.request(t(0), SERVER, Request::get()).unwrap();
    let first = raw_sent(&mut client);
    assert_eq!(first.len(), 1);
    let mut sends = vec![Instant::ZERO];
    let mut now = Instant::ZERO;
    while let Some(deadline) = client.poll_timeout() {
        if deadline > t(200_000) {
            break;
        }
        now = deadline;
        client.handle_timeout(now);
        for bytes in raw_sent(&mut client) {
            assert_eq!(
                bytes, first[0],
                "a retransmission repeats the message byte for byte"
            );
            sends.push(now);
        }
        if !client.clients.contains_key(&id) {
            break;
        }
    }
    // MAX_RETRANSMIT = 4: one transmission and four retransmissions.
    assert_eq!(sends.len(), 5, "{sends:?}");
    let initial = sends[1] - sends[0];
    assert!(
        initial >= Duration::from_secs(2) && initial <= Duration::from_secs(3),
        "initial timeout {initial:?} outside [ACK_TIMEOUT, ACK_TIMEOUT*1.5]"
    );
    for w in sends.windows(3) {
        let (a, b) = (w[1] - w[0], w[2] - w[1]);
        assert_eq!(b, a * 2, "timeout doubles");
    }
    // Gives up at 31 × the initial timeout, within MAX_TRANSMIT_WAIT (93 s).
    assert_eq!(now - Instant::ZERO, initial * 31);
    assert!(now - Instant::ZERO <= Duration::from_secs(93));
    assert_eq!(
        events(&mut client),
        vec![Event::RequestFailed {
            id,
            reason: Failure::Timeout
        }]
    );
    assert!(client.is_idle());
}

#[test]
fn duplicate_con_request_gets_the_cached_ack_and_reaches_the_app_once() {
    let mut server = endpoint();
    let req = encode(&con_get(0x1234, b"tk", "/a"));
    server.handle_datagram(t(0), CLIENT, &req);
    let (iid, _) = expect_request(&mut server);
    server.respond(t(0), iid, Response::content("x")).unwrap();
    let first = raw_sent(&mut server);
    server.handle_datagram(t(2000), CLIENT, &req);
    assert!(events(&mut server).is_empty(), "no second Request event");
    assert_eq!(raw_sent(&mut server), first, "the same ACK again");
    assert_eq!(server.stats().duplicates, 1);
}

#[test]
fn duplicate_before_the_answer_is_acknowledged_and_the_response_goes_separately() {
    let mut server = endpoint();
    let req = encode(&con_get(0x10, b"tk", "/slow"));
    server.handle_datagram(t(0), CLIENT, &req);
    let (iid, _) = expect_request(&mut server);
    server.handle_datagram(t(50), CLIENT, &req);
    let out = sent(&mut server);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.mtype, MessageType::Ack);
    assert!(out[0].1.code.is_empty());
    assert_eq!(out[0].1.message_id, 0x10);
    server
        .respond(t(60), iid, Response::content("late"))
        .unwrap();
    let out = sent(&mut server);
    assert_eq!(out[0].1.mtype, MessageType::Con, "separate response");
}

#[test]
fn slow_handler_gets_empty_ack_then_confirmable_separate_response() {
    let mut client = endpoint();
    let mut server = endpoint();
    let id = client
        .request(t(0), SERVER, Request::get().with_path("slow"))
        .unwrap();
    let req = sent(&mut client).remove(0).1;
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let (iid, _) = expect_request(&mut server);
    assert_eq!(
        server.poll_timeout(),
        Some(t(100)),
        "empty ACK after the configured delay"
    );
    server.handle_timeout(t(100));
    let ack = sent(&mut server).remove(0).1;
    assert_eq!(
        (ack.mtype, ack.code, ack.message_id),
        (MessageType::Ack, Code::EMPTY, req.message_id)
    );
    assert!(ack.token.is_empty());
    client.handle_datagram(t(101), SERVER, &encode(&ack));
    assert!(events(&mut client).is_empty());
    // The client no longer retransmits.
    client.handle_timeout(t(60_000));
    assert!(
        sent(&mut client).is_empty(),
        "no retransmission after the empty ACK"
    );
    assert!(
        events(&mut client).is_empty(),
        "still waiting for the separate response"
    );

    server
        .respond(t(3000), iid, Response::content("done"))
        .unwrap();
    let rsp = sent(&mut server).remove(0).1;
    assert_eq!(rsp.mtype, MessageType::Con);
    assert_ne!(rsp.message_id, req.message_id);
    assert_eq!(rsp.token, req.token);
    client.handle_datagram(t(3001), SERVER, &encode(&rsp));
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].1.mtype, out[0].1.message_id),
        (MessageType::Ack, rsp.message_id)
    );
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id: r, .. }] if *r == id));
    // A duplicate of the separate response is acknowledged again but not delivered twice.
    client.handle_datagram(t(5000), SERVER, &encode(&rsp));
    assert_eq!(sent(&mut client).len(), 1);
    assert!(events(&mut client).is_empty());

    server.handle_datagram(t(3002), CLIENT, &encode(&out[0].1));
    assert_eq!(
        events(&mut server),
        vec![Event::ResponseConfirmed { id: iid }]
    );
    assert!(server.is_idle());
}

#[test]
fn separate_response_before_the_ack_counts_as_acknowledgement() {
    let mut client = endpoint();
    let id = client.request(t(0), SERVER, Request::get()).unwrap();
    let req = sent(&mut client).remove(0).1;
    let mut rsp = Message::new(MessageType::Con, Code::CONTENT, 999);
    rsp.token = req.token.clone();
    client.handle_datagram(t(10), SERVER, &encode(&rsp));
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id: r, .. }] if *r == id));
    assert!(client.pending_con.is_empty(), "retransmission stopped");
}

#[test]
fn ping_is_answered_with_reset_and_pong_is_reported() {
    let mut server = endpoint();
    server.handle_datagram(t(0), CLIENT, &[0x40, 0x00, 0xab, 0xcd]);
    assert_eq!(raw_sent(&mut server), vec![vec![0x70, 0x00, 0xab, 0xcd]]);
    assert!(events(&mut server).is_empty());

    let mut client = endpoint();
    let id = client.ping(t(0), SERVER).unwrap();
    let ping = raw_sent(&mut client).remove(0);
    assert_eq!(ping.len(), 4);
    assert_eq!(ping[0], 0x40);
    server.handle_datagram(t(1), CLIENT, &ping);
    let rst = raw_sent(&mut server).remove(0);
    client.handle_datagram(t(2), SERVER, &rst);
    assert_eq!(events(&mut client), vec![Event::Pong { id }]);
}

#[test]
fn format_errors_reset_con_and_ignore_others() {
    let mut server = endpoint();
    // CON GET whose option runs past the end.
    let bad_con = [0x40, 0x01, 0x00, 0x07, 0xbd];
    server.handle_datagram(t(0), CLIENT, &bad_con);
    assert_eq!(raw_sent(&mut server), vec![vec![0x70, 0x00, 0x00, 0x07]]);
    // The same as NON: silence.
    server.handle_datagram(t(0), CLIENT, &[0x50, 0x01, 0x00, 0x08, 0xbd]);
    assert!(raw_sent(&mut server).is_empty());
    // Reserved class 1.xx in a CON: RST. In a NON: silence.
    server.handle_datagram(t(0), CLIENT, &[0x40, 0x21, 0x00, 0x09]);
    assert_eq!(raw_sent(&mut server), vec![vec![0x70, 0x00, 0x00, 0x09]]);
    server.handle_datagram(t(0), CLIENT, &[0x50, 0xe1, 0x00, 0x0a]);
    assert!(raw_sent(&mut server).is_empty());
    // An empty CON with a token is a format error: RST, not a ping reply... also RST, but
    // the application must not see it either.
    server.handle_datagram(t(0), CLIENT, &[0x41, 0x00, 0x00, 0x0b, 0x99]);
    assert_eq!(raw_sent(&mut server), vec![vec![0x70, 0x00, 0x00, 0x0b]]);
    // A request carried in an ACK: silence.
    server.handle_datagram(t(0), CLIENT, &[0x60, 0x01, 0x00, 0x0c]);
    assert!(raw_sent(&mut server).is_empty());
    // Version 2, truncated header: silence.
    server.handle_datagram(t(0), CLIENT, &[0x80, 0x01, 0x00, 0x0d]);
    server.handle_datagram(t(0), CLIENT, &[0x40, 0x01]);
    assert!(raw_sent(&mut server).is_empty());
    assert!(events(&mut server).is_empty());
    assert_eq!(server.stats().malformed, 8);
}

#[test]
fn unknown_critical_option_gets_4_02_and_elective_ones_are_ignored() {
    let mut server = endpoint();
    let mut req = con_get(0x20, b"t", "/x");
    req.options.push(OptionNumber(2049), b"v");
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    assert!(events(&mut server).is_empty());
    let rsp = sent(&mut server).remove(0).1;
    assert_eq!(
        (rsp.mtype, rsp.code, rsp.message_id),
        (MessageType::Ack, Code::BAD_OPTION, 0x20)
    );
    assert_eq!(rsp.token.as_bytes(), b"t");

    let mut req = con_get(0x21, b"t", "/x");
    req.options.push(OptionNumber(2048), b"v");
    // Accept (17) is critical and understood.
    req.options.push_uint(OptionNumber::ACCEPT, 50);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let (_, got) = expect_request(&mut server);
    assert!(
        got.options.contains(OptionNumber(2048)),
        "unknown elective options pass through"
    );

    // A known critical option with a malformed value is unrecognized (§5.4.3): Uri-Port of
    // three bytes.
    let mut req = con_get(0x22, b"t", "/x");
    req.options.push(OptionNumber::URI_PORT, &[1, 2, 3]);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    assert_eq!(sent(&mut server).remove(0).1.code, Code::BAD_OPTION);
    // An elective option too long for its format is dropped (Max-Age of 5 bytes).
    let mut req = con_get(0x23, b"t", "/x");
    req.options.push(OptionNumber::MAX_AGE, &[1, 2, 3, 4, 5]);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let (_, got) = expect_request(&mut server);
    assert!(!got.options.contains(OptionNumber::MAX_AGE));
}

#[test]
fn proxy_requests_get_5_05_unless_proxying() {
    let mut server = endpoint();
    let mut req = con_get(0x30, b"p", "");
    req.options
        .push(OptionNumber::PROXY_URI, b"coap://example.com/");
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    assert_eq!(
        sent(&mut server).remove(0).1.code,
        Code::PROXYING_NOT_SUPPORTED
    );
    assert!(events(&mut server).is_empty());

    let mut proxy = endpoint_with(|c| c.proxy = true);
    proxy.handle_datagram(t(0), CLIENT, &encode(&req));
    expect_request(&mut proxy);
}

#[test]
fn non_request_gets_non_response_and_duplicates_are_answered_from_cache() {
    let mut server = endpoint();
    let mut req = con_get(0x40, b"n", "/a");
    req.mtype = MessageType::Non;
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let (iid, _) = expect_request(&mut server);
    assert_eq!(
        server.poll_timeout().map(|d| d > t(1000)),
        Some(true),
        "no empty ACK for NON"
    );
    server.respond(t(1), iid, Response::content("v")).unwrap();
    let first = raw_sent(&mut server);
    let rsp = Message::parse(&first[0]).unwrap();
    assert_eq!(rsp.mtype, MessageType::Non);
    assert_eq!(rsp.token.as_bytes(), b"n");
    server.handle_datagram(t(5), CLIENT, &encode(&req));
    assert!(events(&mut server).is_empty());
    assert_eq!(raw_sent(&mut server), first);
}

#[test]
fn non_client_request_times_out_or_gets_its_response() {
    let mut client = endpoint_with(|c| c.non_response_timeout = Some(Duration::from_secs(5)));
    let id = client.request(t(0), SERVER, Request::get().non()).unwrap();
    let req = sent(&mut client).remove(0).1;
    assert_eq!(req.mtype, MessageType::Non);
    assert_eq!(
        client.poll_timeout(),
        Some(t(5000)),
        "no retransmission for NON"
    );
    client.handle_timeout(t(5000));
    assert_eq!(
        events(&mut client),
        vec![Event::RequestFailed {
            id,
            reason: Failure::Timeout
        }]
    );
    // A late response is unwanted now: RST.
    let mut rsp = Message::new(MessageType::Non, Code::CONTENT, 77);
    rsp.token = req.token;
    client.handle_datagram(t(6000), SERVER, &encode(&rsp));
    assert_eq!(raw_sent(&mut client), vec![vec![0x70, 0x00, 0x00, 77]]);
}

#[test]
fn reset_ends_a_request() {
    let mut client = endpoint();
    let id = client.request(t(0), SERVER, Request::get()).unwrap();
    let req = sent(&mut client).remove(0).1;
    let [hi, lo] = req.message_id.to_be_bytes();
    client.handle_datagram(t(1), SERVER, &[0x70, 0x00, hi, lo]);
    assert_eq!(
        events(&mut client),
        vec![Event::RequestFailed {
            id,
            reason: Failure::Reset
        }]
    );
    // ACK and RST for unknown IDs are ignored.
    client.handle_datagram(t(2), SERVER, &[0x70, 0x00, hi, lo]);
    client.handle_datagram(t(2), SERVER, &[0x60, 0x00, hi, lo]);
    assert!(events(&mut client).is_empty());
    assert!(raw_sent(&mut client).is_empty());
}

#[test]
fn response_from_the_wrong_peer_or_token_is_reset() {
    let mut client = endpoint();
    let _id = client.request(t(0), SERVER, Request::get()).unwrap();
    let req = sent(&mut client).remove(0).1;
    let mut rsp = Message::new(MessageType::Con, Code::CONTENT, 5);
    rsp.token = req.token.clone();
    let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 5683);
    client.handle_datagram(t(1), other, &encode(&rsp));
    assert_eq!(raw_sent(&mut client), vec![vec![0x70, 0x00, 0x00, 5]]);
    assert!(events(&mut client).is_empty());
    let mut wrong = rsp.clone();
    wrong.token = Token::new(b"nope");
    client.handle_datagram(t(1), SERVER, &encode(&wrong));
    assert_eq!(raw_sent(&mut client).len(), 1);
    assert_eq!(client.stats().unmatched_responses, 2);
}

#[test]
fn nstart_queues_requests_per_peer_in_order() {
    let mut client = endpoint();
    let a = client
        .request(t(0), SERVER, Request::get().with_path("a"))
        .unwrap();
    let b = client
        .request(t(0), SERVER, Request::get().with_path("b"))
        .unwrap();
    let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), 5683);
    let _c = client
        .request(t(0), other, Request::get().with_path("c"))
        .unwrap();
    let out = sent(&mut client);
    assert_eq!(out.len(), 2, "one per peer with NSTART = 1");
    let first = out.iter().find(|(to, _)| *to == SERVER).unwrap().1.clone();
    assert_eq!(first.options.uri_path().next(), Some("a"));
    let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, first.message_id);
    rsp.token = first.token;
    client.handle_datagram(t(1), SERVER, &encode(&rsp));
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id, .. }] if *id == a));
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.options.uri_path().next(), Some("b"));
    assert!(client.pending_requests().any(|(id, ..)| id == b));
}

#[test]
fn empty_ack_frees_the_nstart_slot() {
    let mut client = endpoint();
    client.request(t(0), SERVER, Request::get()).unwrap();
    client.request(t(0), SERVER, Request::get()).unwrap();
    let first = sent(&mut client).remove(0).1;
    let [hi, lo] = first.message_id.to_be_bytes();
    client.handle_datagram(t(1), SERVER, &[0x60, 0x00, hi, lo]);
    assert_eq!(
        sent(&mut client).len(),
        1,
        "second request goes once the first is acknowledged"
    );
}

#[test]
fn cancel_ends_the_exchange_and_later_responses_are_reset() {
    let mut client = endpoint();
    let id = client.request(t(0), SERVER, Request::get()).unwrap();
    let req = sent(&mut client).remove(0).1;
    assert!(client.cancel(t(1), id));
    assert!(!client.cancel(t(1), id));
    assert_eq!(
        events(&mut client),
        vec![Event::RequestFailed {
            id,
            reason: Failure::Cancelled
        }]
    );
    let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, req.message_id);
    rsp.token = req.token;
    client.handle_datagram(t(2), SERVER, &encode(&rsp));
    assert!(events(&mut client).is_empty());
    assert!(client.is_idle());
    client.handle_timeout(t(10_000));
    assert!(
        raw_sent(&mut client).is_empty(),
        "no retransmission after cancel"
    );
}

#[test]
fn overload_answers_5_03_with_max_age() {
    let mut server = endpoint_with(|c| c.max_server_exchanges = 1);
    server.handle_datagram(t(0), CLIENT, &encode(&con_get(1, b"a", "/x")));
    expect_request(&mut server);
    server.handle_datagram(t(0), CLIENT, &encode(&con_get(2, b"b", "/x")));
    assert!(events(&mut server).is_empty());
    let rsp = sent(&mut server).remove(0).1;
    assert_eq!(rsp.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.options.max_age(), Some(2));
    assert_eq!(server.stats().overload_rejections, 1);
}

#[test]
fn long_tokens_are_a_format_error_unless_configured() {
    let mut server = endpoint();
    let req = con_get(3, &[7u8; 12], "/x");
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    assert_eq!(raw_sent(&mut server), vec![vec![0x70, 0x00, 0x00, 3]]);
    let mut server = endpoint_with(|c| c.max_token_len = 16);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let (iid, _) = expect_request(&mut server);
    server.respond(t(0), iid, Response::content("ok")).unwrap();
    assert_eq!(sent(&mut server).remove(0).1.token.as_bytes(), &[7u8; 12]);
}

#[test]
fn multicast_responses_are_delayed_and_errors_suppressed() {
    let mut server = endpoint();
    let mut req = con_get(9, b"m", "/.well-known/core");
    req.mtype = MessageType::Non;
    server.handle_multicast_datagram(t(0), CLIENT, &encode(&req));
    let (iid, _) = match events(&mut server).as_slice() {
        [Event::Request {
            id,
            request,
            multicast: true,
            ..
        }] => (*id, request.clone()),
        other => panic!("{other:?}"),
    };
    server
        .respond(t(0), iid, Response::content("</x>"))
        .unwrap();
    assert!(raw_sent(&mut server).is_empty(), "waits for its leisure");
    let at = server.poll_timeout().expect("armed");
    assert!(at <= t(5000), "within DEFAULT_LEISURE");
    server.handle_timeout(at);
    let out = sent(&mut server);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.mtype, MessageType::Non);

    let mut req2 = con_get(10, b"n", "/missing");
    req2.mtype = MessageType::Non;
    server.handle_multicast_datagram(t(0), CLIENT, &encode(&req2));
    let (iid, _) = expect_request(&mut server);
    server
        .respond(t(0), iid, Response::new(Code::NOT_FOUND))
        .unwrap();
    server.handle_timeout(t(10_000));
    assert!(
        raw_sent(&mut server).is_empty(),
        "4.04 to a multicast request is suppressed"
    );
}

#[test]
fn multicast_client_collects_every_response_until_the_window_closes() {
    let mut client = endpoint();
    let id = client
        .request(t(0), GROUP, Request::get().with_path(".well-known/core"))
        .unwrap();
    let req = sent(&mut client).remove(0).1;
    assert_eq!(req.mtype, MessageType::Non);
    for (i, host) in [10u8, 11, 12].into_iter().enumerate() {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 5683);
        let mut rsp = Message::new(MessageType::Non, Code::CONTENT, 100 + i as u16);
        rsp.token = req.token.clone();
        client.handle_datagram(t(100), from, &encode(&rsp));
    }
    let evs = events(&mut client);
    assert_eq!(evs.len(), 3);
    assert!(evs
        .iter()
        .all(|e| matches!(e, Event::Response { id: r, .. } if *r == id)));
    client.handle_timeout(t(10_000));
    assert_eq!(events(&mut client), vec![Event::MulticastDone { id }]);
}

#[test]
fn no_response_option_suppresses_the_declined_classes() {
    let mut server = endpoint();
    let mut req = con_get(11, b"q", "/x");
    req.mtype = MessageType::Non;
    req.options.push_uint(OptionNumber::NO_RESPONSE, 2);
    server.handle_datagram(t(0), CLIENT, &encode(&req));
    let (iid, _) = expect_request(&mut server);
    server.respond(t(0), iid, Response::content("x")).unwrap();
    assert!(raw_sent(&mut server).is_empty());
}

#[test]
fn message_ids_exhaustion_holds_requests_and_says_why() {
    let mut client = endpoint_with(|c| {
        c.nstart = 100_000;
        c.max_queued_per_peer = 100_000;
        c.max_client_exchanges = 100_000;
    });
    for _ in 0..65_536 {
        client.request(t(0), SERVER, Request::get().non()).unwrap();
    }
    assert_eq!(raw_sent(&mut client).len(), 65_536);
    let extra = client.request(t(0), SERVER, Request::get().non()).unwrap();
    assert!(
        raw_sent(&mut client).is_empty(),
        "no Message ID may be reused yet"
    );
    let evs = events(&mut client);
    let until = evs
        .iter()
        .find_map(|e| match e {
            Event::MessageIdsExhausted { peer, until } if *peer == SERVER => Some(*until),
            _ => None,
        })
        .expect("exhaustion is reported");
    assert_eq!(
        until,
        t(145_000),
        "NON_LIFETIME after the first ones went out"
    );
    // The first batch times out at 93 s; the held request goes out when IDs free up.
    client.handle_timeout(until);
    assert_eq!(raw_sent(&mut client).len(), 1);
    assert!(client.pending_requests().any(|(id, ..)| id == extra));
}

#[test]
fn request_errors_are_typed() {
    let mut client = endpoint_with(|c| c.max_client_exchanges = 1);
    assert_eq!(
        client.request(t(0), SERVER, Request::new(Code::CONTENT)),
        Err(RequestError::NotARequest(Code::CONTENT))
    );
    client.request(t(0), SERVER, Request::get()).unwrap();
    assert_eq!(
        client.request(t(0), SERVER, Request::get()),
        Err(RequestError::TooManyExchanges)
    );
    let mut client = endpoint();
    // A large body would go block-wise; large options cannot.
    let big = Request::post().with_option(OptionNumber(2048), &[0u8; 1500]);
    assert!(matches!(
        client.request(t(0), SERVER, big),
        Err(RequestError::MessageTooBig { max: 1152, .. })
    ));
    client.close(t(0));
    assert_eq!(
        client.request(t(0), SERVER, Request::get()),
        Err(RequestError::ShuttingDown)
    );
}

#[test]
fn respond_errors_are_typed() {
    let mut server = endpoint();
    server.handle_datagram(t(0), CLIENT, &encode(&con_get(1, b"a", "/x")));
    let (iid, _) = expect_request(&mut server);
    assert_eq!(
        server.respond(t(0), iid, Response::new(Code::GET)),
        Err(RespondError::NotAResponse(Code::GET))
    );
    assert!(matches!(
        server.respond(
            t(0),
            iid,
            Response::content("x").with_option(OptionNumber(2048), &[0u8; 1500])
        ),
        Err(RespondError::MessageTooBig { .. })
    ));
    server.respond(t(0), iid, Response::content("ok")).unwrap();
    assert_eq!(
        server.respond(t(0), iid, Response::content("again")),
        Err(RespondError::UnknownRequest(iid))
    );
}

#[test]
fn unacknowledged_separate_response_is_reported() {
    let mut server = endpoint();
    server.handle_datagram(t(0), CLIENT, &encode(&con_get(1, b"a", "/x")));
    let (iid, _) = expect_request(&mut server);
    server.handle_timeout(t(100));
    sent(&mut server);
    server
        .respond(t(200), iid, Response::content("late"))
        .unwrap();
    while let Some(d) = server.poll_timeout() {
        if d > t(200_000) {
            break;
        }
        server.handle_timeout(d);
    }
    let retransmits = sent(&mut server).len();
    assert_eq!(retransmits, 5, "first transmission plus MAX_RETRANSMIT");
    assert_eq!(
        events(&mut server),
        vec![Event::ResponseNotConfirmed {
            id: iid,
            reason: Failure::Timeout
        }]
    );
}

#[test]
fn tables_empty_after_exchange_lifetime() {
    // NSTART 32 so that the 20 unanswered NON requests run side by side rather than one
    // 93-second timeout after another.
    let mut client = endpoint_with(|c| c.nstart = 32);
    let mut server = endpoint();
    for i in 0..20 {
        client
            .request(t(0), SERVER, Request::get().with_path("x").non())
            .unwrap();
        server.handle_datagram(t(0), CLIENT, &encode(&con_get(i, &[i as u8], "/y")));
    }
    for (id, _) in server.pending_incoming().collect::<Vec<_>>() {
        server.respond(t(1), id, Response::content("r")).unwrap();
    }
    let mut now = t(1);
    for ep in [&mut client, &mut server] {
        while let Some(d) = ep.poll_timeout() {
            now = now.max(d);
            ep.handle_timeout(d);
            sent(ep);
        }
        assert!(ep.is_idle());
        assert_eq!(ep.dedup.len(), 0);
        assert!(ep.peers.is_empty(), "peer state forgotten");
        assert_eq!(ep.timers.len(), 0);
    }
    assert!(
        now <= t(1) + Duration::from_secs(248),
        "tables emptied only at {now}"
    );
}

#[test]
fn abort_peer_ends_everything_with_it() {
    let mut ep = endpoint();
    let a = ep.request(t(0), SERVER, Request::get()).unwrap();
    let b = ep.request(t(0), SERVER, Request::get()).unwrap();
    ep.handle_datagram(t(0), SERVER, &encode(&con_get(5, b"s", "/x")));
    let _ = events(&mut ep);
    ep.abort_peer(t(1), SERVER);
    let evs = events(&mut ep);
    assert!(evs.contains(&Event::RequestFailed {
        id: a,
        reason: Failure::Cancelled
    }));
    assert!(evs.contains(&Event::RequestFailed {
        id: b,
        reason: Failure::Cancelled
    }));
    assert_eq!(ep.pending_incoming().count(), 0);
    // Nothing of the peer is left waiting.
    assert_eq!(ep.table_sizes().client_exchanges, 0);
    assert_eq!(ep.table_sizes().awaiting_ack, 0);
}

#[test]
fn unreachable_fails_requests_to_that_peer() {
    let mut client = endpoint();
    let id = client.request(t(0), SERVER, Request::get()).unwrap();
    client.handle_unreachable(t(1), SERVER);
    assert_eq!(
        events(&mut client),
        vec![Event::RequestFailed {
            id,
            reason: Failure::Unreachable
        }]
    );
}

#[test]
fn progress_is_reported_only_when_asked() {
    let mut quiet = endpoint();
    quiet.request(t(0), SERVER, Request::get()).unwrap();
    assert!(events(&mut quiet).is_empty());
    let mut loud = endpoint_with(|c| c.report_progress = true);
    let id = loud.request(t(0), SERVER, Request::get()).unwrap();
    assert_eq!(
        events(&mut loud),
        vec![Event::Progress {
            id,
            progress: Progress::Sent
        }]
    );
    // The first wake-up may come before the retransmission is due (a look at whether the CON
    // is still unacknowledged); the retransmission follows within the RFC's bounds.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = loud.poll_timeout().unwrap();
        loud.handle_timeout(d);
        seen = events(&mut loud);
        if !seen.is_empty() {
            assert!(d >= t(2000) && d <= t(3000), "retransmitted at {d:?}");
            break;
        }
    }
    assert_eq!(
        seen,
        vec![Event::Progress {
            id,
            progress: Progress::Retransmitted { attempt: 1 }
        }]
    );
}

#[test]
fn transmit_keeps_the_datagram_when_the_buffer_is_small() {
    let mut client = endpoint();
    client
        .request(t(0), SERVER, Request::get().with_path("abc"))
        .unwrap();
    let mut small = [0u8; 4];
    assert!(
        matches!(client.poll_transmit(t(0), &mut small), Err(BufferTooSmall { needed }) if needed > 4)
    );
    assert_eq!(raw_sent(&mut client).len(), 1);
}

#[test]
fn same_seed_same_bytes() {
    let run = || {
        let mut c = endpoint();
        c.request(t(0), SERVER, Request::get().with_path("x"))
            .unwrap();
        let d = c.poll_timeout();
        (raw_sent(&mut c), d)
    };
    assert_eq!(run(), run());
}

// Regressions found by the endpoint fuzz target and the exchange benchmarks.

#[test]
fn short_token_spaces_refuse_instead_of_spinning() {
    let mut client = endpoint_with(|c| {
        c.token_len = 1;
        c.nstart = 1000;
    });
    for _ in 0..256 {
        client.request(t(0), SERVER, Request::get().non()).unwrap();
    }
    assert_eq!(
        client.request(t(0), SERVER, Request::get().non()),
        Err(RequestError::TooManyExchanges),
        "all 256 one-byte tokens are in use"
    );
    let mut zero = endpoint_with(|c| c.token_len = 0);
    zero.request(t(0), SERVER, Request::get()).unwrap();
    assert_eq!(
        zero.request(t(0), SERVER, Request::get()),
        Err(RequestError::TooManyExchanges)
    );
}

#[test]
fn empty_tokens_still_carry_a_block_wise_upload() {
    let mut client = endpoint_with(|c| c.token_len = 0);
    let mut server = endpoint();
    let id = client
        .request(t(0), SERVER, Request::put().with_payload(vec![7u8; 3000]))
        .unwrap();
    for _ in 0..10 {
        for (_, m) in sent(&mut client) {
            server.handle_datagram(t(0), CLIENT, &encode(&m));
        }
        while let Some(ev) = server.poll_event() {
            if let Event::Request { id, request, .. } = ev {
                assert_eq!(request.payload.len(), 3000);
                server
                    .respond(t(0), id, Response::new(Code::CHANGED))
                    .unwrap();
            }
        }
        for (_, m) in sent(&mut server) {
            client.handle_datagram(t(0), SERVER, &encode(&m));
        }
    }
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id: r, .. }] if *r == id));
}

#[test]
fn separate_responses_respect_max_peers() {
    let mut server = endpoint_with(|c| c.max_peers = 1);
    for port in [40001, 40002, 40003] {
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port);
        let mut req = con_get(port, b"n", "/x");
        req.mtype = MessageType::Non;
        server.handle_datagram(t(0), peer, &encode(&req));
        let (iid, _) = expect_request(&mut server);
        server.respond(t(0), iid, Response::content("v")).unwrap();
        assert!(server.table_sizes().peers <= 1);
    }
}

#[test]
fn a_response_for_a_queued_request_is_not_accepted() {
    let mut client = endpoint();
    let a = client
        .request(t(0), SERVER, Request::get().with_path("a"))
        .unwrap();
    let b = client
        .request(t(0), SERVER, Request::put().with_payload(vec![1u8; 3000]))
        .unwrap();
    let first = sent(&mut client).remove(0).1;
    let b_token = client
        .pending_requests()
        .find(|p| p.0 == b)
        .map(|p| p.3.clone())
        .unwrap();
    let mut forged = Message::new(MessageType::Con, Code::CONTENT, 999);
    forged.token = b_token;
    client.handle_datagram(t(1), SERVER, &encode(&forged));
    assert!(events(&mut client).is_empty(), "b was never sent");
    assert_eq!(
        raw_sent(&mut client),
        vec![vec![0x70, 0x00, 0x03, 0xe7]],
        "reset"
    );
    let mut rsp = Message::new(MessageType::Ack, Code::CONTENT, first.message_id);
    rsp.token = first.token;
    client.handle_datagram(t(2), SERVER, &encode(&rsp));
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { id, .. }] if *id == a));
    let next = sent(&mut client);
    assert_eq!(next.len(), 1, "b goes out once, in order");
    assert!(next[0].1.options.block1().is_some());
}

#[test]
fn one_timer_per_peer_however_many_messages() {
    let mut client = endpoint_with(|c| {
        c.nstart = 100_000;
        c.max_queued_per_peer = 100_000;
    });
    for i in 0..5000u64 {
        let now = Instant::from_millis(i * 10);
        client.request(now, SERVER, Request::get().non()).unwrap();
        raw_sent(&mut client);
        client.handle_timeout(now);
    }
    // 50 s of sending spans 500 Message ID buckets, but they share one timer; the rest are
    // the 5000 NON requests' own deadlines.
    let timers = client.table_sizes().timers;
    assert!(timers <= 5000 + 2, "{timers} timers");
}

#[test]
fn a_ping_answered_by_an_ack_with_a_code_is_still_a_pong() {
    let mut client = endpoint();
    let id = client.ping(t(0), SERVER).unwrap();
    let ping = raw_sent(&mut client).remove(0);
    client.handle_datagram(t(1), SERVER, &[0x60, 0x5f, ping[2], ping[3]]);
    assert_eq!(events(&mut client), vec![Event::Pong { id }]);
}

/// Events are queued and handed out by value on every exchange; see `messages_stay_small`.
#[test]
fn events_stay_small() {
    assert!(size_of::<Event>() <= 184);
}

#[test]
fn stats_add_up_and_saturate() {
    let mut a = Stats {
        datagrams_received: 3,
        unmatched_responses: u64::MAX - 1,
        ..Stats::default()
    };
    a += Stats {
        datagrams_received: 4,
        retransmissions: 2,
        unmatched_responses: 5,
        ..Stats::default()
    };
    assert_eq!(a.datagrams_received, 7);
    assert_eq!(a.retransmissions, 2);
    assert_eq!(a.unmatched_responses, u64::MAX);
    assert_eq!(a.datagrams_sent, 0);
}
